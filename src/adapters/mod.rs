//! Virtual network adapters: a device's network cards on a shared-memory
//! network.
//!
//! An [`Adapter`] is attached to one [`Segment`] and
//! is a `smoltcp::phy::Device`. [`LocalAdapter`] sits on the host's local
//! network, [`GlobalAdapter`] on the global one; they differ only in role.
//! The adapter switches each outgoing frame to the right port (by
//! destination MAC on Ethernet networks, by destination IP on IP networks;
//! broadcast and multicast go to every port), lends smoltcp a buffer of the
//! segment to write into (no copy on send), copies received frames out
//! before anyone parses them, keeps counters, and can write every frame it
//! carries to a pcap file.
//!
//! When every transmit buffer is in flight, `transmit()` returns `None`:
//! back-pressure, never a silent drop (a drop costs smoltcp a 1 s stall).
//!
//! ```
//! use shmnet::adapters::{AdapterOptions, LocalAdapter};
//! use shmnet::shm::{NetworkParams, PortInfo, Segment, SegmentKind};
//! let seg = Segment::open_or_create("adapter-doc", SegmentKind::Process, &NetworkParams::new(1500)).unwrap();
//! let a = LocalAdapter::attach(&seg, &PortInfo::named("a"), AdapterOptions::default()).unwrap();
//! assert_eq!(a.ip_mtu(), 1500);
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use smoltcp::phy::{
    self, ChecksumCapabilities, DeviceCapabilities, Medium, PcapLinkType, PcapSink,
};
use smoltcp::time::Instant;

use crate::shm::{InPlaceFrame, LinkMedium, Peer, Port, PortInfo, Segment, ShmError, TxBuf};

/// Transmit buffers kept back from `transmit()` for replies generated while
/// receiving (ARP, RST, ICMP), so a full pool cannot deadlock two peers.
const RX_REPLY_RESERVE: usize = 8;

/// Which network an adapter is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Local,
    Global,
}

/// Marker types for the two adapter roles.
pub trait RoleMarker: Send + 'static {
    const ROLE: Role;
}
/// The local (host) network.
#[derive(Debug)]
pub struct Local;
/// The global network (this host's devices plus remote nodes).
#[derive(Debug)]
pub struct Global;
impl RoleMarker for Local {
    const ROLE: Role = Role::Local;
}
impl RoleMarker for Global {
    const ROLE: Role = Role::Global;
}

/// The adapter on the local network.
pub type LocalAdapter = Adapter<Local>;
/// The adapter on the global network.
pub type GlobalAdapter = Adapter<Global>;

/// Options of an adapter.
#[derive(Debug, Clone, Default)]
pub struct AdapterOptions {
    /// Frames handed to the stack per poll round (`None`: unlimited); also
    /// reported to smoltcp as `max_burst_size`.
    pub max_burst_size: Option<usize>,
    /// Verify checksums in software (off on the trusted shared-memory link).
    pub checksums: bool,
    /// Write every frame sent and received to this pcap file.
    pub pcap: Option<std::path::PathBuf>,
    /// Hand received frames to the stack in place, without copying them out
    /// of the sender's buffer. Only for trusted peers: devices of this
    /// process, or processes the configuration declares trusted.
    pub trust_peers: bool,
}

/// A received frame: copied into the adapter's buffer, or still in place.
#[derive(Debug)]
pub enum Received {
    Copied(usize),
    InPlace(InPlaceFrame),
}

/// Counters of one adapter, readable from any thread.
#[derive(Debug, Default)]
pub struct AdapterCounters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// `transmit()` returned `None` because every buffer was in flight.
    pub tx_backpressure: AtomicU64,
    /// Frames with no reachable destination (unknown MAC/IP, peer gone).
    pub tx_unroutable: AtomicU64,
    /// Replies dropped because no buffer was free at all.
    pub tx_no_buffer: AtomicU64,
    /// Received frames too short to be a frame of this medium.
    pub rx_malformed: AtomicU64,
}

/// A snapshot of an adapter's counters, including the facility's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdapterStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_backpressure: u64,
    pub tx_unroutable: u64,
    pub tx_no_buffer: u64,
    pub rx_malformed: u64,
    pub bad_descriptors: u64,
    pub corrupt_rings: u64,
    pub ring_full: u64,
}

