//! PB-MLR's tests: the fit against a known law, its optimality, and seed 000's quantities.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::predictor::features::tests::example;
use crate::predictor::mlr::Mlr;

const GIB: f64 = (1u64 << 30) as f64;

/// The linear form (seconds on the features), for the tests about its cost in seconds.
fn linear() -> PbMlrConfig {
    PbMlrConfig {
        log_space: false,
        ..PbMlrConfig::default()
    }
}

fn gauss(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A task like the trace's: 16 MiB-1 GiB, a few threads and files, dumped every few seconds.
fn task(rng: &mut StdRng) -> Features {
    let mut f = example(rng.random_range(16..1024));
    f.threads = rng.random_range(1..16);
    f.open_files = rng.random_range(3..200);
    f.age_s = rng.random_range(1.0..120.0);
    f.since_last_s = rng.random_bool(0.7).then(|| rng.random_range(0.5..10.0));
    f
}

/// The law the machine follows: 40 ms + 1.5 s/GiB of resident memory.
fn law(f: &Features) -> f64 {
    0.04 + 1.5 * f.rss_bytes as f64 / GIB
}

/// Replays `n` noisy dumps (10% multiplicative noise) through `m`; returns the late count and
/// the total lost computation (seed 000's Equation 3).
fn late_count(m: &mut dyn Model, seed: u64, n: usize) -> (usize, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut late, mut lost) = (0, 0.0);
    for _ in 0..n {
        let f = task(&mut rng);
        let y = law(&f) * (1.0 + 0.1 * gauss(&mut rng)).max(0.5);
        let p = m.predict(&f);
        if p < y {
            late += 1;
        }
        lost += crate::predictor::evaluate::lost(p, y, f.since_checkpoint_s());
        m.observe(&f, y, f.since_checkpoint_s());
    }
    (late, lost)
}

#[test]
fn predicts_at_or_above_a_noisy_law_and_is_late_less_often_than_mlr() {
    for form in [linear(), PbMlrConfig::default()] {
        predicts_at_or_above(form);
    }
}

fn predicts_at_or_above(form: PbMlrConfig) {
    let cfg = PredictorConfig::default();
    let mut pb = PbMlr::new(&cfg, form);
    let mut mlr = Mlr::new(&cfg, PbMlrConfig::default().window);
    let (pb_late, pb_lost) = late_count(&mut pb, 3, 200);
    let (mlr_late, mlr_lost) = late_count(&mut mlr, 3, 200);
    // Lateness is cheap when little work was done since the last checkpoint, so PB-MLR still
    // accepts some: far fewer than MLR, and less lost computation.
    assert!(
        pb_late * 2 < mlr_late,
        "pbmlr late {pb_late}, mlr late {mlr_late}"
    );
    assert!(
        pb_lost < mlr_lost / 2.0,
        "pbmlr lost {pb_lost}, mlr lost {mlr_lost}"
    );
    // After learning, it predicts above the law itself across sizes.
    for mib in [32, 128, 512, 1000] {
        let f = example(mib);
        assert!(
            pb.predict(&f) >= law(&f),
            "{}, {mib} MiB: {} < {}",
            pb.name(),
            pb.predict(&f),
            law(&f)
        );
    }
}

#[test]
fn answers_with_the_prior_before_any_sample() {
    let m = PbMlr::new(&PredictorConfig::default(), PbMlrConfig::default());
    let one_gib = m.predict(&example(1024));
    assert!((3.0..4.0).contains(&one_gib), "{one_gib}");
    assert_eq!(m.samples(), 0);
}

#[test]
fn the_fit_is_deterministic() {
    let run = || {
        let mut m = PbMlr::new(&PredictorConfig::default(), PbMlrConfig::default());
        late_count(&mut m, 5, 60);
        m
    };
    assert_eq!(run().coefficients(), run().coefficients());
}

#[test]
fn kappa_charges_a_late_dump_the_seeds_cost() {
    // Late by the scale σ costs the seed's (y + e)².
    let (y, e, sigma) = (0.2, 9.8, 0.05);
    let k = kappa(y, e, sigma, 1e9);
    assert!((k * sigma * sigma - (y + e) * (y + e)).abs() < 1e-6);
    assert_eq!(kappa(0.0, 0.0, 0.05, 1e6), 1.0);
    assert_eq!(kappa(1.0, 100.0, 0.0, 1e6), 1e6);
    assert!((seed_cost(0.5, 0.3, 10.0) - 0.04).abs() < 1e-12);
    assert!((seed_cost(0.2, 0.3, 10.0) - 10.2 * 10.2).abs() < 1e-12);
}

#[test]
fn garbage_is_ignored() {
    let mut m = PbMlr::new(&PredictorConfig::default(), PbMlrConfig::default());
    let before = m.clone();
    m.observe(&example(64), f64::NAN, 1.0);
    m.observe(&example(64), -1.0, 1.0);
    m.observe(&example(64), 0.1, f64::INFINITY);
    assert_eq!(m, before);
}

