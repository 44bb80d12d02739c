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

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use smoltcp::wire::{IpAddress, IpCidr, Ipv4Cidr, Ipv6Cidr};

use crate::functions::{self, FunctionConfig};
use crate::shm::LinkMedium;

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

/// One network a device is attached to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Name of the shared-memory segment (devices with the same name share
    /// the network).
    pub segment: String,
    /// IPv4 address and prefix, e.g. "10.0.0.1/24".
    pub address: String,
    /// Optional IPv6 address and prefix.
    #[serde(default)]
    pub address6: Option<String>,
    /// IP MTU in bytes, 576..=65535.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// "ethernet" (default) or "ip".
    #[serde(default)]
    pub medium: MediumName,
    /// Default gateway on this network (global network only).
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub gateway6: Option<String>,
    /// Write every frame this adapter carries to a pcap file.
    #[serde(default)]
    pub pcap: Option<PathBuf>,
    /// Frames taken from this adapter per poll round.
    #[serde(default)]
    pub max_burst: Option<usize>,
    /// Compute and verify checksums (off: the shared-memory link is lossless).
    #[serde(default)]
    pub checksums: bool,
    /// Parse received frames in the sender's buffer instead of copying them
    /// out first. Default: yes when devices are threads of one process, no
    /// across processes (a peer process is not trusted unless you say so).
    #[serde(default)]
    pub trust_peers: Option<bool>,
    /// Segment capacity, used when this device creates the segment.
    #[serde(default = "default_max_ports")]
    pub max_ports: u32,
    /// Transmit buffers per port (0: chosen from the MTU).
    #[serde(default)]
    pub buffers: u32,
}

fn default_mtu() -> u32 {
    1500
}
fn default_max_ports() -> u32 {
    32
}

/// Link medium as written in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediumName {
    #[default]
    Ethernet,
    Ip,
}

impl From<MediumName> for LinkMedium {
    fn from(m: MediumName) -> LinkMedium {
        match m {
            MediumName::Ethernet => LinkMedium::Ethernet,
            MediumName::Ip => LinkMedium::Ip,
        }
    }
}

/// A device: its name, its function and its two networks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub name: String,
    #[serde(default)]
    pub function: FunctionConfig,
    pub local: NetworkConfig,
    pub global: NetworkConfig,
    /// Hardware address, "02:53:xx:xx:xx:xx"; default derived from the name.
    #[serde(default)]
    pub mac: Option<String>,
    /// Forward packets not addressed to this device between (and within)
    /// its networks, as a router does: the device sits in a chain.
    #[serde(default)]
    pub forward: bool,
    /// Static routes, used by the device's own stack and when forwarding.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
}

/// `[[route]] to = "10.1.0.0/24", via = "10.0.0.254"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Destination prefix.
    pub to: String,
    /// Next hop: an address inside the local or the global subnet.
    pub via: String,
}

/// A validated static route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticRoute {
    pub to: IpCidr,
    pub via: IpAddress,
}

/// A network's settings after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSettings {
    pub segment: String,
    pub v4: Ipv4Cidr,
    pub v6: Option<Ipv6Cidr>,
    pub mtu: u32,
    pub medium: LinkMedium,
    pub gateway: Option<IpAddress>,
    pub gateway6: Option<IpAddress>,
    pub pcap: Option<PathBuf>,
    pub max_burst: Option<usize>,
    pub checksums: bool,
    pub trust_peers: Option<bool>,
    pub max_ports: u32,
    pub buffers: u32,
}

/// A device's settings after validation: what [`crate::stack::Device`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSettings {
    pub name: String,
    pub function: FunctionConfig,
    pub local: NetworkSettings,
    pub global: NetworkSettings,
    pub mac: [u8; 6],
    pub forward: bool,
    pub routes: Vec<StaticRoute>,
    /// The file it came from, for messages.
    pub source: String,
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

