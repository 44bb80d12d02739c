//! Socket functions: functions that work on the device's own smoltcp
//! sockets through [`SocketContext`] (attach / poll / detach) rather than
//! on forwarded frames: the TCP proxy ([`tcp_proxy`]), HTTP (`http`: the
//! codec, the reverse proxy and a static server), the memcached-compatible
//! memory cache ([`cache`]), the diagnostic echo server ([`echo`]),
//! discard server ([`sink`]) and probe client ([`probe`]), and the
//! protocol functions to come (management). The socket constructors they
//! share are here.

use smoltcp::socket::{tcp, udp};

#[allow(unused_imports)]
use super::{Function, FunctionConfig, FunctionError, FunctionKind, SocketContext, build};

pub mod cache;
pub mod echo;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "manager")]
pub mod manager;
pub mod probe;
pub mod sink;
pub mod tcp_proxy;

/// The diagnostic pair under its former name (`functions::diag`).
pub mod diag {
    pub use super::echo::{Echo, EchoConfig};
    pub use super::probe::{Probe, ProbeConfig, pattern_byte, pattern_fill, pattern_matches};
    pub use super::tcp_socket;
}

pub use crate::stack::DEFAULT_TCP_BUFFER;

/// How a proxy picks an upstream: `balance` of a `tcp-proxy` listener or
/// an `http-proxy` pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each in turn.
    #[default]
    RoundRobin,
    /// The one with the fewest requests (http-proxy) or connections
    /// (tcp-proxy) in progress (ties in turn).
    LeastConnections,
    /// http-proxy only: consistent (rendezvous) hashing of `hash_header`'s
    /// or `hash_cookie`'s value: the same value goes to the same upstream
    /// while it is up, and only its share moves when upstreams come or go.
    /// Requests without it go round robin.
    Hash,
}

/// Checks the fields every TCP server function has: `port` (non-zero),
/// `connections` (1..=`max`) and `tcp_buffer` (1 KiB..=1 GiB); the error
/// names the field.
pub(crate) fn check_server(
    kind: &'static str,
    port: u16,
    connections: (usize, usize),
    tcp_buffer: Option<usize>,
) -> Result<(), FunctionError> {
    let bad = crate::functions::common::invalid(kind);
    if port == 0 {
        return Err(bad("port must be 1..=65535".into()));
    }
    let (n, max) = connections;
    if !(1..=max).contains(&n) {
        return Err(bad(format!("connections must be 1..={max}")));
    }
    check_tcp_buffer(kind, tcp_buffer)
}

/// Checks a function's `tcp_buffer` (1 KiB..=1 GiB).
pub(crate) fn check_tcp_buffer(
    kind: &'static str,
    tcp_buffer: Option<usize>,
) -> Result<(), FunctionError> {
    match tcp_buffer {
        Some(n) if !(1024..=(1 << 30)).contains(&n) => Err(
            crate::functions::common::invalid(kind)("tcp_buffer must be 1 KiB..=1 GiB".into()),
        ),
        _ => Ok(()),
    }
}

/// Opens `n` TCP sockets listening on `port` (buffers of `tcp_buffer`, or
/// the device's). A client that vanished (its device killed) must not
/// hold a slot forever: keep-alive every 5 s, given up after 15 s.
pub(crate) fn listen_on(
    cx: &mut SocketContext<'_>,
    port: u16,
    n: usize,
    tcp_buffer: Option<usize>,
) -> Vec<smoltcp::iface::SocketHandle> {
    (0..n)
        .map(|_| {
            let h = cx.add_tcp(tcp_buffer);
            let s = cx.sockets.get_mut::<tcp::Socket>(h);
            s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(5)));
            s.set_timeout(Some(smoltcp::time::Duration::from_secs(15)));
            let _ = s.listen(port);
            h
        })
        .collect()
}

/// Receives what `s` has into `buf` until `buf` holds `cap` bytes; returns
/// the bytes received.
pub(crate) fn recv_into(s: &mut tcp::Socket<'_>, buf: &mut Vec<u8>, cap: usize) -> usize {
    let mut read = 0;
    while buf.len() < cap {
        let room = cap - buf.len();
        let n = s
            .recv(|data| {
                let n = data.len().min(room);
                buf.extend_from_slice(&data[..n]);
                (n, n)
            })
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        read += n;
    }
    read
}

/// A TCP socket with buffers of `size` bytes, Nagle off (not from the
/// device's pool: see [`SocketContext::add_tcp`]).
pub fn tcp_socket(size: usize) -> tcp::Socket<'static> {
    crate::stack::new_tcp_socket(size, size)
}

/// A UDP socket queueing up to `datagrams` datagrams and `bytes` bytes
/// each way.
pub fn udp_socket(datagrams: usize, bytes: usize) -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; datagrams], vec![0; bytes]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; datagrams], vec![0; bytes]),
    )
}

/// The listening side of a TCP server function. smoltcp has no listen
/// backlog: a SYN that finds no socket listening is refused. So an
/// acceptor keeps `backlog` sockets listening on its port while there is
/// room for more connections, and none when there is not (a client beyond
/// the limit is refused by a reset, the others go on).
#[derive(Debug)]
pub(crate) struct Acceptor {
    port: u16,
    backlog: usize,
    tcp_buffer: Option<usize>,
    listening: Vec<smoltcp::iface::SocketHandle>,
}

impl Acceptor {
    /// An acceptor for `port` keeping `backlog` sockets listening (with
    /// `tcp_buffer`-byte buffers, or the device's).
    pub(crate) fn new(port: u16, backlog: usize, tcp_buffer: Option<usize>) -> Acceptor {
        Acceptor {
            port,
            backlog,
            tcp_buffer,
            listening: Vec::new(),
        }
    }

