//! A public face of [`HostMember`] for integration tests of the protocol
//! between processes (feature `testing`): a port with a real sealed region
//! and doorbell, and no data path.

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
            HostMember::join(&rundir, network, &geo, &info, &doorbell, |i, e| {
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
