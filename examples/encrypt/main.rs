//! Encryption on an untrusted hop, built in this program: e1 and e2 carry
//! everything between their two LANs as ESP (RFC 4303, AES-GCM). The
//! client streams data through the tunnel to an echo server while an
//! attacker on the hop corrupts one ESP packet and replays another; e2
//! rejects both, TCP sends the lost data again, and the stream arrives
//! intact. The counters show packets encrypted, decrypted, failing
//! authentication and replayed.
//!
//! ```text
//! client ─en-lan-a─ e1 ═en-hop═ e2 ─en-lan-b─ server
//! ```
//!
//! ```sh
//! cargo run --release --example encrypt
//! ```
//!
//! The same topology as a file: `examples/encrypt/topology.toml`. The
//! attacker is a wrapper around e1's function: a device runs any
//! `Function`, built-in or your own.

#[path = "../common/mod.rs"]
mod common;
use common::{device, stop, tcp_echo};

use std::error::Error;
use std::net::Ipv4Addr;

use shmnet::config::DeviceConfig;
use shmnet::functions::echo::EchoConfig;
use shmnet::functions::encrypt::{EncryptConfig, IPPROTO_ESP, SaConfig};
use shmnet::functions::{
    Emit, Frame, Function, FunctionConfig, FunctionKind, SocketContext, Verdict, build,
};
use shmnet::shm::SegmentKind;
use shmnet::smoltcp::time::Instant as DeviceTime;
use shmnet::smoltcp::wire::IpAddress;
use shmnet::stack::{NetDevice, Role};

const SERVER: IpAddress = IpAddress::v4(10, 3, 0, 2);
/// AES-128 key || 4-byte salt, one per direction. Examples only: make your
/// own, e.g. with `openssl rand -hex 20`.
const KEY_E1_TO_E2: &str = "4c80cdefbb5d10da906ac73c3613a6342e443b68";
const KEY_E2_TO_E1: &str = "feffe9928665731c6d6a8f9467308308cafebabe";

