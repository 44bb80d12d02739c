//! Encryption: ESP tunnel mode (RFC 4303) with AES-GCM (RFC 4106) between
//! a pair of forwarding devices.
//!
//! Each device of the pair encapsulates IP packets arriving from its
//! client-side network into ESP packets from `local_address` to
//! `peer_address` on the hop (its global network unless `hop = "local"`),
//! and decapsulates ESP packets arriving from the hop for `local_address`;
//! the device's forwarding then routes the result. The wire format is the
//! standard one, so any ESP implementation (or tshark, given the keys) can
//! read it:
//!
//! ```text
//! outer IPv4 (proto 50) | SPI | seq | IV (8) | enc(inner packet | pad | pad len | next header) | ICV (16)
//! ```
//!
//! The AEAD nonce is `salt || IV` (RFC 4106 §4) and the AAD `SPI || seq`
//! (§5). The IV is `epoch << 32 | seq`: `seq` never wraps (the SA stops
//! sending instead) and every SA gets a fresh `epoch` (Unix seconds when it
//! was created, strictly increasing within a process), so a nonce is never
//! used twice under one key, even after a rekey back to an old key or a
//! restart. Inbound packets pass an anti-replay window (RFC 4303 §3.4.3)
//! that is only advanced once the ICV verified.
//!
//! Keys are 16 or 32 bytes of AES key followed by a 4-byte salt (RFC 4106
//! §8.1), given as hex in the config or in a key file. Changing the config
//! rekeys in place ([`Encrypt::reconfigure`]): inbound SAs that remain keep
//! their replay windows, so packets in flight under the old SA are still
//! accepted while new traffic uses the new one.
//!
//! Plaintext IP packets arriving from the hop are dropped unless addressed
//! to `local_address` or multicast/link-local: nothing bypasses the tunnel.
//!
//! ```
//! use shmnet::functions::encrypt::{EspPacket, EspRepr};
//! let repr = EspRepr { spi: 0x1001, seq: 7 };
//! let mut buf = [0u8; 8];
//! repr.emit(&mut EspPacket::new_unchecked(&mut buf[..]));
//! assert_eq!(EspRepr::parse(&EspPacket::new_checked(&buf[..]).unwrap()).unwrap(), repr);
//! ```

#![allow(clippy::redundant_closure_call)] // transitional: counters and reconfigure shims, removed as each function moves to the new contract
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Tag};
use smoltcp::time::Instant;

use super::compress::HopSide;
use super::{Frame, Function, FunctionConfig, FunctionError, Role, Verdict, ipv4_header_checksum};

/// IP protocol number of ESP.
pub const IPPROTO_ESP: u8 = 50;
/// Bytes of the explicit IV (RFC 4106 §3.1).
pub const IV_LEN: usize = 8;
/// Bytes of the ICV (we always use the 16-byte one).
pub const ICV_LEN: usize = 16;
/// Outer IPv4 header we emit.
const OUTER_LEN: usize = 20;
/// Worst-case bytes ESP adds to an inner packet: outer header, ESP header,
/// IV, up to 3 bytes of padding, pad length, next header, ICV.
pub const OVERHEAD: usize = OUTER_LEN + 8 + IV_LEN + 3 + 2 + ICV_LEN;

pub use crate::wire::esp::{EspError, EspPacket, EspRepr};

/// `[function] kind = "encrypt"`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptConfig {
    /// This device's address on the hop network (outer source).
    pub local_address: Ipv4Addr,
    /// The peer device's address on the hop network (outer destination).
    pub peer_address: Ipv4Addr,
    /// Which of the device's networks is the hop.
    #[serde(default)]
    pub hop: HopSide,
    /// Link medium of the device's networks ("ethernet" or "ip").
    #[serde(default)]
    pub medium: crate::config::MediumName,
    /// The SA that encrypts what this device sends.
    pub outbound: SaConfig,
    /// The SAs accepted from the peer (old and new during a rekey).
    #[serde(default)]
    pub inbound: Vec<SaConfig>,
    /// Anti-replay window in packets, 32..=1024.
    #[serde(default = "default_replay_window")]
    pub replay_window: u32,
    /// IP MTU of the hop: larger ESP packets are not sent, TCP SYNs are
    /// clamped to fit.
    #[serde(default = "default_hop_mtu")]
    pub hop_mtu: u32,
}

/// One security association: `{ spi = 0x1001, key = "hex" }` or
/// `{ spi = 0x1001, key_file = "path" }`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SaConfig {
    /// Security parameter index, 256..=u32::MAX.
    pub spi: u32,
    /// AES key then 4-byte salt, hex (40 or 72 digits).
    #[serde(default)]
    pub key: Option<String>,
    /// A file holding the same hex text, or the raw 20 or 36 bytes.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn default_replay_window() -> u32 {
    64
}
fn default_hop_mtu() -> u32 {
    1500
}

