use super::*;
use crate::functions::Directory;
use crate::functions::FunctionConfig;
use crate::functions::matching::parse_duration;
use crate::testing::frames::{arp, garbled};
use crate::testing::function::{self, config_error, counter, counters_are};
use crate::wire::LinkMedium;
use smoltcp::wire::{Ipv4Address, Ipv4Cidr, Ipv6Address, Ipv6Cidr};

const A4: Ipv4Address = Ipv4Address::new(10, 20, 0, 2);
const B4: Ipv4Address = Ipv4Address::new(10, 20, 0, 3);
const A6: Ipv6Address = Ipv6Address::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 2);
const B6: Ipv6Address = Ipv6Address::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 3);

fn ms(n: i64) -> Instant {
    Instant::from_millis(n)
}

fn reroute(text: &str) -> Reroute {
    function::build(text, Reroute::new)
}

fn ingress(r: &mut Reroute, bytes: &[u8]) -> Verdict {
    ingress_on(LinkMedium::Ethernet, r, bytes)
}

fn ingress_on(medium: LinkMedium, r: &mut Reroute, bytes: &[u8]) -> Verdict {
    function::ingress(r, ms(0), Role::Local, medium, bytes).0
}

/// Ethernet (dst 02:..:02, src 02:..:01, IPv4) + IPv4 (TOS 0xb8 = DSCP
/// 46, TTL 64, proto 6, 10.1.0.1 -> 10.2.0.2) + TCP 40000 -> 9, a byte
/// fixture as captured on the wire (checksums zero: not looked at).
const TCP4_DSCP46: [u8; 54] = [
    0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00, // Ethernet
    0x45, 0xb8, 0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0, 0, // IPv4
    10, 1, 0, 1, 10, 2, 0, 2, //
    0x9c, 0x40, 0x00, 0x09, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0, // TCP
];

/// Ethernet + IPv6 (fd00:1::1 -> fd00:2::2, hop limit 64) + UDP 5353 -> 53.
fn udp6(dst_port: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd];
    f.extend([0x60, 0, 0, 0, 0x00, 0x0c, 17, 64]);
    f.extend(Ipv6Address::new(0xfd00, 1, 0, 0, 0, 0, 0, 1).octets());
    f.extend(Ipv6Address::new(0xfd00, 2, 0, 0, 0, 0, 0, 2).octets());
    f.extend(5353u16.to_be_bytes());
    f.extend(dst_port.to_be_bytes());
    f.extend([0, 12, 0, 0, b'h', b'i', b'!', b'!']);
    f
}

/// Ethernet + IPv4 + TCP with the given addresses, ports and TTL.
fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, ttl: u8) -> Vec<u8> {
    let mut f = TCP4_DSCP46.to_vec();
    f[15] = 0;
    f[22] = ttl;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f
}

const TWO_HOPS: &str = r#"
    next_hop = [
        { name = "a", address = ["10.20.0.2", "fd00:20::2"] },
        { name = "b", address = ["10.20.0.3", "fd00:20::3"] },
    ]
"#;

#[test]
fn rules_match_prefixes_ports_proto_and_dscp_first_match_wins() {
    let mut r = reroute(&format!(
        r#"{TWO_HOPS}
        rule = [
            {{ name = "voice", dscp = 46, via = ["b"] }},
            {{ name = "dns6", proto = "udp", dst = "fd00:2::/32", dport = 53, via = ["b", "a"] }},
            {{ name = "web", src = "10.1.0.0/16", proto = 6, dport = "80-443", via = ["a", "b"] }},
        ]
        "#
    ));
    assert_eq!(ingress(&mut r, &TCP4_DSCP46), Verdict::Via(B4.into()));
    assert_eq!(ingress(&mut r, &udp6(53)), Verdict::Via(B6.into()));
    assert_eq!(ingress(&mut r, &udp6(54)), Verdict::Pass);
    let web = tcp4([10, 1, 7, 7], [10, 9, 0, 1], 50000, 443, 64);
    assert_eq!(ingress(&mut r, &web), Verdict::Via(A4.into()));
    // Outside the source prefix, outside the port range.
    assert_eq!(
        ingress(&mut r, &tcp4([10, 3, 0, 1], [10, 9, 0, 1], 50000, 443, 64)),
        Verdict::Pass
    );
    assert_eq!(
        ingress(&mut r, &tcp4([10, 1, 0, 1], [10, 9, 0, 1], 50000, 444, 64)),
        Verdict::Pass
    );
    counters_are(
        &r,
        &[
            ("rule.voice.packets", 1),
            ("rule.dns6.packets", 1),
            ("rule.web.packets", 1),
            ("next_hop.a.packets", 1),
            ("next_hop.b.packets", 2),
            ("unmatched", 3),
        ],
    );
}

