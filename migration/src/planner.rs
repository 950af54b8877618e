//! The iterative pre-copy planner: a sans-IO state machine that decides, between rounds, whether
//! to dump the running task again, to freeze it for the final dump, or to give up and keep the
//! source running.
//!
//! Why: pre-copy pays only while each round leaves less to send than the one before; the final
//! round freezes the task, so it must be entered only when its predicted cost fits the downtime
//! budget; and when a deadline looms (the node is leaving, the task's runtime ends) the final
//! dump must start early enough to finish before it (seed 000's "start in time").
//!
//! Data flow: the node creates a [`Planner`] with the task's memory size and a [`Predictor`],
//! tells it the link bandwidth and any deadline, and calls [`Planner::start`]. It carries out
//! each [`Decision`]: for [`Action::PreCopy`] it dumps with `--leave-running`, ships the chunk
//! delta and reports a [`RoundReport`] to [`Planner::round_finished`], which answers with the
//! next decision and a [`RoundProgress`] to print; for [`Action::FinalDump`] it freezes, dumps,
//! ships and restores, then reports a [`FinalReport`] to [`Planner::final_finished`]; for
//! [`Action::Abort`] it stops and leaves the task where it is. While a round runs, the node may
//! call [`Planner::poll`] so a deadline can cut the round short. Time is always passed in.
//!
//! The rules, checked in this order after every round k (delta d_k = new chunk bytes):
//! 1. deadline: if freezing now would barely finish before the deadline (predicted downtime
//!    upper bound plus the margin), or another round followed by the final one would not, freeze
//!    now ([`Reason::DeadlineNear`]), even over the downtime budget: a long pause beats losing the
//!    task; if even the expected downtime overshoots the deadline, abort ([`Reason::DeadlineUnreachable`]);
//! 2. impossible budget: if the downtime expected with nothing left to send (dump + restore
//!    alone) exceeds the budget, no round can help: abort ([`Reason::DowntimeTooLong`]);
//! 3. stop rules: d_k under the threshold, two successive deltas equal within a tolerance (seed
//!    002), a round that shrank the delta by less than `min_shrink` (or grew it: the task dirties
//!    faster than the link drains), or the round limit. When one holds, the downtime gate
//!    ([`gate`]) decides: freeze if the predicted downtime's upper bound fits the budget; if
//!    only the bound is over it (the mean fits), run another round ([`Reason::OverBudget`]; at
//!    most `max_over_budget` of them, each also teaching the predictor); else abort
//!    ([`Reason::DowntimeTooLong`], with the prediction and the budget in [`Stopped`]);
//! 4. otherwise dump again.

use std::fmt;
use std::time::Duration;

use crate::predictor::{DumpFeatures, Predictor};

mod gate;
pub use gate::{gate, Gate};

/// The planner's knobs.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannerConfig {
    /// The longest acceptable freeze (final dump + last delta + restore).
    pub max_downtime: Duration,
    /// A delta at most this large ends pre-copy.
    pub delta_threshold: u64,
    /// Two successive deltas within this fraction of each other are "equal" (seed 002).
    pub equal_tolerance: f64,
    /// A round must shrink the delta by at least this fraction to pay for itself.
    pub min_shrink: f64,
    /// Pre-copy rounds at most.
    pub max_rounds: u32,
    /// Slack kept before a deadline.
    pub deadline_margin: Duration,
    /// Pre-copy rounds run at most because a stop rule held but the predicted freeze did not
    /// fit `max_downtime` yet ([`Reason::OverBudget`]), before the move is given up.
    pub max_over_budget: u32,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            max_downtime: Duration::from_secs(2),
            delta_threshold: 256 * 1024,
            equal_tolerance: 0.05,
            min_shrink: 0.2,
            max_rounds: 12,
            deadline_margin: Duration::from_millis(500),
            max_over_budget: 2,
        }
    }
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Dump while the task runs and ship the delta.
    PreCopy,
    /// Freeze, dump, ship the last delta and the other images, restore on the target.
    FinalDump,
    /// Stop migrating; the task keeps running on the source.
    Abort,
}

