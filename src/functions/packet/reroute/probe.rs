//! Next hops: where they are (a fixed address, a device looked up by name,
//! a network) and their health, checked by ICMP echo from the device's own
//! stack (RFC 792 / RFC 4443) through the shared fall/rise state machine
//! ([`crate::functions::health`]).

use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, Ipv4Address, Ipv6Address};

use super::Reroute;
use super::config::Check;
use crate::functions::common::counter_names;
use crate::functions::health::{Health, HealthCheck, Transition};
use crate::functions::{Directory, Role, Verdict};

/// ICMP echo identifier of the health checks (each device has its own
/// stack, so one value serves all).
pub(super) const PROBE_IDENT: u16 = 0x5252;
/// Payload of a health-check echo request, after the 8-byte ICMP header.
const PROBE_PAYLOAD: &[u8; 8] = b"shmnetrr";

/// Where a next hop is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    Fixed,
    Device(String),
    Network(Role),
}

/// A next hop: its health, its counters, its address.
#[derive(Debug, Clone)]
pub(super) struct Hop {
    pub name: String,
    pub target: Target,
    pub check: Check,
    pub params: HealthCheck,
    pub health: Health,
    /// Sequence number of the probe in flight.
    pub seq: u16,
    pub packets: u64,
    pub probes_sent: u64,
    pub probes_lost: u64,
    /// `next_hop.NAME.` + `packets`, `up`, `probes_sent`, `probes_lost`.
    pub counters: [String; 4],
    pub v4: Option<Ipv4Address>,
    pub v6: Option<Ipv6Address>,
    /// Has a device next hop ever had an address (the first one counts as
    /// up; one that comes back must prove itself).
    pub resolved_once: bool,
    pub next_resolve: Instant,
}

impl Hop {
    pub fn new(
        name: String,
        target: Target,
        check: Check,
        params: HealthCheck,
        v4: Option<Ipv4Address>,
        v6: Option<Ipv6Address>,
    ) -> Hop {
        // Fixed next hops start up, so traffic flows at once; a device
        // one once it has an address.
        let fixed = matches!(target, Target::Fixed | Target::Network(_));
        Hop {
            counters: counter_names(
                "next_hop",
                &name,
                ["packets", "up", "probes_sent", "probes_lost"],
            ),
            name,
            target,
            check,
            params,
            health: Health::new(fixed),
            v4,
            v6,
            resolved_once: fixed,
            next_resolve: Instant::ZERO,
            seq: 0,
            packets: 0,
            probes_sent: 0,
            probes_lost: 0,
        }
    }

    /// What a packet of the family sent to this next hop gets: `None` if
    /// the next hop has no address of that family.
    pub fn verdict(&self, v6: bool) -> Option<Verdict> {
        match self.target {
            Target::Network(role) => Some(Verdict::Redirect(role)),
            _ => self.address(v6).map(Verdict::Via),
        }
    }

    pub fn address(&self, v6: bool) -> Option<IpAddress> {
        if v6 {
            self.v6.map(IpAddress::Ipv6)
        } else {
            self.v4.map(IpAddress::Ipv4)
        }
    }

    /// The address health checks go to: IPv4 if it has one.
    pub fn probe_address(&self) -> Option<IpAddress> {
        self.address(false).or(self.address(true))
    }

