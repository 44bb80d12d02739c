//! Running a topology with a TAP port as `shmnet run`, for the tests that
//! drive devices with Linux programs: whether this machine can, the lock
//! that keeps those tests apart, the run itself (of an example or any
//! topology), a connect that waits for the device behind the TAP and the
//! checks of what an echo device sends back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_shmnet");

/// Why TAP ports cannot be made here, if they cannot.
pub fn tap_unavailable() -> Option<&'static str> {
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun: this kernel or container has no TUN/TAP");
    }
    if !rustix::process::geteuid().is_root() {
        return Some("not root: creating TAP interfaces needs CAP_NET_ADMIN");
    }
    None
}

/// Why a test that drives a TAP topology with `tools` (a command and the
/// Debian package that has it) cannot run here, if it cannot.
pub fn tap_skip_reason(tools: &[(&str, &str)]) -> Option<String> {
    if let Some(why) = tap_unavailable() {
        return Some(why.to_string());
    }
    tools
        .iter()
        .find(|(t, _)| !super::have(t))
        .map(|(t, pkg)| format!("{t} ({pkg}) is not installed"))
}

/// Ends the test, saying why, when it cannot run here
/// ([`tap_skip_reason`]); else takes the TAP test lock ([`tap_lock`]),
/// held while the value lives:
/// `let _lock = lock_tap_or_skip!("curl" => "curl");`.
#[macro_export]
macro_rules! lock_tap_or_skip {
    ($($tool:expr => $pkg:expr),* $(,)?) => {
        match common::tap::tap_skip_reason(&[$(($tool, $pkg)),*]) {
            Some(why) => {
                eprintln!("skipped: {why}");
                return;
            }
            None => common::tap::tap_lock(),
        }
    };
}

/// The lock the tests with TAP topologies share, held while it lives.
pub fn tap_lock() -> std::fs::File {
    let lock = std::fs::File::create(std::env::temp_dir().join("shmnet-tap-test.lock"))
        .expect("lock file");
    lock.lock().expect("lock");
    lock
}

/// `shmnet run` of `examples/NAME/topology.toml` with `args`, once its
/// TAP port `tap` is ready.
pub fn run_example(name: &str, tap: &str, args: &[&str]) -> Run {
    let topology = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .join("topology.toml");
    let mut run = Run::start(&topology, args);
    run.wait_ready(tap);
    run
}

/// `shmnet run TOPOLOGY ARGS…`, killed (SIGKILL) if the test ends first,
/// with what it printed once its TAP port was ready; a directory of the
/// test's is removed with it.
pub struct Run {
    child: Child,
    output: Arc<Mutex<String>>,
    dir: Option<PathBuf>,
}

impl Run {
    /// Starts the run.
    pub fn start(topology: &Path, args: &[&str]) -> Run {
        let child = Command::new(BIN)
            .arg("run")
            .arg(topology)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shmnet run");
        Run {
            child,
            output: Default::default(),
            dir: None,
        }
    }

    /// Removes `dir` when the run is dropped.
    pub fn removing(mut self, dir: PathBuf) -> Run {
        self.dir = Some(dir);
        self
    }

    /// The process id of `shmnet run` (the parent of a process-mode run's
    /// devices).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the `tap NAME ready` line.
    pub fn wait_ready(&mut self, name: &str) {
        let out = self.child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let want = format!("tap {name} ready");
        for line in lines.by_ref() {
            let line = line.expect("read stdout");
            if line.starts_with(&want) {
                // Keep reading so the run never blocks on a full pipe.
                let out = Arc::clone(&self.output);
                std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        let mut out = out.lock().unwrap();
                        out.push_str(&line);
                        out.push('\n');
                    }
                });
                return;
            }
        }
        let mut err = String::new();
        let _ = self
            .child
            .stderr
            .take()
            .map(|mut e| e.read_to_string(&mut err));
        panic!("the run ended before its TAP port was ready: {err}");
    }

    /// SIGTERM, then the exit code.
    pub fn stop(self) -> i32 {
        self.stop_with_output().0
    }

    /// SIGTERM, then the exit code and what the run printed once its TAP
    /// port was ready (its counters at the end).
    pub fn stop_with_output(mut self) -> (i32, String) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let status = self.child.wait().expect("wait");
        // The reader ends with the pipe, once the run has exited.
        let t0 = Instant::now();
        while Arc::strong_count(&self.output) > 1 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = self.output.lock().unwrap().clone();
        (status.code().unwrap_or(-1), out)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Connects once the device behind the TAP answers (15 s at most).
pub fn connect(addr: SocketAddr) -> TcpStream {
    let t0 = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(c) => return c,
            Err(e) if t0.elapsed() > Duration::from_secs(15) => panic!("connect {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Sends `msg` on `c` and expects the same bytes back (within 5 s).
pub fn echo_once(c: &mut TcpStream, msg: &[u8]) {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).expect("the echo answers");
    assert_eq!(back, msg);
}

/// Streams `bytes` of a pattern to the echo server at `addr` with the
/// kernel's TCP and checks every byte that comes back.
pub fn stream_intact(addr: SocketAddr, bytes: usize) {
    stream_intact_paced(addr, bytes, Duration::ZERO);
}

/// [`stream_intact`] with a reader that waits `pause` after each read of
/// up to 64 KiB: slower than the device, so both windows close.
pub fn stream_intact_paced(addr: SocketAddr, bytes: usize, pause: Duration) {
    const PERIOD: usize = 256 * 1024;
    let mut c = connect(addr);
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = c.try_clone().unwrap();
    // Two periods of the pattern: any read of up to a period, at any
    // offset, is one slice of it.
    let twice: std::sync::Arc<[u8]> = (0..2 * PERIOD).map(|i| pattern_byte(i as u64)).collect();
    let expected = std::sync::Arc::clone(&twice);
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; if pause.is_zero() { PERIOD } else { 64 * 1024 }];
        let mut got = 0usize;
        while got < bytes {
            std::thread::sleep(pause);
            let n = r.read(&mut buf).expect("read the echo");
            assert!(n > 0, "the echo ended after {got} of {bytes} bytes");
            let at = got % PERIOD;
            if buf[..n] != expected[at..at + n] {
                let i = (0..n).find(|&i| buf[i] != expected[at + i]).unwrap_or(0);
                panic!("byte {} differs", got + i);
            }
            got += n;
        }
    });
    let mut sent = 0usize;
    while sent < bytes {
        let n = (bytes - sent).min(PERIOD);
        c.write_all(&twice[..n]).expect("write");
        sent += n;
    }
    reader.join().expect("every byte came back intact");
}

/// The echo server's pattern, repeating every 256 KiB.
pub fn pattern_byte(offset: u64) -> u8 {
    shmnet::functions::diag::pattern_byte(offset % (256 * 1024))
}
