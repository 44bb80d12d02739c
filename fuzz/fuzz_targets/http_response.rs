//! The HTTP/1.1 codec on a response stream (interim responses, bodies
//! framed by length, chunks, the request method or the end of the
//! connection): the invariants of `http_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "http_common.rs"]
mod common;

fuzz_target!(|data: &[u8]| common::check(data, true));
