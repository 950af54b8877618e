//! A few real `brume node` daemons on loopback, for benchmarks and tests: the same binary an
//! operator runs, each with its own data directory and control socket under one temporary
//! directory, node `i > 0` joining through node 0.
//!
//! Dropping a [`LocalNet`] stops its daemons the way an operator would (SIGTERM, so each stops
//! the tasks it runs), kills any that linger, and removes the work they left in tmpfs.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

mod daemon;
use daemon::Daemon;

/// The latency budget test commands map within (see [`LocalNet::brume`]).
pub const TEST_BUDGET: &str = "5s";

pub struct LocalNet {
    dir: tempfile::TempDir,
    bin: PathBuf,
    nodes: Vec<Daemon>,
    /// The work files of daemons replaced by a restart, removed when the net ends.
    left: Vec<PathBuf>,
    /// How each node was started (to restart it, and for a restarted node to join through).
    started: Vec<Started>,
    /// Each daemon's log goes to [`LocalNet::log`] rather than this program's stderr.
    logged: bool,
    /// The daemons' `--log` filter.
    log_filter: String,
}

/// A node's extra arguments, environment and first listen address.
type Started = (Vec<String>, Vec<(OsString, OsString)>, String);

/// The links node 0's map must hold before a net of `n` counts as started. Placement draws
/// over links, not nodes: a map that already lists every node but not yet the link between
/// two of them made a deploy right after the start fail with "every draw ended at a dead end"
/// (a chain of three on three nodes, seen once in the suite). Up to the overlay's minimum
/// degree plus one (4 + 1) every node links to every other, so the whole mesh; beyond it, a
/// spanning tree's worth.
fn links_wanted(n: usize) -> usize {
    if n <= 5 {
        n * n.saturating_sub(1) / 2
    } else {
        n - 1
    }
}

impl LocalNet {
    /// Starts `n` daemons of `bin` with `args` added to each `brume node` command line, and
    /// waits (up to 60 s, generous for a loaded machine) until node 0 is connected to all the others
    /// and its map within [`TEST_BUDGET`] holds them all.
    pub fn start(bin: &Path, n: usize, args: &[&str]) -> anyhow::Result<LocalNet> {
        Self::start_with_env(bin, n, args, &|_| Vec::new())
    }

    /// [`LocalNet::start`], each daemon's log written to [`LocalNet::log`] (a bench reads what
    /// the nodes report there).
    pub fn start_logged(bin: &Path, n: usize, args: &[&str]) -> anyhow::Result<LocalNet> {
        Self::start_inner(bin, n, args, &|_| Vec::new(), true, "warn")
    }

    /// [`LocalNet::start_logged`] with the daemons' `--log` filter `filter` instead of `warn`
    /// (a bench that reads an info line of one module, e.g. `warn,brume::migrate=info`).
    pub fn start_logged_with_filter(
        bin: &Path,
        n: usize,
        args: &[&str],
        filter: &str,
    ) -> anyhow::Result<LocalNet> {
        Self::start_inner(bin, n, args, &|_| Vec::new(), true, filter)
    }

    /// [`LocalNet::start`], with `env(i)` added to node `i`'s environment (a test's fault
    /// injection, e.g. a `PATH` that finds a wrapper first).
    pub fn start_with_env(
        bin: &Path,
        n: usize,
        args: &[&str],
        env: &dyn Fn(usize) -> Vec<(OsString, OsString)>,
    ) -> anyhow::Result<LocalNet> {
        Self::start_inner(bin, n, args, env, false, "warn")
    }

