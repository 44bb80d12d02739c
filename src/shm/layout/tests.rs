use super::*;

fn geo() -> Geometry {
    Geometry::new(1500, LinkMedium::Ethernet, 8, 64).unwrap()
}

fn header() -> HeaderRepr {
    HeaderRepr {
        geo: geo(),
        index: 3,
        epoch: 77,
        pid: 42,
    }
}

#[test]
fn header_round_trip() {
    let h = header();
    let mut buf = vec![0u8; HEADER_LEN];
    h.emit_published(&mut PortHeader::new_unchecked(&mut buf[..]));
    let back = HeaderRepr::parse(
        &PortHeader::new_checked(&buf[..]).unwrap(),
        h.geo.region_len(),
    )
    .unwrap();
    assert_eq!(back, h);
    assert_eq!(h.geo.frame_size, 1536);
    assert_eq!(h.geo.ring_slots, 64);
    assert_eq!(h.geo.region_len() % 4096, 0);
}

#[test]
fn header_rejects_garbage() {
    let h = header();
    let mut buf = vec![0u8; HEADER_LEN];
    h.emit(&mut PortHeader::new_unchecked(&mut buf[..]));
    let p = PortHeader::new_unchecked(&buf[..]);
    assert!(matches!(
        HeaderRepr::parse(&p, usize::MAX),
        Err(ShmError::NotReady)
    ));
    h.emit_published(&mut PortHeader::new_unchecked(&mut buf[..]));
    // Mapping smaller than the header claims.
    assert!(matches!(
        HeaderRepr::parse(&PortHeader::new_unchecked(&buf[..]), 4096),
        Err(ShmError::Corrupt { .. })
    ));
    // Tampered offset.
    buf[field::header::POOL_OFF] ^= 1;
    assert!(HeaderRepr::parse(&PortHeader::new_unchecked(&buf[..]), usize::MAX).is_err());
    buf[field::header::POOL_OFF] ^= 1;
    buf[field::header::VERSION] = 9;
    assert!(matches!(
        HeaderRepr::parse(&PortHeader::new_unchecked(&buf[..]), usize::MAX),
        Err(ShmError::VersionMismatch { found: 9, .. })
    ));
    assert!(PortHeader::new_checked(&buf[..10]).is_err());
}

#[test]
fn mtu_limits() {
    assert!(matches!(
        Geometry::new(575, LinkMedium::Ip, 8, 64),
        Err(ShmError::MtuOutOfRange { mtu: 575 })
    ));
    assert!(Geometry::new(65536, LinkMedium::Ip, 8, 64).is_err());
    assert!(Geometry::new(65535, LinkMedium::Ethernet, 8, 64).is_ok());
}

#[test]
fn a_mismatch_names_the_first_differing_parameter() {
    let a = geo();
    assert_eq!(a.mismatch(&a), None);
    let b = Geometry::new(1500, LinkMedium::Ethernet, 16, 64).unwrap();
    assert_eq!(a.mismatch(&b), Some(("max_ports", 8, 16)));
    let c = Geometry::new(9000, LinkMedium::Ethernet, 8, 64).unwrap();
    assert_eq!(a.mismatch(&c), Some(("mtu", 1500, 9000)));
}

#[test]
fn header_checksum_catches_what_the_geometry_checks_cannot() {
    let h = header();
    let mut buf = vec![0u8; HEADER_LEN];
    h.emit_published(&mut PortHeader::new_unchecked(&mut buf[..]));
    // MTU 1500 -> 1499 still fits the 1536-byte frames, so only the
    // checksum notices; so does a changed epoch.
    for at in [field::header::MTU, field::header::EPOCH] {
        let mut bad = buf.clone();
        bad[at] ^= 1;
        match HeaderRepr::parse(&PortHeader::new_unchecked(&bad[..]), usize::MAX) {
            Err(ShmError::Corrupt { why, .. }) => assert_eq!(why, "header checksum"),
            other => panic!("byte {at} flipped: {other:?}"),
        }
    }
    // The version and the sleeping flag are outside the sum.
    buf[field::header::SLEEPING] = 1;
    assert_eq!(
        HeaderRepr::parse(&PortHeader::new_unchecked(&buf[..]), usize::MAX).unwrap(),
        h
    );
}

#[test]
fn descriptor_fixture() {
    let g = geo();
    // flags 0, region 3, length 60, offset 2 buffers in, metadata 7.
    let mut bytes = [0u8; 16];
    NativeEndian::write_u16(&mut bytes[2..], 3);
    NativeEndian::write_u32(&mut bytes[4..], 60);
    NativeEndian::write_u32(&mut bytes[8..], 2 * 1536);
    NativeEndian::write_u32(&mut bytes[12..], 7);
    let d = Descriptor::new_checked(&bytes[..]).unwrap();
    let r = DescriptorRepr::parse(&d, &g, 3).unwrap();
    assert_eq!(
        r,
        DescriptorRepr {
            region: 3,
            buffer: 2,
            length: 60,
            metadata: 7
        }
    );
    let mut out = [0u8; 16];
    r.emit(&mut Descriptor::new_unchecked(&mut out[..]), &g);
    assert_eq!(out, bytes);
    // Wrong region, misaligned offset, oversize length, past the pool.
    assert!(DescriptorRepr::parse(&d, &g, 4).is_err());
    NativeEndian::write_u32(&mut bytes[8..], 100);
    assert!(DescriptorRepr::parse(&Descriptor::new_unchecked(&bytes[..]), &g, 3).is_err());
    NativeEndian::write_u32(&mut bytes[8..], 64 * 1536);
    assert!(DescriptorRepr::parse(&Descriptor::new_unchecked(&bytes[..]), &g, 3).is_err());
    NativeEndian::write_u32(&mut bytes[8..], 0);
    NativeEndian::write_u32(&mut bytes[4..], 1537);
    assert!(DescriptorRepr::parse(&Descriptor::new_unchecked(&bytes[..]), &g, 3).is_err());
}

#[test]
fn descriptor_flags() {
    let g = geo();
    let mut bytes = [0u8; 16];
    let r = DescriptorRepr {
        region: 1,
        buffer: 3,
        length: 64,
        metadata: 0,
    };
    r.emit(&mut Descriptor::new_unchecked(&mut bytes[..]), &g);
    assert_eq!(
        Descriptor::new_unchecked(&bytes[..]).flags(),
        DescFlags::empty()
    );
    assert_eq!(bytes[..2], [0, 0]);
    let mut d = Descriptor::new_unchecked(&mut bytes[..]);
    d.set_flags(DescFlags::NEXT);
    assert!(matches!(
        DescriptorRepr::parse(&d, &g, 1),
        Err(ShmError::BadDescriptor("chained buffers"))
    ));
    d.set_flags(DescFlags::from_bits_retain(0x8000));
    assert!(matches!(
        DescriptorRepr::parse(&d, &g, 1),
        Err(ShmError::BadDescriptor("unknown flags"))
    ));
    d.set_flags(DescFlags::empty());
    assert_eq!(DescriptorRepr::parse(&d, &g, 1).unwrap(), r);
}
