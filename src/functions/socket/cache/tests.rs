//! The cache on the in-process harness, on virtual time: a client
//! device's sockets driven from the test against a device running
//! `cache`, for the limits a client can push on.

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::Duration;
use smoltcp::wire::IpAddress;

use crate::stack::NetDevice;
use crate::testing::{DeviceToml, VirtualClock, device, unique};

/// A client (10.0.0.1) and a cache (10.0.0.2) with `cache`'s settings.
struct Pair {
    clock: VirtualClock,
    devices: Vec<NetDevice>,
    port: u16,
}

impl Pair {
    fn new(cache: &str) -> Pair {
        let (lan, wan) = (unique("lan"), unique("wan"));
        let host = |name: &str, n: u8, table: &str| {
            device(
                &DeviceToml::host(name, &lan, &wan, n)
                    .function_table(table)
                    .settings(),
            )
        };
        Pair {
            clock: VirtualClock::new(Duration::from_millis(1)),
            devices: vec![
                host("client", 1, "kind = \"passthrough\""),
                host("cache", 2, &format!("kind = \"cache\"\n{cache}")),
            ],
            port: 40000,
        }
    }

    /// A connection to the cache (receive buffer of `rx` bytes).
    fn open(&mut self, rx: usize) -> SocketHandle {
        self.port += 1;
        let client = &mut self.devices[0];
        let h = client
            .sockets()
            .add(crate::stack::new_tcp_socket(rx, 64 << 10));
        let (iface, sockets) = client.parts();
        sockets
            .get_mut::<tcp::Socket>(h)
            .connect(
                iface.context(),
                (IpAddress::v4(10, 0, 0, 2), 11211),
                self.port,
            )
            .expect("connect");
        h
    }

    /// Sends `request` on `h`, then reads until `done` holds (10 s at
    /// most); what came back.
    fn talk(
        &mut self,
        h: SocketHandle,
        request: &[u8],
        done: impl Fn(&tcp::Socket, &[u8]) -> bool,
    ) -> Vec<u8> {
        let mut refs: Vec<&mut NetDevice> = self.devices.iter_mut().collect();
        let (ok, got) = self
            .clock
            .converse(&mut refs, h, request, Duration::from_secs(10), done);
        assert!(ok, "no end in sight: {}", String::from_utf8_lossy(&got));
        got
    }

    fn stat(&mut self, name: &str) -> u64 {
        self.devices[1]
            .stats()
            .function_counters
            .iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| panic!("no counter {name}"), |c| c.1)
    }
}

#[test]
fn one_client_beyond_the_limit_is_told_and_closed_and_the_others_go_on() {
    let mut p = Pair::new("connections = 2\nbacklog = 2");
    let a = p.open(64 << 10);
    let b = p.open(64 << 10);
    for h in [a, b] {
        let got = p.talk(h, b"set k 0 0 1\r\nx\r\n", |_, got| got.ends_with(b"\r\n"));
        assert_eq!(got, b"STORED\r\n");
    }
    let c = p.open(64 << 10);
    let got = p.talk(c, b"", |s, got| got.ends_with(b"\r\n") && !s.may_recv());
    assert_eq!(got, b"ERROR Too many open connections\r\n");
    assert_eq!(p.stat("rejected_connections"), 1);
    // The two others are served as before.
    for h in [a, b] {
        let got = p.talk(h, b"get k\r\n", |_, got| got.ends_with(b"END\r\n"));
        assert_eq!(got, b"VALUE k 0 1\r\nx\r\nEND\r\n");
    }
    assert_eq!(p.stat("curr_connections"), 2);
}

#[test]
fn a_client_that_does_not_read_its_replies_stops_being_read() {
    let mut p = Pair::new("");
    let w = p.open(64 << 10);
    let mut set = b"set big 0 0 65536\r\n".to_vec();
    set.extend_from_slice(&[b'v'; 65536]);
    set.extend_from_slice(b"\r\n");
    assert_eq!(
        p.talk(w, &set, |_, got| got.ends_with(b"\r\n")),
        b"STORED\r\n"
    );
    // A thousand gets of 64 KiB each (64 MB of replies) into a 4 KiB
    // window that is never read.
    let r = p.open(4096);
    let gets = b"get big\r\n".repeat(1000);
    let mut sent = 0;
    let mut refs: Vec<&mut NetDevice> = p.devices.iter_mut().collect();
    p.clock.run_for(&mut refs, Duration::from_secs(5));
    p.clock.run_until(&mut refs, Duration::from_secs(5), |d| {
        let s = d[0].sockets().get_mut::<tcp::Socket>(r);
        if s.may_send() {
            sent += s.send_slice(&gets[sent..]).unwrap_or(0);
        }
        false
    });
    drop(refs);
    let served = p.stat("cmd_get");
    assert!(
        served < 50,
        "{served} gets answered into a window nobody reads"
    );
    // The writer's connection is still served.
    let got = p.talk(w, b"mn\r\n", |_, got| got.ends_with(b"MN\r\n"));
    assert_eq!(got, b"MN\r\n");
}
