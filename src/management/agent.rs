//! The management agent of one device (see the [module docs](super)).
//!
//! It runs on the device's thread, after every round of the device's loop,
//! with the device itself at hand: requests are applied between rounds,
//! so a change is atomic for the traffic. Sessions are persistent TCP
//! connections carrying sealed messages back to back; a session that sends
//! a message with a bad signature is answered `unauthorized` and closed.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use crate::config::DeviceSettings;
use crate::error::Chain;
use crate::functions::FunctionConfig;
use crate::functions::socket::Acceptor;
use crate::stack::{Applied, NetDevice, Role};
use crate::wire::mgmt::{self, Key, Kind, MgmtPacket, MgmtRepr, Op, ReplayGuard, Status};
use crate::wire::mgmt_payload::{self as body, CaptureResult, Identity, PortInfo, SetResult};

/// At most this many rounds in a row without a look at the agent's
/// sockets.
const SKIP_ROUNDS: u32 = 64;
/// Sessions served at once (a manager, `shmnet ctl`, a spare).
const MAX_SESSIONS: usize = 4;
/// Each session's socket buffers: a counters table is a few KiB, a
/// configuration rarely more than a few dozen.
const SESSION_BUFFER: usize = 256 << 10;

crate::counters::counter_set! {
    /// What the agent saw, part of the device's counters table
    /// (`agent.…`).
    pub struct AgentAtomics => AgentCounters {
        /// Requests answered (authenticated ones).
        requests,
        /// Messages refused for a bad or missing signature.
        unauthorized,
        /// Requests refused as replays or too old (clock skew beyond the
        /// window).
        replayed,
        /// Requests that were malformed or named an unknown operation.
        bad_requests,
        /// Function configurations applied.
        changes_applied,
        /// Function configurations refused (nothing changed).
        changes_refused,
        /// Sessions accepted.
        sessions,
    }
}

/// The agent of one device.
pub struct Agent {
    key: Arc<Key>,
    acceptor: Acceptor,
    sessions: Vec<Session>,
    guard: ReplayGuard,
    /// The function's configuration as last applied.
    config: FunctionConfig,
    started: Instant,
    identity: Identity,
    counters: AgentCounters,
    /// When each network's capture stops on its own, by [`Role::index`].
    capture_until: [Option<Instant>; 2],
    /// Rounds the agent sat out (see [`Agent::poll`]).
    skipped: u32,
}

struct Session {
    h: SocketHandle,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Close once the output is sent (the peer misbehaved).
    closing: bool,
}

