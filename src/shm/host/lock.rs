//! The network's lock: an exclusive flock on `NAME/lock`, polled for a
//! bounded time, and checked again after locking because the last leaver
//! unlinks the file while holding it.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::io_err;
use super::own_pid;
use super::rundir::{check_private, ensure_private_dir, file_id};
use crate::shm::ShmError;

pub(super) const LOCK_RETRY: Duration = Duration::from_millis(5);

/// The network's lock; released when the fd closes.
pub(super) struct NetLock {
    _fd: OwnedFd,
}

impl NetLock {
    /// Takes the lock file `path` of the network directory `dir`, polling
    /// for at most `wait`. With `create` the directory is made if missing;
    /// without, `None` means there is no such network.
    pub(super) fn take(
        dir: &Path,
        path: &Path,
        wait: Duration,
        create: bool,
    ) -> Result<Option<NetLock>, ShmError> {
        let start = Instant::now();
        let timeout = || ShmError::LockTimeout {
            path: path.display().to_string(),
            waited: start.elapsed(),
        };
        loop {
            if create {
                ensure_private_dir(dir)?;
            } else {
                match rustix::fs::lstat(dir) {
                    Ok(st) => check_private(dir, &st, FileType::Directory)?,
                    Err(Errno::NOENT) => return Ok(None),
                    Err(e) => return Err(io_err(format!("inspect {}", dir.display()), e)),
                }
            }
            let fd = match rustix::fs::open(
                path,
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
            check_private(path, &st, FileType::RegularFile)?;
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
            if file_id(path) != Some((st.st_dev, st.st_ino)) {
                continue;
            }
            // For operators: who holds it (`cat lock`).
            let _ = rustix::fs::ftruncate(&fd, 0);
            let _ = rustix::io::pwrite(&fd, format!("{}\n", own_pid()).as_bytes(), 0);
            return Ok(Some(NetLock { _fd: fd }));
        }
    }
}
