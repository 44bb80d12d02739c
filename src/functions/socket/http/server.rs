//! `kind = "http-server"`: a small static HTTP/1.1 server on the device's
//! own stack, the backend of the HTTP examples, tests and benchmarks.
//!
//! Routes answer by longest path prefix with a fixed body or a generated
//! one of a given size ([`generated_byte`] says which byte is where), plus
//! their own header fields; anything else is 404. Every response carries
//! `X-Served-By: NAME`. Connections are persistent (HTTP/1.1, or 1.0 with
//! `keep-alive`) and may pipeline: responses go out in request order.
//! Request bodies (Content-Length or chunked) are read and discarded, and
//! the response follows the whole request (after a `100 Continue` when the
//! client asks for one). A bad request gets 400, 414 or 431 and the
//! connection closes after it.
//!
//! Memory is bounded per connection: the unparsed input is at most one
//! head, bodies are never held (fixed ones are shared, generated ones
//! written as they go), and a client that does not read its responses
//! stops being read once a few are queued, so its own window closes. A
//! connection idle for `idle_timeout` is closed (reset if it still had
//! output waiting).
//!
//! smoltcp has no listen backlog: the server keeps `backlog` sockets
//! listening and adds one each time one connects, up to `connections`.
//!
//! ```
//! use shmnet::functions::{build, FunctionConfig};
//! let cfg: FunctionConfig = toml::from_str(r#"
//!     kind = "http-server"
//!     name = "web1"
//!     routes = [
//!         { path = "/", body = "hello\n", headers = { "Cache-Control" = "max-age=60" } },
//!         { path = "/big", size = 1048576 },
//!     ]
//! "#).unwrap();
//! assert_eq!(build(&cfg).unwrap().name(), "http-server");
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};

use super::codec::{
    BodyDecoder, BodyKind, HeadParser, HeadWriter, HttpError, Limits, Method, RequestHead, Version,
    error_response,
};
use crate::functions::common::{counters, invalid, reconfigure_in_place};
use crate::functions::matching::ConfigDuration;
use crate::functions::socket::recv_into;
use crate::functions::{Function, FunctionError, FunctionKind, SocketContext};
use crate::stack::FunctionSpec;

const KIND: &str = "http-server";

/// Responses queued on one connection before the server stops reading its
/// requests (pipelining depth; keeps a client that never reads bounded).
const MAX_QUEUED: usize = 16;

/// The generated bodies repeat every this many bytes.
const PATTERN_PERIOD: usize = 64 << 10;

/// The byte at `offset` of every generated body (`size = N` routes).
pub fn generated_byte(offset: u64) -> u8 {
    super::super::probe::pattern_byte(offset % PATTERN_PERIOD as u64)
}

/// `[function] kind = "http-server"`; a field left out takes its value
/// from [`HttpServerConfig::default`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpServerConfig {
    /// TCP port (default 80).
    pub port: u16,
    /// Sent in every response as `X-Served-By: NAME` (default
    /// `"http-server"`: functions do not know their device's name).
    pub name: String,
    /// What to answer, by longest matching path prefix (default: `/` with
    /// the body `hello from NAME`).
    pub routes: Vec<Route>,
    /// Concurrent connections, listening sockets included (default 64).
    pub connections: usize,
    /// Sockets kept listening for new connections (default 4), at most
    /// `connections`.
    pub backlog: usize,
    /// Bytes of each connection's receive and send buffer (default
    /// 64 KiB).
    pub tcp_buffer: usize,
    /// A connection with no traffic for this long is closed (default
    /// `"60s"`).
    pub idle_timeout: ConfigDuration,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        HttpServerConfig {
            port: 80,
            name: "http-server".into(),
            routes: Vec::new(),
            connections: 64,
            backlog: 4,
            tcp_buffer: 64 << 10,
            idle_timeout: ConfigDuration::from_secs(60),
        }
    }
}

/// One route: `{ path = "/", status = 200, body = "text" }` or `{ path =
/// "/big", size = 1048576 }`, with optional `headers = { NAME = "value" }`
/// and `exact = true` (this path only, not those under it).
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Path prefix the route answers (starts with `/`).
    pub path: String,
    /// Answer only this path, not the paths under it (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exact: bool,
    /// Status code (default 200).
    #[serde(default = "ok")]
    pub status: u16,
    /// Fixed body (`text/plain`); or give `size`.
    pub body: Option<String>,
    /// A generated body of this many bytes (`application/octet-stream`,
    /// see [`generated_byte`]); or give `body`. Neither: an empty body.
    pub size: Option<u64>,
    /// Further response fields (`Content-Type` here replaces the
    /// default); the server's own framing fields may not be set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

