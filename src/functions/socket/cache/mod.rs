//! The memory cache: a memcached-compatible server (text and meta
//! protocol of memcached 1.6) on the device's own TCP stack.
//!
//! - [`store`]: items, LRU eviction under a memory limit, expiry, CAS.
//! - [`proto`]: framing (lines, data blocks), tokens, numbers, meta flags.
//! - [`session`] and [`meta`]: one connection's commands and replies.
//! - [`engine`]: what connections share (store, statistics, settings).
//! - here: [`Cache`], the function that accepts connections and moves bytes
//!   between its sockets and sessions, with bounded buffers both ways.
//!
//! smoltcp has no listen backlog, so `backlog` sockets listen at all times
//! and a new one is added whenever one is taken. At most `connections`
//! clients are served; one more gets memcached's `ERROR Too many open
//! connections` and is closed (counted in `rejected_connections`), the
//! others unaffected. A connection whose replies are not read stops being
//! read; one that sends a line too long is closed (`protocol_errors`).
//!
//! The one wall-clock read: at attach, the Unix time of device time zero,
//! for absolute expiry times and the `time` statistic.
//!
//! ```
//! use shmnet::functions::{build, FunctionConfig};
//! let cfg: FunctionConfig = toml::from_str("kind = \"cache\"\nmemory_limit = 1048576").unwrap();
//! assert_eq!(build(&cfg).unwrap().name(), "cache");
//! ```

pub mod engine;
pub mod meta;
pub mod proto;
pub mod session;
pub mod store;

pub use engine::{Engine, Settings, Stats};
pub use session::Session;
pub use store::Store;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::Duration;

use super::{Function, FunctionError, FunctionKind, SocketContext, recv_into};
use crate::functions::common::{invalid, reconfigure_in_place};
use crate::stack::FunctionSpec;

/// `[function] kind = "cache"`; a field left out takes its value from
/// [`CacheConfig::default`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// TCP port (default 11211).
    pub port: u16,
    /// Bytes the items may cost, overhead included (default 64 MiB; at
    /// least 64 KiB).
    pub memory_limit: usize,
    /// Largest item, by memcached's reckoning of an item's size (key,
    /// value and 61 to 65 bytes of header): default 1 MiB, 1 KiB..=128 MiB
    /// and not above `memory_limit`.
    pub max_item_size: usize,
    /// Clients served at once (default 256, 1..=65536).
    pub connections: usize,
    /// Sockets kept listening for new clients (default 4, 1..=64).
    pub backlog: usize,
    /// Bytes of each connection's TCP receive and send buffer (default
    /// 64 KiB, 1 KiB..=16 MiB).
    pub tcp_buffer: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            port: 11211,
            memory_limit: 64 << 20,
            max_item_size: 1 << 20,
            connections: 256,
            backlog: 4,
            tcp_buffer: 64 << 10,
        }
    }
}

impl CacheConfig {
    fn validate(&self) -> Result<(), FunctionError> {
        let bad = invalid("cache");
        if self.port == 0 {
            return Err(bad("port must be 1..=65535".into()));
        }
        if self.memory_limit < 64 << 10 {
            return Err(bad("memory_limit must be at least 65536 bytes".into()));
        }
        if !(1024..=128 << 20).contains(&self.max_item_size) {
            return Err(bad("max_item_size must be 1 KiB..=128 MiB".into()));
        }
        if self.max_item_size > self.memory_limit {
            return Err(bad(format!(
                "max_item_size ({}) must not exceed memory_limit ({})",
                self.max_item_size, self.memory_limit
            )));
        }
        if !(1..=65536).contains(&self.connections) {
            return Err(bad("connections must be 1..=65536".into()));
        }
        if !(1..=64).contains(&self.backlog) {
            return Err(bad("backlog must be 1..=64".into()));
        }
        if !(1024..=16 << 20).contains(&self.tcp_buffer) {
            return Err(bad("tcp_buffer must be 1 KiB..=16 MiB".into()));
        }
        Ok(())
    }

