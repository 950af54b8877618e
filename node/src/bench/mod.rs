//! `brume bench NAME`: one benchmark family per module. Each prints a table a person can read and
//! ends with one machine-readable line, `BENCH NAME key=value ...`, numbers only. Run them from a
//! release build: debug timings mean nothing.

pub mod deploy;
pub mod idle;
pub mod migration;
pub mod overlay;
pub mod pair;
pub mod placement;
pub mod transfer;
pub mod tunnel;

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
