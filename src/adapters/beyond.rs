//! Stations beyond a network's uplink: the hosts a VXLAN gateway reaches,
//! which no directory of this host lists. A device's own stack finds them
//! with ARP like any stack; a device that forwards frames to one (a
//! firewall or router whose next hop is on another host) asks here: their
//! addresses are learned from the ARP they send in through the uplink, and
//! an address not known yet is asked for with an ARP request (at most once
//! a second per address), so the frames after it find their way.
//!
//! IPv4 only; what comes in is hostile: a malformed, multicast-sender or
//! unspecified-address ARP teaches nothing, and the table is bounded.

use std::time::{Duration, Instant};

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Ipv4Address,
};

/// Addresses remembered (and asked for) at most.
const MAX: usize = 256;
/// A learned address not heard from for this long is forgotten.
const AGE: Duration = Duration::from_secs(60);
/// An address is asked for at most this often.
const ASK_EVERY: Duration = Duration::from_secs(1);
/// Bytes of an Ethernet ARP frame for IPv4.
pub const ARP_FRAME_LEN: usize = 42;

/// What is known, and what was asked, of the stations beyond.
#[derive(Debug, Default)]
pub struct Beyond {
    learned: Vec<(Ipv4Address, EthernetAddress, Instant)>,
    asked: Vec<(Ipv4Address, Instant)>,
}

impl Beyond {
    /// Learns the sender of `frame` if it is an Ethernet ARP request or
    /// reply for IPv4 from a unicast station with an address.
    pub fn learn(&mut self, frame: &[u8]) {
        let Some((mac, ip)) = arp_sender(frame) else {
            return;
        };
        let now = Instant::now();
        self.asked.retain(|(a, _)| *a != ip);
        if let Some(e) = self.learned.iter_mut().find(|e| e.0 == ip) {
            (e.1, e.2) = (mac, now);
            return;
        }
        if self.learned.len() >= MAX {
            self.learned.retain(|e| now.duration_since(e.2) < AGE);
        }
        if self.learned.len() >= MAX {
            // Still full of fresh entries: the oldest makes room.
            if let Some(oldest) = (0..self.learned.len()).min_by_key(|&i| self.learned[i].2) {
                self.learned.swap_remove(oldest);
            }
        }
        self.learned.push((ip, mac, now));
    }

    /// The hardware address `ip` was last heard from, if recently.
    pub fn mac_of(&self, ip: Ipv4Address) -> Option<EthernetAddress> {
        self.learned
            .iter()
            .find(|e| e.0 == ip && e.2.elapsed() < AGE)
            .map(|e| e.1)
    }

    /// Whether to ask for `ip` now (not asked for in the last second).
    pub fn should_ask(&mut self, ip: Ipv4Address) -> bool {
        let now = Instant::now();
        if let Some(e) = self.asked.iter_mut().find(|e| e.0 == ip) {
            if now.duration_since(e.1) < ASK_EVERY {
                return false;
            }
            e.1 = now;
            return true;
        }
        if self.asked.len() >= MAX {
            self.asked.retain(|e| now.duration_since(e.1) < ASK_EVERY);
            if self.asked.len() >= MAX {
                return false;
            }
        }
        self.asked.push((ip, now));
        true
    }
}

/// The sender of an Ethernet ARP request or reply for IPv4, if it is a
/// unicast station with an address.
fn arp_sender(frame: &[u8]) -> Option<(EthernetAddress, Ipv4Address)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let arp = ArpPacket::new_checked(eth.payload()).ok()?;
    let ArpRepr::EthernetIpv4 {
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        ..
    } = ArpRepr::parse(&arp).ok()?
    else {
        return None;
    };
    (mac.is_unicast() && !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast())
        .then_some((mac, ip))
}

/// Whether `frame` is an Ethernet ARP frame (a cheap look at the
/// EtherType, for the per-frame path).
pub fn is_arp(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&[0x08, 0x06])
}

/// Writes a broadcast ARP request from `mac`/`ip` for `target` into `buf`
/// ([`ARP_FRAME_LEN`] bytes); returns its length, or `None` if `buf` is
/// too small.
pub fn arp_request(
    buf: &mut [u8],
    mac: EthernetAddress,
    ip: Ipv4Address,
    target: Ipv4Address,
) -> Option<usize> {
    let buf = buf.get_mut(..ARP_FRAME_LEN)?;
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: mac,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut eth);
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    }
    .emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    Some(ARP_FRAME_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 9]);
    const IP: Ipv4Address = Ipv4Address::new(10, 79, 0, 9);

    #[test]
    fn learns_the_sender_of_an_arp_and_asks_at_most_once_a_second() {
        let mut b = Beyond::default();
        let target = Ipv4Address::new(10, 79, 0, 1);
        assert_eq!(b.mac_of(target), None);
        assert!(b.should_ask(target));
        assert!(!b.should_ask(target), "asked again within a second");
        // Its request (what it sends when it asks us) teaches its address.
        let mut f = [0u8; ARP_FRAME_LEN];
        assert_eq!(arp_request(&mut f, MAC, IP, target), Some(ARP_FRAME_LEN));
        assert!(is_arp(&f));
        b.learn(&f);
        assert_eq!(b.mac_of(IP), Some(MAC));
        // Hostile or useless ARP teaches nothing.
        let mut bad = f;
        bad[22] |= 1; // a multicast sender
        let mut b2 = Beyond::default();
        b2.learn(&bad);
        b2.learn(&f[..30]);
        let mut unspecified = [0u8; ARP_FRAME_LEN];
        arp_request(&mut unspecified, MAC, Ipv4Address::UNSPECIFIED, target);
        b2.learn(&unspecified);
        assert!(b2.learned.is_empty());
        assert_eq!(arp_request(&mut [0u8; 10], MAC, IP, target), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut b = Beyond::default();
        let mut f = [0u8; ARP_FRAME_LEN];
        for i in 0..(MAX as u32 + 50) {
            let ip = Ipv4Address::from_bits(0x0a00_0000 + i);
            arp_request(&mut f, MAC, ip, IP);
            b.learn(&f);
            b.should_ask(ip);
        }
        assert_eq!(b.learned.len(), MAX);
        assert!(b.asked.len() <= MAX);
        // The newest is kept.
        assert_eq!(
            b.mac_of(Ipv4Address::from_bits(0x0a00_0000 + MAX as u32 + 49)),
            Some(MAC)
        );
    }
}