    fn settings(&self) -> Settings {
        Settings {
            port: self.port,
            connections: self.connections,
            backlog: self.backlog,
            verbosity: 0,
        }
    }
}

/// What a client that finds every connection taken is told.
const TOO_MANY: &[u8] = b"ERROR Too many open connections\r\n";

/// One client's socket, session and unparsed input.
struct Conn {
    handle: SocketHandle,
    session: Session,
    input: Vec<u8>,
    /// Turned away at the connection limit: not counted as a client.
    rejected: bool,
}

/// The memcached-compatible cache function.
pub struct Cache {
    cfg: CacheConfig,
    engine: Engine,
    listeners: Vec<SocketHandle>,
    conns: Vec<Conn>,
    attached: bool,
    /// A reconfiguration changed the limits; applied at the next poll
    /// (evicting needs the time).
    pending_limits: bool,
}

impl Cache {
    /// The cache for `cfg`; errors name the field out of range.
    pub fn new(cfg: CacheConfig) -> Result<Cache, FunctionError> {
        cfg.validate()?;
        let store = Store::new(cfg.memory_limit, cfg.max_item_size);
        Ok(Cache {
            engine: Engine::new(store, cfg.settings()),
            cfg,
            listeners: Vec::new(),
            conns: Vec::new(),
            attached: false,
            pending_limits: false,
        })
    }

    /// Applies `cfg` in place: items and connections stay; a smaller
    /// memory limit evicts down to it; a new port is listened on for new
    /// clients.
    pub fn reconfigure(&mut self, cfg: &CacheConfig) -> Result<(), FunctionError> {
        cfg.validate()?;
        self.engine.settings = Settings {
            verbosity: self.engine.settings.verbosity,
            ..cfg.settings()
        };
        self.cfg = cfg.clone();
        self.pending_limits = true;
        Ok(())
    }

    fn clients(&self) -> usize {
        self.conns.iter().filter(|c| !c.rejected).count()
    }

    fn listen(&mut self, cx: &mut SocketContext<'_>) {
        while self.listeners.len() < self.cfg.backlog {
            let h = cx.add_tcp(Some(self.cfg.tcp_buffer));
            let s = cx.sockets.get_mut::<tcp::Socket>(h);
            // A client that vanished must not hold its slot forever.
            s.set_keep_alive(Some(Duration::from_secs(10)));
            s.set_timeout(Some(Duration::from_secs(60)));
            if s.listen(self.cfg.port).is_err() {
                cx.remove_socket(h);
                return;
            }
            self.listeners.push(h);
        }
    }

