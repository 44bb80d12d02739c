//! `kind = "manager"`: network management. The manager device polls every
//! device's management agent over the networks (`agents`), serves
//! Prometheus `/metrics` ([`metrics`]) and a JSON API ([`api`]) over HTTP on
//! its own stack (`server`), probes devices and services actively
//! ([`probes`]), and runs the policy engine ([`policy`]) that changes
//! devices' functions when its rules say so.
//!
//! ```toml
//! [function]
//! kind = "manager"
//! listen = 9100                  # HTTP port (default 9100)
//! poll_interval = "1s"           # how often every agent is polled
//! policy = "policy.toml"         # optional; reloaded when it changes
//! dry_run = false                # log policy decisions without acting
//! [[function.probes]]
//! name = "web1"
//! kind = "http"                  # icmp, tcp, http, memcached
//! target = "10.85.0.11:80"
//! ```
//!
//! The devices are those on the manager's networks (their directory lists
//! them), or only those named in `devices`. In a topology the manager is
//! given the topology's secret and agent port; alone, set `secret_file`
//! and `agent_port`. Mutating API requests need `Authorization: Bearer
//! TOKEN`, the token derived from the secret ([`api::api_token`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::IpAddress;

use crate::functions::common::{invalid, reconfigure_in_place};
use crate::functions::matching::ConfigDuration;
use crate::functions::socket::{LocalPorts, Retired};
use crate::functions::{Function, FunctionError, FunctionKind, SocketContext};
use crate::stack::FunctionSpec;
use crate::wire::mgmt::{Key, Op, Status};
use crate::wire::mgmt_payload::{self as body, Identity};

mod agents;
pub mod api;
pub mod metrics;
pub mod policy;
pub mod probes;
mod server;
mod state;

use agents::{AgentLink, Answer, Purpose};
use policy::{Action, Engine, Policy};
use probes::{Probe, ProbeConfig};
use server::Server;

const KIND: &str = "manager";

/// The manager's configuration (`kind = "manager"`); a field left out
/// takes its value from [`ManagerConfig::default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// The HTTP port of `/metrics` and the API (default 9100).
    pub listen: u16,
    /// How often every agent is polled (default 1 s).
    pub poll_interval: ConfigDuration,
    /// An agent that does not answer this long is down (default 2 s).
    pub poll_timeout: ConfigDuration,
    /// Manage only these devices (default: every device on the manager's
    /// networks).
    pub devices: Vec<String>,
    /// Active probes.
    pub probes: Vec<ProbeConfig>,
    /// The policy file (TOML), reloaded when it changes.
    pub policy: Option<PathBuf>,
    /// Log policy decisions without acting on them.
    pub dry_run: bool,
    /// The secret shared with the agents (set by the topology runner).
    pub secret_file: Option<PathBuf>,
    /// The agents' port (set by the topology runner; default 9101).
    pub agent_port: Option<u16>,
    /// HTTP connections served at once (default 64).
    pub max_clients: usize,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            listen: 9100,
            poll_interval: ConfigDuration::from_secs(1),
            poll_timeout: ConfigDuration::from_secs(2),
            devices: Vec::new(),
            probes: Vec::new(),
            policy: None,
            dry_run: false,
            secret_file: None,
            agent_port: None,
            max_clients: 64,
        }
    }
}

crate::functions::common::counters! {
    /// The manager's own counters.
    #[derive(Clone, Copy, Default, Debug, Serialize)]
    pub struct ManagerStats {
        /// Poll rounds started.
        pub polls: u64,
        /// Agent requests that failed (no answer, refused, bad signature).
        pub agent_errors: u64,
        /// Agent requests answered.
        pub agent_answers: u64,
        /// HTTP requests served.
        pub http_requests: u64,
        /// HTTP requests refused for a missing or wrong token.
        pub http_unauthorized: u64,
        /// HTTP connections accepted.
        pub http_connections: u64,
        /// Policy file reloads that took effect.
        pub policy_reloads: u64,
        /// Policy file reloads refused (the old policy stays).
        pub policy_reload_errors: u64,
    }
}

