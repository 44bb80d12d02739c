//! The device file, written by code: one template for every test, bench
//! and fuzz target that needs a device, instead of a `format!` of TOML in
//! each.
//!
//! [`DeviceToml`] renders the same file a user would write (see the
//! README's "A device file"), so what it builds goes through the same
//! parser and validation as `shmnet device FILE`.
//!
//! ```
//! use shmnet::testing::{DeviceToml, NetToml};
//!
//! // Host 1 of the usual pair of networks: 10.0.0.1/24 and 10.100.0.1/16.
//! let client = DeviceToml::host("client", "lan0", "wan0", 1)
//!     .mtu(9000)
//!     .function(r#"{ kind = "probe", tcp = ["10.0.0.2:7"] }"#)
//!     .settings();
//! assert_eq!(client.local.mtu, 9000);
//!
//! // A forwarding device with a function table and a static route; a
//! // network is a NetToml, or just (segment, address).
//! let router = DeviceToml::new(
//!     "router",
//!     ("lan0", "10.0.0.254/24"),
//!     NetToml::new("hop0", "10.2.0.1/24").pcap("/tmp/hop.pcap"),
//! )
//! .forward()
//! .route("10.3.0.0/24", "10.2.0.2")
//! .function_table("kind = \"compress\"");
//! assert!(router.to_string().contains("[function]\nkind = \"compress\""));
//! ```

use std::fmt;

use crate::config::{ConfigError, DeviceConfig, DeviceSettings};

/// A TOML basic string holding `s`.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// One of a device's two networks (`local` or `global`): an inline table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetToml {
    segment: String,
    address: String,
    /// Further `key = value` pairs (values as TOML), in order.
    more: Vec<(&'static str, String)>,
}

impl NetToml {
    /// The device on segment `segment` with IPv4 address `address`
    /// ("10.0.0.1/24"); MTU and medium left to their defaults.
    pub fn new(segment: impl Into<String>, address: impl Into<String>) -> NetToml {
        NetToml {
            segment: segment.into(),
            address: address.into(),
            more: Vec::new(),
        }
    }

    fn with(mut self, key: &'static str, value: String) -> NetToml {
        self.more.retain(|(k, _)| *k != key);
        self.more.push((key, value));
        self
    }

    /// An IPv6 address as well ("fd00::1/64").
    pub fn address6(self, address: impl AsRef<str>) -> NetToml {
        self.with("address6", quote(address.as_ref()))
    }

    /// The network's IP MTU.
    pub fn mtu(self, mtu: u32) -> NetToml {
        self.with("mtu", mtu.to_string())
    }

    /// `"ethernet"` or `"ip"`.
    pub fn medium(self, medium: &str) -> NetToml {
        self.with("medium", quote(medium))
    }

    /// Capture the adapter's frames into this pcap file.
    pub fn pcap(self, path: impl AsRef<std::path::Path>) -> NetToml {
        self.with("pcap", quote(&path.as_ref().display().to_string()))
    }

    /// Parse frames in the sender's buffer (or copy them out first).
    pub fn trust_peers(self, trust: bool) -> NetToml {
        self.with("trust_peers", trust.to_string())
    }

    /// The segment's capacity in ports, if this device creates it.
    pub fn max_ports(self, ports: u32) -> NetToml {
        self.with("max_ports", ports.to_string())
    }

    /// The network's default gateway.
    pub fn gateway(self, address: &str) -> NetToml {
        self.with("gateway", quote(address))
    }
}

/// `(segment, address)`: [`NetToml::new`].
impl<S: Into<String>, A: Into<String>> From<(S, A)> for NetToml {
    fn from((segment, address): (S, A)) -> NetToml {
        NetToml::new(segment, address)
    }
}

impl fmt::Display for NetToml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{ segment = {}, address = {}",
            quote(&self.segment),
            quote(&self.address)
        )?;
        for (k, v) in &self.more {
            write!(f, ", {k} = {v}")?;
        }
        f.write_str(" }")
    }
}

/// A device file: name, the two networks, and optionally a function,
/// forwarding and static routes. `Display` renders the TOML text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceToml {
    name: String,
    local: NetToml,
    global: NetToml,
    forward: bool,
    /// `function = ...` (an inline table), or the `[function]` table's
    /// body as its own document.
    function: Option<Function>,
    routes: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Function {
    Inline(String),
    Table(String),
}

impl DeviceToml {
    /// The device `name` with its `local` and `global` networks (each a
    /// [`NetToml`] or a `(segment, address)` pair), running the default
    /// function (passthrough).
    pub fn new(
        name: impl Into<String>,
        local: impl Into<NetToml>,
        global: impl Into<NetToml>,
    ) -> DeviceToml {
        DeviceToml {
            name: name.into(),
            local: local.into(),
            global: global.into(),
            forward: false,
            function: None,
            routes: Vec::new(),
        }
    }

    /// Host `host` of the pair of networks most tests and benches use:
    /// `lan` as 10.0.0.`host`/24, `wan` as 10.100.0.`host`/16.
    pub fn host(name: impl Into<String>, lan: &str, wan: &str, host: u8) -> DeviceToml {
        DeviceToml::new(
            name,
            NetToml::new(lan, format!("10.0.0.{host}/24")),
            NetToml::new(wan, format!("10.100.0.{host}/16")),
        )
    }

    /// The same MTU on both networks.
    pub fn mtu(mut self, mtu: u32) -> DeviceToml {
        self.local = self.local.mtu(mtu);
        self.global = self.global.mtu(mtu);
        self
    }

