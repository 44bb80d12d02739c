//! Device files: the `[local]`/`[global]` network sections, static routes
//! and the `[function]` section, validated into [`DeviceSettings`] (the
//! stack's [`DeviceSpec`] plus the function's config).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use smoltcp::wire::{IpAddress, IpCidr};

use super::{ConfigError, field_error, parse_toml, read};
use crate::functions::matching::{check_name, quoted};
use crate::functions::{self, FunctionConfig, absolute_in};
use crate::stack::spec::{DeviceSpec, NetworkSpec, SocketSettings, StaticRoute};
use crate::wire::LinkMedium;

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
    pub address6: Option<String>,
    /// Default gateway on this network (global network only).
    pub gateway: Option<String>,
    /// Default IPv6 gateway on this network (global network only).
    pub gateway6: Option<String>,
    /// IP MTU in bytes, 576..=65535.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// "ethernet" (default) or "ip".
    #[serde(default)]
    pub medium: LinkMedium,
    /// Ports the network holds at once; every device of the network must
    /// give the same value (a joiner with another is refused). Unused ports
    /// cost only address space.
    #[serde(default = "default_max_ports")]
    pub max_ports: u32,
    /// Transmit buffers per port (0: chosen from the MTU).
    #[serde(default)]
    pub buffers: u32,
    /// Compute and verify checksums (off: the shared-memory link is lossless).
    #[serde(default)]
    pub checksums: bool,
    /// Parse received frames in the sender's buffer instead of copying them
    /// out first, when devices are threads of one process (the default
    /// there). Frames of another process are always copied: its memory is
    /// never referenced.
    pub trust_peers: Option<bool>,
    /// Frames taken from this adapter per poll round.
    pub max_burst: Option<usize>,
    /// Write every frame this adapter carries to a pcap file.
    pub pcap: Option<PathBuf>,
}

impl NetworkConfig {
    /// A network section with `segment` and `address` (e.g.
    /// `"10.0.0.1/24"`) and every other field at its default (MTU 1500,
    /// Ethernet, 128 ports): change fields from there.
    ///
    /// ```
    /// use shmnet::config::{DeviceConfig, NetworkConfig};
    /// use shmnet::functions::FunctionConfig;
    /// let mut wan = NetworkConfig::new("doc-b-wan", "10.100.0.1/16");
    /// wan.mtu = 9000;
    /// let settings = DeviceConfig::new("edge", NetworkConfig::new("doc-b-lan", "10.0.0.1/24"), wan)
    ///     .with_function(FunctionConfig::Passthrough)
    ///     .validate("edge (built in Rust)")
    ///     .unwrap();
    /// assert_eq!(settings.global.mtu, 9000);
    /// ```
    pub fn new(segment: impl Into<String>, address: impl Into<String>) -> NetworkConfig {
        NetworkConfig {
            segment: segment.into(),
            address: address.into(),
            address6: None,
            mtu: default_mtu(),
            medium: LinkMedium::default(),
            gateway: None,
            gateway6: None,
            pcap: None,
            max_burst: None,
            checksums: false,
            trust_peers: None,
            max_ports: default_max_ports(),
            buffers: 0,
        }
    }
}

impl DeviceConfig {
    /// A device named `name` on these networks, running passthrough, with
    /// every other field at its default; [`DeviceConfig::validate`] checks
    /// it as it would a file.
    pub fn new(
        name: impl Into<String>,
        local: NetworkConfig,
        global: NetworkConfig,
    ) -> DeviceConfig {
        DeviceConfig {
            name: name.into(),
            function: FunctionConfig::default(),
            local,
            global,
            mac: None,
            forward: false,
            routes: Vec::new(),
            sockets: SocketsConfig::default(),
            management: ManagementConfig::default(),
        }
    }

    /// The same device running `function`.
    pub fn with_function(mut self, function: FunctionConfig) -> DeviceConfig {
        self.function = function;
        self
    }
}

/// The longest segment name the shared-memory facility accepts (it names a
/// directory, and is part of socket paths).
const SEGMENT_NAME_MAX: usize = crate::shm::NETWORK_NAME_MAX;

fn default_mtu() -> u32 {
    1500
}
fn default_max_ports() -> u32 {
    128
}

/// A device: its name, its function and its two networks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The device's name: unique among the devices of its networks.
    pub name: String,
    /// What the device does (`[function]`; default: passthrough).
    #[serde(default)]
    pub function: FunctionConfig,
    /// The host's shared-memory network (`[local]`).
    pub local: NetworkConfig,
    /// The network that also reaches remote hosts (`[global]`).
    pub global: NetworkConfig,
    /// Hardware address, "02:53:xx:xx:xx:xx"; default derived from the name.
    pub mac: Option<String>,
    /// Forward packets not addressed to this device between (and within)
    /// its networks, as a router does: the device sits in a chain.
    #[serde(default)]
    pub forward: bool,
    /// Static routes, used by the device's own stack and when forwarding.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Socket buffers of the device's own stack.
    #[serde(default)]
    pub sockets: SocketsConfig,
    /// The management agent (`[management]`; a topology's table overrides
    /// it).
    #[serde(default)]
    pub management: ManagementConfig,
}

