//! The proxy on the in-process harness, on virtual time: a client
//! device's sockets driven from the test, the proxy, and `http-server`
//! devices as upstreams; responses read back with the codec.

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::Duration;
use smoltcp::wire::IpAddress;

use super::super::codec::ResponseHead;
use super::super::server::generated_byte;
use crate::testing::function::config_error;
use crate::testing::{DeviceToml, VirtualHosts, device};

/// Client 10.0.0.1, proxy 10.0.0.2, web servers 10.0.0.3 and .4.
struct Site {
    hosts: VirtualHosts,
}

fn web(name: &str) -> String {
    format!(
        r#"kind = "http-server"
name = "{name}"
routes = [
    {{ path = "/", body = "hello from {name}\n" }},
    {{ path = "/big", size = 1048576 }},
    {{ path = "/static/", body = "static from {name}\n", headers = {{ "Cache-Control" = "max-age=60" }} }},
]"#
    )
}

impl Site {
    fn new(proxy: &str) -> Site {
        let hosts = VirtualHosts::new(&[
            ("client", "kind = \"passthrough\""),
            ("proxy", proxy),
            ("web1", &web("web1")),
            ("web2", &web("web2")),
        ])
        .patience(Duration::from_secs(120));
        Site { hosts }
    }

    /// Sends `request` bytes on a new connection and reads until the proxy
    /// closes it; every response parsed: status, head, body.
    fn exchange(&mut self, request: &[u8]) -> Vec<(u16, ResponseHead, Vec<u8>)> {
        let h = self.open(None);
        let got = self.hosts.talk(h, request, |s, _| !s.may_recv());
        self.hosts.devices[0]
            .sockets()
            .get_mut::<tcp::Socket>(h)
            .abort();
        responses(&got)
    }

    /// A client socket (with `rx`-byte receive buffer, or the device's)
    /// connecting to the proxy.
    fn open(&mut self, rx: Option<usize>) -> SocketHandle {
        let client = &mut self.hosts.devices[0];
        let h = match rx {
            Some(rx) => client.sockets().add(crate::stack::new_tcp_socket(rx, 4096)),
            None => client.add_tcp(),
        };
        self.hosts.connect(h, (IpAddress::v4(10, 0, 0, 2), 80))
    }

    fn counter(&self, name: &str) -> u64 {
        self.hosts.counter(2, name)
    }
}

/// The responses in `bytes`, in order: status, head, body.
fn responses(bytes: &[u8]) -> Vec<(u16, ResponseHead, Vec<u8>)> {
    super::super::responses(bytes, &[])
        .into_iter()
        .map(|(head, body)| (head.status(), head, body))
        .collect()
}

fn served_by(head: &ResponseHead) -> String {
    String::from_utf8_lossy(head.fields().get(b"x-served-by").unwrap_or(b"?")).into_owned()
}

const PROXY: &str = r#"kind = "http-proxy"
connect_timeout = "2s"
cache_bytes = 1048576
pools = [
    { name = "web", upstreams = ["10.0.0.3:80", "10.0.0.4:80"] },
    { name = "sticky", upstreams = ["10.0.0.3:80", "10.0.0.4:80"], balance = "hash", hash_cookie = "session" },
    { name = "nowhere", upstreams = ["10.0.0.9:80"] },
    { name = "refused", upstreams = ["10.0.0.3:81"] },
]
routes = [
    { path = "/", pool = "web" },
    { host = "sticky.example", path = "/", pool = "sticky" },
    { path = "/nowhere", pool = "nowhere" },
    { path = "/refused", pool = "refused" },
    { host = "other.example", path = "/only", pool = "web" },
]"#;

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n{extra}\r\n")
}

