//! A function of your own, first-class: registered under a kind name, it
//! runs from TOML like a built-in one — in a topology of threads, in a
//! topology whose devices are processes of this very program, and on a
//! device you build in Rust and reconfigure while it runs.
//!
//! The function, `port-guard`, sits in a chain (client → guard → server)
//! and drops UDP datagrams to the ports it is given. One probe streams TCP
//! through it (must arrive intact), another sends UDP to a guarded port
//! (must be blocked).
//!
//! ```sh
//! cargo run --release --example custom_function
//! ```

use std::time::Duration;

use shmnet::config::{DeviceConfig, RunMode};
use shmnet::functions::{
    CustomConfig, Frame, Function, FunctionConfig, FunctionError, FunctionKind, Role,
};
use shmnet::functions::{Verdict, register};
use shmnet::shm::SegmentKind;
use shmnet::smoltcp::time::Instant;
use shmnet::stack::{Applied, FunctionSpec, NetDevice};
use shmnet::topology::{ChildCommand, RunOptions, run_device, run_file};

/// `[function] kind = "port-guard"`: its parameters, read with serde.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardConfig {
    /// UDP destination ports to drop.
    udp_ports: Vec<u16>,
}

/// Drops UDP datagrams to the guarded ports; counts what it sees.
struct PortGuard {
    ports: Vec<u16>,
    blocked: u64,
    passed: u64,
}

impl PortGuard {
    fn build(c: &CustomConfig) -> Result<Box<dyn Function>, FunctionError> {
        let cfg: GuardConfig = c.params()?;
        Ok(Box::new(PortGuard {
            ports: cfg.udp_ports,
            blocked: 0,
            passed: 0,
        }))
    }
}

impl Function for PortGuard {
    fn kind(&self) -> FunctionKind {
        FunctionKind::packet("port-guard")
    }

    // Every frame the device forwards, from either network. The frame
    // starts with its Ethernet header; `ip()` is the one parsed IP view.
    fn on_ingress(&mut self, _now: Instant, _from: Role, frame: &mut Frame<'_>) -> Verdict {
        let guarded = frame.ip().is_some_and(|ip| {
            ip.proto == 17 && ip.ports().is_some_and(|(_, dst)| self.ports.contains(&dst))
        });
        if guarded {
            self.blocked += 1;
            Verdict::Drop
        } else {
            self.passed += 1;
            Verdict::Pass
        }
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        visit("blocked", self.blocked);
        visit("passed", self.passed);
    }

