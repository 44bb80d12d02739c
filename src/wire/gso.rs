//! Segmentation offload done in software: a TCP super-segment (TSO) or a
//! UDP super-datagram (USO), as a sender's kernel hands one over when it
//! expects the NIC to cut it, cut here into packets that fit the path's
//! MTU, each with its IP length, IPv4 identification and checksums made
//! right.

use super::checksum;
use super::tcp::TcpFlags;

/// What a super-packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offload {
    /// TCP segments (TSO).
    Tcp,
    /// UDP datagrams (USO).
    Udp,
}

/// Cuts piece `index` out of a super-packet of `kind` (what a sender's
/// segmentation offload hands over uncut: one IPv4 or IPv6 TCP packet
/// larger than the path's MTU, or a UDP packet whose payload is many
/// datagrams) into `dst`: the link, IP and transport headers, then at most
/// `max_payload` bytes of the payload starting at `index * max_payload`,
/// with the IP length, the IPv4 identification (+ `index`) and every
/// checksum made right; for TCP also the sequence number and the flags
/// (FIN and PSH only on the last segment, CWR only on the first), for UDP
/// the UDP length. Returns the piece's length, or `None` when `index` is
/// past the last piece, the frame is not a whole, unfragmented packet of
/// `kind` and `medium`, or `dst` is too small.
pub fn segment(
    kind: Offload,
    medium: super::LinkMedium,
    frame: &[u8],
    max_payload: usize,
    index: usize,
    dst: &mut [u8],
) -> Option<usize> {
    let cut = Cut::new(medium, frame, kind, max_payload, index, dst)?;
    let l4 = cut.l4;
    let out = &mut dst[..cut.len];
    match kind {
        Offload::Tcp => {
            let seq = u32::from_be_bytes([out[l4 + 4], out[l4 + 5], out[l4 + 6], out[l4 + 7]])
                .wrapping_add(cut.start as u32);
            out[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            let mut flags = TcpFlags::from_bits_retain(out[l4 + 13]);
            if !cut.last {
                flags.remove(TcpFlags::FIN | TcpFlags::PSH);
            }
            if index > 0 {
                flags.remove(TcpFlags::CWR);
            }
            out[l4 + 13] = flags.bits();
        }
        Offload::Udp => {
            let udp_len = u16::try_from(cut.len - l4).ok()?;
            out[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
        }
    }
    checksum::fill_all(medium, out);
    Some(cut.len)
}

/// Every piece of a super-packet, in order (what the receiver of a GSO
/// packet gets).
#[cfg(test)]
pub(crate) fn cut_all(
    kind: Offload,
    medium: super::LinkMedium,
    frame: &[u8],
    max_payload: usize,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; frame.len()];
    while let Some(n) = segment(kind, medium, frame, max_payload, out.len(), &mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// One piece cut out of a super-packet: the headers copied, the payload
/// slice after them, the IP length and IPv4 identification set.
struct Cut {
    /// Where the transport header starts.
    l4: usize,
    /// Bytes of the piece.
    len: usize,
    /// Where its payload starts in the super-packet's payload.
    start: usize,
    /// Whether it is the last.
    last: bool,
}

impl Cut {
    /// Writes piece `index` of `frame`, a whole packet of `kind` and
    /// `medium`, into `dst`: its headers, then up to `max` payload bytes.
    fn new(
        medium: super::LinkMedium,
        frame: &[u8],
        kind: Offload,
        max: usize,
        index: usize,
        dst: &mut [u8],
    ) -> Option<Cut> {
        let view = super::FrameView::parse(medium, frame);
        let ip = view.ip()?;
        let head = match ip.transport {
            super::Transport::Tcp { header_len, .. } if kind == Offload::Tcp => {
                ip.l4 + usize::from(header_len)
            }
            super::Transport::Udp { .. } if kind == Offload::Udp => ip.l4 + 8,
            _ => return None,
        };
        if ip.fragment != super::Fragment::Whole || max == 0 {
            return None;
        }
        let payload = frame.get(head..ip.end)?;
        let start = index.checked_mul(max)?;
        if start >= payload.len().max(1) {
            return None;
        }
        let chunk = &payload[start..payload.len().min(start + max)];
        let len = head + chunk.len();
        let out = dst.get_mut(..len)?;
        out[..head].copy_from_slice(&frame[..head]);
        out[head..].copy_from_slice(chunk);
        let l3 = ip.l3;
        if ip.v6 {
            let plen = u16::try_from(len - l3 - 40).ok()?;
            out[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
        } else {
            let total = u16::try_from(len - l3).ok()?;
            out[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
            let id = u16::from_be_bytes([out[l3 + 4], out[l3 + 5]]).wrapping_add(index as u16);
            out[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
        }
        Some(Cut {
            l4: ip.l4,
            len,
            start,
            last: start + chunk.len() == payload.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::LinkMedium;

    #[test]
    fn a_super_segment_is_cut_into_valid_segments() {
        use smoltcp::wire::{IpAddress, Ipv4Address, Ipv4Packet, TcpPacket};
        let tso = |p: &[u8], per, i, buf: &mut [u8]| {
            segment(Offload::Tcp, LinkMedium::Ip, p, per, i, buf)
        };
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let total = 40 + payload.len();
        let mut p = vec![0u8; total];
        p[..20].copy_from_slice(&crate::wire::fixtures::ipv4_header(total, 0x1234, 6));
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
        while let Some(n) = tso(&p, 1000, i, &mut buf) {
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
        assert_eq!(tso(&p, 1000, 0, &mut [0u8; 100]), None);
        assert_eq!(tso(&[0u8; 60], 1000, 0, &mut buf), None);
    }

    #[test]
    fn a_udp_super_datagram_is_cut_into_valid_datagrams() {
        use crate::testing::frames::{ep, udp};
        use smoltcp::wire::{EthernetFrame, IpAddress, Ipv4Address, Ipv4Packet, UdpPacket};
        let (a, b) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
        let payload: Vec<u8> = (0..2500u32).map(|i| (i * 7) as u8).collect();
        let whole = udp(ep(a, 5000), ep(b, 7), &payload);
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        for piece in cut_all(Offload::Udp, LinkMedium::Ethernet, &whole, 1000) {
            let eth = EthernetFrame::new_checked(&piece[..]).unwrap();
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            assert!(ip.verify_checksum());
            let u = UdpPacket::new_checked(ip.payload()).unwrap();
            assert!(u.verify_checksum(&IpAddress::Ipv4(a), &IpAddress::Ipv4(b)));
            assert_eq!(usize::from(u.len()), 8 + u.payload().len());
            assert_eq!((u.src_port(), u.dst_port()), (5000, 7));
            sizes.push(u.payload().len());
            got.extend_from_slice(u.payload());
        }
        assert_eq!(sizes, [1000, 1000, 500]);
        assert_eq!(got, payload);
        // A TCP cut of a UDP packet: nothing.
        assert!(cut_all(Offload::Tcp, LinkMedium::Ethernet, &whole, 1000).is_empty());
    }
}
