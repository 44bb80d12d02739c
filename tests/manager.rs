//! The management plane with real peers: examples/manager/topology.toml as
//! written (TAP `shmtap3`, Linux at 10.82.0.1/24, the manager's API at
//! 10.82.0.2:9100) driven by curl, promtool, a real Prometheus server,
//! `shmnet ctl`, tshark, the kernel's TCP stack and sealed management
//! messages sent from here to the firewall's agent (10.82.0.3:9101).
//!
//! Covered: every device up in the API and in `shmnet_up`, in thread and
//! process mode; Prometheus scraping the manager; a function changed
//! through the API while bad configurations and tokenless requests are
//! refused; the agent refusing replays, wrong keys and garbage while it
//! keeps serving; a capture decoded by tshark; probes; the data plane
//! outliving a killed manager and a new manager taking over; the API
//! under load while 16 MiB cross the firewall intact.
//!
//! Each test skips, saying why, without /dev/net/tun, root, curl or ip (and
//! skips the parts that need promtool, prometheus, tshark or ping where
//! those are missing). TAP tests take the TAP test lock; the interface
//! goes with the run, and routes, processes and files a test made go with
//! the test, however it ends.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shmnet::wire::mgmt::{self, Key, Kind, MgmtRepr, Op, Status};
use shmnet::wire::mgmt_payload::{self, Identity};

use common::tap::*;
use common::*;

const TAP: &str = "shmtap3";
const MANAGER: &str = "http://10.82.0.2:9100";
const MANAGER_ADDR: &str = "10.82.0.2:9100";
const FW: &str = "10.82.0.3";
const FW_AGENT: &str = "10.82.0.3:9101";
const ECHO: &str = "10.86.0.4:7";
const SECRET: &str = "/tmp/shmnet-manager.secret";
const DEVICES: [&str; 4] = ["fw", "echo", "proxy", "web"];
/// How long the manager may take to see every device up.
const UP_WITHIN: Duration = Duration::from_secs(20);

fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/manager")
        .join(file)
}

/// The topology's secret file, removed when dropped if the run created it
/// (a secret that was there before the test stays).
struct SecretFile {
    created: bool,
}

impl SecretFile {
    fn new() -> SecretFile {
        SecretFile {
            created: !Path::new(SECRET).exists(),
        }
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(SECRET);
        }
    }
}

/// A directory of the test's, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("shmnet-{}", unique(tag)));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process of the test's, killed and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Linux's route to the firewall's back network through the TAP, removed
/// when dropped (or with the interface).
struct BackRoute;

const ROUTE: [&str; 5] = ["10.86.0.0/24", "via", FW, "dev", TAP];

impl BackRoute {
    fn add() -> BackRoute {
        let ok = Command::new("ip")
            .args(["route", "add"])
            .args(ROUTE)
            .status()
            .is_ok_and(|s| s.success());
        // Without it, 10.86.0.x would go the host's default way: stop here.
        assert!(ok, "ip route add {}", ROUTE.join(" "));
        BackRoute
    }
}

impl Drop for BackRoute {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["route", "del"])
            .args(ROUTE)
            .stderr(Stdio::null())
            .status();
    }
}

/// `shmnet run` of the example (`--mode process` if `process`), once the
/// manager sees every device up, and the secret file it makes.
fn start(process: bool) -> (Run, SecretFile) {
    let secret = SecretFile::new();
    let mut args = vec!["--duration", "300"];
    if process {
        args.extend(["--mode", "process"]);
    }
    let run = run_example("manager", TAP, &args);
    wait_all_up(UP_WITHIN);
    (run, secret)
}

