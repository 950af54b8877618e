//! The off-the-shelf server part of `brume bench migration`: Debian's redis moved live by
//! `brume migrate` on three `brume node` daemons, on the process engine and on Docker, while a
//! client counts the writes redis acknowledged (the scenario is `brume_testnet::offshelf`, the
//! same one node/tests/offshelf.rs judges). Reports every acknowledged write not read back
//! afterwards (`server_lost_writes`, summed over runs and engines) and the pause the client
//! saw (the longest gap between two acknowledged writes), medians per engine.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use brume_testnet::localnet::LocalNet;
use brume_testnet::offshelf::{self, Setup};

use super::median;

/// Labels the images the runs build, so they are removed afterwards.
const LABEL: &str = "brume.bench=migration-server";

/// What the runs on one engine saw.
pub struct ServerFigures {
    pub engine: &'static str,
    pub runs: usize,
    pub lost_writes: u64,
    /// Medians, ms.
    pub pause_ms: f64,
    pub downtime_ms: f64,
    pub move_ms: f64,
}

fn docker_answers() -> bool {
    Command::new("docker")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn remove_images() {
    let Ok(out) = Command::new("docker")
        .args(["images", "-q", "--filter", &format!("label={LABEL}")])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["image", "rm", "-f"])
            .args(&ids)
            .output();
    }
}

/// `runs` moves of redis on each engine there is (Docker only when its daemon answers).
pub fn measure(exe: &Path, relay: &Path, runs: usize) -> anyhow::Result<Vec<ServerFigures>> {
    anyhow::ensure!(
        relay.exists(),
        "no relay binary at {}: run scripts/build-static.sh first",
        relay.display()
    );
    let mut engines = vec!["process"];
    if docker_answers() {
        engines.push("docker");
    } else {
        println!("server: no Docker daemon answers; the process engine only");
    }
    let labels = format!("LABEL {LABEL}\n");
    let mut out = Vec::new();
    for engine in engines {
        let (mut lost, mut pause, mut downtime, mut took) = (0, Vec::new(), Vec::new(), Vec::new());
        for r in 0..runs {
            let net = LocalNet::start(exe, 3, &["--engine", engine, "--cpu-millis", "150"])?;
            let service = format!("srv-{engine}-{r}-{}", std::process::id());
            let setup = Setup {
                net: &net,
                dir: net.dir(),
                service: &service,
                relay,
                labels: &labels,
                budget_ms: 5000,
                max_downtime: "120s",
                liveness: Duration::from_secs(60),
            };
            let m = offshelf::move_redis(&setup);
            drop(net);
            let m = m?;
            let pause_ms = m.writes.longest_gap.as_secs_f64() * 1e3;
            println!(
                "server: {engine} run {}: redis moved live in {:.0} ms, downtime {} ms as brume \
                 reported, client pause {pause_ms:.0} ms; {} writes acknowledged, {} lost",
                r + 1,
                m.took.as_secs_f64() * 1e3,
                m.downtime_ms.map_or("?".into(), |d| d.to_string()),
                m.acknowledged,
                m.lost.len()
            );
            lost += m.lost.len() as u64;
            pause.push(pause_ms);
            downtime.push(m.downtime_ms.map_or(f64::NAN, |d| d as f64));
            took.push(m.took.as_secs_f64() * 1e3);
        }
        downtime.retain(|d| d.is_finite());
        out.push(ServerFigures {
            engine,
            runs,
            lost_writes: lost,
            pause_ms: median(&mut pause),
            downtime_ms: median(&mut downtime),
            move_ms: median(&mut took),
        });
    }
    remove_images();
    Ok(out)
}
