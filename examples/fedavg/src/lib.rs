//! Federated averaging (FedAvg) as two plain programs, `trainer` and `aggregator`, that brume
//! deploys like any other workload: they know nothing of brume beyond environment variables and
//! an application-level checkpoint endpoint on the aggregator.
//!
//! How data flows: each trainer holds a private synthetic dataset ([`data`]) drawn from one
//! shared linear truth, shifted per trainer so the data are not IID. Every round the aggregator
//! sends the global [`model::Model`] to every trainer in one text line ([`wire`]); each trainer
//! runs a few epochs of minibatch SGD on its own data and answers with its updated model, its
//! sample count and its local loss; the aggregator averages the answers weighted by sample count
//! ([`model::fedavg`]) and scores the result on a held-out set. Its whole state fits one line
//! ([`wire::State`]), which is what `CHECKPOINT` returns and `RESTORE` or `BRUME_RESTORE` adopt.
//!
//! The crate is std-only on purpose: the binaries are linked statically for `FROM scratch`
//! images, and the randomness is a hand-written splitmix64 ([`rng`]) so every run is repeatable.

pub mod data;
pub mod model;
pub mod rng;
pub mod service;
pub mod wire;
