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
//! The files (small shared helpers such as `io_err` live in `mod.rs`):
//!
//! ```text
//! rundir.rs    the runtime directory: where, ownership and mode checks, network names
//! lock.rs      the network's lock (flock with a timeout, inode re-checked)
//! wire.rs      sockets, SCM_RIGHTS send/receive, SO_PEERCRED
//! network.rs   a network on disk: manifest, records, liveness by connect, reaping
//! peers.rs     connections to peers: accept, hello checks, joined/left
//! mod.rs       HostMember: join, poll, settle, leave; list, describe, remove
//! testing.rs   the public face for tests (feature `testing`)
//! tests.rs     the unit tests
//! ```
//!
//! [`HostMember`] is the crate's handle on all this; the `testing` face
//! exposes it to tests:
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

mod lock;
mod network;
mod peers;
mod rundir;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, epoll};
use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::net::SocketAddrUnix;

use self::network::{ManifestState, Network};
use self::peers::{ConnState, Connection};
pub use self::rundir::NETWORK_NAME_MAX;
use self::rundir::{FileId, file_id};
pub(crate) use self::rundir::{check_network_name, runtime_dir};
use self::wire::{send_hello, seqpacket_socket};
use super::ShmError;
use super::layout::{Geometry, HEADER_LEN, HeaderRepr, MAX_PORTS_LIMIT, PortHeader};
use super::member::{Doorbell, Event, PeerInfo, PortInfo, fresh_epoch};
use super::record::{PortRecord, RECORD_LEN, RecordRepr};
use super::region::Region;
use crate::counters::counter_set;

/// How long a join waits for the network's lock before giving up.
const JOIN_LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long leaving waits; past it the files stay for the next joiner to reap.
const LEAVE_LOCK_WAIT: Duration = Duration::from_secs(1);
/// Longest socket path: `sun_path` is 108 bytes including the final NUL.
const SUN_PATH_MAX: usize = 107;
/// Every port of a network may connect at once; the kernel caps it at
/// `net.core.somaxconn`.
const BACKLOG: i32 = MAX_PORTS_LIMIT as i32;
/// Events taken per `epoll_wait`; a full batch means another round.
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

fn own_pid() -> u32 {
    rustix::process::getpid().as_raw_pid() as u32
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    }
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
    /// Joins network `name` in the runtime directory `rundir` (normally
    /// [`runtime_dir`]; checked the same way whatever it is; see the module
    /// doc for the steps). `make_region(index, epoch)` creates this port's
    /// region: a sealed memfd with its header written and published.
    /// Errors: [`ShmError::ParameterMismatch`] (first differing field,
    /// network's value as `found`), [`ShmError::AddressInUse`] (naming the
    /// holder), [`ShmError::Full`], [`ShmError::Corrupt`] (a manifest or
    /// record of a live network that does not parse: never replaced),
    /// [`ShmError::NotOwned`], [`ShmError::LockTimeout`],
    /// [`ShmError::InvalidParameter`] (name, socket path too long).
    pub(crate) fn join(
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
            if let Some(what) = info.clash(&p.record.info) {
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
        let epoch = fresh_epoch();
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
                    log::info!(
                        "leaving network {:?}: {}",
                        self.net.name,
                        crate::error::Chain(&e)
                    );
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!(
                "leaving network {:?}: {}",
                self.net.name,
                crate::error::Chain(&e)
            ),
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
