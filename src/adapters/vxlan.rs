//! A VXLAN tunnel endpoint (RFC 7348) as an adapter: Ethernet frames in
//! UDP datagrams to and from remote VTEPs, through a kernel UDP socket.
//! Bridged to a segment as its uplink ([`super::bridge::Bridge`]), it is
//! the gateway that carries a network to other hosts: the segment hands it
//! every frame for a station no port of the segment owns, and every
//! broadcast.
//!
//! Remote VTEPs are listed statically. A frame goes to the VTEP that the
//! destination MAC was last seen behind (learned from received frames), and
//! a broadcast, multicast or unknown-unicast frame to every listed VTEP
//! (head-end replication). Received datagrams are hostile: one from an
//! unlisted address counts in `peers_rejected`; a truncated header, a
//! clear I flag, another VNI, or an inner frame shorter than an Ethernet
//! header or larger than the network's MTU counts in `rx_malformed`; none
//! gets onto the network — except a TCP super-segment: a Linux VTEP whose
//! veth passes tunnel segmentation offload through hands the socket one
//! datagram per TSO burst, and the endpoint cuts it into MTU-sized
//! segments as the kernel would have.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::phy::Medium;
use smoltcp::wire::EthernetAddress;

use super::{Adapter, AdapterCounters, AdapterError, CountersRemote, Neighbour, Remote};
use super::{SingleLease, TxLease};
use super::{Wake, link_header_len};
use crate::counters::bump;
use crate::wire::LinkMedium;
use crate::wire::checksum::fill_all;
use crate::wire::tcp::tso_segment;
use crate::wire::vxlan::{HEADER_LEN, VxlanPacket, VxlanRepr};

/// Learned MAC → VTEP entries kept at most (a full table learns no more
/// until entries age out; those frames are flooded).
const FDB_MAX: usize = 4096;
/// A learned entry not refreshed for this long is forgotten.
const FDB_AGE: Duration = Duration::from_secs(300);
/// Bytes of the UDP socket's receive and send buffers.
const SOCKET_BUFFER: usize = 8 << 20;
/// Datagrams read per [`Adapter::recv_into`] call before giving up on
/// finding a valid one (so a flood of junk cannot hold the bridge).
const JUNK_PER_CALL: usize = 64;

/// A VXLAN endpoint's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct VxlanSettings {
    /// The local UDP address to bind (an address of this host and the
    /// port, 4789 by default).
    pub local: SocketAddr,
    /// The VXLAN network identifier (24 bits).
    pub vni: u32,
    /// The remote VTEPs (address and UDP port).
    pub remotes: Vec<SocketAddr>,
    /// The IP MTU of the inner network.
    pub mtu: u32,
    /// Faults to inject on the way out, as a lossy link would (testing).
    pub faults: Faults,
}

/// Faults a gateway injects into what it sends, to show that what crosses
/// it survives a real link (this kernel has no netem). Each is a
/// probability per datagram, 0.0..=1.0; `seed` makes a run repeatable.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Drop the datagram.
    pub loss: f64,
    /// Hold it back and send it after the next one.
    pub reorder: f64,
    /// Send it twice.
    pub duplicate: f64,
    /// Seed of the dice.
    pub seed: u64,
}

impl Faults {
    /// Whether any fault is asked for.
    pub fn any(&self) -> bool {
        self.loss > 0.0 || self.reorder > 0.0 || self.duplicate > 0.0
    }
}

/// The dice of [`Faults`]: splitmix64, enough for coin flips.
struct Dice(u64);

