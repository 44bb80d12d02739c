//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use shmnet::config::{DeviceConfig, DeviceSettings};
use shmnet::shm::SegmentKind;
use shmnet::stack::{Device, DeviceHandle, DeviceStats};

/// A device on `lan`/`wan` with the given host numbers, MTUs and function
/// (a TOML inline table, e.g. `{ kind = "echo" }`).
pub fn settings(
    name: &str,
    lan: &str,
    wan: &str,
    host: u8,
    mtu: u32,
    function: &str,
) -> DeviceSettings {
    settings_mtus(name, lan, wan, host, mtu, mtu, function)
}

pub fn settings_mtus(
    name: &str,
    lan: &str,
    wan: &str,
    host: u8,
    local_mtu: u32,
    global_mtu: u32,
    function: &str,
) -> DeviceSettings {
    let v6 = if local_mtu >= 1280 {
        format!(", address6 = \"fd00:1::{host}/64\"")
    } else {
        String::new()
    };
    let g6 = if global_mtu >= 1280 {
        format!(", address6 = \"fd00:2::{host}/64\"")
    } else {
        String::new()
    };
    let text = format!(
        r#"
name = "{name}"
function = {function}
local = {{ segment = "{lan}", address = "10.0.0.{host}/24", mtu = {local_mtu}{v6} }}
global = {{ segment = "{wan}", address = "10.100.0.{host}/16", mtu = {global_mtu}{g6} }}
"#
    );
    DeviceConfig::from_toml(&text, name).expect("test config is valid")
}

/// Starts a device as a thread of this process.
pub fn spawn(s: &DeviceSettings) -> (DeviceHandle, std::thread::JoinHandle<Device>) {
    Device::new(s, SegmentKind::Process)
        .expect("device starts")
        .spawn()
}

/// Waits until `h`'s function finished; returns its report.
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

/// A unique segment-name prefix per test.
pub fn unique(tag: &str) -> String {
    format!(
        "t{}-{tag}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}
static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The function counter `name` of a device; panics (naming the counters
/// there are) if the function has none by that name.
pub fn counter(s: &DeviceStats, name: &str) -> u64 {
    s.function_counter(name)
        .unwrap_or_else(|| panic!("no counter {name}: {s:?}"))
}

/// Stops devices started with [`spawn`] and waits for their threads.
pub fn stop_all(
    devices: impl IntoIterator<Item = (DeviceHandle, std::thread::JoinHandle<Device>)>,
) {
    let devices: Vec<_> = devices.into_iter().collect();
    for (h, _) in &devices {
        h.stop();
    }
    for (_, t) in devices {
        t.join().expect("device thread ran to its end");
    }
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
/// `server` port 7, reaching the server's /24 through `gateway`.
pub fn probe_client(
    lan: &str,
    address: &str,
    server: &str,
    gateway: &str,
    bytes: u64,
) -> DeviceSettings {
    let text = format!(
        r#"
name = "client"
function = {{ kind = "probe", tcp = ["{server}:7"], udp = ["{server}:7"], bytes = {bytes} }}
local = {{ segment = "{lan}", address = "{address}/24" }}
global = {{ segment = "{g}", address = "10.100.0.1/16" }}
route = [{{ to = "{to}", via = "{gateway}" }}]
"#,
        g = unique("g"),
        to = net24(server)
    );
    DeviceConfig::from_toml(&text, "probe client").expect("test config is valid")
}

/// An echo server at `address` on `lan` that answers `client` (an address
/// of the client's /24) through `gateway`.
pub fn echo_server(lan: &str, address: &str, client: &str, gateway: &str) -> DeviceSettings {
    let text = format!(
        r#"
name = "server"
function = {{ kind = "echo" }}
local = {{ segment = "{lan}", address = "{address}/24" }}
global = {{ segment = "{g}", address = "10.200.0.2/16" }}
route = [{{ to = "{to}", via = "{gateway}" }}]
"#,
        g = unique("g"),
        to = net24(client)
    );
    DeviceConfig::from_toml(&text, "echo server").expect("test config is valid")
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

/// A raw port (no stack behind it) on a process-local network, for sending
/// hand-made frames.
pub struct RawPort {
    pub segment: std::sync::Arc<shmnet::shm::Segment>,
    pub port: shmnet::shm::Port,
    /// The ports of the devices attached so far, with their MACs.
    pub others: Vec<(shmnet::shm::Peer, [u8; 6])>,
}

/// Attaches a [`RawPort`] to the network `segment` (Ethernet, MTU 1500).
pub fn raw_port(segment: &str) -> RawPort {
    use shmnet::shm::{NetworkParams, PortInfo};
    raw_port_as(
        segment,
        &NetworkParams::new(1500),
        &PortInfo::named("vandal"),
    )
}

/// Attaches a [`RawPort`] listed as `info` to the network `segment` of
/// parameters `params`.
pub fn raw_port_as(
    segment: &str,
    params: &shmnet::shm::NetworkParams,
    info: &shmnet::shm::PortInfo,
) -> RawPort {
    use shmnet::shm::{Peer, Segment};
    let seg =
        Segment::open_or_create(segment, SegmentKind::Process, params).expect("segment opens");
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
            (peer, p.mac)
        })
        .collect();
    RawPort {
        segment: seg,
        port,
        others,
    }
}
