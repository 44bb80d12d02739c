//! The `[function] kind = "qos"` schema, and its validation into a
//! [`Plan`]: the classes' match criteria, their scheduling parameters and
//! the link's rate, every bound checked, every error naming the class and
//! field at fault.

use super::classify::ClassMatch;
use super::scheduler::{Rate, Shape};
use crate::functions::FunctionError;
use crate::functions::common::{defaults, invalid};
use crate::functions::matching::{check_name, quoted, with_match_fields};

/// Default queue per class: holds a 4 MiB TCP window (the probe's and the
/// benchmarks') with its headers at any MTU, without a drop — smoltcp has
/// no congestion control, so a drop costs a 1 s RTO. Memory is taken only
/// as the queue fills (a zeroed allocation maps pages on first touch).
pub const DEFAULT_QUEUE: u64 = 8 << 20;
/// Smallest queue: one full-size Ethernet frame.
const MIN_QUEUE: u64 = 1514;
const MAX_QUEUE: u64 = 1 << 30;
const MAX_WEIGHT: u32 = 1000;
const MAX_PRIORITY: u32 = 15;
/// Rates accepted, in bit/s.
const MIN_RATE: u64 = 8_000;
const MAX_RATE: u64 = 10_000_000_000_000;

/// A rate: bits per second as an integer, or a string like `"40mbit"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum RateSpec {
    /// Bits per second, as a TOML integer.
    Bits(i64),
    /// A number with a unit, `"40mbit"`, `"1.5gbit"` (see [`parse_rate`]).
    Text(String),
}

impl From<u64> for RateSpec {
    /// Bits per second, as `rate = 40000000` writes it:
    /// `rate: Some(40_000_000.into())`. A value beyond `i64::MAX` is cut to
    /// it, and refused like any rate above 10000gbit.
    fn from(bits: u64) -> RateSpec {
        RateSpec::Bits(i64::try_from(bits).unwrap_or(i64::MAX))
    }
}

impl From<String> for RateSpec {
    /// A rate with a unit; see `From<&str>`.
    fn from(text: String) -> RateSpec {
        RateSpec::Text(text)
    }
}

impl From<&str> for RateSpec {
    /// A rate with a unit, as `rate = "40mbit"` writes it:
    /// `rate: Some("40mbit".into())`; checked when the config is compiled,
    /// as in a file.
    fn from(text: &str) -> RateSpec {
        RateSpec::from(text.to_string())
    }
}

/// What happens to a packet arriving at a full queue, and before that.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OverLimit {
    /// Tail drop when full.
    #[default]
    Drop,
    /// CE-mark ECN-capable packets past `mark_at`; drop when full.
    Mark,
}

/// Which frames are scheduled, by the network they arrived from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the local network (leaving towards the global one).
    Out,
    /// From the global network.
    In,
    /// Both, each direction its own link.
    #[default]
    Both,
}

with_match_fields! {
    /// One `[[function.class]]`: its scheduling parameters, the DSCP values
    /// and the match fields it takes packets by. `proto = "icmp"` matches
    /// ICMP in IPv4 and ICMPv6 in IPv6 (ping alike in both versions); a
    /// number matches that protocol only.
    ///
    /// [`ClassConfig::default`] gives each field the value a file gives
    /// when it leaves the field out (priority 0, weight 1, not shaped, the
    /// default queue, tail drop, any packet). A file must give `name`; its
    /// default is empty, which the function refuses, so a class built in
    /// Rust names itself too.
    ///
    /// ```
    /// use shmnet::functions::qos::ClassConfig;
    /// let video = ClassConfig {
    ///     name: "video".into(),
    ///     rate: Some("40mbit".into()),
    ///     proto: Some("udp".into()),
    ///     dport: Some((5000..=5100).into()),
    ///     ..Default::default()
    /// };
    /// assert_eq!(video.weight, 1);
    /// ```
    #[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct ClassConfig {
        /// Letters, digits, `-` and `_` (it names the class's counters).
        pub name: String,
        /// 0 (highest) ..= 15.
        #[serde(default)]
        pub priority: u32,
        /// Share within its priority level, 1..=1000.
        #[serde(default = "defaults::u32::<1>")]
        pub weight: u32,
        /// Shaping rate; none: not shaped (only the link rate applies).
        pub rate: Option<RateSpec>,
        /// Bucket size in bytes (default: 10 ms at `rate`, at least 3028).
        pub burst: Option<u64>,
        /// Queue size in bytes.
        pub queue: Option<u64>,
        /// `"drop"` (the default) or `"mark"`.
        #[serde(default)]
        pub over_limit: OverLimit,
        /// Queue bytes from which ECT packets are CE-marked (default: half the
        /// queue); only with `over_limit = "mark"`.
        pub mark_at: Option<u64>,
        /// DSCP values (0..=63) matched; empty: any.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub dscp: Vec<i64>,
    }
}

