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

pub use device::{DeviceConfig, DeviceSettings, NetworkConfig, RouteConfig};
pub use topology::{RunMode, Topology};
// The validated network and route types live with the stack that uses them.
pub use crate::stack::spec::{NetworkSpec as NetworkSettings, StaticRoute};

use crate::functions;

/// Errors reading configuration. Each names the file and the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, a missing or unknown field, or a value of the wrong
    /// type; the message has the line and the field.
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    /// A field has a value that makes no sense.
    #[error("{file}: field `{field}`: {why}")]
    Invalid {
        file: String,
        field: String,
        why: String,
    },
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
        message: explain_parse_error(&e.to_string()),
    })
}

/// Makes serde's unknown-variant message for `kind` list the functions.
fn explain_parse_error(msg: &str) -> String {
    let msg = msg.trim_end().to_string();
    if msg.contains("unknown variant") {
        format!(
            "{msg}\n(unknown function; known kinds: {})",
            functions::KINDS.join(", ")
        )
    } else {
        msg
    }
}
