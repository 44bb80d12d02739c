//! Running a whole topology: every device of a topology file as a thread of
//! this process ([`run`] in thread mode), or each as its own process
//! ([`run`] in process mode, starting [`RunOptions::child`] per device); and
//! running one device as this process ([`run_device`], what
//! `shmnet device FILE` does).
//!
//! # Process mode in your own program
//!
//! Each device process is started as `PROGRAM ARGS… FILE` (see
//! [`ChildCommand`]); by default that is the `shmnet` binary's
//! `shmnet device FILE`. A program with its own function kinds
//! ([`crate::functions::register`]) names itself instead and, when started
//! that way, registers its kinds and calls [`run_device`]:
//!
//! ```no_run
//! use shmnet::config::{DeviceConfig, RunMode};
//! use shmnet::topology::{ChildCommand, RunOptions, run_device, run_file};
//!
//! fn main() {
//!     // register_my_kinds();
//!     let args: Vec<String> = std::env::args().collect();
//!     if args.len() == 3 && args[1] == "--device" {
//!         // A child: run the one device until it is done or killed.
//!         let cfg = DeviceConfig::load(args[2].as_ref()).expect("device file");
//!         let out = run_device(&cfg, &RunOptions::default(), |l| println!("{l}"));
//!         std::process::exit(if out.is_ok_and(|o| o.ok) { 0 } else { 1 });
//!     }
//!     let opts = RunOptions {
//!         mode: Some(RunMode::Process),
//!         child: Some(ChildCommand::new(std::env::current_exe().unwrap()).arg("--device")),
//!         ..Default::default()
//!     };
//!     let out = run_file("topology.toml".as_ref(), &opts, |l| println!("{l}")).unwrap();
//!     for exit in &out.exits {
//!         println!("{}: {:?}", exit.device, exit.status);
//!     }
//!     assert!(out.ok, "{:?}", out.failures);
//! }
//! ```
//!
//! Devices with a finite job (probes) start last and the run ends once
//! every job is done (or after [`RunOptions::duration`], or when
//! [`RunOptions::stop`] is set). A run is ok only if every probe completed
//! without a failed exchange and no device process exited with an error;
//! [`RunOutcome::failures`] says what went wrong. Devices still running
//! when a run ends — normally, on an error half way, or in a panic — are
//! stopped: threads are joined, processes get SIGTERM (then SIGKILL) and
//! are reaped.
//!
//! ```no_run
//! use shmnet::topology::{RunOptions, run_file};
//! let out = run_file("examples/sample/topology.toml".as_ref(), &RunOptions::default(), |line| {
//!     println!("{line}")
//! })
//! .expect("the topology loads and its devices start");
//! for why in &out.failures {
//!     eprintln!("{why}");
//! }
//! assert!(out.ok);
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::config::{DeviceSettings, RunMode, Topology};
use crate::management::{Agent, Management};
use crate::shm::SegmentKind;
use crate::stack::{DeviceError, DeviceHandle, DeviceStats, NetDevice};

/// How long a device process gets to detach after SIGTERM before it is
/// killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Options of [`run`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop when this becomes true (e.g. set by a signal handler).
    pub stop: Option<&'static std::sync::atomic::AtomicBool>,
    /// Stop after this long (default: when every probe finished, or never
    /// if there is none).
    pub duration: Option<Duration>,
    /// Override the topology's mode.
    pub mode: Option<RunMode>,
    /// Process mode: the program each device process runs (default:
    /// [`ChildCommand::shmnet`]).
    pub child: Option<ChildCommand>,
    /// Managers' policies only decide and log (their `dry_run`).
    pub dry_run: bool,
}

/// The command a process-mode run starts for each device: `program`, then
/// `args`, then the path of the device's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildCommand {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the device file.
    pub args: Vec<OsString>,
    /// Environment variables set for the child (on top of this process's).
    pub env: Vec<(OsString, OsString)>,
}

