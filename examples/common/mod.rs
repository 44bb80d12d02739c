//! What the per-function sample programs share: a device built from a TOML
//! network section and a typed function config, stopping a spawned
//! device, and a TCP exchange with an echo server driven from the
//! program's own device. Included by each `examples/NAME/main.rs` with
//! `#[path = "../common/mod.rs"] mod common;` (cargo does not take this
//! directory for an example: it has no `main.rs`).

use std::error::Error;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shmnet::config::DeviceConfig;
use shmnet::functions::FunctionConfig;
use shmnet::shm::SegmentKind;
use shmnet::smoltcp::socket::tcp;
use shmnet::smoltcp::wire::IpAddress;
use shmnet::stack::{DeviceHandle, NetDevice};

/// A device of this process: networks and routes from TOML, the function
/// as a typed config.
pub fn device(toml: &str, function: FunctionConfig) -> Result<NetDevice, Box<dyn Error>> {
    let mut settings = DeviceConfig::from_toml(toml, "inline")?;
    settings.function = function;
    Ok(NetDevice::new(&settings, SegmentKind::InProcess)?)
}

/// Stops a device started with `NetDevice::spawn` and returns it.
pub fn stop((handle, thread): (DeviceHandle, JoinHandle<NetDevice>)) -> Result<NetDevice, String> {
    handle.stop();
    let name = handle.name();
    thread.join().map_err(|_| format!("{name} panicked"))
}

/// Streams `data` from local port `port` to the echo server `to` over a
/// new TCP connection, closes it and returns what came back; an error if
/// that takes longer than `secs`.
pub fn tcp_echo(
    dev: &mut NetDevice,
    port: u16,
    to: (IpAddress, u16),
    data: &[u8],
    secs: u64,
) -> Result<Vec<u8>, String> {
    let h = dev.add_tcp();
    let (iface, sockets) = dev.parts();
    let connect = sockets
        .get_mut::<tcp::Socket>(h)
        .connect(iface.context(), to, port);
    connect.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut sent, mut echoed) = (0, Vec::new());
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        if s.can_send() {
            sent += s.send_slice(&data[sent..]).unwrap_or(0);
        }
        while s.can_recv() {
            let _ = s.recv(|b| (b.len(), echoed.extend_from_slice(b)));
        }
        echoed.len() >= data.len() || Instant::now() > deadline
    });
    let s = dev.sockets().get_mut::<tcp::Socket>(h);
    let state = s.state();
    if echoed.len() < data.len() {
        s.abort();
        dev.poll();
        dev.remove_socket(h);
        return Err(match state {
            tcp::State::SynSent => format!("no connection within {secs} s"),
            _ => format!(
                "{} of {} bytes echoed in {secs} s",
                echoed.len(),
                data.len()
            ),
        });
    }
    // Both sides close (the echo server closes when we do).
    s.close();
    dev.run_until(|d| {
        !d.sockets().get_mut::<tcp::Socket>(h).is_active() || Instant::now() > deadline
    });
    dev.remove_socket(h);
    Ok(echoed)
}
