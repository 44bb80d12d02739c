//! A peer that scribbles over a live link: port A sends frames to port B,
//! then the input is written over link 0's table entry, ring header and
//! descriptors through the segment's backing file. B must keep receiving
//! without panicking (counting bad descriptors and corrupt rings), and A
//! must keep flushing and allocating.
//!
//! Input: `[frames][flags]` then patches `[offset: u16 LE][len: u8][bytes]`
//! applied over the window `link entry 0 ++ ring 0`, offsets modulo its size.
#![no_main]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use libfuzzer_sys::fuzz_target;
use shmnet::shm::layout::LINK_LEN;
use shmnet::shm::{NetworkParams, Port, PortInfo, Segment, SegmentKind};

fn name() -> String {
    format!("fuzz-ring-{}", std::process::id())
}

fn params() -> NetworkParams {
    let mut p = NetworkParams::new(1500);
    p.max_ports = 4;
    p.max_links = 12;
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
    let name = name();
    let _ = Segment::unlink(&name);
    let seg = Segment::open_or_create(&name, SegmentKind::Host, &params()).expect("create");
    let mut a = seg.attach(&PortInfo::named("a")).expect("attach a");
    let mut b = seg.attach(&PortInfo::named("b")).expect("attach b");
    let mut buf = vec![0u8; seg.frame_size()];

    // Link 0 is the first link claimed: A → B.
    send_frames(&mut a, &b, 1 + (*frames as usize % 70), *frames);
    if flags & 1 != 0 {
        // Let B discover the link and consume a frame first.
        let _ = b.recv_into(&mut buf);
    }
    if flags & 2 != 0 {
        b.flush();
        a.flush();
    }

    let geo = seg.geometry();
    let link_off = geo.link_off(0) as u64;
    let ring_off = geo.ring_off(0) as u64;
    let ring_len = geo.ring_len();
    let window = LINK_LEN as u64 + ring_len;
    let file = OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/shmnet.{name}"))
        .expect("open backing file");
    let mut rest = patches;
    while let [o0, o1, len, tail @ ..] = rest {
        let len = (*len as usize).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        let mut pos = u16::from_le_bytes([*o0, *o1]) as u64 % window;
        let mut bytes = bytes;
        while !bytes.is_empty() {
            // Split at the seam between the link entry and the ring, and
            // wrap at the window's end.
            let (at, room) = if pos < LINK_LEN as u64 {
                (link_off + pos, LINK_LEN as u64 - pos)
            } else {
                (ring_off + (pos - LINK_LEN as u64), window - pos)
            };
            let n = (room as usize).min(bytes.len());
            file.write_at(&bytes[..n], at).expect("write");
            bytes = &bytes[n..];
            pos = (pos + n as u64) % window;
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
    let c = b.counters();
    let _ = (
        c.bad_descriptors.load(std::sync::atomic::Ordering::Relaxed),
        c.corrupt_rings.load(std::sync::atomic::Ordering::Relaxed),
    );

    // Frames a corrupted ring stranded are not worth waiting for here.
    a.set_drain_on_drop(std::time::Duration::ZERO);
    b.set_drain_on_drop(std::time::Duration::ZERO);
    drop(a);
    drop(b);
    drop(seg);
    let _ = Segment::unlink(&name);
});
