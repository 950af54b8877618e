//! The service manifest, `service.toml`: what a service is made of and how its parts talk.
//!
//! ```toml
//! [service]
//! name = "fedavg"
//! root = "aggregator"          # runs on the initiator; every other task is reached from it
//!
//! [[task]]
//! name = "aggregator"
//! build = "aggregator"         # or image = "x.tar" (docker save) or command = ["bin", "arg"]
//! cpu_millis = 500
//! memory_mb = 256
//! stateful = true
//! checkpoint = "app"           # criu | app | none
//! checkpoint_every_s = 5       # the owner keeps its latest state, for re-placement
//! downtime_budget_ms = 500     # criu only: a live move freezes it only if predicted to fit
//! max_runtime_s = 3600         # runs at most this long on one host, then moves on
//! ports = [7000]
//! user = "root"                # who it runs as under Docker; unset: nobody (65534)
//!
//! [[call]]
//! from = "aggregator"
//! to = "trainer"
//! latency_ms = 40              # the RTT the caller tolerates
//! traffic_mbps = 5
//! ```
//!
//! Parsing refuses anything placement or deployment could trip on later, and says where: every
//! refusal names the file, the line and the field. `image` and `build` paths are relative to the
//! manifest's directory, like Compose files, so a manifest and its build contexts move together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use brume_placement::{Call, CallGraph, GraphError, Task};
use serde::Deserialize;
use toml::Spanned;

use crate::input_error::{InputError, Source};

/// A parsed and checked manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub service: Service,
    /// Tasks in the order the file declares them.
    pub tasks: Vec<TaskSpec>,
    pub calls: Vec<CallSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// The task that runs on the initiator.
    pub root: String,
}

/// What a task runs and what it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub name: String,
    pub artifact: Artifact,
    pub cpu_millis: u64,
    pub memory_mb: u64,
    /// Labels a host must carry to run it.
    pub labels: BTreeSet<String>,
    pub replicas: u32,
    pub stateful: bool,
    pub checkpoint: Checkpoint,
    /// Every how many seconds the host captures the task's state and sends it to the service's
    /// owner, which starts a re-placed copy from the latest one (`checkpoint = "app"` only).
    pub checkpoint_every_s: Option<u32>,
    /// The longest freeze a live move of the task may be predicted to take, ms
    /// (`checkpoint = "criu"` only): the final freeze is entered only when the prediction fits,
    /// otherwise the move runs more pre-copy rounds or is deferred with the task left running.
    pub downtime_budget_ms: Option<u64>,
    /// The longest one instance of the task runs on one host, seconds: before it is up, the
    /// host moves the instance elsewhere (live if it can), starting as late as the move's
    /// predicted duration allows (a borrowed or duty-cycled device's lease).
    pub max_runtime_s: Option<u32>,
    /// Ports the task listens on inside its container.
    pub ports: Vec<u16>,
    pub env: BTreeMap<String, String>,
    /// Who the task runs as on a Docker host: `root`, a user name the image knows, or
    /// `uid[:gid]`. Unset, an unprivileged user (nobody, 65534): a task that must be root asks.
    pub user: Option<String>,
}

/// Where a task's code comes from. There is no registry: images travel as files.
#[derive(Debug, Clone, PartialEq)]
pub enum Artifact {
    /// A `docker save` tarball, resolved against the manifest's directory.
    Image(PathBuf),
    /// A build context holding a Dockerfile, resolved against the manifest's directory.
    Build(PathBuf),
    /// An argv run as a plain process, for hosts without Docker.
    Command(Vec<String>),
}

/// How a task's state survives a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// CRIU dumps the whole process.
    Criu,
    /// The task exports and imports its own state through its checkpoint endpoint.
    App,
    /// Restarted cold.
    None,
}

impl Checkpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Checkpoint::Criu => "criu",
            Checkpoint::App => "app",
            Checkpoint::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CallSpec {
    pub from: String,
    pub to: String,
    /// The RTT the caller tolerates between its host and the callee's, in ms.
    pub latency_ms: f64,
    pub traffic_mbps: f64,
}

// The file as written, with spans kept for the checks that come after TOML's own.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    service: RawService,
    #[serde(default)]
    task: Vec<Spanned<RawTask>>,
    #[serde(default)]
    call: Vec<RawCall>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    root: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Spanned<String>,
    image: Option<Spanned<PathBuf>>,
    build: Option<Spanned<PathBuf>>,
    command: Option<Spanned<Vec<String>>>,
    cpu_millis: u64,
    memory_mb: u64,
    #[serde(default)]
    labels: Vec<String>,
    replicas: Option<Spanned<u32>>,
    stateful: Option<Spanned<bool>>,
    checkpoint: Option<Spanned<String>>,
    checkpoint_every_s: Option<Spanned<u32>>,
    downtime_budget_ms: Option<Spanned<u64>>,
    max_runtime_s: Option<Spanned<u32>>,
    ports: Option<Spanned<Vec<u16>>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    user: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCall {
    from: Spanned<String>,
    to: Spanned<String>,
    latency_ms: Spanned<f64>,
    traffic_mbps: Option<Spanned<f64>>,
}

