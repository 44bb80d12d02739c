use super::*;
use crate::functions::{FunctionConfig, build};
use crate::testing::frames::{self, ep, garbled, wrap};
use crate::testing::function::{self, config_error, counter, counters_are, egress, ingress};
use crate::wire::LinkMedium;
use Verdict::{Drop, Pass};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpAddress,
    IpProtocol, Ipv4Address, Ipv4Repr, Ipv6Address, Ipv6Repr, TcpControl,
};

type Ep = (IpAddress, u16);

/// A bare SYN, a SYN-ACK, a data segment (ACK, PSH), a FIN-ACK.
fn syn(src: Ep, dst: Ep) -> Vec<u8> {
    frames::tcp(src, dst, TcpControl::Syn, false, b"")
}
fn syn_ack(src: Ep, dst: Ep) -> Vec<u8> {
    frames::tcp(src, dst, TcpControl::Syn, true, b"")
}
fn data(src: Ep, dst: Ep) -> Vec<u8> {
    frames::tcp(src, dst, TcpControl::Psh, true, b"hello")
}
fn fin(src: Ep, dst: Ep) -> Vec<u8> {
    frames::tcp(src, dst, TcpControl::Fin, true, b"")
}

fn udp(src: Ep, dst: Ep) -> Vec<u8> {
    frames::udp(src, dst, b"datagram")
}

const A: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
const B: Ipv4Address = Ipv4Address::new(10, 1, 0, 2);
const C: Ipv4Address = Ipv4Address::new(10, 9, 0, 3);

fn t(secs: u64) -> Instant {
    Instant::from_secs(1000 + secs as i64)
}

fn firewall(text: &str) -> Firewall {
    function::build(text, Firewall::new)
}

fn icmp(src: Ipv4Address, dst: Ipv4Address, repr: Icmpv4Repr<'_>) -> Vec<u8> {
    let mut l4 = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut l4[..]),
        &ChecksumCapabilities::default(),
    );
    wrap(src.into(), dst.into(), IpProtocol::Icmp, &l4)
}

fn ping(src: Ipv4Address, dst: Ipv4Address, request: bool, ident: u16) -> Vec<u8> {
    let data = b"ping";
    let repr = if request {
        Icmpv4Repr::EchoRequest {
            ident,
            seq_no: 1,
            data,
        }
    } else {
        Icmpv4Repr::EchoReply {
            ident,
            seq_no: 1,
            data,
        }
    };
    icmp(src, dst, repr)
}

/// Where a test frame enters: from the global network, from the local
/// network, or from the device's own stack (the egress hook).
const IN: Option<Role> = Some(Role::Global);
const OUT: Option<Role> = Some(Role::Local);
const OWN: Option<Role> = None;

/// Runs `bytes`, a frame of `medium`, through the hook `from` names.
fn hook(
    fw: &mut Firewall,
    now: Instant,
    medium: LinkMedium,
    from: Option<Role>,
    bytes: &[u8],
) -> Verdict {
    match from {
        Some(from) => ingress(fw, now, from, medium, bytes).0,
        None => egress(fw, now, medium, bytes).0,
    }
}

/// One Ethernet frame at `t(secs)` through the hook `from` names.
fn run(fw: &mut Firewall, secs: u64, from: Option<Role>, bytes: &[u8]) -> Verdict {
    hook(fw, t(secs), LinkMedium::Ethernet, from, bytes)
}

impl Firewall {
    /// Runs each step `(seconds, from, frame, verdict)` in order and
    /// checks its verdict.
    fn script(&mut self, steps: &[(u64, Option<Role>, Vec<u8>, Verdict)]) {
        for (i, (secs, from, bytes, want)) in steps.iter().enumerate() {
            assert_eq!(run(self, *secs, *from, bytes), *want, "step {i}");
        }
    }
}