#[test]
fn own_broadcast_multicast_expiring_and_non_ip_frames_pass() {
    let mut r = reroute(&format!("{TWO_HOPS}\n[[rule]]\nvia = [\"a\"]"));
    r.set_own_addresses(&[
        IpCidr::Ipv4(Ipv4Cidr::new(Ipv4Address::new(10, 20, 0, 1), 24)),
        IpCidr::Ipv6(Ipv6Cidr::new(
            Ipv6Address::new(0xfd00, 2, 0, 0, 0, 0, 0, 2),
            64,
        )),
    ]);
    let to = |dst: [u8; 4], ttl: u8| tcp4([10, 1, 0, 1], dst, 1, 2, ttl);
    assert_eq!(ingress(&mut r, &to([10, 20, 0, 1], 64)), Verdict::Pass);
    assert_eq!(ingress(&mut r, &to([10, 20, 0, 255], 64)), Verdict::Pass);
    assert_eq!(ingress(&mut r, &to([224, 0, 0, 251], 64)), Verdict::Pass);
    assert_eq!(
        ingress(&mut r, &to([255, 255, 255, 255], 64)),
        Verdict::Pass
    );
    assert_eq!(ingress(&mut r, &udp6(53)), Verdict::Pass);
    assert_eq!(counter(&r, "to_device"), 5);
    assert_eq!(ingress(&mut r, &to([10, 9, 0, 1], 1)), Verdict::Pass);
    assert_eq!(ingress(&mut r, &arp()), Verdict::Pass);
    assert_eq!(
        ingress(&mut r, &to([10, 9, 0, 1], 2)),
        Verdict::Via(A4.into())
    );
    assert_eq!(counter(&r, "malformed"), 0);
}

#[test]
fn bare_ip_medium_and_ipv6_extension_headers() {
    let mut r = reroute(&format!(
        "{TWO_HOPS}\n[[rule]]\nproto = \"udp\"\ndport = 53\nvia = [\"b\"]"
    ));
    assert_eq!(
        ingress_on(LinkMedium::Ip, &mut r, &udp6(53)[14..]),
        Verdict::Via(B6.into())
    );
    // The same datagram behind a hop-by-hop options header.
    let mut f = udp6(53)[14..].to_vec();
    f[6] = 0;
    f[5] += 8;
    f.splice(40..40, [17, 0, 1, 4, 0, 0, 0, 0]);
    assert_eq!(
        ingress_on(LinkMedium::Ip, &mut r, &f),
        Verdict::Via(B6.into())
    );
    // A non-first fragment carries no ports: no match.
    let mut frag = udp6(53)[14..].to_vec();
    frag[6] = 44;
    frag[5] += 8;
    frag.splice(40..40, [17, 0, 0x00, 0x08, 0, 0, 0, 1]);
    assert_eq!(ingress_on(LinkMedium::Ip, &mut r, &frag), Verdict::Pass);
    assert_eq!(counter(&r, "unmatched"), 1);
}

#[test]
fn truncated_and_garbage_frames_pass_and_are_counted() {
    let mut r = reroute(&format!("{TWO_HOPS}\n[[rule]]\nvia = [\"a\", \"b\"]"));
    let frames = [TCP4_DSCP46.to_vec(), udp6(53)];
    let mut malformed = 0;
    for f in &frames {
        // Cut inside the IP or the transport header: malformed.
        // Every cut is inside a header or short of the IP length.
        for len in 0..f.len() {
            assert_eq!(ingress(&mut r, &f[..len]), Verdict::Pass, "len {len}");
            malformed += 1;
        }
        assert!(matches!(ingress(&mut r, f), Verdict::Via(_)));
    }
    assert_eq!(counter(&r, "malformed"), malformed);
    for (_, f) in garbled(&frames, 20_000) {
        if let Verdict::Via(a) = ingress(&mut r, &f) {
            assert!([A4.into(), A6.into()].contains(&a), "{a}");
        }
    }
}

