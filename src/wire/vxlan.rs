//! The VXLAN header (RFC 7348 §5): 8 bytes before an Ethernet frame, in a
//! UDP datagram (port 4789): flags (the I bit says the VNI is valid; the
//! other bits are reserved), 24 reserved bits, the 24-bit VXLAN network
//! identifier (VNI), 8 reserved bits. Reserved bits are written as zero and
//! ignored on receipt, as the RFC says.
//!
//! ```
//! use shmnet::wire::vxlan::{VxlanPacket, VxlanRepr};
//! let mut buf = [0u8; 8];
//! VxlanRepr { vni: 4242 }.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
//! assert_eq!(buf, [0x08, 0, 0, 0, 0, 0x10, 0x92, 0]);
//! let p = VxlanPacket::new_checked(&buf[..]).unwrap();
//! assert_eq!(VxlanRepr::parse(&p).unwrap().vni, 4242);
//! ```

/// The IANA port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// What VXLAN adds around an inner IP packet on an IPv4 underlay: outer
/// IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
pub const OVERHEAD_V4: u32 = 50;
/// The largest VNI (24 bits).
pub const VNI_MAX: u32 = (1 << 24) - 1;

/// The I flag: the VNI field is valid.
const FLAG_I: u8 = 0x08;

/// Errors of the VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VxlanError {
    /// Fewer than 8 bytes.
    #[error("VXLAN header truncated")]
    Truncated,
    /// The I flag is clear: no valid VNI.
    #[error("VXLAN I flag clear")]
    NoVni,
}

/// Where the 24-bit VNI sits.
const VNI: std::ops::Range<usize> = 4..7;

header_view! {
    /// A read/write view of a VXLAN header and its payload (an Ethernet
    /// frame).
    pub struct VxlanPacket, HEADER_LEN, VxlanError, VxlanError::Truncated {
        /// The flags byte.
        flags, set_flags: u8 = 0;
    }
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// The VNI field.
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }
}

/// What a VXLAN header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    /// The network identifier (0..=`VNI_MAX`).
    pub vni: u32,
}

impl VxlanRepr {
    /// Reads the header; refuses a truncated buffer or a clear I flag.
    pub fn parse<T: AsRef<[u8]>>(p: &VxlanPacket<T>) -> Result<VxlanRepr, VxlanError> {
        p.check_len()?;
        if p.flags() & FLAG_I == 0 {
            return Err(VxlanError::NoVni);
        }
        Ok(VxlanRepr { vni: p.vni() })
    }

    /// Writes the header (reserved bits zero); `vni` is cut to 24 bits.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut VxlanPacket<T>) {
        let b = p.buffer.as_mut();
        b[..HEADER_LEN].fill(0);
        b[VNI].copy_from_slice(&self.vni.to_be_bytes()[1..]);
        p.set_flags(FLAG_I);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_bits_are_ignored_and_a_clear_i_flag_refused() {
        let mut b = [0xffu8; 8];
        b[4..7].copy_from_slice(&[0, 0x10, 0x92]);
        let p = VxlanPacket::new_checked(&b[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p), Ok(VxlanRepr { vni: 4242 }));
        b[0] = 0xf7;
        let p = VxlanPacket::new_checked(&b[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p), Err(VxlanError::NoVni));
        assert!(VxlanPacket::new_checked(&b[..7]).is_err());
    }
}
