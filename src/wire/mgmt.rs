//! Management messages: the requests a manager sends to every device's
//! agent, and the agent's responses, over TCP (in-band on the
//! shared-memory networks).
//!
//! A message is a 32-byte header, a body and a 32-byte tag, big-endian:
//!
//! ```text
//!  0  magic b"SNMG"          (4)
//!  4  version = 1            (1)
//!  5  kind: 1 request, 2 response
//!  6  op (raw: an agent answers an unknown op with Status::UnknownOp)
//!  7  status (responses; 0 in requests)
//!  8  client u32             random per client session
//! 12  seq u64                strictly increasing per client
//! 20  time_ms u64            sender's unix time in ms
//! 28  body_len u32           at most MAX_BODY
//! 32  body                   (UTF-8 text in practice)
//! 32+body_len  tag           HMAC-SHA256(key, bytes 0..32+body_len)
//! ```
//!
//! Contract: [`open`] checks the structure, then the tag (in constant
//! time), and only then hands out a [`MgmtRepr`]; nothing in an
//! unauthenticated message is acted on. After `open`, a receiver runs
//! [`ReplayGuard::check`] on the client, seq and time, which refuses stale
//! and replayed messages. [`frame_len`] cuts messages out of a TCP byte
//! stream and refuses a hostile header before its body is buffered.
//!
//! ```
//! use shmnet::wire::mgmt::{self, Key, Kind, MgmtRepr, Op, ReplayGuard};
//! let key = Key::new(b"a shared secret of 16+ bytes").unwrap();
//! let req = MgmtRepr {
//!     kind: Kind::Request,
//!     op: Op::Identify as u8,
//!     status: 0,
//!     client: 7,
//!     seq: 1,
//!     time_ms: 1_700_000_000_000,
//!     body: b"",
//! };
//! let msg = mgmt::seal(&req, &key).unwrap();
//! assert_eq!(mgmt::frame_len(&msg).unwrap(), Some(msg.len()));
//! let got = mgmt::open(&msg, &key).unwrap();
//! assert_eq!(got, req);
//! let mut guard = ReplayGuard::default();
//! assert!(guard.check(got.client, got.seq, got.time_ms, 1_700_000_000_500).is_ok());
//! // The same message again is a replay.
//! assert!(guard.check(got.client, got.seq, got.time_ms, 1_700_000_000_600).is_err());
//! ```

use std::fmt;
use std::path::PathBuf;

use hmac::Mac;

mod key;
mod replay;

pub use key::Key;
pub use replay::{ReplayCounters, ReplayGuard};

/// The sender's clock as a message's `time_ms` carries it (and as a
/// [`ReplayGuard`] compares it): Unix time in ms, 0 before 1970.
pub fn unix_ms() -> u64 {
    super::since_unix_epoch().as_millis() as u64
}

/// The first four bytes of every message.
pub const MAGIC: [u8; 4] = *b"SNMG";
/// The format version this module reads and writes.
pub const VERSION: u8 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 32;
/// Bytes of the tag (HMAC-SHA256).
pub const TAG_LEN: usize = 32;
/// The largest body: bounds what a peer can make a receiver buffer.
pub const MAX_BODY: usize = 4 << 20;
/// The shortest key [`Key::new`] accepts.
pub const MIN_KEY_LEN: usize = 16;

