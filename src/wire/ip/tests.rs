use super::*;
use crate::testing::frames;
use smoltcp::wire::{IpProtocol, TcpControl};

fn v4(a: &str) -> IpAddress {
    a.parse().unwrap()
}

#[test]
fn tcp_over_both_media() {
    let f = frames::tcp(
        (v4("10.0.0.1"), 1234),
        (v4("10.0.0.2"), 80),
        TcpControl::Syn,
        false,
        b"",
    );
    for (medium, bytes) in [(LinkMedium::Ethernet, &f[..]), (LinkMedium::Ip, &f[14..])] {
        let FrameView::Ip(v) = FrameView::parse(medium, bytes) else {
            panic!("not ip")
        };
        assert_eq!(v.l3, medium.header_len());
        assert_eq!(v.l4, v.l3 + 20);
        assert_eq!(v.end, bytes.len());
        assert_eq!(v.ports(), Some((1234, 80)));
        assert_eq!(v.tcp_flags(), Some(TcpFlags::SYN));
        assert_eq!(v.src_addr(), v4("10.0.0.1"));
        assert_eq!(v.dst_addr(), v4("10.0.0.2"));
        assert_eq!(v.hop_limit, 64);
        assert_eq!(v.fragment, Fragment::Whole);
    }
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let a: IpAddress = "fd00::1".parse().unwrap();
    let b: IpAddress = "fd00::2".parse().unwrap();
    let mut f = frames::udp((a, 5), (b, 6), b"payload");
    // Insert a destination-options header (8 bytes) before UDP.
    let udp = f.split_off(54);
    f[20] = 60; // next header: destination options
    f.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
    f.extend_from_slice(&udp);
    let plen = (8 + udp.len()) as u16;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    let FrameView::Ip(v) = FrameView::parse(LinkMedium::Ethernet, &f) else {
        panic!()
    };
    assert_eq!(v.proto, proto::UDP);
    assert_eq!(v.l4, 14 + 48);
    assert_eq!(v.ports(), Some((5, 6)));
    // A chain longer than the bound is truncated, not an error of IP.
    let mut g = f[..54].to_vec();
    g[20] = 60;
    for i in 0..=MAX_EXTENSION_HEADERS {
        let next = if i == MAX_EXTENSION_HEADERS { 17 } else { 60 };
        g.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    g.extend_from_slice(&udp);
    let plen = (g.len() - 54) as u16;
    g[18..20].copy_from_slice(&plen.to_be_bytes());
    let FrameView::Ip(v) = FrameView::parse(LinkMedium::Ethernet, &g) else {
        panic!()
    };
    assert!(v.is_truncated());
}

#[test]
fn fragments_and_truncation() {
    let (mut f, len) = frames::ipv4_frame([10, 0, 0, 1], [10, 0, 0, 2], &[0; 16], 64);
    f.truncate(len);
    // A later fragment: no transport.
    f[14 + 6] = 0x00;
    f[14 + 7] = 0x10;
    let FrameView::Ip(v) = FrameView::parse(LinkMedium::Ethernet, &f) else {
        panic!()
    };
    assert_eq!(v.fragment, Fragment::Later);
    assert_eq!(v.transport, Transport::None);
    // A UDP header whose length overruns the packet.
    f[14 + 7] = 0;
    f[34 + 4..34 + 6].copy_from_slice(&100u16.to_be_bytes());
    let FrameView::Ip(v) = FrameView::parse(LinkMedium::Ethernet, &f) else {
        panic!()
    };
    assert!(v.is_truncated());
    // Total length beyond the frame: malformed IP.
    f[14 + 3] = 200;
    assert_eq!(
        FrameView::parse(LinkMedium::Ethernet, &f),
        FrameView::Malformed
    );
}

#[test]
fn never_panics_on_prefixes_of_valid_frames() {
    let a: IpAddress = "fd00::1".parse().unwrap();
    let f = frames::tcp((a, 1), (a, 2), TcpControl::Syn, false, b"abc");
    for n in 0..f.len() {
        let _ = FrameView::parse(LinkMedium::Ethernet, &f[..n]);
        let _ = FrameView::parse(LinkMedium::Ip, &f[14..14 + n.min(f.len() - 14)]);
    }
}

#[test]
fn icmp_kinds_by_version_and_well_formed_packets() {
    for (v6, ty, kind) in [
        (false, 8, IcmpKind::EchoRequest),
        (true, 128, IcmpKind::EchoRequest),
        (false, 0, IcmpKind::EchoReply),
        (true, 129, IcmpKind::EchoReply),
        (false, 3, IcmpKind::Error),
        (false, 11, IcmpKind::Error),
        (true, 2, IcmpKind::Error),
        (true, 135, IcmpKind::Other),
        (false, 13, IcmpKind::Other),
        // Types are per version: IPv4's echo request is no ICMPv6 one.
        (true, 8, IcmpKind::Other),
        (false, 128, IcmpKind::Other),
    ] {
        assert_eq!(IcmpKind::of(v6, ty), kind, "v6 {v6} type {ty}");
    }
    // An echo's identifier is read; another message's is not.
    let (a, b) = (IpAddress::v4(10, 0, 0, 1), IpAddress::v4(10, 0, 0, 2));
    let mut ping = frames::wrap(a, b, IpProtocol::Icmp, &[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
    let v = *FrameView::parse(LinkMedium::Ethernet, &ping).ip().unwrap();
    assert_eq!(v.icmp_kind(), Some(IcmpKind::EchoRequest));
    assert_eq!(v.flow_key().sport, 0x1234);
    ping[34] = 13;
    let v = *FrameView::parse(LinkMedium::Ethernet, &ping).ip().unwrap();
    assert_eq!(
        (v.icmp_kind(), v.flow_key().sport),
        (Some(IcmpKind::Other), 0)
    );
    // What functions may work on: whole packets; ARP is not IP, a cut
    // transport header is malformed.
    assert_eq!(
        FrameView::parse(LinkMedium::Ethernet, &ping).well_formed_ip(),
        Ok(&v)
    );
    let arp = FrameView::parse(LinkMedium::Ethernet, &frames::arp());
    assert_eq!(arp.well_formed_ip(), Err(NoIp::NotIp));
    let cut = FrameView::Ip(IpView {
        transport: Transport::Truncated,
        ..v
    });
    assert_eq!(cut.well_formed_ip(), Err(NoIp::Malformed));
    assert_eq!(FrameView::Malformed.well_formed_ip(), Err(NoIp::Malformed));
}

#[test]
fn flow_keys() {
    let k = FlowKey {
        src: 2,
        dst: 1,
        sport: 10,
        dport: 20,
        proto: 6,
        v6: false,
    };
    let (c, src_lo) = k.canonical();
    assert!(!src_lo);
    assert_eq!(c, k.reversed());
    assert_eq!(k.reversed().canonical(), (c, true));
}
