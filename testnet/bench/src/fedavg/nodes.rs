//! Where the fedavg bench's nodes run: `brume node` daemons on this machine's loopback
//! ([`LocalNet`]), or the node containers of a `brume testnet` (issue 16's "testnet up, then
//! deploy from one node"), each a device with its own network namespace behind the testnet's
//! router, which delays every packet by the pair's RTT.
//!
//! A run asks both the same things (a `brume` command on node `i`, kill node `i`, node `i`'s log,
//! one line to a task's port on node `i`), so `run.rs` reads the same either way. In the
//! testnet, `brume` commands reach a node's control socket through the directory the container
//! mounts at `/run/brume`; only `deploy` runs inside node 0 (`docker exec`), because the daemon
//! reads the manifest and its build contexts by path, and the container sees its own files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::Context;
use brume_testnet::containers::state::{NetState, RttSource};
use brume_testnet::containers::{docker, ops, procs, up};
use brume_testnet::localnet::LocalNet;
use brume_testnet::netns;

/// The budget of the maps `deploy` and `migrate` place on in the testnet: wide enough for every
/// node at the testnet's RTTs on a loaded machine (the router is a userspace process), so the
/// run measures the service, not which node a slow ping left out.
const TESTNET_BUDGET: &str = "1s";

/// How to reach the node containers of a testnet.
pub struct Testnet {
    state: NetState,
    exe: PathBuf,
    /// Where the run's manifest is written: node 0's `/run/brume`, seen from this machine.
    svc: PathBuf,
}

impl Drop for Testnet {
    /// `brume testnet down`: containers, router, namespaces and state, also after a failure.
    fn drop(&mut self) {
        if let Err(e) = ops::down(&self.state.name) {
            eprintln!("testnet {}: down failed: {e:#}", self.state.name);
        }
    }
}

/// What a testnet run is started with.
#[derive(Debug, Clone)]
pub struct TestnetPlan {
    /// The testnet's name (unique on this machine for the run).
    pub name: String,
    /// The node image (scripts/node-image.sh's tag).
    pub image: String,
    pub rtt: RttSource,
    /// Labels on every container (a test adds `brume.test=<run>` for the sweep).
    pub labels: Vec<String>,
}

/// The nodes of one run.
pub enum Nodes {
    Local(LocalNet),
    Testnet(Testnet),
}

impl Nodes {
    /// Starts `n` nodes with `args` added to every `brume node`, and returns once node 0's map
    /// holds them all.
    pub fn start(
        exe: &Path,
        n: usize,
        args: &[&str],
        testnet: Option<&TestnetPlan>,
    ) -> anyhow::Result<Nodes> {
        let Some(plan) = testnet else {
            return Ok(Nodes::Local(LocalNet::start_logged(exe, n, args)?));
        };
        let opts = up::UpOptions {
            name: plan.name.clone(),
            nodes: n,
            rtt: plan.rtt.clone(),
            image: plan.image.clone(),
            wait: Duration::from_secs(180),
            labels: plan.labels.clone(),
            node_args: args.iter().map(|a| a.to_string()).collect(),
            processes: false,
        };
        let (state, _) = up::up(&opts)?;
        let svc = state.node_dir(0).join("svc");
        let nodes = Nodes::Testnet(Testnet {
            state,
            exe: exe.to_path_buf(),
            svc,
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        while nodes.map_size(0) < n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "node 0 of the testnet did not map all {n} nodes within 120 s (it maps {})",
                nodes.map_size(0)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(nodes)
    }

    /// Node `i`'s control socket, as seen from this machine.
    pub fn sock(&self, i: usize) -> PathBuf {
        match self {
            Nodes::Local(net) => net.sock(i),
            Nodes::Testnet(t) => procs::control(&t.state, i),
        }
    }

    /// Runs `brume ARGS --control <node i's socket>` (on the testnet, `deploy` and `migrate` map
    /// within [`TESTNET_BUDGET`] unless given a budget).
    pub fn brume(&self, i: usize, args: &[&str]) -> std::io::Result<Output> {
        match self {
            Nodes::Local(net) => net.brume(i, args),
            Nodes::Testnet(t) => {
                let mut cmd = Command::new(&t.exe);
                cmd.args(args).arg("--control").arg(self.sock(i));
                if matches!(args.first(), Some(&("deploy" | "migrate")))
                    && !args.contains(&"--budget")
                {
                    cmd.args(["--budget", TESTNET_BUDGET]);
                }
                cmd.output()
            }
        }
    }

    /// Where a run writes its manifest and build contexts.
    pub fn service_dir(&self) -> PathBuf {
        match self {
            Nodes::Local(net) => net.dir().join("svc"),
            Nodes::Testnet(t) => t.svc.clone(),
        }
    }

    /// `brume deploy <manifest> --json` from node 0; `manifest` lies in [`Nodes::service_dir`].
    pub fn deploy(&self, manifest: &Path) -> anyhow::Result<Output> {
        match self {
            Nodes::Local(net) => {
                Ok(net.brume(0, &["deploy", &manifest.to_string_lossy(), "--json"])?)
            }
            Nodes::Testnet(t) => {
                let inside = Path::new("/run/brume/svc").join(
                    manifest
                        .strip_prefix(&t.svc)
                        .context("the manifest is not in the service directory")?,
                );
                docker::run(&[
                    "exec",
                    &t.state.nodes[0].container,
                    "brume",
                    "deploy",
                    &inside.to_string_lossy(),
                    "--control",
                    "/run/brume/control.sock",
                    "--budget",
                    TESTNET_BUDGET,
                    "--json",
                ])
            }
        }
    }

    /// Kills node `i` as a crash would (SIGKILL of the daemon, or of its container).
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        match self {
            Nodes::Local(net) => net.kill(i),
            Nodes::Testnet(t) => {
                ops::kill(&t.state.name, &i.to_string())?;
                Ok(())
            }
        }
    }

    /// What node `i` has logged so far.
    pub fn log_text(&self, i: usize) -> String {
        match self {
            Nodes::Local(net) => std::fs::read_to_string(net.log(i)).unwrap_or_default(),
            Nodes::Testnet(t) => docker::run(&["logs", &t.state.nodes[i].container])
                .map(|o| {
                    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&o.stderr));
                    text
                })
                .unwrap_or_default(),
        }
    }

    /// Runs `f` where a task on node `i` is reachable at the address `brume ps` shows: this
    /// machine for loopback daemons, node `i`'s network namespace in the testnet.
    pub fn near<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        match self {
            Nodes::Local(_) => Ok(f()),
            Nodes::Testnet(t) => Ok(netns::run_in(&netns::name(&t.state.tag, i), f)?),
        }
    }

    /// How many nodes node `i`'s fresh map holds (0 if it cannot say).
    fn map_size(&self, i: usize) -> usize {
        self.brume(i, &["map", "--json", "--fresh", "--budget", TESTNET_BUDGET])
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v["nodes"].as_array().map(Vec::len))
            .unwrap_or(0)
    }
}
