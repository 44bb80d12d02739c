//! The on-memory formats of a segment, in smoltcp's Packet/Repr style.
//!
//! ```text
//! 0            header (HEADER_LEN bytes)       magic, version, geometry, checksum, generations
//! ports_off    max_ports × PORT_LEN            directory: state/epoch, owner, MAC, IPs, doorbell
//! links_off    max_links × LINK_LEN            link table: state/serial, src, dst, epochs
//! rings_off    max_links × ring_len            one memif-style ring per link
//! pools_off    max_ports × pool_len            each port's transmit buffers
//! ```
//! Everything is an offset from the segment start; nothing stores a pointer.
//! Where each field sits is said once, in `mod field`.
//!
//! - [`SegmentHeader`] / [`HeaderRepr`]: the header. `parse` checks magic,
//!   version, a geometry that recomputes to the stored offsets and fits the
//!   mapping, and last a CRC-32 over the fields written at creation;
//!   `emit` writes all but the version, which the creator publishes last.
//! - [`Descriptor`] / [`DescriptorRepr`]: a 16-byte ring descriptor laid
//!   out as memif's `{flags, region, length, offset, metadata}`; `parse`
//!   checks it against the geometry and the link's sender, so a descriptor
//!   that parses names one buffer of the sender's pool.
//! - Directory, link-table and ring-header entries are live atomics, read
//!   and written in place by `segment.rs` and `ring.rs` at the offsets of
//!   `mod field`; they have no local Packet view.
//!
//! Contract: the views never panic on a buffer of at least `check_len`
//! bytes; every `parse` error is a typed [`ShmError`]; `emit` writes into a
//! buffer of `buffer_len()` bytes and never allocates. Integers are in the
//! host's byte order (a segment never leaves the host).
//!
//! ```
//! use shmnet::shm::layout::{Descriptor, DescriptorRepr, HeaderRepr, LinkMedium, DESC_LEN};
//! let geo = HeaderRepr::new(1500, LinkMedium::Ethernet, 8, 16, 64, 0).unwrap();
//! let repr = DescriptorRepr { region: 2, buffer: 5, length: 60, metadata: 0 };
//! let mut bytes = [0u8; DESC_LEN];
//! repr.emit(&mut Descriptor::new_unchecked(&mut bytes[..]), &geo);
//! let d = Descriptor::new_checked(&bytes[..]).unwrap();
//! assert_eq!(DescriptorRepr::parse(&d, &geo, 2).unwrap(), repr);
//! assert!(DescriptorRepr::parse(&d, &geo, 3).is_err()); // not the sender's pool
//! ```

use byteorder::{ByteOrder, NativeEndian};

use super::ShmError;

/// Bytes reserved for the segment header (one page).
pub const HEADER_LEN: usize = 4096;
/// Magic bytes at offset 0.
pub const MAGIC: [u8; 8] = *b"SHMNETSG";
/// Layout version; published last, after everything else is initialised.
/// Version 2 added the header checksum.
pub const LAYOUT_VERSION: u32 = 2;
/// Bytes per port directory entry (two cache lines).
pub const PORT_LEN: usize = 128;
/// Bytes per link table entry (one cache line).
pub const LINK_LEN: usize = 64;
/// Bytes of a ring header (memif: 128, head and tail on separate lines).
pub const RING_HEADER_LEN: usize = 128;
/// Bytes per descriptor (memif: 16).
pub const DESC_LEN: usize = 16;
/// Cookie written into every initialised ring header (memif's value).
pub const RING_COOKIE: u32 = 0x03E3_1F20;
/// Smallest and largest IP MTU a network may have.
pub const MTU_MIN: u32 = 576;
pub const MTU_MAX: u32 = 65535;
/// Link-layer header room in each buffer (Ethernet II, no FCS).
pub const L2_HEADER_LEN: u32 = 14;
/// Upper bounds that keep a segment's size sane and indices in a u16 region.
pub const MAX_PORTS_LIMIT: u32 = 1024;
pub const MAX_LINKS_LIMIT: u32 = 1 << 20;
pub const MAX_SLOTS_LIMIT: u32 = 1 << 16;

