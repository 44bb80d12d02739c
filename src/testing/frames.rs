//! Frames built with smoltcp's Repr types: what unit tests, integration
//! tests, fuzz targets and the bench feed to functions and devices.
//!
//! The whole-frame builders ([`tcp`], [`udp`], [`wrap`], [`ipv4_frame`],
//! [`arp`]) return Ethernet frames with valid checksums; [`garbled`]
//! turns frames into deterministic garbage for robustness tests. [`IpHeader`] writes an IP
//! header (and, on Ethernet, the frame header) in front of a payload into
//! the caller's buffer, with the fields a fuzz target wants to vary: TOS,
//! hop limit, fragment bits.
//!
//! ```
//! use shmnet::testing::frames::{self, IpHeader};
//! use shmnet::wire::LinkMedium;
//! use smoltcp::wire::{IpAddress, IpProtocol, TcpControl};
//!
//! let (client, server) = (IpAddress::v4(10, 0, 0, 1), IpAddress::v4(10, 1, 0, 2));
//! let syn = frames::tcp((client, 49152), (server, 80), TcpControl::Syn, false, b"");
//! assert_eq!(syn.len(), 14 + 20 + 20);
//!
//! let mut buf = [0u8; 128];
//! let len = IpHeader::new(client, server, IpProtocol::Udp).emit_frame(LinkMedium::Ip, b"hi", &mut buf);
//! assert_eq!(len, 20 + 2);
//! ```

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, IpRepr,
    Ipv4Address, Ipv4Packet, Ipv6Packet, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket,
    UdpRepr,
};

use crate::wire::LinkMedium;

/// The source MAC of every frame built here.
pub const SRC_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
/// The destination MAC of every frame built here.
pub const DST_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);

/// Length of the Ethernet header the builders write.
pub const ETHERNET_LEN: usize = 14;

/// Writes an Ethernet header ([`SRC_MAC`] → [`DST_MAC`]) for an IPv4 or
/// (`v6`) IPv6 packet at the start of `buf`.
fn ethernet(buf: &mut [u8], v6: bool) {
    EthernetRepr {
        src_addr: SRC_MAC,
        dst_addr: DST_MAC,
        ethertype: if v6 {
            EthernetProtocol::Ipv6
        } else {
            EthernetProtocol::Ipv4
        },
    }
    .emit(&mut EthernetFrame::new_unchecked(buf));
}

/// An IP header to write in front of a payload: IPv4 or IPv6 by the
/// addresses' family. The fields not named here are zero (IPv4: no
/// options, identification 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    /// Source address; its family picks IPv4 or IPv6.
    pub src: IpAddress,
    /// Destination address, of the same family.
    pub dst: IpAddress,
    /// IPv4 protocol / IPv6 next header.
    pub protocol: IpProtocol,
    /// TTL or hop limit (64 by default).
    pub hop_limit: u8,
    /// The IPv4 TOS byte or the IPv6 traffic class: DSCP << 2 | ECN.
    pub tos: u8,
    /// IPv4 only: the DF flag.
    pub dont_frag: bool,
    /// IPv4 only: the MF flag.
    pub more_frags: bool,
    /// IPv4 only: the fragment offset in bytes (a multiple of 8).
    pub frag_offset: u16,
}

impl IpHeader {
    /// A header `src` → `dst` for `protocol`, hop limit 64, TOS 0, not a
    /// fragment, DF clear.
    pub fn new(src: IpAddress, dst: IpAddress, protocol: IpProtocol) -> IpHeader {
        IpHeader {
            src,
            dst,
            protocol,
            hop_limit: 64,
            tos: 0,
            dont_frag: false,
            more_frags: false,
            frag_offset: 0,
        }
    }

    /// Sets DF, MF and the fragment offset from `field`, the IPv4 flags
    /// and fragment offset as on the wire (bit 14 DF, bit 13 MF, the low
    /// 13 bits the offset in 8-byte units): what a fuzz target derives
    /// from its input.
    pub fn fragment_field(mut self, field: u16) -> IpHeader {
        self.dont_frag = field & 0x4000 != 0;
        self.more_frags = field & 0x2000 != 0;
        self.frag_offset = (field & 0x1fff) << 3;
        self
    }

    /// 20 for IPv4, 40 for IPv6.
    pub fn header_len(&self) -> usize {
        match self.src {
            IpAddress::Ipv4(_) => 20,
            IpAddress::Ipv6(_) => 40,
        }
    }

