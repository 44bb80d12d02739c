//! Segments: one network's shared memory, found by name, with its port
//! directory and link table.
//!
//! A [`Segment`] is created in two phases (everything initialised, the
//! layout version stamped last), and an opener checks the header
//! ([`HeaderRepr::parse`]) before using any offset. Ports claim directory
//! entries and links claim link-table entries with a compare-and-swap on a
//! `(epoch or serial, state)` word; the entry's other fields are written
//! while it is claimed and read only between two loads of the same active
//! word. Each port records its owner's pid and start time: a port whose
//! owner died is reclaimed by the next survivor that sweeps
//! ([`Segment::sweep_dead`]), with the links only dead ports used, and the
//! last process to leave a host segment removes its name.
//!
//! Contract: nothing read from the directory or link table is trusted
//! beyond its range checks; a stale or corrupt host segment found at open
//! is removed and created anew when no live port uses it.
//!
//! Dependencies point one way: this module uses `layout`, `region` and
//! `ring` (to reset a link's ring) and knows nothing of ports. The two
//! constructors that return a [`Port`](super::Port), [`Segment::attach`]
//! and [`Segment::join`], live in `port.rs` and call
//! [`Segment::claim_port`] here.
//!
//! ```
//! use shmnet::shm::{NetworkParams, PortInfo, Segment, SegmentKind};
//! let seg = Segment::open_or_create("doc-segment", SegmentKind::Process, &NetworkParams::new(9000)).unwrap();
//! let port = seg.attach(&PortInfo::named("dev")).unwrap();
//! let me = seg.peer(port.index()).unwrap();
//! assert_eq!((seg.mtu(), me.owner_pid), (9000, std::process::id()));
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::ShmError;
use super::layout::{
    HEADER_LEN, HeaderRepr, LinkMedium, STATE_ACTIVE, STATE_CLAIMING, STATE_FREE, SegmentHeader,
    field,
};
use super::region::{InPlaceFrame, Region};

/// Where a segment's memory lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// Process-local memory: every device is a thread of this process.
    Process,
    /// A named shared-memory object (`/dev/shm/shmnet.NAME`, mode 0600):
    /// devices may be separate processes.
    Host,
}

/// The parameters of a network, fixed when its segment is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkParams {
    /// IP MTU, 576..=65535.
    pub mtu: u32,
    pub medium: LinkMedium,
    /// Ports (device adapters) the network can hold at once.
    pub max_ports: u32,
    /// Links (ordered port pairs that have exchanged traffic).
    pub max_links: u32,
    /// Transmit buffers per port (also each ring's slot count, rounded up
    /// to a power of two). `0` picks a default from the MTU.
    pub buffers: u32,
}

impl NetworkParams {
    /// Defaults for an Ethernet network with the given IP MTU.
    pub fn new(mtu: u32) -> NetworkParams {
        NetworkParams {
            mtu,
            medium: LinkMedium::Ethernet,
            max_ports: 32,
            max_links: 32 * 31,
            buffers: 0,
        }
    }

    /// About 16 MiB of buffers per port, between 64 and 1024 of them: enough
    /// for a TCP window at any MTU without pinning much memory.
    pub fn effective_buffers(&self) -> u32 {
        if self.buffers != 0 {
            return self.buffers;
        }
        let frame = self
            .mtu
            .clamp(super::layout::MTU_MIN, super::layout::MTU_MAX)
            + 64;
        ((16 << 20) / frame)
            .clamp(64, 1024)
            .next_power_of_two()
            .min(1024)
    }

    fn layout(&self) -> Result<HeaderRepr, ShmError> {
        HeaderRepr::new(
            self.mtu,
            self.medium,
            self.max_ports,
            self.max_links,
            self.effective_buffers(),
            std::process::id(),
        )
    }
}

/// What a port publishes about itself in the directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortInfo {
    /// Device name; a restarted device prefers its old port.
    pub name: String,
    /// Ethernet address (frames are switched by it on Ethernet networks).
    pub mac: [u8; 6],
    /// Addresses (frames are switched by them on IP networks).
    pub ipv4: Option<[u8; 4]>,
    pub ipv6: Option<[u8; 16]>,
}

