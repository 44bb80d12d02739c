//! Arbitrary frames into a firewall's ingress and egress hooks, with time
//! advancing. Nothing may panic and the connection table stays bounded.
//!
//! Input: chunks `[ctl: u8][len: u16 LE][bytes]`. `ctl & 3` picks the hook
//! (0: ingress from local, 1: ingress from global, 2/3: egress), `ctl & 4`
//! the firewall (Ethernet or bare-IP medium), `ctl >> 3 & 3` whether the
//! bytes are the whole frame (0) or the payload of a well-formed IPv4 (1)
//! or IPv6 (2, 3) header the target builds — so that transport headers get
//! explored, and flows repeat — and `ctl >> 5` five-second steps of time.
//! With a header, `bytes[0]` picks the protocol and `bytes[1]` the
//! endpoints (a few hosts; bit 7 swaps source and destination).
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use shmnet::config::MediumName;
use shmnet::functions::firewall::{Firewall, FirewallConfig};
use shmnet::functions::{Frame, Function, FunctionConfig, Role};
use shmnet::testing::DeviceToml;
use shmnet::testing::frames::IpHeader;
use shmnet::testing::fuzz::chunks;
use smoltcp::phy::Medium;
use smoltcp::wire::{IpAddress, IpProtocol};

const FUNCTION: &str = r#"
kind = "firewall"
default = "drop"
max_connections = 64
log_drops_per_second = 0
tcp_closing_timeout = "5s"
udp_timeout = "10s"
icmp_timeout = "10s"
[[rule]]
action = "drop"
proto = "tcp"
sport = 7
state = "established"
[[rule]]
action = "accept"
direction = "in"
proto = "tcp"
dst = "10.0.0.0/8"
dport = "1-1024"
state = "new"
[[rule]]
action = "accept"
direction = "out"
[[rule]]
action = "accept"
proto = "icmpv6"
src = "fd00::/8"
[[rule]]
action = "accept"
src = "10.0.0.0/24"
fragments = true
"#;

fn firewall(medium: MediumName) -> Firewall {
    static CONFIG: OnceLock<FirewallConfig> = OnceLock::new();
    let mut cfg = CONFIG
        .get_or_init(|| {
            let settings = DeviceToml::new(
                "fw",
                ("fz-fw-lan", "10.0.0.1/24"),
                ("fz-fw-wan", "10.100.0.1/16"),
            )
            .function_table(FUNCTION)
            .settings();
            match settings.function {
                FunctionConfig::Firewall(cfg) => cfg,
                other => panic!("not a firewall: {other:?}"),
            }
        })
        .clone();
    cfg.medium = medium;
    Firewall::new(cfg).expect("fuzz firewall")
}

/// The IP header in front of a chunk's `bytes[2..]`: `p` picks the
/// protocol and fragment bits, `e` the endpoints (a few hosts; bit 7 swaps
/// source and destination).
fn header(v4: bool, p: u8, e: u8) -> IpHeader {
    const PROTOS: [u8; 8] = [6, 6, 17, 17, 1, 58, 47, 44];
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
    // Fragment bits from the selector byte: mostly whole packets.
    let frag = if p & 0x40 != 0 { p & 0x3f } else { 0 };
    IpHeader::new(src, dst, IpProtocol::from(PROTOS[usize::from(p & 7)]))
        .fragment_field(u16::from(frag) << 8)
}

fuzz_target!(|data: &[u8]| {
    let mut fws = [firewall(MediumName::Ethernet), firewall(MediumName::Ip)];
    // Deterministic time (smoltcp's Instant converts from SystemTime).
    let mut since_epoch = Duration::from_secs(1);
    // Room for the largest chunk behind an Ethernet and an IPv6 header.
    let mut buf = vec![0u8; (1 << 16) + 64];
    for (ctl, bytes) in chunks(data) {
        since_epoch += Duration::from_secs(5 * u64::from(ctl >> 5));
        let now = (UNIX_EPOCH + since_epoch).into();
        let which = usize::from(ctl >> 2 & 1);
        let fw = &mut fws[which];
        let medium = [Medium::Ethernet, Medium::Ip][which];
        let len = match (ctl >> 3 & 3, bytes) {
            (0, _) => {
                buf[..bytes.len()].copy_from_slice(bytes);
                bytes.len()
            }
            (t, [p, e, payload @ ..]) => {
                header(t == 1, *p, *e).emit_frame(medium, payload, &mut buf)
            }
            _ => 0,
        };
        let mut frame = Frame::new(&mut buf, len, [MediumName::Ethernet, MediumName::Ip][which]);
        let _ = match ctl & 3 {
            0 => fw.on_ingress(now, Role::Local, &mut frame),
            1 => fw.on_ingress(now, Role::Global, &mut frame),
            _ => fw.on_egress(now, &mut frame),
        };
        assert!(fw.connections() <= 64);
        debug_assert!(!shmnet::stack::hook::counters_of(fw).is_empty());
    }
});