#[test]
fn pipelined_requests_are_answered_in_order_over_kept_connections() {
    let mut site = Site::new(PROXY);
    let mut req = String::new();
    for _ in 0..3 {
        req += &get("/", "");
    }
    req += &get("/", "Connection: close\r\n");
    let r = site.exchange(req.as_bytes());
    assert_eq!(r.len(), 4);
    let by: Vec<String> = r.iter().map(|(_, h, _)| served_by(h)).collect();
    assert_eq!(by, ["web1", "web2", "web1", "web2"]);
    for (status, head, body) in &r {
        assert_eq!(*status, 200);
        assert_eq!(body, format!("hello from {}\n", served_by(head)).as_bytes());
        assert_eq!(head.fields().get(b"via"), Some(&b"1.1 shmnet"[..]));
    }
    assert_eq!(r[3].1.fields().get(b"connection"), Some(&b"close"[..]));
    // One connection to each upstream, each used twice.
    assert_eq!(site.counter("upstream_connects"), 2);
    assert_eq!(site.counter("upstream_reuses"), 2);
    assert_eq!(site.counter("responses_2xx"), 4);
}

#[test]
fn a_large_body_streams_through_intact() {
    let mut site = Site::new(PROXY);
    let r = site.exchange(get("/big", "Connection: close\r\n").as_bytes());
    assert_eq!(r[0].0, 200);
    let body = &r[0].2;
    assert_eq!(body.len(), 1 << 20);
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, b)| *b == generated_byte(i as u64))
    );
}

#[test]
fn request_bodies_go_upstream_in_either_framing() {
    let mut site = Site::new(PROXY);
    let req = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
               POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
               GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let r = site.exchange(req.as_bytes());
    let statuses: Vec<u16> = r.iter().map(|x| x.0).collect();
    assert_eq!(statuses, [200, 200, 200]);
}

#[test]
fn failures_get_short_answers() {
    let mut site = Site::new(PROXY);
    for (req, want) in [
        (get("/nowhere", ""), 504),
        (get("/refused", ""), 502),
        (
            "GET /only HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n".to_string(),
            200,
        ),
        ("BAD REQUEST LINE\r\n\r\n".to_string(), 400),
        (format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000)), 414),
    ] {
        let r = site.exchange(req.as_bytes());
        assert_eq!(r[0].0, want, "{}", &req[..req.len().min(60)]);
    }
    // A route for another host only: this host falls back to "/".
    assert!(site.counter("upstream_timeouts") >= 1);
    assert_eq!(site.counter("bad_requests"), 2);
}

#[test]
fn a_session_cookie_sticks_to_one_upstream() {
    let mut site = Site::new(PROXY);
    let mut seen = std::collections::BTreeSet::new();
    for session in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let mut req = String::new();
        for i in 0..3 {
            let close = if i == 2 { "Connection: close\r\n" } else { "" };
            req += &format!(
                "GET / HTTP/1.1\r\nHost: sticky.example\r\nCookie: a=1; session={session}\r\n{close}\r\n"
            );
        }
        let r = site.exchange(req.as_bytes());
        let by: Vec<String> = r.iter().map(|(_, h, _)| served_by(h)).collect();
        assert!(by.iter().all(|b| *b == by[0]), "{session}: {by:?}");
        seen.insert(by[0].clone());
    }
    assert_eq!(seen.len(), 2, "six sessions all on {seen:?}");
}

#[test]
fn fresh_responses_are_served_from_the_cache_with_their_age() {
    let mut site = Site::new(PROXY);
    let r = site.exchange(get("/static/a", "Connection: close\r\n").as_bytes());
    assert_eq!(r[0].0, 200);
    assert!(r[0].1.fields().get(b"age").is_none());
    let first = served_by(&r[0].1);
    let connects = site.counter("upstream_connects");
    // Again, and again after 5 s: from the cache, the same server's copy.
    site.hosts.clock.run_for(&mut [], Duration::from_secs(5));
    let r = site
        .exchange((get("/static/a", "") + &get("/static/a", "Connection: close\r\n")).as_bytes());
    for (status, head, body) in &r {
        assert_eq!(*status, 200);
        assert_eq!(served_by(head), first);
        assert_eq!(body, format!("static from {first}\n").as_bytes());
        let age: u64 = std::str::from_utf8(head.fields().get(b"age").expect("an Age field"))
            .unwrap()
            .parse()
            .unwrap();
        assert!((5..=6).contains(&age), "age {age}");
    }
    assert_eq!(site.counter("upstream_connects"), connects);
    assert_eq!(site.counter("cache_hits"), 2);
    assert_eq!(site.counter("cache_stores"), 1);
    // Not cacheable (no freshness) or asked to revalidate: upstream.
    site.exchange(get("/", "Connection: close\r\n").as_bytes());
    site.exchange(
        get(
            "/static/a",
            "Cache-Control: no-cache\r\nConnection: close\r\n",
        )
        .as_bytes(),
    );
    assert_eq!(site.counter("cache_hits"), 2);
    assert_eq!(site.counter("cache_misses"), 3);
}

