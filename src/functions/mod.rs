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

pub mod common;
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

/// A function's own config type, one variant of [`FunctionConfig`]: what
/// its `reconfigure` looks for ([`common::reconfigure_in_place`]).
pub trait KindConfig: Sized {
    /// The config in `cfg`, if `cfg` is of this kind.
    fn of(cfg: &FunctionConfig) -> Option<&Self>;
}

/// Declares [`FunctionConfig`] from the list of function kinds (variant,
/// config type, `kind` name, constructor), and what follows from the
/// list: [`KINDS`], [`FunctionConfig::kind`], [`build`] and each config
/// type's [`KindConfig`]. A new function is one more line here.
macro_rules! function_kinds {
    ($(
        $(#[$doc:meta])*
        $variant:ident($config:ty) = $kind:literal, $new:path;
    )*) => {
        /// A function's configuration: the `[function]` section of a device
        /// file, selected by `kind`.
        #[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
        #[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
        pub enum FunctionConfig {
            /// Forwards everything unchanged.
            #[default]
            Passthrough,
            $($(#[$doc])* $variant($config),)*
        }

        /// Names accepted as `kind`.
        pub const KINDS: &[&str] = &["passthrough", $($kind),*];

        impl FunctionConfig {
            /// The `kind` this configuration names.
            pub fn kind(&self) -> &'static str {
                match self {
                    FunctionConfig::Passthrough => "passthrough",
                    $(FunctionConfig::$variant(_) => $kind,)*
                }
            }
        }

        /// Builds a function from its configuration.
        pub fn build(cfg: &FunctionConfig) -> Result<Box<dyn Function>, FunctionError> {
            Ok(match cfg {
                FunctionConfig::Passthrough => Box::new(Passthrough),
                $(FunctionConfig::$variant(c) => Box::new($new(c.clone())?),)*
            })
        }

        $(impl KindConfig for $config {
            fn of(cfg: &FunctionConfig) -> Option<&Self> {
                match cfg {
                    FunctionConfig::$variant(c) => Some(c),
                    _ => None,
                }
            }
        })*
    };
}

function_kinds! {
    /// Echoes TCP streams and UDP datagrams on a port (a test server).
    Echo(echo::EchoConfig) = "echo", echo::Echo::new;
    /// Runs TCP and UDP exchanges against echo servers and reports them.
    Probe(probe::ProbeConfig) = "probe", probe::Probe::new;
    /// LZ4-compresses IP payloads towards the global network and restores
    /// them from it (IPComp, RFC 3173); used in pairs.
    Compress(compress::CompressConfig) = "compress", compress::Compress::new;
    /// Stateful firewall: connection tracking plus ordered rules.
    Firewall(firewall::FirewallConfig) = "firewall", firewall::Firewall::new;
    /// ESP tunnel (RFC 4303) with AES-GCM (RFC 4106) between a pair of
    /// devices.
    Encrypt(encrypt::EncryptConfig) = "encrypt", encrypt::Encrypt::new;
    /// QoS: classes, token-bucket shaping, strict priority and DRR
    /// scheduling, tail drop or ECN marking.
    Qos(qos::QosConfig) = "qos", qos::Qos::new;
    /// Policy-based routing to health-checked next hops, with failover and
    /// failback.
    Reroute(reroute::RerouteConfig) = "reroute", reroute::Reroute::new;
    /// L4 load balancer: VIPs in front of backends, Maglev hashing, NAT,
    /// health checks.
    Balancer(balancer::BalancerConfig) = "balancer", balancer::Balancer::new;
}

impl FunctionConfig {
    /// Whether the function has a finite job (a probe's exchanges): a run
    /// starts it after the others and ends when every such job is done;
    /// one that fails or never completes fails the run.
    pub fn has_job(&self) -> bool {
        matches!(self, FunctionConfig::Probe(_))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_name_is_the_tag_serde_reads() {
        for kind in KINDS {
            let parsed = toml::from_str::<FunctionConfig>(&format!("kind = \"{kind}\""));
            match parsed {
                Ok(cfg) => assert_eq!(cfg.kind(), *kind),
                // Kinds with required fields: known, but incomplete.
                Err(e) => assert!(e.to_string().contains("missing field"), "{kind}: {e}"),
            }
        }
        assert_eq!(FunctionConfig::default().kind(), "passthrough");
    }
}
