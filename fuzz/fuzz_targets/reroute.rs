//! Arbitrary frames into a re-routing function's ingress hook. Nothing may
//! panic, and a `Via` verdict always names a configured next hop's address.
//!
//! Input: chunks `[ctl: u8][len: u16 LE][bytes]`. `ctl & 1` picks the
//! medium (Ethernet or bare IP), `ctl >> 1 & 3` whether the bytes
//! are the whole frame (0) or the payload of a well-formed IPv4 (1) or IPv6
//! (2, 3) header the target builds, so that transport headers and the
//! rules get explored. With a header, `bytes[0]` picks the protocol and the
//! DSCP, `bytes[1]` the addresses.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shmnet::config::DeviceConfig;
use shmnet::functions::reroute::{Reroute, RerouteConfig};
use shmnet::functions::{Frame, Function, FunctionConfig, Role, Verdict};
use shmnet::wire::LinkMedium;
use smoltcp::time::Instant;
use smoltcp::wire::IpAddress;

const DEVICE: &str = r#"
name = "rr"
forward = true
local = { segment = "fz-rr-lan", address = "10.0.0.1/24" }
global = { segment = "fz-rr-wan", address = "10.20.0.1/24" }
[function]
kind = "reroute"
[[function.next_hop]]
name = "a"
address = ["10.20.0.2", "fd00:20::2"]
[[function.next_hop]]
name = "b"
address = "10.20.0.3"
check = "none"
[[function.next_hop]]
name = "c"
address = "fd00:20::3"
[[function.rule]]
name = "voice"
dscp = 46
via = ["b", "c"]
[[function.rule]]
name = "web"
proto = "tcp"
dst = "10.0.0.0/8"
dport = "1-1024"
via = ["a", "b"]
[[function.rule]]
name = "dns6"
proto = "udp"
src = "fd00::/8"
sport = 53
via = ["c", "a"]
[[function.rule]]
name = "icmp"
proto = "icmp"
via = ["a"]
[[function.rule]]
name = "rest6"
dst = "fd00::/16"
via = ["a", "c"]
"#;

const NEXT_HOPS: [&str; 4] = ["10.20.0.2", "fd00:20::2", "10.20.0.3", "fd00:20::3"];

fn reroute() -> Reroute {
    static PARSED: OnceLock<RerouteConfig> = OnceLock::new();
    let cfg = PARSED
        .get_or_init(|| {
            let settings = DeviceConfig::from_toml(DEVICE, "fuzz-reroute").expect("fuzz config");
            match settings.function {
                FunctionConfig::Reroute(cfg) => cfg,
                other => panic!("not a reroute: {other:?}"),
            }
        })
        .clone();
    Reroute::new(cfg).expect("fuzz reroute")
}

/// Writes an IP header (no checksum: not looked at) followed by
/// `bytes[2..]` into `out`; returns the packet length.
fn ip_frame(v4: bool, bytes: &[u8], out: &mut [u8]) -> usize {
    const PROTOS: [u8; 8] = [6, 6, 17, 17, 1, 58, 0, 44];
    let (Some(&p), Some(&e)) = (bytes.first(), bytes.get(1)) else {
        return 0;
    };
    let payload = &bytes[2..];
    let proto = PROTOS[usize::from(p & 7)];
    let tos = if p & 8 != 0 { 46 << 2 } else { 0 };
    let (a, b) = (e & 3, e >> 2 & 3);
    if v4 {
        let total = 20 + payload.len();
        out[..20].fill(0);
        out[0] = 0x45;
        out[1] = tos;
        out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        out[6] = if p & 0x40 != 0 { p & 0x3f } else { 0 };
        out[8] = if e & 0x80 != 0 { 1 } else { 64 };
        out[9] = proto;
        out[12..16].copy_from_slice(&[10, 0, 0, a]);
        out[16..20].copy_from_slice(&[10 + (e >> 4 & 1) * 182, 9, 0, b]);
        out[20..total].copy_from_slice(payload);
        total
    } else {
        let total = 40 + payload.len();
        out[..40].fill(0);
        out[0] = 0x60 | tos >> 4;
        out[1] = tos << 4;
        out[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        out[6] = proto;
        out[7] = if e & 0x80 != 0 { 1 } else { 64 };
        out[8] = 0xfd;
        out[23] = a;
        out[24] = if e & 0x10 != 0 { 0xfe } else { 0xfd };
        out[39] = b;
        out[40..total].copy_from_slice(payload);
        total
    }
}

fuzz_target!(|data: &[u8]| {
    let next_hops: Vec<IpAddress> = NEXT_HOPS.iter().map(|a| a.parse().unwrap()).collect();
    let mut r = reroute();
    let mut buf = vec![0u8; (1 << 16) + 64];
    let mut rest = data;
    let now = Instant::from_secs(1);
    while rest.len() >= 3 {
        let ctl = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let bytes = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let medium = if ctl & 1 == 0 {
            LinkMedium::Ethernet
        } else {
            LinkMedium::Ip
        };
        let l2 = medium.header_len();
        let len = match ctl >> 1 & 3 {
            0 => {
                buf[..len].copy_from_slice(bytes);
                len
            }
            t => {
                let n = ip_frame(t == 1, bytes, &mut buf[l2..]);
                if l2 == 14 {
                    buf[..12].fill(2);
                    let ethertype: u16 = if t == 1 { 0x0800 } else { 0x86dd };
                    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
                }
                l2 + n
            }
        };
        let from = if ctl & 8 != 0 {
            Role::Global
        } else {
            Role::Local
        };
        let mut frame = Frame::new(&mut buf, len, medium);
        if let Verdict::Via(a) = r.on_ingress(now, from, &mut frame) {
            assert!(next_hops.contains(&a), "Via {a} is no configured next hop");
        }
    }
});
