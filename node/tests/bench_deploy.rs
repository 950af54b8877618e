//! `brume bench deploy --quick` as an operator runs it: it needs Docker, docker-compose and the
//! static relay, and must end with a parsable `BENCH deploy` line whose figures are real.

use std::collections::HashMap;
use std::process::Command;

mod common;

#[test]
fn quick_run_ends_with_a_bench_line() {
    let compose = Command::new("docker-compose").arg("version").output();
    if !common::docker_available() || !compose.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: needs a Docker daemon and docker-compose");
        return;
    }
    let relay = common::relay_binary();
    let out = Command::new(env!("CARGO_BIN_EXE_brume"))
        .args(["bench", "deploy", "--quick", "--relay"])
        .arg(&relay)
        .output()
        .expect("brume runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("output");
    let rest = last
        .strip_prefix("BENCH deploy ")
        .unwrap_or_else(|| panic!("not a BENCH line: {last}"));
    let keys: HashMap<&str, f64> = rest
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (
                k,
                v.parse().unwrap_or_else(|_| panic!("{kv} is not a number")),
            )
        })
        .collect();
    for k in [
        "deploy_s",
        "deploy_cold_s",
        "compose_s",
        "transfer_ratio_vs_tcp",
    ] {
        let v = keys[k];
        assert!(v > 0.0 && v.is_finite(), "{k}={v}");
    }
    assert!(
        keys["deploy_s"] < 60.0 && keys["compose_s"] < 60.0,
        "{keys:?}"
    );
    assert!(keys["transfer_ratio_vs_tcp"] < 10.0, "{keys:?}");
}
