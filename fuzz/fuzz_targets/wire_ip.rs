//! The one parsed view of a frame (`wire::FrameView`): parsing any bytes
//! as either medium never panics, every offset it reports lies inside the
//! frame in order, a TCP header it reports fits the packet, the flow key's
//! canonical form is the same from both ends, the NIC's MSS clamp leaves
//! the packet's structure as it was, and so does filling in every checksum
//! (as a TAP port does for Linux).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmnet::wire::{FlowKey, FrameView, LinkMedium, Transport, checksum, tcp};

fuzz_target!(|data: &[u8]| {
    for medium in [LinkMedium::Ethernet, LinkMedium::Ip] {
        let view = FrameView::parse(medium, data);
        let FrameView::Ip(v) = view else {
            continue;
        };
        assert_eq!(v.l3, medium.header_len());
        assert!(
            v.l3 <= v.l4 && v.l4 <= v.end && v.end <= data.len(),
            "{v:?}"
        );
        if let Transport::Tcp { header_len, .. } = v.transport {
            assert!(v.l4 + usize::from(header_len) <= v.end, "{v:?}");
        }
        let key = v.flow_key();
        let (c, _) = key.canonical();
        assert_eq!(c, key.reversed().canonical().0);
        if let Some(quoted) = data.get(v.l4 + 8..v.end) {
            let _ = FlowKey::from_quoted(v.v6, quoted);
        }
        let _ = v.nd_target(data);
        // Clamping the MSS of a TCP segment (as the NIC does) changes an
        // option value and the checksum, never what the parser sees of the
        // packet's structure.
        let mut copy = data.to_vec();
        if matches!(v.transport, Transport::Tcp { .. })
            && let Some(seg) = copy.get_mut(v.l4..v.end)
            && tcp::clamp_mss(seg, 536, data.last().is_some_and(|b| b & 1 == 1))
        {
            let FrameView::Ip(w) = FrameView::parse(medium, &copy) else {
                panic!("clamping broke the IP header: {v:?}");
            };
            assert_eq!((w.l4, w.end, w.proto), (v.l4, v.end, v.proto));
        }
        let mut filled = data.to_vec();
        if checksum::fill_all(medium, &mut filled) {
            let FrameView::Ip(w) = FrameView::parse(medium, &filled) else {
                panic!("filling checksums broke the IP header: {v:?}");
            };
            assert_eq!((w.l4, w.end, w.proto), (v.l4, v.end, v.proto));
        }
    }
});
