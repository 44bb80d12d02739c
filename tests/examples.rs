//! Every sample topology in `examples/` runs (as threads of this process)
//! and its probes succeed, so the examples the README points to keep working.

use std::path::Path;

use shmnet::config::RunMode;
use shmnet::topology::{RunOptions, run_file};

#[test]
fn every_example_topology_runs_and_its_probes_succeed() {
    let mut dirs: Vec<_> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
            .expect("examples/ exists")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("topology.toml").is_file())
            // TAP ports and VXLAN gateways need root and a Linux peer:
            // tests/tap.rs and tests/vxlan.rs run those examples.
            .filter(|p| {
                let text = std::fs::read_to_string(p.join("topology.toml")).unwrap_or_default();
                !text.contains("[[tap]]") && !text.contains("[[vxlan]]")
            })
            .collect();
    dirs.sort();
    assert!(dirs.len() >= 5, "{dirs:?}");
    for dir in dirs {
        let opts = RunOptions {
            duration: Some(std::time::Duration::from_secs(60)),
            mode: Some(RunMode::Thread),
            ..Default::default()
        };
        let out = run_file(&dir.join("topology.toml"), &opts, |_| {})
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(
            out.ok,
            "{}: {:?}\n{:#?}",
            dir.display(),
            out.failures,
            out.reports
        );
        assert!(
            !out.reports.is_empty(),
            "{}: no probe reported",
            dir.display()
        );
    }
}
