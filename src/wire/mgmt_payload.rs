//! The bodies of management messages ([`super::mgmt`]) by operation: what
//! an agent answers and what a manager asks. Identity, results and
//! capture requests are TOML documents; a counters table is one
//! `name value` line per counter (TOML integers stop at 2^63).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The agents' TCP port unless configured.
pub const DEFAULT_AGENT_PORT: u16 = 9101;

/// Longest counter name accepted in a counters table.
pub const MAX_COUNTER_NAME: usize = 256;
/// Most counters accepted in one table.
pub const MAX_COUNTERS: usize = 1 << 16;

/// One of a device's two network ports, as `Identify` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// IPv4 address and prefix, e.g. `10.82.0.3/24`.
    pub address: String,
    /// IPv6 address and prefix, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<String>,
    /// Hardware address (`02:53:…`).
    pub mac: String,
    /// IP MTU.
    pub mtu: u32,
    /// The network's segment name.
    pub segment: String,
}

/// `Identify`: who the device is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Device name.
    pub name: String,
    /// The running function's kind.
    pub function: String,
    /// shmnet's version.
    pub version: String,
    /// Milliseconds since the device started.
    pub uptime_ms: u64,
    /// Whether the device forwards (sits in a chain).
    pub forward: bool,
    /// The process the device runs in.
    pub pid: u32,
    /// The local network's port.
    pub local: PortInfo,
    /// The global network's port.
    pub global: PortInfo,
}

/// `SetFunction`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetResult {
    /// `in-place` (the running function took the configuration, keeping its
    /// state) or `replaced` (a new function was built and installed).
    pub applied: String,
    /// The function's kind now.
    pub function: String,
}

/// `CaptureStart`'s request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureStart {
    /// `local` or `global`.
    pub adapter: String,
    /// The pcap file the device writes (an absolute path on its host).
    pub file: String,
    /// Stop on its own after this many seconds (none: until stopped).
    #[serde(default)]
    pub seconds: Option<u64>,
}

/// `CaptureStop`'s request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureStop {
    /// `local` or `global`.
    pub adapter: String,
}

/// What a capture wrote (`CaptureStop`'s answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureResult {
    /// Frames written.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Writes a TOML body (these types cannot fail to serialize).
pub fn to_toml<T: Serialize>(v: &T) -> Vec<u8> {
    toml::to_string(v).unwrap_or_default().into_bytes()
}

/// Reads a TOML body; the error says what is wrong.
pub fn from_toml<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|_| "body is not UTF-8".to_string())?;
    toml::from_str(text).map_err(|e| e.message().to_string())
}

/// A counters table as `name value` lines.
pub fn encode_counters<'a>(counters: impl IntoIterator<Item = (&'a str, u64)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, v) in counters {
        use std::io::Write;
        let _ = writeln!(out, "{name} {v}");
    }
    out
}

/// Reads a counters table; a malformed line, an overlong name or too many
/// counters fail the whole table (a device speaks it right or not at all).
pub fn decode_counters(body: &[u8]) -> Result<BTreeMap<String, u64>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "counters are not UTF-8".to_string())?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("counters line {}: {why}", i + 1);
        let (name, v) = line.split_once(' ').ok_or_else(|| bad("no value"))?;
        if name.is_empty()
            || name.len() > MAX_COUNTER_NAME
            || !name.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(bad("bad name"));
        }
        let v: u64 = v.parse().map_err(|_| bad("bad value"))?;
        if out.len() == MAX_COUNTERS {
            return Err(bad("too many counters"));
        }
        out.insert(name.to_string(), v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_and_refuse_garbage() {
        let body = encode_counters([("local.rx_frames", 3), ("function.big", u64::MAX)]);
        let t = decode_counters(&body).unwrap();
        assert_eq!(t["function.big"], u64::MAX);
        assert_eq!(t["local.rx_frames"], 3);
        for bad in [&b"a"[..], b"a -1", b"a 1 2", b" 1", b"\xff 1", b"a\tb 1"] {
            assert!(decode_counters(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn identity_round_trips() {
        let port = PortInfo {
            address: "10.0.0.2/24".into(),
            address6: None,
            mac: "02:53:00:00:00:02".into(),
            mtu: 1500,
            segment: "lan".into(),
        };
        let id = Identity {
            name: "edge".into(),
            function: "qos".into(),
            version: "0.1.0".into(),
            uptime_ms: 5,
            forward: true,
            pid: 1,
            local: port.clone(),
            global: port,
        };
        assert_eq!(from_toml::<Identity>(&to_toml(&id)).unwrap(), id);
        assert!(from_toml::<CaptureStart>(b"adapter = 1").is_err());
    }
}
