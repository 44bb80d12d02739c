//! Devices: one smoltcp `Interface` + `SocketSet`, the [`Nic`] that owns
//! both adapters, the device's function, and the runtime loop.
//!
//! The loop polls the stack, runs the function's socket-level work and
//! flushes the adapters. While traffic flows it busy-polls; without
//! progress it yields the core every [`SPIN_HOT`], and after [`SPIN`] it
//! sleeps on the adapters' doorbells (a futex in shared memory that a peer's send rings), bounded by
//! smoltcp's next timer, so an idle device costs ~0 % CPU.
//!
//! ```
//! use shmnet::config::DeviceConfig;
//! use shmnet::shm::SegmentKind;
//! use shmnet::stack::Device;
//! let cfg = DeviceConfig::from_toml(r#"
//!     name = "doc"
//!     local = { segment = "doc-lan", address = "10.9.0.1/24" }
//!     global = { segment = "doc-wan", address = "10.10.0.1/16" }
//! "#, "inline").unwrap();
//! let mut dev = Device::new(&cfg, SegmentKind::Process).unwrap();
//! dev.poll();
//! assert_eq!(dev.stats().local.tx_frames, 0);
//! ```

pub mod hook;
pub mod nic;
pub mod spec;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use smoltcp::iface::{Config, Interface, PollResult, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

pub use hook::{Emit, Frame, Function, FunctionError, LinkInfo, Role, SocketContext, Verdict};
pub use nic::{Nic, NicCounters, Router};
pub use spec::{DeviceBlueprint, DeviceSpec, FunctionSpec, NetworkSpec, StaticRoute};

use crate::adapters::{
    AdapterCounters, AdapterError, AdapterOptions, AdapterStats, GlobalAdapter, LocalAdapter,
};
use crate::shm::{LinkMedium, PortCounters, PortInfo, Segment, SegmentKind};

/// While busy-polling without progress, yield the core this often…
pub const SPIN_HOT: Duration = Duration::from_micros(20);
/// …and sleep on the doorbells after this long.
pub const SPIN: Duration = Duration::from_micros(200);
/// Sleep at most this long, so maintenance (dead-peer sweeps, stop
/// requests) runs even on a silent network.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// How often to look for dead peers.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// How often a running device publishes its function's counters.
const COUNTERS_EVERY: Duration = Duration::from_millis(50);

/// Errors creating or running a device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// A segment could not be opened or attached; see the cause.
    #[error("device {device}: network {network}: {source}")]
    Network {
        device: String,
        network: &'static str,
        #[source]
        source: AdapterError,
    },
    /// The function could not be built from its configuration.
    #[error("device {device}: {source}")]
    Function {
        device: String,
        #[source]
        source: FunctionError,
    },
    /// The interface's address table is full.
    #[error("device {device}: too many addresses or routes")]
    AddressTable { device: String },
}

/// A snapshot of a device's counters.
#[derive(Debug, Clone, Default)]
pub struct DeviceStats {
    pub name: String,
    pub function: String,
    pub local: AdapterStats,
    pub global: AdapterStats,
    pub routed_local: u64,
    pub routed_global: u64,
    pub ingress_dropped: u64,
    pub egress_dropped: u64,
    pub redirected: u64,
    pub consumed: u64,
    pub oversize: u64,
    pub mss_clamped: u64,
    pub forwarded: u64,
    pub no_route: u64,
    pub no_neighbour: u64,
    pub ttl_expired: u64,
    pub function_counters: Vec<(String, u64)>,
}

impl DeviceStats {
    /// The function's counter called `name`, if it has one.
    pub fn function_counter(&self, name: &str) -> Option<u64> {
        self.function_counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, v)| v)
    }
}

struct Shared {
    name: String,
    stop: AtomicBool,
    replace: Mutex<Option<Box<dyn Function>>>,
    /// A changed configuration for the running function.
    reconfigure: Mutex<Option<Box<dyn FunctionSpec>>>,
    /// Set with `replace` or `reconfigure`, so the loop need not lock every
    /// round.
    replace_pending: AtomicBool,
    function_name: Mutex<String>,
    function_counters: Mutex<Vec<(String, u64)>>,
    reports: Mutex<Vec<String>>,
    finished: AtomicBool,
    local: (Arc<AdapterCounters>, Arc<PortCounters>, Arc<Segment>, u32),
    global: (Arc<AdapterCounters>, Arc<PortCounters>, Arc<Segment>, u32),
    nic: Arc<NicCounters>,
}

