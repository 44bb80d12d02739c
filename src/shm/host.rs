//! Membership between processes: how a port finds the other ports of its
//! network, hands them its region and doorbell, and learns that one died.
//!
//! Everything lives in a per-user runtime directory ([`runtime_dir`]:
//! `$SHMNET_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/shmnet`, else
//! `/tmp/shmnet-<euid>`), which must be a directory of ours closed to
//! others (0700); so must everything in it, and nothing that is not ours
//! is ever removed. A name squatted by another user is refused, naming
//! them. One subdirectory per network:
//!
//! ```text
//! RUNDIR/NAME/lock              flock'ed around join, leave and inspection; holds the holder's pid
//! RUNDIR/NAME/manifest          the network's geometry (record.rs), written by the first port
//! RUNDIR/NAME/port-<i>.sock     port i's listening SOCK_SEQPACKET socket
//! RUNDIR/NAME/port-<i>.rec      port i's record: index, epoch, pid, name, addresses (record.rs)
//! ```
//!
//! Joining, under the lock (at most 5 s, then [`ShmError::LockTimeout`]):
//! connect to every `port-*.sock`: a port is live iff that succeeds, and a
//! refused connection means its process is gone, so its files are reaped.
//! Then check the manifest (a corrupt or different one is only replaced
//! when no port is live), refuse a device name or address a live port
//! holds, take the lowest free index, create the region, bind our socket,
//! write our record, and send our *hello* on every connection made: the
//! record's 128 bytes with `SCM_RIGHTS` [region memfd, doorbell eventfd].
//! Each port answers a joiner's hello with its own on the same connection,
//! so every pair of ports shares exactly one connection, made by the later
//! of the two.
//!
//! A hello is checked before anyone uses it: the kernel's SO_PEERCRED says
//! the peer is our user (and gives its pid; the record's pid is never
//! trusted), the record parses, exactly two fds came, the memfd is sealed
//! and of the geometry's size, and the region header it maps parses with
//! our geometry and the record's index and epoch. A bad hello closes the
//! connection and is counted, never a panic.
//!
//! Liveness comes from the kernel: a process that exits or is killed
//! closes its sockets, its peers see the hang-up ([`Event::Left`]), and the
//! next joiner finds its socket refusing connections. Nothing here needs a
//! timer: while nobody joins or leaves, membership costs no work, whatever
//! the size of the network.
//! Leaving closes the sockets, then under the lock removes the port's files
//! and, if it was the last port, the network's directory.
//!
//! [`HostMember`] is the crate's handle on all this; the `testing` face
//! below exposes it to tests:
//!
//! ```
//! # #[cfg(feature = "testing")] {
//! use std::os::unix::fs::DirBuilderExt;
//! use std::time::Duration;
//! use shmnet::shm::host_testing::{TestEvent, TestMember};
//! let dir = std::env::temp_dir().join(format!("shmnet-doc-host-{}", std::process::id()));
//! std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
//! let mut a = TestMember::join(Some(&dir), "lab", "a", None, 8).unwrap();
//! let mut b = TestMember::join(Some(&dir), "lab", "b", None, 8).unwrap();
//! a.wait(Duration::from_secs(1)); // B's hello arrived
//! assert!(matches!(a.poll()[..], [TestEvent::Joined { index: 1, .. }]));
//! // B waits for the answers of the ports it found at join.
//! assert!(matches!(b.settle(Duration::from_secs(1))[..], [TestEvent::Joined { index: 0, .. }]));
//! drop(b);
//! a.wait(Duration::from_secs(1));
//! assert!(matches!(a.poll()[..], [TestEvent::Left { index: 1, .. }]));
//! drop(a); // the last port removes the network's directory
//! assert!(!dir.join("lab").exists());
//! std::fs::remove_dir(&dir).unwrap();
//! # }
//! ```

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, epoll};
use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use super::ShmError;
use super::layout::{Geometry, HEADER_LEN, HeaderRepr, MAX_PORTS_LIMIT, PortHeader};
use super::member::{Doorbell, Event, PeerInfo, PeerLink, PortInfo};
use super::record::{MANIFEST_LEN, Manifest, ManifestRepr, PortRecord, RECORD_LEN, RecordRepr};
use super::region::{PeerView, Region};
use crate::counters::{bump, counter_set};

/// How long a join waits for the network's lock before giving up.
const JOIN_LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long leaving waits; past it the files stay for the next joiner to reap.
const LEAVE_LOCK_WAIT: Duration = Duration::from_secs(1);
const LOCK_RETRY: Duration = Duration::from_millis(5);
/// How long a join retries a port whose accept queue is full (a stopped
/// process) before refusing to join without it.
const CONNECT_WAIT: Duration = Duration::from_secs(1);
/// Longest socket path: `sun_path` is 108 bytes including the final NUL.
const SUN_PATH_MAX: usize = 107;
/// The longest network name (it names a directory and is part of socket paths).
pub const NETWORK_NAME_MAX: usize = 64;
/// Every port of a network may connect at once; the kernel caps it at
/// `net.core.somaxconn`.
const BACKLOG: i32 = MAX_PORTS_LIMIT as i32;
/// Largest hello read; anything past a record is counted and ignored.
const HELLO_BUF: usize = 512;
/// File descriptors a hello may carry before it is refused (2 expected).
const MAX_FDS: usize = 4;
/// Work per `poll`, so one chatty or flooding peer cannot starve the port.
const MESSAGES_PER_POLL: usize = 8;
const ACCEPTS_PER_POLL: usize = 64;
const EVENTS_PER_WAIT: usize = 64;

/// epoll tokens: the doorbell, the listener, then one per connection
/// (never reused, so a stale event cannot hit a newer connection).
const TOKEN_DOORBELL: u64 = 0;
const TOKEN_LISTENER: u64 = 1;
const FIRST_CONNECTION: u64 = 2;

counter_set! {
    /// What a port's membership saw, for `shmnet` stats and tests.
    pub struct HostCounters => HostStats {
        /// Hellos (or connections) refused: another user, a bad record,
        /// wrong fds, an unsealed or wrongly sized region, another
        /// geometry, a duplicate.
        hellos_rejected,
        /// Peers that passed every check (`Event::Joined`).
        peers_joined,
        /// Joined peers whose connection hung up or that were replaced by a
        /// newer attachment at their index (`Event::Left`).
        peers_left,
        /// Bytes after a hello, or in messages after it, ignored.
        extra_bytes,
    }
}

fn io_err(what: impl Into<String>, e: impl Into<std::io::Error>) -> ShmError {
    ShmError::Io {
        what: what.into(),
        source: e.into(),
    }
}

/// The reason inside a parse error, without the "segment is corrupt" frame.
fn reason(e: ShmError) -> String {
    match e {
        ShmError::Corrupt { why, .. } => why,
        other => other.to_string(),
    }
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn own_pid() -> u32 {
    rustix::process::getpid().as_raw_pid() as u32
}

/// `uid N (name)`, the name from /etc/passwd if it has one.
fn owner_name(uid: u32) -> String {
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut f = line.split(':');
                let name = f.next()?;
                let _password = f.next()?;
                (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
            })
        });
    match name {
        Some(n) => format!("uid {uid} ({n})"),
        None => format!("uid {uid}"),
    }
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::Directory => "directory",
        FileType::RegularFile => "regular file",
        FileType::Socket => "socket",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        _ => "device or unknown file",
    }
}

