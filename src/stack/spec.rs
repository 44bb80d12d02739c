//! What a device is built from: its validated settings ([`DeviceSpec`],
//! [`NetworkSpec`], [`StaticRoute`]) and a way to build its function
//! ([`FunctionSpec`]). The config layer produces them from TOML; an
//! embedder can fill them in directly.

use std::any::Any;
use std::path::PathBuf;

use smoltcp::wire::{IpAddress, IpCidr, Ipv4Cidr, Ipv6Cidr};

use super::hook::{Function, FunctionError};
use crate::wire::LinkMedium;

/// A validated static route: packets to `to` go via the gateway `via` (an
/// address on the local or the global subnet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticRoute {
    /// The destination prefix.
    pub to: IpCidr,
    /// The gateway.
    pub via: IpAddress,
}

/// One of a device's two networks, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSpec {
    /// Name of the shared-memory segment (devices naming the same segment
    /// share the network).
    pub segment: String,
    /// The device's IPv4 address and subnet on this network.
    pub v4: Ipv4Cidr,
    /// Its IPv6 address and subnet, if any.
    pub v6: Option<Ipv6Cidr>,
    /// IP MTU, 576..=65535.
    pub mtu: u32,
    /// The link layer: Ethernet frames or bare IP packets. Both of a
    /// device's networks use the same.
    pub medium: LinkMedium,
    /// Default IPv4 gateway (global network).
    pub gateway: Option<IpAddress>,
    /// Default IPv6 gateway (global network).
    pub gateway6: Option<IpAddress>,
    /// Write every frame this adapter carries to this pcap file.
    pub pcap: Option<PathBuf>,
    /// Frames taken from this adapter per poll round (`None`: no limit).
    pub max_burst: Option<usize>,
    /// Compute and verify checksums in software.
    pub checksums: bool,
    /// Parse received frames in the sender's buffer (`None`: yes for
    /// threads of one process, no across processes).
    pub trust_peers: Option<bool>,
    /// Segment capacity, when this device creates the segment.
    pub max_ports: u32,
    /// Transmit buffers per port (0: chosen from the MTU).
    pub buffers: u32,
}

/// A device's validated settings, without its function.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    /// The device's name: its ports are listed as `NAME/local` and
    /// `NAME/global` in the networks' directories.
    pub name: String,
    /// The host's shared-memory network.
    pub local: NetworkSpec,
    /// The network that also reaches remote hosts.
    pub global: NetworkSpec,
    /// Hardware address (both adapters).
    pub mac: [u8; 6],
    /// Forward packets not addressed to the device (it sits in a chain).
    pub forward: bool,
    /// Static routes, for the device's stack and for forwarding.
    pub routes: Vec<StaticRoute>,
    /// Socket buffers of the device's own stack.
    pub sockets: SocketSettings,
}

/// The congestion control of a device's TCP sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// None: send what the peer's window allows. Right on shared memory,
    /// which never loses a frame.
    #[default]
    None,
    /// Reno (RFC 5681).
    Reno,
    /// CUBIC (RFC 9438): for traffic that leaves the host (a VXLAN
    /// gateway, a TAP port), where links lose packets.
    Cubic,
}

impl Congestion {
    /// smoltcp's setting.
    pub fn smoltcp(self) -> smoltcp::socket::tcp::CongestionControl {
        use smoltcp::socket::tcp::CongestionControl as C;
        match self {
            Congestion::None => C::None,
            Congestion::Reno => C::Reno,
            Congestion::Cubic => C::Cubic,
        }
    }
}

/// Socket settings of a device (`[sockets]` in its file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketSettings {
    /// Bytes of each TCP socket's receive and send buffer, for functions
    /// that do not set their own. The receive buffer is the window a peer
    /// may fill before hearing back.
    pub tcp_buffer: usize,
    /// Bytes of closed TCP sockets' buffers the device keeps for new
    /// connections (0: allocate every socket afresh).
    pub pool_bytes: usize,
    /// Congestion control of every TCP socket the device opens.
    pub congestion: Congestion,
}

impl Default for SocketSettings {
    fn default() -> Self {
        SocketSettings {
            tcp_buffer: super::DEFAULT_TCP_BUFFER,
            pool_bytes: super::DEFAULT_POOL_BYTES,
            congestion: Congestion::None,
        }
    }
}

/// A function's configuration that can build the function. The built-in
/// `functions::FunctionConfig` implements it; an embedder's own
/// configuration type can too. A running device keeps applying new
/// configurations through [`Function::reconfigure`] (given
/// [`FunctionSpec::as_any`]) and rebuilds the function when that declines.
pub trait FunctionSpec: Any + Send + Sync + std::fmt::Debug {
    /// The function kind this configuration builds (as in `kind = "..."`).
    fn kind(&self) -> &str;
    /// Builds the function; an invalid configuration is an error.
    fn build(&self) -> Result<Box<dyn Function>, FunctionError>;
    /// Checks the configuration without installing anything; by default,
    /// by building a function and dropping it. [`DeviceHandle::reconfigure`]
    /// calls it before sending a change.
    ///
    /// [`DeviceHandle::reconfigure`]: super::DeviceHandle::reconfigure
    fn validate(&self) -> Result<(), FunctionError> {
        self.build().map(drop)
    }
    /// The configuration itself, for [`Function::reconfigure`] to downcast.
    fn as_any(&self) -> &dyn Any;
}

impl dyn FunctionSpec {
    /// The configuration as its concrete type, if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.as_any().downcast_ref()
    }
}

/// Everything a device is built from: its spec and its function's spec.
pub trait DeviceBlueprint {
    /// The device's settings.
    fn spec(&self) -> &DeviceSpec;
    /// Its function's configuration.
    fn function(&self) -> &dyn FunctionSpec;
}
impl NetworkSpec {
    /// The segment parameters this network asks for.
    pub fn params(&self) -> crate::adapters::shm::NetworkParams {
        let mut p = crate::adapters::shm::NetworkParams::new(self.mtu);
        p.medium = self.medium;
        p.max_ports = self.max_ports;
        p.buffers = self.buffers;
        p
    }
}
