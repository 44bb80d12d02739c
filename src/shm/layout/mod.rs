//! The on-memory formats of a port's region, in smoltcp's Packet/Repr style.
//!
//! Every port owns one region, written only by its owner and mapped
//! read-only by its peers (one writer per byte):
//!
//! ```text
//! 0          header (HEADER_LEN bytes)   magic, version, geometry, identity, checksum, sleeping flag
//! rings_off  max_ports × ring_len        the ring this port produces towards peer i (at index i)
//! tails_off  max_ports × TAIL_LEN        how far this port consumed the ring peer i produces for it
//! pool_off   buffers × frame_size        this port's transmit buffers
//! ```
//! A link from A to B is A's ring at index B (descriptors and head, written
//! by A) plus B's tail entry at index A (written by B). Each carries a link
//! serial in the same 64-bit word as the index, so a reset ring and a
//! stale tail are never mixed up. Everything is an offset from the region
//! start; nothing stores a pointer. Where each field sits is said once, in
//! `mod field`.
//!
//! - [`PortHeader`] / [`HeaderRepr`]: the header. `parse` checks magic,
//!   version, a geometry that recomputes to the stored offsets and fits the
//!   mapping, and last a CRC-32 over the fields written at creation;
//!   `emit` writes all but the version, which the owner publishes last.
//! - [`Geometry`]: the network's parameters every port must share, and the
//!   offsets they imply.
//! - [`Descriptor`] / [`DescriptorRepr`]: a 16-byte ring descriptor laid
//!   out as memif's `{flags, region, length, offset, metadata}`; `parse`
//!   checks it against the geometry and the link's sender, so a descriptor
//!   that parses names one buffer of the sender's pool.
//! - Ring headers and tail entries are live atomics, read and written in
//!   place by `ring.rs` at the offsets of `mod field`.
//!
//! Contract: the views never panic on a buffer of at least `check_len`
//! bytes; every `parse` error is a typed [`ShmError`]; `emit` writes into a
//! buffer of `buffer_len()` bytes and never allocates. Integers are in the
//! host's byte order (a region never leaves the host).
//!
//! ```
//! use shmnet::shm::layout::{Descriptor, DescriptorRepr, Geometry, LinkMedium, DESC_LEN};
//! let geo = Geometry::new(1500, LinkMedium::Ethernet, 8, 64).unwrap();
//! let repr = DescriptorRepr { region: 2, buffer: 5, length: 60, metadata: 0 };
//! let mut bytes = [0u8; DESC_LEN];
//! repr.emit(&mut Descriptor::new_unchecked(&mut bytes[..]), &geo);
//! let d = Descriptor::new_checked(&bytes[..]).unwrap();
//! assert_eq!(DescriptorRepr::parse(&d, &geo, 2).unwrap(), repr);
//! assert!(DescriptorRepr::parse(&d, &geo, 3).is_err()); // not the sender's pool
//! ```

use byteorder::{ByteOrder, NativeEndian};

use crate::wire::view_fields;

use super::ShmError;

/// Bytes reserved for the region header (one page).
pub const HEADER_LEN: usize = 4096;
/// Magic bytes at offset 0.
pub const MAGIC: [u8; 8] = *b"SHMNETPT";
/// Layout version; published last, after everything else is initialised.
/// Version 3: one region per port, written only by its owner.
pub const LAYOUT_VERSION: u32 = 3;
/// Bytes of a ring header.
pub const RING_HEADER_LEN: usize = 128;
/// Bytes of a tail entry (one cache line).
pub const TAIL_LEN: usize = 64;
/// Bytes per descriptor (memif: 16).
pub const DESC_LEN: usize = 16;
/// Cookie written into every initialised ring header (memif's value).
pub const RING_COOKIE: u32 = 0x03E3_1F20;
/// Smallest IP MTU a network may have (bytes).
pub const MTU_MIN: u32 = 576;
/// Largest IP MTU a network may have (bytes).
pub const MTU_MAX: u32 = 65535;
/// Link-layer header room in each buffer (Ethernet II, no FCS).
pub const L2_HEADER_LEN: u32 = 14;
/// Most ports a network may have (`max_ports` is 2..=this); keeps a
/// region's size sane and port indices in a u16.
pub const MAX_PORTS_LIMIT: u32 = 1024;
/// Most buffers per port and slots per ring; keeps buffer indices in a u16.
pub const MAX_SLOTS_LIMIT: u32 = 1 << 16;

