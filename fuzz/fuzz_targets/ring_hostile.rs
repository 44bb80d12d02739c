//! A peer that scribbles over everything it owns that another port reads:
//! port A sends frames to port B, then the input is written over A's ring
//! towards B (header and descriptors, as a hostile producer would) and over
//! B's tail entry for A's ring (as a hostile consumer would). Neither side
//! may panic: B counts bad descriptors and corrupt rings and resyncs, A
//! restarts the link, and traffic keeps flowing both ways.
//!
//! Input: `[frames][flags]` then patches `[offset: u16 LE][len: u8][bytes]`
//! applied over the window `A's ring to B ++ B's tail entry for A`,
//! offsets modulo its size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmnet::shm::layout::TAIL_LEN;
use shmnet::shm::{NetworkParams, Port, PortInfo, Segment, SegmentKind};

fn params() -> NetworkParams {
    let mut p = NetworkParams::new(1500);
    p.max_ports = 4;
    p.buffers = 64;
    p
}

fn send_frames(a: &mut Port, to: &Port, count: usize, seed: u8) {
    for i in 0..count {
        let Some(mut b) = a.alloc() else {
            break;
        };
        let n = 60 + i * 7;
        let buf = a.buffer_mut(&mut b);
        let n = n.min(buf.len());
        buf[..n].fill(seed.wrapping_add(i as u8));
        a.send(b, n, &[to.peer()]);
    }
    a.flush();
}

fn drain(p: &mut Port, buf: &mut [u8]) {
    for _ in 0..10_000 {
        if p.recv_into(buf).is_none() {
            break;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [frames, flags, patches @ ..] = data else {
        return;
    };
    // Thread ports: the same rings as between processes, without sockets.
    let seg = Segment::open_or_create("fuzz-ring", SegmentKind::InProcess, &params()).expect("create");
    let mut a = seg.attach(&PortInfo::named("a")).expect("attach a");
    let mut b = seg.attach(&PortInfo::named("b")).expect("attach b");
    a.set_drain_on_drop(std::time::Duration::ZERO);
    b.set_drain_on_drop(std::time::Duration::ZERO);
    let mut buf = vec![0u8; seg.frame_size()];

    send_frames(&mut a, &b, 1 + (*frames as usize % 70), *frames);
    if flags & 1 != 0 {
        let _ = b.recv_into(&mut buf);
    }
    if flags & 2 != 0 {
        b.flush();
        a.flush();
    }

    let geo = seg.geometry();
    let ring = geo.ring_off(b.index());
    let ring_len = geo.ring_len() as usize;
    let tail = geo.tail_off(a.index());
    let window = ring_len + TAIL_LEN;
    let mut rest = patches;
    while let [o0, o1, len, more @ ..] = rest {
        let len = (*len as usize).min(more.len());
        let (bytes, next) = more.split_at(len);
        rest = next;
        let mut pos = u16::from_le_bytes([*o0, *o1]) as usize % window;
        let mut bytes = bytes;
        while !bytes.is_empty() {
            // Split at the seam between the ring and the tail entry, and
            // wrap at the window's end.
            let (n, at_a) = if pos < ring_len {
                ((ring_len - pos).min(bytes.len()), true)
            } else {
                ((window - pos).min(bytes.len()), false)
            };
            if at_a {
                a.vandalise(ring + pos, &bytes[..n]);
            } else {
                b.vandalise(tail + (pos - ring_len), &bytes[..n]);
            }
            bytes = &bytes[n..];
            pos = (pos + n) % window;
        }
    }

    drain(&mut b, &mut buf);
    b.flush();
    a.flush();
    for _ in 0..3 {
        if let Some(t) = a.alloc() {
            a.release(t);
        }
    }
    // More traffic over the damaged link, both ways.
    send_frames(&mut a, &b, 4, 0x5a);
    send_frames(&mut b, &a, 4, 0xa5);
    drain(&mut b, &mut buf);
    drain(&mut a, &mut buf);
    b.flush();
    a.flush();
    let _ = a.alloc();
});