#[test]
fn applications_are_counted_and_policed() {
    let proxy = format!(
        r#"{PROXY}
apps = [
    {{ name = "limited", path = "/limited", rate = 1.0, burst = 2.0 }},
    {{ name = "blocked", path = "/blocked", deny = ["10.0.0.0/24"] }},
    {{ name = "busy", path = "/busy", max_concurrent = 1 }},
    {{ name = "rest", path = "/" }},
]"#
    );
    let mut site = Site::new(&proxy);
    let r = site.exchange((get("/limited", "").repeat(3)).as_bytes());
    let statuses: Vec<u16> = r.iter().map(|x| x.0).collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(r[2].1.fields().get(b"retry-after"), Some(&b"1"[..]));
    // A second later the bucket has a token again.
    site.hosts.clock.run_for(&mut [], Duration::from_secs(1));
    let r = site.exchange(get("/limited", "Connection: close\r\n").as_bytes());
    assert_eq!(r[0].0, 200);
    let r = site.exchange(get("/blocked", "").as_bytes());
    assert_eq!(r[0].0, 403);
    let r = site.exchange((get("/", "") + &get("/x", "Connection: close\r\n")).as_bytes());
    assert_eq!(r.len(), 2);
    let c = |site: &mut Site, n: &str| site.counter(&format!("app.{n}"));
    assert_eq!(c(&mut site, "limited.requests"), 4);
    assert_eq!(c(&mut site, "limited.rate_limited"), 1);
    assert_eq!(c(&mut site, "limited.status_2xx"), 3);
    assert_eq!(c(&mut site, "limited.status_4xx"), 1);
    assert_eq!(c(&mut site, "blocked.denied"), 1);
    assert_eq!(c(&mut site, "blocked.status_4xx"), 1);
    assert_eq!(c(&mut site, "rest.requests"), 2);
    assert_eq!(c(&mut site, "rest.status_2xx"), 2);
    assert!(c(&mut site, "rest.bytes_out") > 2 * 20);
    // Every answered request of `rest` is in one latency bucket.
    let buckets: u64 = super::LATENCY_BUCKETS_MS
        .iter()
        .map(|ms| c(&mut site, &format!("rest.latency_le_{ms}ms")))
        .sum::<u64>()
        + c(&mut site, "rest.latency_le_inf");
    assert_eq!(buckets, 2);
    assert_eq!(c(&mut site, "busy.requests"), 0);
}

#[test]
fn active_checks_take_a_dead_upstream_out_before_a_request_meets_it() {
    let proxy = r#"kind = "http-proxy"
pools = [{ name = "web", upstreams = ["10.0.0.3:80", "10.0.0.9:80", "10.0.0.4:80"],
           health = { path = "/health", interval = "200ms", timeout = "100ms", fall = 2, rise = 2 } }]
routes = [{ path = "/", pool = "web" }]"#;
    let mut site = Site::new(proxy);
    site.hosts.idle(Duration::from_secs(2));
    assert_eq!(site.counter("upstreams_marked_down"), 1);
    assert!(site.counter("health_checks_passed") >= 10);
    let mut req = get("/", "").repeat(5);
    req += &get("/", "Connection: close\r\n");
    let r = site.exchange(req.as_bytes());
    let by: Vec<String> = r.iter().map(|(_, h, _)| served_by(h)).collect();
    assert_eq!(r.iter().filter(|x| x.0 == 200).count(), 6, "{by:?}");
    assert_eq!(by, ["web1", "web2", "web1", "web2", "web1", "web2"]);
    assert_eq!(site.counter("upstream_timeouts"), 0);
}

