//! Stateful firewall: connection tracking plus ordered rules.
//!
//! Every frame the device captures is classified and given a verdict:
//!
//! - **Always passes:** ARP, and the IPv6 link-control part of ICMPv6
//!   (neighbour and router discovery, redirects, MLD), without which the
//!   network itself stops working.
//! - **Established:** a packet of a tracked connection, in either direction
//!   (replies included), passes without consulting the rules — except rules
//!   with `state = "established"`, which are checked first-match and may
//!   still drop. An ICMP error quoting a tracked connection (port
//!   unreachable, packet too big, …) counts as established too.
//! - **New:** a packet that would start a connection (TCP SYN, any UDP
//!   datagram, ICMP echo request, any packet of another IP protocol) is
//!   matched against the rules with `state = "new"` or `"any"` in order;
//!   the first match decides, no match means the `default` policy. An
//!   accepted one is entered into the connection table. ICMP messages that
//!   start nothing (timestamp requests, unrelated errors) are matched the
//!   same way but not tracked.
//! - **Invalid:** a TCP packet other than a bare SYN, or an echo reply, with
//!   no tracked connection. Counted as `invalid`; dropped when the default
//!   policy is `drop`, otherwise matched against the `state = "any"` rules
//!   (no match: accepted, not tracked).
//! - **Non-first IPv4/IPv6 fragments** carry no ports, so they cannot be
//!   tied to a connection: they are dropped (counted in
//!   `fragments_dropped`) unless a rule with `fragments = true` matches
//!   them. Such rules match *only* non-first fragments, on direction,
//!   protocol and addresses. First fragments are treated like whole packets.
//! - **Malformed** or truncated frames are dropped and counted; non-IP
//!   EtherTypes other than ARP get the default policy.
//!
//! Direction: a frame arriving from the global adapter is `in`; one
//! arriving from the local adapter is `out`; a frame the device's own stack
//! emits is also `out` (it leaves the device), so with `default = "drop"`
//! the device itself may only start connections a rule allows — its replies
//! to accepted connections pass as established.
//!
//! TCP tracking: a SYN creates the entry (handshake timeout), the SYN-ACK
//! from the responder and the originator's ACK establish it (established
//! timeout), a FIN or RST moves it to closing (closing timeout). A new SYN
//! from the originator on a closing entry starts over. UDP entries live
//! `udp_timeout`, or `udp_replied_timeout` once the responder answered;
//! ICMP echo entries `icmp_timeout` (durations like `"30s"`, `"1h"`). Expiry is lazy (checked on lookup,
//! plus a sweep every 10 s of traffic and when the table is full); when the
//! table holds `max_connections` live entries a new connection is dropped
//! and counted in `table_full` — established ones are never evicted.
//!
//! Drops are logged with `log::info!`, at most `log_drops_per_second`.
//!
//! ```
//! use shmnet::functions::firewall::{Firewall, FirewallConfig};
//! use shmnet::functions::Function;
//! let cfg: FirewallConfig = toml::from_str(r#"
//!     default = "drop"
//!     [[rule]]
//!     action = "accept"
//!     direction = "in"
//!     proto = "tcp"
//!     dport = 80
//! "#).unwrap();
//! let fw = Firewall::new(cfg).unwrap();
//! assert_eq!(fw.name(), "firewall");
//! assert_eq!(fw.connections(), 0);
//! ```

#![allow(clippy::redundant_closure_call)] // transitional: counters and reconfigure shims, removed as each function moves to the new contract
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet, TcpPacket,
    UdpPacket,
};

use super::matching::{
    PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, PortSpec, Prefix, parse_duration, ports_field,
    prefix_field,
};
use super::{Frame, Function, FunctionError, Role, Verdict};
use crate::config::MediumName;

/// How often expired entries are swept out even when the table is not full.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// A full table is swept at most this often (a flood must not make every
/// packet pay for a sweep).
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Extension headers walked in an IPv6 packet before giving up.
const MAX_EXTENSION_HEADERS: usize = 8;

/// What a rule or the default policy does with a packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    #[default]
    Drop,
}

/// Which packets a rule applies to, by the way they travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Arrived from the global adapter.
    In,
    /// Arrived from the local adapter, or emitted by the device's own stack.
    Out,
    #[default]
    Any,
}

/// IP protocol a rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP for IPv4.
    Icmp,
    Icmpv6,
    #[default]
    Any,
}

/// Connection state a rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateMatch {
    /// Packets that would start a connection (and untracked ICMP).
    New,
    /// Packets of tracked connections; only a drop is useful here.
    Established,
    /// New, established and invalid packets.
    #[default]
    Any,
}

/// One `[[function.rule]]`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub action: Action,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub proto: Proto,
    /// Source prefix (`"10.0.0.0/24"`, `"fd00::/64"`, or one address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Destination prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Source port or range (TCP and UDP rules only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<PortSpec>,
    /// Destination port or range (TCP and UDP rules only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<PortSpec>,
    #[serde(default)]
    pub state: StateMatch,
    /// Match only non-first fragments (which carry no ports).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fragments: bool,
}

/// `[function] kind = "firewall"`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallConfig {
    /// Policy when no rule matches.
    #[serde(default, rename = "default")]
    pub default_policy: Action,
    /// Link medium of the device's networks ("ethernet" or "ip").
    #[serde(default)]
    pub medium: MediumName,
    #[serde(default = "default_tcp_established")]
    pub tcp_established_timeout: String,
    /// SYN seen, handshake not complete.
    #[serde(default = "default_tcp_handshake")]
    pub tcp_handshake_timeout: String,
    /// FIN or RST seen.
    #[serde(default = "default_tcp_closing")]
    pub tcp_closing_timeout: String,
    /// UDP (and other IP protocols) before the responder answered.
    #[serde(default = "default_udp")]
    pub udp_timeout: String,
    /// UDP (and other IP protocols) once the responder answered.
    #[serde(default = "default_udp_replied")]
    pub udp_replied_timeout: String,
    /// ICMP echo exchanges.
    #[serde(default = "default_icmp")]
    pub icmp_timeout: String,
    /// Connection table size.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Dropped packets logged per second (0: none).
    #[serde(default = "default_log_drops")]
    pub log_drops_per_second: u32,
    /// Ordered rules; the first match wins.
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
}

