//! The instance table: what runs on this node, and what it has promised of its capacity.
//!
//! The deployer adds and removes entries, the mover takes them away when an instance leaves and
//! adds the ones that arrive live; both read the free share from here before they accept work,
//! so the resource check has one source. Every update is one insert or remove under a short
//! lock, never held across an await.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use brume_overlay::PeerId;
use brume_tunnel::{Forwarder, InstanceId};

use super::wire::InstanceSpec;

/// What this node may hand out to tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub cpu_millis: u64,
    pub memory_mb: u64,
}

/// One instance running here.
pub(crate) struct Instance {
    pub(crate) spec: InstanceSpec,
    /// The engine's name for its container or process.
    pub(crate) name: String,
    pub(crate) port: u16,
    /// Dropping them closes the listeners behind `BRUME_CALL_*`.
    pub(crate) forwarders: Vec<Forwarder>,
    /// Who brought it here: its owner, or the source of the move that made this copy (who may
    /// undo its start, or fence it).
    pub(crate) sent_by: PeerId,
}

/// The instances running here, one epoch of each.
pub struct Instances {
    capacity: Capacity,
    table: Mutex<BTreeMap<InstanceId, Instance>>,
}

impl Instances {
    pub fn new(capacity: Capacity) -> Self {
        Instances {
            capacity,
            table: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, BTreeMap<InstanceId, Instance>> {
        // A panic while holding the lock cannot leave the map half-written (every update is
        // one insert or remove), so a poisoned lock is still sound to use.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn insert(&self, instance: Instance) {
        self.lock().insert(instance.spec.id.clone(), instance);
    }

    pub(crate) fn remove(&self, id: &InstanceId) -> Option<Instance> {
        self.lock().remove(id)
    }

    pub fn contains(&self, id: &InstanceId) -> bool {
        self.lock().contains_key(id)
    }

    /// The spec and port of an instance here.
    pub(crate) fn get(&self, id: &InstanceId) -> Option<(InstanceSpec, String, u16)> {
        self.lock()
            .get(id)
            .map(|i| (i.spec.clone(), i.name.clone(), i.port))
    }

    /// The owner of the service's instances here, if any runs here.
    pub fn owner_of(&self, service: &str) -> Option<PeerId> {
        self.lock()
            .values()
            .find(|i| i.spec.id.service == service)
            .and_then(|i| i.spec.initiator)
    }

    /// Who brought an instance here (see [`Instance::sent_by`]).
    pub fn sent_by(&self, id: &InstanceId) -> Option<PeerId> {
        self.lock().get(id).map(|i| i.sent_by)
    }

    /// The instances here, all or those matching `keep`.
    pub fn ids(&self, keep: impl Fn(&InstanceId) -> bool) -> Vec<InstanceId> {
        self.lock().keys().filter(|k| keep(k)).cloned().collect()
    }

    /// CPU (mCPU) and memory (MB) promised to running instances.
    pub fn reserved(&self) -> (u64, u64) {
        self.lock().values().fold((0, 0), |(c, m), i| {
            (c + i.spec.cpu_millis, m + i.spec.memory_mb)
        })
    }

    /// Whether this node has the free share of its capacity `spec` asks for, or why not.
    pub(crate) fn room_for(&self, spec: &InstanceSpec) -> Result<(), String> {
        let (used_cpu, used_mem) = self.reserved();
        let free_cpu = self.capacity.cpu_millis.saturating_sub(used_cpu);
        let free_mem = self.capacity.memory_mb.saturating_sub(used_mem);
        if spec.cpu_millis > free_cpu || spec.memory_mb > free_mem {
            return Err(format!(
                "not enough free resources on this node for {}: it asks {} mCPU and {} MB, \
                 {free_cpu} mCPU and {free_mem} MB are free of {} mCPU and {} MB",
                spec.id,
                spec.cpu_millis,
                spec.memory_mb,
                self.capacity.cpu_millis,
                self.capacity.memory_mb
            ));
        }
        Ok(())
    }
}
