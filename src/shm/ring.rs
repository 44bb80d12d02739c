//! Rings: the memif-style single-producer/single-consumer descriptor ring
//! that carries one link's frames, split so that each end writes only its
//! own memory.
//!
//! The producer's half lives in its region (see [`layout`](super::layout)):
//! a ring header (cookie, the epoch of the port it is for, and a 64-bit
//! word `serial << 32 | head`) followed by a power-of-two number of 16-byte
//! descriptors. The consumer's half is one tail word `serial << 32 | tail`
//! in *its* region. The producer writes a descriptor into slot
//! `head & mask` and then publishes `head`; the consumer reads slots up to
//! `head` and then publishes `tail`, tagged with the serial of the ring it
//! read. Only a descriptor moves: the frame stays in a buffer of the
//! producer's pool.
//!
//! The serial makes a link restartable without anyone writing the other's
//! memory: the producer resets its ring under a new serial (head 0); the
//! consumer, seeing a serial it does not know, starts again from tail 0
//! under it; the producer ignores tails of any other serial. That is how a
//! link heals after a restart of either end or after a corrupt index.
//!
//! Contract: the producer alone writes its ring, the consumer alone its
//! tail; each end keeps its own indices in local memory ([`Producer`],
//! [`Consumer`]) and treats what the other end wrote as hostile. A `tail`
//! the producer never allowed or a `head` more than a ring ahead is counted
//! as a corrupt ring ([`Reclaim::Corrupt`] tells the producer to reset the
//! link; the consumer resynchronises to the producer's `head`); a
//! descriptor is parsed with [`DescriptorRepr::parse`] before anything it
//! names is touched. Nothing here panics on what a peer wrote. Indices are
//! published in batches ([`PUBLISH_BATCH`]) and at every flush.
//!
//! This module knows rings only; links, ports and wake-ups are
//! [`Port`](super::Port)'s. It is crate-private: the unit tests at the end
//! show a producer and a consumer at work, and the public face of a ring is
//! [`Port::send`](super::Port::send) / [`Port::recv_into`](super::Port::recv_into).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use super::layout::{
    DESC_LEN, Descriptor, DescriptorRepr, Geometry, RING_COOKIE, RING_HEADER_LEN, field, split,
    word,
};
use super::region::{PeerView, Region};

/// Ring indices are published every this many frames, and at a flush.
pub(crate) const PUBLISH_BATCH: u32 = 32;

/// The producer end of a link, in local memory: where its ring is, the
/// serial it runs under, and the buffers its descriptors name, oldest
/// first (returned as the consumer's tail passes them).
#[derive(Debug)]
pub(crate) struct Producer {
    /// Offset of the ring in the producer's region.
    ring: usize,
    /// Offset of the consumer's tail entry for this ring in its region.
    tail: usize,
    /// The producer's port index (the descriptors' region field).
    region: u16,
    serial: u32,
    head: u32,
    published: u32,
    /// Last tail seen (for the full check) and last tail reclaimed up to.
    tail_cache: u32,
    tail_seen: u32,
    inflight: VecDeque<u32>,
}

impl Producer {
    /// Starts the ring at `ring` of `own` towards the port of epoch
    /// `to_epoch` under `serial` (non-zero, different from the last one):
    /// head 0, nothing in flight. `tail` is the consumer's tail entry
    /// offset.
    pub(crate) fn start(
        own: &Region,
        ring: usize,
        tail: usize,
        region: u16,
        to_epoch: u32,
        serial: u32,
    ) -> Producer {
        own.atomic_u32(ring + field::ring::COOKIE)
            .store(RING_COOKIE, Ordering::Relaxed);
        own.atomic_u32(ring + field::ring::TO_EPOCH)
            .store(to_epoch, Ordering::Relaxed);
        // Release: a consumer that sees the new serial sees the epoch too.
        own.atomic_u64(ring + field::ring::WORD)
            .store(word(serial, 0), Ordering::Release);
        Producer {
            ring,
            tail,
            region,
            serial,
            head: 0,
            published: 0,
            tail_cache: 0,
            tail_seen: 0,
            inflight: VecDeque::new(),
        }
    }

    pub(crate) fn serial(&self) -> u32 {
        self.serial
    }

