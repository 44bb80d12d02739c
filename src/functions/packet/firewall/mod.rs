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
//! - **Malformed** or truncated frames (by the rules of [`crate::wire::ip`],
//!   plus ICMP errors whose quoted header is not one) are dropped and
//!   counted; non-IP EtherTypes other than ARP get the default policy.
//!
//! Direction: a frame arriving from the global adapter is `in`; one
//! arriving from the local adapter is `out`; a frame the device's own stack
//! emits is also `out` (it leaves the device, as if from the local side),
//! so with `default = "drop"` the device itself may only start connections
//! a rule allows — its replies to accepted connections pass as established.
//!
//! Rules match on `proto` (a name, a number, or `"any"`), `src`/`dst`
//! prefixes and `sport`/`dport` ranges through the shared
//! [`Matcher`](crate::functions::matching::Matcher).
//!
//! TCP tracking: a SYN creates the entry (handshake timeout), the SYN-ACK
//! from the responder and the originator's ACK establish it (established
//! timeout), a FIN or RST moves it to closing (closing timeout). A new SYN
//! from the originator on a closing entry starts over. UDP entries live
//! `udp_timeout`, or `udp_replied_timeout` once the responder answered;
//! ICMP echo entries `icmp_timeout` (durations like `"30s"`, `"1h"`).
//! Expiry is lazy (checked on lookup, plus a sweep every 10 s of traffic
//! and when the table is full); when the table holds `max_connections`
//! live entries a new connection is dropped and counted in `table_full` —
//! established ones are never evicted.
//!
//! Counters: `rule{i}_packets` per rule (0-based), `accepted`, `dropped`,
//! `invalid`, `malformed`, `fragments_dropped`, `table_full`,
//! `connections`, `connections_created`, `expired`, `revoked`,
//! `logs_suppressed`.
//!
//! **Reconfiguration** ([`Firewall::reconfigure`], which
//! [`Function::reconfigure`] calls for a firewall config) is in place and
//! never costs a connection the new configuration still allows. The new
//! config is checked first: an invalid one is an error and changes
//! nothing. Then the connection table stays, and each tracked connection is
//! put to the new rules as if its first packet arrived now — from the side
//! it came from, with the protocol, addresses and ports the entry recorded
//! (a bare SYN for TCP, an echo request for ICMP echo): the connections the
//! new rules (or the new `default`) would refuse are removed and counted in
//! `revoked`, so their next packets meet the rules as strangers (with
//! `default = "drop"`, mid-stream TCP segments are `invalid` and dropped).
//! Every other connection keeps its state; its idle deadline stays, or
//! moves later if the new timeouts, counted from its last packet, give a
//! later one (a longer timeout helps at once, a shorter one applies from
//! the connection's next packet). A smaller `max_connections` evicts
//! nothing: new connections are refused (`table_full`) until expiries bring
//! the table under it. `state = "established"` rules need no pass over the
//! table: established packets consult them anyway. All counters carry on,
//! except `rule{i}_packets`, which follow the new rule list: a rule that
//! stands unchanged at the same position keeps its count, the others start
//! at 0.
//!
//! Drops are logged with `log::info!`, at most `log_drops_per_second`.
//!
//! ```
//! use shmnet::functions::firewall::{Firewall, FirewallConfig};
//! use shmnet::functions::{Frame, Function, Role, Verdict};
//! use shmnet::wire::LinkMedium;
//! use smoltcp::time::Instant;
//!
//! let cfg: FirewallConfig = toml::from_str(r#"
//!     default = "drop"
//!     [[rule]]
//!     action = "accept"
//!     direction = "in"
//!     proto = "tcp"
//!     dport = 80
//! "#).unwrap();
//! let mut fw = Firewall::new(cfg).unwrap();
//! // A bare IPv4 TCP SYN 192.0.2.1:40000 -> 10.0.0.2:80 from outside.
//! let mut syn = [0u8; 40];
//! syn[..12].copy_from_slice(&[0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]);
//! syn[12..20].copy_from_slice(&[192, 0, 2, 1, 10, 0, 0, 2]);
//! syn[20..24].copy_from_slice(&[0x9c, 0x40, 0, 80]);
//! syn[32] = 5 << 4; // data offset: 20 bytes
//! syn[33] = 0x02; // SYN
//! let mut f = Frame::new(&mut syn, 40, LinkMedium::Ip);
//! assert_eq!(fw.on_ingress(Instant::ZERO, Role::Global, &mut f), Verdict::Pass);
//! assert_eq!(fw.connections(), 1);
//! // The same SYN to port 81 meets the default policy.
//! syn[23] = 81;
//! let mut f = Frame::new(&mut syn, 40, LinkMedium::Ip);
//! assert_eq!(fw.on_ingress(Instant::ZERO, Role::Global, &mut f), Verdict::Drop);
//! ```

