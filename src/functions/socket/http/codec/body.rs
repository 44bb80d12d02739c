//! Message bodies (RFC 9112 §6, §7): the incremental decoder that walks a
//! body's framing and hands out its data as ranges of the caller's input,
//! and the chunked encoder.

use std::ops::Range;

use super::{HttpError, Limits, is_field_vchar, is_tchar};

/// How a message's body is framed, from its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyKind {
    /// No body: a request without framing fields, a response to HEAD, a
    /// 1xx, 204 or 304 response.
    #[default]
    None,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the connection closes (a response without
    /// framing); the connection cannot be kept.
    UntilClose,
}

/// One step of [`BodyDecoder::decode`]: how many input bytes it took
/// (framing and data), and where in the input the data piece lies (empty
/// when the step took only framing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input consumed; drop them before the next call.
    pub consumed: usize,
    /// The body data in this step, a range of the input (within
    /// `..consumed`).
    pub data: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    UntilClose,
    /// Hex digits of a chunk size (`digits` so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size, before `;` or the CR.
    Bws(u64),
    /// Chunk extensions, after the first `;`, up to the CR.
    Ext {
        size: u64,
        quoted: bool,
        escaped: bool,
    },
    /// The size line's CR was seen; its LF must follow.
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// Walks one message body. Feed it the input that follows what it
/// consumed so far; it takes framing bytes and hands out data pieces as
/// ranges of that input, without copying or buffering anything, and stops
/// at the body's end, so bytes of the next message are never consumed.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
    /// Bytes of the current chunk-size line, or of the trailer section.
    line: usize,
    /// Data bytes the chunk sizes announced so far (against `max_body`).
    total: u64,
    /// Data bytes handed out so far.
    handed: u64,
    max_chunk_line: usize,
    max_trailers: usize,
    max_body: u64,
}

impl BodyDecoder {
    /// A decoder for a body framed as `kind`; a Content-Length above
    /// [`Limits::max_body`] is refused at once.
    pub fn new(kind: BodyKind, limits: &Limits) -> Result<BodyDecoder, HttpError> {
        let state = match kind {
            BodyKind::None | BodyKind::Length(0) => State::Done,
            BodyKind::Length(n) if n > limits.max_body => return Err(HttpError::BodyTooLarge),
            BodyKind::Length(n) => State::Length(n),
            BodyKind::Chunked => State::Size { size: 0, digits: 0 },
            BodyKind::UntilClose => State::UntilClose,
        };
        Ok(BodyDecoder {
            state,
            line: 0,
            total: 0,
            handed: 0,
            max_chunk_line: limits.max_chunk_line,
            max_trailers: limits.max_trailers,
            max_body: limits.max_body,
        })
    }

    /// Whether the body is over: whatever follows belongs to the next
    /// message.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Data bytes handed out so far.
    pub fn data_bytes(&self) -> u64 {
        self.handed
    }