impl DeviceConfig {
    /// Reads and validates a device file.
    pub fn load(path: &Path) -> Result<DeviceSettings, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_toml(&text, &file)
    }

    /// Parses and validates device TOML; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<DeviceSettings, ConfigError> {
        let cfg: DeviceConfig = parse_toml(text, file)?;
        cfg.validate(file)
    }

    /// Checks every field and resolves defaults.
    pub fn validate(&self, file: &str) -> Result<DeviceSettings, ConfigError> {
        let invalid = |field: &str, why: String| ConfigError::Invalid {
            file: file.into(),
            field: field.into(),
            why,
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "name",
                "use letters, digits, '-', '_' or '.'".into(),
            ));
        }
        let local = self.local.validate(file, "local")?;
        let global = self.global.validate(file, "global")?;
        if local.segment == global.segment {
            return Err(invalid(
                "global.segment",
                format!(
                    "{:?} is also the local segment; the two networks must differ",
                    global.segment
                ),
            ));
        }
        if local.medium != global.medium {
            return Err(invalid(
                "global.medium",
                "both networks of a device must use the same medium".into(),
            ));
        }
        if cidrs_overlap(&IpCidr::Ipv4(local.v4), &IpCidr::Ipv4(global.v4)) {
            return Err(invalid(
                "global.address",
                format!(
                    "subnet {} overlaps the local subnet {}",
                    global.v4, local.v4
                ),
            ));
        }
        if let (Some(a), Some(b)) = (local.v6, global.v6)
            && cidrs_overlap(&IpCidr::Ipv6(a), &IpCidr::Ipv6(b))
        {
            return Err(invalid(
                "global.address6",
                format!("subnet {b} overlaps the local subnet {a}"),
            ));
        }
        functions::build(&self.function).map_err(|e| invalid("function", e.to_string()))?;
        let mac = match &self.mac {
            None => crate::shm::mac_from_name(&self.name),
            Some(s) => parse_mac(s).ok_or_else(|| {
                invalid(
                    "mac",
                    format!("{s:?} is not a unicast MAC like 02:53:00:00:00:01"),
                )
            })?,
        };
        let mut routes = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let field = |f: &str| format!("route[{i}].{f}");
            let to: IpCidr = r.to.parse().map_err(|_| {
                invalid(
                    &field("to"),
                    format!("{:?} is not a prefix like 10.1.0.0/24", r.to),
                )
            })?;
            let via: IpAddress =
                r.via.parse::<IpAddr>().map(IpAddress::from).map_err(|_| {
                    invalid(&field("via"), format!("{:?} is not an IP address", r.via))
                })?;
            let on_a_network = [Some(IpCidr::Ipv4(local.v4)), Some(IpCidr::Ipv4(global.v4))]
                .into_iter()
                .chain([local.v6.map(IpCidr::Ipv6), global.v6.map(IpCidr::Ipv6)])
                .flatten()
                .any(|c| c.contains_addr(&via));
            if !on_a_network {
                return Err(invalid(
                    &field("via"),
                    format!("{via} is on neither the local nor the global subnet"),
                ));
            }
            if to.address().version() != via.version() {
                return Err(invalid(
                    &field("via"),
                    format!("{via} and {to} are of different IP versions"),
                ));
            }
            routes.push(StaticRoute { to, via });
        }
        Ok(DeviceSettings {
            name: self.name.clone(),
            function: self.function.clone(),
            local,
            global,
            mac,
            forward: self.forward,
            routes,
            source: file.into(),
        })
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let mac: [u8; 6] = parts.try_into().ok()?;
    (mac[0] & 1 == 0 && mac != [0; 6]).then_some(mac)
}

fn cidrs_overlap(a: &IpCidr, b: &IpCidr) -> bool {
    a.contains_subnet(b) || b.contains_subnet(a)
}

