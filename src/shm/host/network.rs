//! A network on disk: its directory, manifest and port records, liveness
//! probing by connecting to each port's socket, and reaping the files of
//! ports whose process is gone. Everything here runs under the network's
//! lock and touches only files that are ours.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::SocketAddrUnix;

use super::lock::{LOCK_RETRY, NetLock};
use super::rundir::{
    FileId, check_network_name, check_private, ensure_private_dir, euid, file_id, owner_name,
};
use super::wire::{Cred, peer_cred, seqpacket_socket};
use super::{io_err, reason};
use crate::shm::ShmError;
use crate::shm::layout::{Geometry, MAX_PORTS_LIMIT};
use crate::shm::record::{
    MANIFEST_LEN, Manifest, ManifestRepr, PortRecord, RECORD_LEN, RecordRepr,
};

/// How long a join retries a port whose accept queue is full (a stopped
/// process) before refusing to join without it.
const CONNECT_WAIT: Duration = Duration::from_secs(1);

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

/// What the manifest file holds.
pub(super) enum ManifestState {
    Absent,
    Valid(Geometry),
    Corrupt(String),
}

/// A port that accepted our connection while we held the lock.
pub(super) struct LivePort {
    pub(super) index: u32,
    pub(super) conn: OwnedFd,
    pub(super) cred: Cred,
    pub(super) record: RecordRepr,
}

/// One network's directory and the files in it.
#[derive(Clone)]
pub(super) struct Network {
    pub(super) name: String,
    pub(super) dir: PathBuf,
}

impl Network {
    /// Checks the name, and `rundir` as [`runtime_dir`](super::rundir::runtime_dir) does (callers
    /// may pass any directory).
    pub(super) fn new(rundir: &Path, name: &str) -> Result<Network, ShmError> {
        check_network_name(name)?;
        ensure_private_dir(rundir)?;
        Ok(Network {
            name: name.to_owned(),
            dir: rundir.join(name),
        })
    }

    pub(super) fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }
    fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest")
    }
    pub(super) fn sock_path(&self, index: u32) -> PathBuf {
        self.dir.join(format!("port-{index}.sock"))
    }
    pub(super) fn rec_path(&self, index: u32) -> PathBuf {
        self.dir.join(format!("port-{index}.rec"))
    }

    pub(super) fn corrupt(&self, why: String) -> ShmError {
        ShmError::Corrupt {
            name: self.name.clone(),
            why,
        }
    }

    /// Takes the network's lock, polling for at most `wait`; see
    /// [`NetLock::take`].
    pub(super) fn lock(&self, wait: Duration, create: bool) -> Result<Option<NetLock>, ShmError> {
        NetLock::take(&self.dir, &self.lock_path(), wait, create)
    }

    /// Removes a file of ours; refuses (and keeps) anyone else's.
    pub(super) fn reap(&self, path: &Path) -> Result<(), ShmError> {
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
    pub(super) fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<FileId, ShmError> {
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

    pub(super) fn read_manifest(&self) -> Result<ManifestState, ShmError> {
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

    pub(super) fn write_manifest(&self, geo: &Geometry) -> Result<(), ShmError> {
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
    pub(super) fn scan(&self, first_only: bool) -> Result<Vec<LivePort>, ShmError> {
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
    pub(super) fn remove_all(&self) -> Result<(), ShmError> {
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
