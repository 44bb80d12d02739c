//! A closed-loop load generator for request/response benchmarks (`bench
//! cache`, `bench proxy`), the same on both sides: a fixed set of
//! connections, each keeping up to `depth` requests in flight (pipelined),
//! every reply parsed and checked by a [`Protocol`]. One driver runs the
//! connections on a client device's smoltcp sockets, the other on
//! non-blocking kernel sockets in one thread waiting in `poll(2)`; both
//! count the replies completed before the deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use shmnet::stack::NetDevice;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use super::{Res, TIMEOUT};

/// One connection's protocol: writes requests, parses and checks replies
/// in request order.
pub(super) trait Protocol {
    /// Appends the next request to `out`; `false` when there is none
    /// (a finite phase such as a preload is over).
    fn request(&mut self, out: &mut Vec<u8>) -> bool;
    /// Parses the reply to the oldest request in flight from the front of
    /// `input`: the bytes it took, `None` if incomplete, or why it is wrong.
    fn reply(&mut self, input: &[u8]) -> Res<Option<usize>>;
}

/// A connection's buffers and counts, whatever carries it.
struct Conn<P> {
    proto: P,
    out: Vec<u8>,
    sent: usize,
    input: Vec<u8>,
    in_flight: usize,
    done: u64,
    exhausted: bool,
}

impl<P: Protocol> Conn<P> {
    fn new(proto: P) -> Conn<P> {
        Conn {
            proto,
            out: Vec::with_capacity(16 << 10),
            sent: 0,
            input: Vec::with_capacity(16 << 10),
            in_flight: 0,
            done: 0,
            exhausted: false,
        }
    }

    /// Tops the requests in flight up to `depth`.
    fn issue(&mut self, depth: usize) {
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
        while !self.exhausted && self.in_flight < depth {
            if self.proto.request(&mut self.out) {
                self.in_flight += 1;
            } else {
                self.exhausted = true;
            }
        }
    }

    fn unsent(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    fn receive(&mut self, data: &[u8]) -> Res<()> {
        let buffered = !self.input.is_empty();
        if buffered {
            self.input.extend_from_slice(data);
        }
        let mut pos = 0;
        let rest = loop {
            let input = if buffered { &self.input[..] } else { data };
            if pos == input.len() {
                break None;
            }
            if self.in_flight == 0 {
                return Err(format!("{} bytes nobody asked for", input.len() - pos));
            }
            match self.proto.reply(&input[pos..])? {
                Some(n) => {
                    pos += n;
                    self.in_flight -= 1;
                    self.done += 1;
                }
                None => break Some(pos),
            }
        };
        match (buffered, rest) {
            (true, None) => self.input.clear(),
            (true, Some(p)) => drop(self.input.drain(..p)),
            (false, Some(p)) => self.input.extend_from_slice(&data[p..]),
            (false, None) => {}
        }
        Ok(())
    }

    fn idle(&self) -> bool {
        self.exhausted && self.in_flight == 0
    }
}

/// What a run reached: replies completed and the seconds it took.
pub(super) struct Outcome {
    pub done: u64,
    pub secs: f64,
}

impl Outcome {
    pub(super) fn rate(&self) -> f64 {
        self.done as f64 / self.secs
    }
}

/// Connections from a client device to one server.
pub(super) struct ShmLoad {
    handles: Vec<SocketHandle>,
}

impl ShmLoad {
    /// Opens `n` connections to `dst` one after the other (the server's
    /// listeners are a bounded backlog).
    pub(super) fn connect(dev: &mut NetDevice, dst: (IpAddress, u16), n: usize) -> Res<ShmLoad> {
        let mut handles = Vec::with_capacity(n);
        let mut port = 40000u16;
        let t0 = Instant::now();
        while handles.len() < n {
            let h = dev.add_tcp();
            let (iface, sockets) = dev.parts();
            sockets
                .get_mut::<tcp::Socket>(h)
                .connect(iface.context(), dst, port)
                .map_err(|e| format!("connect: {e}"))?;
            port += 1;
            let mut up = false;
            dev.run_until(|d| {
                let st = d.sockets().get::<tcp::Socket>(h).state();
                up = st == tcp::State::Established;
                up || st == tcp::State::Closed || t0.elapsed() > Duration::from_secs(10)
            });
            if up {
                handles.push(h);
            } else {
                dev.remove_socket(h);
                if t0.elapsed() > Duration::from_secs(10) {
                    return Err(format!("only {} of {n} connections opened", handles.len()));
                }
            }
        }
        Ok(ShmLoad { handles })
    }

