//! The memory cache with real peers: libmemcached's `memccapable` passes
//! every ASCII test against the example topology's cache device through
//! its TAP port, and a script of every command (pymemcache plus raw meta
//! commands, `tests/cache/compare.py`) gets the same answers from the
//! cache as from a real memcached on 127.0.0.1.
//!
//! Each test skips, saying why, without TUN/TAP, root, or the Debian
//! packages memcached, libmemcached-tools and python3-pymemcache. The
//! tests hold a lock file so that they never run the example's TAP
//! interface twice at once.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::have;

const BIN: &str = env!("CARGO_BIN_EXE_shmnet");
const CACHE: &str = "10.80.0.2:11211";
/// Debian's interpreter, where python3-pymemcache installs.
const PYTHON: &str = "/usr/bin/python3";

fn skip_reason() -> Option<&'static str> {
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun: this kernel or container has no TUN/TAP");
    }
    if !rustix::process::geteuid().is_root() {
        return Some("not root: creating TAP interfaces needs CAP_NET_ADMIN");
    }
    None
}

macro_rules! skip_unless {
    ($($tool:expr),*) => {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        $(if !have($tool) {
            eprintln!("skipped: {} is not installed (Debian: memcached, libmemcached-tools)", $tool);
            return;
        })*
    };
}

fn have_pymemcache() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import pymemcache"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Keeps the tests that run the example's TAP interface apart.
fn tap_lock() -> std::fs::File {
    let lock = std::fs::File::create(std::env::temp_dir().join("shmnet-tap-test.lock"))
        .expect("lock file");
    lock.lock().expect("lock");
    lock
}

/// A child process killed (SIGKILL) when the test ends, passing or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `shmnet run` of the example, once its TAP port is up and the cache
/// accepts connections.
fn run_example() -> Killed {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cache/topology.toml");
    let mut child = Command::new(BIN)
        .arg("run")
        .arg(&example)
        .args(["--duration", "300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shmnet run");
    let out = child.stdout.take().expect("stdout");
    let mut run = Killed(child);
    let mut lines = BufReader::new(out).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with("tap shmtap1 ready"));
    if !ready {
        let mut err = String::new();
        let _ = run.0.stderr.take().map(|mut e| e.read_to_string(&mut err));
        panic!("the run ended before its TAP port was ready: {err}");
    }
    // Keep draining so the run never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    wait_connect(CACHE.parse().unwrap());
    run
}

fn wait_connect(addr: SocketAddr) {
    let t0 = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(_) => return,
            Err(e) if t0.elapsed() > Duration::from_secs(15) => panic!("connect {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn memccapable_passes_every_ascii_test() {
    skip_unless!("memccapable");
    let _lock = tap_lock();
    let _run = run_example();
    let out = Command::new("memccapable")
        .args(["-h", "10.80.0.2", "-p", "11211", "-a"])
        .output()
        .expect("run memccapable");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "memccapable failed:\n{text}");
    assert!(text.contains("All tests passed"), "{text}");
    assert!(!text.contains("[FAIL]"), "{text}");
}

#[test]
fn every_command_answers_as_a_real_memcached() {
    skip_unless!("memcached");
    if !have_pymemcache() {
        eprintln!("skipped: {PYTHON} has no pymemcache (Debian: python3-pymemcache)");
        return;
    }
    let _lock = tap_lock();
    // A free port on loopback for the real memcached.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let memcached = Killed(
        Command::new("memcached")
            .args(["-u", "root", "-U", "0", "-l", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start memcached"),
    );
    wait_connect(SocketAddr::from(([127, 0, 0, 1], port)));
    let _run = run_example();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cache/compare.py");
    let answers = |host: &str, port: u16| {
        let out = Command::new(PYTHON)
            .arg(&script)
            .arg(host)
            .arg(port.to_string())
            .output()
            .expect("run the comparison script");
        assert!(
            out.status.success(),
            "script against {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let real = answers("127.0.0.1", port);
    let ours = answers("10.80.0.2", 11211);
    drop(memcached);
    assert!(real.lines().count() > 90, "{real}");
    for (r, o) in real.lines().zip(ours.lines()) {
        assert_eq!(o, r, "shmnet's cache (left) and memcached (right) differ");
    }
    assert_eq!(real.lines().count(), ours.lines().count());
}
