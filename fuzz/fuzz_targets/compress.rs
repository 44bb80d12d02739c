//! The compression function: IPComp header parse → emit → parse, and
//! arbitrary frames into both directions of a compressor. Never panics; a
//! frame never outgrows its buffer; what it compresses, it restores.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmnet::functions::compress::{Compress, CompressConfig, IpCompPacket, IpCompRepr};
use shmnet::functions::{Frame, Function, Role, Verdict};
use shmnet::wire::LinkMedium;
use smoltcp::time::Instant;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = IpCompPacket::new_checked(data)
        && let Ok(repr) = IpCompRepr::parse(&p)
    {
        let mut buf = [0u8; 4];
        repr.emit(&mut IpCompPacket::new_unchecked(&mut buf[..]));
        let again = IpCompRepr::parse(&IpCompPacket::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(repr, again);
    }
    let Some((&sel, frame)) = data.split_first() else {
        return;
    };
    // `sel & 1`: a jumbo buffer; `sel & 2`: the IP medium (no link header).
    let cap = if sel & 1 == 0 { 1536 } else { 9024 };
    let medium = if sel & 2 == 0 {
        LinkMedium::Ethernet
    } else {
        LinkMedium::Ip
    };
    let l3 = medium.header_len();
    let mut c = Compress::new(CompressConfig::default()).unwrap();
    let mut d = Compress::new(CompressConfig::default()).unwrap();
    for from in [Role::Local, Role::Global] {
        let mut buf = vec![0u8; cap.max(frame.len())];
        buf[..frame.len()].copy_from_slice(frame);
        let mut f = Frame::new(&mut buf, frame.len(), medium);
        let v = c.on_ingress(Instant::ZERO, from, &mut f);
        assert!(f.len() <= f.capacity());
        if from == Role::Local && v == Verdict::Modified {
            // What the compressor changed, the decompressor restores: the
            // whole IP packet (bytes after it, such as Ethernet padding,
            // are not part of it and are not carried), with a freshly
            // computed IPv4 header checksum.
            let len = f.len();
            let mut f2 = Frame::new(&mut buf, len, medium);
            assert_eq!(
                d.on_ingress(Instant::ZERO, Role::Global, &mut f2),
                Verdict::Modified
            );
            assert!(f2.len() >= l3 + 20 && f2.len() <= frame.len());
            let (mut got, mut want) = (f2.bytes().to_vec(), frame[..f2.len()].to_vec());
            if want[l3] >> 4 == 4 {
                got[l3 + 10..l3 + 12].fill(0);
                want[l3 + 10..l3 + 12].fill(0);
            }
            assert_eq!(got, want);
        }
    }
});
