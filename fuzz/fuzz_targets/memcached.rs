//! Arbitrary bytes through the cache's protocol (framing, text and meta
//! commands) and its store, as one client connection would send them.
//! Nothing may panic; after every read the store's index, LRU list and
//! byte counts agree, memory stays within its (small) limit, the input
//! kept stays within what a data block or a multi-get line may need, and
//! replies are never left half-made.
//!
//! Input: byte 0 picks the read size (1..=64 bytes, so commands and data
//! blocks arrive in pieces) and byte 1 the time step per read (0..=2.55 s,
//! so items expire and delayed flushes fall due); the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmnet::functions::cache::{Engine, Session, Settings, Store};
use smoltcp::time::{Duration, Instant};

const MEMORY: usize = 64 << 10;
const MAX_ITEM: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let [read, step, stream @ ..] = data else {
        return;
    };
    let read = usize::from(read % 64) + 1;
    let step = Duration::from_millis(u64::from(*step) * 10);
    let mut engine = Engine::new(Store::new(MEMORY, MAX_ITEM), Settings::default());
    let mut session = Session::new(MAX_ITEM);
    let mut input = Vec::new();
    let mut now = Instant::ZERO;
    for piece in stream.chunks(read) {
        input.extend_from_slice(piece);
        let used = session.handle(&input, &mut engine, now);
        input.drain(..used);
        // Replies are read as a client would.
        let out = session.out.take_all();
        if !out.is_empty() {
            assert!(out.ends_with(b"\r\n"), "a reply cut short: {out:?}");
        }
        if session.closing() {
            return;
        }
        let bound = session.pending_data().unwrap_or(0).max(MAX_ITEM + 2) + read;
        assert!(input.len() <= bound, "{} bytes of input kept", input.len());
        engine.store.maintain(now);
        engine.store.check_invariants().unwrap();
        assert!(engine.store.memory_used() <= MEMORY);
        now += step;
    }
});