#[test]
fn rules_block_and_allow_in_order() {
    let mut fw = firewall(
        r#"
        default = "drop"
        rule = [
            { action = "drop", direction = "in", src = "10.9.0.0/16" },
            { action = "accept", direction = "in", proto = "tcp", dst = "10.1.0.0/16", dport = 80, state = "new" },
            { action = "accept", direction = "in", proto = "udp", sport = "1024-65535", dport = "5000-5010" },
        ]
        "#,
    );
    let to_b = |src, dport| syn(ep(src, 40000), ep(B, dport));
    let dgram = |sport, dport| udp(ep(A, sport), ep(B, dport));
    fw.script(&[
        (0, IN, to_b(A, 80), Pass),
        (0, IN, to_b(A, 81), Drop),
        // The earlier drop rule wins over the accept for port 80.
        (0, IN, to_b(C, 80), Drop),
        // Direction "in" does not cover frames from the local network.
        (0, OUT, to_b(A, 8080), Drop),
        (0, IN, dgram(2000, 5005), Pass),
        (0, IN, dgram(2000, 5011), Drop),
        (0, IN, dgram(53, 5005), Drop),
    ]);
    counters_are(
        &fw,
        &[
            ("rule0_packets", 1),
            ("rule1_packets", 1),
            ("rule2_packets", 1),
            ("accepted", 2),
            ("dropped", 5),
            ("connections", 2),
        ],
    );
}

#[test]
fn replies_to_outbound_tcp_pass_unsolicited_inbound_does_not() {
    let mut fw = firewall("[[rule]]\naction = \"accept\"\ndirection = \"out\"\nproto = \"tcp\"");
    let (a, b, c) = (ep(A, 40000), ep(B, 80), ep(C, 5555));
    fw.script(&[
        (0, OUT, syn(a, b), Pass),
        (0, IN, syn_ack(b, a), Pass),
        (0, OUT, data(a, b), Pass),
        (1, IN, data(b, a), Pass),
        // Nobody asked for these.
        (1, IN, syn(c, ep(A, 22)), Drop),
        (1, IN, data(c, a), Drop),
        (1, IN, syn_ack(c, a), Drop),
    ]);
    assert_eq!(counter(&fw, "invalid"), 2);
    fw.script(&[
        // Closing still lets the last segments through...
        (2, IN, fin(b, a), Pass),
        (2, OUT, fin(a, b), Pass),
        (2, OUT, data(a, b), Pass),
        // ... for the closing timeout only.
        (40, IN, data(b, a), Drop),
    ]);
    counters_are(&fw, &[("expired", 1), ("connections_created", 1)]);
}

#[test]
fn own_stack_replies_pass_and_established_rules_may_drop() {
    let mut fw = firewall(
        r#"rule = [
            { action = "drop", proto = "tcp", sport = 7, state = "established" },
            { action = "accept", direction = "in", proto = "tcp", dport = "7-9" },
        ]"#,
    );
    let (c, c80, s7, s8) = (ep(C, 40000), ep(C, 80), ep(A, 7), ep(A, 8));
    fw.script(&[
        (0, IN, syn(c, s8), Pass),
        (0, OWN, syn_ack(s8, c), Pass),
        (0, IN, syn(c, s7), Pass),
        (0, OWN, syn_ack(s7, c), Drop),
        // The device itself may not start connections: no rule allows it.
        (0, OWN, syn(s8, c80), Drop),
    ]);
    assert_eq!(fw.rule_packets(0), 1);
    assert_eq!(fw.rule_packets(1), 2);
}

#[test]
fn own_stack_traffic_is_out() {
    let mut fw =
        firewall("[[rule]]\naction = \"accept\"\ndirection = \"out\"\nproto = \"udp\"\ndport = 53");
    let (a, b) = (ep(A, 5000), ep(B, 53));
    fw.script(&[
        (0, OWN, udp(a, b), Pass),
        (0, IN, udp(b, a), Pass),
        (0, IN, udp(b, ep(A, 5001)), Drop),
    ]);
    assert_eq!(fw.rule_packets(0), 1);
}

