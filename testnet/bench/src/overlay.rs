//! `brume bench overlay`: how well latency-bounded neighbourhood mapping works at scale.
//!
//! The sans-IO mapping core of every node runs in the overlay crate's discrete-event simulator
//! ([`brume_testnet::sim`]) over 1,000 and 10,000 simulated nodes, on the synthetic Internet-like
//! model (clustered, with triangle-inequality violations) or on an N x N RTT matrix read from a
//! file (`--rtt-matrix`). For each (nodes, budget) it runs `--maps` fresh maps from random origins
//! and reports:
//!
//! * the region: nodes whose shortest-path RTT **over the overlay** from the origin is within the
//!   budget (the simulator's ground truth), and recall and precision of the map against it;
//! * recall against the **direct** RTT set (`rtt(origin, v) <= budget`), which a protocol that
//!   only talks over overlay links cannot always reach: the cost of overlay detours;
//! * messages per map (requests, acks and answers) against a **flood** of the same region over the
//!   same overlay, counted in the same run (see [`flood_messages`]), and both per overlay link
//!   inside the region;
//! * completion time against the budget (median and max), and the worst overrun beyond the
//!   issue's target of budget plus one RTT (the largest link RTT inside the region);
//! * Vivaldi's median relative error over random pairs with a known RTT, after the simulator's
//!   warm-up pings.
//!
//! The last line carries the headline figures of the 1,000-node run at the 50 ms budget (the
//! scale nearest 1,000 and the budget nearest 50 ms when those are not in the run). Idle RSS needs
//! the real daemon and is left out of the line until it can be measured.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use brume_overlay::cones::Stickiness;
use brume_overlay::mapping::MapConfig;
use brume_testnet::latency::{LatencyModel, RttMatrix, SyntheticConfig, SyntheticInternet};
use brume_testnet::sim::{MapStats, SimConfig, Simulation};
use rand::seq::index;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::median;

const DEFAULT_NODES: [usize; 2] = [1_000, 10_000];
const QUICK_NODES: usize = 500;
const DEFAULT_BUDGETS: [f64; 4] = [10.0, 25.0, 50.0, 80.0];
const HEADLINE_NODES: usize = 1_000;
const HEADLINE_BUDGET_MS: f64 = 50.0;

