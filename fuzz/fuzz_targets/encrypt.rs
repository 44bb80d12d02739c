//! Arbitrary frames into both sides of an ESP tunnel end, plus the ESP
//! header's parse → emit → parse round trip. Nothing may panic, a frame
//! never outgrows its buffer, and what decapsulates is a whole IP packet.
//!
//! Input: chunks `[ctl: u8][len: u16 LE][bytes]`. `ctl & 1` picks the side
//! (0: from the client network, encapsulated; 1: from the hop, decapsulated),
//! `ctl & 2` first seals the chunk with the peer's SA so decapsulation gets
//! past the ICV (exercising replay window, trailer and inner checks),
//! `ctl & 4` frames the chunk for the IP medium instead of Ethernet. The
//! hop's MTU (1400) is below the client network's (1500), as the device
//! would tell the function when attached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmnet::functions::encrypt::{Encrypt, EncryptConfig, EspPacket, EspRepr, SaConfig};
use shmnet::functions::{Frame, Function, LinkInfo, Role, Verdict};
use shmnet::testing::fuzz::chunks;
use shmnet::wire::LinkMedium;
use smoltcp::time::Instant;

const KEY_A: &str = "feffe9928665731c6d6a8f9467308308cafebabe";
const KEY_B: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f01020304";

fn end(local: [u8; 4], peer: [u8; 4], out: (u32, &str), inb: (u32, &str)) -> Encrypt {
    let sa = |(spi, key): (u32, &str)| SaConfig {
        spi,
        key: Some(key.into()),
        key_file: None,
    };
    Encrypt::new(EncryptConfig {
        local_address: local.into(),
        peer_address: peer.into(),
        hop: Role::Global,
        outbound: sa(out),
        inbound: vec![sa(inb)],
        replay_window: 32,
    })
    .unwrap()
    .with_link(LinkInfo {
        medium: LinkMedium::Ethernet,
        local_mtu: 1500,
        global_mtu: 1400,
        checksums: true,
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let p = EspPacket::new_unchecked(&data[..8]);
        if let Ok(repr) = EspRepr::parse(&p) {
            let mut buf = [0u8; 8];
            repr.emit(&mut EspPacket::new_unchecked(&mut buf[..]));
            assert_eq!(
                EspRepr::parse(&EspPacket::new_checked(&buf[..]).unwrap()),
                Ok(repr)
            );
        }
    }
    let mut e1 = end(
        [10, 2, 0, 1],
        [10, 2, 0, 2],
        (0x1001, KEY_A),
        (0x2002, KEY_B),
    );
    let mut e2 = end(
        [10, 2, 0, 2],
        [10, 2, 0, 1],
        (0x2002, KEY_B),
        (0x1001, KEY_A),
    );
    let now = Instant::from_millis(0);
    for (ctl, chunk) in chunks(data) {
        let medium = [LinkMedium::Ethernet, LinkMedium::Ip][usize::from(ctl >> 2 & 1)];
        let l3 = medium.header_len();
        let mut buf = vec![0u8; l3 + 1500];
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        let mut f = Frame::new(&mut buf, n, medium);
        if ctl & 1 == 0 {
            if e1.on_ingress(now, Role::Local, &mut f) == Verdict::Modified {
                // ESP never exceeds the hop's MTU.
                assert!(f.len() <= l3 + 1400);
            }
            assert!(f.len() <= f.capacity());
            continue;
        }
        if ctl & 2 != 0 {
            // Seal with e1 so e2 sees an authentic packet.
            if e1.on_ingress(now, Role::Local, &mut f) != Verdict::Modified {
                continue;
            }
        }
        if e2.on_ingress(now, Role::Global, &mut f) == Verdict::Modified {
            // A whole IP packet, exactly as long as the frame.
            let len = f.len();
            let again = Frame::new(f.buffer_mut(), len, medium);
            let v = again.ip().expect("decapsulated an IP packet");
            assert_eq!(v.end, len);
        }
        assert!(f.len() <= f.capacity());
    }
});
