//! Ports: one attachment of a device adapter to a segment, with its
//! transmit buffer pool, outgoing links (producer side) and incoming links
//! (consumer side).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use super::layout::{
    DESC_LEN, Descriptor, DescriptorRepr, RING_COOKIE, RING_HEADER_LEN, STATE_ACTIVE, link_field,
    port_field, ring_field,
};
use super::segment::{Segment, split};

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

/// A transmit buffer of this port's pool, lent until sent or dropped.
#[derive(Debug)]
pub struct TxBuf {
    index: u32,
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
    head: u32,
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
    consumed: bool,
}

/// One attachment of an adapter to a segment.
pub struct Port {
    seg: Arc<Segment>,
    index: u32,
    epoch: u32,
    mask: u32,
    slots: u32,
    free: Vec<u32>,
    refs: Vec<u16>,
    out: Vec<Option<OutLink>>,
    inbound: Vec<InLink>,
    rr: usize,
    port_gen: u32,
    link_gen: u32,
    counters: Arc<PortCounters>,
}

impl Port {
    pub(crate) fn new(seg: Arc<Segment>, index: u32, epoch: u32) -> Port {
        let g = *seg.geometry();
        let mut p = Port {
            index,
            epoch,
            mask: g.ring_slots - 1,
            slots: g.ring_slots,
            free: (0..g.buffers).rev().collect(),
            refs: vec![0; g.buffers as usize],
            out: (0..g.max_ports).map(|_| None).collect(),
            inbound: Vec::new(),
            rr: 0,
            port_gen: seg.port_generation().load(Ordering::Acquire),
            link_gen: seg
                .link_generation()
                .load(Ordering::Acquire)
                .wrapping_sub(1),
            counters: Arc::default(),
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

    /// Number of free transmit buffers (after reclaiming finished ones if
    /// none are free).
    pub fn free_buffers(&mut self) -> usize {
        if self.free.len() <= LOW_WATER {
            self.reclaim();
        }
        self.free.len()
    }

    /// Takes a free buffer, or `None` if all are in flight (back-pressure).
    pub fn alloc(&mut self) -> Option<TxBuf> {
        if self.free.len() <= LOW_WATER {
            self.reclaim();
        }
        match self.free.pop() {
            Some(index) => {
                self.refs[index as usize] = 1;
                Some(TxBuf { index })
            }
            None => {
                self.counters.ring_full.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The whole buffer (`frame_size` bytes) behind `buf`.
    pub fn buffer_mut(&mut self, buf: &mut TxBuf) -> &mut [u8] {
        let g = self.seg.geometry();
        let off = g.pool_off(self.index) + buf.index as usize * g.frame_size as usize;
        // SAFETY: `TxBuf` is not Clone and is only created by `alloc` from the
        // free list, so this port holds the buffer exclusively until `send`
        // or `release`; the borrow is tied to `&mut self` and `&mut buf`.
        // Peers only read buffers a descriptor names, and none names this one.
        unsafe { self.seg.region.bytes_mut(off, g.frame_size as usize) }
    }

    /// Returns an unsent buffer to the pool.
    pub fn release(&mut self, buf: TxBuf) {
        self.unref(buf.index);
    }

    fn unref(&mut self, index: u32) {
        let r = &mut self.refs[index as usize];
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.free.push(index);
        }
    }

    /// Sends the first `len` bytes of `buf` to each of `to` (one for
    /// unicast, several for broadcast: the same buffer is shared). Frames to
    /// a vanished peer are counted as unroutable. Never drops because a ring
    /// is full: such frames wait in a local backlog for [`Port::flush`].
    pub fn send(&mut self, buf: TxBuf, len: usize, to: &[Peer]) {
        let len = len.min(self.seg.frame_size()) as u32;
        for &peer in to {
            if peer.index == self.index || peer.index as usize >= self.out.len() {
                continue;
            }
            if !self.ensure_link(peer) {
                self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.refs[buf.index as usize] += 1;
            let idx = peer.index as usize;
            let mut link = self.out[idx].take().expect("ensured above");
            if link.backlog.is_empty() && self.try_push(&mut link, buf.index, len) {
                link.pushed = true;
            } else {
                link.backlog.push_back((buf.index, len));
            }
            self.out[idx] = Some(link);
        }
        self.unref(buf.index);
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
            tail_seen: 0,
            inflight: VecDeque::new(),
            backlog: VecDeque::new(),
            pushed: true, // wake the peer so it picks the new link up
        });
        true
    }

    fn try_push(&self, link: &mut OutLink, buffer: u32, len: u32) -> bool {
        let tail = self
            .ring_u32(link.ring, ring_field::TAIL)
            .load(Ordering::Acquire);
        let used = link.head.wrapping_sub(tail);
        if used >= self.slots {
            if used > self.slots {
                self.counters.corrupt_rings.fetch_add(1, Ordering::Relaxed);
            }
            return false;
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
        self.ring_u32(link.ring, ring_field::HEAD)
            .store(link.head, Ordering::Release);
        link.inflight.push_back(buffer);
        true
    }

    /// Returns buffers whose descriptors the consumers have passed.
    fn reclaim(&mut self) {
        self.check_generations();
        for i in 0..self.out.len() {
            let Some(mut link) = self.out[i].take() else {
                continue;
            };
            let tail = self
                .ring_u32(link.ring, ring_field::TAIL)
                .load(Ordering::Acquire);
            let mut done = tail.wrapping_sub(link.tail_seen) as usize;
            if done > link.inflight.len() {
                // A consumer claiming more than we sent is corrupt; trust only
                // what we know is in the ring.
                self.counters.corrupt_rings.fetch_add(1, Ordering::Relaxed);
                done = link.inflight.len();
            }
            link.tail_seen = link.tail_seen.wrapping_add(done as u32);
            for _ in 0..done {
                if let Some(b) = link.inflight.pop_front() {
                    self.unref(b);
                }
            }
            self.out[i] = Some(link);
        }
    }

    fn drop_out_link(&mut self, idx: usize) {
        if let Some(link) = self.out[idx].take() {
            for b in link
                .inflight
                .iter()
                .chain(link.backlog.iter().map(|(b, _)| b))
            {
                let r = &mut self.refs[*b as usize];
                *r = r.saturating_sub(1);
                if *r == 0 {
                    self.free.push(*b);
                }
            }
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
            for i in 0..self.out.len() {
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
        let old = std::mem::take(&mut self.inbound);
        for (link, serial, src) in found {
            let ring = g.ring_off(link);
            let tail = old
                .iter()
                .find(|o| o.link == link && o.serial == serial)
                .map(|o| o.tail)
                .unwrap_or_else(|| {
                    self.ring_u32(ring, ring_field::TAIL)
                        .load(Ordering::Acquire)
                });
            self.inbound.push(InLink {
                src,
                link,
                serial,
                ring,
                tail,
                consumed: false,
            });
        }
    }

    /// Copies the next received frame into `dst` and returns its length and
    /// the sending port. Bad descriptors are counted and skipped. `dst` must
    /// hold `frame_size` bytes.
    pub fn recv_into(&mut self, dst: &mut [u8]) -> Option<(usize, u32)> {
        self.check_generations();
        let n = self.inbound.len();
        for k in 0..n {
            let i = (self.rr + k) % n;
            loop {
                let link = &self.inbound[i];
                let head = self
                    .ring_u32(link.ring, ring_field::HEAD)
                    .load(Ordering::Acquire);
                let avail = head.wrapping_sub(link.tail);
                if avail == 0 {
                    break;
                }
                if avail > self.slots
                    || self
                        .ring_u32(link.ring, ring_field::COOKIE)
                        .load(Ordering::Relaxed)
                        != RING_COOKIE
                {
                    // Garbage indices: resynchronise to the producer's head
                    // rather than read slots that were never written.
                    self.counters.corrupt_rings.fetch_add(1, Ordering::Relaxed);
                    let ring = self.inbound[i].ring;
                    self.inbound[i].tail = head;
                    self.ring_u32(ring, ring_field::TAIL)
                        .store(head, Ordering::Release);
                    break;
                }
                let link = &self.inbound[i];
                let at = link.ring + RING_HEADER_LEN + (link.tail & self.mask) as usize * DESC_LEN;
                let mut d = [0u8; DESC_LEN];
                self.seg.region.read(at, &mut d);
                let src = link.src.index;
                let parsed = DescriptorRepr::parse(
                    &Descriptor::new_unchecked(&d[..]),
                    self.seg.geometry(),
                    src,
                );
                let got = match parsed {
                    Ok(r) if dst.len() >= r.length as usize => {
                        let g = self.seg.geometry();
                        let off = g.pool_off(src) + r.buffer as usize * g.frame_size as usize;
                        self.seg.region.read(off, &mut dst[..r.length as usize]);
                        Some(r.length as usize)
                    }
                    _ => {
                        self.counters
                            .bad_descriptors
                            .fetch_add(1, Ordering::Relaxed);
                        None
                    }
                };
                let link = &mut self.inbound[i];
                link.tail = link.tail.wrapping_add(1);
                link.consumed = true;
                let (ring, tail) = (link.ring, link.tail);
                self.ring_u32(ring, ring_field::TAIL)
                    .store(tail, Ordering::Release);
                if let Some(len) = got {
                    self.rr = i + 1;
                    return Some((len, src));
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

    /// Pushes backlogged frames, reclaims buffers, and wakes peers that
    /// sleep and have new frames (or, as senders, new free slots).
    pub fn flush(&mut self) {
        for i in 0..self.out.len() {
            let Some(mut link) = self.out[i].take() else {
                continue;
            };
            while let Some(&(b, len)) = link.backlog.front() {
                if !self.try_push(&mut link, b, len) {
                    break;
                }
                link.backlog.pop_front();
                link.pushed = true;
            }
            self.out[i] = Some(link);
        }
        if self.free.len() < self.refs.len() / 2 {
            self.reclaim();
        } else {
            self.check_generations();
        }
        let any =
            self.out.iter().flatten().any(|l| l.pushed) || self.inbound.iter().any(|l| l.consumed);
        if !any {
            return;
        }
        // Pairs with the fence in `prepare_sleep`: either the peer sees our
        // ring update, or we see its sleeping flag.
        fence(Ordering::SeqCst);
        for i in 0..self.out.len() {
            if let Some(l) = &mut self.out[i]
                && std::mem::take(&mut l.pushed)
            {
                let peer = l.peer.index;
                self.seg.wake_port(peer);
            }
        }
        for i in 0..self.inbound.len() {
            if std::mem::take(&mut self.inbound[i].consumed) {
                let peer = self.inbound[i].src.index;
                self.seg.wake_port(peer);
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

impl Segment {
    /// Rings `port`'s doorbell if its owner sleeps.
    pub(crate) fn wake_port(&self, port: u32) {
        if self
            .port_u32(port, port_field::SLEEPING)
            .load(Ordering::SeqCst)
            != 0
        {
            let bell = self.port_u32(port, port_field::DOORBELL);
            bell.fetch_add(1, Ordering::AcqRel);
            let _ = rustix::thread::futex::wake(
                bell,
                rustix::thread::futex::Flags::empty(),
                i32::MAX as u32,
            );
        }
    }
}

impl Segment {
    /// Wakes `port`'s owner whether or not it sleeps (stop requests,
    /// configuration changes).
    pub fn ring_doorbell(&self, port: u32) {
        if port >= self.geometry().max_ports {
            return;
        }
        let bell = self.port_u32(port, port_field::DOORBELL);
        bell.fetch_add(1, Ordering::AcqRel);
        let _ = rustix::thread::futex::wake(
            bell,
            rustix::thread::futex::Flags::empty(),
            i32::MAX as u32,
        );
    }
}

impl Drop for Port {
    fn drop(&mut self) {
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
