use std::io::IoSlice;

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use super::rundir::{ensure_private_dir, euid};
use super::testing::sealed_region;
use super::*;
use crate::shm::layout::LinkMedium;
use crate::shm::record::MANIFEST_LEN;

/// A fresh runtime directory per test (tests run in parallel; the
/// environment is shared, so nothing here reads it).
struct TempRun(PathBuf);

impl TempRun {
    fn new() -> TempRun {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "shmnet-host-{}-{}",
            own_pid(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        rustix::fs::mkdir(&p, Mode::RWXU).unwrap();
        TempRun(p)
    }
    fn net(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempRun {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn geo(max_ports: u32) -> Geometry {
    Geometry::new(1500, LinkMedium::Ethernet, max_ports, 16).unwrap()
}

struct Member {
    host: HostMember,
    region: Region,
    bell: Doorbell,
}

fn join_with(run: &TempRun, g: &Geometry, info: &PortInfo) -> Result<Member, ShmError> {
    let bell = Doorbell::new()?;
    let (host, region) =
        HostMember::join(&run.0, "net", g, info, &bell, |i, e| sealed_region(g, i, e))?;
    Ok(Member { host, region, bell })
}

/// The error of a join that must fail.
fn refused(run: &TempRun, g: &Geometry, info: &PortInfo) -> ShmError {
    match join_with(run, g, info) {
        Ok(m) => panic!("joined as port {}", m.host.index()),
        Err(e) => e,
    }
}

fn join(run: &TempRun, name: &str) -> Member {
    join_with(run, &geo(8), &PortInfo::named(name)).unwrap()
}

fn poll(m: &mut Member) -> Vec<Event> {
    let mut out = Vec::new();
    m.host.poll(&mut out);
    out
}

/// Polls until something arrives (the kernel delivers at once; the
/// loop only covers scheduling).
fn poll_until_some(m: &mut Member) -> Vec<Event> {
    for _ in 0..200 {
        let out = poll(m);
        if !out.is_empty() {
            return out;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Vec::new()
}

fn joined(events: &[Event]) -> Vec<(u32, u32, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Joined(l) => Some((l.info.index, l.info.epoch, l.info.info.name.clone())),
            _ => None,
        })
        .collect()
}

fn left(events: &[Event]) -> Vec<(u32, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Left { index, epoch } => Some((*index, *epoch)),
            _ => None,
        })
        .collect()
}

fn is_root() -> bool {
    euid() == 0
}

#[test]
fn two_members_see_each_other_with_readable_regions() {
    let run = TempRun::new();
    let mut a = join(&run, "alpha");
    let mut b = join(&run, "beta");
    assert_eq!((a.host.index(), b.host.index()), (0, 1));
    // A accepts B's hello and answers; B's settle then sees A.
    let a_events = poll_until_some(&mut a);
    assert_eq!(joined(&a_events), vec![(1, b.host.epoch(), "beta".into())]);
    let mut ev = Vec::new();
    b.host.settle(Duration::from_secs(5), &mut ev);
    assert_eq!(joined(&ev), vec![(0, a.host.epoch(), "alpha".into())]);
    let Event::Joined(link) = &ev[0] else {
        unreachable!()
    };
    assert_eq!(link.info.owner_pid, own_pid());
    // The view is A's memory, read-only: its header parses, and a byte
    // A writes later is what B reads.
    let mut header = vec![0u8; HEADER_LEN];
    assert!(link.view.read(0, &mut header));
    let h = HeaderRepr::parse(&PortHeader::new_unchecked(&header[..]), link.view.len()).unwrap();
    assert_eq!((h.index, h.epoch, h.geo), (0, a.host.epoch(), geo(8)));
    let off = geo(8).buffer_off(3);
    assert!(a.region.write(off, b"frame"));
    let mut got = [0u8; 5];
    assert!(link.view.read(off, &mut got));
    assert_eq!(&got, b"frame");
    // A holds B's doorbell: ringing it wakes B.
    let Event::Joined(b_link) = &a_events[0] else {
        unreachable!()
    };
    b_link.doorbell.ring();
    let mut word = [0u8; 8];
    assert_eq!(rustix::io::read(b.bell.fd(), &mut word), Ok(8));
    assert_eq!(u64::from_ne_bytes(word), 1);
    let stats = a.host.stats();
    assert_eq!((stats.peers_joined, stats.hellos_rejected), (1, 0));
    // Nothing more happens while nobody moves.
    assert!(poll(&mut a).is_empty() && poll(&mut b).is_empty());
}

#[test]
fn dropping_a_member_is_seen_as_left_and_the_last_removes_the_network() {
    let run = TempRun::new();
    let mut a = join(&run, "alpha");
    let b = join(&run, "beta");
    assert_eq!(joined(&poll_until_some(&mut a)).len(), 1);
    let (b_index, b_epoch) = (b.host.index(), b.host.epoch());
    drop(b);
    assert_eq!(left(&poll_until_some(&mut a)), vec![(b_index, b_epoch)]);
    assert_eq!(a.host.stats().peers_left, 1);
    assert!(!run.net("net").join("port-1.sock").exists());
    assert!(!run.net("net").join("port-1.rec").exists());
    assert!(run.net("net").join("manifest").exists());
    // The index is free again, with a new epoch.
    let b2 = join(&run, "beta");
    assert_eq!(b2.host.index(), 1);
    assert_ne!(b2.host.epoch(), b_epoch);
    drop(b2);
    drop(a);
    assert!(
        !run.net("net").exists(),
        "the last leaver removes the directory"
    );
}

#[test]
fn describe_lists_live_ports_and_remove_if_unused_keeps_live_networks() {
    let run = TempRun::new();
    let mut a = join(&run, "alpha");
    let (g, ports) = describe_in(&run.0, "net").unwrap();
    assert_eq!(g, geo(8));
    assert_eq!(ports.len(), 1);
    assert_eq!((ports[0].index, ports[0].owner_pid), (0, own_pid()));
    assert_eq!(ports[0].info.name, "alpha");
    assert_eq!(list_networks_in(&run.0).unwrap(), vec!["net".to_string()]);
    assert!(!remove_if_unused_in(&run.0, "net").unwrap());
    // describe's probe connection is no peer: nothing joined, nothing
    // counted as rejected.
    assert!(poll(&mut a).is_empty());
    assert_eq!(a.host.stats().hellos_rejected, 0);
    assert!(matches!(
        describe_in(&run.0, "other"),
        Err(ShmError::NotFound { .. })
    ));
    drop(a);
    assert!(!remove_if_unused_in(&run.0, "net").unwrap(), "already gone");
}

#[test]
fn a_geometry_mismatch_names_the_field_and_both_values() {
    let run = TempRun::new();
    let _a = join(&run, "alpha");
    let err = refused(&run, &geo(16), &PortInfo::named("beta"));
    match err {
        ShmError::ParameterMismatch {
            field,
            found,
            requested,
            ..
        } => assert_eq!((field, found, requested), ("max_ports", 8, 16)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_clash_names_the_holder() {
    let run = TempRun::new();
    let mut info = PortInfo::named("alpha");
    info.ipv4 = Some([10, 0, 0, 2]);
    let _a = join_with(&run, &geo(8), &info).unwrap();
    let mut other = PortInfo::named("beta");
    other.ipv4 = Some([10, 0, 0, 2]);
    let err = refused(&run, &geo(8), &other);
    let holder = format!("device alpha (pid {})", own_pid());
    match &err {
        ShmError::AddressInUse {
            what, holder: h, ..
        } => {
            assert_eq!(
                (what.as_str(), h.as_str()),
                ("IPv4 address 10.0.0.2", holder.as_str())
            )
        }
        other => panic!("{other:?}"),
    }
    let err = refused(&run, &geo(8), &PortInfo::named("alpha"));
    assert!(
        matches!(&err, ShmError::AddressInUse { what, .. } if what == "device name \"alpha\""),
        "{err}"
    );
    // Refused joins leave nothing behind.
    let files = std::fs::read_dir(run.net("net")).unwrap().count();
    assert_eq!(files, 4, "lock, manifest, port-0.sock, port-0.rec");
}

#[test]
fn a_failed_first_join_leaves_no_directory() {
    let run = TempRun::new();
    let bell = Doorbell::new().unwrap();
    let g = geo(8);
    let info = PortInfo::named("a");
    let err = HostMember::join(&run.0, "net", &g, &info, &bell, |_, _| {
        Err(ShmError::InvalidParameter("no memory today".into()))
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("no memory today"), "{err}");
    assert!(!run.net("net").exists());
    // A region peers could not map is refused before it is published.
    let err = HostMember::join(&run.0, "net", &g, &info, &bell, |_, _| {
        Region::anonymous(g.region_len())
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("memfd"), "{err}");
    assert!(!run.net("net").exists());
}

#[test]
fn a_full_network_names_max_ports() {
    let run = TempRun::new();
    let g = geo(2);
    let _a = join_with(&run, &g, &PortInfo::named("a")).unwrap();
    let _b = join_with(&run, &g, &PortInfo::named("b")).unwrap();
    let err = refused(&run, &g, &PortInfo::named("c"));
    assert!(matches!(err, ShmError::Full { max_ports: 2, .. }), "{err}");
    assert!(err.to_string().contains("max_ports"), "{err}");
}

#[test]
fn the_files_of_a_dead_process_are_reaped() {
    let run = TempRun::new();
    let dir = run.net("net");
    ensure_private_dir(&dir).unwrap();
    // Port 0's process died: its socket file stays, nobody listens.
    let sock = seqpacket_socket().unwrap();
    let path = dir.join("port-0.sock");
    rustix::net::bind(&sock, &SocketAddrUnix::new(&path).unwrap()).unwrap();
    rustix::net::listen(&sock, 1).unwrap();
    rustix::fs::chmod(&path, Mode::RUSR | Mode::WUSR).unwrap();
    drop(sock);
    let mut rec = [0u8; RECORD_LEN];
    RecordRepr {
        index: 0,
        epoch: 5,
        pid: 999_999,
        info: PortInfo::named("ghost"),
    }
    .emit(&mut PortRecord::new_unchecked(&mut rec[..]));
    write_private(&dir.join("port-0.rec"), &rec);
    write_private(&dir.join("port-3.rec"), &rec); // orphan record
    write_private(&dir.join("manifest.tmp"), b"half"); // crashed writer
    // The ghost's name is free again, and so is its index.
    let mut a = join(&run, "ghost");
    assert_eq!(a.host.index(), 0);
    assert!(!dir.join("port-3.rec").exists() && !dir.join("manifest.tmp").exists());
    assert!(poll(&mut a).is_empty());
}

/// Writes a file as shmnet would (0600).
fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

fn corrupt_manifest(dir: &Path) {
    write_private(&dir.join("manifest"), &[0x5a; MANIFEST_LEN]);
}

#[test]
fn a_corrupt_manifest_is_refused_while_ports_live_and_replaced_when_none_do() {
    let run = TempRun::new();
    let a = join(&run, "alpha");
    corrupt_manifest(&run.net("net"));
    let err = refused(&run, &geo(8), &PortInfo::named("beta"));
    assert!(
        matches!(&err, ShmError::Corrupt { why, .. } if why.contains("not replaced")),
        "{err}"
    );
    assert_eq!(
        std::fs::read(run.net("net").join("manifest")).unwrap(),
        [0x5a; MANIFEST_LEN],
        "never replaced under live ports"
    );
    drop(a);
    // No live port: a leftover, replaced.
    ensure_private_dir(&run.net("net")).unwrap();
    corrupt_manifest(&run.net("net"));
    let _b = join(&run, "beta");
    let (g, _) = describe_in(&run.0, "net").unwrap();
    assert_eq!(g, geo(8));
}

#[test]
fn a_corrupt_record_of_a_live_port_is_reported() {
    let run = TempRun::new();
    let _a = join(&run, "alpha");
    let rec = run.net("net").join("port-0.rec");
    let mut bytes = std::fs::read(&rec).unwrap();
    bytes[60] ^= 0xff;
    write_private(&rec, &bytes);
    let err = refused(&run, &geo(8), &PortInfo::named("beta"));
    assert!(
        matches!(&err, ShmError::Corrupt { why, .. } if why.contains("port 0")),
        "{err}"
    );
}

#[test]
fn bad_names_and_long_paths_are_refused() {
    let run = TempRun::new();
    for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
        assert!(matches!(
            check_network_name(bad),
            Err(ShmError::InvalidParameter(_))
        ));
    }
    let deep = run.0.join("d".repeat(80));
    rustix::fs::mkdir(&deep, Mode::RWXU).unwrap();
    let bell = Doorbell::new().unwrap();
    let g = geo(8);
    let err = HostMember::join(&deep, "net", &g, &PortInfo::named("a"), &bell, |i, e| {
        sealed_region(&g, i, e)
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("SHMNET_RUNTIME_DIR"), "{err}");
    let mut long = PortInfo::named("a");
    long.name = "n".repeat(65);
    assert!(matches!(
        refused(&run, &g, &long),
        ShmError::InvalidParameter(_)
    ));
}

#[test]
fn a_directory_of_another_user_or_open_to_others_is_refused() {
    let run = TempRun::new();
    // Ours but 0755.
    let open = run.0.join("open");
    rustix::fs::mkdir(&open, Mode::RWXU).unwrap();
    rustix::fs::chmod(&open, Mode::from_bits_retain(0o755)).unwrap();
    match ensure_private_dir(&open) {
        Err(ShmError::NotOwned { mode: 0o755, .. }) => {}
        other => panic!("{other:?}"),
    }
    // A link to a directory of ours is not a directory of ours.
    let link = run.0.join("link");
    std::os::unix::fs::symlink(&run.0, &link).unwrap();
    assert!(ensure_private_dir(&link).is_err());
    if !is_root() {
        eprintln!("skipped the other-user cases: they need root to chown");
        return;
    }
    let theirs = run.0.join("theirs");
    rustix::fs::mkdir(&theirs, Mode::RWXU).unwrap();
    std::fs::write(theirs.join("keep"), b"nobody's").unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let err = ensure_private_dir(&theirs).unwrap_err();
    assert!(
        matches!(&err, ShmError::NotOwned { owner, .. } if owner == "uid 65534 (nobody)"),
        "{err}"
    );
    // As a runtime directory, and as a network's directory.
    let g = geo(8);
    let bell = Doorbell::new().unwrap();
    let err = HostMember::join(&theirs, "net", &g, &PortInfo::named("a"), &bell, |i, e| {
        sealed_region(&g, i, e)
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("nobody"), "{err}");
    let squatted = run.net("net");
    rustix::fs::mkdir(&squatted, Mode::RWXU).unwrap();
    std::os::unix::fs::chown(&squatted, Some(65534), Some(65534)).unwrap();
    let err = refused(&run, &g, &PortInfo::named("a"));
    assert!(err.to_string().contains("nobody"), "{err}");
    assert!(matches!(
        remove_if_unused_in(&run.0, "net"),
        Err(ShmError::NotOwned { .. })
    ));
    assert!(
        theirs.join("keep").exists() && squatted.exists(),
        "nothing of nobody's removed"
    );
    // A file of theirs inside our network's directory: refused, kept.
    let _ = std::fs::remove_dir(&squatted);
    let _a = join(&run, "alpha");
    let planted = run.net("net").join("port-5.sock");
    std::fs::write(&planted, b"").unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    let err = refused(&run, &g, &PortInfo::named("b"));
    assert!(err.to_string().contains("nobody"), "{err}");
    assert!(planted.exists());
}

// ---- hostile hellos -------------------------------------------------

/// Connects to port `index` of the test network as a peer would.
fn connect(run: &TempRun, index: u32) -> OwnedFd {
    let fd = seqpacket_socket().unwrap();
    let addr = SocketAddrUnix::new(run.net("net").join(format!("port-{index}.sock"))).unwrap();
    rustix::net::connect(&fd, &addr).unwrap();
    fd
}

fn send(fd: &OwnedFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4)) + 8];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    rustix::net::sendmsg(
        fd,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .unwrap();
}

fn record(index: u32, epoch: u32, name: &str) -> [u8; RECORD_LEN] {
    let mut rec = [0u8; RECORD_LEN];
    RecordRepr {
        index,
        epoch,
        pid: 1,
        info: PortInfo::named(name),
    }
    .emit(&mut PortRecord::new_unchecked(&mut rec[..]));
    rec
}

/// Did the other end close the connection (after reading our hello)?
fn closed(fd: &OwnedFd) -> bool {
    for _ in 0..200 {
        let mut b = [0u8; 256];
        match rustix::net::recv(fd, &mut b, rustix::net::RecvFlags::DONTWAIT) {
            Ok((0, _)) => return true,
            Ok(_) => return false, // an answer: accepted
            Err(Errno::AGAIN) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn hostile_hellos_are_rejected_and_counted() {
    let run = TempRun::new();
    let mut a = join(&run, "alpha");
    let g = geo(8);
    let bell = Doorbell::new().unwrap();
    let good = sealed_region(&g, 2, 77).unwrap();
    let unsealed = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&unsealed, g.region_len() as u64).unwrap();
    let small = Region::sealed_memfd("small", g.region_len() / 2).unwrap();
    // Same size (1480 + 14 still fits 1536-byte frames), other MTU.
    let other_geo = Geometry::new(1480, LinkMedium::Ethernet, 8, 16).unwrap();
    assert_eq!(other_geo.region_len(), g.region_len());
    let other = sealed_region(&other_geo, 2, 77).unwrap();
    let (_pipe_r, pipe_w) = std::io::pipe().unwrap();
    let rec = record(2, 77, "mallory");
    let good_fds = [good.fd().unwrap(), bell.fd()];
    let mut garbage = rec;
    garbage[0] = b'X';
    let cases: Vec<(&str, Vec<u8>, Vec<BorrowedFd<'_>>)> = vec![
        ("bad record", garbage.to_vec(), good_fds.to_vec()),
        ("short hello", rec[..100].to_vec(), good_fds.to_vec()),
        ("no fds", rec.to_vec(), vec![]),
        ("one fd", rec.to_vec(), vec![good.fd().unwrap()]),
        (
            "three fds",
            rec.to_vec(),
            vec![good.fd().unwrap(), bell.fd(), bell.fd()],
        ),
        (
            "unsealed memfd",
            rec.to_vec(),
            vec![unsealed.as_fd(), bell.fd()],
        ),
        (
            "wrong size",
            rec.to_vec(),
            vec![small.fd().unwrap(), bell.fd()],
        ),
        (
            "wrong geometry",
            rec.to_vec(),
            vec![other.fd().unwrap(), bell.fd()],
        ),
        (
            "pipe doorbell",
            rec.to_vec(),
            vec![good.fd().unwrap(), pipe_w.as_fd()],
        ),
        (
            "our own index",
            record(0, 77, "m").to_vec(),
            good_fds.to_vec(),
        ),
        (
            "header disagrees",
            record(3, 77, "m").to_vec(),
            good_fds.to_vec(),
        ),
        (
            "index past max_ports",
            record(9, 77, "m").to_vec(),
            good_fds.to_vec(),
        ),
    ];
    let n = cases.len() as u64;
    for (what, bytes, fds) in cases {
        let conn = connect(&run, 0);
        send(&conn, &bytes, &fds);
        assert!(poll_until_rejected(&mut a).is_empty(), "{what}: no event");
        assert!(closed(&conn), "{what}: connection closed");
    }
    let s = a.host.stats();
    assert_eq!((s.hellos_rejected, s.peers_joined), (n, 0));
    // A good hello with 40 trailing bytes joins; the tail is counted,
    // and so is a second message on the same connection.
    let conn = connect(&run, 0);
    let mut long = rec.to_vec();
    long.extend_from_slice(&[7; 40]);
    send(&conn, &long, &good_fds);
    let ev = poll_until_some(&mut a);
    assert_eq!(joined(&ev), vec![(2, 77, "mallory".into())]);
    assert!(!closed(&conn), "answered with A's hello");
    send(&conn, b"chatter", &[bell.fd()]);
    std::thread::sleep(Duration::from_millis(20));
    assert!(poll(&mut a).is_empty());
    assert_eq!(a.host.stats().extra_bytes, 47);
    // The same port again is a duplicate; a new epoch at index 2
    // replaces it: Left for the old first.
    let dup = connect(&run, 0);
    send(&dup, &long, &good_fds);
    assert!(poll_until_rejected(&mut a).is_empty());
    assert!(closed(&dup));
    let newer = sealed_region(&g, 2, 78).unwrap();
    let again = connect(&run, 0);
    send(
        &again,
        &record(2, 78, "mallory"),
        &[newer.fd().unwrap(), bell.fd()],
    );
    let ev = poll_until_some(&mut a);
    assert_eq!(left(&ev), vec![(2, 77)]);
    assert_eq!(joined(&ev), vec![(2, 78, "mallory".into())]);
    assert!(matches!(ev[0], Event::Left { .. }), "Left comes first");
    // The replaced connection's hang-up is not a second Left.
    drop(conn);
    std::thread::sleep(Duration::from_millis(20));
    assert!(poll(&mut a).is_empty());
    drop(again);
    assert_eq!(left(&poll_until_some(&mut a)), vec![(2, 78)]);
}

/// Polls until the rejection counter moves (or a while passes).
fn poll_until_rejected(m: &mut Member) -> Vec<Event> {
    let before = m.host.stats().hellos_rejected;
    let mut all = Vec::new();
    for _ in 0..200 {
        all.extend(poll(m));
        if m.host.stats().hellos_rejected > before {
            return all;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no rejection counted");
}

#[test]
fn the_lock_times_out_naming_its_path() {
    let run = TempRun::new();
    let net = Network::new(&run.0, "net").unwrap();
    let _held = net.lock(JOIN_LOCK_WAIT, true).unwrap().unwrap();
    match net.lock(Duration::from_millis(50), true) {
        Err(ShmError::LockTimeout { path, .. }) => assert!(path.ends_with("net/lock")),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let pid = std::fs::read_to_string(net.lock_path()).unwrap();
    assert_eq!(pid.trim(), own_pid().to_string());
}

#[test]
fn members_in_threads_all_meet() {
    // Twelve ports joining from twelve threads at once end on one
    // network, each seeing the eleven others.
    let run = std::sync::Arc::new(TempRun::new());
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(12));
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let (run, barrier) = (run.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut m = join_with(&run, &geo(16), &PortInfo::named(&format!("d{i}"))).unwrap();
                let mut seen = std::collections::BTreeSet::new();
                let deadline = Instant::now() + Duration::from_secs(10);
                while seen.len() < 11 && Instant::now() < deadline {
                    for e in poll(&mut m) {
                        if let Event::Joined(l) = e {
                            seen.insert(l.info.index);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                barrier.wait(); // nobody leaves before all have met
                (m.host.index(), seen.len())
            })
        })
        .collect();
    let mut indices: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    indices.sort();
    assert_eq!(indices, (0..12).map(|i| (i, 11)).collect::<Vec<_>>());
    assert!(!run.net("net").exists());
}