fn default_tcp_established() -> String {
    "1h".into()
}
fn default_tcp_handshake() -> String {
    "2m".into()
}
fn default_tcp_closing() -> String {
    "30s".into()
}
fn default_udp() -> String {
    "30s".into()
}
fn default_udp_replied() -> String {
    "3m".into()
}
fn default_icmp() -> String {
    "30s".into()
}
fn default_max_connections() -> usize {
    65536
}
fn default_log_drops() -> u32 {
    10
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            default_policy: Action::Drop,
            medium: MediumName::default(),
            tcp_established_timeout: default_tcp_established(),
            tcp_handshake_timeout: default_tcp_handshake(),
            tcp_closing_timeout: default_tcp_closing(),
            udp_timeout: default_udp(),
            udp_replied_timeout: default_udp_replied(),
            icmp_timeout: default_icmp(),
            max_connections: default_max_connections(),
            log_drops_per_second: default_log_drops(),
            rules: Vec::new(),
        }
    }
}

/// A rule, compiled.
#[derive(Debug, Clone)]
struct Rule {
    action: Action,
    direction: Direction,
    proto: Proto,
    src: Option<Prefix>,
    dst: Option<Prefix>,
    sport: Option<(u16, u16)>,
    dport: Option<(u16, u16)>,
    state: StateMatch,
    fragments: bool,
}

impl Rule {
    fn compile(i: usize, r: &RuleConfig) -> Result<Rule, String> {
        let owner = format!("rule {i}");
        let prefix = |field: &str, s: &Option<String>| prefix_field(&owner, field, s.as_deref());
        let ports = |field: &str, p: &Option<PortSpec>| ports_field(&owner, field, p.as_ref());
        let rule = Rule {
            action: r.action,
            direction: r.direction,
            proto: r.proto,
            src: prefix("src", &r.src)?,
            dst: prefix("dst", &r.dst)?,
            sport: ports("sport", &r.sport)?,
            dport: ports("dport", &r.dport)?,
            state: r.state,
            fragments: r.fragments,
        };
        let has_ports = rule.sport.is_some() || rule.dport.is_some();
        if has_ports && !matches!(rule.proto, Proto::Tcp | Proto::Udp) {
            return Err(format!(
                "rule {i}: sport/dport need proto = \"tcp\" or \"udp\""
            ));
        }
        if rule.fragments && (has_ports || rule.state != StateMatch::Any) {
            return Err(format!(
                "rule {i}: a fragments rule matches no ports and no state"
            ));
        }
        let families: Vec<bool> = [rule.src, rule.dst]
            .iter()
            .flatten()
            .map(|p| p.v6)
            .collect();
        if families.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!(
                "rule {i}: src and dst are of different IP versions"
            ));
        }
        match (rule.proto, families.first()) {
            (Proto::Icmp, Some(true)) => {
                return Err(format!("rule {i}: proto \"icmp\" is IPv4; use \"icmpv6\""));
            }
            (Proto::Icmpv6, Some(false)) => {
                return Err(format!("rule {i}: proto \"icmpv6\" needs IPv6 prefixes"));
            }
            _ => {}
        }
        Ok(rule)
    }

    fn matches(&self, p: &Packet, inbound: bool) -> bool {
        let dir = match self.direction {
            Direction::Any => true,
            Direction::In => inbound,
            Direction::Out => !inbound,
        };
        let proto = match self.proto {
            Proto::Any => true,
            Proto::Tcp => p.proto == PROTO_TCP,
            Proto::Udp => p.proto == PROTO_UDP,
            Proto::Icmp => p.proto == PROTO_ICMP && !p.v6,
            Proto::Icmpv6 => p.proto == PROTO_ICMPV6 && p.v6,
        };
        let in_range =
            |r: Option<(u16, u16)>, port: u16| r.is_none_or(|(lo, hi)| (lo..=hi).contains(&port));
        dir && proto
            && self.src.is_none_or(|s| s.contains(p.v6, p.src))
            && self.dst.is_none_or(|d| d.contains(p.v6, p.dst))
            && in_range(self.sport, p.sport)
            && in_range(self.dport, p.dport)
    }
}

/// What the transport layer of a packet says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4 {
    Tcp {
        syn: bool,
        ack: bool,
        fin: bool,
        rst: bool,
    },
    Udp,
    /// ICMP or ICMPv6 echo; the ident is in both ports.
    Echo {
        request: bool,
    },
    /// An ICMP error quoting the packet with this key.
    IcmpError(FlowKey),
    /// Other ICMP: matched by rules, never tracked.
    IcmpOther,
    /// Another IP protocol, tracked by addresses.
    Other,
}

/// The parts of an IP packet the firewall looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packet {
    v6: bool,
    src: u128,
    dst: u128,
    proto: u8,
    sport: u16,
    dport: u16,
    l4: L4,
}

impl Packet {
    /// The connection-table key (the same for both directions) and whether
    /// this packet's source is the key's `lo` end.
    fn key(&self) -> (FlowKey, bool) {
        FlowKey::new(
            self.v6,
            self.proto,
            (self.src, self.sport),
            (self.dst, self.dport),
        )
    }
}

/// A connection's key: both endpoints, lower one first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    lo: u128,
    hi: u128,
    lo_port: u16,
    hi_port: u16,
    proto: u8,
    v6: bool,
}

/// Hashes as few words as possible: SipHash (kept for its resistance to
/// crafted collisions) dominates the cost of an established packet, and an
/// IPv4 key fits in two words.
impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let tail = u64::from(self.lo_port) << 48
            | u64::from(self.hi_port) << 32
            | u64::from(self.proto) << 8
            | u64::from(self.v6);
        if self.v6 {
            h.write_u128(self.lo);
            h.write_u128(self.hi);
        } else {
            // IPv4 addresses live in the low 32 bits.
            h.write_u64((self.lo as u64) << 32 | (self.hi as u64 & 0xffff_ffff));
        }
        h.write_u64(tail);
    }
}

impl FlowKey {
    fn new(v6: bool, proto: u8, src: (u128, u16), dst: (u128, u16)) -> (FlowKey, bool) {
        let src_lo = src <= dst;
        let (lo, hi) = if src_lo { (src, dst) } else { (dst, src) };
        let key = FlowKey {
            lo: lo.0,
            hi: hi.0,
            lo_port: lo.1,
            hi_port: hi.1,
            proto,
            v6,
        };
        (key, src_lo)
    }
}

/// The outcome of parsing a frame.
enum Parsed {
    /// ARP, neighbour discovery and the like.
    Control,
    /// Not IP, not ARP.
    NonIp,
    /// A non-first fragment (ports zero, `l4` meaningless).
    Fragment(Packet),
    Ip(Packet),
}

/// Marker for a malformed or truncated frame.
struct Malformed;

