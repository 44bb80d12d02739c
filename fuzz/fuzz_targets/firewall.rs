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

use libfuzzer_sys::fuzz_target;
use shmnet::functions::firewall::{Firewall, FirewallConfig};
use shmnet::functions::{Frame, Function, Role};
use shmnet::testing::fuzz::{chunks, function, ip_header};
use shmnet::wire::LinkMedium;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::IpAddress;

const FUNCTION: &str = r#"
kind = "firewall"
default = "drop"
max_connections = 64
log_drops_per_second = 0
tcp_closing_timeout = "5s"
udp_timeout = "10s"
icmp_timeout = "10s"
rule = [
    { action = "drop", proto = "tcp", sport = 7, state = "established" },
    { action = "accept", direction = "in", proto = "tcp", dst = "10.0.0.0/8", dport = "1-1024", state = "new" },
    { action = "accept", direction = "out" },
    { action = "accept", proto = "icmpv6", src = "fd00::/8" },
    { action = "accept", src = "10.0.0.0/24", fragments = true },
]
"#;

fn firewall() -> Firewall {
    static CONFIG: OnceLock<FirewallConfig> = OnceLock::new();
    function(&CONFIG, FUNCTION, Firewall::new)
}

/// Writes a frame of `medium` into `out`: an IP header followed by
/// `bytes[2..]`; returns the frame length.
fn ip_frame(medium: LinkMedium, v4: bool, bytes: &[u8], out: &mut [u8]) -> usize {
    const PROTOS: [u8; 8] = [6, 6, 17, 17, 1, 58, 47, 44];
    let Some((&[p, e], payload)) = bytes.split_first_chunk() else {
        return 0;
    };
    let (mut a, mut b) = (1 + (e & 3), 1 + (e >> 2 & 3));
    if e & 0x80 != 0 {
        std::mem::swap(&mut a, &mut b);
    }
    let (src, dst) = if v4 {
        (
            IpAddress::v4(10, 0, 0, a),
            IpAddress::v4(10, (e >> 4) & 1, 0, b),
        )
    } else {
        let host = |h: u8| IpAddress::v6(0xfd00, 0, 0, 0, 0, 0, 0, h.into());
        (host(a), host(b))
    };
    ip_header(p, &PROTOS, src, dst).emit_frame(medium, payload, out)
}

fuzz_target!(|data: &[u8]| {
    let mut fws = [firewall(), firewall()];
    let mut now = Instant::from_secs(1);
    // Room for the largest chunk behind an Ethernet and an IPv6 header.
    let mut buf = vec![0u8; (1 << 16) + 64];
    for (ctl, bytes) in chunks(data) {
        now += Duration::from_secs(5 * u64::from(ctl >> 5));
        let which = usize::from(ctl >> 2 & 1);
        let fw = &mut fws[which];
        let medium = [LinkMedium::Ethernet, LinkMedium::Ip][which];
        let len = match ctl >> 3 & 3 {
            0 => {
                buf[..bytes.len()].copy_from_slice(bytes);
                bytes.len()
            }
            t => ip_frame(medium, t == 1, bytes, &mut buf),
        };
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
