//! The L4 load balancer between a client and echo backends, all devices as
//! threads:
//!
//! ```text
//!   client 10.11.0.1 ─front─ balancer 10.11.0.254 | 10.12.0.254 ─back─ backends 10.12.0.2..
//! ```
//!
//! The client reaches the VIP 10.20.0.100 through the balancer (a static
//! route); the backends' way back to the client is the balancer too (NAT
//! mode). The test drives the client's smoltcp sockets itself.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shmnet::config::DeviceSettings;
use shmnet::functions::FunctionConfig;
use shmnet::functions::diag::pattern_byte;
use shmnet::shm::SegmentKind;
use shmnet::stack::{DeviceHandle, DeviceStats, NetDevice};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint};

const VIP: IpAddress = IpAddress::v4(10, 20, 0, 100);

fn backend_addr(i: usize) -> String {
    format!("10.12.0.{}", 2 + i)
}

/// The balancer's function: a TCP service on VIP:7 and a UDP one on
/// VIP:7, over the first `n` backends.
fn balancer_function(n: usize) -> String {
    let list = (0..n)
        .map(|i| format!("\"{}:7\"", backend_addr(i)))
        .collect::<Vec<_>>()
        .join(", ");
    // Both services over the same backends; the TCP one health-checked.
    let service = |proto: &str, table_size: u32, check: &str| {
        format!(
            r#"[[service]]
name = "echo-{proto}"
vip = "10.20.0.100:7"
proto = "{proto}"
backends = [{list}]
table_size = {table_size}
{check}"#
        )
    };
    let tcp_check = r#"check = "tcp"
interval = "200ms"
timeout = "500ms"
fall = 3
rise = 2
"#;
    format!(
        "kind = \"balancer\"\n{}{}",
        service("tcp", 65537, tcp_check),
        service("udp", 251, "")
    )
}

struct Net {
    front: String,
    back: String,
}

impl Net {
    fn new() -> Net {
        Net {
            front: unique("front"),
            back: unique("back"),
        }
    }

    fn balancer(&self, n: usize) -> DeviceSettings {
        DeviceToml::new(
            "balancer",
            (&self.front, "10.11.0.254/24"),
            (&self.back, "10.12.0.254/24"),
        )
        .forward()
        .function_table(balancer_function(n))
        .settings()
    }

    fn backend(&self, i: usize) -> DeviceSettings {
        DeviceToml::new(
            format!("backend-{i}"),
            (&self.back, format!("{}/24", backend_addr(i))),
            (unique("bw"), format!("10.{}.0.2/16", 100 + i)),
        )
        .function(r#"{ kind = "echo", connections = 40, tcp_buffer = 65536 }"#)
        .route("10.11.0.0/24", "10.12.0.254")
        .settings()
    }

    fn client(&self) -> NetDevice {
        let cfg = DeviceToml::new(
            "client",
            (&self.front, "10.11.0.1/24"),
            (unique("cw"), "10.200.0.1/16"),
        )
        .route("10.20.0.0/24", "10.11.0.254")
        .settings();
        NetDevice::new(&cfg, SegmentKind::InProcess).expect("client starts")
    }
}

/// One of the client's TCP connections to the VIP and how far its echoed
/// stream got.
struct Conn {
    h: SocketHandle,
    /// Offset of this connection's stream in the shared pattern.
    base: u64,
    sent: u64,
    recvd: u64,
}

/// Opens TCP connections from `ports` to VIP:7; waits until all are
/// established.
fn connect(dev: &mut NetDevice, ports: std::ops::Range<u16>) -> Vec<Conn> {
    let mut conns = Vec::new();
    for port in ports {
        conns.push(Conn {
            h: tcp_connect(dev, 64 * 1024, IpEndpoint::new(VIP, 7), port),
            base: u64::from(port) * 1_000_003,
            sent: 0,
            recvd: 0,
        });
    }
    let t0 = Instant::now();
    dev.run_until(|d| {
        let states: Vec<tcp::State> = conns
            .iter()
            .map(|c| d.sockets().get_mut::<tcp::Socket>(c.h).state())
            .collect();
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "connections not established: {states:?}"
        );
        states.iter().all(|s| *s == tcp::State::Established)
    });
    conns
}

