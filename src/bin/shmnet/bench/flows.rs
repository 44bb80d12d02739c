//! Fresh connections: `bench flows` (one transfer per connection, 64 KiB
//! to 256 MiB) and `bench connect` (connect, 1 KiB request, 1 KiB reply,
//! close), each against the kernel's TCP over 127.0.0.1 in the same run.
//!
//! Every connection is opened the way a function opens one: a socket from
//! the device (`add_tcp`, which reuses closed ones), connected, used,
//! closed and removed. A transfer is timed from `connect` until the client
//! has seen the server close (the server closes once it has read
//! everything), like a kernel client that writes, shuts down its sending
//! side and reads to EOF.

use std::time::{Duration, Instant};

use shmnet::shm::SegmentKind;
use shmnet::stack::{DEFAULT_TCP_BUFFER, NetDevice};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use super::kernel::{kernel_connects, kernel_flows};
use super::peer::{PeerProc, Unlink};
use super::report::{median, num};
use super::{Mode, PORT, Res, TIMEOUT, settings, unique};

/// Bytes per connection `bench flows` measures by default.
const FLOW_SIZES: [u64; 6] = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 256 << 20];
/// Request and reply of `bench connect`.
const EXCHANGE: usize = 1024;
/// Idle connections held open to measure their memory.
const IDLE_CONNECTIONS: usize = 64;

/// What the server does with each connection it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Service {
    /// Read to EOF, then close.
    Sink,
    /// Read this many bytes, reply with as many, close.
    Reply(usize),
}

impl Service {
    pub(super) fn arg(self) -> String {
        match self {
            Service::Sink => "sink".into(),
            Service::Reply(n) => format!("reply{n}"),
        }
    }

    pub(super) fn parse(s: &str) -> Res<Service> {
        match s {
            "sink" => Ok(Service::Sink),
            _ => s
                .strip_prefix("reply")
                .and_then(|n| n.parse().ok())
                .map(Service::Reply)
                .ok_or_else(|| format!("unknown service {s:?}")),
        }
    }
}

/// The server side: listeners on PORT, each replaced by a fresh one when
/// its connection is over, and always two spare ones listening (smoltcp
/// has no backlog: a SYN that finds no listener is refused).
pub(super) struct Server {
    service: Service,
    conns: Vec<(SocketHandle, usize)>,
    scratch: Vec<u8>,
}

const SPARE_LISTENERS: usize = 2;

impl Server {
    pub(super) fn new(dev: &mut NetDevice, service: Service) -> Server {
        let mut s = Server {
            service,
            conns: Vec::new(),
            scratch: vec![0; 64 * 1024],
        };
        s.top_up(dev);
        s
    }

    fn top_up(&mut self, dev: &mut NetDevice) {
        let listening = self
            .conns
            .iter()
            .filter(|&&(h, _)| dev.sockets().get::<tcp::Socket>(h).state() == tcp::State::Listen)
            .count();
        for _ in listening..SPARE_LISTENERS {
            let h = dev.add_tcp();
            let s = dev.sockets().get_mut::<tcp::Socket>(h);
            s.listen(PORT).expect("listen on a closed socket");
            self.conns.push((h, 0));
        }
    }

    /// Serves every connection a step; returns whether anything moved.
    pub(super) fn step(&mut self, dev: &mut NetDevice) -> bool {
        let mut moved = false;
        let mut i = 0;
        while i < self.conns.len() {
            let (h, ref mut got) = self.conns[i];
            let s = dev.sockets().get_mut::<tcp::Socket>(h);
            while let Ok(n) = s.recv_slice(&mut self.scratch) {
                if n == 0 {
                    break;
                }
                *got += n;
                moved = true;
            }
            match self.service {
                Service::Sink => {
                    if s.state() == tcp::State::CloseWait && s.recv_queue() == 0 {
                        s.close();
                        moved = true;
                    }
                }
                Service::Reply(n) => {
                    if *got >= n && s.may_send() {
                        *got = 0;
                        let _ = s.send_slice(&self.scratch[..n.min(self.scratch.len())]);
                        s.close();
                        moved = true;
                    }
                }
            }
            if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) {
                dev.remove_socket(h);
                self.conns.swap_remove(i);
                moved = true;
            } else {
                i += 1;
            }
        }
        // A SYN turns a listener into a connection without moving data.
        self.top_up(dev);
        moved
    }
}