impl NetworkConfig {
    fn validate(&self, file: &str, net: &str) -> Result<NetworkSettings, ConfigError> {
        let invalid = |field: &str, why: String| ConfigError::Invalid {
            file: file.into(),
            field: format!("{net}.{field}"),
            why,
        };
        if self.segment.is_empty()
            || !self
                .segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "segment",
                "use letters, digits, '-', '_' or '.'".into(),
            ));
        }
        if !(crate::shm::layout::MTU_MIN..=crate::shm::layout::MTU_MAX).contains(&self.mtu) {
            return Err(invalid(
                "mtu",
                format!(
                    "{} is out of range: an IP MTU is 576..=65535 bytes",
                    self.mtu
                ),
            ));
        }
        let v4 = match self.address.parse::<IpCidr>() {
            Ok(IpCidr::Ipv4(c))
                if !(c.address().is_multicast()
                    || c.address().is_broadcast()
                    || c.address().is_unspecified()) =>
            {
                c
            }
            _ => {
                return Err(invalid(
                    "address",
                    format!(
                        "{:?} is not an IPv4 unicast address with prefix, like 10.0.0.1/24",
                        self.address
                    ),
                ));
            }
        };
        let v6 = match &self.address6 {
            None => None,
            Some(s) => match s.parse::<IpCidr>() {
                Ok(IpCidr::Ipv6(c))
                    if !(c.address().is_multicast() || c.address().is_unspecified()) =>
                {
                    if self.mtu < 1280 {
                        return Err(invalid(
                            "mtu",
                            format!("{} is below IPv6's minimum of 1280", self.mtu),
                        ));
                    }
                    Some(c)
                }
                _ => {
                    return Err(invalid(
                        "address6",
                        format!(
                            "{s:?} is not an IPv6 unicast address with prefix, like fd00::1/64"
                        ),
                    ));
                }
            },
        };
        let gw = |field: &str,
                  s: &Option<String>,
                  want_v4: bool|
         -> Result<Option<IpAddress>, ConfigError> {
            match s {
                None => Ok(None),
                Some(s) => match s.parse::<IpAddr>() {
                    Ok(IpAddr::V4(a)) if want_v4 => Ok(Some(IpAddress::Ipv4(a))),
                    Ok(IpAddr::V6(a)) if !want_v4 => Ok(Some(IpAddress::Ipv6(a))),
                    _ => Err(invalid(
                        field,
                        format!("{s:?} is not an IPv{} address", if want_v4 { 4 } else { 6 }),
                    )),
                },
            }
        };
        let gateway = gw("gateway", &self.gateway, true)?;
        if let Some(IpAddress::Ipv4(g)) = gateway
            && !v4.contains_addr(&g)
        {
            return Err(invalid("gateway", format!("{g} is not inside {v4}")));
        }
        let gateway6 = gw("gateway6", &self.gateway6, false)?;
        if !(2..=crate::shm::layout::MAX_PORTS_LIMIT).contains(&self.max_ports) {
            return Err(invalid("max_ports", "must be 2..=1024".into()));
        }
        if self.buffers != 0 && !(16..=65536).contains(&self.buffers) {
            return Err(invalid(
                "buffers",
                "must be 0 (automatic) or 16..=65536".into(),
            ));
        }
        if self.max_burst == Some(0) {
            return Err(invalid(
                "max_burst",
                "must be at least 1 (or left out)".into(),
            ));
        }
        Ok(NetworkSettings {
            segment: self.segment.clone(),
            v4,
            v6,
            mtu: self.mtu,
            medium: self.medium.into(),
            gateway,
            gateway6,
            pcap: self.pcap.clone(),
            max_burst: self.max_burst,
            checksums: self.checksums,
            trust_peers: self.trust_peers,
            max_ports: self.max_ports,
            buffers: self.buffers,
        })
    }
}

impl NetworkSettings {
    /// The segment parameters this network asks for.
    pub fn params(&self) -> crate::shm::NetworkParams {
        let mut p = crate::shm::NetworkParams::new(self.mtu);
        p.medium = self.medium;
        p.max_ports = self.max_ports;
        p.max_links = self.max_ports * (self.max_ports - 1);
        p.buffers = self.buffers;
        p
    }
}

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
    pub name: String,
    pub mode: RunMode,
    pub devices: Vec<DeviceSettings>,
    /// Where each device came from (its own file, or the topology file).
    pub device_files: Vec<Option<PathBuf>>,
}

impl Topology {
    /// Reads a topology file and every device file it names.
    pub fn load(path: &Path) -> Result<Topology, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
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
                devices.push(DeviceConfig::load(&p)?);
                files.push(Some(p));
            } else {
                let where_ = format!("{file} (device[{i}])");
                let cfg: DeviceConfig =
                    v.clone()
                        .try_into()
                        .map_err(|e: toml::de::Error| ConfigError::Parse {
                            file: where_.clone(),
                            message: explain_parse_error(&e.to_string()),
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
                    why: format!("two devices are named {:?}", d.name),
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "a"
[local]
segment = "l"
address = "10.0.0.1/24"
[global]
segment = "g"
address = "10.1.0.1/16"
mtu = 9000
"#;

    #[test]
    fn good_file_parses_with_defaults() {
        let d = DeviceConfig::from_toml(GOOD, "a.toml").unwrap();
        assert_eq!(d.local.mtu, 1500);
        assert_eq!(d.global.mtu, 9000);
        assert_eq!(d.function, FunctionConfig::Passthrough);
    }

    fn err(text: &str) -> String {
        DeviceConfig::from_toml(text, "dev.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_file_field_and_problem() {
        let e = err(&GOOD.replace("segment = \"l\"\n", ""));
        assert!(
            e.contains("dev.toml") && e.contains("missing field `segment`"),
            "{e}"
        );
        let e = err(&GOOD.replace("mtu = 9000", "mtu = 70000"));
        assert!(e.contains("global.mtu") && e.contains("576..=65535"), "{e}");
        let e = err(&GOOD.replace("10.1.0.1/16", "10.0.0.7/16"));
        assert!(
            e.contains("global.address") && e.contains("overlaps"),
            "{e}"
        );
        let e = err(&format!("{GOOD}\n[function]\nkind = \"teleport\"\n"));
        assert!(e.contains("teleport") && e.contains("known kinds"), "{e}");
        let e = err(&GOOD.replace("10.0.0.1/24", "banana"));
        assert!(e.contains("local.address"), "{e}");
        let e = err(&format!("{GOOD}\nspeed = 3\n"));
        assert!(e.contains("unknown field"), "{e}");
    }
}
