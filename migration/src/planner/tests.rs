//! Unit tests of each planner rule, with the default (prior-only) predictor.

use super::*;

const MIB: u64 = 1 << 20;
const MB: f64 = 1e6;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn planner(memory: u64) -> Planner {
    let mut p = Planner::new(PlannerConfig::default(), Predictor::default(), memory);
    p.set_bandwidth(100.0 * MB);
    p
}

/// A round of a 64 MiB task: dump 250 ms, then the delta at 100 MB/s.
fn report(delta: u64) -> RoundReport {
    RoundReport {
        dumped_bytes: 64 * MIB,
        delta_bytes: delta,
        wire_bytes: delta / 2,
        dump_time: ms(250),
        round_time: ms(250) + Duration::from_secs_f64(delta as f64 / 2.0 / (100.0 * MB)),
        dirty_rate: None,
    }
}

/// Runs rounds with the given deltas, one per simulated second; returns the last answer.
fn run(p: &mut Planner, deltas: &[u64]) -> (Decision, RoundProgress) {
    run_then_deadline(p, deltas, None)
}

/// Like [`run`], but learns of `deadline` (if any) just before the last round's report, the way
/// a node learns it is leaving in the middle of a migration.
fn run_then_deadline(
    p: &mut Planner,
    deltas: &[u64],
    deadline: Option<Duration>,
) -> (Decision, RoundProgress) {
    let d = p.start(Duration::ZERO).unwrap();
    assert_eq!(d.action, Action::PreCopy);
    let mut last = None;
    for (i, delta) in deltas.iter().enumerate() {
        let now = Duration::from_secs(i as u64 + 1);
        if i + 1 == deltas.len() && deadline.is_some() {
            p.set_deadline(deadline);
        }
        let (d, pr) = p.round_finished(now, report(*delta)).unwrap();
        if i + 1 < deltas.len() {
            assert_eq!(d.action, Action::PreCopy, "round {} decided {d}", i + 1);
        }
        last = Some((d, pr));
    }
    last.unwrap()
}

#[test]
fn first_decision_is_a_precopy_round() {
    let mut p = planner(64 * MIB);
    assert_eq!(
        p.start(Duration::ZERO).unwrap(),
        Decision::new(Action::PreCopy, Reason::FirstRound)
    );
}

#[test]
fn a_tiny_task_goes_straight_to_the_final_dump() {
    let mut p = planner(128 * 1024);
    assert_eq!(
        p.start(Duration::ZERO).unwrap(),
        Decision::new(Action::FinalDump, Reason::DeltaUnderThreshold)
    );
}

#[test]
fn a_shrinking_delta_earns_another_round() {
    let (d, _) = run(&mut planner(64 * MIB), &[64 * MIB, 16 * MIB]);
    assert_eq!(d, Decision::new(Action::PreCopy, Reason::DeltaShrinking));
}

#[test]
fn a_delta_under_the_threshold_freezes() {
    let (d, _) = run(&mut planner(64 * MIB), &[64 * MIB, 100 * 1024]);
    assert_eq!(
        d,
        Decision::new(Action::FinalDump, Reason::DeltaUnderThreshold)
    );
}

#[test]
fn two_equal_rounds_freeze() {
    let (d, _) = run(
        &mut planner(64 * MIB),
        &[64 * MIB, 8 * MIB, 8 * MIB + 100 * 1024],
    );
    assert_eq!(d, Decision::new(Action::FinalDump, Reason::RoundsEqual));
    // Seed 002's case exactly: nothing changed between two dumps.
    let (d, _) = run(&mut planner(64 * MIB), &[64 * MIB, 0]);
    assert_eq!(d.action, Action::FinalDump);
}

#[test]
fn rounds_that_stop_paying_freeze() {
    let (d, _) = run(&mut planner(64 * MIB), &[64 * MIB, 8 * MIB, 7 * MIB]);
    assert_eq!(
        d,
        Decision::new(Action::FinalDump, Reason::RoundsStopPaying)
    );
    // A growing delta: the task dirties faster than rounds drain.
    let (d, _) = run(&mut planner(64 * MIB), &[64 * MIB, 8 * MIB, 12 * MIB]);
    assert_eq!(
        d,
        Decision::new(Action::FinalDump, Reason::RoundsStopPaying)
    );
}

