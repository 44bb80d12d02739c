//! Each network's MTU holds exactly: an IP packet of the MTU passes, one
//! byte more is a counted `oversize` drop: received or sent by a device's
//! stack, and forwarded, on Ethernet and IP networks. The devices run on
//! virtual time (`Device::poll_at`) in the test's thread; raw ports send
//! the hand-made packets and see what comes out.

mod common;

use common::*;
use shmnet::adapters::shm::{LinkMedium, NetworkParams, PortInfo};
use shmnet::config::DeviceConfig;
use shmnet::shm::SegmentKind;
use shmnet::stack::Device;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr,
    IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
};

const ETHERNET: &str = "ethernet";
const IP: &str = "ip";

/// A device's stack, a raw port per network, and a virtual clock.
struct Bench {
    dev: Device,
    medium: &'static str,
    clock: i64,
}

impl Bench {
    fn device(text: &str, medium: &'static str) -> Bench {
        let cfg = DeviceConfig::from_toml(text, "mtu test").expect("config is valid");
        Bench {
            dev: Device::new(&cfg, SegmentKind::Process).expect("device starts"),
            medium,
            clock: 0,
        }
    }

    /// Polls the device a few rounds of virtual time.
    fn run(&mut self) {
        for _ in 0..8 {
            self.clock += 1;
            self.dev.poll_at(Instant::from_millis(self.clock));
        }
    }

    fn oversize(&self) -> u64 {
        self.dev.stats().nic.oversize
    }

    /// A raw port on `segment` (MTU `mtu`) owning `ip`, attached after the
    /// device (whose port is its only peer).
    fn raw(&mut self, segment: &str, mtu: u32, ip: [u8; 4], tag: u8) -> RawPort {
        let mut params = NetworkParams::new(mtu);
        if self.medium == IP {
            params.medium = LinkMedium::Ip;
        }
        let info = PortInfo {
            name: format!("raw-{tag}"),
            mac: [2, 0, 0, 0, 0x77, tag],
            ipv4: Some(ip),
            ipv6: None,
        };
        let raw = raw_port_as(segment, &params, &info);
        // Let the device learn the new neighbour.
        self.run();
        raw
    }
}