/// One managed device as the manager knows it.
pub(crate) struct Managed {
    pub(crate) link: AgentLink,
    /// Last poll answered; false until the first.
    pub(crate) up: bool,
    pub(crate) identity: Option<Identity>,
    pub(crate) counters: BTreeMap<String, u64>,
    /// The function's configuration (TOML), as last fetched.
    pub(crate) config: Option<String>,
    /// Round trip of the last poll.
    pub(crate) rtt: Option<Duration>,
    /// The device's uptime at the last poll.
    pub(crate) uptime_ms: Option<u64>,
    pub(crate) error: Option<String>,
    /// Whether a network directory still lists the device.
    pub(crate) listed: bool,
    pub(crate) polls: u64,
    pub(crate) polls_failed: u64,
    /// When identity and configuration were last fetched.
    pub(crate) refreshed: Option<Instant>,
}

/// The manager function.
pub struct Manager {
    cfg: ManagerConfig,
    key: Key,
    client: u32,
    ports: LocalPorts,
    /// Sockets closing (agent sessions, probe connections).
    retired: Retired,
    server: Server,
    pub(crate) devices: BTreeMap<String, Managed>,
    next_poll: Instant,
    probes: Vec<Probe>,
    engine: Option<Engine>,
    policy_error: Option<String>,
    policy_mtime: Option<std::time::SystemTime>,
    /// Patches waiting for the device's configuration, by decision.
    patches: HashMap<u64, Action>,
    stats: ManagerStats,
    /// When the poll round whose answers the policy waits for began.
    round_started: Option<Instant>,
    /// Probes replaced by a reconfiguration, closed at the next poll.
    replaced: Vec<Probe>,
    /// Drop every agent session at the next poll (the secret changed).
    relink: bool,
}

fn load_policy(
    cfg: &ManagerConfig,
) -> Result<Option<(Policy, Option<std::time::SystemTime>)>, String> {
    let Some(path) = &cfg.policy else {
        return Ok(None);
    };
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Policy::load(path)
        .map(|p| Some((p, mtime)))
        .map_err(|e| e.to_string())
}

