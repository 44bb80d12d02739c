//! Arbitrary frames into a re-routing function's ingress hook. Nothing may
//! panic, and a `Via` verdict always names a configured next hop's address.
//!
//! Input: chunks `[ctl: u8][len: u16 LE][bytes]`. `ctl & 1` picks the
//! function (Ethernet or bare-IP medium), `ctl >> 1 & 3` whether the bytes
//! are the whole frame (0) or the payload of a well-formed IPv4 (1) or IPv6
//! (2, 3) header the target builds, so that transport headers and the
//! rules get explored. With a header, `bytes[0]` picks the protocol and the
//! DSCP, `bytes[1]` the addresses.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shmnet::config::MediumName;
use shmnet::functions::reroute::{Reroute, RerouteConfig};
use shmnet::functions::{Frame, Function, FunctionConfig, Role, Verdict};
use shmnet::testing::DeviceToml;
use shmnet::testing::frames::IpHeader;
use shmnet::testing::fuzz::chunks;
use smoltcp::phy::Medium;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpProtocol};

const FUNCTION: &str = r#"
kind = "reroute"
[[next_hop]]
name = "a"
address = ["10.20.0.2", "fd00:20::2"]
[[next_hop]]
name = "b"
address = "10.20.0.3"
check = "none"
[[next_hop]]
name = "c"
address = "fd00:20::3"
[[rule]]
name = "voice"
dscp = 46
via = ["b", "c"]
[[rule]]
name = "web"
proto = "tcp"
dst = "10.0.0.0/8"
dport = "1-1024"
via = ["a", "b"]
[[rule]]
name = "dns6"
proto = "udp"
src = "fd00::/8"
sport = 53
via = ["c", "a"]
[[rule]]
name = "icmp"
proto = "icmp"
via = ["a"]
[[rule]]
name = "rest6"
dst = "fd00::/16"
via = ["a", "c"]
"#;

const NEXT_HOPS: [&str; 4] = ["10.20.0.2", "fd00:20::2", "10.20.0.3", "fd00:20::3"];

fn reroute(medium: MediumName) -> Reroute {
    static PARSED: OnceLock<RerouteConfig> = OnceLock::new();
    let mut cfg = PARSED
        .get_or_init(|| {
            let settings = DeviceToml::new(
                "rr",
                ("fz-rr-lan", "10.0.0.1/24"),
                ("fz-rr-wan", "10.20.0.1/24"),
            )
            .forward()
            .function_table(FUNCTION)
            .settings();
            match settings.function {
                FunctionConfig::Reroute(cfg) => cfg,
                other => panic!("not a reroute: {other:?}"),
            }
        })
        .clone();
    cfg.medium = medium;
    Reroute::new(cfg).expect("fuzz reroute")
}

/// The IP header in front of a chunk's `bytes[2..]`: `p` picks the
/// protocol, the DSCP and fragment bits, `e` the addresses and the hop
/// limit.
fn header(v4: bool, p: u8, e: u8) -> IpHeader {
    const PROTOS: [u8; 8] = [6, 6, 17, 17, 1, 58, 0, 44];
    let (a, b) = (e & 3, e >> 2 & 3);
    let (src, dst) = if v4 {
        let far = e >> 4 & 1 != 0;
        (
            IpAddress::v4(10, 0, 0, a),
            IpAddress::v4(if far { 192 } else { 10 }, 9, 0, b),
        )
    } else {
        let far = e & 0x10 != 0;
        (
            IpAddress::v6(0xfd00, 0, 0, 0, 0, 0, 0, a.into()),
            IpAddress::v6(
                if far { 0xfe00 } else { 0xfd00 },
                0,
                0,
                0,
                0,
                0,
                0,
                b.into(),
            ),
        )
    };
    let frag = if v4 && p & 0x40 != 0 { p & 0x3f } else { 0 };
    IpHeader {
        tos: if p & 8 != 0 { 46 << 2 } else { 0 },
        hop_limit: if e & 0x80 != 0 { 1 } else { 64 },
        ..IpHeader::new(src, dst, IpProtocol::from(PROTOS[usize::from(p & 7)]))
    }
    .fragment_field(u16::from(frag) << 8)
}

fuzz_target!(|data: &[u8]| {
    let next_hops: Vec<IpAddress> = NEXT_HOPS.iter().map(|a| a.parse().unwrap()).collect();
    let mut fns = [reroute(MediumName::Ethernet), reroute(MediumName::Ip)];
    let mut buf = vec![0u8; (1 << 16) + 64];
    let now = Instant::from_secs(1);
    for (ctl, bytes) in chunks(data) {
        let which = usize::from(ctl & 1);
        let medium = [Medium::Ethernet, Medium::Ip][which];
        let len = match (ctl >> 1 & 3, bytes) {
            (0, _) => {
                buf[..bytes.len()].copy_from_slice(bytes);
                bytes.len()
            }
            (t, [p, e, payload @ ..]) => {
                header(t == 1, *p, *e).emit_frame(medium, payload, &mut buf)
            }
            _ => 0,
        };
        let from = if ctl & 8 != 0 {
            Role::Global
        } else {
            Role::Local
        };
        let mut frame = Frame::new(&mut buf, len, shmnet::wire::LinkMedium::Ethernet);
        if let Verdict::Via(a) = fns[which].on_ingress(now, from, &mut frame) {
            assert!(next_hops.contains(&a), "Via {a} is no configured next hop");
        }
    }
});
