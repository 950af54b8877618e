//! Federated averaging (FedAvg) as two plain programs, `trainer` and `aggregator`, that brume
//! deploys like any other workload: they know nothing of brume beyond environment variables and
//! an application-level checkpoint endpoint on the aggregator.
//!
//! What they learn: the UCI handwritten digits ([`data`], embedded in the binaries), with
//! softmax regression ([`model`]). A stratified fifth of the digits is the aggregator's test
//! set; the rest is split across the trainers with label skew (Dirichlet alpha 0.5, seeded).
//! Every round the aggregator sends the global model to every trainer in one text line
//! ([`wire`]); each trainer runs a few epochs of minibatch SGD on its own share and answers with
//! its updated model, its sample count and its local loss; the aggregator averages the answers
//! weighted by sample count ([`model::fedavg`]) and scores the result on the test set. At start
//! it also trains the same model on the pooled training data ([`learn::centralised`]), the
//! baseline the federated accuracy is compared with, and it can draw both curves ([`plot`]).
//! Its whole state fits one line ([`wire::State`]), which is what `CHECKPOINT` returns and
//! `RESTORE` or `BRUME_RESTORE_FILE` adopt.
//!
//! The crate is std-only on purpose: the binaries are linked statically for `FROM scratch`
//! images, and the randomness is a hand-written splitmix64 ([`rng`]) so every run is repeatable.

pub mod data;
pub mod learn;
pub mod model;
pub mod plot;
pub mod rng;
pub mod service;
pub mod wire;
