//! The Internet checksum (RFC 1071): full, and updated incrementally when a
//! few words change (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
//!
//! An incremental update keeps a wrong checksum wrong, which a router
//! must do: it never hides corruption it did not cause.
//!
//! ```
//! use shmnet::wire::checksum;
//! let mut hdr = [0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
//! let ck = checksum::ipv4_header(&hdr);
//! hdr[10..12].copy_from_slice(&ck.to_be_bytes());
//! assert_eq!(checksum::ipv4_header(&hdr), 0);
//! // TTL 64 -> 63, updated incrementally, still valid.
//! let old = u16::from_be_bytes([hdr[8], hdr[9]]);
//! hdr[8] = 63;
//! let new = u16::from_be_bytes([hdr[8], hdr[9]]);
//! let ck = checksum::update(ck, old, new);
//! hdr[10..12].copy_from_slice(&ck.to_be_bytes());
//! assert_eq!(checksum::ipv4_header(&hdr), 0);
//! ```

/// The checksum an IPv4 header should carry, computed over `header` (the
/// header with its checksum field zero gives the value to store; a header
/// with a valid checksum gives 0).
pub fn ipv4_header(header: &[u8]) -> u16 {
    !smoltcp::wire::checksum::data(header)
}

/// Computes and stores the header checksum of the IPv4 header `header`
/// (its length: 20 bytes, or more with options), after the caller changed
/// its fields.
pub fn fill_ipv4_header(header: &mut [u8]) {
    header[10..12].fill(0);
    let ck = ipv4_header(header);
    header[10..12].copy_from_slice(&ck.to_be_bytes());
}

/// Folds a one's-complement accumulator to 16 bits.
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// `ck` after one 16-bit word of the covered data changed `old` → `new`.
pub fn update(ck: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!ck) + u32::from(!old) + u32::from(new))
}

/// The one's-complement difference `Σ~old + Σnew` of two equally long
/// runs of big-endian words, to apply to many packets with [`adjust`]
/// (e.g. a NAT rewrite worked out once per flow).
pub fn delta(old: &[u8], new: &[u8]) -> u32 {
    sum_words(sum_words(0, old, true), new, false)
}

/// Adds the big-endian 16-bit words of `bytes` (complemented if `negate`)
/// to a one's-complement accumulator.
pub fn sum_words(mut acc: u32, bytes: &[u8], negate: bool) -> u32 {
    for w in bytes.chunks_exact(2) {
        let v = u16::from_be_bytes([w[0], w[1]]);
        acc += u32::from(if negate { !v } else { v });
    }
    acc
}

/// `ck` after adding a precomputed [`delta`].
pub fn adjust(ck: u16, delta: u32) -> u16 {
    !fold(u32::from(!ck) + (delta & 0xffff) + (delta >> 16))
}

/// Rewrites the 16-bit checksum stored at `at` in `buf` for a change of
/// `old` → `new` words; `false` if `at` is out of range.
pub fn update_at(buf: &mut [u8], at: usize, old: &[u8], new: &[u8]) -> bool {
    let Some(b) = buf.get_mut(at..at + 2) else {
        return false;
    };
    let ck = u16::from_be_bytes([b[0], b[1]]);
    b.copy_from_slice(&adjust(ck, delta(old, new)).to_be_bytes());
    true
}

/// Writes every checksum of the IP packet in `frame` (a frame of
/// `medium`): the IPv4 header's and the TCP, UDP, ICMP or ICMPv6 one, for
/// a peer that verifies them (the Linux kernel behind a TAP) when the
/// senders on a shared-memory network left them out. A fragment gets only
/// its IPv4 header checksum (its transport checksum covers bytes it does
/// not hold); a frame that is not a well-formed IP packet is left as it
/// is. Returns whether it wrote anything.
pub fn fill_all(medium: super::LinkMedium, frame: &mut [u8]) -> bool {
    // (The sum of at most 32 Ki words of 0xffff fits the u32 accumulator.)
    let view = super::FrameView::parse(medium, frame);
    let Some(ip) = view.ip() else {
        return false;
    };
    let (l3, l4, end) = (ip.l3, ip.l4, ip.end.min(frame.len()));
    if !ip.v6 && l4 <= end {
        fill_ipv4_header(&mut frame[l3..l4]);
    }
    if ip.fragment != super::Fragment::Whole || l4 > end {
        return !ip.v6;
    }
    // The view keeps addresses as u128 (IPv4 in the low 32 bits).
    let (src, dst) = (ip.src.to_be_bytes(), ip.dst.to_be_bytes());
    let (src, dst) = if ip.v6 {
        (&src[..], &dst[..])
    } else {
        (&src[12..], &dst[12..])
    };
    let payload = &mut frame[l4..end];
    // Only a transport header the parser found whole: `l4` means nothing
    // otherwise (a cut-short or over-long extension-header chain).
    let (at, pseudo) = match ip.transport {
        super::Transport::Tcp { .. } => (16, true),
        super::Transport::Udp { .. } => (6, true),
        super::Transport::Icmp { .. } => (2, ip.v6),
        _ => return !ip.v6,
    };
    if payload.len() < at + 2 {
        return !ip.v6;
    }
    payload[at..at + 2].fill(0);
    let mut acc = 0u32;
    if pseudo {
        acc = pseudo_header(src, dst, ip.proto, payload.len());
    }
    acc = sum_words(acc, payload, false);
    if payload.len() % 2 == 1 {
        acc += u32::from(payload[payload.len() - 1]) << 8;
    }
    let mut ck = !fold(acc);
    // UDP sends an all-zero result as all ones (0 means "no checksum").
    if ck == 0 && ip.proto == 17 {
        ck = 0xffff;
    }
    payload[at..at + 2].copy_from_slice(&ck.to_be_bytes());
    true
}

