//! The one parsed view of a frame: what the NIC routes by and every
//! function matches on.
//!
//! [`FrameView::parse`] reads the link header (Ethernet or none), the IPv4
//! or IPv6 header with a bounded walk over IPv6 extension headers
//! ([`MAX_EXTENSION_HEADERS`]), the fragment fields and the first bytes of
//! the transport header (ports, TCP flags, ICMP type), all through
//! smoltcp's checked wire types or explicit length checks. It never
//! panics and never allocates. The result holds offsets into the frame, so
//! a function that rewrites a field knows where it is without parsing
//! again.
//!
//! Rules, the same for every user:
//! - IPv4: version 4, IHL ≥ 5, total length covering the header and not
//!   beyond the frame; IPv6: version 6, payload length not beyond the
//!   frame. Anything else is [`FrameView::Malformed`].
//! - Bytes after the IP packet's length (link padding) are not part of it:
//!   [`IpView::end`].
//! - A non-first fragment has no transport header ([`Transport::None`]); a
//!   first fragment has one if its bytes are there.
//! - A transport header that should be there but is cut short (TCP under
//!   20 bytes or a data offset past the packet, UDP under 8, ICMP under 8)
//!   or an extension-header chain that is cut short or longer than the
//!   bound is [`Transport::Truncated`]: the IP part is valid (routing works)
//!   but functions treat the packet as malformed.

use smoltcp::wire::{IpAddress, Ipv4Address, Ipv6Address};

use super::proto;
use super::tcp::TcpFlags;

/// At most this many IPv6 extension headers are walked; a longer chain is
/// [`Transport::Truncated`].
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// The link layer of a network: what precedes the IP header in a frame.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LinkMedium {
    /// Ethernet II frames; ARP/NDP work; frames switched by MAC.
    #[default]
    Ethernet,
    /// Bare IPv4/IPv6 packets; frames switched by destination IP.
    Ip,
}

impl LinkMedium {
    /// Bytes of link header before the IP header.
    pub const fn header_len(self) -> usize {
        match self {
            LinkMedium::Ethernet => 14,
            LinkMedium::Ip => 0,
        }
    }

    /// The code stored in a segment header.
    pub const fn code(self) -> u32 {
        match self {
            LinkMedium::Ethernet => 0,
            LinkMedium::Ip => 1,
        }
    }

    /// The medium a segment header's code names, if any.
    pub const fn from_code(c: u32) -> Option<Self> {
        match c {
            0 => Some(LinkMedium::Ethernet),
            1 => Some(LinkMedium::Ip),
            _ => None,
        }
    }

    /// The medium of smoltcp's device capabilities (anything but Ethernet
    /// carries bare IP).
    pub const fn from_phy(m: smoltcp::phy::Medium) -> Self {
        match m {
            smoltcp::phy::Medium::Ethernet => LinkMedium::Ethernet,
            _ => LinkMedium::Ip,
        }
    }

    /// smoltcp's name for it.
    pub const fn to_phy(self) -> smoltcp::phy::Medium {
        match self {
            LinkMedium::Ethernet => smoltcp::phy::Medium::Ethernet,
            LinkMedium::Ip => smoltcp::phy::Medium::Ip,
        }
    }

    /// `"ethernet"` or `"ip"`, as in a config file.
    pub const fn name(self) -> &'static str {
        match self {
            LinkMedium::Ethernet => "ethernet",
            LinkMedium::Ip => "ip",
        }
    }
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameView {
    /// An IPv4 or IPv6 packet.
    Ip(IpView),
    /// An ARP packet (Ethernet only); `target` is the target protocol
    /// address, if the packet is long enough to hold it.
    Arp {
        /// The target protocol address (bytes 24..28 of the ARP packet).
        target: Option<Ipv4Address>,
    },
    /// Another EtherType: not for the functions to judge.
    Other {
        /// The frame's EtherType.
        ethertype: u16,
    },
    /// Too short for its link header, or an IP header that fails the rules
    /// in the module doc.
    Malformed,
}

/// Fragmentation of an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not a fragment.
    Whole,
    /// The first fragment (offset 0, more to come): its transport header is
    /// there but its length fields describe more bytes than it holds.
    First,
    /// A later fragment: no transport header.
    Later,
}

