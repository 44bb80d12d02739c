//! Policy-based re-routing with health-checked next hops.
//!
//! What Linux does with `ip rule` plus policy routing tables, and
//! keepalived or BFD with next-hop tracking, on one forwarding device
//! (`forward = true`):
//!
//! - **Next hops** (`[[next_hop]]`) are named: a fixed `address` (IPv4,
//!   IPv6, or a list with one of each), or a `device` name resolved at run
//!   time to that device's addresses on this device's networks (looked up
//!   again every `interval`, so a device that comes back elsewhere is
//!   followed), or a `network` (`"local"` / `"global"`): out of that
//!   network's adapter, to the destination if it is on that network, else
//!   to the network's gateway (a static route's or the default one). An
//!   address or device is health-checked by ICMP echo (`check = "icmp"`,
//!   RFC 792 / RFC 4443, sent from the device's own stack) or not at all
//!   (`check = "none"`: up whenever it has an address); a network is always
//!   up.
//! - **Health state machine** (keepalived's `fall`/`rise`): a probe goes
//!   out every `interval` (the next one only once the previous was
//!   answered or given up on) and waits `timeout` for its reply. An up next
//!   hop goes down after `fall` consecutive misses; a down one comes up
//!   after `rise` consecutive answers. A device next hop whose device
//!   vanishes from the network is down at once; one that appears again must
//!   earn `rise` answers first. Next hops start up, so traffic flows at
//!   once.
//! - **Rules** (`[[rule]]`) match transit packets by source and destination
//!   prefix, IP protocol, ports and DSCP; the first match wins. Its `via` is
//!   an ordered preference list: the packet goes to the first next hop that
//!   is up and has an address of the packet's family (**failover**). When a
//!   preferred next hop comes back up, traffic returns to it (**failback**),
//!   unless `failback = false`, which keeps the current one while it stays
//!   up. With none up, `when_down = "table"` lets the routing table decide
//!   (the default) and `"drop"` drops.
//! - Packets matching no rule, packets addressed to the device itself
//!   (health-check replies among them), broadcast, multicast, link-local,
//!   non-IP frames and packets whose TTL runs out here pass to the normal
//!   path. Malformed or truncated packets pass too (the stack and the
//!   routing table check them again) and are counted.
//!
//! Mechanics: `on_ingress` returns [`Verdict::Via`] with the chosen next
//! hop's address (or [`Verdict::Redirect`] for a network); the device sets
//! the link-layer destination and forwards.
//! The choice per rule and family is cached and recomputed only when a next
//! hop changes state, so a packet costs a parse and a first-match scan.
//!
//! Counters: `rule.NAME.packets`, `next_hop.NAME.packets` / `.up` /
//! `.probes_sent` / `.probes_lost`, `failovers` and `failbacks` (changes of
//! a rule's next hop away from / back towards its preference), `unmatched`,
//! `to_device`, `no_next_hop` (a rule matched but none of its next hops was
//! up) and `malformed`. State changes are logged with `log::info!`.
//!
//! ```
//! use shmnet::functions::reroute::{Reroute, RerouteConfig};
//! use shmnet::functions::Function;
//! let cfg: RerouteConfig = toml::from_str(r#"
//!     [[next_hop]]
//!     name = "a"
//!     device = "router-a"
//!     [[next_hop]]
//!     name = "b"
//!     address = "10.20.0.3"
//!     interval = "200ms"
//!     fall = 2
//!     [[rule]]
//!     name = "web"
//!     proto = "tcp"
//!     dport = "80-443"
//!     via = ["a", "b"]
//! "#).unwrap();
//! let r = Reroute::new(cfg).unwrap();
//! assert_eq!(r.name(), "reroute");
//! assert!(shmnet::stack::hook::counters_of(&r).contains(&("next_hop.b.up".to_string(), 1)));
//! ```

#![allow(clippy::redundant_closure_call)] // transitional: counters and reconfigure shims, removed as each function moves to the new contract
use std::net::IpAddr;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::icmp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpCidr, Ipv4Address, Ipv6Address};

use super::matching::{
    PROTO_TCP, PROTO_UDP, PortSpec, Prefix, ProtoSpec, parse_duration, ports_field, prefix_field,
    proto_field,
};
use super::{
    Directory, Frame, Function, FunctionConfig, FunctionError, Role, SocketContext, Verdict,
};
use crate::config::MediumName;

/// Extension headers walked in an IPv6 packet before giving up.
const MAX_EXTENSION_HEADERS: usize = 8;
/// ICMP echo identifier of the health checks (each device has its own
/// stack, so one value serves all).
const PROBE_IDENT: u16 = 0x5252;
/// Payload of a health-check echo request, after the 8-byte ICMP header.
const PROBE_PAYLOAD: &[u8; 8] = b"shmnetrr";

/// One address or a list (at most one IPv4 and one IPv6).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum Addresses {
    One(String),
    Many(Vec<String>),
}

/// One of a device's two networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkName {
    Local,
    Global,
}

/// How a next hop's health is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// ICMP echo from the device's own stack.
    #[default]
    Icmp,
    /// None: up whenever it has an address.
    None,
}

/// What a matching packet does when none of its rule's next hops is up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenDown {
    /// The routing table decides, as if no rule had matched.
    #[default]
    Table,
    Drop,
}

/// One `[[function.next_hop]]`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NextHopConfig {
    pub name: String,
    /// A fixed address on one of the device's networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addresses>,
    /// A device on one of this device's networks, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// One of the device's networks: packets leave by its adapter, to
    /// their destination if it is on that network, else to its gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkName>,
    /// Default: `icmp` for an address or device, `none` for a network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// Time between probes (and between looking up `device` again):
    /// `"100ms"`, `"2s"`.
    #[serde(default = "default_interval")]
    pub interval: String,
    /// How long a probe waits for its reply (default: `interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Consecutive misses that take an up next hop down.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Consecutive answers that bring a down next hop up.
    #[serde(default = "default_rise")]
    pub rise: u32,
}

/// One `[[function.rule]]`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Names the rule's counter (default: its index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Source prefix (`"10.0.0.0/24"`, `"fd00::/64"`, or one address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Destination prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<ProtoSpec>,
    /// Source port or range (needs `proto = "tcp"` or `"udp"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<PortSpec>,
    /// Destination port or range (needs `proto = "tcp"` or `"udp"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<PortSpec>,
    /// DiffServ code point, 0..=63.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dscp: Option<u8>,
    /// Next hops by name, most preferred first.
    pub via: Vec<String>,
}

/// `[function] kind = "reroute"`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RerouteConfig {
    /// Link medium of the device's networks ("ethernet" or "ip").
    #[serde(default)]
    pub medium: MediumName,
    /// Return to a preferred next hop when it comes back up.
    #[serde(default = "default_failback")]
    pub failback: bool,
    #[serde(default)]
    pub when_down: WhenDown,
    #[serde(rename = "next_hop")]
    pub next_hops: Vec<NextHopConfig>,
    /// Ordered rules; the first match wins.
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
}

fn default_interval() -> String {
    "100ms".into()
}
fn default_fall() -> u32 {
    3
}
fn default_rise() -> u32 {
    2
}
fn default_failback() -> bool {
    true
}

fn v4_bits(a: Ipv4Address) -> u128 {
    u128::from(u32::from_be_bytes(a.octets()))
}
fn v6_bits(a: Ipv6Address) -> u128 {
    u128::from_be_bytes(a.octets())
}

