//! Virtual network adapters: the network cards a device's Nic drives.
//!
//! An [`Adapter`] is one attachment of a device to one network. The Nic
//! (`crate::stack`) owns two of them and drives them only through this
//! trait, so a new kind of network (a TAP port, a VXLAN tunnel, a memif
//! ring) is a new implementation here and no change in the Nic. The trait
//! covers:
//!
//! - **transmit without a copy**: [`Adapter::lend`] a buffer, let the stack
//!   write the frame straight into it ([`Adapter::buffer`]), then
//!   [`Adapter::commit`] it (the adapter switches it to the right peer) or
//!   [`Adapter::release`] it;
//! - **receive**, copied into a buffer the caller chooses
//!   ([`Adapter::recv_into`]: the Nic's, or another adapter's lent buffer
//!   when forwarding) or in place ([`Adapter::recv_in_place`] and
//!   [`Adapter::frame`], trusted peers only);
//! - [`Adapter::flush`] after each round;
//! - **sleeping**: [`Adapter::prepare_sleep`] says what wakes the device
//!   ([`Wake`]: a futex word in shared memory, or a readable descriptor such
//!   as an eventfd), [`sleep`] waits on several at once, and a [`Remote`]
//!   lets other threads wake the device and read the counters;
//! - the **neighbour directory**: who else is on the network
//!   ([`Neighbour`]), the MAC of an IP, the addresses of a named device;
//! - the network's facts (medium, IP MTU, frame capacity) and counters.
//!
//! Implementations: [`shm::ShmAdapter`], a port of a shared-memory segment;
//! `tap::TapAdapter` (feature `tap`), a Linux TAP interface;
//! [`vxlan::VxlanAdapter`], a VXLAN tunnel endpoint to remote hosts. Wrappers any
//! adapter can wear: [`pcap::Pcap`] writes every frame the adapter carries
//! to a capture file. [`bridge::Bridge`] joins two adapters: a TAP port is
//! a TAP interface bridged to a port of a segment.
//!
//! Adding an adapter (TAP, VXLAN, memif): implement [`Adapter`] in a file
//! here (lend buffers of your own memory; copy received frames into the
//! caller's buffer, or offer them in place if the memory is trusted and
//! stays put until the next receive; return [`Wake::Readable`] for an
//! eventfd or socket), then hand it to `stack::NetDevice::from_adapters`, or
//! let the device's attach step build it from the network's settings. The
//! Nic needs no change.
//!
//! Back-pressure, not drops: when every transmit buffer is in flight,
//! [`Adapter::can_lend`] says no and the Nic tells smoltcp to retry later (a
//! silent drop would cost smoltcp a 1 s retransmission stall). Everything
//! received is hostile: a frame too short for the medium is a counted drop
//! (`rx_malformed`), never a panic.
//!
//! ```
//! use shmnet::adapters::shm::{NetworkParams, SegmentKind, ShmAdapter, ShmOptions};
//! use shmnet::adapters::{Adapter, Neighbour};
//! use smoltcp::wire::EthernetAddress;
//! let me = |m| Neighbour { mac: EthernetAddress([2, 0, 0, 0, 0, m]), ipv4: None, ipv6: None };
//! let params = NetworkParams::new(1500);
//! let join = |name, m| {
//!     ShmAdapter::join("adapter-doc", SegmentKind::InProcess, &params, name, me(m), ShmOptions::default())
//! };
//! let (mut a, mut b) = (join("a", 1).unwrap(), join("b", 2).unwrap());
//! assert_eq!(a.ip_mtu(), 1500);
//! // An Ethernet frame to b's MAC, written straight into a's buffer.
//! let mut lease = a.lend().unwrap();
//! let buf = a.buffer(&mut lease);
//! buf[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
//! buf[12..14].copy_from_slice(&[0x88, 0xb5]);
//! a.commit(lease, 60);
//! a.flush();
//! let mut got = vec![0u8; b.frame_capacity()];
//! assert_eq!(b.recv_into(&mut got), Some(60));
//! assert_eq!(a.remote().stats().tx_frames, 1);
//! ```

pub(crate) mod beyond;
pub mod bridge;
#[cfg(feature = "tap")]
mod coalescer;
pub mod pcap;
mod segmenter;
pub mod shm;
#[cfg(feature = "tap")]
pub mod tap;
pub mod vxlan;
mod wake;

