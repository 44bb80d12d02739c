//! Arbitrary frames into two devices' adapters: a raw port on each shared
//! network broadcasts the input (split into several frames) and the
//! devices are polled. Nothing may panic.
//!
//! Input: chunks `[which: u8][len: u16 LE][bytes]`; `which & 1` picks the
//! network (0: device A's local LAN, 1: the global WAN shared by A and B).
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use shmnet::shm::{Peer, Port, SegmentKind};
use shmnet::stack::Device;
use shmnet::testing::fuzz::chunks;
use shmnet::testing::{DeviceToml, raw_port};

struct Rig {
    devices: Vec<Device>,
    /// Raw ports on fz-lan and fz-wan.
    raw: [Port; 2],
    buf: Vec<u8>,
}

impl Rig {
    fn new() -> Rig {
        let a = DeviceToml::new("a", ("fz-lan", "10.0.0.1/24"), ("fz-wan", "10.100.0.1/16"));
        let b = DeviceToml::new(
            "b",
            ("fz-lan-b", "10.0.1.1/24"),
            ("fz-wan", "10.100.0.2/16"),
        );
        let dev_a = Device::new(&a.settings(), SegmentKind::Process).expect("device a");
        let dev_b = Device::new(&b.settings(), SegmentKind::Process).expect("device b");
        // Raw ports on the networks device A created.
        let lan = raw_port("fz-lan").port;
        let wan = raw_port("fz-wan").port;
        let frame = lan.segment().frame_size().max(wan.segment().frame_size());
        Rig {
            devices: vec![dev_a, dev_b],
            raw: [lan, wan],
            buf: vec![0u8; frame],
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
            for d in &mut self.devices {
                d.poll();
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
        let mut sent = 0;
        for (which, frame) in chunks(data) {
            rig.send(usize::from(which & 1), frame);
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
