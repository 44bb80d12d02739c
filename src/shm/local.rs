//! Membership between threads of one process: a registry of networks by
//! name, each a table of the ports attached to it.
//!
//! The same contract as the host backend (see `member.rs`): a joiner gets
//! a `Joined` event for every port already there, and each of those gets
//! one for the joiner; a port that detaches (or whose thread unwinds)
//! leaves a `Left` event with every other. Regions are process-local
//! memory shared as [`PeerView`]s, which only read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::ShmError;
use super::layout::Geometry;
use super::member::{Doorbell, Event, PeerInfo, PeerLink, PortInfo, fresh_epoch};
use super::region::{PeerView, Region};

/// One network of this process.
pub(crate) struct LocalNetwork {
    name: String,
    geo: Geometry,
    ports: Mutex<Vec<Option<Entry>>>,
}

struct Entry {
    info: PeerInfo,
    region: Arc<Region>,
    doorbell: Doorbell,
    inbox: Arc<Inbox>,
}

/// Events waiting for one port, with a flag so that checking costs no lock.
#[derive(Default)]
struct Inbox {
    events: Mutex<Vec<Event>>,
    any: AtomicBool,
}

impl Inbox {
    fn push(&self, e: Event) {
        self.events.lock().push(e);
        self.any.store(true, Ordering::Release);
    }
}

static REGISTRY: Mutex<Option<HashMap<String, Weak<LocalNetwork>>>> = Mutex::new(None);

impl LocalNetwork {
    /// The network of this name in this process, made if needed; an
    /// existing one must have the same geometry.
    pub(crate) fn open_or_create(
        name: &str,
        geo: &Geometry,
    ) -> Result<Arc<LocalNetwork>, ShmError> {
        let mut reg = REGISTRY.lock();
        let map = reg.get_or_insert_with(HashMap::new);
        if let Some(net) = map.get(name).and_then(Weak::upgrade) {
            if let Some((field, found, requested)) = net.geo.mismatch(geo) {
                return Err(ShmError::ParameterMismatch {
                    name: name.into(),
                    field,
                    found,
                    requested,
                });
            }
            return Ok(net);
        }
        map.retain(|_, w| w.strong_count() > 0);
        let net = Arc::new(LocalNetwork {
            name: name.into(),
            geo: *geo,
            ports: Mutex::new((0..geo.max_ports).map(|_| None).collect()),
        });
        map.insert(name.into(), Arc::downgrade(&net));
        Ok(net)
    }

    /// Attaches a port: checks its addresses against the live ports, picks
    /// the lowest free index, makes its region with `make_region(index,
    /// epoch)`, and introduces it to everyone.
    pub(crate) fn join(
        self: &Arc<Self>,
        info: &PortInfo,
        doorbell: &Doorbell,
        make_region: impl FnOnce(u32, u32) -> Result<Region, ShmError>,
    ) -> Result<(LocalMember, Arc<Region>), ShmError> {
        let mut ports = self.ports.lock();
        for e in ports.iter().flatten() {
            if let Some(what) = info.clash(&e.info.info) {
                return Err(ShmError::AddressInUse {
                    name: self.name.clone(),
                    what,
                    holder: format!("device {} (this process)", e.info.info.name),
                });
            }
        }
        let index = ports
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| ShmError::Full {
                name: self.name.clone(),
                max_ports: self.geo.max_ports,
            })? as u32;
        let epoch = fresh_epoch();
        let region = Arc::new(make_region(index, epoch)?);
        let me = PeerInfo {
            index,
            epoch,
            owner_pid: std::process::id(),
            info: info.clone(),
        };
        let inbox = Arc::new(Inbox::default());
        for e in ports.iter().flatten() {
            inbox.push(Event::Joined(link(&e.info, &e.region, &e.doorbell)));
            e.inbox.push(Event::Joined(link(&me, &region, doorbell)));
            e.doorbell.ring();
        }
        ports[index as usize] = Some(Entry {
            info: me,
            region: Arc::clone(&region),
            doorbell: doorbell.clone(),
            inbox: Arc::clone(&inbox),
        });
        Ok((
            LocalMember {
                net: Arc::clone(self),
                index,
                epoch,
                inbox,
            },
            region,
        ))
    }

    /// The ports attached now.
    pub(crate) fn peers(&self) -> Vec<PeerInfo> {
        self.ports
            .lock()
            .iter()
            .flatten()
            .map(|e| e.info.clone())
            .collect()
    }

    fn leave(&self, index: u32, epoch: u32) {
        let mut ports = self.ports.lock();
        let Some(slot) = ports.get_mut(index as usize) else {
            return;
        };
        if slot.as_ref().is_some_and(|e| e.info.epoch == epoch) {
            *slot = None;
        }
        for e in ports.iter().flatten() {
            e.inbox.push(Event::Left { index, epoch });
            e.doorbell.ring();
        }
    }
}

fn link(info: &PeerInfo, region: &Arc<Region>, doorbell: &Doorbell) -> PeerLink {
    PeerLink {
        info: info.clone(),
        view: PeerView::in_process(Arc::clone(region)),
        doorbell: doorbell.clone(),
    }
}

/// A port's membership of a [`LocalNetwork`]; leaves it when dropped.
pub(crate) struct LocalMember {
    net: Arc<LocalNetwork>,
    index: u32,
    epoch: u32,
    inbox: Arc<Inbox>,
}

impl LocalMember {
    /// Moves pending events to `out` (costs one atomic load when none).
    #[inline]
    pub(crate) fn poll(&mut self, out: &mut Vec<Event>) {
        if self.inbox.any.swap(false, Ordering::Acquire) {
            out.append(&mut self.inbox.events.lock());
        }
    }
    pub(crate) fn index(&self) -> u32 {
        self.index
    }
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch
    }
    /// Are events waiting?
    pub(crate) fn pending(&self) -> bool {
        self.inbox.any.load(Ordering::Acquire)
    }
}

impl Drop for LocalMember {
    fn drop(&mut self) {
        self.net.leave(self.index, self.epoch);
    }
}
