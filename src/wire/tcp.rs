//! TCP as the functions and the NIC touch it: the flag set and the MSS
//! clamp routers apply when a path's MTU shrinks.
//!
//! ```
//! use shmnet::wire::tcp::{clamp_mss, TcpFlags};
//! let mut syn = [0u8; 24];
//! syn[12] = 6 << 4; // data offset: 24 bytes
//! syn[13] = TcpFlags::SYN.bits();
//! syn[20..24].copy_from_slice(&[2, 4, 0xff, 0xd7]); // MSS 65495
//! assert!(clamp_mss(&mut syn, 1460));
//! assert_eq!(&syn[22..24], &1460u16.to_be_bytes());
//! ```

use super::checksum;

bitflags::bitflags! {
    /// The TCP header's flag byte.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct TcpFlags: u8 {
        /// No more data from the sender.
        const FIN = 0x01;
        /// Synchronise sequence numbers (opens a connection).
        const SYN = 0x02;
        /// Reset the connection.
        const RST = 0x04;
        /// Push buffered data to the application.
        const PSH = 0x08;
        /// The acknowledgement field is valid.
        const ACK = 0x10;
        /// The urgent pointer is valid.
        const URG = 0x20;
        /// ECN echo (RFC 3168).
        const ECE = 0x40;
        /// Congestion window reduced (RFC 3168).
        const CWR = 0x80;
    }
}

/// The largest MSS that fits an IP MTU of `mtu` with a minimal IP header
/// (20 bytes for IPv4, 40 for IPv6) and a minimal TCP header.
pub fn mss_for_mtu(mtu: usize, v6: bool) -> u16 {
    let ip = if v6 { 40 } else { 20 };
    mtu.saturating_sub(ip + 20).min(usize::from(u16::MAX)) as u16
}

