//! The policy engine on virtual time: parsing, conditions, the state
//! machine, cooldown, dry run, reload and patches.

use std::collections::HashMap;

use super::*;

/// Metrics set by hand between ticks.
#[derive(Default)]
struct Fake {
    values: HashMap<(String, String), f64>,
    up: HashMap<String, bool>,
}

impl Fake {
    fn set(&mut self, series: &str, v: f64) {
        let (s, n) = series.split_once(':').unwrap();
        self.values.insert((s.to_string(), n.to_string()), v);
    }
    fn unset(&mut self, series: &str) {
        let (s, n) = series.split_once(':').unwrap();
        self.values.remove(&(s.to_string(), n.to_string()));
    }
}

impl Metrics for Fake {
    fn get(&self, source: &str, name: &str) -> Option<f64> {
        self.values
            .get(&(source.to_string(), name.to_string()))
            .copied()
    }
    fn up(&self, device: &str) -> Option<bool> {
        self.up.get(device).copied()
    }
}

fn policy(text: &str) -> Policy {
    Policy::from_toml(text).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> String {
    Policy::from_toml(text).unwrap_err().to_string()
}

/// A rule `r` with the given extra fields and one log action each way.
fn rule(fields: &str) -> Policy {
    policy(&format!(
        "[[rule]]\nname = \"r\"\n{fields}\n[[rule.then]]\nlog = \"on\"\n[[rule.revert]]\nlog = \"off\"\n"
    ))
}

fn eval(cond: &str, now_ms: u64, m: &Fake) -> bool {
    let c = parse_condition(cond).unwrap();
    let mut e = Engine::new(Policy {
        dry_run: false,
        rules: vec![Rule {
            name: "t".into(),
            when: c,
            clear: None,
            hold: Duration::ZERO,
            clear_hold: Duration::ZERO,
            cooldown: Duration::ZERO,
            then: vec![Action::Log("x".into())],
            revert: vec![],
        }],
    });
    !e.tick(now_ms, m).is_empty()
}

// ------------------------------------------------------------ parsing

const FULL: &str = r#"
dry_run = false
[[rule]]
name = "shape-when-busy"
when = "rate(edge:global.rx_bytes, 2s) > 5M"
for = "1s"
clear = "rate(edge:global.rx_bytes, 2s) < 1M"
clear_for = "3s"
cooldown = "10s"
[[rule.then]]
set = { device = "edge", function = { kind = "qos", rate = "10Mbit" } }
[[rule.then]]
log = "edge busy: shaping"
[[rule.then]]
patch = { device = "fw", path = "rules", op = "append", value = { action = "deny", src = "10.0.0.9" } }
[[rule.then]]
capture = { device = "edge", adapter = "global", seconds = 10, file = "/tmp/x.pcap" }
[[rule.revert]]
set = { device = "edge", function = { kind = "passthrough" } }
[[rule.revert]]
patch = { device = "fw", path = "rules.0", op = "remove" }
"#;

#[test]
fn parses_the_documented_policy() {
    let p = policy(FULL);
    let r = &p.rules[0];
    assert_eq!(r.name, "shape-when-busy");
    assert_eq!(r.hold, Duration::from_secs(1));
    assert_eq!(r.clear_hold, Duration::from_secs(3));
    assert_eq!(r.cooldown, Duration::from_secs(10));
    assert_eq!(r.then.len(), 4);
    let Action::SetFunction { device, function } = &r.then[0] else {
        panic!("{:?}", r.then[0])
    };
    assert_eq!(device, "edge");
    let t: toml::Table = toml::from_str(function).unwrap();
    assert_eq!(t["kind"].as_str(), Some("qos"));
    assert_eq!(t["rate"].as_str(), Some("10Mbit"));
    assert!(matches!(
        &r.then[2],
        Action::Patch {
            op: PatchOp::Append,
            value: Some(_),
            ..
        }
    ));
    assert!(matches!(
        &r.then[3],
        Action::Capture(Capture {
            adapter: CaptureAdapter::Global,
            seconds: 10,
            ..
        })
    ));
    assert!(matches!(
        &r.revert[1],
        Action::Patch {
            op: PatchOp::Remove,
            value: None,
            ..
        }
    ));
}

#[test]
fn defaults() {
    let p = rule("when = \"a:b > 1\"\nfor = \"2s\"");
    let r = &p.rules[0];
    assert_eq!(
        r.clear_hold,
        Duration::from_secs(2),
        "clear_for defaults to for"
    );
    assert_eq!(r.cooldown, Duration::from_secs(30));
    assert!(r.clear.is_none());
    let p = rule("when = \"a:b > 1\"");
    assert_eq!(p.rules[0].hold, Duration::ZERO);
    assert!(!p.dry_run);
}

#[test]
fn errors_name_the_rule_and_the_field() {
    assert_eq!(
        err("[[rule]]\nname = \"shape-when-busy\"\nwhen = \"rate(edge:x, 2s) > \""),
        "rule \"shape-when-busy\": field `when`: at column 20: expected a number or a series"
    );
    assert_eq!(
        err("[[rule]]\nname = \"a\"\nwhen = \"a:b > 1\"\n[[rule]]\nwhen = \"a:b > 1\""),
        "rule 2: missing field `name`"
    );
    assert_eq!(
        err(
            "[[rule]]\nname = \"x\"\nwhen = \"a:b > 1\"\n[[rule]]\nname = \"x\"\nwhen = \"a:b > 2\""
        ),
        "rule \"x\": duplicate name"
    );
    assert_eq!(
        err("[[rule]]\nname = \"x\""),
        "rule \"x\": missing field `when`"
    );
    let x = "[[rule]]\nname = \"x\"\nwhen = \"a:b > 1\"";
    for (text, want) in [
        (format!("{x}\nwhne = 1"), "rule \"x\": unknown field `whne`"),
        (
            format!("{x}\nfor = \"5 s\""),
            "rule \"x\": field `for`: bad duration",
        ),
        (
            format!("{x}\ncooldown = \"10\""),
            "rule \"x\": field `cooldown`: bad duration",
        ),
        (
            format!("{x}\nclear_for = 3"),
            "rule \"x\": field `clear_for`: expected a string",
        ),
        (
            x.replace("\"x\"", "\"Bad Name\""),
            "rule \"Bad Name\": field `name`",
        ),
        (
            format!("{x}\nclear = \"a:b >\""),
            "rule \"x\": field `clear`: at column 6",
        ),
    ] {
        let e = err(&text);
        assert!(e.starts_with(want), "{text}: {e}");
    }
    // Unknown top-level field.
    let e = err("rules = []");
    assert!(e.contains("unknown field `rules`"), "{e}");
}

#[test]
fn action_errors_name_the_action() {
    let base = "[[rule]]\nname = \"x\"\nwhen = \"a:b > 1\"\n";
    let e = err(&format!(
        "{base}[[rule.then]]\nlog = \"a\"\nset = {{ device = \"d\", function = {{}} }}"
    ));
    assert!(
        e.starts_with("rule \"x\": field `then`: action 1: needs exactly one of"),
        "{e}"
    );
    let e = err(&format!("{base}[[rule.then]]\nlog = \"a\"\n[[rule.then]]"));
    assert!(
        e.starts_with("rule \"x\": field `then`: action 2: needs exactly one"),
        "{e}"
    );
    assert!(e.ends_with("(found none)"), "{e}");
    let e = err(&format!(
        "{base}[[rule.revert]]\nset = {{ function = {{ kind = \"x\" }} }}"
    ));
    assert!(
        e.starts_with("rule \"x\": field `revert`: action 1: `set`: missing field `device`"),
        "{e}"
    );
    for (action, want) in [
        (
            "patch = { device = \"d\", path = \"a..b\", value = 1 }",
            "empty segment",
        ),
        (
            "patch = { device = \"d\", path = \"a\", op = \"append\" }",
            "needs a `value`",
        ),
        (
            "patch = { device = \"d\", path = \"a\", op = \"frob\", value = 1 }",
            "`patch`: unknown variant `frob`",
        ),
        (
            "capture = { device = \"d\", adapter = \"side\", seconds = 1, file = \"f\" }",
            "`capture`: unknown variant `side`",
        ),
        (
            "capture = { device = \"d\", adapter = \"local\", seconds = 0, file = \"f\" }",
            "`seconds` 0 must be between",
        ),
        ("reboot = \"now\"", "unknown action `reboot`"),
        (
            "set = { device = \"d\", function = {}, extra = 1 }",
            "unknown field `extra`",
        ),
    ] {
        let e = err(&format!("{base}[[rule.then]]\n{action}"));
        assert!(e.contains(want), "{action}: {e}");
    }
}

#[test]
fn load_names_the_file() {
    let e = Policy::load("/nonexistent/policy.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("policy file /nonexistent/policy.toml: "),
        "{e}"
    );
    let path = std::env::temp_dir().join(format!("shmnet-policy-test-{}.toml", std::process::id()));
    std::fs::write(&path, "[[rule]]\nname = \"x\"").unwrap();
    let e = Policy::load(&path).unwrap_err().to_string();
    std::fs::write(&path, FULL).unwrap();
    let ok = Policy::load(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        e,
        format!(
            "policy file {}: rule \"x\": missing field `when`",
            path.display()
        )
    );
    assert_eq!(ok.unwrap().rules.len(), 1);
}

#[test]
fn a_set_actions_key_files_are_found_beside_the_policy_file() {
    let dir = std::env::temp_dir().join(format!("shmnet-policy-paths-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(
        &path,
        r#"
[[rule]]
name = "rekey"
when = "edge:global.rx_bytes > 1"
[[rule.then]]
set = { device = "edge", function = { kind = "encrypt", outbound = { spi = 4096, key_file = "keys/new.key" } } }
[[rule.revert]]
set = { device = "edge", function = { kind = "encrypt", outbound = { spi = 4097, key_file = "/etc/old.key" } } }
"#,
    )
    .unwrap();
    let loaded = Policy::load(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    let rule = &loaded.unwrap().rules[0];
    let key_file = |a: &Action| match a {
        Action::SetFunction { function, .. } => {
            let t: toml::Value = toml::from_str(function).unwrap();
            t["outbound"]["key_file"].as_str().unwrap().to_string()
        }
        other => panic!("{other:?}"),
    };
    let absolute = std::path::absolute(&dir).unwrap();
    assert_eq!(
        key_file(&rule.then[0]),
        absolute.join("keys/new.key").display().to_string()
    );
    assert_eq!(key_file(&rule.revert[0]), "/etc/old.key");
}

// ------------------------------------------------------------ expressions

#[test]
fn precedence_and_binds_tighter_than_or() {
    let c = parse_condition("a:x > 1 or a:y > 1 and not a:z > 1").unwrap();
    let Condition::Or(v) = &c else {
        panic!("{c:?}")
    };
    assert!(matches!(&v[1], Condition::And(w) if matches!(w[1], Condition::Not(_))));
    let mut m = Fake::default();
    m.set("a:x", 0.0);
    m.set("a:y", 2.0);
    m.set("a:z", 2.0);
    // x false; y true and not z true → false.
    assert!(!eval("a:x > 1 or a:y > 1 and not a:z > 1", 0, &m));
    // Parenthesised differently: (x or y) and not z → false too; with z low true.
    m.set("a:z", 0.0);
    assert!(eval("(a:x > 1 or a:y > 1) and not a:z > 1", 0, &m));
    m.set("a:y", 0.0);
    m.set("a:x", 5.0);
    assert!(eval("a:x > 1 or a:y > 1 and a:z > 1", 0, &m));
    assert!(!eval("(a:x > 1 or a:y > 1) and a:z > 1", 0, &m));
}

#[test]
fn suffixes_and_numbers() {
    let num = |s: &str| match parse_condition(&format!("a:b > {s}")).unwrap() {
        Condition::Compare(_, _, expr::Operand::Number(n)) => n,
        c => panic!("{c:?}"),
    };
    assert_eq!(num("5"), 5.0);
    assert_eq!(num("1.5"), 1.5);
    assert_eq!(num("-2"), -2.0);
    assert_eq!(num("5k"), 5e3);
    assert_eq!(num("5M"), 5e6);
    assert_eq!(num("2G"), 2e9);
    assert_eq!(num("1T"), 1e12);
    assert_eq!(num("1.5Ki"), 1536.0);
    assert_eq!(num("2Mi"), 2.0 * 1024.0 * 1024.0);
    assert_eq!(num("1Gi"), 1024.0 * 1024.0 * 1024.0);
    for bad in ["5x", "1.", ".5", "1.2.3", "5m"] {
        assert!(parse_condition(&format!("a:b > {bad}")).is_err(), "{bad}");
    }
    let big = "9".repeat(400);
    let e = parse_condition(&format!("a:b > {big}")).unwrap_err();
    assert!(e.message.contains("out of range"), "{e}");
}

#[test]
fn series_forms() {
    let c = parse_condition(r#"series("edge 1", "app.\"shop\"") >= 3"#).unwrap();
    let s = c.series();
    let (series, _) = s.iter().next().unwrap();
    assert_eq!(series.source, "edge 1");
    assert_eq!(series.name, "app.\"shop\"");
    // Written back quoted; plain ones bare.
    assert_eq!(c.to_string(), r#"series("edge 1", "app.\"shop\"") >= 3"#);
    let c = parse_condition(r#"series("edge", "function.app.shop.status_5xx") > 0"#).unwrap();
    assert_eq!(c.to_string(), "edge:function.app.shop.status_5xx > 0");
    let mut m = Fake::default();
    m.values.insert(("edge 1".into(), "x y".into()), 4.0);
    assert!(eval(r#"series("edge 1", "x y") == 4"#, 0, &m));
    m.set("probe:web1.loss", 0.5);
    assert!(eval("probe:web1.loss > 0.25", 0, &m));
}

#[test]
fn parse_errors_have_columns() {
    let col = |s: &str| parse_condition(s).unwrap_err().column;
    assert_eq!(col("a:b >"), 6);
    assert_eq!(col("a:b > 1 and"), 12);
    assert_eq!(col("(a:b > 1"), 9);
    assert_eq!(col("a:b = 1"), 5);
    assert_eq!(col("rate(a:b, 0s) > 1"), 11);
    assert_eq!(col("rate(a:b, 2x) > 1"), 11);
    assert_eq!(col("between(\"25:00\", \"01:00\")"), 9);
    assert_eq!(col("nosuch > 1"), 1);
    assert_eq!(col("a:b > 1 a:c"), 9);
    assert_eq!(col("é a:b"), 1);
    assert_eq!(col("a:b > \"x"), 7);
}

#[test]
fn depth_is_limited() {
    let deep = format!("{}a:b > 1{}", "(".repeat(10_000), ")".repeat(10_000));
    let e = parse_condition(&deep).unwrap_err();
    assert!(
        e.message.contains("longer than") || e.message.contains("nested"),
        "{e}"
    );
    let deep = format!("{}a:b > 1{}", "(".repeat(100), ")".repeat(100));
    assert!(
        parse_condition(&deep)
            .unwrap_err()
            .message
            .contains("nested")
    );
    let nots = format!("{}a:b > 1", "not ".repeat(100));
    assert!(
        parse_condition(&nots)
            .unwrap_err()
            .message
            .contains("nested")
    );
    let ok = format!("{}a:b > 1{}", "(".repeat(30), ")".repeat(30));
    assert!(parse_condition(&ok).is_ok());
}

#[test]
fn canonical_form_reads_back() {
    for s in [
        "a:x > 1 or a:y > 1 and not a:z > 1",
        "(a:x > 1 or a:y > 1) and not (a:z > 1 and a:w < 2)",
        "((a:x > 1 or a:y > 1) or a:z > 0) and ((a:x > 1 and a:y > 1) and up(d))",
        "not not down(\"weird dev\") or between(\"22:00\", \"06:30\")",
        "avg(a:b, 1500ms) != max(a:c, 1m) or min(a:d, 2h) <= delta(a:e, 90s)",
        "up(and) and down(\"or\")",
    ] {
        let c = parse_condition(s).unwrap();
        let again = parse_condition(&c.to_string()).unwrap_or_else(|e| panic!("{c}: {e}"));
        assert_eq!(again, c, "{s} → {c}");
    }
}

#[test]
fn rate_over_a_window_with_a_counter_reset() {
    let mut m = Fake::default();
    let p = rule("when = \"rate(e:rx, 2s) > 1k\"\ncooldown = \"0s\"");
    let mut e = Engine::new(p);
    // 500/s for three seconds: below 1k.
    for (t, v) in [(0, 0.0), (1000, 500.0), (2000, 1000.0), (3000, 1500.0)] {
        m.set("e:rx", v);
        assert!(e.tick(t, &m).is_empty());
    }
    let st = &e.status()[0];
    assert_eq!(st.values, vec!["rate(e:rx, 2s) = 500 > 1000".to_string()]);
    // The device restarted: 1500 → 200 counts as 200, not -1300.
    m.set("e:rx", 200.0);
    assert!(e.tick(4000, &m).is_empty());
    assert_eq!(e.status()[0].values[0], "rate(e:rx, 2s) = 350 > 1000"); // (500+200)/2s
    // 3000/s: fires, and the decision says why.
    m.set("e:rx", 3200.0);
    let planned = e.tick(5000, &m);
    assert_eq!(planned.len(), 1);
    let d = e.decisions().last().unwrap();
    assert_eq!(d.transition, Transition::Fire);
    assert_eq!(d.why, "rate(e:rx, 2s) = 1.6k > 1000"); // (200+3000)/2s
    assert_eq!(d.actions, vec!["log: on".to_string()]);
}

#[test]
fn window_functions() {
    let mut m = Fake::default();
    let text = "when = \"delta(e:c, 3s) == 30 and avg(e:g, 3s) == 22.5 and max(e:g, 3s) == 30 and min(e:g, 3s) == 10 and e:g == 30\"";
    let mut e = Engine::new(rule(text));
    let samples = [
        (0, 100.0, 99.0),
        (1000, 110.0, 10.0),
        (2000, 120.0, 20.0),
        (3000, 130.0, 30.0),
    ];
    for (t, c, g) in samples {
        m.set("e:c", c);
        m.set("e:g", g);
        assert!(e.tick(t, &m).is_empty(), "{t}: {:?}", e.status()[0].values);
    }
    // At 3000 the window 0..=3000 still holds the 99.
    assert!(
        e.status()[0]
            .values
            .contains(&"max(e:g, 3s) = 99 == 30".to_string())
    );
    m.set("e:c", 140.0);
    m.set("e:g", 30.0);
    // At 4000 the window is 1000..=4000: g = 10, 20, 30, 30.
    assert_eq!(e.tick(4000, &m).len(), 1, "{:?}", e.status()[0].values);
    let why = &e.decisions().last().unwrap().why;
    assert_eq!(
        why,
        "delta(e:c, 3s) = 30 == 30; avg(e:g, 3s) = 22.5 == 22.5; max(e:g, 3s) = 30 == 30; \
         min(e:g, 3s) = 10 == 10; e:g = 30 == 30"
    );
}

#[test]
fn missing_series_is_false_and_reported() {
    let mut m = Fake::default();
    let p = rule("when = \"rate(e:rx, 2s) > 100 or e:gone < 5\"");
    let mut e = Engine::new(p);
    assert!(e.tick(0, &m).is_empty());
    let st = &e.status()[0];
    assert_eq!(st.missing, vec!["e:rx".to_string(), "e:gone".to_string()]);
    assert_eq!(st.state, RuleState::Idle);
    // `not` of a comparison with no data is true: the comparison is false.
    assert!(eval("not e:gone < 5", 0, &m));
    // One sample is not enough for a rate.
    m.set("e:rx", 10.0);
    e.tick(1000, &m);
    assert_eq!(
        e.status()[0].missing,
        vec!["e:rx".to_string(), "e:gone".to_string()]
    );
    m.set("e:rx", 20.0);
    e.tick(2000, &m);
    assert_eq!(e.status()[0].missing, vec!["e:gone".to_string()]);
    // A latest value is only that of this tick: stale is missing.
    m.set("e:gone", 1.0);
    assert_eq!(e.tick(3000, &m).len(), 1);
    m.unset("e:gone");
    m.set("e:rx", f64::NAN);
    e.tick(4000, &m);
    assert!(e.status()[0].missing.contains(&"e:gone".to_string()));
}

#[test]
fn up_and_down() {
    let mut m = Fake::default();
    assert!(eval("down(edge)", 0, &m), "never seen is down");
    assert!(!eval("up(edge)", 0, &m));
    m.up.insert("edge".into(), true);
    assert!(eval("up(edge) and not down(edge)", 0, &m));
    m.up.insert("edge".into(), false);
    assert!(eval("down(edge)", 0, &m));
}

#[test]
fn between_wraps_past_midnight() {
    let m = Fake::default();
    let at = |h: u64, min: u64| (19_000 * 86_400 + h * 3600 + min * 60) * 1000;
    let day = "between(\"08:00\", \"18:00\")";
    assert!(eval(day, at(8, 0), &m));
    assert!(eval(day, at(17, 59), &m));
    assert!(!eval(day, at(18, 0), &m));
    assert!(!eval(day, at(7, 59), &m));
    let night = "between(\"22:00\", \"06:00\")";
    assert!(eval(night, at(23, 30), &m));
    assert!(eval(night, at(0, 0), &m));
    assert!(eval(night, at(5, 59), &m));
    assert!(!eval(night, at(6, 0), &m));
    assert!(!eval(night, at(12, 0), &m));
    assert!(!eval(night, at(21, 59), &m));
    assert!(parse_condition("between(\"08:00\", \"08:00\")").is_err());
    assert!(parse_condition("between(\"8:00\", \"09:00\")").is_err());
}

// ------------------------------------------------------------ state machine

#[test]
fn for_and_clear_for_with_hysteresis() {
    let mut m = Fake::default();
    let p = rule(
        "when = \"e:load > 80\"\nclear = \"e:load < 20\"\nfor = \"2s\"\nclear_for = \"3s\"\ncooldown = \"0s\"",
    );
    let mut e = Engine::new(p);
    use RuleState::*;
    // (seconds, load, state after each, actions each runs)
    let script: &[(&[u64], f64, RuleState, &[&str])] = &[
        (&[0, 1], 90.0, Pending, &[]),
        // Drops while pending: back to idle, the hold starts over.
        (&[2], 50.0, Idle, &[]),
        (&[3, 4], 90.0, Pending, &[]),
        (&[5], 90.0, Active, &["log: on"]),
        // Between the thresholds: stays active (hysteresis).
        (&[6], 50.0, Active, &[]),
        (&[7, 8], 10.0, Clearing, &[]),
        (&[9], 30.0, Active, &[]),
        (&[10, 12], 10.0, Clearing, &[]),
        (&[13], 10.0, Idle, &["log: off"]),
    ];
    for &(seconds, load, state, actions) in script {
        for &t in seconds {
            m.set("e:load", load);
            let ran: Vec<String> = e
                .tick(t * 1000, &m)
                .iter()
                .map(|p| p.action.to_string())
                .collect();
            assert_eq!(ran, actions, "actions at {t} s");
            assert_eq!(e.status()[0].state, state, "state at {t} s");
        }
    }
    let st = &e.status()[0];
    assert_eq!((st.fired, st.reverted), (1, 1));
    assert_eq!(st.last_transition_ms, Some(13_000));
    let c = e.counters();
    assert_eq!((c.ticks, c.fired, c.reverted), (13, 1, 1));
}

#[test]
fn default_clear_is_not_when() {
    let mut m = Fake::default();
    let mut e = Engine::new(rule("when = \"e:x > 5\"\ncooldown = \"0s\""));
    m.set("e:x", 6.0);
    assert_eq!(e.tick(0, &m).len(), 1);
    m.set("e:x", 5.0);
    let p = e.tick(1000, &m);
    assert_eq!(p[0].action, Action::Log("off".into()));
}

#[test]
fn cooldown_prevents_flapping() {
    let mut m = Fake::default();
    let mut e = Engine::new(rule("when = \"e:x > 5\"\ncooldown = \"10s\""));
    let mut transitions = 0;
    for t in 0..60u64 {
        m.set("e:x", if t % 2 == 0 { 10.0 } else { 0.0 });
        transitions += e.tick(t * 1000, &m).len();
    }
    // Without the cooldown this would be 60 transitions; with it, one per
    // 10 s at most.
    assert!((5..=7).contains(&transitions), "{transitions}");
    let c = e.counters();
    assert_eq!(c.fired + c.reverted, transitions as u64);
    // One suppressed decision per held-back cooldown, not one per tick.
    assert!(c.suppressed_by_cooldown <= transitions as u64, "{c:?}");
    assert!(c.suppressed_by_cooldown >= 1);
    let suppressed: Vec<_> = e
        .decisions()
        .filter(|d| d.transition == Transition::Suppressed)
        .collect();
    assert_eq!(suppressed.len() as u64, c.suppressed_by_cooldown);
    assert!(
        suppressed[0].why.starts_with("cooldown: "),
        "{}",
        suppressed[0].why
    );
    // Fire and revert alternate, at least 10 s apart.
    let taken: Vec<_> = e
        .decisions()
        .filter(|d| d.transition != Transition::Suppressed)
        .collect();
    for w in taken.windows(2) {
        assert_ne!(w[0].transition, w[1].transition);
        assert!(w[1].at_ms - w[0].at_ms >= 10_000);
    }
}

#[test]
fn dry_run_logs_but_plans_nothing() {
    let mut m = Fake::default();
    let mut e = Engine::new(policy(FULL));
    e.set_dry_run(true);
    assert!(e.dry_run());
    m.set("edge:global.rx_bytes", 0.0);
    let mut planned = 0;
    for t in 1..=5u64 {
        m.set("edge:global.rx_bytes", (t * 10_000_000) as f64);
        planned += e.tick(t * 1000, &m).len();
    }
    assert_eq!(planned, 0);
    let d: Vec<_> = e.decisions().collect();
    assert_eq!(d.len(), 1);
    assert!(d[0].dry_run);
    assert_eq!(d[0].transition, Transition::Fire);
    assert_eq!(d[0].actions.len(), 4);
    assert_eq!(e.status()[0].state, RuleState::Active);
    // The policy's own flag works the same.
    let mut p = policy(FULL);
    p.dry_run = true;
    let e = Engine::new(p);
    assert!(e.dry_run());
}

#[test]
fn settle_records_outcomes() {
    let mut m = Fake::default();
    let mut e = Engine::new(policy(FULL));
    let mut planned = Vec::new();
    for t in 0..4u64 {
        m.set("edge:global.rx_bytes", (t * 10_000_000) as f64);
        planned.extend(e.tick(t * 1000, &m));
    }
    assert_eq!(planned.len(), 4);
    let id = planned[0].decision;
    assert!(
        planned
            .iter()
            .all(|p| p.decision == id && p.rule == "shape-when-busy")
    );
    e.settle(id, Ok("set".into()));
    e.settle(id, Err("device unreachable".into()));
    e.settle(999, Ok("unknown".into()));
    let d = e.decisions().find(|d| d.id == id).unwrap();
    assert_eq!(
        d.results,
        vec![Ok("set".to_string()), Err("device unreachable".to_string())]
    );
    let c = e.counters();
    assert_eq!((c.actions_ok, c.actions_failed), (2, 1));
    // Serialisable for the manager's API.
    let json = serde_json::to_string(&d).unwrap();
    assert!(json.contains("\"transition\":\"fire\""), "{json}");
    let json = serde_json::to_string(&e.status()).unwrap();
    assert!(json.contains("\"state\":\"active\""), "{json}");
    serde_json::to_string(&e.counters()).unwrap();
}

#[test]
fn reload_keeps_state_of_same_name_rules() {
    let mut m = Fake::default();
    let two = "[[rule]]\nname = \"keep\"\nwhen = \"e:x > 5\"\ncooldown = \"0s\"\n[[rule.then]]\nlog = \"k\"\n\
               [[rule]]\nname = \"gone\"\nwhen = \"e:y > 5\"\n[[rule.then]]\nlog = \"g\"\n";
    let mut e = Engine::new(policy(two));
    m.set("e:x", 10.0);
    m.set("e:y", 10.0);
    assert_eq!(e.tick(0, &m).len(), 2);
    // Reload: `keep` changes its action and threshold, `gone` goes, `new` comes.
    let next = "[[rule]]\nname = \"new\"\nwhen = \"rate(e:x, 5s) > 100\"\n[[rule.then]]\nlog = \"n\"\n\
                [[rule]]\nname = \"keep\"\nwhen = \"e:x > 7\"\ncooldown = \"0s\"\n[[rule.revert]]\nlog = \"k off\"\n";
    e.replace(policy(next));
    let st = e.status();
    assert_eq!(st.len(), 2);
    assert_eq!((st[0].name.as_str(), st[0].state), ("new", RuleState::Idle));
    assert_eq!(
        (st[1].name.as_str(), st[1].state, st[1].fired),
        ("keep", RuleState::Active, 1)
    );
    // The history of e:x was kept: a rate is there at once.
    assert_eq!(e.samples_kept("e", "x"), 1);
    assert_eq!(e.samples_kept("e", "y"), 0);
    m.set("e:x", 6.0);
    let p = e.tick(1000, &m);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].action, Action::Log("k off".into()));
    assert_eq!(
        e.status()[0].values,
        vec!["rate(e:x, 5s) = 6 > 100".to_string()] // 10 → 6: a restart
    );
}

#[test]
fn histories_are_bounded() {
    let mut m = Fake::default();
    let mut e = Engine::new(rule("when = \"rate(e:x, 2s) > 1 and e:y > 0\""));
    for t in 0..100u64 {
        m.set("e:x", t as f64);
        m.set("e:y", 1.0);
        e.tick(t * 1000, &m);
    }
    // Samples in the last 2 s, both ends included.
    assert_eq!(e.samples_kept("e", "x"), 3);
    assert_eq!(e.samples_kept("e", "y"), 1);
    // A very fast caller is capped.
    let mut e = Engine::new(rule("when = \"avg(e:x, 24h) > 1\""));
    for t in 0..10_000u64 {
        m.set("e:x", 1.0);
        e.tick(t, &m);
    }
    assert_eq!(e.samples_kept("e", "x"), expr::MAX_SAMPLES);
    // The decision log too.
    let mut e = Engine::new(rule("when = \"e:x > 0\"\ncooldown = \"0s\""));
    for t in 0..1000u64 {
        m.set("e:x", (t % 2) as f64);
        e.tick(t * 1000, &m);
    }
    assert_eq!(e.decisions().count(), engine::DECISION_LOG_LEN);
}

#[test]
fn time_going_back_does_not_panic_or_fire_early() {
    let mut m = Fake::default();
    let mut e = Engine::new(rule("when = \"rate(e:x, 2s) > 1\"\nfor = \"5s\""));
    m.set("e:x", 0.0);
    e.tick(10_000, &m);
    m.set("e:x", 100.0);
    e.tick(11_000, &m);
    assert_eq!(e.status()[0].state, RuleState::Pending);
    m.set("e:x", 200.0);
    assert!(e.tick(1_000, &m).is_empty());
    assert!(e.tick(12_000, &m).is_empty());
}

// ------------------------------------------------------------ patches

fn table(s: &str) -> toml::Table {
    toml::from_str(s).unwrap()
}

#[test]
fn patch_set_append_remove() {
    let mut t = table(
        "kind = \"balancer\"\n[[backends]]\naddr = \"a\"\nweight = 1\n[[backends]]\naddr = \"b\"\nweight = 2\ntags = [\"x\"]\n",
    );
    let v = |x: i64| toml::Value::Integer(x);
    apply_patch(&mut t, "backends.1.weight", PatchOp::Set, Some(&v(0))).unwrap();
    assert_eq!(t["backends"][1]["weight"].as_integer(), Some(0));
    apply_patch(&mut t, "backends.0.new", PatchOp::Set, Some(&v(7))).unwrap();
    assert_eq!(t["backends"][0]["new"].as_integer(), Some(7));
    apply_patch(&mut t, "backends.1.tags.0", PatchOp::Set, Some(&"y".into())).unwrap();
    apply_patch(
        &mut t,
        "backends.1.tags",
        PatchOp::Append,
        Some(&"z".into()),
    )
    .unwrap();
    assert_eq!(t["backends"][1]["tags"].as_array().unwrap().len(), 2);
    assert_eq!(t["backends"][1]["tags"][1].as_str(), Some("z"));
    // Append to an array inside an array, and create a missing array.
    let rule = toml::Value::Table(table("action = \"deny\"\nsrc = \"10.0.0.9\""));
    apply_patch(&mut t, "rules", PatchOp::Append, Some(&rule)).unwrap();
    assert_eq!(t["rules"][0]["action"].as_str(), Some("deny"));
    apply_patch(
        &mut t,
        "backends",
        PatchOp::Append,
        Some(&toml::Value::Table(table("addr = \"c\""))),
    )
    .unwrap();
    assert_eq!(t["backends"].as_array().unwrap().len(), 3);
    apply_patch(&mut t, "backends.0", PatchOp::Remove, None).unwrap();
    assert_eq!(t["backends"][0]["addr"].as_str(), Some("b"));
    apply_patch(&mut t, "backends.0.tags", PatchOp::Remove, None).unwrap();
    assert!(t["backends"][0].get("tags").is_none());
    apply_patch(&mut t, "kind", PatchOp::Set, Some(&"passthrough".into())).unwrap();
    assert_eq!(t["kind"].as_str(), Some("passthrough"));
    let mut nested = table("m = [[1, 2], [3]]");
    apply_patch(&mut nested, "m.1", PatchOp::Append, Some(&v(4))).unwrap();
    assert_eq!(nested["m"][1].as_array().unwrap().len(), 2);
}

#[test]
fn patch_errors_name_the_segment() {
    let mut t = table("kind = \"x\"\n[[backends]]\nweight = 1\n[limits]\nrate = 5");
    let one = toml::Value::Integer(1);
    let set = Some(&one);
    let patches = [
        ("backends.3.weight", PatchOp::Set, set),
        ("backends.x.weight", PatchOp::Set, set),
        ("nosuch.a", PatchOp::Set, set),
        ("kind.a", PatchOp::Set, set),
        ("limits.rate", PatchOp::Append, set),
        ("limits.burst", PatchOp::Remove, None),
        ("backends.1", PatchOp::Remove, None),
        ("limits..rate", PatchOp::Set, set),
        ("", PatchOp::Set, set),
        ("limits.rate", PatchOp::Set, None),
    ];
    let errors: Vec<String> = patches
        .into_iter()
        .map(|(path, op, value)| apply_patch(&mut t, path, op, value).unwrap_err())
        .collect();
    assert_eq!(
        errors,
        [
            "at `backends.3`: index 3 out of range (1 elements)",
            "at `backends.x`: `x` is not an array index",
            "at `nosuch`: no such key",
            "at `kind`: not a table or an array",
            "at `limits.rate`: not an array",
            "at `limits.burst`: no such key",
            "at `backends.1`: index 1 out of range (1 elements)",
            "path `limits..rate`: segment 2 is empty",
            "path ``: segment 1 is empty",
            "op `set` needs a value",
        ]
    );
    // Nothing changed by the failures.
    assert_eq!(
        t,
        table("kind = \"x\"\n[[backends]]\nweight = 1\n[limits]\nrate = 5")
    );
}
