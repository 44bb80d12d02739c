//! Ports: one attachment of a device adapter to a segment, with its
//! transmit buffer pool, outgoing links (producer side) and incoming links
//! (consumer side).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use super::ShmError;
use super::layout::{
    DESC_LEN, Descriptor, DescriptorRepr, RING_COOKIE, RING_HEADER_LEN, STATE_ACTIVE, link_field,
    port_field, ring_field,
};
use super::region::{InPlaceFrame, Pool, TxBuf};
use super::segment::{NetworkParams, PortInfo, Segment, SegmentKind, split};

/// Reclaim finished buffers once this few are left (callers may keep a
/// reserve of up to this many for replies).
const LOW_WATER: usize = 16;

/// A peer port as the sender knows it: index plus the epoch it was attached
/// at, so a frame never goes to a different device reusing the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub index: u32,
    pub epoch: u32,
}

impl Segment {
    /// Attaches a new port (a device adapter) to the network.
    ///
    /// A host segment whose last port left may have been removed between
    /// opening and attaching; that fails with [`ShmError::NotReady`] and
    /// [`Segment::open_or_create`] followed by `attach` should be retried
    /// ([`Segment::join`] does both).
    pub fn attach(self: &Arc<Self>, info: &PortInfo) -> Result<Port, ShmError> {
        let (index, epoch) = self.claim_port(info)?;
        Ok(Port::new(Arc::clone(self), index, epoch))
    }

    /// Opens (or creates) the network's segment and attaches a port,
    /// retrying if the segment was removed in between by its last user.
    pub fn join(
        name: &str,
        kind: SegmentKind,
        params: &NetworkParams,
        info: &PortInfo,
    ) -> Result<Port, ShmError> {
        let mut tries = 0;
        loop {
            let seg = Self::open_or_create(name, kind, params)?;
            match seg.attach(info) {
                Err(ShmError::NotReady) if tries < 10 => tries += 1,
                r => return r,
            }
        }
    }
}

/// Counters of a port, readable from any thread.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Descriptors that failed validation (dropped).
    pub bad_descriptors: AtomicU64,
    /// Ring indices out of range (a peer wrote garbage; the ring was resynced).
    pub corrupt_rings: AtomicU64,
    /// Times a transmit found no free buffer (back-pressure applied).
    pub ring_full: AtomicU64,
    /// Frames to a peer that vanished or to a link that could not be made.
    pub unroutable: AtomicU64,
    /// Links dropped because the other end went away.
    pub links_reset: AtomicU64,
}

struct OutLink {
    peer: Peer,
    link: u32,
    serial: u32,
    ring: usize,
    /// Next slot to fill (local; published to the ring as `published`).
    head: u32,
    published: u32,
    /// The consumer's tail as last read for space checks: re-read only when
    /// the ring looks full, so the hot path stays off the consumer's line.
    tail_cache: u32,
    /// The tail up to which buffers have been returned to the pool.
    tail_seen: u32,
    /// Buffers in the ring, oldest first.
    inflight: VecDeque<u32>,
    /// Frames waiting for ring space: `(buffer, length)`.
    backlog: VecDeque<(u32, u32)>,
    pushed: bool,
}

struct InLink {
    src: Peer,
    link: u32,
    serial: u32,
    ring: usize,
    tail: u32,
    /// Tail value last stored to the ring.
    published: u32,
    /// The producer's head as last read.
    head_seen: u32,
    consumed: bool,
}

/// Ring indices are published every this many frames, and at `flush`.
const PUBLISH_BATCH: u32 = 32;

/// The ring geometry a link operation needs, copied out of the port so the
/// link can be borrowed mutably alongside it.
#[derive(Clone, Copy)]
struct Rings<'a> {
    seg: &'a Segment,
    index: u32,
    slots: u32,
    mask: u32,
    counters: &'a PortCounters,
}

