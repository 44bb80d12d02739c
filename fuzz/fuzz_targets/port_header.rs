//! Port region header: parse → emit → parse round trip; parsing never panics.
//!
//! Input byte 0 picks the mode. Bit 0: check against a mapping length taken
//! from bytes 0..8 (else unbounded). Bit 1: instead of parsing raw bytes,
//! start from a valid header built from parameters in the input and damage
//! it with patches `[offset: u8][byte]`, so the fuzzer reaches the checks
//! behind the magic and the offset cross-checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmnet::shm::layout::{Geometry, HEADER_LEN, HeaderRepr, LinkMedium, PortHeader};

fn u32_at(data: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = data.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(b)
}

fn check(bytes: &[u8], region_len: usize) {
    let Ok(h) = PortHeader::new_checked(bytes) else {
        return;
    };
    let Ok(repr) = HeaderRepr::parse(&h, region_len) else {
        return;
    };
    let mut buf = vec![0u8; HEADER_LEN];
    assert!(repr.buffer_len() <= buf.len());
    repr.emit_published(&mut PortHeader::new_unchecked(&mut buf[..]));
    let h2 = PortHeader::new_checked(&buf[..]).expect("emitted header is long enough");
    let again = HeaderRepr::parse(&h2, region_len).expect("emitted header parses");
    assert_eq!(repr, again);
}

fuzz_target!(|data: &[u8]| {
    let mode = data.first().copied().unwrap_or(0);
    let region_len = match data.get(..8) {
        Some(b) if mode & 1 == 1 => u64::from_le_bytes(b.try_into().unwrap()) as usize,
        _ => usize::MAX,
    };
    if mode & 2 == 0 {
        check(data, region_len);
        return;
    }
    // Structured mode: [mode][8 bytes region][mtu][ports][index][buffers][epoch][medium] patches...
    let medium = if data.get(32).copied().unwrap_or(0) & 1 == 0 {
        LinkMedium::Ethernet
    } else {
        LinkMedium::Ip
    };
    let Ok(g) = Geometry::new(
        u32_at(data, 8),
        medium,
        u32_at(data, 12) % 2048,
        u32_at(data, 20) % (1 << 17),
    ) else {
        return;
    };
    let geo = HeaderRepr {
        geo: g,
        index: u32_at(data, 16) % g.max_ports,
        epoch: u32_at(data, 24),
        pid: u32_at(data, 28),
    };
    let mut buf = vec![0u8; HEADER_LEN];
    geo.emit_published(&mut PortHeader::new_unchecked(&mut buf[..]));
    if let Ok(parsed) = HeaderRepr::parse(&PortHeader::new_unchecked(&buf[..]), usize::MAX) {
        assert_eq!(parsed, geo, "a header built by new() parses back to itself");
    }
    for p in data.get(33..).unwrap_or(&[]).chunks_exact(2) {
        buf[p[0] as usize] = p[1];
    }
    check(&buf, region_len);
});
