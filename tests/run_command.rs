//! `shmnet run` and `topology::run`: a run whose probe fails or never
//! completes, or whose device process dies, fails with a message naming
//! the device; however a process-mode run ends, no device process and no
//! run directory outlives it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use shmnet::config::{RunMode, Topology};
use shmnet::topology::{RunOptions, run};

const BIN: &str = env!("CARGO_BIN_EXE_shmnet");

/// A probe to an address nobody has: every exchange times out.
const PROBE_NOBODY: &str = r#"{ kind = "probe", tcp = ["10.0.0.99:7"], timeout_ms = 500 }"#;
/// A probe that would take an hour.
const PROBE_FOREVER: &str = r#"{ kind = "probe", tcp = ["10.0.0.99:7"], timeout_ms = 3600000 }"#;
const ECHO: &str = r#"{ kind = "echo" }"#;

/// Runs `shmnet run TOPOLOGY ARGS…`; returns (exit code, stdout, stderr).
fn shmnet_run(topology: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("run")
        .arg(topology)
        .args(args)
        .output()
        .expect("run shmnet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`shmnet_run`] in thread mode and in process mode, `args` after the
/// mode: asserts that each exits with `code`; returns each one's mode,
/// stdout and stderr.
fn shmnet_run_both_modes(
    topology: &Path,
    args: &[&str],
    code: i32,
) -> [(&'static str, String, String); 2] {
    ["thread", "process"].map(|mode| {
        let mut all = vec!["--mode", mode];
        all.extend(args);
        let (got, out, err) = shmnet_run(topology, &all);
        assert_eq!(got, code, "{mode}: {out}\n{err}");
        (mode, out, err)
    })
}

/// An echo server (host 2) and a client (host 1) whose function is
/// `probe`.
fn server_and_client(t: &TopologyDir, probe: &str) -> [DeviceToml; 2] {
    [t.device("server", 2, ECHO), t.device("client", 1, probe)]
}

/// `shmnet run --mode process TOPOLOGY`, started, its stdout and stderr
/// piped to the test.
fn spawn_process_run(topology: &Path) -> Child {
    Command::new(BIN)
        .args(["run", "--mode", "process"])
        .arg(topology)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shmnet run")
}

fn run_dir_of(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("shmnet-run-{pid}"))
}

#[test]
fn a_failed_probe_fails_the_run_in_both_modes() {
    let t = TopologyDir::new();
    let topo = t.write(&server_and_client(&t, PROBE_NOBODY));
    for (mode, out, err) in shmnet_run_both_modes(&topo, &[], 1) {
        assert!(
            out.contains("client: tcp 10.0.0.99:7: timed out"),
            "{mode}: {out}"
        );
        assert!(
            err.contains("shmnet run: client [probe] failed"),
            "{mode}: {err}"
        );
    }
}

#[test]
fn a_probe_that_never_completes_fails_the_run_in_both_modes() {
    let t = TopologyDir::new();
    let topo = t.write(&server_and_client(&t, PROBE_FOREVER));
    for (mode, _, err) in shmnet_run_both_modes(&topo, &["--duration", "0.5"], 1) {
        assert!(
            err.contains("shmnet run: client [probe] did not complete"),
            "{mode}: {err}"
        );
        // The server was stopped as asked: that is no failure.
        assert!(!err.contains("server"), "{mode}: {err}");
    }
}

#[test]
fn a_run_without_probes_that_is_stopped_succeeds() {
    let t = TopologyDir::new();
    let topo = t.write(&[t.device("a", 1, ECHO), t.device("b", 2, ECHO)]);
    shmnet_run_both_modes(&topo, &["--duration", "0.5"], 0);
}

#[test]
fn the_library_run_reports_a_failed_and_an_unfinished_probe() {
    let t = TopologyDir::new();
    let text = |probe: &str| {
        let mut s = String::from("name = \"lib\"\n");
        for d in server_and_client(&t, probe) {
            s.push_str("[[device]]\n");
            s.push_str(&d.to_string());
        }
        s
    };
    let opts = RunOptions {
        mode: Some(RunMode::Thread),
        duration: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let topo = Topology::from_toml(&text(PROBE_NOBODY), "lib.toml", &t.dir).unwrap();
    let out = run(&topo, &opts, |_| {}).expect("the devices start");
    assert!(!out.ok, "{out:?}");
    assert_eq!(out.failures.len(), 1, "{:?}", out.failures);
    assert!(
        out.failures[0].starts_with("client [probe] failed")
            && out.failures[0].contains("exchanges_failed=1"),
        "{:?}",
        out.failures
    );

    let opts = RunOptions {
        duration: Some(Duration::from_millis(300)),
        ..opts
    };
    let topo = Topology::from_toml(&text(PROBE_FOREVER), "lib.toml", &t.dir).unwrap();
    let out = run(&topo, &opts, |_| {}).expect("the devices start");
    assert!(!out.ok, "{out:?}");
    assert!(
        out.failures.len() == 1 && out.failures[0].starts_with("client [probe] did not complete"),
        "{:?}",
        out.failures
    );
}

#[test]
fn a_device_process_that_fails_fails_the_run_at_once() {
    // "b" cannot join: the segment "a" created has another MTU.
    let t = TopologyDir::new();
    let topo = t.write(&[
        t.device("a", 1, ECHO).mtu(1500),
        t.device("b", 2, ECHO).mtu(9000),
    ]);
    let t0 = Instant::now();
    let (code, out, err) = shmnet_run(&topo, &["--mode", "process", "--duration", "60"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("shmnet run: b [echo] exited while the run went on (exit status: 2)"),
        "{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the run went on for {:?}",
        t0.elapsed()
    );
}

/// Whether process `pid` exists (a reaped child does not).
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn sigterm_stops_a_process_run_and_every_device_with_it() {
    let t = TopologyDir::new();
    let topo = t.write(&[t.device("a", 1, ECHO), t.device("b", 2, ECHO)]);
    let mut run = spawn_process_run(&topo);
    // "device NAME ready: ..., pid N" from each device process.
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let mut pids = Vec::new();
    while pids.len() < 2 {
        let line = lines
            .next()
            .expect("a device ready line")
            .expect("utf-8 output");
        if line.starts_with("device ") && line.contains(" ready") {
            let pid = line.rsplit(' ').next().unwrap().parse::<u32>().unwrap();
            pids.push(pid);
        }
    }
    assert!(pids.iter().all(|&p| exists(p)), "{pids:?}");
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&run),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = run.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "shmnet run did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    for pid in pids {
        assert!(!exists(pid), "device process {pid} outlived the run");
    }
    assert!(!run_dir_of(run.id()).exists());
}

#[test]
fn a_process_run_leaves_no_run_directory() {
    let t = TopologyDir::new();
    let topo = t.write(&server_and_client(&t, PROBE_NOBODY));
    let run = spawn_process_run(&topo);
    let pid = run.id();
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!run_dir_of(pid).exists());
}
