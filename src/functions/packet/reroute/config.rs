//! The `[function] kind = "reroute"` schema and its validation into next
//! hops ([`Hop`]) and rules ([`Rule`]).

use std::net::IpAddr;

use super::probe::{Hop, Target};
use super::rules::Rule;
use crate::functions::Role;
use crate::functions::common::defaults;
use crate::functions::health::{DEFAULT_FALL, DEFAULT_RISE, HealthCheck, with_health_fields};
use crate::functions::matching::{Matcher, check_name, quoted, with_match_fields};

/// One address or a list (at most one IPv4 and one IPv6).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum Addresses {
    /// `address = "10.0.0.1"`.
    One(String),
    /// `address = ["10.0.0.1", "fd00::1"]`: one of each version at most.
    Many(Vec<String>),
}

impl From<&str> for Addresses {
    /// One address, as `address = "10.0.0.1"` writes it:
    /// `address: Some("10.0.0.1".into())`; checked when the config is
    /// compiled, as in a file.
    fn from(address: &str) -> Addresses {
        Addresses::One(address.to_string())
    }
}

impl From<IpAddr> for Addresses {
    /// One address, already parsed.
    fn from(address: IpAddr) -> Addresses {
        Addresses::One(address.to_string())
    }
}

/// How a next hop's health is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// ICMP echo from the device's own stack.
    #[default]
    Icmp,
    /// None: up whenever it has an address.
    None,
}

/// What a matching packet does when none of its rule's next hops is up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenDown {
    /// The routing table decides, as if no rule had matched.
    #[default]
    Table,
    /// The packet is dropped.
    Drop,
}

with_health_fields! {
    interval = "defaults::millis::<100>";
    /// One `[[function.next_hop]]`: where it is, and how it is checked (an
    /// address or device by ICMP echo every `interval`, 100ms unless given;
    /// a probe waits `timeout`, the interval unless given; `fall` misses take
    /// it down, `rise` answers bring it back). `interval` is also how often a
    /// `device` is looked up again.
    ///
    /// [`NextHopConfig::default`] gives each field the value a file gives
    /// when it leaves the field out. A file must give `name` (and one of
    /// `address`, `device` or `network`); the defaults are empty and none,
    /// which the function refuses, so a next hop built in Rust sets them.
    ///
    /// ```
    /// use shmnet::functions::reroute::NextHopConfig;
    /// let a = NextHopConfig {
    ///     name: "a".into(),
    ///     address: Some("10.0.1.1".into()),
    ///     ..Default::default()
    /// };
    /// assert_eq!(a.interval.to_string(), "100ms");
    /// ```
    #[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct NextHopConfig {
        /// Unique among the next hops; letters, digits, `-`, `_` or `.`
        /// (names its counters and `via` entries).
        pub name: String,
        /// A fixed address on one of the device's networks.
        pub address: Option<Addresses>,
        /// A device on one of this device's networks, by name.
        pub device: Option<String>,
        /// One of the device's networks (`"local"` or `"global"`): packets
        /// leave by its adapter, to their destination if it is on that
        /// network, else to its gateway.
        #[serde(default, with = "network", skip_serializing_if = "Option::is_none")]
        pub network: Option<Role>,
        /// Default: `icmp` for an address or device, `none` for a network.
        pub check: Option<Check>,
    }
}

with_match_fields! {
    /// One `[[function.rule]]`: the next hops it sends to, and what it
    /// takes (the match fields and a DSCP).
    ///
    /// `Default` gives each field the value a file gives when it leaves the
    /// field out. A file must give `via`; its default is empty, which the
    /// function refuses, so a rule built in Rust names its next hops.
    #[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct RuleConfig {
        /// Names the rule's counter (default: its index).
        pub name: Option<String>,
        /// DiffServ code point, 0..=63.
        pub dscp: Option<u8>,
        /// Next hops by name, most preferred first.
        pub via: Vec<String>,
    }
}

impl Default for NextHopConfig {
    /// What a file gives for each field it leaves out; `name` (required in
    /// a file) empty.
    fn default() -> Self {
        NextHopConfig {
            name: String::new(),
            address: None,
            device: None,
            network: None,
            check: None,
            interval: defaults::millis::<100>(),
            timeout: None,
            fall: DEFAULT_FALL,
            rise: DEFAULT_RISE,
        }
    }
}

/// `[function] kind = "reroute"`.
///
/// [`RerouteConfig::default`] gives each field the value a file gives when
/// it leaves the field out. A file must give at least one `[[next_hop]]`;
/// the default has none, which the function refuses.
///
/// ```
/// use shmnet::functions::reroute::{NextHopConfig, RerouteConfig, RuleConfig};
/// let hop = |name: &str, address: &str| NextHopConfig {
///     name: name.into(),
///     address: Some(address.into()),
///     ..Default::default()
/// };
/// let cfg = RerouteConfig {
///     next_hops: vec![hop("a", "10.0.1.1"), hop("b", "10.0.2.1")],
///     rules: vec![RuleConfig {
///         proto: Some("udp".into()),
///         via: vec!["a".into(), "b".into()],
///         ..Default::default()
///     }],
///     ..Default::default()
/// };
/// assert!(cfg.failback);
/// ```
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RerouteConfig {
    /// Return to a preferred next hop when it comes back up.
    #[serde(default = "defaults::bool::<true>")]
    pub failback: bool,
    /// With none of a rule's next hops up: `"table"` (the default) or `"drop"`.
    #[serde(default)]
    pub when_down: WhenDown,
    /// The `[[next_hop]]` tables (TOML key `next_hop`); at least one.
    #[serde(rename = "next_hop")]
    pub next_hops: Vec<NextHopConfig>,
    /// Ordered rules; the first match wins.
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
}

