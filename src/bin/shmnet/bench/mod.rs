//! `shmnet bench`: throughput and latency against the kernel path.
//!
//! Every benchmark measures shmnet and, in the same run, the comparable
//! kernel path (TCP over 127.0.0.1, or a Unix datagram socket pair for raw
//! frames), and prints one JSON object per result on stdout. Each
//! measurement is repeated (3 times, once with `--quick`) and the median is
//! reported; `ratio` > 1 means shmnet did better.
//!
//! In process mode the far side (TCP sink, echo server or frame receiver)
//! runs in a child process started as `shmnet bench-peer ...`, attached to
//! the same named host segments; it prints `ready` once attached.
//!
//! One file per benchmark (`tcp` for bulk and round trips, `frames`,
//! `idle`, `function` with its `chain`, `tap`, `vxlan`, `cache`, `proxy`,
//! `manage`),
//! the kernel reference paths in `kernel`, the request/response load
//! generator of `cache` and `proxy` in `load`, the JSON lines in `report`,
//! the process-mode far side in `peer`.

mod cache;
mod chain;
mod flows;
mod frames;
mod function;
mod idle;
mod kernel;
mod load;
mod manage;
mod peer;
mod proxy;
mod report;
mod tap;
mod tcp;
mod vxlan;

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use shmnet::config::DeviceSettings;
use shmnet::shm::{NetworkParams, PortInfo, Segment, SegmentKind};
use shmnet::stack::NetDevice;
use shmnet::testing::DeviceToml;

use cache::bench_cache;
use flows::{Server, Service, bench_connect, bench_flows_all, server_settings};
use frames::{bench_frames, recv_frames};
use function::{FUNCTIONS_BENCHED, bench_function};
use idle::{IdleArgs, bench_idle};
use load::LoadArgs;
use manage::bench_manage;
use proxy::bench_proxy;
use tap::bench_tap;
use tcp::{bench_rr, bench_tcp, listen, serve};
use vxlan::bench_vxlan;

/// Arguments of `shmnet bench`.
#[derive(Debug, clap::Args)]
pub struct BenchCli {
    /// Short smoke run (of everything when no benchmark is named).
    #[arg(long, global = true)]
    pub quick: bool,
    #[command(subcommand)]
    pub cmd: Option<BenchCmd>,
}

