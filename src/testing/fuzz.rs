//! Input framing shared by the fuzz targets.
//!
//! ```
//! use shmnet::testing::fuzz::chunks;
//!
//! // [ctl][len: u16 LE][bytes], repeated; a length past the end is cut.
//! let input = [7, 2, 0, b'h', b'i', 9, 200, 0, b'!'];
//! let got: Vec<(u8, &[u8])> = chunks(&input).collect();
//! assert_eq!(got, [(7, &b"hi"[..]), (9, &b"!"[..])]);
//! ```

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
