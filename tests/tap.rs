//! TAP ports with real peers: Linux's `ping` and the kernel's own TCP stack
//! reach an echo device through a TAP interface, in thread and process
//! mode; the interface goes when the run ends or is killed; without
//! CAP_NET_ADMIN a run fails saying so and leaves nothing behind.
//!
//! Each test skips, saying why, where the kernel has no TUN/TAP or the test
//! runs without the privilege to make interfaces.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tap::*;
use common::*;

fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Waits until the interface is gone (the kernel removes it when the last
/// descriptor closes).
fn wait_gone(name: &str) -> bool {
    let t0 = Instant::now();
    while interface_exists(name) {
        if t0.elapsed() > Duration::from_secs(10) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn ping(address: &str) -> bool {
    Command::new("ping")
        .args(["-c", "3", "-W", "2", "-i", "0.2", address])
        .stdout(Stdio::null())
        .status()
        .expect("run ping (Debian package iputils-ping)")
        .success()
}

#[test]
fn the_example_answers_ping_and_echoes_64_mib_from_linux() {
    let _lock = lock_tap_or_skip!("ping" => "iputils-ping", "setpriv" => "util-linux");
    let run = run_example("tap", "shmtap0", &["--duration", "60"]);
    connect("10.77.0.2:7".parse().unwrap());
    assert!(ping("10.77.0.2"), "ping 10.77.0.2 through shmtap0");
    stream_intact("10.77.0.2:7".parse().unwrap(), 64 << 20);
    assert_eq!(run.stop(), 0);
    assert!(wait_gone("shmtap0"), "shmtap0 outlived its run");
}

/// A Linux client that reads slower than it writes: its receive window
/// and the echo device's both close, again and again. Every byte must
/// still come back (smoltcp alone would stall here and reset the
/// connection: see `wire::tcp::shave_window`).
#[test]
fn a_slow_reader_on_linux_gets_every_byte_back() {
    let _lock = lock_tap_or_skip!();
    let run = run_example("tap", "shmtap0", &["--duration", "120"]);
    connect("10.77.0.2:7".parse().unwrap());
    stream_intact_paced(
        "10.77.0.2:7".parse().unwrap(),
        32 << 20,
        Duration::from_micros(500),
    );
    assert_eq!(run.stop(), 0);
}

/// Linux's UDP segmentation offload: one `sendto` of 5300 bytes with
/// `UDP_SEGMENT` 1000 reaches the TAP as one super-datagram (where the
/// kernel hands it over whole); the echo device must still see, and send
/// back, six datagrams (5 × 1000 + 300), each intact.
#[test]
fn a_udp_gso_send_from_linux_reaches_the_device_as_separate_datagrams() {
    let _lock = lock_tap_or_skip!("python3" => "python3");
    let run = run_example("tap", "shmtap0", &["--duration", "60"]);
    connect("10.77.0.2:7".parse().unwrap());
    let script = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_UDP, 103, 1000)  # UDP_SEGMENT
s.settimeout(5)
data = bytes((i * 7) % 251 for i in range(5300))
s.sendto(data, ("10.77.0.2", 7))
got = []
while sum(map(len, got)) < len(data):
    got.append(s.recv(65536))
print(" ".join(str(len(g)) for g in got), b"".join(got) == data)
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), "1000 1000 1000 1000 1000 300 True");
    assert_eq!(run.stop(), 0);
}

#[test]
fn the_tcp_proxy_example_relays_concurrent_linux_streams_to_both_echo_devices() {
    let _lock = lock_tap_or_skip!("ping" => "iputils-ping", "setpriv" => "util-linux");
    let run = run_example("tcp-proxy", "shmtap4", &["--duration", "120"]);
    connect("10.83.0.2:7".parse().unwrap());
    let clients: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| stream_intact("10.83.0.2:7".parse().unwrap(), 16 << 20)))
        .collect();
    for c in clients {
        c.join()
            .expect("a stream through the proxy came back intact");
    }
    let (code, out) = run.stop_with_output();
    assert_eq!(code, 0, "{out}");
    // The probe connection of `connect` and the four streams.
    assert!(out.contains("listener.7.connections=5"), "{out}");
    assert!(
        out.contains("listener.7.bytes_up=67108864") && out.contains("listener.7.resets=0"),
        "{out}"
    );
    // Least connections spread the concurrent streams over both devices.
    for echo in ["echo-a", "echo-b"] {
        let line = out
            .lines()
            .skip_while(|l| !l.starts_with(echo))
            .find(|l| l.contains("tcp_bytes_echoed="))
            .unwrap_or_else(|| panic!("no counters of {echo}: {out}"));
        assert!(
            !line.contains("tcp_bytes_echoed=0 "),
            "{echo} got nothing: {out}"
        );
    }
    assert!(wait_gone("shmtap4"), "shmtap4 outlived its run");
}

/// `curl ARGS`: its standard output and error, and whether it succeeded.
fn curl(args: &[&str]) -> (String, bool) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (text, out.status.success())
}

