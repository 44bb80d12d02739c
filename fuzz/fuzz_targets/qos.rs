//! Arbitrary frames through a QoS function's queues, with time moving in
//! arbitrary steps. Nothing may panic, it never releases more frames than
//! it took, and every frame it releases is one it took, byte for byte,
//! except for the ECN bits and the IPv4 header checksum (which must still
//! verify if it did before).
//!
//! Input: chunks `[ctl: u8][len: u16 LE][bytes]`. `ctl & 3`: 0 and 1 give
//! the bytes to `on_ingress` from the local or global network, 2 releases
//! frames (up to `bytes.len()`, into a buffer of 65550 bytes or, with
//! `ctl & 4`, 1600), 3 reconfigures (alternating between two configs that
//! share some classes). `ctl >> 3 & 3` makes the bytes the payload of a
//! well-formed IPv4 (1) or IPv6 (2) header the target builds, with
//! `bytes[0]` the TOS / traffic class and `bytes[1]` the protocol and
//! ports, so classes and ECN marking get explored. `ctl >> 5` steps time
//! by 0, 10 µs, 100 µs, ..., up to 10 s. The first byte's top bit picks
//! the link medium of the run (the device's, not the function's).
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shmnet::functions::qos::Qos;
use shmnet::functions::{Frame, Function, FunctionConfig, Role, Verdict};
use shmnet::testing::frames::IpHeader;
use shmnet::testing::fuzz::{chunks, function_config};
use shmnet::wire::{LinkMedium, checksum};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpProtocol};

const CONFIG_A: &str = r#"
kind = "qos"
default = "bulk"
rate = "10mbit"
burst = 4000
class = [
    { name = "voice", dscp = [46, 10], over_limit = "mark", queue = 6000, mark_at = 1000, rate = "1mbit", burst = 1514 },
    { name = "web", priority = 1, weight = 3, proto = "tcp", dport = "80-90", queue = 4000, over_limit = "mark" },
    { name = "v6", priority = 1, src = "fd00::/16", proto = "udp", sport = 53 },
    { name = "bulk", priority = 2, queue = 20000 },
]
"#;

const CONFIG_B: &str = r#"
kind = "qos"
default = "bulk"
direction = "out"
class = [
    { name = "web", weight = 1, proto = "tcp", dport = 80, queue = 3000, rate = "100kbit", burst = 100 },
    { name = "bulk", priority = 1, queue = 1514, over_limit = "mark", mark_at = 0 },
]
"#;

/// Writes a frame of `medium` into `out`: an IP header around
/// `bytes[2..]`, `bytes[0]` the TOS / traffic class, `bytes[1]` picking
/// the protocol and ports; returns the frame length.
fn ip_frame(medium: LinkMedium, v4: bool, bytes: &[u8], out: &mut [u8]) -> usize {
    let Some((&[tos, sel], rest)) = bytes.split_first_chunk() else {
        return 0;
    };
    let proto = [6u8, 17, 1, 58][usize::from(sel & 3)];
    let mut payload = rest.to_vec();
    if payload.len() >= 4 && sel & 4 != 0 {
        // Ports the classes look for, and (if there is room) a UDP length
        // or TCP data offset that makes the transport header whole.
        let port = [80u16, 53, 85, 443][usize::from(sel >> 3 & 3)];
        payload[2..4].copy_from_slice(&port.to_be_bytes());
        payload[0..2].copy_from_slice(&port.to_be_bytes());
        let n = payload.len();
        match proto {
            17 if n >= 8 => payload[4..6].copy_from_slice(&(n as u16).to_be_bytes()),
            6 if n >= 20 => payload[12] = 5 << 4,
            _ => {}
        }
    }
    let (src, dst) = if v4 {
        (
            IpAddress::v4(10, 0, 0, 1),
            IpAddress::v4(10, 1, 0, sel >> 5),
        )
    } else {
        let host = |h: u8| IpAddress::v6(0xfd00, 0, 0, 0, 0, 0, 0, h.into());
        (host(1), host(sel >> 5))
    };
    IpHeader {
        tos,
        ..IpHeader::new(src, dst, IpProtocol::from(proto))
    }
    .emit_frame(medium, &payload, out)
}

/// Where the IP header is and its version, if the frame looks like IP.
fn ip_header(medium: LinkMedium, f: &[u8]) -> Option<(usize, u8)> {
    let at = match medium {
        LinkMedium::Ethernet => match f.get(12..14)? {
            [0x08, 0x00] | [0x86, 0xdd] => 14,
            _ => return None,
        },
        LinkMedium::Ip => 0,
    };
    Some((at, f.get(at)? >> 4))
}

