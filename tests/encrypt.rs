//! ESP tunnel between a pair of devices in a chain, checked on the wire.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use shmnet::functions::FunctionConfig;
use shmnet::functions::diag::pattern_byte;

const KEY_12: &str = "4c80cdefbb5d10da906ac73c3613a634 2e443b68";
const KEY_21: &str = "feffe9928665731c6d6a8f9467308308 cafebabe";

/// The (protocol, total length, payload) of every IPv4 packet in an
/// Ethernet pcap.
fn ipv4_packets(pcap: &[u8]) -> Vec<(u8, usize, Vec<u8>)> {
    assert!(pcap.len() >= 24, "pcap too short");
    let le = pcap[..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32_at = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let caplen = u32_at(&pcap[at + 8..]) as usize;
        let rec = &pcap[at + 16..(at + 16 + caplen).min(pcap.len())];
        at += 16 + caplen;
        if rec.len() >= 34 && rec[12..14] == [0x08, 0x00] {
            let ip = &rec[14..];
            let hl = (ip[0] & 0xf) as usize * 4;
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            out.push((ip[9], total, ip[hl.min(ip.len())..].to_vec()));
        }
    }
    out
}

/// Whether `w` is a run of the probe's stream at any offset:
/// `pattern_byte` steps by 7 modulo 251 (within 8 KiB).
fn is_pattern_run(w: &[u8]) -> bool {
    w.iter().all(|&b| b < 251)
        && w.windows(2)
            .all(|p| (p[1] as u32 + 251 - p[0] as u32) % 251 == 7)
}

/// The function table of a tunnel end: ESP from `local` to `peer` with the
/// outbound SA `out` (SPI, key) and the inbound SAs `inb`.
fn tunnel(local: &str, peer: &str, out: (u32, &str), inb: &[(u32, &str)]) -> String {
    let inbound: Vec<String> = inb
        .iter()
        .map(|(spi, k)| format!("{{ spi = {spi}, key = \"{k}\" }}"))
        .collect();
    format!(
        "kind = \"encrypt\"\nlocal_address = \"{local}\"\npeer_address = \"{peer}\"\n\
         outbound = {{ spi = {}, key = \"{}\" }}\ninbound = [{}]\n",
        out.0,
        out.1,
        inbound.join(", ")
    )
}

/// The hop's IP MTU, below the LANs' 1500: the tunnel ends learn it from
/// their device and clamp the inner TCP MSS to fit.
const HOP_MTU: usize = 1280;

/// client ─lan-a─ e1 ═hop═ e2 ─lan-b─ server; the hop carries ESP.
#[test]
fn tcp_stream_crosses_the_hop_encrypted() {
    let hop = Hop::new();
    let pcap = std::env::temp_dir().join(format!("{}.pcap", hop.hop));
    let client = hop.client(1048576).settings();
    let e1 = hop
        .end(1, "e1")
        .map_global(|n| n.pcap(&pcap).mtu(HOP_MTU as u32))
        .function_table(tunnel(
            "10.2.0.1",
            "10.2.0.2",
            (0x1001, KEY_12),
            &[(0x2002, KEY_21)],
        ))
        .settings();
    let e2 = hop
        .end(2, "e2")
        .map_global(|n| n.mtu(HOP_MTU as u32))
        .function_table(tunnel(
            "10.2.0.2",
            "10.2.0.1",
            (0x2002, KEY_21),
            &[(0x1001, KEY_12)],
        ))
        .settings();
    let server = hop.server().settings();
    let devices: Vec<_> = [&server, &e2, &e1].into_iter().map(spawn).collect();
    let (ch, ct) = spawn(&client);
    let report = wait_finished(&ch, Duration::from_secs(60));
    assert!(report.iter().all(|l| l.contains("intact")), "{report:?}");
    assert!(report.len() >= 2, "{report:?}");
    std::thread::sleep(Duration::from_millis(250));
    ch.stop();
    ct.join().unwrap();
    let stats: Vec<_> = devices.iter().map(|(h, _)| h.stats()).collect();
    stop_all(devices);
    for s in &stats[1..] {
        assert!(counter(s, "encrypted") > 100, "{s:?}");
        assert!(counter(s, "decrypted") > 100, "{s:?}");
        assert!(
            counter(s, "mss_clamped") >= 1,
            "the inner SYN fits the hop: {s:?}"
        );
        for bad in [
            "auth_failed",
            "unknown_spi",
            "bad_padding",
            "too_big",
            "replayed",
        ] {
            assert_eq!(counter(s, bad), 0, "{bad}: {s:?}");
        }
    }

    // On the wire: IP packets between the tunnel ends are ESP, and no 32-byte
    // run of the probe's stream appears anywhere.
    let bytes = std::fs::read(&pcap).expect("pcap written");
    let packets = ipv4_packets(&bytes);
    let esp = packets.iter().filter(|(p, _, _)| *p == 50).count();
    assert!(esp > 200, "{esp} ESP packets of {}", packets.len());
    assert!(
        packets.iter().all(|(p, _, _)| *p == 50),
        "only ESP on the hop"
    );
    let largest = packets
        .iter()
        .map(|(_, total, _)| *total)
        .max()
        .unwrap_or(0);
    assert!(
        largest <= HOP_MTU && largest > HOP_MTU - 100,
        "ESP packets fill but never exceed the hop MTU: largest {largest}"
    );
    let plain: Vec<u8> = (300_000..300_032).map(pattern_byte).collect();
    assert!(is_pattern_run(&plain), "the detector finds plaintext");
    assert!(
        !bytes.windows(32).any(is_pattern_run),
        "plaintext of the stream on the hop"
    );

    tshark_decrypts(&pcap);
    let _ = std::fs::remove_file(&pcap);
}

