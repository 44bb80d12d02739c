//! The QoS function on virtual time: classification, shaping, priority
//! and DRR, ECN marking, tail drop, malformed frames, reconfiguration.

use smoltcp::wire::{IpAddress, IpProtocol, TcpControl};

use super::*;
use crate::functions::FunctionConfig;
use crate::testing::frames::{self, Garbler, arp};
use crate::testing::function::{self, config_error, counter, counters_are};
use crate::wire::proto::{
    ICMP as PROTO_ICMP, ICMPV6 as PROTO_ICMPV6, TCP as PROTO_TCP, UDP as PROTO_UDP,
};
use crate::wire::{LinkMedium, checksum};

fn qos(text: &str) -> Qos {
    function::build(text, Qos::new)
}

/// A config with the one class "a", whose fields are `body`.
fn one_class_text(body: &str) -> String {
    format!("default = \"a\"\n[[class]]\nname = \"a\"\n{body}")
}

fn one_class(body: &str) -> Qos {
    qos(&one_class_text(body))
}

fn t(ms: i64) -> Instant {
    Instant::from_millis(1000 + ms)
}

/// Ethernet + IPv4 + 20 bytes of TCP (or 8 of UDP or another protocol,
/// whose first 4 bytes are `ports`) + `payload` bytes; `tos` is the whole
/// TOS byte (DSCP << 2 | ECN).
fn v4(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    ports: (u16, u16),
    tos: u8,
    payload: usize,
) -> Vec<u8> {
    let addr = |[a, b, c, d]: [u8; 4]| IpAddress::v4(a, b, c, d);
    let (s, d) = (addr(src), addr(dst));
    let body: Vec<u8> = (0..payload).map(|i| i as u8).collect();
    let mut f = match proto {
        PROTO_TCP => frames::tcp((s, ports.0), (d, ports.1), TcpControl::None, false, &body),
        PROTO_UDP => frames::udp((s, ports.0), (d, ports.1), &body),
        p => {
            let mut l4 = [&ports.0.to_be_bytes()[..], &ports.1.to_be_bytes(), &[0; 4]].concat();
            l4.extend_from_slice(&body);
            frames::wrap(s, d, IpProtocol::from(p), &l4)
        }
    };
    f[15] = tos;
    checksum::fill_ipv4_header(&mut f[14..34]);
    f
}

fn tcp(dport: u16, payload: usize) -> Vec<u8> {
    v4(
        [10, 0, 0, 1],
        [10, 1, 0, 2],
        PROTO_TCP,
        (40000, dport),
        0,
        payload,
    )
}

/// Ethernet + IPv6 (fd00::`src_last` to fd02::`dst_last`, traffic class
/// `tc`) + UDP with 16 bytes of payload.
fn v6(src_last: u8, dst_last: u8, tc: u8, ports: (u16, u16)) -> Vec<u8> {
    let s = IpAddress::v6(0xfd00, 0, 0, 0, 0, 0, 0, src_last.into());
    let d = IpAddress::v6(0xfd02, 0, 0, 0, 0, 0, 0, dst_last.into());
    let mut f = frames::udp((s, ports.0), (d, ports.1), &[0; 16]);
    f[14] = 0x60 | tc >> 4;
    f[15] = tc << 4 | (f[15] & 0x0f);
    f
}

fn ingress_on(q: &mut Qos, now: Instant, from: Role, medium: LinkMedium, bytes: &[u8]) -> Verdict {
    function::ingress(q, now, from, medium, bytes).0
}

fn ingress(q: &mut Qos, now: Instant, from: Role, bytes: &[u8]) -> Verdict {
    ingress_on(q, now, from, LinkMedium::Ethernet, bytes)
}

/// Offers `frames`, each from its network, `rounds` times over at `now`
/// (interleaved: one of each per round), as a backlog builds up.
fn offer(q: &mut Qos, now: Instant, rounds: usize, frames: &[(Role, &[u8])]) {
    for _ in 0..rounds {
        for &(from, f) in frames {
            ingress(q, now, from, f);
        }
    }
}

