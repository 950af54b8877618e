//! The node's store of memory chunks from the live migrations it received
//! ([`crate::live::store`]), owned by its mover: every migration into the node, on
//! either engine, shares it, so round 1 of a later move sends only the chunks it lacks.
//!
//! Held by the mover rather than looked up by directory in a process-wide table: a process that
//! runs several nodes (tests do) gets one store per node because it has one mover per node, and
//! nothing outlives the mover.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::live::{ChunkStore, StoreError};
use tokio::sync::OnceCell;
use tracing::warn;

/// The store's directory name in the node's data directory, beside the engine's `tasks`.
pub const DIR: &str = "migration-chunks";

/// Where the store lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStoreConfig {
    pub dir: PathBuf,
    /// Most bytes of packs kept; 0 keeps no store at all (every chunk comes over the wire).
    pub cap_bytes: u64,
}

impl MigrationStoreConfig {
    /// `<data_dir>/migration-chunks`, bounded to `cache_mb` MiB (the `migration_cache_mb`
    /// setting).
    pub fn in_data_dir(data_dir: &Path, cache_mb: u64) -> Self {
        MigrationStoreConfig {
            dir: data_dir.join(DIR),
            cap_bytes: cache_mb.saturating_mul(1 << 20),
        }
    }
}

/// The store, opened on the first migration that wants it rather than at start: opening reads
/// every pack's digest table, which a node that never receives a live move need not pay for.
#[derive(Debug)]
pub struct MigrationStore {
    config: MigrationStoreConfig,
    /// Only a success is kept: a store that failed to open (a full or read-only disk) is tried
    /// again by the next migration, which may find the problem gone.
    opened: OnceCell<Arc<ChunkStore>>,
}

impl MigrationStore {
    pub fn new(config: MigrationStoreConfig) -> Self {
        MigrationStore {
            config,
            opened: OnceCell::new(),
        }
    }

    pub fn config(&self) -> &MigrationStoreConfig {
        &self.config
    }

    /// The store every migration into this node shares, or none: turned off (a cap of 0), or
    /// it cannot be opened (logged); the migration then goes on with every chunk over the wire.
    /// Concurrent first callers wait for one open.
    pub async fn get(&self) -> Option<Arc<ChunkStore>> {
        if self.config.cap_bytes == 0 {
            return None;
        }
        match self.opened.get_or_try_init(|| self.open()).await {
            Ok(store) => Some(store.clone()),
            Err(e) => {
                warn!(error = %e, dir = %self.config.dir.display(),
                      "no migration chunk store: every chunk comes over the wire");
                None
            }
        }
    }

    /// Waits (at most `timeout`, off the runtime's threads) until no migration's images are
    /// still being taken into the store: a node stopping right after a move would otherwise
    /// leave that move's staging directory in tmpfs, half taken in. True if none is under way
    /// (or the store was never opened).
    pub async fn settle(&self, timeout: std::time::Duration) -> bool {
        let Some(store) = self.opened.get().cloned() else {
            return true;
        };
        tokio::task::spawn_blocking(move || store.wait_idle(timeout))
            .await
            .unwrap_or(false)
    }

    async fn open(&self) -> Result<Arc<ChunkStore>, OpenError> {
        let (dir, cap) = (self.config.dir.clone(), self.config.cap_bytes);
        // Opening reads every pack's digest table: not on a runtime thread.
        tokio::task::spawn_blocking(move || ChunkStore::open(dir, cap))
            .await
            .map_err(|e| OpenError::Task(e.to_string()))?
            .map(Arc::new)
            .map_err(OpenError::Store)
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error(transparent)]
    Store(StoreError),
    #[error("the thread opening it failed: {0}")]
    Task(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_setting_is_mebibytes_in_the_data_dir() {
        let c = MigrationStoreConfig::in_data_dir(Path::new("/data"), 1024);
        assert_eq!(c.dir, Path::new("/data/migration-chunks"));
        assert_eq!(c.cap_bytes, crate::live::store::DEFAULT_CAP);
        let huge = MigrationStoreConfig::in_data_dir(Path::new("/data"), u64::MAX);
        assert_eq!(huge.cap_bytes, u64::MAX, "saturates rather than wraps");
    }

    /// A stopping node waits for an insert under way, and not for a store never opened.
    #[tokio::test]
    async fn settle_waits_for_inserts_under_way() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = MigrationStore::new(MigrationStoreConfig::in_data_dir(data.path(), 16));
        assert!(store.settle(Duration::ZERO).await, "never opened");
        let opened = store.get().await.expect("store");
        let guard = opened.begin_insert();
        assert!(!store.settle(Duration::from_millis(20)).await);
        let release = std::thread::spawn(move || drop(guard));
        assert!(store.settle(Duration::from_secs(60)).await);
        release.join().expect("the insert ends");
        assert!(store.settle(Duration::ZERO).await);
    }

    #[tokio::test]
    async fn migrations_share_one_store_opened_once() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(MigrationStore::new(MigrationStoreConfig::in_data_dir(
            data.path(),
            16,
        )));
        assert!(
            !data.path().join(DIR).exists(),
            "nothing is opened before a migration asks"
        );
        // Two migrations arriving together, then a third later.
        let (a, b) = tokio::join!(
            {
                let s = store.clone();
                async move { s.get().await }
            },
            {
                let s = store.clone();
                async move { s.get().await }
            }
        );
        let (a, b) = (a.expect("store a"), b.expect("store b"));
        let c = store.get().await.expect("store c");
        assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&a, &c), "one instance");
        assert_eq!(a.dir(), data.path().join(DIR));
        assert_eq!(a.cap(), 16 << 20);
        assert!(data.path().join(DIR).is_dir());
    }

    #[tokio::test]
    async fn a_cap_of_zero_keeps_no_store() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = MigrationStore::new(MigrationStoreConfig::in_data_dir(data.path(), 0));
        assert!(store.get().await.is_none());
        assert!(!data.path().join(DIR).exists(), "nothing written");
    }

    #[tokio::test]
    async fn a_store_that_fails_to_open_is_tried_again() {
        let data = tempfile::tempdir().expect("tempdir");
        let dir = data.path().join(DIR);
        // A file where the directory should be: the open fails.
        std::fs::write(&dir, b"in the way").expect("write");
        let store = MigrationStore::new(MigrationStoreConfig::in_data_dir(data.path(), 16));
        assert!(
            store.get().await.is_none(),
            "no store while the path is taken"
        );
        std::fs::remove_file(&dir).expect("remove");
        let opened = store.get().await.expect("opened once the path is free");
        assert!(Arc::ptr_eq(
            &opened,
            &store.get().await.expect("still there")
        ));
    }
}
