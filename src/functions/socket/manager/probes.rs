//! Active probes: ICMP echo, TCP connect, HTTP GET and memcached
//! `version`, sent from the manager's own stack at an interval (or a set
//! number of times, on demand), with reachability, loss and round-trip
//! statistics for metrics, the API and the policy engine.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use smoltcp::iface::SocketHandle;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::{icmp, tcp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress, IpEndpoint};

use crate::functions::SocketContext;
use crate::functions::matching::ConfigDuration;
use crate::functions::socket::http::codec::{Limits, Method, ResponseHead};
use crate::functions::socket::{LocalPorts, Retired};

/// Upper bounds (ms) of the round-trip histogram's buckets (and +Inf).
pub const RTT_BUCKETS_MS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 50.0, 250.0, 1000.0];
/// Attempts the recent-loss window covers.
const RECENT: usize = 100;

/// How a probe checks its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// ICMP echo (IPv4).
    Icmp,
    /// A TCP connection is accepted.
    #[default]
    Tcp,
    /// `GET path` answers with the expected status.
    Http,
    /// memcached's `version` answers `VERSION …`.
    Memcached,
}

/// `[[function.probes]]`: a probe the manager runs continuously.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Its name in metrics and policies (`probe:NAME.up`).
    pub name: String,
    /// What it checks.
    #[serde(default)]
    pub kind: ProbeKind,
    /// `ADDR:PORT` (`ADDR` for ICMP).
    pub target: String,
    /// Time between attempts (default 1 s).
    #[serde(default = "one_second")]
    pub interval: ConfigDuration,
    /// An attempt without an answer this long fails (default 1 s).
    #[serde(default = "one_second")]
    pub timeout: ConfigDuration,
    /// HTTP: the path asked for (default `/`).
    pub path: Option<String>,
    /// HTTP: the status that counts as success (default: any 2xx or 3xx).
    pub expect_status: Option<u16>,
}

fn one_second() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}

/// A probe's results so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeStats {
    /// Attempts made.
    pub sent: u64,
    /// Attempts that succeeded.
    pub received: u64,
    /// Whether the last attempt succeeded.
    pub up: bool,
    /// Failures in a row.
    pub failing: u64,
    /// Round trips (ms): smallest, mean, largest, last.
    pub rtt_min_ms: f64,
    /// See `rtt_min_ms`.
    pub rtt_avg_ms: f64,
    /// See `rtt_min_ms`.
    pub rtt_max_ms: f64,
    /// See `rtt_min_ms`.
    pub rtt_last_ms: f64,
    /// Sum of round trips (ms), for the histogram.
    pub rtt_sum_ms: f64,
    /// Successes by [`RTT_BUCKETS_MS`] bucket, the last one +Inf
    /// (not cumulative).
    pub buckets: [u64; RTT_BUCKETS_MS.len() + 1],
    /// Loss over the last 100 attempts (0..=1).
    pub recent_loss: f64,
    /// Why the last failure failed.
    pub last_error: Option<String>,
    #[serde(skip)]
    recent: VecDeque<bool>,
}

impl ProbeStats {
    fn record(&mut self, ok: Result<Duration, String>) {
        self.sent += 1;
        let good = ok.is_ok();
        match ok {
            Ok(rtt) => {
                let ms = rtt.total_micros() as f64 / 1000.0;
                self.received += 1;
                self.up = true;
                self.failing = 0;
                self.rtt_min_ms = if self.received == 1 {
                    ms
                } else {
                    self.rtt_min_ms.min(ms)
                };
                self.rtt_max_ms = self.rtt_max_ms.max(ms);
                self.rtt_sum_ms += ms;
                self.rtt_avg_ms = self.rtt_sum_ms / self.received as f64;
                self.rtt_last_ms = ms;
                let i = RTT_BUCKETS_MS
                    .iter()
                    .position(|&b| ms <= b)
                    .unwrap_or(RTT_BUCKETS_MS.len());
                self.buckets[i] += 1;
            }
            Err(e) => {
                self.up = false;
                self.failing += 1;
                self.last_error = Some(e);
            }
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(good);
        let lost = self.recent.iter().filter(|g| !**g).count();
        self.recent_loss = lost as f64 / self.recent.len() as f64;
    }

    /// Loss over all attempts (0..=1).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            (self.sent - self.received) as f64 / self.sent as f64
        }
    }
}

/// An attempt under way.
enum Attempt {
    Idle,
    Icmp {
        seq: u16,
        started: Instant,
    },
    Tcp {
        h: SocketHandle,
        started: Instant,
        state: Stage,
    },
}

#[derive(PartialEq, Eq)]
enum Stage {
    Connecting,
    /// Request sent; reading the answer.
    Asked(Vec<u8>),
}