/// Counters of the encryption function.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EncryptStats {
    pub encrypted: u64,
    pub decrypted: u64,
    /// Already seen, or older than the window (dropped).
    pub replayed: u64,
    /// ICV did not verify (dropped).
    pub auth_failed: u64,
    pub unknown_spi: u64,
    /// Would exceed `hop_mtu` or the frame buffer (dropped).
    pub too_big: u64,
    /// The outbound sequence number would wrap: rekey (dropped).
    pub seq_exhausted: u64,
    /// Decrypted trailer or inner packet malformed (dropped).
    pub bad_padding: u64,
    /// Frames that are not IP (passed) or malformed ESP (dropped).
    pub not_ip: u64,
    /// Plaintext from the hop that would bypass the tunnel (dropped).
    pub plaintext_dropped: u64,
    /// TCP SYNs whose MSS was lowered to fit the hop.
    pub mss_clamped: u64,
}

/// AES-GCM with either key size.
enum Cipher {
    Aes128(Box<Aes128Gcm>),
    Aes256(Box<Aes256Gcm>),
}

impl Cipher {
    fn new(key: &[u8]) -> Option<Cipher> {
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
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> Option<[u8; ICV_LEN]> {
        let tag = match self {
            Cipher::Aes128(c) => c.encrypt_inout_detached(&(*nonce).into(), aad, buf.into()),
            Cipher::Aes256(c) => c.encrypt_inout_detached(&(*nonce).into(), aad, buf.into()),
        };
        tag.ok().map(|t| t.into())
    }
    fn open(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8; ICV_LEN]) -> bool {
        let tag: Tag = (*tag).into();
        match self {
            Cipher::Aes128(c) => c.decrypt_inout_detached(&(*nonce).into(), aad, buf.into(), &tag),
            Cipher::Aes256(c) => c.decrypt_inout_detached(&(*nonce).into(), aad, buf.into(), &tag),
        }
        .is_ok()
    }
}

/// Key material: AES key followed by the 4-byte salt.
type KeyMat = Vec<u8>;

/// Reads an SA's key material from `key` or `key_file`.
fn key_material(sa: &SaConfig) -> Result<KeyMat, String> {
    let bytes = match (&sa.key, &sa.key_file) {
        (Some(hex), None) => parse_hex(hex).ok_or("key is not hex")?,
        (None, Some(path)) => {
            let raw = std::fs::read(path).map_err(|e| format!("key_file {path:?}: {e}"))?;
            match std::str::from_utf8(&raw).ok().and_then(parse_hex) {
                Some(b) if matches!(b.len(), 20 | 36) => b,
                _ => raw,
            }
        }
        _ => {
            return Err(format!(
                "SA {:#x}: give exactly one of key, key_file",
                sa.spi
            ));
        }
    };
    if !matches!(bytes.len(), 20 | 36) {
        return Err(format!(
            "SA {:#x}: key must be 20 or 36 bytes (AES-128/256 key + 4-byte salt), got {}",
            sa.spi,
            bytes.len()
        ));
    }
    if sa.spi < 256 {
        return Err(format!("SA {:#x}: SPIs 0..=255 are reserved", sa.spi));
    }
    Ok(bytes)
}

/// Hex digits, optionally `0x`-prefixed, whitespace and `:` ignored.
fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .map(|b| (b as char).to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()?;
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    Some(digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect())
}

/// A fresh IV epoch: Unix seconds, strictly increasing within the process.
fn next_epoch() -> u32 {
    static LAST: AtomicU32 = AtomicU32::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32);
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
struct OutboundSa {
    spi: u32,
    key: KeyMat,
    cipher: Cipher,
    salt: [u8; 4],
    epoch: u32,
    /// Next sequence number; past `u32::MAX` the SA is exhausted.
    next_seq: u64,
}

impl OutboundSa {
    fn new(spi: u32, key: KeyMat) -> OutboundSa {
        let (aes, salt) = key.split_at(key.len() - 4);
        OutboundSa {
            spi,
            cipher: Cipher::new(aes).expect("key length checked"),
            salt: [salt[0], salt[1], salt[2], salt[3]],
            key,
            epoch: next_epoch(),
            next_seq: 1,
        }
    }
}

/// The receiving side of an SA.
struct InboundSa {
    spi: u32,
    key: KeyMat,
    cipher: Cipher,
    salt: [u8; 4],
    window: ReplayWindow,
}

