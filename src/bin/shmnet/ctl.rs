//! `shmnet ctl`: the operator's client of the manager's JSON API.
//!
//! A small blocking HTTP/1.1 client (one request per connection) and a
//! printer per command; `--json` prints the manager's answer as is.
//! Mutating commands authenticate with `Bearer` [`api_token`] of the
//! deployment secret (`--secret-file`, `SHMNET_SECRET_FILE`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use shmnet::functions::socket::manager::api::api_token;

mod client;

use client::{Client, Request};

/// How long a connect, a read or a write may take (probes wait longer).
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args)]
pub struct CtlCli {
    /// The manager's URL, e.g. http://10.82.0.2:9100 (default: $SHMNET_MANAGER).
    #[arg(long, global = true)]
    manager: Option<String>,
    /// The deployment secret, for commands that change something (default:
    /// $SHMNET_SECRET_FILE).
    #[arg(long, global = true)]
    secret_file: Option<PathBuf>,
    /// Print the manager's JSON answers as they are.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCmd,
}

#[derive(Subcommand)]
enum CtlCmd {
    /// List the devices the manager polls.
    Devices,
    /// Show a device's counters.
    Stats {
        device: String,
        /// Repeat every SECS seconds (default 1) with rates, until Ctrl-C.
        #[arg(long, num_args = 0..=1, default_missing_value = "1", value_name = "SECS")]
        watch: Option<f64>,
    },
    /// Give a device a new function, from a TOML file (its `[function]`
    /// table, or the whole file).
    Set {
        device: String,
        #[arg(long, value_name = "FILE.toml")]
        function: PathBuf,
    },
    /// Capture a device's adapter traffic to a pcap file (written by the device).
    Capture {
        device: String,
        #[arg(value_parser = ["local", "global"])]
        adapter: String,
        /// How long, e.g. 10s, 500ms, 2m.
        #[arg(long = "for", value_parser = parse_duration, default_value = "10s")]
        duration: Duration,
        /// The pcap file (made absolute here).
        #[arg(short = 'w', value_name = "FILE.pcap")]
        file: PathBuf,
    },
    /// Show the policy rules and the last decisions.
    Policy,
    /// Probe DEVICE's service at ADDR:PORT from the manager (DEVICE names
    /// the probe in the answer).
    Probe {
        device: String,
        target: String,
        #[arg(long, default_value = "tcp", value_parser = ["tcp", "icmp", "http", "memcached"])]
        kind: String,
        #[arg(long, default_value_t = 100)]
        count: u32,
        /// Between exchanges, e.g. 10ms.
        #[arg(long, value_parser = parse_duration, default_value = "10ms")]
        interval: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    shmnet::functions::matching::parse_duration(s)
        .map(|d| Duration::from_micros(d.total_micros()))
        .ok_or_else(|| format!("{s:?}: use e.g. 10s, 500ms, 2m"))
}

/// A failure to report: the message, already explained.
#[derive(Debug)]
struct Failed(String);

impl<E: std::fmt::Display> From<E> for Failed {
    fn from(e: E) -> Failed {
        Failed(e.to_string())
    }
}

/// Runs `shmnet ctl`; returns the exit code.
pub fn main(cli: &CtlCli, stop: &AtomicBool) -> i32 {
    match run(cli, stop) {
        Ok(()) => 0,
        Err(Failed(why)) => {
            eprintln!("shmnet ctl: {why}");
            1
        }
    }
}

fn run(cli: &CtlCli, stop: &AtomicBool) -> Result<(), Failed> {
    let manager = match &cli.manager {
        Some(m) => m.clone(),
        None => std::env::var("SHMNET_MANAGER").map_err(|_| {
            Failed(
                "which manager? pass --manager URL (e.g. http://10.82.0.2:9100) \
                 or set SHMNET_MANAGER"
                    .into(),
            )
        })?,
    };
    let client = Client::new(&manager).map_err(Failed)?;
    let token = || token(cli.secret_file.as_deref());
    match &cli.command {
        CtlCmd::Devices => {
            let v = client.get("/api/devices")?;
            if cli.json {
                return print_json(&v);
            }
            print_devices(&v);
        }
        CtlCmd::Stats { device, watch } => stats(&client, device, *watch, cli.json, stop)?,
        CtlCmd::Set { device, function } => {
            let token = token()?;
            let body = function_body(function)?;
            let v = client.send(
                Request::new("PUT", format!("/api/devices/{}/function", encode(device)))
                    .token(&token)
                    .body("application/toml", body),
            )?;
            if cli.json {
                return print_json(&v);
            }
            let applied = match v["applied"].as_str() {
                Some("in-place") => "in place",
                Some(other) => other,
                None => "applied",
            };
            println!(
                "{device}: function {} applied ({applied})",
                v["function"].as_str().unwrap_or("?")
            );
        }
        CtlCmd::Capture {
            device,
            adapter,
            duration,
            file,
        } => capture(
            &client,
            &token()?,
            device,
            adapter,
            *duration,
            file,
            cli.json,
            stop,
        )?,
        CtlCmd::Policy => {
            let v = client.get("/api/policy")?;
            if cli.json {
                return print_json(&v);
            }
            print_policy(&v);
        }
        CtlCmd::Probe {
            device,
            target,
            kind,
            count,
            interval,
        } => {
            let interval_ms = interval.as_millis().min(u128::from(u32::MAX)) as u32;
            let body = json!({
                "device": device,
                "target": target,
                "kind": kind,
                "count": count,
                "interval_ms": interval_ms,
            });
            // The answer comes when every exchange is done.
            let wait = *interval * *count + Duration::from_secs(u64::from(*count).min(60) + 10);
            let v = client.send(
                Request::new("POST", "/api/probe")
                    .token(&token()?)
                    .body("application/json", body.to_string())
                    .read_timeout(wait.max(TIMEOUT)),
            )?;
            if cli.json {
                return print_json(&v);
            }
            print_probe(device, &v);
        }
    }
    Ok(())
}

/// The bearer token of the secret in `path` (or `$SHMNET_SECRET_FILE`).
fn token(path: Option<&Path>) -> Result<String, Failed> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("SHMNET_SECRET_FILE")
            .map(PathBuf::from)
            .ok_or_else(|| {
                Failed(
                    "this command needs the API secret: pass --secret-file PATH \
                     or set SHMNET_SECRET_FILE"
                        .into(),
                )
            })?,
    };
    let raw = std::fs::read(&path)
        .map_err(|e| Failed(format!("cannot read the secret {}: {e}", path.display())))?;
    Ok(api_token(&secret_bytes(&raw)))
}

