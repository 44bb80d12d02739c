//! `shmnet bench`: throughput and latency against the kernel path.
//!
//! Every benchmark measures shmnet and, in the same run, the comparable
//! kernel path (TCP over 127.0.0.1, or a Unix datagram socket pair for raw
//! frames), and prints one JSON object per result on stdout. Each
//! measurement is repeated (3 times, once with `--quick`) and the median is
//! reported; `ratio` > 1 means shmnet did better.
//!
//! In process mode the far side (TCP sink, echo server or frame receiver)
//! runs in a child process started as `shmnet bench-peer ...`, attached to
//! the same named host segments; it prints `ready` once attached.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use crate::config::{DeviceConfig, DeviceSettings};
use crate::shm::{NetworkParams, Peer, Port, PortInfo, Segment, SegmentKind, mac_from_name};
use crate::stack::Device;

/// Arguments of `shmnet bench`.
#[derive(Debug, clap::Args)]
pub struct BenchCli {
    /// Short smoke run (of everything when no benchmark is named).
    #[arg(long, global = true)]
    pub quick: bool,
    #[command(subcommand)]
    pub cmd: Option<BenchCmd>,
}

/// The benchmarks.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCmd {
    /// TCP bulk transfer device to device.
    Tcp {
        /// IP MTU of the network.
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
        #[arg(long, value_enum, default_value_t = Mode::Thread)]
        mode: Mode,
        /// Bytes per transfer (default 256 MiB for MTU >= 9000, 128 MiB below;
        /// 16 MiB with --quick).
        #[arg(long)]
        bytes: Option<u64>,
    },
    /// 64-byte request/response round trips over one TCP connection.
    Rr {
        #[arg(long, value_enum, default_value_t = Mode::Thread)]
        mode: Mode,
        /// Round trips per run (default 100000; 2000 with --quick).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Raw frames adapter to adapter through the shared-memory ports.
    Frames {
        /// Frame size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, value_enum, default_value_t = Mode::Thread)]
        mode: Mode,
        /// Frames per run (default 20 M; 0.5 M with --quick). The kernel path
        /// sends a quarter as many.
        #[arg(long)]
        count: Option<u64>,
    },
    /// A network function: its cost per packet, and TCP through a chain
    /// client → function device(s) → server (devices as threads).
    Function {
        /// firewall, qos, reroute, balancer, encrypt or compress.
        #[arg(long)]
        name: String,
        /// Bytes through the chain (default 256 MiB; 16 MiB with --quick).
        #[arg(long)]
        bytes: Option<u64>,
    },
    /// An idle device: its CPU use, and the round trip of a datagram that
    /// has to wake it (devices as threads).
    Idle {
        /// Exchanges, each after 20 ms of silence (default 50; 10 with --quick).
        #[arg(long)]
        count: Option<u64>,
    },
}

/// Where the far side runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A thread of this process (process-local segments).
    Thread,
    /// A child process (named host segments).
    Process,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Thread => "thread",
            Mode::Process => "process",
        }
    }
}

type Res<T> = Result<T, String>;

const PORT: u16 = 5000;
const TIMEOUT: Duration = Duration::from_secs(120);
const SOCK_BUF: usize = 4 << 20;
const RR_SIZE: usize = 64;

/// Runs the benchmarks; returns the process exit code.
pub fn main(args: &BenchCli) -> i32 {
    let quick = args.quick;
    let reps = if quick { 1 } else { 3 };
    let jobs: Vec<BenchCmd> = match &args.cmd {
        Some(cmd) => vec![cmd.clone()],
        None => {
            let mut v = Vec::new();
            for mode in [Mode::Thread, Mode::Process] {
                for mtu in [1500, 65535] {
                    v.push(BenchCmd::Tcp {
                        mtu,
                        mode,
                        bytes: None,
                    });
                }
                v.push(BenchCmd::Rr { mode, count: None });
                v.push(BenchCmd::Frames {
                    size: 64,
                    mode,
                    count: None,
                });
            }
            v.push(BenchCmd::Idle { count: None });
            for name in FUNCTIONS_BENCHED {
                v.push(BenchCmd::Function {
                    name: name.to_string(),
                    bytes: None,
                });
            }
            v
        }
    };
    let mut code = 0;
    for job in &jobs {
        let r = match job {
            BenchCmd::Tcp { mtu, mode, bytes } => bench_tcp(*mtu, *mode, *bytes, quick, reps),
            BenchCmd::Rr { mode, count } => bench_rr(*mode, *count, quick, reps),
            BenchCmd::Frames { size, mode, count } => {
                bench_frames(*size, *mode, *count, quick, reps)
            }
            BenchCmd::Idle { count } => bench_idle(*count, quick),
            BenchCmd::Function { name, bytes } => bench_function(name, *bytes, quick, reps),
        };
        match r {
            Ok(line) => {
                println!("{line}");
                let _ = std::io::stdout().flush();
            }
            Err(e) => {
                eprintln!("shmnet bench: {job:?}: {e}");
                code = 1;
            }
        }
    }
    code
}

/// Entry point of the hidden `bench-peer` subcommand (the far side of a
/// process-mode benchmark).
pub fn peer_main(args: &[String]) -> i32 {
    match peer(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shmnet bench-peer: {e}");
            1
        }
    }
}

fn peer(args: &[String]) -> Res<()> {
    let arg = |i: usize| -> Res<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("missing argument {i} in {args:?}"))
    };
    let num = |i: usize| -> Res<u64> {
        arg(i)?
            .parse::<u64>()
            .map_err(|e| format!("argument {i}: {e}"))
    };
    match arg(0)? {
        kind @ ("tcp" | "rr") => {
            let (lan, wan, mtu) = (arg(1)?, arg(2)?, num(3)? as u32);
            let s = settings("bench-b", 2, lan, wan, mtu)?;
            let mut dev = Device::new(&s, SegmentKind::Host).map_err(|e| e.to_string())?;
            let h = listen(&mut dev);
            ready();
            serve(&mut dev, h, kind == "rr", true);
            Ok(())
        }
        "frames" => {
            let (name, size, count, mtu) = (arg(1)?, num(2)? as usize, num(3)?, num(4)? as u32);
            let seg = Segment::open_or_create(name, SegmentKind::Host, &NetworkParams::new(mtu))
                .map_err(|e| e.to_string())?;
            let mut rx = seg
                .attach(&PortInfo::named("rx"))
                .map_err(|e| e.to_string())?;
            ready();
            let secs = recv_frames(&mut rx, size, count)?;
            println!("rate {}", count as f64 / secs);
            Ok(())
        }
        other => Err(format!("unknown peer kind {other:?}")),
    }
}

