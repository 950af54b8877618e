//! `brume testnet up` and `join`: node containers started from the node image, attached to the
//! background router, and joined through one another.
//!
//! Each container has `--network none`: its own network namespace holding only loopback until
//! the router gives it the `brume0` TUN device with its address, so every packet between nodes
//! takes the router's delay. The node binds its address before the device exists
//! (`net.ipv4.ip_nonlocal_bind=1`, a per-namespace sysctl Docker sets), and a node whose first
//! join fails rejoins with backoff, so the start order needs no handshake.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::ask::node_json;
use super::docker::{self, docker, NET_LABEL};
use super::router_proc;
use super::state::{NetState, NodeState, RttSource, NODE_PORT};
use crate::addr::Subnet;
use crate::{netns, testbed};

/// What `up` was asked for.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub name: String,
    pub nodes: usize,
    pub rtt: RttSource,
    pub image: String,
    /// How long to wait for every node to have joined (0: do not wait).
    pub wait: Duration,
    /// Extra labels for every container (`key=value`; tests add `brume.test=...`).
    pub labels: Vec<String>,
    /// Extra arguments of every `brume node` (e.g. `--cpu-millis=150`).
    pub node_args: Vec<String>,
    /// Run each node as a process in a namespace instead of a container (no Docker needed).
    pub processes: bool,
}

/// Starts a testnet and returns its state and, when waited for, how long joining took.
pub fn up(opts: &UpOptions) -> anyhow::Result<(NetState, Option<Duration>)> {
    netns::require_root()?;
    if opts.processes {
        super::procs::brume()?;
    } else {
        docker::require()?;
    }
    let started = Instant::now();
    validate_name(&opts.name)?;
    anyhow::ensure!(
        opts.nodes >= 1 && opts.nodes <= opts.rtt.capacity(),
        "--nodes {}: the RTT source has {} nodes",
        opts.nodes,
        opts.rtt.capacity()
    );
    if !opts.processes && !docker::image_exists(&opts.image) {
        bail!(
            "no image {}: build the node image first with scripts/node-image.sh (offline, \
             about a minute once brume is built)",
            opts.image
        );
    }
    let dir = NetState::dir_of(&opts.name);
    if dir.join("state.json").exists() {
        bail!(
            "testnet `{}` is up already (`brume testnet ps --name {0}`; \
             `brume testnet down --name {0}` removes it)",
            opts.name
        );
    }
    let leftovers = if opts.processes {
        Vec::new()
    } else {
        docker::containers_of(&opts.name)?
    };
    anyhow::ensure!(
        leftovers.is_empty(),
        "containers of a testnet `{}` exist without its state ({}): `brume testnet down --name {0}`",
        opts.name,
        leftovers.join(", ")
    );
    let tag = testbed::claim_tag()?;
    let mut state = NetState {
        name: opts.name.clone(),
        tag,
        subnet_octet: Subnet::random().octet(),
        image: opts.image.clone(),
        rtt: opts.rtt.clone(),
        nodes: Vec::new(),
        router_pid: None,
        partition: Vec::new(),
        node_args: opts.node_args.clone(),
        processes: opts.processes,
        brume: if opts.processes {
            Some(super::procs::brume()?)
        } else {
            None
        },
    };
    // From here on, a failure removes what was made.
    let made = (|| -> anyhow::Result<()> {
        state.save()?;
        if opts.processes {
            // Namespaces, then the router, then the nodes: every first join finds its route.
            let args: Vec<Vec<String>> = (0..opts.nodes)
                .map(|_| prepare_process_node(&mut state))
                .collect::<anyhow::Result<_>>()?;
            state.save()?;
            state.router_pid = Some(router_proc::spawn(&state)?);
            state.save()?;
            for (i, a) in args.iter().enumerate() {
                state.nodes[i].pid = super::procs::start(&state, i, a)?;
                state.save()?;
                // Each node listens before the next dials it: a node whose bootstrap refused
                // it, and that another newcomer then reached, would never dial its bootstrap
                // again (it rejoins only when alone), leaving the first node on its own.
                wait_answers(&state, i, Duration::from_secs(60))?;
            }
            return Ok(());
        }
        for _ in 0..opts.nodes {
            start_node(&mut state, &opts.labels)?;
        }
        state.save()?;
        state.router_pid = Some(router_proc::spawn(&state)?);
        state.save()
    })();
    if let Err(e) = made {
        let _ = super::ops::down(&opts.name);
        return Err(e);
    }
    let joined = if opts.wait.is_zero() {
        None
    } else {
        wait_joined(&state, opts.wait)?;
        Some(started.elapsed())
    };
    Ok((state, joined))
}

