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
//! - **Health** ([`crate::functions::health`], keepalived's `fall`/`rise`):
//!   a probe goes out every `interval` (the next one only once the previous
//!   was answered or given up on) and waits `timeout` for its reply. An up
//!   next hop goes down after `fall` consecutive misses; a down one comes
//!   up after `rise` consecutive answers. A device next hop whose device
//!   vanishes from the network is down at once; one that appears again must
//!   earn `rise` answers first. Next hops start up, so traffic flows at
//!   once.
//! - **Rules** (`[[rule]]`) match transit packets by source and destination
//!   prefix, IP protocol, ports ([`crate::functions::matching::Matcher`])
//!   and DSCP; the first match wins. Its `via` is an ordered preference
//!   list: the packet goes to the first next hop that is up and has an
//!   address of the packet's family (**failover**). When a preferred next
//!   hop comes back up, traffic returns to it (**failback**), unless
//!   `failback = false`, which keeps the current one while it stays up.
//!   With none up, `when_down = "table"` lets the routing table decide (the
//!   default) and `"drop"` drops.
//! - Packets matching no rule, packets addressed to the device itself
//!   (health-check replies among them), broadcast, multicast, link-local,
//!   non-IP frames, ICMPv6 neighbour discovery and packets whose TTL runs
//!   out here pass to the normal path. Malformed or truncated packets pass
//!   too (the stack and the routing table check them again) and are
//!   counted.
//!
//! Mechanics: `on_ingress` reads the frame's parsed view and returns
//! [`Verdict::Via`] with the chosen next hop's address (or
//! [`Verdict::Redirect`] for a network); the device sets the link-layer
//! destination and forwards. The choice per rule and family is cached and
//! recomputed only when a next hop changes state, so a packet costs a
//! first-match scan. A changed config applies in place
//! ([`Function::reconfigure`]): next hops whose name and target remain
//! keep their health, probe state and counters, rules keep their counters
//! and, with failback off, their current next hop.
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

mod config;
mod probe;
mod rules;
#[cfg(test)]
mod tests;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::icmp;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpCidr};

pub use config::{Addresses, Check, NextHopConfig, RerouteConfig, RuleConfig, WhenDown};
use probe::{Hop, PROBE_IDENT, Target, echo_reply_seq, echo_request};
use rules::Rule;

use super::{Frame, Function, FunctionError, FunctionKind, Role, SocketContext, Verdict};
use crate::functions::common::{counters, invalid, reconfigure_in_place};
use crate::wire::{FrameView, IpView, NoIp};

counters! {
    /// Counters not kept per rule or next hop.
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    pub struct RerouteStats {
        /// Times a rule's next hop moved away from its preference (or to none).
        pub failovers: u64,
        /// Times a rule's next hop moved back towards its preference.
        pub failbacks: u64,
        /// Transit packets no rule matched (passed to the routing table).
        pub unmatched: u64,
        /// Packets for the device itself, broadcast, multicast or link-local (passed).
        pub to_device: u64,
        /// Packets a rule matched while none of its next hops was up.
        pub no_next_hop: u64,
        /// Malformed or truncated IP packets (passed; the stack checks them again).
        pub malformed: u64,
    }
}

/// The re-routing function.
pub struct Reroute {
    failback: bool,
    when_down: WhenDown,
    hops: Vec<Hop>,
    rules: Vec<Rule>,
    /// The device's own addresses (IPv4 ones and their subnet broadcasts in
    /// the low 32 bits), learnt in `attach`.
    own: Vec<(bool, u128)>,
    socket: Option<SocketHandle>,
    /// Sequence number of the last probe sent.
    seq: u16,
    /// Earliest `Hop::due`: `poll` does nothing before it.
    next_due: Option<Instant>,
    /// A next hop changed state or address: recompute the rules' choices.
    dirty: bool,
    scratch: Vec<u8>,
    stats: RerouteStats,
}