mod config;
mod conntrack;
mod rules;
#[cfg(test)]
mod tests;

use smoltcp::time::{Duration, Instant};

pub use config::{Action, Direction, FirewallConfig, RuleConfig, StateMatch};
use conntrack::{Class, ConnTable, Kind, quoted_key};
use rules::Rules;

use super::{Frame, Function, FunctionError, FunctionKind, Role, Verdict};
use crate::functions::common::{counters, reconfigure_in_place};
use crate::wire::{Fragment, FrameView, IpView};

counters! {
    /// Counters of the firewall (`rule{i}_packets` are kept per rule).
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    pub struct FirewallStats {
        /// Packets let through (established, or accepted by a rule or
        /// the default policy).
        pub accepted: u64,
        /// Packets dropped, for any reason below or by a rule.
        pub dropped: u64,
        /// TCP segments other than a bare SYN, and echo replies, with no
        /// tracked connection.
        pub invalid: u64,
        /// Frames whose IP or transport header does not parse.
        pub malformed: u64,
        /// Non-first fragments no `fragments = true` rule accepted.
        pub fragments_dropped: u64,
        /// New connections refused because the table was full.
        pub table_full: u64,
        /// Connections in the table now (expired ones not yet swept
        /// included): read from the table by [`Firewall::stats`].
        pub connections: u64,
        /// Connections entered into the table since the start.
        pub connections_created: u64,
        /// Connections removed after their timeout.
        pub expired: u64,
        /// Connections a reconfiguration removed because the new rules
        /// would not accept them.
        pub revoked: u64,
        /// Drop log lines left out to respect `log_drops_per_second`.
        pub logs_suppressed: u64,
    }
}

/// The stateful firewall function.
pub struct Firewall {
    default_policy: Action,
    rules: Rules,
    table: ConnTable,
    log: DropLog,
    stats: FirewallStats,
}

impl Firewall {
    /// A firewall with these rules and an empty connection table; an
    /// invalid rule is an error naming it.
    pub fn new(cfg: FirewallConfig) -> Result<Firewall, FunctionError> {
        let c = cfg.compile()?;
        Ok(Firewall {
            default_policy: cfg.default_policy,
            rules: c.rules,
            table: ConnTable::new(c.timeouts, c.max_connections),
            log: DropLog {
                per_second: cfg.log_drops_per_second,
                window: Instant::ZERO,
                logged: 0,
            },
            stats: FirewallStats::default(),
        })
    }

    /// Connections in the table (expired ones not yet swept included).
    pub fn connections(&self) -> usize {
        self.table.len()
    }

    /// The counters, with the connections in the table now.
    pub fn stats(&self) -> FirewallStats {
        FirewallStats {
            connections: self.table.len() as u64,
            ..self.stats
        }
    }

    /// Packets that matched rule `i` (0-based, in config order).
    pub fn rule_packets(&self, i: usize) -> u64 {
        self.rules.packets(i)
    }

    /// Applies a changed configuration in place (see the module docs):
    /// the connection table stays, and the connections the new rules would
    /// not accept if they started now are removed (counted in `revoked`).
    /// An invalid configuration is an error and changes nothing.
    pub fn reconfigure(&mut self, cfg: &FirewallConfig) -> Result<(), FunctionError> {
        let c = cfg.compile()?;
        let mut rules = c.rules;
        rules.keep_counts(&self.rules);
        let default_policy = cfg.default_policy;
        let revoked = self
            .table
            .reconfigure(c.timeouts, c.max_connections, |first, side| {
                match rules.decide_new(first, side) {
                    Some(action) => action == Action::Accept,
                    None => default_policy == Action::Accept,
                }
            });
        self.stats.revoked += revoked;
        self.rules = rules;
        self.default_policy = default_policy;
        self.log.per_second = cfg.log_drops_per_second;
        log::info!(
            "firewall: reconfigured, {} connections kept, {revoked} revoked",
            self.table.len()
        );
        Ok(())
    }