impl AdapterStats {
    /// `(name, value)` pairs, for metrics and printing.
    pub fn pairs(&self) -> [(&'static str, u64); 11] {
        [
            ("rx_frames", self.rx_frames),
            ("rx_bytes", self.rx_bytes),
            ("tx_frames", self.tx_frames),
            ("tx_bytes", self.tx_bytes),
            ("tx_backpressure", self.tx_backpressure),
            ("tx_unroutable", self.tx_unroutable),
            ("tx_no_buffer", self.tx_no_buffer),
            ("rx_malformed", self.rx_malformed),
            ("bad_descriptors", self.bad_descriptors),
            ("corrupt_rings", self.corrupt_rings),
            ("ring_full", self.ring_full),
        ]
    }
}

/// Everything of an adapter except its receive buffer, so a receive can
/// lend both a received frame and a transmit token at once.
pub struct AdapterCore {
    port: Port,
    medium: LinkMedium,
    frame_size: usize,
    counters: Arc<AdapterCounters>,
    pcap: Option<BufWriter<File>>,
    /// `(address, peer)` tables; a network has at most a few dozen ports,
    /// so a scan beats hashing on the per-frame path.
    by_mac: Vec<([u8; 6], Peer)>,
    by_v4: Vec<([u8; 4], Peer)>,
    by_v6: Vec<([u8; 16], Peer)>,
    everyone: Vec<Peer>,
    cache_gen: Option<u32>,
    start: std::time::Instant,
}

/// A virtual network adapter on a shared-memory network.
pub struct Adapter<R: RoleMarker> {
    core: AdapterCore,
    /// The port's segment again, so an in-place frame can be borrowed
    /// while the transmit side is borrowed mutably.
    seg: Arc<Segment>,
    rx_buf: Vec<u8>,
    rx_len: usize,
    options: AdapterOptions,
    burst_used: usize,
    _role: PhantomData<R>,
}

impl<R: RoleMarker> Adapter<R> {
    /// Attaches a new port on `segment` and wraps it.
    pub fn attach(
        segment: &Arc<Segment>,
        info: &PortInfo,
        options: AdapterOptions,
    ) -> Result<Self, AdapterError> {
        let port = segment.attach(info)?;
        Self::from_port(port, options)
    }

    /// Wraps an already attached port.
    pub fn from_port(port: Port, options: AdapterOptions) -> Result<Self, AdapterError> {
        let seg = Arc::clone(port.segment());
        let medium = seg.medium();
        let pcap = match &options.pcap {
            Some(p) => Some(open_pcap(p, medium)?),
            None => None,
        };
        Ok(Adapter {
            core: AdapterCore {
                port,
                medium,
                frame_size: seg.frame_size(),
                counters: Arc::default(),
                pcap,
                by_mac: Vec::new(),
                by_v4: Vec::new(),
                by_v6: Vec::new(),
                everyone: Vec::new(),
                cache_gen: None,
                start: std::time::Instant::now(),
            },
            rx_buf: vec![0; seg.frame_size()],
            seg: Arc::clone(&seg),
            rx_len: 0,
            options,
            burst_used: 0,
            _role: PhantomData,
        })
    }

    pub fn role(&self) -> Role {
        R::ROLE
    }
    pub fn port(&self) -> &Port {
        &self.core.port
    }
    pub fn port_mut(&mut self) -> &mut Port {
        &mut self.core.port
    }
    pub fn medium(&self) -> LinkMedium {
        self.core.medium
    }
    /// IP MTU of the adapter's network.
    pub fn ip_mtu(&self) -> usize {
        self.core.port.segment().mtu() as usize
    }
    /// Largest frame (IP MTU plus link header).
    pub fn frame_mtu(&self) -> usize {
        self.ip_mtu() + self.link_header_len()
    }
    fn link_header_len(&self) -> usize {
        match self.core.medium {
            LinkMedium::Ethernet => 14,
            LinkMedium::Ip => 0,
        }
    }
    pub fn counters(&self) -> &Arc<AdapterCounters> {
        &self.core.counters
    }
    /// The facility's counters of this adapter's port.
    pub fn port_counters(&self) -> &Arc<crate::shm::PortCounters> {
        self.core.port.counters()
    }

