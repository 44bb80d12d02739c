//! Policy-based re-routing with failover, built in this program. r1 and
//! r2 are joined by two parallel paths, through a (the routing tables'
//! choice) and through b. Their reroute rule sends the echo traffic (TCP
//! port 7) through b while b answers its ICMP health checks, through a
//! when it does not. The client runs an exchange with the server, b dies,
//! the client runs another (now through a), b comes back, and a third
//! exchange goes through b again. Prints which path each exchange took and
//! the failovers and failbacks.
//!
//! ```text
//! client ─rr-edge1─ r1 ═rr-core1═ { a, b } ═rr-core2═ r2 ─rr-edge2─ server
//! ```
//!
//! ```sh
//! cargo run --release --example reroute
//! ```
//!
//! The same topology as a file (with a second server and rule):
//! `examples/reroute/topology.toml`.

#[path = "../common/mod.rs"]
mod common;
use common::{device, stop, tcp_echo};

use std::error::Error;
use std::time::{Duration, Instant};

use shmnet::functions::FunctionConfig;
use shmnet::functions::echo::EchoConfig;
use shmnet::functions::reroute::RerouteConfig;
use shmnet::smoltcp::wire::IpAddress;
use shmnet::stack::{DeviceHandle, DeviceStats};

const SERVER: IpAddress = IpAddress::v4(10, 2, 0, 2);
const B: &str = r#"name = "b"
    forward = true
    local = { segment = "rr-core1", address = "10.21.0.3/24" }
    global = { segment = "rr-core2", address = "10.22.0.3/24" }
    route = [{ to = "10.1.0.0/24", via = "10.21.0.1" }, { to = "10.2.0.0/24", via = "10.22.0.1" }]"#;

