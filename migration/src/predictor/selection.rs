//! Seed 000's feature selection: which of the shared features PB-MLR may use, chosen again from
//! its own samples after every dump.
//!
//! Why: PB-MLR's steep late penalty makes its fit an upper envelope of the dumps it has seen,
//! and a new dump lies above the envelope of `n` earlier ones about `d / (n + 1)` of the time
//! when the fit has `d` free coefficients (it is late exactly when it would itself be one of the
//! points that hold the envelope up). With the 17 shared features, an online replay is late
//! several times more often than with three. Seed 000 (section IV-B) keeps only features that
//! are not collinear (low variance inflation factor, VIF) and that matter (low p-value); this
//! module does that, online, on the model's window, with the textbook thresholds fixed before
//! any replay: VIF at most 5, two-sided p at most 0.05.
//!
//! The steps, on the samples so far (at least [`Selection::min_samples`]; before that only the
//! kept features, the prior's own: intercept and resident memory):
//! 1. drop constant candidates (a feature the node never saw vary says nothing);
//! 2. while the largest VIF among the candidates (the diagonal of the inverse of their
//!    correlation matrix) exceeds `vif_max`, drop that candidate;
//! 3. fit ordinary least squares on what is left and, while the least significant coefficient
//!    (largest two-sided Student-t p-value, `n − k` degrees of freedom) exceeds `p_max`, drop
//!    it and refit.
//!
//! Kept features (`keep`) are never dropped and not tested. Pure and deterministic.

use serde::{Deserialize, Serialize};

use super::linalg;

/// The selection's thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// A candidate whose variance inflation factor exceeds this is collinear with the others.
    pub vif_max: f64,
    /// A coefficient whose two-sided p-value exceeds this is not significant.
    pub p_max: f64,
    /// Samples needed before any feature beyond the kept ones is considered.
    pub min_samples: usize,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            vif_max: 5.0,
            p_max: 0.05,
            min_samples: 20,
        }
    }
}

/// The selected feature indexes, ascending: `keep` and the `candidates` that survive the steps
/// of the module doc on `rows` (intercept at index 0 of each row) and `y`.
pub fn select(
    rows: &[&[f64]],
    y: &[f64],
    candidates: &[usize],
    keep: &[usize],
    s: &Selection,
) -> Vec<usize> {
    let mut set: Vec<usize> = keep.to_vec();
    if rows.len() >= s.min_samples.max(1) && rows.len() == y.len() {
        let mut free: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|j| !keep.contains(j) && *j != 0 && rows.iter().all(|r| *j < r.len()))
            .collect();
        free.retain(|&j| spread(rows, j) > 0.0);
        // Kept features besides the intercept that never varied: the intercept again, left
        // out of both tests (collinear with everything, and a singular least-squares system).
        let flat: Vec<usize> = keep
            .iter()
            .copied()
            .filter(|&j| j != 0 && spread(rows, j) == 0.0)
            .collect();
        let varying: Vec<usize> = keep
            .iter()
            .copied()
            .filter(|j| *j != 0 && !flat.contains(j))
            .collect();
        drop_collinear(rows, &varying, &mut free, s.vif_max);
        set.extend(free);
        drop_insignificant(rows, y, keep, &flat, &mut set, s.p_max);
    }
    set.sort_unstable();
    set.dedup();
    set
}

/// The standard deviation of feature `j` over `rows`.
fn spread(rows: &[&[f64]], j: usize) -> f64 {
    let n = rows.len() as f64;
    let mean = rows.iter().map(|r| r[j]).sum::<f64>() / n;
    let var = rows.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / n;
    let sd = var.sqrt();
    // Exactly constant up to rounding: no spread.
    if sd <= 1e-12 * mean.abs().max(1e-300) {
        0.0
    } else {
        sd
    }
}

/// Step 2: drops the free candidate with the largest VIF (among the `varying` kept features,
/// intercept excluded, and the free ones) while it exceeds `vif_max`.
fn drop_collinear(rows: &[&[f64]], varying: &[usize], free: &mut Vec<usize>, vif_max: f64) {
    loop {
        let feats: Vec<usize> = varying.iter().chain(free.iter()).copied().collect();
        if free.is_empty() || feats.len() < 2 {
            return;
        }
        let vif = match linalg::inverse_diagonal(&correlation(rows, &feats)) {
            Some(d) => d,
            // Exactly collinear: every free candidate is as bad; drop the last.
            None => vec![f64::INFINITY; feats.len()],
        };
        match worst(&feats, &vif, |j| free.contains(&j), vif_max) {
            Some(j) => free.retain(|k| *k != j),
            None => return,
        }
    }
}

