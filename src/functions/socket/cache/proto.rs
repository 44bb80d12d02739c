//! The memcached text protocol's framing and tokens, sans-IO: a
//! [`Decoder`] that finds command lines and data blocks in a connection's
//! input as it arrives (a line may come in pieces, a data block over many
//! reads), memcached's tokenizer, its number rules (C's `strtol` family as
//! memcached checks them), base64 keys and the meta commands' flags.
//!
//! Bounds: a line with no end after [`LINE_MAX`] bytes closes the
//! connection, as memcached does, except a `get`/`gets` line (multi-gets
//! are long), allowed up to the decoder's own limit.
//!
//! ```
//! use shmnet::functions::cache::proto::{Decoded, Decoder};
//! let mut d = Decoder::new(1 << 16);
//! assert_eq!(d.decode(b"get fo"), Decoded::Incomplete);
//! assert_eq!(d.decode(b"get foo\r\nrest"), Decoded::Line(b"get foo", 9));
//! d.expect_data(3);
//! assert_eq!(d.decode(b"ab"), Decoded::Incomplete);
//! assert_eq!(d.decode(b"abc"), Decoded::Data(b"abc", 3));
//! ```

/// Longest key, in bytes (memcached's `KEY_MAX_LENGTH`).
pub const KEY_MAX: usize = 250;

/// A command line without end past this many bytes closes the connection
/// (memcached's limit), unless it is a `get`/`gets`.
pub const LINE_MAX: usize = 2048;

/// memcached's `MAX_TOKENS`: a line is cut into at most this many tokens
/// less one, the last holding the unsplit rest.
pub const MAX_TOKENS: usize = 24;

/// A meta command with this many tokens or more (its final empty token
/// counted, as memcached does) has too many flags.
pub const META_MAX_TOKENS: usize = 20;

/// Longest opaque (`O`) meta token.
pub const OPAQUE_MAX: usize = 32;

/// What the input holds next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Nothing complete yet: keep the bytes and read more.
    Incomplete,
    /// A command line without its `\n` (or `\r\n`), and the bytes it used.
    Line(&'a [u8], usize),
    /// The data block a storage command announced (its final `\r\n`
    /// included), and the bytes it used.
    Data(&'a [u8], usize),
    /// Bytes of a refused data block thrown away.
    Skipped(usize),
    /// A line too long to be a command: close the connection.
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Line,
    Data(usize),
    Swallow(usize),
}

/// Splits a connection's input into lines and data blocks.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    max_get_line: usize,
}

impl Decoder {
    /// A decoder that allows `get`/`gets` lines up to `max_get_line` bytes.
    pub fn new(max_get_line: usize) -> Decoder {
        Decoder {
            state: State::Line,
            max_get_line: max_get_line.max(LINE_MAX),
        }
    }

    /// The next thing in `input` (the connection's unconsumed bytes); the
    /// caller drops the bytes the answer says it used.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Decoded<'a> {
        match self.state {
            State::Data(n) => {
                if input.len() < n {
                    return Decoded::Incomplete;
                }
                self.state = State::Line;
                Decoded::Data(&input[..n], n)
            }
            State::Swallow(n) => {
                if input.is_empty() {
                    return Decoded::Incomplete;
                }
                let k = n.min(input.len());
                self.state = if k == n {
                    State::Line
                } else {
                    State::Swallow(n - k)
                };
                Decoded::Skipped(k)
            }
            State::Line => {
                let end = input.iter().position(|&b| b == b'\n');
                let len = end.unwrap_or(input.len());
                if len > LINE_MAX && (!is_get(input) || len > self.max_get_line) {
                    return Decoded::TooLong;
                }
                let Some(p) = end else {
                    return Decoded::Incomplete;
                };
                let line = if p > 1 && input[p - 1] == b'\r' {
                    &input[..p - 1]
                } else {
                    &input[..p]
                };
                // memcached works on C strings: a NUL ends the line.
                let line = match line.iter().position(|&b| b == 0) {
                    Some(z) => &line[..z],
                    None => line,
                };
                Decoded::Line(line, p + 1)
            }
        }
    }

    /// The next `n` bytes are a data block (value plus `\r\n`).
    pub fn expect_data(&mut self, n: usize) {
        self.state = State::Data(n);
    }

    /// The next `n` bytes are a refused data block, to throw away.
    pub fn swallow(&mut self, n: usize) {
        self.state = if n == 0 {
            State::Line
        } else {
            State::Swallow(n)
        };
    }

    /// Bytes the decoder waits for in one piece (a data block), if any.
    pub fn pending_data(&self) -> Option<usize> {
        match self.state {
            State::Data(n) => Some(n),
            _ => None,
        }
    }
}

