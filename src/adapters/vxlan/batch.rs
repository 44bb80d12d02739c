//! Datagrams in batches: what a gateway commits in a round leaves in as
//! few system calls as the kernel allows, and what it receives comes in
//! the same way. Sending groups runs of equal-sized datagrams to one VTEP
//! into one UDP GSO send (`UDP_SEGMENT`: the kernel cuts them, or hands
//! them whole to a GRO-enabled receiver across a veth); receiving reads up
//! to [`quinn_udp::BATCH_SIZE`] messages per `recvmmsg`, each of which may
//! hold several datagrams coalesced by UDP GRO. quinn-udp does the socket
//! options and the control messages, and falls back to one datagram per
//! call where the kernel lacks them.

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

/// The largest total a GSO send may carry (64 KiB less the IP and UDP
/// headers, with room to spare).
const GSO_MAX_BYTES: usize = 65_000;
/// Datagrams queued before the queue is pushed out early.
const QUEUE_MAX: usize = 64;
/// Bytes queued before the queue is pushed out early (unless one datagram
/// needs more).
const QUEUE_BYTES: usize = 256 << 10;
/// Room for one received message: the largest UDP datagram, or as many
/// coalesced datagrams as GRO puts together.
const RX_SLOT: usize = 65_536;

/// The socket, with the offloads the kernel offers.
pub struct Socket {
    sock: UdpSocket,
    state: UdpSocketState,
}

impl Socket {
    /// Takes a bound socket and turns on what the kernel supports (GRO,
    /// packet info); makes it non-blocking.
    pub fn new(sock: UdpSocket) -> std::io::Result<Socket> {
        let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
        Ok(Socket { sock, state })
    }

    /// The socket itself.
    pub fn get(&self) -> &UdpSocket {
        &self.sock
    }

    /// Sends `contents` to `to`: one datagram, or `segment`-byte datagrams
    /// cut by the kernel when `segment` is given.
    fn send(&self, to: SocketAddr, contents: &[u8], segment: Option<usize>) -> bool {
        let t = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        self.state
            .try_send(UdpSockRef::from(&self.sock), &t)
            .is_ok()
    }

    /// Sends one datagram.
    pub fn send_one(&self, to: SocketAddr, datagram: &[u8]) -> bool {
        self.send(to, datagram, None)
    }

    /// How many datagrams one send may carry.
    fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }
}

/// One queued datagram: where it starts in the queue's bytes, its length,
/// where it goes.
#[derive(Clone, Copy)]
struct Queued {
    at: usize,
    len: usize,
    to: SocketAddr,
}

/// Datagrams committed but not yet sent, back to back in one buffer so
/// that a run of them is one GSO send.
#[derive(Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    used: usize,
    queued: Vec<Queued>,
}

impl Outbox {
    /// Whether a datagram of up to `room` bytes would fit without pushing
    /// the queue out first.
    pub fn has_room(&self, room: usize) -> bool {
        self.queued.len() < QUEUE_MAX && (self.used == 0 || self.used + room <= QUEUE_BYTES)
    }

    /// The free space after the queued datagrams, `room` bytes long: where
    /// the next datagram is written.
    pub fn tail(&mut self, room: usize) -> &mut [u8] {
        let end = self.used + room;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        &mut self.bytes[self.used..end]
    }

    /// Queues the `len` bytes at the tail for `to`, once per destination
    /// (the bytes are stored once).
    pub fn queue(&mut self, len: usize, to: impl IntoIterator<Item = SocketAddr>) {
        let at = self.used;
        let before = self.queued.len();
        self.queued
            .extend(to.into_iter().map(|to| Queued { at, len, to }));
        if self.queued.len() > before {
            self.used += len;
        }
    }

    /// The queued datagrams in order (bytes and destination), emptying the
    /// queue; for senders that treat each one alone (fault injection).
    pub fn drain(&mut self, mut each: impl FnMut(&[u8], SocketAddr)) {
        for q in &self.queued {
            each(&self.bytes[q.at..q.at + q.len], q.to);
        }
        self.clear();
    }

    /// Sends everything queued, runs of equal-sized datagrams to one VTEP
    /// as one GSO send each. Returns (datagrams sent, datagrams the kernel
    /// refused: a full socket buffer).
    pub fn send(&mut self, sock: &Socket) -> (usize, usize) {
        let max = sock.max_segments();
        let (mut sent, mut refused) = (0, 0);
        let mut i = 0;
        while i < self.queued.len() {
            let first = self.queued[i];
            let n = self.run_from(i, max);
            let end = self.queued[i + n - 1].at + self.queued[i + n - 1].len;
            let segment = (n > 1).then_some(first.len);
            if sock.send(first.to, &self.bytes[first.at..end], segment) {
                sent += n;
            } else {
                refused += n;
            }
            i += n;
        }
        self.clear();
        (sent, refused)
    }

    /// How many datagrams from `i` on make one GSO send: the same
    /// destination, back to back, each as long as the first except a
    /// shorter last one, at most `max` and [`GSO_MAX_BYTES`] in all.
    fn run_from(&self, i: usize, max: usize) -> usize {
        let first = self.queued[i];
        let (mut n, mut total) = (1, first.len);
        while let Some(q) = self.queued.get(i + n) {
            let fits = q.to == first.to
                && q.at == first.at + total
                && q.len <= first.len
                && n < max
                && total + q.len <= GSO_MAX_BYTES;
            if !fits {
                break;
            }
            n += 1;
            total += q.len;
            if q.len < first.len {
                break;
            }
        }
        n
    }

    fn clear(&mut self) {
        self.queued.clear();
        self.used = 0;
    }
}

/// Messages received by one `recvmmsg`, handed out a datagram at a time.
pub struct Inbox {
    bytes: Vec<u8>,
    meta: Vec<RecvMeta>,
    /// Messages the last receive filled.
    filled: usize,
    /// The message being read, and the offset of its next datagram.
    at: usize,
    off: usize,
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox {
            bytes: vec![0; RX_SLOT * quinn_udp::BATCH_SIZE],
            meta: vec![RecvMeta::default(); quinn_udp::BATCH_SIZE],
            filled: 0,
            at: 0,
            off: 0,
        }
    }
}

impl Inbox {
    /// The next received datagram and its source: from the last batch, or
    /// from a new one if it is used up; `None` when the socket has nothing.
    pub fn next(&mut self, sock: &Socket) -> Option<(&[u8], SocketAddr)> {
        loop {
            if self.at < self.filled {
                let m = &self.meta[self.at];
                let len = m.len.min(RX_SLOT);
                let stride = if m.stride == 0 { len } else { m.stride };
                if self.off < len {
                    let start = self.at * RX_SLOT + self.off;
                    let n = stride.min(len - self.off);
                    self.off += n;
                    return Some((&self.bytes[start..start + n], m.addr));
                }
                self.at += 1;
                self.off = 0;
                continue;
            }
            self.at = 0;
            self.off = 0;
            self.filled = 0;
            let mut slices: Vec<IoSliceMut<'_>> = self
                .bytes
                .chunks_mut(RX_SLOT)
                .map(IoSliceMut::new)
                .collect();
            self.filled = sock
                .state
                .recv(UdpSockRef::from(&sock.sock), &mut slices, &mut self.meta)
                .ok()?;
            if self.filled == 0 {
                return None;
            }
        }
    }
}
