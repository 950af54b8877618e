//! What this crate's unit tests share: the pinned seed of every property test, and temp dirs
//! removed even when a test panics.

use proptest::test_runner::{Config, RngSeed};

/// The seed every property test of this crate runs with, so a run here and a run in CI try the
/// same cases (scripts/test.sh exports the same value as `PROPTEST_RNG_SEED`). To explore other
/// cases, set `PROPTEST_RNG_SEED=<n>` (proptest applies it over this config); a counterexample
/// found that way becomes a unit test, or a line of the test's committed regression file
/// (migration/proptest-regressions/..., which proptest replays before any new case).
pub const PROPTEST_SEED: u64 = 20261203;

/// A proptest config of `cases` cases from [`PROPTEST_SEED`] (or `PROPTEST_RNG_SEED` when set),
/// printed so a failure names the seed that found it.
pub fn proptest_config(cases: u32) -> Config {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(PROPTEST_SEED);
    eprintln!("proptest: seed {seed} (PROPTEST_RNG_SEED={seed} reruns these cases)");
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    }
}

/// A directory `brume-test-<tag>-<random>` under the temp dir (tempfile's), removed on drop.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("brume-test-{tag}-"))
        .tempdir()
        .expect("create a temp dir")
}