/// Why [`FrameView::well_formed_ip`] has no packet for a function to
/// work on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoIp {
    /// Not IP (ARP, another EtherType): not for the function to judge.
    NotIp,
    /// A malformed IP header, or a transport header (or IPv6 extension
    /// header chain) cut short: functions count it as malformed.
    Malformed,
}

/// What an ICMP (in IPv4) or ICMPv6 (in IPv6) message is, by its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    /// Echo request: ICMP type 8, ICMPv6 type 128.
    EchoRequest,
    /// Echo reply: ICMP type 0, ICMPv6 type 129.
    EchoReply,
    /// Destination unreachable, time exceeded, parameter problem (and
    /// ICMPv6's packet too big): it quotes the packet it is about.
    Error,
    /// Anything else (timestamps, router and neighbour discovery, …).
    Other,
}

impl IcmpKind {
    /// The kind of ICMP (`v6`: ICMPv6) type `ty`.
    pub fn of(v6: bool, ty: u8) -> IcmpKind {
        match (v6, ty) {
            (false, 8) | (true, 128) => IcmpKind::EchoRequest,
            (false, 0) | (true, 129) => IcmpKind::EchoReply,
            (false, 3 | 11 | 12) | (true, 1..=4) => IcmpKind::Error,
            _ => IcmpKind::Other,
        }
    }

    /// An echo request or reply (whose identifier names the exchange).
    pub fn is_echo(self) -> bool {
        matches!(self, IcmpKind::EchoRequest | IcmpKind::EchoReply)
    }
}

/// The transport header, as far as functions look at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP with a whole header (20 bytes or more, within the packet).
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// The flag byte.
        flags: TcpFlags,
        /// Header length (data offset × 4).
        header_len: u8,
    },
    /// UDP with a whole 8-byte header (and, unfragmented, a length field that fits).
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// ICMP (in IPv4) or ICMPv6 (in IPv6). `ident` is the echo identifier
    /// for echo requests and replies, else 0.
    Icmp {
        /// ICMP / ICMPv6 type.
        ty: u8,
        /// ICMP / ICMPv6 code.
        code: u8,
        /// Echo identifier (echo request and reply only, else 0).
        ident: u16,
    },
    /// Another protocol, or a later fragment.
    None,
    /// The transport header (or IPv6 extension-header chain) is cut short
    /// or too long: treat the packet as malformed.
    Truncated,
}

/// An IP packet inside a frame: addresses, protocol, offsets, transport.
///
/// Addresses are `u128` for cheap matching and hashing (IPv4 in the low 32
/// bits); [`IpView::src_addr`] and [`IpView::dst_addr`] give smoltcp's
/// types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpView {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Source address (IPv4 in the low 32 bits).
    pub src: u128,
    /// Destination address (IPv4 in the low 32 bits).
    pub dst: u128,
    /// The upper-layer protocol: IPv4's protocol field, or IPv6's last
    /// next-header after the extension headers walked.
    pub proto: u8,
    /// IPv4 TOS / IPv6 traffic class: DSCP in the top 6 bits, ECN below.
    pub tos: u8,
    /// TTL / hop limit.
    pub hop_limit: u8,
    /// Whether it is a fragment, and which one (IPv6: from the fragment header).
    pub fragment: Fragment,
    /// Offset of the IP header in the frame (the link header's length).
    pub l3: usize,
    /// Offset of the transport header (after IPv4 options and IPv6
    /// extension headers); meaningful when `transport` is not `None` /
    /// `Truncated`.
    pub l4: usize,
    /// Offset just past the IP packet (its total length); bytes beyond are
    /// link padding.
    pub end: usize,
    /// The transport header's fields, or why there are none.
    pub transport: Transport,
}

impl FrameView {
    /// Parses a frame of `medium` (see the module doc for the rules).
    pub fn parse(medium: LinkMedium, frame: &[u8]) -> FrameView {
        match medium {
            LinkMedium::Ethernet => {
                let Some(t) = frame.get(12..14) else {
                    return FrameView::Malformed;
                };
                match u16::from_be_bytes([t[0], t[1]]) {
                    0x0800 => parse_ipv4(frame, 14),
                    0x86dd => parse_ipv6(frame, 14),
                    0x0806 => FrameView::Arp {
                        target: frame
                            .get(38..42)
                            .map(|a| Ipv4Address::new(a[0], a[1], a[2], a[3])),
                    },
                    ethertype => FrameView::Other { ethertype },
                }
            }
            LinkMedium::Ip => match frame.first().map(|b| b >> 4) {
                Some(4) => parse_ipv4(frame, 0),
                Some(6) => parse_ipv6(frame, 0),
                _ => FrameView::Malformed,
            },
        }
    }

