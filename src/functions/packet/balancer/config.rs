//! The `[function] kind = "balancer"` schema and its validation into
//! services, flow timeouts and the flow-table size.

use std::ops::RangeInclusive;

use smoltcp::time::Duration;

use super::flows::Timeouts;
use super::maglev::is_prime;
use super::service::{Backend, Endpoint, Service};
use crate::functions::common::defaults;
use crate::functions::health::{
    DEFAULT_FALL, DEFAULT_RISE, HealthCheck, HealthSpec, with_health_fields,
};
use crate::functions::matching::{ConfigDuration, ProtoSpec, proto_field, quoted};
use crate::wire::proto;

/// Most backends per service (table entries are `u16`).
const MAX_BACKENDS: usize = 4096;
/// Largest lookup table.
const MAX_TABLE: u32 = 1 << 24;
/// Largest flow table.
const MAX_FLOWS: usize = 1 << 24;

/// Health check of a service's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// A TCP connection to the backend's address and port.
    Tcp,
    /// No checks: backends are always up.
    None,
}

with_health_fields! {
    interval = "defaults::secs::<1>";
    /// One `[[function.service]]`: the VIP, its backends, and how they are
    /// checked (a TCP connection to each every `interval`, 1s unless given,
    /// failing if not established within `timeout`, 500ms unless given;
    /// `fall` failures mark a backend down, `rise` successes up again).
    ///
    /// [`ServiceConfig::default`] gives each field the value a file gives
    /// when it leaves the field out. A file must give `name` and `vip`;
    /// their defaults are empty, which the balancer refuses, so a service
    /// built in Rust sets them too.
    ///
    /// ```
    /// use shmnet::functions::balancer::ServiceConfig;
    /// let web = ServiceConfig {
    ///     name: "web".into(),
    ///     vip: "10.20.0.100:80".into(),
    ///     backends: vec!["10.30.0.1:8080".into(), "10.30.0.2:8080".into()],
    ///     ..Default::default()
    /// };
    /// assert_eq!(web.table_size, 65537);
    /// ```
    #[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct ServiceConfig {
        /// Unique among the services, non-empty, without spaces; names its
        /// counters and log lines.
        pub name: String,
        /// The virtual address clients connect to, `"ip:port"`.
        pub vip: String,
        /// `"tcp"` (the default) or `"udp"`.
        pub proto: Option<ProtoSpec>,
        /// Backend endpoints, `"ip:port"`, of the VIP's IP version.
        #[serde(default)]
        pub backends: Vec<String>,
        /// Maglev lookup-table size: a prime larger than the number of
        /// backends (≥ 100× gives an even spread).
        #[serde(default = "defaults::u32::<65537>")]
        pub table_size: u32,
        /// Default: `"tcp"` for TCP services, `"none"` for UDP ones.
        pub check: Option<Check>,
    }
}

impl Default for ServiceConfig {
    /// What a file gives for each field it leaves out; `name` and `vip`
    /// (required in a file) empty.
    fn default() -> Self {
        ServiceConfig {
            name: String::new(),
            vip: String::new(),
            proto: None,
            backends: Vec::new(),
            table_size: defaults::u32::<65537>(),
            check: None,
            interval: defaults::secs::<1>(),
            timeout: None,
            fall: DEFAULT_FALL,
            rise: DEFAULT_RISE,
        }
    }
}

/// What a flow timeout may be.
const TIMEOUTS: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(365 * 86400);

/// A backend check's `timeout` when the service leaves it out.
const DEFAULT_CHECK_TIMEOUT: ConfigDuration = ConfigDuration::from_millis(500);

/// `[function] kind = "balancer"`; a field left out takes its value from
/// [`BalancerConfig::default`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalancerConfig {
    /// Flow-table size; new flows beyond it are refused.
    pub max_flows: usize,
    /// Idle time after which a TCP flow is forgotten.
    pub tcp_timeout: ConfigDuration,
    /// Linger after a FIN or RST.
    pub tcp_closing_timeout: ConfigDuration,
    /// Idle time after which a UDP flow is forgotten.
    pub udp_timeout: ConfigDuration,
    /// The `[[service]]` tables (TOML key `service`); none by default.
    #[serde(rename = "service", skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceConfig>,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            max_flows: 65536,
            tcp_timeout: ConfigDuration::from_secs(300),
            tcp_closing_timeout: ConfigDuration::from_secs(4),
            udp_timeout: ConfigDuration::from_secs(30),
            services: Vec::new(),
        }
    }
}

/// A validated configuration.
pub(super) struct Compiled {
    pub services: Vec<Service>,
    pub timeouts: Timeouts,
    pub max_flows: usize,
}

