//! Container engines: how a node turns an image tarball into running tasks.
//!
//! Two engines sit behind one trait, [`Engine`]:
//!
//! * [`DockerEngine`] talks to the Docker daemon through bollard: it builds a build-context tar
//!   or loads a `docker save` tar into an image named after the artifact's digest, then runs each
//!   task as a container on the host network with its own port, environment, labels
//!   (`brume.instance`, `brume.service`, `brume.task`, `brume.replica`, `brume.epoch`), resource
//!   limits and restart policy.
//! * [`ProcessEngine`] is the embedded default when no Docker daemon answers: it lays a `FROM
//!   scratch` build context (or a `docker save` tar) out as a directory tree and runs each task as
//!   a child process in its own copy of that tree, with a supervisor for the restart policy. It
//!   isolates nothing but the tasks CRIU may move, which run in PID and mount namespaces of
//!   their own with their copy as root (see [`criu_task`]); it exists so brume runs on a laptop
//!   with nothing installed.
//!
//! [`detect::pick`] chooses one from the node's `engine` setting (`docker`, `process` or `auto`),
//! and [`AnyEngine`] holds whichever was chosen so the daemon can keep one value.
//!
//! The flow of a deploy through an engine:
//!
//! ```text
//!  ImageInput{kind, tar, digest} ──prepare──▶ ImageRef "brume/<16 hex>:latest"  (skipped if present)
//!  LaunchSpec{name, image, env, restore, port, limits, restart} ──start──▶ port free? ─ create
//!        ─ the state to start from written to a file (BRUME_RESTORE_FILE) ─ start
//!        ─ wait until it accepts on its port or exits (then: removed, StartFailed + last log lines)
//!  state / logs / stop(grace) / remove (idempotent) / list (brume's own tasks only)
//! ```
//!
//! Both engines refuse what they cannot do with an [`EngineError`] that says what to do, and a
//! failed `start` leaves nothing behind.

mod confine;
pub mod criu_task;
pub mod detect;
pub mod docker;
pub mod dockerfile;
mod error;
pub mod logcap;
pub mod ports;
pub mod process;
pub mod ready;
mod rootfs;
pub mod runc_task;
pub mod tarball;
pub mod taskroot;
mod types;

use std::future::Future;
use std::time::Duration;

pub use detect::{pick, EngineChoice};
pub use docker::DockerEngine;
pub use docker::{DROPPED_CAPS, NO_NEW_PRIVILEGES, PIDS_LIMIT};
pub use error::EngineError;
pub use ports::free_task_port;
pub use process::ProcessEngine;
pub use types::{
    check_name, ImageInput, ImageKind, ImageRef, LaunchSpec, RestartPolicy, TaskState, TaskStatus,
    TaskSummary, DEFAULT_USER, RESTORE_FILE_ENV,
};

/// The label every brume container carries; its value is the instance name.
pub const INSTANCE_LABEL: &str = "brume.instance";

/// What a node needs from a container engine.
pub trait Engine: Send + Sync {
    /// `"docker"` or `"process"`, for logs and status.
    fn kind(&self) -> &'static str;

    /// Builds or loads the image, or finds it already there (same digest, same name).
    fn prepare(
        &self,
        image: &ImageInput,
    ) -> impl Future<Output = Result<ImageRef, EngineError>> + Send;

    /// Starts one task instance and waits (bounded) until it accepts on its port. A task that
    /// exits first is a [`EngineError::StartFailed`] with its last log lines, and is removed.
    fn start(&self, spec: &LaunchSpec) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// The task's state; [`TaskState::Missing`] when there is no such task.
    fn state(&self, name: &str) -> impl Future<Output = Result<TaskStatus, EngineError>> + Send;

    /// The last `tail_lines` lines of the task's stdout and stderr.
    fn logs(
        &self,
        name: &str,
        tail_lines: usize,
    ) -> impl Future<Output = Result<String, EngineError>> + Send;

    /// SIGTERM, then SIGKILL after `grace`. The task stays (exited) until removed; its restart
    /// policy does not bring it back.
    fn stop(
        &self,
        name: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Kills the task if it runs and forgets it. Removing a missing task is fine.
    fn remove(&self, name: &str) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Brume's own tasks on this host (never anything brume did not create).
    fn list(&self) -> impl Future<Output = Result<Vec<TaskSummary>, EngineError>> + Send;
}

/// Whichever engine the node runs, chosen at run time.
#[derive(Clone)]
pub enum AnyEngine {
    Docker(DockerEngine),
    Process(ProcessEngine),
}

impl AnyEngine {
    /// `"docker"` or `"process"` (also [`Engine::kind`], here without importing the trait).
    pub fn kind(&self) -> &'static str {
        Engine::kind(self)
    }

    /// Caps each task's log at `bytes`, one older file kept ([`logcap`]); before any task
    /// starts.
    pub fn with_log_max_bytes(self, bytes: u64) -> Self {
        match self {
            AnyEngine::Docker(e) => AnyEngine::Docker(e.with_log_max_bytes(bytes)),
            AnyEngine::Process(e) => AnyEngine::Process(e.with_log_max_bytes(bytes)),
        }
    }
}

impl std::fmt::Debug for AnyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AnyEngine({})", self.kind())
    }
}

impl Engine for AnyEngine {
    fn kind(&self) -> &'static str {
        match self {
            AnyEngine::Docker(e) => e.kind(),
            AnyEngine::Process(e) => e.kind(),
        }
    }

    async fn prepare(&self, image: &ImageInput) -> Result<ImageRef, EngineError> {
        match self {
            AnyEngine::Docker(e) => e.prepare(image).await,
            AnyEngine::Process(e) => e.prepare(image).await,
        }
    }

    async fn start(&self, spec: &LaunchSpec) -> Result<(), EngineError> {
        match self {
            AnyEngine::Docker(e) => e.start(spec).await,
            AnyEngine::Process(e) => e.start(spec).await,
        }
    }

    async fn state(&self, name: &str) -> Result<TaskStatus, EngineError> {
        match self {
            AnyEngine::Docker(e) => e.state(name).await,
            AnyEngine::Process(e) => e.state(name).await,
        }
    }

    async fn logs(&self, name: &str, tail_lines: usize) -> Result<String, EngineError> {
        match self {
            AnyEngine::Docker(e) => e.logs(name, tail_lines).await,
            AnyEngine::Process(e) => e.logs(name, tail_lines).await,
        }
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), EngineError> {
        match self {
            AnyEngine::Docker(e) => e.stop(name, grace).await,
            AnyEngine::Process(e) => e.stop(name, grace).await,
        }
    }

    async fn remove(&self, name: &str) -> Result<(), EngineError> {
        match self {
            AnyEngine::Docker(e) => e.remove(name).await,
            AnyEngine::Process(e) => e.remove(name).await,
        }
    }

    async fn list(&self) -> Result<Vec<TaskSummary>, EngineError> {
        match self {
            AnyEngine::Docker(e) => e.list().await,
            AnyEngine::Process(e) => e.list().await,
        }
    }
}
