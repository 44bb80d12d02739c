//! Connection tracking: the table of live connections keyed by the
//! canonical flow key (the same for both directions), their states and
//! timeouts, and how a packet relates to them ([`Class`]).
//!
//! The table hashes with foldhash, seeded at random per process (a peer
//! cannot aim collisions at it without knowing the seed), over the
//! derived hash of [`FlowKey`]; an established packet costs one lookup. Expiry is lazy: an entry is checked when a
//! packet looks it up, and the table is swept every [`SWEEP_EVERY`] of
//! traffic and, at most every [`FULL_SWEEP_EVERY`], when it is full.
//!
//! Each entry remembers how its connection started (the side its first
//! packet came from, which end sent it), so that a reconfiguration can ask
//! the new rules about it again ([`ConnTable::reconfigure`]).

use std::collections::HashMap;

use foldhash::fast::RandomState;
use smoltcp::time::{Duration, Instant};

use super::FirewallStats;
use crate::functions::Role;
use crate::wire::{FlowKey, Fragment, IcmpKind, IpView, TcpFlags, Transport, proto};

/// How often expired entries are swept out even when the table is not full.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// A full table is swept at most this often (a flood must not make every
/// packet pay for a sweep).
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What a packet's transport header means to the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Tcp(TcpFlags),
    Udp,
    /// ICMP or ICMPv6 echo; the flow key carries its identifier.
    Echo {
        request: bool,
    },
    /// An ICMP error: it belongs to the connection of the packet it quotes
    /// ([`quoted_key`]).
    IcmpError,
    /// Other ICMP: matched by rules, never tracked.
    IcmpOther,
    /// Another IP protocol, tracked by addresses.
    Other,
}

impl Kind {
    /// The kind of packet `ip`; `None` if its transport header is cut
    /// short (malformed).
    pub fn of(ip: &IpView) -> Option<Kind> {
        Some(match ip.transport {
            Transport::Tcp { flags, .. } => Kind::Tcp(flags),
            Transport::Udp { .. } => Kind::Udp,
            Transport::Icmp { ty, .. } => match IcmpKind::of(ip.v6, ty) {
                IcmpKind::EchoRequest => Kind::Echo { request: true },
                IcmpKind::EchoReply => Kind::Echo { request: false },
                IcmpKind::Error => Kind::IcmpError,
                IcmpKind::Other => Kind::IcmpOther,
            },
            Transport::None => Kind::Other,
            Transport::Truncated => return None,
        })
    }
}

/// The canonical key of the packet an ICMP error `ip` in `frame` quotes;
/// `None` if the quote is not an IP header of the error's version
/// (malformed).
pub(super) fn quoted_key(ip: &IpView, frame: &[u8]) -> Option<(FlowKey, bool)> {
    let quoted = ip.payload(frame).get(8..)?;
    Some(FlowKey::from_quoted(ip.v6, quoted)?.canonical())
}

/// How a packet relates to the connection table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    New,
    Established,
    Invalid,
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
    /// The originator is the canonical key's source.
    orig_is_src: bool,
    /// The side the first packet came from (the device's own stack counts
    /// as the local side).
    from: Role,
    state: ConnState,
    replied: bool,
    expires: Instant,
}

/// How long an idle connection lives, by state.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub tcp_established: Duration,
    pub tcp_handshake: Duration,
    pub tcp_closing: Duration,
    pub udp: Duration,
    pub udp_replied: Duration,
    pub icmp: Duration,
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

/// The connection table.
pub(super) struct ConnTable {
    conns: HashMap<FlowKey, Conn, RandomState>,
    timeouts: Timeouts,
    max: usize,
    next_sweep: Instant,
    next_full_sweep: Instant,
}

impl ConnTable {
    pub fn new(timeouts: Timeouts, max: usize) -> ConnTable {
        ConnTable {
            conns: HashMap::with_hasher(RandomState::default()),
            timeouts,
            max,
            next_sweep: Instant::ZERO,
            next_full_sweep: Instant::ZERO,
        }
    }

