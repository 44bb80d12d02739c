//! Arbitrary frames into two devices' adapters: a raw port on each shared
//! network broadcasts the input (split into several frames) and the
//! devices are polled on a virtual clock (`NetDevice::poll_at`), so a crash
//! replays the same way. Nothing may panic.
//!
//! Input: chunks `[which: u8][len: u16 LE][bytes]`; `which & 1` picks the
//! network (0: device A's local LAN, 1: the global WAN shared by A and B).
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use shmnet::config::DeviceConfig;
use shmnet::shm::{NetworkParams, Peer, Port, PortInfo, Segment, SegmentKind};
use shmnet::stack::NetDevice;
use smoltcp::time::Instant;

const DEV_A: &str = r#"
name = "a"
local = { segment = "fz-lan", address = "10.0.0.1/24" }
global = { segment = "fz-wan", address = "10.100.0.1/16" }
"#;

const DEV_B: &str = r#"
name = "b"
local = { segment = "fz-lan-b", address = "10.0.1.1/24" }
global = { segment = "fz-wan", address = "10.100.0.2/16" }
"#;

struct Rig {
    devices: Vec<NetDevice>,
    /// Raw ports on fz-lan and fz-wan.
    raw: [Port; 2],
    buf: Vec<u8>,
    /// Virtual time, in milliseconds.
    clock: i64,
}

fn raw_port(segment: &str, params: &NetworkParams) -> Port {
    let seg = Segment::open_or_create(segment, SegmentKind::InProcess, params).expect("segment");
    seg.attach(&PortInfo::named("raw")).expect("attach raw")
}

impl Rig {
    fn new() -> Rig {
        let a = DeviceConfig::from_toml(DEV_A, "fuzz-a").expect("config a");
        let b = DeviceConfig::from_toml(DEV_B, "fuzz-b").expect("config b");
        let dev_a = NetDevice::new(&a, SegmentKind::InProcess).expect("device a");
        let dev_b = NetDevice::new(&b, SegmentKind::InProcess).expect("device b");
        let lan = raw_port(&a.local.segment, &a.local.params());
        let wan = raw_port(&a.global.segment, &a.global.params());
        let frame = lan.segment().frame_size().max(wan.segment().frame_size());
        Rig {
            devices: vec![dev_a, dev_b],
            raw: [lan, wan],
            buf: vec![0u8; frame],
            clock: 0,
        }
    }

    fn send(&mut self, which: usize, frame: &[u8]) {
        let port = &mut self.raw[which];
        let me = port.index();
        let peers: Vec<Peer> = port
            .segment()
            .peers()
            .into_iter()
            .filter(|p| p.index != me)
            .map(|p| Peer {
                index: p.index,
                epoch: p.epoch,
            })
            .collect();
        let Some(mut tx) = port.alloc() else {
            // Pool exhausted: let the devices catch up.
            port.flush();
            return;
        };
        let dst = port.buffer_mut(&mut tx);
        let n = frame.len().min(dst.len());
        dst[..n].copy_from_slice(&frame[..n]);
        if n == 0 {
            port.release(tx);
            return;
        }
        port.send(tx, n, &peers);
        port.flush();
    }

    fn pump(&mut self) {
        for _ in 0..4 {
            self.clock += 1;
            for d in &mut self.devices {
                d.poll_at(Instant::from_millis(self.clock));
            }
            for p in &mut self.raw {
                // Whatever the devices answer is discarded.
                for _ in 0..1024 {
                    if p.recv_into(&mut self.buf).is_none() {
                        break;
                    }
                }
                p.flush();
            }
        }
    }
}

thread_local! {
    static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    RIG.with(|rig| {
        let mut rig = rig.borrow_mut();
        let rig = rig.get_or_insert_with(Rig::new);
        let mut rest = data;
        let mut sent = 0;
        while let [which, l0, l1, tail @ ..] = rest {
            let len = (u16::from_le_bytes([*l0, *l1]) as usize).min(tail.len());
            let (frame, next) = tail.split_at(len);
            rest = next;
            rig.send(*which as usize & 1, frame);
            sent += 1;
            if sent % 8 == 0 {
                rig.pump();
            }
        }
        if sent == 0 {
            // Too short to be chunked: the whole input is one LAN frame.
            rig.send(0, data);
        }
        rig.pump();
    });
});
