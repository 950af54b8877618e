//! A stateful task's host dies and its copy comes back elsewhere with the state of its latest
//! periodic checkpoint (issue 15, "Failure": "stateful ones from their latest checkpoint";
//! docs/healing.md): real `brume node` daemons on loopback, the process engine, the relay
//! service. `back` is `stateful`, `checkpoint = "app"`, `checkpoint_every_s = 1`: its host
//! captures its served count every second and sends it to the initiator (node 0), which keeps
//! it under its data directory. The test serves requests, waits until the initiator's
//! checkpoint file holds the count, kills back's host with SIGKILL and waits until `brume ps`
//! shows back running on another node; that copy must count on from the checkpoint.
//!
//! The same with `checkpoint = "criu"` (the relay's count then lives only in its memory): the
//! host dumps back with CRIU every second, leaving it running, and the initiator keeps the
//! images; killed with its host (a device that dies takes its processes along), back is
//! restored from them on another node and answers the count it had: on the process engine
//! (`criu dump`) and on Docker (`runc checkpoint`, restored as a runc container).
//!
//! Each node offers 150 mCPU and each task asks 100, so no two tasks share a node.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use brume_control::PsRow;
use brume_testnet::relay_service::CALL_BOUND_MS;
use common::{port_of, text};

const BRUME: &str = env!("CARGO_BIN_EXE_brume");

/// The longest the test waits for any one condition.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// Requests served before the host dies.
const SERVED: u64 = 5;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// `front -> back`, back stateful and checkpointed every second (`mode`: app or criu).
fn manifest(dir: &Path, service: &str, mode: &str) -> PathBuf {
    common::chain_context(dir, service, service);
    // A generous call bound: `CALL_BOUND_MS` says why.
    let text = format!(
        "[service]\nname = \"{service}\"\nroot = \"front\"\n\n\
         [[task]]\nname = \"front\"\nbuild = \"ctx\"\ncpu_millis = 100\nmemory_mb = 64\n\n\
         [[task]]\nname = \"back\"\nbuild = \"ctx\"\ncpu_millis = 100\nmemory_mb = 64\n\
         stateful = true\ncheckpoint = \"{mode}\"\ncheckpoint_every_s = 1\n\n\
         [[call]]\nfrom = \"front\"\nto = \"back\"\nlatency_ms = {CALL_BOUND_MS}\ntraffic_mbps = 1\n"
    );
    let path = dir.join("service.toml");
    std::fs::write(&path, text).expect("write the manifest");
    path
}