    /// The IP view, if the frame carries a well-formed IP header.
    pub fn ip(&self) -> Option<&IpView> {
        match self {
            FrameView::Ip(v) => Some(v),
            _ => None,
        }
    }

    /// The IP view, if the frame carries a packet a function can work on:
    /// a well-formed IP header and, where one belongs, a whole transport
    /// header. Else whether it is not IP or malformed.
    pub fn well_formed_ip(&self) -> Result<&IpView, NoIp> {
        match self {
            FrameView::Ip(v) if !v.is_truncated() => Ok(v),
            FrameView::Ip(_) | FrameView::Malformed => Err(NoIp::Malformed),
            FrameView::Arp { .. } | FrameView::Other { .. } => Err(NoIp::NotIp),
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn parse_ipv4(frame: &[u8], l3: usize) -> FrameView {
    let Some(b) = frame.get(l3..) else {
        return FrameView::Malformed;
    };
    if b.len() < 20 || b[0] >> 4 != 4 {
        return FrameView::Malformed;
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    let total = usize::from(be16(b, 2));
    if ihl < 20 || total < ihl || total > b.len() {
        return FrameView::Malformed;
    }
    let word = |at: usize| u128::from(u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]));
    let frag = be16(b, 6);
    let fragment = match (frag & 0x1fff, frag & 0x2000 != 0) {
        (0, false) => Fragment::Whole,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    };
    let mut v = IpView {
        v6: false,
        src: word(12),
        dst: word(16),
        proto: b[9],
        tos: b[1],
        hop_limit: b[8],
        fragment,
        l3,
        l4: l3 + ihl,
        end: l3 + total,
        transport: Transport::None,
    };
    v.transport = transport(&v, &b[ihl..total]);
    FrameView::Ip(v)
}

fn parse_ipv6(frame: &[u8], l3: usize) -> FrameView {
    let Some(b) = frame.get(l3..) else {
        return FrameView::Malformed;
    };
    if b.len() < 40 || b[0] >> 4 != 6 {
        return FrameView::Malformed;
    }
    let end = 40 + usize::from(be16(b, 4));
    if end > b.len() {
        return FrameView::Malformed;
    }
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[at..at + 16]);
        u128::from_be_bytes(a)
    };
    let mut v = IpView {
        v6: true,
        src: addr(8),
        dst: addr(24),
        proto: b[6],
        tos: (b[0] << 4) | (b[1] >> 4),
        hop_limit: b[7],
        fragment: Fragment::Whole,
        l3,
        l4: l3 + 40,
        end: l3 + end,
        transport: Transport::Truncated,
    };
    let mut at = 40;
    for _ in 0..=MAX_EXTENSION_HEADERS {
        let rest = &b[at..end];
        let len = match v.proto {
            // Hop-by-hop, routing, destination options.
            0 | 43 | 60 => match rest.get(1) {
                Some(&l) => (usize::from(l) + 1) * 8,
                None => return FrameView::Ip(v),
            },
            // Authentication header.
            51 => match rest.get(1) {
                Some(&l) => (usize::from(l) + 2) * 4,
                None => return FrameView::Ip(v),
            },
            // Fragment.
            44 => {
                let Some(h) = rest.get(..8) else {
                    return FrameView::Ip(v);
                };
                if be16(h, 2) & 0xfff8 != 0 {
                    v.fragment = Fragment::Later;
                } else if h[3] & 1 != 0 {
                    v.fragment = Fragment::First;
                }
                8
            }
            _ => {
                v.l4 = l3 + at;
                v.transport = transport(&v, rest);
                return FrameView::Ip(v);
            }
        };
        if rest.len() < len {
            return FrameView::Ip(v);
        }
        v.proto = rest[0];
        at += len;
        if v.fragment == Fragment::Later {
            v.l4 = l3 + at;
            v.transport = Transport::None;
            return FrameView::Ip(v);
        }
    }
    FrameView::Ip(v)
}

