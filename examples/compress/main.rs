//! Compression on a slow hop, built in this program: c1 and c2 LZ4-compress
//! the IP payloads crossing the hop between them (IPComp) and restore them
//! on the far side. The client streams text-like data, then random data,
//! through the chain to an echo server; the compressors' counters show how
//! many bytes the hop saved, and that random data travels as it is.
//!
//! ```text
//! client ─cz-lan-a─ c1 ═cz-hop═ c2 ─cz-lan-b─ server
//! ```
//!
//! ```sh
//! cargo run --release --example compress
//! ```
//!
//! The same topology as a file: `examples/compress/topology.toml`.

#[path = "../common/mod.rs"]
mod common;
use common::{device, stop, tcp_echo};

use std::error::Error;

use shmnet::functions::FunctionConfig;
use shmnet::functions::compress::CompressConfig;
use shmnet::functions::echo::EchoConfig;
use shmnet::smoltcp::wire::IpAddress;
use shmnet::stack::{DeviceStats, Role};

const SERVER: IpAddress = IpAddress::v4(10, 3, 0, 2);

fn main() -> Result<(), Box<dyn Error>> {
    let server = device(
        r#"name = "server"
        local = { segment = "cz-lan-b", address = "10.3.0.2/24" }
        global = { segment = "cz-server-wan", address = "10.200.0.2/16" }
        route = [{ to = "10.0.0.0/24", via = "10.3.0.254" }]"#,
        FunctionConfig::Echo(EchoConfig::default()),
    )?
    .spawn();
    // The pair: each compresses payloads of at least `min_size` bytes that
    // head for the hop (its global network) and restores those that come
    // from it.
    let compress = CompressConfig {
        min_size: 128,
        hop: Role::Global,
    };
    let c2 = device(
        r#"name = "c2"
        forward = true
        local = { segment = "cz-lan-b", address = "10.3.0.254/24" }
        global = { segment = "cz-hop", address = "10.2.0.2/24" }
        route = [{ to = "10.0.0.0/24", via = "10.2.0.1" }]"#,
        FunctionConfig::Compress(compress.clone()),
    )?
    .spawn();
    let c1 = device(
        r#"name = "c1"
        forward = true
        local = { segment = "cz-lan-a", address = "10.0.0.254/24" }
        global = { segment = "cz-hop", address = "10.2.0.1/24" }
        route = [{ to = "10.3.0.0/24", via = "10.2.0.2" }]"#,
        FunctionConfig::Compress(compress),
    )?
    .spawn();
    let mut client = device(
        r#"name = "client"
        local = { segment = "cz-lan-a", address = "10.0.0.1/24" }
        global = { segment = "cz-client-wan", address = "10.100.0.1/16" }
        route = [{ to = "10.3.0.0/24", via = "10.0.0.254" }]"#,
        FunctionConfig::Passthrough,
    )?;

    // About 1 MB of access-log lines, then 256 KiB that no compressor can
    // shrink.
    let text: Vec<u8> = (0..30_000u32)
        .map(|i| format!("{i:07} 10.0.0.1 GET /item/{} 200\n", i % 97))
        .collect::<String>()
        .into_bytes();
    let mut x = 0x9e37_79b9_7f4a_7c15u64; // xorshift64
    let random: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for (what, data, port) in [("text", &text, 49152), ("random data", &random, 49153)] {
        let echoed = tcp_echo(&mut client, port, (SERVER, 7), data, 10)?;
        if echoed != *data {
            return Err(format!("the echo of the {what} came back wrong").into());
        }
        println!("client: {} bytes of {what} echoed intact", data.len());
    }

    let (c1, c2) = (stop(c1)?.stats(), stop(c2)?.stats());
    for s in [&c1, &c2] {
        let count = |name: &str| s.function_counter(name).unwrap_or(0);
        println!(
            "{}: compressed {} packets, {} payload bytes -> {} ({:.0} % saved); \
             {} incompressible sent as they were; restored {} from the hop",
            s.name,
            count("compressed"),
            count("bytes_in"),
            count("bytes_out"),
            100.0 * count("bytes_saved") as f64 / count("bytes_in").max(1) as f64,
            count("skipped_incompressible"),
            count("decompressed"),
        );
    }
    check(&c1, &c2)?;
    stop(server)?;
    Ok(())
}

/// Each end compressed the text at least 2:1, left the random data alone,
/// and restored what its peer compressed.
fn check(c1: &DeviceStats, c2: &DeviceStats) -> Result<(), String> {
    for (me, peer) in [(c1, c2), (c2, c1)] {
        let count = |s: &DeviceStats, name: &str| s.function_counter(name).unwrap_or(0);
        if count(me, "bytes_out") * 2 > count(me, "bytes_in")
            || count(me, "skipped_incompressible") == 0
            || count(peer, "decompressed") < count(me, "compressed")
        {
            return Err(format!(
                "{}: the counters do not show the compression",
                me.name
            ));
        }
    }
    Ok(())
}