/// memcached's test for a long line it keeps reading: `get ` or `gets `
/// after at most 100 spaces.
fn is_get(input: &[u8]) -> bool {
    let spaces = input.iter().take_while(|&&b| b == b' ').count();
    let rest = &input[spaces..];
    spaces <= 100 && (rest.starts_with(b"get ") || rest.starts_with(b"gets "))
}

/// A line cut into tokens as memcached's `tokenize_command` does: split on
/// single spaces (runs of them count once), at most [`MAX_TOKENS`] - 1
/// tokens; `rest` is what follows the last one when there were more.
#[derive(Debug, Clone)]
pub struct Tokens<'a> {
    toks: [&'a [u8]; MAX_TOKENS - 1],
    n: usize,
    /// The unsplit remainder of the line after the last token, if the
    /// line had more tokens than fit.
    pub rest: Option<&'a [u8]>,
}

impl<'a> Tokens<'a> {
    /// Tokenizes `line`.
    pub fn new(line: &'a [u8]) -> Tokens<'a> {
        let mut t = Tokens {
            toks: [&[]; MAX_TOKENS - 1],
            n: 0,
            rest: None,
        };
        let mut i = 0;
        while i < line.len() {
            while i < line.len() && line[i] == b' ' {
                i += 1;
            }
            if i == line.len() {
                break;
            }
            if t.n == MAX_TOKENS - 1 {
                t.rest = Some(&line[i..]);
                break;
            }
            let start = i;
            while i < line.len() && line[i] != b' ' {
                i += 1;
            }
            t.toks[t.n] = &line[start..i];
            t.n += 1;
        }
        t
    }

    /// memcached's `ntokens`: the tokens plus its final empty one.
    pub fn ntokens(&self) -> usize {
        self.n + 1
    }

    /// Token `i`, empty past the last.
    pub fn get(&self, i: usize) -> &'a [u8] {
        if i < self.n { self.toks[i] } else { &[] }
    }

    /// The tokens from `i` on.
    pub fn from(&self, i: usize) -> &[&'a [u8]] {
        &self.toks[i.min(self.n)..self.n]
    }

    /// Whether the second last of memcached's tokens (the last real one) is
    /// `noreply`.
    pub fn noreply(&self) -> bool {
        self.n >= 1 && self.toks[self.n - 1] == b"noreply"
    }

    /// The key (token 1), `None` if it is longer than [`KEY_MAX`]:
    /// memcached then answers `CLIENT_ERROR bad command line format`.
    pub fn key(&self) -> Option<&'a [u8]> {
        Some(self.get(1)).filter(|k| k.len() <= KEY_MAX)
    }
}

/// Parses `strtoull`'s way: white space, a sign, decimal digits; `None`
/// for no digits or overflow. A `-` negates modulo 2^64 (as C does); the
/// flag tells it was there.
fn c_unsigned(tok: &[u8]) -> Option<(u64, bool, usize)> {
    let mut i = 0;
    while i < tok.len() && is_space(tok[i]) {
        i += 1;
    }
    let negative = tok.get(i) == Some(&b'-');
    if matches!(tok.get(i), Some(b'+' | b'-')) {
        i += 1;
    }
    let start = i;
    let mut n: u64 = 0;
    while i < tok.len() && tok[i].is_ascii_digit() {
        n = n.checked_mul(10)?.checked_add(u64::from(tok[i] - b'0'))?;
        i += 1;
    }
    if i == start {
        return None;
    }
    Some((n, negative, i))
}

/// What must follow a number: the token's end or white space.
fn ends_well(tok: &[u8], i: usize) -> bool {
    i == tok.len() || is_space(tok[i])
}

/// memcached's `safe_strtoull`.
pub fn strtoull(tok: &[u8]) -> Option<u64> {
    let (n, negative, i) = c_unsigned(tok)?;
    if !ends_well(tok, i) {
        return None;
    }
    let v = if negative { n.wrapping_neg() } else { n };
    if (v as i64) < 0 && tok.contains(&b'-') {
        return None;
    }
    Some(v)
}