/// One probe: its configuration, statistics and attempt in flight.
pub struct Probe {
    /// Configuration.
    pub cfg: ProbeConfig,
    target: IpEndpoint,
    /// Results.
    pub stats: ProbeStats,
    /// Attempts left (on-demand probes); `None`: forever.
    pub remaining: Option<u64>,
    attempt: Attempt,
    next: Instant,
    icmp: Option<SocketHandle>,
    ident: u16,
}

/// Parses `ADDR:PORT` (or `ADDR` for ICMP).
pub fn parse_target(kind: ProbeKind, target: &str) -> Result<IpEndpoint, String> {
    let bad = || format!("target {target:?}: expected ADDR:PORT (ADDR for icmp)");
    if kind == ProbeKind::Icmp {
        let a: std::net::IpAddr = target.parse().map_err(|_| bad())?;
        return Ok(IpEndpoint::new(a.into(), 0));
    }
    let sa: std::net::SocketAddr = target.parse().map_err(|_| bad())?;
    Ok(IpEndpoint::new(sa.ip().into(), sa.port()))
}

impl Probe {
    /// A probe from its configuration; `ident` tells its ICMP echoes apart.
    pub fn new(cfg: ProbeConfig, ident: u16) -> Result<Probe, String> {
        let target = parse_target(cfg.kind, &cfg.target)?;
        if cfg.kind == ProbeKind::Icmp && !matches!(target.addr, IpAddress::Ipv4(_)) {
            return Err("icmp probes are IPv4 only".into());
        }
        Ok(Probe {
            cfg,
            target,
            stats: ProbeStats::default(),
            remaining: None,
            attempt: Attempt::Idle,
            next: Instant::ZERO,
            icmp: None,
            ident,
        })
    }

    /// Makes the first attempt due at `now` (the device's clock).
    pub fn reset_schedule(&mut self, now: Instant) {
        self.next = now;
    }

    /// Whether an on-demand probe has made all its attempts.
    pub fn done(&self) -> bool {
        self.remaining == Some(0) && matches!(self.attempt, Attempt::Idle)
    }

    /// When the probe next needs the device.
    pub fn poll_at(&self) -> Instant {
        match &self.attempt {
            Attempt::Idle => self.next,
            Attempt::Icmp { started, .. } | Attempt::Tcp { started, .. } => {
                *started + self.cfg.timeout.0
            }
        }
    }

    /// Advances the probe; returns whether it did anything.
    pub(crate) fn poll(
        &mut self,
        cx: &mut SocketContext<'_>,
        ports: &mut LocalPorts,
        retired: &mut Retired,
    ) -> bool {
        let now = cx.now;
        let mut worked = false;
        let mut attempt = std::mem::replace(&mut self.attempt, Attempt::Idle);
        let result = match &mut attempt {
            Attempt::Idle => None,
            Attempt::Icmp { seq, started } => {
                let (seq, started) = (*seq, *started);
                let mut got = false;
                if let Some(h) = self.icmp {
                    let s = cx.sockets.get_mut::<icmp::Socket>(h);
                    let mut buf = [0u8; 64];
                    while let Ok((n, from)) = s.recv_slice(&mut buf) {
                        got |= from == self.target.addr
                            && echo_reply(&buf[..n], self.ident) == Some(seq);
                    }
                }
                if got {
                    Some(Ok(now - started))
                } else if now - started >= self.cfg.timeout.0 {
                    Some(Err("no echo reply".to_string()))
                } else {
                    None
                }
            }
            Attempt::Tcp { h, started, state } => {
                let (h, started) = (*h, *started);
                let r = self.step_tcp(cx, h, started, state);
                if r.is_some() {
                    retired.retire(cx, h, false);
                }
                r
            }
        };
        if result.is_none() {
            self.attempt = attempt;
        }
        if let Some(r) = result {
            self.stats.record(r);
            self.attempt = Attempt::Idle;
            worked = true;
        }
        if matches!(self.attempt, Attempt::Idle) && now >= self.next && self.remaining != Some(0) {
            if let Some(n) = &mut self.remaining {
                *n -= 1;
            }
            self.next = now + self.cfg.interval.0;
            if let Err(e) = self.start(cx, ports) {
                self.stats.record(Err(e));
            }
            worked = true;
        }
        worked
    }

