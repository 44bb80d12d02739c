//! Ring descriptor: parse → emit → parse round trip against a geometry
//! chosen by the input; parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmnet::shm::layout::{
    DESC_LEN, Descriptor, DescriptorRepr, Geometry, LinkMedium, MTU_MAX, MTU_MIN,
};

fuzz_target!(|data: &[u8]| {
    // Input: [mtu: u32 LE][region: u16 LE][descriptor bytes...]
    if data.len() < 6 {
        return;
    }
    let mtu = u32::from_le_bytes(data[..4].try_into().unwrap()).clamp(MTU_MIN, MTU_MAX);
    let region = u16::from_le_bytes(data[4..6].try_into().unwrap()) as u32;
    let geo = Geometry::new(mtu, LinkMedium::Ethernet, 8, 64)
        .expect("clamped MTU gives a valid geometry");
    let Ok(d) = Descriptor::new_checked(&data[6..]) else {
        return;
    };
    let Ok(repr) = DescriptorRepr::parse(&d, &geo, region) else {
        return;
    };
    let mut buf = [0u8; DESC_LEN];
    assert_eq!(repr.buffer_len(), buf.len());
    repr.emit(&mut Descriptor::new_unchecked(&mut buf[..]), &geo);
    let d2 = Descriptor::new_checked(&buf[..]).expect("16 bytes");
    let again = DescriptorRepr::parse(&d2, &geo, region).expect("emitted descriptor parses");
    assert_eq!(repr, again);
});
