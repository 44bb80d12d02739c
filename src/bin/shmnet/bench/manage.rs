//! Management (`bench manage`): what a manager costs the data path, how
//! long a request to an agent and to the manager's API takes, and how soon
//! a policy rule puts a new function in place. Devices are threads, every
//! chain device runs its agent (as in any topology), and the bench's own
//! client devices speak to agents and manager over the shared-memory
//! networks; no root needed.
//!
//! 1. TCP through client → firewall → server without a manager, then with
//!    one polling the three agents every second while a scraper device
//!    GETs `/metrics` every second; runs alternate in pairs (5 of 4 s, one
//!    of 2 s with `--quick`; the machine is noisy) and medians are
//!    compared.
//! 2. Sealed `Counters` requests back to back over one session to the
//!    firewall's agent, then `GET /api/devices` to the manager.
//! 3. A policy rule `rate(chain-0:frames_in, 1s) > 1000` that swaps the
//!    middle device's passthrough for a firewall: from the start of
//!    traffic to the agent having applied the change, per poll interval.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shmnet::config::DeviceSettings;
use shmnet::management::{Agent, DEFAULT_AGENT_PORT, Management};
use shmnet::shm::SegmentKind;
use shmnet::stack::{DeviceHandle, NetDevice};
use shmnet::testing::DeviceToml;
use shmnet::wire::mgmt::{self, Key, Kind, MgmtRepr, Op, Status};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use super::chain::chain_configs;
use super::function::chain_functions;
use super::report::median;
use super::{PORT, Res, SOCK_BUF, TIMEOUT, unique};

const API_PORT: u16 = 9100;
/// The manager's address on the client's network (it is on both of a
/// one-device chain's networks).
const MANAGER_LOCAL: [u8; 4] = [10, 10, 0, 100];
const CHAIN: [&str; 3] = ["chain-client", "chain-0", "chain-server"];
/// Socket buffers of the management clients: answers are a few KiB.
const SMALL_BUF: usize = 256 << 10;
/// How long the bench waits for the manager to see every device up.
const READY: Duration = Duration::from_secs(15);

fn ip(a: [u8; 4]) -> IpAddress {
    IpAddress::v4(a[0], a[1], a[2], a[3])
}

/// The run's management secret, in a file of its own (the manager reads
/// it from there); removed when dropped.
struct Secret {
    path: PathBuf,
    key: Arc<Key>,
}

