//! The instances this node hosts, kept on disk so that a node that restarts (after a crash, a
//! `kill -9`, a reboot) adopts the tasks it ran or removes them, and none is orphaned.
//!
//! Why: the instance table ([`super::instances`]) lives in memory. Docker containers and
//! `checkpoint = "criu"` processes outlive the daemon, plain process-engine tasks die with it;
//! either way a restarted node that forgot them leaves tasks nobody can list, route to or stop,
//! and capacity it does not count. So every change of the table is written here whole, as
//! `hosted.json` in the data directory (through a temporary file, an fsync and a rename, as the
//! initiator's ledger is), and read back before the daemon serves anything.
//!
//! A record holds what a deploy needs to bring the instance back exactly as it was: the signed
//! spec (the owner's signature is checked again before anything is adopted or restarted), the
//! engine's task name, its port and the ports of its call forwarders (the task's `BRUME_CALL_*`
//! point at them), who sent it, and for a process the pid and its start time (field 22 of
//! `/proc/PID/stat`), so that a recycled pid is never taken for the task.
//!
//! What to do on start is [`reconcile`]: a pure function from the records, what the engine
//! lists and the start times `/proc` shows, to a list of [`Action`]s, tested on its own. The
//! daemon's thin shell ([`super::deployer::Deployer::recover`]) gathers those facts and carries
//! the actions out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use brume_overlay::PeerId;
use brume_tunnel::InstanceId;
use serde::{Deserialize, Serialize};

use super::wire::{CheckpointMode, InstanceSpec};

/// A process's pid and the start time that tells it from a later process under that pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessFacts {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: clock ticks since boot when the process started.
    pub start_time: u64,
}

/// One instance hosted here, as written to disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The spec as its owner signed it (its epoch and generation included).
    pub spec: InstanceSpec,
    /// The engine's name for its task.
    pub name: String,
    /// `"docker"` or `"process"`: the engine that ran it.
    pub engine: String,
    pub port: u16,
    /// The ports of its call forwarders, in the order the deployer opens them.
    #[serde(default)]
    pub call_ports: Vec<u16>,
    pub sent_by: PeerId,
    /// A process-engine task's process (for a CRIU-mode task, the init of its namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessFacts>,
}

/// One of brume's tasks as the engine lists it at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// Running or about to run again.
    pub alive: bool,
}

/// What start-up does about one record or task.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The task runs as recorded: take it into the table as it is.
    Adopt(Record),
    /// The task is gone (or exited): start it again from the record. `remove_first` names a
    /// leftover to remove before (an exited container; a stale process by pid).
    Restart {
        record: Record,
        remove_first: Option<Leftover>,
    },
    /// The record cannot be acted on: forget it (removing its task if one is left).
    Forget {
        record: Record,
        why: String,
        remove: Option<Leftover>,
    },
    /// A task of this node's that no record explains: remove it.
    RemoveOrphan(Leftover),
}

/// Something of a task left on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// An engine task (a container) by name.
    Task(String),
    /// A process that still runs as recorded (pid and start time checked).
    Process(ProcessFacts),
}

/// What start-up does, from what was recorded (`records`), what the engine `kind` lists as this
/// node's (`listed`: only tasks brume created on this node), and the start time `/proc` shows
/// for every recorded pid that exists (`started`). The engine kind names how a task survives a
/// restart: a Docker container by name, a process by pid and start time, and only a CRIU-mode
/// process is adopted (a plain one runs under the death signal of the node that started it, so
/// one found alive is not trusted and is replaced).
pub fn reconcile(
    records: &[Record],
    kind: &str,
    listed: &[Listed],
    started: &BTreeMap<u32, u64>,
) -> Vec<Action> {
    let mut out = Vec::new();
    // One record per instance: the newest epoch wins (a crash between two writes cannot make
    // two, but a hand-edited file could); the others are forgotten.
    let mut newest: BTreeMap<&InstanceId, &Record> = BTreeMap::new();
    for r in records {
        match newest.get(&r.spec.id) {
            Some(kept)
                if (kept.spec.epoch, kept.spec.generation) >= (r.spec.epoch, r.spec.generation) => {
            }
            _ => {
                newest.insert(&r.spec.id, r);
            }
        }
    }
    let listed_by_name: BTreeMap<&str, &Listed> =
        listed.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut explained: BTreeSet<&str> = BTreeSet::new();
    for r in records {
        explained.insert(r.name.as_str());
        let running = running_leftover(r, kind, &listed_by_name, started);
        if !std::ptr::eq(newest[&r.spec.id], r) {
            out.push(Action::Forget {
                record: r.clone(),
                why: format!(
                    "a newer record of {} (epoch {}) supersedes it",
                    r.spec.id, newest[&r.spec.id].spec.epoch
                ),
                remove: running.map(|(l, _)| l),
            });
            continue;
        }
        if r.engine != kind {
            out.push(Action::Forget {
                record: r.clone(),
                why: format!(
                    "it ran on the {} engine and this node now runs {kind}",
                    r.engine
                ),
                remove: None,
            });
            continue;
        }
        if let Err(e) = r.spec.owner() {
            out.push(Action::Forget {
                record: r.clone(),
                why: format!("its spec is not signed by its owner: {e}"),
                remove: running.map(|(l, _)| l),
            });
            continue;
        }
        match running {
            Some((_, true)) => out.push(Action::Adopt(r.clone())),
            Some((leftover, false)) => out.push(Action::Restart {
                record: r.clone(),
                remove_first: Some(leftover),
            }),
            None => out.push(Action::Restart {
                record: r.clone(),
                remove_first: None,
            }),
        }
    }
    for l in listed {
        if !explained.contains(l.name.as_str()) {
            out.push(Action::RemoveOrphan(Leftover::Task(l.name.clone())));
        }
    }
    out
}