impl Manager {
    /// A manager from its configuration: the secret must be readable and
    /// the policy file (if any) valid.
    pub fn new(cfg: ManagerConfig) -> Result<Manager, FunctionError> {
        let bad = invalid(KIND);
        // Without a secret file (a topology gives its manager the
        // topology's when it starts), the manager can serve but not poll.
        let key = match &cfg.secret_file {
            Some(f) => Key::from_file(f).map_err(|e| bad(e.to_string()))?,
            None => Key::random().map_err(|e| bad(e.to_string()))?,
        };
        if cfg.max_clients == 0 || cfg.max_clients > 4096 {
            return Err(bad("max_clients must be 1..=4096".into()));
        }
        if cfg.poll_interval.0 < Duration::from_millis(10) {
            return Err(bad("poll_interval must be at least 10ms".into()));
        }
        let mut probes = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, p) in cfg.probes.iter().enumerate() {
            if !names.insert(p.name.clone()) {
                return Err(bad(format!(
                    "probes[{i}]: two probes are named {:?}",
                    p.name
                )));
            }
            let probe = Probe::new(p.clone(), 0x5300 + i as u16)
                .map_err(|e| bad(format!("probes[{i}] ({}): {e}", p.name)))?;
            probes.push(probe);
        }
        let (engine, policy_mtime) = match load_policy(&cfg).map_err(bad)? {
            Some((p, mtime)) => {
                let mut e = Engine::new(p);
                if cfg.dry_run {
                    e.set_dry_run(true);
                }
                (Some(e), mtime)
            }
            None => (None, None),
        };
        let mut seed = [0u8; 4];
        let _ = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty());
        Ok(Manager {
            server: Server::new(cfg.listen, cfg.max_clients, &key),
            cfg,
            key,
            client: u32::from_ne_bytes(seed),
            ports: LocalPorts::default(),
            retired: Retired::default(),
            devices: BTreeMap::new(),
            next_poll: Instant::ZERO,
            probes,
            engine,
            policy_error: None,
            policy_mtime,
            patches: HashMap::new(),
            stats: ManagerStats::default(),
            replaced: Vec::new(),
            round_started: None,
            relink: false,
        })
    }

    fn agent_port(&self) -> u16 {
        self.cfg
            .agent_port
            .unwrap_or(crate::wire::mgmt_payload::DEFAULT_AGENT_PORT)
    }

    /// Finds the devices on the networks (or the configured ones).
    fn discover(&mut self, cx: &mut SocketContext<'_>) {
        let mine: Vec<IpAddress> = cx.iface.ip_addrs().iter().map(|c| c.address()).collect();
        let cidrs: Vec<_> = cx.iface.ip_addrs().to_vec();
        for m in self.devices.values_mut() {
            m.listed = false;
        }
        for (name, addrs) in cx.devices.devices() {
            if addrs.iter().any(|a| mine.contains(a)) {
                continue; // ourselves
            }
            if !self.cfg.devices.is_empty() && !self.cfg.devices.contains(&name) {
                continue;
            }
            // An address on a network we are on, IPv4 first.
            let best = addrs
                .iter()
                .filter(|a| cidrs.iter().any(|c| c.contains_addr(a)))
                .min_by_key(|a| matches!(a, IpAddress::Ipv6(_)))
                .or(addrs.first());
            let Some(&addr) = best else { continue };
            let port = self.agent_port();
            let m = self.devices.entry(name).or_insert_with(|| Managed {
                link: AgentLink::new(addr, port),
                up: false,
                identity: None,
                counters: BTreeMap::new(),
                config: None,
                rtt: None,
                uptime_ms: None,
                error: None,
                listed: true,
                polls: 0,
                polls_failed: 0,
                refreshed: None,
            });
            m.listed = true;
            if m.link.addr() != addr {
                m.link = AgentLink::new(addr, port);
            }
        }
    }

    /// Sends `op` to `device`'s agent.
    pub(crate) fn ask(
        &mut self,
        cx: &mut SocketContext<'_>,
        device: &str,
        op: Op,
        req: &[u8],
        purpose: Purpose,
    ) -> Result<(), String> {
        let Some(m) = self.devices.get_mut(device) else {
            return Err(format!("no device {device:?}"));
        };
        m.link.request(
            cx,
            &mut self.ports,
            &self.key,
            self.client,
            op,
            req,
            purpose,
        )
    }

    /// A poll round: identity and configuration now and then, counters
    /// every time.
    fn poll_agents(&mut self, cx: &mut SocketContext<'_>) {
        self.stats.polls += 1;
        let now = cx.now;
        let names: Vec<String> = self.devices.keys().cloned().collect();
        for name in names {
            let m = &self.devices[&name];
            if m.link.in_flight() > 0 {
                continue; // still waiting: the timeout decides
            }
            let stale = m
                .refreshed
                .is_none_or(|t| now - t >= Duration::from_secs(10))
                || !m.up;
            let mut asks = vec![(Op::Counters, Purpose::Poll)];
            if stale {
                asks.insert(0, (Op::Identify, Purpose::Poll));
                asks.push((Op::Config, Purpose::Config));
            }
            for (op, purpose) in asks {
                if let Err(e) = self.ask(cx, &name, op, b"", purpose) {
                    let m = self.devices.get_mut(&name).expect("listed");
                    m.up = false;
                    m.error = Some(e);
                    break;
                }
            }
            if stale && let Some(m) = self.devices.get_mut(&name) {
                m.refreshed = Some(now);
            }
        }
    }

    /// Handles an agent's answer.
    fn on_answer(&mut self, cx: &mut SocketContext<'_>, device: &str, a: Answer) {
        match &a.result {
            Ok(_) => self.stats.agent_answers += 1,
            Err(_) => self.stats.agent_errors += 1,
        }
        if let Some(m) = self.devices.get_mut(device) {
            state::record(m, &a);
        }
        match a.purpose.clone() {
            Purpose::Poll | Purpose::Config => {}
            Purpose::Api { conn } => self.server.agent_answered(conn, device, &a),
            Purpose::Policy { decision } => {
                let result = match &a.result {
                    Ok((Status::Ok, b)) => {
                        Ok(String::from_utf8_lossy(b).trim().replace('\n', "; "))
                    }
                    Ok((st, b)) => Err(format!("{}: {}", st.name(), String::from_utf8_lossy(b))),
                    Err(e) => Err(e.clone()),
                };
                if let Some(e) = &mut self.engine {
                    e.settle(decision, result);
                }
            }
            Purpose::PolicyPatch { decision, .. } => {
                let patched = match (&a.result, self.patches.remove(&decision)) {
                    (
                        Ok((Status::Ok, cfg)),
                        Some(Action::Patch {
                            path, op, value, ..
                        }),
                    ) => state::patched(cfg, &path, op, value.as_ref()),
                    (Ok((st, b)), _) => Err(format!(
                        "config: {}: {}",
                        st.name(),
                        String::from_utf8_lossy(b)
                    )),
                    (Err(e), _) => Err(e.clone()),
                };
                let sent = patched.and_then(|text| {
                    self.ask(
                        cx,
                        device,
                        Op::SetFunction,
                        text.as_bytes(),
                        Purpose::Policy { decision },
                    )
                });
                if let (Err(e), Some(engine)) = (sent, &mut self.engine) {
                    engine.settle(decision, Err(e));
                }
            }
        }
    }

    /// Evaluates the policy and carries out what it plans.
    fn run_policy(&mut self, cx: &mut SocketContext<'_>) {
        self.reload_if_changed();
        let Some(engine) = &mut self.engine else {
            return;
        };
        let view = state::MetricsView {
            devices: &self.devices,
            probes: &self.probes,
            stats: &self.stats,
        };
        let planned = engine.tick(crate::wire::mgmt::unix_ms(), &view);
        for p in planned {
            let outcome = match &p.action {
                Action::Log(text) => {
                    log::info!("policy rule {}: {text}", p.rule);
                    Err(Ok(format!("logged: {text}")))
                }
                Action::SetFunction { device, function } => self
                    .ask(
                        cx,
                        device,
                        Op::SetFunction,
                        function.as_bytes(),
                        Purpose::Policy {
                            decision: p.decision,
                        },
                    )
                    .map_err(Err),
                Action::Patch { device, .. } => {
                    let device = device.clone();
                    self.patches.insert(p.decision, p.action.clone());
                    self.ask(
                        cx,
                        &device,
                        Op::Config,
                        b"",
                        Purpose::PolicyPatch {
                            decision: p.decision,
                            action: 0,
                        },
                    )
                    .map_err(Err)
                }
                Action::Capture(c) => {
                    let req = body::to_toml(&body::CaptureStart {
                        adapter: c.adapter.as_str().into(),
                        file: c.file.clone(),
                        seconds: Some(u64::from(c.seconds)),
                    });
                    self.ask(
                        cx,
                        &c.device,
                        Op::CaptureStart,
                        &req,
                        Purpose::Policy {
                            decision: p.decision,
                        },
                    )
                    .map_err(Err)
                }
            };
            // Settled now: actions that need no agent, and failed sends.
            if let Err(result) = outcome
                && let Some(e) = &mut self.engine
            {
                e.settle(p.decision, result);
            }
        }
    }

    /// Reads the policy file again if it changed since it was loaded.
    fn reload_if_changed(&mut self) {
        let Some(path) = &self.cfg.policy else { return };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if mtime != self.policy_mtime {
            self.policy_mtime = mtime;
            let _ = self.reload_policy();
        }
    }

    /// Reads the policy file again; on an error the old policy stays.
    pub(crate) fn reload_policy(&mut self) -> Result<(), String> {
        match load_policy(&self.cfg) {
            Ok(Some((p, mtime))) => {
                self.policy_mtime = mtime;
                match &mut self.engine {
                    Some(e) => e.replace(p),
                    None => {
                        let mut e = Engine::new(p);
                        e.set_dry_run(self.cfg.dry_run);
                        self.engine = Some(e);
                    }
                }
                self.policy_error = None;
                self.stats.policy_reloads += 1;
                log::info!("manager: policy reloaded");
                Ok(())
            }
            Ok(None) => Err("no policy file is configured".into()),
            Err(e) => {
                log::warn!("manager: policy not reloaded, the old one stays: {e}");
                self.policy_error = Some(e.clone());
                self.stats.policy_reload_errors += 1;
                Err(e)
            }
        }
    }
}