use std::sync::Arc;

use smoltcp::phy::Medium;
use smoltcp::wire::{EthernetAddress, IpAddress, Ipv4Address, Ipv6Address};

use crate::counters::counter_set;
pub use wake::{Wake, sleep};

/// A network card, as the Nic drives it. See the [module docs](self).
///
/// Every method runs on the device's thread; [`Adapter::remote`] is the
/// part other threads may hold.
pub trait Adapter: Send + IntoDynAdapter {
    /// The link layer of the network (Ethernet or bare IP).
    fn medium(&self) -> Medium;
    /// The network's IP MTU: the largest IP packet it carries.
    fn ip_mtu(&self) -> usize;
    /// Bytes in a transmit buffer: at least the link header plus the IP MTU.
    /// Also the room [`Adapter::recv_into`] needs.
    fn frame_capacity(&self) -> usize;
    /// At most this many received frames per poll round (`None`: no limit).
    fn max_burst(&self) -> Option<usize> {
        None
    }

    /// Can [`Adapter::lend`] give the stack a buffer now? `false` is
    /// back-pressure: a few buffers stay in reserve for replies made while
    /// receiving (ARP, RST, ICMP), so a full pool cannot deadlock two peers.
    fn can_lend(&mut self) -> bool;
    /// Lends a transmit buffer (may dip into the reply reserve); `None` when
    /// every buffer is in flight.
    fn lend(&mut self) -> Option<TxLease>;
    /// The whole buffer behind `lease` ([`Adapter::frame_capacity`] bytes),
    /// to write a frame into. Empty for a lease of another adapter.
    fn buffer(&mut self, lease: &mut TxLease) -> &mut [u8];
    /// Sends the first `len` bytes of the lease's buffer to the peer(s) the
    /// frame is addressed to (a frame for nobody is counted `tx_unroutable`).
    fn commit(&mut self, lease: TxLease, len: usize);
    /// Returns a lent buffer unsent.
    fn release(&mut self, lease: TxLease);

    /// Copies the next received frame into `dst` (at least
    /// [`Adapter::frame_capacity`] bytes) and returns its length.
    fn recv_into(&mut self, dst: &mut [u8]) -> Option<usize>;
    /// Does [`Adapter::recv_in_place`] hand out frames (trusted peers on a
    /// network that can)?
    fn in_place(&self) -> bool {
        false
    }
    /// Takes the next received frame without copying it: it stays in the
    /// sender's buffer, readable with [`Adapter::frame`] until the next
    /// receive or flush on this adapter. `None` when nothing is waiting or
    /// [`Adapter::in_place`] is `false`.
    fn recv_in_place(&mut self) -> Option<InPlace> {
        None
    }
    /// The bytes of a frame taken with [`Adapter::recv_in_place`]; empty
    /// once the frame is stale (a later receive or flush gave it back).
    /// Transmitting meanwhile is allowed: lending, committing and releasing
    /// never give a received frame back.
    fn frame(&self, _f: &InPlace) -> &[u8] {
        &[]
    }
    /// Pushes queued frames, hands consumed buffers back and wakes peers
    /// that sleep. Call after every round. (Nothing to do, by default, for
    /// an adapter whose commit sends at once.)
    fn flush(&mut self) {}

    /// Announces that the device is about to sleep and says what will wake
    /// it ([`Wake::Ready`] if work is already waiting). Pair with
    /// [`Adapter::end_sleep`].
    fn prepare_sleep(&self) -> Wake<'_>;
    /// The device is awake again.
    fn end_sleep(&self) {}
    /// What other threads may hold: counters and a doorbell.
    fn remote(&self) -> Arc<dyn Remote>;

    /// Changes whenever the directory does (a neighbour came or went).
    /// The defaults of this and the next methods are those of an adapter
    /// without a directory (a TAP interface, a tunnel): nobody listed.
    fn directory_generation(&self) -> u32 {
        0
    }
    /// This adapter as the directory lists it.
    fn own_entry(&self) -> Neighbour;
    /// Everyone else on the network.
    fn neighbours(&self) -> Vec<Neighbour> {
        Vec::new()
    }
    /// The hardware address of the neighbour owning `ip`.
    fn mac_of(&mut self, _ip: IpAddress) -> Option<EthernetAddress> {
        None
    }
    /// The addresses of the neighbour attached under `name`.
    fn addresses_of(&self, _name: &str) -> Vec<IpAddress> {
        Vec::new()
    }

