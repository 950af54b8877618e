//! `brume-bench chaos` (what `brume bench chaos` runs) as an operator runs it, short: one run,
//! a 10 s partition, a 20 s bound. It checks that the bench runs and ends with a well-formed
//! `BENCH chaos` line holding every key, each figure a number not negative; it asserts no
//! figure's quality (times depend on the machine; BENCHMARKS.md holds measured runs). Needs
//! root (the process engine's tasks, /proc of their processes), CRIU (the crash of a task
//! checkpointed with CRIU), the `brume` binary beside `brume-bench` and
//! scripts/build-static.sh's relay binary.

use std::process::Command;

mod common;

#[test]
fn chaos_bench_runs_and_reports_every_key() {
    if !brume_testnet::require::root("chaos_bench_runs_and_reports_every_key")
        || !brume_testnet::require::criu("chaos_bench_runs_and_reports_every_key")
    {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_brume-bench"))
        .args([
            "chaos",
            "--runs",
            "1",
            "--partition-s",
            "10",
            "--bound-s",
            "20",
            "--heartbeat-ms",
            "300",
        ])
        .output()
        .expect("the brume-bench binary runs");
    let seen = common::bench_line(&out, "chaos");
    for k in [
        "detect_s",
        "recover_s",
        "duplicates_after_heal",
        "lost_tasks",
        "orphans_after_restart",
        "state_recover_s",
        "state_lost_calls",
        "state_lost_beyond_checkpoint",
    ] {
        let v = seen.get(k).copied();
        assert!(v.is_some_and(|v| v >= 0.0), "no {k} >= 0 in {seen:?}");
    }
    assert_eq!(seen.len(), 8, "{seen:?}");
}