/// Adds one node to a running testnet (joining through node 0 and the newest node).
pub fn join(name: &str, labels: &[String], wait: Duration) -> anyhow::Result<usize> {
    let mut state = NetState::load(name)?;
    anyhow::ensure!(
        state.nodes.len() < state.rtt.capacity(),
        "the RTT matrix of testnet `{name}` has {} rows: no RTTs for another node",
        state.rtt.capacity()
    );
    let i = if state.processes {
        let args = prepare_process_node(&mut state)?;
        let i = state.nodes.len() - 1;
        state.save()?;
        router_proc::ask(&state, "reload")?;
        state.nodes[i].pid = super::procs::start(&state, i, &args)?;
        state.save()?;
        i
    } else {
        let i = start_node(&mut state, labels)?;
        state.save()?;
        router_proc::ask(&state, "reload")?;
        i
    };
    if !wait.is_zero() {
        wait_joined(&state, wait)?;
    }
    Ok(i)
}

/// `docker run`s node `nodes.len()` and records it.
fn start_node(state: &mut NetState, labels: &[String]) -> anyhow::Result<usize> {
    anyhow::ensure!(
        !state.processes,
        "a process node starts through prepare_process_node"
    );
    let i = state.nodes.len();
    let container = format!("brume-tn-{}-{i}", state.name);
    let addr = state.subnet().host(i);
    let node_dir = state.node_dir(i);
    std::fs::create_dir_all(&node_dir).with_context(|| format!("create {}", node_dir.display()))?;
    let net_label = format!("{NET_LABEL}={}", state.name);
    let index_label = format!("brume.testnet.node={i}");
    let mount = format!("{}:/run/brume", node_dir.display());
    let listen = format!("/ip4/{addr}/tcp/{NODE_PORT}");
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &container,
        "--hostname",
        &container,
        "--label",
        &net_label,
        "--label",
        &index_label,
        "--network",
        "none",
        "--sysctl",
        "net.ipv4.ip_nonlocal_bind=1",
        "-v",
        &mount,
    ];
    // The process engine forks CRIU tasks into PID and mount namespaces of their own (mounts,
    // device nodes, pivot_root) and CRIU dumps and
    // restores them (ptrace, /proc/*/map_files, namespaces, userfaultfd that Docker's seccomp
    // profile denies): that takes a privileged container (see caps.rs for why not
    // `--privileged` itself).
    let privileges = super::caps::docker_args();
    args.extend(privileges.iter().map(String::as_str));
    for l in labels {
        args.extend(["--label", l.as_str()]);
    }
    let mut joins = Vec::new();
    for j in [0, i.saturating_sub(1)] {
        if j < i && !joins.contains(&j) {
            joins.push(j);
        }
    }
    let join_addrs: Vec<String> = joins
        .iter()
        .map(|&j| format!("/ip4/{}/tcp/{NODE_PORT}", state.nodes[j].addr))
        .collect();
    args.extend([
        state.image.as_str(),
        "node",
        "--listen",
        &listen,
        "--control",
        "/run/brume/control.sock",
        "--data-dir",
        "/var/lib/brume",
        "--engine",
        "process",
        "--name",
        &container,
    ]);
    let defaults = defaults_not_given(&state.node_args);
    args.extend(defaults.iter().map(String::as_str));
    for a in &join_addrs {
        args.extend(["--join", a.as_str()]);
    }
    let node_args = state.node_args.clone();
    args.extend(node_args.iter().map(String::as_str));
    docker(&args)?;
    let pid = docker::pid_of(&container)?;
    state.nodes.push(NodeState {
        container,
        addr,
        pid,
        killed: false,
    });
    Ok(i)
}

/// Records node `nodes.len()` as a process node, creates its namespace and returns its
/// `brume node` arguments (it starts once the router has attached the namespace).
fn prepare_process_node(state: &mut NetState) -> anyhow::Result<Vec<String>> {
    let i = state.nodes.len();
    let name = format!("brume-tn-{}-{i}", state.name);
    let addr = state.subnet().host(i);
    let mut args: Vec<String> = vec![
        "--listen".into(),
        format!("/ip4/{addr}/tcp/{NODE_PORT}"),
        "--engine".into(),
        "process".into(),
        "--name".into(),
        name.clone(),
    ];
    args.extend(defaults_not_given(&state.node_args));
    for j in [0, i.saturating_sub(1)] {
        let join = format!(
            "/ip4/{}/tcp/{NODE_PORT}",
            state.nodes.get(j).map_or(addr, |n| n.addr)
        );
        if j < i && !args.contains(&join) {
            args.push("--join".into());
            args.push(join);
        }
    }
    args.extend(state.node_args.iter().cloned());
    // Recorded before anything is made, so that `down` cleans up after a failure.
    state.nodes.push(NodeState {
        container: name,
        addr,
        pid: 0,
        killed: false,
    });
    super::procs::prepare(state, i)?;
    Ok(args)
}