/// The benchmarks.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCmd {
    /// TCP bulk transfer device to device.
    Tcp {
        /// IP MTU of the network.
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
        #[arg(long, value_enum, default_value_t = Mode::Thread)]
        mode: Mode,
        /// Bytes per transfer (default 256 MiB for MTU >= 9000, 128 MiB below;
        /// 16 MiB with --quick).
        #[arg(long)]
        bytes: Option<u64>,
    },
    /// 64-byte request/response round trips over one TCP connection.
    Rr {
        #[arg(long, value_enum, default_value_t = Mode::Thread)]
        mode: Mode,
        /// Round trips per run (default 100000; 2000 with --quick).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Fresh connections, each transferring one size (64 KiB to 256 MiB):
    /// throughput from connect to close.
    Flows {
        /// Only this mode (default: thread and process).
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// Only this IP MTU (default: 1500 and 65535).
        #[arg(long)]
        mtu: Option<u32>,
        /// Bytes per connection, comma-separated (default: 64 KiB, 256 KiB,
        /// 1, 4, 16 and 256 MiB; 256 MiB left out with --quick).
        #[arg(long, value_delimiter = ',')]
        bytes: Option<Vec<u64>>,
        /// Bytes of each TCP socket buffer at both ends (default: the
        /// device default, 1 MiB).
        #[arg(long)]
        tcp_buffer: Option<usize>,
    },
    /// Connections per second, each connect + 1 KiB request + 1 KiB reply
    /// + close; also the memory an idle connection and a device cost.
    Connect {
        #[arg(long, value_enum, default_value_t = Mode::Thread)]
        mode: Mode,
        /// Connections per run (default 20000; 500 with --quick).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Raw frames adapter to adapter through the shared-memory ports.
    Frames {
        /// Frame size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, value_enum, default_value_t = Mode::Thread)]
        mode: Mode,
        /// Frames per run (default 20 M; 0.5 M with --quick). The kernel path
        /// sends a quarter as many.
        #[arg(long)]
        count: Option<u64>,
    },
    /// A network function: its cost per packet, and TCP through a chain
    /// client → function device(s) → server (devices as threads).
    Function {
        /// firewall, qos, reroute, balancer, encrypt or compress.
        #[arg(long)]
        name: String,
        /// Bytes through the chain (default 256 MiB; 16 MiB with --quick).
        #[arg(long)]
        bytes: Option<u64>,
    },
    /// A Linux TCP client through a TAP port to an echo device, both ways
    /// (needs CAP_NET_ADMIN; skipped without).
    Tap {
        /// IP MTU of the network and the TAP interface.
        #[arg(long, default_value_t = 65521)]
        mtu: u32,
        /// Bytes each way (default 256 MiB; 16 MiB with --quick).
        #[arg(long)]
        bytes: Option<u64>,
    },
    /// One-way TCP from a device on one host to a device on another across
    /// two VXLAN gateways, against Linux's own VXLAN between the same two
    /// hosts (two network namespaces; needs root, skipped without).
    Vxlan {
        /// MTU of the underlay (the veth between the hosts); the overlay
        /// gets 50 bytes less.
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
        /// Bytes (default 256 MiB; 16 MiB with --quick).
        #[arg(long)]
        bytes: Option<u64>,
    },
    /// Idle devices: the CPU they use together, and the round trip of a
    /// datagram that has to wake one.
    Idle {
        /// Idle devices (echo servers) on one pair of networks.
        #[arg(long, default_value_t = 1)]
        devices: usize,
        #[arg(long, value_enum, default_value_t = Mode::Thread)]
        mode: Mode,
        /// The window CPU use is measured over (default 5; 1 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
        /// Exchanges, each after 20 ms of silence (default 50; 10 with --quick).
        #[arg(long)]
        count: Option<u64>,
    },
    /// memcached text protocol, gets and sets 9:1 (64-byte keys, 1 KiB
    /// values, 8 requests in flight per connection) to a `cache` device,
    /// against a real memcached on 127.0.0.1 (skipped without one).
    Cache {
        /// Client connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Seconds each run lasts (default 3; 1 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
    },
    /// Keep-alive HTTP GETs of a 1 KiB body through an `http-proxy` device
    /// to an `http-server` device, against haproxy in front of a kernel
    /// HTTP server on 127.0.0.1 (skipped without haproxy).
    Proxy {
        /// Client connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Seconds each run lasts (default 3; 1 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
    },
    /// Management: TCP through a firewall chain without and with a manager
    /// polling the agents and a scraper on `/metrics` (both every second),
    /// round trips to an agent and to the manager's API, and the time from
    /// a policy condition to the new function in place.
    Manage,
}

/// Where the far side runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A thread of this process (process-local segments).
    Thread,
    /// A child process (named host segments).
    Process,
}

impl Mode {
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Thread => "thread",
            Mode::Process => "process",
        }
    }
}

type Res<T> = Result<T, String>;

const PORT: u16 = 5000;
const TIMEOUT: Duration = Duration::from_secs(120);
const SOCK_BUF: usize = 4 << 20;
const RR_SIZE: usize = 64;

