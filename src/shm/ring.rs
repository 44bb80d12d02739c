//! Rings: the memif-style single-producer/single-consumer descriptor ring
//! that carries one link's frames.
//!
//! A ring is a 128-byte header (cookie; the producer's `head` and the
//! consumer's `tail` on cache lines of their own, both free-running `u32`s)
//! followed by a power-of-two number of 16-byte descriptors (see
//! [`layout`](super::layout) for both formats). The producer writes a
//! descriptor into slot `head & mask` and then publishes `head`; the
//! consumer reads slots up to `head` and then publishes `tail`. Only a
//! descriptor moves: the frame stays in a buffer of the producer's pool.
//!
//! Contract: the producer alone writes `head` and the slots, the consumer
//! alone writes `tail`; each end keeps its own indices in local memory
//! ([`Producer`], [`Consumer`]) and treats what the other end wrote as
//! hostile. A `tail` the producer never allowed, a `head` more than a ring
//! ahead, or a bad cookie is counted as a corrupt ring (and the consumer
//! resynchronises to the producer's `head`); a descriptor is parsed with
//! [`DescriptorRepr::parse`] before anything it names is touched. Nothing
//! here panics on what a peer wrote. Indices are published in batches
//! ([`PUBLISH_BATCH`]) and at every flush.
//!
//! This module knows rings only; links, ports and wake-ups are
//! [`Port`](super::Port)'s. It is crate-private: the unit tests at the end
//! show a producer and a consumer at work, and the public face of a ring is
//! [`Port::send`](super::Port::send) / [`Port::recv_into`](super::Port::recv_into).

use std::collections::VecDeque;
use std::collections::vec_deque::Drain;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::layout::{
    DESC_LEN, Descriptor, DescriptorRepr, HeaderRepr, RING_COOKIE, RING_HEADER_LEN, field,
};
use super::region::Region;

/// Ring indices are published every this many frames, and at a flush.
pub(crate) const PUBLISH_BATCH: u32 = 32;

/// Initialises the ring at `ring` (an offset from the layout) for a new
/// link: cookie set, both indices zero. Only the link's claimer calls it,
/// before it publishes the link.
pub(crate) fn reset(region: &Region, ring: usize) {
    region
        .atomic_u32(ring + field::ring::COOKIE)
        .store(RING_COOKIE, Ordering::Relaxed);
    region
        .atomic_u32(ring + field::ring::HEAD)
        .store(0, Ordering::Relaxed);
    region
        .atomic_u32(ring + field::ring::TAIL)
        .store(0, Ordering::Relaxed);
}

/// The producer's end of one ring, in local memory.
#[derive(Debug)]
pub(crate) struct Producer {
    /// Offset of the ring header in the region.
    ring: usize,
    /// The pool the descriptors name (the producer's port index).
    region: u16,
    /// Next slot to fill (local; published to the ring as `published`).
    head: u32,
    published: u32,
    /// The consumer's tail as last read for space checks: re-read only when
    /// the ring looks full, so the hot path stays off the consumer's line.
    tail_cache: u32,
    /// The tail up to which buffers have been handed back.
    tail_seen: u32,
    /// Buffers in the ring, oldest first.
    inflight: VecDeque<u32>,
}

impl Producer {
    /// The producing end of a ring just [`reset`].
    pub(crate) fn new(ring: usize, region: u16) -> Producer {
        Producer {
            ring,
            region,
            head: 0,
            published: 0,
            tail_cache: 0,
            tail_seen: 0,
            inflight: VecDeque::new(),
        }
    }

    /// Buffers named by descriptors the consumer has not passed yet.
    pub(crate) fn in_flight(&self) -> impl Iterator<Item = u32> + '_ {
        self.inflight.iter().copied()
    }

    pub(crate) fn in_flight_len(&self) -> usize {
        self.inflight.len()
    }
}

/// The consumer's end of one ring, in local memory.
#[derive(Debug)]
pub(crate) struct Consumer {
    /// Offset of the ring header in the region.
    ring: usize,
    /// Next slot to read.
    tail: u32,
    /// Tail value last stored to the ring.
    published: u32,
    /// The producer's head as last read.
    head_seen: u32,
}

/// What [`Rings::pop`] found in the next slot.
pub(crate) enum Pop {
    /// Nothing published (or the ring was resynchronised).
    Empty,
    /// A descriptor that passed [`DescriptorRepr::parse`]; its slot is
    /// consumed.
    Frame(DescriptorRepr),
    /// A descriptor that failed it; its slot is consumed.
    Bad,
}

/// The rings of one segment as a port's ends see them: where they are, how
/// big, and where corruption is counted. Built per operation from borrowed
/// fields, so a link's [`Producer`]/[`Consumer`] can be borrowed mutably
/// alongside it.
#[derive(Clone, Copy)]
pub(crate) struct Rings<'a> {
    region: &'a Region,
    geo: &'a HeaderRepr,
    slots: u32,
    mask: u32,
    /// Counts indices a peer wrote out of range.
    corrupt: &'a AtomicU64,
}