    /// Buffers named by descriptors the consumer has not passed yet.
    pub(crate) fn in_flight(&self) -> impl Iterator<Item = u32> + '_ {
        self.inflight.iter().copied()
    }

    pub(crate) fn in_flight_len(&self) -> usize {
        self.inflight.len()
    }

    /// The consumer's tail for this ring, if it is following this serial.
    #[inline]
    fn peer_tail(&self, peer: &PeerView) -> Option<u32> {
        let (serial, tail) = split(peer.load_u64(self.tail + field::tail::WORD));
        (serial == self.serial).then_some(tail)
    }
}

/// The consumer end of a link, in local memory.
#[derive(Debug)]
pub(crate) struct Consumer {
    /// Offset of the ring in the producer's region.
    ring: usize,
    /// Offset of our tail entry for it in our region.
    tail_at: usize,
    /// Our epoch: a ring for another epoch is not for us (yet).
    epoch: u32,
    /// The serial we follow (0: none yet).
    serial: u32,
    tail: u32,
    published: u32,
    head_seen: u32,
}

impl Consumer {
    pub(crate) fn new(ring: usize, tail_at: usize, epoch: u32) -> Consumer {
        Consumer {
            ring,
            tail_at,
            epoch,
            serial: 0,
            tail: 0,
            published: 0,
            head_seen: 0,
        }
    }
}

/// What a pop found.
pub(crate) enum Pop {
    Empty,
    Frame(DescriptorRepr),
    /// A descriptor that failed validation (its slot is consumed).
    Bad,
}

/// What a reclaim found.
pub(crate) enum Reclaim<'p> {
    /// Buffers the consumer is done with.
    Done(Reclaimed<'p>),
    /// The consumer's tail is impossible: reset the link.
    Corrupt,
    /// Frames are in flight but the consumer's tail is not for this ring's
    /// serial (yet): it has not caught up with a restart, or someone
    /// scribbled it. The port restarts the link if that lasts.
    NotFollowing,
}

/// The oldest `n` buffers in flight on a ring, which its consumer has
/// passed.
pub(crate) struct Reclaimed<'p> {
    inflight: &'p mut VecDeque<u32>,
    n: usize,
}

impl Reclaimed<'_> {
    /// Hands each buffer to `give_back`, oldest first, and forgets them.
    /// (Over the deque's two slices: a tight loop where an iterator over
    /// the drained range would wrap its index at every step.)
    #[inline]
    pub(crate) fn give_back(self, mut give_back: impl FnMut(u32)) {
        let (front, back) = self.inflight.as_slices();
        let from_front = self.n.min(front.len());
        for &b in &front[..from_front] {
            give_back(b);
        }
        for &b in back.iter().take(self.n - from_front) {
            give_back(b);
        }
        self.inflight.drain(..self.n);
    }
}

/// The ring operations over a port's own region and a peer's view, with
/// the geometry and the corruption counter they need.
#[derive(Clone, Copy)]
pub(crate) struct Rings<'a> {
    own: &'a Region,
    geo: &'a Geometry,
    slots: u32,
    mask: u32,
    corrupt: &'a AtomicU64,
}

impl<'a> Rings<'a> {
    #[inline]
    pub(crate) fn new(own: &'a Region, geo: &'a Geometry, corrupt: &'a AtomicU64) -> Self {
        Rings {
            own,
            geo,
            slots: geo.ring_slots,
            mask: geo.ring_slots - 1,
            corrupt,
        }
    }

    #[inline]
    fn slot(&self, ring: usize, i: u32) -> usize {
        ring + RING_HEADER_LEN + (i & self.mask) as usize * DESC_LEN
    }

