//! The `shmnet` command: run a topology, run one device, benchmark, talk
//! to a manager.
//!
//! Only this binary needs clap, env_logger and signal-hook (the `cli`
//! feature); the library builds without them.

mod bench;
mod ctl;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use shmnet::config::{DeviceConfig, RunMode};
use shmnet::error::Chain;
use shmnet::shm::Segment;
use shmnet::stack::DeviceStats;
use shmnet::topology::{ChildCommand, RunOptions, RunOutcome, run_device, run_file};

/// Like `println!`, but a closed stdout (`shmnet run | head`) winds the
/// program down as SIGTERM would, instead of panicking.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout().lock(), $($t)*).is_err() {
            SHUTDOWN.store(true, Ordering::Relaxed);
        }
    }};
}

#[derive(Parser)]
#[command(
    name = "shmnet",
    version,
    about = "Network devices with their own TCP/IP stacks, talking over shared memory"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every device of a topology file (as threads of this process by default).
    Run {
        topology: PathBuf,
        /// Stop after this many seconds (default: when every probe is done,
        /// or on Ctrl-C if there is none).
        #[arg(long)]
        duration: Option<f64>,
        /// Run devices as threads (default) or as separate processes.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<RunMode>,
        /// Kept for old scripts: the counters are always printed at the end
        /// (in process mode, by each device process).
        #[arg(long, hide = true)]
        stats: bool,
        /// Managers' policies decide and log but change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run one device as its own process, joining its networks' shared
    /// segments by name.
    Device {
        config: PathBuf,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
    },
    /// List this machine's named segments and who is attached.
    Segments,
    /// Remove named segments no live process is attached to.
    Clean,
    /// Measure shmnet against the kernel path; prints one JSON object per result.
    Bench(bench::BenchCli),
    /// Talk to a running manager: devices, counters, functions, captures,
    /// policy, probes.
    Ctl(ctl::CtlCli),
    /// The far end of a process-mode benchmark (internal).
    #[command(hide = true)]
    BenchPeer {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn parse_mode(s: &str) -> Result<RunMode, String> {
    match s {
        "thread" => Ok(RunMode::Thread),
        "process" => Ok(RunMode::Process),
        _ => Err(format!("{s:?}: use thread or process")),
    }
}

fn print_stats(s: &DeviceStats) {
    say!(
        "{} [{}]: routed local {} global {}; dropped in {} out {}; oversize {}; mss clamped {}",
        s.name,
        s.function,
        s.nic.routed_local,
        s.nic.routed_global,
        s.nic.ingress_dropped,
        s.nic.egress_dropped,
        s.nic.oversize,
        s.nic.mss_clamped
    );
    if s.nic.forwarded
        + s.nic.no_route
        + s.nic.no_neighbour
        + s.nic.ttl_expired
        + s.nic.consumed
        + s.nic.redirected
        > 0
    {
        say!(
            "  forwarded {}; no route {}; no neighbour {}; ttl expired {}; \
             taken by the function {}; sent to its next hop {}",
            s.nic.forwarded,
            s.nic.no_route,
            s.nic.no_neighbour,
            s.nic.ttl_expired,
            s.nic.consumed,
            s.nic.redirected
        );
    }
    for (net, a) in [("local", &s.local), ("global", &s.global)] {
        let nonzero: Vec<String> = a
            .pairs()
            .iter()
            .filter(|(_, v)| *v != 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        say!(
            "  {net:6} {}",
            if nonzero.is_empty() {
                "idle".into()
            } else {
                nonzero.join(" ")
            }
        );
    }
    if !s.function_counters.is_empty() {
        let f: Vec<String> = s
            .function_counters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        say!("  {:6} {}", "fn", f.join(" "));
    }
}

/// Set by SIGINT/SIGTERM: devices stop, detach and remove segments they
/// were the last users of.
static SHUTDOWN: AtomicBool = AtomicBool::new(false);

fn shutting_down() -> bool {
    SHUTDOWN.load(Ordering::Relaxed)
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, &SHUTDOWN) {
            eprintln!("shmnet: cannot handle signal {sig}: {e}");
        }
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Run {
            topology,
            duration,
            mode,
            stats: _,
            dry_run,
        } => {
            // Device processes run this very binary.
            let child = std::env::current_exe()
                .ok()
                .map(|exe| ChildCommand::new(exe).arg("device"));
            let opts = RunOptions {
                duration: duration.map(Duration::from_secs_f64),
                mode,
                stop: Some(&SHUTDOWN),
                child,
                dry_run,
            };
            let out = run_file(&topology, &opts, |line| say!("{line}"));
            exit_code("run", out.map_err(|e| Chain(&*e).to_string()))
        }
        Cmd::Device { config, duration } => {
            device_command(&config, duration.map(Duration::from_secs_f64))
        }
        Cmd::Segments => list_segments(),
        Cmd::Clean => clean_segments(),
        Cmd::Bench(args) => bench::main(&args),
        Cmd::Ctl(args) => ctl::main(&args, &SHUTDOWN),
        Cmd::BenchPeer { args } => bench::peer_main(&args),
    };
    std::process::exit(code);
}

fn device_command(config: &std::path::Path, duration: Option<Duration>) -> i32 {
    let cfg = match DeviceConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shmnet device: {}", Chain(&e));
            return 2;
        }
    };
    let opts = RunOptions {
        duration,
        stop: Some(&SHUTDOWN),
        ..Default::default()
    };
    let out = run_device(&cfg, &opts, |line| say!("{line}"));
    exit_code("device", out.map_err(|e| Chain(&e).to_string()))
}

/// Prints how a run ended (counters, failures, or why it could not
/// start) and returns the exit status `shmnet CMD` gives it: 0 all well,
/// 1 something failed, 2 it could not run.
fn exit_code(cmd: &str, out: Result<RunOutcome, String>) -> i32 {
    match out {
        Ok(out) => {
            out.stats.iter().for_each(print_stats);
            for why in &out.failures {
                eprintln!("shmnet {cmd}: {why}");
            }
            if out.ok { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("shmnet {cmd}: {e}");
            2
        }
    }
}

/// This user's host networks, or the reason there are none to show.
fn host_networks(cmd: &str) -> Option<Vec<String>> {
    match Segment::list_host() {
        Ok(names) => Some(names),
        Err(e) => {
            eprintln!("shmnet {cmd}: {}", Chain(&e));
            None
        }
    }
}

fn list_segments() -> i32 {
    let Some(names) = host_networks("segments") else {
        return 1;
    };
    for name in names {
        match Segment::open(&name) {
            Ok(seg) => {
                let peers = seg.peers();
                say!(
                    "{name}: mtu {} {:?}, max_ports {}, {} MiB per port, {} port(s) attached{}",
                    seg.mtu(),
                    seg.medium(),
                    seg.geometry().max_ports,
                    seg.geometry().region_len() >> 20,
                    peers.len(),
                    peers
                        .iter()
                        .map(|p| format!(
                            " [port {} {:?} pid {}]",
                            p.index, p.info.name, p.owner_pid
                        ))
                        .collect::<String>()
                );
            }
            Err(e) => say!("{name}: {}", Chain(&e)),
        }
    }
    0
}

fn clean_segments() -> i32 {
    let Some(names) = host_networks("clean") else {
        return 1;
    };
    let mut code = 0;
    for name in names {
        match Segment::remove_if_unused(&name) {
            Ok(true) => say!("removed {name}"),
            Ok(false) => say!("kept {name}: in use"),
            Err(e) => {
                eprintln!("shmnet clean: {name}: {}", Chain(&e));
                code = 1;
            }
        }
    }
    code
}
