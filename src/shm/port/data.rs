//! The data path of a [`Port`]: lending buffers, sending, receiving,
//! flushing, and reclaiming buffers from the rings. Kept apart from
//! attaching and membership (in `port`), which run rarely, so that the
//! per-frame code and its `#[inline]` helpers sit together.

use std::collections::VecDeque;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use super::{Member, OutLink, Peer, PeerState, Port};
use crate::shm::layout::field;
use crate::shm::region::{InPlaceFrame, TxBuf};
use crate::shm::ring::{Pop, Producer, Reclaim, Rings};

/// Reclaim finished buffers once this few are left (callers may keep a
/// reserve of up to this many for replies).
const LOW_WATER: usize = 16;
/// …and at least every this many allocations, so that buffers come back
/// while they are still in the cache: the free list is a stack, and a port
/// that reclaimed only at the low-water mark would cycle through every
/// buffer it has, touching (and first-faulting) all of its memory where a
/// few dozen hot buffers do.
const RECLAIM_EVERY: u32 = 32;
/// How long a consumer may leave a link's tail on another serial while
/// frames wait before the link is restarted (it normally follows within
/// one wake-up).
const FOLLOW_WITHIN: Duration = Duration::from_millis(500);

impl Port {
    /// Number of free transmit buffers (reclaiming finished ones when few
    /// are left).
    pub fn free_buffers(&mut self) -> usize {
        if self.pool.free_len() <= LOW_WATER {
            self.reclaim();
        }
        self.pool.free_len()
    }

    /// Takes a free buffer, or `None` if all are in flight (back-pressure).
    pub fn alloc(&mut self) -> Option<TxBuf> {
        self.since_reclaim += 1;
        if self.pool.free_len() <= LOW_WATER || self.since_reclaim >= RECLAIM_EVERY {
            self.reclaim();
        }
        let buf = self.pool.alloc();
        if buf.is_none() {
            self.counters.ring_full.fetch_add(1, Ordering::Relaxed);
        }
        buf
    }

    /// The whole buffer (`frame_size` bytes) behind `buf`: memory only this
    /// port writes. Panics if `buf` was lent by another port.
    pub fn buffer_mut(&mut self, buf: &mut TxBuf) -> &mut [u8] {
        self.pool.bytes_mut(&self.own, buf)
    }

    /// Returns an unsent buffer to the pool.
    pub fn release(&mut self, buf: TxBuf) {
        self.pool.release(buf);
    }

    /// Sends the first `len` bytes of `buf` to each of `to` (one for
    /// unicast, several for broadcast: the same buffer is shared). Frames to
    /// a peer that is not on the network are counted as unroutable. Never
    /// drops because a ring is full: such frames wait in a local backlog for
    /// [`Port::flush`].
    ///
    /// Descriptors are published to the consumer in batches; call
    /// [`Port::flush`] after a burst (the device loop does, every round).
    pub fn send(&mut self, buf: TxBuf, len: usize, to: &[Peer]) {
        let len = len.min(self.geo.frame_size as usize) as u32;
        if let [peer] = *to
            && self.is_linked(peer)
        {
            // The common case, one destination whose ring runs: its
            // descriptor takes over the lender's hold on the buffer.
            let index = self.pool.index(&buf);
            if self.queue(peer, index, len) {
                self.pool.hand_over(buf);
            } else {
                self.pool.release(buf);
            }
            return;
        }
        self.send_each(buf, len, to);
    }

