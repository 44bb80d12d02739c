//! The policy engine: rules over metrics that change devices' functions.
//!
//! The manager polls every device's counters about once a second and hands
//! them to an [`Engine`] with the time; the engine samples the series its
//! rules read, runs each rule's state machine and returns the [`Action`]s
//! to execute now. It is sans-IO: it reads no clock and touches no socket,
//! so it runs the same on virtual time in tests as in the manager.
//!
//! A rule fires (runs `then`) once its `when` condition has held for `for`,
//! and reverts (runs `revert`) once its `clear` condition (by default
//! `not (when)`) has held for `clear_for`; two transitions of a rule are at
//! least `cooldown` apart, which is what keeps a policy from swapping a
//! device's function every second. The policy file:
//!
//! ```toml
//! dry_run = false            # optional; the manager can also force it
//! [[rule]]
//! name = "shape-when-busy"   # unique, [a-z0-9_-]+
//! when = "rate(edge:global.rx_bytes, 2s) > 5M"
//! for = "1s"                 # default 0s
//! clear = "rate(edge:global.rx_bytes, 2s) < 1M"  # default: not (when)
//! clear_for = "3s"           # default: same as `for`
//! cooldown = "10s"           # default 30s
//! [[rule.then]]
//! set = { device = "edge", function = { kind = "qos", rate = "10Mbit" } }
//! [[rule.then]]
//! log = "edge busy: shaping"
//! [[rule.revert]]
//! set = { device = "edge", function = { kind = "passthrough" } }
//! ```
//!
//! Actions: `set = { device, function }` (the whole function table),
//! `patch = { device, path, value, op }` (op `set`, `append` or `remove`,
//! applied with [`apply_patch`]), `capture = { device, adapter, seconds,
//! file }` and `log = "text"`. Conditions are described in [`expr`].
//!
//! ```
//! use shmnet::functions::socket::manager::policy::{Action, Engine, Metrics, Policy};
//! struct Counters(f64);
//! impl Metrics for Counters {
//!     fn get(&self, _source: &str, _name: &str) -> Option<f64> { Some(self.0) }
//!     fn up(&self, _device: &str) -> Option<bool> { Some(true) }
//! }
//! let policy = Policy::from_toml(r#"
//!     [[rule]]
//!     name = "busy"
//!     when = "rate(edge:global.rx_bytes, 2s) > 1M"
//!     [[rule.then]]
//!     log = "edge busy"
//! "#).unwrap();
//! let mut engine = Engine::new(policy);
//! assert!(engine.tick(0, &Counters(0.0)).is_empty());
//! let planned = engine.tick(1000, &Counters(5e6)); // 5 MB in a second
//! assert!(matches!(&planned[0].action, Action::Log(t) if t == "edge busy"));
//! engine.settle(planned[0].decision, Ok("logged".into()));
//! assert_eq!(engine.counters().actions_ok, 1);
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod engine;
pub mod expr;
pub mod patch;
#[cfg(test)]
mod tests;

pub use engine::{Decision, Engine, EngineCounters, Planned, RuleState, RuleStatus, Transition};
pub use expr::{Condition, ExprError, parse_condition};
pub use patch::{PatchOp, apply_patch};

/// What the engine reads: the latest polled values and devices' liveness.
pub trait Metrics {
    /// The latest value of `source:name`, `None` if unknown.
    fn get(&self, source: &str, name: &str) -> Option<f64>;
    /// Whether `device` answered its last poll; `None` if never seen.
    fn up(&self, device: &str) -> Option<bool>;
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read: check the path and its permissions.
    #[error("policy file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// Not TOML, or a top-level field other than `dry_run` and `rule`:
    /// fix the file where the message says.
    #[error("{0}")]
    Syntax(String),
    /// A rule is wrong: the message names the rule (by name, or by
    /// 1-based index when it has none) and the field.
    #[error("{rule}: {message}")]
    Rule {
        /// `rule "name"` or `rule 3`.
        rule: String,
        /// What is wrong, starting with the field when there is one.
        message: String,
    },
    /// An error in the file named.
    #[error("policy file {}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong in it.
        source: Box<PolicyError>,
    },
}

/// Which of a device's adapters a capture listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureAdapter {
    /// The device's local (shared-memory) side.
    Local,
    /// The device's global side.
    Global,
}

impl CaptureAdapter {
    /// `local` or `global`.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureAdapter::Local => "local",
            CaptureAdapter::Global => "global",
        }
    }
}