/// Runs the benchmarks; returns the process exit code.
pub fn main(args: &BenchCli) -> i32 {
    let quick = args.quick;
    let reps = if quick { 1 } else { 3 };
    let jobs: Vec<BenchCmd> = match &args.cmd {
        Some(cmd) => vec![cmd.clone()],
        None => {
            let mut v = Vec::new();
            for mode in [Mode::Thread, Mode::Process] {
                for mtu in [1500, 65535] {
                    v.push(BenchCmd::Tcp {
                        mtu,
                        mode,
                        bytes: None,
                    });
                }
                v.push(BenchCmd::Rr { mode, count: None });
                v.push(BenchCmd::Flows {
                    mode: Some(mode),
                    mtu: None,
                    bytes: None,
                    tcp_buffer: None,
                });
                v.push(BenchCmd::Connect { mode, count: None });
                v.push(BenchCmd::Frames {
                    size: 64,
                    mode,
                    count: None,
                });
            }
            for mode in [Mode::Thread, Mode::Process] {
                v.push(BenchCmd::Idle {
                    devices: if quick { 8 } else { 64 },
                    mode,
                    seconds: None,
                    count: None,
                });
            }
            for mtu in [1500, 65521] {
                v.push(BenchCmd::Tap { mtu, bytes: None });
            }
            v.push(BenchCmd::Vxlan {
                mtu: 1500,
                bytes: None,
            });
            v.push(BenchCmd::Cache {
                connections: 32,
                seconds: None,
            });
            v.push(BenchCmd::Proxy {
                connections: 32,
                seconds: None,
            });
            v.push(BenchCmd::Manage);
            for name in FUNCTIONS_BENCHED {
                v.push(BenchCmd::Function {
                    name: name.to_string(),
                    bytes: None,
                });
            }
            v
        }
    };
    let mut code = 0;
    for job in &jobs {
        let r = match job {
            BenchCmd::Flows {
                mode,
                mtu,
                bytes,
                tcp_buffer,
            } => bench_flows_all(*mode, *mtu, bytes.as_deref(), *tcp_buffer, quick),
            BenchCmd::Connect { mode, count } => bench_connect(*mode, *count, quick),
            BenchCmd::Tcp { mtu, mode, bytes } => bench_tcp(*mtu, *mode, *bytes, quick, reps),
            BenchCmd::Rr { mode, count } => bench_rr(*mode, *count, quick, reps),
            BenchCmd::Frames { size, mode, count } => {
                bench_frames(*size, *mode, *count, quick, reps)
            }
            &BenchCmd::Idle {
                devices,
                mode,
                seconds,
                count,
            } => bench_idle(
                IdleArgs {
                    devices,
                    mode,
                    seconds,
                    count,
                },
                quick,
            ),
            BenchCmd::Function { name, bytes } => bench_function(name, *bytes, quick, reps),
            BenchCmd::Tap { mtu, bytes } => bench_tap(*mtu, *bytes, quick, reps),
            BenchCmd::Vxlan { mtu, bytes } => bench_vxlan(*mtu, *bytes, quick, reps),
            &BenchCmd::Cache {
                connections,
                seconds,
            } => bench_cache(
                LoadArgs {
                    connections,
                    seconds,
                },
                quick,
                reps,
            ),
            &BenchCmd::Proxy {
                connections,
                seconds,
            } => bench_proxy(
                LoadArgs {
                    connections,
                    seconds,
                },
                quick,
                reps,
            ),
            BenchCmd::Manage => bench_manage(quick),
        };
        match r {
            Ok(line) => {
                println!("{line}");
                let _ = std::io::stdout().flush();
            }
            Err(e) => {
                eprintln!("shmnet bench: {job:?}: {e}");
                code = 1;
            }
        }
    }
    code
}

/// Entry point of the hidden `bench-peer` subcommand (the far side of a
/// process-mode benchmark).
pub fn peer_main(args: &[String]) -> i32 {
    match peer(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shmnet bench-peer: {e}");
            1
        }
    }
}

fn peer(args: &[String]) -> Res<()> {
    let arg = |i: usize| -> Res<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("missing argument {i} in {args:?}"))
    };
    let num = |i: usize| -> Res<u64> {
        arg(i)?
            .parse::<u64>()
            .map_err(|e| format!("argument {i}: {e}"))
    };
    match arg(0)? {
        kind @ ("tcp" | "rr") => {
            let (lan, wan, mtu) = (arg(1)?, arg(2)?, num(3)? as u32);
            let s = settings("bench-b", 2, lan, wan, mtu)?;
            let mut dev = NetDevice::new(&s, SegmentKind::Shared).map_err(|e| e.to_string())?;
            let h = listen(&mut dev);
            ready();
            serve(&mut dev, h, kind == "rr", true);
            Ok(())
        }
        "serve" => {
            let (lan, wan, mtu) = (arg(1)?, arg(2)?, num(3)? as u32);
            let service = Service::parse(arg(4)?)?;
            let s = server_settings(lan, wan, mtu, num(5)? as usize)?;
            let mut dev = NetDevice::new(&s, SegmentKind::Shared).map_err(|e| e.to_string())?;
            let mut server = Server::new(&mut dev, service);
            // Serve until the parent closes our stdin.
            let h = dev.handle();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                h.stop();
            });
            ready();
            dev.run_until(|d| {
                server.step(d);
                false
            });
            Ok(())
        }
        "frames" => {
            let (name, size, count, mtu) = (arg(1)?, num(2)? as usize, num(3)?, num(4)? as u32);
            let seg = Segment::open_or_create(name, SegmentKind::Shared, &NetworkParams::new(mtu))
                .map_err(|e| e.to_string())?;
            let mut rx = seg
                .attach(&PortInfo::named("rx"))
                .map_err(|e| e.to_string())?;
            ready();
            let secs = recv_frames(&mut rx, size, count)?;
            println!("rate {}", count as f64 / secs);
            Ok(())
        }
        other => Err(format!("unknown peer kind {other:?}")),
    }
}

fn ready() {
    println!("ready");
    let _ = std::io::stdout().flush();
}

/// A segment name no other run uses.
fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "bench{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn settings(name: &str, host: u8, lan: &str, wan: &str, mtu: u32) -> Res<DeviceSettings> {
    DeviceToml::host(name, lan, wan, host)
        .mtu(mtu)
        .parse()
        .map_err(|e| e.to_string())
}
