//! The connections to peers: accepting joiners, checking each hello before
//! anything it carries is used (answering a joiner's with ours), and
//! reporting who joined and who left. A bad hello closes its connection and
//! is counted, never a panic.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use rustix::event::epoll;
use rustix::fs::OFlags;
use rustix::io::Errno;
use rustix::net::SocketFlags;

use super::rundir::{euid, owner_name};
use super::wire::{MAX_FDS, Message, Received, peer_cred, receive, send_hello};
use super::{Membership, reason};
use crate::counters::bump;
use crate::shm::layout::{HEADER_LEN, HeaderRepr, PortHeader};
use crate::shm::member::{Doorbell, Event, PeerInfo, PeerLink};
use crate::shm::record::{PortRecord, RECORD_LEN, RecordRepr};
use crate::shm::region::{PeerView, Region};

/// Work per `poll`, so one chatty or flooding peer cannot starve the port.
const MESSAGES_PER_POLL: usize = 8;
const ACCEPTS_PER_POLL: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnState {
    /// No hello from the peer yet.
    AwaitHello,
    /// The peer's hello passed; its hang-up is [`Event::Left`].
    Joined { index: u32, epoch: u32 },
}

pub(super) struct Connection {
    pub(super) fd: OwnedFd,
    /// The kernel's pid of the peer (SO_PEERCRED).
    pub(super) pid: u32,
    /// For connections we made at join: the port (index, epoch) whose
    /// answer we expect, as its record file said.
    pub(super) expect: Option<(u32, u32)>,
    pub(super) state: ConnState,
}

/// A doorbell is written from the data path: a pipe or socket passed
/// instead of an eventfd could block every send once full, so it must be
/// non-blocking and, where /proc says, an eventfd.
fn check_doorbell(fd: &OwnedFd) -> Result<(), String> {
    let flags = rustix::fs::fcntl_getfl(fd).map_err(|e| format!("doorbell: {e}"))?;
    if !flags.contains(OFlags::NONBLOCK) {
        return Err("doorbell is a blocking file".into());
    }
    if let Ok(link) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        && link != Path::new("anon_inode:[eventfd]")
    {
        return Err(format!("doorbell is {}, not an eventfd", link.display()));
    }
    Ok(())
}