/// Options of `brume bench overlay`.
#[derive(Debug, Clone, clap::Args)]
pub struct OverlayArgs {
    /// Simulated node counts of the synthetic model, comma-separated [default: 1000,10000;
    /// --quick: 500]. Ignored with --rtt-matrix (the file says how many nodes there are).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub nodes: Option<Vec<usize>>,
    /// Latency budgets of the maps in ms, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "MS,...", default_values_t = DEFAULT_BUDGETS)]
    pub budgets: Vec<f64>,
    /// Maps per (nodes, budget), each from a different random origin (the same origins for every
    /// budget) [default: 32; --quick: 3].
    #[arg(long, value_name = "N")]
    pub maps: Option<usize>,
    /// Seed of the synthetic model, the overlay graph, the warm-up pings and the origins.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Random node pairs over which Vivaldi's median relative error is taken [default: 20000;
    /// --quick: 2000].
    #[arg(long, value_name = "N")]
    pub vivaldi_pairs: Option<usize>,
    /// Run on this N x N RTT matrix (ms, whitespace-separated, row i column j = RTT from i to j,
    /// 0 or negative = unmeasured, `#` comments) instead of the synthetic model.
    #[arg(long, value_name = "FILE", conflicts_with = "write_matrix")]
    pub rtt_matrix: Option<PathBuf>,
    /// Write the synthetic model for one `--nodes N` (and `--seed`) as such a matrix file, then
    /// exit: a way to exercise --rtt-matrix without a published dataset.
    #[arg(long, value_name = "FILE")]
    pub write_matrix: Option<PathBuf>,
    /// Measure how far Vivaldi coordinates keep moving after the warm-up (1 to 32 more ping
    /// rounds) and how far the direction between two nodes turns, by their distance; then exit.
    #[arg(long)]
    pub coord_drift: bool,
    /// The synthetic model --write-matrix writes: `internet` (5 continents x 8 tight cities,
    /// the model of the runs without a matrix) or `metro` (3 continents x 20 wide metro areas,
    /// slower access, twice the badly routed pairs).
    #[arg(long, value_name = "MODEL", default_value = "internet")]
    pub model: ModelKind,
    /// A small smoke run: 500 nodes, 3 maps per budget, fewer Vivaldi pairs.
    #[arg(long)]
    pub quick: bool,
    /// Direct maps: a peer beyond the path budget is forwarded to when its predicted RTT from the
    /// origin, less this many times the coordinates' summed error, fits the budget.
    #[arg(long, value_name = "K", default_value_t = MapConfig::default().reach_margin)]
    pub reach_margin: f64,
    /// Direct maps: the origin waits this fraction of the budget beyond it for answers.
    #[arg(long, value_name = "F", default_value_t = MapConfig::default().reach_wait_factor)]
    pub reach_wait: f64,
    /// Direct maps: forward to peers predicted within budget x (1 + this).
    #[arg(long, value_name = "F", default_value_t = MapConfig::default().reach_slack)]
    pub reach_slack: f64,
    /// Direct maps: do not probe path-proven nodes (precision then rests on the triangle
    /// inequality, which the synthetic model violates on purpose).
    #[arg(long)]
    pub no_confirm_paths: bool,
    /// Direct maps: beyond the path budget, forward only outward (to peers predicted farther
    /// from the origin than the sender); off by default, as in `MapConfig`.
    #[arg(long)]
    pub outward: bool,
    /// Links per node of the joining overlay: to its N nearest nodes by RTT ...
    #[arg(long, value_name = "N", default_value_t = SimConfig::default().near)]
    pub near: usize,
    /// ... and to N uniformly random ones (a daemon's membership, 40 s after a testnet came
    /// up, had about 1 of its 4 nearest among 9 peers: --near 1 --far 8 resembles it).
    #[arg(long, value_name = "N", default_value_t = SimConfig::default().far)]
    pub far: usize,
    /// Links per node picked by Vivaldi distance across the space, added to the same overlay
    /// for a third set of maps in the same run (0: none).
    #[arg(long, value_name = "K", default_value_t = 2)]
    pub spread: usize,
    /// Yao-graph links: cut the Vivaldi plane around each node into K cones and link to the
    /// nearest node (in the plane) in each, for a fourth set of maps in the same run (0: none).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub cones: usize,
    /// With --cones: find the cone links as nodes would, from what their peers publish (their
    /// links, so each node sees its peers' peers), over this many rounds, instead of from every
    /// node's coordinate (0: every node's).
    #[arg(long, value_name = "R", default_value_t = 0)]
    pub cone_rounds: usize,
    /// With --cone-rounds: a node keeps a cone's link unless another node is nearer by more
    /// than this fraction of its distance.
    #[arg(long, value_name = "F", default_value_t = 0.1)]
    pub cone_keep: f64,
    /// With --cone-rounds: a node keeps a cone's link while its angle is within this many cone
    /// widths outside the cone.
    #[arg(long, value_name = "F", default_value_t = 0.25)]
    pub cone_slack: f64,
    /// With --cone-rounds: nodes nearer than this (ms, by coordinates) are no cone's choice.
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    pub cone_floor: f64,
    /// With --cone-rounds: between two rounds every link is pinged this many times (0: only
    /// the new links, 8 times).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub cone_pings: usize,
    /// Direct maps on the cone links: beyond the path budget, forward along the tree that the
    /// peers' published links define instead of flooding the ball (`MapConfig::reach_tree`).
    #[arg(long)]
    pub tree: bool,
    /// Parents per node in that tree.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub parents: usize,
    /// With --tree: requests within the path budget follow the tree too (otherwise they flood
    /// as in seed 004's map).
    #[arg(long)]
    pub tree_paths: bool,
    /// Direct maps: nodes do not list the records of peers they send no request to as
    /// candidates (`MapConfig::reach_rim`, on by default: a reached node lists its peers
    /// predicted within budget x (1 + --rim-slack), and the origin probes them).
    #[arg(long)]
    pub no_rim: bool,
    /// Direct maps: no request beyond the path budget (the map is then the path region and the
    /// candidates its nodes list).
    #[arg(long)]
    pub no_beyond: bool,
    /// Direct maps: the origin probes only candidates predicted within budget x (1 + this)
    /// (less the error margin); `inf`: every candidate.
    #[arg(long, value_name = "F", default_value_t = MapConfig::default().probe_slack)]
    pub probe_slack: f64,
    /// Warm-up rounds before the maps: every node pings each neighbour and a few random nodes
    /// once per round (Vivaldi's training).
    #[arg(long, value_name = "N", default_value_t = SimConfig::default().warmup_rounds)]
    pub warmup: usize,
    /// Direct maps: listed candidates are peers predicted within budget x (1 + this), less
    /// the error margin.
    #[arg(long, value_name = "F", default_value_t = MapConfig::default().rim_slack)]
    pub rim_slack: f64,
    /// Direct maps with --tree: a node lists as candidates also the peers whose parents in
    /// the tree are others, not only its own children it sends no request to
    /// (`MapConfig::rim_others`).
    #[arg(long)]
    pub rim_others: bool,
    /// Direct maps: each reached node reports straight to the origin instead of answering
    /// back along the request's path, and the origin probes as reports arrive
    /// (`MapConfig::reports`).
    #[arg(long)]
    pub reports: bool,
    /// With --reports: the origin ends a map at the budget plus the largest RTT a probe of it
    /// confirmed so far, instead of at its deadline (`MapConfig::reports_end_at_confirmed`).
    #[arg(long, requires = "reports")]
    pub end_at_confirmed: bool,
}

