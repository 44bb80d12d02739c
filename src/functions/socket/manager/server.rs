//! The manager's HTTP/1.1 server: `/metrics`, the JSON API and the index,
//! on its own stack. Requests are answered in order on each connection
//! (keep-alive, pipelining); one that needs an agent or a probe waits for
//! it while the connection's later requests wait behind it.

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use super::agents::{Answer, Purpose};
use super::api::{self, ApiError, ApiRequest};
use super::probes::{Probe, ProbeConfig};
use super::{Manager, state};
use crate::functions::SocketContext;
use crate::functions::matching::ConfigDuration;
use crate::functions::socket::http::codec::{HeadWriter, Limits, RequestHead};
use crate::functions::socket::{Acceptor, Retired};
use crate::wire::mgmt::{Key, Op, Status};
use crate::wire::mgmt_payload as body;

/// Largest request body (a function configuration, a capture request).
const MAX_BODY: usize = 1 << 20;
/// Output queued on a connection before its requests stop being read.
const MAX_OUTPUT: usize = 4 << 20;
/// What the API token is derived from the secret with (the same as
/// [`api::api_token`] of the secret's bytes).
const TOKEN_LABEL: &str = "shmnet-api-token";
/// Ad-hoc probes running at once.
const MAX_PROBES: usize = 16;

struct Conn {
    id: u64,
    h: SocketHandle,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Waiting for an agent or a probe to answer the current request.
    waiting: Option<Waiting>,
    /// Close once the output is sent.
    closing: bool,
    /// HTTP/1.0 without keep-alive, or `Connection: close`.
    close_after: bool,
}

enum Waiting {
    Agent,
    Probe,
}

/// The HTTP side of the manager.
pub(super) struct Server {
    acceptor: Acceptor,
    max: usize,
    conns: Vec<Conn>,
    next_id: u64,
    token: String,
    /// On-demand probes and the connection waiting for each.
    probes: Vec<(u64, Probe)>,
}

impl Server {
    pub(super) fn new(port: u16, max: usize, key: &Key) -> Server {
        let token = token_of(key);
        Server {
            acceptor: Acceptor::new(port, 4, Some(256 << 10)),
            max,
            conns: Vec::new(),
            next_id: 1,
            token,
            probes: Vec::new(),
        }
    }

    pub(super) fn set_token(&mut self, key: &Key) {
        self.token = token_of(key);
    }

    pub(super) fn probes_due(&self) -> Option<Instant> {
        self.probes.iter().map(|(_, p)| p.poll_at()).min()
    }

    /// An agent answered a request connection `conn` waits for.
    pub(super) fn agent_answered(&mut self, conn: u64, device: &str, a: &Answer) {
        let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) else {
            return; // the client left
        };
        c.waiting = None;
        let (status, json) = match &a.result {
            Err(e) => (
                504,
                serde_json::json!({"ok": false, "error": format!("{device}: agent: {e}")}),
            ),
            Ok((Status::Ok, b)) => (200, ok_body(a.op, b)),
            Ok((st, b)) => {
                let code = match st {
                    Status::Error | Status::BadRequest => 422,
                    Status::Unauthorized | Status::Replay => 502,
                    _ => 500,
                };
                let text = String::from_utf8_lossy(b).into_owned();
                (code, serde_json::json!({"ok": false, "error": text}))
            }
        };
        respond_json(c, status, &json);
    }

    pub(super) fn close(&mut self, cx: &mut SocketContext<'_>, retired: &mut Retired) {
        self.acceptor.close(cx);
        for c in self.conns.drain(..) {
            cx.sockets.get_mut::<tcp::Socket>(c.h).abort();
            cx.remove_socket(c.h);
        }
        for (_, mut p) in self.probes.drain(..) {
            p.close(cx, retired);
        }
    }
}

