//! The rules, compiled: each a [`Matcher`] plus the side a packet must
//! come from, the connection state it applies to and whether it is for
//! non-first fragments; looked up first-match, with a packet counter per
//! rule.

use super::config::{Action, Direction, RuleConfig, StateMatch};
use crate::functions::Role;
use crate::functions::matching::{MatchSpec, Matcher, PROTO_ICMP, PROTO_ICMPV6, ProtoSpec};
use crate::wire::IpView;

/// A rule, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rule {
    action: Action,
    /// The side the packet must come from (`None`: either); see
    /// [`Direction`].
    from: Option<Role>,
    matcher: Matcher,
    /// The IP version the protocol implies: ICMP is IPv4's, ICMPv6 IPv6's.
    v6: Option<bool>,
    state: StateMatch,
    fragments: bool,
}

impl Rule {
    /// Compiles rule `i` (0-based, as in the counters' names).
    fn compile(i: usize, r: &RuleConfig) -> Result<Rule, String> {
        let owner = format!("rule {i}");
        let proto = r
            .proto
            .as_ref()
            .filter(|p| !matches!(p, ProtoSpec::Name(n) if n == "any"));
        let matcher = Matcher::compile(
            &owner,
            MatchSpec {
                proto,
                ..r.match_spec()
            },
        )?;
        let has_ports = matcher.sport.is_some() || matcher.dport.is_some();
        if r.fragments && (has_ports || r.state != StateMatch::Any) {
            return Err(format!(
                "{owner}: a fragments rule matches no ports and no state"
            ));
        }
        let family = matcher.src.or(matcher.dst).map(|p| p.v6);
        let v6 = match (matcher.proto, family) {
            (Some(PROTO_ICMP), Some(true)) => {
                return Err(format!("{owner}: proto \"icmp\" is IPv4; use \"icmpv6\""));
            }
            (Some(PROTO_ICMPV6), Some(false)) => {
                return Err(format!("{owner}: proto \"icmpv6\" needs IPv6 prefixes"));
            }
            (Some(PROTO_ICMP), _) => Some(false),
            (Some(PROTO_ICMPV6), _) => Some(true),
            _ => None,
        };
        Ok(Rule {
            action: r.action,
            from: match r.direction {
                Direction::In => Some(Role::Global),
                Direction::Out => Some(Role::Local),
                Direction::Any => None,
            },
            matcher,
            v6,
            state: r.state,
            fragments: r.fragments,
        })
    }

    /// Is it one of the rules a packet that would start a connection
    /// consults (`state = "new"` or `"any"`, not for fragments)?
    fn for_new(&self) -> bool {
        !self.fragments && self.state != StateMatch::Established
    }

    /// Does the packet, coming from `side`, match? (State and fragments
    /// are the caller's choice of rules.)
    fn matches(&self, ip: &IpView, side: Role) -> bool {
        self.from.is_none_or(|f| f == side)
            && self.v6.is_none_or(|v6| v6 == ip.v6)
            && self.matcher.matches(ip)
    }
}

/// The ordered rules and their packet counters.
#[derive(Debug, Clone)]
pub(super) struct Rules {
    rules: Vec<Rule>,
    /// Indices of `state = "established"` rules, the only ones an
    /// established packet consults (usually none).
    established: Vec<usize>,
    /// Packets each rule decided.
    packets: Vec<u64>,
    /// `rule{i}_packets`, built once.
    names: Vec<String>,
}

impl Rules {
    pub fn compile(cfg: &[RuleConfig]) -> Result<Rules, String> {
        let rules = cfg
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::compile(i, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rules {
            established: (0..rules.len())
                .filter(|&i| rules[i].state == StateMatch::Established)
                .collect(),
            packets: vec![0; rules.len()],
            names: (0..rules.len())
                .map(|i| format!("rule{i}_packets"))
                .collect(),
            rules,
        })
    }

    /// The action of the first rule for a new packet (`state = "new"` or
    /// `"any"`), counted; `None` if none matches.
    pub fn for_new(&mut self, ip: &IpView, side: Role) -> Option<Action> {
        self.first(ip, side, Rule::for_new)
    }

    /// What [`Rules::for_new`] would decide, without counting: how a
    /// reconfiguration asks about a connection already tracked.
    pub fn decide_new(&self, ip: &IpView, side: Role) -> Option<Action> {
        self.rules
            .iter()
            .find(|r| r.for_new() && r.matches(ip, side))
            .map(|r| r.action)
    }

    /// Takes over the packet counts of `old`'s rules that stand unchanged
    /// at the same position; the others start at 0.
    pub fn keep_counts(&mut self, old: &Rules) {
        for (i, (new, was)) in self.rules.iter().zip(&old.rules).enumerate() {
            if new == was {
                self.packets[i] = old.packets[i];
            }
        }
    }

    /// The action of the first `state = "any"` rule for an invalid packet.
    pub fn for_invalid(&mut self, ip: &IpView, side: Role) -> Option<Action> {
        self.first(ip, side, |r| !r.fragments && r.state == StateMatch::Any)
    }

    /// The action of the first `fragments = true` rule for a non-first
    /// fragment.
    pub fn for_fragment(&mut self, ip: &IpView, side: Role) -> Option<Action> {
        self.first(ip, side, |r| r.fragments)
    }

    /// The action of the first `state = "established"` rule for a packet
    /// of a tracked connection.
    #[inline]
    pub fn for_established(&mut self, ip: &IpView, side: Role) -> Option<Action> {
        if self.established.is_empty() {
            return None;
        }
        let i = *self
            .established
            .iter()
            .find(|&&i| self.rules[i].matches(ip, side))?;
        self.packets[i] += 1;
        Some(self.rules[i].action)
    }

    fn first(
        &mut self,
        ip: &IpView,
        side: Role,
        applies: impl Fn(&Rule) -> bool,
    ) -> Option<Action> {
        let i = self
            .rules
            .iter()
            .position(|r| applies(r) && r.matches(ip, side))?;
        self.packets[i] += 1;
        Some(self.rules[i].action)
    }

    /// Packets that rule `i` decided.
    pub fn packets(&self, i: usize) -> u64 {
        self.packets.get(i).copied().unwrap_or(0)
    }

    /// Visits `rule{i}_packets` for every rule.
    pub fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        for (name, &n) in self.names.iter().zip(&self.packets) {
            visit(name, n);
        }
    }
}