/// An ICMP echo request of exactly `len` bytes of IP packet, in a frame of
/// the medium (to the MAC of the port's first peer on Ethernet).
fn echo_request(
    raw: &RawPort,
    medium: &str,
    src: Ipv4Address,
    dst: Ipv4Address,
    len: usize,
) -> Vec<u8> {
    let data = vec![0x5a; len - 20 - 8];
    let icmp = Icmpv4Repr::EchoRequest {
        ident: 7,
        seq_no: len as u16,
        data: &data,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let mut packet = vec![0u8; len];
    let caps = ChecksumCapabilities::default();
    let mut p = Ipv4Packet::new_unchecked(&mut packet[..]);
    ip.emit(&mut p, &caps);
    icmp.emit(&mut Icmpv4Packet::new_unchecked(p.payload_mut()), &caps);
    if medium == IP {
        return packet;
    }
    let eth = EthernetRepr {
        src_addr: EthernetAddress(raw.port.segment().peer(raw.port.index()).unwrap().mac),
        dst_addr: EthernetAddress(raw.others[0].1),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut frame = vec![0u8; 14 + len];
    eth.emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    frame[14..].copy_from_slice(&packet);
    frame
}

/// Sends `frame` to the raw port's first peer (the device).
fn send(raw: &mut RawPort, frame: &[u8]) {
    let mut buf = raw.port.alloc().expect("a free buffer");
    raw.port.buffer_mut(&mut buf)[..frame.len()].copy_from_slice(frame);
    raw.port.send(buf, frame.len(), &[raw.others[0].0]);
    raw.port.flush();
}

/// The IPv4 packets that reached the raw port: (total length, TTL).
fn received(raw: &mut RawPort, medium: &str) -> Vec<(usize, u8)> {
    let mut buf = vec![0u8; raw.segment.frame_size()];
    let mut out = Vec::new();
    while let Some((len, _)) = raw.port.recv_into(&mut buf) {
        let frame = &buf[..len];
        let ip = if medium == IP {
            frame
        } else {
            match EthernetFrame::new_checked(frame) {
                Ok(f) if f.ethertype() == EthernetProtocol::Ipv4 => &frame[14..],
                _ => continue,
            }
        };
        if let Ok(p) = Ipv4Packet::new_checked(ip) {
            out.push((p.total_len() as usize, p.hop_limit()));
        }
    }
    raw.port.flush();
    out
}

fn device_toml(lan: &str, wan: &str, medium: &str, extra: &str) -> String {
    format!(
        r#"
name = "host"
{extra}
local = {{ segment = "{lan}", address = "10.0.0.1/24", mtu = 1500, medium = "{medium}" }}
global = {{ segment = "{wan}", address = "10.100.0.1/16", mtu = 9000, medium = "{medium}" }}
"#
    )
}

fn a(o: [u8; 4]) -> Ipv4Address {
    Ipv4Address::from_octets(o)
}

/// A device with a 1500-byte local and a 9000-byte global network: echo
/// requests of each network's MTU are answered, one byte more is dropped
/// on arrival; a reply the stack makes that is too big for the network it
/// is routed to is dropped on the way out.
fn device_enforces_mtus(medium: &'static str) {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let mut b = Bench::device(&device_toml(&lan, &wan, medium, ""), medium);
    let mut raw_lan = b.raw(&lan, 1500, [10, 0, 0, 77], 1);
    let mut raw_wan = b.raw(&wan, 9000, [10, 100, 0, 77], 2);
    let (me_lan, me_wan) = (a([10, 0, 0, 1]), a([10, 100, 0, 1]));
    let (lan_peer, wan_peer) = (a([10, 0, 0, 77]), a([10, 100, 0, 77]));
    let mut exchange = |from_wan: bool, src, dst, len| {
        let raw = if from_wan { &mut raw_wan } else { &mut raw_lan };
        let f = echo_request(raw, medium, src, dst, len);
        let before = b.oversize();
        send(raw, &f);
        b.run();
        let got = (
            received(&mut raw_lan, medium),
            received(&mut raw_wan, medium),
        );
        (got, b.oversize() - before)
    };
    // The local network's MTU, received and answered…
    assert_eq!(
        exchange(false, lan_peer, me_lan, 1500),
        ((vec![(1500, 64)], vec![]), 0)
    );
    // …one byte more, dropped on arrival.
    assert_eq!(
        exchange(false, lan_peer, me_lan, 1501),
        ((vec![], vec![]), 1)
    );
    // Arriving on the 9000-byte network from a local address: the reply
    // leaves by the local network, where 1500 fits and 1501 does not.
    assert_eq!(
        exchange(true, lan_peer, me_wan, 1500),
        ((vec![(1500, 64)], vec![]), 0)
    );
    assert_eq!(
        exchange(true, lan_peer, me_wan, 1501),
        ((vec![], vec![]), 1)
    );
    // The global network's MTU, both ways; one more byte dropped.
    assert_eq!(
        exchange(true, wan_peer, me_wan, 9000),
        ((vec![], vec![(9000, 64)]), 0)
    );
    assert_eq!(
        exchange(true, wan_peer, me_wan, 9001),
        ((vec![], vec![]), 1)
    );
}

#[test]
fn device_enforces_each_networks_mtu_on_ethernet() {
    device_enforces_mtus(ETHERNET);
}

#[test]
fn device_enforces_each_networks_mtu_on_the_ip_medium() {
    device_enforces_mtus(IP);
}

/// A router between a 9000-byte and a 1500-byte network forwards packets
/// up to the MTU of both networks they cross; one byte more is dropped
/// on arrival (too big for the network it came from) or on the way out
/// (too big for the next network).
fn router_enforces_mtus(medium: &'static str, function: &str, trust: bool) {
    let (lan_a, lan_b) = (unique("lanA"), unique("lanB"));
    let text = format!(
        r#"
name = "router"
forward = true
function = {function}
local = {{ segment = "{lan_a}", address = "10.0.0.254/24", mtu = 9000, medium = "{medium}", trust_peers = {trust} }}
global = {{ segment = "{lan_b}", address = "10.1.0.254/24", mtu = 1500, medium = "{medium}", trust_peers = {trust} }}
"#
    );
    let mut b = Bench::device(&text, medium);
    let mut raw_a = b.raw(&lan_a, 9000, [10, 0, 0, 77], 1);
    let mut raw_b = b.raw(&lan_b, 1500, [10, 1, 0, 77], 2);
    let (host_a, host_b) = (a([10, 0, 0, 77]), a([10, 1, 0, 77]));
    let mut forward = |from_b: bool, len| {
        let (raw, src, dst) = if from_b {
            (&mut raw_b, host_b, host_a)
        } else {
            (&mut raw_a, host_a, host_b)
        };
        let f = echo_request(raw, medium, src, dst, len);
        let before = b.oversize();
        send(raw, &f);
        b.run();
        let got = (received(&mut raw_a, medium), received(&mut raw_b, medium));
        (got, b.oversize() - before)
    };
    // Into the smaller network: its MTU passes (TTL decremented)…
    assert_eq!(forward(false, 1500), ((vec![], vec![(1500, 63)]), 0));
    // …one byte more does not fit it.
    assert_eq!(forward(false, 1501), ((vec![], vec![]), 1));
    // Out of the smaller network: its MTU passes, one more is too big for
    // the network it came from.
    assert_eq!(forward(true, 1500), ((vec![(1500, 63)], vec![]), 0));
    assert_eq!(forward(true, 1501), ((vec![], vec![]), 1));
    // One byte over the bigger network's MTU is dropped on arrival.
    assert_eq!(forward(false, 9001), ((vec![], vec![]), 1));
    let s = b.dev.stats();
    assert_eq!((s.nic.forwarded, s.nic.oversize), (2, 3), "{s:?}");
}

const PASSTHROUGH: &str = r#"{ kind = "passthrough" }"#;
/// A function that looks at every frame (the frames are copied for it).
const FIREWALL: &str = r#"{ kind = "firewall", default = "accept" }"#;

#[test]
fn router_enforces_both_mtus_on_ethernet() {
    router_enforces_mtus(ETHERNET, PASSTHROUGH, true);
    router_enforces_mtus(ETHERNET, PASSTHROUGH, false);
    router_enforces_mtus(ETHERNET, FIREWALL, true);
    router_enforces_mtus(ETHERNET, FIREWALL, false);
}

#[test]
fn router_enforces_both_mtus_on_the_ip_medium() {
    router_enforces_mtus(IP, PASSTHROUGH, true);
    router_enforces_mtus(IP, FIREWALL, false);
}
