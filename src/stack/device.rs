//! The device: one smoltcp `Interface` + `SocketSet` over a [`Nic`], the
//! function, and the runtime loop (see the [module docs](super)).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::Medium;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use super::handle::{Applied, Change, Shared};
use super::hook::{self, Function, FunctionError, LinkInfo, SocketContext};
use super::sockets::SocketPool;
use super::spec::{DeviceBlueprint, DeviceSpec, FunctionSpec, NetworkSpec};
use super::{DeviceHandle, DeviceStats, Nic, Role, Router};
use crate::adapters::pcap::{Capture, Pcap, PcapFile};
use crate::adapters::shm::{SegmentKind, ShmAdapter, ShmOptions};
use crate::adapters::{Adapter, AdapterError, Neighbour};

/// While busy-polling without progress, yield the core this often…
pub const SPIN_HOT: Duration = Duration::from_micros(20);
/// …and sleep on the doorbells after this long.
pub const SPIN: Duration = Duration::from_micros(200);
/// A yield that takes this long ran another thread on our core…
const CROWDED_YIELD: Duration = Duration::from_micros(5);
/// …and after this many such yields in a row the device moves to another
/// core, or, if it did so less than MOVE_EVERY ago (every core is busy),
/// sleeps rather than spin on a shared core.
const CROWDED_YIELDS: u32 = 2;
const MOVE_EVERY: Duration = Duration::from_millis(50);

/// Moves the calling thread to another core it may run on, leaving its
/// affinity as it was; `false` if there is none.
fn move_off_this_core() -> bool {
    use rustix::thread::{sched_getaffinity, sched_getcpu, sched_setaffinity};
    let Ok(allowed) = sched_getaffinity(None) else {
        return false;
    };
    let mut elsewhere = allowed;
    elsewhere.unset(sched_getcpu());
    if elsewhere.count() == 0 || sched_setaffinity(None, &elsewhere).is_err() {
        return false;
    }
    // The kernel moved us before returning; widening the mask again does
    // not move us back.
    let _ = sched_setaffinity(None, &allowed);
    true
}
/// Sleep at most this long, so maintenance (counters, membership) runs even
/// on a silent network. Everything that needs the device sooner wakes it
/// (peers, handles, signals, joins and departures), so this only bounds
/// what an idle device costs: one wake-up a second.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How often adapters do their upkeep (e.g. apply joins and departures
/// that did not wake the device).
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// How often a running device publishes its function's counters.
const COUNTERS_EVERY: Duration = Duration::from_millis(50);

/// Errors creating or running a device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// A segment could not be opened or attached; see the cause.
    #[error("device {device}: network {network}")]
    Network {
        /// The device.
        device: String,
        /// `local` or `global`.
        network: &'static str,
        /// Why attaching failed.
        #[source]
        source: AdapterError,
    },
    /// The function could not be built from its configuration.
    #[error("device {device}")]
    Function {
        /// The device.
        device: String,
        /// What is wrong with the function's configuration.
        #[source]
        source: FunctionError,
    },
    /// The management agent cannot start (its secret is unreadable).
    #[error("device {device}: management: {why}")]
    Management {
        /// The device.
        device: String,
        /// What is wrong.
        why: String,
    },
    /// The interface's address table is full.
    #[error("device {device}: too many addresses or routes")]
    AddressTable {
        /// The device.
        device: String,
    },
}

/// A network device: its own stack, two adapters, one function.
pub struct NetDevice {
    iface: Interface,
    sockets: SocketSet<'static>,
    nic: Nic,
    clock: std::time::Instant,
    shared: Arc<Shared>,
    last_sweep: std::time::Instant,
    last_counters: std::time::Instant,
    /// Medium and MTUs, as functions learn them.
    link: LinkInfo,
    /// Closed TCP sockets kept for the next connection.
    pool: SocketPool,
    /// Which networks wear a capture, by [`Role::index`].
    capturing: [bool; 2],
    /// The last round's stack processing touched a socket.
    sockets_changed: bool,
}

/// The name a device's adapter on `role`'s network is listed under in that
/// network's directory.
fn port_name(device: &str, role: Role) -> String {
    format!("{device}/{}", role.name())
}