#[test]
fn udp_reply_passes_until_the_entry_expires() {
    let mut fw = firewall(
        r#"
        udp_timeout = "30s"
        udp_replied_timeout = "3m"
        rule = [{ action = "accept", direction = "out", proto = "udp" }]
        "#,
    );
    let (a, a2, a3, b) = (ep(A, 5353), ep(A, 5354), ep(A, 5355), ep(B, 53));
    fw.script(&[
        (0, OUT, udp(a, b), Pass),
        (1, IN, udp(b, a), Pass),
        // Replied: the longer timeout, refreshed by each packet.
        (150, IN, udp(b, a), Pass),
        (150 + 181, IN, udp(b, a), Drop),
        // Never answered: the short one.
        (400, OUT, udp(a2, b), Pass),
        (429, IN, udp(b, a2), Pass),
        (400, OUT, udp(a3, b), Pass),
        (431, IN, udp(b, a3), Drop),
    ]);
    assert!(counter(&fw, "expired") >= 2);
}

#[test]
fn icmp_echo_reply_and_related_errors_pass() {
    let mut fw = firewall(
        r#"rule = [
            { action = "accept", direction = "out", proto = "icmp" },
            { action = "accept", direction = "out", proto = "udp" },
        ]"#,
    );
    // Port unreachable for a datagram we sent is related; for one we
    // never sent it is not.
    let unreachable = |sport| {
        let quoted = frames::udp_l4(ep(A, sport), ep(B, 9), b"datagram");
        let header = Ipv4Repr {
            src_addr: A,
            dst_addr: B,
            next_header: IpProtocol::Udp,
            payload_len: 8,
            hop_limit: 64,
        };
        let reason = Icmpv4DstUnreachable::PortUnreachable;
        let data = &quoted[..8];
        icmp(
            B,
            A,
            Icmpv4Repr::DstUnreachable {
                reason,
                header,
                data,
            },
        )
    };
    fw.script(&[
        (0, OUT, ping(A, B, true, 7), Pass),
        (0, IN, ping(B, A, false, 7), Pass),
        (0, IN, ping(B, A, false, 8), Drop),
        (0, IN, ping(B, A, true, 9), Drop),
        (31, IN, ping(B, A, false, 7), Drop),
        (40, OUT, udp(ep(A, 4000), ep(B, 9)), Pass),
        (40, IN, unreachable(4000), Pass),
        (40, IN, unreachable(4001), Drop),
    ]);
}

#[test]
fn ipv6_tcp_is_tracked_and_neighbour_discovery_passes() {
    let mut fw = firewall(
        r#"rule = [{ action = "accept", direction = "in", proto = "tcp", dst = "fd00:2::/64", dport = 443 }]"#,
    );
    let server = Ipv6Address::new(0xfd00, 2, 0, 0, 0, 0, 0, 2);
    let c = ep(Ipv6Address::new(0xfd00, 9, 0, 0, 0, 0, 0, 1), 50000);
    let (s, s2) = (ep(server, 443), ep(server, 444));
    // A neighbour solicitation (type 135) needs no rule.
    let mut ns = [0u8; 24];
    ns[0] = 135;
    fw.script(&[
        (0, IN, syn(c, s), Pass),
        (0, OWN, syn_ack(s, c), Pass),
        (0, IN, data(c, s), Pass),
        (0, IN, syn(c, s2), Drop),
        (0, IN, wrap(c.0, s.0, IpProtocol::Icmpv6, &ns), Pass),
    ]);
    // An IPv4 prefix never matches an IPv6 packet.
    let mut v4only = firewall("[[rule]]\naction = \"accept\"\ndst = \"0.0.0.0/0\"");
    assert_eq!(run(&mut v4only, 0, IN, &syn(c, s)), Drop);
}

