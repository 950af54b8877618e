//! How far Vivaldi coordinates keep moving once they have settled (`brume bench overlay
//! --coord-drift`): what a node choosing links by direction in the Vivaldi plane
//! ([`brume_overlay::cones`]) has to live with. After the warm-up, every link is pinged for 1,
//! 4, 8 and 32 more rounds; for each, the median and 90th percentile of how far a node's
//! coordinate moved, and how far the direction from a node to another turned, by their distance
//! in the plane (every fifth node against all others).

use brume_testnet::latency::LatencyModel;
use brume_testnet::sim::{SimConfig, Simulation};

/// Distance bands (ms, upper bounds) the turn of a direction is reported by.
const BANDS: [f64; 5] = [5.0, 10.0, 20.0, 40.0, f64::INFINITY];

pub fn coord_drift(model: &dyn LatencyModel, seed: u64, warmup: usize) {
    let n = model.len();
    let mut sim = Simulation::new(
        model,
        SimConfig {
            seed,
            warmup_rounds: warmup,
            ..SimConfig::default()
        },
    );
    let coords =
        |sim: &Simulation| -> Vec<_> { (0..n).map(|i| sim.node(i).vivaldi().coord()).collect() };
    let start = coords(&sim);
    println!(
        "Vivaldi drift after {warmup} warm-up rounds, {n} nodes, seed {seed} (ms; turn in degrees)"
    );
    println!(
        "{:>6} {:>9} {:>9}   median turn by distance <5 / <10 / <20 / <40 / >=40 ms",
        "rounds", "moved_med", "moved_p90"
    );
    let mut done = 0;
    for rounds in [1, 4, 8, 32] {
        sim.ping_rounds(rounds - done);
        done = rounds;
        let now = coords(&sim);
        let mut moved: Vec<f64> = (0..n)
            .map(|i| (now[i].x - start[i].x).hypot(now[i].y - start[i].y))
            .collect();
        let mut turns: Vec<Vec<f64>> = vec![Vec::new(); BANDS.len()];
        for i in (0..n).step_by(5) {
            for j in (0..n).filter(|&j| j != i) {
                let d = (start[j].x - start[i].x).hypot(start[j].y - start[i].y);
                let band = BANDS.iter().position(|&b| d < b).unwrap_or(BANDS.len() - 1);
                let before = (start[j].y - start[i].y).atan2(start[j].x - start[i].x);
                let after = (now[j].y - now[i].y).atan2(now[j].x - now[i].x);
                let turn = (after - before).rem_euclid(std::f64::consts::TAU);
                turns[band].push(turn.min(std::f64::consts::TAU - turn).to_degrees());
            }
        }
        let med: Vec<String> = turns
            .iter_mut()
            .map(|t| format!("{:.1}", quantile(t, 0.5)))
            .collect();
        println!(
            "{rounds:>6} {:>9.2} {:>9.2}   {}",
            quantile(&mut moved, 0.5),
            quantile(&mut moved, 0.9),
            med.join(" / ")
        );
    }
}

/// The `q` quantile of `v` (sorted in place); 0 if empty.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}
