//! The mapping protocol at scale, in the discrete-event simulator: the targets where they
//! hold, plus fault cases. Numbers are printed (`cargo test -p brume-overlay --test sim --
//! --nocapture`) so they can be copied into BENCHMARKS.md.
//!
//! Deterministic: every model, overlay graph and warm-up is drawn from a fixed seed (named in
//! each failure message), and time is the simulator's, so a run here is the run CI makes.

use brume_overlay::cones::Stickiness;
use brume_overlay::ids::{MapId, NodeId, Time};
use brume_overlay::mapping::{MapConfig, MapRequest, MappingNode, Message, Output, Refusal};
use brume_overlay::neighbourhood::{NodeRecord, RttHow};
use brume_overlay::wire;
use brume_testnet::latency::{
    to_matrix_text, LatencyModel, RttMatrix, SyntheticConfig, SyntheticInternet,
};
use brume_testnet::sim::{summarise, BudgetSummary, SimConfig, Simulation};

const BUDGETS: [f64; 4] = [10.0, 25.0, 50.0, 80.0];

/// The seed of the synthetic model of the scale tests (the simulator's own is
/// `SimConfig::default().seed`).
const SCALE_SEED: u64 = 42;

fn report(n: usize, rows: &[BudgetSummary], vivaldi: f64) {
    eprintln!("nodes={n}");
    eprintln!(
        "{:>7} {:>5} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>10} {:>9}",
        "budget",
        "maps",
        "region",
        "recall",
        "minrec",
        "precision",
        "rec_dir",
        "msg/link",
        "req/flood",
        "max_done"
    );
    for r in rows {
        eprintln!(
            "{:>7.0} {:>5} {:>8.1} {:>8.4} {:>8.4} {:>9.4} {:>9.4} {:>9.2} {:>10.2} {:>9.1}",
            r.budget_ms,
            r.maps,
            r.mean_truth,
            r.mean_recall,
            r.min_recall,
            r.mean_precision,
            r.mean_recall_direct,
            r.messages_per_region_link,
            r.requests_vs_flood,
            r.max_completion_ms
        );
    }
    eprintln!("vivaldi median relative error = {:.4}", vivaldi);
}

/// Seed 004's map (paths only): the properties its overlay-path ground truth promises.
fn path_maps() -> SimConfig {
    SimConfig {
        map: MapConfig {
            reach: false,
            ..MapConfig::default()
        },
        ..SimConfig::default()
    }
}

fn run_scale(n: usize, maps_per_budget: usize) -> (Vec<BudgetSummary>, f64) {
    let model = SyntheticInternet::new(SyntheticConfig::internet(n, SCALE_SEED));
    let mut sim = Simulation::new(&model, path_maps());
    let vivaldi = sim.vivaldi_median_error(20_000);
    let origins: Vec<usize> = (0..maps_per_budget).map(|k| (k * 7919) % n).collect();
    let rows: Vec<BudgetSummary> = BUDGETS
        .iter()
        .map(|&b| summarise(&mut sim, &origins, b))
        .collect();
    report(n, &rows, vivaldi);
    (rows, vivaldi)
}

fn check_targets(rows: &[BudgetSummary], vivaldi: f64) {
    let seeds = format!(
        "model seed {SCALE_SEED}, simulator seed {}",
        SimConfig::default().seed
    );
    for r in rows {
        assert!(r.mean_recall >= 0.99, "recall ({seeds}) {r:?}");
        assert!(r.mean_precision >= 0.99, "precision ({seeds}) {r:?}");
        assert!(
            r.worst_overrun_ms <= 0.0,
            "completion beyond budget + one RTT ({seeds}): {r:?}"
        );
    }
    assert!(vivaldi <= 0.15, "vivaldi median error {vivaldi} ({seeds})");
}

#[test]
fn thousand_nodes_meet_the_targets() {
    let (rows, vivaldi) = run_scale(1_000, 6);
    check_targets(&rows, vivaldi);
}

