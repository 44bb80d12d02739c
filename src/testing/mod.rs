//! The test harness: what unit tests, integration tests, fuzz targets and
//! `shmnet bench` share, so that none of them writes its own frames,
//! device files or waits.
//!
//! - [`frames`]: Ethernet/IP/TCP/UDP frames built with smoltcp's Repr
//!   types, and an [`IpHeader`](frames::IpHeader) writer for fuzz targets.
//! - [`DeviceToml`] / [`NetToml`]: the device file, written by code and
//!   parsed like any other.
//! - devices as threads and the waits around them ([`spawn`],
//!   [`wait_finished`], [`run_to_end`], [`probe_intact`], [`wait_for`], [`stop_all`],
//!   [`counter`]), the
//!   usual chain ends ([`probe_client`], [`echo_server`]), and a
//!   [`RawPort`] for hand-made frames.
//! - [`VirtualClock`]: devices built with [`device()`] and polled in the
//!   test's thread on virtual time, deterministically; [`VirtualHosts`]:
//!   a client and the devices it talks to, on such a clock.
//! - [`function`]: one function driven by hand (its hooks, counters and
//!   config errors), as the functions' unit tests do.
//! - [`fuzz`]: input framing for the fuzz targets.
//!
//! Built for the crate's own unit tests, and with the `testing` feature
//! for everyone else (the integration tests and the fuzz crate enable it;
//! the `cli` feature does, for the bench). Helpers panic on failure: they
//! are for tests.
//!
//! ```
//! use std::time::Duration;
//! use shmnet::testing::{DeviceToml, spawn, stop_all, unique, wait_finished};
//!
//! // Two devices on the same pair of networks: an echo server and a probe.
//! let (lan, wan) = (unique("lan"), unique("wan"));
//! let server = DeviceToml::host("server", &lan, &wan, 2)
//!     .function(r#"{ kind = "echo" }"#)
//!     .settings();
//! let client = DeviceToml::host("client", &lan, &wan, 1)
//!     .function(r#"{ kind = "probe", udp = ["10.0.0.2:7"] }"#)
//!     .settings();
//! let (server, client) = (spawn(&server), spawn(&client));
//! let report = wait_finished(&client.0, Duration::from_secs(30));
//! assert!(report[0].contains("datagrams echoed intact"), "{report:?}");
//! stop_all([client, server]);
//! ```

mod clock;
mod device;
pub mod frames;
pub mod function;
pub mod fuzz;
mod topology;

pub use clock::{VirtualClock, VirtualHosts};
pub use device::{DeviceToml, NetToml};
pub use topology::{
    RawPort, Running, counter, device, echo_server, probe_client, probe_intact, raw_port,
    raw_port_as, run_to_end, spawn, stop_all, unique, wait_finished, wait_for,
};