/// The parts of an IP packet the rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packet {
    v6: bool,
    src: u128,
    dst: u128,
    proto: u8,
    dscp: u8,
    ttl: u8,
    /// `(source, destination)` of TCP and UDP; none for other protocols and
    /// non-first fragments.
    ports: Option<(u16, u16)>,
}

/// Marker for a malformed or truncated frame.
#[derive(Debug, PartialEq, Eq)]
struct Malformed;

/// `Ok(None)` for frames that carry no IP packet (ARP and the like).
fn parse(medium: MediumName, bytes: &[u8]) -> Result<Option<Packet>, Malformed> {
    let ip = match medium {
        MediumName::Ethernet => match bytes.get(12..14) {
            Some([0x08, 0x00]) | Some([0x86, 0xdd]) => &bytes[14..],
            Some(_) => return Ok(None),
            None => return Err(Malformed),
        },
        MediumName::Ip => bytes,
    };
    match ip.first().map(|b| b >> 4) {
        Some(4) => parse_ipv4(ip).map(Some),
        Some(6) => parse_ipv6(ip).map(Some),
        _ => Err(Malformed),
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn ports(proto: u8, l4: &[u8]) -> Result<Option<(u16, u16)>, Malformed> {
    match proto {
        PROTO_TCP | PROTO_UDP => {
            let h = l4.get(..4).ok_or(Malformed)?;
            Ok(Some((be16(h, 0), be16(h, 2))))
        }
        _ => Ok(None),
    }
}

fn parse_ipv4(ip: &[u8]) -> Result<Packet, Malformed> {
    if ip.len() < 20 {
        return Err(Malformed);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2));
    if ihl < 20 || total < ihl || total > ip.len() {
        return Err(Malformed);
    }
    let proto = ip[9];
    let first = be16(ip, 6) & 0x1fff == 0;
    Ok(Packet {
        v6: false,
        src: u128::from(u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]])),
        dst: u128::from(u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]])),
        proto,
        dscp: ip[1] >> 2,
        ttl: ip[8],
        ports: if first {
            ports(proto, &ip[ihl..total])?
        } else {
            None
        },
    })
}

fn parse_ipv6(ip: &[u8]) -> Result<Packet, Malformed> {
    if ip.len() < 40 {
        return Err(Malformed);
    }
    let end = 40 + usize::from(be16(ip, 4));
    let mut rest = ip.get(40..end).ok_or(Malformed)?;
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&ip[at..at + 16]);
        u128::from_be_bytes(a)
    };
    let mut p = Packet {
        v6: true,
        src: addr(8),
        dst: addr(24),
        proto: ip[6],
        dscp: ((ip[0] & 0x0f) << 2) | (ip[1] >> 6),
        ttl: ip[7],
        ports: None,
    };
    for _ in 0..=MAX_EXTENSION_HEADERS {
        let len = match p.proto {
            // Hop-by-hop, routing, destination options.
            0 | 43 | 60 => (usize::from(*rest.get(1).ok_or(Malformed)?) + 1) * 8,
            // Authentication header.
            51 => (usize::from(*rest.get(1).ok_or(Malformed)?) + 2) * 4,
            // Fragment: a non-first one carries no ports.
            44 => {
                let h = rest.get(..8).ok_or(Malformed)?;
                if be16(h, 2) & 0xfff8 != 0 {
                    p.proto = h[0];
                    return Ok(p);
                }
                8
            }
            proto => {
                p.ports = ports(proto, rest)?;
                return Ok(p);
            }
        };
        let h = rest.get(..len).ok_or(Malformed)?;
        p.proto = h[0];
        rest = &rest[len..];
    }
    Err(Malformed)
}

/// A rule, compiled.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    src: Option<Prefix>,
    dst: Option<Prefix>,
    proto: Option<u8>,
    sport: Option<(u16, u16)>,
    dport: Option<(u16, u16)>,
    dscp: Option<u8>,
    /// Next hop indices, most preferred first.
    via: Vec<usize>,
    /// The chosen next hop and its address, for IPv4 and IPv6 packets.
    active: [Option<(usize, Verdict)>; 2],
    packets: u64,
}

impl Rule {
    fn compile(i: usize, r: &RuleConfig, hops: &[Hop]) -> Result<Rule, String> {
        let name = r.name.clone().unwrap_or_else(|| i.to_string());
        let owner = format!("rule {name}");
        let proto = proto_field(&owner, r.proto.as_ref())?;
        let prefix = |field: &str, s: &Option<String>| prefix_field(&owner, field, s.as_deref());
        let ports = |field: &str, p: &Option<PortSpec>| ports_field(&owner, field, p.as_ref());
        let rule = Rule {
            src: prefix("src", &r.src)?,
            dst: prefix("dst", &r.dst)?,
            proto,
            sport: ports("sport", &r.sport)?,
            dport: ports("dport", &r.dport)?,
            dscp: r.dscp,
            via: Vec::new(),
            active: [None; 2],
            packets: 0,
            name,
        };
        let name = &rule.name;
        if (rule.sport.is_some() || rule.dport.is_some())
            && !matches!(rule.proto, Some(PROTO_TCP | PROTO_UDP))
        {
            return Err(format!(
                "rule {name}: sport/dport need proto = \"tcp\" or \"udp\""
            ));
        }
        if rule.dscp.is_some_and(|d| d > 63) {
            return Err(format!("rule {name}: dscp must be 0..=63"));
        }
        if let (Some(s), Some(d)) = (rule.src, rule.dst)
            && s.v6 != d.v6
        {
            return Err(format!(
                "rule {name}: src and dst are of different IP versions"
            ));
        }
        if r.via.is_empty() {
            return Err(format!("rule {name}: via lists no next hop"));
        }
        let mut via = Vec::with_capacity(r.via.len());
        for v in &r.via {
            let i = hops.iter().position(|h| &h.name == v).ok_or_else(|| {
                format!("rule {name}: via names {v:?}, which is no next_hop's name")
            })?;
            if via.contains(&i) {
                return Err(format!("rule {name}: via names {v:?} twice"));
            }
            via.push(i);
        }
        Ok(Rule { via, ..rule })
    }

    fn matches(&self, p: &Packet) -> bool {
        let in_range = |r: Option<(u16, u16)>, port: Option<u16>| match (r, port) {
            (None, _) => true,
            (Some((lo, hi)), Some(p)) => lo <= p && p <= hi,
            (Some(_), None) => false,
        };
        self.proto.is_none_or(|x| x == p.proto)
            && self.src.is_none_or(|s| s.contains(p.v6, p.src))
            && self.dst.is_none_or(|d| d.contains(p.v6, p.dst))
            && self.dscp.is_none_or(|d| d == p.dscp)
            && in_range(self.sport, p.ports.map(|p| p.0))
            && in_range(self.dport, p.ports.map(|p| p.1))
    }
}

/// Where a next hop is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Fixed,
    Device(String),
    Network(Role),
}

/// A next hop: where it is, its health, its counters.
#[derive(Debug, Clone)]
struct Hop {
    name: String,
    target: Target,
    check: Check,
    interval: Duration,
    timeout: Duration,
    fall: u32,
    rise: u32,
    v4: Option<Ipv4Address>,
    v6: Option<Ipv6Address>,
    /// Has a device next hop ever had an address (the first one counts as
    /// up; one that comes back must prove itself).
    resolved_once: bool,
    next_resolve: Instant,
    up: bool,
    /// Consecutive misses while up, answers while down.
    streak: u32,
    /// The probe in flight: sequence number and when it left.
    outstanding: Option<(u16, Instant)>,
    next_probe: Instant,
    packets: u64,
    probes_sent: u64,
    probes_lost: u64,
}

