//! Devices: one smoltcp `Interface` + `SocketSet`, the [`Nic`] that owns
//! both adapters, the device's function, the runtime loop and the counters.
//!
//! - `device`: [`NetDevice`], built from validated settings (it attaches its
//!   networks through [`crate::adapters`]), polled one round at a time
//!   ([`NetDevice::poll_at`] on any clock, [`NetDevice::poll`] on the wall clock)
//!   or run by its loop: busy-poll while traffic flows, yield the core
//!   every [`SPIN_HOT`], and after [`SPIN`] sleep on the adapters' wake-ups,
//!   bounded by smoltcp's next timer, so an idle device costs ~0 % CPU;
//! - `handle`: [`DeviceHandle`], what other threads hold;
//! - [`nic`]: the interface system (routing, forwarding, hooks);
//! - `counters`: the device's one counters table ([`DeviceStats`]).
//!
//! ```
//! use shmnet::config::DeviceConfig;
//! use shmnet::adapters::shm::SegmentKind;
//! use shmnet::stack::NetDevice;
//! let cfg = DeviceConfig::from_toml(r#"
//!     name = "doc"
//!     local = { segment = "doc-lan", address = "10.9.0.1/24" }
//!     global = { segment = "doc-wan", address = "10.10.0.1/16" }
//! "#, "inline").unwrap();
//! let mut dev = NetDevice::new(&cfg, SegmentKind::InProcess).unwrap();
//! // One round on a virtual clock, one on the wall clock.
//! dev.poll_at(smoltcp::time::Instant::from_millis(5));
//! dev.poll();
//! assert_eq!(dev.stats().local.tx_frames, 0);
//! ```

mod counters;
mod device;
mod handle;
pub mod hook;
pub mod nic;
mod sockets;
pub mod spec;

pub use counters::{CounterName, DeviceStats, NicCounters, NicStats};
pub use device::{DeviceError, NetDevice, SPIN, SPIN_HOT};
pub use handle::{Applied, ChangeError, DeviceHandle, Ticket};
pub use hook::{
    Directory, Emit, Frame, Function, FunctionError, FunctionKind, LinkInfo, SocketContext, Verdict,
};
pub use nic::{Nic, Router, Transit};
pub use sockets::{DEFAULT_POOL_BYTES, DEFAULT_TCP_BUFFER, SocketPool, new_tcp_socket};
pub use spec::{
    Congestion, DeviceBlueprint, DeviceSpec, FunctionSpec, NetworkSpec, SocketSettings, StaticRoute,
};

/// Which of a device's two networks (`"local"` / `"global"` in config
/// files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The host's local network.
    Local,
    /// The global network (this host's devices plus remote nodes).
    Global,
}

impl Role {
    /// Both, in [`Role::index`] order.
    pub const ALL: [Role; 2] = [Role::Local, Role::Global];

    /// 0 for local, 1 for global: the index of per-network arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The other network.
    pub fn other(self) -> Role {
        match self {
            Role::Local => Role::Global,
            Role::Global => Role::Local,
        }
    }

    /// `local` or `global`, as in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Role::Local => "local",
            Role::Global => "global",
        }
    }
}