/// Why the planner decided what it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    FirstRound,
    DeltaShrinking,
    DeltaUnderThreshold,
    RoundsEqual,
    RoundsStopPaying,
    MaxRounds,
    DeadlineNear,
    DeadlineUnreachable,
    DowntimeTooLong,
    /// A stop rule held but the predicted freeze does not fit the budget yet: one more round.
    OverBudget,
    /// The freeze does not fit, but only by the first round's guess that the whole memory
    /// could be rewritten meanwhile: one more round measures how much really is.
    DirtyRateUnknown,
}

/// One decision with its reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: Reason,
}

impl Decision {
    fn new(action: Action, reason: Reason) -> Self {
        Decision { action, reason }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = match self.action {
            Action::PreCopy => "pre-copy again",
            Action::FinalDump => "final dump",
            Action::Abort => "abort",
        };
        let r = match self.reason {
            Reason::FirstRound => "first round",
            Reason::DeltaShrinking => "the delta is shrinking",
            Reason::DeltaUnderThreshold => "the delta is under the threshold",
            Reason::RoundsEqual => "two successive rounds are equal",
            Reason::RoundsStopPaying => "rounds stopped paying",
            Reason::MaxRounds => "round limit reached",
            Reason::DeadlineNear => "the deadline is near",
            Reason::DeadlineUnreachable => "the deadline cannot be met",
            Reason::DowntimeTooLong => "the predicted downtime exceeds the budget",
            Reason::OverBudget => "the predicted downtime does not fit the budget yet",
            Reason::DirtyRateUnknown => {
                "the predicted downtime rests on a guessed dirty rate; measuring it"
            }
        };
        write!(f, "{a} ({r})")
    }
}

/// What the node measured in one pre-copy round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoundReport {
    /// Bytes of memory images dumped.
    pub dumped_bytes: u64,
    /// Bytes of new chunks (the delta against what the target holds), before compression.
    pub delta_bytes: u64,
    /// Bytes put on the wire for them.
    pub wire_bytes: u64,
    /// How long the dump took (until its images were written and hashed).
    pub dump_time: Duration,
    /// How long the whole round took, dump start to the last byte acknowledged.
    pub round_time: Duration,
    /// Distinct bytes per second the task dirties, if measured; else derived from the deltas.
    pub dirty_rate: Option<f64>,
}

/// What the node measured in the final round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FinalReport {
    pub dump_time: Duration,
    pub wire_bytes: u64,
    pub restore_time: Duration,
    /// From the freeze on the source to the task running on the target.
    pub downtime: Duration,
}

/// One round's numbers and the decision that followed, for the CLI.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoundProgress {
    pub round: u32,
    pub dumped_bytes: u64,
    pub delta_bytes: u64,
    pub wire_bytes: u64,
    pub round_time: Duration,
    /// Wire bytes per second achieved over the round.
    pub rate: f64,
    pub dirty_rate: f64,
    pub bandwidth: f64,
    /// Bytes the final round is predicted to send if frozen now.
    pub predicted_final_delta: u64,
    pub predicted_downtime: Duration,
    pub predicted_downtime_upper: Duration,
    pub decision: Decision,
}

impl fmt::Display for RoundProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: f64 = (1u64 << 20) as f64;
        write!(
            f,
            "round {}: dumped {:.1} MiB, delta {:.2} MiB, wire {:.2} MiB in {:.0} ms ({:.1} MiB/s), dirtying {:.1} MiB/s, predicted downtime {:.0} ms (<= {:.0} ms): {}",
            self.round,
            self.dumped_bytes as f64 / MIB,
            self.delta_bytes as f64 / MIB,
            self.wire_bytes as f64 / MIB,
            self.round_time.as_secs_f64() * 1e3,
            self.rate / MIB,
            self.dirty_rate / MIB,
            self.predicted_downtime.as_secs_f64() * 1e3,
            self.predicted_downtime_upper.as_secs_f64() * 1e3,
            self.decision,
        )
    }
}

/// How the final round compared with its prediction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FinalOutcome {
    pub rounds: u32,
    pub predicted_downtime: Duration,
    pub predicted_downtime_upper: Duration,
    pub downtime: Duration,
}