/// memcached's `safe_strtoul`: `strtoull`'s rules, then cut to 32 bits
/// as C does when it stores the `unsigned long` in a `uint32_t`.
pub fn strtoul(tok: &[u8]) -> Option<u32> {
    strtoull(tok).map(|v| v as u32)
}

/// memcached's `safe_strtol`: a signed 64-bit `strtol`, then cut to 32
/// bits as C does when it stores the `long` in an `int32_t`.
pub fn strtol(tok: &[u8]) -> Option<i32> {
    let (n, negative, i) = c_unsigned(tok)?;
    if !ends_well(tok, i) {
        return None;
    }
    let v: i64 = if negative {
        if n > 1 << 63 {
            return None;
        }
        (n as i64).wrapping_neg()
    } else {
        i64::try_from(n).ok()?
    };
    Some(v as i32)
}

/// A stored value as `strtoull` reads it for `incr`/`decr`: optional
/// leading white space and `+`, decimal digits, then the end or white
/// space; a `-` or an overflow makes it non-numeric.
pub fn parse_counter(v: &[u8]) -> Option<u64> {
    let (n, negative, i) = c_unsigned(v)?;
    if !ends_well(v, i) {
        return None;
    }
    if negative {
        // strtoull negates; memcached refuses what then looks negative.
        let n = n.wrapping_neg();
        return if (n as i64) < 0 { None } else { Some(n) };
    }
    Some(n)
}

/// C's `isspace`.
pub fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        b'=' => Some(0),
        _ => None,
    }
}