/// The API token of the secret `key`.
fn token_of(key: &Key) -> String {
    key.derive(TOKEN_LABEL)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The JSON of a successful agent answer.
fn ok_body(op: Op, b: &[u8]) -> serde_json::Value {
    match op {
        Op::SetFunction => match body::from_toml::<body::SetResult>(b) {
            Ok(r) => serde_json::json!({"ok": true, "applied": r.applied, "function": r.function}),
            Err(e) => serde_json::json!({"ok": true, "note": e}),
        },
        Op::CaptureStop => match body::from_toml::<body::CaptureResult>(b) {
            Ok(r) => serde_json::json!({"ok": true, "frames": r.frames, "bytes": r.bytes}),
            Err(e) => serde_json::json!({"ok": true, "note": e}),
        },
        _ => serde_json::json!({"ok": true}),
    }
}

fn respond(c: &mut Conn, status: u16, content_type: &str, body: &[u8], extra: &[(&str, &str)]) {
    let mut w = HeadWriter::response(&mut c.output, status);
    w.field(b"Content-Type", content_type.as_bytes());
    w.field(b"Server", b"shmnet-manager");
    for (k, v) in extra {
        w.field(k.as_bytes(), v.as_bytes());
    }
    if c.close_after {
        w.field(b"Connection", b"close");
    }
    w.content_length(body.len() as u64);
    w.finish();
    c.output.extend_from_slice(body);
    if c.close_after {
        c.closing = true;
    }
}

fn respond_json(c: &mut Conn, status: u16, v: &serde_json::Value) {
    let mut text = serde_json::to_vec_pretty(v).unwrap_or_default();
    text.push(b'\n');
    respond(c, status, "application/json", &text, &[]);
}

fn respond_error(c: &mut Conn, e: &ApiError) {
    let v = serde_json::json!({"ok": false, "error": e.message});
    let allow = e.allow.join(", ");
    let mut text = serde_json::to_vec_pretty(&v).unwrap_or_default();
    text.push(b'\n');
    let extra: Vec<(&str, &str)> = if e.allow.is_empty() {
        Vec::new()
    } else {
        vec![("Allow", allow.as_str())]
    };
    respond(c, e.status, "application/json", &text, &extra);
}

/// Accepts, reads and answers; returns whether anything happened.
pub(super) fn serve(m: &mut Manager, cx: &mut SocketContext<'_>) -> bool {
    let mut worked = false;
    let room = m.server.max.saturating_sub(m.server.conns.len());
    let (conns, next_id, stats) = (&mut m.server.conns, &mut m.server.next_id, &mut m.stats);
    worked |= m.server.acceptor.accept(cx, room, |_, h| {
        stats.http_connections += 1;
        conns.push(Conn {
            id: *next_id,
            h,
            input: Vec::new(),
            output: Vec::new(),
            waiting: None,
            closing: false,
            close_after: false,
        });
        *next_id += 1;
    });
    worked |= poll_probes(m, cx);
    let mut i = 0;
    while i < m.server.conns.len() {
        let h = m.server.conns[i].h;
        {
            let c = &mut m.server.conns[i];
            let s = cx.sockets.get_mut::<tcp::Socket>(h);
            while s.can_recv() && c.input.len() < MAX_BODY + (64 << 10) {
                let _ = s.recv(|b| {
                    c.input.extend_from_slice(b);
                    (b.len(), ())
                });
                worked = true;
            }
        }
        // Requests, one at a time, while nothing is waited for.
        while m.server.conns[i].waiting.is_none()
            && !m.server.conns[i].closing
            && m.server.conns[i].output.len() < MAX_OUTPUT
        {
            let Some(req) = take_request(&mut m.server.conns[i]) else {
                break;
            };
            worked = true;
            m.stats.http_requests += 1;
            handle(m, cx, i, req);
        }
        let c = &mut m.server.conns[i];
        let s = cx.sockets.get_mut::<tcp::Socket>(h);
        if !c.output.is_empty()
            && s.can_send()
            && let Ok(n) = s.send_slice(&c.output)
        {
            c.output.drain(..n);
            worked |= n > 0;
        }
        // (A socket just accepted cannot receive yet either: only a peer's
        // FIN, CLOSE-WAIT, ends the connection from that side.)
        let peer_done = s.state() == tcp::State::CloseWait;
        if c.output.is_empty() && (c.closing || (peer_done && c.waiting.is_none())) {
            s.close();
        }
        if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) {
            cx.remove_socket(h);
            m.server.conns.swap_remove(i);
            continue;
        }
        i += 1;
    }
    worked
}

/// A parsed request: head fields we use and the body.
struct Request {
    method: Vec<u8>,
    target: Vec<u8>,
    authorization: Option<Vec<u8>>,
    body: Vec<u8>,
}

