//! `brume-bench transfer --link` (what `brume bench transfer --link` runs) as an operator runs
//! it, on a tiny size: two overlay endpoints in two testbed namespaces over a 100 Mbit/s link,
//! each way once. It checks that the bench runs and reports a well-formed `BENCH transfer_link`
//! line whose figures are numbers (rates and ratios positive); it asserts no figure's quality (the ratios depend on
//! the machine and live in BENCHMARKS.md).

use std::process::Command;

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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("link shaped at 100 Mbit/s, RTT 2 ms, 2 MiB"),
        "{stdout}"
    );
    let last = stdout.lines().last().expect("some output");
    let rest = last
        .strip_prefix("BENCH transfer_link ")
        .unwrap_or_else(|| panic!("last line is not a BENCH line: {last}"));
    let mut seen = Vec::new();
    for kv in rest.split_whitespace() {
        let (k, v) = kv
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {kv}"));
        let v: f64 = v
            .parse()
            .unwrap_or_else(|_| panic!("{k}={v} is not a number"));
        // CPU times are counted in clock ticks: a tiny run may cost 0 of them.
        assert!(v.is_finite() && v >= 0.0, "{k}={v} is not a number >= 0");
        seen.push((k.to_string(), v));
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
        let v = seen.iter().find(|(s, _)| s == k).map(|(_, v)| *v);
        assert!(v.is_some_and(|v| v > 0.0), "no positive {k} in {last}");
    }
}
