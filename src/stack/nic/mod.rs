//! The device's interface system: the one `phy::Device` smoltcp drives. It
//! owns both adapters (indexed by [`Role`]), runs the function's hooks on
//! every frame, routes each outgoing frame to the local or the global
//! adapter, and forwards transit packets on a forwarding device.
//!
//! - [`router`]: routing decisions (which network; where a transit packet
//!   goes; MTUs and MSS clamping);
//! - `phy`: the `phy::Device` impl, the receive and transmit paths;
//! - `forward`: sending a frame out of an adapter (copied, or in the
//!   buffer it was received into), with the forwarding rewrites;
//! - `neighbours`: seeding smoltcp's neighbour cache from the directories;
//! - `frame`: the few header fields read and rewritten, in one place.
//!
//! Copies: the Tx token lends a buffer of the adapter the previous frame
//! went to (flows are long, so the guess is nearly always right; a wrong
//! guess costs one copy). Received frames from trusted peers reach the stack
//! in place. A forwarding device copies each transit frame once: from the
//! sender's buffer (or ring) straight into a buffer of the adapter it
//! leaves by, where the function sees it and from where it is sent.
//!
//! MTUs: each network's MTU is enforced exactly: an IP packet larger than
//! the MTU of the network it arrives from or leaves by is a counted
//! `oversize` drop, whatever room the buffers have. The two networks may
//! have different MTUs while smoltcp has one: the Nic advertises the larger
//! one and clamps the MSS option of TCP SYNs crossing the smaller network
//! (in both directions), as routers do with `--clamp-mss-to-pmtu`.

/// A Tx token sending through `$out`, with the Nic's function, router and
/// counters (fields borrowed apart, so `$out` may borrow another field).
macro_rules! tx_token {
    ($nic:ident, $out:expr) => {
        $crate::stack::nic::phy::NicTxToken {
            out: $out,
            function: $nic.function.as_mut(),
            router: &$nic.router,
            predicted: &mut $nic.predicted,
            counters: &$nic.counters,
            now: $nic.now,
            management_port: $nic.management_port,
        }
    };
}

mod forward;
mod frame;
mod neighbours;
mod phy;
pub mod router;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use smoltcp::time::Instant;

pub use phy::{NicRxToken, NicTxToken};
pub use router::{Router, Transit};

use crate::adapters::{self, Adapter, TxLease};
use crate::counters::bump;
use crate::stack::hook::Function;
use crate::stack::{NicCounters, Role};

/// At most this many held frames are released per round, so a function's
/// backlog does not starve the adapters' receive side.
const HELD_PER_ROUND: usize = 64;

/// How long a forwarding device holds back ingress while an adapter has no
/// free transmit buffer.
const FORWARD_STALL_LIMIT: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(200);

/// The device's single smoltcp `phy::Device`.
pub struct Nic {
    /// The local and the global adapter, by [`Role::index`].
    adapters: [Box<dyn Adapter>; 2],
    pub(crate) function: Box<dyn Function>,
    router: Router,
    now: Instant,
    turn: bool,
    predicted: Role,
    counters: Arc<NicCounters>,
    /// Frames received this round, by [`Role::index`] (for `max_burst`).
    burst: [usize; 2],
    /// Where frames are copied that the stack (or a function) needs
    /// writable: as large as either network's largest frame.
    rx: Vec<u8>,
    /// A frame to send at the next chance (see [`Pending`]).
    pending: Pending,
    /// Synthetic frames to hand the stack before real ones (neighbour
    /// announcements built from the directories).
    inject: VecDeque<(Role, Vec<u8>)>,
    warm: neighbours::Warmup,
    /// When a forwarding device last found an adapter without free buffers.
    stalled_since: Option<Instant>,
    /// Where the function writes the frames it releases (`poll_transmit`).
    held: Vec<u8>,
    /// The management agent's TCP port: its traffic to and from this
    /// device bypasses the function's hooks, so a function (a deny-all
    /// firewall, an encrypting or shaping one) cannot cut the device off
    /// from its manager. The agent authenticates every request itself.
    pub(crate) management_port: Option<u16>,
}

/// A frame that could not be sent when it was made, because the adapter it
/// goes to was lending smoltcp a received frame in place: a reply the stack
/// made to that frame, or a transit frame going back out of the network it
/// came from. It is sent at the start of the Nic's next call.
struct Pending {
    buf: Vec<u8>,
    len: usize,
    what: PendingKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PendingKind {
    Nothing,
    /// The stack's reply: it takes the stack's egress path.
    Reply,
    /// A transit frame (arrived on this network) to forward.
    Forward(Transit),
}

/// The adapter of `role` and the other one, borrowed at once.
fn pair(adapters: &mut [Box<dyn Adapter>; 2], role: Role) -> (&mut dyn Adapter, &mut dyn Adapter) {
    let [local, global] = adapters;
    match role {
        Role::Local => (&mut **local, &mut **global),
        Role::Global => (&mut **global, &mut **local),
    }
}

impl Nic {
    /// A Nic over the local and the global adapter (same medium); the
    /// router says whether the stack fills in checksums
    /// ([`Router::checksummed`]).
    pub fn new(
        local: Box<dyn Adapter>,
        global: Box<dyn Adapter>,
        function: Box<dyn Function>,
        router: Router,
    ) -> Nic {
        let cap = local.frame_capacity().max(global.frame_capacity());
        Nic {
            adapters: [local, global],
            function,
            router,
            now: Instant::ZERO,
            turn: false,
            predicted: Role::Local,
            counters: Arc::default(),
            burst: [0; 2],
            rx: vec![0; cap],
            pending: Pending {
                buf: vec![0; cap],
                len: 0,
                what: PendingKind::Nothing,
            },
            inject: VecDeque::new(),
            warm: neighbours::Warmup::default(),
            stalled_since: None,
            held: vec![0; cap],
            management_port: None,
        }
    }