/// Byte offsets of every field, one module per format: the only place
/// that knows where a field sits.
pub(crate) mod field {
    /// The segment header (at offset 0 of a segment).
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
        pub const MAX_LINKS: usize = 44;
        pub const PORTS_OFF: usize = 48;
        pub const LINKS_OFF: usize = 56;
        pub const RINGS_OFF: usize = 64;
        pub const POOLS_OFF: usize = 72;
        pub const MEDIUM: usize = 80;
        pub const CREATOR_PID: usize = 84;
        /// u32: CRC-32 of the bytes `SUMMED`, written once at creation.
        pub const CHECKSUM: usize = 88;
        /// The fields written once at creation, apart from the magic (checked
        /// on its own) and the version (published later).
        pub const SUMMED: Range<usize> = HEADER_LEN..CHECKSUM;
        /// Atomics, bumped whenever a port or a link changes state.
        pub const PORT_GEN: usize = 128;
        pub const LINK_GEN: usize = 192;
        pub const END: usize = 256;
    }

    /// A port directory entry.
    pub(crate) mod port {
        /// u64 atomic: `epoch << 32 | state`.
        pub const WORD: usize = 0;
        pub const OWNER_PID: usize = 8;
        /// u64: the owner's process start time (clock ticks since boot), to
        /// tell a reused pid from the original owner.
        pub const OWNER_START: usize = 16;
        /// 6 bytes in a u64.
        pub const MAC: usize = 24;
        /// u32 address, then a u32 that is non-zero when it is set.
        pub const IPV4: usize = 32;
        pub const IPV4_SET: usize = 36;
        /// u64: the first 8 bytes of the IPv6 address (all 16 zero: none).
        pub const IPV6: usize = 40;
        /// u64: its last 8 bytes.
        pub const IPV6_LOW: usize = 48;
        /// u64: a hash of the device name.
        pub const NAME: usize = 56;
        /// u32 futex word a sender bumps to wake the owner.
        pub const DOORBELL: usize = 64;
        /// u32: non-zero while the owner sleeps (or is about to) on the
        /// doorbell.
        pub const SLEEPING: usize = 68;
    }

    /// A link table entry.
    pub(crate) mod link {
        /// u64 atomic: `serial << 32 | state`.
        pub const WORD: usize = 0;
        pub const SRC: usize = 8;
        pub const DST: usize = 12;
        pub const SRC_EPOCH: usize = 16;
        pub const DST_EPOCH: usize = 20;
    }

    /// A ring header.
    pub(crate) mod ring {
        pub const COOKIE: usize = 0;
        /// u32 producer index, wrapping; written only by the link's source.
        pub const HEAD: usize = 8;
        /// u32 consumer index, wrapping; on its own cache line.
        pub const TAIL: usize = 64;
    }

    /// A ring descriptor (memif's `{flags, region, length, offset,
    /// metadata}`).
    pub(crate) mod descriptor {
        use std::ops::Range;
        pub const FLAGS: Range<usize> = 0..2;
        pub const REGION: Range<usize> = 2..4;
        pub const LENGTH: Range<usize> = 4..8;
        pub const OFFSET: Range<usize> = 8..12;
        pub const METADATA: Range<usize> = 12..16;
    }
}

pub use crate::wire::LinkMedium;

/// A read/write view of a segment header held in a local buffer.
#[derive(Debug, Clone)]
pub struct SegmentHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SegmentHeader<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        SegmentHeader { buffer }
    }
    /// Wraps `buffer` after checking it is long enough for every field.
    pub fn new_checked(buffer: T) -> Result<Self, ShmError> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }
    pub fn check_len(&self) -> Result<(), ShmError> {
        if self.buffer.as_ref().len() < field::header::END {
            return Err(ShmError::corrupt("header truncated"));
        }
        Ok(())
    }
    fn u32(&self, at: usize) -> u32 {
        NativeEndian::read_u32(&self.buffer.as_ref()[at..at + 4])
    }
    fn u64(&self, at: usize) -> u64 {
        NativeEndian::read_u64(&self.buffer.as_ref()[at..at + 8])
    }
    pub fn magic(&self) -> &[u8] {
        &self.buffer.as_ref()[field::header::MAGIC]
    }
    pub fn version(&self) -> u32 {
        self.u32(field::header::VERSION)
    }
    pub fn creator_pid(&self) -> u32 {
        self.u32(field::header::CREATOR_PID)
    }
    /// The stored checksum of the fields written at creation.
    pub fn checksum(&self) -> u32 {
        self.u32(field::header::CHECKSUM)
    }
    /// The checksum the fields written at creation have now.
    pub fn compute_checksum(&self) -> u32 {
        crc32fast::hash(&self.buffer.as_ref()[field::header::SUMMED])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SegmentHeader<T> {
    fn set_u32(&mut self, at: usize, v: u32) {
        NativeEndian::write_u32(&mut self.buffer.as_mut()[at..at + 4], v)
    }
    fn set_u64(&mut self, at: usize, v: u64) {
        NativeEndian::write_u64(&mut self.buffer.as_mut()[at..at + 8], v)
    }
}

/// The geometry of a segment: everything needed to find any port, link,
/// ring or buffer. Derived from a few parameters by [`HeaderRepr::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRepr {
    pub mtu: u32,
    pub frame_size: u32,
    pub ring_slots: u32,
    pub buffers: u32,
    pub max_ports: u32,
    pub max_links: u32,
    pub medium: LinkMedium,
    pub ports_off: u64,
    pub links_off: u64,
    pub rings_off: u64,
    pub pools_off: u64,
    pub total_len: u64,
    pub creator_pid: u32,
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x / a * a)
}

