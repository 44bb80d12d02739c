//! L4 load balancer: virtual IP:port services in front of backend sets,
//! with Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016), a flow table,
//! NAT, and active TCP health checks.
//!
//! **Return traffic (NAT mode).** The balancer device forwards
//! (`forward = true`) and is the backends' gateway back to the clients. A
//! packet to a service's VIP:port gets its destination rewritten to the
//! chosen backend's address and port (DNAT) and is forwarded by the
//! device's routing table; the backend's reply, addressed to the client,
//! comes back through the balancer, which rewrites its source back to the
//! VIP:port (SNAT). Client addresses are preserved end to end, so backends
//! see the real client. Direct server return is not implemented.
//!
//! **Choosing a backend.** Each service keeps a Maglev lookup table of
//! `table_size` (a prime M) entries over its healthy backends. Backend *i*
//! fills the table in the order of its permutation `offset + j·skip mod M`,
//! with `offset = h1(backend) mod M` and `skip = h2(backend) mod (M−1) + 1`;
//! backends take turns until every entry is filled, so each gets ≈ M/N
//! entries and a change of the set moves few entries. A new flow's
//! 5-tuple hash indexes the table. h1, h2 and the flow hash are CRC-32
//! (`crc32fast`) with three different seeds.
//!
//! **Flow table.** The first packet of a flow creates an entry (5-tuple →
//! backend); later packets of the flow, and the backend's replies, find it
//! with one hash lookup. Existing flows keep their backend when the backend
//! set changes (reconfiguration, health) — except flows whose backend went
//! down or was removed, which are dropped from the table (their next packet
//! is balanced afresh). TCP entries end a short `tcp_closing_timeout` after
//! a FIN or RST, or after `tcp_timeout` idle; UDP entries after
//! `udp_timeout` idle. At `max_flows` entries a new flow is refused (its
//! packet dropped) and counted in `table_full`.
//!
//! **Rewrite.** Addresses and ports are changed in place with incremental
//! checksum updates (RFC 1624) of the IPv4 header checksum and the TCP/UDP
//! checksum (its pseudo-header covers the addresses); an IPv4 UDP checksum
//! of zero (none) stays zero. IPv4 and IPv6 services work alike.
//!
//! **Health checks.** For a service with `check = "tcp"` the device opens a
//! TCP connection from its own stack to every backend each `interval`; an
//! attempt that is refused (RST) or not established within `timeout`
//! fails. `fall` consecutive failures mark a backend down, `rise`
//! consecutive successes up again; the table is rebuilt and the transition
//! logged. Backends start up. The checks' replies are addressed to the
//! device itself and match no flow, so they are never rewritten.
//!
//! Frames that are not IP, other IP protocols, and traffic of no service
//! pass untouched. Malformed IP frames and fragments addressed to a VIP
//! (they carry no ports, so they cannot be balanced) are counted drops.
//!
//! ```
//! use shmnet::functions::balancer::{Balancer, BalancerConfig};
//! use shmnet::functions::Function;
//! let cfg: BalancerConfig = toml::from_str(r#"
//!     [[service]]
//!     name = "echo"
//!     vip = "10.20.0.100:7"
//!     proto = "tcp"
//!     backends = ["10.12.0.2:7", "10.12.0.3:7", "10.12.0.4:7"]
//!     table_size = 65537
//!     check = "tcp"
//!     interval = "200ms"
//!     timeout = "100ms"
//! "#).unwrap();
//! let lb = Balancer::new(cfg).unwrap();
//! assert_eq!(lb.name(), "balancer");
//! // Each backend owns about a third of the lookup table.
//! let share = lb.table_share(0);
//! assert!(share.iter().all(|&n| (21_000..22_700).contains(&n)));
//! ```

#![allow(clippy::redundant_closure_call)] // transitional: counters and reconfigure shims, removed as each function moves to the new contract
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::matching::{PROTO_TCP, PROTO_UDP, parse_duration};
use super::{Frame, Function, FunctionConfig, FunctionError, Role, SocketContext, Verdict};
use crate::config::MediumName;

/// Seeds of the backend permutation hashes and of the flow hash.
const SEED_H1: u32 = 0x6d61_676c;
const SEED_H2: u32 = 0x6576_3132;
const SEED_FLOW: u32 = 0x666c_6f77;
/// An empty lookup-table entry.
const NONE: u16 = u16::MAX;
/// Most backends per service (table entries are `u16`).
const MAX_BACKENDS: usize = 4096;
/// Largest lookup table.
const MAX_TABLE: u32 = 1 << 24;
/// How often expired flows are swept out (from `poll`), and how often at
/// most when the table is full (a flood must not make every packet sweep).
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Local ports the health checks use, in turn.
const CHECK_PORTS: (u16, u16) = (40_000, 59_999);

/// Transport protocol of a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }
}

/// Health check of a service's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// A TCP connection to the backend's address and port.
    Tcp,
    /// No checks: backends are always up.
    None,
}

/// One `[[function.service]]`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    /// The virtual address clients connect to, `"ip:port"`.
    pub vip: String,
    #[serde(default)]
    pub proto: Proto,
    /// Backend endpoints, `"ip:port"`, of the VIP's IP version.
    #[serde(default)]
    pub backends: Vec<String>,
    /// Maglev lookup-table size: a prime larger than the number of
    /// backends (≥ 100× gives an even spread).
    #[serde(default = "default_table_size")]
    pub table_size: u32,
    /// Default: `"tcp"` for TCP services, `"none"` for UDP ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// Time between checks of one backend (`"200ms"`, `"2s"`).
    #[serde(default = "default_interval")]
    pub interval: String,
    /// A check not established by then fails.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Consecutive failures that mark a backend down.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Consecutive successes that mark it up again.
    #[serde(default = "default_rise")]
    pub rise: u32,
}

fn default_table_size() -> u32 {
    65537
}
fn default_interval() -> String {
    "1s".into()
}
fn default_timeout() -> String {
    "500ms".into()
}
fn default_fall() -> u32 {
    3
}
fn default_rise() -> u32 {
    2
}

/// `[function] kind = "balancer"`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerConfig {
    /// Link medium of the device's networks ("ethernet" or "ip").
    #[serde(default)]
    pub medium: MediumName,
    /// Flow-table size; new flows beyond it are refused.
    #[serde(default = "default_max_flows")]
    pub max_flows: usize,
    /// Idle time after which a TCP flow is forgotten.
    #[serde(default = "default_tcp_timeout")]
    pub tcp_timeout: String,
    /// Linger after a FIN or RST.
    #[serde(default = "default_tcp_closing_timeout")]
    pub tcp_closing_timeout: String,
    /// Idle time after which a UDP flow is forgotten.
    #[serde(default = "default_udp_timeout")]
    pub udp_timeout: String,
    #[serde(default, rename = "service", skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceConfig>,
}

fn default_max_flows() -> usize {
    65536
}
fn default_tcp_timeout() -> String {
    "5m".into()
}
fn default_tcp_closing_timeout() -> String {
    "4s".into()
}
fn default_udp_timeout() -> String {
    "30s".into()
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            medium: MediumName::default(),
            max_flows: default_max_flows(),
            tcp_timeout: default_tcp_timeout(),
            tcp_closing_timeout: default_tcp_closing_timeout(),
            udp_timeout: default_udp_timeout(),
            services: Vec::new(),
        }
    }
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// An address and port; IPv4 addresses live in the low 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Endpoint {
    v6: bool,
    addr: u128,
    port: u16,
}

impl Endpoint {
    fn parse(s: &str) -> Option<Endpoint> {
        let a: SocketAddr = s.trim().parse().ok()?;
        Some(Endpoint::from(a))
    }

    /// The bytes hashed for the Maglev permutation.
    fn hash_bytes(&self) -> ([u8; 18], usize) {
        let mut b = [0u8; 18];
        if self.v6 {
            b[..16].copy_from_slice(&self.addr.to_be_bytes());
            b[16..].copy_from_slice(&self.port.to_be_bytes());
            (b, 18)
        } else {
            b[..4].copy_from_slice(&(self.addr as u32).to_be_bytes());
            b[4..6].copy_from_slice(&self.port.to_be_bytes());
            (b, 6)
        }
    }