/// The one's-complement sum (not folded) of the TCP/UDP/ICMPv6
/// pseudo-header of a `len`-byte `proto` payload between the addresses
/// `src` and `dst` as they stand in an IPv4 or IPv6 header.
pub fn pseudo_header(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u32 {
    let acc = sum_words(sum_words(0, src, false), dst, false);
    acc + u32::from(proto) + (len as u32 & 0xffff) + (len as u32 >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::LinkMedium;
    use smoltcp::wire::{IpAddress, Ipv4Address, Ipv4Packet, TcpPacket, UdpPacket};

    #[test]
    fn incremental_matches_full() {
        let mut hdr = [
            0x45u8, 0, 0, 60, 1, 2, 0x40, 0, 64, 6, 0, 0, 192, 168, 1, 1, 10, 9, 8, 7,
        ];
        let ck = ipv4_header(&hdr);
        hdr[10..12].copy_from_slice(&ck.to_be_bytes());
        let old = hdr[12..16].to_vec();
        let new = [172u8, 16, 0, 99];
        hdr[12..16].copy_from_slice(&new);
        assert!(update_at(&mut hdr, 10, &old, &new));
        assert_eq!(ipv4_header(&hdr), 0);
        // The precomputed delta of two rewrites equals both applied.
        let d = delta(&[1, 2, 3, 4], &[5, 6, 7, 8]) + delta(&[0, 9], &[0xff, 0xff]);
        let a = adjust(
            adjust(0x1234, delta(&[1, 2, 3, 4], &[5, 6, 7, 8])),
            delta(&[0, 9], &[0xff, 0xff]),
        );
        assert_eq!(adjust(0x1234, d), a);
        assert!(!update_at(&mut hdr, 19, &old, &new));
    }

    #[test]
    fn fill_writes_the_checksum_smoltcp_verifies() {
        let mut hdr = [
            0x45u8, 0, 0, 28, 0, 0, 0x40, 0, 64, 50, 0xde, 0xad, 10, 2, 0, 1, 10, 2, 0, 2,
        ];
        fill_ipv4_header(&mut hdr);
        assert_eq!(ipv4_header(&hdr), 0);
        assert!(smoltcp::wire::Ipv4Packet::new_unchecked(&hdr[..]).verify_checksum());
        // A field changed: filled again, valid again.
        hdr[8] = 1;
        fill_ipv4_header(&mut hdr);
        assert_eq!(ipv4_header(&hdr), 0);
    }

    /// An IPv4 packet with zeroed checksums and `payload` after an L4
    /// header of `proto`.
    fn packet(proto: u8, l4_len: usize, payload: &[u8]) -> Vec<u8> {
        let total = 20 + l4_len + payload.len();
        let mut p = vec![0u8; total];
        p[..20].copy_from_slice(&crate::wire::fixtures::ipv4_header(total, 0, proto));
        p[20..22].copy_from_slice(&1234u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        if proto == 6 {
            p[32] = 5 << 4;
        } else {
            let udp_len = (l4_len + payload.len()) as u16;
            p[24..26].copy_from_slice(&udp_len.to_be_bytes());
        }
        p[20 + l4_len..].copy_from_slice(payload);
        p
    }

    #[test]
    fn fill_all_writes_checksums_smoltcp_accepts() {
        let (src, dst) = (
            IpAddress::Ipv4(Ipv4Address::new(10, 0, 0, 1)),
            IpAddress::Ipv4(Ipv4Address::new(10, 0, 0, 2)),
        );
        for odd in [b"hello".as_slice(), b"hello!".as_slice(), b"".as_slice()] {
            let mut tcp = packet(6, 20, odd);
            assert!(fill_all(LinkMedium::Ip, &mut tcp));
            let ip = Ipv4Packet::new_checked(&tcp[..]).unwrap();
            assert!(ip.verify_checksum());
            assert!(
                TcpPacket::new_checked(ip.payload())
                    .unwrap()
                    .verify_checksum(&src, &dst)
            );
            let mut udp = packet(17, 8, odd);
            assert!(fill_all(LinkMedium::Ip, &mut udp));
            let ip = Ipv4Packet::new_checked(&udp[..]).unwrap();
            assert!(
                UdpPacket::new_checked(ip.payload())
                    .unwrap()
                    .verify_checksum(&src, &dst)
            );
        }
        // Not IP: untouched.
        let mut junk = vec![0u8; 10];
        assert!(!fill_all(LinkMedium::Ip, &mut junk));
        assert_eq!(junk, vec![0u8; 10]);
    }
}