/// The next whole request in the connection's input; a malformed one is
/// answered (and the connection closed) here.
fn take_request(c: &mut Conn) -> Option<Request> {
    let (head, n) = match RequestHead::parse(&c.input, &Limits::default()) {
        Ok(Some(x)) => x,
        Ok(None) => return None,
        Err(e) => {
            c.close_after = true;
            respond_error(
                c,
                &ApiError {
                    status: e.status(),
                    message: e.to_string(),
                    allow: &[],
                },
            );
            c.input.clear();
            return None;
        }
    };
    let len = match head.body() {
        crate::functions::socket::http::codec::BodyKind::None => 0,
        crate::functions::socket::http::codec::BodyKind::Length(l) if l as usize <= MAX_BODY => {
            l as usize
        }
        _ => {
            c.close_after = true;
            let e = ApiError {
                status: 413,
                message: format!("bodies must have a Content-Length of at most {MAX_BODY} bytes"),
                allow: &[],
            };
            respond_error(c, &e);
            c.input.clear();
            return None;
        }
    };
    if c.input.len() < n + len {
        return None;
    }
    c.close_after = !head.keep_alive();
    let req = Request {
        method: head.method_bytes().to_vec(),
        target: head.target().to_vec(),
        authorization: head.fields().get(b"authorization").map(<[u8]>::to_vec),
        body: c.input[n..n + len].to_vec(),
    };
    c.input.drain(..n + len);
    Some(req)
}

/// Answers one request (or starts what will answer it).
fn handle(m: &mut Manager, cx: &mut SocketContext<'_>, i: usize, req: Request) {
    log::debug!(
        "manager: {} {}",
        String::from_utf8_lossy(&req.method),
        String::from_utf8_lossy(&req.target)
    );
    let r = match api::route(&req.method, &req.target) {
        Ok(r) => r,
        Err(e) => return respond_error(&mut m.server.conns[i], &e),
    };
    if api::requires_auth(&r) && !api::bearer_ok(req.authorization.as_deref(), &m.server.token) {
        m.stats.http_unauthorized += 1;
        let e = ApiError {
            status: 401,
            message: "this request needs Authorization: Bearer TOKEN (shmnet ctl reads it from the secret file)".into(),
            allow: &[],
        };
        return respond_error(&mut m.server.conns[i], &e);
    }
    let id = m.server.conns[i].id;
    let mut ask = |m: &mut Manager, device: &str, op: Op, body: &[u8]| match m.ask(
        cx,
        device,
        op,
        body,
        Purpose::Api { conn: id },
    ) {
        Ok(()) => m.server.conns[i].waiting = Some(Waiting::Agent),
        Err(e) => {
            let status = if m.devices.contains_key(device) {
                504
            } else {
                404
            };
            respond_error(
                &mut m.server.conns[i],
                &ApiError {
                    status,
                    message: e,
                    allow: &[],
                },
            );
        }
    };
    match r {
        ApiRequest::Index => {
            respond(
                &mut m.server.conns[i],
                200,
                "text/plain; charset=utf-8",
                api::INDEX.as_bytes(),
                &[],
            );
        }
        ApiRequest::Metrics => {
            let text = state::render_metrics(m);
            respond(
                &mut m.server.conns[i],
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                text.as_bytes(),
                &[],
            );
        }
        ApiRequest::Devices => {
            let v = state::devices_json(m, cx.now);
            respond_json(&mut m.server.conns[i], 200, &v);
        }
        ApiRequest::Device(name) => match state::device_json(m, &name, cx.now) {
            Some(v) => respond_json(&mut m.server.conns[i], 200, &v),
            None => respond_error(&mut m.server.conns[i], &unknown(&name)),
        },
        ApiRequest::DeviceConfig(name) => match m.devices.get(&name) {
            Some(d) => {
                let v = serde_json::json!({"device": name, "function": d.config});
                respond_json(&mut m.server.conns[i], 200, &v);
            }
            None => respond_error(&mut m.server.conns[i], &unknown(&name)),
        },
        ApiRequest::SetFunction(name) => {
            if !m.devices.contains_key(&name) {
                return respond_error(&mut m.server.conns[i], &unknown(&name));
            }
            let text = function_table(&req.body);
            match text {
                Ok(t) => ask(m, &name, Op::SetFunction, t.as_bytes()),
                Err(e) => respond_error(&mut m.server.conns[i], &ApiError::bad_request(e)),
            }
        }
        ApiRequest::CaptureStart(name) => {
            let c: api::CaptureRequest = match api::parse_json(&req.body)
                .and_then(|c: api::CaptureRequest| c.validate().map(|()| c))
            {
                Ok(c) => c,
                Err(e) => return respond_error(&mut m.server.conns[i], &e),
            };
            let b = body::to_toml(&body::CaptureStart {
                adapter: c.adapter.as_str().into(),
                file: c.file.clone(),
                seconds: Some(u64::from(c.seconds)),
            });
            ask(m, &name, Op::CaptureStart, &b);
        }
        ApiRequest::CaptureStop { device, adapter } => {
            let b = body::to_toml(&body::CaptureStop {
                adapter: adapter.as_str().into(),
            });
            ask(m, &device, Op::CaptureStop, &b);
        }
        ApiRequest::Policy => {
            let v = state::policy_json(m);
            respond_json(&mut m.server.conns[i], 200, &v);
        }
        ApiRequest::PolicyReload => {
            let (st, v) = match m.reload_policy() {
                Ok(()) => (200, serde_json::json!({"ok": true})),
                Err(e) => (422, serde_json::json!({"ok": false, "error": e})),
            };
            respond_json(&mut m.server.conns[i], st, &v);
        }
        ApiRequest::Probe => {
            let p: api::ProbeRequest = match api::parse_json(&req.body)
                .and_then(|p: api::ProbeRequest| p.validate().map(|()| p))
            {
                Ok(p) => p,
                Err(e) => return respond_error(&mut m.server.conns[i], &e),
            };
            if m.server.probes.len() >= MAX_PROBES {
                let e = ApiError {
                    status: 503,
                    message: "too many probes running; try again".into(),
                    allow: &[],
                };
                return respond_error(&mut m.server.conns[i], &e);
            }
            let cfg = ProbeConfig {
                name: p.device.clone().unwrap_or_else(|| "adhoc".into()),
                kind: p.kind,
                target: p.target.clone(),
                interval: ConfigDuration::from_millis(u64::from(p.interval_ms)),
                timeout: ConfigDuration::from_millis(u64::from(p.timeout_ms)),
                path: Some(p.path.clone()),
                expect_status: None,
            };
            let ident = 0x5400 + (id as u16 & 0xff);
            match Probe::new(cfg, ident) {
                Ok(mut probe) => {
                    probe.remaining = Some(u64::from(p.count));
                    probe.reset_schedule(cx.now);
                    m.server.probes.push((id, probe));
                    m.server.conns[i].waiting = Some(Waiting::Probe);
                }
                Err(e) => respond_error(&mut m.server.conns[i], &ApiError::bad_request(e)),
            }
        }
    }
}