impl Rings<'_> {
    fn u32(&self, ring: usize, field: usize) -> &AtomicU32 {
        self.seg.region.atomic_u32(ring + field)
    }

    /// Writes a descriptor for `buffer` into the link's next slot; `false`
    /// if the ring is full.
    fn push(&self, link: &mut OutLink, buffer: u32, len: u32) -> bool {
        if link.head.wrapping_sub(link.tail_cache) >= self.slots {
            let tail = self
                .u32(link.ring, ring_field::TAIL)
                .load(Ordering::Acquire);
            let used = link.head.wrapping_sub(tail);
            if used > self.slots {
                // The consumer wrote a tail we never allowed: ignore it.
                self.counters.corrupt_rings.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            link.tail_cache = tail;
            if used == self.slots {
                return false;
            }
        }
        let g = self.seg.geometry();
        let mut d = [0u8; DESC_LEN];
        DescriptorRepr {
            region: self.index as u16,
            buffer,
            length: len,
            metadata: 0,
        }
        .emit(&mut Descriptor::new_unchecked(&mut d[..]), g);
        let at = link.ring + RING_HEADER_LEN + (link.head & self.mask) as usize * DESC_LEN;
        self.seg.region.write(at, &d);
        link.head = link.head.wrapping_add(1);
        link.inflight.push_back(buffer);
        link.pushed = true;
        if link.head.wrapping_sub(link.published) >= PUBLISH_BATCH {
            self.publish(link);
        }
        true
    }

    fn publish(&self, link: &mut OutLink) {
        if link.published != link.head {
            link.published = link.head;
            self.u32(link.ring, ring_field::HEAD)
                .store(link.head, Ordering::Release);
        }
    }

    /// Moves `tail_seen` to `tail`; the buffers passed are returned by the
    /// caller from `inflight` (see `Port::reclaim`).
    fn reclaim_to(&self, link: &mut OutLink, tail: u32) -> usize {
        let mut done = tail.wrapping_sub(link.tail_seen) as usize;
        if done > link.inflight.len() {
            // A consumer claiming more than we sent is corrupt; trust only
            // what we know is in the ring.
            self.counters.corrupt_rings.fetch_add(1, Ordering::Relaxed);
            done = link.inflight.len();
        }
        link.tail_seen = link.tail_seen.wrapping_add(done as u32);
        link.tail_cache = link.tail_seen;
        done
    }
}

/// Borrows the ring view of a port field by field, so `self.out` can be
/// borrowed mutably at the same time.
macro_rules! rings {
    ($p:expr) => {
        Rings {
            seg: &$p.seg,
            index: $p.index,
            slots: $p.slots,
            mask: $p.mask,
            counters: &$p.counters,
        }
    };
}

/// One attachment of an adapter to a segment.
pub struct Port {
    seg: Arc<Segment>,
    index: u32,
    epoch: u32,
    mask: u32,
    slots: u32,
    pool: Pool,
    out: Vec<Option<OutLink>>,
    /// Indices of `out` that hold a link.
    active: Vec<usize>,
    /// Buffers whose descriptors consumers passed, not yet back in `free`.
    finished: Vec<u32>,
    inbound: Vec<InLink>,
    rr: usize,
    port_gen: u32,
    link_gen: u32,
    counters: Arc<PortCounters>,
    /// How long dropping the port waits for receivers (see `drain`).
    drain_on_drop: std::time::Duration,
}

impl Port {
    pub(crate) fn new(seg: Arc<Segment>, index: u32, epoch: u32) -> Port {
        let g = *seg.geometry();
        let mut p = Port {
            index,
            epoch,
            mask: g.ring_slots - 1,
            slots: g.ring_slots,
            pool: Pool::new(g.pool_off(index), g.frame_size as usize, g.buffers),
            out: (0..g.max_ports).map(|_| None).collect(),
            active: Vec::new(),
            finished: Vec::new(),
            inbound: Vec::new(),
            rr: 0,
            port_gen: seg.port_generation().load(Ordering::Acquire),
            link_gen: seg
                .link_generation()
                .load(Ordering::Acquire)
                .wrapping_sub(1),
            counters: Arc::default(),
            drain_on_drop: std::time::Duration::from_millis(250),
            seg,
        };
        p.refresh_links();
        p
    }