fn ready() {
    println!("ready");
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------- helpers

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "bench{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn settings(name: &str, host: u8, lan: &str, wan: &str, mtu: u32) -> Res<DeviceSettings> {
    let text = format!(
        "name = \"{name}\"\n\
         local = {{ segment = \"{lan}\", address = \"10.0.0.{host}/24\", mtu = {mtu} }}\n\
         global = {{ segment = \"{wan}\", address = \"10.100.0.{host}/16\", mtu = {mtu} }}\n"
    );
    DeviceConfig::from_toml(&text, "bench").map_err(|e| e.to_string())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "null".into()
    }
}

fn list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|&x| num(x)).collect();
    format!("[{}]", items.join(","))
}

/// Runs `shm` and `kernel` `reps` times each; returns the JSON line.
fn measure(
    head: &str,
    unit: &str,
    extra: &str,
    reps: usize,
    mut shm: impl FnMut() -> Res<f64>,
    mut kernel: impl FnMut() -> Res<f64>,
) -> Res<String> {
    let mut s = Vec::with_capacity(reps);
    let mut k = Vec::with_capacity(reps);
    for _ in 0..reps {
        s.push(shm()?);
        k.push(kernel()?);
    }
    let (sr, kr) = (s.clone(), k.clone());
    let (sm, km) = (median(&mut s), median(&mut k));
    Ok(format!(
        "{{{head},\"shmnet\":{},\"kernel\":{},\"unit\":\"{unit}\",\"ratio\":{}{extra},\"reps\":{reps},\"shmnet_runs\":{},\"kernel_runs\":{}}}",
        num(sm),
        num(km),
        num(sm / km),
        list(&sr),
        list(&kr)
    ))
}

/// The far side of a process-mode run.
struct PeerProc {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl PeerProc {
    fn spawn(args: &[String]) -> Res<PeerProc> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("bench-peer")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn bench-peer: {e}"))?;
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut p = PeerProc { child, out };
        let line = p.line()?;
        if line != "ready" {
            return Err(format!("bench-peer said {line:?}, expected ready"));
        }
        Ok(p)
    }

    fn line(&mut self) -> Res<String> {
        let mut s = String::new();
        match self.out.read_line(&mut s) {
            Ok(0) => Err("bench-peer exited early".into()),
            Ok(_) => Ok(s.trim().to_string()),
            Err(e) => Err(format!("reading bench-peer: {e}")),
        }
    }

    fn finish(mut self) -> Res<()> {
        let t0 = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => return Err(format!("bench-peer: {st}")),
                Ok(None) if t0.elapsed() > Duration::from_secs(5) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err("bench-peer did not exit".into());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Removes host segments when dropped.
struct Unlink(Vec<String>);

impl Drop for Unlink {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Segment::unlink(n);
        }
    }
}

// ---------------------------------------------------------------- TCP on shmnet

fn listen(dev: &mut Device) -> SocketHandle {
    // Delayed ACKs stay on for round trips too: the reply carries the ACK,
    // as with the kernel's defaults.
    let mut s = crate::functions::diag::tcp_socket(SOCK_BUF);
    s.listen(PORT).expect("listen on a fresh socket");
    dev.sockets().add(s)
}

/// Sink (or echo) until the client closes; with `exit`, also stops the
/// device when the connection is over or after a long idle time.
fn serve(dev: &mut Device, h: SocketHandle, echo: bool, exit: bool) {
    let mut last = Instant::now();
    let mut closing: Option<Instant> = None;
    let mut tmp = vec![0u8; 64 * 1024];
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        let mut moved = false;
        if echo {
            while s.can_recv() && s.can_send() {
                let room = (s.send_capacity() - s.send_queue()).min(tmp.len());
                let n = s.recv_slice(&mut tmp[..room]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                let _ = s.send_slice(&tmp[..n]);
                moved = true;
            }
        } else {
            while let Ok(n) = s.recv(|b| (b.len(), b.len())) {
                if n == 0 {
                    break;
                }
                moved = true;
            }
        }
        if moved {
            last = Instant::now();
        }
        if !exit {
            return false;
        }
        if closing.is_none() && s.state() == tcp::State::CloseWait && s.recv_queue() == 0 {
            s.close();
            closing = Some(Instant::now());
        }
        if let Some(t) = closing {
            return s.state() == tcp::State::Closed || t.elapsed() > Duration::from_millis(500);
        }
        last.elapsed() > Duration::from_secs(30)
    });
}

/// A client device connected to the server at 10.0.0.2; returns it once
/// the connection is established.
fn client(lan: &str, wan: &str, mtu: u32, kind: SegmentKind) -> Res<(Device, SocketHandle)> {
    let s = settings("bench-a", 1, lan, wan, mtu)?;
    let mut dev = Device::new(&s, kind).map_err(|e| e.to_string())?;
    let sock = crate::functions::diag::tcp_socket(SOCK_BUF);
    let h = dev.sockets().add(sock);
    let (iface, sockets) = dev.parts();
    sockets
        .get_mut::<tcp::Socket>(h)
        .connect(iface.context(), (IpAddress::v4(10, 0, 0, 2), PORT), 49152)
        .map_err(|e| format!("connect: {e}"))?;
    let t0 = Instant::now();
    let mut failed = false;
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        if s.may_send() {
            return true;
        }
        failed = t0.elapsed() > Duration::from_secs(10) || s.state() == tcp::State::Closed;
        failed
    });
    if failed {
        return Err("could not connect".into());
    }
    Ok((dev, h))
}

/// Closes the client's connection politely (bounded wait).
fn hang_up(dev: &mut Device, h: SocketHandle) {
    dev.sockets().get_mut::<tcp::Socket>(h).close();
    let t0 = Instant::now();
    dev.run_until(|d| {
        let st = d.sockets().get_mut::<tcp::Socket>(h).state();
        matches!(st, tcp::State::TimeWait | tcp::State::Closed)
            || t0.elapsed() > Duration::from_millis(500)
    });
}

