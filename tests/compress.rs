//! LZ4 compression between a pair of devices in a chain.

mod common;

use std::time::Duration;

use common::*;

/// client ─lan-a─ c1 ═hop═ c2 ─lan-b─ server; the hop carries IPComp.
#[test]
fn compressible_stream_crosses_the_hop_in_fewer_bytes() {
    let hop = Hop::new();
    let client = hop.client(4194304).settings();
    let compress = r#"{ kind = "compress" }"#;
    let c1 = hop.end(1, "c1").function(compress).settings();
    let c2 = hop.end(2, "c2").function(compress).settings();
    let server = hop.server().settings();
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