/// A handle to a device running on another thread: stop it, swap its
/// function, read its counters.
#[derive(Clone)]
pub struct DeviceHandle {
    shared: Arc<Shared>,
}

impl DeviceHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    /// Asks the device's loop to return (wakes it if asleep).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
    }
    pub fn is_stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }
    /// Replaces the running function; takes effect at the next poll round.
    pub fn replace_function(&self, f: Box<dyn Function>) {
        *self.shared.replace.lock() = Some(f);
        self.shared.replace_pending.store(true, Ordering::Release);
        self.wake();
    }
    fn wake(&self) {
        for (_, _, seg, port) in [&self.shared.local, &self.shared.global] {
            seg.ring_doorbell(*port);
        }
    }
    /// Applies a changed configuration to the running function in place
    /// when it can (an ESP rekey keeps the tunnel's state), else replaces
    /// it with one built from `cfg`. Takes effect at the next poll round.
    pub fn reconfigure(&self, cfg: impl FunctionSpec) {
        *self.shared.reconfigure.lock() = Some(Box::new(cfg));
        self.shared.replace_pending.store(true, Ordering::Release);
        self.wake();
    }

    /// Has the function finished its job (see [`Function::finished`])?
    pub fn finished(&self) -> bool {
        self.shared.finished.load(Ordering::SeqCst)
    }
    /// Report lines the function produced so far (drained).
    pub fn take_report(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.reports.lock())
    }
    /// A snapshot of the counters (function counters as of the last round).
    pub fn stats(&self) -> DeviceStats {
        stats_of(&self.shared)
    }
}

fn stats_of(s: &Shared) -> DeviceStats {
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let n = &s.nic;
    DeviceStats {
        name: s.name.clone(),
        function: s.function_name.lock().clone(),
        local: crate::adapters::adapter_stats(&s.local.0, &s.local.1),
        global: crate::adapters::adapter_stats(&s.global.0, &s.global.1),
        routed_local: l(&n.routed_local),
        routed_global: l(&n.routed_global),
        ingress_dropped: l(&n.ingress_dropped),
        egress_dropped: l(&n.egress_dropped),
        redirected: l(&n.redirected),
        consumed: l(&n.consumed),
        oversize: l(&n.oversize),
        mss_clamped: l(&n.mss_clamped),
        forwarded: l(&n.forwarded),
        no_route: l(&n.no_route),
        no_neighbour: l(&n.no_neighbour),
        ttl_expired: l(&n.ttl_expired),
        function_counters: s.function_counters.lock().clone(),
    }
}

/// A network device: its own stack, two adapters, one function.
pub struct Device {
    iface: Interface,
    sockets: SocketSet<'static>,
    nic: Nic,
    clock: std::time::Instant,
    shared: Arc<Shared>,
    last_sweep: std::time::Instant,
    last_counters: std::time::Instant,
    directory: SegmentDirectory,
    link: LinkInfo,
}

/// The devices on a device's two networks, from the segments' port
/// directories (a device's ports are named `NAME/local`, `NAME/global`).
struct SegmentDirectory {
    segments: [Arc<Segment>; 2],
}

impl hook::Directory for SegmentDirectory {
    fn device_addresses(&self, name: &str) -> Vec<IpAddress> {
        let tags = [
            crate::shm::name_tag(&format!("{name}/local")),
            crate::shm::name_tag(&format!("{name}/global")),
        ];
        let mut out = Vec::new();
        for seg in &self.segments {
            for p in seg
                .peers()
                .into_iter()
                .filter(|p| tags.contains(&p.name_tag))
            {
                out.extend(p.ipv4.map(|a| IpAddress::Ipv4(a.into())));
                out.extend(p.ipv6.map(|a| IpAddress::Ipv6(a.into())));
            }
        }
        out
    }
}

