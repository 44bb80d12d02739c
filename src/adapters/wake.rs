//! Sleeping until any of a device's adapters has work.
//!
//! Each adapter says what wakes it ([`Wake`]): a futex word a peer bumps in
//! shared memory (the shm port's doorbell), or a descriptor that becomes
//! readable (an eventfd, as memif uses, or a TAP or UDP socket). [`sleep`]
//! waits on all of them at once: one `futex_waitv` when they are all
//! futexes, one `poll` when they are all descriptors, and short alternating
//! waits when they are mixed.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::thread::futex;
use rustix::time::{ClockId, Timespec};

/// What wakes a device sleeping on one adapter.
#[derive(Debug)]
pub enum Wake<'a> {
    /// Work is already waiting: do not sleep.
    Ready,
    /// Sleep while this word (in memory shared with the peers) still holds
    /// `expected`; a peer changes it and wakes the futex.
    Futex {
        /// The futex word.
        word: &'a AtomicU32,
        /// The value it holds while there is nothing to do.
        expected: u32,
    },
    /// Sleep until this descriptor is readable.
    Readable(BorrowedFd<'a>),
}

/// When futexes and descriptors are mixed, each is waited on this long in
/// turn.
const MIXED_SLICE: Duration = Duration::from_micros(500);

/// Sleeps until one of `wakes` fires or `timeout` passes (`None`: no limit).
/// Spurious wake-ups are possible; callers simply poll again.
pub fn sleep(wakes: &[Wake<'_>], timeout: Option<Duration>) {
    let mut words = Vec::new();
    let mut fds = Vec::new();
    for w in wakes {
        match w {
            Wake::Ready => return,
            Wake::Futex { word, expected } => words.push((*word, *expected)),
            Wake::Readable(fd) => fds.push(*fd),
        }
    }
    match (words.is_empty(), fds.is_empty()) {
        (true, true) => std::thread::sleep(timeout.unwrap_or(MIXED_SLICE)),
        (false, true) => wait_futexes(&words, timeout),
        (true, false) => {
            wait_readable(&fds, timeout);
        }
        (false, false) => {
            let start = Instant::now();
            loop {
                if wait_readable(&fds, Some(MIXED_SLICE))
                    || words.iter().any(|(w, e)| w.load(Ordering::Acquire) != *e)
                    || timeout.is_some_and(|t| start.elapsed() >= t)
                {
                    return;
                }
                wait_futexes(&words, Some(MIXED_SLICE));
            }
        }
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// Waits until one descriptor is readable; returns whether one is.
fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> bool {
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let rel = timeout.map(timespec);
    matches!(rustix::event::poll(&mut polled, rel.as_ref()), Ok(n) if n > 0)
}

/// Waits while every word still holds its expected value. Futexes are
/// shared (no `PRIVATE` flag): the peers may be other processes.
fn wait_futexes(words: &[(&AtomicU32, u32)], timeout: Option<Duration>) {
    let rel = timeout.map(timespec);
    if let [(word, expected)] = words {
        let _ = futex::wait(word, futex::Flags::empty(), *expected, rel.as_ref());
        return;
    }
    let waits: Vec<futex::Wait> = words
        .iter()
        .map(|&(word, expected)| {
            let mut w = futex::Wait::new();
            w.val = expected as u64;
            w.uaddr = futex::WaitPtr::new(word as *const AtomicU32 as *mut std::ffi::c_void);
            w.flags = futex::WaitFlags::SIZE_U32;
            w
        })
        .collect();
    // futex_waitv takes an absolute CLOCK_MONOTONIC deadline.
    let abs = timeout.map(|t| {
        let now = rustix::time::clock_gettime(ClockId::Monotonic);
        timespec(Duration::new(now.tv_sec as u64, now.tv_nsec as u32).saturating_add(t))
    });
    let r = futex::waitv(
        &waits,
        futex::WaitvFlags::empty(),
        abs.as_ref(),
        ClockId::Monotonic,
    );
    if r == Err(rustix::io::Errno::NOSYS) {
        // Kernels before 5.16: watch the first word, bounded so the others
        // are still served promptly.
        let cap = timespec(Duration::from_micros(200));
        let (word, expected) = words[0];
        let _ = futex::wait(word, futex::Flags::empty(), expected, Some(&cap));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_returns_at_once_and_a_changed_word_wakes() {
        let t = Instant::now();
        sleep(&[Wake::Ready], Some(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(1));
        let (a, b) = (AtomicU32::new(1), AtomicU32::new(7));
        // `b` no longer holds the expected value: the wait ends at once.
        let t = Instant::now();
        sleep(
            &[
                Wake::Futex {
                    word: &a,
                    expected: 1,
                },
                Wake::Futex {
                    word: &b,
                    expected: 6,
                },
            ],
            Some(Duration::from_secs(5)),
        );
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_readable_eventfd_wakes_a_mixed_sleep() {
        use rustix::event::{EventfdFlags, eventfd};
        let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
        rustix::io::write(&efd, &1u64.to_ne_bytes()).unwrap();
        let word = AtomicU32::new(0);
        let t = Instant::now();
        use std::os::fd::AsFd;
        sleep(
            &[
                Wake::Futex {
                    word: &word,
                    expected: 0,
                },
                Wake::Readable(efd.as_fd()),
            ],
            Some(Duration::from_secs(5)),
        );
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
