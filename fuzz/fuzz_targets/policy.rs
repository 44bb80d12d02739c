//! The policy engine: any input, read as a whole policy file and as a bare
//! condition, is a typed error or a policy, never a panic or a stack
//! overflow; a condition's canonical form parses back to the same
//! condition; a parsed policy runs a few ticks on metrics derived from the
//! input, its patches applied to a config, without panicking, and its
//! decision log stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmnet::functions::socket::manager::policy::expr::MAX_CONDITION_LEN;
use shmnet::functions::socket::manager::policy::{
    Action, Engine, Metrics, Policy, apply_patch, parse_condition,
};

/// Values that move with the tick and the name, resets and gaps included.
struct Fake {
    tick: u64,
    seed: u64,
}

impl Fake {
    fn hash(&self, s: &str) -> u64 {
        s.bytes().fold(self.seed, |h, b| {
            h.wrapping_mul(31).wrapping_add(u64::from(b))
        })
    }
}

impl Metrics for Fake {
    fn get(&self, source: &str, name: &str) -> Option<f64> {
        let h = self.hash(source) ^ self.hash(name);
        match h.wrapping_add(self.tick) % 7 {
            0 => None,
            1 => Some(f64::NAN),
            2 => Some(0.0), // a counter reset
            _ => Some((h % 1000) as f64 * self.tick as f64),
        }
    }
    fn up(&self, device: &str) -> Option<bool> {
        match self.hash(device).wrapping_add(self.tick) % 3 {
            0 => None,
            n => Some(n == 1),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = parse_condition(text) {
        let canonical = c.to_string();
        // Numbers written out in full (`1Ti`) may make it longer than a
        // condition may be; any other must read back the same.
        if canonical.len() <= MAX_CONDITION_LEN {
            let again = parse_condition(&canonical)
                .unwrap_or_else(|e| panic!("canonical form {c} does not parse: {e}"));
            assert_eq!(again, c, "{c}");
        }
    }
    let Ok(policy) = Policy::from_toml(text) else {
        return;
    };
    let seed = data.len() as u64;
    let mut engine = Engine::new(policy.clone());
    let mut config = toml::Table::new();
    for tick in 0..8u64 {
        let now = 1_700_000_000_000 + tick * 997 * (1 + seed % 5);
        let planned = engine.tick(now, &Fake { tick, seed });
        for p in planned {
            let result = match &p.action {
                Action::Patch {
                    path, op, value, ..
                } => apply_patch(&mut config, path, *op, value.as_ref()).map(|()| "ok".into()),
                Action::SetFunction { function, .. } => match toml::from_str(function) {
                    Ok(t) => {
                        config = t;
                        Ok("set".into())
                    }
                    Err(e) => panic!("a set's function does not read back: {e}"),
                },
                a => Ok(a.to_string()),
            };
            engine.settle(p.decision, result);
        }
        if tick == 4 {
            engine.replace(policy.clone());
            engine.set_dry_run(true);
        }
    }
    assert!(engine.decisions().count() <= 256);
    assert_eq!(engine.status().len(), policy.rules.len());
});
