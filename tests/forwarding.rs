//! A device in the middle of a chain forwards packets between networks.

mod common;

use std::time::Duration;

use common::*;
use shmnet::config::DeviceConfig;

/// client ──lanA (MTU 9000)── router ──lanB (MTU 1500)── server
fn chain(function_of_router: &str, trust: bool) -> (String, String, String, String, String) {
    let (lan_a, lan_b) = (unique("lanA"), unique("lanB"));
    let client = format!(
        r#"
name = "client"
function = {{ kind = "probe", tcp = ["10.1.0.2:7", "[fd00:b::2]:7"], udp = ["10.1.0.2:7"], bytes = 4194304, timeout_ms = 30000 }}
local = {{ segment = "{lan_a}", address = "10.0.0.1/24", address6 = "fd00:a::1/64", mtu = 9000 }}
global = {{ segment = "{wc}", address = "10.100.0.1/16" }}
[[route]]
to = "10.1.0.0/24"
via = "10.0.0.254"
[[route]]
to = "fd00:b::/64"
via = "fd00:a::fe"
"#,
        wc = unique("wanC")
    );
    let router = format!(
        r#"
name = "router"
forward = true
function = {function_of_router}
local = {{ segment = "{lan_a}", address = "10.0.0.254/24", address6 = "fd00:a::fe/64", mtu = 9000, trust_peers = {trust} }}
global = {{ segment = "{lan_b}", address = "10.1.0.254/24", address6 = "fd00:b::fe/64", mtu = 1500, trust_peers = {trust} }}
"#
    );
    let server = format!(
        r#"
name = "server"
function = {{ kind = "echo" }}
local = {{ segment = "{lan_b}", address = "10.1.0.2/24", address6 = "fd00:b::2/64", mtu = 1500 }}
global = {{ segment = "{ws}", address = "10.200.0.2/16" }}
[[route]]
to = "10.0.0.0/24"
via = "10.1.0.254"
[[route]]
to = "fd00:a::/64"
via = "fd00:b::fe"
"#,
        ws = unique("wanS")
    );
    (client, router, server, lan_a, lan_b)
}

fn run_chain(router_function: &str, trust: bool) {
    let (client, router, server, _, _) = chain(router_function, trust);
    let load = |t: &str| DeviceConfig::from_toml(t, "chain").unwrap();
    let (sh, st) = spawn(&load(&server));
    let (rh, rt) = spawn(&load(&router));
    let (ch, ct) = spawn(&load(&client));
    let report = wait_finished(&ch, Duration::from_secs(60));
    assert_eq!(report.len(), 3, "{report:?}");
    assert!(report.iter().all(|l| l.contains("intact")), "{report:?}");
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
    stop_all([(ch, ct), (rh, rt), (sh, st)]);
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
    let router = DeviceConfig::from_toml(
        &format!(
            r#"
name = "router"
forward = true
local = {{ segment = "{lan_a}", address = "10.0.0.254/24" }}
global = {{ segment = "{wan}", address = "10.1.0.254/24" }}
"#
        ),
        "r",
    )
    .unwrap();
    let client = DeviceConfig::from_toml(
        &format!(
            r#"
name = "client"
function = {{ kind = "probe", udp = ["172.16.9.9:7"], timeout_ms = 600 }}
local = {{ segment = "{lan_a}", address = "10.0.0.1/24" }}
global = {{ segment = "{g}", address = "10.100.0.1/16" }}
[[route]]
to = "172.16.0.0/12"
via = "10.0.0.254"
"#,
            g = unique("g")
        ),
        "c",
    )
    .unwrap();
    let (rh, rt) = spawn(&router);
    let (ch, ct) = spawn(&client);
    let report = wait_finished(&ch, Duration::from_secs(30));
    assert!(report[0].contains("timed out"), "{report:?}");
    let r = rh.stats();
    assert!(r.nic.no_route > 0 && r.nic.forwarded == 0, "{r:?}");
    stop_all([(ch, ct), (rh, rt)]);
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
