//! The runtime directory and what may live in it: where it is, that it and
//! every file in it are ours and closed to others (0700/0600, checked
//! without following links, naming the owner of anything that is not), and
//! which network names are allowed.

use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode};
use rustix::io::Errno;

use super::io_err;
use crate::shm::ShmError;

/// The longest network name (it names a directory and is part of socket paths).
pub const NETWORK_NAME_MAX: usize = 64;

pub(super) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `uid N (name)`, the name from /etc/passwd if it has one.
pub(super) fn owner_name(uid: u32) -> String {
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
pub(super) fn check_private(
    path: &Path,
    st: &rustix::fs::Stat,
    kind: FileType,
) -> Result<(), ShmError> {
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
pub(super) fn ensure_private_dir(path: &Path) -> Result<(), ShmError> {
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
            crate::shm::quote(name)
        )))
    }
}

/// A file's identity, to tell "our file" from one that replaced it.
pub(super) type FileId = (u64, u64);

pub(super) fn file_id(path: &Path) -> Option<FileId> {
    rustix::fs::lstat(path)
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}
