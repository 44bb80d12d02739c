//! shmnet: network infrastructure built from small dedicated network devices
//! that talk over shared memory.
//!
//! Layers, bottom up: [`shm`] (segments, ports, rings) → [`adapters`]
//! (the network cards a device drives, behind one trait) → [`stack`] (a device: one smoltcp
//! interface, the NIC that routes between the local and global adapter, the
//! runtime loop) → [`functions`] (what a device does). [`config`] reads the
//! TOML files; [`topology`] runs a whole topology file. The `shmnet`
//! command (and its `bench`) is the binary in `src/bin/shmnet/`, built
//! with the default `cli` feature. [`testing`] (feature `testing`) is the
//! harness the tests, fuzz targets and bench share.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod adapters;
pub mod config;
pub mod error;
mod counters;
pub mod functions;
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
