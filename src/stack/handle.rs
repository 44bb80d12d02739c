//! What other threads hold of a running device: a [`DeviceHandle`] to stop
//! it, swap or reconfigure its function, collect its reports and read its
//! counters. The device's loop picks requests up at the next round; a
//! request wakes it if it sleeps. Every change gets a [`Ticket`] that says
//! when (and whether) it took effect.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::hook::{Function, FunctionError};
use super::spec::FunctionSpec;
use super::{DeviceStats, NicCounters};
use crate::adapters::Remote;

/// The state a device shares with its handles.
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) stop: AtomicBool,
    /// Requested function changes and their outcomes.
    pub(super) changes: Mutex<Changes>,
    /// Signalled when a change is applied or the device closes.
    pub(super) changed: Condvar,
    /// Set with every request, so the loop need not lock every round.
    pub(super) change_pending: AtomicBool,
    pub(super) function_name: Mutex<String>,
    pub(super) function_counters: Mutex<Vec<(String, u64)>>,
    pub(super) reports: Mutex<Vec<String>>,
    pub(super) finished: AtomicBool,
    /// [`Function::failed`], published before `finished`.
    pub(super) failed: AtomicBool,
    /// The adapters' counters and doorbells, by `Role::index`.
    pub(super) adapters: [Arc<dyn Remote>; 2],
    pub(super) nic: Arc<NicCounters>,
}

impl Shared {
    pub(super) fn new(
        name: &str,
        function_name: &str,
        adapters: [Arc<dyn Remote>; 2],
        nic: Arc<NicCounters>,
    ) -> Shared {
        Shared {
            name: name.into(),
            stop: AtomicBool::new(false),
            changes: Mutex::new(Changes::default()),
            changed: Condvar::new(),
            change_pending: AtomicBool::new(false),
            function_name: Mutex::new(function_name.into()),
            function_counters: Mutex::new(Vec::new()),
            reports: Mutex::new(Vec::new()),
            finished: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            adapters,
            nic,
        }
    }

    /// A snapshot of the counters (the function's as last published).
    pub(super) fn stats(&self) -> DeviceStats {
        let [local, global] = &self.adapters;
        DeviceStats {
            name: self.name.clone(),
            function: self.function_name.lock().clone(),
            local: local.stats(),
            global: global.stats(),
            nic: self.nic.snapshot(),
            function_counters: self.function_counters.lock().clone(),
        }
    }

    fn wake(&self) {
        for a in &self.adapters {
            a.wake();
        }
    }

    /// Queues a change for the device's loop; returns its ticket.
    fn request(self: &Arc<Self>, change: Change) -> Ticket {
        let mut c = self.changes.lock();
        c.issued += 1;
        let epoch = c.issued;
        c.queue.push_back((epoch, change));
        drop(c);
        self.change_pending.store(true, Ordering::Release);
        self.wake();
        Ticket {
            shared: Arc::clone(self),
            epoch,
        }
    }

    /// Records the outcome of change `epoch` and wakes its waiters.
    pub(super) fn settle(&self, epoch: u64, outcome: Result<Applied, FunctionError>) {
        let mut c = self.changes.lock();
        c.settled = c.settled.max(epoch);
        if c.outcomes.len() == OUTCOMES_KEPT {
            c.outcomes.pop_front();
        }
        c.outcomes.push_back((epoch, outcome));
        drop(c);
        self.changed.notify_all();
    }

    /// The device stops taking changes: pending ones fail with
    /// [`ChangeError::Stopped`].
    pub(super) fn close(&self) {
        let mut c = self.changes.lock();
        c.closed = true;
        c.queue.clear();
        drop(c);
        self.changed.notify_all();
    }
}

/// Outcomes kept for tickets not yet asked (older ones read as lost).
const OUTCOMES_KEPT: usize = 64;

/// A change to the running function, as requested through a handle.
pub(super) enum Change {
    /// Install this function.
    Replace(Box<dyn Function>),
    /// Apply this configuration (in place when the function can).
    Reconfigure(Box<dyn FunctionSpec>),
}

/// The change queue a device shares with its handles.
#[derive(Default)]
pub(super) struct Changes {
    /// Requests not yet applied, oldest first.
    pub(super) queue: VecDeque<(u64, Change)>,
    /// Epoch of the last request.
    issued: u64,
    /// Epoch of the last request the device applied or refused.
    settled: u64,
    /// The last [`OUTCOMES_KEPT`] outcomes.
    outcomes: VecDeque<(u64, Result<Applied, FunctionError>)>,
    /// The device has stopped (or was dropped): nothing more is applied.
    closed: bool,
}

/// How a change took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The running function took the new configuration and kept its state
    /// (connections, queues, health, tunnels).
    InPlace,
    /// A new function replaced the old one (a different kind, a function
    /// that cannot reconfigure in place, or an explicit replacement).
    Replaced,
}

/// Why a change did not take effect. In every case the function that ran
/// before keeps running.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// The device refused the configuration (its function or the new
    /// function's constructor found it invalid).
    #[error("device {device}: the change was refused; the old function keeps running")]
    Refused {
        /// The device's name.
        device: String,
        /// What is wrong with the configuration.
        #[source]
        source: FunctionError,
    },
    /// The device did not apply the change within the time waited; it may
    /// still do so.
    #[error("device {device}: change {epoch} not applied within {waited:?}")]
    Timeout {
        /// The device's name.
        device: String,
        /// The change's ticket number.
        epoch: u64,
        /// How long [`Ticket::wait`] waited.
        waited: Duration,
    },
    /// The device stopped before it applied the change.
    #[error("device {device}: stopped before the change was applied")]
    Stopped {
        /// The device's name.
        device: String,
    },
    /// The outcome is no longer known: more than 64 later changes were
    /// applied before this ticket was asked.
    #[error("device {device}: the outcome of change {epoch} was not kept")]
    Forgotten {
        /// The device's name.
        device: String,
        /// The change's ticket number.
        epoch: u64,
    },
}