fn ok() -> u16 {
    200
}

/// A route made ready to answer: its path, and its whole response head
/// for each way a connection goes on (built once, shared by every
/// response).
#[derive(Debug)]
struct Answer {
    path: Vec<u8>,
    exact: bool,
    status: u16,
    /// Keep-alive (1.1), close, keep-alive for 1.0 (`Connection:
    /// keep-alive`).
    heads: [Arc<[u8]>; 3],
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    Fixed(Arc<[u8]>),
    Generated(u64),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Fixed(b) => b.len() as u64,
            Body::Generated(n) => *n,
        }
    }
}

/// The checked configuration: answers, longest path first.
#[derive(Debug)]
struct Site {
    answers: Vec<Answer>,
    not_found: Answer,
    idle: Duration,
}

fn token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(super::codec::is_tchar)
}

impl Site {
    fn new(cfg: &HttpServerConfig) -> Result<Site, FunctionError> {
        let bad = invalid(KIND);
        if cfg.port == 0 {
            return Err(bad("port must be 1..=65535".into()));
        }
        if !(1..=4096).contains(&cfg.connections) {
            return Err(bad("connections must be 1..=4096".into()));
        }
        if !(1..=cfg.connections).contains(&cfg.backlog) {
            return Err(bad("backlog must be 1..=connections".into()));
        }
        if !(1024..=(1 << 30)).contains(&cfg.tcp_buffer) {
            return Err(bad("tcp_buffer must be 1 KiB..=1 GiB".into()));
        }
        if !token(&cfg.name) {
            return Err(bad(format!(
                "name {:?} must be a token (letters, digits, -._~…)",
                cfg.name
            )));
        }
        let idle = cfg
            .idle_timeout
            .within(
                "idle_timeout",
                Duration::from_millis(100)..=Duration::from_secs(86_400),
            )
            .map_err(bad)?;
        let default_route = [Route {
            path: "/".into(),
            status: 200,
            body: Some(format!("hello from {}\n", cfg.name)),
            ..Route::default()
        }];
        let routes = if cfg.routes.is_empty() {
            &default_route[..]
        } else {
            &cfg.routes
        };
        let mut answers = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            answers.push(answer(cfg, r).map_err(|why| bad(format!("routes[{i}]: {why}")))?);
        }
        answers.sort_by_key(|a| std::cmp::Reverse(a.path.len()));
        let nf = Route {
            path: "/".into(),
            status: 404,
            body: Some("404 Not Found\n".into()),
            ..Route::default()
        };
        let not_found = answer(cfg, &nf).map_err(bad)?;
        Ok(Site {
            answers,
            not_found,
            idle,
        })
    }

    fn route(&self, path: &[u8]) -> &Answer {
        self.answers
            .iter()
            .find(|a| {
                if a.exact {
                    path == a.path
                } else {
                    path.starts_with(&a.path)
                }
            })
            .unwrap_or(&self.not_found)
    }
}

/// The answer of route `r`, or what is wrong with it.
fn answer(cfg: &HttpServerConfig, r: &Route) -> Result<Answer, String> {
    if !r.path.starts_with('/') || !r.path.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(format!(
            "path {:?} must start with / and be visible ASCII",
            r.path
        ));
    }
    if !(200..=599).contains(&r.status) {
        return Err(format!("status {} must be 200..=599", r.status));
    }
    let body = match (&r.body, r.size) {
        (Some(_), Some(_)) => return Err("give body or size, not both".into()),
        (Some(b), None) => Body::Fixed(Arc::from(b.as_bytes())),
        (None, Some(n)) => Body::Generated(n),
        (None, None) => Body::Fixed(Arc::from(&b""[..])),
    };
    if matches!(r.status, 204 | 304) && body.len() > 0 {
        return Err(format!("a {} response has no body", r.status));
    }
    let mut head = Vec::new();
    let mut w = HeadWriter::response(&mut head, r.status);
    w.field(b"Server", b"shmnet")
        .field(b"X-Served-By", cfg.name.as_bytes());
    let has_type = r
        .headers
        .keys()
        .any(|k| k.eq_ignore_ascii_case("content-type"));
    if !has_type && body.len() > 0 {
        let ty: &[u8] = match body {
            Body::Fixed(_) => b"text/plain; charset=utf-8",
            Body::Generated(_) => b"application/octet-stream",
        };
        w.field(b"Content-Type", ty);
    }
    for (name, value) in &r.headers {
        let own = [
            "content-length",
            "transfer-encoding",
            "connection",
            "x-served-by",
        ];
        if !token(name) || own.iter().any(|o| name.eq_ignore_ascii_case(o)) {
            return Err(format!(
                "header {name:?} is not a field name the route may set"
            ));
        }
        if !value.bytes().all(super::codec::is_field_vchar) {
            return Err(format!(
                "header {name:?} has a value with control characters"
            ));
        }
        w.field(name.as_bytes(), value.trim().as_bytes());
    }
    // A 204 has no Content-Length; a 304's would be the resource's.
    if r.status != 204 && r.status != 304 {
        w.content_length(body.len());
    }
    let ending = |connection: Option<&[u8]>| {
        let mut h = head.clone();
        let mut w = HeadWriter::fields(&mut h);
        if let Some(c) = connection {
            w.field(b"Connection", c);
        }
        w.finish();
        Arc::from(h)
    };
    Ok(Answer {
        path: r.path.as_bytes().to_vec(),
        exact: r.exact,
        status: r.status,
        heads: [
            ending(None),
            ending(Some(b"close")),
            ending(Some(b"keep-alive")),
        ],
        body,
    })
}

