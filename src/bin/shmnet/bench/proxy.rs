//! `bench proxy`: keep-alive HTTP/1.1 GETs of a 1 KiB body from a client
//! device through an `http-proxy` device to an `http-server` device (devices
//! as threads, shared memory between them), against the same load on
//! kernel sockets through `haproxy` (`mode http`, keep-alive, started for
//! the run with a generated configuration) to a small keep-alive HTTP
//! server on 127.0.0.1 that the bench runs itself. Every response must be
//! a 200 with the whole body.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shmnet::shm::SegmentKind;
use shmnet::stack::NetDevice;
use shmnet::testing::DeviceToml;
use smoltcp::wire::IpAddress;

use super::load::{
    Daemon, KernelLoad, LoadArgs, Protocol, ShmLoad, find, find_within, free_port, skipped_without,
};
use super::report::measure;
use super::{Res, unique};

const BODY_LEN: usize = 1024;
/// Requests in flight per connection: one, as browsers and most clients.
const DEPTH: usize = 1;
const REQUEST: &[u8] = b"GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: shmnet-bench\r\n\r\n";
const CLIENT_BUFFER: usize = 64 << 10;

/// The body every response carries (printable: it sits in a TOML string).
fn body() -> Arc<Vec<u8>> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    Arc::new(
        (0..BODY_LEN)
            .map(|i| ALPHABET[i % ALPHABET.len()])
            .collect(),
    )
}

/// One keep-alive connection's GETs and the checks on their responses.
struct HttpClient {
    body: Arc<Vec<u8>>,
}

impl Protocol for HttpClient {
    fn request(&mut self, out: &mut Vec<u8>) -> bool {
        out.extend_from_slice(REQUEST);
        true
    }

    fn reply(&mut self, input: &[u8]) -> Res<Option<usize>> {
        let Some(end) = find_within(input, b"\r\n\r\n", 4096, "response head longer than 4 KiB")?
        else {
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&input[..end]);
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or("");
        if !status.starts_with("HTTP/1.1 200 ") {
            return Err(format!(
                "response {:?}",
                String::from_utf8_lossy(&input[..input.len().min(600)])
            ));
        }
        let mut length = None;
        for l in lines {
            let Some((name, value)) = l.split_once(':') else {
                return Err(format!("bad header line {l:?}"));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                return Err("the server closes the connection".into());
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(format!("unexpected Transfer-Encoding: {value}"));
            }
        }
        if length != Some(BODY_LEN) {
            return Err(format!("Content-Length {length:?}, want {BODY_LEN}"));
        }
        let total = end + 4 + BODY_LEN;
        if input.len() < total {
            return Ok(None);
        }
        if input[end + 4..total] != self.body[..] {
            return Err("wrong body".into());
        }
        Ok(Some(total))
    }
}

fn clients(body: &Arc<Vec<u8>>, n: usize) -> Vec<HttpClient> {
    (0..n).map(|_| HttpClient { body: body.clone() }).collect()
}

/// Client device → proxy device (10.0.0.2:80) → server device
/// (10.1.0.3:80); returns requests per second.
fn shm_run(body: &Arc<Vec<u8>>, conns: usize, secs: f64) -> Res<f64> {
    let (lan, back) = (unique("lan"), unique("back"));
    let text = String::from_utf8_lossy(body);
    let server = DeviceToml::new(
        "bench-web",
        (back.clone(), "10.1.0.3/24".to_string()),
        (unique("sw"), "10.101.0.3/16".to_string()),
    )
    .function(format!(
        "{{ kind = \"http-server\", name = \"web\", connections = {}, backlog = {}, \
         routes = [{{ path = \"/\", body = \"{text}\" }}] }}",
        2 * conns + 16,
        conns + 8
    ));
    let proxy = DeviceToml::new(
        "bench-proxy",
        (lan.clone(), "10.0.0.2/24".to_string()),
        (back, "10.1.0.2/24".to_string()),
    )
    .function(format!(
        "{{ kind = \"http-proxy\", port = 80, max_connections = {}, backlog = 16, \
         max_idle_per_upstream = {conns}, pools = [{{ name = \"web\", upstreams = [\"10.1.0.3:80\"] }}], \
         routes = [{{ path = \"/\", pool = \"web\" }}] }}",
        4 * conns + 16
    ));
    let mut running = Vec::new();
    let r = (|| {
        for d in [server, proxy] {
            let s = d.parse().map_err(|e| e.to_string())?;
            running.push(
                NetDevice::new(&s, SegmentKind::InProcess)
                    .map_err(|e| e.to_string())?
                    .spawn(),
            );
        }
        let mut s = DeviceToml::new(
            "bench-client",
            (lan, "10.0.0.1/24".to_string()),
            (unique("cw"), "10.100.0.1/16".to_string()),
        )
        .parse()
        .map_err(|e| e.to_string())?;
        s.spec.sockets.tcp_buffer = CLIENT_BUFFER;
        let mut dev = NetDevice::new(&s, SegmentKind::InProcess).map_err(|e| e.to_string())?;
        let load = ShmLoad::connect(&mut dev, (IpAddress::v4(10, 0, 0, 2), 80), conns)?;
        let r = load
            .run(
                &mut dev,
                clients(body, conns),
                DEPTH,
                Some(Duration::from_secs_f64(secs)),
            )
            .map(|o| o.rate());
        load.close(&mut dev);
        r
    })();
    for (h, t) in running {
        h.stop();
        let _ = t.join();
    }
    r.map_err(|e| format!("shmnet: {e}"))
}