/// The devices on a device's two networks, from the adapters' directories.
impl hook::Directory for [Box<dyn Adapter>; 2] {
    fn device_addresses(&self, name: &str) -> Vec<IpAddress> {
        let names = Role::ALL.map(|r| port_name(name, r));
        self.iter()
            .flat_map(|a| names.iter().flat_map(|n| a.addresses_of(n)))
            .collect()
    }
    fn devices(&self) -> Vec<(String, Vec<IpAddress>)> {
        let mut out: std::collections::BTreeMap<String, Vec<IpAddress>> = Default::default();
        for a in self {
            for (name, n) in a.members() {
                // A device's port on this network may be its local or its
                // global one, whichever network this is to us.
                let Some(device) = Role::ALL
                    .iter()
                    .find_map(|r| name.strip_suffix(&format!("/{}", r.name())))
                else {
                    continue;
                };
                let addrs = out.entry(device.to_string()).or_default();
                addrs.extend(n.ipv4.map(IpAddress::Ipv4));
                addrs.extend(n.ipv6.map(IpAddress::Ipv6));
            }
        }
        out.into_iter().collect()
    }
}

/// Joins `role`'s network as configured: a shared-memory port, wearing a
/// pcap capture if the network asks for one.
fn attach(
    cfg: &DeviceSpec,
    role: Role,
    kind: SegmentKind,
) -> Result<Box<dyn Adapter>, DeviceError> {
    let net: &NetworkSpec = match role {
        Role::Local => &cfg.local,
        Role::Global => &cfg.global,
    };
    let err = |source: AdapterError| DeviceError::Network {
        device: cfg.name.clone(),
        network: role.name(),
        source,
    };
    let me = Neighbour {
        mac: EthernetAddress(cfg.mac),
        ipv4: Some(net.v4.address()),
        ipv6: net.v6.map(|c| c.address()),
    };
    let options = ShmOptions {
        max_burst: net.max_burst,
        trust_peers: net.trust_peers.unwrap_or(kind == SegmentKind::InProcess),
        uplink: false,
    };
    let name = port_name(&cfg.name, role);
    let port =
        ShmAdapter::join(&net.segment, kind, &net.params(), &name, me, options).map_err(err)?;
    Ok(match &net.pcap {
        Some(path) => Box::new(Pcap::create(port, path).map_err(err)?),
        None => Box::new(port),
    })
}

impl NetDevice {
    /// Builds a device from validated settings and its function's
    /// configuration (e.g. `config::DeviceSettings`), joining (or creating)
    /// its two networks' segments of the given kind.
    pub fn new(
        blueprint: &impl DeviceBlueprint,
        kind: SegmentKind,
    ) -> Result<NetDevice, DeviceError> {
        let cfg = blueprint.spec();
        let function = blueprint
            .function()
            .build()
            .map_err(|source| DeviceError::Function {
                device: cfg.name.clone(),
                source,
            })?;
        Self::with_function(cfg, function, kind)
    }

    /// Builds a device running `function` (built-in or your own), joining
    /// (or creating) its two networks' segments of the given kind.
    pub fn with_function(
        cfg: &DeviceSpec,
        function: Box<dyn Function>,
        kind: SegmentKind,
    ) -> Result<NetDevice, DeviceError> {
        let local = attach(cfg, Role::Local, kind)?;
        let global = attach(cfg, Role::Global, kind)?;
        Self::from_adapters(cfg, local, global, function)
    }

