//! A public face of `HostMember`, a port's membership between processes,
//! for integration tests of that protocol (feature `testing`): a port with
//! a real sealed region and doorbell, and no data path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{HostMember, own_pid};
use crate::shm::ShmError;
use crate::shm::layout::{Geometry, HEADER_LEN, HeaderRepr, LinkMedium, PortHeader};
use crate::shm::member::{Doorbell, Event, PortInfo};
use crate::shm::region::Region;

pub use super::HostStats;

/// A region as a process port makes it: a sealed memfd with its header
/// published (the unit tests, and [`TestMember`]).
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

/// A change in membership, as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestEvent {
    /// A port passed every check and joined.
    Joined {
        /// Its port index.
        index: u32,
        /// Its epoch (unique per attachment).
        epoch: u32,
        /// Its owner's pid, as the kernel reported it.
        pid: u32,
        /// Its device name.
        name: String,
    },
    /// A joined port's connection hung up, or a newer attachment replaced
    /// it at its index.
    Left {
        /// Its port index.
        index: u32,
        /// The epoch of the attachment that left.
        epoch: u32,
    },
}

/// A joined port (MTU 1500, Ethernet, 16 buffers).
pub struct TestMember {
    member: HostMember,
    _region: Region,
    _doorbell: Doorbell,
}

/// The per-user runtime directory (`$SHMNET_RUNTIME_DIR`, else
/// `$XDG_RUNTIME_DIR/shmnet`, else `/tmp/shmnet-<euid>`), created 0700 if
/// missing and refused unless private to this user; public for tests.
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
            HostMember::join(&rundir, network, &geo, &info, &doorbell, |i, e| {
                sealed_region(&geo, i, e)
            })?;
        Ok(TestMember {
            member,
            _region: region,
            _doorbell: doorbell,
        })
    }

    /// This port's index in the network.
    pub fn index(&self) -> u32 {
        self.member.index()
    }

    /// This attachment's epoch.
    pub fn epoch(&self) -> u32 {
        self.member.epoch()
    }

    /// What this port's membership has seen so far.
    pub fn stats(&self) -> HostStats {
        self.member.stats()
    }

    /// Never blocks: accepts joiners, checks their hellos and returns who
    /// joined and who left since the last call.
    pub fn poll(&mut self) -> Vec<TestEvent> {
        let mut out = Vec::new();
        self.member.poll(&mut out);
        convert(out)
    }

    /// Waits (at most `limit`) until every port this one connected to at
    /// join has answered with its hello or hung up; returns the changes seen.
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