    /// The bytes still due of a Content-Length body (or of the current
    /// chunk), if known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) | State::Data(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The peer closed the connection: fine for a body that ends that way
    /// (it is then done) or is done; [`HttpError::Truncated`] otherwise.
    pub fn finish(&mut self) -> Result<(), HttpError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(HttpError::Truncated),
        }
    }

    /// Takes framing from the start of `input` up to and including the
    /// next data piece, or all of it if it holds no data. Call it again
    /// with the rest (`input[consumed..]`, plus whatever arrives) until
    /// [`BodyDecoder::is_done`]. Never consumes past the end of the body.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, HttpError> {
        let mut at = 0;
        while at < input.len() {
            let b = input[at];
            match self.state {
                State::Done => break,
                State::Length(n) => {
                    return Ok(self.due(at, input.len() - at, n, State::Done, State::Length));
                }
                State::UntilClose => {
                    // Up to the limit, then an error: the same however
                    // the input is cut.
                    let room = self.max_body - self.handed;
                    if room == 0 {
                        return Err(HttpError::BodyTooLarge);
                    }
                    return Ok(self.data(at, take(room, input.len() - at)));
                }
                State::Data(n) => {
                    return Ok(self.due(at, input.len() - at, n, State::DataCr, State::Data));
                }
                _ => {
                    self.step(b)?;
                    at += 1;
                }
            }
        }
        Ok(Decoded {
            consumed: at,
            data: at..at,
        })
    }

    /// Hands out what there is of `n` data bytes due, of the `avail` at
    /// `at`; then `after` once none are due, else `rest` of the rest.
    fn due(
        &mut self,
        at: usize,
        avail: usize,
        n: u64,
        after: State,
        rest: fn(u64) -> State,
    ) -> Decoded {
        let take = take(n, avail);
        self.state = if take as u64 == n {
            after
        } else {
            rest(n - take as u64)
        };
        self.data(at, take)
    }

    /// Hands out `take` data bytes at `at`.
    fn data(&mut self, at: usize, take: usize) -> Decoded {
        self.handed += take as u64;
        Decoded {
            consumed: at + take,
            data: at..at + take,
        }
    }

    /// One byte of chunked framing.
    fn step(&mut self, b: u8) -> Result<(), HttpError> {
        let bad = HttpError::Chunk;
        self.state = match self.state {
            State::Size { size, digits } => {
                self.line += 1;
                if self.line > self.max_chunk_line {
                    return Err(bad("chunk-size line too long"));
                }
                match (hex(b), b) {
                    (Some(d), _) => {
                        // Leading zeros are digits too, but cannot overflow.
                        if size >> 60 != 0 {
                            return Err(bad("chunk size overflows"));
                        }
                        State::Size {
                            size: size << 4 | u64::from(d),
                            digits: digits.saturating_add(1),
                        }
                    }
                    _ if digits == 0 => return Err(bad("chunk size expected")),
                    (None, b' ' | b'\t') => State::Bws(size),
                    (None, b';') => State::Ext {
                        size,
                        quoted: false,
                        escaped: false,
                    },
                    (None, b'\r') => State::SizeLf(size),
                    _ => return Err(bad("invalid byte after the chunk size")),
                }
            }
            State::Bws(size) => {
                self.line += 1;
                if self.line > self.max_chunk_line {
                    return Err(bad("chunk-size line too long"));
                }
                match b {
                    b' ' | b'\t' => State::Bws(size),
                    b';' => State::Ext {
                        size,
                        quoted: false,
                        escaped: false,
                    },
                    b'\r' => State::SizeLf(size),
                    _ => return Err(bad("invalid byte after the chunk size")),
                }
            }
            State::Ext {
                size,
                quoted,
                escaped,
            } => {
                self.line += 1;
                if self.line > self.max_chunk_line {
                    return Err(bad("chunk-size line too long"));
                }
                // Extensions are ignored (RFC 9112 §7.1.1) but must keep
                // to their grammar's characters: no CTLs, no bare CR/LF.
                match b {
                    _ if escaped => {
                        if !is_field_vchar(b) {
                            return Err(bad("invalid byte in a chunk extension"));
                        }
                        State::Ext {
                            size,
                            quoted,
                            escaped: false,
                        }
                    }
                    b'"' => State::Ext {
                        size,
                        quoted: !quoted,
                        escaped: false,
                    },
                    b'\\' if quoted => State::Ext {
                        size,
                        quoted,
                        escaped: true,
                    },
                    b'\r' if !quoted => State::SizeLf(size),
                    _ if quoted && is_field_vchar(b) => State::Ext {
                        size,
                        quoted,
                        escaped,
                    },
                    b';' | b'=' | b' ' | b'\t' => State::Ext {
                        size,
                        quoted,
                        escaped,
                    },
                    _ if is_tchar(b) => State::Ext {
                        size,
                        quoted,
                        escaped,
                    },
                    _ => return Err(bad("invalid byte in a chunk extension")),
                }
            }
            State::SizeLf(size) => {
                if b != b'\n' {
                    return Err(bad("chunk-size line without CRLF"));
                }
                self.line = 0;
                if size == 0 {
                    State::TrailerStart
                } else {
                    self.total = self
                        .total
                        .checked_add(size)
                        .ok_or(HttpError::BodyTooLarge)?;
                    if self.total > self.max_body {
                        return Err(HttpError::BodyTooLarge);
                    }
                    State::Data(size)
                }
            }
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size { size: 0, digits: 0 },
            State::DataCr | State::DataLf => return Err(bad("chunk data without CRLF after it")),
            State::TrailerStart
            | State::TrailerName
            | State::TrailerValue
            | State::TrailerLf
            | State::EndLf => {
                self.line += 1;
                if self.line > self.max_trailers {
                    return Err(bad("trailer section too large"));
                }
                self.trailer(b)?
            }
            State::Length(_) | State::UntilClose | State::Data(_) | State::Done => self.state,
        };
        Ok(())
    }

    /// One byte of the trailer section: field lines as in a head (no
    /// obs-fold, no whitespace before the colon), then an empty line.
    fn trailer(&self, b: u8) -> Result<State, HttpError> {
        let bad = HttpError::Chunk;
        Ok(match (self.state, b) {
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart, _) if is_tchar(b) => State::TrailerName,
            (State::TrailerName, b':') => State::TrailerValue,
            (State::TrailerName, _) if is_tchar(b) => State::TrailerName,
            (State::TrailerValue, b'\r') => State::TrailerLf,
            (State::TrailerValue, _) if is_field_vchar(b) => State::TrailerValue,
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::EndLf, b'\n') => State::Done,
            _ => return Err(bad("malformed trailer section")),
        })
    }
}