/// The transport header of packet `v`, whose payload is `l4`.
fn transport(v: &IpView, l4: &[u8]) -> Transport {
    if v.fragment == Fragment::Later {
        return Transport::None;
    }
    match v.proto {
        proto::TCP => {
            if l4.len() < 20 {
                return Transport::Truncated;
            }
            let header_len = (l4[12] >> 4) * 4;
            if header_len < 20 || usize::from(header_len) > l4.len() {
                return Transport::Truncated;
            }
            Transport::Tcp {
                sport: be16(l4, 0),
                dport: be16(l4, 2),
                flags: TcpFlags::from_bits_retain(l4[13]),
                header_len,
            }
        }
        proto::UDP => {
            if l4.len() < 8 {
                return Transport::Truncated;
            }
            // A whole datagram's length field must fit what is there (a
            // first fragment's describes the reassembled datagram).
            let len = usize::from(be16(l4, 4));
            if v.fragment == Fragment::Whole && (len < 8 || len > l4.len()) {
                return Transport::Truncated;
            }
            Transport::Udp {
                sport: be16(l4, 0),
                dport: be16(l4, 2),
            }
        }
        proto::ICMP if !v.v6 => icmp(l4, false),
        proto::ICMPV6 if v.v6 => icmp(l4, true),
        _ => Transport::None,
    }
}

fn icmp(l4: &[u8], v6: bool) -> Transport {
    if l4.len() < 8 {
        return Transport::Truncated;
    }
    let echo = IcmpKind::of(v6, l4[0]).is_echo();
    Transport::Icmp {
        ty: l4[0],
        code: l4[1],
        ident: if echo { be16(l4, 4) } else { 0 },
    }
}

impl IpView {
    /// The source address as smoltcp's type.
    pub fn src_addr(&self) -> IpAddress {
        addr(self.v6, self.src)
    }
    /// The destination address as smoltcp's type.
    pub fn dst_addr(&self) -> IpAddress {
        addr(self.v6, self.dst)
    }
    /// DSCP (RFC 2474), the top 6 bits of TOS / traffic class.
    pub fn dscp(&self) -> u8 {
        self.tos >> 2
    }
    /// ECN (RFC 3168), the low 2 bits.
    pub fn ecn(&self) -> u8 {
        self.tos & 3
    }
    /// `(source, destination)` ports of TCP and UDP.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.transport {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport } => {
                Some((sport, dport))
            }
            _ => None,
        }
    }
    /// TCP flags, for TCP.
    pub fn tcp_flags(&self) -> Option<TcpFlags> {
        match self.transport {
            Transport::Tcp { flags, .. } => Some(flags),
            _ => None,
        }
    }
    /// Is the packet malformed above the IP header?
    pub fn is_truncated(&self) -> bool {
        self.transport == Transport::Truncated
    }
    /// Is it a fragment (first or later)?
    pub fn is_fragment(&self) -> bool {
        self.fragment != Fragment::Whole
    }
    /// The kind of an ICMP (ICMPv6) message, for ICMP packets that carry
    /// their header.
    pub fn icmp_kind(&self) -> Option<IcmpKind> {
        match self.transport {
            Transport::Icmp { ty, .. } => Some(IcmpKind::of(self.v6, ty)),
            _ => None,
        }
    }
    /// ICMPv6 the network itself needs: MLD, router and neighbour
    /// discovery, redirect, MLDv2 reports. Functions let it pass.
    pub fn is_control(&self) -> bool {
        matches!(self.transport, Transport::Icmp { ty: 130..=137 | 143, .. } if self.v6)
    }
    /// The target of an IPv6 neighbour solicitation (routed by its target,
    /// not its multicast destination).
    pub fn nd_target(&self, frame: &[u8]) -> Option<Ipv6Address> {
        match self.transport {
            Transport::Icmp { ty: 135, .. } if self.v6 => {
                let t: [u8; 16] = frame.get(self.l4 + 8..self.l4 + 24)?.try_into().ok()?;
                Some(Ipv6Address::from_octets(t))
            }
            _ => None,
        }
    }
    /// The directional flow key: addresses, ports (or the echo ident in
    /// both) and protocol.
    pub fn flow_key(&self) -> FlowKey {
        let (sport, dport) = match self.transport {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport } => (sport, dport),
            Transport::Icmp { ident, .. } => (ident, ident),
            _ => (0, 0),
        };
        FlowKey {
            src: self.src,
            dst: self.dst,
            sport,
            dport,
            proto: self.proto,
            v6: self.v6,
        }
    }
    /// The IP packet's bytes (header to `end`).
    pub fn packet<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        frame.get(self.l3..self.end).unwrap_or_default()
    }
    /// The transport header and payload.
    pub fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        frame.get(self.l4..self.end).unwrap_or_default()
    }
    /// Offset of the transport checksum in the frame, for TCP, UDP and
    /// ICMP(v6) packets that carry their header.
    pub fn l4_checksum_at(&self) -> Option<usize> {
        match self.transport {
            Transport::Tcp { .. } => Some(self.l4 + 16),
            Transport::Udp { .. } => Some(self.l4 + 6),
            Transport::Icmp { .. } => Some(self.l4 + 2),
            _ => None,
        }
    }
    /// Offsets of the source and destination addresses in the frame, and
    /// their length.
    pub fn addr_at(&self) -> (usize, usize, usize) {
        if self.v6 {
            (self.l3 + 8, self.l3 + 24, 16)
        } else {
            (self.l3 + 12, self.l3 + 16, 4)
        }
    }
}

