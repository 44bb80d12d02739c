//! Security associations: AES-GCM keys with their salt, the sending SA's
//! sequence counter and IV epoch, the receiving SA's anti-replay window
//! (RFC 4303 §3.4.3).

use std::sync::atomic::{AtomicU32, Ordering};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Tag};

use super::{ICV_LEN, IV_LEN};

/// AES-GCM with either key size.
pub(super) enum Cipher {
    Aes128(Box<Aes128Gcm>),
    Aes256(Box<Aes256Gcm>),
}

impl Cipher {
    pub(super) fn new(key: &[u8]) -> Option<Cipher> {
        match key.len() {
            16 => Aes128Gcm::new_from_slice(key)
                .ok()
                .map(|c| Cipher::Aes128(Box::new(c))),
            32 => Aes256Gcm::new_from_slice(key)
                .ok()
                .map(|c| Cipher::Aes256(Box::new(c))),
            _ => None,
        }
    }

    /// Encrypts `buf` in place; returns the ICV.
    pub(super) fn seal(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Option<[u8; ICV_LEN]> {
        let tag = match self {
            Cipher::Aes128(c) => c.encrypt_inout_detached(&(*nonce).into(), aad, buf.into()),
            Cipher::Aes256(c) => c.encrypt_inout_detached(&(*nonce).into(), aad, buf.into()),
        };
        tag.ok().map(|t| t.into())
    }

    /// Decrypts `buf` in place if `tag` verifies.
    pub(super) fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; ICV_LEN],
    ) -> bool {
        let tag: Tag = (*tag).into();
        match self {
            Cipher::Aes128(c) => c.decrypt_inout_detached(&(*nonce).into(), aad, buf.into(), &tag),
            Cipher::Aes256(c) => c.decrypt_inout_detached(&(*nonce).into(), aad, buf.into(), &tag),
        }
        .is_ok()
    }
}

/// An SA's key: the material as configured (AES key followed by the
/// 4-byte salt, RFC 4106 §8.1), the cipher built from it and the salt.
pub(super) struct SaKey {
    pub(super) material: Vec<u8>,
    pub(super) cipher: Cipher,
    salt: [u8; 4],
}

impl SaKey {
    /// `None` unless `material` is 20 or 36 bytes.
    pub(super) fn new(material: Vec<u8>) -> Option<SaKey> {
        let (aes, salt) = material.split_at_checked(material.len().checked_sub(4)?)?;
        Some(SaKey {
            cipher: Cipher::new(aes)?,
            salt: salt.try_into().ok()?,
            material,
        })
    }

    /// The AEAD nonce `salt || IV` (RFC 4106 §4).
    pub(super) fn nonce(&self, iv: &[u8; IV_LEN]) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&self.salt);
        nonce[4..].copy_from_slice(iv);
        nonce
    }
}

/// A fresh IV epoch: Unix seconds, strictly increasing within the process.
fn next_epoch() -> u32 {
    static LAST: AtomicU32 = AtomicU32::new(0);
    let now = crate::wire::since_unix_epoch().as_secs() as u32;
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last.wrapping_add(1));
        match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The sending side of an SA.
pub(super) struct OutboundSa {
    pub(super) spi: u32,
    pub(super) key: SaKey,
    /// The IV's high half, fresh for each SA.
    pub(super) epoch: u32,
    /// Next sequence number; past `u32::MAX` the SA is exhausted.
    pub(super) next_seq: u64,
}

impl OutboundSa {
    pub(super) fn new(spi: u32, key: SaKey) -> OutboundSa {
        OutboundSa {
            spi,
            key,
            epoch: next_epoch(),
            next_seq: 1,
        }
    }

    /// The same SPI and key material (a rekey that keeps this SA).
    pub(super) fn same_as(&self, other: &OutboundSa) -> bool {
        self.spi == other.spi && self.key.material == other.key.material
    }
}

/// The receiving side of an SA.
pub(super) struct InboundSa {
    pub(super) spi: u32,
    pub(super) key: SaKey,
    pub(super) window: ReplayWindow,
}

impl InboundSa {
    pub(super) fn new(spi: u32, key: SaKey, window: u32) -> InboundSa {
        InboundSa {
            spi,
            key,
            window: ReplayWindow::new(window),
        }
    }

    /// The same SPI, key material and window size (a rekey that keeps
    /// this SA's window).
    pub(super) fn same_as(&self, other: &InboundSa) -> bool {
        self.spi == other.spi
            && self.key.material == other.key.material
            && self.window.size == other.window.size
    }
}

/// Why the replay window refused a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// Seen before.
    Duplicate,
    /// Left of the window (or 0, which is never sent).
    TooOld,
}

/// The RFC 4303 §3.4.3 sliding window: the highest sequence number
/// accepted, and a bitmap of the `size` numbers up to it (bit 0 = highest).
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    size: u64,
    top: u64,
    bits: Vec<u64>,
}

impl ReplayWindow {
    /// An empty window over the last `size` sequence numbers (at least 1).
    pub fn new(size: u32) -> ReplayWindow {
        let size = size.max(1) as u64;
        ReplayWindow {
            size,
            top: 0,
            bits: vec![0; size.div_ceil(64) as usize],
        }
    }

    /// Whether `seq` may be accepted (does not change the window).
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::TooOld);
        }
        if seq > self.top {
            return Ok(());
        }
        let back = self.top - seq;
        if back >= self.size {
            return Err(ReplayError::TooOld);
        }
        if self.bits[(back / 64) as usize] & (1 << (back % 64)) != 0 {
            return Err(ReplayError::Duplicate);
        }
        Ok(())
    }

    /// Records `seq` (after its ICV verified and `check` passed).
    pub fn accept(&mut self, seq: u64) {
        if seq > self.top {
            self.shift(seq - self.top);
            self.top = seq;
        }
        let back = self.top - seq;
        if back < self.size {
            self.bits[(back / 64) as usize] |= 1 << (back % 64);
        }
    }

    /// Moves every bit `d` places towards older numbers.
    fn shift(&mut self, d: u64) {
        if d >= self.size {
            self.bits.fill(0);
            return;
        }
        let words = (d / 64) as usize;
        let bits = (d % 64) as u32;
        for i in (0..self.bits.len()).rev() {
            let mut v = i.checked_sub(words).map_or(0, |s| self.bits[s] << bits);
            if bits > 0
                && let Some(s) = i.checked_sub(words + 1)
            {
                v |= self.bits[s] >> (64 - bits);
            }
            self.bits[i] = v;
        }
    }
}
