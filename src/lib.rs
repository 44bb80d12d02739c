//! shmnet: network infrastructure built from small dedicated network devices
//! that talk over shared memory.
//!
//! Layers, bottom up: [`shm`] (segments, ports, rings) → [`adapters`]
//! (the network cards a device drives, behind one trait) → [`stack`] (a device: one smoltcp
//! interface, the NIC that routes between the local and global adapter, the
//! runtime loop) → [`functions`] (what a device does). [`config`] reads the
//! TOML files; [`mod@bench`] measures against the kernel path; [`topology`]
//! runs a whole topology file.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod adapters;
pub mod bench;
pub mod config;
mod counters;
pub mod functions;
pub mod shm;
pub mod stack;
pub mod topology;
