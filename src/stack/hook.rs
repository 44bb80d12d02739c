//! The hook contract between a device and its function: [`Function`], the
//! [`Frame`] it sees (with the one parsed [`FrameView`]), the [`Verdict`]
//! it returns, the held frames it releases ([`Emit`]) and what a
//! socket-level function may touch ([`SocketContext`]).
//!
//! A function is sans-IO: time comes in as an argument, it never sleeps
//! or reads a clock. The NIC parses each frame once ([`FrameView::parse`])
//! and hands the view with the bytes; a function that rewrites the frame
//! returns [`Verdict::Modified`] and the NIC parses it again.
//!
//! Frame layout: a frame starts with the link header of the device's
//! medium — a 14-byte Ethernet header on `ethernet` networks, nothing on
//! `ip` networks — followed by the IP packet ([`IpView::l3`] is its
//! offset). The medium and both networks' MTUs are in
//! [`SocketContext::link`] from [`Function::attach`] on.
//!
//! ```
//! use shmnet::stack::{Frame, Function, FunctionKind, Verdict, Role};
//! use shmnet::wire::LinkMedium;
//! use smoltcp::time::Instant;
//!
//! /// Drops every UDP datagram to port 9 (discard).
//! struct NoDiscard;
//! impl Function for NoDiscard {
//!     fn kind(&self) -> FunctionKind { FunctionKind::packet("no-discard") }
//!     fn on_ingress(&mut self, _: Instant, _: Role, f: &mut Frame<'_>) -> Verdict {
//!         match f.ip() {
//!             Some(ip) if ip.proto == 17 && ip.ports().map(|p| p.1) == Some(9) => Verdict::Drop,
//!             _ => Verdict::Pass,
//!         }
//!     }
//! }
//! let mut buf = [0u8; 64];
//! let mut f = Frame::new(&mut buf, 0, LinkMedium::Ip);
//! assert_eq!(NoDiscard.on_ingress(Instant::ZERO, Role::Local, &mut f), Verdict::Pass);
//! ```

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::IpAddress;

pub use super::Role;
use super::SocketPool;
pub use super::spec::FunctionSpec;
use crate::wire::{FrameView, IpView, LinkMedium};

/// What to do with a captured frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it continue unchanged.
    Pass,
    /// Discard it (counted by the device).
    Drop,
    /// It was rewritten in place (possibly resized); continue with it.
    Modified,
    /// Send it out of this network's adapter instead of its normal path.
    /// On a forwarding device it goes to its destination if that is on the
    /// network, else to the network's gateway (a static route's or the
    /// default one), with the next hop's MAC and TTL decremented; without a
    /// next hop there it is a counted drop (`no_route`). Elsewhere the frame
    /// leaves unchanged.
    Redirect(Role),
    /// The function took it (answered it itself, or holds it to release
    /// later through [`Function::poll_transmit`]); nothing continues.
    Consumed,
    /// Forward it to this next hop (an address on one of the device's two
    /// networks) instead of the routing table's choice. The NIC sets the
    /// link-layer destination from the network's directory and, for frames
    /// that arrived from an adapter, decrements the TTL. A next hop on
    /// neither network, or a device that does not forward, is a counted
    /// drop (`no_route`); an unknown neighbour counts as `no_neighbour`.
    Via(IpAddress),
}

/// A held frame a function releases (see [`Function::poll_transmit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emit {
    /// Bytes written at the start of the buffer.
    pub len: usize,
    /// Next hop, overriding the routing table (as [`Verdict::Via`]).
    pub via: Option<IpAddress>,
}

/// Looks up other devices on the networks this device is attached to.
pub trait Directory {
    /// The addresses of the device named `name` on this device's networks
    /// (empty when it has no port on either).
    fn device_addresses(&self, name: &str) -> Vec<IpAddress>;
    /// Every device on the networks with its addresses, by name (a TAP
    /// port or gateway, listed under another kind of name, is left out).
    fn devices(&self) -> Vec<(String, Vec<IpAddress>)> {
        Vec::new()
    }
}

/// The device's links, as a function needs to know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    /// The link layer of both networks.
    pub medium: LinkMedium,
    /// IP MTU of the local network.
    pub local_mtu: usize,
    /// IP MTU of the global network.
    pub global_mtu: usize,
    /// The device computes checksums (either network asks for them): a
    /// function that rewrites a header must keep the checksum right even
    /// when it is 0 (the frames the device's own stack sends hold computed
    /// sums; a transit frame's 0 may still be "left out", and updating it
    /// then harms nobody: a verifying receiver would refuse the 0 too).
    /// Off, a 0 means "left out" and stays so.
    pub checksums: bool,
}

impl LinkInfo {
    /// The IP MTU of `role`'s network.
    pub fn mtu(&self, role: Role) -> usize {
        match role {
            Role::Local => self.local_mtu,
            Role::Global => self.global_mtu,
        }
    }
}

