//! `brume place` as an operator runs it: the built binary on the shipped examples and on broken
//! copies of them, each test in its own temporary directory. Plans are checked against the network
//! file read here independently, not through the code that made them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const POLICIES: [&str; 6] = [
    "latency",
    "load",
    "energy",
    "cost",
    "reliability",
    "mix:latency=1,load=50",
];

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn network() -> PathBuf {
    examples().join("networks/edge-lab.toml")
}

fn manifest() -> PathBuf {
    examples().join("fedavg/service.toml")
}

fn place(net: &Path, graph: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_brume"))
        .arg("place")
        .arg("--network")
        .arg(net)
        .arg("--graph")
        .arg(graph)
        .args(extra)
        .output()
        .expect("the brume binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn toml_table(path: &Path) -> toml::Table {
    read(path)
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn array<'a>(t: &'a toml::Table, key: &str) -> &'a [toml::Value] {
    t.get(key)
        .and_then(toml::Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn float(v: &toml::Value) -> f64 {
    v.as_float()
        .or_else(|| v.as_integer().map(|i| i as f64))
        .unwrap_or_else(|| panic!("{v} is not a number"))
}

fn string<'a>(t: &'a toml::Value, key: &str) -> &'a str {
    t.get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("no string {key} in {t}"))
}

/// The RTT between two hosts as the network file states it: 0 to itself, a measured link, else
/// the coordinates' prediction (distance plus heights), else unknown.
fn rtt(net: &toml::Table, a: &str, b: &str) -> Option<f64> {
    if a == b {
        return Some(0.0);
    }
    for l in array(net, "link") {
        let (x, y) = (string(l, "a"), string(l, "b"));
        if (x == a && y == b) || (x == b && y == a) {
            return l.get("rtt_ms").map(float);
        }
    }
    let coord = |id: &str| {
        array(net, "host")
            .iter()
            .find(|h| string(h, "id") == id)
            .and_then(|h| h.get("coord"))
            .and_then(toml::Value::as_array)
            .map(|c| c.iter().map(float).collect::<Vec<_>>())
    };
    let (ca, cb) = (coord(a)?, coord(b)?);
    Some(((ca[0] - cb[0]).powi(2) + (ca[1] - cb[1]).powi(2)).sqrt() + ca[2] + cb[2])
}

/// Asserts that a JSON plan obeys the manifest's latency bounds for every pair of replicas of every
/// call, keeps replicas apart, and puts the root on the initiator.
fn check_plan(doc: &Value, net: &toml::Table, service: &toml::Table) {
    assert_eq!(doc["feasible"], Value::Bool(true), "{doc}");
    let plan = doc["plan"].as_array().expect("a plan array");
    let hosts_of = |task: &str| -> Vec<String> {
        plan.iter()
            .filter(|p| p["task"] == task)
            .map(|p| p["host"].as_str().expect("host id").to_string())
            .collect()
    };
    for t in array(service, "task") {
        let name = string(t, "name");
        let hosts = hosts_of(name);
        let replicas = t
            .get("replicas")
            .and_then(toml::Value::as_integer)
            .unwrap_or(1);
        assert_eq!(hosts.len() as i64, replicas, "replicas of {name} in {doc}");
        let mut distinct = hosts.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            hosts.len(),
            "replicas of {name} share a host"
        );
    }
    let root = service["service"]["root"].as_str().expect("root");
    let initiator = net["initiator"].as_str().expect("initiator");
    assert_eq!(hosts_of(root), vec![initiator.to_string()]);
    for c in array(service, "call") {
        let bound = float(&c["latency_ms"]);
        for a in hosts_of(string(c, "from")) {
            for b in hosts_of(string(c, "to")) {
                let r = rtt(net, &a, &b);
                assert!(
                    r.is_some_and(|r| r <= bound),
                    "{} on {a} -> {} on {b}: rtt {r:?} over the bound {bound} ms ({})",
                    string(c, "from"),
                    string(c, "to"),
                    doc["policy"]
                );
            }
        }
    }
}

#[test]
fn places_the_shipped_example_with_every_policy_and_algorithm() {
    let service = toml_table(&manifest());
    for policy in POLICIES {
        for algorithm in ["rounding", "greedy", "exact"] {
            let out = place(
                &network(),
                &manifest(),
                &["--policy", policy, "--algorithm", algorithm],
            );
            let stdout = text(&out.stdout);
            assert!(
                out.status.success(),
                "{policy}/{algorithm} failed: {}",
                text(&out.stderr)
            );
            for t in array(&service, "task") {
                assert!(
                    stdout.contains(string(t, "name")),
                    "{} missing from:\n{stdout}",
                    string(t, "name")
                );
            }
            assert!(
                stdout.contains(&format!("algorithm {algorithm}")),
                "{stdout}"
            );
            let trainer_row = stdout
                .lines()
                .find(|l| l.starts_with("trainer"))
                .expect("a trainer row");
            assert!(
                trainer_row.contains("to aggregator@gw-0 (bound 40 ms)")
                    && trainer_row.contains("cpu ")
                    && trainer_row.contains("%→"),
                "the why column explains the host: {trainer_row}"
            );
            assert_eq!(
                trainer_row.contains("drawn p="),
                algorithm == "rounding",
                "{trainer_row}"
            );
        }
    }
}

