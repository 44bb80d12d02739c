//! A chain of devices as threads, client → function device(s) → server,
//! and TCP through it.

use std::time::Instant;

use shmnet::config::DeviceSettings;
use shmnet::shm::SegmentKind;
use shmnet::stack::NetDevice;
use shmnet::testing::DeviceToml;
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use super::tcp::{hang_up, listen, serve};
use super::{PORT, Res, SOCK_BUF, TIMEOUT, unique};

/// The device files of a chain client → `middles` → server: network i
/// joins device i and i+1, addresses 10.(10+i).0.0/24.
pub(super) fn chain_configs(functions: &[&str]) -> Res<Vec<DeviceSettings>> {
    let n = functions.len();
    let nets: Vec<String> = (0..=n).map(|i| unique(&format!("net{i}"))).collect();
    let net = |i: usize, host: u8| format!("10.{}.0.{host}", 10 + i);
    let on = |i: usize, host: u8| (&nets[i], format!("{}/24", net(i, host)));
    let server_net = format!("10.{}.0.0/24", 10 + n);
    let mut files = Vec::new();
    files.push(
        DeviceToml::new("chain-client", on(0, 1), (unique("cw"), "10.200.0.1/16"))
            .route(&server_net, net(0, 254)),
    );
    for (k, f) in functions.iter().enumerate() {
        let mut d = DeviceToml::new(format!("chain-{k}"), on(k, 254), on(k + 1, 1))
            .forward()
            .function(*f);
        if k + 1 < n {
            d = d.route(&server_net, net(k + 1, 254));
        }
        if k > 0 {
            // Back to the client through the previous device's global address.
            d = d.route("10.10.0.0/24", net(k, 1));
        }
        files.push(d);
    }
    files.push(
        DeviceToml::new("chain-server", on(n, 2), (unique("sw"), "10.201.0.2/16"))
            .route("10.10.0.0/24", net(n, 1)),
    );
    files
        .iter()
        .map(|d| d.parse().map_err(|e| e.to_string()))
        .collect()
}

/// Where the chain's client connects for function `name`: the server,
/// unless the function puts another address in front of it.
pub(super) fn chain_destination(name: &str) -> Option<IpAddress> {
    (name == "balancer").then_some(IpAddress::v4(10, 11, 0, 100))
}

/// TCP from the chain's client to a sink on its server (or to `dst`, which
/// leads there), `bytes` of `data` repeated; returns seconds.
pub(super) fn chain_tcp(
    functions: &[&str],
    dst: Option<IpAddress>,
    data: &[u8],
    bytes: u64,
) -> Res<f64> {
    let cfgs = chain_configs(functions)?;
    let n = functions.len();
    let mut running = Vec::new();
    let mut server =
        NetDevice::new(&cfgs[n + 1], SegmentKind::InProcess).map_err(|e| e.to_string())?;
    let sh = listen(&mut server);
    let handle = server.handle();
    running.push((
        handle,
        std::thread::spawn(move || {
            serve(&mut server, sh, false, false);
        }),
    ));
    for c in &cfgs[1..=n] {
        let (h, t) = NetDevice::new(c, SegmentKind::InProcess)
            .map_err(|e| e.to_string())?
            .spawn();
        running.push((h, std::thread::spawn(move || drop(t.join()))));
    }
    let result = (|| {
        let mut dev =
            NetDevice::new(&cfgs[0], SegmentKind::InProcess).map_err(|e| e.to_string())?;
        let h = dev
            .sockets()
            .add(shmnet::functions::diag::tcp_socket(SOCK_BUF));
        let (iface, sockets) = dev.parts();
        let dst = dst.unwrap_or(IpAddress::v4(10, 10 + n as u8, 0, 2));
        sockets
            .get_mut::<tcp::Socket>(h)
            .connect(iface.context(), (dst, PORT), 49152)
            .map_err(|e| format!("connect: {e}"))?;
        let start = Instant::now();
        let mut sent = 0u64;
        let mut err = None;
        dev.run_until(|d| {
            let s = d.sockets().get_mut::<tcp::Socket>(h);
            while sent < bytes && s.can_send() {
                let off = (sent % data.len() as u64) as usize;
                let chunk = &data[off..data.len().min(off + (bytes - sent) as usize)];
                match s.send_slice(chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => sent += k as u64,
                }
            }
            if sent == bytes && s.send_queue() == 0 {
                return true;
            }
            if start.elapsed() > TIMEOUT {
                err = Some(format!("timed out after {sent} bytes ({:?})", s.state()));
            }
            err.is_some()
        });
        let secs = start.elapsed().as_secs_f64();
        hang_up(&mut dev, h);
        err.map_or(Ok(secs), Err)
    })();
    for (h, t) in running {
        if std::env::var_os("SHMNET_BENCH_STATS").is_some() {
            eprintln!("{:?}", h.stats());
        }
        h.stop();
        let _ = t.join();
    }
    result
}
