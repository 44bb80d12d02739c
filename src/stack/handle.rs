//! What other threads hold of a running device: a [`DeviceHandle`] to stop
//! it, swap or reconfigure its function, collect its reports and read its
//! counters. The device's loop picks requests up at the next round; a
//! request wakes it if it sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::hook::Function;
use super::spec::FunctionSpec;
use super::{DeviceStats, NicCounters};
use crate::adapters::Remote;

/// The state a device shares with its handles.
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) stop: AtomicBool,
    pub(super) replace: Mutex<Option<Box<dyn Function>>>,
    /// A changed configuration for the running function.
    pub(super) reconfigure: Mutex<Option<Box<dyn FunctionSpec>>>,
    /// Set with `replace` or `reconfigure`, so the loop need not lock every
    /// round.
    pub(super) replace_pending: AtomicBool,
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
            replace: Mutex::new(None),
            reconfigure: Mutex::new(None),
            replace_pending: AtomicBool::new(false),
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
}

/// A handle to a device running on another thread: stop it, swap its
/// function, read its counters.
#[derive(Clone)]
pub struct DeviceHandle {
    pub(super) shared: Arc<Shared>,
}

impl DeviceHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    /// Asks the device's loop to return (wakes it if asleep).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake();
    }
    pub fn is_stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }
    /// Replaces the running function; takes effect at the next poll round.
    pub fn replace_function(&self, f: Box<dyn Function>) {
        *self.shared.replace.lock() = Some(f);
        self.shared.replace_pending.store(true, Ordering::Release);
        self.shared.wake();
    }
    /// Applies a changed configuration to the running function in place
    /// when it can (an ESP rekey keeps the tunnel's state), else replaces
    /// it with one built from `cfg`. Takes effect at the next poll round.
    pub fn reconfigure(&self, cfg: impl FunctionSpec) {
        *self.shared.reconfigure.lock() = Some(Box::new(cfg));
        self.shared.replace_pending.store(true, Ordering::Release);
        self.shared.wake();
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
    /// A snapshot of the counters (function counters as of the last round).
    pub fn stats(&self) -> DeviceStats {
        self.shared.stats()
    }
}
