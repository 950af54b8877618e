//! `brume-bench overlay` (what `brume bench overlay` runs) as an operator runs it: the built binary, a smoke run on the synthetic
//! model, a run on an RTT matrix file it wrote itself, and refusals of broken matrix files.
//!
//! These tests check that the bench runs and reports: a well-formed `BENCH overlay` line whose
//! figures are numbers in their possible ranges (a percentage within 0-100, a count or a size
//! not negative). They assert no figure's quality: the bench measures an idle real daemon (RSS,
//! CPU), which depends on the machine, and the simulation's recall and Vivaldi error are
//! asserted on pinned seeds by brume-testnet's `sim` tests.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

mod common;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_brume-bench"))
        .arg("overlay")
        .args(args)
        .output()
        .expect("the brume-bench binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The last stdout line, checked to be `BENCH overlay key=number ...` with every key the bench
/// promises, as a map.
fn bench_line(out: &Output) -> HashMap<String, f64> {
    let keys = common::bench_line(out, "overlay");
    for k in [
        "recall_pct",
        "msgs_per_region_link",
        "vivaldi_median_err_pct",
        "idle_rss_mb",
        "idle_cpu_pct",
        "direct_recall_pct",
    ] {
        assert!(keys.contains_key(k), "{k} missing from {keys:?}");
    }
    // Possible values, not good ones.
    assert!((0.0..=100.0).contains(&keys["recall_pct"]), "{keys:?}");
    assert!(
        (0.0..=100.0).contains(&keys["direct_recall_pct"]),
        "{keys:?}"
    );
    for k in [
        "msgs_per_region_link",
        "vivaldi_median_err_pct",
        "idle_cpu_pct",
    ] {
        assert!(keys[k] >= 0.0, "{k} is negative: {keys:?}");
    }
    // A real daemon was measured: it has some resident memory.
    assert!(keys["idle_rss_mb"] > 0.0, "{keys:?}");
    keys
}

#[test]
fn quick_run_ends_with_a_well_formed_bench_line() {
    let out = bench(&["--quick"]);
    bench_line(&out);
    let stdout = text(&out.stdout);
    for budget in ["10", "25", "50", "80"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(budget)),
            "no row for budget {budget} in\n{stdout}"
        );
    }
    assert!(stdout.contains("flood/map"), "{stdout}");
    assert!(stdout.contains("direct maps (issue 17"), "{stdout}");
}

#[test]
fn runs_on_a_matrix_file_it_wrote() {
    let dir = tempdir();
    let path = dir.path().join("rtt.txt");
    let p = path.to_str().unwrap();
    let out = bench(&["--write-matrix", p, "--nodes", "150", "--seed", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Mark one pair unmeasured both ways, as a published dataset would.
    let written = std::fs::read_to_string(&path).unwrap();
    let mut rows: Vec<Vec<String>> = written
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), 150);
    assert!(rows.iter().all(|r| r.len() == 150));
    rows[0][1] = "0".into();
    rows[1][0] = "-1".into();
    let edited: String = rows.iter().map(|r| r.join(" ") + "\n").collect();
    std::fs::write(&path, edited).unwrap();

    let out = bench(&["--rtt-matrix", p, "--maps", "4", "--budgets", "20,50"]);
    bench_line(&out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("150 nodes, 11174 of 11175 pairs measured"),
        "{stdout}"
    );

    // The second, differently clustered model writes a different matrix of the same shape.
    let metro = dir.path().join("metro.txt");
    let m = metro.to_str().unwrap();
    let out = bench(&[
        "--write-matrix",
        m,
        "--model",
        "metro",
        "--nodes",
        "150",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let metro_text = std::fs::read_to_string(&metro).unwrap();
    assert!(
        metro_text.starts_with("# brume synthetic model Metro"),
        "{metro_text:.200}"
    );
    assert_eq!(
        metro_text.lines().filter(|l| !l.starts_with('#')).count(),
        150
    );
    assert_ne!(
        metro_text.lines().nth(1),
        written.lines().nth(1),
        "the metro model wrote the internet model's first row"
    );
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("brume-test-bench-")
        .tempdir()
        .unwrap()
}

fn refused(content: &str, expect: &[&str]) {
    let dir = tempdir();
    let path = dir.path().join("bad.txt");
    std::fs::write(&path, content).unwrap();
    let out = bench(&["--rtt-matrix", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "accepted {content:?}");
    assert!(
        !text(&out.stdout).contains("BENCH"),
        "{}",
        text(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    for e in expect {
        assert!(stderr.contains(e), "{e:?} not in {stderr}");
    }
}

#[test]
fn a_malformed_matrix_is_refused_with_a_clear_error() {
    refused(
        "0 1 2\n1 0 x3\n2 3 0\n",
        &["bad.txt:2:5", "`x3` is not a number"],
    );
    refused("0 1 2\n1 0\n2 1 0\n", &["bad.txt:2", "row has 2 entries"]);
    refused("0 1 2\n1 0 3\n", &["must be square"]);
    refused("# nothing\n", &["no rows"]);
    refused("0 -1\n-1 0\n", &["measured pairs"]);
    let out = bench(&[
        "--rtt-matrix",
        Path::new("/nonexistent/rtt.txt").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot read RTT matrix /nonexistent/rtt.txt"));
}
