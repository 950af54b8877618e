//! The three placers on small instances: rounding against the exact optimum and greedy, plans
//! checked by `Plan::violations`, and refusals that name the task and the reason.

use brume_placement::exact::{self, Exact};
use brume_placement::generate::{self, GraphSpec, NetSpec, Shape};
use brume_placement::policy::{self, Latency};
use brume_placement::{
    greedy, rounding, Call, CallGraph, Host, Link, Network, Problem, RoundingConfig, Task, TaskId,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn line_net() -> Network {
    // h0 - h1 - h2 in a line, 10 ms apart, measured links only (no coordinates).
    let hosts = vec![
        Host::new("h0", 1000, 1024),
        Host::new("h1", 1000, 1024),
        Host::new("h2", 4000, 8192),
    ];
    let l = |a: &str, b: &str, rtt| {
        (
            a.to_string(),
            b.to_string(),
            Link {
                rtt_ms: rtt,
                bandwidth_mbps: 100.0,
            },
        )
    };
    Network::new(
        hosts,
        "h0",
        vec![
            l("h0", "h1", 10.0),
            l("h1", "h2", 10.0),
            l("h0", "h2", 20.0),
        ],
    )
    .unwrap()
}

/// An aggregator calling `replicas` trainers of the given size within 15 ms.
fn star(cpu: u64, mem: u64, replicas: u32) -> (CallGraph, TaskId, TaskId) {
    let mut g = CallGraph::new(Task::new("agg", 500, 512));
    let root = g.root();
    let mut trainer = Task::new("trainer", cpu, mem);
    trainer.replicas = replicas;
    let t = g.add_task(trainer);
    let call = Call {
        latency_bound_ms: 15.0,
        traffic_mbps: 1.0,
    };
    g.add_call(root, t, call);
    (g, root, t)
}

#[test]
fn root_on_initiator_and_bounds_respected() {
    let net = line_net();
    let (g, root, t) = star(400, 400, 2);
    let problem = Problem::new(&g, &net).unwrap();
    let out = rounding::place(&problem, &Latency, &RoundingConfig::default()).unwrap();
    assert!(
        out.plan.violations(&problem).is_empty(),
        "{:?}",
        out.plan.violations(&problem)
    );
    assert_eq!(out.plan.host_of(root, 0), net.find("h0"));
    // h2 is 20 ms away, beyond the bound, so the two replicas take h0 and h1, one each.
    let mut hosts = [
        out.plan.host_of(t, 0).unwrap(),
        out.plan.host_of(t, 1).unwrap(),
    ];
    hosts.sort();
    assert_eq!(hosts, [net.find("h0").unwrap(), net.find("h1").unwrap()]);
}

#[test]
fn infeasible_names_task_and_reason() {
    let net = line_net();
    let (g, _, _) = star(800, 512, 3);
    let problem = Problem::new(&g, &net).unwrap();
    let err = rounding::place(&problem, &Latency, &RoundingConfig::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("trainer"), "{msg}");
    assert!(msg.contains("too far"), "{msg}");
    assert!(matches!(
        exact::solve(&problem, &Latency, 1_000_000).result,
        Exact::Infeasible
    ));
}

#[test]
fn rounding_close_to_exact_on_random_small_instances() {
    let mut ratios = Vec::new();
    let mut misses = 0;
    for seed in 0..40u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let net = generate::network(&NetSpec::new(20), &mut rng);
        let g = generate::call_graph(&GraphSpec::new(Shape::ALL[seed as usize % 4], 6), &mut rng);
        let problem = Problem::new(&g, &net).unwrap();
        for name in ["latency", "load", "energy", "cost", "reliability"] {
            let pol = policy::by_name(name).unwrap();
            let ex = exact::solve(&problem, pol.as_ref(), 5_000_000);
            let r = rounding::place(
                &problem,
                pol.as_ref(),
                &RoundingConfig {
                    seed,
                    ..Default::default()
                },
            );
            match ex.result {
                Exact::Optimal(opt) => {
                    let plan = match r {
                        Ok(o) => o.plan,
                        Err(e) => {
                            eprintln!("seed {seed} {name}: exact found a plan, rounding: {e}");
                            misses += 1;
                            continue;
                        }
                    };
                    assert!(plan.violations(&problem).is_empty());
                    assert!(
                        plan.objective >= opt.objective - 1e-9,
                        "{name}: beat the optimum"
                    );
                    let ratio = if (plan.objective - opt.objective).abs() < 1e-9 {
                        1.0
                    } else {
                        plan.objective / opt.objective
                    };
                    ratios.push((name, ratio));
                    if let Ok(gp) = greedy::place(&problem, pol.as_ref()) {
                        assert!(gp.objective >= opt.objective - 1e-9);
                    }
                }
                Exact::Infeasible => assert!(r.is_err()),
                Exact::Limit(_) => {}
            }
        }
    }
    // A loose guard against regressions; the real measurement is `brume bench placement`.
    let mean = ratios.iter().map(|(_, r)| r).sum::<f64>() / ratios.len() as f64;
    assert!(
        ratios.len() >= 100,
        "too few solved exactly: {}",
        ratios.len()
    );
    assert!(mean < 1.10, "best-of-32 is {mean:.3} x optimal on average");
    assert!(
        misses * 50 <= ratios.len(),
        "rounding missed {misses} feasible instances"
    );
}
