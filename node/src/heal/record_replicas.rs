//! Replicas of a service's record, kept by a few of its owner's nearest neighbours so that one
//! of them can re-place the service's instances when the owner is dead too
//! ([`super::takeover`], docs/healing.md "Failure").
//!
//! A record is what the owner's ledger knows of one service: the specs as the owner signed
//! them, where each instance runs and at which generation, the artifacts the hosts fetch, and
//! the owner's [`Delegation`] naming the holders in rank order. The owner pushes it after every
//! change its ledger records (a deploy, a re-placement, a move); a holder that re-places
//! instances updates its copy and forwards it to the other holders. Records are ordered by
//! (epoch, delegation version, sum of generations): an older one never replaces a newer.
//!
//! On a holder each record is one file, `<data_dir>/records/<owner>.<service>.json`, replaced
//! whole (temporary file, fsync, rename). The table is bounded, as any table a peer fills:
//! [`MAX_OWNERS`] owners, [`MAX_PER_OWNER`] services each, [`MAX_ARTIFACT_BYTES`] of
//! artifacts per owner (the holder keeps them, to serve the new hosts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use brume_overlay::PeerId;
use tracing::warn;

use crate::deploy::ledger::write_atomically;
pub use crate::deploy::wire::ServiceRecord;
use crate::deploy::wire::{check_name, InstanceSpec, Placed};

/// Owners whose records one node keeps at most.
pub const MAX_OWNERS: usize = 64;
/// Services of one owner one node keeps at most.
pub const MAX_PER_OWNER: usize = 32;
/// Instances (and specs) in one record at most.
pub const MAX_INSTANCES: usize = 256;
/// Artifact bytes of one owner's records one node keeps at most.
pub const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// Why a record is not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of {service}: {why}")]
    Invalid { service: String, why: String },
    #[error("record of {service}: the delegation does not hold: {why}")]
    Delegation { service: String, why: String },
    #[error("record of {service} from {from}: only its owner or one of its holders may send it")]
    NotAllowed { service: String, from: PeerId },
    #[error("this node keeps records of {MAX_OWNERS} owners already")]
    TooManyOwners,
    #[error("this node keeps {MAX_PER_OWNER} records of {owner} already")]
    TooManyServices { owner: PeerId },
    #[error("{owner}'s records would name more than {MAX_ARTIFACT_BYTES} bytes of artifacts")]
    TooLarge { owner: PeerId },
    #[error("cannot write the record: {0}")]
    Io(String),
}

impl ServiceRecord {
    /// The order of records of one service: later epoch, then later version, then more moves.
    pub fn order(&self) -> (u64, u64, u64) {
        let moves = self
            .instances
            .iter()
            .fold(0u64, |a, p| a.saturating_add(p.generation.0));
        (self.epoch, self.delegation.version, moves)
    }

    /// The artifact bytes the record names.
    pub fn artifact_bytes(&self) -> u64 {
        self.artifacts
            .iter()
            .fold(0, |a, m| a.saturating_add(m.size))
    }

    /// Whether `me` keeps this record from `from`: well formed, every spec signed by the
    /// owner for this service and epoch, the delegation signed by the owner and naming `me`,
    /// sent by the owner or a holder. `me`'s rank.
    pub fn check(&self, from: PeerId, me: PeerId) -> Result<usize, RecordError> {
        let service = self.service.clone();
        let invalid = |why: String| RecordError::Invalid {
            service: service.clone(),
            why,
        };
        check_name("service", &self.service).map_err(invalid)?;
        if self.specs.len() > MAX_INSTANCES || self.instances.len() > MAX_INSTANCES {
            return Err(invalid(format!("more than {MAX_INSTANCES} instances")));
        }
        if self.holder_addrs.len() > self.delegation.holders.len() {
            return Err(invalid("more holder addresses than holders".into()));
        }
        let rank = self
            .delegation
            .allows(self.owner, &self.service, me, None)
            .map_err(|e| RecordError::Delegation {
                service: service.clone(),
                why: e.to_string(),
            })?;
        if self.delegation.epoch != self.epoch {
            return Err(invalid("the delegation is for another epoch".into()));
        }
        if from != self.owner && self.delegation.rank_of(&from).is_none() {
            return Err(RecordError::NotAllowed {
                service: service.clone(),
                from,
            });
        }
        for spec in &self.specs {
            spec.check().map_err(invalid)?;
            match spec.owner() {
                Ok(o) if o == self.owner => {}
                Ok(o) => return Err(invalid(format!("{} is signed by {o}", spec.id))),
                Err(e) => return Err(invalid(format!("{}: {e}", spec.id))),
            }
            if spec.id.service != self.service || spec.epoch != self.epoch {
                return Err(invalid(format!(
                    "{} is of another service or epoch",
                    spec.id
                )));
            }
        }
        for p in &self.instances {
            check_name("task", &p.task).map_err(invalid)?;
        }
        for m in &self.artifacts {
            m.validate().map_err(|e| invalid(e.to_string()))?;
        }
        Ok(rank)
    }