    /// The same medium on both networks: `"ethernet"` or `"ip"`.
    pub fn medium(mut self, medium: &str) -> DeviceToml {
        self.local = self.local.medium(medium);
        self.global = self.global.medium(medium);
        self
    }

    /// The same segment capacity on both networks.
    pub fn max_ports(mut self, ports: u32) -> DeviceToml {
        self.local = self.local.max_ports(ports);
        self.global = self.global.max_ports(ports);
        self
    }

    /// Changes the local network: `.map_local(|n| n.pcap("lan.pcap"))`.
    pub fn map_local(mut self, f: impl FnOnce(NetToml) -> NetToml) -> DeviceToml {
        self.local = f(self.local);
        self
    }

    /// Changes the global network.
    pub fn map_global(mut self, f: impl FnOnce(NetToml) -> NetToml) -> DeviceToml {
        self.global = f(self.global);
        self
    }

    /// Forward packets not addressed to the device (a router in a chain).
    pub fn forward(mut self) -> DeviceToml {
        self.forward = true;
        self
    }

    /// The function as a TOML inline table: `{ kind = "echo" }`.
    pub fn function(mut self, inline: impl Into<String>) -> DeviceToml {
        self.function = Some(Function::Inline(inline.into()));
        self
    }

    /// The function as the document a `FunctionConfig` parses from
    /// (`kind = "balancer"` and its keys, `[[service]]` tables…): it
    /// becomes the device's `[function]` table, sub-table headers nested
    /// under it.
    pub fn function_table(mut self, doc: impl Into<String>) -> DeviceToml {
        self.function = Some(Function::Table(doc.into()));
        self
    }

    /// A static route: `to` (a prefix) via the gateway `via`.
    pub fn route(mut self, to: impl Into<String>, via: impl Into<String>) -> DeviceToml {
        self.routes.push((to.into(), via.into()));
        self
    }

    /// Parses and validates the file as `shmnet device` would.
    pub fn parse(&self) -> Result<DeviceSettings, ConfigError> {
        DeviceConfig::from_toml(&self.to_string(), &format!("{}.toml", self.name))
    }

    /// [`parse`](Self::parse), for tests: panics with the error and the
    /// text if the file is not valid.
    pub fn settings(&self) -> DeviceSettings {
        self.parse()
            .unwrap_or_else(|e| panic!("test device file is invalid: {e}\n{self}"))
    }
}

/// `[x]` / `[[x]]` → `[function.x]` / `[[function.x]]`; other lines as
/// they are.
fn nest_under_function(doc: &str, out: &mut String) {
    for line in doc.lines() {
        let t = line.trim();
        let (open, close) = if t.starts_with("[[") && t.ends_with("]]") {
            ("[[", "]]")
        } else {
            ("[", "]")
        };
        let inner = t
            .strip_prefix(open)
            .and_then(|r| r.strip_suffix(close))
            .filter(|n| {
                !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            });
        match inner {
            Some(name) => out.push_str(&format!("{open}function.{name}{close}\n")),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
}

impl fmt::Display for DeviceToml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "name = {}", quote(&self.name))?;
        if self.forward {
            writeln!(f, "forward = true")?;
        }
        if let Some(Function::Inline(t)) = &self.function {
            writeln!(f, "function = {t}")?;
        }
        writeln!(f, "local = {}", self.local)?;
        writeln!(f, "global = {}", self.global)?;
        if !self.routes.is_empty() {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|(to, via)| format!("{{ to = {}, via = {} }}", quote(to), quote(via)))
                .collect();
            writeln!(f, "route = [{}]", routes.join(", "))?;
        }
        if let Some(Function::Table(doc)) = &self.function {
            let mut body = String::new();
            nest_under_function(doc, &mut body);
            write!(f, "[function]\n{body}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_file_a_user_would_write() {
        let d = DeviceToml::host("a", "l", "g", 3)
            .mtu(9000)
            .forward()
            .route("10.1.0.0/24", "10.0.0.254")
            .function_table("kind = \"balancer\"\n[[service]]\nname = \"s\"\nx = [\n  [1],\n]");
        assert_eq!(
            d.to_string(),
            "name = \"a\"\nforward = true\n\
             local = { segment = \"l\", address = \"10.0.0.3/24\", mtu = 9000 }\n\
             global = { segment = \"g\", address = \"10.100.0.3/16\", mtu = 9000 }\n\
             route = [{ to = \"10.1.0.0/24\", via = \"10.0.0.254\" }]\n\
             [function]\nkind = \"balancer\"\n[[function.service]]\nname = \"s\"\nx = [\n  [1],\n]\n"
        );
        let d = DeviceToml::new(
            "b",
            NetToml::new("l", "10.0.0.1/24")
                .address6("fd00::1/64")
                .medium("ip")
                .pcap("/tmp/a \"b\".pcap"),
            NetToml::new("g", "10.1.0.1/24")
                .medium("ip")
                .trust_peers(true),
        )
        .function(r#"{ kind = "echo" }"#);
        let s = d.settings();
        assert_eq!(s.name, "b");
        assert_eq!(s.global.trust_peers, Some(true), "{s:?}");
        let pcap = s.local.pcap.clone().expect("pcap path");
        assert_eq!(pcap.to_str(), Some("/tmp/a \"b\".pcap"));
    }

    #[test]
    fn invalid_files_are_errors_that_name_the_device() {
        let e = DeviceToml::host("c", "l", "l", 1)
            .function("{ kind = \"teleport\" }")
            .parse()
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml") && e.contains("teleport"), "{e}");
    }
}