impl BalancerConfig {
    /// Validates the configuration; the error names the service (or the
    /// global field) and what is wrong.
    pub(super) fn compile(&self) -> Result<Compiled, String> {
        if !(1..=MAX_FLOWS).contains(&self.max_flows) {
            return Err(format!("max_flows must be 1..={MAX_FLOWS}"));
        }
        let timeouts = Timeouts {
            tcp: self.tcp_timeout.within("tcp_timeout", TIMEOUTS)?,
            tcp_closing: self
                .tcp_closing_timeout
                .within("tcp_closing_timeout", TIMEOUTS)?,
            udp: self.udp_timeout.within("udp_timeout", TIMEOUTS)?,
        };
        let mut services: Vec<Service> = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            let svc = s.compile(i)?;
            if services.iter().any(|o| o.name == svc.name) {
                return Err(format!(
                    "service {}: two services have this name",
                    quoted(&svc.name)
                ));
            }
            if services
                .iter()
                .any(|o| o.vip == svc.vip && o.proto == svc.proto)
            {
                return Err(format!(
                    "service {}: another service has vip {} ({})",
                    quoted(&svc.name),
                    svc.vip,
                    if svc.proto == proto::TCP {
                        "tcp"
                    } else {
                        "udp"
                    }
                ));
            }
            services.push(svc);
        }
        Ok(Compiled {
            services,
            timeouts,
            max_flows: self.max_flows,
        })
    }
}

impl ServiceConfig {
    /// Service `i` of the list.
    fn compile(&self, i: usize) -> Result<Service, String> {
        let what = if self.name.is_empty() {
            format!("service {i}")
        } else {
            format!("service {}", quoted(&self.name))
        };
        if self.name.is_empty() || self.name.contains(char::is_whitespace) {
            return Err(format!("{what}: name must be non-empty, without spaces"));
        }
        let vip = Endpoint::parse(&self.vip).ok_or_else(|| {
            format!(
                "{what}: vip {} is not ip:port (like \"10.20.0.100:80\" or \"[fd00::100]:80\")",
                quoted(&self.vip)
            )
        })?;
        if vip.port == 0 {
            return Err(format!("{what}: vip port must be 1..=65535"));
        }
        let proto = match proto_field(&what, self.proto.as_ref())? {
            None | Some(proto::TCP) => proto::TCP,
            Some(proto::UDP) => proto::UDP,
            Some(_) => return Err(format!("{what}: proto must be \"tcp\" or \"udp\"")),
        };
        let m = self.table_size;
        if !is_prime(m) || m > MAX_TABLE {
            return Err(format!(
                "{what}: table_size {m} must be a prime up to {MAX_TABLE} (like 65537 or 251)"
            ));
        }
        if self.backends.len() > MAX_BACKENDS {
            return Err(format!("{what}: at most {MAX_BACKENDS} backends"));
        }
        if m as usize <= self.backends.len() {
            return Err(format!(
                "{what}: table_size {m} must exceed the number of backends ({}); \
                 100 times as many entries spreads flows evenly",
                self.backends.len()
            ));
        }
        let mut backends: Vec<Backend> = Vec::new();
        for text in &self.backends {
            let ep = Endpoint::parse(text)
                .ok_or_else(|| format!("{what}: backend {} is not ip:port", quoted(text)))?;
            if ep.port == 0 {
                return Err(format!(
                    "{what}: backend {}: port must be 1..=65535",
                    quoted(text)
                ));
            }
            if ep.v6 != vip.v6 {
                return Err(format!(
                    "{what}: backend {} is not of the vip's IP version",
                    quoted(text)
                ));
            }
            if backends.iter().any(|b| b.ep == ep) {
                return Err(format!("{what}: backend {} is listed twice", quoted(text)));
            }
            backends.push(Backend::new(ep, m));
        }
        let checked = match self.check {
            Some(c) => c == Check::Tcp,
            None => proto == proto::TCP,
        };
        let check = checked
            .then(|| {
                let spec = HealthSpec {
                    timeout: Some(self.timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT)),
                    ..self.health_spec()
                };
                HealthCheck::compile(&what, spec)
            })
            .transpose()?;
        Ok(Service::new(
            self.name.clone(),
            proto,
            vip,
            backends,
            m,
            check,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::function::reads_as;

    /// A field left out of a file and a field left to `Default` are the
    /// same value, so the two ways of writing a config cannot drift apart.
    #[test]
    fn default_is_what_a_file_leaves_out() {
        let built = ServiceConfig {
            name: "web".into(),
            vip: "10.20.0.100:80".into(),
            ..Default::default()
        };
        reads_as("name = \"web\"\nvip = \"10.20.0.100:80\"", &built);
        reads_as("", &BalancerConfig::default());
        assert!(
            BalancerConfig {
                services: vec![ServiceConfig::default()],
                ..Default::default()
            }
            .compile()
            .is_err(),
            "a service without name or vip is refused"
        );
    }
}
