//! The HTTP side of `shmnet ctl`: a small blocking HTTP/1.1 client, one
//! request per connection, that reads a response by `Content-Length`,
//! chunks or EOF. Apart from the commands and their printers, which only
//! see JSON.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

use super::{Failed, TIMEOUT};

/// The largest answer read (the manager's are a few KiB).
const MAX_BODY: usize = 64 << 20;

/// One request to the manager.
pub(super) struct Request<'a> {
    method: &'a str,
    /// Below the manager's URL.
    path: String,
    /// The bearer token, for requests that change something.
    token: Option<&'a str>,
    /// Content type and bytes.
    body: Option<(&'a str, Vec<u8>)>,
    /// How long the answer may take once the request is sent.
    read_timeout: Duration,
}

impl<'a> Request<'a> {
    /// `method path`, no token, no body, [`TIMEOUT`] to answer.
    pub(super) fn new(method: &'a str, path: impl Into<String>) -> Request<'a> {
        Request {
            method,
            path: path.into(),
            token: None,
            body: None,
            read_timeout: TIMEOUT,
        }
    }

    pub(super) fn token(self, token: &'a str) -> Request<'a> {
        Request {
            token: Some(token),
            ..self
        }
    }

    pub(super) fn body(self, content_type: &'a str, body: impl Into<Vec<u8>>) -> Request<'a> {
        Request {
            body: Some((content_type, body.into())),
            ..self
        }
    }

    pub(super) fn read_timeout(self, read_timeout: Duration) -> Request<'a> {
        Request {
            read_timeout,
            ..self
        }
    }
}

/// The manager's address, from its URL.
pub(super) struct Client {
    url: String,
    host: String,
    port: u16,
    /// Path prefix of the URL (`http://h/mgr` → `/mgr`), without the final `/`.
    base: String,
}

impl Client {
    pub(super) fn new(url: &str) -> Result<Client, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("--manager {url:?}: use http://HOST:PORT (https is not supported)")
        })?;
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse()
                    .map_err(|_| format!("--manager {url:?}: bad port {p:?}"))?,
            ),
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("--manager {url:?}: no host"));
        }
        Ok(Client {
            url: url.to_string(),
            host: host.to_string(),
            port,
            base: base.to_string(),
        })
    }

    pub(super) fn get(&self, path: &str) -> Result<Value, Failed> {
        self.send(Request::new("GET", path))
    }

    /// One request; the JSON answer of a 2xx, else the failure with the
    /// answer's `error`.
    pub(super) fn send(&self, req: Request<'_>) -> Result<Value, Failed> {
        let (method, path) = (req.method, &req.path);
        let (status, answer) = self
            .exchange(&req)
            .map_err(|e| Failed(format!("{method} {}{path}: {e}", self.url)))?;
        let v: Option<Value> = serde_json::from_slice(&answer).ok();
        if !(200..300).contains(&status) {
            let why = match v.as_ref().map(|v| &v["error"]) {
                Some(Value::String(e)) => e.clone(),
                _ => String::from_utf8_lossy(&answer).trim().to_string(),
            };
            return Err(Failed(format!("{method} {path}: HTTP {status}: {why}")));
        }
        v.ok_or_else(|| {
            Failed(format!(
                "{method} {path}: the manager's answer is not JSON: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            ))
        })
    }

    fn exchange(&self, req: &Request<'_>) -> Result<(u16, Vec<u8>), String> {
        let addrs: Vec<_> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .collect();
        let mut last = String::from("no address");
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        let Some(mut s) = stream else {
            return Err(format!(
                "cannot connect: {last} (is the manager running there?)"
            ));
        };
        s.set_read_timeout(Some(req.read_timeout))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut head = format!(
            "{} {}{} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: shmnet-ctl/{}\r\n\
             Accept: application/json\r\nConnection: close\r\n",
            req.method,
            self.base,
            req.path,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(t) = req.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = match &req.body {
            Some((content_type, body)) => {
                head.push_str(&format!("Content-Type: {content_type}\r\n"));
                &body[..]
            }
            None => &[],
        };
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut wire = head.into_bytes();
        wire.extend_from_slice(body);
        s.write_all(&wire).map_err(|e| format!("sending: {e}"))?;
        read_response(&mut s).map_err(|e| format!("reading the answer: {e}"))
    }
}

/// Reads an HTTP/1.1 response: status and body (Content-Length, chunked,
/// or up to EOF).
fn read_response(r: &mut impl Read) -> Result<(u16, Vec<u8>), String> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 << 10 {
            return Err("head too long".into());
        }
        if fill(r, &mut buf)? == 0 {
            return Err("connection closed before the head ended".into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP answer: {status_line:?}"))?;
    let (mut length, mut chunked) = (None, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    let mut rest = buf.split_off(head_end);
    if chunked {
        return Ok((status, dechunk(r, rest)?));
    }
    match length {
        Some(n) if n > MAX_BODY => Err("answer too large".into()),
        Some(n) => {
            while rest.len() < n {
                if fill(r, &mut rest)? == 0 {
                    return Err("connection closed mid-answer".into());
                }
            }
            rest.truncate(n);
            Ok((status, rest))
        }
        None => {
            while fill(r, &mut rest)? > 0 {
                if rest.len() > MAX_BODY {
                    return Err("answer too large".into());
                }
            }
            Ok((status, rest))
        }
    }
}

/// Reads more into `buf`; 0 at EOF.
fn fill(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0u8; 8192];
    loop {
        match r.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("the manager did not answer in time".into());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A chunked body decoded; `have` holds what was read after the head.
fn dechunk(r: &mut impl Read, mut have: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let line_end = loop {
            if let Some(i) = have[at..].windows(2).position(|w| w == b"\r\n") {
                break at + i;
            }
            if have.len() - at > 1024 {
                return Err("chunk size line too long".into());
            }
            if fill(r, &mut have)? == 0 {
                return Err("connection closed mid-chunk".into());
            }
        };
        let line = String::from_utf8_lossy(&have[at..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {line:?}"))?;
        at = line_end + 2;
        if size == 0 {
            return Ok(out);
        }
        if out.len() + size > MAX_BODY {
            return Err("answer too large".into());
        }
        while have.len() < at + size + 2 {
            if fill(r, &mut have)? == 0 {
                return Err("connection closed mid-chunk".into());
            }
        }
        out.extend_from_slice(&have[at..at + size]);
        at += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_length_chunks_or_eof() {
        let mut r: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}junk";
        assert_eq!(read_response(&mut r).unwrap(), (200, b"{}".to_vec()));
        let mut r: &[u8] =
            b"HTTP/1.1 404 No\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n1\r\nd\r\n0\r\n\r\n";
        assert_eq!(read_response(&mut r).unwrap(), (404, b"abcd".to_vec()));
        let mut r: &[u8] = b"HTTP/1.0 200 OK\r\n\r\nrest";
        assert_eq!(read_response(&mut r).unwrap(), (200, b"rest".to_vec()));
        let mut r: &[u8] = b"SSH-2.0\r\n\r\n";
        assert!(read_response(&mut r).is_err());
    }

    #[test]
    fn manager_urls() {
        let c = Client::new("http://10.82.0.2:9100/").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.base.as_str()),
            ("10.82.0.2", 9100, "")
        );
        let c = Client::new("http://[::1]:81/m").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.base.as_str()),
            ("::1", 81, "/m")
        );
        assert_eq!(Client::new("http://mgr").unwrap().port, 80);
        assert!(Client::new("https://mgr").is_err());
        assert!(Client::new("http://mgr:x").is_err());
    }
}
