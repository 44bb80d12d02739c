//! Re-routing with health-checked next hops, on a symmetric topology with
//! two parallel paths:
//!
//! ```text
//! client ─edge1─ r1 ═core1═ { a, b } ═core2═ r2 ─edge2─ server
//! 10.1.0.x  .254 | .1      .2   .3    .1 |  .254    10.2.0.2
//! ```
//! r1 and r2 are reroute devices preferring a and failing over to b; a and b
//! are plain forwarding devices. r1 finds a and b by device name, r2 by
//! fixed address (so one side sees a vanish from the directory, the other
//! only through lost ICMP probes).

mod common;

use std::time::{Duration, Instant};

use common::*;
use shmnet::config::DeviceSettings;
use shmnet::stack::DeviceStats;

struct Nets {
    edge1: String,
    core1: String,
    core2: String,
    edge2: String,
}

impl Nets {
    fn new() -> Nets {
        Nets {
            edge1: unique("edge1"),
            core1: unique("core1"),
            core2: unique("core2"),
            edge2: unique("edge2"),
        }
    }

    /// a (host 2) or b (host 3): forwards between the two cores.
    fn path(&self, name: &str, host: u8) -> DeviceSettings {
        DeviceToml::new(
            name,
            NetToml::new(&self.core1, format!("10.21.0.{host}/24"))
                .address6(format!("fd00:21::{host}/64")),
            (&self.core2, format!("10.22.0.{host}/24")),
        )
        .forward()
        .route("10.1.0.0/24", "10.21.0.1")
        .route("10.2.0.0/24", "10.22.0.1")
        .settings()
    }

