//! The server on the in-process harness: a client device's sockets,
//! driven from the test on virtual time, talk to a device running
//! `http-server`; responses are read back with the codec.

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::Duration;
use smoltcp::wire::IpAddress;

use super::super::responses;
use super::*;
use crate::functions::http::codec::ResponseHead;
use crate::stack::NetDevice;
use crate::testing::VirtualHosts;
use crate::testing::function::config_error;

const SITE: &str = r#"kind = "http-server"
name = "web1"
connections = 8
backlog = 2
idle_timeout = "30s"
routes = [
    { path = "/", body = "root\n" },
    { path = "/a", body = "under a\n", headers = { "Cache-Control" = "max-age=60" } },
    { path = "/a/b", status = 201, body = "deeper\n" },
    { path = "/big", size = 200000 },
    { path = "/gone", status = 410 },
    { path = "/only", exact = true, body = "only\n" },
]"#;

/// A client device (10.0.0.1) and a server device (10.0.0.2) running
/// `function` (a `[function]` table), on virtual time.
struct Pair {
    hosts: VirtualHosts,
}

impl Pair {
    fn new(function: &str) -> Pair {
        let hosts =
            VirtualHosts::new(&[("client", "kind = \"passthrough\""), ("server", function)]);
        Pair { hosts }
    }

    fn client(&mut self) -> &mut NetDevice {
        &mut self.hosts.devices[0]
    }

    fn server(&mut self) -> &mut NetDevice {
        &mut self.hosts.devices[1]
    }

    /// A connection to the server, once established.
    fn connect(&mut self) -> SocketHandle {
        let h = self.client().add_tcp();
        self.connect_with(h)
    }

    /// A connection from a client socket with a receive buffer of `rx`
    /// bytes.
    fn connect_small(&mut self, rx: usize) -> SocketHandle {
        let h = self
            .client()
            .sockets()
            .add(crate::stack::new_tcp_socket(rx, 64 << 10));
        self.connect_with(h)
    }

    fn connect_with(&mut self, h: SocketHandle) -> SocketHandle {
        self.hosts.connect(h, (IpAddress::v4(10, 0, 0, 2), 80));
        let up = self.hosts.run_until(Duration::from_secs(5), |d| {
            d[0].sockets().get::<tcp::Socket>(h).state() == tcp::State::Established
        });
        assert!(up, "connection not established");
        h
    }

