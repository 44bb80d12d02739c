//! Running a whole topology: every device of a topology file as a thread of
//! this process, or each as its own `shmnet device` process.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::config::{DeviceSettings, RunMode, Topology};
use crate::shm::SegmentKind;
use crate::stack::{Device, DeviceHandle, DeviceStats};

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
}

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    /// Report lines, prefixed with the device name.
    pub reports: Vec<String>,
    /// Counters of every device at the end (thread mode).
    pub stats: Vec<DeviceStats>,
    /// Whether every probe reported success.
    pub ok: bool,
}

fn stopped(opts: &RunOptions) -> bool {
    opts.stop
        .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
}

fn has_job(d: &DeviceSettings) -> bool {
    matches!(d.function, crate::functions::FunctionConfig::Probe(_))
}

/// Runs a topology and returns its reports. `on_line` sees each report
/// line as it appears (the CLI prints them).
pub fn run(
    topo: &Topology,
    opts: &RunOptions,
    mut on_line: impl FnMut(&str),
) -> Result<RunOutcome, Box<dyn std::error::Error + Send + Sync>> {
    match opts.mode.unwrap_or(topo.mode) {
        RunMode::Thread => run_threads(topo, opts, &mut on_line),
        RunMode::Process => run_processes(topo, opts, &mut on_line),
    }
}

fn run_threads(
    topo: &Topology,
    opts: &RunOptions,
    on_line: &mut dyn FnMut(&str),
) -> Result<RunOutcome, Box<dyn std::error::Error + Send + Sync>> {
    // Servers first, so probes find them listening.
    let mut order: Vec<&DeviceSettings> = topo.devices.iter().collect();
    order.sort_by_key(|d| has_job(d));
    let mut running: Vec<(DeviceHandle, std::thread::JoinHandle<Device>, bool)> = Vec::new();
    for d in order {
        let dev = Device::new(d, SegmentKind::Process)?;
        let (h, t) = dev.spawn();
        running.push((h, t, has_job(d)));
    }
    let started = Instant::now();
    let mut out = RunOutcome {
        ok: true,
        ..Default::default()
    };
    let any_job = running.iter().any(|r| r.2);
    loop {
        for (h, _, _) in &running {
            for line in h.take_report() {
                if line.contains("timed out")
                    || line.contains("CORRUPTED")
                    || line.contains("NOT BLOCKED")
                    || line.contains("cannot")
                {
                    out.ok = false;
                }
                let line = format!("{}: {line}", h.name());
                on_line(&line);
                out.reports.push(line);
            }
        }
        let jobs_done = any_job && running.iter().filter(|r| r.2).all(|r| r.0.finished());
        let time_up = opts.duration.is_some_and(|d| started.elapsed() >= d) || stopped(opts);
        if jobs_done || time_up {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (h, _, _) in &running {
        for line in h.take_report() {
            let line = format!("{}: {line}", h.name());
            on_line(&line);
            out.reports.push(line);
        }
        h.stop();
    }
    for (h, t, _) in running {
        let dev = t
            .join()
            .map_err(|_| format!("device {} panicked", h.name()))?;
        out.stats.push(dev.stats());
    }
    Ok(out)
}

fn run_processes(
    topo: &Topology,
    opts: &RunOptions,
    on_line: &mut dyn FnMut(&str),
) -> Result<RunOutcome, Box<dyn std::error::Error + Send + Sync>> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("shmnet-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut order: Vec<(usize, &DeviceSettings)> = topo.devices.iter().enumerate().collect();
    order.sort_by_key(|(_, d)| has_job(d));
    let mut children: Vec<(String, Child, bool)> = Vec::new();
    for (i, d) in order {
        let file = match &topo.device_files[i] {
            Some(p) => p.clone(),
            None => {
                return Err(format!(
                    "device {:?} is inline; process mode needs each device in its own file",
                    d.name
                )
                .into());
            }
        };
        let child = Command::new(&exe)
            .arg("device")
            .arg(&file)
            .stdout(std::process::Stdio::inherit())
            .spawn()?;
        children.push((d.name.clone(), child, has_job(d)));
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let mut ok = true;
    loop {
        let mut jobs_left = false;
        for (_, c, job) in children.iter_mut() {
            if *job {
                match c.try_wait()? {
                    Some(st) => ok &= st.success(),
                    None => jobs_left = true,
                }
            }
        }
        let any_job = children.iter().any(|c| c.2);
        if (any_job && !jobs_left)
            || opts.duration.is_some_and(|d| started.elapsed() >= d)
            || stopped(opts)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (name, c, _) in children.iter_mut() {
        if c.try_wait()?.is_none() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(c.id() as i32).expect("child pid"),
                rustix::process::Signal::TERM,
            );
        }
        let _ = c.wait();
        on_line(&format!("{name}: exited"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RunOutcome {
        ok,
        ..Default::default()
    })
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
