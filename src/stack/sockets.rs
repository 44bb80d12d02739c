//! The device's TCP socket pool: sockets whose connections are over are
//! kept, buffers and all, and handed out again for the next connection.
//!
//! A smoltcp socket's buffers are one contiguous allocation each, sized
//! for the largest window. Allocating them per connection costs more than
//! a short transfer itself: `vec![0; 4 MiB]` is either a fresh mapping that
//! page-faults on every first touch and is unmapped (with a TLB shootdown)
//! on drop, or reused heap the allocator must clear — 16 MiB of `memset`
//! per connection for two 4 MiB buffers at each end, 30 % of the CPU time of
//! a connect/request/reply/close workload. A recycled socket's pages are
//! already resident and nobody clears them: smoltcp only ever reads the
//! part of a ring it has written.
//!
//! A recycled socket is reset to what [`SocketPool::tcp`] promises (Nagle
//! off, no keep-alive, no timeout, default ACK delay, hop limit and
//! congestion control); `connect`/`listen` reset its
//! connection state.

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::{Socket, tcp};
use smoltcp::time::Duration;

use super::SocketSettings;

/// smoltcp's default delayed-ACK time (not exported by smoltcp).
const ACK_DELAY_DEFAULT: Duration = Duration::from_millis(10);

/// Bytes of each TCP socket buffer (receive and send) of a device that
/// does not set `[sockets] tcp_buffer`. Chosen by `shmnet bench flows
/// --tcp-buffer`: from 256 KiB to 4 MiB, transfers of 1 MiB to 256 MiB
/// between two devices ran at the same speed (55–60 Gbit/s at MTU 1500,
/// 140–170 at 65535); 1 MiB keeps a window large enough for paths with
/// longer round trips (chains of devices, other hosts) at a quarter of the
/// memory and first-touch cost of 4 MiB.
pub const DEFAULT_TCP_BUFFER: usize = 1 << 20;

/// Bytes of socket buffers a pool keeps for reuse unless told otherwise.
pub const DEFAULT_POOL_BYTES: usize = 32 << 20;

/// A new TCP socket with `rx`- and `tx`-byte buffers, Nagle off, no
/// congestion control (shared memory loses nothing; a device's pool sets
/// its `[sockets] congestion`).
pub fn new_tcp_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; tx]),
    );
    s.set_nagle_enabled(false);
    s.set_congestion_control(tcp::CongestionControl::None);
    s
}

/// Closed TCP sockets kept for reuse, up to a byte budget, and the
/// device's buffer size for new ones.
pub struct SocketPool {
    idle: Vec<tcp::Socket<'static>>,
    /// Buffer bytes held by `idle`.
    bytes: usize,
    max_bytes: usize,
    /// Bytes of each buffer of [`SocketPool::tcp_default`]'s sockets.
    tcp_buffer: usize,
    /// The device's congestion control (`[sockets] congestion`).
    default_cc: tcp::CongestionControl,
    reused: u64,
    allocated: u64,
}

impl Default for SocketPool {
    fn default() -> Self {
        SocketPool::new(SocketSettings::default())
    }
}

fn buffer_bytes(s: &tcp::Socket<'_>) -> usize {
    s.recv_capacity() + s.send_capacity()
}

impl SocketPool {
    /// A pool keeping at most `settings.pool_bytes` of idle socket buffers
    /// (0: none), handing out `settings.tcp_buffer`-byte buffers by default.
    pub fn new(settings: SocketSettings) -> SocketPool {
        SocketPool {
            idle: Vec::new(),
            bytes: 0,
            max_bytes: settings.pool_bytes,
            tcp_buffer: settings.tcp_buffer,
            default_cc: settings.congestion.smoltcp(),
            reused: 0,
            allocated: 0,
        }
    }