#[test]
fn the_round_limit_freezes() {
    let mut p = Planner::new(
        PlannerConfig {
            max_rounds: 3,
            ..PlannerConfig::default()
        },
        Predictor::default(),
        64 * MIB,
    );
    p.set_bandwidth(100.0 * MB);
    let (d, _) = run(&mut p, &[64 * MIB, 32 * MIB, 16 * MIB]);
    assert_eq!(d, Decision::new(Action::FinalDump, Reason::MaxRounds));
}

#[test]
fn converged_but_too_slow_aborts_and_keeps_the_source() {
    // 8 MiB left at 1 MB/s is 4+ s of downtime against a 2 s budget.
    let mut p = planner(64 * MIB);
    p.set_bandwidth(1.0 * MB);
    // Even the expected downtime is over the budget: no more rounds, abort at once.
    let (d, pr) = run(&mut p, &[64 * MIB, 8 * MIB, 8 * MIB]);
    assert_eq!(d, Decision::new(Action::Abort, Reason::DowntimeTooLong));
    assert!(pr.predicted_downtime > Duration::from_secs(2), "{pr}");
    // The stop says what it was based on: the prediction against the budget.
    let stopped = p.stopped(d);
    assert_eq!(stopped.budget, Duration::from_secs(2));
    assert_eq!(stopped.rounds, 3);
    assert!(stopped.predicted_upper > stopped.budget, "{stopped}");
    let text = stopped.to_string();
    assert!(
        text.contains("budget of 2000 ms") && text.contains("predicted downtime"),
        "{text}"
    );
    // The same rounds on a fast link freeze.
    let (d, _) = run(&mut planner(64 * MIB), &[64 * MIB, 8 * MIB, 8 * MIB]);
    assert_eq!(d.action, Action::FinalDump);
}

#[test]
fn a_doubtful_freeze_runs_bounded_rounds_over_the_budget() {
    // The same rounds as a run that froze, with a budget between its expected downtime and
    // the bound: the doubt is over the budget, so rounds run (at most two) before a decision.
    let (_, twin) = run(&mut planner(64 * MIB), &[64 * MIB, 8 * MIB, 8 * MIB]);
    assert_eq!(twin.decision.action, Action::FinalDump);
    let budget = (twin.predicted_downtime + twin.predicted_downtime_upper) / 2;
    let mut p = Planner::new(
        PlannerConfig {
            max_downtime: budget,
            ..PlannerConfig::default()
        },
        Predictor::default(),
        64 * MIB,
    );
    p.set_bandwidth(100.0 * MB);
    let deltas = [64 * MIB, 8 * MIB, 8 * MIB, 8 * MIB, 8 * MIB];
    assert_eq!(p.start(Duration::ZERO).unwrap().action, Action::PreCopy);
    let mut reasons = Vec::new();
    for (i, delta) in deltas.iter().enumerate() {
        let (d, _) = p
            .round_finished(Duration::from_secs(i as u64 + 1), report(*delta))
            .unwrap();
        reasons.push(d.reason);
        if d.action != Action::PreCopy {
            break;
        }
    }
    assert_eq!(reasons[2], Reason::OverBudget, "{reasons:?}");
    assert!(
        reasons.len() <= 5,
        "at most two rounds over the budget: {reasons:?}"
    );
    let last = *reasons.last().unwrap();
    assert_ne!(last, Reason::OverBudget, "{reasons:?}");
}

#[test]
fn a_budget_below_the_bare_dump_aborts_at_once() {
    // Without soft-dirty a frozen dump writes all memory: ~3.5 s for 1 GiB here.
    let mut p = Planner::new(
        PlannerConfig {
            max_downtime: Duration::from_secs(1),
            ..PlannerConfig::default()
        },
        Predictor::default(),
        1024 * MIB,
    );
    assert_eq!(
        p.start(Duration::ZERO).unwrap(),
        Decision::new(Action::Abort, Reason::DowntimeTooLong)
    );
    let s = p.stopped(Decision::new(Action::Abort, Reason::DowntimeTooLong));
    assert!(s.predicted_floor > s.budget && s.rounds == 0, "{s}");
    let text = s.to_string();
    assert!(
        text.contains("budget of 1000 ms") && text.contains("at least"),
        "{text}"
    );
    assert!(p.round_finished(Duration::ZERO, report(0)).is_err());
}

/// A planner after round 1 at t = 1 s with round 2 reported at t = 2 s, and the forecast the
/// same run without a deadline made.
fn twin_forecast() -> RoundProgress {
    let mut twin = planner(64 * MIB);
    let (_, pr) = run(&mut twin, &[64 * MIB, 16 * MIB]);
    assert_eq!(pr.decision.action, Action::PreCopy);
    pr
}

