//! Topology files: a name, a run mode (threads or processes), the devices
//! (each inline or in its own file) and the TAP ports that bridge Linux to
//! their networks.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use smoltcp::wire::Ipv4Cidr;

use super::{
    ConfigError, DeviceConfig, DeviceSettings, explain_parse_error, field_error, parse_toml, read,
};
use crate::functions::matching::quoted;
use crate::functions::{absolute_function_paths, absolute_in};
use crate::stack::spec::NetworkSpec;
use crate::wire::LinkMedium;

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
    #[serde(default, rename = "tap")]
    taps: Vec<TapConfig>,
    #[serde(default, rename = "vxlan")]
    vxlans: Vec<VxlanConfig>,
    #[serde(default)]
    management: super::ManagementConfig,
}

/// `[[vxlan]]`: a VXLAN gateway (RFC 7348) that carries one of the
/// topology's networks to remote hosts over UDP.
///
/// ```toml
/// [[vxlan]]
/// segment = "vx-wan"          # the network it carries
/// local = "10.78.0.2"         # this host's underlay address (port 4789)
/// vni = 4242
/// remotes = ["10.78.0.1"]     # remote VTEPs (port 4789 unless given)
/// underlay_mtu = 1500         # default 1500
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VxlanConfig {
    /// The segment it carries: one that a device of the topology is on.
    pub segment: String,
    /// The local UDP address to bind: an address of this host, with an
    /// optional `:port` (default 4789).
    pub local: String,
    /// The VXLAN network identifier, 0..=16777215.
    pub vni: u32,
    /// The remote VTEPs: addresses with an optional `:port` (default 4789).
    pub remotes: Vec<String>,
    /// The MTU of the underlay path (default 1500): the network's MTU plus
    /// 50 bytes of encapsulation must fit in it.
    #[serde(default = "default_underlay_mtu")]
    pub underlay_mtu: u32,
    /// Faults to inject into what the gateway sends (for tests): `{ loss
    /// = 0.01, reorder = 0.01, duplicate = 0.01, seed = 1 }`.
    #[serde(default)]
    pub faults: crate::adapters::vxlan::Faults,
}

fn default_underlay_mtu() -> u32 {
    1500
}

/// A VXLAN gateway, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct VxlanSpec {
    /// The endpoint's settings (the inner MTU is the network's).
    pub settings: crate::adapters::vxlan::VxlanSettings,
    /// The network it carries, as the first device on it configures it.
    pub network: NetworkSpec,
}

/// `[[tap]]`: a Linux TAP interface bridged to one of the topology's
/// networks, so that Linux programs reach its devices (and they reach
/// Linux) with ordinary sockets.
///
/// ```toml
/// [[tap]]
/// name = "shmtap0"            # the Linux interface
/// segment = "tap-lan"         # a network of the topology's devices
/// address = "10.77.0.1/24"    # Linux's address on it
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapConfig {
    /// The interface name (at most 15 characters).
    pub name: String,
    /// The segment it joins: one that a device of the topology is on.
    pub segment: String,
    /// The host's IPv4 address and prefix on that network.
    pub address: String,
}

/// A TAP port, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TapSpec {
    /// The interface name.
    pub name: String,
    /// Linux's address on the network.
    pub address: Ipv4Cidr,
    /// The network, as the first device on it configures it: the TAP's
    /// MTU is the network's.
    pub network: NetworkSpec,
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
    /// TAP ports (`[[tap]]`).
    pub taps: Vec<TapSpec>,
    /// VXLAN gateways (`[[vxlan]]`).
    pub vxlans: Vec<VxlanSpec>,
    /// `[management]`, paths resolved; it overrides each device's own.
    pub management: super::ManagementConfig,
    /// The inline devices' tables as device files (paths made absolute),
    /// by index in `devices`: process mode writes them out for the device
    /// processes.
    pub inline: Vec<(usize, String)>,
}

