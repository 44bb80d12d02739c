//! The on-memory formats of a segment, in smoltcp's Packet/Repr style.
//!
//! ```text
//! 0            header (HEADER_LEN bytes)       magic, version, geometry, generations
//! ports_off    max_ports × PORT_LEN            directory: state/epoch, owner, MAC, IPs, doorbell
//! links_off    max_links × LINK_LEN            link table: state/serial, src, dst, epochs
//! rings_off    max_links × ring_len            one memif-style ring per link
//! pools_off    max_ports × pool_len            each port's transmit buffers
//! ```
//! Everything is an offset from the segment start; nothing stores a pointer.
//! [`SegmentHeader`] / [`HeaderRepr`] check and describe the header,
//! [`Descriptor`] / [`DescriptorRepr`] a 16-byte ring descriptor laid out as
//! memif's `{flags, region, length, offset, metadata}`.

use byteorder::{ByteOrder, NativeEndian};

use super::ShmError;

/// Bytes reserved for the segment header (one page).
pub const HEADER_LEN: usize = 4096;
/// Magic bytes at offset 0.
pub const MAGIC: [u8; 8] = *b"SHMNETSG";
/// Layout version; published last, after everything else is initialised.
pub const LAYOUT_VERSION: u32 = 1;
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

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
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
    /// Atomics, bumped whenever a port or a link changes state.
    pub const PORT_GEN: usize = 128;
    pub const LINK_GEN: usize = 192;
    pub const END: usize = 256;
}
pub(crate) const PORT_GEN_OFF: usize = field::PORT_GEN;
pub(crate) const LINK_GEN_OFF: usize = field::LINK_GEN;
pub(crate) const VERSION_OFF: usize = field::VERSION;

/// Which link layer frames on a network carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkMedium {
    /// Ethernet II frames; ARP/NDP work; frames switched by MAC.
    Ethernet,
    /// Bare IPv4/IPv6 packets; frames switched by destination IP.
    Ip,
}

impl LinkMedium {
    fn code(self) -> u32 {
        match self {
            LinkMedium::Ethernet => 0,
            LinkMedium::Ip => 1,
        }
    }
    fn from_code(c: u32) -> Option<Self> {
        match c {
            0 => Some(LinkMedium::Ethernet),
            1 => Some(LinkMedium::Ip),
            _ => None,
        }
    }
}

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
        if self.buffer.as_ref().len() < field::END {
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
        &self.buffer.as_ref()[field::MAGIC]
    }
    pub fn version(&self) -> u32 {
        self.u32(field::VERSION)
    }
    pub fn creator_pid(&self) -> u32 {
        self.u32(field::CREATOR_PID)
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
        if h.u32(field::HEADER_LEN) as usize != HEADER_LEN {
            return Err(ShmError::corrupt("header length"));
        }
        let medium = LinkMedium::from_code(h.u32(field::MEDIUM))
            .ok_or_else(|| ShmError::corrupt("unknown medium"))?;
        let mut r = HeaderRepr {
            mtu: h.u32(field::MTU),
            frame_size: h.u32(field::FRAME_SIZE),
            ring_slots: h.u32(field::RING_SLOTS),
            buffers: h.u32(field::BUFFERS),
            max_ports: h.u32(field::MAX_PORTS),
            max_links: h.u32(field::MAX_LINKS),
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
            (field::PORTS_OFF, r.ports_off),
            (field::LINKS_OFF, r.links_off),
            (field::RINGS_OFF, r.rings_off),
            (field::POOLS_OFF, r.pools_off),
            (field::TOTAL_LEN, r.total_len),
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
        Ok(r)
    }

    /// Bytes `emit` writes.
    pub const fn buffer_len(&self) -> usize {
        field::END
    }

    /// Writes every field except the version (which is published last) and
    /// the generation counters.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut SegmentHeader<T>) {
        h.buffer.as_mut()[field::MAGIC].copy_from_slice(&MAGIC);
        h.set_u32(field::HEADER_LEN, HEADER_LEN as u32);
        h.set_u64(field::TOTAL_LEN, self.total_len);
        h.set_u32(field::MTU, self.mtu);
        h.set_u32(field::FRAME_SIZE, self.frame_size);
        h.set_u32(field::RING_SLOTS, self.ring_slots);
        h.set_u32(field::BUFFERS, self.buffers);
        h.set_u32(field::MAX_PORTS, self.max_ports);
        h.set_u32(field::MAX_LINKS, self.max_links);
        h.set_u64(field::PORTS_OFF, self.ports_off);
        h.set_u64(field::LINKS_OFF, self.links_off);
        h.set_u64(field::RINGS_OFF, self.rings_off);
        h.set_u64(field::POOLS_OFF, self.pools_off);
        h.set_u32(field::MEDIUM, self.medium.code());
        h.set_u32(field::CREATOR_PID, self.creator_pid);
    }

    /// Writes a complete header including the version, for tests and fuzzing.
    pub fn emit_published<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut SegmentHeader<T>) {
        self.emit(h);
        h.set_u32(field::VERSION, LAYOUT_VERSION);
    }
}