impl Manifest {
    /// Reads and checks the manifest at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the manifest {}: {e} (pass the path of a service.toml, e.g. examples/fedavg/service.toml)",
                path.display()
            )
        })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        Ok(Self::parse(&path.display().to_string(), &text, dir)?)
    }

    /// Parses manifest text; `file` names it in errors, `dir` anchors relative artifact paths.
    pub fn parse(file: &str, text: &str, dir: &Path) -> Result<Self, InputError> {
        let src = Source::new(file, text);
        let raw: RawManifest = toml::from_str(text).map_err(|e| src.toml(&e))?;
        let service = Service {
            name: checked_name(&src, &raw.service.name, "service.name")?,
            root: raw.service.root.get_ref().clone(),
        };
        let mut tasks: Vec<TaskSpec> = Vec::with_capacity(raw.task.len());
        let mut name_spans = Vec::with_capacity(raw.task.len());
        for t in &raw.task {
            let spec = task(&src, t, dir)?;
            if tasks.iter().any(|x| x.name == spec.name) {
                return Err(src.at(
                    t.get_ref().name.span(),
                    "task.name",
                    format!(
                        "task \"{}\" is declared twice: task names must be unique",
                        spec.name
                    ),
                ));
            }
            // `-` and `_` both become `_` in the callers' variables.
            let var = brume_tunnel::call_env_name(&spec.name);
            if let Some(other) = tasks
                .iter()
                .find(|x| brume_tunnel::call_env_name(&x.name) == var)
            {
                return Err(src.at(
                    t.get_ref().name.span(),
                    "task.name",
                    format!(
                        "tasks \"{}\" and \"{}\" would both be called through {var}: rename one",
                        other.name, spec.name
                    ),
                ));
            }
            name_spans.push(t.get_ref().name.span());
            tasks.push(spec);
        }
        let names = || {
            tasks
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if tasks.is_empty() {
            return Err(src.whole(
                "the service has no tasks: add a [[task]] table with name, cpu_millis, memory_mb and one of image, build or command",
            ));
        }
        let Some(root) = tasks.iter().find(|t| t.name == service.root) else {
            return Err(src.at(
                raw.service.root.span(),
                "service.root",
                format!("no task named \"{}\" (tasks: {})", service.root, names()),
            ));
        };
        if root.replicas != 1 {
            let span = raw
                .task
                .iter()
                .find(|t| t.get_ref().name.get_ref() == &service.root)
                .and_then(|t| t.get_ref().replicas.as_ref().map(Spanned::span))
                .unwrap_or(raw.service.root.span());
            return Err(src.at(
                span,
                "task.replicas",
                format!(
                    "the root task \"{}\" runs once, on the initiator: set replicas = 1, or make another task the root",
                    service.root
                ),
            ));
        }
        let mut calls: Vec<CallSpec> = Vec::with_capacity(raw.call.len());
        for c in &raw.call {
            for (end, field) in [(&c.from, "call.from"), (&c.to, "call.to")] {
                if !tasks.iter().any(|t| &t.name == end.get_ref()) {
                    return Err(src.at(
                        end.span(),
                        field,
                        format!("no task named \"{}\" (tasks: {})", end.get_ref(), names()),
                    ));
                }
            }
            let (from, to) = (c.from.get_ref().clone(), c.to.get_ref().clone());
            if from == to {
                return Err(src.at(
                    c.to.span(),
                    "call.to",
                    format!("task \"{from}\" calls itself: a call joins two different tasks"),
                ));
            }
            if calls.iter().any(|x| x.from == from && x.to == to) {
                return Err(src.at(
                    c.to.span(),
                    "call.to",
                    format!("the call \"{from}\" -> \"{to}\" is declared twice: merge them into one, adding their traffic"),
                ));
            }
            let latency_ms = *c.latency_ms.get_ref();
            if !(latency_ms.is_finite() && latency_ms >= 0.0) {
                return Err(src.at(
                    c.latency_ms.span(),
                    "call.latency_ms",
                    "the latency bound must be a finite number of milliseconds >= 0",
                ));
            }
            let traffic_mbps = c.traffic_mbps.as_ref().map_or(0.0, |t| *t.get_ref());
            if !(traffic_mbps.is_finite() && traffic_mbps >= 0.0) {
                let span = c.traffic_mbps.as_ref().map_or(c.to.span(), Spanned::span);
                return Err(src.at(
                    span,
                    "call.traffic_mbps",
                    "traffic must be a finite number of Mbit/s >= 0",
                ));
            }
            calls.push(CallSpec {
                from,
                to,
                latency_ms,
                traffic_mbps,
            });
        }
        let manifest = Manifest {
            service,
            tasks,
            calls,
        };
        // What remains is reachability; the placement crate owns that rule.
        if let Err(GraphError::Unreachable { task, root }) = manifest.call_graph().validate() {
            let i = manifest
                .tasks
                .iter()
                .position(|t| t.name == task)
                .unwrap_or(0);
            return Err(src.at(
                name_spans[i].clone(),
                "task.name",
                format!("task \"{task}\" is not reachable from the root \"{root}\": add a [[call]] that leads to it, or remove it"),
            ));
        }
        Ok(manifest)
    }

    /// The call graph placement works on, rooted at `service.root`.
    pub fn call_graph(&self) -> CallGraph {
        let as_task = |t: &TaskSpec| Task {
            name: t.name.clone(),
            demand: brume_placement::Demand {
                cpu_millis: t.cpu_millis,
                memory_mb: t.memory_mb,
                labels: t.labels.clone(),
            },
            replicas: t.replicas,
            stateful: t.stateful,
        };
        let root = self
            .tasks
            .iter()
            .position(|t| t.name == self.service.root)
            .unwrap_or(0);
        let mut graph = CallGraph::new(as_task(&self.tasks[root]));
        let mut ids = vec![graph.root(); self.tasks.len()];
        for (i, t) in self.tasks.iter().enumerate() {
            if i != root {
                ids[i] = graph.add_task(as_task(t));
            }
        }
        let id = |name: &str| {
            self.tasks
                .iter()
                .position(|t| t.name == name)
                .map(|i| ids[i])
        };
        for c in &self.calls {
            if let (Some(a), Some(b)) = (id(&c.from), id(&c.to)) {
                graph.add_call(
                    a,
                    b,
                    Call {
                        latency_bound_ms: c.latency_ms,
                        traffic_mbps: c.traffic_mbps,
                    },
                );
            }
        }
        graph
    }

    pub fn task(&self, name: &str) -> Option<&TaskSpec> {
        self.tasks.iter().find(|t| t.name == name)
    }
}

