//! `shmnet ctl` against a fake manager: a thread answering canned JSON
//! that records what the command sent (method, target, headers, body).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::thread::JoinHandle;

use shmnet::functions::socket::manager::api::api_token;

/// A request as the fake manager received it.
#[derive(Debug)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }
    fn header(&self, name: &str) -> Option<String> {
        header(&self.head, name)
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// An answer of the fake manager.
struct Answer {
    status: u16,
    body: String,
    /// Sent chunked (in two chunks) instead of with Content-Length.
    chunked: bool,
}

fn ok(body: &str) -> Answer {
    Answer {
        status: 200,
        body: body.into(),
        chunked: false,
    }
}

/// Answers one connection per answer, in order; returns its URL and what
/// it received.
fn fake_manager(answers: Vec<Answer>) -> (String, JoinHandle<Vec<Seen>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for a in answers {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "closed before the head ended");
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let len: usize = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
            let mut body = buf[end..].to_vec();
            while body.len() < len {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "closed mid-body");
                body.extend_from_slice(&chunk[..n]);
            }
            let mut out = format!(
                "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nConnection: close\r\n",
                a.status
            );
            if a.chunked {
                let (x, y) = a.body.split_at(a.body.len() / 2);
                out += &format!(
                    "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{x}\r\n{:x}\r\n{y}\r\n0\r\n\r\n",
                    x.len(),
                    y.len()
                );
            } else {
                out += &format!("Content-Length: {}\r\n\r\n{}", a.body.len(), a.body);
            }
            s.write_all(out.as_bytes()).unwrap();
            seen.push(Seen { head, body });
        }
        seen
    });
    (url, h)
}

fn ctl(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shmnet"))
        .arg("ctl")
        .args(["--manager", url])
        .args(args)
        .env_remove("SHMNET_MANAGER")
        .env_remove("SHMNET_SECRET_FILE")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

const DEVICES: &str = r#"{"devices":[
    {"name":"edge","function":"passthrough","address":"10.82.0.3","up":true,"uptime_s":12.5,"last_poll_ms":120,"error":null},
    {"name":"core","function":"qos","address":"10.82.0.4","up":false,"uptime_s":null,"last_poll_ms":null,"error":"timeout"}]}"#;

const DEVICE: &str = r#"{"name":"edge","function":"qos","address":"10.82.0.3","up":true,
    "identity":{"version":"0.1.0","uptime_s":3725.0,"local":{"address":"10.82.0.3/24","mac":"02:00:00:00:00:03","mtu":1500},"global":null},
    "counters":{"local.rx_frames":123,"forwarded":5,"function.class.gold.bytes":0}}"#;

#[test]
fn devices_are_listed_as_a_table() {
    let (url, h) = fake_manager(vec![ok(DEVICES)]);
    let out = stdout(&ctl(&url, &["devices"]));
    let seen = h.join().unwrap();
    assert_eq!(seen[0].request_line(), "GET /api/devices HTTP/1.1");
    assert_eq!(seen[0].header("connection").as_deref(), Some("close"));
    let lines: Vec<&str> = out.lines().collect();
    let cols = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        cols(lines[0]),
        ["NAME", "FUNCTION", "ADDRESS", "UP", "UPTIME"]
    );
    assert_eq!(
        cols(lines[1]),
        ["edge", "passthrough", "10.82.0.3", "up", "12.5s"]
    );
    assert_eq!(
        cols(lines[2]),
        ["core", "qos", "10.82.0.4", "down", "(timeout)", "-"]
    );
}

#[test]
fn stats_lists_every_counter_sorted_from_a_chunked_answer() {
    let (url, h) = fake_manager(vec![Answer {
        status: 200,
        body: DEVICE.into(),
        chunked: true,
    }]);
    let out = stdout(&ctl(&url, &["stats", "edge"]));
    assert_eq!(
        h.join().unwrap()[0].request_line(),
        "GET /api/devices/edge HTTP/1.1"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "edge [qos] 10.82.0.3 up, uptime 1h02m");
    let names: Vec<&str> = lines[2..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["forwarded", "function.class.gold.bytes", "local.rx_frames"]
    );
    assert!(lines[4].ends_with(" 123"), "{out}");
}