impl ChildCommand {
    /// `program ARGS… FILE`, with no arguments yet.
    pub fn new(program: impl Into<PathBuf>) -> ChildCommand {
        ChildCommand {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> ChildCommand {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Adds an argument before the device file.
    pub fn arg(mut self, a: impl Into<OsString>) -> ChildCommand {
        self.args.push(a.into());
        self
    }

    /// `shmnet device FILE`. The binary is `$SHMNET_BIN` if set, else this
    /// program if it is `shmnet`, else a `shmnet` next to this program
    /// (cargo's `target/<profile>/`, also from its `deps/`), else `shmnet`
    /// from `PATH`.
    pub fn shmnet() -> ChildCommand {
        ChildCommand::new(shmnet_binary()).arg("device")
    }
}

/// Where [`ChildCommand::shmnet`] finds the binary.
fn shmnet_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SHMNET_BIN") {
        return p.into();
    }
    if let Ok(exe) = std::env::current_exe() {
        if exe.file_name().is_some_and(|n| n == "shmnet") {
            return exe;
        }
        let dir = exe.parent();
        let beside = dir.map(|d| d.join("shmnet"));
        let above = dir.and_then(|d| d.parent()).map(|d| d.join("shmnet"));
        if let Some(p) = [beside, above].into_iter().flatten().find(|p| p.is_file()) {
            return p;
        }
    }
    "shmnet".into()
}

/// How one device process of a process-mode run ended.
#[derive(Debug, Clone)]
pub struct DeviceExit {
    /// The device's name.
    pub device: String,
    /// Its exit status (`None` if it could not be reaped).
    pub status: Option<ExitStatus>,
    /// The run stopped it (SIGTERM) rather than it ending on its own.
    pub stopped_by_run: bool,
}

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    /// Report lines, prefixed with the device name.
    pub reports: Vec<String>,
    /// Counters of every device at the end (thread mode, and
    /// [`run_device`]).
    pub stats: Vec<DeviceStats>,
    /// How each device process ended (process mode), in start order.
    pub exits: Vec<DeviceExit>,
    /// Whether the run succeeded: `failures` is empty.
    pub ok: bool,
    /// Why the run failed, one line per device: a probe that failed or
    /// never completed, a device process that exited with an error.
    pub failures: Vec<String>,
}

impl RunOutcome {
    fn new(reports: Vec<String>, stats: Vec<DeviceStats>, failures: Vec<String>) -> RunOutcome {
        RunOutcome {
            reports,
            stats,
            exits: Vec::new(),
            ok: failures.is_empty(),
            failures,
        }
    }
}

fn stopped(opts: &RunOptions) -> bool {
    opts.stop
        .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
}

/// Runs a topology and returns its reports. `on_line` sees each report
/// line as it appears (the CLI prints them).
pub fn run(
    topo: &Topology,
    opts: &RunOptions,
    mut on_line: impl FnMut(&str),
) -> Result<RunOutcome, Box<dyn std::error::Error + Send + Sync>> {
    let mode = opts.mode.unwrap_or(topo.mode);
    let mut mgmt = Management::resolve(&topo.management, &topo.name);
    mgmt.dry_run = opts.dry_run;
    let key = management_key(&mgmt)?;
    let topo = &with_management(topo, &mgmt);
    // TAP ports and gateways first: a missing privilege or a bad address
    // fails the run before any device starts.
    let mut bridges = Bridges::start_taps(topo, mode, &mut on_line)?;
    bridges.start_vxlans(topo, mode, &mut on_line)?;
    let out = match mode {
        RunMode::Thread => run_threads(topo, opts, key.as_ref().map(|k| (&mgmt, k)), &mut on_line),
        RunMode::Process => run_processes(topo, opts, &mgmt, &mut on_line),
    };
    bridges.stop(&mut on_line);
    out
}

/// The secret of a run whose devices run agents (`None`: they do not).
fn management_key(
    m: &Management,
) -> Result<Option<std::sync::Arc<crate::wire::mgmt::Key>>, Box<dyn std::error::Error + Send + Sync>>
{
    if !m.enabled {
        return Ok(None);
    }
    m.key()
        .map(Some)
        .map_err(|e| format!("management secret: {e}").into())
}

/// The topology with its management settings handed to each device (and
/// to a manager, which needs the secret and the agents' port).
fn with_management(topo: &Topology, m: &Management) -> Topology {
    let mut t = topo.clone();
    for d in &mut t.devices {
        d.management = crate::config::ManagementConfig {
            enabled: Some(m.enabled),
            agent_port: Some(m.agent_port),
            secret_file: Some(m.secret_file.clone()),
        };
        crate::management::inform_manager(d, m);
    }
    t
}

