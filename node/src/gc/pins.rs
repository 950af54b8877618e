//! Pins: what an operation under way needs kept while it runs. A deploy pins its artifact
//! before it fetches the first chunk and holds the pin until the instance is in the table (or
//! refused); a move's prepare and a live arrival do the same, and an initiator packing
//! artifacts freezes all chunks until its manifests exist. The pin is an RAII guard: dropping
//! it (the operation ended, returned early or panicked) releases it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use brume_artifact::ArtifactManifest;

use super::live::LiveSet;

#[derive(Debug)]
enum Pinned {
    Artifacts(Vec<ArtifactManifest>),
    AllChunks(String),
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    held: BTreeMap<u64, Pinned>,
}

/// The pins held on one node. Cheap to clone; clones share the table.
#[derive(Debug, Clone, Default)]
pub struct Pins(Arc<Mutex<Table>>);

/// Keeps what it pinned from being collected until dropped.
#[derive(Debug)]
#[must_use = "a pin is released as soon as its guard is dropped"]
pub struct PinGuard {
    pins: Pins,
    id: u64,
}

impl Pins {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every update is one insert or remove: a poisoned lock is still sound.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hold(&self, what: Pinned) -> PinGuard {
        let mut t = self.table();
        t.next += 1;
        let id = t.next;
        t.held.insert(id, what);
        PinGuard {
            pins: self.clone(),
            id,
        }
    }

    /// Pins these artifacts (their chunks, tarballs and image trees).
    pub fn pin(&self, manifests: impl IntoIterator<Item = ArtifactManifest>) -> PinGuard {
        self.hold(Pinned::Artifacts(manifests.into_iter().collect()))
    }

    /// Keeps every chunk while the guard lives: for writers whose manifest is not known yet.
    pub fn freeze_chunks(&self, why: impl Into<String>) -> PinGuard {
        self.hold(Pinned::AllChunks(why.into()))
    }

    /// How many pins are held.
    pub fn len(&self) -> usize {
        self.table().held.len()
    }

    /// Whether no pin is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds what the pins hold to `live`.
    pub fn add_to(&self, live: &mut LiveSet) {
        for p in self.table().held.values() {
            match p {
                Pinned::Artifacts(ms) => ms.iter().for_each(|m| live.add(m)),
                Pinned::AllChunks(why) => live.freeze_chunks(format!("in progress: {why}")),
            }
        }
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.pins.table().held.remove(&self.id);
    }
}