/// curl with `args`: whether it succeeded, its stdout and stderr.
fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `GET path` of the manager as JSON (None if it did not answer with
/// JSON).
fn get_json(path: &str) -> Option<Value> {
    let (ok, out, _) = curl(&["--max-time", "3", &format!("{MANAGER}{path}")]);
    ok.then(|| serde_json::from_str(&out).ok()).flatten()
}

fn metrics() -> String {
    let (ok, out, err) = curl(&[&format!("{MANAGER}/metrics")]);
    assert!(ok, "GET /metrics: {err}");
    out
}

/// The value of the sample of `metrics` whose name and labels start with
/// `prefix` (e.g. `shmnet_up{device="fw",`).
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Every device's `up` in `GET /api/devices`, by name.
fn devices_up() -> Vec<(String, bool)> {
    let Some(v) = get_json("/api/devices") else {
        return Vec::new();
    };
    v["devices"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|d| {
                    (
                        d["name"].as_str().unwrap_or("").to_string(),
                        d["up"] == Value::Bool(true),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the API lists fw, echo, proxy and web, each up.
fn wait_all_up(within: Duration) {
    let t0 = Instant::now();
    loop {
        let up = devices_up();
        if DEVICES
            .iter()
            .all(|name| up.iter().any(|(n, u)| n == name && *u))
        {
            return;
        }
        assert!(
            t0.elapsed() < within,
            "not every device up in the API after {within:?}: {up:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `check` every 200 ms until it holds; false after `within`.
fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if check() {
            return true;
        }
        if t0.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `shmnet ctl --manager … --secret-file … ARGS`.
fn ctl(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["ctl", "--manager", MANAGER, "--secret-file", SECRET])
        .args(args)
        .output()
        .expect("run shmnet ctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// fw's counter `name` as the manager last polled it.
fn fw_counter(name: &str) -> Option<u64> {
    get_json("/api/devices/fw")?["counters"][name].as_u64()
}

/// fw's function configuration as the manager holds it (TOML).
fn fw_config() -> String {
    let v = get_json("/api/devices/fw/config").expect("GET /api/devices/fw/config");
    v["function"].as_str().unwrap_or_default().to_string()
}

fn ping(address: &str) -> bool {
    Command::new("ping")
        .args(["-c", "1", "-W", "2", address])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn example_serves_api_metrics_and_ctl_in_both_modes() {
    let _lock = lock_tap_or_skip!("curl" => "curl", "ip" => "iproute2");
    for process in [false, true] {
        let mode = if process { "process" } else { "thread" };
        let (run, _secret) = start(process);

        let text_metrics = metrics();
        if have("promtool") {
            let mut check = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run promtool");
            check
                .stdin
                .take()
                .unwrap()
                .write_all(text_metrics.as_bytes())
                .unwrap();
            let out = check.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{mode}: promtool check metrics: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        } else {
            eprintln!("promtool is not installed: the metrics text is not checked by it");
        }
        for d in DEVICES {
            assert_eq!(
                sample(&text_metrics, &format!("shmnet_up{{device=\"{d}\",")),
                Some(1.0),
                "{mode}: shmnet_up of {d}:\n{text_metrics}"
            );
        }

        let out = ctl(&["devices"]);
        assert!(out.status.success(), "{mode}: {}", text(&out.stderr));
        let listed = text(&out.stdout);
        for d in DEVICES {
            assert!(
                listed
                    .lines()
                    .any(|l| l.starts_with(&format!("{d} ")) && l.contains(" up ")),
                "{mode}: {d} not listed up:\n{listed}"
            );
        }

        let out = ctl(&["stats", "fw"]);
        assert!(out.status.success(), "{mode}: {}", text(&out.stderr));
        let stats = text(&out.stdout);
        assert!(stats.starts_with("fw [firewall] 10.82.0.3 up"), "{stats}");
        // The manager's own polls went through fw's agent.
        let requests = stats
            .lines()
            .find_map(|l| l.strip_prefix("agent.requests"))
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert!(requests.is_some_and(|n| n > 0), "{mode}:\n{stats}");
        assert!(stats.contains("\nframes_in "), "{mode}:\n{stats}");

        assert_eq!(run.stop(), 0, "{mode}: the run's exit code");
    }
}

#[test]
fn prometheus_scrapes_every_device_up() {
    let _lock = lock_tap_or_skip!(
        "curl" => "curl",
        "ip" => "iproute2",
        "prometheus" => "prometheus",
    );
    let (run, _secret) = start(false);

    let dir = TempDir::new("prom");
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: shmnet\n    static_configs:\n      \
             - targets: ['{MANAGER_ADDR}']\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.0.join("prometheus.log")).unwrap();
    let prometheus = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let query = |q: &str| -> Vec<Value> {
        let url = format!("http://127.0.0.1:{port}/api/v1/query?query={q}");
        let (_, out, _) = curl(&["--max-time", "2", &url]);
        serde_json::from_str::<Value>(&out)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    };
    let one = |s: &Value| s["value"][1] == Value::String("1".into());
    let target_up = eventually(Duration::from_secs(30), || {
        query("up")
            .iter()
            .any(|s| s["metric"]["instance"] == MANAGER_ADDR && one(s))
    });
    let log = || std::fs::read_to_string(dir.0.join("prometheus.log")).unwrap_or_default();
    assert!(target_up, "the manager is not up in Prometheus:\n{}", log());
    let mut series = Vec::new();
    let all = eventually(Duration::from_secs(10), || {
        series = query("shmnet_up");
        let mut devices: Vec<&str> = series
            .iter()
            .filter(|s| one(s))
            .filter_map(|s| s["metric"]["device"].as_str())
            .collect();
        devices.sort();
        series.len() == DEVICES.len() && devices == ["echo", "fw", "proxy", "web"]
    });
    assert!(all, "shmnet_up in Prometheus: {series:?}");
    drop(prometheus);
    drop(dir);
    run.stop();
}

#[test]
fn set_function_applies_and_bad_configs_and_tokens_are_refused() {
    let _lock = lock_tap_or_skip!("curl" => "curl", "ip" => "iproute2");
    let (run, _secret) = start(false);
    let dir = TempDir::new("mset");
    let file = |name: &str, body: &str| {
        let p = dir.0.join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    assert!(
        fw_config().contains("default = \"drop\""),
        "{}",
        fw_config()
    );

    // An open firewall: applied, and the manager's copy follows.
    let open = file("open.toml", "kind = \"firewall\"\ndefault = \"accept\"\n");
    let out = ctl(&["set", "fw", "--function", &open]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("fw: function firewall applied"), "{said}");
    assert!(
        eventually(Duration::from_secs(5), || fw_config()
            .contains("default = \"accept\"")),
        "the config did not follow: {}",
        fw_config()
    );

    // A config the firewall refuses, a kind no one knows: exit 1, the
    // reason printed, nothing changed.
    for (name, body, why) in [
        (
            "maybe.toml",
            "kind = \"firewall\"\ndefault = \"maybe\"\n",
            "maybe",
        ),
        ("teleport.toml", "kind = \"teleport\"\n", "teleport"),
    ] {
        let out = ctl(&["set", "fw", "--function", &file(name, body)]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(why) && err.contains("422"), "{name}: {err}");
    }
    assert!(
        eventually(Duration::from_secs(5), || fw_counter(
            "agent.changes_refused"
        ) == Some(2)),
        "refusals counted: {:?}",
        fw_counter("agent.changes_refused")
    );
    assert_eq!(fw_counter("agent.changes_applied"), Some(1));
    let config = fw_config();
    assert!(config.contains("default = \"accept\""), "{config}");
    assert!(!config.contains("[[rule]]"), "{config}");

    // A PUT without the token: 401, counted.
    let before = sample(&metrics(), "shmnet_manager_http_unauthorized_total ").unwrap();
    let (_, code, _) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "PUT",
        "--data-binary",
        "kind = \"passthrough\"",
        &format!("{MANAGER}/api/devices/fw/function"),
    ]);
    assert_eq!(code, "401");
    let after = sample(&metrics(), "shmnet_manager_http_unauthorized_total ").unwrap();
    assert!(after > before, "unauthorized {before} → {after}");
    assert!(fw_config().contains("default = \"accept\""));
    run.stop();
}

/// A client id no other session of the agent's has used.
fn client_id() -> u32 {
    let mut b = [0u8; 4];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).unwrap();
    u32::from_ne_bytes(b)
}

/// A sealed request `op` with an empty body.
fn request(op: Op, client: u32, seq: u64, key: &Key) -> Vec<u8> {
    let r = MgmtRepr {
        kind: Kind::Request,
        op: op as u8,
        status: 0,
        client,
        seq,
        time_ms: shmnet::wire::mgmt::unix_ms(),
        body: b"",
    };
    mgmt::seal(&r, key).unwrap()
}

/// One whole message from `s`; None if the peer closed (or reset) first.
fn read_msg(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(n) = mgmt::frame_len(&buf).expect("a response the format allows")
            && buf.len() >= n
        {
            assert_eq!(buf.len(), n, "bytes after the response");
            return Some(buf);
        }
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read from the agent: {e} (after {} bytes)", buf.len()),
        }
    }
}

/// Whether the peer closed `s` (EOF or reset) within its read timeout.
fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn agent_session() -> TcpStream {
    let s = connect(FW_AGENT.parse().unwrap());
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Identify on a fresh session: fw's identity.
fn identify(key: &Key) -> Identity {
    let mut s = agent_session();
    let client = client_id();
    s.write_all(&request(Op::Identify, client, 1, key)).unwrap();
    let msg = read_msg(&mut s).expect("an answer to Identify");
    let r = mgmt::open(&msg, key).expect("a response sealed with the secret");
    assert_eq!(
        (r.kind, r.status, r.op, r.client, r.seq),
        (
            Kind::Response,
            Status::Ok as u8,
            Op::Identify as u8,
            client,
            1
        ),
        "{}",
        text(r.body)
    );
    mgmt_payload::from_toml::<Identity>(r.body).expect("an Identity body")
}

#[test]
fn agent_refuses_replays_wrong_keys_and_garbage() {
    let _lock = lock_tap_or_skip!("curl" => "curl", "ip" => "iproute2");
    let (run, _secret) = start(false);
    let key = Key::from_file(SECRET).expect("the topology's secret");

    let id = identify(&key);
    assert_eq!((id.name.as_str(), id.function.as_str()), ("fw", "firewall"));
    assert!(id.forward);
    assert_eq!(id.local.address, "10.82.0.3/24");

    // The same bytes twice: the second is a replay, and the session stays.
    let mut s = agent_session();
    let client = client_id();
    let msg = request(Op::Identify, client, 1, &key);
    s.write_all(&msg).unwrap();
    let first = read_msg(&mut s).expect("an answer");
    assert_eq!(mgmt::open(&first, &key).unwrap().status, Status::Ok as u8);
    s.write_all(&msg).unwrap();
    let again = read_msg(&mut s).expect("an answer to the replay");
    let r = mgmt::open(&again, &key).unwrap();
    assert_eq!(r.status, Status::Replay as u8, "{}", text(r.body));
    assert_eq!((r.client, r.seq), (client, 1));

    // Sealed with another key: unauthorized, then the session is closed.
    let wrong = Key::new(b"not the deployment's secret at all").unwrap();
    s.write_all(&request(Op::Counters, client, 2, &wrong))
        .unwrap();
    let refused = read_msg(&mut s).expect("an answer to the wrong key");
    let r = mgmt::open(&refused, &key).unwrap();
    assert_eq!(r.status, Status::Unauthorized as u8, "{}", text(r.body));
    assert!(closed(&mut s), "the session stayed open after a bad tag");

    // Both are counted, and the manager shows it.
    assert!(
        eventually(Duration::from_secs(10), || {
            fw_counter("agent.replayed").is_some_and(|n| n >= 1)
                && fw_counter("agent.unauthorized").is_some_and(|n| n >= 1)
        }),
        "counters: replayed {:?}, unauthorized {:?}",
        fw_counter("agent.replayed"),
        fw_counter("agent.unauthorized")
    );

    // Garbage (bad magic): the session ends, the device does not.
    let mut g = agent_session();
    let mut garbage = vec![0u8; 200];
    Rng(0x5eed).fill(&mut garbage);
    garbage[..4].copy_from_slice(b"JUNK");
    g.write_all(&garbage).unwrap();
    assert!(closed(&mut g), "the agent kept a session sending garbage");
    if have("ping") {
        assert!(ping(FW), "fw stopped answering ping after garbage");
    } else {
        eprintln!("ping is not installed: fw is checked through its agent only");
    }
    assert_eq!(identify(&key).name, "fw", "the agent after garbage");
    assert!(
        eventually(Duration::from_secs(10), || {
            fw_counter("agent.bad_requests").is_some_and(|n| n >= 1)
        }),
        "bad requests: {:?}",
        fw_counter("agent.bad_requests")
    );
    wait_all_up(Duration::from_secs(5));
    run.stop();
}

#[test]
fn capture_of_fw_holds_the_pings() {
    let _lock = lock_tap_or_skip!("curl" => "curl", "ip" => "iproute2", "ping" => "iputils-ping");
    let (run, _secret) = start(false);
    let dir = TempDir::new("mcap");
    let pcap = dir.0.join("fw.pcap");

    let pinger = Proc(
        Command::new("ping")
            .args(["-i", "0.2", "-c", "30", FW])
            .stdout(Stdio::null())
            .spawn()
            .expect("start ping"),
    );
    let out = ctl(&[
        "capture",
        "fw",
        "local",
        "--for",
        "2s",
        "-w",
        pcap.to_str().unwrap(),
    ]);
    drop(pinger);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("fw: captured "),
        "{}",
        text(&out.stdout)
    );
    let len = std::fs::metadata(&pcap).map(|m| m.len()).unwrap_or(0);
    assert!(len > 24, "{}: {len} bytes", pcap.display());

    if !have("tshark") {
        eprintln!("tshark is not installed: the capture is not decoded");
    } else {
        let out = Command::new("tshark")
            .arg("-r")
            .arg(&pcap)
            .args(["-Y", "icmp", "-T", "fields", "-e", "icmp.type"])
            .output()
            .expect("run tshark");
        assert!(out.status.success(), "tshark: {}", text(&out.stderr));
        let types = text(&out.stdout);
        // 8: echo request from Linux, 0: fw's echo reply.
        assert!(
            types.lines().any(|t| t == "8") && types.lines().any(|t| t == "0"),
            "ICMP types in the capture: {types:?}"
        );
    }
    run.stop();
}

#[test]
fn probes_find_echo_and_web() {
    let _lock = lock_tap_or_skip!("curl" => "curl", "ip" => "iproute2");
    let (run, _secret) = start(false);

    let out = ctl(&["--json", "probe", "echo", ECHO, "--count", "50"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (
            v["sent"].as_u64(),
            v["received"].as_u64(),
            v["loss"].as_f64()
        ),
        (Some(50), Some(50), Some(0.0)),
        "{v}"
    );
    let out = ctl(&["probe", "echo", ECHO, "--count", "50"]);
    assert!(
        text(&out.stdout).contains("50 sent, 50 received, 0.0% loss"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let web_up = eventually(Duration::from_secs(10), || {
        sample(&metrics(), "shmnet_probe_up{probe=\"web\",") == Some(1.0)
    });
    assert!(web_up, "{}", metrics());
    run.stop();
}

/// An HTTP server on Linux (the TAP's address) that answers each request
/// in two writes 200 ms apart, the first 76 bytes of the head alone: a
/// client must put the head together from pieces. Serves `n` requests.
fn piecewise_http_server(n: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("10.82.0.1:0").expect("listen on the TAP address");
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let body = "served by Linux in pieces\n";
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Padding: {}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            "p".repeat(100),
            body.len()
        );
        for _ in 0..n {
            let Ok((mut c, _)) = l.accept() else { return };
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.set_nodelay(true).unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => req.extend_from_slice(&b[..k]),
                }
            }
            let _ = c.write_all(&answer.as_bytes()[..76]);
            std::thread::sleep(Duration::from_millis(200));
            let _ = c.write_all(&answer.as_bytes()[76..]);
        }
    });
    (addr, h)
}

#[test]
fn http_probe_reads_a_head_that_comes_in_pieces() {
    let _lock = lock_tap_or_skip!("curl" => "curl", "ip" => "iproute2");
    let (run, _secret) = start(false);
    let (addr, server) = piecewise_http_server(3);

    let target = addr.to_string();
    let out = ctl(&[
        "--json",
        "probe",
        "linux",
        &target,
        "--kind",
        "http",
        "--count",
        "3",
        "--interval",
        "50ms",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (v["sent"].as_u64(), v["received"].as_u64()),
        (Some(3), Some(3)),
        "{v}"
    );
    server.join().unwrap();
    // The manager is still there.
    wait_all_up(Duration::from_secs(5));
    run.stop();
}

/// The process of a process-mode run whose command line ends in
/// `manager.toml`.
fn manager_process(run: &Run) -> Option<u32> {
    let parent = run.pid().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // pid (comm) state ppid …: comm may hold spaces, so after the ')'.
        let ppid = stat.rsplit(')').next()?.split_whitespace().nth(1)?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let last = cmdline.split(|&b| b == 0).rfind(|a| !a.is_empty())?;
        (ppid == parent && last.ends_with(b"manager.toml")).then_some(pid)
    })
}

/// Sends `msg` to the echo server through fw and expects it back.
fn echo_through_fw(msg: &[u8]) {
    echo_once(&mut connect(ECHO.parse().unwrap()), msg);
}

#[test]
fn devices_outlive_a_killed_manager_and_a_new_one_takes_over() {
    let _lock = lock_tap_or_skip!("curl" => "curl", "ip" => "iproute2");
    let (run, _secret) = start(true);

    let pid = manager_process(&run).expect("the manager's process");
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    );
    // The run reaps it at once.
    let gone = eventually(Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(gone, "the manager did not die");
    assert!(
        get_json("/api/devices").is_none(),
        "the API answers with the manager dead"
    );

    // The data plane goes on: Linux through fw to echo.
    let route = BackRoute::add();
    echo_through_fw(b"still here after the manager died\n");
    if have("ping") {
        assert!(ping(FW), "fw does not answer ping");
    }

    // A new manager, started by hand, finds every device again.
    let log = TempDir::new("mgr2");
    let out = std::fs::File::create(log.0.join("manager.log")).unwrap();
    let manager = Proc(
        Command::new(BIN)
            .arg("device")
            .arg(example("manager.toml"))
            .env("SHMNET_SECRET_FILE", SECRET)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start a manager"),
    );
    let up = eventually(Duration::from_secs(10), || {
        let up = devices_up();
        DEVICES
            .iter()
            .all(|name| up.iter().any(|(n, u)| n == name && *u))
    });
    let printed = || std::fs::read_to_string(log.0.join("manager.log")).unwrap_or_default();
    assert!(up, "the new manager: {:?}\n{}", devices_up(), printed());
    echo_through_fw(b"and with the new one\n");

    // SIGTERM: it detaches cleanly.
    let mut manager = manager;
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(&manager.0),
        rustix::process::Signal::TERM,
    );
    let status = manager.0.wait().unwrap();
    assert!(status.success(), "the new manager: {status}\n{}", printed());
    drop(route);
    // The run went on without it, and says it lost it.
    let (_, said) = run.stop_with_output();
    assert!(said.contains("manager: exited (signal: 9"), "{said}");
}

/// `GET /api/devices` on a keep-alive connection (a new one if the
/// manager closes it), one every `every`, for `during`; returns (sent,
/// answered with 200 and JSON).
fn api_client(every: Duration, during: Duration) -> (u64, u64) {
    let addr: SocketAddr = MANAGER_ADDR.parse().unwrap();
    let mut conn: Option<TcpStream> = None;
    let (mut sent, mut ok) = (0u64, 0u64);
    let t0 = Instant::now();
    let mut buf = Vec::new();
    while t0.elapsed() < during {
        let due = every * sent as u32;
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let c = conn.get_or_insert_with(|| {
            let c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c
        });
        sent += 1;
        if c.write_all(b"GET /api/devices HTTP/1.1\r\nHost: manager\r\n\r\n")
            .is_err()
        {
            conn = None;
            continue;
        }
        match read_response(c, &mut buf) {
            Some((200, body)) if body.starts_with(b"{") => ok += 1,
            Some(_) => {}
            None => conn = None,
        }
    }
    (sent, ok)
}

/// One HTTP response from `c` (status, body); None if the connection
/// ended. `buf` keeps what came after it.
fn read_response(c: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u16, Vec<u8>)> {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                let n = c.read(&mut chunk).ok().filter(|&n| n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..total].to_vec();
            buf.drain(..total);
            return Some((status, body));
        }
        let n = c.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn api_under_load_while_16_mib_cross_fw() {
    let _lock = lock_tap_or_skip!("curl" => "curl", "ip" => "iproute2");
    let (run, _secret) = start(false);
    let route = BackRoute::add();

    // 4 clients × 250 requests/s for 3 s, next to the transfer.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| api_client(Duration::from_millis(4), Duration::from_secs(3)))
        })
        .collect();
    stream_intact(ECHO.parse().unwrap(), 16 << 20);
    for (i, c) in clients.into_iter().enumerate() {
        let (sent, ok) = c.join().expect("an API client");
        assert!(sent > 0, "client {i} sent nothing");
        assert_eq!(ok, sent, "client {i}: {ok} of {sent} requests answered");
        eprintln!("API client {i}: {ok} of {sent} requests answered");
    }
    wait_all_up(Duration::from_secs(5));
    drop(route);
    run.stop();
}