/// Offsets inside a port directory entry.
pub(crate) mod port_field {
    /// u64 atomic: `epoch << 32 | state`.
    pub const WORD: usize = 0;
    pub const OWNER_PID: usize = 8;
    /// u64: the owner's process start time (clock ticks since boot), to tell a
    /// reused pid from the original owner.
    pub const OWNER_START: usize = 16;
    pub const MAC: usize = 24; // 6 bytes
    pub const IPV4: usize = 32; // 4 bytes
    pub const IPV6: usize = 40; // 16 bytes
    pub const NAME: usize = 56; // 8 bytes: a hash of the device name
    /// u32 futex word a sender bumps to wake the owner.
    pub const DOORBELL: usize = 64;
    /// u32: non-zero while the owner sleeps (or is about to) on the doorbell.
    pub const SLEEPING: usize = 68;
}

/// Offsets inside a link table entry.
pub(crate) mod link_field {
    /// u64 atomic: `serial << 32 | state`.
    pub const WORD: usize = 0;
    pub const SRC: usize = 8;
    pub const DST: usize = 12;
    pub const SRC_EPOCH: usize = 16;
    pub const DST_EPOCH: usize = 20;
}

/// Offsets inside a ring header.
pub(crate) mod ring_field {
    pub const COOKIE: usize = 0;
    /// u32 producer index, wrapping; written only by the link's source.
    pub const HEAD: usize = 8;
    /// u32 consumer index, wrapping; on its own cache line.
    pub const TAIL: usize = 64;
}

/// States stored in the low half of a port or link word.
pub(crate) const STATE_FREE: u32 = 0;
pub(crate) const STATE_CLAIMING: u32 = 1;
pub(crate) const STATE_ACTIVE: u32 = 2;

/// A read/write view of one 16-byte descriptor.
#[derive(Debug, Clone)]
pub struct Descriptor<T: AsRef<[u8]>> {
    buffer: T,
}

mod desc_field {
    pub const FLAGS: usize = 0;
    pub const REGION: usize = 2;
    pub const LENGTH: usize = 4;
    pub const OFFSET: usize = 8;
    pub const METADATA: usize = 12;
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
    pub fn flags(&self) -> u16 {
        NativeEndian::read_u16(&self.buffer.as_ref()[desc_field::FLAGS..])
    }
    pub fn region(&self) -> u16 {
        NativeEndian::read_u16(&self.buffer.as_ref()[desc_field::REGION..])
    }
    pub fn length(&self) -> u32 {
        NativeEndian::read_u32(&self.buffer.as_ref()[desc_field::LENGTH..])
    }
    pub fn offset(&self) -> u32 {
        NativeEndian::read_u32(&self.buffer.as_ref()[desc_field::OFFSET..])
    }
    pub fn metadata(&self) -> u32 {
        NativeEndian::read_u32(&self.buffer.as_ref()[desc_field::METADATA..])
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
    /// the region must be that port's pool, the offset a buffer boundary
    /// inside it, the length non-zero and within one buffer.
    pub fn parse<T: AsRef<[u8]>>(
        d: &Descriptor<T>,
        geo: &HeaderRepr,
        expected_region: u32,
    ) -> Result<DescriptorRepr, ShmError> {
        d.check_len()?;
        if d.flags() != 0 {
            return Err(ShmError::BadDescriptor("unknown flags"));
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

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, d: &mut Descriptor<T>, geo: &HeaderRepr) {
        let b = d.buffer.as_mut();
        NativeEndian::write_u16(&mut b[desc_field::FLAGS..], 0);
        NativeEndian::write_u16(&mut b[desc_field::REGION..], self.region);
        NativeEndian::write_u32(&mut b[desc_field::LENGTH..], self.length);
        NativeEndian::write_u32(
            &mut b[desc_field::OFFSET..],
            self.buffer.wrapping_mul(geo.frame_size),
        );
        NativeEndian::write_u32(&mut b[desc_field::METADATA..], self.metadata);
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
        buf[field::POOLS_OFF] ^= 1;
        assert!(HeaderRepr::parse(&SegmentHeader::new_unchecked(&buf[..]), usize::MAX).is_err());
        buf[field::POOLS_OFF] ^= 1;
        buf[field::VERSION] = 9;
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
}