fn parse(medium: MediumName, bytes: &[u8]) -> Result<Parsed, Malformed> {
    match medium {
        MediumName::Ethernet => {
            let eth = EthernetFrame::new_checked(bytes).map_err(|_| Malformed)?;
            match eth.ethertype() {
                EthernetProtocol::Arp => Ok(Parsed::Control),
                EthernetProtocol::Ipv4 => parse_ipv4(eth.payload()),
                EthernetProtocol::Ipv6 => parse_ipv6(eth.payload()),
                _ => Ok(Parsed::NonIp),
            }
        }
        MediumName::Ip => match bytes.first().map(|b| b >> 4) {
            Some(4) => parse_ipv4(bytes),
            Some(6) => parse_ipv6(bytes),
            _ => Err(Malformed),
        },
    }
}

fn parse_ipv4(bytes: &[u8]) -> Result<Parsed, Malformed> {
    let ip = Ipv4Packet::new_checked(bytes).map_err(|_| Malformed)?;
    if ip.version() != 4 {
        return Err(Malformed);
    }
    let src = u128::from(u32::from(ip.src_addr()));
    let dst = u128::from(u32::from(ip.dst_addr()));
    let proto = u8::from(ip.next_header());
    if ip.frag_offset() != 0 {
        return Ok(Parsed::Fragment(Packet {
            v6: false,
            src,
            dst,
            proto,
            sport: 0,
            dport: 0,
            l4: L4::Other,
        }));
    }
    transport(false, src, dst, proto, ip.payload(), ip.more_frags())
}

fn parse_ipv6(bytes: &[u8]) -> Result<Parsed, Malformed> {
    let ip = Ipv6Packet::new_checked(bytes).map_err(|_| Malformed)?;
    if ip.version() != 6 {
        return Err(Malformed);
    }
    let src = u128::from(ip.src_addr());
    let dst = u128::from(ip.dst_addr());
    let mut next = u8::from(ip.next_header());
    let mut rest = ip.payload();
    let mut partial = false;
    for _ in 0..=MAX_EXTENSION_HEADERS {
        let len = match next {
            // Hop-by-hop, routing, destination options.
            0 | 43 | 60 => (usize::from(*rest.get(1).ok_or(Malformed)?) + 1) * 8,
            // Authentication header.
            51 => (usize::from(*rest.get(1).ok_or(Malformed)?) + 2) * 4,
            // Fragment.
            44 => {
                let h = rest.get(..8).ok_or(Malformed)?;
                let offset = u16::from_be_bytes([h[2], h[3]]) & 0xfff8;
                if offset != 0 {
                    return Ok(Parsed::Fragment(Packet {
                        v6: true,
                        src,
                        dst,
                        proto: h[0],
                        sport: 0,
                        dport: 0,
                        l4: L4::Other,
                    }));
                }
                partial |= h[3] & 1 != 0;
                8
            }
            _ => return transport(true, src, dst, next, rest, partial),
        };
        let h = rest.get(..len).ok_or(Malformed)?;
        next = h[0];
        rest = &rest[len..];
    }
    Err(Malformed)
}

/// Parses the transport header; `partial` is a first fragment, whose
/// length fields describe more bytes than it holds.
fn transport(
    v6: bool,
    src: u128,
    dst: u128,
    proto: u8,
    payload: &[u8],
    partial: bool,
) -> Result<Parsed, Malformed> {
    let mut p = Packet {
        v6,
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        l4: L4::Other,
    };
    match proto {
        PROTO_TCP => {
            let t = TcpPacket::new_checked(payload).map_err(|_| Malformed)?;
            p.sport = t.src_port();
            p.dport = t.dst_port();
            p.l4 = L4::Tcp {
                syn: t.syn(),
                ack: t.ack(),
                fin: t.fin(),
                rst: t.rst(),
            };
        }
        PROTO_UDP => {
            let u = if partial {
                if payload.len() < 8 {
                    return Err(Malformed);
                }
                UdpPacket::new_unchecked(payload)
            } else {
                UdpPacket::new_checked(payload).map_err(|_| Malformed)?
            };
            p.sport = u.src_port();
            p.dport = u.dst_port();
            p.l4 = L4::Udp;
        }
        PROTO_ICMP if !v6 => {
            let icmp = Icmpv4Packet::new_checked(payload).map_err(|_| Malformed)?;
            match u8::from(icmp.msg_type()) {
                t @ (0 | 8) => {
                    p.sport = icmp.echo_ident();
                    p.dport = p.sport;
                    p.l4 = L4::Echo { request: t == 8 };
                }
                // Destination unreachable, time exceeded, parameter problem.
                3 | 11 | 12 => p.l4 = L4::IcmpError(quoted(false, payload.get(8..))?),
                _ => p.l4 = L4::IcmpOther,
            }
        }
        PROTO_ICMPV6 if v6 => {
            let icmp = Icmpv6Packet::new_checked(payload).map_err(|_| Malformed)?;
            match u8::from(icmp.msg_type()) {
                t @ (128 | 129) => {
                    p.sport = icmp.echo_ident();
                    p.dport = p.sport;
                    p.l4 = L4::Echo { request: t == 128 };
                }
                1..=4 => p.l4 = L4::IcmpError(quoted(true, payload.get(8..))?),
                // MLD, router/neighbour discovery, redirect, MLDv2 report.
                130..=137 | 143 => return Ok(Parsed::Control),
                _ => p.l4 = L4::IcmpOther,
            }
        }
        _ => {}
    }
    Ok(Parsed::Ip(p))
}

/// The key of the packet an ICMP error quotes (its IP header and at least
/// the first 8 bytes of its payload).
fn quoted(v6: bool, bytes: Option<&[u8]>) -> Result<FlowKey, Malformed> {
    let b = bytes.ok_or(Malformed)?;
    let (src, dst, proto, l4) = if v6 {
        if b.len() < 40 || b[0] >> 4 != 6 {
            return Err(Malformed);
        }
        let ip = Ipv6Packet::new_unchecked(b);
        (
            u128::from(ip.src_addr()),
            u128::from(ip.dst_addr()),
            u8::from(ip.next_header()),
            &b[40..],
        )
    } else {
        let hl = usize::from(b.first().ok_or(Malformed)? & 0x0f) * 4;
        if hl < 20 || b.len() < hl || b[0] >> 4 != 4 {
            return Err(Malformed);
        }
        let ip = Ipv4Packet::new_unchecked(b);
        (
            u128::from(u32::from(ip.src_addr())),
            u128::from(u32::from(ip.dst_addr())),
            u8::from(ip.next_header()),
            &b[hl..],
        )
    };
    let port = |at: usize| {
        l4.get(at..at + 2)
            .map_or(0, |p| u16::from_be_bytes([p[0], p[1]]))
    };
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP => (port(0), port(2)),
        PROTO_ICMP | PROTO_ICMPV6 => (port(4), port(4)),
        _ => (0, 0),
    };
    Ok(FlowKey::new(v6, proto, (src, sport), (dst, dport)).0)
}

