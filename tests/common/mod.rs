//! Helpers shared by the integration tests: [`shmnet::testing`], and the
//! shorthand most tests use for a device on the usual pair of networks.
#![allow(dead_code, unused_imports)]

pub use shmnet::testing::*;

pub mod tap;

use std::path::PathBuf;

use shmnet::config::DeviceSettings;
use shmnet::functions::diag::{pattern_byte, tcp_socket};
use shmnet::stack::NetDevice;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpEndpoint;

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

/// A topology of device files in its own directory, on its own pair of
/// host segments (unlinked when dropped, with the directory).
pub struct TopologyDir {
    pub dir: PathBuf,
    pub lan: String,
    pub wan: String,
}

impl TopologyDir {
    pub fn new() -> TopologyDir {
        let (lan, wan) = (unique("lan"), unique("wan"));
        let dir = std::env::temp_dir().join(format!("shmnet-runcmd-{lan}"));
        std::fs::create_dir_all(&dir).unwrap();
        TopologyDir { dir, lan, wan }
    }

    /// Host `host` of the pair of networks, running `function`.
    pub fn device(&self, name: &str, host: u8, function: &str) -> DeviceToml {
        DeviceToml::host(name, &self.lan, &self.wan, host).function(function)
    }

    /// Writes each device to its own file and a topology naming them;
    /// returns the topology's path.
    pub fn write(&self, devices: &[DeviceToml]) -> PathBuf {
        let mut topo = String::from("name = \"t\"\n");
        for (i, d) in devices.iter().enumerate() {
            let file = format!("dev{i}.toml");
            std::fs::write(self.dir.join(&file), d.to_string()).unwrap();
            topo.push_str(&format!("[[device]]\nfile = \"{file}\"\n"));
        }
        let path = self.dir.join("topology.toml");
        std::fs::write(&path, topo).unwrap();
        path
    }
}

impl Drop for TopologyDir {
    fn drop(&mut self) {
        for s in [&self.lan, &self.wan] {
            let _ = shmnet::shm::Segment::remove_if_unused(s);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `cmd` to its end and asserts that it succeeded (the panic shows
/// what it wrote to stderr); returns its stdout.
pub fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Whether `tool` (a program no one here wrote: ping, nc, tshark, …) is
/// installed; tests that need one skip, saying so, where it is not.
pub fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A TCP socket of `dev` with `buffer` bytes each way, connecting from
/// local port `port` to `to`.
pub fn tcp_connect(
    dev: &mut NetDevice,
    buffer: usize,
    to: impl Into<IpEndpoint>,
    port: u16,
) -> SocketHandle {
    let h = dev.sockets().add(tcp_socket(buffer));
    let (iface, sockets) = dev.parts();
    sockets
        .get_mut::<tcp::Socket>(h)
        .connect(iface.context(), to, port)
        .expect("connect");
    h
}

/// Queues on `s` up to `len` bytes of the probe pattern
/// ([`pattern_byte`]) from offset `from`, as many as its send buffer
/// takes; returns how many it took.
pub fn send_pattern(s: &mut tcp::Socket, from: u64, len: u64) -> u64 {
    let mut chunk = [0u8; 4096];
    let mut sent = 0;
    while sent < len && s.can_send() {
        let n = chunk.len().min((len - sent) as usize);
        for (i, b) in chunk[..n].iter_mut().enumerate() {
            *b = pattern_byte(from + sent + i as u64);
        }
        match s.send_slice(&chunk[..n]) {
            Ok(0) | Err(_) => break,
            Ok(k) => sent += k as u64,
        }
    }
    sent
}
