//! Prometheus text exposition (format 0.0.4) of the devices' counters.
//!
//! Each device's counter table ([`DeviceStats::counters`](crate::stack::DeviceStats::counters))
//! is mapped to metric families with labels, so one family holds the same
//! counter of every device and every rule, class, backend or application:
//!
//! | counter                     | family                                                        |
//! |-----------------------------|---------------------------------------------------------------|
//! | (the device answered)       | `shmnet_up{device,function}` gauge                            |
//! | `local.rx_frames`           | `shmnet_adapter_rx_frames_total{…,network="local"}`           |
//! | `forwarded`                 | `shmnet_nic_forwarded_total{…}`                               |
//! | `function.NAME`             | `shmnet_function_NAME_total{…}`                               |
//! | `function.app.A.requests`   | `shmnet_app_requests_total{…,app="A"}`                        |
//! | `function.app.A.latency_le_5ms` | histogram `shmnet_app_latency_seconds{…,app="A"}`         |
//! | `function.K.OBJ.NAME`       | `shmnet_function_K_NAME_total{…,K="OBJ"}` (rule, class, …)    |
//! | `function.ruleN_packets`    | `shmnet_function_rule_packets_total{…,rule="N"}` (firewall)   |
//!
//! Counters that hold a current level rather than a count of events
//! (queue occupancy, open connections, `up` flags: [`is_gauge`]) are
//! gauges without `_total`. Anything else is sanitised to a valid name.
//! Families are sorted by name and never interleaved; samples keep the
//! order of the devices given. The manager adds its own families
//! (probes, policy, polls) as [`Family`] values.
//!
//! ```
//! use shmnet::functions::socket::manager::metrics::{render, DeviceSample};
//! let counters = vec![("local.rx_frames".to_string(), 7), ("forwarded".to_string(), 2)];
//! let text = render(
//!     &[DeviceSample { device: "edge", function: "passthrough", up: true, counters: &counters }],
//!     &[],
//! );
//! assert!(text.contains(
//!     "shmnet_adapter_rx_frames_total{device=\"edge\",function=\"passthrough\",network=\"local\"} 7\n"
//! ));
//! assert!(text.contains("# TYPE shmnet_up gauge\n"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One device's counters as last polled.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSample<'a> {
    /// The device's name (label `device`).
    pub device: &'a str,
    /// Its function's kind (label `function`).
    pub function: &'a str,
    /// Whether the last poll got an answer (`shmnet_up`).
    pub up: bool,
    /// Its counter table, names as `DeviceStats::counters` displays them.
    pub counters: &'a [(String, u64)],
}

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A count of events that only goes up (name ends in `_total`).
    Counter,
    /// A level that goes up and down.
    Gauge,
    /// Cumulative buckets: samples with suffixes `_bucket` (label `le`),
    /// `_count` and, when known, `_sum`.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One sample of a family.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Label names and values (values are escaped when rendered).
    pub labels: Vec<(String, String)>,
    /// Appended to the family's name: `_bucket`, `_count`, `_sum` for
    /// histograms, `None` otherwise.
    pub suffix: Option<&'static str>,
    /// The value.
    pub value: f64,
}

/// A metric family: `# HELP`, `# TYPE` and its samples, rendered together.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The full name as in `# TYPE`: with `_total` for a counter, without
    /// the sample suffixes for a histogram.
    pub name: String,
    /// One line of help (escaped when rendered).
    pub help: String,
    /// The family's type.
    pub kind: Kind,
    /// Its samples, in the order they are rendered.
    pub samples: Vec<Sample>,
}

