//! A node that restarts takes back what it ran (issue 15, healing): real `brume node` daemons
//! on loopback, a service of two relay tasks (front on the initiator, node 0; back on node 1,
//! each node offering room for one), then node 1 killed with SIGKILL and started again with
//! the same data directory.
//!
//! * Process engine: back died with its node (the death signal); the restarted node starts it
//!   again from its record, the owner's `brume ps` lists it, front's calls reach it through
//!   its route, and the owner stops it. No process of the service is left that no record
//!   explains (`orphans_after_restart=0`).
//!   A task CRIU may move (`checkpoint = "criu"`) outlives its node, and its output has a reader
//!   of its own: a line it writes while the node is down reaches `brume logs` afterwards.
//! * Docker: back's container outlived its node and is adopted as it is (the same container),
//!   and a container carrying brume's labels and node 1's name that no record explains (an
//!   orphan) is removed.
//! * Docker, after a live move: back, moved live to a free node, runs there as a runc container
//!   Docker does not know (docs/criu.md); that node is killed and restarted, and takes the same
//!   process back from the record beside its bundle instead of starting a second copy; the
//!   process's output still reaches `brume logs` (drained by a process of its own, not by the
//!   dead node), and the owner stops it.
//! * Write-ahead: the initiator dies with a deploy recorded as pending in its ledger; started
//!   again, it undoes the deploy on every host it planned, and its ledger forgets it.
//!
//! Every wait is for an observable condition, with a hang guard that fails saying what it
//! waited for.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use brume_control::{Deployed, LogLines, Moved, PsRow};
use brume_testnet::relay_service::CALL_BOUND_MS;
use common::{port_of, text, ServiceNet};

const BRUME: &str = env!("CARGO_BIN_EXE_brume");

/// How long any one condition may take on a loaded machine before the test says it hangs.
const GUARD: Duration = Duration::from_secs(120);

/// Waits until `ready` gives a value, polling; panics after [`GUARD`] naming `what`.
fn wait_for<T>(what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + GUARD;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        assert!(
            Instant::now() < until,
            "hang guard: {what} within {GUARD:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// front -> back, 100 mCPU each (one per node when nodes offer 150), built from `dir/ctx`;
/// `back_extra` is added to back's table.
fn manifest(dir: &Path, service: &str, back_extra: &str) -> PathBuf {
    common::chain_context(dir, service, service);
    let mut text = format!("[service]\nname = \"{service}\"\nroot = \"front\"\n\n");
    for t in ["front", "back"] {
        let extra = if t == "back" { back_extra } else { "" };
        text += &format!(
            "[[task]]\nname = \"{t}\"\nbuild = \"ctx\"\ncpu_millis = 100\nmemory_mb = 64\n{extra}\n"
        );
    }
    // A generous call bound: `CALL_BOUND_MS` says why.
    text += &format!(
        "[[call]]\nfrom = \"front\"\nto = \"back\"\nlatency_ms = {CALL_BOUND_MS}\ntraffic_mbps = 1\n"
    );
    let path = dir.join("service.toml");
    std::fs::write(&path, text).expect("write the manifest");
    path
}

/// Two daemons on `engine` and the service deployed from node 0 (back on node 1); front's port.
fn deployed(engine: &str, service: &str, back_extra: &str) -> (ServiceNet, u16) {
    let net = ServiceNet::start(Path::new(BRUME), 2, engine, 150, service);
    let m = manifest(net.dir(), service, back_extra);
    let done: Deployed = net.json(0, &["deploy", m.to_str().expect("utf-8"), "--json"]);
    let (n1, _) = net.status(1);
    let row = |t: &str| {
        done.instances
            .iter()
            .find(|r| r.task == t)
            .unwrap_or_else(|| panic!("no {t} in {done:#?}"))
    };
    assert_eq!(row("back").host, n1, "back runs on node 1: {done:#?}");
    let front = port_of(&row("front").address);
    assert_eq!(
        common::ask(front, "hello").expect("front answers"),
        "front(back)"
    );
    (net, front)
}

/// The hosted records in node `i`'s data directory, as (name, pid) pairs.
fn hosted(net: &ServiceNet, i: usize) -> Vec<(String, Option<u64>)> {
    let path = net.net.data(i).join("hosted.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("hosted.json is JSON");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().expect("a name").to_string(),
                r["process"]["pid"].as_u64(),
            )
        })
        .collect()
}

