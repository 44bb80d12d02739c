//! The function follows the policy: examples/policy as written, driven by
//! Linux through its TAP port (`shmtap5`, 10.90.0.1). A busy passthrough
//! becomes a shaper and reverts when quiet, the stream in flight intact;
//! a SYN flood from one prefix gets that prefix dropped by the firewall
//! while 10.90.0.1's connections go on; a backend whose probe fails leaves
//! the balancer's service and returns. With `--dry-run` the policy decides
//! and changes nothing; the failover scenario also runs in process mode.
//!
//! Skips, saying why, without /dev/net/tun or root. Holds the TAP test
//! lock; routes and addresses it adds go with the test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::tap::*;

const TAP: &str = "shmtap5";
const MANAGER: &str = "10.90.0.2:9100";
const SECRET: &str = "/tmp/shmnet-policy.secret";

/// Routes to the networks behind the example's forwarding devices, and a
/// second host address (the flood's source), removed on drop.
struct HostSetup {
    routes: Vec<&'static str>,
    addr: Option<&'static str>,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl HostSetup {
    fn new() -> HostSetup {
        let routes = vec![
            "10.91.0.0/24 via 10.90.0.3",
            "10.92.0.0/24 via 10.90.0.5",
            "10.93.0.0/24 via 10.90.0.6",
        ];
        for r in &routes {
            let mut args = vec!["route", "replace"];
            args.extend(r.split(' '));
            args.extend(["dev", TAP]);
            assert!(ip(&args), "ip {args:?}");
        }
        HostSetup { routes, addr: None }
    }

    fn add_address(&mut self, cidr: &'static str) {
        assert!(ip(&["addr", "add", cidr, "dev", TAP]));
        self.addr = Some(cidr);
    }
}

impl Drop for HostSetup {
    fn drop(&mut self) {
        for r in &self.routes {
            let mut args = vec!["route", "del"];
            args.extend(r.split(' '));
            ip(&args);
        }
        if let Some(a) = self.addr {
            ip(&["addr", "del", a, "dev", TAP]);
        }
    }
}

/// The example running, its TAP port up and every device polled.
fn start(args: &[&str]) -> (Run, HostSetup) {
    let run = run_example("policy", TAP, args);
    let setup = HostSetup::new();
    wait_until("every device up", 30, || {
        let d = get("/api/devices");
        let list = d["devices"].as_array().cloned().unwrap_or_default();
        list.len() == 6 && list.iter().all(|d| d["up"] == true)
    });
    (run, setup)
}

/// `GET path` of the manager's API, as JSON (Null if it did not answer).
fn get(path: &str) -> serde_json::Value {
    get_at(MANAGER, path)
}

/// [`get`] of the manager at `manager`.
fn get_at(manager: &str, path: &str) -> serde_json::Value {
    serde_json::from_str(body(&http_get(manager, "m", path))).unwrap_or(serde_json::Value::Null)
}

