//! The node image a testnet's containers run: scripts/node-image.sh builds it around a given
//! `brume`, or finds it by the hash of its contents, and prints its tag last.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

/// scripts/node-image.sh of this source tree.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/node-image.sh");

/// The tag of the node image around `brume` (built when no image of that content exists).
pub fn node_image(brume: &Path) -> anyhow::Result<String> {
    let out = Command::new("bash")
        .arg(SCRIPT)
        .env("BRUME_NODE_BIN", brume)
        .output()
        .with_context(|| format!("cannot run {SCRIPT}"))?;
    anyhow::ensure!(
        out.status.success(),
        "scripts/node-image.sh failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| l.trim().to_string())
        .filter(|t| !t.is_empty())
        .context("scripts/node-image.sh printed no image tag")
}
