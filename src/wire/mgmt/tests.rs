use std::io::Write;
use std::time::Duration;

use super::key::decode_hex;
use super::*;

fn key() -> Key {
    Key::new(b"0123456789abcdef-test-key").unwrap()
}

fn request(body: &[u8]) -> MgmtRepr<'_> {
    MgmtRepr {
        kind: Kind::Request,
        op: Op::Config as u8,
        status: 0,
        client: 0xdead_beef,
        seq: 42,
        time_ms: 1_700_000_000_123,
        body,
    }
}

/// A unique path in the temporary directory, removed first.
fn temp_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("shmnet-mgmt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn header_bytes_follow_the_layout() {
    let msg = seal(&request(b"hi"), &key()).unwrap();
    assert_eq!(msg.len(), 32 + 2 + 32);
    assert_eq!(
        &msg[..34],
        &[
            b'S', b'N', b'M', b'G', 1, 1, 3, 0, // magic, version, kind, op, status
            0xde, 0xad, 0xbe, 0xef, // client
            0, 0, 0, 0, 0, 0, 0, 42, // seq
            0, 0, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x7b, // time_ms
            0, 0, 0, 2, // body_len
            b'h', b'i',
        ][..]
    );
    let p = MgmtPacket::new_checked(&msg[..]).unwrap();
    assert_eq!(p.body(), b"hi");
    assert_eq!(p.total_len(), msg.len());
    assert_eq!(p.tag(), &key().derive_bytes(&msg[..34])[..]);
}

#[test]
fn round_trip_of_every_op_and_status() {
    let k = key();
    for op in Op::ALL {
        let mut r = request(b"{\"x\": 1}");
        r.op = *op as u8;
        let msg = seal(&r, &k).unwrap();
        assert_eq!(open(&msg, &k).unwrap(), r);
        assert_eq!(open(&msg, &k).unwrap().known_op(), Some(*op));
        assert_eq!(Op::from_name(op.name()), Some(*op));
    }
    for status in Status::ALL {
        let r = MgmtRepr {
            kind: Kind::Response,
            status: *status as u8,
            ..request(b"")
        };
        assert_eq!(open(&seal(&r, &k).unwrap(), &k).unwrap(), r);
    }
    // An unknown op still parses, so the agent can say so.
    let r = MgmtRepr {
        op: 200,
        ..request(b"")
    };
    let msg = seal(&r, &k).unwrap();
    let got = open(&msg, &k).unwrap();
    assert_eq!((got.op, got.known_op()), (200, None));
}

#[test]
fn any_flipped_byte_is_refused() {
    let k = key();
    let msg = seal(&request(b"set qos 10mbit"), &k).unwrap();
    for i in 0..msg.len() {
        for bit in [0x01, 0x80] {
            let mut m = msg.clone();
            m[i] ^= bit;
            assert!(open(&m, &k).is_err(), "byte {i} bit {bit:#x}");
        }
    }
}

#[test]
fn wrong_key_is_refused() {
    let msg = seal(&request(b"x"), &key()).unwrap();
    let other = Key::new(b"0123456789abcdef-other-key").unwrap();
    assert!(matches!(open(&msg, &other), Err(MgmtError::BadTag)));
}

#[test]
fn every_truncation_and_trailing_bytes_are_refused() {
    let k = key();
    let msg = seal(&request(b"counters please"), &k).unwrap();
    for n in 0..msg.len() {
        assert!(
            matches!(open(&msg[..n], &k), Err(MgmtError::Truncated)),
            "{n}"
        );
        assert!(MgmtPacket::new_checked(&msg[..n]).is_err());
    }
    let mut long = msg.clone();
    long.push(0);
    assert!(matches!(
        open(&long, &k),
        Err(MgmtError::TrailingBytes { extra: 1 })
    ));
}

#[test]
fn bad_header_fields_are_named() {
    let k = key();
    let msg = seal(&request(b""), &k).unwrap();
    let with = |i: usize, v: u8| {
        let mut m = msg.clone();
        m[i] = v;
        open(&m, &k).unwrap_err()
    };
    assert!(matches!(with(0, b'X'), MgmtError::BadMagic));
    assert!(matches!(with(4, 2), MgmtError::BadVersion { version: 2 }));
    assert!(matches!(with(5, 3), MgmtError::BadKind { kind: 3 }));
    // A request with a status, even correctly tagged, is refused.
    let mut m = msg.clone();
    let mut p = MgmtPacket::new_unchecked(&mut m[..]);
    p.set_status(1);
    p.fill_tag(&k);
    assert!(matches!(
        open(&m, &k),
        Err(MgmtError::BadStatus { status: 1 })
    ));
}

