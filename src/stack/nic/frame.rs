//! The few header fields the Nic reads and rewrites in a frame, kept in one
//! place: what a frame is routed by, its destination and TTL, whether it is
//! a TCP SYN, and the forwarding rewrites (MACs, TTL, MSS clamp).
//!
//! Every read is bounds-checked: a short or garbled frame reads as "not
//! IP", never a panic. (These byte reads are what the parsed IP view of
//! `crate::wire` replaces, one parse per frame.)

use smoltcp::wire::{IpAddress, Ipv4Address, Ipv6Address};

const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];

/// The IP packet inside a frame whose link header is `l2` bytes (14 on
/// Ethernet, 0 on the IP medium), if it carries one.
pub(super) fn ip_packet(l2: usize, frame: &[u8]) -> Option<&[u8]> {
    if l2 == 0 {
        return Some(frame);
    }
    match frame.get(12..14)? {
        t if t == ETHERTYPE_IPV4 || t == ETHERTYPE_IPV6 => frame.get(l2..),
        _ => None,
    }
}

fn v4(b: Option<&[u8]>) -> Option<IpAddress> {
    Some(IpAddress::Ipv4(Ipv4Address::from_octets(
        b?.try_into().ok()?,
    )))
}

fn v6(b: Option<&[u8]>) -> Option<IpAddress> {
    Some(IpAddress::Ipv6(Ipv6Address::from_octets(
        b?.try_into().ok()?,
    )))
}

/// The destination and TTL / hop limit of the IP packet in a frame.
pub(super) fn dst_ttl(l2: usize, frame: &[u8]) -> Option<(IpAddress, u8)> {
    let ip = ip_packet(l2, frame)?;
    match ip.first()? >> 4 {
        4 => Some((v4(ip.get(16..20))?, *ip.get(8)?)),
        6 => Some((v6(ip.get(24..40))?, *ip.get(7)?)),
        _ => None,
    }
}

/// The address a frame is routed by: the IP destination, an ARP request's
/// target, a neighbour solicitation's target. `None` for what stays on the
/// local network: other multicast, non-IP, frames too short to tell.
pub(super) fn route_address(l2: usize, frame: &[u8]) -> Option<IpAddress> {
    let (kind, ip) = if l2 == 0 {
        let kind = match frame.first()? >> 4 {
            4 => ETHERTYPE_IPV4,
            6 => ETHERTYPE_IPV6,
            _ => return None,
        };
        (kind, frame)
    } else {
        (frame.get(12..14)?.try_into().ok()?, frame.get(l2..)?)
    };
    match kind {
        ETHERTYPE_IPV4 => v4(ip.get(16..20)),
        ETHERTYPE_ARP => v4(ip.get(24..28)),
        ETHERTYPE_IPV6 if *ip.get(24)? == 0xff => {
            // Multicast: neighbour solicitations go where their target is.
            let ns = ip.get(6) == Some(&58) && ip.get(40) == Some(&135);
            if ns { v6(ip.get(48..64)) } else { None }
        }
        ETHERTYPE_IPV6 => v6(ip.get(24..40)),
        _ => None,
    }
}

/// The TCP header of a frame carrying TCP, and the IP header's length
/// counted for MSS purposes (20 for IPv4, 40 for IPv6).
fn tcp_mut(l2: usize, frame: &mut [u8]) -> Option<(&mut [u8], usize)> {
    ip_packet(l2, frame)?;
    let ip = frame.get_mut(l2..)?;
    match ip.first()? >> 4 {
        4 if ip.len() >= 20 && ip[9] == 6 => {
            let ihl = (ip[0] & 0xf) as usize * 4;
            Some((ip.get_mut(ihl..)?, 20))
        }
        6 if ip.len() >= 40 && ip[6] == 6 => Some((ip.get_mut(40..)?, 40)),
        _ => None,
    }
}

/// Is the frame a TCP SYN (whose MSS a smaller network may clamp)?
pub(super) fn is_tcp_syn(l2: usize, frame: &[u8]) -> bool {
    let Some(ip) = ip_packet(l2, frame) else {
        return false;
    };
    let tcp = match ip.first().map(|b| b >> 4) {
        Some(4) if ip.get(9) == Some(&6) => ip.get((ip[0] & 0xf) as usize * 4..),
        Some(6) if ip.get(6) == Some(&6) => ip.get(40..),
        _ => None,
    };
    tcp.and_then(|t| t.get(13)).is_some_and(|f| f & 0x02 != 0)
}

/// Lowers the MSS of a TCP SYN so its segments fit an IP MTU of `mtu`.
/// Returns whether the frame changed.
pub(super) fn clamp_mss(l2: usize, frame: &mut [u8], mtu: usize) -> bool {
    let Some((tcp, ip_hdr)) = tcp_mut(l2, frame) else {
        return false;
    };
    let max_mss = mtu.saturating_sub(ip_hdr + 20).min(u16::MAX as usize) as u16;
    clamp_tcp_mss(tcp, max_mss)
}

/// Rewrites a frame being forwarded: link-layer addresses (Ethernet) and
/// TTL / hop limit, fixing the IPv4 header checksum incrementally.
pub(super) fn rewrite_forwarded(l2: usize, frame: &mut [u8], macs: Option<([u8; 6], [u8; 6])>) {
    if let (Some((dst, src)), true) = (macs, l2 == 14 && frame.len() >= 14) {
        frame[0..6].copy_from_slice(&dst);
        frame[6..12].copy_from_slice(&src);
    }
    let Some(ip) = frame.get_mut(l2..) else {
        return;
    };
    match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= 20 => {
            let old = u16::from_be_bytes([ip[8], ip[9]]);
            ip[8] = ip[8].saturating_sub(1);
            let new = u16::from_be_bytes([ip[8], ip[9]]);
            let ck = u16::from_be_bytes([ip[10], ip[11]]);
            ip[10..12].copy_from_slice(&checksum_update(ck, old, new).to_be_bytes());
        }
        Some(6) if ip.len() >= 40 => ip[7] = ip[7].saturating_sub(1),
        _ => {}
    }
}

/// Sets the destination MAC of an Ethernet frame.
pub(super) fn set_dst_mac(frame: &mut [u8], mac: [u8; 6]) {
    if let Some(d) = frame.get_mut(0..6) {
        d.copy_from_slice(&mac);
    }
}

use crate::wire::checksum::update as checksum_update;
use crate::wire::tcp::clamp_mss as clamp_tcp_mss;
