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
//! The hop's MTU is the hop network's, learned at [`Function::attach`]
//! (1500 before, or set with [`Encrypt::with_link`]): ESP packets larger
//! than it are not sent (`too_big`), and the MSS of TCP SYNs is clamped so
//! that segments fit once encapsulated. Frames are read through the
//! device's parsed view ([`Frame::ip`]); the link medium is the frame's.
//!
//! Keys are 16 or 32 bytes of AES key followed by a 4-byte salt (RFC 4106
//! §8.1), given as hex in the config or in a key file ([`config`]).
//! Changing the config rekeys in place ([`Encrypt::reconfigure`]): inbound
//! SAs that remain keep their replay windows, so packets in flight under
//! the old SA are still accepted while new traffic uses the new one.
//!
//! Plaintext IP packets arriving from the hop are dropped unless addressed
//! to `local_address` or multicast/link-local: nothing bypasses the tunnel.
//!
//! ```
//! use shmnet::functions::encrypt::{Encrypt, EncryptConfig};
//! use shmnet::functions::{Frame, Function, FunctionConfig, Role, Verdict};
//! use shmnet::wire::LinkMedium;
//! use smoltcp::time::Instant;
//!
//! let text = r#"
//!     kind = "encrypt"
//!     local_address = "10.2.0.1"
//!     peer_address = "10.2.0.2"
//!     outbound = { spi = 0x1001, key = "feffe9928665731c6d6a8f9467308308cafebabe" }
//! "#;
//! let FunctionConfig::Encrypt(cfg) = toml::from_str(text).unwrap() else { unreachable!() };
//! let mut e = Encrypt::new(cfg).unwrap();
//! // A bare IPv4 packet 10.0.0.1 -> 10.3.0.2 (protocol 253, no payload).
//! let mut buf = [0u8; 256];
//! buf[..20].copy_from_slice(&[0x45, 0, 0, 20, 0, 0, 0, 0, 64, 253, 0, 0, 10, 0, 0, 1, 10, 3, 0, 2]);
//! let mut f = Frame::new(&mut buf, 20, LinkMedium::Ip);
//! assert_eq!(e.on_ingress(Instant::ZERO, Role::Local, &mut f), Verdict::Modified);
//! assert_eq!(f.bytes()[9], 50); // now ESP from 10.2.0.1 to 10.2.0.2
//! ```

pub mod config;
mod sa;
#[cfg(test)]
mod tests;

use smoltcp::time::Instant;
use smoltcp::wire::{EthernetFrame, EthernetProtocol};

use super::{Frame, Function, FunctionError, FunctionKind, Role, Verdict};
use crate::functions::common::{counters, reconfigure_in_place};
use crate::stack::LinkInfo;
use crate::wire::tcp::clamp_mss;
use crate::wire::{FrameView, IpView, LinkMedium, checksum, proto};

pub use config::{EncryptConfig, SaConfig};
use sa::{InboundSa, OutboundSa};
pub use sa::{ReplayError, ReplayWindow};

pub use crate::wire::esp::{EspError, EspPacket, EspRepr};

/// IP protocol number of ESP.
pub const IPPROTO_ESP: u8 = proto::ESP;
/// Bytes of the explicit IV (RFC 4106 §3.1).
pub const IV_LEN: usize = 8;
/// Bytes of the ICV (we always use the 16-byte one).
pub const ICV_LEN: usize = 16;
/// Bytes of the ESP header (SPI, sequence number).
const ESP_LEN: usize = 8;
/// Outer IPv4 header we emit.
const OUTER_LEN: usize = 20;
/// Worst-case bytes ESP adds to an inner packet: outer header, ESP header,
/// IV, up to 3 bytes of padding, pad length, next header, ICV.
pub const OVERHEAD: usize = OUTER_LEN + ESP_LEN + IV_LEN + 3 + 2 + ICV_LEN;
/// The smallest ESP payload: header, IV, 4 bytes of trailer block, ICV.
const MIN_ESP: usize = ESP_LEN + IV_LEN + 4 + ICV_LEN;
/// ESP's next-header values for the inner packet (IP-in-IP, RFC 2003 / 2473).
const NEXT_IPV4: u8 = 4;
const NEXT_IPV6: u8 = 41;

