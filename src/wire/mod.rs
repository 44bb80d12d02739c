//! Every packet format shmnet reads or writes, in smoltcp's Packet/Repr
//! style, and the one parsed view of a frame that the NIC hands to
//! functions.
//!
//! - [`ip`]: the **one IP view** ([`FrameView`], [`IpView`]): link header,
//!   IPv4/IPv6 with a bounded extension-header walk, fragments, the
//!   transport ports and flags, the flow key. The NIC parses each frame
//!   once and every function reads the same view; no function parses IP
//!   on its own.
//! - [`checksum`]: the Internet checksum, full and incremental (RFC 1624).
//! - [`tcp`]: TCP flags and the MSS clamp.
//! - [`esp`], [`ipcomp`]: the ESP (RFC 4303) and IPComp (RFC 3173)
//!   headers the encryption and compression functions write.
//! - [`vxlan`]: the VXLAN header (RFC 7348) of the gateway to remote hosts.
//! - [`mgmt`]: management messages between the manager and each device's
//!   agent (HMAC-SHA256 tagged), their stream framing and the replay
//!   guard; its `Key` is the one thing here that reads and writes files.
//!
//! Everything here is pure: it reads or writes byte buffers, never
//! allocates on the per-frame path and never panics on any input (each
//! parser is a fuzz target).
//!
//! ```
//! use shmnet::wire::{FrameView, LinkMedium, Transport};
//! // IPv4 + UDP 1000 -> 7, two payload bytes, no link header.
//! let mut p = [0u8; 30];
//! p[..12].copy_from_slice(&[0x45, 0, 0, 30, 0, 0, 0, 0, 64, 17, 0, 0]);
//! p[12..20].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
//! p[20..28].copy_from_slice(&[0x03, 0xe8, 0, 7, 0, 10, 0, 0]);
//! let FrameView::Ip(v) = FrameView::parse(LinkMedium::Ip, &p) else { panic!() };
//! assert_eq!(v.ports(), Some((1000, 7)));
//! assert!(matches!(v.transport, Transport::Udp { .. }));
//! ```

