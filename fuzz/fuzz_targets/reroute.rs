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
use shmnet::functions::reroute::{Reroute, RerouteConfig};
use shmnet::functions::{Frame, Function, Role, Verdict};
use shmnet::testing::frames::IpHeader;
use shmnet::testing::fuzz::{chunks, function, ip_header};
use shmnet::wire::LinkMedium;
use smoltcp::time::Instant;
use smoltcp::wire::IpAddress;

const FUNCTION: &str = r#"
kind = "reroute"
next_hop = [
    { name = "a", address = ["10.20.0.2", "fd00:20::2"] },
    { name = "b", address = "10.20.0.3", check = "none" },
    { name = "c", address = "fd00:20::3" },
]
rule = [
    { name = "voice", dscp = 46, via = ["b", "c"] },
    { name = "web", proto = "tcp", dst = "10.0.0.0/8", dport = "1-1024", via = ["a", "b"] },
    { name = "dns6", proto = "udp", src = "fd00::/8", sport = 53, via = ["c", "a"] },
    { name = "icmp", proto = "icmp", via = ["a"] },
    { name = "rest6", dst = "fd00::/16", via = ["a", "c"] },
]
"#;

const NEXT_HOPS: [&str; 4] = ["10.20.0.2", "fd00:20::2", "10.20.0.3", "fd00:20::3"];

fn reroute() -> Reroute {
    static CONFIG: OnceLock<RerouteConfig> = OnceLock::new();
    function(&CONFIG, FUNCTION, Reroute::new)
}

/// Writes a frame of `medium` into `out`: an IP header followed by
/// `bytes[2..]`; returns the frame length.
fn ip_frame(medium: LinkMedium, v4: bool, bytes: &[u8], out: &mut [u8]) -> usize {
    const PROTOS: [u8; 8] = [6, 6, 17, 17, 1, 58, 0, 44];
    let Some((&[p, e], payload)) = bytes.split_first_chunk() else {
        return 0;
    };
    let (a, b) = (e & 3, e >> 2 & 3);
    let (src, dst) = if v4 {
        let net = 10 + (e >> 4 & 1) * 182;
        (IpAddress::v4(10, 0, 0, a), IpAddress::v4(net, 9, 0, b))
    } else {
        let net = if e & 0x10 != 0 { 0xfe00 } else { 0xfd00 };
        (
            IpAddress::v6(0xfd00, 0, 0, 0, 0, 0, 0, a.into()),
            IpAddress::v6(net, 0, 0, 0, 0, 0, 0, b.into()),
        )
    };
    IpHeader {
        tos: if p & 8 != 0 { 46 << 2 } else { 0 },
        hop_limit: if e & 0x80 != 0 { 1 } else { 64 },
        ..ip_header(p, &PROTOS, src, dst)
    }
    .emit_frame(medium, payload, out)
}

fuzz_target!(|data: &[u8]| {
    let next_hops: Vec<IpAddress> = NEXT_HOPS.iter().map(|a| a.parse().unwrap()).collect();
    let mut r = reroute();
    let mut buf = vec![0u8; (1 << 16) + 64];
    let now = Instant::from_secs(1);
    for (ctl, bytes) in chunks(data) {
        let medium = [LinkMedium::Ethernet, LinkMedium::Ip][usize::from(ctl & 1)];
        let len = match ctl >> 1 & 3 {
            0 => {
                buf[..bytes.len()].copy_from_slice(bytes);
                bytes.len()
            }
            t => ip_frame(medium, t == 1, bytes, &mut buf),
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
