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

pub use packet::passthrough::Passthrough;
pub use packet::{balancer, compress, encrypt, firewall, qos, reroute};
pub use socket::{diag, echo, probe};

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
    Echo(echo::EchoConfig),
    /// Runs TCP and UDP exchanges against echo servers and reports them.
    Probe(probe::ProbeConfig),
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

impl crate::stack::FunctionSpec for FunctionConfig {
    fn kind(&self) -> &str {
        self.kind()
    }
    fn build(&self) -> Result<Box<dyn Function>, FunctionError> {
        build(self)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl FunctionConfig {
    /// The `kind` this configuration names.
    pub fn kind(&self) -> &'static str {
        match self {
            FunctionConfig::Passthrough => "passthrough",
            FunctionConfig::Echo(_) => "echo",
            FunctionConfig::Probe(_) => "probe",
            FunctionConfig::Compress(_) => "compress",
            FunctionConfig::Firewall(_) => "firewall",
            FunctionConfig::Encrypt(_) => "encrypt",
            FunctionConfig::Qos(_) => "qos",
            FunctionConfig::Reroute(_) => "reroute",
            FunctionConfig::Balancer(_) => "balancer",
        }
    }
}

/// Builds a function from its configuration.
pub fn build(cfg: &FunctionConfig) -> Result<Box<dyn Function>, FunctionError> {
    Ok(match cfg {
        FunctionConfig::Passthrough => Box::new(Passthrough),
        FunctionConfig::Echo(c) => Box::new(echo::Echo::new(c.clone())?),
        FunctionConfig::Probe(c) => Box::new(probe::Probe::new(c.clone())?),
        FunctionConfig::Compress(c) => Box::new(compress::Compress::new(c.clone())?),
        FunctionConfig::Firewall(c) => Box::new(firewall::Firewall::new(c.clone())?),
        FunctionConfig::Encrypt(c) => Box::new(encrypt::Encrypt::new(c.clone())?),
        FunctionConfig::Qos(c) => Box::new(qos::Qos::new(c.clone())?),
        FunctionConfig::Reroute(c) => Box::new(reroute::Reroute::new(c.clone())?),
        FunctionConfig::Balancer(c) => Box::new(balancer::Balancer::new(c.clone())?),
    })
}