impl Default for LinkInfo {
    fn default() -> Self {
        LinkInfo {
            medium: LinkMedium::Ethernet,
            local_mtu: 1500,
            global_mtu: 1500,
            checksums: false,
        }
    }
}

/// A frame a function may rewrite: `len` bytes in use of a buffer of
/// `capacity()` bytes (the network's largest frame), and its parsed view.
pub struct Frame<'a> {
    buf: &'a mut [u8],
    len: usize,
    medium: LinkMedium,
    view: FrameView,
}

impl<'a> Frame<'a> {
    /// Wraps the first `len` bytes of `buf` (clamped to its size), a frame
    /// of `medium`, and parses it.
    pub fn new(buf: &'a mut [u8], len: usize, medium: LinkMedium) -> Frame<'a> {
        let len = len.min(buf.len());
        let view = FrameView::parse(medium, &buf[..len]);
        Frame {
            buf,
            len,
            medium,
            view,
        }
    }

    /// Wraps a frame whose view the caller parsed already (the NIC).
    pub fn with_view(
        buf: &'a mut [u8],
        len: usize,
        medium: LinkMedium,
        view: FrameView,
    ) -> Frame<'a> {
        Frame {
            len: len.min(buf.len()),
            buf,
            medium,
            view,
        }
    }

    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }
    /// No bytes in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Size of the buffer: the most the frame can grow to.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
    /// The link medium the frame is framed for.
    pub fn medium(&self) -> LinkMedium {
        self.medium
    }
    /// The parsed view, as of the last [`Frame::reparse`].
    pub fn view(&self) -> &FrameView {
        &self.view
    }
    /// The IP view, if the frame carries a well-formed IP header.
    pub fn ip(&self) -> Option<&IpView> {
        self.view.ip()
    }
    /// The frame's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    /// The frame's bytes, to rewrite in place (then return
    /// [`Verdict::Modified`]).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
    /// The whole buffer, for functions that grow the frame.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        self.buf
    }
    /// Sets the frame length; `false` (and no change) past the capacity.
    pub fn set_len(&mut self, len: usize) -> bool {
        if len > self.buf.len() {
            return false;
        }
        self.len = len;
        true
    }
    /// Parses the frame again after the function rewrote it.
    pub fn reparse(&mut self) {
        self.view = FrameView::parse(self.medium, &self.buf[..self.len]);
    }
}

/// What a socket-level function may touch: the device's interface and
/// sockets, the time, its links and the directory of devices on its
/// networks.
pub struct SocketContext<'a> {
    /// The device time of this round.
    pub now: Instant,
    /// The device's smoltcp interface (addresses, routes).
    pub iface: &'a mut Interface,
    /// The device's sockets; a function adds and removes its own
    /// (TCP sockets best through [`SocketContext::add_tcp`] and
    /// [`SocketContext::remove_socket`], which reuse closed ones).
    pub sockets: &'a mut SocketSet<'static>,
    /// The device's pool of closed TCP sockets (and its TCP buffer size).
    pub pool: &'a mut SocketPool,
    /// Other devices on this device's networks, by name.
    pub devices: &'a dyn Directory,
    /// Medium and MTUs of the device's networks.
    pub link: LinkInfo,
}

impl SocketContext<'_> {
    /// Adds a TCP socket with `buffer`-byte buffers (`None`: the device's
    /// `tcp_buffer`), Nagle off, reusing a closed one from the device's
    /// pool when it can.
    pub fn add_tcp(&mut self, buffer: Option<usize>) -> SocketHandle {
        let n = buffer.unwrap_or(self.pool.tcp_buffer());
        self.sockets.add(self.pool.tcp(n, n))
    }

    /// Removes a socket; a TCP socket goes back to the device's pool.
    pub fn remove_socket(&mut self, h: SocketHandle) {
        self.pool.remove(self.sockets, h);
    }

    /// Removes each of `handles` (see [`remove_socket`](Self::remove_socket)).
    pub fn remove_sockets(&mut self, handles: impl IntoIterator<Item = SocketHandle>) {
        for h in handles {
            self.remove_socket(h);
        }
    }
}

/// Errors building or reconfiguring a function.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FunctionError {
    /// A parameter is invalid; the message names it. Fix the config.
    #[error("function {kind}: {why}")]
    Invalid {
        /// The function kind whose configuration is wrong.
        kind: &'static str,
        /// What is wrong, naming the parameter.
        why: String,
    },
    /// A parameter of a custom kind is invalid; the message names it.
    #[error("function {kind}: {why}")]
    Params {
        /// The custom kind.
        kind: String,
        /// What is wrong, naming the parameter.
        why: String,
    },
    /// No function of this kind is built in or registered.
    #[error("{why}")]
    Unknown {
        /// The kind asked for.
        kind: String,
        /// The kinds there are.
        why: String,
    },
    /// A custom kind could not be registered.
    #[error("cannot register function kind `{kind}`: {why}")]
    Register {
        /// The kind name given.
        kind: String,
        /// Why it was refused.
        why: String,
    },
}

