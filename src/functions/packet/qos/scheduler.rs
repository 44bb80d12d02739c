//! One direction's link: a queue per class, token buckets (per class and
//! for the link), strict priority between levels and deficit round robin
//! (Shreedhar and Varghese) within one.
//!
//! A class takes part when it has frames and its bucket allows its head
//! frame, so a backlogged but rate-limited high-priority class never
//! blocks the lower levels (HTB's behaviour, not `tc prio`'s).

use smoltcp::time::{Duration, Instant};

use super::queue::Ring;

/// The DRR quantum unit: one full-size Ethernet frame, or the largest
/// frame queued so far if bigger (so one quantum always covers a frame).
const MIN_QUANTUM_UNIT: usize = 1514;
/// Token units per byte: 8 bits × 10^6, so that a rate (bit/s) times an
/// interval in microseconds is a number of units, in integers.
const UNITS_PER_BYTE: i64 = 8_000_000;

/// A token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rate {
    /// Bits per second.
    pub bits: u64,
    /// Bucket size in bytes.
    pub burst: u64,
}

/// How a class is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shape {
    /// 0 (served first) ..= 15.
    pub priority: u32,
    /// DRR share within the priority level.
    pub weight: u32,
    /// Its own token bucket, if shaped.
    pub rate: Option<Rate>,
    /// Queue size in bytes.
    pub queue: usize,
}

/// A token bucket in units of 10^-6 bit (see [`UNITS_PER_BYTE`]).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    rate: Rate,
    burst: i64,
    tokens: i64,
    last: Instant,
}

impl Bucket {
    fn new(rate: Rate) -> Bucket {
        let burst = rate.burst as i64 * UNITS_PER_BYTE;
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::ZERO,
        }
    }

    /// Adds the tokens earned since the last refill. Time going backwards
    /// earns nothing.
    #[inline]
    fn refill(&mut self, now: Instant) {
        if now <= self.last {
            return;
        }
        let us = (now - self.last).total_micros();
        // Earn at most what fills the bucket (tokens may be negative).
        let room = (self.burst - self.tokens).max(0) as u128;
        let earned = (u128::from(self.rate.bits) * u128::from(us)).min(room) as i64;
        self.tokens += earned;
        self.last = now;
    }

    /// What a frame of `len` bytes needs: all of it, or a full bucket when
    /// it is bigger than the burst. A bigger frame leaves once the bucket
    /// is full (which then goes negative), so any frame works with any
    /// burst.
    #[inline]
    fn need(&self, len: usize) -> i64 {
        (len as u64).min(self.rate.burst) as i64 * UNITS_PER_BYTE
    }

    #[inline]
    fn allows(&self, len: usize) -> bool {
        self.tokens >= self.need(len)
    }

    #[inline]
    fn take(&mut self, len: usize) {
        self.tokens = self.tokens.saturating_sub(len as i64 * UNITS_PER_BYTE);
    }

    /// When (after the last refill) the bucket allows `len` bytes.
    fn ready_at(&self, len: usize) -> Instant {
        let missing = self.need(len) - self.tokens;
        if missing <= 0 {
            return self.last;
        }
        let us = (missing as u64).div_ceil(self.rate.bits);
        self.last + Duration::from_micros(us)
    }

    /// This bucket's tokens and time with `rate` (for a reconfiguration).
    fn retuned(&self, rate: Rate) -> Bucket {
        let mut b = Bucket::new(rate);
        b.tokens = self.tokens.min(b.burst);
        b.last = self.last;
        b
    }
}

/// A class's state on one link.
#[derive(Debug)]
struct ClassQueue {
    ring: Ring,
    bucket: Option<Bucket>,
    weight: i64,
    deficit: i64,
}

/// One priority level's DRR state.
#[derive(Debug, Clone)]
struct Level {
    members: Vec<usize>,
    /// Frames queued in the level's classes (0: skip the level at once).
    frames: usize,
    cursor: usize,
    /// The class at `cursor` already got its quantum this turn.
    granted: bool,
}

impl Level {
    fn advance(&mut self) {
        // No division: this runs for every packet.
        self.cursor += 1;
        if self.cursor == self.members.len() {
            self.cursor = 0;
        }
        self.granted = false;
    }
}

/// A frame [`Link::dequeue`] took from a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dequeued {
    pub class: usize,
    pub len: usize,
    /// It was copied out (else it did not fit there and is discarded).
    pub copied: bool,
}

/// One direction's link: a queue per class, the link bucket, the scheduler.
#[derive(Debug)]
pub(super) struct Link {
    queues: Vec<ClassQueue>,
    bucket: Option<Bucket>,
    levels: Vec<Level>,
    /// Each class's index in `levels`.
    level_of: Vec<usize>,
    quantum_unit: usize,
}

impl Link {
    pub fn new(shapes: &[Shape], link: Option<Rate>) -> Link {
        let mut prios: Vec<u32> = shapes.iter().map(|s| s.priority).collect();
        prios.sort_unstable();
        prios.dedup();
        let levels = prios
            .iter()
            .map(|&p| Level {
                members: (0..shapes.len())
                    .filter(|&i| shapes[i].priority == p)
                    .collect(),
                frames: 0,
                cursor: 0,
                granted: false,
            })
            .collect();
        let level_of = shapes
            .iter()
            .map(|s| prios.iter().position(|&p| p == s.priority).unwrap_or(0))
            .collect();
        Link {
            queues: shapes
                .iter()
                .map(|s| ClassQueue {
                    ring: Ring::new(s.queue),
                    bucket: s.rate.map(Bucket::new),
                    weight: i64::from(s.weight),
                    deficit: 0,
                })
                .collect(),
            bucket: link.map(Bucket::new),
            levels,
            level_of,
            quantum_unit: MIN_QUANTUM_UNIT,
        }
    }

