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

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::run_ok;
use common::tap::*;

const CACHE: &str = "10.80.0.2:11211";
/// Debian's interpreter, where python3-pymemcache installs.
const PYTHON: &str = "/usr/bin/python3";

fn have_pymemcache() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import pymemcache"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A child process (the real memcached) killed when the test ends,
/// passing or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `shmnet run` of the example, once its TAP port is up and the cache
/// accepts connections.
fn run_cache_example() -> Run {
    let run = run_example("cache", "shmtap1", &["--duration", "300"]);
    connect(CACHE.parse().unwrap());
    run
}

#[test]
fn memccapable_passes_every_ascii_test() {
    let _lock = lock_tap_or_skip!("memccapable" => "libmemcached-tools");
    let _run = run_cache_example();
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
    if !have_pymemcache() {
        eprintln!("skipped: {PYTHON} has no pymemcache (Debian: python3-pymemcache)");
        return;
    }
    let _lock = lock_tap_or_skip!("memcached" => "memcached");
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
    connect(SocketAddr::from(([127, 0, 0, 1], port)));
    let _run = run_cache_example();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cache/compare.py");
    let answers = |host: &str, port: u16| {
        run_ok(
            Command::new(PYTHON)
                .arg(&script)
                .arg(host)
                .arg(port.to_string()),
        )
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