    /// `send` to several peers, or to one that needs a look at the
    /// membership or a ring started first. (Kept apart so that the
    /// one-peer path stays small enough for its helpers to be inlined.)
    #[inline(never)]
    fn send_each(&mut self, buf: TxBuf, len: u32, to: &[Peer]) {
        for &peer in to {
            // May apply departures, which return buffers: the lender's hold
            // keeps `buf` until every descriptor has its own.
            if !self.is_linked(peer) && !self.link_to(peer) {
                self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let index = self.pool.index(&buf);
            if self.queue(peer, index, len) {
                self.pool.share(&buf);
            }
        }
        self.pool.release(buf);
    }

    /// Queues a descriptor for buffer `index` on the ring towards `peer`
    /// (linked, see `is_linked`), or in its backlog if the ring is full;
    /// `false` if there is no such link after all. Returns no buffers.
    #[inline(always)]
    fn queue(&mut self, peer: Peer, index: u32, len: u32) -> bool {
        let rings = Rings::new(&self.own, &self.geo, &self.counters.corrupt_rings);
        let Some(Some(state)) = self.peers.get_mut(peer.index as usize) else {
            return false;
        };
        let Some(out) = state.out.as_mut() else {
            return false;
        };
        if out.backlog.is_empty() && rings.push(&mut out.ring, &state.link.view, index, len) {
            out.pushed = true;
        } else {
            out.backlog.push_back((index, len));
        }
        true
    }

    /// Is `peer` still the one on the network, with a ring towards it
    /// started? (The per-frame check of `send`; `link_to` does the rest.)
    #[inline]
    fn is_linked(&self, peer: Peer) -> bool {
        peer.index != self.index
            && matches!(
                self.peers.get(peer.index as usize),
                Some(Some(s)) if s.link.info.epoch == peer.epoch && s.out.is_some()
            )
    }

    /// Makes `send` to `peer` possible: learns of it if it just joined,
    /// starts the ring towards it on its first frame. `false` if it is not
    /// on the network.
    #[cold]
    fn link_to(&mut self, peer: Peer) -> bool {
        if self.known(peer).is_none() {
            // Perhaps it just joined and we have not heard yet.
            self.poll_membership();
        }
        let Some(has_out) = self.known(peer).map(|s| s.out.is_some()) else {
            return false;
        };
        if !has_out {
            self.start_link(peer);
        }
        true
    }

    /// Starts the ring towards `peer` (its first frame).
    fn start_link(&mut self, peer: Peer) {
        self.starts = self.starts.wrapping_add(1);
        let ring = Producer::start(
            &self.own,
            self.geo.ring_off(peer.index),
            self.geo.tail_off(self.index),
            self.index as u16,
            peer.epoch,
            serial_for(self.epoch, peer.epoch, self.starts),
        );
        if let Some(state) = self.peers[peer.index as usize].as_mut() {
            state.out = Some(OutLink {
                ring,
                backlog: VecDeque::new(),
                pushed: true,
                unfollowed_since: None,
            });
        }
    }

    /// The peer `peer` names, if it is still the one on the network.
    fn known(&mut self, peer: Peer) -> Option<&mut PeerState> {
        if peer.index == self.index {
            return None;
        }
        self.peers
            .get_mut(peer.index as usize)?
            .as_mut()
            .filter(|s| s.link.info.epoch == peer.epoch)
    }

    /// Returns buffers whose descriptors the consumers have passed, and
    /// restarts links whose consumer reported an impossible tail.
    pub(super) fn reclaim(&mut self) {
        self.since_reclaim = 0;
        let Port {
            own,
            geo,
            counters,
            live,
            peers,
            pool,
            ..
        } = self;
        let rings = Rings::new(own, geo, &counters.corrupt_rings);
        let mut broken = Vec::new();
        for &i in live.iter() {
            let Some(state) = peers[i as usize].as_mut() else {
                continue;
            };
            let Some(out) = state.out.as_mut() else {
                continue;
            };
            match rings.reclaim(&mut out.ring, &state.link.view) {
                Reclaim::Done(done) => {
                    out.unfollowed_since = None;
                    done.give_back(|b| pool.unref(b));
                }
                Reclaim::Corrupt => broken.push(i),
                Reclaim::NotFollowing => {
                    let since = *out.unfollowed_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= FOLLOW_WITHIN {
                        broken.push(i);
                    }
                }
            }
        }
        for i in broken {
            self.restart_link(i);
        }
    }

    /// Starts the ring towards peer `i` again under a new serial: what was
    /// in flight is given up (the consumer will not account for it), the
    /// backlog is kept and sent on the new ring.
    fn restart_link(&mut self, i: u32) {
        let Some(state) = self.peers[i as usize].as_mut() else {
            return;
        };
        let Some(out) = state.out.as_mut() else {
            return;
        };
        for b in out.ring.in_flight() {
            self.pool.unref(b);
        }
        self.starts = self.starts.wrapping_add(1);
        let serial = serial_for(self.epoch, state.link.info.epoch, self.starts);
        debug_assert_ne!(serial, out.ring.serial());
        out.ring = Producer::start(
            &self.own,
            self.geo.ring_off(i),
            self.geo.tail_off(self.index),
            self.index as u16,
            state.link.info.epoch,
            serial,
        );
        out.pushed = true;
        out.unfollowed_since = None;
        self.counters.links_reset.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "network {:?}: restarted the link to port {i} (its consumer broke the ring protocol)",
            self.seg.name()
        );
    }

    /// Copies the next received frame into `dst` and returns its length and
    /// the sending port. Bad descriptors are counted and skipped. `dst` must
    /// hold `frame_size` bytes.
    pub fn recv_into(&mut self, dst: &mut [u8]) -> Option<(usize, u32)> {
        let f = self.next_frame(dst.len(), false)?;
        let state = self.peers[f.src() as usize].as_ref()?;
        state.link.view.read(f.offset(), &mut dst[..f.len()]);
        Some((f.len(), f.src()))
    }

    /// Takes the next received frame from a peer thread of this process
    /// without copying it; read it with [`Port::frame_bytes`] before the
    /// next call on this port. Frames of peers in other processes are left
    /// for [`Port::recv_into`]: their memory is never referenced.
    pub fn recv_in_place(&mut self) -> Option<InPlaceFrame> {
        self.next_frame(usize::MAX, true)
    }