impl Hop {
    fn compile(c: &NextHopConfig) -> Result<Hop, String> {
        let name = &c.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
        {
            return Err(format!(
                "next_hop {name:?}: name must be letters, digits, '-', '_' or '.'"
            ));
        }
        let dur = |what: &str, s: &str| {
            parse_duration(s)
                .filter(|d| *d >= Duration::from_millis(1) && *d <= Duration::from_secs(3600))
                .ok_or_else(|| {
                    format!(
                        "next_hop {name}: {what} {s:?} is not a duration between 1ms and 1h \
                         (like \"100ms\" or \"2s\")"
                    )
                })
        };
        let interval = dur("interval", &c.interval)?;
        let timeout = match &c.timeout {
            Some(t) => dur("timeout", t)?,
            None => interval,
        };
        if !(1..=1000).contains(&c.fall) || !(1..=1000).contains(&c.rise) {
            return Err(format!("next_hop {name}: fall and rise must be 1..=1000"));
        }
        let (mut v4, mut v6) = (None, None);
        let target = match (&c.address, &c.device) {
            (None, None) if c.network.is_some() => Target::Network(match c.network {
                Some(NetworkName::Local) => Role::Local,
                _ => Role::Global,
            }),
            _ if c.network.is_some() => {
                return Err(format!(
                    "next_hop {name}: give one of address, device or network"
                ));
            }
            (Some(a), None) => {
                let list = match a {
                    Addresses::One(s) => std::slice::from_ref(s),
                    Addresses::Many(v) => v.as_slice(),
                };
                if list.is_empty() {
                    return Err(format!("next_hop {name}: address lists no address"));
                }
                for s in list {
                    let bad = || {
                        format!(
                            "next_hop {name}: address {s:?} is not one IPv4 or IPv6 address \
                             (at most one of each)"
                        )
                    };
                    match s.trim().parse::<IpAddr>().map_err(|_| bad())? {
                        IpAddr::V4(a) if v4.is_none() && !a.is_unspecified() => {
                            v4 = Some(Ipv4Address::from_octets(a.octets()))
                        }
                        IpAddr::V6(a) if v6.is_none() && !a.is_unspecified() => {
                            v6 = Some(Ipv6Address::from_octets(a.octets()))
                        }
                        _ => return Err(bad()),
                    }
                }
                Target::Fixed
            }
            (None, Some(d)) if !d.is_empty() => Target::Device(d.clone()),
            _ => {
                return Err(format!(
                    "next_hop {name}: give one of address, device or network"
                ));
            }
        };
        let check = match (c.check, &target) {
            (Some(Check::Icmp), Target::Network(_)) => {
                return Err(format!(
                    "next_hop {name}: a network next hop has no address to check \
                     (use check = \"none\", or name its gateway by address)"
                ));
            }
            (Some(c), _) => c,
            (None, Target::Network(_)) => Check::None,
            (None, _) => Check::Icmp,
        };
        let fixed = matches!(target, Target::Fixed | Target::Network(_));
        Ok(Hop {
            name: name.clone(),
            up: fixed,
            resolved_once: fixed,
            target,
            check,
            interval,
            timeout,
            fall: c.fall,
            rise: c.rise,
            v4,
            v6,
            next_resolve: Instant::ZERO,
            streak: 0,
            outstanding: None,
            next_probe: Instant::ZERO,
            packets: 0,
            probes_sent: 0,
            probes_lost: 0,
        })
    }

    /// What a packet of the family sent to this next hop gets: `None` if
    /// the next hop has no address of that family.
    fn verdict(&self, v6: bool) -> Option<Verdict> {
        match self.target {
            Target::Network(role) => Some(Verdict::Redirect(role)),
            _ => self.address(v6).map(Verdict::Via),
        }
    }

    fn address(&self, v6: bool) -> Option<IpAddress> {
        if v6 {
            self.v6.map(IpAddress::Ipv6)
        } else {
            self.v4.map(IpAddress::Ipv4)
        }
    }

    /// The address health checks go to: IPv4 if it has one.
    fn probe_address(&self) -> Option<IpAddress> {
        self.address(false).or(self.address(true))
    }

