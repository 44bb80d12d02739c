//! Idle devices (`bench idle`): the CPU that N idle devices on one pair of
//! networks use together, and the round trip of a datagram that has to
//! wake one, against a blocking kernel UDP echo.
//!
//! The devices are echo servers, threads of this process (`--mode
//! thread`, process-local segments) or `shmnet device` processes (`--mode
//! process`, named host segments), started one after another so each joins
//! the segments the first created. Once all are up and have settled, the
//! CPU they use is read before and after a window of `--seconds`: this
//! process's CPU time in thread mode; in process mode the sum over every
//! device process of its threads' run time (`/proc/PID/task/*/schedstat`,
//! in nanoseconds), and of its `utime + stime` (`/proc/PID/stat`, in
//! clock ticks: too coarse alone for a short window). Then a client device
//! of this process measures round trips to the first of them. Device
//! processes are stopped and reaped however the bench ends.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmnet::config::DeviceSettings;
use shmnet::shm::SegmentKind;
use shmnet::stack::{DeviceHandle, NetDevice};
use shmnet::testing::DeviceToml;
use smoltcp::iface::SocketHandle;
use smoltcp::wire::IpAddress;

use super::kernel::kernel_idle_rtt;
use super::peer::{Unlink, spawn_shmnet};
use super::report::median;
use super::{Mode, Res, unique};

/// What `bench idle` prints.
#[derive(serde::Serialize)]
struct IdleReport {
    bench: &'static str,
    mode: &'static str,
    /// Idle devices measured.
    devices: usize,
    /// The window CPU use was measured over.
    seconds: f64,
    /// CPU the devices used together, in percent of one CPU: this
    /// process's CPU time, or the device processes' summed to the
    /// nanosecond (`schedstat`) where the kernel keeps it.
    idle_cpu_percent: f64,
    idle_cpu_percent_per_device: f64,
    /// Process mode: the same from `utime + stime` in clock ticks, coarse
    /// for short windows (an idle device uses well under a tick a second).
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_cpu_percent_stat: Option<f64>,
    /// Datagram size of the round trips.
    size: usize,
    /// Round trip after 20 ms of silence (the device asleep), µs.
    shmnet: f64,
    /// The same through the kernel (a blocking UDP echo thread), µs.
    kernel: f64,
    unit: &'static str,
    /// > 1: shmnet wakes faster than the kernel path.
    ratio: f64,
    /// Round trip back to back (the device awake), µs.
    busy_rtt_us: f64,
    /// What sleeping adds to a round trip, µs.
    wake_us: f64,
    /// Round trips of each kind.
    count: u64,
}

/// Options of `bench idle`.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdleArgs {
    pub(super) devices: usize,
    pub(super) mode: Mode,
    pub(super) seconds: Option<f64>,
    pub(super) count: Option<u64>,
}

/// Most idle devices one /24 holds next to the client.
const MAX_DEVICES: usize = 250;
/// How long devices get after starting before the window opens.
const SETTLE: Duration = Duration::from_secs(1);
/// How long a device process may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long device processes get to detach after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One UDP round trip from `dev` to the echo server; returns microseconds.
fn udp_round_trip(dev: &mut NetDevice, h: SocketHandle, payload: &[u8]) -> Res<f64> {
    use smoltcp::socket::udp;
    let start = Instant::now();
    let mut sent = false;
    let mut got = false;
    let mut buf = [0u8; 64];
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<udp::Socket>(h);
        if !sent {
            sent = s
                .send_slice(payload, (IpAddress::v4(10, 0, 0, 2), 7))
                .is_ok();
        }
        while let Ok((n, _)) = s.recv_slice(&mut buf) {
            got |= buf[..n] == *payload;
        }
        got || start.elapsed() > Duration::from_secs(5)
    });
    if !got {
        return Err("no echo within 5 s".into());
    }
    Ok(start.elapsed().as_secs_f64() * 1e6)
}

