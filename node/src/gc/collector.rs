//! The sweep itself: scans the data directory for chunks, assembled artifacts and image trees,
//! asks [`select`] what to delete, deletes it (each item logged), and keeps the node's disk
//! budget: a fetch first makes room by deleting garbage oldest-first, and is refused, with the
//! budget and the usage in the error, when the live items alone leave no room.
//!
//! One sweep runs at a time. The docker images this node prepared are recorded in
//! `<data_dir>/docker-images` (one name a line), so that a sweep only ever removes images
//! this node made, and only those no container uses.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use tracing::info;

use super::live::LiveSet;
use super::pins::Pins;
use super::select::{select, Goal, Item, ItemKind};
use crate::deploy::ledger::Ledger;

const MIB: u64 = 1 << 20;

/// Why a sweep failed or an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(
        "disk budget exceeded: this node's disk_budget_mib is {budget_mib} MiB, the chunks, \
         artifacts and image trees its instances, services and operations under way still need \
         take {live_mib} MiB, and this needs {needed_mib} MiB more; nothing unused is left to \
         delete. Raise disk_budget_mib or stop services on this node"
    )]
    OverBudget {
        budget_mib: u64,
        live_mib: u64,
        needed_mib: u64,
    },
    #[error("garbage collection: cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("garbage collection: the sweep's thread failed: {0}")]
    Join(String),
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Deleted items as (kind, key, bytes).
    pub deleted: Vec<(ItemKind, String, u64)>,
    pub freed_bytes: u64,
    /// Bytes of chunks, artifacts and image trees before and after the sweep.
    pub before_bytes: u64,
    pub after_bytes: u64,
    pub live_bytes: u64,
    /// Docker images removed (their names).
    pub images_removed: Vec<String>,
    /// Why chunks were all kept, if they were.
    pub chunks_frozen: Vec<String>,
}

/// The garbage collector of one node's data directory.
#[derive(Debug)]
pub struct Collector {
    pins: Pins,
    chunks: PathBuf,
    artifacts: PathBuf,
    trees: PathBuf,
    docker_record: PathBuf,
    /// Bytes; `None`: no budget (only the periodic sweep of old garbage).
    budget: Option<u64>,
    ledger: OnceLock<Arc<Ledger>>,
    /// One sweep at a time.
    turn: tokio::sync::Mutex<()>,
    /// Orders the docker record's rewrites.
    record: Mutex<()>,
}