/// A secret file's bytes: trimmed of whitespace, hex-decoded if it is all
/// hex digits of even length ≥ 32, else as is.
fn secret_bytes(raw: &[u8]) -> Vec<u8> {
    let t = raw.trim_ascii();
    if t.len() >= 32 && t.len().is_multiple_of(2) && t.iter().all(u8::is_ascii_hexdigit) {
        let nibble = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
        t.chunks(2)
            .map(|p| nibble(p[0]) << 4 | nibble(p[1]))
            .collect()
    } else {
        t.to_vec()
    }
}

/// The text `ctl set` sends: the file's `[function]` table (or the whole
/// file if it has none) re-serialised, with the paths it names relative to
/// the file made absolute, so the device reads the files this one means.
fn function_body(path: &Path) -> Result<String, Failed> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failed(format!("cannot read {}: {e}", path.display())))?;
    let mut table: toml::Table = toml::from_str(&text)
        .map_err(|e| Failed(format!("{}: {}", path.display(), e.message())))?;
    let mut function = match table.remove("function") {
        Some(f @ toml::Value::Table(_)) => f,
        _ => toml::Value::Table(table),
    };
    let base = path.parent().unwrap_or(Path::new("."));
    shmnet::config::absolute_function_paths(&mut function, base);
    Ok(toml::to_string(&function)?)
}

/// `s` percent-encoded for a path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn print_json(v: &Value) -> Result<(), Failed> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Rows printed as columns, each as wide as its widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        other => other.to_string(),
    }
}

/// The fields `keys` of the JSON object `v`, as [`cell`]s.
fn cells<const N: usize>(v: &Value, keys: [&str; N]) -> [String; N] {
    keys.map(|k| cell(&v[k]))
}

