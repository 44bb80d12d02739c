//! An idle device (`bench idle`): its CPU use, and the round trip of a
//! datagram that has to wake it, against a blocking kernel UDP echo.

use std::time::{Duration, Instant};

use shmnet::shm::SegmentKind;
use shmnet::stack::Device;
use shmnet::testing::DeviceToml;
use smoltcp::iface::SocketHandle;
use smoltcp::wire::IpAddress;

use super::kernel::kernel_idle_rtt;
use super::report::{median, num};
use super::{Res, unique};

/// Nanoseconds of CPU a thread of this process has used.
fn thread_cpu_ns(tid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One UDP round trip from `dev` to the echo server; returns microseconds.
fn udp_round_trip(dev: &mut Device, h: SocketHandle, payload: &[u8]) -> Res<f64> {
    use smoltcp::socket::udp;
    let start = Instant::now();
    let mut sent = false;
    let mut got = false;
    let mut buf = [0u8; 64];
    dev.run_until(|d| {
        let s = d.sockets().get_mut::<udp::Socket>(h);
        if !sent {
            sent = s
                .send_slice(payload, (IpAddress::v4(10, 0, 0, 2), 7))
                .is_ok();
        }
        while let Ok((n, _)) = s.recv_slice(&mut buf) {
            got |= buf[..n] == *payload;
        }
        got || start.elapsed() > Duration::from_secs(5)
    });
    if !got {
        return Err("no echo within 5 s".into());
    }
    Ok(start.elapsed().as_secs_f64() * 1e6)
}

pub(super) fn bench_idle(count: Option<u64>, quick: bool) -> Res<String> {
    use smoltcp::socket::udp;
    let n = count.unwrap_or(if quick { 10 } else { 50 }).max(1);
    let gap = Duration::from_millis(20);
    let (lan, wan) = (unique("lan"), unique("wan"));
    let device = |name: &str, host: u8, function: &str| {
        DeviceToml::host(name, &lan, &wan, host)
            .function(function)
            .parse()
            .map_err(|e| e.to_string())
    };
    let mut server = Device::new(
        &device("idle-server", 2, "{ kind = \"echo\", port = 7 }")?,
        SegmentKind::Process,
    )
    .map_err(|e| e.to_string())?;
    let handle = server.handle();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get());
        server.run();
    });
    let tid = tid_rx.recv().map_err(|e| e.to_string())?;
    let mut client = Device::new(
        &device("idle-client", 1, "{ kind = \"passthrough\" }")?,
        SegmentKind::Process,
    )
    .map_err(|e| e.to_string())?;
    let mut sock = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
    );
    sock.bind(40000).map_err(|e| e.to_string())?;
    let h = client.sockets().add(sock);
    let payload = [0x42u8; 8];
    let result = (|| {
        // Warm up (neighbours, first wake), then let the server fall asleep.
        for _ in 0..3 {
            udp_round_trip(&mut client, h, &payload)?;
        }
        let window = if quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(1)
        };
        std::thread::sleep(Duration::from_millis(50));
        let c0 = thread_cpu_ns(tid).ok_or("cannot read the server's CPU time")?;
        std::thread::sleep(window);
        let c1 = thread_cpu_ns(tid).ok_or("cannot read the server's CPU time")?;
        let idle_cpu = (c1 - c0) as f64 / window.as_nanos() as f64 * 100.0;
        let mut busy = Vec::new();
        for _ in 0..n {
            busy.push(udp_round_trip(&mut client, h, &payload)?);
        }
        let mut idle = Vec::new();
        for _ in 0..n {
            std::thread::sleep(gap);
            idle.push(udp_round_trip(&mut client, h, &payload)?);
        }
        Ok::<_, String>((idle_cpu, median(&mut busy), median(&mut idle)))
    })();
    handle.stop();
    let _ = thread.join();
    let (idle_cpu, busy_rtt, idle_rtt) = result?;
    let kernel = kernel_idle_rtt(n, gap)?;
    Ok(format!(
        "{{\"bench\":\"idle\",\"mode\":\"thread\",\"size\":{},\"shmnet\":{},\"kernel\":{},\"unit\":\"us round trip after 20 ms idle\",\"ratio\":{},\"idle_cpu_percent\":{},\"busy_rtt_us\":{},\"wake_us\":{},\"count\":{n}}}",
        payload.len(),
        num(idle_rtt),
        num(kernel),
        num(kernel / idle_rtt),
        num(idle_cpu),
        num(busy_rtt),
        num((idle_rtt - busy_rtt).max(0.0)),
    ))
}
