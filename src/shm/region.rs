//! Raw memory: the only module of shmnet that holds pointers to shared
//! memory, and the only one allowed `unsafe` code.
//!
//! A [`Region`] is one port's memory, mapped read-write by its owner only:
//! either anonymous (devices are threads of one process) or a sealed memfd
//! (devices are processes; peers get the fd over a Unix socket). A
//! [`PeerView`] is a peer's region as this port sees it: mapped read-only
//! (a memfd sealed against writable mappings and resizing, so a peer can
//! neither write nor truncate it), or, between threads, the same memory
//! behind an API that only reads. Everything above this module reaches the
//! mappings through them, by offset:
//!
//! - atomics at fixed, layout-checked offsets ([`Region::atomic_u32`],
//!   [`Region::atomic_u64`], [`PeerView::load_u32`], [`PeerView::load_u64`]):
//!   ring words and flags;
//! - copies in and out ([`Region::write`], [`PeerView::read`]): headers and
//!   descriptors are copied into local buffers before they are parsed;
//! - two lent views of frame buffers, each behind a token only this module
//!   makes: a transmit buffer of this port's [`Pool`] ([`Pool::bytes_mut`],
//!   for a [`TxBuf`]) in memory only this port writes, and a received frame
//!   left in an in-process sender's buffer ([`PeerView::frame`], for an
//!   [`InPlaceFrame`]).
//!
//! Contract: an offset outside the layout is a bug in shmnet and panics;
//! bytes a peer wrote are returned as values for the caller to validate. No
//! reference is ever formed to memory another process can write: every
//! byte has one writer, its owner, and a peer process reaches it only
//! through copies and atomic loads.
//!
//! ```
//! use shmnet::shm::{NetworkParams, PortInfo, Segment, SegmentKind};
//! let seg = Segment::open_or_create("doc-region", SegmentKind::InProcess, &NetworkParams::new(1500)).unwrap();
//! let mut port = seg.attach(&PortInfo::named("a")).unwrap();
//! let mut buf = port.alloc().unwrap(); // a TxBuf: this port's buffer, lent
//! port.buffer_mut(&mut buf)[..2].copy_from_slice(b"hi");
//! port.release(buf);
//! ```
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use super::ShmError;

/// The seals a peer's memfd must carry before we map it: nobody can resize
/// it (no SIGBUS), nobody can map it writable or write it any more (the
/// owner keeps the one writable mapping it made before sealing), and the
/// seals themselves are final.
pub(crate) const PEER_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::FUTURE_WRITE)
    .union(SealFlags::SEAL);

