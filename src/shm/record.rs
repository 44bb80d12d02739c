//! The formats of the runtime directory, in smoltcp's Packet/Repr style.
//!
//! Devices in separate processes find each other through files (see
//! `host/`); two formats live there:
//!
//! - [`PortRecord`] / [`RecordRepr`]: who a port is. It is the file
//!   `port-<index>.rec`, which joiners read to refuse a duplicate address
//!   and `shmnet segments` lists, and it is the *hello* a port sends over a
//!   connection, with its region's memfd and its doorbell eventfd attached.
//! - [`Manifest`] / [`ManifestRepr`]: the network's geometry, the file
//!   `manifest`, which every joiner must match.
//!
//! ```text
//! record (128 bytes)
//!   0 magic "SHMNETPR"   8 version u32     12 index u32      16 epoch u32
//!  20 pid u32           24 MAC [6]        30 flags u8 (1 IPv4, 2 IPv6, 4 uplink)
//!  31 name length u8    32 IPv4 [4]       36 IPv6 [16]
//!  52 name [64], zero-padded UTF-8        116 reserved [8], zero
//! 124 CRC-32 of bytes 0..124
//!
//! manifest (40 bytes)
//!   0 magic "SHMNETMF"   8 version u32     12 mtu  16 medium  20 frame_size
//!  24 ring_slots        28 buffers        32 max_ports       36 CRC-32 of bytes 0..36
//! ```
//! Integers are little-endian, so fixtures and fuzz corpora are the same on
//! every host.
//!
//! Contract: the views never panic on a buffer of at least `check_len`
//! bytes; `parse` checks every field (including bytes that must be zero)
//! and the checksum last, so a record that parses is canonical: emitting
//! its repr gives back the same bytes. `emit` writes exactly
//! `buffer_len()` bytes, never allocates and never panics.
//!
//! ```
//! use shmnet::shm::record::{PortRecord, RecordRepr, RECORD_LEN};
//! use shmnet::shm::PortInfo;
//! let repr = RecordRepr { index: 3, epoch: 9, pid: 42, info: PortInfo::named("web") };
//! let mut bytes = [0u8; RECORD_LEN];
//! repr.emit(&mut PortRecord::new_unchecked(&mut bytes[..]));
//! let parsed = RecordRepr::parse(&PortRecord::new_checked(&bytes[..]).unwrap()).unwrap();
//! assert_eq!(parsed, repr);
//! bytes[60] ^= 1; // a scribbled name
//! assert!(RecordRepr::parse(&PortRecord::new_checked(&bytes[..]).unwrap()).is_err());
//! ```

use super::ShmError;
use super::layout::{Geometry, LinkMedium, byte_view};
use super::member::PortInfo;
use crate::wire::view_fields;

/// Bytes of a port record (file and hello).
pub const RECORD_LEN: usize = 128;
/// Magic bytes at offset 0 of a port record.
pub const RECORD_MAGIC: [u8; 8] = *b"SHMNETPR";
/// Version of the port record format.
pub const RECORD_VERSION: u32 = 1;
/// Longest device name a record holds, in bytes.
pub const NAME_MAX: usize = 64;

/// Bytes of a manifest.
pub const MANIFEST_LEN: usize = 40;
/// Magic bytes at offset 0 of a manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"SHMNETMF";
/// Version of the manifest format.
pub const MANIFEST_VERSION: u32 = 1;

/// Byte offsets of every field: the only place that knows where one sits.
pub(crate) mod field {
    pub(crate) mod record {
        pub const MAGIC: std::ops::Range<usize> = 0..8;
        pub const SUMMED: std::ops::Range<usize> = 0..124;
    }

    pub(crate) mod manifest {
        pub const MAGIC: std::ops::Range<usize> = 0..8;
        pub const SUMMED: std::ops::Range<usize> = 0..36;
    }
}

/// Bits of the record's flags byte.
const HAS_IPV4: u8 = 1;
const HAS_IPV6: u8 = 2;
/// The port is an uplink ([`PortInfo::uplink`]).
const UPLINK: u8 = 4;