impl InboundSa {
    fn new(spi: u32, key: KeyMat, window: u32) -> InboundSa {
        let (aes, salt) = key.split_at(key.len() - 4);
        InboundSa {
            spi,
            cipher: Cipher::new(aes).expect("key length checked"),
            salt: [salt[0], salt[1], salt[2], salt[3]],
            key,
            window: ReplayWindow::new(window),
        }
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

/// The ESP encapsulator/decapsulator.
pub struct Encrypt {
    local: [u8; 4],
    peer: [u8; 4],
    hop: Role,
    l2: usize,
    hop_mtu: usize,
    outbound: OutboundSa,
    inbound: Vec<InboundSa>,
    stats: EncryptStats,
}

impl Encrypt {
    pub fn new(cfg: EncryptConfig) -> Result<Encrypt, FunctionError> {
        let invalid = |why: String| FunctionError::Invalid {
            kind: "encrypt",
            why,
        };
        if !(32..=1024).contains(&cfg.replay_window) {
            return Err(invalid("replay_window must be 32..=1024 packets".into()));
        }
        if !(576..=65535).contains(&cfg.hop_mtu) {
            return Err(invalid("hop_mtu must be 576..=65535 bytes".into()));
        }
        let out_key = key_material(&cfg.outbound).map_err(invalid)?;
        let mut inbound = Vec::new();
        for sa in &cfg.inbound {
            let key = key_material(sa).map_err(invalid)?;
            if inbound.iter().any(|i: &InboundSa| i.spi == sa.spi) {
                return Err(invalid(format!("inbound SPI {:#x} listed twice", sa.spi)));
            }
            inbound.push(InboundSa::new(sa.spi, key, cfg.replay_window));
        }
        Ok(Encrypt {
            local: cfg.local_address.octets(),
            peer: cfg.peer_address.octets(),
            hop: match cfg.hop {
                HopSide::Global => Role::Global,
                HopSide::Local => Role::Local,
            },
            l2: match cfg.medium {
                crate::config::MediumName::Ethernet => 14,
                crate::config::MediumName::Ip => 0,
            },
            hop_mtu: cfg.hop_mtu as usize,
            outbound: OutboundSa::new(cfg.outbound.spi, out_key),
            inbound,
            stats: EncryptStats::default(),
        })
    }

    pub fn stats(&self) -> &EncryptStats {
        &self.stats
    }

    /// Applies a changed config in place (a rekey). Inbound SAs whose SPI
    /// and key remain keep their replay windows; the outbound SA keeps its
    /// sequence counter if its SPI and key remain, otherwise starts anew
    /// (with a fresh IV epoch, so no nonce repeats under a reused key).
    /// On error nothing changes.
    pub fn reconfigure(&mut self, cfg: &EncryptConfig) -> Result<(), FunctionError> {
        let mut next = Encrypt::new(cfg.clone())?;
        if next.outbound.spi == self.outbound.spi && next.outbound.key == self.outbound.key {
            std::mem::swap(&mut next.outbound, &mut self.outbound);
        }
        for sa in &mut next.inbound {
            if let Some(old) = self
                .inbound
                .iter_mut()
                .find(|o| o.spi == sa.spi && o.key == sa.key)
                && old.window.size == sa.window.size
            {
                std::mem::swap(&mut sa.window, &mut old.window);
            }
        }
        next.stats = std::mem::take(&mut self.stats);
        *self = next;
        Ok(())
    }

    /// The SPI and next sequence number of the outbound SA.
    pub fn outbound_state(&self) -> (u32, u64) {
        (self.outbound.spi, self.outbound.next_seq)
    }

    /// The IP packet in the frame: (offset, length, version).
    fn inner(&self, f: &[u8]) -> Option<(usize, usize, u8)> {
        if self.l2 == 14 && !matches!(f.get(12..14)?, [0x08, 0x00] | [0x86, 0xdd]) {
            return None;
        }
        let ip = f.get(self.l2..)?;
        let len = ip_len(ip)?;
        Some((self.l2, len, ip[0] >> 4))
    }

    /// Encapsulates the frame's IP packet in place.
    pub fn encapsulate(&mut self, frame: &mut Frame<'_>) -> Verdict {
        let Some((ip, inner_len, version)) = self.inner(frame.bytes()) else {
            self.stats.not_ip += 1;
            return Verdict::Pass;
        };
        if !self.tunnelled(&frame.bytes()[ip..ip + inner_len]) {
            return Verdict::Pass;
        }
        if self.clamp_syn(&mut frame.bytes_mut()[ip..ip + inner_len]) {
            self.stats.mss_clamped += 1;
        }
        let pad = (4 - (inner_len + 2) % 4) % 4;
        let plain_len = inner_len + pad + 2;
        let outer_len = OUTER_LEN + 8 + IV_LEN + plain_len + ICV_LEN;
        if outer_len > self.hop_mtu || ip + outer_len > frame.capacity() {
            self.stats.too_big += 1;
            return Verdict::Drop;
        }
        let sa = &mut self.outbound;
        let Ok(seq) = u32::try_from(sa.next_seq) else {
            self.stats.seq_exhausted += 1;
            return Verdict::Drop;
        };
        let iv = (u64::from(sa.epoch) << 32 | u64::from(seq)).to_be_bytes();
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&sa.salt);
        nonce[4..].copy_from_slice(&iv);

        let buf = &mut frame.buffer_mut()[ip..ip + outer_len];
        let esp = OUTER_LEN;
        let body = esp + 8 + IV_LEN;
        buf.copy_within(..inner_len, body);
        let trailer = body + inner_len;
        for (i, b) in buf[trailer..trailer + pad].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        buf[trailer + pad] = pad as u8;
        buf[trailer + pad + 1] = if version == 4 { 4 } else { 41 };
        EspRepr { spi: sa.spi, seq }.emit(&mut EspPacket::new_unchecked(&mut buf[esp..esp + 8]));
        buf[esp + 8..body].copy_from_slice(&iv);
        let (head, rest) = buf.split_at_mut(body);
        let Some(tag) = sa
            .cipher
            .seal(&nonce, &head[esp..esp + 8], &mut rest[..plain_len])
        else {
            self.stats.too_big += 1;
            return Verdict::Drop;
        };
        rest[plain_len..].copy_from_slice(&tag);
        sa.next_seq += 1;
        emit_outer_ipv4(&mut buf[..OUTER_LEN], self.local, self.peer, outer_len);
        if self.l2 == 14 {
            frame.buffer_mut()[12..14].copy_from_slice(&[0x08, 0x00]);
        }
        frame.set_len(ip + outer_len);
        self.stats.encrypted += 1;
        Verdict::Modified
    }

    /// Whether a packet from the client side goes into the tunnel: not
    /// multicast, broadcast or link-local, and not for the hop address.
    fn tunnelled(&self, ip: &[u8]) -> bool {
        match ip[0] >> 4 {
            4 => {
                let dst = [ip[16], ip[17], ip[18], ip[19]];
                !(dst == self.local || dst[0] >= 224 || dst[0] == 169 && dst[1] == 254)
            }
            _ => !(ip[24] == 0xff || ip[24] == 0xfe && ip[25] & 0xc0 == 0x80),
        }
    }

    /// Lowers the MSS of a TCP SYN so its segments fit the hop once
    /// encapsulated. Returns whether it changed the packet.
    fn clamp_syn(&self, ip: &mut [u8]) -> bool {
        let (hdr, proto) = match ip[0] >> 4 {
            4 => ((ip[0] & 0xf) as usize * 4, ip[9]),
            _ => (40, ip[6]),
        };
        if proto != 6 {
            return false;
        }
        let max_mss = self.hop_mtu.saturating_sub(OVERHEAD + hdr + 20);
        let max_mss = max_mss.min(u16::MAX as usize) as u16;
        crate::stack::nic::clamp_tcp_mss(ip.get_mut(hdr..).unwrap_or_default(), max_mss)
    }

    /// Decapsulates an ESP packet for `local_address` in place.
    pub fn decapsulate(&mut self, frame: &mut Frame<'_>) -> Verdict {
        let Some((ip, total, version)) = self.inner(frame.bytes()) else {
            self.stats.not_ip += 1;
            return Verdict::Pass;
        };
        let pkt = &frame.bytes()[ip..ip + total];
        if version != 4 || pkt[9] != IPPROTO_ESP || pkt[16..20] != self.local {
            if self.tunnelled(pkt) {
                // Plaintext that would be forwarded around the tunnel.
                self.stats.plaintext_dropped += 1;
                return Verdict::Drop;
            }
            return Verdict::Pass;
        }
        let hdr = (pkt[0] & 0xf) as usize * 4;
        let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
        let esp_len = total - hdr;
        if frag & 0x3fff != 0 || esp_len < 8 + IV_LEN + 4 + ICV_LEN {
            self.stats.not_ip += 1;
            return Verdict::Drop;
        }
        let esp = ip + hdr;
        let Ok(repr) = EspRepr::parse(&EspPacket::new_unchecked(&frame.bytes()[esp..])) else {
            self.stats.unknown_spi += 1;
            return Verdict::Drop;
        };
        let Some(sa) = self.inbound.iter_mut().find(|s| s.spi == repr.spi) else {
            self.stats.unknown_spi += 1;
            return Verdict::Drop;
        };
        if sa.window.check(u64::from(repr.seq)).is_err() {
            self.stats.replayed += 1;
            return Verdict::Drop;
        }
        let buf = &mut frame.bytes_mut()[esp..esp + esp_len];
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&sa.salt);
        nonce[4..].copy_from_slice(&buf[8..8 + IV_LEN]);
        let (head, rest) = buf.split_at_mut(8 + IV_LEN);
        let (ct, tag) = rest.split_at_mut(rest.len() - ICV_LEN);
        let tag: [u8; ICV_LEN] = (&*tag).try_into().unwrap_or_default();
        if !sa.cipher.open(&nonce, &head[..8], ct, &tag) {
            self.stats.auth_failed += 1;
            return Verdict::Drop;
        }
        sa.window.accept(u64::from(repr.seq));
        let Some((inner_len, inner_type)) = check_trailer(ct) else {
            self.stats.bad_padding += 1;
            return Verdict::Drop;
        };
        let body = esp + 8 + IV_LEN;
        let buf = frame.buffer_mut();
        buf.copy_within(body..body + inner_len, ip);
        if self.l2 == 14 {
            buf[12..14].copy_from_slice(if inner_type == 4 {
                &[0x08, 0x00]
            } else {
                &[0x86, 0xdd]
            });
        }
        frame.set_len(ip + inner_len);
        self.stats.decrypted += 1;
        Verdict::Modified
    }
}

