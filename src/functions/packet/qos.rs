//! QoS: classify, shape and schedule the packets a forwarding device carries.
//!
//! The model is Linux `tc` with HTB-style shaping under a priority / DRR
//! scheduler:
//!
//! - **Classes.** Every IP packet is put into the first class whose match
//!   criteria it meets — DSCP (RFC 2474: the upper six bits of the IPv4 TOS
//!   / IPv6 traffic class byte), IP protocol, source and destination
//!   prefixes (IPv4 or IPv6), TCP/UDP source and destination ports or port
//!   ranges — or into the `default` class. A class with no criteria matches
//!   everything. Non-first fragments carry no ports: classes with port
//!   criteria do not match them.
//! - **Shaping.** A class with a `rate` has a token bucket (`rate`, `burst`):
//!   its packets wait in the class queue until the bucket holds enough
//!   tokens. The optional top-level `rate` shapes the whole link the same
//!   way, which is when scheduling between classes matters. A packet larger
//!   than the burst leaves once the bucket is full (the bucket then goes
//!   negative), so any frame size works with any burst.
//! - **Scheduling.** Strict priority between priority levels (0 is the
//!   highest); within a level, deficit round robin (DRR, Shreedhar and
//!   Varghese) with a quantum proportional to the class `weight`. A class
//!   takes part when it has packets and its bucket allows its head packet,
//!   so a backlogged but rate-limited high-priority class never blocks the
//!   lower levels (HTB's behaviour, not `tc prio`'s).
//! - **Over limit.** Each class queue holds at most `queue` bytes. With
//!   `over_limit = "drop"` a packet that does not fit is dropped (tail
//!   drop). With `"mark"`, ECN-capable packets (ECT(0) or ECT(1), RFC 3168)
//!   arriving while the queue holds `mark_at` bytes or more are marked
//!   Congestion Experienced (the IPv4 header checksum is updated
//!   incrementally, RFC 1624); packets are dropped only when the queue is
//!   full.
//!
//! Byte counts (rates, bursts, queues, counters) are of frames as they
//! cross the device's networks, like `tc`'s (the Ethernet header is
//! counted, a preamble or FCS is not).
//!
//! Direction: a frame arriving from the local network is `out`, one from
//! the global network `in` (the firewall's convention). Each direction is
//! its own link with its own queues, buckets and link rate; `direction`
//! chooses which are scheduled (default both), frames of the other pass
//! unqueued. ARP, IPv6 neighbour discovery and MLD, and any non-IP frame
//! pass unqueued; a malformed IP frame is a counted drop. The device's own
//! frames are not shaped (a QoS device forwards; its stack barely talks).
//!
//! Mechanics: [`Function::on_ingress`] copies each scheduled frame into its
//! class queue (a byte ring allocated once per class, so steady state
//! allocates nothing) and returns [`Verdict::Consumed`];
//! [`Function::poll_transmit`] releases frames in scheduler order, and
//! [`Function::poll_at`] says when the next backlogged class will have
//! enough tokens. [`Qos::reconfigure`] changes rates, weights and sizes in
//! place and keeps the queued frames.
//!
//! ```
//! use shmnet::functions::qos::{Qos, QosConfig};
//! use shmnet::functions::{Frame, Function, Role, Verdict};
//! use smoltcp::time::Instant;
//! let cfg: QosConfig = toml::from_str(r#"
//!     default = "bulk"
//!     rate = "100mbit"
//!     [[class]]
//!     name = "voice"
//!     priority = 0
//!     dscp = [46]
//!     [[class]]
//!     name = "bulk"
//!     priority = 1
//!     rate = "40mbit"
//! "#).unwrap();
//! let mut qos = Qos::new(cfg).unwrap();
//! // A bare IPv4/UDP frame with DSCP EF (46) is queued in "voice".
//! let mut frame = [0u8; 14 + 28];
//! frame[12..14].copy_from_slice(&[0x08, 0x00]);
//! frame[14..18].copy_from_slice(&[0x45, 46 << 2, 0, 28]);
//! frame[14 + 9] = 17;
//! let now = Instant::from_millis(1);
//! let len = frame.len();
//! assert_eq!(qos.on_ingress(now, Role::Local, &mut Frame::new(&mut frame, len, shmnet::wire::LinkMedium::Ethernet)), Verdict::Consumed);
//! let mut out = [0u8; 1514];
//! assert_eq!(qos.release(now, &mut out), Some(len));
//! assert_eq!(qos.class_stats("voice").unwrap().packets, 1);
//! ```

#![allow(clippy::redundant_closure_call)] // transitional: counters and reconfigure shims, removed as each function moves to the new contract
use std::collections::VecDeque;

use smoltcp::time::Instant;

use super::matching::{
    PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, PortSpec, Prefix, ProtoSpec, parse_proto,
    ports_field, prefix_field,
};
use super::{Emit, Frame, Function, FunctionConfig, FunctionError, Role, Verdict};
use crate::config::MediumName;

/// Default queue per class: holds a 4 MiB TCP window (the probe's and the
/// benchmarks') with its headers at any MTU, without a drop — smoltcp has
/// no congestion control, so a drop costs a 1 s RTO. Memory is taken only
/// as the queue fills (a zeroed allocation maps pages on first touch).
pub const DEFAULT_QUEUE: u64 = 8 << 20;
/// Smallest queue: one full-size Ethernet frame.
const MIN_QUEUE: u64 = 1514;
const MAX_QUEUE: u64 = 1 << 30;
/// The DRR quantum unit: one full-size Ethernet frame, or the largest
/// frame queued so far if bigger (so one quantum always covers a frame).
const MIN_QUANTUM_UNIT: usize = 1514;
const MAX_WEIGHT: u32 = 1000;
const MAX_PRIORITY: u32 = 15;
/// Token units per byte: 8 bits × 10^6, so that `rate` (bit/s) times an
/// interval in microseconds is a number of units, in integers.
const UNITS_PER_BYTE: i64 = 8_000_000;
/// Rates accepted, in bit/s.
const MIN_RATE: u64 = 8_000;
const MAX_RATE: u64 = 10_000_000_000_000;
/// Extension headers walked in an IPv6 packet before giving up.
const MAX_EXTENSION_HEADERS: usize = 8;

/// A rate: bits per second as an integer, or a string like `"40mbit"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum RateSpec {
    Bits(i64),
    Text(String),
}

/// What happens to a packet arriving at a full queue, and before that.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OverLimit {
    /// Tail drop when full.
    #[default]
    Drop,
    /// CE-mark ECN-capable packets past `mark_at`; drop when full.
    Mark,
}

/// Which frames are scheduled, by the network they arrived from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the local network (leaving towards the global one).
    Out,
    /// From the global network.
    In,
    /// Both, each direction its own link.
    #[default]
    Both,
}

/// One `[[function.class]]`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    /// Letters, digits, `-` and `_` (it names the class's counters).
    pub name: String,
    /// 0 (highest) ..= 15.
    #[serde(default)]
    pub priority: u32,
    /// Share within its priority level, 1..=1000.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Shaping rate; none: not shaped (only the link rate applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSpec>,
    /// Bucket size in bytes (default: 10 ms at `rate`, at least 3028).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Queue size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<u64>,
    #[serde(default)]
    pub over_limit: OverLimit,
    /// Queue bytes from which ECT packets are CE-marked (default: half the
    /// queue); only with `over_limit = "mark"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark_at: Option<u64>,
    /// DSCP values (0..=63) matched; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dscp: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<ProtoSpec>,
    /// Source prefix (`"10.0.0.0/24"`, `"fd00::/64"`, or one address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Source port or range (needs proto tcp or udp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<PortSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<PortSpec>,
}

fn default_weight() -> u32 {
    1
}

/// `[function] kind = "qos"`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct QosConfig {
    /// The class of packets no class matches.
    #[serde(rename = "default")]
    pub default_class: String,
    /// Link medium of the device's networks ("ethernet" or "ip").
    #[serde(default)]
    pub medium: MediumName,
    #[serde(default)]
    pub direction: Direction,
    /// Total rate of each direction's link; none: not shaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSpec>,
    /// Link bucket size in bytes (default as for classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// The classes, in match order (first match wins).
    #[serde(rename = "class")]
    pub classes: Vec<ClassConfig>,
}