/// Where a tracked connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    SynSent,
    SynAckSeen,
    Established,
    Closing,
    /// UDP and other protocols.
    Datagram,
    Echo,
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    /// The originator is the key's `lo` end.
    orig_is_lo: bool,
    state: ConnState,
    replied: bool,
    expires: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    tcp_established: Duration,
    tcp_handshake: Duration,
    tcp_closing: Duration,
    udp: Duration,
    udp_replied: Duration,
    icmp: Duration,
}

impl Timeouts {
    fn of(&self, c: &Conn) -> Duration {
        match c.state {
            ConnState::SynSent | ConnState::SynAckSeen => self.tcp_handshake,
            ConnState::Established => self.tcp_established,
            ConnState::Closing => self.tcp_closing,
            ConnState::Datagram if c.replied => self.udp_replied,
            ConnState::Datagram => self.udp,
            ConnState::Echo => self.icmp,
        }
    }
}

/// How a packet relates to the connection table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    New,
    Established,
    Invalid,
}

/// Counters of the firewall (`rule{i}_packets` are kept per rule).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FirewallStats {
    pub accepted: u64,
    pub dropped: u64,
    pub invalid: u64,
    pub malformed: u64,
    pub fragments_dropped: u64,
    pub table_full: u64,
    pub connections_created: u64,
    pub expired: u64,
    pub logs_suppressed: u64,
}

/// The stateful firewall function.
pub struct Firewall {
    medium: MediumName,
    default_policy: Action,
    rules: Vec<Rule>,
    rule_packets: Vec<u64>,
    /// Indices of `state = "established"` rules, the only ones an
    /// established packet consults (usually none).
    established_rules: Vec<usize>,
    timeouts: Timeouts,
    max_connections: usize,
    conns: HashMap<FlowKey, Conn>,
    next_sweep: Instant,
    next_full_sweep: Instant,
    log_per_second: u32,
    log_window: Instant,
    logged: u32,
    stats: FirewallStats,
}

impl Firewall {
    pub fn new(cfg: FirewallConfig) -> Result<Firewall, FunctionError> {
        let bad = |why: String| FunctionError::Invalid {
            kind: "firewall",
            why,
        };
        let dur = |name: &str, s: &str| {
            parse_duration(s)
                .filter(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(365 * 86400))
                .ok_or_else(|| {
                    bad(format!(
                        "{name} {s:?} is not a duration between 1s and 365d (like \"30s\", \"2m\", \"1h\")"
                    ))
                })
        };
        let timeouts = Timeouts {
            tcp_established: dur("tcp_established_timeout", &cfg.tcp_established_timeout)?,
            tcp_handshake: dur("tcp_handshake_timeout", &cfg.tcp_handshake_timeout)?,
            tcp_closing: dur("tcp_closing_timeout", &cfg.tcp_closing_timeout)?,
            udp: dur("udp_timeout", &cfg.udp_timeout)?,
            udp_replied: dur("udp_replied_timeout", &cfg.udp_replied_timeout)?,
            icmp: dur("icmp_timeout", &cfg.icmp_timeout)?,
        };
        if !(1..=1 << 24).contains(&cfg.max_connections) {
            return Err(bad("max_connections must be 1..=16777216".into()));
        }
        let rules = cfg
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::compile(i, r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let established_rules = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state == StateMatch::Established)
            .map(|(i, _)| i)
            .collect();
        Ok(Firewall {
            medium: cfg.medium,
            default_policy: cfg.default_policy,
            rule_packets: vec![0; rules.len()],
            rules,
            established_rules,
            timeouts,
            max_connections: cfg.max_connections,
            conns: HashMap::new(),
            next_sweep: Instant::ZERO,
            next_full_sweep: Instant::ZERO,
            log_per_second: cfg.log_drops_per_second,
            log_window: Instant::ZERO,
            logged: 0,
            stats: FirewallStats::default(),
        })
    }