    /// Hands the sockets a client connected to (in SYN-RECEIVED or later)
    /// to `accepted`, then keeps `min(backlog, room)` sockets listening.
    pub(crate) fn accept(
        &mut self,
        cx: &mut SocketContext<'_>,
        room: usize,
        mut accepted: impl FnMut(&mut SocketContext<'_>, smoltcp::iface::SocketHandle),
    ) -> bool {
        let mut n = 0;
        let mut i = 0;
        while i < self.listening.len() {
            let h = self.listening[i];
            let s = cx.sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                tcp::State::Listen => i += 1,
                tcp::State::Closed => {
                    let _ = s.listen(self.port);
                    i += 1;
                }
                _ => {
                    self.listening.swap_remove(i);
                    accepted(cx, h);
                    n += 1;
                }
            }
        }
        let want = self.backlog.min(room.saturating_sub(n));
        while self.listening.len() > want {
            if let Some(h) = self.listening.pop() {
                cx.remove_socket(h);
            }
        }
        while self.listening.len() < want {
            let h = cx.add_tcp(self.tcp_buffer);
            let _ = cx.sockets.get_mut::<tcp::Socket>(h).listen(self.port);
            self.listening.push(h);
        }
        n > 0
    }

    /// Closes every listening socket (the function is detached, or the
    /// port is no longer configured).
    pub(crate) fn close(&mut self, cx: &mut SocketContext<'_>) {
        cx.remove_sockets(self.listening.drain(..));
    }

    /// The listening sockets, taken out (to close later, when there is no
    /// context at hand).
    pub(crate) fn take(&mut self) -> Vec<smoltcp::iface::SocketHandle> {
        std::mem::take(&mut self.listening)
    }

    /// Takes over `old`'s listening sockets (a reconfiguration that keeps
    /// the port).
    pub(crate) fn adopt(&mut self, old: &mut Acceptor) {
        self.listening = old.take();
    }
}

/// Local ports a function connects from, each in use once.
#[derive(Debug)]
pub(crate) struct LocalPorts {
    next: u16,
    used: std::collections::HashSet<u16>,
}

/// The ephemeral range (RFC 6335).
const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

impl Default for LocalPorts {
    fn default() -> Self {
        LocalPorts {
            next: *EPHEMERAL.start(),
            used: Default::default(),
        }
    }
}

impl LocalPorts {
    /// A port not in use, now in use; `None` when all are.
    pub(crate) fn take(&mut self) -> Option<u16> {
        for _ in 0..EPHEMERAL.len() {
            let p = self.next;
            self.next = if p == *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                p + 1
            };
            if self.used.insert(p) {
                return Some(p);
            }
        }
        None
    }

    /// `port` is free again.
    pub(crate) fn give_back(&mut self, port: u16) {
        self.used.remove(&port);
    }
}

/// Connections a function is done with but whose sockets must stay until
/// the close is on the wire: removing a socket drops it without a word to
/// the peer, which then holds its end open (an echo server's slot, an
/// agent's session) until its own timeout. Each is closed (FIN) and
/// removed once closed, or reset after [`Retired::LINGER`]; its local port
/// goes back to the pool then.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "manager"), allow(dead_code))]
pub(crate) struct Retired {
    /// Socket, when retired, the local port it connected from.
    list: Vec<(
        smoltcp::iface::SocketHandle,
        smoltcp::time::Instant,
        Option<u16>,
    )>,
}

#[cfg_attr(not(feature = "manager"), allow(dead_code))]
impl Retired {
    /// How long a close may take before the connection is reset.
    pub(crate) const LINGER: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(5);

    /// Closes `h` (gracefully, or with a reset when `abort`) and keeps it
    /// until the peer has heard.
    pub(crate) fn retire(
        &mut self,
        cx: &mut SocketContext<'_>,
        h: smoltcp::iface::SocketHandle,
        abort: bool,
    ) {
        let s = cx.sockets.get_mut::<tcp::Socket>(h);
        // The endpoint goes with the reset: remember the port now.
        let port = s.local_endpoint().map(|ep| ep.port);
        if abort {
            s.abort();
        } else {
            s.close();
        }
        self.list.push((h, cx.now, port));
    }

    /// Removes the sockets whose close is done; returns whether any went.
    pub(crate) fn poll(&mut self, cx: &mut SocketContext<'_>, ports: &mut LocalPorts) -> bool {
        let before = self.list.len();
        self.list.retain(|&(h, since, port)| {
            let s = cx.sockets.get_mut::<tcp::Socket>(h);
            let late = cx.now - since >= Self::LINGER;
            if late && s.is_open() {
                s.abort();
                return true; // the reset goes out with the next round
            }
            // A reset (abort) leaves the socket closed at once, but its RST
            // is sent by the round after: keep it one round.
            let gone = matches!(s.state(), tcp::State::TimeWait)
                || (s.state() == tcp::State::Closed && cx.now > since);
            if gone {
                if let Some(p) = port {
                    ports.give_back(p);
                }
                cx.remove_socket(h);
            }
            !gone
        });
        self.list.len() != before
    }

    /// Removes every socket now (the function is detached).
    pub(crate) fn clear(&mut self, cx: &mut SocketContext<'_>, ports: &mut LocalPorts) {
        for (h, _, port) in self.list.drain(..) {
            if let Some(p) = port {
                ports.give_back(p);
            }
            cx.remove_socket(h);
        }
    }
}