impl OverlayArgs {
    /// The mapping configuration of the direct (issue 17) maps of this run.
    fn reach_config(&self) -> MapConfig {
        MapConfig {
            reach: true,
            reach_margin: self.reach_margin,
            reach_wait_factor: self.reach_wait,
            reach_slack: self.reach_slack,
            confirm_paths: !self.no_confirm_paths,
            reach_outward: self.outward,
            reach_tree: self.tree,
            reach_tree_parents: self.parents,
            reach_tree_paths: self.tree_paths,
            reach_rim: !self.no_rim,
            rim_slack: self.rim_slack,
            rim_others: self.rim_others,
            reach_beyond: !self.no_beyond,
            probe_slack: self.probe_slack,
            reports: self.reports,
            reports_end_at_confirmed: self.end_at_confirmed,
            ..MapConfig::default()
        }
    }
}

/// Seed 004's map (paths only), the baseline run beside the direct maps.
fn path_config() -> MapConfig {
    MapConfig {
        reach: false,
        ..MapConfig::default()
    }
}

/// The synthetic models `--write-matrix` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    Internet,
    Metro,
}

/// One (nodes, budget) row of the table.
struct Row {
    budget_ms: f64,
    maps: usize,
    complete: usize,
    region_mean: f64,
    region_max: usize,
    recall_mean: f64,
    recall_min: f64,
    precision_mean: f64,
    recall_direct_mean: f64,
    msgs_per_map: f64,
    flood_msgs_per_map: f64,
    msgs_per_link: f64,
    flood_msgs_per_link: f64,
    requests_vs_flood: f64,
    completion_median_ms: f64,
    completion_max_ms: f64,
    /// Largest `completion - (budget + largest link RTT in the region)`; <= 0 meets the target.
    worst_overrun_ms: f64,
    direct_mean: f64,
    precision_direct_mean: f64,
    precision_direct_min: f64,
    recall_direct_min: f64,
    probes_per_map: f64,
    path_proven_per_map: f64,
    msgs_per_direct_link: f64,
    /// Largest `completion - (budget + largest confirmation RTT)`.
    worst_confirm_overrun_ms: f64,
    /// The overlay's completion floor (means of [`MapStats::floor_answers`] and `floor_reports`).
    floor_answers_mean: f64,
    floor_reports_mean: f64,
    /// Mean kB of a map's requests, acks and answers as daemons would send them.
    kb_per_map: f64,
}

