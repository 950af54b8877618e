//! Which of its models a node trusts for a dump's duration, and what each has cost it so far.
//!
//! Why: issue 14 asks the node to use whichever model wins on the replay's measure
//! ([`super::evaluate`]) on its own dumps: a late rate within the target first (a late dump
//! loses everything since the last checkpoint), then seed 000's lost computation ([`lost`]),
//! both counted over every real dump each model predicted before it learned from it. The
//! default, before any dump and until another model has proved itself, is PB-MLR with its
//! conformal margin ([`super::calibrated`]): the one late-averse from the first dump. Another
//! model takes over only once at least [`PROOF_DUMPS`] dumps were counted, its late rate is
//! within [`LATE_TARGET`] and it lost less; a tie keeps the earlier of PB-MLR + margin,
//! PB-MLR, MLR, Bayes. The node asks [`Models::predict`] before a dump (the winner's answer,
//! named) and tells [`Models::observe`] the measured duration after it (every model learns,
//! every model's loss and lateness are counted, and the answer says what the winner had
//! predicted). Pure: no clock, no file.

use super::calibrated::NAME as CONFORMAL;
use super::evaluate::lost;
use super::features::Features;
use super::model::Model;
use super::store::Models;

/// The late rate a model must stay within to be used instead of the default.
pub const LATE_TARGET: f64 = 0.05;
/// Dumps counted before any model but the default may be used (the replay's span for
/// `dumps_to_learn`).
pub const PROOF_DUMPS: u64 = 20;

/// A model's answer, named.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guess {
    pub model: &'static str,
    /// Predicted duration, seconds.
    pub seconds: f64,
}

/// One observed dump: what the model in use had predicted, and what it measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Learned {
    /// The model in use before this dump and its prediction.
    pub used: Guess,
    /// The measured duration, seconds.
    pub observed: f64,
    /// Seed 000's lost computation of that prediction, seconds.
    pub lost: f64,
    /// The model in use from now on.
    pub next: &'static str,
}

impl Learned {
    /// The prediction was below the measured duration.
    pub fn late(&self) -> bool {
        self.used.seconds < self.observed
    }
}

/// The candidates, in tie-break order.
const CANDIDATES: usize = 4;

impl Models {
    /// Every candidate's prediction, in tie-break order.
    fn answers(&self, f: &Features) -> [Guess; CANDIDATES] {
        let pb = self.pbmlr.predict(f);
        let seconds = [
            self.conformal.apply(pb),
            pb,
            self.mlr.predict(f),
            self.bayes.predict(f),
        ];
        let names = self.names();
        std::array::from_fn(|i| Guess {
            model: names[i],
            seconds: seconds[i],
        })
    }

    /// Each candidate's summed lost computation and late count, in tie-break order.
    fn scores(&self) -> [(f64, u64); CANDIDATES] {
        let (l, late) = (&self.lost, &self.lost.late);
        [
            (l.conformal, late.conformal),
            (l.pbmlr, late.pbmlr),
            (l.mlr, late.mlr),
            (l.bayes, late.bayes),
        ]
    }

    /// The index of the model in use.
    fn best(&self) -> usize {
        let counted = self.lost.late.dumps;
        let proved = |late: u64| {
            counted >= PROOF_DUMPS && late as f64 <= LATE_TARGET * counted as f64 + 1e-9
        };
        let scores = self.scores();
        let mut best = 0;
        for (i, &(lost, late)) in scores.iter().enumerate().skip(1) {
            if proved(late) && lost < scores[best].0 {
                best = i;
            }
        }
        best
    }

    /// The candidates' names, in tie-break order.
    fn names(&self) -> [&'static str; CANDIDATES] {
        [
            CONFORMAL,
            self.pbmlr.name(),
            self.mlr.name(),
            self.bayes.name(),
        ]
    }

