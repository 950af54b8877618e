//! The values that cross the engine boundary: what to run ([`ImageInput`] in, [`ImageRef`] out of
//! `prepare`), how to run one task instance ([`LaunchSpec`]), and what the engine reports back
//! ([`TaskStatus`], [`TaskSummary`]). Both engines read and write exactly these, so the daemon
//! never needs to know which one it holds.
//!
//! Images are named after their content: `brume/<first 16 hex of the artifact digest>:latest`.
//! The same artifact deployed twice names the same image, so the second `prepare` finds it and
//! skips the build or load.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::EngineError;

/// What kind of tarball an image arrives as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// A build context: a tar whose root holds a `Dockerfile` and the files it copies.
    BuildContext,
    /// The output of `docker save`: `manifest.json`, the image config and its layer tars.
    DockerSave,
}

/// An image as the artifact layer hands it to an engine: a tarball on disk and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInput {
    pub kind: ImageKind,
    /// The tarball on this host's disk.
    pub tar: PathBuf,
    /// The content digest of the tarball, hex (an optional `algo:` prefix is ignored). Names the
    /// image, so it must really be the digest of the content: two contents, two digests.
    pub digest: String,
}

impl ImageInput {
    /// The name the image gets: `brume/<first 16 hex of the digest>:latest`.
    pub fn image_ref(&self) -> Result<ImageRef, EngineError> {
        ImageRef::from_digest(&self.digest)
    }
}

/// An image an engine can start tasks from, e.g. `brume/0123456789abcdef:latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImageRef(pub String);

impl ImageRef {
    /// The image name for a content digest (`blake3:ab12...` or `ab12...`, at least 16 hex).
    pub fn from_digest(digest: &str) -> Result<Self, EngineError> {
        let hex = digest.rsplit(':').next().unwrap_or(digest);
        let short: String = hex.chars().take(16).collect();
        if short.len() < 16 || !short.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(EngineError::BadDigest {
                digest: digest.to_string(),
            });
        }
        Ok(Self(format!("brume/{}:latest", short.to_ascii_lowercase())))
    }

    /// The 16 hex characters of a brume image name, `None` for any other name.
    pub fn brume_id(&self) -> Option<&str> {
        let id = self.0.strip_prefix("brume/")?.strip_suffix(":latest")?;
        (id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit())).then_some(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an engine does when a task exits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Leave it exited.
    #[default]
    Never,
    /// Restart it when it exits with a non-zero code (or is killed), at most `max_restarts`
    /// times, with a doubling back-off from 100 ms.
    OnFailure { max_restarts: u32 },
}

/// One task instance to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Unique on this host: the container name or the process engine's task directory name.
    /// Letters, digits, `_`, `.` and `-`, starting with a letter or digit, at most 128 characters.
    pub name: String,
    pub service: String,
    pub task: String,
    pub replica: u32,
    pub epoch: u64,
    pub image: ImageRef,
    /// Extra environment (e.g. the `BRUME_CALL_*` variables). The standard variables `PORT`,
    /// `BRUME_SERVICE`, `BRUME_TASK`, `BRUME_REPLICA` and `BRUME_EPOCH` are set from the fields
    /// above and win over entries of the same name here.
    pub env: BTreeMap<String, String>,
    /// The task's port on this host (tasks share the host network); it must be free.
    pub port: u16,
    /// CPU limit in thousandths of a core; 0 means no limit.
    pub cpu_millis: u32,
    /// Memory limit in MiB; 0 means no limit.
    pub memory_mb: u32,
    pub restart: RestartPolicy,
    /// The process engine's directory for this task (its file system copy and log). `None`: a
    /// directory named after the task under the engine's root. The Docker engine ignores it.
    pub workdir: Option<PathBuf>,
    /// Who the task runs as in its container (the manifest's `user`: `root`, a name the image
    /// knows, or `uid[:gid]`). `None`: [`DEFAULT_USER`], an unprivileged uid, so a task needs
    /// to ask to run as root. The process engine runs tasks as the node's own user and ignores it.
    pub user: Option<String>,
    /// The state the task starts from (the application checkpoint line of the instance it
    /// replaces), or `None`: it starts fresh. The engine writes it to a file the task can read
    /// and names that file in [`RESTORE_FILE_ENV`]. It never travels in the environment: Linux
    /// caps one environment string at 128 KiB, and `exec` fails past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
}

