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

/// Runs `shmnet SUB FILE` on `text`: it must fail with an error that names
/// the file and holds each of `needles`. Returns the error.
fn refused(sub: &str, file: &str, text: &str, needles: &[&str]) -> String {
    let (code, err, path) = run(sub, file, text);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(&path), "stderr does not name {path}: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    err
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

/// [`refused`] as a device file (`shmnet device`) and inside a topology
/// file (`shmnet run`).
fn bad_both(stem: &str, text: &str, needles: &[&str]) {
    refused("device", &format!("{stem}.toml"), text, needles);
    refused(
        "run",
        &format!("{stem}-topo.toml"),
        &topology(text),
        needles,
    );
}

#[test]
fn good_file_is_accepted_by_the_parser() {
    // Sanity check of the fixture: the topology rewrite of GOOD parses.
    let t = topology(GOOD);
    assert!(t.contains("[device.local]"), "{t}");
    shmnet::config::DeviceConfig::from_toml(GOOD, "good.toml").expect("GOOD is valid");
}

#[test]
fn missing_or_bad_fields_are_refused_by_both_commands() {
    // GOOD with `from` replaced by `to`, named `stem`; what the error says.
    let cases: [(&str, &str, &str, &[&str]); 4] = [
        (
            "missing",
            "segment = \"cfgerr-l\"\n",
            "",
            &["missing field", "segment"],
        ),
        (
            "mtu",
            "mtu = 9000",
            "mtu = 70000",
            &["global.mtu", "70000", "576..=65535"],
        ),
        (
            "overlap",
            "10.1.0.1/16",
            "10.0.0.7/16",
            &["global.address", "overlaps"],
        ),
        (
            "kind",
            "\"echo\"",
            "\"teleport\"",
            &["teleport", "unknown function", "known kinds"],
        ),
    ];
    for (stem, from, to, needles) in cases {
        bad_both(stem, &GOOD.replace(from, to), needles);
    }
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

#[test]
fn missing_device_file_is_named_with_the_topology_that_names_it() {
    refused(
        "run",
        "names-missing.toml",
        "name = \"t\"\n[[device]]\nfile = \"not-written.toml\"\n",
        &["device[0].file", "not-written.toml: cannot read"],
    );
}

#[test]
fn a_huge_value_is_quoted_short_with_its_length() {
    let huge = "x".repeat(50_000_000);
    let cases = [
        // Refused by validation, and by the TOML parser (unknown variant).
        ("huge-address", GOOD.replace("10.0.0.1/24", &huge)),
        (
            "huge-medium",
            GOOD.replace("mtu = 9000", &format!("mtu = 9000\nmedium = \"{huge}\"")),
        ),
    ];
    for (stem, text) in cases {
        let (code, err, path) = run("device", &format!("{stem}.toml"), &text);
        assert_ne!(code, 0, "{stem}");
        assert!(err.len() < 1000, "{stem}: {} bytes of error", err.len());
        assert!(err.contains(&path), "{stem}: {err}");
        assert!(
            err.contains(&format!("{}…", "x".repeat(80))) && err.contains("(50000000 bytes)"),
            "{stem}: {err}"
        );
        assert!(!err.contains(&"x".repeat(81)), "{stem}: {err}");
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn medium_and_mode_errors_carry_no_function_hint() {
    let err = refused(
        "device",
        "medium.toml",
        &GOOD.replace("mtu = 9000", "mtu = 9000\nmedium = \"ipx\""),
        &["medium = \"ipx\"", "expected `ethernet` or `ip`"],
    );
    assert!(!err.contains("function"), "{err}");
    let err = refused(
        "run",
        "mode-topo.toml",
        &topology(GOOD).replace("name = \"bad\"", "name = \"bad\"\nmode = \"fork\""),
        &["fork", "expected `thread` or `process`"],
    );
    assert!(!err.contains("function"), "{err}");
}

#[test]
fn inline_devices_run_as_processes_and_leave_no_run_directory() {
    // Inline devices are written out as device files for their processes,
    // in a directory that goes with the run.
    let path = dir().join("inline-topo.toml");
    std::fs::write(&path, topology(GOOD)).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--mode", "process", "--duration", "1"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run shmnet");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(said.contains("device a ready"), "{said}");
    let run_dir = std::env::temp_dir().join(format!("shmnet-run-{pid}"));
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
}

#[test]
fn socket_buffer_out_of_range() {
    bad_both(
        "sockets",
        &format!("{GOOD}[sockets]\ntcp_buffer = 100\n"),
        &["sockets.tcp_buffer", "100", "1 KiB..=1 GiB"],
    );
}