/// Maps by direct RTT (issue 17, the default): whatever Vivaldi predicts and however far
/// requests travel beyond the path budget, a finished map holds only nodes whose RTT from the
/// origin was proven within the budget: by the origin's own measurement or its probe (every
/// non-peer is probed, path-proven ones included, since the model violates the triangle
/// inequality). Precision against the direct RTTs is therefore 100 % on every map, and the map
/// never loses a node seed 004's map proves within the budget by the origin's own links.
/// Recall is a benchmark figure (`brume bench overlay`), not asserted here.
#[test]
fn direct_maps_hold_only_nodes_within_the_budget() {
    let n = 1_000;
    let model = SyntheticInternet::new(SyntheticConfig::internet(n, SCALE_SEED));
    let config = SimConfig::default();
    assert!(config.map.reach && config.map.confirm_paths);
    let mut sim = Simulation::new(&model, config);
    let seeds = format!(
        "model seed {SCALE_SEED}, simulator seed {}",
        SimConfig::default().seed
    );
    let origins: Vec<usize> = (0..6).map(|k| (k * 7919) % n).collect();
    for budget in BUDGETS {
        let mut probes = 0;
        for &o in &origins {
            let s = sim.run_map(o, budget);
            eprintln!(
                "direct map from {o} within {budget} ms: {} nodes of {} within, recall {:.3}, \
                 precision {:.3}, {} probes, {} messages, {:.1} ms",
                s.map.nodes.len(),
                s.direct,
                s.recall_direct,
                s.precision_direct,
                s.probes,
                s.messages,
                s.completion_ms
            );
            assert_eq!(s.precision_direct, 1.0, "origin {o}, {budget} ms ({seeds})");
            for r in &s.map.nodes {
                let v = r.id.0 as usize;
                let proof = s
                    .map
                    .proof(r.id)
                    .expect("every node of a direct map says how");
                assert!(
                    matches!(proof.how, RttHow::Direct | RttHow::Origin),
                    "origin {o}, node {v}: {proof:?} ({seeds})"
                );
                assert!(proof.rtt_ms <= budget, "origin {o}: {proof:?} ({seeds})");
            }
            assert!(s.complete, "origin {o}, {budget} ms ({seeds})");
            probes += s.probes;
        }
        assert!(probes > 0, "{budget} ms: no map probed anything ({seeds})");
    }
}

/// On cone (Yao) links with requests beyond the path budget following the peers' trees, maps
/// keep precision 1 against direct RTTs and cost fewer messages than the same maps flooding the
/// ball, without losing much recall. Deterministic: pinned seeds, the simulator's own time.
#[test]
fn tree_maps_on_cone_links_are_exact_and_cheaper_than_flooding_the_ball() {
    let n = 1_000;
    let model = SyntheticInternet::new(SyntheticConfig::internet(n, SCALE_SEED));
    let seeds = format!(
        "model seed {SCALE_SEED}, simulator seed {}",
        SimConfig::default().seed
    );
    let on_cones = |map: MapConfig| {
        let mut sim = Simulation::new(
            &model,
            SimConfig {
                map,
                ..SimConfig::default()
            },
        );
        sim.cone_links(8);
        sim.publish_links();
        sim
    };
    let mut flood = on_cones(MapConfig::default());
    let mut tree = on_cones(MapConfig {
        reach_tree: true,
        reach_tree_parents: 2,
        ..MapConfig::default()
    });
    let origins: Vec<usize> = (0..6).map(|k| (k * 7919) % n).collect();
    for budget in [25.0, 50.0] {
        let (mut flood_msgs, mut tree_msgs, mut flood_found, mut tree_found) = (0, 0, 0, 0);
        for &o in &origins {
            let f = flood.run_map(o, budget);
            let t = tree.run_map(o, budget);
            assert_eq!(t.precision_direct, 1.0, "origin {o}, {budget} ms ({seeds})");
            assert!(t.complete, "origin {o}, {budget} ms ({seeds})");
            flood_msgs += f.messages;
            tree_msgs += t.messages;
            flood_found += f.map.nodes.len();
            tree_found += t.map.nodes.len();
        }
        eprintln!(
            "{budget} ms: flood {flood_msgs} messages, {flood_found} nodes; tree {tree_msgs} \
             messages, {tree_found} nodes"
        );
        assert!(
            (tree_msgs as f64) < 0.8 * flood_msgs as f64,
            "{budget} ms: tree {tree_msgs} messages against the flood's {flood_msgs} ({seeds})"
        );
        assert!(
            tree_found as f64 >= 0.9 * flood_found as f64,
            "{budget} ms: tree found {tree_found} nodes, the flood {flood_found} ({seeds})"
        );
    }
}

