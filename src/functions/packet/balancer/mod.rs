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
//! **Choosing a backend** ([`maglev`]). Each service keeps a Maglev lookup
//! table of `table_size` (a prime M) entries over its healthy backends;
//! each gets ⌊M/N⌋ or ⌈M/N⌉ entries and a change of the set moves few
//! entries. A new flow's 5-tuple hash indexes the table. The hashes are
//! foldhash with fixed seeds, so every balancer builds the same table.
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
//! **Rewrite.** Addresses and ports are changed in place at the offsets
//! the frame's parsed view gives (behind IPv6 extension headers too), with
//! incremental checksum updates (RFC 1624) of the IPv4 header checksum and
//! the TCP/UDP checksum; an IPv4 UDP checksum of zero (none) stays zero.
//! IPv4 and IPv6 services work alike.
//!
//! **Health checks** ([`crate::functions::health`]). For a service with
//! `check = "tcp"` the device opens a TCP connection from its own stack to
//! every backend each `interval`; an attempt that is refused (RST) or not
//! established within `timeout` fails. `fall` consecutive failures mark a
//! backend down, `rise` consecutive successes up again; the table is
//! rebuilt and the transition logged. Backends start up. The checks'
//! replies are addressed to the device itself and match no flow, so they
//! are never rewritten.
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
//! // Each backend owns a third of the lookup table.
//! let share = lb.table_share(0);
//! assert!(share.iter().all(|&n| (21_845..=21_846).contains(&n)));
//! ```

mod config;
mod flows;
pub mod maglev;
mod nat;
mod probe;
mod service;
#[cfg(test)]
mod tests;

use smoltcp::iface::SocketHandle;
use smoltcp::time::{Duration, Instant};

pub use config::{BalancerConfig, Check, ServiceConfig};
use flows::{Flow, FlowTable, Timeouts};
use nat::{Nat, Offsets, Side};
use probe::CHECK_PORTS;
use service::Service;

use super::{Frame, Function, FunctionError, FunctionKind, Role, SocketContext, Verdict};
use crate::functions::common::{counter_names, counters, invalid, reconfigure_in_place};
use crate::functions::health::Health;
use crate::wire::{FlowKey, NoIp, TcpFlags, proto};

/// How often expired flows are swept out (from `poll`), and how often at
/// most when the table is full (a flood must not make every packet sweep).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

counters! {
    /// Global counters of the balancer.
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    pub struct BalancerStats {
        /// Flows entered in the table.
        pub flows_created: u64,
        /// Flows removed because their idle timeout passed.
        pub expired: u64,
        /// Packets to a VIP whose service had no healthy backend (dropped).
        pub no_backend: u64,
        /// New flows refused because the table held `max_flows` (dropped).
        pub table_full: u64,
        /// Times a backend went up or down.
        pub health_changes: u64,
        /// Malformed or truncated IP packets (dropped).
        pub malformed: u64,
        /// Fragments to a VIP, which cannot be balanced (dropped).
        pub fragments_dropped: u64,
        /// A new flow whose reply direction would be indistinguishable from an
        /// existing flow's (same client endpoint, same backend, two VIPs).
        pub conflicts: u64,
        /// Health checks a backend answered.
        pub checks_ok: u64,
        /// Health checks refused or timed out.
        pub checks_failed: u64,
    }
}

/// The counters of one backend address, summed over the services that
/// share it.
#[derive(Debug)]
struct BackendCounters {
    /// `backend.ADDR.` + `flows`, `packets`, `up`.
    names: [String; 3],
    /// `(service, backend)` indices.
    members: Vec<(usize, usize)>,
}

fn backend_counters(services: &[Service]) -> Vec<BackendCounters> {
    let mut out: Vec<(service::Endpoint, BackendCounters)> = Vec::new();
    for (si, s) in services.iter().enumerate() {
        for (bi, b) in s.backends.iter().enumerate() {
            match out.iter_mut().find(|e| e.0 == b.ep) {
                Some(e) => e.1.members.push((si, bi)),
                None => out.push((
                    b.ep,
                    BackendCounters {
                        names: counter_names(
                            "backend",
                            &b.ep.to_string(),
                            ["flows", "packets", "up"],
                        ),
                        members: vec![(si, bi)],
                    },
                )),
            }
        }
    }
    out.into_iter().map(|e| e.1).collect()
}