byte_view!(
    /// A read/write view of a port record held in a local buffer.
    PortRecord,
    len: RECORD_LEN,
    short: |len| too_short("port record", len, RECORD_LEN),
    stamped: field::record,
);

view_fields!(PortRecord, from_le_bytes, to_le_bytes {
    /// The format version as stored.
    version, set_version: u32 = 8;
    /// The port's index in the network.
    index, set_index: u32 = 12;
    /// The port's epoch (unique per attachment).
    epoch, set_epoch: u32 = 16;
    /// The writer's pid, as it sees it.
    pid, set_pid: u32 = 20;
    /// The port's MAC address.
    mac, set_mac: [u8; 6] = 24;
    /// Which addresses are present: `0x1` IPv4, `0x2` IPv6, and `0x4`
    /// for an uplink.
    flags, set_flags: u8 = 30;
    /// Length of the name in bytes (at most [`NAME_MAX`] in a valid record).
    name_len, set_name_len: u8 = 31;
    /// The IPv4 address (zero when its flag is clear).
    ipv4, set_ipv4: [u8; 4] = 32;
    /// The IPv6 address (zero when its flag is clear).
    ipv6, set_ipv6: [u8; 16] = 36;
    /// All 64 bytes of the name field, padding included.
    name_field, set_name_field: [u8; 64] = 52;
    /// The 8 reserved bytes (must be zero).
    reserved, set_reserved: [u8; 8] = 116;
    /// The stored CRC-32 of bytes 0..124.
    checksum, set_checksum: u32 = 124;
});

/// What a port record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRepr {
    /// The port's index in the network (below `max_ports`).
    pub index: u32,
    /// Unique per attachment.
    pub epoch: u32,
    /// The writer's pid as it sees it, for operators; whoever needs a pid it
    /// can trust asks the kernel (SO_PEERCRED).
    pub pid: u32,
    /// The device's name, MAC and addresses.
    pub info: PortInfo,
}