    /// Writes the header (IPv4: with a valid checksum) and `payload` at
    /// the start of `out`; returns the packet's length. The length field
    /// is what a sender would write: for a payload longer than it can
    /// hold, it wraps (which is hostile input worth fuzzing).
    ///
    /// # Panics
    /// If `out` is shorter than the packet, or the addresses' families
    /// differ (smoltcp's `IpRepr::new`).
    pub fn emit(&self, payload: &[u8], out: &mut [u8]) -> usize {
        let total = self.header_len() + payload.len();
        // Lengths are set below, as this header's fields are: smoltcp's
        // emit would refuse one that overflows.
        IpRepr::new(self.src, self.dst, self.protocol, 0, self.hop_limit)
            .emit(&mut out[..total], &ChecksumCapabilities::ignored());
        if let IpAddress::Ipv4(_) = self.src {
            let mut p = Ipv4Packet::new_unchecked(&mut out[..total]);
            p.set_total_len(total as u16);
            p.set_dscp(self.tos >> 2);
            p.set_ecn(self.tos & 3);
            p.set_dont_frag(self.dont_frag);
            p.set_more_frags(self.more_frags);
            p.set_frag_offset(self.frag_offset);
            p.fill_checksum();
        } else {
            let mut p = Ipv6Packet::new_unchecked(&mut out[..total]);
            p.set_payload_len(payload.len() as u16);
            p.set_traffic_class(self.tos);
        }
        out[self.header_len()..total].copy_from_slice(payload);
        total
    }

    /// [`emit`](Self::emit) as a frame of `medium`: on Ethernet behind a
    /// 14-byte header ([`SRC_MAC`] → [`DST_MAC`]). Returns the frame's
    /// length.
    pub fn emit_frame(&self, medium: LinkMedium, payload: &[u8], out: &mut [u8]) -> usize {
        match medium {
            LinkMedium::Ethernet => {
                ethernet(out, matches!(self.src, IpAddress::Ipv6(_)));
                ETHERNET_LEN + self.emit(payload, &mut out[ETHERNET_LEN..])
            }
            LinkMedium::Ip => self.emit(payload, out),
        }
    }
}

/// Ethernet + IP (built by smoltcp, valid checksums) around a transport
/// header and payload `l4`.
pub fn wrap(src: IpAddress, dst: IpAddress, proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
    let header = IpHeader {
        dont_frag: true,
        ..IpHeader::new(src, dst, proto)
    };
    let mut buf = vec![0u8; ETHERNET_LEN + header.header_len() + l4.len()];
    header.emit_frame(LinkMedium::Ethernet, l4, &mut buf);
    buf
}

/// A TCP segment (seq 1000, ack 2000 if `ack`, window 1024) in Ethernet +
/// IP.
pub fn tcp(
    src: (IpAddress, u16),
    dst: (IpAddress, u16),
    control: TcpControl,
    ack: bool,
    payload: &[u8],
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: src.1,
        dst_port: dst.1,
        control,
        seq_number: TcpSeqNumber(1000),
        ack_number: ack.then_some(TcpSeqNumber(2000)),
        window_len: 1024,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let mut l4 = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut l4[..]),
        &src.0,
        &dst.0,
        &ChecksumCapabilities::default(),
    );
    wrap(src.0, dst.0, IpProtocol::Tcp, &l4)
}

/// A UDP header and payload (no IP around it).
pub fn udp_l4(src: (IpAddress, u16), dst: (IpAddress, u16), payload: &[u8]) -> Vec<u8> {
    let mut l4 = vec![0u8; 8 + payload.len()];
    UdpRepr {
        src_port: src.1,
        dst_port: dst.1,
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut l4[..]),
        &src.0,
        &dst.0,
        payload.len(),
        |p| p.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    l4
}

/// A UDP datagram in Ethernet + IP.
pub fn udp(src: (IpAddress, u16), dst: (IpAddress, u16), payload: &[u8]) -> Vec<u8> {
    wrap(src.0, dst.0, IpProtocol::Udp, &udp_l4(src, dst, payload))
}

/// An endpoint for the builders: `ep(Ipv4Address::new(10, 0, 0, 1), 80)`.
pub fn ep(addr: impl Into<IpAddress>, port: u16) -> (IpAddress, u16) {
    (addr.into(), port)
}

/// An Ethernet ARP request ([`SRC_MAC`], 10.0.0.1 asking for 10.0.0.2):
/// a frame every function lets pass.
pub fn arp() -> Vec<u8> {
    use crate::adapters::beyond::{ARP_FRAME_LEN, arp_request};
    let mut buf = vec![0u8; ARP_FRAME_LEN];
    let (me, them) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
    arp_request(&mut buf, SRC_MAC, me, them);
    buf
}

/// Deterministic garbage for robustness tests: a fixed xorshift64
/// sequence, so a failure replays.
///
/// ```
/// use shmnet::testing::frames::Garbler;
/// let (mut a, mut b) = (vec![0u8; 64], vec![0u8; 64]);
/// Garbler::default().garble(&mut a, 3);
/// Garbler::default().garble(&mut b, 3);
/// assert_eq!(a, b);
/// assert_ne!(a, [0u8; 64]);
/// ```
#[derive(Debug, Clone)]
pub struct Garbler {
    state: u64,
}

