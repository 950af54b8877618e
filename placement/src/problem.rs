//! A placement problem: a call graph and a network, unrolled into the order placement works in.
//!
//! Every replica of every task is one *unit*. Units are listed breadth-first from the root, the
//! replicas of a task next to each other, each with its tree parent (the task that discovered it
//! in the walk). All placers fill units in exactly this order, so a partial plan is always a prefix.

use crate::error::GraphError;
use crate::graph::{Call, CallGraph, TaskId, TreeEdge};
use crate::network::Network;

/// One replica of one task, in placement order.
#[derive(Debug, Clone, Copy)]
pub struct Unit {
    pub task: TaskId,
    pub replica: u32,
    /// The task that discovered this one in the breadth-first walk, and the call between them.
    pub parent: Option<TreeEdge>,
}

/// A call seen from one of its ends.
#[derive(Debug, Clone, Copy)]
pub struct Partner {
    /// The task at the other end.
    pub task: TaskId,
    pub call: Call,
    /// The call's traffic divided among the pairs of replicas of both ends, in Mbit/s.
    pub share: f64,
}

/// A task below another in the breadth-first tree, for lookahead.
#[derive(Debug, Clone, Copy)]
pub struct Descendant {
    pub task: TaskId,
    /// Position of its tree parent in the same list; 0 is the task whose subtree this is.
    pub parent: usize,
    /// Traffic share of the call from its tree parent, per pair of replicas.
    pub share: f64,
}

/// How many descendants lookahead considers per task.
pub const LOOKAHEAD: usize = 63;

/// A validated graph and network, with units in breadth-first order.
#[derive(Debug)]
pub struct Problem<'a> {
    pub graph: &'a CallGraph,
    pub net: &'a Network,
    units: Vec<Unit>,
    /// Per task index, the position of its replica 0 in `units`.
    first_unit: Vec<usize>,
    /// Per task index, its calls in both directions, heaviest share first.
    partners: Vec<Vec<Partner>>,
    /// Per task index, its breadth-first subtree (itself first), at most `LOOKAHEAD + 1` long.
    subtrees: Vec<Vec<Descendant>>,
}

impl<'a> Problem<'a> {
    pub fn new(graph: &'a CallGraph, net: &'a Network) -> Result<Self, GraphError> {
        graph.validate()?;
        let mut units = Vec::new();
        let mut first_unit = vec![usize::MAX; graph.task_count()];
        for (task, parent) in graph.bfs()? {
            first_unit[task.index()] = units.len();
            for replica in 0..graph.task(task).replicas {
                units.push(Unit {
                    task,
                    replica,
                    parent,
                });
            }
        }
        let partners = graph
            .tasks()
            .map(|(id, t)| {
                let mut v: Vec<Partner> = graph
                    .incident(id)
                    .map(|(other, call)| Partner {
                        task: other,
                        call: *call,
                        share: call.traffic_mbps
                            / (f64::from(t.replicas) * f64::from(graph.task(other).replicas)),
                    })
                    .collect();
                v.sort_by(|a, b| b.share.total_cmp(&a.share));
                v
            })
            .collect();
        let order = graph.bfs()?;
        let mut children: Vec<Vec<(TaskId, f64)>> = vec![Vec::new(); graph.task_count()];
        for (task, parent) in &order {
            if let Some((p, call)) = parent {
                let reps = graph.task(*p).replicas * graph.task(*task).replicas;
                children[p.index()].push((*task, call.traffic_mbps / f64::from(reps)));
            }
        }
        let subtrees = graph
            .tasks()
            .map(|(id, _)| {
                let mut list = vec![Descendant {
                    task: id,
                    parent: 0,
                    share: 0.0,
                }];
                let mut i = 0;
                while i < list.len() && list.len() <= LOOKAHEAD {
                    for &(c, share) in &children[list[i].task.index()] {
                        if list.len() <= LOOKAHEAD {
                            list.push(Descendant {
                                task: c,
                                parent: i,
                                share,
                            });
                        }
                    }
                    i += 1;
                }
                list
            })
            .collect();
        Ok(Self {
            graph,
            net,
            units,
            first_unit,
            partners,
            subtrees,
        })
    }

    /// `task` and the tasks below it in the breadth-first tree, each after its tree parent.
    pub fn subtree(&self, task: TaskId) -> &[Descendant] {
        &self.subtrees[task.index()]
    }

    /// Calls of `task` in both directions, heaviest share first.
    pub fn partners(&self, task: TaskId) -> &[Partner] {
        &self.partners[task.index()]
    }

    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    /// Position in the unit order of replica `replica` of `task`.
    pub fn unit_of(&self, task: TaskId, replica: u32) -> usize {
        self.first_unit[task.index()] + replica as usize
    }

    /// Positions of all replicas of `task`.
    pub fn units_of(&self, task: TaskId) -> std::ops::Range<usize> {
        let first = self.first_unit[task.index()];
        first..first + self.graph.task(task).replicas as usize
    }
}
