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

mod common;

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
    if let Some(tool) = ["ip", "ping", "nc", "tshark"]
        .into_iter()
        .find(|t| !common::have(t))
    {
        return Some(format!(
            "{tool} is not installed (iproute2, iputils-ping, netcat-openbsd, tshark)"
        ));
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

macro_rules! skip_unless_vxlan {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// The lock that keeps the tests of this file apart (they share
/// namespaces, links and UDP port 4789).
fn test_lock() -> std::fs::File {
    let lock = std::fs::File::create(std::env::temp_dir().join("shmnet-vxlan-test.lock"))
        .expect("lock file");
    lock.lock().expect("lock");
    lock
}

/// The Linux peer of the example (its script's `up`), taken down however
/// the test ends; holds the lock that keeps the tests of this file apart.
struct LinuxPeer {
    _lock: std::fs::File,
}

impl LinuxPeer {
    fn up() -> LinuxPeer {
        let lock = test_lock();
        let script = example().join("linux-peer.sh");
        let _ = sh(Command::new(&script).arg("down"));
        common::run_ok(Command::new(&script).arg("up"));
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
    skip_unless_vxlan!();
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
    skip_unless_vxlan!();
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

/// Two shmnet hosts: this namespace and one made for the test, joined by
/// a veth pair (10.78.9.2 here, 10.78.9.1 there), each running its own
/// topology with its own segments and a gateway to the other.
struct TwoHosts {
    dir: PathBuf,
    _lock: std::fs::File,
}

const HOST_B: &str = "shmnet-vxhostb";

impl TwoHosts {
    fn up() -> TwoHosts {
        let lock = test_lock();
        let dir = std::env::temp_dir().join(format!("shmnet-vx2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = TwoHosts { dir, _lock: lock };
        hosts.down_links();
        for cmd in [
            vec!["netns", "add", HOST_B],
            vec![
                "link", "add", "shmvx2-a", "type", "veth", "peer", "name", "shmvx2-b",
            ],
            vec!["link", "set", "shmvx2-b", "netns", HOST_B],
            vec!["addr", "add", "10.78.9.2/24", "dev", "shmvx2-a"],
            vec!["link", "set", "shmvx2-a", "up"],
            vec![
                "-n",
                HOST_B,
                "addr",
                "add",
                "10.78.9.1/24",
                "dev",
                "shmvx2-b",
            ],
            vec!["-n", HOST_B, "link", "set", "shmvx2-b", "up"],
            vec!["-n", HOST_B, "link", "set", "lo", "up"],
        ] {
            assert!(sh(Command::new("ip").args(&cmd)), "ip {cmd:?}");
        }
        hosts
    }

    fn down_links(&self) {
        let _ = sh(Command::new("ip").args(["netns", "del", HOST_B]));
        let _ = sh(Command::new("ip").args(["link", "del", "shmvx2-a"]));
    }

    /// Host `side`'s topology: a gateway to the other host and `devices`
    /// (each a device file's text), one of them on the carried network.
    fn topology(
        &self,
        side: &str,
        mode: &str,
        (local, remote): (&str, &str),
        faults: &str,
        devices: &[String],
    ) -> PathBuf {
        let mut text = format!(
            "name = \"{side}\"\nmode = \"{mode}\"\n\
             [[vxlan]]\nsegment = \"vx2-{side}-g\"\nlocal = \"{local}\"\nvni = 77\nremotes = [\"{remote}\"]\n{faults}\n"
        );
        for (i, device) in devices.iter().enumerate() {
            let file = format!("{side}-dev{i}.toml");
            std::fs::write(self.dir.join(&file), device).unwrap();
            text += &format!("[[device]]\nfile = \"{file}\"\n");
        }
        let path = self.dir.join(format!("{side}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        self.down_links();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What host A's probe does with host B's server across the two
/// gateways.
struct Exchange<'a> {
    /// Host B's function (a TOML inline table body).
    server: &'a str,
    /// The probe's targets and size (a TOML inline table body).
    probe: &'a str,
    /// What the probe's report line says when every byte arrived.
    success: &'a str,
    /// Seconds the probe may take.
    timeout: u64,
}

/// Echo: A streams 64 MiB to B's echo server and checks what comes back.
const ECHO_64_MIB: Exchange = Exchange {
    server: "kind = \"echo\"",
    probe: "tcp = [\"10.79.9.20:7\"], bytes = 67108864",
    success: "67108864 bytes echoed intact",
    timeout: 900,
};

/// Runs `x` between the hosts in `mode`, both gateways sending with
/// `faults` (a `faults = {...}` line or nothing); returns the probe's
/// report line.
fn exchange(hosts: &TwoHosts, mode: &str, faults: &str, x: &Exchange) -> String {
    let cubic = "[sockets]\ncongestion = \"cubic\"\n";
    let server = hosts.topology(
        "b",
        mode,
        ("10.78.9.1", "10.78.9.2"),
        faults,
        &[format!(
            "name = \"far\"\nfunction = {{ {} }}\n\
             local = {{ segment = \"vx2-b-l\", address = \"10.81.0.2/24\" }}\n\
             global = {{ segment = \"vx2-b-g\", address = \"10.79.9.20/24\", mtu = 1450 }}\n{cubic}",
            x.server
        )],
    );
    let probe = hosts.topology(
        "a",
        mode,
        ("10.78.9.2", "10.78.9.1"),
        faults,
        &[format!(
            "name = \"near\"\n\
             function = {{ kind = \"probe\", {}, timeout = \"{}s\" }}\n\
             local = {{ segment = \"vx2-a-l\", address = \"10.81.0.1/24\" }}\n\
             global = {{ segment = \"vx2-a-g\", address = \"10.79.9.10/24\", mtu = 1450 }}\n{cubic}",
            x.probe, x.timeout
        )],
    );
    let stdout = run_pair(hosts, mode, &server, &probe, x.timeout);
    assert!(stdout.contains(x.success), "{mode} {faults}: {stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains(x.success))
        .unwrap_or_default();
    eprintln!("{mode} {faults}: {line}");
    line.to_string()
}

/// Runs `server` in host B and `probe` in host A (this namespace), each
/// for at most `timeout` seconds and a margin; returns A's output once its
/// run succeeded and B's stopped cleanly.
fn run_pair(hosts: &TwoHosts, mode: &str, server: &Path, probe: &Path, timeout: u64) -> String {
    // Each host its own runtime directory: its own host segments.
    let runtime = |side: &str| {
        use std::os::unix::fs::PermissionsExt;
        let d = hosts.dir.join(format!("run-{side}-{mode}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    };
    let far = Run(Command::new("ip")
        .args(["netns", "exec", HOST_B, BIN, "run"])
        .arg(server)
        .args(["--duration", &(timeout + 100).to_string()])
        .env("SHMNET_RUNTIME_DIR", runtime("b"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start host B"));
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new(BIN)
        .arg("run")
        .arg(probe)
        .args(["--duration", &(timeout + 100).to_string()])
        .env("SHMNET_RUNTIME_DIR", runtime("a"))
        .output()
        .expect("run host A");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{mode}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(far.stop(), 0, "{mode}");
    stdout
}

/// A device that forwards (a router on host A) reaches a next hop on host
/// B, which no directory of host A lists: it asks for its address with ARP
/// through the gateway and learns it from the answer.
#[test]
fn a_forwarding_device_reaches_a_next_hop_on_the_other_host() {
    skip_unless_vxlan!();
    let hosts = TwoHosts::up();
    let route = |to: &str, via: &str| format!("[[route]]\nto = \"{to}\"\nvia = \"{via}\"\n");
    let echo = format!(
        "name = \"far\"\nfunction = {{ kind = \"echo\" }}\n\
         local = {{ segment = \"vx2-b-l\", address = \"10.81.1.2/24\" }}\n\
         global = {{ segment = \"vx2-b-g\", address = \"10.79.9.20/24\", mtu = 1450 }}\n{}",
        route("10.81.0.0/24", "10.79.9.10")
    );
    let server = hosts.topology("b", "thread", ("10.78.9.1", "10.78.9.2"), "", &[echo]);
    let probe = format!(
        "name = \"near\"\n\
         function = {{ kind = \"probe\", tcp = [\"10.79.9.20:7\"], bytes = 4194304, timeout = \"60s\" }}\n\
         local = {{ segment = \"vx2-a-l\", address = \"10.81.0.1/24\" }}\n\
         global = {{ segment = \"vx2-a-x\", address = \"10.82.0.1/24\" }}\n{}",
        route("10.79.9.0/24", "10.81.0.254")
    );
    let router = "name = \"router\"\nforward = true\nfunction = { kind = \"passthrough\" }\n\
         local = { segment = \"vx2-a-l\", address = \"10.81.0.254/24\" }\n\
         global = { segment = \"vx2-a-g\", address = \"10.79.9.10/24\", mtu = 1450 }\n";
    let client = hosts.topology(
        "a",
        "thread",
        ("10.78.9.2", "10.78.9.1"),
        "",
        &[probe, router.to_string()],
    );
    let out = run_pair(&hosts, "thread", &server, &client, 60);
    assert!(out.contains("4194304 bytes echoed intact"), "{out}");
}

#[test]
fn two_shmnet_hosts_exchange_64_mib_over_the_gateway_in_both_modes() {
    skip_unless_vxlan!();
    let hosts = TwoHosts::up();
    for mode in ["thread", "process"] {
        exchange(&hosts, mode, "", &ECHO_64_MIB);
    }
}

/// A lossy link: both gateways drop, reorder and duplicate what they send
/// (this kernel has no netem). One way, A to B's sink, which checks the
/// pattern and answers with a receipt: an echo's return stream makes
/// smoltcp 0.14 stall for long on loss (see the README, "Lossy links").
/// At 5 % loss smoltcp manages tens of KB/s, so that run carries 2 MiB.
#[test]
fn every_byte_crosses_a_lossy_reordering_duplicating_underlay() {
    skip_unless_vxlan!();
    let hosts = TwoHosts::up();
    for (loss, bytes) in [("0.01", 64u64 << 20), ("0.05", 2 << 20)] {
        lossy_one_way(&hosts, loss, bytes, 900);
    }
}

/// The full 64 MiB at 5 % loss: about 50 minutes (49 measured) with
/// smoltcp 0.14's recovery (see the README, "Lossy links"), too long for CI. Run by hand:
/// `cargo test --release --test vxlan -- --ignored`.
#[test]
#[ignore = "takes about 50 minutes"]
fn sixty_four_mib_cross_an_underlay_losing_five_percent() {
    skip_unless_vxlan!();
    let hosts = TwoHosts::up();
    lossy_one_way(&hosts, "0.05", 64 << 20, 5400);
}

/// `bytes` one way from A to B's sink over gateways that lose `loss` of
/// what they send and reorder and duplicate 1 %, in at most `timeout`
/// seconds.
fn lossy_one_way(hosts: &TwoHosts, loss: &str, bytes: u64, timeout: u64) {
    let faults =
        format!("faults = {{ loss = {loss}, reorder = 0.01, duplicate = 0.01, seed = 7 }}");
    let probe = format!("send = [\"10.79.9.20:9\"], bytes = {bytes}");
    let success = format!("{bytes} bytes delivered intact");
    let x = Exchange {
        server: "kind = \"sink\"",
        probe: &probe,
        success: &success,
        timeout,
    };
    exchange(hosts, "thread", &faults, &x);
}
