//! One client's exchange, phase by phase: the request head read and
//! routed, the upstream connection made or reused, the request sent, the
//! response head rewritten and its body relayed.

use smoltcp::socket::tcp;
use smoltcp::time::Duration;

use super::super::codec::{
    BodyDecoder, BodyKind, Rewrite, Version, forwarded, via, x_forwarded_for,
};
use super::apps::{self, Refusal};
use super::cache::Capture;
use super::config::{pick, route};
use super::{Client, HttpProxy, Phase, READ_AHEAD, Stats, UpConn};
use crate::functions::SocketContext;
use crate::functions::socket::recv_into;

/// How long a closing client connection may take to flush its last bytes
/// and finish the close.
const LINGER: Duration = Duration::from_secs(5);

/// Further connects to a pool's upstreams after one refused a request.
const MAX_CONNECT_TRIES: u8 = 2;

/// What one step of a client's exchange did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing to do until more bytes, room or time.
    Wait,
    /// Something moved; step again.
    Again,
    /// The client connection is over: remove it.
    Gone,
}

impl HttpProxy {
    /// Moves client `ci`'s exchange on as far as it goes now.
    pub(super) fn serve(&mut self, cx: &mut SocketContext<'_>, ci: usize) -> (bool, bool) {
        let mut progress = false;
        for _ in 0..64 {
            flush_to_client(cx, &mut self.clients[ci], &mut self.stats);
            let step = match self.clients[ci].phase {
                Phase::Head => self.head(cx, ci),
                Phase::Connecting => self.connecting(cx, ci),
                Phase::Request => self.request(cx, ci),
                Phase::ResponseHead => self.response_head(cx, ci),
                Phase::ResponseBody => self.response_body(cx, ci),
                Phase::Closing => self.closing(cx, ci),
            };
            match step {
                Step::Wait => return (progress, false),
                Step::Again => progress = true,
                Step::Gone => return (true, true),
            }
        }
        (progress, false)
    }

