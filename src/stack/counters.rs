//! A device's counters: one table that stats printing, a metrics endpoint
//! and a policy engine all read.
//!
//! The Nic's counters ([`NicCounters`]) and each adapter's
//! ([`AdapterCounters`](crate::adapters::AdapterCounters)) are defined once
//! (`counter_set!`); a [`DeviceStats`] snapshot holds them as plain
//! structs, and [`DeviceStats::counters`] walks them all as
//! `(name, value)`: `local.rx_frames`, `global.tx_bytes`, `forwarded`, …,
//! then the function's own counters (`function.NAME`).
//!
//! ```
//! use shmnet::stack::DeviceStats;
//! let mut s = DeviceStats::default();
//! s.nic.forwarded = 3;
//! s.global.tx_bytes = 1500;
//! let table: Vec<(String, u64)> = s.counters().map(|(n, v)| (n.to_string(), v)).collect();
//! assert!(table.contains(&("forwarded".into(), 3)));
//! assert!(table.contains(&("global.tx_bytes".into(), 1500)));
//! ```

use crate::adapters::AdapterStats;
use crate::counters::counter_set;

counter_set! {
    /// Counters of the interface system.
    pub struct NicCounters => NicStats {
        /// Frames the stack sent that went to the local network.
        routed_local,
        /// Frames the stack sent that went to the global network.
        routed_global,
        /// Received frames the function dropped (ingress).
        ingress_dropped,
        /// Frames from the stack the function dropped (egress).
        egress_dropped,
        /// Frames the function took (answered, or holds to release later).
        consumed,
        /// Frames the function sent elsewhere than the routing table would
        /// (`Verdict::Redirect` or `Verdict::Via`).
        redirected,
        /// Frames whose IP packet is larger than the MTU of the network they
        /// came from or were routed to (dropped).
        oversize,
        /// TCP SYNs whose MSS was clamped to a smaller network.
        mss_clamped,
        /// Transit packets forwarded (forwarding devices only).
        forwarded,
        /// Packets dropped for want of a route: transit packets, and
        /// `Verdict::Via` next hops on neither network.
        no_route,
        /// Packets dropped because the next hop's MAC is not known (Ethernet).
        no_neighbour,
        /// Transit packets dropped because their TTL / hop limit ran out.
        ttl_expired,
        /// Frames received by either adapter.
        frames_in,
        /// Frames the stack sent (counted before the function's verdict).
        frames_out,
    }
}

/// A snapshot of a device's counters.
#[derive(Debug, Clone, Default)]
pub struct DeviceStats {
    /// The device's name.
    pub name: String,
    /// The running function's kind, as in the config (e.g. `firewall`).
    pub function: String,
    /// The local network's adapter (counters `local.…`).
    pub local: AdapterStats,
    /// The global network's adapter (counters `global.…`).
    pub global: AdapterStats,
    /// The Nic's counters (unprefixed names).
    pub nic: NicStats,
    /// The function's own counters as last published, `(name, value)`
    /// (`function.…`).
    pub function_counters: Vec<(String, u64)>,
}

/// A counter's name in [`DeviceStats::counters`]: `group.name`, or just
/// `name` for the Nic's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterName<'a> {
    /// `local`, `global`, `function`, or empty (the Nic's).
    pub group: &'static str,
    /// The counter's name within its group.
    pub name: &'a str,
}

impl std::fmt::Display for CounterName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            f.write_str(self.name)
        } else {
            write!(f, "{}.{}", self.group, self.name)
        }
    }
}

impl DeviceStats {
    /// Every counter of the device, as `(name, value)`: the adapters'
    /// (`local.…`, `global.…`), the Nic's, then the function's
    /// (`function.…`).
    pub fn counters(&self) -> impl Iterator<Item = (CounterName<'_>, u64)> {
        let group = |group: &'static str, s: &AdapterStats| {
            s.pairs()
                .into_iter()
                .map(move |(name, v)| (CounterName { group, name }, v))
        };
        group("local", &self.local)
            .chain(group("global", &self.global))
            .chain(
                self.nic
                    .pairs()
                    .into_iter()
                    .map(|(name, v)| (CounterName { group: "", name }, v)),
            )
            .chain(self.function_counters.iter().map(|(name, v)| {
                let name = CounterName {
                    group: "function",
                    name,
                };
                (name, *v)
            }))
    }

    /// The function's counter called `name`, if it has one.
    pub fn function_counter(&self, name: &str) -> Option<u64> {
        self.function_counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, v)| v)
    }
}