    /// Periodic upkeep (every half second or so): e.g. reclaim what dead
    /// peers held.
    fn maintain(&mut self) {}
    /// The counters this thread bumps.
    fn counters(&self) -> &AdapterCounters;
    /// A short name for logs, e.g. `port 3`.
    fn describe(&self) -> String;
    /// Every station of the network by the name it is listed under, this
    /// adapter's own included (empty for adapters without a directory).
    fn members(&self) -> Vec<(String, Neighbour)> {
        Vec::new()
    }
    /// Takes off the capture this adapter wears ([`pcap::Pcap`]), giving
    /// back the adapter beneath and what the capture wrote; `Err(self)`
    /// when it wears none.
    fn take_off_capture(
        self: Box<Self>,
    ) -> Result<(Box<dyn Adapter>, pcap::Capture), Box<dyn Adapter>> {
        Err(self.into_dyn())
    }
}

/// Boxes any adapter as a trait object; lets [`Adapter`]'s provided
/// methods that consume `Box<Self>` hand it back as `Box<dyn Adapter>`.
pub trait IntoDynAdapter {
    /// `self` as a trait object.
    fn into_dyn(self: Box<Self>) -> Box<dyn Adapter>;
}

impl<A: Adapter + 'static> IntoDynAdapter for A {
    fn into_dyn(self: Box<Self>) -> Box<dyn Adapter> {
        self
    }
}

/// The part of an adapter other threads may hold.
pub trait Remote: Send + Sync {
    /// A snapshot of the adapter's counters, the network's own included.
    fn stats(&self) -> AdapterStats;
    /// Wakes the device sleeping on this adapter.
    fn wake(&self);
}

/// The lending of an adapter with a single transmit buffer that a commit
/// sends at once (a TAP interface, a tunnel): at most one lease out.
#[derive(Debug, Default)]
pub struct SingleLease {
    lent: bool,
}

impl SingleLease {
    /// Whether the buffer is free.
    pub fn can_lend(&self) -> bool {
        !self.lent
    }
    /// Lends the buffer (slot 0), if it is free.
    pub fn lend(&mut self) -> Option<TxLease> {
        (!self.lent).then(|| {
            self.lent = true;
            TxLease::new(0)
        })
    }
    /// Whether `lease` is the one lent.
    pub fn holds(&self, lease: &TxLease) -> bool {
        self.lent && lease.slot() == 0
    }
    /// `buf` (the buffer behind the lease) if `lease` is the one lent,
    /// else nothing.
    pub fn buffer<'a>(&self, lease: &TxLease, buf: &'a mut [u8]) -> &'a mut [u8] {
        if self.holds(lease) { buf } else { &mut [] }
    }
    /// Takes `lease` back; `false` if it was not the one lent.
    pub fn give_back(&mut self, lease: TxLease) -> bool {
        let ok = self.holds(&lease);
        if ok {
            self.lent = false;
        }
        ok
    }
}

/// The [`Remote`] of an adapter that only has counters to share: whoever
/// sleeps on it also sleeps on something else that wakes them (a bridge's
/// other side).
pub struct CountersRemote(pub Arc<AdapterCounters>);

impl Remote for CountersRemote {
    fn stats(&self) -> AdapterStats {
        self.0.snapshot()
    }
    fn wake(&self) {}
}

/// A transmit buffer lent by an adapter (see [`Adapter::lend`]); give it
/// back with [`Adapter::commit`] or [`Adapter::release`].
#[derive(Debug, PartialEq, Eq)]
pub struct TxLease {
    slot: u32,
}

