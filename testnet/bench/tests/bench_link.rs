//! `brume-bench transfer --link` (what `brume bench transfer --link` runs) as an operator runs
//! it, on a tiny size: two overlay endpoints in two testbed namespaces over a 100 Mbit/s link,
//! each way once. It checks that the bench runs and reports a well-formed `BENCH transfer_link`
//! line whose figures are numbers (rates and ratios positive); it asserts no figure's quality (the ratios depend on
//! the machine and live in BENCHMARKS.md).

use std::process::Command;

mod common;

#[test]
fn link_bench_runs_and_reports_every_key() {
    if !brume_testnet::require::root("link_bench_runs_and_reports_every_key") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_brume-bench"))
        .args([
            "transfer",
            "--link",
            "--mbit",
            "100",
            "--rtt-ms",
            "2",
            "--size-mb",
            "2",
            "--runs",
            "1",
        ])
        .output()
        .expect("the brume-bench binary runs");
    let seen = common::bench_line(&out, "transfer_link");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("link shaped at 100 Mbit/s, RTT 2 ms, 2 MiB"),
        "{stdout}"
    );
    for (k, v) in &seen {
        // CPU times are counted in clock ticks: a tiny run may cost 0 of them.
        assert!(*v >= 0.0, "{k}={v} is not a number >= 0");
    }
    for k in [
        "transfer_ratio_100mbit",
        "fetch_ratio_100mbit",
        "wire_ratio_100mbit",
        "tcp_mb_s_100mbit",
        "tcp_file_mb_s_100mbit",
        "fetch_mb_s_100mbit",
        "wire_mb_s_100mbit",
    ] {
        let v = seen.get(k).copied();
        assert!(v.is_some_and(|v| v > 0.0), "no positive {k} in {seen:?}");
    }
}
