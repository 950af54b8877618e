//! The owner of a service dies, then a host of it: a holder of the service record re-places
//! the lost instances (issue 15, "Failure": "by the service's initiator or, if it is gone too,
//! by the nearest node holding a replica of the service record"; docs/healing.md). Real
//! `brume node` daemons on loopback, the process engine, the relay service.
//!
//! Node 0 deploys `front -> back` (front, the root, on node 0; back on a node of its own: each
//! node offers 150 mCPU and each task asks 100) and pushes the service record to its three
//! neighbours. The test waits until a node other than back's host holds the record, kills
//! node 0 with SIGKILL, then back's host, and waits until the two nodes left run exactly one
//! copy of each task between them (`brume ps --all` on each) and front reaches back through
//! its route. Then node 0 starts again on its data directory: it learns the new placement from
//! the holders (its `ps` shows it) and removes the copy of front its restart brought back, so
//! one process of each task runs on the machine. The times are printed, never asserted.
//!
//! back is stateful (`checkpoint = "app"`, every second): its host sends its state to the
//! owner, which passes it on to the holders; the holder that re-places back starts it from
//! that state, so the count of requests back served goes on from where it was.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use brume_control::PsRow;
use brume_testnet::relay_service::CALL_BOUND_MS;
use common::{port_of, text};

const BRUME: &str = env!("CARGO_BIN_EXE_brume");

/// The longest the test waits for any step.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn manifest(dir: &Path, service: &str) -> PathBuf {
    common::chain_context(dir, service, service);
    // A generous call bound: `CALL_BOUND_MS` says why.
    let text = format!(
        "[service]\nname = \"{service}\"\nroot = \"front\"\n\n\
         [[task]]\nname = \"front\"\nbuild = \"ctx\"\ncpu_millis = 100\nmemory_mb = 64\n\n\
         [[task]]\nname = \"back\"\nbuild = \"ctx\"\ncpu_millis = 100\nmemory_mb = 64\n\
         stateful = true\ncheckpoint = \"app\"\ncheckpoint_every_s = 1\n\n\
         [[call]]\nfrom = \"front\"\nto = \"back\"\nlatency_ms = {CALL_BOUND_MS}\ntraffic_mbps = 1\n"
    );
    let path = dir.join("service.toml");
    std::fs::write(&path, text).expect("write the manifest");
    path
}

/// What node `i` runs (`ps --all`: its own instances, whoever owns them), running rows only.
fn runs_on(net: &common::ServiceNet, i: usize) -> Vec<PsRow> {
    let out = net.brume(i, &["ps", "--all", "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let rows: Vec<PsRow> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.into_iter()
        .filter(|r| r.service == net.service && r.instance.state == "running")
        .collect()
}

/// Polls every 200 ms until `ready` gives a value, failing after the guard.
fn wait_for<T>(what: &str, mut ready: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match ready() {
            Ok(v) => return v,
            Err(last) => assert!(
                started.elapsed() < HANG_GUARD,
                "{what}: not within {HANG_GUARD:?}; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether node `i` holds a replica of the service's record.
fn holds_record(net: &common::ServiceNet, i: usize) -> bool {
    let dir = net.net.data(i).join("records");
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(&format!(".{}.json", net.service))
        })
    })
}

/// Whether node `i` holds a checkpoint of back that `owner` passed on, containing `text`.
fn held_checkpoint_says(net: &common::ServiceNet, i: usize, owner: &str, text: &str) -> bool {
    let path = net
        .net
        .data(i)
        .join("held-checkpoints")
        .join(owner)
        .join(&net.service)
        .join("back.0");
    std::fs::read(path).is_ok_and(|b| String::from_utf8_lossy(&b).contains(text))
}

/// Whether node `i`'s record of the service places an instance on one of `hosts`.
fn record_names_any(net: &common::ServiceNet, i: usize, hosts: &[String]) -> bool {
    let Ok(entries) = std::fs::read_dir(net.net.data(i).join("records")) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.ends_with(&format!(".{}.json", net.service)) {
            return false;
        }
        let Ok(bytes) = std::fs::read(e.path()) else {
            return true;
        };
        let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let instances = record["instances"].as_array().cloned().unwrap_or_default();
        instances
            .iter()
            .any(|p| hosts.iter().any(|h| p["host"].as_str() == Some(h.as_str())))
    })
}

/// What [`deployed`] set up: the net, back's host and the other non-owner nodes.
struct Deployed {
    net: common::ServiceNet,
    victim: usize,
    survivors: Vec<usize>,
}