    /// r1, whose routing table sends edge2's traffic through a; its
    /// function finds a and b by name, `extra_hops` are more next hops.
    fn r1(&self, rules: &str, extra_hops: &str) -> DeviceSettings {
        DeviceToml::new(
            "r1",
            (&self.edge1, "10.1.0.254/24"),
            NetToml::new(&self.core1, "10.21.0.1/24").address6("fd00:21::1/64"),
        )
        .forward()
        .route("10.2.0.0/24", "10.21.0.2")
        .function_table(reroute(
            [r#"device = "a""#, r#"device = "b""#],
            extra_hops,
            rules,
        ))
        .settings()
    }

    /// r2, whose routing table sends edge1's traffic through a; its
    /// function has a and b by address.
    fn r2(&self, rules: &str) -> DeviceSettings {
        DeviceToml::new(
            "r2",
            (&self.edge2, "10.2.0.254/24"),
            (&self.core2, "10.22.0.1/24"),
        )
        .forward()
        .route("10.1.0.0/24", "10.22.0.2")
        .function_table(reroute(
            [r#"address = "10.22.0.2""#, r#"address = "10.22.0.3""#],
            "",
            rules,
        ))
        .settings()
    }

    fn server(&self, name: &str, host: u8, port: u16) -> DeviceSettings {
        DeviceToml::new(
            name,
            (&self.edge2, format!("10.2.0.{host}/24")),
            (unique("sg"), format!("10.200.0.{host}/16")),
        )
        .function(format!(r#"{{ kind = "echo", port = {port} }}"#))
        .route("10.1.0.0/24", "10.2.0.254")
        .settings()
    }

    /// A client on edge1 (host `host`) running `tcp` exchanges of `bytes`.
    fn client(&self, host: u8, tcp: &str, bytes: usize) -> DeviceSettings {
        DeviceToml::new(
            format!("client{host}"),
            (&self.edge1, format!("10.1.0.{host}/24")),
            (unique("cg"), format!("10.100.0.{host}/16")),
        )
        .function(format!(
            r#"{{ kind = "probe", tcp = [{tcp}], bytes = {bytes}, timeout = "60s" }}"#
        ))
        .route("10.2.0.0/24", "10.1.0.254")
        .settings()
    }
}

/// A reroute function table: next hops a and b (`a` and `b` say how they
/// are found), checked every 50 ms, then `extra_hops`; the rules `rules`.
fn reroute(hops: [&str; 2], extra_hops: &str, rules: &str) -> String {
    format!(
        r#"kind = "reroute"
next_hop = [
    {{ name = "a", {a}, interval = "50ms", timeout = "250ms" }},
    {{ name = "b", {b}, interval = "50ms", timeout = "250ms" }},
    {extra_hops}
]
rule = [{rules}]
"#,
        a = hops[0],
        b = hops[1]
    )
}

/// Runs one client's exchanges to completion; every one must arrive intact.
fn transfer(c: &DeviceSettings) {
    let (h, t) = spawn(c);
    let report = wait_finished(&h, Duration::from_secs(90));
    h.stop();
    t.join().unwrap();
    assert!(
        !report.is_empty() && report.iter().all(|l| l.contains("intact")),
        "{report:?}"
    );
}

const ALL_VIA_A_THEN_B: (&str, &str) = (
    r#"{ name = "edge2", dst = "10.2.0.0/24", via = ["a", "b"] }"#,
    r#"{ name = "edge1", dst = "10.1.0.0/24", via = ["a", "b"] }"#,
);

/// (1) A transfer goes through a; (2) a dies mid-transfer: r1 and r2 fail
/// over and the transfer completes intact through b; a comes back: they
/// fail back and new traffic goes through a again.
#[test]
fn fails_over_to_b_when_a_dies_and_back_when_it_returns() {
    let nets = Nets::new();
    let (a_cfg, b_cfg) = (nets.path("a", 2), nets.path("b", 3));
    let (r1_rules, r2_rules) = ALL_VIA_A_THEN_B;
    let mut a = Some(spawn(&a_cfg));
    let b = spawn(&b_cfg);
    let rest: Vec<_> = [
        nets.server("server", 2, 7),
        nets.r1(r1_rules, ""),
        nets.r2(r2_rules),
    ]
    .iter()
    .map(spawn)
    .collect();
    let (r1, r2) = (&rest[1].0, &rest[2].0);
    let both_up =
        |s: &DeviceStats| counter(s, "next_hop.a.up") == 1 && counter(s, "next_hop.b.up") == 1;
    wait_for(r1, Duration::from_secs(10), "a and b up", both_up);
    wait_for(r2, Duration::from_secs(10), "a and b up", both_up);

    // (1) Everything goes through a.
    let mib4 = 4 << 20;
    transfer(&nets.client(1, "\"10.2.0.2:7\"", mib4));
    let a_fwd = a.as_ref().unwrap().0.stats().nic.forwarded;
    let b_fwd = b.0.stats().nic.forwarded;
    // Both directions of 4 MiB in segments of at most 1460 bytes.
    let segments = 2 * mib4 as u64 / 1460;
    assert!(a_fwd > segments, "a forwarded {a_fwd}");
    assert!(b_fwd * 20 < a_fwd, "b forwarded {b_fwd}, a {a_fwd}");
    for r in [r1, r2] {
        wait_for(r, Duration::from_secs(5), "traffic via a counted", |s| {
            counter(s, "next_hop.a.packets") > segments / 2
        });
        let s = r.stats();
        assert_eq!(counter(&s, "next_hop.b.packets"), 0, "{s:?}");
        assert!(counter(&s, "next_hop.a.probes_sent") > 0, "{s:?}");
        assert_eq!(counter(&s, "malformed"), 0, "{s:?}");
    }

    // (2) a dies in the middle of a 16 MiB transfer.
    let mib16 = 16 << 20;
    let (ch, ct) = spawn(&nets.client(2, "\"10.2.0.2:7\"", mib16));
    let (ah, at) = a.take().unwrap();
    let t0 = Instant::now();
    while ah.stats().nic.forwarded < a_fwd + 2000 && !ch.finished() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no traffic through a"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        !ch.finished(),
        "the transfer ended before a could be stopped"
    );
    ah.stop();
    drop(at.join().unwrap());
    let report = wait_finished(&ch, Duration::from_secs(90));
    ch.stop();
    ct.join().unwrap();
    assert!(
        report.len() == 1 && report[0].contains(&format!("{mib16} bytes echoed intact")),
        "{report:?}"
    );
    let b_after = b.0.stats().nic.forwarded;
    assert!(
        b_after > b_fwd + 1000,
        "b forwarded {b_after} (before: {b_fwd})"
    );
    for r in [r1, r2] {
        wait_for(r, Duration::from_secs(5), "a down, failed over", |s| {
            counter(s, "next_hop.a.up") == 0 && counter(s, "failovers") >= 1
        });
        wait_for(r, Duration::from_secs(5), "traffic via b counted", |s| {
            counter(s, "next_hop.b.packets") > 1000
        });
    }
    // r2 noticed through its probes.
    assert!(counter(&r2.stats(), "next_hop.a.probes_lost") >= 3);

    // a returns: both fail back, and new traffic takes a again.
    let a2 = spawn(&a_cfg);
    for r in [r1, r2] {
        wait_for(r, Duration::from_secs(10), "a up, failed back", |s| {
            counter(s, "next_hop.a.up") == 1 && counter(s, "failbacks") >= 1
        });
    }
    let b_before = b.0.stats().nic.forwarded;
    transfer(&nets.client(3, "\"10.2.0.2:7\"", mib4));
    let a2_fwd = a2.0.stats().nic.forwarded;
    let b_delta = b.0.stats().nic.forwarded - b_before;
    assert!(a2_fwd > segments, "a forwarded {a2_fwd}");
    assert!(b_delta * 20 < a2_fwd, "b forwarded {b_delta}, a {a2_fwd}");
    let mut all = rest;
    all.push(a2);
    all.push(b);
    stop_all(all);
}

/// (3) Only port 9 is re-routed (through b); port 7 follows the routing
/// table (through a). An IPv6 next hop is health-checked with ICMPv6.
#[test]
fn a_rule_reroutes_only_the_traffic_it_matches() {
    let nets = Nets::new();
    let r1 = nets.r1(
        r#"{ name = "port9", proto = "tcp", dport = 9, via = ["b", "a"] }"#,
        r#"{ name = "a6", address = "fd00:21::2", interval = "50ms", timeout = "250ms" }"#,
    );
    let r2 = nets.r2(r#"{ name = "port9", proto = "tcp", sport = 9, via = ["b", "a"] }"#);
    let devices: Vec<_> = [
        nets.path("a", 2),
        nets.path("b", 3),
        nets.server("server", 2, 7),
        nets.server("server9", 9, 9),
        r1,
        r2,
    ]
    .iter()
    .map(spawn)
    .collect();
    let mib2 = 2 << 20;
    transfer(&nets.client(1, "\"10.2.0.2:7\", \"10.2.0.9:9\"", mib2));
    let (a, b) = (devices[0].0.stats(), devices[1].0.stats());
    let segments = 2 * mib2 as u64 / 1460;
    assert!(a.nic.forwarded > segments, "{a:?}");
    assert!(b.nic.forwarded > segments, "{b:?}");
    for h in [&devices[4].0, &devices[5].0] {
        wait_for(h, Duration::from_secs(5), "counters published", |s| {
            counter(s, "rule.port9.packets") > segments / 2
        });
        let s = h.stats();
        // Port 9 went via b (its first choice); the rest matched no rule.
        assert_eq!(
            counter(&s, "next_hop.b.packets"),
            counter(&s, "rule.port9.packets"),
            "{s:?}"
        );
        assert_eq!(counter(&s, "next_hop.a.packets"), 0, "{s:?}");
        assert!(counter(&s, "unmatched") > segments / 2, "{s:?}");
        assert_eq!(counter(&s, "failovers"), 0, "{s:?}");
    }
    // a answers ICMPv6 echo on core1: after several probes a6 is still up
    // (`fall` = 3 misses in a row would have taken it down).
    wait_for(&devices[4].0, Duration::from_secs(10), "a6 probed", |s| {
        counter(s, "next_hop.a6.probes_sent") >= 6
    });
    let s = devices[4].0.stats();
    assert_eq!(counter(&s, "next_hop.a6.up"), 1, "{s:?}");
    assert!(counter(&s, "next_hop.a6.probes_lost") < 3, "{s:?}");
    stop_all(devices);
}

/// (4) Truncated and mangled frames sent at r1: no panic, counted, and r1
/// still routes afterwards.
#[test]
fn malformed_frames_do_not_stop_the_rerouter() {
    let nets = Nets::new();
    let (r1_rules, r2_rules) = ALL_VIA_A_THEN_B;
    let r1 = nets.r1(r1_rules, "");
    let r1_mac = r1.mac;
    let devices: Vec<_> = [
        nets.path("a", 2),
        nets.path("b", 3),
        nets.server("server", 2, 7),
        r1,
        nets.r2(r2_rules),
    ]
    .iter()
    .map(spawn)
    .collect();

    let mut raw = raw_port(&nets.edge1);
    let targets = raw.peers();
    // A TCP segment 10.1.0.66:40000 -> 10.2.0.77:9 (IPv4, then IPv6): to
    // no one, so that the garbage that gets forwarded occupies no server.
    let mut v4 = vec![0u8; 14 + 20 + 20 + 16];
    v4[..6].copy_from_slice(&r1_mac);
    v4[12..14].copy_from_slice(&[0x08, 0x00]);
    v4[14..34].copy_from_slice(&[
        0x45, 0, 0, 56, 0, 1, 0, 0, 64, 6, 0, 0, 10, 1, 0, 66, 10, 2, 0, 77,
    ]);
    v4[34..38].copy_from_slice(&[0x9c, 0x40, 0, 9]);
    v4[46] = 0x50;
    let mut v6 = vec![0u8; 14 + 40 + 20];
    v6[..6].copy_from_slice(&r1_mac);
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    v6[14] = 0x60;
    v6[18..20].copy_from_slice(&20u16.to_be_bytes());
    v6[20] = 6;
    v6[21] = 64;
    v6[22..24].copy_from_slice(&[0xfd, 0]);
    v6[38..40].copy_from_slice(&[0xfd, 0]);
    v6[54..58].copy_from_slice(&[0x9c, 0x40, 0, 9]);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for f in [&v4, &v6] {
        frames.extend((1..f.len()).map(|n| f[..n].to_vec()));
    }
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for i in 0..2000 {
        let mut f = if i % 2 == 0 { v4.clone() } else { v6.clone() };
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = 14 + (x % (f.len() as u64 - 14)) as usize;
            f[at] = (x >> 40) as u8;
        }
        frames.push(f);
    }
    for f in &frames {
        raw.send(f, &targets);
    }
    drop(raw);
    let r1h = &devices[3].0;
    wait_for(r1h, Duration::from_secs(10), "malformed counted", |s| {
        counter(s, "malformed") >= 100
    });
    // Still routing, through a.
    transfer(&nets.client(1, "\"10.2.0.2:7\"", 1 << 20));
    let s = r1h.stats();
    assert!(counter(&s, "next_hop.a.packets") > 700, "{s:?}");
    stop_all(devices);
}

/// A next hop can be a network: r's table sends 10.3.0.0/24 to a gateway
/// on its local network that does not exist; a rule sends it out of the
/// global network instead, to that network's default gateway x.
///
/// ```text
/// client ─lan─ r ═core═ x ─srv─ server      (r: 10.3/24 via 10.1.0.99, a dead end)
/// ```
#[test]
fn a_network_next_hop_takes_traffic_out_of_that_network_to_its_gateway() {
    let (lan, core, srv) = (unique("lan"), unique("core"), unique("srv"));
    let r = DeviceToml::new(
        "r",
        (&lan, "10.1.0.254/24"),
        NetToml::new(&core, "10.5.0.1/24").gateway("10.5.0.2"),
    )
    .forward()
    .route("10.3.0.0/24", "10.1.0.99")
    .function_table(
        r#"kind = "reroute"
next_hop = [{ name = "wan", network = "global" }]
rule = [{ name = "srv", dst = "10.3.0.0/24", via = ["wan"] }]
"#,
    );
    let x = DeviceToml::new("x", (&core, "10.5.0.2/24"), (&srv, "10.3.0.254/24"))
        .forward()
        .route("10.1.0.0/24", "10.5.0.1");
    let devices: Vec<_> = [
        echo_server(&srv, "10.3.0.2", "10.1.0.1", "10.3.0.254"),
        x,
        r,
    ]
    .iter()
    .map(|d| spawn(&d.settings()))
    .collect();
    transfer(&probe_client(&lan, "10.1.0.1", "10.3.0.2", "10.1.0.254", 1 << 20).settings());
    let s = wait_for(
        &devices[2].0,
        Duration::from_secs(5),
        "packets via the network counted",
        |s| counter(s, "next_hop.wan.packets") > (1 << 20) / 1500,
    );
    assert_eq!(s.nic.no_neighbour + s.nic.no_route, 0, "{s:?}");
    assert!(devices[1].0.stats().nic.forwarded > 2 * (1 << 20) / 1500);
    stop_all(devices);
}
