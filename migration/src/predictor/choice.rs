//! Which of its models a node trusts for a dump's duration, and what each has cost it so far.
//!
//! Why: issue 14 asks the node to use whichever model wins on the replay's measure
//! ([`super::evaluate`]), on its own dumps: seed 000's lost computation ([`lost`]), summed over
//! every real dump each model predicted before it learned from it. The node asks
//! [`Models::predict`] before a dump (the winner's answer, named) and tells
//! [`Models::observe`] the measured duration after it (every model learns, every model's loss
//! is counted, and the answer says what the winner had predicted). Before any dump, and on a
//! tie, the first of PB-MLR (seed 000's model), MLR, Bayes wins. Pure: no clock, no file.

use super::evaluate::lost;
use super::features::Features;
use super::model::Model;
use super::store::Models;

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

impl Models {
    /// Each model with its summed lost computation, in tie-break order.
    fn scored(&self) -> [(&dyn Model, f64); 3] {
        [
            (&self.pbmlr as &dyn Model, self.lost.pbmlr),
            (&self.mlr, self.lost.mlr),
            (&self.bayes, self.lost.bayes),
        ]
    }

    fn best(&self) -> &dyn Model {
        let mut best = self.scored()[0];
        for s in self.scored() {
            if s.1 < best.1 {
                best = s;
            }
        }
        best.0
    }

    /// The model in use: the least lost computation so far.
    pub fn winner(&self) -> &'static str {
        self.best().name()
    }

    /// The winner's prediction of a dump with these features.
    pub fn predict(&self, f: &Features) -> Guess {
        let m = self.best();
        Guess {
            model: m.name(),
            seconds: m.predict(f),
        }
    }

    /// Learns a dump with features `f` that took `seconds`: each model's lost computation on
    /// it is counted, then each learns. A non-finite or negative duration is ignored (`None`).
    pub fn observe(&mut self, f: &Features, seconds: f64) -> Option<Learned> {
        if !seconds.is_finite() || seconds < 0.0 {
            return None;
        }
        let used = self.predict(f);
        let e = f.since_checkpoint_s();
        self.lost.pbmlr += lost(self.pbmlr.predict(f), seconds, e);
        self.lost.mlr += lost(self.mlr.predict(f), seconds, e);
        self.lost.bayes += lost(self.bayes.predict(f), seconds, e);
        self.lost.dumps += 1;
        self.pbmlr.observe(f, seconds, e);
        self.mlr.observe(f, seconds, e);
        self.bayes.observe(f, seconds, e);
        Some(Learned {
            used,
            observed: seconds,
            lost: lost(used.seconds, seconds, e),
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
    use crate::predictor::store::Scores;
    use crate::predictor::PredictorConfig;

    #[test]
    fn pbmlr_is_used_before_any_dump() {
        let m = Models::prior(&PredictorConfig::default());
        assert_eq!(m.winner(), "pbmlr");
        assert_eq!(m.predict(&example(64)).model, "pbmlr");
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
        assert_eq!(m.pbmlr.samples(), 1);
        assert!(m.lost.pbmlr > 0.0 && m.lost.mlr > 0.0 && m.lost.bayes > 0.0);
        assert!(m.observe(&f, f64::NAN).is_none());
        assert!(m.observe(&f, -1.0).is_none());
        assert_eq!(m.dumps(), 1);
    }

    #[test]
    fn the_least_lost_computation_wins() {
        let mut m = Models::prior(&PredictorConfig::default());
        m.lost = Scores {
            dumps: 3,
            pbmlr: 9.0,
            mlr: 2.0,
            bayes: 5.0,
        };
        assert_eq!(m.winner(), "mlr");
        m.lost.bayes = 1.0;
        assert_eq!(m.winner(), "bayes+zsd");
        assert_eq!(m.predict(&example(64)).model, "bayes+zsd");
        // A tie goes to the earlier model.
        m.lost.pbmlr = 1.0;
        assert_eq!(m.winner(), "pbmlr");
    }

    #[test]
    fn scores_survive_serde_and_older_states_read_as_zero() {
        let mut m = Models::prior(&PredictorConfig::default());
        m.observe(&example(64), 0.2);
        let back: Models = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back.lost, m.lost);
        let mut old = serde_json::to_value(&m).unwrap();
        old.as_object_mut().unwrap().remove("lost");
        old.as_object_mut().unwrap().remove("planner");
        let back: Models = serde_json::from_value(old).unwrap();
        assert_eq!(back.lost, Scores::default());
        assert!(back.planner.is_none());
    }
}
