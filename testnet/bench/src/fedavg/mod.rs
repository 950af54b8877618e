//! `brume bench fedavg`: issue 16's federated learning on the UCI digits, on real `brume node`
//! daemons, with a live move of the aggregator and a crashed trainer's node.
//!
//! It starts `--nodes` daemons on loopback (`--engine`: the process engine, or Docker), deploys
//! examples/fedavg/service.toml from node 0 (with `ROUNDS` set to `--rounds`), reads the
//! aggregator's log through node 0 (`brume logs aggregator`, every 100 ms) and records when it
//! first saw each round's line, with the round's trainers and test accuracy. After round
//! `--move-after` it runs `brume migrate aggregator` (the manifest says `checkpoint = "criu"`:
//! CRIU pre-copy moves the process, its model in memory); after round `--kill-after` it kills
//! the daemon of a node running a trainer (neither node 0, which deployed and heals, nor the
//! aggregator's) with SIGKILL, and watches node 0's `ps` until that trainer runs on another
//! node (the healing path: node 0's heartbeats declare the host dead and deploy its instance
//! elsewhere). Then it waits for the last round.
//!
//! Unless `--no-baseline`, the same service runs first on a fresh set of daemons with neither
//! move nor kill, so rounds per minute with and without them are measured side by side.
//!
//! What it reports, and from where:
//! * the per-round timeline (when this program first saw each round: the poll adds up to
//!   100 ms plus a `brume logs` command to each time);
//! * rounds per minute before the move, between move and kill, after the kill, over the run,
//!   and in the baseline run;
//! * the move's pause as the trainers saw it: the longest gap between two rounds across the
//!   move beyond an undisturbed gap (the baseline's median gap, else the median before the
//!   move), beside what `brume migrate` reported (callers held, downtime the target measured);
//! * lost rounds: rounds missing, counted twice, tried below the quorum or dropped (none
//!   expected: a round counts with 3 of 4 trainers);
//! * the final federated and centralised test accuracy (the aggregator's `done` line);
//! * `up_s`: from the start of the first daemon to the first round;
//! * the picture (`--svg`): accuracy per round, federated and centralised, the move and the
//!   kill marked.

pub mod nodes;
pub mod run;
pub mod timeline;

use std::path::PathBuf;

use brume_fedavg::plot::{self, Curves, Marker};

use run::{Outcome, Plan};
use timeline::{gaps, move_pause_ms, rate, Round};