    /// Bytes queued in class `c`.
    #[inline]
    pub fn queued_bytes(&self, c: usize) -> usize {
        self.queues[c].ring.used()
    }

    /// Frames queued in all classes.
    pub fn queued_frames(&self) -> usize {
        self.levels.iter().map(|l| l.frames).sum()
    }

    /// Whether class `c`'s queue has room for `len` bytes.
    #[inline]
    pub fn fits(&self, c: usize, len: usize) -> bool {
        self.queues[c].ring.fits(len)
    }

    /// Queues a frame in class `c`; `false` if it has no room.
    #[inline]
    pub fn enqueue(&mut self, c: usize, frame: &[u8]) -> bool {
        if !self.queues[c].ring.push(frame) {
            return false;
        }
        self.levels[self.level_of[c]].frames += 1;
        self.quantum_unit = self.quantum_unit.max(frame.len());
        true
    }

    /// The class whose head frame goes next, by strict priority then DRR;
    /// refills the buckets it looks at.
    #[inline]
    fn select(&mut self, now: Instant) -> Option<usize> {
        let unit = self.quantum_unit as i64;
        for level in &mut self.levels {
            if level.frames == 0 {
                continue;
            }
            let n = level.members.len();
            // One turn round the level grants every eligible class a
            // quantum, which covers any frame: 2n + 1 steps always suffice.
            for _ in 0..2 * n + 1 {
                let c = level.members[level.cursor];
                let q = &mut self.queues[c];
                let Some(head) = q.ring.front_len() else {
                    q.deficit = 0;
                    level.advance();
                    continue;
                };
                if let Some(b) = &mut q.bucket {
                    b.refill(now);
                    if !b.allows(head) {
                        // Held back by its own rate: like an idle class it
                        // keeps no credit, or credit would pile up turn
                        // after turn and later let it hog the level.
                        q.deficit = 0;
                        level.advance();
                        continue;
                    }
                }
                if !level.granted {
                    q.deficit += q.weight * unit;
                    level.granted = true;
                }
                if head as i64 <= q.deficit {
                    return Some(c);
                }
                level.advance();
            }
        }
        None
    }

    /// Takes the next frame in scheduler order and copies it into `out`
    /// (if it fits there); `None` when nothing may leave yet.
    #[inline]
    pub fn dequeue(&mut self, now: Instant, out: &mut [u8]) -> Option<Dequeued> {
        let c = self.select(now)?;
        let head = self.queues[c].ring.front_len()?;
        if let Some(b) = &mut self.bucket {
            b.refill(now);
            if !b.allows(head) {
                return None;
            }
            b.take(head);
        }
        let q = &mut self.queues[c];
        let len = q.ring.pop_into(out)?;
        self.levels[self.level_of[c]].frames -= 1;
        q.deficit -= len as i64;
        if let Some(b) = &mut q.bucket {
            b.take(len);
        }
        if q.ring.front_len().is_none() {
            q.deficit = 0;
            let level = &mut self.levels[self.level_of[c]];
            if level.members[level.cursor] == c {
                level.advance();
            }
        }
        Some(Dequeued {
            class: c,
            len,
            copied: len <= out.len(),
        })
    }

    /// When the next backlogged class can send (not before `now`).
    pub fn ready_at(&self, now: Instant) -> Option<Instant> {
        let mut best: Option<(Instant, usize)> = None;
        for q in &self.queues {
            let Some(head) = q.ring.front_len() else {
                continue;
            };
            let at = q.bucket.map_or(now, |b| b.ready_at(head).max(now));
            if best.is_none_or(|(t, _)| at < t) {
                best = Some((at, head));
            }
        }
        let (at, head) = best?;
        Some(self.bucket.map_or(at, |b| b.ready_at(head).max(at)))
    }

    /// Takes over the state of `old`, the same direction's link under the
    /// previous configuration: bucket levels, DRR credit and queued frames.
    /// `target[i]` is the new index of old class `i` (`None`: it is gone,
    /// its frames move to class `default`). Returns the frames that found
    /// no room (discarded).
    pub fn take_over(&mut self, old: &mut Link, target: &[Option<usize>], default: usize) -> u64 {
        if let (Some(o), Some(n)) = (&old.bucket, &self.bucket) {
            self.bucket = Some(o.retuned(n.rate));
        }
        self.quantum_unit = old.quantum_unit;
        let mut discarded = 0;
        let mut scratch = Vec::new();
        for (oq, &ni) in old.queues.iter_mut().zip(target) {
            let nq = &mut self.queues[ni.unwrap_or(default)];
            if ni.is_some() {
                if let (Some(o), Some(n)) = (&oq.bucket, &nq.bucket) {
                    nq.bucket = Some(o.retuned(n.rate));
                }
                nq.deficit = oq.deficit;
                if nq.ring.cap() == oq.ring.cap() && nq.ring.used() == 0 {
                    std::mem::swap(&mut nq.ring, &mut oq.ring);
                }
            }
            while let Some(len) = oq.ring.front_len() {
                scratch.resize(scratch.len().max(len), 0);
                oq.ring.pop_into(&mut scratch);
                if !nq.ring.push(&scratch[..len]) {
                    discarded += 1;
                }
            }
        }
        for level in &mut self.levels {
            level.frames = level
                .members
                .iter()
                .map(|&c| self.queues[c].ring.frames())
                .sum();
        }
        discarded
    }
}
