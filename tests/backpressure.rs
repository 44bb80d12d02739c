//! Back-pressure: a slow receiver throttles its sender without losing a
//! byte, and a port whose peer does not read runs out of buffers instead of
//! dropping frames.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shmnet::functions::diag::{pattern_byte, tcp_socket};
use shmnet::shm::{NetworkParams, PortInfo, Segment, SegmentKind};
use shmnet::stack::NetDevice;
use smoltcp::socket::tcp;

#[test]
fn slow_tcp_receiver_throttles_sender_and_loses_nothing() {
    const TOTAL: u64 = 1 << 20;
    const RX_BUF: usize = 32 * 1024;
    let (lan, wan) = (unique("lan"), unique("wan"));
    let me = settings("slow", &lan, &wan, 2, 1500, r#"{ kind = "passthrough" }"#);
    let mut dev = NetDevice::new(&me, SegmentKind::InProcess).unwrap();
    let mut sock = tcp_socket(RX_BUF);
    sock.listen(7).unwrap();
    let h = dev.sockets().add(sock);

    let (ch, ct) = spawn(&settings(
        "sender",
        &lan,
        &wan,
        1,
        1500,
        &format!(r#"{{ kind = "probe", tcp = ["10.0.0.2:7"], bytes = {TOTAL}, timeout = "60s" }}"#),
    ));

    let mut got = 0u64;
    let mut in_order = true;
    // First the reader pauses until its buffer is (all but) full: the
    // sender, with much more to send, must fill the window and then wait.
    let mut filled = false;
    let mut buf = vec![0u8; 4096];
    let t0 = Instant::now();
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        filled |= s.recv_queue() + 1500 >= RX_BUF;
        if filled && s.can_recv() && s.can_send() {
            let room = (s.send_capacity() - s.send_queue()).min(buf.len());
            let n = s.recv_slice(&mut buf[..room]).unwrap_or(0);
            for (i, b) in buf[..n].iter().enumerate() {
                in_order &= *b == pattern_byte(got + i as u64);
            }
            got += n as u64;
            // Echo back what was read, so the probe verifies it too.
            let sent = s.send_slice(&buf[..n]).unwrap_or(0);
            assert_eq!(sent, n, "echo room was checked");
            if n > 0 {
                // A slow reader.
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        if s.state() == tcp::State::CloseWait && s.send_queue() == 0 {
            s.close();
        }
        ch.finished() || t0.elapsed() > Duration::from_secs(90)
    });
    let report = wait_finished(&ch, Duration::from_secs(5));
    let ss = ch.stats();
    ch.stop();
    ct.join().unwrap();
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(
        report[0].contains(&format!("{TOTAL} bytes echoed intact")),
        "{report:?}"
    );
    assert_eq!(got, TOTAL, "the receiver saw every byte");
    assert!(in_order, "the receiver saw the bytes in order and intact");
    assert!(filled, "the paused receiver's buffer never filled");
    assert_eq!(ss.local.bad_descriptors, 0, "{ss:?}");
}

#[test]
fn unread_port_backpressures_sender_without_loss() {
    let name = unique("raw");
    let params = NetworkParams {
        buffers: 64,
        ..NetworkParams::new(1500)
    };
    let seg = Segment::open_or_create(&name, SegmentKind::InProcess, &params).unwrap();
    let mut a = seg.attach(&PortInfo::named("flooder")).unwrap();
    let mut b = seg.attach(&PortInfo::named("sleeper")).unwrap();
    let to = [b.peer()];

    // Flood until the pool is exhausted; B does not read.
    let mut sent = 0u32;
    while let Some(mut buf) = a.alloc() {
        let frame = a.buffer_mut(&mut buf);
        frame[..4].copy_from_slice(&sent.to_le_bytes());
        frame[4..64].fill(sent as u8);
        a.send(buf, 64, &to);
        a.flush();
        sent += 1;
        assert!(sent < 100_000, "alloc never ran out of buffers");
    }
    assert!(sent >= 1, "at least one frame fits");
    assert!(sent <= 64, "more frames in flight than buffers: {sent}");
    assert!(
        a.counters()
            .ring_full
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    // Still out of buffers while B sleeps.
    a.flush();
    assert!(a.alloc().is_none(), "buffers came back without B reading");

    // B drains: every frame arrives, once, in order.
    let mut out = vec![0u8; seg.frame_size()];
    let mut received = 0u32;
    let t0 = Instant::now();
    while received < sent {
        a.flush();
        while let Some((len, from)) = b.recv_into(&mut out) {
            assert_eq!(from, a.index());
            assert_eq!(len, 64);
            let seq = u32::from_le_bytes(out[..4].try_into().unwrap());
            assert_eq!(seq, received, "frames arrive in order, none lost");
            assert!(out[4..64].iter().all(|&x| x == seq as u8));
            received += 1;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{received}/{sent}");
    }
    a.flush();
    assert!(b.recv_into(&mut out).is_none(), "no extra frames");
    assert_eq!(received, sent);
    // Once drained, the sender has buffers again.
    assert!(a.alloc().is_some(), "buffers reclaimed after the drain");
    assert_eq!(
        b.counters()
            .bad_descriptors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