#[test]
fn ipv6_packet_too_big_for_a_tracked_flow_is_related() {
    let mut fw = firewall("[[rule]]\naction = \"accept\"\ndirection = \"out\"\nproto = \"tcp\"");
    // The originator's address is the higher one: the table's key is the
    // quoted packet's, reversed.
    let a = Ipv6Address::new(0xfd00, 9, 0, 0, 0, 0, 0, 1);
    let b = Ipv6Address::new(0xfd00, 2, 0, 0, 0, 0, 0, 2);
    let router = Ipv6Address::new(0xfd00, 3, 0, 0, 0, 0, 0, 1);
    // The router quotes the packet's IPv6 header and the start of its TCP
    // header.
    let too_big = |sport| {
        let quoted = syn(ep(a, sport), ep(b, 443));
        let header = Ipv6Repr {
            src_addr: a,
            dst_addr: b,
            next_header: IpProtocol::Tcp,
            payload_len: 8,
            hop_limit: 64,
        };
        let repr = Icmpv6Repr::PktTooBig {
            mtu: 1280,
            header,
            data: &quoted[54..62],
        };
        let mut l4 = vec![0u8; repr.buffer_len()];
        repr.emit(
            &router,
            &a,
            &mut Icmpv6Packet::new_unchecked(&mut l4[..]),
            &ChecksumCapabilities::default(),
        );
        wrap(router.into(), a.into(), IpProtocol::Icmpv6, &l4)
    };
    // An ICMP error whose quote is not an IPv6 header is malformed.
    let mut broken = too_big(40000);
    broken[14 + 40 + 8] = 0x45;
    fw.script(&[
        (0, OUT, syn(ep(a, 40000), ep(b, 443)), Pass),
        (1, IN, too_big(40000), Pass),
        // One quoting a connection nobody opened meets the default.
        (1, IN, too_big(40001), Drop),
        (1, IN, broken, Drop),
    ]);
    assert_eq!(counter(&fw, "malformed"), 1);
}

#[test]
fn protocols_by_name_number_or_any() {
    let to_b = syn(ep(A, 40000), ep(B, 22));
    let dgram = udp(ep(A, 40000), ep(B, 22));
    for (proto, tcp_passes, udp_passes) in [
        ("\"tcp\"", true, false),
        ("6", true, false),
        ("17", false, true),
        ("\"any\"", true, true),
    ] {
        let mut fw = firewall(&format!(
            "[[rule]]\naction = \"accept\"\nproto = {proto}\ndst = \"10.1.0.0/16\""
        ));
        let want = |pass| if pass { Pass } else { Drop };
        assert_eq!(run(&mut fw, 0, IN, &to_b), want(tcp_passes), "{proto}");
        assert_eq!(run(&mut fw, 0, IN, &dgram), want(udp_passes), "{proto}");
    }
    // "icmp" is IPv4's: protocol 1 inside IPv6 is not it.
    let mut fw = firewall("[[rule]]\naction = \"accept\"\nproto = \"icmp\"");
    let v6 = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    let icmp_in_v6 = wrap(
        v6.into(),
        v6.into(),
        IpProtocol::Icmp,
        &[8, 0, 0, 0, 0, 1, 0, 1],
    );
    assert_eq!(run(&mut fw, 0, IN, &icmp_in_v6), Drop);
    assert_eq!(run(&mut fw, 0, IN, &ping(A, B, true, 1)), Pass);
}

#[test]
fn truncated_and_garbage_frames_are_counted_drops() {
    let v6 = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    let frames = [
        data(ep(A, 1), ep(B, 2)),
        udp(ep(A, 1), ep(B, 2)),
        ping(A, B, true, 1),
        syn(ep(v6, 1), ep(v6, 2)),
    ];
    for medium in [LinkMedium::Ethernet, LinkMedium::Ip] {
        let mut fw = firewall("default = \"accept\"\nlog_drops_per_second = 0");
        let mut expected = 0;
        for f in &frames {
            let f = &f[14 - medium.header_len()..];
            for len in 0..f.len() {
                for from in [IN, OWN] {
                    let v = hook(&mut fw, t(0), medium, from, &f[..len]);
                    assert_eq!(v, Drop, "len {len}");
                    expected += 1;
                }
            }
            assert_eq!(hook(&mut fw, t(0), medium, IN, f), Pass);
        }
        assert_eq!(counter(&fw, "malformed"), expected);
    }
    // Random bytes, with and without a plausible header: no panic.
    let mut fw = firewall("log_drops_per_second = 0");
    for (i, f) in garbled(&frames, 20_000) {
        let _ = run(&mut fw, i / 100, IN, &f);
    }
}

