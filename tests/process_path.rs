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
use shmnet::config::DeviceConfig;
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
    fn start(dir: &std::path::Path, name: &str, toml: &str) -> Proc {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, toml).unwrap();
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

/// Unlinks the test's host segments when dropped (also on failure).
struct Segments(Vec<String>);

impl Drop for Segments {
    fn drop(&mut self) {
        for s in &self.0 {
            let _ = Segment::unlink(s);
        }
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shmnet-proc-{}-{}", std::process::id(), tag));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn device_toml(name: &str, lan: &str, wan: &str, host: u8, mtu: u32, function: &str) -> String {
    format!(
        r#"
name = "{name}"
function = {function}
local = {{ segment = "{lan}", address = "10.0.0.{host}/24", mtu = {mtu} }}
global = {{ segment = "{wan}", address = "10.100.0.{host}/16", mtu = {mtu} }}
"#
    )
}

fn probe(target: &str, bytes: u64, timeout_ms: u64) -> String {
    format!(
        r#"{{ kind = "probe", tcp = ["{target}"], bytes = {bytes}, timeout_ms = {timeout_ms} }}"#
    )
}

const ECHO: &str = r#"{ kind = "echo", tcp_buffer = 4194304 }"#;

fn tcp_64mib(mtu: u32) {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let _segs = Segments(vec![lan.clone(), wan.clone()]);
    let dir = temp_dir(&lan);
    let mut server = Proc::start(
        &dir,
        "server",
        &device_toml("server", &lan, &wan, 2, mtu, ECHO),
    );
    server.wait_ready();
    let mut client = Proc::start(
        &dir,
        "client",
        &device_toml(
            "client",
            &lan,
            &wan,
            1,
            mtu,
            &probe("10.0.0.2:7", 67108864, 120000),
        ),
    );
    let (code, out) = client.wait_exit(Duration::from_secs(240));
    assert_eq!(code, 0, "{}", client.output());
    assert!(out.contains("67108864 bytes echoed intact"), "{out}");
    assert!(server.alive(), "{}", server.output());
    drop(client);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
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
    let (lan, wan) = (unique("lan"), unique("wan"));
    let _segs = Segments(vec![lan.clone(), wan.clone()]);
    let dir = temp_dir(&lan);
    let mtu = 9000;
    let mut b = Proc::start(&dir, "b", &device_toml("b", &lan, &wan, 2, mtu, ECHO));
    let mut c = Proc::start(&dir, "c", &device_toml("c", &lan, &wan, 3, mtu, ECHO));
    b.wait_ready();
    c.wait_ready();

    // D: a device of this process on the same host segments, exchanging
    // with C before and after A dies.
    let d_text = device_toml(
        "d",
        &lan,
        &wan,
        4,
        mtu,
        &probe("10.0.0.3:7", 1 << 20, 30000),
    );
    let d_settings = DeviceConfig::from_toml(&d_text, "d.toml").unwrap();
    let (dh, dt) = Device::new(&d_settings, SegmentKind::Host)
        .expect("D joins the host segments")
        .spawn();
    let report = wait_finished(&dh, Duration::from_secs(60));
    assert!(
        report.iter().any(|l| l.contains("bytes echoed intact")),
        "{report:?}"
    );

    // A: a long streaming transfer to B (64 GiB), killed in the middle.
    let a_text = device_toml(
        "a",
        &lan,
        &wan,
        1,
        mtu,
        &probe("10.0.0.2:7", 1 << 36, 3_600_000),
    );
    let mut a = Proc::start(&dir, "a", &a_text);
    a.wait_ready();
    let inode = |seg: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/dev/shm/shmnet.{seg}"))
            .expect("host segment exists")
            .ino()
    };
    let (lan_ino, wan_ino) = (inode(&lan), inode(&wan));
    std::thread::sleep(Duration::from_millis(1000));
    assert!(a.alive(), "A finished 64 GiB too early: {}", a.output());
    assert!(
        !a.out.lock().unwrap().iter().any(|l| l.contains("echoed")),
        "{}",
        a.output()
    );
    a.sigkill();

    // D still completes an exchange with C.
    let again = DeviceConfig::from_toml(
        &device_toml(
            "d",
            &lan,
            &wan,
            4,
            mtu,
            &probe("10.0.0.3:7", 4 << 20, 30000),
        ),
        "d2.toml",
    )
    .unwrap();
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
    let a2_text = device_toml(
        "a",
        &lan,
        &wan,
        1,
        mtu,
        &probe("10.0.0.2:7", 2 << 20, 30000),
    );
    let mut a2 = Proc::start(&dir, "a", &a2_text);
    let (code, out) = a2.wait_exit(Duration::from_secs(60));
    assert_eq!(code, 0, "{}", a2.output());
    assert!(out.contains("2097152 bytes echoed intact"), "{out}");
    assert!(b.alive(), "{}", b.output());
    // The same segments all along: joined again, not recreated.
    assert_eq!((inode(&lan), inode(&wan)), (lan_ino, wan_ino));

    dh.stop();
    dt.join().unwrap();
    drop((b, c));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stale_segment_of_a_killed_device_is_reclaimed() {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let _segs = Segments(vec![lan.clone(), wan.clone()]);
    let dir = temp_dir(&lan);
    let echo = device_toml("srv", &lan, &wan, 2, 1500, ECHO);
    let mut first = Proc::start(&dir, "srv", &echo);
    first.wait_ready();
    first.sigkill();
    // The killed device was the only user: its segments stay behind.
    assert!(
        std::path::Path::new(&format!("/dev/shm/shmnet.{lan}")).exists(),
        "the host segment should outlive the killed process"
    );

    let mut second = Proc::start(&dir, "srv", &echo);
    second.wait_ready();
    let mut client = Proc::start(
        &dir,
        "cli",
        &device_toml(
            "cli",
            &lan,
            &wan,
            1,
            1500,
            &probe("10.0.0.2:7", 4 << 20, 30000),
        ),
    );
    let (code, out) = client.wait_exit(Duration::from_secs(60));
    assert_eq!(code, 0, "{}", client.output());
    assert!(out.contains("4194304 bytes echoed intact"), "{out}");
    assert!(second.alive(), "{}", second.output());
    drop((client, second));
    let _ = std::fs::remove_dir_all(&dir);
}
