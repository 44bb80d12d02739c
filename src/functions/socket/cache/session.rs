//! One client connection of the cache, sans-IO: bytes in
//! ([`Session::handle`]), replies out ([`Output`]), the classic text
//! commands executed on the shared [`Engine`] (the meta commands are in
//! [`super::meta`]). The caller moves bytes between the session and its
//! socket; nothing here reads a clock or a socket.
//!
//! Bounds: the session stops taking commands while its output holds
//! [`OUTPUT_HIGH`] bytes or more, so a client that never reads stops being
//! read (values in replies are shared with the store, not copied).
//!
//! ```
//! use shmnet::functions::cache::{Engine, Session, Settings, Store};
//! use smoltcp::time::Instant;
//! let mut engine = Engine::new(Store::new(1 << 20, 1 << 20), Settings::default());
//! let mut s = Session::new(1 << 20);
//! let input = b"set k 0 0 2\r\nhi\r\nget k\r\n";
//! assert_eq!(s.handle(input, &mut engine, Instant::ZERO), input.len());
//! assert_eq!(s.out.take_all(), b"STORED\r\nVALUE k 0 2\r\nhi\r\nEND\r\n");
//! ```

use std::collections::VecDeque;
use std::sync::Arc;

use smoltcp::time::Instant;

use super::engine::{Engine, VERSION};
use super::proto::{Decoded, Decoder, Tokens, strtol, strtoul, strtoull};
use super::store::{Delta, Expiry, KEY_MAX, Mode, Outcome, SLOT_OVERHEAD, StoreRequest};

/// A session with this many bytes of replies queued takes no more
/// commands until its client reads some.
pub const OUTPUT_HIGH: usize = 256 * 1024;

/// Values at least this long are sent from the store's buffer, not copied.
const SHARE_MIN: usize = 512;

pub(super) const BAD_FORMAT: &str = "CLIENT_ERROR bad command line format";

enum Chunk {
    Own(Vec<u8>),
    Shared(Arc<[u8]>, usize),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Own(v) => v,
            Chunk::Shared(a, start) => &a[*start..],
        }
    }
}

/// A connection's queued replies: small pieces copied, large values shared
/// with the store.
#[derive(Default)]
pub struct Output {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already sent.
    sent: usize,
    len: usize,
}

impl Output {
    /// Queues a copy of `b`.
    pub fn write(&mut self, b: &[u8]) {
        self.len += b.len();
        if let Some(Chunk::Own(v)) = self.chunks.back_mut()
            && v.len() < 16 * 1024
        {
            v.extend_from_slice(b);
            return;
        }
        self.chunks.push_back(Chunk::Own(b.to_vec()));
    }

    /// Queues `data[start..]` without copying it.
    pub fn share(&mut self, data: Arc<[u8]>, start: usize) {
        if data.len() - start < SHARE_MIN {
            self.write(&data[start..]);
            return;
        }
        self.len += data.len() - start;
        self.chunks.push_back(Chunk::Shared(data, start));
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next bytes to send (empty when nothing is queued).
    pub fn front(&self) -> &[u8] {
        self.chunks
            .front()
            .map_or(&[][..], |c| &c.bytes()[self.sent..])
    }

    /// `n` bytes of [`Output::front`] were sent.
    pub fn consume(&mut self, n: usize) {
        self.sent += n;
        self.len -= n;
        if self
            .chunks
            .front()
            .is_some_and(|c| self.sent >= c.bytes().len())
        {
            self.chunks.pop_front();
            self.sent = 0;
        }
    }

    /// Everything queued, taken (for tests and the fuzz target).
    pub fn take_all(&mut self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        while !self.is_empty() {
            let f = self.front();
            let n = f.len();
            v.extend_from_slice(f);
            self.consume(n);
        }
        v
    }
}

/// A storage command waiting for its data block.
pub(super) struct Pending {
    pub mode: Mode,
    pub key: Vec<u8>,
    pub flags: u32,
    pub expiry: Expiry,
    pub cas: u64,
    pub noreply: bool,
    /// Meta set: the flags to return (`O…`, `k`, `c`) in order, the key's
    /// encoding and whether a lower CAS may set a stale value.
    pub meta: Option<MetaReturn>,
}

/// What an `ms` returns after its status.
pub(super) struct MetaReturn {
    pub flags: Vec<Vec<u8>>,
    pub binary_key: bool,
    pub set_stale: bool,
}

/// One connection's protocol state and reply queue.
pub struct Session {
    pub(super) decoder: Decoder,
    pub(super) pending: Option<Pending>,
    /// Replies to send.
    pub out: Output,
    close: bool,
    too_long: bool,
}

impl Session {
    /// A session whose `get` lines may be up to `max_get_line` bytes.
    pub fn new(max_get_line: usize) -> Session {
        Session {
            decoder: Decoder::new(max_get_line),
            pending: None,
            out: Output::default(),
            close: false,
            too_long: false,
        }
    }

