//! The Nic as smoltcp's `phy::Device`.
//!
//! Receive: each frame comes off an adapter in place (trusted peers, no
//! function looking at it) or copied once into the buffer it needs (the
//! Nic's own for the stack; on a forwarding device, a buffer lent by the
//! adapter it most likely leaves from). The function's ingress hook sees
//! it there; then it goes to the stack, is forwarded, or is dropped (an
//! empty frame tells smoltcp "processed" without ending its ingress loop).
//!
//! Transmit: the stack writes into a buffer lent by the adapter the
//! previous frame went to; the egress hook sees it; the router picks the
//! network. While the stack reads a frame in place, the adapter lending it
//! cannot send, so a reply the stack makes meanwhile is kept
//! ([`super::Pending`]) and sent at the Nic's next call.

use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::forward::{self, Exit};
use super::{Nic, Pending, PendingKind, Router, Transit, frame, lend, pair};
use crate::adapters::{Adapter, InPlace, TxLease};
use crate::counters::bump;
use crate::stack::hook::{Frame, Function, Verdict};
use crate::stack::{NicCounters, Role};
use crate::wire::FrameView;

/// Ingress: a frame for the stack.
pub struct NicRxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for NicRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Egress: lends a buffer of the predicted adapter, then hooks and routes.
pub struct NicTxToken<'a> {
    pub(super) out: Out<'a>,
    pub(super) function: &'a mut dyn Function,
    pub(super) router: &'a Router,
    pub(super) predicted: &'a mut Role,
    pub(super) counters: &'a NicCounters,
    pub(super) now: Instant,
    pub(super) management_port: Option<u16>,
}

/// Where a Tx token's frame goes.
pub(super) enum Out<'a> {
    /// Through the adapters, now.
    Adapters(&'a mut [Box<dyn Adapter>; 2]),
    /// Kept for the Nic's next call (an adapter is lending a frame in place).
    Later(&'a mut Pending),
}

/// Where a received frame waits while the function looks at it.
enum Held {
    /// The Nic's receive buffer.
    Rx,
    /// A buffer lent by this network's adapter.
    Lease(Role, TxLease),
}

/// What came off an adapter.
enum Got {
    InPlace(InPlace),
    Copied(Held, usize),
}

/// Whether `view` is TCP to (`ingress`) or from the management agent's
/// port, which the hooks do not see (see `Nic::management_port`).
fn is_management(port: Option<u16>, view: &FrameView, ingress: bool) -> bool {
    let Some(port) = port else { return false };
    match view.ip() {
        Some(ip) if ip.proto == crate::wire::proto::TCP => match ip.ports() {
            Some((s, d)) => port == if ingress { d } else { s },
            None => false,
        },
        _ => false,
    }
}

/// What becomes of a frame after the ingress hook.
enum Fate {
    Stack,
    Forward(Transit),
    Unchanged(Role),
    Gone,
}

/// Builds the frame in a scratch buffer the stack writes into and nobody
/// reads: the frame is dropped (and was counted by the caller).
fn scratch<R, F: FnOnce(&mut [u8]) -> R>(len: usize, f: F) -> R {
    f(&mut vec![0u8; len])
}

impl phy::TxToken for NicTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let c = self.counters;
        let adapters = match self.out {
            Out::Adapters(a) => a,
            Out::Later(p) => {
                let Some(buf) = p.buf.get_mut(..len) else {
                    bump(&c.oversize, 1);
                    return scratch(len, f);
                };
                let r = f(buf);
                (p.len, p.what) = (len, PendingKind::Reply);
                return r;
            }
        };
        let mut pred = *self.predicted;
        let cap = |r: Role| adapters[r.index()].frame_capacity();
        if len > cap(pred) && len <= cap(pred.other()) {
            // Only the other network's buffers are big enough.
            pred = pred.other();
            *self.predicted = pred;
        }
        let (p, o) = pair(adapters, pred);
        let Some(mut lease) = lend(p) else {
            return scratch(len, f);
        };
        let full = p.buffer(&mut lease);
        if len > full.len() {
            p.release(lease);
            bump(&c.oversize, 1);
            return scratch(len, f);
        }
        bump(&c.frames_out, 1);
        let r = f(&mut full[..len]);
        let view = self.router.parse(&full[..len]);
        frame::keep_window_margin(&view, &mut full[..len], self.router.checksums());
        let mut frame = Frame::with_view(full, len, self.router.link_medium(), view);
        let verdict = if is_management(self.management_port, &view, false) {
            Verdict::Pass
        } else {
            self.function.on_egress(self.now, &mut frame)
        };
        if verdict == Verdict::Modified {
            frame.reparse();
        }
        let (flen, view) = (frame.len(), *frame.view());
        let route = match verdict {
            Verdict::Drop | Verdict::Consumed => {
                let n = if verdict == Verdict::Drop {
                    &c.egress_dropped
                } else {
                    &c.consumed
                };
                bump(n, 1);
                p.release(lease);
                return r;
            }
            Verdict::Redirect(role) => {
                bump(&c.redirected, 1);
                role
            }
            Verdict::Via(via) => {
                let Some(role) = self.router.network_of(&via) else {
                    bump(&c.no_route, 1);
                    p.release(lease);
                    return r;
                };
                if self.router.medium() == Medium::Ethernet {
                    let on = if role == pred { &mut *p } else { &mut *o };
                    let Some(mac) = on.mac_of(via) else {
                        bump(&c.no_neighbour, 1);
                        p.release(lease);
                        return r;
                    };
                    frame::set_dst_mac(p.buffer(&mut lease), mac.0);
                }
                bump(&c.redirected, 1);
                role
            }
            Verdict::Pass | Verdict::Modified => {
                self.router.route(&view, &p.buffer(&mut lease)[..flen])
            }
        };
        if self
            .router
            .clamp_mss(&view, &mut p.buffer(&mut lease)[..flen], route)
        {
            bump(&c.mss_clamped, 1);
        }
        bump([&c.routed_local, &c.routed_global][route.index()], 1);
        if route == pred {
            forward::send_lease(
                self.router,
                c,
                p,
                route,
                Exit::Unchanged,
                lease,
                flen,
                &view,
            );
        } else {
            *self.predicted = route;
            let frame = &p.buffer(&mut lease)[..flen];
            forward::send_copy(self.router, c, o, route, Exit::Unchanged, frame, &view);
            p.release(lease);
        }
        r
    }
}

