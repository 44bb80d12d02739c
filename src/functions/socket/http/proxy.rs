//! The HTTP/1.1 reverse proxy and L7 balancer (`kind = "http-proxy"`).
//!
//! Each client connection is served one request at a time, in order (so
//! pipelined requests are answered in order): its head is parsed and
//! routed by `Host` and path prefix to a pool, the pool's
//! balancing picks an upstream, and the request goes out on a kept
//! connection to it or a new one — head rewritten (hop-by-hop fields
//! dropped, `Via`, `X-Forwarded-For` and `Forwarded` added), body streamed
//! as it came (its framing found by the codec's decoder, never buffered
//! whole). The response comes back the same way. Both connections are
//! kept for the next request when both sides allow it.
//!
//! Failures answer the client with a short response: 400/414/431 for a
//! request the codec refuses, 404 without a route, 502 when the upstream
//! refuses, resets or answers garbage before its head is through, 503
//! when no upstream can be had, 504 when it does not connect or answer in
//! time. An upstream that fails `eject_after` times in a row is skipped
//! for `eject_for` (passive health).
//!
//! ```
//! use shmnet::functions::{build, FunctionConfig};
//! let text = r#"
//! kind = "http-proxy"
//! pools = [{ name = "web", upstreams = ["10.0.1.2:80", "10.0.1.3:80"] }]
//! routes = [{ path = "/", pool = "web" }]
//! "#;
//! let cfg: FunctionConfig = toml::from_str(text).unwrap();
//! assert_eq!(build(&cfg).unwrap().name(), "http-proxy");
//! ```

mod apps;
mod cache;
mod config;
mod exchange;
mod health;
#[cfg(test)]
mod tests;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::IpEndpoint;

pub use crate::functions::socket::Balance;
pub use apps::{AppConfig, LATENCY_BUCKETS_MS};
pub use config::{HttpProxyConfig, PoolConfig, RouteConfig};
use config::{Pool, Route, compile, limits};
pub use health::HealthConfig;

use super::codec::{BodyDecoder, HeadParser, Limits, RequestHead, ResponseHead, error_response};
use crate::functions::common::{counters, reconfigure_in_place};
use crate::functions::socket::{Acceptor, LocalPorts};
use crate::functions::{Function, FunctionError, FunctionKind, SocketContext};
use crate::stack::FunctionSpec;

/// Bytes read ahead from a client beyond a head: the rest waits in its
/// socket (back-pressure).
const READ_AHEAD: usize = 64 << 10;

counters! {
    /// The proxy's counters.
    #[derive(Debug, Default, Clone)]
    struct Stats {
        connections: u64,
        requests: u64,
        responses_2xx: u64,
        responses_3xx: u64,
        responses_4xx: u64,
        responses_5xx: u64,
        bytes_from_clients: u64,
        bytes_to_clients: u64,
        bad_requests: u64,
        no_route: u64,
        upstream_connects: u64,
        upstream_reuses: u64,
        upstream_failures: u64,
        upstream_timeouts: u64,
        upstreams_ejected: u64,
        cache_hits: u64,
        cache_misses: u64,
        cache_stores: u64,
        cache_evictions: u64,
        cache_bytes: u64,
        health_checks_passed: u64,
        health_checks_failed: u64,
        upstreams_marked_down: u64,
        upstreams_marked_up: u64,
    }
}

/// Where a client connection is in its current exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// The upstream connection is being made.
    Connecting,
    /// Sending the request head and body upstream.
    Request,
    /// Waiting for the response head.
    ResponseHead,
    /// Relaying the response body.
    ResponseBody,
    /// Sending what is left to the client, then closing.
    Closing,
}

/// A connection to an upstream.
#[derive(Debug)]
struct UpConn {
    sock: SocketHandle,
    pool: usize,
    ep: IpEndpoint,
    local_port: u16,
    /// Bytes read from it not yet handled.
    buf: Vec<u8>,
    /// When it was last used (kept connections).
    idle_since: Instant,
}

