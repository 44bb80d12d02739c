//! What all connections of a cache share: the [`Store`], the statistics
//! (memcached's names, for the `stats` command and
//! [`Function::counters`](crate::functions::Function::counters) alike) and
//! the settings the `stats settings` command shows; and the output of the
//! `stats` commands.

use smoltcp::time::Instant;

use super::store::Store;
use crate::functions::common::counters;

/// The version the `version` command and `stats` give: the memcached
/// protocol level implemented, marked as this implementation.
pub const VERSION: &str = "1.6.18-shmnet";

counters! {
    /// Protocol and connection statistics, by memcached's names.
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    pub struct Stats {
        /// Connections open now.
        pub curr_connections: u64,
        /// Connections accepted since start.
        pub total_connections: u64,
        /// Connections refused because `connections` were open.
        pub rejected_connections: u64,
        /// Connections closed for a protocol error (a line too long).
        pub protocol_errors: u64,
        /// Keys asked for by get commands (`get`, `gets`, `mg`).
        pub cmd_get: u64,
        /// Data blocks received by storage commands.
        pub cmd_set: u64,
        /// `flush_all` commands.
        pub cmd_flush: u64,
        /// Keys touched (`touch`, `gat`, `gats`, `mg` with `T`).
        pub cmd_touch: u64,
        /// `me` commands.
        pub cmd_meta: u64,
        /// Gets that found the key.
        pub get_hits: u64,
        /// Gets that did not.
        pub get_misses: u64,
        /// Deletes of a missing key.
        pub delete_misses: u64,
        /// Deletes that removed an item.
        pub delete_hits: u64,
        /// Increments of a missing key.
        pub incr_misses: u64,
        /// Increments done.
        pub incr_hits: u64,
        /// Decrements of a missing key.
        pub decr_misses: u64,
        /// Decrements done.
        pub decr_hits: u64,
        /// CAS on a missing key.
        pub cas_misses: u64,
        /// CAS stores done.
        pub cas_hits: u64,
        /// CAS refused: the unique did not match.
        pub cas_badval: u64,
        /// Touches that found the key.
        pub touch_hits: u64,
        /// Touches that did not.
        pub touch_misses: u64,
        /// Values refused as larger than `max_item_size`.
        pub store_too_large: u64,
        /// Values refused as larger than the whole memory limit.
        pub store_no_memory: u64,
        /// Bytes received from clients.
        pub bytes_read: u64,
        /// Bytes sent to clients.
        pub bytes_written: u64,
    }
}

/// Settings shown by `stats settings` (the function's configuration).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// TCP port.
    pub port: u16,
    /// Connections served at once.
    pub connections: usize,
    /// Listening sockets kept ready.
    pub backlog: usize,
    /// Level set by `verbosity` (accepted, changes nothing).
    pub verbosity: u32,
}

/// The state every connection of the cache works on.
pub struct Engine {
    /// The items.
    pub store: Store,
    /// Protocol and connection statistics.
    pub stats: Stats,
    /// What `stats settings` shows.
    pub settings: Settings,
    /// Device time the cache started (for `uptime`).
    pub started: Instant,
    pid: u32,
}

impl Engine {
    /// An engine over `store`.
    pub fn new(store: Store, settings: Settings) -> Engine {
        Engine {
            store,
            stats: Stats::default(),
            settings,
            started: Instant::ZERO,
            pid: std::process::id(),
        }
    }

    /// Visits every counter: the statistics, then the store's.
    pub fn visit(&self, visit: &mut dyn FnMut(&str, u64)) {
        self.stats.visit(visit);
        self.store.counters.visit(visit);
        visit("curr_items", self.store.len() as u64);
        visit("bytes", self.store.bytes() as u64);
        visit("memory_used", self.store.memory_used() as u64);
        visit("limit_maxbytes", self.store.memory_limit() as u64);
    }