/// Parses `"40mbit"`, `"1.5gbit"`, `"500kbit"`, `"8000bit"` or an integer
/// (bits per second); SI units (1 kbit = 1000 bit), like `tc`.
pub fn parse_rate(spec: &RateSpec) -> Result<u64, String> {
    let bits = match spec {
        RateSpec::Bits(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative"))?,
        RateSpec::Text(s) => {
            let t = s.trim().to_ascii_lowercase();
            let digits = t
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(t.len());
            let (num, unit) = t.split_at(digits);
            let scale: f64 = match unit.trim() {
                "" | "bit" | "bps" => 1.0,
                "kbit" => 1e3,
                "mbit" => 1e6,
                "gbit" => 1e9,
                "tbit" => 1e12,
                "kbps" | "mbps" | "gbps" => {
                    return Err(format!(
                        "{s:?}: tc reads {unit:?} as bytes per second; write kbit, mbit or gbit"
                    ));
                }
                _ => {
                    return Err(format!(
                        "{s:?} is not a rate (like \"500kbit\", \"40mbit\", \"1gbit\")"
                    ));
                }
            };
            let n: f64 = num
                .parse()
                .map_err(|_| format!("{s:?} is not a rate (like \"40mbit\")"))?;
            (n * scale).round() as u64
        }
    };
    if !(MIN_RATE..=MAX_RATE).contains(&bits) {
        return Err(format!("{bits} bit/s is outside 8kbit..=10000gbit"));
    }
    Ok(bits)
}

/// A class's protocol criterion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProtoMatch {
    Any,
    /// ICMP for IPv4 packets, ICMPv6 for IPv6 ones.
    Icmp,
    Number(u8),
}

/// A class's match criteria, compiled.
#[derive(Debug, Clone, PartialEq)]
struct Matcher {
    /// Bit `d` set: DSCP `d` matches; 0: any.
    dscp: u64,
    proto: ProtoMatch,
    src: Option<Prefix>,
    dst: Option<Prefix>,
    sport: Option<(u16, u16)>,
    dport: Option<(u16, u16)>,
}

impl Matcher {
    fn compile(c: &ClassConfig) -> Result<Matcher, String> {
        let name = &c.name;
        let mut dscp = 0u64;
        for &d in &c.dscp {
            if !(0..=63).contains(&d) {
                return Err(format!("class {name}: dscp {d} is not 0..=63"));
            }
            dscp |= 1 << d;
        }
        let proto = match &c.proto {
            None => ProtoMatch::Any,
            // QoS treats ping alike in both IP versions.
            Some(ProtoSpec::Name(s)) if s == "icmp" => ProtoMatch::Icmp,
            Some(p) => ProtoMatch::Number(parse_proto(p).ok_or_else(|| {
                format!("class {name}: proto {p:?} is not tcp, udp, icmp, icmpv6 or 0..=255")
            })?),
        };
        let owner = format!("class {name}");
        let prefix = |field: &str, s: &Option<String>| prefix_field(&owner, field, s.as_deref());
        let ports = |field: &str, p: &Option<PortSpec>| ports_field(&owner, field, p.as_ref());
        let m = Matcher {
            dscp,
            proto,
            src: prefix("src", &c.src)?,
            dst: prefix("dst", &c.dst)?,
            sport: ports("sport", &c.sport)?,
            dport: ports("dport", &c.dport)?,
        };
        let ported = matches!(m.proto, ProtoMatch::Number(PROTO_TCP | PROTO_UDP));
        if (m.sport.is_some() || m.dport.is_some()) && !ported {
            return Err(format!(
                "class {name}: sport/dport need proto = \"tcp\" or \"udp\""
            ));
        }
        if let (Some(s), Some(d)) = (m.src, m.dst)
            && s.v6 != d.v6
        {
            return Err(format!(
                "class {name}: src and dst are of different IP versions"
            ));
        }
        Ok(m)
    }

    fn matches(&self, p: &Packet) -> bool {
        let in_range = |r: Option<(u16, u16)>, port: u16| {
            r.is_none_or(|(lo, hi)| p.ports && lo <= port && port <= hi)
        };
        (self.dscp == 0 || self.dscp >> (p.tos >> 2) & 1 == 1)
            && match self.proto {
                ProtoMatch::Any => true,
                ProtoMatch::Icmp => p.proto == if p.v6 { PROTO_ICMPV6 } else { PROTO_ICMP },
                ProtoMatch::Number(n) => p.proto == n,
            }
            && self.src.is_none_or(|s| s.contains(p.v6, p.src))
            && self.dst.is_none_or(|d| d.contains(p.v6, p.dst))
            && in_range(self.sport, p.sport)
            && in_range(self.dport, p.dport)
    }
}

/// The parts of an IP packet classification looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packet {
    v6: bool,
    /// Offset of the IP header in the frame.
    ip: usize,
    /// TOS (IPv4) or traffic class (IPv6): DSCP in the upper six bits, ECN
    /// in the lower two.
    tos: u8,
    proto: u8,
    src: u128,
    dst: u128,
    /// Whether `sport`/`dport` were read (TCP/UDP, not a later fragment).
    ports: bool,
    sport: u16,
    dport: u16,
}

/// The outcome of parsing a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parsed {
    /// Not IP, or IP the network needs to work (neighbour discovery, MLD):
    /// passes unqueued.
    Control,
    Ip(Packet),
    Malformed,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn parse(medium: MediumName, f: &[u8]) -> Parsed {
    match medium {
        MediumName::Ethernet => {
            if f.len() < 14 {
                return Parsed::Malformed;
            }
            match be16(f, 12) {
                0x0800 => parse_ipv4(f, 14),
                0x86dd => parse_ipv6(f, 14),
                _ => Parsed::Control,
            }
        }
        MediumName::Ip => match f.first().map(|b| b >> 4) {
            Some(4) => parse_ipv4(f, 0),
            Some(6) => parse_ipv6(f, 0),
            _ => Parsed::Malformed,
        },
    }
}

fn parse_ipv4(f: &[u8], ip: usize) -> Parsed {
    let b = &f[ip..];
    if b.len() < 20 || b[0] >> 4 != 4 {
        return Parsed::Malformed;
    }
    let hl = usize::from(b[0] & 0x0f) * 4;
    let total = usize::from(be16(b, 2));
    if hl < 20 || total < hl || total > b.len() {
        return Parsed::Malformed;
    }
    let word = |at: usize| u128::from(u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]));
    let p = Packet {
        v6: false,
        ip,
        tos: b[1],
        proto: b[9],
        src: word(12),
        dst: word(16),
        ports: false,
        sport: 0,
        dport: 0,
    };
    let later_fragment = be16(b, 6) & 0x1fff != 0;
    transport(p, &b[hl..total], later_fragment)
}

fn parse_ipv6(f: &[u8], ip: usize) -> Parsed {
    let b = &f[ip..];
    if b.len() < 40 || b[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let end = 40 + usize::from(be16(b, 4));
    if end > b.len() {
        return Parsed::Malformed;
    }
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[at..at + 16]);
        u128::from_be_bytes(a)
    };
    let mut p = Packet {
        v6: true,
        ip,
        tos: (b[0] << 4) | (b[1] >> 4),
        proto: b[6],
        src: addr(8),
        dst: addr(24),
        ports: false,
        sport: 0,
        dport: 0,
    };
    let mut rest = &b[40..end];
    for _ in 0..MAX_EXTENSION_HEADERS {
        let len = match p.proto {
            // Hop-by-hop, routing, destination options.
            0 | 43 | 60 => match rest.get(1) {
                Some(&l) => (usize::from(l) + 1) * 8,
                None => return Parsed::Malformed,
            },
            // Authentication header.
            51 => match rest.get(1) {
                Some(&l) => (usize::from(l) + 2) * 4,
                None => return Parsed::Malformed,
            },
            // Fragment.
            44 => {
                let Some(h) = rest.get(..8) else {
                    return Parsed::Malformed;
                };
                if be16(h, 2) & 0xfff8 != 0 {
                    p.proto = h[0];
                    return transport(p, &[], true);
                }
                8
            }
            _ => return transport(p, rest, false),
        };
        let Some(h) = rest.get(..len) else {
            return Parsed::Malformed;
        };
        p.proto = h[0];
        rest = &rest[len..];
    }
    Parsed::Malformed
}

