//! QoS on a forwarding device in a chain: client ─lan-a─ qos ─lan-b─ server.
//! The test drives the client's and the server's TCP sockets itself and
//! measures what arrives, per flow.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shmnet::config::DeviceSettings;
use shmnet::functions::diag::{pattern_byte, tcp_socket};
use shmnet::shm::SegmentKind;
use shmnet::stack::{DeviceHandle, DeviceStats, NetDevice};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, TcpControl};

const SERVER: IpAddress = IpAddress::v4(10, 1, 0, 2);
/// TCP buffers of both ends: the sender's window, which the QoS queues
/// (8 MiB by default) hold without a drop.
const SOCKET_BUFFER: usize = 256 * 1024;

/// What the server received on one port.
#[derive(Debug, Clone, Default)]
struct Received {
    bytes: u64,
    intact: bool,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Bytes received by `window` after the first byte on any port.
    in_window: u64,
}

struct Chain {
    client: DeviceSettings,
    /// The clients' network, and the qos device's MAC on it.
    lan_a: String,
    qos_mac: [u8; 6],
    qos: (DeviceHandle, std::thread::JoinHandle<NetDevice>),
    server: DeviceHandle,
    server_thread: std::thread::JoinHandle<Vec<Received>>,
}

/// Starts the server (sinking TCP on `ports`, checking the probe pattern)
/// and the qos device with `function` (a TOML inline table).
fn chain(function: &str, ports: &[u16], window: Duration) -> Chain {
    let (lan_a, lan_b) = (unique("lanA"), unique("lanB"));
    // The chain's ends: their sockets are the test's.
    let passthrough = r#"{ kind = "passthrough" }"#;
    let client = probe_client(&lan_a, "10.0.0.1", "10.1.0.2", "10.0.0.254", 0)
        .function(passthrough)
        .settings();
    let qos = DeviceToml::new("qos", (&lan_a, "10.0.0.254/24"), (&lan_b, "10.1.0.254/24"))
        .forward()
        .function(function)
        .settings();
    let server = echo_server(&lan_b, "10.1.0.2", "10.0.0.1", "10.1.0.254")
        .function(passthrough)
        .settings();
    let mut sdev = NetDevice::new(&server, SegmentKind::InProcess).expect("server starts");
    let handles: Vec<_> = ports
        .iter()
        .map(|&p| {
            let mut s = tcp_socket(SOCKET_BUFFER);
            s.listen(p).expect("listen");
            sdev.sockets().add(s)
        })
        .collect();
    let server_handle = sdev.handle();
    let server_thread = std::thread::spawn(move || {
        let mut got = vec![
            Received {
                intact: true,
                ..Received::default()
            };
            handles.len()
        ];
        let mut start: Option<Instant> = None;
        let mut buf = vec![0u8; 64 * 1024];
        sdev.run_until(|d| {
            let now = Instant::now();
            for (i, &h) in handles.iter().enumerate() {
                let s = d.sockets().get_mut::<tcp::Socket>(h);
                while let Ok(n) = s.recv_slice(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let r = &mut got[i];
                    for (k, b) in buf[..n].iter().enumerate() {
                        r.intact &= *b == pattern_byte(r.bytes + k as u64);
                    }
                    r.bytes += n as u64;
                    r.first.get_or_insert(now);
                    r.last = Some(now);
                    let t0 = *start.get_or_insert(now);
                    if now - t0 <= window {
                        r.in_window += n as u64;
                    }
                }
                if s.state() == tcp::State::CloseWait {
                    s.close();
                }
            }
            false
        });
        got
    });
    Chain {
        client,
        lan_a,
        qos_mac: qos.mac,
        qos: spawn(&qos),
        server: server_handle,
        server_thread,
    }
}

/// The client sends the probe pattern to each of `ports` at once, `bytes`
/// on each, or until `limit` passes; returns the bytes sent per port.
fn send(client: &DeviceSettings, ports: &[u16], bytes: u64, limit: Duration) -> Vec<u64> {
    let mut dev = NetDevice::new(client, SegmentKind::InProcess).expect("client starts");
    let handles: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| tcp_connect(&mut dev, SOCKET_BUFFER, (SERVER, p), 49152 + i as u16))
        .collect();
    let mut sent = vec![0u64; ports.len()];
    let t0 = Instant::now();
    dev.run_until(|d| {
        let mut done = true;
        for (i, &h) in handles.iter().enumerate() {
            let s = d.sockets().get_mut::<tcp::Socket>(h);
            sent[i] += send_pattern(s, sent[i], bytes - sent[i]);
            done &= sent[i] == bytes && s.send_queue() == 0;
        }
        done || t0.elapsed() > limit
    });
    // Let the server see the last bytes acknowledged before hanging up.
    for &h in &handles {
        dev.sockets().get_mut::<tcp::Socket>(h).abort();
    }
    let _ = dev.poll();
    sent
}