/// The tree BENCHMARKS.md measures against issue 17's targets: three parents, within and
/// beyond the path budget.
fn tree() -> MapConfig {
    MapConfig {
        reach_tree: true,
        reach_tree_parents: 3,
        reach_tree_paths: true,
        ..MapConfig::default()
    }
}

/// The overlay BENCHMARKS.md measures against issue 17's targets: 128 warm-up rounds, 8 cone
/// links per node, links published; maps as `map` says.
fn on_cones_and_tree(model: &SyntheticInternet, map: MapConfig) -> Simulation<'_> {
    let mut sim = Simulation::new(
        model,
        SimConfig {
            map,
            warmup_rounds: 128,
            ..SimConfig::default()
        },
    );
    sim.cone_links(8);
    sim.publish_links();
    sim
}

/// The configuration BENCHMARKS.md measures against issue 17's targets (cone links, a tree of
/// three parents within and beyond the path budget, listed candidates, 128 warm-up rounds)
/// keeps precision 1, recall over 0.95 and the messages near 2 per overlay link inside the
/// direct region. On this model seed and these 6 origins it measured 1.47 / 1.55 / 2.32
/// messages per link and recall 0.968 / 0.997 / 0.988 at 25 / 50 / 80 ms (listing only a
/// node's own children; 1.48 / 1.55 / 2.32 and 0.980 / 0.999 / 0.983 listing every peer): the
/// 80 ms maps are over the target of 2 (BENCHMARKS.md reports it). Deterministic: pinned seeds.
#[test]
fn three_parent_trees_keep_recall_for_about_two_messages_per_link() {
    let n = 1_000;
    let model = SyntheticInternet::new(SyntheticConfig::internet(n, SCALE_SEED));
    let mut sim = on_cones_and_tree(&model, tree());
    let origins: Vec<usize> = (0..6).map(|k| (k * 7919) % n).collect();
    for budget in [25.0, 50.0, 80.0] {
        let (mut msgs, mut links, mut recall) = (0, 0, 0.0);
        for &o in &origins {
            let m = sim.run_map(o, budget);
            assert_eq!(m.precision_direct, 1.0, "origin {o}, {budget} ms");
            msgs += m.messages;
            links += m.direct_region_links;
            recall += m.recall_direct / origins.len() as f64;
        }
        let per_link = msgs as f64 / links as f64;
        eprintln!("{budget} ms: {per_link:.2} messages per link, recall {recall:.3}");
        assert!(
            per_link <= 2.5,
            "{budget} ms: {per_link} (model seed {SCALE_SEED})"
        );
        assert!(
            recall >= 0.95,
            "{budget} ms: recall {recall} (model seed {SCALE_SEED})"
        );
    }
}

