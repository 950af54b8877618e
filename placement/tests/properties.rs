//! Properties every plan must have, on random instances: the checks in `Plan::violations`
//! (capacities, labels, latency bounds of every call, the root on the initiator, replicas on
//! distinct hosts), reproducibility from the seed, and no placer beating the exact optimum.

use brume_placement::exact::{self, Exact};
use brume_placement::generate::{self, GraphSpec, NetSpec, Shape};
use brume_placement::{greedy, policy, rounding, Problem, RoundingConfig};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    hosts: usize,
    tasks: usize,
    shape: Shape,
    bound: (f64, f64),
    replica_prob: f64,
    background: f64,
    policy: &'static str,
    cap: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        1usize..60,
        1usize..9,
        0usize..4,
        (1.0f64..40.0, 0.0f64..60.0),
        0.0f64..0.6,
        0.0f64..0.95,
        prop::sample::select(vec![
            "latency",
            "load",
            "energy",
            "cost",
            "reliability",
            "mix:latency=1,load=20",
        ]),
        prop::sample::select(vec![0usize, 3, 64]),
    )
        .prop_map(
            |(seed, hosts, tasks, shape, (lo, extra), replica_prob, background, policy, cap)| {
                Case {
                    seed,
                    hosts,
                    tasks,
                    shape: Shape::ALL[shape],
                    bound: (lo, lo + extra),
                    replica_prob,
                    background,
                    policy,
                    cap,
                }
            },
        )
}

fn build(c: &Case) -> (brume_placement::Network, brume_placement::CallGraph) {
    let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
    let mut ns = NetSpec::new(c.hosts);
    ns.max_background = c.background;
    let net = generate::network(&ns, &mut rng);
    let mut gs = GraphSpec::new(c.shape, c.tasks);
    gs.bound_ms = c.bound;
    gs.replica_prob = c.replica_prob;
    (net, generate::call_graph(&gs, &mut rng))
}

/// The seed these properties run with, so a run here and a run in CI try the same cases
/// (scripts/test.sh exports the same value as `PROPTEST_RNG_SEED`). Set `PROPTEST_RNG_SEED=<n>`
/// to explore others (proptest applies it over this config); a counterexample found that way
/// goes into properties.proptest-regressions (committed; replayed before any new case) or
/// becomes a unit test.
const PROPTEST_SEED: u64 = 20261203;

/// 128 cases from [`PROPTEST_SEED`] (or `PROPTEST_RNG_SEED` when set), printed so a failure
/// names the seed that found it.
fn config() -> ProptestConfig {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(PROPTEST_SEED);
    eprintln!("proptest: seed {seed} (PROPTEST_RNG_SEED={seed} reruns these cases)");
    ProptestConfig {
        cases: 128,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn rounding_plans_obey_every_rule_and_repeat_from_the_seed(c in case()) {
        let (net, graph) = build(&c);
        let problem = Problem::new(&graph, &net).unwrap();
        let pol = policy::by_name(c.policy).unwrap();
        let cfg = RoundingConfig { rounds: 4, seed: c.seed, candidate_cap: c.cap, ..Default::default() };
        let first = rounding::place(&problem, pol.as_ref(), &cfg);
        let again = rounding::place(&problem, pol.as_ref(), &cfg);
        match (&first, &again) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(&a.plan, &b.plan);
                let v = a.plan.violations(&problem);
                prop_assert!(v.is_empty(), "violations: {:?}", v);
                let root = graph.root();
                prop_assert_eq!(a.plan.host_of(root, 0), Some(net.initiator()));
            }
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            _ => prop_assert!(false, "same seed, different outcomes"),
        }
        if let Ok(g) = greedy::place(&problem, pol.as_ref()) {
            let v = g.violations(&problem);
            prop_assert!(v.is_empty(), "greedy violations: {:?}", v);
        }
    }

    #[test]
    fn nothing_beats_the_exact_optimum(c in case()) {
        let c = Case { hosts: c.hosts.min(12), tasks: c.tasks.min(5), ..c };
        let (net, graph) = build(&c);
        let problem = Problem::new(&graph, &net).unwrap();
        let pol = policy::by_name(c.policy).unwrap();
        let ex = exact::solve(&problem, pol.as_ref(), 200_000);
        let cfg = RoundingConfig { rounds: 8, seed: c.seed, ..Default::default() };
        let r = rounding::place(&problem, pol.as_ref(), &cfg);
        let g = greedy::place(&problem, pol.as_ref());
        match ex.result {
            Exact::Optimal(opt) => {
                prop_assert!(opt.violations(&problem).is_empty());
                let tol = 1e-9 * opt.objective.abs().max(1.0);
                if let Ok(r) = r { prop_assert!(r.plan.objective >= opt.objective - tol); }
                if let Ok(g) = g { prop_assert!(g.objective >= opt.objective - tol); }
            }
            Exact::Infeasible => {
                prop_assert!(r.is_err(), "rounding placed a provably infeasible instance");
                prop_assert!(g.is_err(), "greedy placed a provably infeasible instance");
            }
            Exact::Limit(_) => {}
        }
    }
}
