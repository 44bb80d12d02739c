//! Request and response heads: finding the end of one in what has
//! arrived, limits, tokenizing (httparse) and the semantics on top
//! (RFC 9112 §3–§6, RFC 9110 §7.2, §7.6.1).

use std::ops::Range;

use super::{BodyKind, HttpError, Limits, MAX_HEADERS, Method, Version, is_tchar, list_elements};

/// The fields a proxy must not forward (RFC 9110 §7.6.1, plus `Trailer`
/// and the legacy `Proxy-Connection`), lower case; the fields a message's
/// `Connection` names are hop-by-hop too ([`Fields::is_hop_by_hop`]).
pub const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The header fields of a parsed head, in order, as written (names keep
/// their case; compare them with the lookups here, which ignore it).
/// The head's bytes are owned, so a head outlives the buffer it was
/// parsed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    /// The head as received (start line to the empty line).
    raw: Vec<u8>,
    /// (name, value) ranges into `raw`; values without surrounding OWS.
    spans: Vec<(Range<usize>, Range<usize>)>,
}

impl Fields {
    /// Every field as (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans
            .iter()
            .map(|(n, v)| (&self.raw[n.clone()], &self.raw[v.clone()]))
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// No fields at all.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The values of every field named `name` (any case), in order.
    pub fn get_all<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The value of the first field named `name` (any case).
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether a list-valued field `name` (e.g. `Connection`) has the
    /// element `token` (any case) in any of its lines.
    pub fn has_token(&self, name: &[u8], token: &[u8]) -> bool {
        self.get_all(name)
            .flat_map(list_elements)
            .any(|e| e.eq_ignore_ascii_case(token))
    }

    /// Whether the field `name` is hop-by-hop in this message: one of
    /// [`HOP_BY_HOP`] or named by its `Connection` field. A proxy drops
    /// these before forwarding.
    pub fn is_hop_by_hop(&self, name: &[u8]) -> bool {
        HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
            || self.has_token(b"connection", name)
    }

    /// The head's bytes as received.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Copies `head` in and records the fields httparse found in it.
    fn fill(&mut self, head: &[u8], parsed: &[httparse::Header<'_>]) {
        self.raw.clear();
        self.raw.extend_from_slice(head);
        self.spans.clear();
        for h in parsed {
            self.spans
                .push((span(head, h.name.as_bytes()), span(head, h.value)));
        }
    }
}

/// A parsed head: the start line `L` ([`RequestLine`] or [`StatusLine`]),
/// version, fields, and what follows from them (body framing,
/// persistence). Reused from one message to the next by [`HeadParser`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head<L> {
    fields: Fields,
    line: L,
    version: Version,
    body: BodyKind,
    must_close: bool,
    close: bool,
    keep_alive_token: bool,
}

/// A request's start line: method and target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestLine {
    method: Method,
    method_span: Range<usize>,
    target: Range<usize>,
}

/// A response's start line: status and reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusLine {
    status: u16,
    reason: Range<usize>,
}

/// A parsed request head: method, target, version, fields, and what
/// follows from them.
pub type RequestHead = Head<RequestLine>;

/// A parsed response head: status, reason, version, fields, and what
/// follows from them and from the request it answers.
pub type ResponseHead = Head<StatusLine>;

impl<L> Head<L> {
    /// The version of the message.
    pub fn version(&self) -> Version {
        self.version
    }
    /// The header fields.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }
    /// How the message's body is framed (for a response it depends on the
    /// request method given to the parser: a response to HEAD has none).
    pub fn body(&self) -> BodyKind {
        self.body
    }
    /// Whether the connection may carry another exchange after this one:
    /// HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with
    /// `Connection: keep-alive`, and never after a message framed by both
    /// Transfer-Encoding and Content-Length (RFC 9112 §6.3) nor after a
    /// response body that ends when the connection does.
    pub fn keep_alive(&self) -> bool {
        !self.must_close
            && !self.close
            && self.body != BodyKind::UntilClose
            && (self.version == Version::Http11 || self.keep_alive_token)
    }
    /// The head's bytes as received.
    pub fn as_bytes(&self) -> &[u8] {
        &self.fields.raw
    }