#[test]
fn non_first_fragments_dropped_unless_a_rule_allows_them() {
    let frag = |src| {
        let mut f = udp(ep(src, 1), ep(B, 2));
        f[14 + 6..14 + 8].copy_from_slice(&(64u16 / 8).to_be_bytes());
        f
    };
    let mut fw = firewall(
        "default = \"accept\"\n[[rule]]\naction = \"accept\"\nsrc = \"10.0.0.0/24\"\nfragments = true",
    );
    // A first fragment (more-fragments set, offset 0) is a whole packet.
    let mut first = udp(ep(C, 1), ep(B, 2));
    first[14 + 6] = 0x20;
    fw.script(&[
        (0, IN, frag(A), Pass),
        (0, IN, frag(C), Drop),
        (0, IN, first, Pass),
    ]);
    counters_are(&fw, &[("fragments_dropped", 1), ("rule0_packets", 1)]);
}

#[test]
fn full_table_drops_new_connections_and_counts_them() {
    let mut fw = firewall("default = \"accept\"\nmax_connections = 2");
    let flow = |port| udp(ep(A, port), ep(B, 53));
    fw.script(&[
        (0, OUT, flow(1), Pass),
        (0, OUT, flow(2), Pass),
        (0, OUT, flow(3), Drop),
        // Existing connections keep working.
        (1, IN, udp(ep(B, 53), ep(A, 2)), Pass),
        // Once the unanswered one expires there is room again.
        (35, OUT, flow(3), Pass),
    ]);
    counters_are(&fw, &[("table_full", 1), ("connections", 2)]);
    // The stats say as much as the counters.
    let stats = fw.stats();
    assert_eq!((stats.table_full, stats.connections), (1, 2));
}

#[test]
fn invalid_packets_follow_an_accepting_default() {
    let mut fw = firewall("default = \"accept\"");
    assert_eq!(run(&mut fw, 0, IN, &data(ep(C, 1), ep(A, 2))), Pass);
    counters_are(&fw, &[("invalid", 1), ("connections", 0)]);
}

#[test]
fn drop_logging_is_rate_limited() {
    let mut fw = firewall("log_drops_per_second = 2");
    let stray = syn(ep(C, 1), ep(A, 2));
    for _ in 0..10 {
        assert_eq!(run(&mut fw, 0, IN, &stray), Drop);
    }
    assert_eq!(counter(&fw, "logs_suppressed"), 8);
    assert_eq!(run(&mut fw, 1, IN, &stray), Drop);
    assert_eq!(counter(&fw, "logs_suppressed"), 8);
}