/// Runs `dev` on this thread until `done` says so, with its agent when the
/// device has one.
fn run_managed(
    dev: &mut NetDevice,
    agent: Option<(Agent, u16)>,
    mut done: impl FnMut(&mut NetDevice) -> bool,
) {
    match agent {
        Some((mut agent, port)) => {
            dev.set_management_port(Some(port));
            dev.run_until(|dev| {
                agent.poll(dev);
                done(dev)
            });
            agent.close(dev);
        }
        None => dev.run_until(done),
    }
}

/// The segment kind of a run's networks.
fn segment_kind(mode: RunMode) -> SegmentKind {
    match mode {
        RunMode::Thread => SegmentKind::InProcess,
        RunMode::Process => SegmentKind::Shared,
    }
}

/// The running TAP ports and VXLAN gateways of a topology (bridges in this
/// process); TAP interfaces go when the ports stop or this process dies.
struct Bridges(Vec<(String, crate::adapters::bridge::BridgeHandle)>);

impl Bridges {
    /// Opens every VXLAN gateway and bridges it to its segment as the
    /// segment's uplink.
    fn start_vxlans(
        &mut self,
        topo: &Topology,
        mode: RunMode,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        use crate::adapters::bridge::Bridge;
        use crate::adapters::shm::{ShmAdapter, ShmOptions};
        use crate::adapters::vxlan::VxlanAdapter;
        use crate::adapters::{Adapter, Neighbour};
        for v in &topo.vxlans {
            let name = format!("vxlan:{}", v.settings.vni);
            let mac = smoltcp::wire::EthernetAddress(crate::shm::PortInfo::named(&name).mac);
            let tunnel = VxlanAdapter::open(v.settings.clone(), mac)?;
            let me = Neighbour {
                mac,
                ipv4: None,
                ipv6: None,
            };
            let options = ShmOptions {
                uplink: true,
                ..ShmOptions::default()
            };
            let port = ShmAdapter::join(
                &v.network.segment,
                segment_kind(mode),
                &v.network.params(),
                &name,
                me,
                options,
            )?;
            let remotes: Vec<String> = v.settings.remotes.iter().map(|r| r.to_string()).collect();
            on_line(&format!(
                "vxlan gateway ready: {} vni {} to {} for {} ({})",
                v.settings.local,
                v.settings.vni,
                remotes.join(", "),
                v.network.segment,
                port.describe()
            ));
            let bridge = Bridge::new(Box::new(tunnel), Box::new(port)).spawn(&name)?;
            self.0.push((name, bridge));
        }
        Ok(())
    }