/// A round that put fewer bytes than this on the wire took the time of its fixed costs (round
/// trips, the target's chunk-store lookups), not of its bytes: its rate says little about the
/// link.
pub const MIN_BANDWIDTH_SAMPLE: u64 = 1 << 20;

/// The link's bandwidth after a round sent `wire_bytes` at `rate` bytes/s: a round large
/// enough replaces the estimate; a smaller one can only raise it (its bytes went at least that
/// fast) or give a first, pessimistic one. Without this, a round the target's chunk store made
/// nearly empty (a few KiB in 200 ms: 0.1 MiB/s) told the planner the link had slowed a
/// hundredfold, and the predicted final transfer, and with it the downtime, grew move after move.
fn learned_bandwidth(previous: Option<f64>, wire_bytes: u64, rate: f64) -> f64 {
    match previous {
        Some(b) if wire_bytes < MIN_BANDWIDTH_SAMPLE => b.max(rate),
        _ => rate,
    }
}

/// A prediction this long means the transfer was not bounded (no bandwidth known yet).
const UNMEASURED: Duration = Duration::from_secs(1_000_000);

/// A decision to stop with what it was based on: the predicted downtime of freezing at that
/// moment against the budget (for the reason a caller reports, e.g. `brume migrate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    pub decision: Decision,
    /// Expected downtime of a freeze at the moment of the decision.
    pub predicted_downtime: Duration,
    /// Its upper bound (what the gate compares with the budget).
    pub predicted_upper: Duration,
    /// The downtime expected with nothing left to send (dump and restore alone).
    pub predicted_floor: Duration,
    /// The longest freeze allowed (`max_downtime`).
    pub budget: Duration,
    /// Pre-copy rounds run before it.
    pub rounds: u32,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "{} after {} pre-copy round(s): predicted downtime ",
            self.decision, self.rounds
        )?;
        // Before the link is measured the transfer has no bound: only the floor means anything.
        if self.predicted_upper >= UNMEASURED {
            write!(
                f,
                "at least {:.0} ms for the dump and restore alone (the transfer is not measured yet)",
                ms(self.predicted_floor)
            )?;
        } else {
            write!(
                f,
                "{:.0} ms (upper bound {:.0} ms, at least {:.0} ms for the dump and restore alone)",
                ms(self.predicted_downtime),
                ms(self.predicted_upper),
                ms(self.predicted_floor),
            )?;
        }
        write!(f, " against a downtime budget of {:.0} ms", ms(self.budget))
    }
}

/// An event arrived in a state that cannot take it: a bug in the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("{event} arrived while the planner is {state}: call start, then report each round the planner asked for")]
    OutOfOrder {
        event: &'static str,
        state: &'static str,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Idle,
    PreCopy {
        features: DumpFeatures,
    },
    Final {
        forecast_mean: Duration,
        forecast_upper: Duration,
        features: DumpFeatures,
    },
    Done,
    Aborted,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Idle => "not started",
            State::PreCopy { .. } => "in a pre-copy round",
            State::Final { .. } => "in the final round",
            State::Done => "done",
            State::Aborted => "aborted",
        }
    }
}

/// A forecast of freezing at some moment.
#[derive(Clone, Copy, Debug)]
struct Forecast {
    features: DumpFeatures,
    final_delta: u64,
    mean: Duration,
    upper: Duration,
    /// Expected downtime with nothing to send: dump and restore alone.
    floor: Duration,
}

/// The pre-copy planner of one migration.
#[derive(Clone, Debug)]
pub struct Planner {
    cfg: PlannerConfig,
    predictor: Predictor,
    memory_bytes: u64,
    bandwidth: Option<f64>,
    measured_bandwidth: Option<f64>,
    deadline: Option<Duration>,
    ratio: f64,
    dirty_rate: f64,
    /// Whether `dirty_rate` was measured (by the caller, or from a delta over a known interval)
    /// rather than guessed after the first round.
    dirty_rate_measured: bool,
    state: State,
    /// When the dump of the last round whose delta reached the target started.
    last_start: Option<Duration>,
    /// When the dump of the round in progress started.
    current_start: Option<Duration>,
    deltas: Vec<u64>,
    progress: Vec<RoundProgress>,
    /// Rounds run because the freeze did not fit the budget yet ([`Reason::OverBudget`]).
    over_budget: u32,
    /// The forecast behind the last decision.
    last: Option<Forecast>,
}

