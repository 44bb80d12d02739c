//! What the functions' configs are written in, shared by every function
//! that needs it: address prefixes, port ranges, protocol names, the match
//! fields of a rule or class compiled into a [`Matcher`] that tests a
//! packet's [`IpView`], and typed durations ([`ConfigDuration`], written
//! `"250ms"`, `"30s"`, `"5m"`). Parsed once from the config into forms
//! that are cheap to match per packet. A config built in Rust writes the
//! values with `From`: `80.into()`, `(1024..=65535).into()` for ports,
//! `"tcp".into()` or `6.into()` for protocols, a [`std::time::Duration`]
//! for a duration.
//!
//! ```
//! use shmnet::functions::matching::{parse_duration, parse_ports, ConfigDuration, PortSpec, Prefix};
//! let p = Prefix::parse("10.1.0.0/16").unwrap();
//! assert!(p.contains(false, u128::from(u32::from_be_bytes([10, 1, 2, 3]))));
//! assert_eq!(parse_duration("250ms"), Some(smoltcp::time::Duration::from_millis(250)));
//! assert_eq!(parse_ports(&PortSpec::from(1024..=65535)), Some((1024, 65535)));
//! let d: ConfigDuration = std::time::Duration::from_secs(30).into();
//! assert_eq!(d.to_string(), "30s");
//! ```

use smoltcp::time::Duration;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use crate::wire::IpView;
pub use crate::wire::proto::{
    ICMP as PROTO_ICMP, ICMPV6 as PROTO_ICMPV6, TCP as PROTO_TCP, UDP as PROTO_UDP,
};

/// A port or an inclusive range: `80` or `"1024-65535"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum PortSpec {
    /// One port, as a TOML integer (0..=65535 is checked when compiled).
    Number(i64),
    /// `"low-high"` or one port, as a TOML string.
    Range(String),
}

/// An IP protocol by name (`"tcp"`, `"udp"`, `"icmp"`, `"icmpv6"`) or
/// number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum ProtoSpec {
    /// A protocol number (0..=255 is checked when compiled).
    Number(i64),
    /// `"tcp"`, `"udp"`, `"icmp"` or `"icmpv6"`.
    Name(String),
}

/// An address prefix; IPv4 addresses live in the low 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// The network address, host bits cleared.
    pub addr: u128,
    /// The top prefix-length bits of the address set (IPv4: of the low 32).
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

/// `Ok` if `name` is fit to name something in counters, segments and
/// logs: non-empty, of ASCII letters, digits and the characters in
/// `punct`. Else `Err` with what a name is made of, for the caller's
/// message: `letters, digits, '-' or '_'`.
pub fn check_name(name: &str, punct: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || punct.contains(c));
    if ok {
        return Ok(());
    }
    let mut chars = vec!["letters".to_string(), "digits".to_string()];
    chars.extend(punct.chars().map(|c| format!("'{c}'")));
    let last = chars.pop().unwrap_or_default();
    Err(format!("{} or {last}", chars.join(", ")))
}

/// Characters of a value an error message quotes at most.
pub const QUOTE_MAX: usize = 80;

/// A value from a config file as an error message shows it: quoted and
/// escaped like `{:?}`, and when longer than [`QUOTE_MAX`] characters, cut
/// with an ellipsis and followed by its length, so a 50 MB string in a file
/// makes a one-line message.
///
/// ```
/// use shmnet::functions::matching::quoted;
/// assert_eq!(quoted("a\"b").to_string(), r#""a\"b""#);
/// let long = "x".repeat(1000);
/// assert_eq!(quoted(&long).to_string(), format!("\"{}…\" (1000 bytes)", "x".repeat(80)));
/// ```
pub fn quoted(value: &str) -> Quoted<'_> {
    Quoted(value)
}

/// See [`quoted`].
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a>(&'a str);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0;
        match s.char_indices().nth(QUOTE_MAX) {
            None => write!(f, "{s:?}"),
            Some((cut, _)) => {
                let head = format!("{:?}", &s[..cut]);
                let inside = &head[1..head.len() - 1];
                write!(f, "\"{inside}…\" ({} bytes)", s.len())
            }
        }
    }
}

impl std::fmt::Display for PortSpec {
    /// As written in the file: `80` or `"1024-65535"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortSpec::Number(n) => write!(f, "{n}"),
            PortSpec::Range(s) => write!(f, "{}", quoted(s)),
        }
    }
}

impl std::fmt::Display for ProtoSpec {
    /// As written in the file: `6` or `"tcp"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoSpec::Number(n) => write!(f, "{n}"),
            ProtoSpec::Name(s) => write!(f, "{}", quoted(s)),
        }
    }
}