/// Sends `bytes`; returns seconds from the first byte to the receiver's
/// acknowledgement of the last.
fn send_bulk(dev: &mut Device, h: SocketHandle, bytes: u64) -> Res<f64> {
    let mut sent = 0u64;
    let start = Instant::now();
    let mut err = None;
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        while sent < bytes && s.can_send() {
            let rem = (bytes - sent) as usize;
            match s.send(|b| {
                let n = b.len().min(rem);
                (n, n)
            }) {
                Ok(0) | Err(_) => break,
                Ok(n) => sent += n as u64,
            }
        }
        if sent == bytes && s.send_queue() == 0 {
            return true;
        }
        if !s.may_send() {
            err = Some(format!(
                "connection lost in {:?} after {sent} bytes",
                s.state()
            ));
        } else if start.elapsed() > TIMEOUT {
            err = Some(format!("timed out after {sent} bytes"));
        }
        err.is_some()
    });
    let secs = start.elapsed().as_secs_f64();
    match err {
        Some(e) => Err(e),
        None => Ok(secs),
    }
}

/// `count` 64-byte round trips; returns seconds.
fn ping_pong(dev: &mut Device, h: SocketHandle, count: u64) -> Res<f64> {
    let msg = [0x5au8; RR_SIZE];
    let mut done = 0u64;
    let mut got = 0usize;
    let mut need_send = true;
    let start = Instant::now();
    let mut err = None;
    let mut tmp = [0u8; RR_SIZE];
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        loop {
            if need_send {
                if !s.can_send() {
                    break;
                }
                if s.send_slice(&msg) != Ok(RR_SIZE) {
                    err = Some("send buffer full".into());
                    return true;
                }
                need_send = false;
            }
            let n = s.recv_slice(&mut tmp[..RR_SIZE - got]).unwrap_or(0);
            if n == 0 {
                break;
            }
            got += n;
            if got == RR_SIZE {
                got = 0;
                done += 1;
                if done == count {
                    return true;
                }
                need_send = true;
            }
        }
        if !s.may_recv() {
            err = Some(format!("connection lost after {done} round trips"));
        } else if start.elapsed() > TIMEOUT {
            err = Some(format!("timed out after {done} round trips"));
        }
        err.is_some()
    });
    let secs = start.elapsed().as_secs_f64();
    match err {
        Some(e) => Err(e),
        None => Ok(secs),
    }
}

/// One shmnet TCP run (bulk or round trips); returns seconds.
fn shm_tcp_run(mtu: u32, mode: Mode, rr: bool, amount: u64) -> Res<f64> {
    let (lan, wan) = (unique("lan"), unique("wan"));
    match mode {
        Mode::Thread => {
            let s = settings("bench-b", 2, &lan, &wan, mtu)?;
            let mut server = Device::new(&s, SegmentKind::Process).map_err(|e| e.to_string())?;
            let sh = listen(&mut server);
            let handle = server.handle();
            let t = std::thread::Builder::new()
                .name("bench-server".into())
                .spawn(move || {
                    serve(&mut server, sh, rr, false);
                    server
                })
                .map_err(|e| e.to_string())?;
            let r = client(&lan, &wan, mtu, SegmentKind::Process).and_then(|(mut dev, h)| {
                let r = if rr {
                    ping_pong(&mut dev, h, amount)
                } else {
                    send_bulk(&mut dev, h, amount)
                };
                hang_up(&mut dev, h);
                r
            });
            handle.stop();
            let _ = t.join();
            r
        }
        Mode::Process => {
            let _unlink = Unlink(vec![lan.clone(), wan.clone()]);
            let kind = if rr { "rr" } else { "tcp" };
            let peer = PeerProc::spawn(&[kind.into(), lan.clone(), wan.clone(), mtu.to_string()])?;
            let (mut dev, h) = client(&lan, &wan, mtu, SegmentKind::Host)?;
            let r = if rr {
                ping_pong(&mut dev, h, amount)
            } else {
                send_bulk(&mut dev, h, amount)
            };
            hang_up(&mut dev, h);
            let f = peer.finish();
            drop(dev);
            let secs = r?;
            f?;
            Ok(secs)
        }
    }
}

// ---------------------------------------------------------------- TCP on the kernel

fn kernel_bulk(bytes: u64) -> Res<f64> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let rx = std::thread::spawn(move || -> std::io::Result<(u64, Instant)> {
        let (mut c, _) = l.accept()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = c.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total >= bytes {
                break;
            }
        }
        Ok((total, Instant::now()))
    });
    let tx = std::thread::spawn(move || -> std::io::Result<Instant> {
        let mut c = TcpStream::connect(addr)?;
        let buf = vec![0xa5u8; 64 * 1024];
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(buf.len() as u64) as usize;
            c.write_all(&buf[..n])?;
            sent += n as u64;
        }
        c.shutdown(std::net::Shutdown::Write)?;
        Ok(start)
    });
    let start = tx
        .join()
        .map_err(|_| "sender panicked")?
        .map_err(|e| e.to_string())?;
    let (total, end) = rx
        .join()
        .map_err(|_| "receiver panicked")?
        .map_err(|e| e.to_string())?;
    if total != bytes {
        return Err(format!("kernel sink got {total} of {bytes} bytes"));
    }
    Ok((end - start).as_secs_f64())
}

fn kernel_rr(count: u64) -> Res<f64> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut c, _) = l.accept()?;
        c.set_nodelay(true)?;
        let mut buf = [0u8; RR_SIZE];
        for _ in 0..count {
            c.read_exact(&mut buf)?;
            c.write_all(&buf)?;
        }
        Ok(())
    });
    let client = std::thread::spawn(move || -> std::io::Result<f64> {
        let mut c = TcpStream::connect(addr)?;
        c.set_nodelay(true)?;
        let mut buf = [0x5au8; RR_SIZE];
        let start = Instant::now();
        for _ in 0..count {
            c.write_all(&buf)?;
            c.read_exact(&mut buf)?;
        }
        Ok(start.elapsed().as_secs_f64())
    });
    let secs = client
        .join()
        .map_err(|_| "client panicked")?
        .map_err(|e| e.to_string())?;
    server
        .join()
        .map_err(|_| "server panicked")?
        .map_err(|e| e.to_string())?;
    Ok(secs)
}

