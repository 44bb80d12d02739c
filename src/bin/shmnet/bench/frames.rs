//! Raw frames adapter to adapter through the shared-memory ports
//! (`bench frames`), against a Unix datagram socket pair.

use std::sync::Arc;
use std::time::Instant;

use shmnet::shm::{NetworkParams, Peer, Port, PortInfo, Segment, SegmentKind, mac_from_name};

use super::kernel::kernel_frames;
use super::peer::{PeerProc, Unlink};
use super::report::measure;
use super::{Mode, Res, TIMEOUT, unique};

/// Sends `count` frames of `size` bytes from `tx` to `to`.
fn send_frames(tx: &mut Port, to: Peer, size: usize, count: u64) -> Res<()> {
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < count {
        match tx.alloc() {
            Some(mut buf) => {
                let b = tx.buffer_mut(&mut buf);
                b[..size].fill(0x3c);
                b[..8.min(size)].copy_from_slice(&sent.to_le_bytes()[..8.min(size)]);
                tx.send(buf, size, &[to]);
                sent += 1;
                if sent.is_multiple_of(32) {
                    tx.flush();
                }
            }
            None => {
                tx.flush();
                std::hint::spin_loop();
                if start.elapsed() > TIMEOUT {
                    return Err(format!("sender stuck after {sent} frames"));
                }
            }
        }
    }
    while tx.backlog_len() > 0 {
        tx.flush();
        std::hint::spin_loop();
        if start.elapsed() > TIMEOUT {
            return Err("sender backlog never drained".into());
        }
    }
    tx.flush();
    Ok(())
}

/// Receives `count` frames; returns seconds from the first to the last.
pub(super) fn recv_frames(rx: &mut Port, size: usize, count: u64) -> Res<f64> {
    let mut buf = vec![0u8; rx.segment().frame_size()];
    let mut got = 0u64;
    let mut start = None;
    let mut idle_since = Instant::now();
    let mut empty = 0u64;
    while got < count {
        match rx.recv_into(&mut buf) {
            Some((len, _)) => {
                if len != size {
                    return Err(format!("frame of {len} bytes, expected {size}"));
                }
                if got == 0 {
                    start = Some(Instant::now());
                }
                got += 1;
                empty = 0;
                if got.is_multiple_of(32) {
                    rx.flush();
                }
            }
            None => {
                if empty == 0 {
                    idle_since = Instant::now();
                }
                empty += 1;
                rx.flush();
                std::hint::spin_loop();
                if empty.is_multiple_of(65536) && idle_since.elapsed() > TIMEOUT {
                    return Err(format!("receiver stuck after {got} frames"));
                }
            }
        }
    }
    rx.flush();
    Ok(start.map_or(0.0, |s| s.elapsed().as_secs_f64()))
}

fn frames_mtu(size: usize) -> u32 {
    (size as u32).clamp(576, 65535)
}

/// Opens (or creates) the network `name` for frames of `size` bytes and
/// attaches the sender's port.
fn sender(name: &str, kind: SegmentKind, size: usize) -> Res<(Arc<Segment>, Port)> {
    let params = NetworkParams::new(frames_mtu(size));
    let seg = Segment::open_or_create(name, kind, &params).map_err(|e| e.to_string())?;
    if size > seg.frame_size() {
        return Err(format!("size {size} > frame size {}", seg.frame_size()));
    }
    let tx = seg
        .attach(&PortInfo::named("tx"))
        .map_err(|e| e.to_string())?;
    Ok((seg, tx))
}

/// One shmnet frames run; returns frames per second (at the receiver).
fn shm_frames_run(size: usize, mode: Mode, count: u64) -> Res<f64> {
    let name = unique("frames");
    let mtu = frames_mtu(size);
    match mode {
        Mode::Thread => {
            let (seg, mut tx) = sender(&name, SegmentKind::InProcess, size)?;
            let mut rx = seg
                .attach(&PortInfo::named("rx"))
                .map_err(|e| e.to_string())?;
            let to = rx.peer();
            let t = std::thread::Builder::new()
                .name("bench-rx".into())
                .spawn(move || recv_frames(&mut rx, size, count))
                .map_err(|e| e.to_string())?;
            let s = send_frames(&mut tx, to, size, count);
            let r = t.join().map_err(|_| "receiver panicked")?;
            s?;
            let secs = r?;
            Ok(count as f64 / secs)
        }
        Mode::Process => {
            let _unlink = Unlink(vec![name.clone()]);
            let (seg, mut tx) = sender(&name, SegmentKind::Shared, size)?;
            let mut peer = PeerProc::spawn(&[
                "frames".into(),
                name.clone(),
                size.to_string(),
                count.to_string(),
                mtu.to_string(),
            ])?;
            let _ = &seg;
            let rx_mac = mac_from_name("rx");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let to = loop {
                tx.maintain();
                if let Some(p) = tx.peers().find(|p| p.info.mac == rx_mac) {
                    break Peer {
                        index: p.index,
                        epoch: p.epoch,
                    };
                }
                if std::time::Instant::now() > deadline {
                    return Err("bench-peer's port did not join within 10 s".into());
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            };
            send_frames(&mut tx, to, size, count)?;
            let line = peer.line()?;
            let rate = line
                .strip_prefix("rate ")
                .and_then(|r| r.parse::<f64>().ok())
                .ok_or_else(|| format!("bench-peer said {line:?}"))?;
            peer.finish()?;
            drop(tx);
            Ok(rate)
        }
    }
}

pub(super) fn bench_frames(
    size: usize,
    mode: Mode,
    count: Option<u64>,
    quick: bool,
    reps: usize,
) -> Res<String> {
    if size == 0 {
        return Err("--size must be positive".into());
    }
    let count = count
        .unwrap_or(if quick { 500_000 } else { 20_000_000 })
        .max(2);
    let kcount = (count / 4).max(2);
    let head = format!(
        "\"bench\":\"frames\",\"mode\":\"{}\",\"size\":{size}",
        mode.name()
    );
    measure(
        &head,
        "M frames/s",
        &format!(",\"count\":{count},\"kernel_count\":{kcount}"),
        reps,
        || shm_frames_run(size, mode, count).map(|r| r / 1e6),
        || kernel_frames(size, kcount).map(|r| r / 1e6),
    )
}