/// Reads the ports of TCP and UDP; `later_fragment`: no transport header.
fn transport(mut p: Packet, l4: &[u8], later_fragment: bool) -> Parsed {
    if later_fragment {
        return Parsed::Ip(p);
    }
    let need = match p.proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        PROTO_ICMPV6 if p.v6 => {
            return match l4.first() {
                // MLD, router/neighbour discovery, redirect, MLDv2 report.
                Some(130..=137 | 143) => Parsed::Control,
                Some(_) => Parsed::Ip(p),
                None => Parsed::Malformed,
            };
        }
        _ => return Parsed::Ip(p),
    };
    if l4.len() < need {
        return Parsed::Malformed;
    }
    p.ports = true;
    p.sport = be16(l4, 0);
    p.dport = be16(l4, 2);
    Parsed::Ip(p)
}

/// Sets ECN to CE in an IP packet that is ECN-capable (ECT(0) or ECT(1));
/// returns whether it marked. The IPv4 header checksum is updated
/// incrementally (RFC 1624, eqn. 3), so a wrong checksum stays wrong.
fn mark_ce(ip: &mut [u8], v6: bool) -> bool {
    if v6 {
        // Traffic class straddles bytes 0 and 1: ECN is bits 4-5 of byte 1.
        let Some(b) = ip.get_mut(1) else { return false };
        if matches!((*b >> 4) & 3, 1 | 2) {
            *b |= 0x30;
            return true;
        }
        return false;
    }
    if ip.len() < 20 || !matches!(ip[1] & 3, 1 | 2) {
        return false;
    }
    let old = be16(ip, 0);
    ip[1] |= 3;
    let new = be16(ip, 0);
    let hc = be16(ip, 10);
    let sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    true
}

/// A token bucket in units of 10^-6 bit (see [`UNITS_PER_BYTE`]).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    rate: u64,
    burst_bytes: u64,
    burst: i64,
    tokens: i64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64, burst_bytes: u64) -> Bucket {
        let burst = burst_bytes as i64 * UNITS_PER_BYTE;
        Bucket {
            rate,
            burst_bytes,
            burst,
            tokens: burst,
            last: Instant::ZERO,
        }
    }

    /// Adds the tokens earned since the last refill. Time going backwards
    /// earns nothing.
    fn refill(&mut self, now: Instant) {
        if now <= self.last {
            return;
        }
        let us = (now - self.last).total_micros();
        // Earn at most what fills the bucket (tokens may be negative).
        let room = (self.burst - self.tokens).max(0) as u128;
        let earned = (u128::from(self.rate) * u128::from(us)).min(room) as i64;
        self.tokens += earned;
        self.last = now;
    }

    /// What a frame of `len` bytes needs: all of it, or a full bucket when
    /// it is bigger than the burst.
    fn need(&self, len: usize) -> i64 {
        (len as u64).min(self.burst_bytes) as i64 * UNITS_PER_BYTE
    }

    fn allows(&self, len: usize) -> bool {
        self.tokens >= self.need(len)
    }

    fn take(&mut self, len: usize) {
        self.tokens = self.tokens.saturating_sub(len as i64 * UNITS_PER_BYTE);
    }

    /// When (after the last refill) the bucket allows `len` bytes.
    fn ready_at(&self, len: usize) -> Instant {
        let missing = self.need(len) - self.tokens;
        if missing <= 0 {
            return self.last;
        }
        let us = (missing as u64).div_ceil(self.rate);
        self.last + smoltcp::time::Duration::from_micros(us)
    }

    /// Same tokens and time, new parameters (for reconfigure).
    fn retuned(&self, rate: u64, burst_bytes: u64) -> Bucket {
        let mut b = Bucket::new(rate, burst_bytes);
        b.tokens = self.tokens.min(b.burst);
        b.last = self.last;
        b
    }
}

/// A FIFO of frames in one byte ring: `cap` bytes, allocated on first use
/// and reused; frames wrap around the end.
#[derive(Debug, Default)]
struct Ring {
    buf: Vec<u8>,
    cap: usize,
    head: usize,
    used: usize,
    lens: VecDeque<u32>,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        Ring {
            cap,
            ..Ring::default()
        }
    }

    fn front_len(&self) -> Option<usize> {
        self.lens.front().map(|&l| l as usize)
    }

    fn fits(&self, len: usize) -> bool {
        len <= self.cap - self.used
    }

    /// Appends a frame; `false` (and no change) if it does not fit.
    fn push(&mut self, f: &[u8]) -> bool {
        if !self.fits(f.len()) {
            return false;
        }
        if self.buf.len() != self.cap {
            self.buf = vec![0; self.cap];
        }
        let mut tail = self.head + self.used;
        if tail >= self.cap {
            tail -= self.cap;
        }
        let first = f.len().min(self.cap - tail);
        self.buf[tail..tail + first].copy_from_slice(&f[..first]);
        self.buf[..f.len() - first].copy_from_slice(&f[first..]);
        self.used += f.len();
        self.lens.push_back(f.len() as u32);
        true
    }

    /// Removes the head frame, copying it into `out` if it fits there;
    /// returns its length.
    fn pop_into(&mut self, out: &mut [u8]) -> Option<usize> {
        let len = self.lens.pop_front()? as usize;
        if len <= out.len() {
            let first = len.min(self.cap - self.head);
            out[..first].copy_from_slice(&self.buf[self.head..self.head + first]);
            out[first..len].copy_from_slice(&self.buf[..len - first]);
        }
        self.used -= len;
        self.head += len;
        if self.head >= self.cap {
            self.head -= self.cap;
        }
        if self.used == 0 {
            // Start over at the front: a queue that keeps emptying stays
            // in the same (cached) bytes.
            self.head = 0;
        }
        Some(len)
    }
}

/// Counters of one class (both directions together).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClassStats {
    /// Frames released.
    pub packets: u64,
    /// Bytes released.
    pub bytes: u64,
    /// Frames dropped because the queue was full.
    pub dropped: u64,
    /// Frames CE-marked.
    pub marked: u64,
}

/// Counters of the whole function, beyond the per-class ones.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QosStats {
    /// Frames passed unqueued: non-IP, neighbour discovery, the
    /// unscheduled direction.
    pub passed: u64,
    /// Malformed or truncated IP frames (dropped).
    pub malformed: u64,
    /// Frames queued.
    pub enqueued: u64,
    /// Frames too big for the output buffer, or dropped by a
    /// reconfiguration that removed their class and found no room.
    pub discarded: u64,
}

/// A class, compiled.
#[derive(Debug, Clone)]
struct Class {
    name: String,
    matcher: Matcher,
    priority: u32,
    weight: u32,
    rate: Option<u64>,
    burst: u64,
    queue: usize,
    mark: bool,
    mark_at: usize,
    stats: ClassStats,
}

/// A class's state on one link.
#[derive(Debug)]
struct ClassQueue {
    ring: Ring,
    bucket: Option<Bucket>,
    deficit: i64,
}

/// One priority level's DRR state.
#[derive(Debug, Clone)]
struct Level {
    members: Vec<usize>,
    /// Frames queued in the level's classes (0: skip the level at once).
    frames: usize,
    cursor: usize,
    /// The class at `cursor` already got its quantum this turn.
    granted: bool,
}

impl Level {
    fn advance(&mut self) {
        // No division: this runs for every packet.
        self.cursor += 1;
        if self.cursor == self.members.len() {
            self.cursor = 0;
        }
        self.granted = false;
    }
}

/// One direction's link: a queue per class, the link bucket, the scheduler.
#[derive(Debug)]
struct Link {
    queues: Vec<ClassQueue>,
    bucket: Option<Bucket>,
    levels: Vec<Level>,
    /// Each class's index in `levels`.
    level_of: Vec<usize>,
    quantum_unit: usize,
}