proptest! {
    #![proptest_config(crate::testing::proptest_config(24))]

    /// Whatever the data, the fit is a minimum of the penalized cost over the features it may
    /// use: no step along any of their coordinates lowers it (the cost is convex, so this is
    /// the global minimum on them), the others' coefficients are exactly 0, and the cost is no
    /// higher than at the prior. Without selection, that is every coordinate.
    #[test]
    fn the_fit_minimises_the_penalized_cost(
        seed in any::<u64>(),
        n in 1usize..40,
        select in any::<bool>(),
        log_space in any::<bool>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let pb = PbMlrConfig {
            select: if select { Some(Selection::default()) } else { None },
            log_space,
            ..PbMlrConfig::default()
        };
        let mut m = PbMlr::new(&PredictorConfig::default(), pb);
        for _ in 0..n {
            let f = task(&mut rng);
            let y = law(&f) * rng.random_range(0.5..2.0);
            m.observe(&f, y, f.since_checkpoint_s());
        }
        let theta = m.coefficients().to_vec();
        let active = m.active();
        if !select {
            let used = if log_space { features::LOG_USED } else { features::DIM };
            prop_assert_eq!(&active, &(0..used).collect::<Vec<_>>());
        }
        let best = m.cost(&theta);
        let prior: Vec<f64> = (0..theta.len())
            .map(|j| if active.contains(&j) { m.ridge.mu[j] } else { 0.0 })
            .collect();
        prop_assert!(best <= m.cost(&prior) * (1.0 + 1e-9));
        for j in 0..theta.len() {
            if !active.contains(&j) {
                prop_assert_eq!(theta[j], 0.0);
                continue;
            }
            for h in [1e-3, -1e-3, 1e-1, -1e-1] {
                let mut t = theta.clone();
                t[j] += h;
                prop_assert!(m.cost(&t) >= best * (1.0 - 1e-9), "coordinate {} by {}", j, h);
            }
        }
    }
}

#[test]
fn a_relative_late_scale_weighs_a_small_dumps_miss_by_its_share() {
    let cfg = PredictorConfig::default();
    let rel = PbMlrConfig {
        late_scale_rel: Some(0.05),
        ..linear()
    };
    let small = example(16);
    let mut by_share = PbMlr::new(&cfg, rel);
    let mut fixed = PbMlr::new(&cfg, linear());
    by_share.observe(&small, 0.02, 2.0);
    fixed.observe(&small, 0.02, 2.0);
    // One θ for both, predicting 18 ms for the 20 ms dump: late by 2 ms.
    let mut theta = fixed.coefficients().to_vec();
    theta[0] += 0.018 - linalg::dot(&features::vector(&small), &theta);
    let prior_only = PbMlr::new(&cfg, linear()).cost(&theta);
    let (data_rel, data_fixed) = (
        by_share.cost(&theta) - prior_only,
        fixed.cost(&theta) - prior_only,
    );
    // κ = (2.02 / σ)²: σ = 1 ms (5% of 20 ms) against the fixed 50 ms.
    assert!(
        (data_fixed - (2.02f64 / 0.05).powi(2) * 4e-6).abs() < 1e-6,
        "{data_fixed}"
    );
    assert!(
        (data_rel / data_fixed - 2500.0).abs() < 1e-3,
        "{data_rel} {data_fixed}"
    );
}

#[test]
fn the_log_space_form_learns_the_noisy_law_and_is_late_less_often_than_mlr() {
    let cfg = PredictorConfig::default();
    let log = PbMlrConfig::default();
    assert!(log.log_space, "the default form is the multiplicative one");
    let mut pb = PbMlr::new(&cfg, log);
    assert_eq!(pb.name(), "pbmlr");
    assert_eq!(PbMlr::new(&cfg, linear()).name(), "pbmlr-lin");
    let mut mlr = Mlr::new(&cfg, log.window);
    let (pb_late, _) = late_count(&mut pb, 3, 200);
    let (mlr_late, _) = late_count(&mut mlr, 3, 200);
    assert!(pb_late < mlr_late / 2, "{pb_late} vs {mlr_late}");
    // After 200 dumps its answers are finite, positive and grow with memory.
    let (small, large) = (pb.predict(&example(64)), pb.predict(&example(1024)));
    assert!(
        small.is_finite() && small > 0.0 && large > 2.0 * small,
        "{small} {large}"
    );
    // A sample it cannot use is ignored.
    let before = pb.samples();
    pb.observe(&example(64), f64::NAN, 1.0);
    assert_eq!(pb.samples(), before);
}

/// `brume status` names what PB-MLR uses: every feature of its form until the selection has
/// enough dumps, then the intercept, memory and the survivors, by name and in order.
#[test]
fn the_active_features_are_named_in_the_forms_order() {
    let cfg = PredictorConfig::default();
    let fresh = PbMlr::new(&cfg, PbMlrConfig::default());
    assert_eq!(fresh.active_names(), features::LOG_NAMES.to_vec());
    let linear = PbMlr::new(
        &cfg,
        PbMlrConfig {
            log_space: false,
            ..PbMlrConfig::default()
        },
    );
    assert_eq!(linear.active_names(), features::NAMES.to_vec());

    let mut m = PbMlr::new(&cfg, PbMlrConfig::default());
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..60 {
        let f = task(&mut rng);
        let y = law(&f) * rng.random_range(0.9..1.1);
        m.observe(&f, y, f.since_checkpoint_s());
    }
    let names = m.active_names();
    let expected: Vec<&str> = m.active().iter().map(|&j| features::LOG_NAMES[j]).collect();
    assert_eq!(names, expected);
    assert_eq!(&names[..2], ["1", "ln_rss_gib"], "{names:?}");
    assert!(
        names.len() < features::LOG_USED,
        "nothing dropped: {names:?}"
    );
}