impl Collector {
    /// The collector of the data directory laid out as `Services` lays it out (`chunks/`,
    /// `images/`, `tasks/images/`); `budget_mib` 0 sets no budget.
    pub fn in_data_dir(data_dir: &Path, budget_mib: u64) -> Collector {
        Collector {
            pins: Pins::default(),
            chunks: data_dir.join("chunks"),
            artifacts: data_dir.join("images"),
            trees: data_dir.join("tasks").join("images"),
            docker_record: data_dir.join("docker-images"),
            budget: (budget_mib > 0).then(|| budget_mib.saturating_mul(MIB)),
            ledger: OnceLock::new(),
            turn: tokio::sync::Mutex::new(()),
            record: Mutex::new(()),
        }
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// The budget in bytes, if one is set.
    pub fn budget(&self) -> Option<u64> {
        self.budget
    }

    /// The initiator's ledger, whose entries' artifacts are live (set once).
    pub fn set_ledger(&self, ledger: Arc<Ledger>) {
        let _ = self.ledger.set(ledger);
    }

    /// What the ledger and the pins keep; the caller adds its instances.
    pub fn live_base(&self) -> LiveSet {
        let mut live = LiveSet::default();
        if let Some(ledger) = self.ledger.get() {
            for (service, entry) in ledger.all() {
                let mut e = Some(&entry);
                while let Some(entry) = e {
                    match &entry.artifacts {
                        Some(ms) => ms.iter().for_each(|m| live.add(m)),
                        None => live.freeze_chunks(format!(
                            "the ledger entry of {service} (epoch {}) predates artifact \
                             records; deploy it again to let chunks be collected",
                            entry.epoch
                        )),
                    }
                    e = entry.previous.as_deref();
                }
            }
        }
        self.pins.add_to(&mut live);
        live
    }

    /// Deletes the garbage `goal` names; `Err(OverBudget)` when the goal has a budget that the
    /// live items alone (with `goal.extra`) exceed (the garbage old enough still goes).
    pub async fn sweep(&self, live: LiveSet, goal: Goal) -> Result<Report, GcError> {
        let _turn = self.turn.lock().await;
        let dirs = (
            self.chunks.clone(),
            self.artifacts.clone(),
            self.trees.clone(),
        );
        let frozen = live.chunks_frozen.clone();
        let (plan, deleted) = tokio::task::spawn_blocking(move || {
            let items = scan(&dirs.0, &dirs.1, &dirs.2)?;
            let plan = select(items, &live, goal);
            let mut deleted = Vec::new();
            for item in &plan.delete {
                if delete(item)? {
                    info!(kind = ?item.kind, key = %item.key, bytes = item.bytes,
                        path = %item.path.display(), "gc: deleted an item nothing uses");
                    deleted.push((item.kind, item.key.clone(), item.bytes));
                }
            }
            Ok::<_, GcError>((plan, deleted))
        })
        .await
        .map_err(|e| GcError::Join(e.to_string()))??;
        let freed_bytes = deleted.iter().map(|(_, _, b)| b).sum();
        let report = Report {
            deleted,
            freed_bytes,
            before_bytes: plan.total_bytes,
            after_bytes: plan.total_bytes - freed_bytes,
            live_bytes: plan.live_bytes,
            images_removed: Vec::new(),
            chunks_frozen: frozen,
        };
        if plan.over_budget {
            let budget = goal.budget.unwrap_or_default();
            return Err(GcError::OverBudget {
                budget_mib: budget / MIB,
                live_mib: plan.live_bytes.div_ceil(MIB),
                needed_mib: goal.extra.div_ceil(MIB),
            });
        }
        Ok(report)
    }

    /// Makes room for `extra` bytes within the budget (no budget: nothing to do), deleting
    /// garbage oldest-first; refuses when the live items leave no room.
    pub async fn make_room(&self, live: LiveSet, extra: u64) -> Result<Report, GcError> {
        let Some(budget) = self.budget else {
            return Ok(Report::default());
        };
        self.sweep(
            live,
            Goal {
                before: None,
                budget: Some(budget),
                extra,
                max_items: usize::MAX,
            },
        )
        .await
    }

    /// Notes that this node prepared Docker image `name` (so a sweep may remove it later).
    pub fn record_docker_image(&self, name: &str) -> Result<(), GcError> {
        let _one = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let mut names = self.read_record()?;
        if names.insert(name.to_string()) {
            self.write_record(&names)?;
        }
        Ok(())
    }

    /// The recorded Docker images whose artifact is not live and, if its assembled tarball is
    /// still here, was last written before `before` (an image has no age of its own here).
    pub fn docker_garbage(
        &self,
        live: &LiveSet,
        before: SystemTime,
    ) -> Result<Vec<String>, GcError> {
        let ids = live.image_ids();
        let young: BTreeSet<String> = entries(&self.artifacts)?
            .into_iter()
            .filter(|e| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= before)
            })
            .map(|e| e.file_name().to_string_lossy().chars().take(16).collect())
            .collect();
        let _one = self.record.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self
            .read_record()?
            .into_iter()
            .filter(|n| {
                let id = n
                    .strip_prefix("brume/")
                    .and_then(|r| r.strip_suffix(":latest"))
                    .unwrap_or_default();
                !ids.contains(id) && !young.contains(id)
            })
            .collect())
    }

    /// Drops `names` from the record (they were removed, or are gone).
    pub fn forget_docker_images(&self, names: &[String]) -> Result<(), GcError> {
        let _one = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = self.read_record()?;
        let before = all.len();
        for n in names {
            all.remove(n);
        }
        if all.len() != before {
            self.write_record(&all)?;
        }
        Ok(())
    }

    fn read_record(&self) -> Result<BTreeSet<String>, GcError> {
        match std::fs::read_to_string(&self.docker_record) {
            Ok(text) => Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(source) => Err(GcError::Io {
                what: "read",
                path: self.docker_record.clone(),
                source,
            }),
        }
    }

    fn write_record(&self, names: &BTreeSet<String>) -> Result<(), GcError> {
        let io = |source| GcError::Io {
            what: "write",
            path: self.docker_record.clone(),
            source,
        };
        let tmp = self.docker_record.with_extension("tmp");
        let text: String = names.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &self.docker_record).map_err(io)
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> GcError + 'a {
    move |source| GcError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Entries of `dir`; a missing directory has none.