/// Sleeps for `d`, or fails when the user asks the bench to stop.
fn sleep(d: Duration) -> Res<()> {
    let until = Instant::now() + d;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if crate::shutting_down() {
            return Err("interrupted".into());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    Ok(())
}

/// Idle devices as threads of this process; stopped and joined when
/// dropped.
struct Threads(Vec<(DeviceHandle, Option<std::thread::JoinHandle<NetDevice>>)>);

impl Drop for Threads {
    fn drop(&mut self) {
        for (h, _) in &self.0 {
            h.stop();
        }
        for (_, t) in &mut self.0 {
            if let Some(t) = t.take() {
                let _ = t.join();
            }
        }
    }
}

/// Idle devices as `shmnet device` processes and the directory of their
/// files. Dropping it stops and reaps every process and removes the
/// directory, however the bench ends.
struct Processes {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Processes {
    /// Starts one `shmnet device` per settings, each once the one before
    /// is ready (joins never race the first device's create).
    fn start(devices: &[DeviceToml]) -> Res<Processes> {
        let dir = std::env::temp_dir().join(unique("idle"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut fleet = Processes {
            dir,
            children: Vec::new(),
        };
        for (i, d) in devices.iter().enumerate() {
            let file = fleet.dir.join(format!("idle{i}.toml"));
            std::fs::write(&file, d.to_string()).map_err(|e| format!("{}: {e}", file.display()))?;
            let mut child = spawn_shmnet("device", [&file], Stdio::null())?;
            let out = child.stdout.take().expect("piped stdout");
            fleet.children.push(child);
            // A thread reads the ready line (a device that hangs must not
            // hang the bench), then drains what the device prints at exit.
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
            let t0 = Instant::now();
            loop {
                if crate::shutting_down() {
                    return Err("interrupted".into());
                }
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(line) if line.starts_with("device ") && line.contains(" ready") => break,
                    Ok(_) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(format!("device {i} exited before it was ready"));
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) if t0.elapsed() > READY_WITHIN => {
                        return Err(format!("device {i} not ready within {READY_WITHIN:?}"));
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
        }
        Ok(fleet)
    }

    /// Fails if any device process has exited (its CPU would be missing).
    fn all_alive(&mut self) -> Res<()> {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Some(st) = c.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("device {i} exited during the bench ({st})"));
            }
        }
        Ok(())
    }

    /// CPU time all device processes have used: `utime + stime` from
    /// `/proc/PID/stat`, and the same to the nanosecond from every
    /// thread's `schedstat` when the kernel keeps it.
    fn cpu_time(&self) -> Res<CpuTime> {
        let per_second = rustix::param::clock_ticks_per_second();
        let mut ticks = 0u64;
        let mut precise = Some(Duration::ZERO);
        for c in &self.children {
            let path = format!("/proc/{}/stat", c.id());
            let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
            ticks += utime_plus_stime(&stat).ok_or_else(|| format!("{path}: unexpected format"))?;
            precise = precise.zip(threads_cpu_time(c.id())).map(|(a, b)| a + b);
        }
        Ok(CpuTime {
            ticks: Duration::from_secs_f64(ticks as f64 / per_second as f64),
            precise,
        })
    }
}

/// CPU time read two ways (see [`Processes::cpu_time`]).
#[derive(Debug, Clone, Copy)]
struct CpuTime {
    /// `utime + stime`, in clock ticks (10 ms each, typically).
    ticks: Duration,
    /// The sum of the threads' `schedstat` run times.
    precise: Option<Duration>,
}

/// The run time of every thread of process `pid`, from
/// `/proc/PID/task/*/schedstat` (nanoseconds, unlike the clock ticks of
/// `/proc/PID/stat`: an idle device uses well under a tick per second).
fn threads_cpu_time(pid: u32) -> Option<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(ns))
}

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &self.children {
            let pid = rustix::process::Pid::from_child(c);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let t0 = Instant::now();
        for c in &mut self.children {
            while matches!(c.try_wait(), Ok(None)) {
                if t0.elapsed() > STOP_GRACE {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `utime + stime` in clock ticks from the text of `/proc/PID/stat`.
fn utime_plus_stime(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses; fields
    // after its closing parenthesis start with field 3.
    let mut after = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let utime: u64 = after.nth(11)?.parse().ok()?;
    let stime: u64 = after.next()?.parse().ok()?;
    Some(utime + stime)
}

/// This process's CPU time (every thread).
fn process_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

pub(super) fn bench_idle(args: IdleArgs, quick: bool) -> Res<String> {
    use smoltcp::socket::udp;
    let IdleArgs {
        devices,
        mode,
        seconds,
        count,
    } = args;
    if !(1..=MAX_DEVICES).contains(&devices) {
        return Err(format!("--devices must be 1..={MAX_DEVICES}"));
    }
    let window = match seconds {
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
        Some(s) => return Err(format!("--seconds {s}: give a positive number")),
        None if quick => Duration::from_secs(1),
        None => Duration::from_secs(5),
    };
    let n = count.unwrap_or(if quick { 10 } else { 50 }).max(1);
    let gap = Duration::from_millis(20);
    let (lan, wan) = (unique("lan"), unique("wan"));
    // Dropped last: removes the host segments if the devices did not.
    let _unlink = Unlink(if mode == Mode::Process {
        vec![lan.clone(), wan.clone()]
    } else {
        Vec::new()
    });
    // Every device and the client on each segment, whatever max_ports
    // defaults to.
    let ports = (devices as u32 + 1).max(32);
    let device = |name: &str, host: u8, function: &str| {
        DeviceToml::host(name, &lan, &wan, host)
            .max_ports(ports)
            .function(function)
    };
    let echoes: Vec<DeviceToml> = (0..devices)
        .map(|i| {
            device(
                &format!("idle-{i}"),
                i as u8 + 2,
                "{ kind = \"echo\", port = 7 }",
            )
        })
        .collect();
    let (kind, mut threads, mut processes) = match mode {
        Mode::Thread => {
            let mut threads = Threads(Vec::new());
            for d in &echoes {
                let s: DeviceSettings = d.parse().map_err(|e| e.to_string())?;
                let (h, t) = NetDevice::new(&s, SegmentKind::InProcess)
                    .map_err(|e| e.to_string())?
                    .spawn();
                threads.0.push((h, Some(t)));
            }
            (SegmentKind::InProcess, Some(threads), None)
        }
        Mode::Process => (SegmentKind::Shared, None, Some(Processes::start(&echoes)?)),
    };
    let mut client = NetDevice::new(
        &device("idle-client", 1, "{ kind = \"passthrough\" }")
            .parse()
            .map_err(|e| e.to_string())?,
        kind,
    )
    .map_err(|e| e.to_string())?;
    let mut sock = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
    );
    sock.bind(40000).map_err(|e| e.to_string())?;
    let h = client.sockets().add(sock);
    let payload = [0x42u8; 8];
    // Warm up (neighbours, first wake), then let every device fall asleep.
    for _ in 0..3 {
        udp_round_trip(&mut client, h, &payload)?;
    }
    sleep(SETTLE)?;
    let cpu = |p: &Option<Processes>| match p {
        Some(p) => p.cpu_time(),
        None => Ok(CpuTime {
            ticks: process_cpu_time(),
            precise: Some(process_cpu_time()),
        }),
    };
    let c0 = cpu(&processes)?;
    let t0 = Instant::now();
    sleep(window)?;
    let c1 = cpu(&processes)?;
    let elapsed = t0.elapsed();
    if let Some(p) = &mut processes {
        p.all_alive()?;
    }
    let percent = |used: Duration| used.as_secs_f64() / elapsed.as_secs_f64() * 100.0;
    let from_stat = percent(c1.ticks.saturating_sub(c0.ticks));
    let idle_cpu = match (c0.precise, c1.precise) {
        (Some(a), Some(b)) => percent(b.saturating_sub(a)),
        _ => from_stat,
    };
    let mut busy = Vec::new();
    for _ in 0..n {
        busy.push(udp_round_trip(&mut client, h, &payload)?);
    }
    let mut idle = Vec::new();
    for _ in 0..n {
        std::thread::sleep(gap);
        idle.push(udp_round_trip(&mut client, h, &payload)?);
    }
    drop(client);
    drop(threads.take());
    drop(processes.take());
    let (busy_rtt, idle_rtt) = (median(&mut busy), median(&mut idle));
    let kernel = kernel_idle_rtt(n, gap)?;
    let report = IdleReport {
        bench: "idle",
        mode: mode.name(),
        devices,
        seconds: elapsed.as_secs_f64(),
        idle_cpu_percent: idle_cpu,
        idle_cpu_percent_per_device: idle_cpu / devices as f64,
        idle_cpu_percent_stat: (mode == Mode::Process).then_some(from_stat),
        size: payload.len(),
        shmnet: idle_rtt,
        kernel,
        unit: "us round trip after 20 ms idle",
        ratio: kernel / idle_rtt,
        busy_rtt_us: busy_rtt,
        wake_us: (idle_rtt - busy_rtt).max(0.0),
        count: n,
    };
    serde_json::to_string(&report).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_an_awkward_command_name() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 120 0 0 0 17 5 0 0 20 0 1 0 99";
        assert_eq!(utime_plus_stime(stat), Some(22));
        assert_eq!(utime_plus_stime("4242 (a) S 1"), None);
    }
}
