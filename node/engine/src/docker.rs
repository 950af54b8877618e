//! The Docker engine: brume's tasks as containers of the local Docker daemon, through bollard.
//!
//! * `prepare`: a build context tar is streamed from disk as the body of `POST /build` (the tar
//!   bytes are the context) and tagged `brume/<16 hex>:latest`; a `docker save` tar is streamed
//!   to `POST /images/load` and its image id (from the tar's `manifest.json`) tagged with that
//!   name. An image already there is not built again. A context without a Dockerfile is refused
//!   before the daemon is asked; a failing build returns the daemon's message.
//! * `start`: the port must be free (containers share the host network, so a taken port would
//!   only show as the task failing to bind); then create (host network, env, labels, CPU and
//!   memory limits, restart policy), start, and wait until the task accepts on its port. Anything
//!   failing after the create removes the container, so a failed start leaves nothing.
//! * `state`, `logs`, `stop`, `remove`, `list` only ever touch containers carrying the
//!   `brume.instance` label: brume never stops or removes what it did not create.
//!
//! The client negotiates the API version at connect time: bollard speaks a newer API than the
//! daemons on edge devices (Docker 20.10 is API 1.41) and downgrades to the daemon's.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, HostConfigLogConfig,
    RestartPolicy as DockerRestart, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, ImportImageOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, StopContainerOptionsBuilder, TagImageOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bollard::{body_full, Docker};
use futures::StreamExt;
use tokio_util::io::ReaderStream;

use super::error::EngineError;
use super::ready::{ensure_port_free, tail_lines, wait_until_ready, Readiness};
use super::runc_task::RuncTask;
use super::tarball::{read_entry, untagged_copy};
use super::types::{
    ImageInput, ImageKind, ImageRef, LaunchSpec, RestartPolicy, TaskState, TaskStatus, TaskSummary,
    DEFAULT_USER, RESTORE_FILE_ENV,
};
use super::{Engine, INSTANCE_LABEL};

/// How long `start` waits for a task to accept on its port before reporting it started anyway.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines quoted in a start failure.
const FAILURE_LOG_LINES: usize = 20;
/// Docker refuses memory limits under 6 MiB.
const MIN_MEMORY_MB: u32 = 6;

/// The container user for a task's `user`: unset, [`DEFAULT_USER`]; `root` by number, so that
/// images without an `/etc/passwd` (`FROM scratch`) can run as root too.
fn docker_user(user: Option<&str>) -> String {
    match user {
        None => DEFAULT_USER.to_string(),
        Some("root") => "0:0".to_string(),
        Some(u) => u.to_string(),
    }
}

/// Capabilities every task container loses (on top of Docker's default set).
pub const DROPPED_CAPS: &[&str] = &["NET_RAW"];

/// The security option that stops a task from gaining privileges (setuid binaries, file caps).
pub const NO_NEW_PRIVILEGES: &str = "no-new-privileges";

/// Most processes (threads included) a task container may have.
pub const PIDS_LIMIT: i64 = 1024;

/// Docker's restart policy, as [`DockerEngine::set_restart`] takes it.
pub use bollard::models::RestartPolicy as DockerRestartPolicy;

/// The Docker engine. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    endpoint: String,
    ready_timeout: Duration,
    /// One lock per image name, so two deploys of one artifact build it once.
    image_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Instances restored by a live migration as runc containers Docker does not know, by
    /// instance name ([`super::runc_task`]); consulted before Docker.
    adopted: Arc<Mutex<HashMap<String, RuncTask>>>,
    /// Docker's `json-file` log of each container is capped at this many bytes, with one
    /// older file beside it (see [`super::logcap`]).
    log_max_bytes: u64,
}

/// Where the client connects: `DOCKER_HOST`, else the local socket.
pub fn endpoint() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

fn status_code(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn daemon_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        BollardError::DockerStreamError { error } => error.trim().to_string(),
        other => other.to_string(),
    }
}

fn docker_err(op: &'static str) -> impl FnOnce(BollardError) -> EngineError {
    move |source| EngineError::Docker { op, source }
}

