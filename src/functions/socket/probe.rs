//! The probe: runs TCP and UDP exchanges against echo servers
//! ([`super::echo`]), one after another, checks that every byte comes back
//! intact and reports each exchange (or, with `expect_blocked`, that a
//! firewall blocked it). One-way TCP exchanges (`send`) stream to a sink
//! ([`super::sink`]) and check its receipt.
//!
//! ```
//! use shmnet::functions::{build, FunctionConfig};
//! let text = "kind = \"probe\"\ntcp = [\"10.0.0.2:7\"]\nbytes = 65536\ntimeout = \"5s\"";
//! let cfg: FunctionConfig = toml::from_str(text).unwrap();
//! let probe = build(&cfg).unwrap();
//! assert!(!probe.finished());
//! ```

use std::net::SocketAddr;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::sink::RECEIPT_LEN;
use super::{Function, FunctionError, FunctionKind, SocketContext, udp_socket};
use crate::functions::matching::{ConfigDuration, quoted};

/// An exchange's `timeout` when the config leaves it out.
const DEFAULT_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(10);
/// What `timeout` may be.
const TIMEOUTS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(3600);

/// `[function] kind = "probe"`; a field left out takes its value from
/// [`ProbeConfig::default`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Echo servers to stream `bytes` to over TCP, as "ip:port".
    pub tcp: Vec<String>,
    /// Echo servers to send `datagrams` UDP datagrams to.
    pub udp: Vec<String>,
    /// Sinks ([`super::sink`]) to stream `bytes` to one way, as "ip:port":
    /// the probe half-closes and checks the sink's receipt.
    pub send: Vec<String>,
    /// Give up on one exchange after this long (`"10s"`, 1ms..=1h).
    pub timeout: ConfigDuration,
    /// Deprecated: `timeout` in milliseconds, the spelling from before
    /// durations were typed. Still read (a config gives one of the two);
    /// never written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Bytes per TCP exchange.
    pub bytes: usize,
    /// Datagrams per UDP exchange.
    pub datagrams: usize,
    /// The exchanges are expected to fail (a firewall should block them):
    /// no answer counts as success, an answer as failure.
    pub expect_blocked: bool,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            tcp: Vec::new(),
            udp: Vec::new(),
            send: Vec::new(),
            bytes: 1 << 20,
            datagrams: 4,
            timeout: DEFAULT_TIMEOUT,
            timeout_ms: None,
            expect_blocked: false,
        }
    }
}

/// The byte a stream carries at `offset`: a pattern that catches
/// reordering, duplication and loss.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(7).wrapping_add(offset >> 13) % 251) as u8
}

/// The pattern runs in blocks of this many bytes: within one, each byte is
/// 7 more (modulo 251) than the one before.
const PATTERN_BLOCK: usize = 8192;
/// (7·k) mod 251 for every k a block can reach: any stretch of the pattern
/// within one block is a slice of this table, so filling and checking a
/// stream are copies and comparisons, not a division per byte (which held
/// a benchmark's sender and sink to about 2 Gbit/s).
static PATTERN_STEPS: [u8; 251 + PATTERN_BLOCK] = {
    let mut t = [0u8; 251 + PATTERN_BLOCK];
    let mut k = 0;
    while k < t.len() {
        t[k] = ((7 * k) % 251) as u8;
        k += 1;
    }
    t
};

/// The pattern from `offset` on, to the end of its block or `len` bytes,
/// whichever is shorter.
fn pattern_run(offset: u64, len: usize) -> &'static [u8] {
    let m = offset / PATTERN_BLOCK as u64;
    let j = (offset % PATTERN_BLOCK as u64) as usize;
    // Byte o0 + j is (7·(o0 + j) + m) mod 251 = 7·(s + j) mod 251 with
    // s = o0 + 36·m (36 is 7's inverse modulo 251).
    let s = ((offset - j as u64) % 251 + 36 * (m % 251)) % 251;
    let start = s as usize + j;
    &PATTERN_STEPS[start..start + len.min(PATTERN_BLOCK - j)]
}

/// Writes the pattern ([`pattern_byte`]) from `offset` on into `dst`.
pub fn pattern_fill(offset: u64, dst: &mut [u8]) {
    let mut done = 0;
    while done < dst.len() {
        let run = pattern_run(offset + done as u64, dst.len() - done);
        dst[done..done + run.len()].copy_from_slice(run);
        done += run.len();
    }
}

