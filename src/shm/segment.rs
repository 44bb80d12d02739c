//! Networks by name: the handle a device joins through, the parameters
//! every port of a network shares, and the listing the CLI shows.
//!
//! A [`Segment`] names one network and fixes its [`Geometry`]. Its memory
//! is not one shared block any more but one region per port (see
//! [`layout`](super::layout)); the segment is how ports find each other:
//!
//! - [`SegmentKind::InProcess`]: devices are threads of this process; the
//!   network is a table in this process (`local.rs`).
//! - [`SegmentKind::Shared`]: devices are processes of this user; the network
//!   is a directory in the per-user runtime directory, one Unix socket per
//!   port, through which ports pass their sealed regions (`host/`).
//!
//! ```
//! use shmnet::shm::{NetworkParams, PortInfo, Segment, SegmentKind};
//! let seg = Segment::open_or_create("doc-segment", SegmentKind::InProcess, &NetworkParams::new(9000)).unwrap();
//! let port = seg.attach(&PortInfo::named("dev")).unwrap();
//! let me = seg.peers().into_iter().find(|p| p.index == port.index()).unwrap();
//! assert_eq!((seg.mtu(), me.owner_pid, me.info.name.as_str()), (9000, std::process::id(), "dev"));
//! ```

use std::sync::Arc;

use super::ShmError;
use super::host;
use super::layout::{Geometry, LinkMedium};
use super::local::LocalNetwork;
use super::member::PeerInfo;

/// Where a network's ports live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// Process-local memory: every device is a thread of this process.
    InProcess,
    /// Sealed memfds shared over Unix sockets in the per-user runtime
    /// directory: devices may be separate processes of this user.
    Shared,
}

/// The parameters of a network; every device of the network must use the
/// same ones (a joiner with others is refused, naming the difference).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkParams {
    /// IP MTU, 576..=65535.
    pub mtu: u32,
    /// The link layer: Ethernet (the default of [`NetworkParams::new`]) or bare IP.
    pub medium: LinkMedium,
    /// Ports (device adapters) the network can hold at once. Costs only
    /// address space until used: each port keeps one ring per possible peer.
    pub max_ports: u32,
    /// Transmit buffers per port (also each ring's slot count, rounded up
    /// to a power of two). `0` picks a default from the MTU.
    pub buffers: u32,
}

impl NetworkParams {
    /// Defaults for an Ethernet network with the given IP MTU.
    pub fn new(mtu: u32) -> NetworkParams {
        NetworkParams {
            mtu,
            medium: LinkMedium::Ethernet,
            max_ports: 128,
            buffers: 0,
        }
    }

    /// About 16 MiB of buffers per port, between 64 and 1024 of them: enough
    /// for a TCP window at any MTU without pinning much memory.
    pub fn effective_buffers(&self) -> u32 {
        if self.buffers != 0 {
            return self.buffers;
        }
        let frame = self
            .mtu
            .clamp(super::layout::MTU_MIN, super::layout::MTU_MAX)
            + 64;
        ((16 << 20) / frame)
            .clamp(64, 1024)
            .next_power_of_two()
            .min(1024)
    }

    /// The geometry these parameters give (checked).
    pub fn geometry(&self) -> Result<Geometry, ShmError> {
        Geometry::new(
            self.mtu,
            self.medium,
            self.max_ports,
            self.effective_buffers(),
        )
    }
}

/// One network, by name.
pub struct Segment {
    name: String,
    kind: SegmentKind,
    geo: Geometry,
    local: Option<Arc<LocalNetwork>>,
}

impl Segment {
    /// The network `name` with these parameters. For threads, an existing
    /// network of that name in this process must have the same geometry;
    /// between processes, that is checked when a port joins.
    pub fn open_or_create(
        name: &str,
        kind: SegmentKind,
        params: &NetworkParams,
    ) -> Result<Arc<Segment>, ShmError> {
        host::check_network_name(name)?;
        let geo = params.geometry()?;
        let local = match kind {
            SegmentKind::InProcess => Some(LocalNetwork::open_or_create(name, &geo)?),
            SegmentKind::Shared => None,
        };
        Ok(Arc::new(Segment {
            name: name.into(),
            kind,
            geo,
            local,
        }))
    }

    /// An existing host network, with the geometry its live ports use.
    pub fn open(name: &str) -> Result<Arc<Segment>, ShmError> {
        host::check_network_name(name)?;
        let (geo, _) = host::describe(name)?;
        Ok(Arc::new(Segment {
            name: name.into(),
            kind: SegmentKind::Shared,
            geo,
            local: None,
        }))
    }

    /// Names of the host networks in this user's runtime directory.
    pub fn list_host() -> Result<Vec<String>, ShmError> {
        host::list_networks()
    }

    /// Removes what is left of a host network if no live process is
    /// attached to it. Returns whether it was removed.
    pub fn remove_if_unused(name: &str) -> Result<bool, ShmError> {
        host::check_network_name(name)?;
        host::remove_if_unused(name)
    }

    /// The ports attached now (a snapshot; between processes, the live
    /// ones of the runtime directory).
    pub fn peers(&self) -> Vec<PeerInfo> {
        match &self.local {
            Some(net) => net.peers(),
            None => host::describe(&self.name)
                .map(|(_, peers)| peers)
                .unwrap_or_default(),
        }
    }

    /// Attached ports (a snapshot).
    pub fn live_ports(&self) -> usize {
        self.peers().len()
    }

    /// The network's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Whether its ports are threads of this process or processes.
    pub fn kind(&self) -> SegmentKind {
        self.kind
    }
    /// The network's IP MTU in bytes.
    pub fn mtu(&self) -> u32 {
        self.geo.mtu
    }
    /// The network's link layer.
    pub fn medium(&self) -> LinkMedium {
        self.geo.medium
    }
    /// Bytes per frame buffer (link header plus MTU, rounded up).
    pub fn frame_size(&self) -> usize {
        self.geo.frame_size as usize
    }
    /// The network's parameters and the region layout they imply.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }
    pub(crate) fn local(&self) -> Option<&Arc<LocalNetwork>> {
        self.local.as_ref()
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("mtu", &self.geo.mtu)
            .field("max_ports", &self.geo.max_ports)
            .finish()
    }
}
