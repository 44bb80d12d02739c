//! The shared secret that tags management messages: made at random, or
//! read from and written to a key file that must be private to its owner.
//! Kept apart from the message codec so file handling does not crowd it.

use std::fmt;
use std::io::Write;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{MIN_KEY_LEN, MgmtError};

type HmacSha256 = Hmac<Sha256>;

/// A shared secret that tags management messages. `Debug` does not show
/// it; dropping it overwrites it.
#[derive(Clone)]
pub struct Key {
    bytes: Vec<u8>,
    /// HMAC keyed once, cloned per message (saves hashing the key pads).
    pub(super) mac: HmacSha256,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<{} bytes>)", self.bytes.len())
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // Best effort without `unsafe`: black_box keeps the write from
        // being dropped as dead.
        self.bytes.fill(0);
        std::hint::black_box(&self.bytes);
    }
}

impl Key {
    /// A key of these bytes; refuses fewer than [`MIN_KEY_LEN`].
    pub fn new(bytes: &[u8]) -> Result<Key, MgmtError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(MgmtError::BadKey(format!(
                "{} bytes, at least {MIN_KEY_LEN} are needed",
                bytes.len()
            )));
        }
        let mac =
            HmacSha256::new_from_slice(bytes).map_err(|e| MgmtError::BadKey(e.to_string()))?;
        Ok(Key {
            bytes: bytes.to_vec(),
            mac,
        })
    }

    /// 32 random bytes from the OS.
    pub fn random() -> Result<Key, MgmtError> {
        let mut b = [0u8; 32];
        let mut got = 0;
        while got < b.len() {
            match rustix::rand::getrandom(&mut b[got..], rustix::rand::GetRandomFlags::empty()) {
                Ok(n) => got += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(MgmtError::Random(e.into())),
            }
        }
        let key = Key::new(&b);
        b.fill(0);
        key
    }

    /// The key in `path`: its contents trimmed of ASCII whitespace,
    /// hex-decoded if they are an even number (at least 32) of hex digits,
    /// else the raw bytes. Refuses a file readable by group or others.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Key, MgmtError> {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;
        let path = path.as_ref();
        let io = key_file_error(path);
        // Mode from the open file, so what is checked is what is read.
        let mut f = std::fs::File::open(path).map_err(io)?;
        let mode = f.metadata().map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(MgmtError::KeyFileExposed {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
        let mut raw = Vec::new();
        f.read_to_end(&mut raw).map_err(io)?;
        let text = raw.trim_ascii();
        let decoded = decode_hex(text);
        let key = Key::new(decoded.as_deref().unwrap_or(text))
            .map_err(|e| MgmtError::BadKey(format!("{}: {e}", path.display())));
        raw.fill(0);
        key
    }

    /// A new random key, written to `path` (which must not exist) as 64
    /// hex digits and a newline, mode 0600. The file appears whole: it is
    /// written under a private name and then linked to `path` (which fails
    /// if `path` exists), so a process that reads `path` while another
    /// creates it never sees it empty or half written.
    pub fn create_file(path: impl AsRef<Path>) -> Result<Key, MgmtError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.as_ref();
        let io = key_file_error(path);
        let key = Key::random()?;
        // Private to this process and call (threads of one run may race).
        static DRAFTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = DRAFTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut draft = path.as_os_str().to_owned();
        draft.push(format!(".{}-{n}.new", std::process::id()));
        let draft = std::path::PathBuf::from(draft);
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&draft)?;
            let mut text = key.to_hex();
            text.push('\n');
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::hard_link(&draft, path)
        })();
        let _ = std::fs::remove_file(&draft);
        written.map_err(io)?;
        Ok(key)
    }

    /// The key as lowercase hex (what [`Self::create_file`] writes).
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(self.bytes.len() * 2);
        for b in &self.bytes {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 15)] as char);
        }
        s
    }

    /// A secret for another purpose, such as the HTTP API token:
    /// HMAC-SHA256(key, `label`). Different labels give unrelated
    /// secrets, and none reveals the key.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Maps an I/O error on the key file `path` to [`MgmtError::Io`].
fn key_file_error(path: &Path) -> impl Fn(std::io::Error) -> MgmtError + Copy + '_ {
    move |source| MgmtError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `text` hex-decoded if it is an even number, at least 32, of hex digits.
pub(super) fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() < 32 || !text.len().is_multiple_of(2) || !text.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    };
    Some(
        text.chunks_exact(2)
            .map(|p| nibble(p[0]) << 4 | nibble(p[1]))
            .collect(),
    )
}
