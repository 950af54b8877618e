//! The services this node deployed as initiator, kept on disk so `brume ps`, `brume logs` and
//! `brume stop` work after the daemon restarts, and so a deploy the daemon died in the middle
//! of is undone when it starts again: a deploy is written [`State::Pending`] before any host
//! is asked (write-ahead) and [`State::Done`] once it runs whole.
//!
//! One JSON file, `deployments.json` in the data directory, rewritten whole through a temporary
//! file, an fsync and a rename: a crash mid-write leaves the old file, never half of a new one.
//!
//! Changes are async and never block the runtime's threads: each takes the writer's turn (a
//! tokio mutex), applies itself to a copy of the table, and hands the serialised bytes to a
//! blocking thread that writes them and only then installs the copy. One change at a time, in
//! the order they took their turn, so no update is lost or overtaken; readers take a short std
//! lock and always see what is on disk. The turn is held by the write itself, so a caller that
//! stops waiting cannot let a later write overtake it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use brume_overlay::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

pub use super::wire::Placed;

/// One deployed service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub epoch: u64,
    pub manifest: PathBuf,
    pub instances: Vec<Placed>,
    /// Whether the deploy of this epoch finished (a ledger written before this field existed
    /// holds finished deploys only).
    #[serde(default, skip_serializing_if = "State::is_done")]
    pub state: State,
    /// While a deploy is pending, the entry it replaces (an earlier epoch of the service),
    /// which undoing the deploy puts back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<Entry>>,
    /// The manifests of the artifacts this epoch's hosts fetch from this node, so that its
    /// garbage collector ([`crate::gc`]) keeps their chunks. `None` in a ledger written before
    /// they were recorded: then no chunk is collected until the service is deployed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Vec<brume_artifact::ArtifactManifest>>,
    /// The instance specs of this epoch as this node (the owner) signed them, for the replicas
    /// of the service's record ([`crate::heal::record_replicas`]); empty in a ledger written
    /// before they were kept (no replica is pushed then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub specs: Vec<super::wire::InstanceSpec>,
    /// The nodes the record was last pushed to, nearest first, and where to dial them: asked
    /// back when this node starts again ([`crate::heal::replicator`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<(PeerId, Vec<Multiaddr>)>,
}

/// Where a deploy stands: written [`State::Pending`] before any host is asked (write-ahead),
/// [`State::Done`] once every instance runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    #[default]
    Done,
}

impl State {
    fn is_done(&self) -> bool {
        *self == State::Done
    }
}

/// The table of deployments, by service.
type Entries = BTreeMap<String, Entry>;

