//! Checkpoint-duration prediction (seed 000) and the planner's downtime estimates.
//!
//! Why: a node must know, before it acts, how long a dump will take: to start a move in time
//! before a deadline, and to freeze a task only when its downtime fits. A late estimate costs far
//! more than an early one (the dump does not finish in time and everything since the last
//! checkpoint is lost), so seed 000 fits its linear model with a cost that punishes late
//! predictions (PB-MLR). This module holds that model, the ones it is compared with, and the
//! pure replay that measures them on a trace of real dumps (`brume bench predictor`;
//! docs/predictor.md).
//!
//! One file per concept:
//! - [`features`]: what a node reads about a task before a dump, and the scaled feature vector
//!   every linear model shares (with the prior from [`PredictorConfig`]);
//! - [`load`]: the machine's load a node reads before a dump (load average, runnable threads,
//!   CPUs, busy share, CPU pressure), with the parsers of its `/proc` texts;
//! - [`model`]: the small trait the models share (`predict`, `observe`);
//! - [`pbmlr`]: seed 000's penalty-based multiple linear regression, refit online;
//! - [`selection`]: seed 000's feature selection (VIF, then p-values), which PB-MLR redoes
//!   before every refit;
//! - [`mlr`]: standard least-squares MLR (ridge, same prior), online;
//! - [`calibrated`]: a conformal margin from a model's own past errors (ours, not the seed's),
//!   reported beside PB-MLR;
//! - [`margin`]: the factor over a model's past predictions that would have lost the least
//!   computation (ours), reported beside PB-MLR;
//! - [`bayes`]: the Bayesian [`OnlineLinear`] (mean, and the upper bound the planner uses);
//! - [`static_best`]: the best constant in hindsight (offline reference);
//! - [`trace`]: the checkpoint trace CSV (docs: /work/notes/trace-schema.md, testnet/bench);
//! - [`evaluate`]: replaying a trace in order, seed 000's table, learning curves, cross-validated R²;
//! - [`store`]: a node's model states in data_dir, written atomically;
//! - [`choice`]: which model a node uses (the least lost computation on its own dumps so far);
//! - [`procfs`]: what a node reads about a task's processes and the machine before a dump;
//! - [`estimates`]: [`Predictor`], the dump and downtime estimates the [`crate::planner`] asks.
//!
//! Everything here is pure (no clock, socket or process) except [`store`], which reads and writes
//! one file, and [`procfs`], which reads `/proc`.

pub mod bayes;
pub mod calibrated;
pub mod choice;
pub mod estimates;
pub mod evaluate;
pub mod features;
mod linalg;
pub mod load;
pub mod margin;
pub mod mlr;
pub mod model;
pub mod pbmlr;
pub mod procfs;
pub mod selection;
pub mod static_best;
pub mod store;
pub mod trace;

pub use bayes::{BayesModel, OnlineLinear, Prediction};
pub use estimates::{DowntimeForecast, DumpFeatures, Predictor, PredictorConfig};
pub use features::Features;
pub use model::Model;