    fn start(&mut self, cx: &mut SocketContext<'_>, ports: &mut LocalPorts) -> Result<(), String> {
        let now = cx.now;
        if self.cfg.kind == ProbeKind::Icmp {
            let h = match self.icmp {
                Some(h) => h,
                None => {
                    let buf = || {
                        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 1024])
                    };
                    let mut s = icmp::Socket::new(buf(), buf());
                    s.bind(icmp::Endpoint::Ident(self.ident))
                        .map_err(|e| format!("icmp socket: {e}"))?;
                    let h = cx.sockets.add(s);
                    self.icmp = Some(h);
                    h
                }
            };
            let seq = (self.stats.sent as u16).wrapping_add(1);
            let repr = Icmpv4Repr::EchoRequest {
                ident: self.ident,
                seq_no: seq,
                data: b"shmnet-probe",
            };
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(
                &mut Icmpv4Packet::new_unchecked(&mut buf),
                &ChecksumCapabilities::default(),
            );
            cx.sockets
                .get_mut::<icmp::Socket>(h)
                .send_slice(&buf, self.target.addr)
                .map_err(|e| format!("icmp send: {e}"))?;
            self.attempt = Attempt::Icmp { seq, started: now };
            return Ok(());
        }
        let local = ports.take().ok_or("no free local port")?;
        let h = cx.add_tcp(Some(16 << 10));
        let (iface, sockets) = (&mut *cx.iface, &mut *cx.sockets);
        if let Err(e) =
            sockets
                .get_mut::<tcp::Socket>(h)
                .connect(iface.context(), self.target, local)
        {
            ports.give_back(local);
            cx.remove_socket(h);
            return Err(format!("connect: {e}"));
        }
        self.attempt = Attempt::Tcp {
            h,
            started: now,
            state: Stage::Connecting,
        };
        Ok(())
    }

    /// One step of a TCP-based attempt: `Some` once it has a verdict.
    fn step_tcp(
        &self,
        cx: &mut SocketContext<'_>,
        h: SocketHandle,
        started: Instant,
        stage: &mut Stage,
    ) -> Option<Result<Duration, String>> {
        let now = cx.now;
        let s = cx.sockets.get_mut::<tcp::Socket>(h);
        if now - started >= self.cfg.timeout.0 {
            return Some(Err(format!(
                "no answer in {} ms",
                self.cfg.timeout.0.total_millis()
            )));
        }
        if *stage == Stage::Connecting {
            match s.state() {
                tcp::State::SynSent | tcp::State::SynReceived => return None,
                tcp::State::Established => {}
                _ => return Some(Err("connection refused".into())),
            }
            let ask = match self.cfg.kind {
                ProbeKind::Tcp | ProbeKind::Icmp => return Some(Ok(now - started)),
                ProbeKind::Http => format!(
                    "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: shmnet-manager\r\nConnection: close\r\n\r\n",
                    self.cfg.path.as_deref().unwrap_or("/"),
                    self.cfg.target
                ),
                ProbeKind::Memcached => "version\r\n".into(),
            };
            if s.send_slice(ask.as_bytes()).is_err() {
                return Some(Err("cannot send".into()));
            }
            *stage = Stage::Asked(Vec::new());
            return None;
        }
        let Stage::Asked(input) = stage else {
            return None;
        };
        while s.can_recv() {
            let _ = s.recv(|b| {
                // At most 16 KiB of answer kept.
                let n = b.len().min((16 << 10) - input.len().min(16 << 10));
                input.extend_from_slice(&b[..n]);
                (b.len(), ())
            });
        }
        let verdict = match self.cfg.kind {
            ProbeKind::Http => match ResponseHead::parse(input, Method::Get, &Limits::default()) {
                Ok(Some((head, _))) => {
                    let st = head.status();
                    let ok = match self.cfg.expect_status {
                        Some(want) => st == want,
                        None => (200..400).contains(&st),
                    };
                    Some(if ok {
                        Ok(now - started)
                    } else {
                        Err(format!("status {st}"))
                    })
                }
                Ok(None) => None,
                Err(e) => Some(Err(format!("bad response: {e}"))),
            },
            ProbeKind::Memcached => input.iter().position(|&b| b == b'\n').map(|end| {
                if input[..end].starts_with(b"VERSION ") {
                    Ok(now - started)
                } else {
                    Err(format!(
                        "answer {:?}",
                        String::from_utf8_lossy(&input[..end]).trim_end()
                    ))
                }
            }),
            _ => None,
        };
        if verdict.is_none() && !s.may_recv() {
            return Some(Err("closed before answering".into()));
        }
        verdict
    }

    /// Frees the probe's sockets.
    pub(crate) fn close(&mut self, cx: &mut SocketContext<'_>, retired: &mut Retired) {
        if let Attempt::Tcp { h, .. } = self.attempt {
            retired.retire(cx, h, true);
        }
        self.attempt = Attempt::Idle;
        if let Some(h) = self.icmp.take() {
            cx.sockets.remove(h);
        }
    }
}

/// The sequence number of an echo reply with our identifier.
fn echo_reply(msg: &[u8], ident: u16) -> Option<u16> {
    let p = Icmpv4Packet::new_checked(msg).ok()?;
    match Icmpv4Repr::parse(&p, &ChecksumCapabilities::ignored()).ok()? {
        Icmpv4Repr::EchoReply {
            ident: i, seq_no, ..
        } if i == ident => Some(seq_no),
        _ => None,
    }
}
