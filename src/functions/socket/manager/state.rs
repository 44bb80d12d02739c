//! What the manager knows, as answers update it and as the API, the
//! metrics and the policy engine read it.

use smoltcp::time::Instant;

use super::agents::{Answer, Purpose};
use super::metrics::{self, DeviceSample, Family, Kind};
use super::policy::{self, PatchOp};
use super::probes::{Probe, RTT_BUCKETS_MS};
use super::{Managed, Manager, ManagerStats};
use crate::wire::mgmt::{Op, Status};
use crate::wire::mgmt_payload as body;

/// The entry of an agent's counters table that is the device's uptime
/// (kept apart: it is not a counter).
const UPTIME: &str = "uptime_ms";

/// Updates a device's state with an agent's answer.
pub(super) fn record(m: &mut Managed, a: &Answer) {
    let poll = matches!(a.purpose, Purpose::Poll | Purpose::Config);
    match &a.result {
        Err(e) => {
            if m.up {
                log::warn!("manager: agent at {} is down: {e}", m.link.addr());
            }
            m.up = false;
            m.error = Some(e.clone());
            if poll {
                m.polls_failed += 1;
            }
        }
        Ok((Status::Ok, b)) => {
            match a.op {
                Op::Identify => match body::from_toml::<body::Identity>(b) {
                    Ok(id) => m.identity = Some(id),
                    Err(e) => m.error = Some(format!("identity: {e}")),
                },
                Op::Counters => match body::decode_counters(b) {
                    Ok(mut c) => {
                        m.uptime_ms = c.remove(UPTIME);
                        m.counters = c;
                        if !m.up {
                            log::info!("manager: agent at {} is up", m.link.addr());
                        }
                        m.up = true;
                        m.error = None;
                        m.polls += 1;
                        m.rtt = Some(a.rtt);
                    }
                    Err(e) => m.error = Some(e),
                },
                Op::Config if poll => m.config = Some(String::from_utf8_lossy(b).into_owned()),
                // A change took: fetch identity and configuration anew.
                Op::SetFunction => m.refreshed = None,
                _ => {}
            }
        }
        Ok((st, b)) => {
            let text = String::from_utf8_lossy(b);
            if poll {
                m.up = false;
                m.polls_failed += 1;
                m.error = Some(format!("{}: {text}", st.name()));
            }
        }
    }
}

/// `cfg` (TOML text) with a policy patch applied, as TOML text.
pub(super) fn patched(
    cfg: &[u8],
    path: &str,
    op: PatchOp,
    value: Option<&toml::Value>,
) -> Result<String, String> {
    let text = std::str::from_utf8(cfg).map_err(|_| "config is not UTF-8".to_string())?;
    let mut t: toml::Table = toml::from_str(text).map_err(|e| e.message().to_string())?;
    policy::apply_patch(&mut t, path, op, value)?;
    toml::to_string(&t).map_err(|e| e.to_string())
}

/// The manager's state as the policy engine reads it: `DEVICE:COUNTER`,
/// `probe:NAME.FIELD` and `manager:COUNTER`.
pub(super) struct MetricsView<'a> {
    pub(super) devices: &'a std::collections::BTreeMap<String, Managed>,
    pub(super) probes: &'a [Probe],
    pub(super) stats: &'a ManagerStats,
}

impl policy::Metrics for MetricsView<'_> {
    fn get(&self, source: &str, name: &str) -> Option<f64> {
        match source {
            "probe" => {
                let (probe, field) = name.split_once('.')?;
                let p = self.probes.iter().find(|p| p.cfg.name == probe)?;
                probe_field(p, field)
            }
            "manager" => {
                let mut found = None;
                self.stats.visit(&mut |n, v| {
                    if n == name {
                        found = Some(v as f64);
                    }
                });
                found
            }
            device => {
                let m = self.devices.get(device)?;
                if name == "up" {
                    return Some(if m.up { 1.0 } else { 0.0 });
                }
                m.counters.get(name).map(|&v| v as f64)
            }
        }
    }

    fn up(&self, device: &str) -> Option<bool> {
        self.devices.get(device).map(|m| m.up)
    }
}