/// The deployments of this node.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    /// What is on disk; replaced whole after each write.
    entries: Arc<Mutex<Entries>>,
    /// Whose turn it is to change the ledger; held until that change is on disk.
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl Ledger {
    /// Opens the ledger in `data_dir`; a missing file is an empty ledger, an unreadable one an
    /// error (it is not overwritten).
    pub fn open(data_dir: &Path) -> anyhow::Result<Ledger> {
        let path = data_dir.join("deployments.json");
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a deployment ledger ({e}); move it away to start afresh",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        Ok(Ledger {
            path,
            entries: Arc::new(Mutex::new(entries)),
            writer: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        lock(&self.entries)
    }

    pub fn get(&self, service: &str) -> Option<Entry> {
        self.lock().get(service).cloned()
    }

    pub fn all(&self) -> BTreeMap<String, Entry> {
        self.lock().clone()
    }

    pub async fn put(&self, service: &str, entry: Entry) -> anyhow::Result<()> {
        let service = service.to_string();
        self.change(move |entries| {
            entries.insert(service, entry);
            ((), true)
        })
        .await
    }

    /// Records that a deploy of `entry.epoch` starts, before any host is asked: the entry is
    /// [`State::Pending`] and keeps the one it replaces, for [`Ledger::undo_pending`].
    pub async fn begin(&self, service: &str, entry: Entry) -> anyhow::Result<()> {
        let service = service.to_string();
        self.change(move |entries| {
            let previous = entries
                .remove(&service)
                .map(|mut e| {
                    // A pending entry replaced by another: keep what was there before both.
                    match e.state {
                        State::Pending => e.previous.take(),
                        State::Done => Some(Box::new(e)),
                    }
                })
                .unwrap_or_default();
            let entry = Entry {
                state: State::Pending,
                previous,
                ..entry
            };
            entries.insert(service, entry);
            ((), true)
        })
        .await
    }

    /// Records that the deploy of `epoch` ran whole: its entry is [`State::Done`] and the one
    /// it replaced is dropped. `false` when no such pending deploy is recorded.
    pub async fn finish(&self, service: &str, epoch: u64) -> anyhow::Result<bool> {
        let service = service.to_string();
        self.change(move |entries| match entries.get_mut(&service) {
            Some(e) if e.epoch == epoch && e.state == State::Pending => {
                e.state = State::Done;
                e.previous = None;
                (true, true)
            }
            _ => (false, false),
        })
        .await
    }

    /// Drops the pending deploy of `epoch` (undone: rolled back, or found pending on start),
    /// putting back the entry it replaced, if any. `false` when no such deploy is pending.
    pub async fn undo_pending(&self, service: &str, epoch: u64) -> anyhow::Result<bool> {
        let service = service.to_string();
        self.change(move |entries| match entries.get(&service) {
            Some(e) if e.epoch == epoch && e.state == State::Pending => {
                if let Some(previous) = entries.remove(&service).and_then(|e| e.previous) {
                    entries.insert(service, *previous);
                }
                (true, true)
            }
            _ => (false, false),
        })
        .await
    }

    /// Records the holders `service`'s record (of `epoch`) was pushed to, nearest first;
    /// `false` when the ledger holds no such epoch of it.
    pub async fn set_holders(
        &self,
        service: &str,
        epoch: u64,
        holders: Vec<(PeerId, Vec<Multiaddr>)>,
    ) -> anyhow::Result<bool> {
        let service = service.to_string();
        self.change(move |entries| match entries.get_mut(&service) {
            Some(e) if e.epoch == epoch && e.holders != holders => {
                e.holders = holders;
                (true, true)
            }
            _ => (false, false),
        })
        .await
    }

    /// The deploys recorded as started but never finished, as (service, entry).
    pub fn pending(&self) -> Vec<(String, Entry)> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.state == State::Pending)
            .map(|(s, e)| (s.clone(), e.clone()))
            .collect()
    }

    pub async fn remove(&self, service: &str) -> anyhow::Result<Option<Entry>> {
        let service = service.to_string();
        self.change(move |entries| (entries.remove(&service), true))
            .await
    }

    /// The instances `replica` of `task` in the services deployed from here (in `service`
    /// only, when given), as (service, where it runs); more than one when services share a
    /// task name.
    pub fn locate(&self, service: Option<&str>, task: &str, replica: u32) -> Vec<(String, Placed)> {
        self.lock()
            .iter()
            .filter(|(s, _)| service.is_none_or(|want| want == s.as_str()))
            .flat_map(|(s, e)| e.instances.iter().map(move |p| (s, p)))
            .filter(|(_, p)| p.task == task && p.replica == replica)
            .map(|(s, p)| (s.clone(), p.clone()))
            .collect()
    }

    /// Records that an instance of `service` moved to another host; `false` when the service
    /// or the instance is not in this ledger (it was deployed from another node). A new host
    /// means a new copy: its generation is at least one more than the one it replaces (the
    /// same host told again keeps it).
    pub async fn relocate(
        &self,
        service: &str,
        task: &str,
        replica: u32,
        to: Placed,
    ) -> anyhow::Result<bool> {
        let (service, task) = (service.to_string(), task.to_string());
        self.change(move |entries| {
            let Some(entry) = entries.get_mut(&service) else {
                return (false, false);
            };
            let Some(placed) = entry
                .instances
                .iter_mut()
                .find(|p| p.task == task && p.replica == replica)
            else {
                return (false, false);
            };
            let generation = if placed.peer == to.peer {
                placed.generation.max(to.generation)
            } else {
                placed.generation.next().max(to.generation)
            };
            *placed = Placed {
                task,
                replica,
                generation,
                ..to
            };
            (true, true)
        })
        .await
    }

    /// Applies `edit` (which says whether it changed anything) to a copy of the table, writes
    /// the copy when it changed, then installs it. A failed write changes nothing.
    async fn change<T: Send + 'static>(
        &self,
        edit: impl FnOnce(&mut Entries) -> (T, bool),
    ) -> anyhow::Result<T> {
        let turn = self.writer.clone().lock_owned().await;
        let mut next = self.lock().clone();
        let (out, changed) = edit(&mut next);
        if !changed {
            return Ok(out);
        }
        let bytes = serde_json::to_vec_pretty(&next)?;
        let (path, entries) = (self.path.clone(), self.entries.clone());
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            write_atomically(&path, &bytes)?;
            *lock(&entries) = next;
            Ok(out)
        })
        .await
        .map_err(|e| anyhow::anyhow!("the ledger's writer failed: {e}"))?
    }
}