fn bench_tcp(mtu: u32, mode: Mode, bytes: Option<u64>, quick: bool, reps: usize) -> Res<String> {
    let bytes = bytes.unwrap_or(if quick {
        16 << 20
    } else if mtu >= 9000 {
        256 << 20
    } else {
        128 << 20
    });
    if bytes == 0 {
        return Err("--bytes must be positive".into());
    }
    let gbit = |secs: f64| bytes as f64 * 8.0 / secs / 1e9;
    let head = format!(
        "\"bench\":\"tcp\",\"mode\":\"{}\",\"mtu\":{mtu}",
        mode.name()
    );
    measure(
        &head,
        "Gbit/s",
        &format!(",\"bytes\":{bytes}"),
        reps,
        || shm_tcp_run(mtu, mode, false, bytes).map(gbit),
        || kernel_bulk(bytes).map(gbit),
    )
}

fn bench_rr(mode: Mode, count: Option<u64>, quick: bool, reps: usize) -> Res<String> {
    let count = count.unwrap_or(if quick { 2000 } else { 100_000 }).max(1);
    let rate = |secs: f64| count as f64 / secs;
    let head = format!(
        "\"bench\":\"rr\",\"mode\":\"{}\",\"size\":{RR_SIZE}",
        mode.name()
    );
    measure(
        &head,
        "round trips/s",
        &format!(",\"count\":{count},\"mtu\":1500"),
        reps,
        || shm_tcp_run(1500, mode, true, count).map(rate),
        || kernel_rr(count).map(rate),
    )
}

// ---------------------------------------------------------------- frames

/// Sends `count` frames of `size` bytes from `tx` to `to`.
fn send_frames(tx: &mut Port, to: Peer, size: usize, count: u64) -> Res<()> {
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < count {
        match tx.alloc() {
            Some(mut buf) => {
                let b = tx.buffer_mut(&mut buf);
                b[..size].fill(0x3c);
                b[..8.min(size)].copy_from_slice(&sent.to_le_bytes()[..8.min(size)]);
                tx.send(buf, size, &[to]);
                sent += 1;
                if sent.is_multiple_of(32) {
                    tx.flush();
                }
            }
            None => {
                tx.flush();
                std::hint::spin_loop();
                if start.elapsed() > TIMEOUT {
                    return Err(format!("sender stuck after {sent} frames"));
                }
            }
        }
    }
    while tx.backlog_len() > 0 {
        tx.flush();
        std::hint::spin_loop();
        if start.elapsed() > TIMEOUT {
            return Err("sender backlog never drained".into());
        }
    }
    tx.flush();
    Ok(())
}

/// Receives `count` frames; returns seconds from the first to the last.
fn recv_frames(rx: &mut Port, size: usize, count: u64) -> Res<f64> {
    let mut buf = vec![0u8; rx.segment().frame_size()];
    let mut got = 0u64;
    let mut start = None;
    let mut idle_since = Instant::now();
    let mut empty = 0u64;
    while got < count {
        match rx.recv_into(&mut buf) {
            Some((len, _)) => {
                if len != size {
                    return Err(format!("frame of {len} bytes, expected {size}"));
                }
                if got == 0 {
                    start = Some(Instant::now());
                }
                got += 1;
                empty = 0;
                if got.is_multiple_of(32) {
                    rx.flush();
                }
            }
            None => {
                if empty == 0 {
                    idle_since = Instant::now();
                }
                empty += 1;
                rx.flush();
                std::hint::spin_loop();
                if empty.is_multiple_of(65536) && idle_since.elapsed() > TIMEOUT {
                    return Err(format!("receiver stuck after {got} frames"));
                }
            }
        }
    }
    rx.flush();
    Ok(start.map_or(0.0, |s| s.elapsed().as_secs_f64()))
}

fn frames_mtu(size: usize) -> u32 {
    (size as u32).clamp(576, 65535)
}

/// One shmnet frames run; returns frames per second (at the receiver).
fn shm_frames_run(size: usize, mode: Mode, count: u64) -> Res<f64> {
    let name = unique("frames");
    let mtu = frames_mtu(size);
    match mode {
        Mode::Thread => {
            let seg =
                Segment::open_or_create(&name, SegmentKind::Process, &NetworkParams::new(mtu))
                    .map_err(|e| e.to_string())?;
            if size > seg.frame_size() {
                return Err(format!("size {size} > frame size {}", seg.frame_size()));
            }
            let mut tx = seg
                .attach(&PortInfo::named("tx"))
                .map_err(|e| e.to_string())?;
            let mut rx = seg
                .attach(&PortInfo::named("rx"))
                .map_err(|e| e.to_string())?;
            let to = rx.peer();
            let t = std::thread::Builder::new()
                .name("bench-rx".into())
                .spawn(move || recv_frames(&mut rx, size, count))
                .map_err(|e| e.to_string())?;
            let s = send_frames(&mut tx, to, size, count);
            let r = t.join().map_err(|_| "receiver panicked")?;
            s?;
            let secs = r?;
            Ok(count as f64 / secs)
        }
        Mode::Process => {
            let _unlink = Unlink(vec![name.clone()]);
            let seg = Segment::open_or_create(&name, SegmentKind::Host, &NetworkParams::new(mtu))
                .map_err(|e| e.to_string())?;
            if size > seg.frame_size() {
                return Err(format!("size {size} > frame size {}", seg.frame_size()));
            }
            let mut tx = seg
                .attach(&PortInfo::named("tx"))
                .map_err(|e| e.to_string())?;
            let mut peer = PeerProc::spawn(&[
                "frames".into(),
                name.clone(),
                size.to_string(),
                count.to_string(),
                mtu.to_string(),
            ])?;
            let rx_mac = mac_from_name("rx");
            let p = seg
                .peers()
                .into_iter()
                .find(|p| p.mac == rx_mac)
                .ok_or("bench-peer's port not found")?;
            let to = Peer {
                index: p.index,
                epoch: p.epoch,
            };
            send_frames(&mut tx, to, size, count)?;
            let line = peer.line()?;
            let rate = line
                .strip_prefix("rate ")
                .and_then(|r| r.parse::<f64>().ok())
                .ok_or_else(|| format!("bench-peer said {line:?}"))?;
            peer.finish()?;
            drop(tx);
            Ok(rate)
        }
    }
}

