//! Why a graph, a network or a placement was refused. Every message says what was wrong and what
//! to change.

use thiserror::Error;

/// A call graph that placement cannot work on.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum GraphError {
    #[error("task `{task}` is not reachable from the root `{root}`: add a call that leads to it")]
    Unreachable { task: String, root: String },
    #[error("the root task `{task}` has several replicas: the root runs once, on the initiator")]
    ReplicatedRoot { task: String },
    #[error("task `{task}` is declared twice: task names must be unique")]
    DuplicateTask { task: String },
    #[error("task `{task}` has 0 replicas: use at least 1")]
    NoReplicas { task: String },
    #[error("the call `{from}` -> `{to}` has a negative or non-finite latency bound or traffic")]
    BadCall { from: String, to: String },
}

/// A network that placement cannot work on.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum NetworkError {
    #[error("host `{0}` is declared twice: host ids must be unique")]
    DuplicateHost(String),
    #[error("the initiator `{0}` is not one of the network's hosts")]
    UnknownInitiator(String),
    #[error("a link names host `{0}`, which is not declared")]
    UnknownHost(String),
    #[error("host `{host}`: {what}")]
    BadHost { host: String, what: String },
    #[error("the network has no hosts")]
    Empty,
}

/// Why no plan came out.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PlacementError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("task `{task}` could not be placed: {why}")]
    NoHost { task: String, why: String },
}