impl HeaderRepr {
    /// Computes the layout for a network; errors if a parameter is out of range.
    pub fn new(
        mtu: u32,
        medium: LinkMedium,
        max_ports: u32,
        max_links: u32,
        buffers: u32,
        creator_pid: u32,
    ) -> Result<HeaderRepr, ShmError> {
        if !(MTU_MIN..=MTU_MAX).contains(&mtu) {
            return Err(ShmError::MtuOutOfRange { mtu });
        }
        let frame_size = align_up((mtu + L2_HEADER_LEN) as u64, 64).unwrap_or(0) as u32;
        let ring_slots = buffers.checked_next_power_of_two().unwrap_or(0);
        let mut r = HeaderRepr {
            mtu,
            frame_size,
            ring_slots,
            buffers,
            max_ports,
            max_links,
            medium,
            ports_off: 0,
            links_off: 0,
            rings_off: 0,
            pools_off: 0,
            total_len: 0,
            creator_pid,
        };
        r.compute_offsets()
            .ok_or_else(|| ShmError::InvalidParameter("segment size overflows".into()))?;
        r.check_geometry()?;
        Ok(r)
    }

    fn compute_offsets(&mut self) -> Option<()> {
        self.ports_off = HEADER_LEN as u64;
        self.links_off = align_up(
            self.ports_off
                .checked_add((self.max_ports as u64).checked_mul(PORT_LEN as u64)?)?,
            64,
        )?;
        self.rings_off = align_up(
            self.links_off
                .checked_add((self.max_links as u64).checked_mul(LINK_LEN as u64)?)?,
            4096,
        )?;
        self.pools_off = align_up(
            self.rings_off
                .checked_add((self.max_links as u64).checked_mul(self.ring_len())?)?,
            4096,
        )?;
        self.total_len = align_up(
            self.pools_off
                .checked_add((self.max_ports as u64).checked_mul(self.pool_len())?)?,
            4096,
        )?;
        Some(())
    }