/// Options of `brume bench fedavg`.
#[derive(Debug, Clone, clap::Args)]
pub struct FedavgArgs {
    /// How many daemons (the aggregator and four trainers need five, one per host).
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Rounds of federated averaging (the manifest's ROUNDS is replaced by this).
    #[arg(long, default_value_t = 20)]
    pub rounds: u64,
    /// Move the aggregator live after this round.
    #[arg(long, default_value_t = 3)]
    pub move_after: u64,
    /// Kill a trainer's node (SIGKILL) after this round (default: three rounds after the move).
    #[arg(long)]
    pub kill_after: Option<u64>,
    /// Run without the move (and without the kill): the plain run only.
    #[arg(long)]
    pub no_move: bool,
    /// Do not kill a trainer's node.
    #[arg(long)]
    pub no_kill: bool,
    /// Skip the baseline run (the same service with neither move nor kill, on fresh daemons).
    #[arg(long)]
    pub no_baseline: bool,
    /// Passed to `brume migrate --max-downtime` (e.g. 10s): the freeze the move may predict
    /// before it gives up. Unset: the node's default (2 s, or the manifest's budget).
    #[arg(long)]
    pub max_downtime: Option<String>,
    /// The engine every node runs its tasks with: `process`, or `docker` (the aggregator then
    /// moves through runc, and the killed node's trainer container, which outlives its node,
    /// is removed at the end).
    #[arg(long, default_value = "process", value_parser = ["process", "docker"])]
    pub engine: String,
    /// Where to write the picture.
    #[arg(long, default_value = "fedavg.svg")]
    pub svg: PathBuf,
    /// Bound the aggregator's calls to its trainers at this RTT instead of the manifest's
    /// `latency_ms` (40 ms): the suite's runs, on a loaded machine, are about moving and
    /// healing, and a first ping slower than 40 ms there would leave placement no host.
    #[arg(long)]
    pub call_bound_ms: Option<u32>,
    /// The manifest (its aggregator/ and trainer/ build contexts beside it, with the static
    /// binaries scripts/build-static.sh copies there).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/fedavg/service.toml"))]
    pub manifest: PathBuf,
    /// Run on a `brume testnet` of node containers instead of loopback daemons: each node a
    /// device with its own network namespace, every pair's RTT a real kernel-path delay, tasks
    /// on the process engine inside the nodes (needs Docker; the node image is built or found
    /// by scripts/node-image.sh around the `brume` beside this program). The testnet is taken
    /// down at the end.
    #[arg(long, conflicts_with = "engine")]
    pub testnet: bool,
    /// The testnet's RTTs: a range each pair draws from (seeded by --seed), or one value.
    #[arg(long, default_value = "5ms..40ms", requires = "testnet")]
    pub latency: String,
    /// Seed of the testnet's RTTs.
    #[arg(long, default_value_t = 1, requires = "testnet")]
    pub seed: u64,
    /// The testnet's name (default `fedavg-<pid>`; the baseline run's adds `-b`).
    #[arg(long, requires = "testnet")]
    pub testnet_name: Option<String>,
    /// A label for the testnet's containers (`key=value`, repeatable).
    #[arg(long, requires = "testnet")]
    pub label: Vec<String>,
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.filter(|v| v.is_finite())
        .map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    (!xs.is_empty()).then(|| crate::median(&mut xs))
}

/// The timeline table of one run.
fn print_timeline(o: &Outcome, rounds: &[Round]) {
    println!(
        "{:>5} {:>8} {:>7} {:>8} {:>7}  event",
        "round", "seen (s)", "gap (s)", "trainers", "acc"
    );
    let gap: std::collections::BTreeMap<u64, f64> = gaps(rounds).into_iter().collect();
    for r in rounds {
        let mut events = Vec::new();
        if let Some(m) = &o.moved {
            if m.after_round == r.round {
                events.push(format!(
                    "then the move ({:.2} s to {:.2} s)",
                    m.start_s, m.end_s
                ));
            }
        }
        if let Some(k) = &o.kill {
            if k.after_round == r.round {
                events.push(format!("then node {} killed at {:.2} s", k.node, k.at_s));
            }
            if k.full_round == Some(r.round) {
                events.push("all trainers again".into());
            }
        }
        println!(
            "{:>5} {:>8.2} {:>7} {:>8} {:>7.4}  {}",
            r.round,
            r.seen_s,
            f(gap.get(&r.round).copied(), 2),
            format!("{}/{}", r.trainers.0, r.trainers.1),
            r.acc,
            events.join("; ")
        );
    }
}

pub fn run(a: &FedavgArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.nodes >= 5,
        "--nodes: the aggregator and four trainers need 5 nodes or more"
    );
    anyhow::ensure!(a.rounds >= 2, "--rounds: 2 or more");
    let exe = crate::brume_exe()?;
    let moving = !a.no_move;
    let kill_after = (moving && !a.no_kill).then(|| a.kill_after.unwrap_or(a.move_after + 3));
    if moving {
        crate::predictor_drain::check_system()
            .map_err(|e| anyhow::anyhow!("the live move {e}; --no-move runs without it"))?;
        anyhow::ensure!(
            a.move_after >= 1 && a.move_after < a.rounds,
            "--move-after: a round from 1 to --rounds - 1"
        );
    }
    if let Some(k) = kill_after {
        anyhow::ensure!(
            k > a.move_after && k < a.rounds,
            "--kill-after: a round after --move-after and before --rounds"
        );
    }
    let testnet = if a.testnet {
        let (min_ms, max_ms) = brume_testnet::containers::state::parse_latency(&a.latency)?;
        Some(run::TestnetPlan {
            name: a
                .testnet_name
                .clone()
                .unwrap_or_else(|| format!("fedavg-{}", std::process::id())),
            image: {
                println!("node image: scripts/node-image.sh around {}", exe.display());
                brume_testnet::containers::image::node_image(&exe)?
            },
            rtt: brume_testnet::containers::state::RttSource::Range {
                min_ms,
                max_ms,
                seed: a.seed,
            },
            labels: a.label.clone(),
        })
    } else {
        None
    };
    let plan = Plan {
        nodes: a.nodes,
        rounds: a.rounds,
        move_after: moving.then_some(a.move_after),
        kill_after,
        manifest: a.manifest.clone(),
        call_bound_ms: a.call_bound_ms,
        max_downtime: a.max_downtime.clone(),
        engine: if a.testnet {
            "process".into()
        } else {
            a.engine.clone()
        },
        testnet: testnet.clone(),
    };
    println!(
        "fedavg: {} ({} engine), {} deployed from node 0 with ROUNDS={}{}; {}{}",
        match &testnet {
            Some(t) => format!(
                "{} node containers of testnet `{}` (RTTs {}, seed {})",
                a.nodes, t.name, a.latency, a.seed
            ),
            None => format!("{} local `brume node` daemons", a.nodes),
        },
        plan.engine,
        a.manifest.display(),
        a.rounds,
        a.call_bound_ms
            .map(|ms| format!(", calls bounded at {ms} ms"))
            .unwrap_or_default(),
        if moving {
            format!("aggregator moved live (criu) after round {}", a.move_after)
        } else {
            "no move".into()
        },
        kill_after.map_or(String::new(), |k| format!(
            ", a trainer's node killed (SIGKILL) after round {k}"
        ))
    );

