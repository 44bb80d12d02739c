//! Raw memory: the only module of shmnet that holds pointers to shared
//! memory, and the only one allowed `unsafe` code.
//!
//! A [`Region`] is one mapping, either anonymous (devices are threads of one
//! process) or of a named POSIX shared-memory object under `/dev/shm`
//! (devices are separate processes). Everything above this module reaches
//! the mapping through it, by offset:
//!
//! - atomics at fixed, layout-checked offsets ([`Region::atomic_u32`],
//!   [`Region::atomic_u64`]): ring indices, directory and link words;
//! - copies in and out ([`Region::read`], [`Region::write`]): headers and
//!   descriptors are copied into local buffers before they are parsed;
//! - two lent views of frame buffers, each behind a token only this module
//!   makes: a transmit buffer of this port's [`Pool`] ([`Pool::bytes_mut`],
//!   for a [`TxBuf`]) and a received frame left in its sender's buffer
//!   ([`Region::frame`], for an [`InPlaceFrame`]).
//!
//! Contract: an offset outside the layout is a bug in shmnet and panics;
//! bytes a peer wrote are returned as values for the caller to validate.
//! Apart from the atomics, the two views are the only references into
//! memory a peer can write; both rely on the ring protocol (a buffer is
//! written only by its owner, and only while no descriptor names it).
//!
//! ```
//! use shmnet::shm::{NetworkParams, PortInfo, Segment, SegmentKind};
//! let seg = Segment::open_or_create("doc-region", SegmentKind::Process, &NetworkParams::new(1500)).unwrap();
//! let mut port = seg.attach(&PortInfo::named("a")).unwrap();
//! let mut buf = port.alloc().unwrap(); // a TxBuf: this port's buffer, lent
//! port.buffer_mut(&mut buf)[..2].copy_from_slice(b"hi");
//! port.release(buf);
//! ```
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use rustix::fs::Mode;
use rustix::mm::{MapFlags, ProtFlags};
use rustix::shm;

use super::ShmError;

/// One mapping of a segment.
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
    _fd: Option<OwnedFd>,
}

// SAFETY: the mapping is plain memory owned by this value until drop; every
// access through it goes through atomics or explicit copies, so sharing the
// handle between threads is no different from sharing it between processes.
unsafe impl Send for Region {}
// SAFETY: see `Send`: no method gives out unsynchronised `&mut` to memory
// another thread may reach, except `bytes_mut`, whose contract requires the
// caller to own the range exclusively (`Pool::bytes_mut` proves it with a
// `TxBuf` and `&mut Pool`).
unsafe impl Sync for Region {}

/// The path of a named segment's backing object, for messages.
pub(crate) fn object_name(name: &str) -> String {
    format!("/shmnet.{name}")
}