/// Sends `bytes` more on every connection and checks the echo is the same
/// bytes, in order.
fn exchange(dev: &mut NetDevice, conns: &mut [Conn], bytes: u64) {
    let targets: Vec<u64> = conns.iter().map(|c| c.sent + bytes).collect();
    let t0 = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    dev.run_until(|d| {
        let mut done = true;
        for (c, &target) in conns.iter_mut().zip(&targets) {
            let s = d.sockets().get_mut::<tcp::Socket>(c.h);
            assert!(
                s.may_send(),
                "connection from port {} lost in {:?} after {} bytes",
                s.local_endpoint().map_or(0, |e| e.port),
                s.state(),
                c.recvd
            );
            c.sent += send_pattern(s, c.base + c.sent, target - c.sent);
            while s.can_recv() {
                let Ok(n) = s.recv_slice(&mut buf) else { break };
                for (i, &b) in buf[..n].iter().enumerate() {
                    assert_eq!(
                        b,
                        pattern_byte(c.base + c.recvd + i as u64),
                        "echo corrupted at byte {}",
                        c.recvd + i as u64
                    );
                }
                c.recvd += n as u64;
                if n == 0 {
                    break;
                }
            }
            done &= c.recvd == target;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "exchange timed out");
        done
    });
}

/// Closes the connections and lets the FIN exchanges run.
fn close(dev: &mut NetDevice, conns: Vec<Conn>) {
    for c in &conns {
        dev.sockets().get_mut::<tcp::Socket>(c.h).close();
    }
    let t0 = Instant::now();
    dev.run_until(|d| {
        let all = conns.iter().all(|c| {
            matches!(
                d.sockets().get_mut::<tcp::Socket>(c.h).state(),
                tcp::State::Closed | tcp::State::TimeWait
            )
        });
        all || t0.elapsed() > Duration::from_secs(2)
    });
    for c in conns {
        dev.sockets().remove(c.h);
    }
}

fn flows_of(s: &DeviceStats, i: usize) -> u64 {
    s.function_counter(&format!("backend.{}:7.flows", backend_addr(i)))
        .unwrap_or(0)
}

fn echoed(h: &DeviceHandle) -> u64 {
    h.stats().function_counter("tcp_bytes_echoed").unwrap_or(0)
}