/// A device table with the paths that are relative to its file made
/// absolute (the ones `DeviceConfig::relative_to` resolves: a test keeps
/// the two in step), so it reads the same from another folder.
fn absolute_paths(mut v: toml::Value, base: &Path) -> toml::Value {
    if let Some(t) = v.as_table_mut() {
        if let Some(toml::Value::String(p)) = t
            .get_mut("management")
            .and_then(|m| m.get_mut("secret_file"))
        {
            *p = absolute_in(base, p.as_ref()).display().to_string();
        }
        if let Some(function) = t.get_mut("function") {
            absolute_function_paths(function, base);
        }
    }
    v
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
        let mut inline = Vec::new();
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
                devices.push(cfg.relative_to(base).validate(&where_)?);
                files.push(None);
                inline.push((i, absolute_paths(v.clone(), base)));
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
        let mut taps = Vec::new();
        for (i, tap) in t.taps.iter().enumerate() {
            taps.push(validate_tap(tap, &devices, &taps, file, i)?);
        }
        let mut vxlans: Vec<VxlanSpec> = Vec::new();
        for (i, v) in t.vxlans.iter().enumerate() {
            let spec = validate_vxlan(v, &devices, file, i)?;
            if vxlans
                .iter()
                .any(|o| o.settings.local == spec.settings.local)
            {
                return Err(ConfigError::Invalid {
                    file: file.into(),
                    field: format!("vxlan[{i}].local"),
                    why: format!("two gateways bind {}", spec.settings.local),
                });
            }
            vxlans.push(spec);
        }
        Ok(Topology {
            name: t.name.unwrap_or_else(|| "topology".into()),
            mode: t.mode,
            devices,
            device_files: files,
            taps,
            vxlans,
            management: t.management.resolved(base),
            inline: inline
                .into_iter()
                .filter_map(|(i, v)| Some((i, toml::to_string(v.as_table()?).ok()?)))
                .collect(),
        })
    }
}

/// The network of the topology's devices named `segment` (the first
/// device's view of it), if it is an Ethernet network.
fn ethernet_network(
    devices: &[DeviceSettings],
    segment: &str,
    invalid: impl Fn(&str, String) -> ConfigError,
) -> Result<NetworkSpec, ConfigError> {
    let found = devices
        .iter()
        .flat_map(|d| [&d.local, &d.global])
        .find(|n| n.segment == segment);
    let Some(network) = found.cloned() else {
        return Err(invalid(
            "segment",
            format!(
                "no device of the topology is on segment {}",
                quoted(segment)
            ),
        ));
    };
    if network.medium != LinkMedium::Ethernet {
        return Err(invalid(
            "segment",
            "a bridged port needs an Ethernet network (medium = \"ethernet\")".into(),
        ));
    }
    Ok(network)
}

/// `ADDR` or `ADDR:PORT` (an IPv6 address with a port in brackets).
fn socket_addr(text: &str, default_port: u16) -> Option<std::net::SocketAddr> {
    text.parse().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(|a| (a, default_port).into())
    })
}

/// Checks a `[[vxlan]]`: its network must be one of the devices'
/// (Ethernet), its addresses well-formed, its VNI 24 bits, and the
/// network's MTU plus the encapsulation within the underlay's MTU.
fn validate_vxlan(
    v: &VxlanConfig,
    devices: &[DeviceSettings],
    file: &str,
    i: usize,
) -> Result<VxlanSpec, ConfigError> {
    use crate::wire::vxlan::{OVERHEAD_V4, VNI_MAX, VXLAN_PORT};
    let invalid = field_error(file, format!("vxlan[{i}]"));
    let network = ethernet_network(devices, &v.segment, &invalid)?;
    if v.vni > VNI_MAX {
        return Err(invalid(
            "vni",
            format!("{} is more than 24 bits (at most {VNI_MAX})", v.vni),
        ));
    }
    let local = socket_addr(&v.local, VXLAN_PORT).ok_or_else(|| {
        invalid(
            "local",
            format!("{} is not an address, or address:port", quoted(&v.local)),
        )
    })?;
    if v.remotes.is_empty() {
        return Err(invalid("remotes", "no remote VTEP listed".into()));
    }
    let mut remotes = Vec::new();
    for (j, r) in v.remotes.iter().enumerate() {
        let a = socket_addr(r, VXLAN_PORT).ok_or_else(|| {
            invalid(
                &format!("remotes[{j}]"),
                format!("{} is not an address, or address:port", quoted(r)),
            )
        })?;
        if a.is_ipv4() != local.is_ipv4() {
            return Err(invalid(
                &format!("remotes[{j}]"),
                "not of the local address's IP version".into(),
            ));
        }
        remotes.push(a);
    }
    let f = v.faults;
    for (name, p) in [
        ("loss", f.loss),
        ("reorder", f.reorder),
        ("duplicate", f.duplicate),
    ] {
        if !(0.0..=1.0).contains(&p) {
            return Err(invalid(
                &format!("faults.{name}"),
                format!("{p} is not a probability (0.0..=1.0)"),
            ));
        }
    }
    // An IPv6 underlay adds 20 bytes more.
    let overhead = OVERHEAD_V4 + if local.is_ipv6() { 20 } else { 0 };
    if network.mtu + overhead > v.underlay_mtu {
        return Err(invalid(
            "underlay_mtu",
            format!(
                "the network's MTU {} plus {overhead} bytes of VXLAN encapsulation is more than \
                 the underlay's {}: lower the devices' `mtu` on {} to at most {}, or raise \
                 `underlay_mtu` if the underlay carries more",
                network.mtu,
                v.underlay_mtu,
                quoted(&v.segment),
                v.underlay_mtu.saturating_sub(overhead)
            ),
        ));
    }
    Ok(VxlanSpec {
        settings: crate::adapters::vxlan::VxlanSettings {
            local,
            vni: v.vni,
            remotes,
            mtu: network.mtu,
            faults: v.faults,
        },
        network,
    })
}