/// The independent decoder: tshark, given the keys, decrypts the capture
/// and sees the inner TCP stream between client and server.
fn tshark_decrypts(pcap: &Path) {
    if Command::new("tshark").arg("--version").output().is_err() {
        println!("skipping the tshark check: tshark is not installed");
        return;
    }
    let sa = |src: &str, dst: &str, spi: &str, key: &str| {
        format!(
            "\"IPv4\",\"{src}\",\"{dst}\",\"{spi}\",\"AES-GCM with 16 octet ICV [RFC4106]\",\
             \"0x{}\",\"NULL\",\"\"",
            key.replace(' ', "")
        )
    };
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-o", "esp.enable_encryption_decode:TRUE"])
        .args(["-o", "esp.enable_authentication_check:TRUE"])
        .args([
            "-o",
            &format!(
                "uat:esp_sa:{}",
                sa("10.2.0.1", "10.2.0.2", "0x00001001", KEY_12)
            ),
        ])
        .args([
            "-o",
            &format!(
                "uat:esp_sa:{}",
                sa("10.2.0.2", "10.2.0.1", "0x00002002", KEY_21)
            ),
        ])
        .args([
            "-Y",
            "esp && tcp",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "tcp.len",
            "-e",
            "esp.icv_good",
        ])
        .output()
        .expect("tshark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each line: outer src,inner src  outer dst,inner dst  TCP payload length
    // ICV good.
    let mut to_server = 0u64;
    let mut to_client = 0u64;
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let len: u64 = f.get(2).and_then(|l| l.parse().ok()).unwrap_or(0);
        // tshark verified the ICV itself.
        assert!(
            matches!(f.get(3).map(|g| g.trim()), Some("1" | "True")),
            "{line}"
        );
        if f[0] == "10.2.0.1,10.0.0.1" && f[1] == "10.2.0.2,10.3.0.2" {
            to_server += len;
        } else if f[0] == "10.2.0.2,10.3.0.2" && f[1] == "10.2.0.1,10.0.0.1" {
            to_client += len;
        }
    }
    assert!(
        to_server >= 1 << 20 && to_client >= 1 << 20,
        "tshark decrypted {to_server}/{to_client} TCP bytes:\n{}",
        &text[..text.len().min(2000)]
    );
}