impl Planner {
    /// A planner for a task of `memory_bytes`, with what the node's predictor learned so far.
    pub fn new(cfg: PlannerConfig, predictor: Predictor, memory_bytes: u64) -> Self {
        Planner {
            cfg,
            predictor,
            memory_bytes,
            bandwidth: None,
            measured_bandwidth: None,
            deadline: None,
            ratio: 1.0,
            dirty_rate: 0.0,
            dirty_rate_measured: false,
            state: State::Idle,
            last_start: None,
            current_start: None,
            deltas: Vec::new(),
            progress: Vec::new(),
            over_budget: 0,
            last: None,
        }
    }

    /// `decision` with the forecast it was based on (the last decision's).
    pub fn stopped(&self, decision: Decision) -> Stopped {
        let (mean, upper, floor) = self
            .last
            .map_or((Duration::ZERO, Duration::ZERO, Duration::ZERO), |f| {
                (f.mean, f.upper, f.floor)
            });
        Stopped {
            decision,
            predicted_downtime: mean,
            predicted_upper: upper,
            predicted_floor: floor,
            budget: self.cfg.max_downtime,
            rounds: self.rounds(),
        }
    }

    /// The link's bandwidth in bytes/s as the transport measures it (overrides the planner's
    /// own estimate from round reports).
    pub fn set_bandwidth(&mut self, bytes_per_sec: f64) {
        if bytes_per_sec.is_finite() && bytes_per_sec > 0.0 {
            self.bandwidth = Some(bytes_per_sec);
        }
    }

    /// The moment the task must be off the source (a node leaving, a runtime limit), or none.
    /// Set the bandwidth first: with no bandwidth known, no transfer can be promised in time.
    pub fn set_deadline(&mut self, deadline: Option<Duration>) {
        self.deadline = deadline;
    }

    /// Pre-copy rounds reported so far.
    pub fn rounds(&self) -> u32 {
        self.deltas.len() as u32
    }

    /// Every round's progress so far.
    pub fn progress(&self) -> &[RoundProgress] {
        &self.progress
    }

    /// Gives back the predictor with what this migration taught it.
    pub fn into_predictor(self) -> Predictor {
        self.predictor
    }

    /// The bandwidth used for predictions (bytes/s); 0 if unknown.
    pub fn bandwidth(&self) -> f64 {
        self.bandwidth.or(self.measured_bandwidth).unwrap_or(0.0)
    }

    fn forecast(&self, now: Duration) -> Forecast {
        let since = self.last_start.map(|s| now.saturating_sub(s));
        let features = DumpFeatures {
            memory_bytes: self.memory_bytes,
            dirty_rate: self.dirty_rate,
            since_last_dump: since,
        };
        let final_delta = features.dirtied_bytes();
        let wire = (final_delta as f64 * self.ratio) as u64;
        let z = self.predictor.z();
        let d = self.predictor.downtime(&features, wire, self.bandwidth());
        Forecast {
            features,
            final_delta,
            mean: d.total.mean(),
            upper: d.total.upper(z),
            floor: d.dump.mean() + d.restore.mean(),
        }
    }

    /// Predicted upper bound of one more pre-copy round started now.
    fn next_round_upper(&self, f: &Forecast) -> Duration {
        let z = self.predictor.z();
        let dump = self.predictor.dump(&f.features).upper(z);
        let b = self.bandwidth();
        let send = if b > 0.0 {
            Duration::from_secs_f64((f.final_delta as f64 * self.ratio / b).min(1e9))
        } else {
            Duration::from_secs(1_000_000_000)
        };
        dump + send
    }

