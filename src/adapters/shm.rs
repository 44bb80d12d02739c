//! The shared-memory adapter: a port of a [`Segment`], as an [`Adapter`].
//!
//! It switches each outgoing frame to the right port (by destination MAC on
//! Ethernet networks, by destination IP on IP networks; broadcast and
//! multicast go to every port), lends the stack buffers of the segment to
//! write into (no copy on send), copies received frames out before anyone
//! parses them, or hands them over in place when the peers are trusted, and
//! sleeps on the port's doorbell (an eventfd; between processes, with the
//! membership sockets, behind one epoll fd).
//!
//! The shm types a device needs to attach are re-exported here, so the
//! layers above never reach into [`crate::shm`].
//!
//! ```
//! use shmnet::adapters::Adapter;
//! use shmnet::adapters::shm::{NetworkParams, SegmentKind, ShmAdapter, ShmOptions};
//! let me = shmnet::adapters::Neighbour {
//!     mac: smoltcp::wire::EthernetAddress([2, 0, 0, 0, 0, 1]),
//!     ipv4: Some(smoltcp::wire::Ipv4Address::new(10, 0, 0, 1)),
//!     ipv6: None,
//! };
//! let a = ShmAdapter::join("shm-adapter-doc", SegmentKind::InProcess, &NetworkParams::new(9000), "a", me, ShmOptions::default()).unwrap();
//! assert_eq!((a.ip_mtu(), a.own_entry()), (9000, me));
//! ```

use std::sync::Arc;

use smoltcp::phy::Medium;
use smoltcp::wire::{EthernetAddress, IpAddress, Ipv4Address, Ipv6Address};

use super::beyond::{Beyond, arp_request, is_arp};
use super::{
    Adapter, AdapterCounters, AdapterError, AdapterStats, InPlace, Neighbour, Remote, TxLease,
    Wake, link_header_len,
};
use crate::counters::bump;
use crate::shm::{Doorbell, InPlaceFrame, Peer, Port, PortCounters, TxBuf};
pub use crate::shm::{LinkMedium, NetworkParams, PortInfo, Segment, SegmentKind};

/// Transmit buffers kept back from [`Adapter::can_lend`] for replies made
/// while receiving (ARP, RST, ICMP), so a full pool cannot deadlock two
/// peers.
const RX_REPLY_RESERVE: usize = 8;

/// Options of a shared-memory adapter.
#[derive(Debug, Clone, Default)]
pub struct ShmOptions {
    /// Frames handed to the stack per poll round (`None`: unlimited).
    pub max_burst: Option<usize>,
    /// Hand received frames over in place, without copying them out of the
    /// sender's buffer. Only for trusted peers: devices of this process, or
    /// processes the configuration declares trusted.
    pub trust_peers: bool,
    /// Join as an uplink (a gateway such as VXLAN): frames for
    /// destinations no port of the segment owns come to this port.
    pub uplink: bool,
}

impl From<LinkMedium> for Medium {
    fn from(m: LinkMedium) -> Medium {
        match m {
            LinkMedium::Ethernet => Medium::Ethernet,
            LinkMedium::Ip => Medium::Ip,
        }
    }
}

/// A port of a shared-memory segment, as an [`Adapter`].
pub struct ShmAdapter {
    port: Port,
    /// The port's segment again, so an in-place frame can be borrowed
    /// apart from the port.
    seg: Arc<Segment>,
    medium: Medium,
    frame_size: usize,
    options: ShmOptions,
    counters: Arc<AdapterCounters>,
    /// Buffers lent out, by lease slot.
    leases: Vec<Option<TxBuf>>,
    free_leases: Vec<u32>,
    peers: PeerTable,
    me: Neighbour,
    /// The frame last taken in place, while it is readable.
    current: Option<InPlaceFrame>,
    /// Numbers in-place frames, so a stale ticket reads as empty.
    rx_seq: u64,
    /// Stations beyond the network's uplinks, for forwarding to them.
    beyond: Beyond,
}

impl ShmAdapter {
    /// Joins (or creates) the network `segment` as `name`, publishing `me`
    /// in its directory.
    pub fn join(
        segment: &str,
        kind: SegmentKind,
        params: &NetworkParams,
        name: &str,
        me: Neighbour,
        options: ShmOptions,
    ) -> Result<ShmAdapter, AdapterError> {
        let port = Segment::join(segment, kind, params, &port_info(name, &me, options.uplink))?;
        Ok(Self::from_port(port, options))
    }

    /// Attaches a new port named `name` to an open segment.
    pub fn attach(
        segment: &Arc<Segment>,
        name: &str,
        me: Neighbour,
        options: ShmOptions,
    ) -> Result<ShmAdapter, AdapterError> {
        Ok(Self::from_port(
            segment.attach(&port_info(name, &me, options.uplink))?,
            options,
        ))
    }

