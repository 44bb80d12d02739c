//! Application-level management on the proxy (`[[function.apps]]`): each
//! request belongs to the first application whose rules (host, path
//! prefix, methods) it matches, and is counted and policed as that
//! application's: requests, bytes each way, status classes and a latency
//! histogram; an allow/deny list of client prefixes (403), a token-bucket
//! rate limit (429 with `Retry-After`) and a limit on requests in progress
//! (503 with `Retry-After`). Its counters, `app.NAME.*`, are part of the
//! device's counters table, for managers to read and act on.

use std::net::IpAddr;

use smoltcp::time::{Duration, Instant};

use super::super::codec::RequestHead;
use crate::functions::FunctionError;
use crate::functions::common::invalid;
use crate::functions::matching::{Prefix, check_name, quoted};

/// Upper bounds of the latency histogram's buckets, in milliseconds; one
/// more bucket counts the rest.
pub const LATENCY_BUCKETS_MS: [u64; 8] = [1, 5, 10, 50, 100, 500, 1000, 5000];

/// One `[[apps]]` entry.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The application's name, in its counters (`app.NAME.requests`).
    pub name: String,
    /// The `Host` it serves (any case, without the port); none: any.
    pub host: Option<String>,
    /// Path prefix (`"/"`, the default: every path).
    #[serde(default = "root")]
    pub path: String,
    /// Methods it covers (none: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Only clients in these prefixes are served (none: all); others get
    /// 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Clients in these prefixes get 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Requests per second allowed on average (none: no limit); beyond,
    /// 429 with `Retry-After`.
    pub rate: Option<f64>,
    /// Requests allowed at once above the rate (default: one second's
    /// worth, at least 1).
    pub burst: Option<f64>,
    /// Requests in progress at once (none: no limit); beyond, 503 with
    /// `Retry-After: 1`.
    pub max_concurrent: Option<u32>,
}

fn root() -> String {
    "/".into()
}

/// What an application counts.
#[derive(Debug, Default, Clone)]
struct Counts {
    requests: u64,
    bytes_in: u64,
    bytes_out: u64,
    status: [u64; 4],
    denied: u64,
    rate_limited: u64,
    concurrency_limited: u64,
    latency: [u64; LATENCY_BUCKETS_MS.len() + 1],
}

/// An application made ready.
#[derive(Debug)]
pub(super) struct App {
    cfg: AppConfig,
    host: Option<Vec<u8>>,
    methods: Vec<Vec<u8>>,
    allow: Vec<Prefix>,
    deny: Vec<Prefix>,
    tokens: f64,
    refilled: Instant,
    active: u32,
    counts: Counts,
    names: Vec<String>,
}

/// What to answer instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// 403.
    Denied,
    /// 429, retry after so many seconds.
    RateLimited(u32),
    /// 503, retry after 1 s.
    Busy,
}

/// The counter names of one application, in [`App::visit`]'s order.
fn names(app: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "requests",
        "bytes_in",
        "bytes_out",
        "status_2xx",
        "status_3xx",
        "status_4xx",
        "status_5xx",
        "denied",
        "rate_limited",
        "concurrency_limited",
    ]
    .iter()
    .map(|c| format!("app.{app}.{c}"))
    .collect();
    for ms in LATENCY_BUCKETS_MS {
        v.push(format!("app.{app}.latency_le_{ms}ms"));
    }
    v.push(format!("app.{app}.latency_le_inf"));
    v
}