/// The kernel-side backend: a thread per connection answering every
/// request head with the body, keep-alive, requests in order.
struct KernelHttp {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KernelHttp {
    fn start(body: &[u8]) -> Res<KernelHttp> {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        let mut response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        let response = Arc::new(response);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for c in l.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(c) = c else { continue };
                let response = response.clone();
                std::thread::spawn(move || serve_http(c, &response));
            }
        });
        Ok(KernelHttp {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for KernelHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers each request head on `c` until the peer closes.
fn serve_http(mut c: TcpStream, response: &[u8]) {
    let _ = c.set_nodelay(true);
    let mut input = Vec::with_capacity(16 << 10);
    let mut tmp = vec![0u8; 16 << 10];
    let mut out = Vec::with_capacity(16 << 10);
    loop {
        let n = match c.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        input.extend_from_slice(&tmp[..n]);
        let mut pos = 0;
        while let Some(e) = find(&input[pos..], b"\r\n\r\n") {
            pos += e + 4;
            out.extend_from_slice(response);
        }
        input.drain(..pos);
        if !out.is_empty() {
            if c.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// The generator → haproxy → [`KernelHttp`]; returns requests per second.
fn kernel_run(body: &Arc<Vec<u8>>, conns: usize, secs: f64) -> Res<f64> {
    let server = KernelHttp::start(body)?;
    let port = free_port()?;
    let cfg = format!(
        "global\n    nbthread 2\n    maxconn 4096\n\
         defaults\n    mode http\n    option http-keep-alive\n    timeout connect 5s\n    \
         timeout client 60s\n    timeout server 60s\n\
         frontend bench\n    bind 127.0.0.1:{port}\n    default_backend web\n\
         backend web\n    http-reuse always\n    server web1 {}\n",
        server.addr
    );
    let path = std::env::temp_dir().join(format!("{}.haproxy.cfg", unique("proxy")));
    std::fs::write(&path, cfg).map_err(|e| format!("{}: {e}", path.display()))?;
    let r = (|| {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let args = ["-db", "-f"]
            .iter()
            .map(|s| s.to_string())
            .chain([path.display().to_string()])
            .collect::<Vec<_>>();
        let _haproxy = Daemon::start("haproxy", &args, addr)?;
        let mut load = KernelLoad::connect(addr, conns)?;
        load.run(
            clients(body, conns),
            DEPTH,
            Some(Duration::from_secs_f64(secs)),
        )
        .map(|o| o.rate())
    })();
    let _ = std::fs::remove_file(&path);
    drop(server);
    r.map_err(|e| format!("kernel: {e}"))
}

/// Runs the benchmark; a machine without `haproxy` gets a `skipped` line.
pub(super) fn bench_proxy(args: LoadArgs, quick: bool, reps: usize) -> Res<String> {
    if let Some(skipped) = skipped_without("proxy", "haproxy") {
        return Ok(skipped);
    }
    let (conns, secs) = args.resolve(quick)?;
    let body = body();
    measure(
        &format!("\"bench\":\"proxy\",\"connections\":{conns},\"depth\":{DEPTH}"),
        "requests/s",
        &format!(",\"seconds\":{secs},\"body\":{BODY_LEN}"),
        reps,
        || shm_run(&body, conns, secs),
        || kernel_run(&body, conns, secs),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nX-Served-By: web\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn only_a_200_with_the_whole_body_counts() {
        let body = body();
        let mut c = HttpClient { body: body.clone() };
        let ok = response("200 OK", &body);
        assert_eq!(c.reply(&ok[..ok.len() - 1]), Ok(None));
        assert_eq!(c.reply(&ok), Ok(Some(ok.len())));
        assert!(c.reply(&response("502 Bad Gateway", &body)).is_err());
        assert!(c.reply(&response("200 OK", &body[1..])).is_err());
        let mut wrong = ok.clone();
        *wrong.last_mut().unwrap() = b'!';
        assert!(c.reply(&wrong).is_err());
    }
}
