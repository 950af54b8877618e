//! `trainer`: one FedAvg participant. It holds a private share of the digits (cut from
//! `DATA_SEED` among `TRAINERS` trainers with Dirichlet(`ALPHA`) label skew; its replica index
//! `BRUME_REPLICA` picks which share) and listens on 127.0.0.1:$PORT for `TRAIN <round> <model>`
//! lines; for each it runs `EPOCHS_PER_ROUND` epochs of minibatch SGD starting from the given
//! model and answers `UPDATE <round> <samples> <loss> <model>`.
//!
//! It keeps no state between rounds: the answer depends only on the request, the seed and the
//! replica index, so asking twice (a retry, or a restored aggregator) gives the same update.

use std::time::Instant;

use brume_fedavg::data::{self, Dataset, DEFAULT_ALPHA};
use brume_fedavg::learn::{self, DEFAULT_TRAINERS};
use brume_fedavg::model::Sgd;
use brume_fedavg::service::{self, var};
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
    let counts: Vec<String> = trainer
        .data
        .class_counts()
        .iter()
        .enumerate()
        .map(|(c, n)| format!("{c}:{n}"))
        .collect();
    println!(
        "trainer {}: {} samples, labels {}, {} epochs per round, learning rate {}, batch {}",
        trainer.replica,
        trainer.data.len(),
        counts.join(","),
        trainer.sgd.epochs,
        trainer.sgd.learning_rate,
        trainer.sgd.batch
    );
    service::serve_lines(listener, move |line| answer(&trainer, line));
}

fn setup() -> Result<Trainer, String> {
    let e = |e: service::StartError| e.to_string();
    let replica = var("BRUME_REPLICA", 0u64, "the replica index, 0 or more").map_err(e)?;
    let seed = var("DATA_SEED", 0u64, "an unsigned 64-bit integer").map_err(e)?;
    let trainers = var(
        "TRAINERS",
        DEFAULT_TRAINERS,
        "the number of trainers the data is cut among, 1 or more",
    )
    .map_err(e)?;
    let alpha = var(
        "ALPHA",
        DEFAULT_ALPHA,
        "a Dirichlet concentration above 0, like 0.5",
    )
    .map_err(e)?;
    if trainers == 0 {
        return Err("TRAINERS=0: the data must be cut among 1 or more trainers".into());
    }
    if !(alpha > 0.0 && alpha.is_finite()) {
        return Err(format!("ALPHA={alpha}: use a positive number like 0.5"));
    }
    let sgd = learn::sgd_from_env().map_err(e)?;
    let data = data::for_trainer(seed, replica, trainers, alpha).map_err(|e| e.to_string())?;
    Ok(Trainer {
        replica,
        seed,
        data,
        sgd,
    })
}

fn answer(t: &Trainer, line: &str) -> String {
    let request = match Train::parse(line) {
        Ok(r) => r,
        Err(e) => return format!("ERR {e} (expected TRAIN <round> <model>)"),
    };
    let start = Instant::now();
    let model = learn::local_update(
        &t.data,
        &request.model,
        t.sgd,
        t.seed,
        t.replica,
        request.round,
    );
    let loss = model.score(&t.data).loss;
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
