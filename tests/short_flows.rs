//! Many short connections in a row, as request/response traffic makes
//! them: each uses a socket from the device's pool (`NetDevice::add_tcp`,
//! returned by `remove_socket`), and every byte of every connection
//! arrives intact although sockets and their buffers are reused.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shmnet::shm::SegmentKind;
use shmnet::stack::NetDevice;
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

const ECHO: &str = r#"{ kind = "echo", connections = 4 }"#;
const PASS: &str = r#"{ kind = "passthrough" }"#;

/// One connection to the echo server: sends `data`, checks the echo
/// byte for byte, closes, and gives the socket back to the pool.
fn echo_once(dev: &mut NetDevice, port: u16, data: &[u8]) -> Result<(), String> {
    let h = dev.add_tcp();
    let (iface, sockets) = dev.parts();
    sockets
        .get_mut::<tcp::Socket>(h)
        .connect(iface.context(), (IpAddress::v4(10, 0, 0, 2), 7), port)
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sent, mut got) = (0, 0);
    let mut result = Ok(());
    let t0 = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        if sent < data.len() && s.can_send() {
            sent += s.send_slice(&data[sent..]).unwrap_or(0);
        }
        while let Ok(n) = s.recv_slice(&mut buf) {
            if n == 0 {
                break;
            }
            if got + n > data.len() || buf[..n] != data[got..got + n] {
                result = Err(format!("echo differs at byte {got} of {}", data.len()));
                return true;
            }
            got += n;
        }
        if got == data.len() {
            s.close();
            return true;
        }
        if s.state() == tcp::State::Closed || t0.elapsed() > Duration::from_secs(30) {
            result = Err(format!(
                "{:?} after {sent} sent, {got} of {} echoed",
                s.state(),
                data.len()
            ));
            return true;
        }
        false
    });
    let t0 = Instant::now();
    dev.run_until(|d| {
        let st = d.sockets().get::<tcp::Socket>(h).state();
        matches!(st, tcp::State::Closed | tcp::State::TimeWait)
            || t0.elapsed() > Duration::from_secs(5)
    });
    dev.remove_socket(h);
    result
}

fn many_short_connections(kind: SegmentKind, mtu: u32) {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let server = NetDevice::new(&settings("server", &lan, &wan, 2, mtu, ECHO), kind)
        .expect("echo server")
        .spawn();
    let mut s = settings("client", &lan, &wan, 1, mtu, PASS);
    s.spec.sockets.tcp_buffer = 256 * 1024;
    let mut dev = NetDevice::new(&s, kind).expect("client device");
    let mut rng = Rng(0x5eed);
    let connections = 120;
    for k in 0..connections {
        // From a few bytes to more than the socket buffer.
        let len = 1 + rng.below(if k % 10 == 0 { 600_000 } else { 20_000 }) as usize;
        let mut data = vec![0u8; len];
        rng.fill(&mut data);
        if let Err(e) = echo_once(&mut dev, 40000 + k, &data) {
            panic!("connection {k} ({len} bytes): {e}");
        }
    }
    let (reused, allocated) = dev.socket_pool().reuse_counts();
    assert_eq!(reused + allocated, connections as u64);
    assert!(
        allocated <= 2,
        "sockets were allocated afresh {allocated} times for {connections} connections"
    );
    // A socket from the pool has the device's buffer size.
    let h = dev.add_tcp();
    assert_eq!(
        dev.sockets().get::<tcp::Socket>(h).recv_capacity(),
        256 * 1024
    );
    stop_all([server]);
}

#[test]
fn many_short_connections_thread_mtu_1500() {
    many_short_connections(SegmentKind::InProcess, 1500);
}

#[test]
fn many_short_connections_process_mtu_65535() {
    many_short_connections(SegmentKind::Shared, 65535);
}