    /// When this next hop next needs attention.
    fn due(&self) -> Option<Instant> {
        let resolve = matches!(self.target, Target::Device(_)).then_some(self.next_resolve);
        let probe = match (self.check, self.outstanding) {
            (Check::None, _) => None,
            (Check::Icmp, Some((_, sent))) => Some(sent + self.timeout),
            (Check::Icmp, None) if self.probe_address().is_some() => Some(self.next_probe),
            (Check::Icmp, None) => None,
        };
        match (resolve, probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Counters not kept per rule or next hop.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RerouteStats {
    pub failovers: u64,
    pub failbacks: u64,
    pub unmatched: u64,
    pub to_device: u64,
    pub no_next_hop: u64,
    pub malformed: u64,
}

/// The re-routing function.
pub struct Reroute {
    medium: MediumName,
    failback: bool,
    when_down: WhenDown,
    hops: Vec<Hop>,
    rules: Vec<Rule>,
    /// The device's own addresses (IPv4 ones and their subnet broadcasts in
    /// the low 32 bits), learnt in `attach`.
    own: Vec<(bool, u128)>,
    socket: Option<SocketHandle>,
    seq: u16,
    /// Earliest `Hop::due`: `poll` does nothing before it.
    next_due: Option<Instant>,
    /// A next hop changed state or address: recompute the rules' choices.
    dirty: bool,
    scratch: Vec<u8>,
    stats: RerouteStats,
}

impl Reroute {
    pub fn new(cfg: RerouteConfig) -> Result<Reroute, FunctionError> {
        let bad = |why: String| FunctionError::Invalid {
            kind: "reroute",
            why,
        };
        if cfg.next_hops.is_empty() {
            return Err(bad("give at least one next_hop".into()));
        }
        let mut hops: Vec<Hop> = Vec::with_capacity(cfg.next_hops.len());
        for c in &cfg.next_hops {
            let h = Hop::compile(c).map_err(bad)?;
            if hops.iter().any(|o| o.name == h.name) {
                return Err(bad(format!("next_hop {}: name used twice", h.name)));
            }
            hops.push(h);
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(cfg.rules.len());
        for (i, r) in cfg.rules.iter().enumerate() {
            let r = Rule::compile(i, r, &hops).map_err(bad)?;
            if rules.iter().any(|o| o.name == r.name) {
                return Err(bad(format!("rule {}: name used twice", r.name)));
            }
            rules.push(r);
        }
        let mut r = Reroute {
            medium: cfg.medium,
            failback: cfg.failback,
            when_down: cfg.when_down,
            hops,
            rules,
            own: Vec::new(),
            socket: None,
            seq: 0,
            next_due: Some(Instant::ZERO),
            dirty: false,
            scratch: vec![0; 256],
            stats: RerouteStats::default(),
        };
        r.update_routes(false);
        Ok(r)
    }

    pub fn stats(&self) -> &RerouteStats {
        &self.stats
    }

    /// Is next hop `name` up? (`None`: no such next hop.)
    pub fn is_up(&self, name: &str) -> Option<bool> {
        self.hops.iter().find(|h| h.name == name).map(|h| h.up)
    }

    /// The next hop rule `name` now sends IPv4 (or IPv6) packets to.
    pub fn active(&self, rule: &str, v6: bool) -> Option<&str> {
        let r = self.rules.iter().find(|r| r.name == rule)?;
        r.active[usize::from(v6)].map(|(h, _)| self.hops[h].name.as_str())
    }

    /// Decides on one frame from an adapter.
    fn decide(&mut self, bytes: &[u8]) -> Verdict {
        let p = match parse(self.medium, bytes) {
            Ok(Some(p)) => p,
            Ok(None) => return Verdict::Pass,
            Err(Malformed) => {
                self.stats.malformed += 1;
                return Verdict::Pass;
            }
        };
        if self.is_local(&p) {
            self.stats.to_device += 1;
            return Verdict::Pass;
        }
        if p.ttl <= 1 {
            // The routing table counts and reports it.
            return Verdict::Pass;
        }
        for rule in &mut self.rules {
            if rule.matches(&p) {
                rule.packets += 1;
                return match rule.active[usize::from(p.v6)] {
                    Some((h, verdict)) => {
                        self.hops[h].packets += 1;
                        verdict
                    }
                    None => {
                        self.stats.no_next_hop += 1;
                        match self.when_down {
                            WhenDown::Table => Verdict::Pass,
                            WhenDown::Drop => Verdict::Drop,
                        }
                    }
                };
            }
        }
        self.stats.unmatched += 1;
        Verdict::Pass
    }

    /// Addressed to the device itself, or not routable (broadcast,
    /// multicast, IPv6 link-local).
    fn is_local(&self, p: &Packet) -> bool {
        let special = if p.v6 {
            p.dst >> 120 == 0xff || p.dst >> 118 == 0xfe80 >> 6
        } else {
            p.dst == u128::from(u32::MAX) || p.dst >> 28 == 0xe
        };
        special || self.own.iter().any(|&(v6, a)| v6 == p.v6 && a == p.dst)
    }

    /// Learns the device's addresses.
    fn set_own_addresses(&mut self, cidrs: &[IpCidr]) {
        self.own.clear();
        for c in cidrs {
            match c {
                IpCidr::Ipv4(c) => {
                    self.own.push((false, v4_bits(c.address())));
                    if let Some(b) = c.broadcast() {
                        self.own.push((false, v4_bits(b)));
                    }
                }
                IpCidr::Ipv6(c) => self.own.push((true, v6_bits(c.address()))),
            }
        }
    }

    /// Looks up device next hops that are due, through `devices`.
    fn resolve(&mut self, now: Instant, devices: &dyn Directory) {
        for h in &mut self.hops {
            let Target::Device(dev) = &h.target else {
                continue;
            };
            if now < h.next_resolve {
                continue;
            }
            h.next_resolve = now + h.interval;
            let found = devices.device_addresses(dev);
            let v4 = found.iter().find_map(|a| match a {
                IpAddress::Ipv4(a) => Some(*a),
                _ => None,
            });
            let v6 = found.iter().find_map(|a| match a {
                IpAddress::Ipv6(a) => Some(*a),
                _ => None,
            });
            if (v4, v6) == (h.v4, h.v6) {
                continue;
            }
            let found_any = v4.is_some() || v6.is_some();
            log::info!(
                "reroute: next hop {} (device {dev}) is now at {:?} {:?}",
                h.name,
                v4,
                v6
            );
            (h.v4, h.v6) = (v4, v6);
            h.outstanding = None;
            h.next_probe = now;
            h.streak = 0;
            // The first address counts as up (like a fixed one); a device
            // that vanished and came back must answer `rise` probes first,
            // unless nothing checks it.
            let up = found_any && (!h.resolved_once || h.check == Check::None);
            h.resolved_once |= found_any;
            if up != h.up {
                log::info!(
                    "reroute: next hop {} {}",
                    h.name,
                    if up { "up" } else { "down (no address)" }
                );
                h.up = up;
            }
            self.dirty = true;
        }
    }

    /// Sends the health checks that are due through `send` (which returns
    /// whether it could) and gives up on the ones that timed out. Returns
    /// whether it sent anything.
    fn run_probes(&mut self, now: Instant, send: &mut dyn FnMut(IpAddress, u16) -> bool) -> bool {
        let mut sent = false;
        for i in 0..self.hops.len() {
            let h = &mut self.hops[i];
            if h.check != Check::Icmp {
                continue;
            }
            if let Some((_, at)) = h.outstanding
                && now >= at + h.timeout
            {
                h.outstanding = None;
                h.probes_lost += 1;
                h.next_probe = h.next_probe.max(now);
                self.miss(i);
            }
            let h = &mut self.hops[i];
            if h.outstanding.is_none()
                && now >= h.next_probe
                && let Some(addr) = h.probe_address()
            {
                self.seq = self.seq.wrapping_add(1);
                // A probe that cannot be queued counts as sent and is lost
                // when its timeout passes.
                let _ = send(addr, self.seq);
                h.outstanding = Some((self.seq, now));
                h.next_probe = now + h.interval;
                h.probes_sent += 1;
                sent = true;
            }
        }
        sent
    }

    /// An echo reply from `from` with sequence number `seq` arrived.
    fn handle_reply(&mut self, from: IpAddress, seq: u16) {
        let hit = self.hops.iter().position(|h| {
            h.outstanding.is_some_and(|(s, _)| s == seq)
                && (h.address(false) == Some(from) || h.address(true) == Some(from))
        });
        let Some(i) = hit else {
            return;
        };
        let h = &mut self.hops[i];
        h.outstanding = None;
        if h.up {
            h.streak = 0;
            return;
        }
        h.streak += 1;
        if h.streak >= h.rise {
            h.streak = 0;
            h.up = true;
            log::info!("reroute: next hop {} up ({} answers)", h.name, h.rise);
            self.dirty = true;
        }
    }

    fn miss(&mut self, i: usize) {
        let h = &mut self.hops[i];
        if !h.up {
            h.streak = 0;
            return;
        }
        h.streak += 1;
        if h.streak >= h.fall {
            h.streak = 0;
            h.up = false;
            log::info!(
                "reroute: next hop {} down ({} probes unanswered)",
                h.name,
                h.fall
            );
            self.dirty = true;
        }
    }

    /// Recomputes each rule's next hop per family; with `count`, changes
    /// are counted as failovers (away from the preference) or failbacks
    /// (towards it) and logged.
    fn update_routes(&mut self, count: bool) {
        self.dirty = false;
        for r in &mut self.rules {
            let (mut over, mut back) = (false, false);
            for fam in [false, true] {
                let usable = |h: usize| self.hops[h].up && self.hops[h].verdict(fam).is_some();
                let current = r.active[usize::from(fam)].map(|(h, _)| h);
                let keep = current.filter(|&c| !self.failback && usable(c));
                let next = keep.or_else(|| r.via.iter().copied().find(|&h| usable(h)));
                r.active[usize::from(fam)] =
                    next.and_then(|h| self.hops[h].verdict(fam).map(|v| (h, v)));
                if next == current {
                    continue;
                }
                let rank = |h: Option<usize>| {
                    h.and_then(|h| r.via.iter().position(|&v| v == h))
                        .unwrap_or(usize::MAX)
                };
                if rank(next) < rank(current) {
                    back = true;
                } else {
                    over = true;
                }
                if count {
                    let name = |h: Option<usize>| h.map_or("none", |h| self.hops[h].name.as_str());
                    log::info!(
                        "reroute: rule {} ({}): next hop {} -> {}",
                        r.name,
                        if fam { "IPv6" } else { "IPv4" },
                        name(current),
                        name(next)
                    );
                }
            }
            if count {
                self.stats.failovers += u64::from(over);
                self.stats.failbacks += u64::from(back);
            }
        }
        self.next_due = self.hops.iter().filter_map(Hop::due).min();
    }

    fn refresh_due(&mut self) {
        self.next_due = self.hops.iter().filter_map(Hop::due).min();
    }
}

/// Writes an ICMP (`v6`: ICMPv6) echo request into `buf`; returns its
/// length. The stack computes the checksum when it sends it.
fn echo_request(v6: bool, seq: u16, buf: &mut [u8]) -> usize {
    let len = 8 + PROBE_PAYLOAD.len();
    buf[0] = if v6 { 128 } else { 8 };
    buf[1] = 0;
    buf[2..4].fill(0);
    buf[4..6].copy_from_slice(&PROBE_IDENT.to_be_bytes());
    buf[6..8].copy_from_slice(&seq.to_be_bytes());
    buf[8..len].copy_from_slice(PROBE_PAYLOAD);
    len
}

/// The sequence number of one of our echo replies.
fn echo_reply_seq(msg: &[u8]) -> Option<u16> {
    let h = msg.get(..8)?;
    let reply = matches!(h[0], 0 | 129) && h[1] == 0;
    (reply && be16(h, 4) == PROBE_IDENT).then(|| be16(h, 6))
}

impl Function for Reroute {
    fn name(&self) -> &'static str {
        "reroute"
    }

    fn on_ingress(&mut self, _now: Instant, _from: Role, frame: &mut Frame<'_>) -> Verdict {
        self.decide(frame.bytes())
    }

    fn attach(&mut self, cx: &mut SocketContext<'_>) {
        let cidrs = cx.iface.ip_addrs();
        self.set_own_addresses(cidrs);
        for h in self.hops.iter().filter(|h| h.target == Target::Fixed) {
            for a in [h.address(false), h.address(true)].into_iter().flatten() {
                if !cidrs.iter().any(|c| c.contains_addr(&a)) {
                    log::warn!(
                        "reroute: next hop {}: {a} is on neither of the device's networks; \
                         packets sent to it are dropped (no_route)",
                        h.name
                    );
                }
            }
        }
        let buffer =
            || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 32], vec![0; 32 * 64]);
        let mut s = icmp::Socket::new(buffer(), buffer());
        match s.bind(icmp::Endpoint::Ident(PROBE_IDENT)) {
            Ok(()) => self.socket = Some(cx.sockets.add(s)),
            Err(e) => log::warn!("reroute: cannot open the health-check socket: {e}"),
        }
        self.resolve(cx.now, cx.devices);
        self.update_routes(false);
    }

    fn detach(&mut self, cx: &mut SocketContext<'_>) {
        if let Some(h) = self.socket.take() {
            cx.sockets.remove(h);
        }
    }

    fn poll(&mut self, cx: &mut SocketContext<'_>) -> bool {
        let now = cx.now;
        let mut progress = false;
        if let Some(h) = self.socket {
            let s = cx.sockets.get_mut::<icmp::Socket>(h);
            while let Ok((n, from)) = s.recv_slice(&mut self.scratch) {
                if let Some(seq) = echo_reply_seq(&self.scratch[..n]) {
                    self.handle_reply(from, seq);
                    progress = true;
                }
            }
        }
        if progress || self.next_due.is_some_and(|d| now >= d) {
            self.resolve(now, cx.devices);
            let mut buf = [0u8; 16];
            let sent = match self.socket {
                Some(h) => {
                    let s = cx.sockets.get_mut::<icmp::Socket>(h);
                    self.run_probes(now, &mut |addr, seq| {
                        let n = echo_request(matches!(addr, IpAddress::Ipv6(_)), seq, &mut buf);
                        s.send_slice(&buf[..n], addr).is_ok()
                    })
                }
                None => self.run_probes(now, &mut |_, _| false),
            };
            progress |= sent;
            self.refresh_due();
        }
        if self.dirty {
            self.update_routes(true);
        }
        progress
    }

    fn poll_at(&self) -> Option<Instant> {
        self.next_due
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        let pairs: Vec<(String, u64)> = (|| {
            let s = &self.stats;
            let mut out: Vec<(String, u64)> = Vec::new();
            for r in &self.rules {
                out.push((format!("rule.{}.packets", r.name), r.packets));
            }
            for h in &self.hops {
                let n = &h.name;
                out.push((format!("next_hop.{n}.packets"), h.packets));
                out.push((format!("next_hop.{n}.up"), u64::from(h.up)));
                out.push((format!("next_hop.{n}.probes_sent"), h.probes_sent));
                out.push((format!("next_hop.{n}.probes_lost"), h.probes_lost));
            }
            out.extend([
                ("failovers".into(), s.failovers),
                ("failbacks".into(), s.failbacks),
                ("unmatched".into(), s.unmatched),
                ("to_device".into(), s.to_device),
                ("no_next_hop".into(), s.no_next_hop),
                ("malformed".into(), s.malformed),
            ]);
            out
        })();
        for (n, v) in pairs {
            visit(&n, v);
        }
    }

    /// Takes a changed configuration in place: next hops whose name and
    /// target (address or device) are unchanged keep their health state
    /// and counters, rules keep their counters by name, and the
    /// health-check socket stays open.
    fn reconfigure(&mut self, cfg: &dyn crate::stack::FunctionSpec) -> Result<bool, FunctionError> {
        let Some(cfg) = cfg.downcast_ref::<FunctionConfig>() else {
            return Ok(false);
        };
        Ok((|| -> bool {
            let FunctionConfig::Reroute(cfg) = cfg else {
                return false;
            };
            let Ok(mut new) = Reroute::new(cfg.clone()) else {
                return false;
            };
            for h in &mut new.hops {
                let Some(old) = self.hops.iter().find(|o| o.name == h.name) else {
                    continue;
                };
                let same_target = match (&h.target, &old.target) {
                    (Target::Fixed, Target::Fixed) => (h.v4, h.v6) == (old.v4, old.v6),
                    (Target::Device(a), Target::Device(b)) => a == b,
                    (Target::Network(a), Target::Network(b)) => a == b,
                    _ => false,
                };
                if !same_target {
                    continue;
                }
                (h.v4, h.v6, h.resolved_once) = (old.v4, old.v6, old.resolved_once);
                h.next_resolve = old.next_resolve;
                (h.up, h.streak) = (old.up, old.streak);
                (h.outstanding, h.next_probe) = (old.outstanding, old.next_probe);
                (h.packets, h.probes_sent, h.probes_lost) =
                    (old.packets, old.probes_sent, old.probes_lost);
                if h.check == Check::None && h.probe_address().is_some() {
                    h.up = true;
                }
            }
            for r in &mut new.rules {
                if let Some(old) = self.rules.iter().find(|o| o.name == r.name) {
                    r.packets = old.packets;
                }
            }
            new.own = std::mem::take(&mut self.own);
            new.socket = self.socket.take();
            new.seq = self.seq;
            new.stats = std::mem::take(&mut self.stats);
            new.update_routes(false);
            log::info!(
                "reroute: reconfigured ({} next hops, {} rules)",
                new.hops.len(),
                new.rules.len()
            );
            *self = new;
            true
        })())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{Ipv4Cidr, Ipv6Cidr};

    const A4: Ipv4Address = Ipv4Address::new(10, 20, 0, 2);
    const B4: Ipv4Address = Ipv4Address::new(10, 20, 0, 3);
    const A6: Ipv6Address = Ipv6Address::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 2);
    const B6: Ipv6Address = Ipv6Address::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 3);

