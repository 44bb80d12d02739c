//! `bench vxlan`: one-way TCP from a device on host A to a device on host
//! B across two VXLAN gateways, against Linux's own VXLAN between the same
//! two hosts, in the same run. The hosts are two network namespaces made
//! for the run, joined by a veth pair (the underlay); each runs its own
//! `shmnet run` with its own segments. Needs root (namespaces); skipped
//! with a reason without.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Res;
use super::report::measure;

/// The two hosts, their underlay (veth) and the addresses: none that a
/// test or example uses.
const NS: [&str; 2] = ["shmnet-benchvx-a", "shmnet-benchvx-b"];
const VETH: [&str; 2] = ["shmbvx-a", "shmbvx-b"];
const UNDERLAY: [&str; 2] = ["10.75.0.1", "10.75.0.2"];
/// Linux's VXLAN: its interface, overlay addresses, VNI and UDP port (not
/// 4789: shmnet's gateways own that one).
const KVX: &str = "shmbvxk";
const KERNEL_OVERLAY: [&str; 2] = ["10.74.1.1", "10.74.1.2"];
const KERNEL_VNI: &str = "4244";
const KERNEL_PORT: &str = "4790";
/// shmnet's overlay: the sender's and the sink's addresses.
const OVERLAY: [&str; 2] = ["10.74.0.1", "10.74.0.2"];

/// Runs the benchmark at an underlay MTU of `underlay_mtu` (the overlay
/// gets 50 bytes less on both sides).
pub(super) fn bench_vxlan(
    underlay_mtu: u32,
    bytes: Option<u64>,
    quick: bool,
    reps: usize,
) -> Res<String> {
    let bytes = bytes.unwrap_or(if quick { 16 << 20 } else { 256 << 20 });
    if let Some(why) = cannot_run() {
        return Ok(format!("{{\"bench\":\"vxlan\",\"skipped\":\"{why}\"}}"));
    }
    if !(1280..=65535).contains(&underlay_mtu) {
        return Err(format!("--mtu {underlay_mtu}: must be 1280..=65535"));
    }
    let inner = underlay_mtu - 50;
    let hosts = Hosts::up(underlay_mtu)?;
    let result = measure(
        &format!(
            "\"bench\":\"vxlan\",\"underlay_mtu\":{underlay_mtu},\"mtu\":{inner},\"bytes\":{bytes}"
        ),
        "Gbit/s",
        "",
        reps,
        || hosts.shmnet(inner, bytes),
        || hosts.kernel(bytes),
    );
    drop(hosts);
    result
}

/// Why this machine cannot run the benchmark, if it cannot.
fn cannot_run() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root for network namespaces".into());
    }
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !ip.is_ok_and(|s| s.success()) {
        return Some("needs iproute2 (ip)".into());
    }
    None
}

/// `ip ARGS`, its failure as an error naming the command.
fn ip(args: &[&str]) -> Res<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Gives `dev` in namespace `ns` the address `addr`/24 and brings it up.
fn address_up(ns: &str, dev: &str, addr: &str) -> Res<()> {
    ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
    ip(&["-n", ns, "link", "set", dev, "up"])
}

/// The two namespaces and their links; removed on drop.
struct Hosts {
    dir: PathBuf,
}

