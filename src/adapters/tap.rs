//! A Linux TAP interface as an adapter: the host's kernel as a station of a
//! network. Bridged to a segment ([`super::bridge::Bridge`]), it lets Linux
//! programs reach the devices of that network with ordinary sockets (ping,
//! curl, nc) and the devices reach Linux.
//!
//! [`TapAdapter::open`] creates the interface (or attaches to an existing
//! one of that name), sets its MTU, gives it its address and brings it up.
//! The interface is not persistent: it disappears when the adapter is
//! dropped or its process dies, so a crash leaves nothing behind. Creating
//! and configuring it needs `CAP_NET_ADMIN`; without it, opening fails with
//! an error that says so.
//!
//! Frames are Ethernet frames after a virtio-net header (`IFF_VNET_HDR`),
//! with the kernel's segmentation offloads on: Linux hands over a TCP
//! stream (or a UDP GSO send) as super-packets of up to 64 KiB, one read
//! each, which the adapter cuts to the network's MTU (`segmenter`), and
//! leaves transport checksums for the adapter to fill. Without offloads
//! (an old kernel) frames are plain and a read is one frame. A frame Linux
//! hands over that does not fit the network's MTU and is no super-packet
//! is a counted drop (`rx_malformed`), as is an offload the adapter does
//! not know.

use std::os::fd::AsFd;
use std::sync::Arc;

use smoltcp::phy::Medium;
use smoltcp::wire::{EthernetAddress, Ipv4Cidr};

use super::coalescer::Coalescer;
use super::segmenter::{Offload, Segmenter};
use super::{Adapter, AdapterCounters, AdapterError, CountersRemote, Neighbour, Remote};
use super::{SingleLease, TxLease};
use super::{Wake, link_header_len};
use crate::counters::bump;
use crate::wire::LinkMedium;
use crate::wire::checksum::fill_all;

/// The longest interface name Linux accepts (IFNAMSIZ - 1).
pub const TAP_NAME_MAX: usize = 15;

/// Bytes of the virtio-net header before each frame (with offloads).
const VNET_HDR_LEN: usize = 10;
/// The virtio-net header's flag: the transport checksum is left for the
/// receiver to fill.
const VNET_NEEDS_CSUM: u8 = 1;
/// The virtio-net header's GSO types (the 0x80 bit is ECN).
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;
/// The largest read with offloads: a 64 KiB super-packet, its Ethernet
/// header and the virtio-net header.
const RX_MAX: usize = VNET_HDR_LEN + 14 + 65_535;

/// A TAP interface, opened and configured.
pub struct TapAdapter {
    dev: tun_rs::SyncDevice,
    name: String,
    mtu: usize,
    mac: EthernetAddress,
    address: Ipv4Cidr,
    /// Bytes of a frame at most (Ethernet header and the MTU).
    frame: usize,
    /// Bytes of the virtio-net header (0: offloads off).
    vnet: usize,
    /// The one transmit buffer: the virtio-net header, then the frame; a
    /// commit writes it to the kernel at once.
    tx: Vec<u8>,
    /// Where a read lands (with offloads: header and super-packet).
    rx: Vec<u8>,
    /// A super-packet being handed on in pieces.
    pending: Segmenter,
    /// Segments of one flow joined on their way to Linux (with offloads).
    outgoing: Coalescer,
    lease: SingleLease,
    counters: Arc<AdapterCounters>,
}