#[test]
fn a_near_deadline_forces_the_final_dump_in_time() {
    let pr = twin_forecast();
    let now = Duration::from_secs(2);
    // Freezing now fits before the deadline, one more round and then freezing does not.
    let deadline =
        now + pr.predicted_downtime_upper + PlannerConfig::default().deadline_margin + ms(50);
    let (d, _) = run_then_deadline(
        &mut planner(64 * MIB),
        &[64 * MIB, 16 * MIB],
        Some(deadline),
    );
    assert_eq!(d, Decision::new(Action::FinalDump, Reason::DeadlineNear));
}

#[test]
fn a_deadline_forces_the_freeze_even_over_the_downtime_budget() {
    let pr = twin_forecast();
    let now = Duration::from_secs(2);
    let mut p = Planner::new(
        PlannerConfig {
            max_downtime: pr.predicted_downtime_upper / 2,
            ..PlannerConfig::default()
        },
        Predictor::default(),
        64 * MIB,
    );
    p.set_bandwidth(100.0 * MB);
    p.set_deadline(Some(
        now + pr.predicted_downtime_upper + Duration::from_secs(1),
    ));
    let (d, _) = run(&mut p, &[64 * MIB, 16 * MIB]);
    assert_eq!(d, Decision::new(Action::FinalDump, Reason::DeadlineNear));
}

#[test]
fn an_unreachable_deadline_aborts() {
    let pr = twin_forecast();
    let now = Duration::from_secs(2);
    let deadline = now + pr.predicted_downtime / 2;
    let (d, _) = run_then_deadline(
        &mut planner(64 * MIB),
        &[64 * MIB, 16 * MIB],
        Some(deadline),
    );
    assert_eq!(d, Decision::new(Action::Abort, Reason::DeadlineUnreachable));
}

#[test]
fn a_distant_deadline_changes_nothing() {
    let mut p = planner(64 * MIB);
    p.set_deadline(Some(Duration::from_secs(3600)));
    let (d, _) = run(&mut p, &[64 * MIB, 16 * MIB]);
    assert_eq!(d, Decision::new(Action::PreCopy, Reason::DeltaShrinking));
}

#[test]
fn a_deadline_too_close_for_any_round_means_stop_and_copy() {
    let mut p = planner(64 * MIB);
    // 64 MiB at 100 MB/s is 0.67 s plus dump and restore ~0.4 s: 3 s fits a freeze, not a round
    // followed by a freeze with the prior's wide bounds.
    p.set_deadline(Some(Duration::from_secs(3)));
    assert_eq!(
        p.start(Duration::ZERO).unwrap(),
        Decision::new(Action::FinalDump, Reason::DeadlineNear)
    );
    let mut p = planner(64 * MIB);
    p.set_deadline(Some(ms(100)));
    assert_eq!(
        p.start(Duration::ZERO).unwrap(),
        Decision::new(Action::Abort, Reason::DeadlineUnreachable)
    );
}

#[test]
fn poll_cuts_a_round_short_when_the_deadline_comes() {
    let mut p = planner(64 * MIB);
    p.set_deadline(Some(Duration::from_secs(30)));
    assert_eq!(p.start(Duration::ZERO).unwrap().action, Action::PreCopy);
    assert_eq!(p.poll(Duration::from_secs(1)), None);
    let d = p
        .poll(Duration::from_secs(28))
        .expect("the deadline must force a decision");
    assert_eq!(d.reason, Reason::DeadlineNear);
    assert_eq!(d.action, Action::FinalDump);
    // Cut short in round 1, nothing reached the target yet: the forecast is stop-and-copy.
    let twin = planner(64 * MIB);
    assert_eq!(twin.forecast(Duration::ZERO).final_delta, 64 * MIB);
    assert_eq!(p.forecast(Duration::from_secs(28)).final_delta, 64 * MIB);
    // The round in progress is abandoned: its report is refused, the final one accepted.
    assert!(p
        .round_finished(Duration::from_secs(28), report(MIB))
        .is_err());
    assert!(p
        .final_finished(FinalReport {
            dump_time: ms(250),
            wire_bytes: MIB,
            restore_time: ms(100),
            downtime: ms(400),
        })
        .is_ok());
}

#[test]
fn events_out_of_order_are_refused() {
    let mut p = planner(64 * MIB);
    assert!(p.round_finished(Duration::ZERO, report(MIB)).is_err());
    assert!(p
        .final_finished(FinalReport {
            dump_time: ms(1),
            wire_bytes: 0,
            restore_time: ms(1),
            downtime: ms(2),
        })
        .is_err());
    p.start(Duration::ZERO).unwrap();
    let err = p.start(Duration::ZERO).unwrap_err();
    assert!(err.to_string().contains("pre-copy round"), "{err}");
}

