//! What a sweep deletes, decided with no I/O: given the items on disk, the live set and the
//! goal, the garbage to delete, oldest first. A live item is never chosen.

use std::path::PathBuf;
use std::time::SystemTime;

use super::live::LiveSet;

/// The kinds of item a node keeps on disk for tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// One content-addressed chunk (`chunks/ab/cdef…`); key: its digest in hex.
    Chunk,
    /// An assembled artifact (`images/<digest>.tar`); key: the artifact's digest in hex.
    Artifact,
    /// The process engine's image tree (`tasks/images/<16 hex>/`); key: the 16 hex.
    ImageTree,
}

/// One item on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub kind: ItemKind,
    pub key: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// When it was last written: the oldest garbage goes first.
    pub modified: SystemTime,
}

impl Item {
    /// Whether something still needs it.
    pub fn is_live(&self, live: &LiveSet) -> bool {
        match self.kind {
            ItemKind::Chunk => live.has_chunk(&self.key),
            ItemKind::Artifact => live.artifacts.contains(&self.key),
            ItemKind::ImageTree => live.artifacts.iter().any(|d| d.starts_with(&self.key)),
        }
    }
}

/// Which garbage goes in a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Goal {
    /// Garbage last written before this goes whatever the budget (`None`: none by age).
    pub before: Option<SystemTime>,
    /// The disk budget in bytes: past it (with `extra` to come), more garbage goes, oldest
    /// first, until what is left fits.
    pub budget: Option<u64>,
    /// Bytes about to be written (a fetch's missing chunks and what it assembles).
    pub extra: u64,
    /// At most this many items are deleted in one sweep (the rest wait for the next).
    pub max_items: usize,
}

impl Goal {
    /// Every piece of garbage (`brume gc`).
    pub fn everything() -> Goal {
        Goal {
            before: Some(SystemTime::now() + std::time::Duration::from_secs(86_400)),
            budget: None,
            extra: 0,
            max_items: usize::MAX,
        }
    }
}

/// What a sweep will do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// To delete, oldest first.
    pub delete: Vec<Item>,
    /// Bytes of every item on disk.
    pub total_bytes: u64,
    /// Bytes of the live items.
    pub live_bytes: u64,
    /// Bytes the deletions free.
    pub freed_bytes: u64,
    /// The live items alone (with `extra`) do not fit the budget: the operation must be
    /// refused, since no deletion can make room.
    pub over_budget: bool,
}

impl Plan {
    /// Bytes left on disk once the plan is carried out.
    pub fn after_bytes(&self) -> u64 {
        self.total_bytes - self.freed_bytes
    }
}

