//! Membership between processes, with real processes: the runtime
//! directory, hellos over Unix sockets, liveness from the kernel.
//!
//! - 24 members started at the same moment, 20 times, always meet on one
//!   network (each sees the 23 others, indices 0..24, no split).
//! - A runtime directory squatted by user `nobody` is refused with an error
//!   naming them, through every way of finding it, and nothing of theirs is
//!   removed; a connection from `nobody` to a port is refused and counted.
//! - A member killed with SIGKILL is seen leaving by the others within a
//!   second.
//!
//! The members are this test binary run again with `HOST_MEMBERSHIP_ROLE`
//! set; the `child` test dispatches on it (and does nothing otherwise).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmnet::shm::host_testing::{TestEvent, TestMember};

const ROLE: &str = "HOST_MEMBERSHIP_ROLE";
const NOBODY: u32 = 65534;

// ---- the children ------------------------------------------------------

#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return; // an ordinary test run
    };
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    match role.as_str() {
        "member" => member(&var("NET"), &var("DEVICE"), var("WANT").parse().unwrap()),
        "join-once" => match TestMember::join(None, "net", "squatter-victim", None, 8) {
            Ok(_) => println!("CHILD joined"),
            Err(e) => println!("CHILD error {e}"),
        },
        "intruder" => intruder(Path::new(&var("SOCK"))),
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// Reads the parent's orders from stdin: a byte is "go", end of file is
/// "stop".
fn orders() -> mpsc::Receiver<bool> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut b = [0u8; 1];
        while let Ok(1) = stdin.read(&mut b) {
            let _ = tx.send(true);
        }
        let _ = tx.send(false);
    });
    rx
}

/// Joins when told, reports `index=I seen=N` once it has seen `want`
/// peers (or after 10 s), then reports every peer that leaves until told
/// to stop. It stays until then: a member that left at once would not be
/// seen by a port that had not read its hello yet, which is right, but not
/// what this test counts.
fn member(net: &str, device: &str, want: usize) {
    let orders = orders();
    assert_eq!(orders.recv(), Ok(true), "go");
    let mut m = match TestMember::join(None, net, device, None, 32) {
        Ok(m) => m,
        Err(e) => {
            println!("CHILD error {e}");
            return;
        }
    };
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    handle(m.settle(Duration::from_secs(5)), &mut seen);
    while seen.len() < want && Instant::now() < deadline {
        m.wait(Duration::from_millis(50));
        handle(m.poll(), &mut seen);
    }
    println!("CHILD index={} seen={}", m.index(), seen.len());
    while let Err(mpsc::TryRecvError::Empty) = orders.try_recv() {
        m.wait(Duration::from_millis(50));
        handle(m.poll(), &mut seen);
    }
}

fn handle(events: Vec<TestEvent>, seen: &mut BTreeSet<u32>) {
    for e in events {
        match e {
            TestEvent::Joined { index, .. } => {
                seen.insert(index);
            }
            TestEvent::Left { index, .. } => println!("CHILD left index={index}"),
        }
    }
}

/// Another user's process: connects to a port's socket and says hello.
fn intruder(sock: &Path) {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    match rustix::net::connect(&fd, &SocketAddrUnix::new(sock).unwrap()) {
        Ok(()) => {
            let _ = rustix::net::send(&fd, &[0u8; 128], rustix::net::SendFlags::NOSIGNAL);
            println!("CHILD connected");
            // Wait for the port to hang up on us.
            let mut b = [0u8; 256];
            let _ = rustix::net::recv(&fd, &mut b, rustix::net::RecvFlags::empty());
            println!("CHILD hung up");
        }
        Err(e) => println!("CHILD error {e}"),
    }
}

// ---- the parent's side -------------------------------------------------

/// Ends the test, saying why, unless it runs as root (it acts as user
/// nobody).
macro_rules! skip_unless_root {
    () => {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: acting as user nobody needs root");
            return;
        }
    };
}

