//! HTTP/1.1 message syntax and framing (RFC 9112), sans-IO: byte buffers
//! in, parsed heads, body pieces and encoded bytes out. No sockets, no
//! clock; the caller owns every buffer, so the same code serves the
//! `http-server` function, the proxy and the fuzz targets.
//!
//! - Heads: [`HeadParser`] finds the end of a request or response head in
//!   what has arrived so far (remembering how far it looked), enforces the
//!   [`Limits`] (request line → 414, head size and field count → 431) and
//!   parses it into a reusable [`RequestHead`] / [`ResponseHead`] that owns
//!   a copy of the head's bytes and keeps fields as ranges into it. The
//!   tokenizing is httparse's (strict defaults: no obs-fold, no whitespace
//!   before a colon, no bare CR); the semantics are ours: `Host`, the
//!   request-target form, `Content-Length` and `Transfer-Encoding`
//!   (RFC 9112 §6.3), `Connection`.
//! - Bodies: a head says how its body is framed ([`BodyKind`]);
//!   [`BodyDecoder`] walks it incrementally and hands out data pieces as
//!   ranges of the caller's input, never buffering: chunked (extensions,
//!   trailers, bounded size lines, overflow), Content-Length, read until
//!   close. [`encode_chunk`] (or [`encode_chunk_into`] a send buffer) and
//!   [`LAST_CHUNK`] re-frame a body as chunked.
//! - Connection semantics: [`Head::keep_alive`] (of either head),
//!   hop-by-hop fields
//!   ([`Fields::is_hop_by_hop`], [`HOP_BY_HOP`]).
//! - Output: [`HeadWriter`] writes a head; [`RequestHead::emit`] and
//!   [`ResponseHead::emit`] forward a parsed head with fields removed and
//!   added ([`Rewrite`]; values for `Via`, `X-Forwarded-For` and
//!   `Forwarded` from [`via`], [`x_forwarded_for`], [`forwarded`]);
//!   [`error_response`] writes a short complete error response.
//!
//! Errors are [`HttpError`]; [`HttpError::status`] is the status to answer
//! a bad request with (a proxy answers a bad response with 502).
//!
//! ```
//! use shmnet::functions::http::codec::{BodyDecoder, BodyKind, HeadParser, Limits, RequestHead};
//!
//! let input = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
//!               5;ext=1\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\nGET / HTTP/1.1\r\n";
//! let mut parser = HeadParser::new(Limits::default());
//! let mut head = RequestHead::default();
//! let n = parser.parse_request(input, &mut head).unwrap().expect("a whole head");
//! assert_eq!((head.method_bytes(), head.target()), (&b"POST"[..], &b"/up"[..]));
//! assert_eq!(head.body(), BodyKind::Chunked);
//! assert!(head.keep_alive());
//!
//! // The body, piece by piece; the next request's bytes are left alone.
//! let mut body = BodyDecoder::new(head.body(), &Limits::default()).unwrap();
//! let (mut at, mut data) = (n, Vec::new());
//! while !body.is_done() {
//!     let d = body.decode(&input[at..]).unwrap();
//!     data.extend_from_slice(&input[at..][d.data]);
//!     at += d.consumed;
//! }
//! assert_eq!(data, b"hello");
//! assert_eq!(&input[at..], b"GET / HTTP/1.1\r\n");
//! ```

mod body;
mod emit;
mod head;
#[cfg(test)]
mod tests;

pub use body::{
    BodyDecoder, BodyKind, CHUNK_HEADER_MAX, Decoded, LAST_CHUNK, chunk_header, encode_chunk,
    encode_chunk_into,
};
pub use emit::{HeadWriter, Rewrite, error_response, forwarded, reason, via, x_forwarded_for};
pub use head::{
    Fields, HOP_BY_HOP, Head, HeadParser, RequestHead, RequestLine, ResponseHead, StatusLine,
};

/// The largest [`Limits::max_headers`]: the parser's field table lives on
/// the stack.
pub const MAX_HEADERS: usize = 128;