/// Ours, of the expected kind, and closed to others. The owner is checked
/// first so that a link or file another user planted is named as theirs.
fn check_private(path: &Path, st: &rustix::fs::Stat, kind: FileType) -> Result<(), ShmError> {
    let mode = st.st_mode & 0o7777;
    let not_owned = || ShmError::NotOwned {
        path: path.display().to_string(),
        owner: owner_name(st.st_uid),
        mode,
    };
    if st.st_uid != euid() {
        return Err(not_owned());
    }
    let actual = FileType::from_raw_mode(st.st_mode);
    if actual != kind {
        return Err(io_err(
            format!(
                "{} is a {} where shmnet expects a {}; remove it",
                path.display(),
                kind_name(actual),
                kind_name(kind)
            ),
            std::io::Error::other("unexpected file type"),
        ));
    }
    if mode & 0o077 != 0 {
        return Err(not_owned());
    }
    Ok(())
}

/// Makes `path` (0700) unless it exists, then checks it without following
/// links. A concurrent mkdir (EEXIST) or rmdir (the last leaver) just
/// means looking again.
fn ensure_private_dir(path: &Path) -> Result<(), ShmError> {
    for _ in 0..100 {
        match rustix::fs::lstat(path) {
            Ok(st) => return check_private(path, &st, FileType::Directory),
            Err(Errno::NOENT) => match rustix::fs::mkdir(path, Mode::RWXU) {
                Ok(()) | Err(Errno::EXIST) => continue,
                Err(e) => return Err(io_err(format!("create {}", path.display()), e)),
            },
            Err(e) => return Err(io_err(format!("inspect {}", path.display()), e)),
        }
    }
    Err(io_err(
        format!("{} keeps disappearing", path.display()),
        std::io::Error::other("directory removed repeatedly"),
    ))
}

/// Where the runtime directory is, before any check.
fn runtime_dir_path() -> PathBuf {
    if let Some(d) = std::env::var_os("SHMNET_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return d.into();
    }
    // XDG says a relative value must be ignored.
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| Path::new(x).is_absolute()) {
        return Path::new(&x).join("shmnet");
    }
    PathBuf::from(format!("/tmp/shmnet-{}", euid()))
}

/// The per-user runtime directory: `$SHMNET_RUNTIME_DIR` if set, else
/// `$XDG_RUNTIME_DIR/shmnet`, else `/tmp/shmnet-<euid>`. Created 0700 if
/// missing; refused ([`ShmError::NotOwned`], naming the owner) unless it is
/// a directory (not a link) of ours with no access for others.
pub(crate) fn runtime_dir() -> Result<PathBuf, ShmError> {
    let dir = runtime_dir_path();
    ensure_private_dir(&dir)?;
    Ok(dir)
}

/// Network names are file names: 1 to 64 of `A-Z a-z 0-9 . _ -`, not
/// starting with a dot.
pub(crate) fn check_network_name(name: &str) -> Result<(), ShmError> {
    let ok = !name.is_empty()
        && name.len() <= NETWORK_NAME_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ShmError::InvalidParameter(format!(
            "network name {:?}: use 1 to {NETWORK_NAME_MAX} of A-Z a-z 0-9 . _ - (not starting with '.')",
            super::quote(name)
        )))
    }
}

/// A file's identity, to tell "our file" from one that replaced it.
type FileId = (u64, u64);

fn file_id(path: &Path) -> Option<FileId> {
    rustix::fs::lstat(path)
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}

/// Who the kernel says is at the other end of a Unix socket.
#[derive(Debug, Clone, Copy)]
struct Cred {
    pid: u32,
    uid: u32,
}

// SO_PEERCRED reports pid 0 for a peer in another pid namespace, which
// rustix's non-zero `Pid` cannot hold: the ports of a network must share a
// pid namespace (they share a runtime directory, so they normally do).
fn peer_cred(fd: BorrowedFd<'_>) -> Result<Cred, Errno> {
    let c = rustix::net::sockopt::socket_peercred(fd)?;
    Ok(Cred {
        pid: c.pid.as_raw_pid() as u32,
        uid: c.uid.as_raw(),
    })
}

fn seqpacket_socket() -> Result<OwnedFd, ShmError> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| io_err("create a Unix socket", e))
}

/// Sends a hello: the record and `SCM_RIGHTS` [region, doorbell].
fn send_hello(
    fd: BorrowedFd<'_>,
    hello: &[u8; RECORD_LEN],
    region: BorrowedFd<'_>,
    doorbell: BorrowedFd<'_>,
) -> Result<(), Errno> {
    let fds = [region, doorbell];
    // Slack for the alignment `new` may skip.
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2)) + 8];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(Errno::NOBUFS);
    }
    // NOSIGNAL: a peer that just died must not kill us with SIGPIPE.
    let sent = rustix::net::sendmsg(
        fd,
        &[IoSlice::new(hello)],
        &mut control,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )?;
    if sent == RECORD_LEN {
        Ok(())
    } else {
        Err(Errno::MSGSIZE)
    }
}

/// One message read from a connection.
struct Message {
    bytes: [u8; HELLO_BUF],
    len: usize,
    /// The message was longer than [`HELLO_BUF`].
    truncated: bool,
    fds: Vec<OwnedFd>,
    /// More fds came than [`MAX_FDS`] (the kernel closed the rest).
    fds_truncated: bool,
}

enum Received {
    Message(Box<Message>),
    Nothing,
    Closed,
}

fn receive(fd: BorrowedFd<'_>) -> Received {
    let mut msg = Box::new(Message {
        bytes: [0; HELLO_BUF],
        len: 0,
        truncated: false,
        fds: Vec::new(),
        fds_truncated: false,
    });
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS)) + 8];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        fd,
        &mut [IoSliceMut::new(&mut msg.bytes)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    );
    match got {
        // End of stream (or an empty message, which no shmnet sends).
        Ok(r) if r.bytes == 0 => Received::Closed,
        Ok(r) => {
            msg.len = r.bytes.min(HELLO_BUF);
            msg.truncated = r.flags.contains(ReturnFlags::TRUNC);
            msg.fds_truncated = r.flags.contains(ReturnFlags::CTRUNC);
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = m {
                    msg.fds.extend(fds);
                }
            }
            Received::Message(msg)
        }
        Err(Errno::AGAIN) | Err(Errno::INTR) => Received::Nothing,
        Err(_) => Received::Closed,
    }
}

/// A doorbell is written from the data path: a pipe or socket passed
/// instead of an eventfd could block every send once full, so it must be
/// non-blocking and, where /proc says, an eventfd.
fn check_doorbell(fd: &OwnedFd) -> Result<(), String> {
    let flags = rustix::fs::fcntl_getfl(fd).map_err(|e| format!("doorbell: {e}"))?;
    if !flags.contains(OFlags::NONBLOCK) {
        return Err("doorbell is a blocking file".into());
    }
    if let Ok(link) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        && link != Path::new("anon_inode:[eventfd]")
    {
        return Err(format!("doorbell is {}, not an eventfd", link.display()));
    }
    Ok(())
}

/// A fresh epoch: unique per attachment with overwhelming probability,
/// never 0 (a ring whose epoch is 0 is for nobody).
fn fresh_epoch(index: u32) -> u32 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = foldhash::fast::RandomState::default().hash_one((
        now,
        own_pid(),
        index,
        SERIAL.fetch_add(1, Ordering::Relaxed),
    ));
    ((h ^ (h >> 32)) as u32).max(1)
}

