//! The TCP proxy's unit tests: forwarding between two networks, balancing
//! and its configuration errors.
use smoltcp::time::Duration;

use crate::stack::NetDevice;
use crate::testing::function::config_error;
use crate::testing::{DeviceToml, VirtualClock, device, unique};

/// Devices on one pair of networks: host `n` is 10.0.0.n.
struct Net {
    lan: String,
    wan: String,
}

impl Net {
    fn new() -> Net {
        Net {
            lan: unique("lan"),
            wan: unique("wan"),
        }
    }
    fn host(&self, name: &str, n: u8, function: &str) -> NetDevice {
        device(
            &DeviceToml::host(name, &self.lan, &self.wan, n)
                .function(function)
                .settings(),
        )
    }
    /// The probe, host 1, that [`run`] waits for.
    fn probe(&self, function: &str) -> NetDevice {
        self.host("probe", 1, function)
    }
}

/// Runs until the probe (the first device) is done; its report.
fn run(devices: &mut [&mut NetDevice], limit: u64) -> Vec<String> {
    let probe = devices[0].handle();
    let mut clock = VirtualClock::new(Duration::from_millis(1));
    let done = clock.run_until(devices, Duration::from_secs(limit), |_| probe.finished());
    let report = probe.take_report();
    assert!(done, "{report:?}");
    report
}

fn counter(d: &NetDevice, name: &str) -> u64 {
    d.stats()
        .function_counters
        .iter()
        .find(|(n, _)| n == name)
        .map_or_else(|| panic!("no counter {name}"), |c| c.1)
}

const PROXY: &str = r#"{ kind = "tcp-proxy", connect_timeout = "1s", listeners = [
    { port = 7000, upstreams = ["10.0.0.3:7", "10.0.0.4:7"] },
    { port = 9000, upstreams = ["10.0.0.5:9"] },
    { port = 7001, upstreams = ["10.0.0.9:7"] } ] }"#;

