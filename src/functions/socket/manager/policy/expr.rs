//! Conditions: the small expression language of `when` and `clear`, a
//! hand-written recursive-descent parser with positions in its errors, and
//! the evaluator over sampled series.
//!
//! ```text
//! expr  := or
//! or    := and ("or" and)*
//! and   := unary ("and" unary)*
//! unary := "not" unary | "(" expr ")" | value OP value | predicate
//! OP    := > | >= | < | <= | == | !=
//! value := NUMBER | SERIES | FUNC "(" SERIES "," DURATION ")"
//! FUNC  := rate | delta | avg | max | min
//! SERIES := SOURCE ":" NAME | series("SOURCE", "NAME")
//! predicate := up(DEVICE) | down(DEVICE) | between("HH:MM", "HH:MM")
//! ```
//!
//! ```
//! use shmnet::functions::socket::manager::policy::parse_condition;
//! let c = parse_condition("rate(edge:global.rx_bytes, 2s) > 5M and not down(edge)").unwrap();
//! assert_eq!(c.to_string(), "rate(edge:global.rx_bytes, 2s) > 5000000 and not down(edge)");
//! let e = parse_condition("edge:x > ").unwrap_err();
//! assert_eq!(e.to_string(), "at column 10: expected a number or a series");
//! ```

use std::collections::BTreeMap;
use std::fmt;

mod eval;
mod parse;

#[cfg(test)]
pub(crate) use eval::MAX_SAMPLES;
pub(crate) use eval::{Env, History, Trace};
pub use parse::{parse_condition, parse_duration_ms};

/// How deep `not` and parentheses may nest: a hostile file must not
/// overflow the parser's (or the evaluator's) stack.
pub const MAX_DEPTH: usize = 64;
/// The longest condition accepted, in bytes.
pub const MAX_CONDITION_LEN: usize = 4096;
/// The longest window accepted: histories are kept that long.
pub const MAX_WINDOW_MS: u64 = 24 * 3_600_000;

/// A condition that does not parse: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: {message}")]
pub struct ExprError {
    /// 1-based column, in characters.
    pub column: usize,
    /// What was expected or what is wrong.
    pub message: String,
}

/// A time series: a counter of a device (`edge:global.rx_bytes`), a probe
/// result (`probe:web1.loss`) or one of the manager's own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    /// The device name, `probe` or `manager`.
    pub source: String,
    /// The counter's name.
    pub name: String,
}

fn is_source_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_name_char(c: char) -> bool {
    is_source_char(c) || c == '.' || c == '/'
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = !self.source.is_empty()
            && !self.name.is_empty()
            && self.source.chars().all(is_source_char)
            && self.name.chars().all(is_name_char);
        if plain {
            write!(f, "{}:{}", self.source, self.name)
        } else {
            write!(
                f,
                "series({}, {})",
                Quoted(&self.source),
                Quoted(&self.name)
            )
        }
    }
}

/// A string written back in the syntax the lexer reads.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            if c == '"' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("\"")
    }
}

/// What a function computes over the samples of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Per-second increase; a counter that went down counts from its new value.
    Rate,
    /// Increase over the window (`rate` × window), counter resets handled
    /// as for `rate`.
    Delta,
    /// Mean of the samples.
    Avg,
    /// Largest sample.
    Max,
    /// Smallest sample.
    Min,
}

impl Aggregate {
    fn name(self) -> &'static str {
        match self {
            Aggregate::Rate => "rate",
            Aggregate::Delta => "delta",
            Aggregate::Avg => "avg",
            Aggregate::Max => "max",
            Aggregate::Min => "min",
        }
    }
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A literal (always finite).
    Number(f64),
    /// The series' value sampled at this tick.
    Latest(Series),
    /// A function of the series over the last `window_ms`.
    Window {
        /// What is computed.
        func: Aggregate,
        /// Over which series.
        series: Series,
        /// How far back, in milliseconds (1..=[`MAX_WINDOW_MS`]).
        window_ms: u64,
    },
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // f64's Display never uses an exponent, so this reads back.
            Operand::Number(n) => write!(f, "{n}"),
            Operand::Latest(s) => write!(f, "{s}"),
            Operand::Window {
                func,
                series,
                window_ms,
            } => write!(f, "{}({series}, {})", func.name(), DurationMs(*window_ms)),
        }
    }
}