/// Accessors of a view `$name<T>` (a struct with a `buffer: T` of bytes)
/// for its fields at fixed offsets. Each `getter, setter: type = offset;`
/// reads or writes `size_of::<type>()` bytes from `offset`: an integer in
/// the byte order of `$from`/`$to` (`from_be_bytes`/`to_be_bytes`, or
/// `_le_`, `_ne_`), or, for `[u8; N]`, the bytes themselves. Like
/// smoltcp's, they panic on a buffer too short, which the view's
/// `check_len` rules out.
macro_rules! view_fields {
    ($name:ident, $from:ident, $to:ident { $($fields:tt)* }) => {
        $crate::wire::view_fields!(@each $name, $from, $to; $($fields)*);
    };
    (@each $name:ident, $from:ident, $to:ident;) => {};
    (@each $name:ident, $from:ident, $to:ident;
        $(#[$fattr:meta])* $get:ident, $set:ident: [u8; $n:literal] = $at:expr; $($rest:tt)*
    ) => {
        impl<T: AsRef<[u8]>> $name<T> {
            $(#[$fattr])*
            #[inline]
            pub fn $get(&self) -> &[u8] {
                &self.buffer.as_ref()[$at..$at + $n]
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            #[doc = concat!("Sets [`Self::", stringify!($get), "`].")]
            #[inline]
            pub fn $set(&mut self, value: &[u8; $n]) {
                self.buffer.as_mut()[$at..$at + $n].copy_from_slice(value);
            }
        }

        $crate::wire::view_fields!(@each $name, $from, $to; $($rest)*);
    };
    (@each $name:ident, $from:ident, $to:ident;
        $(#[$fattr:meta])* $get:ident, $set:ident: $ty:ty = $at:expr; $($rest:tt)*
    ) => {
        impl<T: AsRef<[u8]>> $name<T> {
            $(#[$fattr])*
            #[inline]
            pub fn $get(&self) -> $ty {
                let mut b = [0u8; size_of::<$ty>()];
                b.copy_from_slice(&self.buffer.as_ref()[$at..$at + size_of::<$ty>()]);
                <$ty>::$from(b)
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            #[doc = concat!("Sets [`Self::", stringify!($get), "`].")]
            #[inline]
            pub fn $set(&mut self, value: $ty) {
                self.buffer.as_mut()[$at..$at + size_of::<$ty>()]
                    .copy_from_slice(&value.$to());
            }
        }

        $crate::wire::view_fields!(@each $name, $from, $to; $($rest)*);
    };
}
pub(crate) use view_fields;

/// [`view_fields!`] in network byte order, as every wire format here is.
macro_rules! be_fields {
    ($name:ident { $($fields:tt)* }) => {
        view_fields!($name, from_be_bytes, to_be_bytes { $($fields)* });
    };
}

/// Declares the read/write view of a fixed-length header and the payload
/// after it, `$name<T>` over a buffer `T`, with smoltcp's constructors:
/// `new_unchecked`, `new_checked`, and `check_len`, which refuses a buffer
/// shorter than `$len` with `$truncated`; and the [`be_fields!`] in the
/// braces. Other accessors and the format's `Repr` stay in its module.
macro_rules! header_view {
    (
        $(#[$attr:meta])* $vis:vis struct $name:ident, $len:expr, $error:ty, $truncated:path
        { $($fields:tt)* }
    ) => {
        $(#[$attr])*
        #[derive(Debug, Clone)]
        $vis struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// A view of `buffer` whose length is not checked: accessors
            /// panic on a buffer shorter than the header.
            pub const fn new_unchecked(buffer: T) -> Self {
                $name { buffer }
            }
            /// A view of `buffer` once [`Self::check_len`] passes.
            pub fn new_checked(buffer: T) -> Result<Self, $error> {
                let p = Self::new_unchecked(buffer);
                p.check_len()?;
                Ok(p)
            }
            /// Whether the buffer holds the whole header.
            pub fn check_len(&self) -> Result<(), $error> {
                if self.buffer.as_ref().len() < $len {
                    return Err($truncated);
                }
                Ok(())
            }
            /// The bytes after the header.
            pub fn payload(&self) -> &[u8] {
                &self.buffer.as_ref()[$len..]
            }
        }

        be_fields!($name { $($fields)* });
    };
}

pub mod checksum;
pub mod esp;
pub mod gso;
pub mod ip;
pub mod ipcomp;
pub mod mgmt;
pub mod mgmt_payload;
pub mod tcp;
pub mod vxlan;

/// Byte fixtures the format tests share.
#[cfg(test)]
pub(crate) mod fixtures {
    /// An IPv4 header 10.0.0.1 → 10.0.0.2 (TTL 64, don't fragment) of a
    /// `total`-byte packet of `proto`, identified by `ident`, its checksum
    /// left zero.
    pub(crate) fn ipv4_header(total: usize, ident: u16, proto: u8) -> [u8; 20] {
        let [t0, t1] = (total as u16).to_be_bytes();
        let [i0, i1] = ident.to_be_bytes();
        [
            0x45, 0, t0, t1, i0, i1, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]
    }
}

pub use ip::{FlowKey, Fragment, FrameView, IcmpKind, IpView, LinkMedium, NoIp, Transport};
pub use tcp::TcpFlags;

/// Time since the Unix epoch by the wall clock (zero before 1970): what
/// formats that carry a wall-clock time (pcap, management messages) and
/// fresh seeds and epochs start from.
pub(crate) fn since_unix_epoch() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// IP protocol numbers the functions match on.
pub mod proto {
    /// ICMP for IPv4 (RFC 792).
    pub const ICMP: u8 = 1;
    /// TCP (RFC 9293).
    pub const TCP: u8 = 6;
    /// UDP (RFC 768).
    pub const UDP: u8 = 17;
    /// ESP (RFC 4303), written by the encryption function.
    pub const ESP: u8 = 50;
    /// ICMP for IPv6 (RFC 4443).
    pub const ICMPV6: u8 = 58;
    /// IPComp (RFC 3173), written by the compression function.
    pub const IPCOMP: u8 = 108;
}