/// The largest IP MTU Linux gives a TAP interface.
pub const TAP_MTU_MAX: u32 = 65521;

/// Checks a `[[tap]]` against the devices: its network must be one of
/// theirs (Ethernet), its address on that network's subnet and nobody
/// else's.
fn validate_tap(
    tap: &TapConfig,
    devices: &[DeviceSettings],
    earlier: &[TapSpec],
    file: &str,
    i: usize,
) -> Result<TapSpec, ConfigError> {
    let invalid = field_error(file, format!("tap[{i}]"));
    if !cfg!(feature = "tap") {
        return Err(invalid(
            "name",
            "this program was built without TAP support (shmnet's cargo feature `tap`)".into(),
        ));
    }
    #[cfg(feature = "tap")]
    if !crate::adapters::tap::valid_tap_name(&tap.name) {
        return Err(invalid(
            "name",
            format!(
                "{} is not an interface name: 1..={} letters, digits, `-`, `_` or `.`",
                quoted(&tap.name),
                crate::adapters::tap::TAP_NAME_MAX
            ),
        ));
    }
    if earlier.iter().any(|t| t.name == tap.name) {
        return Err(invalid(
            "name",
            format!("two TAP ports are named {}", quoted(&tap.name)),
        ));
    }
    let network = ethernet_network(devices, &tap.segment, &invalid)?;
    if network.mtu > TAP_MTU_MAX {
        return Err(invalid(
            "segment",
            format!(
                "the network's MTU is {}, more than a TAP interface carries ({TAP_MTU_MAX}, \
                 Linux's limit: 65535 less the Ethernet header); lower the devices' `mtu`",
                network.mtu
            ),
        ));
    }
    let address: Ipv4Cidr = tap.address.parse().map_err(|_| {
        invalid(
            "address",
            format!(
                "{} is not an IPv4 address with a prefix, like \"10.77.0.1/24\"",
                quoted(&tap.address)
            ),
        )
    })?;
    if network.v4.network() != address.network() {
        return Err(invalid(
            "address",
            format!(
                "{address} is not on the network's subnet {} (its devices' addresses)",
                network.v4.network()
            ),
        ));
    }
    // Every device's address on the segment (`network` is one of them).
    let taken = devices
        .iter()
        .flat_map(|d| [&d.local, &d.global])
        .filter(|n| n.segment == tap.segment)
        .map(|n| n.v4.address())
        .chain(
            earlier
                .iter()
                .filter(|t| t.network.segment == tap.segment)
                .map(|t| t.address.address()),
        );
    if taken.into_iter().any(|a| a == address.address()) {
        return Err(invalid(
            "address",
            format!(
                "{} is taken by a device or another TAP port",
                address.address()
            ),
        ));
    }
    Ok(TapSpec {
        name: tap.name.clone(),
        address,
        network,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Process mode writes inline devices to files in another folder: each
    /// path relative to the topology must still name the same file there.
    #[test]
    fn inline_devices_read_the_same_from_another_folder() {
        let net = r#"
            local = { segment = "l", address = "10.0.0.1/24" }
            global = { segment = "g", address = "10.1.0.1/24" }
            management = { secret_file = "net.secret" }
        "#;
        let functions = [
            (
                cfg!(feature = "manager"),
                r#"function = { kind = "manager", policy = "p.toml", secret_file = "m.secret" }"#,
            ),
            (
                cfg!(feature = "encrypt"),
                r#"function = { kind = "encrypt", local_address = "10.1.0.1", peer_address = "10.1.0.2",
                   outbound = { spi = 0x1001, key_file = "out.key" },
                   inbound = [{ spi = 0x2002, key_file = "in.key" }, { spi = 0x2003, key = "00" }] }"#,
            ),
            (true, r#"function = { kind = "echo" }"#),
        ];
        let base = std::path::absolute("some/where").unwrap();
        let elsewhere = Path::new("/run/elsewhere");
        for (built, function) in functions {
            if !built {
                continue;
            }
            let v: toml::Value =
                toml::from_str(&format!("name = \"d\"\n{function}\n{net}")).unwrap();
            let here: DeviceConfig = v.clone().try_into().unwrap();
            let written = absolute_paths(v, &base);
            let there: DeviceConfig = written.try_into().unwrap();
            assert_eq!(
                there.relative_to(elsewhere),
                here.relative_to(&base),
                "{function}"
            );
        }
    }
}