impl Dice {
    /// True with probability `p`.
    fn roll(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// A VXLAN endpoint: a bound UDP socket, the remote VTEPs and the learned
/// forwarding table.
pub struct VxlanAdapter {
    sock: UdpSocket,
    settings: VxlanSettings,
    /// Learned: which VTEP a MAC was last seen behind, and when.
    fdb: HashMap<[u8; 6], (SocketAddr, Instant)>,
    /// Transmit buffer: the VXLAN header, then the frame.
    tx: Vec<u8>,
    /// Receive buffer: room for the largest UDP datagram.
    rx: Vec<u8>,
    /// A TCP super-segment received whole (the sender's tunnel GSO was not
    /// undone by the kernel), handed on one MTU-sized segment at a time:
    /// its length (0: none), the payload bytes per segment, the next one.
    pending: (usize, usize, usize),
    /// Where the super-segment is kept.
    pending_buf: Vec<u8>,
    lease: SingleLease,
    mac: EthernetAddress,
    counters: Arc<AdapterCounters>,
    dice: Dice,
    /// A datagram held back by [`Faults::reorder`], and where it goes.
    held: Option<(Vec<u8>, SocketAddr)>,
}

impl VxlanAdapter {
    /// Binds the local UDP address; `mac` is the gateway port's own
    /// address on the network.
    pub fn open(
        settings: VxlanSettings,
        mac: EthernetAddress,
    ) -> Result<VxlanAdapter, AdapterError> {
        let err = |why: String| AdapterError::Vxlan {
            local: settings.local.to_string(),
            why,
        };
        let sock = UdpSocket::bind(settings.local).map_err(|e| {
            err(match e.kind() {
                std::io::ErrorKind::AddrNotAvailable => format!(
                    "cannot bind it: {e} (the address must be one of this host's, e.g. on the underlay interface)"
                ),
                _ => format!("cannot bind it: {e}"),
            })
        })?;
        sock.set_nonblocking(true)
            .map_err(|e| err(format!("cannot make the socket non-blocking: {e}")))?;
        // Devices send a TCP window at once and the gateway drains the
        // socket only between rounds: a small buffer would drop bursts that
        // shared memory never drops. The forced size needs CAP_NET_ADMIN;
        // without it the kernel's limit (net.core.rmem_max) applies.
        for set in [
            rustix::net::sockopt::set_socket_recv_buffer_size_force,
            rustix::net::sockopt::set_socket_send_buffer_size_force,
        ] {
            if set(&sock, SOCKET_BUFFER).is_err() {
                let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&sock, SOCKET_BUFFER);
            }
        }
        let frame = link_header_len(Medium::Ethernet) + settings.mtu as usize;
        Ok(VxlanAdapter {
            sock,
            fdb: HashMap::new(),
            tx: vec![0; HEADER_LEN + frame],
            rx: vec![0; 65536],
            pending: (0, 0, 0),
            pending_buf: Vec::new(),
            lease: SingleLease::default(),
            mac,
            counters: Arc::default(),
            dice: Dice(settings.faults.seed),
            held: None,
            settings,
        })
    }

    /// The bound local address (the port the system chose, if 0 was
    /// asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// The endpoint's settings.
    pub fn settings(&self) -> &VxlanSettings {
        &self.settings
    }

    /// The VTEP behind which `mac` was last seen, if it is fresh.
    fn learned(&self, mac: &[u8]) -> Option<SocketAddr> {
        let key: [u8; 6] = mac.try_into().ok()?;
        let (at, seen) = self.fdb.get(&key)?;
        (seen.elapsed() < FDB_AGE).then_some(*at)
    }

    /// Remembers that `mac` sits behind the VTEP `from` sent from.
    fn learn(&mut self, mac: [u8; 6], from: IpAddr) {
        if mac[0] & 1 != 0 {
            return;
        }
        // Frames go to the VTEP's listed port, not the source port Linux
        // picked for the flow.
        let Some(vtep) = self.settings.remotes.iter().find(|r| r.ip() == from) else {
            return;
        };
        let now = Instant::now();
        if self.fdb.len() >= FDB_MAX && !self.fdb.contains_key(&mac) {
            self.fdb
                .retain(|_, (_, seen)| now.duration_since(*seen) < FDB_AGE);
            if self.fdb.len() >= FDB_MAX {
                return;
            }
        }
        self.fdb.insert(mac, (*vtep, now));
    }

    /// Keeps the inner frame of the `n`-byte datagram in `rx` for
    /// [`Adapter::recv_into`] to hand on in segments, if it is a TCP
    /// super-segment whose segments fit `cap`-byte frames.
    fn take_super_segment(&mut self, n: usize, cap: usize) -> bool {
        let inner = &self.rx[HEADER_LEN..n];
        let view = crate::wire::FrameView::parse(LinkMedium::Ethernet, inner);
        let Some(ip) = view.ip() else { return false };
        let crate::wire::Transport::Tcp { header_len, .. } = ip.transport else {
            return false;
        };
        let head = ip.l4 + usize::from(header_len);
        if head >= cap || ip.end != inner.len() {
            return false;
        }
        self.pending_buf.clear();
        self.pending_buf.extend_from_slice(inner);
        self.pending = (inner.len(), cap - head, 0);
        true
    }

    fn send_to(&mut self, len: usize, to: SocketAddr) -> bool {
        let faults = self.settings.faults;
        if !faults.any() {
            return self.sock.send_to(&self.tx[..HEADER_LEN + len], to).is_ok();
        }
        let datagram = &self.tx[..HEADER_LEN + len];
        if self.dice.roll(faults.loss) {
            return true; // lost on the way, as far as anyone can tell
        }
        if self.held.is_none() && self.dice.roll(faults.reorder) {
            self.held = Some((datagram.to_vec(), to));
            return true;
        }
        let ok = self.sock.send_to(datagram, to).is_ok();
        if self.dice.roll(faults.duplicate) {
            let _ = self.sock.send_to(datagram, to);
        }
        if let Some((late, to)) = self.held.take() {
            let _ = self.sock.send_to(&late, to);
        }
        ok
    }
}

impl Adapter for VxlanAdapter {
    fn medium(&self) -> Medium {
        Medium::Ethernet
    }
    fn ip_mtu(&self) -> usize {
        self.settings.mtu as usize
    }
    fn frame_capacity(&self) -> usize {
        self.tx.len() - HEADER_LEN
    }
    fn can_lend(&mut self) -> bool {
        self.lease.can_lend()
    }
    fn lend(&mut self) -> Option<TxLease> {
        self.lease.lend()
    }
    fn buffer(&mut self, lease: &mut TxLease) -> &mut [u8] {
        if self.lease.holds(lease) {
            &mut self.tx[HEADER_LEN..]
        } else {
            &mut []
        }
    }
    fn commit(&mut self, lease: TxLease, len: usize) {
        if !self.lease.give_back(lease) {
            return;
        }
        let len = len.min(self.tx.len() - HEADER_LEN);
        if len < link_header_len(Medium::Ethernet) {
            bump(&self.counters.tx_unroutable, 1);
            return;
        }
        // Devices on shared memory leave checksums out; hosts beyond
        // (a Linux VTEP's kernel) check them.
        fill_all(
            LinkMedium::Ethernet,
            &mut self.tx[HEADER_LEN..HEADER_LEN + len],
        );
        VxlanRepr {
            vni: self.settings.vni,
        }
        .emit(&mut VxlanPacket::new_unchecked(&mut self.tx[..]));
        let dst = &self.tx[HEADER_LEN..HEADER_LEN + 6];
        let sent = match self.learned(dst) {
            Some(vtep) => usize::from(self.send_to(len, vtep)),
            None => (0..self.settings.remotes.len())
                .filter(|&i| {
                    let to = self.settings.remotes[i];
                    self.send_to(len, to)
                })
                .count(),
        };
        if sent == 0 {
            bump(&self.counters.tx_no_buffer, 1);
            return;
        }
        bump(&self.counters.tx_frames, 1);
        bump(&self.counters.tx_bytes, len as u64);
    }
    fn release(&mut self, lease: TxLease) {
        self.lease.give_back(lease);
    }
    fn flush(&mut self) {
        // A datagram held back for reordering goes out at the end of the
        // burst at the latest: a real link delays, it does not park.
        if let Some((late, to)) = self.held.take() {
            let _ = self.sock.send_to(&late, to);
        }
    }
    fn recv_into(&mut self, dst: &mut [u8]) -> Option<usize> {
        let cap = self.tx.len() - HEADER_LEN;
        let (len, per, next) = self.pending;
        if len > 0 {
            let room = cap.min(dst.len());
            let seg = tso_segment(
                LinkMedium::Ethernet,
                &self.pending_buf[..len],
                per,
                next,
                &mut dst[..room],
            );
            match seg {
                Some(n) => {
                    self.pending.2 += 1;
                    bump(&self.counters.rx_frames, 1);
                    bump(&self.counters.rx_bytes, n as u64);
                    return Some(n);
                }
                None => self.pending = (0, 0, 0),
            }
        }
        for _ in 0..JUNK_PER_CALL {
            let (n, from) = self.sock.recv_from(&mut self.rx).ok()?;
            if !self.settings.remotes.iter().any(|r| r.ip() == from.ip()) {
                bump(&self.counters.peers_rejected, 1);
                continue;
            }
            let ok = VxlanPacket::new_checked(&self.rx[..n])
                .and_then(|p| VxlanRepr::parse(&p))
                .is_ok_and(|h| h.vni == self.settings.vni);
            let inner = n.saturating_sub(HEADER_LEN);
            if ok && inner > cap && self.take_super_segment(n, cap) {
                return self.recv_into(dst);
            }
            if !ok || inner < link_header_len(Medium::Ethernet) || inner > cap || inner > dst.len()
            {
                bump(&self.counters.rx_malformed, 1);
                continue;
            }
            dst[..inner].copy_from_slice(&self.rx[HEADER_LEN..n]);
            let mut src = [0u8; 6];
            src.copy_from_slice(&dst[6..12]);
            self.learn(src, from.ip());
            bump(&self.counters.rx_frames, 1);
            bump(&self.counters.rx_bytes, inner as u64);
            return Some(inner);
        }
        None
    }
    fn prepare_sleep(&self) -> Wake<'_> {
        Wake::Readable(self.sock.as_fd())
    }
    fn remote(&self) -> Arc<dyn Remote> {
        Arc::new(CountersRemote(Arc::clone(&self.counters)))
    }
    fn own_entry(&self) -> Neighbour {
        Neighbour {
            mac: self.mac,
            ipv4: None,
            ipv6: None,
        }
    }
    fn counters(&self) -> &AdapterCounters {
        &self.counters
    }
    fn describe(&self) -> String {
        format!("vxlan {} vni {}", self.settings.local, self.settings.vni)
    }
}