    /// Answers `stats [sub]`: the reply, or `None` for an unknown group
    /// (the caller answers `ERROR`).
    pub fn stats(
        &mut self,
        sub: Option<&[u8]>,
        arg: Option<&[u8]>,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(2048);
        let mut stat = |name: &str, value: &dyn std::fmt::Display| {
            out.extend_from_slice(format!("STAT {name} {value}\r\n").as_bytes());
        };
        match sub {
            None => {
                let uptime = (now - self.started).secs();
                stat("pid", &self.pid);
                stat("uptime", &uptime);
                stat("time", &self.store.unix_time(now));
                stat("version", &VERSION);
                stat("pointer_size", &64);
                stat("max_connections", &self.settings.connections);
                self.stats.visit(&mut |n, v| {
                    if n != "protocol_errors" {
                        stat(n, &v);
                    }
                });
                stat("limit_maxbytes", &self.store.memory_limit());
                stat("threads", &1);
                stat("bytes", &self.store.bytes());
                stat("curr_items", &self.store.len());
                self.store.counters.visit(&mut |n, v| stat(n, &v));
            }
            Some(b"reset") => {
                let curr = self.stats.curr_connections;
                self.stats = Stats {
                    curr_connections: curr,
                    ..Stats::default()
                };
                self.store.counters = Default::default();
                return Some(b"RESET\r\n".to_vec());
            }
            Some(b"settings") => {
                stat("maxbytes", &self.store.memory_limit());
                stat("maxconns", &self.settings.connections);
                stat("tcpport", &self.settings.port);
                stat("udpport", &0);
                stat("verbosity", &self.settings.verbosity);
                stat("evictions", &"on");
                stat("num_threads", &1);
                stat("cas_enabled", &"yes");
                stat("tcp_backlog", &self.settings.backlog);
                stat("binding_protocol", &"ascii");
                stat("item_size_max", &self.store.max_item_size());
                stat("flush_enabled", &"yes");
            }
            Some(b"items") => {
                if !self.store.is_empty() {
                    let c = self.store.counters;
                    stat("items:1:number", &self.store.len());
                    stat("items:1:mem_requested", &self.store.bytes());
                    stat("items:1:evicted", &c.evictions);
                    stat("items:1:outofmemory", &self.stats.store_no_memory);
                    stat("items:1:reclaimed", &c.reclaimed);
                    stat("items:1:expired_unfetched", &c.expired_unfetched);
                    stat("items:1:evicted_unfetched", &c.evicted_unfetched);
                }
            }
            Some(b"slabs") => {
                if !self.store.is_empty() {
                    stat("1:chunk_size", &self.store.max_item_size());
                    stat("1:used_chunks", &self.store.len());
                    stat("1:total_chunks", &self.store.len());
                    stat("1:mem_requested", &self.store.bytes());
                }
                let active = usize::from(!self.store.is_empty());
                stat("active_slabs", &active);
                stat("total_malloced", &self.store.memory_used());
            }
            Some(b"sizes") => stat("sizes_status", &"disabled"),
            Some(b"conns") => {}
            Some(b"detail") => {
                return Some(match arg {
                    Some(b"on") | Some(b"off") => b"OK\r\n".to_vec(),
                    Some(b"dump") => b"END\r\n".to_vec(),
                    _ => b"CLIENT_ERROR usage: stats detail on|off|dump\r\n".to_vec(),
                });
            }
            Some(_) => return None,
        }
        out.extend_from_slice(b"END\r\n");
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_name_memcached_counters() {
        let mut e = Engine::new(Store::new(1 << 20, 1 << 20), Settings::default());
        e.stats.get_hits = 3;
        let out = String::from_utf8(e.stats(None, None, Instant::from_secs(5)).unwrap()).unwrap();
        assert!(out.contains("STAT uptime 5\r\n"), "{out}");
        assert!(out.contains("STAT get_hits 3\r\n"), "{out}");
        assert!(out.contains("STAT curr_items 0\r\n"), "{out}");
        assert!(out.ends_with("END\r\n"));
        assert_eq!(
            e.stats(Some(b"reset"), None, Instant::ZERO).unwrap(),
            b"RESET\r\n"
        );
        assert_eq!(e.stats.get_hits, 0);
        assert_eq!(
            e.stats(Some(b"items"), None, Instant::ZERO).unwrap(),
            b"END\r\n"
        );
        assert!(e.stats(Some(b"nonsense"), None, Instant::ZERO).is_none());
        let mut names = Vec::new();
        e.visit(&mut |n, _| names.push(n.to_string()));
        for n in [
            "get_hits",
            "evictions",
            "curr_items",
            "bytes",
            "curr_connections",
        ] {
            assert!(names.iter().any(|m| m == n), "{n}");
        }
    }
}
