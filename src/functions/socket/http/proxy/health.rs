//! Active health checks of a pool's upstreams: every `interval`, an
//! HTTP GET of `path` on a connection of its own; the expected `status`
//! within `timeout` is a pass, anything else a failure. `fall` failures in
//! a row take an upstream out of its pool, `rise` passes in a row bring it
//! back. (Passive checks — failures of real requests — eject for
//! `eject_for` on top of this.)

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};

use super::super::codec::{Limits, Method, ResponseHead};
use crate::functions::SocketContext;
use crate::functions::matching::ConfigDuration;
use crate::functions::socket::LocalPorts;

/// `health = { ... }` of a pool.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// The path to GET (`"/"`).
    pub path: String,
    /// The status that passes (200).
    pub status: u16,
    /// Time between checks of an upstream (`"2s"`).
    pub interval: ConfigDuration,
    /// A check without the answer after this long fails (`"1s"`).
    pub timeout: ConfigDuration,
    /// Passes in a row that bring a down upstream back (2).
    pub rise: u32,
    /// Failures in a row that take an upstream down (3).
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: "/".into(),
            status: 200,
            interval: ConfigDuration::from_secs(2),
            timeout: ConfigDuration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

impl HealthConfig {
    /// What is wrong with it, if anything.
    pub(super) fn check(&self) -> Result<(), String> {
        if !self.path.starts_with('/') || !self.path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("health.path must start with / and have no spaces".into());
        }
        if !(100..=599).contains(&self.status) {
            return Err("health.status must be 100..=599".into());
        }
        let range = Duration::from_millis(10)..=Duration::from_secs(3600);
        self.interval.within("health.interval", range.clone())?;
        self.timeout.within("health.timeout", range)?;
        if self.rise == 0 || self.fall == 0 || self.rise > 100 || self.fall > 100 {
            return Err("health.rise and health.fall must be 1..=100".into());
        }
        Ok(())
    }
}

/// A check on its way.
#[derive(Debug)]
struct Probe {
    sock: SocketHandle,
    port: u16,
    sent: bool,
    buf: Vec<u8>,
    deadline: Instant,
}

/// One upstream's checks.
#[derive(Debug)]
pub(super) struct Checker {
    cfg: HealthConfig,
    /// Down by the checks (not by passive ejection).
    pub(super) down: bool,
    passes: u32,
    fails: u32,
    next: Instant,
    probe: Option<Probe>,
    /// Sockets of finished checks (and their ports), to remove once the
    /// stack has sent their reset.
    retire: Vec<(SocketHandle, u16)>,
}

/// What a round of checks did, for the counters.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Outcome {
    pub passed: u64,
    pub failed: u64,
    pub went_down: u64,
    pub came_up: u64,
}

impl Checker {
    pub(super) fn new(cfg: HealthConfig, now: Instant) -> Checker {
        Checker {
            cfg,
            down: false,
            passes: 0,
            fails: 0,
            next: now,
            probe: None,
            retire: Vec::new(),
        }
    }

    /// Takes the settings of a changed configuration, keeping the state.
    pub(super) fn reconfigure(&mut self, cfg: HealthConfig) {
        self.cfg = cfg;
    }

    /// Its settings.
    pub(super) fn config(&self) -> HealthConfig {
        self.cfg.clone()
    }

    /// Its sockets and their ports (it is dropped without a context).
    pub(super) fn into_sockets(mut self) -> Vec<(SocketHandle, u16)> {
        if let Some(p) = self.probe.take() {
            self.retire.push((p.sock, p.port));
        }
        self.retire
    }

    /// Removes the sockets of finished checks.
    pub(super) fn bury(&mut self, cx: &mut SocketContext<'_>, ports: &mut LocalPorts) {
        for (sock, port) in self.retire.drain(..) {
            cx.remove_socket(sock);
            ports.give_back(port);
        }
    }

    /// Removes every socket (the function is detached).
    pub(super) fn close(&mut self, cx: &mut SocketContext<'_>, ports: &mut LocalPorts) {
        if let Some(p) = self.probe.take() {
            self.retire.push((p.sock, p.port));
        }
        self.bury(cx, ports);
    }

    /// When it next needs a look.
    pub(super) fn poll_at(&self) -> Instant {
        if !self.retire.is_empty() {
            return Instant::ZERO;
        }
        self.probe.as_ref().map_or(self.next, |p| p.deadline)
    }

    /// Moves the check of upstream `ep` on; what came of it.
    pub(super) fn poll(
        &mut self,
        cx: &mut SocketContext<'_>,
        ports: &mut LocalPorts,
        ep: smoltcp::wire::IpEndpoint,
        out: &mut Outcome,
    ) {
        let now = cx.now;
        if self.probe.is_none() {
            if now < self.next {
                return;
            }
            self.next = now + self.cfg.interval.0;
            let Some(port) = ports.take() else { return };
            let sock = cx.add_tcp(Some(4096));
            if cx
                .sockets
                .get_mut::<tcp::Socket>(sock)
                .connect(cx.iface.context(), ep, port)
                .is_err()
            {
                cx.remove_socket(sock);
                ports.give_back(port);
                self.judge(false, out);
                return;
            }
            self.probe = Some(Probe {
                sock,
                port,
                sent: false,
                buf: Vec::new(),
                deadline: now + self.cfg.timeout.0,
            });
        }
        let Some(p) = self.probe.as_mut() else { return };
        let s = cx.sockets.get_mut::<tcp::Socket>(p.sock);
        if !p.sent && s.may_send() {
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: shmnet-health\r\nConnection: close\r\n\r\n",
                self.cfg.path, ep
            );
            p.sent = s.send_slice(req.as_bytes()) == Ok(req.len());
        }
        while p.buf.len() < 4096 {
            let mut chunk = [0u8; 1024];
            match s.recv_slice(&mut chunk) {
                Ok(n) if n > 0 => p.buf.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        let verdict = match ResponseHead::parse(&p.buf, Method::Get, &Limits::default()) {
            Ok(Some((head, _))) => Some(head.status() == self.cfg.status),
            Err(_) => Some(false),
            Ok(None) if now >= p.deadline || s.state() == tcp::State::Closed => Some(false),
            Ok(None) => None,
        };
        if let Some(ok) = verdict {
            s.abort();
            // The reset goes out with the stack's next round; the socket
            // stays until the next check.
            let p = self.probe.take().expect("checked above");
            self.retire.push((p.sock, p.port));
            self.judge(ok, out);
        }
    }

    fn judge(&mut self, ok: bool, out: &mut Outcome) {
        if ok {
            out.passed += 1;
            self.fails = 0;
            self.passes += 1;
            if self.down && self.passes >= self.cfg.rise {
                self.down = false;
                out.came_up += 1;
            }
        } else {
            out.failed += 1;
            self.passes = 0;
            self.fails += 1;
            if !self.down && self.fails >= self.cfg.fall {
                self.down = true;
                out.went_down += 1;
            }
        }
    }
}