/// Something the caller does when a rule fires or reverts.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Replace the device's whole function.
    SetFunction {
        /// The device.
        device: String,
        /// The function table as TOML text (`kind = "qos"` ...).
        function: String,
    },
    /// Edit the device's current function table with [`apply_patch`] and
    /// send it back.
    Patch {
        /// The device.
        device: String,
        /// Dotted path, numeric segments index arrays.
        path: String,
        /// What to do at the path.
        op: PatchOp,
        /// The value for `set` and `append`; `None` for `remove`.
        value: Option<toml::Value>,
    },
    /// Capture the device's traffic to a pcap file.
    Capture(Capture),
    /// A line for the manager's log.
    Log(String),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::SetFunction { device, function } => {
                let lines: Vec<&str> = function.lines().filter(|l| !l.is_empty()).collect();
                write!(f, "set {device}: {}", lines.join("; "))
            }
            Action::Patch {
                device,
                path,
                op,
                value,
            } => match value {
                Some(v) => write!(f, "patch {device}: {op} {path} = {v}"),
                None => write!(f, "patch {device}: {op} {path}"),
            },
            Action::Capture(c) => write!(
                f,
                "capture {} {} for {}s to {}",
                c.device,
                c.adapter.as_str(),
                c.seconds,
                c.file
            ),
            Action::Log(t) => write!(f, "log: {t}"),
        }
    }
}

/// A rule, checked and compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique within the policy, `[a-z0-9_-]+`.
    pub name: String,
    /// The least time between two transitions of this rule.
    pub cooldown: Duration,
    /// When to fire.
    pub when: Condition,
    /// How long `when` must hold before firing (`for`).
    pub hold: Duration,
    /// When to revert; `None` means `not (when)`.
    pub clear: Option<Condition>,
    /// How long the clear condition must hold before reverting (`clear_for`).
    pub clear_hold: Duration,
    /// Run on firing.
    pub then: Vec<Action>,
    /// Run on reverting.
    pub revert: Vec<Action>,
}

/// A policy: rules and whether it only reports what it would do.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    /// Decide and log, but plan no action.
    pub dry_run: bool,
    /// The rules, in file order (which is also evaluation order).
    pub rules: Vec<Rule>,
}

/// The longest rule name accepted.
const MAX_NAME_LEN: usize = 64;
/// The default cooldown.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    rule: Vec<toml::Table>,
}

const RULE_FIELDS: &[&str] = &[
    "name",
    "when",
    "for",
    "clear",
    "clear_for",
    "cooldown",
    "then",
    "revert",
];

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetSpec {
    device: String,
    function: toml::Table,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchSpec {
    device: String,
    path: String,
    #[serde(default)]
    value: Option<toml::Value>,
    #[serde(default = "default_op")]
    op: PatchOp,
}

fn default_op() -> PatchOp {
    PatchOp::Set
}

/// A `capture` action: the device's traffic on one side to a pcap file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// The device.
    pub device: String,
    /// Which side.
    pub adapter: CaptureAdapter,
    /// How long (1..=3600).
    pub seconds: u32,
    /// Where the pcap goes.
    pub file: String,
}

impl Policy {
    /// Parses and checks a policy file's text.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text)
            .map_err(|e| PolicyError::Syntax(e.to_string().trim_end().to_string()))?;
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rule.len());
        for (i, table) in raw.rule.into_iter().enumerate() {
            let label = match table.get("name") {
                Some(toml::Value::String(n)) => format!("rule {n:?}"),
                _ => format!("rule {}", i + 1),
            };
            let rule = parse_rule(table).map_err(|message| PolicyError::Rule {
                rule: label.clone(),
                message,
            })?;
            if rules.iter().any(|r| r.name == rule.name) {
                return Err(PolicyError::Rule {
                    rule: label,
                    message: "duplicate name".to_string(),
                });
            }
            rules.push(rule);
        }
        Ok(Policy {
            dry_run: raw.dry_run,
            rules,
        })
    }

    /// Reads and parses a policy file; errors name the file. Paths in a
    /// `set` action's function (an encrypt `key_file`) are relative to
    /// the policy file.
    pub fn load(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut policy = Policy::from_toml(&text).map_err(|e| PolicyError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        // A `set` action's files are relative to the policy file, as a
        // device file's are to it.
        let base = path.parent().unwrap_or(Path::new("."));
        for rule in &mut policy.rules {
            for action in rule.then.iter_mut().chain(&mut rule.revert) {
                if let Action::SetFunction { function, .. } = action
                    && let Ok(mut table) = toml::from_str::<toml::Value>(function)
                {
                    let before = table.clone();
                    crate::functions::absolute_function_paths(&mut table, base);
                    if table != before
                        && let Ok(text) = toml::to_string(&table)
                    {
                        *function = text;
                    }
                }
            }
        }
        Ok(policy)
    }
}

fn field_str<'a>(t: &'a toml::Table, field: &str) -> Result<Option<&'a str>, String> {
    match t.get(field) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(format!(
            "field `{field}`: expected a string, found {}",
            v.type_str()
        )),
    }
}

