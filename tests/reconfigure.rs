//! A running device reconfigured: switched to another function, or given a
//! changed configuration of its own function while TCP streams cross it.
//!
//! Each packet function gets the same treatment: a client (driven by the
//! test's thread) streams [`STREAM`] bytes on each of its flows to echo
//! servers through the function and checks every byte that comes back;
//! halfway through each of the first three quarters of the streams, the
//! function's device is given the same config, a widened one and a
//! narrowed one. Flows the new config still allows must come through
//! intact; the firewall must cut exactly the flow its narrowed rules
//! forbid, the balancer the flows of the backend it no longer has.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shmnet::config::DeviceSettings;
use shmnet::functions::diag::pattern_byte;
use shmnet::functions::{FunctionConfig, build};
use shmnet::shm::SegmentKind;
use shmnet::smoltcp::iface::SocketHandle;
use shmnet::smoltcp::socket::tcp;
use shmnet::smoltcp::wire::{IpAddress, IpEndpoint};
use shmnet::stack::{Applied, DeviceHandle, DeviceStats, NetDevice};

#[test]
fn running_device_switches_function() {
    let (lan, wan) = (unique("lan"), unique("wan"));
    // Starts as a plain pass-through device: nothing listens on port 7.
    let server = settings("server", &lan, &wan, 2, 1500, r#"{ kind = "passthrough" }"#);
    let (sh, st) = spawn(&server);
    assert_eq!(sh.stats().function, "passthrough");

    let probe = r#"{ kind = "probe", tcp = ["10.0.0.2:7"], bytes = 200000, timeout = "300ms" }"#;
    let (ch, ct) = spawn(&settings("client", &lan, &wan, 1, 1500, probe));
    let report = wait_finished(&ch, Duration::from_secs(30));
    assert!(
        report[0].contains("timed out"),
        "nothing should echo yet: {report:?}"
    );
    ch.stop();
    ct.join().unwrap();

    // Switch the live device to an echo server.
    let echo: FunctionConfig = toml::from_str("kind = \"echo\"\nport = 7").unwrap();
    sh.replace_function(build(&echo).unwrap());
    let probe = r#"{ kind = "probe", tcp = ["10.0.0.2:7"], udp = ["10.0.0.2:7"], bytes = 200000 }"#;
    let (ch, ct) = spawn(&settings("client2", &lan, &wan, 3, 1500, probe));
    let report = wait_finished(&ch, Duration::from_secs(30));
    assert!(report.iter().all(|l| l.contains("intact")), "{report:?}");
    assert_eq!(sh.stats().function, "echo");

    // And back: the echo function's sockets are gone with it.
    sh.replace_function(build(&FunctionConfig::Passthrough).unwrap());
    ch.stop();
    ct.join().unwrap();
    let probe = r#"{ kind = "probe", udp = ["10.0.0.2:7"], timeout = "600ms" }"#;
    let (ch, ct) = spawn(&settings("client3", &lan, &wan, 4, 1500, probe));
    let report = wait_finished(&ch, Duration::from_secs(30));
    assert!(report[0].contains("timed out"), "{report:?}");
    assert_eq!(sh.stats().function, "passthrough");
    ch.stop();
    sh.stop();
    ct.join().unwrap();
    st.join().unwrap();
}

/// Bytes each flow streams (and gets back from its echo server).
const STREAM: u64 = 4 << 20;
const QUARTER: u64 = STREAM / 4;
/// TCP buffers of the client's sockets.
const SOCKET_BUFFER: usize = 256 * 1024;
/// The most any wait of these tests may take: far more than a loaded
/// machine needs, only there so that a broken flow fails the test.
const LIMIT: Duration = Duration::from_secs(60);
/// How often a device publishes its function counters to handles.
const COUNTERS_EVERY: Duration = Duration::from_millis(50);

/// A function config from its `[function]` table (`kind = ...` and its
/// keys).
fn function(doc: &str) -> FunctionConfig {
    toml::from_str(doc).unwrap_or_else(|e| panic!("test config is invalid: {e}\n{doc}"))
}

/// Applies `cfg` to the function of the running device `h` and waits
/// until the change is live; a change of the same kind must be applied in
/// place.
fn apply(h: &DeviceHandle, cfg: FunctionConfig) {
    let ticket = h.reconfigure(cfg).expect("the new config is valid");
    let how = ticket.wait(LIMIT).expect("the device applies the change");
    assert_eq!(
        how,
        Applied::InPlace,
        "a change of the same kind keeps state"
    );
}

/// What became of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Streaming,
    /// Every byte came back intact.
    Done,
    /// The connection was reset before every byte came back.
    Cut,
}