impl Membership {
    pub(super) fn accept_all(&mut self, out: &mut Vec<Event>) {
        for _ in 0..ACCEPTS_PER_POLL {
            let Some(listener) = &self.listener else {
                return;
            };
            let fd = match rustix::net::accept_with(
                listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(fd) => fd,
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR) | Err(Errno::CONNABORTED) => continue,
                Err(e) => {
                    log::warn!("network {:?}: accept: {e}", self.net.name);
                    return;
                }
            };
            let cred = match peer_cred(fd.as_fd()) {
                Ok(c) => c,
                Err(e) => {
                    self.count_rejection(0, &format!("no credentials ({e})"));
                    continue;
                }
            };
            if cred.uid != euid() {
                self.count_rejection(
                    cred.pid,
                    &format!("connection from {} refused", owner_name(cred.uid)),
                );
                continue;
            }
            // A process of ours could open connections without end; bound
            // those that have not said hello yet (liveness probes of
            // leavers and `shmnet segments` close at once).
            let silent = self
                .connections
                .values()
                .filter(|c| c.expect.is_none() && c.state == ConnState::AwaitHello)
                .count();
            if silent >= 2 * self.geo.max_ports as usize + 16 {
                self.count_rejection(cred.pid, "too many connections without a hello");
                continue;
            }
            // A joiner sends its hello right after connecting: read it now
            // rather than on the next poll.
            if let Some(token) = self.add_connection(fd, cred.pid) {
                self.handle_connection(token, out);
            }
        }
    }

    fn add_connection(&mut self, fd: OwnedFd, pid: u32) -> Option<u64> {
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = epoll::add(
            &self.epoll,
            &fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        ) {
            log::warn!("network {:?}: epoll add: {e}", self.net.name);
            return None;
        }
        self.connections.insert(
            token,
            Connection {
                fd,
                pid,
                expect: None,
                state: ConnState::AwaitHello,
            },
        );
        Some(token)
    }

    pub(super) fn handle_connection(&mut self, token: u64, out: &mut Vec<Event>) {
        for _ in 0..MESSAGES_PER_POLL {
            let Some(conn) = self.connections.get(&token) else {
                return;
            };
            match receive(conn.fd.as_fd()) {
                Received::Nothing => return,
                Received::Closed => return self.hang_up(token, out),
                Received::Message(msg) if conn.state == ConnState::AwaitHello => {
                    self.handle_hello(token, *msg, out)
                }
                // Only one hello per connection; the rest (and any fds,
                // closed as `msg` drops) is ignored.
                Received::Message(msg) => bump(&self.counters.extra_bytes, msg.len as u64),
            }
        }
    }

    fn handle_hello(&mut self, token: u64, msg: Message, out: &mut Vec<Event>) {
        let extra = msg.len.saturating_sub(RECORD_LEN) as u64;
        let Some(conn) = self.connections.get(&token) else {
            return;
        };
        let pid = conn.pid;
        let link = match self.check_hello(conn, msg) {
            Ok(link) => link,
            Err(why) => {
                self.count_rejection(pid, &why);
                self.drop_connection(token);
                return;
            }
        };
        bump(&self.counters.extra_bytes, extra);
        let (index, epoch) = (link.info.index, link.info.epoch);
        // A newer attachment at an index we hold: the old one is gone, even
        // if its hang-up has not reached us yet.
        if let Some((old_epoch, old_token)) = self.joined[index as usize] {
            self.drop_connection(old_token);
            self.joined[index as usize] = None;
            bump(&self.counters.peers_left, 1);
            out.push(Event::Left {
                index,
                epoch: old_epoch,
            });
        }
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        if conn.expect.is_none() {
            // A joiner: answer with our hello before counting it in.
            if let Err(e) = send_hello(
                conn.fd.as_fd(),
                &self.hello,
                self.memfd.as_fd(),
                self.doorbell.fd(),
            ) {
                log::info!(
                    "network {:?}: port {index} left before our answer ({e})",
                    self.net.name
                );
                self.drop_connection(token);
                return;
            }
        }
        conn.state = ConnState::Joined { index, epoch };
        self.joined[index as usize] = Some((epoch, token));
        bump(&self.counters.peers_joined, 1);
        out.push(Event::Joined(link));
    }

    /// Every check a hello must pass, in order of cost; the error is the
    /// reason logged with the rejection.
    fn check_hello(&self, conn: &Connection, msg: Message) -> Result<PeerLink, String> {
        if msg.fds_truncated {
            return Err(format!("more than {MAX_FDS} file descriptors"));
        }
        if msg.len < RECORD_LEN {
            return Err(format!(
                "a hello of {} bytes, a record is {RECORD_LEN}",
                msg.len
            ));
        }
        let rec = RecordRepr::parse(&PortRecord::new_unchecked(&msg.bytes[..RECORD_LEN]))
            .map_err(reason)?;
        let (index, epoch) = (rec.index, rec.epoch);
        if index >= self.geo.max_ports {
            return Err(format!(
                "port index {index}, the network has {} ports",
                self.geo.max_ports
            ));
        }
        if index == self.index {
            return Err(format!("claims our own index {index}"));
        }
        if let Some(expected) = conn.expect
            && (index, epoch) != expected
        {
            return Err(format!(
                "answered as port {index} epoch {epoch}, its record file said port {} epoch {}",
                expected.0, expected.1
            ));
        }
        if self.joined[index as usize].is_some_and(|(e, _)| e == epoch) {
            return Err(format!("port {index} epoch {epoch} has joined already"));
        }
        let n = msg.fds.len();
        let Ok([memfd, bell]) = <[OwnedFd; 2]>::try_from(msg.fds) else {
            return Err(format!(
                "{n} file descriptors, a hello carries 2 (region, doorbell)"
            ));
        };
        check_doorbell(&bell)?;
        let region = Region::map_peer(memfd, self.geo.region_len()).map_err(reason)?;
        let view = PeerView::other_process(region);
        let mut header = vec![0u8; HEADER_LEN];
        if !view.read(0, &mut header) {
            return Err("region smaller than a header".into());
        }
        let h = HeaderRepr::parse(&PortHeader::new_unchecked(&header[..]), view.len())
            .map_err(|e| format!("region header: {}", reason(e)))?;
        if let Some((field, ours, theirs)) = self.geo.mismatch(&h.geo) {
            return Err(format!(
                "region built for {field} {theirs}, the network has {ours}"
            ));
        }
        if h.geo != self.geo {
            return Err("region geometry differs".into());
        }
        if (h.index, h.epoch) != (index, epoch) {
            return Err(format!(
                "region header says port {} epoch {}, the record port {index} epoch {epoch}",
                h.index, h.epoch
            ));
        }
        Ok(PeerLink {
            info: PeerInfo {
                index,
                epoch,
                owner_pid: conn.pid,
                info: rec.info,
            },
            view,
            doorbell: Doorbell::from_fd(bell),
        })
    }

    fn count_rejection(&self, pid: u32, why: &str) {
        bump(&self.counters.hellos_rejected, 1);
        log::warn!(
            "network {:?}: refused a peer (pid {pid}): {why}",
            self.net.name
        );
    }

    fn drop_connection(&mut self, token: u64) -> Option<Connection> {
        let c = self.connections.remove(&token)?;
        let _ = epoll::delete(&self.epoll, &c.fd);
        Some(c)
    }

    fn hang_up(&mut self, token: u64, out: &mut Vec<Event>) {
        let Some(conn) = self.drop_connection(token) else {
            return;
        };
        // A connection replaced by a newer attachment has had its Left.
        if let ConnState::Joined { index, epoch } = conn.state
            && self.joined[index as usize] == Some((epoch, token))
        {
            self.joined[index as usize] = None;
            bump(&self.counters.peers_left, 1);
            out.push(Event::Left { index, epoch });
        }
    }
}