fn uptime(v: &Value) -> String {
    let Some(s) = v.as_f64() else {
        return "-".into();
    };
    let whole = s as u64;
    match whole {
        0..60 => format!("{s:.1}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        3600..86400 => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
        _ => format!("{}d{:02}h", whole / 86400, whole % 86400 / 3600),
    }
}

/// The elements of a JSON array (none if `v` is not one).
fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn print_devices(v: &Value) {
    let rows: Vec<Vec<String>> = items(&v["devices"])
        .iter()
        .map(|d| {
            let up = match (&d["up"], &d["error"]) {
                (Value::Bool(true), _) => "up".to_string(),
                (_, Value::String(e)) => format!("down ({e})"),
                _ => "down".to_string(),
            };
            vec![
                cell(&d["name"]),
                cell(&d["function"]),
                cell(&d["address"]),
                up,
                uptime(&d["uptime_s"]),
            ]
        })
        .collect();
    print_table(&["NAME", "FUNCTION", "ADDRESS", "UP", "UPTIME"], &rows);
}

/// A device's counters, sorted by name.
fn counters(v: &Value) -> Vec<(String, u64)> {
    let mut c: Vec<(String, u64)> = v["counters"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    c.sort();
    c
}

fn stats(
    client: &Client,
    device: &str,
    watch: Option<f64>,
    json: bool,
    stop: &AtomicBool,
) -> Result<(), Failed> {
    let path = format!("/api/devices/{}", encode(device));
    let every = match watch {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s <= 86400.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => return Err(Failed(format!("--watch {s}: use seconds above 0"))),
    };
    let clear = std::io::stdout().is_terminal();
    let mut last: Option<(Instant, Vec<(String, u64)>)> = None;
    loop {
        let v = client.get(&path)?;
        let now = Instant::now();
        if json {
            print_json(&v)?;
        } else {
            if every.is_some() && clear {
                // Each round replaces the last on screen.
                print!("\x1b[H\x1b[2J");
            }
            println!(
                "{} [{}] {} {}, uptime {}",
                cell(&v["name"]),
                cell(&v["function"]),
                cell(&v["address"]),
                if v["up"] == Value::Bool(true) {
                    "up"
                } else {
                    "down"
                },
                uptime(&v["identity"]["uptime_s"]),
            );
            let c = counters(&v);
            match &last {
                None if every.is_none() => {
                    let rows: Vec<Vec<String>> = c
                        .iter()
                        .map(|(k, n)| vec![k.clone(), n.to_string()])
                        .collect();
                    print_table(&["COUNTER", "VALUE"], &rows);
                }
                _ => {
                    let rows: Vec<Vec<String>> = c
                        .iter()
                        .map(|(k, n)| {
                            let rate = last.as_ref().and_then(|(at, prev)| {
                                let (_, p) = prev.iter().find(|(pk, _)| pk == k)?;
                                let secs = now.duration_since(*at).as_secs_f64();
                                (secs > 0.0).then(|| n.saturating_sub(*p) as f64 / secs)
                            });
                            let rate = rate.map_or("-".into(), |r| format!("{r:.1}"));
                            vec![k.clone(), n.to_string(), rate]
                        })
                        .collect();
                    print_table(&["COUNTER", "VALUE", "RATE/s"], &rows);
                }
            }
            last = Some((now, c));
        }
        std::io::stdout().flush()?;
        let Some(every) = every else {
            return Ok(());
        };
        if !sleep(every, stop, |_| {}) {
            return Ok(());
        }
    }
}

/// Sleeps `d` in small steps, calling `tick` with the time slept so far;
/// false if stopped (Ctrl-C) first.
fn sleep(d: Duration, stop: &AtomicBool, mut tick: impl FnMut(Duration)) -> bool {
    let start = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let gone = start.elapsed();
        if gone >= d {
            return true;
        }
        tick(gone);
        std::thread::sleep((d - gone).min(Duration::from_millis(100)));
    }
}

#[allow(clippy::too_many_arguments)]
fn capture(
    client: &Client,
    token: &str,
    device: &str,
    adapter: &str,
    duration: Duration,
    file: &Path,
    json: bool,
    stop: &AtomicBool,
) -> Result<(), Failed> {
    let file = if file.is_absolute() {
        file.to_path_buf()
    } else {
        std::env::current_dir()?.join(file)
    };
    let file = file
        .to_str()
        .ok_or_else(|| Failed(format!("{}: not UTF-8", file.display())))?;
    // The device stops on its own a little after us, should we die.
    let seconds = duration.as_secs_f64().ceil().max(1.0) as u64 + 1;
    let path = format!("/api/devices/{}/capture", encode(device));
    let body = json!({ "adapter": adapter, "seconds": seconds, "file": file });
    let started = client.send(
        Request::new("POST", path.as_str())
            .token(token)
            .body("application/json", body.to_string()),
    )?;
    if json {
        print_json(&started)?;
    }
    let progress = std::io::stderr().is_terminal();
    sleep(duration, stop, |gone| {
        if progress {
            eprint!(
                "\rcapturing {adapter} of {device}: {:.0}/{:.0} s ",
                gone.as_secs_f64(),
                duration.as_secs_f64()
            );
        }
    });
    if progress {
        eprintln!();
    }
    let v =
        client.send(Request::new("DELETE", format!("{path}?adapter={adapter}")).token(token))?;
    if json {
        return print_json(&v);
    }
    println!(
        "{device}: captured {} frames, {} bytes on {adapter} to {file}",
        cell(&v["frames"]),
        cell(&v["bytes"])
    );
    Ok(())
}

fn print_policy(v: &Value) {
    println!(
        "policy {}{}",
        cell(&v["file"]),
        if v["dry_run"] == Value::Bool(true) {
            " (dry run)"
        } else {
            ""
        }
    );
    let rows: Vec<Vec<String>> = items(&v["rules"])
        .iter()
        .map(|r| {
            cells(
                r,
                [
                    "name",
                    "state",
                    "since_ms",
                    "fired",
                    "reverted",
                    "suppressed",
                ],
            )
            .to_vec()
        })
        .collect();
    print_table(
        &[
            "RULE",
            "STATE",
            "SINCE_MS",
            "FIRED",
            "REVERTED",
            "SUPPRESSED",
        ],
        &rows,
    );
    let decisions = items(&v["decisions"]);
    if decisions.is_empty() {
        println!("no decisions yet");
        return;
    }
    println!("last decisions:");
    for d in decisions {
        let [id, at, rule, transition, why] =
            cells(d, ["id", "at_ms", "rule", "transition", "why"]);
        println!("  #{id} at {at} ms: {rule} {transition}: {why}");
        for a in items(&d["actions"]) {
            println!("      action: {}", cell(a));
        }
        for r in items(&d["results"]) {
            println!("      result: {}", cell(r));
        }
    }
}

fn print_probe(device: &str, v: &Value) {
    let loss = v["loss"]
        .as_f64()
        .map_or("-".into(), |l| format!("{:.1}%", l * 100.0));
    let ms = |k: &str| {
        v["rtt_ms"][k]
            .as_f64()
            .map_or("-".into(), |x| format!("{x:.3}"))
    };
    let [kind, target, sent, received] = cells(v, ["kind", "target", "sent", "received"]);
    let [min, avg, max] = ["min", "avg", "max"].map(ms);
    println!(
        "{kind} {target} ({device}) from the manager: {sent} sent, {received} received, \
         {loss} loss; rtt min/avg/max {min}/{avg}/{max} ms"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_hex_are_decoded_others_taken_as_they_are() {
        let hex = "00112233445566778899aabbccddeeff";
        assert_eq!(
            secret_bytes(format!(" {hex}\n").as_bytes())[..3],
            [0, 0x11, 0x22]
        );
        assert_eq!(secret_bytes(hex.as_bytes()).len(), 16);
        assert_eq!(secret_bytes(b"abc\n"), b"abc");
        assert_eq!(secret_bytes(&hex.as_bytes()[1..]), &hex.as_bytes()[1..]);
    }

    #[test]
    fn a_function_sent_by_set_names_its_key_files_as_the_file_does() {
        let dir = std::env::temp_dir().join(format!("shmnet-ctl-set-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rekey.toml");
        let body = |text: &str| {
            std::fs::write(&file, text).unwrap();
            let sent: toml::Table = toml::from_str(&function_body(&file).unwrap()).unwrap();
            sent
        };
        let with_table = body(
            "name = \"e1\"\n[function]\nkind = \"encrypt\"\n\
             outbound = { spi = 0x1001, key_file = \"out.key\" }\n\
             inbound = [{ spi = 0x2002, key_file = \"/etc/in.key\" }]\n",
        );
        let bare = body("kind = \"encrypt\"\noutbound = { spi = 1, key_file = \"out.key\" }\n");
        std::fs::remove_dir_all(&dir).unwrap();
        let abs = std::path::absolute(dir.join("out.key")).unwrap();
        for sent in [&with_table, &bare] {
            assert_eq!(sent["kind"].as_str(), Some("encrypt"));
            assert_eq!(
                sent["outbound"]["key_file"].as_str(),
                Some(abs.to_str().unwrap())
            );
        }
        assert!(with_table.get("name").is_none());
        assert_eq!(
            with_table["inbound"][0]["key_file"].as_str(),
            Some("/etc/in.key")
        );
    }
}
