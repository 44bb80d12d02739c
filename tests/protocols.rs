//! Protocols over thread devices: UDP echo, ICMP echo, TCP over IPv6, and
//! ARP on both networks.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shmnet::shm::SegmentKind;
use shmnet::stack::NetDevice;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::icmp;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress};

const ECHO: &str = r#"{ kind = "echo" }"#;

/// Two echo servers for a client that is host 1 of `lan` and `wan`:
/// "near" (host 2) on both networks, "far" (host 3) reachable only over
/// the global one.
struct NearFar {
    lan: String,
    wan: String,
    mtu: u32,
    servers: Vec<Running>,
}

impl NearFar {
    fn start(mtu: u32) -> NearFar {
        let (lan, lan2, wan) = (unique("lan"), unique("lan2"), unique("wan"));
        let servers = vec![
            spawn(&settings("near", &lan, &wan, 2, mtu, ECHO)),
            spawn(&settings("far", &lan2, &wan, 3, mtu, ECHO)),
        ];
        NearFar {
            lan,
            wan,
            mtu,
            servers,
        }
    }

    /// Host 1, running `function`.
    fn client(&self, name: &str, function: &str) -> shmnet::config::DeviceSettings {
        settings(name, &self.lan, &self.wan, 1, self.mtu, function)
    }

    /// Runs the probe `function` on host 1; returns its report.
    fn probe(&self, function: &str) -> Vec<String> {
        run_to_end(&self.client("client", function), Duration::from_secs(60)).0
    }
}

#[test]
fn udp_echo_local_and_global() {
    let net = NearFar::start(1500);
    let report =
        net.probe(r#"{ kind = "probe", udp = ["10.0.0.2:7", "10.100.0.3:7"], datagrams = 8 }"#);
    assert_eq!(report.len(), 2, "{report:?}");
    assert!(
        report[0].contains("udp 10.0.0.2:7: 8/8 datagrams echoed intact"),
        "{report:?}"
    );
    assert!(
        report[1].contains("udp 10.100.0.3:7: 8/8 datagrams echoed intact"),
        "{report:?}"
    );
    stop_all(net.servers);
}

/// Pings `to` from a device driven by this thread; returns the echoed data.
fn ping(dev: &mut NetDevice, to: IpAddress, ident: u16, seq_no: u16) -> Vec<u8> {
    let mut sock = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
    );
    sock.bind(icmp::Endpoint::Ident(ident)).unwrap();
    let h = dev.sockets().add(sock);
    let payload: Vec<u8> = (0..56u8)
        .map(|i| i.wrapping_mul(7) ^ seq_no as u8)
        .collect();
    let caps = ChecksumCapabilities::default();
    let mut reply = None;
    let mut last_sent: Option<Instant> = None;
    let t0 = Instant::now();
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<icmp::Socket>(h);
        // Resend now and then: the first request may wait on ARP.
        if last_sent.is_none_or(|t| t.elapsed() > Duration::from_millis(200)) && s.can_send() {
            let repr = Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data: &payload,
            };
            let buf = s.send(repr.buffer_len(), to).unwrap();
            repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
            last_sent = Some(Instant::now());
        }
        while let Ok((data, from)) = s.recv() {
            let pkt = Icmpv4Packet::new_checked(data).expect("well-formed ICMP");
            if let Ok(Icmpv4Repr::EchoReply {
                ident: i,
                seq_no: n,
                data,
            }) = Icmpv4Repr::parse(&pkt, &ChecksumCapabilities::ignored())
                && i == ident
                && n == seq_no
                && from == to
            {
                reply = Some(data.to_vec());
            }
        }
        reply.is_some() || t0.elapsed() > Duration::from_secs(20)
    });
    dev.sockets().remove(h);
    let reply = reply.unwrap_or_else(|| panic!("no echo reply from {to}: {:?}", dev.stats()));
    assert_eq!(reply, payload, "echo reply carries the request's data");
    reply
}

#[test]
fn icmp_echo_local_and_global() {
    let net = NearFar::start(1500);
    let me = net.client("pinger", r#"{ kind = "passthrough" }"#);
    let mut dev = NetDevice::new(&me, SegmentKind::InProcess).unwrap();
    ping(&mut dev, IpAddress::v4(10, 0, 0, 2), 0x1234, 1);
    ping(&mut dev, IpAddress::v4(10, 100, 0, 3), 0x1234, 2);
    // The near device also answers on its global address.
    ping(&mut dev, IpAddress::v4(10, 100, 0, 2), 0x4321, 3);
    let s = dev.stats();
    assert!(s.local.rx_frames > 0 && s.global.rx_frames > 0, "{s:?}");
    stop_all(net.servers);
}

#[test]
fn tcp_over_ipv6_global_network() {
    let net = NearFar::start(9000);
    let report = net.probe(
        r#"{ kind = "probe", tcp = ["[fd00:2::2]:7", "[fd00:2::3]:7", "[fd00:1::2]:7"], bytes = 4194304, timeout = "30s" }"#,
    );
    assert_eq!(report.len(), 3, "{report:?}");
    for (line, ep) in report.iter().zip(["fd00:2::2", "fd00:2::3", "fd00:1::2"]) {
        assert!(line.starts_with(&format!("tcp {ep}")), "{report:?}");
        assert!(line.contains("4194304 bytes echoed intact"), "{report:?}");
    }
    stop_all(net.servers);
}

#[test]
fn arp_resolves_on_both_networks() {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let (sh, st) = spawn(&settings("server", &lan, &wan, 2, 1500, ECHO));
    let (ch, ct) = spawn(&settings(
        "client",
        &lan,
        &wan,
        1,
        1500,
        r#"{ kind = "probe", tcp = ["10.0.0.2:7", "10.100.0.2:7"], bytes = 65536, timeout = "30s" }"#,
    ));
    let report = wait_finished(&ch, Duration::from_secs(60));
    assert_eq!(report.len(), 2, "{report:?}");
    assert!(
        report
            .iter()
            .all(|l| l.contains("65536 bytes echoed intact")),
        "{report:?}"
    );
    // The peer answered (ARP resolved) on each network: frames came in on
    // both adapters, of both devices.
    for s in [ch.stats(), sh.stats()] {
        assert!(s.local.rx_frames > 0, "{s:?}");
        assert!(s.global.rx_frames > 0, "{s:?}");
        assert!(s.local.tx_frames > 0 && s.global.tx_frames > 0, "{s:?}");
    }
    stop_all([(ch, ct), (sh, st)]);
}
