//! The VXLAN gateway against Linux's own VXLAN: the example topology as
//! written and its `linux-peer.sh`, a kernel VTEP in a network namespace.
//! Linux's `ping` and `nc` reach the echo device through the gateway (64
//! MiB echoed intact, with the kernel's tunnel offloads on), in thread and
//! process mode; tshark decodes the underlay traffic as VXLAN with intact
//! inner frames; a configuration whose MTU cannot fit the underlay is
//! refused.
//!
//! The tests share the example's namespace and addresses, so they run one
//! at a time (a lock file); each skips, saying why, where the kernel lacks
//! network namespaces or VXLAN, or without root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shmnet");
const NS: &str = "shmnet-vxpeer";

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vxlan")
}

/// Runs a command; its success.
fn sh(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why the tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root: namespaces, veth and vxlan links need CAP_NET_ADMIN".into());
    }
    let probe = "shmnet-vxprobe";
    let _ = sh(Command::new("ip").args(["link", "del", probe]));
    let ok = sh(Command::new("ip").args([
        "link",
        "add",
        probe,
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "4789",
        "local",
        "127.0.0.1",
    ]));
    let _ = sh(Command::new("ip").args(["link", "del", probe]));
    if !ok {
        return Some("this kernel cannot make vxlan links (ip link add ... type vxlan)".into());
    }
    if !sh(Command::new("ip").args(["netns", "list"])) {
        return Some("no network namespaces here".into());
    }
    None
}

/// The Linux peer of the example (its script's `up`), taken down however
/// the test ends; holds the lock that keeps the tests of this file apart.
struct LinuxPeer {
    _lock: std::fs::File,
}

impl LinuxPeer {
    fn up() -> LinuxPeer {
        let lock = std::fs::File::create(std::env::temp_dir().join("shmnet-vxlan-test.lock"))
            .expect("lock file");
        lock.lock().expect("lock");
        let script = example().join("linux-peer.sh");
        let _ = sh(Command::new(&script).arg("down"));
        let out = Command::new(&script)
            .arg("up")
            .output()
            .expect("run linux-peer.sh");
        assert!(
            out.status.success(),
            "linux-peer.sh up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LinuxPeer { _lock: lock }
    }

    /// A command run inside the peer's namespace.
    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", NS]).args(args);
        c
    }
}

impl Drop for LinuxPeer {
    fn drop(&mut self) {
        let _ = sh(Command::new(example().join("linux-peer.sh")).arg("down"));
    }
}

/// `shmnet run` of the example, killed if the test ends first.
struct Run(Child);

impl Run {
    fn start(args: &[&str]) -> Run {
        Run(Command::new(BIN)
            .arg("run")
            .arg(example().join("topology.toml"))
            .args(["--duration", "120"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shmnet run"))
    }

    fn stop(mut self) -> i32 {
        let pid = rustix::process::Pid::from_child(&self.0);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let code = self.0.wait().expect("wait").code().unwrap_or(-1);
        std::mem::forget(self);
        code
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pings the echo device from the Linux peer until it answers.
fn ping_until_up(peer: &LinuxPeer) {
    let t0 = Instant::now();
    while !sh(&mut peer.exec(&["ping", "-c", "1", "-W", "1", "10.79.0.2"])) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "10.79.0.2 never answered the Linux peer's ping"
        );
    }
}

/// 64 MiB of random bytes from the Linux peer's `nc` to the echo device
/// and back, compared with `cmp`.
fn echo_64_mib(peer: &LinuxPeer) {
    let file = std::env::temp_dir().join(format!("shmnet-vx-{}", std::process::id()));
    assert!(sh(Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 64M /dev/urandom > {}", file.display()))));
    let script = format!(
        "timeout 60 nc -N 10.79.0.2 7 < {f} | cmp - {f}",
        f = file.display()
    );
    let out = peer.exec(&["sh", "-c", &script]).output().expect("nc");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "the echo differs: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_linux_vtep_reaches_the_echo_device_in_both_modes() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let peer = LinuxPeer::up();
    for mode in ["thread", "process"] {
        let run = Run::start(&["--mode", mode]);
        ping_until_up(&peer);
        echo_64_mib(&peer);
        assert_eq!(run.stop(), 0, "{mode}");
    }
}

#[test]
fn tshark_decodes_the_underlay_as_vxlan_with_intact_inner_frames() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let peer = LinuxPeer::up();
    let run = Run::start(&[]);
    ping_until_up(&peer);
    let capture = Command::new("tshark")
        .args([
            "-i",
            "shmvx-host",
            "-a",
            "duration:6",
            "-f",
            "udp port 4789",
        ])
        .args([
            "-T",
            "fields",
            "-e",
            "vxlan.vni",
            "-e",
            "icmp.type",
            "-e",
            "icmp.checksum.status",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run tshark (Debian package tshark)");
    std::thread::sleep(Duration::from_secs(2));
    assert!(sh(&mut peer.exec(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "10.79.0.2"
    ])));
    let out = capture.wait_with_output().expect("tshark");
    let text = String::from_utf8_lossy(&out.stdout);
    // Requests (type 8) from Linux and replies (type 0) from the device,
    // both in VNI 4242, with good inner checksums (status 1).
    assert!(text.lines().any(|l| l == "4242\t8\t1"), "{text}");
    assert!(text.lines().any(|l| l == "4242\t0\t1"), "{text}");
    assert_eq!(run.stop(), 0);
}

#[test]
fn a_network_mtu_the_underlay_cannot_carry_is_refused() {
    let dir = std::env::temp_dir().join(format!("shmnet-vxmtu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["topology.toml", "echo.toml"] {
        let text = std::fs::read_to_string(example().join(f)).unwrap();
        std::fs::write(dir.join(f), text.replace("mtu = 1450", "mtu = 1500")).unwrap();
    }
    let file = dir.join("topology.toml");
    let out = Command::new(BIN)
        .arg("run")
        .arg(&file)
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("vxlan[0].underlay_mtu") && err.contains("at most 1450"),
        "{err}"
    );
}
