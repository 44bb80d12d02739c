//! Devices as threads of the test, and the waits around them: start, wait
//! for a probe's report or for a counter, stop; the two ends most chains
//! need (a probe client and an echo server); a raw port that sends
//! hand-made frames onto a network.
//!
//! Everything here is for tests: a wait that runs out, or a device that
//! does not start, panics with what it saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::DeviceToml;
use crate::config::DeviceSettings;
use crate::shm::{NetworkParams, Peer, Port, PortInfo, Segment, SegmentKind};
use crate::stack::{DeviceHandle, DeviceStats, NetDevice};

/// A device running on its own thread: its handle and the thread.
pub type Running = (DeviceHandle, JoinHandle<NetDevice>);

/// A name no other test of this process (or another process) uses, for
/// segments: `t<pid>-<tag>-<n>`.
pub fn unique(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{tag}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A device of this process (process-local segments) for the caller to
/// poll, e.g. on a [`VirtualClock`](super::VirtualClock).
pub fn device(s: &DeviceSettings) -> NetDevice {
    NetDevice::new(s, SegmentKind::InProcess).expect("device starts")
}

/// Starts a device as a thread of this process (process-local segments).
pub fn spawn(s: &DeviceSettings) -> Running {
    device(s).spawn()
}

/// Stops devices started with [`spawn`] and waits for their threads.
pub fn stop_all(devices: impl IntoIterator<Item = Running>) {
    let devices: Vec<_> = devices.into_iter().collect();
    for (h, _) in &devices {
        h.stop();
    }
    for (_, t) in devices {
        t.join().expect("device thread ran to its end");
    }
}

/// Waits until `h`'s function finished (a probe's exchanges are done);
/// returns its report.
pub fn wait_finished(h: &DeviceHandle, limit: Duration) -> Vec<String> {
    let t0 = Instant::now();
    let mut report = Vec::new();
    while !h.finished() {
        report.extend(h.take_report());
        assert!(
            t0.elapsed() < limit,
            "{} did not finish: {report:?} {:?}",
            h.name(),
            h.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    report.extend(h.take_report());
    report
}

/// Runs `client` (a device whose function finishes, such as a probe) as a
/// thread until it has, at most `limit`; returns its report and its stats
/// at that moment, and stops it.
pub fn run_to_end(client: &DeviceSettings, limit: Duration) -> (Vec<String>, DeviceStats) {
    let (h, t) = spawn(client);
    let report = wait_finished(&h, limit);
    let stats = h.stats();
    stop_all([(h, t)]);
    (report, stats)
}

/// [`run_to_end`] for a probe whose `exchanges` must all succeed: asserts
/// that its report has that many lines and each says "intact"; returns its
/// stats.
pub fn probe_intact(client: &DeviceSettings, exchanges: usize, limit: Duration) -> DeviceStats {
    let (report, stats) = run_to_end(client, limit);
    assert_eq!(report.len(), exchanges, "{report:?}");
    assert!(report.iter().all(|l| l.contains("intact")), "{report:?}");
    stats
}

/// Waits up to `limit` until `cond` holds for `h`'s stats (function
/// counters reach handles every 50 ms); returns those stats.
pub fn wait_for(
    h: &DeviceHandle,
    limit: Duration,
    what: &str,
    cond: impl Fn(&DeviceStats) -> bool,
) -> DeviceStats {
    let t0 = Instant::now();
    loop {
        let s = h.stats();
        if !s.function_counters.is_empty() && cond(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < limit,
            "{}: {what} never held: {s:?}",
            h.name()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The function counter `name` of a device; panics (naming the counters
/// there are) if the function has none by that name.
pub fn counter(s: &DeviceStats, name: &str) -> u64 {
    s.function_counter(name)
        .unwrap_or_else(|| panic!("no counter {name}: {s:?}"))
}

/// The /24 network of an IPv4 address ("10.3.0.2" → "10.3.0.0/24").
fn net24(addr: &str) -> String {
    let host = addr.split('/').next().unwrap_or(addr);
    let mut octets: Vec<&str> = host.split('.').collect();
    octets[3] = "0";
    format!("{}/24", octets.join("."))
}

/// A client at `address` (e.g. "10.0.0.1") on `lan` whose probe exchanges
/// `bytes` over TCP and four datagrams over UDP with the echo server at
/// `server` port 7, reaching the server's /24 through `gateway`. Its
/// global network is a segment of its own.
pub fn probe_client(
    lan: &str,
    address: &str,
    server: &str,
    gateway: &str,
    bytes: u64,
) -> DeviceToml {
    DeviceToml::new(
        "client",
        (lan, format!("{address}/24")),
        (unique("g"), "10.100.0.1/16"),
    )
    .function(format!(
        r#"{{ kind = "probe", tcp = ["{server}:7"], udp = ["{server}:7"], bytes = {bytes} }}"#
    ))
    .route(net24(server), gateway)
}

/// An echo server at `address` on `lan` that answers `client` (an address
/// of the client's /24) through `gateway`. Its global network is a segment
/// of its own.
pub fn echo_server(lan: &str, address: &str, client: &str, gateway: &str) -> DeviceToml {
    DeviceToml::new(
        "server",
        (lan, format!("{address}/24")),
        (unique("g"), "10.200.0.2/16"),
    )
    .function(r#"{ kind = "echo" }"#)
    .route(net24(client), gateway)
}

/// A raw port (no stack behind it) on a process-local network, for sending
/// hand-made frames.
pub struct RawPort {
    /// The network it is attached to.
    pub segment: Arc<Segment>,
    /// Its port: send and receive frames through it.
    pub port: Port,
    /// The ports of the devices attached when it joined, with their MACs.
    pub others: Vec<(Peer, [u8; 6])>,
}

/// Attaches a [`RawPort`] to the network `segment` (created with MTU 1500
/// if no device made it yet).
pub fn raw_port(segment: &str) -> RawPort {
    raw_port_as(
        segment,
        &NetworkParams::new(1500),
        &PortInfo::named("vandal"),
    )
}

/// Attaches a [`RawPort`] listed as `info` to the network `segment` of
/// parameters `params` (created if it does not exist).
pub fn raw_port_as(segment: &str, params: &NetworkParams, info: &PortInfo) -> RawPort {
    let seg =
        Segment::open_or_create(segment, SegmentKind::InProcess, params).expect("segment opens");
    let port = seg.attach(info).expect("raw port attaches");
    let others = seg
        .peers()
        .into_iter()
        .filter(|p| p.index != port.index())
        .map(|p| {
            let peer = Peer {
                index: p.index,
                epoch: p.epoch,
            };
            (peer, p.info.mac)
        })
        .collect();
    RawPort {
        segment: seg,
        port,
        others,
    }
}

impl RawPort {
    /// The ports of the other devices.
    pub fn peers(&self) -> Vec<Peer> {
        self.others.iter().map(|(p, _)| *p).collect()
    }

    /// The port of the device whose MAC is `mac`.
    pub fn peer_with_mac(&self, mac: [u8; 6]) -> Peer {
        self.others
            .iter()
            .find(|(_, m)| *m == mac)
            .map(|(p, _)| *p)
            .unwrap_or_else(|| panic!("no device with MAC {mac:02x?} on the network"))
    }

    /// Sends `frame` to the ports `to`, waiting (up to 10 s) for a buffer
    /// while the pool is empty.
    pub fn send(&mut self, frame: &[u8], to: &[Peer]) {
        let t0 = Instant::now();
        loop {
            if let Some(mut buf) = self.port.alloc() {
                self.port.buffer_mut(&mut buf)[..frame.len()].copy_from_slice(frame);
                self.port.send(buf, frame.len(), to);
                self.port.flush();
                return;
            }
            self.port.flush();
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no buffer came back to the raw port"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
