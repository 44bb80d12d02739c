//! TCP segments joined into one super-segment on the way to a Linux TAP,
//! as a NIC's receive offload (GRO) would: a device's stream leaves in
//! MSS-sized frames, and writing each to the kernel costs a system call
//! and a trip through its stack per frame; consecutive segments of one
//! flow written as one GSO packet cost one of each.
//!
//! Segments join when they continue each other exactly: the same Ethernet,
//! IP and TCP headers (addresses, ports, ACK, window, options, TTL, TOS)
//! apart from the fields that must differ (IP length, IPv4 identification
//! and checksum, sequence number, TCP checksum), in sequence, each as long
//! as the first (the last may be shorter and ends the run), with only ACK
//! set (PSH may end the run), and no more than 64 KiB in all. Anything else
//! is written alone, in order.

use crate::wire::checksum::{fill_ipv4_header, fold, pseudo_header};
use crate::wire::{FrameView, LinkMedium, Transport};

/// The TCP flags a joinable segment carries: ACK, and PSH on the last.
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
/// The largest IP packet a super-segment may make.
const IP_MAX: usize = 65_535;

/// What the kernel needs to cut a super-segment back (the virtio-net
/// header's fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Bytes of the Ethernet, IP and TCP headers.
    pub head: usize,
    /// Payload bytes per segment.
    pub size: usize,
    /// Where the TCP header starts (the checksum covers from there).
    pub l4: usize,
}

/// A run of joined segments being built.
#[derive(Default)]
pub struct Coalescer {
    /// The super-segment so far: the first segment's headers, then every
    /// segment's payload.
    buf: Vec<u8>,
    /// Segments in it (0: none).
    count: usize,
    /// The first segment's layout and payload length.
    gso: Option<Gso>,
    /// Where the first segment's IP header starts.
    l3: usize,
    /// The sequence number the next segment must carry.
    next_seq: u32,
    /// Whether the run is closed (a short or PSH segment ended it).
    closed: bool,
}

/// The joinable facts of a TCP segment (`gso.size`: its payload length).
struct Segment {
    gso: Gso,
    l3: usize,
    seq: u32,
    flags: u8,
}

impl Segment {
    fn of(frame: &[u8]) -> Option<Segment> {
        let view = FrameView::parse(LinkMedium::Ethernet, frame);
        let ip = view.ip()?;
        let Transport::Tcp { header_len, .. } = ip.transport else {
            return None;
        };
        let head = ip.l4 + usize::from(header_len);
        if ip.fragment != crate::wire::Fragment::Whole || ip.end != frame.len() || head > ip.end {
            return None;
        }
        let l4 = ip.l4;
        Some(Segment {
            gso: Gso {
                v6: ip.v6,
                head,
                size: ip.end - head,
                l4,
            },
            l3: ip.l3,
            seq: u32::from_be_bytes(frame[l4 + 4..l4 + 8].try_into().ok()?),
            flags: frame[l4 + 13],
        })
    }
}

impl Coalescer {
    /// Adds `frame` to the run if it continues it (or starts a run if
    /// there is none and it can); `false` if it cannot join: flush the run,
    /// then offer it again or send it alone.
    pub fn join(&mut self, frame: &[u8]) -> bool {
        let Some(seg) = Segment::of(frame) else {
            return false;
        };
        // Only data with nothing but ACK (and PSH, which ends a run).
        if seg.gso.size == 0 || seg.flags & !PSH != ACK {
            return false;
        }
        let Some(gso) = self.gso else {
            self.start(frame, &seg);
            return true;
        };
        let fits = !self.closed
            && seg.gso.v6 == gso.v6
            && seg.gso.head == gso.head
            && seg.gso.l4 == gso.l4
            && seg.seq == self.next_seq
            && seg.gso.size <= gso.size
            && self.buf.len() + seg.gso.size - seg.l3 <= IP_MAX
            && same_headers(&self.buf[..gso.head], frame, seg.l3, gso.l4, gso.v6);
        if !fits {
            return false;
        }
        self.buf.extend_from_slice(&frame[gso.head..]);
        self.count += 1;
        self.next_seq = seg.seq.wrapping_add(seg.gso.size as u32);
        self.closed = seg.gso.size < gso.size || seg.flags & PSH != 0;
        if seg.flags & PSH != 0 {
            self.buf[gso.l4 + 13] |= PSH;
        }
        true
    }

    fn start(&mut self, frame: &[u8], seg: &Segment) {
        self.buf.clear();
        self.buf.extend_from_slice(frame);
        self.count = 1;
        self.l3 = seg.l3;
        self.gso = Some(seg.gso);
        self.next_seq = seg.seq.wrapping_add(seg.gso.size as u32);
        self.closed = seg.flags & PSH != 0;
    }