#[test]
fn a_client_that_never_finishes_its_head_is_closed_after_the_idle_timeout() {
    let proxy = PROXY.replace("connect_timeout = \"2s\"", "idle_timeout = \"5s\"");
    let mut site = Site::new(&proxy);
    // Slowloris: half a head, then nothing.
    let r = site.exchange(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: 1\r\n");
    assert!(r.is_empty());
    let took = site.hosts.clock.now().total_millis();
    assert!((5000..7000).contains(&took), "closed after {took} ms");
    assert_eq!(site.counter("requests"), 0);
}

#[test]
fn a_new_config_applies_in_place_and_the_open_connection_goes_on() {
    let mut site = Site::new(PROXY);
    let h = site.open(None);
    let got = site.hosts.talk(h, get("/", "").as_bytes(), |_, got| {
        got.ends_with(b"hello from web1\n")
    });
    assert_eq!(served_by(&responses(&got)[0].1), "web1");
    // web1 leaves the pool: the next request, on the same connection,
    // goes to web2; so do the ones after.
    let new = PROXY.replace(
        r#"upstreams = ["10.0.0.3:80", "10.0.0.4:80"] },"#,
        r#"upstreams = ["10.0.0.4:80"] },"#,
    );
    let cfg: crate::functions::FunctionConfig = toml::from_str(&new).unwrap();
    assert_eq!(
        site.hosts.devices[1].reconfigure(&cfg).unwrap(),
        crate::stack::Applied::InPlace
    );
    let req = get("/", "") + &get("/", "Connection: close\r\n");
    let got = site.hosts.talk(h, req.as_bytes(), |s, _| !s.may_recv());
    let by: Vec<String> = responses(&got)
        .iter()
        .map(|(_, h, _)| served_by(h))
        .collect();
    assert_eq!(by, ["web2", "web2"]);
    assert_eq!(site.counter("connections"), 1);
    assert_eq!(site.counter("requests"), 3);
}

#[test]
fn a_client_that_does_not_read_holds_back_its_upstream_not_the_proxy_memory() {
    let proxy = format!("{PROXY}\ntcp_buffer = 16384");
    let mut site = Site::new(&proxy);
    // Asks for 1 MiB and never reads.
    let h = site.open(Some(4096));
    site.hosts.talk(h, get("/big", "").as_bytes(), |_, _| true);
    site.hosts.idle(Duration::from_secs(5));
    let sent_by_web: u64 = site.hosts.devices[2..]
        .iter_mut()
        .map(|d| {
            d.stats()
                .function_counters
                .iter()
                .find(|(n, _)| n == "bytes_out")
                .map_or(0, |c| c.1)
        })
        .sum();
    assert!(
        (1..256 << 10).contains(&sent_by_web),
        "the upstream sent {sent_by_web} bytes to a proxy whose client reads nothing"
    );
}

#[test]
fn beyond_max_connections_a_client_is_refused_and_the_others_go_on() {
    let proxy = format!("{PROXY}\nmax_connections = 1");
    let mut site = Site::new(&proxy);
    let first = site.open(None);
    site.hosts
        .talk(first, b"", |s, _| s.state() == tcp::State::Established);
    // The first holds the only place: the second is refused.
    let second = site.open(None);
    site.hosts
        .talk(second, b"", |s, _| s.state() == tcp::State::Closed);
    // The first is served all the same.
    let got = site.hosts.talk(
        first,
        get("/", "Connection: close\r\n").as_bytes(),
        |s, _| !s.may_recv(),
    );
    assert_eq!(responses(&got)[0].0, 200);
    // Its place is free again, at the latest once the proxy gives up on
    // the first client finishing its close (it never does here).
    site.hosts.idle(Duration::from_secs(6));
    let r = site.exchange(get("/", "Connection: close\r\n").as_bytes());
    assert_eq!(r[0].0, 200);
}

/// An upstream that answers every connection with the head of a 100 kB
/// response, 1000 bytes of its body, and then a reset.
struct Breaks {
    socks: Vec<SocketHandle>,
    sent: Vec<bool>,
}

impl crate::stack::Function for Breaks {
    fn kind(&self) -> crate::stack::FunctionKind {
        crate::stack::FunctionKind::socket("breaks")
    }
    fn attach(&mut self, cx: &mut crate::stack::SocketContext<'_>) {
        self.socks = crate::functions::socket::listen_on(cx, 80, 4, None);
        self.sent = vec![false; 4];
    }
    fn poll(&mut self, cx: &mut crate::stack::SocketContext<'_>) -> bool {
        for (i, &h) in self.socks.iter().enumerate() {
            let s = cx.sockets.get_mut::<tcp::Socket>(h);
            if !s.is_open() {
                let _ = s.listen(80);
                self.sent[i] = false;
            } else if s.may_send() && s.recv_queue() > 0 && !self.sent[i] {
                let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
                out.extend_from_slice(&[b'x'; 1000]);
                let _ = s.send_slice(&out);
                self.sent[i] = true;
            } else if self.sent[i] && s.send_queue() == 0 {
                s.abort();
            }
        }
        false
    }
}

#[test]
fn an_upstream_that_resets_mid_body_cuts_the_client_off_not_the_proxy() {
    let _ = crate::functions::register("breaks-mid-body", |_| {
        Ok(Box::new(Breaks {
            socks: Vec::new(),
            sent: Vec::new(),
        }))
    });
    let mut site = Site::new(PROXY);
    // web2 (10.0.0.4) is replaced by the breaking upstream.
    drop(site.hosts.devices.pop());
    let broken = DeviceToml::host("web2", &site.hosts.lan, &site.hosts.wan, 4)
        .function_table("kind = \"breaks-mid-body\"")
        .settings();
    site.hosts.devices.push(device(&broken));
    // Two requests: web1 answers the first, the second meets the reset.
    let h = site.open(None);
    let got = site
        .hosts
        .talk(h, get("/", "").repeat(2).as_bytes(), |s, _| {
            s.state() == tcp::State::Closed
        });
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("hello from web1"), "{text}");
    assert!(text.contains("Content-Length: 100000"), "{text}");
    assert!(got.len() < 2000, "{} bytes", got.len());
    // The proxy goes on: the next client is served (by web1, the pool
    // having counted web2's failure).
    assert_eq!(site.counter("upstream_failures"), 1);
    let r = site.exchange(get("/", "Connection: close\r\n").as_bytes());
    assert_eq!(r[0].0, 200);
}