/// One latency model's results.
struct Scale {
    label: String,
    nodes: usize,
    links: usize,
    vivaldi_err: f64,
    warmup_rounds: usize,
    /// The joining overlay's nearest and random links per node.
    near: usize,
    far: usize,
    build_s: f64,
    maps_s: f64,
    /// Seed 004's maps (paths only) and issue 17's direct maps, same overlay, same origins.
    rows: Vec<Row>,
    direct_rows: Vec<Row>,
    /// Direct maps after `--spread` Vivaldi-spread links per node were added (if any).
    spread_rows: Option<(Vec<Row>, usize)>,
    /// Direct maps on the joining overlay plus `--cones` Yao links per node (if any).
    cone_rows: Option<(Vec<Row>, usize, String)>,
}

/// Messages a plain flood of the same region would send, with duplicate suppression and the
/// same acknowledgements and answers as the protocol.
///
/// The flood: the origin sends the request to every overlay neighbour; a node that hears it for
/// the first time, with the RTT accumulated along its path within the budget, forwards it to every
/// neighbour but the one it heard it from; every request is acknowledged (a duplicate or an
/// out-of-budget one with "no answer follows"); every region node but the origin answers its
/// parent once. Messages travel at link speed, so the first copy arrives along the shortest path
/// and the nodes that forward are exactly the ground-truth region `R`. Hence
/// `requests = sum over R of degree - (|R| - 1)` (the simulator's `flood_requests`, counted on the
/// same overlay in the same run) and `messages = 2 * requests + (|R| - 1)`.
pub fn flood_messages(s: &MapStats) -> usize {
    2 * s.flood_requests + s.truth.saturating_sub(1)
}

fn summarise(budget_ms: f64, stats: &[MapStats]) -> Row {
    let k = stats.len().max(1) as f64;
    let mean = |f: &dyn Fn(&MapStats) -> f64| stats.iter().map(f).sum::<f64>() / k;
    let msgs: usize = stats.iter().map(|s| s.messages).sum();
    let flood: usize = stats.iter().map(flood_messages).sum();
    let links: usize = stats.iter().map(|s| s.region_links).sum();
    let reqs: usize = stats.iter().map(|s| s.requests).sum();
    let flood_reqs: usize = stats.iter().map(|s| s.flood_requests).sum();
    let per_link = |m: usize| {
        if links == 0 {
            0.0
        } else {
            m as f64 / links as f64
        }
    };
    let mut completion: Vec<f64> = stats.iter().map(|s| s.completion_ms).collect();
    let direct_links: usize = stats.iter().map(|s| s.direct_region_links).sum();
    Row {
        budget_ms,
        maps: stats.len(),
        complete: stats.iter().filter(|s| s.complete).count(),
        region_mean: mean(&|s| s.truth as f64),
        region_max: stats.iter().map(|s| s.truth).max().unwrap_or(0),
        recall_mean: mean(&|s| s.recall),
        recall_min: stats.iter().map(|s| s.recall).fold(1.0, f64::min),
        precision_mean: mean(&|s| s.precision),
        recall_direct_mean: mean(&|s| s.recall_direct),
        msgs_per_map: msgs as f64 / k,
        flood_msgs_per_map: flood as f64 / k,
        msgs_per_link: per_link(msgs),
        flood_msgs_per_link: per_link(flood),
        requests_vs_flood: reqs as f64 / flood_reqs.max(1) as f64,
        completion_max_ms: completion.iter().copied().fold(0.0, f64::max),
        completion_median_ms: median(&mut completion),
        worst_overrun_ms: stats
            .iter()
            .map(|s| s.completion_ms - s.budget_ms - s.max_region_link_ms)
            .fold(f64::NEG_INFINITY, f64::max),
        direct_mean: mean(&|s| s.direct as f64),
        precision_direct_mean: mean(&|s| s.precision_direct),
        precision_direct_min: stats.iter().map(|s| s.precision_direct).fold(1.0, f64::min),
        recall_direct_min: stats.iter().map(|s| s.recall_direct).fold(1.0, f64::min),
        probes_per_map: mean(&|s| s.probes as f64),
        floor_answers_mean: mean(&|s| s.floor_answers),
        floor_reports_mean: mean(&|s| s.floor_reports),
        kb_per_map: mean(&|s| s.bytes as f64) / 1000.0,
        path_proven_per_map: mean(&|s| s.path_proven as f64),
        msgs_per_direct_link: if direct_links == 0 {
            0.0
        } else {
            msgs as f64 / direct_links as f64
        },
        worst_confirm_overrun_ms: stats
            .iter()
            .map(|s| s.completion_ms - s.budget_ms - s.max_confirm_ms)
            .fold(f64::NEG_INFINITY, f64::max),
    }
}

