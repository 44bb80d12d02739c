//! Network functions: what a device does.
//!
//! A [`Function`] sees every frame the device's interface system captures
//! (ingress from either adapter, egress from the stack) and returns a
//! [`Verdict`]; a function that terminates TCP or UDP also gets a
//! socket-level [`Function::poll`] on the device's own sockets. Functions are
//! sans-IO: time comes in as an argument, they never sleep or read a clock.
//! They are built from their config section by [`build`] and can be replaced
//! while the device runs.
//!
//! ```
//! use shmnet::functions::{build, FunctionConfig};
//! let f = build(&FunctionConfig::Passthrough).unwrap();
//! assert_eq!(f.name(), "passthrough");
//! ```

use smoltcp::iface::{Interface, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::IpAddress;

pub mod balancer;
pub mod compress;
pub mod diag;
pub mod encrypt;
pub mod firewall;
pub mod matching;
pub mod qos;
pub mod reroute;

pub use crate::stack::Role;

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
    /// link-layer destination from the segment directory and, for frames
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
}

/// A frame a function may rewrite: `len` bytes in use of a buffer of
/// `capacity()` bytes (the network's largest frame).
pub struct Frame<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Frame<'a> {
    /// Wraps the first `len` bytes of `buf` (clamped to its size).
    pub fn new(buf: &'a mut [u8], len: usize) -> Frame<'a> {
        let len = len.min(buf.len());
        Frame { buf, len }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
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
}

/// What a socket-level function may touch: the device's interface and
/// sockets, the time, and the directory of devices on its networks.
pub struct SocketContext<'a> {
    pub now: Instant,
    pub iface: &'a mut Interface,
    pub sockets: &'a mut SocketSet<'static>,
    pub devices: &'a dyn Directory,
}

/// A network function. Every method has a no-op default.
pub trait Function: Send {
    /// Short name, as in the config's `kind`.
    fn name(&self) -> &'static str;

    /// A frame arrived on the `from` adapter, before the stack sees it.
    fn on_ingress(&mut self, _now: Instant, _from: Role, _frame: &mut Frame<'_>) -> Verdict {
        Verdict::Pass
    }

    /// Whether `on_ingress` looks at frames. A function that returns `false`
    /// lets trusted frames go to the stack in place, without a copy.
    fn hooks_ingress(&self) -> bool {
        true
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

    /// Installed on a device: open sockets here.
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

    /// Human-readable results (a probe's findings), drained by the caller.
    fn take_report(&mut self) -> Vec<String> {
        Vec::new()
    }

    /// Counters, as `(name, value)`.
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// Applies a changed config of the same kind in place, keeping state
    /// (e.g. a rekey keeps the tunnel's replay windows). Returns `false` if
    /// not supported or not applicable: the caller then replaces the
    /// function with a freshly built one.
    fn reconfigure(&mut self, _cfg: &FunctionConfig) -> bool {
        false
    }
}

/// A function's configuration: the `[function]` section of a device file,
/// selected by `kind`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FunctionConfig {
    /// Forwards everything unchanged.
    #[default]
    Passthrough,
    /// Echoes TCP streams and UDP datagrams on a port (a test server).
    Echo(diag::EchoConfig),
    /// Runs TCP and UDP exchanges against echo servers and reports them.
    Probe(diag::ProbeConfig),
    /// LZ4-compresses IP payloads towards the global network and restores
    /// them from it (IPComp, RFC 3173); used in pairs.
    Compress(compress::CompressConfig),
    /// Stateful firewall: connection tracking plus ordered rules.
    Firewall(firewall::FirewallConfig),
    /// ESP tunnel (RFC 4303) with AES-GCM (RFC 4106) between a pair of
    /// devices.
    Encrypt(encrypt::EncryptConfig),
    /// QoS: classes, token-bucket shaping, strict priority and DRR
    /// scheduling, tail drop or ECN marking.
    Qos(qos::QosConfig),
    /// Policy-based routing to health-checked next hops, with failover and
    /// failback.
    Reroute(reroute::RerouteConfig),
    /// L4 load balancer: VIPs in front of backends, Maglev hashing, NAT,
    /// health checks.
    Balancer(balancer::BalancerConfig),
}

/// Names accepted as `kind`.
pub const KINDS: &[&str] = &[
    "passthrough",
    "echo",
    "probe",
    "compress",
    "firewall",
    "encrypt",
    "qos",
    "reroute",
    "balancer",
];

/// Errors building a function.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FunctionError {
    /// A parameter is invalid; the message names it.
    #[error("function {kind}: {why}")]
    Invalid { kind: &'static str, why: String },
}