#[test]
fn config_errors_name_the_field() {
    let err = |text: &str| config_error(text, super::HttpProxy::new);
    let pool = "pools = [{ name = \"web\", upstreams = [\"10.0.0.3:80\"] }]\n";
    for (text, want) in [
        (
            "routes = [{ pool = \"web\" }]".to_string(),
            "at least one [[pools]]",
        ),
        (pool.to_string(), "at least one [[routes]]"),
        (
            format!("{pool}routes = [{{ pool = \"nope\" }}]"),
            "routes[0].pool \"nope\" is not a pool",
        ),
        (
            format!("{pool}routes = [{{ path = \"x\", pool = \"web\" }}]"),
            "must start with /",
        ),
        (
            "pools = [{ name = \"h\", upstreams = [\"10.0.0.3:80\"], balance = \"hash\" }]\nroutes = [{ pool = \"h\" }]".to_string(),
            "needs one of hash_header and hash_cookie",
        ),
        (
            format!("{pool}routes = [{{ pool = \"web\" }}]\nmax_headers = 0"),
            "max_headers must be",
        ),
        (
            format!("{pool}routes = [{{ pool = \"web\" }}]\napps = [{{ name = \"a b\" }}]"),
            "apps[0].name",
        ),
        (
            format!("{pool}routes = [{{ pool = \"web\" }}]\napps = [{{ name = \"a\", rate = 0.0 }}]"),
            "apps[0].rate must be above 0",
        ),
        (
            format!("{pool}routes = [{{ pool = \"web\" }}]\napps = [{{ name = \"a\", deny = [\"nope\"] }}]"),
            "apps[0].deny: \"nope\" is not a prefix",
        ),
    ] {
        let e = err(&text);
        assert!(e.contains(want), "{text}: {e}");
    }
}