    /// Connections in the table (expired ones not yet swept included).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn stats(&self) -> &FirewallStats {
        &self.stats
    }

    /// Packets that matched rule `i` (0-based, in config order).
    pub fn rule_packets(&self, i: usize) -> u64 {
        self.rule_packets.get(i).copied().unwrap_or(0)
    }

    /// Decides on one frame; `inbound` is a frame from the global adapter.
    fn handle_frame(&mut self, now: Instant, inbound: bool, bytes: &[u8]) -> Verdict {
        let p = match parse(self.medium, bytes) {
            Ok(Parsed::Ip(p)) => p,
            Ok(Parsed::Control) => return self.accept(),
            Ok(Parsed::NonIp) => {
                return match self.default_policy {
                    Action::Accept => self.accept(),
                    Action::Drop => self.deny(now, "non-IP", inbound, None),
                };
            }
            Ok(Parsed::Fragment(p)) => return self.handle_fragment(now, inbound, &p),
            Err(Malformed) => {
                self.stats.malformed += 1;
                return self.deny(now, "malformed", inbound, None);
            }
        };
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            self.sweep(now);
        }
        let class = self.track(now, &p);
        match class {
            Class::Established => {
                for &i in &self.established_rules {
                    if self.rules[i].matches(&p, inbound) {
                        self.rule_packets[i] += 1;
                        return match self.rules[i].action {
                            Action::Accept => self.accept(),
                            Action::Drop => self.deny(now, "rule", inbound, Some(&p)),
                        };
                    }
                }
                self.accept()
            }
            Class::New => {
                let hit = self.rules.iter().position(|r| {
                    !r.fragments && r.state != StateMatch::Established && r.matches(&p, inbound)
                });
                let action = match hit {
                    Some(i) => {
                        self.rule_packets[i] += 1;
                        self.rules[i].action
                    }
                    None => self.default_policy,
                };
                match action {
                    Action::Drop => self.deny(now, "rule", inbound, Some(&p)),
                    Action::Accept if self.create(now, &p) => self.accept(),
                    Action::Accept => self.deny(now, "table full", inbound, Some(&p)),
                }
            }
            Class::Invalid => {
                self.stats.invalid += 1;
                if self.default_policy == Action::Drop {
                    return self.deny(now, "invalid", inbound, Some(&p));
                }
                let hit = self.rules.iter().position(|r| {
                    !r.fragments && r.state == StateMatch::Any && r.matches(&p, inbound)
                });
                let action = match hit {
                    Some(i) => {
                        self.rule_packets[i] += 1;
                        self.rules[i].action
                    }
                    None => Action::Accept,
                };
                match action {
                    Action::Accept => self.accept(),
                    Action::Drop => self.deny(now, "invalid", inbound, Some(&p)),
                }
            }
        }
    }

    fn handle_fragment(&mut self, now: Instant, inbound: bool, p: &Packet) -> Verdict {
        let hit = self
            .rules
            .iter()
            .position(|r| r.fragments && r.matches(p, inbound));
        match hit {
            Some(i) => {
                self.rule_packets[i] += 1;
                match self.rules[i].action {
                    Action::Accept => self.accept(),
                    Action::Drop => {
                        self.stats.fragments_dropped += 1;
                        self.deny(now, "fragment", inbound, Some(p))
                    }
                }
            }
            None => {
                self.stats.fragments_dropped += 1;
                self.deny(now, "fragment", inbound, Some(p))
            }
        }
    }

    /// Looks the packet up in the connection table and advances the
    /// connection's state; one hash lookup on the common path.
    fn track(&mut self, now: Instant, p: &Packet) -> Class {
        let key = match p.l4 {
            L4::IcmpError(quoted) => {
                return match self.conns.get(&quoted) {
                    Some(c) if c.expires > now => Class::Established,
                    _ => Class::New,
                };
            }
            L4::IcmpOther => return Class::New,
            _ => p.key(),
        };
        let (key, src_lo) = key;
        let mut restart = false;
        if let Some(c) = self.conns.get_mut(&key) {
            if c.expires <= now {
                restart = true;
            } else {
                let from_orig = c.orig_is_lo == src_lo;
                if let L4::Tcp { syn, ack, fin, rst } = p.l4 {
                    if syn && !ack && from_orig && c.state == ConnState::Closing {
                        // Port reuse: the old connection is over.
                        self.conns.remove(&key);
                        return Class::New;
                    }
                    c.state = match c.state {
                        _ if rst || fin => ConnState::Closing,
                        ConnState::SynSent if syn && ack && !from_orig => ConnState::SynAckSeen,
                        ConnState::SynAckSeen if ack && !syn && from_orig => ConnState::Established,
                        s => s,
                    };
                }
                c.replied |= !from_orig;
                c.expires = now + self.timeouts.of(c);
                return Class::Established;
            }
        }
        if restart {
            self.conns.remove(&key);
            self.stats.expired += 1;
        }
        match p.l4 {
            L4::Tcp {
                syn: true,
                ack: false,
                rst: false,
                ..
            } => Class::New,
            L4::Tcp { .. } | L4::Echo { request: false } => Class::Invalid,
            _ => Class::New,
        }
    }

    /// Enters an accepted new packet's connection; `false` if the table is
    /// full. ICMP messages that start nothing need no entry.
    fn create(&mut self, now: Instant, p: &Packet) -> bool {
        let state = match p.l4 {
            L4::Tcp { .. } => ConnState::SynSent,
            L4::Udp | L4::Other => ConnState::Datagram,
            L4::Echo { .. } => ConnState::Echo,
            L4::IcmpError(_) | L4::IcmpOther => return true,
        };
        if self.conns.len() >= self.max_connections && now >= self.next_full_sweep {
            self.next_full_sweep = now + FULL_SWEEP_EVERY;
            self.sweep(now);
        }
        if self.conns.len() >= self.max_connections {
            self.stats.table_full += 1;
            return false;
        }
        let (key, src_lo) = p.key();
        let mut c = Conn {
            orig_is_lo: src_lo,
            state,
            replied: false,
            expires: now,
        };
        c.expires = now + self.timeouts.of(&c);
        self.conns.insert(key, c);
        self.stats.connections_created += 1;
        true
    }

    fn sweep(&mut self, now: Instant) {
        let before = self.conns.len();
        self.conns.retain(|_, c| c.expires > now);
        self.stats.expired += (before - self.conns.len()) as u64;
    }

    fn accept(&mut self) -> Verdict {
        self.stats.accepted += 1;
        Verdict::Pass
    }

    fn deny(&mut self, now: Instant, why: &str, inbound: bool, p: Option<&Packet>) -> Verdict {
        self.stats.dropped += 1;
        if now >= self.log_window + Duration::from_secs(1) {
            self.log_window = now;
            self.logged = 0;
        }
        if self.logged >= self.log_per_second {
            self.stats.logs_suppressed += 1;
            return Verdict::Drop;
        }
        self.logged += 1;
        let dir = if inbound { "in" } else { "out" };
        match p {
            Some(p) => {
                let addr = |a: u128| {
                    if p.v6 {
                        IpAddr::V6(Ipv6Addr::from(a))
                    } else {
                        IpAddr::V4(Ipv4Addr::from(a as u32))
                    }
                };
                log::info!(
                    "firewall: dropped {why} {dir} proto {} {}:{} -> {}:{}",
                    p.proto,
                    addr(p.src),
                    p.sport,
                    addr(p.dst),
                    p.dport
                );
            }
            None => log::info!("firewall: dropped {why} {dir} frame"),
        }
        Verdict::Drop
    }
}