fn evaluate(
    label: String,
    model: &dyn LatencyModel,
    args: &OverlayArgs,
    maps: usize,
    vivaldi_pairs: usize,
) -> Scale {
    let (budgets, seed) = (&args.budgets, args.seed);
    let n = model.len();
    eprintln!("{label}: building the overlay and warming up ...");
    let t = Instant::now();
    let config = SimConfig {
        seed,
        map: path_config(),
        warmup_rounds: args.warmup,
        near: args.near,
        far: args.far,
        ..SimConfig::default()
    };
    let mut sim = Simulation::new(model, config);
    let build_s = t.elapsed().as_secs_f64();
    let vivaldi_err = sim.vivaldi_median_error(vivaldi_pairs);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0016_1215);
    let origins = index::sample(&mut rng, n, maps.min(n)).into_vec();
    eprintln!(
        "{label}: {} maps per budget over {} budgets ...",
        origins.len(),
        budgets.len()
    );
    let t = Instant::now();
    let run = |sim: &mut Simulation<'_>| -> Vec<Row> {
        budgets
            .iter()
            .map(|&b| {
                let stats: Vec<MapStats> = origins.iter().map(|&o| sim.run_map(o, b)).collect();
                summarise(b, &stats)
            })
            .collect()
    };
    let rows = run(&mut sim);
    let links = sim.graph().links();
    sim.set_map_config(args.reach_config());
    if args.tree {
        // What the daemon's state exchange tells each node: its neighbours' links.
        sim.publish_links();
    }
    let direct_rows = run(&mut sim);
    let cone_rows = (args.cones > 0).then(|| {
        let mut sim = Simulation::new(
            model,
            SimConfig {
                seed,
                map: args.reach_config(),
                warmup_rounds: args.warmup,
                near: args.near,
                far: args.far,
                ..SimConfig::default()
            },
        );
        let before = sim.graph().links();
        let how = if args.cone_rounds == 0 {
            sim.cone_links(args.cones);
            "from every node's coordinate".to_string()
        } else {
            let per_round = sim.seen_cone_links(
                args.cones,
                args.cone_rounds,
                Stickiness {
                    keep: args.cone_keep,
                    slack: args.cone_slack,
                    floor_ms: args.cone_floor,
                },
                args.cone_pings,
            );
            format!("from peers' peers, (added, dropped) per round {per_round:?}")
        };
        sim.publish_links();
        let added = sim.graph().links() - before;
        let degree = (0..n)
            .map(|i| sim.graph().neighbours(i).len())
            .max()
            .unwrap_or(0);
        (
            run(&mut sim),
            added,
            format!("{how}, largest degree {degree}"),
        )
    });
    let spread_rows = (args.spread > 0).then(|| {
        let before = sim.graph().links();
        sim.spread_links(args.spread);
        let added = sim.graph().links() - before;
        (run(&mut sim), added)
    });
    Scale {
        label,
        nodes: n,
        links,
        vivaldi_err,
        warmup_rounds: args.warmup,
        near: args.near,
        far: args.far,
        build_s,
        maps_s: t.elapsed().as_secs_f64(),
        rows,
        direct_rows,
        spread_rows,
        cone_rows,
    }
}

