//! A bridge between two adapters: every frame one receives, the other
//! sends. A TAP port is a bridge between a TAP interface
//! (`tap::TapAdapter`, feature `tap`) and a port of the segment
//! ([`super::shm::ShmAdapter`]): the segment switches frames to and from
//! the port by MAC like any device's, the TAP hands them to Linux.
//!
//! Back-pressure, not drops: a frame stays in its source until the other
//! side can lend a buffer. A frame too large for the other side is a
//! counted drop (`tx_unroutable` of the side it could not go out of).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Adapter, AdapterStats, Remote, sleep};
use crate::counters::bump;

/// Frames moved each way per round before the other way gets a turn.
const BURST: usize = 64;
/// Busy-poll this long without traffic before sleeping on both sides.
const SPIN: Duration = Duration::from_micros(200);
/// Sleep at most this long, so upkeep runs on a silent network.
const MAX_SLEEP: Duration = Duration::from_millis(200);
/// How often both adapters do their upkeep.
const MAINTAIN_EVERY: Duration = Duration::from_millis(500);

/// Two adapters whose frames cross over.
pub struct Bridge {
    sides: [Box<dyn Adapter>; 2],
    /// Room for a frame of either side.
    scratch: Vec<u8>,
}

impl Bridge {
    /// Bridges `a` and `b` (both of the same medium).
    pub fn new(a: Box<dyn Adapter>, b: Box<dyn Adapter>) -> Bridge {
        let room = a.frame_capacity().max(b.frame_capacity());
        Bridge {
            sides: [a, b],
            scratch: vec![0; room],
        }
    }

    /// The two adapters.
    pub fn sides(&self) -> [&dyn Adapter; 2] {
        [self.sides[0].as_ref(), self.sides[1].as_ref()]
    }

    /// One round: moves what waits each way (up to a burst each), then
    /// flushes both. Returns whether a frame moved.
    pub fn poll(&mut self) -> bool {
        let [a, b] = &mut self.sides;
        let moved = pump(a.as_mut(), b.as_mut(), &mut self.scratch)
            + pump(b.as_mut(), a.as_mut(), &mut self.scratch);
        a.flush();
        b.flush();
        moved > 0
    }

    /// Runs until `stop` is set: busy-polls while frames flow, sleeps on
    /// both adapters when they do not.
    pub fn run(&mut self, stop: &AtomicBool) {
        let mut last_progress = Instant::now();
        let mut last_maintain = last_progress;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            if self.poll() {
                last_progress = t;
                continue;
            }
            if t.duration_since(last_maintain) >= MAINTAIN_EVERY {
                last_maintain = t;
                for s in &mut self.sides {
                    s.maintain();
                }
            }
            if t.duration_since(last_progress) < SPIN {
                std::thread::yield_now();
                continue;
            }
            let [a, b] = &self.sides;
            sleep(&[a.prepare_sleep(), b.prepare_sleep()], Some(MAX_SLEEP));
            a.end_sleep();
            b.end_sleep();
        }
    }

    /// Runs the bridge on its own thread until the handle stops it.
    pub fn spawn(mut self, name: &str) -> std::io::Result<BridgeHandle> {
        let stop = Arc::new(AtomicBool::new(false));
        let remotes = [self.sides[0].remote(), self.sides[1].remote()];
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("bridge-{name}"))
            .spawn(move || {
                self.run(&flag);
                self
            })?;
        Ok(BridgeHandle {
            stop,
            remotes,
            thread: Some(thread),
        })
    }
}

/// Moves up to a burst of frames from `src` to `dst`; returns how many.
fn pump(src: &mut dyn Adapter, dst: &mut dyn Adapter, scratch: &mut [u8]) -> usize {
    let mut moved = 0;
    while moved < BURST {
        let Some(mut lease) = dst.lend() else { break };
        let buf = dst.buffer(&mut lease);
        let len = if buf.len() >= src.frame_capacity() {
            src.recv_into(buf)
        } else {
            // The other side's frames may be larger than ours.
            match src.recv_into(scratch) {
                Some(len) if len <= buf.len() => {
                    buf[..len].copy_from_slice(&scratch[..len]);
                    Some(len)
                }
                Some(_) => {
                    bump(&dst.counters().tx_unroutable, 1);
                    dst.release(lease);
                    moved += 1;
                    continue;
                }
                None => None,
            }
        };
        match len {
            Some(len) => dst.commit(lease, len),
            None => {
                dst.release(lease);
                break;
            }
        }
        moved += 1;
    }
    moved
}

/// A running bridge: read its counters, stop it.
pub struct BridgeHandle {
    stop: Arc<AtomicBool>,
    remotes: [Arc<dyn Remote>; 2],
    thread: Option<JoinHandle<Bridge>>,
}

impl BridgeHandle {
    /// The two adapters' counters, live.
    pub fn stats(&self) -> [AdapterStats; 2] {
        [self.remotes[0].stats(), self.remotes[1].stats()]
    }

    /// Stops the bridge and returns it (with its adapters, still open).
    pub fn stop(mut self) -> Option<Bridge> {
        self.halt()
    }

    fn halt(&mut self) -> Option<Bridge> {
        self.stop.store(true, Ordering::Relaxed);
        for r in &self.remotes {
            r.wake();
        }
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for BridgeHandle {
    fn drop(&mut self) {
        self.halt();
    }
}