/// `min(n, avail)` as a usize.
fn take(n: u64, avail: usize) -> usize {
    usize::try_from(n).map_or(avail, |n| n.min(avail))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The last chunk and an empty trailer section: the end of a chunked
/// body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The longest chunk header [`chunk_header`] writes: 16 hex digits and
/// CRLF.
pub const CHUNK_HEADER_MAX: usize = 18;

/// Writes the header of a `len`-byte chunk (`{len:x}\r\n`) at the start of
/// `out`; returns its length. The chunk's data and a CRLF follow it.
/// `len` must not be 0 (that is [`LAST_CHUNK`]).
pub fn chunk_header(len: usize, out: &mut [u8; CHUNK_HEADER_MAX]) -> usize {
    let digits = (usize::BITS - (len | 1).leading_zeros()).div_ceil(4) as usize;
    for (i, o) in out[..digits].iter_mut().enumerate() {
        *o = b"0123456789abcdef"[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// Appends `data` to `out` as one chunk (header, data, CRLF); nothing for
/// empty data (an empty chunk would end the body: append [`LAST_CHUNK`]
/// for that).
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    let mut h = [0; CHUNK_HEADER_MAX];
    let n = chunk_header(data.len(), &mut h);
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Writes as much of `data` as fits into `out` as one chunk (header, data,
/// CRLF), for a proxy writing straight into a socket's send buffer;
/// returns (data bytes taken, bytes written), `(0, 0)` when `out` cannot
/// hold a chunk of at least one byte or `data` is empty.
pub fn encode_chunk_into(data: &[u8], out: &mut [u8]) -> (usize, usize) {
    let mut h = [0; CHUNK_HEADER_MAX];
    // The header of the chunk that fits, whose length depends on its size.
    let mut take = data.len().min(out.len().saturating_sub(3 + 2));
    while take > 0 && chunk_header(take, &mut h) + take + 2 > out.len() {
        take -= 1;
    }
    if take == 0 {
        return (0, 0);
    }
    let n = chunk_header(take, &mut h);
    out[..n].copy_from_slice(&h[..n]);
    out[n..n + take].copy_from_slice(&data[..take]);
    out[n + take..n + take + 2].copy_from_slice(b"\r\n");
    (take, n + take + 2)
}
