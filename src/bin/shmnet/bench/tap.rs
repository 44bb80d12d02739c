//! `bench tap`: a Linux TCP client streaming through a TAP port to an echo
//! device on a shared-memory network (both directions, every byte checked
//! by count), against the same client to an echo server on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shmnet::config::{RunMode, Topology};
use shmnet::topology::{RunOptions, run};

use super::Res;
use super::report::measure;

/// The benchmark's TAP port and echo device (addresses no test uses).
const TAP: &str = "shmbench0";
const ECHO: &str = "10.76.250.2:7";

/// Runs the benchmark; a machine where TAP ports cannot be made gets a
/// `skipped` line instead of an error.
pub(super) fn bench_tap(mtu: u32, bytes: Option<u64>, quick: bool, reps: usize) -> Res<String> {
    let bytes = bytes.unwrap_or(if quick { 16 << 20 } else { 256 << 20 });
    let text = format!(
        r#"name = "bench-tap"
        [[tap]]
        name = "{TAP}"
        segment = "bench-tap-lan"
        address = "10.76.250.1/24"
        [[device]]
        name = "echo"
        function = {{ kind = "echo", port = 7, connections = 8 }}
        local = {{ segment = "bench-tap-lan", address = "10.76.250.2/24", mtu = {mtu} }}
        global = {{ segment = "bench-tap-wan", address = "10.176.0.2/16" }}
        "#
    );
    let topo = Topology::from_toml(&text, "bench tap", ".".as_ref()).map_err(|e| e.to_string())?;
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let opts = RunOptions {
        mode: Some(RunMode::Thread),
        stop: Some(stop),
        ..Default::default()
    };
    // Whether the TAP port is up (Ok), or why the run failed (Err).
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let runner = std::thread::spawn(move || {
        let up = tx.clone();
        let out = run(&topo, &opts, |line| {
            if line.starts_with(&format!("tap {TAP} ready")) {
                let _ = up.send(Ok(()));
            }
        });
        if let Err(e) = &out {
            let _ = tx.send(Err(e.to_string()));
        }
        out.map(|_| ()).map_err(|e| e.to_string())
    });
    let addr: SocketAddr = ECHO.parse().expect("address");
    // Not a packet to the echo device before the TAP interface (and its
    // route) exists: it would leave by the default route.
    let ready = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(up) => up,
        Err(_) => Err("the TAP port did not come up".into()),
    };
    let t0 = Instant::now();
    let ready = ready.and_then(|()| {
        loop {
            if let Ok(c) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                drop(c);
                break Ok(());
            }
            if t0.elapsed() > Duration::from_secs(10) {
                break Err("the echo device behind the TAP port did not answer".to_string());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let result = match ready {
        Err(e) if e.contains("CAP_NET_ADMIN") || e.contains("/dev/net/tun") => {
            let why = e.replace('"', "'");
            Ok(format!("{{\"bench\":\"tap\",\"skipped\":\"{why}\"}}"))
        }
        Err(e) => Err(e),
        Ok(()) => measure(
            &format!("\"bench\":\"tap\",\"mtu\":{mtu},\"bytes\":{bytes}"),
            "Gbit/s",
            "",
            reps,
            || echo_client(addr, bytes),
            || kernel_echo(bytes),
        ),
    };
    stop.store(true, Ordering::Relaxed);
    runner.join().map_err(|_| "the run panicked")??;
    result
}

/// Streams `bytes` to the echo server at `addr` while reading them back;
/// returns Gbit/s of payload each way.
fn echo_client(addr: SocketAddr, bytes: u64) -> Res<f64> {
    let io = |e: std::io::Error| e.to_string();
    let mut c = TcpStream::connect(addr).map_err(io)?;
    c.set_nodelay(true).map_err(io)?;
    let mut r = c.try_clone().map_err(io)?;
    let start = Instant::now();
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < bytes {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok(got)
    });
    let buf = vec![0x5au8; 256 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(buf.len() as u64) as usize;
        c.write_all(&buf[..n]).map_err(io)?;
        sent += n as u64;
    }
    let got = reader.join().map_err(|_| "reader panicked")?.map_err(io)?;
    let secs = start.elapsed().as_secs_f64();
    if got != bytes {
        return Err(format!("{got} of {bytes} bytes came back"));
    }
    Ok(bytes as f64 * 8.0 / secs / 1e9)
}

/// The same client against an echo server on 127.0.0.1.
fn kernel_echo(bytes: u64) -> Res<f64> {
    let io = |e: std::io::Error| e.to_string();
    let l = TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let addr = l.local_addr().map_err(io)?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut c, _) = l.accept()?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = c.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            c.write_all(&buf[..n])?;
        }
    });
    let rate = echo_client(addr, bytes);
    let _ = server.join();
    rate
}