/// Cone links each node finds from what its peers publish (their links, so its peers' peers)
/// over two rounds, dropping the ones a better choice replaced, map as well as cone links
/// chosen from every node's coordinate, with about as many links: a daemon needs no global
/// view to build them. Measured here: 4,434 cone links seen (4,359 added, then 3,017 added and
/// 2,942 dropped) against 4,548, recall 0.983 / 0.998 against 0.968 / 0.997 at 25 / 50 ms.
/// Deterministic: pinned seeds.
#[test]
fn cone_links_found_from_peers_peers_map_as_well_as_from_every_coordinate() {
    let n = 1_000;
    let model = SyntheticInternet::new(SyntheticConfig::internet(n, SCALE_SEED));
    let mut global = on_cones_and_tree(&model, tree());
    let mut seen = Simulation::new(
        &model,
        SimConfig {
            map: tree(),
            warmup_rounds: 128,
            ..SimConfig::default()
        },
    );
    let joining = seen.graph().links();
    let sticky = Stickiness {
        keep: 0.1,
        slack: 0.25,
        floor_ms: 0.0,
    };
    let rounds = seen.seen_cone_links(8, 2, sticky, 0);
    seen.publish_links();
    let (g_links, s_links) = (global.graph().links(), seen.graph().links());
    eprintln!(
        "links: joining {joining}, from every coordinate {g_links}, seen {s_links} {rounds:?}"
    );
    assert!(
        rounds[1].1 > 0,
        "the second round refines no choice: {rounds:?} (model seed {SCALE_SEED})"
    );
    let (g_cones, s_cones) = ((g_links - joining) as f64, (s_links - joining) as f64);
    assert!(
        (0.8..=1.2).contains(&(s_cones / g_cones)),
        "{s_cones} cone links seen against {g_cones} (model seed {SCALE_SEED})"
    );
    let origins: Vec<usize> = (0..6).map(|k| (k * 7919) % n).collect();
    for budget in [25.0, 50.0] {
        let (mut g_recall, mut s_recall) = (0.0, 0.0);
        for &o in &origins {
            let g = global.run_map(o, budget);
            let s = seen.run_map(o, budget);
            assert_eq!(s.precision_direct, 1.0, "origin {o}, {budget} ms");
            g_recall += g.recall_direct / origins.len() as f64;
            s_recall += s.recall_direct / origins.len() as f64;
        }
        eprintln!("{budget} ms: recall {g_recall:.4} from every coordinate, {s_recall:.4} seen");
        assert!(
            s_recall >= g_recall - 0.01,
            "{budget} ms: recall {s_recall} seen against {g_recall} (model seed {SCALE_SEED})"
        );
    }
}

/// On a tree, a node that lists only its own children it sends no request to (the default)
/// instead of every peer it does not ask (`rim_others`) sends much smaller answers and finds
/// as much once coordinates have settled (128 rounds): each listed record climbs the tree in
/// every answer above it, and a peer whose parents are others is answered for by them.
/// Measured here at 50 ms: 0.49 of the bytes, recall 0.995 both ways (after 32 rounds, 0.915
/// against 0.943 on these 6 origins: BENCHMARKS.md has more). Deterministic: pinned seeds.
#[test]
fn on_a_tree_listing_only_own_children_halves_the_bytes_and_keeps_recall() {
    let n = 1_000;
    let model = SyntheticInternet::new(SyntheticConfig::internet(n, SCALE_SEED));
    let (mut own, mut others) = (
        on_cones_and_tree(&model, tree()),
        on_cones_and_tree(
            &model,
            MapConfig {
                rim_others: true,
                ..tree()
            },
        ),
    );
    let origins: Vec<usize> = (0..6).map(|k| (k * 7919) % n).collect();
    let (mut bytes_own, mut bytes_others, mut recall_own, mut recall_others) = (0, 0, 0.0, 0.0);
    for &o in &origins {
        let a = own.run_map(o, 50.0);
        let b = others.run_map(o, 50.0);
        assert_eq!(a.precision_direct, 1.0, "origin {o}");
        assert_eq!(b.precision_direct, 1.0, "origin {o}");
        bytes_own += a.bytes;
        bytes_others += b.bytes;
        recall_own += a.recall_direct / origins.len() as f64;
        recall_others += b.recall_direct / origins.len() as f64;
    }
    let ratio = bytes_own as f64 / bytes_others as f64;
    eprintln!(
        "own children: {bytes_own} bytes, recall {recall_own:.3}; every peer: {bytes_others} \
         bytes, recall {recall_others:.3} ({ratio:.2} of the bytes)"
    );
    assert!(ratio < 0.6, "{ratio} (model seed {SCALE_SEED})");
    assert!(
        recall_own >= recall_others - 0.01,
        "{recall_own} against {recall_others} (model seed {SCALE_SEED})"
    );
}