fn unknown(name: &str) -> ApiError {
    ApiError {
        status: 404,
        message: format!("no device {name:?} (GET /api/devices lists them)"),
        allow: &[],
    }
}

/// The function table to send: the body's `[function]` table if it has
/// one (a whole device file), else the body itself; it must parse.
fn function_table(b: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(b).map_err(|_| "the body is not UTF-8".to_string())?;
    let t: toml::Table =
        toml::from_str(text).map_err(|e| format!("the body is not TOML: {}", e.message()))?;
    match t.get("function") {
        Some(toml::Value::Table(f)) => toml::to_string(f).map_err(|e| e.to_string()),
        _ => Ok(text.to_string()),
    }
}

/// Runs on-demand probes; answers their connections when they finish.
fn poll_probes(m: &mut Manager, cx: &mut SocketContext<'_>) -> bool {
    let mut worked = false;
    let mut i = 0;
    while i < m.server.probes.len() {
        let (conn, p) = &mut m.server.probes[i];
        worked |= p.poll(cx, &mut m.ports, &mut m.retired);
        if !p.done() {
            i += 1;
            continue;
        }
        let conn = *conn;
        let (_, mut p) = m.server.probes.swap_remove(i);
        p.close(cx, &mut m.retired);
        if let Some(c) = m.server.conns.iter_mut().find(|c| c.id == conn) {
            c.waiting = None;
            let v = state::probe_json(&p);
            respond_json(c, 200, &v);
        }
        worked = true;
    }
    worked
}