/// Four daemons, `front -> back` deployed from node 0 with back on a node of its own, the
/// record held by every node but back's host, and back's checkpoint at 3 served with them.
fn deployed() -> Deployed {
    let service = format!("takeover-{:08x}", rand::random::<u32>());
    let net = common::ServiceNet::start_with(
        Path::new(BRUME),
        4,
        "process",
        150,
        &["--heartbeat-interval-ms", "300", "--record-replicas", "3"],
        &service,
    );
    let m = manifest(net.dir(), &service);
    let out = net.brume(0, &["deploy", m.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "deploy failed: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    // Where back runs, by node index.
    let victim = wait_for("back runs on a node of its own", || {
        (1..4)
            .find(|&i| runs_on(&net, i).iter().any(|r| r.instance.task == "back"))
            .ok_or_else(|| "no node runs back".to_string())
    });
    let survivors: Vec<usize> = (1..4).filter(|&i| i != victim).collect();
    wait_for("every surviving node holds the service record", || {
        survivors
            .iter()
            .all(|&i| holds_record(&net, i))
            .then_some(())
            .ok_or_else(|| format!("no record on some of nodes {survivors:?}"))
    });
    // back serves three calls; its state reaches every surviving holder through the owner.
    let front_port = wait_for("front answers through back", || {
        let out = net.brume(0, &["ps", "--json"]);
        let rows: Vec<PsRow> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let port = rows
            .iter()
            .find(|r| r.instance.task == "front")
            .map(|r| port_of(&r.instance.address))
            .ok_or("front is not listed")?;
        match common::ask(port, "hello") {
            Ok(a) if a == "front(back)" => Ok(port),
            other => Err(format!("{other:?}")),
        }
    });
    for _ in 0..2 {
        assert_eq!(
            common::ask(front_port, "hello").expect("front answers"),
            "front(back)"
        );
    }
    let owner = net.status(0).1;
    wait_for(
        "every surviving holder keeps back's checkpoint at 3 served",
        || {
            let missing: Vec<usize> = survivors
                .iter()
                .copied()
                .filter(|&i| !held_checkpoint_says(&net, i, &owner, "served=3"))
                .collect();
            missing
                .is_empty()
                .then_some(())
                .ok_or_else(|| format!("nodes {missing:?} do not"))
        },
    );

    Deployed {
        net,
        victim,
        survivors,
    }
}

#[test]
fn a_holder_of_the_record_re_places_what_died_with_the_owner_and_a_host() {
    let Deployed {
        mut net,
        victim,
        survivors,
    } = deployed();
    let service = net.service.clone();
    let ids: Vec<String> = (0..4).map(|i| net.status(i).0).collect();
    let dead_ids = [ids[0].clone(), ids[victim].clone()];
    let killed = Instant::now();
    net.net.kill(0).expect("kill -9 the owner");
    net.net.kill(victim).expect("kill -9 back's host");

    let (front, back) = wait_for("front and back run again, once each", || {
        let rows: Vec<PsRow> = survivors.iter().flat_map(|&i| runs_on(&net, i)).collect();
        let of = |task: &str| -> Vec<&PsRow> {
            rows.iter().filter(|r| r.instance.task == task).collect()
        };
        match (of("front").as_slice(), of("back").as_slice()) {
            ([f], [b]) => Ok(((*f).clone(), (*b).clone())),
            (f, b) => Err(format!(
                "{} front(s), {} back(s): {rows:#?}",
                f.len(),
                b.len()
            )),
        }
    });
    let recovered = killed.elapsed();
    // The caller path: front reaches the new back through its route.
    wait_for("front reaches back", || {
        match common::ask(port_of(&front.instance.address), "hello") {
            Ok(a) if a == "front(back)" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // back goes on from the checkpoint: the front call above is the 4th (a fresh back would
    // say 1). A call of the wait above that reached back but whose answer was lost on the way
    // back counts too, hence "at least".
    let state = common::ask(port_of(&back.instance.address), "STATE").expect("back answers");
    let count: u64 = state.trim().parse().expect("STATE is a count");
    assert!(
        count >= 4,
        "back's count went on from its checkpoint (3 served before): it says {count}"
    );
    assert_eq!(
        common::ask(port_of(&back.instance.address), "hello").expect("back answers"),
        "back"
    );
    // Every surviving holder has heard that it was done (the acting holder forwards its record),
    // so no other holder acts later: still exactly one copy of each.
    wait_for(
        "every surviving holder's record shows the new hosts",
        || {
            let stale: Vec<usize> = survivors
                .iter()
                .copied()
                .filter(|&i| record_names_any(&net, i, &dead_ids))
                .collect();
            stale
                .is_empty()
                .then_some(())
                .ok_or_else(|| format!("nodes {stale:?} still place instances on {dead_ids:?}"))
        },
    );
    let rows: Vec<PsRow> = survivors.iter().flat_map(|&i| runs_on(&net, i)).collect();
    for task in ["front", "back"] {
        let n = rows.iter().filter(|r| r.instance.task == task).count();
        assert_eq!(n, 1, "{task} runs {n} times: {rows:#?}");
    }
    eprintln!(
        "takeover: owner (node 0) and back's host (node {victim}) killed; front on {} and back \
         on {} after {:.2} s, placed by a holder of the record",
        front.instance.host,
        back.instance.host,
        recovered.as_secs_f64()
    );
    for task in ["front", "back"] {
        let n = copies(&service, task);
        assert_eq!(n, 1, "{n} processes of {task} on the machine");
    }

    // The owner comes back on its data directory: its restart starts its old front again, then
    // it learns from the holders that front and back run elsewhere now, and removes its copy.
    let back_at = Instant::now();
    net.net.restart(0).expect("node 0 starts again");
    wait_for("the owner's ps shows where the holder placed them", || {
        let out = net.brume(0, &["ps", "--json"]);
        let rows: Vec<PsRow> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let at = |task: &str| {
            rows.iter()
                .find(|r| r.instance.task == task && r.instance.state == "running")
                .map(|r| r.instance.host.clone())
        };
        let want = (
            Some(front.instance.host.clone()),
            Some(back.instance.host.clone()),
        );
        if (at("front"), at("back")) == want {
            Ok(())
        } else {
            Err(format!("{rows:#?}"))
        }
    });
    wait_for("one process of each task on the whole machine", || {
        let n = (copies(&service, "front"), copies(&service, "back"));
        (n == (1, 1))
            .then_some(())
            .ok_or_else(|| format!("(front, back) processes: {n:?}"))
    });
    eprintln!(
        "takeover: the owner restarted and took the holder's placement after {:.2} s",
        back_at.elapsed().as_secs_f64()
    );
}

/// The owner dies and back's host only freezes (SIGSTOP of its daemon: back's process runs on,
/// as on a host cut off by a partition). A holder re-places back, so two copies run; when the
/// host thaws, the holder asks it, with the owner's delegation, to remove its old copy, and one
/// copy of back runs on the machine again, the holder's. Without the holder's retirement the
/// old copy runs on for good (the owner, which would retire it, stays dead).
#[test]
fn a_holder_retires_the_old_copy_of_a_host_that_was_only_frozen() {
    let Deployed {
        net,
        victim,
        survivors,
    } = deployed();
    let service = net.service.clone();
    let ids: Vec<String> = (0..4).map(|i| net.status(i).0).collect();
    let host_pid = net.net.pid(victim).expect("back's host runs");
    let mut net = net;
    net.net.kill(0).expect("kill -9 the owner");
    /// Thaws the frozen daemon when the test ends, also on a failure.
    struct Thaw(u32);
    impl Drop for Thaw {
        fn drop(&mut self) {
            // SAFETY: kill(2) with a pid this test started and has not reaped.
            unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
        }
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(host_pid as i32, libc::SIGSTOP) }, 0);
    let thaw = Thaw(host_pid);
    let back = wait_for("a holder runs back again on a survivor", || {
        survivors
            .iter()
            .flat_map(|&i| runs_on(&net, i))
            .find(|r| r.instance.task == "back")
            .ok_or_else(|| "no survivor runs back".to_string())
    });
    assert_ne!(back.instance.host, ids[victim]);
    // The frozen host's copy still runs beside the new one.
    assert_eq!(copies(&service, "back"), 2, "the old copy and the holder's");
    drop(thaw);
    wait_for("the thawed host's old copy of back is retired", || {
        let n = copies(&service, "back");
        (n == 1)
            .then_some(())
            .ok_or_else(|| format!("{n} processes of back"))
    });
    assert!(
        runs_on(&net, victim)
            .iter()
            .all(|r| r.instance.task != "back"),
        "the thawed host still lists back"
    );
    let rows: Vec<PsRow> = survivors.iter().flat_map(|&i| runs_on(&net, i)).collect();
    assert_eq!(
        rows.iter().filter(|r| r.instance.task == "back").count(),
        1,
        "{rows:#?}"
    );
}

/// How many processes of `task` of `service` run on this machine.
fn copies(service: &str, task: &str) -> usize {
    common::processes_with_env(&[
        &format!("BRUME_SERVICE={service}"),
        &format!("BRUME_TASK={task}"),
    ])
    .len()
}