/// `GET path` with `Host: host` from `addr` on a connection of its own:
/// the whole response (empty if none came).
fn http_get(addr: &str, host: &str, path: &str) -> String {
    let Ok(mut c) = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
    else {
        return String::new();
    };
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of an HTTP response (empty if it has none).
fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s; policy: {:#}",
            get("/api/policy")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The decisions of `rule` so far: (transition, dry run).
fn decisions(rule: &str) -> Vec<(String, bool)> {
    let p = get("/api/policy");
    p["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["rule"] == rule)
        .map(|d| {
            (
                d["transition"].as_str().unwrap_or("").to_string(),
                d["dry_run"] == true,
            )
        })
        .collect()
}

/// Whether the policy has made the `transition` ("fire", "revert") of
/// `rule`.
fn decided(rule: &str, transition: &str) -> bool {
    decisions(rule).iter().any(|d| d.0 == transition)
}

fn function_of(device: &str) -> String {
    get(&format!("/api/devices/{device}"))["function"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// `shmnet ctl --manager … --secret-file … ARGS`; panics if it fails.
fn ctl(args: &[&str]) -> String {
    ctl_at(MANAGER, SECRET, args)
}

/// [`ctl`] of the manager at `manager`, with the secret in `secret`.
fn ctl_at(manager: &str, secret: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args([
            "ctl",
            "--manager",
            &format!("http://{manager}"),
            "--secret-file",
            secret,
        ])
        .args(args)
        .output()
        .expect("run shmnet ctl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ctl {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn write_file(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("shmnet-policy-test-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

/// One request to the balancer's VIP: the body (empty if none came).
fn via_vip() -> String {
    body(&http_get("10.93.0.100:80", "vip", "/")).to_string()
}

fn pattern(at: u64) -> u8 {
    (at % 251) as u8
}

#[test]
fn a_busy_edge_is_shaped_and_reverts_with_the_stream_intact() {
    let _lock = lock_tap_or_skip!("ip" => "iproute2");
    let (run, _setup) = start(&[]);
    assert_eq!(function_of("edge"), "passthrough");
    let c = connect("10.91.0.4:7".parse().unwrap());
    let mut r = c.try_clone().unwrap();
    let mut w = c;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        std::thread::spawn(move || {
            let mut at = 0u64;
            let mut buf = vec![0u8; 64 << 10];
            while !stop.load(Ordering::Relaxed) {
                for b in buf.iter_mut() {
                    *b = pattern(at);
                    at += 1;
                }
                w.write_all(&buf).expect("send");
                sent.store(at, Ordering::Relaxed);
            }
            w.shutdown(std::net::Shutdown::Write).unwrap();
            at
        })
    };
    let reader = std::thread::spawn(move || {
        let mut at = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = r.read(&mut buf).expect("receive");
            if n == 0 {
                return at;
            }
            for &b in &buf[..n] {
                assert_eq!(b, pattern(at), "byte {at} came back changed");
                at += 1;
            }
        }
    });
    wait_until("edge shaped", 30, || {
        decided("shape-busy-edge", "fire") && function_of("edge") == "qos"
    });
    // The stream goes on through the shaper for a while.
    let at_swap = sent.load(Ordering::Relaxed);
    let t0 = Instant::now();
    while sent.load(Ordering::Relaxed) < at_swap + (8 << 20)
        && t0.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = writer.join().unwrap();
    let got = reader.join().unwrap();
    assert_eq!(got, sent, "every byte sent came back");
    assert!(sent > at_swap, "the stream went on after the swap");
    wait_until("edge back to passthrough", 60, || {
        decided("shape-busy-edge", "revert") && function_of("edge") == "passthrough"
    });
    run.stop();
}

/// `n` connection attempts (SYNs) from `src` to `dst` over `secs` seconds,
/// never waiting for an answer.
fn syn_flood(src: &str, dst: &str, n: u32, secs: f64) {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, bind, connect, socket_with};
    let src: SocketAddr = format!("{src}:0").parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    let mut open = std::collections::VecDeque::new();
    for _ in 0..n {
        let fd = socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::NONBLOCK,
            None,
        )
        .expect("socket");
        bind(&fd, &src).expect("bind the flood's source");
        let _ = connect(&fd, &dst);
        open.push_back(fd);
        if open.len() > 200 {
            open.pop_front();
        }
        std::thread::sleep(Duration::from_secs_f64(secs / f64::from(n)));
    }
}

#[test]
fn a_syn_flood_from_one_prefix_is_dropped_and_others_go_on() {
    let _lock = lock_tap_or_skip!("ip" => "iproute2");
    let (run, mut setup) = start(&[]);
    let mut legit = connect("10.92.0.4:7".parse().unwrap());
    echo_once(&mut legit, b"before the flood");
    setup.add_address("10.90.0.200/24");
    let flood = std::thread::spawn(|| syn_flood("10.90.0.200", "10.92.0.4:7", 1500, 5.0));
    wait_until("the flood's prefix dropped", 30, || {
        decided("block-syn-flood", "fire")
    });
    wait_until("fw's rule 0 is a drop", 10, || {
        get("/api/devices/fw/config")["function"]
            .as_str()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .is_some_and(|t| t["rule"][0]["action"].as_str() == Some("drop"))
    });
    flood.join().unwrap();
    // 10.90.0.1's connection lived through it, and new ones are made
    // (once the echo server's slots that flood connections held time out:
    // their closes were dropped with the prefix).
    echo_once(&mut legit, b"after the flood");
    let mut fresh = connect("10.92.0.4:7".parse().unwrap());
    echo_once(&mut fresh, b"a new connection");
    let dropped = get("/api/devices/fw")["counters"]["function.dropped"]
        .as_u64()
        .unwrap_or(0);
    assert!(dropped > 0, "the firewall dropped the flood's SYNs");
    wait_until("the prefix allowed again", 60, || {
        decided("block-syn-flood", "revert")
    });
    run.stop();
}

/// Takes web2 down and up again; returns the VIP's answers while it was
/// down and after it came back.
fn fail_and_recover_web2() -> (Vec<String>, Vec<String>) {
    let sink = write_file("sink.toml", "kind = \"sink\"\n");
    let web2 = write_file(
        "web2.toml",
        "kind = \"http-server\"\nname = \"web2\"\nroutes = [{ path = \"/\", body = \"hello from web2\\n\" }]\n",
    );
    // web2 gets the function in `file`; once the policy made `transition`
    // (`what`), the VIP's answers.
    let answers_after = |file: &Path, what: &str, transition: &str| -> Vec<String> {
        ctl(&["set", "web2", "--function", file.to_str().unwrap()]);
        wait_until(what, 20, || decided("drop-failed-backend", transition));
        std::thread::sleep(Duration::from_millis(500));
        (0..12).map(|_| via_vip()).collect()
    };
    let down = answers_after(&sink, "web2's probe failing acted on", "fire");
    let up = answers_after(&web2, "web2 back", "revert");
    let _ = std::fs::remove_file(sink);
    let _ = std::fs::remove_file(web2);
    (down, up)
}

#[test]
fn a_failing_backend_leaves_the_service_and_returns_in_both_modes() {
    let _lock = lock_tap_or_skip!("ip" => "iproute2");
    for mode in [&[][..], &["--mode", "process"][..]] {
        let (run, _setup) = start(mode);
        let before: Vec<String> = (0..12).map(|_| via_vip()).collect();
        assert!(
            before.iter().any(|b| b.contains("web2")),
            "{mode:?}: {before:?}"
        );
        let (down, up) = fail_and_recover_web2();
        assert!(
            down.iter().all(|b| b == "hello from web1\n"),
            "{mode:?}: web2 still served: {down:?}"
        );
        assert!(
            up.iter().any(|b| b.contains("web2")),
            "{mode:?}: web2 did not come back: {up:?}"
        );
        assert!(up.iter().all(|b| !b.is_empty()), "{mode:?}: {up:?}");
        run.stop();
    }
}

#[test]
fn dry_run_decides_and_changes_nothing() {
    let _lock = lock_tap_or_skip!("ip" => "iproute2");
    let (run, _setup) = start(&["--dry-run"]);
    let sink = write_file("dry-sink.toml", "kind = \"sink\"\n");
    ctl(&["set", "web2", "--function", sink.to_str().unwrap()]);
    wait_until("a dry-run decision", 20, || {
        decisions("drop-failed-backend")
            .iter()
            .any(|d| d.0 == "fire" && d.1)
    });
    std::thread::sleep(Duration::from_secs(1));
    let cfg = get("/api/devices/lb/config")["function"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        cfg.contains("10.91.0.12:80"),
        "the balancer was changed: {cfg}"
    );
    assert_eq!(get("/api/policy")["dry_run"], true);
    let _ = std::fs::remove_file(sink);
    run.stop();
}

/// `GET /` with `Host: host` at `addr`: the status (0 if none came).
fn status_of(addr: &str, host: &str) -> u16 {
    http_get(addr, host, "/")
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_application_answering_errors_is_throttled_and_restored() {
    // examples/manager's policy: the proxy's `shop` application gets a
    // lower rate limit while its answers are 5xx.
    let _lock = lock_tap_or_skip!("ip" => "iproute2");
    const M: &str = "10.82.0.2:9100";
    const S: &str = "/tmp/shmnet-manager.secret";
    let run = run_example("manager", "shmtap3", &[]);
    let rate_limit = || {
        get_at(M, "/api/devices/proxy/config")["function"]
            .as_str()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .and_then(|t| t["apps"][0]["rate"].as_float())
    };
    let shop = |rule_transition: &str| {
        get_at(M, "/api/policy")["decisions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["rule"] == "shop-errors-throttle" && d["transition"] == rule_transition)
    };
    wait_until("the proxy polled", 30, || rate_limit() == Some(1000.0));
    assert_eq!(status_of("10.82.0.4:80", "shop"), 200);
    let sink = write_file("shop-sink.toml", "kind = \"sink\"\n");
    let web = write_file(
        "shop-web.toml",
        "kind = \"http-server\"\nname = \"web\"\nroutes = [{ path = \"/\", body = \"hello from web\\n\" }]\n",
    );
    ctl_at(M, S, &["set", "web", "--function", sink.to_str().unwrap()]);
    let t0 = Instant::now();
    while !shop("fire") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no decision: {:#}",
            get_at(M, "/api/policy")
        );
        assert!([502, 503].contains(&status_of("10.82.0.4:80", "shop")));
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_until("the limit lowered", 10, || rate_limit() == Some(10.0));
    ctl_at(M, S, &["set", "web", "--function", web.to_str().unwrap()]);
    wait_until("the limit restored", 30, || {
        shop("revert") && rate_limit() == Some(1000.0)
    });
    assert_eq!(status_of("10.82.0.4:80", "shop"), 200);
    let _ = std::fs::remove_file(sink);
    let _ = std::fs::remove_file(web);
    run.stop();
}