/// The load-balancer function.
pub struct Balancer {
    services: Vec<Service>,
    timeouts: Timeouts,
    max_flows: usize,
    flows: FlowTable,
    next_sweep: Instant,
    next_full_sweep: Instant,
    next_port: u16,
    /// Health-check sockets of backends that were removed, closed at the
    /// next `poll`.
    retired: Vec<SocketHandle>,
    backend_counters: Vec<BackendCounters>,
    stats: BalancerStats,
}

impl Balancer {
    /// The function for `cfg`; errors name an invalid service or backend.
    pub fn new(cfg: BalancerConfig) -> Result<Balancer, FunctionError> {
        let c = cfg.compile().map_err(invalid("balancer"))?;
        Ok(Balancer {
            backend_counters: backend_counters(&c.services),
            services: c.services,
            timeouts: c.timeouts,
            max_flows: c.max_flows,
            flows: FlowTable::default(),
            next_sweep: Instant::ZERO,
            next_full_sweep: Instant::ZERO,
            next_port: CHECK_PORTS.0,
            retired: Vec::new(),
            stats: BalancerStats::default(),
        })
    }

    /// The global counters so far.
    pub fn stats(&self) -> &BalancerStats {
        &self.stats
    }

    /// Flows in the table (expired ones not yet swept included).
    pub fn flows_active(&self) -> usize {
        self.flows.len()
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
        if b.health.set(up).is_some() {
            self.backend_changed(service, backend, up);
        }
    }

    /// Backend `backend` of service `service` went up or down.
    fn backend_changed(&mut self, service: usize, backend: usize, up: bool) {
        let svc = &mut self.services[service];
        log::info!(
            "balancer: service {}: backend {} is {}",
            svc.name,
            svc.backends[backend].ep,
            if up { "up" } else { "down" }
        );
        self.stats.health_changes += 1;
        svc.rebuild();
        if !up {
            self.flows.remove_if(|f| {
                usize::from(f.service) == service && usize::from(f.backend) == backend
            });
        }
    }

