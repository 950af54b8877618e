//! The training procedures, shared by the programs, the tests and the `tune` example so that all
//! of them compute exactly the same thing: a trainer's local update for one round, the
//! centralised baseline on the pooled data, and a whole federated run in one process (what the
//! aggregator and the trainers do over TCP, without the TCP).

use crate::data::Dataset;
use crate::model::{fedavg, Model, Score, Sgd};
use crate::rng::SplitMix64;

/// Bit 62 keeps the minibatch streams apart from the data's (`u64::MAX`-ish) streams.
const LOCAL_STREAM: u64 = 1 << 62;
/// The centralised baseline's minibatch order.
const CENTRAL_STREAM: u64 = 1 << 61;

/// Trainer `replica`'s answer to `TRAIN round model`: the model after `sgd` on its data, with
/// a minibatch order drawn from the seed, the replica and the round only, so asking twice gives
/// the same bits.
pub fn local_update(data: &Dataset, model: &Model, sgd: Sgd, seed: u64, replica: u64, round: u64) -> Model {
    let mut m = model.clone();
    let stream = (replica << 32) ^ round ^ LOCAL_STREAM;
    m.train(data, sgd, &mut SplitMix64::stream(seed, stream));
    m
}

/// The centralised baseline: the same model trained from zero on the pooled training data,
/// `epochs` passes of the same SGD. Returns the test score after every epoch and the model.
pub fn centralised(train: &Dataset, test: &Dataset, sgd: Sgd, epochs: u32, seed: u64) -> (Vec<Score>, Model) {
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
pub fn federated(shares: &[Dataset], test: &Dataset, sgd: Sgd, rounds: u64, seed: u64) -> (Vec<Score>, Model) {
    let mut global = Model::zeros();
    let mut curve = Vec::new();
    for round in 1..=rounds {
        let updates: Vec<(u64, Model)> = shares
            .iter()
            .enumerate()
            .map(|(i, d)| (d.len() as u64, local_update(d, &global, sgd, seed, i as u64, round)))
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
