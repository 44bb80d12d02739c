//! Bad configuration files: the binary refuses them with a non-zero exit
//! code and an error that names the file, the field and the problem.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_shmnet");

const GOOD: &str = r#"
name = "a"
[function]
kind = "echo"
[local]
segment = "cfgerr-l"
address = "10.0.0.1/24"
[global]
segment = "cfgerr-g"
address = "10.1.0.1/16"
mtu = 9000
"#;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("shmnet-cfgerr-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `shmnet SUB FILE` on `text`; returns (exit code, stderr, file path).
fn run(sub: &str, file: &str, text: &str) -> (i32, String, String) {
    let path = dir().join(file);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .arg(sub)
        .arg(&path)
        .output()
        .expect("run shmnet");
    let code = out.status.code().unwrap_or(-1);
    (
        code,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

fn bad_device(file: &str, text: &str, needles: &[&str]) {
    let (code, err, path) = run("device", file, text);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(&path), "stderr does not name {path}: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

/// The same device text inside a topology file: `[[device]]` entries.
fn topology(device: &str) -> String {
    let mut t = String::from("name = \"bad\"\n[[device]]\n");
    for line in device.lines() {
        let l = line.trim();
        if l.starts_with('[') && l.ends_with(']') {
            let section = l.trim_matches(|c| c == '[' || c == ']');
            t.push_str(&format!("[device.{section}]\n"));
        } else {
            t.push_str(line);
            t.push('\n');
        }
    }
    t
}

fn bad_both(stem: &str, text: &str, needles: &[&str]) {
    bad_device(&format!("{stem}.toml"), text, needles);
    let (code, err, path) = run("run", &format!("{stem}-topo.toml"), &topology(text));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(&path), "stderr does not name {path}: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

#[test]
fn good_file_is_accepted_by_the_parser() {
    // Sanity check of the fixture: the topology rewrite of GOOD parses.
    let t = topology(GOOD);
    assert!(t.contains("[device.local]"), "{t}");
    shmnet::config::DeviceConfig::from_toml(GOOD, "good.toml").expect("GOOD is valid");
}

#[test]
fn missing_field() {
    bad_both(
        "missing",
        &GOOD.replace("segment = \"cfgerr-l\"\n", ""),
        &["missing field", "segment"],
    );
}

#[test]
fn mtu_out_of_range() {
    bad_both(
        "mtu",
        &GOOD.replace("mtu = 9000", "mtu = 70000"),
        &["global.mtu", "70000", "576..=65535"],
    );
}

#[test]
fn overlapping_subnets() {
    bad_both(
        "overlap",
        &GOOD.replace("10.1.0.1/16", "10.0.0.7/16"),
        &["global.address", "overlaps"],
    );
}

#[test]
fn unknown_function_kind() {
    bad_both(
        "kind",
        &GOOD.replace("kind = \"echo\"", "kind = \"teleport\""),
        &["teleport", "unknown function", "known kinds"],
    );
}

#[test]
fn missing_file() {
    let path = dir().join("does-not-exist.toml");
    let out = Command::new(BIN)
        .arg("device")
        .arg(&path)
        .output()
        .expect("run shmnet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("does-not-exist.toml"), "{err}");
}
