//! Each network's MTU holds exactly: an IP packet of the MTU passes, one
//! byte more is a counted `oversize` drop: received or sent by a device's
//! stack, and forwarded, on Ethernet and IP networks. The devices run on
//! virtual time (`VirtualClock`) in the test's thread; raw ports send
//! the hand-made packets and see what comes out.

mod common;

use common::*;
use shmnet::adapters::shm::{LinkMedium, NetworkParams, PortInfo};
use shmnet::config::DeviceConfig;
use shmnet::shm::SegmentKind;
use shmnet::stack::NetDevice;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Duration;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr,
    IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
};

const ETHERNET: &str = "ethernet";
const IP: &str = "ip";

/// A device, a raw port on each of its networks, and a virtual clock.
struct Bench {
    dev: NetDevice,
    medium: &'static str,
    raw: Vec<RawPort>,
    clock: VirtualClock,
}

/// The IPv4 packets each raw port received, as (total length, TTL), and
/// how many frames the device counted `oversize`.
type Seen = ([Vec<(usize, u8)>; 2], u64);

impl Bench {
    fn device(text: &str, medium: &'static str) -> Bench {
        let cfg = DeviceConfig::from_toml(text, "mtu test").expect("config is valid");
        Bench {
            dev: NetDevice::new(&cfg, SegmentKind::InProcess).expect("device starts"),
            medium,
            raw: Vec::new(),
            clock: VirtualClock::new(Duration::from_millis(1)),
        }
    }

    /// Polls the device a few rounds of virtual time.
    fn run(&mut self) {
        self.clock
            .run_for(&mut [&mut self.dev], Duration::from_millis(8));
    }

    fn oversize(&self) -> u64 {
        self.dev.stats().nic.oversize
    }

    /// Attaches a raw port on `segment` (MTU `mtu`) owning `ip`, after the
    /// device (whose port is its only peer).
    fn attach_raw(&mut self, segment: &str, mtu: u32, ip: [u8; 4]) {
        let tag = self.raw.len() as u8;
        let mut params = NetworkParams::new(mtu);
        if self.medium == IP {
            params.medium = LinkMedium::Ip;
        }
        let info = PortInfo {
            name: format!("raw-{tag}"),
            mac: [2, 0, 0, 0, 0x77, tag],
            ipv4: Some(ip),
            ..PortInfo::default()
        };
        self.raw.push(raw_port_as(segment, &params, &info));
        // Let the device learn the new neighbour.
        self.run();
    }

    /// Raw port `from` sends an echo request of `len` bytes of IP packet;
    /// returns what came out.
    fn ping(&mut self, from: usize, src: [u8; 4], dst: [u8; 4], len: usize) -> Seen {
        let (src, dst) = (Ipv4Address::from_octets(src), Ipv4Address::from_octets(dst));
        let f = echo_request(&self.raw[from], self.medium, src, dst, len);
        let before = self.oversize();
        send(&mut self.raw[from], &f);
        self.run();
        let medium = self.medium;
        let mut got = self.raw.iter_mut().map(|r| received(r, medium));
        let got = [got.next().unwrap(), got.next().unwrap()];
        (got, self.oversize() - before)
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
        src_addr: EthernetAddress(raw.port.info().mac),
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

fn device_toml(lan: &str, wan: &str, medium: &str) -> String {
    format!(
        r#"
name = "host"
local = {{ segment = "{lan}", address = "10.0.0.1/24", mtu = 1500, medium = "{medium}" }}
global = {{ segment = "{wan}", address = "10.100.0.1/16", mtu = 9000, medium = "{medium}" }}
"#
    )
}

/// A device with a 1500-byte local and a 9000-byte global network: echo
/// requests of each network's MTU are answered, one byte more is dropped
/// on arrival; a reply the stack makes that is too big for the network it
/// is routed to is dropped on the way out.
fn device_enforces_mtus(medium: &'static str) {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let mut b = Bench::device(&device_toml(&lan, &wan, medium), medium);
    b.attach_raw(&lan, 1500, [10, 0, 0, 77]);
    b.attach_raw(&wan, 9000, [10, 100, 0, 77]);
    let (me_lan, me_wan) = ([10, 0, 0, 1], [10, 100, 0, 1]);
    let (lan_peer, wan_peer) = ([10, 0, 0, 77], [10, 100, 0, 77]);
    let nothing = [vec![], vec![]];
    // The local network's MTU, received and answered…
    let answered_lan = [vec![(1500, 64)], vec![]];
    assert_eq!(b.ping(0, lan_peer, me_lan, 1500), (answered_lan.clone(), 0));
    // …one byte more, dropped on arrival.
    assert_eq!(b.ping(0, lan_peer, me_lan, 1501), (nothing.clone(), 1));
    // Arriving on the 9000-byte network from a local address: the reply
    // leaves by the local network, where 1500 fits and 1501 does not.
    assert_eq!(b.ping(1, lan_peer, me_wan, 1500), (answered_lan, 0));
    assert_eq!(b.ping(1, lan_peer, me_wan, 1501), (nothing.clone(), 1));
    // The global network's MTU, both ways; one more byte dropped.
    let answered_wan = [vec![], vec![(9000, 64)]];
    assert_eq!(b.ping(1, wan_peer, me_wan, 9000), (answered_wan, 0));
    assert_eq!(b.ping(1, wan_peer, me_wan, 9001), (nothing, 1));
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
    b.attach_raw(&lan_a, 9000, [10, 0, 0, 77]);
    b.attach_raw(&lan_b, 1500, [10, 1, 0, 77]);
    let (host_a, host_b) = ([10, 0, 0, 77], [10, 1, 0, 77]);
    let nothing = [vec![], vec![]];
    // Into the smaller network: its MTU passes (TTL decremented)…
    assert_eq!(
        b.ping(0, host_a, host_b, 1500),
        ([vec![], vec![(1500, 63)]], 0)
    );
    // …one byte more does not fit it.
    assert_eq!(b.ping(0, host_a, host_b, 1501), (nothing.clone(), 1));
    // Out of the smaller network: its MTU passes, one more is too big for
    // the network it came from.
    assert_eq!(
        b.ping(1, host_b, host_a, 1500),
        ([vec![(1500, 63)], vec![]], 0)
    );
    assert_eq!(b.ping(1, host_b, host_a, 1501), (nothing.clone(), 1));
    // One byte over the bigger network's MTU is dropped on arrival.
    assert_eq!(b.ping(0, host_a, host_b, 9001), (nothing, 1));
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