/// What is left of `r`'s task on the host, and whether it can be adopted as it is.
fn running_leftover(
    r: &Record,
    kind: &str,
    listed: &BTreeMap<&str, &Listed>,
    started: &BTreeMap<u32, u64>,
) -> Option<(Leftover, bool)> {
    if kind == "docker" {
        let l = listed.get(r.name.as_str())?;
        return Some((Leftover::Task(r.name.clone()), l.alive));
    }
    let facts = r.process?;
    // The same pid started at another time is someone else's process: never touched.
    (started.get(&facts.pid) == Some(&facts.start_time)).then_some((
        Leftover::Process(facts),
        r.spec.checkpoint == CheckpointMode::Criu,
    ))
}

/// The hosted instances' file, `hosted.json` in the data directory.
#[derive(Debug, Clone)]
pub struct HostedFile {
    path: PathBuf,
}

impl HostedFile {
    pub fn in_data_dir(data_dir: &Path) -> HostedFile {
        HostedFile {
            path: data_dir.join("hosted.json"),
        }
    }

    /// The records on disk; none when there is no file. An unreadable file is an error (it is
    /// not overwritten: the node refuses to start rather than orphan what it lists).
    pub fn read(&self) -> anyhow::Result<Vec<Record>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a list of hosted instances ({e}); move it away to start afresh",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => anyhow::bail!("cannot read {}: {e}", self.path.display()),
        }
    }

    /// Replaces the file with `records`, atomically.
    pub fn write(&self, records: &[Record]) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(records)?;
        super::ledger::write_atomically(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::wire::Payload;

    fn key(seed: u8) -> brume_overlay::Keypair {
        brume_overlay::Keypair::ed25519_from_bytes([seed; 32]).expect("32 bytes are a key")
    }

    fn spec(task: &str, epoch: u64, criu: bool) -> InstanceSpec {
        let owner = key(1);
        InstanceSpec {
            checkpoint: if criu {
                CheckpointMode::Criu
            } else {
                CheckpointMode::default()
            },
            initiator: Some(owner.public().to_peer_id()),
            ..InstanceSpec::new(
                InstanceId::new("svc", task, 0),
                epoch,
                Payload::Command(vec!["x".into()]),
                100,
                64,
            )
        }
        .signed(&owner)
    }

    fn record(task: &str, engine: &str, process: Option<ProcessFacts>, criu: bool) -> Record {
        let spec = spec(task, 7, criu);
        Record {
            name: format!("brume-svc-{task}-0-7-node"),
            engine: engine.into(),
            port: 20_001,
            call_ports: vec![],
            sent_by: spec.initiator.expect("set"),
            process,
            spec,
        }
    }

    fn listed(name: &str, alive: bool) -> Listed {
        Listed {
            name: name.into(),
            alive,
        }
    }

    const P: ProcessFacts = ProcessFacts {
        pid: 4242,
        start_time: 99,
    };

    #[test]
    fn a_running_container_is_adopted_an_exited_one_replaced_a_missing_one_restarted() {
        let (a, b, c) = (
            record("a", "docker", None, false),
            record("b", "docker", None, false),
            record("c", "docker", None, false),
        );
        let got = reconcile(
            &[a.clone(), b.clone(), c.clone()],
            "docker",
            &[listed(&a.name, true), listed(&b.name, false)],
            &BTreeMap::new(),
        );
        assert_eq!(
            got,
            vec![
                Action::Adopt(a),
                Action::Restart {
                    remove_first: Some(Leftover::Task(b.name.clone())),
                    record: b,
                },
                Action::Restart {
                    record: c,
                    remove_first: None
                },
            ]
        );
    }

    #[test]
    fn a_container_no_record_explains_is_removed() {
        let a = record("a", "docker", None, false);
        let got = reconcile(
            std::slice::from_ref(&a),
            "docker",
            &[listed(&a.name, true), listed("brume-svc-x-0-1-node", false)],
            &BTreeMap::new(),
        );
        assert_eq!(
            got,
            vec![
                Action::Adopt(a),
                Action::RemoveOrphan(Leftover::Task("brume-svc-x-0-1-node".into())),
            ]
        );
        // Nothing recorded, nothing listed: nothing to do.
        assert!(reconcile(&[], "docker", &[], &BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_criu_process_is_adopted_only_under_its_recorded_start_time() {
        let r = record("a", "process", Some(P), true);
        let alive = BTreeMap::from([(P.pid, P.start_time)]);
        assert_eq!(
            reconcile(std::slice::from_ref(&r), "process", &[], &alive),
            vec![Action::Adopt(r.clone())]
        );
        // The pid now belongs to a process started at another time: not ours, not touched.
        let recycled = BTreeMap::from([(P.pid, P.start_time + 1)]);
        assert_eq!(
            reconcile(std::slice::from_ref(&r), "process", &[], &recycled),
            vec![Action::Restart {
                record: r.clone(),
                remove_first: None
            }]
        );
        // Gone.
        assert_eq!(
            reconcile(std::slice::from_ref(&r), "process", &[], &BTreeMap::new()),
            vec![Action::Restart {
                record: r,
                remove_first: None
            }]
        );
    }

    #[test]
    fn a_plain_process_is_restarted_and_one_found_alive_is_replaced() {
        let r = record("a", "process", Some(P), false);
        assert_eq!(
            reconcile(std::slice::from_ref(&r), "process", &[], &BTreeMap::new()),
            vec![Action::Restart {
                record: r.clone(),
                remove_first: None
            }]
        );
        let alive = BTreeMap::from([(P.pid, P.start_time)]);
        assert_eq!(
            reconcile(std::slice::from_ref(&r), "process", &[], &alive),
            vec![Action::Restart {
                record: r.clone(),
                remove_first: Some(Leftover::Process(P))
            }]
        );
        // A record without process facts (written before the task's pid was known).
        let bare = record("b", "process", None, true);
        assert_eq!(
            reconcile(std::slice::from_ref(&bare), "process", &[], &alive),
            vec![Action::Restart {
                record: bare,
                remove_first: None
            }]
        );
    }

    #[test]
    fn a_bad_signature_or_another_engine_is_forgotten_with_its_task_removed() {
        let mut forged = record("a", "docker", None, false);
        forged.spec.cpu_millis = 1; // no longer what the owner signed
        let got = reconcile(
            std::slice::from_ref(&forged),
            "docker",
            &[listed(&forged.name, true)],
            &BTreeMap::new(),
        );
        assert!(
            matches!(&got[..], [Action::Forget { remove: Some(Leftover::Task(n)), why, .. }]
                if *n == forged.name && why.contains("not signed")),
            "{got:?}"
        );

        let other = record("b", "docker", None, false);
        let got = reconcile(
            std::slice::from_ref(&other),
            "process",
            &[],
            &BTreeMap::new(),
        );
        assert!(
            matches!(&got[..], [Action::Forget { remove: None, why, .. }] if why.contains("docker")),
            "{got:?}"
        );
    }

    #[test]
    fn of_two_records_of_one_instance_the_newer_epoch_wins() {
        let old = record("a", "docker", None, false);
        let mut new = old.clone();
        new.spec = spec("a", 8, false);
        new.name = "brume-svc-a-0-8-node".into();
        let got = reconcile(
            &[old.clone(), new.clone()],
            "docker",
            &[listed(&old.name, true), listed(&new.name, true)],
            &BTreeMap::new(),
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            matches!(&got[0], Action::Forget { record, remove: Some(Leftover::Task(n)), .. }
                if *record == old && *n == old.name),
            "{got:?}"
        );
        assert_eq!(got[1], Action::Adopt(new));
    }

    #[test]
    fn the_file_survives_a_reopen_and_refuses_garbage() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = HostedFile::in_data_dir(dir.path());
        assert_eq!(f.read().expect("no file"), vec![]);
        let r = vec![
            record("a", "process", Some(P), true),
            record("b", "docker", None, false),
        ];
        f.write(&r).expect("write");
        assert_eq!(f.read().expect("read"), r);
        std::fs::write(dir.path().join("hosted.json"), "[oops").expect("write");
        assert!(f.read().is_err());
    }
}
