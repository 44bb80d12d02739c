//! The condition parser: a lexer and a recursive-descent parser that turn
//! the text of `when` and `clear` into a [`Condition`], with the column of
//! whatever does not parse. Kept apart from the tree and its evaluator so
//! each reads on its own.

use super::{
    Aggregate, CmpOp, Condition, ExprError, MAX_CONDITION_LEN, MAX_DEPTH, MAX_WINDOW_MS, Operand,
    Series, is_name_char, is_source_char,
};

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