counters! {
    /// The server's counters.
    #[derive(Debug, Default, Clone, Copy)]
    struct Counters {
        requests: u64,
        responses_2xx: u64,
        responses_3xx: u64,
        responses_4xx: u64,
        responses_5xx: u64,
        bytes_in: u64,
        bytes_out: u64,
        connections: u64,
        bad_requests: u64,
        idle_timeouts: u64,
    }
}

impl Counters {
    fn response(&mut self, status: u16) {
        match status / 100 {
            2 => self.responses_2xx += 1,
            3 => self.responses_3xx += 1,
            4 => self.responses_4xx += 1,
            5 => self.responses_5xx += 1,
            _ => {}
        }
    }
}

/// A response being sent: its head, then its body from `sent` on.
#[derive(Debug)]
struct Pending {
    head: Arc<[u8]>,
    body: Option<Body>,
    /// Bytes of head and body sent so far.
    sent: u64,
    /// Close the connection once this response is out.
    close: bool,
}

impl Pending {
    fn total(&self) -> u64 {
        self.head.len() as u64 + self.body.as_ref().map_or(0, Body::len)
    }
}

/// One client connection.
struct Conn {
    handle: SocketHandle,
    /// Received bytes not parsed yet (at most one head).
    input: Vec<u8>,
    parser: HeadParser,
    head: RequestHead,
    /// The request body being discarded, and the response due after it.
    body: Option<(BodyDecoder, Pending)>,
    queue: VecDeque<Pending>,
    /// No more requests are read: the last response closes.
    closing: bool,
    last_active: Instant,
}

/// The static HTTP server (see the module docs).
pub struct HttpServer {
    cfg: HttpServerConfig,
    site: Site,
    limits: Limits,
    listeners: Vec<SocketHandle>,
    conns: Vec<Conn>,
    counters: Counters,
}

impl HttpServer {
    /// The server for `cfg`; errors name the field that is out of range.
    pub fn new(cfg: HttpServerConfig) -> Result<HttpServer, FunctionError> {
        Ok(HttpServer {
            site: Site::new(&cfg)?,
            cfg,
            limits: Limits::default(),
            listeners: Vec::new(),
            conns: Vec::new(),
            counters: Counters::default(),
        })
    }

    fn listen(&mut self, cx: &mut SocketContext<'_>) -> SocketHandle {
        let h = cx.add_tcp(Some(self.cfg.tcp_buffer));
        let _ = cx.sockets.get_mut::<tcp::Socket>(h).listen(self.cfg.port);
        h
    }

    /// Keeps `backlog` sockets listening, within `connections`.
    fn top_up(&mut self, cx: &mut SocketContext<'_>) {
        while self.listeners.len() < self.cfg.backlog
            && self.listeners.len() + self.conns.len() < self.cfg.connections
        {
            let h = self.listen(cx);
            self.listeners.push(h);
        }
    }

