//! `brume place`: plans where a service's tasks would run on a network described in a file,
//! without deploying anything. It is how an operator tries a manifest, a policy or a network
//! before `brume deploy`, and how scripts ask for a plan (`--json`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use brume_placement::exact::{self, Exact};
use brume_placement::{greedy, policy, rounding, Policy, Problem};

use crate::manifest::Manifest;
use crate::netfile;
use crate::report;
use crate::verdict::{Algorithm, Search, Verdict};

/// Exit status when the instance has no plan, so scripts can tell "no room" from "bad input" (1).
pub const NO_PLAN: u8 = 2;

/// Options of `brume place`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = "\
Examples:
  brume place --network examples/networks/edge-lab.toml --graph examples/fedavg/service.toml
  brume place --network examples/networks/edge-lab.toml --graph examples/fedavg/service.toml \\
      --policy mix:latency=1,load=50 --seed 7 --json

Exit status: 0 with a plan, 2 when no plan satisfies every rule (the message names the task that \
could not be placed and why), 1 on bad input.")]
pub struct PlaceArgs {
    /// The network: a TOML file naming the `initiator` host, with one [[host]] table per device
    /// (id, cpu_millis, memory_mb, labels, coord = [x, y, height] in ms, ...) and [[link]] tables
    /// for measured RTTs (a, b, rtt_ms, bandwidth_mbps). See examples/networks/README.md.
    #[arg(long, value_name = "NET.toml")]
    pub network: PathBuf,

    /// The service manifest: [service] name and root task, [[task]] tables (name, what to run,
    /// cpu_millis, memory_mb, labels, replicas, ...) and [[call]] tables (from, to, latency_ms,
    /// traffic_mbps). See examples/fedavg/service.toml.
    #[arg(long, value_name = "SERVICE.toml")]
    pub graph: PathBuf,

    /// What a good plan is: latency (traffic-weighted RTT), load (the fullest host), energy, cost,
    /// reliability, or a weighted mix such as mix:latency=1,load=50.
    #[arg(long, default_value = "latency", value_parser = parse_policy)]
    pub policy: String,

    /// Independent rounds of randomized rounding; the best plan wins.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// Seed of the random draws: the same seed, files and options give the same plan.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Print one JSON document (the plan with task names and host ids) instead of a table.
    #[arg(long)]
    pub json: bool,

    /// rounding: what brume deploys with. greedy: one pass, cheapest host each time (a baseline).
    /// exact: branch and bound, optimal but exponential; for small instances.
    #[arg(long, value_enum, default_value_t = Algorithm::Rounding)]
    pub algorithm: Algorithm,

    /// Search nodes the exact algorithm may visit before it stops with the best plan so far.
    #[arg(long, default_value_t = 20_000_000)]
    pub node_limit: u64,
}

fn parse_policy(s: &str) -> Result<String, String> {
    policy::by_name(s).map(|_| s.to_string())
}

/// Runs the chosen algorithm on a validated problem.
pub fn solve(problem: &Problem, policy: &dyn Policy, args: &PlaceArgs) -> anyhow::Result<Verdict> {
    let cfg = rounding::RoundingConfig {
        rounds: args.rounds,
        seed: args.seed,
        ..Default::default()
    };
    match args.algorithm {
        Algorithm::Rounding => match rounding::place(problem, policy, &cfg) {
            Ok(o) => Ok(Verdict::Placed {
                plan: o.plan,
                search: Search::Rounding {
                    rounds: args.rounds,
                    feasible_rounds: o.feasible_rounds,
                    best_round: o.best_round,
                },
            }),
            Err(e) => Verdict::from_error(e),
        },
        Algorithm::Greedy => match greedy::place(problem, policy) {
            Ok(plan) => Ok(Verdict::Placed {
                plan,
                search: Search::Greedy,
            }),
            Err(e) => Verdict::from_error(e),
        },
        Algorithm::Exact => {
            let out = exact::solve(problem, policy, args.node_limit);
            let found = |plan, optimal| Verdict::Placed {
                plan,
                search: Search::Exact {
                    nodes: out.nodes,
                    optimal,
                },
            };
            match out.result {
                Exact::Optimal(plan) => Ok(found(plan, true)),
                Exact::Limit(Some(plan)) => Ok(found(plan, false)),
                Exact::Limit(None) => Ok(Verdict::NoPlan {
                    task: None,
                    reason: format!(
                        "the exact search stopped at its node limit ({}) before finding any plan: raise --node-limit, or use --algorithm rounding",
                        args.node_limit
                    ),
                }),
                // Proven infeasible; rounding's dead end says which task and why.
                Exact::Infeasible => match rounding::place(problem, policy, &cfg) {
                    Err(e) => Verdict::from_error(e),
                    Ok(_) => Ok(Verdict::NoPlan {
                        task: None,
                        reason: "no plan satisfies every rule (exhaustive search)".into(),
                    }),
                },
            }
        }
    }
}

/// `brume place`: loads both files, plans, prints; exit status 2 when there is no plan.
pub fn run(args: &PlaceArgs) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(&args.graph)?;
    let net = netfile::load(&args.network)?;
    let policy = policy::by_name(&args.policy).map_err(anyhow::Error::msg)?;
    let graph = manifest.call_graph();
    let problem = Problem::new(&graph, &net)
        .with_context(|| format!("cannot place {}", args.graph.display()))?;
    let verdict = solve(&problem, policy.as_ref(), args)?;
    let view = report::View {
        manifest: &manifest,
        problem: &problem,
        policy: policy.name(),
        algorithm: args.algorithm,
        seed: args.seed,
        node_limit: args.node_limit,
    };
    if args.json {
        let doc = serde_json::to_string_pretty(&view.json(&verdict))
            .context("cannot encode the plan as JSON")?;
        println!("{doc}");
    } else if let Verdict::Placed { plan, search } = &verdict {
        print!("{}", view.table(plan, search));
    }
    match verdict.message() {
        None => Ok(ExitCode::SUCCESS),
        Some(msg) => {
            eprintln!("error: {msg}");
            Ok(ExitCode::from(NO_PLAN))
        }
    }
}