impl DockerEngine {
    /// Connects to `DOCKER_HOST` (or the local socket) and negotiates the API version, within
    /// `within`.
    pub async fn connect_within(within: Duration) -> Result<Self, EngineError> {
        Self::connect_to(&endpoint(), within).await
    }

    /// Connects to `host` (`unix:///path`, `tcp://host:port`) and negotiates the API version,
    /// within `within`.
    pub async fn connect_to(host: &str, within: Duration) -> Result<Self, EngineError> {
        let endpoint = host.to_string();
        let unreachable = |reason: String| EngineError::DockerUnreachable {
            endpoint: endpoint.clone(),
            reason,
        };
        let docker = Docker::connect_with_host(host).map_err(|e| unreachable(e.to_string()))?;
        let docker = match tokio::time::timeout(within, docker.negotiate_version()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {} ms",
                    within.as_millis()
                )))
            }
        };
        tracing::debug!(%endpoint, api = %docker.client_version(), "connected to Docker");
        Ok(Self {
            docker,
            endpoint,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            image_locks: Arc::default(),
            adopted: Arc::default(),
            log_max_bytes: super::logcap::DEFAULT_LOG_MAX_BYTES,
        })
    }

    /// Connects with a 5 s bound (see [`DockerEngine::connect_within`]).
    pub async fn connect() -> Result<Self, EngineError> {
        Self::connect_within(Duration::from_secs(5)).await
    }

    /// How long `start` waits for the task to accept on its port.
    pub fn with_ready_timeout(mut self, bound: Duration) -> Self {
        self.ready_timeout = bound;
        self
    }

    /// Caps each container's log at `bytes`, with one older file (Docker's `json-file` driver,
    /// `max-size` and `max-file = 2`).
    pub fn with_log_max_bytes(mut self, bytes: u64) -> Self {
        self.log_max_bytes = bytes.max(1);
        self
    }

    /// The bollard client, for what the trait does not cover (checkpoints, stats).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Where the daemon was reached.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn image_lock(&self, image: &ImageRef) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .image_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(locks.entry(image.0.clone()).or_default())
    }

    /// The runc container restored as instance `name`, if one was adopted.
    pub fn adopted(&self, name: &str) -> Option<RuncTask> {
        self.adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Makes a runc container restored by a live migration the instance `task.summary.name`
    /// (see [`super::runc_task`]); `state`, `logs`, `stop`, `remove` and `list` then answer for
    /// it through runc. Fails when runc does not see it running.
    pub fn adopt(&self, task: RuncTask) -> Result<u32, EngineError> {
        let status = task.status();
        let pid = match (status.state, status.pid) {
            (TaskState::Running, Some(pid)) => pid,
            _ => {
                return Err(EngineError::StartFailed {
                    name: task.summary.name.clone(),
                    reason: format!(
                        "the restored runc container {} is not running ({:?})",
                        task.restore.id, status.state
                    ),
                    last_logs: task.logs(FAILURE_LOG_LINES),
                })
            }
        };
        if let Err(e) = task.save() {
            tracing::warn!(task = %task.summary.name, error = %e,
                "cannot record the restored container: a restart of this node would not find it");
        }
        self.adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.summary.name.clone(), task);
        Ok(pid)
    }

    /// After a restart of the node: takes back the restored runc containers recorded under
    /// [`runc_task::RUNC_HOME`] whose instance names `ours` accepts (nodes on one host share
    /// it) and that still run, and removes the recorded ones of ours that do not. Returns the
    /// names taken back; `state`, `logs`, `stop`, `remove` and `list` answer for them again.
    ///
    /// [`runc_task::RUNC_HOME`]: super::runc_task::RUNC_HOME
    pub fn readopt(&self, ours: impl Fn(&str) -> bool) -> Vec<String> {
        let mut taken = Vec::new();
        for task in RuncTask::saved(Path::new(super::runc_task::RUNC_HOME)) {
            let name = task.summary.name.clone();
            if !ours(&name) || self.adopted(&name).is_some() {
                continue;
            }
            if task.status().state == TaskState::Running {
                self.adopted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.clone(), task);
                taken.push(name);
            } else {
                tracing::info!(task = %name, "a restored container of this node no longer runs; removing it");
                task.remove();
            }
        }
        taken
    }

    /// The full Docker id of brume's container `name` (what runc calls it).
    pub async fn container_id(&self, name: &str) -> Result<String, EngineError> {
        self.inspect_ours(name)
            .await?
            .and_then(|info| info.id)
            .ok_or_else(|| EngineError::NotFound {
                name: name.to_string(),
            })
    }

    /// The summary `list` gives of instance `name`, if it is there.
    pub async fn summary_of(&self, name: &str) -> Result<Option<TaskSummary>, EngineError> {
        Ok(self.list().await?.into_iter().find(|t| t.name == name))
    }

    /// Fills `dest` (created) with the root filesystem of `image`: `docker export` of a
    /// container created (never started) from it under a unique name, then removed. What a
    /// container of that image wrote at run time is not in it.
    pub async fn export_rootfs(
        &self,
        image: &ImageRef,
        dest: &std::path::Path,
    ) -> Result<(), EngineError> {
        let name = format!("brume-rootfs-{:016x}", rand::random::<u64>());
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let body = ContainerCreateBody {
            image: Some(image.0.clone()),
            network_disabled: Some(true),
            ..Default::default()
        };
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(docker_err("create a container to export"))?;
        let tar = dest.with_extension("tar");
        let exported = async {
            if let Some(parent) = dest.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| EngineError::io("create", parent, e))?;
            }
            let mut file = tokio::fs::File::create(&tar)
                .await
                .map_err(|e| EngineError::io("create", &tar, e))?;
            let mut stream = self.docker.export_container(&name);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(docker_err("export container"))?;
                tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                    .await
                    .map_err(|e| EngineError::io("write", &tar, e))?;
            }
            tokio::io::AsyncWriteExt::flush(&mut file)
                .await
                .map_err(|e| EngineError::io("write", &tar, e))?;
            let (from, to) = (tar.clone(), dest.to_path_buf());
            tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
                std::fs::create_dir_all(&to).map_err(|e| EngineError::io("create", &to, e))?;
                let file =
                    std::fs::File::open(&from).map_err(|e| EngineError::io("open", &from, e))?;
                let mut archive = tar::Archive::new(file);
                archive.set_preserve_permissions(true);
                archive
                    .unpack(&to)
                    .map_err(|e| EngineError::io("unpack the exported rootfs", &to, e))
            })
            .await
            .map_err(|e| EngineError::io("unpack", dest, std::io::Error::other(e)))?
        }
        .await;
        let _ = tokio::fs::remove_file(&tar).await;
        if let Err(e) = self.force_remove(&name).await {
            tracing::warn!(container = %name, "removing the exported container: {e}");
        }
        exported
    }

    /// Sets the restart policy of brume's container `name` to `policy` and returns the one it
    /// had: a container being checkpointed must not have one, or Docker starts it again from
    /// scratch when the final checkpoint stops it (and it takes its port back).
    pub async fn set_restart(
        &self,
        name: &str,
        policy: DockerRestart,
    ) -> Result<Option<DockerRestart>, EngineError> {
        let info = self
            .inspect_ours(name)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                name: name.to_string(),
            })?;
        let old = info.host_config.and_then(|h| h.restart_policy);
        let body = bollard::models::ContainerUpdateBody {
            restart_policy: Some(policy),
            ..Default::default()
        };
        self.docker
            .update_container(name, body)
            .await
            .map_err(docker_err("update container"))?;
        Ok(old)
    }

    /// Removes Docker's container `name` only (not an adopted runc container of that name).
    pub async fn remove_docker_container(&self, name: &str) -> Result<(), EngineError> {
        if self.inspect_ours(name).await?.is_none() {
            return Ok(());
        }
        self.force_remove(name).await
    }

    /// Is the image on this host?
    /// Removes one of brume's own images (`brume/<16 hex>:latest`; any other name is refused)
    /// unless a container, of any state, still uses it: `Ok(true)` when removed, `Ok(false)`
    /// when it was not there or is in use (the daemon's conflict; nothing is forced).
    pub async fn remove_brume_image(&self, image: &ImageRef) -> Result<bool, EngineError> {
        if image.brume_id().is_none() {
            return Err(EngineError::BadSpec {
                name: image.0.clone(),
                why: "brume removes only the images it names brume/<16 hex>:latest".into(),
            });
        }
        let options = RemoveImageOptionsBuilder::default()
            .force(false)
            .noprune(false)
            .build();
        match self
            .docker
            .remove_image(image.as_str(), Some(options), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if matches!(status_code(&e), Some(404) | Some(409)) => Ok(false),
            Err(e) => Err(docker_err("remove image")(e)),
        }
    }

    pub async fn image_exists(&self, image: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if status_code(&e) == Some(404) => Ok(false),
            Err(e) => Err(EngineError::Docker {
                op: "inspect image",
                source: e,
            }),
        }
    }

    async fn build(&self, input: &ImageInput, image: &ImageRef) -> Result<(), EngineError> {
        let tar = input.tar.clone();
        let has_dockerfile = tokio::task::spawn_blocking(move || read_entry(&tar, "Dockerfile"))
            .await
            .map_err(|e| EngineError::io("read", &input.tar, std::io::Error::other(e)))??
            .is_some();
        if !has_dockerfile {
            return Err(EngineError::MissingDockerfile {
                path: input.tar.clone(),
            });
        }
        let file = tokio::fs::File::open(&input.tar)
            .await
            .map_err(|e| EngineError::io("open the build context", &input.tar, e))?;
        let labels = HashMap::from([("brume.digest", input.digest.as_str())]);
        // No build cache. brume names an image by its context's digest and builds only when no
        // image of that name exists, so the cache could at most spare the leading steps a
        // changed context shares with an image still here; and Docker 20.10's legacy builder
        // probes it by listing every image built on the same parent (for FROM scratch: every
        // such image) and loading each, so a `docker rmi` of any of them at the same moment
        // fails this build with `unable to find image "sha256:..."` (seen in CI).
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(image.as_str())
            .nocache(true)
            .rm(true)
            .forcerm(true)
            .labels(&labels)
            .build();
        let body = bollard::body_try_stream(ReaderStream::new(file));
        let mut progress = self.docker.build_image(options, None, Some(body));
        let mut output = String::new();
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => {
                    if let Some(line) = info.stream {
                        output.push_str(&line);
                    }
                }
                Err(e) => {
                    let mut message = daemon_message(&e);
                    let before = tail_lines(&output, 5);
                    if !before.trim().is_empty() {
                        message = format!("{message}\nbuild output before it:\n{}", before.trim());
                    }
                    return Err(EngineError::BuildFailed {
                        image: image.0.clone(),
                        message,
                    });
                }
            }
        }
        if !self.image_exists(image.as_str()).await? {
            return Err(EngineError::BuildFailed {
                image: image.0.clone(),
                message: format!(
                    "the daemon reported no error but the image is not there; output:\n{}",
                    tail_lines(&output, 10).trim()
                ),
            });
        }
        Ok(())
    }

    /// Loads a `docker save` tarball by id only: an untagged copy is what the daemon reads
    /// ([`untagged_copy`]), so the tarball's own tags cannot move a name of another image on
    /// this host, and the id the daemon reports must be the one its manifest names (the config's
    /// digest, in a tarball whose bytes the artifact's digest vouches for). Then the image gets
    /// brume's name for the artifact.
    async fn load(&self, input: &ImageInput, image: &ImageRef) -> Result<(), EngineError> {
        let load_failed = |message: String| EngineError::LoadFailed {
            path: input.tar.clone(),
            message,
        };
        let copy = input
            .tar
            .with_extension(format!("untagged-{:016x}.tar", rand::random::<u64>()));
        let (tar, out) = (input.tar.clone(), copy.clone());
        let manifest = tokio::task::spawn_blocking(move || untagged_copy(&tar, &out))
            .await
            .map_err(|e| EngineError::io("read", &input.tar, std::io::Error::other(e)));
        let manifest = match manifest {
            Ok(Ok(m)) => m,
            Ok(Err(e)) | Err(e) => {
                let _ = tokio::fs::remove_file(&copy).await;
                return Err(e);
            }
        };
        let loaded = self.load_untagged(&copy).await;
        let _ = tokio::fs::remove_file(&copy).await;
        let output = loaded.map_err(|e| load_failed(daemon_message(&e)))?;
        let want = manifest.image_id().ok_or_else(|| {
            load_failed(format!(
                "its manifest.json names the config {:?}, which is not a sha256 digest: the \
                 loaded image could not be checked",
                manifest.config
            ))
        })?;
        let reported: Vec<&str> = output
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Loaded image ID: "))
            .collect();
        if reported != [want.as_str()] {
            return Err(load_failed(format!(
                "the daemon loaded {reported:?} where the tarball's manifest names {want}: \
                 refused (the tarball is inconsistent or forged)"
            )));
        }
        let id = want;
        let (repo, tag) = image
            .0
            .rsplit_once(':')
            .unwrap_or((image.as_str(), "latest"));
        let options = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        self.docker
            .tag_image(&id, Some(options))
            .await
            .map_err(|e| load_failed(format!("tagging {id} as {image}: {}", daemon_message(&e))))?;
        Ok(())
    }

    /// Streams an image tarball to the daemon; returns what it said.
    async fn load_untagged(&self, tar: &std::path::Path) -> Result<String, bollard::errors::Error> {
        let file = tokio::fs::File::open(tar).await?;
        let options = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut progress = self
            .docker
            .import_image_stream(options, ReaderStream::new(file), None);
        let mut output = String::new();
        while let Some(item) = progress.next().await {
            if let Some(line) = item?.stream {
                output.push_str(&line);
            }
        }
        Ok(output)
    }

    /// The container's labels, or `None` when there is no such container.
    async fn inspect_ours(
        &self,
        name: &str,
    ) -> Result<Option<bollard::models::ContainerInspectResponse>, EngineError> {
        match self.docker.inspect_container(name, None).await {
            Ok(info) => {
                let ours = info
                    .config
                    .as_ref()
                    .and_then(|c| c.labels.as_ref())
                    .and_then(|l| l.get(INSTANCE_LABEL))
                    .is_some_and(|v| v == name);
                if ours {
                    Ok(Some(info))
                } else {
                    Err(EngineError::NotOurs {
                        name: name.to_string(),
                    })
                }
            }
            Err(e) if status_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(EngineError::Docker {
                op: "inspect container",
                source: e,
            }),
        }
    }

    async fn force_remove(&self, name: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            // "removal already in progress": wait until it is gone.
            Err(e) if status_code(&e) == Some(409) => {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if self.inspect_ours(name).await?.is_none() {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(EngineError::Docker {
                    op: "remove container",
                    source: e,
                })
            }
            Err(e) => Err(EngineError::Docker {
                op: "remove container",
                source: e,
            }),
        }
    }

    fn create_body(
        spec: &LaunchSpec,
        log_max_bytes: u64,
    ) -> Result<ContainerCreateBody, EngineError> {
        if spec.memory_mb != 0 && spec.memory_mb < MIN_MEMORY_MB {
            return Err(EngineError::BadSpec {
                name: spec.name.clone(),
                why: format!(
                    "a memory limit of {} MiB is below Docker's minimum of {MIN_MEMORY_MB} MiB; \
                     ask for more or for no limit (0)",
                    spec.memory_mb
                ),
            });
        }
        let mut env = spec.task_env();
        if spec.restore.is_some() {
            env.insert(RESTORE_FILE_ENV.into(), RESTORE_FILE_IN_CONTAINER.into());
        }
        let env = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let labels = HashMap::from([
            (INSTANCE_LABEL.to_string(), spec.name.clone()),
            ("brume.service".to_string(), spec.service.clone()),
            ("brume.task".to_string(), spec.task.clone()),
            ("brume.replica".to_string(), spec.replica.to_string()),
            ("brume.epoch".to_string(), spec.epoch.to_string()),
            ("brume.port".to_string(), spec.port.to_string()),
        ]);
        let restart_policy = match spec.restart {
            RestartPolicy::Never => DockerRestart {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            },
            RestartPolicy::OnFailure { max_restarts } => DockerRestart {
                name: Some(RestartPolicyNameEnum::ON_FAILURE),
                maximum_retry_count: Some(i64::from(max_restarts)),
            },
        };
        // Tasks share the host's network: without NET_RAW they cannot forge packets or sniff
        // it; no-new-privileges stops a setuid binary in the image from gaining root; a pids
        // limit stops a fork bomb from starving the node.
        let host_config = HostConfig {
            network_mode: Some("host".into()),
            nano_cpus: (spec.cpu_millis > 0).then(|| i64::from(spec.cpu_millis) * 1_000_000),
            memory: (spec.memory_mb > 0).then(|| i64::from(spec.memory_mb) << 20),
            restart_policy: Some(restart_policy),
            cap_drop: Some(DROPPED_CAPS.iter().map(|c| c.to_string()).collect()),
            security_opt: Some(vec![NO_NEW_PRIVILEGES.to_string()]),
            pids_limit: Some(PIDS_LIMIT),
            log_config: Some(log_config(log_max_bytes)),
            ..Default::default()
        };
        Ok(ContainerCreateBody {
            user: Some(docker_user(spec.user.as_deref())),
            image: Some(spec.image.0.clone()),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        })
    }

    /// Puts the state the task starts from into the created container, at
    /// [`RESTORE_FILE_IN_CONTAINER`] (the path `create_body` named in `BRUME_RESTORE_FILE`),
    /// through the daemon's archive endpoint: the file exists before the task's first
    /// instruction, on a local or a remote daemon alike.
    async fn put_restore(&self, spec: &LaunchSpec) -> Result<(), EngineError> {
        let Some(state) = &spec.restore else {
            return Ok(());
        };
        let tar = restore_tar(state.as_bytes()).map_err(|e| EngineError::StartFailed {
            name: spec.name.clone(),
            reason: format!("could not pack the state to start from: {e}"),
            last_logs: String::new(),
        })?;
        let options = UploadToContainerOptionsBuilder::default().path("/").build();
        self.docker
            .upload_to_container(&spec.name, Some(options), body_full(tar.into()))
            .await
            .map_err(|e| EngineError::StartFailed {
                name: spec.name.clone(),
                reason: format!(
                    "the daemon refused the state to start from: {}",
                    daemon_message(&e)
                ),
                last_logs: String::new(),
            })
    }

    /// Starts the created container and waits for it; the caller removes it on error.
    async fn start_created(&self, spec: &LaunchSpec) -> Result<(), EngineError> {
        self.docker
            .start_container(&spec.name, None)
            .await
            .map_err(|e| EngineError::StartFailed {
                name: spec.name.clone(),
                reason: format!("the daemon refused to start it: {}", daemon_message(&e)),
                last_logs: String::new(),
            })?;
        let readiness = wait_until_ready(spec.port, self.ready_timeout, || async {
            let info = self.docker.inspect_container(&spec.name, None).await.ok()?;
            let restarts = info.restart_count.unwrap_or(0);
            let state = info.state?;
            let status = state.status?;
            let exited = matches!(
                status,
                ContainerStateStatusEnum::EXITED
                    | ContainerStateStatusEnum::DEAD
                    | ContainerStateStatusEnum::RESTARTING
            );
            (exited || restarts > 0).then(|| state.exit_code.unwrap_or(-1))
        })
        .await;
        match readiness {
            Readiness::Accepting => Ok(()),
            Readiness::TimedOut => {
                tracing::warn!(
                    task = %spec.name, port = spec.port,
                    "task runs but did not accept on its port within {:?}; reporting it started",
                    self.ready_timeout
                );
                Ok(())
            }
            Readiness::Exited(code) => {
                let last_logs = self
                    .logs(&spec.name, FAILURE_LOG_LINES)
                    .await
                    .unwrap_or_default();
                Err(EngineError::StartFailed {
                    name: spec.name.clone(),
                    reason: format!(
                        "it exited with code {code} before accepting connections on port {}",
                        spec.port
                    ),
                    last_logs,
                })
            }
        }
    }
}