/// Chooses the garbage to delete for `goal`.
pub fn select(mut items: Vec<Item>, live: &LiveSet, goal: Goal) -> Plan {
    items.sort_by(|a, b| (a.modified, a.kind, &a.key).cmp(&(b.modified, b.kind, &b.key)));
    let total_bytes: u64 = items.iter().map(|i| i.bytes).sum();
    let (live_items, garbage): (Vec<Item>, Vec<Item>) =
        items.into_iter().partition(|i| i.is_live(live));
    let live_bytes: u64 = live_items.iter().map(|i| i.bytes).sum();
    let over_budget = goal
        .budget
        .is_some_and(|b| live_bytes.saturating_add(goal.extra) > b);
    let mut plan = Plan {
        total_bytes,
        live_bytes,
        over_budget,
        ..Plan::default()
    };
    let fits = |left: u64| match goal.budget {
        Some(b) => left.saturating_add(goal.extra) <= b,
        None => true,
    };
    for item in garbage {
        if plan.delete.len() >= goal.max_items {
            break;
        }
        let old = goal.before.is_some_and(|t| item.modified < t);
        // Past the budget, garbage goes oldest first until the rest fits; when even the live
        // items do not fit, deleting more would free no room for the operation.
        let for_room = !over_budget && !fits(plan.after_bytes());
        if old || for_room {
            plan.freed_bytes += item.bytes;
            plan.delete.push(item);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    fn item(kind: ItemKind, key: &str, bytes: u64, t: u64) -> Item {
        Item {
            kind,
            key: key.into(),
            path: PathBuf::from(key),
            bytes,
            modified: at(t),
        }
    }

    fn live(artifacts: &[&str], chunks: &[&str]) -> LiveSet {
        LiveSet {
            artifacts: artifacts.iter().map(|s| s.to_string()).collect(),
            chunks: chunks.iter().map(|s| s.to_string()).collect(),
            chunks_frozen: Vec::new(),
        }
    }

    fn keys(plan: &Plan) -> Vec<&str> {
        plan.delete.iter().map(|i| i.key.as_str()).collect()
    }

    const A: &str = "aaaaaaaaaaaaaaaa0000000000000000000000000000000000000000000000000000";
    const B: &str = "bbbbbbbbbbbbbbbb0000000000000000000000000000000000000000000000000000";

    fn disk() -> Vec<Item> {
        vec![
            item(ItemKind::Chunk, "c-live", 10, 1),
            item(ItemKind::Chunk, "c-old", 10, 2),
            item(ItemKind::Chunk, "c-new", 10, 50),
            item(ItemKind::Artifact, A, 20, 3),
            item(ItemKind::Artifact, B, 20, 4),
            item(ItemKind::ImageTree, &A[..16], 30, 5),
            item(ItemKind::ImageTree, &B[..16], 30, 6),
        ]
    }

    #[test]
    fn everything_deletes_all_garbage_and_nothing_live() {
        let plan = select(disk(), &live(&[A], &["c-live"]), Goal::everything());
        assert_eq!(keys(&plan), vec!["c-old", B, &B[..16], "c-new"]);
        assert_eq!(plan.total_bytes, 130);
        assert_eq!(plan.live_bytes, 60);
        assert_eq!(plan.freed_bytes, 70);
        assert!(!plan.over_budget);
    }

    #[test]
    fn by_age_only_what_is_older_than_the_grace() {
        let goal = Goal {
            before: Some(at(10)),
            budget: None,
            extra: 0,
            max_items: usize::MAX,
        };
        let plan = select(disk(), &live(&[A], &["c-live"]), goal);
        assert_eq!(keys(&plan), vec!["c-old", B, &B[..16]]);
    }

    #[test]
    fn over_budget_deletes_oldest_garbage_until_it_fits() {
        // 130 on disk, 60 live; room for 15 more within 100 needs 45 freed: c-old (10), B (20),
        // then B's tree (30) — oldest first, and no more than needed (c-new stays).
        let goal = Goal {
            before: None,
            budget: Some(100),
            extra: 15,
            max_items: usize::MAX,
        };
        let plan = select(disk(), &live(&[A], &["c-live"]), goal);
        assert_eq!(keys(&plan), vec!["c-old", B, &B[..16]]);
        assert!(plan.after_bytes() + 15 <= 100);
        assert!(!plan.over_budget);
    }

    #[test]
    fn under_budget_nothing_goes() {
        let goal = Goal {
            before: None,
            budget: Some(1000),
            extra: 15,
            max_items: usize::MAX,
        };
        assert!(select(disk(), &live(&[A], &["c-live"]), goal)
            .delete
            .is_empty());
    }

    #[test]
    fn live_items_alone_past_the_budget_is_a_refusal() {
        let goal = Goal {
            before: None,
            budget: Some(65),
            extra: 10,
            max_items: usize::MAX,
        };
        let plan = select(disk(), &live(&[A], &["c-live"]), goal);
        assert!(plan.over_budget);
        assert!(plan.delete.is_empty(), "{plan:?}");
    }

    #[test]
    fn frozen_chunks_are_all_live_but_trees_are_still_judged() {
        let mut l = live(&[A], &[]);
        l.freeze_chunks("packing");
        let plan = select(disk(), &l, Goal::everything());
        assert_eq!(keys(&plan), vec![B, &B[..16]]);
    }

    #[test]
    fn a_sweep_is_bounded() {
        let goal = Goal {
            max_items: 2,
            ..Goal::everything()
        };
        let plan = select(disk(), &live(&[], &[]), goal);
        assert_eq!(keys(&plan), vec!["c-live", "c-old"]);
    }

    #[test]
    fn the_live_set_comes_from_manifests_and_pins() {
        use brume_artifact::{ArtifactKind, ArtifactManifest, Digest};
        let m = ArtifactManifest {
            kind: ArtifactKind::Context,
            size: 3,
            digest: Digest::of(b"whole"),
            chunk_size: brume_artifact::CHUNK_SIZE,
            chunks: vec![Digest::of(b"abc")],
        };
        let pins = super::super::Pins::default();
        let mut l = LiveSet::default();
        pins.add_to(&mut l);
        assert!(l.artifacts.is_empty());
        let guard = pins.pin([m.clone()]);
        pins.add_to(&mut l);
        assert!(l.artifacts.contains(&m.digest.to_hex()));
        assert!(l.has_chunk(&Digest::of(b"abc").to_hex()));
        assert!(l.image_ids().contains(&m.digest.to_hex()[..16]));
        drop(guard);
        assert!(pins.is_empty());
        let mut after = LiveSet::default();
        pins.add_to(&mut after);
        assert_eq!(after, LiveSet::default(), "a dropped pin keeps nothing");
    }
}