/// Builds a function from its configuration.
pub fn build(cfg: &FunctionConfig) -> Result<Box<dyn Function>, FunctionError> {
    Ok(match cfg {
        FunctionConfig::Passthrough => Box::new(Passthrough),
        FunctionConfig::Echo(c) => Box::new(diag::Echo::new(c.clone())?),
        FunctionConfig::Probe(c) => Box::new(diag::Probe::new(c.clone())?),
        FunctionConfig::Compress(c) => Box::new(compress::Compress::new(c.clone())?),
        FunctionConfig::Firewall(c) => Box::new(firewall::Firewall::new(c.clone())?),
        FunctionConfig::Encrypt(c) => Box::new(encrypt::Encrypt::new(c.clone())?),
        FunctionConfig::Qos(c) => Box::new(qos::Qos::new(c.clone())?),
        FunctionConfig::Reroute(c) => Box::new(reroute::Reroute::new(c.clone())?),
        FunctionConfig::Balancer(c) => Box::new(balancer::Balancer::new(c.clone())?),
    })
}

/// The checksum of an IPv4 header whose checksum field is zero.
pub(crate) fn ipv4_header_checksum(header: &[u8]) -> u16 {
    !smoltcp::wire::checksum::data(header)
}

/// Frame builders shared by the functions' unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::ipv4_header_checksum;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
        Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
        UdpPacket, UdpRepr,
    };

    /// Ethernet + IP (built by smoltcp, valid checksums) around a
    /// transport header and payload `l4`.
    pub fn wrap(src: IpAddress, dst: IpAddress, proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
        let caps = ChecksumCapabilities::default();
        let (ethertype, ip_len) = match src {
            IpAddress::Ipv4(_) => (EthernetProtocol::Ipv4, 20),
            IpAddress::Ipv6(_) => (EthernetProtocol::Ipv6, 40),
        };
        let mut buf = vec![0u8; 14 + ip_len + l4.len()];
        EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        match (src, dst) {
            (IpAddress::Ipv4(s), IpAddress::Ipv4(d)) => Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len: l4.len(),
                hop_limit: 64,
            }
            .emit(&mut Ipv4Packet::new_unchecked(&mut buf[14..]), &caps),
            (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len: l4.len(),
                hop_limit: 64,
            }
            .emit(&mut Ipv6Packet::new_unchecked(&mut buf[14..])),
            _ => unreachable!("mixed families"),
        }
        buf[14 + ip_len..].copy_from_slice(l4);
        buf
    }

    /// A TCP segment (seq 1000, ack 2000 if `ack`) in Ethernet + IP.
    pub fn tcp(
        src: (IpAddress, u16),
        dst: (IpAddress, u16),
        control: TcpControl,
        ack: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let repr = TcpRepr {
            src_port: src.1,
            dst_port: dst.1,
            control,
            seq_number: TcpSeqNumber(1000),
            ack_number: ack.then_some(TcpSeqNumber(2000)),
            window_len: 1024,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let mut l4 = vec![0u8; repr.buffer_len()];
        repr.emit(
            &mut TcpPacket::new_unchecked(&mut l4[..]),
            &src.0,
            &dst.0,
            &ChecksumCapabilities::default(),
        );
        wrap(src.0, dst.0, IpProtocol::Tcp, &l4)
    }

    /// A UDP header and payload (no IP around it).
    pub fn udp_l4(src: (IpAddress, u16), dst: (IpAddress, u16), payload: &[u8]) -> Vec<u8> {
        let mut l4 = vec![0u8; 8 + payload.len()];
        UdpRepr {
            src_port: src.1,
            dst_port: dst.1,
        }
        .emit(
            &mut UdpPacket::new_unchecked(&mut l4[..]),
            &src.0,
            &dst.0,
            payload.len(),
            |p| p.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
        l4
    }

    /// A UDP datagram in Ethernet + IP.
    pub fn udp(src: (IpAddress, u16), dst: (IpAddress, u16), payload: &[u8]) -> Vec<u8> {
        wrap(src.0, dst.0, IpProtocol::Udp, &udp_l4(src, dst, payload))
    }

    /// An Ethernet + IPv4 frame `src` → `dst` carrying `payload` as protocol
    /// 17 (UDP-ish: the payload is not a valid UDP header unless the caller
    /// made it one), with a valid header checksum, at the start of a
    /// `buf_len`-byte buffer. Returns the buffer and the frame's length.
    pub fn ipv4_frame(
        src: [u8; 4],
        dst: [u8; 4],
        payload: &[u8],
        buf_len: usize,
    ) -> (Vec<u8>, usize) {
        let mut buf = vec![0u8; buf_len.max(34 + payload.len())];
        buf[12..14].copy_from_slice(&[0x08, 0x00]);
        let total = 20 + payload.len();
        let ip = &mut buf[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let ck = ipv4_header_checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&ck.to_be_bytes());
        ip[20..total].copy_from_slice(payload);
        (buf, 14 + total)
    }
}

/// The pass-through function: every frame continues unchanged (the
/// device's own counters show the traffic).
#[derive(Debug, Default)]
pub struct Passthrough;

impl Function for Passthrough {
    fn name(&self) -> &'static str {
        "passthrough"
    }
    fn hooks_ingress(&self) -> bool {
        false
    }
}
