//! `[function] kind = "encrypt"`: the schema, and its validation into the
//! SAs the tunnel runs with.
//!
//! ```toml
//! [function]
//! kind = "encrypt"
//! local_address = "10.2.0.1"          # this end on the hop (outer source)
//! peer_address = "10.2.0.2"           # the other end (outer destination)
//! hop = "global"                      # or "local": the network carrying ESP
//! outbound = { spi = 0x1001, key = "<40 or 72 hex digits>" }
//! inbound = [{ spi = 0x2002, key_file = "e1-in.key" }]
//! replay_window = 64                  # packets, 32..=1024
//! ```
//!
//! The hop's MTU is the hop network's (`mtu` in the device file), learned
//! when the function is attached.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::sa::{InboundSa, OutboundSa, SaKey};
use crate::functions::FunctionError;
use crate::functions::common::{defaults, invalid};
use crate::functions::matching::quoted;
use crate::stack::Role;

/// `[function] kind = "encrypt"`.
///
/// [`EncryptConfig::default`] gives each field the value a file gives when
/// it leaves the field out. A file must give `local_address`,
/// `peer_address` and `outbound`; their defaults (`0.0.0.0` and an SA
/// without SPI or key) are refused by [`Encrypt::new`](super::Encrypt::new),
/// so a config built in Rust sets them.
///
/// ```
/// use shmnet::functions::encrypt::{Encrypt, EncryptConfig, SaConfig};
/// let sa = |spi: u32| SaConfig {
///     spi,
///     key: Some("00112233445566778899aabbccddeeff01020304".into()),
///     ..Default::default()
/// };
/// let cfg = EncryptConfig {
///     local_address: [10, 2, 0, 1].into(),
///     peer_address: [10, 2, 0, 2].into(),
///     outbound: sa(0x1001),
///     inbound: vec![sa(0x2002)],
///     ..Default::default()
/// };
/// assert!(Encrypt::new(cfg).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptConfig {
    /// This device's address on the hop network (outer source).
    pub local_address: Ipv4Addr,
    /// The peer device's address on the hop network (outer destination).
    pub peer_address: Ipv4Addr,
    /// Which of the device's networks is the hop: `"global"` (default) or
    /// `"local"`.
    #[serde(default = "global")]
    pub hop: Role,
    /// The SA that encrypts what this device sends.
    pub outbound: SaConfig,
    /// The SAs accepted from the peer (old and new during a rekey).
    #[serde(default)]
    pub inbound: Vec<SaConfig>,
    /// Anti-replay window in packets, 32..=1024.
    #[serde(default = "defaults::u32::<64>")]
    pub replay_window: u32,
}

/// One security association: `{ spi = 0x1001, key = "hex" }` or
/// `{ spi = 0x1001, key_file = "path" }`.
///
/// `Default` gives each field the value a file gives when it leaves the
/// field out. A file must give `spi` (and one of `key`, `key_file`); the
/// defaults (SPI 0, which is reserved, and no key) are refused.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SaConfig {
    /// Security parameter index, 256..=u32::MAX.
    pub spi: u32,
    /// AES key then 4-byte salt, hex (40 or 72 digits).
    pub key: Option<String>,
    /// A file holding the same hex text, or the raw 20 or 36 bytes.
    pub key_file: Option<PathBuf>,
}

fn global() -> Role {
    Role::Global
}

impl Default for EncryptConfig {
    /// What a file gives for each field it leaves out; the addresses
    /// `0.0.0.0` and `outbound` an SA without SPI or key (all three
    /// required in a file).
    fn default() -> Self {
        EncryptConfig {
            local_address: Ipv4Addr::UNSPECIFIED,
            peer_address: Ipv4Addr::UNSPECIFIED,
            hop: global(),
            outbound: SaConfig::default(),
            inbound: Vec::new(),
            replay_window: defaults::u32::<64>(),
        }
    }
}

/// A validated configuration: addresses and keyed SAs.
pub(super) struct Compiled {
    pub(super) local: Ipv4Addr,
    pub(super) peer: Ipv4Addr,
    pub(super) hop: Role,
    pub(super) outbound: OutboundSa,
    pub(super) inbound: Vec<InboundSa>,
}