    /// Drops expired flows.
    pub fn sweep(&mut self, now: Instant) {
        self.stats.expired += self.flows.remove_if(|f| f.expires <= now) as u64;
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
    fn handle(&mut self, now: Instant, frame: &mut Frame<'_>) -> Verdict {
        // What the rest needs of the view, read field by field (copying
        // the whole view costs more than the rest of the decision).
        let (key, flags, fragment, at) = match frame.view().well_formed_ip() {
            Ok(ip) if ip.proto != proto::TCP && ip.proto != proto::UDP => return Verdict::Pass,
            Ok(ip) => (
                ip.flow_key(),
                ip.tcp_flags().unwrap_or(TcpFlags::empty()),
                ip.is_fragment(),
                Offsets::of(ip),
            ),
            Err(NoIp::Malformed) => {
                self.stats.malformed += 1;
                return Verdict::Drop;
            }
            Err(NoIp::NotIp) => return Verdict::Pass,
        };
        // A fragment (a later one has no ports at all) cannot be balanced.
        let Some(at) = at.filter(|_| !fragment) else {
            if self.service_of(&key, false).is_some() {
                self.stats.fragments_dropped += 1;
                return Verdict::Drop;
            }
            return Verdict::Pass;
        };
        let syn = flags.contains(TcpFlags::SYN);
        let fin_rst = flags.intersects(TcpFlags::FIN | TcpFlags::RST);
        // To a VIP (checked first: a reply is never addressed to one).
        let Some(s) = self.service_of(&key, true) else {
            return self.handle_reply(now, frame.bytes_mut(), &at, &key, fin_rst);
        };
        let mut slot = self.flows.by_fwd(&key);
        if let Some(i) = slot {
            let f = self.flows.get(i);
            // Expired, or a new connection reusing a closing one's ports.
            let expired = f.expires <= now;
            if expired || (f.closing && syn && !fin_rst) {
                self.stats.expired += u64::from(expired);
                self.flows.remove(i);
                slot = None;
            }
        }
        let slot = match slot {
            Some(i) => i,
            None if fin_rst && !syn => {
                // A stray FIN or RST starts nothing: send it where the
                // table points, without an entry.
                let svc = &mut self.services[s];
                let Some(b) = svc.lookup(&key) else {
                    svc.no_backend += 1;
                    self.stats.no_backend += 1;
                    return Verdict::Drop;
                };
                let to = svc.backends[usize::from(b)].ep;
                Nat::new(Side::Dst, svc.vip, to).apply(frame.bytes_mut(), &at);
                return Verdict::Modified;
            }
            None => match self.create(now, s, &key) {
                Some(i) => i,
                None => return Verdict::Drop,
            },
        };
        let f = self.flows.get_mut(slot);
        f.touch(now, fin_rst, &self.timeouts);
        f.dnat.apply(frame.bytes_mut(), &at);
        let svc = &mut self.services[s];
        svc.packets += 1;
        svc.backends[usize::from(f.backend)].packets += 1;
        Verdict::Modified
    }

    /// A packet to no VIP: the reply of a tracked flow is rewritten back to
    /// come from the VIP; anything else passes.
    fn handle_reply(
        &mut self,
        now: Instant,
        frame: &mut [u8],
        at: &Offsets,
        key: &FlowKey,
        fin_rst: bool,
    ) -> Verdict {
        let Some(slot) = self.flows.by_rev(key) else {
            return Verdict::Pass;
        };
        let f = self.flows.get_mut(slot);
        if f.expires <= now {
            self.flows.remove(slot);
            self.stats.expired += 1;
            return Verdict::Pass;
        }
        f.touch(now, fin_rst, &self.timeouts);
        f.snat.apply(frame, at);
        let svc = &mut self.services[usize::from(f.service)];
        svc.packets += 1;
        svc.backends[usize::from(f.backend)].packets += 1;
        Verdict::Modified
    }

    /// Enters a new flow of service `s`; `None` (counted) without a healthy
    /// backend or room.
    fn create(&mut self, now: Instant, s: usize, key: &FlowKey) -> Option<u32> {
        let svc = &mut self.services[s];
        let Some(b) = svc.lookup(key) else {
            svc.no_backend += 1;
            self.stats.no_backend += 1;
            return None;
        };
        if self.flows.len() >= self.max_flows && now >= self.next_full_sweep {
            self.next_full_sweep = now + SWEEP_EVERY;
            self.sweep(now);
        }
        if self.flows.len() >= self.max_flows {
            self.stats.table_full += 1;
            return None;
        }
        let svc = &self.services[s];
        let (vip, ep) = (svc.vip, svc.backends[usize::from(b)].ep);
        let rev = FlowKey {
            src: ep.addr,
            dst: key.src,
            sport: ep.port,
            dport: key.sport,
            ..*key
        };
        if let Some(other) = self.flows.by_rev(&rev) {
            if self.flows.get(other).expires > now {
                self.stats.conflicts += 1;
                return None;
            }
            self.flows.remove(other);
            self.stats.expired += 1;
        }
        let dnat = Nat::new(Side::Dst, vip, ep);
        let snat = Nat::new(Side::Src, ep, vip);
        let slot = self
            .flows
            .insert(Flow::new(*key, rev, dnat, snat, s as u16, b));
        let svc = &mut self.services[s];
        svc.flows += 1;
        svc.backends[usize::from(b)].flows += 1;
        self.stats.flows_created += 1;
        Some(slot)
    }

    /// Applies a new configuration, keeping flows, health state, counters
    /// and check sockets of services and backends that remain. An invalid
    /// configuration changes nothing.
    fn apply(&mut self, cfg: &BalancerConfig) -> Result<(), String> {
        let mut new = cfg.compile()?;
        let services = &mut new.services;
        // Old (service, backend) index → new one.
        let mut remap: Vec<Vec<Option<(u16, u16)>>> = Vec::new();
        for old in &mut self.services {
            let new_s = services
                .iter()
                .position(|n| n.vip == old.vip && n.proto == old.proto);
            let mut row = Vec::new();
            for ob in &mut old.backends {
                let hit = new_s.and_then(|ns| {
                    let nb = services[ns].backends.iter().position(|nb| nb.ep == ob.ep)?;
                    Some((ns, nb))
                });
                let Some((ns, nb)) = hit else {
                    self.retired.extend(ob.socket.take());
                    row.push(None);
                    continue;
                };
                let checked = services[ns].check.is_some();
                let n = &mut services[ns].backends[nb];
                (n.flows, n.packets) = (ob.flows, ob.packets);
                if checked {
                    n.health = ob.health;
                    n.socket = ob.socket.take();
                } else {
                    n.health = Health::new(true);
                    self.retired.extend(ob.socket.take());
                }
                row.push(Some((ns as u16, nb as u16)));
            }
            if let Some(ns) = new_s {
                let n = &mut services[ns];
                (n.flows, n.packets, n.no_backend) = (old.flows, old.packets, old.no_backend);
            }
            remap.push(row);
        }
        for s in services.iter_mut() {
            s.rebuild();
        }
        self.backend_counters = backend_counters(services);
        self.services = new.services;
        self.timeouts = new.timeouts;
        self.max_flows = new.max_flows;
        let services = &self.services;
        self.flows.retain(|f| {
            let to = remap
                .get(usize::from(f.service))
                .and_then(|r| r.get(usize::from(f.backend)))
                .copied()
                .flatten();
            match to {
                Some((s, b))
                    if services[usize::from(s)].backends[usize::from(b)]
                        .health
                        .is_up() =>
                {
                    (f.service, f.backend) = (s, b);
                    true
                }
                _ => false,
            }
        });
        Ok(())
    }
}

impl Function for Balancer {
    fn kind(&self) -> FunctionKind {
        FunctionKind::packet("balancer")
    }

