//! The engine: samples the series a policy reads, runs each rule's state
//! machine, and keeps a bounded log of its decisions.
//!
//! Per rule: `idle` →(when holds)→ `pending` →(held `for`)→ fire →
//! `active` →(clear holds)→ `clearing` →(held `clear_for`)→ revert →
//! `idle`; a condition that stops holding while pending or clearing goes
//! back. A transition waits until `cooldown` has passed since the rule's
//! previous one; the wait is logged as one `suppressed` decision per
//! cooldown, not one per tick.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use super::expr::{Env, History, Series, Trace};
use super::{Action, Metrics, Policy, Rule};

/// How many decisions the log keeps.
pub const DECISION_LOG_LEN: usize = 256;

/// Where a rule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleState {
    /// Not fired; waiting for `when`.
    #[default]
    Idle,
    /// `when` holds; waiting for `for` (or the cooldown).
    Pending,
    /// Fired; waiting for the clear condition.
    Active,
    /// The clear condition holds; waiting for `clear_for` (or the cooldown).
    Clearing,
}

/// What a decision was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transition {
    /// The rule fired: its `then` actions.
    Fire,
    /// The rule cleared: its `revert` actions.
    Revert,
    /// A fire or revert was due but held back by the cooldown.
    Suppressed,
}

/// One decision of the engine, with why it was taken.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    /// Increasing from 1; [`Planned::decision`] refers to it.
    pub id: u64,
    /// When (the `now_ms` of the tick).
    pub at_ms: u64,
    /// The rule.
    pub rule: String,
    /// What happened.
    pub transition: Transition,
    /// Dry run: the actions were logged, not planned.
    pub dry_run: bool,
    /// The condition's leaves with the values seen, e.g.
    /// `rate(edge:global.rx_bytes, 2s) = 7.31M > 5000000`.
    pub why: String,
    /// The actions (planned, or held back / not planned).
    pub actions: Vec<String>,
    /// Outcomes reported with [`Engine::settle`], in report order.
    pub results: Vec<Result<String, String>>,
}

/// An action to execute now, for a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The decision to [`Engine::settle`] the outcome against.
    pub decision: u64,
    /// The rule.
    pub rule: String,
    /// What to do.
    pub action: Action,
}

/// A rule's state for the manager's API.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RuleStatus {
    /// The rule.
    pub name: String,
    /// Where it stands.
    pub state: RuleState,
    /// Since when (`None`: since the engine started).
    pub since_ms: Option<u64>,
    /// When it last fired or reverted.
    pub last_transition_ms: Option<u64>,
    /// Times fired (dry runs included).
    pub fired: u64,
    /// Times reverted (dry runs included).
    pub reverted: u64,
    /// Times a transition was held back by the cooldown.
    pub suppressed: u64,
    /// The last evaluated condition's leaves with their values.
    pub values: Vec<String>,
    /// Series that had no data at the last evaluation.
    pub missing: Vec<String>,
}

/// The engine's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct EngineCounters {
    /// Calls of [`Engine::tick`].
    pub ticks: u64,
    /// Rules fired.
    pub fired: u64,
    /// Rules reverted.
    pub reverted: u64,
    /// Transitions held back by a cooldown (once per cooldown).
    pub suppressed_by_cooldown: u64,
    /// Actions settled `Ok`.
    pub actions_ok: u64,
    /// Actions settled `Err`.
    pub actions_failed: u64,
}

#[derive(Debug, Clone, Default)]
struct RuleRun {
    state: RuleState,
    since_ms: Option<u64>,
    last_transition_ms: Option<u64>,
    /// A suppressed decision was logged since the last transition.
    suppression_logged: bool,
    fired: u64,
    reverted: u64,
    suppressed: u64,
    trace: Trace,
}

impl RuleRun {
    fn enter(&mut self, state: RuleState, now_ms: u64) {
        self.state = state;
        self.since_ms = Some(now_ms);
    }
}

