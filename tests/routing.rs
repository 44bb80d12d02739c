//! Routing between a device's two networks, seen through its adapters'
//! counters, and MSS clamping between networks of different MTUs.

mod common;

use std::time::Duration;

use common::*;

const ECHO: &str = r#"{ kind = "echo" }"#;
const PROBE_LOCAL: &str =
    r#"{ kind = "probe", tcp = ["10.0.0.2:7"], bytes = 4194304, timeout_ms = 30000 }"#;
const PROBE_GLOBAL: &str =
    r#"{ kind = "probe", tcp = ["10.100.0.3:7"], bytes = 4194304, timeout_ms = 30000 }"#;

fn exchange(
    client: &shmnet::config::DeviceSettings,
    peers: &[shmnet::config::DeviceSettings],
) -> shmnet::stack::DeviceStats {
    let servers: Vec<_> = peers.iter().map(spawn).collect();
    let (ch, ct) = spawn(client);
    let report = wait_finished(&ch, Duration::from_secs(60));
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(
        report[0].contains("4194304 bytes echoed intact"),
        "{report:?}"
    );
    let stats = ch.stats();
    ch.stop();
    ct.join().unwrap();
    for (h, t) in servers {
        h.stop();
        t.join().unwrap();
    }
    stats
}

#[test]
fn local_peer_traffic_leaves_by_the_local_adapter() {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let s = exchange(
        &settings("client", &lan, &wan, 1, 1500, PROBE_LOCAL),
        &[settings("server", &lan, &wan, 2, 1500, ECHO)],
    );
    assert!(s.local.tx_bytes > 1 << 20, "{s:?}");
    assert!(s.local.rx_bytes > 1 << 20, "{s:?}");
    assert!(s.global.tx_bytes < 4096, "{s:?}");
    assert!(s.global.rx_bytes < 4096, "{s:?}");
}

#[test]
fn global_peer_traffic_leaves_by_the_global_adapter() {
    let (lan, lan2, wan) = (unique("lan"), unique("lan2"), unique("wan"));
    let s = exchange(
        &settings("client", &lan, &wan, 1, 1500, PROBE_GLOBAL),
        // Shares only the global network with the client.
        &[settings("server", &lan2, &wan, 3, 1500, ECHO)],
    );
    assert!(s.global.tx_bytes > 1 << 20, "{s:?}");
    assert!(s.global.rx_bytes > 1 << 20, "{s:?}");
    assert!(s.local.tx_bytes < 4096, "{s:?}");
    assert!(s.local.rx_bytes < 4096, "{s:?}");
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