/// Node 0's `ps` rows for the service, once back is listed running.
fn back_running(net: &ServiceNet) -> Option<Vec<PsRow>> {
    let out = net.brume(0, &["ps", "--json"]);
    let ps: Vec<PsRow> = serde_json::from_slice(&out.stdout).ok()?;
    ps.iter()
        .any(|r| r.instance.task == "back" && r.instance.state == "running")
        .then_some(ps)
}

/// Kills node 1 with SIGKILL, lets `meanwhile` run, restarts it, and waits until the owner
/// lists back running again and front's calls reach it.
fn crash_and_restart(net: &mut ServiceNet, front: u16, meanwhile: impl FnOnce(&ServiceNet)) {
    net.net.kill(1).expect("kill -9 node 1");
    meanwhile(net);
    net.net.restart(1).expect("node 1 starts again");
    wait_for("the owner lists back running after the restart", || {
        back_running(net)
    });
    wait_for("front's calls reach back after the restart", || {
        common::ask(front, "hello")
            .ok()
            .filter(|r| r == "front(back)")
    });
}

/// The owner stops the service: both instances stop and node 1 keeps no record.
fn owner_stops(net: &ServiceNet) {
    let stop = net.brume(0, &["stop", &net.service]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    assert!(
        text(&stop.stdout).contains("2 instance(s)"),
        "{}",
        text(&stop.stdout)
    );
    assert_eq!(hosted(net, 1), vec![], "node 1 forgot what it stopped");
}

#[test]
fn a_restarted_node_restarts_its_process_tasks_and_leaves_no_orphan() {
    let service = unique("restart-proc");
    let (mut net, front) = deployed("process", &service, "");
    let env = |task: &str| {
        [
            format!("BRUME_SERVICE={service}"),
            format!("BRUME_TASK={task}"),
        ]
    };
    let backs = || {
        let e = env("back");
        common::processes_with_env(&[e[0].as_str(), e[1].as_str()])
    };
    assert_eq!(backs().len(), 1, "one back before the crash");
    assert_eq!(hosted(&net, 1).len(), 1, "node 1 recorded back");

    crash_and_restart(&mut net, front, |_| {
        // Its plain child died with it (the death signal).
        wait_for("back to die with its node", || {
            backs().is_empty().then_some(())
        });
    });

    // The restarted node writes its records once its restart is done, which may be after back
    // answers again: wait for the record that explains the one back that runs.
    let orphans = wait_for("one back, and node 1's record of its pid", || {
        let records = hosted(&net, 1);
        let recorded: Vec<u32> = records
            .iter()
            .filter_map(|r| r.1)
            .map(|p| p as u32)
            .collect();
        let running = backs();
        let unexplained = running.iter().filter(|p| !recorded.contains(p)).count();
        (records.len() == 1 && running.len() == 1 && unexplained == 0).then_some(unexplained)
    });
    eprintln!("BENCH restart engine=process orphans_after_restart={orphans}");

    owner_stops(&net);
    let e = env("back");
    assert_eq!(
        common::processes_with_env(&[e[0].as_str()]),
        Vec::<u32>::new(),
        "nothing of the service runs after the owner stopped it"
    );
}

/// A `checkpoint = "criu"` task outlives its node (no death signal): the restarted node adopts
/// the very process, checked by pid and start time, instead of starting another.
#[test]
fn a_restarted_node_adopts_its_criu_processes() {
    if !brume_testnet::require::criu("restart::a_restarted_node_adopts_its_criu_processes") {
        return;
    }
    let service = unique("restart-criu");
    let (mut net, front) = deployed(
        "process",
        &service,
        "stateful = true\ncheckpoint = \"criu\"\n",
    );
    let back = [
        format!("BRUME_SERVICE={service}"),
        "BRUME_TASK=back".to_string(),
    ];
    let backs = || common::processes_with_env(&[back[0].as_str(), back[1].as_str()]);
    let records = hosted(&net, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    let pid = records[0].1.expect("a criu task's pid is recorded") as u32;
    assert_eq!(backs(), vec![pid], "the recorded pid is back's");

    let back_port = back_running(&net)
        .and_then(|ps| ps.into_iter().find(|r| r.instance.task == "back"))
        .map(|r| port_of(&r.instance.address))
        .expect("back is listed");

    crash_and_restart(&mut net, front, |_| {
        assert_eq!(backs(), vec![pid], "back outlived its node");
        // Its output has a reader of its own: a line now does not end it with SIGPIPE.
        assert_eq!(
            common::ask(back_port, "LOG said while its node was down").expect("back answers"),
            "OK"
        );
    });

    assert_eq!(backs(), vec![pid], "the same process, adopted");
    assert_eq!(hosted(&net, 1).len(), 1);
    wait_for("back's line in brume logs", || {
        let logs: LogLines = net.json(0, &["logs", "back", "--json"]);
        logs.lines
            .iter()
            .any(|l| l.contains("said while its node was down"))
            .then_some(())
    });
    eprintln!("BENCH restart engine=process-criu orphans_after_restart=0");
    owner_stops(&net);
    assert_eq!(backs(), Vec::<u32>::new(), "back stopped by its owner");
}

/// The id of the container named `name`, if one exists (running or not).
fn container(name: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=brume.instance={name}"))
        .output()
        .ok()?;
    let id = text(&out.stdout).trim().to_string();
    (!id.is_empty()).then_some(id)
}

#[test]
fn a_restarted_node_adopts_its_containers_and_removes_orphans() {
    if !common::need_docker("restart::a_restarted_node_adopts_its_containers_and_removes_orphans") {
        return;
    }
    let service = unique("restart-dock");
    let (mut net, front) = deployed("docker", &service, "");
    let records = hosted(&net, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    let back = records[0].0.clone();
    let before = container(&back).expect("back's container");
    let (_, peer1) = net.status(1);
    let tag: String = peer1[peer1.len() - 8..].to_string();
    // What a node that died between creating a container and recording it leaves: brume's
    // labels, this node's name, no record.
    let orphan = format!("brume-{service}-ghost-0-1-{tag}");

    crash_and_restart(&mut net, front, |net| {
        let image = text(
            &Command::new("docker")
                .args(["inspect", "-f", "{{.Config.Image}}", &before])
                .output()
                .expect("docker inspect")
                .stdout,
        )
        .trim()
        .to_string();
        let made = Command::new("docker")
            .args(["create", "--name", &orphan])
            .args(["--label", &format!("brume.instance={orphan}")])
            .args(["--label", &format!("brume.service={}", net.service)])
            .args(["--label", "brume.task=ghost"])
            .args(["--label", &format!("brume.test.owner={}", net.service)])
            .args(["--label", &format!("brume.test={}", common::run_id())])
            .arg(&image)
            .output()
            .expect("docker create");
        assert!(made.status.success(), "{}", text(&made.stderr));
    });

    assert_eq!(
        container(&back).as_deref(),
        Some(before.as_str()),
        "back's container was adopted, not replaced"
    );
    assert_eq!(container(&orphan), None, "the orphan container was removed");
    let orphans = net
        .containers()
        .len()
        .saturating_sub(hosted(&net, 0).len() + hosted(&net, 1).len());
    assert_eq!(net.containers().len(), 2, "front and back, nothing else");
    eprintln!("BENCH restart engine=docker orphans_after_restart={orphans}");

    owner_stops(&net);
    assert_eq!(net.containers(), Vec::<String>::new(), "no container left");
}

#[test]
fn an_initiator_that_died_mid_deploy_undoes_it_on_restart() {
    let service = unique("restart-wal");
    let (mut net, _front) = deployed("process", &service, "");
    let running =
        || common::processes_with_env(&[format!("BRUME_SERVICE={service}").as_str()]).len();
    assert_eq!(running(), 2);

    // The initiator dies; its ledger says the deploy never finished (what it writes before it
    // asks any host, and rewrites once all run).
    net.net.kill(0).expect("kill -9 node 0");
    let ledger = net.net.data(0).join("deployments.json");
    let mut entries: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ledger).expect("the ledger")).expect("JSON");
    entries[&service]["state"] = "pending".into();
    std::fs::write(&ledger, serde_json::to_vec(&entries).expect("JSON")).expect("write");

    net.net.restart(0).expect("node 0 starts again");
    wait_for("the pending deploy to be dropped from the ledger", || {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ledger).ok()?).ok()?;
        v.get(&service).is_none().then_some(())
    });
    wait_for("every instance of the undone deploy to stop", || {
        (running() == 0).then_some(())
    });
    assert_eq!(hosted(&net, 0), vec![]);
    assert_eq!(hosted(&net, 1), vec![]);
    let ps: Vec<PsRow> = net.json(0, &["ps", "--json"]);
    assert_eq!(ps, vec![], "the owner lists nothing of it");
}