#[test]
fn curl_reaches_three_backends_through_the_http_proxy_example() {
    let _lock = lock_tap_or_skip!(
        "ping" => "iputils-ping",
        "setpriv" => "util-linux",
        "curl" => "curl",
    );
    let run = run_example("proxy", "shmtap2", &["--duration", "120"]);
    connect("10.81.0.2:80".parse().unwrap());
    // Successive requests, each on its own connection, go round robin.
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let (out, ok) = curl(&["-i", "http://10.81.0.2/"]);
        assert!(ok && out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("Via: 1.1 shmnet"), "{out}");
        let by = out
            .lines()
            .find_map(|l| l.strip_prefix("X-Served-By: "))
            .unwrap_or_else(|| panic!("no X-Served-By: {out}"));
        assert!(out.contains(&format!("hello from {}", by.trim())), "{out}");
        served.insert(by.trim().to_string());
    }
    assert_eq!(served.len(), 3, "{served:?}");
    // Two requests in one curl run share the client connection.
    let (out, ok) = curl(&[
        "-v",
        "http://10.81.0.2/static/a",
        "http://10.81.0.2/static/b",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("Re-using existing connection"), "{out}");
    assert_eq!(out.matches("a static file").count(), 2, "{out}");
    // The first answer of /static/a was stored: the next comes with Age.
    let (out, ok) = curl(&["-i", "http://10.81.0.2/static/a"]);
    assert!(ok && out.contains("X-Served-By: web1"), "{out}");
    assert!(out.contains("Age: "), "{out}");
    let (code, out) = run.stop_with_output();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("responses_2xx=6"), "{out}");
    assert!(out.contains("cache_hits=1 "), "{out}");
    assert!(wait_gone("shmtap2"), "shmtap2 outlived its run");
}

/// A topology with one TAP port and one echo device, in its own directory
/// and subnet; `n` keeps the tests of this file apart.
struct TapTopology {
    dir: PathBuf,
    tap: String,
    echo: String,
}

impl TapTopology {
    fn new(n: u8, mode: &str) -> TapTopology {
        let tag = unique("tap");
        let dir = std::env::temp_dir().join(format!("shmnet-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let tap = format!("shmt{}x{n}", std::process::id() % 100_000);
        let subnet = format!("10.76.{}", 10 + n);
        std::fs::write(
            dir.join("echo.toml"),
            format!(
                "name = \"echo\"\nfunction = {{ kind = \"echo\" }}\n\
                 local = {{ segment = \"{tag}-lan\", address = \"{subnet}.2/24\", mtu = 9000 }}\n\
                 global = {{ segment = \"{tag}-wan\", address = \"10.176.{n}.2/24\" }}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("topology.toml"),
            format!(
                "name = \"tap-test\"\nmode = \"{mode}\"\n\
                 [[tap]]\nname = \"{tap}\"\nsegment = \"{tag}-lan\"\naddress = \"{subnet}.1/24\"\n\
                 [[device]]\nfile = \"echo.toml\"\n"
            ),
        )
        .unwrap();
        // Readable by the unprivileged user of the capability test.
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&dir)
            .status();
        TapTopology {
            dir,
            tap,
            echo: format!("{subnet}.2"),
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("topology.toml")
    }

    /// `shmnet run` of the topology, once its TAP port is up.
    fn run(&self) -> Run {
        let mut run = Run::start(&self.file(), &["--duration", "60"]);
        run.wait_ready(&self.tap);
        run
    }
}

impl Drop for TapTopology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn process_mode_reaches_linux_and_removes_the_interface_on_stop() {
    let _lock = lock_tap_or_skip!("ping" => "iputils-ping", "setpriv" => "util-linux");
    let t = TapTopology::new(1, "process");
    let run = t.run();
    // The TAP's MTU is the network's.
    let mtu = std::fs::read_to_string(format!("/sys/class/net/{}/mtu", t.tap)).unwrap();
    assert_eq!(mtu.trim(), "9000");
    assert!(ping(&t.echo));
    stream_intact(format!("{}:7", t.echo).parse().unwrap(), 16 << 20);
    assert_eq!(run.stop(), 0);
    assert!(wait_gone(&t.tap), "{} outlived its run", t.tap);
}

#[test]
fn a_killed_run_leaves_no_interface_behind() {
    let _lock = lock_tap_or_skip!("ping" => "iputils-ping", "setpriv" => "util-linux");
    let t = TapTopology::new(2, "thread");
    let run = t.run();
    assert!(interface_exists(&t.tap));
    drop(run); // SIGKILL
    assert!(wait_gone(&t.tap), "{} outlived a killed run", t.tap);
    // The next run makes it again.
    let run = t.run();
    assert!(ping(&t.echo));
    assert_eq!(run.stop(), 0);
}

#[test]
fn without_cap_net_admin_the_run_fails_saying_so_and_leaves_nothing() {
    let _lock = lock_tap_or_skip!("ping" => "iputils-ping", "setpriv" => "util-linux");
    for (n, mode) in [(3, "thread"), (4, "process")] {
        let t = TapTopology::new(n, mode);
        let runtime = t.dir.join("runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        let _ = Command::new("chmod").arg("777").arg(&runtime).status();
        // As nobody, with no capabilities.
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(BIN)
            .arg("run")
            .arg(t.file())
            .args(["--duration", "10"])
            .env("SHMNET_RUNTIME_DIR", &runtime)
            .output()
            .expect("run setpriv (util-linux)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{mode}: {err}");
        assert!(
            err.contains("CAP_NET_ADMIN") && err.contains(&t.tap),
            "{mode}: {err}"
        );
        assert!(!interface_exists(&t.tap));
        let left: Vec<_> = std::fs::read_dir(&runtime).unwrap().collect();
        assert!(left.is_empty(), "{mode}: left behind {left:?}");
    }
}