    /// Listeners a client connected to become connections.
    fn accept(&mut self, cx: &mut SocketContext<'_>) {
        let mut i = 0;
        while i < self.listeners.len() {
            let h = self.listeners[i];
            let s = cx.sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                // Not a connection until the handshake is done (a reset
                // one listens again).
                tcp::State::Listen | tcp::State::SynReceived => i += 1,
                tcp::State::Closed => {
                    let _ = s.listen(self.cfg.port);
                    i += 1;
                }
                _ => {
                    self.listeners.swap_remove(i);
                    self.counters.connections += 1;
                    self.conns.push(Conn {
                        handle: h,
                        input: Vec::new(),
                        parser: HeadParser::new(self.limits),
                        head: RequestHead::default(),
                        body: None,
                        queue: VecDeque::new(),
                        closing: false,
                        last_active: cx.now,
                    });
                }
            }
        }
    }
}

impl Function for HttpServer {
    fn kind(&self) -> FunctionKind {
        FunctionKind::socket(KIND)
    }

    fn attach(&mut self, cx: &mut SocketContext<'_>) {
        // Listen at once: a SYN processed before the first `poll` would
        // otherwise be refused.
        self.top_up(cx);
    }

    fn detach(&mut self, cx: &mut SocketContext<'_>) {
        cx.remove_sockets(self.listeners.drain(..));
        cx.remove_sockets(self.conns.drain(..).map(|c| c.handle));
    }

    fn poll(&mut self, cx: &mut SocketContext<'_>) -> bool {
        self.accept(cx);
        let mut progress = false;
        let mut i = 0;
        while i < self.conns.len() {
            let c = &mut self.conns[i];
            let s = cx.sockets.get_mut::<tcp::Socket>(c.handle);
            progress |= serve(c, s, &self.site, &mut self.counters, cx.now);
            match s.state() {
                tcp::State::Closed | tcp::State::TimeWait => {
                    let c = self.conns.swap_remove(i);
                    cx.remove_socket(c.handle);
                }
                _ => i += 1,
            }
        }
        self.top_up(cx);
        progress
    }

    fn poll_at(&self) -> Option<Instant> {
        self.conns
            .iter()
            .map(|c| c.last_active + self.site.idle)
            .min()
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        self.counters.visit(visit);
        visit("open_connections", self.conns.len() as u64);
    }

    fn reconfigure(&mut self, cfg: &dyn FunctionSpec) -> Result<bool, FunctionError> {
        let mut applied = true;
        let done = reconfigure_in_place(cfg, |c: &HttpServerConfig| {
            let site = Site::new(c)?;
            let sockets = (c.port, c.connections, c.backlog, c.tcp_buffer);
            if sockets
                != (
                    self.cfg.port,
                    self.cfg.connections,
                    self.cfg.backlog,
                    self.cfg.tcp_buffer,
                )
            {
                // New sockets: the device builds a new server.
                applied = false;
                return Ok(());
            }
            self.site = site;
            self.cfg = c.clone();
            Ok(())
        })?;
        Ok(done && applied)
    }
}

/// Serves one connection as far as its socket allows: sends what is
/// queued, reads and answers requests while the queue has room, closes
/// when the exchange is over or idle. Returns whether anything moved.
fn serve(
    c: &mut Conn,
    s: &mut tcp::Socket<'_>,
    site: &Site,
    n: &mut Counters,
    now: Instant,
) -> bool {
    let mut progress = false;
    loop {
        let before = (n.bytes_in, n.bytes_out, c.queue.len(), c.closing);
        flush(c, s, n);
        if !c.closing
            && c.queue.len() < MAX_QUEUED
            && let Err(e) = read(c, s, site, n)
        {
            n.bad_requests += 1;
            c.body = None;
            c.closing = true;
            let mut out = Vec::new();
            error_response(e.status(), None, &mut out);
            n.response(e.status());
            c.queue.push_back(Pending {
                head: out.into(),
                body: None,
                sent: 0,
                close: true,
            });
        }
        if (n.bytes_in, n.bytes_out, c.queue.len(), c.closing) == before {
            break;
        }
        progress = true;
        c.last_active = now;
    }
    // The client is done sending: answer what it asked, then close.
    if !s.may_recv() && s.is_open() {
        c.closing = true;
        if c.queue.is_empty() {
            s.close();
        }
    }
    if now >= c.last_active + site.idle && s.is_open() {
        n.idle_timeouts += 1;
        if c.queue.is_empty() && !c.closing {
            c.closing = true;
            s.close();
        } else {
            s.abort();
        }
        c.last_active = now;
        progress = true;
    }
    progress
}

