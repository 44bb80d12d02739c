//! The HTTP/1.1 codec on a request stream (heads, then bodies: Content-
//! Length, chunked): any bytes never panic, never consume more than given,
//! decode no more body than input, give the same result however the
//! stream is cut into reads, and a parsed head forwarded as a proxy would
//! parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "http_common.rs"]
mod common;

fuzz_target!(|data: &[u8]| common::check(data, false));
