//! A hostile peer: garbage written into everything it owns that others
//! read (its rings, descriptors, tails and header), and garbage frames sent
//! to a device.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use shmnet::shm::layout::{DESC_LEN, RING_HEADER_LEN};
use shmnet::shm::{NetworkParams, PortInfo, Segment, SegmentKind};

#[test]
fn a_peer_scribbling_its_own_memory_hurts_only_its_own_links() {
    let name = unique("hostile");
    let params = NetworkParams {
        buffers: 64,
        max_ports: 4,
        ..NetworkParams::new(1500)
    };
    let seg = Segment::open_or_create(&name, SegmentKind::InProcess, &params).unwrap();
    let mut a = seg.attach(&PortInfo::named("a")).unwrap();
    let mut b = seg.attach(&PortInfo::named("b")).unwrap();
    let mut h = seg.attach(&PortInfo::named("vandal")).unwrap();
    for p in [&mut a, &mut b, &mut h] {
        p.flush();
    }
    let g = *seg.geometry();
    let frame_size = seg.frame_size();

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = vec![0u8; frame_size];
    let mut seq = 0u32;
    let (mut from_a, mut intact_a) = (0u64, 0u64);
    for round in 0..6000u32 {
        // a -> b (clean), h -> b and a -> h (the vandal's links).
        for _ in 0..4 {
            let Some(mut buf) = a.alloc() else { break };
            let f = a.buffer_mut(&mut buf);
            f[..4].copy_from_slice(&seq.to_le_bytes());
            f[4..64].fill(seq.to_le_bytes()[0]);
            a.send(buf, 64, &[b.peer(), h.peer()]);
            seq += 1;
        }
        if let Some(mut buf) = h.alloc() {
            h.buffer_mut(&mut buf)[..64].fill(0xEE);
            h.send(buf, 64, &[b.peer()]);
        }
        a.flush();
        h.flush();
        if round >= 100 {
            // The vandal writes random bytes into what it owns and others
            // read: its ring towards b (header and descriptors), its tail
            // for a's ring, its header.
            let mut junk = [0u8; 16];
            let n = 1 + rng.below(16) as usize;
            rng.fill(&mut junk[..n]);
            let at = match rng.below(8) {
                0 => g.tail_off(a.index()) + rng.below(16) as usize,
                1 => rng.below(256) as usize,
                2 | 3 => g.ring_off(b.index()) + rng.below(RING_HEADER_LEN as u64) as usize,
                _ => {
                    g.ring_off(b.index())
                        + RING_HEADER_LEN
                        + rng.below(g.ring_slots as u64 * DESC_LEN as u64) as usize
                }
            };
            h.vandalise(at, &junk[..n]);
        }
        while let Some((len, from)) = b.recv_into(&mut out) {
            assert!(
                (1..=frame_size).contains(&len),
                "delivered a frame of {len} bytes (frame size {frame_size})"
            );
            if from == a.index() {
                from_a += 1;
                if len == 64 && out[4..64].iter().all(|&x| x == out[0]) {
                    intact_a += 1;
                }
            }
        }
        while h.recv_into(&mut out).is_some() {}
        b.flush();
    }

    let bad = b.counters().bad_descriptors.load(Ordering::Relaxed)
        + b.counters().corrupt_rings.load(Ordering::Relaxed)
        + a.counters().corrupt_rings.load(Ordering::Relaxed);
    assert!(bad > 0, "garbage went unnoticed");
    // Nobody can write a's ring or b's tail: every frame a sent to b came
    // through, in order and intact.
    assert_eq!(from_a, seq as u64, "a -> b lost frames");
    assert_eq!(intact_a, from_a, "a -> b frames were damaged");
}

#[test]
fn device_survives_garbage_frames() {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let server = settings("server", &lan, &wan, 2, 1500, r#"{ kind = "echo" }"#);
    let (sh, st) = spawn(&server);

    // A raw port on the device's local network sends it garbage.
    let mut raw = raw_port(&lan);
    let targets = raw.peers();
    assert!(!targets.is_empty());
    let mut rng = Rng(0xDEAD_BEEF_1234_5678);
    let frame_size = raw.segment.frame_size();
    let mut f = vec![0u8; frame_size];
    for _ in 0..3000 {
        let len = 1 + rng.below(frame_size as u64) as usize;
        let kind = rng.below(4);
        rng.fill(&mut f[..len]);
        if kind != 0 && len >= 14 {
            // Addressed to the device, with a plausible EtherType, so the
            // garbage reaches its IPv4/ARP/IPv6 parsers.
            f[..6].copy_from_slice(&server.mac);
            f[12..14].copy_from_slice(match kind {
                1 => &[0x08, 0x00],
                2 => &[0x08, 0x06],
                _ => &[0x86, 0xdd],
            });
            if kind == 1 && len >= 34 {
                f[14] = 0x45; // IPv4, 20-byte header
                f[30..34].copy_from_slice(&[10, 0, 0, 2]);
            }
        }
        raw.send(&f[..len], &targets);
    }
    drop(raw);

    // The device still serves.
    let client = settings(
        "client",
        &lan,
        &wan,
        1,
        1500,
        r#"{ kind = "probe", tcp = ["10.0.0.2:7"], udp = ["10.0.0.2:7"], bytes = 1048576, timeout = "30s" }"#,
    );
    let (ch, ct) = spawn(&client);
    let report = wait_finished(&ch, Duration::from_secs(60));
    assert_eq!(report.len(), 2, "{report:?}");
    assert!(
        report[0].contains("1048576 bytes echoed intact"),
        "{report:?}"
    );
    assert!(report[1].contains("datagrams echoed intact"), "{report:?}");
    assert!(sh.stats().local.rx_frames >= 3000, "{:?}", sh.stats());
    stop_all([(ch, ct), (sh, st)]);
}
