//! A device in the middle of a chain forwards packets between networks.

mod common;

use std::time::Duration;

use common::*;
use shmnet::config::{DeviceConfig, DeviceSettings};

/// client ──lanA (MTU 9000)── router ──lanB (MTU 1500)── server
fn chain(function_of_router: &str, trust: bool) -> [DeviceSettings; 3] {
    let (lan_a, lan_b) = (unique("lanA"), unique("lanB"));
    let net = |segment: &str, v4: &str, v6: &str, mtu: u32| {
        NetToml::new(segment, v4).address6(v6).mtu(mtu)
    };
    let client = DeviceToml::new(
        "client",
        net(&lan_a, "10.0.0.1/24", "fd00:a::1/64", 9000),
        (unique("wanC"), "10.100.0.1/16"),
    )
    .function(
        r#"{ kind = "probe", tcp = ["10.1.0.2:7", "[fd00:b::2]:7"], udp = ["10.1.0.2:7"], bytes = 4194304, timeout = "30s" }"#,
    )
    .route("10.1.0.0/24", "10.0.0.254")
    .route("fd00:b::/64", "fd00:a::fe");
    let router = DeviceToml::new(
        "router",
        net(&lan_a, "10.0.0.254/24", "fd00:a::fe/64", 9000).trust_peers(trust),
        net(&lan_b, "10.1.0.254/24", "fd00:b::fe/64", 1500).trust_peers(trust),
    )
    .forward()
    .function(function_of_router);
    let server = DeviceToml::new(
        "server",
        net(&lan_b, "10.1.0.2/24", "fd00:b::2/64", 1500),
        (unique("wanS"), "10.200.0.2/16"),
    )
    .function(r#"{ kind = "echo" }"#)
    .route("10.0.0.0/24", "10.1.0.254")
    .route("fd00:a::/64", "fd00:b::fe");
    [client, router, server].map(|d| d.settings())
}

fn run_chain(router_function: &str, trust: bool) {
    let [client, router, server] = chain(router_function, trust);
    let (sh, st) = spawn(&server);
    let (rh, rt) = spawn(&router);
    probe_intact(&client, 3, Duration::from_secs(60));
    let r = rh.stats();
    // Both directions of 2 × 4 MiB crossed the router.
    assert!(r.nic.forwarded > 2 * 2 * 4194304 / 1460, "{r:?}");
    assert_eq!(
        r.nic.no_route + r.nic.no_neighbour + r.nic.ttl_expired + r.nic.oversize,
        0,
        "{r:?}"
    );
    // The server's MTU is the small one: SYNs from the client were clamped.
    assert!(r.nic.mss_clamped > 0, "{r:?}");
    assert!(
        r.local.rx_bytes > 8 << 20 && r.global.tx_bytes > 8 << 20,
        "{r:?}"
    );
    stop_all([(rh, rt), (sh, st)]);
}

#[test]
fn router_forwards_tcp_udp_ipv4_ipv6_between_networks() {
    // Frames forwarded straight from the sender's buffer…
    run_chain(r#"{ kind = "passthrough" }"#, true);
}

#[test]
fn router_forwards_frames_it_copied_out_first() {
    // …and from a private copy (untrusted peers, or a function that looks
    // at every frame).
    run_chain(r#"{ kind = "passthrough" }"#, false);
}

#[test]
fn without_a_route_the_router_drops_and_counts() {
    let (lan_a, wan) = (unique("lanA"), unique("wan"));
    let router = DeviceToml::new("router", (&lan_a, "10.0.0.254/24"), (&wan, "10.1.0.254/24"))
        .forward()
        .settings();
    let client = DeviceToml::new(
        "client",
        (&lan_a, "10.0.0.1/24"),
        (unique("g"), "10.100.0.1/16"),
    )
    .function(r#"{ kind = "probe", udp = ["172.16.9.9:7"], timeout = "600ms" }"#)
    .route("172.16.0.0/12", "10.0.0.254")
    .settings();
    let (mut router, mut client) = (device(&router), device(&client));
    let probe = client.handle();
    let mut clock = VirtualClock::new(smoltcp::time::Duration::from_millis(1));
    let devices = &mut [&mut client, &mut router];
    let finished = clock.run_until(devices, smoltcp::time::Duration::from_secs(2), |_| {
        probe.finished()
    });
    let report = probe.take_report();
    assert!(finished && report[0].contains("timed out"), "{report:?}");
    let r = router.stats();
    assert!(r.nic.no_route > 0 && r.nic.forwarded == 0, "{r:?}");
}

#[test]
fn route_config_errors_name_the_field() {
    let bad = r#"
name = "x"
local = { segment = "l", address = "10.0.0.1/24" }
global = { segment = "g", address = "10.1.0.1/24" }
[[route]]
to = "10.9.0.0/16"
via = "192.168.7.1"
"#;
    let e = DeviceConfig::from_toml(bad, "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x.toml") && e.contains("route[0].via") && e.contains("neither"),
        "{e}"
    );
    let e = DeviceConfig::from_toml(&bad.replace("10.9.0.0/16", "ten"), "x.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("route[0].to"), "{e}");
}