/// Lowers the MSS option of a TCP SYN segment (`tcp`: the TCP header and
/// what follows) to `max_mss`, fixing the checksum incrementally. Returns
/// whether it changed anything; a truncated or odd option list is left as
/// it is.
pub fn clamp_mss(tcp: &mut [u8], max_mss: u16) -> bool {
    if tcp.len() < 20 || tcp[13] & TcpFlags::SYN.bits() == 0 {
        return false;
    }
    let hdr = (usize::from(tcp[12] >> 4) * 4).min(tcp.len());
    let mut i = 20;
    while i < hdr {
        match tcp[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = tcp.get(i + 1) else { break };
                let len = usize::from(len);
                if len < 2 || i + len > hdr {
                    break;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    if old <= max_mss {
                        return false;
                    }
                    tcp[i + 2..i + 4].copy_from_slice(&max_mss.to_be_bytes());
                    let ck = u16::from_be_bytes([tcp[16], tcp[17]]);
                    if ck != 0 {
                        tcp[16..18]
                            .copy_from_slice(&checksum::update(ck, old, max_mss).to_be_bytes());
                    }
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// Cuts segment `index` out of a TCP super-segment (what a sender's TCP
/// segmentation offload hands over unsegmented: one IPv4 or IPv6 TCP packet
/// larger than the path's MTU) into `dst`: the link, IP and TCP headers,
/// then at most `max_payload` bytes of the payload starting at
/// `index * max_payload`, with the IP length, the IPv4 identification
/// (+ `index`), the TCP sequence number, the flags (FIN and PSH only on the
/// last segment, CWR only on the first) and every checksum made right.
/// Returns the segment's length, or `None` when `index` is past the last
/// segment, the frame is not a whole, unfragmented TCP packet of `medium`,
/// or `dst` is too small.
pub fn tso_segment(
    medium: super::LinkMedium,
    frame: &[u8],
    max_payload: usize,
    index: usize,
    dst: &mut [u8],
) -> Option<usize> {
    let view = super::FrameView::parse(medium, frame);
    let ip = view.ip()?;
    let super::Transport::Tcp { header_len, .. } = ip.transport else {
        return None;
    };
    if ip.fragment != super::Fragment::Whole || max_payload == 0 {
        return None;
    }
    let head = ip.l4 + usize::from(header_len);
    let payload = frame.get(head..ip.end)?;
    let start = index.checked_mul(max_payload)?;
    if start >= payload.len().max(1) {
        return None;
    }
    let chunk = &payload[start..payload.len().min(start + max_payload)];
    let last = start + chunk.len() == payload.len();
    let len = head + chunk.len();
    let out = dst.get_mut(..len)?;
    out[..head].copy_from_slice(&frame[..head]);
    out[head..].copy_from_slice(chunk);
    let (l3, l4) = (ip.l3, ip.l4);
    if ip.v6 {
        let plen = u16::try_from(len - l3 - 40).ok()?;
        out[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
    } else {
        let total = u16::try_from(len - l3).ok()?;
        out[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
        let id = u16::from_be_bytes([out[l3 + 4], out[l3 + 5]]).wrapping_add(index as u16);
        out[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
    }
    let seq = u32::from_be_bytes([out[l4 + 4], out[l4 + 5], out[l4 + 6], out[l4 + 7]])
        .wrapping_add(start as u32);
    out[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
    let mut flags = TcpFlags::from_bits_retain(out[l4 + 13]);
    if !last {
        flags.remove(TcpFlags::FIN | TcpFlags::PSH);
    }
    if index > 0 {
        flags.remove(TcpFlags::CWR);
    }
    out[l4 + 13] = flags.bits();
    checksum::fill_all(medium, out);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_syn_mss_and_fixes_checksum() {
        // A TCP SYN header with MSS 65495 and a made-up checksum.
        let mut tcp = [0u8; 24];
        tcp[12] = 6 << 4;
        tcp[13] = 0x02;
        tcp[16..18].copy_from_slice(&0x1234u16.to_be_bytes());
        tcp[20..24].copy_from_slice(&[2, 4, 0xff, 0xd7]);
        assert!(clamp_mss(&mut tcp, 1460));
        assert_eq!(&tcp[20..24], &[2, 4, 0x05, 0xb4]);
        // One's-complement sum over the changed word balances out.
        let before = 0x1234u32 + 0xffd7;
        let after = u32::from(u16::from_be_bytes([tcp[16], tcp[17]])) + 1460;
        assert_eq!(checksum::fold(before), checksum::fold(after));
        // Not a SYN, or already small: untouched.
        assert!(!clamp_mss(&mut tcp, 1460));
        tcp[13] = 0x10;
        assert!(!clamp_mss(&mut tcp, 536));
        // Truncated options never panic.
        assert!(!clamp_mss(&mut [0u8; 10], 536));
    }

    #[test]
    fn a_super_segment_is_cut_into_valid_segments() {
        use crate::wire::LinkMedium;
        use smoltcp::wire::{IpAddress, Ipv4Address, Ipv4Packet, TcpPacket};
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let total = 40 + payload.len();
        let mut p = vec![0u8; total];
        p[..20].copy_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0x12,
            0x34,
            0x40,
            0,
            64,
            6,
            0,
            0,
            10,
            0,
            0,
            1,
            10,
            0,
            0,
            2,
        ]);
        p[20..24].copy_from_slice(&[0x9c, 0x40, 0, 7]);
        p[24..28].copy_from_slice(&0xffff_fc00u32.to_be_bytes()); // wraps
        p[32] = 5 << 4;
        p[33] = (TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN | TcpFlags::CWR).bits();
        p[40..].copy_from_slice(&payload);
        let (src, dst) = (
            IpAddress::Ipv4(Ipv4Address::new(10, 0, 0, 1)),
            IpAddress::Ipv4(Ipv4Address::new(10, 0, 0, 2)),
        );
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1100];
        let mut i = 0;
        while let Some(n) = tso_segment(LinkMedium::Ip, &p, 1000, i, &mut buf) {
            let ip = Ipv4Packet::new_checked(&buf[..n]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(ip.ident(), 0x1234 + i as u16);
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(tcp.verify_checksum(&src, &dst));
            assert_eq!(
                tcp.seq_number().0 as u32,
                0xffff_fc00u32.wrapping_add(1000 * i as u32)
            );
            let last = got.len() + tcp.payload().len() == payload.len();
            assert_eq!(tcp.fin(), last);
            assert_eq!(tcp.psh(), last);
            assert_eq!(tcp.cwr(), i == 0);
            got.extend_from_slice(tcp.payload());
            i += 1;
        }
        assert_eq!(i, 3);
        assert_eq!(got, payload);
        // Too small a buffer, or not TCP: nothing.
        assert_eq!(
            tso_segment(LinkMedium::Ip, &p, 1000, 0, &mut [0u8; 100]),
            None
        );
        assert_eq!(
            tso_segment(LinkMedium::Ip, &[0u8; 60], 1000, 0, &mut buf),
            None
        );
    }
}