    fn ip(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(self.addr.into())
        } else {
            IpAddr::V4((self.addr as u32).into())
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Endpoint {
        match a {
            SocketAddr::V4(a) => Endpoint {
                v6: false,
                addr: u128::from(u32::from(*a.ip())),
                port: a.port(),
            },
            SocketAddr::V6(a) => Endpoint {
                v6: true,
                addr: u128::from(*a.ip()),
                port: a.port(),
            },
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", SocketAddr::new(self.ip(), self.port))
    }
}

/// One direction of a flow: its 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    src: u128,
    dst: u128,
    sport: u16,
    dport: u16,
    proto: u8,
    v6: bool,
}

/// Hashes as few words as possible (an IPv4 key is two words).
impl std::hash::Hash for FlowKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let tail = u64::from(self.sport) << 48
            | u64::from(self.dport) << 32
            | u64::from(self.proto) << 8
            | u64::from(self.v6);
        if self.v6 {
            h.write_u128(self.src);
            h.write_u128(self.dst);
        } else {
            h.write_u64((self.src as u64) << 32 | (self.dst as u64 & 0xffff_ffff));
        }
        h.write_u64(tail);
    }
}

/// A fast keyed hasher for the flow table (a folded 64×64→128 multiply
/// per word). The key is random per table, so a peer cannot aim crafted
/// tuples at one bucket without seeing the table's behaviour.
#[derive(Clone, Copy)]
struct FlowHasher(u64);

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for FlowHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, x: u64) {
        let m = u128::from(self.0 ^ x) * u128::from(MULTIPLIER);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
    fn write_u128(&mut self, x: u128) {
        self.write_u64(x as u64);
        self.write_u64((x >> 64) as u64);
    }
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

#[derive(Clone, Copy)]
struct FlowHashState(u64);

impl FlowHashState {
    fn random() -> FlowHashState {
        // std's RandomState is seeded from the OS once per thread.
        FlowHashState(std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64))
    }
}

impl BuildHasher for FlowHashState {
    type Hasher = FlowHasher;
    fn build_hasher(&self) -> FlowHasher {
        FlowHasher(self.0)
    }
}

type FlowMap = HashMap<FlowKey, u32, FlowHashState>;

/// Health-check parameters of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CheckParams {
    interval: Duration,
    timeout: Duration,
    fall: u32,
    rise: u32,
}

/// Where a backend's health check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Idle { next: Instant },
    Connecting { since: Instant },
}

#[derive(Debug)]
struct Backend {
    ep: Endpoint,
    up: bool,
    /// Maglev permutation of this backend for the service's table size.
    offset: u32,
    skip: u32,
    flows: u64,
    packets: u64,
    socket: Option<SocketHandle>,
    probe: Probe,
    successes: u32,
    failures: u32,
}

#[derive(Debug)]
struct Service {
    name: String,
    proto: u8,
    vip: Endpoint,
    backends: Vec<Backend>,
    table_size: u32,
    /// Maglev lookup table: backend indices, or all `NONE` without any
    /// healthy backend.
    table: Vec<u16>,
    check: Option<CheckParams>,
    flows: u64,
    packets: u64,
    no_backend: u64,
}

fn crc(seed: u32, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(bytes);
    h.finalize()
}

impl Backend {
    fn new(ep: Endpoint, table_size: u32) -> Backend {
        let (b, n) = ep.hash_bytes();
        Backend {
            ep,
            up: true,
            offset: crc(SEED_H1, &b[..n]) % table_size,
            skip: crc(SEED_H2, &b[..n]) % (table_size - 1) + 1,
            flows: 0,
            packets: 0,
            socket: None,
            probe: Probe::Idle {
                next: Instant::ZERO,
            },
            successes: 0,
            failures: 0,
        }
    }
}

/// Fills a Maglev lookup table of `m` entries (`m` prime) from the
/// permutations `(offset, skip)` of the backends at `members` (indices
/// into the service's backend list). Backends take turns, each claiming
/// the next free entry of its permutation.
fn maglev_table(m: u32, perms: &[(u16, u32, u32)]) -> Vec<u16> {
    let mut table = vec![NONE; m as usize];
    if perms.is_empty() {
        return table;
    }
    // Position of each backend's permutation (starts at its offset).
    let mut pos: Vec<u32> = perms.iter().map(|p| p.1).collect();
    let mut filled = 0u32;
    loop {
        for (i, &(index, _, skip)) in perms.iter().enumerate() {
            let mut c = pos[i];
            while table[c as usize] != NONE {
                c = ((u64::from(c) + u64::from(skip)) % u64::from(m)) as u32;
            }
            table[c as usize] = index;
            pos[i] = ((u64::from(c) + u64::from(skip)) % u64::from(m)) as u32;
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

impl Service {
    /// Rebuilds the lookup table over the healthy backends, visited in
    /// endpoint order so that the table does not depend on list order.
    fn rebuild(&mut self) {
        let mut up: Vec<(Endpoint, u16, u32, u32)> = self
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.up)
            .map(|(i, b)| (b.ep, i as u16, b.offset, b.skip))
            .collect();
        up.sort_unstable_by_key(|u| u.0);
        let perms: Vec<(u16, u32, u32)> = up.iter().map(|u| (u.1, u.2, u.3)).collect();
        self.table = maglev_table(self.table_size, &perms);
    }

    fn lookup(&self, key: &FlowKey) -> Option<u16> {
        let mut b = [0u8; 37];
        b[..16].copy_from_slice(&key.src.to_be_bytes());
        b[16..32].copy_from_slice(&key.dst.to_be_bytes());
        b[32..34].copy_from_slice(&key.sport.to_be_bytes());
        b[34..36].copy_from_slice(&key.dport.to_be_bytes());
        b[36] = key.proto;
        let h = crc(SEED_FLOW, &b);
        let i = self.table[(h % self.table_size) as usize];
        (i != NONE).then_some(i)
    }
}

/// A tracked flow: both directions' keys and its backend.
#[derive(Debug, Clone, Copy)]
struct Flow {
    /// Client → VIP.
    fwd: FlowKey,
    /// Backend → client.
    rev: FlowKey,
    /// VIP → backend, and backend → VIP for the replies.
    dnat: Nat,
    snat: Nat,
    service: u16,
    backend: u16,
    expires: Instant,
    closing: bool,
    live: bool,
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    tcp: Duration,
    tcp_closing: Duration,
    udp: Duration,
}

impl Timeouts {
    fn of(&self, proto: u8, closing: bool) -> Duration {
        match (proto, closing) {
            (PROTO_TCP, true) => self.tcp_closing,
            (PROTO_TCP, false) => self.tcp,
            _ => self.udp,
        }
    }
}

/// Global counters of the balancer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BalancerStats {
    pub flows_created: u64,
    pub expired: u64,
    pub no_backend: u64,
    pub table_full: u64,
    pub health_changes: u64,
    pub malformed: u64,
    pub fragments_dropped: u64,
    /// A new flow whose reply direction would be indistinguishable from an
    /// existing flow's (same client endpoint, same backend, two VIPs).
    pub conflicts: u64,
    pub checks_ok: u64,
    pub checks_failed: u64,
}

/// The load-balancer function.
pub struct Balancer {
    medium: MediumName,
    services: Vec<Service>,
    timeouts: Timeouts,
    max_flows: usize,
    flows: Vec<Flow>,
    free: Vec<u32>,
    fwd: FlowMap,
    rev: FlowMap,
    next_sweep: Instant,
    next_full_sweep: Instant,
    next_port: u16,
    /// Health-check sockets of backends that were removed, closed at the
    /// next `poll`.
    retired: Vec<SocketHandle>,
    stats: BalancerStats,
}

/// The parts of an IP packet the balancer uses.
#[derive(Debug, Clone, Copy)]
struct Packet {
    key: FlowKey,
    /// Offset of the IP header in the frame, and of the transport header.
    ip: usize,
    l4: usize,
    /// A non-first or first fragment (no usable ports, or not all of them).
    fragment: bool,
    syn: bool,
    fin_rst: bool,
}

struct Malformed;

/// Parses the IP and TCP/UDP headers; `Ok(None)` for frames that are not
/// IP or not TCP/UDP.
fn parse(medium: MediumName, b: &[u8]) -> Result<Option<Packet>, Malformed> {
    // The IP header's offset, and the version the EtherType announces.
    let (ip, version) = match medium {
        MediumName::Ethernet => {
            let Some(t) = b.get(12..14) else {
                return Err(Malformed);
            };
            match [t[0], t[1]] {
                [0x08, 0x00] => (14, Some(4)),
                [0x86, 0xdd] => (14, Some(6)),
                _ => return Ok(None),
            }
        }
        MediumName::Ip => (0, None),
    };
    let p = &b[ip.min(b.len())..];
    let found = p.first().map(|v| v >> 4);
    if version.is_some() && found != version {
        return Err(Malformed);
    }
    let (key, l4, end, fragment) = match found {
        Some(4) => {
            if p.len() < 20 {
                return Err(Malformed);
            }
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            if ihl < 20 || total < ihl || total > p.len() {
                return Err(Malformed);
            }
            let proto = p[9];
            let frag = u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0;
            let addr = |at: usize| {
                u128::from(u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]))
            };
            let key = FlowKey {
                src: addr(12),
                dst: addr(16),
                sport: 0,
                dport: 0,
                proto,
                v6: false,
            };
            (key, ihl, total, frag)
        }
        Some(6) => {
            if p.len() < 40 {
                return Err(Malformed);
            }
            let total = 40 + usize::from(u16::from_be_bytes([p[4], p[5]]));
            if total > p.len() {
                return Err(Malformed);
            }
            let addr = |at: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&p[at..at + 16]);
                u128::from_be_bytes(a)
            };
            let key = FlowKey {
                src: addr(8),
                dst: addr(24),
                sport: 0,
                dport: 0,
                // Extension headers are not walked: such packets pass.
                proto: p[6],
                v6: true,
            };
            (key, 40, total, false)
        }
        _ => return Err(Malformed),
    };
    let mut pkt = Packet {
        key,
        ip,
        l4: ip + l4,
        fragment,
        syn: false,
        fin_rst: false,
    };
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        return Ok(None);
    }
    if fragment {
        return Ok(Some(pkt));
    }
    let t = &p[l4..end];
    let min = if key.proto == PROTO_TCP { 20 } else { 8 };
    if t.len() < min {
        return Err(Malformed);
    }
    pkt.key.sport = u16::from_be_bytes([t[0], t[1]]);
    pkt.key.dport = u16::from_be_bytes([t[2], t[3]]);
    if key.proto == PROTO_TCP {
        pkt.syn = t[13] & 0x02 != 0;
        pkt.fin_rst = t[13] & 0x05 != 0;
    }
    Ok(Some(pkt))
}