    #[cfg(feature = "tap")]
    fn start_taps(
        topo: &Topology,
        mode: RunMode,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<Bridges, Box<dyn std::error::Error + Send + Sync>> {
        use crate::adapters::bridge::Bridge;
        use crate::adapters::shm::{ShmAdapter, ShmOptions};
        use crate::adapters::tap::TapAdapter;
        use crate::adapters::{Adapter, Neighbour};
        let kind = segment_kind(mode);
        let mut ports = Bridges(Vec::new());
        for t in &topo.taps {
            let tap = TapAdapter::open(&t.name, t.network.mtu, t.address)?;
            let me = Neighbour {
                mac: tap.mac(),
                ipv4: Some(t.address.address()),
                ipv6: None,
            };
            let options = ShmOptions::default();
            let port_name = format!("tap:{}", t.name);
            let port = ShmAdapter::join(
                &t.network.segment,
                kind,
                &t.network.params(),
                &port_name,
                me,
                options,
            )?;
            on_line(&format!(
                "tap {} ready: {} ({}, MTU {}) on {} ({})",
                t.name,
                t.address,
                tap.mac(),
                t.network.mtu,
                t.network.segment,
                port.describe()
            ));
            let bridge = Bridge::new(Box::new(tap), Box::new(port)).spawn(&t.name)?;
            ports.0.push((format!("tap {}", t.name), bridge));
        }
        Ok(ports)
    }

    #[cfg(not(feature = "tap"))]
    fn start_taps(
        topo: &Topology,
        _mode: RunMode,
        _on_line: &mut dyn FnMut(&str),
    ) -> Result<Bridges, Box<dyn std::error::Error + Send + Sync>> {
        match topo.taps.first() {
            Some(t) => Err(format!(
                "TAP port {}: this program was built without TAP support",
                t.name
            )
            .into()),
            None => Ok(Bridges(Vec::new())),
        }
    }

    /// Stops every bridge (removing TAP interfaces) and reports what
    /// crossed it.
    fn stop(self, on_line: &mut dyn FnMut(&str)) {
        for (name, bridge) in self.0 {
            let [outside, _] = bridge.stats();
            on_line(&format!(
                "{name}: {} frames in, {} out; {} malformed, {} from unlisted peers",
                outside.rx_frames, outside.tx_frames, outside.rx_malformed, outside.peers_rejected
            ));
            drop(bridge.stop());
        }
    }
}

/// `name [kind]`, as the stats lines name a device.
fn label(d: &DeviceSettings) -> String {
    format!("{} [{}]", d.name, d.function.kind())
}

/// The devices of a thread-mode run; stopped and joined when dropped.
struct Threads(Vec<(DeviceHandle, Option<JoinHandle<NetDevice>>, bool)>);

impl Drop for Threads {
    fn drop(&mut self) {
        for (h, _, _) in &self.0 {
            h.stop();
        }
        for (_, t, _) in &mut self.0 {
            if let Some(t) = t.take() {
                let _ = t.join();
            }
        }
    }
}

fn run_threads(
    topo: &Topology,
    opts: &RunOptions,
    mgmt: Option<(&Management, &std::sync::Arc<crate::wire::mgmt::Key>)>,
    on_line: &mut dyn FnMut(&str),
) -> Result<RunOutcome, Box<dyn std::error::Error + Send + Sync>> {
    // Servers first, so probes find them listening.
    let mut order: Vec<&DeviceSettings> = topo.devices.iter().collect();
    order.sort_by_key(|d| d.function.has_job());
    let mut running = Threads(Vec::new());
    for d in &order {
        let mut dev = NetDevice::new(*d, SegmentKind::InProcess)?;
        let agent = mgmt.map(|(m, k)| (Agent::new(d, k.clone(), m.agent_port), m.agent_port));
        let h = dev.handle();
        let t = std::thread::Builder::new()
            .name(format!("dev-{}", d.name))
            .spawn(move || {
                run_managed(&mut dev, agent, |_| false);
                dev
            })?;
        running.0.push((h, Some(t), d.function.has_job()));
    }
    let started = Instant::now();
    let mut reports = Vec::new();
    let mut collect = |h: &DeviceHandle, reports: &mut Vec<String>| {
        for line in h.take_report() {
            let line = format!("{}: {line}", h.name());
            on_line(&line);
            reports.push(line);
        }
    };
    let any_job = running.0.iter().any(|r| r.2);
    loop {
        for (h, _, _) in &running.0 {
            collect(h, &mut reports);
        }
        let jobs_done = any_job && running.0.iter().filter(|r| r.2).all(|r| r.0.finished());
        let time_up = opts.duration.is_some_and(|d| started.elapsed() >= d) || stopped(opts);
        if jobs_done || time_up {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (h, _, _) in &running.0 {
        h.stop();
    }
    let mut stats = Vec::new();
    let mut failures = Vec::new();
    for ((h, t, job), d) in running.0.iter_mut().zip(&order) {
        let dev = t
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| format!("device {} panicked", h.name()))?;
        collect(h, &mut reports);
        let s = dev.stats();
        if *job && (h.failed() || !h.finished()) {
            let counters: Vec<String> = s
                .function_counters
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let what = if h.failed() {
                "failed"
            } else {
                "did not complete"
            };
            failures.push(format!("{} {what} ({})", label(d), counters.join(" ")));
        }
        stats.push(s);
    }
    Ok(RunOutcome::new(reports, stats, failures))
}

/// The device files of a process-mode run's inline devices.
struct InlineFiles(Option<PathBuf>);

impl InlineFiles {
    fn write(topo: &Topology) -> std::io::Result<InlineFiles> {
        if topo.inline.is_empty() {
            return Ok(InlineFiles(None));
        }
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("shmnet-run-{}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let files = InlineFiles(Some(dir));
        for (i, text) in &topo.inline {
            std::fs::write(files.path_of(*i), text)?;
        }
        Ok(files)
    }

    fn path_of(&self, i: usize) -> PathBuf {
        let dir = self.0.as_deref().unwrap_or(Path::new("."));
        dir.join(format!("device-{i}.toml"))
    }
}

impl Drop for InlineFiles {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// One device of a process-mode run.
struct DeviceProcess {
    name: String,
    /// `name [kind]`.
    label: String,
    job: bool,
    /// It watches the others and is on no packet's path (a manager): the
    /// topology still works without it, so its death does not stop the run.
    observer: bool,
    child: Child,
    status: Option<ExitStatus>,
    /// The run sent it SIGTERM.
    terminated: bool,
    /// It outlived [`STOP_GRACE`] after SIGTERM and was killed.
    killed: bool,
}

impl DeviceProcess {
    /// Takes the exit status if the process has ended.
    fn poll(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Why this device fails the run, if it does.
    fn failure(&self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        let label = &self.label;
        let status = self.status?;
        if self.killed {
            return Some(format!(
                "{label} did not stop within {} s of SIGTERM and was killed",
                STOP_GRACE.as_secs()
            ));
        }
        if status.success() {
            return None;
        }
        Some(match (self.job, self.terminated) {
            (true, true) => format!("{label} did not complete before the run stopped ({status})"),
            (true, false) => format!("{label} failed ({status})"),
            // SIGTERM before the device set up its handler: stopped as asked.
            (false, true) if status.signal() == Some(Signal::TERM.as_raw()) => return None,
            (false, true) => format!("{label} failed while stopping ({status})"),
            (false, false) => format!("{label} exited while the run went on ({status})"),
        })
    }
}

/// The device processes of a run. Dropping it stops and reaps every one
/// still running, so no device outlives the run, however it ends.
struct Children(Vec<DeviceProcess>);

impl Children {
    /// Sends SIGTERM to every device still running, waits up to `grace`
    /// for all to exit, then kills the rest.
    fn stop(&mut self, grace: Duration) {
        for p in &mut self.0 {
            if matches!(p.poll(), Ok(None)) {
                let pid = rustix::process::Pid::from_child(&p.child);
                let _ = rustix::process::kill_process(pid, Signal::TERM);
                p.terminated = true;
            }
        }
        let t0 = Instant::now();
        while self.0.iter_mut().any(|p| matches!(p.poll(), Ok(None))) {
            if t0.elapsed() >= grace {
                for p in &mut self.0 {
                    if matches!(p.poll(), Ok(None)) {
                        let _ = p.child.kill();
                        p.status = p.child.wait().ok();
                        p.killed = true;
                    }
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

fn run_processes(
    topo: &Topology,
    opts: &RunOptions,
    mgmt: &Management,
    on_line: &mut dyn FnMut(&str),
) -> Result<RunOutcome, Box<dyn std::error::Error + Send + Sync>> {
    // Inline devices are written out as device files, in a folder only
    // this user can read, removed with the run.
    let dir = InlineFiles::write(topo)?;
    let mut order = Vec::new();
    for (i, (d, file)) in topo.devices.iter().zip(&topo.device_files).enumerate() {
        let file = match file {
            Some(f) => f.clone(),
            None => dir.path_of(i),
        };
        order.push((d, file));
    }
    // Servers first, so probes find them listening.
    order.sort_by_key(|(d, _)| d.function.has_job());
    let command = opts.child.clone().unwrap_or_else(ChildCommand::shmnet);
    let mut children = Children(Vec::new());
    for (d, file) in order {
        let child = Command::new(&command.program)
            .args(&command.args)
            .arg(&file)
            .envs(mgmt.env())
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::inherit())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start device {:?} with {}: {e}",
                    d.name,
                    command.program.display()
                )
            })?;
        children.0.push(DeviceProcess {
            name: d.name.clone(),
            label: label(d),
            job: d.function.has_job(),
            observer: d.function.kind() == "manager",
            child,
            status: None,
            terminated: false,
            killed: false,
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let any_job = children.0.iter().any(|p| p.job);
    loop {
        let mut jobs_left = false;
        let mut died = false;
        for p in &mut children.0 {
            match p.poll()? {
                None => jobs_left |= p.job,
                // A device without a job runs until told to stop; one that
                // failed on its own leaves the topology broken (unless it
                // only watched: a manager can be restarted by hand, and its
                // death is reported when the run ends).
                Some(st) => died |= !p.job && !p.observer && !st.success(),
            }
        }
        if (any_job && !jobs_left)
            || died
            || opts.duration.is_some_and(|d| started.elapsed() >= d)
            || stopped(opts)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    children.stop(STOP_GRACE);
    let mut failures = Vec::new();
    let mut exits = Vec::new();
    for p in &children.0 {
        let name = &p.name;
        match p.status {
            Some(st) if !st.success() => on_line(&format!("{name}: exited ({st})")),
            _ => on_line(&format!("{name}: exited")),
        }
        failures.extend(p.failure());
        exits.push(DeviceExit {
            device: p.name.clone(),
            status: p.status,
            stopped_by_run: p.terminated,
        });
    }
    let mut out = RunOutcome::new(Vec::new(), Vec::new(), failures);
    out.exits = exits;
    Ok(out)
}

/// Runs one device as this process, on this thread: joins its networks as
/// shared segments (so devices of other processes reach it), reports
/// `ready` through `on_line`, then runs until its job is done (a probe),
/// [`RunOptions::stop`] is set or [`RunOptions::duration`] passes. Report
/// lines go to `on_line` as they appear, prefixed with the device name.
/// The outcome holds the device's counters and, if its job failed or did
/// not complete, why. `mode` and `child` are ignored.
///
/// This is `shmnet device FILE` without its signal handling: to stop
/// cleanly on SIGTERM (detaching from the networks), set a flag from a
/// signal handler and pass it as `stop`.
pub fn run_device(
    cfg: &DeviceSettings,
    opts: &RunOptions,
    mut on_line: impl FnMut(&str),
) -> Result<RunOutcome, DeviceError> {
    let mut cfg = cfg.clone();
    let mgmt = Management::resolve(&Management::from_env(&cfg.management), &cfg.name);
    crate::management::inform_manager(&mut cfg, &mgmt);
    let cfg = &cfg;
    let agent = if mgmt.enabled {
        let key = mgmt.key().map_err(|why| DeviceError::Management {
            device: cfg.name.clone(),
            why,
        })?;
        Some((Agent::new(cfg, key, mgmt.agent_port), mgmt.agent_port))
    } else {
        None
    };
    let mut dev = NetDevice::new(cfg, SegmentKind::Shared)?;
    on_line(&format!(
        "device {} ready: local {} on {} ({}), global {} on {} ({}), pid {}",
        cfg.name,
        cfg.local.v4,
        cfg.local.segment,
        dev.nic().local().describe(),
        cfg.global.v4,
        cfg.global.segment,
        dev.nic().global().describe(),
        std::process::id()
    ));
    let started = Instant::now();
    let h = dev.handle();
    let mut reports = Vec::new();
    let mut collect = |reports: &mut Vec<String>| {
        for line in h.take_report() {
            let line = format!("{}: {line}", cfg.name);
            on_line(&line);
            reports.push(line);
        }
    };
    run_managed(&mut dev, agent, |_| {
        collect(&mut reports);
        h.finished() || stopped(opts) || opts.duration.is_some_and(|t| started.elapsed() >= t)
    });
    collect(&mut reports);
    let mut failures = Vec::new();
    if h.failed() {
        failures.push(format!("{} failed", label(cfg)));
    } else if cfg.function.has_job() && !h.finished() {
        failures.push(format!("{} stopped before it completed", label(cfg)));
    }
    Ok(RunOutcome::new(reports, vec![dev.stats()], failures))
}

/// Loads and runs a topology file.
pub fn run_file(
    path: &Path,
    opts: &RunOptions,
    on_line: impl FnMut(&str),
) -> Result<RunOutcome, Box<dyn std::error::Error + Send + Sync>> {
    let topo = Topology::load(path)?;
    run(&topo, opts, on_line)
}
