//! Packet functions: sans-IO hooks on the frames a forwarding device
//! carries (firewall, QoS, re-routing, L4 balancer, ESP encryption, LZ4
//! compression). Each reads the frame's one parsed view
//! ([`crate::wire::IpView`]) and returns a [`Verdict`]; held frames are
//! released through [`Function::poll_transmit`].

// The contract and the shared config fragments, for the functions below.
#[allow(unused_imports)]
use super::{
    Directory, Emit, Frame, Function, FunctionConfig, FunctionError, FunctionKind, Role,
    SocketContext, Verdict, build, matching,
};

#[cfg(feature = "balancer")]
pub mod balancer;
#[cfg(feature = "compress")]
pub mod compress;
#[cfg(feature = "encrypt")]
pub mod encrypt;
#[cfg(feature = "firewall")]
pub mod firewall;
pub mod passthrough;
#[cfg(feature = "qos")]
pub mod qos;
#[cfg(feature = "reroute")]
pub mod reroute;