impl Function for Firewall {
    fn name(&self) -> &'static str {
        "firewall"
    }

    fn on_ingress(&mut self, now: Instant, from: Role, frame: &mut Frame<'_>) -> Verdict {
        self.handle_frame(now, from == Role::Global, frame.bytes())
    }

    fn on_egress(&mut self, now: Instant, frame: &mut Frame<'_>) -> Verdict {
        self.handle_frame(now, false, frame.bytes())
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        let pairs: Vec<(String, u64)> = (|| {
            let s = &self.stats;
            let mut out: Vec<(String, u64)> = self
                .rule_packets
                .iter()
                .enumerate()
                .map(|(i, &n)| (format!("rule{i}_packets"), n))
                .collect();
            out.extend([
                ("accepted".into(), s.accepted),
                ("dropped".into(), s.dropped),
                ("invalid".into(), s.invalid),
                ("malformed".into(), s.malformed),
                ("fragments_dropped".into(), s.fragments_dropped),
                ("table_full".into(), s.table_full),
                ("connections".into(), self.conns.len() as u64),
                ("connections_created".into(), s.connections_created),
                ("expired".into(), s.expired),
                ("logs_suppressed".into(), s.logs_suppressed),
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
    use crate::functions::fixtures::{self, wrap};
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        Icmpv4DstUnreachable, Icmpv4Repr, IpAddress, IpProtocol, Ipv4Address, Ipv4Repr,
        Ipv6Address, TcpControl,
    };

    fn tcp(
        src: (IpAddress, u16),
        dst: (IpAddress, u16),
        control: TcpControl,
        ack: bool,
    ) -> Vec<u8> {
        fixtures::tcp(src, dst, control, ack, b"hello")
    }

    fn udp_l4(src: (IpAddress, u16), dst: (IpAddress, u16)) -> Vec<u8> {
        fixtures::udp_l4(src, dst, b"datagram")
    }

    fn udp(src: (IpAddress, u16), dst: (IpAddress, u16)) -> Vec<u8> {
        fixtures::udp(src, dst, b"datagram")
    }

    const A: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
    const B: Ipv4Address = Ipv4Address::new(10, 1, 0, 2);
    const C: Ipv4Address = Ipv4Address::new(10, 9, 0, 3);

    fn t(secs: u64) -> Instant {
        Instant::from_secs(1000 + secs as i64)
    }

    fn firewall(text: &str) -> Firewall {
        Firewall::new(toml::from_str(text).expect("test config parses")).expect("valid config")
    }

    fn icmp(src: Ipv4Address, dst: Ipv4Address, repr: Icmpv4Repr<'_>) -> Vec<u8> {
        let mut l4 = vec![0u8; repr.buffer_len()];
        repr.emit(
            &mut Icmpv4Packet::new_unchecked(&mut l4[..]),
            &ChecksumCapabilities::default(),
        );
        wrap(src.into(), dst.into(), IpProtocol::Icmp, &l4)
    }

    fn ping(src: Ipv4Address, dst: Ipv4Address, request: bool, ident: u16) -> Vec<u8> {
        let data = b"ping";
        let repr = if request {
            Icmpv4Repr::EchoRequest {
                ident,
                seq_no: 1,
                data,
            }
        } else {
            Icmpv4Repr::EchoReply {
                ident,
                seq_no: 1,
                data,
            }
        };
        icmp(src, dst, repr)
    }

    fn ep(a: impl Into<IpAddress>, port: u16) -> (IpAddress, u16) {
        (a.into(), port)
    }

    fn ingress(fw: &mut Firewall, now: Instant, from: Role, bytes: &[u8]) -> Verdict {
        let mut buf = bytes.to_vec();
        let len = buf.len();
        fw.on_ingress(
            now,
            from,
            &mut Frame::new(&mut buf, len, crate::wire::LinkMedium::Ethernet),
        )
    }

    fn egress(fw: &mut Firewall, now: Instant, bytes: &[u8]) -> Verdict {
        let mut buf = bytes.to_vec();
        let len = buf.len();
        fw.on_egress(
            now,
            &mut Frame::new(&mut buf, len, crate::wire::LinkMedium::Ethernet),
        )
    }

    fn counter(fw: &Firewall, name: &str) -> u64 {
        crate::stack::hook::counters_of(fw)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    use Role::{Global, Local};
    use Verdict::{Drop, Pass};

    #[test]
    fn rules_block_and_allow_in_order() {
        let mut fw = firewall(
            r#"
            default = "drop"
            [[rule]]
            action = "drop"
            direction = "in"
            src = "10.9.0.0/16"
            [[rule]]
            action = "accept"
            direction = "in"
            proto = "tcp"
            dst = "10.1.0.0/16"
            dport = 80
            state = "new"
            [[rule]]
            action = "accept"
            direction = "in"
            proto = "udp"
            sport = "1024-65535"
            dport = "5000-5010"
            "#,
        );
        let syn = |src, dport| tcp(ep(src, 40000), ep(B, dport), TcpControl::Syn, false);
        assert_eq!(ingress(&mut fw, t(0), Global, &syn(A, 80)), Pass);
        assert_eq!(ingress(&mut fw, t(0), Global, &syn(A, 81)), Drop);
        // The earlier drop rule wins over the accept for port 80.
        assert_eq!(ingress(&mut fw, t(0), Global, &syn(C, 80)), Drop);
        // Direction "in" does not cover frames from the local network.
        assert_eq!(ingress(&mut fw, t(0), Local, &syn(A, 8080)), Drop);
        let dgram = |sport, dport| udp(ep(A, sport), ep(B, dport));
        assert_eq!(ingress(&mut fw, t(0), Global, &dgram(2000, 5005)), Pass);
        assert_eq!(ingress(&mut fw, t(0), Global, &dgram(2000, 5011)), Drop);
        assert_eq!(ingress(&mut fw, t(0), Global, &dgram(53, 5005)), Drop);
        assert_eq!(counter(&fw, "rule0_packets"), 1);
        assert_eq!(counter(&fw, "rule1_packets"), 1);
        assert_eq!(counter(&fw, "rule2_packets"), 1);
        assert_eq!(counter(&fw, "accepted"), 2);
        assert_eq!(counter(&fw, "dropped"), 5);
        assert_eq!(counter(&fw, "connections"), 2);
    }

    #[test]
    fn replies_to_outbound_tcp_pass_unsolicited_inbound_does_not() {
        let mut fw = firewall(
            r#"
            [[rule]]
            action = "accept"
            direction = "out"
            proto = "tcp"
            "#,
        );
        let (a, b) = (ep(A, 40000), ep(B, 80));
        assert_eq!(
            ingress(&mut fw, t(0), Local, &tcp(a, b, TcpControl::Syn, false)),
            Pass
        );
        assert_eq!(
            ingress(&mut fw, t(0), Global, &tcp(b, a, TcpControl::Syn, true)),
            Pass
        );
        assert_eq!(
            ingress(&mut fw, t(0), Local, &tcp(a, b, TcpControl::None, true)),
            Pass
        );
        assert_eq!(
            ingress(&mut fw, t(1), Global, &tcp(b, a, TcpControl::Psh, true)),
            Pass
        );
        // Nobody asked for these.
        let c = ep(C, 5555);
        assert_eq!(
            ingress(
                &mut fw,
                t(1),
                Global,
                &tcp(c, ep(A, 22), TcpControl::Syn, false)
            ),
            Drop
        );
        assert_eq!(
            ingress(&mut fw, t(1), Global, &tcp(c, a, TcpControl::None, true)),
            Drop
        );
        assert_eq!(
            ingress(&mut fw, t(1), Global, &tcp(c, a, TcpControl::Syn, true)),
            Drop
        );
        assert_eq!(counter(&fw, "invalid"), 2);
        // Closing still lets the last segments through.
        assert_eq!(
            ingress(&mut fw, t(2), Global, &tcp(b, a, TcpControl::Fin, true)),
            Pass
        );
        assert_eq!(
            ingress(&mut fw, t(2), Local, &tcp(a, b, TcpControl::Fin, true)),
            Pass
        );
        assert_eq!(
            ingress(&mut fw, t(2), Local, &tcp(a, b, TcpControl::None, true)),
            Pass
        );
        // ... for the closing timeout only.
        assert_eq!(
            ingress(&mut fw, t(40), Global, &tcp(b, a, TcpControl::None, true)),
            Drop
        );
        assert_eq!(counter(&fw, "expired"), 1);
        assert_eq!(counter(&fw, "connections_created"), 1);
    }

    #[test]
    fn own_stack_replies_pass_and_established_rules_may_drop() {
        let mut fw = firewall(
            r#"
            [[rule]]
            action = "drop"
            proto = "tcp"
            sport = 7
            state = "established"
            [[rule]]
            action = "accept"
            direction = "in"
            proto = "tcp"
            dport = "7-9"
            "#,
        );
        let (c, s7, s8) = (ep(C, 40000), ep(A, 7), ep(A, 8));
        assert_eq!(
            ingress(&mut fw, t(0), Global, &tcp(c, s8, TcpControl::Syn, false)),
            Pass
        );
        assert_eq!(
            egress(&mut fw, t(0), &tcp(s8, c, TcpControl::Syn, true)),
            Pass
        );
        assert_eq!(
            ingress(&mut fw, t(0), Global, &tcp(c, s7, TcpControl::Syn, false)),
            Pass
        );
        assert_eq!(
            egress(&mut fw, t(0), &tcp(s7, c, TcpControl::Syn, true)),
            Drop
        );
        // The device itself may not start connections: no rule allows it.
        assert_eq!(
            egress(&mut fw, t(0), &tcp(s8, ep(C, 80), TcpControl::Syn, false)),
            Drop
        );
        assert_eq!(fw.rule_packets(0), 1);
        assert_eq!(fw.rule_packets(1), 2);
    }

    #[test]
    fn udp_reply_passes_until_the_entry_expires() {
        let mut fw = firewall(
            r#"
            udp_timeout = "30s"
            udp_replied_timeout = "3m"
            [[rule]]
            action = "accept"
            direction = "out"
            proto = "udp"
            "#,
        );
        let (a, b) = (ep(A, 5353), ep(B, 53));
        assert_eq!(ingress(&mut fw, t(0), Local, &udp(a, b)), Pass);
        assert_eq!(ingress(&mut fw, t(1), Global, &udp(b, a)), Pass);
        // Replied: the longer timeout, refreshed by each packet.
        assert_eq!(ingress(&mut fw, t(150), Global, &udp(b, a)), Pass);
        assert_eq!(ingress(&mut fw, t(150 + 181), Global, &udp(b, a)), Drop);
        // Never answered: the short one.
        let a2 = ep(A, 5354);
        assert_eq!(ingress(&mut fw, t(400), Local, &udp(a2, b)), Pass);
        assert_eq!(ingress(&mut fw, t(429), Global, &udp(b, a2)), Pass);
        let a3 = ep(A, 5355);
        assert_eq!(ingress(&mut fw, t(400), Local, &udp(a3, b)), Pass);
        assert_eq!(ingress(&mut fw, t(431), Global, &udp(b, a3)), Drop);
        assert!(counter(&fw, "expired") >= 2);
    }

    #[test]
    fn icmp_echo_reply_and_related_errors_pass() {
        let mut fw = firewall(
            r#"
            [[rule]]
            action = "accept"
            direction = "out"
            proto = "icmp"
            [[rule]]
            action = "accept"
            direction = "out"
            proto = "udp"
            "#,
        );
        assert_eq!(ingress(&mut fw, t(0), Local, &ping(A, B, true, 7)), Pass);
        assert_eq!(ingress(&mut fw, t(0), Global, &ping(B, A, false, 7)), Pass);
        assert_eq!(ingress(&mut fw, t(0), Global, &ping(B, A, false, 8)), Drop);
        assert_eq!(ingress(&mut fw, t(0), Global, &ping(B, A, true, 9)), Drop);
        assert_eq!(ingress(&mut fw, t(31), Global, &ping(B, A, false, 7)), Drop);
        // Port unreachable for a datagram we sent is related; for one we
        // never sent it is not.
        let sent = udp_l4(ep(A, 4000), ep(B, 9));
        assert_eq!(
            ingress(&mut fw, t(40), Local, &udp(ep(A, 4000), ep(B, 9))),
            Pass
        );
        let unreachable = |data: &[u8]| {
            let header = Ipv4Repr {
                src_addr: A,
                dst_addr: B,
                next_header: IpProtocol::Udp,
                payload_len: data.len(),
                hop_limit: 64,
            };
            icmp(
                B,
                A,
                Icmpv4Repr::DstUnreachable {
                    reason: Icmpv4DstUnreachable::PortUnreachable,
                    header,
                    data,
                },
            )
        };
        assert_eq!(
            ingress(&mut fw, t(40), Global, &unreachable(&sent[..8])),
            Pass
        );
        let other = udp_l4(ep(A, 4001), ep(B, 9));
        assert_eq!(
            ingress(&mut fw, t(40), Global, &unreachable(&other[..8])),
            Drop
        );
    }

    #[test]
    fn ipv6_tcp_is_tracked_and_neighbour_discovery_passes() {
        let mut fw = firewall(
            r#"
            [[rule]]
            action = "accept"
            direction = "in"
            proto = "tcp"
            dst = "fd00:2::/64"
            dport = 443
            "#,
        );
        let c = ep(Ipv6Address::new(0xfd00, 9, 0, 0, 0, 0, 0, 1), 50000);
        let s = ep(Ipv6Address::new(0xfd00, 2, 0, 0, 0, 0, 0, 2), 443);
        let s2 = ep(Ipv6Address::new(0xfd00, 2, 0, 0, 0, 0, 0, 2), 444);
        assert_eq!(
            ingress(&mut fw, t(0), Global, &tcp(c, s, TcpControl::Syn, false)),
            Pass
        );
        assert_eq!(
            egress(&mut fw, t(0), &tcp(s, c, TcpControl::Syn, true)),
            Pass
        );
        assert_eq!(
            ingress(&mut fw, t(0), Global, &tcp(c, s, TcpControl::None, true)),
            Pass
        );
        assert_eq!(
            ingress(&mut fw, t(0), Global, &tcp(c, s2, TcpControl::Syn, false)),
            Drop
        );
        // A neighbour solicitation (type 135) needs no rule.
        let mut ns = [0u8; 24];
        ns[0] = 135;
        assert_eq!(
            ingress(
                &mut fw,
                t(0),
                Global,
                &wrap(c.0, s.0, IpProtocol::Icmpv6, &ns)
            ),
            Pass
        );
        // An IPv4 prefix never matches an IPv6 packet.
        let mut v4only = firewall(
            r#"
            [[rule]]
            action = "accept"
            dst = "0.0.0.0/0"
            "#,
        );
        assert_eq!(
            ingress(
                &mut v4only,
                t(0),
                Global,
                &tcp(c, s, TcpControl::Syn, false)
            ),
            Drop
        );
    }

    #[test]
    fn truncated_and_garbage_frames_are_counted_drops() {
        let v6 = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
        let frames = [
            tcp(ep(A, 1), ep(B, 2), TcpControl::Syn, false),
            udp(ep(A, 1), ep(B, 2)),
            ping(A, B, true, 1),
            tcp(ep(v6, 1), ep(v6, 2), TcpControl::Syn, false),
        ];
        for medium in ["ethernet", "ip"] {
            let mut fw = firewall(&format!(
                "default = \"accept\"\nmedium = \"{medium}\"\nlog_drops_per_second = 0"
            ));
            let mut expected = 0;
            for f in &frames {
                let f = if medium == "ip" { &f[14..] } else { &f[..] };
                for len in 0..f.len() {
                    assert_eq!(ingress(&mut fw, t(0), Global, &f[..len]), Drop, "len {len}");
                    assert_eq!(egress(&mut fw, t(0), &f[..len]), Drop, "len {len}");
                    expected += 2;
                }
                assert_eq!(ingress(&mut fw, t(0), Global, f), Pass);
            }
            assert_eq!(counter(&fw, "malformed"), expected);
        }
        // Random bytes, with and without a plausible header: no panic.
        let mut fw = firewall("log_drops_per_second = 0");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..20_000u64 {
            let base = &frames[(i % 4) as usize];
            let mut f = base.clone();
            for _ in 0..1 + i % 4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % f.len() as u64) as usize;
                f[at] = (x >> 32) as u8;
            }
            let _ = ingress(&mut fw, t(i / 100), Global, &f);
        }
    }

    #[test]
    fn non_first_fragments_dropped_unless_a_rule_allows_them() {
        let frag = |src| {
            let mut f = udp(ep(src, 1), ep(B, 2));
            f[14 + 6..14 + 8].copy_from_slice(&(64u16 / 8).to_be_bytes());
            f
        };
        let mut fw = firewall(
            r#"
            default = "accept"
            [[rule]]
            action = "accept"
            src = "10.0.0.0/24"
            fragments = true
            "#,
        );
        assert_eq!(ingress(&mut fw, t(0), Global, &frag(A)), Pass);
        assert_eq!(ingress(&mut fw, t(0), Global, &frag(C)), Drop);
        assert_eq!(counter(&fw, "fragments_dropped"), 1);
        assert_eq!(counter(&fw, "rule0_packets"), 1);
        // A first fragment (more-fragments set, offset 0) is a whole packet.
        let mut first = udp(ep(C, 1), ep(B, 2));
        first[14 + 6] = 0x20;
        assert_eq!(ingress(&mut fw, t(0), Global, &first), Pass);
    }

    #[test]
    fn full_table_drops_new_connections_and_counts_them() {
        let mut fw = firewall(
            r#"
            default = "accept"
            max_connections = 2
            "#,
        );
        let flow = |port| udp(ep(A, port), ep(B, 53));
        assert_eq!(ingress(&mut fw, t(0), Local, &flow(1)), Pass);
        assert_eq!(ingress(&mut fw, t(0), Local, &flow(2)), Pass);
        assert_eq!(ingress(&mut fw, t(0), Local, &flow(3)), Drop);
        assert_eq!(counter(&fw, "table_full"), 1);
        // Existing connections keep working.
        assert_eq!(
            ingress(&mut fw, t(1), Global, &udp(ep(B, 53), ep(A, 2))),
            Pass
        );
        // Once the unanswered one expires there is room again.
        assert_eq!(ingress(&mut fw, t(35), Local, &flow(3)), Pass);
        assert_eq!(counter(&fw, "connections"), 2);
    }

    #[test]
    fn invalid_packets_follow_an_accepting_default() {
        let mut fw = firewall("default = \"accept\"");
        let stray = tcp(ep(C, 1), ep(A, 2), TcpControl::None, true);
        assert_eq!(ingress(&mut fw, t(0), Global, &stray), Pass);
        assert_eq!(counter(&fw, "invalid"), 1);
        assert_eq!(counter(&fw, "connections"), 0);
    }

    #[test]
    fn drop_logging_is_rate_limited() {
        let mut fw = firewall("log_drops_per_second = 2");
        let syn = tcp(ep(C, 1), ep(A, 2), TcpControl::Syn, false);
        for _ in 0..10 {
            assert_eq!(ingress(&mut fw, t(0), Global, &syn), Drop);
        }
        assert_eq!(counter(&fw, "logs_suppressed"), 8);
        assert_eq!(ingress(&mut fw, t(1), Global, &syn), Drop);
        assert_eq!(counter(&fw, "logs_suppressed"), 8);
    }

    #[test]
    fn config_errors_name_the_problem() {
        let err = |text: &str| {
            let cfg: FirewallConfig = toml::from_str(text).expect("parses");
            match Firewall::new(cfg) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("accepted: {text}"),
            }
        };
        let rule = |body: &str| format!("[[rule]]\naction = \"accept\"\n{body}");
        assert!(err(&rule("src = \"10.0.0.0/33\"")).contains("rule 0: src"));
        assert!(err(&rule("dst = \"10.0.0/8\"")).contains("rule 0: dst"));
        assert!(err(&rule("proto = \"tcp\"\ndport = \"90-80\"")).contains("dport"));
        assert!(err(&rule("proto = \"udp\"\nsport = 70000")).contains("sport"));
        assert!(err(&rule("proto = \"udp\"\nsport = \"1-x\"")).contains("sport"));
        assert!(err(&rule("dport = 80")).contains("need proto"));
        assert!(err(&rule("proto = \"icmp\"\nsrc = \"fd00::/8\"")).contains("icmpv6"));
        assert!(err(&rule("src = \"10.0.0.0/8\"\ndst = \"fd00::/8\"")).contains("IP versions"));
        assert!(err("max_connections = 0").contains("max_connections"));
        assert!(err("udp_timeout = \"0s\"").contains("udp_timeout"));
        assert!(err("icmp_timeout = \"soon\"").contains("icmp_timeout"));
        // Unknown fields and values are refused by the parser.
        let parse = |text: &str| toml::from_str::<super::super::FunctionConfig>(text);
        assert!(parse("kind = \"firewall\"\ndefualt = \"drop\"").is_err());
        assert!(parse("kind = \"firewall\"\ndefault = \"reject\"").is_err());
        assert!(parse("kind = \"firewall\"\n[[rule]]\naction = \"accept\"\nport = 1").is_err());
        assert!(
            parse("kind = \"firewall\"\n[[rule]]\naction = \"accept\"\nproto = \"sctp\"").is_err()
        );
        let ok = parse("kind = \"firewall\"\ndefault = \"accept\"\n[[rule]]\naction = \"drop\"\nsrc = \"10.0.0.1\"")
            .expect("valid");
        assert!(super::super::build(&ok).is_ok());
    }
}