/// What a parser accepts; bigger messages are refused with the status
/// each field names. The defaults suit a proxy in front of ordinary web
/// traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the request line (status line of a response), without its
    /// CRLF; longer → [`HttpError::UriTooLong`] (414). Default 8 KiB.
    pub max_request_line: usize,
    /// Bytes of the whole head, request line to empty line included;
    /// larger → [`HttpError::HeadTooLarge`] (431). Default 32 KiB.
    pub max_head: usize,
    /// Header fields in a head (at most [`MAX_HEADERS`]); more →
    /// [`HttpError::TooManyHeaders`] (431). Default 100.
    pub max_headers: usize,
    /// Bytes of a chunk-size line with its extensions; longer → 400.
    /// Default 1 KiB.
    pub max_chunk_line: usize,
    /// Bytes of a chunked body's trailer section; larger → 400. Default
    /// 8 KiB.
    pub max_trailers: usize,
    /// Bytes of a body (Content-Length, or the sum of its chunks); larger →
    /// [`HttpError::BodyTooLarge`] (413). Default: no limit.
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8 << 10,
            max_head: 32 << 10,
            max_headers: 100,
            max_chunk_line: 1 << 10,
            max_trailers: 8 << 10,
            max_body: u64::MAX,
        }
    }
}

/// The protocol version of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Version {
    /// HTTP/1.0: connections close after each exchange unless the message
    /// asks for `keep-alive`.
    Http10,
    /// HTTP/1.1: persistent connections unless `close`.
    #[default]
    Http11,
}

impl Version {
    /// As written on the wire: `HTTP/1.0` or `HTTP/1.1`.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Version::Http10 => b"HTTP/1.0",
            Version::Http11 => b"HTTP/1.1",
        }
    }
}

/// A request method: the ones whose semantics the codec needs to know
/// (HEAD and CONNECT change how a response is framed) and the other
/// standard ones, by name; anything else is `Other` (its name is in
/// [`RequestHead::method_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// GET.
    #[default]
    Get,
    /// HEAD: its response has no body, whatever its fields say.
    Head,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
    /// CONNECT: its 2xx response starts a tunnel, with no body.
    Connect,
    /// OPTIONS (the only method with the `*` target).
    Options,
    /// TRACE.
    Trace,
    /// PATCH.
    Patch,
    /// An extension method (a valid token, case-sensitive).
    Other,
}

impl Method {
    /// The method named `name` (method names are case-sensitive).
    pub fn from_bytes(name: &[u8]) -> Method {
        match name {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }
}

/// Why a message was refused. Every variant ends the connection: the
/// framing can no longer be trusted. Answer a request error with
/// [`HttpError::status`] (and `Connection: close`, as [`error_response`]
/// does); a proxy answers a response error with 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The request line (or status line) is longer than
    /// [`Limits::max_request_line`]: 414.
    #[error("request line longer than the limit")]
    UriTooLong,
    /// The head is larger than [`Limits::max_head`]: 431.
    #[error("head larger than the limit")]
    HeadTooLarge,
    /// More header fields than [`Limits::max_headers`]: 431.
    #[error("more header fields than the limit")]
    TooManyHeaders,
    /// The head breaks the grammar or a rule of RFC 9112 / 9110 (the text
    /// says which): 400.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// An HTTP version other than 1.0 and 1.1: 505.
    #[error("HTTP version not supported")]
    Version,
    /// Content-Length is not a number, or several differ: 400.
    #[error("invalid Content-Length")]
    ContentLength,
    /// Transfer-Encoding that does not end in `chunked` (a request), or in
    /// an HTTP/1.0 message: 400.
    #[error("invalid Transfer-Encoding")]
    TransferEncoding,
    /// A transfer coding other than `chunked`: 501.
    #[error("transfer coding not implemented")]
    UnsupportedCoding,
    /// A chunked body breaks the grammar (the text says where): 400.
    #[error("malformed chunked body: {0}")]
    Chunk(&'static str),
    /// The body is larger than [`Limits::max_body`]: 413.
    #[error("body larger than the limit")]
    BodyTooLarge,
    /// The connection ended inside a message: 400 (nobody is left to
    /// answer; a proxy reports 502 for a truncated response).
    #[error("connection closed inside a message")]
    Truncated,
}

impl HttpError {
    /// The status code to answer a request that failed this way.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::UriTooLong => 414,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::Version => 505,
            HttpError::UnsupportedCoding => 501,
            HttpError::BodyTooLarge => 413,
            _ => 400,
        }
    }
}

/// Whether `b` may appear in a token (method, field name, coding).
pub(crate) fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
        | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

/// Whether `b` may appear in a field value (VCHAR, obs-text, SP, HTAB).
pub(crate) fn is_field_vchar(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// The elements of a comma-separated list value (RFC 9110 §5.6.1), OWS
/// trimmed, empty ones skipped.
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|e| e.trim_ascii())
        .filter(|e| !e.is_empty())
}