/// The variable naming the file that holds a task's state to start from (see
/// [`LaunchSpec::restore`]); unset when the task starts fresh.
pub const RESTORE_FILE_ENV: &str = "BRUME_RESTORE_FILE";

/// Who a Docker task runs as unless its manifest says otherwise: `nobody`, by number, so that
/// images without an `/etc/passwd` (a `FROM scratch` static binary) run too.
pub const DEFAULT_USER: &str = "65534:65534";

impl LaunchSpec {
    /// The environment the task sees: `env` plus the standard variables of the house convention.
    pub fn task_env(&self) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        env.insert("PORT".into(), self.port.to_string());
        env.insert("BRUME_SERVICE".into(), self.service.clone());
        env.insert("BRUME_TASK".into(), self.task.clone());
        env.insert("BRUME_REPLICA".into(), self.replica.to_string());
        env.insert("BRUME_EPOCH".into(), self.epoch.to_string());
        env
    }

    /// Refuses a spec no engine could run faithfully, before anything is created.
    pub fn validate(&self) -> Result<(), EngineError> {
        check_name(&self.name)?;
        if self.port == 0 {
            return Err(EngineError::BadSpec {
                name: self.name.clone(),
                why: "port 0 is not a port a task can be reached on; give the task a free port"
                    .into(),
            });
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(EngineError::BadSpec {
                    name: self.name.clone(),
                    why: format!("environment variable name {key:?} is empty or has '=' or NUL"),
                });
            }
        }
        if self.env.values().any(|v| v.contains('\0')) {
            return Err(EngineError::BadSpec {
                name: self.name.clone(),
                why: "an environment value contains a NUL byte".into(),
            });
        }
        Ok(())
    }
}

/// Refuses an instance name Docker would refuse or that could escape a directory.
pub fn check_name(name: &str) -> Result<(), EngineError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 128 {
        Some("it is longer than 128 characters")
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("it must start with a letter or a digit")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Some("only letters, digits, '_', '.' and '-' are allowed")
    } else {
        None
    };
    match why {
        Some(why) => Err(EngineError::BadName {
            name: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Created, not started yet.
    Created,
    Running,
    /// Exited and about to be started again by its restart policy.
    Restarting,
    /// Exited for good (until started again): `code` is its exit status, 128+N when killed by
    /// signal N.
    Exited {
        code: i64,
    },
    /// No such task on this host.
    Missing,
}

impl TaskState {
    /// Running, or about to run again.
    pub fn is_alive(&self) -> bool {
        matches!(self, TaskState::Running | TaskState::Restarting)
    }
}

/// A task's state, how often it was restarted, and its process id on this host while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    pub restarts: u32,
    pub pid: Option<u32>,
}

impl TaskStatus {
    pub const MISSING: TaskStatus = TaskStatus {
        state: TaskState::Missing,
        restarts: 0,
        pid: None,
    };
}

/// One of brume's tasks as [`Engine::list`](super::Engine::list) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub name: String,
    pub service: String,
    pub task: String,
    pub replica: u32,
    pub epoch: u64,
    pub port: u16,
    pub state: TaskState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_come_from_the_digest() {
        let r = ImageRef::from_digest("blake3:0123456789ABCDEFffff").unwrap();
        assert_eq!(r.as_str(), "brume/0123456789abcdef:latest");
        assert_eq!(r.brume_id(), Some("0123456789abcdef"));
        assert!(ImageRef::from_digest("abc").is_err());
        assert!(ImageRef::from_digest("0123456789abcdeg00").is_err());
        assert_eq!(ImageRef("alpine:3".into()).brume_id(), None);
    }

    #[test]
    fn names_that_docker_or_a_path_would_refuse_are_refused() {
        assert!(check_name("brume-svc-a-0-e1").is_ok());
        for bad in ["", "-x", "../x", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn standard_variables_win_over_the_extra_env() {
        let spec = LaunchSpec {
            user: None,
            name: "n".into(),
            service: "s".into(),
            task: "t".into(),
            replica: 2,
            epoch: 7,
            image: ImageRef("brume/0123456789abcdef:latest".into()),
            env: [("PORT".to_string(), "1".to_string())].into(),
            port: 4000,
            cpu_millis: 0,
            memory_mb: 0,
            restart: RestartPolicy::Never,
            workdir: None,
            restore: None,
        };
        let env = spec.task_env();
        assert_eq!(env["PORT"], "4000");
        assert_eq!(env["BRUME_REPLICA"], "2");
        assert_eq!(env["BRUME_EPOCH"], "7");
    }
}
