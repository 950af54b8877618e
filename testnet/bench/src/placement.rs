//! `brume bench placement`: how good and how fast breadth-first randomized rounding is.
//!
//! Quality: on generated small instances (up to 8 tasks, up to 30 hosts, every service shape),
//! for every policy, the best-of-k rounding plan and the greedy plan are compared with the exact
//! optimum from branch and bound, and rounding's feasibility with the exact solver's. Speed: one
//! round and best of k on a 100-task service over a 10,000-host network, with greedy beside them,
//! medians of repeated runs in this same process.

use std::time::Instant;

use brume_placement::exact::{self, Exact};
use brume_placement::generate::{self, GraphSpec, NetSpec, Shape};
use brume_placement::policy::{self, Latency};
use brume_placement::{greedy, rounding, Problem, RoundingConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{mean, median};

const POLICIES: [&str; 5] = ["latency", "load", "energy", "cost", "reliability"];

/// Options of `brume bench placement`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlacementArgs {
    /// Generated small instances for the quality table; every policy runs on each.
    #[arg(long, default_value_t = 200)]
    pub instances: u32,
    /// Rounds of randomized rounding per plan (best of k).
    #[arg(long, default_value_t = 32)]
    pub rounds: u32,
    /// Seed of the instance generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Search nodes the exact solver may visit per instance before it gives up.
    #[arg(long, default_value_t = 2_000_000)]
    pub exact_limit: u64,
    /// Repetitions of each speed measurement (the median is reported).
    #[arg(long, default_value_t = 21)]
    pub reps: u32,
    /// Hosts weighed per draw on large networks (0: every host in reach).
    #[arg(long, default_value_t = RoundingConfig::default().candidate_cap)]
    pub cap: usize,
    /// Fewer instances and repetitions, for a smoke run.
    #[arg(long)]
    pub quick: bool,
}

/// Per policy: what the quality run saw.
#[derive(Default)]
struct Tally {
    /// Instances the exact solver proved optimal.
    optimal: u32,
    infeasible: u32,
    /// Instances where the exact solver hit its node limit (left out of every ratio).
    limit: u32,
    /// Of the optimal ones, those where rounding also found a plan.
    rounding_feasible: u32,
    greedy_feasible: u32,
    /// Rounding or greedy claimed a plan on an instance proven infeasible (must stay 0).
    false_plans: u32,
    rounding_ratio: Vec<f64>,
    greedy_ratio: Vec<f64>,
    exact_ms: Vec<f64>,
    rounding_ms: Vec<f64>,
}

