//! The replay guard a receiver runs on every authenticated management
//! message: refuses stale times and sequence numbers already seen, with a
//! bounded table of clients.

use std::collections::HashMap;
use std::time::Duration;

use super::MgmtError;

/// Refuses stale and replayed messages: a message whose time is further
/// from now than the window, or whose seq is not above the last one
/// accepted from its client. Run it only on messages
/// [`open`](super::open) accepted, or anyone could fill its table.
///
/// A client is forgotten once every message accepted from it would be
/// stale (its newest time plus the window has passed), so forgetting it
/// never lets a replay through; at most `max_clients` fresh clients are
/// remembered and a new one beyond that is refused and counted.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    window_ms: u64,
    max_clients: usize,
    clients: HashMap<u32, Seen>,
    counters: ReplayCounters,
}

/// What [`ReplayGuard`] remembers of a client.
#[derive(Debug, Clone, Copy)]
struct Seen {
    last_seq: u64,
    /// The newest time of a message accepted from it.
    newest_ms: u64,
}

/// Messages a [`ReplayGuard`] refused, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayCounters {
    /// Too far from now.
    pub stale: u64,
    /// Seq not above the client's last.
    pub replayed: u64,
    /// A new client while the table was full of fresh ones.
    pub too_many_clients: u64,
}

impl Default for ReplayGuard {
    /// A 30 s window and 4096 clients.
    fn default() -> Self {
        ReplayGuard::new(Duration::from_secs(30), 4096)
    }
}

impl ReplayGuard {
    /// A guard refusing messages more than `window` from now and
    /// remembering at most `max_clients` clients.
    pub fn new(window: Duration, max_clients: usize) -> Self {
        ReplayGuard {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            max_clients,
            clients: HashMap::new(),
            counters: ReplayCounters::default(),
        }
    }

    /// Accepts the message (and remembers its seq) or says why not.
    /// `now_ms` is this host's unix time in milliseconds.
    pub fn check(
        &mut self,
        client: u32,
        seq: u64,
        time_ms: u64,
        now_ms: u64,
    ) -> Result<(), MgmtError> {
        let skew_ms = time_ms.abs_diff(now_ms);
        if skew_ms > self.window_ms {
            self.counters.stale += 1;
            return Err(MgmtError::Stale { skew_ms });
        }
        let window = self.window_ms;
        let expired = |s: &Seen| s.newest_ms.saturating_add(window) < now_ms;
        if let Some(seen) = self.clients.get_mut(&client)
            && !expired(seen)
        {
            if seq <= seen.last_seq {
                self.counters.replayed += 1;
                return Err(MgmtError::Replayed { client, seq });
            }
            seen.last_seq = seq;
            seen.newest_ms = seen.newest_ms.max(time_ms);
            return Ok(());
        }
        if !self.clients.contains_key(&client) && self.clients.len() >= self.max_clients {
            self.clients.retain(|_, s| !expired(s));
            if self.clients.len() >= self.max_clients {
                self.counters.too_many_clients += 1;
                return Err(MgmtError::TooManyClients);
            }
        }
        self.clients.insert(
            client,
            Seen {
                last_seq: seq,
                newest_ms: time_ms,
            },
        );
        Ok(())
    }

    /// Clients remembered (fresh or not yet swept).
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Messages refused so far, by reason.
    pub fn counters(&self) -> ReplayCounters {
        self.counters
    }

    /// Forgets every client (the counters stay).
    pub fn clear(&mut self) {
        self.clients.clear();
    }
}
