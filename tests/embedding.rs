//! The library as an embedder uses it: changes to a running device report
//! when and whether they took effect; a function kind the program registers
//! runs from TOML, in threads and in device processes the program starts
//! as itself; a process-mode run reports every device's exit status and
//! fails when one fails.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use shmnet::config::{DeviceConfig, RunMode};
use shmnet::functions::echo::{Echo, EchoConfig};
use shmnet::functions::{
    CustomConfig, Function, FunctionConfig, FunctionError, FunctionKind, register, registered,
};
use shmnet::stack::{Applied, ChangeError, FunctionSpec};
use shmnet::topology::{ChildCommand, RunOptions, RunOutcome, run_device, run_file};

const WAIT: Duration = Duration::from_secs(10);

/// `kind = "test-echo"`: the built-in echo under a name of our own, with
/// its own parameter name, so a probe can tell whether it runs.
fn register_test_echo() {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Params {
        listen: u16,
    }
    register("test-echo", |c: &CustomConfig| {
        let p: Params = c.params()?;
        let cfg = EchoConfig {
            port: p.listen,
            ..EchoConfig::default()
        };
        Ok(Box::new(Echo::new(cfg)?) as Box<dyn Function>)
    })
    .expect("register test-echo");
}

/// A configuration that passes validation but that the device's function
/// refuses when it is applied.
#[derive(Debug)]
struct RefusedInPlace;

struct Stubborn;
impl Function for Stubborn {
    fn kind(&self) -> FunctionKind {
        FunctionKind::packet("stubborn")
    }
    fn reconfigure(&mut self, cfg: &dyn FunctionSpec) -> Result<bool, FunctionError> {
        match cfg.downcast_ref::<RefusedInPlace>() {
            Some(_) => Err(FunctionError::Invalid {
                kind: "stubborn",
                why: "never changes".into(),
            }),
            None => Ok(false),
        }
    }
}