/// Sends queued responses in order, as far as the send buffer allows.
fn flush(c: &mut Conn, s: &mut tcp::Socket<'_>, n: &mut Counters) {
    while let Some(p) = c.queue.front_mut() {
        let head = p.head.len() as u64;
        if p.sent < head {
            let sent = s.send_slice(&p.head[p.sent as usize..]).unwrap_or(0);
            p.sent += sent as u64;
            n.bytes_out += sent as u64;
        }
        if p.sent >= head {
            let off = p.sent - head;
            let sent = match &p.body {
                None => 0,
                Some(Body::Fixed(b)) => s.send_slice(&b[off as usize..]).unwrap_or(0),
                Some(Body::Generated(len)) => s
                    .send(|buf| {
                        let k = buf.len().min((len - off) as usize);
                        fill_generated(off, &mut buf[..k]);
                        (k, k)
                    })
                    .unwrap_or(0),
            };
            p.sent += sent as u64;
            n.bytes_out += sent as u64;
        }
        if p.sent < p.total() {
            return;
        }
        let close = p.close;
        c.queue.pop_front();
        if close {
            c.closing = true;
            c.queue.clear();
            s.close();
            return;
        }
    }
    if c.closing && c.body.is_none() && s.may_send() {
        s.close();
    }
}

/// Writes the generated body's bytes from `off` on into `buf`.
fn fill_generated(off: u64, buf: &mut [u8]) {
    static PATTERN: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| (0..PATTERN_PERIOD as u64).map(generated_byte).collect());
    let mut at = (off % PATTERN_PERIOD as u64) as usize;
    let mut done = 0;
    while done < buf.len() {
        let k = (buf.len() - done).min(PATTERN_PERIOD - at);
        buf[done..done + k].copy_from_slice(&PATTERN[at..at + k]);
        done += k;
        at = 0;
    }
}

/// Reads what the socket has: discards request bodies, parses heads and
/// queues their responses, until the queue is full or input runs out.
fn read(
    c: &mut Conn,
    s: &mut tcp::Socket<'_>,
    site: &Site,
    n: &mut Counters,
) -> Result<(), HttpError> {
    while !c.closing && c.queue.len() < MAX_QUEUED {
        if let Some((body, _)) = &mut c.body {
            let done = if !c.input.is_empty() {
                let d = body.decode(&c.input)?;
                c.input.drain(..d.consumed);
                body.is_done()
            } else if s.can_recv() {
                let got = s
                    .recv(|buf| match body.decode(buf) {
                        Ok(d) => (d.consumed, Ok(d.consumed)),
                        Err(e) => (0, Err(e)),
                    })
                    .unwrap_or(Ok(0))?;
                n.bytes_in += got as u64;
                if got == 0 {
                    return Ok(());
                }
                body.is_done()
            } else {
                return Ok(());
            };
            if let Some((_, p)) = c.body.take_if(|_| done) {
                c.closing = p.close;
                c.queue.push_back(p);
            }
            continue;
        }
        match c.parser.parse_request(&c.input, &mut c.head)? {
            Some(used) => {
                c.input.drain(..used);
                n.requests += 1;
                let p = respond(&c.head, site, n);
                if c.head.body() == BodyKind::None {
                    c.closing = p.close;
                    c.queue.push_back(p);
                } else {
                    let d = BodyDecoder::new(c.head.body(), c.parser.limits())?;
                    if c.head.expects_continue() {
                        let mut cont = Vec::new();
                        HeadWriter::response(&mut cont, 100).finish();
                        c.queue.push_back(Pending {
                            head: cont.into(),
                            body: None,
                            sent: 0,
                            close: false,
                        });
                    }
                    c.body = Some((d, p));
                }
            }
            None => {
                // One head at most, plus a byte to tell it is too long.
                let got = recv_into(s, &mut c.input, c.parser.limits().max_head + 1);
                if got == 0 {
                    return Ok(());
                }
                n.bytes_in += got as u64;
            }
        }
    }
    Ok(())
}

/// The response to `req`.
fn respond(req: &RequestHead, site: &Site, n: &mut Counters) -> Pending {
    let a = site.route(req.path());
    let keep = req.keep_alive();
    let head = match (keep, req.version()) {
        (false, _) => &a.heads[1],
        (true, Version::Http10) => &a.heads[2],
        (true, Version::Http11) => &a.heads[0],
    };
    n.response(a.status);
    Pending {
        head: Arc::clone(head),
        body: (req.method() != Method::Head && a.body.len() > 0).then(|| a.body.clone()),
        sent: 0,
        close: !keep,
    }
}

#[cfg(test)]
mod tests;