    /// The Nic's counters, shared with the device's other threads.
    pub fn counters(&self) -> &Arc<NicCounters> {
        &self.counters
    }
    /// The adapter on `role`'s network.
    pub fn adapter(&self, role: Role) -> &dyn Adapter {
        &*self.adapters[role.index()]
    }
    /// Replaces `role`'s adapter with what `f` makes of it (e.g. the same
    /// adapter wearing or taking off a capture). Frames in flight stay
    /// with the adapter beneath: wrappers change nothing the peers see.
    pub fn rewrap(&mut self, role: Role, f: impl FnOnce(Box<dyn Adapter>) -> Box<dyn Adapter>) {
        let slot = &mut self.adapters[role.index()];
        let a = std::mem::replace(slot, adapters::Vacant::boxed());
        *slot = f(a);
    }

    /// The adapter on `role`'s network, mutably.
    pub fn adapter_mut(&mut self, role: Role) -> &mut dyn Adapter {
        &mut *self.adapters[role.index()]
    }
    /// Both adapters, by [`Role::index`].
    pub fn adapters(&self) -> &[Box<dyn Adapter>; 2] {
        &self.adapters
    }
    /// The local adapter (`adapter(Role::Local)`).
    pub fn local(&self) -> &dyn Adapter {
        self.adapter(Role::Local)
    }
    /// The global adapter (`adapter(Role::Global)`).
    pub fn global(&self) -> &dyn Adapter {
        self.adapter(Role::Global)
    }
    /// What decides where each frame goes.
    pub fn router(&self) -> &Router {
        &self.router
    }
    /// The function and the adapters (its directory), borrowed at once.
    pub(crate) fn function_and_adapters(
        &mut self,
    ) -> (&mut Box<dyn Function>, &[Box<dyn Adapter>; 2]) {
        (&mut self.function, &self.adapters)
    }

    /// Starts a poll round at `now`.
    pub fn begin_round(&mut self, now: Instant) {
        self.now = now;
        self.burst = [0; 2];
        self.warm_neighbours(now);
    }

    /// May `role`'s adapter hand the stack another frame this round?
    fn burst_left(&self, role: Role) -> bool {
        self.adapters[role.index()]
            .max_burst()
            .is_none_or(|max| self.burst[role.index()] < max)
    }

    /// Can both adapters take a forwarded frame now?
    fn egress_ready(&mut self) -> bool {
        self.adapters.iter_mut().all(|a| a.can_lend())
    }

    /// Sends the frames the function releases from its own queues
    /// ([`Function::poll_transmit`]) while both adapters can take one:
    /// transit frames are forwarded, frames for the device go to its stack.
    /// Returns whether any frame was released.
    pub fn release_held(&mut self) -> bool {
        self.send_pending();
        let mut n = 0;
        while n < HELD_PER_ROUND && self.egress_ready() {
            let Some(emit) = self.function.poll_transmit(self.now, &mut self.held) else {
                break;
            };
            n += 1;
            let frame = &self.held[..emit.len.min(self.held.len())];
            let view = self.router.parse(frame);
            let transit = match emit.via {
                Some(via) => Some(self.router.via(&view, via)),
                None => self.router.transit(&view),
            };
            match transit {
                Some(t) => forward::forward_copy(
                    &self.router,
                    &self.counters,
                    &mut self.adapters,
                    t,
                    frame,
                    &view,
                ),
                None => self.inject.push_back((Role::Local, frame.to_vec())),
            }
        }
        n > 0
    }

    /// Sends the frame left [`Pending`], if any.
    fn send_pending(&mut self) {
        let len = self.pending.len;
        match std::mem::replace(&mut self.pending.what, PendingKind::Nothing) {
            PendingKind::Nothing => {}
            PendingKind::Reply => {
                let src = &self.pending.buf[..len];
                let token = tx_token!(self, phy::Out::Adapters(&mut self.adapters));
                smoltcp::phy::TxToken::consume(token, len, |b| b.copy_from_slice(src));
            }
            PendingKind::Forward(t) => {
                let frame = &self.pending.buf[..len];
                let view = self.router.parse(frame);
                forward::forward_copy(
                    &self.router,
                    &self.counters,
                    &mut self.adapters,
                    t,
                    frame,
                    &view,
                )
            }
        }
    }

    /// Pushes queued frames and wakes peers.
    pub fn flush(&mut self) {
        self.send_pending();
        for a in &mut self.adapters {
            a.flush();
        }
    }

    /// Frames moved so far (for progress detection).
    pub fn frames_moved(&self) -> u64 {
        let c = &self.counters;
        c.frames_in.load(Ordering::Relaxed) + c.frames_out.load(Ordering::Relaxed)
    }

    /// Sleeps until a peer wakes either adapter, or `timeout`.
    pub fn wait(&mut self, timeout: Option<Duration>) {
        let [local, global] = &self.adapters;
        let wakes = [local.prepare_sleep(), global.prepare_sleep()];
        adapters::sleep(&wakes, timeout);
        local.end_sleep();
        global.end_sleep();
    }

    /// Upkeep of both adapters (e.g. reclaiming what dead peers held).
    pub fn maintain(&mut self) {
        for a in &mut self.adapters {
            a.maintain();
        }
    }
}

/// Lends a buffer of `a` (counting `tx_no_buffer` when none is free).
fn lend(a: &mut dyn Adapter) -> Option<TxLease> {
    let lease = a.lend();
    if lease.is_none() {
        bump(&a.counters().tx_no_buffer, 1);
    }
    lease
}