    fn count_corrupt(&self) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
    }

    // ---- producer side ----

    /// Queues one descriptor; `false` if the ring is full (or the consumer
    /// wrote an impossible tail). Published in batches.
    // Always inlined: the call would cost a quarter of the sender's work
    // per frame (registers saved, the `Rings` spilled to the stack).
    #[inline(always)]
    pub(crate) fn push(&self, p: &mut Producer, peer: &PeerView, buffer: u32, len: u32) -> bool {
        if p.head.wrapping_sub(p.tail_cache) >= self.slots && !self.room(p, peer) {
            return false;
        }
        let mut d = [0u8; DESC_LEN];
        DescriptorRepr {
            region: p.region,
            buffer,
            length: len,
            metadata: 0,
        }
        .emit(&mut Descriptor::new_unchecked(&mut d), self.geo);
        self.own.write(self.slot(p.ring, p.head), &d);
        p.head = p.head.wrapping_add(1);
        p.inflight.push_back(buffer);
        if p.head.wrapping_sub(p.published) >= PUBLISH_BATCH {
            self.publish(p);
        }
        true
    }

    /// The ring looked full by the tail last seen: is there room by the
    /// consumer's tail now? (Out of line: the hot path of `push` stays
    /// small enough to inline.)
    #[cold]
    #[inline(never)]
    fn room(&self, p: &mut Producer, peer: &PeerView) -> bool {
        let Some(tail) = p.peer_tail(peer) else {
            return false;
        };
        let used = p.head.wrapping_sub(tail);
        if used > self.slots {
            self.count_corrupt();
            return false;
        }
        p.tail_cache = tail;
        used < self.slots
    }

    /// Makes every queued descriptor visible to the consumer.
    #[inline]
    pub(crate) fn publish(&self, p: &mut Producer) {
        if p.published != p.head {
            p.published = p.head;
            self.own
                .atomic_u64(p.ring + field::ring::WORD)
                .store(word(p.serial, p.head), Ordering::Release);
        }
    }

    /// Takes back the buffers whose descriptors the consumer has passed.
    pub(crate) fn reclaim<'p>(&self, p: &'p mut Producer, peer: &PeerView) -> Reclaim<'p> {
        let done = match p.peer_tail(peer) {
            Some(tail) => tail.wrapping_sub(p.tail_seen) as usize,
            None if p.inflight.is_empty() => 0,
            None => return Reclaim::NotFollowing,
        };
        if done > p.inflight.len() {
            self.count_corrupt();
            return Reclaim::Corrupt;
        }
        p.tail_seen = p.tail_seen.wrapping_add(done as u32);
        p.tail_cache = p.tail_seen;
        Reclaim::Done(Reclaimed {
            inflight: &mut p.inflight,
            n: done,
        })
    }

    // ---- consumer side ----

    /// Follows the producer's serial: a new one (a reset ring, for our
    /// epoch) starts us again from tail 0. `false` if the ring is not for us.
    fn follow(&self, c: &mut Consumer, peer: &PeerView, serial: u32) -> bool {
        if serial == c.serial {
            return true;
        }
        if serial == 0
            || peer.load_u32(c.ring + field::ring::TO_EPOCH) != c.epoch
            || peer.load_u32(c.ring + field::ring::COOKIE) != RING_COOKIE
        {
            return false;
        }
        c.serial = serial;
        c.tail = 0;
        c.head_seen = 0;
        c.published = 0;
        self.store_tail(c);
        true
    }

    fn store_tail(&self, c: &Consumer) {
        self.own
            .atomic_u64(c.tail_at + field::tail::WORD)
            .store(word(c.serial, c.tail), Ordering::Release);
    }

    /// Takes the next descriptor, validated against the sender `src`.
    #[inline]
    pub(crate) fn pop(&self, c: &mut Consumer, peer: &PeerView, src: u32) -> Pop {
        if c.tail == c.head_seen {
            let (serial, head) = split(peer.load_u64(c.ring + field::ring::WORD));
            if !self.follow(c, peer, serial) {
                return Pop::Empty;
            }
            let avail = head.wrapping_sub(c.tail);
            if avail == 0 {
                return Pop::Empty;
            }
            if avail > self.slots {
                // Garbage: skip to where the producer says it is.
                self.count_corrupt();
                c.tail = head;
                c.head_seen = head;
                self.publish_tail(c);
                return Pop::Empty;
            }
            c.head_seen = head;
        }
        let at = self.slot(c.ring, c.tail);
        c.tail = c.tail.wrapping_add(1);
        let mut d = [0u8; DESC_LEN];
        peer.read(at, &mut d);
        match DescriptorRepr::parse(&Descriptor::new_unchecked(&d), self.geo, src) {
            Ok(r) => Pop::Frame(r),
            Err(_) => Pop::Bad,
        }
    }

    /// Publishes the tail once a batch has been consumed.
    #[inline]
    pub(crate) fn publish_tail_batched(&self, c: &mut Consumer) {
        if c.tail.wrapping_sub(c.published) >= PUBLISH_BATCH {
            self.publish_tail(c);
        }
    }

    /// Publishes the tail: the producer may reuse what we consumed.
    #[inline]
    pub(crate) fn publish_tail(&self, c: &mut Consumer) {
        if c.published != c.tail {
            c.published = c.tail;
            self.store_tail(c);
        }
    }

    /// Is something waiting (or has the producer restarted the ring)?
    #[inline]
    pub(crate) fn pending(&self, c: &Consumer, peer: &PeerView) -> bool {
        let (serial, head) = split(peer.load_u64(c.ring + field::ring::WORD));
        if serial != c.serial {
            return serial != 0 && peer.load_u32(c.ring + field::ring::TO_EPOCH) == c.epoch;
        }
        head != c.tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::layout::LinkMedium;
    use std::sync::Arc;

    /// Port 1 (producer) and port 2 (consumer), each with its own region.
    struct Pair {
        geo: Geometry,
        a: Arc<Region>,
        b: Arc<Region>,
        corrupt: AtomicU64,
    }

    impl Pair {
        fn new() -> Pair {
            let geo = Geometry::new(1500, LinkMedium::Ethernet, 4, 8).unwrap();
            let r = || Arc::new(Region::anonymous(geo.region_len()).unwrap());
            Pair {
                geo,
                a: r(),
                b: r(),
                corrupt: AtomicU64::new(0),
            }
        }
        /// What a test drives: each port's own rings and tails, each
        /// port's memory as the other reads it, and the link from port 1
        /// to port 2 (producer serial 5, consumer for epoch 77).
        fn ends(&self) -> (Rings<'_>, Rings<'_>, PeerView, PeerView, Producer, Consumer) {
            (
                Rings::new(&self.a, &self.geo, &self.corrupt),
                Rings::new(&self.b, &self.geo, &self.corrupt),
                PeerView::in_process(Arc::clone(&self.a)),
                PeerView::in_process(Arc::clone(&self.b)),
                self.producer(5),
                self.consumer(),
            )
        }
        fn producer(&self, serial: u32) -> Producer {
            Producer::start(
                &self.a,
                self.geo.ring_off(2),
                self.geo.tail_off(1),
                1,
                77,
                serial,
            )
        }
        fn consumer(&self) -> Consumer {
            Consumer::new(self.geo.ring_off(2), self.geo.tail_off(1), 77)
        }
        fn corrupt(&self) -> u64 {
            self.corrupt.load(Ordering::Relaxed)
        }
    }

    fn frame(pop: Pop) -> (u32, u32) {
        match pop {
            Pop::Frame(r) => (r.buffer, r.length),
            Pop::Empty => panic!("empty"),
            Pop::Bad => panic!("bad descriptor"),
        }
    }

    fn reclaimed(r: Reclaim) -> Vec<u32> {
        match r {
            Reclaim::Done(d) => {
                let mut v = Vec::new();
                d.give_back(|b| v.push(b));
                v
            }
            Reclaim::Corrupt => panic!("corrupt"),
            Reclaim::NotFollowing => Vec::new(),
        }
    }

    #[test]
    fn buffers_stay_accounted_for_when_the_tail_runs_ahead_of_reclaims() {
        // The consumer keeps up but the producer does not reclaim: the
        // ring has room by its tail, so far more than a ring's worth ends
        // up in flight, and every buffer comes back once, in order.
        let t = Pair::new();
        let (pa, pb, va, vb, mut p, mut c) = t.ends();
        let mut sent = 0u32;
        for _ in 0..25 {
            while pa.push(&mut p, &vb, sent % 8, 60) {
                sent += 1;
            }
            pa.publish(&mut p);
            while let Pop::Frame(_) = pb.pop(&mut c, &va, 1) {}
            pb.publish_tail(&mut c);
        }
        assert_eq!(sent, 200);
        assert_eq!(p.in_flight_len(), 200);
        assert!(p.in_flight().eq((0..200).map(|i| i % 8)));
        assert!(
            reclaimed(pa.reclaim(&mut p, &vb))
                .into_iter()
                .eq((0..200).map(|i| i % 8))
        );
        assert_eq!(p.in_flight_len(), 0);
        assert_eq!(t.corrupt(), 0);
    }

    #[test]
    fn frames_pass_in_order_and_a_full_ring_pushes_back() {
        let t = Pair::new();
        let (pa, pb, va, vb, mut p, mut c) = t.ends();
        // A freshly started ring is news to the consumer, until it follows.
        assert!(pb.pending(&c, &va));
        assert!(matches!(pb.pop(&mut c, &va, 1), Pop::Empty));
        assert!(!pb.pending(&c, &va));
        for b in 0..8 {
            assert!(pa.push(&mut p, &vb, b, 60 + b));
        }
        assert!(!pa.push(&mut p, &vb, 0, 60), "the ring holds 8");
        assert!(!pb.pending(&c, &va), "nothing published before the batch");
        pa.publish(&mut p);
        assert!(pb.pending(&c, &va));
        for b in 0..8 {
            assert_eq!(frame(pb.pop(&mut c, &va, 1)), (b, 60 + b));
        }
        assert!(matches!(pb.pop(&mut c, &va, 1), Pop::Empty));
        assert!(
            reclaimed(pa.reclaim(&mut p, &vb)).is_empty(),
            "tail not published"
        );
        pb.publish_tail(&mut c);
        assert_eq!(
            reclaimed(pa.reclaim(&mut p, &vb)),
            (0..8).collect::<Vec<_>>()
        );
        assert!(pa.push(&mut p, &vb, 3, 64));
        assert_eq!(t.corrupt(), 0);
    }

    #[test]
    fn a_restarted_ring_is_followed_from_zero_and_old_tails_are_ignored() {
        let t = Pair::new();
        let (pa, pb, va, vb, mut p, mut c) = t.ends();
        for b in 0..3 {
            pa.push(&mut p, &vb, b, 60);
        }
        pa.publish(&mut p);
        for _ in 0..3 {
            frame(pb.pop(&mut c, &va, 1));
        }
        pb.publish_tail(&mut c);
        // The producer restarts under a new serial: the consumer's tail of
        // 3 belongs to the old one and must not free anything.
        let mut p = t.producer(6);
        assert!(reclaimed(pa.reclaim(&mut p, &vb)).is_empty());
        pa.push(&mut p, &vb, 7, 61);
        pa.publish(&mut p);
        assert_eq!(frame(pb.pop(&mut c, &va, 1)), (7, 61));
        pb.publish_tail(&mut c);
        assert_eq!(reclaimed(pa.reclaim(&mut p, &vb)), vec![7]);
        assert_eq!(t.corrupt(), 0);
    }

    #[test]
    fn a_ring_for_another_epoch_is_not_read() {
        let t = Pair::new();
        let (pa, pb, va, vb, mut p, _) = t.ends();
        pa.push(&mut p, &vb, 1, 60);
        pa.publish(&mut p);
        let mut c = Consumer::new(t.geo.ring_off(2), t.geo.tail_off(1), 78);
        assert!(!pb.pending(&c, &va));
        assert!(matches!(pb.pop(&mut c, &va, 1), Pop::Empty));
    }

    #[test]
    fn what_the_other_end_scribbles_is_counted_not_trusted() {
        let t = Pair::new();
        let (pa, pb, va, vb, mut p, mut c) = t.ends();
        pa.push(&mut p, &vb, 0, 60);
        pa.publish(&mut p);
        assert!(
            matches!(pb.pop(&mut c, &va, 2), Pop::Bad),
            "not the sender's pool"
        );

        // A head far ahead: counted, the consumer skips to it.
        t.a.atomic_u64(t.geo.ring_off(2) + field::ring::WORD)
            .store(word(5, 1000), Ordering::Release);
        assert!(matches!(pb.pop(&mut c, &va, 1), Pop::Empty));
        assert_eq!(t.corrupt(), 1);
        assert!(!pb.pending(&c, &va));

        // A tail the producer never allowed: counted, the link must reset.
        t.b.atomic_u64(t.geo.tail_off(1) + field::tail::WORD)
            .store(word(5, 500), Ordering::Release);
        assert!(matches!(pa.reclaim(&mut p, &vb), Reclaim::Corrupt));
        assert_eq!(t.corrupt(), 2);
    }
}
