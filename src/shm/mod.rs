//! The shared-memory facility: segments, ports, links, rings and buffers.
//!
//! A [`Segment`] is one network's worth of shared memory, found by name. It
//! is either process-local ([`SegmentKind::Process`], devices are threads) or
//! a named POSIX shared-memory object ([`SegmentKind::Host`], devices are
//! processes); both have the same layout (see [`layout`]) and the same API.
//! A device adapter [`Segment::attach`]es a [`Port`]; a port sends a frame to
//! another port over a *link*, a single-producer/single-consumer memif-style
//! ring claimed the first time the pair talks, so memory in use grows with
//! the links actually used. Frames live in the sender's buffer pool; only a
//! 16-byte descriptor moves through the ring.
//!
//! Everything read from the segment is treated as hostile: the header,
//! descriptors, ring indices and directory entries are validated, and a bad
//! one is a typed error or counted and dropped, never a panic.
//!
//! The files, each using only those above it:
//!
//! ```text
//! layout.rs    the on-memory formats (Packet/Repr), field offsets, geometry
//! region.rs    raw memory: the mapping, atomics, copies, lent buffer views
//!              (the only file of shmnet with `unsafe` code)
//! ring.rs      the memif-style SPSC ring: producer and consumer ends
//! segment.rs   a network's segment: create/open, port directory, links, reclaim
//! port.rs      a port: buffer pool, links, send/receive/flush, drain on drop
//! wake.rs      sleeping on several ports' doorbells
//! ```
//!
//! ```
//! use shmnet::shm::{NetworkParams, PortInfo, Segment, SegmentKind};
//! let seg = Segment::open_or_create("doc-example", SegmentKind::Process, &NetworkParams::new(1500)).unwrap();
//! let mut a = seg.attach(&PortInfo::named("a")).unwrap();
//! let mut b = seg.attach(&PortInfo::named("b")).unwrap();
//! let mut buf = a.alloc().unwrap();
//! a.buffer_mut(&mut buf)[..5].copy_from_slice(b"hello");
//! a.send(buf, 5, &[b.peer()]);
//! a.flush(); // publish the burst
//! let mut out = vec![0u8; seg.frame_size()];
//! let (len, from) = b.recv_into(&mut out).unwrap();
//! assert_eq!((&out[..len], from), (&b"hello"[..], a.index()));
//! ```
pub mod layout;
mod port;
mod region;
mod ring;
mod segment;
mod wake;

pub use layout::LinkMedium;
pub use port::{Peer, Port, PortCounters};
pub use region::{InPlaceFrame, TxBuf};
pub use segment::{
    NetworkParams, PeerInfo, PortInfo, Segment, SegmentKind, mac_from_name, name_tag,
};
pub use wake::wait_any;

/// Errors of the facility.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// No segment of that name exists; create it or check the name.
    #[error("segment {name:?} not found")]
    NotFound { name: String },
    /// A segment of that name exists; open it instead.
    #[error("segment {name:?} already exists")]
    AlreadyExists { name: String },
    /// The segment was made by an incompatible shmnet; remove it or upgrade.
    #[error("segment layout version {found}, this build understands {expected}")]
    VersionMismatch { found: u32, expected: u32 },
    /// The segment is still being initialised by its creator; retry.
    #[error("segment not initialised yet")]
    NotReady,
    /// Every port (or link) slot is taken; raise `max_ports`/`max_links`.
    #[error("segment {name:?} is full: no free {what}")]
    Full { name: String, what: &'static str },
    /// MTU outside 576..=65535 bytes of IP packet.
    #[error("MTU {mtu} out of range (576..=65535)")]
    MtuOutOfRange { mtu: u32 },
    /// A live segment has other parameters than requested; use the same
    /// parameters on every device of a network.
    #[error("segment {name:?} exists with {field} {found}, requested {requested}")]
    ParameterMismatch {
        name: String,
        field: &'static str,
        found: u64,
        requested: u64,
    },
    /// A parameter is outside what the layout supports.
    #[error("invalid segment parameter: {0}")]
    InvalidParameter(String),
    /// The header or directory does not make sense; the segment is stale or
    /// was overwritten.
    #[error("segment {name:?} is corrupt: {why}")]
    Corrupt { name: String, why: String },
    /// A descriptor failed validation (counted and dropped on the data path).
    #[error("bad descriptor: {0}")]
    BadDescriptor(&'static str),
    /// Another live port already uses this hardware address.
    #[error("segment {name:?}: address already attached by a live port")]
    AddressInUse { name: String },
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
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
