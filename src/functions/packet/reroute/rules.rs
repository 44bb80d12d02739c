//! Rules: which transit packets a rule takes (its match fields and DSCP)
//! and which next hop it sends them to, chosen again only when a next hop
//! changes state.

use super::probe::Hop;
use crate::functions::Verdict;
use crate::functions::matching::Matcher;
use crate::wire::IpView;

/// A compiled `[[rule]]`.
#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub name: String,
    /// `rule.NAME.packets`, built once.
    pub counter: String,
    matcher: Matcher,
    dscp: Option<u8>,
    /// Next hop indices, most preferred first.
    via: Vec<usize>,
    /// The chosen next hop and what its packets get, for IPv4 and IPv6.
    pub active: [Option<(usize, Verdict)>; 2],
    pub packets: u64,
}

/// How a rule's choice of next hop changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Change {
    /// Away from the preference (or to none).
    pub failover: bool,
    /// Towards the preference.
    pub failback: bool,
}

impl Rule {
    pub fn new(name: String, matcher: Matcher, dscp: Option<u8>, via: Vec<usize>) -> Rule {
        Rule {
            counter: format!("rule.{name}.packets"),
            name,
            matcher,
            dscp,
            via,
            active: [None; 2],
            packets: 0,
        }
    }

    pub fn matches(&self, ip: &IpView) -> bool {
        self.matcher.matches(ip) && self.dscp.is_none_or(|d| d == ip.dscp())
    }

    /// Starts from `old`'s choice of next hop for each family (`old_hops`
    /// are its next hops), found by name among `hops`, if it is still in
    /// `via`: with failback off, [`Rule::choose`] then keeps it while it is
    /// up, as it would have without the reconfiguration.
    pub fn keep_choice(&mut self, old: &Rule, old_hops: &[Hop], hops: &[Hop]) {
        for (slot, was) in self.active.iter_mut().zip(old.active) {
            *slot = was.and_then(|(oh, verdict)| {
                let name = &old_hops[oh].name;
                let h = self.via.iter().copied().find(|&h| hops[h].name == *name)?;
                Some((h, verdict))
            });
        }
    }

    /// Chooses the next hop of each family again: the first of `via` that
    /// is up and has an address of the family, unless `failback` is off
    /// and the current one is still usable. With `log`, changes are logged.
    pub fn choose(&mut self, hops: &[Hop], failback: bool, log: bool) -> Change {
        let mut change = Change::default();
        for v6 in [false, true] {
            let usable = |h: usize| hops[h].health.is_up() && hops[h].verdict(v6).is_some();
            let slot = &mut self.active[usize::from(v6)];
            let current = slot.map(|(h, _)| h);
            let keep = current.filter(|&c| !failback && usable(c));
            let next = keep.or_else(|| self.via.iter().copied().find(|&h| usable(h)));
            *slot = next.and_then(|h| hops[h].verdict(v6).map(|v| (h, v)));
            if next == current {
                continue;
            }
            let rank = |h: Option<usize>| {
                h.and_then(|h| self.via.iter().position(|&v| v == h))
                    .unwrap_or(usize::MAX)
            };
            if rank(next) < rank(current) {
                change.failback = true;
            } else {
                change.failover = true;
            }
            if log {
                let name = |h: Option<usize>| h.map_or("none", |h| hops[h].name.as_str());
                log::info!(
                    "reroute: rule {} ({}): next hop {} -> {}",
                    self.name,
                    if v6 { "IPv6" } else { "IPv4" },
                    name(current),
                    name(next)
                );
            }
        }
        change
    }
}