impl Chain {
    fn finish(self) -> (Vec<Received>, DeviceStats) {
        self.server.stop();
        let got = self.server_thread.join().expect("server thread");
        let (h, t) = self.qos;
        // Function counters reach handles every 50 ms.
        std::thread::sleep(Duration::from_millis(150));
        let stats = h.stats();
        stop_all([(h, t)]);
        (got, stats)
    }
}

fn within(measured: f64, expected: f64, tolerance: f64) -> bool {
    (measured / expected - 1.0).abs() <= tolerance
}

/// A transfer through a class shaped to 40 Mbit/s takes the time the rate
/// allows: goodput within 10 % of the rate over about 3 s, and bytes
/// intact.
#[test]
fn shaped_class_holds_its_rate_and_data_arrives_intact() {
    let rate = 40e6;
    let c = chain(
        r#"{ kind = "qos", default = "rest", class = [
            { name = "limited", proto = "tcp", dport = 5001, rate = "40mbit" },
            { name = "rest" },
        ] }"#,
        &[5001],
        Duration::from_secs(60),
    );
    let bytes: u64 = 14 << 20;
    let sent = send(&c.client, &[5001], bytes, Duration::from_secs(30));
    assert_eq!(sent, [bytes]);
    // Everything acknowledged has reached the server's socket.
    std::thread::sleep(Duration::from_millis(100));
    let (got, stats) = c.finish();
    let r = &got[0];
    assert_eq!(r.bytes, bytes, "{r:?}");
    assert!(r.intact, "{r:?}");
    let secs = (r.last.unwrap() - r.first.unwrap()).as_secs_f64();
    let goodput = bytes as f64 * 8.0 / secs;
    eprintln!("goodput {:.2} Mbit/s over {secs:.2} s", goodput / 1e6);
    assert!(
        within(goodput, rate, 0.10),
        "goodput {:.2} Mbit/s over {secs:.2} s, rate 40 Mbit/s",
        goodput / 1e6
    );
    // On the wire (headers counted, as the shaper counts) it is the rate.
    let wire = counter(&stats, "class.limited.bytes") as f64 * 8.0 / secs;
    assert!(
        within(wire, rate, 0.10),
        "{:.2} Mbit/s on the wire",
        wire / 1e6
    );
    assert!(counter(&stats, "class.limited.packets") > 9000, "{stats:?}");
    assert_eq!(counter(&stats, "class.limited.dropped"), 0, "{stats:?}");
    assert_eq!(counter(&stats, "malformed"), 0, "{stats:?}");
    // The ACKs came back through the default class (how many depends on
    // how often the server's stack ran: a loaded machine coalesces them).
    assert!(counter(&stats, "class.rest.packets") > 100, "{stats:?}");
}

/// Two flows share a 32 Mbit/s link: the high-priority class (shaped to
/// 24 Mbit/s so it cannot starve the other) gets its 24, the low-priority
/// one the remaining 8. A FIFO would split the link evenly.
#[test]
fn high_priority_flow_gets_its_share_of_a_shaped_link() {
    let window = Duration::from_secs(3);
    let c = chain(
        r#"{ kind = "qos", default = "low", rate = "32mbit", class = [
            { name = "high", priority = 0, proto = "tcp", dport = 5001, rate = "24mbit" },
            { name = "low", priority = 1 },
        ] }"#,
        &[5001, 5002],
        window,
    );
    send(
        &c.client,
        &[5001, 5002],
        u64::MAX,
        window + Duration::from_millis(500),
    );
    let (got, stats) = c.finish();
    let (high, low) = (&got[0], &got[1]);
    assert!(high.intact && low.intact, "{got:?}");
    let mbit = |r: &Received| r.in_window as f64 * 8.0 / window.as_secs_f64() / 1e6;
    let (h, l) = (mbit(high), mbit(low));
    eprintln!("high {h:.2} Mbit/s, low {l:.2} Mbit/s");
    // Goodput: about 95 % of the wire rate with 1500-byte frames.
    assert!(
        within(h, 24.0 * 0.95, 0.12),
        "high {h:.2} low {l:.2} Mbit/s"
    );
    assert!(within(l, 8.0 * 0.95, 0.35), "high {h:.2} low {l:.2} Mbit/s");
    assert!(h > 2.2 * l, "high {h:.2} low {l:.2} Mbit/s");
    assert_eq!(counter(&stats, "dropped"), 0, "{stats:?}");
}