/// The bytes of a held frame's buffer.
fn held_bytes<'a>(
    adapters: &'a mut [Box<dyn Adapter>; 2],
    rx: &'a mut [u8],
    held: &mut Held,
) -> &'a mut [u8] {
    match held {
        Held::Rx => rx,
        Held::Lease(role, lease) => adapters[role.index()].buffer(lease),
    }
}

impl Nic {
    /// Tokens handing the stack the first `len` bytes of the receive buffer.
    fn for_stack(&mut self, len: usize) -> (NicRxToken<'_>, NicTxToken<'_>) {
        let rx = NicRxToken {
            frame: &self.rx[..len],
        };
        (rx, tx_token!(self, Out::Adapters(&mut self.adapters)))
    }

    /// Takes the next frame from `role`'s adapter: in place when it may,
    /// else copied into the buffer it most likely needs.
    fn take(&mut self, role: Role, hooks: bool) -> Option<Got> {
        let forwards = self.router.forwards();
        let (i, o) = pair(&mut self.adapters, role);
        if i.in_place() && (!hooks || forwards) {
            return i.recv_in_place().map(Got::InPlace);
        }
        // A forwarding device receives straight into a buffer of the other
        // adapter, where most frames leave (if every frame of this network
        // fits: the length is known only once it is copied).
        if forwards
            && o.frame_capacity() >= i.frame_capacity()
            && let Some(mut lease) = o.lend()
        {
            let Some(len) = i.recv_into(o.buffer(&mut lease)) else {
                o.release(lease);
                return None;
            };
            return Some(Got::Copied(Held::Lease(role.other(), lease), len));
        }
        let len = i.recv_into(&mut self.rx)?;
        Some(Got::Copied(Held::Rx, len))
    }

