//! The Encapsulating Security Payload header (ESP, RFC 4303): SPI and
//! sequence number; IV, ciphertext and ICV follow as its payload.
//!
//! ```
//! use shmnet::wire::esp::{EspPacket, EspRepr};
//! let repr = EspRepr { spi: 0x1000, seq: 7 };
//! let mut buf = [0u8; 8];
//! repr.emit(&mut EspPacket::new_unchecked(&mut buf[..]));
//! assert_eq!(EspRepr::parse(&EspPacket::new_checked(&buf[..]).unwrap()).unwrap(), repr);
//! ```

/// Errors of the ESP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EspError {
    /// Fewer than 8 bytes.
    #[error("ESP header truncated")]
    Truncated,
    /// SPIs 0..=255 are reserved (RFC 4303 §2.1) and never sent.
    #[error("reserved SPI")]
    ReservedSpi,
}

/// Bytes of the header.
const HEADER_LEN: usize = 8;

header_view! {
    /// A read/write view of an ESP header and what follows it (IV,
    /// encrypted data and ICV: the payload).
    pub struct EspPacket, HEADER_LEN, EspError, EspError::Truncated {
        /// The Security Parameters Index: which SA the packet belongs to.
        spi, set_spi: u32 = 0;
        /// The sequence number (counts up from 1 per SA; anti-replay).
        seq, set_seq: u32 = 4;
    }
}

/// What an ESP header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspRepr {
    /// Security Parameters Index; 0..=255 are reserved and refused by `parse`.
    pub spi: u32,
    /// Sequence number: counts up from 1 per SA; the receiver checks it
    /// against its anti-replay window.
    pub seq: u32,
}

impl EspRepr {
    /// Reads the header; refuses a truncated buffer or a reserved SPI.
    pub fn parse<T: AsRef<[u8]>>(p: &EspPacket<T>) -> Result<EspRepr, EspError> {
        p.check_len()?;
        if p.spi() < 256 {
            return Err(EspError::ReservedSpi);
        }
        Ok(EspRepr {
            spi: p.spi(),
            seq: p.seq(),
        })
    }
    /// Bytes [`Self::emit`] writes: the 8-byte header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }
    /// Writes the header into `p` (at least [`Self::buffer_len`] bytes).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut EspPacket<T>) {
        p.set_spi(self.spi);
        p.set_seq(self.seq);
    }
}