/// `[management]`: the management agent every device runs, in a topology
/// or a device file.
///
/// ```toml
/// [management]
/// agent_port = 9101              # the agent's TCP port (default 9101)
/// secret_file = "mgmt.secret"    # the shared secret; created if missing
/// enabled = true                 # default
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementConfig {
    /// Run the agent (default: yes).
    pub enabled: Option<bool>,
    /// The agent's TCP port on each of the device's addresses.
    pub agent_port: Option<u16>,
    /// The file holding the secret that signs management messages,
    /// relative to the file naming it. Created (mode 0600, 32 random
    /// bytes) when missing. Default: `NAME.secret` (NAME: the topology's
    /// or the device's) in `$XDG_RUNTIME_DIR/shmnet/`, or in
    /// `/tmp/shmnet-UID/`.
    pub secret_file: Option<PathBuf>,
}

impl ManagementConfig {
    /// These settings with `over`'s given fields in their place.
    pub fn overridden_by(&self, over: &ManagementConfig) -> ManagementConfig {
        ManagementConfig {
            enabled: over.enabled.or(self.enabled),
            agent_port: over.agent_port.or(self.agent_port),
            secret_file: over
                .secret_file
                .clone()
                .or_else(|| self.secret_file.clone()),
        }
    }

    /// Relative paths resolved against `base` (the named file's folder).
    pub fn resolved(mut self, base: &Path) -> ManagementConfig {
        self.secret_file = self.secret_file.map(|f| absolute_in(base, &f));
        self
    }
}

/// `[sockets]`: the TCP buffers of the device's own stack. A field left
/// out takes [`crate::stack::SocketSettings::default`]'s value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketsConfig {
    /// Bytes of each TCP socket's receive and send buffer (default 1 MiB),
    /// 1 KiB..=1 GiB, for functions that set none of their own. The receive
    /// buffer is the window a sender may fill before hearing back.
    pub tcp_buffer: Option<usize>,
    /// Bytes of closed sockets' buffers kept for new connections (default
    /// 32 MiB; 0: allocate each socket afresh).
    pub pool: Option<usize>,
    /// TCP congestion control: `"none"` (default: shared memory loses
    /// nothing), `"reno"` or `"cubic"` (for traffic that leaves the host
    /// through a VXLAN gateway or a TAP port).
    pub congestion: Option<crate::stack::Congestion>,
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

/// A device's settings after validation: the device's spec (what
/// [`crate::stack::NetDevice`] needs) and its function's configuration.
/// Derefs to the [`DeviceSpec`], so `settings.local.mtu` reads through.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSettings {
    /// What the stack needs: name, networks, routes, sockets.
    pub spec: DeviceSpec,
    /// What the device does.
    pub function: FunctionConfig,
    /// The file it came from, for messages.
    pub source: String,
    /// The management agent's settings (secret file paths resolved).
    pub management: ManagementConfig,
}

impl std::ops::Deref for DeviceSettings {
    type Target = DeviceSpec;
    fn deref(&self) -> &DeviceSpec {
        &self.spec
    }
}

impl std::ops::DerefMut for DeviceSettings {
    fn deref_mut(&mut self) -> &mut DeviceSpec {
        &mut self.spec
    }
}

impl crate::stack::DeviceBlueprint for DeviceSettings {
    fn spec(&self) -> &DeviceSpec {
        &self.spec
    }
    fn function(&self) -> &dyn crate::stack::FunctionSpec {
        &self.function
    }
}

impl DeviceConfig {
    /// Reads and validates a device file.
    pub fn load(path: &Path) -> Result<DeviceSettings, ConfigError> {
        let (text, file) = read(path)?;
        let cfg: DeviceConfig = parse_toml(&text, &file)?;
        cfg.relative_to(path.parent().unwrap_or(Path::new(".")))
            .validate(&file)
    }

    /// The paths this configuration names that are relative to its file
    /// (`[management] secret_file`, a manager's `policy` and
    /// `secret_file`, an encrypt function's `key_file`s), resolved against
    /// the file's folder `base` into absolute paths: what a device reports
    /// of its function (a manager's patch sends it back) names the same
    /// files from anywhere.
    pub fn relative_to(mut self, base: &Path) -> DeviceConfig {
        self.management = self.management.resolved(base);
        match &mut self.function {
            #[cfg(feature = "manager")]
            FunctionConfig::Manager(m) => {
                m.policy = m.policy.take().map(|p| absolute_in(base, &p));
                m.secret_file = m.secret_file.take().map(|p| absolute_in(base, &p));
            }
            #[cfg(feature = "encrypt")]
            FunctionConfig::Encrypt(e) => {
                for sa in std::iter::once(&mut e.outbound).chain(&mut e.inbound) {
                    sa.key_file = sa.key_file.take().map(|p| absolute_in(base, &p));
                }
            }
            _ => {}
        }
        self
    }