/// Byte offsets of every field, one module per format: the only place
/// that knows where a field sits.
pub(crate) mod field {
    /// The region header (at offset 0 of a port's region).
    pub(crate) mod header {
        use std::ops::Range;
        pub const MAGIC: Range<usize> = 0..8;
        /// u32, published last (after everything else is initialised).
        pub const VERSION: usize = 8;
        pub const HEADER_LEN: usize = 12;
        pub const TOTAL_LEN: usize = 16;
        pub const MTU: usize = 24;
        pub const FRAME_SIZE: usize = 28;
        pub const RING_SLOTS: usize = 32;
        pub const BUFFERS: usize = 36;
        pub const MAX_PORTS: usize = 40;
        pub const MEDIUM: usize = 44;
        /// The owner's port index, epoch (unique per attachment) and pid.
        pub const INDEX: usize = 48;
        pub const EPOCH: usize = 52;
        pub const PID: usize = 56;
        pub const RINGS_OFF: usize = 64;
        pub const TAILS_OFF: usize = 72;
        pub const POOL_OFF: usize = 80;
        /// u32: CRC-32 of the bytes `SUMMED`, written once at creation.
        pub const CHECKSUM: usize = 88;
        /// The fields written once at creation, apart from the magic (checked
        /// on its own) and the version (published later).
        pub const SUMMED: Range<usize> = HEADER_LEN..CHECKSUM;
        /// u32: non-zero while the owner sleeps (or is about to) on its
        /// doorbell; senders that see it ring the doorbell.
        pub const SLEEPING: usize = 128;
        pub const END: usize = 256;
    }

    /// A ring header (in the producer's region).
    pub(crate) mod ring {
        pub const COOKIE: usize = 0;
        /// u32: the epoch of the port this ring is for; a ring whose epoch is
        /// not the reader's is not (yet) for it.
        pub const TO_EPOCH: usize = 4;
        /// u64 atomic: `serial << 32 | head`; head is the wrapping producer
        /// index, serial changes whenever the producer resets the ring.
        pub const WORD: usize = 8;
    }

    /// A tail entry (in the consumer's region).
    pub(crate) mod tail {
        /// u64 atomic: `serial << 32 | tail`; the serial of the ring the
        /// tail belongs to, and the wrapping consumer index.
        pub const WORD: usize = 0;
    }
}

pub use crate::wire::LinkMedium;

