//! A holder's side of the service records' replicas: it keeps the records others push here
//! ([`super::record_replicas`], bounded, on disk), fetches their artifacts from the sender and
//! pins them against the garbage collector, so that it can serve them to the hosts it places
//! instances on if it takes over ([`super::replicator`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use brume_artifact::{self as artifact, ChunkStore, FetchOptions};
use brume_overlay::{OverlayHandle, PeerId};
use tracing::info;

use super::checkpoints::{offer, Checkpoint, CheckpointStore};
use super::record_replicas::{Offered, RecordBook, ServiceRecord};
use super::retire_book::{RetireBook, HELD_FILE};
use crate::deploy::wire::Generation;
use crate::deploy::wire::Reply;
use crate::gc::{Collector, PinGuard};
use brume_tunnel::InstanceId;

/// The records this node holds for others, the artifacts they need, and the latest
/// checkpoints of their instances (`<data_dir>/held-checkpoints/<owner>/`).
pub struct Holder {
    book: RecordBook,
    /// The copies this holder left on the old hosts of instances it re-placed for a dead
    /// owner, until each old host confirms it stopped them (`<data_dir>/held-retiring.json`).
    retiring: RetireBook,
    checkpoints: std::path::PathBuf,
    overlay: OverlayHandle,
    store: ChunkStore,
    gc: Option<Arc<Collector>>,
    /// Their artifacts are not collected while held.
    pins: Mutex<BTreeMap<(PeerId, String), PinGuard>>,
}

impl Holder {
    /// The records kept in `data_dir` (their artifacts pinned in `gc`).
    pub fn new(
        data_dir: &Path,
        overlay: OverlayHandle,
        store: ChunkStore,
        gc: Option<Arc<Collector>>,
    ) -> Holder {
        let holder = Holder {
            book: RecordBook::open(data_dir),
            retiring: RetireBook::open_file(data_dir, HELD_FILE),
            checkpoints: data_dir.join("held-checkpoints"),
            overlay,
            store,
            gc,
            pins: Mutex::new(BTreeMap::new()),
        };
        for r in holder.book.all() {
            holder.pin(&r);
        }
        holder
    }

    pub fn book(&self) -> &RecordBook {
        &self.book
    }

    /// The copies left on the old hosts of instances this holder re-placed, to retire when
    /// those hosts answer again.
    pub fn retiring(&self) -> &RetireBook {
        &self.retiring
    }

    fn pin(&self, r: &ServiceRecord) {
        if let Some(gc) = &self.gc {
            let guard = gc.pins().pin(r.artifacts.clone());
            self.pins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((r.owner, r.service.clone()), guard);
        }
    }

    /// Takes a record from `from`: checked, its artifacts fetched from `from` (so that this
    /// node can serve them to new hosts), then kept if newer.
    pub async fn take(&self, from: PeerId, record: ServiceRecord) -> Reply {
        let me = self.overlay.peer_id();
        if let Err(e) = record.check(from, me) {
            return Reply::Refused {
                reason: e.to_string(),
            };
        }
        let kept = self.book.of_owner(record.owner);
        if kept
            .iter()
            .any(|r| r.service == record.service && r.order() >= record.order())
        {
            return Reply::Taken;
        }
        for m in &record.artifacts {
            if let Err(reason) = self.fetch(from, m).await {
                return Reply::Refused { reason };
            }
        }
        let (service, owner) = (record.service.clone(), record.owner);
        let (epoch, version) = (record.epoch, record.delegation.version);
        let pinned = record.clone();
        match self.book.offer(from, me, record) {
            Ok(Offered::Kept) => {
                self.pin(&pinned);
                info!(%service, %owner, epoch, version, "holding a replica of the service record");
                Reply::Taken
            }
            Ok(Offered::Older) => Reply::Taken,
            Err(e) => Reply::Refused {
                reason: e.to_string(),
            },
        }
    }

    fn checkpoints_of(&self, owner: PeerId) -> CheckpointStore {
        CheckpointStore::at(self.checkpoints.join(owner.to_string()))
    }

    /// Keeps a checkpoint of `instance` that `from` passed on, if `from` owns a service whose
    /// record is held here, of that epoch, and it is newer than the one kept.
    pub async fn take_checkpoint(
        &self,
        from: PeerId,
        instance: &InstanceId,
        generation: Generation,
        epoch: u64,
        seq: u64,
        state: String,
    ) -> Result<(), String> {
        let held = self
            .book
            .of_owner(from)
            .into_iter()
            .find(|r| r.service == instance.service);
        match held {
            None => {
                return Err(format!(
                    "no record of {} from {from} is held here",
                    instance.service
                ))
            }
            Some(r) if r.epoch != epoch => {
                return Err(format!(
                    "the record held of {} is of epoch {}, not {epoch}",
                    instance.service, r.epoch
                ))
            }
            Some(_) => {}
        }
        let c = Checkpoint::received(epoch, generation, seq, state);
        offer(Arc::new(self.checkpoints_of(from)), instance.clone(), c)
            .await
            .map(|_| ())
    }

    /// The latest checkpoint of `owner`'s `instance` of `epoch` held here, if any.
    pub fn latest_checkpoint(
        &self,
        owner: PeerId,
        instance: &InstanceId,
        epoch: u64,
    ) -> Option<Checkpoint> {
        self.checkpoints_of(owner)
            .latest(instance)
            .filter(|c| c.epoch == epoch)
    }

    /// Drops the record of `owner`'s `service`, the checkpoints of its instances, and unpins
    /// its artifacts.
    pub fn forget(&self, owner: PeerId, service: &str) {
        if self.book.forget(owner, service) {
            info!(%service, %owner, "the owner stopped its service: its record is dropped");
        }
        self.checkpoints_of(owner).forget_service(service);
        self.pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(owner, service.to_string()));
    }

    async fn fetch(&self, from: PeerId, m: &artifact::ArtifactManifest) -> Result<(), String> {
        let opts = FetchOptions {
            peer: from.to_string(),
            ..FetchOptions::default()
        };
        let overlay = self.overlay.clone();
        let open = || {
            let overlay = overlay.clone();
            async move {
                overlay
                    .open_stream(from, artifact::TRANSFER_PROTOCOL)
                    .await
                    .map_err(std::io::Error::other)
            }
        };
        artifact::fetch(&self.store, m, &opts, open, |_, _| {})
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot fetch the record's artifact from {from}: {e}"))
    }
}