/// `port-<i><suffix>` → `i` (canonical decimal below the ports limit).
fn port_file_index(name: &str, suffix: &str) -> Option<u32> {
    let digits = name.strip_prefix("port-")?.strip_suffix(suffix)?;
    if digits.is_empty()
        || digits.len() > 4
        || (digits.len() > 1 && digits.starts_with('0'))
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    digits.parse().ok().filter(|&i| i < MAX_PORTS_LIMIT)
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// The network's lock; released when the fd closes.
struct NetLock {
    _fd: OwnedFd,
}

/// What the manifest file holds.
enum ManifestState {
    Absent,
    Valid(Geometry),
    Corrupt(String),
}

/// A port that accepted our connection while we held the lock.
struct LivePort {
    index: u32,
    conn: OwnedFd,
    cred: Cred,
    record: RecordRepr,
}

/// One network's directory and the files in it.
#[derive(Clone)]
struct Network {
    name: String,
    dir: PathBuf,
}

impl Network {
    /// Checks the name, and `rundir` as [`runtime_dir`] does (callers
    /// may pass any directory).
    fn new(rundir: &Path, name: &str) -> Result<Network, ShmError> {
        check_network_name(name)?;
        ensure_private_dir(rundir)?;
        Ok(Network {
            name: name.to_owned(),
            dir: rundir.join(name),
        })
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }
    fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest")
    }
    fn sock_path(&self, index: u32) -> PathBuf {
        self.dir.join(format!("port-{index}.sock"))
    }
    fn rec_path(&self, index: u32) -> PathBuf {
        self.dir.join(format!("port-{index}.rec"))
    }

    fn corrupt(&self, why: String) -> ShmError {
        ShmError::Corrupt {
            name: self.name.clone(),
            why,
        }
    }

    /// Takes the network's lock, polling for at most `wait`. With `create`
    /// the directory is made if missing; without, `None` means there is no
    /// such network.
    fn lock(&self, wait: Duration, create: bool) -> Result<Option<NetLock>, ShmError> {
        let start = Instant::now();
        let path = self.lock_path();
        let timeout = || ShmError::LockTimeout {
            path: path.display().to_string(),
            waited: start.elapsed(),
        };
        loop {
            if create {
                ensure_private_dir(&self.dir)?;
            } else {
                match rustix::fs::lstat(&self.dir) {
                    Ok(st) => check_private(&self.dir, &st, FileType::Directory)?,
                    Err(Errno::NOENT) => return Ok(None),
                    Err(e) => return Err(io_err(format!("inspect {}", self.dir.display()), e)),
                }
            }
            let fd = match rustix::fs::open(
                &path,
                OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            ) {
                Ok(fd) => fd,
                // The last leaver removed the directory after we looked.
                Err(Errno::NOENT) if start.elapsed() < wait => continue,
                Err(Errno::NOENT) => return Err(timeout()),
                Err(e) => return Err(io_err(format!("open {}", path.display()), e)),
            };
            let st = rustix::fs::fstat(&fd).map_err(|e| io_err("stat the lock", e))?;
            check_private(&path, &st, FileType::RegularFile)?;
            loop {
                match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                    Ok(()) => break,
                    Err(Errno::WOULDBLOCK) | Err(Errno::INTR) => {
                        if start.elapsed() >= wait {
                            return Err(timeout());
                        }
                        std::thread::sleep(LOCK_RETRY);
                    }
                    Err(e) => return Err(io_err(format!("lock {}", path.display()), e)),
                }
            }
            // The last leaver unlinks the lock file while holding it: the
            // file we now hold may no longer be the network's.
            if file_id(&path) != Some((st.st_dev, st.st_ino)) {
                continue;
            }
            // For operators: who holds it (`cat lock`).
            let _ = rustix::fs::ftruncate(&fd, 0);
            let _ = rustix::io::pwrite(&fd, format!("{}\n", own_pid()).as_bytes(), 0);
            return Ok(Some(NetLock { _fd: fd }));
        }
    }

    /// Removes a file of ours; refuses (and keeps) anyone else's.
    fn reap(&self, path: &Path) -> Result<(), ShmError> {
        match rustix::fs::lstat(path) {
            Ok(st) if st.st_uid != euid() => Err(ShmError::NotOwned {
                path: path.display().to_string(),
                owner: owner_name(st.st_uid),
                mode: st.st_mode & 0o7777,
            }),
            Ok(_) => match rustix::fs::unlink(path) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(io_err(format!("remove {}", path.display()), e)),
            },
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io_err(format!("inspect {}", path.display()), e)),
        }
    }

    /// Reads a small private file; `None` if it does not exist.
    fn read_file(&self, path: &Path, max: usize) -> Result<Option<Vec<u8>>, ShmError> {
        // NONBLOCK: a FIFO planted here must not hang us.
        let fd = match rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            // O_NOFOLLOW met a link: refused, naming its owner if not us.
            Err(Errno::LOOP) => {
                let st = rustix::fs::lstat(path)
                    .map_err(|e| io_err(format!("inspect {}", path.display()), e))?;
                return Err(check_private(path, &st, FileType::RegularFile)
                    .err()
                    .unwrap_or_else(|| io_err(format!("open {}", path.display()), Errno::LOOP)));
            }
            Err(e) => return Err(io_err(format!("open {}", path.display()), e)),
        };
        let st =
            rustix::fs::fstat(&fd).map_err(|e| io_err(format!("stat {}", path.display()), e))?;
        check_private(path, &st, FileType::RegularFile)?;
        let mut buf = vec![0u8; max];
        let mut len = 0;
        while len < max {
            match rustix::io::read(&fd, &mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(io_err(format!("read {}", path.display()), e)),
            }
        }
        buf.truncate(len);
        Ok(Some(buf))
    }

    /// Writes a file atomically (temporary name, then rename), mode 0600;
    /// returns its identity.
    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<FileId, ShmError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        self.reap(&tmp)?;
        let fd = rustix::fs::open(
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| io_err(format!("create {}", tmp.display()), e))?;
        let written = (|| {
            let mut at = 0;
            while at < bytes.len() {
                match rustix::io::write(&fd, &bytes[at..]) {
                    Ok(n) => at += n,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e),
                }
            }
            let st = rustix::fs::fstat(&fd)?;
            rustix::fs::rename(&tmp, path)?;
            Ok((st.st_dev, st.st_ino))
        })();
        written.map_err(|e| {
            let _ = rustix::fs::unlink(&tmp);
            io_err(format!("write {}", path.display()), e)
        })
    }

    fn read_manifest(&self) -> Result<ManifestState, ShmError> {
        let Some(bytes) = self.read_file(&self.manifest_path(), MANIFEST_LEN + 1)? else {
            return Ok(ManifestState::Absent);
        };
        if bytes.len() != MANIFEST_LEN {
            return Ok(ManifestState::Corrupt(format!(
                "manifest is {} bytes, expected {MANIFEST_LEN}",
                bytes.len()
            )));
        }
        Ok(
            match ManifestRepr::parse(&Manifest::new_unchecked(&bytes[..])) {
                Ok(m) => ManifestState::Valid(m.geo),
                Err(e) => ManifestState::Corrupt(reason(e)),
            },
        )
    }

    fn write_manifest(&self, geo: &Geometry) -> Result<(), ShmError> {
        let mut bytes = [0u8; MANIFEST_LEN];
        ManifestRepr { geo: *geo }.emit(&mut Manifest::new_unchecked(&mut bytes[..]));
        self.write_file(&self.manifest_path(), &bytes).map(|_| ())
    }

    /// Connects to port `index`'s socket: `Some` if the port is live.
    fn probe(&self, index: u32) -> Result<Option<(OwnedFd, Cred)>, ShmError> {
        let path = self.sock_path(index);
        let st = match rustix::fs::lstat(&path) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(io_err(format!("inspect {}", path.display()), e)),
        };
        check_private(&path, &st, FileType::Socket)?;
        let addr = SocketAddrUnix::new(&path)
            .map_err(|e| io_err(format!("socket address {}", path.display()), e))?;
        let start = Instant::now();
        loop {
            let fd = seqpacket_socket()?;
            match rustix::net::connect(&fd, &addr) {
                Ok(()) => {
                    let cred = peer_cred(fd.as_fd())
                        .map_err(|e| io_err(format!("credentials of {}", path.display()), e))?;
                    // Only root can bind in our 0700 directory; still, the
                    // kernel's word decides whom we hand our memory to.
                    if cred.uid != euid() {
                        return Err(ShmError::NotOwned {
                            path: path.display().to_string(),
                            owner: owner_name(cred.uid),
                            mode: st.st_mode & 0o7777,
                        });
                    }
                    return Ok(Some((fd, cred)));
                }
                // Nobody listens: the process that bound it is gone.
                Err(Errno::CONNREFUSED) | Err(Errno::NOENT) => return Ok(None),
                // Accept queue full: alive but not accepting (stopped?).
                Err(Errno::AGAIN) | Err(Errno::INTR) if start.elapsed() < CONNECT_WAIT => {
                    std::thread::sleep(LOCK_RETRY)
                }
                Err(e) => {
                    return Err(io_err(
                        format!(
                            "connect to port {index} of network {:?} ({}); if its process is stopped, resume or kill it",
                            self.name,
                            path.display()
                        ),
                        e,
                    ));
                }
            }
        }
    }

    /// The record of a live port; a live port without a valid one means
    /// the directory was tampered with, which is reported, not repaired.
    fn read_record(&self, index: u32, cred: Cred) -> Result<RecordRepr, ShmError> {
        let path = self.rec_path(index);
        let bad = |why: String| {
            self.corrupt(format!(
                "port {index} (pid {}) is live but its record {} is unusable: {why}",
                cred.pid,
                path.display()
            ))
        };
        let Some(bytes) = self.read_file(&path, RECORD_LEN + 1)? else {
            return Err(bad("missing".into()));
        };
        if bytes.len() != RECORD_LEN {
            return Err(bad(format!("{} bytes, expected {RECORD_LEN}", bytes.len())));
        }
        let rec = RecordRepr::parse(&PortRecord::new_unchecked(&bytes[..]))
            .map_err(|e| bad(reason(e)))?;
        if rec.index != index {
            return Err(bad(format!("it says index {}", rec.index)));
        }
        Ok(rec)
    }

    /// Under the lock: connects to every port socket, reaps the files of
    /// ports whose process is gone (and temporary files, which only a
    /// crashed writer leaves), and returns the live ports with their
    /// connections. With `first_only`, stops at the first live port.
    fn scan(&self, first_only: bool) -> Result<Vec<LivePort>, ShmError> {
        let mut socks = Vec::new();
        let mut recs = Vec::new();
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| io_err(format!("list {}", self.dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(format!("list {}", self.dir.display()), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(i) = port_file_index(name, ".sock") {
                socks.push(i);
            } else if let Some(i) = port_file_index(name, ".rec") {
                recs.push(i);
            } else if name.ends_with(".tmp") {
                // Files are written under the lock, which we hold.
                self.reap(&entry.path())?;
            }
        }
        for i in recs {
            // A record without a socket: its port died while leaving.
            if file_id(&self.sock_path(i)).is_none() {
                self.reap(&self.rec_path(i))?;
            }
        }
        socks.sort_unstable();
        let mut live = Vec::new();
        for index in socks {
            match self.probe(index)? {
                None => {
                    log::info!(
                        "network {:?}: port {index} is gone; removing its files",
                        self.name
                    );
                    self.reap(&self.sock_path(index))?;
                    self.reap(&self.rec_path(index))?;
                }
                Some((conn, cred)) => {
                    let record = self.read_record(index, cred)?;
                    live.push(LivePort {
                        index,
                        conn,
                        cred,
                        record,
                    });
                    if first_only {
                        break;
                    }
                }
            }
        }
        Ok(live)
    }

    /// Under the lock, with no live port: removes the manifest, the lock
    /// file and the directory. Fails on anything that is not ours (kept).
    fn remove_all(&self) -> Result<(), ShmError> {
        self.reap(&self.manifest_path())?;
        self.reap(&self.lock_path())?;
        rustix::fs::rmdir(&self.dir).map_err(|e| {
            io_err(
                format!(
                    "remove {} (it holds files shmnet did not make; look at them and remove them yourself)",
                    self.dir.display()
                ),
                e,
            )
        })
    }
}

/// The address a clash is about, for the refusal message.
fn clash_what(mine: &PortInfo, theirs: &PortInfo) -> Option<String> {
    if !mine.name.is_empty() && mine.name == theirs.name {
        return Some(format!("device name {:?}", mine.name));
    }
    let kind = mine.clash(theirs)?;
    let value = match (kind, mine.ipv4, mine.ipv6) {
        ("IPv4 address", Some(a), _) => std::net::Ipv4Addr::from(a).to_string(),
        ("IPv6 address", _, Some(a)) => std::net::Ipv6Addr::from(a).to_string(),
        _ => mine
            .mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    };
    Some(format!("{kind} {value}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// No hello from the peer yet.
    AwaitHello,
    /// The peer's hello passed; its hang-up is [`Event::Left`].
    Joined { index: u32, epoch: u32 },
}

struct Connection {
    fd: OwnedFd,
    /// The kernel's pid of the peer (SO_PEERCRED).
    pid: u32,
    /// For connections we made at join: the port (index, epoch) whose
    /// answer we expect, as its record file said.
    expect: Option<(u32, u32)>,
    state: ConnState,
}

/// One port's membership of a network of processes: its listening socket,
/// one connection per peer, and an epoll set over them and its doorbell.
/// Boxed so that a port holding one stays small.
pub(crate) struct HostMember(Box<Membership>);

/// What a [`HostMember`] holds.
struct Membership {
    net: Network,
    geo: Geometry,
    index: u32,
    epoch: u32,
    /// Our record, sent as the hello.
    hello: [u8; RECORD_LEN],
    /// A duplicate of our region's memfd, to hand to each joiner.
    memfd: OwnedFd,
    doorbell: Doorbell,
    /// `None` once closed (leaving).
    listener: Option<OwnedFd>,
    epoll: OwnedFd,
    connections: HashMap<u64, Connection>,
    next_token: u64,
    /// The joined peer at each index: its epoch and connection.
    joined: Vec<Option<(u32, u64)>>,
    /// Our socket and record, with the identity they had when we made them.
    own_files: [(PathBuf, FileId); 2],
    counters: HostCounters,
}

/// Unlinks the files a join published if the join fails after all.
struct Published(Vec<PathBuf>);

impl Drop for Published {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = rustix::fs::unlink(p);
        }
    }
}

impl HostMember {
    /// Joins network `name` in the runtime directory (see the module doc
    /// for the steps). `make_region(index, epoch)` creates this port's
    /// region: a sealed memfd with its header written and published.
    /// Errors: [`ShmError::ParameterMismatch`] (first differing field,
    /// network's value as `found`), [`ShmError::AddressInUse`] (naming the
    /// holder), [`ShmError::Full`], [`ShmError::Corrupt`] (a manifest or
    /// record of a live network that does not parse: never replaced),
    /// [`ShmError::NotOwned`], [`ShmError::LockTimeout`],
    /// [`ShmError::InvalidParameter`] (name, socket path too long).
    pub(crate) fn join(
        name: &str,
        geo: &Geometry,
        info: &PortInfo,
        doorbell: &Doorbell,
        make_region: impl FnOnce(u32, u32) -> Result<Region, ShmError>,
    ) -> Result<(HostMember, Region), ShmError> {
        Self::join_in(&runtime_dir()?, name, geo, info, doorbell, make_region)
    }

    /// [`HostMember::join`] in the runtime directory `rundir` (checked the
    /// same way).
    pub(crate) fn join_in(
        rundir: &Path,
        name: &str,
        geo: &Geometry,
        info: &PortInfo,
        doorbell: &Doorbell,
        make_region: impl FnOnce(u32, u32) -> Result<Region, ShmError>,
    ) -> Result<(HostMember, Region), ShmError> {
        let net = Network::new(rundir, name)?;
        let longest = net.sock_path(geo.max_ports.saturating_sub(1));
        if longest.as_os_str().len() > SUN_PATH_MAX {
            return Err(ShmError::InvalidParameter(format!(
                "socket path {} is {} bytes, more than the {SUN_PATH_MAX} a Unix socket allows; \
                 point SHMNET_RUNTIME_DIR at a shorter directory or use a shorter network name",
                longest.display(),
                longest.as_os_str().len()
            )));
        }
        RecordRepr {
            index: 0,
            epoch: 0,
            pid: 0,
            info: info.clone(),
        }
        .check()?;
        let Some(lock) = net.lock(JOIN_LOCK_WAIT, true)? else {
            return Err(io_err(
                format!("create {}", net.dir.display()),
                std::io::Error::other("directory vanished"),
            ));
        };
        let joined = Membership::join_locked(&net, geo, info, doorbell, make_region);
        if joined.is_err() && net.scan(true).is_ok_and(|live| live.is_empty()) {
            // A first port that failed leaves no directory behind.
            let _ = net.remove_all();
        }
        drop(lock);
        joined.map(|(member, region)| (HostMember(Box::new(member)), region))
    }

    pub(crate) fn index(&self) -> u32 {
        self.0.index
    }

    pub(crate) fn epoch(&self) -> u32 {
        self.0.epoch
    }

    /// What membership saw so far (rejected hellos, joins, leaves).
    pub(crate) fn stats(&self) -> HostStats {
        self.0.counters.snapshot()
    }

    /// An epoll fd over the doorbell, the listener and every connection:
    /// readable when [`HostMember::poll`] has work or the doorbell rang
    /// (until the port drains it). The port sleeps on it.
    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.0.epoll.as_fd()
    }

    /// Never blocks. Accepts joiners, checks hellos (answering a joiner's
    /// with ours) and reports who joined and who left.
    pub(crate) fn poll(&mut self, out: &mut Vec<Event>) {
        self.0.poll(out)
    }

    /// Waits (at most `limit`) until every port we connected to at join
    /// has answered with its hello (or hung up), so a new device's first
    /// frames reach everyone.
    pub(crate) fn settle(&mut self, limit: Duration, out: &mut Vec<Event>) {
        self.0.settle(limit, out)
    }
}