impl From<u16> for PortSpec {
    /// One port, as `dport = 80` writes it: `PortSpec::from(80)`, or
    /// `dport: Some(80.into())` in a config built in Rust.
    fn from(port: u16) -> PortSpec {
        PortSpec::Number(i64::from(port))
    }
}

impl From<RangeInclusive<u16>> for PortSpec {
    /// An inclusive range, as `dport = "1024-65535"` writes it:
    /// `PortSpec::from(1024..=65535)`. An empty range (`9..=1`) is kept as
    /// written and refused when the config is compiled, as in a file.
    fn from(ports: RangeInclusive<u16>) -> PortSpec {
        PortSpec::Range(format!("{}-{}", ports.start(), ports.end()))
    }
}

impl From<u8> for ProtoSpec {
    /// A protocol by number, as `proto = 6` writes it:
    /// `ProtoSpec::from(6)`, or `proto: Some(PROTO_TCP.into())`.
    fn from(proto: u8) -> ProtoSpec {
        ProtoSpec::Number(i64::from(proto))
    }
}

impl From<&str> for ProtoSpec {
    /// A protocol by name, as `proto = "tcp"` writes it:
    /// `proto: Some("tcp".into())`. The name is checked when the config is
    /// compiled, as in a file.
    fn from(name: &str) -> ProtoSpec {
        ProtoSpec::Name(name.to_string())
    }
}

