//! The TCP proxy (`kind = "tcp-proxy"`): listens on ports of the device
//! and relays each connection to an upstream of the listener's pool, both
//! ways, on the device's own sockets.
//!
//! - Balancing per listener: round robin or least connections; an upstream
//!   that refused or did not answer in `connect_timeout` is skipped for
//!   `eject_for` (unless every upstream is).
//! - Half-close: a FIN from one side is passed on once what came before it
//!   is; the connection ends when both sides have closed. A reset on one
//!   side resets the other.
//! - Back-pressure, not buffering: bytes move only as far as the other
//!   side's send buffer has room, so a slow reader closes the fast writer's
//!   window. Memory is the sockets' buffers, nothing more.
//! - Limits: `max_connections` relayed at once (beyond it no socket
//!   listens, and a new client is refused by a reset while the others go
//!   on); `idle_timeout` without a byte either way resets both sides.
//! - Counters per listener: `listener.PORT.connections`, `.active`,
//!   `.bytes_up` (client to upstream), `.bytes_down`, `.connect_failures`,
//!   `.resets`, `.idle_timeouts`.
//!
//! ```
//! use shmnet::functions::{build, FunctionConfig};
//! let text = r#"
//! kind = "tcp-proxy"
//! [[listeners]]
//! port = 7000
//! upstreams = ["10.0.1.2:7", "10.0.1.3:7"]
//! balance = "least-connections"
//! "#;
//! let cfg: FunctionConfig = toml::from_str(text).unwrap();
//! assert_eq!(build(&cfg).unwrap().name(), "tcp-proxy");
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint};

pub use super::Balance;
use super::{
    Acceptor, Function, FunctionError, FunctionKind, LocalPorts, SocketContext, check_tcp_buffer,
};
use crate::functions::common::{counter_names, counters, defaults, invalid, reconfigure_in_place};
use crate::functions::matching::{ConfigDuration, quoted};
use crate::stack::FunctionSpec;

/// One `[[listeners]]` entry: a port and the pool behind it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// TCP port to accept on (any address of the device).
    pub port: u16,
    /// Upstreams as "ip:port".
    pub upstreams: Vec<String>,
    /// How to pick one.
    #[serde(default)]
    pub balance: Balance,
}

/// `[function] kind = "tcp-proxy"`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProxyConfig {
    /// The ports and their pools.
    pub listeners: Vec<ListenerConfig>,
    /// Give up on an upstream that has not accepted after this long (5s).
    #[serde(default = "defaults::secs::<5>")]
    pub connect_timeout: ConfigDuration,
    /// Reset a connection after this long without a byte either way (5m).
    #[serde(default = "defaults::secs::<300>")]
    pub idle_timeout: ConfigDuration,
    /// Skip an upstream that failed for this long (10s).
    #[serde(default = "defaults::secs::<10>")]
    pub eject_for: ConfigDuration,
    /// Connections relayed at once, over all listeners (256).
    #[serde(default = "defaults::u32::<256>")]
    pub max_connections: u32,
    /// Sockets kept listening per listener, for connections that arrive
    /// together (smoltcp has no listen backlog) (4).
    #[serde(default = "defaults::u32::<4>")]
    pub backlog: u32,
    /// Bytes of each socket's buffers each way (default: the device's
    /// `[sockets] tcp_buffer`).
    pub tcp_buffer: Option<usize>,
}

/// An upstream of a pool.
#[derive(Debug, Clone)]
struct Upstream {
    ep: IpEndpoint,
    active: u32,
    down_until: Option<Instant>,
}

counters! {
    /// One listener's counters.
    #[derive(Debug, Default, Clone)]
    struct ListenerStats {
        connections: u64,
        active: u64,
        bytes_up: u64,
        bytes_down: u64,
        connect_failures: u64,
        resets: u64,
        idle_timeouts: u64,
    }
}