impl Function for Manager {
    fn kind(&self) -> FunctionKind {
        FunctionKind::socket(KIND)
    }

    fn attach(&mut self, cx: &mut SocketContext<'_>) {
        if self.cfg.secret_file.is_none() {
            log::warn!(
                "manager: no secret_file: the agents will refuse its requests \
                 (run it in a topology, or name the topology's secret file)"
            );
        }
        self.next_poll = cx.now;
        for p in &mut self.probes {
            p.reset_schedule(cx.now);
        }
    }

    fn detach(&mut self, cx: &mut SocketContext<'_>) {
        for m in self.devices.values_mut() {
            m.link.close(cx, &mut self.retired);
        }
        for p in &mut self.probes {
            p.close(cx, &mut self.retired);
        }
        self.server.close(cx, &mut self.retired);
        self.retired.clear(cx, &mut self.ports);
    }

    fn poll(&mut self, cx: &mut SocketContext<'_>) -> bool {
        let mut worked = false;
        let now = cx.now;
        for mut p in self.replaced.drain(..) {
            p.close(cx, &mut self.retired);
        }
        if std::mem::take(&mut self.relink) {
            for m in self.devices.values_mut() {
                m.link.close(cx, &mut self.retired);
            }
        }
        worked |= self.retired.poll(cx, &mut self.ports);
        if now >= self.next_poll {
            self.next_poll = now + self.cfg.poll_interval.0;
            self.discover(cx);
            self.poll_agents(cx);
            self.round_started = Some(now);
            worked = true;
        }
        let mut answers = Vec::new();
        let names: Vec<String> = self.devices.keys().cloned().collect();
        for name in &names {
            let timeout = self.cfg.poll_timeout.0;
            let m = self.devices.get_mut(name).expect("listed");
            m.link
                .poll(cx, &mut self.retired, &self.key, timeout, &mut answers);
            worked |= !answers.is_empty();
            for a in answers.drain(..) {
                self.on_answer(cx, name, a);
            }
        }
        for p in &mut self.probes {
            worked |= p.poll(cx, &mut self.ports, &mut self.retired);
        }
        // The policy sees each round's counters as soon as they are all in
        // (or the round timed out): it acts one interval after a change,
        // not two.
        if let Some(t) = self.round_started {
            let all_in = self.devices.values().all(|m| m.link.in_flight() == 0);
            if all_in || now - t >= self.cfg.poll_timeout.0 {
                self.round_started = None;
                self.run_policy(cx);
                worked = true;
            }
        }
        worked |= server::serve(self, cx);
        worked
    }

