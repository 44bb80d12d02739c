//! LZ4 compression between a pair of devices in a chain.

mod common;

use std::time::Duration;

use common::*;
use shmnet::config::DeviceConfig;

/// client ─lan-a─ c1 ═hop═ c2 ─lan-b─ server; the hop carries IPComp.
#[test]
fn compressible_stream_crosses_the_hop_in_fewer_bytes() {
    let (lan_a, hop, lan_b) = (unique("lanA"), unique("hop"), unique("lanB"));
    let dev = |text: String| DeviceConfig::from_toml(&text, "compress-chain").unwrap();
    let client = probe_client(&lan_a, "10.0.0.1", "10.3.0.2", "10.0.0.254", 4194304);
    // A compressing device between `lan` and the hop, routing `to` via `via`.
    let end = |name: &str, lan: &str, lan_addr: &str, hop_addr: &str, (to, via): (&str, &str)| {
        dev(format!(
            "name = \"{name}\"\nforward = true\nfunction = {{ kind = \"compress\" }}\n\
             local = {{ segment = \"{lan}\", address = \"{lan_addr}\" }}\n\
             global = {{ segment = \"{hop}\", address = \"{hop_addr}\" }}\n\
             route = [{{ to = \"{to}\", via = \"{via}\" }}]\n"
        ))
    };
    let c1 = end(
        "c1",
        &lan_a,
        "10.0.0.254/24",
        "10.2.0.1/24",
        ("10.3.0.0/24", "10.2.0.2"),
    );
    let c2 = end(
        "c2",
        &lan_b,
        "10.3.0.254/24",
        "10.2.0.2/24",
        ("10.0.0.0/24", "10.2.0.1"),
    );
    let server = echo_server(&lan_b, "10.3.0.2", "10.0.0.1", "10.3.0.254");
    let devices: Vec<_> = [&server, &c2, &c1].into_iter().map(spawn).collect();
    let (ch, ct) = spawn(&client);
    let report = wait_finished(&ch, Duration::from_secs(60));
    assert!(report.iter().all(|l| l.contains("intact")), "{report:?}");
    // Function counters reach handles every 50 ms: wait for the last ones.
    std::thread::sleep(Duration::from_millis(250));
    let s1 = devices[2].0.stats();
    // c1 compressed the client's stream and restored the echo.
    assert!(counter(&s1, "compressed") > 100, "{s1:?}");
    assert!(counter(&s1, "decompressed") > 100, "{s1:?}");
    assert!(counter(&s1, "bytes_saved") > 1 << 20, "{s1:?}");
    assert_eq!(counter(&s1, "decompress_errors"), 0, "{s1:?}");
    // The hop carried fewer bytes than the client's network did.
    assert!(s1.global.tx_bytes * 2 < s1.local.rx_bytes, "{s1:?}");
    assert!(s1.global.rx_bytes * 2 < s1.local.tx_bytes, "{s1:?}");
    ch.stop();
    ct.join().unwrap();
    stop_all(devices);
}
