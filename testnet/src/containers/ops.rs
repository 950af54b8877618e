//! `brume testnet ps | kill | partition | heal | down`.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::ask::node_json;
use super::docker::{self, docker};
use super::router_proc;
use super::state::{NetState, NODE_PORT};
use crate::netns;

/// One line of `ps`.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub index: usize,
    pub container: String,
    pub addr: String,
    pub peer_id: String,
    pub status: String,
}

/// The nodes of testnet `name`, asking each running one for its peer id.
pub fn ps(name: &str) -> anyhow::Result<Vec<NodeRow>> {
    let state = NetState::load(name)?;
    Ok((0..state.nodes.len())
        .map(|i| {
            let node = &state.nodes[i];
            let status = if state.processes {
                let up = super::procs::alive(node.pid);
                (if up { "running" } else { "exited" }).to_string()
            } else {
                docker::status_of(&node.container)
            };
            let peer_id = if status == "running" {
                node_json(&state, i, "status")
                    .ok()
                    .and_then(|s| s["peer_id"].as_str().map(str::to_string))
            } else {
                None
            };
            NodeRow {
                index: i,
                container: node.container.clone(),
                addr: format!("{}:{NODE_PORT}", node.addr),
                peer_id: peer_id.unwrap_or_else(|| "-".into()),
                status,
            }
        })
        .collect())
}

/// Kills node `node`'s container (SIGKILL: a crash, not a shutdown). Its address stays routed
/// (to a namespace where nothing listens), as a dead device's would.
pub fn kill(name: &str, node: &str) -> anyhow::Result<usize> {
    let mut state = NetState::load(name)?;
    let i = state.node_index(node)?;
    if state.processes {
        super::procs::signal(state.nodes[i].pid, libc::SIGKILL);
    } else {
        docker(&["kill", &state.nodes[i].container])?;
    }
    state.nodes[i].killed = true;
    state.save()?;
    Ok(i)
}

/// Cuts the testnet into groups that cannot reach each other: each group is a comma list of
/// nodes (indices or names); the nodes no group names form one more group.
pub fn partition(name: &str, groups: &[String]) -> anyhow::Result<Vec<Vec<usize>>> {
    let mut state = NetState::load(name)?;
    let mut parts: Vec<Vec<usize>> = Vec::new();
    for g in groups {
        let mut part = Vec::new();
        for node in g.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let i = state.node_index(node)?;
            anyhow::ensure!(
                !parts.iter().flatten().chain(&part).any(|&k| k == i),
                "node {node} is in two groups"
            );
            part.push(i);
        }
        anyhow::ensure!(!part.is_empty(), "an empty group in `{g}`");
        parts.push(part);
    }
    let rest: Vec<usize> = (0..state.nodes.len())
        .filter(|i| !parts.iter().flatten().any(|k| k == i))
        .collect();
    if !rest.is_empty() {
        parts.push(rest);
    }
    anyhow::ensure!(
        parts.len() >= 2,
        "a partition needs two groups (e.g. `partition 0,1` cuts nodes 0 and 1 from the rest)"
    );
    state.partition = parts.clone();
    state.save()?;
    router_proc::ask(&state, "reload")?;
    Ok(parts)
}

/// Ends any partition.
pub fn heal(name: &str) -> anyhow::Result<()> {
    let mut state = NetState::load(name)?;
    state.partition.clear();
    state.save()?;
    router_proc::ask(&state, "reload").map(drop)
}

/// Removes everything testnet `name` made: the router process, the containers (by label, so
/// also those of a half-finished `up`), the attached namespaces, the owner marker and the
/// state directory. Safe to run again, and on a testnet whose state is gone. Returns the nodes
/// removed.
pub fn down(name: &str) -> anyhow::Result<Vec<String>> {
    let state = NetState::load(name).ok();
    if let Some(state) = state.as_ref().filter(|s| s.processes) {
        stop_processes(state);
        // What their failed moves kept in tmpfs (they were stopped just now).
        for node in &state.nodes {
            crate::leftovers::remove_daemon_work(node.pid);
        }
    }
    if let Some(state) = &state {
        if router_proc::ask(state, "stop").is_err() {
            if let Some(pid) = state.router_pid {
                // SAFETY: kill has no memory-safety preconditions; the pid is the router we
                // started (a stale pid of a reboot is in a fresh /run and never read).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        if let Some(pid) = state.router_pid {
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::path::Path::new(&format!("/proc/{pid}")).exists()
                && !is_zombie(pid)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let processes = state.as_ref().is_some_and(|s| s.processes);
    let containers = if processes {
        state
            .iter()
            .flat_map(|s| &s.nodes)
            .map(|n| n.container.clone())
            .collect()
    } else {
        docker::containers_of(name)?
    };
    if !containers.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(containers.iter().map(String::as_str));
        docker(&args)?;
    }
    if let Some(state) = &state {
        router_proc::detach_all(state);
        netns::remove_owner(&state.tag);
    }
    let dir = NetState::dir_of(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    Ok(containers)
}

/// SIGTERM to every node process (each stops its tasks), then SIGKILL to any left after 20 s.
fn stop_processes(state: &NetState) {
    for node in &state.nodes {
        super::procs::signal(node.pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while state.nodes.iter().any(|n| super::procs::alive(n.pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for node in &state.nodes {
        super::procs::signal(node.pid, libc::SIGKILL);
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}
