//! Topology files: a name, a run mode (threads or processes) and the
//! devices, each inline or in its own file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, DeviceConfig, DeviceSettings, explain_parse_error, parse_toml, read};
use crate::functions::matching::quoted;

/// How a topology's devices run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// All devices are threads of one process (process-local segments).
    #[default]
    Thread,
    /// Each device is its own process (named host segments).
    Process,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    mode: RunMode,
    #[serde(default, rename = "device")]
    devices: Vec<toml::Value>,
}

/// A topology after validation.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The topology's name (for messages).
    pub name: String,
    /// Whether devices run as threads or processes (`mode`, default
    /// threads).
    pub mode: RunMode,
    /// Every device, validated, in file order.
    pub devices: Vec<DeviceSettings>,
    /// Where each device came from (its own file, or the topology file).
    pub device_files: Vec<Option<PathBuf>>,
}

impl Topology {
    /// Reads a topology file and every device file it names.
    pub fn load(path: &Path) -> Result<Topology, ConfigError> {
        let (text, file) = read(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, &file, base)
    }

    /// Parses a topology; device files are resolved against `base`.
    pub fn from_toml(text: &str, file: &str, base: &Path) -> Result<Topology, ConfigError> {
        let t: TopologyFile = parse_toml(text, file)?;
        if t.devices.is_empty() {
            return Err(ConfigError::Invalid {
                file: file.into(),
                field: "device".into(),
                why: "no [[device]] entries".into(),
            });
        }
        let mut devices = Vec::new();
        let mut files = Vec::new();
        for (i, v) in t.devices.iter().enumerate() {
            let table = v.as_table();
            let only_file = table.is_some_and(|t| t.len() == 1 && t.contains_key("file"));
            if only_file {
                let Some(rel) = table.and_then(|t| t.get("file")).and_then(|f| f.as_str()) else {
                    return Err(ConfigError::Invalid {
                        file: file.into(),
                        field: format!("device[{i}].file"),
                        why: "must be a path string".into(),
                    });
                };
                let p = base.join(rel);
                let device = DeviceConfig::load(&p).map_err(|e| ConfigError::DeviceFile {
                    topology: file.into(),
                    field: format!("device[{i}].file"),
                    source: Box::new(e),
                })?;
                devices.push(device);
                files.push(Some(p));
            } else {
                let where_ = format!("{file} (device[{i}])");
                let cfg: DeviceConfig =
                    v.clone()
                        .try_into()
                        .map_err(|e: toml::de::Error| ConfigError::Parse {
                            file: where_.clone(),
                            message: explain_parse_error(&e, None),
                        })?;
                devices.push(cfg.validate(&where_)?);
                files.push(None);
            }
        }
        let mut names = std::collections::HashSet::new();
        for d in &devices {
            if !names.insert(d.name.clone()) {
                return Err(ConfigError::Invalid {
                    file: file.into(),
                    field: "device.name".into(),
                    why: format!("two devices are named {}", quoted(&d.name)),
                });
            }
        }
        Ok(Topology {
            name: t.name.unwrap_or_else(|| "topology".into()),
            mode: t.mode,
            devices,
            device_files: files,
        })
    }
}
