//! The far side of a process-mode run: a child `shmnet bench-peer`, and
//! the host segments it shares with this process; how a bench starts this
//! program as a child.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use shmnet::shm::Segment;

use super::Res;

/// The far side of a process-mode run.
pub(super) struct PeerProc {
    child: Child,
    /// Closed by `finish`: a peer that serves until told to stop reads
    /// its stdin to EOF.
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

/// `shmnet SUBCOMMAND ARGS…` (this program) started as a child: its stdin
/// as given, its stdout piped to us, its stderr ours.
pub(super) fn spawn_shmnet(
    subcommand: &str,
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    stdin: Stdio,
) -> Res<Child> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(exe)
        .arg(subcommand)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn shmnet {subcommand}: {e}"))
}

impl PeerProc {
    pub(super) fn spawn(args: &[String]) -> Res<PeerProc> {
        let mut child = spawn_shmnet("bench-peer", args, Stdio::piped())?;
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let stdin = child.stdin.take();
        let mut p = PeerProc { child, stdin, out };
        let line = p.line()?;
        if line != "ready" {
            return Err(format!("bench-peer said {line:?}, expected ready"));
        }
        Ok(p)
    }

    pub(super) fn line(&mut self) -> Res<String> {
        let mut s = String::new();
        match self.out.read_line(&mut s) {
            Ok(0) => Err("bench-peer exited early".into()),
            Ok(_) => Ok(s.trim().to_string()),
            Err(e) => Err(format!("reading bench-peer: {e}")),
        }
    }

    pub(super) fn finish(mut self) -> Res<()> {
        drop(self.stdin.take());
        let t0 = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => return Err(format!("bench-peer: {st}")),
                Ok(None) if t0.elapsed() > Duration::from_secs(5) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err("bench-peer did not exit".into());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Removes what is left of host networks when dropped.
pub(super) struct Unlink(pub(super) Vec<String>);

impl Drop for Unlink {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Segment::remove_if_unused(n);
        }
    }
}