fn print_scale(s: &Scale) {
    println!(
        "{}: {} nodes, {} overlay links ({} nearest + {} random per node), Vivaldi median \
         relative error {:.1}% after {} warm-up rounds; built in {:.1} s, maps in {:.1} s",
        s.label,
        s.nodes,
        s.links,
        s.near,
        s.far,
        100.0 * s.vivaldi_err,
        s.warmup_rounds,
        s.build_s,
        s.maps_s
    );
    println!(
        "{:>6} {:>4} {:>4} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "budget",
        "maps",
        "done",
        "region",
        "max",
        "recall%",
        "min%",
        "prec%",
        "direct%",
        "msgs/map",
        "flood/map",
        "msg/lnk",
        "fld/lnk",
        "req/fld",
        "t50_ms",
        "tmax_ms",
        "over_ms"
    );
    for r in &s.rows {
        println!(
            "{:>6.0} {:>4} {:>4} {:>7.1} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.1} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>8.1} {:>8.1}",
            r.budget_ms,
            r.maps,
            r.complete,
            r.region_mean,
            r.region_max,
            100.0 * r.recall_mean,
            100.0 * r.recall_min,
            100.0 * r.precision_mean,
            100.0 * r.recall_direct_mean,
            r.msgs_per_map,
            r.flood_msgs_per_map,
            r.msgs_per_link,
            r.flood_msgs_per_link,
            r.requests_vs_flood,
            r.completion_median_ms,
            r.completion_max_ms,
            r.worst_overrun_ms
        );
    }
    print_direct(
        "  direct maps (issue 17: forwarding on predicted direct RTT, origin probes):",
        &s.direct_rows,
    );
    if let Some((rows, added)) = &s.spread_rows {
        print_direct(
            &format!(
                "  direct maps after adding Vivaldi-spread links ({added} links, {} overlay links in all):",
                s.links + added
            ),
            rows,
        );
    }
    if let Some((rows, added, how)) = &s.cone_rows {
        print_direct(
            &format!(
                "  direct maps after adding Yao cone links ({added} links {how}, {} overlay links in all):",
                s.links + added
            ),
            rows,
        );
    }
    println!();
}

fn print_direct(title: &str, rows: &[Row]) {
    println!("{title}");
    println!(
        "{:>6} {:>4} {:>4} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "budget",
        "maps",
        "done",
        "direct",
        "recall%",
        "min%",
        "prec%",
        "minp%",
        "ovl_rc%",
        "msgs/map",
        "probes",
        "paths",
        "msg/lnk",
        "t50_ms",
        "tmax_ms",
        "over_ms",
        "floorA%",
        "floorR%",
        "kB/map"
    );
    for r in rows {
        println!(
            "{:>6.0} {:>4} {:>4} {:>7.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.1} {:>8.1} {:>8.1} {:>8.2} {:>8.1} {:>8.1} {:>8.1} {:>8.2} {:>8.2} {:>8.1}",
            r.budget_ms,
            r.maps,
            r.complete,
            r.direct_mean,
            100.0 * r.recall_direct_mean,
            100.0 * r.recall_direct_min,
            100.0 * r.precision_direct_mean,
            100.0 * r.precision_direct_min,
            100.0 * r.recall_mean,
            r.msgs_per_map,
            r.probes_per_map,
            r.path_proven_per_map,
            r.msgs_per_direct_link,
            r.completion_median_ms,
            r.completion_max_ms,
            r.worst_confirm_overrun_ms,
            100.0 * r.floor_answers_mean,
            100.0 * r.floor_reports_mean,
            r.kb_per_map
        );
    }
}

fn print_legend() {
    println!(
        "Columns: budget ms; maps run and maps the originator reported complete; region = nodes \
         within the budget by shortest-path RTT over the overlay (mean, max) = the ground truth; \
         recall% (mean, min) and prec% against it; direct% = recall against the nodes whose \
         direct RTT from the origin is within the budget; msgs/map = requests + acks + answers of \
         the protocol, flood/map = a flood of the same region over the same overlay with \
         duplicate suppression, acks and answers (2 x flood requests + region - 1), both also per \
         overlay link inside the region (msg/lnk, fld/lnk; target <= 2); req/fld = protocol \
         requests / flood requests; t50_ms, tmax_ms = median and max completion; over_ms = worst \
         completion - (budget + largest link RTT in the region), <= 0 meets the target. \
         Direct maps: direct = nodes whose direct RTT from the origin is within the budget \
         (the truth); recall% (mean, min) and prec% (mean, minp% the worst map) against it; \
         ovl_rc% = recall against the overlay-path region above; msgs/map counts requests, \
         acks, answers and 2 per confirmation probe (ping, pong); probes, paths = probes and \
         path-proven nodes per map; msg/lnk = messages per overlay link inside the direct \
         region (target <= 2); over_ms = worst completion - (budget + largest confirmation \
         RTT), <= 0 meets the target; floorA%, floorR% = the overlay's completion floor, \
         whatever the protocol: the share of the direct region any map could confirm by \
         budget + the region's largest direct RTT, learning of a node when an answer climbing \
         back along the shortest overlay path could bring it (from the node or a neighbour \
         listing it; floorA) or when a report sent straight back could (floorR), then probing \
         it; kB/map = kB of a map's requests, acks and answers on the wire (CBOR, every record \
         weighed as a daemon's signed one with its peer id and one address; probes not \
         counted)."
    );
}

