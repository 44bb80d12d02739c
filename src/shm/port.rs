//! Ports: one attachment of a device adapter to a segment, with its
//! transmit buffer pool, outgoing links (producer side) and incoming links
//! (consumer side).
//!
//! A [`Port`] is owned by one thread (every operation takes `&mut self`).
//! It sends by lending a buffer of its pool ([`Port::alloc`],
//! [`Port::buffer_mut`]) and queueing a descriptor on the link to each
//! destination ([`Port::send`]), claiming the link the first time the pair
//! talks; it receives by taking validated descriptors from its incoming
//! links in turn ([`Port::recv_into`], [`Port::recv_in_place`]).
//!
//! Contract: a full ring never drops a frame: it waits in the link's
//! backlog, and a port out of buffers says so (`alloc` returns `None`).
//! [`Port::flush`] publishes ring indices, pushes backlogs, returns
//! buffers receivers are done with and wakes sleeping peers; call it after
//! every burst. Links to ports that went away are dropped and their
//! buffers returned; bad descriptors and corrupt rings are counted in
//! [`PortCounters`] and skipped. Dropping a port waits briefly for its
//! receivers ([`Port::set_drain_on_drop`]) and then detaches.
//!
//! Dependencies point one way: this module uses `segment`, `ring` and
//! `region`, none of which uses it. [`Segment::attach`] and
//! [`Segment::join`] are defined here, next to `Port::new`, because they
//! return a `Port`; `segment.rs` offers the slot claim they wrap.
//!
//! ```
//! use shmnet::shm::{NetworkParams, PortInfo, Segment, SegmentKind};
//! let seg = Segment::open_or_create("doc-port", SegmentKind::Process, &NetworkParams::new(1500)).unwrap();
//! let mut a = seg.attach(&PortInfo::named("a")).unwrap();
//! let mut b = seg.attach(&PortInfo::named("b")).unwrap();
//! for i in 0..3u8 {
//!     let mut buf = a.alloc().unwrap();
//!     a.buffer_mut(&mut buf)[0] = i;
//!     a.send(buf, 60, &[b.peer()]);
//! }
//! a.flush();
//! let mut out = vec![0u8; seg.frame_size()];
//! let got: Vec<u8> = std::iter::from_fn(|| b.recv_into(&mut out).map(|_| out[0])).collect();
//! assert_eq!(got, [0, 1, 2]);
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use super::ShmError;
use super::layout::{STATE_ACTIVE, field};
use super::region::{InPlaceFrame, Pool, TxBuf};
use super::ring::{Consumer, Pop, Producer, Rings};
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

/// A link this port sends on: the ring's producer end plus the frames
/// waiting for room in it.
struct OutLink {
    peer: Peer,
    link: u32,
    serial: u32,
    ring: Producer,
    /// Frames waiting for ring space: `(buffer, length)`.
    backlog: VecDeque<(u32, u32)>,
    /// Descriptors were pushed since the last flush (the peer may need a
    /// wake-up).
    pushed: bool,
}

impl OutLink {
    #[inline]
    fn push(&mut self, rings: &Rings, buffer: u32, len: u32) -> bool {
        let ok = rings.push(&mut self.ring, buffer, len);
        self.pushed |= ok;
        ok
    }
}

/// A link this port receives on: the ring's consumer end.
struct InLink {
    src: Peer,
    link: u32,
    serial: u32,
    ring: Consumer,
    /// Slots were consumed since the last flush (the sender may need a
    /// wake-up).
    consumed: bool,
}

/// The ring view of a port, borrowed field by field so `self.out` or
/// `self.inbound` can be borrowed mutably at the same time.
macro_rules! rings {
    ($p:expr) => {
        Rings::new(
            &$p.seg.region,
            $p.seg.geometry(),
            &$p.counters.corrupt_rings,
        )
    };
}

/// One attachment of an adapter to a segment.
pub struct Port {
    seg: Arc<Segment>,
    index: u32,
    epoch: u32,
    pool: Pool,
    out: Vec<Option<OutLink>>,
    /// Indices of `out` that hold a link.
    active: Vec<usize>,
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
            pool: Pool::new(g.pool_off(index), g.frame_size as usize, g.buffers),
            out: (0..g.max_ports).map(|_| None).collect(),
            active: Vec::new(),
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
            if !(link.backlog.is_empty() && link.push(&rings, index, len)) {
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
            ring: Producer::new(self.seg.geometry().ring_off(link), self.index as u16),
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
            for b in rings.reclaim(&mut link.ring) {
                self.pool.unref(b);
            }
        }
    }

    fn drop_out_link(&mut self, idx: usize) {
        if let Some(link) = self.out[idx].take() {
            for b in link
                .ring
                .in_flight()
                .chain(link.backlog.iter().map(|&(b, _)| b))
            {
                self.pool.unref(b);
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
            if state != STATE_ACTIVE {
                continue;
            }
            let [(index, epoch), dst] = seg.link_ends(l);
            let src = Peer { index, epoch };
            if dst != (self.index, self.epoch) || index >= g.max_ports || index == self.index {
                continue;
            }
            found.push((l, serial, src));
        }
        let rings = rings!(self);
        let mut old = std::mem::take(&mut self.inbound);
        for (link, serial, src) in found {
            if let Some(pos) = old
                .iter()
                .position(|o| o.link == link && o.serial == serial)
            {
                self.inbound.push(old.swap_remove(pos));
                continue;
            }
            self.inbound.push(InLink {
                src,
                link,
                serial,
                ring: rings.consumer(g.ring_off(link)),
                consumed: false,
            });
        }
        // Links that disappeared: publish what we consumed (harmless if the
        // slot was reused: the new owner resets the ring when claiming).
        for mut l in old {
            rings.publish_tail(&mut l.ring);
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
        let rings = rings!(self);
        let g = self.seg.geometry();
        let n = self.inbound.len();
        for k in 0..n {
            let i = (self.rr + k) % n;
            let link = &mut self.inbound[i];
            rings.publish_tail_batched(&mut link.ring);
            let src = link.src.index;
            loop {
                match rings.pop(&mut link.ring, src) {
                    Pop::Empty => break,
                    Pop::Frame(r) if room >= r.length as usize => {
                        link.consumed = true;
                        self.rr = i;
                        return Some(InPlaceFrame::new(
                            g.buffer_off(src, r.buffer),
                            r.length as usize,
                            src,
                        ));
                    }
                    Pop::Frame(_) | Pop::Bad => {
                        link.consumed = true;
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
        let rings = rings!(self);
        self.inbound.iter().any(|l| rings.pending(&l.ring))
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
                if !link.push(&rings, b, len) {
                    break;
                }
                link.backlog.pop_front();
            }
            rings.publish(&mut link.ring);
        }
        for link in &mut self.inbound {
            rings.publish_tail(&mut link.ring);
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
        self.seg.port_u32(self.index, field::port::DOORBELL)
    }

    /// Announces that the owner is about to sleep; returns the doorbell value
    /// to wait on. Check [`Port::rx_pending`] after this and before sleeping.
    pub fn prepare_sleep(&self) -> u32 {
        let seq = self.doorbell().load(Ordering::Acquire);
        self.seg
            .port_u32(self.index, field::port::SLEEPING)
            .store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        seq
    }

    /// Clears the sleeping flag.
    pub fn end_sleep(&self) {
        self.seg
            .port_u32(self.index, field::port::SLEEPING)
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
                .map(|l| l.ring.in_flight_len() + l.backlog.len())
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
