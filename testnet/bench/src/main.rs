//! `brume-bench NAME`: runs one benchmark family and prints its table, then one
//! `BENCH NAME key=value ...` line. `brume bench NAME` runs this program.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "brume-bench",
    version,
    about = "brume's benchmarks: each family prints a table a person can read, then one \
             machine-readable `BENCH name key=value ...` line. Use a release build."
)]
struct Cli {
    #[command(subcommand)]
    family: Family,
}

#[derive(Subcommand)]
enum Family {
    /// Quality of randomized rounding against the exact optimum and greedy, and its speed.
    Placement(brume_bench::placement::PlacementArgs),
    /// Neighbourhood mapping in the discrete-event simulator: recall, messages against flooding,
    /// completion against the budget, Vivaldi error; on the synthetic model or an RTT matrix file.
    Overlay(brume_bench::overlay::OverlayArgs),
    /// Deployment on three local daemons (cold and warm) against docker-compose of the same
    /// image, artifact transfer against plain TCP, tunnels against direct connections. Needs
    /// Docker, docker-compose and scripts/build-static.sh's relay binary.
    Deploy(brume_bench::deploy::DeployArgs),
    /// Artifact chunk fetch over the overlay against a plain TCP copy of the same bytes, on
    /// loopback; with --link (root), artifact fetches and migration streams against TCP over a
    /// testbed link shaped to 100 Mbit/s and 1 Gbit/s.
    Transfer(brume_bench::transfer::TransferArgs),
    /// Tunnel throughput and round trip against a direct TCP connection.
    Tunnel(brume_bench::tunnel::TunnelArgs),
    /// Live migration (iterative pre-copy, chunk deltas, adaptive compression) against
    /// stop-and-copy of the same task, over links shaped to 100 Mbit/s and 1 Gbit/s between
    /// network namespaces. Needs root and CRIU.
    Migration(brume_bench::migration::MigrationArgs),
    /// A Docker container moved live by brume's runc checkpointer on this host: full-dump
    /// pre-copy against post-copy (a lazy runc checkpoint, pages after the restore), at several
    /// sizes, alternated. Needs root, Docker 20.10, runc and CRIU.
    DockerMoves(brume_bench::docker_moves::DockerMovesArgs),
    /// Failures on four local daemons (process engine): a crashed host (detection, recovery,
    /// lost instances), a frozen one thawed after --partition-s (duplicates after the heal),
    /// a restarted one (orphan tasks). Needs scripts/build-static.sh's relay binary.
    Chaos(brume_bench::chaos::ChaosArgs),
    /// Federated learning on the UCI digits (examples/fedavg) on local daemons (process
    /// engine): a per-round timeline, the aggregator moved live with CRIU mid-training, a
    /// trainer's node killed and its trainer placed again, rounds per minute with and without
    /// them, the move's pause, the picture. Needs root, CRIU and scripts/build-static.sh.
    Fedavg(brume_bench::fedavg::FedavgArgs),
    /// Checkpoint-duration prediction (seed 000) on a trace of real dumps: PB-MLR, least-squares
    /// MLR, the Bayesian model and the best static value replayed online; late/early %, lost
    /// computation, MAE, cross-validated R², the learning curve as an SVG.
    Predictor(brume_bench::predictor::PredictorArgs),
    /// Traces of real systems written as data files, not benchmarks: `trace checkpoints` runs
    /// real CRIU dumps of varied workloads and writes features and durations as CSV (the
    /// predictor bench's input). Needs root and CRIU.
    Trace(brume_bench::trace::TraceArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.family {
        Family::Placement(args) => brume_bench::placement::run(args),
        Family::Overlay(args) => brume_bench::overlay::run(args),
        Family::Deploy(args) => brume_bench::deploy::run(args),
        Family::Transfer(args) => brume_bench::transfer::cli(args),
        Family::Tunnel(args) => brume_bench::tunnel::cli(args),
        Family::Migration(args) => brume_bench::migration::run(args),
        Family::DockerMoves(args) => brume_bench::docker_moves::run(args),
        Family::Chaos(args) => brume_bench::chaos::run(args),
        Family::Fedavg(args) => brume_bench::fedavg::run(args),
        Family::Predictor(args) => brume_bench::predictor::run(args),
        Family::Trace(args) => brume_bench::trace::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