    /// Wraps an already attached port.
    pub fn from_port(port: Port, options: ShmOptions) -> ShmAdapter {
        let seg = Arc::clone(port.segment());
        let me = neighbour(port.info());
        ShmAdapter {
            medium: seg.medium().into(),
            frame_size: seg.frame_size(),
            options,
            counters: Arc::default(),
            leases: Vec::new(),
            free_leases: Vec::new(),
            peers: PeerTable::default(),
            me,
            current: None,
            rx_seq: 0,
            beyond: Beyond::default(),
            seg,
            port,
        }
    }

    /// The port (for tools and tests).
    pub fn port(&self) -> &Port {
        &self.port
    }

    /// Learns from an ARP frame that came in through an uplink (a station
    /// on another host).
    fn glean(&mut self, src: u32, frame: &[u8]) {
        if self.medium == Medium::Ethernet
            && is_arp(frame)
            && self.peers.uplinks.iter().any(|p| p.index == src)
        {
            self.beyond.learn(frame);
        }
    }

    /// The hardware address of `ip` beyond the network's uplinks, as last
    /// heard; if not known, asks for it (an ARP request that the uplinks
    /// carry out) and returns `None` for now.
    fn beyond_uplink(&mut self, ip: Ipv4Address) -> Option<EthernetAddress> {
        if self.medium != Medium::Ethernet || self.peers.uplinks.is_empty() {
            return None;
        }
        if let Some(mac) = self.beyond.mac_of(ip) {
            return Some(mac);
        }
        let (mac, mine) = (self.me.mac, self.me.ipv4?);
        if self.beyond.should_ask(ip) {
            let mut lease = Adapter::lend(self)?;
            let buf = Adapter::buffer(self, &mut lease);
            match arp_request(buf, mac, mine, ip) {
                Some(len) => Adapter::commit(self, lease, len),
                None => Adapter::release(self, lease),
            }
        }
        None
    }

    fn link_header_len(&self) -> usize {
        link_header_len(self.medium)
    }

    /// Counts a received frame; `false` (counted malformed) if it is too
    /// short to be a frame of this medium.
    fn accept(&self, len: usize) -> bool {
        let c = &self.counters;
        if len < self.link_header_len().max(1) {
            bump(&c.rx_malformed, 1);
            return false;
        }
        bump(&c.rx_frames, 1);
        bump(&c.rx_bytes, len as u64);
        true
    }

    fn take_lease(&mut self, lease: TxLease) -> Option<TxBuf> {
        let buf = self.leases.get_mut(lease.slot() as usize)?.take()?;
        self.free_leases.push(lease.slot());
        Some(buf)
    }
}

fn port_info(name: &str, me: &Neighbour, uplink: bool) -> PortInfo {
    PortInfo {
        name: name.into(),
        mac: me.mac.0,
        ipv4: me.ipv4.map(|a| a.octets()),
        ipv6: me.ipv6.map(|a| a.octets()),
        uplink,
    }
}

fn neighbour(p: &PortInfo) -> Neighbour {
    Neighbour {
        mac: EthernetAddress(p.mac),
        ipv4: p.ipv4.map(Ipv4Address::from_octets),
        ipv6: p.ipv6.map(Ipv6Address::from_octets),
    }
}

impl Adapter for ShmAdapter {
    fn medium(&self) -> Medium {
        self.medium
    }
    fn ip_mtu(&self) -> usize {
        self.seg.mtu() as usize
    }
    fn frame_capacity(&self) -> usize {
        self.frame_size
    }
    fn max_burst(&self) -> Option<usize> {
        self.options.max_burst
    }

    fn can_lend(&mut self) -> bool {
        self.port.free_buffers() > RX_REPLY_RESERVE
    }

    fn lend(&mut self) -> Option<TxLease> {
        let buf = self.port.alloc()?;
        let slot = match self.free_leases.pop() {
            Some(s) => s,
            None => {
                self.leases.push(None);
                self.leases.len() as u32 - 1
            }
        };
        self.leases[slot as usize] = Some(buf);
        Some(TxLease::new(slot))
    }

    fn buffer(&mut self, lease: &mut TxLease) -> &mut [u8] {
        match self.leases.get_mut(lease.slot() as usize) {
            Some(Some(buf)) => self.port.buffer_mut(buf),
            _ => &mut [],
        }
    }

