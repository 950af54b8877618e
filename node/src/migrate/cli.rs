//! `brume migrate` and `brume drain`: clients of the local node's control socket. The node that
//! runs the instance does the move; these show its phases as they come and print its result
//! (or the typed reply as JSON with `--json`).
//!
//! On a terminal a move is one progress bar on stderr that advances once per pre-copy round,
//! the round's sizes as its message, with the milestones (target, state captured, restored,
//! switching) printed above it; when stderr is not a terminal (a pipe, a test) every phase is
//! one plain line.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::client::{ask, call, print_json, Target};
use brume_control::NodeName;
use brume_control::{DrainLine, MigrateRequest, MoveProgress, MoveStep, Moved};
use brume_control::{DrainRequest, MapRequest, Progress};

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
    /// Where to: a peer id, a node's short form or human name as listings show it (looked up
    /// in the map within --budget), or `auto` for the nearest node with room.
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
    /// Freeze a live move's task whatever its predicted downtime: neither --max-downtime nor
    /// the task's downtime_budget_ms (manifest) holds.
    #[arg(long)]
    pub force: bool,
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
    /// Every task should run on its new host within this (e.g. 2m): each move starts at the
    /// deadline minus its predicted duration (and that of the moves after it) minus --margin,
    /// not at once, and each line says whether its task made it in time.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub deadline: Option<Duration>,
    /// The slack kept before --deadline.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub margin: Duration,
}

/// The longest a move may take before the client stops waiting (the node carries on).
const MOVE_WAIT: Duration = Duration::from_secs(900);
const WAIT: Duration = Duration::from_secs(5);
const MIB: f64 = (1u64 << 20) as f64;

/// How a move's phases are shown on stderr.
enum Show {
    /// `--json`: nothing.
    Quiet,
    /// One line per phase.
    Lines,
    /// A bar per instance that advances per round (the current instance's, during a drain).
    Bar(Option<(String, ProgressBar)>),
}

impl Show {
    fn new(json: bool) -> Self {
        if json {
            Show::Quiet
        } else if std::io::stderr().is_terminal() {
            Show::Bar(None)
        } else {
            Show::Lines
        }
    }

    fn update(&mut self, p: MoveProgress) {
        let who = format!("{}/{}#{}", p.service, p.task, p.replica);
        match self {
            Show::Quiet => {}
            Show::Lines => eprintln!("{who}: {}", text(&p.step)),
            Show::Bar(current) => {
                if current.as_ref().is_none_or(|(w, _)| *w != who) {
                    if let Some((_, old)) = current.take() {
                        old.finish();
                    }
                    *current = Some((who.clone(), new_bar(&who)));
                }
                let Some((_, bar)) = current else { return };
                match &p.step {
                    MoveStep::Round { round, last, .. } => {
                        bar.set_position(u64::from(*round));
                        bar.set_message(text(&p.step));
                        // The frozen round stays on the screen once the bar is gone.
                        if *last {
                            bar.println(format!("{who}: {}", text(&p.step)));
                        }
                    }
                    MoveStep::Fetching { .. } => bar.set_message(text(&p.step)),
                    step => bar.println(format!("{who}: {}", text(step))),
                }
            }
        }
    }

    fn finish(self) {
        if let Show::Bar(Some((_, bar))) = self {
            bar.finish_and_clear();
        }
    }
}

