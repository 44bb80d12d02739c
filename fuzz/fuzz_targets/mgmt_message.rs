//! Management messages (`wire::mgmt`): any bytes give the same verdict
//! from `frame_len`, `MgmtPacket::new_checked` and `open`, never a panic;
//! a message that parses re-emits to the bytes it came from, and sealing
//! it under the fuzz key gives the input back exactly when `open` accepted
//! the input. The body, read as a script, drives a small `ReplayGuard`: a
//! message it just accepted is refused when repeated, and its table never
//! outgrows its bound.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shmnet::wire::mgmt::{self, HEADER_LEN, Key, MgmtPacket, MgmtRepr, ReplayGuard, TAG_LEN};

/// The key the seed corpus is sealed with.
fn key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| Key::new(b"shmnet-fuzz-mgmt-key-0123456789").expect("a long key"))
}

const MAX_CLIENTS: usize = 4;

fuzz_target!(|data: &[u8]| {
    let framed = mgmt::frame_len(data);
    let checked = MgmtPacket::new_checked(data);
    let opened = mgmt::open(data, key());
    match &framed {
        Ok(None) => assert!(data.len() < HEADER_LEN && checked.is_err()),
        Ok(Some(n)) => {
            assert_eq!(checked.is_ok(), *n <= data.len());
            assert!(*n >= HEADER_LEN + TAG_LEN);
        }
        Err(_) => assert!(checked.is_err() && opened.is_err()),
    }
    let Ok(p) = checked else {
        assert!(opened.is_err());
        return;
    };
    let total = p.total_len();
    let Ok(repr) = MgmtRepr::parse(&p) else {
        assert!(opened.is_err());
        return;
    };
    // Parse -> emit gives the same header and body.
    let mut buf = vec![0u8; repr.buffer_len()];
    assert_eq!(buf.len(), total);
    repr.emit(&mut MgmtPacket::new_unchecked(&mut buf[..]));
    assert_eq!(&buf[..total - TAG_LEN], p.signed());
    // Sealed under the key, it opens to the same repr, and it is the input
    // exactly when the input opened.
    let sealed = mgmt::seal(&repr, key()).expect("a parsed body is within bounds");
    assert_eq!(mgmt::open(&sealed, key()).expect("own message"), repr);
    assert_eq!(opened.is_ok(), sealed[..] == data[..]);
    if let Ok(o) = opened {
        assert_eq!(o, repr);
    }

    // The replay guard, fresh per input (cheap: an empty map), fed the
    // header's fields and then the body as (client, seq, time, now)
    // records.
    let mut guard = ReplayGuard::new(
        Duration::from_millis(u64::from(repr.op) * 1000),
        MAX_CLIENTS,
    );
    let mut feed = |client: u32, seq: u64, time_ms: u64, now_ms: u64| {
        if guard.check(client, seq, time_ms, now_ms).is_ok() {
            assert!(guard.check(client, seq, time_ms, now_ms).is_err());
        }
        assert!(guard.clients() <= MAX_CLIENTS);
    };
    let be = |b: &[u8]| b.iter().fold(0u64, |a, &x| a << 8 | u64::from(x));
    feed(
        repr.client,
        repr.seq,
        repr.time_ms,
        repr.time_ms ^ u64::from(repr.status),
    );
    for r in repr.body.chunks_exact(13) {
        feed(
            u32::from(r[0] & 7),
            be(&r[1..5]),
            be(&r[5..9]),
            be(&r[9..13]),
        );
    }
});
