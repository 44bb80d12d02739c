//! Writing heads: a head from scratch ([`HeadWriter`]), a parsed head
//! forwarded with fields removed and added ([`Rewrite`]), the values a
//! proxy adds (`Via`, `X-Forwarded-For`, `Forwarded`), and short error
//! responses.

use std::io::Write;
use std::net::IpAddr;

use super::{Fields, RequestHead, ResponseHead, Version, is_tchar};

/// Writes a head into a buffer: start line, fields, empty line. Always
/// HTTP/1.1 (an intermediary sends its own version, RFC 9110 §2.5).
/// Names must be tokens and values free of CR and LF: the writer does not
/// check (the caller's fields come from a parsed head or its own config).
pub struct HeadWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> HeadWriter<'a> {
    /// Starts a request head `METHOD TARGET HTTP/1.1` at the end of `out`.
    pub fn request(out: &'a mut Vec<u8>, method: &[u8], target: &[u8]) -> HeadWriter<'a> {
        out.extend_from_slice(method);
        out.push(b' ');
        out.extend_from_slice(target);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        HeadWriter { out }
    }

    /// Starts a response head `HTTP/1.1 STATUS REASON` with the standard
    /// reason phrase ([`reason`]).
    pub fn response(out: &'a mut Vec<u8>, status: u16) -> HeadWriter<'a> {
        HeadWriter::response_with_reason(out, status, reason(status).as_bytes())
    }

    /// Starts a response head with its own reason phrase.
    pub fn response_with_reason(
        out: &'a mut Vec<u8>,
        status: u16,
        reason: &[u8],
    ) -> HeadWriter<'a> {
        let _ = write!(out, "HTTP/1.1 {:03} ", status.min(999));
        out.extend_from_slice(reason);
        out.extend_from_slice(b"\r\n");
        HeadWriter { out }
    }

    /// Goes on with the fields of a head whose start line (and perhaps
    /// some fields) `out` ends with.
    pub fn fields(out: &'a mut Vec<u8>) -> HeadWriter<'a> {
        HeadWriter { out }
    }

    /// Adds the field `name: value`.
    pub fn field(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        debug_assert!(!value.iter().any(|&b| b == b'\r' || b == b'\n'));
        self.out.extend_from_slice(name);
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// Adds `Content-Length: n`.
    pub fn content_length(&mut self, n: u64) -> &mut Self {
        let _ = write!(self.out, "Content-Length: {n}\r\n");
        self
    }

    /// Ends the head with its empty line.
    pub fn finish(self) {
        self.out.extend_from_slice(b"\r\n");
    }
}

/// How a parsed head is forwarded: which of its fields are dropped and
/// which are added after the rest.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rewrite<'a> {
    /// Keep hop-by-hop fields. By default they are dropped, as a proxy
    /// must ([`Fields::is_hop_by_hop`]), and so is Content-Length in a
    /// message with Transfer-Encoding (which overrides it, RFC 9112 §6.3):
    /// the proxy frames what it forwards itself, through `add`.
    pub keep_hop_by_hop: bool,
    /// Further fields to drop, by name (any case).
    pub remove: &'a [&'a [u8]],
    /// Fields to add after the kept ones, in order.
    pub add: &'a [(&'a [u8], &'a [u8])],
}

impl Rewrite<'_> {
    /// Writes the fields of `fields` this rewrite keeps, then its own.
    fn fields(&self, fields: &Fields, w: &mut HeadWriter<'_>) {
        let te = fields.get(b"transfer-encoding").is_some();
        for (name, value) in fields.iter() {
            let dropped = self.remove.iter().any(|r| name.eq_ignore_ascii_case(r))
                || (!self.keep_hop_by_hop
                    && (fields.is_hop_by_hop(name)
                        || (te && name.eq_ignore_ascii_case(b"content-length"))));
            if !dropped {
                w.field(name, value);
            }
        }
        for (name, value) in self.add {
            w.field(name, value);
        }
    }
}

impl RequestHead {
    /// Writes this request's head as HTTP/1.1, its fields rewritten by
    /// `rewrite`, at the end of `out`.
    pub fn emit(&self, rewrite: &Rewrite<'_>, out: &mut Vec<u8>) {
        self.emit_with_target(self.target(), rewrite, out);
    }