impl PortInfo {
    /// A port with a MAC derived from the name and no IP addresses.
    pub fn named(name: &str) -> PortInfo {
        PortInfo {
            name: name.into(),
            mac: mac_from_name(name),
            ..Default::default()
        }
    }
}

/// A locally administered unicast MAC derived from a name, so a restarted
/// device keeps its address and peers' ARP caches stay right.
pub fn mac_from_name(name: &str) -> [u8; 6] {
    let h = crc32fast::hash(name.as_bytes()).to_be_bytes();
    [0x02, 0x53, h[0], h[1], h[2], h[3]]
}

/// A snapshot of one attached port, as read from the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub index: u32,
    pub epoch: u32,
    pub mac: [u8; 6],
    pub ipv4: Option<[u8; 4]>,
    pub ipv6: Option<[u8; 16]>,
    pub owner_pid: u32,
    /// [`name_tag`] of the port's name (the name itself is not stored).
    pub name_tag: u64,
}

/// The tag a port's name is stored as in the directory.
pub fn name_tag(name: &str) -> u64 {
    crc32fast::hash(name.as_bytes()) as u64
}

/// One network's shared memory.
pub struct Segment {
    pub(crate) region: Region,
    pub(crate) geo: HeaderRepr,
    name: String,
    kind: SegmentKind,
    /// A port was attached through this mapping (only then does dropping
    /// it remove an unused host segment).
    used: std::sync::atomic::AtomicBool,
}

static REGISTRY: Mutex<Option<HashMap<String, Weak<Segment>>>> = Mutex::new(None);

fn word(epoch_or_serial: u32, state: u32) -> u64 {
    (epoch_or_serial as u64) << 32 | state as u64
}
pub(crate) fn split(w: u64) -> (u32, u32) {
    ((w >> 32) as u32, w as u32)
}

/// Moves a port or link word from `from` to `to`, each `(epoch or serial,
/// state)`; `false` if the word was not `from`.
fn transition(w: &AtomicU64, from: (u32, u32), to: (u32, u32)) -> bool {
    w.compare_exchange(
        word(from.0, from.1),
        word(to.0, to.1),
        Ordering::AcqRel,
        Ordering::Relaxed,
    )
    .is_ok()
}

/// A directory entry apart from its state word, which orders it: written
/// (relaxed) while the entry is claimed, before the word turns active
/// (release); read (relaxed) between two acquire loads of the same active
/// word.
struct PortEntry {
    owner_pid: u32,
    owner_start: u64,
    mac: [u8; 6],
    ipv4: Option<[u8; 4]>,
    ipv6: Option<[u8; 16]>,
    name_tag: u64,
}

impl Segment {
    /// Opens the network's segment, creating it if it does not exist.
    ///
    /// A host segment left behind by a crashed run is reclaimed: its dead
    /// ports and their links are freed, and if no live port remains and the
    /// parameters differ (or it never finished initialising) it is removed
    /// and created anew. A live segment with other parameters is an error.
    pub fn open_or_create(
        name: &str,
        kind: SegmentKind,
        params: &NetworkParams,
    ) -> Result<Arc<Segment>, ShmError> {
        validate_name(name)?;
        let geo = params.layout()?;
        match kind {
            SegmentKind::Process => {
                let mut reg = REGISTRY.lock();
                let map = reg.get_or_insert_with(HashMap::new);
                if let Some(seg) = map.get(name).and_then(Weak::upgrade) {
                    seg.check_params(params)?;
                    return Ok(seg);
                }
                let region = Region::anonymous(geo.total_len as usize)?;
                let seg = Arc::new(Segment::initialise(region, geo, name, kind));
                map.insert(name.into(), Arc::downgrade(&seg));
                Ok(seg)
            }
            SegmentKind::Host => Self::open_or_create_host(name, geo, params),
        }
    }