impl From<String> for ProtoSpec {
    /// A protocol by name; see `From<&str>`.
    fn from(name: String) -> ProtoSpec {
        ProtoSpec::Name(name)
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
                "{owner}: {field} {} is not an address prefix \
                 (like \"10.0.0.0/24\" or \"fd00::/64\")",
                quoted(s)
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
                "{owner}: {field} {p} is not a port or range \
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
                "{owner}: proto {p} is not \"tcp\", \"udp\", \"icmp\", \
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

/// Declares a config section (a rule, a class) as written, followed by the
/// five match fields (`proto`, `src`, `dst`, `sport`, `dport`), and gives
/// it a `match_spec()` accessor for [`Matcher::compile`].
#[allow(unused_macros)] // unused when the functions using it are compiled out
macro_rules! with_match_fields {
    ($(#[$attr:meta])* pub struct $name:ident $own:tt) => {
        $crate::functions::common::struct_with_fields! {
            [
                /// `"tcp"`, `"udp"`, `"icmp"`, `"icmpv6"` or a protocol number.
                pub proto: Option<$crate::functions::matching::ProtoSpec>,
                /// Source prefix (`"10.0.0.0/24"`, `"fd00::/64"`, or one address).
                pub src: Option<String>,
                /// Destination prefix.
                pub dst: Option<String>,
                /// Source port or range (needs `proto = "tcp"` or `"udp"`).
                pub sport: Option<$crate::functions::matching::PortSpec>,
                /// Destination port or range (needs `proto = "tcp"` or `"udp"`).
                pub dport: Option<$crate::functions::matching::PortSpec>,
            ]
            $(#[$attr])*
            pub struct $name $own
        }

        impl $name {
            /// The match fields, for
            /// [`Matcher::compile`]($crate::functions::matching::Matcher::compile).
            pub fn match_spec(&self) -> $crate::functions::matching::MatchSpec<'_> {
                $crate::functions::matching::MatchSpec {
                    proto: self.proto.as_ref(),
                    src: self.src.as_deref(),
                    dst: self.dst.as_deref(),
                    sport: self.sport.as_ref(),
                    dport: self.dport.as_ref(),
                }
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use with_match_fields;

/// The match fields of a rule or class, borrowed from its config section
/// (declared there with `with_match_fields!`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MatchSpec<'a> {
    /// `proto` as written; `None`: left out.
    pub proto: Option<&'a ProtoSpec>,
    /// `src` as written (a prefix or one address); `None`: left out.
    pub src: Option<&'a str>,
    /// `dst` as written (a prefix or one address); `None`: left out.
    pub dst: Option<&'a str>,
    /// `sport` as written; `None`: left out.
    pub sport: Option<&'a PortSpec>,
    /// `dport` as written; `None`: left out.
    pub dport: Option<&'a PortSpec>,
}

/// Compiled match fields: every field set must match; an empty matcher
/// matches every IP packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Matcher {
    /// IP protocol number; `None`: any.
    pub proto: Option<u8>,
    /// Source prefix; `None`: any.
    pub src: Option<Prefix>,
    /// Destination prefix; `None`: any.
    pub dst: Option<Prefix>,
    /// Inclusive source port range (only with TCP or UDP); `None`: any.
    pub sport: Option<(u16, u16)>,
    /// Inclusive destination port range (only with TCP or UDP); `None`: any.
    pub dport: Option<(u16, u16)>,
}

impl Matcher {
    /// Compiles the fields of `owner` (e.g. `rule "web"`); the error names
    /// the owner and the field. Ports need a protocol that has them (TCP
    /// or UDP), and `src` and `dst` must be of one IP version.
    pub fn compile(owner: &str, m: MatchSpec<'_>) -> Result<Matcher, String> {
        let matcher = Matcher {
            proto: proto_field(owner, m.proto)?,
            src: prefix_field(owner, "src", m.src)?,
            dst: prefix_field(owner, "dst", m.dst)?,
            sport: ports_field(owner, "sport", m.sport)?,
            dport: ports_field(owner, "dport", m.dport)?,
        };
        if (matcher.sport.is_some() || matcher.dport.is_some())
            && !matches!(matcher.proto, Some(PROTO_TCP | PROTO_UDP))
        {
            return Err(format!(
                "{owner}: sport/dport need proto = \"tcp\" or \"udp\""
            ));
        }
        if let (Some(s), Some(d)) = (matcher.src, matcher.dst)
            && s.v6 != d.v6
        {
            return Err(format!("{owner}: src and dst are of different IP versions"));
        }
        Ok(matcher)
    }

    /// Does the packet match? A port field matches only packets that carry
    /// ports (TCP and UDP, not later fragments).
    #[inline]
    pub fn matches(&self, ip: &IpView) -> bool {
        let in_range = |r: Option<(u16, u16)>, p: Option<u16>| match (r, p) {
            (None, _) => true,
            (Some((lo, hi)), Some(p)) => lo <= p && p <= hi,
            (Some(_), None) => false,
        };
        let ports = ip.ports();
        self.proto.is_none_or(|p| p == ip.proto)
            && self.src.is_none_or(|p| p.contains(ip.v6, ip.src))
            && self.dst.is_none_or(|p| p.contains(ip.v6, ip.dst))
            && in_range(self.sport, ports.map(|p| p.0))
            && in_range(self.dport, ports.map(|p| p.1))
    }
}

/// A duration in a config file: `"250ms"`, `"30s"`, `"5m"`, `"1h"` (units
/// `us`, `ms`, `s`, `m`, `h`, `d`), parsed when the file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        ConfigDuration(Duration::from_millis(ms))
    }
    /// `s` seconds.
    pub const fn from_secs(s: u64) -> Self {
        ConfigDuration(Duration::from_secs(s))
    }

    /// The duration, if it lies in `range`; otherwise the config error
    /// naming `field`, the value and the bounds. Every duration field has
    /// bounds: a zero timeout fires at once, and a huge one overflows the
    /// clock it is added to.
    pub fn within(self, field: &str, range: RangeInclusive<Duration>) -> Result<Duration, String> {
        if range.contains(&self.0) {
            Ok(self.0)
        } else {
            let (lo, hi) = (ConfigDuration(*range.start()), ConfigDuration(*range.end()));
            Err(format!("{field} \"{self}\" must be between {lo} and {hi}"))
        }
    }
}

impl From<ConfigDuration> for Duration {
    fn from(d: ConfigDuration) -> Duration {
        d.0
    }
}

impl From<Duration> for ConfigDuration {
    /// A duration of the functions' (smoltcp's) clock.
    fn from(d: Duration) -> ConfigDuration {
        ConfigDuration(d)
    }
}

impl From<std::time::Duration> for ConfigDuration {
    /// A [`std::time::Duration`] in a config built in Rust:
    /// `timeout: Duration::from_secs(30).into()`. The clock counts whole
    /// microseconds: a finer part is dropped, and a duration beyond
    /// `u64::MAX` microseconds (half a million years) is cut to it — then
    /// refused by the field's bounds, as every duration field has some.
    fn from(d: std::time::Duration) -> ConfigDuration {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        ConfigDuration(Duration::from_micros(micros))
    }
}

impl From<ConfigDuration> for std::time::Duration {
    /// The duration, for code that keeps `std` durations.
    fn from(d: ConfigDuration) -> std::time::Duration {
        std::time::Duration::from_micros(d.0.total_micros())
    }
}

impl std::fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = self.0.total_micros();
        for (unit, per) in [
            ("d", 86_400_000_000),
            ("h", 3_600_000_000),
            ("m", 60_000_000),
            ("s", 1_000_000),
            ("ms", 1_000),
        ] {
            if us >= per && us.is_multiple_of(per) {
                return write!(f, "{}{unit}", us / per);
            }
        }
        write!(f, "{us}us")
    }
}

impl<'de> serde::Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(ConfigDuration).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{} is not a duration (like \"250ms\", \"30s\", \"5m\"; units us, ms, s, m, h, d)",
                quoted(&s)
            ))
        })
    }
}