    /// Parses and validates device TOML; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<DeviceSettings, ConfigError> {
        let cfg: DeviceConfig = parse_toml(text, file)?;
        cfg.validate(file)
    }

    /// Checks every field and resolves defaults.
    pub fn validate(&self, file: &str) -> Result<DeviceSettings, ConfigError> {
        let invalid = field_error(file, String::new());
        check_name(&self.name, "-_.").map_err(|chars| invalid("name", format!("use {chars}")))?;
        let local = self.local.validate(file, "local")?;
        let global = self.global.validate(file, "global")?;
        if local.segment == global.segment {
            return Err(invalid(
                "global.segment",
                format!(
                    "{} is also the local segment; the two networks must differ",
                    quoted(&global.segment)
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
                    format!("{} is not a unicast MAC like 02:53:00:00:00:01", quoted(s)),
                )
            })?,
        };
        let mut routes = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let field = |f: &str| format!("route[{i}].{f}");
            let to: IpCidr = r.to.parse().map_err(|_| {
                invalid(
                    &field("to"),
                    format!("{} is not a prefix like 10.1.0.0/24", quoted(&r.to)),
                )
            })?;
            let via: IpAddress = r.via.parse::<IpAddr>().map(IpAddress::from).map_err(|_| {
                invalid(
                    &field("via"),
                    format!("{} is not an IP address", quoted(&r.via)),
                )
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
        let mut sockets = SocketSettings::default();
        if let Some(n) = self.sockets.tcp_buffer {
            if !(1024..=(1 << 30)).contains(&n) {
                return Err(invalid(
                    "sockets.tcp_buffer",
                    format!("{n} is not within 1 KiB..=1 GiB (1024..=1073741824)"),
                ));
            }
            sockets.tcp_buffer = n;
        }
        if let Some(c) = self.sockets.congestion {
            sockets.congestion = c;
        }
        if let Some(n) = self.sockets.pool {
            sockets.pool_bytes = n;
        }
        Ok(DeviceSettings {
            spec: DeviceSpec {
                name: self.name.clone(),
                local,
                global,
                mac,
                forward: self.forward,
                routes,
                sockets,
            },
            function: self.function.clone(),
            source: file.into(),
            management: self.management.clone(),
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
    fn validate(&self, file: &str, net: &str) -> Result<NetworkSpec, ConfigError> {
        let invalid = field_error(file, net.into());
        check_name(&self.segment, "-_.")
            .map_err(|chars| invalid("segment", format!("use {chars}")))?;
        if self.segment.len() > SEGMENT_NAME_MAX {
            return Err(invalid(
                "segment",
                format!(
                    "{} is too long: a segment name has at most {SEGMENT_NAME_MAX} characters",
                    quoted(&self.segment)
                ),
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
                        "{} is not an IPv4 unicast address with prefix, like 10.0.0.1/24",
                        quoted(&self.address)
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
                            "{} is not an IPv6 unicast address with prefix, like fd00::1/64",
                            quoted(s)
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
                        format!(
                            "{} is not an IPv{} address",
                            quoted(s),
                            if want_v4 { 4 } else { 6 }
                        ),
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
        Ok(NetworkSpec {
            segment: self.segment.clone(),
            v4,
            v6,
            mtu: self.mtu,
            medium: self.medium,
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

    #[cfg(feature = "encrypt")]
    #[test]
    fn key_files_are_found_beside_the_device_file() {
        let dir = std::env::temp_dir().join(format!("shmnet-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("in.key"),
            "00112233445566778899aabbccddeeff01020304\n",
        )
        .unwrap();
        let function = r#"
[function]
kind = "encrypt"
local_address = "10.1.0.1"
peer_address = "10.1.0.2"
outbound = { spi = 0x1001, key = "00112233445566778899aabbccddeeff01020304" }
inbound = [{ spi = 0x2002, key_file = "in.key" }]
"#;
        let file = dir.join("dev.toml");
        std::fs::write(&file, format!("{GOOD}{function}")).unwrap();
        // Loaded from elsewhere (the working directory is not `dir`).
        let d = DeviceConfig::load(&file);
        std::fs::remove_dir_all(&dir).unwrap();
        let FunctionConfig::Encrypt(e) = d.unwrap().function else {
            panic!("not an encrypt function");
        };
        assert_eq!(e.inbound[0].key_file.as_deref(), Some(&*dir.join("in.key")));
        assert_eq!(e.outbound.key_file, None);
        // Loaded as `dev.toml` or `conf/dev.toml`, the paths are absolute
        // too: what a device reports of its function (and a manager's
        // patch sends back) names the same files from anywhere.
        let cfg: DeviceConfig = toml::from_str(&format!("{GOOD}{function}")).unwrap();
        let cwd = std::env::current_dir().unwrap();
        for (base, want) in [("", cwd.join("in.key")), ("conf", cwd.join("conf/in.key"))] {
            let FunctionConfig::Encrypt(e) = cfg.clone().relative_to(Path::new(base)).function
            else {
                panic!("not an encrypt function");
            };
            assert_eq!(
                e.inbound[0].key_file.as_deref(),
                Some(&*want),
                "base {base:?}"
            );
        }
    }
}