fn check_budgets(budgets: &[f64]) -> anyhow::Result<()> {
    if budgets.is_empty() {
        anyhow::bail!("--budgets is empty: give one or more budgets in ms, e.g. --budgets 10,50");
    }
    let max = MapConfig::default().max_budget_ms;
    for &b in budgets {
        if !(b.is_finite() && b > 0.0 && b <= max) {
            anyhow::bail!(
                "--budgets: {b} ms is not a usable budget; each must be > 0 and <= {max}"
            );
        }
    }
    Ok(())
}

fn write_matrix(path: &Path, nodes: usize, seed: u64, kind: ModelKind) -> anyhow::Result<()> {
    let config = match kind {
        ModelKind::Internet => SyntheticConfig::internet(nodes, seed),
        ModelKind::Metro => SyntheticConfig::metro(nodes, seed),
    };
    let model = SyntheticInternet::new(config);
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot create the matrix file {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let write = |out: &mut std::io::BufWriter<std::fs::File>| -> std::io::Result<()> {
        writeln!(
            out,
            "# brume synthetic model {kind:?}: {nodes} nodes, seed {seed}; RTT in ms, \
             row i column j = RTT from i to j"
        )?;
        let mut line = String::new();
        for i in 0..nodes {
            line.clear();
            for j in 0..nodes {
                if j > 0 {
                    line.push(' ');
                }
                match model.rtt(i, j) {
                    Some(v) => line.push_str(&format!("{v:.3}")),
                    None => line.push_str("-1"),
                }
            }
            line.push('\n');
            out.write_all(line.as_bytes())?;
        }
        out.flush()
    };
    write(&mut out).with_context(|| format!("cannot write the matrix file {}", path.display()))?;
    println!(
        "wrote the synthetic model ({nodes} nodes, seed {seed}) as a {nodes} x {nodes} RTT matrix \
         to {}",
        path.display()
    );
    Ok(())
}

/// The index of the value nearest `target` (the first on ties).
fn nearest<T>(xs: &[T], target: f64, f: impl Fn(&T) -> f64) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if (f(x) - target).abs() < (f(&xs[best]) - target).abs() {
            best = i;
        }
    }
    best
}