/// A move's bar, in `brume deploy`'s style: the instance, then what it is doing.
fn new_bar(who: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{prefix:<24} {spinner} round {pos:>2} {wide_msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_prefix(who.to_string());
    bar.set_message("starting");
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// One phase as a person reads it.
fn text(step: &MoveStep) -> String {
    match step {
        MoveStep::Target { peer, .. } => format!("target {}", NodeName::of(peer)),
        MoveStep::Round {
            round,
            last,
            dumped_bytes,
            delta_bytes,
            wire_bytes,
            dump_ms,
            rate,
            predicted_downtime_ms,
            ..
        } => {
            let predicted = match predicted_downtime_ms {
                Some(ms) => format!(", predicted downtime {ms} ms"),
                None => String::new(),
            };
            format!(
                "{} round {round}: dumped {:.1} MiB in {dump_ms} ms, delta {:.2} MiB, wire {:.2} MiB, {:.1} MiB/s{predicted}",
                if *last { "final" } else { "pre-copy" },
                *dumped_bytes as f64 / MIB,
                *delta_bytes as f64 / MIB,
                *wire_bytes as f64 / MIB,
                *rate as f64 / MIB,
            )
        }
        MoveStep::Restored {
            downtime_ms,
            restore_ms,
            rounds,
            wire_bytes,
        } => format!(
            "restored on the target: downtime {downtime_ms} ms (criu restore {restore_ms} ms), {rounds} round(s), {:.2} MiB sent",
            *wire_bytes as f64 / MIB
        ),
        MoveStep::Checkpointed { bytes } => format!("state captured: {bytes} bytes"),
        MoveStep::Fetching { done, total } => {
            format!("target fetching the image: {done} / {total} bytes")
        }
        MoveStep::Building => "target building the image".into(),
        MoveStep::Starting => "target starting the task".into(),
        MoveStep::Switching => {
            "new instance runs; switching callers, stopping the old one".into()
        }
    }
}

fn moved_line(m: &Moved) -> String {
    format!(
        "{}/{}#{} now runs on {} at {} ({}, {} bytes of state, callers held {} ms, move took {} ms, {} node(s) rerouted)",
        m.service,
        m.task,
        m.replica,
        NodeName::of(&m.peer),
        m.address,
        m.mode,
        m.state_bytes,
        m.held_ms,
        m.elapsed_ms,
        m.told
    )
}

/// The peer id `--to` means: `auto` is none (the node picks), a peer id is itself, and anything
/// else is a node's name as listings show it, looked up in the node's map within `budget`.
async fn resolve_to(target: &Target, to: &str, budget: Duration) -> anyhow::Result<Option<String>> {
    if to == "auto" {
        return Ok(None);
    }
    if to.parse::<brume_overlay::PeerId>().is_ok() {
        return Ok(Some(to.to_string()));
    }
    let request = MapRequest {
        budget_ms: budget.as_secs_f64() * 1e3,
        fresh: false,
    };
    let map = ask(target, request, WAIT + budget * 2).await?;
    let found: Vec<String> = map
        .nodes
        .iter()
        .filter(|n| NodeName::of_record(n).answers_to(to))
        .filter_map(|n| n.peer.map(|p| p.to_string()))
        .collect();
    match &found[..] {
        [one] => Ok(Some(one.clone())),
        [] => anyhow::bail!(
            "--to {to}: no node within {budget:?} of this one goes by that name (give a peer id, \
             or a name as `brume map` shows it)"
        ),
        _ => anyhow::bail!(
            "--to {to}: {} nodes go by that name; give the peer id (`brume map --json`)",
            found.len()
        ),
    }
}

pub async fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    let to = resolve_to(&args.target, &args.to, args.budget).await?;
    let request = MigrateRequest {
        service: args.service.clone(),
        task: args.task.clone(),
        replica: args.replica,
        to,
        budget_ms: args.budget.as_millis() as u64,
        cold: args.cold,
        deadline_ms: args.deadline.map(|d| d.as_millis() as u64),
        max_downtime_ms: args.max_downtime.map(|d| d.as_millis() as u64),
        force: args.force,
    };
    let mut show = Show::new(args.target.json);
    let what = format!("cannot move {}", args.task);
    let moved = call(&args.target, request, MOVE_WAIT, &what, |p| {
        if let Progress::Move(p) = p {
            show.update(p);
        }
    })
    .await;
    show.finish();
    let moved = moved?;
    if args.target.json {
        return print_json(&moved);
    }
    println!("{}", moved_line(&moved));
    Ok(())
}

pub async fn drain(args: &DrainArgs) -> anyhow::Result<()> {
    let request = DrainRequest {
        budget_ms: args.budget.as_millis() as u64,
        cold: args.cold,
        deadline_ms: args.deadline.map(|d| d.as_millis() as u64),
        margin_ms: args.deadline.map(|_| args.margin.as_millis() as u64),
    };
    let mut show = Show::new(args.target.json);
    let lines = call(&args.target, request, MOVE_WAIT, "cannot drain", |p| {
        if let Progress::Move(p) = p {
            show.update(p);
        }
    })
    .await;
    show.finish();
    let lines: Vec<DrainLine> = lines?;
    if args.target.json {
        // Each line says whether its instance moved; the exit status is a person's summary.
        return print_json(&lines);
    }
    if lines.is_empty() {
        println!("nothing runs on this node");
        return Ok(());
    }
    let mut failed = 0;
    for l in &lines {
        let when = match l.on_time {
            Some(true) => " (before the deadline)",
            Some(false) => " (AFTER the deadline)",
            None => "",
        };
        match &l.outcome {
            Ok(m) => println!("{}{when}", moved_line(m)),
            Err(e) => {
                failed += 1;
                println!("{}/{}#{} stays here: {e}", l.service, l.task, l.replica);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} instance(s) could not be moved", lines.len());
    }
    let late = lines.iter().filter(|l| l.on_time == Some(false)).count();
    if late > 0 {
        anyhow::bail!(
            "{late} of {} instance(s) ran on their new host only after the deadline",
            lines.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(round: u32, last: bool) -> MoveStep {
        MoveStep::Round {
            round,
            last,
            dumped_bytes: 64 << 20,
            delta_bytes: 3 << 20,
            wire_bytes: 1 << 20,
            round_ms: 50,
            dump_ms: 40,
            rate: 100 << 20,
            predicted_downtime_ms: (!last).then_some(120),
        }
    }

    fn progress(task: &str, step: MoveStep) -> MoveProgress {
        MoveProgress {
            service: "svc".into(),
            task: task.into(),
            replica: 0,
            step,
        }
    }

    #[test]
    fn one_bar_per_instance_advances_per_round() {
        // (indicatif draws nothing here: a test's stderr is not a terminal.)
        let mut show = Show::Bar(None);
        for r in 1..=3 {
            show.update(progress("mid", round(r, false)));
        }
        let Show::Bar(Some((who, bar))) = &show else {
            panic!("no bar")
        };
        assert_eq!(who, "svc/mid#0");
        assert_eq!(bar.position(), 3);
        assert!(bar
            .message()
            .starts_with("pre-copy round 3: dumped 64.0 MiB"));
        assert!(bar.message().ends_with("predicted downtime 120 ms"));
        let first = bar.clone();
        // The next instance of a drain gets a bar of its own; the last one is done.
        show.update(progress("back", MoveStep::Building));
        assert!(first.is_finished());
        let Show::Bar(Some((who, bar))) = &show else {
            panic!("no bar")
        };
        assert_eq!(who, "svc/back#0");
        assert_eq!(bar.position(), 0);
        show.finish();
    }

    #[test]
    fn lines_say_what_the_tests_and_scripts_read() {
        assert!(text(&round(4, true)).starts_with("final round 4:"));
        let restored = MoveStep::Restored {
            downtime_ms: 90,
            restore_ms: 60,
            rounds: 4,
            wire_bytes: 1 << 21,
        };
        assert_eq!(
            text(&restored),
            "restored on the target: downtime 90 ms (criu restore 60 ms), 4 round(s), 2.00 MiB sent"
        );
        let target = MoveStep::Target {
            peer: "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into(),
            host: "n7".into(),
        };
        assert_eq!(text(&target), "target …4kx6nXTN");
    }
}