/// Drives the health checks in virtual time: every probe of a next hop
/// in `answering` is answered at once.
fn tick(r: &mut Reroute, now: Instant, answering: &[IpAddress]) -> Vec<IpAddress> {
    let mut sent = Vec::new();
    r.run_probes(now, &mut |a, seq| {
        sent.push((a, seq));
        true
    });
    for &(a, seq) in &sent {
        if answering.contains(&a) {
            r.handle_reply(now, a, seq);
        }
    }
    if r.dirty {
        r.update_routes(true);
    }
    sent.into_iter().map(|(a, _)| a).collect()
}

#[test]
fn health_state_machine_fails_over_and_back_in_virtual_time() {
    let mut r = reroute(
        r#"
        next_hop = [
            { name = "a", address = "10.20.0.2", interval = "100ms", timeout = "50ms", fall = 3, rise = 2 },
            { name = "b", address = "10.20.0.3" },
        ]
        rule = [{ name = "all", via = ["a", "b"] }]
        "#,
    );
    let (a, b): (IpAddress, IpAddress) = (A4.into(), B4.into());
    let pkt = tcp4([10, 1, 0, 1], [10, 9, 0, 1], 1, 2, 64);
    assert_eq!(tick(&mut r, ms(0), &[a, b]), vec![a, b]);
    assert_eq!(ingress(&mut r, &pkt), Verdict::Via(a));
    // a stops answering: probes at 100, 200, 300 ms are lost at +50.
    for t in [100, 150, 200, 250, 300] {
        tick(&mut r, ms(t), &[b]);
        assert_eq!(r.is_up("a"), Some(true), "at {t} ms");
    }
    tick(&mut r, ms(350), &[b]);
    assert_eq!(r.is_up("a"), Some(false));
    assert_eq!(counter(&r, "next_hop.a.probes_lost"), 3);
    assert_eq!(r.active("all", false), Some("b"));
    assert_eq!(ingress(&mut r, &pkt), Verdict::Via(b));
    assert_eq!(counter(&r, "failovers"), 1);
    // Back: two answers (at 400 and 500 ms) bring it up again.
    tick(&mut r, ms(400), &[a, b]);
    assert_eq!(r.is_up("a"), Some(false));
    tick(&mut r, ms(500), &[a, b]);
    assert_eq!(r.is_up("a"), Some(true));
    assert_eq!(ingress(&mut r, &pkt), Verdict::Via(a));
    assert_eq!(counter(&r, "failbacks"), 1);
    // A single lost probe between answers changes nothing.
    tick(&mut r, ms(600), &[b]);
    tick(&mut r, ms(650), &[b]);
    tick(&mut r, ms(700), &[a, b]);
    assert_eq!(r.is_up("a"), Some(true));
    counters_are(&r, &[("next_hop.a.probes_sent", 8), ("next_hop.a.up", 1)]);
    // Both down: the table decides (Pass); with when_down = "drop", drop.
    for t in (800..=1400).step_by(50) {
        tick(&mut r, ms(t), &[]);
    }
    assert_eq!((r.is_up("a"), r.is_up("b")), (Some(false), Some(false)));
    assert_eq!(ingress(&mut r, &pkt), Verdict::Pass);
    assert_eq!(counter(&r, "no_next_hop"), 1);
    r.when_down = WhenDown::Drop;
    assert_eq!(ingress(&mut r, &pkt), Verdict::Drop);
    r.refresh_due();
    assert!(r.poll_at().is_some());
}

#[test]
fn without_failback_traffic_stays_on_the_backup() {
    let mut r = reroute(
        r#"
        failback = false
        next_hop = [
            { name = "a", address = "10.20.0.2", fall = 1, rise = 1 },
            { name = "b", address = "10.20.0.3", fall = 1 },
        ]
        rule = [{ name = "all", via = ["a", "b"] }]
        "#,
    );
    let (a, b): (IpAddress, IpAddress) = (A4.into(), B4.into());
    tick(&mut r, ms(0), &[b]);
    tick(&mut r, ms(100), &[b]);
    assert_eq!(r.active("all", false), Some("b"));
    tick(&mut r, ms(200), &[a, b]);
    assert_eq!(r.is_up("a"), Some(true));
    assert_eq!(r.active("all", false), Some("b"));
    assert_eq!(counter(&r, "failbacks"), 0);
    // b fails: back to a, which is a failback towards the preference.
    tick(&mut r, ms(300), &[a]);
    tick(&mut r, ms(400), &[a]);
    assert_eq!(r.active("all", false), Some("a"));
    counters_are(&r, &[("failovers", 1), ("failbacks", 1)]);
}

