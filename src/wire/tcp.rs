//! TCP as the functions and the NIC touch it: the flag set, the MSS
//! clamp routers apply when a path's MTU shrinks, and the window margin
//! the NIC keeps on its own stack's segments.
//!
//! ```
//! use shmnet::wire::tcp::{clamp_mss, TcpFlags};
//! let mut syn = [0u8; 24];
//! syn[12] = 6 << 4; // data offset: 24 bytes
//! syn[13] = TcpFlags::SYN.bits();
//! syn[20..24].copy_from_slice(&[2, 4, 0xff, 0xd7]); // MSS 65495
//! assert!(clamp_mss(&mut syn, 1460, false));
//! assert_eq!(&syn[22..24], &1460u16.to_be_bytes());
//! ```

use super::checksum;

bitflags::bitflags! {
    /// The TCP header's flag byte.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct TcpFlags: u8 {
        /// No more data from the sender.
        const FIN = 0x01;
        /// Synchronise sequence numbers (opens a connection).
        const SYN = 0x02;
        /// Reset the connection.
        const RST = 0x04;
        /// Push buffered data to the application.
        const PSH = 0x08;
        /// The acknowledgement field is valid.
        const ACK = 0x10;
        /// The urgent pointer is valid.
        const URG = 0x20;
        /// ECN echo (RFC 3168).
        const ECE = 0x40;
        /// Congestion window reduced (RFC 3168).
        const CWR = 0x80;
    }
}

/// The largest MSS that fits an IP MTU of `mtu` with a minimal IP header
/// (20 bytes for IPv4, 40 for IPv6) and a minimal TCP header.
pub fn mss_for_mtu(mtu: usize, v6: bool) -> u16 {
    let ip = if v6 { 40 } else { 20 };
    mtu.saturating_sub(ip + 20).min(usize::from(u16::MAX)) as u16
}

