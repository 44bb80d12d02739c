//! The cache on the in-process harness, on virtual time: a client
//! device's sockets driven from the test against a device running
//! `cache`, for the limits a client can push on.

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::Duration;
use smoltcp::wire::IpAddress;

use crate::testing::VirtualHosts;

/// A client (10.0.0.1) and a cache (10.0.0.2) with `cache`'s settings.
fn pair(cache: &str) -> VirtualHosts {
    VirtualHosts::new(&[
        ("client", "kind = \"passthrough\""),
        ("cache", &format!("kind = \"cache\"\n{cache}")),
    ])
}

/// A connection to the cache (receive buffer of `rx` bytes).
fn open(p: &mut VirtualHosts, rx: usize) -> SocketHandle {
    let h = p.devices[0]
        .sockets()
        .add(crate::stack::new_tcp_socket(rx, 64 << 10));
    p.connect(h, (IpAddress::v4(10, 0, 0, 2), 11211))
}

#[test]
fn one_client_beyond_the_limit_is_told_and_closed_and_the_others_go_on() {
    let mut p = pair("connections = 2\nbacklog = 2");
    let a = open(&mut p, 64 << 10);
    let b = open(&mut p, 64 << 10);
    for h in [a, b] {
        let got = p.talk(h, b"set k 0 0 1\r\nx\r\n", |_, got| got.ends_with(b"\r\n"));
        assert_eq!(got, b"STORED\r\n");
    }
    let c = open(&mut p, 64 << 10);
    let got = p.talk(c, b"", |s, got| got.ends_with(b"\r\n") && !s.may_recv());
    assert_eq!(got, b"ERROR Too many open connections\r\n");
    assert_eq!(p.counter(2, "rejected_connections"), 1);
    // The two others are served as before.
    for h in [a, b] {
        let got = p.talk(h, b"get k\r\n", |_, got| got.ends_with(b"END\r\n"));
        assert_eq!(got, b"VALUE k 0 1\r\nx\r\nEND\r\n");
    }
    assert_eq!(p.counter(2, "curr_connections"), 2);
}

#[test]
fn a_client_that_does_not_read_its_replies_stops_being_read() {
    let mut p = pair("");
    let w = open(&mut p, 64 << 10);
    let mut set = b"set big 0 0 65536\r\n".to_vec();
    set.extend_from_slice(&[b'v'; 65536]);
    set.extend_from_slice(b"\r\n");
    assert_eq!(
        p.talk(w, &set, |_, got| got.ends_with(b"\r\n")),
        b"STORED\r\n"
    );
    // A thousand gets of 64 KiB each (64 MB of replies) into a 4 KiB
    // window that is never read.
    let r = open(&mut p, 4096);
    let gets = b"get big\r\n".repeat(1000);
    let mut sent = 0;
    p.idle(Duration::from_secs(5));
    p.run_until(Duration::from_secs(5), |d| {
        let s = d[0].sockets().get_mut::<tcp::Socket>(r);
        if s.may_send() {
            sent += s.send_slice(&gets[sent..]).unwrap_or(0);
        }
        false
    });
    let served = p.counter(2, "cmd_get");
    assert!(
        served < 50,
        "{served} gets answered into a window nobody reads"
    );
    // The writer's connection is still served.
    let got = p.talk(w, b"mn\r\n", |_, got| got.ends_with(b"MN\r\n"));
    assert_eq!(got, b"MN\r\n");
}