fn mac_text(mac: [u8; 6]) -> String {
    let m = mac;
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

impl Agent {
    /// An agent for the device built from `cfg`, listening on `port` and
    /// checking requests with `key`. Call [`Agent::poll`] after every round
    /// of the device's loop.
    pub fn new(cfg: &DeviceSettings, key: Arc<Key>, port: u16) -> Agent {
        let port_info = |n: &crate::stack::spec::NetworkSpec| PortInfo {
            address: n.v4.to_string(),
            address6: n.v6.map(|c| c.to_string()),
            mac: mac_text(cfg.mac),
            mtu: n.mtu,
            segment: n.segment.clone(),
        };
        Agent {
            key,
            acceptor: Acceptor::new(port, 2, Some(SESSION_BUFFER)),
            sessions: Vec::new(),
            guard: ReplayGuard::default(),
            config: cfg.function.clone(),
            started: Instant::now(),
            identity: Identity {
                name: cfg.name.clone(),
                function: cfg.function.kind().to_string(),
                version: env!("CARGO_PKG_VERSION").into(),
                uptime_ms: 0,
                forward: cfg.forward,
                pid: std::process::id(),
                local: port_info(&cfg.local),
                global: port_info(&cfg.global),
            },
            counters: AgentCounters::default(),
            capture_until: [None, None],
            skipped: 0,
        }
    }

    /// What the agent saw so far.
    pub fn counters(&self) -> AgentCounters {
        self.counters
    }

    /// Serves the agent's sessions: accepts, reads whole requests, applies
    /// them to `dev` and queues the answers. Returns whether it did
    /// anything.
    pub fn poll(&mut self, dev: &mut NetDevice) -> bool {
        // A forwarding device's rounds rarely touch its sockets: the agent
        // looks at its own only when some socket was touched, when it has
        // output or a capture to time, and every SKIP_ROUNDS rounds anyway
        // (a device about to sleep spins through many idle rounds first).
        let busy = self.sessions.iter().any(|s| !s.output.is_empty())
            || self.capture_until.iter().any(Option::is_some);
        if !busy && !dev.sockets_changed() && self.skipped < SKIP_ROUNDS {
            self.skipped += 1;
            return false;
        }
        self.skipped = 0;
        let mut worked = self.stop_due_captures(dev);
        let mut requests = Vec::new();
        {
            let mut cx = dev.context();
            let room = MAX_SESSIONS - self.sessions.len().min(MAX_SESSIONS);
            let (sessions, counters) = (&mut self.sessions, &mut self.counters);
            worked |= self.acceptor.accept(&mut cx, room, |_, h| {
                counters.sessions += 1;
                sessions.push(Session {
                    h,
                    input: Vec::new(),
                    output: Vec::new(),
                    closing: false,
                });
            });
            for (i, s) in self.sessions.iter_mut().enumerate() {
                let sock = cx.sockets.get_mut::<tcp::Socket>(s.h);
                while sock.can_recv() && !s.closing {
                    let _ = sock.recv(|b| {
                        s.input.extend_from_slice(b);
                        (b.len(), ())
                    });
                    worked = true;
                    // Whole messages out of the stream; a header that
                    // cannot start a message ends the session.
                    loop {
                        match mgmt::frame_len(&s.input) {
                            Ok(Some(n)) if s.input.len() >= n => {
                                requests.push((i, s.input.drain(..n).collect::<Vec<u8>>()));
                            }
                            Ok(_) => break,
                            Err(_) => {
                                self.counters.bad_requests += 1;
                                s.input.clear();
                                s.closing = true;
                                break;
                            }
                        }
                    }
                }
            }
        }
        for (i, msg) in requests {
            let (answer, close) = self.answer(dev, &msg);
            let s = &mut self.sessions[i];
            s.output.extend_from_slice(&answer);
            s.closing |= close;
        }
        let mut cx = dev.context();
        self.sessions.retain_mut(|s| {
            let sock = cx.sockets.get_mut::<tcp::Socket>(s.h);
            if !s.output.is_empty()
                && sock.can_send()
                && let Ok(n) = sock.send_slice(&s.output)
            {
                s.output.drain(..n);
                worked = true;
            }
            // Only the peer's FIN (CLOSE-WAIT) ends a session from its side:
            // a socket just accepted cannot receive yet either.
            if s.output.is_empty() && (s.closing || sock.state() == tcp::State::CloseWait) {
                sock.close();
            }
            let done = matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait);
            if done {
                cx.remove_socket(s.h);
            }
            !done
        });
        worked
    }

    /// Closes every session and stops listening (the device is stopping).
    pub fn close(&mut self, dev: &mut NetDevice) {
        let mut cx = dev.context();
        self.acceptor.close(&mut cx);
        for s in self.sessions.drain(..) {
            cx.sockets.get_mut::<tcp::Socket>(s.h).abort();
            cx.remove_socket(s.h);
        }
    }

    /// Checks one sealed request and answers it; `true`: close the session
    /// after the answer.
    fn answer(&mut self, dev: &mut NetDevice, msg: &[u8]) -> (Vec<u8>, bool) {
        let reply = |key: &Key, op: u8, status: Status, client: u32, seq: u64, body: &[u8]| {
            let r = MgmtRepr {
                kind: Kind::Response,
                op,
                status: status as u8,
                client,
                seq,
                time_ms: mgmt::unix_ms(),
                body,
            };
            mgmt::seal(&r, key).unwrap_or_else(|e| {
                // Only a body beyond MAX_BODY fails: say so instead.
                let text = format!("the answer cannot be sent: {e}");
                let r = MgmtRepr {
                    status: Status::Error as u8,
                    body: text.as_bytes(),
                    ..r
                };
                mgmt::seal(&r, key).unwrap_or_default()
            })
        };
        let req = match mgmt::open(msg, &self.key) {
            Ok(r) if r.kind == Kind::Request => r,
            Ok(r) => {
                self.counters.bad_requests += 1;
                let b = b"not a request";
                return (
                    reply(&self.key, r.op, Status::BadRequest, r.client, r.seq, b),
                    true,
                );
            }
            Err(e) => {
                self.counters.unauthorized += 1;
                let (op, client, seq) = MgmtPacket::new_checked(msg)
                    .map(|p| (p.op(), p.client(), p.seq()))
                    .unwrap_or((0, 0, 0));
                let text = e.to_string();
                let b = text.as_bytes();
                return (
                    reply(&self.key, op, Status::Unauthorized, client, seq, b),
                    true,
                );
            }
        };
        let (op, client, seq) = (req.op, req.client, req.seq);
        if let Err(e) = self.guard.check(client, seq, req.time_ms, mgmt::unix_ms()) {
            self.counters.replayed += 1;
            let text = e.to_string();
            return (
                reply(&self.key, op, Status::Replay, client, seq, text.as_bytes()),
                false,
            );
        }
        self.counters.requests += 1;
        let (status, out) = match Op::from_u8(op) {
            None => {
                self.counters.bad_requests += 1;
                (
                    Status::UnknownOp,
                    format!("unknown operation {op}").into_bytes(),
                )
            }
            Some(op) => match self.serve(dev, op, req.body) {
                Ok(b) => (Status::Ok, b),
                Err(e) => (Status::Error, e.into_bytes()),
            },
        };
        (reply(&self.key, op, status, client, seq, &out), false)
    }

    /// Carries out one authenticated request.
    fn serve(&mut self, dev: &mut NetDevice, op: Op, req: &[u8]) -> Result<Vec<u8>, String> {
        match op {
            Op::Identify => {
                let mut id = self.identity.clone();
                id.uptime_ms = self.started.elapsed().as_millis() as u64;
                id.function = dev.stats().function;
                Ok(body::to_toml(&id))
            }
            Op::Counters => {
                let stats = dev.stats();
                let mut table: Vec<(String, u64)> =
                    stats.counters().map(|(n, v)| (n.to_string(), v)).collect();
                let agent = self.counters.pairs();
                table.extend(agent.iter().map(|(n, v)| (format!("agent.{n}"), *v)));
                table.push((
                    "uptime_ms".into(),
                    self.started.elapsed().as_millis() as u64,
                ));
                Ok(body::encode_counters(
                    table.iter().map(|(n, v)| (n.as_str(), *v)),
                ))
            }
            Op::Config => toml::to_string(&self.config)
                .map(String::into_bytes)
                .map_err(|e| format!("cannot write the configuration: {e}")),
            Op::SetFunction => self.set_function(dev, req),
            Op::CaptureStart => {
                let c: body::CaptureStart = body::from_toml(req)?;
                let role = role_of(&c.adapter)?;
                let path = Path::new(&c.file);
                if !path.is_absolute() {
                    return Err(format!(
                        "{}: the capture file must be an absolute path",
                        c.file
                    ));
                }
                dev.start_capture(role, path)
                    .map_err(|e| Chain(&e).to_string())?;
                self.capture_until[role.index()] = c
                    .seconds
                    .map(|s| Instant::now() + std::time::Duration::from_secs(s.min(86_400)));
                Ok(Vec::new())
            }
            Op::CaptureStop => {
                let c: body::CaptureStop = body::from_toml(req)?;
                let role = role_of(&c.adapter)?;
                self.capture_until[role.index()] = None;
                match dev.stop_capture(role) {
                    Some(w) => Ok(body::to_toml(&CaptureResult {
                        frames: w.frames,
                        bytes: w.bytes,
                    })),
                    None => Err(format!("the {} network is not being captured", c.adapter)),
                }
            }
            Op::Probe => Err("probes run from the manager".into()),
        }
    }

    /// Validates a function configuration and applies it (in place, or by
    /// replacing the function); on any error nothing changes.
    fn set_function(&mut self, dev: &mut NetDevice, req: &[u8]) -> Result<Vec<u8>, String> {
        let text = std::str::from_utf8(req).map_err(|_| "the configuration is not UTF-8")?;
        let outcome = relative_paths_refused(text)
            .and_then(|()| FunctionConfig::from_toml(text).map_err(|e| Chain(&e).to_string()))
            .and_then(|cfg| {
                let applied = dev.reconfigure(&cfg).map_err(|e| Chain(&e).to_string())?;
                Ok((cfg, applied))
            });
        match outcome {
            Ok((cfg, applied)) => {
                self.counters.changes_applied += 1;
                self.config = cfg;
                let r = SetResult {
                    applied: match applied {
                        Applied::InPlace => "in-place",
                        Applied::Replaced => "replaced",
                    }
                    .into(),
                    function: self.config.kind().to_string(),
                };
                Ok(body::to_toml(&r))
            }
            Err(e) => {
                self.counters.changes_refused += 1;
                Err(e)
            }
        }
    }

    /// Ends captures whose time is up.
    fn stop_due_captures(&mut self, dev: &mut NetDevice) -> bool {
        let now = Instant::now();
        let mut any = false;
        for role in Role::ALL {
            if self.capture_until[role.index()].is_some_and(|t| now >= t) {
                self.capture_until[role.index()] = None;
                dev.stop_capture(role);
                any = true;
            }
        }
        any
    }
}