    /// A snapshot of all counters.
    pub fn stats(&self) -> AdapterStats {
        adapter_stats(&self.core.counters, self.core.port.counters())
    }

    /// Starts a new poll round (resets the burst budget).
    pub fn begin_round(&mut self) {
        self.burst_used = 0;
    }

    /// Receives the next frame into the adapter's buffer; returns its length.
    pub fn recv(&mut self) -> Option<usize> {
        match self.recv_frame(true)? {
            Received::Copied(len) => Some(len),
            Received::InPlace(_) => None,
        }
    }

    /// Receives the next frame: in place if the peers are trusted and
    /// `need_copy` is false, else copied into the adapter's buffer.
    pub fn recv_frame(&mut self, need_copy: bool) -> Option<Received> {
        if let Some(max) = self.options.max_burst_size
            && self.burst_used >= max
        {
            return None;
        }
        let min = self.link_header_len().max(1);
        loop {
            let got = if self.options.trust_peers && !need_copy {
                let f = self.core.port.recv_in_place()?;
                capture(
                    &mut self.core.pcap,
                    self.core.start,
                    self.seg.frame_bytes(&f),
                );
                (f.len(), Received::InPlace(f))
            } else {
                let (len, _src) = self.core.port.recv_into(&mut self.rx_buf)?;
                self.rx_len = len;
                capture(&mut self.core.pcap, self.core.start, &self.rx_buf[..len]);
                (len, Received::Copied(len))
            };
            let c = &self.core.counters;
            if got.0 < min {
                bump(&c.rx_malformed, 1);
                continue;
            }
            self.burst_used += 1;
            bump(&c.rx_frames, 1);
            bump(&c.rx_bytes, got.0 as u64);
            return Some(got.1);
        }
    }

    /// The segment (to read in-place frames), the receive buffer and the
    /// transmit side, borrowed at once.
    pub fn split(&mut self) -> (&Segment, &mut [u8], &mut AdapterCore) {
        (&self.seg, &mut self.rx_buf, &mut self.core)
    }

    /// The receive buffer (the frame last returned by [`Adapter::recv`]
    /// is its first `len` bytes; hooks may rewrite or resize it in place),
    /// that length, and the transmit side.
    pub fn parts(&mut self) -> (&mut [u8], usize, &mut AdapterCore) {
        (&mut self.rx_buf, self.rx_len, &mut self.core)
    }

    /// The configured burst limit.
    pub fn capabilities_burst(&self) -> Option<usize> {
        self.options.max_burst_size
    }

    /// The transmit side.
    pub fn core_mut(&mut self) -> &mut AdapterCore {
        &mut self.core
    }

    /// Can `transmit()` lend a buffer now?
    pub fn can_transmit(&mut self) -> bool {
        self.core.port.free_buffers() > RX_REPLY_RESERVE
    }

    /// Pushes queued frames and wakes sleeping peers; call after each round.
    pub fn flush(&mut self) {
        self.core.port.flush();
        if let Some(p) = &mut self.core.pcap {
            let _ = Write::flush(p);
        }
    }