fn attach<R: crate::adapters::RoleMarker>(
    name: &str,
    net: &NetworkSpec,
    kind: SegmentKind,
    mac: [u8; 6],
    which: &'static str,
) -> Result<crate::adapters::Adapter<R>, DeviceError> {
    let err = |source: AdapterError| DeviceError::Network {
        device: name.into(),
        network: which,
        source,
    };
    let info = PortInfo {
        name: format!("{name}/{which}"),
        mac,
        ipv4: Some(net.v4.address().octets()),
        ipv6: net.v6.map(|c| c.address().octets()),
    };
    let opts = AdapterOptions {
        max_burst_size: net.max_burst,
        checksums: net.checksums,
        pcap: net.pcap.clone(),
        trust_peers: net.trust_peers.unwrap_or(kind == SegmentKind::Process),
    };
    let port =
        Segment::join(&net.segment, kind, &net.params(), &info).map_err(|e| err(e.into()))?;
    crate::adapters::Adapter::<R>::from_port(port, opts).map_err(err)
}

impl Device {
    /// Builds a device from validated settings and its function's
    /// configuration (e.g. `config::DeviceSettings`), joining (or
    /// creating) its two networks' segments of the given kind.
    pub fn new(blueprint: &impl DeviceBlueprint, kind: SegmentKind) -> Result<Device, DeviceError> {
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
    ) -> Result<Device, DeviceError> {
        let local: LocalAdapter = attach(&cfg.name, &cfg.local, kind, cfg.mac, "local")?;
        let global: GlobalAdapter = attach(&cfg.name, &cfg.global, kind, cfg.mac, "global")?;
        Self::from_adapters(cfg, local, global, function)
    }

    /// Builds a device around adapters the caller attached.
    pub fn from_adapters(
        cfg: &DeviceSpec,
        local: LocalAdapter,
        global: GlobalAdapter,
        function: Box<dyn Function>,
    ) -> Result<Device, DeviceError> {
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
        let ends = |c: &Arc<AdapterCounters>, p: &Arc<PortCounters>, port: &crate::shm::Port| {
            (
                Arc::clone(c),
                Arc::clone(p),
                Arc::clone(port.segment()),
                port.index(),
            )
        };
        let local_end = ends(local.counters(), local.port_counters(), local.port());
        let global_end = ends(global.counters(), global.port_counters(), global.port());
        let checksums = cfg.local.checksums || cfg.global.checksums;
        let medium = local.medium();
        let function_name = function.name().to_string();
        let mut nic = Nic::new(local, global, function, router, checksums);
        let shared = Arc::new(Shared {
            name: cfg.name.clone(),
            stop: AtomicBool::new(false),
            replace: Mutex::new(None),
            reconfigure: Mutex::new(None),
            replace_pending: AtomicBool::new(false),
            function_name: Mutex::new(function_name),
            function_counters: Mutex::new(Vec::new()),
            reports: Mutex::new(Vec::new()),
            finished: AtomicBool::new(false),
            local: local_end,
            global: global_end,
            nic: Arc::clone(nic.counters()),
        });
        let hw = match medium {
            LinkMedium::Ethernet => HardwareAddress::Ethernet(EthernetAddress(cfg.mac)),
            LinkMedium::Ip => HardwareAddress::Ip,
        };
        let mut config = Config::new(hw);
        config.random_seed = crc32fast::hash(cfg.name.as_bytes()) as u64
            ^ (std::process::id() as u64) << 32
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
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
        let directory = SegmentDirectory {
            segments: [
                Arc::clone(nic.local().port().segment()),
                Arc::clone(nic.global().port().segment()),
            ],
        };
        let link = LinkInfo {
            medium,
            local_mtu: nic.local().ip_mtu(),
            global_mtu: nic.global().ip_mtu(),
        };
        let mut dev = Device {
            link,
            iface,
            sockets: SocketSet::new(Vec::new()),
            nic,
            clock,
            shared,
            last_sweep: clock,
            last_counters: clock,
            directory,
        };
        let (f, mut cx) = dev.function_cx();
        f.attach(&mut cx);
        Ok(dev)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Device time (smoltcp's clock starts at device creation).
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.clock.elapsed().as_micros() as i64)
    }

    pub fn iface(&mut self) -> &mut Interface {
        &mut self.iface
    }
    pub fn sockets(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }
    /// Interface and sockets at once (e.g. to `connect` a TCP socket).
    pub fn parts(&mut self) -> (&mut Interface, &mut SocketSet<'static>) {
        (&mut self.iface, &mut self.sockets)
    }
    pub fn nic(&self) -> &Nic {
        &self.nic
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
        stats_of(&self.shared)
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
        self.shared.finished.store(false, Ordering::SeqCst);
    }