    fn on_ingress(&mut self, now: Instant, _from: Role, frame: &mut Frame<'_>) -> Verdict {
        self.handle(now, frame)
    }

    fn detach(&mut self, cx: &mut SocketContext<'_>) {
        for svc in &mut self.services {
            for b in &mut svc.backends {
                if let Some(h) = b.socket.take() {
                    cx.sockets.remove(h);
                }
                // Checks start over on the next device.
                b.health = Health::new(b.health.is_up());
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
        Some(
            self.next_check()
                .map_or(self.next_sweep, |c| c.min(self.next_sweep)),
        )
    }

    fn reconfigure(&mut self, cfg: &dyn crate::stack::FunctionSpec) -> Result<bool, FunctionError> {
        reconfigure_in_place(cfg, |c| {
            self.apply(c).map_err(invalid("balancer"))?;
            log::info!("balancer: reconfigured, {} flows kept", self.flows.len());
            Ok(())
        })
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        visit("flows_active", self.flows.len() as u64);
        self.stats.visit(visit);
        for s in &self.services {
            let [flows, packets, no_backend, up] = &s.counters;
            visit(flows, s.flows);
            visit(packets, s.packets);
            visit(no_backend, s.no_backend);
            visit(up, s.backends_up() as u64);
        }
        for c in &self.backend_counters {
            let (mut flows, mut packets, mut up) = (0, 0, true);
            for &(s, b) in &c.members {
                let b = &self.services[s].backends[b];
                flows += b.flows;
                packets += b.packets;
                up &= b.health.is_up();
            }
            let [n_flows, n_packets, n_up] = &c.names;
            visit(n_flows, flows);
            visit(n_packets, packets);
            visit(n_up, u64::from(up));
        }
    }
}
