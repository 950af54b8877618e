//! Variants of the models that `brume bench predictor` shows beside seed 000's PB-MLR, so one
//! replay of one trace says what each change is worth.
//!
//! Why wrappers here and not new models: the variants are views of the same model (PB-MLR with
//! the machine-load features hidden, or with another late scale), fixed before the replay; only
//! the report needs them told apart by name.

use brume_migration::predictor::load::MachineLoad;
use brume_migration::predictor::{Features, Model};

/// A model reported under another name.
pub struct Named<M> {
    pub name: &'static str,
    pub model: M,
}

impl<M: Model> Model for Named<M> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn predict(&self, f: &Features) -> f64 {
        self.model.predict(f)
    }

    fn observe(&mut self, f: &Features, seconds: f64, since_checkpoint: f64) {
        self.model.observe(f, seconds, since_checkpoint)
    }
}

/// A model that never sees the machine's load (as with a trace from before it was recorded):
/// the baseline the load features are measured against.
pub struct WithoutLoad<M>(pub Named<M>);

fn without_load(f: &Features) -> Features {
    Features {
        load: MachineLoad::default(),
        ..*f
    }
}

impl<M: Model> Model for WithoutLoad<M> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn predict(&self, f: &Features) -> f64 {
        self.0.predict(&without_load(f))
    }

    fn observe(&mut self, f: &Features, seconds: f64, since_checkpoint: f64) {
        self.0.observe(&without_load(f), seconds, since_checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Model for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn predict(&self, f: &Features) -> f64 {
            f.load.load1.unwrap_or(-1.0)
        }
        fn observe(&mut self, _: &Features, _: f64, _: f64) {}
    }

    #[test]
    fn the_load_is_hidden_and_the_name_changed() {
        let f = Features {
            load: MachineLoad {
                load1: Some(2.0),
                ..MachineLoad::default()
            },
            ..Features::default()
        };
        let named = Named {
            name: "x",
            model: Echo,
        };
        assert_eq!((named.name(), named.predict(&f)), ("x", 2.0));
        let hidden = WithoutLoad(named);
        assert_eq!((hidden.name(), hidden.predict(&f)), ("x", -1.0));
    }
}