fn entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>, GcError> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd.flatten().collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("list", dir)(e)),
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Every chunk, assembled artifact and image tree on disk. Temp files (the chunk store's
/// `tmp/`, an image tree being built, `.`-names) are never items.
pub fn scan(chunks: &Path, artifacts: &Path, trees: &Path) -> Result<Vec<Item>, GcError> {
    let mut items = Vec::new();
    let modified = |m: &std::fs::Metadata| m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    for sub in entries(chunks)? {
        let prefix = sub.file_name().to_string_lossy().into_owned();
        if prefix.len() != 2 || !is_hex(&prefix) {
            continue;
        }
        for e in entries(&sub.path())? {
            let rest = e.file_name().to_string_lossy().into_owned();
            let Ok(m) = e.metadata() else { continue };
            if rest.len() != 62 || !is_hex(&rest) || !m.is_file() {
                continue;
            }
            items.push(Item {
                kind: ItemKind::Chunk,
                key: format!("{prefix}{rest}"),
                path: e.path(),
                bytes: m.len(),
                modified: modified(&m),
            });
        }
    }
    for e in entries(artifacts)? {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(hex) = name.strip_suffix(".tar") else {
            continue;
        };
        let Ok(m) = e.metadata() else { continue };
        if hex.len() != 64 || !is_hex(hex) || !m.is_file() {
            continue;
        }
        items.push(Item {
            kind: ItemKind::Artifact,
            key: hex.to_string(),
            path: e.path(),
            bytes: m.len(),
            modified: modified(&m),
        });
    }
    for e in entries(trees)? {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if name.len() != 16 || !is_hex(&name) || !m.is_dir() {
            continue;
        }
        items.push(Item {
            kind: ItemKind::ImageTree,
            key: name,
            path: e.path(),
            bytes: tree_bytes(&e.path()),
            modified: modified(&m),
        });
    }
    Ok(items)
}

/// Bytes of the regular files under `dir` (symlinks not followed).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                todo.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}

/// Deletes one item; `false` when it was already gone.
fn delete(item: &Item) -> Result<bool, GcError> {
    let removed = match item.kind {
        ItemKind::ImageTree => std::fs::remove_dir_all(&item.path),
        ItemKind::Chunk | ItemKind::Artifact => std::fs::remove_file(&item.path),
    };
    match removed {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("delete", &item.path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::ledger::{Entry, State};
    use brume_artifact::{ArtifactKind, ArtifactManifest, Digest, CHUNK_SIZE};

    fn manifest(seed: &[u8]) -> ArtifactManifest {
        ArtifactManifest {
            kind: ArtifactKind::Context,
            size: 1,
            digest: Digest::of(seed),
            chunk_size: CHUNK_SIZE,
            chunks: vec![Digest::of(&[seed, b"-chunk"].concat())],
        }
    }

    fn entry(epoch: u64, artifacts: Option<Vec<ArtifactManifest>>) -> Entry {
        Entry {
            epoch,
            manifest: "/x/service.toml".into(),
            instances: Vec::new(),
            state: State::Done,
            previous: None,
            artifacts,
            specs: Vec::new(),
            holders: Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_ledger_keeps_its_services_artifacts_and_an_old_entry_freezes_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::open(dir.path()).unwrap());
        let gc = Collector::in_data_dir(dir.path(), 0);
        gc.set_ledger(ledger.clone());
        let (now, before) = (manifest(b"now"), manifest(b"before"));
        // A deploy pending over an earlier epoch: both epochs' artifacts are live.
        ledger
            .put("web", entry(1, Some(vec![before.clone()])))
            .await
            .unwrap();
        ledger
            .begin("web", entry(2, Some(vec![now.clone()])))
            .await
            .unwrap();
        let live = gc.live_base();
        for m in [&now, &before] {
            assert!(live.artifacts.contains(&m.digest.to_hex()));
            assert!(live.chunks.contains(&m.chunks[0].to_hex()));
        }
        assert!(live.chunks_frozen.is_empty());
        // An entry from before artifacts were recorded: no chunk may go, and it says why.
        ledger.put("old", entry(3, None)).await.unwrap();
        let live = gc.live_base();
        assert_eq!(live.chunks_frozen.len(), 1);
        assert!(
            live.chunks_frozen[0].contains("old"),
            "{:?}",
            live.chunks_frozen
        );
        assert!(live.has_chunk(&Digest::of(b"anything").to_hex()));
    }
}