impl Link {
    fn new(classes: &[Class], link: Option<Bucket>) -> Link {
        let mut prios: Vec<u32> = classes.iter().map(|c| c.priority).collect();
        prios.sort_unstable();
        prios.dedup();
        let levels = prios
            .iter()
            .map(|&p| Level {
                members: (0..classes.len())
                    .filter(|&i| classes[i].priority == p)
                    .collect(),
                frames: 0,
                cursor: 0,
                granted: false,
            })
            .collect();
        let level_of = classes
            .iter()
            .map(|c| prios.iter().position(|&p| p == c.priority).unwrap_or(0))
            .collect();
        Link {
            queues: classes
                .iter()
                .map(|c| ClassQueue {
                    ring: Ring::new(c.queue),
                    bucket: c.rate.map(|r| Bucket::new(r, c.burst)),
                    deficit: 0,
                })
                .collect(),
            bucket: link,
            levels,
            level_of,
            quantum_unit: MIN_QUANTUM_UNIT,
        }
    }

    /// The class whose head frame goes next, by strict priority then DRR;
    /// refills the buckets it looks at.
    fn select(&mut self, now: Instant, classes: &[Class]) -> Option<usize> {
        let unit = self.quantum_unit as i64;
        for level in &mut self.levels {
            if level.frames == 0 {
                continue;
            }
            let n = level.members.len();
            // One turn round the level grants every eligible class a
            // quantum, which covers any frame: 2n + 1 steps always suffice.
            for _ in 0..2 * n + 1 {
                let c = level.members[level.cursor];
                let q = &mut self.queues[c];
                let Some(head) = q.ring.front_len() else {
                    q.deficit = 0;
                    level.advance();
                    continue;
                };
                if let Some(b) = &mut q.bucket {
                    b.refill(now);
                    if !b.allows(head) {
                        // Held back by its own rate: like an idle class it
                        // keeps no credit, or credit would pile up turn
                        // after turn and later let it hog the level.
                        q.deficit = 0;
                        level.advance();
                        continue;
                    }
                }
                if !level.granted {
                    q.deficit += i64::from(classes[c].weight) * unit;
                    level.granted = true;
                }
                if head as i64 <= q.deficit {
                    return Some(c);
                }
                level.advance();
            }
        }
        None
    }

    /// Releases the next frame into `out`; `Err(len)` for one that did not
    /// fit there (discarded).
    fn dequeue(
        &mut self,
        now: Instant,
        out: &mut [u8],
        classes: &mut [Class],
    ) -> Option<Result<usize, usize>> {
        let c = self.select(now, classes)?;
        let head = self.queues[c].ring.front_len()?;
        if let Some(b) = &mut self.bucket {
            b.refill(now);
            if !b.allows(head) {
                return None;
            }
            b.take(head);
        }
        let q = &mut self.queues[c];
        let len = q.ring.pop_into(out)?;
        self.levels[self.level_of[c]].frames -= 1;
        q.deficit -= len as i64;
        if let Some(b) = &mut q.bucket {
            b.take(len);
        }
        if q.ring.front_len().is_none() {
            q.deficit = 0;
            let level = &mut self.levels[self.level_of[c]];
            if level.members[level.cursor] == c {
                level.advance();
            }
        }
        if len > out.len() {
            return Some(Err(len));
        }
        let s = &mut classes[c].stats;
        s.packets += 1;
        s.bytes += len as u64;
        Some(Ok(len))
    }

    /// When the next backlogged class can send (not before `now`).
    fn ready_at(&self, now: Instant) -> Option<Instant> {
        let mut best: Option<(Instant, usize)> = None;
        for q in &self.queues {
            let Some(head) = q.ring.front_len() else {
                continue;
            };
            let at = q.bucket.map_or(now, |b| b.ready_at(head).max(now));
            if best.is_none_or(|(t, _)| at < t) {
                best = Some((at, head));
            }
        }
        let (at, head) = best?;
        Some(self.bucket.map_or(at, |b| b.ready_at(head).max(at)))
    }

    /// Recounts each level's frames (after queues moved in wholesale).
    fn recount(&mut self) {
        for level in &mut self.levels {
            level.frames = level
                .members
                .iter()
                .map(|&c| self.queues[c].ring.lens.len())
                .sum();
        }
    }

    fn queued_bytes(&self, c: usize) -> u64 {
        self.queues[c].ring.used as u64
    }
}

/// The QoS function.
pub struct Qos {
    medium: MediumName,
    direction: Direction,
    classes: Vec<Class>,
    default: usize,
    /// `[out, in]`: frames from the local network, from the global one.
    links: [Link; 2],
    /// Link polled first by the next release (the two take turns).
    next_link: usize,
    now: Instant,
    stats: QosStats,
}

fn default_burst(rate: u64) -> u64 {
    // 10 ms at the rate: covers a device's wake-up latency many times over.
    (rate / 8 / 100).max(2 * 1514)
}

