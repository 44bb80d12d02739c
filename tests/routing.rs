//! Routing between a device's two networks, seen through its adapters'
//! counters, and MSS clamping between networks of different MTUs.

mod common;

use std::time::Duration;

use common::*;

const ECHO: &str = r#"{ kind = "echo" }"#;
const PROBE_LOCAL: &str =
    r#"{ kind = "probe", tcp = ["10.0.0.2:7"], bytes = 4194304, timeout = "30s" }"#;
const PROBE_GLOBAL: &str =
    r#"{ kind = "probe", tcp = ["10.100.0.3:7"], bytes = 4194304, timeout = "30s" }"#;

fn exchange(
    client: &shmnet::config::DeviceSettings,
    peers: &[shmnet::config::DeviceSettings],
) -> shmnet::stack::DeviceStats {
    let servers: Vec<_> = peers.iter().map(spawn).collect();
    let (report, stats) = run_to_end(client, Duration::from_secs(60));
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(
        report[0].contains("4194304 bytes echoed intact"),
        "{report:?}"
    );
    stop_all(servers);
    stats
}

/// The exchange went out and came back by the local adapter (or the
/// global one); the other carried little more than ARP.
fn carried_by_local(local: bool, s: &shmnet::stack::DeviceStats) {
    let (used, idle) = if local {
        (&s.local, &s.global)
    } else {
        (&s.global, &s.local)
    };
    assert!(used.tx_bytes > 1 << 20, "{s:?}");
    assert!(used.rx_bytes > 1 << 20, "{s:?}");
    assert!(idle.tx_bytes < 4096, "{s:?}");
    assert!(idle.rx_bytes < 4096, "{s:?}");
}

/// A probe to a server on the client's LAN (host 2), or to one it shares
/// only the global network with (host 3 of another LAN).
fn exchange_with_server_on(lan_shared: bool) -> shmnet::stack::DeviceStats {
    let (lan, lan2, wan) = (unique("lan"), unique("lan2"), unique("wan"));
    let (server_lan, host, probe) = if lan_shared {
        (&lan, 2, PROBE_LOCAL)
    } else {
        (&lan2, 3, PROBE_GLOBAL)
    };
    exchange(
        &settings("client", &lan, &wan, 1, 1500, probe),
        &[settings("server", server_lan, &wan, host, 1500, ECHO)],
    )
}

#[test]
fn local_peer_traffic_leaves_by_the_local_adapter() {
    carried_by_local(true, &exchange_with_server_on(true));
}

#[test]
fn global_peer_traffic_leaves_by_the_global_adapter() {
    carried_by_local(false, &exchange_with_server_on(false));
}

#[test]
fn different_mtus_clamp_mss_and_data_arrives_intact() {
    let (lan, lan2, wan) = (unique("lan"), unique("lan2"), unique("wan"));
    let client = settings_mtus("client", &lan, &wan, 1, 65535, 1500, PROBE_GLOBAL);
    let server = settings_mtus("server", &lan2, &wan, 3, 65535, 1500, ECHO);
    let s = exchange(&client, &[server]);
    assert!(s.nic.mss_clamped > 0, "{s:?}");
    assert_eq!(s.nic.oversize, 0, "{s:?}");
    assert!(s.global.tx_bytes > 1 << 20, "{s:?}");
    assert!(s.local.tx_bytes < 4096, "{s:?}");
}