/// A client connection.
struct Client {
    sock: SocketHandle,
    phase: Phase,
    /// Read from the client, not yet handled (a head in the making, body
    /// bytes, pipelined requests).
    inbuf: Vec<u8>,
    parser: HeadParser,
    req: RequestHead,
    resp: ResponseHead,
    req_body: Option<BodyDecoder>,
    resp_body: Option<BodyDecoder>,
    /// Bytes for the upstream (the rewritten head) not sent yet.
    to_up: Vec<u8>,
    /// Bytes for the client (a response head, an error) not sent yet.
    to_client: Vec<u8>,
    up: Option<UpConn>,
    /// The upstream serving the exchange: pool and index.
    target: Option<(usize, usize)>,
    /// Keep the client connection after this exchange.
    keep: bool,
    /// Deadline of the current phase (connect, response head, idle).
    deadline: Instant,
    /// The response being captured for the cache.
    capture: Option<cache::Capture>,
    /// The application of the exchange, when it was admitted; when the
    /// exchange began and its bytes each way so far.
    app: Option<usize>,
    started: Instant,
    xfer: (u64, u64),
    /// Connects retried for this request after a refusal.
    tries: u8,
    /// When a closing connection is given up on.
    linger: Option<Instant>,
}

/// The HTTP reverse proxy.
pub struct HttpProxy {
    cfg: HttpProxyConfig,
    limits: Limits,
    pools: Vec<Pool>,
    routes: Vec<Route>,
    acceptor: Acceptor,
    clients: Vec<Client>,
    /// Kept connections, by pool and upstream endpoint.
    idle: Vec<UpConn>,
    ports: LocalPorts,
    stats: Stats,
    scratch: Vec<u8>,
    /// Sockets to return to the pool next round (after the stack has sent
    /// their last segment), with the local port they held.
    dying: Vec<(SocketHandle, Option<u16>)>,
    /// The time of this round.
    now: Instant,
    /// Upstream connections being closed.
    closing_up: Vec<UpConn>,
    cache: cache::HttpCache,
    apps: Vec<apps::App>,
}

impl HttpProxy {
    /// The proxy for `cfg`; errors name the field that is wrong.
    pub fn new(cfg: HttpProxyConfig) -> Result<HttpProxy, FunctionError> {
        let (pools, routes) = compile(&cfg)?;
        let cache = cache::HttpCache::new(cfg.cache_bytes, cfg.cache_max_object);
        let apps = apps::compile(&cfg.apps, Instant::ZERO)?;
        Ok(HttpProxy {
            limits: limits(&cfg),
            acceptor: Acceptor::new(cfg.port, cfg.backlog, cfg.tcp_buffer),
            cfg,
            pools,
            routes,
            clients: Vec::new(),
            idle: Vec::new(),
            ports: LocalPorts::default(),
            stats: Stats::default(),
            scratch: vec![0; 64 << 10],
            dying: Vec::new(),
            now: Instant::ZERO,
            closing_up: Vec::new(),
            cache,
            apps,
        })
    }

    fn accept(&mut self, cx: &mut SocketContext<'_>) -> bool {
        let room = self.cfg.max_connections.saturating_sub(self.clients.len());
        let mut accepted = Vec::new();
        let any = self.acceptor.accept(cx, room, |_, h| accepted.push(h));
        for sock in accepted {
            self.stats.connections += 1;
            self.clients.push(Client {
                sock,
                phase: Phase::Head,
                inbuf: Vec::new(),
                parser: HeadParser::new(self.limits),
                req: RequestHead::default(),
                resp: ResponseHead::default(),
                req_body: None,
                resp_body: None,
                to_up: Vec::new(),
                to_client: Vec::new(),
                up: None,
                target: None,
                keep: true,
                deadline: cx.now + self.cfg.idle_timeout.0,
                capture: None,
                app: None,
                started: cx.now,
                xfer: (0, 0),
                tries: 0,
                linger: None,
            });
        }
        any
    }

    /// Counts a response of `status` to a client.
    fn count_status(&mut self, status: u16) {
        match status / 100 {
            2 => self.stats.responses_2xx += 1,
            3 => self.stats.responses_3xx += 1,
            4 => self.stats.responses_4xx += 1,
            5 => self.stats.responses_5xx += 1,
            _ => {}
        }
    }

    /// Ends client `ci`'s exchange with a short error response and closes
    /// it; the upstream connection, if any, is dropped.
    fn fail(&mut self, ci: usize, status: u16) {
        self.fail_with(ci, status, None);
    }