impl EncryptConfig {
    /// Checks the parameters and reads the keys (key files included).
    pub(super) fn compile(&self) -> Result<Compiled, FunctionError> {
        let invalid = invalid("encrypt");
        for (field, a) in [
            ("local_address", self.local_address),
            ("peer_address", self.peer_address),
        ] {
            if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
                return Err(invalid(format!("{field} {a} is not a unicast address")));
            }
        }
        if !(32..=1024).contains(&self.replay_window) {
            return Err(invalid("replay_window must be 32..=1024 packets".into()));
        }
        let outbound = OutboundSa::new(self.outbound.spi, sa_key(&self.outbound).map_err(invalid)?);
        let mut inbound: Vec<InboundSa> = Vec::with_capacity(self.inbound.len());
        for sa in &self.inbound {
            let key = sa_key(sa).map_err(invalid)?;
            if inbound.iter().any(|i| i.spi == sa.spi) {
                return Err(invalid(format!("inbound SPI {:#x} listed twice", sa.spi)));
            }
            inbound.push(InboundSa::new(sa.spi, key, self.replay_window));
        }
        Ok(Compiled {
            local: self.local_address,
            peer: self.peer_address,
            hop: self.hop,
            outbound,
            inbound,
        })
    }
}

/// Reads an SA's key from `key` or `key_file`.
fn sa_key(sa: &SaConfig) -> Result<SaKey, String> {
    let bytes = match (&sa.key, &sa.key_file) {
        (Some(hex), None) => parse_hex(hex).ok_or("key is not hex")?,
        (None, Some(path)) => {
            let raw = std::fs::read(path)
                .map_err(|e| format!("key_file {}: {e}", quoted(&path.to_string_lossy())))?;
            match std::str::from_utf8(&raw).ok().and_then(parse_hex) {
                Some(b) if matches!(b.len(), 20 | 36) => b,
                _ => raw,
            }
        }
        _ => {
            return Err(format!(
                "SA {:#x}: give exactly one of key, key_file",
                sa.spi
            ));
        }
    };
    if sa.spi < 256 {
        return Err(format!("SA {:#x}: SPIs 0..=255 are reserved", sa.spi));
    }
    let len = bytes.len();
    SaKey::new(bytes).ok_or_else(|| {
        format!(
            "SA {:#x}: key must be 20 or 36 bytes (AES-128/256 key + 4-byte salt), got {len}",
            sa.spi
        )
    })
}

/// Hex digits, optionally `0x`-prefixed, whitespace and `:` ignored.
pub(super) fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .map(|b| (b as char).to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()?;
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    Some(digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::function::reads_as;

    /// A field left out of a file and a field left to `Default` are the
    /// same value, so the two ways of writing a config cannot drift apart.
    #[test]
    fn default_is_what_a_file_leaves_out() {
        let built = EncryptConfig {
            local_address: Ipv4Addr::new(10, 2, 0, 1),
            peer_address: Ipv4Addr::new(10, 2, 0, 2),
            outbound: SaConfig {
                spi: 4097,
                ..Default::default()
            },
            ..Default::default()
        };
        let text = "local_address = \"10.2.0.1\"\npeer_address = \"10.2.0.2\"\n\
                    outbound = { spi = 4097 }";
        reads_as(text, &built);
    }

    #[test]
    fn default_addresses_are_refused() {
        let key = Some("00112233445566778899aabbccddeeff01020304".to_string());
        let outbound = SaConfig {
            spi: 4097,
            key,
            ..Default::default()
        };
        let cfg = EncryptConfig {
            outbound,
            ..Default::default()
        };
        let Err(FunctionError::Invalid { why, .. }) = cfg.compile() else {
            panic!("0.0.0.0 accepted")
        };
        assert_eq!(why, "local_address 0.0.0.0 is not a unicast address");
        let cfg = EncryptConfig {
            local_address: Ipv4Addr::new(10, 2, 0, 1),
            peer_address: Ipv4Addr::new(10, 2, 0, 2),
            ..cfg
        };
        assert!(cfg.compile().is_ok());
    }
}