impl Membership {
    fn join_locked(
        net: &Network,
        geo: &Geometry,
        info: &PortInfo,
        doorbell: &Doorbell,
        make_region: impl FnOnce(u32, u32) -> Result<Region, ShmError>,
    ) -> Result<(Membership, Region), ShmError> {
        let live = net.scan(false)?;
        match net.read_manifest()? {
            ManifestState::Valid(found) if !live.is_empty() => {
                if let Some((field, found, requested)) = found.mismatch(geo) {
                    return Err(ShmError::ParameterMismatch {
                        name: net.name.clone(),
                        field,
                        found,
                        requested,
                    });
                }
            }
            ManifestState::Valid(found) if found == *geo => {}
            ManifestState::Absent if !live.is_empty() => {
                return Err(net.corrupt(format!(
                    "its manifest is missing while {} port(s) are live; stop them, then start again",
                    live.len()
                )));
            }
            ManifestState::Corrupt(why) if !live.is_empty() => {
                return Err(net.corrupt(format!(
                    "{why}; {} port(s) are live, so it is not replaced: stop them, then start again",
                    live.len()
                )));
            }
            // No live port: whatever is there is a leftover.
            _ => net.write_manifest(geo)?,
        }
        for p in &live {
            if let Some(what) = clash_what(info, &p.record.info) {
                return Err(ShmError::AddressInUse {
                    name: net.name.clone(),
                    what,
                    holder: format!("device {} (pid {})", p.record.info.name, p.cred.pid),
                });
            }
        }
        let index = (0..geo.max_ports)
            .find(|i| !live.iter().any(|p| p.index == *i))
            .ok_or_else(|| ShmError::Full {
                name: net.name.clone(),
                max_ports: geo.max_ports,
            })?;
        let epoch = fresh_epoch(index);
        let region = make_region(index, epoch)?;
        let memfd = Self::check_own_region(&region, geo, index, epoch)?;

        let mut published = Published(Vec::new());
        let sock_path = net.sock_path(index);
        net.reap(&sock_path)?; // no live port holds `index`: a leftover
        let listener = seqpacket_socket()?;
        let addr = SocketAddrUnix::new(&sock_path)
            .map_err(|e| io_err(format!("socket address {}", sock_path.display()), e))?;
        rustix::net::bind(&listener, &addr)
            .map_err(|e| io_err(format!("bind {}", sock_path.display()), e))?;
        published.0.push(sock_path.clone());
        // bind honours the umask; everything in the directory is 0600.
        rustix::fs::chmod(&sock_path, Mode::RUSR | Mode::WUSR)
            .map_err(|e| io_err(format!("chmod {}", sock_path.display()), e))?;
        rustix::net::listen(&listener, BACKLOG)
            .map_err(|e| io_err(format!("listen on {}", sock_path.display()), e))?;
        let sock_id = file_id(&sock_path).unwrap_or_default();

        let mut hello = [0u8; RECORD_LEN];
        RecordRepr {
            index,
            epoch,
            pid: own_pid(),
            info: info.clone(),
        }
        .emit(&mut PortRecord::new_unchecked(&mut hello[..]));
        let rec_path = net.rec_path(index);
        let rec_id = net.write_file(&rec_path, &hello)?;
        published.0.push(rec_path.clone());

        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| io_err("create an epoll set", e))?;
        let watch = |fd: BorrowedFd<'_>, token: u64| {
            epoll::add(
                &epoll,
                fd,
                epoll::EventData::new_u64(token),
                epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
            )
            .map_err(|e| io_err("add to the epoll set", e))
        };
        watch(doorbell.fd(), TOKEN_DOORBELL)?;
        watch(listener.as_fd(), TOKEN_LISTENER)?;
        let mut connections = HashMap::new();
        let mut next_token = FIRST_CONNECTION;
        for p in live {
            if let Err(e) = send_hello(p.conn.as_fd(), &hello, memfd.as_fd(), doorbell.fd()) {
                log::info!(
                    "network {:?}: port {} left while we joined ({e})",
                    net.name,
                    p.index
                );
                continue;
            }
            watch(p.conn.as_fd(), next_token)?;
            connections.insert(
                next_token,
                Connection {
                    fd: p.conn,
                    pid: p.cred.pid,
                    expect: Some((p.index, p.record.epoch)),
                    state: ConnState::AwaitHello,
                },
            );
            next_token += 1;
        }
        published.0.clear(); // the member owns the files now
        let member = Membership {
            geo: *geo,
            index,
            epoch,
            hello,
            memfd,
            doorbell: doorbell.clone(),
            listener: Some(listener),
            epoll,
            connections,
            next_token,
            joined: vec![None; geo.max_ports as usize],
            own_files: [(sock_path, sock_id), (rec_path, rec_id)],
            counters: HostCounters::default(),
            net: net.clone(),
        };
        Ok((member, region))
    }

    /// Our region must be what peers will check: a sealed memfd whose
    /// header parses with our geometry, index and epoch. Returns a
    /// duplicate of the memfd to hand out.
    fn check_own_region(
        region: &Region,
        geo: &Geometry,
        index: u32,
        epoch: u32,
    ) -> Result<OwnedFd, ShmError> {
        let bug = |why: String| ShmError::InvalidParameter(format!("own region: {why}"));
        let fd = region
            .fd()
            .ok_or_else(|| bug("not a memfd (a process port needs a sealed memfd)".into()))?;
        let mut header = vec![0u8; HEADER_LEN];
        if !region.read(0, &mut header) {
            return Err(bug("smaller than a header".into()));
        }
        let h = HeaderRepr::parse(&PortHeader::new_unchecked(&header[..]), region.len())
            .map_err(|e| bug(e.to_string()))?;
        if h.geo != *geo || h.index != index || h.epoch != epoch {
            return Err(bug(format!(
                "header says port {} epoch {}, expected {index} {epoch} and the network's geometry",
                h.index, h.epoch
            )));
        }
        rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| io_err("duplicate the region fd", e))
    }

    fn poll(&mut self, out: &mut Vec<Event>) {
        // On the stack, not in `self`: an epoll event may hold a pointer,
        // which would make the member (and its port) not `Send`.
        let mut buf = [MaybeUninit::<epoll::Event>::uninit(); EVENTS_PER_WAIT];
        // A few rounds at most: new readiness can keep arriving.
        for _ in 0..4 {
            let ready = match epoll::wait(&self.epoll, &mut buf, Some(&timespec(Duration::ZERO))) {
                Ok((ready, _)) => ready,
                Err(Errno::INTR) => break,
                Err(e) => {
                    log::warn!("network {:?}: epoll_wait: {e}", self.net.name);
                    break;
                }
            };
            for ev in ready.iter() {
                match ev.data.u64() {
                    TOKEN_DOORBELL => {} // the port's business
                    TOKEN_LISTENER => self.accept_all(out),
                    token => self.handle_connection(token, out),
                }
            }
            if ready.len() < EVENTS_PER_WAIT {
                break;
            }
        }
    }

    fn settle(&mut self, limit: Duration, out: &mut Vec<Event>) {
        let deadline = Instant::now() + limit;
        loop {
            self.poll(out);
            let now = Instant::now();
            let waiting: Vec<BorrowedFd<'_>> = self
                .connections
                .values()
                .filter(|c| c.expect.is_some() && c.state == ConnState::AwaitHello)
                .map(|c| c.fd.as_fd())
                .collect();
            if waiting.is_empty() {
                return;
            }
            if now >= deadline {
                log::info!(
                    "network {:?}: {} port(s) did not answer within {limit:?}",
                    self.net.name,
                    waiting.len()
                );
                return;
            }
            // On the connections themselves, not wake_fd: the doorbell
            // stays readable until the port drains it.
            let mut fds: Vec<PollFd<'_>> = waiting
                .iter()
                .map(|fd| PollFd::new(fd, PollFlags::IN))
                .collect();
            let nap = (deadline - now).min(Duration::from_millis(100));
            let _ = rustix::event::poll(&mut fds, Some(&timespec(nap)));
        }
    }

    fn accept_all(&mut self, out: &mut Vec<Event>) {
        for _ in 0..ACCEPTS_PER_POLL {
            let Some(listener) = &self.listener else {
                return;
            };
            let fd = match rustix::net::accept_with(
                listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(fd) => fd,
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR) | Err(Errno::CONNABORTED) => continue,
                Err(e) => {
                    log::warn!("network {:?}: accept: {e}", self.net.name);
                    return;
                }
            };
            let cred = match peer_cred(fd.as_fd()) {
                Ok(c) => c,
                Err(e) => {
                    self.count_rejection(0, &format!("no credentials ({e})"));
                    continue;
                }
            };
            if cred.uid != euid() {
                self.count_rejection(
                    cred.pid,
                    &format!("connection from {} refused", owner_name(cred.uid)),
                );
                continue;
            }
            // A process of ours could open connections without end; bound
            // those that have not said hello yet (liveness probes of
            // leavers and `shmnet segments` close at once).
            let silent = self
                .connections
                .values()
                .filter(|c| c.expect.is_none() && c.state == ConnState::AwaitHello)
                .count();
            if silent >= 2 * self.geo.max_ports as usize + 16 {
                self.count_rejection(cred.pid, "too many connections without a hello");
                continue;
            }
            // A joiner sends its hello right after connecting: read it now
            // rather than on the next poll.
            if let Some(token) = self.add_connection(fd, cred.pid) {
                self.handle_connection(token, out);
            }
        }
    }

    fn add_connection(&mut self, fd: OwnedFd, pid: u32) -> Option<u64> {
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = epoll::add(
            &self.epoll,
            &fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        ) {
            log::warn!("network {:?}: epoll add: {e}", self.net.name);
            return None;
        }
        self.connections.insert(
            token,
            Connection {
                fd,
                pid,
                expect: None,
                state: ConnState::AwaitHello,
            },
        );
        Some(token)
    }

    fn handle_connection(&mut self, token: u64, out: &mut Vec<Event>) {
        for _ in 0..MESSAGES_PER_POLL {
            let Some(conn) = self.connections.get(&token) else {
                return;
            };
            match receive(conn.fd.as_fd()) {
                Received::Nothing => return,
                Received::Closed => return self.hang_up(token, out),
                Received::Message(msg) if conn.state == ConnState::AwaitHello => {
                    self.handle_hello(token, *msg, out)
                }
                // Only one hello per connection; the rest (and any fds,
                // closed as `msg` drops) is ignored.
                Received::Message(msg) => bump(&self.counters.extra_bytes, msg.len as u64),
            }
        }
    }

    fn handle_hello(&mut self, token: u64, msg: Message, out: &mut Vec<Event>) {
        let extra = msg.len.saturating_sub(RECORD_LEN) as u64;
        let Some(conn) = self.connections.get(&token) else {
            return;
        };
        let pid = conn.pid;
        let link = match self.check_hello(conn, msg) {
            Ok(link) => link,
            Err(why) => {
                self.count_rejection(pid, &why);
                self.drop_connection(token);
                return;
            }
        };
        bump(&self.counters.extra_bytes, extra);
        let (index, epoch) = (link.info.index, link.info.epoch);
        // A newer attachment at an index we hold: the old one is gone, even
        // if its hang-up has not reached us yet.
        if let Some((old_epoch, old_token)) = self.joined[index as usize] {
            self.drop_connection(old_token);
            self.joined[index as usize] = None;
            bump(&self.counters.peers_left, 1);
            out.push(Event::Left {
                index,
                epoch: old_epoch,
            });
        }
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        if conn.expect.is_none() {
            // A joiner: answer with our hello before counting it in.
            if let Err(e) = send_hello(
                conn.fd.as_fd(),
                &self.hello,
                self.memfd.as_fd(),
                self.doorbell.fd(),
            ) {
                log::info!(
                    "network {:?}: port {index} left before our answer ({e})",
                    self.net.name
                );
                self.drop_connection(token);
                return;
            }
        }
        conn.state = ConnState::Joined { index, epoch };
        self.joined[index as usize] = Some((epoch, token));
        bump(&self.counters.peers_joined, 1);
        out.push(Event::Joined(link));
    }

    /// Every check a hello must pass, in order of cost; the error is the
    /// reason logged with the rejection.
    fn check_hello(&self, conn: &Connection, msg: Message) -> Result<PeerLink, String> {
        if msg.fds_truncated {
            return Err(format!("more than {MAX_FDS} file descriptors"));
        }
        if msg.len < RECORD_LEN {
            return Err(format!(
                "a hello of {} bytes, a record is {RECORD_LEN}",
                msg.len
            ));
        }
        let rec = RecordRepr::parse(&PortRecord::new_unchecked(&msg.bytes[..RECORD_LEN]))
            .map_err(reason)?;
        let (index, epoch) = (rec.index, rec.epoch);
        if index >= self.geo.max_ports {
            return Err(format!(
                "port index {index}, the network has {} ports",
                self.geo.max_ports
            ));
        }
        if index == self.index {
            return Err(format!("claims our own index {index}"));
        }
        if let Some(expected) = conn.expect
            && (index, epoch) != expected
        {
            return Err(format!(
                "answered as port {index} epoch {epoch}, its record file said port {} epoch {}",
                expected.0, expected.1
            ));
        }
        if self.joined[index as usize].is_some_and(|(e, _)| e == epoch) {
            return Err(format!("port {index} epoch {epoch} has joined already"));
        }
        let n = msg.fds.len();
        let Ok([memfd, bell]) = <[OwnedFd; 2]>::try_from(msg.fds) else {
            return Err(format!(
                "{n} file descriptors, a hello carries 2 (region, doorbell)"
            ));
        };
        check_doorbell(&bell)?;
        let region = Region::map_peer(memfd, self.geo.region_len()).map_err(reason)?;
        let view = PeerView::other_process(region);
        let mut header = vec![0u8; HEADER_LEN];
        if !view.read(0, &mut header) {
            return Err("region smaller than a header".into());
        }
        let h = HeaderRepr::parse(&PortHeader::new_unchecked(&header[..]), view.len())
            .map_err(|e| format!("region header: {}", reason(e)))?;
        if let Some((field, ours, theirs)) = self.geo.mismatch(&h.geo) {
            return Err(format!(
                "region built for {field} {theirs}, the network has {ours}"
            ));
        }
        if h.geo != self.geo {
            return Err("region geometry differs".into());
        }
        if (h.index, h.epoch) != (index, epoch) {
            return Err(format!(
                "region header says port {} epoch {}, the record port {index} epoch {epoch}",
                h.index, h.epoch
            ));
        }
        Ok(PeerLink {
            info: PeerInfo {
                index,
                epoch,
                owner_pid: conn.pid,
                info: rec.info,
            },
            view,
            doorbell: Doorbell::from_fd(bell),
        })
    }

    fn count_rejection(&self, pid: u32, why: &str) {
        bump(&self.counters.hellos_rejected, 1);
        log::warn!(
            "network {:?}: refused a peer (pid {pid}): {why}",
            self.net.name
        );
    }

    fn drop_connection(&mut self, token: u64) -> Option<Connection> {
        let c = self.connections.remove(&token)?;
        let _ = epoll::delete(&self.epoll, &c.fd);
        Some(c)
    }

    fn hang_up(&mut self, token: u64, out: &mut Vec<Event>) {
        let Some(conn) = self.drop_connection(token) else {
            return;
        };
        // A connection replaced by a newer attachment has had its Left.
        if let ConnState::Joined { index, epoch } = conn.state
            && self.joined[index as usize] == Some((epoch, token))
        {
            self.joined[index as usize] = None;
            bump(&self.counters.peers_left, 1);
            out.push(Event::Left { index, epoch });
        }
    }
}

