//! `brume-testnet` (also `brume testnet`): a local testnet of node containers with real delays
//! between them, a bare latency-emulating testbed of namespaces, or cleaning up after crashes.

use std::path::PathBuf;
use std::process::ExitCode;

use brume_testnet::latency::{LatencyModel, RttMatrix, SyntheticConfig, SyntheticInternet};
use brume_testnet::{Shaping, Testbed};
use clap::{Args, Parser, Subcommand};

/// A local testnet: N brume node containers, each with its own network namespace, joined
/// through one another, every pair's traffic delayed by a userspace router (the kernel has no
/// netem). Needs root and Docker, and the node image (scripts/node-image.sh).
///
///   brume testnet up --nodes 5 --latency 5ms..80ms --seed 1
///   brume testnet ps
///   docker exec brume-tn-default-0 brume peers --control /run/brume/control.sock
///   brume testnet partition 0,1      (nodes 0,1 cut from the rest)
///   brume testnet heal
///   brume testnet join               (one more node)
///   brume testnet kill 2
///   brume testnet down
///
/// `up --nodes N --processes` runs the nodes as processes in namespaces (no Docker).
/// `up --hosts N` (no --nodes) instead makes bare namespaces and routes in the foreground.
#[derive(Parser)]
#[command(name = "brume-testnet", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// With --nodes N: start a testnet of N node containers and return once they have joined.
    /// With --hosts N: create a bare testbed of namespaces, print its hosts, and route until
    /// Ctrl-C (then delete it).
    Up(Up),
    /// List the nodes of a testnet: index, container, address, peer id, status.
    Ps(NetName),
    /// Kill a node's container (SIGKILL, as a crash): `kill 2` or `kill brume-tn-default-2`.
    Kill {
        #[command(flatten)]
        net: NetName,
        /// The node: its index or container name.
        node: String,
    },
    /// Cut the testnet into groups that cannot reach each other: each argument is a comma list
    /// of nodes; the nodes no argument names form one more group (`partition 0,1` cuts nodes 0
    /// and 1 from the rest; `partition 0 1 2` isolates each of three nodes).
    Partition {
        #[command(flatten)]
        net: NetName,
        #[arg(required = true, value_name = "NODES")]
        groups: Vec<String>,
    },
    /// End the partition: every pair reachable again with its RTT.
    Heal(NetName),
    /// Add one node, joining through node 0 and the newest node.
    Join {
        #[command(flatten)]
        net: NetName,
        /// Seconds to wait for it to have joined (0: do not wait).
        #[arg(long, default_value_t = 120)]
        wait_s: u64,
        /// Extra label key=value for the container (repeatable).
        #[arg(long)]
        label: Vec<String>,
    },
    /// Remove everything a testnet made: containers, router, namespaces, state.
    Down(NetName),
    /// The router process of a testnet (started detached by `up`; not for people).
    #[command(hide = true)]
    Router(NetName),
    /// Delete leftover brume-* namespaces of crashed runs (live testbeds are kept).
    Cleanup {
        /// Also delete the namespaces of testbeds whose owning process is still running.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args)]
struct NetName {
    /// Which testnet (several can run at once).
    #[arg(long, default_value = "default")]
    name: String,
}

#[derive(Args)]
struct Up {
    /// Number of node containers of a testnet (needs Docker and the node image).
    #[arg(long, conflicts_with_all = ["hosts", "synthetic", "mbit"])]
    nodes: Option<usize>,
    /// RTT of each pair of nodes: one value (40ms) or a range (5ms..80ms) that each pair draws
    /// from with --seed (default 5ms..80ms).
    #[arg(
        long,
        value_name = "RANGE",
        conflicts_with = "rtt_matrix",
        requires = "nodes"
    )]
    latency: Option<String>,
    /// The testnet's name (containers are brume-tn-<name>-<i>).
    #[arg(long, default_value = "default")]
    name: String,
    /// The node image.
    #[arg(long, default_value = "brume-node:latest")]
    image: String,
    /// Seconds to wait for every node to have joined (0: return once they are started).
    #[arg(long, default_value_t = 120)]
    wait_s: u64,
    /// Extra label key=value for every container (repeatable).
    #[arg(long)]
    label: Vec<String>,
    /// An extra argument of every node's `brume node` command line (repeatable), e.g.
    /// --node-arg=--cpu-millis=150 to make each node hold one task of 100 mCPU. A node-arg
    /// overrides the testnet's own default for that flag (--ping-interval-ms 1000).
    #[arg(long, allow_hyphen_values = true, value_name = "ARG")]
    node_arg: Vec<String>,
    /// Run each node as a `brume node` process in a network namespace instead of a container
    /// (no Docker; the `brume` beside this program; tasks run on the host's process engine).
    #[arg(long, requires = "nodes")]
    processes: bool,
    /// Number of hosts of a bare testbed (default: the matrix's size; required with --synthetic).
    #[arg(long)]
    hosts: Option<usize>,
    /// N x N RTT matrix in ms (rows of whitespace-separated numbers; <= 0 = unmeasured, which
    /// makes the pair unreachable). With --hosts, the first hosts of the matrix are used.
    #[arg(long, value_name = "FILE", conflicts_with = "synthetic")]
    rtt_matrix: Option<PathBuf>,
    /// RTTs from brume's seeded synthetic Internet model (5 continents, 8 cities each).
    #[arg(long)]
    synthetic: bool,
    /// Seed of the synthetic model, or of the RTTs drawn from a --latency range.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Limit every host's link to this many Mbit/s in each direction.
    #[arg(long, value_name = "MBIT")]
    mbit: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Up(up) if up.nodes.is_some() => net::up(&up),
        Cmd::Up(up) => run_up(up),
        Cmd::Cleanup { all } => run_cleanup(all),
        Cmd::Ps(n) => net::ps(&n.name),
        Cmd::Kill { net: n, node } => net::kill(&n.name, &node),
        Cmd::Partition { net: n, groups } => net::partition(&n.name, &groups),
        Cmd::Heal(n) => net::heal(&n.name),
        Cmd::Join {
            net: n,
            wait_s,
            label,
        } => net::join(&n.name, &label, wait_s),
        Cmd::Down(n) => net::down(&n.name),
        Cmd::Router(n) => {
            brume_testnet::containers::router_proc::serve(&n.name).map_err(|e| format!("{e:#}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("brume-testnet: {msg}");
            ExitCode::FAILURE
        }
    }
}