/// The server device's settings, with TCP buffers of `buffer` bytes.
pub(super) fn server_settings(
    lan: &str,
    wan: &str,
    mtu: u32,
    buffer: usize,
) -> Res<shmnet::config::DeviceSettings> {
    sized_settings("bench-b", 2, lan, wan, mtu, buffer)
}

/// [`settings`] with TCP buffers of `buffer` bytes.
fn sized_settings(
    name: &str,
    host: u8,
    lan: &str,
    wan: &str,
    mtu: u32,
    buffer: usize,
) -> Res<shmnet::config::DeviceSettings> {
    let mut s = settings(name, host, lan, wan, mtu)?;
    s.spec.sockets.tcp_buffer = buffer;
    Ok(s)
}

/// The server device, on a thread or in a child process.
enum Far {
    Thread(shmnet::stack::DeviceHandle, std::thread::JoinHandle<()>),
    Process(PeerProc, Unlink),
}

/// A client device connected to a server device serving `service`.
struct Pair {
    client: NetDevice,
    far: Far,
    next_port: u16,
}

impl Pair {
    fn start(mode: Mode, mtu: u32, service: Service, buffer: usize) -> Res<Pair> {
        let (lan, wan) = (unique("lan"), unique("wan"));
        let far = match mode {
            Mode::Thread => {
                let s = server_settings(&lan, &wan, mtu, buffer)?;
                let mut dev =
                    NetDevice::new(&s, SegmentKind::InProcess).map_err(|e| e.to_string())?;
                let handle = dev.handle();
                let t = std::thread::Builder::new()
                    .name("bench-server".into())
                    .spawn(move || {
                        let mut server = Server::new(&mut dev, service);
                        dev.run_until(|d| {
                            server.step(d);
                            false
                        });
                    })
                    .map_err(|e| e.to_string())?;
                Far::Thread(handle, t)
            }
            Mode::Process => {
                let unlink = Unlink(vec![lan.clone(), wan.clone()]);
                let args = [
                    "serve",
                    &lan,
                    &wan,
                    &mtu.to_string(),
                    &service.arg(),
                    &buffer.to_string(),
                ];
                let peer = PeerProc::spawn(&args.map(String::from))?;
                Far::Process(peer, unlink)
            }
        };
        let kind = match mode {
            Mode::Thread => SegmentKind::InProcess,
            Mode::Process => SegmentKind::Shared,
        };
        let s = sized_settings("bench-a", 1, &lan, &wan, mtu, buffer)?;
        let client = NetDevice::new(&s, kind).map_err(|e| e.to_string())?;
        Ok(Pair {
            client,
            far,
            next_port: 49152,
        })
    }

    fn finish(self) -> Res<()> {
        drop(self.client);
        match self.far {
            Far::Thread(h, t) => {
                h.stop();
                t.join().map_err(|_| "server thread panicked".to_string())
            }
            Far::Process(p, _unlink) => p.finish(),
        }
    }

    /// Opens a connection to the server; returns its socket.
    fn open(&mut self) -> Res<SocketHandle> {
        let port = self.next_port;
        self.next_port = if port == u16::MAX { 49152 } else { port + 1 };
        let h = self.client.add_tcp();
        let (iface, sockets) = self.client.parts();
        sockets
            .get_mut::<tcp::Socket>(h)
            .connect(iface.context(), (IpAddress::v4(10, 0, 0, 2), PORT), port)
            .map_err(|e| format!("connect: {e}"))?;
        Ok(h)
    }