fn probe_field(p: &Probe, field: &str) -> Option<f64> {
    let s = &p.stats;
    Some(match field {
        "up" => f64::from(u8::from(s.up)),
        "ok" => f64::from(u8::from(s.up)),
        "sent" => s.sent as f64,
        "received" => s.received as f64,
        "failing" => s.failing as f64,
        "loss" => s.loss(),
        "recent_loss" => s.recent_loss,
        "rtt_min_ms" => s.rtt_min_ms,
        "rtt_avg_ms" => s.rtt_avg_ms,
        "rtt_max_ms" => s.rtt_max_ms,
        "rtt_last_ms" | "rtt_ms" => s.rtt_last_ms,
        _ => return None,
    })
}

/// `/metrics`: every device's counters, then the manager's own families.
pub(super) fn render_metrics(m: &Manager) -> String {
    let tables: Vec<(String, Vec<(String, u64)>)> = m
        .devices
        .iter()
        .map(|(n, d)| {
            (
                n.clone(),
                d.counters.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            )
        })
        .collect();
    let samples: Vec<DeviceSample<'_>> = m
        .devices
        .iter()
        .zip(&tables)
        .map(|((name, d), (_, counters))| DeviceSample {
            device: name,
            function: d.identity.as_ref().map_or("", |i| i.function.as_str()),
            up: d.up,
            counters,
        })
        .collect();
    metrics::render(&samples, &own_families(m))
}

