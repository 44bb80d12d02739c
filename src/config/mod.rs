//! Configuration files: one TOML file per device, one per topology.
//!
//! ```toml
//! # device.toml
//! name = "client"
//! [function]
//! kind = "passthrough"          # or echo, probe, … with their parameters
//! [local]                       # the host's shared-memory network
//! segment = "lan0"
//! address = "10.0.0.1/24"
//! address6 = "fd00::1/64"       # optional
//! mtu = 1500                    # IP MTU, 576..=65535
//! [global]                      # the network that also reaches remote hosts
//! segment = "wan0"
//! address = "10.100.0.1/16"
//! gateway = "10.100.0.254"      # optional default route
//! mtu = 9000
//! ```
//!
//! ```toml
//! # topology.toml: devices by file (relative to this file) or inline
//! [[device]]
//! file = "client.toml"
//! [[device]]
//! name = "server"
//! local = { segment = "lan0", address = "10.0.0.2/24" }
//! global = { segment = "wan0", address = "10.100.0.2/16" }
//! function = { kind = "echo", port = 7 }
//! ```
//! Every error names the file, the field and what is wrong.

mod device;
mod topology;

pub use device::{DeviceConfig, DeviceSettings, ManagementConfig, NetworkConfig, RouteConfig};
pub use topology::{RunMode, TapConfig, TapSpec, Topology, VxlanConfig, VxlanSpec};
// Which function keys are paths is the functions' knowledge.
pub use crate::functions::absolute_function_paths;
// The validated network and route types live with the stack that uses them.
pub use crate::stack::spec::{NetworkSpec as NetworkSettings, StaticRoute};

use crate::functions;
use crate::functions::matching::QUOTE_MAX;

/// Errors reading configuration. Each names the file and the field, and
/// quotes at most [`QUOTE_MAX`] characters of a bad value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read")]
    Read {
        /// The path, as given.
        file: String,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, a missing or unknown field, or a value of the wrong
    /// type; the message has the line and the field.
    #[error("{file}: {message}")]
    Parse {
        /// The file (or `[function]` for [`FunctionConfig::from_toml`]).
        ///
        /// [`FunctionConfig::from_toml`]: crate::functions::FunctionConfig::from_toml
        file: String,
        /// Where and what: line, column, the line itself, the problem.
        message: String,
    },
    /// A field has a value that makes no sense.
    #[error("{file}: field `{field}`: {why}")]
    Invalid {
        /// The file.
        file: String,
        /// The field, as a path (`global.mtu`, `function.rule[2].dport`).
        field: String,
        /// What is wrong and what would be right.
        why: String,
    },
    /// A device file the topology `topology` names (in `field`) is missing
    /// or invalid; `source` says why. Fix that file, or the topology's
    /// `file` entry if it names the wrong one.
    #[error("{topology}: field `{field}`")]
    DeviceFile {
        /// The topology file.
        topology: String,
        /// Its entry naming the device file (`device[1].file`).
        field: String,
        /// What is wrong with the device file.
        #[source]
        source: Box<ConfigError>,
    },
}

impl functions::FunctionConfig {
    /// Reads a function's configuration from the text of its `[function]`
    /// section (`kind = "..."` and the kind's parameters) and checks it by
    /// building the function once; errors name the line and the field, as
    /// for files.
    ///
    /// ```
    /// use shmnet::functions::FunctionConfig;
    /// let cfg = FunctionConfig::from_toml(r#"
    ///     kind = "firewall"
    ///     default = "drop"
    ///     [[rule]]
    ///     action = "accept"
    ///     proto = "tcp"
    ///     dport = 80
    /// "#).unwrap();
    /// assert_eq!(cfg.kind(), "firewall");
    /// let e = FunctionConfig::from_toml(r#"kind = "teleport""#).unwrap_err();
    /// assert!(e.to_string().contains("known kinds"), "{e}");
    /// ```
    pub fn from_toml(text: &str) -> Result<functions::FunctionConfig, ConfigError> {
        const FILE: &str = "[function]";
        let cfg: functions::FunctionConfig = parse_toml(text, FILE)?;
        // What only building tells: values out of range, rules that
        // cannot compile.
        functions::build(&cfg).map_err(|e| ConfigError::Invalid {
            file: FILE.into(),
            field: "function".into(),
            why: e.to_string(),
        })?;
        Ok(cfg)
    }
}

/// A maker of [`ConfigError::Invalid`] for the fields of one table of
/// `file`: `field` under `table` (`"local"`, `"tap[0]"`; empty for the top
/// level).
fn field_error<'a>(file: &'a str, table: String) -> impl Fn(&str, String) -> ConfigError + 'a {
    move |field: &str, why: String| ConfigError::Invalid {
        file: file.into(),
        field: if table.is_empty() {
            field.into()
        } else {
            format!("{table}.{field}")
        },
        why,
    }
}

/// The text of the file at `path`, and its name for messages.
fn read(path: &std::path::Path) -> Result<(String, String), ConfigError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, file)),
        Err(source) => Err(ConfigError::Read { file, source }),
    }
}

fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        file: file.into(),
        message: explain_parse_error(&e, Some(text)),
    })
}

