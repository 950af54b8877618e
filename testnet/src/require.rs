//! What a test run must have, so that a missing system is a failure and never a quiet pass.
//!
//! Tests of real systems (Docker, CRIU, runc, network namespaces, root) used to return early
//! when one was missing, printing `SKIPPED` into output nobody reads: a green run that exercised
//! nothing. Now they call [`missing`] instead. It reads `BRUME_REQUIRE`, a comma list of needs
//! (`docker`, `criu`, `runc`, `root`, `tracking`, or `all`): a need listed there fails the test with the
//! reason; otherwise the test is skipped, and the skip is written to stderr and, when
//! `BRUME_SKIP_LOG` names a file, appended to it as one line, so `scripts/test.sh` can list every
//! skip in its closing lines. CI sets `BRUME_REQUIRE=all`.

use std::io::Write;

/// A system a test needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Running as root (namespaces, CRIU, cgroups).
    Root,
    /// A Docker daemon that answers.
    Docker,
    /// `criu` >= 4.2 on PATH.
    Criu,
    /// `runc` on PATH.
    Runc,
    /// A kernel whose userfaultfd has async write-protect and `PAGEMAP_SCAN` (Linux >= 6.7):
    /// brume's dirty-page tracker.
    Tracking,
}

impl Need {
    /// The name used in `BRUME_REQUIRE`.
    pub fn name(self) -> &'static str {
        match self {
            Need::Root => "root",
            Need::Docker => "docker",
            Need::Criu => "criu",
            Need::Runc => "runc",
            Need::Tracking => "tracking",
        }
    }
}

/// Whether `BRUME_REQUIRE` (as given) demands `need`.
pub fn required(setting: &str, need: Need) -> bool {
    setting
        .split(',')
        .map(str::trim)
        .any(|n| n == "all" || n == need.name())
}

/// Records that `test` cannot run because `need` is missing (`why` says how it was seen).
/// Panics when `BRUME_REQUIRE` demands `need`; otherwise logs the skip and returns, and the
/// caller returns too.
#[track_caller]
pub fn missing(test: &str, need: Need, why: &str) {
    let setting = std::env::var("BRUME_REQUIRE").unwrap_or_default();
    if required(&setting, need) {
        panic!(
            "{test}: needs {} but {why} (BRUME_REQUIRE={setting} turns this skip into a failure)",
            need.name()
        );
    }
    let line = format!("SKIPPED: {test}: needs {}: {why}", need.name());
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("BRUME_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// True when running as root; otherwise records the skip (or fails, see [`missing`]).
pub fn root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let ok = unsafe { libc::geteuid() } == 0;
    if !ok {
        missing(test, Need::Root, "not running as root");
    }
    ok
}

/// True when `program arg` runs and exits 0; otherwise records the skip for `need`.
pub fn program(test: &str, need: Need, program: &str, arg: &str) -> bool {
    let ok = matches!(
        std::process::Command::new(program).arg(arg).output(),
        Ok(o) if o.status.success()
    );
    if !ok {
        missing(test, need, &format!("`{program} {arg}` did not succeed"));
    }
    ok
}

/// True when a Docker daemon answers; otherwise records the skip.
pub fn docker(test: &str) -> bool {
    program(test, Need::Docker, "docker", "version")
}

/// True when running as root with criu on PATH; otherwise records the skip.
pub fn criu(test: &str) -> bool {
    root(test) && program(test, Need::Criu, "criu", "--version")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_and_named_needs_are_required_others_not() {
        assert!(required("all", Need::Docker));
        assert!(required("criu, docker", Need::Docker));
        assert!(!required("criu,root", Need::Docker));
        assert!(!required("", Need::Root));
        assert!(!required("dockers", Need::Docker));
    }
}
