//! The owner's store of the latest checkpoint of each instance that asks for periodic
//! checkpoints (`checkpoint_every_s`), so that a copy re-placed after its host died starts from
//! it (the file `BRUME_RESTORE_FILE` names) instead of from nothing: what is lost is what the task did since that
//! checkpoint (docs/healing.md).
//!
//! One file per instance, `<data_dir>/checkpoints/<service>/<task>.<replica>`, CBOR, replaced
//! whole (written to a temporary file, synced, renamed over, directory synced), so a crash
//! leaves the old checkpoint or the new one, never half of one. A newer checkpoint wins: later
//! epoch, then later generation, then later sequence number (the host's capture time); an
//! older one is ignored. The state is capped at [`MAX_CHECKPOINT`] bytes.
//!
//! [`Keeper`] is what the deploy protocol's `Checkpointed` request reaches: it takes a
//! checkpoint only from the node the ledger says hosts the instance, at that generation
//! ([`crate::deploy::authority::checkpoint_from`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use brume_overlay::PeerId;
use brume_tunnel::InstanceId;
use serde::{Deserialize, Serialize};

use super::criu_images::CriuImages;
use crate::deploy::authority::checkpoint_from;
use crate::deploy::ledger::Ledger;
use crate::deploy::wire::{check_name, Generation};

/// The largest state kept (and sent): the largest a task may answer to `CHECKPOINT` (3 MiB),
/// which fits a deploy frame. (It was 128 KiB while the state travelled in an environment
/// variable, which Linux caps at that.)
pub const MAX_CHECKPOINT: usize = brume_migration::app::MAX_STATE;
// A kept checkpoint travels to the owner in one deploy frame, beside its instance's name.
const _: () = assert!(MAX_CHECKPOINT + (64 << 10) <= crate::deploy::wire::MAX_FRAME);

/// One kept checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub epoch: u64,
    pub generation: Generation,
    /// Orders the checkpoints of one generation (the host's capture time, in ms since 1970).
    pub seq: u64,
    /// When this node received it (ms since 1970, this node's clock).
    pub received_unix_ms: u64,
    /// The task's `CHECKPOINT` line (empty for a CRIU checkpoint).
    pub state: String,
    /// A `checkpoint = "criu"` task's CRIU images ([`super::criu_images`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<CriuImages>,
}

impl Checkpoint {
    /// A checkpoint that arrives now, stamped with this node's clock.
    pub fn received(epoch: u64, generation: Generation, seq: u64, state: String) -> Checkpoint {
        Checkpoint {
            epoch,
            generation,
            seq,
            received_unix_ms: now_unix_ms(),
            state,
            images: None,
        }
    }

    /// This checkpoint carrying a CRIU dump.
    pub fn with_images(mut self, images: Option<CriuImages>) -> Checkpoint {
        self.images = images;
        self
    }

    /// What it keeps: its state line and its images' archive.
    pub fn bytes(&self) -> usize {
        self.state.len() + self.images.as_ref().map_or(0, |i| i.archive.len())
    }

    fn order(&self) -> (u64, Generation, u64) {
        (self.epoch, self.generation, self.seq)
    }

    /// How long ago it was received, in ms (0 if the clock went back).
    pub fn age_ms(&self) -> u64 {
        now_unix_ms().saturating_sub(self.received_unix_ms)
    }
}

/// Milliseconds since 1970 by this node's clock.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What became of an offered checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// It is now the latest.
    Kept,
    /// A newer (or the same) one is kept already: ignored.
    Older,
}

/// Why a checkpoint is not kept.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the checkpoint has {bytes} bytes, more than the {MAX_CHECKPOINT} kept")]
    TooBig { bytes: usize },
    #[error("{0}")]
    BadName(String),
    #[error("cannot write the checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Offers `c` to `store` on a blocking thread (the store writes and syncs a file), with both