    /// [`HttpProxy::fail`] with a `Retry-After` of so many seconds (429,
    /// 503).
    fn fail_with(&mut self, ci: usize, status: u16, retry_after: Option<u32>) {
        self.count_status(status);
        let c = &mut self.clients[ci];
        let before = c.to_client.len();
        error_response(status, retry_after, &mut c.to_client);
        c.xfer.1 += (c.to_client.len() - before) as u64;
        self.app_done(ci, status);
        let c = &mut self.clients[ci];
        c.phase = Phase::Closing;
        c.keep = false;
        if let Some(up) = c.up.take() {
            self.dying.push((up.sock, Some(up.local_port)));
        }
        self.end_target(ci, false);
    }

    /// Client `ci`'s exchange is answered with `status`: its application
    /// counts it.
    fn app_done(&mut self, ci: usize, status: u16) {
        let c = &mut self.clients[ci];
        if let Some(a) = c.app.take() {
            let took = self.now - c.started;
            let xfer = std::mem::take(&mut c.xfer);
            if let Some(app) = self.apps.get_mut(a) {
                app.done(status, xfer, took);
            }
        }
    }

    /// The exchange of client `ci` no longer uses its upstream: counts it
    /// as a success or a failure of that upstream.
    fn end_target(&mut self, ci: usize, ok: bool) {
        let Some((p, u)) = self.clients[ci].target.take() else {
            return;
        };
        let eject_after = self.cfg.eject_after;
        let Some(up) = self.pools.get_mut(p).and_then(|p| p.upstreams.get_mut(u)) else {
            return;
        };
        up.active = up.active.saturating_sub(1);
        if ok {
            up.failures = 0;
        } else {
            self.stats.upstream_failures += 1;
            up.failures += 1;
            if up.failures >= eject_after {
                up.failures = 0;
                up.down_until = Some(self.now + self.cfg.eject_for.0);
                self.stats.upstreams_ejected += 1;
            }
        }
    }
}

impl Function for HttpProxy {
    fn kind(&self) -> FunctionKind {
        FunctionKind::socket("http-proxy")
    }

    fn attach(&mut self, cx: &mut SocketContext<'_>) {
        self.now = cx.now;
        self.accept(cx);
    }

    fn detach(&mut self, cx: &mut SocketContext<'_>) {
        for c in self.clients.drain(..) {
            for h in std::iter::once(c.sock).chain(c.up.map(|u| {
                self.ports.give_back(u.local_port);
                u.sock
            })) {
                cx.sockets.get_mut::<tcp::Socket>(h).abort();
                cx.remove_socket(h);
            }
        }
        for u in self.idle.drain(..).chain(self.closing_up.drain(..)) {
            cx.remove_socket(u.sock);
        }
        for (h, _) in self.dying.drain(..) {
            cx.remove_socket(h);
        }
        for p in &mut self.pools {
            for u in &mut p.upstreams {
                if let Some(c) = u.checker.as_mut() {
                    c.close(cx, &mut self.ports);
                }
            }
        }
        self.acceptor.close(cx);
    }

    fn poll(&mut self, cx: &mut SocketContext<'_>) -> bool {
        self.now = cx.now;
        for (h, port) in self.dying.drain(..) {
            cx.remove_socket(h);
            if let Some(p) = port {
                self.ports.give_back(p);
            }
        }
        let mut progress = self.accept(cx);
        let mut out = health::Outcome::default();
        for p in &mut self.pools {
            for u in &mut p.upstreams {
                if let Some(c) = u.checker.as_mut() {
                    c.bury(cx, &mut self.ports);
                    c.poll(cx, &mut self.ports, u.ep, &mut out);
                }
            }
        }
        self.stats.health_checks_passed += out.passed;
        self.stats.health_checks_failed += out.failed;
        self.stats.upstreams_marked_down += out.went_down;
        self.stats.upstreams_marked_up += out.came_up;
        let mut ci = 0;
        while ci < self.clients.len() {
            let (moved, gone) = self.serve(cx, ci);
            progress |= moved;
            if gone {
                self.clients.swap_remove(ci);
            } else {
                ci += 1;
            }
        }
        // Kept connections the upstream closed, or unused too long, go.
        let idle_timeout = self.cfg.idle_timeout.0;
        let mut k = 0;
        while k < self.idle.len() {
            let s = cx.sockets.get::<tcp::Socket>(self.idle[k].sock);
            let stale = s.state() != tcp::State::Established
                || s.recv_queue() > 0
                || cx.now >= self.idle[k].idle_since + idle_timeout;
            if stale {
                let up = self.idle.swap_remove(k);
                cx.sockets.get_mut::<tcp::Socket>(up.sock).close();
                self.closing_up.push(up);
            } else {
                k += 1;
            }
        }
        let mut k = 0;
        while k < self.closing_up.len() {
            let up = &self.closing_up[k];
            let s = cx.sockets.get_mut::<tcp::Socket>(up.sock);
            while let Ok(n) = s.recv_slice(&mut self.scratch) {
                if n == 0 {
                    break;
                }
            }
            let done = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
            if done || cx.now >= up.idle_since + idle_timeout {
                s.abort();
                let up = self.closing_up.swap_remove(k);
                self.dying.push((up.sock, Some(up.local_port)));
            } else {
                k += 1;
            }
        }
        progress | self.accept(cx)
    }

