//! Simulation of iterative pre-copy: a synthetic task dirtying pages over a link of given
//! bandwidth, driven by the planner and predictor through their public API only.
//!
//! The world: a task of M bytes writes `rate` bytes/s to random pages of a working set of W
//! bytes, so after t seconds W·(1 - e^(-rate·t/W)) distinct bytes differ from the last dump (the
//! delta saturates, as real deltas do). A dump writes all memory (no soft-dirty here) in
//! 20 ms + 2.6 s/GiB, ±3 %; a restore takes 50 ms + 0.7 s/GiB. Both differ from the predictor's
//! prior on purpose. The delta is compressed to half and sent at the link's bandwidth. Rounds
//! are sequential (dump, then send), the final round is dump + last delta + restore.

use std::time::Duration;

use brume_migration::planner::{
    Action, Decision, FinalReport, Planner, PlannerConfig, Reason, RoundReport,
};
use brume_migration::predictor::Predictor;

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

struct World {
    memory: u64,
    working_set: f64,
    dirty_rate: f64,
    bandwidth: f64,
    rng: u64,
}

impl World {
    fn noise(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        1.0 + ((self.rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.06
    }

    fn dump_time(&mut self) -> f64 {
        (0.02 + 2.6 * self.memory as f64 / GIB) * self.noise()
    }

    fn restore_time(&mut self) -> f64 {
        (0.05 + 0.7 * self.memory as f64 / GIB) * self.noise()
    }

    fn dirtied(&self, t: f64) -> u64 {
        (self.working_set * (1.0 - (-self.dirty_rate * t / self.working_set).exp())) as u64
    }
}

struct Run {
    decision: Decision,
    rounds: Vec<u64>,
    predicted: Duration,
    predicted_upper: Duration,
    actual: Duration,
    predictor: Predictor,
}

fn migrate(world: &mut World, cfg: PlannerConfig, predictor: Predictor) -> Run {
    let mut p = Planner::new(cfg, predictor, world.memory);
    p.set_bandwidth(world.bandwidth);
    let mut now = 0.0f64;
    let mut last_start: Option<f64> = None;
    let mut decision = p.start(Duration::ZERO).unwrap();
    let mut rounds = Vec::new();
    while decision.action == Action::PreCopy {
        let dump = world.dump_time();
        let delta = match last_start {
            None => world.memory,
            Some(s) => world.dirtied(now - s),
        };
        last_start = Some(now);
        let wire = delta / 2;
        let round = dump + wire as f64 / world.bandwidth;
        now += round;
        rounds.push(delta);
        let (d, progress) = p
            .round_finished(
                Duration::from_secs_f64(now),
                RoundReport {
                    dumped_bytes: world.memory,
                    delta_bytes: delta,
                    wire_bytes: wire,
                    dump_time: Duration::from_secs_f64(dump),
                    round_time: Duration::from_secs_f64(round),
                    dirty_rate: None,
                },
            )
            .unwrap();
        eprintln!("  {progress}");
        decision = d;
        assert!(rounds.len() < 50, "the planner never stopped");
    }
    let (predicted, predicted_upper) = p
        .progress()
        .last()
        .map(|pr| (pr.predicted_downtime, pr.predicted_downtime_upper))
        .unwrap_or_default();
    let mut actual = Duration::ZERO;
    if decision.action == Action::FinalDump {
        let dump = world.dump_time();
        let delta = match last_start {
            None => world.memory,
            Some(s) => world.dirtied(now - s),
        };
        let wire = delta / 2;
        let restore = world.restore_time();
        let downtime = dump + wire as f64 / world.bandwidth + restore;
        actual = Duration::from_secs_f64(downtime);
        let out = p
            .final_finished(FinalReport {
                dump_time: Duration::from_secs_f64(dump),
                wire_bytes: wire,
                restore_time: Duration::from_secs_f64(restore),
                downtime: actual,
            })
            .unwrap();
        assert_eq!(out.predicted_downtime, predicted);
        assert_eq!(out.downtime, actual);
    }
    Run {
        decision,
        rounds,
        predicted,
        predicted_upper,
        actual,
        predictor: p.into_predictor(),
    }
}

fn world(memory_mib: u64, seed: u64) -> World {
    World {
        memory: memory_mib * MIB,
        working_set: (memory_mib * MIB) as f64 / 4.0,
        dirty_rate: 40e6,
        bandwidth: 100e6,
        rng: seed | 1,
    }
}

fn budget(secs: u64) -> PlannerConfig {
    PlannerConfig {
        max_downtime: Duration::from_secs(secs),
        ..PlannerConfig::default()
    }
}

/// For 32..512 MiB the planner converges in a few rounds, the delta shrinks, and the predicted
/// downtime of the final round is what it costs (within 15 % + 30 ms, and under the bound).
#[test]
fn converges_and_predicts_the_final_round() {
    for (i, mib) in [32u64, 64, 128, 256, 512].into_iter().enumerate() {
        let mut w = world(mib, 17 + i as u64);
        eprintln!("{mib} MiB:");
        let run = migrate(&mut w, budget(5), Predictor::default());
        eprintln!(
            "  -> {} after {} rounds: predicted downtime {:?} (<= {:?}), actual {:?}",
            run.decision,
            run.rounds.len(),
            run.predicted,
            run.predicted_upper,
            run.actual
        );
        assert_eq!(run.decision.action, Action::FinalDump, "{mib} MiB");
        assert!(
            (2..=8).contains(&run.rounds.len()),
            "{mib} MiB: {:?}",
            run.rounds
        );
        let last = *run.rounds.last().unwrap();
        assert!(last < run.rounds[0] / 2, "{mib} MiB: {:?}", run.rounds);
        let (pred, act) = (run.predicted.as_secs_f64(), run.actual.as_secs_f64());
        assert!(
            (pred - act).abs() <= 0.15 * act + 0.03,
            "{mib} MiB: predicted {pred:.3} s, actual {act:.3} s"
        );
        assert!(run.actual <= run.predicted_upper, "{mib} MiB");
    }
}

/// The final delta is a small fraction of what stop-and-copy would send.
#[test]
fn pre_copy_leaves_little_for_the_final_round() {
    let mut w = world(256, 5);
    let run = migrate(&mut w, budget(5), Predictor::default());
    let stop_and_copy = (0.02 + 2.6 * 0.25) + (256 * MIB / 2) as f64 / 100e6 + (0.05 + 0.7 * 0.25);
    assert!(
        run.actual.as_secs_f64() < 0.75 * stop_and_copy,
        "{:?} vs stop-and-copy {stop_and_copy:.3} s",
        run.actual
    );
}

/// A task that dirties faster than the link drains never converges: the planner stops after
/// rounds stop paying, and aborts because the downtime would not fit, instead of looping.
#[test]
fn a_task_dirtying_faster_than_the_link_aborts() {
    let mut w = World {
        memory: 256 * MIB,
        working_set: (256 * MIB) as f64,
        dirty_rate: 500e6,
        bandwidth: 10e6,
        rng: 3,
    };
    let run = migrate(&mut w, budget(2), Predictor::default());
    assert_eq!(
        run.decision,
        Decision {
            action: Action::Abort,
            reason: Reason::DowntimeTooLong
        }
    );
    assert!(run.rounds.len() <= 3, "{:?}", run.rounds);
}

/// A node's predictor carries over between migrations: the restore time is learned from each
/// completed one, so the bound on the downtime tightens from about a second above the mean (the
/// prior's doubt) to well under 0.2 s, and the mean stays within 0.1 s of the truth.
#[test]
fn the_predictor_learns_across_migrations() {
    let mut predictor = Predictor::default();
    let mut errors = Vec::new();
    let mut gaps = Vec::new();
    for i in 0..6 {
        let mut w = world(512, 100 + i);
        let run = migrate(&mut w, budget(5), predictor);
        assert_eq!(run.decision.action, Action::FinalDump);
        errors.push((run.predicted.as_secs_f64() - run.actual.as_secs_f64()).abs());
        gaps.push((run.predicted_upper - run.predicted).as_secs_f64());
        assert!(run.actual <= run.predicted_upper, "migration {i}");
        predictor = run.predictor;
    }
    eprintln!("errors {errors:?}, bound gaps {gaps:?}");
    assert!(gaps[0] > 0.8, "{gaps:?}");
    assert!(gaps[5] < 0.2, "{gaps:?}");
    assert!(errors[5] < 0.1, "{errors:?}");
}