    let baseline = if a.no_baseline || !moving {
        None
    } else {
        println!();
        println!("baseline run: the same service, neither move nor kill");
        let b = run::run(
            &exe,
            &Plan {
                move_after: None,
                kill_after: None,
                testnet: plan.testnet.as_ref().map(|t| run::TestnetPlan {
                    name: format!("{}-b", t.name),
                    ..t.clone()
                }),
                ..plan.clone()
            },
        )?;
        let rounds = b.log.rounds();
        print_timeline(&b, &rounds);
        anyhow::ensure!(b.finished, "the baseline run did not finish");
        Some(b)
    };

    println!();
    println!(
        "{}",
        if moving {
            "the run with the move and the kill"
        } else {
            "the run"
        }
    );
    let o = run::run(&exe, &plan)?;
    let rounds = o.log.rounds();
    for (task, replica, host) in &o.placed {
        println!("placed: {task}#{replica} on {host}");
    }
    print_timeline(&o, &rounds);

    // Figures.
    let last = rounds.last().map_or(0, |r| r.round);
    let first = rounds.first().map_or(0, |r| r.round);
    let up_s = rounds.first().map(|r| r.seen_s);
    let base_rounds = baseline.as_ref().map(|b| b.log.rounds());
    let base_rate = base_rounds.as_ref().and_then(|br| {
        let (first, last) = (br.first()?.round, br.last()?.round);
        rate(br, first, last)
    });
    let normal_gap = base_rounds
        .as_ref()
        .and_then(|br| median(gaps(br).into_iter().map(|g| g.1).collect()))
        .or_else(|| {
            let before = o.moved.as_ref().map_or(u64::MAX, |m| m.after_round);
            median(
                gaps(&rounds)
                    .into_iter()
                    .filter(|g| g.0 <= before)
                    .map(|g| g.1)
                    .collect(),
            )
        });
    let whole = rate(&rounds, first, last);
    println!();
    println!(
        "rounds per minute: whole run {}{}",
        f(whole, 1),
        base_rate.map_or(String::new(), |b| format!(
            ", baseline run (no move, no kill) {} (ratio {})",
            f(Some(b), 1),
            f(whole.map(|w| w / b), 3)
        ))
    );
    let mut pause = 0.0;
    if let Some(m) = &o.moved {
        let before = rate(&rounds, first, m.after_round);
        let after_end = o.kill.as_ref().map_or(last, |k| k.after_round);
        let after = rate(&rounds, m.after_round, after_end);
        println!(
            "  before the move (rounds {first}-{}) {}; after it (rounds {}-{after_end}{}) {}",
            m.after_round,
            f(before, 1),
            m.after_round,
            if o.kill.is_some() {
                ", up to the kill"
            } else {
                ""
            },
            f(after, 1)
        );
        println!(
            "move: {} ({} -> {}) after round {}, `brume migrate` from {:.2} s to {:.2} s; it \
             reported callers held {} ms, move took {} ms, downtime {} ms (measured by the target)",
            if m.ok { "done" } else { "FAILED" },
            m.from,
            m.to,
            m.after_round,
            m.start_s,
            m.end_s,
            ms(m.callers_held_ms),
            ms(m.move_ms),
            ms(m.downtime_ms)
        );
        println!("  {}", m.report);
        if let Some(g) = normal_gap {
            pause = move_pause_ms(&rounds, m.start_s, m.end_s, g);
        }
        println!(
            "  pause as the trainers saw it: {pause:.0} ms (longest gap between rounds across the \
             move beyond an undisturbed gap of {} s{})",
            f(normal_gap, 2),
            if baseline.is_some() {
                ", the baseline's median"
            } else {
                ", the median before the move"
            }
        );
    }
    if let Some(k) = &o.kill {
        let after = rate(&rounds, k.after_round, last);
        println!(
            "  after the kill (rounds {}-{last}) {}",
            k.after_round,
            f(after, 1)
        );
        println!(
            "kill: node {} ({}, trainer #{}) SIGKILLed after round {} at {:.2} s; {}",
            k.node,
            k.host,
            k.replica,
            k.after_round,
            k.at_s,
            match (&k.healed_s, &k.new_host) {
                (Some(s), Some(h)) => format!(
                    "the trainer ran again on {h} {s:.2} s later (node 0's ps; node 0 \
                     declared the host dead {} ms after its last heartbeat answer); first round with every trainer after that: {}",
                    ms(k.detect_ms),
                    k.full_round.map_or("none".into(), |r| r.to_string())
                ),
                _ => "the trainer was NOT placed again within 90 s".into(),
            }
        );
        let short: Vec<String> = rounds
            .iter()
            .filter(|r| r.trainers.0 < r.trainers.1)
            .map(|r| r.round.to_string())
            .collect();
        println!(
            "  rounds counted without the killed trainer (quorum 3 of 4): {}",
            if short.is_empty() {
                "none".into()
            } else {
                short.join(", ")
            }
        );
    }
    let counted = o.history.as_ref().map_or(0, |h| h.len() as u64);
    let unseen: Vec<String> = (1..=counted)
        .filter(|r| !rounds.iter().any(|x| x.round == *r))
        .map(|r| r.to_string())
        .collect();
    if !unseen.is_empty() {
        println!(
            "rounds in the aggregator's own history (CHECKPOINT) but in no log this program read \
             (printed on the old host just before the move): {}",
            unseen.join(", ")
        );
    }
    let lost = o.log.lost_rounds(a.rounds, counted);
    let (acc, central) = o.log.accuracies();
    println!(
        "lost rounds: {lost} (missing, redone, below the quorum or dropped, of {}); {}",
        a.rounds,
        if o.finished {
            "the last round came"
        } else {
            "the last round did NOT come"
        }
    );
    println!(
        "final test accuracy: federated {}, centralised {} (difference {} points)",
        f(acc, 4),
        f(central, 4),
        f(acc.zip(central).map(|(a, c)| (a - c) * 100.0), 2)
    );
    println!(
        "up: {} s from the start of the first node ({}) to the first round (nodes connected and \
         mapped at {:.2} s, `brume deploy` returned at {:.2} s, all instances running at {:.2} s)",
        f(up_s, 2),
        if a.testnet {
            "`testnet up`"
        } else {
            "its daemon"
        },
        o.nodes_up_s,
        o.deployed_s,
        o.running_s
    );