    /// Rule 1: the deadline. Some(decision) if it forces the hand.
    fn deadline_rule(&self, now: Duration, f: &Forecast) -> Option<Decision> {
        let deadline = self.deadline?;
        if now + f.mean > deadline {
            return Some(Decision::new(Action::Abort, Reason::DeadlineUnreachable));
        }
        let freeze_by = now + f.upper + self.cfg.deadline_margin;
        let after_one_more = now + self.next_round_upper(f) + f.upper + self.cfg.deadline_margin;
        (freeze_by >= deadline || after_one_more >= deadline)
            .then(|| Decision::new(Action::FinalDump, Reason::DeadlineNear))
    }

    /// The first decision.
    pub fn start(&mut self, now: Duration) -> Result<Decision, PlanError> {
        if self.state != State::Idle {
            return Err(PlanError::OutOfOrder {
                event: "start",
                state: self.state.name(),
            });
        }
        let f = self.forecast(now);
        let decision = if let Some(d) = self.deadline_rule(now, &f) {
            d
        } else if f.floor > self.cfg.max_downtime {
            Decision::new(Action::Abort, Reason::DowntimeTooLong)
        } else if self.memory_bytes <= self.cfg.delta_threshold && f.upper <= self.cfg.max_downtime
        {
            Decision::new(Action::FinalDump, Reason::DeltaUnderThreshold)
        } else {
            Decision::new(Action::PreCopy, Reason::FirstRound)
        };
        self.enter(now, decision, &f);
        Ok(decision)
    }

    fn enter(&mut self, now: Duration, decision: Decision, f: &Forecast) {
        self.last = Some(*f);
        if decision.reason == Reason::OverBudget {
            self.over_budget += 1;
        }
        self.state = match decision.action {
            Action::PreCopy => {
                self.current_start = Some(now);
                State::PreCopy {
                    features: f.features,
                }
            }
            Action::FinalDump => State::Final {
                forecast_mean: f.mean,
                forecast_upper: f.upper,
                features: f.features,
            },
            Action::Abort => State::Aborted,
        };
    }

    /// While a pre-copy round runs: Some(final dump) if the deadline no longer allows finishing
    /// the round first. The node should then cut the round short and freeze.
    pub fn poll(&mut self, now: Duration) -> Option<Decision> {
        let State::PreCopy { .. } = self.state else {
            return None;
        };
        let deadline = self.deadline?;
        let f = self.forecast(now);
        if now + f.upper + self.cfg.deadline_margin >= deadline {
            let d = self.deadline_rule(now, &f)?;
            self.enter(now, d, &f);
            Some(d)
        } else {
            None
        }
    }

    /// A pre-copy round ended at `now`; returns the next decision and the round's progress.
    pub fn round_finished(
        &mut self,
        now: Duration,
        r: RoundReport,
    ) -> Result<(Decision, RoundProgress), PlanError> {
        let State::PreCopy { features } = self.state else {
            return Err(PlanError::OutOfOrder {
                event: "a finished pre-copy round",
                state: self.state.name(),
            });
        };
        self.last_start = self.current_start;
        // Learn from what the round measured.
        self.predictor.observe_dump(&features, r.dump_time);
        if r.delta_bytes > 0 && r.wire_bytes > 0 {
            let ratio = r.wire_bytes as f64 / r.delta_bytes as f64;
            self.ratio = if self.deltas.is_empty() {
                ratio
            } else {
                0.5 * (self.ratio + ratio)
            };
        }
        let send_time = r.round_time.saturating_sub(r.dump_time).as_secs_f64();
        if r.wire_bytes > 0 && send_time > 0.0 {
            self.measured_bandwidth = Some(learned_bandwidth(
                self.measured_bandwidth,
                r.wire_bytes,
                r.wire_bytes as f64 / send_time,
            ));
        }
        let interval = features.since_last_dump;
        (self.dirty_rate, self.dirty_rate_measured) = match (r.dirty_rate, interval) {
            (Some(rate), _) => (rate.max(0.0), true),
            (None, Some(t)) if t > Duration::ZERO => (r.delta_bytes as f64 / t.as_secs_f64(), true),
            // First round: everything is new, so the delta says nothing about dirtying; assume
            // the whole memory could be rewritten within the round until round 2 tells.
            (None, _) => (
                self.memory_bytes as f64 / r.round_time.as_secs_f64().max(1e-3),
                false,
            ),
        };
        self.deltas.push(r.delta_bytes);
        let round = self.deltas.len() as u32;

        let f = self.forecast(now);
        let decision = self.decide(now, &f);
        self.enter(now, decision, &f);
        let p = RoundProgress {
            round,
            dumped_bytes: r.dumped_bytes,
            delta_bytes: r.delta_bytes,
            wire_bytes: r.wire_bytes,
            round_time: r.round_time,
            rate: if r.round_time > Duration::ZERO {
                r.wire_bytes as f64 / r.round_time.as_secs_f64()
            } else {
                0.0
            },
            dirty_rate: self.dirty_rate,
            bandwidth: self.bandwidth(),
            predicted_final_delta: f.final_delta,
            predicted_downtime: f.mean,
            predicted_downtime_upper: f.upper,
            decision,
        };
        self.progress.push(p);
        Ok((decision, p))
    }

