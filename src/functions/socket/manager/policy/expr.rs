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

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use super::Metrics;

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

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A run of word characters: number, duration, series, keyword, name.
    Word(String),
    /// A double-quoted string, unescaped.
    Str(String),
    LParen,
    RParen,
    Comma,
    Op(CmpOp),
    End,
}

fn is_word_char(c: char) -> bool {
    is_name_char(c) || c == ':'
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, ExprError> {
    let err = |at: usize, message: &str| ExprError {
        column: column(src, at),
        message: message.to_string(),
    };
    let mut out = Vec::new();
    let mut it = src.char_indices().peekable();
    while let Some(&(at, c)) = it.peek() {
        if c.is_whitespace() {
            it.next();
            continue;
        }
        let tok = match c {
            '(' => {
                it.next();
                Tok::LParen
            }
            ')' => {
                it.next();
                Tok::RParen
            }
            ',' => {
                it.next();
                Tok::Comma
            }
            '>' | '<' | '=' | '!' => {
                it.next();
                let eq = it.next_if(|&(_, c)| c == '=').is_some();
                Tok::Op(match (c, eq) {
                    ('>', false) => CmpOp::Gt,
                    ('>', true) => CmpOp::Ge,
                    ('<', false) => CmpOp::Lt,
                    ('<', true) => CmpOp::Le,
                    ('=', true) => CmpOp::Eq,
                    ('!', true) => CmpOp::Ne,
                    ('=', false) => return Err(err(at, "`=` is not an operator; use `==`")),
                    _ => return Err(err(at, "`!` is not an operator; use `!=` or `not`")),
                })
            }
            '"' => {
                it.next();
                let mut s = String::new();
                loop {
                    match it.next() {
                        None => return Err(err(at, "unterminated string")),
                        Some((_, '"')) => break,
                        Some((e, '\\')) => match it.next() {
                            Some((_, c @ ('"' | '\\'))) => s.push(c),
                            _ => return Err(err(e, "only \\\" and \\\\ are escapes")),
                        },
                        Some((_, c)) => s.push(c),
                    }
                }
                Tok::Str(s)
            }
            c if is_word_char(c) => {
                let mut end = at;
                while let Some((i, c)) = it.next_if(|&(_, c)| is_word_char(c)) {
                    end = i + c.len_utf8();
                }
                Tok::Word(src[at..end].to_string())
            }
            _ => return Err(err(at, &format!("unexpected character {c:?}"))),
        };
        out.push((at, tok));
    }
    out.push((src.len(), Tok::End));
    Ok(out)
}

/// The 1-based character column of byte offset `at`.
fn column(src: &str, at: usize) -> usize {
    src.get(..at).map_or(1, |s| s.chars().count() + 1)
}

// ---------------------------------------------------------------- parser

/// Parses a condition (`when` or `clear` of a rule).
pub fn parse_condition(src: &str) -> Result<Condition, ExprError> {
    if src.len() > MAX_CONDITION_LEN {
        return Err(ExprError {
            column: 1,
            message: format!("longer than {MAX_CONDITION_LEN} bytes"),
        });
    }
    let toks = lex(src)?;
    let mut p = Parser {
        src,
        toks,
        at: 0,
        depth: 0,
    };
    let c = p.expr()?;
    match p.peek() {
        Tok::End => Ok(c),
        _ => Err(p.error("expected `and`, `or` or the end")),
    }
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<(usize, Tok)>,
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        // The lexer always ends the list with End, and `next` never moves
        // past it.
        self.toks.get(self.at).map_or(&Tok::End, |t| &t.1)
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if t != Tok::End {
            self.at += 1;
        }
        t
    }

    fn error(&self, message: &str) -> ExprError {
        let at = self.toks.get(self.at).map_or(self.src.len(), |t| t.0);
        ExprError {
            column: column(self.src, at),
            message: message.to_string(),
        }
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Tok::Word(x) if x == w)
    }

    fn expect(&mut self, t: Tok, what: &str) -> Result<(), ExprError> {
        if *self.peek() == t {
            self.next();
            Ok(())
        } else {
            Err(self.error(&format!("expected {what}")))
        }
    }

    fn expr(&mut self) -> Result<Condition, ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(&format!("nested deeper than {MAX_DEPTH}")));
        }
        let r = self.or();
        self.depth -= 1;
        r
    }

    fn or(&mut self) -> Result<Condition, ExprError> {
        self.joined("or", Self::and, Condition::Or)
    }

    fn and(&mut self) -> Result<Condition, ExprError> {
        self.joined("and", Self::unary, Condition::And)
    }

    /// One or more `operand`s joined by the word `op`: the one alone, or
    /// `join` of them all.
    fn joined(
        &mut self,
        op: &str,
        operand: fn(&mut Self) -> Result<Condition, ExprError>,
        join: fn(Vec<Condition>) -> Condition,
    ) -> Result<Condition, ExprError> {
        let mut v = vec![operand(self)?];
        while self.is_word(op) {
            self.next();
            v.push(operand(self)?);
        }
        Ok(if v.len() == 1 { v.remove(0) } else { join(v) })
    }

    fn unary(&mut self) -> Result<Condition, ExprError> {
        if self.is_word("not") {
            self.next();
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.error(&format!("nested deeper than {MAX_DEPTH}")));
            }
            let r = self.unary();
            self.depth -= 1;
            return Ok(Condition::Not(Box::new(r?)));
        }
        if *self.peek() == Tok::LParen {
            self.next();
            let c = self.expr()?;
            self.expect(Tok::RParen, "`)`")?;
            return Ok(c);
        }
        for (word, up) in [("up", true), ("down", false)] {
            if self.is_word(word) {
                self.next();
                self.expect(Tok::LParen, "`(`")?;
                let d = match self.peek() {
                    Tok::Word(w) if w.chars().all(is_source_char) => w.clone(),
                    Tok::Str(s) if !s.is_empty() => s.clone(),
                    _ => return Err(self.error("expected a device name")),
                };
                self.next();
                self.expect(Tok::RParen, "`)`")?;
                return Ok(if up {
                    Condition::Up(d)
                } else {
                    Condition::Down(d)
                });
            }
        }
        if self.is_word("between") {
            self.next();
            let (a, b) = self.two_args(Self::time_of_day, Self::time_of_day)?;
            if a == b {
                return Err(self.error("`between` needs two different times"));
            }
            return Ok(Condition::Between(a, b));
        }
        let left = self.operand()?;
        let op = match self.peek() {
            Tok::Op(op) => *op,
            _ => return Err(self.error("expected a comparison (> >= < <= == !=)")),
        };
        self.next();
        let right = self.operand()?;
        Ok(Condition::Compare(left, op, right))
    }

    /// A function's arguments after its name: `(first, second)`.
    fn two_args<A, B>(
        &mut self,
        first: fn(&mut Self) -> Result<A, ExprError>,
        second: fn(&mut Self) -> Result<B, ExprError>,
    ) -> Result<(A, B), ExprError> {
        self.expect(Tok::LParen, "`(`")?;
        let a = first(self)?;
        self.expect(Tok::Comma, "`,`")?;
        let b = second(self)?;
        self.expect(Tok::RParen, "`)`")?;
        Ok((a, b))
    }

    fn time_of_day(&mut self) -> Result<u16, ExprError> {
        if let Tok::Str(s) = self.peek() {
            let parsed = s.split_once(':').and_then(|(h, m)| {
                let ok = |x: &str| x.len() == 2 && x.bytes().all(|b| b.is_ascii_digit());
                if !ok(h) || !ok(m) {
                    return None;
                }
                let (h, m) = (h.parse::<u16>().ok()?, m.parse::<u16>().ok()?);
                (h < 24 && m < 60).then_some(h * 60 + m)
            });
            if let Some(t) = parsed {
                self.next();
                return Ok(t);
            }
        }
        Err(self.error("expected a time of day such as \"08:00\""))
    }

    fn operand(&mut self) -> Result<Operand, ExprError> {
        let expected = "expected a number or a series";
        let Tok::Word(w) = self.peek().clone() else {
            return Err(self.error(expected));
        };
        let func = match w.as_str() {
            "rate" => Some(Aggregate::Rate),
            "delta" => Some(Aggregate::Delta),
            "avg" => Some(Aggregate::Avg),
            "max" => Some(Aggregate::Max),
            "min" => Some(Aggregate::Min),
            _ => None,
        };
        if let Some(func) = func {
            self.next();
            let (series, window_ms) = self.two_args(Self::series, Self::window)?;
            return Ok(Operand::Window {
                func,
                series,
                window_ms,
            });
        }
        if w == "series" || w.contains(':') {
            return Ok(Operand::Latest(self.series()?));
        }
        if w.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
            let n = parse_number(&w).map_err(|m| self.error(&m))?;
            self.next();
            return Ok(Operand::Number(n));
        }
        Err(self.error(expected))
    }

    fn series(&mut self) -> Result<Series, ExprError> {
        match self.peek().clone() {
            Tok::Word(w) if w == "series" => {
                self.next();
                self.expect(Tok::LParen, "`(`")?;
                let source = self.string("a quoted source")?;
                self.expect(Tok::Comma, "`,`")?;
                let name = self.string("a quoted name")?;
                self.expect(Tok::RParen, "`)`")?;
                Ok(Series { source, name })
            }
            Tok::Word(w) => {
                let ok = w.split_once(':').filter(|(s, n)| {
                    !s.is_empty()
                        && !n.is_empty()
                        && s.chars().all(is_source_char)
                        && n.chars().all(is_name_char)
                });
                match ok {
                    Some((s, n)) => {
                        let series = Series {
                            source: s.to_string(),
                            name: n.to_string(),
                        };
                        self.next();
                        Ok(series)
                    }
                    None => Err(self.error("expected a series SOURCE:NAME")),
                }
            }
            _ => Err(self.error("expected a series SOURCE:NAME")),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, ExprError> {
        match self.peek().clone() {
            Tok::Str(s) if !s.is_empty() => {
                self.next();
                Ok(s)
            }
            _ => Err(self.error(&format!("expected {what}"))),
        }
    }

    fn window(&mut self) -> Result<u64, ExprError> {
        let expected = "expected a window such as 2s (units ms, s, m, h)";
        let ms = match self.peek() {
            Tok::Word(w) => parse_duration_ms(w).ok_or_else(|| self.error(expected))?,
            _ => return Err(self.error(expected)),
        };
        if ms == 0 || ms > MAX_WINDOW_MS {
            return Err(self.error("a window must be longer than 0 and at most 24h"));
        }
        self.next();
        Ok(ms)
    }
}

/// `5`, `1.5`, `-2`, `5M`, `10Ki`: a finite number with an optional
/// decimal (k M G T) or binary (Ki Mi Gi Ti) multiplier.
fn parse_number(w: &str) -> Result<f64, String> {
    let digits = w.strip_prefix('-').unwrap_or(w);
    let split = digits
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(digits.len());
    let (num, suffix) = digits.split_at(split);
    let well_formed = match num.split_once('.') {
        Some((i, f)) => !i.is_empty() && !f.is_empty() && !f.contains('.'),
        None => !num.is_empty(),
    };
    if !well_formed {
        return Err(format!("`{w}` is not a number"));
    }
    let mult = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("unknown suffix `{suffix}` (k M G T Ki Mi Gi Ti)")),
    };
    let n: f64 = num.parse().map_err(|_| format!("`{w}` is not a number"))?;
    let n = if w.starts_with('-') { -n } else { n } * mult;
    if n.is_finite() {
        Ok(n)
    } else {
        Err(format!("`{w}` is out of range"))
    }
}

/// `500ms`, `2s`, `5m`, `1h` in milliseconds; `None` when malformed or
/// beyond `u64` milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let at = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(at);
    if n.is_empty() {
        return None;
    }
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
}

// ---------------------------------------------------------------- evaluation

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
