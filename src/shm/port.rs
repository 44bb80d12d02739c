//! Ports: one attachment of a device adapter to a network, with its own
//! region (transmit buffers, the rings it produces, the tails it consumes
//! up to), its peers, and the links to them.
//!
//! A [`Port`] is owned by one thread (every operation takes `&mut self`).
//! It sends by lending a buffer of its pool ([`Port::alloc`],
//! [`Port::buffer_mut`]) and queueing a descriptor on its ring towards each
//! destination ([`Port::send`]), starting the ring the first time the pair
//! talks; it receives by taking validated descriptors from the rings its
//! peers produce for it, in turn ([`Port::recv_into`],
//! [`Port::recv_in_place`]). It writes only its own region; peers' regions
//! are read through [`PeerView`]s.
//!
//! Contract: a full ring never drops a frame: it waits in the link's
//! backlog, and a port out of buffers says so (`alloc` returns `None`).
//! [`Port::flush`] publishes ring indices, pushes backlogs, returns
//! buffers receivers are done with, applies membership changes and wakes
//! sleeping peers; call it after every burst. Links to ports that left are
//! dropped and their buffers returned; a link whose consumer reports an
//! impossible tail is restarted under a new serial (it heals); bad
//! descriptors and corrupt rings are counted in [`PortCounters`] and
//! skipped. Dropping a port waits briefly for its receivers
//! ([`Port::set_drain_on_drop`]) and then leaves the network.
//!
//! ```
//! use shmnet::shm::{NetworkParams, PortInfo, Segment, SegmentKind};
//! let seg = Segment::open_or_create("doc-port", SegmentKind::InProcess, &NetworkParams::new(1500)).unwrap();
//! let mut a = seg.attach(&PortInfo::named("a")).unwrap();
//! let mut b = seg.attach(&PortInfo::named("b")).unwrap();
//! a.flush(); // learn that b joined
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
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use super::ShmError;
use super::host::{self, HostMember};
use super::layout::{Geometry, HeaderRepr, LAYOUT_VERSION, PortHeader, field};
use super::local::LocalMember;
use super::member::{Doorbell, Event, PeerInfo, PeerLink, PortInfo};
use super::region::{InPlaceFrame, Pool, Region, TxBuf};
use super::ring::{Consumer, Pop, Producer, Reclaim, Rings};
use super::segment::{Segment, SegmentKind};

/// Reclaim finished buffers once this few are left (callers may keep a
/// reserve of up to this many for replies).
const LOW_WATER: usize = 16;
/// …and at least every this many allocations, so that buffers come back
/// while they are still in the cache: the free list is a stack, and a port
/// that reclaimed only at the low-water mark would cycle through every
/// buffer it has, touching (and first-faulting) all of its memory where a
/// few dozen hot buffers do.
const RECLAIM_EVERY: u32 = 32;
/// How often a busy port looks at its sockets for joins and departures
/// (a sleeping one is woken by them).
const MEMBERSHIP_EVERY: Duration = Duration::from_millis(1);
/// How long a consumer may leave a link's tail on another serial while
/// frames wait before the link is restarted (it normally follows within
/// one wake-up).
const FOLLOW_WITHIN: Duration = Duration::from_millis(500);
/// How long a joiner waits for the ports already there to answer, so its
/// first frames reach everyone.
const SETTLE: Duration = Duration::from_millis(500);

/// A peer port as the sender knows it: index plus the epoch it was attached
/// at, so a frame never goes to a different device reusing the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The peer's port index in the network.
    pub index: u32,
    /// The epoch of the attachment the frame is meant for.
    pub epoch: u32,
}