impl Hosts {
    fn up(underlay_mtu: u32) -> Res<Hosts> {
        let dir = std::env::temp_dir().join(format!("shmnet-bench-vxlan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let hosts = Hosts { dir };
        hosts.down();
        let mtu = underlay_mtu.to_string();
        let inner = (underlay_mtu - 50).to_string();
        for ns in NS {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "-n", NS[0], "link", "add", VETH[0], "mtu", &mtu, "type", "veth", "peer", "name",
            VETH[1], "mtu", &mtu, "netns", NS[1],
        ])?;
        for i in 0..2 {
            let (ns, veth) = (NS[i], VETH[i]);
            let other = UNDERLAY[1 - i];
            address_up(ns, veth, UNDERLAY[i])?;
            ip(&[
                "-n",
                ns,
                "link",
                "add",
                KVX,
                "mtu",
                &inner,
                "type",
                "vxlan",
                "id",
                KERNEL_VNI,
                "local",
                UNDERLAY[i],
                "remote",
                other,
                "dstport",
                KERNEL_PORT,
                "dev",
                veth,
            ])?;
            address_up(ns, KVX, KERNEL_OVERLAY[i])?;
        }
        Ok(hosts)
    }

    /// Removes what `up` made (and what a crashed run left).
    fn down(&self) {
        for ns in NS {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Host `i`'s topology: a gateway to the other host and one device on
    /// the carried network running `function`.
    fn topology(&self, i: usize, inner: u32, function: &str) -> Res<PathBuf> {
        let text = format!(
            r#"name = "benchvx{i}"
            mode = "thread"
            [[vxlan]]
            segment = "benchvx{i}-g"
            local = "{}"
            vni = 4243
            remotes = ["{}"]
            underlay_mtu = {}
            [[device]]
            name = "dev{i}"
            function = {function}
            local = {{ segment = "benchvx{i}-l", address = "10.73.0.{}/24" }}
            global = {{ segment = "benchvx{i}-g", address = "{}/24", mtu = {inner} }}
            sockets = {{ congestion = "cubic" }}
            "#,
            UNDERLAY[i],
            UNDERLAY[1 - i],
            inner + 50,
            i + 1,
            OVERLAY[i],
        );
        let path = self.dir.join(format!("host{i}.toml"));
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// `shmnet run FILE` in host `i`'s namespace, with a runtime directory
    /// of its own.
    fn shmnet_run(&self, i: usize, file: &Path) -> Res<Command> {
        let exe = std::env::current_exe().map_err(|e| format!("this program: {e}"))?;
        let runtime = self.dir.join(format!("run{i}"));
        std::fs::create_dir_all(&runtime).map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", NS[i]])
            .arg(exe)
            .arg("run")
            .arg(file)
            .args(["--duration", "600"])
            .env("SHMNET_RUNTIME_DIR", runtime);
        Ok(c)
    }

    /// Host A's probe streams `bytes` one way to host B's sink; Gbit/s as
    /// the probe measured it.
    fn shmnet(&self, inner: u32, bytes: u64) -> Res<f64> {
        let sink = self.topology(1, inner, r#"{ kind = "sink", port = 9 }"#)?;
        let probe = self.topology(
            0,
            inner,
            &format!(
                r#"{{ kind = "probe", send = ["{}:9"], bytes = {bytes}, timeout = "300s" }}"#,
                OVERLAY[1]
            ),
        )?;
        let mut far = self
            .shmnet_run(1, &sink)?
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start host B: {e}"))?;
        // The probe retries a refused connection while the sink comes up.
        let out = self
            .shmnet_run(0, &probe)?
            .output()
            .map_err(|e| format!("run host A: {e}"));
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&far),
            rustix::process::Signal::TERM,
        );
        let _ = far.wait();
        let out = out?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.contains("delivered intact"))
            .ok_or_else(|| {
                format!(
                    "host A's probe did not finish: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        // "... delivered intact in 1234.5 ms (2345.6 Mbit/s one way)"
        let mbits = line
            .rsplit_once('(')
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .ok_or_else(|| format!("cannot read the rate in {line:?}"))?;
        Ok(mbits / 1e3)
    }

    /// The same transfer between Linux's VXLAN interfaces of the two
    /// namespaces: a kernel TCP client in A, a server in B.
    fn kernel(&self, bytes: u64) -> Res<f64> {
        let io = |e: std::io::Error| e.to_string();
        let (tx, rx) = std::sync::mpsc::channel::<Res<()>>();
        let server = std::thread::spawn(move || -> Res<u64> {
            enter(NS[1])?;
            let l = TcpListener::bind((KERNEL_OVERLAY[1], 5001)).map_err(io);
            let l = match l {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e.clone()));
                    return Err(e);
                }
            };
            let (mut c, _) = l.accept().map_err(io)?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            loop {
                let n = c.read(&mut buf).map_err(io)?;
                if n == 0 {
                    return Ok(got);
                }
                got += n as u64;
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the kernel server did not start".to_string())??;
        let client = std::thread::spawn(move || -> Res<f64> {
            enter(NS[0])?;
            let mut c = TcpStream::connect((KERNEL_OVERLAY[1], 5001)).map_err(io)?;
            let buf = vec![0x5au8; 256 * 1024];
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < bytes {
                let n = (bytes - sent).min(buf.len() as u64) as usize;
                c.write_all(&buf[..n]).map_err(io)?;
                sent += n as u64;
            }
            c.shutdown(std::net::Shutdown::Write).map_err(io)?;
            // The server's close says every byte is in.
            let _ = c.read(&mut [0u8; 1]);
            Ok(bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
        });
        let rate = client.join().map_err(|_| "client panicked")??;
        let got = server.join().map_err(|_| "server panicked")??;
        if got != bytes {
            return Err(format!("the kernel server got {got} of {bytes} bytes"));
        }
        Ok(rate)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Moves this thread into the network namespace `ns`.
fn enter(ns: &str) -> Res<()> {
    let f =
        std::fs::File::open(format!("/var/run/netns/{ns}")).map_err(|e| format!("{ns}: {e}"))?;
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| format!("enter {ns}: {e}"))
}
