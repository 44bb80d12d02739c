//! Health checks, shared by the functions that track peers (re-routing's
//! next hops, the balancer's backends): the check parameters of a config
//! section ([`HealthSpec`] → [`HealthCheck`]) and keepalived's fall/rise
//! state machine ([`Health`]).
//!
//! A probe goes out every `interval` (the next one only once the previous
//! one ended) and fails if it is not answered within `timeout`. An up peer
//! goes down after `fall` consecutive failures; a down one comes up after
//! `rise` consecutive successes. What a probe is (an ICMP echo, a TCP
//! connection) stays with each function: it asks [`Health::start`] whether
//! one is due, tells [`Health::finish`] how it ended, and acts on the
//! [`Transition`] it gets back. Sans-IO: `now` is always an argument.
//!
//! ```
//! use shmnet::functions::health::{Health, HealthCheck, HealthSpec, Transition};
//! use shmnet::functions::matching::ConfigDuration;
//! use smoltcp::time::Instant;
//! let spec = HealthSpec {
//!     interval: ConfigDuration::from_millis(100),
//!     timeout: None, // as long as the interval
//!     fall: 2,
//!     rise: 1,
//! };
//! let check = HealthCheck::compile("next_hop a", spec).unwrap();
//! let mut h = Health::new(true);
//! let t = Instant::from_millis;
//! assert!(h.start(&check, t(0)));
//! assert!(!h.start(&check, t(50)), "one probe at a time");
//! assert!(h.timed_out(&check, t(100)));
//! assert_eq!(h.finish(&check, t(100), false), None);
//! assert!(h.start(&check, t(100)));
//! assert_eq!(h.finish(&check, t(150), false), Some(Transition::Down));
//! assert!(!h.is_up());
//! ```

use smoltcp::time::{Duration, Instant};

use super::matching::ConfigDuration;

/// `fall` when a config leaves it out.
pub const DEFAULT_FALL: u32 = 3;
/// `rise` when a config leaves it out.
pub const DEFAULT_RISE: u32 = 2;

/// serde default of `fall`.
pub fn default_fall() -> u32 {
    DEFAULT_FALL
}
/// serde default of `rise`.
pub fn default_rise() -> u32 {
    DEFAULT_RISE
}

