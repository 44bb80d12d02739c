//! TCP between two devices: bulk transfer (`bench tcp`) and 64-byte
//! round trips (`bench rr`), against the kernel's TCP over 127.0.0.1.

use std::time::{Duration, Instant};

use shmnet::shm::SegmentKind;
use shmnet::stack::NetDevice;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use super::kernel::{kernel_bulk, kernel_rr};
use super::peer::{PeerProc, Unlink};
use super::report::measure;
use super::{Mode, PORT, RR_SIZE, Res, SOCK_BUF, TIMEOUT, settings, unique};

pub(super) fn listen(dev: &mut NetDevice) -> SocketHandle {
    // Delayed ACKs stay on for round trips too: the reply carries the ACK,
    // as with the kernel's defaults.
    let mut s = shmnet::functions::diag::tcp_socket(SOCK_BUF);
    s.listen(PORT).expect("listen on a fresh socket");
    dev.sockets().add(s)
}

/// Sink (or echo) until the client closes; with `exit`, also stops the
/// device when the connection is over or after a long idle time.
pub(super) fn serve(dev: &mut NetDevice, h: SocketHandle, echo: bool, exit: bool) {
    let mut last = Instant::now();
    let mut closing: Option<Instant> = None;
    let mut tmp = vec![0u8; 64 * 1024];
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        let mut moved = false;
        if echo {
            while s.can_recv() && s.can_send() {
                let room = (s.send_capacity() - s.send_queue()).min(tmp.len());
                let n = s.recv_slice(&mut tmp[..room]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                let _ = s.send_slice(&tmp[..n]);
                moved = true;
            }
        } else {
            while let Ok(n) = s.recv(|b| (b.len(), b.len())) {
                if n == 0 {
                    break;
                }
                moved = true;
            }
        }
        if moved {
            last = Instant::now();
        }
        if !exit {
            return false;
        }
        if closing.is_none() && s.state() == tcp::State::CloseWait && s.recv_queue() == 0 {
            s.close();
            closing = Some(Instant::now());
        }
        if let Some(t) = closing {
            return s.state() == tcp::State::Closed || t.elapsed() > Duration::from_millis(500);
        }
        last.elapsed() > Duration::from_secs(30)
    });
}

/// A client device connected to the server at 10.0.0.2; returns it once
/// the connection is established.
fn client(lan: &str, wan: &str, mtu: u32, kind: SegmentKind) -> Res<(NetDevice, SocketHandle)> {
    let s = settings("bench-a", 1, lan, wan, mtu)?;
    let mut dev = NetDevice::new(&s, kind).map_err(|e| e.to_string())?;
    let sock = shmnet::functions::diag::tcp_socket(SOCK_BUF);
    let h = dev.sockets().add(sock);
    let (iface, sockets) = dev.parts();
    sockets
        .get_mut::<tcp::Socket>(h)
        .connect(iface.context(), (IpAddress::v4(10, 0, 0, 2), PORT), 49152)
        .map_err(|e| format!("connect: {e}"))?;
    let t0 = Instant::now();
    let mut failed = false;
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        if s.may_send() {
            return true;
        }
        failed = t0.elapsed() > Duration::from_secs(10) || s.state() == tcp::State::Closed;
        failed
    });
    if failed {
        return Err("could not connect".into());
    }
    Ok((dev, h))
}

/// Closes the client's connection politely (bounded wait).
pub(super) fn hang_up(dev: &mut NetDevice, h: SocketHandle) {
    dev.sockets().get_mut::<tcp::Socket>(h).close();
    let t0 = Instant::now();
    dev.run_until(|d| {
        let st = d.sockets().get_mut::<tcp::Socket>(h).state();
        matches!(st, tcp::State::TimeWait | tcp::State::Closed)
            || t0.elapsed() > Duration::from_millis(500)
    });
}

/// Runs `dev` until `step`, given `h`'s socket and whether TIMEOUT has
/// passed, says the exchange is done (`Ok(true)`) or failed; returns the
/// seconds from the start to the end.
fn timed(
    dev: &mut NetDevice,
    h: SocketHandle,
    mut step: impl FnMut(&mut tcp::Socket<'_>, bool) -> Res<bool>,
) -> Res<f64> {
    let start = Instant::now();
    let mut result = Ok(());
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<tcp::Socket>(h);
        match step(s, start.elapsed() > TIMEOUT) {
            Ok(done) => done,
            Err(e) => {
                result = Err(e);
                true
            }
        }
    });
    result.map(|()| start.elapsed().as_secs_f64())
}

/// Sends `bytes`; returns seconds from the first byte to the receiver's
/// acknowledgement of the last.
fn send_bulk(dev: &mut NetDevice, h: SocketHandle, bytes: u64) -> Res<f64> {
    let mut sent = 0u64;
    timed(dev, h, |s, expired| {
        while sent < bytes && s.can_send() {
            let rem = (bytes - sent) as usize;
            match s.send(|b| {
                let n = b.len().min(rem);
                (n, n)
            }) {
                Ok(0) | Err(_) => break,
                Ok(n) => sent += n as u64,
            }
        }
        if sent == bytes && s.send_queue() == 0 {
            Ok(true)
        } else if !s.may_send() {
            Err(format!(
                "connection lost in {:?} after {sent} bytes",
                s.state()
            ))
        } else if expired {
            Err(format!("timed out after {sent} bytes"))
        } else {
            Ok(false)
        }
    })
}