impl Region {
    /// Maps `len` bytes of zeroed process-local memory (pages are committed
    /// lazily, so unused rings and buffers cost nothing).
    pub(crate) fn anonymous(len: usize) -> Result<Region, ShmError> {
        // SAFETY: a fresh anonymous mapping aliases nothing; a null hint lets
        // the kernel choose the address.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| ShmError::Io {
            what: "mmap anonymous segment".into(),
            source: e.into(),
        })?;
        Self::from_mapping(ptr, len, None)
    }

    /// Creates the named object (mode 0600, fails if it exists), sizes it
    /// and maps it. The object is zero-filled by the kernel.
    pub(crate) fn create_named(name: &str, len: usize) -> Result<Region, ShmError> {
        let path = object_name(name);
        let fd = shm::open(
            path.as_str(),
            shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| match e {
            rustix::io::Errno::EXIST => ShmError::AlreadyExists { name: name.into() },
            e => ShmError::Io {
                what: format!("create {path}"),
                source: e.into(),
            },
        })?;
        if let Err(e) = rustix::fs::ftruncate(&fd, len as u64) {
            let _ = shm::unlink(path.as_str());
            return Err(ShmError::Io {
                what: format!("size {path} to {len} bytes"),
                source: e.into(),
            });
        }
        Self::map_fd(fd, len, &path)
    }

    /// Opens and maps an existing named object, whole.
    pub(crate) fn open_named(name: &str) -> Result<Region, ShmError> {
        let path = object_name(name);
        let fd =
            shm::open(path.as_str(), shm::OFlags::RDWR, Mode::empty()).map_err(|e| match e {
                rustix::io::Errno::NOENT => ShmError::NotFound { name: name.into() },
                e => ShmError::Io {
                    what: format!("open {path}"),
                    source: e.into(),
                },
            })?;
        let st = rustix::fs::fstat(&fd).map_err(|e| ShmError::Io {
            what: format!("stat {path}"),
            source: e.into(),
        })?;
        let len = usize::try_from(st.st_size).unwrap_or(0);
        if len < super::layout::HEADER_LEN {
            return Err(ShmError::Corrupt {
                name: name.into(),
                why: format!("object is {len} bytes, smaller than a header"),
            });
        }
        Self::map_fd(fd, len, &path)
    }

    fn map_fd(fd: OwnedFd, len: usize, path: &str) -> Result<Region, ShmError> {
        // SAFETY: mapping a file we opened read-write, at a kernel-chosen
        // address, aliases no Rust object. Length equals the file size we
        // set or read.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| ShmError::Io {
            what: format!("mmap {path}"),
            source: e.into(),
        })?;
        Self::from_mapping(ptr, len, Some(fd))
    }

    fn from_mapping(ptr: *mut c_void, len: usize, fd: Option<OwnedFd>) -> Result<Region, ShmError> {
        Ok(Region {
            ptr: NonNull::new(ptr.cast()).ok_or(ShmError::Io {
                what: "mmap returned null".into(),
                source: std::io::Error::other("null mapping"),
            })?,
            len,
            _fd: fd,
        })
    }

    /// Removes a named object; mappings stay valid until dropped.
    pub(crate) fn unlink_named(name: &str) -> Result<(), ShmError> {
        let path = object_name(name);
        shm::unlink(path.as_str()).map_err(|e| match e {
            rustix::io::Errno::NOENT => ShmError::NotFound { name: name.into() },
            e => ShmError::Io {
                what: format!("unlink {path}"),
                source: e.into(),
            },
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Runs `f` holding an exclusive `flock` on the backing object (no-op
    /// for anonymous memory): attaching and last-one-out removal of a named
    /// segment exclude each other with it.
    pub(crate) fn locked<T>(&self, f: impl FnOnce() -> T) -> T {
        let Some(fd) = &self._fd else {
            return f();
        };
        let _ = rustix::fs::flock(fd, rustix::fs::FlockOperation::LockExclusive);
        let r = f();
        let _ = rustix::fs::flock(fd, rustix::fs::FlockOperation::Unlock);
        r
    }

    /// Does `/dev/shm` still have this mapping's object under `name`?
    pub(crate) fn is_named(&self, name: &str) -> bool {
        let Some(fd) = &self._fd else {
            return false;
        };
        let Ok(mine) = rustix::fs::fstat(fd) else {
            return false;
        };
        let path = format!("/dev/shm{}", object_name(name));
        rustix::fs::stat(path.as_str())
            .is_ok_and(|st| st.st_dev == mine.st_dev && st.st_ino == mine.st_ino)
    }

    fn check(&self, off: usize, len: usize, align: usize) {
        // Offsets come from a layout validated against `self.len` at open;
        // failing here is a bug in shmnet, not hostile input.
        assert!(
            off.is_multiple_of(align) && off.checked_add(len).is_some_and(|end| end <= self.len),
            "shm access out of layout: off {off} len {len} region {}",
            self.len
        );
    }

    /// The 32-bit atomic at `off` (4-aligned, inside the region).
    pub(crate) fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4, 4);
        // SAFETY: in bounds and aligned (checked above); the mapping lives as
        // long as `self`; an atomic may be shared with any other writer, and
        // every bit pattern is a valid u32.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU32) }
    }

    /// The 64-bit atomic at `off` (8-aligned, inside the region).
    pub(crate) fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        self.check(off, 8, 8);
        // SAFETY: as for `atomic_u32`, with 8-byte alignment checked.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU64) }
    }

    /// Copies `dst.len()` bytes starting at `off` out of the region.
    /// Returns `false` (and copies nothing) if the range is outside it.
    pub(crate) fn read(&self, off: usize, dst: &mut [u8]) -> bool {
        if off.checked_add(dst.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        // SAFETY: the source range is inside the mapping (checked above) and
        // `dst` is a distinct local buffer. A peer writing concurrently can
        // only change which bytes we get, and any byte is a valid u8; callers
        // validate what they copied.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), dst.as_mut_ptr(), dst.len())
        };
        true
    }

    /// Copies `src` into the region at `off`; `false` if out of range.
    pub(crate) fn write(&self, off: usize, src: &[u8]) -> bool {
        if off.checked_add(src.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        // SAFETY: destination inside the mapping (checked above), source a
        // distinct local slice; no Rust reference to the destination exists.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(off), src.len())
        };
        true
    }

    /// A mutable view of `len` bytes at `off`.
    ///
    /// # Safety
    /// The caller must own the range exclusively for the lifetime of the
    /// borrow: no other handle in this process may touch it, and well-behaved
    /// peers do not, by protocol (a transmit buffer is the sender's until it
    /// publishes a descriptor for it). A hostile peer writing it anyway can
    /// only garble the frame being written, which receivers validate.
    // Handing out `&mut` from `&self` is the point: the mapping is shared
    // memory, and exclusivity is the caller's contract (see # Safety).
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        self.check(off, len, 1);
        // SAFETY: in bounds (checked); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) }
    }

    /// A shared view of `len` bytes at `off`.
    ///
    /// # Safety
    /// Nobody may write the range during the borrow: not this process, and,
    /// by protocol, no peer (a received buffer stays untouched by its sender
    /// until the consumer's tail passes it).
    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        self.check(off, len, 1);
        // SAFETY: in bounds (checked); immutability is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }

    /// The bytes of a frame taken in place (see [`InPlaceFrame`]).
    pub(crate) fn frame(&self, f: &InPlaceFrame) -> &[u8] {
        // SAFETY: an `InPlaceFrame` is only made by `InPlaceFrame::new` from
        // a descriptor that passed `DescriptorRepr::parse`, so the range is
        // one buffer of the sender's pool, inside the mapping (checked again
        // by `bytes`). By protocol the sender does not write that buffer
        // until the consumer publishes a tail past its slot, which the port
        // does only on its next call; `recv_in_place` is reserved for
        // trusted senders that follow it.
        unsafe { self.bytes(f.offset, f.len) }
    }
}

