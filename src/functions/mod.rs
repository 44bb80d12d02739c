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

pub mod health;
pub mod matching;
pub mod packet;
pub mod socket;

pub use packet::{balancer, compress, encrypt, firewall, qos, reroute};
pub use socket::diag;

pub use crate::stack::hook::{
    Directory, Emit, Frame, Function, FunctionError, LinkInfo, Role, SocketContext, Verdict,
};

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
