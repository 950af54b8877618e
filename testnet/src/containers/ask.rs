//! What a node of a testnet says about itself: `brume status` or `brume peers` in node `i`, as
//! JSON, through `docker exec` or, for `--processes` nodes, the node's control socket.

use anyhow::Context;

use super::docker::docker;
use super::state::NetState;

/// What `brume status --json` and `brume peers --json` say in node `i`.
pub fn node_json(state: &NetState, i: usize, what: &str) -> anyhow::Result<serde_json::Value> {
    let c = &state.nodes[i].container;
    if state.processes {
        let control = super::procs::control(state, i);
        let brume = match &state.brume {
            Some(b) => b.clone(),
            None => super::procs::brume()?,
        };
        let out = std::process::Command::new(brume)
            .arg(what)
            .arg("--control")
            .arg(&control)
            .arg("--json")
            .output()
            .context("run brume")?;
        anyhow::ensure!(
            out.status.success(),
            "`brume {what}` for {c}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return serde_json::from_slice(&out.stdout)
            .with_context(|| format!("`brume {what} --json` for {c}"));
    }
    let out = docker(&[
        "exec",
        c,
        "brume",
        what,
        "--control",
        "/run/brume/control.sock",
        "--json",
    ])?;
    serde_json::from_str(&out).with_context(|| format!("`brume {what} --json` in {c}: {out}"))
}