/// A transmit buffer of a port's pool, lent by
/// [`Port::alloc`](super::Port::alloc) until sent or released.
///
/// Only the pool's allocator makes one, from its free list, and it is not
/// `Clone`: holding it is what entitles the pool to lend the buffer's bytes
/// ([`Port::buffer_mut`](super::Port::buffer_mut)).
#[derive(Debug)]
pub struct TxBuf {
    index: u32,
}

/// A received frame still in the sender's buffer (see
/// [`Port::recv_in_place`](super::Port::recv_in_place)); read it with
/// [`Segment::frame_bytes`](super::Segment::frame_bytes).
#[derive(Debug)]
pub struct InPlaceFrame {
    offset: usize,
    len: usize,
    src: u32,
}

impl InPlaceFrame {
    /// A frame of `len` bytes at `offset`, in the pool of port `src`. Only
    /// for a range named by a descriptor that passed
    /// [`DescriptorRepr::parse`](super::layout::DescriptorRepr::parse).
    pub(crate) fn new(offset: usize, len: usize, src: u32) -> InPlaceFrame {
        InPlaceFrame { offset, len, src }
    }
    /// Where the frame starts in the region.
    pub(crate) fn offset(&self) -> usize {
        self.offset
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The sending port.
    pub fn src(&self) -> u32 {
        self.src
    }
}

/// One port's transmit buffers, as this process sees them: which are free,
/// and how many descriptors (queued or in a ring) still name each.
///
/// A port has exactly one pool and holds it for as long as it owns its
/// directory slot; the pool is the only maker of [`TxBuf`]s for its
/// buffers and lends their bytes only through `&mut self`.
pub(crate) struct Pool {
    /// Offset of buffer 0 in the region.
    off: usize,
    frame_size: usize,
    free: Vec<u32>,
    refs: Vec<u16>,
}

impl Pool {
    /// A pool of `buffers` buffers of `frame_size` bytes at `off`, all free.
    pub(crate) fn new(off: usize, frame_size: usize, buffers: u32) -> Pool {
        Pool {
            off,
            frame_size,
            free: (0..buffers).rev().collect(),
            refs: vec![0; buffers as usize],
        }
    }

    /// Buffers in the pool.
    pub(crate) fn len(&self) -> usize {
        self.refs.len()
    }

    /// Buffers free now.
    pub(crate) fn free_len(&self) -> usize {
        self.free.len()
    }

    /// Takes a free buffer, or `None` if every buffer is lent or named by a
    /// descriptor.
    #[inline]
    pub(crate) fn alloc(&mut self) -> Option<TxBuf> {
        let index = self.free.pop()?;
        self.refs[index as usize] = 1;
        Some(TxBuf { index })
    }

    /// One more descriptor will name `buf`; returns the buffer index it
    /// carries.
    #[inline]
    pub(crate) fn share(&mut self, buf: &TxBuf) -> u32 {
        self.refs[buf.index as usize] += 1;
        buf.index
    }

    /// Gives up the lender's hold on `buf` (sent or unsent): it is free
    /// again once no descriptor names it.
    #[inline]
    pub(crate) fn release(&mut self, buf: TxBuf) {
        self.unref(buf.index);
    }

    /// A descriptor naming buffer `index` is done with (consumed, or its
    /// link dropped).
    #[inline]
    pub(crate) fn unref(&mut self, index: u32) {
        let r = &mut self.refs[index as usize];
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.free.push(index);
        }
    }

    /// The whole buffer (`frame_size` bytes) behind `buf`.
    #[inline]
    pub(crate) fn bytes_mut<'a>(&'a mut self, region: &'a Region, buf: &mut TxBuf) -> &'a mut [u8] {
        let off = self.off + buf.index as usize * self.frame_size;
        // SAFETY: `buf` came from this pool's free list (`alloc` is the only
        // maker of a `TxBuf`, and it is not `Clone`), so the range is one of
        // this pool's buffers, which `bytes_mut` bounds-checks again. The
        // view borrows `&mut self`, so no other view of this pool's buffers
        // exists in this process while it lives. Peers read
        // only buffers a descriptor names, and a buffer comes off the free
        // list only when none does.
        unsafe { region.bytes_mut(off, self.frame_size) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; every borrow
        // handed out is tied to `&self`, so none outlives this call.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr() as *mut c_void, self.len) };
    }
}