/// Rates change in place while a transfer is queued: the class goes from
/// 8 to 80 Mbit/s in the middle of it, no frame is lost, the data arrives
/// intact, and the rest of the transfer runs at the new rate.
#[test]
fn reconfigured_rate_applies_in_place_without_losing_queued_frames() {
    let text = |rate: &str| {
        format!(
            r#"{{ kind = "qos", default = "bulk", class = [{{ name = "bulk", rate = "{rate}", weight = 2 }}] }}"#
        )
    };
    let c = chain(&text("8mbit"), &[5001], Duration::from_secs(60));
    let faster = DeviceToml::new("x", ("x", "10.9.0.1/24"), ("y", "10.9.1.1/24"))
        .function(text("80mbit"))
        .settings()
        .function;
    let qos = c.qos.0.clone();
    let switch = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        // The sender's 256 KiB window sits in the queue at 8 Mbit/s.
        let queued = qos.stats().function_counter("class.bulk.queued_bytes");
        let applied = qos
            .reconfigure(faster)
            .expect("valid config")
            .wait(Duration::from_secs(10));
        assert_eq!(applied.expect("applied"), shmnet::stack::Applied::InPlace);
        queued
    });
    let bytes: u64 = 8 << 20;
    let sent = send(&c.client, &[5001], bytes, Duration::from_secs(30));
    let queued_at_switch = switch.join().expect("switch thread");
    std::thread::sleep(Duration::from_millis(100));
    let (got, stats) = c.finish();
    assert_eq!(sent, [bytes]);
    let r = &got[0];
    assert!(r.intact && r.bytes == bytes, "{r:?}");
    assert!(
        queued_at_switch.unwrap_or(0) > 100_000,
        "{queued_at_switch:?}"
    );
    // Nothing lost in the switch, and the queue kept its counters.
    assert_eq!(counter(&stats, "dropped"), 0, "{stats:?}");
    assert_eq!(counter(&stats, "discarded"), 0, "{stats:?}");
    assert!(counter(&stats, "class.bulk.packets") > 5000, "{stats:?}");
    // About 1 MB in the first second at 8 Mbit/s; the remaining ~7.4 MB at
    // 80 Mbit/s take under a second more.
    let secs = (r.last.unwrap() - r.first.unwrap()).as_secs_f64();
    assert!(secs < 2.5, "took {secs:.2} s: the new rate did not apply");
}

/// Truncated and garbled IP frames sent to the qos device are counted as
/// malformed and dropped; the device keeps shaping a transfer intact.
#[test]
fn malformed_frames_are_counted_and_the_device_keeps_working() {
    let c = chain(
        r#"{ kind = "qos", default = "bulk", class = [{ name = "bulk", rate = "40mbit" }] }"#,
        &[5001],
        Duration::from_secs(60),
    );
    let mut raw = raw_port(&c.lan_a);
    let qos_port = raw.peer_with_mac(c.qos_mac);
    // A well-formed IPv4/TCP frame and an IPv6/UDP one to the server, cut
    // short at every length inside their IP and transport headers.
    let v4 = frames::tcp(
        (IpAddress::v4(10, 0, 0, 1), 40000),
        (SERVER, 5001),
        TcpControl::None,
        true,
        &[0; 8],
    );
    let v6 = frames::udp(
        (IpAddress::v6(0xfd00, 0, 0, 0, 0, 0, 0, 1), 40000),
        (IpAddress::v6(0xfd00, 1, 0, 0, 0, 0, 0, 2), 5001),
        &[],
    );
    let mut sent = 0u64;
    for (frame, ip_end) in [(&v4, 14 + 40), (&v6, 14 + 48)] {
        for len in 14..ip_end {
            let mut f = frame[..len].to_vec();
            f[..6].copy_from_slice(&c.qos_mac);
            raw.send(&f, &[qos_port]);
            sent += 1;
        }
    }
    drop(raw);
    let bytes = 2 << 20;
    assert_eq!(
        send(&c.client, &[5001], bytes, Duration::from_secs(30)),
        [bytes]
    );
    std::thread::sleep(Duration::from_millis(100));
    let (got, stats) = c.finish();
    assert!(got[0].intact && got[0].bytes == bytes, "{got:?}");
    assert_eq!(counter(&stats, "malformed"), sent, "{stats:?}");
    assert_eq!(counter(&stats, "class.bulk.dropped"), 0, "{stats:?}");
}
