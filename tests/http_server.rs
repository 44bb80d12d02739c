//! `kind = "http-server"` against curl, a client no one here wrote: a
//! topology with a TAP port (`shmtap3`, Linux at 10.82.0.1/24) and the
//! server at 10.82.0.2:80. GET with `X-Served-By`, HEAD, a reused
//! keep-alive connection, a 64 MiB generated body, 404, and a garbage
//! request (from nc) answered with 400.
//!
//! Skips, saying why, without /dev/net/tun, root, curl or nc. TAP tests
//! take the TAP test lock, so they never run two at a time; the
//! interface goes with the run, however the test ends.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tap::*;
use common::*;

const TAP: &str = "shmtap3";
const SERVER: &str = "10.82.0.2";
const BIG: u64 = 64 << 20;

/// `shmnet run` of the test's topology (a TAP port and an http-server),
/// once its TAP port is ready; its directory goes with it.
fn start() -> Run {
    let tag = unique("http");
    let dir = std::env::temp_dir().join(format!("shmnet-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let topology = format!(
        r#"name = "http-server-test"
[[tap]]
name = "{TAP}"
segment = "{tag}-lan"
address = "10.82.0.1/24"

[[device]]
name = "web"
local = {{ segment = "{tag}-lan", address = "{SERVER}/24" }}
global = {{ segment = "{tag}-wan", address = "10.182.0.2/16" }}
[device.function]
kind = "http-server"
name = "web1"
routes = [
    {{ path = "/", exact = true, body = "hello from web1\n" }},
    {{ path = "/a", body = "a\n", headers = {{ "Cache-Control" = "max-age=60" }} }},
    {{ path = "/big", size = {BIG} }},
]
"#
    );
    let file = dir.join("topology.toml");
    std::fs::write(&file, topology).unwrap();
    let mut run = Run::start(&file, &["--duration", "300"]).removing(dir);
    run.wait_ready(TAP);
    run
}

/// curl with `args`; its stdout and stderr.
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "60"])
        .args(args)
        .output()
        .expect("run curl");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn url(path: &str) -> String {
    format!("http://{SERVER}{path}")
}

/// curl of `urls` (each body thrown away) with `args`: what its
/// `--write-out` `format` said of each, and its stderr.
fn curl_write_out(args: &[&str], format: &str, urls: &[&str]) -> (String, String) {
    let mut all = args.to_vec();
    all.extend(["-w", format]);
    for &u in urls {
        all.extend(["-o", "/dev/null", u]);
    }
    curl(&all)
}

/// Waits until the server answers (its route via the TAP is up).
fn wait_answering() {
    let t0 = Instant::now();
    loop {
        let (code, _) = curl_write_out(&["--max-time", "2"], "%{http_code}", &[&url("/")]);
        if code == "200" {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no answer from {SERVER}: {code}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of header `name` in curl's `--include` / `--head` output.
fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn curl_gets_heads_reuses_downloads_64_mib_and_garbage_gets_400() {
    let _lock = lock_tap_or_skip!("curl" => "curl", "nc" => "netcat-openbsd");
    let run = start();
    wait_answering();

    // GET /: 200, the server's name, the body.
    let (out, err) = curl(&["--include", &url("/")]);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}{err}");
    assert_eq!(header(&out, "X-Served-By"), Some("web1"), "{out}");
    assert!(out.ends_with("\r\n\r\nhello from web1\n"), "{out}");
    let (out, _) = curl(&["--include", &url("/a/b")]);
    assert_eq!(header(&out, "Cache-Control"), Some("max-age=60"), "{out}");

    // HEAD: the GET's length, no body.
    let (out, err) = curl(&["--head", &url("/big")]);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}{err}");
    assert_eq!(
        header(&out, "Content-Length"),
        Some(&*BIG.to_string()),
        "{out}"
    );
    assert!(out.ends_with("\r\n\r\n"), "{out}");

    // Two URLs in one curl: the second reuses the first's connection.
    let (out, err) = curl_write_out(
        &["--verbose"],
        "%{http_code} %{num_connects}\n",
        &[&url("/"), &url("/a")],
    );
    assert_eq!(out, "200 1\n200 0\n", "{err}");
    assert!(err.contains("Re-using existing connection"), "{err}");

    // 64 MiB of generated body, complete.
    let (out, err) = curl_write_out(&[], "%{http_code} %{size_download}", &[&url("/big")]);
    assert_eq!(out, format!("200 {BIG}"), "{err}");

    // Unrouted: 404.
    let (out, _) = curl_write_out(&[], "%{http_code}", &[&url("/nope")]);
    assert_eq!(out, "404");

    // Garbage from nc: 400, and the server closes.
    let mut nc = Command::new("nc")
        .args(["-N", "-w", "10", SERVER, "80"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run nc (netcat-openbsd)");
    std::io::Write::write_all(&mut nc.stdin.take().unwrap(), b"GARBAGE\r\n\r\n").unwrap();
    let out = nc.wait_with_output().expect("nc");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert_eq!(header(&out, "Connection"), Some("close"), "{out}");
    drop(run);
}