impl RecordRepr {
    /// Parses and validates a record: magic, version, known flags, a name
    /// of at most [`NAME_MAX`] bytes of UTF-8, zero padding, absent
    /// addresses and reserved bytes all zero, and last the checksum.
    pub fn parse<T: AsRef<[u8]>>(r: &PortRecord<T>) -> Result<RecordRepr, ShmError> {
        r.check_len()?;
        check_stamp(
            "port record",
            r.magic(),
            &RECORD_MAGIC,
            r.version(),
            RECORD_VERSION,
        )?;
        let flags = r.flags();
        if flags & !(HAS_IPV4 | HAS_IPV6 | UPLINK) != 0 {
            return Err(ShmError::corrupt(format!(
                "port record: unknown flags {flags:#04x}"
            )));
        }
        let name_len = r.name_len() as usize;
        if name_len > NAME_MAX {
            return Err(ShmError::corrupt(format!(
                "port record: name of {name_len} bytes, at most {NAME_MAX} fit"
            )));
        }
        let (name, padding) = r.name_field().split_at(name_len);
        if padding.iter().any(|&b| b != 0) {
            return Err(ShmError::corrupt("port record: bytes after the name"));
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| ShmError::corrupt("port record: name is not UTF-8"))?;
        let ipv4 = Self::optional(r.ipv4(), flags & HAS_IPV4 != 0, "IPv4")?;
        let ipv6 = Self::optional(r.ipv6(), flags & HAS_IPV6 != 0, "IPv6")?;
        if r.reserved().iter().any(|&b| b != 0) {
            return Err(ShmError::corrupt("port record: reserved bytes set"));
        }
        // Last, so that damage the checks above can name is named by them.
        if r.checksum() != r.compute_checksum() {
            return Err(ShmError::corrupt("port record: checksum"));
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(r.mac());
        Ok(RecordRepr {
            index: r.index(),
            epoch: r.epoch(),
            pid: r.pid(),
            info: PortInfo {
                name: name.to_owned(),
                mac,
                ipv4: ipv4.map(|b| b.try_into().unwrap_or_default()),
                ipv6: ipv6.map(|b| b.try_into().unwrap_or_default()),
                uplink: flags & UPLINK != 0,
            },
        })
    }

    /// An address field: its bytes if its flag is set, else it must be zero.
    fn optional<'a>(
        bytes: &'a [u8],
        present: bool,
        what: &str,
    ) -> Result<Option<&'a [u8]>, ShmError> {
        if present {
            Ok(Some(bytes))
        } else if bytes.iter().any(|&b| b != 0) {
            Err(ShmError::corrupt(format!(
                "port record: {what} bytes without the {what} flag"
            )))
        } else {
            Ok(None)
        }
    }

    /// Errors unless the repr can be emitted as it is (the name fits).
    pub fn check(&self) -> Result<(), ShmError> {
        if self.info.name.len() > NAME_MAX {
            return Err(ShmError::InvalidParameter(format!(
                "device name {:?} is {} bytes, at most {NAME_MAX} are allowed",
                super::quote(&self.info.name),
                self.info.name.len()
            )));
        }
        Ok(())
    }

    /// Bytes `emit` writes: [`RECORD_LEN`].
    pub const fn buffer_len(&self) -> usize {
        RECORD_LEN
    }

    /// Writes the whole record into `r` (which must hold [`RECORD_LEN`]
    /// bytes). A name longer than [`NAME_MAX`] is cut at a character
    /// boundary; [`RecordRepr::check`] refuses it beforehand.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, r: &mut PortRecord<T>) {
        use field::record as f;
        r.buffer.as_mut()[..RECORD_LEN].fill(0);
        r.buffer.as_mut()[f::MAGIC].copy_from_slice(&RECORD_MAGIC);
        r.set_version(RECORD_VERSION);
        r.set_index(self.index);
        r.set_epoch(self.epoch);
        r.set_pid(self.pid);
        r.set_mac(&self.info.mac);
        let mut flags = 0;
        if let Some(a) = self.info.ipv4 {
            flags |= HAS_IPV4;
            r.set_ipv4(&a);
        }
        if let Some(a) = self.info.ipv6 {
            flags |= HAS_IPV6;
            r.set_ipv6(&a);
        }
        if self.info.uplink {
            flags |= UPLINK;
        }
        r.set_flags(flags);
        let name = truncated(&self.info.name, NAME_MAX).as_bytes();
        r.set_name_len(name.len() as u8);
        let mut field = [0u8; NAME_MAX];
        field[..name.len()].copy_from_slice(name);
        r.set_name_field(&field);
        r.fill_checksum();
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The error of a buffer of `len` bytes, too short for the `what` of
/// `need` bytes it should hold.
fn too_short(what: &str, len: usize, need: usize) -> ShmError {
    ShmError::corrupt(format!("{what} is {len} bytes, shorter than {need}"))
}

/// The first checks of both formats: the magic, then the version.
fn check_stamp(
    what: &str,
    magic: &[u8],
    expected_magic: &[u8; 8],
    version: u32,
    expected_version: u32,
) -> Result<(), ShmError> {
    if magic != expected_magic {
        return Err(ShmError::corrupt(format!("{what}: bad magic")));
    }
    if version != expected_version {
        return Err(ShmError::VersionMismatch {
            found: version,
            expected: expected_version,
        });
    }
    Ok(())
}

byte_view!(
    /// A read/write view of a manifest held in a local buffer.
    Manifest,
    len: MANIFEST_LEN,
    short: |len| too_short("manifest", len, MANIFEST_LEN),
    stamped: field::manifest,
);

view_fields!(Manifest, from_le_bytes, to_le_bytes {
    /// The format version as stored.
    version, set_version: u32 = 8;
    /// IP MTU.
    mtu, set_mtu: u32 = 12;
    /// The medium's code ([`LinkMedium::code`]).
    medium_code, set_medium_code: u32 = 16;
    /// Bytes per buffer.
    frame_size, set_frame_size: u32 = 20;
    /// Slots per ring.
    ring_slots, set_ring_slots: u32 = 24;
    /// Transmit buffers per port.
    buffers, set_buffers: u32 = 28;
    /// Ports the network holds.
    max_ports, set_max_ports: u32 = 32;
    /// The stored CRC-32 of bytes 0..36.
    checksum, set_checksum: u32 = 36;
});

