//! `brume deploy`, `brume ps`, `brume logs` and `brume stop`: clients of the local node's control
//! socket. The node does the work (it is the initiator, with the overlay identity and the chunk
//! store); these draw its progress (one bar per task instance) and its answers, hosts by their
//! [`NodeName`], or print the answer as JSON with `--json`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::client::{ask, call, print_json, Target};
use brume_control::NodeName;
use brume_control::{DeployRequest, Event, Row, Step};
use brume_control::{LogsRequest, Progress, PsRequest, StopRequest};

/// Options of `brume deploy`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// The service manifest (e.g. examples/fedavg/service.toml).
    pub manifest: PathBuf,
    #[command(flatten)]
    pub target: Target,
    /// Latency budget of the neighbourhood map the tasks are placed on (e.g. 80ms).
    #[arg(long, default_value = "80ms", value_parser = humantime::parse_duration)]
    pub budget: Duration,
    /// Placement policy: latency, load, energy, cost, reliability, or a mix like
    /// "latency=0.7,load=0.3".
    #[arg(long, default_value = "latency")]
    pub policy: String,
    /// Seed of the randomized rounding (the same seed and map give the same plan).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Independent rounding rounds; the best plan wins.
    #[arg(long, default_value_t = 32)]
    pub rounds: u32,
}

/// Options of `brume logs`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// The task whose log to show.
    pub task: String,
    #[command(flatten)]
    pub target: Target,
    /// The service (needed only when several services have a task of that name).
    #[arg(long)]
    pub service: Option<String>,
    /// Which replica.
    #[arg(long, default_value_t = 0)]
    pub replica: u32,
    /// How many of the last lines.
    #[arg(long, default_value_t = 100)]
    pub tail: usize,
}

/// Options of `brume ps`.
#[derive(Debug, Clone, clap::Args)]
pub struct PsArgs {
    #[command(flatten)]
    pub target: Target,
    /// Also every instance this node runs for other initiators, and exited ones.
    #[arg(long)]
    pub all: bool,
}

/// Options of `brume stop`.
#[derive(Debug, Clone, clap::Args)]
pub struct StopArgs {
    /// The service to stop (every instance, on every host).
    pub service: String,
    #[command(flatten)]
    pub target: Target,
}

/// The longest a deploy may take before the client gives up waiting (the node carries on).
const DEPLOY_WAIT: Duration = Duration::from_secs(1800);
const WAIT: Duration = Duration::from_secs(30);

pub async fn deploy(args: &DeployArgs) -> anyhow::Result<()> {
    let manifest = std::fs::canonicalize(&args.manifest).with_context(|| {
        format!(
            "cannot find the manifest {} (give the path of a service.toml)",
            args.manifest.display()
        )
    })?;
    let request = DeployRequest {
        manifest,
        budget_ms: args.budget.as_secs_f64() * 1e3,
        policy: args.policy.clone(),
        seed: args.seed,
        rounds: args.rounds,
    };
    let bars = Bars::new(args.target.json);
    let done = call(&args.target, request, DEPLOY_WAIT, "deploy failed", |p| {
        if let Progress::Deploy(e) = p {
            bars.update(e);
        }
    })
    .await;
    bars.finish();
    let d = done?;
    if args.target.json {
        return print_json(&d);
    }
    println!(
        "service {} epoch {} deployed in {:.2} s on a map of {} node(s)",
        d.service,
        d.epoch,
        d.elapsed_ms as f64 / 1e3,
        d.map_nodes
    );
    print!("{}", table(&d.instances));
    Ok(())
}

/// One bar per task instance, drawn on stderr (none with --json).
struct Bars {
    multi: Option<MultiProgress>,
    bars: std::sync::Mutex<BTreeMap<(String, u32), ProgressBar>>,
}

impl Bars {
    fn new(quiet: bool) -> Self {
        Bars {
            multi: (!quiet).then(MultiProgress::new),
            bars: Default::default(),
        }
    }

