//! The facility as a network's users see it: links that heal, parameters
//! and addresses checked at join, and what a joiner is told when it is
//! refused. Each test runs on both kinds of network: threads of this
//! process, and (with sockets and sealed memfds) separate processes' ports.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use shmnet::shm::{NetworkParams, Port, PortInfo, Segment, SegmentKind, ShmError};

const KINDS: [SegmentKind; 2] = [SegmentKind::InProcess, SegmentKind::Shared];

fn params() -> NetworkParams {
    NetworkParams {
        buffers: 64,
        max_ports: 4,
        ..NetworkParams::new(1500)
    }
}

/// Sends numbered 64-byte frames from `a` to `b` while `b` reads them,
/// returning the numbers `b` saw.
fn exchange(a: &mut Port, b: &mut Port, from: u32, count: u32) -> Vec<u32> {
    let mut seen = Vec::new();
    let mut out = vec![0u8; 2048];
    let mut next = from;
    let deadline = Instant::now() + Duration::from_secs(5);
    while (next < from + count || seen.last().is_none_or(|&l| l + 1 < from + count))
        && Instant::now() < deadline
    {
        if next < from + count
            && let Some(mut buf) = a.alloc()
        {
            a.buffer_mut(&mut buf)[..4].copy_from_slice(&next.to_le_bytes());
            a.send(buf, 64, &[b.peer()]);
            next += 1;
        }
        a.flush();
        while let Some((len, src)) = b.recv_into(&mut out) {
            assert_eq!((len, src), (64, a.index()));
            seen.push(u32::from_le_bytes(out[..4].try_into().unwrap()));
        }
        b.flush();
    }
    seen
}

fn joined(seg: &Arc<Segment>, name: &str) -> Port {
    let mut p = seg.attach(&PortInfo::named(name)).unwrap();
    p.set_drain_on_drop(Duration::ZERO);
    p
}

/// Waits until each port knows all the others.
fn settle(ports: &mut [&mut Port]) {
    let want = ports.len() - 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for p in ports.iter_mut() {
            p.maintain();
        }
        if ports.iter().all(|p| p.peers().count() == want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("ports did not see each other");
}

/// A network of `kind` with two ports, a and b, that know each other.
fn pair(tag: &str, kind: SegmentKind) -> (Arc<Segment>, Port, Port) {
    let seg = Segment::open_or_create(&unique(tag), kind, &params()).unwrap();
    let (mut a, mut b) = (joined(&seg, "a"), joined(&seg, "b"));
    settle(&mut [&mut a, &mut b]);
    (seg, a, b)
}

#[test]
fn a_link_whose_reader_scribbles_its_tail_heals_within_a_second() {
    for kind in KINDS {
        let (seg, mut a, mut b) = pair("heal", kind);
        let first = exchange(&mut a, &mut b, 0, 200);
        assert_eq!(first, (0..200).collect::<Vec<_>>(), "{kind:?}");

        // The reader's tail for a's ring gets garbage: an impossible index
        // (the low half of the word; the writer notices at once and
        // restarts the link), then a serial that is not the ring's (the
        // reader puts its own back when it next consumes).
        let tail = seg.geometry().tail_off(a.index());
        for (junk, resets) in [(&[0xff; 4][..], 1), (&[0x5a; 8][..], 1)] {
            b.vandalise(tail, junk);
            a.drain(Duration::ZERO); // reclaims now
            assert_eq!(
                a.counters().links_reset.load(Ordering::Relaxed),
                resets,
                "{kind:?}"
            );
            let t = Instant::now();
            let mut after = Vec::new();
            while after.len() < 100 && t.elapsed() < Duration::from_secs(3) {
                let start = after.last().map_or(1000, |&l| l + 1);
                after.extend(exchange(&mut a, &mut b, start, 10));
            }
            assert!(
                after.len() >= 100,
                "{kind:?}: traffic did not resume after {junk:?}"
            );
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "{kind:?}: slow to heal"
            );
            assert!(
                after.windows(2).all(|w| w[0] < w[1]),
                "{kind:?}: out of order"
            );
        }
    }
}

#[test]
fn a_joiner_with_other_parameters_is_refused_naming_both_values() {
    for kind in KINDS {
        let name = unique("geometry");
        let seg = Segment::open_or_create(&name, kind, &params()).unwrap();
        let _a = joined(&seg, "a");
        let other = NetworkParams {
            max_ports: 8,
            ..params()
        };
        let err = Segment::join(&name, kind, &other, &PortInfo::named("b")).expect_err("refused");
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                ShmError::ParameterMismatch {
                    field: "max_ports",
                    found: 4,
                    requested: 8,
                    ..
                }
            ),
            "{kind:?}: {msg}"
        );
        assert!(msg.contains("max_ports 4") && msg.contains('8'), "{msg}");
    }
}

#[test]
fn a_duplicate_address_is_refused_naming_its_holder() {
    for kind in KINDS {
        let seg = Segment::open_or_create(&unique("dup"), kind, &params()).unwrap();
        let info = |name: &str, ip: [u8; 4]| PortInfo {
            ipv4: Some(ip),
            ..PortInfo::named(name)
        };
        let _a = seg.attach(&info("first", [10, 0, 0, 1])).unwrap();
        let err = seg
            .attach(&info("second", [10, 0, 0, 1]))
            .expect_err("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("10.0.0.1") && msg.contains("first"),
            "{kind:?}: {msg}"
        );
        // Another address is fine, and the same name twice is not.
        let _b = seg.attach(&info("second", [10, 0, 0, 2])).unwrap();
        let err = seg
            .attach(&info("first", [10, 0, 0, 3]))
            .expect_err("refused");
        assert!(err.to_string().contains("first"), "{kind:?}: {err}");
    }
}

#[test]
fn a_full_network_says_how_to_make_room() {
    for kind in KINDS {
        let seg = Segment::open_or_create(&unique("full"), kind, &params()).unwrap();
        let ports: Vec<Port> = (0..4).map(|i| joined(&seg, &format!("p{i}"))).collect();
        let err = seg
            .attach(&PortInfo::named("one-too-many"))
            .expect_err("refused");
        assert!(
            matches!(err, ShmError::Full { max_ports: 4, .. }),
            "{kind:?}: {err}"
        );
        assert!(err.to_string().contains("max_ports"), "{err}");
        drop(ports);
        // Room again once they left.
        let _p = seg.attach(&PortInfo::named("late")).unwrap();
    }
}

#[test]
fn a_port_that_leaves_gives_its_peers_their_buffers_back() {
    for kind in KINDS {
        let (_seg, mut a, b) = pair("leave", kind);
        let total = a.free_buffers();
        // a fills b's ring; b never reads, then leaves.
        while let Some(buf) = a.alloc() {
            a.send(buf, 64, &[b.peer()]);
        }
        a.flush();
        drop(b);
        let deadline = Instant::now() + Duration::from_secs(2);
        while a.free_buffers() < total && Instant::now() < deadline {
            a.maintain();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(a.free_buffers(), total, "{kind:?}");
        assert_eq!(a.peers().count(), 0, "{kind:?}");
    }
}