impl Reroute {
    /// The function for `cfg`; errors name an invalid next hop or rule.
    pub fn new(cfg: RerouteConfig) -> Result<Reroute, FunctionError> {
        let (hops, rules) = cfg.compile().map_err(invalid("reroute"))?;
        let mut r = Reroute {
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

    /// The counters not kept per rule or next hop.
    pub fn stats(&self) -> &RerouteStats {
        &self.stats
    }

    /// Is next hop `name` up? (`None`: no such next hop.)
    pub fn is_up(&self, name: &str) -> Option<bool> {
        self.hops
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.health.is_up())
    }

    /// The next hop rule `name` now sends IPv4 (or IPv6) packets to.
    pub fn active(&self, rule: &str, v6: bool) -> Option<&str> {
        let r = self.rules.iter().find(|r| r.name == rule)?;
        r.active[usize::from(v6)].map(|(h, _)| self.hops[h].name.as_str())
    }

    /// Decides on one frame from an adapter.
    fn decide(&mut self, view: &FrameView) -> Verdict {
        let ip = match view.well_formed_ip() {
            Ok(ip) => ip,
            Err(NoIp::Malformed) => {
                self.stats.malformed += 1;
                return Verdict::Pass;
            }
            Err(NoIp::NotIp) => return Verdict::Pass,
        };
        if self.is_local(ip) {
            self.stats.to_device += 1;
            return Verdict::Pass;
        }
        if ip.is_control() || ip.hop_limit <= 1 {
            // Neighbour discovery stays on its link; an expiring packet is
            // the routing table's to count and report.
            return Verdict::Pass;
        }
        let Some(rule) = self.rules.iter_mut().find(|r| r.matches(ip)) else {
            self.stats.unmatched += 1;
            return Verdict::Pass;
        };
        rule.packets += 1;
        match rule.active[usize::from(ip.v6)] {
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
        }
    }

    /// Addressed to the device itself, or not routable (broadcast,
    /// multicast, IPv6 link-local).
    fn is_local(&self, ip: &IpView) -> bool {
        let special = if ip.v6 {
            ip.dst >> 120 == 0xff || ip.dst >> 118 == 0xfe80 >> 6
        } else {
            ip.dst == u128::from(u32::MAX) || ip.dst >> 28 == 0xe
        };
        special || self.own.iter().any(|&(v6, a)| v6 == ip.v6 && a == ip.dst)
    }

    /// Learns the device's addresses.
    fn set_own_addresses(&mut self, cidrs: &[IpCidr]) {
        self.own.clear();
        for c in cidrs {
            match c {
                IpCidr::Ipv4(c) => {
                    self.own.push((false, c.address().to_bits().into()));
                    if let Some(b) = c.broadcast() {
                        self.own.push((false, b.to_bits().into()));
                    }
                }
                IpCidr::Ipv6(c) => self.own.push((true, c.address().to_bits())),
            }
        }
    }

    /// Recomputes each rule's next hop per family; with `count`, changes
    /// are counted as failovers (away from the preference) or failbacks
    /// (towards it) and logged.
    fn update_routes(&mut self, count: bool) {
        self.dirty = false;
        for r in &mut self.rules {
            let change = r.choose(&self.hops, self.failback, count);
            if count {
                self.stats.failovers += u64::from(change.failover);
                self.stats.failbacks += u64::from(change.failback);
            }
        }
        self.refresh_due();
    }

    fn refresh_due(&mut self) {
        self.next_due = self.hops.iter().filter_map(Hop::due).min();
    }

    /// Takes over the state of `old` that still applies: next hops whose
    /// name and target (address, device or network) are unchanged keep
    /// their health and counters, rules keep their counters and (with
    /// failback off) their current next hop by name, and the health-check
    /// socket stays open.
    fn take_state(&mut self, old: &mut Reroute) {
        for h in &mut self.hops {
            let Some(o) = old.hops.iter().find(|o| o.name == h.name) else {
                continue;
            };
            let same_target = match (&h.target, &o.target) {
                (Target::Fixed, Target::Fixed) => (h.v4, h.v6) == (o.v4, o.v6),
                (a, b) => a == b,
            };
            if !same_target {
                continue;
            }
            (h.v4, h.v6, h.resolved_once) = (o.v4, o.v6, o.resolved_once);
            (h.next_resolve, h.health, h.seq) = (o.next_resolve, o.health, o.seq);
            (h.packets, h.probes_sent, h.probes_lost) = (o.packets, o.probes_sent, o.probes_lost);
            if h.check == Check::None && h.probe_address().is_some() {
                h.health.set(true);
            }
        }
        for r in &mut self.rules {
            if let Some(o) = old.rules.iter().find(|o| o.name == r.name) {
                r.packets = o.packets;
                r.keep_choice(o, &old.hops, &self.hops);
            }
        }
        self.own = std::mem::take(&mut old.own);
        self.socket = old.socket.take();
        self.seq = old.seq;
        self.stats = std::mem::take(&mut old.stats);
        self.update_routes(false);
    }
}

impl Function for Reroute {
    fn kind(&self) -> FunctionKind {
        FunctionKind::packet("reroute")
    }

    fn on_ingress(&mut self, _now: Instant, _from: Role, frame: &mut Frame<'_>) -> Verdict {
        self.decide(frame.view())
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
                    self.handle_reply(now, from, seq);
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
        for r in &self.rules {
            visit(&r.counter, r.packets);
        }
        for h in &self.hops {
            let [packets, up, sent, lost] = &h.counters;
            visit(packets, h.packets);
            visit(up, u64::from(h.health.is_up()));
            visit(sent, h.probes_sent);
            visit(lost, h.probes_lost);
        }
        self.stats.visit(visit);
    }

    /// Takes a changed configuration in place (see `take_state`); an
    /// invalid one changes nothing.
    fn reconfigure(&mut self, cfg: &dyn crate::stack::FunctionSpec) -> Result<bool, FunctionError> {
        reconfigure_in_place(cfg, |cfg: &RerouteConfig| {
            let mut new = Reroute::new(cfg.clone())?;
            new.take_state(self);
            log::info!(
                "reroute: reconfigured ({} next hops, {} rules)",
                new.hops.len(),
                new.rules.len()
            );
            *self = new;
            Ok(())
        })
    }
}