impl Default for ClassConfig {
    /// What a file gives for each field it leaves out; `name` (required in
    /// a file) empty.
    fn default() -> Self {
        ClassConfig {
            name: String::new(),
            priority: 0,
            weight: defaults::u32::<1>(),
            rate: None,
            burst: None,
            queue: None,
            over_limit: OverLimit::default(),
            mark_at: None,
            dscp: Vec::new(),
            proto: None,
            src: None,
            dst: None,
            sport: None,
            dport: None,
        }
    }
}

/// `[function] kind = "qos"`.
///
/// `Default` gives each field the value a file gives when it leaves the
/// field out. A file must give `default` (here `default_class`) and at
/// least one class; their defaults are empty, which the function refuses.
///
/// ```
/// use shmnet::functions::qos::{ClassConfig, QosConfig};
/// let cfg = QosConfig {
///     default_class: "bulk".into(),
///     rate: Some(100_000_000.into()),
///     classes: vec![ClassConfig { name: "bulk".into(), ..Default::default() }],
///     ..Default::default()
/// };
/// assert!(shmnet::functions::qos::Qos::new(cfg).is_ok());
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct QosConfig {
    /// The class of packets no class matches.
    #[serde(rename = "default")]
    pub default_class: String,
    /// Which frames are scheduled: `"out"`, `"in"` or `"both"` (the default).
    #[serde(default)]
    pub direction: Direction,
    /// Total rate of each direction's link; none: not shaped.
    pub rate: Option<RateSpec>,
    /// Link bucket size in bytes (default as for classes).
    pub burst: Option<u64>,
    /// The classes, in match order (first match wins).
    #[serde(rename = "class")]
    pub classes: Vec<ClassConfig>,
}

/// Parses `"40mbit"`, `"1.5gbit"`, `"500kbit"`, `"8000bit"` or an integer
/// (bits per second); SI units (1 kbit = 1000 bit), like `tc`.
pub fn parse_rate(spec: &RateSpec) -> Result<u64, String> {
    let bits = match spec {
        RateSpec::Bits(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative"))?,
        RateSpec::Text(s) => {
            let t = s.trim().to_ascii_lowercase();
            let digits = t
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(t.len());
            let (num, unit) = t.split_at(digits);
            let scale: f64 = match unit.trim() {
                "" | "bit" | "bps" => 1.0,
                "kbit" => 1e3,
                "mbit" => 1e6,
                "gbit" => 1e9,
                "tbit" => 1e12,
                "kbps" | "mbps" | "gbps" => {
                    return Err(format!(
                        "{}: tc reads {unit:?} as bytes per second; write kbit, mbit or gbit",
                        quoted(s)
                    ));
                }
                _ => {
                    return Err(format!(
                        "{} is not a rate (like \"500kbit\", \"40mbit\", \"1gbit\")",
                        quoted(s)
                    ));
                }
            };
            let n: f64 = num
                .parse()
                .map_err(|_| format!("{} is not a rate (like \"40mbit\")", quoted(s)))?;
            (n * scale).round() as u64
        }
    };
    if !(MIN_RATE..=MAX_RATE).contains(&bits) {
        return Err(format!("{bits} bit/s is outside 8kbit..=10000gbit"));
    }
    Ok(bits)
}

/// A class, checked: what it matches, how it is scheduled, when it marks.
#[derive(Debug, Clone)]
pub(super) struct ClassPlan {
    pub name: String,
    pub matcher: ClassMatch,
    pub shape: Shape,
    /// Queue bytes from which ECT packets are CE-marked (`over_limit =
    /// "mark"`).
    pub mark_at: Option<usize>,
}

/// A whole configuration, checked.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub direction: Direction,
    pub classes: Vec<ClassPlan>,
    /// Index of the default class.
    pub default: usize,
    /// The link's rate, per direction.
    pub link: Option<Rate>,
}

/// 10 ms at the rate: covers a device's wake-up latency many times over.
fn default_burst(rate: u64) -> u64 {
    (rate / 8 / 100).max(2 * 1514)
}