fn ps(net: &common::ServiceNet) -> Vec<PsRow> {
    let out = net.brume(0, &["ps", "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn running<'a>(rows: &'a [PsRow], task: &str) -> Option<&'a PsRow> {
    rows.iter()
        .find(|r| r.instance.task == task && r.instance.replica == 0)
        .filter(|r| r.instance.state == "running")
}

/// Polls every 200 ms until `ready` gives a value, failing after the guard.
fn wait_until<T>(what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = ready() {
            return v;
        }
        assert!(
            started.elapsed() < HANG_GUARD,
            "{what}: not within {HANG_GUARD:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How back keeps its state, and so what the test waits for and kills.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `checkpoint = "app"`: its CHECKPOINT line; it dies with its host (the process engine's
    /// tasks die with their node).
    App,
    /// `checkpoint = "criu"` on the process engine: a CRIU dump; its process outlives a killed
    /// node, so the test kills it too.
    Criu,
    /// `checkpoint = "criu"` on Docker: a runc checkpoint; its container is killed too.
    DockerCriu,
}

#[test]
fn a_killed_host_s_stateful_task_comes_back_from_its_latest_checkpoint() {
    failover(Mode::App);
}

#[test]
fn a_killed_host_s_criu_task_comes_back_from_its_latest_criu_checkpoint() {
    let test =
        "failover_state::a_killed_host_s_criu_task_comes_back_from_its_latest_criu_checkpoint";
    if common::live_move_supported(test) {
        failover(Mode::Criu);
    }
}

/// The same on the Docker engine: `runc checkpoint --leave-running` of back's container every
/// second, and the copy restored as a runc container on another node.
#[test]
fn a_killed_host_s_docker_criu_task_comes_back_from_its_latest_criu_checkpoint() {
    let test =
        "failover_state::a_killed_host_s_docker_criu_task_comes_back_from_its_latest_criu_checkpoint";
    if common::docker_live_supported(test) {
        failover(Mode::DockerCriu);
    }
}

/// Kills back (and its host) on the Docker engine: its container.
fn kill_docker_back(service: &str) {
    let out = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter"])
        .arg(format!("label=brume.service={service}"))
        .args(["--filter", "label=brume.task=back"])
        .output()
        .expect("docker ps runs");
    let ids: Vec<String> = text(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 1, "one container of back: {ids:?}");
    let out = std::process::Command::new("docker")
        .args(["kill", &ids[0]])
        .output()
        .expect("docker kill runs");
    assert!(out.status.success(), "docker kill: {}", text(&out.stderr));
}

/// back, checkpointed every second as `mode` says, served SERVED requests, is killed with its
/// host once the initiator keeps a checkpoint that holds them, and comes back on another node
/// counting on from SERVED.
fn failover(mode: Mode) {
    let service = unique("failstate");
    let _leftovers = common::RuncLeftovers(service.clone());
    let engine = if mode == Mode::DockerCriu {
        "docker"
    } else {
        "process"
    };
    // Every node serves its metrics (on a port it picks): the host counts its checkpoints.
    let metrics = |_| vec![("BRUME_METRICS".into(), "127.0.0.1:0".into())];
    let mut net = common::ServiceNet::start_with_env(
        Path::new(BRUME),
        3,
        engine,
        150,
        &["--heartbeat-interval-ms", "300"],
        &metrics,
        &service,
    );
    // CRIU cannot dump a container task running as another user here (docs/limits.md).
    let checkpoint = match mode {
        Mode::App => "app",
        Mode::Criu => "criu",
        Mode::DockerCriu => "criu\"\nuser = \"root",
    };
    let m = manifest(net.dir(), &service, checkpoint);
    let out = net.brume(0, &["deploy", m.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "deploy failed: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let ids: Vec<String> = (0..3).map(|i| net.status(i).0).collect();
    let rows = wait_until("the service runs", || {
        let rows = ps(&net);
        (running(&rows, "front").is_some() && running(&rows, "back").is_some()).then_some(rows)
    });
    let front = port_of(&running(&rows, "front").unwrap().instance.address);
    let back = running(&rows, "back").unwrap().instance.clone();
    let victim = ids
        .iter()
        .position(|h| *h == back.host)
        .expect("back's host is a node");
    assert_ne!(victim, 0, "back never runs beside front on the initiator");

    // Requests through front until SERVED of them have reached back in full (a callee not
    // yet reachable answers an error slot and is not counted).
    let mut served = 0;
    wait_until("front serves the requests", || {
        if common::ask(front, "hello").ok().as_deref() == Some("front(back)") {
            served += 1;
        }
        (served == SERVED).then_some(())
    });
    let counted =
        |port: u16| -> Option<u64> { common::ask(port, "STATE").ok()?.trim().parse().ok() };
    assert_eq!(counted(port_of(&back.address)), Some(SERVED));
    let after_the_requests = now_unix_ms();

    // The initiator keeps back's latest checkpoint: wait until it holds the count (an app's
    // line says it; CRIU images are those of a dump taken after the requests).
    let file = net
        .net
        .data(0)
        .join("checkpoints")
        .join(&service)
        .join("back.0");
    let line = format!("relay-state/1 served={SERVED}");
    let checkpointed = Instant::now();
    wait_until(
        "the initiator holds a checkpoint with the count",
        || match mode {
            Mode::App => {
                let bytes = std::fs::read(&file).ok()?;
                String::from_utf8_lossy(&bytes)
                    .contains(&line)
                    .then_some(())
            }
            Mode::Criu | Mode::DockerCriu => criu_checkpoint_seq(&file)
                .filter(|&seq| seq > after_the_requests)
                .map(|_| ()),
        },
    );
    let took = checkpointed.elapsed();
    // The owner's `ps` says how old the checkpoint it keeps is.
    let rows = ps(&net);
    let age = running(&rows, "back").and_then(|r| r.instance.checkpoint_age_ms);
    assert!(age.is_some(), "ps shows no checkpoint of back: {rows:#?}");
    assert_eq!(
        running(&rows, "front").map(|r| r.instance.checkpoint_age_ms),
        Some(None),
        "front takes no checkpoints"
    );
    // Back's host counted the checkpoints its owner kept.
    let addr = std::fs::read_to_string(net.net.data(victim).join("metrics.addr"))
        .expect("back's host wrote metrics.addr");
    let addr = addr.trim().parse().expect("an address in metrics.addr");
    let (_, _, body) = common::http(addr, "GET", "/metrics");
    let kept = body
        .lines()
        .find_map(|l| l.strip_prefix("brume_checkpoints_total{outcome=\"ok\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(
        kept.is_some_and(|n| n >= 1.0),
        "back's host counts no kept checkpoint: {body}"
    );
    // Still the same count: checkpoints leave it running, and nothing else called it.
    assert_eq!(counted(port_of(&back.address)), Some(SERVED));

    // The device dies: its daemon and the task with it.
    let pid = (mode == Mode::Criu)
        .then(|| hosted_pid(&net.net.data(victim), "back").expect("back's pid on its host"));
    if let Some(pid) = pid {
        common::assert_runs_in_its_rootfs(pid);
    }
    let killed = Instant::now();
    net.net.kill(victim).expect("kill -9 back's host");
    match mode {
        Mode::App => {}
        // SAFETY: kill(2) of one pid, the init of back's PID namespace (its whole tree goes).
        Mode::Criu => assert_eq!(
            unsafe { libc::kill(pid.unwrap_or(0) as libc::pid_t, libc::SIGKILL) },
            0
        ),
        Mode::DockerCriu => kill_docker_back(&service),
    }
    let moved = wait_until("back runs again on another node", || {
        let rows = ps(&net);
        running(&rows, "back")
            .filter(|r| r.instance.host != back.host)
            .map(|r| r.instance.clone())
    });
    // The new copy started from the checkpoint: it counts on from SERVED (for CRIU, the
    // count the process had in memory).
    let restored = wait_until("the new back answers STATE", || {
        counted(port_of(&moved.address))
    });
    assert_eq!(
        restored, SERVED,
        "the re-placed back lost the state checkpointed before its host died"
    );
    if mode == Mode::Criu {
        let logs = net.brume(0, &["logs", "back"]);
        assert!(
            text(&logs.stdout).contains("restored by CRIU"),
            "back was not restored by CRIU: {}",
            text(&logs.stdout)
        );
        // Into the new host's copy of its rootfs, in a mount namespace of its own again.
        let pid = wait_until(
            "the restored back's pid in its new host's hosted file",
            || {
                (0..3)
                    .filter(|&i| i != victim)
                    .find_map(|i| hosted_pid(&net.net.data(i), "back"))
            },
        );
        common::assert_runs_in_its_rootfs(pid);
    }
    // And it serves on, counting from there.
    wait_until("front reaches the new back", || {
        (common::ask(front, "hello").ok().as_deref() == Some("front(back)")).then_some(())
    });
    let now = counted(port_of(&moved.address)).expect("the new back answers STATE");
    assert!(now > SERVED, "the new back counts on from {SERVED}: {now}");
    eprintln!(
        "failover with state ({}, {engine}): a checkpoint holding served={SERVED} at \
         the initiator {:.2} s after the requests; back on {} killed, running again on {} with \
         served={restored} after {:.2} s",
        if mode == Mode::App { "app" } else { "criu" },
        took.as_secs_f64(),
        back.host,
        moved.host,
        killed.elapsed().as_secs_f64()
    );
}

/// The seq (the host's capture time, ms since 1970) of the checkpoint file at `path`, if it
/// holds CRIU images.
fn criu_checkpoint_seq(path: &Path) -> Option<u64> {
    use ciborium::Value;
    let bytes = std::fs::read(path).ok()?;
    let Value::Map(fields) = ciborium::from_reader::<Value, _>(bytes.as_slice()).ok()? else {
        return None;
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.as_text() == Some(name))
            .map(|(_, v)| v.clone())
    };
    let archive = field("images")?
        .into_map()
        .ok()?
        .into_iter()
        .find_map(|(k, v)| (k.as_text() == Some("archive")).then(|| v.into_bytes().ok())?)?;
    assert!(!archive.is_empty(), "an empty archive of images");
    u64::try_from(field("seq")?.into_integer().ok()?).ok()
}

/// The pid of `task`'s process on the node whose data directory is `data`, from its hosted
/// file (a CRIU-mode task's is the init of its PID namespace).
fn hosted_pid(data: &Path, task: &str) -> Option<u32> {
    let text = std::fs::read_to_string(data.join("hosted.json")).ok()?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).ok()?;
    rows.iter()
        .find(|r| r["spec"]["id"]["task"] == task)
        .and_then(|r| r["process"]["pid"].as_u64())
        .and_then(|p| u32::try_from(p).ok())
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}
