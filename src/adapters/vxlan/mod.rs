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
//!
//! Datagrams leave and arrive in batches (the `batch` module): what a
//! round commits goes out at its flush, runs to one VTEP as single GSO
//! sends, and receiving reads many messages per system call.

mod batch;
mod faults;

pub use faults::Faults;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::phy::Medium;
use smoltcp::wire::EthernetAddress;

use super::segmenter::Segmenter;
use super::{Adapter, AdapterCounters, AdapterError, CountersRemote, Neighbour, Remote};
use super::{SingleLease, TxLease};
use super::{Wake, link_header_len};
use crate::counters::bump;
use crate::wire::LinkMedium;
use crate::wire::checksum::fill_all;
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
/// A VXLAN endpoint: a bound UDP socket, the remote VTEPs and the learned
/// forwarding table.
pub struct VxlanAdapter {
    sock: batch::Socket,
    settings: VxlanSettings,
    /// Learned: which VTEP a MAC was last seen behind, and when.
    fdb: HashMap<[u8; 6], (SocketAddr, Instant)>,
    /// Bytes of a frame at most (Ethernet header and the network's MTU).
    frame: usize,
    /// Datagrams committed this round (each the VXLAN header, then the
    /// frame); the lent buffer is its tail.
    outbox: batch::Outbox,
    /// Datagrams received and not yet handed on.
    inbox: batch::Inbox,
    /// A TCP super-segment received whole (the sender's tunnel GSO was not
    /// undone by the kernel), handed on one MTU-sized segment at a time.
    pending: Segmenter,
    lease: SingleLease,
    mac: EthernetAddress,
    counters: Arc<AdapterCounters>,
    /// Sends one datagram at a time with the configured faults, if any.
    lossy: faults::Lossy,
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
        use rustix::net::sockopt as so;
        if so::set_socket_recv_buffer_size_force(&sock, SOCKET_BUFFER).is_err() {
            let _ = so::set_socket_recv_buffer_size(&sock, SOCKET_BUFFER);
        }
        if so::set_socket_send_buffer_size_force(&sock, SOCKET_BUFFER).is_err() {
            let _ = so::set_socket_send_buffer_size(&sock, SOCKET_BUFFER);
        }
        let sock =
            batch::Socket::new(sock).map_err(|e| err(format!("cannot set up the socket: {e}")))?;
        Ok(VxlanAdapter {
            sock,
            fdb: HashMap::new(),
            frame: link_header_len(Medium::Ethernet) + settings.mtu as usize,
            outbox: batch::Outbox::default(),
            inbox: batch::Inbox::default(),
            pending: Segmenter::default(),
            lease: SingleLease::default(),
            mac,
            counters: Arc::default(),
            lossy: faults::Lossy::new(settings.faults),
            settings,
        })
    }

    /// The bound local address (the port the system chose, if 0 was
    /// asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.sock.get().local_addr()
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

    /// Sends what this round committed.
    fn send_queued(&mut self) {
        let (sent, refused) = if self.lossy.active() {
            let (mut sent, mut refused) = (0, 0);
            let (lossy, sock) = (&mut self.lossy, &self.sock);
            self.outbox.drain(|d, to| match lossy.send(sock, d, to) {
                true => sent += 1,
                false => refused += 1,
            });
            lossy.release(sock);
            (sent, refused)
        } else {
            self.outbox.send(&self.sock)
        };
        bump(&self.counters.tx_frames, sent as u64);
        bump(&self.counters.tx_no_buffer, refused as u64);
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
        self.frame
    }
    fn can_lend(&mut self) -> bool {
        self.lease.can_lend()
    }
    fn lend(&mut self) -> Option<TxLease> {
        if !self.outbox.has_room(HEADER_LEN + self.frame) {
            self.send_queued();
        }
        self.lease.lend()
    }
    fn buffer(&mut self, lease: &mut TxLease) -> &mut [u8] {
        if !self.lease.holds(lease) {
            return &mut [];
        }
        &mut self.outbox.tail(HEADER_LEN + self.frame)[HEADER_LEN..]
    }
    fn commit(&mut self, lease: TxLease, len: usize) {
        if !self.lease.give_back(lease) {
            return;
        }
        let len = len.min(self.frame);
        if len < link_header_len(Medium::Ethernet) {
            bump(&self.counters.tx_unroutable, 1);
            return;
        }
        let vni = self.settings.vni;
        let datagram = &mut self.outbox.tail(HEADER_LEN + self.frame)[..HEADER_LEN + len];
        // Devices on shared memory leave checksums out; hosts beyond
        // (a Linux VTEP's kernel) check them.
        fill_all(LinkMedium::Ethernet, &mut datagram[HEADER_LEN..]);
        VxlanRepr { vni }.emit(&mut VxlanPacket::new_unchecked(&mut datagram[..]));
        // To the VTEP the destination was learned behind, or to all
        // (broadcast, multicast, unknown unicast).
        let mut to = [0u8; 6];
        to.copy_from_slice(&datagram[HEADER_LEN..HEADER_LEN + 6]);
        let learned = self.learned(&to);
        let all = if learned.is_none() {
            &self.settings.remotes[..]
        } else {
            &[]
        };
        self.outbox.queue(
            HEADER_LEN + len,
            learned.into_iter().chain(all.iter().copied()),
        );
        bump(&self.counters.tx_bytes, len as u64);
    }
    fn release(&mut self, lease: TxLease) {
        self.lease.give_back(lease);
    }
    fn flush(&mut self) {
        self.send_queued();
    }
    fn recv_into(&mut self, dst: &mut [u8]) -> Option<usize> {
        let cap = self.frame.min(dst.len());
        if let Some(n) = self.pending.next(LinkMedium::Ethernet, &mut dst[..cap]) {
            bump(&self.counters.rx_frames, 1);
            bump(&self.counters.rx_bytes, n as u64);
            return Some(n);
        }
        for _ in 0..JUNK_PER_CALL {
            let (datagram, from) = self.inbox.next(&self.sock)?;
            if !self.settings.remotes.iter().any(|r| r.ip() == from.ip()) {
                bump(&self.counters.peers_rejected, 1);
                continue;
            }
            let ok = VxlanPacket::new_checked(datagram)
                .and_then(|p| VxlanRepr::parse(&p))
                .is_ok_and(|h| h.vni == self.settings.vni);
            let inner = datagram.get(HEADER_LEN..).unwrap_or_default();
            if ok && inner.len() > cap && self.pending.take(LinkMedium::Ethernet, inner, cap) {
                return self.recv_into(dst);
            }
            if !ok || inner.len() < link_header_len(Medium::Ethernet) || inner.len() > cap {
                bump(&self.counters.rx_malformed, 1);
                continue;
            }
            let n = inner.len();
            dst[..n].copy_from_slice(inner);
            let mut src = [0u8; 6];
            src.copy_from_slice(&dst[6..12]);
            self.learn(src, from.ip());
            bump(&self.counters.rx_frames, 1);
            bump(&self.counters.rx_bytes, n as u64);
            return Some(n);
        }
        None
    }
    fn prepare_sleep(&self) -> Wake<'_> {
        Wake::Readable(self.sock.get().as_fd())
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