    fn caps(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = match self.core.medium {
            LinkMedium::Ethernet => Medium::Ethernet,
            LinkMedium::Ip => Medium::Ip,
        };
        caps.max_transmission_unit = self.frame_mtu();
        caps.max_burst_size = self.options.max_burst_size;
        if !self.options.checksums {
            caps.checksum = ChecksumCapabilities::ignored();
        }
        caps
    }
}

/// Adds to a counter that only this thread writes: a plain load and store
/// instead of a locked read-modify-write on the per-frame path.
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

pub(crate) fn adapter_stats(c: &AdapterCounters, p: &crate::shm::PortCounters) -> AdapterStats {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    AdapterStats {
        rx_frames: l(&c.rx_frames),
        rx_bytes: l(&c.rx_bytes),
        tx_frames: l(&c.tx_frames),
        tx_bytes: l(&c.tx_bytes),
        tx_backpressure: l(&c.tx_backpressure),
        tx_unroutable: l(&c.tx_unroutable) + l(&p.unroutable),
        tx_no_buffer: l(&c.tx_no_buffer),
        rx_malformed: l(&c.rx_malformed),
        bad_descriptors: l(&p.bad_descriptors),
        corrupt_rings: l(&p.corrupt_rings),
        ring_full: l(&p.ring_full),
    }
}

fn open_pcap(path: &Path, medium: LinkMedium) -> Result<BufWriter<File>, AdapterError> {
    let f = File::create(path).map_err(|e| AdapterError::Pcap {
        path: path.display().to_string(),
        source: e,
    })?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    PcapSink::global_header(
        &mut w,
        match medium {
            LinkMedium::Ethernet => PcapLinkType::Ethernet,
            LinkMedium::Ip => PcapLinkType::Ip,
        },
    );
    Ok(w)
}

impl AdapterCore {
    fn refresh_peers(&mut self) {
        let gen_now = self.port.port_generation();
        if self.cache_gen == Some(gen_now) {
            return;
        }
        self.cache_gen = Some(gen_now);
        self.by_mac.clear();
        self.by_v4.clear();
        self.by_v6.clear();
        self.everyone.clear();
        let me = self.port.index();
        for p in self.port.segment().peers() {
            if p.index == me {
                continue;
            }
            let peer = Peer {
                index: p.index,
                epoch: p.epoch,
            };
            self.by_mac.push((p.mac, peer));
            if let Some(a) = p.ipv4 {
                self.by_v4.push((a, peer));
            }
            if let Some(a) = p.ipv6 {
                self.by_v6.push((a, peer));
            }
            self.everyone.push(peer);
        }
    }

    /// The hardware address of the port that owns `ip` (v4: 4 bytes, v6:
    /// 16) on this network, from the directory.
    pub fn mac_of(&mut self, ip: &[u8]) -> Option<[u8; 6]> {
        self.refresh_peers();
        let peer = match ip.len() {
            4 => lookup(&self.by_v4, ip),
            16 => lookup(&self.by_v6, ip),
            _ => None,
        }?;
        self.by_mac.iter().find(|(_, p)| p == peer).map(|(m, _)| *m)
    }

    /// Where a frame goes, judged by its link-layer (Ethernet) or network
    /// (IP) destination.
    fn destination(&mut self, frame: &[u8]) -> Dest {
        self.refresh_peers();
        let found = |p: Option<&Peer>| p.map_or(Dest::Nowhere, |p| Dest::One(*p));
        match self.medium {
            LinkMedium::Ethernet => {
                if frame.len() < 14 {
                    Dest::Nowhere
                } else if frame[0] & 1 != 0 {
                    Dest::All
                } else {
                    found(lookup(&self.by_mac, &frame[..6]))
                }
            }
            LinkMedium::Ip => match frame.first().map(|b| b >> 4) {
                Some(4) if frame.len() >= 20 => {
                    let dst: [u8; 4] = frame[16..20].try_into().unwrap_or_default();
                    if dst[0] >= 224 || dst == [255; 4] {
                        Dest::All
                    } else {
                        found(lookup(&self.by_v4, &dst))
                    }
                }
                Some(6) if frame.len() >= 40 => {
                    if frame[24] == 0xff {
                        Dest::All
                    } else {
                        found(lookup(&self.by_v6, &frame[24..40]))
                    }
                }
                _ => Dest::Nowhere,
            },
        }
    }

    /// Takes a transmit buffer (may dip into the reply reserve).
    pub fn alloc(&mut self) -> Option<TxBuf> {
        self.port.alloc()
    }

    /// The whole buffer behind `buf` (`frame_size` bytes).
    pub fn buffer_mut(&mut self, buf: &mut TxBuf) -> &mut [u8] {
        self.port.buffer_mut(buf)
    }

    /// Bytes per buffer.
    pub fn frame_size(&self) -> usize {
        self.frame_size
    }