impl Family {
    /// An empty family.
    pub fn new(name: impl Into<String>, help: impl Into<String>, kind: Kind) -> Family {
        Family {
            name: name.into(),
            help: help.into(),
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds a sample without suffix.
    pub fn push(&mut self, labels: Vec<(String, String)>, value: f64) {
        self.samples.push(Sample {
            labels,
            suffix: None,
            value,
        });
    }
}

/// Function counters that hold a current level, not a count of events:
/// typed gauge, without `_total`. `(function kind or "*", name)`, the
/// name matched against the counter's last dotted part
/// (`class.gold.queued_bytes` → `queued_bytes`). By kind because the same
/// word means both: the cache's `bytes` are held, qos's were sent.
pub const GAUGES: &[(&str, &str)] = &[
    // http-server: connections open now; tcp-proxy: per listener.
    ("*", "open_connections"),
    ("*", "active"),
    // balancer: flows in the table; services' and backends' health;
    // reroute: next hops' health.
    ("*", "flows_active"),
    ("*", "backends_up"),
    ("*", "up"),
    // qos: queue occupancy, per class and in all.
    ("*", "queued_bytes"),
    ("*", "queued_packets"),
    // http-proxy: its response cache's size.
    ("*", "cache_bytes"),
    // cache: memcached's levels (the rest of its stats are counts).
    ("cache", "curr_items"),
    ("cache", "curr_connections"),
    ("cache", "bytes"),
    ("cache", "memory_used"),
    ("cache", "limit_maxbytes"),
];

/// Whether the counter `name` of a function of kind `function` is a level
/// (see [`GAUGES`]).
pub fn is_gauge(function: &str, name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    GAUGES
        .iter()
        .any(|&(kind, n)| n == last && (kind == "*" || kind == function))
}

/// Labels reserved for the device itself; an object kind of that name is
/// labelled `object` instead.
const RESERVED: &[&str] = &["device", "function", "network", "le", "app"];

/// Renders the devices' counters and the `extra` families as Prometheus
/// text (format 0.0.4), families sorted by name.
pub fn render(devices: &[DeviceSample<'_>], extra: &[Family]) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for d in devices {
        add_device(&mut families, d);
    }
    for f in extra {
        match families.get_mut(&f.name) {
            Some(have) if have.kind == f.kind => have.samples.extend(f.samples.iter().cloned()),
            // A clash of types would make the text invalid: first one wins.
            Some(_) => {}
            None => {
                families.insert(f.name.clone(), f.clone());
            }
        }
    }
    let mut out = String::new();
    for f in families.values() {
        write_family(&mut out, f);
    }
    out
}

/// Appends one family's text to `out`.
fn write_family(out: &mut String, f: &Family) {
    let name = sanitize(&f.name, true);
    let _ = writeln!(out, "# HELP {name} {}", escape_help(&f.help));
    let _ = writeln!(out, "# TYPE {name} {}", f.kind.as_str());
    let mut seen = std::collections::HashSet::new();
    for s in &f.samples {
        let mut line = format!("{name}{}", s.suffix.unwrap_or(""));
        if !s.labels.is_empty() {
            line.push('{');
            for (i, (k, v)) in s.labels.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let _ = write!(line, "{}=\"{}\"", sanitize(k, false), escape_label(v));
            }
            line.push('}');
        }
        // Two counters sanitised to the same series: keep the first.
        if seen.insert(line.clone()) {
            let _ = writeln!(out, "{line} {}", number(s.value));
        }
    }
}

/// `v` as Prometheus writes floats.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A metric (`metric = true`) or label name with every character Prometheus
/// does not allow replaced by `_`.
fn sanitize(s: &str, metric: bool) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || (metric && c == ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if !metric && out.starts_with("__") {
        // `__` names are Prometheus's own.
        out.replace_range(..2, "x_");
    }
    out
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A family in `families`, created with `help` and `kind` if new.
fn family(
    families: &mut BTreeMap<String, Family>,
    name: String,
    kind: Kind,
    help: impl FnOnce() -> String,
) -> &mut Family {
    families
        .entry(name.clone())
        .or_insert_with(|| Family::new(name, help(), kind))
}

/// Where one counter goes: family name, type, help, extra labels.
struct Mapped {
    name: String,
    kind: Kind,
    help: String,
    labels: Vec<(String, String)>,
}

/// A family name part from a counter name part: sanitised, lower case,
/// without a trailing `_total` (added back for counters).
fn part(s: &str) -> String {
    let s = sanitize(s, false).to_ascii_lowercase();
    s.strip_suffix("_total").map(str::to_string).unwrap_or(s)
}

/// A counter or gauge family for `base` (`shmnet_…` without `_total`).
fn counter_or_gauge(
    base: String,
    gauge: bool,
    help: String,
    labels: Vec<(String, String)>,
) -> Mapped {
    if gauge {
        Mapped {
            name: base,
            kind: Kind::Gauge,
            help,
            labels,
        }
    } else {
        Mapped {
            name: format!("{base}_total"),
            kind: Kind::Counter,
            help,
            labels,
        }
    }
}

/// Maps a function counter (without `function.`), apps' latency buckets
/// excepted.
fn map_function(function: &str, name: &str) -> Mapped {
    let gauge = is_gauge(function, name);
    let parts: Vec<&str> = name.split('.').collect();
    if let [kind, .., counter] = parts[..]
        && parts.len() >= 3
    {
        // `KIND.OBJECT.COUNTER`; the object may hold dots (`10.0.0.2:80`).
        let object = parts[1..parts.len() - 1].join(".");
        let label = if kind == "app" {
            "app".to_string()
        } else if RESERVED.contains(&kind) {
            "object".to_string()
        } else {
            part(kind)
        };
        let base = if kind == "app" {
            format!("shmnet_app_{}", part(counter))
        } else {
            format!("shmnet_function_{}_{}", part(kind), part(counter))
        };
        let help = format!("Function counter {kind}.*.{counter}, per {kind}.");
        return counter_or_gauge(base, gauge, help, vec![(label, object)]);
    }
    // The firewall's `rule3_packets`.
    if let Some(n) = name
        .strip_prefix("rule")
        .and_then(|r| r.strip_suffix("_packets"))
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
    {
        return counter_or_gauge(
            "shmnet_function_rule_packets".into(),
            false,
            "Packets that matched each firewall rule (by index).".into(),
            vec![("rule".into(), n.into())],
        );
    }
    let base = format!("shmnet_function_{}", part(&name.replace('.', "_")));
    let help = format!("Function counter {name}.");
    counter_or_gauge(base, gauge, help, Vec::new())
}

/// `app.NAME.latency_le_…`: the app and the bucket's bound in ms (`None`:
/// the overflow bucket).
fn latency_bucket(name: &str) -> Option<(&str, Option<u64>)> {
    let rest = name.strip_prefix("app.")?;
    let (app, bucket) = rest.rsplit_once('.')?;
    let le = bucket.strip_prefix("latency_le_")?;
    if le == "inf" {
        return Some((app, None));
    }
    let ms = le.strip_suffix("ms")?.parse().ok()?;
    Some((app, Some(ms)))
}

/// An app's latency buckets as counted, `(bound in ms, count)`, and the
/// overflow bucket's count.
type Latency = (Vec<(u64, u64)>, u64);

/// Adds one device's `shmnet_up` and counters to `families`.
fn add_device(families: &mut BTreeMap<String, Family>, d: &DeviceSample<'_>) {
    let base = vec![
        ("device".to_string(), d.device.to_string()),
        ("function".to_string(), d.function.to_string()),
    ];
    family(families, "shmnet_up".into(), Kind::Gauge, || {
        "Whether the manager's last poll of the device got an answer.".into()
    })
    .push(base.clone(), if d.up { 1.0 } else { 0.0 });
    // Latency buckets per app, gathered to be made cumulative.
    let mut latency: BTreeMap<&str, Latency> = BTreeMap::new();
    for (name, value) in d.counters {
        let mapped = if let Some(rest) = name.strip_prefix("function.") {
            if let Some((app, le)) = latency_bucket(rest) {
                let entry = latency.entry(app).or_default();
                match le {
                    Some(ms) => entry.0.push((ms, *value)),
                    None => entry.1 += value,
                }
                continue;
            }
            map_function(d.function, rest)
        } else if let Some((net @ ("local" | "global"), counter)) = name.split_once('.') {
            counter_or_gauge(
                format!("shmnet_adapter_{}", part(counter)),
                false,
                format!("Adapter counter {counter}, per network."),
                vec![("network".into(), net.into())],
            )
        } else {
            counter_or_gauge(
                format!("shmnet_nic_{}", part(&name.replace('.', "_"))),
                false,
                format!("Interface counter {name}."),
                Vec::new(),
            )
        };
        let mut labels = base.clone();
        labels.extend(mapped.labels);
        family(families, mapped.name, mapped.kind, || mapped.help).push(labels, *value as f64);
    }
    for (app, (mut buckets, overflow)) in latency {
        buckets.sort_unstable();
        let f = family(
            families,
            "shmnet_app_latency_seconds".into(),
            Kind::Histogram,
            || "Time from a request's head to its answer's head, per application.".into(),
        );
        let mut labels = base.clone();
        labels.push(("app".into(), app.into()));
        let mut cumulative = 0u64;
        for (ms, n) in buckets {
            cumulative = cumulative.saturating_add(n);
            let mut l = labels.clone();
            l.push(("le".into(), number(ms as f64 / 1000.0)));
            f.samples.push(Sample {
                labels: l,
                suffix: Some("_bucket"),
                value: cumulative as f64,
            });
        }
        cumulative = cumulative.saturating_add(overflow);
        let mut l = labels.clone();
        l.push(("le".into(), "+Inf".into()));
        f.samples.push(Sample {
            labels: l,
            suffix: Some("_bucket"),
            value: cumulative as f64,
        });
        // No `_sum`: the proxy counts buckets only.
        f.samples.push(Sample {
            labels,
            suffix: Some("_count"),
            value: cumulative as f64,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::{FunctionConfig, KINDS, build};
    use crate::stack::DeviceStats;
    use crate::stack::hook::counters_of;

    /// Every `[function]` table of the examples' TOML files, plus what
    /// they leave out (http-proxy apps, a cache).
    fn function_tables() -> Vec<toml::Table> {
        fn walk(dir: &std::path::Path, out: &mut Vec<toml::Table>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            entries.sort();
            for p in entries {
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|e| e == "toml") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    let t: toml::Table = toml::from_str(&text).unwrap();
                    let devices = t.get("device").and_then(|d| d.as_array()).cloned();
                    let tables = devices.unwrap_or_else(|| vec![toml::Value::Table(t)]);
                    for d in tables {
                        if let Some(toml::Value::Table(f)) = d.get("function") {
                            let mut f = f.clone();
                            // A manager's policy file is named relative to
                            // its own file.
                            if let Some(toml::Value::String(policy)) = f.get_mut("policy") {
                                let dir = p.parent().unwrap_or(std::path::Path::new("."));
                                *policy = dir.join(&*policy).display().to_string();
                            }
                            out.push(f);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
            &mut out,
        );
        for extra in [
            r#"kind = "http-proxy"
               pools = [{ name = "web", upstreams = ["10.0.0.2:80", "10.0.0.3:80"] }]
               routes = [{ pool = "web" }]
               apps = [{ name = "shop", path = "/shop" }, { name = "rest", path = "/" }]"#,
            r#"kind = "cache""#,
            r#"kind = "sink""#,
        ] {
            out.push(toml::from_str(extra).unwrap());
        }
        out
    }

    /// A counter table per built function, as a manager would poll it.
    fn snapshots() -> Vec<(String, Vec<(String, u64)>)> {
        let mut out = Vec::new();
        for (i, t) in function_tables().into_iter().enumerate() {
            let cfg: FunctionConfig = toml::Value::Table(t).try_into().unwrap();
            let Ok(f) = build(&cfg) else { continue };
            let mut s = DeviceStats::default();
            s.local.rx_frames = 10 + i as u64;
            s.global.tx_bytes = 1500;
            s.nic.forwarded = 3;
            s.function_counters = counters_of(&*f)
                .into_iter()
                .enumerate()
                .map(|(j, (n, _))| (n, j as u64))
                .collect();
            let table = s.counters().map(|(n, v)| (n.to_string(), v)).collect();
            out.push((cfg.kind().to_string(), table));
        }
        out
    }

    /// `/metrics` of one device, without the manager's own families.
    fn render_one(device: &str, function: &str, up: bool, counters: &[(String, u64)]) -> String {
        let d = DeviceSample {
            device,
            function,
            up,
            counters,
        };
        render(&[d], &[])
    }

    fn render_all() -> String {
        let snaps = snapshots();
        let names: Vec<String> = (0..snaps.len()).map(|i| format!("dev-{i}")).collect();
        let devices: Vec<DeviceSample<'_>> = snaps
            .iter()
            .zip(&names)
            .map(|((kind, c), name)| DeviceSample {
                device: name,
                function: kind,
                up: true,
                counters: c,
            })
            .collect();
        let mut probe = Family::new(
            "shmnet_probe_rtt_seconds",
            "Round-trip time of the last probe.",
            Kind::Gauge,
        );
        probe.push(vec![("target".into(), "10.0.0.3:80".into())], 0.0002);
        render(&devices, &[probe])
    }

    #[test]
    fn every_function_kind_is_covered() {
        let kinds: Vec<String> = snapshots().into_iter().map(|(k, _)| k).collect();
        for k in KINDS {
            assert!(kinds.iter().any(|x| x == k), "no example of {k}");
        }
    }

    #[test]
    fn promtool_accepts_every_function_kind() {
        let text = render_all();
        let Ok(mut child) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("skipped: promtool is not installed (apt-get install prometheus)");
            return;
        };
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && report.trim().is_empty(),
            "{report}\n{text}"
        );
    }

    #[test]
    fn families_are_grouped_typed_and_deterministic() {
        let text = render_all();
        assert_eq!(text, render_all());
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(current.clone()), "{current} interleaved");
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&current), "{line} outside {current}");
            }
        }
        for family in [
            "# TYPE shmnet_up gauge",
            "# TYPE shmnet_adapter_rx_frames_total counter",
            "# TYPE shmnet_nic_forwarded_total counter",
            "# TYPE shmnet_app_requests_total counter",
            "# TYPE shmnet_app_latency_seconds histogram",
            "# TYPE shmnet_function_queued_bytes gauge",
            "# TYPE shmnet_function_rule_packets_total counter",
            "# TYPE shmnet_function_bytes_total counter",
            "# TYPE shmnet_function_bytes gauge",
            "# TYPE shmnet_probe_rtt_seconds gauge",
        ] {
            assert!(text.contains(family), "{family} missing:\n{text}");
        }
    }