/// Lowers the MSS option of a TCP SYN segment (`tcp`: the TCP header and
/// what follows) to `max_mss`, fixing the checksum incrementally. With
/// `checksummed` the checksum field holds a computed sum, even when it is
/// 0; without, a 0 means "left out" and stays 0 (a non-zero one, e.g. from
/// Linux behind a TAP, is still kept right). Returns whether it changed
/// anything; a truncated or odd option list is left as it is.
pub fn clamp_mss(tcp: &mut [u8], max_mss: u16, checksummed: bool) -> bool {
    if tcp.len() < 20 || tcp[13] & TcpFlags::SYN.bits() == 0 {
        return false;
    }
    let hdr = (usize::from(tcp[12] >> 4) * 4).min(tcp.len());
    let mut i = 20;
    while i < hdr {
        match tcp[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = tcp.get(i + 1) else { break };
                let len = usize::from(len);
                if len < 2 || i + len > hdr {
                    break;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    if old <= max_mss {
                        return false;
                    }
                    tcp[i + 2..i + 4].copy_from_slice(&max_mss.to_be_bytes());
                    fix_checksum(tcp, old, max_mss, checksummed);
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// Lowers the window field of a segment a device's own stack sends by one
/// unit (one scaled unit: `1 << shift` bytes), fixing the checksum
/// incrementally as [`clamp_mss`] does (without `checksummed` the stack
/// left it 0, "not computed", and it stays so). Returns whether it
/// changed anything; SYNs (unscaled window), RSTs, a zero window and
/// truncated headers are left alone.
///
/// Why: smoltcp 0.14 rounds its scaled window down, so the right edge it
/// advertises can move left by less than one unit as data arrives, and it
/// drops what a peer sent up to the old edge. The peer's sequence number
/// is then ahead of smoltcp's, and once smoltcp's window is zero it
/// ignores every ACK and window update from that peer (they fail its
/// zero-window acceptance test): a connection whose two windows close at
/// once (an echo to a slow reader) stalls until its timeout resets it.
/// One unit less keeps every edge the peer hears at or below the edge
/// smoltcp holds later, so nothing it sends is ever cut off.
pub fn shave_window(tcp: &mut [u8], checksummed: bool) -> bool {
    if tcp.len() < 20 {
        return false;
    }
    let flags = TcpFlags::from_bits_retain(tcp[13]);
    if flags.intersects(TcpFlags::SYN | TcpFlags::RST) {
        return false;
    }
    let old = u16::from_be_bytes([tcp[14], tcp[15]]);
    if old == 0 {
        return false;
    }
    let new = old - 1;
    tcp[14..16].copy_from_slice(&new.to_be_bytes());
    fix_checksum(tcp, old, new, checksummed);
    true
}

/// Updates the checksum of `tcp` (a header of at least 20 bytes) for one
/// 16-bit word changed from `old` to `new` (RFC 1624). With `checksummed`
/// the field holds a computed sum even when it is 0, so it is always
/// updated; without, a 0 means "left out" and stays 0, and a non-zero sum
/// (from a peer that computed it) is kept right.
fn fix_checksum(tcp: &mut [u8], old: u16, new: u16, checksummed: bool) {
    let ck = u16::from_be_bytes([tcp[16], tcp[17]]);
    if checksummed || ck != 0 {
        tcp[16..18].copy_from_slice(&checksum::update(ck, old, new).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shaves_one_unit_off_the_window_and_fixes_checksum() {
        let mut tcp = [0u8; 20];
        tcp[12] = 5 << 4;
        tcp[13] = TcpFlags::ACK.bits();
        tcp[14..16].copy_from_slice(&1548u16.to_be_bytes());
        tcp[16..18].copy_from_slice(&0xbeefu16.to_be_bytes());
        assert!(shave_window(&mut tcp, true));
        assert_eq!(u16::from_be_bytes([tcp[14], tcp[15]]), 1547);
        let before = 0xbeefu32 + 1548;
        let after = u32::from(u16::from_be_bytes([tcp[16], tcp[17]])) + 1547;
        assert_eq!(checksum::fold(before), checksum::fold(after));
        // A checksum left out (0) stays out.
        tcp[16..18].copy_from_slice(&[0, 0]);
        assert!(shave_window(&mut tcp, false));
        assert_eq!(u16::from_be_bytes([tcp[14], tcp[15]]), 1546);
        assert_eq!(&tcp[16..18], &[0, 0]);
        // A zero window, a SYN, a RST, a short header: untouched.
        tcp[14..16].copy_from_slice(&[0, 0]);
        assert!(!shave_window(&mut tcp, true));
        tcp[14..16].copy_from_slice(&[0, 9]);
        for f in [TcpFlags::SYN | TcpFlags::ACK, TcpFlags::RST] {
            tcp[13] = f.bits();
            assert!(!shave_window(&mut tcp, true));
        }
        assert!(!shave_window(&mut [0u8; 19], true));
    }

    #[test]
    fn clamps_syn_mss_and_fixes_checksum() {
        // A TCP SYN header with MSS 65495 and a made-up checksum.
        let mut tcp = [0u8; 24];
        tcp[12] = 6 << 4;
        tcp[13] = 0x02;
        tcp[16..18].copy_from_slice(&0x1234u16.to_be_bytes());
        tcp[20..24].copy_from_slice(&[2, 4, 0xff, 0xd7]);
        assert!(clamp_mss(&mut tcp, 1460, false));
        assert_eq!(&tcp[20..24], &[2, 4, 0x05, 0xb4]);
        // One's-complement sum over the changed word balances out.
        let before = 0x1234u32 + 0xffd7;
        let after = u32::from(u16::from_be_bytes([tcp[16], tcp[17]])) + 1460;
        assert_eq!(checksum::fold(before), checksum::fold(after));
        // Not a SYN, or already small: untouched.
        assert!(!clamp_mss(&mut tcp, 1460, false));
        tcp[13] = 0x10;
        assert!(!clamp_mss(&mut tcp, 536, false));
        // Truncated options never panic.
        assert!(!clamp_mss(&mut [0u8; 10], 536, true));
    }

    /// A SYN whose (header-only, for the test) checksum is right.
    fn summed_syn(word: u16) -> [u8; 24] {
        let mut tcp = [0u8; 24];
        tcp[4..6].copy_from_slice(&word.to_be_bytes()); // part of seq
        tcp[12] = 6 << 4;
        tcp[13] = TcpFlags::SYN.bits();
        tcp[20..24].copy_from_slice(&[2, 4, 0xff, 0xd7]);
        let ck = !checksum::fold(checksum::sum_words(0, &tcp, false));
        tcp[16..18].copy_from_slice(&ck.to_be_bytes());
        tcp
    }

    fn sums_right(tcp: &[u8]) -> bool {
        checksum::fold(checksum::sum_words(0, tcp, false)) == 0xffff
    }

    #[test]
    fn a_computed_checksum_of_zero_is_kept_right() {
        // Choose the seq word so that the checksum comes out 0: the word
        // then adds exactly the complement of the rest.
        let word = u16::from_be_bytes(summed_syn(0)[16..18].try_into().unwrap());
        let tcp = summed_syn(word);
        assert_eq!(&tcp[16..18], &[0, 0]);
        assert!(sums_right(&tcp));

        let mut checksummed = tcp;
        assert!(clamp_mss(&mut checksummed, 1460, true));
        assert!(sums_right(&checksummed), "a computed 0 must be updated");

        // Without checksums a 0 means "left out": it stays so.
        let mut left_out = tcp;
        assert!(clamp_mss(&mut left_out, 1460, false));
        assert_eq!(&left_out[16..18], &[0, 0]);

        // A non-zero checksum is kept right either way.
        for on in [true, false] {
            let mut t = summed_syn(7);
            assert!(clamp_mss(&mut t, 1460, on));
            assert!(sums_right(&t));
        }
    }
}