    fn decide(&self, now: Duration, f: &Forecast) -> Decision {
        if let Some(d) = self.deadline_rule(now, f) {
            return d;
        }
        if f.floor > self.cfg.max_downtime {
            return Decision::new(Action::Abort, Reason::DowntimeTooLong);
        }
        let k = self.deltas.len();
        let d = self.deltas[k - 1];
        let stop = if d <= self.cfg.delta_threshold {
            Some(Reason::DeltaUnderThreshold)
        } else if k >= 2 {
            let prev = self.deltas[k - 2] as f64;
            let cur = d as f64;
            if (cur - prev).abs() <= self.cfg.equal_tolerance * prev.max(1.0) {
                Some(Reason::RoundsEqual)
            } else if cur > (1.0 - self.cfg.min_shrink) * prev {
                Some(Reason::RoundsStopPaying)
            } else if k as u32 >= self.cfg.max_rounds {
                Some(Reason::MaxRounds)
            } else {
                None
            }
        } else if k as u32 >= self.cfg.max_rounds {
            Some(Reason::MaxRounds)
        } else {
            None
        };
        let Some(reason) = stop else {
            return Decision::new(Action::PreCopy, Reason::DeltaShrinking);
        };
        match gate(
            f.mean,
            f.upper,
            f.floor,
            self.cfg.max_downtime,
            self.over_budget,
            self.cfg.max_over_budget,
        ) {
            Gate::Freeze => Decision::new(Action::FinalDump, reason),
            // A round whose delta is small because the target held the chunks already (its
            // chunk store) measures neither the link nor the dirtying: the guess alone must not
            // give the move up (seen: 115-141 s predicted for a 97 MiB redis whose freezes took
            // 230 ms). The next round's delta, over a known interval, replaces the guess.
            Gate::AnotherRound | Gate::Defer if !self.dirty_rate_measured => {
                Decision::new(Action::PreCopy, Reason::DirtyRateUnknown)
            }
            Gate::AnotherRound => Decision::new(Action::PreCopy, Reason::OverBudget),
            Gate::Defer => Decision::new(Action::Abort, Reason::DowntimeTooLong),
        }
    }

    /// The final round ended; the predictor learns its dump and restore times.
    pub fn final_finished(&mut self, r: FinalReport) -> Result<FinalOutcome, PlanError> {
        let State::Final {
            forecast_mean,
            forecast_upper,
            features,
        } = self.state
        else {
            return Err(PlanError::OutOfOrder {
                event: "a finished final round",
                state: self.state.name(),
            });
        };
        self.predictor.observe_dump(&features, r.dump_time);
        self.predictor
            .observe_restore(self.memory_bytes, r.restore_time);
        self.state = State::Done;
        Ok(FinalOutcome {
            rounds: self.deltas.len() as u32,
            predicted_downtime: forecast_mean,
            predicted_downtime_upper: forecast_upper,
            downtime: r.downtime,
        })
    }
}

#[cfg(test)]
mod tests;
