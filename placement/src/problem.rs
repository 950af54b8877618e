//! A placement problem: a call graph and a network, unrolled into the order placement works in.
//!
//! Every replica of every task is one *unit*. Units are listed breadth-first from the root, the
//! replicas of a task next to each other, each with its tree parent (the task that discovered it
//! in the walk). All placers fill units in exactly this order, so a partial plan is always a prefix.

use crate::error::GraphError;
use crate::graph::{Call, CallGraph, TaskId};
use crate::network::Network;

/// One replica of one task, in placement order.
#[derive(Debug, Clone, Copy)]
pub struct Unit {
    pub task: TaskId,
    pub replica: u32,
    /// The task that discovered this one in the breadth-first walk, and the call between them.
    pub parent: Option<(TaskId, Call)>,
}

/// A validated graph and network, with units in breadth-first order.
#[derive(Debug)]
pub struct Problem<'a> {
    pub graph: &'a CallGraph,
    pub net: &'a Network,
    units: Vec<Unit>,
    /// Per task index, the position of its replica 0 in `units`.
    first_unit: Vec<usize>,
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
        Ok(Self {
            graph,
            net,
            units,
            first_unit,
        })
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