/// failures (the thread's and the store's) as the reason a reply carries.
pub async fn offer(
    store: Arc<CheckpointStore>,
    id: InstanceId,
    c: Checkpoint,
) -> Result<Offered, String> {
    tokio::task::spawn_blocking(move || store.offer(&id, &c))
        .await
        .map_err(|e| format!("the checkpoint writer failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// The checkpoint files under one directory.
pub struct CheckpointStore {
    dir: PathBuf,
    /// Orders read-compare-write of the files.
    turn: Mutex<()>,
}

impl CheckpointStore {
    /// The store under `<data_dir>/checkpoints` (created on the first write).
    pub fn in_data_dir(data_dir: &Path) -> CheckpointStore {
        CheckpointStore::at(data_dir.join("checkpoints"))
    }

    /// The store under `dir` (created on the first write).
    pub fn at(dir: PathBuf) -> CheckpointStore {
        CheckpointStore {
            dir,
            turn: Mutex::new(()),
        }
    }

    /// Deletes every checkpoint kept of `service`.
    pub fn forget_service(&self, service: &str) {
        if check_name("service", service).is_ok() {
            let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
            let _ = std::fs::remove_dir_all(self.dir.join(service));
        }
    }

    fn path(&self, id: &InstanceId) -> Result<PathBuf, StoreError> {
        check_name("service", &id.service).map_err(StoreError::BadName)?;
        check_name("task", &id.task).map_err(StoreError::BadName)?;
        Ok(self
            .dir
            .join(&id.service)
            .join(format!("{}.{}", id.task, id.replica)))
    }

    /// The latest checkpoint of `id`, if one is kept (an unreadable file counts as none).
    pub fn latest(&self, id: &InstanceId) -> Option<Checkpoint> {
        let path = self.path(id).ok()?;
        let bytes = std::fs::read(&path).ok()?;
        match ciborium::from_reader::<Checkpoint, _>(bytes.as_slice()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "unreadable checkpoint ignored: {e}");
                None
            }
        }
    }

    /// Keeps `c` as the latest checkpoint of `id` unless a newer one is kept.
    pub fn offer(&self, id: &InstanceId, c: &Checkpoint) -> Result<Offered, StoreError> {
        if c.bytes() > MAX_CHECKPOINT {
            return Err(StoreError::TooBig { bytes: c.bytes() });
        }
        let path = self.path(id)?;
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .latest(id)
            .is_some_and(|kept| kept.order() >= c.order())
        {
            return Ok(Offered::Older);
        }
        write_atomically(&path, c).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Offered::Kept)
    }
}

/// Writes `c` to `path` through a synced temporary file renamed over it.
fn write_atomically(path: &Path, c: &Checkpoint) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut bytes = Vec::new();
    ciborium::into_writer(c, &mut bytes).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A checkpoint the owner now holds as the latest, for the holders of the service's record
/// ([`super::checkpoint_relay`]).
pub type Relayed = (InstanceId, Checkpoint);

/// The owner side: takes checkpoints from the hosts its ledger names, keeps them, hands the
/// latest to a re-placement, and on to the holders of the service's record.
pub struct Keeper {
    store: Arc<CheckpointStore>,
    ledger: Arc<Ledger>,
    relay: Option<tokio::sync::mpsc::Sender<Relayed>>,
}

impl Keeper {
    pub fn new(store: CheckpointStore, ledger: Arc<Ledger>) -> Keeper {
        Keeper {
            store: Arc::new(store),
            ledger,
            relay: None,
        }
    }

    /// Every checkpoint kept as the latest is also sent on `relay` (dropped when the relay is
    /// behind: the next one supersedes it).
    pub fn with_relay(mut self, relay: tokio::sync::mpsc::Sender<Relayed>) -> Keeper {
        self.relay = Some(relay);
        self
    }

    /// Takes a checkpoint of `id` from `from` if the ledger says `from` hosts it at
    /// `generation` (and at `epoch`); whether it is now the latest. A CRIU checkpoint (with
    /// `images`) is kept here only: holders get app checkpoints, since a host restores images
    /// only from the service's owner (`crate::deploy::from_images`).
    #[allow(clippy::too_many_arguments)]
    pub async fn accept(
        &self,
        from: PeerId,
        id: &InstanceId,
        generation: Generation,
        epoch: u64,
        seq: u64,
        state: String,
        images: Option<CriuImages>,
    ) -> Result<Offered, String> {
        let entry = self.ledger.get(&id.service).filter(|e| e.epoch == epoch);
        let hosted = entry.as_ref().and_then(|e| {
            e.instances
                .iter()
                .find(|p| p.task == id.task && p.replica == id.replica)
                .map(|p| (p.peer, p.generation))
        });
        checkpoint_from(from, id, generation, hosted)?;
        let c = Checkpoint::received(epoch, generation, seq, state).with_images(images);
        let relayed = self
            .relay
            .as_ref()
            .filter(|_| c.images.is_none())
            .map(|_| (id.clone(), c.clone()));
        let offered = offer(self.store.clone(), id.clone(), c).await?;
        if let (Offered::Kept, Some(tx), Some(r)) = (offered, &self.relay, relayed) {
            let _ = tx.try_send(r);
        }
        Ok(offered)
    }