impl FunctionSpec for RefusedInPlace {
    fn kind(&self) -> &str {
        "stubborn"
    }
    fn build(&self) -> Result<Box<dyn Function>, FunctionError> {
        Ok(Box::new(Stubborn))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A configuration no function can be built from.
#[derive(Debug)]
struct Unbuildable;

impl FunctionSpec for Unbuildable {
    fn kind(&self) -> &str {
        "unbuildable"
    }
    fn build(&self) -> Result<Box<dyn Function>, FunctionError> {
        Err(FunctionError::Invalid {
            kind: "unbuildable",
            why: "cannot be built".into(),
        })
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[test]
fn every_change_has_a_ticket_that_says_how_it_ended() {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let s = settings("dev", &lan, &wan, 1, 1500, r#"{ kind = "passthrough" }"#);
    let (h, t) = spawn(&s);

    // Another kind: a new function replaces the old one.
    let compress = |level: i64| {
        FunctionConfig::from_toml(&format!(
            "kind = \"compress\"\nmin_size = {level}\nhop = \"global\""
        ))
        .expect("compress config")
    };
    let ticket = h.reconfigure(compress(64)).expect("valid");
    assert_eq!(ticket.wait(WAIT).expect("applied"), Applied::Replaced);
    assert_eq!(h.stats().function, "compress");
    // The same kind: applied in place.
    let second = h.reconfigure(compress(128)).expect("valid");
    assert!(second.epoch() > ticket.epoch());
    assert_eq!(second.wait(WAIT).expect("applied"), Applied::InPlace);
    assert_eq!(
        ticket.outcome().expect("known").ok(),
        Some(Applied::Replaced)
    );

    // Invalid: caught when read, and refused by the handle before
    // anything is sent; the function is unchanged.
    let text = "kind = \"firewall\"\n[[rule]]\naction = \"accept\"\ndport = 99999";
    let bad = FunctionConfig::from_toml(text).expect_err("a port above 65535");
    assert!(bad.to_string().contains("99999"), "{bad}");
    let e = h.reconfigure(Unbuildable).expect_err("validated first");
    assert!(e.to_string().contains("cannot be built"), "{e}");
    assert_eq!(h.stats().function, "compress");

    // Refused by the running function: the error comes back on the ticket.
    h.replace_function(Box::new(Stubborn))
        .wait(WAIT)
        .expect("installed");
    let refused = h.reconfigure(RefusedInPlace).expect("validates");
    match refused.wait(WAIT) {
        Err(ChangeError::Refused { source, .. }) => {
            assert!(source.to_string().contains("never changes"), "{source}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(h.stats().function, "stubborn");

    // A stopped device applies nothing more.
    h.stop();
    t.join().unwrap();
    let late = h.reconfigure(compress(64)).expect("valid");
    assert!(matches!(late.wait(WAIT), Err(ChangeError::Stopped { .. })));
}

#[test]
fn a_device_polled_by_hand_reconfigures_synchronously() {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let compress = r#"{ kind = "compress", hop = "global", min_size = 64 }"#;
    let mut dev = device(&settings("dev", &lan, &wan, 1, 1500, compress));
    let other = FunctionConfig::from_toml("kind = \"compress\"\nhop = \"global\"\nmin_size = 256");
    assert_eq!(dev.reconfigure(&other.unwrap()).unwrap(), Applied::InPlace);
    // compress does not know this configuration: it is replaced.
    assert_eq!(dev.reconfigure(&RefusedInPlace).unwrap(), Applied::Replaced);
    assert_eq!(dev.stats().function, "stubborn");
    // Now the function refuses it: an error, and it keeps running.
    assert!(dev.reconfigure(&RefusedInPlace).is_err());
    assert_eq!(dev.stats().function, "stubborn");
}

/// Runs the topology file `topo` for at most `duration`: its devices as
/// threads, or with `child` as processes started as `child`.
fn run_topology(topo: &Path, duration: Duration, child: Option<ChildCommand>) -> RunOutcome {
    let mode = match child {
        Some(_) => RunMode::Process,
        None => RunMode::Thread,
    };
    let opts = RunOptions {
        mode: Some(mode),
        duration: Some(duration),
        child,
        ..Default::default()
    };
    run_file(topo, &opts, |_| {}).expect("the topology loads")
}

#[test]
fn a_registered_kind_runs_from_toml_in_threads() {
    register_test_echo();
    assert!(registered().contains(&"test-echo".to_string()));
    let t = TopologyDir::new();
    let server = t.device("server", 2, r#"{ kind = "test-echo", listen = 7 }"#);
    let client = t.device(
        "client",
        1,
        r#"{ kind = "probe", tcp = ["10.0.0.2:7"], udp = ["10.0.0.2:7"], bytes = 100000 }"#,
    );
    let topo = t.write(&[server, client]);
    let out = run_topology(&topo, Duration::from_secs(60), None);
    assert!(out.ok, "{:?} {:?}", out.failures, out.reports);
    assert!(
        out.reports.iter().filter(|l| l.contains("intact")).count() == 2,
        "{:?}",
        out.reports
    );

    // A bad parameter of the custom kind fails when the file is read.
    let bad = DeviceConfig::from_toml(
        &t.device("server", 2, r#"{ kind = "test-echo", lisen = 7 }"#)
            .to_string(),
        "bad.toml",
    )
    .expect_err("unknown field");
    let msg = shmnet::error::Chain(&bad).to_string();
    assert!(msg.contains("bad.toml") && msg.contains("lisen"), "{msg}");
}

/// Set in a child started by [`device_processes_can_be_this_program`].
const CHILD_ENV: &str = "SHMNET_EMBEDDING_TEST_CHILD";

/// Not a test of its own: when this test binary is started as a device
/// process (with [`CHILD_ENV`] set), it registers its kinds and runs the
/// device file given as the last argument, as an embedder's program would.
/// (It has no signal handler: the runner's SIGTERM ends it, which the
/// runner counts as stopped as asked.)
#[test]
fn child_device_main() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    register_test_echo();
    let file = std::env::args().next_back().expect("a device file");
    let cfg = DeviceConfig::load(file.as_ref()).expect("device file");
    let out = run_device(&cfg, &RunOptions::default(), |l| println!("{l}")).expect("starts");
    std::process::exit(if out.ok { 0 } else { 1 });
}

#[test]
fn device_processes_can_be_this_program() {
    register_test_echo();
    let t = TopologyDir::new();
    let server = t.device("server", 2, r#"{ kind = "test-echo", listen = 7 }"#);
    let client = t.device(
        "client",
        1,
        r#"{ kind = "probe", tcp = ["10.0.0.2:7"], bytes = 100000 }"#,
    );
    let topo = t.write(&[server, client]);
    let child = ChildCommand::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, "1")
        .arg("--exact")
        .arg("child_device_main")
        .arg("--nocapture")
        .arg("--test-threads=1");
    let out = run_topology(&topo, Duration::from_secs(60), Some(child));
    assert!(out.ok, "{:?}", out.failures);
    assert_eq!(out.exits.len(), 2, "{:?}", out.exits);
    let client = out.exits.iter().find(|e| e.device == "client").unwrap();
    assert!(
        client.status.is_some_and(|s| s.success()) && !client.stopped_by_run,
        "{client:?}"
    );
    let server = out.exits.iter().find(|e| e.device == "server").unwrap();
    assert!(server.stopped_by_run, "{server:?}");
}

#[test]
fn a_device_process_that_exits_with_an_error_fails_the_library_run() {
    let t = TopologyDir::new();
    let topo = t.write(&[t.device("a", 1, r#"{ kind = "echo" }"#)]);
    // `sh -c 'exit 3' sh FILE`: a device program that fails at once.
    let child = ChildCommand::new("/bin/sh")
        .arg("-c")
        .arg("exit 3")
        .arg("sh");
    let out = run_topology(&topo, Duration::from_secs(30), Some(child));
    assert!(!out.ok);
    assert_eq!(out.exits.len(), 1);
    assert_eq!(out.exits[0].status.and_then(|s| s.code()), Some(3));
    assert!(
        out.failures[0].contains("a [echo] exited while the run went on"),
        "{:?}",
        out.failures
    );
}