/// Of the `eligible` features, the one with the largest score if that score exceeds `limit`
/// (or is not a number): the one a step drops. Ties go to the higher index.
fn worst(
    feats: &[usize],
    scores: &[f64],
    eligible: impl Fn(usize) -> bool,
    limit: f64,
) -> Option<usize> {
    feats
        .iter()
        .zip(scores)
        .filter(|(j, _)| eligible(**j))
        .max_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(b.0)))
        .filter(|(_, v)| v.is_nan() || **v > limit)
        .map(|(j, _)| *j)
}

/// The correlation matrix of the features `feats` (none constant) over `rows`.
fn correlation(rows: &[&[f64]], feats: &[usize]) -> Vec<Vec<f64>> {
    let n = rows.len() as f64;
    let mean: Vec<f64> = feats
        .iter()
        .map(|&j| rows.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    let cov = |a: usize, b: usize| -> f64 {
        rows.iter()
            .map(|r| (r[feats[a]] - mean[a]) * (r[feats[b]] - mean[b]))
            .sum::<f64>()
            / n
    };
    let sd: Vec<f64> = (0..feats.len()).map(|a| cov(a, a).sqrt()).collect();
    (0..feats.len())
        .map(|a| {
            (0..feats.len())
                .map(|b| cov(a, b) / (sd[a] * sd[b]))
                .collect()
        })
        .collect()
}

/// Step 3: backward elimination by p-value of the features in `set` not in `keep`; the `flat`
/// ones (kept, never varied) are left out of the fit.
fn drop_insignificant(
    rows: &[&[f64]],
    y: &[f64],
    keep: &[usize],
    flat: &[usize],
    set: &mut Vec<usize>,
    p_max: f64,
) {
    loop {
        let tested: Vec<usize> = set.iter().copied().filter(|j| !flat.contains(j)).collect();
        let Some(p) = p_values(rows, y, &tested) else {
            return;
        };
        match worst(&tested, &p, |j| !keep.contains(&j), p_max) {
            Some(j) => set.retain(|k| *k != j),
            None => return,
        }
    }
}

/// Two-sided p-values of the ordinary least-squares coefficients of `set`; `None` when the
/// system is singular or has no degree of freedom left.
pub fn p_values(rows: &[&[f64]], y: &[f64], set: &[usize]) -> Option<Vec<f64>> {
    let k = set.len();
    let dof = rows.len().checked_sub(k).filter(|d| *d > 0)?;
    let projected: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| set.iter().map(|&j| r[j]).collect())
        .collect();
    let projected: Vec<&[f64]> = projected.iter().map(|r| &r[..]).collect();
    let (a, b) = linalg::normal_equations(&projected, y, None, k);
    let theta = linalg::solve(a.clone(), b)?;
    let inv = linalg::inverse_diagonal(&a)?;
    let sse: f64 = projected
        .iter()
        .zip(y)
        .map(|(r, yi)| (yi - linalg::dot(r, &theta)).powi(2))
        .sum();
    let s2 = sse / dof as f64;
    Some(
        theta
            .iter()
            .zip(&inv)
            .map(|(t, d)| {
                let se = (d * s2).max(0.0).sqrt();
                if se == 0.0 {
                    // An exact fit: the coefficient is certain, or meaningless if 0.
                    return if *t == 0.0 { 1.0 } else { 0.0 };
                }
                two_sided_p(t / se, dof as f64)
            })
            .collect(),
    )
}

/// The two-sided p-value of a Student-t statistic `t` on `dof` degrees of freedom:
/// `I_{dof/(dof+t²)}(dof/2, 1/2)`, the regularized incomplete beta function.
pub fn two_sided_p(t: f64, dof: f64) -> f64 {
    if t.is_nan() || dof.is_nan() || dof <= 0.0 {
        return 1.0;
    }
    let x = dof / (dof + t * t);
    if x.is_nan() || x <= 0.0 {
        return 0.0;
    }
    puruspe::betai(dof / 2.0, 0.5, x.min(1.0)).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests;
