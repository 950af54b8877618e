//! `trainer`: one FedAvg participant. It holds a private synthetic dataset (drawn from
//! `DATA_SEED` and its replica index `BRUME_REPLICA`) and listens on 127.0.0.1:$PORT for
//! `TRAIN <round> <model>` lines; for each it runs `EPOCHS_PER_ROUND` epochs of minibatch SGD
//! starting from the given model and answers `UPDATE <round> <samples> <loss> <model>`.
//!
//! It keeps no state between rounds: the answer depends only on the request, the seed and the
//! replica index, so asking twice (a retry, or a restored aggregator) gives the same update.

use std::time::Instant;

use brume_fedavg::data::{self, Dataset};
use brume_fedavg::model::Sgd;
use brume_fedavg::rng::SplitMix64;
use brume_fedavg::service::{self, var, StartError};
use brume_fedavg::wire::{Train, Update};

struct Trainer {
    replica: u64,
    seed: u64,
    data: Dataset,
    sgd: Sgd,
}

fn main() {
    service::exit_on_sigterm();
    let trainer = setup().unwrap_or_else(|e| service::fail("trainer cannot start", &e));
    let listener = service::listen().unwrap_or_else(|e| service::fail("trainer cannot start", &e));
    println!(
        "trainer {}: {} samples, {} epochs per round, learning rate {}, batch {}",
        trainer.replica,
        trainer.data.len(),
        trainer.sgd.epochs,
        trainer.sgd.learning_rate,
        trainer.sgd.batch
    );
    service::serve_lines(listener, move |line| answer(&trainer, line));
}

fn setup() -> Result<Trainer, StartError> {
    let replica = var("BRUME_REPLICA", 0u64, "the replica index, 0 or more")?;
    let seed = var("DATA_SEED", 0u64, "an unsigned 64-bit integer")?;
    let samples = var("SAMPLES", 2000usize, "a number of samples")?;
    let sgd = Sgd {
        epochs: var("EPOCHS_PER_ROUND", 1u32, "a number of epochs, 1 or more")?,
        learning_rate: var(
            "LEARNING_RATE",
            0.01f64,
            "a small positive number like 0.01",
        )?,
        batch: var("BATCH", 32usize, "a minibatch size, 1 or more")?,
    };
    Ok(Trainer {
        replica,
        seed,
        data: data::for_trainer(seed, replica, samples),
        sgd,
    })
}

fn answer(t: &Trainer, line: &str) -> String {
    let request = match Train::parse(line) {
        Ok(r) => r,
        Err(e) => return format!("ERR {e} (expected TRAIN <round> <model>)"),
    };
    let start = Instant::now();
    let mut model = request.model;
    // Bit 62 keeps these streams apart from the data's (small replica indices and u64::MAX-ish).
    let stream = (t.replica << 32) ^ request.round ^ (1 << 62);
    model.train(&t.data, t.sgd, &mut SplitMix64::stream(t.seed, stream));
    let loss = model.loss(&t.data);
    if !loss.is_finite() || model.0.iter().any(|w| !w.is_finite()) {
        return "ERR training diverged: lower LEARNING_RATE".to_string();
    }
    println!(
        "round={} samples={} loss={loss:.6} ms={}",
        request.round,
        t.data.len(),
        start.elapsed().as_millis()
    );
    Update {
        round: request.round,
        samples: t.data.len() as u64,
        loss,
        model,
    }
    .to_string()
}