fn io(what: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> ShmError {
    let what = what.into();
    move |e| ShmError::Io {
        what,
        source: e.into(),
    }
}

/// One mapping: a port's own memory (read-write) or a peer's (read-only).
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    fd: Option<OwnedFd>,
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
        .map_err(io("mmap anonymous region"))?;
        Self::from_mapping(ptr, len, true, None)
    }

    /// Creates a zeroed memfd of `len` bytes, maps it read-write, then seals
    /// it ([`PEER_SEALS`]): this mapping stays the only writable one there
    /// will ever be, and the size is fixed. Share it with
    /// [`Region::fd`]; peers map it with [`Region::map_peer`].
    pub(crate) fn sealed_memfd(name: &str, len: usize) -> Result<Region, ShmError> {
        let fd = rustix::fs::memfd_create(
            format!("shmnet:{name}"),
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(io("memfd_create"))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(io(format!("size memfd to {len} bytes")))?;
        // SAFETY: mapping a memfd we just created, at a kernel-chosen
        // address, aliases no Rust object; the length is the size we set.
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
        .map_err(io("mmap memfd"))?;
        let region = Self::from_mapping(ptr, len, true, Some(fd))?;
        if let Some(fd) = &region.fd {
            rustix::fs::fcntl_add_seals(fd, PEER_SEALS).map_err(io("seal memfd"))?;
        }
        Ok(region)
    }

    /// Maps a peer's memfd read-only after checking that it is sealed
    /// ([`PEER_SEALS`]) and exactly `len` bytes long, so the peer can neither
    /// write it behind our back through another mapping nor shrink it under
    /// us.
    pub(crate) fn map_peer(fd: OwnedFd, len: usize) -> Result<Region, ShmError> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(io("read a peer region's seals"))?;
        if !seals.contains(PEER_SEALS) {
            return Err(ShmError::corrupt(format!(
                "peer region is not sealed (seals {seals:?})"
            )));
        }
        let st = rustix::fs::fstat(&fd).map_err(io("stat a peer region"))?;
        if st.st_size != len as i64 {
            return Err(ShmError::corrupt(format!(
                "peer region is {} bytes, the geometry says {len}",
                st.st_size
            )));
        }
        // SAFETY: a read-only shared mapping of a file whose size is fixed
        // (sealed) and equal to `len`: every byte of the mapping stays
        // backed, and no Rust reference is formed to it beyond atomics.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(io("mmap a peer region"))?;
        Self::from_mapping(ptr, len, false, None)
    }

    fn from_mapping(
        ptr: *mut c_void,
        len: usize,
        writable: bool,
        fd: Option<OwnedFd>,
    ) -> Result<Region, ShmError> {
        Ok(Region {
            ptr: NonNull::new(ptr.cast()).ok_or(ShmError::Io {
                what: "mmap returned null".into(),
                source: std::io::Error::other("null mapping"),
            })?,
            len,
            writable,
            fd,
        })
    }

    /// The memfd behind a sealed region, to pass to peers.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn check(&self, off: usize, len: usize, align: usize) {
        // Offsets come from a layout validated against `self.len` at open;
        // failing here is a bug in shmnet, not hostile input.
        assert!(
            off.is_multiple_of(align) && off.checked_add(len).is_some_and(|end| end <= self.len),
            "shm access out of layout: off {off} len {len} region {}",
            self.len
        );
    }

    /// The 32-bit atomic at `off` (4-aligned, inside the region) of a
    /// region this port owns.
    #[inline]
    pub(crate) fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4, 4);
        assert!(self.writable, "store to a read-only peer region");
        // SAFETY: in bounds and aligned (checked above); the mapping lives as
        // long as `self`; an atomic may be shared with any other reader, and
        // every bit pattern is a valid u32.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU32) }
    }

    /// The 64-bit atomic at `off` (8-aligned) of a region this port owns.
    #[inline]
    pub(crate) fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        self.check(off, 8, 8);
        assert!(self.writable, "store to a read-only peer region");
        // SAFETY: as for `atomic_u32`, with 8-byte alignment checked.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU64) }
    }

    /// Loads the u32 at `off` (4-aligned), whoever owns the region.
    #[inline]
    fn load_u32(&self, off: usize) -> u32 {
        self.check(off, 4, 4);
        // SAFETY: in bounds and aligned (checked above) in a mapping that
        // lives as long as `self`; only loaded, so a read-only mapping is
        // fine, and a peer storing concurrently is what atomics allow.
        unsafe { (*(self.ptr.as_ptr().add(off) as *const AtomicU32)).load(Ordering::Acquire) }
    }

    /// Loads the u64 at `off` (8-aligned), whoever owns the region.
    #[inline]
    fn load_u64(&self, off: usize) -> u64 {
        self.check(off, 8, 8);
        // SAFETY: as for `load_u32`, with 8-byte alignment checked.
        unsafe { (*(self.ptr.as_ptr().add(off) as *const AtomicU64)).load(Ordering::Acquire) }
    }

    /// Copies `dst.len()` bytes starting at `off` out of the region.
    /// Returns `false` (and copies nothing) if the range is outside it.
    #[inline]
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
    #[inline]
    pub(crate) fn write(&self, off: usize, src: &[u8]) -> bool {
        if !self.writable || off.checked_add(src.len()).is_none_or(|end| end > self.len) {
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
    #[inline]
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
    #[inline]
    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        self.check(off, len, 1);
        // SAFETY: in bounds (checked); immutability is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }
}

/// A peer's region as this port sees it: loads and copies only.
///
/// Between processes it is a read-only mapping of the peer's sealed memfd;
/// between threads it shares the peer's own mapping, and this API, which
/// has no store, is what keeps the peer its only writer.
#[derive(Clone)]
pub(crate) struct PeerView {
    region: Arc<Region>,
    /// The peer is a thread of this process (its frames may be read in
    /// place: it follows the ring protocol because it is our own code).
    in_process: bool,
}

impl PeerView {
    /// A view of a thread peer's own region.
    pub(crate) fn in_process(region: Arc<Region>) -> PeerView {
        PeerView {
            region,
            in_process: true,
        }
    }
    /// A view of another process's region, mapped with [`Region::map_peer`].
    pub(crate) fn other_process(region: Region) -> PeerView {
        PeerView {
            region: Arc::new(region),
            in_process: false,
        }
    }
    pub(crate) fn len(&self) -> usize {
        self.region.len
    }
    #[inline]
    pub(crate) fn load_u32(&self, off: usize) -> u32 {
        self.region.load_u32(off)
    }
    #[inline]
    pub(crate) fn load_u64(&self, off: usize) -> u64 {
        self.region.load_u64(off)
    }
    /// Copies `dst.len()` bytes at `off` out; `false` if out of range.
    #[inline]
    pub(crate) fn read(&self, off: usize, dst: &mut [u8]) -> bool {
        self.region.read(off, dst)
    }
    /// Can frames of this peer be read in place ([`PeerView::frame`])?
    #[inline]
    pub(crate) fn is_in_process(&self) -> bool {
        self.in_process
    }

    /// The bytes of a frame taken in place (see [`InPlaceFrame`]); empty
    /// for a peer in another process, whose memory is never referenced.
    #[inline]
    pub(crate) fn frame(&self, f: &InPlaceFrame) -> &[u8] {
        if !self.in_process {
            return &[];
        }
        // SAFETY: an `InPlaceFrame` is only made by `InPlaceFrame::new` from
        // a descriptor that passed `DescriptorRepr::parse`, so the range is
        // one buffer of the sender's pool, inside the mapping (checked again
        // by `bytes`). The sender is a thread of this process running this
        // code: it does not write that buffer until the consumer publishes a
        // tail past its slot, which the port does only on its next call.
        unsafe { self.region.bytes(f.offset, f.len) }
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
    /// The pool that lent it: a buffer is only ever used with its own port.
    /// Non-zero, so `Option<TxBuf>` still fits in a register.
    pool: std::num::NonZeroU32,
}

/// A received frame still in the sender's buffer (see
/// [`Port::recv_in_place`](super::Port::recv_in_place)); read it with
/// [`Port::frame_bytes`](super::Port::frame_bytes).
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
    #[inline]
    pub(crate) fn new(offset: usize, len: usize, src: u32) -> InPlaceFrame {
        InPlaceFrame { offset, len, src }
    }
    /// Where the frame starts in the region.
    #[inline]
    pub(crate) fn offset(&self) -> usize {
        self.offset
    }
    /// The frame's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the frame has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The sending port.
    #[inline]
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
    /// Unique in this process: tells a pool's own `TxBuf`s from others'.
    id: std::num::NonZeroU32,
    /// Offset of buffer 0 in the region.
    off: usize,
    frame_size: usize,
    free: Vec<u32>,
    /// Holds on each buffer: its lender's, plus one per descriptor naming it.
    refs: Vec<u32>,
}

impl Pool {
    /// A pool of `buffers` buffers of `frame_size` bytes at `off`, all free.
    pub(crate) fn new(off: usize, frame_size: usize, buffers: u32) -> Pool {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        Pool {
            id: std::num::NonZeroU32::new(NEXT.fetch_add(1, Ordering::Relaxed))
                .unwrap_or(std::num::NonZeroU32::MIN),
            off,
            frame_size,
            free: (0..buffers).rev().collect(),
            refs: vec![0; buffers as usize],
        }
    }

    /// A `TxBuf` of another port is a caller bug: using it would lend a
    /// buffer this pool may have lent or sent already.
    #[inline]
    fn check_own(&self, buf: &TxBuf) {
        assert_eq!(
            buf.pool, self.id,
            "a TxBuf was used with a port that did not lend it"
        );
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
        Some(TxBuf {
            index,
            pool: self.id,
        })
    }

    /// The buffer index a descriptor naming `buf` carries.
    #[inline]
    pub(crate) fn index(&self, buf: &TxBuf) -> u32 {
        self.check_own(buf);
        buf.index
    }

    /// One more descriptor will name `buf`; returns the buffer index it
    /// carries.
    #[inline]
    pub(crate) fn share(&mut self, buf: &TxBuf) -> u32 {
        self.check_own(buf);
        self.refs[buf.index as usize] += 1;
        buf.index
    }

    /// Passes the lender's hold on `buf` to the one descriptor now naming
    /// it (queued with [`Pool::index`]).
    #[inline]
    pub(crate) fn hand_over(&mut self, buf: TxBuf) {
        self.check_own(&buf);
    }

    /// Gives up the lender's hold on `buf` (sent or unsent): it is free
    /// again once no descriptor names it.
    #[inline]
    pub(crate) fn release(&mut self, buf: TxBuf) {
        self.check_own(&buf);
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
        self.check_own(buf);
        let off = self.off + buf.index as usize * self.frame_size;
        // SAFETY: `buf` came from this pool's free list (`alloc` is the only
        // maker of a `TxBuf`, it is not `Clone`, and `check_own` refused
        // another pool's), so the range is one of this pool's buffers, which
        // `bytes_mut` bounds-checks again. The view borrows `&mut self`, so
        // no other view of this pool's buffers exists in this process while
        // it lives. The region is this port's own: no peer can write it (a
        // peer process maps it read-only, a peer thread only reads), and
        // peers read only buffers a descriptor names, while a buffer comes
        // off the free list only when none does.
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
