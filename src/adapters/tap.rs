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
//! Frames are plain Ethernet frames (no packet-information header); each
//! read or write is one system call. A frame Linux hands over that does not
//! fit the network's MTU is a counted drop (`rx_malformed`).

use std::os::fd::AsFd;
use std::sync::Arc;

use smoltcp::phy::Medium;
use smoltcp::wire::{EthernetAddress, Ipv4Cidr};

use super::{Adapter, AdapterCounters, AdapterError, CountersRemote, Neighbour, Remote};
use super::{SingleLease, TxLease};
use super::{Wake, link_header_len};
use crate::counters::bump;
use crate::wire::LinkMedium;
use crate::wire::checksum::fill_all;

/// The longest interface name Linux accepts (IFNAMSIZ - 1).
pub const TAP_NAME_MAX: usize = 15;

/// A TAP interface, opened and configured.
pub struct TapAdapter {
    dev: tun_rs::SyncDevice,
    name: String,
    mtu: usize,
    mac: EthernetAddress,
    address: Ipv4Cidr,
    /// The one transmit buffer: a commit writes it to the kernel at once.
    tx: Vec<u8>,
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
            .build_sync()
            .map_err(|e| err(explain(&e)))?;
        dev.set_nonblocking(true)
            .map_err(|e| err(format!("cannot make it non-blocking: {e}")))?;
        // Linux would send IPv6 router solicitations and MLD reports to the
        // network's devices, which have no use for them.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        let mac = read_mac(name).map_err(err)?;
        Ok(TapAdapter {
            dev,
            name: name.into(),
            mtu: mtu as usize,
            mac,
            address,
            tx: vec![0; mtu as usize + link_header_len(Medium::Ethernet)],
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
        self.tx.len()
    }
    fn can_lend(&mut self) -> bool {
        self.lease.can_lend()
    }
    fn lend(&mut self) -> Option<TxLease> {
        self.lease.lend()
    }
    fn buffer(&mut self, lease: &mut TxLease) -> &mut [u8] {
        if self.lease.holds(lease) {
            &mut self.tx
        } else {
            &mut []
        }
    }
    fn commit(&mut self, lease: TxLease, len: usize) {
        if !self.lease.give_back(lease) {
            return;
        }
        let len = len.min(self.tx.len());
        // Devices on shared memory leave checksums out; Linux checks them.
        fill_all(LinkMedium::Ethernet, &mut self.tx[..len]);
        match self.dev.send(&self.tx[..len]) {
            Ok(_) => {
                bump(&self.counters.tx_frames, 1);
                bump(&self.counters.tx_bytes, len as u64);
            }
            // The kernel's queue is full, or the interface went down.
            Err(_) => bump(&self.counters.tx_no_buffer, 1),
        }
    }
    fn release(&mut self, lease: TxLease) {
        self.lease.give_back(lease);
    }
    fn recv_into(&mut self, dst: &mut [u8]) -> Option<usize> {
        let cap = self.tx.len();
        loop {
            // One byte more than a frame may be: a read that fills it was
            // cut, so the frame was too large for the network.
            let room = dst.len().min(cap + 1);
            let len = self.dev.recv(&mut dst[..room]).ok()?;
            if len < link_header_len(Medium::Ethernet) || len > cap {
                bump(&self.counters.rx_malformed, 1);
                continue;
            }
            bump(&self.counters.rx_frames, 1);
            bump(&self.counters.rx_bytes, len as u64);
            return Some(len);
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