    /// Ends the run: the super-segment with its lengths set, how many
    /// segments it holds and, for more than one, what the kernel needs to
    /// cut it (its TCP checksum then holds the pseudo-header sum, as a
    /// checksum offload expects); a run of one is an ordinary frame
    /// (checksums left to the caller). `None` when there is no run.
    pub fn take(&mut self) -> Option<(&mut [u8], usize, Option<Gso>)> {
        let gso = self.gso.take()?;
        let count = std::mem::take(&mut self.count);
        self.closed = false;
        if count == 1 {
            return Some((&mut self.buf[..], 1, None));
        }
        let frame = &mut self.buf[..];
        let l3 = self.l3;
        let ip_len = frame.len() - l3;
        let tcp_len = frame.len() - gso.l4;
        if gso.v6 {
            let plen = (ip_len - 40) as u16;
            frame[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
        } else {
            frame[l3 + 2..l3 + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
            fill_ipv4_header(&mut frame[l3..gso.l4]);
        }
        let sum = pseudo_header_sum(&frame[l3..gso.l4], gso.v6, tcp_len);
        frame[gso.l4 + 16..gso.l4 + 18].copy_from_slice(&sum.to_be_bytes());
        Some((frame, count, Some(gso)))
    }
}

/// The folded (not inverted) sum of the TCP pseudo-header of the IP
/// header `ip`: what a checksum offload expects in the checksum field.
fn pseudo_header_sum(ip: &[u8], v6: bool, tcp_len: usize) -> u16 {
    let (src, dst) = if v6 {
        (&ip[8..24], &ip[24..40])
    } else {
        (&ip[12..16], &ip[16..20])
    };
    fold(pseudo_header(src, dst, 6, tcp_len))
}

/// Whether `frame`'s headers equal the run's `first` apart from the fields
/// each segment has its own of.
fn same_headers(first: &[u8], frame: &[u8], l3: usize, l4: usize, v6: bool) -> bool {
    let Some(frame) = frame.get(..first.len()) else {
        return false;
    };
    // The Ethernet header whole.
    if first[..l3] != frame[..l3] {
        return false;
    }
    let ip_same = if v6 {
        // Version, class, flow; next header, hop limit, addresses; no
        // extension headers.
        l4 == l3 + 40
            && first[l3..l3 + 4] == frame[l3..l3 + 4]
            && first[l3 + 6..l4] == frame[l3 + 6..l4]
    } else {
        // Version, TOS; flags and offset, TTL, protocol; addresses and
        // options.
        first[l3..l3 + 2] == frame[l3..l3 + 2]
            && first[l3 + 6..l3 + 10] == frame[l3 + 6..l3 + 10]
            && first[l3 + 12..l4] == frame[l3 + 12..l4]
    };
    // Ports; ACK number, offset; window, urgent pointer and options (the
    // flags are checked by the caller).
    ip_same
        && first[l4..l4 + 4] == frame[l4..l4 + 4]
        && first[l4 + 8..l4 + 13] == frame[l4 + 8..l4 + 13]
        && first[l4 + 14..l4 + 16] == frame[l4 + 14..l4 + 16]
        && first[l4 + 18..] == frame[l4 + 18..]
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::{Ipv4Address, Ipv6Address, TcpControl};

    use super::*;
    use crate::testing::frames::{ep, tcp};
    use crate::wire::gso::{Offload, cut_all};

    /// A stream's super-segment (`len` payload bytes from seq 1000) cut
    /// into segments of `mss` bytes, as a device would send them.
    fn segments(v6: bool, len: usize, mss: usize, control: TcpControl) -> (Vec<u8>, Vec<Vec<u8>>) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let (a, b) = if v6 {
            (
                ep(Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1), 7),
                ep(Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2), 40000),
            )
        } else {
            (
                ep(Ipv4Address::new(10, 0, 0, 2), 7),
                ep(Ipv4Address::new(10, 0, 0, 1), 40000),
            )
        };
        let whole = tcp(a, b, control, true, &payload);
        let out = cut_all(Offload::Tcp, LinkMedium::Ethernet, &whole, mss);
        (whole, out)
    }

    #[test]
    fn a_stream_joins_into_one_gso_packet_that_cuts_back_into_the_same_segments() {
        for v6 in [false, true] {
            for control in [TcpControl::None, TcpControl::Psh] {
                let (_, segs) = segments(v6, 5 * 1400 + 321, 1400, control);
                let mut c = Coalescer::default();
                for s in &segs {
                    assert!(c.join(s), "v6 {v6}");
                }
                let (joined, count, gso) = c.take().expect("a run");
                assert_eq!(count, segs.len());
                let gso = gso.expect("more than one segment");
                assert_eq!((gso.v6, gso.size), (v6, 1400));
                // What the kernel will do: cut it at gso.size.
                let back = cut_all(Offload::Tcp, LinkMedium::Ethernet, joined, gso.size);
                assert_eq!(back, segs, "v6 {v6} {control:?}");
                assert!(c.take().is_none());
            }
        }
    }

    #[test]
    fn only_segments_that_continue_the_run_join() {
        let (_, segs) = segments(false, 4 * 1000, 1000, TcpControl::None);
        let mut c = Coalescer::default();
        assert!(c.join(&segs[0]));
        // A gap in the sequence.
        assert!(!c.join(&segs[2]));
        assert!(c.join(&segs[1]));
        // Another flow (a port differs).
        let mut other = segs[2].clone();
        other[14 + 20] ^= 1;
        assert!(!c.join(&other));
        // A pure ACK, a SYN: never.
        let (_, acks) = segments(false, 0, 1000, TcpControl::None);
        assert!(acks.is_empty() || !c.join(&acks[0]));
        let (_, syn) = segments(false, 10, 1000, TcpControl::Syn);
        assert!(!c.join(&syn[0]));
        assert_eq!(c.take().map(|(_, n, _)| n), Some(2));
        // A short segment ends a run.
        let (_, short) = segments(false, 1000 + 10, 1000, TcpControl::None);
        assert!(c.join(&short[0]) && c.join(&short[1]));
        assert!(!c.join(&segs[1]));
        // A run of one is a plain frame.
        let mut c = Coalescer::default();
        assert!(c.join(&segs[0]));
        assert!(matches!(c.take(), Some((f, 1, None)) if f == &segs[0][..]));
    }
}