    /// Builds a device around adapters the caller attached (of any kind,
    /// both on the same medium).
    pub fn from_adapters(
        cfg: &DeviceSpec,
        local: Box<dyn Adapter>,
        global: Box<dyn Adapter>,
        function: Box<dyn Function>,
    ) -> Result<NetDevice, DeviceError> {
        let mut router = Router::new(
            local.medium(),
            Some(cfg.local.v4),
            cfg.local.v6,
            local.ip_mtu(),
            global.ip_mtu(),
        )
        .with_routes(cfg.routes.iter().map(|r| (r.to, r.via)).collect());
        if cfg.forward {
            let v4gw = |g: Option<IpAddress>| match g {
                Some(IpAddress::Ipv4(a)) => Some(a),
                _ => None,
            };
            let v6gw = |g: Option<IpAddress>| match g {
                Some(IpAddress::Ipv6(a)) => Some(a),
                _ => None,
            };
            router = router.forwarding(
                cfg.mac,
                Some(cfg.global.v4),
                cfg.global.v6,
                v4gw(cfg.global.gateway),
                v6gw(cfg.global.gateway6),
            );
        }
        let medium = local.medium();
        let remotes = [local.remote(), global.remote()];
        let function_name = function.name().to_string();
        let router = router.checksummed(cfg.local.checksums || cfg.global.checksums);
        let mut nic = Nic::new(local, global, function, router);
        let shared = Arc::new(Shared::new(
            &cfg.name,
            &function_name,
            remotes,
            Arc::clone(nic.counters()),
        ));
        let hw = match medium {
            Medium::Ethernet => HardwareAddress::Ethernet(EthernetAddress(cfg.mac)),
            _ => HardwareAddress::Ip,
        };
        let mut config = Config::new(hw);
        config.random_seed = crc32fast::hash(cfg.name.as_bytes()) as u64
            ^ (std::process::id() as u64) << 32
            ^ crate::wire::since_unix_epoch().as_nanos() as u64;
        let clock = std::time::Instant::now();
        let mut iface = Interface::new(config, &mut nic, Instant::ZERO);
        let table_full = || DeviceError::AddressTable {
            device: cfg.name.clone(),
        };
        let mut full = false;
        iface.update_ip_addrs(|a| {
            let mut push = |c: IpCidr| full |= a.push(c).is_err();
            push(IpCidr::Ipv4(cfg.local.v4));
            push(IpCidr::Ipv4(cfg.global.v4));
            if let Some(c) = cfg.local.v6 {
                push(IpCidr::Ipv6(c));
            }
            if let Some(c) = cfg.global.v6 {
                push(IpCidr::Ipv6(c));
            }
        });
        if full {
            return Err(table_full());
        }
        if let Some(IpAddress::Ipv4(g)) = cfg.global.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(g)
                .map_err(|_| table_full())?;
        }
        if let Some(IpAddress::Ipv6(g)) = cfg.global.gateway6 {
            iface
                .routes_mut()
                .add_default_ipv6_route(g)
                .map_err(|_| table_full())?;
        }
        let mut full = false;
        iface.routes_mut().update(|table| {
            for r in &cfg.routes {
                full |= table
                    .push(smoltcp::iface::Route {
                        cidr: r.to,
                        via_router: r.via,
                        preferred_until: None,
                        expires_at: None,
                    })
                    .is_err();
            }
        });
        if full {
            return Err(table_full());
        }
        let link = LinkInfo {
            medium: crate::wire::LinkMedium::from_phy(medium),
            local_mtu: nic.adapter(Role::Local).ip_mtu(),
            global_mtu: nic.adapter(Role::Global).ip_mtu(),
            checksums: nic.router().checksums(),
        };
        let mut dev = NetDevice {
            link,
            iface,
            sockets: SocketSet::new(Vec::new()),
            nic,
            clock,
            shared,
            last_sweep: clock,
            last_counters: clock,
            pool: SocketPool::new(cfg.sockets),
            capturing: [cfg.local.pcap.is_some(), cfg.global.pcap.is_some()],
            sockets_changed: false,
        };
        let (f, mut cx) = dev.function_cx();
        f.attach(&mut cx);
        Ok(dev)
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Device time (smoltcp's clock starts at device creation).
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.clock.elapsed().as_micros() as i64)
    }

    /// The device's smoltcp interface: its addresses, routes and
    /// neighbour cache.
    pub fn iface(&mut self) -> &mut Interface {
        &mut self.iface
    }
    /// The device's sockets. Add TCP sockets with [`NetDevice::add_tcp`]
    /// (pooled); any smoltcp socket can be added here directly.
    pub fn sockets(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }
    /// Interface and sockets at once (e.g. to `connect` a TCP socket).
    pub fn parts(&mut self) -> (&mut Interface, &mut SocketSet<'static>) {
        (&mut self.iface, &mut self.sockets)
    }
    /// The interface system: both adapters, routing, the function.
    pub fn nic(&self) -> &Nic {
        &self.nic
    }

    /// Adds a TCP socket with the device's buffer size (`[sockets]
    /// tcp_buffer`), Nagle off, taken from the device's pool of closed
    /// sockets when it has one: the way to open connections cheaply.
    pub fn add_tcp(&mut self) -> SocketHandle {
        let s = self.pool.tcp_default();
        self.sockets.add(s)
    }

    /// The device's pool of closed TCP sockets.
    pub fn socket_pool(&self) -> &SocketPool {
        &self.pool
    }

    /// Removes a socket; a TCP socket goes back to the pool for the next
    /// [`NetDevice::add_tcp`]. Remove sockets once closed: an open connection
    /// is dropped without telling the peer.
    pub fn remove_socket(&mut self, h: SocketHandle) {
        self.pool.remove(&mut self.sockets, h);
    }

    /// Lets TCP to and from `port` on this device bypass the function's
    /// hooks: the management agent's port (see the `management` module).
    pub fn set_management_port(&mut self, port: Option<u16>) {
        self.nic.management_port = port;
    }

    /// Whether the last round delivered anything to a socket (smoltcp's
    /// `PollResult::SocketStateChanged`): a service beside the function
    /// with nothing else pending can skip rounds where this is false.
    pub fn sockets_changed(&self) -> bool {
        self.sockets_changed
    }

    /// Medium and MTUs of the device's networks.
    pub fn link(&self) -> LinkInfo {
        self.link
    }

    /// Starts writing every frame of `role`'s network to a new pcap file
    /// at `path` (in addition to a capture the network's configuration
    /// asks for, which this refuses to stack on).
    pub fn start_capture(
        &mut self,
        role: Role,
        path: &std::path::Path,
    ) -> Result<(), AdapterError> {
        if self.capturing[role.index()] {
            return Err(AdapterError::Pcap {
                path: path.display().to_string(),
                source: std::io::Error::other(format!(
                    "the {} network is being captured already",
                    role.name()
                )),
            });
        }
        let file = PcapFile::create(path, self.nic.adapter(role).medium())?;
        self.nic
            .rewrap(role, |a| Box::new(Pcap::wrap(a, file)) as Box<dyn Adapter>);
        self.capturing[role.index()] = true;
        log::info!(
            "device {}: capturing the {} network to {}",
            self.shared.name,
            role.name(),
            path.display()
        );
        Ok(())
    }

    /// Stops the capture of `role`'s network (one started by
    /// [`NetDevice::start_capture`] or by the configuration) and says what
    /// it wrote; `None` when there was none.
    pub fn stop_capture(&mut self, role: Role) -> Option<Capture> {
        let mut written = None;
        self.nic.rewrap(role, |a| match a.take_off_capture() {
            Ok((inner, w)) => {
                written = Some(w);
                inner
            }
            Err(a) => a,
        });
        self.capturing[role.index()] = false;
        written
    }

    /// A handle for other threads.
    pub fn handle(&self) -> DeviceHandle {
        DeviceHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DeviceStats {
        *self.shared.function_counters.lock() = hook::counters_of(self.nic.function.as_ref());
        self.shared.stats()
    }

    /// Replaces the function now: the old one closes its sockets, the new
    /// one opens its own.
    pub fn replace_function(&mut self, mut f: Box<dyn Function>) {
        let (old, mut cx) = self.function_cx();
        old.detach(&mut cx);
        f.attach(&mut cx);
        log::info!(
            "device {}: function {} -> {}",
            self.shared.name,
            self.nic.function.name(),
            f.name()
        );
        *self.shared.function_name.lock() = f.name().into();
        self.nic.function = f;
        self.shared.failed.store(false, Ordering::SeqCst);
        self.shared.finished.store(false, Ordering::SeqCst);
    }

    /// Applies a changed configuration now: in place when the running
    /// function takes it (keeping its state), else by replacing the
    /// function with one built from `cfg`. On an error the running function
    /// is unchanged. [`DeviceHandle::reconfigure`] does the same from
    /// another thread.
    pub fn reconfigure(&mut self, cfg: &dyn FunctionSpec) -> Result<Applied, FunctionError> {
        let outcome = match self.nic.function.reconfigure(cfg) {
            Ok(true) => {
                log::info!(
                    "device {}: function {} reconfigured in place",
                    self.shared.name,
                    self.nic.function.name()
                );
                Ok(Applied::InPlace)
            }
            Ok(false) => cfg.build().map(|f| {
                self.replace_function(f);
                Applied::Replaced
            }),
            Err(e) => Err(e),
        };
        if let Err(e) = &outcome {
            log::warn!("device {}: reconfigure refused: {e}", self.shared.name);
        }
        self.publish();
        outcome
    }

    /// Applies the changes handles requested, in order, settling each
    /// ticket.
    fn apply_changes(&mut self) {
        loop {
            let next = self.shared.changes.lock().queue.pop_front();
            let Some((epoch, change)) = next else { break };
            let outcome = match change {
                Change::Replace(f) => {
                    self.replace_function(f);
                    self.publish();
                    Ok(Applied::Replaced)
                }
                Change::Reconfigure(cfg) => self.reconfigure(cfg.as_ref()),
            };
            self.shared.settle(epoch, outcome);
        }
    }

    /// The function and what it may touch, borrowed at once.
    fn function_cx(&mut self) -> (&mut Box<dyn Function>, SocketContext<'_>) {
        self.function_cx_at(self.now())
    }

    /// [`NetDevice::function_cx`] at device time `now`.
    fn function_cx_at(&mut self, now: Instant) -> (&mut Box<dyn Function>, SocketContext<'_>) {
        let (function, adapters) = self.nic.function_and_adapters();
        (
            function,
            SocketContext {
                now,
                iface: &mut self.iface,
                sockets: &mut self.sockets,
                pool: &mut self.pool,
                devices: adapters,
                link: self.link,
            },
        )
    }

    /// What a function's hooks get: the interface, sockets, socket pool,
    /// directory and link facts, at the current device time. For services
    /// that run beside the function (the management agent).
    pub fn context(&mut self) -> SocketContext<'_> {
        self.function_cx().1
    }

    /// One round on the wall clock (see [`NetDevice::poll_at`]).
    pub fn poll(&mut self) -> bool {
        self.poll_at(self.now())
    }

    /// Device time at wall-clock time `t`.
    fn instant_of(&self, t: std::time::Instant) -> Instant {
        Instant::from_micros(t.saturating_duration_since(self.clock).as_micros() as i64)
    }

    /// One round at device time `now`, read from no clock: pending function
    /// swaps, the stack (ingress, egress), the function's socket work and
    /// held frames, then the adapters are flushed. Returns whether anything
    /// moved. Tests and embedders drive a device on virtual time with it;
    /// `now` should not go backwards.
    pub fn poll_at(&mut self, now: Instant) -> bool {
        if self.shared.change_pending.swap(false, Ordering::Acquire) {
            self.apply_changes();
        }
        self.nic.begin_round(now);
        let before = self.nic.frames_moved();
        let changed = self.iface.poll(now, &mut self.nic, &mut self.sockets)
            == PollResult::SocketStateChanged;
        self.sockets_changed = changed;
        let (function, mut cx) = self.function_cx_at(now);
        let worked = function.poll(&mut cx);
        if worked {
            self.iface
                .poll_egress(now, &mut self.nic, &mut self.sockets);
        }
        let released = self.nic.release_held();
        self.nic.flush();
        let f = &mut self.nic.function;
        let report = f.take_report();
        if !report.is_empty() {
            self.shared.reports.lock().extend(report);
        }
        if f.finished() != self.shared.finished.load(Ordering::Relaxed) {
            // The verdict first: whoever sees `finished` sees it too.
            self.shared.failed.store(f.failed(), Ordering::SeqCst);
            self.shared.finished.store(f.finished(), Ordering::SeqCst);
        }
        changed || worked || released || self.nic.frames_moved() != before
    }

    /// Sleeps until a peer sends, a stack timer is due, or `max` passes.
    pub fn wait(&mut self, max: Duration) {
        let now = self.now();
        let mut delay = self
            .iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(max)
            .min(max);
        if let Some(at) = self.nic.function.poll_at() {
            // smoltcp's Instant difference is unsigned: a time already
            // passed must not read as a long sleep.
            let until = if at > now {
                (at - now).total_micros()
            } else {
                0
            };
            delay = delay.min(Duration::from_micros(until));
        }
        if delay.is_zero() {
            return;
        }
        self.nic.wait(Some(delay));
    }

    /// Publishes the function's counters and whether it failed for handles.
    fn publish(&self) {
        *self.shared.function_counters.lock() = hook::counters_of(self.nic.function.as_ref());
        self.shared
            .failed
            .store(self.nic.function.failed(), Ordering::SeqCst);
    }

    /// Publishes the function's counters for handles (every 50 ms) and
    /// looks for dead peers (every 500 ms).
    fn maintenance(&mut self, t: std::time::Instant) {
        if t.saturating_duration_since(self.last_counters) < COUNTERS_EVERY {
            return;
        }
        self.last_counters = t;
        self.publish();
        if t.saturating_duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = t;
            self.nic.maintain();
        }
    }

    /// Runs the device until `app` returns `true` or [`DeviceHandle::stop`]
    /// is called. `app` runs after every round with the device (its sockets,
    /// interface and stats) and returns whether it is done.
    pub fn run_until(&mut self, mut app: impl FnMut(&mut NetDevice) -> bool) {
        let mut last_progress = std::time::Instant::now();
        let mut last_yield = last_progress;
        // Consecutive yields that came back late (see below).
        let mut crowded = 0u32;
        let mut last_move = last_progress - MOVE_EVERY;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let t = std::time::Instant::now();
            let progress = self.poll_at(self.instant_of(t));
            if app(self) {
                break;
            }
            self.maintenance(t);
            if progress {
                last_progress = t;
                last_yield = t;
                continue;
            }
            let idle = t.saturating_duration_since(last_progress);
            if crowded >= CROWDED_YIELDS
                && t.saturating_duration_since(last_move) >= MOVE_EVERY
                && move_off_this_core()
            {
                crowded = 0;
                last_move = t;
            }
            if idle < SPIN && crowded < CROWDED_YIELDS {
                // Every SPIN_HOT of idling, let a peer sharing this core run
                // (devices often outnumber cores). A yield per poll would
                // cost a system call each round and halve bulk throughput.
                if t.saturating_duration_since(last_yield) >= SPIN_HOT {
                    std::thread::yield_now();
                    last_yield = std::time::Instant::now();
                    // A yield that came back late means another thread ran
                    // on this core, maybe the very peer we wait for. The
                    // scheduler may keep two spinning threads on one core
                    // for a long time (both look cache-hot) while another
                    // core idles: every exchange then costs a time slice.
                    // Sleeping instead lets the wake-up put us on an idle
                    // core.
                    if last_yield.saturating_duration_since(t) >= CROWDED_YIELD {
                        crowded += 1;
                    } else {
                        crowded = 0;
                    }
                } else {
                    std::hint::spin_loop();
                }
            } else {
                crowded = 0;
                if self.last_counters < last_progress {
                    // Handles see the counters as they are when we sleep.
                    self.last_counters = t;
                    self.publish();
                }
                self.wait(MAX_SLEEP);
                last_progress = std::time::Instant::now() - SPIN_HOT;
            }
        }
        self.publish();
        if self.shared.stop.load(Ordering::Relaxed) {
            // Stopped for good: changes still queued fail.
            self.shared.close();
        }
    }

    /// Runs until stopped.
    pub fn run(&mut self) {
        self.run_until(|_| false);
    }

    /// Moves the device to its own thread; returns a handle and the thread.
    pub fn spawn(mut self) -> (DeviceHandle, std::thread::JoinHandle<NetDevice>) {
        let h = self.handle();
        let t = std::thread::Builder::new()
            .name(format!("dev-{}", self.name()))
            .spawn(move || {
                self.run();
                self
            })
            .expect("spawn device thread");
        (h, t)
    }
}

impl Drop for NetDevice {
    fn drop(&mut self) {
        self.shared.close();
        let (f, mut cx) = self.function_cx();
        f.detach(&mut cx);
    }
}
