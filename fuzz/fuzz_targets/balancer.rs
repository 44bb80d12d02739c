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
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use shmnet::config::DeviceConfig;
use shmnet::functions::balancer::{Balancer, BalancerConfig};
use shmnet::functions::{Frame, Function, FunctionConfig, Role, Verdict};
use shmnet::wire::LinkMedium;
use smoltcp::wire::Ipv4Packet;

const DEVICE: &str = r#"
name = "lb"
forward = true
local = { segment = "fz-lb-front", address = "10.11.0.254/24" }
global = { segment = "fz-lb-back", address = "10.12.0.254/24" }
[function]
kind = "balancer"
max_flows = 64
udp_timeout = "10s"
tcp_timeout = "20s"
tcp_closing_timeout = "2s"
[[function.service]]
name = "tcp"
vip = "10.20.0.100:7"
proto = "tcp"
backends = ["10.12.0.2:7", "10.12.0.3:8"]
table_size = 251
[[function.service]]
name = "udp"
vip = "10.20.0.100:7"
proto = "udp"
backends = ["10.12.0.2:7", "10.12.0.3:7"]
table_size = 13
[[function.service]]
name = "v6"
vip = "[fd00:20::100]:7"
backends = ["[fd00:12::2]:7", "[fd00:12::3]:7"]
table_size = 13
check = "none"
"#;

fn balancer() -> Balancer {
    static CONFIG: OnceLock<BalancerConfig> = OnceLock::new();
    let cfg = CONFIG
        .get_or_init(|| {
            let settings = DeviceConfig::from_toml(DEVICE, "fuzz-balancer").expect("fuzz config");
            match settings.function {
                FunctionConfig::Balancer(cfg) => cfg,
                other => panic!("not a balancer: {other:?}"),
            }
        })
        .clone();
    Balancer::new(cfg).expect("fuzz balancer")
}

/// Hosts: two clients, the VIP, two backends (last byte of 10.x.0.y or
/// fd00:x::y).
const HOSTS: [(u8, u8); 5] = [(11, 1), (11, 2), (20, 100), (12, 2), (12, 3)];
const PORTS: [u16; 4] = [7, 8, 40000, 40001];

/// Writes an IP header with a valid IPv4 checksum, ports from `sel`, and
/// `bytes[1..]` as the rest of the transport header and payload; returns
/// the packet length.
fn ip_packet(v4: bool, bytes: &[u8], out: &mut [u8]) -> usize {
    let Some(&sel) = bytes.first() else {
        return 0;
    };
    let proto = if sel & 1 == 0 { 6 } else { 17 };
    let (src, dst) = (
        HOSTS[usize::from(sel >> 1 & 7) % 5],
        HOSTS[usize::from(sel >> 4 & 7) % 5],
    );
    let mut l4 = bytes[1..].to_vec();
    if l4.len() >= 4 {
        let sp = PORTS[usize::from(l4[0] & 3)];
        let dp = PORTS[usize::from(l4[1] & 3)];
        l4[0..2].copy_from_slice(&sp.to_be_bytes());
        l4[2..4].copy_from_slice(&dp.to_be_bytes());
    }
    if v4 {
        let total = 20 + l4.len();
        out[..20].fill(0);
        out[0] = 0x45;
        out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        out[6] = if sel & 0x80 != 0 { 0x20 } else { 0 };
        out[8] = 64;
        out[9] = proto;
        out[12..16].copy_from_slice(&[10, src.0, 0, src.1]);
        out[16..20].copy_from_slice(&[10, dst.0, 0, dst.1]);
        out[20..total].copy_from_slice(&l4);
        Ipv4Packet::new_unchecked(&mut out[..total]).fill_checksum();
        total
    } else {
        let total = 40 + l4.len();
        out[..40].fill(0);
        out[0] = 0x60;
        out[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
        out[6] = proto;
        out[7] = 64;
        out[8..10].copy_from_slice(&[0xfd, 0x00]);
        out[11] = src.0;
        out[23] = src.1;
        out[24..26].copy_from_slice(&[0xfd, 0x00]);
        out[27] = dst.0;
        out[39] = dst.1;
        out[40..total].copy_from_slice(&l4);
        total
    }
}

fuzz_target!(|data: &[u8]| {
    // One balancer per medium: the flows of one are not the other's.
    let mut lbs = [balancer(), balancer()];
    // Deterministic time (smoltcp's Instant converts from SystemTime).
    let mut since_epoch = Duration::from_secs(1);
    let mut buf = vec![0u8; (1 << 16) + 64];
    let mut rest = data;
    while rest.len() >= 3 {
        let ctl = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let bytes = &rest[3..3 + len];
        rest = &rest[3 + len..];
        since_epoch += Duration::from_secs(u64::from(ctl >> 4));
        let now = (UNIX_EPOCH + since_epoch).into();
        let which = usize::from(ctl >> 1 & 1);
        let lb = &mut lbs[which];
        let medium = [LinkMedium::Ethernet, LinkMedium::Ip][which];
        let l2 = medium.header_len();
        let built = ctl >> 2 & 3;
        let len = match built {
            0 => {
                buf[..len].copy_from_slice(bytes);
                len
            }
            t => l2 + ip_packet(t != 3, bytes, &mut buf[l2..]),
        };
        if l2 == 14 && built != 0 {
            buf[..12].fill(2);
            let ethertype: u16 = if built == 3 { 0x86dd } else { 0x0800 };
            buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
        }
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