/// Unix datagram pair: returns frames per second at the receiver.
fn kernel_frames(size: usize, count: u64) -> Res<f64> {
    let (a, b) = std::os::unix::net::UnixDatagram::pair().map_err(|e| e.to_string())?;
    let rx = std::thread::spawn(move || -> std::io::Result<f64> {
        let mut buf = vec![0u8; size.max(1) + 64];
        let mut start = None;
        for i in 0..count {
            let n = b.recv(&mut buf)?;
            if n != size {
                return Err(std::io::Error::other(format!("datagram of {n} bytes")));
            }
            if i == 0 {
                start = Some(Instant::now());
            }
        }
        Ok(start.map_or(0.0, |s| s.elapsed().as_secs_f64()))
    });
    let tx = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0x3cu8; size];
        for i in 0..count {
            buf[..8.min(size)].copy_from_slice(&i.to_le_bytes()[..8.min(size)]);
            a.send(&buf)?;
        }
        Ok(())
    });
    tx.join()
        .map_err(|_| "sender panicked")?
        .map_err(|e| e.to_string())?;
    let secs = rx
        .join()
        .map_err(|_| "receiver panicked")?
        .map_err(|e| e.to_string())?;
    Ok(count as f64 / secs)
}

fn bench_frames(
    size: usize,
    mode: Mode,
    count: Option<u64>,
    quick: bool,
    reps: usize,
) -> Res<String> {
    if size == 0 {
        return Err("--size must be positive".into());
    }
    let count = count
        .unwrap_or(if quick { 500_000 } else { 20_000_000 })
        .max(2);
    let kcount = (count / 4).max(2);
    let head = format!(
        "\"bench\":\"frames\",\"mode\":\"{}\",\"size\":{size}",
        mode.name()
    );
    measure(
        &head,
        "M frames/s",
        &format!(",\"count\":{count},\"kernel_count\":{kcount}"),
        reps,
        || shm_frames_run(size, mode, count).map(|r| r / 1e6),
        || kernel_frames(size, kcount).map(|r| r / 1e6),
    )
}

/// Nanoseconds of CPU a thread of this process has used.
fn thread_cpu_ns(tid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One UDP round trip from `dev` to the echo server; returns microseconds.
fn udp_round_trip(dev: &mut Device, h: SocketHandle, payload: &[u8]) -> Res<f64> {
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

fn bench_idle(count: Option<u64>, quick: bool) -> Res<String> {
    use smoltcp::socket::udp;
    let n = count.unwrap_or(if quick { 10 } else { 50 }).max(1);
    let gap = Duration::from_millis(20);
    let (lan, wan) = (unique("lan"), unique("wan"));
    let device = |name: &str, host: u8, function: &str| {
        DeviceConfig::from_toml(
            &format!(
                "name = \"{name}\"\nfunction = {function}\n\
                 local = {{ segment = \"{lan}\", address = \"10.0.0.{host}/24\" }}\n\
                 global = {{ segment = \"{wan}\", address = \"10.100.0.{host}/16\" }}\n"
            ),
            "bench",
        )
        .map_err(|e| e.to_string())
    };
    let mut server = Device::new(
        &device("idle-server", 2, "{ kind = \"echo\", port = 7 }")?,
        SegmentKind::Process,
    )
    .map_err(|e| e.to_string())?;
    let handle = server.handle();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get());
        server.run();
    });
    let tid = tid_rx.recv().map_err(|e| e.to_string())?;
    let mut client = Device::new(
        &device("idle-client", 1, "{ kind = \"passthrough\" }")?,
        SegmentKind::Process,
    )
    .map_err(|e| e.to_string())?;
    let mut sock = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
    );
    sock.bind(40000).map_err(|e| e.to_string())?;
    let h = client.sockets().add(sock);
    let payload = [0x42u8; 8];
    let result = (|| {
        // Warm up (neighbours, first wake), then let the server fall asleep.
        for _ in 0..3 {
            udp_round_trip(&mut client, h, &payload)?;
        }
        let window = if quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(1)
        };
        std::thread::sleep(Duration::from_millis(50));
        let c0 = thread_cpu_ns(tid).ok_or("cannot read the server's CPU time")?;
        std::thread::sleep(window);
        let c1 = thread_cpu_ns(tid).ok_or("cannot read the server's CPU time")?;
        let idle_cpu = (c1 - c0) as f64 / window.as_nanos() as f64 * 100.0;
        let mut busy = Vec::new();
        for _ in 0..n {
            busy.push(udp_round_trip(&mut client, h, &payload)?);
        }
        let mut idle = Vec::new();
        for _ in 0..n {
            std::thread::sleep(gap);
            idle.push(udp_round_trip(&mut client, h, &payload)?);
        }
        Ok::<_, String>((idle_cpu, median(&mut busy), median(&mut idle)))
    })();
    handle.stop();
    let _ = thread.join();
    let (idle_cpu, busy_rtt, idle_rtt) = result?;
    let kernel = kernel_idle_rtt(n, gap)?;
    Ok(format!(
        "{{\"bench\":\"idle\",\"mode\":\"thread\",\"size\":{},\"shmnet\":{},\"kernel\":{},\"unit\":\"us round trip after 20 ms idle\",\"ratio\":{},\"idle_cpu_percent\":{},\"busy_rtt_us\":{},\"wake_us\":{},\"count\":{n}}}",
        payload.len(),
        num(idle_rtt),
        num(kernel),
        num(kernel / idle_rtt),
        num(idle_cpu),
        num(busy_rtt),
        num((idle_rtt - busy_rtt).max(0.0)),
    ))
}

/// UDP round trips over 127.0.0.1 to a blocking echo thread, each after
/// `gap` of silence; returns the median in microseconds.
fn kernel_idle_rtt(n: u64, gap: Duration) -> Res<f64> {
    let e = |e: std::io::Error| e.to_string();
    let server = std::net::UdpSocket::bind("127.0.0.1:0").map_err(e)?;
    let addr = server.local_addr().map_err(e)?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..n {
            let Ok((len, from)) = server.recv_from(&mut buf) else {
                return;
            };
            let _ = server.send_to(&buf[..len], from);
        }
    });
    let client = std::net::UdpSocket::bind("127.0.0.1:0").map_err(e)?;
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(e)?;
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..n {
        std::thread::sleep(gap);
        let start = Instant::now();
        client.send_to(&[0x42; 8], addr).map_err(e)?;
        client.recv_from(&mut buf).map_err(e)?;
        rtts.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let _ = echo.join();
    Ok(median(&mut rtts))
}

