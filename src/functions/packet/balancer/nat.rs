//! The NAT rewrite of one end of a packet, worked out once per flow: the
//! new address and port, and the checksum deltas (RFC 1624) of the IPv4
//! header checksum and the TCP/UDP checksum (whose pseudo-header covers
//! the addresses), so that a packet costs two additions and folds.

use super::service::Endpoint;
use crate::wire::{IpView, Transport, checksum};

/// Which end of the packet to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Src,
    Dst,
}

/// A rewrite of one end of a packet from endpoint `old` to `new`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Nat {
    side: Side,
    addr: [u8; 16],
    port: [u8; 2],
    /// Σ~old + Σnew over the address words (the IPv4 header checksum).
    ip_delta: u32,
    /// … and over the port (the transport checksum).
    l4_delta: u32,
}

impl Nat {
    /// `old` and `new` are of the same IP version.
    pub fn new(side: Side, old: Endpoint, new: Endpoint) -> Nat {
        let ((o, len), (n, _)) = (old.addr_bytes(), new.addr_bytes());
        let ip_delta = checksum::delta(&o[..len], &n[..len]);
        let port = new.port.to_be_bytes();
        Nat {
            side,
            addr: n,
            port,
            ip_delta,
            l4_delta: ip_delta + checksum::delta(&old.port.to_be_bytes(), &port),
        }
    }

    /// Rewrites the TCP or UDP packet at `at` in `frame`, whose `side`
    /// end is the `old` endpoint.
    pub fn apply(&self, frame: &mut [u8], at: &Offsets) {
        let (addr_at, port_at) = match self.side {
            Side::Src => (at.src, at.l4),
            Side::Dst => (at.dst, at.l4 + 2),
        };
        if let Some(ck) = at.ip_checksum {
            adjust_at(frame, ck, self.ip_delta);
        }
        let ck = u16::from_be_bytes([frame[at.l4_checksum], frame[at.l4_checksum + 1]]);
        // An IPv4 UDP checksum of zero means "none": it stays zero.
        if !(at.udp && ck == 0 && at.ip_checksum.is_some()) {
            let mut ck = checksum::adjust(ck, self.l4_delta);
            if at.udp && ck == 0 {
                // Zero would read as "none": its one's-complement twin.
                ck = 0xffff;
            }
            frame[at.l4_checksum..at.l4_checksum + 2].copy_from_slice(&ck.to_be_bytes());
        }
        frame[addr_at..addr_at + at.addr_len].copy_from_slice(&self.addr[..at.addr_len]);
        frame[port_at..port_at + 2].copy_from_slice(&self.port);
    }
}

/// Where a TCP or UDP packet's rewritten fields are in its frame, taken
/// from its parsed view (which checked every one of them).
#[derive(Debug, Clone, Copy)]
pub(super) struct Offsets {
    src: usize,
    dst: usize,
    addr_len: usize,
    /// The IPv4 header checksum (IPv6 has none).
    ip_checksum: Option<usize>,
    l4: usize,
    l4_checksum: usize,
    udp: bool,
}

impl Offsets {
    /// `None` unless the view holds a TCP or UDP header.
    pub fn of(ip: &IpView) -> Option<Offsets> {
        let (src, dst, addr_len) = ip.addr_at();
        Some(Offsets {
            src,
            dst,
            addr_len,
            ip_checksum: (!ip.v6).then_some(ip.l3 + 10),
            l4: ip.l4,
            l4_checksum: ip.l4_checksum_at()?,
            udp: matches!(ip.transport, Transport::Udp { .. }),
        })
    }
}

/// Adds a precomputed `delta` to the checksum stored at `at`.
fn adjust_at(frame: &mut [u8], at: usize, delta: u32) {
    let ck = u16::from_be_bytes([frame[at], frame[at + 1]]);
    frame[at..at + 2].copy_from_slice(&checksum::adjust(ck, delta).to_be_bytes());
}
