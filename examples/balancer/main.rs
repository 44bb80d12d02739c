//! An L4 load balancer, built in this program: a virtual IP in front of
//! three echo backends (Maglev hashing, NAT). A client opens thirty
//! connections to the VIP and the balancer spreads them over the backends;
//! then one backend dies, the balancer's TCP health checks take it out, and
//! thirty more connections go to the other two. Prints the flows each
//! backend got.
//!
//! ```text
//! client ─lb-front─ lb ─lb-back─ backend-0..2 (10.12.0.2..4)
//! ```
//!
//! ```sh
//! cargo run --release --example balancer
//! ```
//!
//! The same topology as a file (six clients, a UDP service too):
//! `examples/balancer/topology.toml`.

#[path = "../common/mod.rs"]
mod common;
use common::{device, stop, tcp_echo};

use std::error::Error;
use std::time::{Duration, Instant};

use shmnet::functions::FunctionConfig;
use shmnet::functions::balancer::{BalancerConfig, Check, ServiceConfig};
use shmnet::functions::echo::EchoConfig;
use shmnet::functions::matching::ConfigDuration;
use shmnet::smoltcp::wire::IpAddress;
use shmnet::stack::DeviceStats;

const VIP: IpAddress = IpAddress::v4(10, 20, 0, 100);
const BACKENDS: [&str; 3] = ["10.12.0.2:7", "10.12.0.3:7", "10.12.0.4:7"];
const CONNECTIONS: u16 = 30;

fn main() -> Result<(), Box<dyn Error>> {
    let mut backends = Vec::new();
    for (i, host) in [2, 3, 4].into_iter().enumerate() {
        let toml = format!(
            r#"name = "backend-{i}"
            local = {{ segment = "lb-back", address = "10.12.0.{host}/24" }}
            global = {{ segment = "lb-backend-{i}-wan", address = "10.20{i}.0.2/16" }}
            route = [{{ to = "10.11.0.0/24", via = "10.12.0.254" }}]"#
        );
        let echo = EchoConfig {
            connections: 8,
            ..EchoConfig::default()
        };
        backends.push(device(&toml, FunctionConfig::Echo(echo))?.spawn());
    }
    // One TCP service: the VIP, its backends, and a health check (a TCP
    // connection to each backend every 200 ms; two failures take it out).
    let service = ServiceConfig {
        name: "echo".into(),
        vip: "10.20.0.100:7".into(),
        proto: Some("tcp".into()),
        backends: BACKENDS.map(String::from).to_vec(),
        check: Some(Check::Tcp),
        interval: ConfigDuration::from_millis(200),
        timeout: Some(ConfigDuration::from_millis(300)),
        fall: 2,
        rise: 2,
        ..ServiceConfig::default()
    };
    let balancer = BalancerConfig {
        services: vec![service],
        ..BalancerConfig::default()
    };
    // In NAT mode the balancer forwards, and is the backends' way back.
    let lb = device(
        r#"name = "lb"
        forward = true
        local = { segment = "lb-front", address = "10.11.0.254/24" }
        global = { segment = "lb-back", address = "10.12.0.254/24" }"#,
        FunctionConfig::Balancer(balancer),
    )?
    .spawn();
    let mut client = device(
        r#"name = "client"
        local = { segment = "lb-front", address = "10.11.0.1/24" }
        global = { segment = "lb-client-wan", address = "10.101.0.1/16" }
        route = [{ to = "10.20.0.0/24", via = "10.11.0.254" }]"#,
        FunctionConfig::Passthrough,
    )?;

    // Every connection from its own port: a new flow, hashed afresh.
    let mut connect = |first_port: u16| -> Result<(), String> {
        for port in first_port..first_port + CONNECTIONS {
            let message = format!("hello from port {port}");
            let echoed = tcp_echo(&mut client, port, (VIP, 7), message.as_bytes(), 10)?;
            if echoed != message.as_bytes() {
                return Err(format!("port {port}: the echo came back wrong"));
            }
        }
        println!("client: {CONNECTIONS} connections to 10.20.0.100:7, every echo intact");
        Ok(())
    };
    connect(49152)?;
    let flows = |s: &DeviceStats| {
        BACKENDS.map(|b| {
            s.function_counter(&format!("backend.{b}.flows"))
                .unwrap_or(0)
        })
    };
    let backends_up = |s: &DeviceStats| s.function_counter("service.echo.backends_up");

    // backend-2 dies; wait for the health checks to notice. (A handle's
    // counters are up to 50 ms old: read them after the wait.)
    let t0 = Instant::now();
    stop(backends.pop().ok_or("no backend")?)?;
    let (before, took) = loop {
        let stats = lb.0.stats();
        if backends_up(&stats) == Some(2) {
            break (flows(&stats), t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err("the health checks did not take backend-2 out".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("lb: flows per backend: {}", show(before));
    println!("backend-2 stopped: the health checks took it out after {took:.1} s");
    connect(49152 + CONNECTIONS)?;
    let after = flows(&stop(lb)?.stats());
    println!("lb: flows per backend in all: {}", show(after));

    if before.contains(&0) {
        return Err("a backend got no connection".into());
    }
    if after[2] != before[2] || after.iter().sum::<u64>() != 2 * u64::from(CONNECTIONS) {
        return Err("connections went to the dead backend, or were not counted".into());
    }
    for b in backends {
        stop(b)?;
    }
    Ok(())
}

/// `10.12.0.2:7 5, 10.12.0.3:7 4, ...`
fn show(flows: [u64; 3]) -> String {
    let each = BACKENDS.iter().zip(flows).map(|(b, n)| format!("{b} {n}"));
    each.collect::<Vec<_>>().join(", ")
}