/// The frame with the bytes QoS may change cleared: the ECN bits, and the
/// IPv4 header checksum.
fn normalized(medium: LinkMedium, f: &[u8]) -> Vec<u8> {
    let mut v = f.to_vec();
    match ip_header(medium, f) {
        Some((at, 4)) if v.len() >= at + 12 => {
            v[at + 1] &= !3;
            v[at + 10..at + 12].fill(0);
        }
        Some((at, 6)) if v.len() >= at + 2 => v[at + 1] &= !0x30,
        _ => {}
    }
    v
}

/// Whether the frame's IPv4 header checksum verifies (`None`: not IPv4).
fn checksum_ok(medium: LinkMedium, f: &[u8]) -> Option<bool> {
    let (at, 4) = ip_header(medium, f)? else {
        return None;
    };
    let hl = usize::from(*f.get(at)? & 15) * 4;
    Some(checksum::ipv4_header(f.get(at..at + hl.max(20))?) == 0)
}

fuzz_target!(|data: &[u8]| {
    let medium = if data.first().is_some_and(|b| b & 0x80 != 0) {
        LinkMedium::Ip
    } else {
        LinkMedium::Ethernet
    };
    // Parsed once: the TOML parse would dominate a run.
    static CONFIGS: OnceLock<[FunctionConfig; 2]> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| [function_config(CONFIG_A), function_config(CONFIG_B)]);
    let FunctionConfig::Qos(first) = &configs[0] else {
        unreachable!()
    };
    let mut qos = Qos::new(first.clone()).expect("fuzz config is valid");
    let mut which = 0;
    let mut now = Instant::from_secs(1);
    // Frames taken and not yet released, by their normalized bytes, with
    // whether their IPv4 checksum verified.
    let mut held: HashMap<Vec<u8>, Vec<Option<bool>>> = HashMap::new();
    let (mut taken, mut released) = (0u64, 0u64);
    let mut buf = vec![0u8; (1 << 16) + 64];
    let mut out = vec![0u8; 65550];
    for (ctl, bytes) in chunks(data.get(1..).unwrap_or(&[])) {
        let step = ctl >> 5;
        if step > 0 {
            now += Duration::from_micros(10u64.pow(u32::from(step)));
        }
        match ctl & 3 {
            from @ (0 | 1) => {
                let n = match ctl >> 3 & 3 {
                    t @ (1 | 2) => ip_frame(medium, t == 1, bytes, &mut buf),
                    _ => {
                        buf[..bytes.len()].copy_from_slice(bytes);
                        bytes.len()
                    }
                };
                let original = buf[..n].to_vec();
                let role = if from == 0 { Role::Local } else { Role::Global };
                let v = qos.on_ingress(now, role, &mut Frame::new(&mut buf, n, medium));
                match v {
                    Verdict::Consumed => {
                        taken += 1;
                        held.entry(normalized(medium, &original))
                            .or_default()
                            .push(checksum_ok(medium, &original));
                    }
                    Verdict::Pass | Verdict::Drop => {
                        // Frames not taken are not changed.
                        assert_eq!(buf[..n], original[..]);
                    }
                    other => panic!("unexpected verdict {other:?}"),
                }
            }
            2 => {
                let size = if ctl & 4 != 0 { 1600 } else { out.len() };
                for _ in 0..bytes.len().max(1) {
                    let Some(emit) = qos.poll_transmit(now, &mut out[..size]) else {
                        break;
                    };
                    assert!(emit.via.is_none());
                    assert!(emit.len <= size);
                    released += 1;
                    assert!(released <= taken, "released more frames than taken");
                    let f = &out[..emit.len];
                    let key = normalized(medium, f);
                    let sums = held
                        .get_mut(&key)
                        .expect("a released frame is one that was taken");
                    let was_ok = sums.pop().expect("taken");
                    if sums.is_empty() {
                        held.remove(&key);
                    }
                    if was_ok == Some(true) {
                        assert_eq!(checksum_ok(medium, f), Some(true), "checksum broken");
                    }
                }
            }
            _ => {
                which ^= 1;
                let applied = Function::reconfigure(&mut qos, &configs[which]);
                assert!(
                    matches!(applied, Ok(true)),
                    "a valid config applies in place: {applied:?}"
                );
            }
        }
        let queued = qos.queued_frames() as u64;
        assert!(queued <= taken - released);
        // Something to wake up for only while frames are queued.
        assert_eq!(qos.poll_at().is_some(), queued > 0);
    }
});