    fn poll_at(&self) -> Option<Instant> {
        if !self.dying.is_empty() {
            return Some(Instant::ZERO);
        }
        let idle = self.cfg.idle_timeout.0;
        let clients = self.clients.iter().filter_map(|c| match c.phase {
            Phase::Head | Phase::Connecting | Phase::ResponseHead => Some(c.deadline),
            Phase::Closing => c.linger,
            _ => None,
        });
        let ups = self
            .idle
            .iter()
            .chain(&self.closing_up)
            .map(|u| u.idle_since + idle);
        let checks = self
            .pools
            .iter()
            .flat_map(|p| &p.upstreams)
            .filter_map(|u| u.checker.as_ref().map(|c| c.poll_at()));
        clients.chain(ups).chain(checks).min()
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        let mut stats = self.stats.clone();
        stats.cache_evictions = self.cache.evictions;
        stats.cache_bytes = self.cache.bytes() as u64;
        stats.visit(visit);
        for a in &self.apps {
            a.visit(visit);
        }
    }

    fn reconfigure(&mut self, cfg: &dyn FunctionSpec) -> Result<bool, FunctionError> {
        reconfigure_in_place::<HttpProxyConfig>(cfg, |new| {
            let (mut pools, routes) = compile(new)?;
            let mut apps = apps::compile(&new.apps, self.now)?;
            // Upstreams that stay keep their health and counts.
            for p in &mut pools {
                let Some(old) = self.pools.iter_mut().find(|o| o.name == p.name) else {
                    continue;
                };
                for u in &mut p.upstreams {
                    if let Some(o) = old.upstreams.iter_mut().find(|o| o.ep == u.ep) {
                        u.active = o.active;
                        u.failures = o.failures;
                        u.down_until = o.down_until;
                        // The checks go on where they were.
                        if let (Some(new), Some(mut c)) = (u.checker.take(), o.checker.take()) {
                            c.reconfigure(new.config());
                            u.checker = Some(c);
                        }
                    }
                }
            }
            // Exchanges under way finish on their connections; what they
            // counted against the old pools is forgotten with them.
            for c in &mut self.clients {
                c.target = None;
            }
            self.closing_up.append(&mut self.idle);
            if new.port != self.cfg.port
                || new.backlog != self.cfg.backlog
                || new.tcp_buffer != self.cfg.tcp_buffer
            {
                let old = std::mem::replace(
                    &mut self.acceptor,
                    Acceptor::new(new.port, new.backlog, new.tcp_buffer),
                );
                let mut old = old;
                self.dying.extend(old.take().into_iter().map(|h| (h, None)));
            }
            // Checks of upstreams that go: their sockets go too.
            for o in self.pools.iter_mut().flat_map(|p| &mut p.upstreams) {
                if let Some(c) = o.checker.take() {
                    self.dying.extend(
                        c.into_sockets()
                            .into_iter()
                            .map(|(h, port)| (h, Some(port))),
                    );
                }
            }
            self.pools = pools;
            self.routes = routes;
            self.limits = limits(new);
            self.cache.resize(new.cache_bytes, new.cache_max_object);
            // Applications that stay keep their counts and buckets, and the
            // exchanges under way stay theirs.
            for a in &mut apps {
                if let Some(old) = self.apps.iter().find(|o| o.name() == a.name()) {
                    a.adopt(old);
                }
            }
            for c in &mut self.clients {
                c.app = c.app.and_then(|i| {
                    let name = self.apps.get(i)?.name();
                    apps.iter().position(|a| a.name() == name)
                });
            }
            self.apps = apps;
            self.cfg = new.clone();
            Ok(())
        })
    }
}
