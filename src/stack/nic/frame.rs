//! The few header fields the Nic reads and rewrites in a frame, kept in one
//! place: what a frame is routed by, its destination and TTL, whether it is
//! a TCP SYN, and the forwarding rewrites (MACs, TTL, MSS clamp). Each
//! reads the frame's one parsed view ([`FrameView`], parsed once per frame
//! by the Nic) and writes at the offsets the view found, so a short or
//! garbled frame is "not IP", never a panic.

use smoltcp::wire::IpAddress;

use crate::wire::checksum::update as checksum_update;
use crate::wire::tcp::{TcpFlags, clamp_mss as clamp_tcp_mss, mss_for_mtu, shave_window};
use crate::wire::{FrameView, Transport};

/// The destination and TTL / hop limit of the IP packet in a frame.
pub(super) fn dst_ttl(view: &FrameView) -> Option<(IpAddress, u8)> {
    let v = view.ip()?;
    Some((v.dst_addr(), v.hop_limit))
}

/// The address a frame is routed by: the IP destination, an ARP request's
/// target, a neighbour solicitation's target. `None` for what stays on the
/// local network: other multicast, non-IP, frames too short to tell.
pub(super) fn route_address(view: &FrameView, frame: &[u8]) -> Option<IpAddress> {
    match view {
        FrameView::Ip(v) if v.v6 && v.dst >> 120 == 0xff => {
            // Multicast: neighbour solicitations go where their target is.
            v.nd_target(frame).map(IpAddress::Ipv6)
        }
        FrameView::Ip(v) => Some(v.dst_addr()),
        FrameView::Arp { target } => target.map(IpAddress::Ipv4),
        _ => None,
    }
}

/// Is the frame a TCP SYN (whose MSS a smaller network may clamp)?
pub(super) fn is_tcp_syn(view: &FrameView) -> bool {
    view.ip()
        .and_then(|v| v.tcp_flags())
        .is_some_and(|f| f.contains(TcpFlags::SYN))
}

/// Lowers the MSS of a TCP SYN so its segments fit an IP MTU of `mtu`
/// (`checksummed`: see [`clamp_tcp_mss`]). Returns whether the frame
/// changed.
pub(super) fn clamp_mss(view: &FrameView, frame: &mut [u8], mtu: usize, checksummed: bool) -> bool {
    let Some(v) = view.ip() else {
        return false;
    };
    if !matches!(v.transport, Transport::Tcp { flags, .. } if flags.contains(TcpFlags::SYN)) {
        return false;
    }
    let Some(tcp) = frame.get_mut(v.l4..v.end) else {
        return false;
    };
    clamp_tcp_mss(tcp, mss_for_mtu(mtu, v.v6), checksummed)
}

/// Keeps the window a device's own TCP segment advertises one unit inside
/// what its stack holds ([`shave_window`] says why); `checksummed`: the
/// stack fills in checksums.
pub(super) fn keep_window_margin(view: &FrameView, frame: &mut [u8], checksummed: bool) -> bool {
    let Some(v) = view.ip() else {
        return false;
    };
    if !matches!(v.transport, Transport::Tcp { .. }) {
        return false;
    }
    frame
        .get_mut(v.l4..v.end)
        .is_some_and(|tcp| shave_window(tcp, checksummed))
}

/// Rewrites a frame being forwarded: link-layer addresses (Ethernet) and
/// TTL / hop limit, fixing the IPv4 header checksum incrementally.
pub(super) fn rewrite_forwarded(
    l2: usize,
    view: &FrameView,
    frame: &mut [u8],
    macs: Option<([u8; 6], [u8; 6])>,
) {
    if let (Some((dst, src)), true) = (macs, l2 == 14 && frame.len() >= 14) {
        frame[0..6].copy_from_slice(&dst);
        frame[6..12].copy_from_slice(&src);
    }
    let Some(v) = view.ip() else {
        return;
    };
    let Some(ip) = frame.get_mut(v.l3..v.end) else {
        return;
    };
    if v.v6 {
        ip[7] = ip[7].saturating_sub(1);
    } else {
        let old = u16::from_be_bytes([ip[8], ip[9]]);
        ip[8] = ip[8].saturating_sub(1);
        let new = u16::from_be_bytes([ip[8], ip[9]]);
        let ck = u16::from_be_bytes([ip[10], ip[11]]);
        ip[10..12].copy_from_slice(&checksum_update(ck, old, new).to_be_bytes());
    }
}

/// Sets the destination MAC of an Ethernet frame.
pub(super) fn set_dst_mac(frame: &mut [u8], mac: [u8; 6]) {
    if let Some(d) = frame.get_mut(0..6) {
        d.copy_from_slice(&mac);
    }
}