    /// The function and what it may touch, borrowed at once.
    fn function_cx(&mut self) -> (&mut Box<dyn Function>, SocketContext<'_>) {
        let now = self.now();
        (
            &mut self.nic.function,
            SocketContext {
                now,
                iface: &mut self.iface,
                sockets: &mut self.sockets,
                devices: &self.directory,
                link: self.link,
            },
        )
    }

    /// One round: stack, function, flush. Returns whether anything moved.
    pub fn poll(&mut self) -> bool {
        self.poll_at(std::time::Instant::now())
    }

    /// One round at wall-clock time `t` (one clock read per round).
    fn poll_at(&mut self, t: std::time::Instant) -> bool {
        if self.shared.replace_pending.swap(false, Ordering::Acquire) {
            let pending = self.shared.replace.lock().take();
            if let Some(f) = pending {
                self.replace_function(f);
            }
            let cfg = self.shared.reconfigure.lock().take();
            if let Some(cfg) = cfg
                && !self
                    .nic
                    .function
                    .reconfigure(cfg.as_ref())
                    .unwrap_or_else(|e| {
                        log::warn!("device {}: reconfigure failed: {e}", self.shared.name);
                        true
                    })
            {
                match cfg.build() {
                    Ok(f) => self.replace_function(f),
                    Err(e) => log::warn!("device {}: reconfigure failed: {e}", self.shared.name),
                }
            }
        }
        let now = Instant::from_micros(t.saturating_duration_since(self.clock).as_micros() as i64);
        self.nic.begin_round(now);
        let before = self.nic.frames_moved();
        let changed = self.iface.poll(now, &mut self.nic, &mut self.sockets)
            == PollResult::SocketStateChanged;
        let mut cx = SocketContext {
            now,
            iface: &mut self.iface,
            sockets: &mut self.sockets,
            devices: &self.directory,
            link: self.link,
        };
        let worked = self.nic.function.poll(&mut cx);
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

    /// Publishes the function's counters for handles (every 50 ms) and
    /// looks for dead peers (every 500 ms).
    fn maintenance(&mut self, t: std::time::Instant) {
        if t.saturating_duration_since(self.last_counters) < COUNTERS_EVERY {
            return;
        }
        self.last_counters = t;
        *self.shared.function_counters.lock() = hook::counters_of(self.nic.function.as_ref());
        if t.saturating_duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = t;
            self.nic.local().port().segment().sweep_dead();
            self.nic.global().port().segment().sweep_dead();
        }
    }

    /// Runs the device until `app` returns `true` or [`DeviceHandle::stop`]
    /// is called. `app` runs after every round with the device (its sockets,
    /// interface and stats) and returns whether it is done.
    pub fn run_until(&mut self, mut app: impl FnMut(&mut Device) -> bool) {
        let mut last_progress = std::time::Instant::now();
        let mut last_yield = last_progress;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let t = std::time::Instant::now();
            let progress = self.poll_at(t);
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
            if idle < SPIN {
                // Every SPIN_HOT of idling, let a peer sharing this core run
                // (devices often outnumber cores). A yield per poll would
                // cost a system call each round and halve bulk throughput.
                if t.saturating_duration_since(last_yield) >= SPIN_HOT {
                    std::thread::yield_now();
                    last_yield = t;
                } else {
                    std::hint::spin_loop();
                }
            } else {
                self.wait(MAX_SLEEP);
                last_progress = std::time::Instant::now() - SPIN_HOT;
            }
        }
        *self.shared.function_counters.lock() = hook::counters_of(self.nic.function.as_ref());
    }

    /// Runs until stopped.
    pub fn run(&mut self) {
        self.run_until(|_| false);
    }

    /// Moves the device to its own thread; returns a handle and the thread.
    pub fn spawn(mut self) -> (DeviceHandle, std::thread::JoinHandle<Device>) {
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

impl Drop for Device {
    fn drop(&mut self) {
        let (f, mut cx) = self.function_cx();
        f.detach(&mut cx);
    }
}
