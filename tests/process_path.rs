//! The data path with devices as separate OS processes (`shmnet device`)
//! on host networks: bulk transfer, a peer killed with SIGKILL, and what a
//! killed device leaves behind.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use shmnet::shm::{Segment, SegmentKind};
use shmnet::stack::NetDevice;

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
            let _ = Segment::remove_if_unused(s);
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
    let (dh, dt) = NetDevice::new(&d.settings(), SegmentKind::Shared)
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
    // One network all along: everyone alive is on it, the dead A is not.
    let names = |seg: &str| {
        let mut n: Vec<String> = Segment::open(seg)
            .unwrap()
            .peers()
            .into_iter()
            .map(|p| p.info.name)
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&net.lan), ["b/local", "c/local", "d/local"]);
    assert_eq!(names(&net.wan), ["b/global", "c/global", "d/global"]);

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
    // The killed device was the only user: what it left stays behind
    // until the next joiner reaps it.
    assert!(
        Segment::list_host().unwrap().contains(&net.lan),
        "the network's files should outlive the killed process"
    );
    assert_eq!(
        Segment::open(&net.lan).unwrap().peers(),
        [],
        "a dead port is not live"
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

/// The vandal's side of [`a_hostile_peer_harms_no_one`]: runs only in the
/// child that test starts (this test binary again, with `SHMNET_VANDAL`
/// naming the network).
#[test]
fn vandal_child() {
    let Ok(network) = std::env::var("SHMNET_VANDAL") else {
        return;
    };
    let secs: u64 = std::env::var("SHMNET_VANDAL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    vandal(&network, Duration::from_secs(secs));
}

/// Joins `network` and, for `span`, does everything a peer process can:
/// garbage frames to everyone, random and targeted writes into all it owns
/// that others read (header, rings, descriptors, tails, buffers), and
/// attempts to write or truncate the other ports' regions through
/// `/proc/PID/fd`. Prints what it did; exits non-zero if any write into
/// another port's memory succeeded.
fn vandal(network: &str, span: Duration) {
    use shmnet::shm::layout::{DESC_LEN, RING_HEADER_LEN, TAIL_LEN};
    use shmnet::shm::{NetworkParams, PortInfo, mac_from_name};
    use std::os::unix::fs::FileExt;

    let info = PortInfo {
        ipv4: Some([10, 0, 0, 66]),
        ..PortInfo::named("vandal")
    };
    let mut port = Segment::join(
        network,
        SegmentKind::Shared,
        &NetworkParams::new(1500),
        &info,
    )
    .expect("the vandal joins");
    port.set_drain_on_drop(Duration::ZERO);
    let g = *port.segment().geometry();
    let frame_size = g.frame_size as usize;
    let mut rng = Rng(0x5EED_0BAD_CAFE_F00D);
    let (mut frames, mut scribbles, mut attempts, mut refused) = (0u64, 0u64, 0u64, 0u64);
    let mut junk = vec![0u8; frame_size];
    let start = Instant::now();
    let mut next_poke = start;
    while start.elapsed() < span {
        port.maintain();
        let peers: Vec<_> = port
            .peers()
            .map(|p| {
                (
                    shmnet::shm::Peer {
                        index: p.index,
                        epoch: p.epoch,
                    },
                    p.info.mac,
                    p.owner_pid,
                )
            })
            .collect();
        // Garbage frames, some addressed well enough to reach parsers.
        for _ in 0..8 {
            let Some(mut buf) = port.alloc() else { break };
            let len = 1 + rng.below(frame_size as u64) as usize;
            let f = port.buffer_mut(&mut buf);
            rng.fill(&mut f[..len]);
            if let Some((_, mac, _)) = peers.get(rng.below(peers.len().max(1) as u64) as usize)
                && len >= 34
            {
                f[..6].copy_from_slice(mac);
                f[6..12].copy_from_slice(&mac_from_name("vandal"));
                f[12..14].copy_from_slice(&[0x08, 0x00]);
                f[14] = 0x45;
            }
            let to: Vec<_> = peers.iter().map(|p| p.0).collect();
            port.send(buf, len, &to);
            frames += 1;
        }
        port.flush();
        // Scribbles over what it owns that others read.
        for _ in 0..16 {
            let Some(&(peer, _, _)) = peers.get(rng.below(peers.len().max(1) as u64) as usize)
            else {
                break;
            };
            let n = 1 + rng.below(16) as usize;
            rng.fill(&mut junk[..n]);
            let at = match rng.below(10) {
                0 => rng.below(256) as usize,
                1 => g.tail_off(peer.index) + rng.below(TAIL_LEN as u64) as usize,
                2 => {
                    // Targeted: the head word far ahead, or an impossible tail.
                    junk[..8].copy_from_slice(&u64::MAX.to_ne_bytes());
                    if rng.below(2) == 0 {
                        g.ring_off(peer.index) + 8
                    } else {
                        g.tail_off(peer.index)
                    }
                }
                3..=5 => g.ring_off(peer.index) + rng.below(RING_HEADER_LEN as u64) as usize,
                6..=8 => {
                    g.ring_off(peer.index)
                        + RING_HEADER_LEN
                        + rng.below(g.ring_slots as u64 * DESC_LEN as u64) as usize
                }
                _ => g.buffer_off(rng.below(g.buffers as u64) as u32),
            };
            port.vandalise(at, &junk[..n]);
            scribbles += 1;
        }
        // Now and then, try to write the other ports' memory directly.
        if Instant::now() >= next_poke {
            next_poke += Duration::from_millis(200);
            for &(_, _, pid) in &peers {
                let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                    continue;
                };
                for fd in fds.flatten() {
                    let is_region = std::fs::read_link(fd.path())
                        .is_ok_and(|t| t.to_string_lossy().contains("memfd:shmnet:"));
                    if !is_region {
                        continue;
                    }
                    attempts += 1;
                    let wrote = std::fs::OpenOptions::new()
                        .write(true)
                        .open(fd.path())
                        .map(|f| f.write_at(&[0xAA; 64], 0).is_ok() || f.set_len(0).is_ok())
                        .unwrap_or(false);
                    if wrote {
                        println!("VANDAL WROTE into {:?} of pid {pid}", fd.path());
                        std::process::exit(3);
                    }
                    refused += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    println!(
        "vandal: frames {frames} scribbles {scribbles} write-attempts {attempts} refused {refused}"
    );
}

#[test]
fn a_hostile_peer_harms_no_one() {
    let secs: u64 = std::env::var("SHMNET_HOSTILE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let net = HostNets::new(1500);
    let mut server = net.start("server", 2, ECHO);
    server.wait_ready();
    // A client streaming to the server while the vandal works: it may be
    // slowed, but nothing may hang or die. Its stream is far longer than the
    // vandal's run (4 TiB); should a fast machine finish it anyway, it must
    // have finished intact.
    let mut during = net.start("during", 1, &probe("10.0.0.2:7", 1 << 42, "1h"));
    during.wait_ready();

    let vandal = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "vandal_child", "--nocapture", "--test-threads=1"])
        .env("SHMNET_VANDAL", &net.lan)
        .env("SHMNET_VANDAL_SECS", secs.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run the vandal");
    let said = String::from_utf8_lossy(&vandal.stdout);
    assert!(vandal.status.success(), "vandal: {said}");
    let summary = said
        .lines()
        .find_map(|l| l.split_once("vandal: ").map(|(_, s)| s))
        .unwrap_or_else(|| panic!("no summary: {said}"));
    let count = |key: &str| -> u64 {
        let mut words = summary.split_whitespace();
        words.find(|w| *w == key);
        words.next().and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    assert!(count("frames") > 0 && count("scribbles") > 0, "{summary}");
    assert!(
        count("write-attempts") > 0,
        "the vandal found no region to attack: {summary}"
    );
    assert_eq!(count("refused"), count("write-attempts"), "{summary}");

    assert!(server.alive(), "the server died: {}", server.output());
    if !during.alive() {
        let (code, out) = during.wait_exit(Duration::from_secs(1));
        assert!(
            code == 0 && out.contains(&format!("{} bytes echoed intact", 1u64 << 42)),
            "the streaming client died: {}",
            during.output()
        );
    }
    drop(during);

    // Once the vandal is gone, the survivors' traffic is intact.
    let mut after = net.start("after", 3, &probe("10.0.0.2:7", 8 << 20, "30s"));
    let (code, out) = after.wait_exit(Duration::from_secs(60));
    assert_eq!(code, 0, "{}", after.output());
    assert!(out.contains("8388608 bytes echoed intact"), "{out}");

    // The server counted what it rejected, and stops cleanly.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let (code, out) = server.wait_exit(Duration::from_secs(10));
    assert_eq!(code, 0, "{}", server.output());
    let rejected = ["bad_descriptors=", "corrupt_rings=", "rx_malformed="];
    assert!(
        rejected.iter().any(|k| out.contains(k)),
        "the server's counters show nothing rejected: {out}"
    );
}