fn label(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// The manager's probe, policy and polling metrics.
fn own_families(m: &Manager) -> Vec<Family> {
    let mut out = Vec::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        let mut f = Family::new(format!("shmnet_manager_{name}_total"), help, Kind::Counter);
        f.push(Vec::new(), v as f64);
        out.push(f);
    };
    let s = &m.stats;
    counter("polls", "Poll rounds the manager started.", s.polls);
    counter("agent_answers", "Agent requests answered.", s.agent_answers);
    counter(
        "agent_errors",
        "Agent requests that failed or timed out.",
        s.agent_errors,
    );
    counter(
        "http_requests",
        "HTTP requests the manager served.",
        s.http_requests,
    );
    counter(
        "http_unauthorized",
        "HTTP requests refused for a missing or wrong token.",
        s.http_unauthorized,
    );
    counter(
        "policy_reloads",
        "Policy file reloads that took effect.",
        s.policy_reloads,
    );
    counter(
        "policy_reload_errors",
        "Policy file reloads refused (the old policy stays).",
        s.policy_reload_errors,
    );
    // A gauge per device, for the devices `f` has a value of.
    let per_device = |name: &str, help: &str, f: &dyn Fn(&Managed) -> Option<f64>| {
        let mut fam = Family::new(name, help, Kind::Gauge);
        for (device, d) in &m.devices {
            if let Some(v) = f(d) {
                fam.push(vec![label("device", device)], v);
            }
        }
        fam
    };
    out.push(per_device(
        "shmnet_manager_agent_rtt_seconds",
        "Round trip of the last successful poll of each device's agent.",
        &|d| d.rtt.map(|r| r.total_micros() as f64 / 1e6),
    ));
    out.push(per_device(
        "shmnet_device_uptime_seconds",
        "How long each device has run, as its agent last said.",
        &|d| d.uptime_ms.map(|ms| ms as f64 / 1e3),
    ));
    let per_probe = |name: &str, help: &str, kind: Kind, f: &dyn Fn(&Probe) -> f64| {
        let mut fam = Family::new(name, help, kind);
        for p in &m.probes {
            let kind = format!("{:?}", p.cfg.kind).to_lowercase();
            fam.push(
                vec![
                    label("probe", &p.cfg.name),
                    label("kind", &kind),
                    label("target", &p.cfg.target),
                ],
                f(p),
            );
        }
        fam
    };
    out.push(per_probe(
        "shmnet_probe_up",
        "Whether the probe's last attempt succeeded.",
        Kind::Gauge,
        &|p| f64::from(u8::from(p.stats.up)),
    ));
    out.push(per_probe(
        "shmnet_probe_sent_total",
        "Probe attempts made.",
        Kind::Counter,
        &|p| p.stats.sent as f64,
    ));
    out.push(per_probe(
        "shmnet_probe_received_total",
        "Probe attempts that succeeded.",
        Kind::Counter,
        &|p| p.stats.received as f64,
    ));
    out.push(per_probe(
        "shmnet_probe_loss_ratio",
        "Share of the last 100 attempts that failed.",
        Kind::Gauge,
        &|p| p.stats.recent_loss,
    ));
    out.push(per_probe(
        "shmnet_probe_rtt_min_seconds",
        "Smallest round trip.",
        Kind::Gauge,
        &|p| p.stats.rtt_min_ms / 1e3,
    ));
    out.push(per_probe(
        "shmnet_probe_rtt_avg_seconds",
        "Mean round trip.",
        Kind::Gauge,
        &|p| p.stats.rtt_avg_ms / 1e3,
    ));
    out.push(per_probe(
        "shmnet_probe_rtt_max_seconds",
        "Largest round trip.",
        Kind::Gauge,
        &|p| p.stats.rtt_max_ms / 1e3,
    ));
    let mut hist = Family::new(
        "shmnet_probe_rtt_seconds",
        "Round trips of successful probe attempts.",
        Kind::Histogram,
    );
    for p in &m.probes {
        let base = vec![label("probe", &p.cfg.name)];
        let mut cum = 0;
        for (i, b) in RTT_BUCKETS_MS.iter().enumerate() {
            cum += p.stats.buckets[i];
            let mut l = base.clone();
            l.push(label("le", &format!("{}", b / 1e3)));
            hist.samples.push(metrics::Sample {
                labels: l,
                suffix: Some("_bucket"),
                value: cum as f64,
            });
        }
        cum += p.stats.buckets[RTT_BUCKETS_MS.len()];
        let mut l = base.clone();
        l.push(label("le", "+Inf"));
        hist.samples.push(metrics::Sample {
            labels: l,
            suffix: Some("_bucket"),
            value: cum as f64,
        });
        hist.samples.push(metrics::Sample {
            labels: base.clone(),
            suffix: Some("_sum"),
            value: p.stats.rtt_sum_ms / 1e3,
        });
        hist.samples.push(metrics::Sample {
            labels: base,
            suffix: Some("_count"),
            value: cum as f64,
        });
    }
    out.push(hist);
    if let Some(e) = &m.engine {
        let c = e.counters();
        let mut g = |name: &str, help: &str, v: u64| {
            let mut f = Family::new(format!("shmnet_policy_{name}_total"), help, Kind::Counter);
            f.push(Vec::new(), v as f64);
            out.push(f);
        };
        g("ticks", "Policy evaluations.", c.ticks);
        g("fired", "Rules fired.", c.fired);
        g("reverted", "Rules reverted.", c.reverted);
        g(
            "suppressed",
            "Transitions held back by a rule's cooldown.",
            c.suppressed_by_cooldown,
        );
        g("actions_ok", "Policy actions that succeeded.", c.actions_ok);
        g(
            "actions_failed",
            "Policy actions that failed.",
            c.actions_failed,
        );
        let mut st = Family::new(
            "shmnet_policy_rule_active",
            "Whether a rule has fired and not yet reverted.",
            Kind::Gauge,
        );
        let mut tr = Family::new(
            "shmnet_policy_rule_transitions_total",
            "A rule's decisions: fired, reverted, held back by its cooldown.",
            Kind::Counter,
        );
        for r in e.status() {
            let active = matches!(
                r.state,
                policy::RuleState::Active | policy::RuleState::Clearing
            );
            st.push(vec![label("rule", &r.name)], f64::from(u8::from(active)));
            for (t, n) in [
                ("fire", r.fired),
                ("revert", r.reverted),
                ("suppressed", r.suppressed),
            ] {
                tr.push(
                    vec![label("rule", &r.name), label("transition", t)],
                    n as f64,
                );
            }
        }
        out.push(st);
        out.push(tr);
    }
    out
}