/// Checks the `apps` of a config and makes them ready.
pub(super) fn compile(apps: &[AppConfig], now: Instant) -> Result<Vec<App>, FunctionError> {
    let bad = invalid("http-proxy");
    let mut out: Vec<App> = Vec::new();
    for (i, a) in apps.iter().enumerate() {
        check_name(&a.name, "-_").map_err(|chars| bad(format!("apps[{i}].name: use {chars}")))?;
        if out.iter().any(|o| o.cfg.name == a.name) {
            return Err(bad(format!(
                "apps[{i}].name {} is used twice",
                quoted(&a.name)
            )));
        }
        if !a.path.starts_with('/') {
            return Err(bad(format!("apps[{i}].path must start with /")));
        }
        let prefixes = |list: &[String], field: &str| {
            list.iter()
                .map(|p| {
                    Prefix::parse(p).ok_or_else(|| {
                        bad(format!("apps[{i}].{field}: {} is not a prefix", quoted(p)))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let (allow, deny) = (prefixes(&a.allow, "allow")?, prefixes(&a.deny, "deny")?);
        if let Some(r) = a.rate
            && !(r > 0.0 && r <= 1e9)
        {
            return Err(bad(format!(
                "apps[{i}].rate must be above 0 (requests per second)"
            )));
        }
        if let Some(b) = a.burst
            && !(1.0..=1e9).contains(&b)
        {
            return Err(bad(format!("apps[{i}].burst must be at least 1")));
        }
        if a.max_concurrent == Some(0) {
            return Err(bad(format!("apps[{i}].max_concurrent must be at least 1")));
        }
        let app = App {
            host: a.host.as_ref().map(|h| h.to_ascii_lowercase().into_bytes()),
            methods: a.methods.iter().map(|m| m.as_bytes().to_vec()).collect(),
            allow,
            deny,
            tokens: 0.0,
            refilled: now,
            active: 0,
            counts: Counts::default(),
            names: names(&a.name),
            cfg: a.clone(),
        };
        out.push(App {
            tokens: app.burst(),
            ..app
        });
    }
    Ok(out)
}

impl App {
    /// The bucket's size.
    fn burst(&self) -> f64 {
        self.cfg
            .burst
            .unwrap_or_else(|| self.cfg.rate.unwrap_or(1.0).max(1.0))
    }

    /// Whether `req` with its lowercased host belongs here.
    fn matches(&self, host: Option<&[u8]>, req: &RequestHead) -> bool {
        self.host.as_deref().is_none_or(|h| Some(h) == host)
            && req.path().starts_with(self.cfg.path.as_bytes())
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == req.method_bytes()))
    }

    /// Admits a request from `client` now, or says why not.
    pub(super) fn admit(&mut self, client: Option<IpAddr>, now: Instant) -> Result<(), Refusal> {
        self.counts.requests += 1;
        let inside = |list: &[Prefix], a: IpAddr| {
            let (v6, bits) = match a {
                IpAddr::V4(a) => (false, u128::from(u32::from(a))),
                IpAddr::V6(a) => (true, u128::from(a)),
            };
            list.iter().any(|p| p.contains(v6, bits))
        };
        let denied = match client {
            Some(a) => inside(&self.deny, a) || (!self.allow.is_empty() && !inside(&self.allow, a)),
            None => !self.allow.is_empty(),
        };
        if denied {
            self.counts.denied += 1;
            return Err(Refusal::Denied);
        }
        if let Some(rate) = self.cfg.rate {
            let burst = self.burst();
            let dt = (now - self.refilled).total_micros() as f64 / 1e6;
            self.tokens = (self.tokens + dt * rate).min(burst);
            self.refilled = now;
            if self.tokens < 1.0 {
                self.counts.rate_limited += 1;
                let wait = ((1.0 - self.tokens) / rate).ceil().max(1.0);
                return Err(Refusal::RateLimited(wait.min(3600.0) as u32));
            }
            self.tokens -= 1.0;
        }
        if let Some(max) = self.cfg.max_concurrent
            && self.active >= max
        {
            self.counts.concurrency_limited += 1;
            return Err(Refusal::Busy);
        }
        self.active += 1;
        Ok(())
    }

    /// A request admitted earlier is answered: `status`, bytes each way,
    /// and how long it took.
    pub(super) fn done(&mut self, status: u16, bytes: (u64, u64), took: Duration) {
        self.active = self.active.saturating_sub(1);
        self.answered(status, bytes);
        let ms = took.total_millis();
        let b = LATENCY_BUCKETS_MS
            .iter()
            .position(|&le| ms <= le)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.counts.latency[b] += 1;
    }

    /// A request answered by the proxy itself (refused): its status and
    /// bytes.
    pub(super) fn answered(&mut self, status: u16, (bytes_in, bytes_out): (u64, u64)) {
        self.counts.bytes_in += bytes_in;
        self.counts.bytes_out += bytes_out;
        if let 2..=5 = status / 100 {
            self.counts.status[usize::from(status / 100 - 2)] += 1;
        }
    }

    /// Visits its counters (`app.NAME.*`).
    pub(super) fn visit(&self, visit: &mut dyn FnMut(&str, u64)) {
        let c = &self.counts;
        let values = [
            c.requests,
            c.bytes_in,
            c.bytes_out,
            c.status[0],
            c.status[1],
            c.status[2],
            c.status[3],
            c.denied,
            c.rate_limited,
            c.concurrency_limited,
        ]
        .into_iter()
        .chain(c.latency);
        for (name, v) in self.names.iter().zip(values) {
            visit(name, v);
        }
    }

    /// Keeps `old`'s counts, bucket and requests in progress (a
    /// reconfiguration that keeps the application).
    pub(super) fn adopt(&mut self, old: &App) {
        self.counts = old.counts.clone();
        self.active = old.active;
        self.tokens = old.tokens.min(self.burst());
        self.refilled = old.refilled;
    }

    /// The application's name.
    pub(super) fn name(&self) -> &str {
        &self.cfg.name
    }
}

/// The application `req` belongs to: the first that matches.
pub(super) fn classify(apps: &[App], req: &RequestHead) -> Option<usize> {
    let host = super::config::host_of(req);
    apps.iter().position(|a| a.matches(host.as_deref(), req))
}
