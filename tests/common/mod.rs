//! Helpers shared by the integration tests: [`shmnet::testing`], and the
//! shorthand most tests use for a device on the usual pair of networks.
#![allow(dead_code, unused_imports)]

pub use shmnet::testing::*;

use shmnet::config::DeviceSettings;

/// A device on `lan`/`wan` with the given host number, MTU and function
/// (a TOML inline table, e.g. `{ kind = "echo" }`).
pub fn settings(
    name: &str,
    lan: &str,
    wan: &str,
    host: u8,
    mtu: u32,
    function: &str,
) -> DeviceSettings {
    settings_mtus(name, lan, wan, host, mtu, mtu, function)
}

/// [`settings`] with a different MTU on each network; a network of MTU
/// 1280 or more also gets an IPv6 address (fd00:1::host on `lan`,
/// fd00:2::host on `wan`).
pub fn settings_mtus(
    name: &str,
    lan: &str,
    wan: &str,
    host: u8,
    local_mtu: u32,
    global_mtu: u32,
    function: &str,
) -> DeviceSettings {
    let net = |segment: &str, v4: String, mtu: u32, v6: u8| {
        let n = NetToml::new(segment, v4).mtu(mtu);
        if mtu >= 1280 {
            n.address6(format!("fd00:{v6}::{host}/64"))
        } else {
            n
        }
    };
    DeviceToml::new(
        name,
        net(lan, format!("10.0.0.{host}/24"), local_mtu, 1),
        net(wan, format!("10.100.0.{host}/16"), global_mtu, 2),
    )
    .function(function)
    .settings()
}

/// client ─lan_a─ end 1 ═hop═ end 2 ─lan_b─ server: the chain the pair
/// functions (encrypt, compress) work on. lan_a is 10.0.0.0/24 (client .1,
/// end 1 .254), the hop 10.2.0.0/24 (end 1 .1, end 2 .2), lan_b
/// 10.3.0.0/24 (end 2 .254, server .2).
pub struct Hop {
    pub lan_a: String,
    pub hop: String,
    pub lan_b: String,
}

impl Hop {
    pub fn new() -> Hop {
        Hop {
            lan_a: unique("lanA"),
            hop: unique("hop"),
            lan_b: unique("lanB"),
        }
    }

    /// End 1 or 2 of the hop, forwarding to the far LAN through the other
    /// end (no function yet).
    pub fn end(&self, end: u8, name: &str) -> DeviceToml {
        let (lan, lan_addr, far, other) = match end {
            1 => (&self.lan_a, "10.0.0.254/24", "10.3.0.0/24", "10.2.0.2"),
            _ => (&self.lan_b, "10.3.0.254/24", "10.0.0.0/24", "10.2.0.1"),
        };
        DeviceToml::new(
            name,
            NetToml::new(lan, lan_addr),
            NetToml::new(&self.hop, format!("10.2.0.{end}/24")),
        )
        .forward()
        .route(far, other)
    }

    /// The probe client on lan_a, exchanging `bytes` with the server.
    pub fn client(&self, bytes: u64) -> DeviceToml {
        probe_client(&self.lan_a, "10.0.0.1", "10.3.0.2", "10.0.0.254", bytes)
    }

    /// The echo server on lan_b.
    pub fn server(&self) -> DeviceToml {
        echo_server(&self.lan_b, "10.3.0.2", "10.0.0.1", "10.3.0.254")
    }
}

/// A tiny deterministic PRNG (xorshift64*): the garbage hostile tests send
/// and write is the same on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}
