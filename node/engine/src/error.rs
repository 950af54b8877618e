//! Every way an engine refuses or fails, each saying what was wrong and what to do. The daemon
//! shows these to the operator as they are, so each message must stand on its own.

use std::path::PathBuf;

/// An engine's refusal or failure.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "the Docker daemon does not answer at {endpoint}: {reason}; start Docker, point \
         DOCKER_HOST at it, or set engine = \"process\" to run tasks as plain processes"
    )]
    DockerUnreachable { endpoint: String, reason: String },

    #[error(
        "image digest {digest:?} is not a hex content digest of at least 16 characters; pass the \
         artifact's digest (e.g. blake3:<hex>)"
    )]
    BadDigest { digest: String },

    #[error(
        "task name {name:?} is not valid: {why}; use letters, digits, '_', '.' and '-' (at most \
         128)"
    )]
    BadName { name: String, why: &'static str },

    #[error("task {name} cannot be started as asked: {why}")]
    BadSpec { name: String, why: String },

    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the build context {path} has no Dockerfile at its root; add one (e.g. FROM scratch, \
         COPY app /app, ENTRYPOINT [\"/app\"]) and pack the context again"
    )]
    MissingDockerfile { path: PathBuf },

    #[error("building image {image} failed: {message}; fix the Dockerfile or the build context and deploy again")]
    BuildFailed { image: String, message: String },

    #[error(
        "loading the image tarball {path} failed: {message}; it must be the unmodified output of \
         `docker save`"
    )]
    LoadFailed { path: PathBuf, message: String },

    #[error(
        "port {port} is in use on this host, so the task could not listen on it; give the task \
         another port (the node picks a free one for each task) or stop what listens on {port}"
    )]
    PortInUse { port: u16 },

    #[error("a task named {name} already exists on this host; remove it first or pick another instance name")]
    AlreadyExists { name: String },

    #[error("image {image} is not on this host; prepare it (build or load) before starting tasks from it")]
    ImageMissing { image: String },

    #[error("task {name} failed to start: {reason}{}", show_logs(.last_logs))]
    StartFailed {
        name: String,
        reason: String,
        last_logs: String,
    },

    #[error("no task named {name} on this host")]
    NotFound { name: String },

    #[error("the container {name} was not created by brume (it has no brume.instance label); brume leaves it alone")]
    NotOurs { name: String },

    #[error(
        "the process engine cannot run this image: {why}. It runs `FROM scratch` build contexts \
         (COPY/ADD of local files, ENV, WORKDIR, exec-form ENTRYPOINT/CMD) and `docker save` \
         tarballs of static programs; install Docker to run anything else"
    )]
    Unsupported { why: String },

    #[error("Dockerfile line {line}: {message}")]
    Dockerfile { line: usize, message: String },

    #[error("docker {op} failed: {source}")]
    Docker {
        op: &'static str,
        #[source]
        source: bollard::errors::Error,
    },

    #[error("{why}")]
    BadSetting { why: String },

    #[error("{what} timed out after {secs} s; the host may be overloaded, try again")]
    Timeout { what: String, secs: u64 },
}

fn show_logs(logs: &str) -> String {
    let logs = logs.trim_end();
    if logs.is_empty() {
        "; it wrote nothing to its log".to_string()
    } else {
        format!("; its last log lines:\n{logs}")
    }
}

impl From<std::convert::Infallible> for EngineError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl EngineError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