#[test]
fn a_restarted_node_takes_back_a_task_restored_outside_docker() {
    let test = "restart::a_restarted_node_takes_back_a_task_restored_outside_docker";
    if !common::docker_live_supported(test) {
        return;
    }
    let service = unique("restart-runc");
    let _leftovers = common::RuncLeftovers(service.clone());
    let mut net = ServiceNet::start(Path::new(BRUME), 3, "docker", 150, &service);
    let m = manifest(
        net.dir(),
        &service,
        "stateful = true\ncheckpoint = \"criu\"\nuser = \"root\"\n",
    );
    let done: Deployed = net.json(0, &["deploy", m.to_str().expect("utf-8"), "--json"]);
    let row = |t: &str| {
        done.instances
            .iter()
            .find(|r| r.task == t)
            .unwrap_or_else(|| panic!("no {t} in {done:#?}"))
            .clone()
    };
    let front = port_of(&row("front").address);
    assert_eq!(
        common::ask(front, "hello").expect("front answers"),
        "front(back)"
    );
    let nodes: Vec<(String, String)> = (0..3).map(|i| net.status(i)).collect();
    let source = nodes
        .iter()
        .position(|(id, _)| *id == row("back").host)
        .expect("back's host is a node");
    assert_ne!(source, 0, "one task per node: back is not beside front");
    let target = 3 - source;
    let moved: Moved = net.json(
        0,
        &[
            "migrate",
            "back",
            "--to",
            &nodes[target].1,
            "--max-downtime",
            "120s",
            "--json",
        ],
    );
    assert_eq!(moved.host, nodes[target].0, "{moved:#?}");
    let backs =
        || common::processes_with_env(&[&format!("BRUME_SERVICE={service}"), "BRUME_TASK=back"]);
    let moved_pid = wait_for("one back process after the move", || {
        let b = backs();
        (b.len() == 1).then(|| b[0])
    });
    assert_eq!(
        net.containers().len(),
        1,
        "front's container only: back runs under runc, outside Docker"
    );

    net.net.kill(target).expect("kill -9 the target");
    assert_eq!(backs(), vec![moved_pid], "back outlived its node");
    net.net.restart(target).expect("the target starts again");
    let back_port = wait_for("the owner lists back running on the target again", || {
        back_running(&net)?
            .into_iter()
            .find(|r| r.instance.task == "back" && r.instance.host == nodes[target].0)
            .map(|r| port_of(&r.instance.address))
    });
    wait_for("front's calls reach back after the restart", || {
        common::ask(front, "hello")
            .ok()
            .filter(|r| r == "front(back)")
    });
    assert_eq!(
        backs(),
        vec![moved_pid],
        "the same process, taken back: no second copy"
    );

    // Its output reaches `brume logs`, with no node between the restore and now to read it.
    assert_eq!(
        common::ask(back_port, "LOG said after the restart").expect("back answers"),
        "OK"
    );
    wait_for("back's line in brume logs", || {
        let logs: LogLines = net.json(0, &["logs", "back", "--json"]);
        logs.lines
            .iter()
            .any(|l| l.contains("said after the restart"))
            .then_some(())
    });
    assert_eq!(backs(), vec![moved_pid], "back lives on after writing");

    let stop = net.brume(0, &["stop", &net.service]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    wait_for("back's process gone after the stop", || {
        backs().is_empty().then_some(())
    });
}