fn main() -> Result<(), Box<dyn Error>> {
    let pass = || FunctionConfig::Passthrough;
    let a = device(
        r#"name = "a"
        forward = true
        local = { segment = "rr-core1", address = "10.21.0.2/24" }
        global = { segment = "rr-core2", address = "10.22.0.2/24" }
        route = [{ to = "10.1.0.0/24", via = "10.21.0.1" }, { to = "10.2.0.0/24", via = "10.22.0.1" }]"#,
        pass(),
    )?
    .spawn();
    let mut b = device(B, pass())?.spawn();
    let server = device(
        r#"name = "server"
        local = { segment = "rr-edge2", address = "10.2.0.2/24" }
        global = { segment = "rr-server-wan", address = "10.200.0.2/16" }
        route = [{ to = "10.1.0.0/24", via = "10.2.0.254" }]"#,
        FunctionConfig::Echo(EchoConfig::default()),
    )?
    .spawn();
    // r1 finds its next hops by device name, r2 by address; both check
    // them with ICMP echo every 100 ms: 3 misses take one down, 2 answers
    // bring it back (and, with `failback`, the traffic too). r1's rule
    // takes the requests, r2's the replies.
    let r1_rules: RerouteConfig = toml::from_str(
        r#"
        failback = true
        next_hop = [
            { name = "a", device = "a", interval = "100ms", fall = 3, rise = 2 },
            { name = "b", device = "b", interval = "100ms", fall = 3, rise = 2 },
        ]
        rule = [{ name = "echo", proto = "tcp", dport = 7, via = ["b", "a"] }]
        "#,
    )?;
    let r2_rules: RerouteConfig = toml::from_str(
        r#"
        failback = true
        next_hop = [
            { name = "a", address = "10.22.0.2", interval = "100ms", fall = 3, rise = 2 },
            { name = "b", address = "10.22.0.3", interval = "100ms", fall = 3, rise = 2 },
        ]
        rule = [{ name = "echo", proto = "tcp", sport = 7, via = ["b", "a"] }]
        "#,
    )?;
    let r1 = device(
        r#"name = "r1"
        forward = true
        local = { segment = "rr-edge1", address = "10.1.0.254/24" }
        global = { segment = "rr-core1", address = "10.21.0.1/24" }
        route = [{ to = "10.2.0.0/24", via = "10.21.0.2" }]     # the table: via a"#,
        FunctionConfig::Reroute(r1_rules),
    )?
    .spawn();
    let r2 = device(
        r#"name = "r2"
        forward = true
        local = { segment = "rr-edge2", address = "10.2.0.254/24" }
        global = { segment = "rr-core2", address = "10.22.0.1/24" }
        route = [{ to = "10.1.0.0/24", via = "10.22.0.2" }]     # the table: via a"#,
        FunctionConfig::Reroute(r2_rules),
    )?
    .spawn();
    let mut client = device(
        r#"name = "client"
        local = { segment = "rr-edge1", address = "10.1.0.1/24" }
        global = { segment = "rr-client-wan", address = "10.100.0.1/16" }
        route = [{ to = "10.2.0.0/24", via = "10.1.0.254" }]"#,
        pass(),
    )?;

    // Three exchanges: b up, b dead, b back. The routers' counters are
    // read when they see b change (a handle's counters can be 50 ms old,
    // and those waits are longer): snapshot i+1 ends exchange i.
    let routers = [&r1.0, &r2.0];
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let mut echo = |port: u16| match tcp_echo(&mut client, port, (SERVER, 7), &data, 10) {
        Ok(echoed) if echoed == data => Ok(()),
        Ok(_) => Err(format!("port {port}: the echo came back wrong")),
        Err(e) => Err(format!("port {port}: {e}")),
    };
    let mut snapshots = vec![wait_for_b(routers, true, "start")?];
    echo(49152)?;
    drop(stop(b)?); // stopped and dropped: its ports leave both networks
    snapshots.push(wait_for_b(routers, false, "b stopped")?);
    echo(49153)?;
    b = device(B, pass())?.spawn();
    snapshots.push(wait_for_b(routers, true, "b restarted")?);
    echo(49154)?;
    let end = [stop(r1)?.stats(), stop(r2)?.stats()];
    snapshots.push(end.clone());

    for (i, (way, when)) in [("b", "b up"), ("a", "b down"), ("b", "b back")]
        .iter()
        .enumerate()
    {
        let via = |hop: &str| packets(&snapshots[i + 1], hop) - packets(&snapshots[i], hop);
        println!(
            "exchange {} ({when:6}): {} bytes echoed intact; {:3} packets via a, {:3} via b",
            i + 1,
            data.len(),
            via("a"),
            via("b"),
        );
        let other = if *way == "a" { "b" } else { "a" };
        if via(way) == 0 || via(other) != 0 {
            return Err(format!("exchange {} did not go via {way}", i + 1).into());
        }
    }
    for s in &end {
        let count = |name: &str| s.function_counter(name).unwrap_or(0);
        println!(
            "{}: failovers {}, failbacks {}",
            s.name,
            count("failovers"),
            count("failbacks")
        );
        if count("failovers") < 1 || count("failbacks") < 1 {
            return Err(format!("{}: no failover and failback", s.name).into());
        }
    }
    for d in [a, b, server] {
        stop(d)?;
    }
    Ok(())
}

/// Packets the routers' rules sent via next hop `hop`.
fn packets(routers: &[DeviceStats; 2], hop: &str) -> u64 {
    let name = format!("next_hop.{hop}.packets");
    routers
        .iter()
        .map(|s| s.function_counter(&name).unwrap_or(0))
        .sum()
}

/// Waits until both routers see next hop b up (or down), says how long
/// that took after `event`, and returns their counters then.
fn wait_for_b(
    routers: [&DeviceHandle; 2],
    up: bool,
    event: &str,
) -> Result<[DeviceStats; 2], String> {
    let t0 = Instant::now();
    let state = if up { "up" } else { "down" };
    loop {
        let stats = routers.map(|r| r.stats());
        if stats
            .iter()
            .all(|s| s.function_counter("next_hop.b.up") == Some(u64::from(up)))
        {
            let took = t0.elapsed().as_secs_f64();
            println!("{event}: both routers see b {state} ({took:.1} s)");
            return Ok(stats);
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(format!("{event}: the routers did not see b {state}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