#[test]
fn frame_len_waits_for_the_header_and_refuses_early() {
    let msg = seal(&request(b"0123456789"), &key()).unwrap();
    for n in 0..HEADER_LEN {
        assert_eq!(frame_len(&msg[..n]).unwrap(), None, "{n}");
    }
    for n in HEADER_LEN..=msg.len() {
        assert_eq!(frame_len(&msg[..n]).unwrap(), Some(msg.len()));
    }
    // Refused at the first wrong byte, before the header is complete.
    assert!(matches!(frame_len(b"SNX"), Err(MgmtError::BadMagic)));
    assert!(matches!(
        frame_len(b"SNMG\x07"),
        Err(MgmtError::BadVersion { .. })
    ));
    // A body over the limit is refused from the header alone.
    let mut big = msg[..HEADER_LEN].to_vec();
    big[28..32].copy_from_slice(&((MAX_BODY + 1) as u32).to_be_bytes());
    assert!(matches!(
        frame_len(&big),
        Err(MgmtError::TooLong { len }) if len == MAX_BODY + 1
    ));
    big[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(frame_len(&big), Err(MgmtError::TooLong { .. })));
    big[28..32].copy_from_slice(&(MAX_BODY as u32).to_be_bytes());
    assert_eq!(
        frame_len(&big).unwrap(),
        Some(HEADER_LEN + MAX_BODY + TAG_LEN)
    );
}

#[test]
fn seal_refuses_an_oversized_body() {
    let body = vec![b'a'; MAX_BODY + 1];
    assert!(matches!(
        seal(&request(&body), &key()),
        Err(MgmtError::TooLong { .. })
    ));
}

#[test]
fn keys_check_length_hide_in_debug_and_derive_hmac() {
    assert!(matches!(Key::new(b"short"), Err(MgmtError::BadKey(_))));
    let k = Key::new(&[0x0b; 20]).unwrap();
    assert_eq!(format!("{k:?}"), "Key(<20 bytes>)");
    // RFC 4231 test case 1.
    assert_eq!(
        Key::new(&[0x0b; 20]).unwrap().derive("Hi There").to_vec(),
        decode_hex(b"b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7").unwrap()
    );
    assert_ne!(k.derive("http-token"), k.derive("other"));
    let r = Key::random().unwrap();
    assert_eq!(r.to_hex().len(), 64);
    assert_ne!(r.to_hex(), Key::random().unwrap().to_hex());
}