/// Whether `name` can name a Linux interface.
pub fn valid_tap_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TAP_NAME_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl TapAdapter {
    /// Creates (or attaches to) the TAP interface `name` with IP MTU `mtu`
    /// and host address `address`, and brings it up.
    pub fn open(name: &str, mtu: u32, address: Ipv4Cidr) -> Result<TapAdapter, AdapterError> {
        let err = |why: String| AdapterError::Tap {
            name: name.into(),
            why,
        };
        if !valid_tap_name(name) {
            return Err(err(format!(
                "not a valid interface name (1..={TAP_NAME_MAX} letters, digits, `-`, `_`, `.`)"
            )));
        }
        let mtu16 = u16::try_from(mtu).map_err(|_| err(format!("MTU {mtu} is above 65535")))?;
        let v4 = std::net::Ipv4Addr::from(address.address().octets());
        let dev = tun_rs::DeviceBuilder::new()
            .name(name)
            .layer(tun_rs::Layer::L2)
            .mtu(mtu16)
            .ipv4(v4, address.prefix_len(), None)
            .enable(true)
            .offload(true)
            .build_sync()
            .map_err(|e| err(explain(&e)))?;
        dev.set_nonblocking(true)
            .map_err(|e| err(format!("cannot make it non-blocking: {e}")))?;
        // Linux would send IPv6 router solicitations and MLD reports to the
        // network's devices, which have no use for them.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        let mac = read_mac(name).map_err(err)?;
        let frame = mtu as usize + link_header_len(Medium::Ethernet);
        let vnet = if dev.tcp_gso() { VNET_HDR_LEN } else { 0 };
        Ok(TapAdapter {
            dev,
            name: name.into(),
            mtu: mtu as usize,
            mac,
            address,
            frame,
            vnet,
            tx: vec![0; vnet + frame],
            rx: vec![0; if vnet > 0 { RX_MAX } else { 0 }],
            pending: Segmenter::default(),
            outgoing: Coalescer::default(),
            lease: SingleLease::default(),
            counters: Arc::default(),
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface's hardware address (what the network's devices send
    /// to when they reach Linux).
    pub fn mac(&self) -> EthernetAddress {
        self.mac
    }

    /// The host's address on the network.
    pub fn address(&self) -> Ipv4Cidr {
        self.address
    }

    /// Writes the joined segments, if any: one GSO packet for Linux to
    /// take whole (a run of one as an ordinary frame).
    fn send_joined(&mut self) {
        let Some((frame, count, gso)) = self.outgoing.take() else {
            return;
        };
        let mut hdr = [0u8; VNET_HDR_LEN];
        match gso {
            Some(g) => {
                hdr[0] = VNET_NEEDS_CSUM;
                hdr[1] = if g.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
                let field = |v: usize| u16::try_from(v).unwrap_or(u16::MAX).to_ne_bytes();
                hdr[2..4].copy_from_slice(&field(g.head));
                hdr[4..6].copy_from_slice(&field(g.size));
                hdr[6..8].copy_from_slice(&field(g.l4));
                // The TCP checksum's offset in the TCP header.
                hdr[8..10].copy_from_slice(&field(16));
            }
            None => {
                fill_all(LinkMedium::Ethernet, frame);
            }
        }
        let len = frame.len();
        let sent = self
            .dev
            .send_vectored(&[std::io::IoSlice::new(&hdr), std::io::IoSlice::new(frame)])
            .is_ok();
        self.count_sent(sent, count, len);
    }

    /// Counts `frames` frames of `bytes` bytes in all written, or refused
    /// (the kernel's queue is full, or the interface went down).
    fn count_sent(&self, sent: bool, frames: usize, bytes: usize) {
        if sent {
            bump(&self.counters.tx_frames, frames as u64);
            bump(&self.counters.tx_bytes, bytes as u64);
        } else {
            bump(&self.counters.tx_no_buffer, frames as u64);
        }
    }

    /// Reads a plain frame into `dst` (`cap` bytes): `None` when nothing
    /// waits, `Some(None)` for a frame that does not fit.
    fn recv_plain(&mut self, dst: &mut [u8]) -> Option<Option<usize>> {
        // Room for one byte more than `dst`: a read that reaches it was
        // too large for the network.
        let room = dst.len();
        let mut probe = [0u8; 1];
        let len = self
            .dev
            .recv_vectored(&mut [
                std::io::IoSliceMut::new(dst),
                std::io::IoSliceMut::new(&mut probe),
            ])
            .ok()?;
        Some(
            (link_header_len(Medium::Ethernet)..=room)
                .contains(&len)
                .then_some(len),
        )
    }

    /// The next frame with offloads: a piece of the super-packet being
    /// cut, or what the next read brings (cut if it is a super-packet).
    fn recv_offloaded(&mut self, dst: &mut [u8]) -> Option<Option<usize>> {
        let medium = LinkMedium::Ethernet;
        if let Some(len) = self.pending.next(medium, dst) {
            return Some(Some(len));
        }
        let n = self.dev.recv(&mut self.rx).ok()?;
        let Some((hdr, frame)) = self.rx[..n].split_at_checked(VNET_HDR_LEN) else {
            return Some(None);
        };
        let gso_size = usize::from(u16::from_ne_bytes([hdr[4], hdr[5]]));
        let kind = match hdr[1] & !GSO_ECN {
            GSO_NONE => None,
            GSO_TCPV4 | GSO_TCPV6 => Some(Offload::Tcp),
            GSO_UDP_L4 => Some(Offload::Udp),
            // UFO (GSO_UDP: IP fragmentation of UDP) and anything newer.
            _ => return Some(None),
        };
        if let Some(kind) = kind {
            self.pending.take_cut(kind, frame, gso_size);
            return Some(self.pending.next(medium, dst));
        }
        let len = frame.len();
        if !(link_header_len(Medium::Ethernet)..=dst.len()).contains(&len) {
            return Some(None);
        }
        dst[..len].copy_from_slice(frame);
        if hdr[0] & VNET_NEEDS_CSUM != 0 {
            // Left partial by Linux: made whole, for whoever forwards or
            // captures it.
            fill_all(medium, &mut dst[..len]);
        }
        Some(Some(len))
    }
}

/// An error creating the interface, with what to do about a missing
/// privilege.
fn explain(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "creating a TAP interface needs CAP_NET_ADMIN ({e}); run as root, or give the \
             program the capability (`sudo setcap cap_net_admin+ep PROGRAM`)"
        ),
        std::io::ErrorKind::NotFound => {
            format!("/dev/net/tun is missing ({e}): this kernel or container has no TUN/TAP")
        }
        _ => format!("cannot create it: {e}"),
    }
}

/// The interface's MAC, from sysfs.
fn read_mac(name: &str) -> Result<EthernetAddress, String> {
    let path = format!("/sys/class/net/{name}/address");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in &mut mac {
        *b = parts
            .next()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| format!("{path}: not a MAC address: {:?}", text.trim()))?;
    }
    Ok(EthernetAddress(mac))
}

