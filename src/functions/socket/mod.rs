//! Socket functions: functions that work on the device's own smoltcp
//! sockets through [`SocketContext`] (attach / poll / detach) rather than
//! on forwarded frames: the diagnostic echo server ([`echo`]), discard
//! server ([`sink`]) and probe client ([`probe`]), HTTP (`http`: the codec
//! and a static server), and the protocol functions to come (proxy, cache,
//! management). The socket constructors they share are here.

use smoltcp::socket::{tcp, udp};

#[allow(unused_imports)]
use super::{Function, FunctionConfig, FunctionError, SocketContext, build};

pub mod echo;
#[cfg(feature = "http")]
pub mod http;
pub mod probe;
pub mod sink;

/// The diagnostic pair under its former name (`functions::diag`).
pub mod diag {
    pub use super::echo::{Echo, EchoConfig};
    pub use super::probe::{Probe, ProbeConfig, pattern_byte};
    pub use super::tcp_socket;
}

pub use crate::stack::DEFAULT_TCP_BUFFER;

/// A TCP socket with buffers of `size` bytes, Nagle off (not from the
/// device's pool: see [`SocketContext::add_tcp`]).
pub fn tcp_socket(size: usize) -> tcp::Socket<'static> {
    crate::stack::new_tcp_socket(size, size)
}

/// A UDP socket queueing up to `datagrams` datagrams and `bytes` bytes
/// each way.
pub fn udp_socket(datagrams: usize, bytes: usize) -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; datagrams], vec![0; bytes]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; datagrams], vec![0; bytes]),
    )
}