    /// A frame the stack reads in place, or (a forwarding device's transit
    /// frame) forwards from there.
    fn in_place(
        &mut self,
        role: Role,
        f: InPlace,
        hooks: bool,
    ) -> (NicRxToken<'_>, NicTxToken<'_>) {
        let len = f.len();
        if !self.router.fits(len, role) {
            bump(&self.counters.oversize, 1);
            return self.for_stack(0);
        }
        if hooks {
            let (held, view) = self.copy_in_place(role, &f);
            return self.ingress(role, held, len, Some(view));
        }
        let (i, o) = pair(&mut self.adapters, role);
        let bytes = i.frame(&f);
        if !self.router.forwards() && !self.router.clamps() {
            // Nothing to decide or rewrite: the stack parses the sender's
            // buffer itself, so the Nic need not parse it first.
            return (
                NicRxToken { frame: bytes },
                tx_token!(self, Out::Later(&mut self.pending)),
            );
        }
        let view = self.router.parse(bytes);
        let frame = match self.router.transit(&view) {
            Some(Transit::Forward { egress, next_hop }) if egress != role => {
                let exit = Exit::Forward(next_hop);
                forward::send_copy(&self.router, &self.counters, o, egress, exit, bytes, &view);
                &[][..]
            }
            Some(t @ Transit::Forward { .. }) => {
                // Back out of the network it came from, whose adapter is
                // busy lending it: at the next call.
                let p = &mut self.pending;
                p.buf[..bytes.len()].copy_from_slice(bytes);
                (p.len, p.what) = (bytes.len(), PendingKind::Forward(t));
                &[][..]
            }
            Some(t) => {
                forward::egress(&self.counters, t);
                &[][..]
            }
            None if self.router.may_clamp(&view) => {
                let rx = &mut self.rx[..bytes.len()];
                rx.copy_from_slice(bytes);
                if self.router.clamp_mss(&view, rx, role) {
                    bump(&self.counters.mss_clamped, 1);
                }
                rx
            }
            // Nothing to rewrite: the stack parses the sender's buffer.
            None => bytes,
        };
        (
            NicRxToken { frame },
            tx_token!(self, Out::Later(&mut self.pending)),
        )
    }

    /// Copies a frame read in place to where the function may rewrite it:
    /// a buffer of the adapter it leaves by if it is a transit frame for the
    /// other network, else the receive buffer.
    fn copy_in_place(&mut self, role: Role, f: &InPlace) -> (Held, FrameView) {
        let (i, o) = pair(&mut self.adapters, role);
        let bytes = i.frame(f);
        let view = self.router.parse(bytes);
        let leaves_by_other = matches!(
            self.router.transit(&view),
            Some(Transit::Forward { egress, .. }) if egress != role
        );
        if leaves_by_other
            && bytes.len() <= o.frame_capacity()
            && let Some(mut lease) = o.lend()
        {
            o.buffer(&mut lease)[..bytes.len()].copy_from_slice(bytes);
            return (Held::Lease(role.other(), lease), view);
        }
        self.rx[..bytes.len()].copy_from_slice(bytes);
        (Held::Rx, view)
    }

    /// Runs the ingress hook on a received frame and sends it on its way.
    /// `view`: the frame's parse, if it was parsed already.
    fn ingress(
        &mut self,
        role: Role,
        mut held: Held,
        len: usize,
        view: Option<FrameView>,
    ) -> (NicRxToken<'_>, NicTxToken<'_>) {
        let c = &*self.counters;
        let (fate, view) = if self.router.fits(len, role) {
            let buf = held_bytes(&mut self.adapters, &mut self.rx, &mut held);
            let view = view.unwrap_or_else(|| self.router.parse(&buf[..len]));
            let mut frame = Frame::with_view(buf, len, self.router.link_medium(), view);
            let verdict = if is_management(self.management_port, &view, true)
                && self.router.transit(&view).is_none()
            {
                Verdict::Pass
            } else {
                self.function.on_ingress(self.now, role, &mut frame)
            };
            if verdict == Verdict::Modified {
                frame.reparse();
            }
            let (flen, view) = (frame.len(), *frame.view());
            let fate = match verdict {
                Verdict::Pass | Verdict::Modified => self
                    .router
                    .transit(&view)
                    .map_or(Fate::Stack, Fate::Forward),
                Verdict::Drop => {
                    bump(&c.ingress_dropped, 1);
                    Fate::Gone
                }
                Verdict::Consumed => {
                    bump(&c.consumed, 1);
                    Fate::Gone
                }
                Verdict::Via(via) => {
                    bump(&c.redirected, 1);
                    Fate::Forward(self.router.via(&view, via))
                }
                // A forwarding device routes it: next hop, MAC and TTL.
                Verdict::Redirect(to) if self.router.forwards() => {
                    bump(&c.redirected, 1);
                    Fate::Forward(self.router.redirect(&view, to))
                }
                Verdict::Redirect(to) => {
                    bump(&c.redirected, 1);
                    Fate::Unchanged(to)
                }
            };
            ((fate, flen), view)
        } else {
            bump(&c.oversize, 1);
            ((Fate::Gone, 0), FrameView::Malformed)
        };
        match fate {
            (Fate::Stack, flen) => {
                if let Held::Lease(at, mut lease) = held {
                    // For the device itself after all (rare on a
                    // forwarding device): into the receive buffer.
                    let a = &mut self.adapters[at.index()];
                    self.rx[..flen].copy_from_slice(&a.buffer(&mut lease)[..flen]);
                    a.release(lease);
                }
                if self.router.clamp_mss(&view, &mut self.rx[..flen], role) {
                    bump(&self.counters.mss_clamped, 1);
                }
                return self.for_stack(flen);
            }
            (Fate::Forward(t), flen) => {
                if let Some((to, next_hop)) = forward::egress(c, t) {
                    self.send_held(held, to, Exit::Forward(next_hop), flen, &view);
                } else {
                    self.drop_held(held);
                }
            }
            (Fate::Unchanged(to), flen) => self.send_held(held, to, Exit::Unchanged, flen, &view),
            (Fate::Gone, _) => self.drop_held(held),
        }
        self.for_stack(0)
    }