/// `GET /api/devices`.
pub(super) fn devices_json(m: &Manager, _now: Instant) -> serde_json::Value {
    let list: Vec<serde_json::Value> = m
        .devices
        .iter()
        .map(|(name, d)| {
            serde_json::json!({
                "name": name,
                "function": d.identity.as_ref().map(|i| i.function.clone()),
                "address": d.link.addr().to_string(),
                "up": d.up,
                "listed": d.listed,
                "uptime_s": d.uptime_ms.map(|ms| ms as f64 / 1e3),
                "last_poll_ms": d.rtt.map(|r| r.total_micros() as f64 / 1e3),
                "error": d.error,
            })
        })
        .collect();
    serde_json::json!({ "devices": list })
}

/// `GET /api/devices/NAME`.
pub(super) fn device_json(m: &Manager, name: &str, _now: Instant) -> Option<serde_json::Value> {
    let d = m.devices.get(name)?;
    Some(serde_json::json!({
        "name": name,
        "function": d.identity.as_ref().map(|i| i.function.clone()),
        "address": d.link.addr().to_string(),
        "up": d.up,
        "error": d.error,
        "polls": d.polls,
        "polls_failed": d.polls_failed,
        "identity": d.identity.as_ref().map(|i| serde_json::json!({
            "version": i.version,
            // The identity is fetched every 10 s, the uptime with every
            // poll's counters.
            "uptime_s": d.uptime_ms.unwrap_or(i.uptime_ms) as f64 / 1e3,
            "pid": i.pid,
            "forward": i.forward,
            "local": i.local,
            "global": i.global,
        })),
        "counters": d.counters,
    }))
}

/// `GET /api/policy`.
pub(super) fn policy_json(m: &Manager) -> serde_json::Value {
    let Some(e) = &m.engine else {
        return serde_json::json!({
            "file": m.cfg.policy,
            "loaded": false,
            "error": m.policy_error,
            "rules": [],
            "decisions": [],
        });
    };
    let decisions: Vec<serde_json::Value> = e
        .decisions()
        .map(|d| {
            let results: Vec<String> = d
                .results
                .iter()
                .map(|r| match r {
                    Ok(t) => format!("ok: {t}"),
                    Err(t) => format!("error: {t}"),
                })
                .collect();
            serde_json::json!({
                "id": d.id,
                "at_ms": d.at_ms,
                "rule": d.rule,
                "transition": d.transition,
                "dry_run": d.dry_run,
                "why": d.why,
                "actions": d.actions,
                "results": results,
            })
        })
        .collect();
    serde_json::json!({
        "file": m.cfg.policy,
        "loaded": true,
        "dry_run": e.dry_run(),
        "error": m.policy_error,
        "rules": e.status(),
        "decisions": decisions,
        "counters": e.counters(),
    })
}

/// `POST /api/probe`'s answer.
pub(super) fn probe_json(p: &Probe) -> serde_json::Value {
    let s = &p.stats;
    serde_json::json!({
        "kind": format!("{:?}", p.cfg.kind).to_lowercase(),
        "target": p.cfg.target,
        "sent": s.sent,
        "received": s.received,
        "loss": s.loss(),
        "rtt_ms": {"min": s.rtt_min_ms, "avg": s.rtt_avg_ms, "max": s.rtt_max_ms},
        "histogram_ms": RTT_BUCKETS_MS.iter().map(|b| serde_json::json!(b)).chain(Some(serde_json::json!("+Inf")))
            .zip(s.buckets.iter()).map(|(le, n)| serde_json::json!([le, n])).collect::<Vec<_>>(),
        "last_error": s.last_error,
    })
}