    /// Whether the connection is to be closed once the output is sent
    /// (`quit`, or a protocol error).
    pub fn closing(&self) -> bool {
        self.close
    }

    /// Closes once the output is sent, taking no more input (and no
    /// longer reporting a protocol error).
    pub fn finish(&mut self) {
        self.close = true;
        self.too_long = false;
    }

    /// Whether it closes for a line too long.
    pub fn protocol_error(&self) -> bool {
        self.too_long
    }

    /// Whether the session takes input now (not closing, output below
    /// [`OUTPUT_HIGH`]).
    pub fn wants_input(&self) -> bool {
        !self.close && self.out.len() < OUTPUT_HIGH
    }

    /// Bytes the next data block needs in one piece, if one is awaited.
    pub fn pending_data(&self) -> Option<usize> {
        self.decoder.pending_data()
    }

    /// Executes the complete commands at the start of `input` while the
    /// session [wants input](Session::wants_input); returns the bytes
    /// used (the caller keeps the rest for next time).
    pub fn handle(&mut self, input: &[u8], eng: &mut Engine, now: Instant) -> usize {
        let mut used = 0;
        while self.wants_input() {
            match self.decoder.decode(&input[used..]) {
                Decoded::Incomplete => break,
                Decoded::TooLong => {
                    self.close = true;
                    self.too_long = true;
                }
                Decoded::Skipped(n) => used += n,
                Decoded::Line(line, n) => {
                    used += n;
                    self.command(line, eng, now);
                }
                Decoded::Data(data, n) => {
                    used += n;
                    self.data(data, eng, now);
                }
            }
        }
        used
    }

    pub(super) fn reply(&mut self, noreply: bool, msg: &str) {
        if !noreply {
            self.out.write(msg.as_bytes());
            self.out.write(b"\r\n");
        }
    }