// ---------------------------------------------------------------- functions

/// Functions `shmnet bench function` knows (and `--quick` runs).
pub const FUNCTIONS_BENCHED: &[&str] = &[
    "firewall", "encrypt", "compress", "reroute", "balancer", "qos",
];

const K1: &str = "4c80cdefbb5d10da906ac73c3613a6342e443b68";
const K2: &str = "feffe9928665731c6d6a8f9467308308cafebabe";

/// The function configuration(s) of each benchmarked chain. Addresses
/// follow `chain_configs`: device k sits between 10.(10+k).0.254 and
/// 10.(11+k).0.1.
fn chain_functions(name: &str) -> Res<Vec<String>> {
    Ok(match name {
        // Lets the client's connections out (and their replies back in).
        "firewall" => vec![
            "{ kind = \"firewall\", default = \"drop\", rule = [{ action = \"accept\", direction = \"out\", proto = \"tcp\", dport = 5000 }] }".into(),
        ],
        // An ESP tunnel over the hop between the two devices.
        "encrypt" => vec![
            format!(
                "{{ kind = \"encrypt\", local_address = \"10.11.0.1\", peer_address = \"10.11.0.254\", \
                 outbound = {{ spi = 0x1001, key = \"{K1}\" }}, inbound = [{{ spi = 0x2002, key = \"{K2}\" }}] }}"
            ),
            format!(
                "{{ kind = \"encrypt\", hop = \"local\", local_address = \"10.11.0.254\", peer_address = \"10.11.0.1\", \
                 outbound = {{ spi = 0x2002, key = \"{K2}\" }}, inbound = [{{ spi = 0x1001, key = \"{K1}\" }}] }}"
            ),
        ],
        // The server as the single backend behind a VIP on the server's
        // network; the balancer is the server's gateway (NAT mode).
        "balancer" => vec![format!(
            "{{ kind = \"balancer\", service = [{{ name = \"bench\", vip = \"10.11.0.100:{PORT}\", \
             backends = [\"10.11.0.2:{PORT}\"], check = \"none\" }}] }}"
        )],
        // A compressor/decompressor pair: the hop between them is compressed.
        "compress" => vec![
            "{ kind = \"compress\" }".into(),
            "{ kind = \"compress\", hop = \"local\" }".into(),
        ],
        // Two classes, one matched by DSCP; the bulk class's rate does not
        // limit (and its default queue holds the sender's window).
        "qos" => vec![
            "{ kind = \"qos\", default = \"bulk\", class = [{ name = \"voice\", dscp = [46] }, \
             { name = \"bulk\", rate = \"1000gbit\" }] }"
                .into(),
        ],
        // The client's connections to the server's port go to the server
        // (10.11.0.2, health-checked by ICMP) by a rule, not by the table.
        "reroute" => vec![
            "{ kind = \"reroute\", next_hop = [{ name = \"server\", address = \"10.11.0.2\" }], \
             rule = [{ name = \"bulk\", proto = \"tcp\", dport = 5000, via = [\"server\"] }] }".into(),
        ],
        other => {
            return Err(format!(
                "no benchmark for function {other:?}; known: {}",
                FUNCTIONS_BENCHED.join(", ")
            ));
        }
    })
}

/// An Ethernet + IPv4 + TCP frame (checksums left zero: functions here do
/// not verify them).
fn tcp_frame(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20 + payload.len()];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let tcp = &mut ip[20..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..20 + payload.len()].copy_from_slice(payload);
    f
}

/// Runs `f` on a fresh copy of `template` `rounds` times; returns ns per
/// call, less the copy (measured alone).
fn per_packet_ns(
    template: &[u8],
    rounds: usize,
    mut f: impl FnMut(&mut [u8]) -> Res<()>,
) -> Res<f64> {
    let mut buf = vec![0u8; 9014.max(template.len())];
    let t0 = Instant::now();
    for _ in 0..rounds {
        buf[..template.len()].copy_from_slice(std::hint::black_box(template));
    }
    let copy = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for _ in 0..rounds {
        buf[..template.len()].copy_from_slice(std::hint::black_box(template));
        f(&mut buf)?;
    }
    Ok((t0.elapsed().as_secs_f64() - copy).max(0.0) / rounds as f64 * 1e9)
}

/// Text-like bytes (words from a small vocabulary): what compression
/// meets on real links, neither all zeros nor noise.
fn corpus(len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the ",
        "device ",
        "packet ",
        "shared ",
        "memory ",
        "ring ",
        "stack ",
        "frame ",
        "of ",
        "and ",
        "to ",
        "network ",
        "function ",
        "a ",
        "is ",
        "with ",
        "in ",
        "buffer ",
        "port ",
        "segment ",
        "link ",
        "peer ",
        "router ",
        "chain ",
    ];
    let mut x = 0x2545_f491_u32;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(WORDS[x as usize % WORDS.len()].as_bytes());
        if x.is_multiple_of(11) {
            out.extend_from_slice(format!("{} ", x % 1000).as_bytes());
        }
    }
    out.truncate(len);
    out
}