    fn commit(&mut self, lease: TxLease, len: usize) {
        let Some(mut buf) = self.take_lease(lease) else {
            return;
        };
        let len = len.min(self.frame_size);
        // The first bytes decide; copied so the buffer borrow ends first.
        let mut head = [0u8; 40];
        let n = len.min(head.len());
        head[..n].copy_from_slice(&self.port.buffer_mut(&mut buf)[..n]);
        let uplink = self.options.uplink;
        let mut dest = self
            .peers
            .destination(&self.port, self.medium, &head[..n], uplink);
        if !matches!(dest, Dest::One(_)) && self.port.membership_due() {
            // Broadcast, or someone unknown: perhaps a peer just joined.
            self.port.maintain();
            dest = self
                .peers
                .destination(&self.port, self.medium, &head[..n], uplink);
        }
        let one;
        let to: &[Peer] = match dest {
            Dest::One(p) => {
                one = [p];
                &one
            }
            Dest::All => &self.peers.everyone,
            Dest::Locals => &self.peers.locals,
            Dest::Uplinks => &self.peers.uplinks,
            Dest::Nowhere => &[],
        };
        if to.is_empty() {
            bump(&self.counters.tx_unroutable, 1);
            self.port.release(buf);
            return;
        }
        bump(&self.counters.tx_frames, 1);
        bump(&self.counters.tx_bytes, len as u64);
        self.port.send(buf, len, to);
    }

    fn release(&mut self, lease: TxLease) {
        if let Some(buf) = self.take_lease(lease) {
            self.port.release(buf);
        }
    }

    fn recv_into(&mut self, dst: &mut [u8]) -> Option<usize> {
        self.current = None;
        loop {
            let (len, src) = self.port.recv_into(dst)?;
            if self.accept(len) {
                self.glean(src, &dst[..len]);
                return Some(len);
            }
        }
    }

    fn in_place(&self) -> bool {
        // Frames of other processes are always copied out: their memory is
        // never referenced.
        self.options.trust_peers && self.seg.kind() == SegmentKind::InProcess
    }

    fn recv_in_place(&mut self) -> Option<InPlace> {
        self.current = None;
        if !self.in_place() {
            return None;
        }
        loop {
            let f = self.port.recv_in_place()?;
            if self.accept(f.len()) {
                if is_arp(self.port.frame_bytes(&f)) {
                    let frame = self.port.frame_bytes(&f).to_vec();
                    self.glean(f.src(), &frame);
                }
                self.rx_seq += 1;
                let ticket = InPlace::new(self.rx_seq, f.len());
                self.current = Some(f);
                return Some(ticket);
            }
        }
    }

    fn frame(&self, f: &InPlace) -> &[u8] {
        match &self.current {
            Some(cur) if f.seq() == self.rx_seq => self.port.frame_bytes(cur),
            _ => &[],
        }
    }

    fn flush(&mut self) {
        self.current = None;
        self.port.flush();
    }

    fn prepare_sleep(&self) -> Wake<'_> {
        self.port.prepare_sleep();
        if self.port.rx_pending() {
            self.port.end_sleep();
            return Wake::Ready;
        }
        Wake::Readable(self.port.wake_fd())
    }

    fn end_sleep(&self) {
        self.port.end_sleep();
    }

    fn remote(&self) -> Arc<dyn Remote> {
        Arc::new(ShmRemote {
            counters: Arc::clone(&self.counters),
            port: Arc::clone(self.port.counters()),
            doorbell: self.port.doorbell(),
        })
    }

    fn directory_generation(&self) -> u32 {
        self.port.generation()
    }

    fn own_entry(&self) -> Neighbour {
        self.me
    }

    fn neighbours(&self) -> Vec<Neighbour> {
        self.port.peers().map(|p| neighbour(&p.info)).collect()
    }

    fn mac_of(&mut self, ip: IpAddress) -> Option<EthernetAddress> {
        self.peers.refresh(&self.port);
        let peer = match ip {
            IpAddress::Ipv4(a) => lookup(&self.peers.by_v4, &a.octets()),
            IpAddress::Ipv6(a) => lookup(&self.peers.by_v6, &a.octets()),
        };
        match (peer, ip) {
            (Some(peer), _) => self
                .peers
                .by_mac
                .iter()
                .find(|(_, p)| p == peer)
                .map(|(m, _)| EthernetAddress(*m)),
            (None, IpAddress::Ipv4(a)) => self.beyond_uplink(a),
            (None, IpAddress::Ipv6(_)) => None,
        }
    }

    fn addresses_of(&self, name: &str) -> Vec<IpAddress> {
        let mut out = Vec::new();
        let me = self.port.info();
        let named = self.port.peers().map(|p| &p.info).chain(Some(me));
        for p in named.filter(|p| p.name == name) {
            out.extend(p.ipv4.map(|a| IpAddress::Ipv4(a.into())));
            out.extend(p.ipv6.map(|a| IpAddress::Ipv6(a.into())));
        }
        out
    }

    fn members(&self) -> Vec<(String, Neighbour)> {
        let me = self.port.info();
        let all = self.port.peers().map(|p| &p.info).chain(Some(me));
        all.map(|p| (p.name.to_string(), neighbour(p))).collect()
    }

    fn maintain(&mut self) {
        self.port.maintain();
    }

    fn counters(&self) -> &AdapterCounters {
        &self.counters
    }

    fn describe(&self) -> String {
        format!("port {}", self.port.index())
    }
}