    /// Copies `bytes` in with the fields httparse found in them, and the
    /// version.
    fn fill(&mut self, bytes: &[u8], parsed: &[httparse::Header<'_>], version: Version) {
        self.fields.fill(bytes, parsed);
        self.version = version;
    }

    /// Records what decides persistence besides the version, once the
    /// body's framing is known.
    fn set_persistence(&mut self, must_close: bool) {
        self.must_close = must_close;
        self.close = self.fields.has_token(b"connection", b"close");
        self.keep_alive_token = self.fields.has_token(b"connection", b"keep-alive");
    }
}

impl RequestHead {
    /// One head parsed from the start of `buf` with `limits`: the head and
    /// the bytes it took, `None` if it is not complete yet.
    pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, HttpError> {
        let mut head = RequestHead::default();
        let n = HeadParser::new(*limits).parse_request(buf, &mut head)?;
        Ok(n.map(|n| (head, n)))
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.line.method
    }
    /// The method's name as written.
    pub fn method_bytes(&self) -> &[u8] {
        &self.fields.raw[self.line.method_span.clone()]
    }
    /// The request target as written (origin form `/path?query`, absolute
    /// form `http://host/path`, authority form `host:port` for CONNECT, or
    /// `*`).
    pub fn target(&self) -> &[u8] {
        &self.fields.raw[self.line.target.clone()]
    }
    /// The path of the target, without its query: what a server routes
    /// on (`/` for an absolute form without a path, the whole target for
    /// the authority and asterisk forms).
    pub fn path(&self) -> &[u8] {
        let t = self.target();
        let t = match t.windows(3).position(|w| w == b"://") {
            Some(i) if t.first() != Some(&b'/') => {
                let rest = &t[i + 3..];
                match rest.iter().position(|&b| b == b'/' || b == b'?') {
                    Some(j) if rest[j] == b'/' => &rest[j..],
                    _ => return b"/",
                }
            }
            _ => t,
        };
        match t.iter().position(|&b| b == b'?' || b == b'#') {
            Some(i) => &t[..i],
            None => t,
        }
    }
    /// Whether the client sent `Expect: 100-continue` and waits for a
    /// `100 Continue` before sending the body.
    pub fn expects_continue(&self) -> bool {
        self.fields
            .get(b"expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"))
    }
}

impl ResponseHead {
    /// One head parsed from the start of `buf`, answering a `method`
    /// request, with `limits`; `None` if it is not complete yet.
    pub fn parse(
        buf: &[u8],
        method: Method,
        limits: &Limits,
    ) -> Result<Option<(ResponseHead, usize)>, HttpError> {
        let mut head = ResponseHead::default();
        let n = HeadParser::new(*limits).parse_response(buf, method, &mut head)?;
        Ok(n.map(|n| (head, n)))
    }

    /// The status code (100..=999).
    pub fn status(&self) -> u16 {
        self.line.status
    }
    /// Whether this is an interim (1xx) response: the final one follows
    /// on the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.line.status)
    }
    /// The reason phrase as written (may be empty).
    pub fn reason(&self) -> &[u8] {
        &self.fields.raw[self.line.reason.clone()]
    }
}

/// Finds and parses heads in a connection's input. It remembers how far it
/// looked for the end of the head, so feeding it the same buffer with more
/// bytes appended costs only the new bytes; after a complete head (or an
/// error) it starts afresh.
#[derive(Debug, Clone)]
pub struct HeadParser {
    limits: Limits,
    /// Where to look on for the head's end, relative to the buffer.
    scanned: usize,
}

