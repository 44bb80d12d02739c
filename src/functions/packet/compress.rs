//! Compression: LZ4 on IP payloads between a pair of forwarding devices.
//!
//! Each device of the pair compresses the payload of packets arriving from
//! its client-side network and restores compressed packets arriving from
//! the compressed hop (its global network unless `hop = "local"`). The
//! compressed packet is an IP Payload Compression packet (IPComp, RFC 3173:
//! IP protocol 108, a 4-byte header holding the original next header and a
//! compression parameter index); LZ4 has no assigned CPI, so it uses
//! [`CPI_LZ4`] from the range the RFC leaves for private use.
//!
//! ```toml
//! [function]
//! kind = "compress"
//! min_size = 128                 # bytes of payload; smaller ones travel as they are
//! hop = "global"                 # or "local": the network that carries IPComp
//! ```
//!
//! Packets smaller than `min_size`, or that would not shrink, travel as they
//! are; so do fragments, malformed packets and IPv6 packets with extension
//! headers (counted as `not_ip`). A compressed packet is always smaller than
//! the original, so it never exceeds the MTU; decompression writes into the
//! frame's own buffer, so a hostile packet can never make it allocate or
//! exceed the network's frame size (lz4_flex's size-prefixed API trusts its
//! prefix; this one is bounded). The packet is found through the device's
//! parsed view ([`Frame::ip`]), on either link medium. A changed `min_size`
//! or `hop` applies in place ([`Compress::reconfigure`]).
//!
//! ```
//! use shmnet::functions::compress::{Compress, CompressConfig, IPPROTO_IPCOMP};
//! use shmnet::functions::{Frame, Function, Role, Verdict};
//! use shmnet::wire::LinkMedium;
//! use smoltcp::time::Instant;
//!
//! // A bare IPv4 packet (protocol 253) with 400 bytes of repetitive text.
//! let mut buf = vec![0u8; 420];
//! buf[..20].copy_from_slice(&[0x45, 0, 0x01, 0xa4, 0, 0, 0, 0, 64, 253, 0, 0, 10, 0, 0, 1, 10, 3, 0, 2]);
//! shmnet::wire::checksum::fill_ipv4_header(&mut buf[..20]);
//! buf[20..].iter_mut().enumerate().for_each(|(i, b)| *b = b"shm net "[i % 8]);
//! let original = buf.clone();
//! let (mut c, mut d) = (Compress::new(CompressConfig::default()).unwrap(), Compress::new(CompressConfig::default()).unwrap());
//! let mut f = Frame::new(&mut buf, 420, LinkMedium::Ip);
//! assert_eq!(c.on_ingress(Instant::ZERO, Role::Local, &mut f), Verdict::Modified);
//! assert_eq!(f.bytes()[9], IPPROTO_IPCOMP);
//! let n = f.len();
//! assert!(n < 100);
//! // The peer restores it when it arrives from the hop.
//! let mut f = Frame::new(&mut buf, n, LinkMedium::Ip);
//! assert_eq!(d.on_ingress(Instant::ZERO, Role::Global, &mut f), Verdict::Modified);
//! assert_eq!(f.bytes(), &original[..]);
//! ```

use lz4_flex::block::{
    CompressTable, compress_into_with_table, decompress_into, get_maximum_output_size,
};
use smoltcp::time::Instant;

use super::{Frame, Function, FunctionError, FunctionKind, Role, Verdict};
use crate::functions::common::{counters, reconfigure_in_place};
use crate::wire::{IpView, checksum};

pub use crate::wire::ipcomp::{CPI_LZ4, IPPROTO_IPCOMP, IpCompError, IpCompPacket, IpCompRepr};

/// `[function] kind = "compress"`; a field left out takes its value from
/// [`CompressConfig::default`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressConfig {
    /// Payloads smaller than this many bytes are sent as they are.
    pub min_size: usize,
    /// Which of the device's networks is the compressed hop (`"global"`,
    /// the default, or `"local"`): packets arriving from the other one are
    /// compressed, packets arriving from this one restored.
    pub hop: Role,
}

impl Default for CompressConfig {
    fn default() -> Self {
        CompressConfig {
            min_size: 128,
            hop: Role::Global,
        }
    }
}