/// Characters of the offending line a parse error shows at most.
const LINE_SHOWN: usize = 80;

/// A TOML parser or serde error as a short message: where it is (line,
/// column and at most [`LINE_SHOWN`] characters of the line, when `text`
/// is the document the error came from), what is wrong with every quoted
/// value cut to [`QUOTE_MAX`] characters.
fn explain_parse_error(e: &toml::de::Error, text: Option<&str>) -> String {
    let mut msg = String::new();
    if let (Some(text), Some(span)) = (text, e.span())
        && span.start <= text.len()
        && text.is_char_boundary(span.start)
    {
        msg.push_str(&snippet(text, span));
    }
    msg.push_str(&shorten_quoted(e.message().trim_end()));
    msg
}

/// "TOML parse error at line L, column C" and the line with the span
/// underlined, as the toml crate shows it, but at most [`LINE_SHOWN`]
/// characters of the line, around the span.
fn snippet(text: &str, span: std::ops::Range<usize>) -> String {
    let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[span.start..]
        .find('\n')
        .map_or(text.len(), |i| span.start + i);
    let line = text[line_start..line_end].trim_end_matches('\r');
    let number = text[..line_start].matches('\n').count() + 1;
    let column = text[line_start..span.start].chars().count();
    // Start the window a little before the span if the line is too long.
    let first = if line.chars().nth(LINE_SHOWN).is_some() {
        column.saturating_sub(LINE_SHOWN / 4)
    } else {
        0
    };
    let shown: String = line.chars().skip(first).take(LINE_SHOWN).collect();
    let cut_left = if first > 0 { "…" } else { "" };
    let cut_right = if line.chars().nth(first + LINE_SHOWN).is_some() {
        "…"
    } else {
        ""
    };
    let underlined = text
        .get(span.start..span.end.min(line_start + line.len()))
        .map_or(1, |s| s.chars().count())
        .clamp(1, (first + LINE_SHOWN).saturating_sub(column).max(1));
    let gutter = " ".repeat(number.to_string().len());
    format!(
        "TOML parse error at line {number}, column {}\n{gutter} |\n{number} | {cut_left}{shown}{cut_right}\n{gutter} | {}{}\n",
        column + 1,
        " ".repeat(cut_left.chars().count() + column - first),
        "^".repeat(underlined)
    )
}

/// `msg` with every value quoted in it (between backticks or double
/// quotes) longer than [`QUOTE_MAX`] characters cut with an ellipsis and
/// followed by its length: for messages of other crates that quote a
/// whole value.
fn shorten_quoted(msg: &str) -> String {
    let mut out = String::new();
    let mut rest = msg;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest.as_bytes()[open] as char;
        out.push_str(&rest[..=open]);
        let body = &rest[open + 1..];
        // The closing quote; a `\"` inside "..." is not one.
        let mut escaped = false;
        let close = body.char_indices().find_map(|(i, c)| {
            let end = c == quote && !escaped;
            escaped = quote == '"' && c == '\\' && !escaped;
            end.then_some(i)
        });
        let (inside, after) = match close {
            Some(i) => (&body[..i], &body[i + 1..]),
            None => (body, ""),
        };
        match inside.char_indices().nth(QUOTE_MAX) {
            None => out.push_str(inside),
            Some((cut, _)) => out.push_str(&inside[..cut]),
        }
        let long = inside.chars().nth(QUOTE_MAX).is_some();
        if long {
            out.push('…');
        }
        if close.is_some() {
            out.push(quote);
        }
        if long {
            out.push_str(&format!(" ({} bytes)", inside.len()));
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_quoted_values_are_cut_and_their_length_given() {
        let long = "x".repeat(1000);
        let msg = shorten_quoted(&format!("unknown variant `{long}`, expected `a` or \"b\""));
        assert_eq!(
            msg,
            format!(
                "unknown variant `{}…` (1000 bytes), expected `a` or \"b\"",
                "x".repeat(QUOTE_MAX)
            )
        );
        let msg = shorten_quoted(&format!("string \"a\\\"{long}\" and `"));
        assert!(msg.starts_with("string \"a\\\"x"), "{msg}");
        assert!(msg.ends_with("…\" (1003 bytes) and `"), "{msg}");
        assert_eq!(shorten_quoted("no quotes"), "no quotes");
    }

    #[test]
    fn a_parse_error_shows_a_window_of_a_long_line() {
        let text = format!(
            "name = \"a\"\nlocal = {{ segment = \"l\", address = \"10.0.0.1/24\", medium = \"{}\" }}\n",
            "y".repeat(10_000)
        );
        let e = toml::from_str::<DeviceConfig>(&text).unwrap_err();
        let shown = explain_parse_error(&e, Some(&text));
        assert!(shown.len() < 600, "{} bytes: {shown}", shown.len());
        assert!(
            shown.starts_with("TOML parse error at line 2, column 60\n"),
            "{shown}"
        );
        assert!(shown.contains("\n2 | …"), "{shown}");
        assert!(shown.contains("(10000 bytes)"), "{shown}");
        assert!(!shown.contains("unknown function"), "{shown}");
    }
}