#[test]
fn config_errors_name_the_problem() {
    let err = |text: &str| config_error(text, Firewall::new);
    let rule = |body: &str| err(&format!("[[rule]]\naction = \"accept\"\n{body}"));
    for (body, names) in [
        ("src = \"10.0.0.0/33\"", "rule 0: src"),
        ("dst = \"10.0.0/8\"", "rule 0: dst"),
        ("proto = \"tcp\"\ndport = \"90-80\"", "dport"),
        ("proto = \"udp\"\nsport = 70000", "sport"),
        ("proto = \"udp\"\nsport = \"1-x\"", "sport"),
        ("dport = 80", "need proto"),
        ("proto = \"icmp\"\nsrc = \"fd00::/8\"", "icmpv6"),
        ("proto = 1\nsrc = \"fd00::/8\"", "icmpv6"),
        ("src = \"10.0.0.0/8\"\ndst = \"fd00::/8\"", "IP versions"),
        ("proto = \"sctp\"", "rule 0: proto"),
        ("proto = 256", "rule 0: proto"),
        ("fragments = true\nstate = \"new\"", "fragments"),
    ] {
        let e = rule(body);
        assert!(e.contains(names), "{body}: {e}");
    }
    assert!(err("max_connections = 0").contains("max_connections"));
    assert!(err("udp_timeout = \"0s\"").contains("udp_timeout"));
    assert!(err("tcp_established_timeout = \"400d\"").contains("tcp_established_timeout"));
    // Unknown fields and values, and what is not a duration, are refused by
    // the parser.
    let parse = |text: &str| toml::from_str::<FunctionConfig>(text);
    for text in [
        "defualt = \"drop\"",
        "default = \"reject\"",
        "medium = \"ip\"",
        "[[rule]]\naction = \"accept\"\nport = 1",
        "[[rule]]\naction = \"accept\"\ndirection = \"sideways\"",
    ] {
        assert!(
            parse(&format!("kind = \"firewall\"\n{text}")).is_err(),
            "{text}"
        );
    }
    let soon = parse("kind = \"firewall\"\nicmp_timeout = \"soon\"").unwrap_err();
    assert!(soon.to_string().contains("not a duration"), "{soon}");
    let ok = "kind = \"firewall\"\ndefault = \"accept\"\n[[rule]]\naction = \"drop\"\nsrc = \"10.0.0.1\"";
    assert!(build(&parse(ok).expect("valid")).is_ok());
}

#[test]
fn counters_are_named_once_and_visited_in_order() {
    let fw = firewall("[[rule]]\naction = \"accept\"\n[[rule]]\naction = \"drop\"");
    let names: Vec<String> = crate::stack::hook::counters_of(&fw)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            "rule0_packets",
            "rule1_packets",
            "accepted",
            "dropped",
            "invalid",
            "malformed",
            "fragments_dropped",
            "table_full",
            "connections",
            "connections_created",
            "expired",
            "revoked",
            "logs_suppressed",
        ]
    );
}

/// Applies the firewall config section `text` through the `Function`
/// trait, as a device does.
fn reconfigure(fw: &mut Firewall, text: &str) -> Result<bool, FunctionError> {
    let cfg: FunctionConfig =
        toml::from_str(&format!("kind = \"firewall\"\n{text}")).expect("parses");
    Function::reconfigure(fw, &cfg)
}

/// Rules accepting TCP to ports 80 and 443 and UDP to 53 from the inside.
const WEB_AND_DNS: &str = r#"
    default = "drop"
    rule = [
        { action = "accept", direction = "out", proto = "tcp", dport = 80 },
        { action = "accept", direction = "out", proto = "tcp", dport = 443 },
        { action = "accept", direction = "out", proto = "udp", dport = 53 },
    ]
"#;

/// Opens a TCP connection `a` -> `b` from the inside and exchanges data.
fn establish(fw: &mut Firewall, secs: u64, a: Ep, b: Ep) {
    fw.script(&[
        (secs, OUT, syn(a, b), Pass),
        (secs, IN, syn_ack(b, a), Pass),
        (secs, OUT, data(a, b), Pass),
        (secs, IN, data(b, a), Pass),
    ]);
}

#[test]
fn reconfigure_with_the_same_rules_keeps_established_flows() {
    let mut fw = firewall(WEB_AND_DNS);
    let (a, b) = (ep(A, 40000), ep(B, 443));
    establish(&mut fw, 0, a, b);
    assert!(reconfigure(&mut fw, WEB_AND_DNS).unwrap());
    // Mid-stream segments both ways: a rebuilt firewall would call them
    // invalid and drop them.
    fw.script(&[(1, OUT, data(a, b), Pass), (1, IN, data(b, a), Pass)]);
    counters_are(
        &fw,
        &[
            ("connections", 1),
            ("revoked", 0),
            ("invalid", 0),
            // The rule is unchanged: its count carries on.
            ("rule1_packets", 1),
            ("accepted", 6),
        ],
    );
}