/// `count` 64-byte round trips; returns seconds.
fn ping_pong(dev: &mut NetDevice, h: SocketHandle, count: u64) -> Res<f64> {
    let msg = [0x5au8; RR_SIZE];
    let mut done = 0u64;
    let mut got = 0usize;
    let mut need_send = true;
    let mut tmp = [0u8; RR_SIZE];
    timed(dev, h, |s, expired| {
        loop {
            if need_send {
                if !s.can_send() {
                    break;
                }
                if s.send_slice(&msg) != Ok(RR_SIZE) {
                    return Err("send buffer full".into());
                }
                need_send = false;
            }
            let n = s.recv_slice(&mut tmp[..RR_SIZE - got]).unwrap_or(0);
            if n == 0 {
                break;
            }
            got += n;
            if got == RR_SIZE {
                got = 0;
                done += 1;
                if done == count {
                    return Ok(true);
                }
                need_send = true;
            }
        }
        if !s.may_recv() {
            Err(format!("connection lost after {done} round trips"))
        } else if expired {
            Err(format!("timed out after {done} round trips"))
        } else {
            Ok(false)
        }
    })
}

/// One shmnet TCP run (bulk or round trips); returns seconds.
fn shm_tcp_run(mtu: u32, mode: Mode, rr: bool, amount: u64) -> Res<f64> {
    let (lan, wan) = (unique("lan"), unique("wan"));
    match mode {
        Mode::Thread => {
            let s = settings("bench-b", 2, &lan, &wan, mtu)?;
            let mut server =
                NetDevice::new(&s, SegmentKind::InProcess).map_err(|e| e.to_string())?;
            let sh = listen(&mut server);
            let handle = server.handle();
            let t = std::thread::Builder::new()
                .name("bench-server".into())
                .spawn(move || {
                    serve(&mut server, sh, rr, false);
                    server
                })
                .map_err(|e| e.to_string())?;
            let r = client(&lan, &wan, mtu, SegmentKind::InProcess).and_then(|(mut dev, h)| {
                let r = if rr {
                    ping_pong(&mut dev, h, amount)
                } else {
                    send_bulk(&mut dev, h, amount)
                };
                hang_up(&mut dev, h);
                r
            });
            handle.stop();
            let _ = t.join();
            r
        }
        Mode::Process => {
            let _unlink = Unlink(vec![lan.clone(), wan.clone()]);
            let kind = if rr { "rr" } else { "tcp" };
            let peer = PeerProc::spawn(&[kind.into(), lan.clone(), wan.clone(), mtu.to_string()])?;
            let (mut dev, h) = client(&lan, &wan, mtu, SegmentKind::Shared)?;
            let r = if rr {
                ping_pong(&mut dev, h, amount)
            } else {
                send_bulk(&mut dev, h, amount)
            };
            hang_up(&mut dev, h);
            let f = peer.finish();
            drop(dev);
            let secs = r?;
            f?;
            Ok(secs)
        }
    }
}

pub(super) fn bench_tcp(
    mtu: u32,
    mode: Mode,
    bytes: Option<u64>,
    quick: bool,
    reps: usize,
) -> Res<String> {
    let bytes = bytes.unwrap_or(if quick {
        16 << 20
    } else if mtu >= 9000 {
        256 << 20
    } else {
        128 << 20
    });
    if bytes == 0 {
        return Err("--bytes must be positive".into());
    }
    let gbit = |secs: f64| bytes as f64 * 8.0 / secs / 1e9;
    let head = format!(
        "\"bench\":\"tcp\",\"mode\":\"{}\",\"mtu\":{mtu}",
        mode.name()
    );
    measure(
        &head,
        "Gbit/s",
        &format!(",\"bytes\":{bytes}"),
        reps,
        || shm_tcp_run(mtu, mode, false, bytes).map(gbit),
        || kernel_bulk(bytes).map(gbit),
    )
}

pub(super) fn bench_rr(mode: Mode, count: Option<u64>, quick: bool, reps: usize) -> Res<String> {
    let count = count.unwrap_or(if quick { 2000 } else { 100_000 }).max(1);
    let rate = |secs: f64| count as f64 / secs;
    let head = format!(
        "\"bench\":\"rr\",\"mode\":\"{}\",\"size\":{RR_SIZE}",
        mode.name()
    );
    measure(
        &head,
        "round trips/s",
        &format!(",\"count\":{count},\"mtu\":1500"),
        reps,
        || shm_tcp_run(1500, mode, true, count).map(rate),
        || kernel_rr(count).map(rate),
    )
}
