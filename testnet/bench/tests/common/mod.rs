//! What the bench tests share: reading the `BENCH <name> key=number ...` line a bench ends with.

use std::collections::HashMap;
use std::process::Output;

/// The last stdout line of a bench that exited with success, checked to be
/// `BENCH <name> key=number ...` with every figure a finite number, as a map.
pub fn bench_line(out: &Output, name: &str) -> HashMap<String, f64> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("some output");
    let rest = last
        .strip_prefix(&format!("BENCH {name} "))
        .unwrap_or_else(|| panic!("last line is not a BENCH {name} line: {last}"));
    let mut keys = HashMap::new();
    for kv in rest.split_whitespace() {
        let (k, v) = kv
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {kv}"));
        let v: f64 = v
            .parse()
            .unwrap_or_else(|e| panic!("{k}={v} is not a number: {e}"));
        assert!(v.is_finite(), "{k}={v} is not finite in {last}");
        keys.insert(k.to_string(), v);
    }
    keys
}