/// The bucket of `rate` and `burst` of `owner` (`"class NAME: "` or empty
/// for the link).
fn bucket(
    owner: &str,
    rate: Option<&RateSpec>,
    burst: Option<u64>,
) -> Result<Option<Rate>, String> {
    let rate = rate
        .map(parse_rate)
        .transpose()
        .map_err(|e| format!("{owner}rate {e}"))?;
    Ok(match (rate, burst) {
        (None, Some(_)) => return Err(format!("{owner}burst needs a rate")),
        (Some(_), Some(b)) if !(1..=MAX_QUEUE).contains(&b) => {
            return Err(format!("{owner}burst {b} is not 1..={MAX_QUEUE} bytes"));
        }
        (Some(bits), b) => Some(Rate {
            bits,
            burst: b.unwrap_or_else(|| default_burst(bits)),
        }),
        (None, None) => None,
    })
}

impl ClassConfig {
    fn plan(&self) -> Result<ClassPlan, String> {
        let name = &self.name;
        check_name(name, "-_")
            .map_err(|chars| format!("class name {} must be {chars}", quoted(name)))?;
        if self.priority > MAX_PRIORITY {
            return Err(format!(
                "class {name}: priority {} is not 0..={MAX_PRIORITY}",
                self.priority
            ));
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err(format!(
                "class {name}: weight {} is not 1..={MAX_WEIGHT}",
                self.weight
            ));
        }
        let rate = bucket(&format!("class {name}: "), self.rate.as_ref(), self.burst)?;
        let queue = self.queue.unwrap_or(DEFAULT_QUEUE);
        if !(MIN_QUEUE..=MAX_QUEUE).contains(&queue) {
            return Err(format!(
                "class {name}: queue {queue} is not {MIN_QUEUE}..={MAX_QUEUE} bytes"
            ));
        }
        let mark_at = match (self.over_limit, self.mark_at) {
            (OverLimit::Drop, Some(_)) => {
                return Err(format!("class {name}: mark_at needs over_limit = \"mark\""));
            }
            (OverLimit::Drop, None) => None,
            (OverLimit::Mark, Some(m)) if m > queue => {
                return Err(format!(
                    "class {name}: mark_at {m} is larger than the queue ({queue})"
                ));
            }
            (OverLimit::Mark, m) => Some(m.unwrap_or(queue / 2) as usize),
        };
        Ok(ClassPlan {
            name: name.clone(),
            matcher: ClassMatch::compile(self)?,
            shape: Shape {
                priority: self.priority,
                weight: self.weight,
                rate,
                queue: queue as usize,
            },
            mark_at,
        })
    }
}

impl QosConfig {
    /// Checks the configuration; the error names the class and field.
    pub(super) fn plan(&self) -> Result<Plan, FunctionError> {
        let invalid = invalid("qos");
        if self.classes.is_empty() {
            return Err(invalid("give at least one class".into()));
        }
        let mut classes: Vec<ClassPlan> = Vec::with_capacity(self.classes.len());
        for c in &self.classes {
            if classes.iter().any(|o| o.name == c.name) {
                return Err(invalid(format!("class {} is defined twice", c.name)));
            }
            classes.push(c.plan().map_err(invalid)?);
        }
        let default = classes
            .iter()
            .position(|c| c.name == self.default_class)
            .ok_or_else(|| {
                invalid(format!(
                    "default class {} is not one of the classes",
                    quoted(&self.default_class)
                ))
            })?;
        Ok(Plan {
            direction: self.direction,
            classes,
            default,
            link: bucket("", self.rate.as_ref(), self.burst).map_err(invalid)?,
        })
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
        let built = QosConfig {
            default_class: "bulk".into(),
            classes: vec![ClassConfig {
                name: "bulk".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        reads_as("default = \"bulk\"\n[[class]]\nname = \"bulk\"", &built);
        assert!(built.plan().is_ok());
        assert!(QosConfig::default().plan().is_err(), "no class, no default");
    }

    #[test]
    fn rates_from_rust_values() {
        assert_eq!(RateSpec::from("40mbit"), RateSpec::Text("40mbit".into()));
        assert_eq!(parse_rate(&"40mbit".into()), Ok(40_000_000));
        assert_eq!(parse_rate(&40_000_000.into()), Ok(40_000_000));
        assert!(parse_rate(&u64::MAX.into()).is_err());
    }
}