#[test]
fn narrowed_rules_revoke_only_the_connections_they_forbid() {
    let mut fw = firewall(WEB_AND_DNS);
    let (a1, a2, a3) = (ep(A, 40001), ep(A, 40002), ep(A, 5353));
    let (web, tls, dns) = (ep(B, 80), ep(B, 443), ep(B, 53));
    establish(&mut fw, 0, a1, web);
    establish(&mut fw, 0, a2, tls);
    fw.script(&[(0, OUT, udp(a3, dns), Pass), (0, IN, udp(dns, a3), Pass)]);
    // The device's own stack (the egress hook) counts as the inside.
    fw.script(&[(0, OWN, syn(ep(C, 40004), web), Pass)]);

    // Widened: a rule for a range of TCP ports keeps them all.
    let widened = r#"rule = [
        { action = "accept", direction = "out", proto = "tcp", dport = "1-1023" },
        { action = "accept", direction = "out", proto = "tcp", dport = 443 },
        { action = "accept", direction = "out", proto = "udp", dport = 53 },
    ]"#;
    assert!(reconfigure(&mut fw, widened).unwrap());
    counters_are(&fw, &[("connections", 4), ("revoked", 0)]);

    // Narrowed: port 443 is no longer allowed.
    let narrowed = r#"rule = [
        { action = "accept", direction = "out", proto = "tcp", dport = 80 },
        { action = "drop", direction = "out", proto = "tcp", dport = 443 },
        { action = "accept", direction = "out", proto = "udp", dport = 53 },
    ]"#;
    assert!(reconfigure(&mut fw, narrowed).unwrap());
    counters_are(
        &fw,
        &[
            ("connections", 3),
            ("revoked", 1),
            // Re-evaluation counts no packets: a changed rule starts at 0,
            // one unchanged at its position keeps its count.
            ("rule0_packets", 0),
            ("rule1_packets", 0),
            ("rule2_packets", 1),
        ],
    );
    fw.script(&[
        // The revoked connection is cut both ways, and cannot start again.
        (1, OUT, data(a2, tls), Drop),
        (1, IN, data(tls, a2), Drop),
        (1, OUT, syn(ep(A, 40003), tls), Drop),
        // The others carry on, in their state.
        (1, OUT, data(a1, web), Pass),
        (1, IN, data(web, a1), Pass),
        (1, IN, udp(dns, a3), Pass),
        (1, IN, syn_ack(web, ep(C, 40004)), Pass),
    ]);
    counters_are(&fw, &[("invalid", 2), ("rule1_packets", 1)]);

    // Direction counts: a rule for outside-in connections only revokes
    // every connection started inside.
    let inbound_only = r#"rule = [{ action = "accept", direction = "in", proto = "tcp" }]"#;
    assert!(reconfigure(&mut fw, inbound_only).unwrap());
    counters_are(&fw, &[("connections", 0), ("revoked", 4)]);
    assert_eq!(run(&mut fw, 2, IN, &data(web, a1)), Drop);
}

#[test]
fn reconfigure_revokes_under_a_stricter_default_and_keeps_echo_state() {
    let mut fw = firewall("default = \"accept\"");
    let (a, b) = (ep(A, 40000), ep(B, 22));
    establish(&mut fw, 0, a, b);
    fw.script(&[(0, OUT, ping(A, B, true, 7), Pass)]);
    // Only ICMP is allowed now: the TCP connection goes, the echo stays.
    assert!(
        reconfigure(
            &mut fw,
            "rule = [{ action = \"accept\", proto = \"icmp\" }]"
        )
        .unwrap()
    );
    counters_are(&fw, &[("connections", 1), ("revoked", 1)]);
    fw.script(&[
        (1, IN, ping(B, A, false, 7), Pass),
        (1, IN, data(b, a), Drop),
    ]);
}