/// What a manifest says: the network's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestRepr {
    /// The network's geometry.
    pub geo: Geometry,
}

impl ManifestRepr {
    /// Parses and validates a manifest: magic, version, a known medium,
    /// parameters [`Geometry::new`] accepts and that imply the stored frame
    /// size and ring slots, and last the checksum.
    pub fn parse<T: AsRef<[u8]>>(m: &Manifest<T>) -> Result<ManifestRepr, ShmError> {
        m.check_len()?;
        check_stamp(
            "manifest",
            m.magic(),
            &MANIFEST_MAGIC,
            m.version(),
            MANIFEST_VERSION,
        )?;
        let medium = LinkMedium::from_code(m.medium_code())
            .ok_or_else(|| ShmError::corrupt("manifest: unknown medium"))?;
        let geo = Geometry::new(m.mtu(), medium, m.max_ports(), m.buffers())
            .map_err(|e| ShmError::corrupt(format!("manifest: {e}")))?;
        if geo.frame_size != m.frame_size() || geo.ring_slots != m.ring_slots() {
            return Err(ShmError::corrupt(
                "manifest: frame size or ring slots disagree with the MTU and buffers",
            ));
        }
        if m.checksum() != m.compute_checksum() {
            return Err(ShmError::corrupt("manifest: checksum"));
        }
        Ok(ManifestRepr { geo })
    }

    /// Bytes `emit` writes: [`MANIFEST_LEN`].
    pub const fn buffer_len(&self) -> usize {
        MANIFEST_LEN
    }

