//! How the default learning rate and local epochs were chosen, without looking at the test set:
//! the training pool is split again (stratified, seeded apart from the test split) into a
//! tuning set and a validation set; the tuning set is cut across 4 trainers with the same label
//! skew, and every setting runs 10 federated rounds and the centralised baseline with the same
//! number of passes over the data, both scored on the validation set.
//!
//! `cargo run --release -p brume-fedavg --example tune`

use brume_fedavg::data::{self, DEFAULT_ALPHA};
use brume_fedavg::learn;
use brume_fedavg::model::Sgd;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seed = 0;
    let pool = data::cut(seed)?.train;
    let v = data::split(&pool, seed ^ 0x7475_6e65); // "tune"
    let (tune, val) = (pool.subset(&v.train), pool.subset(&v.test));
    let shares: Vec<_> = data::partition(
        &tune,
        &(0..tune.len()).collect::<Vec<_>>(),
        seed,
        4,
        DEFAULT_ALPHA,
    )
    .iter()
    .map(|s| tune.subset(s))
    .collect();
    println!(
        "tuning on {} samples, validating on {}; shares {:?}",
        tune.len(),
        val.len(),
        shares.iter().map(|s| s.len()).collect::<Vec<_>>()
    );
    for epochs in [1, 2, 5] {
        for lr in [0.1, 0.3, 1.0] {
            let sgd = Sgd {
                epochs,
                learning_rate: lr,
                batch: 32,
            };
            let (fed, _) = learn::federated(&shares, &val, sgd, 10, seed);
            let (central, _) = learn::centralised(&tune, &val, sgd, 10 * epochs, seed);
            let f: Vec<String> = fed.iter().map(|s| format!("{:.3}", s.accuracy)).collect();
            let c = central.last().map_or(0.0, |s| s.accuracy);
            println!(
                "epochs={epochs} lr={lr}: central={c:.3} fed_final={:.3} gap={:+.3} per-round [{}]",
                fed[9].accuracy,
                fed[9].accuracy - c,
                f.join(" ")
            );
        }
    }
    Ok(())
}