    /// Runs one protocol per connection, `depth` requests in flight each,
    /// until `limit` has passed (or, without one, every protocol is done).
    pub(super) fn run<P: Protocol>(
        &self,
        dev: &mut NetDevice,
        protos: Vec<P>,
        depth: usize,
        limit: Option<Duration>,
    ) -> Res<Outcome> {
        let mut conns: Vec<Conn<P>> = protos.into_iter().map(Conn::new).collect();
        let start = Instant::now();
        let end = start + limit.unwrap_or(TIMEOUT);
        let mut result = Ok(());
        dev.run_until(|d| {
            let step = (|| {
                let mut all_idle = true;
                for (c, &h) in conns.iter_mut().zip(&self.handles) {
                    let s = d.sockets().get_mut::<tcp::Socket>(h);
                    while s.can_recv() {
                        let mut err = Ok(());
                        let _ = s.recv(|b| {
                            err = c.receive(b);
                            (b.len(), ())
                        });
                        err?;
                    }
                    if !s.may_recv() || !s.may_send() {
                        return Err(format!(
                            "connection lost ({:?}) after {} replies",
                            s.state(),
                            c.done
                        ));
                    }
                    c.issue(depth);
                    if !c.unsent().is_empty() && s.can_send() {
                        let n = s.send_slice(c.unsent()).unwrap_or(0);
                        c.sent += n;
                    }
                    all_idle &= c.idle();
                }
                Ok(all_idle)
            })();
            let now = Instant::now();
            match step {
                Ok(all_idle) if limit.is_none() && all_idle => true,
                Ok(_) if now >= end => {
                    if limit.is_none() {
                        result = Err("timed out".into());
                    }
                    true
                }
                Ok(_) => false,
                Err(e) => {
                    result = Err(e);
                    true
                }
            }
        });
        let secs = start.elapsed().as_secs_f64();
        result.map(|()| Outcome {
            done: conns.iter().map(|c| c.done).sum(),
            secs,
        })
    }

    /// Resets every connection and gives the sockets back.
    pub(super) fn close(self, dev: &mut NetDevice) {
        for &h in &self.handles {
            dev.sockets().get_mut::<tcp::Socket>(h).abort();
        }
        let t0 = Instant::now();
        dev.run_until(|_| t0.elapsed() > Duration::from_millis(20));
        for h in self.handles {
            dev.remove_socket(h);
        }
    }
}

/// Kernel TCP connections to one server, driven by one thread.
pub(super) struct KernelLoad {
    streams: Vec<TcpStream>,
}

impl KernelLoad {
    pub(super) fn connect(addr: SocketAddr, n: usize) -> Res<KernelLoad> {
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            streams.push(s);
        }
        Ok(KernelLoad { streams })
    }

    /// [`ShmLoad::run`] on kernel sockets.
    pub(super) fn run<P: Protocol>(
        &mut self,
        protos: Vec<P>,
        depth: usize,
        limit: Option<Duration>,
    ) -> Res<Outcome> {
        let mut conns: Vec<Conn<P>> = protos.into_iter().map(Conn::new).collect();
        let mut scratch = vec![0u8; 64 << 10];
        let start = Instant::now();
        let end = start + limit.unwrap_or(TIMEOUT);
        let wait = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 5_000_000,
        };
        // Which sockets poll(2) found ready (all of them at first): only
        // those are read and written, as an epoll loop would.
        let mut ready = vec![true; conns.len()];
        loop {
            let mut all_idle = true;
            for ((c, s), ready) in conns.iter_mut().zip(&mut self.streams).zip(&mut ready) {
                if !std::mem::take(ready) {
                    all_idle &= c.idle();
                    continue;
                }
                loop {
                    match s.read(&mut scratch) {
                        Ok(0) => {
                            return Err(format!(
                                "the server closed a connection after {} replies",
                                c.done
                            ));
                        }
                        Ok(n) => {
                            c.receive(&scratch[..n])?;
                            if n < scratch.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(format!("read: {e}")),
                    }
                }
                c.issue(depth);
                while !c.unsent().is_empty() {
                    match s.write(c.unsent()) {
                        Ok(n) => c.sent += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(format!("write: {e}")),
                    }
                }
                all_idle &= c.idle();
            }
            let now = Instant::now();
            if limit.is_none() && all_idle {
                break;
            }
            if now >= end {
                if limit.is_none() {
                    return Err("timed out".into());
                }
                break;
            }
            // Sleep until a reply (or room to write) arrives.
            let mut fds: Vec<PollFd<'_>> = conns
                .iter()
                .zip(&self.streams)
                .map(|(c, s)| {
                    let mut f = PollFlags::IN;
                    if !c.unsent().is_empty() {
                        f |= PollFlags::OUT;
                    }
                    PollFd::new(s, f)
                })
                .collect();
            if let Ok(n) = rustix::event::poll(&mut fds, Some(&wait))
                && n > 0
            {
                for (r, f) in ready.iter_mut().zip(&fds) {
                    *r = !f.revents().is_empty();
                }
            }
        }
        Ok(Outcome {
            done: conns.iter().map(|c| c.done).sum(),
            secs: start.elapsed().as_secs_f64(),
        })
    }
}