    fn ms(n: i64) -> Instant {
        Instant::from_millis(n)
    }

    fn reroute(text: &str) -> Reroute {
        Reroute::new(toml::from_str(text).expect("test config parses")).expect("valid config")
    }

    fn counter(r: &Reroute, name: &str) -> u64 {
        crate::stack::hook::counters_of(r)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    fn ingress(r: &mut Reroute, bytes: &[u8]) -> Verdict {
        let mut buf = bytes.to_vec();
        let len = buf.len();
        r.on_ingress(
            ms(0),
            Role::Local,
            &mut Frame::new(&mut buf, len, crate::wire::LinkMedium::Ethernet),
        )
    }

    /// Ethernet (dst 02:..:02, src 02:..:01, IPv4) + IPv4 (TOS 0xb8 = DSCP
    /// 46, TTL 64, proto 6, 10.1.0.1 -> 10.2.0.2) + TCP 40000 -> 9, a byte
    /// fixture as captured on the wire (checksums zero: not looked at).
    const TCP4_DSCP46: [u8; 54] = [
        0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00, // Ethernet
        0x45, 0xb8, 0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0, 0, // IPv4
        10, 1, 0, 1, 10, 2, 0, 2, //
        0x9c, 0x40, 0x00, 0x09, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0,
        0, // TCP
    ];

    /// Ethernet + IPv6 (fd00:1::1 -> fd00:2::2, hop limit 64) + UDP 5353 -> 53.
    fn udp6(dst_port: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd];
        f.extend([0x60, 0, 0, 0, 0x00, 0x0c, 17, 64]);
        f.extend(Ipv6Address::new(0xfd00, 1, 0, 0, 0, 0, 0, 1).octets());
        f.extend(Ipv6Address::new(0xfd00, 2, 0, 0, 0, 0, 0, 2).octets());
        f.extend(5353u16.to_be_bytes());
        f.extend(dst_port.to_be_bytes());
        f.extend([0, 12, 0, 0, b'h', b'i', b'!', b'!']);
        f
    }

