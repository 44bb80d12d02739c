//! The hello on the wire: SOCK_SEQPACKET sockets, a record sent with
//! `SCM_RIGHTS` [region memfd, doorbell eventfd], one message received with
//! the fds it carried, and the kernel's word (SO_PEERCRED) on who is at the
//! other end. What a hello means is checked in `peers.rs`.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::io_err;
use crate::shm::ShmError;
use crate::shm::record::RECORD_LEN;

/// Largest hello read; anything past a record is counted and ignored.
pub(super) const HELLO_BUF: usize = 512;
/// File descriptors a hello may carry before it is refused (2 expected).
pub(super) const MAX_FDS: usize = 4;

/// Who the kernel says is at the other end of a Unix socket.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cred {
    pub(super) pid: u32,
    pub(super) uid: u32,
}

// SO_PEERCRED reports pid 0 for a peer in another pid namespace, which
// rustix's non-zero `Pid` cannot hold: the ports of a network must share a
// pid namespace (they share a runtime directory, so they normally do).
pub(super) fn peer_cred(fd: BorrowedFd<'_>) -> Result<Cred, Errno> {
    let c = rustix::net::sockopt::socket_peercred(fd)?;
    Ok(Cred {
        pid: c.pid.as_raw_pid() as u32,
        uid: c.uid.as_raw(),
    })
}

pub(super) fn seqpacket_socket() -> Result<OwnedFd, ShmError> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| io_err("create a Unix socket", e))
}

/// Sends a hello: the record and `SCM_RIGHTS` [region, doorbell].
pub(super) fn send_hello(
    fd: BorrowedFd<'_>,
    hello: &[u8; RECORD_LEN],
    region: BorrowedFd<'_>,
    doorbell: BorrowedFd<'_>,
) -> Result<(), Errno> {
    let fds = [region, doorbell];
    // Slack for the alignment `new` may skip.
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2)) + 8];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(Errno::NOBUFS);
    }
    // NOSIGNAL: a peer that just died must not kill us with SIGPIPE.
    let sent = rustix::net::sendmsg(
        fd,
        &[IoSlice::new(hello)],
        &mut control,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )?;
    if sent == RECORD_LEN {
        Ok(())
    } else {
        Err(Errno::MSGSIZE)
    }
}

/// One message read from a connection.
pub(super) struct Message {
    pub(super) bytes: [u8; HELLO_BUF],
    pub(super) len: usize,
    /// The message was longer than [`HELLO_BUF`].
    pub(super) truncated: bool,
    pub(super) fds: Vec<OwnedFd>,
    /// More fds came than [`MAX_FDS`] (the kernel closed the rest).
    pub(super) fds_truncated: bool,
}

pub(super) enum Received {
    Message(Box<Message>),
    Nothing,
    Closed,
}

pub(super) fn receive(fd: BorrowedFd<'_>) -> Received {
    let mut msg = Box::new(Message {
        bytes: [0; HELLO_BUF],
        len: 0,
        truncated: false,
        fds: Vec::new(),
        fds_truncated: false,
    });
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS)) + 8];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        fd,
        &mut [IoSliceMut::new(&mut msg.bytes)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    );
    match got {
        // End of stream (or an empty message, which no shmnet sends).
        Ok(r) if r.bytes == 0 => Received::Closed,
        Ok(r) => {
            msg.len = r.bytes.min(HELLO_BUF);
            msg.truncated = r.flags.contains(ReturnFlags::TRUNC);
            msg.fds_truncated = r.flags.contains(ReturnFlags::CTRUNC);
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = m {
                    msg.fds.extend(fds);
                }
            }
            Received::Message(msg)
        }
        Err(Errno::AGAIN) | Err(Errno::INTR) => Received::Nothing,
        Err(_) => Received::Closed,
    }
}
