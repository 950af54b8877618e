//! The service call graph: tasks (what must run) and calls (who talks to whom, how fast, how much).
//!
//! A call graph is directed from caller to callee and has one root, the task that stays on the
//! initiator. Placement walks it breadth-first from that root, so every task must be reachable.

use std::collections::BTreeSet;

use petgraph::graph::{DiGraph, EdgeIndex, NodeIndex};
use petgraph::visit::EdgeRef;
use serde::{Deserialize, Serialize};

use crate::error::GraphError;

/// Index of a task in its [`CallGraph`].
pub type TaskId = NodeIndex<u32>;

/// What one replica of a task needs from its host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    /// CPU in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Labels the host must carry, such as `gpu` or `camera`.
    pub labels: BTreeSet<String>,
}

/// A task of the service: one container or process, possibly replicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub demand: Demand,
    /// Number of copies; every copy goes to a distinct host.
    pub replicas: u32,
    /// Whether the task holds state that migration must carry.
    pub stateful: bool,
}

impl Task {
    /// A single-replica stateless task with the given demand.
    pub fn new(name: impl Into<String>, cpu_millis: u64, memory_mb: u64) -> Self {
        Self {
            name: name.into(),
            demand: Demand {
                cpu_millis,
                memory_mb,
                labels: BTreeSet::new(),
            },
            replicas: 1,
            stateful: false,
        }
    }
}

/// A call from one task to another.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// The round-trip time the caller tolerates between its host and the callee's host.
    pub latency_bound_ms: f64,
    /// Expected traffic in Mbit/s; weights the latency objective and must fit the link.
    pub traffic_mbps: f64,
}

/// The task that discovered another in the breadth-first walk, and the call between them.
pub type TreeEdge = (TaskId, Call);

/// A validated call graph with its root.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallGraph {
    graph: DiGraph<Task, Call, u32>,
    root: TaskId,
}

impl CallGraph {
    /// An empty graph whose root is `root`.
    pub fn new(root: Task) -> Self {
        let mut graph = DiGraph::default();
        let root = graph.add_node(root);
        Self { graph, root }
    }

    pub fn add_task(&mut self, task: Task) -> TaskId {
        self.graph.add_node(task)
    }

    pub fn add_call(&mut self, from: TaskId, to: TaskId, call: Call) -> EdgeIndex<u32> {
        self.graph.add_edge(from, to, call)
    }

    pub fn root(&self) -> TaskId {
        self.root
    }

    pub fn task(&self, id: TaskId) -> &Task {
        &self.graph[id]
    }

    pub fn task_count(&self) -> usize {
        self.graph.node_count()
    }

    pub fn tasks(&self) -> impl Iterator<Item = (TaskId, &Task)> + '_ {
        self.graph.node_indices().map(move |i| (i, &self.graph[i]))
    }

    pub fn calls(&self) -> impl Iterator<Item = (TaskId, TaskId, &Call)> + '_ {
        self.graph
            .edge_references()
            .map(|e| (e.source(), e.target(), e.weight()))
    }

    pub fn call_count(&self) -> usize {
        self.graph.edge_count()
    }

    pub fn find(&self, name: &str) -> Option<TaskId> {
        self.graph
            .node_indices()
            .find(|&i| self.graph[i].name == name)
    }

    /// Calls touching `task` in either direction, as (other task, call).
    pub fn incident(&self, task: TaskId) -> impl Iterator<Item = (TaskId, &Call)> + '_ {
        self.graph
            .edges_directed(task, petgraph::Direction::Outgoing)
            .map(|e| (e.target(), e.weight()))
            .chain(
                self.graph
                    .edges_directed(task, petgraph::Direction::Incoming)
                    .map(|e| (e.source(), e.weight())),
            )
    }

    /// Tasks in breadth-first order from the root (siblings by decreasing traffic), each with the
    /// task that discovered it (its tree parent) and the call between them.
    pub fn bfs(&self) -> Result<Vec<(TaskId, Option<TreeEdge>)>, GraphError> {
        let mut seen = vec![false; self.graph.node_count()];
        let mut order = Vec::with_capacity(self.graph.node_count());
        let mut queue = std::collections::VecDeque::new();
        seen[self.root.index()] = true;
        queue.push_back((self.root, None));
        while let Some((task, parent)) = queue.pop_front() {
            order.push((task, parent));
            // Heaviest calls first, so the children that talk most claim the hosts nearest their
            // parent; ties in insertion order so the walk is reproducible.
            let mut out: Vec<_> = self
                .graph
                .edges_directed(task, petgraph::Direction::Outgoing)
                .map(|e| (e.id(), e.target(), *e.weight()))
                .collect();
            out.sort_by(|a, b| {
                b.2.traffic_mbps
                    .total_cmp(&a.2.traffic_mbps)
                    .then(a.0.cmp(&b.0))
            });
            for (_, child, call) in out {
                if !seen[child.index()] {
                    seen[child.index()] = true;
                    queue.push_back((child, Some((task, call))));
                }
            }
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(GraphError::Unreachable {
                task: self.graph[NodeIndex::new(i)].name.clone(),
                root: self.graph[self.root].name.clone(),
            });
        }
        Ok(order)
    }

    /// Checks what placement relies on: reachable tasks, sane numbers, a single-copy root.
    pub fn validate(&self) -> Result<(), GraphError> {
        let root = &self.graph[self.root];
        if root.replicas != 1 {
            return Err(GraphError::ReplicatedRoot {
                task: root.name.clone(),
            });
        }
        let mut names = BTreeSet::new();
        for (_, t) in self.tasks() {
            if !names.insert(t.name.as_str()) {
                return Err(GraphError::DuplicateTask {
                    task: t.name.clone(),
                });
            }
            if t.replicas == 0 {
                return Err(GraphError::NoReplicas {
                    task: t.name.clone(),
                });
            }
        }
        for (a, b, c) in self.calls() {
            let sane = |x: f64| x.is_finite() && x >= 0.0;
            if !sane(c.latency_bound_ms) || !sane(c.traffic_mbps) {
                return Err(GraphError::BadCall {
                    from: self.graph[a].name.clone(),
                    to: self.graph[b].name.clone(),
                });
            }
        }
        self.bfs().map(|_| ())
    }
}