/// One TCP connection of the client and how far its echoed stream got.
#[derive(Debug)]
struct Flow {
    to: IpEndpoint,
    port: u16,
    h: Option<SocketHandle>,
    /// Bytes the test lets it send so far: each change of config lands
    /// while the stream is under way, never after it ended.
    allowed: u64,
    sent: u64,
    /// Bytes that came back, each checked against what was sent.
    echoed: u64,
    fate: Fate,
}

/// The client device, driven by the test's thread, and its flows.
struct Client {
    dev: NetDevice,
    flows: Vec<Flow>,
}

impl Client {
    /// A client built from `s` with a flow to each of `to`, from local
    /// ports 41000 on; a flow connects once it is allowed to send.
    fn new(s: &DeviceSettings, to: &[IpEndpoint]) -> Client {
        let flows = to
            .iter()
            .enumerate()
            .map(|(i, &to)| Flow {
                to,
                port: 41000 + i as u16,
                h: None,
                allowed: 0,
                sent: 0,
                echoed: 0,
                fate: Fate::Streaming,
            })
            .collect();
        Client {
            dev: NetDevice::new(s, SegmentKind::InProcess).expect("client starts"),
            flows,
        }
    }

    /// Lets every flow still streaming send up to `bytes`.
    fn allow_all(&mut self, bytes: u64) {
        for f in &mut self.flows {
            f.allowed = f.allowed.max(bytes.min(STREAM));
        }
    }

    /// Runs the client until `until` holds for its flows; panics after
    /// [`LIMIT`], saying `what` it waited for.
    fn drive(&mut self, what: &str, until: impl FnMut(&[Flow]) -> bool) {
        self.drive_for(LIMIT, what, until);
    }

    fn drive_for(&mut self, limit: Duration, what: &str, mut until: impl FnMut(&[Flow]) -> bool) {
        let t0 = Instant::now();
        loop {
            let moved = self.dev.poll();
            self.step();
            if until(&self.flows) {
                return;
            }
            assert!(
                t0.elapsed() < limit,
                "{what}: never happened: {:?}",
                self.flows
            );
            if !moved {
                self.dev.wait(Duration::from_millis(1));
            }
        }
    }

