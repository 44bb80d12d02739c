//! Neighbour warm-up: seeds smoltcp's neighbour cache from the adapters'
//! directories.
//!
//! For every neighbour a directory lists, the stack is handed an
//! unsolicited ARP reply (IPv4) and neighbour advertisement (IPv6), as if
//! the neighbour had announced itself; neither makes the stack answer.
//! Without this, the first packet to a new neighbour is dropped while
//! ARP/NDP runs, and a dropped SYN costs TCP a 1 s retransmission. It is
//! redone when a directory changes and every 30 s (entries live 60 s).

use smoltcp::phy::{ChecksumCapabilities, Medium};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv4Address, Ipv6Address, Ipv6Packet,
    Ipv6Repr, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
};

use super::Nic;
use crate::stack::Role;

/// How often the cache is seeded even when no directory changed.
const REWARM_EVERY: Duration = Duration::from_secs(30);

/// When each directory was last read.
#[derive(Debug)]
pub(super) struct Warmup {
    /// Directory generation last seeded from, by [`Role::index`].
    generation: [Option<u32>; 2],
    /// When to seed again regardless.
    due: Instant,
}

impl Default for Warmup {
    fn default() -> Warmup {
        Warmup {
            generation: [None; 2],
            due: Instant::ZERO,
        }
    }
}

impl Nic {
    /// Queues announcements for the neighbours of every directory that
    /// changed (or all of them, when due).
    pub(super) fn warm_neighbours(&mut self, now: Instant) {
        if self.router.medium() != Medium::Ethernet {
            return;
        }
        let stale = now >= self.warm.due;
        for role in Role::ALL {
            let a = &self.adapters[role.index()];
            let generation = a.directory_generation();
            if !stale && self.warm.generation[role.index()] == Some(generation) {
                continue;
            }
            self.warm.generation[role.index()] = Some(generation);
            let me = a.own_entry();
            for n in a.neighbours().into_iter().filter(|n| n.mac != me.mac) {
                if let (Some(theirs), Some(mine)) = (n.ipv4, me.ipv4) {
                    let f = arp_announcement(n.mac, theirs, me.mac, mine);
                    self.inject.push_back((role, f));
                }
                if let (Some(theirs), Some(mine)) = (n.ipv6, me.ipv6) {
                    let f = ndp_announcement(n.mac, theirs, me.mac, mine);
                    self.inject.push_back((role, f));
                }
            }
        }
        if stale {
            self.warm.due = now + REWARM_EVERY;
        }
    }
}

/// An ARP reply from `mac`/`ip` to `my_mac`/`my_ip` (RFC 826).
fn arp_announcement(
    mac: EthernetAddress,
    ip: Ipv4Address,
    my_mac: EthernetAddress,
    my_ip: Ipv4Address,
) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    f[0..6].copy_from_slice(&my_mac.0);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    // Ethernet, IPv4, 6-byte and 4-byte addresses, operation 2 (reply).
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f[22..28].copy_from_slice(&mac.0);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&my_mac.0);
    f[38..42].copy_from_slice(&my_ip.octets());
    f
}

/// A neighbour advertisement (override, with the target link-layer
/// address) from `mac`/`ip` to `my_mac`/`my_ip` (RFC 4861).
fn ndp_announcement(
    mac: EthernetAddress,
    src: Ipv6Address,
    my_mac: EthernetAddress,
    dst: Ipv6Address,
) -> Vec<u8> {
    let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
        flags: NdiscNeighborFlags::OVERRIDE,
        target_addr: src,
        lladdr: Some(RawHardwareAddress::from(mac)),
    });
    let ip_repr = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit: 255,
    };
    let mut f = vec![0u8; 14 + 40 + icmp.buffer_len()];
    f[0..6].copy_from_slice(&my_mac.0);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    ip_repr.emit(&mut Ipv6Packet::new_unchecked(&mut f[14..54]));
    icmp.emit(
        &src,
        &dst,
        &mut Icmpv6Packet::new_unchecked(&mut f[54..]),
        &ChecksumCapabilities::default(),
    );
    f
}
