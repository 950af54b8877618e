//! brume's benchmarks (`brume-bench NAME`, also reached as `brume bench NAME`): one family per
//! module. Each prints a table a person can read and ends with one machine-readable line,
//! `BENCH NAME key=value ...`, numbers only. Run them from a release build: debug timings mean
//! nothing.
//!
//! They live outside the daemon so the `brume` binary links no test tooling: the families that
//! need running nodes start the `brume` binary found beside this one ([`brume_exe`]) through
//! brume-testnet's `LocalNet`, and the migration family builds its namespaces with brume-testnet.

pub mod chaos;
pub mod coord_drift;
pub mod deploy;
pub mod docker_moves;
pub mod fedavg;
pub mod idle;
pub mod linkspeed;
pub mod migration;
pub mod overlay;
pub mod pair;
pub mod placement;
pub mod predictor;
pub mod predictor_drain;
pub mod predictor_svg;
pub mod predictor_variants;
pub mod server;
pub mod tcpcopy;
pub mod trace;
pub mod transfer;
pub mod tunnel;

/// The `brume` binary the benches run: `brume` beside this program (cargo builds both into the
/// same target directory; `brume bench` runs this program from its own directory). Not an
/// environment variable: the daemons the benches start would read any `BRUME_*` one as a
/// setting.
pub fn brume_exe() -> anyhow::Result<std::path::PathBuf> {
    let me = std::env::current_exe()?;
    let exe = me.with_file_name("brume");
    anyhow::ensure!(
        exe.is_file(),
        "no brume binary beside {} (build both: cargo build --release -p brume -p brume-bench)",
        me.display()
    );
    Ok(exe)
}

/// The static relay binary scripts/build-static.sh builds, found from this program's target
/// directory (target/<profile>/brume-bench -> target/static/x86_64-unknown-linux-gnu/release/).
pub fn relay_default() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(std::path::Path::parent)
        .ok_or_else(|| anyhow::anyhow!("cannot locate the target directory"))?;
    Ok(target.join("static/x86_64-unknown-linux-gnu/release/brume-relay"))
}

/// Median of a non-empty sample (the upper median for even sizes); NaN when empty.
pub fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Mean of a sample; NaN when empty.
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}
