//! The replay's tests: seed 000's lost computation, counts that add up, the learning measure.

use proptest::prelude::*;

use super::*;
use crate::predictor::features::tests::example;
use crate::predictor::mlr::{Mlr, WINDOW};
use crate::predictor::pbmlr::{PbMlr, PbMlrConfig};
use crate::predictor::static_best::StaticBest;
use crate::predictor::Features;

fn dump(i: u64, mib: u64, secs: f64, since: Option<f64>) -> Dump {
    let mut f = example(mib);
    f.since_last_s = since;
    f.threads = 1 + (i % 5) as u32;
    Dump {
        dump: i,
        task: format!("t{}", i / 3),
        workload: "fixture".into(),
        mem_mib: mib as f64,
        features: f,
        stats: None,
        dump_s: secs,
    }
}

fn report(late: &[bool]) -> Report {
    Report {
        name: "x",
        outcomes: late
            .iter()
            .map(|&l| Outcome {
                predicted: if l { 0.5 } else { 2.0 },
                observed: 1.0,
                since_checkpoint: 10.0,
            })
            .collect(),
    }
}

#[test]
fn lost_follows_equation_3() {
    assert_eq!(lost(1.5, 1.0, 10.0), 0.5);
    assert_eq!(lost(1.0, 1.0, 10.0), 0.0);
    assert_eq!(lost(0.8, 1.0, 10.0), 10.8);
    let r = report(&[true, false, false, false]);
    assert_eq!((r.late(), r.early()), (1, 3));
    assert_eq!((r.late_pct(), r.early_pct()), (25.0, 75.0));
    assert!((r.mean_lost() - (10.5 + 3.0) / 4.0).abs() < 1e-12);
    assert!((r.mae() - (0.5 + 3.0) / 4.0).abs() < 1e-12);
}

#[test]
fn dumps_to_learn_is_where_the_late_rate_stays_low() {
    // Late at 0, 2 and 4, then never: from 3 on, one late (at 4) in every span of 20 or more is
    // within 5%; from 2, two in 20 are not.
    let mut late = vec![true, false, true, false, true];
    late.extend(vec![false; 40]);
    assert_eq!(dumps_to_learn(&report(&late), 0.05, 20), Some(3));
    // Always late: never learned; too short to tell: never either.
    assert_eq!(dumps_to_learn(&report(&[true; 30]), 0.05, 20), None);
    assert_eq!(dumps_to_learn(&report(&[false; 10]), 0.05, 20), None);
    // One late in the first 20 is 5%: within from the start.
    let mut one = vec![false; 40];
    one[3] = true;
    assert_eq!(dumps_to_learn(&report(&one), 0.05, 20), Some(0));
}

#[test]
fn the_curve_is_trailing() {
    let r = report(&[true, false, false, false]);
    let c = r.curve(2);
    assert_eq!(c.len(), 4);
    assert_eq!(
        (c[0].late_rate, c[1].late_rate, c[2].late_rate),
        (1.0, 0.5, 0.0)
    );
    assert!((c[1].mean_lost - (10.5 + 1.0) / 2.0).abs() < 1e-12);
}

#[test]
fn replay_predicts_before_it_learns() {
    // A model that predicts the last value it saw: its first prediction is its prior (0).
    struct Last(f64);
    impl Model for Last {
        fn name(&self) -> &'static str {
            "last"
        }
        fn predict(&self, _f: &Features) -> f64 {
            self.0
        }
        fn observe(&mut self, _f: &Features, s: f64, _e: f64) {
            self.0 = s;
        }
    }
    let dumps = [dump(0, 64, 1.0, None), dump(1, 64, 2.0, Some(1.0))];
    let mut m = Last(0.0);
    let r = replay(&dumps, &mut [&mut m]);
    let p: Vec<f64> = r[0].outcomes.iter().map(|o| o.predicted).collect();
    assert_eq!(p, vec![0.0, 1.0]);
    assert_eq!(r[0].outcomes[0].since_checkpoint, 10.0);
}

#[test]
fn cross_validated_r2_is_one_on_an_exact_law() {
    let dumps: Vec<Dump> = (0..40)
        .map(|i| {
            let mib = 16 + 25 * i;
            dump(i, mib, 0.05 + 1.2 * mib as f64 / 1024.0, Some(1.0))
        })
        .collect();
    let cv = cross_validated_r2(&dumps, 10, &PredictorConfig::default());
    assert_eq!(cv.folds.len(), 10);
    assert!(cv.mean() > 0.999 && cv.pooled > 0.999, "{cv:?}");
    let loo = cross_validated_r2(&dumps, dumps.len(), &PredictorConfig::default());
    assert!(loo.folds.is_empty() && loo.pooled > 0.999, "{loo:?}");
}

proptest! {
    #![proptest_config(crate::testing::proptest_config(16))]

    /// On any trace, every model makes one prediction per dump, late and early add up to it,
    /// and the static best has the least total lost computation of any constant (so no more
    /// than the best of the others' constants).
    #[test]
    fn replay_counts_add_up(
        rows in prop::collection::vec((16u64..1024, 0.001f64..5.0, prop::option::of(0.1f64..30.0)), 1..30),
    ) {
        let dumps: Vec<Dump> = rows
            .iter()
            .enumerate()
            .map(|(i, &(mib, s, since))| dump(i as u64, mib, s, since))
            .collect();
        let cfg = PredictorConfig::default();
        let samples: Vec<(f64, f64)> =
            dumps.iter().map(|d| (d.dump_s, d.features.since_checkpoint_s())).collect();
        let mut pb = PbMlr::new(&cfg, PbMlrConfig::default());
        let mut mlr = Mlr::new(&cfg, WINDOW);
        let mut st = StaticBest::fit(&samples);
        let reports = replay(&dumps, &mut [&mut pb, &mut mlr, &mut st]);
        for r in &reports {
            prop_assert_eq!(r.n(), dumps.len());
            prop_assert_eq!(r.late() + r.early(), r.n());
            prop_assert!((r.late_pct() + r.early_pct() - 100.0).abs() < 1e-9);
            prop_assert!(r.mean_lost() >= 0.0 && r.mae() >= 0.0);
            prop_assert_eq!(r.curve(20).len(), r.n());
        }
        let total = reports[2].mean_lost() * dumps.len() as f64;
        for c in [0.0, 0.5, 1.0, 5.0] {
            prop_assert!(total <= StaticBest::total_lost(c, &samples) + 1e-9);
        }
    }
}

#[test]
fn pretraining_is_learning_without_predicting() {
    let cfg = PredictorConfig::default();
    let first: Vec<Dump> = (0..8)
        .map(|i| dump(i, 64 << (i % 4), 0.05 * (i + 1) as f64, Some(2.0)))
        .collect();
    let then: Vec<Dump> = (8..12).map(|i| dump(i, 256, 0.4, Some(3.0))).collect();
    // Pretrained on `first`, then replayed on `then`: the same predictions as one replay of
    // both, minus the first part's reports.
    let mut a = PbMlr::new(&cfg, PbMlrConfig::default());
    pretrain(&first, &mut [&mut a]);
    assert_eq!(a.samples(), 8);
    let after = replay(&then, &mut [&mut a]);
    let mut b = PbMlr::new(&cfg, PbMlrConfig::default());
    let both: Vec<Dump> = first.iter().chain(&then).cloned().collect();
    let whole = replay(&both, &mut [&mut b]);
    assert_eq!(after[0].outcomes[..], whole[0].outcomes[8..]);
    assert_eq!(a, b);
}
