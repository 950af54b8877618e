//! The training procedures, shared by the programs, the tests and the `tune` example so that all
//! of them compute exactly the same thing: a trainer's local update for one round, the
//! centralised baseline on the pooled data, and a whole federated run in one process (what the
//! aggregator and the trainers do over TCP, without the TCP).

use crate::data::Dataset;
use crate::model::{fedavg, Model, Score, Sgd};
use crate::rng::SplitMix64;
use crate::service::{var, StartError};

/// Local training per round unless `EPOCHS_PER_ROUND`, `LEARNING_RATE` and `BATCH` say
/// otherwise; the centralised baseline uses the same step size and batch. Chosen on a
/// validation split of the training pool, never the test set (`examples/tune.rs`).
pub const DEFAULT_SGD: Sgd = Sgd {
    epochs: 5,
    learning_rate: 1.0,
    batch: 32,
};
/// Trainers the data is cut among unless `TRAINERS` says otherwise: the manifest's replicas.
pub const DEFAULT_TRAINERS: usize = 4;
/// Rounds unless `ROUNDS` says otherwise.
pub const DEFAULT_ROUNDS: u64 = 10;

/// `EPOCHS_PER_ROUND`, `LEARNING_RATE` and `BATCH`, read the same way by both programs.
pub fn sgd_from_env() -> Result<Sgd, StartError> {
    let sgd = Sgd {
        epochs: var(
            "EPOCHS_PER_ROUND",
            DEFAULT_SGD.epochs,
            "a number of epochs, 1 or more",
        )?,
        learning_rate: var(
            "LEARNING_RATE",
            DEFAULT_SGD.learning_rate,
            "a positive step size like 1.0",
        )?,
        batch: var("BATCH", DEFAULT_SGD.batch, "a minibatch size, 1 or more")?,
    };
    let bad = |name: &str, value: String, want| StartError::Env {
        name: name.to_string(),
        value,
        want,
    };
    if sgd.epochs == 0 {
        return Err(bad(
            "EPOCHS_PER_ROUND",
            "0".into(),
            "a number of epochs, 1 or more",
        ));
    }
    if !(sgd.learning_rate > 0.0 && sgd.learning_rate.is_finite()) {
        let v = sgd.learning_rate.to_string();
        return Err(bad("LEARNING_RATE", v, "a positive step size like 1.0"));
    }
    if sgd.batch == 0 {
        return Err(bad("BATCH", "0".into(), "a minibatch size, 1 or more"));
    }
    Ok(sgd)
}

/// Bit 62 keeps the minibatch streams apart from the data's (`u64::MAX`-ish) streams.
const LOCAL_STREAM: u64 = 1 << 62;
/// The centralised baseline's minibatch order.
const CENTRAL_STREAM: u64 = 1 << 61;

/// Trainer `replica`'s answer to `TRAIN round model`: the model after `sgd` on its data, with
/// a minibatch order drawn from the seed, the replica and the round only, so asking twice gives
/// the same bits.
pub fn local_update(
    data: &Dataset,
    model: &Model,
    sgd: Sgd,
    seed: u64,
    replica: u64,
    round: u64,
) -> Model {
    let mut m = model.clone();
    let stream = (replica << 32) ^ round ^ LOCAL_STREAM;
    m.train(data, sgd, &mut SplitMix64::stream(seed, stream));
    m
}

/// The centralised baseline: the same model trained from zero on the pooled training data,
/// `epochs` passes of the same SGD. Returns the test score after every epoch and the model.
pub fn centralised(
    train: &Dataset,
    test: &Dataset,
    sgd: Sgd,
    epochs: u32,
    seed: u64,
) -> (Vec<Score>, Model) {
    let mut m = Model::zeros();
    let mut rng = SplitMix64::stream(seed, CENTRAL_STREAM);
    let one = Sgd { epochs: 1, ..sgd };
    let curve = (0..epochs)
        .map(|_| {
            m.train(train, one, &mut rng);
            m.score(test)
        })
        .collect();
    (curve, m)
}

/// `rounds` rounds of FedAvg over `shares` (every trainer answering every round), from zero:
/// the test score after every round and the final model. Bit for bit what the aggregator
/// computes from the same trainers.
pub fn federated(
    shares: &[Dataset],
    test: &Dataset,
    sgd: Sgd,
    rounds: u64,
    seed: u64,
) -> (Vec<Score>, Model) {
    let mut global = Model::zeros();
    let mut curve = Vec::new();
    for round in 1..=rounds {
        let updates: Vec<(u64, Model)> = shares
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    d.len() as u64,
                    local_update(d, &global, sgd, seed, i as u64, round),
                )
            })
            .collect();
        let refs: Vec<(u64, &Model)> = updates.iter().map(|(n, m)| (*n, m)).collect();
        if let Some(avg) = fedavg(&refs) {
            global = avg;
        }
        curve.push(global.score(test));
    }
    (curve, global)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{self, DEFAULT_ALPHA};

    #[test]
    fn with_the_defaults_federated_is_within_two_points_of_centralised() {
        // The target, in process: 4 trainers with Dirichlet(0.5) label skew, 10 rounds,
        // against the same model trained on the pooled data with as many passes over it.
        let cut = data::cut(0).expect("data");
        let shares: Vec<Dataset> = (0..DEFAULT_TRAINERS as u64)
            .map(|r| data::for_trainer(0, r, DEFAULT_TRAINERS, DEFAULT_ALPHA).expect("data"))
            .collect();
        assert_eq!(
            shares.iter().map(Dataset::len).sum::<usize>(),
            cut.train.len()
        );
        let (fed, _) = federated(&shares, &cut.test, DEFAULT_SGD, DEFAULT_ROUNDS, 0);
        let epochs = DEFAULT_ROUNDS as u32 * DEFAULT_SGD.epochs;
        let (central, _) = centralised(&cut.train, &cut.test, DEFAULT_SGD, epochs, 0);
        let (f, c) = (fed[9].accuracy, central[central.len() - 1].accuracy);
        eprintln!("federated {f}, centralised {c}");
        assert!(c > 0.9, "the baseline learns: {c}");
        assert!(f > 0.85, "federated learns: {f}");
        assert!(
            f >= c - 0.02,
            "federated {f} is more than 2 points below centralised {c}"
        );
    }

    #[test]
    fn the_local_update_depends_on_the_request_only() {
        let d = data::for_trainer(0, 1, 4, DEFAULT_ALPHA).expect("data");
        let sgd = Sgd {
            epochs: 1,
            learning_rate: 0.5,
            batch: 32,
        };
        let a = local_update(&d, &Model::zeros(), sgd, 0, 1, 3);
        assert_eq!(a, local_update(&d, &Model::zeros(), sgd, 0, 1, 3));
        assert_ne!(a, local_update(&d, &Model::zeros(), sgd, 0, 1, 4));
        assert_ne!(a, Model::zeros());
    }
}