/// Checks a decrypted ESP payload's trailer and inner packet; returns the
/// inner packet's length and next header (4 or 41).
fn check_trailer(plain: &[u8]) -> Option<(usize, u8)> {
    let (&next, rest) = plain.split_last()?;
    let (&pad, rest) = rest.split_last()?;
    let inner_len = rest.len().checked_sub(pad as usize)?;
    let padding = &rest[inner_len..];
    if padding.iter().enumerate().any(|(i, &b)| b != i as u8 + 1) {
        return None;
    }
    let inner = &rest[..inner_len];
    let version = match next {
        4 => 4,
        41 => 6,
        _ => return None,
    };
    if inner.first()? >> 4 != version || ip_len(inner)? != inner_len {
        return None;
    }
    Some((inner_len, next))
}

/// The length an IP header claims, if consistent with `ip`; fragments of
/// IPv4 are fine here (the whole packet is carried).
fn ip_len(ip: &[u8]) -> Option<usize> {
    match ip.first()? >> 4 {
        4 => {
            let hl = (ip[0] & 0xf) as usize * 4;
            let total = u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]) as usize;
            (hl >= 20 && total >= hl && total <= ip.len()).then_some(total)
        }
        6 => {
            let total = 40 + u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]) as usize;
            (total <= ip.len()).then_some(total)
        }
        _ => None,
    }
}