    /// One connection: sends `send` bytes, reads until the server closes
    /// (expecting `reply` bytes), closes; returns seconds from `connect`
    /// to the server's close.
    fn exchange(&mut self, send: u64, reply: usize) -> Res<f64> {
        let start = Instant::now();
        let h = self.open()?;
        let (mut sent, mut got) = (0u64, 0usize);
        let mut result = Ok(());
        let mut scratch = [0u8; 4096];
        self.client.run_until(|d| {
            let s = d.sockets().get_mut::<tcp::Socket>(h);
            while sent < send && s.can_send() {
                let rem = send - sent;
                match s.send(|b| {
                    let n = b.len().min(rem as usize);
                    (n, n)
                }) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sent += n as u64,
                }
            }
            if reply == 0 && sent == send && s.may_send() {
                s.close();
            }
            while let Ok(n) = s.recv_slice(&mut scratch) {
                if n == 0 {
                    break;
                }
                got += n;
            }
            let eof = !s.may_recv() && s.state() != tcp::State::SynSent;
            if eof && sent == send && got == reply && s.recv_queue() == 0 {
                if s.may_send() {
                    s.close();
                }
                return true;
            }
            let failed = if s.state() == tcp::State::Closed {
                Some("connection lost")
            } else if start.elapsed() > TIMEOUT {
                Some("timed out")
            } else {
                None
            };
            if let Some(why) = failed {
                result = Err(format!(
                    "{why} in {:?} after {sent} of {send} bytes sent, {got} of {reply} received",
                    s.state()
                ));
            }
            failed.is_some()
        });
        let secs = start.elapsed().as_secs_f64();
        self.retire(h);
        result.map(|()| secs)
    }

    /// Lets `h`'s FIN (or final ACK) go out, then removes it.
    fn retire(&mut self, h: SocketHandle) {
        let t0 = Instant::now();
        self.client.run_until(|d| {
            let s = d.sockets().get_mut::<tcp::Socket>(h);
            matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)
                || t0.elapsed() > Duration::from_millis(200)
        });
        self.client.remove_socket(h);
    }
}

/// Connections per size: enough for a stable median, bounded in time.
fn connections(bytes: u64, quick: bool) -> usize {
    let budget: u64 = if quick { 32 << 20 } else { 512 << 20 };
    let (lo, hi) = if quick { (3, 30) } else { (5, 200) };
    ((budget / bytes) as usize).clamp(lo, hi)
}

/// `bench flows` for each mode and MTU asked for (default: both of each),
/// sizes `bytes` (default [`FLOW_SIZES`], the largest left out with
/// `quick`); one JSON line per size, joined.
pub(super) fn bench_flows_all(
    mode: Option<Mode>,
    mtu: Option<u32>,
    bytes: Option<&[u64]>,
    buffer: Option<usize>,
    quick: bool,
) -> Res<String> {
    let sizes = match bytes {
        Some(b) => b,
        None if quick => &FLOW_SIZES[..FLOW_SIZES.len() - 1],
        None => &FLOW_SIZES[..],
    };
    let buffer = buffer.unwrap_or(DEFAULT_TCP_BUFFER);
    let modes = mode.map_or(vec![Mode::Thread, Mode::Process], |m| vec![m]);
    let mtus = mtu.map_or(vec![1500, 65535], |m| vec![m]);
    let mut lines = Vec::new();
    for &m in &modes {
        for &u in &mtus {
            lines.extend(bench_flows(m, u, sizes, buffer, quick)?);
        }
    }
    Ok(lines.join("\n"))
}

/// `bench flows` for one mode and MTU: one JSON line per size.
fn bench_flows(
    mode: Mode,
    mtu: u32,
    sizes: &[u64],
    buffer: usize,
    quick: bool,
) -> Res<Vec<String>> {
    let mut pair = Pair::start(mode, mtu, Service::Sink, buffer)?;
    let mut lines = Vec::new();
    let r = (|| {
        for &bytes in sizes {
            if bytes == 0 {
                return Err("sizes must be positive".to_string());
            }
            let n = connections(bytes, quick);
            let gbit = |secs: f64| bytes as f64 * 8.0 / secs / 1e9;
            let mut s = Vec::with_capacity(n);
            for _ in 0..n {
                s.push(gbit(pair.exchange(bytes, 0)?));
            }
            let mut k: Vec<f64> = kernel_flows(bytes, n)?.into_iter().map(gbit).collect();
            let (sm, km) = (median(&mut s), median(&mut k));
            lines.push(format!(
                "{{\"bench\":\"flows\",\"mode\":\"{}\",\"mtu\":{mtu},\"bytes\":{bytes},\"shmnet\":{},\"kernel\":{},\"unit\":\"Gbit/s\",\"ratio\":{},\"connections\":{n},\"tcp_buffer\":{buffer}}}",
                mode.name(),
                num(sm),
                num(km),
                num(sm / km)
            ));
        }
        Ok(())
    })();
    let f = pair.finish();
    r?;
    f?;
    Ok(lines)
}