    /// The semantic checks shared by `new` and `parse`.
    fn check_geometry(&self) -> Result<(), ShmError> {
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
        if !(1..=MAX_LINKS_LIMIT).contains(&self.max_links) {
            return bad("max_links must be 1..=1048576");
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

    pub fn ring_len(&self) -> u64 {
        RING_HEADER_LEN as u64 + self.ring_slots as u64 * DESC_LEN as u64
    }
    pub fn pool_len(&self) -> u64 {
        self.buffers as u64 * self.frame_size as u64
    }
    pub fn port_off(&self, port: u32) -> usize {
        self.ports_off as usize + port as usize * PORT_LEN
    }
    pub fn link_off(&self, link: u32) -> usize {
        self.links_off as usize + link as usize * LINK_LEN
    }
    pub fn ring_off(&self, link: u32) -> usize {
        self.rings_off as usize + link as usize * self.ring_len() as usize
    }
    pub fn pool_off(&self, port: u32) -> usize {
        self.pools_off as usize + port as usize * self.pool_len() as usize
    }
    /// Offset of buffer `buffer` of `port`'s pool.
    pub fn buffer_off(&self, port: u32, buffer: u32) -> usize {
        self.pool_off(port) + buffer as usize * self.frame_size as usize
    }

    /// Parses and validates a header: magic, version, and a geometry that
    /// recomputes to the same offsets and fits in `region_len` bytes.
    pub fn parse<T: AsRef<[u8]>>(
        h: &SegmentHeader<T>,
        region_len: usize,
    ) -> Result<HeaderRepr, ShmError> {
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
        if h.u32(field::header::HEADER_LEN) as usize != HEADER_LEN {
            return Err(ShmError::corrupt("header length"));
        }
        let medium = LinkMedium::from_code(h.u32(field::header::MEDIUM))
            .ok_or_else(|| ShmError::corrupt("unknown medium"))?;
        let mut r = HeaderRepr {
            mtu: h.u32(field::header::MTU),
            frame_size: h.u32(field::header::FRAME_SIZE),
            ring_slots: h.u32(field::header::RING_SLOTS),
            buffers: h.u32(field::header::BUFFERS),
            max_ports: h.u32(field::header::MAX_PORTS),
            max_links: h.u32(field::header::MAX_LINKS),
            medium,
            ports_off: 0,
            links_off: 0,
            rings_off: 0,
            pools_off: 0,
            total_len: 0,
            creator_pid: h.creator_pid(),
        };
        r.check_geometry()
            .map_err(|e| ShmError::corrupt(format!("geometry: {e}")))?;
        r.compute_offsets()
            .ok_or_else(|| ShmError::corrupt("geometry overflows"))?;
        let stored = [
            (field::header::PORTS_OFF, r.ports_off),
            (field::header::LINKS_OFF, r.links_off),
            (field::header::RINGS_OFF, r.rings_off),
            (field::header::POOLS_OFF, r.pools_off),
            (field::header::TOTAL_LEN, r.total_len),
        ];
        if stored.iter().any(|&(at, v)| h.u64(at) != v) {
            return Err(ShmError::corrupt("stored offsets disagree with geometry"));
        }
        if r.total_len > region_len as u64 {
            return Err(ShmError::corrupt(format!(
                "header says {} bytes, mapping has {region_len}",
                r.total_len
            )));
        }
        // Last, so that damage the checks above can name is named by them.
        if h.checksum() != h.compute_checksum() {
            return Err(ShmError::corrupt("header checksum"));
        }
        Ok(r)
    }

    /// Bytes `emit` writes.
    pub const fn buffer_len(&self) -> usize {
        field::header::END
    }

    /// Writes every field except the version (which is published last) and
    /// the generation counters; the checksum covers what it writes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut SegmentHeader<T>) {
        h.buffer.as_mut()[field::header::MAGIC].copy_from_slice(&MAGIC);
        h.set_u32(field::header::HEADER_LEN, HEADER_LEN as u32);
        h.set_u64(field::header::TOTAL_LEN, self.total_len);
        h.set_u32(field::header::MTU, self.mtu);
        h.set_u32(field::header::FRAME_SIZE, self.frame_size);
        h.set_u32(field::header::RING_SLOTS, self.ring_slots);
        h.set_u32(field::header::BUFFERS, self.buffers);
        h.set_u32(field::header::MAX_PORTS, self.max_ports);
        h.set_u32(field::header::MAX_LINKS, self.max_links);
        h.set_u64(field::header::PORTS_OFF, self.ports_off);
        h.set_u64(field::header::LINKS_OFF, self.links_off);
        h.set_u64(field::header::RINGS_OFF, self.rings_off);
        h.set_u64(field::header::POOLS_OFF, self.pools_off);
        h.set_u32(field::header::MEDIUM, self.medium.code());
        h.set_u32(field::header::CREATOR_PID, self.creator_pid);
        let sum = h.compute_checksum();
        h.set_u32(field::header::CHECKSUM, sum);
    }

    /// Writes a complete header including the version, for tests and fuzzing.
    pub fn emit_published<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut SegmentHeader<T>) {
        self.emit(h);
        h.set_u32(field::header::VERSION, LAYOUT_VERSION);
    }
}

/// States stored in the low half of a port or link word.
pub(crate) const STATE_FREE: u32 = 0;
pub(crate) const STATE_CLAIMING: u32 = 1;
pub(crate) const STATE_ACTIVE: u32 = 2;

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