pub fn run(args: &OverlayArgs) -> anyhow::Result<()> {
    let nodes = match (&args.nodes, args.quick) {
        (Some(n), _) => n.clone(),
        (None, true) => vec![QUICK_NODES],
        (None, false) => DEFAULT_NODES.to_vec(),
    };
    if let Some(&n) = nodes.iter().find(|&&n| n < 2) {
        anyhow::bail!("--nodes: {n} is too few; a map needs at least 2 nodes");
    }
    if nodes.is_empty() {
        anyhow::bail!("--nodes is empty: give one or more node counts, e.g. --nodes 1000");
    }
    if let Some(path) = &args.write_matrix {
        let [n] = nodes[..] else {
            anyhow::bail!(
                "--write-matrix writes one model: give exactly one --nodes N (got {})",
                nodes
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
        };
        return write_matrix(path, n, args.seed, args.model);
    }
    check_budgets(&args.budgets)?;
    let maps = args.maps.unwrap_or(if args.quick { 3 } else { 32 });
    if maps == 0 {
        anyhow::bail!("--maps must be at least 1");
    }
    let pairs = args
        .vivaldi_pairs
        .unwrap_or(if args.quick { 2_000 } else { 20_000 });

    if cfg!(debug_assertions) && !args.quick {
        eprintln!("warning: this is a debug build; it will be slow (use --release)");
    }
    let mut scales = Vec::new();
    if let Some(path) = &args.rtt_matrix {
        // The error's own text names the file, the line and the column; its source chain would
        // only repeat the I/O error, so it is not attached.
        let matrix =
            RttMatrix::from_file(path).map_err(|e| anyhow::anyhow!("--rtt-matrix refused: {e}"))?;
        let n = matrix.len();
        let measured = matrix.measured_pairs();
        if n < 2 || measured == 0 {
            anyhow::bail!(
                "--rtt-matrix {}: {n} x {n} with {measured} measured pairs; the simulation needs \
                 at least 2 nodes and some measured RTTs (entries > 0)",
                path.display()
            );
        }
        println!(
            "RTT matrix {}: {n} nodes, {measured} of {} pairs measured",
            path.display(),
            n * (n - 1) / 2
        );
        if args.coord_drift {
            crate::coord_drift::coord_drift(&matrix, args.seed, args.warmup);
            return Ok(());
        }
        scales.push(evaluate(
            format!("matrix {}", path.display()),
            &matrix,
            args,
            maps,
            pairs,
        ));
    } else {
        for &n in &nodes {
            let model = SyntheticInternet::new(SyntheticConfig::internet(n, args.seed));
            if args.coord_drift {
                crate::coord_drift::coord_drift(&model, args.seed, args.warmup);
                continue;
            }
            scales.push(evaluate(
                format!("synthetic, seed {}", args.seed),
                &model,
                args,
                maps,
                pairs,
            ));
        }
    }

    if args.coord_drift {
        return Ok(());
    }
    println!("Overlay mapping in the discrete-event simulator (sans-IO mapping core)");
    println!();
    for s in &scales {
        print_scale(s);
    }
    print_legend();

    let si = nearest(&scales, HEADLINE_NODES as f64, |s: &Scale| s.nodes as f64);
    let s = &scales[si];
    let ri = nearest(&s.rows, HEADLINE_BUDGET_MS, |r: &Row| r.budget_ms);
    let r = &s.rows[ri];
    let d = &s.direct_rows[ri];
    println!(
        "Headline: {} nodes at the {} ms budget: seed 004's map: recall {:.2}% (overlay ground \
         truth; direct {:.2}%), {:.2} messages per region link (flood {:.2}); direct maps: \
         recall {:.2}% and precision {:.2}% against direct RTTs, {:.2} messages per direct-region \
         link with {:.1} probes per map; Vivaldi median error {:.1}%.",
        s.nodes,
        r.budget_ms,
        100.0 * r.recall_mean,
        100.0 * r.recall_direct_mean,
        r.msgs_per_link,
        r.flood_msgs_per_link,
        100.0 * d.recall_direct_mean,
        100.0 * d.precision_direct_mean,
        d.msgs_per_direct_link,
        d.probes_per_map,
        100.0 * s.vivaldi_err
    );
    let (settle, window) = if args.quick {
        (Duration::from_secs(2), Duration::from_secs(3))
    } else {
        (Duration::from_secs(10), Duration::from_secs(30))
    };
    eprintln!(
        "measuring an idle daemon: 3 `brume node` on loopback, {settle:?} to settle, then \
         {window:?} of /proc readings..."
    );
    let idle = super::idle::measure(settle, window)?;
    println!(
        "Idle node (real daemon, 2 peers, default timers): RSS {:.1} MB, CPU {:.2}% of one core \
         over {:?}",
        idle.rss_mb, idle.cpu_pct, idle.window
    );
    println!(
        "BENCH overlay recall_pct={:.2} msgs_per_region_link={:.3} vivaldi_median_err_pct={:.2} \
         idle_rss_mb={:.1} idle_cpu_pct={:.3} direct_recall_pct={:.2}",
        100.0 * r.recall_mean,
        d.msgs_per_direct_link,
        100.0 * s.vivaldi_err,
        idle.rss_mb,
        idle.cpu_pct,
        100.0 * d.recall_direct_mean
    );
    Ok(())
}
