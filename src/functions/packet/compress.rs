//! Compression: LZ4 on IP payloads between a pair of forwarding devices.
//!
//! Each device of the pair compresses the payload of packets arriving from
//! its client-side network and restores compressed packets arriving from
//! the compressed hop (its global network unless `hop = "local"`). The compressed packet is an IP
//! Payload Compression packet (IPComp, RFC 3173: IP protocol 108, a 4-byte
//! header holding the original next header and a compression parameter
//! index); LZ4 has no assigned CPI, so it uses [`CPI_LZ4`] from the range the
//! RFC leaves for private use.
//!
//! Packets smaller than `min_size`, or that would not shrink, travel as they
//! are. A compressed packet is always smaller than the original, so it never
//! exceeds the MTU; decompression writes into the frame's own buffer, so a
//! hostile packet can never make it allocate or exceed the network's frame
//! size (lz4_flex's size-prefixed API trusts its prefix; this one is bounded).
//!
//! ```
//! use shmnet::functions::compress::{IpCompPacket, IpCompRepr, CPI_LZ4};
//! let repr = IpCompRepr { next_header: 6, cpi: CPI_LZ4 };
//! let mut buf = [0u8; 4];
//! repr.emit(&mut IpCompPacket::new_unchecked(&mut buf[..]));
//! assert_eq!(IpCompRepr::parse(&IpCompPacket::new_checked(&buf[..]).unwrap()).unwrap(), repr);
//! ```

#![allow(clippy::redundant_closure_call)] // transitional: counters and reconfigure shims, removed as each function moves to the new contract
use lz4_flex::block::{
    CompressTable, compress_into_with_table, decompress_into, get_maximum_output_size,
};
use smoltcp::time::Instant;

use super::{Frame, Function, FunctionError, Role, Verdict, ipv4_header_checksum};

pub use crate::wire::ipcomp::{CPI_LZ4, IPPROTO_IPCOMP, IpCompError, IpCompPacket, IpCompRepr};

/// `[function] kind = "compress"`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompressConfig {
    /// Payloads smaller than this many bytes are sent as they are.
    #[serde(default = "default_min_size")]
    pub min_size: usize,
    /// Link medium of the device's networks ("ethernet" or "ip").
    #[serde(default)]
    pub medium: crate::config::MediumName,
    /// Which of the device's networks is the compressed hop: packets
    /// arriving from the other one are compressed, packets arriving from
    /// this one restored.
    #[serde(default)]
    pub hop: HopSide,
}

/// `hop = "global"` (default) or `"local"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HopSide {
    #[default]
    Global,
    Local,
}

fn default_min_size() -> usize {
    128
}

impl Default for CompressConfig {
    fn default() -> Self {
        CompressConfig {
            min_size: default_min_size(),
            medium: Default::default(),
            hop: HopSide::Global,
        }
    }
}

/// Counters of the compression function.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompressStats {
    pub compressed: u64,
    pub decompressed: u64,
    pub skipped_small: u64,
    pub skipped_incompressible: u64,
    /// Payload bytes before and after compression, and the difference.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub bytes_saved: u64,
    /// Compressed packets that could not be decompressed (dropped).
    pub decompress_errors: u64,
    /// IPComp packets with another algorithm or bad header (dropped).
    pub unknown_cpi: u64,
    /// Frames too short or inconsistent to be IP (passed untouched).
    pub not_ip: u64,
}

/// The compressor/decompressor.
pub struct Compress {
    min_size: usize,
    hop: Role,
    l2: usize,
    table: CompressTable,
    scratch: Vec<u8>,
    stats: CompressStats,
}

/// Where an IP packet's payload is, and how to rewrite its header.
struct IpView {
    /// Offset of the IP header in the frame.
    ip: usize,
    header_len: usize,
    total_len: usize,
    protocol: u8,
    v6: bool,
}

impl Compress {
    pub fn new(cfg: CompressConfig) -> Result<Compress, FunctionError> {
        if !(16..=65535).contains(&cfg.min_size) {
            return Err(FunctionError::Invalid {
                kind: "compress",
                why: "min_size must be 16..=65535 bytes".into(),
            });
        }
        Ok(Compress {
            min_size: cfg.min_size,
            hop: match cfg.hop {
                HopSide::Global => Role::Global,
                HopSide::Local => Role::Local,
            },
            l2: match cfg.medium {
                crate::config::MediumName::Ethernet => 14,
                crate::config::MediumName::Ip => 0,
            },
            table: CompressTable::default(),
            scratch: vec![0; get_maximum_output_size(65535)],
            stats: CompressStats::default(),
        })
    }