#[test]
fn invalid_reconfiguration_leaves_the_firewall_unchanged() {
    let mut fw = firewall(WEB_AND_DNS);
    let (a, b) = (ep(A, 40000), ep(B, 80));
    establish(&mut fw, 0, a, b);
    let before = crate::stack::hook::counters_of(&fw);
    let bad = "default = \"accept\"\n[[rule]]\naction = \"drop\"\ndst = \"10.0.0.0/99\"";
    let err = reconfigure(&mut fw, bad).unwrap_err().to_string();
    assert!(err.contains("rule 0: dst"), "{err}");
    let err = reconfigure(&mut fw, "max_connections = 0")
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_connections"), "{err}");
    assert_eq!(crate::stack::hook::counters_of(&fw), before);
    // Another kind is not applicable: the device builds that function.
    assert!(!Function::reconfigure(&mut fw, &FunctionConfig::Passthrough).unwrap());
    // The same rules, default and connection.
    fw.script(&[
        (1, IN, data(b, a), Pass),
        (1, OUT, syn(ep(A, 40001), ep(B, 81)), Drop),
        (1, IN, syn(ep(C, 1), ep(A, 80)), Drop),
    ]);
    assert_eq!(fw.connections(), 1);
}

#[test]
fn reconfigured_timeouts_help_at_once_and_shorten_going_forward() {
    let rule = "rule = [{ action = \"accept\", direction = \"out\", proto = \"udp\" }]";
    let mut fw = firewall(&format!("udp_timeout = \"30s\"\n{rule}"));
    let (a, b) = (ep(A, 5000), ep(B, 53));
    fw.script(&[(0, OUT, udp(a, b), Pass)]);
    // Longer: the unanswered entry now lives 60 s from its last packet.
    let longer = format!("udp_timeout = \"60s\"\nudp_replied_timeout = \"3m\"\n{rule}");
    assert!(reconfigure(&mut fw, &longer).unwrap());
    fw.script(&[(45, IN, udp(b, a), Pass)]);
    // Shorter: the replied entry keeps its deadline (45 s + 3 m); its next
    // packet sets the new one.
    let shorter = format!("udp_timeout = \"10s\"\nudp_replied_timeout = \"10s\"\n{rule}");
    assert!(reconfigure(&mut fw, &shorter).unwrap());
    fw.script(&[(100, IN, udp(b, a), Pass), (109, IN, udp(b, a), Pass)]);
    // Ten seconds after its last packet, the entry is gone.
    fw.script(&[(120, IN, udp(b, a), Drop)]);
    counters_are(&fw, &[("revoked", 0), ("expired", 1)]);
}

#[test]
fn smaller_max_connections_evicts_nothing() {
    let mut fw = firewall("default = \"accept\"");
    let flow = |port| udp(ep(A, port), ep(B, 53));
    fw.script(&[(0, OUT, flow(1), Pass), (0, OUT, flow(2), Pass)]);
    assert!(reconfigure(&mut fw, "default = \"accept\"\nmax_connections = 1").unwrap());
    fw.script(&[
        (1, IN, udp(ep(B, 53), ep(A, 1)), Pass),
        (1, IN, udp(ep(B, 53), ep(A, 2)), Pass),
        // Over the new limit: no room for a third.
        (1, OUT, flow(3), Drop),
    ]);
    counters_are(
        &fw,
        &[("connections", 2), ("table_full", 1), ("revoked", 0)],
    );
}

#[test]
fn config_defaults_and_round_trip() {
    let empty: FirewallConfig = toml::from_str("").expect("parses");
    assert_eq!(empty, FirewallConfig::default());
    assert_eq!(empty.tcp_handshake_timeout.to_string(), "2m");
    let text = r#"
        default = "accept"
        udp_timeout = "45s"
        [[rule]]
        action = "drop"
        direction = "in"
        proto = "udp"
        dport = "1-1023"
    "#;
    let cfg: FirewallConfig = toml::from_str(text).expect("parses");
    let again: FirewallConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(again, cfg);
}