/// `bench connect`: connections per second, sequential, each connect +
/// 1 KiB request + 1 KiB reply + close; with the memory an idle connection
/// and a device cost (thread mode: both ends are in this process).
pub(super) fn bench_connect(mode: Mode, count: Option<u64>, quick: bool) -> Res<String> {
    let n = count.unwrap_or(if quick { 500 } else { 20_000 }).max(1) as usize;
    let rss0 = rss_bytes();
    let mut pair = Pair::start(mode, 1500, Service::Reply(EXCHANGE), DEFAULT_TCP_BUFFER)?;
    let rss1 = rss_bytes();
    let r = (|| -> Res<(f64, f64, Option<u64>)> {
        let mut shm = Vec::with_capacity(3);
        let mut kernel = Vec::with_capacity(3);
        for _ in 0..if quick { 1 } else { 3 } {
            let t = Instant::now();
            for _ in 0..n {
                pair.exchange(EXCHANGE as u64, EXCHANGE)?;
            }
            shm.push(n as f64 / t.elapsed().as_secs_f64());
            kernel.push(n as f64 / kernel_connects(n, EXCHANGE)?);
        }
        let per_conn = idle_connection_memory(&mut pair)?;
        Ok((median(&mut shm), median(&mut kernel), per_conn))
    })();
    let f = pair.finish();
    let (sm, km, per_conn) = r?;
    f?;
    // Thread mode creates two devices here; process mode one.
    let devices = if mode == Mode::Thread { 2 } else { 1 };
    let per_device = rss1.saturating_sub(rss0) / devices;
    Ok(format!(
        "{{\"bench\":\"connect\",\"mode\":\"{}\",\"mtu\":1500,\"request\":{EXCHANGE},\"reply\":{EXCHANGE},\"shmnet\":{},\"kernel\":{},\"unit\":\"connections/s\",\"ratio\":{},\"count\":{n},\"rss_per_connection\":{},\"rss_per_device\":{per_device}}}",
        mode.name(),
        num(sm),
        num(km),
        num(sm / km),
        per_conn.map_or("null".to_string(), |b| b.to_string()),
    ))
}

/// Resident bytes each of IDLE_CONNECTIONS established, idle connections
/// adds (both ends in thread mode, the client end in process mode); `None`
/// where /proc cannot tell.
fn idle_connection_memory(pair: &mut Pair) -> Res<Option<u64>> {
    let before = rss_bytes();
    let mut open = Vec::with_capacity(IDLE_CONNECTIONS);
    // One at a time: the server keeps only two spare listeners.
    for _ in 0..IDLE_CONNECTIONS {
        let h = pair.open()?;
        open.push(h);
        let t0 = Instant::now();
        pair.client.run_until(|d| {
            d.sockets().get::<tcp::Socket>(h).state() != tcp::State::SynSent
                || t0.elapsed() > Duration::from_secs(5)
        });
    }
    let after = rss_bytes();
    let established = open
        .iter()
        .filter(|&&h| {
            pair.client.sockets().get::<tcp::Socket>(h).state() == tcp::State::Established
        })
        .count();
    for h in open {
        pair.client.sockets().get_mut::<tcp::Socket>(h).abort();
        pair.retire(h);
    }
    if established != IDLE_CONNECTIONS {
        return Err(format!(
            "only {established} of {IDLE_CONNECTIONS} idle connections were established"
        ));
    }
    Ok((before > 0 && after > 0).then(|| after.saturating_sub(before) / IDLE_CONNECTIONS as u64))
}

/// This process's resident set in bytes (0 where /proc cannot tell).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * rustix::param::page_size() as u64)
}