/// Reports straight to the origin (`MapConfig::reports`) end every map by its deadline, the
/// budget plus one probe's timeout (2B + grace), where answers climbing back the tree take
/// about 3B, and for fewer messages and bytes; precision stays 1 and recall near answers'.
/// On this model seed and these 6 origins at 50 ms it measured: answers 12,786 messages,
/// 7.90 MB, recall 0.9953, completion 148.8-152.9 ms; reports 8,927 messages (0.70), 4.92 MB
/// (0.62), recall 0.9859, every map done by 105 ms. Deterministic: pinned seeds, the
/// simulator's own time, a fixed key for the byte counts.
#[test]
fn reports_end_maps_at_the_budget_plus_one_probe_for_fewer_messages() {
    let n = 1_000;
    let model = SyntheticInternet::new(SyntheticConfig::internet(n, SCALE_SEED));
    let reporting = MapConfig {
        reports: true,
        ..tree()
    };
    let (mut answers, mut reports) = (
        on_cones_and_tree(&model, tree()),
        on_cones_and_tree(&model, reporting),
    );
    let origins: Vec<usize> = (0..6).map(|k| (k * 7919) % n).collect();
    let budget = 50.0;
    let deadline = 2.0 * budget + 0.1 * budget;
    let (mut a_msgs, mut r_msgs, mut a_bytes, mut r_bytes) = (0, 0, 0, 0);
    let (mut a_recall, mut r_recall) = (0.0, 0.0);
    let mut a_times = Vec::new();
    for &o in &origins {
        let a = answers.run_map(o, budget);
        let r = reports.run_map(o, budget);
        assert_eq!(r.precision_direct, 1.0, "origin {o}");
        assert!(
            r.completion_ms <= deadline,
            "origin {o}: {} ms",
            r.completion_ms
        );
        a_times.push(a.completion_ms);
        a_msgs += a.messages;
        r_msgs += r.messages;
        a_bytes += a.bytes;
        r_bytes += r.bytes;
        a_recall += a.recall_direct / origins.len() as f64;
        r_recall += r.recall_direct / origins.len() as f64;
    }
    a_times.sort_by(f64::total_cmp);
    eprintln!(
        "answers: {a_msgs} messages, {a_bytes} bytes, recall {a_recall:.4}, completion {a_times:?}; \
         reports: {r_msgs} messages, {r_bytes} bytes, recall {r_recall:.4}"
    );
    let seeds = format!("model seed {SCALE_SEED}");
    assert!(
        a_times[a_times.len() / 2] > 2.5 * budget,
        "{a_times:?} ({seeds})"
    );
    assert!(r_msgs < a_msgs, "{r_msgs} against {a_msgs} ({seeds})");
    assert!(r_bytes < a_bytes, "{r_bytes} against {a_bytes} ({seeds})");
    assert!(
        r_recall >= a_recall - 0.01,
        "{r_recall} against {a_recall} ({seeds})"
    );
}

/// With `reports_end_at_confirmed` every map ends within its budget plus the largest RTT a
/// probe of it confirmed (issue 17's completion bound), where by default maps wait for their
/// deadline; precision stays 1. Recall is what it costs (BENCHMARKS.md). Deterministic:
/// pinned seeds, the simulator's own time.
#[test]
fn ending_at_the_largest_confirmed_rtt_meets_the_completion_bound() {
    let n = 1_000;
    let model = SyntheticInternet::new(SyntheticConfig::internet(n, SCALE_SEED));
    let reporting = |reports_end_at_confirmed| MapConfig {
        reports: true,
        reports_end_at_confirmed,
        ..tree()
    };
    let mut waiting = on_cones_and_tree(&model, reporting(false));
    let mut ending = on_cones_and_tree(&model, reporting(true));
    let budget = 50.0;
    let seeds = format!("model seed {SCALE_SEED}");
    let mut over_by_default = 0;
    for o in (0..6).map(|k| (k * 7919) % n) {
        let w = waiting.run_map(o, budget);
        let e = ending.run_map(o, budget);
        assert_eq!(e.precision_direct, 1.0, "origin {o} ({seeds})");
        // Within the clock's resolution (times are whole microseconds).
        assert!(
            e.completion_ms <= budget + e.max_confirm_ms + 1e-3,
            "origin {o}: {} ms against {budget} + {} ms ({seeds})",
            e.completion_ms,
            e.max_confirm_ms
        );
        if w.completion_ms > budget + w.max_confirm_ms + 1e-3 {
            over_by_default += 1;
        }
    }
    assert!(
        over_by_default > 0,
        "the default already met the bound ({seeds})"
    );
}

