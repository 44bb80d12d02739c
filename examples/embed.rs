//! Embedding shmnet: two devices as threads of this program, one running
//! an echo server, the other driven by our own code through its smoltcp
//! sockets.
//!
//! ```sh
//! cargo run --release --example embed
//! ```

use shmnet::smoltcp::socket::tcp;
use shmnet::smoltcp::wire::IpAddress;

use shmnet::config::DeviceConfig;
use shmnet::functions::diag::tcp_socket;
use shmnet::shm::SegmentKind;
use shmnet::stack::NetDevice;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The echo server, configured like any device file.
    let server = DeviceConfig::from_toml(
        r#"
        name = "echo"
        function = { kind = "echo", port = 7 }
        local = { segment = "embed-lan", address = "10.0.0.2/24", mtu = 9000 }
        global = { segment = "embed-wan", address = "10.100.0.2/16" }
        "#,
        "server (inline)",
    )?;
    let (server, server_thread) = NetDevice::new(&server, SegmentKind::InProcess)?.spawn();

    // Our own device: a pass-through function, sockets driven from here.
    let me = DeviceConfig::from_toml(
        r#"
        name = "app"
        local = { segment = "embed-lan", address = "10.0.0.1/24", mtu = 9000 }
        global = { segment = "embed-wan", address = "10.100.0.1/16" }
        "#,
        "app (inline)",
    )?;
    let mut dev = NetDevice::new(&me, SegmentKind::InProcess)?;
    let h = dev.sockets().add(tcp_socket(256 * 1024));
    let (iface, sockets) = dev.parts();
    sockets.get_mut::<tcp::Socket>(h).connect(
        iface.context(),
        (IpAddress::v4(10, 0, 0, 2), 7),
        49152,
    )?;

    let message = b"hello over shared memory";
    let mut sent = false;
    let mut echoed = Vec::new();
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        if s.can_send() && !sent {
            sent = s.send_slice(message) == Ok(message.len());
        }
        if s.can_recv() {
            let _ = s.recv(|b| {
                echoed.extend_from_slice(b);
                (b.len(), ())
            });
        }
        echoed.len() >= message.len()
    });
    println!("echoed: {}", String::from_utf8_lossy(&echoed));
    let stats = dev.stats();
    println!(
        "app: {} frames out by the local adapter, {} by the global one",
        stats.local.tx_frames, stats.global.tx_frames
    );
    server.stop();
    server_thread.join().map_err(|_| "server thread panicked")?;
    Ok(())
}