impl Drop for Membership {
    /// Closes the sockets first, so peers see the hang-up at once; then,
    /// under the lock (at most 1 s, else the files stay for the next
    /// joiner to reap), removes our socket and record unless a joiner that
    /// found them dead already replaced them, and, if no port is left, the
    /// network's directory.
    fn drop(&mut self) {
        self.listener = None;
        self.connections.clear();
        let lock = match self.net.lock(LEAVE_LOCK_WAIT, false) {
            Ok(Some(lock)) => lock,
            Ok(None) => return,
            Err(e) => {
                log::warn!(
                    "leaving network {:?}: {e}; its files stay until the next device joins",
                    self.net.name
                );
                return;
            }
        };
        for (path, id) in &self.own_files {
            if file_id(path) == Some(*id) {
                let _ = rustix::fs::unlink(path);
            }
        }
        match self.net.scan(true) {
            Ok(live) if live.is_empty() => {
                if let Err(e) = self.net.remove_all() {
                    log::info!("leaving network {:?}: {e}", self.net.name);
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("leaving network {:?}: {e}", self.net.name),
        }
        drop(lock);
    }
}

/// Names of the networks in the runtime directory (for `shmnet segments`).
pub(crate) fn list_networks() -> Result<Vec<String>, ShmError> {
    list_networks_in(&runtime_dir()?)
}

pub(crate) fn list_networks_in(rundir: &Path) -> Result<Vec<String>, ShmError> {
    let entries =
        std::fs::read_dir(rundir).map_err(|e| io_err(format!("list {}", rundir.display()), e))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| check_network_name(n).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// The manifest's geometry and the live ports (liveness checked by
/// connecting, under the lock; the connections are closed again).
/// [`ShmError::NotFound`] if there is no such network.
pub(crate) fn describe(name: &str) -> Result<(Geometry, Vec<PeerInfo>), ShmError> {
    describe_in(&runtime_dir()?, name)
}

pub(crate) fn describe_in(
    rundir: &Path,
    name: &str,
) -> Result<(Geometry, Vec<PeerInfo>), ShmError> {
    let net = Network::new(rundir, name)?;
    let not_found = || ShmError::NotFound { name: name.into() };
    let Some(_lock) = net.lock(JOIN_LOCK_WAIT, false)? else {
        return Err(not_found());
    };
    let live = net.scan(false)?;
    let geo = match net.read_manifest()? {
        ManifestState::Valid(geo) => geo,
        ManifestState::Absent if live.is_empty() => return Err(not_found()),
        ManifestState::Absent => return Err(net.corrupt("its manifest is missing".into())),
        ManifestState::Corrupt(why) => return Err(net.corrupt(why)),
    };
    let ports = live
        .into_iter()
        .map(|p| PeerInfo {
            index: p.index,
            epoch: p.record.epoch,
            owner_pid: p.cred.pid,
            info: p.record.info,
        })
        .collect();
    Ok((geo, ports))
}

/// Removes a network's directory if no live port uses it (`shmnet
/// clean`); `Ok(true)` if removed, `Ok(false)` if in use or absent.
pub(crate) fn remove_if_unused(name: &str) -> Result<bool, ShmError> {
    remove_if_unused_in(&runtime_dir()?, name)
}

pub(crate) fn remove_if_unused_in(rundir: &Path, name: &str) -> Result<bool, ShmError> {
    let net = Network::new(rundir, name)?;
    let Some(_lock) = net.lock(JOIN_LOCK_WAIT, false)? else {
        return Ok(false);
    };
    if !net.scan(true)?.is_empty() {
        return Ok(false);
    }
    net.remove_all()?;
    Ok(true)
}

/// A region as a process port makes it: a sealed memfd with its header
/// published (tests, and the `testing` face below).
#[cfg(any(test, feature = "testing"))]
pub(crate) fn sealed_region(geo: &Geometry, index: u32, epoch: u32) -> Result<Region, ShmError> {
    let region = Region::sealed_memfd(&format!("test-{index}"), geo.region_len())?;
    let mut header = vec![0u8; HEADER_LEN];
    HeaderRepr {
        geo: *geo,
        index,
        epoch,
        pid: own_pid(),
    }
    .emit_published(&mut PortHeader::new_unchecked(&mut header[..]));
    region.write(0, &header);
    Ok(region)
}

/// A public face of [`HostMember`] for integration tests of the protocol
/// between processes (feature `testing`): a port with a real sealed region
/// and doorbell, and no data path.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::{HostMember, sealed_region};
    use crate::shm::ShmError;
    use crate::shm::layout::{Geometry, LinkMedium};
    use crate::shm::member::{Doorbell, Event, PortInfo};
    use crate::shm::region::Region;

    pub use super::HostStats;

    /// A change in membership, as a test sees it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum TestEvent {
        Joined {
            index: u32,
            epoch: u32,
            pid: u32,
            name: String,
        },
        Left {
            index: u32,
            epoch: u32,
        },
    }

    /// A joined port (MTU 1500, Ethernet, 16 buffers).
    pub struct TestMember {
        member: HostMember,
        _region: Region,
        _doorbell: Doorbell,
    }

    /// [`super::runtime_dir`], public for tests.
    pub fn runtime_dir() -> Result<PathBuf, ShmError> {
        super::runtime_dir()
    }

    impl TestMember {
        /// Joins `network` as device `device` with an optional IPv4
        /// address, in `rundir` or else the runtime directory.
        pub fn join(
            rundir: Option<&Path>,
            network: &str,
            device: &str,
            ipv4: Option<[u8; 4]>,
            max_ports: u32,
        ) -> Result<TestMember, ShmError> {
            let geo = Geometry::new(1500, LinkMedium::Ethernet, max_ports, 16)?;
            let mut info = PortInfo::named(device);
            info.ipv4 = ipv4;
            let doorbell = Doorbell::new()?;
            let rundir = match rundir {
                Some(d) => d.to_owned(),
                None => super::runtime_dir()?,
            };
            let (member, region) =
                HostMember::join_in(&rundir, network, &geo, &info, &doorbell, |i, e| {
                    sealed_region(&geo, i, e)
                })?;
            Ok(TestMember {
                member,
                _region: region,
                _doorbell: doorbell,
            })
        }

        pub fn index(&self) -> u32 {
            self.member.index()
        }

        pub fn epoch(&self) -> u32 {
            self.member.epoch()
        }

        pub fn stats(&self) -> HostStats {
            self.member.stats()
        }

        pub fn poll(&mut self) -> Vec<TestEvent> {
            let mut out = Vec::new();
            self.member.poll(&mut out);
            convert(out)
        }

        pub fn settle(&mut self, limit: Duration) -> Vec<TestEvent> {
            let mut out = Vec::new();
            self.member.settle(limit, &mut out);
            convert(out)
        }

        /// Sleeps until membership has work, or `timeout`.
        pub fn wait(&self, timeout: Duration) {
            let fd = self.member.wake_fd();
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            let _ = rustix::event::poll(&mut fds, Some(&super::timespec(timeout)));
        }
    }

    fn convert(events: Vec<Event>) -> Vec<TestEvent> {
        events
            .into_iter()
            .map(|e| match e {
                Event::Joined(link) => TestEvent::Joined {
                    index: link.info.index,
                    epoch: link.info.epoch,
                    pid: link.info.owner_pid,
                    name: link.info.info.name.clone(),
                },
                Event::Left { index, epoch } => TestEvent::Left { index, epoch },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::layout::LinkMedium;

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
            HostMember::join_in(&run.0, "net", g, info, &bell, |i, e| sealed_region(g, i, e))?;
        Ok(Member { host, region, bell })
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
        let h =
            HeaderRepr::parse(&PortHeader::new_unchecked(&header[..]), link.view.len()).unwrap();
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
        let err = join_with(&run, &geo(16), &PortInfo::named("beta"))
            .err()
            .unwrap();
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
        let err = join_with(&run, &geo(8), &other).err().unwrap();
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
        let err = join_with(&run, &geo(8), &PortInfo::named("alpha"))
            .err()
            .unwrap();
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
        let err = HostMember::join_in(&run.0, "net", &g, &info, &bell, |_, _| {
            Err(ShmError::InvalidParameter("no memory today".into()))
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("no memory today"), "{err}");
        assert!(!run.net("net").exists());
        // A region peers could not map is refused before it is published.
        let err = HostMember::join_in(&run.0, "net", &g, &info, &bell, |_, _| {
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
        let err = join_with(&run, &g, &PortInfo::named("c")).err().unwrap();
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
        let err = join_with(&run, &geo(8), &PortInfo::named("beta"))
            .err()
            .unwrap();
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
        let err = join_with(&run, &geo(8), &PortInfo::named("beta"))
            .err()
            .unwrap();
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
        let err = HostMember::join_in(&deep, "net", &g, &PortInfo::named("a"), &bell, |i, e| {
            sealed_region(&g, i, e)
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("SHMNET_RUNTIME_DIR"), "{err}");
        let mut long = PortInfo::named("a");
        long.name = "n".repeat(65);
        assert!(matches!(
            join_with(&run, &g, &long).err().unwrap(),
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
        let err = HostMember::join_in(&theirs, "net", &g, &PortInfo::named("a"), &bell, |i, e| {
            sealed_region(&g, i, e)
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("nobody"), "{err}");
        let squatted = run.net("net");
        rustix::fs::mkdir(&squatted, Mode::RWXU).unwrap();
        std::os::unix::fs::chown(&squatted, Some(65534), Some(65534)).unwrap();
        let err = join_with(&run, &g, &PortInfo::named("a")).err().unwrap();
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
        let err = join_with(&run, &g, &PortInfo::named("b")).err().unwrap();
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
        let unsealed =
            rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
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
                    let mut m =
                        join_with(&run, &geo(16), &PortInfo::named(&format!("d{i}"))).unwrap();
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
}