    /// Sends a held frame out of `to`'s adapter: from the buffer it is in if
    /// that adapter lent it, else as a copy.
    fn send_held(&mut self, held: Held, to: Role, exit: Exit, len: usize, view: &FrameView) {
        let (router, c) = (&self.router, &*self.counters);
        match held {
            Held::Lease(at, lease) if at == to => {
                let out = &mut *self.adapters[to.index()];
                forward::send_lease(router, c, out, to, exit, lease, len, view);
            }
            Held::Lease(at, mut lease) => {
                let (src, out) = pair(&mut self.adapters, at);
                let frame = &src.buffer(&mut lease)[..len];
                forward::send_copy(router, c, out, to, exit, frame, view);
                src.release(lease);
            }
            Held::Rx => {
                let out = &mut *self.adapters[to.index()];
                forward::send_copy(router, c, out, to, exit, &self.rx[..len], view);
            }
        }
    }

    /// Gives a held frame's buffer back.
    fn drop_held(&mut self, held: Held) {
        if let Held::Lease(at, lease) = held {
            self.adapters[at.index()].release(lease);
        }
    }
}

impl phy::Device for Nic {
    type RxToken<'a> = NicRxToken<'a>;
    type TxToken<'a> = NicTxToken<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.send_pending();
        if let Some((_, frame)) = self.inject.pop_front() {
            let n = frame.len().min(self.rx.len());
            self.rx[..n].copy_from_slice(&frame[..n]);
            return Some(self.for_stack(n));
        }
        if self.router.forwards() && !self.egress_ready() {
            // Back-pressure: leave transit frames in their rings until the
            // adapters have buffers again, rather than drop them. A stall
            // longer than FORWARD_STALL_LIMIT (two forwarders waiting on
            // each other) is broken by forwarding anyway, which may drop.
            let since = *self.stalled_since.get_or_insert(self.now);
            if self.now - since < super::FORWARD_STALL_LIMIT {
                return None;
            }
        } else {
            self.stalled_since = None;
        }
        let hooks = self.function.kind().hooks_ingress;
        for _ in 0..2 {
            self.turn = !self.turn;
            let role = if self.turn { Role::Local } else { Role::Global };
            if !self.burst_left(role) {
                continue;
            }
            if let Some(got) = self.take(role, hooks) {
                self.burst[role.index()] += 1;
                bump(&self.counters.frames_in, 1);
                return Some(match got {
                    Got::InPlace(f) => self.in_place(role, f, hooks),
                    Got::Copied(held, len) => self.ingress(role, held, len, None),
                });
            }
        }
        None
    }

    fn transmit(&mut self, _t: Instant) -> Option<Self::TxToken<'_>> {
        self.send_pending();
        let p = &mut self.adapters[self.predicted.index()];
        if !p.can_lend() {
            bump(&p.counters().tx_backpressure, 1);
            return None;
        }
        Some(tx_token!(self, Out::Adapters(&mut self.adapters)))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = self.router.medium();
        caps.max_transmission_unit = self.router.link_header_len()
            + self
                .router
                .mtu(Role::Local)
                .max(self.router.mtu(Role::Global));
        caps.max_burst_size = match self.adapters.each_ref().map(|a| a.max_burst()) {
            [Some(a), Some(b)] => Some(a.min(b)),
            [a, b] => a.or(b),
        };
        if !self.router.checksums() {
            caps.checksum = ChecksumCapabilities::ignored();
        }
        caps
    }
}
