//! The data path with devices as threads of one process.

mod common;

use std::time::Duration;

use common::*;

const ECHO: &str = r#"{ kind = "echo", tcp_buffer = 4194304 }"#;
const PROBE: &str = r#"{ kind = "probe", tcp = ["10.0.0.2:7"], bytes = 67108864, timeout = "2m" }"#;

fn tcp_64mib(mtu: u32) {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let server = spawn(&settings("server", &lan, &wan, 2, mtu, ECHO));
    let client = settings("client", &lan, &wan, 1, mtu, PROBE);
    let (report, cs) = run_to_end(&client, Duration::from_secs(180));
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(
        report[0].contains("67108864 bytes echoed intact"),
        "{report:?}"
    );
    assert_eq!(cs.local.bad_descriptors + cs.global.bad_descriptors, 0);
    // The stream left by the local adapter; the global one carried only
    // a few ARP frames.
    assert!(cs.local.tx_bytes > 64 << 20, "{cs:?}");
    assert!(cs.global.tx_bytes < 4096, "{cs:?}");
    stop_all([server]);
}

#[test]
fn tcp_64mib_mtu_1500() {
    tcp_64mib(1500);
}

#[test]
fn tcp_64mib_mtu_9000() {
    tcp_64mib(9000);
}

#[test]
fn tcp_64mib_mtu_65535() {
    tcp_64mib(65535);
}