    /// Writes the whole manifest into `m` ([`MANIFEST_LEN`] bytes).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, m: &mut Manifest<T>) {
        use field::manifest as f;
        let g = &self.geo;
        m.buffer.as_mut()[f::MAGIC].copy_from_slice(&MANIFEST_MAGIC);
        m.set_version(MANIFEST_VERSION);
        m.set_mtu(g.mtu);
        m.set_medium_code(g.medium.code());
        m.set_frame_size(g.frame_size);
        m.set_ring_slots(g.ring_slots);
        m.set_buffers(g.buffers);
        m.set_max_ports(g.max_ports);
        m.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Port 3, epoch 0x01020304, pid 4242, MAC 02:53:aa:bb:cc:dd, IPv4
    /// 10.0.0.2, no IPv6, name "web".
    fn fixture() -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..8].copy_from_slice(b"SHMNETPR");
        b[8..12].copy_from_slice(&[1, 0, 0, 0]);
        b[12..16].copy_from_slice(&[3, 0, 0, 0]);
        b[16..20].copy_from_slice(&[4, 3, 2, 1]);
        b[20..24].copy_from_slice(&[0x92, 0x10, 0, 0]);
        b[24..30].copy_from_slice(&[0x02, 0x53, 0xaa, 0xbb, 0xcc, 0xdd]);
        b[30] = 1;
        b[31] = 3;
        b[32..36].copy_from_slice(&[10, 0, 0, 2]);
        b[52..55].copy_from_slice(b"web");
        let sum = crc32fast::hash(&b[..124]);
        b[124..].copy_from_slice(&sum.to_le_bytes());
        b
    }

    fn repr() -> RecordRepr {
        RecordRepr {
            index: 3,
            epoch: 0x0102_0304,
            pid: 4242,
            info: PortInfo {
                name: "web".into(),
                mac: [0x02, 0x53, 0xaa, 0xbb, 0xcc, 0xdd],
                ipv4: Some([10, 0, 0, 2]),
                ipv6: None,
                uplink: false,
            },
        }
    }

    fn parse(b: &[u8]) -> Result<RecordRepr, ShmError> {
        RecordRepr::parse(&PortRecord::new_checked(b)?)
    }

    fn why(e: ShmError) -> String {
        match e {
            ShmError::Corrupt { why, .. } => why,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn record_fixture_parses_and_emits_the_same_bytes() {
        let b = fixture();
        assert_eq!(parse(&b).unwrap(), repr());
        let mut out = [0xffu8; RECORD_LEN];
        repr().emit(&mut PortRecord::new_unchecked(&mut out[..]));
        assert_eq!(out, b);
    }

    #[test]
    fn record_with_both_addresses_and_a_full_length_name() {
        let mut r = repr();
        r.info.ipv6 = Some([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        r.info.name = "é".repeat(32); // 64 bytes
        let mut out = [0u8; RECORD_LEN];
        r.emit(&mut PortRecord::new_unchecked(&mut out[..]));
        assert_eq!(parse(&out).unwrap(), r);
        assert_eq!(out[30], 3);
    }

    #[test]
    fn record_rejects_each_kind_of_damage_by_name() {
        let cases: [(usize, u8, &str); 8] = [
            (0, b'X', "bad magic"),
            (30, 8, "unknown flags"),
            (31, 65, "name of 65 bytes"),
            (31, 2, "bytes after the name"),
            (52, 0xff, "not UTF-8"),
            (40, 1, "IPv6 bytes without the IPv6 flag"),
            (116, 1, "reserved bytes set"),
            (16, 9, "checksum"), // the epoch: only the checksum notices
        ];
        for (at, v, expected) in cases {
            let mut b = fixture();
            b[at] = v;
            let got = why(parse(&b).unwrap_err());
            assert!(got.contains(expected), "byte {at}={v}: {got}");
        }
        let mut b = fixture();
        b[8] = 2;
        assert!(matches!(
            parse(&b),
            Err(ShmError::VersionMismatch {
                found: 2,
                expected: 1
            })
        ));
        assert!(why(parse(&fixture()[..127]).unwrap_err()).contains("127 bytes"));
    }

    #[test]
    fn long_names_are_refused_before_emit_and_cut_by_it() {
        let mut r = repr();
        r.info.name = "x".repeat(65);
        assert!(matches!(r.check(), Err(ShmError::InvalidParameter(_))));
        r.info.name = format!("{}é", "x".repeat(63)); // 65 bytes, é straddles 64
        let mut out = [0u8; RECORD_LEN];
        r.emit(&mut PortRecord::new_unchecked(&mut out[..]));
        assert_eq!(parse(&out).unwrap().info.name, "x".repeat(63));
    }

    fn manifest_fixture() -> [u8; MANIFEST_LEN] {
        // MTU 1500, Ethernet, 1536-byte frames, 64 slots, 64 buffers, 8 ports.
        let mut b = [0u8; MANIFEST_LEN];
        b[0..8].copy_from_slice(b"SHMNETMF");
        for (at, v) in [
            (8, 1u32),
            (12, 1500),
            (16, 0),
            (20, 1536),
            (24, 64),
            (28, 64),
            (32, 8),
        ] {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        let sum = crc32fast::hash(&b[..36]);
        b[36..].copy_from_slice(&sum.to_le_bytes());
        b
    }

    #[test]
    fn manifest_fixture_round_trips() {
        let b = manifest_fixture();
        let geo = Geometry::new(1500, LinkMedium::Ethernet, 8, 64).unwrap();
        let m = ManifestRepr::parse(&Manifest::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(m.geo, geo);
        let mut out = [0u8; MANIFEST_LEN];
        m.emit(&mut Manifest::new_unchecked(&mut out[..]));
        assert_eq!(out, b);
    }

    #[test]
    fn manifest_rejects_damage() {
        let parse = |b: &[u8]| ManifestRepr::parse(&Manifest::new_checked(b)?);
        let mut b = manifest_fixture();
        b[16] = 7;
        assert!(why(parse(&b).unwrap_err()).contains("unknown medium"));
        // 1536-byte frames but 2048 stored: the geometry recomputes to 1536.
        let mut b = manifest_fixture();
        b[20..24].copy_from_slice(&2048u32.to_le_bytes());
        assert!(why(parse(&b).unwrap_err()).contains("disagree"));
        let mut b = manifest_fixture();
        b[32..36].copy_from_slice(&1u32.to_le_bytes());
        assert!(why(parse(&b).unwrap_err()).contains("max_ports"));
        let mut b = manifest_fixture();
        b[12] ^= 1; // MTU 1501: valid, only the checksum notices
        assert!(why(parse(&b).unwrap_err()).contains("checksum"));
        assert!(parse(&b[..39]).is_err());
    }
}