    /// The model in use.
    pub fn winner(&self) -> &'static str {
        self.names()[self.best()]
    }

    /// The winner's prediction of a dump with these features.
    pub fn predict(&self, f: &Features) -> Guess {
        self.answers(f)[self.best()]
    }

    /// Learns a dump with features `f` that took `seconds`: each model's lost computation and
    /// lateness on it are counted, then each learns. A non-finite or negative duration is
    /// ignored (`None`).
    pub fn observe(&mut self, f: &Features, seconds: f64) -> Option<Learned> {
        if !seconds.is_finite() || seconds < 0.0 {
            return None;
        }
        let answers = self.answers(f);
        let used = answers[self.best()];
        let e = f.since_checkpoint_s();
        let cost = |g: &Guess| lost(g.seconds, seconds, e);
        let late = |g: &Guess| u64::from(g.seconds < seconds);
        let s = &mut self.lost;
        s.conformal += cost(&answers[0]);
        s.pbmlr += cost(&answers[1]);
        s.mlr += cost(&answers[2]);
        s.bayes += cost(&answers[3]);
        s.dumps += 1;
        s.late.conformal += late(&answers[0]);
        s.late.pbmlr += late(&answers[1]);
        s.late.mlr += late(&answers[2]);
        s.late.bayes += late(&answers[3]);
        s.late.dumps += 1;
        self.conformal.record(answers[1].seconds, seconds);
        self.pbmlr.observe(f, seconds, e);
        self.mlr.observe(f, seconds, e);
        self.bayes.observe(f, seconds, e);
        Some(Learned {
            used,
            observed: seconds,
            lost: cost(&used),
            next: self.winner(),
        })
    }

    /// Real dumps learned.
    pub fn dumps(&self) -> u64 {
        self.lost.dumps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::features::tests::example;
    use crate::predictor::store::{Lates, Scores};
    use crate::predictor::PredictorConfig;

    #[test]
    fn pbmlr_with_its_margin_is_used_before_any_dump() {
        let m = Models::prior(&PredictorConfig::default());
        assert_eq!(m.winner(), "pbmlr+conformal");
        let g = m.predict(&example(64));
        assert_eq!(g.model, "pbmlr+conformal");
        // Above plain PB-MLR by the prior's margin.
        assert!(g.seconds > m.pbmlr.predict(&example(64)), "{g:?}");
        assert_eq!(m.dumps(), 0);
    }

    #[test]
    fn every_dump_is_scored_and_learned() {
        let mut m = Models::prior(&PredictorConfig::default());
        let f = example(128);
        let before = m.predict(&f);
        let l = m.observe(&f, 0.8).expect("a finite duration");
        assert_eq!(l.used, before);
        assert_eq!(l.observed, 0.8);
        assert_eq!(l.lost, lost(before.seconds, 0.8, f.since_checkpoint_s()));
        assert_eq!(m.dumps(), 1);
        assert_eq!(m.lost.late.dumps, 1);
        assert_eq!(m.pbmlr.samples(), 1);
        assert_eq!(m.conformal.scored(), 1);
        let s = &m.lost;
        assert!(s.conformal > 0.0 && s.pbmlr > 0.0 && s.mlr > 0.0 && s.bayes > 0.0);
        assert!(m.observe(&f, f64::NAN).is_none());
        assert!(m.observe(&f, -1.0).is_none());
        assert_eq!(m.dumps(), 1);
    }

    fn scored(dumps: u64, lost: [f64; 4], late: [u64; 4]) -> Scores {
        Scores {
            dumps,
            conformal: lost[0],
            pbmlr: lost[1],
            mlr: lost[2],
            bayes: lost[3],
            late: Lates {
                dumps,
                conformal: late[0],
                pbmlr: late[1],
                mlr: late[2],
                bayes: late[3],
            },
        }
    }

    #[test]
    fn a_model_within_the_late_target_that_lost_less_wins() {
        let mut m = Models::prior(&PredictorConfig::default());
        // MLR lost least but is late half the time, Bayes lost more: the default stays.
        m.lost = scored(40, [4.0, 8.0, 2.0, 5.0], [1, 4, 20, 1]);
        assert_eq!(m.winner(), "pbmlr+conformal");
        // Bayes lost less than the default and is late 1 in 40: it wins.
        m.lost.bayes = 1.0;
        assert_eq!(m.winner(), "bayes+zsd");
        assert_eq!(m.predict(&example(64)).model, "bayes+zsd");
        // PB-MLR at 2 of 40 (5%) is within the target, and ties Bayes: the earlier wins.
        m.lost = scored(40, [9.0, 1.0, 2.0, 1.0], [1, 2, 20, 1]);
        assert_eq!(m.winner(), "pbmlr");
        // Over the target: not used however little it lost.
        m.lost.late.pbmlr = 3;
        assert_eq!(m.winner(), "bayes+zsd");
    }

    #[test]
    fn no_other_model_before_enough_dumps_are_counted() {
        let mut m = Models::prior(&PredictorConfig::default());
        m.lost = scored(19, [9.0, 1.0, 1.0, 1.0], [3, 0, 0, 0]);
        assert_eq!(m.winner(), "pbmlr+conformal");
        // A state from before lates were counted: dumps learned, none counted.
        m.lost.dumps = 300;
        m.lost.late.dumps = 0;
        assert_eq!(m.winner(), "pbmlr+conformal");
    }

    #[test]
    fn scores_survive_serde_and_older_states_read_as_zero() {
        let mut m = Models::prior(&PredictorConfig::default());
        m.observe(&example(64), 0.2);
        let back: Models = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back.lost, m.lost);
        assert_eq!(back.conformal, m.conformal);
        let mut old = serde_json::to_value(&m).unwrap();
        let o = old.as_object_mut().unwrap();
        o.remove("lost");
        o.remove("planner");
        o.remove("conformal");
        let back: Models = serde_json::from_value(old).unwrap();
        assert_eq!(back.lost, Scores::default());
        assert!(back.planner.is_none());
        assert_eq!(back.conformal.scored(), 0);
    }
}