    /// When this next hop next needs attention.
    pub fn due(&self) -> Option<Instant> {
        let resolve = matches!(self.target, Target::Device(_)).then_some(self.next_resolve);
        let probing = self.health.in_flight().is_some() || self.probe_address().is_some();
        let probe = (self.check == Check::Icmp && probing).then(|| self.health.due(&self.params));
        match (resolve, probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Logs a transition of the state machine.
    fn log(&self, t: Transition) {
        match t {
            Transition::Up => log::info!(
                "reroute: next hop {} up ({} answers)",
                self.name,
                self.params.rise
            ),
            Transition::Down => log::info!(
                "reroute: next hop {} down ({} probes unanswered)",
                self.name,
                self.params.fall
            ),
        }
    }
}

impl Reroute {
    /// Looks up device next hops that are due, through `devices`.
    pub(super) fn resolve(&mut self, now: Instant, devices: &dyn Directory) {
        for h in &mut self.hops {
            let Target::Device(dev) = &h.target else {
                continue;
            };
            if now < h.next_resolve {
                continue;
            }
            h.next_resolve = now + h.params.interval;
            let found = devices.device_addresses(dev);
            let v4 = found.iter().find_map(|a| match a {
                IpAddress::Ipv4(a) => Some(*a),
                _ => None,
            });
            let v6 = found.iter().find_map(|a| match a {
                IpAddress::Ipv6(a) => Some(*a),
                _ => None,
            });
            if (v4, v6) == (h.v4, h.v6) {
                continue;
            }
            let found_any = v4.is_some() || v6.is_some();
            log::info!(
                "reroute: next hop {} (device {dev}) is now at {v4:?} {v6:?}",
                h.name
            );
            (h.v4, h.v6) = (v4, v6);
            // The first address counts as up (like a fixed one); a device
            // that vanished and came back must answer `rise` probes first,
            // unless nothing checks it.
            let up = found_any && (!h.resolved_once || h.check == Check::None);
            h.resolved_once |= found_any;
            if up != h.health.is_up() {
                log::info!(
                    "reroute: next hop {} {}",
                    h.name,
                    if up { "up" } else { "down (no address)" }
                );
            }
            h.health.restart(now, up);
            self.dirty = true;
        }
    }

    /// Sends the health checks that are due through `send` (which returns
    /// whether it could) and gives up on the ones that timed out. Returns
    /// whether it sent anything.
    pub(super) fn run_probes(
        &mut self,
        now: Instant,
        send: &mut dyn FnMut(IpAddress, u16) -> bool,
    ) -> bool {
        let mut sent = false;
        for h in &mut self.hops {
            if h.check != Check::Icmp {
                continue;
            }
            if h.health.timed_out(&h.params, now) {
                h.probes_lost += 1;
                if let Some(t) = h.health.finish(&h.params, now, false) {
                    h.log(t);
                    self.dirty = true;
                }
            }
            if let Some(addr) = h.probe_address()
                && h.health.start(&h.params, now)
            {
                self.seq = self.seq.wrapping_add(1);
                // A probe that cannot be queued counts as sent and is lost
                // when its timeout passes.
                let _ = send(addr, self.seq);
                h.seq = self.seq;
                h.probes_sent += 1;
                sent = true;
            }
        }
        sent
    }

    /// An echo reply from `from` with sequence number `seq` arrived at
    /// `now`.
    pub(super) fn handle_reply(&mut self, now: Instant, from: IpAddress, seq: u16) {
        let Some(h) = self.hops.iter_mut().find(|h| {
            h.health.in_flight().is_some()
                && h.seq == seq
                && (h.address(false) == Some(from) || h.address(true) == Some(from))
        }) else {
            return;
        };
        if let Some(t) = h.health.finish(&h.params, now, true) {
            h.log(t);
            self.dirty = true;
        }
    }
}

/// Writes an ICMP (`v6`: ICMPv6) echo request into `buf`; returns its
/// length. The stack computes the checksum when it sends it.
pub(super) fn echo_request(v6: bool, seq: u16, buf: &mut [u8]) -> usize {
    let len = 8 + PROBE_PAYLOAD.len();
    buf[0] = if v6 { 128 } else { 8 };
    buf[1] = 0;
    buf[2..4].fill(0);
    buf[4..6].copy_from_slice(&PROBE_IDENT.to_be_bytes());
    buf[6..8].copy_from_slice(&seq.to_be_bytes());
    buf[8..len].copy_from_slice(PROBE_PAYLOAD);
    len
}

/// The sequence number of one of our echo replies.
pub(super) fn echo_reply_seq(msg: &[u8]) -> Option<u16> {
    let h = msg.get(..8)?;
    let reply = matches!(h[0], 0 | 129) && h[1] == 0;
    let ident = u16::from_be_bytes([h[4], h[5]]);
    (reply && ident == PROBE_IDENT).then(|| u16::from_be_bytes([h[6], h[7]]))
}