    fn command(&mut self, line: &[u8], eng: &mut Engine, now: Instant) {
        let t = Tokens::new(line);
        let n = t.ntokens();
        let cmd = t.get(0);
        if n < 2 || cmd.len() < 2 {
            return self.reply(false, "ERROR");
        }
        match cmd {
            b"mg" | b"ms" | b"md" | b"ma" | b"mn" | b"me" => self.meta(cmd[1], &t, eng, now),
            _ if cmd.len() == 2 && cmd[0] == b'm' => self.reply(false, "ERROR"),
            b"get" | b"gets" | b"gat" | b"gats" | b"bget" if n >= 3 => {
                let touch = cmd.starts_with(b"gat");
                self.get(&t, cmd.ends_with(b"s"), touch, eng, now)
            }
            b"set" | b"add" | b"replace" | b"append" | b"prepend" if n == 6 || n == 7 => {
                let mode = match cmd {
                    b"set" => Mode::Set,
                    b"add" => Mode::Add,
                    b"replace" => Mode::Replace,
                    b"append" => Mode::Append,
                    _ => Mode::Prepend,
                };
                self.update(&t, mode, eng, now)
            }
            b"cas" if n == 7 || n == 8 => self.update(&t, Mode::Cas, eng, now),
            b"incr" | b"decr" if n == 4 || n == 5 => self.arith(&t, cmd == b"incr", eng, now),
            b"delete" if (3..=5).contains(&n) => self.delete(&t, eng, now),
            b"touch" if n == 4 || n == 5 => self.touch(&t, eng, now),
            b"stats" => {
                let sub = (n > 2).then(|| t.get(1));
                let arg = (n > 3).then(|| t.get(2));
                match eng.stats(sub, arg, now) {
                    Some(r) => self.out.write(&r),
                    None => self.reply(false, "ERROR"),
                }
            }
            b"flush_all" if (2..=4).contains(&n) => self.flush_all(&t, eng, now),
            b"version" => self.reply(false, &format!("VERSION {VERSION}")),
            b"quit" => self.close = true,
            b"verbosity" if n == 3 || n == 4 => {
                let noreply = t.noreply();
                match strtoul(t.get(1)) {
                    Some(level) => {
                        eng.settings.verbosity = level.min(2);
                        self.reply(noreply, "OK")
                    }
                    None => self.reply(noreply, BAD_FORMAT),
                }
            }
            b"cache_memlimit" if n == 3 || n == 4 => {
                let noreply = t.noreply();
                match strtoul(t.get(1)) {
                    None => self.reply(false, "ERROR"),
                    Some(mb) if mb < 8 => self.reply(
                        noreply,
                        "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m",
                    ),
                    Some(mb) => {
                        let max_item = eng.store.max_item_size();
                        eng.store.set_limits((mb as usize) << 20, max_item, now);
                        self.reply(noreply, "OK")
                    }
                }
            }
            b"shutdown" => self.reply(false, "ERROR: shutdown not enabled"),
            _ => {
                if t.get(n - 2).starts_with(b"HTTP/") {
                    self.close = true;
                } else {
                    self.reply(false, "ERROR")
                }
            }
        }
    }