/// Devices of one run start together and all load-or-create the same
/// file: each must end with the one key in it, never an empty file.
#[test]
fn racing_creators_and_readers_all_get_the_one_key() {
    let p = temp_path("raced");
    let keys: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| match Key::create_file(&p) {
                    Ok(k) => k.to_hex(),
                    Err(_) if p.exists() => Key::from_file(&p).unwrap().to_hex(),
                    Err(e) => panic!("{e}"),
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    let dir = p.parent().unwrap();
    let stem = p.file_name().unwrap().to_string_lossy().into_owned();
    let drafts = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&stem) && n.ends_with(".new")
        })
        .count();
    assert_eq!(drafts, 0, "drafts left beside the key");
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn key_files_are_created_private_and_read_back() {
    use std::os::unix::fs::PermissionsExt;
    let p = temp_path("created");
    let k = Key::create_file(&p).unwrap();
    let mode = std::fs::metadata(&p).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        format!("{}\n", k.to_hex())
    );
    assert_eq!(Key::from_file(&p).unwrap().to_hex(), k.to_hex());
    // Never overwritten.
    assert!(matches!(Key::create_file(&p), Err(MgmtError::Io { .. })));

    // A group-readable file is refused with the fix in the message.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = Key::from_file(&p).unwrap_err();
    assert!(e.to_string().contains("chmod 600"), "{e}");
    assert!(e.to_string().contains(&*p.to_string_lossy()), "{e}");
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn key_files_hold_hex_or_raw_bytes() {
    use std::os::unix::fs::OpenOptionsExt;
    let write = |name: &str, text: &[u8]| {
        let p = temp_path(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .unwrap();
        f.write_all(text).unwrap();
        p
    };
    // Hex, with whitespace around: decoded.
    let p = write("hex", b"  00112233445566778899AABBCCDDEEFF\n");
    assert_eq!(
        Key::from_file(&p).unwrap().to_hex(),
        "00112233445566778899aabbccddeeff"
    );
    std::fs::remove_file(&p).unwrap();
    // Not hex (or too short to be taken as hex): the raw bytes.
    let p = write("raw", b"a passphrase, long enough\n");
    let k = Key::from_file(&p).unwrap();
    assert_eq!(
        k.to_hex(),
        Key::new(b"a passphrase, long enough").unwrap().to_hex()
    );
    std::fs::remove_file(&p).unwrap();
    // Too short: the error names the file.
    let p = write("short", b"tiny\n");
    let e = Key::from_file(&p).unwrap_err();
    assert!(e.to_string().contains(&*p.to_string_lossy()), "{e}");
    std::fs::remove_file(&p).unwrap();
    // Missing: the error names the file.
    let e = Key::from_file(temp_path("missing")).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

const NOW: u64 = 1_700_000_000_000;

#[test]
fn replay_guard_accepts_increasing_and_refuses_replays() {
    let mut g = ReplayGuard::default();
    g.check(1, 1, NOW, NOW).unwrap();
    g.check(1, 2, NOW, NOW + 1).unwrap();
    assert!(matches!(
        g.check(1, 2, NOW, NOW + 2),
        Err(MgmtError::Replayed { client: 1, seq: 2 })
    ));
    assert!(matches!(
        g.check(1, 1, NOW, NOW + 2),
        Err(MgmtError::Replayed { .. })
    ));
    // Another client has its own sequence.
    g.check(2, 1, NOW, NOW).unwrap();
    g.check(1, 10, NOW, NOW + 3).unwrap();
    assert_eq!(g.counters().replayed, 2);
}

#[test]
fn replay_guard_refuses_stale_both_ways() {
    let mut g = ReplayGuard::default();
    let w = 30_000;
    g.check(1, 1, NOW - w, NOW).unwrap();
    g.check(1, 2, NOW + w, NOW).unwrap();
    assert!(matches!(
        g.check(1, 3, NOW - w - 1, NOW),
        Err(MgmtError::Stale { skew_ms: 30_001 })
    ));
    assert!(matches!(
        g.check(1, 4, NOW + w + 1, NOW),
        Err(MgmtError::Stale { .. })
    ));
    assert_eq!(g.counters().stale, 2);
}

#[test]
fn forgetting_a_client_never_lets_a_replay_through() {
    let mut g = ReplayGuard::default();
    // Sent with a clock 30 s ahead: fresh until NOW + 60 s.
    g.check(1, 5, NOW + 30_000, NOW).unwrap();
    assert!(matches!(
        g.check(1, 5, NOW + 30_000, NOW + 59_000),
        Err(MgmtError::Replayed { .. })
    ));
    // Once forgotten, the old message is stale anyway.
    assert!(matches!(
        g.check(1, 5, NOW + 30_000, NOW + 60_001),
        Err(MgmtError::Stale { .. })
    ));
}

#[test]
fn replay_guard_table_is_bounded_and_frees_quiet_clients() {
    let mut g = ReplayGuard::new(Duration::from_secs(30), 4);
    for c in 0..4 {
        g.check(c, 1, NOW, NOW).unwrap();
    }
    assert!(matches!(
        g.check(9, 1, NOW, NOW + 1),
        Err(MgmtError::TooManyClients)
    ));
    assert_eq!(g.counters().too_many_clients, 1);
    // Known clients go on.
    g.check(3, 2, NOW, NOW + 1).unwrap();
    // Once the others have been quiet past the window, new ones fit.
    g.check(3, 3, NOW + 40_000, NOW + 40_000).unwrap();
    g.check(9, 1, NOW + 40_000, NOW + 40_000).unwrap();
    assert_eq!(g.clients(), 2);
    for c in 100..10_000 {
        let _ = g.check(c, 1, NOW + 40_000, NOW + 40_000);
    }
    assert_eq!(g.clients(), 4);
}

#[test]
fn replay_guard_takes_extreme_values() {
    let mut g = ReplayGuard::default();
    for (t, now) in [(0, u64::MAX), (u64::MAX, 0), (u64::MAX, u64::MAX), (0, 0)] {
        for seq in [0, 1, u64::MAX] {
            let _ = g.check(u32::MAX, seq, t, now);
        }
    }
    let mut g = ReplayGuard::new(Duration::MAX, 1);
    g.check(0, u64::MAX, u64::MAX, 0).unwrap();
    assert!(g.check(0, u64::MAX, 0, u64::MAX).is_err());
    assert!(matches!(
        g.check(1, 0, 0, u64::MAX),
        Err(MgmtError::TooManyClients)
    ));
}

impl Key {
    /// HMAC of arbitrary bytes, for the tests' fixtures.
    fn derive_bytes(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}
