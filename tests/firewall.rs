//! The stateful firewall on a device whose sockets the test drives itself.

mod common;

use std::time::Duration;

use common::*;
use shmnet::functions::diag::tcp_socket;
use shmnet::shm::SegmentKind;
use shmnet::stack::NetDevice;
use smoltcp::socket::tcp;

/// client-a and client-b reach the server over the global network; the
/// server's firewall admits TCP port 7 and refuses port 9, where the test
/// also listens.
#[test]
fn allowed_port_echoes_blocked_port_times_out() {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let server = settings(
        "server",
        &lan,
        &wan,
        2,
        1500,
        r#"{ kind = "firewall", default = "drop", rule = [
            { action = "accept", direction = "in", proto = "tcp", dport = 7, state = "new" },
            { action = "drop", direction = "in", proto = "tcp", dport = 9 },
        ] }"#,
    );
    let mut dev = NetDevice::new(&server, SegmentKind::InProcess).expect("server starts");
    let listeners: Vec<_> = [7, 9]
        .into_iter()
        .map(|port| {
            let mut s = tcp_socket(256 * 1024);
            s.listen(port).expect("listen");
            dev.sockets().add(s)
        })
        .collect();
    let server_handle = dev.handle();
    let server_thread = std::thread::spawn(move || {
        let mut scratch = vec![0u8; 64 * 1024];
        let mut echoed = [0u64; 2];
        dev.run_until(|d| {
            for (i, &h) in listeners.iter().enumerate() {
                let s = d.sockets().get_mut::<tcp::Socket>(h);
                while s.can_recv() && s.can_send() {
                    let room = (s.send_capacity() - s.send_queue()).min(scratch.len());
                    let n = s.recv_slice(&mut scratch[..room]).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    let _ = s.send_slice(&scratch[..n]);
                    echoed[i] += n as u64;
                }
                if s.state() == tcp::State::CloseWait && s.send_queue() == 0 {
                    s.close();
                }
            }
            false
        });
        (dev, echoed)
    });

    // Each client on a LAN of its own: the server only over the global network.
    let client = |name: &str, host: u8, probe: &str| {
        spawn(&settings(name, &unique(name), &wan, host, 1500, probe))
    };
    let (ah, at) = client(
        "client-a",
        1,
        r#"{ kind = "probe", tcp = ["10.100.0.2:7"], bytes = 262144, timeout = "10s" }"#,
    );
    let (bh, bt) = client(
        "client-b",
        3,
        r#"{ kind = "probe", tcp = ["10.100.0.2:9"], bytes = 4096, timeout = "2s" }"#,
    );
    let report_a = wait_finished(&ah, Duration::from_secs(20));
    let report_b = wait_finished(&bh, Duration::from_secs(20));
    stop_all([(ah, at), (bh, bt)]);
    server_handle.stop();
    let (dev, echoed) = server_thread.join().unwrap();

    assert_eq!(report_a.len(), 1, "{report_a:?}");
    assert!(
        report_a[0].contains("262144 bytes echoed intact"),
        "{report_a:?}"
    );
    assert_eq!(report_b.len(), 1, "{report_b:?}");
    assert!(
        report_b[0].contains("timed out after 0 of 4096 bytes"),
        "{report_b:?}"
    );
    assert_eq!(echoed, [262144, 0]);

    let s = dev.stats();
    // One SYN created the allowed connection; everything after it, both
    // ways, passed as established.
    assert_eq!(counter(&s, "rule0_packets"), 1, "{s:?}");
    assert!(counter(&s, "connections_created") >= 1, "{s:?}");
    assert!(counter(&s, "accepted") > 100, "{s:?}");
    // The blocked client's SYN and its retransmissions were dropped.
    let refused = counter(&s, "rule1_packets");
    assert!(refused >= 1, "{s:?}");
    assert!(counter(&s, "dropped") >= refused, "{s:?}");
    assert_eq!(counter(&s, "malformed"), 0, "{s:?}");
}