/// Candidates listed from records (`reach_rim`, the default) cost nothing but their probes:
/// the same maps from the same origins send exactly the same requests, acks and answers with
/// and without them, keep precision 1, and find more nodes with them in all. (Not map by map:
/// more probes draw more of the simulator's jitter, so a node on the budget's edge may fall
/// either way in one map.) Deterministic: pinned seeds, the simulator's own time.
#[test]
fn listed_candidates_add_nodes_for_the_price_of_their_probes() {
    let n = 1_000;
    let model = SyntheticInternet::new(SyntheticConfig::internet(n, SCALE_SEED));
    let seeds = format!(
        "model seed {SCALE_SEED}, simulator seed {}",
        SimConfig::default().seed
    );
    let sim = |reach_rim| {
        Simulation::new(
            &model,
            SimConfig {
                map: MapConfig {
                    reach_rim,
                    ..MapConfig::default()
                },
                ..SimConfig::default()
            },
        )
    };
    let (mut with, mut without) = (sim(true), sim(false));
    let origins: Vec<usize> = (0..12).map(|k| (k * 7919) % n).collect();
    let (mut found_with, mut found_without) = (0, 0);
    for budget in [10.0, 25.0] {
        for &o in &origins {
            let w = with.run_map(o, budget);
            let wo = without.run_map(o, budget);
            let at = format!("origin {o}, {budget} ms ({seeds})");
            assert_eq!(w.precision_direct, 1.0, "{at}");
            assert_eq!(wo.precision_direct, 1.0, "{at}");
            assert_eq!(
                w.messages - 2 * w.probes,
                wo.messages - 2 * wo.probes,
                "{at}"
            );
            found_with += w.map.nodes.len();
            found_without += wo.map.nodes.len();
        }
    }
    eprintln!("found {found_with} nodes with listed candidates, {found_without} without");
    assert!(
        found_with > found_without,
        "{found_with} against {found_without} ({seeds})"
    );
}

/// The completion floor (what any protocol could confirm by budget + the largest probe, see
/// `MapStats::floor_answers`) is a property of the overlay: on joining's links many nodes
/// within 25 ms directly are too far over the overlay to be learnt in time; cone links raise
/// the floor by more than 10 points (measured: 0.66 to 0.84 of the region). Deterministic:
/// pinned seeds.
#[test]
fn cone_links_raise_the_completion_floor() {
    let n = 1_000;
    let model = SyntheticInternet::new(SyntheticConfig::internet(n, SCALE_SEED));
    let mut joining = Simulation::new(&model, SimConfig::default());
    let mut cones = Simulation::new(&model, SimConfig::default());
    cones.cone_links(8);
    let origins: Vec<usize> = (0..6).map(|k| (k * 7919) % n).collect();
    let (mut on_joining, mut on_cones) = (0.0, 0.0);
    for &o in &origins {
        let j = joining.run_map(o, 25.0);
        let c = cones.run_map(o, 25.0);
        for f in [
            j.floor_answers,
            j.floor_reports,
            c.floor_answers,
            c.floor_reports,
        ] {
            assert!((0.0..=1.0).contains(&f), "origin {o}: {f}");
        }
        on_joining += j.floor_answers / origins.len() as f64;
        on_cones += c.floor_answers / origins.len() as f64;
    }
    eprintln!("completion floor at 25 ms: joining links {on_joining:.3}, cone links {on_cones:.3}");
    assert!(
        on_cones >= on_joining + 0.1,
        "joining {on_joining}, cones {on_cones} (model seed {SCALE_SEED})"
    );
}