fn field_duration(t: &toml::Table, field: &str) -> Result<Option<Duration>, String> {
    let Some(s) = field_str(t, field)? else {
        return Ok(None);
    };
    expr::parse_duration_ms(s)
        .map(|ms| Some(Duration::from_millis(ms)))
        .ok_or_else(|| {
            format!("field `{field}`: bad duration {s:?} (an integer and ms, s, m or h)")
        })
}

fn field_condition(t: &toml::Table, field: &str) -> Result<Option<Condition>, String> {
    let Some(s) = field_str(t, field)? else {
        return Ok(None);
    };
    parse_condition(s)
        .map(Some)
        .map_err(|e| format!("field `{field}`: {e}"))
}

fn parse_rule(t: toml::Table) -> Result<Rule, String> {
    if let Some(k) = t.keys().find(|k| !RULE_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{k}`, expected one of {}",
            RULE_FIELDS.join(", ")
        ));
    }
    let name = field_str(&t, "name")?.ok_or("missing field `name`")?;
    let name_ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(format!(
            "field `name`: {name:?} must be 1 to {MAX_NAME_LEN} of a-z 0-9 _ -"
        ));
    }
    let when = field_condition(&t, "when")?.ok_or("missing field `when`")?;
    let clear = field_condition(&t, "clear")?;
    let hold = field_duration(&t, "for")?.unwrap_or(Duration::ZERO);
    let clear_hold = field_duration(&t, "clear_for")?.unwrap_or(hold);
    let cooldown = field_duration(&t, "cooldown")?.unwrap_or(DEFAULT_COOLDOWN);
    let then = parse_actions(&t, "then")?;
    let revert = parse_actions(&t, "revert")?;
    Ok(Rule {
        name: name.to_string(),
        when,
        clear,
        hold,
        clear_hold,
        cooldown,
        then,
        revert,
    })
}

fn parse_actions(t: &toml::Table, field: &str) -> Result<Vec<Action>, String> {
    let list = match t.get(field) {
        None => return Ok(Vec::new()),
        Some(toml::Value::Array(a)) => a,
        Some(v) => {
            return Err(format!(
                "field `{field}`: expected an array of tables, found {}",
                v.type_str()
            ));
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            parse_action(v).map_err(|e| format!("field `{field}`: action {}: {e}", i + 1))
        })
        .collect()
}

fn parse_action(v: &toml::Value) -> Result<Action, String> {
    let toml::Value::Table(t) = v else {
        return Err(format!("expected a table, found {}", v.type_str()));
    };
    let (key, body) = match t.iter().next() {
        Some(kv) if t.len() == 1 => kv,
        _ => {
            let keys: Vec<&str> = t.keys().map(String::as_str).collect();
            return Err(format!(
                "needs exactly one of set, patch, capture, log (found {})",
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                }
            ));
        }
    };
    let sub = |e: toml::de::Error| format!("`{key}`: {}", e.message().trim_end());
    let nonempty = |what: &str, s: &str| {
        if s.is_empty() {
            Err(format!("`{key}`: `{what}` is empty"))
        } else {
            Ok(())
        }
    };
    match key.as_str() {
        "set" => {
            let s: SetSpec = body.clone().try_into().map_err(sub)?;
            nonempty("device", &s.device)?;
            let function =
                toml::to_string(&s.function).map_err(|e| format!("`set`: `function`: {e}"))?;
            Ok(Action::SetFunction {
                device: s.device,
                function,
            })
        }
        "patch" => {
            let p: PatchSpec = body.clone().try_into().map_err(sub)?;
            nonempty("device", &p.device)?;
            if p.path.split('.').any(str::is_empty) {
                return Err(format!("`patch`: `path` {:?} has an empty segment", p.path));
            }
            let value = match (p.op, p.value) {
                (PatchOp::Remove, Some(_)) => {
                    return Err("`patch`: op `remove` takes no `value`".to_string());
                }
                (PatchOp::Remove, None) => None,
                (op, None) => return Err(format!("`patch`: op `{op}` needs a `value`")),
                (_, v) => v,
            };
            Ok(Action::Patch {
                device: p.device,
                path: p.path,
                op: p.op,
                value,
            })
        }
        "capture" => {
            let c: Capture = body.clone().try_into().map_err(sub)?;
            nonempty("device", &c.device)?;
            nonempty("file", &c.file)?;
            if !(1..=3600).contains(&c.seconds) {
                return Err(format!(
                    "`capture`: `seconds` {} must be between 1 and 3600",
                    c.seconds
                ));
            }
            Ok(Action::Capture(c))
        }
        "log" => match body {
            toml::Value::String(s) => Ok(Action::Log(s.clone())),
            v => Err(format!("`log`: expected a string, found {}", v.type_str())),
        },
        k => Err(format!(
            "unknown action `{k}`, expected one of set, patch, capture, log"
        )),
    }
}