fn lock(entries: &Mutex<Entries>) -> MutexGuard<'_, Entries> {
    // A panic elsewhere cannot leave the table half-changed: it is replaced whole.
    entries.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `bytes` to `path` through a synced temporary file in the same directory and a rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::wire::Generation;

    /// The peer id of the node whose key is `seed` repeated (tests are deterministic).
    fn peer(seed: u8) -> PeerId {
        brume_overlay::Keypair::ed25519_from_bytes([seed; 32])
            .expect("32 bytes are an ed25519 key")
            .public()
            .to_peer_id()
    }

    fn entry(epoch: u64, host: &str) -> Entry {
        Entry {
            epoch,
            manifest: "/x/service.toml".into(),
            instances: vec![Placed {
                task: "a".into(),
                replica: 0,
                host: host.into(),
                peer: peer(1),
                addrs: vec![],
                generation: Generation(0),
            }],
            state: State::Done,
            previous: None,
            artifacts: None,
            specs: Vec::new(),
            holders: Vec::new(),
        }
    }

    #[tokio::test]
    async fn artifacts_are_recorded_and_an_older_ledger_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        // A ledger written before entries recorded their artifacts.
        let old = r#"{"svc":{"epoch":3,"manifest":"/x/service.toml","instances":[]}}"#;
        std::fs::write(dir.path().join("deployments.json"), old).unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        assert_eq!(l.get("svc").unwrap().artifacts, None);
        let m = brume_artifact::ArtifactManifest {
            kind: brume_artifact::ArtifactKind::Context,
            size: 3,
            digest: brume_artifact::Digest::of(b"abc"),
            chunk_size: brume_artifact::CHUNK_SIZE,
            chunks: vec![brume_artifact::Digest::of(b"abc")],
        };
        let entry = Entry {
            artifacts: Some(vec![m.clone()]),
            specs: Vec::new(),
            holders: Vec::new(),
            ..entry(4, "n1")
        };
        l.put("svc", entry).await.unwrap();
        let again = Ledger::open(dir.path()).unwrap().get("svc").unwrap();
        assert_eq!(again.artifacts, Some(vec![m]));
    }

    #[tokio::test]
    async fn a_deploy_is_recorded_pending_before_it_starts_and_undone_or_finished() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        // A first deploy: pending, on disk, then undone: nothing left.
        l.begin("svc", entry(1, "n1")).await.unwrap();
        let on_disk = Ledger::open(dir.path()).unwrap();
        assert_eq!(on_disk.pending().len(), 1);
        assert_eq!(on_disk.get("svc").unwrap().state, State::Pending);
        assert!(!l.undo_pending("svc", 2).await.unwrap(), "another epoch");
        assert!(l.undo_pending("svc", 1).await.unwrap());
        assert!(Ledger::open(dir.path()).unwrap().all().is_empty());

        // A deploy that finishes, then a redeploy undone: the first is back.
        l.begin("svc", entry(1, "n1")).await.unwrap();
        assert!(l.finish("svc", 1).await.unwrap());
        assert_eq!(l.get("svc"), Some(entry(1, "n1")));
        l.begin("svc", entry(2, "n2")).await.unwrap();
        assert_eq!(
            l.get("svc").unwrap().previous,
            Some(Box::new(entry(1, "n1")))
        );
        assert!(!l.finish("svc", 1).await.unwrap(), "not the pending epoch");
        assert!(l.undo_pending("svc", 2).await.unwrap());
        assert_eq!(
            Ledger::open(dir.path()).unwrap().get("svc"),
            Some(entry(1, "n1"))
        );
        assert!(l.pending().is_empty());
    }

    #[test]
    fn a_ledger_written_before_the_write_ahead_state_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let old = format!(
            r#"{{"svc": {{"epoch": 3, "manifest": "/x/service.toml", "instances": [{{"task": "a", "replica": 0, "host": "n1", "peer": "{}", "addrs": []}}]}}}}"#,
            peer(1)
        );
        std::fs::write(dir.path().join("deployments.json"), old).unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        assert_eq!(l.get("svc"), Some(entry(3, "n1")));
        assert!(l.pending().is_empty());
        // And a finished entry is written as it was before (no new keys).
        let text = serde_json::to_string(&entry(3, "n1")).unwrap();
        assert!(
            !text.contains("state") && !text.contains("previous"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn survives_a_reopen_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        let entry = entry(7, "n1");
        l.put("svc", entry.clone()).await.unwrap();
        let again = Ledger::open(dir.path()).unwrap();
        assert_eq!(again.get("svc"), Some(entry));
        assert!(again.remove("svc").await.unwrap().is_some());
        assert!(Ledger::open(dir.path()).unwrap().all().is_empty());
        std::fs::write(dir.path().join("deployments.json"), "{oops").unwrap();
        assert!(Ledger::open(dir.path()).is_err());
    }

    #[tokio::test]
    async fn relocate_changes_only_what_it_finds() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        l.put("svc", entry(1, "n1")).await.unwrap();
        let mut to = entry(1, "n2").instances.remove(0);
        to.peer = peer(2);
        assert!(l.relocate("svc", "a", 0, to.clone()).await.unwrap());
        assert!(!l.relocate("other", "a", 0, to.clone()).await.unwrap());
        assert!(!l.relocate("svc", "b", 0, to.clone()).await.unwrap());
        let on_disk = Ledger::open(dir.path()).unwrap().get("svc").unwrap();
        assert_eq!(on_disk.instances[0].host, "n2");
        // Another host: the next generation; the same host again keeps it.
        assert_eq!(on_disk.instances[0].generation, Generation(0).next());
        assert!(l.relocate("svc", "a", 0, to).await.unwrap());
        assert_eq!(l.get("svc").unwrap().instances[0].generation, Generation(1));
    }

    /// Changes racing from many tasks on a multi-threaded runtime: none is lost, and what is
    /// on disk afterwards is what the ledger holds (no write overtook a later one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_are_neither_lost_nor_reordered() {
        let dir = tempfile::tempdir().unwrap();
        let l = Arc::new(Ledger::open(dir.path()).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..24u64 {
            let l = l.clone();
            tasks.spawn(async move {
                l.put(&format!("svc{i}"), entry(i, "n1")).await.unwrap();
                l.put("shared", entry(i, "n1")).await.unwrap();
                let to = entry(i, &format!("n{i}")).instances.remove(0);
                l.relocate("shared", "a", 0, to).await.unwrap();
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let held = l.all();
        assert_eq!(held.len(), 25, "every service recorded");
        assert_eq!(
            Ledger::open(dir.path()).unwrap().all(),
            held,
            "disk == memory"
        );
    }

    #[tokio::test]
    async fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        l.put("svc", entry(1, "n1")).await.unwrap();
        // A directory where the file goes: the rename fails (even for root).
        std::fs::remove_file(dir.path().join("deployments.json")).unwrap();
        std::fs::create_dir(dir.path().join("deployments.json")).unwrap();
        assert!(l.put("svc", entry(2, "n2")).await.is_err());
        assert_eq!(
            l.get("svc"),
            Some(entry(1, "n1")),
            "memory kept what was stored"
        );
    }
}