impl Default for RerouteConfig {
    /// What a file gives for each field it leaves out; no next hop.
    fn default() -> Self {
        RerouteConfig {
            failback: defaults::bool::<true>(),
            when_down: WhenDown::default(),
            next_hops: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// `network = "local" | "global"`, read into the device's [`Role`].
mod network {
    use super::Role;

    pub fn serialize<S: serde::Serializer>(r: &Option<Role>, s: S) -> Result<S::Ok, S::Error> {
        match r {
            Some(Role::Local) => s.serialize_str("local"),
            Some(Role::Global) => s.serialize_str("global"),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Role>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        match s.as_str() {
            "local" => Ok(Some(Role::Local)),
            "global" => Ok(Some(Role::Global)),
            _ => Err(serde::de::Error::unknown_variant(&s, &["local", "global"])),
        }
    }
}

impl RerouteConfig {
    /// Validates the configuration into next hops and rules; the error
    /// names the next hop or rule and the field.
    pub(super) fn compile(&self) -> Result<(Vec<Hop>, Vec<Rule>), String> {
        if self.next_hops.is_empty() {
            return Err("give at least one next_hop".into());
        }
        let mut hops: Vec<Hop> = Vec::with_capacity(self.next_hops.len());
        for c in &self.next_hops {
            let h = c.compile()?;
            if hops.iter().any(|o| o.name == h.name) {
                return Err(format!("next_hop {}: name used twice", h.name));
            }
            hops.push(h);
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            let r = r.compile(i, &hops)?;
            if rules.iter().any(|o| o.name == r.name) {
                return Err(format!("rule {}: name used twice", r.name));
            }
            rules.push(r);
        }
        Ok((hops, rules))
    }
}

impl NextHopConfig {
    fn compile(&self) -> Result<Hop, String> {
        let name = &self.name;
        check_name(name, "-_.")
            .map_err(|chars| format!("next_hop {}: name must be {chars}", quoted(name)))?;
        let owner = format!("next_hop {name}");
        let params = HealthCheck::compile(&owner, self.health_spec())?;
        let one_of = || format!("{owner}: give one of address, device or network");
        let (mut v4, mut v6) = (None, None);
        let target = match (&self.address, &self.device, self.network) {
            (None, None, Some(role)) => Target::Network(role),
            (Some(a), None, None) => {
                let list = match a {
                    Addresses::One(s) => std::slice::from_ref(s),
                    Addresses::Many(v) => v.as_slice(),
                };
                if list.is_empty() {
                    return Err(format!("{owner}: address lists no address"));
                }
                for s in list {
                    let bad = || {
                        format!(
                            "{owner}: address {} is not one IPv4 or IPv6 address \
                             (at most one of each)",
                            quoted(s)
                        )
                    };
                    match s.trim().parse::<IpAddr>().map_err(|_| bad())? {
                        IpAddr::V4(a) if v4.is_none() && !a.is_unspecified() => v4 = Some(a),
                        IpAddr::V6(a) if v6.is_none() && !a.is_unspecified() => v6 = Some(a),
                        _ => return Err(bad()),
                    }
                }
                Target::Fixed
            }
            (None, Some(d), None) if !d.is_empty() => Target::Device(d.clone()),
            _ => return Err(one_of()),
        };
        let check = match (self.check, &target) {
            (Some(Check::Icmp), Target::Network(_)) => {
                return Err(format!(
                    "{owner}: a network next hop has no address to check \
                     (use check = \"none\", or name its gateway by address)"
                ));
            }
            (Some(c), _) => c,
            (None, Target::Network(_)) => Check::None,
            (None, _) => Check::Icmp,
        };
        Ok(Hop::new(name.clone(), target, check, params, v4, v6))
    }
}

impl RuleConfig {
    /// Rule `i`, whose `via` names some of `hops`.
    fn compile(&self, i: usize, hops: &[Hop]) -> Result<Rule, String> {
        let name = self.name.clone().unwrap_or_else(|| i.to_string());
        let owner = format!("rule {name}");
        let matcher = Matcher::compile(&owner, self.match_spec())?;
        if self.dscp.is_some_and(|d| d > 63) {
            return Err(format!("{owner}: dscp must be 0..=63"));
        }
        if self.via.is_empty() {
            return Err(format!("{owner}: via lists no next hop"));
        }
        let mut via = Vec::with_capacity(self.via.len());
        for v in &self.via {
            let i = hops.iter().position(|h| &h.name == v).ok_or_else(|| {
                format!(
                    "{owner}: via names {}, which is no next_hop's name",
                    quoted(v)
                )
            })?;
            if via.contains(&i) {
                return Err(format!("{owner}: via names {} twice", quoted(v)));
            }
            via.push(i);
        }
        Ok(Rule::new(name, matcher, self.dscp, via))
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
        let built = RerouteConfig {
            next_hops: vec![NextHopConfig {
                name: "a".into(),
                ..Default::default()
            }],
            rules: vec![RuleConfig {
                via: vec!["a".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        reads_as(
            "[[next_hop]]\nname = \"a\"\n[[rule]]\nvia = [\"a\"]",
            &built,
        );
        assert!(RerouteConfig::default().compile().is_err(), "no next hop");
        let addressed = NextHopConfig {
            address: Some("10.0.1.1".parse::<IpAddr>().unwrap().into()),
            ..built.next_hops[0].clone()
        };
        assert_eq!(addressed.address, Some(Addresses::One("10.0.1.1".into())));
        assert!(addressed.compile().is_ok());
    }
}