/// Counters of a port, readable from any thread.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Descriptors that failed validation (dropped).
    pub bad_descriptors: AtomicU64,
    /// Ring indices out of range (a peer wrote garbage; the ring was resynced
    /// or the link restarted).
    pub corrupt_rings: AtomicU64,
    /// Times a transmit found no free buffer (back-pressure applied).
    pub ring_full: AtomicU64,
    /// Frames to a peer that is not (or no longer) on the network.
    pub unroutable: AtomicU64,
    /// Links dropped or restarted because the other end went away or broke
    /// the ring protocol.
    pub links_reset: AtomicU64,
    /// Would-be peers refused by the membership checks (another user, a bad
    /// hello, an unsealed or mis-sized region).
    pub peers_rejected: AtomicU64,
}

/// How this port learns who is on the network.
enum Member {
    Local(LocalMember),
    Host(HostMember),
}

/// The ring this port produces towards one peer, plus the frames waiting
/// for room in it.
struct OutLink {
    ring: Producer,
    /// Frames waiting for ring space: `(buffer, length)`.
    backlog: VecDeque<(u32, u32)>,
    /// Descriptors were pushed since the last flush (the peer may need a
    /// wake-up).
    pushed: bool,
    /// Since when the consumer's tail has not been on this ring's serial
    /// while frames were in flight.
    unfollowed_since: Option<Instant>,
}

/// One peer: who it is, its memory, and the links both ways.
struct PeerState {
    link: PeerLink,
    out: Option<OutLink>,
    inbound: Consumer,
    /// Slots were consumed since the last flush (the sender may need a
    /// wake-up).
    consumed: bool,
}

impl Segment {
    /// Attaches a new port (a device adapter) to the network.
    pub fn attach(self: &Arc<Self>, info: &PortInfo) -> Result<Port, ShmError> {
        Port::attach(Arc::clone(self), info)
    }

    /// Opens (or creates) the network and attaches a port.
    pub fn join(
        name: &str,
        kind: SegmentKind,
        params: &super::NetworkParams,
        info: &PortInfo,
    ) -> Result<Port, ShmError> {
        Self::open_or_create(name, kind, params)?.attach(info)
    }
}

/// One attachment of an adapter to a network.
pub struct Port {
    seg: Arc<Segment>,
    info: PortInfo,
    own: Arc<Region>,
    geo: Geometry,
    index: u32,
    epoch: u32,
    pool: Pool,
    /// Allocations since the last reclaim.
    since_reclaim: u32,
    doorbell: Doorbell,
    member: Member,
    /// By peer index.
    peers: Vec<Option<PeerState>>,
    /// Indices of `peers` that hold one, in join order.
    live: Vec<u32>,
    events: Vec<Event>,
    rr: usize,
    generation: u32,
    /// Links started so far (each gets a serial of its own).
    starts: u32,
    counters: Arc<PortCounters>,
    /// How long dropping the port waits for receivers (see `drain`).
    drain_on_drop: Duration,
    /// Set on waking: look at the membership sockets at the next flush.
    member_due: AtomicBool,
    flushes: u32,
    last_member_poll: Instant,
}