    fn poll_at(&self) -> Option<Instant> {
        let probes = self.probes.iter().map(|p| p.poll_at());
        let adhoc = self.server.probes_due();
        let round = self.round_started.map(|t| t + self.cfg.poll_timeout.0);
        probes
            .chain(adhoc)
            .chain(round)
            .chain(Some(self.next_poll))
            .min()
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        self.stats.visit(visit);
        visit("devices", self.devices.len() as u64);
        visit(
            "devices_up",
            self.devices.values().filter(|m| m.up).count() as u64,
        );
    }

    fn reconfigure(&mut self, cfg: &dyn FunctionSpec) -> Result<bool, FunctionError> {
        reconfigure_in_place::<ManagerConfig>(cfg, |new| {
            if new.listen != self.cfg.listen {
                return Err(invalid(KIND)("listen cannot change in place".into()));
            }
            let fresh = Manager::new(new.clone())?;
            // What the manager learnt stays; probes and sessions restart
            // (the secret may have changed), the policy keeps its rules'
            // state when the file is the same.
            self.replaced
                .extend(std::mem::replace(&mut self.probes, fresh.probes));
            self.relink = true;
            let same_policy = new.policy == self.cfg.policy;
            match (&mut self.engine, fresh.engine) {
                (Some(old), Some(_)) if same_policy => {
                    if let Ok(Some((p, _))) = load_policy(new) {
                        old.replace(p);
                    }
                    old.set_dry_run(new.dry_run);
                }
                (e, f) => *e = f,
            }
            self.policy_mtime = fresh.policy_mtime;
            self.server.set_token(&fresh.key);
            self.key = fresh.key;
            self.cfg = new.clone();
            Ok(())
        })
    }
}
