//! The condition evaluator: the sampled history of each series, the
//! windowed aggregates over it, and the walk of a [`Condition`] that
//! records what it saw. Apart from the parser, as it runs every tick.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use super::{Aggregate, Condition, Operand, Series};
use crate::functions::socket::manager::policy::Metrics;

/// Samples of one series, oldest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    /// How far back samples are needed (the longest window over it).
    pub window_ms: u64,
    pub samples: VecDeque<(u64, f64)>,
}

/// Hard cap on samples per series, whatever the tick rate.
pub(crate) const MAX_SAMPLES: usize = 4096;

impl History {
    /// Records a sample and drops those no window can reach any more:
    /// all older than the window but the newest of them, which serves as
    /// the baseline of `rate` and `delta`.
    pub fn push(&mut self, now_ms: u64, v: f64) {
        // A clock that went back makes the newer samples meaningless.
        while self.samples.back().is_some_and(|s| s.0 >= now_ms) {
            self.samples.pop_back();
        }
        self.samples.push_back((now_ms, v));
        self.prune(now_ms);
    }

    pub fn prune(&mut self, now_ms: u64) {
        let start = now_ms.saturating_sub(self.window_ms);
        while self.samples.len() >= 2 && self.samples[1].0 <= start {
            self.samples.pop_front();
        }
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// The value sampled at exactly `now_ms`.
    fn latest(&self, now_ms: u64) -> Option<f64> {
        self.samples.back().filter(|s| s.0 == now_ms).map(|s| s.1)
    }

    fn window(&self, func: Aggregate, now_ms: u64, window_ms: u64) -> Option<f64> {
        let start = now_ms.saturating_sub(window_ms);
        let inside = self
            .samples
            .iter()
            .filter(|s| s.0 >= start && s.0 <= now_ms);
        let v = match func {
            Aggregate::Rate | Aggregate::Delta => {
                // The newest sample before the window is the baseline, so a
                // window as long as the tick period still sees an increase.
                let first = self.samples.iter().rposition(|s| s.0 < start).unwrap_or(0);
                let run: Vec<_> = self
                    .samples
                    .iter()
                    .skip(first)
                    .filter(|s| s.0 <= now_ms)
                    .collect();
                let (a, b) = (run.first()?, run.last()?);
                if b.0 <= a.0 {
                    return None;
                }
                let increase: f64 = run
                    .windows(2)
                    .map(|w| {
                        // A counter that went down restarted from zero.
                        if w[1].1 >= w[0].1 {
                            w[1].1 - w[0].1
                        } else {
                            w[1].1
                        }
                    })
                    .sum();
                let rate = increase * 1000.0 / (b.0 - a.0) as f64;
                if func == Aggregate::Rate {
                    rate
                } else {
                    // Scaled to the window, as the samples may span more
                    // (the baseline) or less of it.
                    rate * window_ms as f64 / 1000.0
                }
            }
            Aggregate::Avg => {
                let (n, sum) = inside.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x.1));
                if n == 0 {
                    return None;
                }
                sum / n as f64
            }
            Aggregate::Max => inside.map(|s| s.1).reduce(f64::max)?,
            Aggregate::Min => inside.map(|s| s.1).reduce(f64::min)?,
        };
        v.is_finite().then_some(v)
    }
}

/// What an evaluation saw: each leaf with its values, and the series that
/// had no data.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trace {
    pub values: Vec<String>,
    pub missing: Vec<String>,
}

pub(crate) struct Env<'a> {
    pub now_ms: u64,
    pub histories: &'a BTreeMap<Series, History>,
    pub metrics: &'a dyn Metrics,
}

impl Env<'_> {
    fn operand(&self, o: &Operand, trace: &mut Trace) -> Option<f64> {
        let (series, v) = match o {
            Operand::Number(n) => return Some(*n),
            Operand::Latest(s) => (s, self.histories.get(s)?.latest(self.now_ms)),
            Operand::Window {
                func,
                series,
                window_ms,
            } => (
                series,
                self.histories
                    .get(series)?
                    .window(*func, self.now_ms, *window_ms),
            ),
        };
        if v.is_none() {
            let name = series.to_string();
            if !trace.missing.contains(&name) {
                trace.missing.push(name);
            }
        }
        v
    }
}

impl Condition {
    /// Evaluates every leaf (no short cut, so the trace is complete).
    pub(crate) fn eval(&self, env: &Env<'_>, trace: &mut Trace) -> bool {
        match self {
            Condition::Or(v) => v.iter().fold(false, |acc, c| c.eval(env, trace) | acc),
            Condition::And(v) => v.iter().fold(true, |acc, c| c.eval(env, trace) & acc),
            Condition::Not(c) => !c.eval(env, trace),
            Condition::Compare(a, op, b) => {
                let (va, vb) = (env.operand(a, trace), env.operand(b, trace));
                let side = |o: &Operand, v: Option<f64>| match (o, v) {
                    (Operand::Number(_), _) => format!("{o}"),
                    (_, Some(v)) => format!("{o} = {}", Si(v)),
                    (_, None) => format!("{o} = no data"),
                };
                let r = match (va, vb) {
                    (Some(x), Some(y)) => op.test(x, y),
                    _ => false,
                };
                trace
                    .values
                    .push(format!("{} {} {}", side(a, va), op.symbol(), side(b, vb)));
                r
            }
            Condition::Up(d) | Condition::Down(d) => {
                let seen = env.metrics.up(d);
                let r = match self {
                    Condition::Up(_) => seen == Some(true),
                    _ => seen != Some(true),
                };
                trace.values.push(format!("{self} = {r}"));
                r
            }
            Condition::Between(a, b) => {
                let m = ((env.now_ms / 60_000) % 1440) as u16;
                let r = if a < b {
                    *a <= m && m < *b
                } else {
                    m >= *a || m < *b
                };
                trace.values.push(format!(
                    "{self} = {r} (now {:02}:{:02} UTC)",
                    m / 60,
                    m % 60
                ));
                r
            }
        }
    }
}

/// A value with a decimal multiplier and at most two decimals: `7.31M`.
pub(crate) struct Si(pub f64);

impl fmt::Display for Si {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        let (d, s) = match v.abs() {
            a if a >= 1e12 => (1e12, "T"),
            a if a >= 1e9 => (1e9, "G"),
            a if a >= 1e6 => (1e6, "M"),
            a if a >= 1e3 => (1e3, "k"),
            _ => (1.0, ""),
        };
        let t = format!("{:.2}", v / d);
        let t = if t.contains('.') {
            t.trim_end_matches('0').trim_end_matches('.')
        } else {
            &t
        };
        write!(f, "{t}{s}")
    }
}
