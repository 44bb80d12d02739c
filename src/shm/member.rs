//! Membership: who is on a network, as one port sees it, and the two ways
//! a port learns it.
//!
//! A port joins a network by name, gets an index and an epoch (unique per
//! attachment), and from then on receives [`Event`]s: a peer joined (its
//! identity, a read-only [`PeerView`] of its region and its [`Doorbell`]),
//! or a peer left (it detached or its process died). Two backends deliver
//! them, with the same contract:
//!
//! - between threads of one process, a registry in this process
//!   (`local.rs`);
//! - between processes, a per-user runtime directory with one Unix socket
//!   per port; joiners pass their region's sealed memfd and their doorbell
//!   eventfd over it (`host/`). A peer's death closes its sockets, which
//!   is how survivors learn it: liveness comes from the kernel, never from
//!   a field a peer could forge.
//!
//! Contract: events for one peer come in order (joined, then left), a left
//! peer's index may be joined again by a new epoch, and nothing a peer sends
//! is trusted beyond its checks.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::ShmError;
use super::region::PeerView;

/// What a port publishes about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortInfo {
    /// Device name; shown by `shmnet segments`, and how a device finds
    /// another's addresses.
    pub name: String,
    /// Ethernet address (frames are switched by it on Ethernet networks).
    pub mac: [u8; 6],
    /// IPv4 address, if any (frames are switched by it on IP networks).
    pub ipv4: Option<[u8; 4]>,
    /// IPv6 address, if any (frames are switched by it on IP networks).
    pub ipv6: Option<[u8; 16]>,
    /// An uplink (a gateway to stations beyond the segment, e.g. VXLAN):
    /// frames for destinations no port owns go to it.
    pub uplink: bool,
}

impl PortInfo {
    /// A port with a MAC derived from the name and no IP addresses.
    pub fn named(name: &str) -> PortInfo {
        PortInfo {
            name: name.into(),
            mac: mac_from_name(name),
            ..Default::default()
        }
    }

    /// What of ours `other` already uses — its device name, or one of its
    /// addresses — as a refusal names it (`"IPv4 address 10.0.0.2"`), or
    /// `None` if nothing.
    pub(crate) fn clash(&self, other: &PortInfo) -> Option<String> {
        if self.name == other.name {
            Some(format!("device name {:?}", self.name))
        } else if let Some(a) = self.ipv4.filter(|_| self.ipv4 == other.ipv4) {
            Some(format!("IPv4 address {}", std::net::Ipv4Addr::from(a)))
        } else if let Some(a) = self.ipv6.filter(|_| self.ipv6 == other.ipv6) {
            Some(format!("IPv6 address {}", std::net::Ipv6Addr::from(a)))
        } else if self.mac == other.mac && self.mac != [0; 6] {
            let m = self.mac;
            Some(format!(
                "MAC address {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ))
        } else {
            None
        }
    }
}

/// A locally administered unicast MAC derived from a name, so a restarted
/// device keeps its address and peers' ARP caches stay right.
pub fn mac_from_name(name: &str) -> [u8; 6] {
    let h = crc32fast::hash(name.as_bytes()).to_be_bytes();
    [0x02, 0x53, h[0], h[1], h[2], h[3]]
}

/// One attached port, as its peers know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The port's index in the network.
    pub index: u32,
    /// Unique per attachment: a device restarted at the same index has
    /// another epoch.
    pub epoch: u32,
    /// The owner's pid as the kernel reported it (SO_PEERCRED), or this
    /// process's for a thread peer.
    pub owner_pid: u32,
    /// What the port published about itself.
    pub info: PortInfo,
}

/// A port's doorbell: an eventfd its peers write to wake it while it
/// sleeps. Cloned handles ring the same bell.
#[derive(Debug, Clone)]
pub(crate) struct Doorbell(Arc<OwnedFd>);

impl Doorbell {
    pub(crate) fn new() -> Result<Doorbell, ShmError> {
        rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map(|fd| Doorbell(Arc::new(fd)))
        .map_err(|e| ShmError::Io {
            what: "eventfd".into(),
            source: e.into(),
        })
    }
    /// A peer's doorbell received over a socket.
    pub(crate) fn from_fd(fd: OwnedFd) -> Doorbell {
        Doorbell(Arc::new(fd))
    }
    /// Wakes the owner (a full counter, or a bogus fd a peer sent, only
    /// means no wake-up: the owner's sleep has a timeout).
    pub(crate) fn ring(&self) {
        let _ = rustix::io::write(&*self.0, &1u64.to_ne_bytes());
    }
    /// Clears pending rings (the owner, after waking).
    pub(crate) fn drain(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&*self.0, &mut b);
    }
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A peer as a port holds it.
pub(crate) struct PeerLink {
    pub info: PeerInfo,
    pub view: PeerView,
    pub doorbell: Doorbell,
}

/// A change in who is on the network.
pub(crate) enum Event {
    Joined(PeerLink),
    Left { index: u32, epoch: u32 },
}

/// A fresh epoch for a new attachment: unique with overwhelming probability
/// (time, pid and a counter, hashed), never 0 (a ring whose epoch is 0 is
/// for nobody).
pub(crate) fn fresh_epoch() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = crate::wire::since_unix_epoch().as_nanos() as u64;
    let mut h = crc32fast::Hasher::new();
    h.update(&nanos.to_ne_bytes());
    h.update(&std::process::id().to_ne_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_ne_bytes());
    h.finalize().max(1)
}