fn addr(v6: bool, a: u128) -> IpAddress {
    if v6 {
        IpAddress::Ipv6(Ipv6Address::from_bits(a))
    } else {
        IpAddress::Ipv4(Ipv4Address::from_bits(a as u32))
    }
}

/// A packet's 5-tuple, directional; IPv4 addresses in the low 32 bits.
/// For ICMP echo the identifier stands in for both ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Source address (IPv4 in the low 32 bits).
    pub src: u128,
    /// Destination address (IPv4 in the low 32 bits).
    pub dst: u128,
    /// Source port, the ICMP echo identifier, or 0 for other protocols.
    pub sport: u16,
    /// Destination port, the ICMP echo identifier, or 0 for other protocols.
    pub dport: u16,
    /// IP protocol number (see [`proto`]).
    pub proto: u8,
    /// IPv6 (else IPv4).
    pub v6: bool,
}

impl FlowKey {
    /// The same flow seen from the other end.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }

    /// The key both directions share (lower endpoint first) and whether
    /// this packet's source is that lower endpoint.
    pub fn canonical(&self) -> (FlowKey, bool) {
        let src_lo = (self.src, self.sport) <= (self.dst, self.dport);
        (if src_lo { *self } else { self.reversed() }, src_lo)
    }

    /// The key of the packet an ICMP error quotes: `quoted` is the ICMP
    /// error's body after its 8-byte header (the offending packet's IP
    /// header and at least 8 bytes of its payload). `None` if it is too
    /// short or not of version `v6`.
    pub fn from_quoted(v6: bool, quoted: &[u8]) -> Option<FlowKey> {
        let b = quoted;
        let (src, dst, proto, l4) = if v6 {
            if b.len() < 40 || b[0] >> 4 != 6 {
                return None;
            }
            let a = |at: usize| u128::from_be_bytes(b[at..at + 16].try_into().unwrap_or([0; 16]));
            (a(8), a(24), b[6], &b[40..])
        } else {
            let hl = usize::from(*b.first()? & 0x0f) * 4;
            if hl < 20 || b.len() < hl || b[0] >> 4 != 4 {
                return None;
            }
            let a = |at: usize| {
                u128::from(u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
            };
            (a(12), a(16), b[9], &b[hl..])
        };
        let port = |at: usize| l4.get(at..at + 2).map_or(0, |p| be16(p, 0));
        let (sport, dport) = match proto {
            proto::TCP | proto::UDP => (port(0), port(2)),
            proto::ICMP | proto::ICMPV6 => (port(4), port(4)),
            _ => (0, 0),
        };
        Some(FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
            v6,
        })
    }

    /// The key's bytes folded into two words, for hashers that take
    /// words (IPv4 keys are one word of addresses plus one of the rest).
    pub fn words(&self) -> [u64; 5] {
        let tail = u64::from(self.sport) << 48
            | u64::from(self.dport) << 32
            | u64::from(self.proto) << 8
            | u64::from(self.v6);
        if self.v6 {
            [
                self.src as u64,
                (self.src >> 64) as u64,
                self.dst as u64,
                (self.dst >> 64) as u64,
                tail,
            ]
        } else {
            [
                (self.src as u64) << 32 | (self.dst as u64 & 0xffff_ffff),
                tail,
                0,
                0,
                0,
            ]
        }
    }
}

#[cfg(test)]
mod tests;