impl<'a> Rings<'a> {
    #[inline]
    pub(crate) fn new(region: &'a Region, geo: &'a HeaderRepr, corrupt: &'a AtomicU64) -> Self {
        Rings {
            region,
            geo,
            slots: geo.ring_slots,
            mask: geo.ring_slots - 1,
            corrupt,
        }
    }

    #[inline]
    fn u32(&self, ring: usize, field: usize) -> &'a AtomicU32 {
        self.region.atomic_u32(ring + field)
    }

    /// Offset of the slot that index `i` falls on.
    #[inline]
    fn slot(&self, ring: usize, i: u32) -> usize {
        ring + RING_HEADER_LEN + (i & self.mask) as usize * DESC_LEN
    }

    fn count_corrupt(&self) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
    }

    /// Stores this end's index `local` into the ring's word `field`, unless
    /// `published` says it is there already.
    #[inline]
    fn publish_index(&self, ring: usize, field: usize, local: u32, published: &mut u32) {
        if *published != local {
            *published = local;
            self.u32(ring, field).store(local, Ordering::Release);
        }
    }

    // ---- producer ----

    /// Writes a descriptor for `buffer` (`len` bytes) into the next slot;
    /// `false` if the ring is full (or its tail is garbage).
    #[inline]
    pub(crate) fn push(&self, p: &mut Producer, buffer: u32, len: u32) -> bool {
        if p.head.wrapping_sub(p.tail_cache) >= self.slots {
            let tail = self.u32(p.ring, field::ring::TAIL).load(Ordering::Acquire);
            let used = p.head.wrapping_sub(tail);
            if used > self.slots {
                // The consumer wrote a tail we never allowed: ignore it.
                self.count_corrupt();
                return false;
            }
            p.tail_cache = tail;
            if used == self.slots {
                return false;
            }
        }
        let mut d = [0u8; DESC_LEN];
        DescriptorRepr {
            region: p.region,
            buffer,
            length: len,
            metadata: 0,
        }
        .emit(&mut Descriptor::new_unchecked(&mut d[..]), self.geo);
        self.region.write(self.slot(p.ring, p.head), &d);
        p.head = p.head.wrapping_add(1);
        p.inflight.push_back(buffer);
        if p.head.wrapping_sub(p.published) >= PUBLISH_BATCH {
            self.publish(p);
        }
        true
    }

    /// Publishes the slots written since the last publish.
    #[inline]
    pub(crate) fn publish(&self, p: &mut Producer) {
        self.publish_index(p.ring, field::ring::HEAD, p.head, &mut p.published);
    }

    /// Reads the consumer's tail and hands back the buffers of the slots it
    /// passed, oldest first. A tail claiming more than was sent is counted
    /// as corrupt and trusted only as far as what is known to be in the
    /// ring.
    pub(crate) fn reclaim<'p>(&self, p: &'p mut Producer) -> Drain<'p, u32> {
        let tail = self.u32(p.ring, field::ring::TAIL).load(Ordering::Acquire);
        let mut done = tail.wrapping_sub(p.tail_seen) as usize;
        if done > p.inflight.len() {
            self.count_corrupt();
            done = p.inflight.len();
        }
        p.tail_seen = p.tail_seen.wrapping_add(done as u32);
        p.tail_cache = p.tail_seen;
        p.inflight.drain(..done)
    }

    // ---- consumer ----

    /// The consuming end of the ring at `ring`, starting at its current
    /// tail. A ring without the cookie is counted as corrupt (and used
    /// anyway: every descriptor is validated).
    pub(crate) fn consumer(&self, ring: usize) -> Consumer {
        if self.u32(ring, field::ring::COOKIE).load(Ordering::Relaxed) != RING_COOKIE {
            self.count_corrupt();
        }
        let tail = self.u32(ring, field::ring::TAIL).load(Ordering::Acquire);
        Consumer {
            ring,
            tail,
            published: tail,
            head_seen: tail,
        }
    }

    /// Takes the next slot, validating its descriptor against the pool of
    /// port `src`. The slot's buffer stays untouched by the producer until
    /// the tail is published (by [`Rings::publish_tail`]), so the caller
    /// may read it until then.
    #[inline]
    pub(crate) fn pop(&self, c: &mut Consumer, src: u32) -> Pop {
        if c.tail == c.head_seen {
            let head = self.u32(c.ring, field::ring::HEAD).load(Ordering::Acquire);
            let avail = head.wrapping_sub(c.tail);
            if avail == 0 {
                return Pop::Empty;
            }
            if avail > self.slots {
                // Garbage indices: resynchronise to the producer's head
                // rather than read slots that were never written.
                self.count_corrupt();
                c.tail = head;
                c.head_seen = head;
                c.published = head;
                self.u32(c.ring, field::ring::TAIL)
                    .store(head, Ordering::Release);
                return Pop::Empty;
            }
            c.head_seen = head;
        }
        let at = self.slot(c.ring, c.tail);
        c.tail = c.tail.wrapping_add(1);
        let mut d = [0u8; DESC_LEN];
        self.region.read(at, &mut d);
        match DescriptorRepr::parse(&Descriptor::new_unchecked(&d[..]), self.geo, src) {
            Ok(r) => Pop::Frame(r),
            Err(_) => Pop::Bad,
        }
    }

    /// Publishes the tail if a batch's worth of slots was consumed.
    #[inline]
    pub(crate) fn publish_tail_batched(&self, c: &mut Consumer) {
        if c.tail.wrapping_sub(c.published) >= PUBLISH_BATCH {
            self.publish_tail(c);
        }
    }

    /// Publishes the tail: the producer may reuse the slots (and buffers)
    /// consumed so far.
    #[inline]
    pub(crate) fn publish_tail(&self, c: &mut Consumer) {
        self.publish_index(c.ring, field::ring::TAIL, c.tail, &mut c.published);
    }

    /// Has the producer published slots this end has not taken?
    #[inline]
    pub(crate) fn pending(&self, c: &Consumer) -> bool {
        self.u32(c.ring, field::ring::HEAD).load(Ordering::Acquire) != c.tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::layout::LinkMedium;

    /// Runs `f` on ring 0 (8 slots, just reset) of a fresh segment's
    /// memory, with both ends (the producer is port 1) and the corruption
    /// counter.
    fn with_ring(f: impl FnOnce(&Region, usize, Rings, Producer, Consumer, &AtomicU64)) {
        let geo = HeaderRepr::new(1500, LinkMedium::Ethernet, 4, 4, 8, 0).unwrap();
        let region = Region::anonymous(geo.total_len as usize).unwrap();
        let ring = geo.ring_off(0);
        reset(&region, ring);
        let corrupt = AtomicU64::new(0);
        let rings = Rings::new(&region, &geo, &corrupt);
        let c = rings.consumer(ring);
        f(&region, ring, rings, Producer::new(ring, 1), c, &corrupt);
    }

    fn frame(pop: Pop) -> (u32, u32) {
        match pop {
            Pop::Frame(r) => (r.buffer, r.length),
            Pop::Empty => panic!("empty"),
            Pop::Bad => panic!("bad descriptor"),
        }
    }

    #[test]
    fn frames_pass_in_order_and_a_full_ring_pushes_back() {
        with_ring(|_, _, rings, mut p, mut c, corrupt| {
            for b in 0..8 {
                assert!(rings.push(&mut p, b, 60 + b));
            }
            assert!(!rings.push(&mut p, 0, 60), "the ring holds 8");
            assert!(!rings.pending(&c), "nothing published before the batch");
            rings.publish(&mut p);
            assert!(rings.pending(&c));
            for b in 0..8 {
                assert_eq!(frame(rings.pop(&mut c, 1)), (b, 60 + b));
            }
            assert!(matches!(rings.pop(&mut c, 1), Pop::Empty));
            assert_eq!(rings.reclaim(&mut p).count(), 0, "tail not published");
            rings.publish_tail(&mut c);
            assert_eq!(
                rings.reclaim(&mut p).collect::<Vec<_>>(),
                (0..8).collect::<Vec<_>>()
            );
            assert!(rings.push(&mut p, 3, 64));
            assert_eq!(corrupt.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn what_the_other_end_scribbles_is_counted_not_trusted() {
        with_ring(|region, ring, rings, mut p, mut c, corrupt| {
            rings.push(&mut p, 0, 60);
            rings.publish(&mut p);
            // A descriptor checked against another sender's pool is bad.
            assert!(matches!(rings.pop(&mut c, 2), Pop::Bad));

            // A head more than a ring ahead: counted, consumer resynchronised.
            let head = region.atomic_u32(ring + field::ring::HEAD);
            head.store(1000, Ordering::Release);
            assert!(matches!(rings.pop(&mut c, 1), Pop::Empty));
            assert_eq!(corrupt.load(Ordering::Relaxed), 1);
            assert!(!rings.pending(&c));

            // A tail claiming more than was sent: counted, and only what is in
            // flight comes back.
            let tail = region.atomic_u32(ring + field::ring::TAIL);
            tail.store(500, Ordering::Release);
            assert_eq!(rings.reclaim(&mut p).collect::<Vec<_>>(), vec![0]);
            assert_eq!(corrupt.load(Ordering::Relaxed), 2);

            // A ring without the cookie is counted when a consumer attaches.
            region
                .atomic_u32(ring + field::ring::COOKIE)
                .store(0, Ordering::Relaxed);
            let _ = rings.consumer(ring);
            assert_eq!(corrupt.load(Ordering::Relaxed), 3);
        });
    }
}