impl Qos {
    pub fn new(cfg: QosConfig) -> Result<Qos, FunctionError> {
        let bad = |why: String| FunctionError::Invalid { kind: "qos", why };
        if cfg.classes.is_empty() {
            return Err(bad("give at least one class".into()));
        }
        let mut classes = Vec::new();
        for c in &cfg.classes {
            let name = &c.name;
            if name.is_empty()
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                return Err(bad(format!(
                    "class name {name:?} must be letters, digits, '-' or '_'"
                )));
            }
            if classes.iter().any(|o: &Class| &o.name == name) {
                return Err(bad(format!("class {name} is defined twice")));
            }
            if c.priority > MAX_PRIORITY {
                return Err(bad(format!(
                    "class {name}: priority {} is not 0..={MAX_PRIORITY}",
                    c.priority
                )));
            }
            if !(1..=MAX_WEIGHT).contains(&c.weight) {
                return Err(bad(format!(
                    "class {name}: weight {} is not 1..={MAX_WEIGHT}",
                    c.weight
                )));
            }
            let rate = c
                .rate
                .as_ref()
                .map(parse_rate)
                .transpose()
                .map_err(|e| bad(format!("class {name}: rate {e}")))?;
            let burst = match (rate, c.burst) {
                (None, Some(_)) => {
                    return Err(bad(format!("class {name}: burst needs a rate")));
                }
                (Some(_), Some(b)) if !(1..=MAX_QUEUE).contains(&b) => {
                    return Err(bad(format!(
                        "class {name}: burst {b} is not 1..={MAX_QUEUE} bytes"
                    )));
                }
                (Some(r), b) => b.unwrap_or_else(|| default_burst(r)),
                (None, None) => 0,
            };
            let queue = c.queue.unwrap_or(DEFAULT_QUEUE);
            if !(MIN_QUEUE..=MAX_QUEUE).contains(&queue) {
                return Err(bad(format!(
                    "class {name}: queue {queue} is not {MIN_QUEUE}..={MAX_QUEUE} bytes"
                )));
            }
            let mark = c.over_limit == OverLimit::Mark;
            let mark_at = match (mark, c.mark_at) {
                (false, Some(_)) => {
                    return Err(bad(format!(
                        "class {name}: mark_at needs over_limit = \"mark\""
                    )));
                }
                (true, Some(m)) if m > queue => {
                    return Err(bad(format!(
                        "class {name}: mark_at {m} is larger than the queue ({queue})"
                    )));
                }
                (_, m) => m.unwrap_or(queue / 2),
            };
            classes.push(Class {
                name: name.clone(),
                matcher: Matcher::compile(c).map_err(bad)?,
                priority: c.priority,
                weight: c.weight,
                rate,
                burst,
                queue: queue as usize,
                mark,
                mark_at: mark_at as usize,
                stats: ClassStats::default(),
            });
        }
        let default = classes
            .iter()
            .position(|c| c.name == cfg.default_class)
            .ok_or_else(|| {
                bad(format!(
                    "default class {:?} is not one of the classes",
                    cfg.default_class
                ))
            })?;
        let link_rate = cfg
            .rate
            .as_ref()
            .map(parse_rate)
            .transpose()
            .map_err(|e| bad(format!("rate {e}")))?;
        let link = match (link_rate, cfg.burst) {
            (None, Some(_)) => return Err(bad("burst needs a rate".into())),
            (Some(_), Some(b)) if !(1..=MAX_QUEUE).contains(&b) => {
                return Err(bad(format!("burst {b} is not 1..={MAX_QUEUE} bytes")));
            }
            (Some(r), b) => Some(Bucket::new(r, b.unwrap_or_else(|| default_burst(r)))),
            (None, None) => None,
        };
        Ok(Qos {
            medium: cfg.medium,
            direction: cfg.direction,
            links: [Link::new(&classes, link), Link::new(&classes, link)],
            classes,
            default,
            next_link: 0,
            now: Instant::ZERO,
            stats: QosStats::default(),
        })
    }

    pub fn stats(&self) -> &QosStats {
        &self.stats
    }

    /// A class's counters, by name.
    pub fn class_stats(&self, name: &str) -> Option<ClassStats> {
        self.classes
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.stats)
    }

    /// Bytes queued in a class (both directions).
    pub fn queued_bytes(&self, name: &str) -> Option<u64> {
        let c = self.classes.iter().position(|c| c.name == name)?;
        Some(self.links.iter().map(|l| l.queued_bytes(c)).sum())
    }

    /// Frames queued in all classes.
    pub fn queued_frames(&self) -> usize {
        self.links
            .iter()
            .flat_map(|l| &l.queues)
            .map(|q| q.ring.lens.len())
            .sum()
    }

    /// The class a frame goes to (`None`: it passes unqueued or is
    /// malformed).
    pub fn classify(&self, frame: &[u8]) -> Option<&str> {
        match parse(self.medium, frame) {
            Parsed::Ip(p) => Some(&self.classes[self.class_of(&p)].name),
            _ => None,
        }
    }

    fn class_of(&self, p: &Packet) -> usize {
        self.classes
            .iter()
            .position(|c| c.matcher.matches(p))
            .unwrap_or(self.default)
    }

    /// Classifies a frame from `from` and queues it (`Consumed`), or lets
    /// it pass, or drops it.
    fn admit(&mut self, now: Instant, from: Role, frame: &mut Frame<'_>) -> Verdict {
        self.now = now;
        let link = match (self.direction, from) {
            (Direction::Both | Direction::Out, Role::Local) => 0,
            (Direction::Both | Direction::In, Role::Global) => 1,
            _ => {
                self.stats.passed += 1;
                return Verdict::Pass;
            }
        };
        let p = match parse(self.medium, frame.bytes()) {
            Parsed::Ip(p) => p,
            Parsed::Control => {
                self.stats.passed += 1;
                return Verdict::Pass;
            }
            Parsed::Malformed => {
                self.stats.malformed += 1;
                return Verdict::Drop;
            }
        };
        let c = self.class_of(&p);
        let class = &mut self.classes[c];
        let l = &mut self.links[link];
        let ring = &mut l.queues[c].ring;
        let len = frame.len();
        if !ring.fits(len) {
            class.stats.dropped += 1;
            return Verdict::Drop;
        }
        if class.mark && ring.used >= class.mark_at && mark_ce(&mut frame.bytes_mut()[p.ip..], p.v6)
        {
            class.stats.marked += 1;
        }
        ring.push(frame.bytes());
        l.levels[l.level_of[c]].frames += 1;
        l.quantum_unit = l.quantum_unit.max(len);
        self.stats.enqueued += 1;
        Verdict::Consumed
    }

    /// Releases the next frame in scheduler order into `out` (the two
    /// directions take turns); returns its length, or `None` when nothing
    /// may leave yet (see [`Function::poll_at`]).
    pub fn release(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        self.now = now;
        for k in 0..2 {
            let i = (self.next_link + k) % 2;
            // A frame too big for `out` is discarded; try the next one
            // (bounded by the frames queued).
            while let Some(r) = self.links[i].dequeue(now, out, &mut self.classes) {
                match r {
                    Ok(len) => {
                        self.next_link = i ^ 1;
                        return Some(len);
                    }
                    Err(_) => self.stats.discarded += 1,
                }
            }
        }
        None
    }

    /// When a queued frame can next leave: `now` (of the last call) if one
    /// can already; `None` when nothing is queued.
    pub fn next_release(&self) -> Option<Instant> {
        self.links.iter().filter_map(|l| l.ready_at(self.now)).min()
    }

    /// Applies a changed configuration in place: classes keep their queued
    /// frames, bucket levels and counters by name; the frames of a class
    /// that is gone move to the new default class (discarded if it has no
    /// room).
    pub fn reconfigure(&mut self, cfg: &QosConfig) -> Result<(), FunctionError> {
        let mut next = Qos::new(cfg.clone())?;
        let mut scratch = vec![0u8; 1 << 17];
        for (li, old) in self.links.iter_mut().enumerate() {
            let new = &mut next.links[li];
            if let (Some(o), Some(n)) = (&old.bucket, &new.bucket) {
                new.bucket = Some(o.retuned(n.rate, n.burst_bytes));
            }
            new.quantum_unit = old.quantum_unit;
            for (oi, oq) in old.queues.iter_mut().enumerate() {
                let name = &self.classes[oi].name;
                let ni = next.classes.iter().position(|c| &c.name == name);
                let target = ni.unwrap_or(next.default);
                let nq = &mut new.queues[target];
                if let Some(ni) = ni {
                    if let (Some(o), Some(n)) = (&oq.bucket, &nq.bucket) {
                        nq.bucket = Some(o.retuned(n.rate, n.burst_bytes));
                    }
                    nq.deficit = oq.deficit;
                    if nq.ring.cap == oq.ring.cap && nq.ring.used == 0 {
                        std::mem::swap(&mut nq.ring, &mut oq.ring);
                    }
                    next.classes[ni].stats = self.classes[oi].stats;
                }
                while let Some(len) = oq.ring.pop_into(&mut scratch) {
                    if len > scratch.len() || !nq.ring.push(&scratch[..len]) {
                        next.stats.discarded += 1;
                    }
                }
            }
        }
        for l in &mut next.links {
            l.recount();
        }
        next.stats.passed += self.stats.passed;
        next.stats.malformed += self.stats.malformed;
        next.stats.enqueued += self.stats.enqueued;
        next.stats.discarded += self.stats.discarded;
        next.now = self.now;
        next.next_link = self.next_link;
        *self = next;
        Ok(())
    }
}