impl Default for Garbler {
    fn default() -> Self {
        Garbler {
            state: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

impl Garbler {
    /// Overwrites `n` bytes of `frame` (at places and with values the
    /// sequence picks); returns the sequence's last number, for a caller
    /// that wants more randomness (where to cut the frame, say).
    pub fn garble(&mut self, frame: &mut [u8], n: u64) -> u64 {
        for _ in 0..n {
            let x = &mut self.state;
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            if !frame.is_empty() {
                let at = (*x % frame.len() as u64) as usize;
                frame[at] = (*x >> 32) as u8;
            }
        }
        self.state
    }
}

/// `rounds` garbled frames: the `i`-th is `frames[i % frames.len()]` with
/// `1 + i % 4` bytes overwritten by one [`Garbler`]. Yields `(i, frame)`.
pub fn garbled(frames: &[Vec<u8>], rounds: u64) -> impl Iterator<Item = (u64, Vec<u8>)> + '_ {
    let mut g = Garbler::default();
    (0..rounds).map(move |i| {
        let mut f = frames[(i % frames.len() as u64) as usize].clone();
        g.garble(&mut f, 1 + i % 4);
        (i, f)
    })
}

/// An Ethernet + IPv4 frame `src` → `dst` carrying `payload` as protocol
/// 17 (UDP-ish: the payload is not a valid UDP header unless the caller
/// made it one), with a valid header checksum, at the start of a
/// `buf_len`-byte buffer. Returns the buffer and the frame's length.
pub fn ipv4_frame(src: [u8; 4], dst: [u8; 4], payload: &[u8], buf_len: usize) -> (Vec<u8>, usize) {
    let mut buf = vec![0u8; buf_len.max(34 + payload.len())];
    let len = IpHeader::new(
        IpAddress::Ipv4(src.into()),
        IpAddress::Ipv4(dst.into()),
        IpProtocol::Udp,
    )
    .emit_frame(LinkMedium::Ethernet, payload, &mut buf);
    (buf, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{Ipv4Address, Ipv6Address};

    #[test]
    fn ip_header_writes_what_smoltcp_parses_back() {
        let (a, b) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 1, 0, 2));
        let h = IpHeader {
            tos: 46 << 2 | 1,
            hop_limit: 7,
            ..IpHeader::new(a.into(), b.into(), IpProtocol::Tcp)
        }
        .fragment_field(0x2003);
        let mut buf = [0u8; 64];
        let n = h.emit_frame(LinkMedium::Ethernet, &[1, 2, 3], &mut buf);
        assert_eq!(n, 14 + 20 + 3);
        assert_eq!(buf[12..14], [0x08, 0x00]);
        let p = Ipv4Packet::new_checked(&buf[14..n]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!((p.src_addr(), p.dst_addr(), p.hop_limit()), (a, b, 7));
        assert_eq!((p.dscp(), p.ecn(), p.total_len()), (46, 1, 23));
        assert!(p.more_frags() && !p.dont_frag());
        assert_eq!(p.frag_offset(), 24);
        assert_eq!(p.payload(), &[1, 2, 3]);

        let (a6, b6) = (
            Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
            Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
        );
        let h = IpHeader {
            tos: 0xb8,
            ..IpHeader::new(a6.into(), b6.into(), IpProtocol::Udp)
        };
        let n = h.emit_frame(LinkMedium::Ip, &[9; 5], &mut buf);
        let p = Ipv6Packet::new_checked(&buf[..n]).unwrap();
        assert_eq!((p.src_addr(), p.dst_addr()), (a6, b6));
        assert_eq!((p.traffic_class(), p.payload_len()), (0xb8, 5));
        assert_eq!(p.next_header(), IpProtocol::Udp);
    }

    #[test]
    fn whole_frames_have_valid_checksums() {
        let (c, s) = (IpAddress::v4(10, 0, 0, 1), IpAddress::v4(10, 1, 0, 2));
        let f = tcp((c, 1), (s, 2), TcpControl::Psh, true, b"data");
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum() && ip.dont_frag());
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum(&c, &s));
        assert!(t.psh() && t.ack() && !t.syn());
        let (buf, len) = ipv4_frame([10, 0, 0, 1], [10, 3, 0, 2], b"xyz", 1514);
        assert_eq!((buf.len(), len), (1514, 14 + 20 + 3));
        let ip = Ipv4Packet::new_checked(&buf[14..len]).unwrap();
        assert!(ip.verify_checksum() && !ip.dont_frag());
        assert_eq!(ip.next_header(), IpProtocol::Udp);
    }
}