    /// Entries, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Sweeps out expired entries if [`SWEEP_EVERY`] has passed.
    pub fn sweep_if_due(&mut self, now: Instant, stats: &mut FirewallStats) {
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            self.sweep(now, stats);
        }
    }

    /// Looks the packet (of `kind`, with canonical key `key`; for an ICMP
    /// error, the quoted packet's) up and advances its connection's state;
    /// one hash lookup on the common path.
    pub fn track(
        &mut self,
        now: Instant,
        kind: Kind,
        (key, src_lo): (FlowKey, bool),
        stats: &mut FirewallStats,
    ) -> Class {
        match kind {
            Kind::IcmpError => {
                return match self.conns.get(&key) {
                    Some(c) if c.expires > now => Class::Established,
                    _ => Class::New,
                };
            }
            Kind::IcmpOther => return Class::New,
            _ => {}
        }
        let mut expired = false;
        if let Some(c) = self.conns.get_mut(&key) {
            if c.expires <= now {
                expired = true;
            } else {
                let from_orig = c.orig_is_src == src_lo;
                if let Kind::Tcp(flags) = kind {
                    let syn = flags.contains(TcpFlags::SYN);
                    let ack = flags.contains(TcpFlags::ACK);
                    if syn && !ack && from_orig && c.state == ConnState::Closing {
                        // Port reuse: the old connection is over.
                        self.conns.remove(&key);
                        return Class::New;
                    }
                    c.state = match c.state {
                        _ if flags.intersects(TcpFlags::RST | TcpFlags::FIN) => ConnState::Closing,
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
        if expired {
            self.conns.remove(&key);
            stats.expired += 1;
        }
        match kind {
            // A bare SYN (FIN aside) opens; any other segment belongs to a
            // connection we do not know.
            Kind::Tcp(f)
                if f & (TcpFlags::SYN | TcpFlags::ACK | TcpFlags::RST) == TcpFlags::SYN =>
            {
                Class::New
            }
            Kind::Tcp(_) | Kind::Echo { request: false } => Class::Invalid,
            _ => Class::New,
        }
    }

    /// Enters an accepted new packet's connection, started from `from`;
    /// `false` if the table is full. ICMP messages that start nothing need
    /// no entry.
    pub fn create(
        &mut self,
        now: Instant,
        kind: Kind,
        (key, src_lo): (FlowKey, bool),
        from: Role,
        stats: &mut FirewallStats,
    ) -> bool {
        let state = match kind {
            Kind::Tcp(_) => ConnState::SynSent,
            Kind::Udp | Kind::Other => ConnState::Datagram,
            Kind::Echo { .. } => ConnState::Echo,
            Kind::IcmpError | Kind::IcmpOther => return true,
        };
        if self.conns.len() >= self.max && now >= self.next_full_sweep {
            self.next_full_sweep = now + FULL_SWEEP_EVERY;
            self.sweep(now, stats);
        }
        if self.conns.len() >= self.max {
            stats.table_full += 1;
            return false;
        }
        let mut c = Conn {
            orig_is_src: src_lo,
            from,
            state,
            replied: false,
            expires: now,
        };
        c.expires = now + self.timeouts.of(&c);
        self.conns.insert(key, c);
        stats.connections_created += 1;
        true
    }

    /// Takes a new configuration: keeps the connections for which `allows`
    /// (asked with the packet that started each one, as the originator
    /// sent it, and the side it came from) says yes, with their state,
    /// and removes the others; returns how many it removed. Entries keep
    /// their idle deadline, or get the later one that `timeouts` give
    /// counted from their last packet: a longer timeout helps a connection
    /// at once, a shorter one applies from its next packet on. `max`
    /// applies to new connections only: a table holding more keeps them.
    pub fn reconfigure(
        &mut self,
        timeouts: Timeouts,
        max: usize,
        mut allows: impl FnMut(&IpView, Role) -> bool,
    ) -> u64 {
        let old = self.timeouts;
        let before = self.conns.len();
        self.conns.retain(|key, c| {
            if !allows(&first_packet(key, c), c.from) {
                return false;
            }
            let last = c.expires - old.of(c);
            c.expires = c.expires.max(last + timeouts.of(c));
            true
        });
        self.timeouts = timeouts;
        self.max = max;
        (before - self.conns.len()) as u64
    }

    fn sweep(&mut self, now: Instant, stats: &mut FirewallStats) {
        let before = self.conns.len();
        self.conns.retain(|_, c| c.expires > now);
        stats.expired += (before - self.conns.len()) as u64;
    }
}

/// The packet that started connection `c` (canonical key `key`), as the
/// rules saw it: from the originator, a bare SYN for TCP, an echo request
/// for an echo exchange. Only what rules match on is filled in.
fn first_packet(key: &FlowKey, c: &Conn) -> IpView {
    let k = if c.orig_is_src { *key } else { key.reversed() };
    let transport = match (c.state, k.proto) {
        (ConnState::Echo, _) => Transport::Icmp {
            ty: if k.v6 { 128 } else { 8 },
            code: 0,
            ident: k.sport,
        },
        (_, proto::TCP) => Transport::Tcp {
            sport: k.sport,
            dport: k.dport,
            flags: TcpFlags::SYN,
            header_len: 20,
        },
        (_, proto::UDP) => Transport::Udp {
            sport: k.sport,
            dport: k.dport,
        },
        _ => Transport::None,
    };
    IpView {
        v6: k.v6,
        src: k.src,
        dst: k.dst,
        proto: k.proto,
        tos: 0,
        hop_limit: 64,
        fragment: Fragment::Whole,
        l3: 0,
        l4: 0,
        end: 0,
        transport,
    }
}
