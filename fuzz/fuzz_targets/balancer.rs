//! Arbitrary frames into a load balancer's ingress hook from both sides,
//! with time advancing. Nothing may panic, the flow table stays bounded,
//! and a rewritten frame keeps its length, its IP lengths and (IPv4) a
//! valid header checksum.
//!
//! Input: chunks `[ctl: u8][len: u16 LE][bytes]`. `ctl & 1` picks the side
//! (local or global adapter), `ctl & 2` the medium (Ethernet or bare IP), `ctl >> 2 & 3` whether the bytes are the whole frame (0) or
//! the payload of a well-formed IPv4 (1, 2) or IPv6 (3) header the target
//! builds — between a few clients, the VIPs and the backends, so that flows
//! and their replies repeat — and `ctl >> 4` one-second steps of time.
//! With a header, `bytes[0]` picks the protocol and the endpoints.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shmnet::functions::balancer::{Balancer, BalancerConfig};
use shmnet::functions::{Frame, Function, Role, Verdict};
use shmnet::testing::frames::IpHeader;
use shmnet::testing::fuzz::{chunks, function};
use shmnet::wire::LinkMedium;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet};

const FUNCTION: &str = r#"
kind = "balancer"
max_flows = 64
udp_timeout = "10s"
tcp_timeout = "20s"
tcp_closing_timeout = "2s"
service = [
    { name = "tcp", vip = "10.20.0.100:7", proto = "tcp", backends = ["10.12.0.2:7", "10.12.0.3:8"], table_size = 251 },
    { name = "udp", vip = "10.20.0.100:7", proto = "udp", backends = ["10.12.0.2:7", "10.12.0.3:7"], table_size = 13 },
    { name = "v6", vip = "[fd00:20::100]:7", backends = ["[fd00:12::2]:7", "[fd00:12::3]:7"], table_size = 13, check = "none" },
]
"#;

fn balancer() -> Balancer {
    static CONFIG: OnceLock<BalancerConfig> = OnceLock::new();
    function(&CONFIG, FUNCTION, Balancer::new)
}

/// Hosts: two clients, the VIP, two backends (10.x.0.y or fd00:x::y).
const HOSTS: [(u8, u8); 5] = [(11, 1), (11, 2), (20, 100), (12, 2), (12, 3)];
const PORTS: [u16; 4] = [7, 8, 40000, 40001];

/// Writes a frame of `medium` into `out`: an IP header (IPv4 with a valid
/// checksum), ports from `sel`, and `bytes[1..]` as the rest of the
/// transport header and payload; returns the frame length.
fn ip_frame(medium: LinkMedium, v4: bool, bytes: &[u8], out: &mut [u8]) -> usize {
    let Some(&sel) = bytes.first() else {
        return 0;
    };
    let proto = if sel & 1 == 0 {
        IpProtocol::Tcp
    } else {
        IpProtocol::Udp
    };
    let host = |(net, h): (u8, u8)| {
        if v4 {
            IpAddress::v4(10, net, 0, h)
        } else {
            IpAddress::v6(0xfd00, net.into(), 0, 0, 0, 0, 0, h.into())
        }
    };
    let src = host(HOSTS[usize::from(sel >> 1 & 7) % 5]);
    let dst = host(HOSTS[usize::from(sel >> 4 & 7) % 5]);
    let mut l4 = bytes[1..].to_vec();
    if l4.len() >= 4 {
        let sp = PORTS[usize::from(l4[0] & 3)];
        let dp = PORTS[usize::from(l4[1] & 3)];
        l4[0..2].copy_from_slice(&sp.to_be_bytes());
        l4[2..4].copy_from_slice(&dp.to_be_bytes());
    }
    // MF from the selector: now and then a first fragment.
    let frag = if sel & 0x80 != 0 { 0x2000 } else { 0 };
    IpHeader::new(src, dst, proto)
        .fragment_field(frag)
        .emit_frame(medium, &l4, out)
}

fuzz_target!(|data: &[u8]| {
    // One balancer per medium: the flows of one are not the other's.
    let mut lbs = [balancer(), balancer()];
    let mut now = Instant::from_secs(1);
    let mut buf = vec![0u8; (1 << 16) + 64];
    for (ctl, bytes) in chunks(data) {
        now += Duration::from_secs(u64::from(ctl >> 4));
        let which = usize::from(ctl >> 1 & 1);
        let lb = &mut lbs[which];
        let medium = [LinkMedium::Ethernet, LinkMedium::Ip][which];
        let l2 = medium.header_len();
        let built = ctl >> 2 & 3;
        let len = match built {
            0 => {
                buf[..bytes.len()].copy_from_slice(bytes);
                bytes.len()
            }
            t => ip_frame(medium, t != 3, bytes, &mut buf),
        };
        let before: Vec<u8> = buf[..len].to_vec();
        let from = if ctl & 1 == 0 {
            Role::Local
        } else {
            Role::Global
        };
        let mut frame = Frame::new(&mut buf, len, medium);
        let v = lb.on_ingress(now, from, &mut frame);
        assert_eq!(frame.len(), len, "the balancer never resizes a frame");
        match v {
            Verdict::Modified => {
                let after = frame.bytes();
                // Only addresses, ports and checksums change: the IP
                // header's version, lengths and protocol are untouched.
                let ip = &after[l2..];
                let old = &before[l2..];
                assert_eq!(ip[0], old[0]);
                if ip[0] >> 4 == 4 {
                    assert_eq!(ip[2..4], old[2..4]);
                    assert_eq!(ip[9], old[9]);
                    if built == 1 || built == 2 {
                        assert!(Ipv4Packet::new_unchecked(ip).verify_checksum());
                    }
                } else {
                    assert_eq!(ip[4..7], old[4..7]);
                }
            }
            _ => assert_eq!(frame.bytes(), &before[..], "an unmodified frame changed"),
        }
        assert!(lb.flows_active() <= 64);
    }
});