    pub fn stats(&self) -> &CompressStats {
        &self.stats
    }

    /// Finds the IP header; `None` for non-IP or inconsistent packets.
    fn view(&self, f: &[u8]) -> Option<IpView> {
        if self.l2 == 14 && !matches!(f.get(12..14)?, [0x08, 0x00] | [0x86, 0xdd]) {
            return None;
        }
        let ip = f.get(self.l2..)?;
        match ip.first()? >> 4 {
            4 => {
                let header_len = (ip[0] & 0xf) as usize * 4;
                let total_len = u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]) as usize;
                // Fragments carry part of a payload: leave them alone.
                let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
                if header_len < 20
                    || total_len < header_len
                    || total_len > ip.len()
                    || frag & 0x3fff != 0
                {
                    return None;
                }
                Some(IpView {
                    ip: self.l2,
                    header_len,
                    total_len,
                    protocol: ip[9],
                    v6: false,
                })
            }
            6 => {
                let payload_len = u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]) as usize;
                if ip.len() < 40 + payload_len {
                    return None;
                }
                Some(IpView {
                    ip: self.l2,
                    header_len: 40,
                    total_len: 40 + payload_len,
                    protocol: ip[6],
                    v6: true,
                })
            }
            _ => None,
        }
    }

    /// Compresses the frame's IP payload in place if that pays.
    pub fn compress(&mut self, frame: &mut Frame<'_>) -> Verdict {
        let Some(v) = self.view(frame.bytes()) else {
            self.stats.not_ip += 1;
            return Verdict::Pass;
        };
        if v.protocol == IPPROTO_IPCOMP {
            return Verdict::Pass;
        }
        let start = v.ip + v.header_len;
        let payload_len = v.total_len - v.header_len;
        if payload_len < self.min_size {
            self.stats.skipped_small += 1;
            return Verdict::Pass;
        }
        let payload = &frame.bytes()[start..start + payload_len];
        let n = match compress_into_with_table(payload, &mut self.scratch, &mut self.table) {
            Ok(n) if n + 4 < payload_len => n,
            _ => {
                self.stats.skipped_incompressible += 1;
                return Verdict::Pass;
            }
        };
        let buf = frame.buffer_mut();
        IpCompRepr {
            next_header: v.protocol,
            cpi: CPI_LZ4,
        }
        .emit(&mut IpCompPacket::new_unchecked(&mut buf[start..start + 4]));
        buf[start + 4..start + 4 + n].copy_from_slice(&self.scratch[..n]);
        let new_total = v.header_len + 4 + n;
        rewrite_ip(&mut buf[v.ip..], &v, IPPROTO_IPCOMP, new_total);
        frame.set_len(v.ip + new_total);
        self.stats.compressed += 1;
        self.stats.bytes_in += payload_len as u64;
        self.stats.bytes_out += (n + 4) as u64;
        self.stats.bytes_saved += (payload_len - n - 4) as u64;
        Verdict::Modified
    }

    /// Restores a compressed packet in place; drops what cannot be restored.
    pub fn decompress(&mut self, frame: &mut Frame<'_>) -> Verdict {
        let Some(v) = self.view(frame.bytes()) else {
            self.stats.not_ip += 1;
            return Verdict::Pass;
        };
        if v.protocol != IPPROTO_IPCOMP {
            return Verdict::Pass;
        }
        let start = v.ip + v.header_len;
        let packet = IpCompPacket::new_unchecked(&frame.bytes()[start..v.ip + v.total_len]);
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
        let room = (frame.capacity() - start).min(65535 - v.header_len);
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
        let new_total = v.header_len + n;
        rewrite_ip(&mut buf[v.ip..], &v, repr.next_header, new_total);
        frame.set_len(v.ip + new_total);
        self.stats.decompressed += 1;
        Verdict::Modified
    }
}