#[test]
fn streams_cross_the_proxy_intact_to_each_upstream_in_turn() {
    let net = Net::new();
    let mut probe = net.probe(r#"{ kind = "probe", tcp = ["10.0.0.2:7000", "10.0.0.2:7000"], send = ["10.0.0.2:9000"], bytes = 1048576 }"#);
    let mut proxy = net.host("proxy", 2, PROXY);
    let mut a = net.host("a", 3, r#"{ kind = "echo" }"#);
    let mut b = net.host("b", 4, r#"{ kind = "echo" }"#);
    let mut sink = net.host("sink", 5, r#"{ kind = "sink" }"#);
    let report = run(&mut [&mut probe, &mut proxy, &mut a, &mut b, &mut sink], 30);
    assert_eq!(report.len(), 3, "{report:?}");
    assert!(
        report[0].contains("1048576 bytes echoed intact"),
        "{report:?}"
    );
    assert!(
        report[1].contains("1048576 bytes echoed intact"),
        "{report:?}"
    );
    // One way: the probe's FIN crossed the proxy, the receipt came back.
    assert!(
        report[2].contains("1048576 bytes delivered intact"),
        "{report:?}"
    );
    for echo in [&a, &b] {
        assert_eq!(counter(echo, "tcp_bytes_echoed"), 1 << 20);
    }
    assert_eq!(counter(&proxy, "listener.7000.connections"), 2);
    assert_eq!(counter(&proxy, "listener.7000.bytes_up"), 2 << 20);
    assert_eq!(counter(&proxy, "listener.7000.bytes_down"), 2 << 20);
    assert_eq!(counter(&proxy, "listener.9000.bytes_up"), 1 << 20);
    assert_eq!(counter(&proxy, "listener.9000.bytes_down"), 9);
    assert_eq!(counter(&proxy, "listener.7000.resets"), 0);
}

#[test]
fn a_client_whose_upstream_does_not_answer_is_reset_and_counted() {
    let net = Net::new();
    let mut probe =
        net.probe(r#"{ kind = "probe", tcp = ["10.0.0.2:7001"], bytes = 1000, timeout = "3s" }"#);
    let mut proxy = net.host("proxy", 2, PROXY);
    let report = run(&mut [&mut probe, &mut proxy], 10);
    assert!(
        report[0].contains("timed out after 0 of 1000"),
        "{report:?}"
    );
    assert!(counter(&proxy, "listener.7001.connect_failures") >= 1);
    assert_eq!(counter(&proxy, "listener.7001.active"), 0);
}

#[test]
fn beyond_max_connections_a_client_is_refused_and_the_others_go_on() {
    let net = Net::new();
    let client = |name, n| {
        net.host(
            name,
            n,
            r#"{ kind = "probe", tcp = ["10.0.0.2:7000"], bytes = 4194304, timeout = "20s" }"#,
        )
    };
    let (mut first, mut second) = (client("first", 1), client("second", 6));
    let mut proxy = net.host(
        "proxy",
        2,
        r#"{ kind = "tcp-proxy", max_connections = 1, listeners = [
            { port = 7000, upstreams = ["10.0.0.3:7"] } ] }"#,
    );
    let mut echo = net.host("echo", 3, r#"{ kind = "echo", connections = 4 }"#);
    let (a, b) = (first.handle(), second.handle());
    let mut clock = VirtualClock::new(Duration::from_millis(1));
    let done = clock.run_until(
        &mut [&mut first, &mut second, &mut proxy, &mut echo],
        Duration::from_secs(30),
        |d| {
            assert!(counter(d[2], "listener.7000.active") <= 1);
            a.finished() && b.finished()
        },
    );
    assert!(done);
    for h in [a, b] {
        let report = h.take_report();
        assert!(
            report[0].contains("4194304 bytes echoed intact"),
            "{report:?}"
        );
    }
    // One at a time: the second got in once the first was through.
    assert_eq!(counter(&proxy, "listener.7000.connections"), 2);
    assert_eq!(counter(&proxy, "listener.7000.resets"), 0);
}

#[test]
fn a_new_pool_applies_in_place_and_the_relayed_stream_goes_on() {
    let net = Net::new();
    let mut probe = net
        .probe(r#"{ kind = "probe", tcp = ["10.0.0.2:7000", "10.0.0.2:7000"], bytes = 4194304 }"#);
    let proxy_cfg = |upstream: &str| {
        format!(
            r#"kind = "tcp-proxy"
            listeners = [{{ port = 7000, upstreams = ["{upstream}"] }}]"#
        )
    };
    let mut proxy = device(
        &DeviceToml::host("proxy", &net.lan, &net.wan, 2)
            .function_table(proxy_cfg("10.0.0.3:7"))
            .settings(),
    );
    let mut a = net.host("a", 3, r#"{ kind = "echo" }"#);
    let mut b = net.host("b", 4, r#"{ kind = "echo" }"#);
    let new: crate::functions::FunctionConfig = toml::from_str(&proxy_cfg("10.0.0.4:7")).unwrap();
    let h = probe.handle();
    let mut switched = false;
    let mut clock = VirtualClock::new(Duration::from_millis(1));
    let done = clock.run_until(
        &mut [&mut probe, &mut proxy, &mut a, &mut b],
        Duration::from_secs(30),
        |d| {
            // Mid-stream, the pool changes to b alone.
            if !switched && counter(d[1], "listener.7000.bytes_up") > 1 << 20 {
                let applied = d[1].reconfigure(&new).unwrap();
                assert_eq!(applied, crate::stack::Applied::InPlace);
                switched = true;
            }
            h.finished()
        },
    );
    assert!(done && switched);
    let report = h.take_report();
    assert!(
        report
            .iter()
            .all(|l| l.contains("4194304 bytes echoed intact")),
        "{report:?}"
    );
    // The stream under way finished on a; the next went to b.
    assert_eq!(counter(&a, "tcp_bytes_echoed"), 4 << 20);
    assert_eq!(counter(&b, "tcp_bytes_echoed"), 4 << 20);
    assert_eq!(counter(&proxy, "listener.7000.connections"), 2);
}

#[test]
fn config_errors_name_the_field() {
    let err = |text: &str| config_error(text, super::TcpProxy::new);
    let cases = [
        ("listeners = []", "at least one [[listeners]]"),
        (
            "listeners = [{ port = 0, upstreams = [\"10.0.0.3:7\"] }]",
            "listeners[0].port",
        ),
        (
            "listeners = [{ port = 1, upstreams = [] }]",
            "listeners[0].upstreams is empty",
        ),
        (
            "listeners = [{ port = 1, upstreams = [\"10.0.0.3:7\"], balance = \"hash\" }]",
            "listeners[0].balance: \"hash\" is http-proxy's",
        ),
        (
            "listeners = [{ port = 1, upstreams = [\"nope\"] }]",
            "upstream \"nope\" is not ip:port",
        ),
        (
            "listeners = [{ port = 1, upstreams = [\"10.0.0.3:7\"] }, { port = 1, upstreams = [\"10.0.0.3:7\"] }]",
            "listeners[1].port 1 is listed twice",
        ),
        (
            "backlog = 0\nlisteners = [{ port = 1, upstreams = [\"10.0.0.3:7\"] }]",
            "backlog",
        ),
    ];
    for (text, want) in cases {
        let e = err(text);
        assert!(e.contains(want), "{text}: {e}");
    }
}