/// Releases everything that may leave at `now`: the frames.
fn drain(q: &mut Qos, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Some(len) = q.release(now, &mut buf) {
        out.push(buf[..len].to_vec());
    }
    out
}

const CLASSES: &str = r#"
    default = "rest"
    class = [
        { name = "voice", dscp = [46, 34] },
        { name = "web", proto = "tcp", dst = "10.1.0.0/16", dport = "80-443" },
        { name = "dns6", proto = "udp", src = "fd00::/16", sport = 53 },
        { name = "ping", proto = "icmp" },
        { name = "gre", proto = 47 },
        { name = "rest" },
    ]
"#;

#[test]
fn classifies_by_dscp_proto_prefix_and_ports_first_match_wins() {
    let q = qos(CLASSES);
    let on = |medium, f: &[u8]| q.classify(&FrameView::parse(medium, f)).map(str::to_owned);
    let c = |f: &[u8]| on(LinkMedium::Ethernet, f);
    let (a, b) = ([10, 0, 0, 1], [10, 1, 0, 2]);
    assert_eq!(
        c(&v4(a, b, PROTO_TCP, (1, 80), 0, 0)).as_deref(),
        Some("web")
    );
    assert_eq!(
        c(&v4(a, b, PROTO_TCP, (1, 443), 0, 10)).as_deref(),
        Some("web")
    );
    assert_eq!(
        c(&v4(a, b, PROTO_TCP, (1, 444), 0, 0)).as_deref(),
        Some("rest")
    );
    assert_eq!(
        c(&v4(a, [10, 2, 0, 2], PROTO_TCP, (1, 80), 0, 0)).as_deref(),
        Some("rest")
    );
    // DSCP EF (46), ECN bits ignored; the voice class comes first.
    assert_eq!(
        c(&v4(a, b, PROTO_TCP, (1, 80), 46 << 2 | 1, 0)).as_deref(),
        Some("voice")
    );
    assert_eq!(
        c(&v4(a, b, PROTO_UDP, (1, 2), 34 << 2, 0)).as_deref(),
        Some("voice")
    );
    assert_eq!(
        c(&v4(a, b, PROTO_UDP, (1, 2), 45 << 2, 0)).as_deref(),
        Some("rest")
    );
    assert_eq!(
        c(&v4(a, b, PROTO_ICMP, (0x0800, 0), 0, 0)).as_deref(),
        Some("ping")
    );
    assert_eq!(c(&v4(a, b, 47, (0, 0), 0, 0)).as_deref(), Some("gre"));
    // "icmp" is ping in both versions: ICMPv6 echo in IPv6.
    let mut echo6 = v6(1, 2, 0, (0, 0));
    echo6[14 + 6] = PROTO_ICMPV6;
    echo6[14 + 40] = 128;
    assert_eq!(c(&echo6).as_deref(), Some("ping"));
    // IPv6: prefix, port, DSCP in the traffic class.
    assert_eq!(c(&v6(1, 2, 0, (53, 9000))).as_deref(), Some("dns6"));
    assert_eq!(c(&v6(1, 2, 0, (54, 9000))).as_deref(), Some("rest"));
    assert_eq!(c(&v6(1, 2, 46 << 2, (53, 9000))).as_deref(), Some("voice"));
    // The same on a bare-IP medium.
    let ip = |f: &[u8]| on(LinkMedium::Ip, &f[14..]);
    assert_eq!(ip(&v6(1, 2, 0, (53, 1))).as_deref(), Some("dns6"));
    assert_eq!(
        ip(&v4(a, b, PROTO_TCP, (1, 80), 0, 0)).as_deref(),
        Some("web")
    );
    // A later fragment has no ports: port classes do not match it.
    let mut frag = v4(a, b, PROTO_TCP, (1, 80), 0, 0);
    frag[14 + 7] = 8;
    assert_eq!(c(&frag).as_deref(), Some("rest"));
    // ARP and neighbour discovery are not classified.
    assert_eq!(c(&arp()), None);
}