#[test]
fn json_plans_respect_every_latency_bound() {
    let net = toml_table(&network());
    let service = toml_table(&manifest());
    for policy in POLICIES {
        for algorithm in ["rounding", "greedy", "exact"] {
            for seed in ["0", "1", "2"] {
                let out = place(
                    &network(),
                    &manifest(),
                    &[
                        "--json",
                        "--policy",
                        policy,
                        "--algorithm",
                        algorithm,
                        "--seed",
                        seed,
                    ],
                );
                assert!(out.status.success(), "{}", text(&out.stderr));
                let doc: Value = serde_json::from_slice(&out.stdout)
                    .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", text(&out.stdout)));
                assert_eq!(doc["algorithm"], algorithm);
                assert!(doc["objective"].is_number(), "{doc}");
                check_plan(&doc, &net, &service);
            }
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_output() {
    for policy in ["latency", "load"] {
        for json in [false, true] {
            let mut args = vec!["--seed", "42", "--policy", policy, "--rounds", "8"];
            if json {
                args.push("--json");
            }
            let first = place(&network(), &manifest(), &args);
            let second = place(&network(), &manifest(), &args);
            assert!(first.status.success(), "{}", text(&first.stderr));
            assert_eq!(text(&first.stdout), text(&second.stdout));
        }
    }
}

/// A copy of edge-lab whose hosts are all too small for a trainer (the aggregator still fits).
fn shrunken_network(dir: &Path) -> PathBuf {
    let small: String = read(&network())
        .lines()
        .filter(|l| !l.starts_with("free_cpu_millis"))
        .map(|l| {
            if l.starts_with("cpu_millis") {
                "cpu_millis = 600".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join("small.toml");
    std::fs::write(&path, small).expect("write the network copy");
    path
}

#[test]
fn an_infeasible_network_exits_2_and_names_the_task() {
    let dir = tempfile::Builder::new()
        .prefix("brume-test-place-")
        .tempdir()
        .expect("temp dir");
    let net = shrunken_network(dir.path());
    for algorithm in ["rounding", "greedy", "exact"] {
        let out = place(&net, &manifest(), &["--algorithm", algorithm]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{algorithm}: {stderr}");
        assert!(
            stderr.contains("error: task trainer") && stderr.contains("could not be placed"),
            "{algorithm}: {stderr}"
        );
        assert!(stderr.contains("millicpu"), "the reason is given: {stderr}");
    }
    let out = place(&net, &manifest(), &["--json"]);
    assert_eq!(out.status.code(), Some(2));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("a JSON document");
    assert_eq!(doc["feasible"], Value::Bool(false));
    assert!(
        doc["task"]
            .as_str()
            .is_some_and(|t| t.starts_with("trainer")),
        "{doc}"
    );
    assert!(
        doc["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{doc}"
    );
}

#[test]
fn a_malformed_manifest_is_refused_with_file_and_line() {
    let dir = tempfile::Builder::new()
        .prefix("brume-test-place-")
        .tempdir()
        .expect("temp dir");
    let good = read(&manifest());
    let cases = [
        // A semantic error: the checks after TOML's own.
        (
            "to = \"trainer\"",
            "to = \"traner\"",
            "call.to: no task named \"traner\"",
        ),
        // A type error from the TOML parser.
        ("replicas = 4", "replicas = \"four\"", "invalid type"),
        // A syntax error.
        ("[[call]]", "[[call]", ""),
        // A misspelt field.
        ("memory_mb = 512", "memory = 512", "unknown field `memory`"),
    ];
    for (i, (from, to, says)) in cases.iter().enumerate() {
        let line = good[..good.find(from).expect("the example has the text")]
            .matches('\n')
            .count()
            + 1;
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, good.replacen(from, to, 1)).expect("write the manifest");
        let out = place(&network(), &path, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let at = format!("error: {}:{line}: ", path.display());
        assert!(stderr.starts_with(&at), "wanted {at:?} in:\n{stderr}");
        assert!(stderr.contains(says), "wanted {says:?} in:\n{stderr}");
        assert!(out.stdout.is_empty(), "no plan is printed");
    }
}

#[test]
fn a_malformed_network_or_a_missing_file_is_refused_with_its_name() {
    let dir = tempfile::Builder::new()
        .prefix("brume-test-place-")
        .tempdir()
        .expect("temp dir");
    let good = read(&network());
    let path = dir.path().join("net.toml");
    std::fs::write(&path, good.replacen("b = \"srv-0\"", "b = \"srv-9\"", 1)).expect("write");
    let out = place(&path, &manifest(), &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:", path.display())) && stderr.contains("link.b"),
        "{stderr}"
    );
    let missing = dir.path().join("nope.toml");
    let out = place(&missing, &manifest(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nope.toml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn usage_errors_are_not_mistaken_for_infeasibility() {
    let out = place(&network(), &manifest(), &["--policy", "fastest"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown policy"));
}