    // A new port list keeps the counters: applied in place.
    fn reconfigure(&mut self, cfg: &dyn FunctionSpec) -> Result<bool, FunctionError> {
        match cfg.downcast_ref::<FunctionConfig>() {
            Some(FunctionConfig::Custom(c)) if c.kind == "port-guard" => {
                self.ports = c.params::<GuardConfig>()?.udp_ports;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// The chain's device files: client and blocked-client probes → guard →
/// echo server. `tag` keeps the networks of each run apart.
fn device_files(tag: &str) -> Vec<(&'static str, String)> {
    let route = |to: &str, via: &str| format!("[[route]]\nto = \"{to}\"\nvia = \"{via}\"\n");
    let dev = |name: &str, function: &str, local: (&str, &str), global: (&str, &str)| {
        format!(
            "name = \"{name}\"\nfunction = {function}\n\
             local = {{ segment = \"{tag}-{}\", address = \"{}\" }}\n\
             global = {{ segment = \"{tag}-{}\", address = \"{}\" }}\n",
            local.0, local.1, global.0, global.1
        )
    };
    vec![
        (
            "server.toml",
            dev(
                "server",
                "{ kind = \"echo\" }",
                ("b", "10.1.0.2/24"),
                ("s", "10.9.0.2/24"),
            ) + &route("10.0.0.0/24", "10.1.0.254"),
        ),
        (
            "guard.toml",
            dev(
                "guard",
                "{ kind = \"port-guard\", udp_ports = [7] }",
                ("a", "10.0.0.254/24"),
                ("b", "10.1.0.254/24"),
            ) + "forward = true\n",
        ),
        (
            "client.toml",
            dev(
                "client",
                "{ kind = \"probe\", tcp = [\"10.1.0.2:7\"], bytes = 1048576 }",
                ("a", "10.0.0.1/24"),
                ("c", "10.8.0.1/24"),
            ) + &route("10.1.0.0/24", "10.0.0.254"),
        ),
        (
            "udp-client.toml",
            dev(
                "udp-client",
                "{ kind = \"probe\", udp = [\"10.1.0.2:7\"], expect_blocked = true, timeout = \"500ms\" }",
                ("a", "10.0.0.3/24"),
                ("d", "10.7.0.3/24"),
            ) + &route("10.1.0.0/24", "10.0.0.254"),
        ),
    ]
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    register("port-guard", PortGuard::build)?;

    // Started as a device process by the run below: run that one device.
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, file] = args.as_slice()
        && flag == "--device"
    {
        let cfg = DeviceConfig::load(file.as_ref())?;
        let out = run_device(&cfg, &RunOptions::default(), |l| println!("  {l}"))?;
        std::process::exit(if out.ok { 0 } else { 1 });
    }

    let mut ok = true;
    for mode in [RunMode::Thread, RunMode::Process] {
        let tag = format!("cfn{}{}", std::process::id(), mode as u8);
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir)?;
        let mut topology = String::from("name = \"custom\"\n");
        for (file, text) in device_files(&tag) {
            std::fs::write(dir.join(file), text)?;
            topology.push_str(&format!("[[device]]\nfile = \"{file}\"\n"));
        }
        std::fs::write(dir.join("topology.toml"), topology)?;
        println!("--- {mode:?} mode");
        let opts = RunOptions {
            mode: Some(mode),
            duration: Some(Duration::from_secs(60)),
            // Device processes are this program, started with `--device FILE`.
            child: Some(ChildCommand::new(std::env::current_exe()?).arg("--device")),
            ..Default::default()
        };
        let out = run_file(&dir.join("topology.toml"), &opts, |l| println!("  {l}"))?;
        for s in out.stats.iter().filter(|s| s.function == "port-guard") {
            println!("  guard counters: {:?}", s.function_counters);
        }
        for e in &out.exits {
            let status = e.status.map_or("not reaped".into(), |s| s.to_string());
            let why = if e.stopped_by_run {
                " (stopped by the run)"
            } else {
                ""
            };
            println!("  process {}: {status}{why}", e.device);
        }
        for why in &out.failures {
            eprintln!("  FAILED: {why}");
        }
        ok &= out.ok;
        std::fs::remove_dir_all(&dir)?;
    }

    // A device built in Rust around the function, reconfigured live.
    println!("--- a device built with the function, reconfigured while it runs");
    let cfg = DeviceConfig::from_toml(&device_files("cfn-live")[1].1, "guard (built in Rust)")?;
    let guard = Box::new(PortGuard {
        ports: vec![7],
        blocked: 0,
        passed: 0,
    });
    let (handle, thread) = NetDevice::with_function(&cfg, guard, SegmentKind::InProcess)?.spawn();
    let wider = FunctionConfig::from_toml("kind = \"port-guard\"\nudp_ports = [7, 9, 53]")?;
    let applied = handle.reconfigure(wider)?.wait(Duration::from_secs(5))?;
    println!("  udp_ports = [7, 9, 53]: {applied:?}");
    ok &= applied == Applied::InPlace;
    let typo = FunctionConfig::from_toml("kind = \"port-guard\"\nudp_port = [7]");
    println!(
        "  a typo is refused: {}",
        shmnet::error::Chain(&typo.unwrap_err())
    );
    handle.stop();
    let _ = thread.join();

    if !ok {
        return Err("the chain did not behave as configured".into());
    }
    println!("ok");
    Ok(())
}
