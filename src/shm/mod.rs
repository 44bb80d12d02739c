//! The shared-memory facility: networks, ports, rings and buffers, with
//! one writer per byte.
//!
//! A [`Segment`] names one network and fixes its parameters. A device
//! adapter [`Segment::attach`]es a [`Port`], which owns one region of
//! memory: its transmit buffers, the rings it produces (one per peer) and
//! the tails of the rings it consumes. Only the owner writes its region;
//! peers read it — between processes through a read-only mapping of a
//! sealed memfd passed over a Unix socket, so a peer can neither write nor
//! truncate it. A frame stays in its sender's buffer; only a 16-byte
//! memif-style descriptor moves through the ring. Ports learn who joins and
//! who leaves from the kernel (a dead process's sockets close), never from
//! fields a peer could forge.
//!
//! Everything read from a peer's memory is treated as hostile: headers,
//! descriptors and ring indices are validated, and a bad one is a typed
//! error or counted and dropped, never a panic.
//!
//! The files, each using only those above it:
//!
//! ```text
//! layout/      the on-memory formats (Packet/Repr), field offsets, geometry
//! region.rs    raw memory: own regions, read-only peer views, lent buffers
//!              (the only file of shmnet with `unsafe` code)
//! ring.rs      the memif-style SPSC ring, split between producer and consumer memory
//! member.rs    who is on a network: port info, doorbells, join/leave events
//! local.rs     membership between threads (a registry in this process)
//! host/        membership between processes (runtime directory, Unix sockets)
//! segment.rs   networks by name and their parameters
//! port/        a port: attach, membership, drain on drop; its data path
//!              (buffer pool, links, send/receive/flush) in port/data.rs
//! ```
//!
//! ```
//! use shmnet::shm::{NetworkParams, PortInfo, Segment, SegmentKind};
//! let seg = Segment::open_or_create("doc-example", SegmentKind::InProcess, &NetworkParams::new(1500)).unwrap();
//! let mut a = seg.attach(&PortInfo::named("a")).unwrap();
//! let mut b = seg.attach(&PortInfo::named("b")).unwrap();
//! a.flush(); // learn that b joined
//! let mut buf = a.alloc().unwrap();
//! a.buffer_mut(&mut buf)[..5].copy_from_slice(b"hello");
//! a.send(buf, 5, &[b.peer()]);
//! a.flush(); // publish the burst
//! let mut out = vec![0u8; seg.frame_size()];
//! let (len, from) = b.recv_into(&mut out).unwrap();
//! assert_eq!((&out[..len], from), (&b"hello"[..], a.index()));
//! ```
mod host;
pub mod layout;
pub mod record;
#[cfg(feature = "testing")]
pub use host::testing as host_testing;
mod local;
mod member;
mod port;
mod region;
mod ring;
mod segment;

pub use host::NETWORK_NAME_MAX;
pub use layout::{Geometry, LinkMedium};
pub(crate) use member::Doorbell;
pub use member::{PeerInfo, PortInfo, mac_from_name};
pub use port::{Peer, Port, PortCounters};
pub use region::{InPlaceFrame, TxBuf};
pub use segment::{NetworkParams, Segment, SegmentKind};

/// A value for an error message: at most 80 characters of it, with its
/// length when cut (a 50 MB value must not make a 50 MB message).
pub(crate) fn quote(value: &str) -> String {
    const MAX: usize = 80;
    if value.chars().count() <= MAX {
        return value.to_string();
    }
    let cut: String = value.chars().take(MAX).collect();
    format!("{cut}… ({} bytes)", value.len())
}

/// Errors of the facility.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// No segment of that name exists; create it or check the name.
    #[error("segment {name:?} not found")]
    NotFound {
        /// The segment (network) name asked for.
        name: String,
    },
    /// A segment of that name exists; open it instead.
    #[error("segment {name:?} already exists")]
    AlreadyExists {
        /// The segment (network) name asked for.
        name: String,
    },
    /// The segment was made by an incompatible shmnet; remove it or upgrade.
    #[error("segment layout version {found}, this build understands {expected}")]
    VersionMismatch {
        /// The version stored in the header, record or manifest.
        found: u32,
        /// The version this build reads and writes.
        expected: u32,
    },
    /// The segment is still being initialised by its creator; retry.
    #[error("segment not initialised yet")]
    NotReady,
    /// Every port index is taken; raise the network's `max_ports` (the same
    /// on every device of the network).
    #[error("network {name:?} is full: all {max_ports} ports are attached; raise max_ports")]
    Full {
        /// The network's name.
        name: String,
        /// The network's port limit, all of them attached.
        max_ports: u32,
    },
    /// MTU outside 576..=65535 bytes of IP packet.
    #[error("MTU {mtu} out of range (576..=65535)")]
    MtuOutOfRange {
        /// The MTU asked for, in bytes.
        mtu: u32,
    },
    /// A live network has other parameters than requested; use the same
    /// parameters on every device of a network.
    #[error("network {name:?} runs with {field} {found}, this device asks for {requested}")]
    ParameterMismatch {
        /// The network's name.
        name: String,
        /// The first parameter that differs (`mtu`, `medium`, `buffers`, …).
        field: &'static str,
        /// The live network's value (a medium as its header code).
        found: u64,
        /// This device's value.
        requested: u64,
    },
    /// A parameter is outside what the layout supports.
    #[error("invalid segment parameter: {0}")]
    InvalidParameter(String),
    /// The header or directory does not make sense; the segment is stale or
    /// was overwritten.
    #[error("segment {name:?} is corrupt: {why}")]
    Corrupt {
        /// The network's name; empty where the failing check does not know it.
        name: String,
        /// Which check failed.
        why: String,
    },
    /// A descriptor failed validation (counted and dropped on the data path).
    #[error("bad descriptor: {0}")]
    BadDescriptor(&'static str),
    /// Another live port already uses one of this port's addresses; give
    /// each device its own.
    #[error("network {name:?}: {what} already in use by {holder}")]
    AddressInUse {
        /// The network's name.
        name: String,
        /// The clashing address or name, e.g. `IPv4 address 10.0.0.2`.
        what: String,
        /// The live port that holds it, e.g. `device alpha (pid 42)`.
        holder: String,
    },
    /// A file or directory shmnet would use belongs to another user or is
    /// open to others; remove it (as its owner) or point
    /// `SHMNET_RUNTIME_DIR` elsewhere.
    #[error(
        "{path} belongs to {owner} with mode {mode:o}; shmnet needs it owned by you and closed to others (mode 0700/0600)"
    )]
    NotOwned {
        /// The file or directory.
        path: String,
        /// Its owner, e.g. `uid 65534 (nobody)`.
        owner: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Another process held the network's lock for too long (it may hang);
    /// find it with `fuser PATH`, or retry.
    #[error("timed out after {waited:?} waiting for the lock {path}")]
    LockTimeout {
        /// The lock file.
        path: String,
        /// How long this process waited before giving up.
        waited: std::time::Duration,
    },
    /// An operating-system call failed.
    #[error("{what}")]
    Io {
        /// The operation that failed and on what.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl ShmError {
    pub(crate) fn corrupt(why: impl Into<String>) -> ShmError {
        ShmError::Corrupt {
            name: String::new(),
            why: why.into(),
        }
    }
}
