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
mod registry;
pub mod socket;

// Each packet function's module (those compiled in) as `functions::NAME`.
pub use packet::passthrough::Passthrough;
pub use packet::*;
pub use registry::{Factory, register, register_with_job, registered};
#[cfg(feature = "http")]
pub use socket::http;
#[cfg(feature = "manager")]
pub use socket::manager;
pub use socket::{cache, diag, echo, probe, sink, tcp_proxy};

pub use crate::stack::hook::{
    Directory, Emit, Frame, Function, FunctionError, FunctionKind, LinkInfo, Role, SocketContext,
    Verdict,
};

/// A function's own config type, one variant of [`FunctionConfig`]: what
/// its `reconfigure` looks for ([`common::reconfigure_in_place`]).
pub trait KindConfig: Sized {
    /// The config in `cfg`, if `cfg` is of this kind.
    fn of(cfg: &FunctionConfig) -> Option<&Self>;
}

/// Declares [`FunctionConfig`] from the list of built-in function kinds
/// (cargo feature, variant, config type, `kind` name, constructor), and
/// what follows from the list: [`KINDS`], [`FunctionConfig::kind`],
/// [`build`], each config type's [`KindConfig`] and the TOML form. A new
/// function is one more line here.
macro_rules! function_kinds {
    ($(
        $(#[$doc:meta])*
        [$($feature:literal)?] $variant:ident($config:ty) = $kind:literal, $new:path;
    )*) => {
        /// A function's configuration: the `[function]` section of a device
        /// file, selected by `kind`. Read one from TOML with
        /// [`FunctionConfig::from_toml`](crate::config) or build the
        /// variant's config type in Rust.
        #[derive(Debug, Clone, Default, PartialEq)]
        #[non_exhaustive]
        pub enum FunctionConfig {
            /// Forwards everything unchanged.
            #[default]
            Passthrough,
            $($(#[$doc])* #[cfg(all($(feature = $feature)?))] $variant($config),)*
            /// A function kind the program registered with [`register`].
            Custom(CustomConfig),
        }

        /// The built-in kinds as serde reads and writes them.
        #[derive(serde::Deserialize, serde::Serialize)]
        #[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
        enum Builtin {
            Passthrough,
            $(#[cfg(all($(feature = $feature)?))] $variant($config),)*
        }

        impl From<Builtin> for FunctionConfig {
            fn from(b: Builtin) -> FunctionConfig {
                match b {
                    Builtin::Passthrough => FunctionConfig::Passthrough,
                    $(#[cfg(all($(feature = $feature)?))] Builtin::$variant(c) => FunctionConfig::$variant(c),)*
                }
            }
        }

        impl FunctionConfig {
            /// The built-in configuration as serde writes it, `None` for a
            /// custom one.
            fn builtin(&self) -> Option<Builtin> {
                Some(match self {
                    FunctionConfig::Passthrough => Builtin::Passthrough,
                    $(#[cfg(all($(feature = $feature)?))] FunctionConfig::$variant(c) => Builtin::$variant(c.clone()),)*
                    FunctionConfig::Custom(_) => return None,
                })
            }
        }

        /// The built-in kinds compiled in (see the crate's cargo features),
        /// as accepted by `kind`. Kinds registered with [`register`] come
        /// on top ([`registered`]).
        pub const KINDS: &[&str] = &["passthrough", $(#[cfg(all($(feature = $feature)?))] $kind),*];

        /// Every built-in kind with the cargo feature it needs, compiled in
        /// or not: what an error about an unknown kind can suggest.
        const ALL_BUILTIN: &[(&str, &str)] = &[$(($kind, concat!("" $(, $feature)?))),*];

        impl FunctionConfig {
            /// The `kind` this configuration names.
            pub fn kind(&self) -> &str {
                match self {
                    FunctionConfig::Passthrough => "passthrough",
                    $(#[cfg(all($(feature = $feature)?))] FunctionConfig::$variant(_) => $kind,)*
                    FunctionConfig::Custom(c) => &c.kind,
                }
            }
        }

        /// Builds a function from its configuration (a custom kind through
        /// the factory registered for it).
        pub fn build(cfg: &FunctionConfig) -> Result<Box<dyn Function>, FunctionError> {
            Ok(match cfg {
                FunctionConfig::Passthrough => Box::new(Passthrough),
                $(#[cfg(all($(feature = $feature)?))] FunctionConfig::$variant(c) => Box::new($new(c.clone())?),)*
                FunctionConfig::Custom(c) => registry::build(c)?,
            })
        }

        $(#[cfg(all($(feature = $feature)?))] impl KindConfig for $config {
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
    [] Echo(echo::EchoConfig) = "echo", echo::Echo::new;
    /// Discards TCP streams on a port, checking them, and answers each with
    /// a receipt (a test server for one-way transfers).
    [] Sink(sink::SinkConfig) = "sink", sink::Sink::new;
    /// Relays TCP connections on its ports to pools of upstreams.
    [] TcpProxy(tcp_proxy::TcpProxyConfig) = "tcp-proxy", tcp_proxy::TcpProxy::new;
    /// Runs TCP and UDP exchanges against echo servers and reports them.
    [] Probe(probe::ProbeConfig) = "probe", probe::Probe::new;
    /// A memcached-compatible memory cache (text and meta protocol).
    [] Cache(cache::CacheConfig) = "cache", cache::Cache::new;
    /// LZ4-compresses IP payloads towards the global network and restores
    /// them from it (IPComp, RFC 3173); used in pairs.
    ["compress"] Compress(compress::CompressConfig) = "compress", compress::Compress::new;
    /// Stateful firewall: connection tracking plus ordered rules.
    ["firewall"] Firewall(firewall::FirewallConfig) = "firewall", firewall::Firewall::new;
    /// ESP tunnel (RFC 4303) with AES-GCM (RFC 4106) between a pair of
    /// devices.
    ["encrypt"] Encrypt(encrypt::EncryptConfig) = "encrypt", encrypt::Encrypt::new;
    /// QoS: classes, token-bucket shaping, strict priority and DRR
    /// scheduling, tail drop or ECN marking.
    ["qos"] Qos(qos::QosConfig) = "qos", qos::Qos::new;
    /// Policy-based routing to health-checked next hops, with failover and
    /// failback.
    ["reroute"] Reroute(reroute::RerouteConfig) = "reroute", reroute::Reroute::new;
    /// L4 load balancer: VIPs in front of backends, Maglev hashing, NAT,
    /// health checks.
    ["balancer"] Balancer(balancer::BalancerConfig) = "balancer", balancer::Balancer::new;
    /// A static HTTP/1.1 server: routes by path prefix, keep-alive,
    /// pipelining (a backend for examples, tests and benchmarks).
    ["http"] HttpServer(http::HttpServerConfig) = "http-server", http::HttpServer::new;
    /// HTTP/1.1 reverse proxy and L7 balancer: routes by Host and path to
    /// pools of upstreams, keep-alive both sides, passive health.
    ["http"] HttpProxy(http::HttpProxyConfig) = "http-proxy", http::HttpProxy::new;
    /// Network management: polls every device's agent, serves Prometheus
    /// metrics and a JSON API, probes actively, runs the policy engine.
    ["manager"] Manager(manager::ManagerConfig) = "manager", manager::Manager::new;
}

impl<'de> serde::Deserialize<'de> for FunctionConfig {
    /// A built-in kind with its fields checked, or a registered custom
    /// kind with its parameters as written. Values a constructor refuses
    /// (and a custom kind's parameters) are checked where a configuration
    /// is validated, by building the function once: `DeviceConfig`
    /// validation and `FunctionConfig::from_toml`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let kind = match table.get("kind") {
            Some(toml::Value::String(k)) => k.clone(),
            Some(v) => {
                return Err(D::Error::custom(format!(
                    "`kind` must be a string, not {}",
                    v.type_str()
                )));
            }
            None => return Err(D::Error::missing_field("kind")),
        };
        if KINDS.contains(&kind.as_str()) {
            return Builtin::deserialize(toml::Value::Table(table))
                .map(FunctionConfig::from)
                .map_err(|e| D::Error::custom(e.message()));
        }
        if registry::contains(&kind) {
            table.remove("kind");
            let custom = CustomConfig {
                kind,
                params: table,
            };
            return Ok(FunctionConfig::Custom(custom));
        }
        Err(D::Error::custom(unknown_kind(&kind)))
    }
}

impl serde::Serialize for FunctionConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.builtin(), self) {
            (Some(b), _) => b.serialize(s),
            (None, FunctionConfig::Custom(c)) => {
                let mut t = c.params.clone();
                t.insert("kind".into(), toml::Value::String(c.kind.clone()));
                t.serialize(s)
            }
            (None, _) => unreachable!("only custom configs have no built-in form"),
        }
    }
}

/// The message for a `kind` nobody knows: the kinds there are, and the
/// cargo feature that would add a built-in one left out of this build.
fn unknown_kind(kind: &str) -> String {
    let mut known: Vec<String> = KINDS.iter().map(|k| k.to_string()).collect();
    known.extend(registered());
    let mut msg = format!(
        "unknown function kind `{kind}`; known kinds: {}",
        known.join(", ")
    );
    if let Some((_, feature)) = ALL_BUILTIN.iter().find(|(k, _)| *k == kind) {
        msg.push_str(&format!(
            " (`{kind}` is built in, but this program was compiled without shmnet's \
             cargo feature `{feature}`)"
        ));
    }
    msg
}

/// The configuration of a custom function kind: its `kind` and the other
/// keys of its `[function]` section, for its factory to read (best with
/// [`CustomConfig::params`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomConfig {
    /// The registered kind name.
    pub kind: String,
    /// The section's other keys.
    pub params: toml::Table,
}

impl CustomConfig {
    /// A configuration of `kind` with no parameters.
    pub fn new(kind: impl Into<String>) -> CustomConfig {
        CustomConfig {
            kind: kind.into(),
            params: toml::Table::new(),
        }
    }

    /// The parameters read into the function's own config type (serde);
    /// a missing, unknown or mistyped field is an error naming it.
    pub fn params<T: serde::de::DeserializeOwned>(&self) -> Result<T, FunctionError> {
        toml::Value::Table(self.params.clone())
            .try_into()
            .map_err(|e: toml::de::Error| FunctionError::Params {
                kind: self.kind.clone(),
                why: e.message().trim_end().to_string(),
            })
    }
}

impl FunctionConfig {
    /// Whether the function has a finite job (a probe's exchanges): a run
    /// starts it after the others and ends when every such job is done;
    /// one that fails or never completes fails the run.
    pub fn has_job(&self) -> bool {
        match self {
            FunctionConfig::Probe(_) => true,
            FunctionConfig::Custom(c) => registry::has_job(&c.kind),
            _ => false,
        }
    }
}

/// Visits the file paths a `[function]` table names (a manager's
/// `policy` and `secret_file`, an encrypt function's `key_file`s) with
/// their dotted keys. In a file such a path is relative to the file
/// ([`absolute_function_paths`]); a device takes a function sent to it
/// only with absolute ones.
pub fn function_paths(function: &mut toml::Value, mut visit: impl FnMut(&str, &mut String)) {
    let mut at = |t: Option<&mut toml::Value>, key: &str, name: &str| {
        if let Some(toml::Value::String(p)) = t.and_then(|t| t.get_mut(key)) {
            visit(name, p);
        }
    };
    let kind = function
        .get("kind")
        .and_then(|k| k.as_str())
        .map(str::to_owned);
    match kind.as_deref() {
        Some("manager") => {
            at(Some(&mut *function), "policy", "policy");
            at(Some(&mut *function), "secret_file", "secret_file");
        }
        Some("encrypt") => {
            at(
                function.get_mut("outbound"),
                "key_file",
                "outbound.key_file",
            );
            if let Some(toml::Value::Array(sas)) = function.get_mut("inbound") {
                for (i, sa) in sas.iter_mut().enumerate() {
                    at(Some(sa), "key_file", &format!("inbound[{i}].key_file"));
                }
            }
        }
        _ => {}
    }
}

/// Makes the paths a `[function]` table names (see [`function_paths`])
/// absolute, `base` being the folder of the file they are relative to:
/// for a function table read from one file and used elsewhere (a device
/// file written for a process, `shmnet ctl set FILE`, a policy's `set`
/// action), which then reads the same files.
pub fn absolute_function_paths(function: &mut toml::Value, base: &std::path::Path) {
    function_paths(function, |_, p| {
        *p = absolute_in(base, p.as_ref()).display().to_string();
    });
}

/// `path`, absolute or relative to `base` (itself absolute, or relative
/// to the working directory, or empty: a bare file name's folder), as an
/// absolute path.
pub(crate) fn absolute_in(base: &std::path::Path, path: &std::path::Path) -> std::path::PathBuf {
    let joined = base.join(path);
    std::path::absolute(&joined).unwrap_or(joined)
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

    #[test]
    fn a_bare_file_names_paths_become_absolute_too() {
        // `Path::new("policy.toml").parent()` is `""`, which
        // `std::path::absolute` refuses on its own.
        let mut t: toml::Value =
            toml::from_str("kind = \"manager\"\npolicy = \"p.toml\"\nsecret_file = \"/s\"")
                .unwrap();
        absolute_function_paths(&mut t, std::path::Path::new(""));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            t["policy"].as_str(),
            Some(&*cwd.join("p.toml").display().to_string())
        );
        assert_eq!(t["secret_file"].as_str(), Some("/s"));
    }
}