impl Port {
    fn attach(seg: Arc<Segment>, info: &PortInfo) -> Result<Port, ShmError> {
        let geo = *seg.geometry();
        let doorbell = Doorbell::new()?;
        let name = seg.name().to_string();
        let kind = seg.kind();
        let make = |index: u32, epoch: u32| {
            let len = geo.region_len();
            let region = match kind {
                SegmentKind::InProcess => Region::anonymous(len)?,
                SegmentKind::Shared => Region::sealed_memfd(&format!("{name}.{index}"), len)?,
            };
            let header = HeaderRepr {
                geo,
                index,
                epoch,
                pid: std::process::id(),
            };
            let mut buf = vec![0u8; header.buffer_len()];
            header.emit(&mut PortHeader::new_unchecked(&mut buf[..]));
            region.write(0, &buf);
            region
                .atomic_u32(field::header::VERSION)
                .store(LAYOUT_VERSION, Ordering::Release);
            Ok(region)
        };
        let (member, own, index, epoch) = match kind {
            SegmentKind::InProcess => {
                let net = seg.local().expect("a process segment has a local network");
                let (m, own) = net.join(info, &doorbell, make)?;
                let (i, e) = (m.index(), m.epoch());
                (Member::Local(m), own, i, e)
            }
            SegmentKind::Shared => {
                let (m, own) =
                    HostMember::join(&host::runtime_dir()?, &name, &geo, info, &doorbell, make)?;
                let (i, e) = (m.index(), m.epoch());
                (Member::Host(m), Arc::new(own), i, e)
            }
        };
        let mut port = Port {
            pool: Pool::new(geo.buffer_off(0), geo.frame_size as usize, geo.buffers),
            since_reclaim: 0,
            peers: (0..geo.max_ports).map(|_| None).collect(),
            live: Vec::new(),
            events: Vec::new(),
            rr: 0,
            generation: 0,
            starts: 0,
            counters: Arc::default(),
            drain_on_drop: Duration::from_millis(250),
            member_due: AtomicBool::new(false),
            flushes: 0,
            last_member_poll: Instant::now(),
            seg,
            info: info.clone(),
            own,
            geo,
            index,
            epoch,
            doorbell,
            member,
        };
        if let Member::Host(m) = &mut port.member {
            m.settle(SETTLE, &mut port.events);
        }
        port.poll_membership();
        Ok(port)
    }

    /// The network this port is attached to.
    pub fn segment(&self) -> &Arc<Segment> {
        &self.seg
    }
    /// This port's index in the network (below `max_ports`).
    pub fn index(&self) -> u32 {
        self.index
    }
    /// This attachment's epoch: a later attachment at the same index has
    /// another.
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
    /// This port's counters, shareable with other threads.
    pub fn counters(&self) -> &Arc<PortCounters> {
        &self.counters
    }
    /// What this port published about itself.
    pub fn info(&self) -> &PortInfo {
        &self.info
    }
    /// Applies joins and departures now (the device calls it now and then;
    /// [`Port::flush`] does it too).
    pub fn maintain(&mut self) {
        self.poll_membership();
    }
    /// Might a peer have joined or left since we last looked? (Between
    /// threads: exactly; between processes: on waking, and every
    /// millisecond.) [`Port::maintain`] applies it.
    pub fn membership_due(&self) -> bool {
        match &self.member {
            Member::Local(m) => m.pending(),
            Member::Host(_) => {
                self.member_due.load(Ordering::Relaxed)
                    || self.last_member_poll.elapsed() >= MEMBERSHIP_EVERY
            }
        }
    }
    /// Changes whenever a peer joins or leaves (cache key for lookups).
    pub fn generation(&self) -> u32 {
        self.generation
    }
    /// The ports this one knows on the network (itself excluded).
    pub fn peers(&self) -> impl Iterator<Item = &PeerInfo> + '_ {
        self.live
            .iter()
            .filter_map(|&i| self.peers[i as usize].as_ref())
            .map(|p| &p.link.info)
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
    fn reclaim(&mut self) {
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

    /// Looks for joins and departures and applies them.
    fn poll_membership(&mut self) {
        match &mut self.member {
            Member::Local(m) => m.poll(&mut self.events),
            Member::Host(m) => {
                m.poll(&mut self.events);
                self.counters
                    .peers_rejected
                    .store(m.stats().hellos_rejected, Ordering::Relaxed);
            }
        }
        self.last_member_poll = Instant::now();
        self.member_due.store(false, Ordering::Relaxed);
        for e in std::mem::take(&mut self.events) {
            match e {
                Event::Joined(link) => self.peer_joined(link),
                Event::Left { index, epoch } => self.peer_left(index, epoch),
            }
        }
    }

    fn peer_joined(&mut self, link: PeerLink) {
        let i = link.info.index;
        if i == self.index || i >= self.geo.max_ports {
            return;
        }
        if let Some(old) = &self.peers[i as usize] {
            let epoch = old.link.info.epoch;
            self.peer_left(i, epoch);
        }
        self.peers[i as usize] = Some(PeerState {
            inbound: Consumer::new(
                self.geo.ring_off(self.index),
                self.geo.tail_off(i),
                self.epoch,
            ),
            link,
            out: None,
            consumed: false,
        });
        self.live.push(i);
        self.generation = self.generation.wrapping_add(1);
    }

    fn peer_left(&mut self, index: u32, epoch: u32) {
        let Some(slot) = self.peers.get_mut(index as usize) else {
            return;
        };
        if slot.as_ref().is_none_or(|s| s.link.info.epoch != epoch) {
            return;
        }
        if let Some(state) = slot.take()
            && let Some(out) = state.out
        {
            for b in out
                .ring
                .in_flight()
                .chain(out.backlog.iter().map(|&(b, _)| b))
            {
                self.pool.unref(b);
            }
            self.counters.links_reset.fetch_add(1, Ordering::Relaxed);
        }
        self.live.retain(|&i| i != index);
        self.generation = self.generation.wrapping_add(1);
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

    /// What the owner sleeps on: readable when a peer rings the doorbell,
    /// or (between processes) when a peer joins or leaves.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        match &self.member {
            Member::Local(_) => self.doorbell.fd(),
            Member::Host(m) => m.wake_fd(),
        }
    }