/// Adds the big-endian 16-bit words of `bytes` (or their complements) to
/// a one's-complement accumulator.
fn sum_words(mut acc: u32, bytes: &[u8], negate: bool) -> u32 {
    for w in bytes.chunks_exact(2) {
        let v = u16::from_be_bytes([w[0], w[1]]);
        acc += u32::from(if negate { !v } else { v });
    }
    acc
}

/// Which end of the packet to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
}

/// A precomputed rewrite of one end of a packet from endpoint `old` to
/// `new`: the new address and port, and the one's-complement sums
/// Σ~old + Σnew over the words the IPv4 header checksum and the TCP/UDP
/// checksum cover, so that a packet costs two additions and folds
/// (RFC 1624 eqn. 3, HC' = ~(~HC + Σ~m + Σm')).
#[derive(Debug, Clone, Copy)]
struct Nat {
    side: Side,
    addr: [u8; 16],
    port: [u8; 2],
    ip_delta: u32,
    l4_delta: u32,
}

impl Nat {
    fn new(side: Side, old: Endpoint, new: Endpoint) -> Nat {
        let bytes = |e: Endpoint| {
            let mut a = [0u8; 16];
            if e.v6 {
                a = e.addr.to_be_bytes();
            } else {
                a[..4].copy_from_slice(&(e.addr as u32).to_be_bytes());
            }
            a
        };
        let (o, n) = (bytes(old), bytes(new));
        let len = if new.v6 { 16 } else { 4 };
        let ip_delta = sum_words(sum_words(0, &o[..len], true), &n[..len], false);
        let l4_delta = ip_delta + u32::from(!old.port) + u32::from(new.port);
        Nat {
            side,
            addr: n,
            port: new.port.to_be_bytes(),
            ip_delta,
            l4_delta,
        }
    }

    /// Rewrites packet `p` of `frame` (the parser checked every offset used
    /// here; the packet's `side` end must be the `old` endpoint).
    fn apply(&self, frame: &mut [u8], p: &Packet) {
        let (ip, l4, v6) = (p.ip, p.l4, p.key.v6);
        let (addr_at, alen) = match (v6, self.side) {
            (false, Side::Src) => (ip + 12, 4),
            (false, Side::Dst) => (ip + 16, 4),
            (true, Side::Src) => (ip + 8, 16),
            (true, Side::Dst) => (ip + 24, 16),
        };
        let port_at = l4 + if self.side == Side::Src { 0 } else { 2 };
        let udp = p.key.proto == PROTO_UDP;
        let ck_at = l4 + if udp { 6 } else { 16 };
        if !v6 {
            let ck = u16::from_be_bytes([frame[ip + 10], frame[ip + 11]]);
            frame[ip + 10..ip + 12].copy_from_slice(&adjust(ck, self.ip_delta).to_be_bytes());
        }
        let ck = u16::from_be_bytes([frame[ck_at], frame[ck_at + 1]]);
        // An IPv4 UDP checksum of zero means "none": it stays zero.
        if !(udp && ck == 0 && !v6) {
            let mut ck = adjust(ck, self.l4_delta);
            if udp && ck == 0 {
                // Zero would read as "none"; its one's-complement twin.
                ck = 0xffff;
            }
            frame[ck_at..ck_at + 2].copy_from_slice(&ck.to_be_bytes());
        }
        frame[addr_at..addr_at + alen].copy_from_slice(&self.addr[..alen]);
        frame[port_at..port_at + 2].copy_from_slice(&self.port);
    }
}