/// Runs a [`Policy`] on metrics passed in with the time.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    runs: Vec<RuleRun>,
    histories: BTreeMap<Series, History>,
    policy_dry_run: bool,
    forced_dry_run: bool,
    decisions: VecDeque<Decision>,
    next_id: u64,
    counters: EngineCounters,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Engine {
    /// An engine for `policy`, every rule idle.
    pub fn new(policy: Policy) -> Engine {
        let mut e = Engine {
            rules: Vec::new(),
            runs: Vec::new(),
            histories: BTreeMap::new(),
            policy_dry_run: false,
            forced_dry_run: false,
            decisions: VecDeque::new(),
            next_id: 1,
            counters: EngineCounters::default(),
        };
        e.replace(policy);
        e
    }

    /// Forces dry run on (or leaves it to the policy when off).
    pub fn set_dry_run(&mut self, on: bool) {
        self.forced_dry_run = on;
    }

    /// Whether decisions are only logged: forced, or the policy says so.
    pub fn dry_run(&self) -> bool {
        self.forced_dry_run || self.policy_dry_run
    }

    /// Takes a reloaded policy. Rules with the same name keep their state,
    /// counts and the history of the series still read; removed rules go
    /// without running their `revert`.
    pub fn replace(&mut self, policy: Policy) {
        let mut old: HashMap<String, RuleRun> = self
            .rules
            .drain(..)
            .map(|r| r.name)
            .zip(self.runs.drain(..))
            .collect();
        self.runs = policy
            .rules
            .iter()
            .map(|r| old.remove(&r.name).unwrap_or_default())
            .collect();
        let mut windows: BTreeMap<Series, u64> = BTreeMap::new();
        for r in &policy.rules {
            for c in std::iter::once(&r.when).chain(r.clear.as_ref()) {
                for (s, w) in c.series() {
                    let e = windows.entry(s).or_insert(0);
                    *e = (*e).max(w);
                }
            }
        }
        let mut old_hist = std::mem::take(&mut self.histories);
        self.histories = windows
            .into_iter()
            .map(|(s, window_ms)| {
                let mut h = old_hist.remove(&s).unwrap_or_default();
                h.window_ms = window_ms;
                (s, h)
            })
            .collect();
        self.rules = policy.rules;
        self.policy_dry_run = policy.dry_run;
    }

    /// Samples every series the rules read, evaluates the rules and
    /// returns the actions to execute now (none in dry run, where the
    /// decisions are only logged). `now_ms` is unix time in ms (UTC), which
    /// `between` reads the time of day from.
    pub fn tick(&mut self, now_ms: u64, metrics: &dyn Metrics) -> Vec<Planned> {
        self.counters.ticks += 1;
        for (s, h) in self.histories.iter_mut() {
            match metrics.get(&s.source, &s.name) {
                Some(v) if v.is_finite() => h.push(now_ms, v),
                _ => h.prune(now_ms),
            }
        }
        let dry = self.dry_run();
        let mut planned = Vec::new();
        let env = Env {
            now_ms,
            histories: &self.histories,
            metrics,
        };
        for (rule, run) in self.rules.iter().zip(self.runs.iter_mut()) {
            let mut trace = Trace::default();
            let clearing_side = matches!(run.state, RuleState::Active | RuleState::Clearing);
            let holds = match (&rule.clear, clearing_side) {
                (_, false) => rule.when.eval(&env, &mut trace),
                (Some(c), true) => c.eval(&env, &mut trace),
                (None, true) => !rule.when.eval(&env, &mut trace),
            };
            match (run.state, holds) {
                (RuleState::Idle, true) => run.enter(RuleState::Pending, now_ms),
                (RuleState::Pending, false) => run.enter(RuleState::Idle, now_ms),
                (RuleState::Active, true) => run.enter(RuleState::Clearing, now_ms),
                (RuleState::Clearing, false) => run.enter(RuleState::Active, now_ms),
                _ => {}
            }
            let why = trace.values.join("; ");
            run.trace = trace;
            let (hold, fire) = match run.state {
                RuleState::Pending => (rule.hold, true),
                RuleState::Clearing => (rule.clear_hold, false),
                _ => continue,
            };
            let since = run.since_ms.unwrap_or(now_ms);
            if now_ms.saturating_sub(since) < ms(hold) {
                continue;
            }
            let actions = if fire { &rule.then } else { &rule.revert };
            let described: Vec<String> = actions.iter().map(ToString::to_string).collect();
            let waited = run
                .last_transition_ms
                .map(|t| now_ms.saturating_sub(t))
                .unwrap_or(u64::MAX);
            let id = self.next_id;
            let (transition, why) = if waited < ms(rule.cooldown) {
                if run.suppression_logged {
                    continue;
                }
                run.suppression_logged = true;
                run.suppressed += 1;
                self.counters.suppressed_by_cooldown += 1;
                self.next_id += 1;
                let why = format!(
                    "cooldown: {}ms of {}ms since the last transition; {why}",
                    waited,
                    ms(rule.cooldown)
                );
                log::info!(
                    "policy: rule {}: {} held back, {why}",
                    rule.name,
                    if fire { "fire" } else { "revert" }
                );
                (Transition::Suppressed, why)
            } else {
                self.next_id += 1;
                run.last_transition_ms = Some(now_ms);
                run.suppression_logged = false;
                let transition = if fire {
                    run.fired += 1;
                    self.counters.fired += 1;
                    run.enter(RuleState::Active, now_ms);
                    Transition::Fire
                } else {
                    run.reverted += 1;
                    self.counters.reverted += 1;
                    run.enter(RuleState::Idle, now_ms);
                    Transition::Revert
                };
                let verb = if fire { "fires" } else { "reverts" };
                if dry {
                    log::info!(
                        "policy: dry-run: rule {} {verb} ({why}): would {described:?}",
                        rule.name
                    );
                } else {
                    log::info!("policy: rule {} {verb} ({why}): {described:?}", rule.name);
                    planned.extend(actions.iter().map(|a| Planned {
                        decision: id,
                        rule: rule.name.clone(),
                        action: a.clone(),
                    }));
                }
                (transition, why)
            };
            push(
                &mut self.decisions,
                Decision {
                    id,
                    at_ms: now_ms,
                    rule: rule.name.clone(),
                    transition,
                    dry_run: dry,
                    why,
                    actions: described,
                    results: Vec::new(),
                },
            );
        }
        planned
    }

    /// Reports the outcome of one planned action of `decision`, in the
    /// order they were planned. Outcomes of decisions gone from the log, or
    /// beyond the decision's actions, are only counted.
    pub fn settle(&mut self, decision: u64, result: Result<String, String>) {
        match &result {
            Ok(_) => self.counters.actions_ok += 1,
            Err(e) => {
                self.counters.actions_failed += 1;
                log::warn!("policy: decision {decision}: action failed: {e}");
            }
        }
        if let Some(d) = self.decisions.iter_mut().rev().find(|d| d.id == decision)
            && d.results.len() < d.actions.len()
        {
            d.results.push(result);
        }
    }

    /// The last [`DECISION_LOG_LEN`] decisions, oldest first.
    pub fn decisions(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter()
    }

    /// Every rule's state, in policy order.
    pub fn status(&self) -> Vec<RuleStatus> {
        self.rules
            .iter()
            .zip(&self.runs)
            .map(|(r, run)| RuleStatus {
                name: r.name.clone(),
                state: run.state,
                since_ms: run.since_ms,
                last_transition_ms: run.last_transition_ms,
                fired: run.fired,
                reverted: run.reverted,
                suppressed: run.suppressed,
                values: run.trace.values.clone(),
                missing: run.trace.missing.clone(),
            })
            .collect()
    }

    /// The engine's counters.
    pub fn counters(&self) -> EngineCounters {
        self.counters
    }

    /// Samples kept for `source:name` (for tests and the API).
    pub fn samples_kept(&self, source: &str, name: &str) -> usize {
        let s = Series {
            source: source.to_string(),
            name: name.to_string(),
        };
        self.histories.get(&s).map_or(0, |h| h.samples.len())
    }
}

fn push(log: &mut VecDeque<Decision>, d: Decision) {
    if log.len() >= DECISION_LOG_LEN {
        log.pop_front();
    }
    log.push_back(d);
}