    /// A closed TCP socket with `rx`- and `tx`-byte buffers, Nagle off:
    /// recycled if the pool has one of that shape, else new.
    pub fn tcp(&mut self, rx: usize, tx: usize) -> tcp::Socket<'static> {
        let found = self
            .idle
            .iter()
            .rposition(|s| s.recv_capacity() == rx && s.send_capacity() == tx);
        let mut s = match found {
            Some(i) => {
                let s = self.idle.swap_remove(i);
                self.bytes -= buffer_bytes(&s);
                self.reused += 1;
                s
            }
            None => {
                self.allocated += 1;
                let mut s = new_tcp_socket(rx, tx);
                s.set_congestion_control(self.default_cc);
                return s;
            }
        };
        s.set_nagle_enabled(false);
        s
    }

    /// [`SocketPool::tcp`] with the device's buffer size (`[sockets]
    /// tcp_buffer`) both ways.
    pub fn tcp_default(&mut self) -> tcp::Socket<'static> {
        self.tcp(self.tcp_buffer, self.tcp_buffer)
    }

    /// The device's TCP buffer size (`[sockets] tcp_buffer`).
    pub fn tcp_buffer(&self) -> usize {
        self.tcp_buffer
    }

    /// Takes back a socket whose connection is over (or abandons it: an
    /// open connection is dropped without a word to the peer, as when any
    /// socket is removed from its set). Other socket types are dropped.
    pub fn recycle(&mut self, socket: Socket<'static>) {
        let Socket::Tcp(mut s) = socket else {
            return;
        };
        let size = buffer_bytes(&s);
        if self.bytes + size > self.max_bytes {
            return;
        }
        s.abort();
        s.set_keep_alive(None);
        s.set_timeout(None);
        s.set_ack_delay(Some(ACK_DELAY_DEFAULT));
        s.set_hop_limit(None);
        s.set_congestion_control(self.default_cc);
        s.set_tsval_generator(None);
        self.bytes += size;
        self.idle.push(s);
    }

    /// Removes `h` from `sockets` and keeps it for reuse.
    pub fn remove(&mut self, sockets: &mut SocketSet<'static>, h: SocketHandle) {
        self.recycle(sockets.remove(h));
    }

    /// Sockets handed out again and sockets allocated, so far.
    pub fn reuse_counts(&self) -> (u64, u64) {
        (self.reused, self.allocated)
    }

    /// Bytes of buffers the pool holds now.
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(pool_bytes: usize) -> SocketSettings {
        SocketSettings {
            pool_bytes,
            ..SocketSettings::default()
        }
    }

    #[test]
    fn a_recycled_socket_comes_back_closed_with_its_defaults() {
        let mut pool = SocketPool::new(budget(1 << 20));
        let mut s = pool.tcp(4096, 2048);
        s.set_keep_alive(Some(Duration::from_secs(1)));
        s.set_timeout(Some(Duration::from_secs(2)));
        s.set_ack_delay(None);
        s.set_nagle_enabled(true);
        s.listen(80).unwrap();
        pool.recycle(Socket::Tcp(s));
        assert_eq!(pool.held_bytes(), 6144);
        // Another shape is allocated…
        let other = pool.tcp(2048, 2048);
        assert_eq!(pool.reuse_counts(), (0, 2));
        // …the same shape is the recycled one, reset.
        let s = pool.tcp(4096, 2048);
        assert_eq!(pool.reuse_counts(), (1, 2));
        assert_eq!(pool.held_bytes(), 0);
        assert_eq!(s.state(), tcp::State::Closed);
        assert_eq!(s.keep_alive(), None);
        assert_eq!(s.timeout(), None);
        assert_eq!(s.ack_delay(), Some(ACK_DELAY_DEFAULT));
        assert!(!s.nagle_enabled());
        assert_eq!((s.recv_capacity(), s.send_capacity()), (4096, 2048));
        drop(other);
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_budget() {
        let mut pool = SocketPool::new(budget(10_000));
        for _ in 0..3 {
            let s = pool.tcp(4096, 1024);
            pool.recycle(Socket::Tcp(s));
        }
        let (a, b) = (pool.tcp(4096, 1024), pool.tcp(4096, 1024));
        pool.recycle(Socket::Tcp(a));
        pool.recycle(Socket::Tcp(b));
        assert_eq!(pool.held_bytes(), 5120);
    }

    #[test]
    fn pooled_sockets_carry_the_devices_congestion_control() {
        use crate::stack::Congestion;
        let mut set = SocketSet::new(Vec::new());
        let mut pool = SocketPool::new(SocketSettings {
            congestion: Congestion::Cubic,
            ..budget(1 << 20)
        });
        let s = pool.tcp(1024, 1024);
        assert_eq!(s.congestion_control(), tcp::CongestionControl::Cubic);
        let h = set.add(s);
        pool.remove(&mut set, h);
        // Recycled, it comes back with the device's setting too.
        assert_eq!(
            pool.tcp(1024, 1024).congestion_control(),
            tcp::CongestionControl::Cubic
        );
        // Outside a pool (and by default) there is none.
        assert_eq!(
            new_tcp_socket(64, 64).congestion_control(),
            tcp::CongestionControl::None
        );
        let mut plain = SocketPool::new(budget(0));
        assert_eq!(
            plain.tcp(64, 64).congestion_control(),
            tcp::CongestionControl::None
        );
    }
}