    pub fn segment(&self) -> &Arc<Segment> {
        &self.seg
    }
    pub fn index(&self) -> u32 {
        self.index
    }
    pub fn epoch(&self) -> u32 {
        self.epoch
    }
    /// This port as a destination for others.
    pub fn peer(&self) -> Peer {
        Peer {
            index: self.index,
            epoch: self.epoch,
        }
    }
    pub fn counters(&self) -> &Arc<PortCounters> {
        &self.counters
    }
    /// Changes whenever a port attaches or detaches (cache key for lookups).
    pub fn port_generation(&self) -> u32 {
        self.seg.port_generation().load(Ordering::Acquire)
    }
    /// Is this port still the directory's owner of its slot? `false` after a
    /// survivor reclaimed it (we were presumed dead).
    pub fn is_attached(&self) -> bool {
        self.seg.port_epoch(self.index) == Some(self.epoch)
    }

    fn ring_u32(&self, ring: usize, field: usize) -> &AtomicU32 {
        self.seg.region.atomic_u32(ring + field)
    }

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
        if self.pool.free_len() <= LOW_WATER {
            self.reclaim();
        }
        let buf = self.pool.alloc();
        if buf.is_none() {
            self.counters.ring_full.fetch_add(1, Ordering::Relaxed);
        }
        buf
    }

    /// The whole buffer (`frame_size` bytes) behind `buf`.
    pub fn buffer_mut(&mut self, buf: &mut TxBuf) -> &mut [u8] {
        self.pool.bytes_mut(&self.seg.region, buf)
    }

    /// Returns an unsent buffer to the pool.
    pub fn release(&mut self, buf: TxBuf) {
        self.pool.release(buf);
    }

    /// Sends the first `len` bytes of `buf` to each of `to` (one for
    /// unicast, several for broadcast: the same buffer is shared). Frames to
    /// a vanished peer are counted as unroutable. Never drops because a ring
    /// is full: such frames wait in a local backlog for [`Port::flush`].
    ///
    /// Descriptors are published to the consumer in batches; call
    /// [`Port::flush`] after a burst (the device loop does, every round).
    pub fn send(&mut self, buf: TxBuf, len: usize, to: &[Peer]) {
        let len = len.min(self.seg.frame_size()) as u32;
        for &peer in to {
            let idx = peer.index as usize;
            if peer.index == self.index || idx >= self.out.len() {
                continue;
            }
            if !self.ensure_link(peer) {
                self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let index = self.pool.share(&buf);
            let rings = rings!(self);
            let Some(link) = self.out[idx].as_mut() else {
                continue;
            };
            if !(link.backlog.is_empty() && rings.push(link, index, len)) {
                link.backlog.push_back((index, len));
            }
        }
        self.pool.release(buf);
    }

    /// Makes sure an outgoing link to `peer` exists (claims one if needed).
    fn ensure_link(&mut self, peer: Peer) -> bool {
        let idx = peer.index as usize;
        if let Some(l) = &self.out[idx] {
            if l.peer == peer {
                return true;
            }
            self.drop_out_link(idx);
        }
        if self.seg.port_epoch(peer.index) != Some(peer.epoch) {
            return false;
        }
        let Some((link, serial)) = self
            .seg
            .claim_link(self.index, self.epoch, peer.index, peer.epoch)
        else {
            log::warn!(
                "segment {:?}: link table full; raise max_links",
                self.seg.name()
            );
            return false;
        };
        self.out[idx] = Some(OutLink {
            peer,
            link,
            serial,
            ring: self.seg.geometry().ring_off(link),
            head: 0,
            published: 0,
            tail_cache: 0,
            tail_seen: 0,
            inflight: VecDeque::new(),
            backlog: VecDeque::new(),
            pushed: true, // wake the peer so it picks the new link up
        });
        self.active.push(idx);
        true
    }

    /// Returns buffers whose descriptors the consumers have passed.
    fn reclaim(&mut self) {
        self.check_generations();
        let rings = rings!(self);
        for &i in &self.active {
            let Some(link) = self.out[i].as_mut() else {
                continue;
            };
            let tail = rings
                .u32(link.ring, ring_field::TAIL)
                .load(Ordering::Acquire);
            let done = rings.reclaim_to(link, tail);
            self.finished.extend(link.inflight.drain(..done));
        }
        for b in std::mem::take(&mut self.finished) {
            self.pool.unref(b);
        }
    }

    fn drop_out_link(&mut self, idx: usize) {
        if let Some(link) = self.out[idx].take() {
            for b in link
                .inflight
                .iter()
                .chain(link.backlog.iter().map(|(b, _)| b))
            {
                self.pool.unref(*b);
            }
            self.active.retain(|&i| i != idx);
            self.seg.free_link(link.link, link.serial, STATE_ACTIVE);
            self.counters.links_reset.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Re-validates links when ports or links changed: drops links to ports
    /// that went away and picks up new incoming links.
    fn check_generations(&mut self) {
        let pg = self.seg.port_generation().load(Ordering::Acquire);
        if pg != self.port_gen {
            self.port_gen = pg;
            for i in self.active.clone() {
                if let Some(l) = &self.out[i]
                    && self.seg.port_epoch(l.peer.index) != Some(l.peer.epoch)
                {
                    self.drop_out_link(i);
                }
            }
            // Incoming links from vanished senders: free them (we are the
            // surviving end) and forget them.
            let seg = Arc::clone(&self.seg);
            let before = self.inbound.len();
            self.inbound.retain(|l| {
                let live = seg.port_epoch(l.src.index) == Some(l.src.epoch);
                if !live {
                    seg.free_link(l.link, l.serial, STATE_ACTIVE);
                }
                live
            });
            let reset = (before - self.inbound.len()) as u64;
            self.counters
                .links_reset
                .fetch_add(reset, Ordering::Relaxed);
        }
        let lg = self.seg.link_generation().load(Ordering::Acquire);
        if lg != self.link_gen {
            self.link_gen = lg;
            self.refresh_links();
        }
    }

    /// Rescans the link table for links into this port.
    fn refresh_links(&mut self) {
        let seg = Arc::clone(&self.seg);
        let g = *seg.geometry();
        let mut found = Vec::new();
        for l in 0..g.max_links {
            let (serial, state) = split(seg.link_word(l).load(Ordering::Acquire));
            if state != STATE_ACTIVE
                || seg.link_u32(l, link_field::DST).load(Ordering::Relaxed) != self.index
                || seg
                    .link_u32(l, link_field::DST_EPOCH)
                    .load(Ordering::Relaxed)
                    != self.epoch
            {
                continue;
            }
            let src = Peer {
                index: seg.link_u32(l, link_field::SRC).load(Ordering::Relaxed),
                epoch: seg
                    .link_u32(l, link_field::SRC_EPOCH)
                    .load(Ordering::Relaxed),
            };
            if src.index >= g.max_ports || src.index == self.index {
                continue;
            }
            found.push((l, serial, src));
        }
        let mut old = std::mem::take(&mut self.inbound);
        for (link, serial, src) in found {
            let ring = g.ring_off(link);
            if let Some(pos) = old
                .iter()
                .position(|o| o.link == link && o.serial == serial)
            {
                self.inbound.push(old.swap_remove(pos));
                continue;
            }
            if self
                .ring_u32(ring, ring_field::COOKIE)
                .load(Ordering::Relaxed)
                != RING_COOKIE
            {
                self.counters.corrupt_rings.fetch_add(1, Ordering::Relaxed);
            }
            let tail = self
                .ring_u32(ring, ring_field::TAIL)
                .load(Ordering::Acquire);
            self.inbound.push(InLink {
                src,
                link,
                serial,
                ring,
                tail,
                published: tail,
                head_seen: tail,
                consumed: false,
            });
        }
        // Links that disappeared: publish what we consumed (harmless if the
        // slot was reused: the new owner resets the ring when claiming).
        for l in old {
            if l.published != l.tail {
                self.ring_u32(l.ring, ring_field::TAIL)
                    .store(l.tail, Ordering::Release);
            }
        }
    }

    /// Copies the next received frame into `dst` and returns its length and
    /// the sending port. Bad descriptors are counted and skipped. `dst` must
    /// hold `frame_size` bytes.
    pub fn recv_into(&mut self, dst: &mut [u8]) -> Option<(usize, u32)> {
        let f = self.next_frame(dst.len())?;
        self.seg.region.read(f.offset(), &mut dst[..f.len()]);
        Some((f.len(), f.src()))
    }

    /// Takes the next received frame without copying it; read it with
    /// [`Segment::frame_bytes`] before the next call on this port.
    ///
    /// Only for trusted peers (devices of this process, or processes the
    /// configuration declares trusted): the frame stays in the sender's
    /// buffer while it is parsed, so a sender that broke the protocol and
    /// rewrote it meanwhile would race with the reader.
    pub fn recv_in_place(&mut self) -> Option<InPlaceFrame> {
        self.next_frame(usize::MAX)
    }

    /// Validates the next descriptor and consumes its slot. The slot's
    /// buffer stays untouched by the sender until the tail is published,
    /// which happens at the next call (or `flush`), after the caller is done.
    fn next_frame(&mut self, room: usize) -> Option<InPlaceFrame> {
        self.check_generations();
        let n = self.inbound.len();
        let slots = self.slots;
        for k in 0..n {
            let i = (self.rr + k) % n;
            let link = &mut self.inbound[i];
            if link.tail.wrapping_sub(link.published) >= PUBLISH_BATCH {
                link.published = link.tail;
                self.seg
                    .region
                    .atomic_u32(link.ring + ring_field::TAIL)
                    .store(link.tail, Ordering::Release);
            }
            loop {
                let link = &mut self.inbound[i];
                if link.tail == link.head_seen {
                    let head = self
                        .seg
                        .region
                        .atomic_u32(link.ring + ring_field::HEAD)
                        .load(Ordering::Acquire);
                    let avail = head.wrapping_sub(link.tail);
                    if avail == 0 {
                        break;
                    }
                    if avail > slots {
                        // Garbage indices: resynchronise to the producer's
                        // head rather than read slots that were never written.
                        self.counters.corrupt_rings.fetch_add(1, Ordering::Relaxed);
                        link.tail = head;
                        link.head_seen = head;
                        link.published = head;
                        self.seg
                            .region
                            .atomic_u32(link.ring + ring_field::TAIL)
                            .store(head, Ordering::Release);
                        break;
                    }
                    link.head_seen = head;
                }
                let at = link.ring + RING_HEADER_LEN + (link.tail & self.mask) as usize * DESC_LEN;
                let src = link.src.index;
                link.tail = link.tail.wrapping_add(1);
                link.consumed = true;
                let mut d = [0u8; DESC_LEN];
                self.seg.region.read(at, &mut d);
                let g = self.seg.geometry();
                match DescriptorRepr::parse(&Descriptor::new_unchecked(&d[..]), g, src) {
                    Ok(r) if room >= r.length as usize => {
                        self.rr = i;
                        return Some(InPlaceFrame::new(
                            g.pool_off(src) + r.buffer as usize * g.frame_size as usize,
                            r.length as usize,
                            src,
                        ));
                    }
                    _ => {
                        self.counters
                            .bad_descriptors
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        None
    }

    /// Is a frame waiting on any incoming link (or did links change)?
    pub fn rx_pending(&self) -> bool {
        if self.seg.link_generation().load(Ordering::Acquire) != self.link_gen
            || self.seg.port_generation().load(Ordering::Acquire) != self.port_gen
        {
            return true;
        }
        self.inbound.iter().any(|l| {
            self.ring_u32(l.ring, ring_field::HEAD)
                .load(Ordering::Acquire)
                != l.tail
        })
    }

    /// Frames queued locally because a ring was full.
    pub fn backlog_len(&self) -> usize {
        self.out.iter().flatten().map(|l| l.backlog.len()).sum()
    }

    /// Publishes pending ring indices, pushes backlogged frames, reclaims
    /// buffers, and wakes peers that sleep and have new frames (or, as
    /// senders, new free slots). Call after every burst.
    pub fn flush(&mut self) {
        let rings = rings!(self);
        for &i in &self.active {
            let Some(link) = self.out[i].as_mut() else {
                continue;
            };
            while let Some(&(b, len)) = link.backlog.front() {
                if !rings.push(link, b, len) {
                    break;
                }
                link.backlog.pop_front();
            }
            rings.publish(link);
        }
        for link in &mut self.inbound {
            if link.published != link.tail {
                link.published = link.tail;
                rings
                    .u32(link.ring, ring_field::TAIL)
                    .store(link.tail, Ordering::Release);
            }
        }
        if self.pool.free_len() < self.pool.len() / 2 {
            self.reclaim();
        } else {
            self.check_generations();
        }
        let any = self
            .active
            .iter()
            .any(|&i| self.out[i].as_ref().is_some_and(|l| l.pushed))
            || self.inbound.iter().any(|l| l.consumed);
        if !any {
            return;
        }
        // Pairs with the fence in `prepare_sleep`: either the peer sees our
        // ring update, or we see its sleeping flag.
        fence(Ordering::SeqCst);
        for &i in &self.active {
            if let Some(l) = self.out[i].as_mut()
                && std::mem::take(&mut l.pushed)
            {
                self.seg.wake_port(l.peer.index);
            }
        }
        for l in &mut self.inbound {
            if std::mem::take(&mut l.consumed) {
                self.seg.wake_port(l.src.index);
            }
        }
    }

    /// The doorbell word others bump to wake this port's owner.
    pub fn doorbell(&self) -> &AtomicU32 {
        self.seg.port_u32(self.index, port_field::DOORBELL)
    }

    /// Announces that the owner is about to sleep; returns the doorbell value
    /// to wait on. Check [`Port::rx_pending`] after this and before sleeping.
    pub fn prepare_sleep(&self) -> u32 {
        let seq = self.doorbell().load(Ordering::Acquire);
        self.seg
            .port_u32(self.index, port_field::SLEEPING)
            .store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        seq
    }

    /// Clears the sleeping flag.
    pub fn end_sleep(&self) {
        self.seg
            .port_u32(self.index, port_field::SLEEPING)
            .store(0, Ordering::Relaxed);
    }
}

impl Port {
    /// Sets how long dropping the port may wait for its receivers to take
    /// what it sent (default 250 ms; zero detaches at once).
    pub fn set_drain_on_drop(&mut self, limit: std::time::Duration) {
        self.drain_on_drop = limit;
    }

    /// Waits (at most `limit`) until every frame this port sent has been
    /// taken by its receiver, so a graceful detach loses nothing. Receivers
    /// that are gone are not waited for, and one that takes nothing for
    /// 20 ms (stuck, or hostile) ends the wait early.
    pub fn drain(&mut self, limit: std::time::Duration) {
        let start = std::time::Instant::now();
        let mut last = (usize::MAX, start);
        loop {
            self.flush();
            self.reclaim();
            let pending: usize = self
                .active
                .iter()
                .filter_map(|&i| self.out[i].as_ref())
                .map(|l| l.inflight.len() + l.backlog.len())
                .sum();
            let now = std::time::Instant::now();
            if pending < last.0 {
                last = (pending, now);
            }
            if pending == 0
                || limit.is_zero()
                || now.duration_since(start) >= limit
                || now.duration_since(last.1) >= std::time::Duration::from_millis(20)
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.drain(self.drain_on_drop);
        for i in 0..self.out.len() {
            self.drop_out_link(i);
        }
        // Incoming links belong to their senders; free only orphans.
        for l in std::mem::take(&mut self.inbound) {
            if self.seg.port_epoch(l.src.index) != Some(l.src.epoch) {
                self.seg.free_link(l.link, l.serial, STATE_ACTIVE);
            }
        }
        self.seg.detach(self.index, self.epoch);
    }
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("segment", &self.seg.name())
            .field("index", &self.index)
            .field("epoch", &self.epoch)
            .finish()
    }
}
