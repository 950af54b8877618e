//! Replaying a trace of dumps through the models, in order, the way a node would live it: each
//! model predicts a dump before it sees it, then learns from it. Pure: the trace and the models
//! in, numbers out (`brume bench predictor` prints them).
//!
//! Why: this is seed 000's evaluation (section V) on our own dumps: per model, late and early
//! predictions (%), the mean lost computation, the mean absolute error; the learning curve of
//! the online models; how many dumps PB-MLR needs before its late rate stays within target
//! ([`dumps_to_learn`]); and the cross-validated R² of the linear fit ([`cross_validated_r2`]).
//!
//! Lost computation (seed 000, Equation 3 as its section V-B3 applies it): a prediction `ŷ` of a
//! dump that took `y`, `e` seconds after the task's last checkpoint, loses `ŷ − y` when early
//! (`ŷ ≥ y`: the dump started that much too soon) and `e + ŷ` when late (`ŷ < y`: the dump did
//! not finish in time, so the work since the last checkpoint and the dump itself are lost).

use super::features;
use super::linalg;
use super::model::Model;
use super::trace::Dump;
use super::PredictorConfig;

/// Seed 000's lost computation of one prediction, seconds.
pub fn lost(predicted: f64, observed: f64, since_checkpoint: f64) -> f64 {
    if predicted >= observed {
        predicted - observed
    } else {
        since_checkpoint.max(0.0) + predicted.max(0.0)
    }
}

/// One prediction made during a replay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    pub predicted: f64,
    pub observed: f64,
    pub since_checkpoint: f64,
}

impl Outcome {
    /// Late: the prediction was below the measured duration.
    pub fn late(&self) -> bool {
        self.predicted < self.observed
    }

    pub fn lost(&self) -> f64 {
        lost(self.predicted, self.observed, self.since_checkpoint)
    }
}

/// A point of a learning curve: over the trailing window of predictions ending with the one
/// made after `seen` dumps had been learned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CurvePoint {
    pub seen: usize,
    pub mean_lost: f64,
    pub late_rate: f64,
}

/// What one model did over a replay.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub name: &'static str,
    /// Every prediction, in trace order.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    pub fn n(&self) -> usize {
        self.outcomes.len()
    }

    pub fn late(&self) -> usize {
        self.outcomes.iter().filter(|o| o.late()).count()
    }

    pub fn early(&self) -> usize {
        self.n() - self.late()
    }

    fn pct(&self, k: usize) -> f64 {
        if self.n() == 0 {
            0.0
        } else {
            100.0 * k as f64 / self.n() as f64
        }
    }

    /// Late predictions, % of all.
    pub fn late_pct(&self) -> f64 {
        self.pct(self.late())
    }

    /// Early predictions (at or above the measured duration), % of all.
    pub fn early_pct(&self) -> f64 {
        self.pct(self.early())
    }

    fn mean(&self, f: impl Fn(&Outcome) -> f64) -> f64 {
        if self.n() == 0 {
            0.0
        } else {
            self.outcomes.iter().map(f).sum::<f64>() / self.n() as f64
        }
    }

    /// Mean lost computation per prediction, seconds.
    pub fn mean_lost(&self) -> f64 {
        self.mean(Outcome::lost)
    }

    /// Mean absolute error, seconds.
    pub fn mae(&self) -> f64 {
        self.mean(|o| (o.predicted - o.observed).abs())
    }

    /// The learning curve: for every prediction, the mean lost computation and the late rate
    /// over the last `window` predictions (fewer at the start).
    pub fn curve(&self, window: usize) -> Vec<CurvePoint> {
        let w = window.max(1);
        (0..self.n())
            .map(|i| {
                let span = &self.outcomes[(i + 1).saturating_sub(w)..=i];
                let k = span.len() as f64;
                CurvePoint {
                    seen: i,
                    mean_lost: span.iter().map(Outcome::lost).sum::<f64>() / k,
                    late_rate: span.iter().filter(|o| o.late()).count() as f64 / k,
                }
            })
            .collect()
    }
}

/// Has every model learn `dumps`, in order, without predicting: a start from dumps measured
/// elsewhere (another trace) instead of from the prior alone.
pub fn pretrain(dumps: &[Dump], models: &mut [&mut dyn Model]) {
    for d in dumps {
        let e = d.features.since_checkpoint_s();
        for m in models.iter_mut() {
            m.observe(&d.features, d.dump_s, e);
        }
    }
}

/// Replays `dumps` in order: every model predicts each dump, then learns from it.
pub fn replay(dumps: &[Dump], models: &mut [&mut dyn Model]) -> Vec<Report> {
    let mut reports: Vec<Report> = models
        .iter()
        .map(|m| Report {
            name: m.name(),
            outcomes: Vec::with_capacity(dumps.len()),
        })
        .collect();
    for d in dumps {
        let e = d.features.since_checkpoint_s();
        for (m, r) in models.iter_mut().zip(&mut reports) {
            r.outcomes.push(Outcome {
                predicted: m.predict(&d.features),
                observed: d.dump_s,
                since_checkpoint: e,
            });
            m.observe(&d.features, d.dump_s, e);
        }
    }
    reports
}

