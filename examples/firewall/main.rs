//! A stateful firewall, built in this program: the inside may open TCP
//! connections to the echo port outside, nothing else gets through. One
//! allowed connection and two blocked attempts, then the firewall's
//! counters: packets per rule, accepted, dropped.
//!
//! ```text
//! client, inside-server ─fw-lan-a─ fw ─fw-lan-b─ outside-server, scanner
//! ```
//!
//! ```sh
//! cargo run --release --example firewall
//! ```
//!
//! The same topology as a file: `examples/firewall/topology.toml`.

#[path = "../common/mod.rs"]
mod common;
use common::{device, stop, tcp_echo};

use std::error::Error;
use std::time::{Duration, Instant};

use shmnet::functions::FunctionConfig;
use shmnet::functions::echo::EchoConfig;
use shmnet::functions::firewall::{Action, Direction, FirewallConfig, RuleConfig};
use shmnet::functions::matching::PortSpec;
use shmnet::functions::socket::udp_socket;
use shmnet::smoltcp::socket::udp;
use shmnet::smoltcp::wire::{IpAddress, IpEndpoint};
use shmnet::stack::NetDevice;

const INSIDE_SERVER: IpAddress = IpAddress::v4(10, 0, 0, 3);
const OUTSIDE_SERVER: IpAddress = IpAddress::v4(10, 1, 0, 2);

fn main() -> Result<(), Box<dyn Error>> {
    let echo = || FunctionConfig::Echo(EchoConfig::default());
    let inside_server = device(
        r#"name = "inside-server"
        local = { segment = "fw-lan-a", address = "10.0.0.3/24" }
        global = { segment = "fw-inside-wan", address = "10.201.0.3/16" }
        route = [{ to = "10.1.0.0/24", via = "10.0.0.254" }]"#,
        echo(),
    )?
    .spawn();
    let outside_server = device(
        r#"name = "outside-server"
        local = { segment = "fw-lan-b", address = "10.1.0.2/24" }
        global = { segment = "fw-outside-wan", address = "10.202.0.2/16" }
        route = [{ to = "10.0.0.0/24", via = "10.1.0.254" }]"#,
        echo(),
    )?
    .spawn();

    // The firewall: its local network is the inside, its global one the
    // outside. Rule 0 lets the inside reach TCP port 7, rule 1 lets pings
    // out; the default policy drops the rest. Replies need no rule.
    let accept_out = |proto: &str, dport: Option<u16>| RuleConfig {
        action: Action::Accept,
        direction: Direction::Out,
        proto: Some(proto.into()),
        dport: dport.map(PortSpec::from),
        ..RuleConfig::default()
    };
    let rules = FirewallConfig {
        default_policy: Action::Drop,
        rules: vec![accept_out("tcp", Some(7)), accept_out("icmp", None)],
        ..FirewallConfig::default()
    };
    let fw = device(
        r#"name = "fw"
        forward = true
        local = { segment = "fw-lan-a", address = "10.0.0.254/24" }
        global = { segment = "fw-lan-b", address = "10.1.0.254/24" }"#,
        FunctionConfig::Firewall(rules),
    )?
    .spawn();

    // Two devices driven from here: a client inside, a scanner outside.
    let mut client = device(
        r#"name = "client"
        local = { segment = "fw-lan-a", address = "10.0.0.1/24" }
        global = { segment = "fw-client-wan", address = "10.100.0.1/16" }
        route = [{ to = "10.1.0.0/24", via = "10.0.0.254" }]"#,
        FunctionConfig::Passthrough,
    )?;
    let mut scanner = device(
        r#"name = "scanner"
        local = { segment = "fw-lan-b", address = "10.1.0.66/24" }
        global = { segment = "fw-scanner-wan", address = "10.166.0.66/16" }
        route = [{ to = "10.0.0.0/24", via = "10.1.0.254" }]"#,
        FunctionConfig::Passthrough,
    )?;

    let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let echoed = tcp_echo(&mut client, 49152, (OUTSIDE_SERVER, 7), &data, 10)?;
    if echoed != data {
        return Err("client: the echo over the allowed connection came back wrong".into());
    }
    println!(
        "client  -> 10.1.0.2 tcp/7: allowed, {} bytes echoed intact",
        data.len()
    );
    match udp_echo(&mut client, (OUTSIDE_SERVER, 7), b"let me out") {
        Ok(_) => return Err("client: the UDP datagram got through the firewall".into()),
        Err(why) => println!("client  -> 10.1.0.2 udp/7: blocked ({why})"),
    }
    match tcp_echo(&mut scanner, 49152, (INSIDE_SERVER, 7), b"let me in", 1) {
        Ok(_) => return Err("scanner: connected to the inside server".into()),
        Err(why) => println!("scanner -> 10.0.0.3 tcp/7: blocked ({why})"),
    }

    // A rule sees a connection's first packet; the rest of it, replies
    // included, passes as an established connection.
    let stats = stop(fw)?.stats();
    let count = |name: &str| stats.function_counter(name).unwrap_or(0);
    println!(
        "fw: packets matched by rule 0 (tcp/7 out) {}, rule 1 (icmp out) {}; \
         connections tracked {}; packets accepted {}, dropped {}",
        count("rule0_packets"),
        count("rule1_packets"),
        count("connections_created"),
        count("accepted"),
        count("dropped"),
    );
    if count("rule0_packets") == 0 || count("dropped") < 2 {
        return Err("the firewall's counters do not show the allowed and blocked traffic".into());
    }
    stop(inside_server)?;
    stop(outside_server)?;
    Ok(())
}

/// Sends one UDP datagram to the echo server `to` and returns the echo;
/// an error if none comes within a second.
fn udp_echo(dev: &mut NetDevice, to: (IpAddress, u16), data: &[u8]) -> Result<Vec<u8>, String> {
    let h = dev.sockets().add(udp_socket(4, 4096));
    let socket = dev.sockets().get_mut::<udp::Socket>(h);
    socket.bind(49153).map_err(|e| e.to_string())?;
    socket
        .send_slice(data, IpEndpoint::from(to))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut echo = None;
    dev.run_until(|d| {
        if let Ok((b, _)) = d.sockets().get_mut::<udp::Socket>(h).recv() {
            echo = Some(b.to_vec());
        }
        echo.is_some() || Instant::now() > deadline
    });
    dev.sockets().remove(h);
    echo.ok_or_else(|| "no echo within 1 s".into())
}
