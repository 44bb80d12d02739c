//! `shmnet bench`: throughput and latency against the kernel path.
//! (Being written: see the bench helper.)

/// Arguments of `shmnet bench`.
#[derive(Debug, clap::Args)]
pub struct BenchCli {
    /// Short smoke run.
    #[arg(long)]
    pub quick: bool,
}

/// Runs the benchmarks; returns the process exit code.
pub fn main(_args: &BenchCli) -> i32 {
    0
}

/// Entry point of the hidden `bench-peer` subcommand (the far side of a
/// process-mode benchmark).
pub fn peer_main(_args: &[String]) -> i32 {
    0
}
