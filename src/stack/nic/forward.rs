//! Sending a frame out of an adapter other than by the stack's own Tx
//! token: a copy ([`send_copy`]: a redirected or released frame, a wrong
//! guess of the Tx token, a transit frame received elsewhere) or the lent
//! buffer the frame already sits in ([`send_lease`]: a transit frame
//! received straight into the egress adapter's buffer, so it is copied once
//! per hop).
//!
//! A forwarded frame ([`Exit::Forward`]) gets its next hop's MAC (from the
//! egress adapter's directory), a decremented TTL and, crossing into the
//! smaller network, a clamped MSS. Every drop is counted: `oversize` (an IP
//! packet larger than the network's MTU), `tx_no_buffer`, `no_route`,
//! `ttl_expired`, `no_neighbour`.

use smoltcp::phy::Medium;
use smoltcp::wire::IpAddress;

use super::{Router, Transit, frame, lend};
use crate::adapters::{Adapter, TxLease};
use crate::counters::bump;
use crate::stack::{NicCounters, Role};
use crate::wire::FrameView;

/// How a frame leaves.
#[derive(Debug, Clone, Copy)]
pub(super) enum Exit {
    /// Forwarded to this next hop: MACs, TTL and MSS rewritten.
    Forward(IpAddress),
    /// As it is.
    Unchanged,
}

/// The egress network and next hop of a transit decision; `None` (counted)
/// when there is no route or the TTL ran out.
pub(super) fn egress(counters: &NicCounters, t: Transit) -> Option<(Role, IpAddress)> {
    match t {
        Transit::Forward { egress, next_hop } => Some((egress, next_hop)),
        Transit::NoRoute => {
            bump(&counters.no_route, 1);
            None
        }
        Transit::Expired => {
            bump(&counters.ttl_expired, 1);
            None
        }
    }
}

/// Forwards a copy of `frame` where `t` says.
pub(super) fn forward_copy(
    router: &Router,
    counters: &NicCounters,
    adapters: &mut [Box<dyn Adapter>; 2],
    t: Transit,
    frame: &[u8],
    view: &FrameView,
) {
    if let Some((to, next_hop)) = egress(counters, t) {
        let out = &mut *adapters[to.index()];
        send_copy(
            router,
            counters,
            out,
            to,
            Exit::Forward(next_hop),
            frame,
            view,
        );
    }
}

/// Sends a copy of `frame` (parsed as `view`) out of `out`, the adapter on
/// `to`'s network.
pub(super) fn send_copy(
    router: &Router,
    counters: &NicCounters,
    out: &mut dyn Adapter,
    to: Role,
    exit: Exit,
    frame: &[u8],
    view: &FrameView,
) {
    if !router.fits(frame.len(), to) {
        return bump(&counters.oversize, 1);
    }
    let Some(mut lease) = lend(out) else {
        return;
    };
    let buf = out.buffer(&mut lease);
    let Some(dst) = buf.get_mut(..frame.len()) else {
        out.release(lease);
        return bump(&counters.oversize, 1);
    };
    dst.copy_from_slice(frame);
    send_lease(router, counters, out, to, exit, lease, frame.len(), view);
}

/// Sends the first `len` bytes of a buffer `out` lent (`out` is the adapter
/// on `to`'s network), a frame parsed as `view`.
#[allow(clippy::too_many_arguments)] // the frame, where it is, where it goes
pub(super) fn send_lease(
    router: &Router,
    counters: &NicCounters,
    out: &mut dyn Adapter,
    to: Role,
    exit: Exit,
    mut lease: TxLease,
    len: usize,
    view: &FrameView,
) {
    if !router.fits(len, to) {
        out.release(lease);
        return bump(&counters.oversize, 1);
    }
    if let Exit::Forward(next_hop) = exit {
        let macs = match (router.medium(), router.mac()) {
            (Medium::Ethernet, Some(mine)) => match out.mac_of(next_hop) {
                Some(theirs) => Some((theirs.0, mine)),
                None => {
                    out.release(lease);
                    return bump(&counters.no_neighbour, 1);
                }
            },
            _ => None,
        };
        let Some(buf) = out.buffer(&mut lease).get_mut(..len) else {
            out.release(lease);
            return bump(&counters.oversize, 1);
        };
        frame::rewrite_forwarded(router.link_header_len(), view, buf, macs);
        if router.clamp_mss(view, buf, to) {
            bump(&counters.mss_clamped, 1);
        }
        bump(&counters.forwarded, 1);
    }
    out.commit(lease, len);
}