#[test]
fn reconfigure_without_failback_keeps_the_current_next_hop() {
    let text = |via: &str| {
        format!(
            r#"
            failback = false
            next_hop = [
                {{ name = "a", address = "10.20.0.2", fall = 1, rise = 1 }},
                {{ name = "b", address = "10.20.0.3", fall = 1 }},
            ]
            rule = [{{ name = "all", via = {via} }}]
            "#
        )
    };
    let mut r = reroute(&text(r#"["a", "b"]"#));
    let (a, b): (IpAddress, IpAddress) = (A4.into(), B4.into());
    tick(&mut r, ms(0), &[b]);
    tick(&mut r, ms(100), &[b]);
    tick(&mut r, ms(200), &[a, b]);
    assert_eq!(r.is_up("a"), Some(true));
    assert_eq!(r.active("all", false), Some("b"));
    let cfg = |via: &str| FunctionConfig::Reroute(toml::from_str(&text(via)).unwrap());
    // The same config: traffic stays where it is.
    assert!(r.reconfigure(&cfg(r#"["a", "b"]"#)).unwrap());
    assert_eq!(r.active("all", false), Some("b"));
    // b no longer in the list: the rule's first choice.
    assert!(r.reconfigure(&cfg(r#"["a"]"#)).unwrap());
    assert_eq!(r.active("all", false), Some("a"));
    counters_are(&r, &[("failovers", 1), ("failbacks", 0)]);
}

#[test]
fn a_network_next_hop_sends_packets_out_of_that_network() {
    let mut r = reroute(
        r#"
        next_hop = [{ name = "wan", network = "global" }]
        rule = [{ name = "all", via = ["wan"] }]
        "#,
    );
    let v = Verdict::Redirect(Role::Global);
    assert_eq!(
        ingress(&mut r, &tcp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 9)),
        v
    );
    assert_eq!(ingress(&mut r, &udp6(53)), v);
    counters_are(&r, &[("next_hop.wan.packets", 2), ("next_hop.wan.up", 1)]);
    assert_eq!(r.active("all", true), Some("wan"));
}

#[test]
fn device_next_hops_follow_the_directory() {
    let mut r = reroute(
        r#"
        next_hop = [
            { name = "a", device = "router-a", rise = 2 },
            { name = "b", device = "router-b", check = "none" },
        ]
        rule = [{ name = "all", via = ["a", "b"] }]
        "#,
    );
    struct Dir(std::cell::Cell<bool>);
    impl Directory for Dir {
        fn device_addresses(&self, name: &str) -> Vec<IpAddress> {
            match name {
                "router-a" if self.0.get() => vec![A6.into(), A4.into()],
                "router-b" => vec![B4.into()],
                _ => Vec::new(),
            }
        }
    }
    let dir = Dir(std::cell::Cell::new(true));
    let present = &dir.0;
    assert_eq!(r.is_up("a"), Some(false));
    // As `attach` does: the first lookup is no failback.
    r.resolve(ms(0), &dir);
    r.update_routes(false);
    assert_eq!(r.is_up("a"), Some(true));
    assert_eq!(r.active("all", false), Some("a"));
    assert_eq!(r.active("all", true), Some("a"));
    // IPv4 probes for a dual-stack next hop.
    assert_eq!(tick(&mut r, ms(0), &[A4.into()]), vec![IpAddress::from(A4)]);
    // router-a leaves: down at the next lookup, without waiting for
    // probes; b (no check, IPv4 only) takes IPv4, IPv6 has nothing.
    present.set(false);
    r.resolve(ms(100), &dir);
    r.update_routes(true);
    assert_eq!(r.is_up("a"), Some(false));
    assert_eq!(r.active("all", false), Some("b"));
    assert_eq!(r.active("all", true), None);
    assert_eq!(counter(&r, "failovers"), 1);
    assert!(tick(&mut r, ms(100), &[]).is_empty());
    // It returns: up only after `rise` answers.
    present.set(true);
    r.resolve(ms(200), &dir);
    tick(&mut r, ms(200), &[A4.into()]);
    assert_eq!(r.is_up("a"), Some(false));
    tick(&mut r, ms(300), &[A4.into()]);
    assert_eq!(r.is_up("a"), Some(true));
    assert_eq!(r.active("all", false), Some("a"));
    assert_eq!(counter(&r, "failbacks"), 1);
}

#[test]
fn echo_request_and_reply_wire_format() {
    let mut buf = [0u8; 16];
    let n = echo_request(false, 0x0102, &mut buf);
    assert_eq!(
        &buf[..n],
        &[
            8, 0, 0, 0, 0x52, 0x52, 0x01, 0x02, b's', b'h', b'm', b'n', b'e', b't', b'r', b'r'
        ]
    );
    assert_eq!(echo_request(true, 7, &mut buf), 16);
    assert_eq!(buf[0], 128);
    let mut reply = buf;
    reply[0] = 129;
    assert_eq!(echo_reply_seq(&reply), Some(7));
    reply[0] = 0;
    assert_eq!(echo_reply_seq(&reply), Some(7));
    reply[5] = 0;
    assert_eq!(echo_reply_seq(&reply), None);
    assert_eq!(echo_reply_seq(&[0, 0, 0]), None);
    // A reply from the wrong address or with a stale sequence number
    // does not count.
    let mut r = reroute(&format!("{TWO_HOPS}\n[[rule]]\nvia = [\"a\"]"));
    r.hops[0].health.set(false);
    let mut seqs = Vec::new();
    r.run_probes(ms(0), &mut |a, s| {
        seqs.push((a, s));
        true
    });
    r.handle_reply(ms(0), B4.into(), seqs[0].1);
    r.handle_reply(ms(0), A4.into(), seqs[0].1.wrapping_add(9));
    assert_eq!(r.hops[0].health.streak(), 0);
    r.handle_reply(ms(0), A4.into(), seqs[0].1);
    assert_eq!(r.hops[0].health.streak(), 1);
}

#[test]
fn reconfigure_keeps_health_of_unchanged_next_hops() {
    let mut r = reroute(&format!(
        "{TWO_HOPS}\n[[rule]]\nname = \"x\"\nvia = [\"a\", \"b\"]"
    ));
    r.hops[0].health.set(false);
    r.hops[0].probes_sent = 5;
    r.update_routes(true);
    assert_eq!(r.active("x", false), Some("b"));
    let text = "[[next_hop]]\nname = \"a\"\naddress = [\"10.20.0.2\", \"fd00:20::2\"]\n\
                [[next_hop]]\nname = \"b\"\naddress = \"10.20.0.9\"\n\
                [[rule]]\nname = \"x\"\nvia = [\"b\", \"a\"]";
    let cfg = FunctionConfig::Reroute(toml::from_str(text).unwrap());
    assert!(r.reconfigure(&cfg).unwrap());
    assert_eq!(r.is_up("a"), Some(false));
    assert_eq!(counter(&r, "next_hop.a.probes_sent"), 5);
    assert_eq!(r.active("x", false), Some("b"));
    assert_eq!(
        ingress(&mut r, &tcp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 9)),
        Verdict::Via(IpAddress::v4(10, 20, 0, 9))
    );
    assert!(!r.reconfigure(&FunctionConfig::Passthrough).unwrap());
    // An invalid configuration is refused and changes nothing.
    let bad = FunctionConfig::Reroute(
        toml::from_str("[[next_hop]]\nname = \"a\"\naddress = \"10.20.0.2\"\nfall = 0").unwrap(),
    );
    let e = r.reconfigure(&bad).unwrap_err().to_string();
    assert!(e.contains("next_hop a: fall"), "{e}");
    assert_eq!(r.active("x", false), Some("b"));
    assert_eq!(counter(&r, "next_hop.a.probes_sent"), 5);
}

#[test]
fn config_errors_name_the_problem() {
    assert_eq!(parse_duration("99999999999999999999s"), None);
    let err = |text: &str| config_error(text, Reroute::new);
    let hop = "[[next_hop]]\nname = \"a\"\naddress = \"10.0.0.1\"\n";
    assert!(err("next_hop = []").contains("at least one next_hop"));
    assert!(err("[[next_hop]]\nname = \"a\"").contains("one of address, device or network"));
    assert!(
        err("[[next_hop]]\nname = \"a\"\naddress = \"10.0.0.1\"\ndevice = \"x\"")
            .contains("one of address")
    );
    assert!(
        err("[[next_hop]]\nname = \"a\"\nnetwork = \"global\"\ndevice = \"x\"")
            .contains("one of address")
    );
    assert!(
        err("[[next_hop]]\nname = \"a\"\nnetwork = \"local\"\ncheck = \"icmp\"")
            .contains("no address to check")
    );
    assert!(err("[[next_hop]]\nname = \"a\"\naddress = \"10.0.0\"").contains("address"));
    assert!(
        err("[[next_hop]]\nname = \"a\"\naddress = [\"10.0.0.1\", \"10.0.0.2\"]")
            .contains("at most one of each")
    );
    // A duration is checked by the parser (the message shows the line),
    // its range by the health check.
    let e = toml::from_str::<RerouteConfig>(&format!("{hop}interval = \"fast\""))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("interval") && e.contains("not a duration"),
        "{e}"
    );
    assert!(err(&format!("{hop}interval = \"2h\"")).contains("next_hop a: interval"));
    assert!(err(&format!("{hop}timeout = \"0ms\"")).contains("next_hop a: timeout"));
    assert!(err(&format!("{hop}fall = 0")).contains("next_hop a: fall"));
    assert!(err(&format!("{hop}{hop}")).contains("name used twice"));
    assert!(err(&format!("{hop}[[rule]]\nvia = [\"c\"]")).contains("no next_hop"));
    assert!(err(&format!("{hop}[[rule]]\nvia = []")).contains("no next hop"));
    assert!(err(&format!("{hop}[[rule]]\nvia = [\"a\", \"a\"]")).contains("twice"));
    assert!(err(&format!("{hop}[[rule]]\ndport = 80\nvia = [\"a\"]")).contains("need proto"));
    assert!(err(&format!("{hop}[[rule]]\nproto = \"sctp\"\nvia = [\"a\"]")).contains("proto"));
    assert!(
        err(&format!(
            "{hop}[[rule]]\nproto = \"tcp\"\nsport = \"9-1\"\nvia = [\"a\"]"
        ))
        .contains("sport")
    );
    assert!(err(&format!("{hop}[[rule]]\ndscp = 64\nvia = [\"a\"]")).contains("dscp"));
    assert!(
        err(&format!(
            "{hop}[[rule]]\nname = \"m\"\nsrc = \"10.0.0.0/8\"\ndst = \"fd00::/8\"\nvia = [\"a\"]"
        ))
        .contains("rule m: src and dst")
    );
    assert!(
        err(&format!(
            "{hop}[[rule]]\ndst = \"10.0.0.0/40\"\nvia = [\"a\"]"
        ))
        .contains("dst")
    );
    // Unknown fields and values are refused by the parser.
    let parse = |text: &str| toml::from_str::<FunctionConfig>(text);
    assert!(parse(&format!("kind = \"reroute\"\n{hop}chekc = \"icmp\"")).is_err());
    assert!(parse(&format!("kind = \"reroute\"\n{hop}check = \"tcp\"")).is_err());
    assert!(parse(&format!("kind = \"reroute\"\nwhen_down = \"x\"\n{hop}")).is_err());
    let ok = parse(&format!("kind = \"reroute\"\n{hop}[[rule]]\nvia = [\"a\"]")).unwrap();
    assert!(super::super::build(&ok).is_ok());
}

#[test]
fn next_hop_checks_left_unconfigured_take_the_defaults() {
    // 100 ms between probes, each waits as long, 3 misses down, 2 up.
    let r = reroute(&format!("{TWO_HOPS}\n[[rule]]\nvia = [\"a\"]"));
    let p = r.hops[0].params;
    assert_eq!(
        (p.interval, p.timeout, p.fall, p.rise),
        (
            smoltcp::time::Duration::from_millis(100),
            smoltcp::time::Duration::from_millis(100),
            3,
            2
        )
    );
}