impl Adapter for TapAdapter {
    fn medium(&self) -> Medium {
        Medium::Ethernet
    }
    fn ip_mtu(&self) -> usize {
        self.mtu
    }
    fn frame_capacity(&self) -> usize {
        self.frame
    }
    fn can_lend(&mut self) -> bool {
        self.lease.can_lend()
    }
    fn lend(&mut self) -> Option<TxLease> {
        self.lease.lend()
    }
    fn buffer(&mut self, lease: &mut TxLease) -> &mut [u8] {
        self.lease.buffer(lease, &mut self.tx[self.vnet..])
    }
    fn commit(&mut self, lease: TxLease, len: usize) {
        if !self.lease.give_back(lease) {
            return;
        }
        let len = len.min(self.frame);
        let vnet = self.vnet;
        if vnet > 0 {
            let frame = &self.tx[vnet..vnet + len];
            if self.outgoing.join(frame) {
                return;
            }
            self.send_joined();
            if self.outgoing.join(&self.tx[vnet..vnet + len]) {
                return;
            }
        }
        // Devices on shared memory leave checksums out; Linux checks them.
        // (The virtio-net header, if any, stays zero: one whole frame.)
        fill_all(LinkMedium::Ethernet, &mut self.tx[vnet..vnet + len]);
        let sent = self.dev.send(&self.tx[..vnet + len]).is_ok();
        self.count_sent(sent, 1, len);
    }
    fn flush(&mut self) {
        self.send_joined();
    }
    fn release(&mut self, lease: TxLease) {
        self.lease.give_back(lease);
    }
    fn recv_into(&mut self, dst: &mut [u8]) -> Option<usize> {
        let cap = self.frame.min(dst.len());
        loop {
            let got = if self.vnet == 0 {
                self.recv_plain(&mut dst[..cap])?
            } else {
                self.recv_offloaded(&mut dst[..cap])?
            };
            match got {
                Some(len) => {
                    bump(&self.counters.rx_frames, 1);
                    bump(&self.counters.rx_bytes, len as u64);
                    return Some(len);
                }
                None => bump(&self.counters.rx_malformed, 1),
            }
        }
    }
    fn prepare_sleep(&self) -> Wake<'_> {
        Wake::Readable(self.dev.as_fd())
    }
    fn remote(&self) -> Arc<dyn Remote> {
        Arc::new(CountersRemote(Arc::clone(&self.counters)))
    }
    fn own_entry(&self) -> Neighbour {
        Neighbour {
            mac: self.mac,
            ipv4: Some(self.address.address()),
            ipv6: None,
        }
    }
    fn counters(&self) -> &AdapterCounters {
        &self.counters
    }
    fn describe(&self) -> String {
        format!("tap {}", self.name)
    }
}