impl HeadParser {
    /// A parser with these limits ([`Limits::max_headers`] is capped at
    /// [`MAX_HEADERS`]).
    pub fn new(limits: Limits) -> HeadParser {
        HeadParser { limits, scanned: 0 }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Forgets a partial head (the caller dropped its bytes).
    pub fn reset(&mut self) {
        self.scanned = 0;
    }

    /// Parses a request head from the start of `buf` (the bytes of the
    /// connection not consumed yet, the same start as the last call) into
    /// `head`: `Some(bytes of the head)` when it is complete, `None` when
    /// more bytes are needed. Empty lines before the request line are
    /// skipped (RFC 9112 §2.2) and counted in the bytes taken.
    pub fn parse_request(
        &mut self,
        buf: &[u8],
        head: &mut RequestHead,
    ) -> Result<Option<usize>, HttpError> {
        let Some((start, end)) = self.find_head(buf)? else {
            return Ok(None);
        };
        let bytes = &buf[start..end];
        // Uninitialised: no 4 KiB of stores per request.
        let mut table = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let max = self.limits.max_headers.min(MAX_HEADERS);
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(bytes, &mut table[..max]) {
            Ok(httparse::Status::Complete(n)) if n == bytes.len() => {}
            Ok(_) => return Err(HttpError::Malformed("head ends early")),
            Err(e) => return Err(head_error(e, bytes, true)),
        }
        let (Some(method), Some(target)) = (req.method, req.path) else {
            return Err(HttpError::Malformed("no request line"));
        };
        let method_span = span(bytes, method.as_bytes());
        let target_span = span(bytes, target.as_bytes());
        let version = if req.version == Some(0) {
            Version::Http10
        } else {
            Version::Http11
        };
        head.fill(bytes, req.headers, version);
        head.line = RequestLine {
            method: Method::from_bytes(method.as_bytes()),
            method_span,
            target: target_span,
        };
        check_target(head.method(), head.target())?;
        let hosts = head.fields.get_all(b"host").count();
        if hosts > 1 || (hosts == 0 && version == Version::Http11) {
            return Err(HttpError::Malformed("a request needs exactly one Host"));
        }
        let framing = framing(&head.fields, version)?;
        head.body = match framing {
            Framing::Chunked => BodyKind::Chunked,
            Framing::Length(n) => BodyKind::Length(n),
            Framing::None => BodyKind::None,
            Framing::NotChunked => return Err(HttpError::TransferEncoding),
        };
        head.set_persistence(has_both(&head.fields));
        Ok(Some(end))
    }

    /// Parses a response head answering a `method` request (see
    /// [`HeadParser::parse_request`]).
    pub fn parse_response(
        &mut self,
        buf: &[u8],
        method: Method,
        head: &mut ResponseHead,
    ) -> Result<Option<usize>, HttpError> {
        let Some((start, end)) = self.find_head(buf)? else {
            return Ok(None);
        };
        let bytes = &buf[start..end];
        let mut table = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let max = self.limits.max_headers.min(MAX_HEADERS);
        let mut res = httparse::Response::new(&mut table[..max]);
        match res.parse(bytes) {
            Ok(httparse::Status::Complete(n)) if n == bytes.len() => {}
            Ok(_) => return Err(HttpError::Malformed("head ends early")),
            Err(e) => return Err(head_error(e, bytes, false)),
        }
        let status = res.code.unwrap_or(0);
        if status < 100 {
            return Err(HttpError::Malformed("status code below 100"));
        }
        let version = if res.version == Some(0) {
            Version::Http10
        } else {
            Version::Http11
        };
        head.fill(bytes, res.headers, version);
        // "HTTP/1.1 200 reason": the reason starts after the second space.
        let line = line_end(bytes);
        head.line = StatusLine {
            status,
            reason: 13.min(line)..line,
        };
        let no_body = method == Method::Head
            || (100..200).contains(&status)
            || status == 204
            || status == 304
            || (method == Method::Connect && (200..300).contains(&status));
        head.body = if no_body {
            BodyKind::None
        } else {
            match framing(&head.fields, version)? {
                Framing::Chunked => BodyKind::Chunked,
                Framing::Length(n) => BodyKind::Length(n),
                // RFC 9112 §6.3: a response without framing, or whose last
                // coding is not chunked, ends with the connection.
                Framing::None | Framing::NotChunked => BodyKind::UntilClose,
            }
        };
        head.set_persistence(!no_body && has_both(&head.fields));
        Ok(Some(end))
    }

    /// Where the head in `buf` starts (after empty lines) and ends (after
    /// its empty line), once it is all there; the limits checked on the
    /// way.
    fn find_head(&mut self, buf: &[u8]) -> Result<Option<(usize, usize)>, HttpError> {
        let limits = self.limits;
        let mut start = 0;
        loop {
            match &buf[start..] {
                [b'\r', b'\n', ..] => start += 2,
                [b'\n', ..] => start += 1,
                // A lone CR may start the next line ending: not counted
                // against the limit until it is one (as a whole buffer
                // would judge it).
                [b'\r'] | [] => return self.incomplete(start),
                _ => break,
            }
            if start > limits.max_head {
                return Err(HttpError::HeadTooLarge);
            }
        }
        let from = self.scanned.min(buf.len()).max(start);
        let first_lf = memchr(b'\n', &buf[start..]);
        let line = first_lf.unwrap_or(buf.len() - start);
        // Without its CR, whether or not its LF is there yet.
        let line = if line > 0 && buf[start + line - 1] == b'\r' {
            line - 1
        } else {
            line
        };
        if line > limits.max_request_line {
            self.scanned = 0;
            return Err(HttpError::UriTooLong);
        }
        let mut at = from;
        while let Some(i) = memchr(b'\n', &buf[at..]) {
            let lf = at + i;
            match &buf[lf + 1..] {
                [b'\n', ..] => return self.found(start, lf + 2),
                [b'\r', b'\n', ..] => return self.found(start, lf + 3),
                [] | [b'\r'] => {
                    // Its next line has not arrived: look again here.
                    self.scanned = lf;
                    return self.incomplete(buf.len() - start);
                }
                _ => at = lf + 1,
            }
        }
        self.scanned = buf.len();
        self.incomplete(buf.len() - start)
    }

    fn found(&mut self, start: usize, end: usize) -> Result<Option<(usize, usize)>, HttpError> {
        self.scanned = 0;
        if end - start > self.limits.max_head {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(Some((start, end)))
    }

    fn incomplete(&mut self, len: usize) -> Result<Option<(usize, usize)>, HttpError> {
        if len > self.limits.max_head {
            self.scanned = 0;
            return Err(HttpError::HeadTooLarge);
        }
        Ok(None)
    }
}

/// How the fields frame a body, before the message kind decides.
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Transfer-Encoding whose last coding is not chunked.
    NotChunked,
}

/// RFC 9112 §6.1–§6.3 on the message's Transfer-Encoding and
/// Content-Length fields.
fn framing(fields: &Fields, version: Version) -> Result<Framing, HttpError> {
    if fields.get(b"transfer-encoding").is_some() {
        if version == Version::Http10 {
            // §6.1: faulty framing in a 1.0 message.
            return Err(HttpError::TransferEncoding);
        }
        let mut last: Option<&[u8]> = None;
        let mut others = false;
        for c in fields.get_all(b"transfer-encoding").flat_map(list_elements) {
            // Parameters (`;q=…`) are not allowed on transfer codings we
            // know, and chunked must come once, last (RFC 9112 §6.1).
            if !c.iter().all(|&b| is_tchar(b))
                || last.is_some_and(|l| l.eq_ignore_ascii_case(b"chunked"))
            {
                return Err(HttpError::TransferEncoding);
            }
            others |= last.is_some();
            last = Some(c);
        }
        return match last {
            None => Err(HttpError::TransferEncoding),
            Some(c) if !c.eq_ignore_ascii_case(b"chunked") => Ok(Framing::NotChunked),
            // gzip, chunked: framed as chunked, but a coding we cannot undo.
            Some(_) if others => Err(HttpError::UnsupportedCoding),
            Some(_) => Ok(Framing::Chunked),
        };
    }
    let mut length = None;
    for value in fields.get_all(b"content-length") {
        // A list of identical values is one value (RFC 9110 §8.6).
        for e in value.split(|&b| b == b',').map(|e| e.trim_ascii()) {
            let n = parse_decimal(e).ok_or(HttpError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::None, Framing::Length))
}

/// Both Transfer-Encoding and Content-Length: TE wins, but the connection
/// must close after the exchange (RFC 9112 §6.3, item 3).
fn has_both(fields: &Fields) -> bool {
    fields.get(b"transfer-encoding").is_some() && fields.get(b"content-length").is_some()
}

/// 1*DIGIT as a u64; `None` if empty, not digits, or too large.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// RFC 9112 §3.2: the target's form must fit the method, and be visible
/// ASCII.
fn check_target(method: Method, target: &[u8]) -> Result<(), HttpError> {
    if !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(HttpError::Malformed("request target is not visible ASCII"));
    }
    let ok = match (method, target.first()) {
        (Method::Connect, _) => !target.contains(&b'/') && target.contains(&b':'),
        (_, Some(b'/')) => true,
        (Method::Options, Some(b'*')) => target == b"*",
        _ => {
            let scheme = target.iter().position(|&b| b == b':').unwrap_or(0);
            scheme > 0
                && target[..scheme]
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
                && target[scheme..].starts_with(b"://")
        }
    };
    if ok {
        Ok(())
    } else {
        Err(HttpError::Malformed("request target of the wrong form"))
    }
}

/// httparse's error for the head `bytes` (of a request or not) as ours:
/// a well-placed version that is HTTP/x.y but not 1.0 or 1.1 is 505, too
/// many fields 431, the rest 400.
fn head_error(e: httparse::Error, bytes: &[u8], request: bool) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Version => {
            let line = &bytes[..line_end(bytes)];
            let mut parts = line.split(|&b| b == b' ');
            // method SP target SP version; version SP status SP reason.
            let version = match request {
                true if parts.clone().count() == 3 => parts.nth(2),
                true => None,
                false => parts.next(),
            };
            let versionish = |v: &[u8]| {
                v.len() == 8
                    && v.starts_with(b"HTTP/")
                    && v[5].is_ascii_digit()
                    && v[6] == b'.'
                    && v[7].is_ascii_digit()
            };
            if version.is_some_and(versionish) {
                HttpError::Version
            } else {
                HttpError::Malformed("invalid HTTP version")
            }
        }
        httparse::Error::HeaderName => HttpError::Malformed("invalid field name"),
        httparse::Error::HeaderValue => HttpError::Malformed("invalid field value"),
        httparse::Error::NewLine => HttpError::Malformed("invalid line ending"),
        httparse::Error::Status => HttpError::Malformed("invalid status code"),
        httparse::Error::Token => HttpError::Malformed("invalid token in the start line"),
    }
}

/// The end of the first line, without its CR.
fn line_end(bytes: &[u8]) -> usize {
    match memchr(b'\n', bytes) {
        Some(i) if i > 0 && bytes[i - 1] == b'\r' => i - 1,
        Some(i) => i,
        None => bytes.len(),
    }
}

/// Where `part` (a slice of `whole`) lies in `whole`.
fn span(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

pub(super) fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}