/// Whether `src` is the pattern ([`pattern_byte`]) from `offset` on.
pub fn pattern_matches(offset: u64, src: &[u8]) -> bool {
    let mut done = 0;
    while done < src.len() {
        let run = pattern_run(offset + done as u64, src.len() - done);
        if src[done..done + run.len()] != *run {
            return false;
        }
        done += run.len();
    }
    true
}

enum Job {
    Tcp(IpEndpoint),
    Udp(IpEndpoint),
    Send(IpEndpoint),
}

/// A TCP exchange under way: bytes sent and echoed back (or, one way, the
/// receipt's bytes), and whether every echoed byte was the one sent.
struct TcpExchange {
    h: SocketHandle,
    sent: u64,
    recvd: u64,
    intact: bool,
    /// The sink's receipt as far as it came (one-way exchanges).
    receipt: Vec<u8>,
}

/// A UDP exchange under way: datagrams sent and echoed intact.
struct UdpExchange {
    h: SocketHandle,
    sent: usize,
    got: usize,
    last_send: Instant,
}

enum Step {
    Start,
    Tcp(TcpExchange),
    Udp(UdpExchange),
}

/// Runs exchanges against echo servers, one after another, and reports.
pub struct Probe {
    /// The config as applied: `timeout` holds the deprecated `timeout_ms`
    /// if that was given.
    cfg: ProbeConfig,
    jobs: Vec<Job>,
    next: usize,
    step: Step,
    started: Instant,
    report: Vec<String>,
    failures: u64,
    scratch: Vec<u8>,
    port: u16,
    /// Finished TCP sockets still closing, with when they were closed.
    closing: Vec<(SocketHandle, Instant)>,
}

/// A config error of the probe.
fn invalid(why: String) -> FunctionError {
    crate::functions::common::invalid("probe")(why)
}

fn parse_endpoint(s: &str) -> Result<IpEndpoint, FunctionError> {
    let a: SocketAddr = s
        .parse()
        .map_err(|_| invalid(format!("{} is not ip:port", quoted(s))))?;
    Ok(IpEndpoint::new(IpAddress::from(a.ip()), a.port()))
}

impl ProbeConfig {
    /// How long one exchange may take: `timeout`, or the deprecated
    /// `timeout_ms` in its place.
    fn timeout(&self) -> Result<ConfigDuration, FunctionError> {
        match self.timeout_ms {
            None => Ok(self.timeout),
            Some(_) if self.timeout != DEFAULT_TIMEOUT => Err(invalid(
                "timeout_ms is the old spelling of timeout: give one of them".into(),
            )),
            Some(ms) => {
                // Saturating: an absurd value fails the bounds check, it
                // does not overflow.
                let timeout = ConfigDuration(Duration::from_micros(ms.saturating_mul(1000)));
                log::warn!("probe: timeout_ms is deprecated, write timeout = \"{timeout}\"");
                Ok(timeout)
            }
        }
    }
}

impl Probe {
    /// The probe for `cfg`; errors on a bad target, no target at all, or a
    /// `timeout` outside 1ms..=1h.
    pub fn new(mut cfg: ProbeConfig) -> Result<Probe, FunctionError> {
        let mut jobs = Vec::new();
        for t in &cfg.tcp {
            jobs.push(Job::Tcp(parse_endpoint(t)?));
        }
        for t in &cfg.udp {
            jobs.push(Job::Udp(parse_endpoint(t)?));
        }
        for t in &cfg.send {
            jobs.push(Job::Send(parse_endpoint(t)?));
        }
        if jobs.is_empty() {
            return Err(invalid("give at least one tcp, udp or send target".into()));
        }
        cfg.timeout = cfg.timeout()?;
        cfg.timeout_ms = None;
        cfg.timeout.within("timeout", TIMEOUTS).map_err(invalid)?;
        Ok(Probe {
            cfg,
            jobs,
            next: 0,
            step: Step::Start,
            started: Instant::ZERO,
            report: Vec::new(),
            failures: 0,
            scratch: vec![0; 64 * 1024],
            port: 40000,
            closing: Vec::new(),
        })
    }

    fn finish(&mut self, cx: &mut SocketContext<'_>, mut line: String, mut ok: bool) {
        if self.cfg.expect_blocked && ok && !line.contains("as expected") {
            // It got through although it should have been blocked.
            line.push_str(" — NOT BLOCKED, expected a block");
            ok = false;
        }
        match std::mem::replace(&mut self.step, Step::Start) {
            Step::Tcp(TcpExchange { h, .. }) => {
                // Close gracefully so the server's connection ends too; the
                // socket is removed once the FIN exchange is over.
                cx.sockets.get_mut::<tcp::Socket>(h).close();
                self.closing.push((h, cx.now));
            }
            Step::Udp(UdpExchange { h, .. }) => {
                cx.sockets.remove(h);
            }
            Step::Start => {}
        }
        if !ok {
            self.failures += 1;
        }
        self.report.push(line);
        self.next += 1;
    }
}

