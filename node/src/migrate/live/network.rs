//! Whether a move's target shares this node's network namespace, which decides how a CRIU
//! task may move.
//!
//! Tracked post-copy restores the copy while the frozen original still exists (it serves the
//! pages the copy lacks), so a task that listens on a TCP port cannot be restored beside its
//! original in the same network namespace: the copy's listener finds the port taken. Nodes on
//! separate devices, or in network namespaces of their own (the testnet's node containers),
//! never meet that; nodes sharing one host's network (brume's own tests, a developer's laptop)
//! always do. An address cannot tell the two apart (loopback, a bridge, NAT), so the target
//! says which namespace it is in: the kernel's boot id (the same for every namespace of one
//! running kernel) and the namespace's device and inode, which name it for as long as that
//! kernel runs.

use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

use crate::migrate::LiveMigration;

/// One network namespace of one running kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NetworkId {
    boot: String,
    dev: u64,
    ino: u64,
}

impl NetworkId {
    /// This process's network namespace; `None` where /proc cannot tell.
    pub(crate) fn here() -> Option<Self> {
        Self::at("/proc/self/ns/net")
    }

    /// The network namespace of process `pid` (a Docker task's container: Docker's, not
    /// necessarily this node's); `None` where /proc cannot tell.
    pub(crate) fn of(pid: u32) -> Option<Self> {
        Self::at(&format!("/proc/{pid}/ns/net"))
    }

    fn at(ns: &str) -> Option<Self> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let ns = std::fs::metadata(ns).ok()?;
        Some(Self {
            boot: boot.trim().to_string(),
            dev: ns.dev(),
            ino: ns.ino(),
        })
    }
}

/// Whether a move to a target that reported `target` may restore the copy while the original
/// still exists, as this node's `live_migration` setting asks: `Err` says why not. `Auto`
/// refuses when the target shares this node's network namespace, or when either side cannot
/// tell (its /proc unreadable): a full-dump move is always safe, a post-copy one next
/// to its original is not.
pub(crate) fn may_coexist(
    setting: LiveMigration,
    here: Option<&NetworkId>,
    target: Option<&NetworkId>,
) -> Result<(), &'static str> {
    match setting {
        LiveMigration::PreCopy => Err("live_migration = pre-copy"),
        LiveMigration::Tracked => Ok(()),
        LiveMigration::Auto => match (here, target) {
            (Some(h), Some(t)) if h != t => Ok(()),
            (Some(_), Some(_)) => Err(
                "the target shares this node's network namespace, where the restored copy \
                 could not listen beside its frozen original",
            ),
            _ => Err("the target's network namespace is unknown"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(boot: &str, ino: u64) -> NetworkId {
        NetworkId {
            boot: boot.into(),
            dev: 4,
            ino,
        }
    }

    #[test]
    fn auto_moves_tracked_only_to_another_namespace() {
        let here = id("b1", 10);
        let auto = LiveMigration::Auto;
        assert!(may_coexist(auto, Some(&here), Some(&id("b1", 11))).is_ok());
        // Another kernel: another device, whatever its inode numbers.
        assert!(may_coexist(auto, Some(&here), Some(&id("b2", 10))).is_ok());
        assert!(may_coexist(auto, Some(&here), Some(&here.clone())).is_err());
        assert!(may_coexist(auto, Some(&here), None).is_err());
        assert!(may_coexist(auto, None, Some(&here)).is_err());
    }

    #[test]
    fn the_explicit_settings_ignore_where_the_target_is() {
        let here = id("b1", 10);
        assert!(may_coexist(LiveMigration::Tracked, Some(&here), Some(&here)).is_ok());
        assert!(may_coexist(LiveMigration::Tracked, None, None).is_ok());
        let other = id("b1", 11);
        assert!(may_coexist(LiveMigration::PreCopy, Some(&here), Some(&other)).is_err());
    }

    #[test]
    fn this_process_has_a_namespace_equal_to_itself() {
        let a = NetworkId::here().expect("/proc tells the namespace");
        assert_eq!(Some(a.clone()), NetworkId::here());
        assert_eq!(Some(a), NetworkId::of(std::process::id()));
        assert_eq!(NetworkId::of(u32::MAX), None, "no such process");
    }
}