/// Writes a 20-byte IPv4 header for ESP with DF set and its checksum.
fn emit_outer_ipv4(h: &mut [u8], src: [u8; 4], dst: [u8; 4], total_len: usize) {
    h[0] = 0x45;
    h[1] = 0;
    h[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
    h[4..6].copy_from_slice(&[0, 0]);
    h[6..8].copy_from_slice(&[0x40, 0]);
    h[8] = 64;
    h[9] = IPPROTO_ESP;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let ck = ipv4_header_checksum(&h[..20]);
    h[10..12].copy_from_slice(&ck.to_be_bytes());
}

impl Function for Encrypt {
    fn name(&self) -> &'static str {
        "encrypt"
    }

    fn on_ingress(&mut self, _now: Instant, from: Role, frame: &mut Frame<'_>) -> Verdict {
        if from == self.hop {
            self.decapsulate(frame)
        } else {
            self.encapsulate(frame)
        }
    }

    fn reconfigure(&mut self, cfg: &dyn crate::stack::FunctionSpec) -> Result<bool, FunctionError> {
        let Some(cfg) = cfg.downcast_ref::<FunctionConfig>() else {
            return Ok(false);
        };
        Ok((|| -> bool {
            match cfg {
                FunctionConfig::Encrypt(c) => Encrypt::reconfigure(self, c).is_ok(),
                _ => false,
            }
        })())
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        let pairs: Vec<(String, u64)> = (|| {
            let s = &self.stats;
            [
                ("encrypted", s.encrypted),
                ("decrypted", s.decrypted),
                ("replayed", s.replayed),
                ("auth_failed", s.auth_failed),
                ("unknown_spi", s.unknown_spi),
                ("too_big", s.too_big),
                ("seq_exhausted", s.seq_exhausted),
                ("bad_padding", s.bad_padding),
                ("not_ip", s.not_ip),
                ("plaintext_dropped", s.plaintext_dropped),
                ("mss_clamped", s.mss_clamped),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
        })();
        for (n, v) in pairs {
            visit(&n, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "feffe9928665731c6d6a8f9467308308cafebabe";
    const KEY_B: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f01020304";

    fn hex(s: &str) -> Vec<u8> {
        parse_hex(s).unwrap()
    }

    fn sa(spi: u32, key: &str) -> SaConfig {
        SaConfig {
            spi,
            key: Some(key.into()),
            key_file: None,
        }
    }

    fn config(local: [u8; 4], peer: [u8; 4], out: SaConfig, inb: Vec<SaConfig>) -> EncryptConfig {
        EncryptConfig {
            local_address: local.into(),
            peer_address: peer.into(),
            hop: HopSide::Global,
            medium: Default::default(),
            outbound: out,
            inbound: inb,
            replay_window: 64,
            hop_mtu: 1500,
        }
    }

    /// e1 (10.2.0.1) and e2 (10.2.0.2) with SPI 0x1001 one way, 0x2002 back.
    fn pair() -> (Encrypt, Encrypt) {
        let (l, r) = ([10, 2, 0, 1], [10, 2, 0, 2]);
        (
            Encrypt::new(config(l, r, sa(0x1001, KEY_A), vec![sa(0x2002, KEY_B)])).unwrap(),
            Encrypt::new(config(r, l, sa(0x2002, KEY_B), vec![sa(0x1001, KEY_A)])).unwrap(),
        )
    }

    /// An Ethernet + IPv4 + UDP-ish frame 10.0.0.1 → 10.3.0.2 with `payload`.
    fn frame_with(payload: &[u8]) -> (Vec<u8>, usize) {
        crate::functions::fixtures::ipv4_frame([10, 0, 0, 1], [10, 3, 0, 2], payload, 1514)
    }

    /// Encrypts a fresh frame with `payload` on `e`; returns the ESP frame.
    fn seal(e: &mut Encrypt, payload: &[u8]) -> Vec<u8> {
        let (mut buf, len) = frame_with(payload);
        let mut f = Frame::new(&mut buf, len, crate::wire::LinkMedium::Ethernet);
        assert_eq!(e.encapsulate(&mut f), Verdict::Modified);
        let n = f.len();
        buf.truncate(n);
        buf
    }

    fn open(d: &mut Encrypt, esp: &[u8]) -> (Verdict, Vec<u8>) {
        let mut buf = esp.to_vec();
        buf.resize(1514, 0);
        let mut f = Frame::new(&mut buf, esp.len(), crate::wire::LinkMedium::Ethernet);
        let v = d.decapsulate(&mut f);
        let n = f.len();
        buf.truncate(n);
        (v, buf)
    }

    // McGrew & Viega, "The Galois/Counter Mode of Operation", Test Case 3
    // (AES-128, 96-bit IV, no AAD) and Test Case 4 (with AAD).
    const GCM_K: &str = "feffe9928665731c6d6a8f9467308308";
    const GCM_P: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                         1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
    const GCM_IV: &str = "cafebabefacedbaddecaf888";
    const GCM_C: &str = "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
                         21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985";
    const GCM_T3: &str = "4d5c2af327cd64a62cf35abd2ba6fab4";
    const GCM_A: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
    const GCM_T4: &str = "5bc94fbc3221a5db94fae95ae7121a47";

    #[test]
    fn aes_gcm_matches_published_test_cases_3_and_4() {
        let c = Cipher::new(&hex(GCM_K)).unwrap();
        let nonce: [u8; 12] = hex(GCM_IV).try_into().unwrap();
        let mut buf = hex(GCM_P);
        let tag = c.seal(&nonce, &[], &mut buf).unwrap();
        assert_eq!(buf, hex(GCM_C));
        assert_eq!(tag.to_vec(), hex(GCM_T3));
        let mut buf = hex(GCM_P)[..60].to_vec();
        let tag = c.seal(&nonce, &hex(GCM_A), &mut buf).unwrap();
        assert_eq!(buf, hex(GCM_C)[..60]);
        assert_eq!(tag.to_vec(), hex(GCM_T4));
        assert!(c.open(&nonce, &hex(GCM_A), &mut buf, &tag));
        assert_eq!(buf, hex(GCM_P)[..60]);
    }

    /// The ESP nonce is salt || IV: with key = TC3 key || salt cafebabe and
    /// IV facedbaddecaf888, the keystream is Test Case 3's (C xor P).
    #[test]
    fn esp_payload_uses_salt_and_iv_as_the_gcm_nonce() {
        let (mut e, _) = pair();
        e.outbound.epoch = 0xface_dbad;
        e.outbound.next_seq = 0xdecaf888;
        let payload = vec![0u8; 40];
        let (orig, len) = frame_with(&payload);
        let esp = seal(&mut e, &payload);
        let ip = &esp[14..];
        assert_eq!(ip[9], IPPROTO_ESP);
        assert_eq!(ipv4_header_checksum(&ip[..20]), 0, "valid outer checksum");
        assert_eq!(&ip[12..20], &[10, 2, 0, 1, 10, 2, 0, 2]);
        assert_eq!(ip[6], 0x40, "DF");
        assert_eq!(&ip[20..28], &[0, 0, 0x10, 0x01, 0xde, 0xca, 0xf8, 0x88]);
        assert_eq!(&ip[28..36], &hex("facedbaddecaf888")[..]);
        let inner = &orig[14..len];
        // 60-byte inner packet + 2 trailer bytes, padded to 64.
        let mut plain = inner.to_vec();
        plain.extend_from_slice(&[1, 2, 2, 4]);
        assert_eq!(plain.len(), 64);
        let keystream: Vec<u8> = hex(GCM_C)
            .iter()
            .zip(hex(GCM_P))
            .map(|(c, p)| c ^ p)
            .collect();
        let ct: Vec<u8> = plain.iter().zip(&keystream).map(|(p, k)| p ^ k).collect();
        assert_eq!(&ip[36..100], &ct[..]);
        assert_eq!(ip.len(), 100 + ICV_LEN);
    }

    #[test]
    fn round_trip_tamper_replay_and_reorder() {
        let (mut e1, mut e2) = pair();
        let payload: Vec<u8> = (0..333u32).map(|i| i as u8).collect();
        let (orig, len) = frame_with(&payload);
        let packets: Vec<_> = (0..100).map(|_| seal(&mut e1, &payload)).collect();
        assert_eq!(e1.stats().encrypted, 100);
        // Plaintext does not appear in the ESP packet.
        assert!(!packets[0].windows(32).any(|w| w == &payload[100..132]));
        // In order, 0..10.
        for p in &packets[..10] {
            let (v, out) = open(&mut e2, p);
            assert_eq!(v, Verdict::Modified);
            assert_eq!(out, &orig[..len]);
        }
        // Replayed → dropped.
        assert_eq!(open(&mut e2, &packets[3]).0, Verdict::Drop);
        assert_eq!(e2.stats().replayed, 1);
        // Reordered within the window: 40 then 20..40, each accepted once.
        assert_eq!(open(&mut e2, &packets[40]).0, Verdict::Modified);
        for p in &packets[20..40] {
            assert_eq!(open(&mut e2, p).0, Verdict::Modified);
            assert_eq!(open(&mut e2, p).0, Verdict::Drop);
        }
        // 99 moves the window: 10..35 (64+ behind) is out of it.
        assert_eq!(open(&mut e2, &packets[99]).0, Verdict::Modified);
        assert_eq!(open(&mut e2, &packets[12]).0, Verdict::Drop);
        assert_eq!(open(&mut e2, &packets[50]).0, Verdict::Modified);
        assert_eq!(e2.stats().replayed, 1 + 20 + 1);
        // Tampering anywhere in SPI..ICV fails; the window does not move.
        for at in [14 + 24, 14 + 30, 14 + 40, packets[98].len() - 1] {
            let mut bad = packets[98].clone();
            bad[at] ^= 1;
            assert_eq!(open(&mut e2, &bad).0, Verdict::Drop, "tamper at {at}");
        }
        assert_eq!(e2.stats().auth_failed, 4);
        assert_eq!(open(&mut e2, &packets[98]).0, Verdict::Modified);
        // Unknown SPI.
        let mut bad = packets[97].clone();
        bad[14 + 23] ^= 0x40;
        assert_eq!(open(&mut e2, &bad).0, Verdict::Drop);
        assert_eq!(e2.stats().unknown_spi, 1);
        // The reverse direction uses the other SA.
        let back = seal(&mut e2, &payload);
        assert_eq!(&back[14 + 20..14 + 24], &[0, 0, 0x20, 0x02]);
        assert_eq!(open(&mut e1, &back).0, Verdict::Modified);
    }

    #[test]
    fn rekey_keeps_old_sa_traffic_and_switches_new_traffic() {
        let (mut e1, mut e2) = pair();
        let payload = [9u8; 200];
        let early: Vec<_> = (0..5).map(|_| seal(&mut e1, &payload)).collect();
        assert_eq!(open(&mut e2, &early[0]).0, Verdict::Modified);
        // Step 1: the receiver accepts old and new inbound SAs.
        let (l, r) = ([10, 2, 0, 1], [10, 2, 0, 2]);
        let both = vec![sa(0x1001, KEY_A), sa(0x1003, KEY_B)];
        let c2 = FunctionConfig::Encrypt(config(r, l, sa(0x2002, KEY_B), both));
        assert!(Function::reconfigure(&mut e2, &c2).unwrap());
        // The old SA's window survived: a replay is still refused.
        assert_eq!(open(&mut e2, &early[0]).0, Verdict::Drop);
        // Step 2: the sender switches; packets in flight under the old SA
        // still arrive, new ones use the new SA.
        let c1 = FunctionConfig::Encrypt(config(l, r, sa(0x1003, KEY_B), vec![sa(0x2002, KEY_B)]));
        assert!(Function::reconfigure(&mut e1, &c1).unwrap());
        assert_eq!(e1.outbound_state(), (0x1003, 1));
        let late = seal(&mut e1, &payload);
        assert_eq!(&late[14 + 20..14 + 24], &[0, 0, 0x10, 0x03]);
        assert_eq!(open(&mut e2, &late).0, Verdict::Modified);
        for p in &early[1..] {
            assert_eq!(open(&mut e2, p).0, Verdict::Modified);
        }
        assert_eq!(e2.stats().decrypted, 6);
        // Step 3: the old inbound SA is retired.
        let c2 = FunctionConfig::Encrypt(config(r, l, sa(0x2002, KEY_B), vec![sa(0x1003, KEY_B)]));
        assert!(Function::reconfigure(&mut e2, &c2).unwrap());
        assert_eq!(open(&mut e2, &early[4]).0, Verdict::Drop);
        assert_eq!(e2.stats().unknown_spi, 1);
        // An unchanged outbound SA keeps counting; a bad config changes nothing.
        assert_eq!(e2.outbound_state(), (0x2002, 1));
        let mut bad = config(r, l, sa(0x2002, "abcd"), vec![]);
        assert!(e2.reconfigure(&bad).is_err());
        bad.outbound = sa(0x2002, KEY_B);
        assert!(!Function::reconfigure(&mut e2, &FunctionConfig::Passthrough).unwrap());
        assert_eq!(open(&mut e2, &seal(&mut e1, &payload)).0, Verdict::Modified);
    }

    #[test]
    fn sequence_exhaustion_too_big_and_syn_clamp() {
        let (mut e1, _) = pair();
        e1.outbound.next_seq = u32::MAX as u64;
        seal(&mut e1, &[1; 10]);
        let (mut buf, len) = frame_with(&[1; 10]);
        assert_eq!(
            e1.encapsulate(&mut Frame::new(
                &mut buf,
                len,
                crate::wire::LinkMedium::Ethernet
            )),
            Verdict::Drop
        );
        assert_eq!(e1.stats().seq_exhausted, 1);
        let (mut e1, _) = pair();
        let (mut buf, len) = frame_with(&[0; 1480]);
        assert_eq!(
            e1.encapsulate(&mut Frame::new(
                &mut buf,
                len,
                crate::wire::LinkMedium::Ethernet
            )),
            Verdict::Drop
        );
        assert_eq!(e1.stats().too_big, 1);
        // A TCP SYN with MSS 1460 is clamped to fit 1500 after ESP.
        let mut tcp = [0u8; 24];
        tcp[12] = 6 << 4;
        tcp[13] = 0x02;
        tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
        let (mut buf, len) = frame_with(&tcp);
        buf[14 + 9] = 6;
        let mut f = Frame::new(&mut buf, len, crate::wire::LinkMedium::Ethernet);
        assert_eq!(e1.encapsulate(&mut f), Verdict::Modified);
        let (_, mut e2) = pair();
        let (v, out) = open(&mut e2, f.bytes());
        assert_eq!(v, Verdict::Modified);
        let mss = u16::from_be_bytes([out[14 + 20 + 22], out[14 + 20 + 23]]) as usize;
        assert_eq!(mss, 1500 - OVERHEAD - 40);
    }

    #[test]
    fn hop_side_bypass_and_non_ip() {
        let (_, mut e2) = pair();
        // Plaintext for the protected network arriving from the hop.
        let (mut buf, len) = frame_with(&[0; 50]);
        assert_eq!(
            e2.decapsulate(&mut Frame::new(
                &mut buf,
                len,
                crate::wire::LinkMedium::Ethernet
            )),
            Verdict::Drop
        );
        assert_eq!(e2.stats().plaintext_dropped, 1);
        // Addressed to the device itself: passes.
        buf[14 + 16..14 + 20].copy_from_slice(&[10, 2, 0, 2]);
        assert_eq!(
            e2.decapsulate(&mut Frame::new(
                &mut buf,
                len,
                crate::wire::LinkMedium::Ethernet
            )),
            Verdict::Pass
        );
        // ARP passes both ways.
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            e2.decapsulate(&mut Frame::new(
                &mut arp,
                60,
                crate::wire::LinkMedium::Ethernet
            )),
            Verdict::Pass
        );
        assert_eq!(
            e2.encapsulate(&mut Frame::new(
                &mut arp,
                60,
                crate::wire::LinkMedium::Ethernet
            )),
            Verdict::Pass
        );
    }

    #[test]
    fn hostile_frames_never_panic() {
        let (mut e1, mut e2) = pair();
        let esp = seal(&mut e1, &[5; 77]);
        for cut in 0..esp.len() {
            let mut b = esp.clone();
            b.resize(1514, 0);
            let mut f = Frame::new(&mut b, cut, crate::wire::LinkMedium::Ethernet);
            assert_ne!(e2.decapsulate(&mut f), Verdict::Modified);
            let (mut b, _) = frame_with(&[5; 77]);
            let _ = e1.encapsulate(&mut Frame::new(
                &mut b,
                cut,
                crate::wire::LinkMedium::Ethernet,
            ));
        }
    }

    #[test]
    fn ipv6_inner_packet_round_trips() {
        let (mut e1, mut e2) = pair();
        let mut buf = vec![0u8; 1514];
        buf[12..14].copy_from_slice(&[0x86, 0xdd]);
        buf[14] = 0x60;
        buf[14 + 4..14 + 6].copy_from_slice(&13u16.to_be_bytes());
        buf[14 + 6] = 17;
        buf[14 + 24..14 + 40].copy_from_slice(&[0xfd, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let len = 14 + 40 + 13;
        let orig = buf[..len].to_vec();
        let mut f = Frame::new(&mut buf, len, crate::wire::LinkMedium::Ethernet);
        assert_eq!(e1.encapsulate(&mut f), Verdict::Modified);
        assert_eq!(&f.bytes()[12..14], &[0x08, 0x00]);
        let (v, out) = open(&mut e2, f.bytes());
        assert_eq!(v, Verdict::Modified);
        assert_eq!(out, orig);
    }

    #[test]
    fn replay_window_bitmap() {
        let mut w = ReplayWindow::new(1024);
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
        for s in [5, 1, 3, 1000, 70, 999] {
            assert_eq!(w.check(s), Ok(()), "{s}");
            w.accept(s);
            assert_eq!(w.check(s), Err(ReplayError::Duplicate));
        }
        w.accept(1100);
        assert_eq!(w.check(70), Err(ReplayError::TooOld));
        assert_eq!(w.check(77), Ok(()));
        assert_eq!(w.check(999), Err(ReplayError::Duplicate));
        assert_eq!(w.check(76), Err(ReplayError::TooOld));
        assert_eq!(w.check(1000), Err(ReplayError::Duplicate));
        w.accept(5000);
        assert_eq!(w.check(1100), Err(ReplayError::TooOld));
        assert_eq!(w.check(4000), Ok(()));
    }

    #[test]
    fn esp_header_fixture_and_config_errors() {
        let bytes = [0u8, 0, 0x10, 0x01, 0, 0, 0, 7, 0xaa];
        let p = EspPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            EspRepr::parse(&p).unwrap(),
            EspRepr {
                spi: 0x1001,
                seq: 7
            }
        );
        assert_eq!(p.payload(), &[0xaa]);
        assert_eq!(
            EspPacket::new_checked(&bytes[..7]).unwrap_err(),
            EspError::Truncated
        );
        let reserved = [0u8, 0, 0, 0xff, 0, 0, 0, 1];
        assert_eq!(
            EspRepr::parse(&EspPacket::new_unchecked(&reserved[..])).unwrap_err(),
            EspError::ReservedSpi
        );
        let l = [10, 2, 0, 1];
        for out in [sa(0x1001, "00"), sa(0x10, KEY_A), sa(0x1001, "zz")] {
            assert!(Encrypt::new(config(l, l, out, vec![])).is_err());
        }
        let mut c = config(l, l, sa(0x1001, KEY_A), vec![]);
        c.replay_window = 4096;
        assert!(Encrypt::new(c).is_err());
        let path = std::env::temp_dir().join(format!("shmnet-key-{}", std::process::id()));
        std::fs::write(&path, format!("0x{KEY_B}\n")).unwrap();
        let file_sa = SaConfig {
            spi: 0x1001,
            key: None,
            key_file: Some(path.clone()),
        };
        let e = Encrypt::new(config(l, l, file_sa, vec![])).unwrap();
        assert_eq!(e.outbound.key, hex(KEY_B));
        std::fs::remove_file(path).unwrap();
        let toml = format!(
            "kind = \"encrypt\"\nlocal_address = \"10.2.0.1\"\npeer_address = \"10.2.0.2\"\n\
             outbound = {{ spi = 0x1001, key = \"{KEY_A}\" }}\n\
             inbound = [{{ spi = 0x2002, key = \"{KEY_B}\" }}]\n"
        );
        let cfg: FunctionConfig = toml::from_str(&toml).unwrap();
        assert!(matches!(cfg, FunctionConfig::Encrypt(ref c) if c.replay_window == 64));
    }
}