/// Dumps a model needs before its late rate stays within target: the smallest `n` such that,
/// for every `m` with `m − n ≥ min_span`, the predictions `n..m` (made after learning from at
/// least `n` dumps) are late at most `max_late` of the time (a fraction, 0.05 for 5%), and at
/// least `min_span` predictions follow `n`. The span keeps one late prediction right after `n`
/// from reading as a 100% rate. `None` when no such `n` exists in this trace.
pub fn dumps_to_learn(report: &Report, max_late: f64, min_span: usize) -> Option<usize> {
    let n = report.n();
    let span = min_span.max(1);
    // late_before[i]: late predictions among 0..i.
    let mut late_before = vec![0usize; n + 1];
    for (i, o) in report.outcomes.iter().enumerate() {
        late_before[i + 1] = late_before[i] + usize::from(o.late());
    }
    (0..n.saturating_sub(span - 1)).find(|&start| {
        (start + span..=n).all(|end| {
            let late = (late_before[end] - late_before[start]) as f64;
            late <= max_late * (end - start) as f64 + 1e-9
        })
    })
}

/// Cross-validated R² of a ridge least-squares fit on the shared features.
#[derive(Clone, Debug, PartialEq)]
pub struct CvR2 {
    /// R² of each held-out fold (folds of fewer than 2 distinct labels are left out).
    pub folds: Vec<f64>,
    /// `1 − Σ(y − ŷ)² / Σ(y − ȳ)²` over every held-out prediction pooled.
    pub pooled: f64,
}

impl CvR2 {
    pub fn mean(&self) -> f64 {
        if self.folds.is_empty() {
            return f64::NAN;
        }
        self.folds.iter().sum::<f64>() / self.folds.len() as f64
    }

    pub fn sd(&self) -> f64 {
        if self.folds.len() < 2 {
            return 0.0;
        }
        let m = self.mean();
        let v = self.folds.iter().map(|r| (r - m) * (r - m)).sum::<f64>()
            / (self.folds.len() - 1) as f64;
        v.sqrt()
    }
}

fn r2(y: &[f64], pred: &[f64]) -> Option<f64> {
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    let tot: f64 = y.iter().map(|v| (v - mean) * (v - mean)).sum();
    let res: f64 = y.iter().zip(pred).map(|(a, b)| (a - b) * (a - b)).sum();
    (tot > 0.0).then(|| 1.0 - res / tot)
}

/// k-fold cross-validated R² of the MLR fit (the standard least squares with the ridge prior,
/// fit on everything but one fold, scored on it). Folds are interleaved (dump `i` in fold
/// `i mod k`), so every fold spans the whole trace: deterministic, no shuffling. `k` at least 2
/// and at most the number of dumps (k = n is leave-one-out, where only the pooled R² is
/// defined).
pub fn cross_validated_r2(dumps: &[Dump], k: usize, cfg: &PredictorConfig) -> CvR2 {
    let n = dumps.len();
    let k = k.clamp(2, n.max(2));
    let prior = features::prior(cfg);
    let x: Vec<[f64; features::DIM]> = dumps
        .iter()
        .map(|d| features::vector(&d.features))
        .collect();
    let y: Vec<f64> = dumps.iter().map(|d| d.dump_s).collect();
    let mut pred = vec![f64::NAN; n];
    let mut folds = Vec::new();
    for fold in 0..k {
        let train: Vec<usize> = (0..n).filter(|i| i % k != fold).collect();
        let test: Vec<usize> = (0..n).filter(|i| i % k == fold).collect();
        if test.is_empty() {
            continue;
        }
        let rows: Vec<&[f64]> = train.iter().map(|&i| &x[i][..]).collect();
        let ty: Vec<f64> = train.iter().map(|&i| y[i]).collect();
        let theta =
            linalg::weighted_ridge(&rows, &ty, &vec![1.0; ty.len()], &prior.lambda, &prior.mean)
                .unwrap_or_else(|| prior.mean.clone());
        for &i in &test {
            pred[i] = linalg::dot(&x[i], &theta);
        }
        let fy: Vec<f64> = test.iter().map(|&i| y[i]).collect();
        let fp: Vec<f64> = test.iter().map(|&i| pred[i]).collect();
        if let Some(r) = r2(&fy, &fp) {
            folds.push(r);
        }
    }
    CvR2 {
        folds,
        pooled: if n == 0 {
            f64::NAN
        } else {
            r2(&y, &pred).unwrap_or(f64::NAN)
        },
    }
}

#[cfg(test)]
mod tests;