/// Service and task names follow [`crate::naming`]'s rule, the one the deploy wire enforces, so
/// a manifest `brume place` accepts is one `brume deploy` can send.
fn checked_name(src: &Source, name: &Spanned<String>, field: &str) -> Result<String, InputError> {
    let s = name.get_ref();
    if !crate::naming::is_valid(s) {
        let what = field.split('.').next().unwrap_or(field);
        return Err(src.at(
            name.span(),
            field,
            format!(
                "{what} name \"{s}\" is not allowed: {}",
                crate::naming::RULE
            ),
        ));
    }
    Ok(s.clone())
}

fn task(src: &Source, t: &Spanned<RawTask>, dir: &Path) -> Result<TaskSpec, InputError> {
    let raw = t.get_ref();
    let name = checked_name(src, &raw.name, "task.name")?;
    let given: Vec<(&str, std::ops::Range<usize>)> = [
        raw.image.as_ref().map(|x| ("image", x.span())),
        raw.build.as_ref().map(|x| ("build", x.span())),
        raw.command.as_ref().map(|x| ("command", x.span())),
    ]
    .into_iter()
    .flatten()
    .collect();
    let artifact = match (&raw.image, &raw.build, &raw.command) {
        (Some(i), None, None) => Artifact::Image(dir.join(i.get_ref())),
        (None, Some(b), None) => Artifact::Build(dir.join(b.get_ref())),
        (None, None, Some(c)) => {
            if c.get_ref().first().is_none_or(|p| p.is_empty()) {
                return Err(src.at(
                    c.span(),
                    "task.command",
                    "the command is empty: give the program and its arguments, e.g. [\"./trainer\", \"--rounds\", \"10\"]",
                ));
            }
            Artifact::Command(c.get_ref().clone())
        }
        (None, None, None) => {
            return Err(src.at(
                raw.name.span(),
                "task",
                format!("task \"{name}\" says nothing to run: give one of image (a docker save tarball), build (a directory with a Dockerfile) or command (an argv list)"),
            ))
        }
        _ => {
            let (second, span) = given[1].clone();
            return Err(src.at(
                span,
                &format!("task.{second}"),
                format!(
                    "task \"{name}\" gives both {} and {second}: keep exactly one of image, build or command",
                    given[0].0
                ),
            ));
        }
    };
    let replicas = raw.replicas.as_ref().map_or(1, |r| *r.get_ref());
    if replicas == 0 {
        let span = raw.replicas.as_ref().map_or(raw.name.span(), Spanned::span);
        return Err(src.at(
            span,
            "task.replicas",
            format!("task \"{name}\" has 0 replicas: use at least 1, or remove the task"),
        ));
    }
    let stateful = raw.stateful.as_ref().is_some_and(|s| *s.get_ref());
    let checkpoint = match &raw.checkpoint {
        None if stateful => Checkpoint::Criu,
        None => Checkpoint::None,
        Some(c) => {
            let mode = match c.get_ref().as_str() {
                "criu" => Checkpoint::Criu,
                "app" => Checkpoint::App,
                "none" => Checkpoint::None,
                other => {
                    return Err(src.at(
                        c.span(),
                        "task.checkpoint",
                        format!("unknown checkpoint mode \"{other}\": use \"criu\" (dump the process), \"app\" (the task exports its state) or \"none\" (restart cold)"),
                    ))
                }
            };
            if mode != Checkpoint::None && !stateful {
                return Err(src.at(
                    c.span(),
                    "task.checkpoint",
                    format!("task \"{name}\" is not stateful, so there is nothing to checkpoint: set stateful = true, or remove checkpoint"),
                ));
            }
            mode
        }
    };
    if let Some(every) = &raw.checkpoint_every_s {
        if checkpoint == Checkpoint::None {
            return Err(src.at(
                every.span(),
                "task.checkpoint_every_s",
                format!("task \"{name}\" asks for periodic checkpoints but has checkpoint = \"none\": set checkpoint = \"app\" or \"criu\", or remove checkpoint_every_s"),
            ));
        }
        if *every.get_ref() < 1 {
            return Err(src.at(
                every.span(),
                "task.checkpoint_every_s",
                format!("task \"{name}\" asks for a checkpoint every 0 s: use at least 1"),
            ));
        }
    }
    if let Some(budget) = &raw.downtime_budget_ms {
        if checkpoint != Checkpoint::Criu {
            return Err(src.at(
                budget.span(),
                "task.downtime_budget_ms",
                format!("task \"{name}\" sets a downtime budget, which only a live move (checkpoint = \"criu\") has: set checkpoint = \"criu\", or remove downtime_budget_ms"),
            ));
        }
        if *budget.get_ref() < 1 {
            return Err(src.at(
                budget.span(),
                "task.downtime_budget_ms",
                format!("task \"{name}\" sets a downtime budget of 0 ms: use at least 1"),
            ));
        }
    }
    if let Some(limit) = &raw.max_runtime_s {
        if *limit.get_ref() < 1 {
            return Err(src.at(
                limit.span(),
                "task.max_runtime_s",
                format!("task \"{name}\" may run 0 s on a host: use at least 1, or remove max_runtime_s"),
            ));
        }
    }
    let ports = raw
        .ports
        .as_ref()
        .map_or(Vec::new(), |p| p.get_ref().clone());
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    if let Some(p) = &raw.ports {
        if sorted.windows(2).any(|w| w[0] == w[1]) || sorted.contains(&0) {
            return Err(src.at(
                p.span(),
                "task.ports",
                "ports must be distinct and between 1 and 65535",
            ));
        }
    }
    if let Some(u) = &raw.user {
        if !crate::naming::is_valid_user(u.get_ref()) {
            return Err(src.at(
                u.span(),
                "task.user",
                format!(
                    "user {:?} is not allowed: {}",
                    u.get_ref(),
                    crate::naming::USER_RULE
                ),
            ));
        }
    }
    Ok(TaskSpec {
        name,
        user: raw.user.as_ref().map(|u| u.get_ref().clone()),
        artifact,
        cpu_millis: raw.cpu_millis,
        memory_mb: raw.memory_mb,
        labels: raw.labels.iter().cloned().collect(),
        replicas,
        stateful,
        checkpoint,
        checkpoint_every_s: raw.checkpoint_every_s.as_ref().map(|e| *e.get_ref()),
        downtime_budget_ms: raw.downtime_budget_ms.as_ref().map(|b| *b.get_ref()),
        max_runtime_s: raw.max_runtime_s.as_ref().map(|m| *m.get_ref()),
        ports,
        env: raw.env.clone(),
    })
}

#[cfg(test)]
mod tests;
