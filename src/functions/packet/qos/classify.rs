//! Which frames are scheduled, which class a packet goes to, and ECN
//! Congestion Experienced marking (RFC 3168).
//!
//! A class matches on DSCP (RFC 2474, the upper six bits of the IPv4 TOS /
//! IPv6 traffic class) and on the shared match fields (protocol, prefixes,
//! ports: [`Matcher`]) of the frame's parsed [`IpView`].

use super::config::ClassConfig;
use crate::functions::matching::{MatchSpec, Matcher, ProtoSpec};
use crate::wire::{FrameView, IpView, NoIp, checksum, proto};

/// Why a frame is not scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unscheduled {
    /// Not IP, or IP the network needs to work (neighbour discovery, MLD):
    /// it passes unqueued.
    Pass,
    /// A malformed or truncated IP packet: a counted drop.
    Malformed,
}

/// The IP packet a frame carries, if it is one QoS schedules.
#[inline]
pub(super) fn scheduled(view: &FrameView) -> Result<&IpView, Unscheduled> {
    match view.well_formed_ip() {
        Ok(ip) if ip.is_control() => Err(Unscheduled::Pass),
        Ok(ip) => Ok(ip),
        Err(NoIp::Malformed) => Err(Unscheduled::Malformed),
        Err(NoIp::NotIp) => Err(Unscheduled::Pass),
    }
}

/// A class's match criteria, compiled.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ClassMatch {
    /// Bit `d` set: DSCP `d` matches; 0: any.
    dscp: u64,
    /// `proto = "icmp"`: ICMP in IPv4, ICMPv6 in IPv6.
    icmp: bool,
    fields: Matcher,
}

impl ClassMatch {
    pub fn compile(c: &ClassConfig) -> Result<ClassMatch, String> {
        let name = &c.name;
        let mut dscp = 0u64;
        for &d in &c.dscp {
            if !(0..=63).contains(&d) {
                return Err(format!("class {name}: dscp {d} is not 0..=63"));
            }
            dscp |= 1 << d;
        }
        // QoS treats ping alike in both IP versions: "icmp" is checked
        // here, by version, not as protocol 1 by the matcher.
        let icmp = matches!(&c.proto, Some(ProtoSpec::Name(s)) if s == "icmp");
        let fields = Matcher::compile(
            &format!("class {name}"),
            MatchSpec {
                proto: c.proto.as_ref().filter(|_| !icmp),
                ..c.match_spec()
            },
        )?;
        Ok(ClassMatch { dscp, icmp, fields })
    }

    /// Does the packet belong to the class? Port criteria match only
    /// packets that carry ports (not later fragments).
    #[inline]
    pub fn matches(&self, ip: &IpView) -> bool {
        (self.dscp == 0 || self.dscp >> ip.dscp() & 1 == 1)
            && (!self.icmp || ip.proto == if ip.v6 { proto::ICMPV6 } else { proto::ICMP })
            && self.fields.matches(ip)
    }
}

/// Sets ECN to CE in the IP packet `ip` of `frame` if it is ECN-capable
/// (ECT(0) or ECT(1)); returns whether it marked. The IPv4 header checksum
/// is updated incrementally (RFC 1624), so a wrong checksum stays wrong.
pub(super) fn mark_ce(frame: &mut [u8], ip: &IpView) -> bool {
    if !matches!(ip.ecn(), 1 | 2) {
        return false;
    }
    let Some(h) = frame.get_mut(ip.l3..ip.l3 + 12) else {
        return false;
    };
    if ip.v6 {
        // The traffic class straddles bytes 0 and 1: ECN is bits 4-5 of
        // byte 1.
        h[1] |= 0x30;
        return true;
    }
    let old = u16::from_be_bytes([h[0], h[1]]);
    h[1] |= 3;
    let new = u16::from_be_bytes([h[0], h[1]]);
    let ck = checksum::update(u16::from_be_bytes([h[10], h[11]]), old, new);
    h[10..12].copy_from_slice(&ck.to_be_bytes());
    true
}