impl Function for Qos {
    fn name(&self) -> &'static str {
        "qos"
    }

    fn on_ingress(&mut self, now: Instant, from: Role, frame: &mut Frame<'_>) -> Verdict {
        self.admit(now, from, frame)
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Emit> {
        self.release(now, buf).map(|len| Emit { len, via: None })
    }

    fn poll_at(&self) -> Option<Instant> {
        self.next_release()
    }

    fn reconfigure(&mut self, cfg: &dyn crate::stack::FunctionSpec) -> Result<bool, FunctionError> {
        let Some(cfg) = cfg.downcast_ref::<FunctionConfig>() else {
            return Ok(false);
        };
        Ok((|| -> bool {
            match cfg {
                FunctionConfig::Qos(c) => Qos::reconfigure(self, c).is_ok(),
                _ => false,
            }
        })())
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        let pairs: Vec<(String, u64)> = (|| {
            let mut out = Vec::with_capacity(self.classes.len() * 5 + 10);
            let mut total = ClassStats::default();
            let mut queued = 0;
            for (i, c) in self.classes.iter().enumerate() {
                let q: u64 = self.links.iter().map(|l| l.queued_bytes(i)).sum();
                let s = c.stats;
                out.extend([
                    (format!("class.{}.packets", c.name), s.packets),
                    (format!("class.{}.bytes", c.name), s.bytes),
                    (format!("class.{}.dropped", c.name), s.dropped),
                    (format!("class.{}.marked", c.name), s.marked),
                    (format!("class.{}.queued_bytes", c.name), q),
                ]);
                total.packets += s.packets;
                total.bytes += s.bytes;
                total.dropped += s.dropped;
                total.marked += s.marked;
                queued += q;
            }
            out.extend([
                ("packets".into(), total.packets),
                ("bytes".into(), total.bytes),
                ("dropped".into(), total.dropped),
                ("marked".into(), total.marked),
                ("queued_bytes".into(), queued),
                ("queued_packets".into(), self.queued_frames() as u64),
                ("enqueued".into(), self.stats.enqueued),
                ("passed".into(), self.stats.passed),
                ("malformed".into(), self.stats.malformed),
                ("discarded".into(), self.stats.discarded),
            ]);
            out
        })();
        for (n, v) in pairs {
            visit(&n, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::ipv4_header_checksum;

    fn qos(text: &str) -> Qos {
        Qos::new(toml::from_str(text).expect("test config parses")).expect("valid config")
    }

    fn t(ms: i64) -> Instant {
        Instant::from_millis(1000 + ms)
    }

    /// Ethernet + IPv4 + 20 bytes of TCP (or 8 of UDP) + `payload` bytes;
    /// `tos` is the whole TOS byte (DSCP << 2 | ECN).
    fn v4(
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        ports: (u16, u16),
        tos: u8,
        payload: usize,
    ) -> Vec<u8> {
        let l4 = if proto == PROTO_TCP { 20 } else { 8 };
        let total = 20 + l4 + payload;
        let mut f = vec![0u8; 14 + total];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[1] = tos;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let sum = ipv4_header_checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        ip[20..22].copy_from_slice(&ports.0.to_be_bytes());
        ip[22..24].copy_from_slice(&ports.1.to_be_bytes());
        if proto == PROTO_TCP {
            ip[32] = 5 << 4;
        }
        for (i, b) in ip[20 + l4..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    fn tcp(dport: u16, payload: usize) -> Vec<u8> {
        v4(
            [10, 0, 0, 1],
            [10, 1, 0, 2],
            PROTO_TCP,
            (40000, dport),
            0,
            payload,
        )
    }

    /// Ethernet + IPv6 (traffic class `tc`) + UDP.
    fn v6(src_last: u8, dst_last: u8, tc: u8, ports: (u16, u16)) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 8 + 16];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        let ip = &mut f[14..];
        ip[0] = 0x60 | tc >> 4;
        ip[1] = tc << 4;
        ip[4..6].copy_from_slice(&24u16.to_be_bytes());
        ip[6] = PROTO_UDP;
        ip[7] = 64;
        ip[8] = 0xfd;
        ip[23] = src_last;
        ip[24] = 0xfd;
        ip[25] = 0x02;
        ip[39] = dst_last;
        ip[40..42].copy_from_slice(&ports.0.to_be_bytes());
        ip[42..44].copy_from_slice(&ports.1.to_be_bytes());
        f
    }

    fn ingress(q: &mut Qos, now: Instant, from: Role, bytes: &[u8]) -> Verdict {
        let mut buf = bytes.to_vec();
        let len = buf.len();
        q.on_ingress(
            now,
            from,
            &mut Frame::new(&mut buf, len, crate::wire::LinkMedium::Ethernet),
        )
    }

    /// Releases everything that may leave at `now`: the frames.
    fn drain(q: &mut Qos, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Some(len) = q.release(now, &mut buf) {
            out.push(buf[..len].to_vec());
        }
        out
    }

    fn counter(q: &Qos, name: &str) -> u64 {
        crate::stack::hook::counters_of(q)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    const CLASSES: &str = r#"
        default = "rest"
        [[class]]
        name = "voice"
        dscp = [46, 34]
        [[class]]
        name = "web"
        proto = "tcp"
        dst = "10.1.0.0/16"
        dport = "80-443"
        [[class]]
        name = "dns6"
        proto = "udp"
        src = "fd00::/16"
        sport = 53
        [[class]]
        name = "ping"
        proto = "icmp"
        [[class]]
        name = "gre"
        proto = 47
        [[class]]
        name = "rest"
    "#;

    #[test]
    fn classifies_by_dscp_proto_prefix_and_ports_first_match_wins() {
        let q = qos(CLASSES);
        let c = |f: &[u8]| q.classify(f).map(str::to_owned);
        let (a, b) = ([10, 0, 0, 1], [10, 1, 0, 2]);
        assert_eq!(
            c(&v4(a, b, PROTO_TCP, (1, 80), 0, 0)).as_deref(),
            Some("web")
        );
        assert_eq!(
            c(&v4(a, b, PROTO_TCP, (1, 443), 0, 10)).as_deref(),
            Some("web")
        );
        assert_eq!(
            c(&v4(a, b, PROTO_TCP, (1, 444), 0, 0)).as_deref(),
            Some("rest")
        );
        assert_eq!(
            c(&v4(a, [10, 2, 0, 2], PROTO_TCP, (1, 80), 0, 0)).as_deref(),
            Some("rest")
        );
        // DSCP EF (46), ECN bits ignored; the voice class comes first.
        assert_eq!(
            c(&v4(a, b, PROTO_TCP, (1, 80), 46 << 2 | 1, 0)).as_deref(),
            Some("voice")
        );
        assert_eq!(
            c(&v4(a, b, PROTO_UDP, (1, 2), 34 << 2, 0)).as_deref(),
            Some("voice")
        );
        assert_eq!(
            c(&v4(a, b, PROTO_UDP, (1, 2), 45 << 2, 0)).as_deref(),
            Some("rest")
        );
        assert_eq!(
            c(&v4(a, b, PROTO_ICMP, (0x0800, 0), 0, 0)).as_deref(),
            Some("ping")
        );
        assert_eq!(c(&v4(a, b, 47, (0, 0), 0, 0)).as_deref(), Some("gre"));
        // IPv6: prefix, port, DSCP in the traffic class.
        assert_eq!(c(&v6(1, 2, 0, (53, 9000))).as_deref(), Some("dns6"));
        assert_eq!(c(&v6(1, 2, 0, (54, 9000))).as_deref(), Some("rest"));
        assert_eq!(c(&v6(1, 2, 46 << 2, (53, 9000))).as_deref(), Some("voice"));
        // The same on a bare-IP medium.
        let ip = qos(&format!("medium = \"ip\"\n{CLASSES}"));
        assert_eq!(ip.classify(&v6(1, 2, 0, (53, 1))[14..]), Some("dns6"));
        assert_eq!(
            ip.classify(&v4(a, b, PROTO_TCP, (1, 80), 0, 0)[14..]),
            Some("web")
        );
        // A later fragment has no ports: port classes do not match it.
        let mut frag = v4(a, b, PROTO_TCP, (1, 80), 0, 0);
        frag[14 + 7] = 8;
        assert_eq!(c(&frag).as_deref(), Some("rest"));
        // ARP and neighbour discovery are not classified.
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(c(&arp), None);
    }

    #[test]
    fn arp_and_neighbour_discovery_pass_unqueued() {
        let mut q = qos(CLASSES);
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(ingress(&mut q, t(0), Role::Local, &arp), Verdict::Pass);
        let mut ns = v6(1, 2, 0, (0, 0));
        ns[14 + 6] = PROTO_ICMPV6;
        ns[14 + 40] = 135;
        assert_eq!(ingress(&mut q, t(0), Role::Global, &ns), Verdict::Pass);
        // An echo request over ICMPv6 is ordinary traffic ("icmp" class).
        ns[14 + 40] = 128;
        assert_eq!(ingress(&mut q, t(0), Role::Global, &ns), Verdict::Consumed);
        assert_eq!(counter(&q, "passed"), 2);
        assert_eq!(drain(&mut q, t(0)), vec![ns]);
        assert_eq!(counter(&q, "class.ping.packets"), 1);
    }

    #[test]
    fn token_bucket_shapes_to_the_rate_and_says_when_to_come_back() {
        // 8 Mbit/s = 1000 bytes per ms; burst 3000 bytes.
        let mut q = qos(r#"
            default = "a"
            [[class]]
            name = "a"
            rate = "8mbit"
            burst = 3000
            "#);
        let f = tcp(80, 1000 - 54);
        assert_eq!(f.len(), 1000);
        for _ in 0..200 {
            assert_eq!(ingress(&mut q, t(0), Role::Local, &f), Verdict::Consumed);
        }
        // The full bucket lets the burst out at once, then nothing.
        assert_eq!(drain(&mut q, t(0)).len(), 3);
        assert_eq!(q.poll_at(), Some(t(1)));
        assert_eq!(
            drain(&mut q, t(0) + smoltcp::time::Duration::from_micros(999)).len(),
            0
        );
        assert_eq!(drain(&mut q, t(1)).len(), 1);
        // Polled every 10 ms for a second: one frame per ms on average.
        let mut sent = 4;
        for ms in (11..=1001).step_by(10) {
            sent += drain(&mut q, t(ms)).len();
        }
        assert_eq!(sent, 200);
        // A late poll does not earn more than the burst.
        for _ in 0..10 {
            ingress(&mut q, t(1001), Role::Local, &f);
        }
        assert_eq!(drain(&mut q, t(5000)).len(), 3);
        assert_eq!(counter(&q, "class.a.bytes"), 203 * 1000);
        assert_eq!(counter(&q, "class.a.queued_bytes"), 7000);
        assert_eq!(q.poll_at(), Some(t(5001)));
    }

    #[test]
    fn frames_bigger_than_the_burst_still_leave_at_the_rate() {
        let mut q = qos(r#"
            default = "a"
            [[class]]
            name = "a"
            rate = "8mbit"
            burst = 1500
            "#);
        let f = tcp(80, 9000 - 54);
        for _ in 0..4 {
            ingress(&mut q, t(0), Role::Local, &f);
        }
        assert_eq!(drain(&mut q, t(0)).len(), 1);
        // 7500 bytes in debt, plus 1500 to have a full bucket again: 9 ms,
        // the time 9000 bytes take at the rate.
        assert_eq!(q.poll_at(), Some(t(9)));
        assert_eq!(drain(&mut q, t(8)).len(), 0);
        assert_eq!(drain(&mut q, t(9)).len(), 1);
    }

    #[test]
    fn drr_shares_a_shaped_link_by_weight() {
        let mut q = qos(r#"
            default = "b"
            rate = "8mbit"
            burst = 2000
            [[class]]
            name = "a"
            weight = 3
            dport = 1
            proto = "tcp"
            [[class]]
            name = "b"
            weight = 1
            "#);
        // Different sizes: DRR shares bytes, not packets.
        let (fa, fb) = (tcp(1, 1000 - 54), tcp(2, 400 - 54));
        for _ in 0..1000 {
            ingress(&mut q, t(0), Role::Local, &fa);
            ingress(&mut q, t(0), Role::Local, &fb);
        }
        // 1000 bytes per ms; 400 ms: 400 kB, both classes backlogged.
        for ms in 0..400 {
            drain(&mut q, t(ms));
        }
        let a = counter(&q, "class.a.bytes") as f64;
        let b = counter(&q, "class.b.bytes") as f64;
        assert!((a + b - 400e3).abs() < 3000.0, "{a} {b}");
        assert!((a / b - 3.0).abs() < 0.05, "{a} {b}");
    }

    #[test]
    fn strict_priority_serves_higher_levels_first_unless_they_are_shaped() {
        let mut q = qos(r#"
            default = "low"
            [[class]]
            name = "high"
            priority = 0
            rate = "8mbit"
            burst = 2000
            proto = "udp"
            [[class]]
            name = "low"
            priority = 3
            "#);
        let (hi, lo) = (
            v4([10, 0, 0, 1], [10, 1, 0, 2], PROTO_UDP, (1, 1), 0, 500 - 42),
            tcp(2, 500 - 54),
        );
        for _ in 0..10 {
            ingress(&mut q, t(0), Role::Local, &lo);
            ingress(&mut q, t(0), Role::Local, &hi);
        }
        let out = drain(&mut q, t(0));
        // The high class's burst first, then (it is out of tokens) the low
        // class, all of it.
        assert_eq!(out.len(), 14);
        assert!(out[..4].iter().all(|f| *f == hi));
        assert!(out[4..].iter().all(|f| *f == lo));
        // Tokens again: high goes first.
        assert_eq!(drain(&mut q, t(1)), vec![hi.clone(), hi.clone()]);
        // An unshaped high class starves the low one.
        let mut q = qos(r#"
            default = "low"
            [[class]]
            name = "high"
            proto = "udp"
            [[class]]
            name = "low"
            priority = 1
            "#);
        for _ in 0..10 {
            ingress(&mut q, t(0), Role::Local, &lo);
            ingress(&mut q, t(0), Role::Local, &hi);
        }
        let out = drain(&mut q, t(0));
        assert!(out[..10].iter().all(|f| *f == hi));
        assert!(out[10..].iter().all(|f| *f == lo));
    }

    #[test]
    fn directions_are_separate_links() {
        let mut q = qos(r#"
            default = "a"
            rate = "8mbit"
            burst = 1000
            [[class]]
            name = "a"
            "#);
        let f = tcp(80, 1000 - 54);
        for _ in 0..3 {
            ingress(&mut q, t(0), Role::Local, &f);
            ingress(&mut q, t(0), Role::Global, &f);
        }
        // Each link's bucket lets one frame out.
        assert_eq!(drain(&mut q, t(0)).len(), 2);
        let mut out_only = qos(r#"
            default = "a"
            direction = "out"
            [[class]]
            name = "a"
            "#);
        assert_eq!(
            ingress(&mut out_only, t(0), Role::Global, &f),
            Verdict::Pass
        );
        assert_eq!(
            ingress(&mut out_only, t(0), Role::Local, &f),
            Verdict::Consumed
        );
    }

    /// The IPv4 header checksum verifies (sums to 0xffff).
    fn checksum_ok(ip: &[u8]) -> bool {
        ipv4_header_checksum(&ip[..20]) == 0
    }

    #[test]
    fn mark_sets_ce_on_ect_past_the_threshold_and_drops_only_when_full() {
        let mut q = qos(r#"
            default = "a"
            [[class]]
            name = "a"
            queue = 5000
            over_limit = "mark"
            mark_at = 2000
            "#);
        let f = |ecn: u8| {
            v4(
                [10, 0, 0, 1],
                [10, 1, 0, 2],
                PROTO_TCP,
                (1, 2),
                10 << 2 | ecn,
                1000 - 54,
            )
        };
        let mut verdicts = Vec::new();
        for ecn in [2, 1, 2, 0, 1, 2] {
            verdicts.push(ingress(&mut q, t(0), Role::Local, &f(ecn)));
        }
        use Verdict::{Consumed, Drop};
        assert_eq!(
            verdicts,
            [Consumed, Consumed, Consumed, Consumed, Consumed, Drop]
        );
        let out = drain(&mut q, t(0));
        // Below 2000 queued bytes: untouched. From there on: ECT marked,
        // not-ECT left as it is.
        assert_eq!(out[0], f(2));
        assert_eq!(out[1], f(1));
        assert_eq!(out[2][15], 10 << 2 | 3);
        assert_eq!(out[3], f(0));
        assert_eq!(out[4][15], 10 << 2 | 3);
        for o in &out {
            assert!(checksum_ok(&o[14..]), "{:x?}", &o[14..34]);
        }
        // Only the TOS byte and the checksum changed.
        let (a, b) = (&out[2], &f(2));
        let diff: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        assert!(diff.iter().all(|&i| [15, 24, 25].contains(&i)), "{diff:?}");
        assert_eq!(counter(&q, "class.a.marked"), 2);
        assert_eq!(counter(&q, "class.a.dropped"), 1);
        assert_eq!(counter(&q, "marked"), 2);
        // IPv6: the ECN bits of the traffic class.
        let mut q6 = qos(r#"
            default = "a"
            [[class]]
            name = "a"
            over_limit = "mark"
            mark_at = 0
            "#);
        ingress(&mut q6, t(0), Role::Local, &v6(1, 2, 46 << 2 | 2, (1, 2)));
        let out = drain(&mut q6, t(0));
        assert_eq!(out[0][14..16], [0x6b, 0xb0]);
        assert_eq!(out[0], {
            let mut m = v6(1, 2, 46 << 2 | 3, (1, 2));
            m[14 + 1] |= 0;
            m
        });
    }

    #[test]
    fn incremental_checksum_matches_a_full_recompute() {
        for tos in 0..=255u8 {
            for id in [0u16, 1, 0x7fff, 0xfffe, 0xffff] {
                let mut ip =
                    v4([192, 168, 1, 1], [10, 1, 2, 3], PROTO_UDP, (1, 2), tos, 0)[14..34].to_vec();
                ip[4..6].copy_from_slice(&id.to_be_bytes());
                ip[10..12].fill(0);
                let sum = ipv4_header_checksum(&ip);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                let marked = mark_ce(&mut ip, false);
                assert_eq!(marked, matches!(tos & 3, 1 | 2));
                assert!(checksum_ok(&ip), "tos {tos} id {id}");
            }
        }
    }

    #[test]
    fn drop_tail_drops_when_the_queue_is_full() {
        let mut q = qos(r#"
            default = "a"
            [[class]]
            name = "a"
            queue = 2500
            "#);
        let f = tcp(80, 1000 - 54);
        let v: Vec<Verdict> = (0..4)
            .map(|_| ingress(&mut q, t(0), Role::Local, &f))
            .collect();
        assert_eq!(
            v,
            [
                Verdict::Consumed,
                Verdict::Consumed,
                Verdict::Drop,
                Verdict::Drop
            ]
        );
        assert_eq!(counter(&q, "class.a.dropped"), 2);
        assert_eq!(counter(&q, "class.a.queued_bytes"), 2000);
        // Released frames make room, and wrap round the ring intact.
        for i in 0..20u8 {
            let mut g = f.clone();
            g[100] = i;
            assert_eq!(drain(&mut q, t(0)).len(), if i == 0 { 2 } else { 1 });
            assert_eq!(ingress(&mut q, t(0), Role::Local, &g), Verdict::Consumed);
            assert_eq!(q.queued_frames(), 1);
            let out = drain(&mut q, t(0));
            assert_eq!(out, vec![g.clone()]);
            ingress(&mut q, t(0), Role::Local, &g);
        }
    }

    #[test]
    fn malformed_frames_are_counted_drops_and_garbage_never_panics() {
        let frames = [
            tcp(80, 10),
            v4([1, 2, 3, 4], [5, 6, 7, 8], PROTO_UDP, (1, 2), 0, 3),
            v6(1, 2, 0, (53, 1)),
        ];
        for medium in ["ethernet", "ip"] {
            let mut q = qos(&format!("medium = \"{medium}\"\n{CLASSES}"));
            let mut expected = 0;
            for f in &frames {
                let f = if medium == "ip" { &f[14..] } else { &f[..] };
                // Every truncation cuts into a header the classifier reads.
                let full = if medium == "ip" { 0 } else { 14 };
                for len in full..f.len() - if f.len() > 70 { 10 } else { 3 } {
                    let v = ingress(&mut q, t(0), Role::Local, &f[..len]);
                    assert_eq!(v, Verdict::Drop, "{medium} len {len}");
                    expected += 1;
                }
            }
            assert_eq!(counter(&q, "malformed"), expected);
            assert_eq!(q.queued_frames(), 0);
        }
        let mut q = qos(CLASSES);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut taken = 0;
        let mut buf = vec![0u8; 2048];
        for i in 0..20_000u64 {
            let mut f = frames[(i % 3) as usize].clone();
            for _ in 0..1 + i % 4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % f.len() as u64) as usize;
                f[at] = (x >> 32) as u8;
            }
            f.truncate(f.len() - (x >> 40) as usize % 8);
            if ingress(&mut q, t(i as i64), Role::Local, &f) == Verdict::Consumed {
                taken += 1;
            }
            if i % 7 == 0 {
                while q.release(t(i as i64), &mut buf).is_some() {
                    taken -= 1;
                }
            }
        }
        assert_eq!(q.queued_frames(), taken);
    }

    #[test]
    fn reconfigure_changes_rates_in_place_and_keeps_queued_frames() {
        let text = |rate: &str, burst: u32, weight: u32, gone: bool| {
            let gone = if gone {
                "[[class]]\nname = \"gone\"\nproto = \"udp\""
            } else {
                ""
            };
            // "gone" first: "a" matches everything.
            format!(
                "default = \"a\"\n{gone}\n[[class]]\nname = \"a\"\nrate = \"{rate}\"\n\
                 burst = {burst}\nweight = {weight}\n"
            )
        };
        let mut q = qos(&text("8mbit", 1000, 1, true));
        let f = tcp(80, 1000 - 54);
        let u = v4([10, 0, 0, 1], [10, 1, 0, 2], PROTO_UDP, (1, 1), 0, 100);
        for _ in 0..10 {
            ingress(&mut q, t(0), Role::Local, &f);
        }
        ingress(&mut q, t(0), Role::Local, &u);
        // The bucket's burst lets one of "a" go, "gone" is not shaped.
        assert_eq!(drain(&mut q, t(0)), vec![u.clone(), f.clone()]);
        ingress(&mut q, t(0), Role::Local, &u);
        assert_eq!(q.queued_frames(), 10);
        // 80 Mbit/s, and the udp class removed: its frame moves to "a".
        let cfg: QosConfig = toml::from_str(&text("80mbit", 20000, 5, false)).unwrap();
        q.reconfigure(&cfg).unwrap();
        assert_eq!(q.queued_frames(), 10);
        assert_eq!(counter(&q, "class.a.packets"), 1);
        assert_eq!(counter(&q, "class.a.queued_bytes"), 9000 + u.len() as u64);
        // The bucket was empty; in 1 ms it earns 10 000 bytes now.
        let out = drain(&mut q, t(1));
        assert_eq!(out.len(), 10);
        assert!(out.contains(&u));
        // An invalid change is refused and changes nothing.
        ingress(&mut q, t(1), Role::Local, &f);
        let bad: QosConfig = toml::from_str(&text("8mbit", 1000, 0, false)).unwrap();
        assert!(q.reconfigure(&bad).is_err());
        assert_eq!(q.queued_frames(), 1);
        assert!(!Function::reconfigure(&mut q, &FunctionConfig::Passthrough).unwrap());
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |text: &str| {
            let cfg: QosConfig = toml::from_str(text).expect("parses");
            match Qos::new(cfg) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("accepted: {text}"),
            }
        };
        let class = |body: &str| format!("default = \"a\"\n[[class]]\nname = \"a\"\n{body}");
        assert!(err(&class("rate = \"40mbps\"")).contains("class a: rate"));
        assert!(err(&class("rate = \"fast\"")).contains("class a: rate"));
        assert!(err(&class("rate = 10")).contains("class a: rate"));
        assert!(err(&class("burst = 100")).contains("burst needs a rate"));
        assert!(err(&class("queue = 100")).contains("class a: queue"));
        assert!(err(&class("weight = 0")).contains("class a: weight"));
        assert!(err(&class("priority = 16")).contains("class a: priority"));
        assert!(err(&class("dscp = [64]")).contains("class a: dscp 64"));
        assert!(err(&class("proto = \"sctp\"")).contains("class a: proto"));
        assert!(err(&class("proto = 256")).contains("class a: proto"));
        assert!(err(&class("src = \"10.0.0.0/33\"")).contains("class a: src"));
        assert!(err(&class("dport = 80")).contains("need proto"));
        assert!(err(&class("proto = \"tcp\"\nsport = \"9-1\"")).contains("sport"));
        assert!(err(&class("mark_at = 10")).contains("mark_at needs"));
        assert!(
            err(&class(
                "over_limit = \"mark\"\nqueue = 2000\nmark_at = 3000"
            ))
            .contains("mark_at")
        );
        assert!(err(&class("src = \"10.0.0.0/8\"\ndst = \"fd00::/8\"")).contains("IP versions"));
        assert!(err("default = \"x\"\n[[class]]\nname = \"a\"").contains("default class \"x\""));
        assert!(err("default = \"a\"\n[[class]]\nname = \"a b\"").contains("class name"));
        assert!(
            err("default = \"a\"\n[[class]]\nname = \"a\"\n[[class]]\nname = \"a\"")
                .contains("twice")
        );
        assert!(err("default = \"a\"\nrate = \"1x\"\n[[class]]\nname = \"a\"").contains("rate"));
        // Unknown fields and values are refused by the parser.
        let parse = |text: &str| toml::from_str::<FunctionConfig>(text);
        assert!(
            parse("kind = \"qos\"\ndefault = \"a\"\nclass = [{ name = \"a\", prio = 1 }]").is_err()
        );
        assert!(
            parse(
                "kind = \"qos\"\ndefault = \"a\"\nclass = [{ name = \"a\", over_limit = \"red\" }]"
            )
            .is_err()
        );
        let ok = parse("kind = \"qos\"\ndefault = \"a\"\nrate = \"1gbit\"\nclass = [{ name = \"a\", rate = 40000000, dscp = [0, 63] }]").expect("valid");
        assert!(super::super::build(&ok).is_ok());
        assert_eq!(
            parse_rate(&RateSpec::Text("1.5gbit".into())),
            Ok(1_500_000_000)
        );
        assert_eq!(parse_rate(&RateSpec::Text("500kbit".into())), Ok(500_000));
    }
}
