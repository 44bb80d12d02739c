//! The IP Payload Compression header (IPComp, RFC 3173): 4 bytes holding
//! the original next header, reserved flags and the compression parameter
//! index (CPI). LZ4 has no assigned CPI; shmnet uses [`CPI_LZ4`] from the
//! range the RFC leaves for private use.
//!
//! ```
//! use shmnet::wire::ipcomp::{IpCompPacket, IpCompRepr, CPI_LZ4};
//! let repr = IpCompRepr { next_header: 6, cpi: CPI_LZ4 };
//! let mut buf = [0u8; 4];
//! repr.emit(&mut IpCompPacket::new_unchecked(&mut buf[..]));
//! assert_eq!(IpCompRepr::parse(&IpCompPacket::new_checked(&buf[..]).unwrap()).unwrap(), repr);
//! ```

/// IP protocol number of IPComp.
pub const IPPROTO_IPCOMP: u8 = super::proto::IPCOMP;
/// Our compression parameter index for LZ4 blocks (RFC 3173 private range).
pub const CPI_LZ4: u16 = 0xF001;

/// Bytes of the header.
const HEADER_LEN: usize = 4;

header_view! {
    /// A read/write view of an IPComp header and its payload (the
    /// compressed data).
    pub struct IpCompPacket, HEADER_LEN, IpCompError, IpCompError::Truncated {
        /// Protocol number of the original (compressed) payload.
        next_header, set_next_header: u8 = 0;
        /// The reserved flag byte (must be 0).
        flags, set_flags: u8 = 1;
        /// The compression parameter index: the algorithm (we write [`CPI_LZ4`]).
        cpi, set_cpi: u16 = 2;
    }
}

/// Errors of the IPComp header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpCompError {
    /// Fewer than 4 bytes.
    #[error("IPComp header truncated")]
    Truncated,
    /// Flags are reserved and must be zero.
    #[error("IPComp flags set")]
    Flags,
}

/// What an IPComp header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpCompRepr {
    /// Protocol of the original payload.
    pub next_header: u8,
    /// Compression algorithm.
    pub cpi: u16,
}

impl IpCompRepr {
    /// Reads the header; refuses a truncated buffer or non-zero flags.
    pub fn parse<T: AsRef<[u8]>>(p: &IpCompPacket<T>) -> Result<IpCompRepr, IpCompError> {
        p.check_len()?;
        if p.flags() != 0 {
            return Err(IpCompError::Flags);
        }
        Ok(IpCompRepr {
            next_header: p.next_header(),
            cpi: p.cpi(),
        })
    }
    /// Bytes [`Self::emit`] writes: the 4-byte header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }
    /// Writes the header into `p` (at least [`Self::buffer_len`] bytes), flags zeroed.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut IpCompPacket<T>) {
        p.set_next_header(self.next_header);
        p.set_flags(0);
        p.set_cpi(self.cpi);
    }
}
