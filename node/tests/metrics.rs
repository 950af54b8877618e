//! The metrics endpoint of a real `brume node`, scraped over plain HTTP.
//!
//! * two daemons on loopback, node 0 with `BRUME_METRICS=127.0.0.1:0` and both with a name: node
//!   0 writes the bound address to `<data_dir>/metrics.addr` before it says it is listening; a
//!   scrape answers 200 in the OpenMetrics text format, every metric docs/metrics.md lists has
//!   its `# TYPE` line with the documented type, every sample line parses, and the values follow
//!   what happened (one peer with an RTT, the map the test made, no instances);
//! * node 1's name reaches node 0 in its map (names travel in the state records);
//! * a non-loopback metrics address is refused before anything starts.
//!
//! Waits are bounded and on events: the daemons' own `listening` line, `brume map` answering
//! with both nodes. No port is fixed.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use brume_testnet::localnet::LocalNet;

mod common;

const BRUME: &str = env!("CARGO_BIN_EXE_brume");

/// The longest any awaited condition may take: a liveness bound for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// The metrics docs/metrics.md documents: sample name -> type, from its table's rows
/// ``| `brume_x` | gauge | ... |``.
fn documented() -> BTreeMap<String, String> {
    let path = common::repo_root().join("docs/metrics.md");
    let text = std::fs::read_to_string(&path).expect("docs/metrics.md");
    let rows: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.next()?;
            name.starts_with("brume_")
                .then(|| (name.to_string(), kind.to_string()))
        })
        .collect();
    assert!(rows.len() >= 8, "docs/metrics.md lists {rows:?}");
    rows
}

/// Checks `body` line by line as the OpenMetrics text format: `# HELP`, `# TYPE` and `# UNIT`
/// lines, samples `name{labels} value` of a typed family, `# EOF` last. Returns family -> type
/// and the samples (the line without its value -> value).
fn parse(body: &str) -> (BTreeMap<String, String>, BTreeMap<String, f64>) {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "the exposition ends with # EOF"
    );
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').expect("# TYPE name type");
            assert!(
                [
                    "gauge",
                    "counter",
                    "histogram",
                    "summary",
                    "info",
                    "stateset",
                    "unknown"
                ]
                .contains(&kind),
                "{line}"
            );
            types.insert(family.to_string(), kind.to_string());
        } else if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
        } else {
            assert!(!line.starts_with('#'), "unknown comment line {line:?}");
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("value of {line:?}"));
            let name = series.split('{').next().unwrap_or_default();
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "metric name of {line:?}"
            );
            if let Some(labels) = series.strip_prefix(name) {
                assert!(
                    labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                    "labels of {line:?}"
                );
            }
            let family = name.strip_suffix("_total").unwrap_or(name);
            assert!(
                types.contains_key(family),
                "sample {line:?} comes before or without its # TYPE"
            );
            samples.insert(series.to_string(), value);
        }
    }
    (types, samples)
}

fn names_env(i: usize) -> Vec<(OsString, OsString)> {
    let mut env = vec![("BRUME_NAME".into(), format!("gw-test-{i}").into())];
    if i == 0 {
        env.push(("BRUME_METRICS".into(), "127.0.0.1:0".into()));
    }
    env
}

/// `brume map --json` from node 0 until it holds both nodes; node 0's map.
fn map_with_both(net: &LocalNet) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = net
            .brume(0, &["map", "--json", "--fresh", "--budget", "1s"])
            .expect("run brume map");
        let map: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let nodes = map["nodes"].as_array().map_or(0, Vec::len);
        if nodes == 2 {
            return map;
        }
        assert!(
            Instant::now() < deadline,
            "node 0's map did not hold both nodes within {PATIENCE:?}; last: {map} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_node_serves_its_documented_metrics_on_loopback() {
    let net = LocalNet::start_with_env(
        Path::new(BRUME),
        2,
        &["--engine", "process", "--ping-interval-ms", "100"],
        &names_env,
    )
    .expect("two daemons start and connect");
    // The node writes the file before its `listening` line, which LocalNet has read.
    let file = net.data(0).join("metrics.addr");
    let text = std::fs::read_to_string(&file).expect("node 0 wrote metrics.addr");
    let addr: SocketAddr = text.trim().parse().expect("an address in metrics.addr");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    assert!(
        !net.data(1).join("metrics.addr").exists(),
        "metrics are opt-in"
    );

    let map = map_with_both(&net);
    let names: BTreeSet<&str> = map["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["gw-test-0", "gw-test-1"]),
        "names travel in the records: {map}"
    );

    let (status, headers, body) = common::http(addr, "GET", "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        headers
            .get("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{headers:?}"
    );
    eprintln!("{body}");
    let (types, samples) = parse(&body);
    for (name, kind) in documented() {
        let family = name.strip_suffix("_total").unwrap_or(&name);
        assert_eq!(
            types.get(family),
            Some(&kind),
            "`# TYPE {family} {kind}` for the documented {name}"
        );
    }
    let value = |series: &str| samples.get(series).copied();
    assert_eq!(value("brume_peers"), Some(1.0), "{body}");
    for counter in [
        "brume_moves_total",
        "brume_deploys_total",
        "brume_checkpoints_total",
    ] {
        for outcome in ["ok", "failed"] {
            let series = format!("{counter}{{outcome=\"{outcome}\"}}");
            assert_eq!(value(&series), Some(0.0), "{series} from the start: {body}");
        }
    }
    assert_eq!(value("brume_moved_bytes_total"), Some(0.0), "{body}");
    assert_eq!(value("brume_instances"), Some(0.0), "{body}");
    assert_eq!(
        value("brume_map_nodes{budget_ms=\"1000\"}"),
        Some(2.0),
        "the map the test made: {body}"
    );
    let rtts: Vec<f64> = samples
        .iter()
        .filter(|(k, _)| k.starts_with("brume_peer_rtt_seconds{peer=\""))
        .map(|(_, v)| *v)
        .collect();
    assert!(
        rtts.len() == 1 && rtts[0] > 0.0 && rtts[0].is_finite(),
        "one peer's RTT: {body}"
    );
    let info: Vec<&String> = samples
        .keys()
        .filter(|k| k.starts_with("brume_node_info{"))
        .collect();
    assert!(
        info.len() == 1 && info[0].contains("name=\"gw-test-0\""),
        "{body}"
    );

    let (status, _, _) = common::http(addr, "GET", "/nothing");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let (status, headers, _) = common::http(addr, "POST", "/metrics");
    assert!(status.starts_with("HTTP/1.1 405"), "{status}");
    assert_eq!(headers.get("allow").map(String::as_str), Some("GET, HEAD"));
}

#[test]
fn a_metrics_address_off_loopback_is_refused() {
    let dir = common::tempdir();
    let out = std::process::Command::new(BRUME)
        .args(["node", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--control")
        .arg(dir.path().join("n.sock"))
        .env("BRUME_METRICS", "0.0.0.0:0")
        .output()
        .expect("run brume node");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not loopback"), "{err}");
}