/// Where a container finds the state it starts from (see [`LaunchSpec::restore`]).
pub const RESTORE_FILE_IN_CONTAINER: &str = "/.brume/restore";

/// A tar of `/.brume/restore` holding `state`, readable by any user: a task runs as an
/// unprivileged uid unless its manifest asks for root, and it is the container's only tenant.
fn restore_tar(state: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    tar.append_data(&mut dir, ".brume/", std::io::empty())?;
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o444);
    file.set_size(state.len() as u64);
    tar.append_data(&mut file, ".brume/restore", state)?;
    tar.into_inner()
}

fn state_of(info: &bollard::models::ContainerInspectResponse) -> TaskStatus {
    let restarts = info
        .restart_count
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    let Some(state) = info.state.as_ref() else {
        return TaskStatus {
            state: TaskState::Created,
            restarts,
            pid: None,
        };
    };
    let code = state.exit_code.unwrap_or(0);
    let task_state = match state.status {
        Some(ContainerStateStatusEnum::RUNNING) | Some(ContainerStateStatusEnum::PAUSED) => {
            TaskState::Running
        }
        Some(ContainerStateStatusEnum::RESTARTING) => TaskState::Restarting,
        Some(ContainerStateStatusEnum::CREATED) | Some(ContainerStateStatusEnum::EMPTY) | None => {
            TaskState::Created
        }
        Some(_) => TaskState::Exited { code },
    };
    let pid = state
        .pid
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0);
    TaskStatus {
        state: task_state,
        restarts,
        pid,
    }
}