/// Errors of management messages, keys and the replay guard.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MgmtError {
    /// Fewer bytes than the header or the length it gives: wait for more
    /// from a stream, or drop a datagram.
    #[error("management message truncated")]
    Truncated,
    /// Bytes after the message passed to [`open`]: cut messages with
    /// [`frame_len`].
    #[error("{extra} bytes after the management message")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// Not a management message (or the stream lost its framing): close
    /// the connection.
    #[error("not a management message (bad magic)")]
    BadMagic,
    /// A version this build does not speak: upgrade the older side.
    #[error("management message version {version}, this build speaks {VERSION}")]
    BadVersion {
        /// The version the message gives.
        version: u8,
    },
    /// The kind is neither request nor response.
    #[error("management message kind {kind} is neither request (1) nor response (2)")]
    BadKind {
        /// The kind the message gives.
        kind: u8,
    },
    /// A request with a nonzero status.
    #[error("management request with status {status} (requests carry 0)")]
    BadStatus {
        /// The status the request gives.
        status: u8,
    },
    /// The body is larger than [`MAX_BODY`]: refused before it is
    /// buffered.
    #[error("management message body of {len} bytes exceeds the limit of {MAX_BODY}")]
    TooLong {
        /// The body length asked for.
        len: usize,
    },
    /// The tag does not match: the peer holds another key, or the message
    /// was altered. Drop it.
    #[error("management message tag mismatch (wrong key or altered message)")]
    BadTag,
    /// A key the caller gave or a key file holds is unusable.
    #[error("bad management key: {0}")]
    BadKey(String),
    /// The key file can be read by others than its owner.
    #[error(
        "management key file {} is readable by group or others (mode {mode:o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyFileExposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The message time is further from this host's clock than the replay
    /// window: a replay, or one of the clocks is wrong (check NTP).
    #[error(
        "management message time is {skew_ms} ms off this host's clock (beyond the replay window)"
    )]
    Stale {
        /// How far the message time is from now, either way.
        skew_ms: u64,
    },
    /// A sequence number at or below the last one accepted from this
    /// client: a replay. Drop it.
    #[error("replayed management message (client {client:08x}, seq {seq})")]
    Replayed {
        /// The client.
        client: u32,
        /// The sequence number.
        seq: u64,
    },
    /// The replay guard remembers as many fresh clients as it may; a new
    /// one is refused until one goes quiet for the window.
    #[error("too many management clients at once")]
    TooManyClients,
    /// The OS random source failed.
    #[error("cannot read random bytes for a management key: {0}")]
    Random(#[source] std::io::Error),
    /// Reading or writing a key file failed.
    #[error("management key file {}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// Declares a `u8` enum with `from_u8` and `name`.
macro_rules! u8_enum {
    ($(#[$attr:meta])* $name:ident { $($(#[$vattr:meta])* $v:ident = $n:literal => $s:literal,)* }) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vattr])* $v = $n,)*
        }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: &[$name] = &[$($name::$v),*];
            /// The value with this wire number, if any.
            pub const fn from_u8(n: u8) -> Option<$name> {
                match n {
                    $($n => Some($name::$v),)*
                    _ => None,
                }
            }
            /// The value with this [`Self::name`], if any.
            pub fn from_name(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.name() == s)
            }
            /// A lowercase name for logs and command lines.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$v => $s,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

u8_enum! {
    /// Whether a message asks or answers.
    Kind {
        /// Manager to agent.
        Request = 1 => "request",
        /// Agent to manager.
        Response = 2 => "response",
    }
}

u8_enum! {
    /// What a request asks the agent to do.
    Op {
        /// Name, role and version of the device.
        Identify = 1 => "identify",
        /// The device's counters.
        Counters = 2 => "counters",
        /// The device's configuration.
        Config = 3 => "config",
        /// Apply a function configuration (in place, or another kind).
        SetFunction = 4 => "set_function",
        /// Start a packet capture.
        CaptureStart = 5 => "capture_start",
        /// Stop a packet capture.
        CaptureStop = 6 => "capture_stop",
        /// Reachability probe.
        Probe = 7 => "probe",
    }
}

u8_enum! {
    /// How a response ended.
    Status {
        /// Done; the body is the answer.
        Ok = 0 => "ok",
        /// Failed; the body says why.
        Error = 1 => "error",
        /// The agent refused the request's tag.
        Unauthorized = 2 => "unauthorized",
        /// The agent refused the request as stale or replayed.
        Replay = 3 => "replay",
        /// The agent does not know the op.
        UnknownOp = 4 => "unknown_op",
        /// The body is not what the op takes.
        BadRequest = 5 => "bad_request",
    }
}

/// The offsets the header check reads before the header is whole; the
/// other fields' stand in [`MgmtPacket`]'s accessors.
mod field {
    pub const MAGIC: std::ops::Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const BODY_LEN: usize = 28;
    pub const BODY: usize = 32;
}

/// Checks what the first bytes of a header say, as far as they go: magic
/// (even a prefix of it), version, kind and, with the whole header, the
/// body bound. Returns the body length once the header is complete.
fn check_header(b: &[u8]) -> Result<Option<usize>, MgmtError> {
    let n = b.len().min(MAGIC.len());
    if b[..n] != MAGIC[..n] {
        return Err(MgmtError::BadMagic);
    }
    if let Some(&version) = b.get(field::VERSION)
        && version != VERSION
    {
        return Err(MgmtError::BadVersion { version });
    }
    if let Some(&kind) = b.get(field::KIND)
        && Kind::from_u8(kind).is_none()
    {
        return Err(MgmtError::BadKind { kind });
    }
    let Some(len) = b.get(field::BODY_LEN..field::BODY) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_BODY {
        return Err(MgmtError::TooLong { len });
    }
    Ok(Some(len))
}

/// How long the message at the start of a byte stream is: `Ok(None)`
/// until the header is in, then `Ok(Some(total))` (header, body and tag).
/// Errors as soon as the bytes present cannot start a message, so a
/// hostile peer cannot make the reader buffer more than
/// `HEADER_LEN + MAX_BODY + TAG_LEN` bytes.
///
/// ```
/// use shmnet::wire::mgmt::{frame_len, MgmtError};
/// assert_eq!(frame_len(b"SNMG\x01").unwrap(), None);
/// assert!(matches!(frame_len(b"GET / HTTP/1.1"), Err(MgmtError::BadMagic)));
/// ```
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, MgmtError> {
    Ok(check_header(buf)?.map(|body| HEADER_LEN + body + TAG_LEN))
}

/// A read/write view of a management message.
#[derive(Debug, Clone)]
pub struct MgmtPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> MgmtPacket<T> {
    /// A view of `buffer` whose contents are not checked: accessors panic
    /// on a buffer shorter than the header or the length it gives.
    pub const fn new_unchecked(buffer: T) -> Self {
        MgmtPacket { buffer }
    }

    /// A view of `buffer` once [`Self::check_len`] passes.
    pub fn new_checked(buffer: T) -> Result<Self, MgmtError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Whether the buffer holds a whole message with a known magic,
    /// version and kind and a body within [`MAX_BODY`]. Bytes after the
    /// message are allowed (see [`Self::total_len`]).
    pub fn check_len(&self) -> Result<(), MgmtError> {
        let b = self.buffer.as_ref();
        match check_header(b)? {
            Some(body) if b.len() >= HEADER_LEN + body + TAG_LEN => Ok(()),
            _ => Err(MgmtError::Truncated),
        }
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The magic field.
    pub fn magic(&self) -> [u8; 4] {
        let b = &self.buffer.as_ref()[field::MAGIC];
        [b[0], b[1], b[2], b[3]]
    }
    /// Bytes of the whole message as the header gives it: header, body
    /// and tag.
    pub fn total_len(&self) -> usize {
        (self.body_len() as usize).saturating_add(HEADER_LEN + TAG_LEN)
    }
    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[field::BODY..self.total_len() - TAG_LEN]
    }
    /// The tag.
    pub fn tag(&self) -> &[u8] {
        let end = self.total_len();
        &self.buffer.as_ref()[end - TAG_LEN..end]
    }
    /// The bytes the tag covers: header and body.
    pub fn signed(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.total_len() - TAG_LEN]
    }

    /// Whether the tag is the HMAC of header and body under `key`,
    /// compared in constant time.
    pub fn check_tag(&self, key: &Key) -> Result<(), MgmtError> {
        let mut mac = key.mac.clone();
        mac.update(self.signed());
        mac.verify_slice(self.tag()).map_err(|_| MgmtError::BadTag)
    }
}

be_fields! {
    MgmtPacket {
        /// The version field.
        version, set_version: u8 = field::VERSION;
        /// The kind field, raw (see [`Kind::from_u8`]).
        kind, set_kind: u8 = field::KIND;
        /// The op field, raw (see [`Op::from_u8`]).
        op, set_op: u8 = 6;
        /// The status field, raw (see [`Status::from_u8`]).
        status, set_status: u8 = 7;
        /// The client session.
        client, set_client: u32 = 8;
        /// The sequence number.
        seq, set_seq: u64 = 12;
        /// The sender's unix time in milliseconds.
        time_ms, set_time_ms: u64 = 20;
        /// The body length field (which places the tag).
        body_len, set_body_len: u32 = field::BODY_LEN;
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> MgmtPacket<T> {
    /// Sets the magic field.
    pub fn set_magic(&mut self, magic: [u8; 4]) {
        self.buffer.as_mut()[field::MAGIC].copy_from_slice(&magic);
    }
    /// The body, writable.
    pub fn body_mut(&mut self) -> &mut [u8] {
        let end = self.total_len() - TAG_LEN;
        &mut self.buffer.as_mut()[field::BODY..end]
    }
    /// The tag, writable.
    pub fn tag_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.buffer.as_mut()[end - TAG_LEN..end]
    }
    /// Writes the tag: the HMAC of header and body under `key`.
    pub fn fill_tag(&mut self, key: &Key) {
        let mut mac = key.mac.clone();
        mac.update(self.signed());
        let tag = mac.finalize().into_bytes();
        self.tag_mut().copy_from_slice(&tag);
    }
}

/// What a management message says (its tag aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MgmtRepr<'a> {
    /// Request or response.
    pub kind: Kind,
    /// The op, raw: an unknown op still parses so the agent can answer
    /// [`Status::UnknownOp`].
    pub op: u8,
    /// The status, raw ([`Status`] in responses, 0 in requests).
    pub status: u8,
    /// The client session, random per session.
    pub client: u32,
    /// Strictly increasing per client; a response repeats its request's.
    pub seq: u64,
    /// The sender's unix time in milliseconds.
    pub time_ms: u64,
    /// The body: UTF-8 text in practice, bytes here.
    pub body: &'a [u8],
}

impl<'a> MgmtRepr<'a> {
    /// Reads a message (structure only; [`open`] checks the tag first).
    /// Refuses what [`MgmtPacket::check_len`] refuses and a request with a
    /// nonzero status.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(p: &MgmtPacket<&'a T>) -> Result<Self, MgmtError> {
        p.check_len()?;
        let kind = Kind::from_u8(p.kind()).ok_or(MgmtError::BadKind { kind: p.kind() })?;
        if kind == Kind::Request && p.status() != 0 {
            return Err(MgmtError::BadStatus { status: p.status() });
        }
        let b: &'a [u8] = p.buffer.as_ref();
        let body = &b[field::BODY..p.total_len() - TAG_LEN];
        Ok(MgmtRepr {
            kind,
            op: p.op(),
            status: p.status(),
            client: p.client(),
            seq: p.seq(),
            time_ms: p.time_ms(),
            body,
        })
    }

    /// The op, if this build knows it.
    pub fn known_op(&self) -> Option<Op> {
        Op::from_u8(self.op)
    }

    /// Bytes [`Self::emit`] writes: header, body and tag.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.body.len() + TAG_LEN
    }

    /// Writes header and body into `p` (at least [`Self::buffer_len`]
    /// bytes); the tag is [`MgmtPacket::fill_tag`]'s. A body over
    /// [`MAX_BODY`] writes a message no reader accepts: [`seal`] refuses
    /// it first.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut MgmtPacket<T>) {
        p.set_magic(MAGIC);
        p.set_version(VERSION);
        p.set_kind(self.kind as u8);
        p.set_op(self.op);
        p.set_status(self.status);
        p.set_client(self.client);
        p.set_seq(self.seq);
        p.set_time_ms(self.time_ms);
        p.set_body_len(u32::try_from(self.body.len()).unwrap_or(u32::MAX));
        p.buffer.as_mut()[field::BODY..field::BODY + self.body.len()].copy_from_slice(self.body);
    }
}

/// The whole message for `repr`, tag included. Refuses a body over
/// [`MAX_BODY`].
pub fn seal(repr: &MgmtRepr<'_>, key: &Key) -> Result<Vec<u8>, MgmtError> {
    if repr.body.len() > MAX_BODY {
        return Err(MgmtError::TooLong {
            len: repr.body.len(),
        });
    }
    let mut p = MgmtPacket::new_unchecked(vec![0u8; repr.buffer_len()]);
    repr.emit(&mut p);
    p.fill_tag(key);
    Ok(p.into_inner())
}

/// Reads exactly one message: checks the structure, then the tag under
/// `key` in constant time, and only then what the fields mean.
pub fn open<'a>(msg: &'a [u8], key: &Key) -> Result<MgmtRepr<'a>, MgmtError> {
    let p = MgmtPacket::new_checked(msg)?;
    if msg.len() > p.total_len() {
        return Err(MgmtError::TrailingBytes {
            extra: msg.len() - p.total_len(),
        });
    }
    p.check_tag(key)?;
    MgmtRepr::parse(&p)
}

#[cfg(test)]
mod tests;