/// A live tunnel rekeyed by configuration change while a stream crosses
/// it: receivers first accept old and new SAs, then senders switch, then
/// the old SAs go. The stream arrives intact and no packet is refused:
/// after stage 3 a sender still on an old SA would show as `unknown_spi`.
#[test]
fn rekey_while_a_stream_crosses_the_tunnel() {
    const NEW_12: &str = "00112233445566778899aabbccddeeff01020304";
    const NEW_21: &str = "ffeeddccbbaa99887766554433221100a0b0c0d0";
    let hop = Hop::new();
    // The SAs (SPI, key) from e1 to e2 and back, before and after.
    let (old_12, new_12) = ((0x1001, KEY_12), (0x1002, NEW_12));
    let (old_21, new_21) = ((0x2002, KEY_21), (0x2003, NEW_21));
    let e1_cfg = |out: (u32, &str), inb: &[(u32, &str)]| {
        toml::from_str::<FunctionConfig>(&tunnel("10.2.0.1", "10.2.0.2", out, inb)).unwrap()
    };
    let e2_cfg = |out: (u32, &str), inb: &[(u32, &str)]| {
        toml::from_str::<FunctionConfig>(&tunnel("10.2.0.2", "10.2.0.1", out, inb)).unwrap()
    };
    let mut e1 = hop.end(1, "e1").settings();
    e1.function = e1_cfg(old_12, &[old_21]);
    let mut e2 = hop.end(2, "e2").settings();
    e2.function = e2_cfg(old_21, &[old_12]);
    let client = hop
        .client(0)
        .function(r#"{ kind = "probe", tcp = ["10.3.0.2:7"], bytes = 67108864, timeout = "60s" }"#)
        .settings();
    let server = hop
        .server()
        .function(r#"{ kind = "echo", tcp_buffer = 4194304 }"#)
        .settings();
    let (sh, st) = spawn(&server);
    let (h2, t2) = spawn(&e2);
    let (h1, t1) = spawn(&e1);
    let (ch, ct) = spawn(&client);
    let moved = |h: &shmnet::stack::DeviceHandle| h.stats().local.rx_bytes;
    let wait_moved = |h: &shmnet::stack::DeviceHandle, bytes: u64| {
        let t0 = std::time::Instant::now();
        while moved(h) < bytes && t0.elapsed() < Duration::from_secs(30) && !ch.finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // After this many bytes through e1: e1's outbound SA and inbound SAs,
    // and e2's.
    let stages = [
        // 1: both receivers accept the new SAs as well.
        (
            8 << 20,
            old_12,
            vec![old_21, new_21],
            old_21,
            vec![old_12, new_12],
        ),
        // 2: both senders switch to the new SAs.
        (
            16 << 20,
            new_12,
            vec![old_21, new_21],
            new_21,
            vec![old_12, new_12],
        ),
        // 3: the old SAs go, once the packets sent under them are in.
        (32 << 20, new_12, vec![new_21], new_21, vec![new_12]),
    ];
    for (bytes, out1, in1, out2, in2) in stages {
        wait_moved(&h1, bytes);
        let t1 = h1.reconfigure(e1_cfg(out1, &in1)).expect("valid config");
        let t2 = h2.reconfigure(e2_cfg(out2, &in2)).expect("valid config");
        for t in [t1, t2] {
            let how = t.wait(Duration::from_secs(10)).expect("rekey applied");
            assert_eq!(
                how,
                shmnet::stack::Applied::InPlace,
                "a rekey keeps the tunnel"
            );
        }
        // Give the packets already in the rings time to land before the
        // next stage (on a fast run the byte marks pass back to back, and
        // stage 3 would retire an SA packets in flight still use).
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !ch.finished(),
            "the stream must still be running at each stage"
        );
    }
    let report = wait_finished(&ch, Duration::from_secs(120));
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(
        report[0].contains("67108864 bytes echoed intact"),
        "{report:?}"
    );
    assert!(
        moved(&h1) >= 64 << 20,
        "the switch happened while the stream ran"
    );
    std::thread::sleep(Duration::from_millis(250));
    for h in [&h1, &h2] {
        let s = h.stats();
        // Reconfigured in place, not replaced.
        assert_eq!(s.function, "encrypt");
        for bad in ["auth_failed", "unknown_spi", "replayed", "bad_padding"] {
            assert_eq!(counter(&s, bad), 0, "{bad}: {s:?}");
        }
    }
    stop_all([(ch, ct), (h1, t1), (h2, t2), (sh, st)]);
}