#[test]
fn arp_and_neighbour_discovery_pass_unqueued() {
    let mut q = qos(CLASSES);
    assert_eq!(ingress(&mut q, t(0), Role::Local, &arp()), Verdict::Pass);
    let mut ns = v6(1, 2, 0, (0, 0));
    ns[14 + 6] = PROTO_ICMPV6;
    ns[14 + 40] = 135;
    assert_eq!(ingress(&mut q, t(0), Role::Global, &ns), Verdict::Pass);
    // An echo request over ICMPv6 is ordinary traffic ("icmp" class).
    ns[14 + 40] = 128;
    assert_eq!(ingress(&mut q, t(0), Role::Global, &ns), Verdict::Consumed);
    assert_eq!(counter(&q, "passed"), 2);
    assert_eq!(drain(&mut q, t(0)), vec![ns]);
    assert_eq!(counter(&q, "class.ping.packets"), 1);
}

#[test]
fn token_bucket_shapes_to_the_rate_and_says_when_to_come_back() {
    // 8 Mbit/s = 1000 bytes per ms; burst 3000 bytes.
    let mut q = one_class("rate = \"8mbit\"\nburst = 3000");
    let f = tcp(80, 1000 - 54);
    assert_eq!(f.len(), 1000);
    for _ in 0..200 {
        assert_eq!(ingress(&mut q, t(0), Role::Local, &f), Verdict::Consumed);
    }
    // The full bucket lets the burst out at once, then nothing.
    assert_eq!(drain(&mut q, t(0)).len(), 3);
    assert_eq!(q.poll_at(), Some(t(1)));
    assert_eq!(
        drain(&mut q, t(0) + smoltcp::time::Duration::from_micros(999)).len(),
        0
    );
    assert_eq!(drain(&mut q, t(1)).len(), 1);
    // Polled every 10 ms for a second: one frame per ms on average.
    let mut sent = 4;
    for ms in (11..=1001).step_by(10) {
        sent += drain(&mut q, t(ms)).len();
    }
    assert_eq!(sent, 200);
    // A late poll does not earn more than the burst.
    offer(&mut q, t(1001), 10, &[(Role::Local, &f)]);
    assert_eq!(drain(&mut q, t(5000)).len(), 3);
    assert_eq!(counter(&q, "class.a.bytes"), 203 * 1000);
    assert_eq!(counter(&q, "class.a.queued_bytes"), 7000);
    assert_eq!(q.poll_at(), Some(t(5001)));
}

#[test]
fn frames_bigger_than_the_burst_still_leave_at_the_rate() {
    let mut q = one_class("rate = \"8mbit\"\nburst = 1500");
    let f = tcp(80, 9000 - 54);
    offer(&mut q, t(0), 4, &[(Role::Local, &f)]);
    assert_eq!(drain(&mut q, t(0)).len(), 1);
    // 7500 bytes in debt, plus 1500 to have a full bucket again: 9 ms,
    // the time 9000 bytes take at the rate.
    assert_eq!(q.poll_at(), Some(t(9)));
    assert_eq!(drain(&mut q, t(8)).len(), 0);
    assert_eq!(drain(&mut q, t(9)).len(), 1);
}