    // The picture.
    let mut markers = Vec::new();
    if let Some(m) = &o.moved {
        markers.push(Marker {
            round: m.after_round as f64 + 0.5,
            label: "move".into(),
        });
    }
    if let Some(k) = &o.kill {
        markers.push(Marker {
            round: k.after_round as f64 + 0.5,
            label: format!("kill (trainer {})", k.replica),
        });
    }
    let mut curves = Curves::from_log(&o.log.plot_text());
    if let Some(h) = &o.history {
        curves.fill_from_history(h);
    }
    let title = format!(
        "fedavg on the UCI digits, {} brume nodes: test accuracy per round",
        a.nodes
    );
    std::fs::write(&a.svg, plot::svg(&curves, &markers, &title))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", a.svg.display()))?;
    println!("picture: {}", a.svg.display());

    anyhow::ensure!(o.finished, "the run did not reach its last round");
    anyhow::ensure!(
        o.moved.as_ref().is_none_or(|m| m.ok),
        "the move failed: {}",
        o.moved.as_ref().map_or("", |m| m.report.as_str())
    );
    println!(
        "BENCH fedavg acc={} central_acc={} lost_rounds={lost} move_pause_ms={pause:.0} up_s={}",
        f(acc, 4),
        f(central, 4),
        f(up_s, 2)
    );
    Ok(())
}