/// Declares a view over a byte buffer in smoltcp's Packet style: the
/// struct, `new_unchecked`, `new_checked`, and `check_len`, which fails
/// with `short(len)` on a buffer of fewer than `len` bytes. Each format
/// adds its own field accessors (offsets from its `mod field`).
///
/// With `stamped: field::x`, also the accessors of a format that starts
/// with a magic and is summed by a CRC-32: `magic`, `compute_checksum`
/// and `fill_checksum`, from `MAGIC` and `SUMMED` of that module and the
/// view's own `checksum` and `set_checksum` (see [`view_fields!`]).
macro_rules! byte_view {
    ($(#[$attr:meta])* $name:ident, len: $len:expr, short: $short:expr $(,)?) => {
        $(#[$attr])*
        #[derive(Debug, Clone)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Wraps `buffer` without checking its length; accessors panic on a
            /// buffer shorter than [`Self::check_len`] asks for.
            pub const fn new_unchecked(buffer: T) -> Self {
                $name { buffer }
            }
            /// Wraps `buffer` after checking it is long enough for every field.
            #[inline]
            pub fn new_checked(buffer: T) -> Result<Self, $crate::shm::ShmError> {
                let view = Self::new_unchecked(buffer);
                view.check_len()?;
                Ok(view)
            }
            /// Whether the buffer holds every field; else the format's truncation error.
            #[inline]
            pub fn check_len(&self) -> Result<(), $crate::shm::ShmError> {
                let len = self.buffer.as_ref().len();
                if len < $len {
                    let short: fn(usize) -> $crate::shm::ShmError = $short;
                    return Err(short(len));
                }
                Ok(())
            }
        }
    };
    ($(#[$attr:meta])* $name:ident, len: $len:expr, short: $short:expr,
     stamped: $($f:ident)::+ $(,)?) => {
        $crate::shm::layout::byte_view!($(#[$attr])* $name, len: $len, short: $short);

        impl<T: AsRef<[u8]>> $name<T> {
            /// The magic bytes as stored.
            pub fn magic(&self) -> &[u8] {
                &self.buffer.as_ref()[$($f)::+::MAGIC]
            }
            /// The checksum the summed bytes have now.
            pub fn compute_checksum(&self) -> u32 {
                crc32fast::hash(&self.buffer.as_ref()[$($f)::+::SUMMED])
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            /// Stores the checksum of the summed bytes as they are now
            /// (`emit` ends with it; fuzzing uses it to reach the checks a
            /// random checksum would hide).
            pub fn fill_checksum(&mut self) {
                let sum = self.compute_checksum();
                self.set_checksum(sum);
            }
        }
    };
}
pub(crate) use byte_view;

/// Packs a serial and an index into one ring or tail word.
#[inline]
pub(crate) fn word(serial: u32, index: u32) -> u64 {
    (serial as u64) << 32 | index as u64
}
/// Splits a ring or tail word into `(serial, index)`.
#[inline]
pub(crate) fn split(w: u64) -> (u32, u32) {
    ((w >> 32) as u32, w as u32)
}

/// The parameters every port of a network shares, and the offsets they
/// imply inside each port's region. Built by [`Geometry::new`], which
/// checks them; two ports talk only if their geometries are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// IP MTU in bytes, [`MTU_MIN`]..=[`MTU_MAX`].
    pub mtu: u32,
    /// The link layer of the network's frames.
    pub medium: LinkMedium,
    /// Bytes per buffer: the MTU plus a link header, rounded up to 64.
    pub frame_size: u32,
    /// Slots per ring: the buffers rounded up to a power of two.
    pub ring_slots: u32,
    /// Transmit buffers per port.
    pub buffers: u32,
    /// Ports the network can hold (port indices are below it).
    pub max_ports: u32,
    rings_off: u64,
    tails_off: u64,
    pool_off: u64,
    total_len: u64,
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x / a * a)
}

impl Geometry {
    /// Computes the layout for a network; errors if a parameter is out of
    /// range (naming it).
    pub fn new(
        mtu: u32,
        medium: LinkMedium,
        max_ports: u32,
        buffers: u32,
    ) -> Result<Geometry, ShmError> {
        if !(MTU_MIN..=MTU_MAX).contains(&mtu) {
            return Err(ShmError::MtuOutOfRange { mtu });
        }
        let frame_size = align_up((mtu + L2_HEADER_LEN) as u64, 64).unwrap_or(0) as u32;
        Self::from_fields(
            mtu,
            medium,
            frame_size,
            buffers.checked_next_power_of_two().unwrap_or(0),
            buffers,
            max_ports,
        )
    }

    fn from_fields(
        mtu: u32,
        medium: LinkMedium,
        frame_size: u32,
        ring_slots: u32,
        buffers: u32,
        max_ports: u32,
    ) -> Result<Geometry, ShmError> {
        let mut g = Geometry {
            mtu,
            medium,
            frame_size,
            ring_slots,
            buffers,
            max_ports,
            rings_off: 0,
            tails_off: 0,
            pool_off: 0,
            total_len: 0,
        };
        g.check()?;
        g.compute_offsets()
            .ok_or_else(|| ShmError::InvalidParameter("region size overflows".into()))?;
        Ok(g)
    }

    fn compute_offsets(&mut self) -> Option<()> {
        let ports = self.max_ports as u64;
        self.rings_off = HEADER_LEN as u64;
        self.tails_off = align_up(
            self.rings_off
                .checked_add(ports.checked_mul(self.ring_len())?)?,
            4096,
        )?;
        self.pool_off = align_up(self.tails_off.checked_add(ports * TAIL_LEN as u64)?, 4096)?;
        self.total_len = align_up(self.pool_off.checked_add(self.pool_len())?, 4096)?;
        Some(())
    }

    /// The semantic checks shared by `new` and `parse`.
    fn check(&self) -> Result<(), ShmError> {
        let bad = |why: &str| Err(ShmError::InvalidParameter(why.into()));
        if !(MTU_MIN..=MTU_MAX).contains(&self.mtu) {
            return Err(ShmError::MtuOutOfRange { mtu: self.mtu });
        }
        if (self.frame_size as u64) < (self.mtu + L2_HEADER_LEN) as u64
            || !self.frame_size.is_multiple_of(64)
        {
            return bad("frame size does not hold an MTU-sized frame");
        }
        if !(2..=MAX_PORTS_LIMIT).contains(&self.max_ports) {
            return bad("max_ports must be 2..=1024");
        }
        if !(4..=MAX_SLOTS_LIMIT).contains(&self.buffers) {
            return bad("buffers per port must be 4..=65536");
        }
        if !self.ring_slots.is_power_of_two()
            || self.ring_slots < self.buffers
            || self.ring_slots > MAX_SLOTS_LIMIT
        {
            return bad("ring slots must be a power of two no smaller than the buffers");
        }
        // Buffer offsets travel in a u32 descriptor field.
        if (self.buffers as u64) * (self.frame_size as u64) > u32::MAX as u64 {
            return bad("a port's buffer pool exceeds 4 GiB");
        }
        Ok(())
    }

    /// The first parameter in which `self` (the network's) and `other` (a
    /// joiner's) differ: `(name, network's value, joiner's value)`.
    pub fn mismatch(&self, other: &Geometry) -> Option<(&'static str, u64, u64)> {
        [
            ("mtu", self.mtu as u64, other.mtu as u64),
            (
                "medium",
                self.medium.code() as u64,
                other.medium.code() as u64,
            ),
            ("buffers", self.buffers as u64, other.buffers as u64),
            ("max_ports", self.max_ports as u64, other.max_ports as u64),
            (
                "frame_size",
                self.frame_size as u64,
                other.frame_size as u64,
            ),
            (
                "ring_slots",
                self.ring_slots as u64,
                other.ring_slots as u64,
            ),
        ]
        .into_iter()
        .find(|(_, a, b)| a != b)
    }

    /// Bytes of one ring: its header plus `ring_slots` descriptors.
    pub fn ring_len(&self) -> u64 {
        RING_HEADER_LEN as u64 + self.ring_slots as u64 * DESC_LEN as u64
    }
    /// Bytes of a port's buffer pool: `buffers × frame_size`.
    pub fn pool_len(&self) -> u64 {
        self.buffers as u64 * self.frame_size as u64
    }
    /// Bytes of a port's region.
    pub fn region_len(&self) -> usize {
        self.total_len as usize
    }
    /// Offset of the ring a port produces towards port `peer`.
    #[inline]
    pub fn ring_off(&self, peer: u32) -> usize {
        self.rings_off as usize + peer as usize * self.ring_len() as usize
    }
    /// Offset of a port's tail entry for the ring port `peer` produces.
    #[inline]
    pub fn tail_off(&self, peer: u32) -> usize {
        self.tails_off as usize + peer as usize * TAIL_LEN
    }
    /// Offset of buffer `buffer` of a port's pool.
    #[inline]
    pub fn buffer_off(&self, buffer: u32) -> usize {
        self.pool_off as usize + buffer as usize * self.frame_size as usize
    }
}

byte_view!(
    /// A read/write view of a region header held in a local buffer.
    PortHeader,
    len: field::header::END,
    short: |_| ShmError::corrupt("header truncated"),
    stamped: field::header,
);

view_fields!(PortHeader, from_ne_bytes, to_ne_bytes {
    /// The layout version as stored: 0 until the owner publishes it.
    version, set_version: u32 = field::header::VERSION;
    /// The stored checksum of the summed bytes.
    checksum, set_checksum: u32 = field::header::CHECKSUM;
});

impl<T: AsRef<[u8]>> PortHeader<T> {
    fn u32(&self, at: usize) -> u32 {
        NativeEndian::read_u32(&self.buffer.as_ref()[at..at + 4])
    }
    fn u64(&self, at: usize) -> u64 {
        NativeEndian::read_u64(&self.buffer.as_ref()[at..at + 8])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> PortHeader<T> {
    fn set_u32(&mut self, at: usize, v: u32) {
        NativeEndian::write_u32(&mut self.buffer.as_mut()[at..at + 4], v)
    }
    fn set_u64(&mut self, at: usize, v: u64) {
        NativeEndian::write_u64(&mut self.buffer.as_mut()[at..at + 8], v)
    }
}

/// The offsets a header stores next to the geometry, and where: `emit`
/// writes them, `parse` checks that the geometry recomputes to them.
fn stored_offsets(g: &Geometry) -> [(usize, u64); 4] {
    use field::header as f;
    [
        (f::RINGS_OFF, g.rings_off),
        (f::TAILS_OFF, g.tails_off),
        (f::POOL_OFF, g.pool_off),
        (f::TOTAL_LEN, g.total_len),
    ]
}

/// What a region header says: the network's geometry and who owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRepr {
    /// The network's geometry.
    pub geo: Geometry,
    /// The owner's port index.
    pub index: u32,
    /// Unique per attachment: a restarted device at the same index has
    /// another epoch.
    pub epoch: u32,
    /// The owner's process id, for operators (liveness comes from the
    /// kernel, never from this field).
    pub pid: u32,
}

impl HeaderRepr {
    /// Parses and validates a header: magic, version, a geometry that
    /// recomputes to the same offsets and fits in `region_len` bytes, an
    /// index inside it, and last the checksum.
    pub fn parse<T: AsRef<[u8]>>(
        h: &PortHeader<T>,
        region_len: usize,
    ) -> Result<HeaderRepr, ShmError> {
        use field::header as f;
        h.check_len()?;
        if h.magic() != MAGIC {
            return Err(ShmError::corrupt("bad magic"));
        }
        let version = h.version();
        if version == 0 {
            return Err(ShmError::NotReady);
        }
        if version != LAYOUT_VERSION {
            return Err(ShmError::VersionMismatch {
                found: version,
                expected: LAYOUT_VERSION,
            });
        }
        if h.u32(f::HEADER_LEN) as usize != HEADER_LEN {
            return Err(ShmError::corrupt("header length"));
        }
        let medium = LinkMedium::from_code(h.u32(f::MEDIUM))
            .ok_or_else(|| ShmError::corrupt("unknown medium"))?;
        let geo = Geometry::from_fields(
            h.u32(f::MTU),
            medium,
            h.u32(f::FRAME_SIZE),
            h.u32(f::RING_SLOTS),
            h.u32(f::BUFFERS),
            h.u32(f::MAX_PORTS),
        )
        .map_err(|e| ShmError::corrupt(format!("geometry: {e}")))?;
        if stored_offsets(&geo).iter().any(|&(at, v)| h.u64(at) != v) {
            return Err(ShmError::corrupt("stored offsets disagree with geometry"));
        }
        if geo.total_len > region_len as u64 {
            return Err(ShmError::corrupt(format!(
                "header says {} bytes, mapping has {region_len}",
                geo.total_len
            )));
        }
        let index = h.u32(f::INDEX);
        if index >= geo.max_ports {
            return Err(ShmError::corrupt("port index past max_ports"));
        }
        // Last, so that damage the checks above can name is named by them.
        if h.checksum() != h.compute_checksum() {
            return Err(ShmError::corrupt("header checksum"));
        }
        Ok(HeaderRepr {
            geo,
            index,
            epoch: h.u32(f::EPOCH),
            pid: h.u32(f::PID),
        })
    }

    /// Bytes `emit` writes.
    pub const fn buffer_len(&self) -> usize {
        field::header::END
    }

    /// Writes every field except the version (which is published last) and
    /// the sleeping flag; the checksum covers what it writes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut PortHeader<T>) {
        use field::header as f;
        let g = &self.geo;
        h.buffer.as_mut()[f::MAGIC].copy_from_slice(&MAGIC);
        h.set_u32(f::HEADER_LEN, HEADER_LEN as u32);
        h.set_u32(f::MTU, g.mtu);
        h.set_u32(f::FRAME_SIZE, g.frame_size);
        h.set_u32(f::RING_SLOTS, g.ring_slots);
        h.set_u32(f::BUFFERS, g.buffers);
        h.set_u32(f::MAX_PORTS, g.max_ports);
        h.set_u32(f::MEDIUM, g.medium.code());
        h.set_u32(f::INDEX, self.index);
        h.set_u32(f::EPOCH, self.epoch);
        h.set_u32(f::PID, self.pid);
        for (at, v) in stored_offsets(g) {
            h.set_u64(at, v);
        }
        h.fill_checksum();
    }

    /// Writes a complete header including the version, for tests and fuzzing.
    pub fn emit_published<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut PortHeader<T>) {
        self.emit(h);
        h.set_version(LAYOUT_VERSION);
    }
}

bitflags::bitflags! {
    /// The flags of a ring descriptor (memif's `flags` field).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct DescFlags: u16 {
        /// memif: the packet continues in the next descriptor (a chained
        /// buffer). shmnet frames are one buffer each: a descriptor with it
        /// is rejected.
        const NEXT = 1 << 0;
    }
}

byte_view!(
    /// A read/write view of one 16-byte descriptor.
    Descriptor,
    len: DESC_LEN,
    short: |_| ShmError::BadDescriptor("truncated"),
);

// memif's `{flags, region, length, offset, metadata}`, in host byte order.
view_fields!(Descriptor, from_ne_bytes, to_ne_bytes {
    /// The index of the port whose pool holds the frame (memif's region).
    region, set_region: u16 = 2;
    /// Frame length in bytes.
    length, set_length: u32 = 4;
    /// Byte offset of the buffer inside the sender's pool.
    offset, set_offset: u32 = 8;
    /// Opaque to the facility; adapters may use it.
    metadata, set_metadata: u32 = 12;
});

impl<T: AsRef<[u8]>> Descriptor<T> {
    /// Every bit as stored, known or not.
    #[inline]
    pub fn flags(&self) -> DescFlags {
        DescFlags::from_bits_retain(NativeEndian::read_u16(&self.buffer.as_ref()[..2]))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Descriptor<T> {
    /// Stores the flags.
    #[inline]
    pub fn set_flags(&mut self, v: DescFlags) {
        NativeEndian::write_u16(&mut self.buffer.as_mut()[..2], v.bits())
    }
}

/// What a descriptor means once checked against the segment geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorRepr {
    /// The port whose pool holds the frame.
    pub region: u16,
    /// Index of the buffer inside that pool.
    pub buffer: u32,
    /// Frame length in bytes.
    pub length: u32,
    /// Opaque to the facility; adapters may use it.
    pub metadata: u32,
}

impl DescriptorRepr {
    /// Checks a descriptor from a link whose source port is `expected_region`:
    /// no flags (a frame is one buffer), the region must be that port's
    /// pool, the offset a buffer boundary inside it, the length non-zero and
    /// within one buffer.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(
        d: &Descriptor<T>,
        geo: &Geometry,
        expected_region: u32,
    ) -> Result<DescriptorRepr, ShmError> {
        d.check_len()?;
        let flags = d.flags();
        if !DescFlags::all().contains(flags) {
            return Err(ShmError::BadDescriptor("unknown flags"));
        }
        if flags.contains(DescFlags::NEXT) {
            return Err(ShmError::BadDescriptor("chained buffers"));
        }
        if d.region() as u32 != expected_region {
            return Err(ShmError::BadDescriptor("region is not the sender's pool"));
        }
        let off = d.offset();
        if geo.frame_size == 0 || !off.is_multiple_of(geo.frame_size) {
            return Err(ShmError::BadDescriptor("offset not on a buffer boundary"));
        }
        let buffer = off / geo.frame_size;
        if buffer >= geo.buffers {
            return Err(ShmError::BadDescriptor("offset past the pool"));
        }
        let length = d.length();
        if length == 0 || length > geo.frame_size {
            return Err(ShmError::BadDescriptor("length out of range"));
        }
        Ok(DescriptorRepr {
            region: d.region(),
            buffer,
            length,
            metadata: d.metadata(),
        })
    }

    /// Bytes `emit` writes: [`DESC_LEN`].
    pub const fn buffer_len(&self) -> usize {
        DESC_LEN
    }

    /// Writes the descriptor (no flags) into `d`, which must hold
    /// [`DESC_LEN`] bytes.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, d: &mut Descriptor<T>, geo: &Geometry) {
        d.set_flags(DescFlags::empty());
        d.set_region(self.region);
        d.set_length(self.length);
        d.set_offset(self.buffer.wrapping_mul(geo.frame_size));
        d.set_metadata(self.metadata);
    }
}

#[cfg(test)]
mod tests;
