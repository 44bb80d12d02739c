//! The firewall's `[function]` section: its serde schema and the checks
//! that turn it into the compiled rules and timeouts the engine runs.

use std::ops::RangeInclusive;

use smoltcp::time::Duration;

use super::conntrack::Timeouts;
use super::rules::Rules;
use crate::functions::FunctionError;
use crate::functions::common::invalid;
use crate::functions::matching::{ConfigDuration, with_match_fields};

/// What a rule or the default policy does with a packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the packet through (and track its connection).
    Accept,
    /// Discard the packet (counted, and logged within
    /// `log_drops_per_second`): the default policy.
    #[default]
    Drop,
}

/// Which packets a rule applies to, by the way they travel through the
/// device (the outside is the global network).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Arrived from the global adapter.
    In,
    /// Arrived from the local adapter, or emitted by the device's own stack.
    Out,
    /// Either way (the default).
    #[default]
    Any,
}

/// Connection state a rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateMatch {
    /// Packets that would start a connection (and untracked ICMP).
    New,
    /// Packets of tracked connections; only a drop is useful here.
    Established,
    /// New, established and invalid packets.
    #[default]
    Any,
}

with_match_fields! {
    /// One `[[function.rule]]`: its action, the side and connection state
    /// it applies to, and the match fields. `proto = "icmp"` is ICMP in
    /// IPv4 (`"icmpv6"` IPv6's); `proto = "any"` is the same as leaving it
    /// out.
    ///
    /// Built in Rust, a rule sets its action and the fields it matches on,
    /// and takes the rest from [`RuleConfig::default`], which is what a
    /// file gives for each field left out: any direction, any state, no
    /// match field (every packet). `action` is the one field a file must
    /// give; its `Default` is [`Action::Drop`], so a rule whose action was
    /// forgotten fails closed.
    ///
    /// ```
    /// use shmnet::functions::firewall::{Action, RuleConfig};
    /// let web = RuleConfig {
    ///     action: Action::Accept,
    ///     proto: Some("tcp".into()),
    ///     dport: Some(80.into()),
    ///     ..Default::default()
    /// };
    /// let text = "action = \"accept\"\nproto = \"tcp\"\ndport = 80";
    /// assert_eq!(toml::from_str::<RuleConfig>(text).unwrap(), web);
    /// ```
    #[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct RuleConfig {
        /// What a matching packet gets: `"accept"` or `"drop"` (required in
        /// a file).
        pub action: Action,
        /// The way a packet travels: `"in"`, `"out"` or `"any"` (the
        /// default).
        #[serde(default)]
        pub direction: Direction,
        /// The connection state matched: `"new"`, `"established"` or
        /// `"any"` (the default).
        #[serde(default)]
        pub state: StateMatch,
        /// Match only non-first fragments (which carry no ports).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub fragments: bool,
    }
}

/// `[function] kind = "firewall"`; a field left out takes its value from
/// [`FirewallConfig::default`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirewallConfig {
    /// Policy when no rule matches.
    #[serde(rename = "default")]
    pub default_policy: Action,
    /// Ordered rules; the first match wins.
    #[serde(rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
    /// Dropped packets logged per second (0: none).
    pub log_drops_per_second: u32,
    /// Connection table size.
    pub max_connections: usize,
    /// An established TCP connection, idle.
    pub tcp_established_timeout: ConfigDuration,
    /// SYN seen, handshake not complete.
    pub tcp_handshake_timeout: ConfigDuration,
    /// FIN or RST seen.
    pub tcp_closing_timeout: ConfigDuration,
    /// UDP (and other IP protocols) before the responder answered.
    pub udp_timeout: ConfigDuration,
    /// UDP (and other IP protocols) once the responder answered.
    pub udp_replied_timeout: ConfigDuration,
    /// ICMP echo exchanges.
    pub icmp_timeout: ConfigDuration,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            default_policy: Action::Drop,
            tcp_established_timeout: ConfigDuration::from_secs(3600),
            tcp_handshake_timeout: ConfigDuration::from_secs(120),
            tcp_closing_timeout: ConfigDuration::from_secs(30),
            udp_timeout: ConfigDuration::from_secs(30),
            udp_replied_timeout: ConfigDuration::from_secs(180),
            icmp_timeout: ConfigDuration::from_secs(30),
            max_connections: 65536,
            log_drops_per_second: 10,
            rules: Vec::new(),
        }
    }
}

/// What a connection timeout may be.
const TIMEOUTS: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(365 * 86400);

/// The largest connection table a config may ask for.
const MAX_CONNECTIONS: usize = 1 << 24;

/// A config, checked and compiled.
pub(super) struct Compiled {
    pub rules: Rules,
    pub timeouts: Timeouts,
    pub max_connections: usize,
}

impl FirewallConfig {
    /// Checks every field; the error names the field (and the rule).
    pub(super) fn compile(&self) -> Result<Compiled, FunctionError> {
        let bad = invalid("firewall");
        let timeout = |name: &str, d: ConfigDuration| d.within(name, TIMEOUTS).map_err(bad);
        let timeouts = Timeouts {
            tcp_established: timeout("tcp_established_timeout", self.tcp_established_timeout)?,
            tcp_handshake: timeout("tcp_handshake_timeout", self.tcp_handshake_timeout)?,
            tcp_closing: timeout("tcp_closing_timeout", self.tcp_closing_timeout)?,
            udp: timeout("udp_timeout", self.udp_timeout)?,
            udp_replied: timeout("udp_replied_timeout", self.udp_replied_timeout)?,
            icmp: timeout("icmp_timeout", self.icmp_timeout)?,
        };
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(bad(format!(
                "max_connections must be 1..={MAX_CONNECTIONS}"
            )));
        }
        Ok(Compiled {
            rules: Rules::compile(&self.rules).map_err(bad)?,
            timeouts,
            max_connections: self.max_connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::matching::{PortSpec, ProtoSpec};
    use crate::testing::function::reads_as;

    /// A field left out of a file and a field left to `Default` are the
    /// same value, so the two ways of writing a config cannot drift apart.
    #[test]
    fn default_is_what_a_file_leaves_out() {
        let built = RuleConfig {
            action: Action::Accept,
            ..Default::default()
        };
        reads_as("action = \"accept\"", &built);
        reads_as("", &FirewallConfig::default());

        let built = RuleConfig {
            action: Action::Accept,
            proto: Some("tcp".into()),
            dport: Some((8000..=8080).into()),
            sport: Some(53.into()),
            ..Default::default()
        };
        let text = "action = \"accept\"\nproto = \"tcp\"\ndport = \"8000-8080\"\nsport = 53";
        reads_as(text, &built);
        assert_eq!(built.proto, Some(ProtoSpec::Name("tcp".into())));
        assert_eq!(built.sport, Some(PortSpec::Number(53)));
    }
}