impl TxLease {
    /// A lease of the implementation's buffer number `slot`.
    pub fn new(slot: u32) -> TxLease {
        TxLease { slot }
    }
    /// The implementation's buffer number.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

/// A frame received in place (see [`Adapter::recv_in_place`]).
#[derive(Debug, PartialEq, Eq)]
pub struct InPlace {
    seq: u64,
    len: usize,
}

impl InPlace {
    /// The implementation's receive number `seq`, of `len` bytes.
    pub fn new(seq: u64, len: usize) -> InPlace {
        InPlace { seq, len }
    }
    /// The implementation's receive number.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the frame has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A station on a network, as its directory lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// Its hardware address.
    pub mac: EthernetAddress,
    /// Its IPv4 address, if it has one.
    pub ipv4: Option<Ipv4Address>,
    /// Its IPv6 address, if it has one.
    pub ipv6: Option<Ipv6Address>,
}

impl Neighbour {
    /// A station with no address at all (what an adapter that is no
    /// station, such as a placeholder, says it is).
    pub const NOBODY: Neighbour = Neighbour {
        mac: EthernetAddress([0; 6]),
        ipv4: None,
        ipv6: None,
    };
}

counter_set! {
    /// Counters of one adapter, readable from any thread.
    pub struct AdapterCounters => AdapterStats {
        /// Frames received (malformed ones excluded).
        rx_frames,
        /// Bytes of the received frames, link header included.
        rx_bytes,
        /// Frames sent to at least one peer.
        tx_frames,
        /// Bytes of the sent frames, link header included.
        tx_bytes,
        /// The stack was told to wait: every buffer was in flight.
        tx_backpressure,
        /// Frames with no reachable destination (unknown MAC/IP, peer gone).
        tx_unroutable,
        /// Frames dropped because no buffer was free at all.
        tx_no_buffer,
        /// Received frames too short to be a frame of this medium.
        rx_malformed,
        /// Descriptors a peer wrote that failed validation (shared memory).
        bad_descriptors,
        /// Ring indices out of range; the ring was resynchronised.
        corrupt_rings,
        /// Times a transmit found no free buffer.
        ring_full,
        /// Links restarted or dropped: a peer left, or broke the ring
        /// protocol (shared memory).
        links_reset,
        /// Would-be peers refused at the door: another user, a bad hello,
        /// an unsealed or mis-sized region (shared memory between
        /// processes).
        peers_rejected,
    }
}

/// The link header length of a medium (14 for Ethernet, 0 for bare IP).
pub fn link_header_len(medium: Medium) -> usize {
    match medium {
        Medium::Ethernet => 14,
        _ => 0,
    }
}

/// Errors of adapters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// Attaching to the segment failed.
    #[error(transparent)]
    Shm(#[from] crate::shm::ShmError),
    /// A TAP interface could not be created or configured.
    #[error("TAP interface {name}: {why}")]
    Tap {
        /// The interface name.
        name: String,
        /// What went wrong, and what to do about a missing privilege.
        why: String,
    },
    /// A VXLAN endpoint could not be opened.
    #[error("VXLAN endpoint {local}: {why}")]
    Vxlan {
        /// The local UDP address.
        local: String,
        /// What went wrong.
        why: String,
    },
    /// The pcap file could not be created; check the path.
    #[error("pcap file {path}")]
    Pcap {
        /// The capture file's path.
        path: String,
        /// Why creating it failed.
        #[source]
        source: std::io::Error,
    },
}

/// Holds an adapter's place for the moment it is taken out to be wrapped
/// or unwrapped (see [`crate::stack::Nic::rewrap`]); never polled.
pub(crate) struct Vacant(AdapterCounters);

impl Vacant {
    pub(crate) fn boxed() -> Box<dyn Adapter> {
        Box::new(Vacant(AdapterCounters::default()))
    }
}

impl Adapter for Vacant {
    fn medium(&self) -> Medium {
        Medium::Ip
    }
    fn ip_mtu(&self) -> usize {
        0
    }
    fn frame_capacity(&self) -> usize {
        0
    }
    fn can_lend(&mut self) -> bool {
        false
    }
    fn lend(&mut self) -> Option<TxLease> {
        None
    }
    fn buffer(&mut self, _: &mut TxLease) -> &mut [u8] {
        &mut []
    }
    fn commit(&mut self, _: TxLease, _: usize) {}
    fn release(&mut self, _: TxLease) {}
    fn recv_into(&mut self, _: &mut [u8]) -> Option<usize> {
        None
    }
    fn prepare_sleep(&self) -> Wake<'_> {
        Wake::Ready
    }
    fn remote(&self) -> Arc<dyn Remote> {
        Arc::new(CountersRemote(Arc::default()))
    }
    fn own_entry(&self) -> Neighbour {
        Neighbour::NOBODY
    }
    fn counters(&self) -> &AdapterCounters {
        &self.0
    }
    fn describe(&self) -> String {
        "vacant".into()
    }
}