#[test]
fn stats_watch_adds_rates() {
    let later = DEVICE.replace("\"local.rx_frames\":123", "\"local.rx_frames\":173");
    let (url, _h) = fake_manager(vec![ok(DEVICE), ok(&later)]);
    // The third poll finds nobody listening: the watch ends with an error
    // after printing two rounds.
    let o = ctl(&url, &["stats", "edge", "--watch", "0.5"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("RATE/s"), "{out}");
    let rx: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("local.rx_frames"))
        .collect();
    assert_eq!(rx.len(), 2, "{out}");
    assert!(rx[0].ends_with(" -"), "{out}");
    let rate: f64 = rx[1].split_whitespace().last().unwrap().parse().unwrap();
    // 50 frames over at least the half second between polls.
    assert!(rate > 0.0 && rate <= 100.0, "{out}");
}

#[test]
fn set_sends_the_function_table_with_the_token() {
    let dir = std::env::temp_dir().join(format!("shmnet-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    let hex = "00112233445566778899aabbccddeeff";
    std::fs::write(&secret, format!("{hex}\n")).unwrap();
    let f = dir.join("qos.toml");
    std::fs::write(
        &f,
        "name = \"edge\"\n[function]\nkind = \"qos\"\n[[function.class]]\nname = \"gold\"\n",
    )
    .unwrap();
    let (url, h) = fake_manager(vec![
        ok(r#"{"ok":true,"applied":"in-place","function":"qos"}"#),
        Answer {
            status: 422,
            body: r#"{"ok":false,"error":"qos: class gold: rate is missing"}"#.into(),
            chunked: false,
        },
    ]);
    let args = [
        "--secret-file",
        secret.to_str().unwrap(),
        "set",
        "edge",
        "--function",
        f.to_str().unwrap(),
    ];
    assert_eq!(
        stdout(&ctl(&url, &args)).trim(),
        "edge: function qos applied (in place)"
    );
    let refused = ctl(&url, &args);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("HTTP 422: qos: class gold: rate is missing"),
        "{err}"
    );
    let seen = h.join().unwrap();
    assert_eq!(
        seen[0].request_line(),
        "PUT /api/devices/edge/function HTTP/1.1"
    );
    let key: Vec<u8> = (0..16).map(|i| (i as u8) * 0x11).collect();
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {}", api_token(&key)))
    );
    let sent: toml::Table = toml::from_str(std::str::from_utf8(&seen[0].body).unwrap()).unwrap();
    assert_eq!(sent["kind"].as_str(), Some("qos"));
    assert!(!sent.contains_key("name"), "the device's name was sent");
    assert_eq!(sent["class"][0]["name"].as_str(), Some("gold"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn set_without_a_secret_says_how_to_give_one() {
    let o = ctl(
        "http://127.0.0.1:9",
        &["set", "edge", "--function", "x.toml"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--secret-file"), "{err}");
}

#[test]
fn capture_starts_waits_and_stops() {
    let secret = std::env::temp_dir().join(format!("shmnet-ctl-cap-{}", std::process::id()));
    std::fs::write(&secret, "s3cret").unwrap();
    let (url, h) = fake_manager(vec![
        ok(r#"{"ok":true,"adapter":"global","file":"/x/c.pcap"}"#),
        ok(r#"{"ok":true,"frames":12,"bytes":3456}"#),
    ]);
    let o = ctl(
        &url,
        &[
            "--secret-file",
            secret.to_str().unwrap(),
            "capture",
            "edge",
            "global",
            "--for",
            "200ms",
            "-w",
            "c.pcap",
        ],
    );
    let out = stdout(&o);
    assert!(out.contains("captured 12 frames, 3456 bytes"), "{out}");
    let seen = h.join().unwrap();
    assert_eq!(
        seen[0].request_line(),
        "POST /api/devices/edge/capture HTTP/1.1"
    );
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["adapter"], "global");
    let file = body["file"].as_str().unwrap();
    assert!(file.starts_with('/') && file.ends_with("/c.pcap"), "{file}");
    assert_eq!(
        seen[1].request_line(),
        "DELETE /api/devices/edge/capture?adapter=global HTTP/1.1"
    );
    assert_eq!(
        seen[1].header("authorization"),
        Some(format!("Bearer {}", api_token(b"s3cret")))
    );
    std::fs::remove_file(&secret).unwrap();
}

#[test]
fn policy_shows_rules_and_decisions() {
    let (url, _h) = fake_manager(vec![ok(r#"{"file":"policy.toml","dry_run":true,
        "rules":[{"name":"shed","state":"fired","since_ms":1500,"fired":2,"reverted":1,"suppressed":0}],
        "decisions":[{"id":7,"at_ms":1500,"rule":"shed","transition":"fire","why":"rx rate 9000/s > 5000/s",
                      "actions":["set edge qos"],"results":["ok: in place"]}],
        "counters":{}}"#)]);
    let out = stdout(&ctl(&url, &["policy"]));
    assert!(out.starts_with("policy policy.toml (dry run)\n"), "{out}");
    let rule = out.lines().nth(2).unwrap();
    assert_eq!(
        rule.split_whitespace().collect::<Vec<_>>(),
        ["shed", "fired", "1500", "2", "1", "0"]
    );
    assert!(
        out.contains("#7 at 1500 ms: shed fire: rx rate 9000/s > 5000/s"),
        "{out}"
    );
    assert!(out.contains("action: set edge qos") && out.contains("result: ok: in place"));
}

#[test]
fn probe_prints_loss_and_rtt() {
    let secret = std::env::temp_dir().join(format!("shmnet-ctl-probe-{}", std::process::id()));
    std::fs::write(&secret, "s").unwrap();
    let (url, h) = fake_manager(vec![ok(
        r#"{"kind":"tcp","target":"10.0.0.3:80","sent":100,
        "received":99,"loss":0.01,"rtt_ms":{"min":0.1,"avg":0.2,"max":1.5}}"#,
    )]);
    let o = ctl(
        &url,
        &[
            "probe",
            "edge",
            "10.0.0.3:80",
            "--interval",
            "5ms",
            "--count",
            "100",
            "--secret-file",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(
        stdout(&o).trim(),
        "tcp 10.0.0.3:80 (edge) from the manager: 100 sent, 99 received, 1.0% loss; \
         rtt min/avg/max 0.100/0.200/1.500 ms"
    );
    let seen = h.join().unwrap();
    assert_eq!(seen[0].request_line(), "POST /api/probe HTTP/1.1");
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"device":"edge","target":"10.0.0.3:80","kind":"tcp","count":100,"interval_ms":5})
    );
    std::fs::remove_file(&secret).unwrap();
}

#[test]
fn json_prints_the_answer_as_is() {
    let (url, _h) = fake_manager(vec![ok(DEVICES)]);
    let out = stdout(&ctl(&url, &["devices", "--json"]));
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        printed,
        serde_json::from_str::<serde_json::Value>(DEVICES).unwrap()
    );
    assert!(out.contains("\n  \"devices\""), "not pretty: {out}");
}

#[test]
fn errors_name_the_manager_and_what_to_do() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let o = ctl(&url, &["devices"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&url) && err.contains("is the manager running"),
        "{err}"
    );

    let (url, _h) = fake_manager(vec![Answer {
        status: 404,
        body: r#"{"ok":false,"error":"no device nope"}"#.into(),
        chunked: false,
    }]);
    let o = ctl(&url, &["stats", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("HTTP 404: no device nope"));

    let o = Command::new(env!("CARGO_BIN_EXE_shmnet"))
        .args(["ctl", "devices"])
        .env_remove("SHMNET_MANAGER")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--manager"));
}
