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
//! are read through [`PeerView`](crate::shm::region::PeerView)s.
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
use super::region::{Pool, Region};
use super::ring::{Consumer, Producer};
use super::segment::{Segment, SegmentKind};

mod data;

/// How often a busy port looks at its sockets for joins and departures
/// (a sleeping one is woken by them).
const MEMBERSHIP_EVERY: Duration = Duration::from_millis(1);
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