impl CompressConfig {
    fn validate(&self) -> Result<(), FunctionError> {
        if !(16..=65535).contains(&self.min_size) {
            return Err(FunctionError::Invalid {
                kind: "compress",
                why: "min_size must be 16..=65535 bytes".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    /// A field left out of a file and a field left to `Default` are the
    /// same value, so the two ways of writing a config cannot drift apart.
    #[test]
    fn default_is_what_a_file_leaves_out() {
        crate::testing::function::reads_as("", &CompressConfig::default());
        assert!(CompressConfig::default().validate().is_ok());
    }
}

counters! {
    /// Counters of the compression function.
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    pub struct CompressStats {
        /// Packets compressed (sent on as IPComp).
        pub compressed: u64,
        /// Compressed packets restored.
        pub decompressed: u64,
        /// Packets with a payload under `min_size` (passed as they are).
        pub skipped_small: u64,
        /// Packets whose payload would not shrink (passed as they are).
        pub skipped_incompressible: u64,
        /// Payload bytes of the compressed packets, before compression.
        pub bytes_in: u64,
        /// The same payloads after compression, IPComp header included.
        pub bytes_out: u64,
        /// `bytes_in - bytes_out`: bytes the hop did not have to carry.
        pub bytes_saved: u64,
        /// Compressed packets that could not be decompressed (dropped).
        pub decompress_errors: u64,
        /// IPComp packets with another algorithm or bad header (dropped).
        pub unknown_cpi: u64,
        /// Frames this function leaves alone (passed untouched): not IP,
        /// malformed, fragments, IPv6 packets with extension headers.
        pub not_ip: u64,
    }
}

/// The compressor/decompressor.
pub struct Compress {
    min_size: usize,
    hop: Role,
    table: CompressTable,
    scratch: Vec<u8>,
    stats: CompressStats,
}

impl Compress {
    /// A compressor with `cfg`; errors if `min_size` is outside 16..=65535.
    pub fn new(cfg: CompressConfig) -> Result<Compress, FunctionError> {
        cfg.validate()?;
        Ok(Compress {
            min_size: cfg.min_size,
            hop: cfg.hop,
            table: CompressTable::default(),
            scratch: vec![0; get_maximum_output_size(65535)],
            stats: CompressStats::default(),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> &CompressStats {
        &self.stats
    }

    /// Applies a changed config in place (counters and the compression
    /// table stay); on error nothing changes.
    pub fn reconfigure(&mut self, cfg: &CompressConfig) -> Result<(), FunctionError> {
        cfg.validate()?;
        self.min_size = cfg.min_size;
        self.hop = cfg.hop;
        Ok(())
    }

    /// The frame's IP packet if this function handles it: a whole,
    /// well-formed packet whose payload follows the IP header directly (an
    /// IPv6 packet's extension headers would have to stay in front of the
    /// IPComp header, RFC 3173 §4). Counts the others as `not_ip`.
    fn handled(&mut self, frame: &Frame<'_>) -> Option<IpView> {
        match frame.view().well_formed_ip() {
            Ok(v) if !v.is_fragment() && (!v.v6 || v.l4 == v.l3 + IPV6_HEADER_LEN) => Some(*v),
            _ => {
                self.stats.not_ip += 1;
                None
            }
        }
    }

    /// Compresses the frame's IP payload in place if that pays.
    pub fn compress(&mut self, frame: &mut Frame<'_>) -> Verdict {
        let Some(v) = self.handled(frame) else {
            return Verdict::Pass;
        };
        if v.proto == IPPROTO_IPCOMP {
            return Verdict::Pass;
        }
        let (start, payload_len) = (v.l4, v.end - v.l4);
        if payload_len < self.min_size {
            self.stats.skipped_small += 1;
            return Verdict::Pass;
        }
        let payload = &frame.bytes()[start..v.end];
        let n = match compress_into_with_table(payload, &mut self.scratch, &mut self.table) {
            Ok(n) if n + IPCOMP_LEN < payload_len => n,
            _ => {
                self.stats.skipped_incompressible += 1;
                return Verdict::Pass;
            }
        };
        let buf = frame.buffer_mut();
        let (header, data) = buf[start..start + IPCOMP_LEN + n].split_at_mut(IPCOMP_LEN);
        IpCompRepr {
            next_header: v.proto,
            cpi: CPI_LZ4,
        }
        .emit(&mut IpCompPacket::new_unchecked(header));
        data.copy_from_slice(&self.scratch[..n]);
        let new_end = start + IPCOMP_LEN + n;
        rewrite_ip(buf, &v, IPPROTO_IPCOMP, new_end);
        frame.set_len(new_end);
        self.stats.compressed += 1;
        self.stats.bytes_in += payload_len as u64;
        self.stats.bytes_out += (IPCOMP_LEN + n) as u64;
        self.stats.bytes_saved += (payload_len - n - IPCOMP_LEN) as u64;
        Verdict::Modified
    }

    /// Restores a compressed packet in place; drops what cannot be restored.
    pub fn decompress(&mut self, frame: &mut Frame<'_>) -> Verdict {
        let Some(v) = self.handled(frame) else {
            return Verdict::Pass;
        };
        if v.proto != IPPROTO_IPCOMP {
            return Verdict::Pass;
        }
        let start = v.l4;
        let packet = IpCompPacket::new_unchecked(&frame.bytes()[start..v.end]);
        let repr = match IpCompRepr::parse(&packet) {
            Ok(r) if r.cpi == CPI_LZ4 => r,
            _ => {
                self.stats.unknown_cpi += 1;
                return Verdict::Drop;
            }
        };
        let compressed_len = packet.payload().len();
        self.scratch[..compressed_len].copy_from_slice(packet.payload());
        // Bounded by the frame's buffer and by what an IP packet can hold.
        let room = (frame.capacity() - start).min(65535 - (start - v.l3));
        let buf = frame.buffer_mut();
        let n = match decompress_into(
            &self.scratch[..compressed_len],
            &mut buf[start..start + room],
        ) {
            Ok(n) => n,
            Err(_) => {
                self.stats.decompress_errors += 1;
                return Verdict::Drop;
            }
        };
        rewrite_ip(buf, &v, repr.next_header, start + n);
        frame.set_len(start + n);
        self.stats.decompressed += 1;
        Verdict::Modified
    }
}

/// Bytes of the IPComp header.
const IPCOMP_LEN: usize = 4;
/// Bytes of the fixed IPv6 header.
const IPV6_HEADER_LEN: usize = 40;

/// Sets the protocol (next header) and length of `v`'s IP header in
/// `frame` for a packet now ending at `end`, and the IPv4 checksum.
fn rewrite_ip(frame: &mut [u8], v: &IpView, protocol: u8, end: usize) {
    let ip = &mut frame[v.l3..v.l4];
    if v.v6 {
        ip[6] = protocol;
        ip[4..6].copy_from_slice(&((end - v.l4) as u16).to_be_bytes());
    } else {
        ip[9] = protocol;
        ip[2..4].copy_from_slice(&((end - v.l3) as u16).to_be_bytes());
        checksum::fill_ipv4_header(ip);
    }
}

impl Function for Compress {
    fn kind(&self) -> FunctionKind {
        FunctionKind::packet("compress")
    }

    fn on_ingress(&mut self, _now: Instant, from: Role, frame: &mut Frame<'_>) -> Verdict {
        if from == self.hop {
            self.decompress(frame)
        } else {
            self.compress(frame)
        }
    }

    fn reconfigure(&mut self, cfg: &dyn crate::stack::FunctionSpec) -> Result<bool, FunctionError> {
        reconfigure_in_place(cfg, |c| Compress::reconfigure(self, c))
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        self.stats.visit(visit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::FunctionConfig;
    use crate::testing::frames;
    use crate::testing::function::ip_round_trip;
    use crate::wire::LinkMedium;
    use smoltcp::wire::{IpAddress, IpProtocol};

    /// A frame of `len` bytes of `buf` on an Ethernet network.
    fn eth(buf: &mut [u8], len: usize) -> Frame<'_> {
        Frame::new(buf, len, LinkMedium::Ethernet)
    }

    /// An Ethernet + IPv4 frame 10.0.0.1 → 10.1.0.2 carrying `payload` as
    /// protocol 253 (experimental: no transport header to check), in a
    /// 9014-byte buffer.
    fn frame_with(payload: &[u8]) -> (Vec<u8>, usize) {
        let mut buf = frames::wrap(
            IpAddress::v4(10, 0, 0, 1),
            IpAddress::v4(10, 1, 0, 2),
            IpProtocol::Unknown(253),
            payload,
        );
        let len = buf.len();
        buf.resize(9014, 0);
        (buf, len)
    }

    fn pair() -> (Compress, Compress) {
        (
            Compress::new(CompressConfig::default()).unwrap(),
            Compress::new(CompressConfig::default()).unwrap(),
        )
    }

    #[test]
    fn compressible_payload_round_trips_smaller() {
        // A UDP datagram.
        let payload: Vec<u8> = (0..4000u32).map(|i| (i % 17) as u8).collect();
        let (a, b) = (IpAddress::v4(10, 0, 0, 1), IpAddress::v4(10, 1, 0, 2));
        let original = frames::udp((a, 1000), (b, 2000), &payload);
        let len = original.len();
        let mut buf = original.clone();
        buf.resize(9014, 0);
        let (mut c, mut d) = pair();
        let mut f = eth(&mut buf, len);
        assert_eq!(c.compress(&mut f), Verdict::Modified);
        let clen = f.len();
        assert!(clen < len / 4, "{clen} vs {len}");
        assert_eq!(f.bytes()[14 + 9], IPPROTO_IPCOMP);
        assert_eq!(
            checksum::ipv4_header(&f.bytes()[14..34]),
            0,
            "valid IPv4 checksum"
        );
        // The device parses a rewritten frame again before the next hop.
        f.reparse();
        assert_eq!(d.decompress(&mut f), Verdict::Modified);
        assert_eq!(f.bytes(), &original[..]);
        assert_eq!(c.stats().bytes_saved, (len - clen) as u64);
    }

    #[test]
    fn small_and_incompressible_payloads_pass_unchanged() {
        let (mut c, _) = pair();
        let (mut buf, len) = frame_with(&[7u8; 40]);
        let mut f = eth(&mut buf, len);
        assert_eq!(c.compress(&mut f), Verdict::Pass);
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..1400)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let (mut buf, len) = frame_with(&noise);
        let mut f = eth(&mut buf, len);
        assert_eq!(c.compress(&mut f), Verdict::Pass);
        assert_eq!(f.len(), len);
        assert_eq!(c.stats().skipped_small, 1);
        assert_eq!(c.stats().skipped_incompressible, 1);
    }

    #[test]
    fn hostile_compressed_packets_are_counted_drops() {
        let (_, mut d) = pair();
        // A tiny LZ4 block claiming a long run: output bounded by the buffer.
        let bomb = {
            let big = vec![0u8; 60000];
            let mut out = vec![0u8; get_maximum_output_size(big.len())];
            let n = lz4_flex::block::compress_into(&big, &mut out).unwrap();
            out.truncate(n);
            out
        };
        for body in [bomb, vec![0xff; 30], vec![]] {
            let mut payload = vec![17, 0, 0xF0, 0x01];
            payload.extend_from_slice(&body);
            let (mut buf, len) = frame_with(&payload);
            buf[14 + 9] = IPPROTO_IPCOMP;
            // A small buffer: 1514-byte frames.
            let mut f = eth(&mut buf[..1514.max(len)], len);
            let v = d.decompress(&mut f);
            assert!(f.len() <= f.capacity());
            assert!(matches!(v, Verdict::Drop | Verdict::Modified));
        }
        assert!(d.stats().decompress_errors >= 2, "{:?}", d.stats());
        // Another algorithm's CPI, reserved flags.
        let (mut buf, len) = frame_with(&[17, 0, 0, 2, 1, 2, 3]);
        buf[14 + 9] = IPPROTO_IPCOMP;
        assert_eq!(d.decompress(&mut eth(&mut buf, len)), Verdict::Drop);
        let (mut buf, len) = frame_with(&[17, 1, 0xF0, 0x01, 1, 2, 3]);
        buf[14 + 9] = IPPROTO_IPCOMP;
        assert_eq!(d.decompress(&mut eth(&mut buf, len)), Verdict::Drop);
        assert_eq!(d.stats().unknown_cpi, 2);
    }

    #[test]
    fn truncated_frames_never_panic() {
        let payload: Vec<u8> = (0..600u32).map(|i| (i % 5) as u8).collect();
        let (buf, len) = frame_with(&payload);
        let (mut c, mut d) = pair();
        for cut in 0..len {
            let mut b = buf.clone();
            let mut f = eth(&mut b, cut);
            let _ = c.compress(&mut f);
            let mut b = buf.clone();
            b[14 + 9] = IPPROTO_IPCOMP;
            let mut f = eth(&mut b, cut);
            let _ = d.decompress(&mut f);
        }
    }

    #[test]
    fn ipcomp_header_fixture() {
        let bytes = [6u8, 0, 0xF0, 0x01, 0xaa];
        let p = IpCompPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            IpCompRepr::parse(&p).unwrap(),
            IpCompRepr {
                next_header: 6,
                cpi: CPI_LZ4
            }
        );
        assert_eq!(p.payload(), &[0xaa]);
        assert_eq!(
            IpCompPacket::new_checked(&bytes[..3]).unwrap_err(),
            IpCompError::Truncated
        );
    }

    /// Compressible bytes.
    fn text(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| b"abcab"[(i % 5) as usize])
            .collect()
    }

    #[test]
    fn ipv6_round_trips_and_extension_headers_and_fragments_pass() {
        let (a, b) = (
            IpAddress::v6(0xfd00, 0, 0, 0, 0, 0, 0, 1),
            IpAddress::v6(0xfd00, 0, 0, 0, 0, 0, 0, 2),
        );
        let fixture = frames::wrap;
        let (mut c, mut d) = pair();
        let original = fixture(a, b, IpProtocol::Unknown(253), &text(600));
        let mut buf = original.clone();
        buf.resize(1514, 0);
        let mut f = eth(&mut buf, original.len());
        assert_eq!(c.compress(&mut f), Verdict::Modified);
        let n = f.len();
        let mut f = eth(&mut buf, n);
        assert_eq!(f.ip().map(|v| (v.proto, v.end)), Some((IPPROTO_IPCOMP, n)));
        assert_eq!(d.decompress(&mut f), Verdict::Modified);
        assert_eq!(f.bytes(), &original[..]);
        // Destination options in front of the payload: left alone.
        let mut l4 = vec![253, 0, 1, 4, 0, 0, 0, 0];
        l4.extend_from_slice(&text(600));
        let mut buf = fixture(a, b, IpProtocol::Ipv6Opts, &l4);
        let len = buf.len();
        assert_eq!(c.compress(&mut eth(&mut buf, len)), Verdict::Pass);
        // So is an IPv4 fragment (MF set).
        let (mut buf, len) = frame_with(&text(600));
        buf[14 + 6] = 0x20;
        assert_eq!(c.compress(&mut eth(&mut buf, len)), Verdict::Pass);
        assert_eq!(c.stats().not_ip, 2);
        assert_eq!(c.stats().compressed, 1);
    }

    #[test]
    fn ip_medium_round_trips_without_a_link_header() {
        let (eth_frame, len) = frame_with(&text(800));
        let (mut c, mut d) = pair();
        let packet = &eth_frame[14..len];
        let compressed = ip_round_trip(&mut c, &mut d, packet, packet.len());
        assert_eq!(checksum::ipv4_header(&compressed[..20]), 0);
    }

    #[test]
    fn reconfigure_in_place_and_counter_names() {
        let (mut c, _) = pair();
        let (buf, len) = frame_with(&text(600));
        let bad = FunctionConfig::Compress(CompressConfig {
            min_size: 8,
            hop: Role::Global,
        });
        assert!(Function::reconfigure(&mut c, &bad).is_err());
        assert!(!Function::reconfigure(&mut c, &FunctionConfig::Passthrough).unwrap());
        assert_eq!(
            c.compress(&mut eth(&mut buf.clone(), len)),
            Verdict::Modified
        );
        // Larger packets only, and the hop is now the local network.
        let cfg = FunctionConfig::Compress(CompressConfig {
            min_size: 1000,
            hop: Role::Local,
        });
        assert!(Function::reconfigure(&mut c, &cfg).unwrap());
        let mut b = buf.clone();
        let mut f = eth(&mut b, len);
        assert_eq!(
            c.on_ingress(Instant::ZERO, Role::Global, &mut f),
            Verdict::Pass
        );
        assert_eq!((c.stats().compressed, c.stats().skipped_small), (1, 1));
        // Ten counters, visited by fixed names.
        let counters = crate::stack::hook::counters_of(&c);
        assert_eq!(counters.len(), 10);
        assert!(counters.contains(&("skipped_small".into(), 1)));
        // The TOML: the hop by its network's name, no device facts.
        let cfg: FunctionConfig = toml::from_str("kind = \"compress\"\nhop = \"local\"").unwrap();
        assert_eq!(
            cfg,
            FunctionConfig::Compress(CompressConfig {
                min_size: 128,
                hop: Role::Local
            })
        );
        assert!(toml::from_str::<FunctionConfig>("kind = \"compress\"\nmedium = \"ip\"").is_err());
    }
}
