//! A hostile peer: garbage written into a live host segment's rings and
//! link table, and garbage frames sent to a device.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use shmnet::shm::layout::{DESC_LEN, LINK_LEN, RING_HEADER_LEN};
use shmnet::shm::{NetworkParams, PortInfo, Segment, SegmentKind};

/// A tiny deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

#[test]
fn garbage_in_rings_is_counted_never_delivered_as_bad_frames() {
    let name = unique("hostile");
    let _unlink = Unlink(name.clone());
    let params = NetworkParams {
        buffers: 64,
        max_ports: 4,
        max_links: 8,
        ..NetworkParams::new(1500)
    };
    let seg = Segment::open_or_create(&name, SegmentKind::Host, &params).unwrap();
    let mut a = seg.attach(&PortInfo::named("a")).unwrap();
    let mut b = seg.attach(&PortInfo::named("b")).unwrap();
    let g = *seg.geometry();
    let frame_size = seg.frame_size();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/shm/shmnet.{name}"))
        .expect("the host segment is a file in /dev/shm");

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = vec![0u8; frame_size];
    let mut seq = 0u32;
    let (mut delivered, mut intact) = (0u64, 0u64);
    let mut check = |b: &mut shmnet::shm::Port, delivered: &mut u64, intact: &mut u64| {
        while let Some((len, _from)) = b.recv_into(&mut out) {
            assert!(
                (1..=frame_size).contains(&len),
                "delivered a frame of {len} bytes (frame size {frame_size})"
            );
            *delivered += 1;
            if len == 64 && out[4..64].iter().all(|&x| x == out[0]) {
                *intact += 1;
            }
        }
    };

    // Clean traffic for 100 rounds, then the vandal joins in.
    for round in 0..6000u32 {
        for _ in 0..4 {
            let Some(mut buf) = a.alloc() else { break };
            let f = a.buffer_mut(&mut buf);
            f[..4].copy_from_slice(&seq.to_le_bytes());
            f[4..64].fill(seq.to_le_bytes()[0]);
            a.send(buf, 64, &[b.peer()]);
            seq += 1;
        }
        a.flush();
        if round >= 100 {
            // The hostile peer: random bytes into ring headers and
            // descriptors of the links in use, and now and then the link
            // table.
            let mut junk = [0u8; 16];
            let n = 1 + rng.below(16) as usize;
            rng.fill(&mut junk[..n]);
            let link = rng.below(2) as u32;
            let at = if rng.below(16) == 0 {
                g.links_off as usize
                    + link as usize * LINK_LEN
                    + rng.below(LINK_LEN as u64) as usize
            } else if rng.below(2) == 0 {
                g.ring_off(link) + rng.below(RING_HEADER_LEN as u64) as usize
            } else {
                g.ring_off(link)
                    + RING_HEADER_LEN
                    + rng.below(g.ring_slots as u64 * DESC_LEN as u64) as usize
            };
            file.write_at(&junk[..n], at as u64).unwrap();
        }
        check(&mut b, &mut delivered, &mut intact);
    }
    check(&mut b, &mut delivered, &mut intact);

    let bad = b.counters().bad_descriptors.load(Ordering::Relaxed)
        + b.counters().corrupt_rings.load(Ordering::Relaxed)
        + a.counters().corrupt_rings.load(Ordering::Relaxed);
    assert!(bad > 0, "garbage went unnoticed");
    assert!(intact > 0, "nothing got through ({delivered} delivered)");
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