/// Queues the pattern from `*sent` on, up to `total` bytes, as far as
/// `s`'s send buffer has room; returns whether it queued any.
fn send_pattern(s: &mut tcp::Socket<'_>, sent: &mut u64, total: u64) -> bool {
    let mut queued = false;
    while s.can_send() && *sent < total {
        let from = *sent;
        let n = s
            .send(|buf| {
                let n = buf.len().min((total - from) as usize);
                pattern_fill(from, &mut buf[..n]);
                (n, n)
            })
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        *sent += n as u64;
        queued = true;
    }
    queued
}

/// Checks what came back of an echo exchange; its report line and
/// success once all of it has.
fn echo_step(
    s: &mut tcp::Socket<'_>,
    x: &mut TcpExchange,
    scratch: &mut [u8],
    progress: &mut bool,
    ep: IpEndpoint,
    total: u64,
    secs: f64,
) -> Option<(String, bool)> {
    while s.can_recv() {
        let n = s.recv_slice(scratch).unwrap_or(0);
        if n == 0 {
            break;
        }
        x.intact &= pattern_matches(x.recvd, &scratch[..n]);
        x.recvd += n as u64;
        *progress = true;
    }
    if x.recvd < total {
        return None;
    }
    s.close();
    let ok = x.intact;
    let line = format!(
        "tcp {ep}: {total} bytes echoed {} in {:.1} ms ({:.2} Gbit/s both ways)",
        if ok { "intact" } else { "CORRUPTED" },
        secs * 1e3,
        2.0 * total as f64 * 8.0 / secs / 1e9
    );
    Some((line, ok))
}

/// Half-closes a one-way exchange once everything is queued and reads
/// the sink's receipt; the report line and success once it is in.
fn one_way_step(
    s: &mut tcp::Socket<'_>,
    x: &mut TcpExchange,
    progress: &mut bool,
    ep: IpEndpoint,
    total: u64,
    secs: f64,
) -> Option<(String, bool)> {
    if x.sent == total && s.may_send() {
        // Half-close: the sink answers the FIN.
        s.close();
    }
    while x.receipt.len() < RECEIPT_LEN {
        let mut part = [0u8; RECEIPT_LEN];
        let want = RECEIPT_LEN - x.receipt.len();
        match s.recv_slice(&mut part[..want]) {
            Ok(n) if n > 0 => x.receipt.extend_from_slice(&part[..n]),
            _ => break,
        }
        *progress = true;
    }
    if x.receipt.len() < RECEIPT_LEN {
        return None;
    }
    let count = u64::from_be_bytes(x.receipt[..8].try_into().unwrap_or_default());
    let ok = count == total && x.receipt[8] == 1;
    let line = if ok {
        format!(
            "tcp {ep}: {total} bytes delivered intact in {:.1} ms ({:.1} Mbit/s one way)",
            secs * 1e3,
            total as f64 * 8.0 / secs / 1e6
        )
    } else {
        format!(
            "tcp {ep}: the sink received {count} of {total} bytes{}",
            if x.receipt[8] == 1 { "" } else { ", CORRUPTED" }
        )
    };
    Some((line, ok))
}

/// The report line of an exchange that timed out, and whether that is a
/// success: it is when nothing came back and a block was expected;
/// otherwise the line is `failure`'s.
fn timed_out(
    cfg: &ProbeConfig,
    what: &str,
    ep: IpEndpoint,
    answered: bool,
    failure: impl FnOnce() -> String,
) -> (String, bool) {
    if cfg.expect_blocked && !answered {
        (
            format!(
                "{what} {ep}: no answer in {}: blocked, as expected",
                cfg.timeout
            ),
            true,
        )
    } else {
        (failure(), false)
    }
}

impl Function for Probe {
    fn kind(&self) -> FunctionKind {
        FunctionKind::socket("probe")
    }