    #[test]
    fn latency_buckets_become_a_cumulative_histogram() {
        let mut c = vec![("function.app.shop.requests".to_string(), 6)];
        for (ms, n) in [
            (1, 1),
            (5, 2),
            (10, 0),
            (50, 0),
            (100, 0),
            (500, 0),
            (1000, 0),
            (5000, 1),
        ] {
            c.push((format!("function.app.shop.latency_le_{ms}ms"), n));
        }
        c.push(("function.app.shop.latency_le_inf".into(), 2));
        let text = render_one("p", "http-proxy", true, &c);
        let l = r#"device="p",function="http-proxy",app="shop""#;
        for want in [
            format!("shmnet_app_latency_seconds_bucket{{{l},le=\"0.001\"}} 1\n"),
            format!("shmnet_app_latency_seconds_bucket{{{l},le=\"0.005\"}} 3\n"),
            format!("shmnet_app_latency_seconds_bucket{{{l},le=\"5\"}} 4\n"),
            format!("shmnet_app_latency_seconds_bucket{{{l},le=\"+Inf\"}} 6\n"),
            format!("shmnet_app_latency_seconds_count{{{l}}} 6\n"),
            format!("shmnet_app_requests_total{{{l}}} 6\n"),
        ] {
            assert!(text.contains(&want), "{want} missing:\n{text}");
        }
    }

    #[test]
    fn hostile_names_and_values_are_sanitised_and_escaped() {
        let c = vec![
            ("function.backend.10.0.0.2:80.flows".to_string(), 4),
            ("function.we ird-näme".to_string(), 1),
            ("local.rx_frames".to_string(), 2),
        ];
        let text = render_one("a\"b\\c\nd", "balancer", false, &c);
        assert!(text.contains(
            "shmnet_function_backend_flows_total{device=\"a\\\"b\\\\c\\nd\",function=\"balancer\",backend=\"10.0.0.2:80\"} 4\n"
        ), "{text}");
        assert!(
            text.contains("shmnet_function_we_ird_n_me_total{"),
            "{text}"
        );
        assert!(text.contains("shmnet_up{device=\"a\\\"b\\\\c\\nd\",function=\"balancer\"} 0\n"));
    }

    #[test]
    #[ignore = "prints the rendered text of every example function"]
    fn dump() {
        println!("{}", render_all());
    }
}