    /// Ethernet + IPv4 + TCP with the given addresses, ports and TTL.
    fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, ttl: u8) -> Vec<u8> {
        let mut f = TCP4_DSCP46.to_vec();
        f[15] = 0;
        f[22] = ttl;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    const TWO_HOPS: &str = r#"
        [[next_hop]]
        name = "a"
        address = ["10.20.0.2", "fd00:20::2"]
        [[next_hop]]
        name = "b"
        address = ["10.20.0.3", "fd00:20::3"]
    "#;

    #[test]
    fn rules_match_prefixes_ports_proto_and_dscp_first_match_wins() {
        let mut r = reroute(&format!(
            "{TWO_HOPS}
            [[rule]]
            name = \"voice\"
            dscp = 46
            via = [\"b\"]
            [[rule]]
            name = \"dns6\"
            proto = \"udp\"
            dst = \"fd00:2::/32\"
            dport = 53
            via = [\"b\", \"a\"]
            [[rule]]
            name = \"web\"
            src = \"10.1.0.0/16\"
            proto = 6
            dport = \"80-443\"
            via = [\"a\", \"b\"]
            "
        ));
        assert_eq!(ingress(&mut r, &TCP4_DSCP46), Verdict::Via(B4.into()));
        assert_eq!(ingress(&mut r, &udp6(53)), Verdict::Via(B6.into()));
        assert_eq!(ingress(&mut r, &udp6(54)), Verdict::Pass);
        let web = tcp4([10, 1, 7, 7], [10, 9, 0, 1], 50000, 443, 64);
        assert_eq!(ingress(&mut r, &web), Verdict::Via(A4.into()));
        // Outside the source prefix, outside the port range.
        assert_eq!(
            ingress(&mut r, &tcp4([10, 3, 0, 1], [10, 9, 0, 1], 50000, 443, 64)),
            Verdict::Pass
        );
        assert_eq!(
            ingress(&mut r, &tcp4([10, 1, 0, 1], [10, 9, 0, 1], 50000, 444, 64)),
            Verdict::Pass
        );
        assert_eq!(counter(&r, "rule.voice.packets"), 1);
        assert_eq!(counter(&r, "rule.dns6.packets"), 1);
        assert_eq!(counter(&r, "rule.web.packets"), 1);
        assert_eq!(counter(&r, "next_hop.a.packets"), 1);
        assert_eq!(counter(&r, "next_hop.b.packets"), 2);
        assert_eq!(counter(&r, "unmatched"), 3);
    }

    #[test]
    fn own_broadcast_multicast_expiring_and_non_ip_frames_pass() {
        let mut r = reroute(&format!("{TWO_HOPS}\n[[rule]]\nvia = [\"a\"]"));
        r.set_own_addresses(&[
            IpCidr::Ipv4(Ipv4Cidr::new(Ipv4Address::new(10, 20, 0, 1), 24)),
            IpCidr::Ipv6(Ipv6Cidr::new(
                Ipv6Address::new(0xfd00, 2, 0, 0, 0, 0, 0, 2),
                64,
            )),
        ]);
        let to = |dst: [u8; 4], ttl: u8| tcp4([10, 1, 0, 1], dst, 1, 2, ttl);
        assert_eq!(ingress(&mut r, &to([10, 20, 0, 1], 64)), Verdict::Pass);
        assert_eq!(ingress(&mut r, &to([10, 20, 0, 255], 64)), Verdict::Pass);
        assert_eq!(ingress(&mut r, &to([224, 0, 0, 251], 64)), Verdict::Pass);
        assert_eq!(
            ingress(&mut r, &to([255, 255, 255, 255], 64)),
            Verdict::Pass
        );
        assert_eq!(ingress(&mut r, &udp6(53)), Verdict::Pass);
        assert_eq!(counter(&r, "to_device"), 5);
        assert_eq!(ingress(&mut r, &to([10, 9, 0, 1], 1)), Verdict::Pass);
        let mut arp = TCP4_DSCP46.to_vec();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(ingress(&mut r, &arp), Verdict::Pass);
        assert_eq!(
            ingress(&mut r, &to([10, 9, 0, 1], 2)),
            Verdict::Via(A4.into())
        );
        assert_eq!(counter(&r, "malformed"), 0);
    }

    #[test]
    fn bare_ip_medium_and_ipv6_extension_headers() {
        let mut r = reroute(&format!(
            "medium = \"ip\"\n{TWO_HOPS}\n[[rule]]\nproto = \"udp\"\ndport = 53\nvia = [\"b\"]"
        ));
        assert_eq!(ingress(&mut r, &udp6(53)[14..]), Verdict::Via(B6.into()));
        // The same datagram behind a hop-by-hop options header.
        let mut f = udp6(53)[14..].to_vec();
        f[6] = 0;
        f[5] += 8;
        f.splice(40..40, [17, 0, 1, 4, 0, 0, 0, 0]);
        assert_eq!(ingress(&mut r, &f), Verdict::Via(B6.into()));
        // A non-first fragment carries no ports: no match.
        let mut frag = udp6(53)[14..].to_vec();
        frag[6] = 44;
        frag[5] += 8;
        frag.splice(40..40, [17, 0, 0x00, 0x08, 0, 0, 0, 1]);
        assert_eq!(ingress(&mut r, &frag), Verdict::Pass);
        assert_eq!(counter(&r, "unmatched"), 1);
    }

    #[test]
    fn truncated_and_garbage_frames_pass_and_are_counted() {
        let mut r = reroute(&format!("{TWO_HOPS}\n[[rule]]\nvia = [\"a\", \"b\"]"));
        let frames = [TCP4_DSCP46.to_vec(), udp6(53)];
        let mut malformed = 0;
        for f in &frames {
            // Cut inside the IP or the transport header: malformed.
            // Every cut is inside a header or short of the IP length.
            for len in 0..f.len() {
                assert_eq!(ingress(&mut r, &f[..len]), Verdict::Pass, "len {len}");
                malformed += 1;
            }
            assert!(matches!(ingress(&mut r, f), Verdict::Via(_)));
        }
        assert_eq!(counter(&r, "malformed"), malformed);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..20_000u64 {
            let mut f = frames[(i % 2) as usize].clone();
            for _ in 0..1 + i % 4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % f.len() as u64) as usize;
                f[at] = (x >> 32) as u8;
            }
            if let Verdict::Via(a) = ingress(&mut r, &f) {
                assert!([A4.into(), A6.into()].contains(&a), "{a}");
            }
        }
    }

    /// Drives the health checks in virtual time: every probe of a next hop
    /// in `answering` is answered at once.
    fn tick(r: &mut Reroute, now: Instant, answering: &[IpAddress]) -> Vec<IpAddress> {
        let mut sent = Vec::new();
        r.run_probes(now, &mut |a, seq| {
            sent.push((a, seq));
            true
        });
        for &(a, seq) in &sent {
            if answering.contains(&a) {
                r.handle_reply(a, seq);
            }
        }
        if r.dirty {
            r.update_routes(true);
        }
        sent.into_iter().map(|(a, _)| a).collect()
    }

    #[test]
    fn health_state_machine_fails_over_and_back_in_virtual_time() {
        let mut r = reroute(
            r#"
            [[next_hop]]
            name = "a"
            address = "10.20.0.2"
            interval = "100ms"
            timeout = "50ms"
            fall = 3
            rise = 2
            [[next_hop]]
            name = "b"
            address = "10.20.0.3"
            [[rule]]
            name = "all"
            via = ["a", "b"]
            "#,
        );
        let (a, b): (IpAddress, IpAddress) = (A4.into(), B4.into());
        let pkt = tcp4([10, 1, 0, 1], [10, 9, 0, 1], 1, 2, 64);
        assert_eq!(tick(&mut r, ms(0), &[a, b]), vec![a, b]);
        assert_eq!(ingress(&mut r, &pkt), Verdict::Via(a));
        // a stops answering: probes at 100, 200, 300 ms are lost at +50.
        for t in [100, 150, 200, 250, 300] {
            tick(&mut r, ms(t), &[b]);
            assert_eq!(r.is_up("a"), Some(true), "at {t} ms");
        }
        tick(&mut r, ms(350), &[b]);
        assert_eq!(r.is_up("a"), Some(false));
        assert_eq!(counter(&r, "next_hop.a.probes_lost"), 3);
        assert_eq!(r.active("all", false), Some("b"));
        assert_eq!(ingress(&mut r, &pkt), Verdict::Via(b));
        assert_eq!(counter(&r, "failovers"), 1);
        // Back: two answers (at 400 and 500 ms) bring it up again.
        tick(&mut r, ms(400), &[a, b]);
        assert_eq!(r.is_up("a"), Some(false));
        tick(&mut r, ms(500), &[a, b]);
        assert_eq!(r.is_up("a"), Some(true));
        assert_eq!(ingress(&mut r, &pkt), Verdict::Via(a));
        assert_eq!(counter(&r, "failbacks"), 1);
        // A single lost probe between answers changes nothing.
        tick(&mut r, ms(600), &[b]);
        tick(&mut r, ms(650), &[b]);
        tick(&mut r, ms(700), &[a, b]);
        assert_eq!(r.is_up("a"), Some(true));
        assert_eq!(counter(&r, "next_hop.a.probes_sent"), 8);
        assert_eq!(counter(&r, "next_hop.a.up"), 1);
        // Both down: the table decides (Pass); with when_down = "drop", drop.
        for t in (800..=1400).step_by(50) {
            tick(&mut r, ms(t), &[]);
        }
        assert_eq!((r.is_up("a"), r.is_up("b")), (Some(false), Some(false)));
        assert_eq!(ingress(&mut r, &pkt), Verdict::Pass);
        assert_eq!(counter(&r, "no_next_hop"), 1);
        r.when_down = WhenDown::Drop;
        assert_eq!(ingress(&mut r, &pkt), Verdict::Drop);
        r.refresh_due();
        assert!(r.poll_at().is_some());
    }

    #[test]
    fn without_failback_traffic_stays_on_the_backup() {
        let mut r = reroute(
            r#"
            failback = false
            [[next_hop]]
            name = "a"
            address = "10.20.0.2"
            fall = 1
            rise = 1
            [[next_hop]]
            name = "b"
            address = "10.20.0.3"
            fall = 1
            [[rule]]
            name = "all"
            via = ["a", "b"]
            "#,
        );
        let (a, b): (IpAddress, IpAddress) = (A4.into(), B4.into());
        tick(&mut r, ms(0), &[b]);
        tick(&mut r, ms(100), &[b]);
        assert_eq!(r.active("all", false), Some("b"));
        tick(&mut r, ms(200), &[a, b]);
        assert_eq!(r.is_up("a"), Some(true));
        assert_eq!(r.active("all", false), Some("b"));
        assert_eq!(counter(&r, "failbacks"), 0);
        // b fails: back to a, which is a failback towards the preference.
        tick(&mut r, ms(300), &[a]);
        tick(&mut r, ms(400), &[a]);
        assert_eq!(r.active("all", false), Some("a"));
        assert_eq!(counter(&r, "failovers"), 1);
        assert_eq!(counter(&r, "failbacks"), 1);
    }

    #[test]
    fn a_network_next_hop_sends_packets_out_of_that_network() {
        let mut r = reroute(
            r#"
            [[next_hop]]
            name = "wan"
            network = "global"
            [[rule]]
            name = "all"
            via = ["wan"]
            "#,
        );
        let v = Verdict::Redirect(Role::Global);
        assert_eq!(
            ingress(&mut r, &tcp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 9)),
            v
        );
        assert_eq!(ingress(&mut r, &udp6(53)), v);
        assert_eq!(r.active("all", true), Some("wan"));
        assert_eq!(counter(&r, "next_hop.wan.packets"), 2);
        assert_eq!(counter(&r, "next_hop.wan.up"), 1);
    }

    #[test]
    fn device_next_hops_follow_the_directory() {
        let mut r = reroute(
            r#"
            [[next_hop]]
            name = "a"
            device = "router-a"
            rise = 2
            [[next_hop]]
            name = "b"
            device = "router-b"
            check = "none"
            [[rule]]
            name = "all"
            via = ["a", "b"]
            "#,
        );
        struct Dir(std::cell::Cell<bool>);
        impl Directory for Dir {
            fn device_addresses(&self, name: &str) -> Vec<IpAddress> {
                match name {
                    "router-a" if self.0.get() => vec![A6.into(), A4.into()],
                    "router-b" => vec![B4.into()],
                    _ => Vec::new(),
                }
            }
        }
        let dir = Dir(std::cell::Cell::new(true));
        let present = &dir.0;
        assert_eq!(r.is_up("a"), Some(false));
        // As `attach` does: the first lookup is no failback.
        r.resolve(ms(0), &dir);
        r.update_routes(false);
        assert_eq!(r.is_up("a"), Some(true));
        assert_eq!(r.active("all", false), Some("a"));
        assert_eq!(r.active("all", true), Some("a"));
        // IPv4 probes for a dual-stack next hop.
        assert_eq!(tick(&mut r, ms(0), &[A4.into()]), vec![IpAddress::from(A4)]);
        // router-a leaves: down at the next lookup, without waiting for
        // probes; b (no check, IPv4 only) takes IPv4, IPv6 has nothing.
        present.set(false);
        r.resolve(ms(100), &dir);
        r.update_routes(true);
        assert_eq!(r.is_up("a"), Some(false));
        assert_eq!(r.active("all", false), Some("b"));
        assert_eq!(r.active("all", true), None);
        assert_eq!(counter(&r, "failovers"), 1);
        assert!(tick(&mut r, ms(100), &[]).is_empty());
        // It returns: up only after `rise` answers.
        present.set(true);
        r.resolve(ms(200), &dir);
        tick(&mut r, ms(200), &[A4.into()]);
        assert_eq!(r.is_up("a"), Some(false));
        tick(&mut r, ms(300), &[A4.into()]);
        assert_eq!(r.is_up("a"), Some(true));
        assert_eq!(r.active("all", false), Some("a"));
        assert_eq!(counter(&r, "failbacks"), 1);
    }

    #[test]
    fn echo_request_and_reply_wire_format() {
        let mut buf = [0u8; 16];
        let n = echo_request(false, 0x0102, &mut buf);
        assert_eq!(
            &buf[..n],
            &[
                8, 0, 0, 0, 0x52, 0x52, 0x01, 0x02, b's', b'h', b'm', b'n', b'e', b't', b'r', b'r'
            ]
        );
        assert_eq!(echo_request(true, 7, &mut buf), 16);
        assert_eq!(buf[0], 128);
        let mut reply = buf;
        reply[0] = 129;
        assert_eq!(echo_reply_seq(&reply), Some(7));
        reply[0] = 0;
        assert_eq!(echo_reply_seq(&reply), Some(7));
        reply[5] = 0;
        assert_eq!(echo_reply_seq(&reply), None);
        assert_eq!(echo_reply_seq(&[0, 0, 0]), None);
        // A reply from the wrong address or with a stale sequence number
        // does not count.
        let mut r = reroute(&format!("{TWO_HOPS}\n[[rule]]\nvia = [\"a\"]"));
        r.hops[0].up = false;
        let mut seqs = Vec::new();
        r.run_probes(ms(0), &mut |a, s| {
            seqs.push((a, s));
            true
        });
        r.handle_reply(B4.into(), seqs[0].1);
        r.handle_reply(A4.into(), seqs[0].1.wrapping_add(9));
        assert_eq!(r.hops[0].streak, 0);
        r.handle_reply(A4.into(), seqs[0].1);
        assert_eq!(r.hops[0].streak, 1);
    }

    #[test]
    fn reconfigure_keeps_health_of_unchanged_next_hops() {
        let mut r = reroute(&format!(
            "{TWO_HOPS}\n[[rule]]\nname = \"x\"\nvia = [\"a\", \"b\"]"
        ));
        r.hops[0].up = false;
        r.hops[0].probes_sent = 5;
        r.update_routes(true);
        assert_eq!(r.active("x", false), Some("b"));
        let text = "[[next_hop]]\nname = \"a\"\naddress = [\"10.20.0.2\", \"fd00:20::2\"]\n\
                    [[next_hop]]\nname = \"b\"\naddress = \"10.20.0.9\"\n\
                    [[rule]]\nname = \"x\"\nvia = [\"b\", \"a\"]";
        let cfg = FunctionConfig::Reroute(toml::from_str(text).unwrap());
        assert!(r.reconfigure(&cfg).unwrap());
        assert_eq!(r.is_up("a"), Some(false));
        assert_eq!(counter(&r, "next_hop.a.probes_sent"), 5);
        assert_eq!(r.active("x", false), Some("b"));
        assert_eq!(
            ingress(&mut r, &tcp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 9)),
            Verdict::Via(IpAddress::v4(10, 20, 0, 9))
        );
        assert!(!r.reconfigure(&FunctionConfig::Passthrough).unwrap());
    }

    #[test]
    fn config_errors_name_the_problem() {
        assert_eq!(parse_duration("99999999999999999999s"), None);
        let err = |text: &str| {
            let cfg: RerouteConfig = toml::from_str(text).expect("parses");
            match Reroute::new(cfg) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("accepted: {text}"),
            }
        };
        let hop = "[[next_hop]]\nname = \"a\"\naddress = \"10.0.0.1\"\n";
        assert!(err("next_hop = []").contains("at least one next_hop"));
        assert!(err("[[next_hop]]\nname = \"a\"").contains("one of address, device or network"));
        assert!(
            err("[[next_hop]]\nname = \"a\"\naddress = \"10.0.0.1\"\ndevice = \"x\"")
                .contains("one of address")
        );
        assert!(
            err("[[next_hop]]\nname = \"a\"\nnetwork = \"global\"\ndevice = \"x\"")
                .contains("one of address")
        );
        assert!(
            err("[[next_hop]]\nname = \"a\"\nnetwork = \"local\"\ncheck = \"icmp\"")
                .contains("no address to check")
        );
        assert!(err("[[next_hop]]\nname = \"a\"\naddress = \"10.0.0\"").contains("address"));
        assert!(
            err("[[next_hop]]\nname = \"a\"\naddress = [\"10.0.0.1\", \"10.0.0.2\"]")
                .contains("at most one of each")
        );
        assert!(err(&format!("{hop}interval = \"fast\"")).contains("interval"));
        assert!(err(&format!("{hop}timeout = \"0ms\"")).contains("timeout"));
        assert!(err(&format!("{hop}fall = 0")).contains("fall"));
        assert!(err(&format!("{hop}{hop}")).contains("name used twice"));
        assert!(err(&format!("{hop}[[rule]]\nvia = [\"c\"]")).contains("no next_hop"));
        assert!(err(&format!("{hop}[[rule]]\nvia = []")).contains("no next hop"));
        assert!(err(&format!("{hop}[[rule]]\nvia = [\"a\", \"a\"]")).contains("twice"));
        assert!(err(&format!("{hop}[[rule]]\ndport = 80\nvia = [\"a\"]")).contains("need proto"));
        assert!(err(&format!("{hop}[[rule]]\nproto = \"sctp\"\nvia = [\"a\"]")).contains("proto"));
        assert!(
            err(&format!(
                "{hop}[[rule]]\nproto = \"tcp\"\nsport = \"9-1\"\nvia = [\"a\"]"
            ))
            .contains("sport")
        );
        assert!(err(&format!("{hop}[[rule]]\ndscp = 64\nvia = [\"a\"]")).contains("dscp"));
        assert!(
            err(&format!(
                "{hop}[[rule]]\nname = \"m\"\nsrc = \"10.0.0.0/8\"\ndst = \"fd00::/8\"\nvia = [\"a\"]"
            ))
            .contains("rule m: src and dst")
        );
        assert!(
            err(&format!(
                "{hop}[[rule]]\ndst = \"10.0.0.0/40\"\nvia = [\"a\"]"
            ))
            .contains("dst")
        );
        // Unknown fields and values are refused by the parser.
        let parse = |text: &str| toml::from_str::<FunctionConfig>(text);
        assert!(parse(&format!("kind = \"reroute\"\n{hop}chekc = \"icmp\"")).is_err());
        assert!(parse(&format!("kind = \"reroute\"\n{hop}check = \"tcp\"")).is_err());
        assert!(parse(&format!("kind = \"reroute\"\nwhen_down = \"x\"\n{hop}")).is_err());
        let ok = parse(&format!("kind = \"reroute\"\n{hop}[[rule]]\nvia = [\"a\"]")).unwrap();
        assert!(super::super::build(&ok).is_ok());
    }
}