    /// The bytes of a frame taken with [`Port::recv_in_place`].
    pub fn frame_bytes(&self, f: &InPlaceFrame) -> &[u8] {
        match self.peers.get(f.src() as usize) {
            Some(Some(state)) => state.link.view.frame(f),
            _ => &[],
        }
    }

    /// Validates the next descriptor and consumes its slot. The slot's
    /// buffer stays untouched by the sender until the tail is published,
    /// which happens at the next call (or `flush`), after the caller is done.
    fn next_frame(&mut self, room: usize, in_place: bool) -> Option<InPlaceFrame> {
        let rings = Rings::new(&self.own, &self.geo, &self.counters.corrupt_rings);
        let n = self.live.len();
        // Round robin from the peer served last (no division per frame).
        let mut next = self.rr;
        for _ in 0..n {
            let at = if next < n { next } else { 0 };
            next = at + 1;
            let src = self.live[at];
            let Some(state) = self.peers[src as usize].as_mut() else {
                continue;
            };
            if in_place && !state.link.view.is_in_process() {
                continue;
            }
            rings.publish_tail_batched(&mut state.inbound);
            loop {
                match rings.pop(&mut state.inbound, &state.link.view, src) {
                    Pop::Empty => break,
                    Pop::Frame(r) if room >= r.length as usize => {
                        state.consumed = true;
                        self.rr = at;
                        return Some(InPlaceFrame::new(
                            self.geo.buffer_off(r.buffer),
                            r.length as usize,
                            src,
                        ));
                    }
                    Pop::Frame(_) | Pop::Bad => {
                        state.consumed = true;
                        self.counters
                            .bad_descriptors
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        None
    }

    /// Is a frame waiting on any incoming ring (or did membership change)?
    pub fn rx_pending(&self) -> bool {
        if let Member::Local(m) = &self.member
            && m.pending()
        {
            return true;
        }
        let rings = Rings::new(&self.own, &self.geo, &self.counters.corrupt_rings);
        self.live.iter().any(|&i| {
            self.peers[i as usize]
                .as_ref()
                .is_some_and(|s| rings.pending(&s.inbound, &s.link.view))
        })
    }

    /// Frames queued locally because a ring was full.
    pub fn backlog_len(&self) -> usize {
        self.peers
            .iter()
            .flatten()
            .filter_map(|s| s.out.as_ref())
            .map(|o| o.backlog.len())
            .sum()
    }

    /// Publishes pending ring indices, pushes backlogged frames, reclaims
    /// buffers, applies membership changes, and wakes peers that sleep and
    /// have new frames (or, as senders, new free slots). Call after every
    /// burst.
    pub fn flush(&mut self) {
        // Between processes, looking at the clock every flush would cost
        // more than the flush: every 64th will do.
        self.flushes = self.flushes.wrapping_add(1);
        let look = !matches!(self.member, Member::Host(_))
            || self.flushes.is_multiple_of(64)
            || self.member_due.load(Ordering::Relaxed);
        if look && self.membership_due() {
            self.poll_membership();
        }
        let rings = Rings::new(&self.own, &self.geo, &self.counters.corrupt_rings);
        let mut any = false;
        for &i in &self.live {
            let Some(state) = self.peers[i as usize].as_mut() else {
                continue;
            };
            if let Some(out) = state.out.as_mut() {
                while let Some(&(b, len)) = out.backlog.front() {
                    if !rings.push(&mut out.ring, &state.link.view, b, len) {
                        break;
                    }
                    out.pushed = true;
                    out.backlog.pop_front();
                }
                rings.publish(&mut out.ring);
                any |= out.pushed;
            }
            rings.publish_tail(&mut state.inbound);
            any |= state.consumed;
        }
        if self.pool.free_len() < self.pool.len() / 2 {
            self.reclaim();
        }
        if !any {
            return;
        }
        // Pairs with the fence in `prepare_sleep`: either the peer sees our
        // ring update, or we see its sleeping flag.
        fence(Ordering::SeqCst);
        for &i in &self.live {
            let Some(state) = self.peers[i as usize].as_mut() else {
                continue;
            };
            let pushed = state
                .out
                .as_mut()
                .is_some_and(|o| std::mem::take(&mut o.pushed));
            let consumed = std::mem::take(&mut state.consumed);
            if (pushed || consumed) && state.link.view.load_u32(field::header::SLEEPING) != 0 {
                state.link.doorbell.ring();
            }
        }
    }
}

/// A link serial: non-zero, and different for every start of a ring
/// between the same two attachments.
fn serial_for(from_epoch: u32, to_epoch: u32, start: u32) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&from_epoch.to_ne_bytes());
    h.update(&to_epoch.to_ne_bytes());
    h.update(&start.to_ne_bytes());
    h.finalize().max(1)
}
