//! The kernel reference paths each benchmark is measured against: TCP over
//! 127.0.0.1, a Unix datagram pair for frames, UDP round trips to a
//! blocking thread.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::report::median;
use super::{RR_SIZE, Res};

/// TCP bulk over 127.0.0.1: returns seconds from the first byte sent to
/// the last received.
pub(super) fn kernel_bulk(bytes: u64) -> Res<f64> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let rx = std::thread::spawn(move || -> std::io::Result<(u64, Instant)> {
        let (mut c, _) = l.accept()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = c.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total >= bytes {
                break;
            }
        }
        Ok((total, Instant::now()))
    });
    let tx = std::thread::spawn(move || -> std::io::Result<Instant> {
        let mut c = TcpStream::connect(addr)?;
        let buf = vec![0xa5u8; 64 * 1024];
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(buf.len() as u64) as usize;
            c.write_all(&buf[..n])?;
            sent += n as u64;
        }
        c.shutdown(std::net::Shutdown::Write)?;
        Ok(start)
    });
    let start = tx
        .join()
        .map_err(|_| "sender panicked")?
        .map_err(|e| e.to_string())?;
    let (total, end) = rx
        .join()
        .map_err(|_| "receiver panicked")?
        .map_err(|e| e.to_string())?;
    if total != bytes {
        return Err(format!("kernel sink got {total} of {bytes} bytes"));
    }
    Ok((end - start).as_secs_f64())
}

/// `count` 64-byte round trips over 127.0.0.1 (Nagle off); returns seconds.
pub(super) fn kernel_rr(count: u64) -> Res<f64> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut c, _) = l.accept()?;
        c.set_nodelay(true)?;
        let mut buf = [0u8; RR_SIZE];
        for _ in 0..count {
            c.read_exact(&mut buf)?;
            c.write_all(&buf)?;
        }
        Ok(())
    });
    let client = std::thread::spawn(move || -> std::io::Result<f64> {
        let mut c = TcpStream::connect(addr)?;
        c.set_nodelay(true)?;
        let mut buf = [0x5au8; RR_SIZE];
        let start = Instant::now();
        for _ in 0..count {
            c.write_all(&buf)?;
            c.read_exact(&mut buf)?;
        }
        Ok(start.elapsed().as_secs_f64())
    });
    let secs = client
        .join()
        .map_err(|_| "client panicked")?
        .map_err(|e| e.to_string())?;
    server
        .join()
        .map_err(|_| "server panicked")?
        .map_err(|e| e.to_string())?;
    Ok(secs)
}

/// Unix datagram pair: returns frames per second at the receiver.
pub(super) fn kernel_frames(size: usize, count: u64) -> Res<f64> {
    let (a, b) = std::os::unix::net::UnixDatagram::pair().map_err(|e| e.to_string())?;
    let rx = std::thread::spawn(move || -> std::io::Result<f64> {
        let mut buf = vec![0u8; size.max(1) + 64];
        let mut start = None;
        for i in 0..count {
            let n = b.recv(&mut buf)?;
            if n != size {
                return Err(std::io::Error::other(format!("datagram of {n} bytes")));
            }
            if i == 0 {
                start = Some(Instant::now());
            }
        }
        Ok(start.map_or(0.0, |s| s.elapsed().as_secs_f64()))
    });
    let tx = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0x3cu8; size];
        for i in 0..count {
            buf[..8.min(size)].copy_from_slice(&i.to_le_bytes()[..8.min(size)]);
            a.send(&buf)?;
        }
        Ok(())
    });
    tx.join()
        .map_err(|_| "sender panicked")?
        .map_err(|e| e.to_string())?;
    let secs = rx
        .join()
        .map_err(|_| "receiver panicked")?
        .map_err(|e| e.to_string())?;
    Ok(count as f64 / secs)
}

/// UDP round trips over 127.0.0.1 to a blocking echo thread, each after
/// `gap` of silence; returns the median in microseconds.
pub(super) fn kernel_idle_rtt(n: u64, gap: Duration) -> Res<f64> {
    let e = |e: std::io::Error| e.to_string();
    let server = std::net::UdpSocket::bind("127.0.0.1:0").map_err(e)?;
    let addr = server.local_addr().map_err(e)?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..n {
            let Ok((len, from)) = server.recv_from(&mut buf) else {
                return;
            };
            let _ = server.send_to(&buf[..len], from);
        }
    });
    let client = std::net::UdpSocket::bind("127.0.0.1:0").map_err(e)?;
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(e)?;
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..n {
        std::thread::sleep(gap);
        let start = Instant::now();
        client.send_to(&[0x42; 8], addr).map_err(e)?;
        client.recv_from(&mut buf).map_err(e)?;
        rtts.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let _ = echo.join();
    Ok(median(&mut rtts))
}

/// `n` fresh connections over 127.0.0.1, each sending `bytes` to a server
/// that reads to EOF and closes; returns each connection's seconds from
/// `connect` to the client's EOF.
pub(super) fn kernel_flows(bytes: u64, n: usize) -> Res<Vec<f64>> {
    kernel_connections(n, bytes, 0)
}

/// `n` connections, each connect + `size`-byte request + `size`-byte reply
/// + close; returns the total seconds.
pub(super) fn kernel_connects(n: usize, size: usize) -> Res<f64> {
    let start = Instant::now();
    kernel_connections(n, size as u64, size)?;
    Ok(start.elapsed().as_secs_f64())
}

/// `n` sequential connections: the client sends `send` bytes (then shuts
/// its side down when no reply is expected) and reads to EOF; the server
/// reads `send` bytes (or to EOF), replies `reply` bytes and closes.
/// Returns each connection's seconds.
fn kernel_connections(n: usize, send: u64, reply: usize) -> Res<Vec<f64>> {
    let e = |e: std::io::Error| e.to_string();
    let l = TcpListener::bind("127.0.0.1:0").map_err(e)?;
    let addr = l.local_addr().map_err(e)?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..n {
            let (mut c, _) = l.accept()?;
            let mut got = 0u64;
            while reply == 0 || got < send {
                let k = c.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                got += k as u64;
            }
            if reply > 0 {
                c.write_all(&buf[..reply.min(buf.len())])?;
            }
        }
        Ok(())
    });
    let client = std::thread::spawn(move || -> std::io::Result<Vec<f64>> {
        let buf = vec![0xa5u8; 64 * 1024];
        let mut back = vec![0u8; 64 * 1024];
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            let mut c = TcpStream::connect(addr)?;
            c.set_nodelay(true)?;
            let mut sent = 0u64;
            while sent < send {
                let k = (send - sent).min(buf.len() as u64) as usize;
                c.write_all(&buf[..k])?;
                sent += k as u64;
            }
            if reply == 0 {
                c.shutdown(std::net::Shutdown::Write)?;
            }
            let mut got = 0usize;
            loop {
                let k = c.read(&mut back)?;
                if k == 0 {
                    break;
                }
                got += k;
            }
            if got != reply {
                return Err(std::io::Error::other(format!(
                    "got {got} of {reply} reply bytes"
                )));
            }
            times.push(start.elapsed().as_secs_f64());
        }
        Ok(times)
    });
    let times = client.join().map_err(|_| "client panicked")?.map_err(e)?;
    server.join().map_err(|_| "server panicked")?.map_err(e)?;
    Ok(times)
}
