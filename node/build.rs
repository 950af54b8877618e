//! Stamps `brume --version` with the commit it was built from (`0.1.0 (1a2b3c4d5e)`), when the
//! source is a git checkout and git is installed; a build from a plain source tree (the Docker
//! image's) says only the version.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    let commit = git(&["rev-parse", "--short=10", "HEAD"]);
    let long = match &commit {
        Some(c) => format!("{version} ({c})"),
        None => version.to_string(),
    };
    // Not `BRUME_*`: cargo also sets this for `cargo test` and `cargo run`, and the node reads
    // every `BRUME_*` variable as a setting.
    println!("cargo:rustc-env=LONG_VERSION={long}");
    // Build again when HEAD moves: a checkout (HEAD) or a commit (the branch's ref).
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
        git(&["rev-parse", "--git-path", "packed-refs"]),
    ]
    .into_iter()
    .flatten()
    // A path that does not exist would run this script on every build.
    .filter(|p| std::path::Path::new(p).exists())
    {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