mod net;

fn run_cleanup(all: bool) -> Result<(), String> {
    let report = brume_testnet::cleanup(all).map_err(|e| e.to_string())?;
    for name in &report.removed {
        println!("removed {name}");
    }
    for name in &report.kept {
        println!("kept {name} (its testbed's process is running; --all removes it)");
    }
    for (name, why) in &report.failed {
        eprintln!("failed {name}: {why}");
    }
    if report.removed.is_empty() && report.kept.is_empty() && report.failed.is_empty() {
        println!("no brume-* namespaces");
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} namespaces not removed", report.failed.len()))
    }
}

fn run_up(up: Up) -> Result<(), String> {
    let model: Box<dyn LatencyModel> = match (&up.rtt_matrix, up.synthetic) {
        (Some(path), _) => Box::new(RttMatrix::from_file(path).map_err(|e| e.to_string())?),
        (None, true) => {
            let n = up
                .hosts
                .ok_or("--synthetic needs --hosts N (how many hosts to draw)")?;
            Box::new(SyntheticInternet::new(SyntheticConfig::internet(
                n, up.seed,
            )))
        }
        (None, false) => {
            return Err("say where RTTs come from: --rtt-matrix FILE or --synthetic".into())
        }
    };
    let n = up.hosts.unwrap_or(model.len());
    if n == 0 || n > model.len() {
        return Err(format!(
            "--hosts {n}: the RTT source has {} hosts",
            model.len()
        ));
    }
    // Block the stop signals before any thread exists, so that every thread inherits the mask
    // and this one receives them with sigwait.
    let signals = block_stop_signals();
    let mut builder = Testbed::builder(n, |i, j| model.rtt(i, j).unwrap_or(-1.0));
    if let Some(mbit) = up.mbit {
        for host in 0..n {
            builder = builder.bandwidth(host, Shaping::mbit(mbit));
        }
    }
    let bed = builder.build().map_err(|e| e.to_string())?;
    println!(
        "testbed {} on {}: {n} hosts",
        bed.tag(),
        bed.subnet().cidr()
    );
    println!("{:>5}  {:<20} address", "host", "namespace");
    for i in 0..n {
        println!("{i:>5}  {:<20} {}", bed.netns(i), bed.addr(i));
    }
    if n <= 12 {
        println!("RTT matrix (ms):");
        for i in 0..n {
            let row: Vec<String> = (0..n)
                .map(|j| match bed.rtt_ms(i, j) {
                    v if v.is_finite() && v >= 0.0 => format!("{v:7.1}"),
                    _ => format!("{:>7}", "-"),
                })
                .collect();
            println!("  {}", row.join(" "));
        }
    }
    if n >= 2 {
        println!(
            "try: ip netns exec {} ping -c 3 {}",
            bed.netns(0),
            bed.addr(1)
        );
    }
    println!("routing; Ctrl-C to stop and delete the namespaces");
    wait_for(&signals);
    let stats = bed.stats();
    println!(
        "forwarded {} packets (timer lateness mean {:?}, max {:?}); dropped: {} not for a host, {} unreachable, {} queue full",
        stats.forwarded,
        stats.late_mean,
        stats.late_max,
        stats.dropped_no_host,
        stats.dropped_unreachable,
        stats.dropped_queue
    );
    bed.shutdown().map_err(|e| e.to_string())
}

fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; the calls only touch it and the
    // calling thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for(set: &libc::sigset_t) {
    let mut sig = 0;
    // SAFETY: set is a valid initialised sigset; sig is a live c_int.
    unsafe { libc::sigwait(set, &mut sig) };
}