/// What a function is: its name and whether it looks at arriving frames.
/// Every function states it ([`Function::kind`]): no default decides
/// whether frames are copied for a hook that never looks at them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FunctionKind {
    /// Short name, as in the config's `kind`.
    pub name: &'static str,
    /// Whether [`Function::on_ingress`] is called. Without it, trusted
    /// frames go to the stack in place, without a copy.
    pub hooks_ingress: bool,
}

impl FunctionKind {
    /// A packet function: `on_ingress` sees every arriving frame.
    pub const fn packet(name: &'static str) -> FunctionKind {
        FunctionKind {
            name,
            hooks_ingress: true,
        }
    }

    /// A function that works through sockets (or leaves frames alone):
    /// `on_ingress` is never called.
    pub const fn socket(name: &'static str) -> FunctionKind {
        FunctionKind {
            name,
            hooks_ingress: false,
        }
    }
}

/// A network function. Every method but [`kind`](Function::kind) has a
/// no-op default.
pub trait Function: Send {
    /// Its name and whether it hooks arriving frames.
    fn kind(&self) -> FunctionKind;

    /// Short name, as in the config's `kind` (from [`Function::kind`]).
    fn name(&self) -> &'static str {
        self.kind().name
    }

    /// A frame arrived on the `from` adapter, before the stack sees it (or,
    /// on a forwarding device, before it is forwarded). Called only for a
    /// [`FunctionKind::packet`].
    fn on_ingress(&mut self, _now: Instant, _from: Role, _frame: &mut Frame<'_>) -> Verdict {
        Verdict::Pass
    }

    /// The stack emitted a frame, before it is routed to an adapter.
    fn on_egress(&mut self, _now: Instant, _frame: &mut Frame<'_>) -> Verdict {
        Verdict::Pass
    }

    /// Releases one frame the function holds (taken by returning
    /// [`Verdict::Consumed`] from `on_ingress`, e.g. a scheduler's queues):
    /// writes it into `buf` (as large as either network's largest frame)
    /// and returns its length and optional next hop. Called repeatedly each
    /// round while both adapters can take a frame, until it returns `None`.
    /// Released frames are routed like frames that passed `on_ingress`:
    /// transit ones are forwarded, ones addressed to the device go to its
    /// stack. [`Function::poll_at`] says when the next one becomes due.
    fn poll_transmit(&mut self, _now: Instant, _buf: &mut [u8]) -> Option<Emit> {
        None
    }

    /// Installed on a device: learn the links, open sockets here.
    fn attach(&mut self, _cx: &mut SocketContext<'_>) {}

    /// Being replaced or the device stops: close sockets here.
    fn detach(&mut self, _cx: &mut SocketContext<'_>) {}

    /// Socket-level work after each stack poll. Returns whether it made
    /// progress (so the device keeps spinning instead of sleeping).
    fn poll(&mut self, _cx: &mut SocketContext<'_>) -> bool {
        false
    }

    /// When the function next needs a `poll` (or has a held frame due for
    /// `poll_transmit`) even without traffic.
    fn poll_at(&self) -> Option<Instant> {
        None
    }

    /// `true` once a function with a finite job (a probe) is done.
    fn finished(&self) -> bool {
        false
    }

    /// `true` once part of a finite job has failed (a probe's exchange
    /// timed out, came back corrupted, or got through a block it expected),
    /// even before the job is [`finished`](Function::finished). Runners
    /// use it for their exit status.
    fn failed(&self) -> bool {
        false
    }

    /// Human-readable results (a probe's findings), drained by the caller.
    fn take_report(&mut self) -> Vec<String> {
        Vec::new()
    }

    /// Visits every counter as `(name, value)`. Names are fixed once the
    /// function is configured, so readers can keep a table by name.
    fn counters(&self, _visit: &mut dyn FnMut(&str, u64)) {}

    /// Applies a changed configuration of the same kind in place, keeping
    /// state (e.g. a rekey keeps the tunnel's replay windows). `cfg` is a
    /// configuration of the type the function was built from (for the
    /// built-in functions, `functions::FunctionConfig`: get it with
    /// `cfg.downcast_ref::<FunctionConfig>()`). Returns `Ok(false)` if not
    /// supported or not applicable: the caller then replaces the function
    /// with one built from `cfg`; `Err` if the config is invalid (the
    /// function is unchanged).
    fn reconfigure(&mut self, _cfg: &dyn FunctionSpec) -> Result<bool, FunctionError> {
        Ok(false)
    }
}

/// A function's counters collected into `(name, value)` pairs.
pub fn counters_of(f: &dyn Function) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    f.counters(&mut |n, v| out.push((n.to_string(), v)));
    out
}