/// Flags a testnet gives every node unless `up --node-arg` gives them (a node refuses a flag
/// given twice): pings every second, so a fresh testnet's RTTs settle within seconds.
const NODE_DEFAULTS: [(&str, &str); 1] = [("--ping-interval-ms", "1000")];

/// The [`NODE_DEFAULTS`] that `node_args` does not set, as arguments.
fn defaults_not_given(node_args: &[String]) -> Vec<String> {
    let given = |flag: &str| {
        node_args
            .iter()
            .any(|a| a == flag || a.strip_prefix(flag).is_some_and(|v| v.starts_with('=')))
    };
    NODE_DEFAULTS
        .iter()
        .filter(|(flag, _)| !given(flag))
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect()
}

/// Testnet names end up in container names and paths: keep them plain.
fn validate_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    anyhow::ensure!(ok, "testnet name `{name}`: use 1-40 of a-z, 0-9 and '-'");
    Ok(())
}

/// Waits until process node `i` answers on its control socket (it listens on its address by
/// then); fails at once if it exited, and with the tail of its log either way.
fn wait_answers(state: &NetState, i: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let exited = !super::procs::alive(state.nodes[i].pid);
        match node_json(state, i, "status") {
            Ok(_) => return Ok(()),
            Err(e) if exited || Instant::now() > deadline => {
                let why = if exited {
                    "exited".to_string()
                } else {
                    format!("did not answer within {limit:?}")
                };
                let log = state.node_dir(i).join("node.log");
                return Err(e.context(format!(
                    "node {i} {why}; the end of {}:\n{}",
                    log.display(),
                    log_tail(&log, 20)
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The last `lines` lines of the file at `path`, or why it cannot be read.
fn log_tail(path: &std::path::Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(unreadable: {e})"),
    }
}

/// Waits until every live node answers, has a peer, and the overlay among them is connected.
pub fn wait_joined(state: &NetState, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let why = match overlay_of(state) {
            Ok(graph) if connected(&graph) => return Ok(()),
            Ok(graph) => format!("the overlay is not connected yet: {graph:?}"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!(
                "the nodes of testnet `{}` did not join within {limit:?}: {why} (it stays up: \
                 `brume testnet ps --name {0}`, node logs with `docker logs` or in \
                 node-<i>/node.log of the state directory, then `brume testnet down --name {0}`)",
                state.name
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Live node index -> the live nodes it has as overlay peers.
pub fn overlay_of(state: &NetState) -> anyhow::Result<BTreeMap<usize, BTreeSet<usize>>> {
    let live: Vec<usize> = (0..state.nodes.len())
        .filter(|&i| !state.nodes[i].killed)
        .collect();
    let mut ids = BTreeMap::new();
    for &i in &live {
        let s = node_json(state, i, "status")?;
        let id = s["peer_id"].as_str().context("status without peer_id")?;
        ids.insert(id.to_string(), i);
    }
    let mut graph = BTreeMap::new();
    for &i in &live {
        let peers = node_json(state, i, "peers")?;
        let set = peers
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| ids.get(p["peer_id"].as_str()?).copied())
            .collect();
        graph.insert(i, set);
    }
    Ok(graph)
}

/// Whether every node reaches every other over the (undirected) peer graph.
fn connected(graph: &BTreeMap<usize, BTreeSet<usize>>) -> bool {
    let Some(&first) = graph.keys().next() else {
        return true;
    };
    let mut seen = BTreeSet::from([first]);
    let mut todo = vec![first];
    while let Some(i) = todo.pop() {
        let out = graph.get(&i).into_iter().flatten().copied();
        let inbound = graph
            .iter()
            .filter(|(_, s)| s.contains(&i))
            .map(|(&k, _)| k);
        for j in out.chain(inbound).collect::<Vec<_>>() {
            if seen.insert(j) {
                todo.push(j);
            }
        }
    }
    seen.len() == graph.len() && graph.values().all(|s| !s.is_empty() || graph.len() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_node_arg_overrides_the_testnets_default_in_either_form() {
        assert_eq!(
            defaults_not_given(&args(&["--cones=8"])),
            args(&["--ping-interval-ms", "1000"])
        );
        assert!(defaults_not_given(&args(&["--ping-interval-ms=500"])).is_empty());
        assert!(defaults_not_given(&args(&["--ping-interval-ms", "500"])).is_empty());
        // A flag that only starts like the default's is not it.
        assert_eq!(
            defaults_not_given(&args(&["--ping-interval-msx=5"])),
            args(&["--ping-interval-ms", "1000"])
        );
    }

    #[test]
    fn a_log_tail_is_its_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.log");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&path, 2), "b\nc");
        assert_eq!(log_tail(&path, 9), "a\nb\nc");
        assert!(log_tail(&dir.path().join("none"), 2).starts_with("(unreadable"));
    }
}
