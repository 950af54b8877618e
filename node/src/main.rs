//! The `brume` command: parses the command line and hands each subcommand to the library, which
//! holds the logic; errors are printed here, once, with the chain of what led to them.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "brume",
    version = env!("LONG_VERSION"),
    about = "brume: a peer-to-peer fog orchestrator for fleets of edge devices",
    long_about = "brume: a peer-to-peer fog orchestrator for fleets of edge devices.\n\n\
        Every device runs the same program. A service is a manifest (service.toml) of tasks and \
        the calls between them, each call with the latency its caller tolerates; brume places \
        the tasks on nearby hosts within those bounds and runs them. Start with \
        `brume place --help` and the files under examples/."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plan where a service's tasks would run on a network described in a file (nothing is
    /// deployed): prints who goes where and why.
    Place(brume_plan::place::PlaceArgs),
    /// Run a benchmark family (placement, overlay, deploy, transfer, tunnel, migration, chaos,
    /// fedavg, predictor) and print a table, then one `BENCH name key=value ...` line. Runs the
    /// `brume-bench` program installed beside this one (`brume bench --help` lists the
    /// families). Use a release build.
    #[command(disable_help_flag = true)]
    Bench {
        /// The family and its options, handed to brume-bench as they are.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Record a trace of real systems as a data file (`brume trace checkpoints --out FILE`: real
    /// CRIU dumps of varied workloads, features and durations as CSV, what `brume bench
    /// predictor` learns from). Runs `brume-bench trace ...` beside this program; needs root
    /// and CRIU.
    #[command(disable_help_flag = true)]
    Trace {
        /// The trace and its options, handed to `brume-bench trace` as they are.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// A local testnet of node containers with real delays between them: `brume testnet up
    /// --nodes 5 --latency 5ms..80ms`, then ps, kill NODE, partition A,B, heal, join, down.
    /// Runs the `brume-testnet` program installed beside this one (`brume testnet --help`);
    /// needs root, Docker and the node image (scripts/node-image.sh).
    #[command(disable_help_flag = true)]
    Testnet {
        /// The subcommand and its options, handed to brume-testnet as they are.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Run this device's node in the foreground: join the overlay (through any member given
    /// with --join), measure latencies, answer maps, and serve the local control socket.
    Node(Box<brume::daemon::run::NodeArgs>),
    /// Ask the running node who it is: peer id, addresses, degree, Vivaldi coordinate.
    Status(brume::client::Target),
    /// List the node's overlay peers with their measured RTT (EWMA and variation) and the RTT
    /// their Vivaldi coordinates predict.
    Peers(brume::client::Target),
    /// Map the neighbourhood: the nodes reachable over the overlay within a latency budget, with
    /// their resources and the links measured among them, as a table, JSON or Graphviz.
    Map(brume::client::MapArgs),
    /// Deploy a service from its manifest, with this node as the initiator: map the
    /// neighbourhood within --budget, place the call graph (the root task stays here), ship each
    /// task's image to its host as content-addressed chunks (no registry) and start it there.
    /// Shows progress per task and ends with a table of task, host, state and address. A deploy
    /// that fails anywhere is rolled back everywhere.
    Deploy(brume::deploy::cli::DeployArgs),
    /// List the task instances of the services deployed from this node, with their host and
    /// state (--all: also what this node runs for others, exited instances included).
    Ps(brume::deploy::cli::PsArgs),
    /// Show the last lines a task instance wrote, wherever it runs.
    Logs(brume::deploy::cli::LogsArgs),
    /// Stop a service deployed from this node: every instance on every host is stopped and
    /// removed.
    Stop(brume::deploy::cli::StopArgs),
    /// Move a running task instance to another node (--to PEER, or the nearest node with room).
    /// A task with checkpoint = "app" carries its state (its CHECKPOINT line goes to the new
    /// instance as the file BRUME_RESTORE_FILE); one with checkpoint = "criu" on the process engine moves live
    /// (CRIU pre-copy; root and criu >= 4.2); a stateless one restarts there. The old instance stops only
    /// once the new one runs and callers are switched, so a failed move changes nothing.
    Migrate(brume::migrate::cli::MigrateArgs),
    /// Move every task instance this node runs to other nodes (before taking it down).
    Drain(brume::migrate::cli::DrainArgs),
    /// Delete now the chunks, artifacts, image trees and (on Docker) images this node keeps
    /// that no task, service or operation under way uses, and print what was freed. The node
    /// also does this periodically and when a fetch would pass its disk_budget_mib.
    Gc(brume::client::Target),
    /// Keys of a private overlay: `brume key gen > net.key` prints a new network key; copy the
    /// file to every machine and start each node with `--network-key net.key`.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Print a completion script for a shell, e.g. `brume completions bash >
    /// /etc/bash_completion.d/brume`, or `source <(brume completions bash)`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print a new pre-shared network key (libp2p pnet's swarm-key text) on stdout.
    Gen,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Clap's own usage status is 2, which `brume place` keeps for "no plan exists".
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if matches!(
        cli.command,
        Command::Status(_)
            | Command::Peers(_)
            | Command::Map(_)
            | Command::Ps(_)
            | Command::Logs(_)
    ) {
        end_quietly_on_a_closed_pipe();
    }
    let result = match &cli.command {
        Command::Place(args) => brume_plan::place::run(args),
        Command::Bench { args } => bench(args),
        Command::Testnet { args } => beside("brume-testnet", "brume-testnet", args),
        Command::Trace { args } => {
            let mut all = vec![std::ffi::OsString::from("trace")];
            all.extend(args.iter().cloned());
            bench(&all)
        }
        Command::Node(args) => brume::daemon::run::run(args).map(|()| ExitCode::SUCCESS),
        Command::Status(target) => block_on(brume::client::status(target)),
        Command::Peers(target) => block_on(brume::client::peers(target)),
        Command::Map(args) => block_on(brume::client::map(args)),
        Command::Deploy(args) => block_on(brume::deploy::cli::deploy(args)),
        Command::Ps(args) => block_on(brume::deploy::cli::ps(args)),
        Command::Logs(args) => block_on(brume::deploy::cli::logs(args)),
        Command::Stop(args) => block_on(brume::deploy::cli::stop(args)),
        Command::Migrate(args) => block_on(brume::migrate::cli::migrate(args)),
        Command::Drain(args) => block_on(brume::migrate::cli::drain(args)),
        Command::Gc(target) => block_on(brume::client::gc(target)),
        Command::Key(KeyCommand::Gen) => {
            print!("{}", brume::daemon::network_key::generate());
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => completions(*shell),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Lets a read-only query end as Unix tools do when what reads its output stops
/// (`brume peers | head`): killed quietly by SIGPIPE, instead of Rust's default of ignoring the
/// signal and panicking at the next `println!`. Not for commands that change anything (a deploy
/// must report, a testnet must clean up, the daemon must outlive its peers' sockets).
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: restoring a signal's default disposition, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Prints the completion script; written whole from a buffer, so that a closed pipe
/// (`brume completions bash | head`) is an error rather than clap_complete's panic.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "brume", &mut script);
    match std::io::stdout().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Runs one client call on a small runtime of its own.
fn block_on(
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(fut)
        .map(|()| ExitCode::SUCCESS)
}

/// `brume bench ...`: runs `brume-bench ...` from this program's own directory, so the daemon
/// links none of the benches' tooling.
fn bench(args: &[std::ffi::OsString]) -> anyhow::Result<ExitCode> {
    beside("brume-bench", "brume-bench", args)
}

/// Runs program `name` from this program's own directory with `args` (the tooling the daemon
/// does not link: benches, testnet), built by `cargo build --release -p <package>`.
fn beside(name: &str, package: &str, args: &[std::ffi::OsString]) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let me = std::env::current_exe().context("cannot find this program's own path")?;
    let exe = me.with_file_name(name);
    let status = std::process::Command::new(&exe)
        .args(args)
        .status()
        .with_context(|| {
            format!(
                "cannot run {} (a separate program: cargo build --release -p {package})",
                exe.display()
            )
        })?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