/// Sets protocol and length of an IP header, and the IPv4 checksum.
fn rewrite_ip(ip: &mut [u8], v: &IpView, protocol: u8, total_len: usize) {
    if v.v6 {
        ip[6] = protocol;
        ip[4..6].copy_from_slice(&((total_len - 40) as u16).to_be_bytes());
    } else {
        ip[9] = protocol;
        ip[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let ck = ipv4_header_checksum(&ip[..v.header_len]);
        ip[10..12].copy_from_slice(&ck.to_be_bytes());
    }
}

impl Function for Compress {
    fn name(&self) -> &'static str {
        "compress"
    }

    fn on_ingress(&mut self, _now: Instant, from: Role, frame: &mut Frame<'_>) -> Verdict {
        if from == self.hop {
            self.decompress(frame)
        } else {
            self.compress(frame)
        }
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        let pairs: Vec<(String, u64)> = (|| {
            let s = &self.stats;
            [
                ("compressed", s.compressed),
                ("decompressed", s.decompressed),
                ("skipped_small", s.skipped_small),
                ("skipped_incompressible", s.skipped_incompressible),
                ("bytes_in", s.bytes_in),
                ("bytes_out", s.bytes_out),
                ("bytes_saved", s.bytes_saved),
                ("decompress_errors", s.decompress_errors),
                ("unknown_cpi", s.unknown_cpi),
                ("not_ip", s.not_ip),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
        })();
        for (n, v) in pairs {
            visit(&n, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP-ish frame with `payload`, in a 9014-byte buffer.
    fn frame_with(payload: &[u8]) -> (Vec<u8>, usize) {
        crate::functions::fixtures::ipv4_frame([10, 0, 0, 1], [10, 1, 0, 2], payload, 9014)
    }

    fn pair() -> (Compress, Compress) {
        (
            Compress::new(CompressConfig::default()).unwrap(),
            Compress::new(CompressConfig::default()).unwrap(),
        )
    }

    #[test]
    fn compressible_payload_round_trips_smaller() {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i % 17) as u8).collect();
        let (mut buf, len) = frame_with(&payload);
        let original = buf[..len].to_vec();
        let (mut c, mut d) = pair();
        let mut f = Frame::new(&mut buf, len, crate::wire::LinkMedium::Ethernet);
        assert_eq!(c.compress(&mut f), Verdict::Modified);
        let clen = f.len();
        assert!(clen < len / 4, "{clen} vs {len}");
        assert_eq!(f.bytes()[14 + 9], IPPROTO_IPCOMP);
        assert_eq!(
            ipv4_header_checksum(&f.bytes()[14..34]),
            0,
            "valid IPv4 checksum"
        );
        assert_eq!(d.decompress(&mut f), Verdict::Modified);
        assert_eq!(f.bytes(), &original[..]);
        assert_eq!(c.stats().bytes_saved, (len - clen) as u64);
    }

    #[test]
    fn small_and_incompressible_payloads_pass_unchanged() {
        let (mut c, _) = pair();
        let (mut buf, len) = frame_with(&[7u8; 40]);
        let mut f = Frame::new(&mut buf, len, crate::wire::LinkMedium::Ethernet);
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
        let mut f = Frame::new(&mut buf, len, crate::wire::LinkMedium::Ethernet);
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
            let mut f = Frame::new(
                &mut buf[..1514.max(len)],
                len,
                crate::wire::LinkMedium::Ethernet,
            );
            let v = d.decompress(&mut f);
            assert!(f.len() <= f.capacity());
            assert!(matches!(v, Verdict::Drop | Verdict::Modified));
        }
        assert!(d.stats().decompress_errors >= 2, "{:?}", d.stats());
        // Another algorithm's CPI, reserved flags.
        let (mut buf, len) = frame_with(&[17, 0, 0, 2, 1, 2, 3]);
        buf[14 + 9] = IPPROTO_IPCOMP;
        assert_eq!(
            d.decompress(&mut Frame::new(
                &mut buf,
                len,
                crate::wire::LinkMedium::Ethernet
            )),
            Verdict::Drop
        );
        let (mut buf, len) = frame_with(&[17, 1, 0xF0, 0x01, 1, 2, 3]);
        buf[14 + 9] = IPPROTO_IPCOMP;
        assert_eq!(
            d.decompress(&mut Frame::new(
                &mut buf,
                len,
                crate::wire::LinkMedium::Ethernet
            )),
            Verdict::Drop
        );
        assert_eq!(d.stats().unknown_cpi, 2);
    }

    #[test]
    fn truncated_frames_never_panic() {
        let payload: Vec<u8> = (0..600u32).map(|i| (i % 5) as u8).collect();
        let (buf, len) = frame_with(&payload);
        let (mut c, mut d) = pair();
        for cut in 0..len {
            let mut b = buf.clone();
            let mut f = Frame::new(&mut b, cut, crate::wire::LinkMedium::Ethernet);
            let _ = c.compress(&mut f);
            let mut b = buf.clone();
            b[14 + 9] = IPPROTO_IPCOMP;
            let mut f = Frame::new(&mut b, cut, crate::wire::LinkMedium::Ethernet);
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
}