impl serde::Serialize for ConfigDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
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
        assert_eq!(check_name("web-1_a", "-_"), Ok(()));
        assert_eq!(
            check_name("a.b", "-_"),
            Err("letters, digits, '-' or '_'".into())
        );
        assert!(check_name("", "-").is_err() && check_name("a b", "-_.").is_err());
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

    #[test]
    fn specs_from_rust_values() {
        assert_eq!(PortSpec::from(80), PortSpec::Number(80));
        assert_eq!(
            PortSpec::from(1024..=65535),
            PortSpec::Range("1024-65535".into())
        );
        assert_eq!(parse_ports(&(1024..=65535).into()), Some((1024, 65535)));
        let empty = RangeInclusive::new(9, 1);
        assert_eq!(parse_ports(&empty.into()), None, "empty range refused");
        assert_eq!(ProtoSpec::from("tcp"), ProtoSpec::Name("tcp".into()));
        assert_eq!(parse_proto(&PROTO_UDP.into()), Some(PROTO_UDP));
        let d = ConfigDuration::from(std::time::Duration::from_millis(250));
        assert_eq!(d, ConfigDuration::from_millis(250));
        assert_eq!(
            std::time::Duration::from(d),
            std::time::Duration::from_millis(250)
        );
        let huge = ConfigDuration::from(std::time::Duration::MAX);
        assert_eq!(huge.0, Duration::from_micros(u64::MAX));
        assert!(
            huge.within("t", Duration::ZERO..=Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn matcher_and_durations() {
        use crate::wire::{FrameView, LinkMedium};
        let f = crate::testing::frames::udp(
            ("10.1.0.5".parse().unwrap(), 5000),
            ("10.2.0.9".parse().unwrap(), 53),
            b"q",
        );
        let FrameView::Ip(ip) = FrameView::parse(LinkMedium::Ethernet, &f) else {
            panic!()
        };
        let udp = ProtoSpec::Name("udp".into());
        let dport = PortSpec::Number(53);
        let m = Matcher::compile(
            "rule 1",
            MatchSpec {
                proto: Some(&udp),
                src: Some("10.1.0.0/16"),
                dport: Some(&dport),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(m.matches(&ip));
        let other = PortSpec::Number(54);
        let m2 = Matcher {
            dport: parse_ports(&other),
            ..m
        };
        assert!(!m2.matches(&ip));
        assert!(Matcher::default().matches(&ip));
        let err = Matcher::compile(
            "rule \"x\"",
            MatchSpec {
                dst: Some("10.0.0.0/40"),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.contains("rule \"x\"") && err.contains("dst"), "{err}");
        let ports_alone = MatchSpec {
            dport: Some(&dport),
            ..Default::default()
        };
        let err = Matcher::compile("rule 2", ports_alone).unwrap_err();
        assert!(err.contains("rule 2: sport/dport need proto"), "{err}");
        let mixed = MatchSpec {
            src: Some("10.0.0.0/8"),
            dst: Some("fd00::/8"),
            ..Default::default()
        };
        let err = Matcher::compile("rule 3", mixed).unwrap_err();
        assert!(
            err.contains("rule 3: src and dst are of different IP"),
            "{err}"
        );
        #[derive(serde::Deserialize, serde::Serialize)]
        struct T {
            d: ConfigDuration,
        }
        let t: T = toml::from_str("d = \"90s\"").unwrap();
        assert_eq!(t.d.0, Duration::from_secs(90));
        assert_eq!(toml::to_string(&t).unwrap().trim(), "d = \"90s\"");
        let e = toml::from_str::<T>("d = \"5y\"").err().unwrap().to_string();
        assert!(e.contains("not a duration"), "{e}");
        let bounds = Duration::from_millis(1)..=Duration::from_secs(3600);
        assert_eq!(t.d.within("d", bounds.clone()), Ok(Duration::from_secs(90)));
        assert_eq!(
            ConfigDuration::from_secs(7200).within("timeout", bounds),
            Err("timeout \"2h\" must be between 1ms and 1h".into())
        );
    }
}