/// The simulation also runs on a measured-style matrix read from a file, with unmeasured pairs.
#[test]
fn runs_on_a_matrix_file() {
    let model = SyntheticInternet::new(SyntheticConfig::internet(120, 5));
    let mut text = to_matrix_text(&model);
    // Knock out one pair in both directions: it must stay unmeasured.
    let mut rows: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    rows[0][1] = "0".into();
    rows[1][0] = "-1".into();
    text = rows.iter().map(|r| r.join(" ") + "\n").collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtt.txt");
    std::fs::write(&path, text).unwrap();
    let matrix = RttMatrix::from_file(&path).unwrap();
    assert_eq!(matrix.len(), 120);
    assert_eq!(
        brume_testnet::latency::LatencyModel::rtt(&matrix, 0, 1),
        None
    );
    let mut sim = Simulation::new(&matrix, path_maps());
    let row = summarise(&mut sim, &[0, 17, 60], 30.0);
    eprintln!("matrix file: {row:?}");
    assert!(row.mean_recall >= 0.95, "{row:?}");
    assert!(row.mean_precision >= 0.95, "{row:?}");

    std::fs::write(&path, "0 1\n1 zero\n").unwrap();
    let err = RttMatrix::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("rtt.txt:2:3"), "{err}");
}

/// A node that never answers (not even an ack) cannot stall a map: it completes by the
/// origin's wait (budget x (1 + reach_wait_factor) plus the grace) plus the probes' deadline
/// (the budget), holds every other node, and says it is incomplete.
#[test]
fn a_silent_node_does_not_stall_the_map() {
    let model = SyntheticInternet::new(SyntheticConfig::internet(400, 11));
    let mut sim = Simulation::new(&model, SimConfig::default());
    let origin = 3;
    let budget = 40.0;
    let before = sim.run_map(origin, budget);
    assert!(before.complete && before.direct > 10);
    // Kill a neighbour of the origin that was in the map.
    let victim = *sim
        .graph()
        .neighbours(origin)
        .iter()
        .find(|&&v| before.map.contains(NodeId(v as u64)))
        .unwrap();
    sim.kill(victim);
    let after = sim.run_map(origin, budget);
    let c = MapConfig::default();
    let grace = c.grace_min_ms.max(c.grace_fraction * budget);
    let bound = budget * (1.0 + c.reach_wait_factor) + grace + budget;
    eprintln!(
        "silent node: completion {:.1} ms (budget {budget}, bound {bound}), direct recall {:.3} \
         (before {:.3}), complete {}",
        after.completion_ms, after.recall_direct, before.recall_direct, after.complete
    );
    assert!(!after.complete);
    assert!(after.completion_ms <= bound, "{}", after.completion_ms);
    assert!(!after.map.contains(NodeId(victim as u64)));
    assert!(
        after.recall_direct >= 0.9 * before.recall_direct,
        "direct recall {} (before {})",
        after.recall_direct,
        before.recall_direct
    );
}

fn two_nodes() -> (MappingNode, MappingNode) {
    let mut a = MappingNode::new(NodeId(1), NodeRecord::bare(NodeId(1)), MapConfig::default());
    let mut b = MappingNode::new(NodeId(2), NodeRecord::bare(NodeId(2)), MapConfig::default());
    a.add_peer(NodeId(2));
    b.add_peer(NodeId(1));
    for _ in 0..30 {
        a.on_rtt_sample(NodeId(2), 4.0, None);
        b.on_rtt_sample(NodeId(1), 4.0, None);
    }
    (a, b)
}

fn request(seq: u64) -> Message {
    Message::Request(MapRequest {
        id: MapId {
            origin: NodeId(9),
            seq,
        },
        origin: NodeId(9),
        budget_ms: 20.0,
        wait_ms: 25.0,
        skip: vec![],
        reach: None,
    })
}