/// Counters and doorbell of a [`ShmAdapter`], for other threads.
struct ShmRemote {
    counters: Arc<AdapterCounters>,
    port: Arc<PortCounters>,
    doorbell: Doorbell,
}

impl Remote for ShmRemote {
    fn stats(&self) -> AdapterStats {
        let l = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let p = &self.port;
        // The facility counts what it sees on its rings; add it in.
        let mut s = self.counters.snapshot();
        s.tx_unroutable += l(&p.unroutable);
        s.bad_descriptors += l(&p.bad_descriptors);
        s.corrupt_rings += l(&p.corrupt_rings);
        s.ring_full += l(&p.ring_full);
        s.links_reset += l(&p.links_reset);
        s.peers_rejected += l(&p.peers_rejected);
        s
    }

    fn wake(&self) {
        self.doorbell.ring();
    }
}

/// The segment's directory as `(address, peer)` tables, rebuilt when ports
/// come or go. A network has at most a few dozen ports, so a scan beats
/// hashing on the per-frame path.
#[derive(Default)]
struct PeerTable {
    generation: Option<u32>,
    by_mac: Vec<([u8; 6], Peer)>,
    by_v4: Vec<([u8; 4], Peer)>,
    by_v6: Vec<([u8; 16], Peer)>,
    everyone: Vec<Peer>,
    /// The ports that are not uplinks.
    locals: Vec<Peer>,
    /// The uplinks: where frames for nobody here go.
    uplinks: Vec<Peer>,
}

enum Dest {
    Nowhere,
    One(Peer),
    All,
    /// Every port but the uplinks (a broadcast that came in by an uplink).
    Locals,
    /// The uplinks (a frame for nobody here, from a port that is not one).
    Uplinks,
}

impl PeerTable {
    fn refresh(&mut self, port: &Port) {
        let now = port.generation();
        if self.generation == Some(now) {
            return;
        }
        self.generation = Some(now);
        self.by_mac.clear();
        self.by_v4.clear();
        self.by_v6.clear();
        self.everyone.clear();
        self.locals.clear();
        self.uplinks.clear();
        for p in port.peers() {
            let peer = Peer {
                index: p.index,
                epoch: p.epoch,
            };
            self.by_mac.push((p.info.mac, peer));
            if let Some(a) = p.info.ipv4 {
                self.by_v4.push((a, peer));
            }
            if let Some(a) = p.info.ipv6 {
                self.by_v6.push((a, peer));
            }
            self.everyone.push(peer);
            if p.info.uplink {
                self.uplinks.push(peer);
            } else {
                self.locals.push(peer);
            }
        }
    }

    /// Where a frame goes, judged by its link-layer (Ethernet) or network
    /// (IP) destination. A frame for nobody here goes to the uplinks, unless
    /// it came from one (`from_uplink`): frames that came in from beyond
    /// never go back out (no loops between gateways), and their broadcasts
    /// reach only the ports that are not uplinks.
    fn destination(
        &mut self,
        port: &Port,
        medium: Medium,
        frame: &[u8],
        from_uplink: bool,
    ) -> Dest {
        self.refresh(port);
        let all = if from_uplink { Dest::Locals } else { Dest::All };
        let unknown = if from_uplink || self.uplinks.is_empty() {
            Dest::Nowhere
        } else {
            Dest::Uplinks
        };
        let found = |p: Option<&Peer>| p.map_or(unknown, |p| Dest::One(*p));
        if medium == Medium::Ethernet {
            return match frame.first() {
                _ if frame.len() < 14 => Dest::Nowhere,
                Some(b) if b & 1 != 0 => all,
                _ => found(lookup(&self.by_mac, &frame[..6])),
            };
        }
        match frame.first().map(|b| b >> 4) {
            Some(4) if frame.len() >= 20 => {
                let dst = &frame[16..20];
                if dst[0] >= 224 || dst == [255; 4] {
                    all
                } else {
                    found(lookup(&self.by_v4, dst))
                }
            }
            Some(6) if frame.len() >= 40 => {
                if frame[24] == 0xff {
                    all
                } else {
                    found(lookup(&self.by_v6, &frame[24..40]))
                }
            }
            _ => Dest::Nowhere,
        }
    }
}

fn lookup<'a, const N: usize>(table: &'a [([u8; N], Peer)], key: &[u8]) -> Option<&'a Peer> {
    table.iter().find(|(k, _)| k[..] == *key).map(|(_, p)| p)
}