#[test]
fn drr_shares_a_shaped_link_by_weight() {
    let mut q = qos(r#"
        default = "b"
        rate = "8mbit"
        burst = 2000
        class = [
            { name = "a", weight = 3, dport = 1, proto = "tcp" },
            { name = "b", weight = 1 },
        ]
        "#);
    // Different sizes: DRR shares bytes, not packets.
    let (fa, fb) = (tcp(1, 1000 - 54), tcp(2, 400 - 54));
    offer(
        &mut q,
        t(0),
        1000,
        &[(Role::Local, &fa), (Role::Local, &fb)],
    );
    // 1000 bytes per ms; 400 ms: 400 kB, both classes backlogged.
    for ms in 0..400 {
        drain(&mut q, t(ms));
    }
    let a = counter(&q, "class.a.bytes") as f64;
    let b = counter(&q, "class.b.bytes") as f64;
    assert!((a + b - 400e3).abs() < 3000.0, "{a} {b}");
    assert!((a / b - 3.0).abs() < 0.05, "{a} {b}");
}

#[test]
fn strict_priority_serves_higher_levels_first_unless_they_are_shaped() {
    let mut q = qos(r#"
        default = "low"
        class = [
            { name = "high", priority = 0, rate = "8mbit", burst = 2000, proto = "udp" },
            { name = "low", priority = 3 },
        ]
        "#);
    let (hi, lo) = (
        v4([10, 0, 0, 1], [10, 1, 0, 2], PROTO_UDP, (1, 1), 0, 500 - 42),
        tcp(2, 500 - 54),
    );
    offer(&mut q, t(0), 10, &[(Role::Local, &lo), (Role::Local, &hi)]);
    let out = drain(&mut q, t(0));
    // The high class's burst first, then (it is out of tokens) the low
    // class, all of it.
    assert_eq!(out.len(), 14);
    assert!(out[..4].iter().all(|f| *f == hi));
    assert!(out[4..].iter().all(|f| *f == lo));
    // Tokens again: high goes first.
    assert_eq!(drain(&mut q, t(1)), vec![hi.clone(), hi.clone()]);
    // An unshaped high class starves the low one.
    let mut q = qos(r#"
        default = "low"
        class = [{ name = "high", proto = "udp" }, { name = "low", priority = 1 }]
        "#);
    offer(&mut q, t(0), 10, &[(Role::Local, &lo), (Role::Local, &hi)]);
    let out = drain(&mut q, t(0));
    assert!(out[..10].iter().all(|f| *f == hi));
    assert!(out[10..].iter().all(|f| *f == lo));
}

#[test]
fn directions_are_separate_links() {
    let mut q = qos("default = \"a\"\nrate = \"8mbit\"\nburst = 1000\nclass = [{ name = \"a\" }]");
    let f = tcp(80, 1000 - 54);
    offer(&mut q, t(0), 3, &[(Role::Local, &f), (Role::Global, &f)]);
    // Each link's bucket lets one frame out.
    assert_eq!(drain(&mut q, t(0)).len(), 2);
    let mut out_only = qos("default = \"a\"\ndirection = \"out\"\nclass = [{ name = \"a\" }]");
    assert_eq!(
        ingress(&mut out_only, t(0), Role::Global, &f),
        Verdict::Pass
    );
    assert_eq!(
        ingress(&mut out_only, t(0), Role::Local, &f),
        Verdict::Consumed
    );
}

/// The IPv4 header checksum verifies.
fn checksum_ok(ip: &[u8]) -> bool {
    checksum::ipv4_header(&ip[..20]) == 0
}

#[test]
fn mark_sets_ce_on_ect_past_the_threshold_and_drops_only_when_full() {
    let mut q = one_class("queue = 5000\nover_limit = \"mark\"\nmark_at = 2000");
    let f = |ecn: u8| {
        v4(
            [10, 0, 0, 1],
            [10, 1, 0, 2],
            PROTO_TCP,
            (1, 2),
            10 << 2 | ecn,
            1000 - 54,
        )
    };
    let mut verdicts = Vec::new();
    for ecn in [2, 1, 2, 0, 1, 2] {
        verdicts.push(ingress(&mut q, t(0), Role::Local, &f(ecn)));
    }
    use Verdict::{Consumed, Drop};
    assert_eq!(
        verdicts,
        [Consumed, Consumed, Consumed, Consumed, Consumed, Drop]
    );
    let out = drain(&mut q, t(0));
    // Below 2000 queued bytes: untouched. From there on: ECT marked,
    // not-ECT left as it is.
    assert_eq!(out[0], f(2));
    assert_eq!(out[1], f(1));
    assert_eq!(out[2][15], 10 << 2 | 3);
    assert_eq!(out[3], f(0));
    assert_eq!(out[4][15], 10 << 2 | 3);
    for o in &out {
        assert!(checksum_ok(&o[14..]), "{:x?}", &o[14..34]);
    }
    // Only the TOS byte and the checksum changed.
    let (a, b) = (&out[2], &f(2));
    let diff: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert!(diff.iter().all(|&i| [15, 24, 25].contains(&i)), "{diff:?}");
    counters_are(
        &q,
        &[("class.a.marked", 2), ("class.a.dropped", 1), ("marked", 2)],
    );
    // IPv6: the ECN bits of the traffic class.
    let mut q6 = one_class("over_limit = \"mark\"\nmark_at = 0");
    ingress(&mut q6, t(0), Role::Local, &v6(1, 2, 46 << 2 | 2, (1, 2)));
    let out = drain(&mut q6, t(0));
    assert_eq!(out[0][14..16], [0x6b, 0xb0]);
    assert_eq!(out[0], {
        let mut m = v6(1, 2, 46 << 2 | 3, (1, 2));
        m[14 + 1] |= 0;
        m
    });
}

#[test]
fn incremental_checksum_matches_a_full_recompute() {
    for tos in 0..=255u8 {
        for id in [0u16, 1, 0x7fff, 0xfffe, 0xffff] {
            let mut f = v4([192, 168, 1, 1], [10, 1, 2, 3], PROTO_UDP, (1, 2), tos, 0);
            f[18..20].copy_from_slice(&id.to_be_bytes());
            checksum::fill_ipv4_header(&mut f[14..34]);
            // At the IP header's offset in either medium.
            for (medium, l3) in [(LinkMedium::Ethernet, 14), (LinkMedium::Ip, 0)] {
                let mut g = f[14 - l3..].to_vec();
                let FrameView::Ip(ip) = FrameView::parse(medium, &g) else {
                    panic!("not ip")
                };
                let marked = mark_ce(&mut g, &ip);
                assert_eq!(marked, matches!(tos & 3, 1 | 2));
                assert_eq!(g[l3 + 1], if marked { tos | 3 } else { tos });
                assert!(checksum_ok(&g[l3..]), "tos {tos} id {id}");
            }
        }
    }
}

#[test]
fn drop_tail_drops_when_the_queue_is_full() {
    let mut q = one_class("queue = 2500");
    let f = tcp(80, 1000 - 54);
    let v: Vec<Verdict> = (0..4)
        .map(|_| ingress(&mut q, t(0), Role::Local, &f))
        .collect();
    assert_eq!(
        v,
        [
            Verdict::Consumed,
            Verdict::Consumed,
            Verdict::Drop,
            Verdict::Drop
        ]
    );
    assert_eq!(counter(&q, "class.a.dropped"), 2);
    assert_eq!(counter(&q, "class.a.queued_bytes"), 2000);
    // Released frames make room, and wrap round the ring intact.
    for i in 0..20u8 {
        let mut g = f.clone();
        g[100] = i;
        assert_eq!(drain(&mut q, t(0)).len(), if i == 0 { 2 } else { 1 });
        assert_eq!(ingress(&mut q, t(0), Role::Local, &g), Verdict::Consumed);
        assert_eq!(q.queued_frames(), 1);
        let out = drain(&mut q, t(0));
        assert_eq!(out, vec![g.clone()]);
        ingress(&mut q, t(0), Role::Local, &g);
    }
}

#[test]
fn malformed_frames_are_counted_drops_and_garbage_never_panics() {
    let frames = [
        tcp(80, 10),
        v4([1, 2, 3, 4], [5, 6, 7, 8], PROTO_UDP, (1, 2), 0, 3),
        v6(1, 2, 0, (53, 1)),
    ];
    for medium in [LinkMedium::Ethernet, LinkMedium::Ip] {
        let mut q = qos(CLASSES);
        let mut expected = 0;
        let l2 = 14 - medium.header_len();
        for f in &frames {
            let f = &f[l2..];
            // Every truncation cuts into the IP packet.
            for len in 14 - l2..f.len() - if f.len() > 70 { 10 } else { 3 } {
                let v = ingress_on(&mut q, t(0), Role::Local, medium, &f[..len]);
                assert_eq!(v, Verdict::Drop, "{medium:?} len {len}");
                expected += 1;
            }
        }
        // A whole IP packet whose transport header is cut short (a UDP
        // length beyond the packet, a TCP data offset under 5 words).
        let mut udp = frames[1].clone();
        udp[34 + 4..34 + 6].copy_from_slice(&100u16.to_be_bytes());
        let mut tcp = frames[0].clone();
        tcp[34 + 12] = 4 << 4;
        for f in [udp, tcp] {
            let v = ingress_on(&mut q, t(0), Role::Local, medium, &f[l2..]);
            assert_eq!(v, Verdict::Drop, "{medium:?}");
            expected += 1;
        }
        assert_eq!(counter(&q, "malformed"), expected);
        assert_eq!(q.queued_frames(), 0);
    }
    let mut q = qos(CLASSES);
    let mut garbler = Garbler::default();
    let mut taken = 0;
    let mut buf = vec![0u8; 2048];
    for i in 0..20_000u64 {
        let mut f = frames[(i % 3) as usize].clone();
        let x = garbler.garble(&mut f, 1 + i % 4);
        f.truncate(f.len() - (x >> 40) as usize % 8);
        if ingress(&mut q, t(i as i64), Role::Local, &f) == Verdict::Consumed {
            taken += 1;
        }
        if i % 7 == 0 {
            while q.release(t(i as i64), &mut buf).is_some() {
                taken -= 1;
            }
        }
    }
    assert_eq!(q.queued_frames(), taken);
}

#[test]
fn reconfigure_changes_rates_in_place_and_keeps_queued_frames() {
    let text = |rate: &str, burst: u32, weight: u32, gone: bool| {
        let gone = if gone {
            "[[class]]\nname = \"gone\"\nproto = \"udp\""
        } else {
            ""
        };
        // "gone" first: "a" matches everything.
        format!(
            "default = \"a\"\n{gone}\n[[class]]\nname = \"a\"\nrate = \"{rate}\"\n\
             burst = {burst}\nweight = {weight}\n"
        )
    };
    let mut q = qos(&text("8mbit", 1000, 1, true));
    let f = tcp(80, 1000 - 54);
    let u = v4([10, 0, 0, 1], [10, 1, 0, 2], PROTO_UDP, (1, 1), 0, 100);
    offer(&mut q, t(0), 10, &[(Role::Local, &f)]);
    ingress(&mut q, t(0), Role::Local, &u);
    // The bucket's burst lets one of "a" go, "gone" is not shaped.
    assert_eq!(drain(&mut q, t(0)), vec![u.clone(), f.clone()]);
    ingress(&mut q, t(0), Role::Local, &u);
    assert_eq!(q.queued_frames(), 10);
    // 80 Mbit/s, and the udp class removed: its frame moves to "a".
    let cfg: QosConfig = toml::from_str(&text("80mbit", 20000, 5, false)).unwrap();
    q.reconfigure(&cfg).unwrap();
    assert_eq!(q.queued_frames(), 10);
    assert_eq!(counter(&q, "class.a.packets"), 1);
    // The totals keep what the removed class released.
    assert_eq!(counter(&q, "packets"), 2);
    assert_eq!(counter(&q, "class.a.queued_bytes"), 9000 + u.len() as u64);
    // The bucket was empty; in 1 ms it earns 10 000 bytes now.
    let out = drain(&mut q, t(1));
    assert_eq!(out.len(), 10);
    assert!(out.contains(&u));
    // An invalid change is refused and changes nothing.
    ingress(&mut q, t(1), Role::Local, &f);
    let bad: QosConfig = toml::from_str(&text("8mbit", 1000, 0, false)).unwrap();
    assert!(q.reconfigure(&bad).is_err());
    assert!(Function::reconfigure(&mut q, &FunctionConfig::Qos(bad)).is_err());
    assert_eq!(q.queued_frames(), 1);
    assert_eq!(counter(&q, "class.a.packets"), 11);
    // Another kind is not applicable: the device rebuilds the function.
    assert!(!Function::reconfigure(&mut q, &FunctionConfig::Passthrough).unwrap());
    assert!(Function::reconfigure(&mut q, &FunctionConfig::Qos(cfg)).unwrap());
    assert_eq!(q.queued_frames(), 1);
}

#[test]
fn config_errors_name_the_field() {
    let err = |text: &str| config_error(text, Qos::new);
    for (body, names) in [
        ("rate = \"40mbps\"", "class a: rate"),
        ("rate = \"fast\"", "class a: rate"),
        ("rate = 10", "class a: rate"),
        ("burst = 100", "burst needs a rate"),
        ("queue = 100", "class a: queue"),
        ("weight = 0", "class a: weight"),
        ("priority = 16", "class a: priority"),
        ("dscp = [64]", "class a: dscp 64"),
        ("proto = \"sctp\"", "class a: proto"),
        ("proto = 256", "class a: proto"),
        ("src = \"10.0.0.0/33\"", "class a: src"),
        ("dport = 80", "need proto"),
        ("proto = \"tcp\"\nsport = \"9-1\"", "sport"),
        ("mark_at = 10", "mark_at needs"),
        (
            "over_limit = \"mark\"\nqueue = 2000\nmark_at = 3000",
            "mark_at",
        ),
        ("src = \"10.0.0.0/8\"\ndst = \"fd00::/8\"", "IP versions"),
    ] {
        let e = err(&one_class_text(body));
        assert!(e.contains(names), "{body}: {e}");
    }
    assert!(err("default = \"x\"\n[[class]]\nname = \"a\"").contains("default class \"x\""));
    assert!(err("default = \"a\"\n[[class]]\nname = \"a b\"").contains("class name"));
    assert!(
        err("default = \"a\"\n[[class]]\nname = \"a\"\n[[class]]\nname = \"a\"").contains("twice")
    );
    assert!(err("default = \"a\"\nrate = \"1x\"\n[[class]]\nname = \"a\"").contains("rate"));
    // Unknown fields and values are refused by the parser.
    let parse = |text: &str| toml::from_str::<FunctionConfig>(text);
    assert!(
        parse("kind = \"qos\"\ndefault = \"a\"\nclass = [{ name = \"a\", prio = 1 }]").is_err()
    );
    assert!(
        parse("kind = \"qos\"\ndefault = \"a\"\nclass = [{ name = \"a\", over_limit = \"red\" }]")
            .is_err()
    );
    // The medium is the device's, not the function's.
    assert!(
        parse("kind = \"qos\"\nmedium = \"ip\"\ndefault = \"a\"\nclass = [{ name = \"a\" }]")
            .is_err()
    );
    let ok = parse("kind = \"qos\"\ndefault = \"a\"\nrate = \"1gbit\"\nclass = [{ name = \"a\", rate = 40000000, dscp = [0, 63] }]").expect("valid");
    assert!(crate::functions::build(&ok).is_ok());
    assert_eq!(
        parse_rate(&RateSpec::Text("1.5gbit".into())),
        Ok(1_500_000_000)
    );
    assert_eq!(parse_rate(&RateSpec::Text("500kbit".into())), Ok(500_000));
}