fn main() -> Result<(), Box<dyn Error>> {
    let server = device(
        r#"name = "server"
        local = { segment = "en-lan-b", address = "10.3.0.2/24" }
        global = { segment = "en-server-wan", address = "10.200.0.2/16" }
        route = [{ to = "10.0.0.0/24", via = "10.3.0.254" }]"#,
        FunctionConfig::Echo(EchoConfig::default()),
    )?
    .spawn();

    // Each end: its address and its peer's on the hop (the global
    // network), the SA it sends with and the SAs it accepts.
    let sa = |spi, key: &str| SaConfig {
        spi,
        key: Some(key.into()),
        key_file: None,
    };
    let tunnel = |me: Ipv4Addr, peer: Ipv4Addr, outbound: SaConfig, inbound: SaConfig| {
        FunctionConfig::Encrypt(EncryptConfig {
            local_address: me,
            peer_address: peer,
            hop: Role::Global,
            outbound,
            inbound: vec![inbound],
            replay_window: 64,
        })
    };
    let (e1_hop, e2_hop) = (Ipv4Addr::new(10, 2, 0, 1), Ipv4Addr::new(10, 2, 0, 2));
    let e2 = device(
        r#"name = "e2"
        forward = true
        local = { segment = "en-lan-b", address = "10.3.0.254/24" }
        global = { segment = "en-hop", address = "10.2.0.2/24" }
        route = [{ to = "10.0.0.0/24", via = "10.2.0.1" }]"#,
        tunnel(
            e2_hop,
            e1_hop,
            sa(0x2002, KEY_E2_TO_E1),
            sa(0x1001, KEY_E1_TO_E2),
        ),
    )?
    .spawn();
    let e1_function = tunnel(
        e1_hop,
        e2_hop,
        sa(0x1001, KEY_E1_TO_E2),
        sa(0x2002, KEY_E2_TO_E1),
    );
    let e1_settings = DeviceConfig::from_toml(
        r#"name = "e1"
        forward = true
        local = { segment = "en-lan-a", address = "10.0.0.254/24" }
        global = { segment = "en-hop", address = "10.2.0.1/24" }
        route = [{ to = "10.3.0.0/24", via = "10.2.0.2" }]"#,
        "e1",
    )?;
    let attacker = Attacker {
        inner: build(&e1_function)?,
        seen: 0,
        copy: None,
        replay: None,
    };
    let e1 = NetDevice::with_function(
        &e1_settings.spec,
        Box::new(attacker),
        SegmentKind::InProcess,
    )?
    .spawn();
    let mut client = device(
        r#"name = "client"
        local = { segment = "en-lan-a", address = "10.0.0.1/24" }
        global = { segment = "en-client-wan", address = "10.100.0.1/16" }
        route = [{ to = "10.3.0.0/24", via = "10.0.0.254" }]"#,
        FunctionConfig::Passthrough,
    )?;

    let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let echoed = tcp_echo(&mut client, 49152, (SERVER, 7), &data, 10)?;
    if echoed != data {
        return Err("the echo through the tunnel came back wrong".into());
    }
    println!(
        "client: {} bytes echoed intact through the tunnel",
        data.len()
    );

    let (e1, e2) = (stop(e1)?.stats(), stop(e2)?.stats());
    for s in [&e1, &e2] {
        let count = |name: &str| s.function_counter(name).unwrap_or(0);
        println!(
            "{}: encrypted {} packets, decrypted {}; rejected {} failing authentication, {} replayed",
            s.name,
            count("encrypted"),
            count("decrypted"),
            count("auth_failed"),
            count("replayed"),
        );
    }
    let count = |name: &str| e2.function_counter(name).unwrap_or(0);
    if count("auth_failed") != 1 || count("replayed") != 1 || count("decrypted") == 0 {
        return Err("e2 did not reject exactly the corrupted and the replayed packet".into());
    }
    stop(server)?;
    Ok(())
}

/// An attacker on the hop, as a wrapper around e1's encryption: it keeps
/// a copy of the 50th ESP packet, flips the last byte (part of the ICV)
/// of the 100th as it leaves, and then sends the copy again (a replay).
/// It passes on the hooks the encryption implements (the frames, the
/// link it learns at attach, its counters); the others keep the trait's
/// no-op defaults.
struct Attacker {
    inner: Box<dyn Function>,
    seen: u32,
    copy: Option<Vec<u8>>,
    replay: Option<Vec<u8>>,
}

impl Function for Attacker {
    fn kind(&self) -> FunctionKind {
        FunctionKind::packet(self.inner.name())
    }

    fn on_ingress(&mut self, now: DeviceTime, from: Role, frame: &mut Frame<'_>) -> Verdict {
        let verdict = self.inner.on_ingress(now, from, frame);
        if verdict == Verdict::Modified {
            frame.reparse();
            if frame.ip().is_some_and(|ip| ip.proto == IPPROTO_ESP) {
                self.seen += 1;
                if self.seen == 50 {
                    self.copy = Some(frame.bytes().to_vec());
                }
                if self.seen == 100 {
                    let last = frame.len() - 1;
                    frame.bytes_mut()[last] ^= 1;
                    self.replay = self.copy.take();
                }
            }
        }
        verdict
    }
    /// Sends the replayed copy; it is forwarded like any frame.
    fn poll_transmit(&mut self, now: DeviceTime, buf: &mut [u8]) -> Option<Emit> {
        let Some(frame) = self.replay.take() else {
            return self.inner.poll_transmit(now, buf);
        };
        buf[..frame.len()].copy_from_slice(&frame);
        Some(Emit {
            len: frame.len(),
            via: None,
        })
    }
    fn attach(&mut self, cx: &mut SocketContext<'_>) {
        self.inner.attach(cx)
    }
    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        self.inner.counters(visit)
    }
}
