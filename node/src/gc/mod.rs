//! Garbage collection of what a node keeps on disk for tasks: without it nothing is ever
//! deleted, and a long-lived edge node fills its disk with the chunks, assembled artifacts and
//! image trees of services that stopped long ago.
//!
//! Three kinds of item live in the data directory: content-addressed chunks (`chunks/`, the
//! store hosts fetch artifacts from and a move's target fetches from the source host), the
//! assembled artifacts (`images/<digest>.tar`) and the process engine's image trees
//! (`tasks/images/<16 hex>/`); on Docker, the images this node built or loaded
//! (`brume/<16 hex>:latest`, recorded in `docker-images` when prepared).
//!
//! An item is live when something still needs it ([`live::LiveSet`]): an instance this node runs
//! (its spec carries the artifact's manifest), a service this node initiated (its ledger entry
//! records its artifacts' manifests, because the hosts, and the hosts a failed one's instances
//! are placed on again, fetch their chunks from here), or an operation under way that holds a
//! [`pins::PinGuard`] (a deploy, a move's prepare, a live arrival, an initiator packing). Every
//! other item is garbage. [`select`] decides what to delete with no I/O; [`collector`] scans the
//! disk, deletes (logging each item) and enforces the node's `disk_budget_mib`.

pub mod collector;
pub mod live;
pub mod pins;
pub mod select;

pub use collector::{Collector, GcError, Report};
pub use live::LiveSet;
pub use pins::{PinGuard, Pins};
pub use select::{Goal, Item, ItemKind, Plan};

/// A sweep's report as `brume gc` shows it.
pub fn control_report(r: &Report, budget_bytes: Option<u64>) -> brume_control::GcReport {
    let count = |k: ItemKind| r.deleted.iter().filter(|(kind, _, _)| *kind == k).count() as u64;
    brume_control::GcReport {
        chunks: count(ItemKind::Chunk),
        artifacts: count(ItemKind::Artifact),
        image_trees: count(ItemKind::ImageTree),
        freed_bytes: r.freed_bytes,
        before_bytes: r.before_bytes,
        after_bytes: r.after_bytes,
        live_bytes: r.live_bytes,
        budget_bytes,
        images_removed: r.images_removed.clone(),
        chunks_kept_because: r.chunks_frozen.clone(),
    }
}