    /// [`RequestHead::emit`] with another request target (e.g. the origin
    /// form of an absolute-form target).
    pub fn emit_with_target(&self, target: &[u8], rewrite: &Rewrite<'_>, out: &mut Vec<u8>) {
        let mut w = HeadWriter::request(out, self.method_bytes(), target);
        rewrite.fields(self.fields(), &mut w);
        w.finish();
    }
}

impl ResponseHead {
    /// Writes this response's head as HTTP/1.1 with its status and reason,
    /// its fields rewritten by `rewrite`, at the end of `out`.
    pub fn emit(&self, rewrite: &Rewrite<'_>, out: &mut Vec<u8>) {
        let mut w = HeadWriter::response_with_reason(out, self.status(), self.reason());
        rewrite.fields(self.fields(), &mut w);
        w.finish();
    }
}

/// The standard reason phrase of `status` (`""` for one we do not name).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Appends a complete short response for `status` (400, 403, 404, 413,
/// 414, 429, 431, 502, 503, 504, …) to `out`: a one-line text body naming
/// the status, `Connection: close` (the connection ends after it), and
/// `Retry-After` for 429 and 503 when `retry_after` (seconds) is given.
pub fn error_response(status: u16, retry_after: Option<u32>, out: &mut Vec<u8>) {
    let body = format!("{status} {}\n", reason(status));
    let mut w = HeadWriter::response(out, status);
    w.field(b"Content-Type", b"text/plain; charset=utf-8")
        .content_length(body.len() as u64)
        .field(b"Connection", b"close");
    if let (Some(secs), 429 | 503) = (retry_after, status) {
        w.field(b"Retry-After", secs.to_string().as_bytes());
    }
    w.finish();
    out.extend_from_slice(body.as_bytes());
}

/// The values of every `name` field of `fields` joined by ", ", with
/// `element` appended: how a proxy extends a list-valued field.
fn appended(fields: &Fields, name: &[u8], element: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for old in fields.get_all(name) {
        v.extend_from_slice(old);
        v.extend_from_slice(b", ");
    }
    v.extend_from_slice(element);
    v
}

/// The `Via` value a proxy sends on (RFC 9110 §7.6.3): the message's
/// `Via` with `1.x by` appended, `1.x` being the version the proxy
/// received the message in and `by` its pseudonym (a token).
pub fn via(fields: &Fields, received: Version, by: &str) -> Vec<u8> {
    let proto = match received {
        Version::Http10 => "1.0",
        Version::Http11 => "1.1",
    };
    appended(fields, b"via", format!("{proto} {by}").as_bytes())
}

/// The `X-Forwarded-For` value a proxy sends on: the request's list with
/// the client's address appended.
pub fn x_forwarded_for(fields: &Fields, client: IpAddr) -> Vec<u8> {
    appended(fields, b"x-forwarded-for", client.to_string().as_bytes())
}

/// The `Forwarded` value a proxy sends on (RFC 7239): the request's list
/// with one element appended, `for=` the client, and `by=`, `proto=`,
/// `host=` when given. IPv6 addresses and hosts that are not tokens are
/// quoted.
pub fn forwarded(
    fields: &Fields,
    client: IpAddr,
    by: Option<IpAddr>,
    proto: Option<&str>,
    host: Option<&[u8]>,
) -> Vec<u8> {
    let mut e = Vec::new();
    let mut pair = |key: &str, value: &[u8]| {
        if !e.is_empty() {
            e.push(b';');
        }
        e.extend_from_slice(key.as_bytes());
        e.push(b'=');
        if !value.is_empty() && value.iter().all(|&b| is_tchar(b)) {
            e.extend_from_slice(value);
        } else {
            e.push(b'"');
            for &b in value {
                if b == b'"' || b == b'\\' {
                    e.push(b'\\');
                }
                e.push(b);
            }
            e.push(b'"');
        }
    };
    let node = |a: IpAddr| match a {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    pair("for", node(client).as_bytes());
    if let Some(by) = by {
        pair("by", node(by).as_bytes());
    }
    if let Some(proto) = proto {
        pair("proto", proto.as_bytes());
    }
    if let Some(host) = host {
        pair("host", host);
    }
    appended(fields, b"forwarded", &e)
}