fn role_of(adapter: &str) -> Result<Role, String> {
    match adapter {
        "local" => Ok(Role::Local),
        "global" => Ok(Role::Global),
        other => Err(format!("adapter {other:?}: use local or global")),
    }
}

/// Refuses a function table that names a file by a relative path: sent
/// to a device, it has no file to be relative to, and the device's working
/// directory would be a surprise. (`shmnet ctl set FILE` and a policy's
/// `set` make a file's paths absolute before sending.)
fn relative_paths_refused(text: &str) -> Result<(), String> {
    let Ok(mut table) = toml::from_str::<toml::Value>(text) else {
        return Ok(()); // FunctionConfig::from_toml says what is wrong.
    };
    let mut relative = None;
    crate::functions::function_paths(&mut table, |key, p| {
        if relative.is_none() && !Path::new(p.as_str()).is_absolute() {
            relative = Some(format!(
                "`{key}` = {p:?} is a relative path: a function sent to a device \
                 names its files by absolute path"
            ));
        }
    });
    relative.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::relative_paths_refused;

    #[test]
    fn a_function_naming_a_file_by_a_relative_path_is_refused() {
        let encrypt = |outbound: &str, inbound: &str| {
            format!(
                "kind = \"encrypt\"\noutbound = {{ spi = 4096, key_file = \"{outbound}\" }}\n\
                 [[inbound]]\nspi = 4097\nkey_file = \"/k/in0.key\"\n\
                 [[inbound]]\nspi = 4098\nkey_file = \"{inbound}\"\n"
            )
        };
        assert_eq!(
            relative_paths_refused(&encrypt("/k/out.key", "/k/in1.key")),
            Ok(())
        );
        let e = relative_paths_refused(&encrypt("out.key", "/k/in1.key")).unwrap_err();
        assert!(
            e.starts_with("`outbound.key_file` = \"out.key\" is a relative path"),
            "{e}"
        );
        let e = relative_paths_refused(&encrypt("/k/out.key", "../in1.key")).unwrap_err();
        assert!(
            e.starts_with("`inbound[1].key_file` = \"../in1.key\""),
            "{e}"
        );
        let manager = "kind = \"manager\"\npolicy = \"policy.toml\"";
        assert!(
            relative_paths_refused(manager)
                .unwrap_err()
                .contains("`policy`")
        );
        // Other kinds name no files; what is not TOML is left to the parser.
        assert_eq!(
            relative_paths_refused("kind = \"qos\"\nrate = \"1mbit\""),
            Ok(())
        );
        assert_eq!(relative_paths_refused("not toml ["), Ok(()));
    }
}