impl Secret {
    fn new() -> Res<Secret> {
        let path = std::env::temp_dir().join(format!("{}.secret", unique("manage")));
        let m = Management {
            enabled: true,
            agent_port: DEFAULT_AGENT_PORT,
            secret_file: path.clone(),
            dry_run: false,
        };
        Ok(Secret {
            key: m.key()?,
            path,
        })
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How a device thread waits between rounds.
#[derive(Clone, Copy)]
enum Pace {
    /// The device's own loop (spins, then sleeps on doorbells).
    Run,
    /// Polls, then sleeps this long when nothing moved: for apps that act
    /// on the clock (a scraper, a paced sender), which the device's own
    /// sleep (up to a second with nothing due) would hold up.
    Tick(Duration),
}

/// Devices on threads; stopped and joined when dropped.
#[derive(Default)]
struct Rig(Vec<(DeviceHandle, JoinHandle<()>)>);

impl Drop for Rig {
    fn drop(&mut self) {
        for (h, _) in &self.0 {
            h.stop();
        }
        for (_, t) in self.0.drain(..) {
            let _ = t.join();
        }
    }
}

type App = Box<dyn FnMut(&mut NetDevice, Option<&Agent>) -> bool + Send>;

impl Rig {
    /// Starts the device `cfg` on a thread, with its agent when `key` is
    /// given; `app` runs after every round. Returns its handle.
    fn spawn(
        &mut self,
        cfg: &DeviceSettings,
        key: Option<&Arc<Key>>,
        pace: Pace,
        app: App,
    ) -> Res<DeviceHandle> {
        self.spawn_counted(cfg, key, pace, None, app)
    }

    /// [`Rig::spawn`]; with `cpu`, the thread adds the CPU time it used
    /// (ns) there when it ends.
    fn spawn_counted(
        &mut self,
        cfg: &DeviceSettings,
        key: Option<&Arc<Key>>,
        pace: Pace,
        cpu: Option<Arc<AtomicU64>>,
        mut app: App,
    ) -> Res<DeviceHandle> {
        let mut dev = NetDevice::new(cfg, SegmentKind::InProcess).map_err(|e| e.to_string())?;
        let mut agent = key.map(|k| Agent::new(cfg, k.clone(), DEFAULT_AGENT_PORT));
        if agent.is_some() {
            dev.set_management_port(Some(DEFAULT_AGENT_PORT));
        }
        let h = dev.handle();
        let stop = h.clone();
        let t = std::thread::Builder::new()
            .name(format!("dev-{}", cfg.name))
            .spawn(move || {
                match pace {
                    Pace::Run => dev.run_until(|d| {
                        if let Some(a) = &mut agent {
                            a.poll(d);
                        }
                        app(d, agent.as_ref())
                    }),
                    Pace::Tick(nap) => {
                        while !stop.is_stopping() {
                            let mut moved = dev.poll();
                            if let Some(a) = &mut agent {
                                moved |= a.poll(&mut dev);
                            }
                            if app(&mut dev, agent.as_ref()) {
                                break;
                            }
                            if !moved {
                                std::thread::sleep(nap);
                            }
                        }
                    }
                }
                if let Some(a) = &mut agent {
                    a.close(&mut dev);
                }
                if let Some(cpu) = cpu {
                    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
                    let ns = t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
                    cpu.fetch_add(ns, Ordering::Relaxed);
                }
            })
            .map_err(|e| e.to_string())?;
        self.0.push((h.clone(), t));
        Ok(h)
    }
}

/// A TCP socket of `dev` with `buffer` bytes each way, connecting from
/// local port `port` to `dst`.
fn connect(
    dev: &mut NetDevice,
    buffer: usize,
    dst: (IpAddress, u16),
    port: u16,
) -> Res<SocketHandle> {
    let h = dev
        .sockets()
        .add(shmnet::functions::diag::tcp_socket(buffer));
    let (iface, sockets) = dev.parts();
    sockets
        .get_mut::<tcp::Socket>(h)
        .connect(iface.context(), dst, port)
        .map_err(|e| format!("connect: {e}"))?;
    Ok(h)
}

/// A TCP sink on the server's `PORT`.
fn sink() -> App {
    let mut h = None;
    Box::new(move |d, _| {
        let h = *h.get_or_insert_with(|| {
            let mut s = shmnet::functions::diag::tcp_socket(SOCK_BUF);
            s.listen(PORT).expect("listen on a fresh socket");
            d.sockets().add(s)
        });
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        while let Ok(n) = s.recv(|b| (b.len(), b.len())) {
            if n == 0 {
                break;
            }
        }
        false
    })
}

/// A TCP sender to the chain's server, from when `start` is set, for
/// `run` (at most `rate` bytes/s if given); sends Gbit/s acknowledged
/// to `out`.
fn sender(
    start: Arc<AtomicBool>,
    run: Duration,
    rate: Option<f64>,
    out: mpsc::Sender<Res<f64>>,
) -> App {
    let data = vec![0u8; 64 << 10];
    let (mut h, mut t0, mut sent, mut done) = (None, None::<Instant>, 0u64, false);
    let connect_at = Instant::now();
    Box::new(move |d, _| {
        if done || !start.load(Ordering::Relaxed) {
            return false;
        }
        let h = match h {
            Some(h) => h,
            None => match connect(d, SOCK_BUF, (IpAddress::v4(10, 11, 0, 2), PORT), 49152) {
                Ok(sock) => *h.insert(sock),
                Err(e) => {
                    let _ = out.send(Err(e));
                    done = true;
                    return false;
                }
            },
        };
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        let t = match t0 {
            Some(t) => t,
            None if s.may_send() => *t0.insert(Instant::now()),
            None => {
                if connect_at.elapsed() > TIMEOUT {
                    let _ = out.send(Err(format!("no connection ({})", s.state())));
                    done = true;
                }
                return false;
            }
        };
        let elapsed = t.elapsed();
        if elapsed >= run {
            let acked = sent - s.send_queue() as u64;
            let _ = out.send(Ok(acked as f64 * 8.0 / elapsed.as_secs_f64() / 1e9));
            done = true;
            return false;
        }
        let budget = rate.map_or(u64::MAX, |r| (elapsed.as_secs_f64() * r) as u64);
        while sent < budget && s.can_send() {
            let n = data
                .len()
                .min((budget - sent).min(usize::MAX as u64) as usize);
            match s.send_slice(&data[..n]) {
                Ok(0) | Err(_) => break,
                Ok(k) => sent += k as u64,
            }
        }
        false
    })
}

/// The length of the HTTP response at the front of `input`, once whole;
/// an error if it is not a 200 with a Content-Length.
fn http_response_len(input: &[u8]) -> Res<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(input).map_err(|e| e.to_string())? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    if r.code != Some(200) {
        return Err(format!("HTTP {:?}", r.code));
    }
    let len = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .ok_or("no Content-Length")?;
    Ok((input.len() >= head + len).then_some(head + len))
}

/// GETs `/metrics` from the manager every `every` on one keep-alive
/// connection, as Prometheus would; counts the responses in `done`.
fn scraper(every: Duration, done: Arc<AtomicU64>) -> App {
    let (mut h, mut input, mut waiting) = (None, Vec::new(), false);
    let mut next = Instant::now();
    Box::new(move |d, _| {
        // A connect that fails is tried no more: the run counts no scrapes.
        let h = *h.get_or_insert_with(|| {
            connect(d, SMALL_BUF, (ip(MANAGER_LOCAL), API_PORT), 49153).ok()
        });
        let Some(h) = h else {
            return false;
        };
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        if !waiting && Instant::now() >= next && s.can_send() {
            let _ = s.send_slice(b"GET /metrics HTTP/1.1\r\nHost: manager\r\n\r\n");
            waiting = true;
            next += every;
        }
        while let Ok(n) = s.recv(|b| {
            input.extend_from_slice(b);
            (b.len(), b.len())
        }) {
            if n == 0 {
                break;
            }
        }
        if let Ok(Some(n)) = http_response_len(&input) {
            input.drain(..n);
            waiting = false;
            done.fetch_add(1, Ordering::Relaxed);
        }
        false
    })
}

/// A manager on both networks of the one-device chain `cfgs`, polling
/// its three devices every `poll`, with `policy` if given.
fn manager_settings(
    cfgs: &[DeviceSettings],
    secret: &Path,
    poll: Duration,
    policy: Option<&Path>,
) -> Res<DeviceSettings> {
    let [a, b, c, d] = MANAGER_LOCAL;
    let quoted = |p: &Path| format!("{:?}", p.display().to_string());
    let mut doc = format!(
        "kind = \"manager\"\nlisten = {API_PORT}\npoll_interval = \"{}ms\"\n\
         secret_file = {}\nagent_port = {DEFAULT_AGENT_PORT}\ndevices = {CHAIN:?}\n",
        poll.as_millis(),
        quoted(secret),
    );
    if let Some(p) = policy {
        doc.push_str(&format!("policy = {}\n", quoted(p)));
    }
    DeviceToml::new(
        "manager",
        (&cfgs[1].local.segment, format!("{a}.{b}.{c}.{d}/24")),
        (&cfgs[1].global.segment, "10.11.0.100/24"),
    )
    .function_table(doc)
    .parse()
    .map_err(|e| e.to_string())
}

/// A device of the bench on the chain's client network at 10.10.0.`host`.
fn extra_device(name: &str, cfgs: &[DeviceSettings], host: u8) -> Res<DeviceSettings> {
    DeviceToml::new(
        name,
        (&cfgs[0].local.segment, format!("10.10.0.{host}/24")),
        (unique("xw"), format!("10.{}.0.1/16", 200 + host)),
    )
    .parse()
    .map_err(|e| e.to_string())
}

/// Waits until the manager has polled all three chain devices.
fn wait_ready(manager: &DeviceHandle) -> Res<()> {
    let t0 = Instant::now();
    while manager.stats().function_counter("devices_up") != Some(CHAIN.len() as u64) {
        if t0.elapsed() > READY {
            return Err(format!(
                "manager never saw the devices up: {:?}",
                manager.stats()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The chain client → `function` → server with agents, the sender held
/// until `start` is set; returns the rig, the sender's result and the
/// chain's device files.
fn chain_rig(
    secret: &Secret,
    function: &str,
    start: &Arc<AtomicBool>,
    run: Duration,
    rate: Option<f64>,
) -> Res<(Rig, mpsc::Receiver<Res<f64>>, Vec<DeviceSettings>)> {
    let cfgs = chain_configs(&[function])?;
    let mut rig = Rig::default();
    let key = Some(&secret.key);
    rig.spawn(&cfgs[2], key, Pace::Run, sink())?;
    rig.spawn(&cfgs[1], key, Pace::Run, Box::new(|_, _| false))?;
    let (tx, rx) = mpsc::channel();
    let pace = match rate {
        Some(_) => Pace::Tick(Duration::from_millis(1)),
        None => Pace::Run,
    };
    rig.spawn(&cfgs[0], key, pace, sender(start.clone(), run, rate, tx))?;
    Ok((rig, rx, cfgs))
}

/// What the manager and its scraper did in a run.
#[derive(Default)]
struct ManagerRun {
    scrapes: u64,
    polls: u64,
    /// CPU the manager and the scraper threads used per second of their
    /// life (the scraper stands in for a Prometheus outside the machine).
    cpu_ms_per_s: [f64; 2],
}

/// One throughput run in Gbit/s; with a manager, also what it did.
fn throughput_run(
    secret: &Secret,
    function: &str,
    managed: bool,
    run: Duration,
) -> Res<(f64, Option<ManagerRun>)> {
    let start = Arc::new(AtomicBool::new(false));
    let (mut rig, rx, cfgs) = chain_rig(secret, function, &start, run, None)?;
    let scrapes = Arc::new(AtomicU64::new(0));
    let cpu = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let born = Instant::now();
    let manager = if managed {
        let m = manager_settings(&cfgs, &secret.path, Duration::from_secs(1), None)?;
        let idle: App = Box::new(|_, _| false);
        let m = rig.spawn_counted(&m, None, Pace::Run, Some(cpu[0].clone()), idle)?;
        let s = extra_device("scraper", &cfgs, 101)?;
        let tick = Pace::Tick(Duration::from_millis(20));
        let app = scraper(Duration::from_secs(1), scrapes.clone());
        rig.spawn_counted(&s, None, tick, Some(cpu[1].clone()), app)?;
        wait_ready(&m)?;
        Some(m)
    } else {
        None
    };
    // A scrape is due at once: let it go before the clock starts.
    scrapes.store(0, Ordering::Relaxed);
    let polls0 = manager
        .as_ref()
        .and_then(|m| m.stats().function_counter("polls"));
    start.store(true, Ordering::Relaxed);
    let gbps = rx
        .recv_timeout(run + TIMEOUT)
        .map_err(|e| format!("sender: {e}"))??;
    let polls = manager.map(|m| {
        let polls = m.stats().function_counter("polls").unwrap_or(0);
        polls - polls0.unwrap_or(0).min(polls)
    });
    drop(rig);
    let seen = polls.map(|polls| ManagerRun {
        scrapes: scrapes.load(Ordering::Relaxed),
        polls,
        cpu_ms_per_s: cpu
            .each_ref()
            .map(|c| c.load(Ordering::Relaxed) as f64 / 1e6 / born.elapsed().as_secs_f64()),
    });
    Ok((gbps, seen))
}

/// Runs `count` request/response exchanges back to back over one TCP
/// connection from `dev` to `dst`; `request` writes the i-th request,
/// `reply` says how long the reply at the front of its input is once
/// whole. Returns each round trip in µs.
fn round_trips(
    dev: &mut NetDevice,
    dst: (IpAddress, u16),
    count: usize,
    mut request: impl FnMut(u64) -> Res<Vec<u8>>,
    mut reply: impl FnMut(&[u8]) -> Res<Option<usize>>,
) -> Res<Vec<f64>> {
    let h = connect(dev, SMALL_BUF, dst, 49200)?;
    let t0 = Instant::now();
    let (mut rtts, mut input) = (Vec::with_capacity(count), Vec::new());
    let mut sent_at: Option<Instant> = None;
    let mut result = Ok(());
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        let step = (|| -> Res<bool> {
            if t0.elapsed() > TIMEOUT {
                return Err(format!(
                    "timed out after {} exchanges ({})",
                    rtts.len(),
                    s.state()
                ));
            }
            if sent_at.is_none() {
                if !s.may_send() {
                    return Ok(false);
                }
                let req = request(rtts.len() as u64)?;
                if s.send_slice(&req).map_err(|e| e.to_string())? != req.len() {
                    return Err("request larger than the socket buffer".into());
                }
                sent_at = Some(Instant::now());
            }
            while let Ok(n) = s.recv(|b| {
                input.extend_from_slice(b);
                (b.len(), b.len())
            }) {
                if n == 0 {
                    break;
                }
            }
            if let (Some(n), Some(t)) = (reply(&input)?, sent_at) {
                rtts.push(t.elapsed().as_secs_f64() * 1e6);
                input.drain(..n);
                sent_at = None;
            }
            Ok(rtts.len() == count)
        })();
        step.unwrap_or_else(|e| {
            result = Err(e);
            true
        })
    });
    let s = dev.sockets().get_mut::<tcp::Socket>(h);
    s.abort();
    result.map(|()| rtts)
}

/// Median and 99th percentile.
fn median_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let p99 = v[(v.len() - 1) * 99 / 100];
    (median(&mut v), p99)
}

/// Round trips of sealed `Counters` requests to the firewall's agent and
/// of `GET /api/devices` to the manager: (agent µs, API µs).
fn round_trip_runs(secret: &Secret, firewall: &str, count: usize) -> Res<(Vec<f64>, Vec<f64>)> {
    let start = Arc::new(AtomicBool::new(false));
    let (mut rig, _rx, cfgs) = chain_rig(secret, firewall, &start, Duration::ZERO, None)?;
    let m = manager_settings(&cfgs, &secret.path, Duration::from_secs(1), None)?;
    let m = rig.spawn(&m, None, Pace::Run, Box::new(|_, _| false))?;
    wait_ready(&m)?;
    let c = extra_device("rr-client", &cfgs, 102)?;
    let mut dev = NetDevice::new(&c, SegmentKind::InProcess).map_err(|e| e.to_string())?;
    let key = secret.key.clone();
    let client = std::process::id() ^ 0x6d67_6d74;
    let agent = round_trips(
        &mut dev,
        (IpAddress::v4(10, 10, 0, 254), DEFAULT_AGENT_PORT),
        count,
        |i| {
            let repr = MgmtRepr {
                kind: Kind::Request,
                op: Op::Counters as u8,
                status: 0,
                client,
                seq: i + 1,
                time_ms: mgmt::unix_ms(),
                body: b"",
            };
            mgmt::seal(&repr, &key).map_err(|e| e.to_string())
        },
        |input| {
            let Some(n) = mgmt::frame_len(input).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            if input.len() < n {
                return Ok(None);
            }
            let r = mgmt::open(&input[..n], &key).map_err(|e| e.to_string())?;
            if r.status != Status::Ok as u8 {
                return Err(format!("agent answered status {}", r.status));
            }
            Ok(Some(n))
        },
    )?;
    let api = round_trips(
        &mut dev,
        (ip(MANAGER_LOCAL), API_PORT),
        (count / 4).max(10),
        |_| Ok(b"GET /api/devices HTTP/1.1\r\nHost: manager\r\n\r\n".to_vec()),
        http_response_len,
    )?;
    drop(rig);
    Ok((agent, api))
}

/// One policy trial: seconds from the start of traffic through a
/// passthrough device until its agent applied the firewall the rule sets.
fn reaction_trial(secret: &Secret, poll: Duration) -> Res<f64> {
    let policy = std::env::temp_dir().join(format!("{}.toml", unique("policy")));
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"busy\"\nwhen = \"rate(chain-0:frames_in, 1s) > 1000\"\n\
         for = \"0s\"\ncooldown = \"1s\"\n[[rule.then]]\n\
         set = { device = \"chain-0\", function = { kind = \"firewall\", default = \"accept\" } }\n",
    )
    .map_err(|e| e.to_string())?;
    let result = (|| {
        let cfgs = chain_configs(&["{ kind = \"passthrough\" }"])?;
        let start = Arc::new(AtomicBool::new(false));
        let mut rig = Rig::default();
        let key = Some(&secret.key);
        let changed: Arc<Mutex<Option<Instant>>> = Arc::default();
        let seen = changed.clone();
        rig.spawn(&cfgs[2], key, Pace::Run, sink())?;
        rig.spawn(
            &cfgs[1],
            key,
            Pace::Run,
            Box::new(move |_, agent| {
                // The agent applies a change between rounds: this round.
                if agent.is_some_and(|a| a.counters().changes_applied > 0) {
                    let mut c = seen.lock().expect("not poisoned");
                    c.get_or_insert_with(Instant::now);
                }
                false
            }),
        )?;
        // 5 MB/s: thousands of frames a second, far over the threshold,
        // while leaving the cores to the manager.
        let (tx, _rx) = mpsc::channel();
        let run = TIMEOUT;
        let tick = Pace::Tick(Duration::from_millis(1));
        rig.spawn(
            &cfgs[0],
            key,
            tick,
            sender(start.clone(), run, Some(5e6), tx),
        )?;
        let m = manager_settings(&cfgs, &secret.path, poll, Some(&policy))?;
        let m = rig.spawn(&m, None, Pace::Run, Box::new(|_, _| false))?;
        wait_ready(&m)?;
        let t0 = Instant::now();
        start.store(true, Ordering::Relaxed);
        loop {
            if let Some(t) = *changed.lock().expect("not poisoned") {
                return Ok(t.saturating_duration_since(t0).as_secs_f64());
            }
            if t0.elapsed() > READY {
                return Err(format!("the rule never fired: {:?}", m.stats()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })();
    let _ = std::fs::remove_file(&policy);
    result
}

pub(super) fn bench_manage(quick: bool) -> Res<String> {
    let secret = Secret::new()?;
    let reps = if quick { 1 } else { 3 };
    // Pairs of runs, each pair back to back: the machine's load drifts
    // more between pairs than within one.
    let pairs = if quick { 1 } else { 5 };
    let run = Duration::from_secs(if quick { 2 } else { 4 });
    let firewall = chain_functions("firewall")?.remove(0);
    // 1. Alternating runs without and with the manager.
    let (mut without, mut with, mut scrapes, mut polls) = (vec![], vec![], vec![], vec![]);
    let mut cpu = vec![];
    for _ in 0..pairs {
        without.push(throughput_run(&secret, &firewall, false, run)?.0);
        let (gbps, seen) = throughput_run(&secret, &firewall, true, run)?;
        let seen = seen.unwrap_or_default();
        with.push(gbps);
        scrapes.push(seen.scrapes);
        polls.push(seen.polls);
        cpu.push(seen.cpu_ms_per_s);
    }
    let (w0, w1) = (median(&mut without.clone()), median(&mut with.clone()));
    let ratio = w1 / w0;
    let pair_ratios: Vec<f64> = with.iter().zip(&without).map(|(a, b)| a / b).collect();
    let pair_ratio = median(&mut pair_ratios.clone());
    let cpu_of = |k: usize| median(&mut cpu.iter().map(|c: &[f64; 2]| c[k]).collect::<Vec<_>>());
    let (cpu_manager, cpu_scraper) = (cpu_of(0), cpu_of(1));
    // The share of the machine they took: what they can take from the
    // data path at most, however noisy its throughput.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu_percent = (cpu_manager + cpu_scraper) / 10.0 / cores;
    // 2. Round trips.
    let count = if quick { 200 } else { 2000 };
    let (agent, api) = round_trip_runs(&secret, &firewall, count)?;
    let api_count = api.len();
    let (agent_med, agent_p99) = median_p99(agent);
    let (api_med, api_p99) = median_p99(api);
    // 3. Policy reaction, per poll interval.
    let mut reactions = Vec::new();
    let mut lines = Vec::new();
    for poll_ms in [100u64, 1000] {
        let mut runs = Vec::new();
        for _ in 0..reps {
            runs.push(reaction_trial(&secret, Duration::from_millis(poll_ms))? * 1e3);
        }
        let med = median(&mut runs.clone());
        lines.push(format!("{med:.0} ms at a {poll_ms} ms poll"));
        reactions.push(serde_json::json!({
            "poll_interval_ms": poll_ms,
            "reaction_ms": med,
            "reaction_ms_runs": runs,
        }));
    }
    eprintln!(
        "manage: firewall chain {w0:.2} Gbit/s without a manager, {w1:.2} with \
         (ratio {ratio:.3}, loss {:.1} %, median of pair ratios {pair_ratio:.3}; {} scrapes, \
         {} polls a run; CPU {cpu_manager:.1} ms/s manager, {cpu_scraper:.1} ms/s scraper, \
         {cpu_percent:.2} % of the machine); agent round trip \
         {agent_med:.0} µs (p99 {agent_p99:.0}), API {api_med:.0} µs (p99 {api_p99:.0}); \
         policy to new function {}",
        (1.0 - ratio) * 100.0,
        median(&mut scrapes.iter().map(|&s| s as f64).collect::<Vec<_>>()),
        median(&mut polls.iter().map(|&s| s as f64).collect::<Vec<_>>()),
        lines.join(", "),
    );
    Ok(serde_json::json!({
        "bench": "manage",
        "function": "firewall",
        "run_secs": run.as_secs_f64(),
        "pairs": pairs,
        "reaction_reps": reps,
        "without_manager_gbps": w0,
        "with_manager_gbps": w1,
        "unit": "Gbit/s",
        "ratio": ratio,
        "loss_percent": (1.0 - ratio) * 100.0,
        "pair_ratio_median": pair_ratio,
        "pair_ratios": pair_ratios,
        "without_manager_gbps_runs": without,
        "with_manager_gbps_runs": with,
        "scrapes_per_run": scrapes,
        "manager_polls_per_run": polls,
        "manager_cpu_ms_per_s": cpu_manager,
        "scraper_cpu_ms_per_s": cpu_scraper,
        "manager_scraper_cpu_percent_of_machine": cpu_percent,
        "agent_requests": count,
        "agent_rtt_us_median": agent_med,
        "agent_rtt_us_p99": agent_p99,
        "api_requests": api_count,
        "api_rtt_us_median": api_med,
        "api_rtt_us_p99": api_p99,
        "policy": reactions,
    })
    .to_string())
}