    /// The owner-signed spec of one instance.
    pub fn spec_of(&self, task: &str, replica: u32) -> Option<&InstanceSpec> {
        self.specs
            .iter()
            .find(|s| s.id.task == task && s.id.replica == replica)
    }
}

/// What an offered record came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Newer than the copy kept (or the first): kept.
    Kept,
    /// Not newer: the copy kept stays.
    Older,
}

type Key = (PeerId, String);

/// The records this node holds for others, on disk.
#[derive(Debug)]
pub struct RecordBook {
    dir: PathBuf,
    table: Mutex<BTreeMap<Key, ServiceRecord>>,
}

impl RecordBook {
    /// The records kept in `data_dir`; an unreadable file is skipped (and logged).
    pub fn open(data_dir: &Path) -> RecordBook {
        let dir = data_dir.join("records");
        let mut table = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let path = e.path();
                if path.extension().and_then(|x| x.to_str()) != Some("json") {
                    continue;
                }
                match std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        serde_json::from_slice::<ServiceRecord>(&b).map_err(|e| e.to_string())
                    }) {
                    Ok(r) => {
                        table.insert((r.owner, r.service.clone()), r);
                    }
                    Err(e) => {
                        warn!(path = %path.display(), "skipping an unreadable service record: {e}")
                    }
                }
            }
        }
        RecordBook {
            dir,
            table: Mutex::new(table),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, ServiceRecord>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `record` from `from` if it checks, fits the limits and is newer than the copy
    /// kept.
    pub fn offer(
        &self,
        from: PeerId,
        me: PeerId,
        record: ServiceRecord,
    ) -> Result<Offered, RecordError> {
        record.check(from, me)?;
        let key = (record.owner, record.service.clone());
        let mut table = self.lock();
        if table.get(&key).is_some_and(|r| r.order() >= record.order()) {
            return Ok(Offered::Older);
        }
        let owner = record.owner;
        if !table.contains_key(&key) {
            let owners = table
                .keys()
                .map(|(o, _)| *o)
                .collect::<std::collections::BTreeSet<_>>();
            if !owners.contains(&owner) && owners.len() >= MAX_OWNERS {
                return Err(RecordError::TooManyOwners);
            }
            if table.keys().filter(|(o, _)| *o == owner).count() >= MAX_PER_OWNER {
                return Err(RecordError::TooManyServices { owner });
            }
        }
        let bytes = table
            .iter()
            .filter(|(k, _)| k.0 == owner && **k != key)
            .fold(record.artifact_bytes(), |a, (_, r)| {
                a.saturating_add(r.artifact_bytes())
            });
        if bytes > MAX_ARTIFACT_BYTES {
            return Err(RecordError::TooLarge { owner });
        }
        self.write(&record)?;
        table.insert(key, record);
        Ok(Offered::Kept)
    }

    fn write(&self, record: &ServiceRecord) -> Result<(), RecordError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| RecordError::Io(e.to_string()))?;
        let bytes = serde_json::to_vec(record).map_err(|e| RecordError::Io(e.to_string()))?;
        write_atomically(&self.path(record.owner, &record.service), &bytes)
            .map_err(|e| RecordError::Io(format!("{e:#}")))
    }

    fn path(&self, owner: PeerId, service: &str) -> PathBuf {
        self.dir.join(format!("{owner}.{service}.json"))
    }

    /// Drops the record of `owner`'s `service` (stopped by its owner); whether one was kept.
    pub fn forget(&self, owner: PeerId, service: &str) -> bool {
        let gone = self.lock().remove(&(owner, service.to_string())).is_some();
        if gone {
            let _ = std::fs::remove_file(self.path(owner, service));
        }
        gone
    }

    /// Every record kept.
    pub fn all(&self) -> Vec<ServiceRecord> {
        self.lock().values().cloned().collect()
    }

    /// The records kept of `owner`'s services.
    pub fn of_owner(&self, owner: PeerId) -> Vec<ServiceRecord> {
        self.lock()
            .iter()
            .filter(|(k, _)| k.0 == owner)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Records that this node re-placed an instance of `owner`'s `service` on `to`: the kept
    /// copy is updated (and rewritten); the updated record, to forward to the other holders.
    pub fn relocate(&self, owner: PeerId, service: &str, to: &Placed) -> Option<ServiceRecord> {
        let mut table = self.lock();
        let record = table.get_mut(&(owner, service.to_string()))?;
        let placed = record
            .instances
            .iter_mut()
            .find(|p| p.task == to.task && p.replica == to.replica)?;
        if placed.generation >= to.generation {
            return None;
        }
        *placed = to.clone();
        let record = record.clone();
        drop(table);
        if let Err(e) = self.write(&record) {
            warn!(%service, "cannot write the updated service record: {e}");
        }
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::wire::{CheckpointMode, Generation, Payload};
    use crate::heal::delegation::Delegation;
    use brume_overlay::Keypair;
    use brume_tunnel::InstanceId;

    fn key(seed: u8) -> Keypair {
        Keypair::ed25519_from_bytes([seed; 32]).unwrap()
    }

    fn peer(seed: u8) -> PeerId {
        key(seed).public().to_peer_id()
    }

    fn record(version: u64, holders: Vec<PeerId>) -> ServiceRecord {
        let owner = key(1);
        let spec = InstanceSpec {
            checkpoint: CheckpointMode::None,
            ..InstanceSpec::new(
                InstanceId::new("web", "back", 0),
                7,
                Payload::Command(vec!["/bin/true".into()]),
                100,
                64,
            )
        }
        .signed(&owner);
        ServiceRecord {
            service: "web".into(),
            owner: peer(1),
            owner_addrs: Vec::new(),
            epoch: 7,
            specs: vec![spec],
            instances: vec![Placed {
                task: "back".into(),
                replica: 0,
                host: "n2".into(),
                peer: peer(2),
                addrs: Vec::new(),
                generation: Generation(0),
            }],
            artifacts: Vec::new(),
            holder_addrs: Vec::new(),
            delegation: Delegation::sign(&owner, "web", 7, version, holders),
        }
    }

    #[test]
    fn a_holder_keeps_the_newest_record_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (owner, me, other) = (peer(1), peer(3), peer(4));
        let book = RecordBook::open(dir.path());
        assert_eq!(
            book.offer(owner, me, record(2, vec![me, other])),
            Ok(Offered::Kept)
        );
        assert_eq!(
            book.offer(owner, me, record(1, vec![me])),
            Ok(Offered::Older)
        );
        // Another holder forwards its re-placement: more moves, kept.
        let mut moved = record(2, vec![me, other]);
        moved.instances[0].generation = Generation(1);
        moved.instances[0].peer = peer(5);
        assert_eq!(book.offer(other, me, moved.clone()), Ok(Offered::Kept));
        // Read back after a restart.
        let again = RecordBook::open(dir.path());
        assert_eq!(again.of_owner(owner), vec![moved]);
    }

    #[test]
    fn strangers_forgeries_and_foreign_specs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (owner, me) = (peer(1), peer(3));
        let book = RecordBook::open(dir.path());
        // Not named: refused.
        assert!(matches!(
            book.offer(owner, me, record(1, vec![peer(4)])),
            Err(RecordError::Delegation { .. })
        ));
        // From a node that is neither the owner nor a holder.
        assert!(matches!(
            book.offer(peer(9), me, record(1, vec![me])),
            Err(RecordError::NotAllowed { .. })
        ));
        // A spec signed by someone else.
        let mut foreign = record(1, vec![me]);
        foreign.specs[0] = foreign.specs[0].clone().signed(&key(9));
        assert!(matches!(
            book.offer(owner, me, foreign),
            Err(RecordError::Invalid { .. })
        ));
        // A delegation signed by a thief for the owner's service.
        let mut forged = record(1, vec![me]);
        forged.delegation = Delegation::sign(&key(9), "web", 7, 1, vec![me]);
        assert!(matches!(
            book.offer(owner, me, forged),
            Err(RecordError::Delegation { .. })
        ));
        assert!(book.all().is_empty());
    }

    #[test]
    fn the_services_of_one_owner_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (owner, me) = (peer(1), peer(3));
        let book = RecordBook::open(dir.path());
        let named = |i: usize| {
            let mut r = record(1, vec![me]);
            let name = format!("s{i}");
            r.service = name.clone();
            let mut spec = r.specs[0].clone();
            spec.id = InstanceId::new(&name, "back", 0);
            r.specs = vec![spec.signed(&key(1))];
            r.delegation = Delegation::sign(&key(1), &name, 7, 1, vec![me]);
            r
        };
        for i in 0..MAX_PER_OWNER {
            assert_eq!(book.offer(owner, me, named(i)), Ok(Offered::Kept));
        }
        assert_eq!(
            book.offer(owner, me, named(MAX_PER_OWNER)),
            Err(RecordError::TooManyServices { owner })
        );
    }
}