/// A port with its pool, listening sockets and counters.
struct Listener {
    port: u16,
    balance: Balance,
    upstreams: Vec<Upstream>,
    next: usize,
    acceptor: Acceptor,
    stats: ListenerStats,
    names: [String; 7],
}

/// A connection being relayed.
struct Conn {
    port: u16,
    client: SocketHandle,
    upstream: SocketHandle,
    to: IpEndpoint,
    local_port: u16,
    since: Instant,
    last: Instant,
    connected: bool,
    /// The client's FIN was passed on to the upstream.
    fin_up: bool,
    /// The upstream's FIN was passed on to the client.
    fin_down: bool,
}

/// The TCP proxy.
pub struct TcpProxy {
    cfg: TcpProxyConfig,
    listeners: Vec<Listener>,
    conns: Vec<Conn>,
    ports: LocalPorts,
    scratch: Vec<u8>,
    /// Sockets of ended connections, and their local port, to return to
    /// the pool next round.
    dying: Vec<(SocketHandle, SocketHandle, u16)>,
    /// Listening sockets of ports a reconfiguration removed.
    orphans: Vec<SocketHandle>,
}

fn parse_upstream(s: &str) -> Result<IpEndpoint, String> {
    let a: SocketAddr = s
        .parse()
        .map_err(|_| format!("upstream {} is not ip:port", quoted(s)))?;
    if a.port() == 0 {
        return Err(format!("upstream {}: port 0", quoted(s)));
    }
    Ok(IpEndpoint::new(IpAddress::from(a.ip()), a.port()))
}