/// A read/write view of one 16-byte descriptor.
#[derive(Debug, Clone)]
pub struct Descriptor<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Descriptor<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Descriptor { buffer }
    }
    pub fn new_checked(buffer: T) -> Result<Self, ShmError> {
        let d = Self::new_unchecked(buffer);
        d.check_len()?;
        Ok(d)
    }
    pub fn check_len(&self) -> Result<(), ShmError> {
        if self.buffer.as_ref().len() < DESC_LEN {
            return Err(ShmError::BadDescriptor("truncated"));
        }
        Ok(())
    }
    /// Every bit as stored, known or not.
    pub fn flags(&self) -> DescFlags {
        DescFlags::from_bits_retain(NativeEndian::read_u16(
            &self.buffer.as_ref()[field::descriptor::FLAGS],
        ))
    }
    pub fn region(&self) -> u16 {
        NativeEndian::read_u16(&self.buffer.as_ref()[field::descriptor::REGION])
    }
    pub fn length(&self) -> u32 {
        NativeEndian::read_u32(&self.buffer.as_ref()[field::descriptor::LENGTH])
    }
    pub fn offset(&self) -> u32 {
        NativeEndian::read_u32(&self.buffer.as_ref()[field::descriptor::OFFSET])
    }
    pub fn metadata(&self) -> u32 {
        NativeEndian::read_u32(&self.buffer.as_ref()[field::descriptor::METADATA])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Descriptor<T> {
    pub fn set_flags(&mut self, v: DescFlags) {
        NativeEndian::write_u16(
            &mut self.buffer.as_mut()[field::descriptor::FLAGS],
            v.bits(),
        )
    }
    pub fn set_region(&mut self, v: u16) {
        NativeEndian::write_u16(&mut self.buffer.as_mut()[field::descriptor::REGION], v)
    }
    pub fn set_length(&mut self, v: u32) {
        NativeEndian::write_u32(&mut self.buffer.as_mut()[field::descriptor::LENGTH], v)
    }
    pub fn set_offset(&mut self, v: u32) {
        NativeEndian::write_u32(&mut self.buffer.as_mut()[field::descriptor::OFFSET], v)
    }
    pub fn set_metadata(&mut self, v: u32) {
        NativeEndian::write_u32(&mut self.buffer.as_mut()[field::descriptor::METADATA], v)
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
    pub fn parse<T: AsRef<[u8]>>(
        d: &Descriptor<T>,
        geo: &HeaderRepr,
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

    pub const fn buffer_len(&self) -> usize {
        DESC_LEN
    }

    /// Writes the descriptor (no flags) into `d`, which must hold
    /// [`DESC_LEN`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, d: &mut Descriptor<T>, geo: &HeaderRepr) {
        d.set_flags(DescFlags::empty());
        d.set_region(self.region);
        d.set_length(self.length);
        d.set_offset(self.buffer.wrapping_mul(geo.frame_size));
        d.set_metadata(self.metadata);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> HeaderRepr {
        HeaderRepr::new(1500, LinkMedium::Ethernet, 8, 16, 64, 42).unwrap()
    }

    #[test]
    fn header_round_trip() {
        let g = geo();
        let mut buf = vec![0u8; HEADER_LEN];
        g.emit_published(&mut SegmentHeader::new_unchecked(&mut buf[..]));
        let back = HeaderRepr::parse(
            &SegmentHeader::new_checked(&buf[..]).unwrap(),
            g.total_len as usize,
        )
        .unwrap();
        assert_eq!(back, g);
        assert_eq!(g.frame_size, 1536);
        assert_eq!(g.ring_slots, 64);
    }

    #[test]
    fn header_rejects_garbage() {
        let g = geo();
        let mut buf = vec![0u8; HEADER_LEN];
        g.emit(&mut SegmentHeader::new_unchecked(&mut buf[..]));
        let h = SegmentHeader::new_unchecked(&buf[..]);
        assert!(matches!(
            HeaderRepr::parse(&h, usize::MAX),
            Err(ShmError::NotReady)
        ));
        g.emit_published(&mut SegmentHeader::new_unchecked(&mut buf[..]));
        // Mapping smaller than the header claims.
        assert!(matches!(
            HeaderRepr::parse(&SegmentHeader::new_unchecked(&buf[..]), 4096),
            Err(ShmError::Corrupt { .. })
        ));
        // Tampered offset.
        buf[field::header::POOLS_OFF] ^= 1;
        assert!(HeaderRepr::parse(&SegmentHeader::new_unchecked(&buf[..]), usize::MAX).is_err());
        buf[field::header::POOLS_OFF] ^= 1;
        buf[field::header::VERSION] = 9;
        assert!(matches!(
            HeaderRepr::parse(&SegmentHeader::new_unchecked(&buf[..]), usize::MAX),
            Err(ShmError::VersionMismatch { found: 9, .. })
        ));
        assert!(SegmentHeader::new_checked(&buf[..10]).is_err());
    }

    #[test]
    fn mtu_limits() {
        assert!(matches!(
            HeaderRepr::new(575, LinkMedium::Ip, 8, 8, 64, 0),
            Err(ShmError::MtuOutOfRange { mtu: 575 })
        ));
        assert!(HeaderRepr::new(65536, LinkMedium::Ip, 8, 8, 64, 0).is_err());
        assert!(HeaderRepr::new(65535, LinkMedium::Ethernet, 8, 8, 64, 0).is_ok());
    }

    #[test]
    fn descriptor_fixture() {
        let g = geo();
        // flags 0, region 3, length 60, offset 2 buffers in, metadata 7.
        let mut bytes = [0u8; 16];
        NativeEndian::write_u16(&mut bytes[2..], 3);
        NativeEndian::write_u32(&mut bytes[4..], 60);
        NativeEndian::write_u32(&mut bytes[8..], 2 * 1536);
        NativeEndian::write_u32(&mut bytes[12..], 7);
        let d = Descriptor::new_checked(&bytes[..]).unwrap();
        let r = DescriptorRepr::parse(&d, &g, 3).unwrap();
        assert_eq!(
            r,
            DescriptorRepr {
                region: 3,
                buffer: 2,
                length: 60,
                metadata: 7
            }
        );
        let mut out = [0u8; 16];
        r.emit(&mut Descriptor::new_unchecked(&mut out[..]), &g);
        assert_eq!(out, bytes);
        // Wrong region, misaligned offset, oversize length, past the pool.
        assert!(DescriptorRepr::parse(&d, &g, 4).is_err());
        NativeEndian::write_u32(&mut bytes[8..], 100);
        assert!(DescriptorRepr::parse(&Descriptor::new_unchecked(&bytes[..]), &g, 3).is_err());
        NativeEndian::write_u32(&mut bytes[8..], 64 * 1536);
        assert!(DescriptorRepr::parse(&Descriptor::new_unchecked(&bytes[..]), &g, 3).is_err());
        NativeEndian::write_u32(&mut bytes[8..], 0);
        NativeEndian::write_u32(&mut bytes[4..], 1537);
        assert!(DescriptorRepr::parse(&Descriptor::new_unchecked(&bytes[..]), &g, 3).is_err());
    }

    #[test]
    fn header_checksum_catches_what_the_geometry_checks_cannot() {
        let g = geo();
        let mut buf = vec![0u8; HEADER_LEN];
        g.emit_published(&mut SegmentHeader::new_unchecked(&mut buf[..]));
        // MTU 1500 -> 1499 still fits the 1536-byte frames, so only the
        // checksum notices; so does a changed creator pid.
        for at in [field::header::MTU, field::header::CREATOR_PID] {
            let mut bad = buf.clone();
            bad[at] ^= 1;
            match HeaderRepr::parse(&SegmentHeader::new_unchecked(&bad[..]), usize::MAX) {
                Err(ShmError::Corrupt { why, .. }) => assert_eq!(why, "header checksum"),
                other => panic!("byte {at} flipped: {other:?}"),
            }
        }
        // The version and the generation counters are outside the sum.
        buf[field::header::PORT_GEN] = 7;
        buf[field::header::LINK_GEN] = 9;
        assert_eq!(
            HeaderRepr::parse(&SegmentHeader::new_unchecked(&buf[..]), usize::MAX).unwrap(),
            g
        );
    }

    #[test]
    fn descriptor_flags() {
        let g = geo();
        let mut bytes = [0u8; 16];
        let r = DescriptorRepr {
            region: 1,
            buffer: 3,
            length: 64,
            metadata: 0,
        };
        r.emit(&mut Descriptor::new_unchecked(&mut bytes[..]), &g);
        assert_eq!(
            Descriptor::new_unchecked(&bytes[..]).flags(),
            DescFlags::empty()
        );
        assert_eq!(bytes[..2], [0, 0]);
        let mut d = Descriptor::new_unchecked(&mut bytes[..]);
        d.set_flags(DescFlags::NEXT);
        assert!(matches!(
            DescriptorRepr::parse(&d, &g, 1),
            Err(ShmError::BadDescriptor("chained buffers"))
        ));
        d.set_flags(DescFlags::from_bits_retain(0x8000));
        assert!(matches!(
            DescriptorRepr::parse(&d, &g, 1),
            Err(ShmError::BadDescriptor("unknown flags"))
        ));
        d.set_flags(DescFlags::empty());
        assert_eq!(DescriptorRepr::parse(&d, &g, 1).unwrap(), r);
    }
}
