//! Arbitrary frames into a firewall's ingress and egress hooks, with time
//! advancing. Nothing may panic and the connection table stays bounded.
//!
//! Input: chunks `[ctl: u8][len: u16 LE][bytes]`. `ctl & 3` picks the hook
//! (0: ingress from local, 1: ingress from global, 2/3: egress), `ctl & 4`
//! the firewall (one sees Ethernet frames, the other bare IP packets),
//! `ctl >> 3 & 3` whether the bytes are the whole frame (0) or the payload
//! of a well-formed IPv4 (1) or IPv6 (2, 3) header the target builds — so
//! that transport headers get explored, and flows repeat — and `ctl >> 5`
//! five-second steps of time.
//! With a header, `bytes[0]` picks the protocol and `bytes[1]` the
//! endpoints (a few hosts; bit 7 swaps source and destination).
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use shmnet::config::DeviceConfig;
use shmnet::functions::firewall::{Firewall, FirewallConfig};
use shmnet::functions::{Frame, Function, FunctionConfig, Role};
use shmnet::wire::LinkMedium;

const DEVICE: &str = r#"
name = "fw"
local = { segment = "fz-fw-lan", address = "10.0.0.1/24" }
global = { segment = "fz-fw-wan", address = "10.100.0.1/16" }
[function]
kind = "firewall"
default = "drop"
max_connections = 64
log_drops_per_second = 0
tcp_closing_timeout = "5s"
udp_timeout = "10s"
icmp_timeout = "10s"
[[function.rule]]
action = "drop"
proto = "tcp"
sport = 7
state = "established"
[[function.rule]]
action = "accept"
direction = "in"
proto = "tcp"
dst = "10.0.0.0/8"
dport = "1-1024"
state = "new"
[[function.rule]]
action = "accept"
direction = "out"
[[function.rule]]
action = "accept"
proto = "icmpv6"
src = "fd00::/8"
[[function.rule]]
action = "accept"
src = "10.0.0.0/24"
fragments = true
"#;

fn firewall() -> Firewall {
    static CONFIG: OnceLock<FirewallConfig> = OnceLock::new();
    let cfg = CONFIG
        .get_or_init(|| {
            let settings = DeviceConfig::from_toml(DEVICE, "fuzz-firewall").expect("fuzz config");
            match settings.function {
                FunctionConfig::Firewall(cfg) => cfg,
                other => panic!("not a firewall: {other:?}"),
            }
        })
        .clone();
    Firewall::new(cfg).expect("fuzz firewall")
}

/// Writes an IP header (no checksum: the firewall does not verify it)
/// followed by `bytes[2..]` into `out`; returns the packet length.
fn ip_frame(v4: bool, bytes: &[u8], out: &mut [u8]) -> usize {
    const PROTOS: [u8; 8] = [6, 6, 17, 17, 1, 58, 47, 44];
    let (Some(&p), Some(&e)) = (bytes.first(), bytes.get(1)) else {
        return 0;
    };
    let payload = &bytes[2..];
    let proto = PROTOS[usize::from(p & 7)];
    let (mut a, mut b) = (1 + (e & 3), 1 + (e >> 2 & 3));
    if e & 0x80 != 0 {
        std::mem::swap(&mut a, &mut b);
    }
    if v4 {
        let total = 20 + payload.len();
        out[..20].fill(0);
        out[0] = 0x45;
        out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        // Fragment bits from the selector byte: mostly whole packets.
        out[6] = if p & 0x40 != 0 { p & 0x3f } else { 0 };
        out[8] = 64;
        out[9] = proto;
        out[12..16].copy_from_slice(&[10, 0, 0, a]);
        out[16..20].copy_from_slice(&[10, (e >> 4) & 1, 0, b]);
        out[20..total].copy_from_slice(payload);
        total
    } else {
        let total = 40 + payload.len();
        out[..40].fill(0);
        out[0] = 0x60;
        out[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        out[6] = proto;
        out[7] = 64;
        out[8] = 0xfd;
        out[23] = a;
        out[24] = 0xfd;
        out[39] = b;
        out[40..total].copy_from_slice(payload);
        total
    }
}

fuzz_target!(|data: &[u8]| {
    let mut fws = [firewall(), firewall()];
    // Deterministic time (smoltcp's Instant converts from SystemTime).
    let mut since_epoch = Duration::from_secs(1);
    // Room for the largest chunk behind an Ethernet and an IPv6 header.
    let mut buf = vec![0u8; (1 << 16) + 64];
    let mut rest = data;
    while rest.len() >= 3 {
        let ctl = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let bytes = &rest[3..3 + len];
        rest = &rest[3 + len..];
        since_epoch += Duration::from_secs(5 * u64::from(ctl >> 5));
        let now = (UNIX_EPOCH + since_epoch).into();
        let which = usize::from(ctl >> 2 & 1);
        let fw = &mut fws[which];
        let medium = [LinkMedium::Ethernet, LinkMedium::Ip][which];
        let l2 = medium.header_len();
        let len = match ctl >> 3 & 3 {
            0 => {
                buf[..len].copy_from_slice(bytes);
                len
            }
            t => l2 + ip_frame(t == 1, bytes, &mut buf[l2..]),
        };
        if l2 == 14 && ctl >> 3 & 3 != 0 {
            buf[..12].fill(2);
            let ethertype: u16 = if ctl >> 3 & 3 == 1 { 0x0800 } else { 0x86dd };
            buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
        }
        let mut frame = Frame::new(&mut buf, len, medium);
        let _ = match ctl & 3 {
            0 => fw.on_ingress(now, Role::Local, &mut frame),
            1 => fw.on_ingress(now, Role::Global, &mut frame),
            _ => fw.on_egress(now, &mut frame),
        };
        assert!(fw.connections() <= 64);
        debug_assert!(!shmnet::stack::hook::counters_of(fw).is_empty());
    }
});