/// The listeners `cfg` describes (no sockets yet); errors name the field.
fn listeners_of(cfg: &TcpProxyConfig) -> Result<Vec<Listener>, FunctionError> {
    let bad = invalid("tcp-proxy");
    if cfg.listeners.is_empty() {
        return Err(bad("give at least one [[listeners]] entry".into()));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        if l.port == 0 {
            return Err(bad(format!("listeners[{i}].port must be 1..=65535")));
        }
        if !seen.insert(l.port) {
            return Err(bad(format!(
                "listeners[{i}].port {} is listed twice",
                l.port
            )));
        }
        if l.upstreams.is_empty() {
            return Err(bad(format!("listeners[{i}].upstreams is empty")));
        }
        if l.balance == Balance::Hash {
            return Err(bad(format!(
                "listeners[{i}].balance: \"hash\" is http-proxy's; a listener takes \"round-robin\" or \"least-connections\""
            )));
        }
        let upstreams = l
            .upstreams
            .iter()
            .map(|u| {
                parse_upstream(u).map(|ep| Upstream {
                    ep,
                    active: 0,
                    down_until: None,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("listeners[{i}]: {e}")))?;
        out.push(Listener {
            port: l.port,
            balance: l.balance,
            upstreams,
            next: 0,
            acceptor: Acceptor::new(l.port, cfg.backlog as usize, cfg.tcp_buffer),
            stats: ListenerStats::default(),
            names: counter_names(
                "listener",
                &l.port.to_string(),
                [
                    "connections",
                    "active",
                    "bytes_up",
                    "bytes_down",
                    "connect_failures",
                    "resets",
                    "idle_timeouts",
                ],
            ),
        });
    }
    let timeouts = Duration::from_millis(1)..=Duration::from_secs(24 * 3600);
    for (name, d) in [
        ("connect_timeout", cfg.connect_timeout),
        ("idle_timeout", cfg.idle_timeout),
        ("eject_for", cfg.eject_for),
    ] {
        d.within(name, timeouts.clone()).map_err(bad)?;
    }
    if !(1..=65536).contains(&cfg.max_connections) {
        return Err(bad("max_connections must be 1..=65536".into()));
    }
    if !(1..=64).contains(&cfg.backlog) {
        return Err(bad("backlog must be 1..=64".into()));
    }
    check_tcp_buffer("tcp-proxy", cfg.tcp_buffer)?;
    Ok(out)
}

impl TcpProxy {
    /// The proxy for `cfg`; errors name the field that is wrong.
    pub fn new(cfg: TcpProxyConfig) -> Result<TcpProxy, FunctionError> {
        let listeners = listeners_of(&cfg)?;
        Ok(TcpProxy {
            cfg,
            listeners,
            conns: Vec::new(),
            ports: LocalPorts::default(),
            scratch: vec![0; 64 * 1024],
            dying: Vec::new(),
            orphans: Vec::new(),
        })
    }

    /// Keeps `backlog` sockets listening on every port while there is room
    /// for more connections, none when there is not; turns the ones a
    /// client connected to into connections.
    fn accept(&mut self, cx: &mut SocketContext<'_>) -> bool {
        let mut progress = false;
        for li in 0..self.listeners.len() {
            let room = (self.cfg.max_connections as usize).saturating_sub(self.conns.len());
            let mut accepted = Vec::new();
            progress |= self.listeners[li]
                .acceptor
                .accept(cx, room, |_, h| accepted.push(h));
            for h in accepted {
                self.open(cx, li, h);
            }
        }
        progress
    }

    /// Starts relaying the client on `client` (accepted by listener `li`):
    /// connects to an upstream of its pool.
    fn open(&mut self, cx: &mut SocketContext<'_>, li: usize, client: SocketHandle) {
        let now = cx.now;
        let l = &mut self.listeners[li];
        l.stats.connections += 1;
        let Some(ui) = pick(l, now) else {
            cx.sockets.get_mut::<tcp::Socket>(client).abort();
            cx.remove_socket(client);
            return;
        };
        let port = l.port;
        let to = l.upstreams[ui].ep;
        let Some(local_port) = self.ports.take() else {
            let l = &mut self.listeners[li];
            l.stats.connect_failures += 1;
            cx.sockets.get_mut::<tcp::Socket>(client).abort();
            cx.remove_socket(client);
            return;
        };
        let upstream = cx.add_tcp(self.cfg.tcp_buffer);
        let s = cx.sockets.get_mut::<tcp::Socket>(upstream);
        s.set_nagle_enabled(false);
        if s.connect(cx.iface.context(), to, local_port).is_err() {
            // No route or address for it: as good as refused.
            let l = &mut self.listeners[li];
            l.stats.connect_failures += 1;
            l.upstreams[ui].down_until = Some(now + self.cfg.eject_for.0);
            cx.sockets.get_mut::<tcp::Socket>(client).abort();
            cx.remove_socket(client);
            cx.remove_socket(upstream);
            self.ports.give_back(local_port);
            return;
        }
        let l = &mut self.listeners[li];
        l.upstreams[ui].active += 1;
        l.stats.active += 1;
        self.conns.push(Conn {
            port,
            client,
            upstream,
            to,
            local_port,
            since: now,
            last: now,
            connected: false,
            fin_up: false,
            fin_down: false,
        });
    }

    /// Moves bytes and FINs of connection `ci` both ways; returns whether
    /// the connection is over (and why, if it failed) and whether anything
    /// moved.
    fn relay(&mut self, cx: &mut SocketContext<'_>, ci: usize) -> (Option<End>, bool) {
        let now = cx.now;
        let c = &mut self.conns[ci];
        let (up_state, client_state) = (
            cx.sockets.get::<tcp::Socket>(c.upstream).state(),
            cx.sockets.get::<tcp::Socket>(c.client).state(),
        );
        if !c.connected {
            match up_state {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    if now - c.since > self.cfg.connect_timeout.0 {
                        return (Some(End::ConnectFailed), true);
                    }
                }
                tcp::State::Closed => return (Some(End::ConnectFailed), true),
                _ => c.connected = true,
            }
        }
        // A side closed before both FINs went through was reset (or timed
        // out): the other side is reset too.
        let gone =
            client_state == tcp::State::Closed || (c.connected && up_state == tcp::State::Closed);
        if gone && !(c.fin_up && c.fin_down) {
            return (Some(End::Reset), true);
        }
        let mut moved = 0u64;
        let (up, down) = (
            pump(cx, c.client, c.upstream, &mut self.scratch),
            pump(cx, c.upstream, c.client, &mut self.scratch),
        );
        moved += up + down;
        // A FIN goes on once everything before it has.
        if !c.fin_up && c.connected && finished_sending(cx, c.client) {
            cx.sockets.get_mut::<tcp::Socket>(c.upstream).close();
            c.fin_up = true;
            moved += 1;
        }
        if !c.fin_down && c.connected && finished_sending(cx, c.upstream) {
            cx.sockets.get_mut::<tcp::Socket>(c.client).close();
            c.fin_down = true;
            moved += 1;
        }
        if moved > 0 {
            c.last = now;
        } else if now - c.last > self.cfg.idle_timeout.0 {
            return (Some(End::Idle), true);
        }
        if let Some(l) = self.listeners.iter_mut().find(|l| l.port == c.port) {
            l.stats.bytes_up += up;
            l.stats.bytes_down += down;
        }
        let closed = |h| {
            matches!(
                cx.sockets.get::<tcp::Socket>(h).state(),
                tcp::State::Closed | tcp::State::TimeWait
            )
        };
        let over = c.fin_up && c.fin_down && closed(c.client) && closed(c.upstream);
        (over.then_some(End::Done), moved > 0)
    }

    /// Removes connection `ci`, resetting what is still open unless it
    /// ended cleanly, and counts how it ended.
    fn close(&mut self, cx: &mut SocketContext<'_>, ci: usize, end: End) {
        let c = self.conns.swap_remove(ci);
        let now = cx.now;
        let eject = self.cfg.eject_for.0;
        if let Some(l) = self.listeners.iter_mut().find(|l| l.port == c.port) {
            l.stats.active = l.stats.active.saturating_sub(1);
            match end {
                End::Done => {}
                End::Reset => l.stats.resets += 1,
                End::Idle => l.stats.idle_timeouts += 1,
                End::ConnectFailed => l.stats.connect_failures += 1,
            }
            if let Some(u) = l.upstreams.iter_mut().find(|u| u.ep == c.to) {
                u.active = u.active.saturating_sub(1);
                if end == End::ConnectFailed {
                    u.down_until = Some(now + eject);
                }
            }
        }
        if end != End::Done {
            for h in [c.client, c.upstream] {
                cx.sockets.get_mut::<tcp::Socket>(h).abort();
            }
        }
        // The sockets still owe their peers a last ACK or the reset: they
        // go back to the pool after the stack's next round has sent it.
        self.dying.push((c.client, c.upstream, c.local_port));
    }

    /// Returns the sockets of ended connections to the pool.
    fn bury(&mut self, cx: &mut SocketContext<'_>) {
        for (client, upstream, port) in self.dying.drain(..) {
            cx.remove_socket(client);
            cx.remove_socket(upstream);
            self.ports.give_back(port);
        }
        cx.remove_sockets(self.orphans.drain(..));
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Both sides closed.
    Done,
    /// One side reset it.
    Reset,
    /// Nothing moved for `idle_timeout`.
    Idle,
    /// The upstream refused or did not answer.
    ConnectFailed,
}

/// The upstream of `l` for a new connection, if any is not ejected (or,
/// when all are, any).
fn pick(l: &mut Listener, now: Instant) -> Option<usize> {
    let n = l.upstreams.len();
    let up = |u: &Upstream| u.down_until.is_none_or(|t| now >= t);
    let all_down = !l.upstreams.iter().any(up);
    let candidates = (0..n)
        .map(|k| (l.next + k) % n)
        .filter(|&i| all_down || up(&l.upstreams[i]));
    let chosen = match l.balance {
        Balance::LeastConnections => candidates.min_by_key(|&i| l.upstreams[i].active),
        // `Hash` is refused by `listeners_of`.
        Balance::RoundRobin | Balance::Hash => candidates.into_iter().next(),
    }?;
    l.next = (chosen + 1) % n;
    Some(chosen)
}

/// Moves what `from` received into `to`'s send buffer, as much as fits;
/// returns the bytes moved.
fn pump(cx: &mut SocketContext<'_>, from: SocketHandle, to: SocketHandle, buf: &mut [u8]) -> u64 {
    let mut moved = 0u64;
    loop {
        let t = cx.sockets.get::<tcp::Socket>(to);
        if !t.may_send() {
            return moved;
        }
        let room = (t.send_capacity() - t.send_queue()).min(buf.len());
        if room == 0 {
            return moved;
        }
        let n = cx
            .sockets
            .get_mut::<tcp::Socket>(from)
            .recv_slice(&mut buf[..room])
            .unwrap_or(0);
        if n == 0 {
            return moved;
        }
        let sent = cx
            .sockets
            .get_mut::<tcp::Socket>(to)
            .send_slice(&buf[..n])
            .unwrap_or(0);
        debug_assert_eq!(sent, n, "room was checked");
        moved += n as u64;
    }
}

/// Whether `h`'s peer has sent its FIN and everything before it was
/// taken out.
fn finished_sending(cx: &SocketContext<'_>, h: SocketHandle) -> bool {
    let s = cx.sockets.get::<tcp::Socket>(h);
    use tcp::State::*;
    matches!(s.state(), CloseWait | LastAck | Closing | TimeWait) && s.recv_queue() == 0
}

impl Function for TcpProxy {
    fn kind(&self) -> FunctionKind {
        FunctionKind::socket("tcp-proxy")
    }

    fn attach(&mut self, cx: &mut SocketContext<'_>) {
        // Listen at once: a SYN before the first `poll` would be refused.
        self.accept(cx);
    }

    fn detach(&mut self, cx: &mut SocketContext<'_>) {
        while !self.conns.is_empty() {
            self.close(cx, 0, End::Reset);
        }
        self.bury(cx);
        for l in &mut self.listeners {
            l.acceptor.close(cx);
        }
    }

    fn poll(&mut self, cx: &mut SocketContext<'_>) -> bool {
        self.bury(cx);
        let mut progress = self.accept(cx);
        let mut i = 0;
        while i < self.conns.len() {
            let (end, moved) = self.relay(cx, i);
            progress |= moved;
            match end {
                Some(end) => self.close(cx, i, end),
                None => i += 1,
            }
        }
        // Room freed by ended connections: listen again.
        progress | self.accept(cx)
    }

    fn poll_at(&self) -> Option<Instant> {
        if !self.dying.is_empty() || !self.orphans.is_empty() {
            return Some(Instant::ZERO);
        }
        self.conns
            .iter()
            .map(|c| {
                if c.connected {
                    c.last + self.cfg.idle_timeout.0
                } else {
                    c.since + self.cfg.connect_timeout.0
                }
            })
            .min()
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        for l in &self.listeners {
            let mut i = 0;
            l.stats.visit(&mut |_, v| {
                visit(&l.names[i], v);
                i += 1;
            });
        }
    }

    fn reconfigure(&mut self, cfg: &dyn FunctionSpec) -> Result<bool, FunctionError> {
        reconfigure_in_place::<TcpProxyConfig>(cfg, |new| {
            let mut fresh = listeners_of(new)?;
            // A port that stays keeps its listening sockets, counters and
            // the connection counts of upstreams that stay.
            for l in &mut fresh {
                if let Some(old) = self.listeners.iter_mut().find(|o| o.port == l.port) {
                    l.acceptor.adopt(&mut old.acceptor);
                    l.stats = old.stats.clone();
                    for u in &mut l.upstreams {
                        if let Some(o) = old.upstreams.iter().find(|o| o.ep == u.ep) {
                            u.active = o.active;
                            u.down_until = o.down_until;
                        }
                    }
                }
            }
            // Ports that go stop listening; their connections run on.
            for old in &mut self.listeners {
                self.orphans.append(&mut old.acceptor.take());
            }
            self.listeners = fresh;
            self.cfg = new.clone();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