    /// Reads a request head; routes it and finds it an upstream.
    fn head(&mut self, cx: &mut SocketContext<'_>, ci: usize) -> Step {
        let now = cx.now;
        let c = &mut self.clients[ci];
        let s = cx.sockets.get_mut::<tcp::Socket>(c.sock);
        let read = recv_into(s, &mut c.inbuf, self.limits.max_head + READ_AHEAD);
        self.stats.bytes_from_clients += read as u64;
        let parsed = c.parser.parse_request(&c.inbuf, &mut c.req);
        let n = match parsed {
            Ok(Some(n)) => n,
            Ok(None) => {
                let s = cx.sockets.get::<tcp::Socket>(c.sock);
                if ended(s) || now >= c.deadline {
                    // The client is done (or idle too long): close.
                    c.phase = Phase::Closing;
                    c.keep = false;
                    return Step::Again;
                }
                return if read > 0 { Step::Again } else { Step::Wait };
            }
            Err(e) => {
                self.stats.bad_requests += 1;
                self.fail(ci, e.status());
                return Step::Again;
            }
        };
        c.inbuf.drain(..n);
        c.parser.reset();
        self.stats.requests += 1;
        let Ok(body) = BodyDecoder::new(c.req.body(), &self.limits) else {
            self.stats.bad_requests += 1;
            self.fail(ci, 400);
            return Step::Again;
        };
        c.req_body = Some(body);
        c.keep = c.req.keep_alive();
        c.capture = None;
        c.started = now;
        c.xfer = (n as u64, 0);
        if let Some(a) = apps::classify(&self.apps, &c.req) {
            let client = cx
                .sockets
                .get::<tcp::Socket>(c.sock)
                .remote_endpoint()
                .map(|e| std::net::IpAddr::from(e.addr));
            match self.apps[a].admit(client, now) {
                Ok(()) => c.app = Some(a),
                Err(refusal) => {
                    let (status, retry) = match refusal {
                        Refusal::Denied => (403, None),
                        Refusal::RateLimited(s) => (429, Some(s)),
                        Refusal::Busy => (503, Some(1)),
                    };
                    let before = c.to_client.len();
                    self.fail_with(ci, status, retry);
                    let c = &self.clients[ci];
                    let out = (c.to_client.len() - before) as u64;
                    self.apps[a].answered(status, (n as u64, out));
                    return Step::Again;
                }
            }
        }
        if let Some(key) = self.cache.key(&c.req) {
            if let Some(e) = self.cache.lookup(&key, &c.req, now) {
                // A fresh copy: answered here, nothing goes upstream.
                let age = e.age(now).to_string();
                let len = e.body.len().to_string();
                let via = via(e.head.fields(), e.head.version(), &self.cfg.name);
                let mut add: Vec<(&[u8], &[u8])> = vec![
                    (b"Via", &via),
                    (b"Age", age.as_bytes()),
                    (b"Content-Length", len.as_bytes()),
                ];
                if !c.keep {
                    add.push((b"Connection", b"close"));
                } else if c.req.version() == Version::Http10 {
                    add.push((b"Connection", b"keep-alive"));
                }
                e.head.emit(
                    &Rewrite {
                        keep_hop_by_hop: false,
                        remove: &[b"via", b"age", b"content-length"],
                        add: &add,
                    },
                    &mut c.to_client,
                );
                c.to_client.extend_from_slice(&e.body);
                let status = e.head.status();
                c.req_body = None;
                if !c.keep {
                    c.phase = Phase::Closing;
                }
                c.xfer.1 += (e.body.len() + 64) as u64;
                self.stats.cache_hits += 1;
                self.count_status(status);
                self.app_done(ci, status);
                return Step::Again;
            }
            self.stats.cache_misses += 1;
            c.capture = Some(Capture {
                key,
                head: None,
                body: Vec::new(),
            });
        }
        let Some(p) = route(&self.routes, &c.req) else {
            self.stats.no_route += 1;
            // The request's body would have to be read to go on: close.
            self.fail(ci, 404);
            return Step::Again;
        };
        c.tries = 0;
        if let Err(status) = self.open_upstream(cx, ci, p) {
            self.fail(ci, status);
            return Step::Again;
        }
        let c = &mut self.clients[ci];
        // The head as it goes upstream.
        let cs = cx.sockets.get::<tcp::Socket>(c.sock);
        let client = cs.remote_endpoint().map(|e| std::net::IpAddr::from(e.addr));
        let by = cs.local_endpoint().map(|e| std::net::IpAddr::from(e.addr));
        let fields = c.req.fields();
        let via = via(fields, c.req.version(), &self.cfg.name);
        let mut xff = Vec::new();
        let mut fwd = Vec::new();
        if let Some(ip) = client {
            xff = x_forwarded_for(fields, ip);
            fwd = forwarded(fields, ip, by, Some("http"), fields.get(b"host"));
        }
        let mut add: Vec<(&[u8], &[u8])> = vec![(b"Via", &via)];
        if client.is_some() {
            add.push((b"X-Forwarded-For", &xff));
            add.push((b"Forwarded", &fwd));
        }
        if c.req.body() == BodyKind::Chunked {
            // Forwarded as it came: chunked.
            add.push((b"Transfer-Encoding", b"chunked"));
        }
        // Replaced by the extended values above.
        let mut remove: Vec<&[u8]> = vec![b"via", b"x-forwarded-for", b"forwarded"];
        if c.req.expects_continue() {
            // Answered here, at once: the body follows without a wait.
            remove.push(b"expect");
            c.to_client
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        c.to_up.clear();
        c.req.emit(
            &Rewrite {
                keep_hop_by_hop: false,
                remove: &remove,
                add: &add,
            },
            &mut c.to_up,
        );
        c.phase = Phase::Connecting;
        c.deadline = now + self.cfg.connect_timeout.0;
        Step::Again
    }

    /// Picks an upstream of pool `p` for client `ci`'s request and gets a
    /// connection to it: a kept one, or a new one under way. The status
    /// to answer with when there is none.
    fn open_upstream(
        &mut self,
        cx: &mut SocketContext<'_>,
        ci: usize,
        p: usize,
    ) -> Result<(), u16> {
        let now = cx.now;
        let c = &mut self.clients[ci];
        let u = pick(&mut self.pools[p], &c.req, now).ok_or(503u16)?;
        self.pools[p].upstreams[u].active += 1;
        c.target = Some((p, u));
        let ep = self.pools[p].upstreams[u].ep;
        // A kept connection to that upstream, if one is still good.
        while let Some(k) = self.idle.iter().position(|k| k.pool == p && k.ep == ep) {
            let k = self.idle.swap_remove(k);
            let s = cx.sockets.get::<tcp::Socket>(k.sock);
            if s.state() == tcp::State::Established && s.recv_queue() == 0 && k.buf.is_empty() {
                self.stats.upstream_reuses += 1;
                c.up = Some(k);
                return Ok(());
            }
            cx.sockets.get_mut::<tcp::Socket>(k.sock).abort();
            self.dying.push((k.sock, Some(k.local_port)));
        }
        let local_port = self.ports.take().ok_or(503u16)?;
        let sock = cx.add_tcp(self.cfg.tcp_buffer);
        let s = cx.sockets.get_mut::<tcp::Socket>(sock);
        if s.connect(cx.iface.context(), ep, local_port).is_err() {
            self.dying.push((sock, Some(local_port)));
            return Err(502);
        }
        self.stats.upstream_connects += 1;
        c.up = Some(UpConn {
            sock,
            pool: p,
            ep,
            local_port,
            buf: Vec::new(),
            idle_since: now,
        });
        Ok(())
    }

    /// Waits for the upstream connection.
    fn connecting(&mut self, cx: &mut SocketContext<'_>, ci: usize) -> Step {
        let c = &mut self.clients[ci];
        let Some(up) = &c.up else {
            self.fail(ci, 502);
            return Step::Again;
        };
        match cx.sockets.get::<tcp::Socket>(up.sock).state() {
            tcp::State::Established => {
                c.phase = Phase::Request;
                Step::Again
            }
            tcp::State::SynSent | tcp::State::SynReceived => {
                if cx.now >= c.deadline {
                    self.stats.upstream_timeouts += 1;
                    self.fail(ci, 504);
                    Step::Again
                } else {
                    Step::Wait
                }
            }
            _ => {
                // Refused (a busy upstream with no socket listening, say).
                // Nothing of the request went out: try again, on whichever
                // upstream the pool picks now, twice at most.
                let pool = c.target.map(|(p, _)| p);
                if let (Some(p), true) = (pool, c.tries < MAX_CONNECT_TRIES) {
                    c.tries += 1;
                    if let Some(up) = c.up.take() {
                        self.dying.push((up.sock, Some(up.local_port)));
                    }
                    self.end_target(ci, false);
                    if let Err(status) = self.open_upstream(cx, ci, p) {
                        self.fail(ci, status);
                    }
                    return Step::Again;
                }
                self.fail(ci, 502);
                Step::Again
            }
        }
    }

    /// Sends the request head and streams its body upstream.
    fn request(&mut self, cx: &mut SocketContext<'_>, ci: usize) -> Step {
        let c = &mut self.clients[ci];
        let Some(up) = &c.up else {
            self.fail(ci, 502);
            return Step::Again;
        };
        let us = cx.sockets.get_mut::<tcp::Socket>(up.sock);
        if !us.may_send() {
            // Gone before the request was through.
            self.fail(ci, 502);
            return Step::Again;
        }
        let mut moved = false;
        if !c.to_up.is_empty() {
            let n = us.send_slice(&c.to_up).unwrap_or(0);
            c.to_up.drain(..n);
            moved = n > 0;
            if !c.to_up.is_empty() {
                return if moved { Step::Again } else { Step::Wait };
            }
        }
        let body = c.req_body.as_mut().expect("set with the head");
        if !body.is_done() {
            if c.inbuf.is_empty() {
                let s = cx.sockets.get_mut::<tcp::Socket>(c.sock);
                let read = recv_into(s, &mut c.inbuf, READ_AHEAD);
                self.stats.bytes_from_clients += read as u64;
                if read == 0 {
                    if ended(s) {
                        // The client ended inside its body.
                        self.stats.bad_requests += 1;
                        self.fail(ci, 400);
                        return Step::Again;
                    }
                    return if moved { Step::Again } else { Step::Wait };
                }
            }
            let us = cx.sockets.get_mut::<tcp::Socket>(up.sock);
            let room = us.send_capacity() - us.send_queue();
            let take = room.min(c.inbuf.len());
            if take == 0 {
                return if moved { Step::Again } else { Step::Wait };
            }
            match body.decode(&c.inbuf[..take]) {
                Ok(d) => {
                    let n = us.send_slice(&c.inbuf[..d.consumed]).unwrap_or(0);
                    debug_assert_eq!(n, d.consumed, "room was checked");
                    c.inbuf.drain(..d.consumed);
                    c.xfer.0 += n as u64;
                    moved |= d.consumed > 0;
                }
                Err(e) => {
                    self.stats.bad_requests += 1;
                    self.fail(ci, e.status());
                    return Step::Again;
                }
            }
            if !body.is_done() {
                return if moved { Step::Again } else { Step::Wait };
            }
        }
        c.phase = Phase::ResponseHead;
        c.deadline = cx.now + self.cfg.response_timeout.0;
        Step::Again
    }

    /// Reads the response head and sends it on, rewritten.
    fn response_head(&mut self, cx: &mut SocketContext<'_>, ci: usize) -> Step {
        let c = &mut self.clients[ci];
        let Some(up) = c.up.as_mut() else {
            self.fail(ci, 502);
            return Step::Again;
        };
        let us = cx.sockets.get_mut::<tcp::Socket>(up.sock);
        let read = recv_into(us, &mut up.buf, self.limits.max_head + READ_AHEAD);
        let method = c.req.method();
        let n = match c.parser.parse_response(&up.buf, method, &mut c.resp) {
            Ok(Some(n)) => n,
            Ok(None) => {
                let us = cx.sockets.get::<tcp::Socket>(up.sock);
                if ended(us) {
                    self.fail(ci, 502);
                    return Step::Again;
                }
                if cx.now >= c.deadline {
                    self.stats.upstream_timeouts += 1;
                    self.fail(ci, 504);
                    return Step::Again;
                }
                return if read > 0 { Step::Again } else { Step::Wait };
            }
            Err(_) => {
                self.fail(ci, 502);
                return Step::Again;
            }
        };
        up.buf.drain(..n);
        c.parser.reset();
        if c.resp.is_interim() {
            // 100 Continue was answered here; other interim responses
            // (102, 103) are informational: dropped.
            return Step::Again;
        }
        let Ok(body) = BodyDecoder::new(c.resp.body(), &self.limits) else {
            self.fail(ci, 502);
            return Step::Again;
        };
        c.resp_body = Some(body);
        c.keep &= c.resp.body() != BodyKind::UntilClose;
        if let Some(cap) = c.capture.as_mut() {
            match self.cache.storable(&c.resp) {
                Some((lifetime, age)) if c.resp.body() != BodyKind::UntilClose => {
                    cap.head = Some((c.resp.clone(), lifetime, age));
                }
                _ => c.capture = None,
            }
        }
        let via = via(c.resp.fields(), c.resp.version(), &self.cfg.name);
        let mut add: Vec<(&[u8], &[u8])> = vec![(b"Via", &via)];
        if c.resp.body() == BodyKind::Chunked {
            add.push((b"Transfer-Encoding", b"chunked"));
        }
        if !c.keep {
            add.push((b"Connection", b"close"));
        } else if c.req.version() == Version::Http10 {
            add.push((b"Connection", b"keep-alive"));
        }
        let before = c.to_client.len();
        c.resp.emit(
            &Rewrite {
                keep_hop_by_hop: false,
                remove: &[b"via"],
                add: &add,
            },
            &mut c.to_client,
        );
        c.xfer.1 += (c.to_client.len() - before) as u64;
        let status = c.resp.status();
        self.count_status(status);
        self.clients[ci].phase = Phase::ResponseBody;
        Step::Again
    }

    /// Relays the response body; then keeps or closes both connections.
    fn response_body(&mut self, cx: &mut SocketContext<'_>, ci: usize) -> Step {
        let c = &mut self.clients[ci];
        if !c.to_client.is_empty() {
            return Step::Wait;
        }
        let Some(up) = c.up.as_mut() else {
            return Step::Gone;
        };
        let body = c.resp_body.as_mut().expect("set with the head");
        let mut moved = 0;
        while !body.is_done() {
            let cs = cx.sockets.get::<tcp::Socket>(c.sock);
            if !cs.may_send() {
                // The client went away: so does the exchange.
                return self.abandon(cx, ci);
            }
            let room = cs.send_capacity() - cs.send_queue();
            if room == 0 {
                break;
            }
            if up.buf.is_empty() {
                let us = cx.sockets.get_mut::<tcp::Socket>(up.sock);
                let n = us
                    .recv_slice(&mut self.scratch[..room.min(READ_AHEAD)])
                    .unwrap_or(0);
                if n == 0 {
                    if ended(us) {
                        // Closed: the end of an until-close body, or a
                        // truncated one (the client sees it cut short).
                        let ok = body.finish().is_ok();
                        if !ok {
                            return self.abandon(cx, ci);
                        }
                        break;
                    }
                    break;
                }
                up.buf.extend_from_slice(&self.scratch[..n]);
            }
            let take = room.min(up.buf.len());
            match body.decode(&up.buf[..take]) {
                Ok(d) => {
                    if let Some(cap) = c.capture.as_mut() {
                        if cap.body.len() + d.data.len() > self.cache.max_object() {
                            c.capture = None;
                        } else {
                            cap.body.extend_from_slice(&up.buf[d.data.clone()]);
                        }
                    }
                    let cs = cx.sockets.get_mut::<tcp::Socket>(c.sock);
                    let n = cs.send_slice(&up.buf[..d.consumed]).unwrap_or(0);
                    debug_assert_eq!(n, d.consumed, "room was checked");
                    up.buf.drain(..d.consumed);
                    self.stats.bytes_to_clients += n as u64;
                    c.xfer.1 += n as u64;
                    moved += n;
                    if d.consumed == 0 {
                        break;
                    }
                }
                Err(_) => return self.abandon(cx, ci),
            }
        }
        if !body.is_done() {
            return if moved > 0 { Step::Again } else { Step::Wait };
        }
        // The exchange is through.
        if let Some(cap) = c.capture.take()
            && self.cache.store(cap, cx.now)
        {
            self.stats.cache_stores += 1;
        }
        let keep_up = c.resp.keep_alive() && up.buf.is_empty();
        let up = c.up.take().expect("checked above");
        let status = c.resp.status();
        self.end_target(ci, true);
        self.app_done(ci, status);
        let kept = self.idle.iter().filter(|k| k.ep == up.ep).count();
        if keep_up && kept < self.cfg.max_idle_per_upstream {
            self.idle.push(UpConn {
                idle_since: cx.now,
                ..up
            });
        } else {
            cx.sockets.get_mut::<tcp::Socket>(up.sock).close();
            self.dying_later(up);
        }
        let c = &mut self.clients[ci];
        c.req_body = None;
        c.resp_body = None;
        if c.keep {
            c.phase = Phase::Head;
            c.deadline = cx.now + self.cfg.idle_timeout.0;
        } else {
            c.phase = Phase::Closing;
        }
        Step::Again
    }

    /// The client or the upstream broke off mid-response: both go.
    fn abandon(&mut self, cx: &mut SocketContext<'_>, ci: usize) -> Step {
        let status = match self.clients[ci].phase {
            Phase::ResponseBody => self.clients[ci].resp.status(),
            _ => 502,
        };
        self.app_done(ci, status);
        let c = &mut self.clients[ci];
        if let Some(up) = c.up.take() {
            cx.sockets.get_mut::<tcp::Socket>(up.sock).abort();
            self.dying.push((up.sock, Some(up.local_port)));
        }
        self.end_target(ci, false);
        let c = &mut self.clients[ci];
        cx.sockets.get_mut::<tcp::Socket>(c.sock).abort();
        self.dying.push((c.sock, None));
        Step::Gone
    }

    /// An upstream connection closed gracefully: its socket goes back once
    /// the close is through (or after the idle timeout at the latest).
    fn dying_later(&mut self, up: UpConn) {
        self.closing_up.push(up);
    }

    /// Sends what is left, then closes the client connection.
    fn closing(&mut self, cx: &mut SocketContext<'_>, ci: usize) -> Step {
        let c = &mut self.clients[ci];
        // A client that reads nothing, or never closes its side, does not
        // keep its place for ever.
        let linger = *c.linger.get_or_insert(cx.now + LINGER);
        let s = cx.sockets.get_mut::<tcp::Socket>(c.sock);
        if cx.now >= linger {
            s.abort();
            self.dying.push((c.sock, None));
            return Step::Gone;
        }
        if !c.to_client.is_empty() && s.may_send() {
            return Step::Wait;
        }
        s.close();
        // Whatever the client still sends is read and dropped.
        while let Ok(n) = s.recv_slice(&mut self.scratch) {
            if n == 0 {
                break;
            }
        }
        if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) {
            self.dying.push((c.sock, None));
            return Step::Gone;
        }
        Step::Wait
    }
}

/// Whether the peer of `s` will send no more: it sent its FIN, or the
/// connection is gone (not: it is still being set up).
fn ended(s: &tcp::Socket<'_>) -> bool {
    use tcp::State::*;
    matches!(s.state(), CloseWait | LastAck | Closing | TimeWait | Closed)
}

/// Sends what waits for the client, as far as its socket has room.
pub(super) fn flush_to_client(cx: &mut SocketContext<'_>, c: &mut Client, stats: &mut Stats) {
    if c.to_client.is_empty() {
        return;
    }
    let s = cx.sockets.get_mut::<tcp::Socket>(c.sock);
    let n = s.send_slice(&c.to_client).unwrap_or(0);
    c.to_client.drain(..n);
    stats.bytes_to_clients += n as u64;
}