    fn start_inner(
        bin: &Path,
        n: usize,
        args: &[&str],
        env: &dyn Fn(usize) -> Vec<(OsString, OsString)>,
        logged: bool,
        log_filter: &str,
    ) -> anyhow::Result<LocalNet> {
        let dir = tempfile::Builder::new()
            .prefix("brume-localnet-")
            .tempdir()
            .context("cannot make a temporary directory")?;
        let mut net = LocalNet {
            dir,
            bin: bin.to_path_buf(),
            nodes: Vec::new(),
            left: Vec::new(),
            started: Vec::new(),
            logged,
            log_filter: log_filter.to_string(),
        };
        let first = net.spawn(0, args, &env(0), None)?;
        for i in 1..n {
            net.spawn(i, args, &env(i), Some(&first))?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let peers = net
                .brume(0, &["peers", "--json"])
                .ok()
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .and_then(|v| v.as_array().map(Vec::len))
                .unwrap_or(0);
            let (nodes, links) = net.map_counts(0);
            if peers + 1 >= n && nodes >= n && links >= links_wanted(n) {
                return Ok(net);
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the {n} daemons did not connect and map within 60 s (node 0 sees {peers} \
                     peers, its map {nodes} nodes and {links} links of {} wanted)",
                    links_wanted(n)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(
        &mut self,
        i: usize,
        args: &[&str],
        env: &[(OsString, OsString)],
        join: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .args(["node", "--listen", "/ip4/127.0.0.1/tcp/0", "--log"])
            .arg(&self.log_filter)
            .args(args)
            .arg("--control")
            .arg(self.sock(i))
            .arg("--data-dir")
            .arg(self.data(i))
            .stdout(Stdio::piped())
            .stderr(if self.logged {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.log(i))
                    .with_context(|| format!("cannot open {}", self.log(i).display()))?;
                Stdio::from(log)
            } else {
                Stdio::inherit()
            });
        if let Some(a) = join {
            cmd.args(["--join", a]);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let out = child.stdout.take().context("daemon stdout not piped")?;
        if i < self.nodes.len() {
            let old = std::mem::replace(&mut self.nodes[i], Daemon::new(child));
            self.left.extend(old.retire());
        } else {
            self.nodes.push(Daemon::new(child));
        }
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .context("the daemon printed no address")?;
        let addr = line
            .split_whitespace()
            .nth(1)
            .map(str::to_string)
            .with_context(|| format!("node {i} did not start (it printed {line:?})"))?;
        let record = (
            args.iter().map(|a| a.to_string()).collect(),
            env.to_vec(),
            addr.clone(),
        );
        if i < self.started.len() {
            self.started[i] = record;
        } else {
            self.started.push(record);
        }
        Ok(addr)
    }

    /// Kills node `i` with SIGKILL, as a crash or a pulled plug would (it stops nothing; its
    /// process-engine tasks die with it: they carry the parent-death signal), and waits until
    /// it is gone (reaped: the drop then leaves it alone, so no reused pid is signalled).
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let child = self.nodes.get_mut(i).context("no such node")?;
        child.kill().context("cannot kill and reap the daemon")?;
        Ok(())
    }

    /// Starts node `i` again (after [`LocalNet::kill`] or [`LocalNet::stop`]) with the same
    /// data directory, control socket and arguments, listening on a port of its own and
    /// joining through another node; returns once it printed its address.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<String> {
        let (args, env, _) = self.started.get(i).cloned().context("no such node")?;
        let through = (0..self.started.len())
            .find(|&j| j != i)
            .map(|j| self.started[j].2.clone());
        let _ = std::fs::remove_file(self.sock(i));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(i, &args, &env, through.as_deref())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn sock(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.sock"))
    }

    pub fn data(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}"))
    }

    /// Node `i`'s log, for a net started with [`LocalNet::start_logged`].
    pub fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.log"))
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes.get(i).map(Daemon::id)
    }

    /// Runs `brume ARGS --control <node i's socket>`.
    pub fn brume(&self, i: usize, args: &[&str]) -> std::io::Result<Output> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).arg("--control").arg(self.sock(i));
        // Placing and moving read a latency-bounded map, and a latency bound is a timing bound:
        // on one loaded host a ping can take longer than the 80 ms default and drop a node from
        // the map, failing a test that is not about latency. Unless the test gives a budget,
        // these commands map within TEST_BUDGET, which no loopback round trip reaches.
        let maps = matches!(args.first(), Some(&("deploy" | "migrate" | "drain")));
        if maps && !args.contains(&"--budget") {
            cmd.args(["--budget", TEST_BUDGET]);
        }
        cmd.output()
    }

    /// How many nodes node `i`'s fresh map within [`TEST_BUDGET`] holds (0 if it cannot say).
    /// Every node needs a measured round trip to be mapped, so this is what "ready to place"
    /// means, beyond "connected".
    pub fn map_size(&self, i: usize) -> usize {
        self.map_counts(i).0
    }

    /// The nodes and links of node `i`'s fresh map (0 and 0 when it cannot be read).
    pub fn map_counts(&self, i: usize) -> (usize, usize) {
        let map = self
            .brume(i, &["map", "--json", "--fresh", "--budget", TEST_BUDGET])
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
        let count = |key: &str| {
            map.as_ref()
                .and_then(|v| v[key].as_array().map(Vec::len))
                .unwrap_or(0)
        };
        (count("nodes"), count("links"))
    }

    /// Stops node `i` as an operator would (SIGTERM) and waits up to `limit` for it to exit;
    /// whether it did.
    pub fn stop(&mut self, i: usize, limit: Duration) -> bool {
        let Some(child) = self.nodes.get_mut(i) else {
            return false;
        };
        child.terminate();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if child.try_wait().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Whether every daemon is still running.
    pub fn alive(&mut self) -> bool {
        self.nodes.iter_mut().all(|c| c.try_wait().is_none())
    }
}

impl Drop for LocalNet {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            c.terminate();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for c in &mut self.nodes {
            while Instant::now() < deadline && c.try_wait().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Every daemon reaped now, each with the names of the work it left (what its failed
        // moves kept in tmpfs on purpose, or a dead one's staging) taken at its reap.
        let mut left = std::mem::take(&mut self.left);
        for c in self.nodes.drain(..) {
            left.extend(c.retire());
        }
        crate::leftovers::remove(left);
    }
}
