//! Sleeping until a peer rings one of several doorbells.
//!
//! Each port has a futex word (its doorbell) and a sleeping flag in its
//! directory entry. A port about to sleep sets the flag
//! ([`Port::prepare_sleep`]), checks once more for work
//! ([`Port::rx_pending`]) and waits on the doorbell's value; a peer that
//! published frames or freed slots for it rings the doorbell if the flag
//! is set ([`Port::flush`]). The two sequentially consistent fences (after
//! setting the flag, after publishing) make sure that either the sleeper
//! sees the new work or the peer sees the flag, so no wake-up is lost.
//!
//! Contract: [`wait_any`] returns at once if work is waiting, otherwise
//! after a doorbell rings or the timeout passes; spurious returns are
//! possible and callers simply poll again.
//!
//! ```
//! use std::time::Duration;
//! use shmnet::shm::{wait_any, NetworkParams, PortInfo, Segment, SegmentKind};
//! let seg = Segment::open_or_create("doc-wake", SegmentKind::Process, &NetworkParams::new(1500)).unwrap();
//! let mut a = seg.attach(&PortInfo::named("a")).unwrap();
//! let mut b = seg.attach(&PortInfo::named("b")).unwrap();
//! let buf = a.alloc().unwrap();
//! a.send(buf, 60, &[b.peer()]);
//! a.flush(); // b has a frame waiting: wait_any returns at once
//! wait_any(&mut [&mut b], Some(Duration::from_secs(10)));
//! assert!(b.rx_pending());
//! ```

use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::thread::futex;

use super::Port;

/// Sleeps until a peer rings the doorbell of any of `ports`, or `timeout`
/// passes (`None`: until rung). Returns at once if a frame is already
/// waiting. Spurious wake-ups are possible; callers simply poll again.
pub fn wait_any(ports: &mut [&mut Port], timeout: Option<Duration>) {
    let seqs: Vec<u32> = ports.iter().map(|p| p.prepare_sleep()).collect();
    if ports.iter().any(|p| p.rx_pending()) {
        ports.iter().for_each(|p| p.end_sleep());
        return;
    }
    let rel = timeout.map(|d| rustix::time::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos() as _,
    });
    if ports.len() == 1 {
        let _ = futex::wait(
            ports[0].doorbell(),
            futex::Flags::empty(),
            seqs[0],
            rel.as_ref(),
        );
    } else {
        let waits: Vec<futex::Wait> = ports
            .iter()
            .zip(&seqs)
            .map(|(p, &seq)| {
                let mut w = futex::Wait::new();
                w.val = seq as u64;
                w.uaddr = futex::WaitPtr::new(p.doorbell() as *const _ as *mut _);
                w.flags = futex::WaitFlags::SIZE_U32;
                w
            })
            .collect();
        // futex_waitv takes an absolute CLOCK_MONOTONIC deadline.
        let abs = rel.map(|r| {
            let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
            let mut s = now.tv_sec.saturating_add(r.tv_sec);
            let mut ns = now.tv_nsec + r.tv_nsec;
            if ns >= 1_000_000_000 {
                ns -= 1_000_000_000;
                s = s.saturating_add(1);
            }
            rustix::time::Timespec {
                tv_sec: s,
                tv_nsec: ns,
            }
        });
        let r = futex::waitv(
            &waits,
            futex::WaitvFlags::empty(),
            abs.as_ref(),
            rustix::time::ClockId::Monotonic,
        );
        if r == Err(rustix::io::Errno::NOSYS) {
            // Kernels before 5.16: watch the first doorbell, bounded so the
            // others are still served promptly.
            let cap = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 200_000,
            };
            let _ = futex::wait(
                ports[0].doorbell(),
                futex::Flags::empty(),
                seqs[0],
                Some(&cap),
            );
        }
    }
    for p in ports.iter() {
        p.end_sleep();
        let _ = p.doorbell().load(Ordering::Relaxed);
    }
}
