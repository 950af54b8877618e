//! A host cut off, re-placed, and heard again (issue 15, "Partitions"; docs/healing.md): real
//! `brume node` daemons on loopback, the process engine, the relay service. The test freezes
//! the daemon hosting `back` with SIGSTOP: its task keeps running (a real split, the old copy
//! still serves), the initiator (node 0) declares the host dead and places `back` elsewhere at
//! the next generation. Then the daemon is thawed with SIGCONT, and the test waits until
//! exactly one copy of `back` runs on the whole machine, it is the new one, and the old host
//! kept the retired copy's log and spec under `retired/`. No time is asserted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use brume_control::PsRow;
use brume_testnet::relay_service::CALL_BOUND_MS;
use common::text;

const BRUME: &str = env!("CARGO_BIN_EXE_brume");

/// The longest the test waits for any one condition.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// `front -> back`, built from the relay's context.
fn manifest(dir: &Path, service: &str) -> PathBuf {
    common::chain_context(dir, service, service);
    // A generous call bound: `CALL_BOUND_MS` says why.
    let text = format!(
        "[service]\nname = \"{service}\"\nroot = \"front\"\n\n\
         [[task]]\nname = \"front\"\nbuild = \"ctx\"\ncpu_millis = 100\nmemory_mb = 64\n\n\
         [[task]]\nname = \"back\"\nbuild = \"ctx\"\ncpu_millis = 100\nmemory_mb = 64\n\n\
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
fn wait_until<T>(what: &str, mut ready: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match ready() {
            Ok(v) => return v,
            Err(last) => assert!(
                started.elapsed() < HANG_GUARD,
                "{what}: not within {HANG_GUARD:?}; last seen: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The pids of `service`'s `back` task on this machine, on every host.
fn back_processes(service: &str) -> Vec<u32> {
    let mut pids = common::processes_with_env(&[
        &format!("BRUME_SERVICE={service}"),
        "BRUME_TASK=back",
        "BRUME_REPLICA=0",
    ]);
    pids.sort_unstable();
    pids
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// Thaws the frozen daemon if the test fails while it is stopped (the net's drop then ends it).
struct Thaw(Option<u32>);

impl Drop for Thaw {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

/// A split under way: `back` deployed, its host (`victim`) frozen with SIGSTOP, and `back`
/// placed again on `new_host` by node 0, the old copy still running.
struct Split {
    /// First, so it is dropped first: a failing test thaws the host before the net stops it.
    thaw: Thaw,
    net: common::ServiceNet,
    service: String,
    victim: usize,
    old_host: String,
    new_host: String,
    old_pids: Vec<u32>,
    pid: u32,
}

impl Split {
    /// Three daemons, `front -> back` deployed from node 0, back's host frozen until node 0 has
    /// placed `back` elsewhere.
    fn start(prefix: &str) -> Split {
        let service = unique(prefix);
        let net = common::ServiceNet::start_with(
            Path::new(BRUME),
            3,
            "process",
            150,
            &["--heartbeat-interval-ms", "300"],
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
        let ids: Vec<String> = (0..3).map(|i| net.status(i).0).collect();
        let old_host = wait_until("back runs", || {
            let rows = ps(&net);
            running(&rows, "back")
                .map(|r| r.instance.host.clone())
                .ok_or_else(|| format!("{rows:#?}"))
        });
        let victim = ids
            .iter()
            .position(|h| *h == old_host)
            .unwrap_or_else(|| panic!("{old_host} is none of {ids:?}"));
        assert_ne!(victim, 0, "back never runs beside front on the initiator");
        let old_pids = wait_until("back's process is seen", || {
            let pids = back_processes(&service);
            if pids.is_empty() {
                Err("no process".into())
            } else {
                Ok(pids)
            }
        });

        let pid = net.net.pid(victim).expect("the victim's pid");
        signal(pid, "-STOP");
        let thaw = Thaw(Some(pid));
        let new_host = wait_until("back is placed again elsewhere", || {
            let rows = ps(&net);
            running(&rows, "back")
                .filter(|r| r.instance.host != old_host)
                .map(|r| r.instance.host.clone())
                .ok_or_else(|| format!("{rows:#?}"))
        });
        // The split is real: the frozen host's copy still runs beside the new one.
        let during = back_processes(&service);
        assert!(
            old_pids.iter().all(|p| during.contains(p)),
            "the frozen host's copy runs on: {old_pids:?} in {during:?}"
        );
        Split {
            thaw,
            net,
            service,
            victim,
            old_host,
            new_host,
            old_pids,
            pid,
        }
    }

    /// Thaws the frozen host and waits until exactly one copy of `back` runs, the new one (by
    /// pid, on the machine, and in node 0's `ps`); returns the pids running.
    fn heal(&mut self) -> Vec<u32> {
        signal(self.pid, "-CONT");
        self.thaw.0 = None;
        let after = wait_until("exactly one copy of back runs, the new one", || {
            let pids = back_processes(&self.service);
            let old_gone = self.old_pids.iter().all(|p| !pids.contains(p));
            if old_gone && pids.len() == self.old_pids.len() {
                Ok(pids)
            } else {
                Err(format!("old {:?}, now {pids:?}", self.old_pids))
            }
        });
        let rows = ps(&self.net);
        let back = running(&rows, "back").expect("back runs");
        assert_eq!(
            back.instance.host, self.new_host,
            "the newer generation stays"
        );
        let copies = rows.iter().filter(|r| r.instance.task == "back").count();
        assert_eq!(copies, 1, "one copy of back in ps: {rows:#?}");
        after
    }
}

#[test]
fn after_a_partition_heals_one_copy_runs_the_newer_and_the_loser_is_kept() {
    let mut split = Split::start("partition");
    let after = split.heal();
    let (service, victim) = (&split.service, split.victim);
    let retired = split.net.net.data(victim).join("retired");
    let kept = wait_until("the loser's state is kept", || {
        let dirs: Vec<PathBuf> = std::fs::read_dir(&retired)
            .map_err(|e| format!("{}: {e}", retired.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    n.to_string_lossy()
                        .starts_with(&format!("{service}.back.0."))
                })
            })
            .collect();
        dirs.into_iter()
            .find(|d| d.join("log").is_file() && d.join("spec.json").is_file())
            .ok_or_else(|| format!("nothing kept in {}", retired.display()))
    });
    eprintln!(
        "partition: node {victim} ({}) frozen, back re-placed on {}; after the thaw one copy \
         runs ({after:?}, was {:?}); the loser is kept in {}",
        split.old_host,
        split.new_host,
        split.old_pids,
        kept.display()
    );
}

/// The stale copies node 0's healer still has to retire, as its data dir holds them.
fn retiring(net: &common::ServiceNet) -> usize {
    let path = net.net.data(0).join("retiring.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return 0;
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["stale"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// The same split, but the initiator crashes and restarts while the old host is frozen: the
/// restarted initiator must still know the frozen host's copy is stale (its retire book is on
/// disk) and have it stopped once the host is heard again.
#[test]
fn an_initiator_restarted_during_the_split_still_retires_the_old_copy() {
    let mut split = Split::start("partition-restart");
    wait_until("the stale copy is on node 0's disk", || {
        match retiring(&split.net) {
            0 => Err("retiring.json lists nothing".to_string()),
            n => Ok(n),
        }
    });
    // The initiator crashes (its own task, front, dies with it) and starts again on its data
    // dir, while the old host is still frozen.
    split.net.net.kill(0).expect("kill node 0");
    split.net.net.restart(0).expect("node 0 starts again");
    wait_until("node 0 answers again", || {
        let rows = ps(&split.net);
        running(&rows, "back")
            .map(|r| r.instance.host.clone())
            .ok_or_else(|| format!("{rows:#?}"))
    });
    let after = split.heal();
    wait_until(
        "node 0's book is empty once the old host answered",
        || match retiring(&split.net) {
            0 => Ok(()),
            n => Err(format!("{n} still listed")),
        },
    );
    eprintln!(
        "partition with a restart: node {} ({}) frozen, back re-placed on {}, node 0 killed and \
         restarted; after the thaw one copy runs ({after:?}, was {:?})",
        split.victim, split.old_host, split.new_host, split.old_pids
    );
}