/// Did the backend echo anything? Waits for its counters (published every
/// 50 ms) up to 5 s.
fn has_echoed(h: &DeviceHandle) -> bool {
    let t0 = Instant::now();
    while echoed(h) == 0 {
        if t0.elapsed() > Duration::from_secs(5) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Garbage and truncated IPv4 frames towards the VIP, from a raw port on
/// the client's network.
fn send_garbage(net: &Net, balancer: &DeviceSettings) {
    let mut raw = raw_port(&net.front);
    let target = [raw.peer_with_mac(balancer.mac)];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut f = [0u8; 14 + 80];
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 14 + (x % 80) as usize;
        for (i, b) in f[..len].iter_mut().enumerate() {
            *b = (x >> (i % 56)) as u8 ^ i as u8;
        }
        f[..6].copy_from_slice(&balancer.mac);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        if len >= 34 {
            // IPv4 to the VIP, TCP or UDP, with lengths that may lie.
            f[14] = 0x45;
            f[23] = if x & 1 == 0 { 6 } else { 17 };
            f[30..34].copy_from_slice(&[10, 20, 0, 100]);
            if len >= 38 {
                f[36..38].copy_from_slice(&7u16.to_be_bytes());
            }
        }
        raw.send(&f[..len], &target);
    }
}

/// (1) flows spread over three backends and their data arrives intact;
/// (2) a fourth backend added by reconfiguration: the connections opened
/// before keep their backend (more data on them arrives intact), new ones
/// reach the new backend too; (5) garbage towards the VIP changes nothing.
#[test]
fn flows_spread_and_keep_affinity_when_a_backend_is_added() {
    let net = Net::new();
    let lb_cfg = net.balancer(3);
    let mut devices: Vec<_> = (0..4).map(|i| spawn(&net.backend(i))).collect();
    let (lh, lt) = spawn(&lb_cfg);
    let mut client = net.client();

    let mut first = connect(&mut client, 41000..41030);
    exchange(&mut client, &mut first, 32 * 1024);
    let s = wait_for(&lh, Duration::from_secs(10), "flows counted", |s| {
        (0..3).map(|i| flows_of(s, i)).sum::<u64>() == 30
    });
    for (i, (h, _)) in devices.iter().enumerate().take(3) {
        assert!(flows_of(&s, i) >= 3, "backend {i} got few flows: {s:?}");
        assert!(has_echoed(h), "backend {i} echoed nothing");
    }
    assert_eq!(echoed(&devices[3].0), 0);
    assert_eq!(s.function_counter("flows_active"), Some(30));

    // Add backend 3.
    let f: FunctionConfig = toml::from_str(&balancer_function(4)).expect("function config");
    let applied = lh
        .reconfigure(f)
        .expect("valid config")
        .wait(Duration::from_secs(10));
    assert_eq!(applied.expect("applied"), shmnet::stack::Applied::InPlace);
    wait_for(
        &lh,
        Duration::from_secs(10),
        "fourth backend configured",
        |s| s.function_counter(&format!("backend.{}:7.up", backend_addr(3))) == Some(1),
    );
    // Old connections: same backends (another backend would reset them).
    exchange(&mut client, &mut first, 32 * 1024);
    // Echo counters reach handles every 50 ms: wait for all the bytes.
    let t0 = Instant::now();
    while devices.iter().map(|d| echoed(&d.0)).sum::<u64>() < 30 * 64 * 1024 {
        assert!(t0.elapsed() < Duration::from_secs(5), "echo counters lag");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        echoed(&devices[3].0),
        0,
        "an old flow moved to the new backend"
    );
    // New connections also reach the new backend.
    let mut second = connect(&mut client, 42000..42030);
    exchange(&mut client, &mut second, 16 * 1024);
    let s = wait_for(&lh, Duration::from_secs(10), "new flows counted", |s| {
        (0..4).map(|i| flows_of(s, i)).sum::<u64>() == 60
    });
    assert!(flows_of(&s, 3) >= 3, "the new backend got few flows: {s:?}");
    assert!(has_echoed(&devices[3].0));

    // Garbage towards the VIP: counted, nothing breaks.
    send_garbage(&net, &lb_cfg);
    exchange(&mut client, &mut first, 8 * 1024);
    exchange(&mut client, &mut second, 8 * 1024);
    let s = wait_for(&lh, Duration::from_secs(10), "garbage counted", |s| {
        s.function_counter("malformed").unwrap_or(0) > 100
    });
    assert_eq!(s.function_counter("table_full"), Some(0), "{s:?}");
    close(&mut client, first);
    close(&mut client, second);

    devices.push((lh, lt));
    stop_all(devices);
}

/// (3) a stopped backend is marked down by the health checks and new
/// connections all succeed on the others; restarted, it is used again.
#[test]
fn health_checks_take_a_dead_backend_out_and_bring_it_back() {
    let net = Net::new();
    let mut backends: Vec<_> = (0..3).map(|i| Some(spawn(&net.backend(i)))).collect();
    let (lh, lt) = spawn(&net.balancer(3));
    let mut client = net.client();
    let up = |i: usize| format!("backend.{}:7.up", backend_addr(i));

    let mut conns = connect(&mut client, 41000..41012);
    exchange(&mut client, &mut conns, 8 * 1024);
    close(&mut client, conns);

    // Kill backend 0.
    let (h, t) = backends[0].take().expect("running");
    h.stop();
    t.join().expect("backend thread");
    let s = wait_for(&lh, Duration::from_secs(10), "backend 0 marked down", |s| {
        s.function_counter(&up(0)) == Some(0)
    });
    assert!(s.function_counter("health_changes") >= Some(1), "{s:?}");
    assert_eq!(s.function_counter("service.echo-tcp.backends_up"), Some(2));
    let dead_flows = flows_of(&s, 0);
    let mut conns = connect(&mut client, 43000..43024);
    exchange(&mut client, &mut conns, 8 * 1024);
    close(&mut client, conns);
    let s = wait_for(&lh, Duration::from_secs(10), "flows counted", |s| {
        (0..3).map(|i| flows_of(s, i)).sum::<u64>() == 12 + 24
    });
    assert_eq!(
        flows_of(&s, 0),
        dead_flows,
        "a new flow went to the dead backend"
    );
    assert_eq!(s.function_counter("no_backend"), Some(0));

    // Bring it back.
    backends[0] = Some(spawn(&net.backend(0)));
    wait_for(&lh, Duration::from_secs(10), "backend 0 back up", |s| {
        s.function_counter(&up(0)) == Some(1)
    });
    let mut conns = connect(&mut client, 44000..44024);
    exchange(&mut client, &mut conns, 8 * 1024);
    close(&mut client, conns);
    let s = wait_for(&lh, Duration::from_secs(10), "flows counted", |s| {
        (0..3).map(|i| flows_of(s, i)).sum::<u64>() >= 12 + 24 + 24
    });
    assert!(
        flows_of(&s, 0) > dead_flows,
        "the revived backend got no flows: {s:?}"
    );
    assert!(has_echoed(&backends[0].as_ref().expect("running").0));
    assert!(s.function_counter("health_changes") >= Some(2), "{s:?}");

    let mut all: Vec<_> = backends.into_iter().flatten().collect();
    all.push((lh, lt));
    stop_all(all);
}

/// (4) UDP datagrams to the UDP VIP are answered from the VIP, intact, and
/// spread over the backends.
#[test]
fn udp_to_the_vip_is_answered_and_spread() {
    let net = Net::new();
    let mut devices: Vec<_> = (0..3).map(|i| spawn(&net.backend(i))).collect();
    let (lh, lt) = spawn(&net.balancer(3));
    let mut client = net.client();

    let socks: Vec<SocketHandle> = (0..24u16)
        .map(|i| {
            let mut s = udp::Socket::new(
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16384]),
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16384]),
            );
            s.bind(45000 + i).expect("bind");
            client.sockets().add(s)
        })
        .collect();
    let payload = |i: usize, k: usize| -> Vec<u8> {
        (0..200)
            .map(|j| pattern_byte((i * 1000 + k * 200 + j) as u64))
            .collect()
    };
    let mut got = vec![0usize; socks.len()];
    let mut sent = vec![0usize; socks.len()];
    let mut last_send = Instant::now() - Duration::from_secs(1);
    let t0 = Instant::now();
    let mut buf = vec![0u8; 2048];
    client.run_until(|d| {
        // One datagram per socket at a time, resent if lost (the first may
        // race the neighbour tables).
        let resend = last_send.elapsed() > Duration::from_millis(300);
        for (i, &h) in socks.iter().enumerate() {
            let s = d.sockets().get_mut::<udp::Socket>(h);
            while let Ok((n, meta)) = s.recv_slice(&mut buf) {
                assert_eq!(
                    meta.endpoint,
                    IpEndpoint::new(VIP, 7),
                    "reply not from the VIP"
                );
                assert_eq!(&buf[..n], &payload(i, got[i])[..], "datagram corrupted");
                got[i] += 1;
            }
            if got[i] < 4 && (sent[i] == got[i] || resend) {
                let _ = s.send_slice(&payload(i, got[i]), IpEndpoint::new(VIP, 7));
                sent[i] = got[i] + 1;
                last_send = Instant::now();
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "datagrams: {got:?}");
        got.iter().all(|&g| g == 4)
    });
    let s = wait_for(&lh, Duration::from_secs(10), "udp flows counted", |s| {
        s.function_counter("service.echo-udp.flows") == Some(24)
    });
    // Every backend answered some (counters reach handles every 50 ms).
    for (i, (h, _)) in devices.iter().enumerate() {
        let t0 = Instant::now();
        loop {
            let n = h
                .stats()
                .function_counter("udp_datagrams_echoed")
                .unwrap_or(0);
            if n >= 4 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "backend {i} echoed {n}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    wait_for(&lh, Duration::from_secs(10), "udp packets counted", |s| {
        s.function_counter("service.echo-udp.packets") >= Some(24 * 4 * 2)
    });
    devices.push((lh, lt));
    stop_all(devices);
}
