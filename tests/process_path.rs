//! The data path with devices as separate OS processes (`shmnet device`)
//! on named host segments: bulk transfer, a peer killed with SIGKILL, and a
//! segment left behind by a killed device.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use shmnet::shm::{Segment, SegmentKind};
use shmnet::stack::Device;

const BIN: &str = env!("CARGO_BIN_EXE_shmnet");

/// A device process; killed (and reaped) when dropped.
struct Proc {
    name: String,
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn start(dir: &std::path::Path, name: &str, device: &DeviceToml) -> Proc {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, device.to_string()).unwrap();
        let mut child = Command::new(BIN)
            .arg("device")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shmnet device");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        for (stream, sink) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                Arc::clone(&out),
            ),
            (Box::new(child.stderr.take().unwrap()), Arc::clone(&err)),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Proc {
            name: name.into(),
            child,
            out,
            err,
        }
    }

    fn output(&self) -> String {
        format!(
            "{} stdout: {:?}\nstderr: {:?}",
            self.name,
            self.out.lock().unwrap(),
            self.err.lock().unwrap()
        )
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the "device NAME ready" line.
    fn wait_ready(&mut self) {
        let t0 = Instant::now();
        let needle = format!("device {} ready", self.name);
        while !self.out.lock().unwrap().iter().any(|l| l.contains(&needle)) {
            assert!(
                self.alive(),
                "{} exited early: {}",
                self.name,
                self.output()
            );
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "not ready: {}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit; returns its exit code and stdout.
    fn wait_exit(&mut self, limit: Duration) -> (i32, String) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(t0.elapsed() < limit, "did not exit: {}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the reader threads drain the pipes.
        std::thread::sleep(Duration::from_millis(100));
        (
            status.code().unwrap_or(-1),
            self.out.lock().unwrap().join("\n"),
        )
    }

    fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test's named host segments `lan` and `wan` (unlinked when dropped,
/// also on failure) and a directory for its device files.
struct HostNets {
    lan: String,
    wan: String,
    mtu: u32,
    dir: PathBuf,
}

impl HostNets {
    fn new(mtu: u32) -> HostNets {
        let (lan, wan) = (unique("lan"), unique("wan"));
        let dir = std::env::temp_dir().join(format!("shmnet-proc-{}-{lan}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        HostNets { lan, wan, mtu, dir }
    }

    /// Host `host` of both networks running `function`.
    fn device(&self, name: &str, host: u8, function: &str) -> DeviceToml {
        DeviceToml::host(name, &self.lan, &self.wan, host)
            .mtu(self.mtu)
            .function(function)
    }

    /// [`device`](Self::device) as a process.
    fn start(&self, name: &str, host: u8, function: &str) -> Proc {
        Proc::start(&self.dir, name, &self.device(name, host, function))
    }
}

impl Drop for HostNets {
    fn drop(&mut self) {
        for s in [&self.lan, &self.wan] {
            let _ = Segment::unlink(s);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn probe(target: &str, bytes: u64, timeout: &str) -> String {
    format!(r#"{{ kind = "probe", tcp = ["{target}"], bytes = {bytes}, timeout = "{timeout}" }}"#)
}

const ECHO: &str = r#"{ kind = "echo", tcp_buffer = 4194304 }"#;

fn tcp_64mib(mtu: u32) {
    let net = HostNets::new(mtu);
    let mut server = net.start("server", 2, ECHO);
    server.wait_ready();
    let mut client = net.start("client", 1, &probe("10.0.0.2:7", 67108864, "2m"));
    let (code, out) = client.wait_exit(Duration::from_secs(240));
    assert_eq!(code, 0, "{}", client.output());
    assert!(out.contains("67108864 bytes echoed intact"), "{out}");
    assert!(server.alive(), "{}", server.output());
}

#[test]
fn process_tcp_64mib_mtu_1500() {
    tcp_64mib(1500);
}

#[test]
fn process_tcp_64mib_mtu_9000() {
    tcp_64mib(9000);
}

#[test]
fn process_tcp_64mib_mtu_65535() {
    tcp_64mib(65535);
}

#[test]
fn sigkill_of_a_device_leaves_the_others_working() {
    let net = HostNets::new(9000);
    let mut b = net.start("b", 2, ECHO);
    let mut c = net.start("c", 3, ECHO);
    b.wait_ready();
    c.wait_ready();

    // D: a device of this process on the same host segments, exchanging
    // with C before and after A dies.
    let d = net.device("d", 4, &probe("10.0.0.3:7", 1 << 20, "30s"));
    let (dh, dt) = Device::new(&d.settings(), SegmentKind::Host)
        .expect("D joins the host segments")
        .spawn();
    let report = wait_finished(&dh, Duration::from_secs(60));
    assert!(
        report.iter().any(|l| l.contains("bytes echoed intact")),
        "{report:?}"
    );

    // A: a long streaming transfer to B (64 GiB), killed in the middle.
    let mut a = net.start("a", 1, &probe("10.0.0.2:7", 1 << 36, "1h"));
    a.wait_ready();
    let inode = |seg: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/dev/shm/shmnet.{seg}"))
            .expect("host segment exists")
            .ino()
    };
    let (lan_ino, wan_ino) = (inode(&net.lan), inode(&net.wan));
    std::thread::sleep(Duration::from_millis(1000));
    assert!(a.alive(), "A finished 64 GiB too early: {}", a.output());
    assert!(
        !a.out.lock().unwrap().iter().any(|l| l.contains("echoed")),
        "{}",
        a.output()
    );
    a.sigkill();

    // D still completes an exchange with C.
    let again = net
        .device("d", 4, &probe("10.0.0.3:7", 4 << 20, "30s"))
        .settings();
    dh.replace_function(shmnet::functions::build(&again.function).unwrap());
    let t0 = Instant::now();
    while dh.finished() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let report = wait_finished(&dh, Duration::from_secs(60));
    assert!(
        report
            .iter()
            .any(|l| l.contains("4194304 bytes echoed intact")),
        "{report:?}"
    );
    assert!(b.alive(), "B died with A: {}", b.output());
    assert!(c.alive(), "C died with A: {}", c.output());

    // A restarted with the same config (a small transfer) rejoins the same
    // segments and reaches B.
    let mut a2 = net.start("a", 1, &probe("10.0.0.2:7", 2 << 20, "30s"));
    let (code, out) = a2.wait_exit(Duration::from_secs(60));
    assert_eq!(code, 0, "{}", a2.output());
    assert!(out.contains("2097152 bytes echoed intact"), "{out}");
    assert!(b.alive(), "{}", b.output());
    // The same segments all along: joined again, not recreated.
    assert_eq!((inode(&net.lan), inode(&net.wan)), (lan_ino, wan_ino));

    dh.stop();
    dt.join().unwrap();
    drop((b, c));
}

#[test]
fn stale_segment_of_a_killed_device_is_reclaimed() {
    let net = HostNets::new(1500);
    let mut first = net.start("srv", 2, ECHO);
    first.wait_ready();
    first.sigkill();
    // The killed device was the only user: its segments stay behind.
    assert!(
        std::path::Path::new(&format!("/dev/shm/shmnet.{}", net.lan)).exists(),
        "the host segment should outlive the killed process"
    );

    let mut second = net.start("srv", 2, ECHO);
    second.wait_ready();
    let mut client = net.start("cli", 1, &probe("10.0.0.2:7", 4 << 20, "30s"));
    let (code, out) = client.wait_exit(Duration::from_secs(60));
    assert_eq!(code, 0, "{}", client.output());
    assert!(out.contains("4194304 bytes echoed intact"), "{out}");
    assert!(second.alive(), "{}", second.output());
    drop((client, second));
}
