//! The manager's JSON API on hostile requests: routing any method and
//! target, reading any body as a capture or probe request, checking any
//! `Authorization` value. Nothing may panic; refusals carry a status the
//! manager can answer with; accepted names and bodies keep their
//! promises (valid device names, bodies that survive a JSON round trip).
//!
//! Input: `method \n target \n authorization \n body`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmnet::functions::socket::manager::api::{
    ApiRequest, CaptureRequest, ProbeRequest, bearer_ok, parse_json, requires_auth, route,
    valid_device_name,
};

/// `data` cut at the first `n - 1` newlines.
fn fields<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut out = [&[][..]; N];
    let mut rest = data;
    for (i, f) in out.iter_mut().enumerate() {
        if i + 1 == N {
            *f = rest;
            break;
        }
        let at = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        *f = &rest[..at];
        rest = rest.get(at + 1..).unwrap_or(&[]);
    }
    out
}

/// A body that validates serialises and parses back to itself.
fn round_trip<T>(body: &[u8], validate: impl Fn(&T) -> bool)
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let Ok(req) = parse_json::<T>(body) else {
        return;
    };
    if validate(&req) {
        let again: T = parse_json(&serde_json::to_vec(&req).unwrap()).unwrap();
        assert_eq!(again, req);
    }
}

fuzz_target!(|data: &[u8]| {
    let [method, target, auth, body] = fields::<4>(data);
    match route(method, target) {
        Ok(req) => {
            let name = match &req {
                ApiRequest::Device(n)
                | ApiRequest::DeviceConfig(n)
                | ApiRequest::SetFunction(n)
                | ApiRequest::CaptureStart(n)
                | ApiRequest::CaptureStop { device: n, .. } => Some(n),
                _ => None,
            };
            if let Some(n) = name {
                assert!(valid_device_name(n) && n != "." && n != "..", "{n:?}");
            }
            // Only GET is safe; every other method changes something.
            assert_eq!(requires_auth(&req), method != b"GET", "{req:?}");
        }
        Err(e) => {
            assert!(matches!(e.status, 400 | 404 | 405 | 414), "{e:?}");
            assert_eq!(e.status == 405, !e.allow.is_empty(), "{e:?}");
        }
    }
    round_trip::<CaptureRequest>(body, |r| r.validate().is_ok());
    round_trip::<ProbeRequest>(body, |r| r.validate().is_ok());
    // The right token is accepted, and only a header that holds it.
    let token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    if bearer_ok(Some(auth), token) {
        assert!(auth.windows(token.len()).any(|w| w == token.as_bytes()));
    }
    if let Ok(own) = std::str::from_utf8(auth)
        && !own.is_empty()
        && !auth.iter().any(u8::is_ascii_whitespace)
    {
        assert!(bearer_ok(Some(&[b"Bearer ", auth].concat()), own));
    }
});
