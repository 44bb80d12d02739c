//! What the packet functions' rules are written in: address prefixes, port
//! ranges, protocol names and durations, parsed once from the config into
//! forms that are cheap to match per packet.
//!
//! ```
//! use shmnet::functions::matching::{parse_duration, Prefix};
//! let p = Prefix::parse("10.1.0.0/16").unwrap();
//! assert!(p.contains(false, u128::from(u32::from_be_bytes([10, 1, 2, 3]))));
//! assert_eq!(parse_duration("250ms"), Some(smoltcp::time::Duration::from_millis(250)));
//! ```

use smoltcp::time::Duration;
use std::net::IpAddr;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// A port or an inclusive range: `80` or `"1024-65535"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum PortSpec {
    Number(i64),
    Range(String),
}

/// An IP protocol by name (`"tcp"`, `"udp"`, `"icmp"`, `"icmpv6"`) or
/// number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum ProtoSpec {
    Number(i64),
    Name(String),
}

/// An address prefix; IPv4 addresses live in the low 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub v6: bool,
    pub addr: u128,
    pub mask: u128,
}

impl Prefix {
    /// `"10.0.0.0/8"`, `"fd00::/64"`, or a bare address (a host prefix).
    pub fn parse(s: &str) -> Option<Prefix> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.trim().parse::<u32>().ok()?)),
            None => (s, None),
        };
        let (v6, addr, bits) = match addr.trim().parse::<IpAddr>().ok()? {
            IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (true, u128::from(a), 128),
        };
        let len = len.unwrap_or(bits);
        if len > bits {
            return None;
        }
        // The top `len` of `bits` bits.
        let width = if v6 { u128::MAX } else { u128::from(u32::MAX) };
        let mask = width & !(width.checked_shr(len).unwrap_or(0));
        Some(Prefix {
            v6,
            addr: addr & mask,
            mask,
        })
    }

    /// Is `addr` (IPv4 in the low 32 bits unless `v6`) inside?
    pub fn contains(&self, v6: bool, addr: u128) -> bool {
        self.v6 == v6 && addr & self.mask == self.addr
    }
}

/// An inclusive port range; `None` if malformed or empty.
pub fn parse_ports(spec: &PortSpec) -> Option<(u16, u16)> {
    let one = |s: &str| s.trim().parse::<u16>().ok();
    let (lo, hi) = match spec {
        PortSpec::Number(n) => {
            let p = u16::try_from(*n).ok()?;
            (p, p)
        }
        PortSpec::Range(s) => match s.split_once('-') {
            Some((a, b)) => (one(a)?, one(b)?),
            None => {
                let p = one(s)?;
                (p, p)
            }
        },
    };
    (lo <= hi).then_some((lo, hi))
}

/// An IP protocol number; `None` for an unknown name or a number > 255.
pub fn parse_proto(p: &ProtoSpec) -> Option<u8> {
    match p {
        ProtoSpec::Number(n) => u8::try_from(*n).ok(),
        ProtoSpec::Name(s) => match s.as_str() {
            "tcp" => Some(PROTO_TCP),
            "udp" => Some(PROTO_UDP),
            "icmp" => Some(PROTO_ICMP),
            "icmpv6" => Some(PROTO_ICMPV6),
            _ => None,
        },
    }
}

/// An optional prefix field `field` of `owner` (e.g. "rule 3"); the error
/// names both.
pub fn prefix_field(owner: &str, field: &str, s: Option<&str>) -> Result<Option<Prefix>, String> {
    s.map(|s| {
        Prefix::parse(s).ok_or_else(|| {
            format!(
                "{owner}: {field} {s:?} is not an address prefix \
                 (like \"10.0.0.0/24\" or \"fd00::/64\")"
            )
        })
    })
    .transpose()
}

/// An optional port field `field` of `owner`; the error names both.
pub fn ports_field(
    owner: &str,
    field: &str,
    p: Option<&PortSpec>,
) -> Result<Option<(u16, u16)>, String> {
    p.map(|p| {
        parse_ports(p).ok_or_else(|| {
            format!(
                "{owner}: {field} {p:?} is not a port or range \
                 (like 80 or \"1024-65535\", within 0..=65535, low end first)"
            )
        })
    })
    .transpose()
}

/// An optional `proto` field of `owner`; the error names it.
pub fn proto_field(owner: &str, p: Option<&ProtoSpec>) -> Result<Option<u8>, String> {
    p.map(|p| {
        parse_proto(p).ok_or_else(|| {
            format!(
                "{owner}: proto {p:?} is not \"tcp\", \"udp\", \"icmp\", \
                 \"icmpv6\" or a number 0..=255"
            )
        })
    })
    .transpose()
}

/// Parses `"250ms"`, `"2s"`, `"500us"`, `"1m"`, `"1h"` or `"1d"` (a time for the
/// functions' sans-IO clock).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let at = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(at);
    let n: u64 = n.parse().ok()?;
    let micros = match unit.trim() {
        "us" => Some(n),
        "ms" => n.checked_mul(1_000),
        "s" => n.checked_mul(1_000_000),
        "m" | "min" => n.checked_mul(60_000_000),
        "h" => n.checked_mul(3_600_000_000),
        "d" => n.checked_mul(86_400_000_000),
        _ => None,
    }?;
    Some(Duration::from_micros(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_ports_protocols_durations() {
        let p = Prefix::parse("10.1.2.3/16").unwrap();
        assert_eq!(p.addr, u128::from(u32::from_be_bytes([10, 1, 0, 0])));
        assert!(!p.contains(true, p.addr));
        let all = Prefix::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(false, 0xffff_ffff));
        let host6 = Prefix::parse("fd00::1").unwrap();
        assert!(host6.contains(true, 0xfd00 << 112 | 1));
        assert!(!host6.contains(true, 0xfd00 << 112 | 2));
        for bad in ["10.0.0.0/33", "fd00::/129", "nonsense", "10.0.0.0/x"] {
            assert_eq!(Prefix::parse(bad), None, "{bad}");
        }
        assert_eq!(parse_ports(&PortSpec::Number(80)), Some((80, 80)));
        assert_eq!(
            parse_ports(&PortSpec::Range("1024-65535".into())),
            Some((1024, 65535))
        );
        assert_eq!(parse_ports(&PortSpec::Range("9-1".into())), None);
        assert_eq!(parse_ports(&PortSpec::Number(65536)), None);
        assert_eq!(parse_proto(&ProtoSpec::Name("udp".into())), Some(17));
        assert_eq!(parse_proto(&ProtoSpec::Number(300)), None);
        assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "ms", "5", "5y", "-1s", "1.5s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