    /// Sends the first `len` bytes of `buf` to wherever the frame says.
    pub fn commit(&mut self, mut buf: TxBuf, len: usize) {
        let len = len.min(self.frame_size);
        let frame = &self.port.buffer_mut(&mut buf)[..len];
        capture(&mut self.pcap, self.start, frame);
        let head = frame.to_owned_header();
        let dest = self.destination(&head);
        let one;
        let to: &[Peer] = match dest {
            Dest::One(p) => {
                one = [p];
                &one
            }
            Dest::All => &self.everyone,
            Dest::Nowhere => &[],
        };
        if to.is_empty() {
            self.counters.tx_unroutable.fetch_add(1, Ordering::Relaxed);
            self.port.release(buf);
            return;
        }
        self.counters.tx_frames.fetch_add(1, Ordering::Relaxed);
        self.counters
            .tx_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        self.port.send(buf, len, to);
    }

    /// Returns an unused buffer.
    pub fn release(&mut self, buf: TxBuf) {
        self.port.release(buf);
    }

    pub fn counters(&self) -> &Arc<AdapterCounters> {
        &self.counters
    }
}

fn lookup<'a, const N: usize>(table: &'a [([u8; N], Peer)], key: &[u8]) -> Option<&'a Peer> {
    table.iter().find(|(k, _)| k[..] == *key).map(|(_, p)| p)
}

enum Dest {
    Nowhere,
    One(Peer),
    All,
}

/// The first bytes of a frame that routing looks at, copied so the
/// buffer borrow ends before the lookup.
trait HeaderCopy {
    fn to_owned_header(&self) -> HeaderBytes;
}
struct HeaderBytes {
    bytes: [u8; 40],
    len: usize,
}
impl std::ops::Deref for HeaderBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}
impl HeaderCopy for [u8] {
    fn to_owned_header(&self) -> HeaderBytes {
        let len = self.len().min(40);
        let mut bytes = [0u8; 40];
        bytes[..len].copy_from_slice(&self[..len]);
        HeaderBytes { bytes, len }
    }
}

fn capture(pcap: &mut Option<BufWriter<File>>, start: std::time::Instant, frame: &[u8]) {
    if let Some(p) = pcap {
        let now = Instant::from_micros(start.elapsed().as_micros() as i64 + unix_offset_us());
        PcapSink::packet(p, now, frame);
    }
}

fn unix_offset_us() -> i64 {
    use std::sync::OnceLock;
    static OFF: OnceLock<i64> = OnceLock::new();
    *OFF.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
    })
}

/// Errors of adapters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// Attaching to the segment failed.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// The pcap file could not be created; check the path.
    #[error("pcap file {path}: {source}")]
    Pcap {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Receive token: a frame already copied out of shared memory.
pub struct AdapterRxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for AdapterRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Transmit token: lends a buffer of the segment to the stack.
pub struct AdapterTxToken<'a> {
    core: &'a mut AdapterCore,
}

impl phy::TxToken for AdapterTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let core = self.core;
        match core.alloc() {
            Some(mut buf) if len <= core.frame_size => {
                let r = f(&mut core.buffer_mut(&mut buf)[..len]);
                core.commit(buf, len);
                r
            }
            other => {
                // No buffer at all (only possible for replies made while
                // receiving) or an oversize frame: let the stack build it in
                // scratch and count the drop.
                if let Some(b) = other {
                    core.release(b);
                }
                core.counters.tx_no_buffer.fetch_add(1, Ordering::Relaxed);
                let mut scratch = vec![0u8; len];
                f(&mut scratch)
            }
        }
    }
}

impl<R: RoleMarker> phy::Device for Adapter<R> {
    type RxToken<'a> = AdapterRxToken<'a>;
    type TxToken<'a> = AdapterTxToken<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let got = self.recv_frame(false)?;
        let (seg, rx, core) = self.split();
        let frame = match &got {
            Received::Copied(len) => &rx[..*len],
            Received::InPlace(f) => seg.frame_bytes(f),
        };
        Some((AdapterRxToken { frame }, AdapterTxToken { core }))
    }

    fn transmit(&mut self, _t: Instant) -> Option<Self::TxToken<'_>> {
        if !self.can_transmit() {
            self.core
                .counters
                .tx_backpressure
                .fetch_add(1, Ordering::Relaxed);
            self.core.port.flush();
            return None;
        }
        Some(AdapterTxToken {
            core: &mut self.core,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps()
    }
}

impl<R: RoleMarker> Drop for Adapter<R> {
    fn drop(&mut self) {
        if let Some(p) = &mut self.core.pcap {
            let _ = Write::flush(p);
        }
    }
}