    /// Writes `bytes` at `off` of this port's own region, whatever they
    /// break: how tests and fuzzing play a hostile peer (a peer can write
    /// nothing but its own memory). Out-of-range writes are ignored.
    #[cfg(feature = "testing")]
    pub fn vandalise(&self, off: usize, bytes: &[u8]) {
        self.own.write(off, bytes);
    }

    /// A handle other threads may use to wake the owner.
    pub(crate) fn doorbell(&self) -> Doorbell {
        self.doorbell.clone()
    }

    /// Announces that the owner is about to sleep on [`Port::wake_fd`].
    /// Check [`Port::rx_pending`] after this and before sleeping.
    pub fn prepare_sleep(&self) {
        self.own
            .atomic_u32(field::header::SLEEPING)
            .store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Clears the sleeping flag and the doorbell.
    pub fn end_sleep(&self) {
        self.own
            .atomic_u32(field::header::SLEEPING)
            .store(0, Ordering::Relaxed);
        self.doorbell.drain();
        self.member_due.store(true, Ordering::Relaxed);
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

impl Port {
    /// Sets how long dropping the port may wait for its receivers to take
    /// what it sent (default 250 ms; zero detaches at once).
    pub fn set_drain_on_drop(&mut self, limit: Duration) {
        self.drain_on_drop = limit;
    }

    /// Waits (at most `limit`) until every frame this port sent has been
    /// taken by its receiver, so a graceful detach loses nothing. Receivers
    /// that are gone are not waited for, and one that takes nothing for
    /// 20 ms (stuck, or hostile) ends the wait early.
    pub fn drain(&mut self, limit: Duration) {
        let start = Instant::now();
        let mut last = (usize::MAX, start);
        loop {
            self.flush();
            self.reclaim();
            let pending: usize = self
                .peers
                .iter()
                .flatten()
                .filter_map(|s| s.out.as_ref())
                .map(|o| o.ring.in_flight_len() + o.backlog.len())
                .sum();
            let now = Instant::now();
            if pending < last.0 {
                last = (pending, now);
            }
            if pending == 0
                || limit.is_zero()
                || now.duration_since(start) >= limit
                || now.duration_since(last.1) >= Duration::from_millis(20)
            {
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.drain(self.drain_on_drop);
        // Leaving happens when `member` drops: peers then forget us.
    }
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("network", &self.seg.name())
            .field("index", &self.index)
            .field("epoch", &self.epoch)
            .finish()
    }
}