/// A duration in milliseconds written in the largest unit that is exact.
pub(crate) struct DurationMs(pub u64);

impl fmt::Display for DurationMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms != 0 && ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms != 0 && ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl CmpOp {
    fn symbol(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }

    fn test(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }
}

/// A parsed condition. `Display` writes it back in canonical form (which
/// parses to an equal condition).
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// True when any is (two or more).
    Or(Vec<Condition>),
    /// True when all are (two or more).
    And(Vec<Condition>),
    /// Negation.
    Not(Box<Condition>),
    /// A comparison; false when a side has no data.
    Compare(Operand, CmpOp, Operand),
    /// The device was polled successfully at its last poll.
    Up(String),
    /// The device failed its last poll or was never seen.
    Down(String),
    /// UTC time of day in `[start, end)`, minutes since midnight; wraps
    /// past midnight when `start > end`.
    Between(u16, u16),
}

impl Condition {
    /// Every series the condition reads, with the longest window each is
    /// read over (0 for a latest value).
    pub fn series(&self) -> BTreeMap<Series, u64> {
        let mut out = BTreeMap::new();
        self.collect_series(&mut out);
        out
    }

    fn collect_series(&self, out: &mut BTreeMap<Series, u64>) {
        let mut add = |o: &Operand| match o {
            Operand::Number(_) => {}
            Operand::Latest(s) => {
                out.entry(s.clone()).or_insert(0);
            }
            Operand::Window {
                series, window_ms, ..
            } => {
                let w = out.entry(series.clone()).or_insert(0);
                *w = (*w).max(*window_ms);
            }
        };
        match self {
            Condition::Or(v) | Condition::And(v) => v.iter().for_each(|c| c.collect_series(out)),
            Condition::Not(c) => c.collect_series(out),
            Condition::Compare(a, _, b) => {
                add(a);
                add(b);
            }
            Condition::Up(_) | Condition::Down(_) | Condition::Between(..) => {}
        }
    }

    /// Writes the condition as an operand of `and` or `not`, in
    /// parentheses when it would otherwise read back differently.
    fn fmt_operand(&self, f: &mut fmt::Formatter<'_>, inside_and: bool) -> fmt::Result {
        let wrap = match self {
            Condition::Or(_) => true,
            Condition::And(_) => !inside_and,
            _ => false,
        };
        if wrap {
            write!(f, "({self})")
        } else {
            write!(f, "{self}")
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Or(v) => {
                for (i, c) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" or ")?;
                    }
                    // An `or` operand of `or` keeps its parentheses so the
                    // tree reads back the same.
                    if matches!(c, Condition::Or(_)) {
                        write!(f, "({c})")?;
                    } else {
                        write!(f, "{c}")?;
                    }
                }
                Ok(())
            }
            Condition::And(v) => {
                for (i, c) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" and ")?;
                    }
                    c.fmt_operand(f, false)?;
                }
                Ok(())
            }
            Condition::Not(c) => {
                f.write_str("not ")?;
                c.fmt_operand(f, false)
            }
            Condition::Compare(a, op, b) => write!(f, "{a} {} {b}", op.symbol()),
            Condition::Up(d) => write!(f, "up({})", Device(d)),
            Condition::Down(d) => write!(f, "down({})", Device(d)),
            Condition::Between(a, b) => write!(
                f,
                "between(\"{:02}:{:02}\", \"{:02}:{:02}\")",
                a / 60,
                a % 60,
                b / 60,
                b % 60
            ),
        }
    }
}

/// A device name: bare when it can be, quoted otherwise.
struct Device<'a>(&'a str);

impl fmt::Display for Device<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bare = self.0.chars().next().is_some_and(|c| !c.is_ascii_digit())
            && self.0.chars().all(is_source_char)
            && !KEYWORDS.contains(&self.0);
        if bare {
            f.write_str(self.0)
        } else {
            write!(f, "{}", Quoted(self.0))
        }
    }
}

const KEYWORDS: &[&str] = &["and", "or", "not"];