#[test]
fn progress_reports_every_round_and_prints() {
    let mut p = planner(64 * MIB);
    run(&mut p, &[64 * MIB, 16 * MIB, 4 * MIB]);
    let pr = p.progress();
    assert_eq!(pr.len(), 3);
    assert_eq!(pr[1].round, 2);
    assert_eq!(pr[1].delta_bytes, 16 * MIB);
    assert_eq!(pr[1].wire_bytes, 8 * MIB);
    // Round 2's delta came in the 1 s since round 1's dump started: 16 MiB/s dirtied.
    assert!((pr[1].dirty_rate - 16.0 * MIB as f64).abs() < 1.0);
    assert!(pr[2].predicted_downtime < pr[0].predicted_downtime);
    assert!(pr[2].predicted_downtime_upper >= pr[2].predicted_downtime);
    let line = pr[1].to_string();
    assert!(line.starts_with("round 2: "), "{line}");
    assert!(line.contains("delta 16.00 MiB"), "{line}");
}

#[test]
fn bandwidth_is_estimated_from_rounds_when_not_given() {
    let mut p = Planner::new(PlannerConfig::default(), Predictor::default(), 64 * MIB);
    p.start(Duration::ZERO).unwrap();
    p.round_finished(
        Duration::from_secs(2),
        RoundReport {
            dumped_bytes: 64 * MIB,
            delta_bytes: 64 * MIB,
            wire_bytes: 10_000_000,
            dump_time: ms(100),
            round_time: ms(1100),
            dirty_rate: None,
        },
    )
    .unwrap();
    assert!((p.bandwidth() - 10.0 * MB).abs() < 1.0);
    p.set_bandwidth(50.0 * MB);
    assert_eq!(p.bandwidth(), 50.0 * MB);
}

#[test]
fn a_nearly_empty_round_does_not_slow_the_link_it_measured() {
    use super::learned_bandwidth as learn;
    // 10 MB in 1 s: the link's rate.
    let b = learn(None, 10_000_000, 10.0 * MB);
    assert_eq!(b, 10.0 * MB);
    // 20 kB in 200 ms (the target held the rest): 0.1 MB/s says nothing about the link.
    let b = learn(Some(b), 20_000, 0.1 * MB);
    assert_eq!(b, 10.0 * MB);
    // A small round that went faster raises it (its bytes went at least that fast).
    let b = learn(Some(b), 500_000, 50.0 * MB);
    assert_eq!(b, 50.0 * MB);
    // A large slower round replaces it: the link did slow down.
    let b = learn(Some(b), 4_000_000, 4.0 * MB);
    assert_eq!(b, 4.0 * MB);
    // With nothing known, even a small round gives a first (pessimistic) figure.
    assert_eq!(learn(None, 20_000, 0.1 * MB), 0.1 * MB);
}

#[test]
fn the_final_round_teaches_the_predictor() {
    let mut p = planner(64 * MIB);
    run(&mut p, &[64 * MIB, 100 * 1024]);
    let before = p.clone().into_predictor();
    let out = p
        .final_finished(FinalReport {
            dump_time: ms(900),
            wire_bytes: 50 * 1024,
            restore_time: ms(800),
            downtime: ms(1750),
        })
        .unwrap();
    assert_eq!(out.rounds, 2);
    assert_eq!(out.downtime, ms(1750));
    assert!(out.predicted_downtime < out.downtime);
    let after = p.into_predictor();
    assert!(after.restore(64 * MIB).mean > before.restore(64 * MIB).mean + 0.1);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::testing::proptest_config(128))]

        /// Whatever deltas the rounds report, the planner stops within its round limit, and it
        /// never freezes with a predicted downtime over the budget unless a deadline forces it.
        #[test]
        fn always_stops_and_respects_the_budget(
            memory_mib in 1u64..1024,
            fractions in proptest::collection::vec(0.0f64..1.5, 1..40),
            bandwidth in 1e5f64..1e9,
        ) {
            let memory = memory_mib * MIB;
            let cfg = PlannerConfig::default();
            let mut p = Planner::new(cfg.clone(), Predictor::default(), memory);
            p.set_bandwidth(bandwidth);
            let mut d = p.start(Duration::ZERO).unwrap();
            let mut now = Duration::ZERO;
            let mut rounds = 0u32;
            let mut i = 0;
            while d.action == Action::PreCopy {
                let f = fractions[i % fractions.len()];
                i += 1;
                let delta = if rounds == 0 { memory } else { (memory as f64 * f.min(1.0)) as u64 };
                let round = ms(200) + Duration::from_secs_f64(delta as f64 / bandwidth);
                now += round;
                let (next, pr) = p
                    .round_finished(now, RoundReport {
                        dumped_bytes: memory,
                        delta_bytes: delta,
                        wire_bytes: delta,
                        dump_time: ms(200),
                        round_time: round,
                        dirty_rate: None,
                    })
                    .unwrap();
                rounds += 1;
                prop_assert!(rounds <= cfg.max_rounds, "{} rounds", rounds);
                if next.action == Action::FinalDump {
                    prop_assert!(pr.predicted_downtime_upper <= cfg.max_downtime, "{}", pr);
                }
                d = next;
            }
            prop_assert!(d.action != Action::PreCopy);
        }
    }
}