counters! {
    /// Counters of the encryption function.
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    pub struct EncryptStats {
        /// Packets encapsulated and sent on to the hop.
        pub encrypted: u64,
        /// ESP packets that verified and were decapsulated.
        pub decrypted: u64,
        /// Already seen, or older than the window (dropped).
        pub replayed: u64,
        /// ICV did not verify (dropped).
        pub auth_failed: u64,
        /// ESP for us with a bad header or an SPI of no inbound SA (dropped).
        pub unknown_spi: u64,
        /// Would exceed the hop's MTU or the frame buffer (dropped).
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
}

/// The ESP encapsulator/decapsulator.
pub struct Encrypt {
    local: [u8; 4],
    peer: [u8; 4],
    /// `local` as the view holds addresses.
    local_addr: u128,
    hop: Role,
    link: LinkInfo,
    /// The IP MTU of the hop network (`link.mtu(hop)`).
    hop_mtu: usize,
    outbound: OutboundSa,
    inbound: Vec<InboundSa>,
    stats: EncryptStats,
}

impl Encrypt {
    /// A tunnel end; its hop MTU is 1500 until [`Function::attach`] (or
    /// [`Encrypt::with_link`]) tells it the hop network's.
    pub fn new(cfg: EncryptConfig) -> Result<Encrypt, FunctionError> {
        let c = cfg.compile()?;
        let link = LinkInfo::default();
        Ok(Encrypt {
            local: c.local.octets(),
            peer: c.peer.octets(),
            local_addr: u128::from(u32::from(c.local)),
            hop: c.hop,
            link,
            hop_mtu: link.mtu(c.hop),
            outbound: c.outbound,
            inbound: c.inbound,
            stats: EncryptStats::default(),
        })
    }

    /// The same tunnel end on links `link` (what `attach` learns from the
    /// device), for tests and embedders that drive it directly.
    pub fn with_link(mut self, link: LinkInfo) -> Encrypt {
        self.set_link(link);
        self
    }

    fn set_link(&mut self, link: LinkInfo) {
        self.link = link;
        self.hop_mtu = link.mtu(self.hop);
    }

    /// The counters so far.
    pub fn stats(&self) -> &EncryptStats {
        &self.stats
    }

    /// Applies a changed config in place (a rekey). Inbound SAs whose SPI
    /// and key remain keep their replay windows; the outbound SA keeps its
    /// sequence counter if its SPI and key remain, otherwise starts anew
    /// (with a fresh IV epoch, so no nonce repeats under a reused key).
    /// On error nothing changes.
    pub fn reconfigure(&mut self, cfg: &EncryptConfig) -> Result<(), FunctionError> {
        let mut next = Encrypt::new(cfg.clone())?.with_link(self.link);
        if next.outbound.same_as(&self.outbound) {
            std::mem::swap(&mut next.outbound, &mut self.outbound);
        }
        for sa in &mut next.inbound {
            if let Some(old) = self.inbound.iter_mut().find(|o| o.same_as(sa)) {
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

    /// Encapsulates the frame's IP packet in place.
    pub fn encapsulate(&mut self, frame: &mut Frame<'_>) -> Verdict {
        let Some(&v) = frame.ip() else {
            self.stats.not_ip += 1;
            return Verdict::Pass;
        };
        if !self.tunnelled(&v) {
            return Verdict::Pass;
        }
        if self.clamp_syn(&v, frame.bytes_mut()) {
            self.stats.mss_clamped += 1;
        }
        let (ip, inner_len) = (v.l3, v.end - v.l3);
        let pad = (4 - (inner_len + 2) % 4) % 4;
        let plain_len = inner_len + pad + 2;
        let outer_len = OUTER_LEN + ESP_LEN + IV_LEN + plain_len + ICV_LEN;
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
        let nonce = sa.key.nonce(&iv);

        // Inner packet moves behind the outer, ESP headers and IV; the
        // trailer follows it.
        let buf = &mut frame.buffer_mut()[ip..ip + outer_len];
        let esp = OUTER_LEN;
        let body = esp + ESP_LEN + IV_LEN;
        buf.copy_within(..inner_len, body);
        let trailer = body + inner_len;
        for (i, b) in buf[trailer..trailer + pad].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        buf[trailer + pad] = pad as u8;
        buf[trailer + pad + 1] = if v.v6 { NEXT_IPV6 } else { NEXT_IPV4 };
        EspRepr { spi: sa.spi, seq }
            .emit(&mut EspPacket::new_unchecked(&mut buf[esp..esp + ESP_LEN]));
        buf[esp + ESP_LEN..body].copy_from_slice(&iv);
        let (head, rest) = buf.split_at_mut(body);
        let Some(tag) =
            sa.key
                .cipher
                .seal(&nonce, &head[esp..esp + ESP_LEN], &mut rest[..plain_len])
        else {
            self.stats.too_big += 1;
            return Verdict::Drop;
        };
        rest[plain_len..].copy_from_slice(&tag);
        sa.next_seq += 1;
        emit_outer_ipv4(&mut buf[..OUTER_LEN], self.local, self.peer, outer_len);
        set_ethertype(frame, EthernetProtocol::Ipv4);
        frame.set_len(ip + outer_len);
        self.stats.encrypted += 1;
        Verdict::Modified
    }

    /// Whether a packet from the client side goes into the tunnel: not
    /// multicast, broadcast or link-local, and not for the hop address.
    fn tunnelled(&self, v: &IpView) -> bool {
        if v.v6 {
            let [a, b, ..] = v.dst.to_be_bytes();
            !(a == 0xff || a == 0xfe && b & 0xc0 == 0x80)
        } else {
            let [a, b, _, _] = (v.dst as u32).to_be_bytes();
            !(v.dst == self.local_addr || a >= 224 || a == 169 && b == 254)
        }
    }

    /// Lowers the MSS of a TCP SYN in `frame` so its segments fit the hop
    /// once encapsulated. Returns whether it changed the packet.
    fn clamp_syn(&self, v: &IpView, frame: &mut [u8]) -> bool {
        if v.tcp_flags().is_none() {
            return false;
        }
        let ip_header = v.l4 - v.l3;
        let max_mss = self.hop_mtu.saturating_sub(OVERHEAD + ip_header + 20);
        let max_mss = max_mss.min(usize::from(u16::MAX)) as u16;
        let tcp = frame.get_mut(v.l4..v.end).unwrap_or_default();
        clamp_mss(tcp, max_mss, self.link.checksums)
    }

    /// Decapsulates an ESP packet for `local_address` in place.
    pub fn decapsulate(&mut self, frame: &mut Frame<'_>) -> Verdict {
        let Some(&v) = frame.ip() else {
            self.stats.not_ip += 1;
            return Verdict::Pass;
        };
        if v.v6 || v.proto != IPPROTO_ESP || v.dst != self.local_addr {
            if self.tunnelled(&v) {
                // Plaintext that would be forwarded around the tunnel.
                self.stats.plaintext_dropped += 1;
                return Verdict::Drop;
            }
            return Verdict::Pass;
        }
        let (ip, esp, esp_len) = (v.l3, v.l4, v.end - v.l4);
        if v.is_fragment() || esp_len < MIN_ESP {
            self.stats.not_ip += 1;
            return Verdict::Drop;
        }
        let Ok(repr) = EspRepr::parse(&EspPacket::new_unchecked(&frame.bytes()[esp..v.end])) else {
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
        let buf = &mut frame.bytes_mut()[esp..v.end];
        let (head, rest) = buf.split_at_mut(ESP_LEN + IV_LEN);
        let (aad, iv) = head.split_at(ESP_LEN);
        let nonce = sa.key.nonce(iv.try_into().unwrap_or(&[0; IV_LEN]));
        let (ct, tag) = rest.split_at_mut(rest.len() - ICV_LEN);
        let tag: [u8; ICV_LEN] = (&*tag).try_into().unwrap_or_default();
        if !sa.key.cipher.open(&nonce, aad, ct, &tag) {
            self.stats.auth_failed += 1;
            return Verdict::Drop;
        }
        sa.window.accept(u64::from(repr.seq));
        let Some((inner_len, v6)) = check_trailer(ct) else {
            self.stats.bad_padding += 1;
            return Verdict::Drop;
        };
        let body = esp + ESP_LEN + IV_LEN;
        frame.buffer_mut().copy_within(body..body + inner_len, ip);
        set_ethertype(
            frame,
            if v6 {
                EthernetProtocol::Ipv6
            } else {
                EthernetProtocol::Ipv4
            },
        );
        frame.set_len(ip + inner_len);
        self.stats.decrypted += 1;
        Verdict::Modified
    }
}

/// Checks a decrypted ESP payload's trailer and the inner packet it
/// carries (a whole IP packet, of the family the next header names, as
/// long as the trailer says); returns the packet's length and whether it
/// is IPv6.
fn check_trailer(plain: &[u8]) -> Option<(usize, bool)> {
    let (&next, rest) = plain.split_last()?;
    let (&pad, rest) = rest.split_last()?;
    let inner_len = rest.len().checked_sub(usize::from(pad))?;
    let (inner, padding) = rest.split_at(inner_len);
    if padding.iter().enumerate().any(|(i, &b)| b != i as u8 + 1) {
        return None;
    }
    let v6 = match next {
        NEXT_IPV4 => false,
        NEXT_IPV6 => true,
        _ => return None,
    };
    match FrameView::parse(LinkMedium::Ip, inner) {
        FrameView::Ip(v) if v.v6 == v6 && v.end == inner_len => Some((inner_len, v6)),
        _ => None,
    }
}

/// Sets the EtherType of an Ethernet frame (nothing on the IP medium).
fn set_ethertype(frame: &mut Frame<'_>, ethertype: EthernetProtocol) {
    if frame.medium() == LinkMedium::Ethernet
        && let Some(h) = frame
            .bytes_mut()
            .get_mut(..LinkMedium::Ethernet.header_len())
    {
        EthernetFrame::new_unchecked(h).set_ethertype(ethertype);
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
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    checksum::fill_ipv4_header(&mut h[..20]);
}

impl Function for Encrypt {
    fn kind(&self) -> FunctionKind {
        FunctionKind::packet("encrypt")
    }

    fn on_ingress(&mut self, _now: Instant, from: Role, frame: &mut Frame<'_>) -> Verdict {
        if from == self.hop {
            self.decapsulate(frame)
        } else {
            self.encapsulate(frame)
        }
    }

    fn attach(&mut self, cx: &mut super::SocketContext<'_>) {
        self.set_link(cx.link);
    }

    fn reconfigure(&mut self, cfg: &dyn crate::stack::FunctionSpec) -> Result<bool, FunctionError> {
        reconfigure_in_place(cfg, |c| Encrypt::reconfigure(self, c))
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        self.stats.visit(visit);
    }
}