/// A server program the bench started; killed when dropped.
pub(super) struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Daemon {
    /// Starts `program` with `args` and waits until `addr` accepts
    /// connections.
    pub(super) fn start(program: &str, args: &[String], addr: SocketAddr) -> Res<Daemon> {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {program}: {e}"))?;
        let mut d = Daemon(child);
        let t0 = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(d);
            }
            if let Ok(Some(st)) = d.0.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = d.0.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("{program} exited ({st}): {}", err.trim()));
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("{program} did not listen on {addr}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The arguments of a load benchmark (`bench cache`, `bench proxy`).
#[derive(Debug, Clone, Copy)]
pub(super) struct LoadArgs {
    /// Client connections.
    pub(super) connections: usize,
    /// Seconds each run lasts (default 3; 1 with `--quick`).
    pub(super) seconds: Option<f64>,
}

impl LoadArgs {
    /// The connections (at least one) and the seconds each run lasts.
    pub(super) fn resolve(&self, quick: bool) -> Res<(usize, f64)> {
        let secs = self.seconds.unwrap_or(if quick { 1.0 } else { 3.0 });
        if !secs.is_finite() || secs <= 0.0 {
            return Err("--seconds must be positive".into());
        }
        Ok((self.connections.max(1), secs))
    }
}

/// The `skipped` line of `bench` where `program` (and its Debian package)
/// is not installed.
pub(super) fn skipped_without(bench: &str, program: &str) -> Option<String> {
    let why = format!("{program} is not installed (apt-get install {program})");
    (!installed(program)).then(|| serde_json::json!({ "bench": bench, "skipped": why }).to_string())
}

/// Whether `program` is on the PATH.
fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(super) fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The position of `needle` in `hay`.
pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The position of `end` in the first `limit` bytes of a reply: `None`
/// while the reply may still bring it, an error (`too_long`) once the
/// limit is passed without it.
pub(super) fn find_within(
    input: &[u8],
    end: &[u8],
    limit: usize,
    too_long: &str,
) -> Res<Option<usize>> {
    let window = &input[..input.len().min(limit)];
    match find(window, end) {
        Some(at) => Ok(Some(at)),
        None if window.len() == limit => Err(too_long.into()),
        None => Ok(None),
    }
}

/// A small xorshift generator: the same request sequence on both sides.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests "q", replies "r\n".
    struct Lines;

    impl Protocol for Lines {
        fn request(&mut self, out: &mut Vec<u8>) -> bool {
            out.push(b'q');
            true
        }

        fn reply(&mut self, input: &[u8]) -> Res<Option<usize>> {
            match input {
                [b'r', b'\n', ..] => Ok(Some(2)),
                [b'r'] => Ok(None),
                _ => Err("bad reply".into()),
            }
        }
    }

    #[test]
    fn replies_split_anywhere_are_counted_once_each() {
        let mut c = Conn::new(Lines);
        c.issue(3);
        assert_eq!(c.unsent(), b"qqq");
        c.sent = 3;
        for piece in [&b"r"[..], b"\nr\nr", b"\n"] {
            c.receive(piece).unwrap();
        }
        assert_eq!((c.done, c.in_flight), (3, 0));
        // A reply nobody asked for fails the run.
        assert!(c.receive(b"r\n").is_err());
    }
}