/// memcached's `base64_decode`: characters outside the alphabet are
/// skipped, the rest must come in groups of four, decoding stops after a
/// padded group; `None` where memcached returns 0 (a failure).
pub fn base64_decode(src: &[u8]) -> Option<Vec<u8>> {
    let count = src.iter().filter(|&&c| b64_value(c).is_some()).count();
    if count == 0 || count % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(count / 4 * 3);
    let (mut block, mut n, mut pad) = ([0u8; 4], 0, 0);
    for &c in src {
        let Some(v) = b64_value(c) else { continue };
        if c == b'=' {
            pad += 1;
        }
        block[n] = v;
        n += 1;
        if n == 4 {
            out.push((block[0] << 2) | (block[1] >> 4));
            out.push((block[1] << 4) | (block[2] >> 2));
            out.push((block[2] << 6) | block[3]);
            n = 0;
            if pad > 0 {
                match pad {
                    1 => out.truncate(out.len() - 1),
                    2 => out.truncate(out.len() - 2),
                    _ => return None,
                }
                break;
            }
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

/// Standard base64 with padding, appended to `out`.
pub fn base64_encode(src: &[u8], out: &mut Vec<u8>) {
    for chunk in src.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * k)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

/// The flags of a meta command, as memcached's `_meta_flag_preparse`
/// reads them (the key is decoded here when `b` is given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaFlags {
    /// The key, decoded if `b`.
    pub key: Vec<u8>,
    /// `b`: the key is base64; `key` holds it decoded.
    pub key_binary: bool,
    /// `N`: create on miss, with this exptime.
    pub vivify: Option<i32>,
    /// `T`: new TTL.
    pub ttl: Option<i32>,
    /// `R`: win the recache token below this TTL.
    pub recache: Option<i32>,
    /// `C`: compare this CAS unique.
    pub cas: Option<u64>,
    /// `M`: mode character.
    pub mode: Option<u8>,
    /// `D`: delta (ma).
    pub delta: Option<u64>,
    /// `F`: client flags.
    pub client_flags: u32,
    /// `J`: initial value (ma).
    pub initial: u64,
    /// `v`: return the value.
    pub value: bool,
    /// `u`: don't bump the item.
    pub no_update: bool,
    /// `q`: no nominal replies.
    pub quiet: bool,
    /// `I`: invalidate / set stale.
    pub set_stale: bool,
}

/// Reads the meta flags `flags` (the tokens after the key, or after the
/// data length for `ms`) of `key`. On error, the message memcached gives:
/// a duplicate or unknown flag stops at once, other errors let the rest
/// be read and the last message wins (`default` if none set one).
pub fn meta_flags(
    key: &[u8],
    flags: &[&[u8]],
    default: &'static str,
) -> Result<MetaFlags, &'static str> {
    const BAD_TOKEN: &str = "CLIENT_ERROR bad token in command line format";
    let mut f = MetaFlags {
        key: key.to_vec(),
        ..MetaFlags::default()
    };
    let mut seen = [false; 127];
    let mut error: Option<&'static str> = None;
    let mut fail = |msg: Option<&'static str>| {
        error = Some(msg.unwrap_or(error.unwrap_or(default)));
    };
    for tok in flags {
        let o = tok[0];
        if o >= 127 || seen[o as usize] {
            return Err("CLIENT_ERROR duplicate flag");
        }
        seen[o as usize] = true;
        let arg = &tok[1..];
        match o {
            b'b' => {
                f.key_binary = true;
                match base64_decode(key) {
                    Some(k) => f.key = k,
                    None => {
                        f.key.clear();
                        fail(Some("CLIENT_ERROR error decoding key"));
                    }
                }
            }
            b'N' => match strtol(arg) {
                Some(t) => f.vivify = Some(t),
                None => fail(Some(BAD_TOKEN)),
            },
            b'T' => match strtol(arg) {
                Some(t) => f.ttl = Some(t),
                None => fail(Some(BAD_TOKEN)),
            },
            b'R' => match strtol(arg) {
                Some(t) => f.recache = Some(t),
                None => fail(Some(BAD_TOKEN)),
            },
            b'l' | b'O' | b'P' | b'L' | b'k' | b's' | b't' | b'c' | b'f' | b'h' => {}
            b'v' => f.value = true,
            b'u' => f.no_update = true,
            b'q' => f.quiet = true,
            b'F' => match strtoul(arg) {
                Some(v) => f.client_flags = v,
                None => fail(None),
            },
            b'C' => match strtoull(arg) {
                Some(v) => f.cas = Some(v),
                None => fail(Some(BAD_TOKEN)),
            },
            b'M' => {
                if tok.len() != 2 {
                    fail(Some("CLIENT_ERROR incorrect length for M token"));
                } else {
                    f.mode = Some(tok[1]);
                }
            }
            b'J' => match strtoull(arg) {
                Some(v) => f.initial = v,
                None => fail(Some("CLIENT_ERROR invalid numeric initial value")),
            },
            b'D' => match strtoull(arg) {
                Some(v) => f.delta = Some(v),
                None => fail(Some("CLIENT_ERROR invalid numeric delta value")),
            },
            b'I' => f.set_stale = true,
            _ => return Err("CLIENT_ERROR invalid flag"),
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces split at `cut`, as a connection would.
    fn decode_split(input: &[u8], cut: usize, data: usize) -> Vec<String> {
        let mut d = Decoder::new(1 << 16);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in [&input[..cut], &input[cut..]] {
            buf.extend_from_slice(piece);
            loop {
                let (what, used) = match d.decode(&buf) {
                    Decoded::Incomplete => break,
                    Decoded::Line(l, n) => {
                        let l = String::from_utf8_lossy(l).into_owned();
                        if l.starts_with("set") {
                            d.expect_data(data);
                        }
                        (format!("line {l}"), n)
                    }
                    Decoded::Data(b, n) => (format!("data {}", String::from_utf8_lossy(b)), n),
                    Decoded::Skipped(n) => (format!("skip {n}"), n),
                    Decoded::TooLong => return vec!["too long".into()],
                };
                out.push(what);
                buf.drain(..used);
            }
        }
        out
    }

    #[test]
    fn lines_and_data_split_at_every_byte() {
        let input = b"set k 0 0 5\r\nhello\r\nget k\nversion\r\n";
        for cut in 0..=input.len() {
            assert_eq!(
                decode_split(input, cut, 7),
                [
                    "line set k 0 0 5",
                    "data hello\r\n",
                    "line get k",
                    "line version"
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_refused_block_is_swallowed_in_pieces() {
        let mut d = Decoder::new(0);
        d.swallow(5);
        assert_eq!(d.decode(b"ab"), Decoded::Skipped(2));
        assert_eq!(d.decode(b""), Decoded::Incomplete);
        assert_eq!(d.decode(b"cdefg\r\n"), Decoded::Skipped(3));
        assert_eq!(d.decode(b"fg\r\n"), Decoded::Line(b"fg", 4));
    }

    #[test]
    fn long_lines_close_except_multigets() {
        let mut d = Decoder::new(8192);
        assert_eq!(d.decode(&[b'x'; LINE_MAX]), Decoded::Incomplete);
        assert_eq!(d.decode(&[b'x'; LINE_MAX + 1]), Decoded::TooLong);
        let mut get = b"get ".to_vec();
        get.resize(5000, b'k');
        assert_eq!(d.decode(&get), Decoded::Incomplete);
        get.resize(8193, b'k');
        assert_eq!(d.decode(&get), Decoded::TooLong);
        // A NUL ends the line, a lone "\r\n" keeps its "\r".
        assert_eq!(d.decode(b"get a\0b\r\n"), Decoded::Line(b"get a", 9));
        assert_eq!(d.decode(b"\r\n"), Decoded::Line(b"\r", 2));
    }

    #[test]
    fn tokens_as_memcached_cuts_them() {
        let t = Tokens::new(b"  set  k 0 0 5 noreply ");
        assert_eq!(t.ntokens(), 7);
        assert_eq!(t.get(0), b"set");
        assert_eq!(t.get(1), b"k");
        assert!(t.noreply());
        assert_eq!(t.get(9), b"");
        let line: Vec<u8> = (0..30)
            .flat_map(|i| format!("t{i} ").into_bytes())
            .collect();
        let t = Tokens::new(&line);
        assert_eq!(t.ntokens(), MAX_TOKENS);
        assert_eq!(t.rest, Some(&b"t23 t24 t25 t26 t27 t28 t29 "[..]));
    }

    #[test]
    fn numbers_follow_the_c_library() {
        assert_eq!(strtol(b"-1"), Some(-1));
        assert_eq!(strtol(b"4294967296"), Some(0));
        assert_eq!(strtol(b"12x"), None);
        assert_eq!(strtol(b"12\t"), Some(12));
        assert_eq!(strtol(b""), None);
        assert_eq!(strtol(b"99999999999999999999"), None);
        assert_eq!(strtoul(b"4294967297"), Some(1));
        assert_eq!(strtoul(b"-1"), None);
        assert_eq!(strtoul(b"+7"), Some(7));
        assert_eq!(strtoull(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(strtoull(b"18446744073709551616"), None);
        assert_eq!(strtoull(b"-0"), Some(0));
    }

    #[test]
    fn base64_round_trips_and_fails_as_memcached() {
        for s in [&b"a"[..], b"ab", b"abc", b"abcd", b"\x00\xff binary"] {
            let mut e = Vec::new();
            base64_encode(s, &mut e);
            assert_eq!(base64_decode(&e).as_deref(), Some(s));
        }
        assert_eq!(base64_decode(b"YWJj").as_deref(), Some(&b"abc"[..]));
        assert_eq!(base64_decode(b"YWJ"), None);
        assert_eq!(base64_decode(b"a"), None);
    }

    #[test]
    fn meta_flags_and_their_errors() {
        let toks: Vec<&[u8]> = vec![b"v", b"T30", b"Oabc", b"k", b"q"];
        let f = meta_flags(b"key", &toks, "x").unwrap();
        assert!(f.value && f.quiet);
        assert_eq!(f.ttl, Some(30));
        assert_eq!(
            meta_flags(b"k", &[b"v", b"v"], "x"),
            Err("CLIENT_ERROR duplicate flag")
        );
        assert_eq!(
            meta_flags(b"k", &[b"!"], "x"),
            Err("CLIENT_ERROR invalid flag")
        );
        assert_eq!(
            meta_flags(b"k", &[b"Tz", b"Dq"], "x"),
            Err("CLIENT_ERROR invalid numeric delta value")
        );
        assert_eq!(meta_flags(b"k", &[b"Fz"], "default"), Err("default"));
        assert_eq!(
            meta_flags(b"k", &[b"MEE"], "x"),
            Err("CLIENT_ERROR incorrect length for M token")
        );
        let f = meta_flags(b"YWJj", &[b"b"], "x").unwrap();
        assert_eq!(f.key, b"abc");
    }
}