/// A duplicate id gets an acknowledgement and nothing else. (The first copy reaches a node
/// with nothing to forward: its answer, at once, is its acknowledgement.)
#[test]
fn a_duplicate_gets_only_an_ack() {
    let (_, mut b) = two_nodes();
    let first = b.handle_message(Time(0), NodeId(1), request(1));
    assert!(
        matches!(
            first.as_slice(),
            [Output::Send {
                to: NodeId(1),
                msg: Message::Answer { .. },
            }]
        ),
        "{first:?}"
    );
    let second = b.handle_message(Time(10), NodeId(1), request(1));
    assert_eq!(
        second,
        vec![Output::Send {
            to: NodeId(1),
            msg: Message::Ack {
                id: MapId {
                    origin: NodeId(9),
                    seq: 1
                },
                answer_follows: false
            }
        }]
    );
}

/// Malformed or oversized input is refused with an error, never a panic.
#[test]
fn malformed_and_oversized_input_is_refused() {
    let (_, mut b) = two_nodes();
    let bytes = wire::encode(&request(5)).unwrap();
    assert!(matches!(
        wire::decode_with_limit(&bytes, 8),
        Err(wire::WireError::TooLarge { .. })
    ));
    assert!(wire::decode(&bytes[..3]).is_err());
    assert!(wire::decode(b"not cbor at all").is_err());
    let big = vec![0u8; wire::MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        wire::decode(&big),
        Err(wire::WireError::TooLarge { .. })
    ));

    // Well-formed CBOR with nonsense values is refused by the state machine.
    let bad = Message::Request(MapRequest {
        id: MapId {
            origin: NodeId(9),
            seq: 6,
        },
        origin: NodeId(9),
        budget_ms: f64::NAN,
        wait_ms: 1.0,
        skip: vec![],
        reach: None,
    });
    let out = b.handle_message(
        Time(0),
        NodeId(1),
        wire::decode(&wire::encode(&bad).unwrap()).unwrap(),
    );
    assert_eq!(
        out,
        vec![Output::Refused {
            from: NodeId(1),
            reason: Refusal::BadNumbers
        }]
    );
    let forged = Message::Request(MapRequest {
        id: MapId {
            origin: NodeId(9),
            seq: 7,
        },
        origin: NodeId(4),
        budget_ms: 1.0,
        wait_ms: 1.0,
        skip: vec![],
        reach: None,
    });
    assert!(matches!(
        b.handle_message(Time(0), NodeId(1), forged)[..],
        [Output::Refused {
            reason: Refusal::OriginMismatch { .. },
            ..
        }]
    ));
}

/// A completed map is cached: asking again for the same budget within the TTL costs no message.
#[test]
fn completed_maps_are_cached() {
    let (mut a, mut b) = two_nodes();
    let (id, out) = a.start_map(Time(0), 10.0);
    let [Output::Send { to, msg }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(*to, NodeId(2));
    let replies = b.handle_message(Time(2_000), NodeId(1), msg.clone());
    let mut done = Vec::new();
    for r in replies {
        if let Output::Send { msg, .. } = r {
            done.extend(a.handle_message(Time(4_000), NodeId(2), msg));
        }
    }
    let Some(Output::MapDone {
        id: got,
        map,
        complete: true,
        from_cache: false,
    }) = done.last()
    else {
        panic!("{done:?}")
    };
    assert_eq!(*got, id);
    assert_eq!(map.ids(), vec![NodeId(1), NodeId(2)]);
    let (_, again) = a.start_map(Time(5_000), 10.0);
    assert!(matches!(
        &again[..],
        [Output::MapDone {
            from_cache: true,
            ..
        }]
    ));
    // After the TTL the map is fetched afresh.
    let later = Time(5_000).plus_ms(MapConfig::default().cache_ttl_ms + 1.0);
    let (_, fresh) = a.start_map(later, 10.0);
    assert!(matches!(&fresh[..], [Output::Send { .. }]));
}
