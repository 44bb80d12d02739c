//! shmnet: network infrastructure built from small dedicated network devices
//! that talk over shared memory.
//!
//! Layers, bottom up: [`shm`] (segments, ports, rings) → [`adapters`]
//! (the network cards a device drives, behind one trait) → [`stack`] (a
//! device, [`stack::NetDevice`]: one smoltcp interface, the NIC that routes
//! between the local and global adapter, the runtime loop) → [`functions`]
//! (what a device does). [`config`] reads the TOML files; [`topology`] runs
//! a whole topology file, or one device as this process. The `shmnet`
//! command (and its `bench`) is the binary in `src/bin/shmnet/`, built with
//! the default `cli` feature. `testing` (feature `testing`) is the harness
//! the tests, fuzz targets and bench share.
//!
//! # Cargo features
//!
//! - `functions` (default): every built-in function, i.e. the features
//!   `firewall`, `qos`, `reroute`, `balancer`, `encrypt` (pulls in
//!   aes-gcm), `compress` (lz4_flex) and `http` (the HTTP/1.1 codec and
//!   `http-server`; httparse). Passthrough, echo and probe are always
//!   there. A kind left out is refused by name when a configuration
//!   asks for it.
//! - `cli` (default): the `shmnet` binary, with clap, env_logger,
//!   signal-hook and serde_json. The library never needs them.
//!
//! An embedder that runs only a firewall:
//!
//! ```toml
//! [dependencies]
//! shmnet = { version = "0.1", default-features = false, features = ["firewall"] }
//! ```
//!
//! smoltcp is re-exported as [`smoltcp`] (with the features shmnet needs:
//! `std`, `medium-ethernet`, `medium-ip`, `proto-ipv4`, `proto-ipv6`,
//! `socket-tcp`, `socket-udp`, `socket-icmp`); use it from there rather
//! than as a dependency of your own, so the versions always match.
//!
//! # Embedding
//!
//! ## A transfer between two devices
//!
//! A device is built from its settings (read from TOML, or
//! [`config::DeviceConfig::new`] in Rust) and runs on its own thread
//! ([`stack::NetDevice::spawn`]) or on yours ([`stack::NetDevice::run_until`],
//! [`stack::NetDevice::poll_at`] on a virtual clock). Devices naming the
//! same segment share a network.
//!
//! ```
//! use shmnet::config::{DeviceConfig, NetworkConfig};
//! use shmnet::functions::FunctionConfig;
//! use shmnet::functions::echo::EchoConfig;
//! use shmnet::shm::SegmentKind;
//! use shmnet::smoltcp::socket::tcp;
//! use shmnet::smoltcp::wire::IpAddress;
//! use shmnet::stack::NetDevice;
//!
//! let net = |host: u8| {
//!     (
//!         NetworkConfig::new("doc-embed-lan", format!("10.0.0.{host}/24")),
//!         NetworkConfig::new("doc-embed-wan", format!("10.100.0.{host}/16")),
//!     )
//! };
//! let (lan, wan) = net(2);
//! let server = DeviceConfig::new("server", lan, wan)
//!     .with_function(FunctionConfig::Echo(EchoConfig::default())) // TCP and UDP port 7
//!     .validate("server")?;
//! let (server, server_thread) = NetDevice::new(&server, SegmentKind::InProcess)?.spawn();
//!
//! let (lan, wan) = net(1);
//! let me = DeviceConfig::new("app", lan, wan).validate("app")?;
//! let mut dev = NetDevice::new(&me, SegmentKind::InProcess)?;
//! let h = dev.add_tcp();
//! let (iface, sockets) = dev.parts();
//! sockets
//!     .get_mut::<tcp::Socket>(h)
//!     .connect(iface.context(), (IpAddress::v4(10, 0, 0, 2), 7), 49152)?;
//! let data: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
//! let (mut sent, mut echoed) = (0, Vec::new());
//! dev.run_until(|d| {
//!     let s = d.sockets().get_mut::<tcp::Socket>(h);
//!     if s.can_send() {
//!         sent += s.send_slice(&data[sent..]).unwrap_or(0);
//!     }
//!     while let Ok(n) = s.recv(|b| (b.len(), b.len())) {
//!         if n == 0 { break }
//!         echoed.resize(echoed.len() + n, 0);
//!     }
//!     echoed.len() == data.len()
//! });
//! server.stop();
//! server_thread.join().unwrap();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## A function of your own
//!
//! A [`functions::Function`] sees every frame (ingress from either
//! network, egress from the device's stack) and returns a verdict; it may
//! also run sockets (attach / poll / detach). A frame starts with the link
//! header of the device's medium (14 bytes of Ethernet, or none on `ip`
//! networks); [`functions::Frame::ip`] is the one parsed IP view, and
//! [`functions::SocketContext::link`] tells the function the medium and both
//! MTUs from [`functions::Function::attach`] on. Register a factory under
//! a kind name and `kind = "..."` builds it from any device or topology
//! file, in threads or processes:
//!
//! ```
//! use shmnet::functions::{
//!     register, CustomConfig, Frame, Function, FunctionConfig, FunctionKind, Role, Verdict,
//! };
//! use shmnet::smoltcp::time::Instant;
//!
//! /// Drops UDP to one port.
//! struct DropPort(u16);
//! impl Function for DropPort {
//!     fn kind(&self) -> FunctionKind { FunctionKind::packet("drop-port") }
//!     fn on_ingress(&mut self, _: Instant, _: Role, f: &mut Frame<'_>) -> Verdict {
//!         match f.ip() {
//!             Some(ip) if ip.proto == 17 && ip.ports().map(|p| p.1) == Some(self.0) => Verdict::Drop,
//!             _ => Verdict::Pass,
//!         }
//!     }
//! }
//! #[derive(serde::Deserialize)]
//! struct Params { port: u16 }
//! register("drop-port", |c: &CustomConfig| {
//!     Ok(Box::new(DropPort(c.params::<Params>()?.port)) as Box<dyn Function>)
//! })?;
//! let cfg = FunctionConfig::from_toml("kind = \"drop-port\"\nport = 9")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A device can also be built around a function value directly:
//! [`stack::NetDevice::with_function`]. `examples/custom_function.rs` puts
//! all of this together.
//!
//! ## Live reconfiguration
//!
//! [`stack::DeviceHandle::reconfigure`] validates a configuration, sends it
//! to the running device and returns a [`stack::Ticket`]; wait on it to
//! know when the change is live. A configuration of the same kind is
//! applied in place — the firewall keeps its connection table (dropping
//! only connections the new rules forbid), QoS its queues, re-routing its
//! health state, the balancer its flows, ESP its tunnels — so flows the
//! new configuration still allows never notice. Another kind replaces the
//! function. A refused change leaves the old function running and says
//! why.
//!
//! ```
//! # use shmnet::config::{DeviceConfig, NetworkConfig};
//! # use shmnet::shm::SegmentKind;
//! use shmnet::functions::FunctionConfig;
//! use shmnet::stack::{Applied, NetDevice};
//! use std::time::Duration;
//! # let cfg = DeviceConfig::new("fw", NetworkConfig::new("doc-live-lan", "10.0.0.1/24"),
//! #     NetworkConfig::new("doc-live-wan", "10.100.0.1/16")).validate("fw")?;
//! let (handle, thread) = NetDevice::new(&cfg, SegmentKind::InProcess)?.spawn();
//! let rules = |ports: &str| FunctionConfig::from_toml(&format!(r#"
//!     kind = "firewall"
//!     default = "drop"
//!     [[rule]]
//!     action = "accept"
//!     proto = "tcp"
//!     dport = "{ports}"
//! "#));
//! let first = handle.reconfigure(rules("80")?)?;
//! assert_eq!(first.wait(Duration::from_secs(5))?, Applied::Replaced);
//! let widened = handle.reconfigure(rules("80-443")?)?;
//! assert_eq!(widened.wait(Duration::from_secs(5))?, Applied::InPlace);
//! handle.stop();
//! thread.join().unwrap();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Counters: [`stack::DeviceHandle::stats`] reads the adapters' and NIC's
//! counters live and the function's as last published (every 50 ms while
//! the device runs, when it goes to sleep, after each change, and when it
//! stops).
//!
//! ## Process mode
//!
//! With [`shm::SegmentKind::Shared`], devices of separate processes of the
//! same user share networks. [`topology::run_device`] runs one device as
//! this process (what `shmnet device FILE` does);
//! [`topology::run`] in process mode starts one child per device, by default
//! the `shmnet` binary, or your own program through
//! [`topology::ChildCommand`] (which then registers its kinds and calls
//! `run_device`), and reports each child's exit status
//! ([`topology::RunOutcome::exits`]); any failure fails the run. See the
//! [`topology`] module for the whole pattern.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod adapters;
pub mod config;
mod counters;
pub mod error;
pub mod functions;
pub mod management;
pub mod shm;
pub mod stack;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod topology;
pub mod wire;

/// The smoltcp this crate is built on (its types are all over the API:
/// `Instant`, `IpAddress`, `Interface`, sockets). Use it through this
/// re-export rather than a separate dependency, so the versions and
/// features always match.
pub use smoltcp;