/// A requested change to a device's function: wait on it to know when it
/// is live and whether it succeeded. Dropping a ticket does not cancel the
/// change.
#[derive(Clone)]
pub struct Ticket {
    shared: Arc<Shared>,
    epoch: u64,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("device", &self.shared.name)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl Ticket {
    /// The change's number: changes to one device are numbered from 1 and
    /// applied in that order.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The outcome if the device has dealt with the change, else `None`.
    pub fn outcome(&self) -> Option<Result<Applied, ChangeError>> {
        let c = self.shared.changes.lock();
        self.outcome_in(&c)
    }

    fn outcome_in(&self, c: &Changes) -> Option<Result<Applied, ChangeError>> {
        let device = || self.shared.name.clone();
        if c.settled >= self.epoch {
            let found = c.outcomes.iter().find(|(e, _)| *e == self.epoch);
            return Some(match found {
                Some((_, Ok(how))) => Ok(*how),
                Some((_, Err(e))) => Err(ChangeError::Refused {
                    device: device(),
                    source: e.clone(),
                }),
                None => Err(ChangeError::Forgotten {
                    device: device(),
                    epoch: self.epoch,
                }),
            });
        }
        c.closed
            .then(|| Err(ChangeError::Stopped { device: device() }))
    }

    /// Blocks until the device has applied (or refused) the change, or
    /// `timeout` passes. A device that is not running (not spawned or
    /// polled) applies nothing, so this times out.
    pub fn wait(&self, timeout: Duration) -> Result<Applied, ChangeError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut c = self.shared.changes.lock();
        loop {
            if let Some(outcome) = self.outcome_in(&c) {
                return outcome;
            }
            if self.shared.changed.wait_until(&mut c, deadline).timed_out() {
                return self.outcome_in(&c).unwrap_or(Err(ChangeError::Timeout {
                    device: self.shared.name.clone(),
                    epoch: self.epoch,
                    waited: timeout,
                }));
            }
        }
    }
}

/// A handle to a device running on another thread: stop it, swap its
/// function, read its counters.
#[derive(Clone)]
pub struct DeviceHandle {
    pub(super) shared: Arc<Shared>,
}

impl DeviceHandle {
    /// The device's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    /// Asks the device's loop to return (wakes it if asleep).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake();
    }
    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }
    /// Replaces the running function at the device's next round (the old
    /// one detaches, closing its sockets). The ticket says when.
    pub fn replace_function(&self, f: Box<dyn Function>) -> Ticket {
        self.shared.request(Change::Replace(f))
    }

    /// Applies a changed configuration at the device's next round: in
    /// place when the running function is of the same kind and can take it
    /// (keeping its connections, queues, health state and tunnels), else by
    /// replacing it with a function built from `cfg`.
    ///
    /// `cfg` is validated here first (by [`FunctionSpec::validate`]): an
    /// invalid configuration is returned as an error and nothing is sent.
    /// Wait on the [`Ticket`] to know when the change is live, or why the
    /// device refused it; either way the old function runs until then.
    ///
    /// ```
    /// # use shmnet::config::DeviceConfig;
    /// # use shmnet::adapters::shm::SegmentKind;
    /// # use shmnet::stack::{Applied, NetDevice};
    /// # use shmnet::functions::FunctionConfig;
    /// # use std::time::Duration;
    /// # let cfg = DeviceConfig::from_toml(r#"
    /// #     name = "doc-reconf"
    /// #     local = { segment = "doc-reconf-lan", address = "10.9.0.1/24" }
    /// #     global = { segment = "doc-reconf-wan", address = "10.10.0.1/16" }
    /// # "#, "inline").unwrap();
    /// let (handle, thread) = NetDevice::new(&cfg, SegmentKind::InProcess)?.spawn();
    /// let new = FunctionConfig::from_toml(r#"kind = "firewall"
    ///     default = "accept""#)?;
    /// let ticket = handle.reconfigure(new)?; // validated before it is sent
    /// assert_eq!(ticket.wait(Duration::from_secs(5))?, Applied::Replaced);
    /// assert_eq!(handle.stats().function, "firewall");
    /// handle.stop();
    /// thread.join().unwrap();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reconfigure(&self, cfg: impl FunctionSpec) -> Result<Ticket, FunctionError> {
        cfg.validate()?;
        Ok(self.shared.request(Change::Reconfigure(Box::new(cfg))))
    }
    /// Has the function finished its job (see [`Function::finished`])?
    pub fn finished(&self) -> bool {
        self.shared.finished.load(Ordering::SeqCst)
    }
    /// Has part of the function's job failed (see [`Function::failed`])?
    /// Up to date whenever [`finished`](Self::finished) is, else within
    /// 50 ms.
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }
    /// Report lines the function produced so far (drained).
    pub fn take_report(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.reports.lock())
    }
    /// A snapshot of the counters. The adapters' and the NIC's counters are
    /// live; the function's are as the device last published them: every
    /// 50 ms while it runs, when it goes to sleep, after each change, and
    /// when it stops. (On the device's own thread, [`NetDevice::stats`]
    /// reads the function's counters directly.)
    ///
    /// [`NetDevice::stats`]: super::NetDevice::stats
    pub fn stats(&self) -> DeviceStats {
        self.shared.stats()
    }
}
