//! Where a device's agent listens and which secret signs its messages:
//! `[management]` of the topology over the device file's, over the
//! environment a topology run gives its device processes, over defaults.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::ManagementConfig;
use crate::wire::mgmt::Key;

pub use crate::wire::mgmt_payload::DEFAULT_AGENT_PORT;

/// Environment a topology run sets for its device processes.
pub const ENV_SECRET_FILE: &str = "SHMNET_SECRET_FILE";
/// See [`ENV_SECRET_FILE`].
pub const ENV_AGENT_PORT: &str = "SHMNET_AGENT_PORT";
/// See [`ENV_SECRET_FILE`]: `off` runs no agent.
pub const ENV_MANAGEMENT: &str = "SHMNET_MANAGEMENT";

/// A device's (or a topology's) management settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Management {
    /// Run the agent.
    pub enabled: bool,
    /// The agent's TCP port.
    pub agent_port: u16,
    /// The secret's file.
    pub secret_file: PathBuf,
}

/// The folder of default secret files: `$XDG_RUNTIME_DIR/shmnet`, else
/// `/tmp/shmnet-UID` (private to the user).
pub fn default_secret_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => Path::new(&d).join("shmnet"),
        _ => std::env::temp_dir().join(format!("shmnet-{}", rustix::process::getuid().as_raw())),
    }
}

impl Management {
    /// Settings from `cfg`, defaults filled in (the secret named after
    /// `owner`, the topology or the device).
    pub fn resolve(cfg: &ManagementConfig, owner: &str) -> Management {
        Management {
            enabled: cfg.enabled.unwrap_or(true),
            agent_port: cfg.agent_port.unwrap_or(DEFAULT_AGENT_PORT),
            secret_file: cfg
                .secret_file
                .clone()
                .unwrap_or_else(|| default_secret_dir().join(format!("{owner}.secret"))),
        }
    }

    /// `cfg` with what the environment of a topology run says in its place.
    pub fn from_env(cfg: &ManagementConfig) -> ManagementConfig {
        let env = ManagementConfig {
            enabled: std::env::var(ENV_MANAGEMENT).ok().map(|v| v != "off"),
            agent_port: std::env::var(ENV_AGENT_PORT).ok().and_then(|p| p.parse().ok()),
            secret_file: std::env::var_os(ENV_SECRET_FILE).map(PathBuf::from),
        };
        cfg.overridden_by(&env)
    }

    /// The environment that hands these settings to a device process.
    pub fn env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        vec![
            (ENV_MANAGEMENT, if self.enabled { "on" } else { "off" }.into()),
            (ENV_AGENT_PORT, self.agent_port.to_string().into()),
            (ENV_SECRET_FILE, self.secret_file.clone().into_os_string()),
        ]
    }

    /// The secret: read from its file, or made and written there (mode
    /// 0600, in a folder only the user can enter) when the file is missing.
    pub fn key(&self) -> Result<Arc<Key>, String> {
        let path = &self.secret_file;
        if path.exists() {
            return Key::from_file(path).map(Arc::new).map_err(|e| e.to_string());
        }
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        match Key::create_file(path) {
            Ok(k) => {
                log::info!("management secret created in {}", path.display());
                Ok(Arc::new(k))
            }
            // Another device of the run made it first.
            Err(_) if path.exists() => Key::from_file(path).map(Arc::new).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}
