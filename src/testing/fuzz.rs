//! What the fuzz targets share: their input framing ([`chunks`]) and
//! the function each one runs, configured once from a `[function]`
//! section validated as part of a device file ([`function`]). Frames are
//! built with [`IpHeader`].
//!
//! ```
//! use std::sync::OnceLock;
//! use shmnet::functions::firewall::{Firewall, FirewallConfig};
//! use shmnet::testing::fuzz::{chunks, function};
//!
//! // [ctl][len: u16 LE][bytes], repeated; a length past the end is cut.
//! let input = [7, 2, 0, b'h', b'i', 9, 200, 0, b'!'];
//! let got: Vec<(u8, &[u8])> = chunks(&input).collect();
//! assert_eq!(got, [(7, &b"hi"[..]), (9, &b"!"[..])]);
//!
//! static CONFIG: OnceLock<FirewallConfig> = OnceLock::new();
//! let fw = function(&CONFIG, "kind = \"firewall\"\n[[rule]]\naction = \"accept\"", Firewall::new);
//! assert_eq!(fw.rule_packets(0), 0);
//! ```

use std::sync::OnceLock;

use smoltcp::wire::{IpAddress, IpProtocol};

use super::DeviceToml;
use super::frames::IpHeader;
use crate::functions::{FunctionConfig, FunctionError, KindConfig};

/// The IP header `src` → `dst` a target puts in front of a chunk, as the
/// chunk's selector byte `sel` asks: the protocol `protos[sel & 7]`, and
/// mostly a whole packet — with bit 6 set, the low six bits are the high
/// byte of the flags and fragment offset (DF, MF, offset).
pub fn ip_header(sel: u8, protos: &[u8; 8], src: IpAddress, dst: IpAddress) -> IpHeader {
    let frag = if sel & 0x40 != 0 {
        u16::from(sel & 0x3f) << 8
    } else {
        0
    };
    IpHeader::new(src, dst, IpProtocol::from(protos[usize::from(sel & 7)])).fragment_field(frag)
}

/// The function config the `[function]` section `section` (its `kind`
/// and keys, sub-tables as `[[rule]]`) sets, validated as part of a
/// device file. Panics if the section is not valid.
pub fn function_config(section: &str) -> FunctionConfig {
    DeviceToml::host("fuzz", "fz-lan", "fz-wan", 1)
        .function_table(section)
        .settings()
        .function
}

/// A fresh function built by `new` from the `[function]` section
/// `section`, which is parsed and validated once and kept in `config` (the
/// TOML parse would dominate a run). Panics if the section is not valid
/// or not of `new`'s kind.
pub fn function<C: KindConfig + Clone, F>(
    config: &OnceLock<C>,
    section: &str,
    new: impl FnOnce(C) -> Result<F, FunctionError>,
) -> F {
    let cfg = config.get_or_init(|| {
        let cfg = function_config(section);
        C::of(&cfg)
            .cloned()
            .unwrap_or_else(|| panic!("not the fuzzed kind: {cfg:?}"))
    });
    new(cfg.clone()).expect("fuzz config is valid")
}

/// Splits a fuzz input into chunks `[ctl: u8][len: u16 LE][len bytes]`:
/// yields `(ctl, bytes)`; a length longer than what is left takes the
/// rest; fewer than 3 bytes left end the input.
pub fn chunks(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let [ctl, l0, l1, tail @ ..] = rest else {
            return None;
        };
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        Some((*ctl, bytes))
    })
}
