//! The live set: what must not be collected, as digests, built from the artifact manifests
//! that instances, ledger entries and pins name. Pure: no disk, no locks.

use std::collections::BTreeSet;

use brume_artifact::ArtifactManifest;

/// Everything still needed on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveSet {
    /// Whole-artifact digests (hex): their assembled tarballs and image trees are kept.
    pub artifacts: BTreeSet<String>,
    /// Chunk digests (hex).
    pub chunks: BTreeSet<String>,
    /// Why no chunk may be collected now, if any reason holds (a ledger entry written before
    /// entries recorded their artifacts, an initiator packing whose chunks no manifest names
    /// yet). Tarballs and image trees are still judged by `artifacts`.
    pub chunks_frozen: Vec<String>,
}

impl LiveSet {
    /// Marks the artifact and all its chunks live.
    pub fn add(&mut self, m: &ArtifactManifest) {
        self.artifacts.insert(m.digest.to_hex());
        for c in &m.chunks {
            self.chunks.insert(c.to_hex());
        }
    }

    /// Marks every chunk live, saying why.
    pub fn freeze_chunks(&mut self, why: impl Into<String>) {
        self.chunks_frozen.push(why.into());
    }

    /// Adds everything `other` holds.
    pub fn merge(&mut self, other: LiveSet) {
        self.artifacts.extend(other.artifacts);
        self.chunks.extend(other.chunks);
        self.chunks_frozen.extend(other.chunks_frozen);
    }

    /// The 16-hex image ids of the live artifacts (`brume/<id>:latest`, `tasks/images/<id>`).
    pub fn image_ids(&self) -> BTreeSet<String> {
        self.artifacts
            .iter()
            .map(|d| d.chars().take(16).collect())
            .collect()
    }

    /// Whether a chunk is live.
    pub fn has_chunk(&self, hex: &str) -> bool {
        !self.chunks_frozen.is_empty() || self.chunks.contains(hex)
    }
}