/// A child process running `role`; killed and reaped when dropped.
struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Kid {
    fn spawn(role: &str, env: &[(&str, &str)], uid: Option<u32>) -> Kid {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["child", "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env_remove("SHMNET_RUNTIME_DIR")
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid).current_dir("/");
        }
        let mut child = cmd.spawn().expect("spawn the test binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test child ... " before the first.
                if let Some(at) = line.find("CHILD ") {
                    let _ = tx.send(line[at + 6..].to_owned());
                }
            }
        });
        Kid {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    fn go(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"g").unwrap();
        stdin.flush().unwrap();
    }

    fn line(&self, within: Duration) -> String {
        self.lines
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("child said nothing within {within:?}: {e}"))
    }

    /// Closes stdin (the child's "stop") and waits for it to exit.
    fn stop(mut self) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "child exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("child did not exit when told to stop");
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under /tmp, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str, mode: u32) -> TempDir {
        let p = std::env::temp_dir().join(format!("shmnet-hm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `index=I seen=N` → (I, N).
fn parse_result(line: &str) -> (u32, usize) {
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
            .to_owned()
    };
    (
        field("index=").parse().unwrap(),
        field("seen=").parse().unwrap(),
    )
}

/// Waits for the last member's leave to remove the network's directory.
fn gone(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if !path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// `n` members of the network `net` in the runtime directory `run`, each
/// waiting to see the `n - 1` others: started, then released together.
fn members(run: &TempDir, net: &str, n: usize) -> Vec<Kid> {
    let want = (n - 1).to_string();
    let mut kids: Vec<Kid> = (0..n)
        .map(|i| {
            let device = format!("d{i}");
            Kid::spawn(
                "member",
                &[
                    ("SHMNET_RUNTIME_DIR", run.path()),
                    ("NET", net),
                    ("DEVICE", &device),
                    ("WANT", &want),
                ],
                None,
            )
        })
        .collect();
    // Every child is started and blocked on stdin: release them together.
    for k in &mut kids {
        k.go();
    }
    kids
}

#[test]
fn twenty_four_members_started_at_once_always_meet_on_one_network() {
    let run = TempDir::new("meet", 0o700);
    for round in 0..20 {
        let kids = members(&run, "meet", 24);
        let mut indices = Vec::new();
        for (i, k) in kids.iter().enumerate() {
            let line = k.line(Duration::from_secs(30));
            let (index, seen) = parse_result(&line);
            assert_eq!(seen, 23, "round {round}, child d{i}: {line}");
            indices.push(index);
        }
        indices.sort_unstable();
        assert_eq!(indices, (0..24).collect::<Vec<u32>>(), "round {round}");
        for k in kids {
            k.stop();
        }
        assert!(
            gone(&run.0.join("meet")),
            "round {round}: the last member to leave removes the network"
        );
    }
}

#[test]
fn a_member_killed_with_sigkill_is_seen_leaving_within_a_second() {
    let run = TempDir::new("kill", 0o700);
    let mut kids = members(&run, "kill", 3);
    let indices: Vec<u32> = kids
        .iter()
        .map(|k| {
            let (index, seen) = parse_result(&k.line(Duration::from_secs(20)));
            assert_eq!(seen, 2);
            index
        })
        .collect();
    let mut victim = kids.remove(0);
    victim.child.kill().unwrap(); // SIGKILL: no destructor runs
    let killed = Instant::now();
    victim.child.wait().unwrap();
    for k in &kids {
        let line = k.line(Duration::from_secs(5));
        assert_eq!(line, format!("left index={}", indices[0]));
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "seen after {:?}",
            killed.elapsed()
        );
    }
    drop(victim);
    // The survivors leave; the victim's files are reaped on the way and the
    // network is gone.
    for k in kids {
        k.stop();
    }
    assert!(gone(&run.0.join("kill")));
}

/// Runs `cmd args` as user nobody.
fn as_nobody(cmd: &str, args: &[&Path]) {
    let status = Command::new(cmd)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .status()
        .unwrap();
    assert!(status.success(), "{cmd} as nobody: {status}");
}

fn owner(path: &Path) -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::symlink_metadata(path).unwrap())
}

#[test]
fn a_runtime_directory_squatted_by_nobody_is_refused_and_left_alone() {
    skip_unless_root!();
    // World-writable and sticky, like /tmp, so nobody can squat in it.
    let base = TempDir::new("squat", 0o1777);
    let rt = base.0.join("rt");
    as_nobody("mkdir", &[&rt]);
    as_nobody("touch", &[&rt.join("keep")]);
    let xdg = base.0.join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o1777)).unwrap();
    as_nobody("mkdir", &[&xdg.join("shmnet")]);
    // Even mode 0700 does not make it ours.
    for d in [&rt, &xdg.join("shmnet")] {
        as_nobody("chmod", &[Path::new("700"), d]);
    }

    // Named explicitly.
    let err = TestMember::join(Some(&rt), "net", "victim", None, 8)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("nobody") && err.contains(rt.to_str().unwrap()),
        "{err}"
    );
    // Through $SHMNET_RUNTIME_DIR and through $XDG_RUNTIME_DIR/shmnet.
    for env in [
        ("SHMNET_RUNTIME_DIR", rt.to_str().unwrap()),
        ("XDG_RUNTIME_DIR", xdg.to_str().unwrap()),
    ] {
        let kid = Kid::spawn("join-once", &[env], None);
        let line = kid.line(Duration::from_secs(20));
        assert!(
            line.starts_with("error") && line.contains("uid 65534 (nobody)"),
            "{env:?}: {line}"
        );
    }
    // Nothing of nobody's was removed, changed or added to.
    assert_eq!(owner(&rt), NOBODY);
    assert_eq!(owner(&rt.join("keep")), NOBODY);
    assert_eq!(std::fs::read_dir(&rt).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(xdg.join("shmnet")).unwrap().count(), 0);
}

#[test]
fn a_connection_from_another_user_is_refused_and_counted() {
    skip_unless_root!();
    let base = TempDir::new("intruder", 0o700);
    let mut port = TestMember::join(Some(&base.0), "net", "target", None, 8).unwrap();
    // Open the way to the socket (shmnet never does): only the kernel's
    // credentials check is left between nobody and the port.
    let net = base.0.join("net");
    let sock = net.join(format!("port-{}.sock", port.index()));
    let set = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    set(&base.0, 0o711);
    set(&net, 0o711);
    set(&sock, 0o777);
    let kid = Kid::spawn(
        "intruder",
        &[("SOCK", sock.to_str().unwrap())],
        Some(NOBODY),
    );
    assert_eq!(kid.line(Duration::from_secs(20)), "connected");
    let deadline = Instant::now() + Duration::from_secs(5);
    while port.stats().hellos_rejected == 0 && Instant::now() < deadline {
        port.wait(Duration::from_millis(50));
        assert!(port.poll().is_empty(), "nobody never joins");
    }
    assert_eq!(port.stats().hellos_rejected, 1);
    assert_eq!(kid.line(Duration::from_secs(5)), "hung up");
    // Closed again, so the port's leave may clean up.
    set(&sock, 0o600);
    set(&net, 0o700);
    set(&base.0, 0o700);
    drop(port);
    assert!(gone(&net));
}