    /// Runs `job` (a reconfiguration, a wait on counters) on a thread of
    /// its own while the client keeps streaming; returns what it returns.
    /// (The job's own waits give up first, and say what they waited for.)
    fn meanwhile<R: Send>(&mut self, job: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            let t = s.spawn(job);
            self.drive_for(2 * LIMIT, "a job alongside", |_| t.is_finished());
            t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Sends and receives what each flow may, checks the echo.
    fn step(&mut self) {
        for f in &mut self.flows {
            if f.fate != Fate::Streaming || f.allowed == 0 {
                continue;
            }
            let Some(h) = f.h else {
                f.h = Some(tcp_connect(&mut self.dev, SOCKET_BUFFER, f.to, f.port));
                continue;
            };
            let s = self.dev.sockets().get_mut::<tcp::Socket>(h);
            if !s.is_active() {
                f.fate = Fate::Cut;
                continue;
            }
            // Each flow streams its own stretch of the pattern.
            let base = u64::from(f.port) * 1_000_003;
            f.sent += send_pattern(s, base + f.sent, f.allowed - f.sent);
            while s.can_recv() {
                let echoed = f.echoed;
                let n = s
                    .recv(|b| {
                        for (k, &x) in b.iter().enumerate() {
                            let at = echoed + k as u64;
                            assert_eq!(x, pattern_byte(base + at), "echo corrupted at byte {at}");
                        }
                        (b.len(), b.len())
                    })
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                f.echoed += n as u64;
            }
            if f.echoed == STREAM {
                f.fate = Fate::Done;
                s.close();
            }
        }
    }

    /// Streams on every flow, a quarter at a time: halfway through each of
    /// the first three quarters, `change(k, self)` for k = 0, 1, 2 (the
    /// same config, a widened one, a narrowed one), while the flows keep
    /// going; then lets the flows send the rest.
    fn stream_with_changes(&mut self, mut change: impl FnMut(usize, &mut Client)) {
        for k in 0..3u64 {
            self.allow_all((k + 1) * QUARTER);
            let halfway = k * QUARTER + QUARTER / 2;
            self.drive("a quarter of the streams half done", |flows| {
                flows
                    .iter()
                    .all(|f| f.fate != Fate::Streaming || f.echoed >= halfway)
            });
            change(k as usize, self);
        }
        self.allow_all(STREAM);
    }

    /// Runs until each flow in `flows` has every byte back intact.
    fn finish(&mut self, flows: &[usize]) {
        self.drive("the surviving streams complete", |all| {
            flows.iter().all(|&i| all[i].fate != Fate::Streaming)
        });
        for &i in flows {
            let f = &self.flows[i];
            assert_eq!(f.fate, Fate::Done, "flow {i} did not survive: {f:?}");
        }
    }
}

/// The settings of the client (see [`Client`]): at `address` on `lan`,
/// reaching `server`'s /24 through `gateway`; its function passes frames
/// through, the test drives its sockets.
fn client_settings(lan: &str, address: &str, server: &str, gateway: &str) -> DeviceSettings {
    probe_client(lan, address, server, gateway, 0)
        .function(r#"{ kind = "passthrough" }"#)
        .settings()
}

/// The counter `name` of `h`'s function, as last published.
fn now_counter(h: &DeviceHandle, name: &str) -> u64 {
    counter(&h.stats(), name)
}

/// `h`'s counters once the device has published its last rounds (it does
/// every 50 ms, and when it goes idle).
fn settled(h: &DeviceHandle) -> DeviceStats {
    std::thread::sleep(3 * COUNTERS_EVERY);
    h.stats()
}

// ─── firewall ───────────────────────────────────────────────────────────

/// The firewall's function table: TCP from the inside (the client's LAN)
/// to the ports in `allowed` (one rule each, or a range), nothing else.
fn firewall(allowed: &[&str]) -> FunctionConfig {
    let rules: Vec<String> = allowed
        .iter()
        .map(|p| {
            format!(r#"{{ action = "accept", direction = "out", proto = "tcp", dport = {p} }}"#)
        })
        .collect();
    function(&format!(
        "kind = \"firewall\"\ndefault = \"drop\"\nrule = [{}]\n",
        rules.join(", ")
    ))
}

/// client 10.0.0.1 ─lan─ fw ─wan─ servers 10.3.0.2 (echo on port 7) and
/// 10.3.0.3 (echo on port 9). The firewall, a forwarding device with
/// `default = "drop"`, allows both ports; the widened config a range of
/// ports; the narrowed one port 7 only: the stream to port 9 must be cut —
/// no byte of it gets through after that — and the stream to port 7 must
/// complete intact.
#[test]
fn firewall_keeps_allowed_streams_and_cuts_the_forbidden_one() {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let initial = firewall(&["7", "9"]);
    let mut fw_settings = DeviceToml::new("fw", (&lan, "10.0.0.254/24"), (&wan, "10.3.0.254/24"))
        .forward()
        .settings();
    fw_settings.function = initial.clone();
    let server = |name: &str, host: u8, port: u16| {
        DeviceToml::new(
            name,
            (&wan, format!("10.3.0.{host}/24")),
            (unique("sg"), format!("10.200.0.{host}/16")),
        )
        .function(format!(r#"{{ kind = "echo", port = {port} }}"#))
        .route("10.0.0.0/24", "10.3.0.254")
        .settings()
    };
    let s7 = spawn(&server("server7", 2, 7));
    let s9 = spawn(&server("server9", 3, 9));
    let (fh, ft) = spawn(&fw_settings);
    let client = client_settings(&lan, "10.0.0.1", "10.3.0.2", "10.0.0.254");
    let (to7, to9) = (0, 1);
    let mut c = Client::new(
        &client,
        &[
            IpEndpoint::new(IpAddress::v4(10, 3, 0, 2), 7),
            IpEndpoint::new(IpAddress::v4(10, 3, 0, 3), 9),
        ],
    );

    let configs = [initial, firewall(&["\"1-1023\""]), firewall(&["7"])];
    let mut cut_at = 0;
    c.stream_with_changes(|k, c| {
        if k == 2 {
            // The stream to port 9 has all it sent back, so that what
            // passed before the cut is known exactly.
            c.drive("port 9's stream quiet", |f| f[to9].echoed == f[to9].allowed);
            cut_at = c.flows[to9].echoed;
        }
        let cfg = configs[k].clone();
        c.meanwhile(|| apply(&fh, cfg));
        let revoked = u64::from(k == 2);
        let s = c.meanwhile(|| {
            wait_for(&fh, LIMIT, "connections kept", |s| {
                counter(s, "revoked") == revoked && counter(s, "connections") >= 2 - revoked
            })
        });
        assert_eq!(counter(&s, "connections"), 2 - revoked, "{s:?}");
    });
    let invalid = now_counter(&fh, "invalid");
    c.finish(&[to7]);
    // Port 9's client keeps sending (and retransmitting): the firewall
    // drops each segment as invalid, and nothing more reaches the server.
    c.meanwhile(|| {
        wait_for(&fh, LIMIT, "port 9's segments dropped", |s| {
            counter(s, "invalid") >= invalid + 3
        })
    });
    let f9 = &c.flows[to9];
    assert_eq!(f9.fate, Fate::Streaming, "{f9:?}");
    assert!(f9.sent > cut_at, "{f9:?}");
    assert_eq!(f9.echoed, cut_at, "{f9:?}");
    assert_eq!(counter(&settled(&s9.0), "tcp_bytes_echoed"), cut_at);
    assert_eq!(counter(&settled(&s7.0), "tcp_bytes_echoed"), STREAM);
    let s = settled(&fh);
    assert_eq!(counter(&s, "revoked"), 1, "{s:?}");
    assert_eq!(counter(&s, "malformed"), 0, "{s:?}");
    stop_all([(fh, ft), s7, s9]);
}

// ─── qos ────────────────────────────────────────────────────────────────

/// The QoS function table: everything in class "bulk" shaped to `rate`,
/// and, widened, a priority class for UDP ahead of it.
fn qos(rate: &str, udp_class: bool) -> FunctionConfig {
    let udp = if udp_class {
        "[[class]]\nname = \"udp\"\npriority = 0\nproto = \"udp\"\n"
    } else {
        ""
    };
    function(&format!(
        "kind = \"qos\"\ndefault = \"bulk\"\n{udp}[[class]]\nname = \"bulk\"\npriority = 1\nrate = \"{rate}\"\n"
    ))
}

/// client ─lan-a─ qos ─lan-b─ echo server, two flows. The class's rate is
/// kept, raised (with a new class) and lowered (narrowed: slower, still
/// allowing): the queued frames stay queued, nothing is lost, both
/// streams complete intact and the counters carry on.
#[test]
fn qos_keeps_its_queues_and_streams() {
    let (lan_a, lan_b) = (unique("lanA"), unique("lanB"));
    let client = client_settings(&lan_a, "10.0.0.1", "10.1.0.2", "10.0.0.254");
    let initial = qos("400mbit", false);
    let mut qos_settings =
        DeviceToml::new("qos", (&lan_a, "10.0.0.254/24"), (&lan_b, "10.1.0.254/24"))
            .forward()
            .settings();
    qos_settings.function = initial.clone();
    let server = echo_server(&lan_b, "10.1.0.2", "10.0.0.1", "10.1.0.254")
        .function(r#"{ kind = "echo", connections = 4 }"#)
        .settings();
    let sv = spawn(&server);
    let (qh, qt) = spawn(&qos_settings);
    let to = IpEndpoint::new(IpAddress::v4(10, 1, 0, 2), 7);
    let mut c = Client::new(&client, &[to, to]);

    let configs = [initial, qos("1gbit", true), qos("100mbit", false)];
    let mut released = 0;
    c.stream_with_changes(|k, c| {
        let cfg = configs[k].clone();
        c.meanwhile(|| apply(&qh, cfg));
        // Counters carry on: a rebuilt function would start at 0.
        let now = now_counter(&qh, "packets");
        assert!(now >= released, "{now} < {released}");
        released = now;
    });
    c.finish(&[0, 1]);
    let s = settled(&qh);
    for lost in ["dropped", "discarded", "malformed"] {
        assert_eq!(counter(&s, lost), 0, "{lost}: {s:?}");
    }
    // Every frame queued was released.
    assert_eq!(counter(&s, "queued_packets"), 0, "{s:?}");
    assert_eq!(counter(&s, "enqueued"), counter(&s, "packets"), "{s:?}");
    assert!(counter(&s, "class.bulk.bytes") > 2 * 2 * STREAM, "{s:?}");
    stop_all([(qh, qt), sv]);
}

// ─── reroute ────────────────────────────────────────────────────────────

/// r1's function table: the rule for the servers' network prefers
/// "ghost", a next hop no device answers for, then a. Widened: the rule
/// takes a larger prefix and a spare next hop (never checked, so up) comes
/// last; narrowed: TCP only, the spare gone.
fn reroute(step: usize) -> FunctionConfig {
    let (dst, proto, spare_hop, spare) = match step {
        0 => ("10.22.0.0/24", "", "", ""),
        1 => (
            "10.22.0.0/16",
            "",
            r#"{ name = "spare", address = "10.21.0.10", check = "none" },"#,
            r#", "spare""#,
        ),
        _ => ("10.22.0.0/24", r#"proto = "tcp", "#, "", ""),
    };
    function(&format!(
        r#"kind = "reroute"
next_hop = [
    {{ name = "ghost", address = "10.21.0.9", interval = "50ms", timeout = "100ms", fall = 2 }},
    {{ name = "a", address = "10.21.0.2", interval = "50ms", timeout = "250ms" }},
    {spare_hop}
]
rule = [{{ name = "servers", {proto}dst = "{dst}", via = ["ghost", "a"{spare}] }}]
"#
    ))
}

/// client ─edge─ r1 ═core1═ a ═core2═ echo server. r1's routing table
/// sends the servers' traffic to a neighbour that does not exist (the
/// ghost's address); its reroute function has found the ghost down and
/// sends it through a. Reconfigured (same, widened, narrowed), r1 must keep
/// knowing that the ghost is down: not one packet may go to it, and both
/// streams complete intact.
#[test]
fn reroute_keeps_health_and_streams() {
    let (edge, core1, core2) = (unique("edge"), unique("core1"), unique("core2"));
    let a = DeviceToml::new("a", (&core1, "10.21.0.2/24"), (&core2, "10.22.0.2/24"))
        .forward()
        .route("10.1.0.0/24", "10.21.0.1")
        .settings();
    let mut r1 = DeviceToml::new("r1", (&edge, "10.1.0.254/24"), (&core1, "10.21.0.1/24"))
        .forward()
        .route("10.22.0.0/24", "10.21.0.9")
        .settings();
    r1.function = reroute(0);
    let server = echo_server(&core2, "10.22.0.5", "10.1.0.1", "10.22.0.2")
        .function(r#"{ kind = "echo", connections = 4 }"#)
        .settings();
    let client = client_settings(&edge, "10.1.0.1", "10.22.0.5", "10.1.0.254");
    let devices: Vec<_> = [&server, &a].into_iter().map(spawn).collect();
    let (rh, rt) = spawn(&r1);
    wait_for(&rh, LIMIT, "the ghost found down, a up", |s| {
        counter(s, "next_hop.ghost.up") == 0 && counter(s, "next_hop.a.up") == 1
    });
    let to = IpEndpoint::new(IpAddress::v4(10, 22, 0, 5), 7);
    let mut c = Client::new(&client, &[to, to]);

    let mut probes = 0;
    c.stream_with_changes(|k, c| {
        c.meanwhile(|| apply(&rh, reroute(k)));
        let s = rh.stats();
        assert_eq!(counter(&s, "next_hop.ghost.up"), 0, "{s:?}");
        // The ghost's checks carry on where they were.
        let sent = counter(&s, "next_hop.ghost.probes_sent");
        assert!(sent >= probes, "{s:?}");
        probes = sent;
    });
    c.finish(&[0, 1]);
    let s = settled(&rh);
    assert_eq!(counter(&s, "next_hop.ghost.packets"), 0, "{s:?}");
    assert_eq!(counter(&s, "next_hop.ghost.up"), 0, "{s:?}");
    assert!(counter(&s, "next_hop.a.packets") > STREAM / 1500, "{s:?}");
    assert_eq!(counter(&s, "failbacks"), 0, "{s:?}");
    stop_all(devices.into_iter().chain([(rh, rt)]));
}

// ─── balancer ───────────────────────────────────────────────────────────

const VIP: IpAddress = IpAddress::v4(10, 20, 0, 100);

fn backend_addr(i: usize) -> String {
    format!("10.12.0.{}", 2 + i)
}

/// The balancer's function table: a TCP service on VIP:7 over the
/// backends `backends`.
fn balancer(backends: &[usize]) -> FunctionConfig {
    let list: Vec<String> = backends
        .iter()
        .map(|&i| format!("\"{}:7\"", backend_addr(i)))
        .collect();
    function(&format!(
        r#"kind = "balancer"
[[service]]
name = "echo"
vip = "10.20.0.100:7"
proto = "tcp"
backends = [{}]
table_size = 65537
check = "tcp"
interval = "200ms"
timeout = "500ms"
"#,
        list.join(", ")
    ))
}

/// The flows the balancer counts for backend `i`.
fn flows_of(s: &DeviceStats, i: usize) -> u64 {
    s.function_counter(&format!("backend.{}:7.flows", backend_addr(i)))
        .unwrap_or(0)
}

/// client ─front─ balancer ─back─ echo backends 0..4. Six flows spread
/// over backends 0, 1 and 2; the same config, backend 3 added (the flows
/// keep their backends), then the backend with the most flows removed:
/// its flows are cut (their next packets reach another backend, which
/// resets them) and every other flow completes intact.
#[test]
fn balancer_keeps_flows_on_the_backends_that_remain() {
    let (front, back) = (unique("front"), unique("back"));
    let backend = |i: usize| {
        DeviceToml::new(
            format!("backend-{i}"),
            (&back, format!("{}/24", backend_addr(i))),
            (unique("bw"), format!("10.{}.0.2/16", 100 + i)),
        )
        .function(r#"{ kind = "echo", connections = 16, tcp_buffer = 262144 }"#)
        .route("10.11.0.0/24", "10.12.0.254")
        .settings()
    };
    let backends: Vec<_> = (0..4).map(|i| spawn(&backend(i))).collect();
    let initial = balancer(&[0, 1, 2]);
    let mut lb = DeviceToml::new(
        "balancer",
        (&front, "10.11.0.254/24"),
        (&back, "10.12.0.254/24"),
    )
    .forward()
    .settings();
    lb.function = initial.clone();
    let (lh, lt) = spawn(&lb);
    wait_for(&lh, LIMIT, "backends up", |s| {
        counter(s, "service.echo.backends_up") == 3
    });
    let client = client_settings(&front, "10.11.0.1", "10.20.0.100", "10.11.0.254");
    let n = 6;
    let mut c = Client::new(&client, &vec![IpEndpoint::new(VIP, 7); n]);

    // Open the flows one by one to learn each one's backend.
    let mut backend_of = Vec::new();
    for i in 0..n {
        c.flows[i].allowed = 1024;
        c.drive("a flow open", |f| f[i].echoed == 1024);
        let s = c.meanwhile(|| {
            wait_for(&lh, LIMIT, "the flow counted", |s| {
                (0..3).map(|b| flows_of(s, b)).sum::<u64>() == i as u64 + 1
            })
        });
        let on = (0..3)
            .find(|&b| flows_of(&s, b) > backend_of.iter().filter(|&&x| x == b).count() as u64)
            .expect("a backend got the flow");
        backend_of.push(on);
    }
    let count = |b: usize| backend_of.iter().filter(|&&x| x == b).count();
    let removed = (0..3).max_by_key(|&b| count(b)).expect("backends");
    assert!(
        count(removed) < n,
        "all flows on one backend: {backend_of:?}"
    );

    let remaining: Vec<usize> = (0..4).filter(|&b| b != removed).collect();
    let configs = [initial, balancer(&[0, 1, 2, 3]), balancer(&remaining)];
    c.stream_with_changes(|k, c| {
        let cfg = configs[k].clone();
        c.meanwhile(|| apply(&lh, cfg));
        if k < 2 {
            // No flow moved: a moved flow would be reset by its new backend.
            assert!(
                c.flows.iter().all(|f| f.fate == Fate::Streaming),
                "{:?}",
                c.flows
            );
        }
    });
    let (cut, kept): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| backend_of[i] == removed);
    c.finish(&kept);
    c.drive("the removed backend's flows reset", |f| {
        cut.iter().all(|&i| f[i].fate != Fate::Streaming)
    });
    for &i in &cut {
        let f = &c.flows[i];
        assert_eq!(f.fate, Fate::Cut, "flow {i}: {f:?}");
        assert!(f.echoed < STREAM, "flow {i}: {f:?}");
    }
    let s = settled(&lh);
    assert_eq!(counter(&s, "table_full"), 0, "{s:?}");
    stop_all(backends.into_iter().chain([(lh, lt)]));
}

// ─── encrypt ────────────────────────────────────────────────────────────

const KEY_12: &str = "4c80cdefbb5d10da906ac73c3613a6342e443b68";
const KEY_21: &str = "feffe9928665731c6d6a8f9467308308cafebabe";
const NEXT_12: &str = "00112233445566778899aabbccddeeff01020304";
const NEXT_21: &str = "ffeeddccbbaa99887766554433221100a0b0c0d0";

/// A tunnel end's function table: ESP from `local` to `peer` with the
/// outbound SA `out` (SPI, key) and the inbound SAs `inb`.
fn tunnel(local: &str, peer: &str, out: (u32, &str), inb: &[(u32, &str)]) -> FunctionConfig {
    let inbound: Vec<String> = inb
        .iter()
        .map(|(spi, k)| format!("{{ spi = {spi}, key = \"{k}\" }}"))
        .collect();
    function(&format!(
        "kind = \"encrypt\"\nlocal_address = \"{local}\"\npeer_address = \"{peer}\"\n\
         outbound = {{ spi = {}, key = \"{}\" }}\ninbound = [{}]\n",
        out.0,
        out.1,
        inbound.join(", ")
    ))
}

/// A pair function's chain, running: client ─lan-a─ end 1 ═hop═ end 2
/// ─lan-b─ echo server, the ends named `names` and running `f1`/`f2`, and
/// the test's client with two flows to the server.
struct PairChain {
    ends: [Running; 2],
    server: Running,
    client: Client,
}

impl PairChain {
    fn start(names: [&str; 2], f1: FunctionConfig, f2: FunctionConfig) -> PairChain {
        let hop = Hop::new();
        let mut e1 = hop.end(1, names[0]).settings();
        e1.function = f1;
        let mut e2 = hop.end(2, names[1]).settings();
        e2.function = f2;
        let client = hop
            .client(0)
            .function(r#"{ kind = "passthrough" }"#)
            .settings();
        let server = hop
            .server()
            .function(r#"{ kind = "echo", connections = 4 }"#)
            .settings();
        let server = spawn(&server);
        let end2 = spawn(&e2);
        let end1 = spawn(&e1);
        let to = IpEndpoint::new(IpAddress::v4(10, 3, 0, 2), 7);
        PairChain {
            ends: [end1, end2],
            server,
            client: Client::new(&client, &[to, to]),
        }
    }

    fn stop(self) {
        let [e1, e2] = self.ends;
        stop_all([e1, e2, self.server]);
    }
}

/// client ─lan-a─ e1 ═hop═ e2 ─lan-b─ echo server; the hop carries ESP.
/// Both ends get the same config, then (widened) a second inbound SA each
/// — the next key, accepted before any sender uses it — then (narrowed)
/// that SA withdrawn again. The outbound SAs stay: their sequence
/// numbers and the peers' replay windows must go on where they were (a
/// sender starting again at 1 would be refused as a replay), so no packet
/// is refused and the streams complete intact.
#[test]
fn encrypt_keeps_its_security_associations() {
    let (old_12, next_12) = ((0x1001, KEY_12), (0x1002, NEXT_12));
    let (old_21, next_21) = ((0x2002, KEY_21), (0x2003, NEXT_21));
    let e1_cfg = |inb: &[(u32, &str)]| tunnel("10.2.0.1", "10.2.0.2", old_12, inb);
    let e2_cfg = |inb: &[(u32, &str)]| tunnel("10.2.0.2", "10.2.0.1", old_21, inb);
    let mut chain = PairChain::start(["e1", "e2"], e1_cfg(&[old_21]), e2_cfg(&[old_12]));
    let [h1, h2] = [0, 1].map(|i| chain.ends[i].0.clone());
    let c = &mut chain.client;

    let steps = [
        (vec![old_21], vec![old_12]),
        (vec![old_21, next_21], vec![old_12, next_12]),
        (vec![old_21], vec![old_12]),
    ];
    c.stream_with_changes(|k, c| {
        let (in1, in2) = &steps[k];
        let (cfg1, cfg2) = (e1_cfg(in1), e2_cfg(in2));
        c.meanwhile(|| {
            apply(&h1, cfg1);
            apply(&h2, cfg2);
        });
    });
    c.finish(&[0, 1]);
    for h in [&h1, &h2] {
        let s = settled(h);
        assert!(counter(&s, "encrypted") > 2 * STREAM / 1500, "{s:?}");
        for bad in ["auth_failed", "unknown_spi", "replayed", "bad_padding"] {
            assert_eq!(counter(&s, bad), 0, "{bad}: {s:?}");
        }
    }
    chain.stop();
}

// ─── compress ───────────────────────────────────────────────────────────

fn compress(min_size: usize) -> FunctionConfig {
    function(&format!("kind = \"compress\"\nmin_size = {min_size}\n"))
}

/// client ─lan-a─ c1 ═hop═ c2 ─lan-b─ echo server; the hop carries
/// IPComp. Both ends get the same config, then (widened) a lower
/// `min_size` — smaller packets compressed too — then (narrowed) one above
/// the hop's MTU: nothing more is compressed, what is in flight is still
/// restored. The streams complete intact and the counters carry on.
#[test]
fn compress_keeps_streams_across_changes() {
    let mut chain = PairChain::start(["c1", "c2"], compress(128), compress(128));
    let [h1, h2] = [0, 1].map(|i| chain.ends[i].0.clone());
    let c = &mut chain.client;

    let sizes = [128, 64, 2000];
    // Packets each end compressed, as of the last change.
    let mut compressed = [0, 0];
    c.stream_with_changes(|k, c| {
        c.meanwhile(|| {
            apply(&h1, compress(sizes[k]));
            apply(&h2, compress(sizes[k]));
        });
        for (h, was) in [&h1, &h2].into_iter().zip(&mut compressed) {
            // Counters carry on: a rebuilt function would start at 0.
            let now = now_counter(h, "compressed");
            assert!(now >= *was, "{now} < {was}");
            *was = now;
        }
    });
    c.finish(&[0, 1]);
    // The last quarter of each stream, each way, in full-sized segments.
    let last_quarter = 2 * QUARTER / 1500;
    for (h, was) in [&h1, &h2].into_iter().zip(compressed) {
        let s = settled(h);
        assert_eq!(counter(&s, "decompress_errors"), 0, "{s:?}");
        assert_eq!(counter(&s, "unknown_cpi"), 0, "{s:?}");
        assert!(was > last_quarter, "compressed before: {s:?}");
        // Narrowed: the rest crossed uncompressed (but for a round's worth
        // the device may have compressed between its last published
        // counters and the change).
        let after = counter(&s, "compressed") - was;
        assert!(after * 4 < last_quarter, "{after} compressed after: {s:?}");
    }
    chain.stop();
}
