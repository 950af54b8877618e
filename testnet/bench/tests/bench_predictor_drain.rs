//! `brume-bench predictor --drain-trials 2` (what `brume bench predictor --drain-trials 2`
//! runs) on the small synthetic fixture: the replay, then two drain trials on local daemons.
//! It checks the BENCH line holds the replay's keys and the drain's, that two trials ran and
//! each printed its row with the task moved live, and that the figures are in range; it asserts
//! no percentage (whether a drain makes its deadline depends on the machine; BENCHMARKS.md
//! holds measured runs). Needs root and CRIU (a missing one is a skip, a failure under
//! `BRUME_REQUIRE`), the `brume` binary beside `brume-bench` and scripts/build-static.sh's
//! relay binary.

use std::process::Command;

mod common;

#[test]
fn predictor_bench_with_drain_trials_reports_the_drain_keys() {
    let test = "predictor_bench_with_drain_trials_reports_the_drain_keys";
    if !brume_testnet::require::criu(test) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("brume-test-bench-predictor-drain-")
        .tempdir()
        .expect("a temp dir");
    let svg = dir.path().join("curve.svg");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/predictor-fixture.csv"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_brume-bench"))
        .args(["predictor", "--trace", fixture, "--svg"])
        .arg(&svg)
        .args(["--drain-trials", "2"])
        .output()
        .expect("the brume-bench binary runs");
    let seen = common::bench_line(&out, "predictor");
    let mut keys: Vec<&str> = seen.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "drain_deadline_met_pct",
            "drain_trials",
            "dumps_to_learn",
            "early_pct",
            "late_pct",
            "lost_vs_mlr",
            "lost_vs_static",
            "over_budget_freezes",
            "pbmlr_dumps_to_learn",
            "pbmlr_late_pct"
        ]
    );
    assert_eq!(seen["drain_trials"], 2.0, "{seen:?}");
    // Two trials: 0, 50 or 100 % met; at most two freezes over budget.
    let pct = seen["drain_deadline_met_pct"];
    assert!([0.0, 50.0, 100.0].contains(&pct), "{seen:?}");
    let over = seen["over_budget_freezes"];
    assert!([0.0, 1.0, 2.0].contains(&over), "{seen:?}");

    // A row per trial, each with a measured live move (a downtime, no setup error).
    let stdout = String::from_utf8_lossy(&out.stdout);
    let header = stdout
        .lines()
        .position(|l| l.trim_start().starts_with("trial "))
        .unwrap_or_else(|| panic!("no trial table in\n{stdout}"));
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip(header + 1)
        .take_while(|l| !l.starts_with("drain ok:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], (i + 1).to_string(), "{stdout}");
        // trial, drain ok, seen, met, pred move, start at, move ms, pred down, downtime, over
        assert!(row.len() >= 10, "row {row:?}\n{stdout}");
        assert!(["on-time", "LATE"].contains(&row[1]), "{row:?}");
        assert!(["yes", "NO"].contains(&row[3]), "{row:?}");
        for (col, what) in [(4, "predicted move"), (6, "move duration"), (8, "downtime")] {
            let v: u64 = row[col]
                .parse()
                .unwrap_or_else(|e| panic!("no {what} in {row:?} ({e})\n{stdout}"));
            assert!(v > 0, "{what} of 0 in {row:?}");
        }
        assert!(["YES", "no"].contains(&row[9]), "{row:?}");
    }
}