    /// The latest checkpoint of `id` of the given epoch, if one is kept.
    pub fn latest(&self, id: &InstanceId, epoch: u64) -> Option<Checkpoint> {
        self.store.latest(id).filter(|c| c.epoch == epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(epoch: u64, generation: u64, seq: u64, state: &str) -> Checkpoint {
        Checkpoint {
            epoch,
            generation: Generation(generation),
            seq,
            received_unix_ms: 1,
            state: state.into(),
            images: None,
        }
    }

    #[test]
    fn the_newer_checkpoint_wins_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = InstanceId::new("web", "db", 1);
        let store = CheckpointStore::in_data_dir(dir.path());
        assert_eq!(store.latest(&id), None);
        assert_eq!(store.offer(&id, &cp(1, 0, 10, "a")).unwrap(), Offered::Kept);
        assert_eq!(
            store.offer(&id, &cp(1, 0, 9, "old")).unwrap(),
            Offered::Older
        );
        assert_eq!(
            store.offer(&id, &cp(1, 0, 10, "same")).unwrap(),
            Offered::Older
        );
        assert_eq!(store.offer(&id, &cp(1, 0, 11, "b")).unwrap(), Offered::Kept);
        // A later generation wins whatever its sequence number.
        assert_eq!(store.offer(&id, &cp(1, 1, 0, "c")).unwrap(), Offered::Kept);
        assert_eq!(
            store.offer(&id, &cp(1, 0, 99, "stale")).unwrap(),
            Offered::Older
        );
        drop(store);
        let store = CheckpointStore::in_data_dir(dir.path());
        assert_eq!(store.latest(&id).unwrap().state, "c");
        assert!(dir.path().join("checkpoints/web/db.1").is_file());
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("checkpoints/web"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // Another instance has its own file.
        assert_eq!(store.latest(&InstanceId::new("web", "db", 0)), None);
    }

    #[test]
    fn oversize_and_badly_named_checkpoints_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::in_data_dir(dir.path());
        let id = InstanceId::new("web", "db", 0);
        let big = "x".repeat(MAX_CHECKPOINT + 1);
        assert!(matches!(
            store.offer(&id, &cp(1, 0, 1, &big)),
            Err(StoreError::TooBig { .. })
        ));
        assert_eq!(store.latest(&id), None);
        let fits = "x".repeat(MAX_CHECKPOINT);
        assert_eq!(
            store.offer(&id, &cp(1, 0, 1, &fits)).unwrap(),
            Offered::Kept
        );
        let evil = InstanceId::new("..", "db", 0);
        assert!(matches!(
            store.offer(&evil, &cp(1, 0, 1, "x")),
            Err(StoreError::BadName(_))
        ));
    }

    fn peer(seed: u8) -> PeerId {
        brume_overlay::Keypair::ed25519_from_bytes([seed; 32])
            .unwrap()
            .public()
            .to_peer_id()
    }

    #[tokio::test]
    async fn the_owner_keeps_checkpoints_only_from_the_current_host() {
        use crate::deploy::ledger::{Entry, Placed, State};
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::open(dir.path()).unwrap());
        let (host, stale) = (peer(1), peer(2));
        let placed = Placed {
            task: "db".into(),
            replica: 0,
            host: "n1".into(),
            peer: host,
            addrs: Vec::new(),
            generation: Generation(2),
        };
        let entry = Entry {
            epoch: 7,
            manifest: dir.path().join("service.toml"),
            instances: vec![placed],
            state: State::Done,
            previous: None,
            artifacts: None,
            specs: Vec::new(),
            holders: Vec::new(),
        };
        ledger.put("web", entry).await.unwrap();
        let keeper = Keeper::new(CheckpointStore::in_data_dir(dir.path()), ledger);
        let id = InstanceId::new("web", "db", 0);
        let g = Generation(2);
        let take =
            |from, g, epoch, state: &str| keeper.accept(from, &id, g, epoch, 1, state.into(), None);
        assert_eq!(take(host, g, 7, "a").await, Ok(Offered::Kept));
        // The copy a heal left behind, an older generation, another epoch: refused.
        assert!(take(stale, g, 7, "x").await.is_err());
        assert!(take(host, Generation(1), 7, "x").await.is_err());
        assert!(take(host, g, 6, "x").await.is_err());
        let other = InstanceId::new("web", "db", 1);
        assert!(keeper
            .accept(host, &other, g, 7, 1, "x".into(), None)
            .await
            .is_err());
        assert_eq!(keeper.latest(&id, 7).unwrap().state, "a");
        assert_eq!(keeper.latest(&id, 8), None);
    }
}