/// The device files of a chain client → `middles` → server: network i
/// joins device i and i+1, addresses 10.(10+i).0.0/24.
fn chain_configs(functions: &[&str]) -> Res<Vec<DeviceSettings>> {
    let n = functions.len();
    let nets: Vec<String> = (0..=n).map(|i| unique(&format!("net{i}"))).collect();
    let net = |i: usize, host: u8| format!("10.{}.0.{host}", 10 + i);
    let mut texts = Vec::new();
    texts.push(format!(
        "name = \"chain-client\"\nlocal = {{ segment = \"{}\", address = \"{}/24\" }}\n\
         global = {{ segment = \"{}\", address = \"10.200.0.1/16\" }}\n\
         route = [{{ to = \"10.{}.0.0/24\", via = \"{}\" }}]\n",
        nets[0],
        net(0, 1),
        unique("cw"),
        10 + n,
        net(0, 254)
    ));
    for (k, f) in functions.iter().enumerate() {
        let mut routes = Vec::new();
        if k + 1 < n {
            routes.push(format!(
                "{{ to = \"10.{}.0.0/24\", via = \"{}\" }}",
                10 + n,
                net(k + 1, 254)
            ));
        }
        if k > 0 {
            // Back to the client through the previous device's global address.
            routes.push(format!(
                "{{ to = \"10.10.0.0/24\", via = \"{}\" }}",
                net(k, 1)
            ));
        }
        texts.push(format!(
            "name = \"chain-{k}\"\nforward = true\nfunction = {f}\n\
             local = {{ segment = \"{}\", address = \"{}/24\" }}\n\
             global = {{ segment = \"{}\", address = \"{}/24\" }}\nroute = [{}]\n",
            nets[k],
            net(k, 254),
            nets[k + 1],
            net(k + 1, 1),
            routes.join(", ")
        ));
    }
    texts.push(format!(
        "name = \"chain-server\"\nlocal = {{ segment = \"{}\", address = \"{}/24\" }}\n\
         global = {{ segment = \"{}\", address = \"10.201.0.2/16\" }}\n\
         route = [{{ to = \"10.10.0.0/24\", via = \"{}\" }}]\n",
        nets[n],
        net(n, 2),
        unique("sw"),
        net(n, 1)
    ));
    texts
        .iter()
        .map(|t| DeviceConfig::from_toml(t, "bench chain").map_err(|e| e.to_string()))
        .collect()
}

/// Where the chain's client connects for function `name`: the server,
/// unless the function puts another address in front of it.
fn chain_destination(name: &str) -> Option<IpAddress> {
    (name == "balancer").then_some(IpAddress::v4(10, 11, 0, 100))
}

/// TCP from the chain's client to a sink on its server (or to `dst`, which
/// leads there), `bytes` of `data` repeated; returns seconds.
fn chain_tcp(functions: &[&str], dst: Option<IpAddress>, data: &[u8], bytes: u64) -> Res<f64> {
    let cfgs = chain_configs(functions)?;
    let n = functions.len();
    let mut running = Vec::new();
    let mut server = Device::new(&cfgs[n + 1], SegmentKind::Process).map_err(|e| e.to_string())?;
    let sh = listen(&mut server);
    let handle = server.handle();
    running.push((
        handle,
        std::thread::spawn(move || {
            serve(&mut server, sh, false, false);
        }),
    ));
    for c in &cfgs[1..=n] {
        let (h, t) = Device::new(c, SegmentKind::Process)
            .map_err(|e| e.to_string())?
            .spawn();
        running.push((h, std::thread::spawn(move || drop(t.join()))));
    }
    let result = (|| {
        let mut dev = Device::new(&cfgs[0], SegmentKind::Process).map_err(|e| e.to_string())?;
        let h = dev
            .sockets()
            .add(crate::functions::diag::tcp_socket(SOCK_BUF));
        let (iface, sockets) = dev.parts();
        let dst = dst.unwrap_or(IpAddress::v4(10, 10 + n as u8, 0, 2));
        sockets
            .get_mut::<tcp::Socket>(h)
            .connect(iface.context(), (dst, PORT), 49152)
            .map_err(|e| format!("connect: {e}"))?;
        let start = Instant::now();
        let mut sent = 0u64;
        let mut err = None;
        dev.run_until(|d| {
            let s = d.sockets().get_mut::<tcp::Socket>(h);
            while sent < bytes && s.can_send() {
                let off = (sent % data.len() as u64) as usize;
                let chunk = &data[off..data.len().min(off + (bytes - sent) as usize)];
                match s.send_slice(chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => sent += k as u64,
                }
            }
            if sent == bytes && s.send_queue() == 0 {
                return true;
            }
            if start.elapsed() > TIMEOUT {
                err = Some(format!("timed out after {sent} bytes ({:?})", s.state()));
            }
            err.is_some()
        });
        let secs = start.elapsed().as_secs_f64();
        hang_up(&mut dev, h);
        err.map_or(Ok(secs), Err)
    })();
    for (h, t) in running {
        if std::env::var_os("SHMNET_BENCH_STATS").is_some() {
            eprintln!("{:?}", h.stats());
        }
        h.stop();
        let _ = t.join();
    }
    result
}

/// Cost per packet of a function on a representative packet of an
/// established flow, and the bare library speed where there is one:
/// `(ns_per_packet, raw Gbit/s)`.
/// What `function_cost` measured.
struct Cost {
    /// ns per 1400-byte packet of an established flow.
    ns: f64,
    /// The bare library's Gbit/s on the same data, where there is one.
    raw: Option<f64>,
    /// ns per packet with a 64-byte payload, for functions whose cost
    /// includes copying the packet (the decision without the copies).
    small_ns: Option<f64>,
}