fn ratio(found: f64, optimum: f64) -> f64 {
    if (found - optimum).abs() <= 1e-9 * optimum.abs().max(1.0) {
        1.0
    } else {
        found / optimum
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

pub fn run(args: &PlacementArgs) -> anyhow::Result<()> {
    let (instances, reps) = if args.quick {
        (args.instances.min(40), args.reps.min(5))
    } else {
        (args.instances, args.reps)
    };
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; timings are meaningless (use --release)");
    }
    let cfg = RoundingConfig {
        rounds: args.rounds,
        candidate_cap: args.cap,
        ..Default::default()
    };
    let mut tallies: Vec<Tally> = POLICIES.iter().map(|_| Tally::default()).collect();
    eprintln!(
        "quality: {instances} instances x {} policies ...",
        POLICIES.len()
    );
    for i in 0..instances {
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        rng.set_stream(u64::from(i));
        let hosts = 8 + (i as usize * 7) % 23;
        let tasks = 3 + (i as usize) % 6;
        let shape = Shape::ALL[i as usize % Shape::ALL.len()];
        let net = generate::network(&NetSpec::new(hosts), &mut rng);
        let graph = generate::call_graph(&GraphSpec::new(shape, tasks), &mut rng);
        let problem = Problem::new(&graph, &net)?;
        for (name, tally) in POLICIES.iter().zip(&mut tallies) {
            let pol = policy::by_name(name).map_err(anyhow::Error::msg)?;
            let t = Instant::now();
            let ex = exact::solve(&problem, pol.as_ref(), args.exact_limit);
            tally.exact_ms.push(ms_since(t));
            let t = Instant::now();
            let r = rounding::place(
                &problem,
                pol.as_ref(),
                &RoundingConfig {
                    seed: u64::from(i),
                    ..cfg
                },
            );
            tally.rounding_ms.push(ms_since(t));
            let g = greedy::place(&problem, pol.as_ref());
            match ex.result {
                Exact::Optimal(opt) => {
                    tally.optimal += 1;
                    if let Ok(r) = &r {
                        tally.rounding_feasible += 1;
                        tally
                            .rounding_ratio
                            .push(ratio(r.plan.objective, opt.objective));
                    }
                    if let Ok(g) = &g {
                        tally.greedy_feasible += 1;
                        tally.greedy_ratio.push(ratio(g.objective, opt.objective));
                    }
                }
                Exact::Infeasible => {
                    tally.infeasible += 1;
                    tally.false_plans += u32::from(r.is_ok()) + u32::from(g.is_ok());
                }
                Exact::Limit(_) => tally.limit += 1,
            }
        }
    }

    println!(
        "Quality: best-of-{} rounding and greedy against the exact optimum",
        args.rounds
    );
    println!(
        "{:<12} {:>7} {:>6} {:>5} {:>9} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "policy",
        "optimal",
        "infeas",
        "limit",
        "round-ok%",
        "round-mean",
        "round-p95",
        "round-max",
        "greedy-ok%",
        "greedy-mean",
        "exact-ms",
        "round-ms"
    );
    let mut all_r = Vec::new();
    let mut all_g = Vec::new();
    let (mut opt_total, mut feas_total, mut false_total) = (0u32, 0u32, 0u32);
    for (name, t) in POLICIES.iter().zip(&mut tallies) {
        let pct = |n: u32| 100.0 * f64::from(n) / f64::from(t.optimal.max(1));
        let mut sorted = t.rounding_ratio.clone();
        sorted.sort_by(f64::total_cmp);
        let p95 = sorted
            .get(((sorted.len() as f64) * 0.95) as usize)
            .or(sorted.last())
            .copied()
            .unwrap_or(f64::NAN);
        println!(
            "{:<12} {:>7} {:>6} {:>5} {:>9.1} {:>10.4} {:>9.4} {:>9.4} {:>9.1} {:>10.4} {:>9.2} {:>9.2}",
            name,
            t.optimal,
            t.infeasible,
            t.limit,
            pct(t.rounding_feasible),
            mean(&t.rounding_ratio),
            p95,
            sorted.last().copied().unwrap_or(f64::NAN),
            pct(t.greedy_feasible),
            mean(&t.greedy_ratio),
            median(&mut t.exact_ms),
            median(&mut t.rounding_ms),
        );
        all_r.extend_from_slice(&t.rounding_ratio);
        all_g.extend_from_slice(&t.greedy_ratio);
        opt_total += t.optimal;
        feas_total += t.rounding_feasible;
        false_total += t.false_plans;
    }
    let feasible_pct = 100.0 * f64::from(feas_total) / f64::from(opt_total.max(1));
    let greedy_ok: u32 = tallies.iter().map(|t| t.greedy_feasible).sum();
    println!(
        "all          {opt_total:>7} instances solved exactly; rounding feasible on {feasible_pct:.1}%, \
         mean ratio {:.4}; greedy feasible on {:.1}%, mean ratio {:.4} (over its feasible ones); \
         plans claimed on infeasible instances: {false_total}",
        mean(&all_r),
        100.0 * f64::from(greedy_ok) / f64::from(opt_total.max(1)),
        mean(&all_g),
    );
    if false_total > 0 {
        anyhow::bail!(
            "a placer returned a plan for an instance the exact solver proved infeasible"
        );
    }

    eprintln!("speed: 100 tasks on 10,000 hosts ...");
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let net = generate::network(&NetSpec::new(10_000), &mut rng);
    let graph = generate::call_graph(&GraphSpec::new(Shape::Tree, 100), &mut rng);
    let problem = Problem::new(&graph, &net)?;
    let time = |rounds: u32, reps: u32| -> anyhow::Result<(f64, f64, u32)> {
        let mut ms = Vec::new();
        let mut objective = f64::NAN;
        let mut passes = 0;
        for rep in 0..reps {
            let c = RoundingConfig {
                rounds,
                seed: u64::from(rep),
                ..cfg
            };
            let t = Instant::now();
            let out = rounding::place(&problem, &Latency, &c)?;
            ms.push(ms_since(t));
            objective = out.plan.objective;
            passes += out.passes;
        }
        Ok((median(&mut ms), objective, passes / reps.max(1)))
    };
    let (one, one_obj, one_passes) = time(1, reps)?;
    let (k, k_obj, k_passes) = time(args.rounds, reps.div_ceil(4).max(3))?;
    let mut greedy_ms = Vec::new();
    let mut greedy_obj = f64::NAN;
    for _ in 0..reps.div_ceil(4).max(3) {
        let t = Instant::now();
        greedy_obj = greedy::place(&problem, &Latency)?.objective;
        greedy_ms.push(ms_since(t));
    }
    let greedy_med = median(&mut greedy_ms);
    println!();
    println!("Speed: 100-task tree on a 10,000-host random geometric network, latency policy");
    println!(
        "{:<22} {:>12} {:>14} {:>12} {:>8}",
        "placer", "median ms", "vs one round", "objective", "passes"
    );
    println!(
        "{:<22} {:>12.2} {:>14.2} {:>12.1} {:>8}",
        "rounding, 1 round", one, 1.0, one_obj, one_passes
    );
    println!(
        "{:<22} {:>12.2} {:>14.2} {:>12.1} {:>8}",
        format!("rounding, best of {}", args.rounds),
        k,
        k / one,
        k_obj,
        k_passes
    );
    println!(
        "{:<22} {:>12.2} {:>14.2} {:>12.1} {:>8}",
        "greedy (all hosts)",
        greedy_med,
        greedy_med / one,
        greedy_obj,
        1
    );
    println!(
        "BENCH placement ratio_vs_exact={:.4} greedy_ratio_vs_exact={:.4} feasible_pct={:.1} \
         p50_ms_100x10000={:.3} p50_ms_100x10000_best_of_{}={:.1} greedy_p50_ms_100x10000={:.1}",
        mean(&all_r),
        mean(&all_g),
        feasible_pct,
        one,
        args.rounds,
        k,
        greedy_med
    );
    Ok(())
}