    fn update(&self, e: Event) {
        let Some(multi) = &self.multi else { return };
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        let bar = bars
            .entry((e.task.clone(), e.replica))
            .or_insert_with(|| {
                let b = multi.add(ProgressBar::new(1));
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:<24} {wide_msg} {bytes:>10}/{total_bytes:<10}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b.set_prefix(format!(
                    "{}#{} on {}",
                    e.task,
                    e.replica,
                    NodeName::of(&e.peer)
                ));
                b
            })
            .clone();
        match e.step {
            Step::Placed => bar.set_message("placed, asking the host"),
            Step::Fetching { done, total } => {
                bar.set_length(total.max(1));
                bar.set_position(done);
                bar.set_message("fetching chunks");
            }
            Step::Building => bar.set_message("building the image"),
            Step::Starting => bar.set_message("starting"),
            Step::Running { port, reused } => {
                let how = if reused { " (already running)" } else { "" };
                bar.finish_with_message(format!("running on port {port}{how}"));
            }
            Step::Failed { reason } => bar.abandon_with_message(format!("FAILED: {reason}")),
            Step::RolledBack => bar.abandon_with_message("rolled back"),
        }
    }

    fn finish(&self) {
        if let Ok(bars) = self.bars.lock() {
            for b in bars.values() {
                if !b.is_finished() {
                    b.abandon();
                }
            }
        }
    }
}

fn table(rows: &[Row]) -> String {
    // The checkpoint column only where some instance has one (the owner's `ps`).
    let checkpoints = rows.iter().any(|r| r.checkpoint_age_ms.is_some());
    let mut out = format!(
        "{:<16} {:>7}  {:<22} {:<8} {:<10} {:<21}{}\n",
        "TASK",
        "REPLICA",
        "HOST",
        "ENGINE",
        "STATE",
        "ADDRESS",
        if checkpoints { " CHECKPOINT" } else { "" }
    );
    for r in rows {
        let age = match (checkpoints, r.checkpoint_age_ms) {
            (false, _) => String::new(),
            (true, Some(ms)) => format!(" {:.1} s ago", ms as f64 / 1000.0),
            (true, None) => " -".to_string(),
        };
        out += &format!(
            "{:<16} {:>7}  {:<22} {:<8} {:<10} {:<21}{age}\n",
            r.task,
            r.replica,
            NodeName::of(&r.peer),
            r.engine,
            r.state,
            r.address
        );
    }
    out.lines()
        .map(|l| l.trim_end().to_string() + "\n")
        .collect()
}

pub async fn ps(args: &PsArgs) -> anyhow::Result<()> {
    let rows = ask(&args.target, PsRequest { all: args.all }, WAIT).await?;
    if args.target.json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!("no services deployed from this node (try --all)");
        return Ok(());
    }
    let mut by_service: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for row in rows {
        by_service
            .entry(row.service)
            .or_default()
            .push(row.instance);
    }
    for (service, rows) in by_service {
        println!("service {service}");
        print!("{}", table(&rows));
    }
    Ok(())
}

pub async fn logs(args: &LogsArgs) -> anyhow::Result<()> {
    let request = LogsRequest {
        service: args.service.clone(),
        task: args.task.clone(),
        replica: args.replica,
        tail: args.tail,
    };
    let logs = ask(&args.target, request, WAIT).await?;
    if args.target.json {
        return print_json(&logs);
    }
    for line in &logs.lines {
        println!("{line}");
    }
    Ok(())
}

pub async fn stop(args: &StopArgs) -> anyhow::Result<()> {
    let request = StopRequest {
        service: args.service.clone(),
    };
    let stopped = ask(&args.target, request, WAIT).await?;
    if args.target.json {
        return print_json(&stopped);
    }
    println!(
        "service {}: {} instance(s) stopped and removed",
        stopped.service,
        stopped.instances.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(task: &str, checkpoint_age_ms: Option<u64>) -> Row {
        Row {
            task: task.into(),
            replica: 0,
            host: "n7".into(),
            peer: "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into(),
            engine: "process".into(),
            state: "running".into(),
            address: "127.0.0.1:4000".into(),
            checkpoint_age_ms,
        }
    }

    #[test]
    fn the_checkpoint_column_shows_only_where_an_instance_has_one() {
        let plain = table(&[row("front", None)]);
        assert!(!plain.contains("CHECKPOINT"), "{plain}");
        assert!(plain.lines().all(|l| l == l.trim_end()), "{plain:?}");
        let owner = table(&[row("front", None), row("back", Some(850))]);
        let lines: Vec<&str> = owner.lines().collect();
        assert!(lines[0].ends_with("CHECKPOINT"), "{owner}");
        assert!(lines[1].ends_with(" -"), "{owner}");
        assert!(lines[2].ends_with(" 0.8 s ago"), "{owner}");
    }
}