/// Declares the config section of a checked peer (a next hop, a service's
/// backends) as written, followed by the four check fields (`interval`,
/// with the section's own default, `timeout`, `fall` and `rise`), and
/// gives it a `health_spec()` accessor for [`HealthCheck::compile`].
#[allow(unused_macros)] // unused when the functions using it are compiled out
macro_rules! with_health_fields {
    (interval = $interval:literal; $(#[$attr:meta])* pub struct $name:ident $own:tt) => {
        $crate::functions::common::struct_with_fields! {
            [
                /// Time between probes.
                #[serde(default = $interval)]
                pub interval: $crate::functions::matching::ConfigDuration,
                /// How long a probe waits for its answer.
                pub timeout: Option<$crate::functions::matching::ConfigDuration>,
                /// Consecutive failures that take an up peer down.
                #[serde(default = "crate::functions::health::default_fall")]
                pub fall: u32,
                /// Consecutive successes that bring a down peer up.
                #[serde(default = "crate::functions::health::default_rise")]
                pub rise: u32,
            ]
            $(#[$attr])*
            pub struct $name $own
        }

        impl $name {
            /// The check fields, for
            /// [`HealthCheck::compile`]($crate::functions::health::HealthCheck::compile).
            pub fn health_spec(&self) -> $crate::functions::health::HealthSpec {
                $crate::functions::health::HealthSpec {
                    interval: self.interval,
                    timeout: self.timeout,
                    fall: self.fall,
                    rise: self.rise,
                }
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use with_health_fields;

/// The health-check fields of a config section (declared there with
/// `with_health_fields!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSpec {
    /// Time between probes.
    pub interval: ConfigDuration,
    /// How long a probe waits for its answer; `None`: the interval.
    pub timeout: Option<ConfigDuration>,
    /// Consecutive failures that take an up peer down.
    pub fall: u32,
    /// Consecutive successes that bring a down peer up.
    pub rise: u32,
}

/// Validated check parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between probes (the next leaves only once the previous ended).
    pub interval: Duration,
    /// How long a probe waits for its answer (the interval if not given).
    pub timeout: Duration,
    /// Consecutive failures that take an up peer down, 1..=[`Self::MAX_COUNT`].
    pub fall: u32,
    /// Consecutive successes that bring a down peer up, 1..=[`Self::MAX_COUNT`].
    pub rise: u32,
}

impl HealthCheck {
    /// Shortest `interval` and `timeout`.
    pub const MIN_PERIOD: Duration = Duration::from_millis(1);
    /// Longest `interval` and `timeout`.
    pub const MAX_PERIOD: Duration = Duration::from_secs(3600);
    /// Largest `fall` and `rise`.
    pub const MAX_COUNT: u32 = 1000;

    /// Validates the fields of `owner` (e.g. `next_hop a`); the error names
    /// the owner and the field.
    pub fn compile(owner: &str, spec: HealthSpec) -> Result<HealthCheck, String> {
        let period = |field: &str, d: ConfigDuration| {
            d.within(field, Self::MIN_PERIOD..=Self::MAX_PERIOD)
                .map_err(|e| format!("{owner}: {e}"))
        };
        let interval = period("interval", spec.interval)?;
        let timeout = match spec.timeout {
            Some(t) => period("timeout", t)?,
            None => interval,
        };
        for (field, n) in [("fall", spec.fall), ("rise", spec.rise)] {
            if !(1..=Self::MAX_COUNT).contains(&n) {
                return Err(format!(
                    "{owner}: {field} {n} must be 1..={}",
                    Self::MAX_COUNT
                ));
            }
        }
        Ok(HealthCheck {
            interval,
            timeout,
            fall: spec.fall,
            rise: spec.rise,
        })
    }
}

/// A change of a peer's state, for the caller to act on (rebuild a table,
/// log, count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A down peer reached `rise` consecutive successes.
    Up,
    /// An up peer reached `fall` consecutive failures.
    Down,
}

/// One peer's health: up or down, the current streak, and the probe
/// schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    up: bool,
    /// Consecutive failures while up, successes while down.
    streak: u32,
    /// When the probe in flight left.
    sent: Option<Instant>,
    /// The next probe leaves no earlier than this.
    next: Instant,
}

impl Health {
    /// A peer in state `up`, its first probe due at once.
    pub fn new(up: bool) -> Health {
        Health {
            up,
            streak: 0,
            sent: None,
            next: Instant::ZERO,
        }
    }

    /// Whether the peer is up (traffic may go to it).
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Consecutive failures while up, successes while down.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// When the probe in flight left, if one is.
    pub fn in_flight(&self) -> Option<Instant> {
        self.sent
    }

    /// Is a probe due? If so it counts as sent now: the caller sends it
    /// (or, if it cannot, reports the failure through [`Health::finish`]).
    pub fn start(&mut self, check: &HealthCheck, now: Instant) -> bool {
        if self.sent.is_some() || now < self.next {
            return false;
        }
        self.sent = Some(now);
        self.next = now + check.interval;
        true
    }

    /// Has the probe in flight waited its `timeout`?
    pub fn timed_out(&self, check: &HealthCheck, now: Instant) -> bool {
        self.sent.is_some_and(|s| now >= s + check.timeout)
    }

    /// The probe in flight ended: answered (`ok`) or not. Returns the
    /// transition it caused, if any.
    pub fn finish(&mut self, check: &HealthCheck, now: Instant, ok: bool) -> Option<Transition> {
        self.sent = None;
        self.next = self.next.max(now);
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < if self.up { check.fall } else { check.rise } {
            return None;
        }
        self.streak = 0;
        self.up = ok;
        Some(if ok { Transition::Up } else { Transition::Down })
    }

    /// Sets the state from outside the probes (management, a peer that
    /// vanished); a new streak starts. Returns the transition, if any.
    pub fn set(&mut self, up: bool) -> Option<Transition> {
        self.streak = 0;
        if up == self.up {
            return None;
        }
        self.up = up;
        Some(if up { Transition::Up } else { Transition::Down })
    }

    /// Starts over in state `up` (the peer moved): the probe in flight is
    /// forgotten and the next one is due at `now`.
    pub fn restart(&mut self, now: Instant, up: bool) {
        *self = Health {
            next: now,
            ..Health::new(up)
        };
    }

    /// When the schedule next needs attention: the timeout of the probe in
    /// flight, else when the next probe is due.
    pub fn due(&self, check: &HealthCheck) -> Instant {
        match self.sent {
            Some(s) => s + check.timeout,
            None => self.next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(fall: u32, rise: u32) -> HealthCheck {
        HealthCheck::compile(
            "peer p",
            HealthSpec {
                interval: ConfigDuration::from_millis(100),
                timeout: Some(ConfigDuration::from_millis(50)),
                fall,
                rise,
            },
        )
        .unwrap()
    }

    fn ms(n: i64) -> Instant {
        Instant::from_millis(n)
    }

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let c = check(3, 2);
        let mut h = Health::new(true);
        let probe = |h: &mut Health, at: i64, ok: bool| {
            assert!(h.start(&c, ms(at)), "due at {at}");
            h.finish(&c, ms(at + 10), ok)
        };
        assert_eq!(probe(&mut h, 0, false), None);
        assert_eq!(probe(&mut h, 100, false), None);
        // A success in between starts the count again.
        assert_eq!(probe(&mut h, 200, true), None);
        assert_eq!(probe(&mut h, 300, false), None);
        assert_eq!(probe(&mut h, 400, false), None);
        assert_eq!(probe(&mut h, 500, false), Some(Transition::Down));
        assert!(!h.is_up());
        assert_eq!(probe(&mut h, 600, true), None);
        assert_eq!(h.streak(), 1);
        assert_eq!(probe(&mut h, 700, false), None);
        assert_eq!(h.streak(), 0);
        assert_eq!(probe(&mut h, 800, true), None);
        assert_eq!(probe(&mut h, 900, true), Some(Transition::Up));
        assert_eq!(h.streak(), 0);
    }

    #[test]
    fn schedule_one_probe_at_a_time() {
        let c = check(1, 1);
        let mut h = Health::new(true);
        assert_eq!(h.due(&c), ms(0));
        assert!(h.start(&c, ms(0)));
        assert_eq!(h.in_flight(), Some(ms(0)));
        assert_eq!(h.due(&c), ms(50));
        assert!(!h.timed_out(&c, ms(49)));
        assert!(h.timed_out(&c, ms(50)));
        assert_eq!(h.finish(&c, ms(50), false), Some(Transition::Down));
        // The next probe leaves an interval after the previous one left.
        assert_eq!(h.due(&c), ms(100));
        assert!(!h.start(&c, ms(99)));
        assert!(h.start(&c, ms(100)));
        // A late answer: the next one is due at once.
        h.finish(&c, ms(260), true);
        assert_eq!(h.due(&c), ms(260));
        h.restart(ms(300), false);
        assert_eq!(
            (h.is_up(), h.in_flight(), h.due(&c)),
            (false, None, ms(300))
        );
        assert_eq!(h.set(true), Some(Transition::Up));
        assert_eq!(h.set(true), None);
    }

    #[test]
    fn errors_name_the_owner_and_the_field() {
        let spec = HealthSpec {
            interval: ConfigDuration::from_millis(100),
            timeout: None,
            fall: 3,
            rise: 2,
        };
        let c = HealthCheck::compile("x", spec).unwrap();
        assert_eq!(c.timeout, c.interval);
        let err = |s: HealthSpec| HealthCheck::compile("backend 10.0.0.1:80", s).unwrap_err();
        let e = err(HealthSpec {
            timeout: Some(ConfigDuration(Duration::ZERO)),
            ..spec
        });
        assert!(e.contains("backend 10.0.0.1:80: timeout \"0us\""), "{e}");
        let e = err(HealthSpec {
            interval: ConfigDuration::from_secs(7200),
            ..spec
        });
        assert!(e.contains("interval \"2h\""), "{e}");
        assert!(err(HealthSpec { fall: 0, ..spec }).contains("fall 0"));
        assert!(err(HealthSpec { rise: 1001, ..spec }).contains("rise 1001"));
    }
}