    fn poll(&mut self, cx: &mut SocketContext<'_>) -> bool {
        let now = cx.now;
        let mut i = 0;
        while let Some(&(h, since)) = self.closing.get(i) {
            let s = cx.sockets.get_mut::<tcp::Socket>(h);
            if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)
                || now - since > Duration::from_secs(5)
            {
                cx.remove_socket(h);
                self.closing.swap_remove(i);
            } else {
                i += 1;
            }
        }
        if self.next >= self.jobs.len() {
            return false;
        }
        let timeout = self.cfg.timeout.0;
        if let Step::Start = self.step {
            self.started = now;
            self.port = self.port.wrapping_add(1).max(40000);
            match self.jobs[self.next] {
                Job::Tcp(ep) | Job::Send(ep) => {
                    let size = self.cfg.bytes.clamp(64 * 1024, 4 << 20).next_power_of_two();
                    let h = cx.add_tcp(Some(size));
                    let s = cx.sockets.get_mut::<tcp::Socket>(h);
                    if let Err(e) = s.connect(cx.iface.context(), ep, self.port) {
                        cx.remove_socket(h);
                        self.finish(cx, format!("tcp {ep}: cannot connect: {e}"), false);
                        return true;
                    }
                    self.step = Step::Tcp(TcpExchange {
                        h,
                        sent: 0,
                        recvd: 0,
                        intact: true,
                        receipt: Vec::new(),
                    });
                }
                Job::Udp(_) => {
                    let mut s = udp_socket(16, 64 * 1024);
                    let _ = s.bind(self.port);
                    self.step = Step::Udp(UdpExchange {
                        h: cx.sockets.add(s),
                        sent: 0,
                        got: 0,
                        last_send: now,
                    });
                }
            }
        }
        let total = self.cfg.bytes as u64;
        let elapsed = now - self.started;
        let mut progress = false;
        match (&mut self.step, &self.jobs[self.next]) {
            (Step::Tcp(x), &(Job::Tcp(ep) | Job::Send(ep))) => {
                let one_way = matches!(self.jobs[self.next], Job::Send(_));
                let s = cx.sockets.get_mut::<tcp::Socket>(x.h);
                progress |= send_pattern(s, &mut x.sent, total);
                let secs = elapsed.total_micros().max(1) as f64 / 1e6;
                let outcome = if one_way {
                    one_way_step(s, x, &mut progress, ep, total, secs)
                } else {
                    echo_step(s, x, &mut self.scratch, &mut progress, ep, total, secs)
                };
                if let Some((line, ok)) = outcome {
                    self.finish(cx, line, ok);
                    return true;
                }
                if s.state() == tcp::State::Closed && x.sent == 0 && elapsed <= timeout {
                    // Refused (the server may not be up yet): try again.
                    let _ = s.connect(cx.iface.context(), ep, self.port);
                    progress = true;
                }
                if elapsed > timeout {
                    let state = s.state();
                    let answered = if one_way {
                        !x.receipt.is_empty()
                    } else {
                        x.recvd > 0
                    };
                    let (line, ok) = timed_out(&self.cfg, "tcp", ep, answered, || {
                        if one_way {
                            format!(
                                "tcp {ep}: timed out after sending {} of {total} bytes, no receipt ({state:?})",
                                x.sent
                            )
                        } else {
                            format!(
                                "tcp {ep}: timed out after {} of {total} bytes ({state:?})",
                                x.recvd
                            )
                        }
                    });
                    self.finish(cx, line, ok);
                    return true;
                }
            }
            (Step::Udp(x), &Job::Udp(ep)) => {
                let s = cx.sockets.get_mut::<udp::Socket>(x.h);
                while let Ok((n, _)) = s.recv_slice(&mut self.scratch) {
                    if n == 64
                        && self.scratch[..64]
                            .iter()
                            .enumerate()
                            .all(|(i, b)| *b == pattern_byte(i as u64))
                    {
                        x.got += 1;
                    }
                    progress = true;
                }
                // One datagram in flight at a time; resend after 250 ms
                // (the first may wait on ARP).
                let want = self.cfg.datagrams;
                if x.got >= want {
                    let line = format!(
                        "udp {ep}: {}/{want} datagrams echoed intact in {:.1} ms",
                        x.got,
                        elapsed.total_micros() as f64 / 1e3
                    );
                    self.finish(cx, line, true);
                    return true;
                }
                if x.sent <= x.got || now - x.last_send > Duration::from_millis(250) {
                    let payload: [u8; 64] = std::array::from_fn(|i| pattern_byte(i as u64));
                    if s.send_slice(&payload, ep).is_ok() {
                        x.sent = x.got + 1;
                        x.last_send = now;
                        progress = true;
                    }
                }
                if elapsed > timeout {
                    let (line, ok) = timed_out(&self.cfg, "udp", ep, x.got > 0, || {
                        format!("udp {ep}: timed out, {}/{want} datagrams echoed", x.got)
                    });
                    self.finish(cx, line, ok);
                    return true;
                }
            }
            _ => {}
        }
        progress
    }

    fn poll_at(&self) -> Option<Instant> {
        if let Some(&(_, since)) = self.closing.first() {
            return Some(since + Duration::from_millis(100));
        }
        match &self.step {
            Step::Udp(x) => Some(x.last_send + Duration::from_millis(250)),
            Step::Tcp(_) => Some(self.started + self.cfg.timeout.0),
            Step::Start => None,
        }
    }

    fn finished(&self) -> bool {
        self.next >= self.jobs.len() && self.closing.is_empty()
    }

    fn failed(&self) -> bool {
        self.failures > 0
    }

    fn take_report(&mut self) -> Vec<String> {
        std::mem::take(&mut self.report)
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        visit("exchanges_done", self.next as u64);
        visit("exchanges_failed", self.failures);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::function::config_error;
    use crate::testing::{DeviceToml, VirtualClock, device, unique};

    /// A probe alone on its networks, expecting `target` to be blocked:
    /// its report and the virtual time it took to finish.
    fn blocked(target: &str, timeout: &str) -> (Vec<String>, Instant) {
        let (lan, wan) = (unique("lan"), unique("wan"));
        let function = format!(
            r#"{{ kind = "probe", udp = ["{target}"], expect_blocked = true, {timeout} }}"#
        );
        let s = DeviceToml::host("probe", &lan, &wan, 1)
            .function(&function)
            .settings();
        let mut probe = device(&s);
        let h = probe.handle();
        let mut clock = VirtualClock::new(Duration::from_millis(1));
        clock.run_until(&mut [&mut probe], Duration::from_secs(10), |_| h.finished());
        (h.take_report(), clock.now())
    }

    #[test]
    fn the_pattern_filled_and_checked_in_runs_is_the_pattern_byte_by_byte() {
        // Offsets around block edges, far into a stream, lengths across
        // several blocks.
        for offset in [0u64, 1, 8191, 8192, 12_345, 251 * 8192 - 3, 1 << 40] {
            for len in [0usize, 1, 250, 8191, 8193, 70_000] {
                let mut run = vec![0u8; len];
                pattern_fill(offset, &mut run);
                let bytes: Vec<u8> = (0..len as u64).map(|i| pattern_byte(offset + i)).collect();
                assert_eq!(run, bytes, "offset {offset} len {len}");
                assert!(pattern_matches(offset, &bytes));
                if len > 0 {
                    let mut bad = bytes.clone();
                    bad[len - 1] ^= 1;
                    assert!(!pattern_matches(offset, &bad), "offset {offset} len {len}");
                    assert!(!pattern_matches(offset + 1, &bytes) || len == 0);
                }
            }
        }
    }

    #[test]
    fn an_exchange_gives_up_after_the_typed_timeout_or_its_deprecated_spelling() {
        for timeout in [r#"timeout = "2s""#, "timeout_ms = 2000"] {
            let (report, took) = blocked("10.0.0.9:7", timeout);
            assert_eq!(
                report,
                ["udp 10.0.0.9:7: no answer in 2s: blocked, as expected"],
                "{timeout}"
            );
            let ms = took.total_millis();
            assert!((2000..2010).contains(&ms), "{timeout}: finished at {ms} ms");
        }
    }

    #[test]
    fn timeout_config_errors_name_the_field() {
        let err = |text: &str| config_error(&format!("udp = [\"10.0.0.2:7\"]\n{text}"), Probe::new);
        let both = err("timeout = \"2s\"\ntimeout_ms = 2000");
        assert!(both.contains("give one of them"), "{both}");
        for zero in ["timeout = \"0s\"", "timeout_ms = 0"] {
            let e = err(zero);
            assert!(
                e.contains("timeout \"0us\" must be between 1ms and 1h"),
                "{e}"
            );
        }
        let huge = err(&format!("timeout_ms = {}", u64::MAX));
        assert!(huge.contains("must be between"), "{huge}");
        // The default is written with its unit; the old field never is.
        let text = toml::to_string(&ProbeConfig::default()).unwrap();
        assert!(
            text.contains("timeout = \"10s\"") && !text.contains("timeout_ms"),
            "{text}"
        );
    }
}