    /// Moves listeners that got a client to the connections (or turns the
    /// client away at the limit), and keeps `backlog` listening.
    fn accept(&mut self, cx: &mut SocketContext<'_>) -> bool {
        let mut progress = false;
        let mut i = 0;
        while i < self.listeners.len() {
            let h = self.listeners[i];
            let s = cx.sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                tcp::State::Listen if s.listen_endpoint().port == self.cfg.port => {
                    i += 1;
                    continue;
                }
                tcp::State::Listen | tcp::State::Closed => {
                    // Left over from another port, or reset mid-handshake.
                    cx.remove_socket(h);
                }
                _ => {
                    let rejected = self.clients() >= self.cfg.connections;
                    let mut session = Session::new(self.cfg.max_item_size);
                    if rejected {
                        self.engine.stats.rejected_connections += 1;
                        session.out.write(TOO_MANY);
                        session.finish();
                    } else {
                        self.engine.stats.curr_connections += 1;
                        self.engine.stats.total_connections += 1;
                    }
                    self.conns.push(Conn {
                        handle: h,
                        session,
                        input: Vec::new(),
                        rejected,
                    });
                }
            }
            self.listeners.swap_remove(i);
            progress = true;
        }
        self.listen(cx);
        // Turned-away clients that do not close are not kept waiting for.
        let lingering = self.conns.iter().filter(|c| c.rejected).count();
        if lingering > 2 * self.cfg.backlog {
            for c in self.conns.iter().filter(|c| c.rejected) {
                cx.sockets.get_mut::<tcp::Socket>(c.handle).abort();
            }
        }
        progress
    }

    /// Moves one connection's bytes; returns (progress, finished).
    fn serve(&mut self, k: usize, cx: &mut SocketContext<'_>) -> (bool, bool) {
        let now = cx.now;
        let c = &mut self.conns[k];
        let s = cx.sockets.get_mut::<tcp::Socket>(c.handle);
        let mut progress = false;
        loop {
            let mut moved = false;
            // Read as much as the session can use: a whole data block, or
            // a line up to its limit.
            let cap = c
                .session
                .pending_data()
                .unwrap_or(0)
                .max(self.cfg.max_item_size + 2);
            if c.session.wants_input() {
                let n = recv_into(s, &mut c.input, cap);
                self.engine.stats.bytes_read += n as u64;
                moved |= n > 0;
            }
            if !c.input.is_empty() && c.session.wants_input() {
                let used = c.session.handle(&c.input, &mut self.engine, now);
                if used > 0 {
                    c.input.drain(..used);
                    moved = true;
                }
            }
            while !c.session.out.is_empty() && s.can_send() {
                let n = s.send_slice(c.session.out.front()).unwrap_or(0);
                if n == 0 {
                    break;
                }
                c.session.out.consume(n);
                self.engine.stats.bytes_written += n as u64;
                moved = true;
            }
            progress |= moved;
            if !moved {
                break;
            }
        }
        let drained = c.session.out.is_empty();
        if c.session.closing() && drained && s.is_open() {
            if c.session.protocol_error() {
                self.engine.stats.protocol_errors += 1;
                // Counted once: the session is not asked again.
                c.session.finish();
            }
            s.close();
            progress = true;
        }
        // The client finished sending and has its replies: close our side.
        if !s.may_recv() && s.state() == tcp::State::CloseWait && drained {
            s.close();
            progress = true;
        }
        if s.state() == tcp::State::TimeWait {
            s.abort();
        }
        (progress, !s.is_open())
    }
}

impl Function for Cache {
    fn kind(&self) -> FunctionKind {
        FunctionKind::socket("cache")
    }

    fn attach(&mut self, cx: &mut SocketContext<'_>) {
        let unix_ms = crate::wire::since_unix_epoch().as_millis() as i64;
        self.engine
            .store
            .set_unix_base(unix_ms - cx.now.total_millis());
        if !self.attached {
            self.engine.started = cx.now;
            self.attached = true;
        }
        // Listen at once: a SYN before the first poll would be refused.
        self.listen(cx);
    }

    fn detach(&mut self, cx: &mut SocketContext<'_>) {
        cx.remove_sockets(self.listeners.drain(..));
        cx.remove_sockets(self.conns.drain(..).map(|c| c.handle));
        self.engine.stats.curr_connections = 0;
    }

    fn poll(&mut self, cx: &mut SocketContext<'_>) -> bool {
        let now = cx.now;
        if self.pending_limits {
            let (m, i) = (self.cfg.memory_limit, self.cfg.max_item_size);
            self.engine.store.set_limits(m, i, now);
            self.pending_limits = false;
        }
        self.engine.store.maintain(now);
        let mut progress = self.accept(cx);
        // Backwards, so that `swap_remove` brings in one already served.
        for k in (0..self.conns.len()).rev() {
            let (p, finished) = self.serve(k, cx);
            progress |= p;
            if finished {
                let c = self.conns.swap_remove(k);
                if !c.rejected {
                    self.engine.stats.curr_connections -= 1;
                }
                cx.remove_socket(c.handle);
                progress = true;
            }
        }
        progress
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        self.engine.visit(visit);
    }

    fn reconfigure(&mut self, cfg: &dyn FunctionSpec) -> Result<bool, FunctionError> {
        reconfigure_in_place(cfg, |c: &CacheConfig| Cache::reconfigure(self, c))
    }
}

#[cfg(test)]
mod tests;