    /// Sends `request` on `h` and reads until `done(received, state)` or
    /// `limit` of virtual time; returns what was received.
    fn exchange(
        &mut self,
        h: SocketHandle,
        request: &[u8],
        limit: Duration,
        mut done: impl FnMut(&[u8], tcp::State) -> bool,
    ) -> Vec<u8> {
        let (mut sent, mut got) = (0, Vec::new());
        let mut buf = vec![0; 64 << 10];
        self.hosts.run_until(limit, |d| {
            let s = d[0].sockets().get_mut::<tcp::Socket>(h);
            if sent < request.len() && s.can_send() {
                sent += s.send_slice(&request[sent..]).unwrap_or(0);
            }
            while let Ok(n @ 1..) = s.recv_slice(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            done(&got, s.state())
        });
        got
    }

    fn counter(&self, name: &str) -> u64 {
        self.hosts.counter(2, name)
    }
}

/// Whether `bytes` hold `n` whole responses to `methods`.
fn has_responses(bytes: &[u8], n: usize, methods: &[Method]) -> bool {
    let mut at = 0;
    for i in 0..n {
        let method = methods.get(i).copied().unwrap_or(Method::Get);
        let Ok(Some((head, used))) = ResponseHead::parse(&bytes[at..], method, &Limits::default())
        else {
            return false;
        };
        at += used;
        let BodyKind::Length(len) = head.body() else {
            continue;
        };
        if bytes.len() - at < len as usize {
            return false;
        }
        at += len as usize;
    }
    true
}

fn text(v: &[u8]) -> &str {
    std::str::from_utf8(v).unwrap()
}

#[test]
fn routes_answer_by_longest_prefix_with_their_fields() {
    let mut p = Pair::new(SITE);
    let h = p.connect();
    let req = b"GET /a/b/c HTTP/1.1\r\nHost: s\r\n\r\nGET /a/x?q=1 HTTP/1.1\r\nHost: s\r\n\r\n\
                GET /elsewhere HTTP/1.1\r\nHost: s\r\n\r\nGET /nothing/../gone HTTP/1.1\r\nHost: s\r\n\r\n\
                HEAD /big HTTP/1.1\r\nHost: s\r\n\r\nGET /gone HTTP/1.1\r\nHost: s\r\n\r\n";
    let methods = [
        Method::Get,
        Method::Get,
        Method::Get,
        Method::Get,
        Method::Head,
        Method::Get,
    ];
    let got = p.exchange(h, req, Duration::from_secs(5), |b, _| {
        has_responses(b, 6, &methods)
    });
    let r = responses(&got, &methods);
    let summary: Vec<(u16, &str)> = r.iter().map(|(h, b)| (h.status(), text(b))).collect();
    assert_eq!(
        summary,
        [
            (201, "deeper\n"),
            (200, "under a\n"),
            (200, "root\n"),
            (200, "root\n"),
            (200, ""),
            (410, "")
        ]
    );
    for (head, _) in &r {
        assert_eq!(head.fields().get(b"x-served-by"), Some(&b"web1"[..]));
        assert!(head.keep_alive());
    }
    assert_eq!(
        r[1].0.fields().get(b"cache-control"),
        Some(&b"max-age=60"[..])
    );
    // HEAD: the length of what GET would send, and no body.
    assert_eq!(r[4].0.fields().get(b"content-length"), Some(&b"200000"[..]));
    assert_eq!(p.counter("requests"), 6);
    assert_eq!(p.counter("responses_2xx"), 5);
    assert_eq!(p.counter("responses_4xx"), 1);
    assert_eq!(p.counter("bytes_out"), got.len() as u64);
    assert_eq!(p.counter("bytes_in"), req.len() as u64);
    assert_eq!(p.counter("connections"), 1);
}

#[test]
fn an_exact_route_answers_its_path_only() {
    let mut p = Pair::new(SITE);
    let h = p.connect();
    let req = b"GET /only HTTP/1.1\r\nHost: s\r\n\r\nGET /only/x HTTP/1.1\r\nHost: s\r\n\r\n\
                GET /only?q HTTP/1.1\r\nHost: s\r\n\r\n";
    let got = p.exchange(h, req, Duration::from_secs(5), |b, _| {
        has_responses(b, 3, &[])
    });
    let bodies: Vec<String> = responses(&got, &[])
        .into_iter()
        .map(|(_, b)| text(&b).to_string())
        .collect();
    assert_eq!(bodies, ["only\n", "root\n", "only\n"]);
}

#[test]
fn a_404_for_unrouted_paths_and_a_generated_body_arrives_whole() {
    let site = "kind = \"http-server\"\nroutes = [{ path = \"/big\", size = 300000 }]";
    let mut p = Pair::new(site);
    let h = p.connect();
    let req = b"GET /small HTTP/1.1\r\nHost: s\r\n\r\nGET /big HTTP/1.1\r\nHost: s\r\n\r\n";
    let got = p.exchange(h, req, Duration::from_secs(10), |b, _| {
        has_responses(b, 2, &[])
    });
    let r = responses(&got, &[]);
    assert_eq!((r[0].0.status(), text(&r[0].1)), (404, "404 Not Found\n"));
    assert_eq!(
        r[0].0.fields().get(b"x-served-by"),
        Some(&b"http-server"[..])
    );
    assert_eq!(r[1].1.len(), 300000);
    assert!(
        r[1].1
            .iter()
            .enumerate()
            .all(|(i, &b)| b == generated_byte(i as u64))
    );
}

#[test]
fn request_bodies_are_read_and_discarded_and_100_continue_is_sent() {
    let mut p = Pair::new(SITE);
    let h = p.connect();
    let req = b"POST /a HTTP/1.1\r\nHost: s\r\nContent-Length: 11\r\n\r\nhello world\
                PUT /a/b HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n\
                POST / HTTP/1.1\r\nHost: s\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc\
                GET / HTTP/1.1\r\nHost: s\r\n\r\n";
    let got = p.exchange(h, req, Duration::from_secs(5), |b, _| {
        has_responses(b, 5, &[])
    });
    let r = responses(&got, &[]);
    let statuses: Vec<u16> = r.iter().map(|(h, _)| h.status()).collect();
    assert_eq!(statuses, [200, 201, 100, 200, 200]);
    assert_eq!(p.counter("requests"), 4);
}

#[test]
fn connection_close_and_http_1_0_end_the_connection_after_the_response() {
    for (req, keep) in [
        (&b"GET / HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: s\r\n\r\n"[..], None),
        (b"GET / HTTP/1.0\r\n\r\n", None),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", Some(&b"keep-alive"[..])),
    ] {
        let mut p = Pair::new(SITE);
        let h = p.connect();
        let got = p.exchange(h, req, Duration::from_secs(5), |b, st| {
            has_responses(b, 1, &[]) && (keep.is_some() || st == tcp::State::CloseWait)
        });
        let r = responses(&got, &[]);
        // One response only: what follows `close` is not answered.
        assert_eq!(r.len(), 1, "{}", text(&got));
        assert_eq!(r[0].0.fields().get(b"connection"), keep.or(Some(b"close")));
        let s = p.client().sockets().get::<tcp::Socket>(h);
        assert_eq!(s.may_recv(), keep.is_some(), "{:?}", s.state());
    }
}

#[test]
fn bad_requests_get_400_414_431_and_the_connection_closes() {
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: s\r\n\r\n", "a".repeat(9000));
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: s\r\nX: {}\r\n\r\n",
        "b".repeat(40000)
    );
    for (req, status) in [
        (&b"GARBAGE\r\n\r\n"[..], 400),
        (b"GET / HTTP/1.1\r\nHost: s\r\nX: a\r\n folded\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        (long_uri.as_bytes(), 414),
        (big_head.as_bytes(), 431),
    ] {
        let mut p = Pair::new(SITE);
        let h = p.connect();
        let got = p.exchange(h, req, Duration::from_secs(5), |b, st| {
            has_responses(b, 1, &[]) && st == tcp::State::CloseWait
        });
        let r = responses(&got, &[]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0.status(), status);
        assert!(!r[0].0.keep_alive());
        assert_eq!(p.counter("bad_requests"), 1);
    }
}

#[test]
fn a_client_that_never_reads_stops_being_read() {
    let site =
        "kind = \"http-server\"\ntcp_buffer = 65536\nroutes = [{ path = \"/\", size = 65536 }]";
    let mut p = Pair::new(site);
    // A small window, so what the server can push out is small too.
    let h = p.connect_small(4096);
    let one = b"GET / HTTP/1.1\r\nHost: s\r\n\r\n";
    let count = 40;
    let req = one.repeat(count);
    // The client sends everything and reads nothing for a while.
    let mut sent = 0;
    p.hosts.idle(Duration::from_secs(2));
    for _ in 0..2000 {
        let s = p.client().sockets().get_mut::<tcp::Socket>(h);
        if s.can_send() {
            sent += s.send_slice(&req[sent..]).unwrap_or(0);
        }
        p.hosts.tick();
    }
    assert_eq!(sent, req.len());
    // The server answered a bounded number of requests, then waited.
    let answered = p.counter("requests");
    assert!(answered <= MAX_QUEUED as u64 + 2, "{answered}");
    p.hosts.idle(Duration::from_secs(5));
    assert_eq!(p.counter("requests"), answered);
    // Once the client reads, every response arrives.
    let got = p.exchange(h, b"", Duration::from_secs(120), |b, _| {
        has_responses(b, count, &[])
    });
    let r = responses(&got, &[]);
    assert_eq!(r.len(), count);
    assert!(r.iter().all(|(h, b)| h.status() == 200 && b.len() == 65536));
    assert_eq!(p.counter("requests"), count as u64);
}

#[test]
fn idle_connections_are_closed_and_slots_come_back() {
    let mut p = Pair::new(SITE);
    let hs: Vec<SocketHandle> = (0..8).map(|_| p.connect()).collect();
    p.hosts.idle(Duration::from_secs(1));
    assert_eq!(p.counter("open_connections"), 8);
    assert_eq!(p.counter("connections"), 8);
    p.hosts.idle(Duration::from_secs(31));
    assert_eq!(p.counter("idle_timeouts"), 8);
    for &h in &hs {
        let s = p.client().sockets().get::<tcp::Socket>(h);
        assert!(!s.may_recv(), "{:?}", s.state());
    }
    for h in hs {
        p.client().sockets().get_mut::<tcp::Socket>(h).abort();
    }
    p.hosts.idle(Duration::from_secs(1));
    assert_eq!(p.counter("open_connections"), 0);
    // New connections are served again.
    let h = p.connect();
    let got = p.exchange(
        h,
        b"GET / HTTP/1.1\r\nHost: s\r\n\r\n",
        Duration::from_secs(5),
        |b, _| has_responses(b, 1, &[]),
    );
    assert_eq!(responses(&got, &[])[0].1, b"root\n");
}

#[test]
fn configs_are_checked() {
    let err = |t: &str| config_error(t, HttpServer::new);
    assert!(err("port = 0").contains("port"));
    assert!(err("connections = 2\nbacklog = 3").contains("backlog"));
    assert!(err("name = \"two words\"").contains("name"));
    assert!(err("routes = [{ path = \"/\", body = \"x\", size = 1 }]").contains("routes[0]"));
    assert!(err("routes = [{ path = \"x\" }]").contains("path"));
    assert!(err("routes = [{ path = \"/\", status = 99 }]").contains("status"));
    assert!(err("routes = [{ path = \"/\", status = 204, body = \"x\" }]").contains("204"));
    let e = err("routes = [{ path = \"/\", headers = { \"Content-Length\" = \"1\" } }]");
    assert!(e.contains("Content-Length"), "{e}");
    assert!(
        err("routes = [{ path = \"/\", headers = { \"X\" = \"a\\nb\" } }]").contains("control")
    );
    assert!(err("idle_timeout = \"1ms\"").contains("idle_timeout"));
}

#[test]
fn new_routes_apply_in_place_and_keep_connections() {
    use crate::functions::FunctionConfig;
    use crate::stack::Applied;
    let mut p = Pair::new(SITE);
    let h = p.connect();
    let get = b"GET / HTTP/1.1\r\nHost: s\r\n\r\n";
    let got = p.exchange(h, get, Duration::from_secs(5), |b, _| {
        has_responses(b, 1, &[])
    });
    assert_eq!(responses(&got, &[])[0].1, b"root\n");
    let changed = SITE.replace("body = \"root\\n\"", "body = \"new root\\n\"");
    let cfg: FunctionConfig = toml::from_str(&changed).unwrap();
    assert_eq!(p.server().reconfigure(&cfg).unwrap(), Applied::InPlace);
    // The same connection, the new answer.
    let got = p.exchange(h, get, Duration::from_secs(5), |b, _| {
        has_responses(b, 1, &[])
    });
    assert_eq!(responses(&got, &[])[0].1, b"new root\n");
    assert_eq!(p.counter("connections"), 1);
    // Other sockets: a new server.
    let cfg: FunctionConfig =
        toml::from_str(&changed.replace("backlog = 2", "backlog = 3")).unwrap();
    assert_eq!(p.server().reconfigure(&cfg).unwrap(), Applied::Replaced);
    let bad: FunctionConfig = toml::from_str(&changed.replace("/gone", "gone")).unwrap();
    assert!(p.server().reconfigure(&bad).is_err());
}
