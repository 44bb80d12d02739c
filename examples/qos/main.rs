//! QoS on a shaped uplink, built in this program: two clients stream to an
//! echo server at once through a qos device whose link towards the server
//! is shaped to 10 Mbit/s. Gold (client-gold's traffic) has priority and
//! up to 7.5 Mbit/s of it; bronze (everything else) gets what gold leaves.
//! Prints each flow's rate and each class's packets, bytes, drops and ECN
//! marks.
//!
//! ```text
//! client-gold, client-bronze ─qos-lan-a─ qos ═10 Mbit/s═ qos-lan-b ─ server
//! ```
//!
//! ```sh
//! cargo run --release --example qos
//! ```
//!
//! The same topology as a file, at 40 and 30 Mbit/s:
//! `examples/qos/topology.toml`. Slower here so that the shaping, not a
//! busy CPU, sets the pace on any machine.

#[path = "../common/mod.rs"]
mod common;
use common::{device, stop, tcp_echo};

use std::error::Error;
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::Instant;

use shmnet::functions::FunctionConfig;
use shmnet::functions::echo::EchoConfig;
use shmnet::functions::qos::QosConfig;
use shmnet::smoltcp::wire::IpAddress;

const SERVER: IpAddress = IpAddress::v4(10, 1, 0, 2);
/// Bytes each client streams.
const BYTES: usize = 512 << 10;
/// The link's rate and gold's, in Mbit/s.
const LINK: f64 = 10.0;
const GOLD: f64 = 7.5;

fn main() -> Result<(), Box<dyn Error>> {
    let server = device(
        r#"name = "server"
        local = { segment = "qos-lan-b", address = "10.1.0.2/24" }
        global = { segment = "qos-server-wan", address = "10.200.0.2/16" }
        route = [{ to = "10.0.0.0/24", via = "10.1.0.254" }]"#,
        FunctionConfig::Echo(EchoConfig::default()),
    )?
    .spawn();
    // The classes, in match order, as a config file's [function] section.
    let classes: QosConfig = toml::from_str(&format!(
        r#"
        default = "bronze"
        direction = "out"            # shape what leaves towards the server
        rate = "{LINK}mbit"          # the uplink
        [[class]]
        name = "voice"
        priority = 0
        dscp = [46]                  # EF
        rate = "2mbit"
        [[class]]
        name = "gold"
        priority = 1
        src = "10.0.0.1/32"
        rate = "{GOLD}mbit"
        [[class]]
        name = "bronze"
        priority = 2
        over_limit = "mark"          # CE-mark ECN-capable packets past mark_at
        queue = 8388608              # bytes: holds a client's whole TCP window
        "#
    ))?;
    let qos = device(
        r#"name = "qos"
        forward = true
        local = { segment = "qos-lan-a", address = "10.0.0.254/24" }
        global = { segment = "qos-lan-b", address = "10.1.0.254/24" }"#,
        FunctionConfig::Qos(classes),
    )?
    .spawn();

    // Each client on a thread of its own, both starting at once.
    let start = Arc::new(Barrier::new(2));
    let client = |name: &str, host: u8| -> Result<JoinHandle<_>, Box<dyn Error>> {
        let mut dev = device(
            &format!(
                r#"name = "{name}"
                local = {{ segment = "qos-lan-a", address = "10.0.0.{host}/24" }}
                global = {{ segment = "qos-{name}-wan", address = "10.10{host}.0.1/16" }}
                route = [{{ to = "10.1.0.0/24", via = "10.0.0.254" }}]"#
            ),
            FunctionConfig::Passthrough,
        )?;
        let start = Arc::clone(&start);
        Ok(std::thread::spawn(move || {
            let data: Vec<u8> = (0..BYTES).map(|i| (i % 251) as u8).collect();
            start.wait();
            let t0 = Instant::now();
            let echoed = tcp_echo(&mut dev, 49152, (SERVER, 7), &data, 20)?;
            if echoed != data {
                return Err("the echo came back wrong".to_string());
            }
            Ok(t0.elapsed().as_secs_f64())
        }))
    };
    let (gold, bronze) = (client("client-gold", 1)?, client("client-bronze", 2)?);
    let gold = gold.join().map_err(|_| "client-gold panicked")?;
    let bronze = bronze.join().map_err(|_| "client-bronze panicked")?;
    let (gold, bronze) = (
        gold.map_err(|e| format!("client-gold: {e}"))?,
        bronze.map_err(|e| format!("client-bronze: {e}"))?,
    );
    let mbit = |bytes: usize, secs: f64| bytes as f64 * 8.0 / secs / 1e6;
    let (gold_rate, link_rate) = (mbit(BYTES, gold), mbit(2 * BYTES, bronze));
    println!("client-gold:   {BYTES} bytes echoed intact in {gold:.2} s ({gold_rate:.1} Mbit/s)");
    println!("client-bronze: {BYTES} bytes echoed intact in {bronze:.2} s");
    println!(
        "both: {} bytes in {bronze:.2} s ({link_rate:.1} Mbit/s)",
        2 * BYTES
    );

    let stats = stop(qos)?.stats();
    let count = |class: &str, what: &str| {
        stats
            .function_counter(&format!("class.{class}.{what}"))
            .unwrap_or(0)
    };
    for class in ["voice", "gold", "bronze"] {
        println!(
            "qos class {class:6}: {:5} packets, {:8} bytes, {} dropped, {} ECN-marked",
            count(class, "packets"),
            count(class, "bytes"),
            count(class, "dropped"),
            count(class, "marked"),
        );
    }
    // Gold had priority up to its rate, so it finished first; neither
    // gold nor the link went faster than its rate (give or take the
    // buckets' bursts). smoltcp does not send ECN-capable packets, so
    // bronze marks none; its queue holds a client's whole TCP window, so it
    // drops none either.
    if gold >= bronze {
        return Err("gold did not finish before bronze".into());
    }
    if gold_rate > 1.1 * GOLD || link_rate > 1.1 * LINK {
        return Err("gold or the link went faster than its rate".into());
    }
    if count("gold", "bytes") < BYTES as u64 || count("bronze", "bytes") < BYTES as u64 {
        return Err("the classes did not carry both flows".into());
    }
    stop(server)?;
    Ok(())
}