fn function_cost(name: &str, data: &[u8], quick: bool) -> Res<Cost> {
    let cost = |ns: f64| Cost {
        ns,
        raw: None,
        small_ns: None,
    };
    use crate::functions::{Frame, Role, Verdict, build};
    let rounds = if quick { 20_000 } else { 200_000 };
    let (client, server) = ([10, 10, 0, 1], [10, 12, 0, 2]);
    let data_packet = tcp_frame(client, server, 49152, PORT, 0x18, &data[..1400]);
    let cfgs = chain_functions(name)?;
    let cfg: crate::functions::FunctionConfig = toml::from_str(&format!("f = {}", cfgs[0]))
        .map(
            |t: std::collections::HashMap<String, crate::functions::FunctionConfig>| t["f"].clone(),
        )
        .map_err(|e| e.to_string())?;
    let mut func = build(&cfg).map_err(|e| e.to_string())?;
    let now = smoltcp::time::Instant::from_secs(1);
    // `buf` holds a packet of `len` bytes in a buffer as big as a jumbo
    // frame (room for functions that grow packets).
    let mut run = |buf: &mut [u8], len: usize, from: Role, want: &[Verdict]| -> Res<()> {
        let mut f = Frame::new(buf, len, crate::wire::LinkMedium::Ethernet);
        let v = func.on_ingress(now, from, &mut f);
        if want.contains(&v) {
            Ok(())
        } else {
            Err(format!(
                "{name}: unexpected verdict {v:?} on the sample packet"
            ))
        }
    };
    match name {
        "firewall" => {
            // Establish the flow, then time a data packet of it.
            for (frame, from) in [
                (
                    tcp_frame(client, server, 49152, PORT, 0x02, &[]),
                    Role::Local,
                ),
                (
                    tcp_frame(server, client, PORT, 49152, 0x12, &[]),
                    Role::Global,
                ),
                (
                    tcp_frame(client, server, 49152, PORT, 0x10, &[]),
                    Role::Local,
                ),
            ] {
                run(&mut frame.clone(), frame.len(), from, &[Verdict::Pass])?;
            }
            let ns = per_packet_ns(&data_packet, rounds * 10, |b| {
                run(b, data_packet.len(), Role::Local, &[Verdict::Pass])
            })?;
            Ok(cost(ns))
        }
        "qos" => {
            // Classify + enqueue + dequeue of one data packet, then of a
            // small one (the same decision, next to nothing to copy).
            let mut out = vec![0u8; 9014];
            // Time moves on (1 us a packet) so the class's bucket refills.
            let mut t = now;
            let mut cycle = |packet: &[u8]| {
                let len = packet.len();
                per_packet_ns(packet, rounds * 10, |b| {
                    t += smoltcp::time::Duration::from_micros(1);
                    let now = t;
                    let v = func.on_ingress(
                        now,
                        Role::Local,
                        &mut Frame::new(b, len, crate::wire::LinkMedium::Ethernet),
                    );
                    if v != Verdict::Consumed {
                        return Err(format!("qos: unexpected verdict {v:?}"));
                    }
                    match func.poll_transmit(now, &mut out) {
                        Some(e) if e.len == len => Ok(()),
                        other => Err(format!("qos: released {other:?}")),
                    }
                })
            };
            let ns = cycle(&data_packet)?;
            let small = tcp_frame(client, server, 49152, PORT, 0x18, &data[..64]);
            Ok(Cost {
                small_ns: Some(cycle(&small)?),
                ..cost(ns)
            })
        }
        "reroute" => {
            // A packet the rule sends to its next hop.
            let via = Verdict::Via(smoltcp::wire::IpAddress::v4(10, 11, 0, 2));
            let ns = per_packet_ns(&data_packet, rounds * 10, |b| {
                run(b, data_packet.len(), Role::Local, &[via])
            })?;
            Ok(cost(ns))
        }
        "balancer" => {
            // A flow's SYN and the backend's SYN-ACK, then a data packet of
            // it to the VIP: flow lookup and DNAT, timed.
            let vip = [10, 11, 0, 100];
            let backend = [10, 11, 0, 2];
            for (frame, from) in [
                (tcp_frame(client, vip, 49152, PORT, 0x02, &[]), Role::Local),
                (
                    tcp_frame(backend, client, PORT, 49152, 0x12, &[]),
                    Role::Global,
                ),
            ] {
                run(&mut frame.clone(), frame.len(), from, &[Verdict::Modified])?;
            }
            let to_vip = tcp_frame(client, vip, 49152, PORT, 0x18, &data[..1400]);
            let ns = per_packet_ns(&to_vip, rounds * 10, |b| {
                run(b, to_vip.len(), Role::Local, &[Verdict::Modified])
            })?;
            Ok(cost(ns))
        }
        "encrypt" | "compress" => {
            let ns = per_packet_ns(&data_packet, rounds, |b| {
                run(b, data_packet.len(), Role::Local, &[Verdict::Modified])
            })?;
            let block = 1400;
            let t0 = Instant::now();
            if name == "encrypt" {
                use aes_gcm::aead::{AeadInOut, KeyInit};
                let key: Vec<u8> = (0..16)
                    .map(|i| u8::from_str_radix(&K1[2 * i..2 * i + 2], 16).unwrap_or(0))
                    .collect();
                let cipher = aes_gcm::Aes128Gcm::new_from_slice(&key).map_err(|e| e.to_string())?;
                let mut buf = data[..block].to_vec();
                for i in 0..rounds as u64 {
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&i.to_be_bytes());
                    cipher
                        .encrypt_inout_detached(&nonce.into(), &[0u8; 8], (&mut buf[..]).into())
                        .map_err(|e| e.to_string())?;
                }
            } else {
                let mut table = lz4_flex::block::CompressTable::default();
                let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(block)];
                for i in 0..rounds {
                    let off = (i * block) % (data.len() - block);
                    let input = std::hint::black_box(&data[off..off + block]);
                    lz4_flex::block::compress_into_with_table(input, &mut out, &mut table)
                        .map_err(|e| e.to_string())?;
                }
            }
            let raw = rounds as f64 * block as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e9;
            Ok(Cost {
                raw: Some(raw),
                ..cost(ns)
            })
        }
        other => Err(format!("no benchmark for function {other:?}")),
    }
}

fn bench_function(name: &str, bytes: Option<u64>, quick: bool, reps: usize) -> Res<String> {
    let functions = chain_functions(name)?;
    let chain: Vec<&str> = functions.iter().map(String::as_str).collect();
    let data = corpus(1 << 20);
    let bytes = bytes.unwrap_or(if quick { 16 << 20 } else { 256 << 20 });
    let Cost { ns, raw, small_ns } = function_cost(name, &data, quick)?;
    let mut runs = Vec::new();
    for _ in 0..reps {
        let secs = chain_tcp(&chain, chain_destination(name), &data, bytes)?;
        runs.push(bytes as f64 * 8.0 / secs / 1e9);
    }
    let gbps = median(&mut runs.clone());
    let mut line = format!(
        "{{\"bench\":\"function\",\"name\":\"{name}\",\"ns_per_packet\":{},\"gbps\":{},\"unit\":\"Gbit/s\",\"bytes\":{bytes},\"reps\":{reps},\"gbps_runs\":{}",
        num(ns),
        num(gbps),
        list(&runs)
    );
    if let Some(small) = small_ns {
        line.push_str(&format!(",\"ns_per_small_packet\":{}", num(small)));
    }
    if let Some(raw) = raw {
        // The function alone on one core, from its cost per 1400-byte packet.
        let alone = 1400.0 * 8.0 / ns.max(1e-9);
        line.push_str(&format!(
            ",\"raw_gbps\":{},\"ratio\":{},\"function_gbps\":{},\"function_ratio\":{}",
            num(raw),
            num(gbps / raw),
            num(alone),
            num(alone / raw)
        ));
    }
    line.push('}');
    Ok(line)
}