/// `ck` after adding a precomputed one's-complement `delta`.
fn adjust(ck: u16, delta: u32) -> u16 {
    let mut acc = u32::from(!ck) + delta;
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn build_services(cfg: &BalancerConfig) -> Result<Vec<Service>, String> {
    let mut services: Vec<Service> = Vec::new();
    for (i, s) in cfg.services.iter().enumerate() {
        let what = if s.name.is_empty() {
            format!("service {i}")
        } else {
            format!("service {:?}", s.name)
        };
        if s.name.is_empty() || s.name.contains(char::is_whitespace) {
            return Err(format!("{what}: name must be non-empty, without spaces"));
        }
        if services.iter().any(|o| o.name == s.name) {
            return Err(format!("{what}: two services have this name"));
        }
        let vip = Endpoint::parse(&s.vip).ok_or_else(|| {
            format!(
                "{what}: vip {:?} is not ip:port (like \"10.20.0.100:80\" or \"[fd00::100]:80\")",
                s.vip
            )
        })?;
        if vip.port == 0 {
            return Err(format!("{what}: vip port must be 1..=65535"));
        }
        let proto = s.proto.number();
        if services.iter().any(|o| o.vip == vip && o.proto == proto) {
            return Err(format!(
                "{what}: another service has vip {vip} ({:?})",
                s.proto
            ));
        }
        if !is_prime(s.table_size) || s.table_size > MAX_TABLE {
            return Err(format!(
                "{what}: table_size {} must be a prime up to {MAX_TABLE} (like 65537 or 251)",
                s.table_size
            ));
        }
        if s.backends.len() > MAX_BACKENDS {
            return Err(format!("{what}: at most {MAX_BACKENDS} backends"));
        }
        if s.table_size as usize <= s.backends.len() {
            return Err(format!(
                "{what}: table_size {} must exceed the number of backends ({}); \
                 100 times as many entries spreads flows evenly",
                s.table_size,
                s.backends.len()
            ));
        }
        let mut backends: Vec<Backend> = Vec::new();
        for text in &s.backends {
            let ep = Endpoint::parse(text)
                .ok_or_else(|| format!("{what}: backend {text:?} is not ip:port"))?;
            if ep.port == 0 {
                return Err(format!("{what}: backend {text:?}: port must be 1..=65535"));
            }
            if ep.v6 != vip.v6 {
                return Err(format!(
                    "{what}: backend {text:?} is not of the vip's IP version"
                ));
            }
            if backends.iter().any(|b| b.ep == ep) {
                return Err(format!("{what}: backend {text:?} is listed twice"));
            }
            backends.push(Backend::new(ep, s.table_size));
        }
        let dur = |field: &str, text: &str| -> Result<Duration, String> {
            match parse_duration(text) {
                Some(d) if d.total_micros() > 0 => Ok(d),
                _ => Err(format!(
                    "{what}: {field} {text:?} is not a positive duration (like \"200ms\" or \"2s\")"
                )),
            }
        };
        let check = match s.check.unwrap_or(match s.proto {
            Proto::Tcp => Check::Tcp,
            Proto::Udp => Check::None,
        }) {
            Check::None => None,
            Check::Tcp => {
                for (field, n) in [("fall", s.fall), ("rise", s.rise)] {
                    if !(1..=100).contains(&n) {
                        return Err(format!("{what}: {field} must be 1..=100"));
                    }
                }
                Some(CheckParams {
                    interval: dur("interval", &s.interval)?,
                    timeout: dur("timeout", &s.timeout)?,
                    fall: s.fall,
                    rise: s.rise,
                })
            }
        };
        let mut svc = Service {
            name: s.name.clone(),
            proto,
            vip,
            backends,
            table_size: s.table_size,
            table: Vec::new(),
            check,
            flows: 0,
            packets: 0,
            no_backend: 0,
        };
        svc.rebuild();
        services.push(svc);
    }
    Ok(services)
}

fn timeouts(cfg: &BalancerConfig) -> Result<Timeouts, String> {
    let dur = |field: &str, text: &str| -> Result<Duration, String> {
        match parse_duration(text) {
            Some(d) if d.total_micros() > 0 => Ok(d),
            _ => Err(format!(
                "{field} {text:?} is not a positive duration (like \"30s\" or \"5m\")"
            )),
        }
    };
    Ok(Timeouts {
        tcp: dur("tcp_timeout", &cfg.tcp_timeout)?,
        tcp_closing: dur("tcp_closing_timeout", &cfg.tcp_closing_timeout)?,
        udp: dur("udp_timeout", &cfg.udp_timeout)?,
    })
}

impl Balancer {
    pub fn new(cfg: BalancerConfig) -> Result<Balancer, FunctionError> {
        let bad = |why: String| FunctionError::Invalid {
            kind: "balancer",
            why,
        };
        if !(1..=1 << 24).contains(&cfg.max_flows) {
            return Err(bad("max_flows must be 1..=16777216".into()));
        }
        let timeouts = timeouts(&cfg).map_err(bad)?;
        let services = build_services(&cfg).map_err(bad)?;
        let hash = FlowHashState::random();
        Ok(Balancer {
            medium: cfg.medium,
            services,
            timeouts,
            max_flows: cfg.max_flows,
            flows: Vec::new(),
            free: Vec::new(),
            fwd: HashMap::with_hasher(hash),
            rev: HashMap::with_hasher(hash),
            next_sweep: Instant::ZERO,
            next_full_sweep: Instant::ZERO,
            next_port: CHECK_PORTS.0,
            retired: Vec::new(),
            stats: BalancerStats::default(),
        })
    }

    pub fn stats(&self) -> &BalancerStats {
        &self.stats
    }

    /// Flows in the table (expired ones not yet swept included).
    pub fn flows_active(&self) -> usize {
        self.fwd.len()
    }

    /// How many lookup-table entries each backend of service `i` owns, in
    /// configuration order.
    pub fn table_share(&self, i: usize) -> Vec<usize> {
        let Some(s) = self.services.get(i) else {
            return Vec::new();
        };
        let mut share = vec![0; s.backends.len()];
        for &e in &s.table {
            if let Some(n) = share.get_mut(usize::from(e)) {
                *n += 1;
            }
        }
        share
    }

    /// Marks backend `backend` of service `service` up or down as a health
    /// check would (logged, counted, table rebuilt, its flows dropped when
    /// down). For tests and for management.
    pub fn set_backend_up(&mut self, service: usize, backend: usize, up: bool) {
        let Some(b) = self
            .services
            .get_mut(service)
            .and_then(|s| s.backends.get_mut(backend))
        else {
            return;
        };
        if b.up == up {
            return;
        }
        b.up = up;
        let ep = b.ep;
        log::info!(
            "balancer: service {}: backend {ep} is {}",
            self.services[service].name,
            if up { "up" } else { "down" }
        );
        self.stats.health_changes += 1;
        self.services[service].rebuild();
        if !up {
            self.drop_flows(|f| {
                usize::from(f.service) == service && usize::from(f.backend) == backend
            });
        }
    }

    fn drop_flows(&mut self, mut pred: impl FnMut(&Flow) -> bool) {
        for i in 0..self.flows.len() {
            if self.flows[i].live && pred(&self.flows[i]) {
                self.remove(i as u32);
            }
        }
    }

    fn remove(&mut self, slot: u32) {
        let Some(f) = self.flows.get_mut(slot as usize) else {
            return;
        };
        if !f.live {
            return;
        }
        f.live = false;
        let (fwd, rev) = (f.fwd, f.rev);
        self.fwd.remove(&fwd);
        if self.rev.get(&rev) == Some(&slot) {
            self.rev.remove(&rev);
        }
        self.free.push(slot);
    }

    /// Drops expired flows.
    pub fn sweep(&mut self, now: Instant) {
        let before = self.fwd.len();
        self.drop_flows(|f| f.expires <= now);
        self.stats.expired += (before - self.fwd.len()) as u64;
    }

    /// The index of the service whose VIP the packet is addressed to.
    fn service_of(&self, key: &FlowKey, with_port: bool) -> Option<usize> {
        self.services.iter().position(|s| {
            s.proto == key.proto
                && s.vip.v6 == key.v6
                && s.vip.addr == key.dst
                && (!with_port || s.vip.port == key.dport)
        })
    }

    /// One frame, from either side.
    fn handle(&mut self, now: Instant, frame: &mut [u8]) -> Verdict {
        let p = match parse(self.medium, frame) {
            Ok(Some(p)) => p,
            Ok(None) => return Verdict::Pass,
            Err(Malformed) => {
                self.stats.malformed += 1;
                return Verdict::Drop;
            }
        };
        if p.fragment {
            if self.service_of(&p.key, false).is_some() {
                self.stats.fragments_dropped += 1;
                return Verdict::Drop;
            }
            return Verdict::Pass;
        }
        // To a VIP (checked first: a reply is never addressed to one).
        let Some(s) = self.service_of(&p.key, true) else {
            return self.handle_reply(now, frame, &p);
        };
        let mut slot = self.fwd.get(&p.key).copied();
        if let Some(i) = slot {
            let f = &self.flows[i as usize];
            // Expired, or a new connection reusing a closing one's ports.
            if f.expires <= now || (f.closing && p.syn && !p.fin_rst) {
                if f.expires <= now {
                    self.stats.expired += 1;
                }
                self.remove(i);
                slot = None;
            }
        }
        let slot = match slot {
            Some(i) => i,
            None if p.fin_rst && !p.syn => {
                // A stray FIN or RST starts nothing: send it where the
                // table points, without an entry.
                return match self.services[s].lookup(&p.key) {
                    Some(b) => {
                        let svc = &self.services[s];
                        let to = svc.backends[usize::from(b)].ep;
                        Nat::new(Side::Dst, svc.vip, to).apply(frame, &p);
                        Verdict::Modified
                    }
                    None => {
                        self.services[s].no_backend += 1;
                        self.stats.no_backend += 1;
                        Verdict::Drop
                    }
                };
            }
            None => match self.create(now, s, &p) {
                Some(i) => i,
                None => return Verdict::Drop,
            },
        };
        let f = &mut self.flows[slot as usize];
        if p.fin_rst && !f.closing {
            f.closing = true;
        }
        f.expires = now + self.timeouts.of(p.key.proto, f.closing);
        f.dnat.apply(frame, &p);
        let svc = &mut self.services[s];
        svc.packets += 1;
        svc.backends[usize::from(f.backend)].packets += 1;
        Verdict::Modified
    }

    /// A packet to no VIP: the reply of a tracked flow is rewritten back to
    /// come from the VIP; anything else passes.
    fn handle_reply(&mut self, now: Instant, frame: &mut [u8], p: &Packet) -> Verdict {
        let Some(&slot) = self.rev.get(&p.key) else {
            return Verdict::Pass;
        };
        let f = &mut self.flows[slot as usize];
        if f.expires <= now {
            self.remove(slot);
            self.stats.expired += 1;
            return Verdict::Pass;
        }
        if p.fin_rst && !f.closing {
            f.closing = true;
        }
        f.expires = now + self.timeouts.of(p.key.proto, f.closing);
        f.snat.apply(frame, p);
        let svc = &mut self.services[usize::from(f.service)];
        svc.packets += 1;
        svc.backends[usize::from(f.backend)].packets += 1;
        Verdict::Modified
    }

    /// Enters a new flow of service `s`; `None` (counted) without a healthy
    /// backend or room.
    fn create(&mut self, now: Instant, s: usize, p: &Packet) -> Option<u32> {
        let svc = &mut self.services[s];
        let Some(b) = svc.lookup(&p.key) else {
            svc.no_backend += 1;
            self.stats.no_backend += 1;
            return None;
        };
        if self.fwd.len() >= self.max_flows && now >= self.next_full_sweep {
            self.next_full_sweep = now + SWEEP_EVERY;
            self.sweep(now);
        }
        if self.fwd.len() >= self.max_flows {
            self.stats.table_full += 1;
            return None;
        }
        let ep = self.services[s].backends[usize::from(b)].ep;
        let rev = FlowKey {
            src: ep.addr,
            dst: p.key.src,
            sport: ep.port,
            dport: p.key.sport,
            proto: p.key.proto,
            v6: p.key.v6,
        };
        if let Some(&other) = self.rev.get(&rev) {
            if self.flows[other as usize].expires > now {
                self.stats.conflicts += 1;
                return None;
            }
            self.remove(other);
            self.stats.expired += 1;
        }
        let vip = self.services[s].vip;
        let flow = Flow {
            fwd: p.key,
            rev,
            dnat: Nat::new(Side::Dst, vip, ep),
            snat: Nat::new(Side::Src, ep, vip),
            service: s as u16,
            backend: b,
            expires: now,
            closing: false,
            live: true,
        };
        let slot = match self.free.pop() {
            Some(i) => {
                self.flows[i as usize] = flow;
                i
            }
            None => {
                self.flows.push(flow);
                (self.flows.len() - 1) as u32
            }
        };
        self.fwd.insert(p.key, slot);
        self.rev.insert(rev, slot);
        let svc = &mut self.services[s];
        svc.flows += 1;
        svc.backends[usize::from(b)].flows += 1;
        self.stats.flows_created += 1;
        Some(slot)
    }

    /// Applies a new configuration, keeping flows, health state, counters
    /// and check sockets of services and backends that remain.
    fn apply(&mut self, cfg: &BalancerConfig) -> Result<(), String> {
        if !(1..=1 << 24).contains(&cfg.max_flows) {
            return Err("max_flows must be 1..=16777216".into());
        }
        let timeouts = timeouts(cfg)?;
        let mut services = build_services(cfg)?;
        // Old (service, backend) index → new one.
        let mut remap: Vec<Vec<Option<(u16, u16)>>> = Vec::new();
        for old in &mut self.services {
            let new_s = services
                .iter()
                .position(|n| n.vip == old.vip && n.proto == old.proto);
            let mut row = Vec::new();
            for ob in &mut old.backends {
                let hit = new_s.and_then(|ns| {
                    services[ns]
                        .backends
                        .iter()
                        .position(|nb| nb.ep == ob.ep)
                        .map(|nb| (ns, nb))
                });
                match hit {
                    Some((ns, nb)) => {
                        let checked = services[ns].check.is_some();
                        let n = &mut services[ns].backends[nb];
                        n.up = ob.up;
                        n.flows = ob.flows;
                        n.packets = ob.packets;
                        n.successes = ob.successes;
                        n.failures = ob.failures;
                        n.probe = ob.probe;
                        if checked {
                            n.socket = ob.socket.take();
                        } else {
                            n.up = true;
                            self.retired.extend(ob.socket.take());
                        }
                        row.push(Some((ns as u16, nb as u16)));
                    }
                    None => {
                        self.retired.extend(ob.socket.take());
                        row.push(None);
                    }
                }
            }
            if let Some(ns) = new_s {
                let n = &mut services[ns];
                n.flows = old.flows;
                n.packets = old.packets;
                n.no_backend = old.no_backend;
            }
            remap.push(row);
        }
        for s in &mut services {
            s.rebuild();
        }
        self.services = services;
        self.timeouts = timeouts;
        self.max_flows = cfg.max_flows;
        self.medium = cfg.medium;
        for i in 0..self.flows.len() {
            let f = self.flows[i];
            if !f.live {
                continue;
            }
            let to = remap
                .get(usize::from(f.service))
                .and_then(|r| r.get(usize::from(f.backend)))
                .copied()
                .flatten();
            match to {
                Some((s, b)) if self.services[usize::from(s)].backends[usize::from(b)].up => {
                    self.flows[i].service = s;
                    self.flows[i].backend = b;
                }
                _ => self.remove(i as u32),
            }
        }
        Ok(())
    }

    /// Runs the health checks on the device's sockets; returns whether it
    /// sent or closed anything.
    fn check_health(&mut self, cx: &mut SocketContext<'_>) -> bool {
        let now = cx.now;
        let mut progress = false;
        let mut changes: Vec<(usize, usize, bool)> = Vec::new();
        for (si, svc) in self.services.iter_mut().enumerate() {
            let Some(check) = svc.check else {
                continue;
            };
            for (bi, b) in svc.backends.iter_mut().enumerate() {
                let h = *b.socket.get_or_insert_with(|| {
                    let s = tcp::Socket::new(
                        tcp::SocketBuffer::new(vec![0; 64]),
                        tcp::SocketBuffer::new(vec![0; 64]),
                    );
                    cx.sockets.add(s)
                });
                let s = cx.sockets.get_mut::<tcp::Socket>(h);
                let result = match b.probe {
                    Probe::Idle { next } if now >= next => {
                        if s.is_open() {
                            s.abort();
                        }
                        let port = self.next_port;
                        self.next_port = if port >= CHECK_PORTS.1 {
                            CHECK_PORTS.0
                        } else {
                            port + 1
                        };
                        let remote = IpEndpoint::new(
                            match b.ep.ip() {
                                IpAddr::V4(a) => IpAddress::Ipv4(a),
                                IpAddr::V6(a) => IpAddress::Ipv6(a),
                            },
                            b.ep.port,
                        );
                        progress = true;
                        match s.connect(cx.iface.context(), remote, port) {
                            Ok(()) => {
                                b.probe = Probe::Connecting { since: now };
                                None
                            }
                            Err(_) => {
                                b.probe = Probe::Idle {
                                    next: now + check.interval,
                                };
                                Some(false)
                            }
                        }
                    }
                    Probe::Idle { .. } => None,
                    Probe::Connecting { since } => {
                        let r = match s.state() {
                            tcp::State::Established => Some(true),
                            tcp::State::Closed => Some(false),
                            _ if now >= since + check.timeout => Some(false),
                            _ => None,
                        };
                        if r.is_some() {
                            // An RST ends the check on both sides at once.
                            s.abort();
                            progress = true;
                            b.probe = Probe::Idle {
                                next: (since + check.interval).max(now),
                            };
                        }
                        r
                    }
                };
                match result {
                    Some(true) => {
                        self.stats.checks_ok += 1;
                        b.failures = 0;
                        b.successes = b.successes.saturating_add(1);
                        if !b.up && b.successes >= check.rise {
                            changes.push((si, bi, true));
                        }
                    }
                    Some(false) => {
                        self.stats.checks_failed += 1;
                        b.successes = 0;
                        b.failures = b.failures.saturating_add(1);
                        if b.up && b.failures >= check.fall {
                            changes.push((si, bi, false));
                        }
                    }
                    None => {}
                }
            }
        }
        for (s, b, up) in changes {
            self.set_backend_up(s, b, up);
        }
        progress
    }
}

impl Function for Balancer {
    fn name(&self) -> &'static str {
        "balancer"
    }

    fn on_ingress(&mut self, now: Instant, _from: Role, frame: &mut Frame<'_>) -> Verdict {
        self.handle(now, frame.bytes_mut())
    }

    fn detach(&mut self, cx: &mut SocketContext<'_>) {
        for svc in &mut self.services {
            for b in &mut svc.backends {
                if let Some(h) = b.socket.take() {
                    cx.sockets.remove(h);
                }
                b.probe = Probe::Idle {
                    next: Instant::ZERO,
                };
            }
        }
        for h in self.retired.drain(..) {
            cx.sockets.remove(h);
        }
    }

    fn poll(&mut self, cx: &mut SocketContext<'_>) -> bool {
        for h in self.retired.drain(..) {
            cx.sockets.remove(h);
        }
        if cx.now >= self.next_sweep {
            self.next_sweep = cx.now + SWEEP_EVERY;
            self.sweep(cx.now);
        }
        self.check_health(cx)
    }

    fn poll_at(&self) -> Option<Instant> {
        let mut at = self.next_sweep;
        for svc in &self.services {
            let Some(check) = svc.check else {
                continue;
            };
            for b in &svc.backends {
                at = at.min(match b.probe {
                    Probe::Idle { next } => next,
                    Probe::Connecting { since } => since + check.timeout,
                });
            }
        }
        Some(at)
    }

    fn reconfigure(&mut self, cfg: &dyn crate::stack::FunctionSpec) -> Result<bool, FunctionError> {
        let Some(cfg) = cfg.downcast_ref::<FunctionConfig>() else {
            return Ok(false);
        };
        Ok((|| -> bool {
            let FunctionConfig::Balancer(c) = cfg else {
                return false;
            };
            match self.apply(c) {
                Ok(()) => {
                    log::info!("balancer: reconfigured, {} flows kept", self.fwd.len());
                    true
                }
                Err(e) => {
                    log::warn!("balancer: reconfiguration refused: {e}");
                    false
                }
            }
        })())
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        let pairs: Vec<(String, u64)> = (|| {
            let st = &self.stats;
            let mut out: Vec<(String, u64)> = vec![
                ("flows_active".into(), self.fwd.len() as u64),
                ("flows_created".into(), st.flows_created),
                ("expired".into(), st.expired),
                ("no_backend".into(), st.no_backend),
                ("table_full".into(), st.table_full),
                ("health_changes".into(), st.health_changes),
                ("malformed".into(), st.malformed),
                ("fragments_dropped".into(), st.fragments_dropped),
                ("conflicts".into(), st.conflicts),
                ("checks_ok".into(), st.checks_ok),
                ("checks_failed".into(), st.checks_failed),
            ];
            // Per backend address (summed over services sharing it).
            let mut backends: Vec<(Endpoint, u64, u64, bool)> = Vec::new();
            for s in &self.services {
                let name = &s.name;
                out.push((format!("service.{name}.flows"), s.flows));
                out.push((format!("service.{name}.packets"), s.packets));
                out.push((format!("service.{name}.no_backend"), s.no_backend));
                let up = s.backends.iter().filter(|b| b.up).count();
                out.push((format!("service.{name}.backends_up"), up as u64));
                for b in &s.backends {
                    match backends.iter_mut().find(|e| e.0 == b.ep) {
                        Some(e) => {
                            e.1 += b.flows;
                            e.2 += b.packets;
                            e.3 &= b.up;
                        }
                        None => backends.push((b.ep, b.flows, b.packets, b.up)),
                    }
                }
            }
            for (ep, flows, packets, up) in backends {
                out.push((format!("backend.{ep}.flows"), flows));
                out.push((format!("backend.{ep}.packets"), packets));
                out.push((format!("backend.{ep}.up"), u64::from(up)));
            }
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
    use crate::functions::fixtures::udp;
    use smoltcp::wire::{Ipv4Address, Ipv4Packet, Ipv6Address, Ipv6Packet, TcpControl, UdpPacket};

    fn tcp(src: (IpAddress, u16), dst: (IpAddress, u16), control: TcpControl) -> Vec<u8> {
        let ack = control != TcpControl::Syn;
        crate::functions::fixtures::tcp(src, dst, control, ack, b"hello, backend")
    }

    const CLIENT: Ipv4Address = Ipv4Address::new(10, 11, 0, 1);
    const VIP: Ipv4Address = Ipv4Address::new(10, 20, 0, 100);
    const BALANCER: Ipv4Address = Ipv4Address::new(10, 12, 0, 254);

    fn backend(i: u8) -> Ipv4Address {
        Ipv4Address::new(10, 12, 0, 2 + i)
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(1_000_000 + ms as i64)
    }

    fn balancer(text: &str) -> Balancer {
        Balancer::new(toml::from_str(text).expect("test config parses")).expect("valid config")
    }

    /// One TCP service on VIP:7 over `n` backends 10.12.0.2.. port 7, and a
    /// UDP one on VIP:53 over the same hosts, port 53.
    fn config(n: u8, extra: &str) -> String {
        let list = |port: u16| {
            (0..n)
                .map(|i| format!("\"{}:{port}\"", backend(i)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{extra}\n[[service]]\nname = \"web\"\nvip = \"{VIP}:7\"\nbackends = [{}]\n\
             table_size = 65537\n\
             [[service]]\nname = \"dns\"\nvip = \"{VIP}:53\"\nproto = \"udp\"\nbackends = [{}]\n\
             table_size = 251\n",
            list(7),
            list(53)
        )
    }

    fn ep(a: impl Into<IpAddress>, port: u16) -> (IpAddress, u16) {
        (a.into(), port)
    }

    /// Runs `on_ingress` on a copy; returns the verdict and the frame after.
    fn ingress(lb: &mut Balancer, now: Instant, from: Role, bytes: &[u8]) -> (Verdict, Vec<u8>) {
        let mut buf = bytes.to_vec();
        let len = buf.len();
        let v = lb.on_ingress(
            now,
            from,
            &mut Frame::new(&mut buf, len, crate::wire::LinkMedium::Ethernet),
        );
        (v, buf)
    }

    /// The backend a client's packet was sent to (its new destination).
    fn dnat_target(lb: &mut Balancer, now: Instant, frame: &[u8]) -> Option<Ipv4Address> {
        match ingress(lb, now, Role::Local, frame) {
            (Verdict::Modified, out) => Some(Ipv4Packet::new_unchecked(&out[14..]).dst_addr()),
            _ => None,
        }
    }

    fn counter(lb: &Balancer, name: &str) -> u64 {
        crate::stack::hook::counters_of(lb)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    fn perms(n: usize, m: u32) -> Vec<(u16, u32, u32)> {
        (0..n)
            .map(|i| {
                let b = Backend::new(
                    Endpoint::parse(&format!("10.12.{}.{}:80", i / 200, i % 200 + 2)).unwrap(),
                    m,
                );
                (i as u16, b.offset, b.skip)
            })
            .collect()
    }

    #[test]
    fn maglev_gives_every_backend_its_share() {
        for n in [1, 2, 3, 7, 10, 100] {
            let table = maglev_table(65537, &perms(n, 65537));
            let mut share = vec![0usize; n];
            for e in &table {
                share[usize::from(*e)] += 1;
            }
            let (lo, hi) = (share.iter().min().unwrap(), share.iter().max().unwrap());
            // Turn-taking: everyone holds ⌊M/N⌋ or ⌈M/N⌉ entries.
            assert!(hi - lo <= 1, "n {n}: {lo}..{hi}");
            assert_eq!(share.iter().sum::<usize>(), 65537);
        }
        assert!(maglev_table(7, &[]).iter().all(|&e| e == NONE));
    }

    #[test]
    fn maglev_moves_few_entries_when_a_backend_comes_or_goes() {
        let m = 65537;
        let all = perms(11, m);
        let ten = maglev_table(m, &all[..10]);
        let eleven = maglev_table(m, &all);
        // Adding one of 11: it takes ~1/11 of the table; entries moving
        // between the old ten are few.
        let to_new = eleven.iter().filter(|&&e| e == 10).count();
        let shuffled = ten
            .iter()
            .zip(&eleven)
            .filter(|(a, b)| a != b && **b != 10)
            .count();
        assert!((5900..6000).contains(&to_new), "{to_new}");
        assert!(
            shuffled < m as usize / 50,
            "{shuffled} entries moved between old backends"
        );
        // Removing backend 3 of ten: its entries must move, others mostly stay.
        let without: Vec<_> = all[..10].iter().filter(|p| p.0 != 3).copied().collect();
        let nine = maglev_table(m, &without);
        let moved = ten
            .iter()
            .zip(&nine)
            .filter(|(a, b)| a != b && **a != 3)
            .count();
        assert!(nine.iter().all(|&e| e != 3));
        assert!(
            moved < m as usize / 50,
            "{moved} entries of healthy backends moved"
        );
    }

    #[test]
    fn nat_rewrite_matches_packets_built_from_scratch() {
        let mut lb = balancer(&config(3, ""));
        let c = ep(CLIENT, 40001);
        for control in [TcpControl::Syn, TcpControl::Psh, TcpControl::Fin] {
            let (v, out) = ingress(&mut lb, t(0), Role::Local, &tcp(c, ep(VIP, 7), control));
            assert_eq!(v, Verdict::Modified);
            let be = Ipv4Packet::new_unchecked(&out[14..]).dst_addr();
            // Byte for byte what the client would have sent to the backend,
            // checksums included.
            assert_eq!(out, tcp(c, ep(be, 7), control), "{control:?}");
            // The reply comes back from the VIP.
            let (v, back) = ingress(&mut lb, t(0), Role::Global, &tcp(ep(be, 7), c, control));
            assert_eq!(v, Verdict::Modified);
            assert_eq!(back, tcp(ep(VIP, 7), c, control));
        }
        // UDP, with and without a checksum.
        let c = ep(CLIENT, 5353);
        let q = udp(c, ep(VIP, 53), b"query");
        let (v, out) = ingress(&mut lb, t(0), Role::Local, &q);
        assert_eq!(v, Verdict::Modified);
        let be = Ipv4Packet::new_unchecked(&out[14..]).dst_addr();
        assert_eq!(out, udp(c, ep(be, 53), b"query"));
        let ip = Ipv4Packet::new_unchecked(&out[14..]);
        assert!(ip.verify_checksum());
        let u = UdpPacket::new_unchecked(ip.payload());
        assert!(u.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        let mut none = q.clone();
        none[14 + 20 + 6..14 + 20 + 8].fill(0);
        let (v, out) = ingress(&mut lb, t(0), Role::Local, &none);
        assert_eq!(v, Verdict::Modified);
        assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
        assert!(Ipv4Packet::new_unchecked(&out[14..]).verify_checksum());
    }

    #[test]
    fn ipv6_services_rewrite_too() {
        let vip = Ipv6Address::new(0xfd00, 20, 0, 0, 0, 0, 0, 0x100);
        let b1 = Ipv6Address::new(0xfd00, 12, 0, 0, 0, 0, 0, 2);
        let b2 = Ipv6Address::new(0xfd00, 12, 0, 0, 0, 0, 0, 3);
        let client = Ipv6Address::new(0xfd00, 11, 0, 0, 0, 0, 0, 1);
        let mut lb = balancer(&format!(
            "[[service]]\nname = \"v6\"\nvip = \"[{vip}]:443\"\nbackends = [\"[{b1}]:8443\", \"[{b2}]:8443\"]\n\
             check = \"none\"\ntable_size = 1009\n"
        ));
        let c = ep(client, 50000);
        let (v, out) = ingress(
            &mut lb,
            t(0),
            Role::Local,
            &tcp(c, ep(vip, 443), TcpControl::Syn),
        );
        assert_eq!(v, Verdict::Modified);
        let be = Ipv6Packet::new_unchecked(&out[14..]).dst_addr();
        assert!(be == b1 || be == b2);
        assert_eq!(out, tcp(c, ep(be, 8443), TcpControl::Syn));
        let (v, back) = ingress(&mut lb, t(0), Role::Global, &udp(ep(be, 8443), c, b"x"));
        assert_eq!(v, Verdict::Pass, "a UDP packet is not the TCP flow's reply");
        assert_eq!(back, udp(ep(be, 8443), c, b"x"));
        let (v, back) = ingress(
            &mut lb,
            t(0),
            Role::Global,
            &tcp(ep(be, 8443), c, TcpControl::Syn),
        );
        assert_eq!(v, Verdict::Modified);
        assert_eq!(back, tcp(ep(vip, 443), c, TcpControl::Syn));
    }

    #[test]
    fn flows_expire_with_virtual_time() {
        let mut lb = balancer(&config(
            3,
            "udp_timeout = \"30s\"\ntcp_timeout = \"60s\"\ntcp_closing_timeout = \"2s\"",
        ));
        let c = ep(CLIENT, 5000);
        let q = udp(c, ep(VIP, 53), b"q");
        let be = dnat_target(&mut lb, t(0), &q).unwrap();
        let reply = udp(ep(be, 53), c, b"a");
        // Each packet refreshes the idle timer.
        assert_eq!(
            ingress(&mut lb, t(29_000), Role::Global, &reply).0,
            Verdict::Modified
        );
        assert_eq!(
            ingress(&mut lb, t(58_000), Role::Global, &reply).0,
            Verdict::Modified
        );
        assert_eq!(lb.flows_active(), 1);
        // 30 s of silence: gone, the reply is no longer rewritten.
        assert_eq!(
            ingress(&mut lb, t(88_001), Role::Global, &reply).0,
            Verdict::Pass
        );
        assert_eq!(counter(&lb, "expired"), 1);
        assert_eq!(lb.flows_active(), 0);
        // TCP: idle timeout, and a short linger after FIN.
        let c = ep(CLIENT, 40000);
        let be = dnat_target(&mut lb, t(100_000), &tcp(c, ep(VIP, 7), TcpControl::Syn)).unwrap();
        let data = tcp(ep(be, 7), c, TcpControl::Psh);
        assert_eq!(
            ingress(&mut lb, t(159_000), Role::Global, &data).0,
            Verdict::Modified
        );
        let fin = tcp(c, ep(VIP, 7), TcpControl::Fin);
        assert_eq!(dnat_target(&mut lb, t(160_000), &fin), Some(be));
        assert_eq!(
            ingress(&mut lb, t(161_500), Role::Global, &data).0,
            Verdict::Modified
        );
        assert_eq!(
            ingress(&mut lb, t(164_000), Role::Global, &data).0,
            Verdict::Pass
        );
        // A sweep removes what nobody touched.
        dnat_target(
            &mut lb,
            t(200_000),
            &tcp(ep(CLIENT, 1), ep(VIP, 7), TcpControl::Syn),
        );
        dnat_target(&mut lb, t(200_000), &udp(ep(CLIENT, 2), ep(VIP, 53), b"q"));
        assert_eq!(lb.flows_active(), 2);
        lb.sweep(t(231_000));
        assert_eq!(lb.flows_active(), 1);
        lb.sweep(t(261_000));
        assert_eq!(lb.flows_active(), 0);
        assert_eq!(counter(&lb, "expired"), 4);
    }

    #[test]
    fn flows_spread_and_keep_their_backend_when_one_is_added() {
        let mut lb = balancer(&config(3, ""));
        let syn = |port| tcp(ep(CLIENT, port), ep(VIP, 7), TcpControl::Syn);
        let before: Vec<_> = (0..600)
            .map(|p| dnat_target(&mut lb, t(0), &syn(30000 + p)).unwrap())
            .collect();
        for i in 0..3 {
            let n = counter(&lb, &format!("backend.{}:7.flows", backend(i)));
            assert!((150..250).contains(&n), "backend {i}: {n} of 600 flows");
        }
        let cfg: BalancerConfig = toml::from_str(&config(4, "")).unwrap();
        assert!(lb.reconfigure(&FunctionConfig::Balancer(cfg)).unwrap());
        assert_eq!(lb.flows_active(), 600);
        // Established flows stay where they were, also for data packets.
        for (p, be) in before.iter().enumerate() {
            let data = tcp(ep(CLIENT, 30000 + p as u16), ep(VIP, 7), TcpControl::Psh);
            assert_eq!(dnat_target(&mut lb, t(1), &data), Some(*be));
        }
        // New flows reach the new backend too.
        let fresh: Vec<_> = (0..400)
            .map(|p| dnat_target(&mut lb, t(2), &syn(50000 + p)).unwrap())
            .collect();
        let on_new = fresh.iter().filter(|&&b| b == backend(3)).count();
        assert!(
            (60..140).contains(&on_new),
            "{on_new} of 400 on the new backend"
        );
        // Counters survive the reconfiguration.
        let total: u64 = (0..4)
            .map(|i| counter(&lb, &format!("backend.{}:7.flows", backend(i))))
            .sum();
        assert_eq!(total, 1000);
        // Removing a backend drops only its flows.
        let cfg: BalancerConfig = toml::from_str(&config(3, "")).unwrap();
        assert!(lb.reconfigure(&FunctionConfig::Balancer(cfg)).unwrap());
        assert_eq!(lb.flows_active(), 1000 - on_new);
    }

    #[test]
    fn a_backend_down_loses_its_flows_others_keep_theirs() {
        let mut lb = balancer(&config(3, ""));
        let pkt = |port| tcp(ep(CLIENT, port), ep(VIP, 7), TcpControl::Psh);
        let before: Vec<_> = (0..300)
            .map(|p| dnat_target(&mut lb, t(0), &pkt(p + 1)).unwrap())
            .collect();
        lb.set_backend_up(0, 1, false);
        assert_eq!(counter(&lb, "health_changes"), 1);
        assert_eq!(counter(&lb, &format!("backend.{}:7.up", backend(1))), 0);
        assert_eq!(counter(&lb, "service.web.backends_up"), 2);
        for (p, was) in before.iter().enumerate() {
            let now = dnat_target(&mut lb, t(1), &pkt(p as u16 + 1)).unwrap();
            assert_ne!(now, backend(1));
            if *was != backend(1) {
                assert_eq!(now, *was);
            }
        }
        // All down: nothing to send new flows to.
        lb.set_backend_up(0, 0, false);
        lb.set_backend_up(0, 2, false);
        let syn = tcp(ep(CLIENT, 9999), ep(VIP, 7), TcpControl::Syn);
        assert_eq!(ingress(&mut lb, t(2), Role::Local, &syn).0, Verdict::Drop);
        assert_eq!(counter(&lb, "no_backend"), 1);
        assert_eq!(counter(&lb, "service.web.no_backend"), 1);
        lb.set_backend_up(0, 1, true);
        assert_eq!(dnat_target(&mut lb, t(3), &syn), Some(backend(1)));
    }

    #[test]
    fn full_table_refuses_new_flows_and_counts_them() {
        let mut lb = balancer(&config(3, "max_flows = 2\nudp_timeout = \"10s\""));
        let q = |port| udp(ep(CLIENT, port), ep(VIP, 53), b"q");
        assert!(dnat_target(&mut lb, t(0), &q(1)).is_some());
        assert!(dnat_target(&mut lb, t(0), &q(2)).is_some());
        assert_eq!(ingress(&mut lb, t(0), Role::Local, &q(3)).0, Verdict::Drop);
        assert_eq!(counter(&lb, "table_full"), 1);
        // Existing flows still work; once they expire there is room again.
        assert!(dnat_target(&mut lb, t(5_000), &q(1)).is_some());
        assert!(dnat_target(&mut lb, t(12_000), &q(3)).is_some());
        assert_eq!(counter(&lb, "flows_active"), 2);
    }

    #[test]
    fn other_traffic_passes_untouched() {
        let mut lb = balancer(&config(3, ""));
        // A health check's reply is addressed to the balancer itself.
        let check = tcp(ep(backend(0), 7), ep(BALANCER, 40000), TcpControl::Syn);
        assert_eq!(
            ingress(&mut lb, t(0), Role::Global, &check),
            (Verdict::Pass, check)
        );
        // Another port of the VIP, another protocol, a non-IP frame.
        let other = tcp(ep(CLIENT, 1), ep(VIP, 8), TcpControl::Syn);
        assert_eq!(ingress(&mut lb, t(0), Role::Local, &other).0, Verdict::Pass);
        let udp7 = udp(ep(CLIENT, 1), ep(VIP, 7), b"x");
        assert_eq!(ingress(&mut lb, t(0), Role::Local, &udp7).0, Verdict::Pass);
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(ingress(&mut lb, t(0), Role::Local, &arp).0, Verdict::Pass);
        // A fragment to a VIP cannot be balanced.
        let mut frag = udp(ep(CLIENT, 1), ep(VIP, 53), b"x");
        frag[14 + 6] = 0x20;
        assert_eq!(ingress(&mut lb, t(0), Role::Local, &frag).0, Verdict::Drop);
        assert_eq!(counter(&lb, "fragments_dropped"), 1);
        assert_eq!(lb.flows_active(), 0);
    }

    #[test]
    fn truncated_and_garbage_frames_never_panic() {
        let frames = [
            tcp(ep(CLIENT, 1), ep(VIP, 7), TcpControl::Syn),
            udp(ep(CLIENT, 1), ep(VIP, 53), b"datagram"),
            tcp(ep(backend(0), 7), ep(CLIENT, 1), TcpControl::Psh),
        ];
        for medium in ["ethernet", "ip"] {
            let mut lb = balancer(&config(3, &format!("medium = \"{medium}\"")));
            for f in &frames {
                let f = if medium == "ip" { &f[14..] } else { &f[..] };
                for len in 0..f.len() {
                    let (v, out) = ingress(&mut lb, t(0), Role::Local, &f[..len]);
                    assert!(
                        matches!(v, Verdict::Drop | Verdict::Pass),
                        "len {len}: {v:?}"
                    );
                    assert_eq!(out, &f[..len]);
                }
            }
            assert!(counter(&lb, "malformed") > 0);
        }
        let mut lb = balancer(&config(3, "max_flows = 64"));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..20_000u64 {
            let mut f = frames[(i % 3) as usize].clone();
            for _ in 0..1 + i % 4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % f.len() as u64) as usize;
                f[at] = (x >> 32) as u8;
            }
            let from = if i % 2 == 0 {
                Role::Local
            } else {
                Role::Global
            };
            let (v, out) = ingress(&mut lb, t(i), from, &f);
            if v == Verdict::Modified {
                assert_eq!(out.len(), f.len());
            }
            assert!(lb.flows_active() <= 64);
        }
    }

    #[test]
    fn config_errors_name_the_problem() {
        let err = |text: &str| match Balancer::new(toml::from_str(text).expect("parses")) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {text}"),
        };
        let svc = |body: &str| format!("[[service]]\nname = \"s\"\nvip = \"10.0.0.1:80\"\n{body}");
        assert!(err(&svc("table_size = 65536")).contains("prime"));
        assert!(
            err(&svc(
                "table_size = 2\nbackends = [\"10.0.1.1:80\", \"10.0.1.2:80\"]"
            ))
            .contains("exceed")
        );
        assert!(err(&svc("backends = [\"10.0.1.1\"]")).contains("not ip:port"));
        assert!(err(&svc("backends = [\"[fd00::1]:80\"]")).contains("IP version"));
        assert!(err(&svc("backends = [\"10.0.1.1:80\", \"10.0.1.1:80\"]")).contains("twice"));
        assert!(err(&svc("interval = \"fast\"")).contains("interval"));
        assert!(err(&svc("timeout = \"0s\"")).contains("timeout"));
        assert!(err(&svc("fall = 0")).contains("fall"));
        assert!(err("[[service]]\nname = \"s\"\nvip = \"10.0.0.1\"").contains("vip"));
        assert!(err(&format!("{}\n{}", svc(""), svc(""))).contains("name"));
        assert!(err("udp_timeout = \"5 parsecs\"").contains("udp_timeout"));
        assert!(err("max_flows = 0").contains("max_flows"));
        let parse = |text: &str| toml::from_str::<FunctionConfig>(text);
        assert!(parse("kind = \"balancer\"\nflows = 3").is_err());
        assert!(parse(&format!("kind = \"balancer\"\n{}", svc("proto = \"sctp\""))).is_err());
        assert!(parse(&format!("kind = \"balancer\"\n{}", svc("check = \"http\""))).is_err());
        let ok = parse(&format!(
            "kind = \"balancer\"\n{}",
            svc("backends = [\"10.0.1.1:80\"]")
        ))
        .expect("valid");
        assert!(super::super::build(&ok).is_ok());
        // A refused reconfiguration keeps the running configuration.
        let mut lb = balancer(&config(3, ""));
        let bad: BalancerConfig = toml::from_str(&svc("table_size = 100")).unwrap();
        assert!(!lb.reconfigure(&FunctionConfig::Balancer(bad)).unwrap());
        assert_eq!(lb.table_share(0).len(), 3);
    }
}
