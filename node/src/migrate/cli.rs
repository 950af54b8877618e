//! `brume migrate` and `brume drain`: clients of the local node's control socket. The node that
//! runs the instance does the move; these print its phases as they come and its result.

use std::time::Duration;

use anyhow::Context;

use super::control::{DrainLine, Moved};
use crate::client::Target;
use crate::daemon::config::default_control_socket;
use crate::daemon::control::{self, MigrateRequest, Request, Response};

/// Options of `brume migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// The task to move (one instance of it: see --replica).
    pub task: String,
    #[command(flatten)]
    pub target: Target,
    /// The service (needed only when several services have a task of that name).
    #[arg(long)]
    pub service: Option<String>,
    /// Which replica.
    #[arg(long, default_value_t = 0)]
    pub replica: u32,
    /// Where to: a peer id (see `brume peers`), or `auto` for the nearest node with room.
    #[arg(long, default_value = "auto", value_name = "PEER|auto")]
    pub to: String,
    /// Latency budget of the map an `auto` target is picked from.
    #[arg(long, default_value = "80ms", value_parser = humantime::parse_duration)]
    pub budget: Duration,
    /// Restart the task cold on the target instead of carrying its state: what a task with
    /// checkpoint = "criu" needs where it cannot move live (Docker, a node not running as root,
    /// no criu >= 4.2). Its state is lost.
    #[arg(long)]
    pub cold: bool,
    /// Give up if the move is not done within this (e.g. 30s): the instance stays where it is,
    /// and a start already under way on the target is undone.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub deadline: Option<Duration>,
    /// A live move freezes the task only when the predicted freeze fits this (default 2s);
    /// if the task writes memory faster than the link carries it, or its dumps are slow, the
    /// move gives up and the task keeps running here.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_downtime: Option<Duration>,
}

/// Options of `brume drain`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub target: Target,
    /// Latency budget of the map targets are picked from.
    #[arg(long, default_value = "80ms", value_parser = humantime::parse_duration)]
    pub budget: Duration,
    /// Restart cold the tasks whose state brume cannot carry, instead of leaving them here.
    #[arg(long)]
    pub cold: bool,
}

/// The longest a move may take before the client stops waiting (the node carries on).
const MOVE_WAIT: Duration = Duration::from_secs(900);

/// Prints one progress line of a move on stderr (nothing with --json).
fn show(json: bool, v: &serde_json::Value) {
    if json {
        return;
    }
    let who = format!(
        "{}/{}#{}",
        v["service"].as_str().unwrap_or("?"),
        v["task"].as_str().unwrap_or("?"),
        v["replica"]
    );
    let phase = &v["phase"];
    let text = if let Some(t) = phase.get("Target") {
        format!(
            "target {} ({})",
            t["host"].as_str().unwrap_or("?"),
            t["peer"].as_str().unwrap_or("?")
        )
    } else if let Some(r) = phase.get("Round") {
        const MIB: f64 = (1u64 << 20) as f64;
        let mib = |k: &str| r[k].as_f64().unwrap_or(0.0) / MIB;
        let predicted = match r["predicted_downtime_ms"].as_u64() {
            Some(ms) => format!(", predicted downtime {ms} ms"),
            None => String::new(),
        };
        format!(
            "{} round {}: dumped {:.1} MiB in {} ms, delta {:.2} MiB, wire {:.2} MiB, {:.1} MiB/s{predicted}",
            if r["last"].as_bool() == Some(true) { "final" } else { "pre-copy" },
            r["round"],
            mib("dumped_bytes"),
            r["dump_ms"],
            mib("delta_bytes"),
            mib("wire_bytes"),
            mib("rate"),
        )
    } else if let Some(r) = phase.get("Restored") {
        format!(
            "restored on the target: downtime {} ms (criu restore {} ms), {} round(s), {:.2} MiB sent",
            r["downtime_ms"],
            r["restore_ms"],
            r["rounds"],
            r["wire_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 20) as f64
        )
    } else if let Some(c) = phase.get("Checkpointed") {
        format!("state captured: {} bytes", c["bytes"])
    } else if let Some(f) = phase.get("Fetching") {
        format!(
            "target fetching the image: {} / {} bytes",
            f["done"], f["total"]
        )
    } else {
        match phase.as_str() {
            Some("Building") => "target building the image".to_string(),
            Some("Starting") => "target starting the task".to_string(),
            Some("Switching") => {
                "new instance runs; switching callers, stopping the old one".to_string()
            }
            _ => phase.to_string(),
        }
    };
    eprintln!("{who}: {text}");
}

async fn call(target: &Target, request: Request) -> anyhow::Result<serde_json::Value> {
    let path = target
        .control
        .clone()
        .unwrap_or_else(default_control_socket);
    let json = target.json;
    match control::call_with_progress(&path, &request, MOVE_WAIT, |v| show(json, &v)).await? {
        Response::Ok(v) => Ok(v),
        Response::Error(e) => anyhow::bail!("{e}"),
        Response::Progress(_) => anyhow::bail!("the node ended with a progress line"),
    }
}

fn moved_line(m: &Moved) -> String {
    format!(
        "{}/{}#{} now runs on {} at {} ({}, {} bytes of state, callers held {} ms, move took {} ms, {} node(s) rerouted)",
        m.service,
        m.task,
        m.replica,
        m.host,
        m.address,
        m.mode,
        m.state_bytes,
        m.held_ms,
        m.elapsed_ms,
        m.told
    )
}

pub async fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    let request = Request::Migrate(MigrateRequest {
        service: args.service.clone(),
        task: args.task.clone(),
        replica: args.replica,
        to: (args.to != "auto").then(|| args.to.clone()),
        budget_ms: args.budget.as_millis() as u64,
        cold: args.cold,
        deadline_ms: args.deadline.map(|d| d.as_millis() as u64),
        max_downtime_ms: args.max_downtime.map(|d| d.as_millis() as u64),
    });
    let v = call(&args.target, request)
        .await
        .map_err(|e| e.context(format!("cannot move {}", args.task)))?;
    if args.target.json {
        println!("{v:#}");
        return Ok(());
    }
    let m: Moved = serde_json::from_value(v).context("the node's answer is malformed")?;
    println!("{}", moved_line(&m));
    Ok(())
}

pub async fn drain(args: &DrainArgs) -> anyhow::Result<()> {
    let request = Request::Drain {
        budget_ms: args.budget.as_millis() as u64,
        cold: args.cold,
    };
    let v = call(&args.target, request).await?;
    if args.target.json {
        println!("{v:#}");
        return Ok(());
    }
    let lines: Vec<DrainLine> =
        serde_json::from_value(v).context("the node's answer is malformed")?;
    if lines.is_empty() {
        println!("nothing runs on this node");
        return Ok(());
    }
    let mut failed = 0;
    for l in &lines {
        match &l.outcome {
            Ok(m) => println!("{}", moved_line(m)),
            Err(e) => {
                failed += 1;
                println!("{}/{}#{} stays here: {e}", l.service, l.task, l.replica);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} instance(s) could not be moved", lines.len());
    }
    Ok(())
}