#[test]
fn a_round_cut_short_counts_only_what_reached_the_target() {
    // Round 1 done at 1 s, round 2 running: the final delta is counted from round 1's dump
    // start (t = 0), not from round 2's, whose delta never fully arrived.
    let mut p = planner(64 * MIB);
    run(&mut p, &[64 * MIB, 16 * MIB]);
    // Round 2 reported at t = 2 s; round 3 started then. At t = 2.5 s the forecast counts the
    // pages dirtied since round 2's dump started at t = 1 s, at round 2's 16 MiB/s.
    let f = p.forecast(ms(2500));
    assert_eq!(f.features.since_last_dump, Some(ms(1500)));
    assert_eq!(f.final_delta, 24 * MIB);
}

#[test]
fn poll_aborts_when_even_freezing_now_is_too_late() {
    let mut p = planner(64 * MIB);
    p.set_deadline(Some(Duration::from_secs(30)));
    p.start(Duration::ZERO).unwrap();
    // 64 MiB still to send (~0.7 s) plus dump and restore cannot fit in the last 0.5 s.
    assert_eq!(
        p.poll(ms(29_500)),
        Some(Decision::new(Action::Abort, Reason::DeadlineUnreachable))
    );
    assert!(p.round_finished(ms(29_600), report(MIB)).is_err());
}

#[test]
fn a_first_round_the_target_already_held_measures_the_dirtying_before_any_verdict() {
    // A 97 MiB task moved back to a node whose chunk store holds its pages: round 1 finds 8
    // KiB of new chunks and puts 12 KiB on the wire in 60 ms, which says nothing of the link
    // and nothing of how fast the task writes. On the first round's guess (the whole memory
    // rewritten meanwhile) the freeze looks minutes long; the planner measures instead.
    let mut p = Planner::new(PlannerConfig::default(), Predictor::default(), 97 * MIB);
    p.start(Duration::ZERO).unwrap();
    let first = RoundReport {
        dumped_bytes: 88 * MIB,
        delta_bytes: 8 * 1024,
        wire_bytes: 12 * 1024,
        dump_time: ms(60),
        round_time: ms(120),
        dirty_rate: None,
    };
    let (d, pr) = p.round_finished(ms(120), first).unwrap();
    assert!(
        pr.predicted_downtime > Duration::from_secs(2),
        "the guess should look hopeless here: {pr}"
    );
    assert_eq!(d, Decision::new(Action::PreCopy, Reason::DirtyRateUnknown));
    // Round 2, a second later: 100 KiB written since, a freeze that fits.
    let second = RoundReport {
        dumped_bytes: 88 * MIB,
        delta_bytes: 100 * 1024,
        wire_bytes: 60 * 1024,
        dump_time: ms(60),
        round_time: ms(80),
        dirty_rate: None,
    };
    let (d, pr) = p.round_finished(ms(1200), second).unwrap();
    assert_eq!(d.action, Action::FinalDump, "{d}: {pr}");
}

#[test]
fn a_measured_dirty_rate_too_fast_for_the_link_still_aborts() {
    // The guess only buys a measurement: the same task writing 8 MiB between rounds over a
    // 1 MB/s link is given up as before.
    let mut p = planner(64 * MIB);
    p.set_bandwidth(1.0 * MB);
    let (d, _) = run(&mut p, &[64 * MIB, 8 * MIB, 8 * MIB]);
    assert_eq!(d, Decision::new(Action::Abort, Reason::DowntimeTooLong));
}