    /// Decides on one frame that came from `side` (the device's own stack
    /// counts as the local side).
    fn handle(&mut self, now: Instant, side: Role, frame: &Frame<'_>) -> Verdict {
        let ip = match frame.view() {
            FrameView::Ip(ip) => ip,
            FrameView::Arp { .. } => return self.accept(),
            FrameView::Other { .. } => {
                return match self.default_policy {
                    Action::Accept => self.accept(),
                    Action::Drop => self.deny(now, "non-IP", side, None),
                };
            }
            FrameView::Malformed => return self.malformed(now, side),
        };
        if ip.is_control() {
            return self.accept();
        }
        if ip.fragment == Fragment::Later {
            return self.fragment(now, side, ip);
        }
        // A truncated transport header (the only `None`) is neither control
        // traffic nor a later fragment.
        let Some(kind) = Kind::of(ip) else {
            return self.malformed(now, side);
        };
        let key = match kind {
            Kind::IcmpError => match quoted_key(ip, frame.bytes()) {
                Some(key) => key,
                None => return self.malformed(now, side),
            },
            _ => ip.flow_key().canonical(),
        };
        self.table.sweep_if_due(now, &mut self.stats);
        match self.table.track(now, kind, key, &mut self.stats) {
            Class::Established => match self.rules.for_established(ip, side) {
                Some(Action::Drop) => self.deny(now, "rule", side, Some(ip)),
                _ => self.accept(),
            },
            Class::New => match self.rules.for_new(ip, side) {
                Some(Action::Drop) => self.deny(now, "rule", side, Some(ip)),
                None if self.default_policy == Action::Drop => {
                    self.deny(now, "rule", side, Some(ip))
                }
                _ if self.table.create(now, kind, key, side, &mut self.stats) => self.accept(),
                _ => self.deny(now, "table full", side, Some(ip)),
            },
            Class::Invalid => {
                self.stats.invalid += 1;
                if self.default_policy == Action::Drop {
                    return self.deny(now, "invalid", side, Some(ip));
                }
                match self.rules.for_invalid(ip, side) {
                    Some(Action::Drop) => self.deny(now, "invalid", side, Some(ip)),
                    _ => self.accept(),
                }
            }
        }
    }

    /// A non-first fragment: only a `fragments = true` rule lets it pass.
    fn fragment(&mut self, now: Instant, side: Role, ip: &IpView) -> Verdict {
        match self.rules.for_fragment(ip, side) {
            Some(Action::Accept) => self.accept(),
            _ => {
                self.stats.fragments_dropped += 1;
                self.deny(now, "fragment", side, Some(ip))
            }
        }
    }

    fn malformed(&mut self, now: Instant, side: Role) -> Verdict {
        self.stats.malformed += 1;
        self.deny(now, "malformed", side, None)
    }

    fn accept(&mut self) -> Verdict {
        self.stats.accepted += 1;
        Verdict::Pass
    }

    fn deny(&mut self, now: Instant, why: &str, side: Role, ip: Option<&IpView>) -> Verdict {
        self.stats.dropped += 1;
        if !self.log.admit(now) {
            self.stats.logs_suppressed += 1;
            return Verdict::Drop;
        }
        let dir = match side {
            Role::Global => "in",
            Role::Local => "out",
        };
        match ip {
            Some(ip) => {
                let k = ip.flow_key();
                log::info!(
                    "firewall: dropped {why} {dir} proto {} {}:{} -> {}:{}",
                    ip.proto,
                    ip.src_addr(),
                    k.sport,
                    ip.dst_addr(),
                    k.dport
                );
            }
            None => log::info!("firewall: dropped {why} {dir} frame"),
        }
        Verdict::Drop
    }
}

/// Rate limit of the drop log: at most `per_second` lines a second.
struct DropLog {
    per_second: u32,
    window: Instant,
    logged: u32,
}

impl DropLog {
    /// May one more drop be logged now?
    fn admit(&mut self, now: Instant) -> bool {
        if now >= self.window + Duration::from_secs(1) {
            self.window = now;
            self.logged = 0;
        }
        if self.logged >= self.per_second {
            return false;
        }
        self.logged += 1;
        true
    }
}

impl Function for Firewall {
    fn kind(&self) -> FunctionKind {
        FunctionKind::packet("firewall")
    }

    fn on_ingress(&mut self, now: Instant, from: Role, frame: &mut Frame<'_>) -> Verdict {
        self.handle(now, from, frame)
    }

    fn on_egress(&mut self, now: Instant, frame: &mut Frame<'_>) -> Verdict {
        self.handle(now, Role::Local, frame)
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        self.rules.counters(visit);
        self.stats().visit(visit);
    }

    fn reconfigure(&mut self, cfg: &dyn crate::stack::FunctionSpec) -> Result<bool, FunctionError> {
        reconfigure_in_place(cfg, |c| Firewall::reconfigure(self, c))
    }
}