impl Engine for DockerEngine {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn prepare(&self, input: &ImageInput) -> Result<ImageRef, EngineError> {
        let image = input.image_ref()?;
        let lock = self.image_lock(&image);
        let _guard = lock.lock().await;
        if self.image_exists(image.as_str()).await? {
            tracing::debug!(%image, "image already on this host");
            return Ok(image);
        }
        let started = Instant::now();
        match input.kind {
            ImageKind::BuildContext => self.build(input, &image).await?,
            ImageKind::DockerSave => self.load(input, &image).await?,
        }
        tracing::info!(%image, kind = ?input.kind, elapsed = ?started.elapsed(), "image ready");
        Ok(image)
    }

    async fn start(&self, spec: &LaunchSpec) -> Result<(), EngineError> {
        spec.validate()?;
        if self.adopted(&spec.name).is_some() {
            return Err(EngineError::AlreadyExists {
                name: spec.name.clone(),
            });
        }
        let body = Self::create_body(spec, self.log_max_bytes)?;
        if !self.image_exists(spec.image.as_str()).await? {
            return Err(EngineError::ImageMissing {
                image: spec.image.0.clone(),
            });
        }
        match self.docker.inspect_container(&spec.name, None).await {
            Ok(_) => {
                return Err(EngineError::AlreadyExists {
                    name: spec.name.clone(),
                })
            }
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => return Err(docker_err("inspect container")(e)),
        }
        ensure_port_free(spec.port)?;
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => {}
            Err(e) if status_code(&e) == Some(409) => {
                return Err(EngineError::AlreadyExists {
                    name: spec.name.clone(),
                })
            }
            Err(e) => {
                return Err(EngineError::StartFailed {
                    name: spec.name.clone(),
                    reason: format!("the daemon refused to create it: {}", daemon_message(&e)),
                    last_logs: String::new(),
                })
            }
        }
        // From here on the container exists: any failure removes it.
        let started = match self.put_restore(spec).await {
            Ok(()) => self.start_created(spec).await,
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            if let Err(cleanup) = self.force_remove(&spec.name).await {
                tracing::warn!(task = %spec.name, "removing the failed container: {cleanup}");
            }
            return Err(e);
        }
        Ok(())
    }

    async fn state(&self, name: &str) -> Result<TaskStatus, EngineError> {
        if let Some(t) = self.adopted(name) {
            return Ok(t.status());
        }
        Ok(match self.inspect_ours(name).await? {
            Some(info) => state_of(&info),
            None => TaskStatus::MISSING,
        })
    }

    async fn logs(&self, name: &str, tail_lines: usize) -> Result<String, EngineError> {
        if let Some(t) = self.adopted(name) {
            return Ok(t.logs(tail_lines));
        }
        if self.inspect_ours(name).await?.is_none() {
            return Err(EngineError::NotFound {
                name: name.to_string(),
            });
        }
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail_lines.to_string())
            .build();
        let mut stream = self.docker.logs(name, Some(options));
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            let item = item.map_err(docker_err("read logs"))?;
            out.extend_from_slice(item.as_ref());
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), EngineError> {
        if let Some(t) = self.adopted(name) {
            t.stop(grace).await;
            return Ok(());
        }
        if self.inspect_ours(name).await?.is_none() {
            return Err(EngineError::NotFound {
                name: name.to_string(),
            });
        }
        let secs = i32::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0))
            .unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(secs).build();
        match self.docker.stop_container(name, Some(options)).await {
            // 304: it was not running.
            Err(e) if status_code(&e) != Some(304) => Err(docker_err("stop container")(e)),
            _ => Ok(()),
        }
    }

    async fn remove(&self, name: &str) -> Result<(), EngineError> {
        let adopted = self
            .adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(t) = adopted {
            tokio::task::spawn_blocking(move || t.remove())
                .await
                .map_err(|e| {
                    EngineError::io(
                        "remove",
                        std::path::Path::new(name),
                        std::io::Error::other(e),
                    )
                })?;
        }
        if self.inspect_ours(name).await?.is_none() {
            return Ok(());
        }
        self.force_remove(name).await
    }

    async fn list(&self) -> Result<Vec<TaskSummary>, EngineError> {
        let filters = HashMap::from([("label".to_string(), vec![INSTANCE_LABEL.to_string()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(docker_err("list containers"))?;
        let mut out = Vec::new();
        for c in containers {
            let labels = c.labels.unwrap_or_default();
            let Some(name) = labels.get(INSTANCE_LABEL).cloned() else {
                continue;
            };
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            let state = match c.state.map(|s| s.to_string()).as_deref() {
                Some("running") | Some("paused") => TaskState::Running,
                Some("restarting") => TaskState::Restarting,
                Some("created") => TaskState::Created,
                _ => {
                    // The summary has no exit code; the status text does: "Exited (3) 2 s ago".
                    let status = c.status.unwrap_or_default();
                    let code = status
                        .split_once('(')
                        .and_then(|(_, rest)| rest.split_once(')'))
                        .and_then(|(n, _)| n.parse().ok())
                        .unwrap_or(-1);
                    TaskState::Exited { code }
                }
            };
            out.push(TaskSummary {
                name,
                service: label("brume.service"),
                task: label("brume.task"),
                replica: label("brume.replica").parse().unwrap_or(0),
                epoch: label("brume.epoch").parse().unwrap_or(0),
                port: label("brume.port").parse().unwrap_or(0),
                state,
            });
        }
        let adopted: Vec<RuncTask> = self
            .adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for t in adopted {
            out.retain(|o| o.name != t.summary.name);
            let mut summary = t.summary.clone();
            summary.state = t.status().state;
            out.push(summary);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Docker's `json-file` log driver, capped: the container's log rolls over at `max_bytes` and
/// one older file is kept, as the process engine keeps `task.log.1`.
pub fn log_config(max_bytes: u64) -> HostConfigLogConfig {
    HostConfigLogConfig {
        typ: Some("json-file".into()),
        config: Some(HashMap::from([
            ("max-size".to_string(), max_bytes.max(1).to_string()),
            ("max-file".to_string(), "2".to_string()),
        ])),
    }
}
