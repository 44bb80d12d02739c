//! The VXLAN gateway's receive path: any datagram from a listed VTEP (the
//! input, sent over loopback to a real endpoint) becomes frames that fit
//! the network (an Ethernet header at least, the MTU at most) or counted
//! drops, never a panic; a TCP super-segment is cut into segments whose
//! payloads put together are the original's. The VXLAN header parser is
//! run on the input as well.
#![no_main]

use std::net::UdpSocket;
use std::sync::{LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;
use shmnet::adapters::Adapter;
use shmnet::adapters::vxlan::{VxlanAdapter, VxlanSettings};
use shmnet::smoltcp::wire::EthernetAddress;
use shmnet::wire::vxlan::{VxlanPacket, VxlanRepr};
use shmnet::wire::{FrameView, LinkMedium, Transport, gso};

const MTU: u32 = 1400;

/// The sending VTEP and the gateway, made once.
static PAIR: LazyLock<Mutex<(UdpSocket, VxlanAdapter, std::net::SocketAddr)>> =
    LazyLock::new(|| {
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind the peer");
        let settings = VxlanSettings {
            local: "127.0.0.1:0".parse().unwrap(),
            vni: 4242,
            remotes: vec![peer.local_addr().unwrap()],
            mtu: MTU,
            faults: Default::default(),
        };
        let gw = VxlanAdapter::open(settings, EthernetAddress([2, 0, 0, 0, 0, 1])).expect("open");
        let at = gw.local_addr().expect("bound");
        Mutex::new((peer, gw, at))
    });

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = VxlanPacket::new_checked(data) {
        let _ = VxlanRepr::parse(&p);
    }
    let mut pair = PAIR.lock().unwrap();
    let (peer, gw, at) = &mut *pair;
    if peer.send_to(data, *at).is_err() {
        return; // larger than a datagram
    }
    let cap = gw.frame_capacity();
    let mut buf = vec![0u8; cap];
    while let Some(n) = gw.recv_into(&mut buf) {
        assert!((14..=cap).contains(&n), "{n}");
    }
    // Cutting the inner frame as a super-segment keeps its payload.
    let Some(inner) = data.get(8..) else { return };
    let view = FrameView::parse(LinkMedium::Ethernet, inner);
    let Some(ip) = view.ip() else { return };
    let Transport::Tcp { header_len, .. } = ip.transport else {
        return;
    };
    let head = ip.l4 + usize::from(header_len);
    let Some(payload) = inner.get(head..ip.end) else { return };
    let per = 1 + data[0] as usize;
    let mut seg = vec![0u8; head + per];
    let mut got = Vec::new();
    let mut i = 0;
    while let Some(n) = gso::segment(gso::Offload::Tcp, LinkMedium::Ethernet, inner, per, i, &mut seg) {
        got.extend_from_slice(&seg[head.min(n)..n]);
        i += 1;
    }
    if i > 0 {
        assert_eq!(got, payload);
    }
});
