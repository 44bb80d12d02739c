//! Capture files and the IP medium option.

mod common;

use std::time::Duration;

use common::*;

const ECHO: &str = r#"{ kind = "echo" }"#;

/// Reads a classic pcap file: (link type, frames).
fn read_pcap(path: &std::path::Path) -> (u32, Vec<Vec<u8>>) {
    let d = std::fs::read(path).expect("pcap written");
    assert!(d.len() >= 24, "pcap header missing");
    assert_eq!(u32::from_le_bytes(d[0..4].try_into().unwrap()), 0xa1b2_c3d4);
    let link = u32::from_le_bytes(d[20..24].try_into().unwrap());
    let mut frames = Vec::new();
    let mut off = 24;
    while off + 16 <= d.len() {
        let incl = u32::from_le_bytes(d[off + 8..off + 12].try_into().unwrap()) as usize;
        let orig = u32::from_le_bytes(d[off + 12..off + 16].try_into().unwrap()) as usize;
        assert_eq!(incl, orig, "frames are captured whole");
        off += 16;
        assert!(off + incl <= d.len(), "truncated record");
        frames.push(d[off..off + incl].to_vec());
        off += incl;
    }
    (link, frames)
}

/// An independent decoder reads the same file: tshark counts the same
/// frames and the same TCP payload.
fn tshark_agrees(pcap: &std::path::Path, frames: usize, tcp_payload: usize) {
    let out = match std::process::Command::new("tshark")
        .args(["-n", "-r"])
        .arg(pcap)
        .args(["-T", "fields", "-e", "frame.number", "-e", "tcp.len"])
        .output()
    {
        Ok(o) if o.status.success() => o,
        Ok(o) => panic!("tshark failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            println!("skipping the tshark check: tshark not runnable ({e})");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), frames, "tshark sees every frame");
    let payload: usize = rows
        .iter()
        .filter_map(|r| r.split('\t').nth(1))
        .filter_map(|v| v.trim().parse::<usize>().ok())
        .sum();
    assert_eq!(payload, tcp_payload, "tshark decodes the same TCP payload");
}

/// Host `host` of `lan`/`wan`, both networks of `medium`, running
/// `function`.
fn device(name: &str, lan: &str, wan: &str, host: u8, medium: &str, function: &str) -> DeviceToml {
    DeviceToml::host(name, lan, wan, host)
        .medium(medium)
        .function(function)
}

#[test]
fn pcap_holds_every_frame_the_adapter_carried() {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let dir = std::env::temp_dir().join(unique("pcap"));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("client-lan.pcap");
    let server = device("server", &lan, &wan, 2, "ethernet", ECHO).settings();
    let client = device(
        "client",
        &lan,
        &wan,
        1,
        "ethernet",
        r#"{ kind = "probe", tcp = ["10.0.0.2:7"], bytes = 100000 }"#,
    )
    .map_local(|n| n.pcap(&pcap))
    .settings();
    let server = spawn(&server);
    // Stopping the client (and dropping its device) flushes the capture.
    let (report, stats) = run_to_end(&client, Duration::from_secs(60));
    assert!(report[0].contains("intact"), "{report:?}");
    stop_all([server]);
    let (link, frames) = read_pcap(&pcap);
    assert_eq!(link, 1, "Ethernet link type");
    assert_eq!(
        frames.len() as u64,
        stats.local.rx_frames + stats.local.tx_frames
    );
    // The TCP payload is in there: IPv4, protocol 6, some segment carries data.
    let tcp_payload: usize = frames
        .iter()
        .filter(|f| f.len() > 34 && f[12..14] == [0x08, 0x00] && f[23] == 6)
        .map(|f| {
            let ihl = (f[14] & 0xf) as usize * 4;
            let doff = (f[14 + ihl + 12] >> 4) as usize * 4;
            f.len() - 14 - ihl - doff
        })
        .sum();
    assert!(
        tcp_payload >= 2 * 100_000,
        "both directions captured: {tcp_payload}"
    );
    tshark_agrees(&pcap, frames.len(), tcp_payload);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn ip_medium_carries_tcp_and_udp() {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let server = device("server", &lan, &wan, 2, "ip", ECHO).settings();
    let remote = device("remote", &unique("lan"), &wan, 3, "ip", ECHO).settings();
    let client = device(
        "client",
        &lan,
        &wan,
        1,
        "ip",
        r#"{ kind = "probe", tcp = ["10.0.0.2:7", "10.100.0.3:7"], udp = ["10.0.0.2:7", "10.100.0.3:7"], bytes = 1000000 }"#,
    )
    .settings();
    let servers = [spawn(&server), spawn(&remote)];
    let s = probe_intact(&client, 4, Duration::from_secs(60));
    assert!(
        s.local.tx_bytes > 1_000_000 && s.global.tx_bytes > 1_000_000,
        "{s:?}"
    );
    stop_all(servers);
}