    fn open_or_create_host(
        name: &str,
        geo: HeaderRepr,
        params: &NetworkParams,
    ) -> Result<Arc<Segment>, ShmError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Region::create_named(name, geo.total_len as usize) {
                Ok(region) => {
                    return Ok(Arc::new(Segment::initialise(
                        region,
                        geo,
                        name,
                        SegmentKind::Host,
                    )));
                }
                Err(ShmError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            match Self::open(name) {
                Ok(seg) => {
                    seg.sweep_dead();
                    match seg.check_params(params) {
                        Ok(()) => return Ok(seg),
                        Err(e) if seg.live_ports() == 0 => {
                            log::warn!("segment {name:?}: no live ports and {e}; recreating it");
                            let _ = Region::unlink_named(name);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(ShmError::NotFound { .. }) => {}
                Err(ShmError::NotReady) if Instant::now() < deadline => {
                    if let Some(pid) = Self::creator_of(name)
                        && !pid_alive(pid, None)
                    {
                        log::warn!(
                            "segment {name:?}: creator {pid} died while initialising; removing it"
                        );
                        let _ = Region::unlink_named(name);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(ShmError::Corrupt { why, .. }) => {
                    log::warn!("segment {name:?} is corrupt ({why}); removing it");
                    let _ = Region::unlink_named(name);
                }
                Err(e) => {
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    log::warn!("segment {name:?}: {e}; removing the stale object");
                    let _ = Region::unlink_named(name);
                }
            }
            if Instant::now() >= deadline {
                return Err(ShmError::NotReady);
            }
        }
    }

    fn creator_of(name: &str) -> Option<u32> {
        let region = Region::open_named(name).ok()?;
        let mut buf = vec![0u8; HEADER_LEN];
        region.read(0, &mut buf);
        Some(SegmentHeader::new_unchecked(&buf[..]).creator_pid())
    }

    /// Opens an existing host segment by name, checking magic, version and
    /// geometry against the mapping.
    pub fn open(name: &str) -> Result<Arc<Segment>, ShmError> {
        validate_name(name)?;
        let region = Region::open_named(name)?;
        let mut buf = vec![0u8; HEADER_LEN];
        region.read(0, &mut buf);
        let geo = HeaderRepr::parse(&SegmentHeader::new_unchecked(&buf[..]), region.len())
            .map_err(|e| match e {
                ShmError::Corrupt { why, .. } => ShmError::Corrupt {
                    name: name.into(),
                    why,
                },
                e => e,
            })?;
        Ok(Arc::new(Segment {
            region,
            geo,
            name: name.into(),
            kind: SegmentKind::Host,
            used: Default::default(),
        }))
    }

    /// Names of the host segments that exist on this machine.
    pub fn list_host() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_prefix("shmnet.")
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Removes a host segment if no live process is attached to it (dead
    /// owners are swept first). Returns whether it was removed. A segment
    /// that cannot be parsed is removed too: nothing can use it.
    pub fn remove_if_unused(name: &str) -> Result<bool, ShmError> {
        match Self::open(name) {
            Ok(seg) => {
                seg.sweep_dead();
                if seg.live_ports() > 0 {
                    return Ok(false);
                }
            }
            Err(ShmError::NotFound { .. }) => return Ok(false),
            Err(ShmError::Io { what, source }) => return Err(ShmError::Io { what, source }),
            Err(_) => {}
        }
        Self::unlink(name)?;
        Ok(true)
    }

    /// Attached ports (a snapshot).
    pub fn live_ports(&self) -> usize {
        self.peers().len()
    }

    /// Removes a host segment's name; processes that mapped it keep it.
    pub fn unlink(name: &str) -> Result<(), ShmError> {
        validate_name(name)?;
        Region::unlink_named(name)
    }

    /// Two-phase creation: everything first, the version stamp last.
    fn initialise(region: Region, geo: HeaderRepr, name: &str, kind: SegmentKind) -> Segment {
        let mut buf = vec![0u8; geo.buffer_len()];
        geo.emit(&mut SegmentHeader::new_unchecked(&mut buf[..]));
        region.write(0, &buf);
        // Directory, link table and rings are zero (fresh memory): free.
        region
            .atomic_u32(field::header::VERSION)
            .store(super::layout::LAYOUT_VERSION, Ordering::Release);
        Segment {
            region,
            geo,
            name: name.into(),
            kind,
            used: Default::default(),
        }
    }

    fn check_params(&self, p: &NetworkParams) -> Result<(), ShmError> {
        let want = p.layout()?;
        let mismatch = |field, found: u64, requested: u64| ShmError::ParameterMismatch {
            name: self.name.clone(),
            field,
            found,
            requested,
        };
        if self.geo.mtu != want.mtu {
            return Err(mismatch("mtu", self.geo.mtu as u64, want.mtu as u64));
        }
        if self.geo.medium != want.medium {
            return Err(mismatch(
                "medium",
                self.geo.medium as u64,
                want.medium as u64,
            ));
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn kind(&self) -> SegmentKind {
        self.kind
    }
    /// IP MTU of the network.
    pub fn mtu(&self) -> u32 {
        self.geo.mtu
    }
    pub fn medium(&self) -> LinkMedium {
        self.geo.medium
    }
    /// Bytes per buffer: the largest frame (IP MTU + link header) fits.
    pub fn frame_size(&self) -> usize {
        self.geo.frame_size as usize
    }
    pub fn geometry(&self) -> &HeaderRepr {
        &self.geo
    }
    /// Total mapped size in bytes (virtual; pages are committed as used).
    pub fn mapped_len(&self) -> usize {
        self.region.len()
    }

    pub(crate) fn port_u32(&self, port: u32, field: usize) -> &AtomicU32 {
        self.region.atomic_u32(self.geo.port_off(port) + field)
    }
    fn port_u64(&self, port: u32, field: usize) -> &AtomicU64 {
        self.region.atomic_u64(self.geo.port_off(port) + field)
    }
    pub(crate) fn port_word(&self, port: u32) -> &AtomicU64 {
        self.region
            .atomic_u64(self.geo.port_off(port) + field::port::WORD)
    }
    pub(crate) fn link_word(&self, link: u32) -> &AtomicU64 {
        self.region
            .atomic_u64(self.geo.link_off(link) + field::link::WORD)
    }
    fn link_u32(&self, link: u32, field: usize) -> &AtomicU32 {
        self.region.atomic_u32(self.geo.link_off(link) + field)
    }
    /// A link's two ends as `[(src, src_epoch), (dst, dst_epoch)]`, as
    /// written by its claimer (check the link word before trusting them).
    pub(crate) fn link_ends(&self, link: u32) -> [(u32, u32); 2] {
        let at = |f| self.link_u32(link, f).load(Ordering::Relaxed);
        [
            (at(field::link::SRC), at(field::link::SRC_EPOCH)),
            (at(field::link::DST), at(field::link::DST_EPOCH)),
        ]
    }
    pub(crate) fn port_generation(&self) -> &AtomicU32 {
        self.region.atomic_u32(field::header::PORT_GEN)
    }
    pub(crate) fn link_generation(&self) -> &AtomicU32 {
        self.region.atomic_u32(field::header::LINK_GEN)
    }

    /// The epoch of `port` if it is attached now.
    pub(crate) fn port_epoch(&self, port: u32) -> Option<u32> {
        if port >= self.geo.max_ports {
            return None;
        }
        let (epoch, state) = split(self.port_word(port).load(Ordering::Acquire));
        (state == STATE_ACTIVE).then_some(epoch)
    }

    /// Claims a directory slot for a new port and publishes `info` in it;
    /// returns the slot's index and the epoch it was claimed at. The seam
    /// for [`Segment::attach`] (in `port.rs`), which wraps the slot in a
    /// [`Port`](super::Port).
    ///
    /// A host segment whose last port left may have been removed between
    /// opening and claiming; that fails with [`ShmError::NotReady`].
    pub(crate) fn claim_port(&self, info: &PortInfo) -> Result<(u32, u32), ShmError> {
        self.region.locked(|| {
            if self.kind == SegmentKind::Host && !self.region.is_named(&self.name) {
                return Err(ShmError::NotReady);
            }
            let slot = self.claim_port_unlocked(info)?;
            self.used.store(true, Ordering::Relaxed);
            Ok(slot)
        })
    }

    fn claim_port_unlocked(&self, info: &PortInfo) -> Result<(u32, u32), ShmError> {
        self.sweep_dead();
        if info.mac != [0; 6] && self.peers().iter().any(|p| p.mac == info.mac) {
            return Err(ShmError::AddressInUse {
                name: self.name.clone(),
            });
        }
        let tag = name_tag(&info.name);
        // Prefer the port this device had before (same name), then any.
        let order = (0..self.geo.max_ports)
            .filter(|&p| self.port_u64(p, field::port::NAME).load(Ordering::Relaxed) == tag)
            .chain(0..self.geo.max_ports);
        for p in order {
            let w = self.port_word(p);
            let (epoch, state) = split(w.load(Ordering::Acquire));
            if state != STATE_FREE {
                continue;
            }
            let next = epoch.wrapping_add(1).max(1);
            if !transition(w, (epoch, STATE_FREE), (next, STATE_CLAIMING)) {
                continue;
            }
            let me = std::process::id();
            self.store_entry(
                p,
                &PortEntry {
                    owner_pid: me,
                    owner_start: process_start_time(me).unwrap_or(0),
                    mac: info.mac,
                    ipv4: info.ipv4,
                    ipv6: info.ipv6,
                    name_tag: tag,
                },
            );
            self.port_u32(p, field::port::SLEEPING)
                .store(0, Ordering::Relaxed);
            w.store(word(next, STATE_ACTIVE), Ordering::Release);
            self.port_generation().fetch_add(1, Ordering::AcqRel);
            return Ok((p, next));
        }
        Err(ShmError::Full {
            name: self.name.clone(),
            what: "port",
        })
    }

    /// Marks `port` (attached at `epoch`) free again.
    pub(crate) fn detach(&self, port: u32, epoch: u32) {
        if transition(
            self.port_word(port),
            (epoch, STATE_ACTIVE),
            (epoch, STATE_FREE),
        ) {
            self.port_generation().fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Rings `port`'s doorbell if its owner sleeps.
    pub(crate) fn wake_port(&self, port: u32) {
        if self
            .port_u32(port, field::port::SLEEPING)
            .load(Ordering::SeqCst)
            != 0
        {
            self.ring_doorbell(port);
        }
    }

    /// Wakes `port`'s owner whether or not it sleeps (stop requests,
    /// configuration changes).
    pub fn ring_doorbell(&self, port: u32) {
        if port >= self.geometry().max_ports {
            return;
        }
        let bell = self.port_u32(port, field::port::DOORBELL);
        bell.fetch_add(1, Ordering::AcqRel);
        let _ = rustix::thread::futex::wake(
            bell,
            rustix::thread::futex::Flags::empty(),
            i32::MAX as u32,
        );
    }

    /// The bytes of a frame taken with
    /// [`Port::recv_in_place`](super::Port::recv_in_place).
    pub fn frame_bytes(&self, f: &InPlaceFrame) -> &[u8] {
        self.region.frame(f)
    }

    /// Reads one directory entry; `None` unless it is attached and stable.
    pub fn peer(&self, index: u32) -> Option<PeerInfo> {
        if index >= self.geo.max_ports {
            return None;
        }
        let w = self.port_word(index);
        let before = w.load(Ordering::Acquire);
        let (epoch, state) = split(before);
        if state != STATE_ACTIVE {
            return None;
        }
        let e = self.load_entry(index);
        if w.load(Ordering::Acquire) != before {
            return None;
        }
        Some(PeerInfo {
            index,
            epoch,
            mac: e.mac,
            ipv4: e.ipv4,
            ipv6: e.ipv6,
            owner_pid: e.owner_pid,
            name_tag: e.name_tag,
        })
    }

    /// Writes a claimed entry's fields (see [`PortEntry`]).
    fn store_entry(&self, port: u32, e: &PortEntry) {
        let u32_at = |f| self.port_u32(port, f);
        let u64_at = |f| self.port_u64(port, f);
        let ne64 = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap_or_default());
        u32_at(field::port::OWNER_PID).store(e.owner_pid, Ordering::Relaxed);
        u64_at(field::port::OWNER_START).store(e.owner_start, Ordering::Relaxed);
        let mut mac8 = [0u8; 8];
        mac8[..6].copy_from_slice(&e.mac);
        u64_at(field::port::MAC).store(u64::from_ne_bytes(mac8), Ordering::Relaxed);
        let (v4, v4set) = e.ipv4.map_or((0, 0), |a| (u32::from_ne_bytes(a), 1));
        u32_at(field::port::IPV4).store(v4, Ordering::Relaxed);
        u32_at(field::port::IPV4_SET).store(v4set, Ordering::Relaxed);
        let v6 = e.ipv6.unwrap_or([0; 16]);
        u64_at(field::port::IPV6).store(ne64(&v6[..8]), Ordering::Relaxed);
        u64_at(field::port::IPV6_LOW).store(ne64(&v6[8..]), Ordering::Relaxed);
        u64_at(field::port::NAME).store(e.name_tag, Ordering::Relaxed);
    }

    /// Reads an entry's fields (see [`PortEntry`]); the caller checks the
    /// state word around it.
    fn load_entry(&self, port: u32) -> PortEntry {
        let u32_at = |f| self.port_u32(port, f).load(Ordering::Relaxed);
        let u64_at = |f| self.port_u64(port, f).load(Ordering::Relaxed);
        let mac8 = u64_at(field::port::MAC).to_ne_bytes();
        let mut v6 = [0u8; 16];
        v6[..8].copy_from_slice(&u64_at(field::port::IPV6).to_ne_bytes());
        v6[8..].copy_from_slice(&u64_at(field::port::IPV6_LOW).to_ne_bytes());
        PortEntry {
            owner_pid: u32_at(field::port::OWNER_PID),
            owner_start: u64_at(field::port::OWNER_START),
            mac: mac8[..6].try_into().unwrap_or_default(),
            ipv4: (u32_at(field::port::IPV4_SET) != 0)
                .then(|| u32_at(field::port::IPV4).to_ne_bytes()),
            ipv6: (v6 != [0; 16]).then_some(v6),
            name_tag: u64_at(field::port::NAME),
        }
    }

    /// Every attached port.
    pub fn peers(&self) -> Vec<PeerInfo> {
        (0..self.geo.max_ports)
            .filter_map(|i| self.peer(i))
            .collect()
    }

    /// Frees ports whose owner process has died, and links both of whose
    /// ends are gone. Returns how many ports were reclaimed. Links with one
    /// live end are left to that end, which notices and frees them itself.
    pub fn sweep_dead(&self) -> usize {
        let me = std::process::id();
        let mut reclaimed = 0;
        for p in 0..self.geo.max_ports {
            let (epoch, state) = split(self.port_word(p).load(Ordering::Acquire));
            if state == STATE_FREE {
                continue;
            }
            let pid = self
                .port_u32(p, field::port::OWNER_PID)
                .load(Ordering::Relaxed);
            let start = self
                .port_u64(p, field::port::OWNER_START)
                .load(Ordering::Relaxed);
            if pid == me || pid == 0 || pid_alive(pid, Some(start)) {
                continue;
            }
            if transition(self.port_word(p), (epoch, state), (epoch, STATE_FREE)) {
                log::info!(
                    "segment {:?}: reclaimed port {p} of dead process {pid}",
                    self.name
                );
                reclaimed += 1;
            }
        }
        if reclaimed > 0 {
            self.port_generation().fetch_add(1, Ordering::AcqRel);
        }
        let mut freed = 0;
        for l in 0..self.geo.max_links {
            let w = self.link_word(l).load(Ordering::Acquire);
            let (serial, state) = split(w);
            if state == STATE_FREE {
                continue;
            }
            let [src_live, dst_live] = self
                .link_ends(l)
                .map(|(port, epoch)| self.port_epoch(port) == Some(epoch));
            let stale = if state == STATE_CLAIMING {
                !src_live
            } else {
                !src_live && !dst_live
            };
            if stale && self.free_link(l, serial, state) {
                freed += 1;
            }
        }
        if freed > 0 {
            log::info!("segment {:?}: freed {freed} links of dead ports", self.name);
        }
        reclaimed
    }

    pub(crate) fn free_link(&self, link: u32, serial: u32, state: u32) -> bool {
        let ok = transition(self.link_word(link), (serial, state), (serial, STATE_FREE));
        if ok {
            self.link_generation().fetch_add(1, Ordering::AcqRel);
        }
        ok
    }

    /// Claims a free link `src@src_epoch → dst@dst_epoch` and resets its
    /// ring; returns `(link, serial)`.
    pub(crate) fn claim_link(
        &self,
        src: u32,
        src_epoch: u32,
        dst: u32,
        dst_epoch: u32,
    ) -> Option<(u32, u32)> {
        for l in 0..self.geo.max_links {
            let w = self.link_word(l);
            let (serial, state) = split(w.load(Ordering::Acquire));
            if state != STATE_FREE {
                continue;
            }
            let next = serial.wrapping_add(1);
            if !transition(w, (serial, STATE_FREE), (next, STATE_CLAIMING)) {
                continue;
            }
            for (f, v) in [
                (field::link::SRC, src),
                (field::link::SRC_EPOCH, src_epoch),
                (field::link::DST, dst),
                (field::link::DST_EPOCH, dst_epoch),
            ] {
                self.link_u32(l, f).store(v, Ordering::Relaxed);
            }
            super::ring::reset(&self.region, self.geo.ring_off(l));
            w.store(word(next, STATE_ACTIVE), Ordering::Release);
            self.link_generation().fetch_add(1, Ordering::AcqRel);
            return Some((l, next));
        }
        None
    }
}

impl Drop for Segment {
    /// The last process to leave a host segment removes its name, so no
    /// segment outlives its users (a crashed run's are swept on next start).
    fn drop(&mut self) {
        if self.kind != SegmentKind::Host || !*self.used.get_mut() {
            return;
        }
        self.region.locked(|| {
            self.sweep_dead();
            if self.live_ports() == 0 && self.region.is_named(&self.name) {
                let _ = Region::unlink_named(&self.name);
            }
        });
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("mtu", &self.geo.mtu)
            .finish()
    }
}

fn validate_name(name: &str) -> Result<(), ShmError> {
    if name.is_empty()
        || name.len() > 200
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ShmError::InvalidParameter(format!(
            "segment name {name:?}: use 1-200 of [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

/// Start time of a process in clock ticks since boot (`/proc/PID/stat` field 22).
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Is `pid` alive (and, if `start` is known and non-zero, the same process)?
pub(crate) fn pid_alive(pid: u32, start: Option<u64>) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    match rustix::process::test_kill_process(p) {
        Ok(()) | Err(rustix::io::Errno::PERM) => {}
        Err(_) => return false,
    }
    if is_zombie(pid) {
        return false;
    }
    match (start, process_start_time(pid)) {
        (Some(s), Some(now)) if s != 0 => s == now,
        // Without a start time to compare, a signalable process is alive.
        _ => true,
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_entry_round_trip() {
        let seg = Segment::open_or_create(
            "unit-directory",
            SegmentKind::Process,
            &NetworkParams::new(1500),
        )
        .unwrap();
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[15] = 1;
        let full = PortInfo {
            name: "full".into(),
            mac: [0x02, 0, 0, 0, 0, 1],
            ipv4: Some([10, 0, 0, 1]),
            ipv6: Some(v6),
        };
        let a = seg.attach(&full).unwrap();
        let b = seg.attach(&PortInfo::named("bare")).unwrap();
        assert_eq!(
            seg.peer(a.index()),
            Some(PeerInfo {
                index: a.index(),
                epoch: a.epoch(),
                mac: full.mac,
                ipv4: full.ipv4,
                ipv6: full.ipv6,
                owner_pid: std::process::id(),
                name_tag: name_tag("full"),
            })
        );
        let bare = seg.peer(b.index()).unwrap();
        assert_eq!((bare.ipv4, bare.ipv6), (None, None));
        assert_eq!(bare.mac, mac_from_name("bare"));
        // A second port may not take a live port's address.
        assert!(matches!(
            seg.attach(&full),
            Err(ShmError::AddressInUse { .. })
        ));
        let index = a.index();
        drop(a);
        assert_eq!(seg.peer(index), None);
        assert_eq!(seg.live_ports(), 1);
    }
}