    /// get, gets, gat, gats.
    fn get(&mut self, t: &Tokens<'_>, cas: bool, touch: bool, eng: &mut Engine, now: Instant) {
        let mut first = 1;
        let mut expiry = Expiry::Never;
        if touch {
            let Some(e) = strtol(t.get(1)) else {
                return self.reply(false, "CLIENT_ERROR invalid exptime argument");
            };
            expiry = eng.store.expiry(e.into(), now);
            first = 2;
        }
        let rest = t.rest.unwrap_or(&[]);
        let keys = t
            .from(first)
            .iter()
            .copied()
            .chain(rest.split(|&b| b == b' ').filter(|k| !k.is_empty()));
        // A key too long cancels the whole reply (the keys before it are
        // still looked up, as memcached does).
        let mut failed = false;
        let mut reply = Vec::new();
        for key in keys {
            if key.len() > KEY_MAX {
                failed = true;
                break;
            }
            let hit = eng.store.lookup(key, now);
            match (hit, touch) {
                (Some(_), true) => {
                    eng.stats.cmd_touch += 1;
                    eng.stats.touch_hits += 1;
                }
                (Some(_), false) => {
                    eng.stats.cmd_get += 1;
                    eng.stats.get_hits += 1;
                }
                (None, true) => {
                    eng.stats.cmd_touch += 1;
                    eng.stats.touch_misses += 1;
                }
                (None, false) => {
                    eng.stats.cmd_get += 1;
                    eng.stats.get_misses += 1;
                }
            }
            let Some(id) = hit else { continue };
            if touch {
                eng.store.item_mut(id).expiry = expiry;
            }
            eng.store.bump(id, now);
            let it = eng.store.item(id);
            let mut head = Vec::with_capacity(key.len() + 48);
            head.extend_from_slice(b"VALUE ");
            head.extend_from_slice(key);
            head.extend_from_slice(format!(" {} {}", it.flags, it.value().len()).as_bytes());
            if cas {
                head.extend_from_slice(format!(" {}", it.cas).as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            reply.push((head, it.shared_value()));
        }
        if failed {
            return self.reply(false, BAD_FORMAT);
        }
        for (head, (data, start)) in reply {
            self.out.write(&head);
            self.out.share(data, start);
            self.out.write(b"\r\n");
        }
        self.out.write(b"END\r\n");
    }

    /// set, add, replace, append, prepend, cas: the command line; the data
    /// block follows ([`Session::data`]).
    fn update(&mut self, t: &Tokens<'_>, mode: Mode, eng: &mut Engine, now: Instant) {
        let noreply = t.noreply();
        let Some(key) = t.key() else {
            return self.reply(noreply, BAD_FORMAT);
        };
        let (Some(flags), Some(exptime), Some(vlen)) =
            (strtoul(t.get(2)), strtol(t.get(3)), strtol(t.get(4)))
        else {
            return self.reply(noreply, BAD_FORMAT);
        };
        let mut cas = 0;
        if mode == Mode::Cas {
            match strtoull(t.get(5)) {
                Some(c) => cas = c,
                None => return self.reply(noreply, BAD_FORMAT),
            }
        }
        if !(0..=i32::MAX - 2).contains(&vlen) {
            return self.reply(noreply, BAD_FORMAT);
        }
        let vlen = vlen as usize;
        let expiry = eng.store.expiry(exptime.into(), now);
        if let Some(msg) = self.refuse(key, flags, vlen, mode == Mode::Set, eng, now) {
            self.reply(noreply, msg);
            return self.decoder.swallow(vlen + 2);
        }
        self.pending = Some(Pending {
            mode,
            key: key.to_vec(),
            flags,
            expiry,
            cas,
            noreply,
            meta: None,
        });
        self.decoder.expect_data(vlen + 2);
    }

    /// The error for a value that cannot be stored whatever the data (too
    /// large for an item or for the whole memory); counts it and, like
    /// memcached, drops the key's old value when `unlink`.
    pub(super) fn refuse(
        &mut self,
        key: &[u8],
        flags: u32,
        vlen: usize,
        unlink: bool,
        eng: &mut Engine,
        now: Instant,
    ) -> Option<&'static str> {
        let msg = if eng.store.too_large(key.len(), flags, vlen) {
            eng.stats.store_too_large += 1;
            "SERVER_ERROR object too large for cache"
        } else if SLOT_OVERHEAD + key.len() + vlen > eng.store.memory_limit() {
            eng.stats.store_no_memory += 1;
            "SERVER_ERROR out of memory storing object"
        } else {
            return None;
        };
        if unlink && let Some(id) = eng.store.lookup(key, now) {
            eng.store.unlink(id);
        }
        Some(msg)
    }

    /// A data block arrived for the pending storage command.
    fn data(&mut self, data: &[u8], eng: &mut Engine, now: Instant) {
        let Some(p) = self.pending.take() else {
            return;
        };
        eng.stats.cmd_set += 1;
        let Some(value) = data.strip_suffix(b"\r\n") else {
            let noreply = p.noreply && p.meta.is_none();
            return self.reply(noreply, "CLIENT_ERROR bad data chunk");
        };
        let (stale, binary) = p
            .meta
            .as_ref()
            .map_or((false, false), |m| (m.set_stale, m.binary_key));
        let req = StoreRequest {
            mode: p.mode,
            key: &p.key,
            flags: p.flags,
            expiry: p.expiry,
            value,
            cas: p.cas,
            set_stale: stale,
            binary_key: binary,
        };
        let ((outcome, cas), _) = eng.store.store_ext(&req, now);
        if p.mode == Mode::Cas {
            match outcome {
                Outcome::Stored => eng.stats.cas_hits += 1,
                Outcome::Exists => eng.stats.cas_badval += 1,
                Outcome::NotFound => eng.stats.cas_misses += 1,
                _ => {}
            }
        }
        if outcome == Outcome::NoMemory {
            eng.stats.store_no_memory += 1;
            return self.reply(
                p.noreply && p.meta.is_none(),
                "SERVER_ERROR out of memory storing object",
            );
        }
        match p.meta {
            Some(m) => self.meta_set_done(outcome, cas, &p.key, p.noreply, &m),
            None => {
                let msg = match outcome {
                    Outcome::Stored => "STORED",
                    Outcome::Exists => "EXISTS",
                    Outcome::NotFound => "NOT_FOUND",
                    _ => "NOT_STORED",
                };
                self.reply(p.noreply, msg)
            }
        }
    }

    fn arith(&mut self, t: &Tokens<'_>, incr: bool, eng: &mut Engine, now: Instant) {
        let noreply = t.noreply();
        let Some(key) = t.key() else {
            return self.reply(noreply, BAD_FORMAT);
        };
        let Some(delta) = strtoull(t.get(2)) else {
            return self.reply(noreply, "CLIENT_ERROR invalid numeric delta argument");
        };
        match eng.store.delta(key, incr, delta, 0, now) {
            Delta::Done(_, value) => {
                if incr {
                    eng.stats.incr_hits += 1;
                } else {
                    eng.stats.decr_hits += 1;
                }
                self.reply(noreply, &value)
            }
            Delta::NonNumeric => self.reply(
                noreply,
                "CLIENT_ERROR cannot increment or decrement non-numeric value",
            ),
            Delta::NoMemory => self.reply(noreply, "SERVER_ERROR out of memory"),
            Delta::NotFound | Delta::CasMismatch => {
                if incr {
                    eng.stats.incr_misses += 1;
                } else {
                    eng.stats.decr_misses += 1;
                }
                self.reply(noreply, "NOT_FOUND")
            }
        }
    }

    fn delete(&mut self, t: &Tokens<'_>, eng: &mut Engine, now: Instant) {
        let n = t.ntokens();
        let mut noreply = false;
        if n > 3 {
            let hold_is_zero = t.get(2) == b"0";
            noreply = t.noreply();
            let valid =
                (n == 4 && (hold_is_zero || noreply)) || (n == 5 && hold_is_zero && noreply);
            if !valid {
                return self.reply(
                    noreply,
                    "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]",
                );
            }
        }
        let Some(key) = t.key() else {
            return self.reply(noreply, BAD_FORMAT);
        };
        let Some(id) = eng.store.lookup(key, now) else {
            eng.stats.delete_misses += 1;
            return self.reply(noreply, "NOT_FOUND");
        };
        eng.store.unlink(id);
        eng.stats.delete_hits += 1;
        self.reply(noreply, "DELETED")
    }

    fn touch(&mut self, t: &Tokens<'_>, eng: &mut Engine, now: Instant) {
        let noreply = t.noreply();
        let Some(key) = t.key() else {
            return self.reply(noreply, BAD_FORMAT);
        };
        let Some(exptime) = strtol(t.get(2)) else {
            return self.reply(noreply, "CLIENT_ERROR invalid exptime argument");
        };
        let expiry = eng.store.expiry(exptime.into(), now);
        eng.stats.cmd_touch += 1;
        let Some(id) = eng.store.lookup(key, now) else {
            eng.stats.touch_misses += 1;
            return self.reply(noreply, "NOT_FOUND");
        };
        eng.store.item_mut(id).expiry = expiry;
        eng.store.bump(id, now);
        eng.stats.touch_hits += 1;
        self.reply(noreply, "TOUCHED")
    }

    fn flush_all(&mut self, t: &Tokens<'_>, eng: &mut Engine, now: Instant) {
        let noreply = t.noreply();
        eng.stats.cmd_flush += 1;
        let mut exptime = 0;
        if t.ntokens() != if noreply { 3 } else { 2 } {
            match strtol(t.get(1)) {
                Some(e) => exptime = e,
                None => return self.reply(noreply, "CLIENT_ERROR invalid exptime argument"),
            }
        }
        let at = match eng.store.expiry(exptime.into(), now) {
            Expiry::At(t) if exptime > 0 => Some(t),
            _ => None,
        };
        eng.store.flush(at, now);
        self.reply(noreply, "OK")
    }
}
