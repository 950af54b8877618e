//! How each side of a live migration is configured: the source's and target's options and the
//! plan for tracked rounds, apart from the code that runs them so that either side's steps
//! (pre-copy, tracked rounds, post-copy) read their settings from one place.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::checkpointer::{Checkpointer, CriuProcess, CriuRestore, Restorer};
use crate::compress::ChooserConfig;
use crate::criu::{Criu, InheritFd, NetworkLock};
use crate::planner::PlannerConfig;
use crate::predictor::Predictor;

use super::store::ChunkStore;
use super::wire::Mode;
use super::Compression;

/// How the source migrates; [`SourceOptions::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Where each round's images are dumped (a directory per round; tmpfs is best).
    pub work_dir: PathBuf,
    pub mode: Mode,
    pub compression: Compression,
    pub chooser: ChooserConfig,
    pub planner: PlannerConfig,
    /// What this node learned about its dumps and restores so far.
    pub predictor: Predictor,
    /// The link's bandwidth in bytes/s when known (the chooser and planner use it; without it
    /// the chooser follows what the sends measure).
    pub bandwidth: Option<f64>,
    pub criu: Criu,
    pub network_lock: NetworkLock,
    /// How long a local restore waits for the dumped task's PID to be free.
    pub pid_wait: Duration,
    /// Descriptors a local restore gives the task in place of files outside it
    /// (`--inherit-fd`), e.g. a fresh stdout pipe for the dumped one.
    pub restore_inherit_fds: Vec<InheritFd>,
    /// The root a local restore puts the task back in, if it ran in a mount namespace of its
    /// own (`--root`).
    pub restore_root: Option<PathBuf>,
    /// What dumps the task; `None`: the process `pid` with CRIU directly ([`CriuProcess`]),
    /// configured by `criu`, `network_lock`, `pid_wait` and `restore_inherit_fds` above. A
    /// container checkpointer (e.g. [`crate::checkpointer::RuncContainer`]) moves in pre-copy or
    /// stop-and-copy only.
    pub checkpointer: Option<Arc<dyn Checkpointer>>,
    /// Post-copy only: run tracked pre-copy rounds first ([`super::tracked`]), so the final
    /// step carries only what the task wrote since, where the kernel allows tracking.
    pub track: bool,
    /// When the tracked rounds stop.
    pub tracked: TrackedPlan,
    /// Post-copy: leave the lazy pages in the frozen task at the dump and read them when asked,
    /// where this CRIU can ([`crate::criu::Criu::defers_lazy_reads`]); on by default. Off only
    /// to measure the copying dump against it.
    pub defer_lazy_reads: bool,
    /// What to do when the target's answer to the final round is missing (see the module doc).
    pub in_doubt: InDoubt,
    /// The longest wait, from the end of the final dump, for the target to take the final
    /// round and answer; `None`: as long as the link lives.
    pub final_wait: Option<Duration>,
    /// A `Restored` read later than this after the source last heard the target before the
    /// final round counts as missing (in doubt): a target that kills a copy the source has not
    /// released within its lease needs the source's release to come in time. `None`: any time.
    pub commit_within: Option<Duration>,
    /// Awaited before every checkpoint of the task (each pre-copy round's, the final one, the
    /// post-copy freeze), never before tracked rounds, which read memory while the task runs.
    /// A node holds the task's callers there: CRIU cannot dump an established TCP connection.
    pub gate: Option<Arc<dyn DumpGate>>,
}

/// What the source waits for before each checkpoint of the task ([`SourceOptions::gate`]).
pub trait DumpGate: Send + Sync + std::fmt::Debug {
    /// Resolves when the task may be checkpointed (its callers held, its connections closed).
    fn before_dump(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// What the source does when the final dump is done and the target's answer never came.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InDoubt {
    /// Restore the task here at once (the caller knows the target cannot be running it).
    #[default]
    RestoreHere,
    /// Return [`super::LiveError::InDoubt`]: the caller settles the target first, then calls
    /// [`super::restore_at_source`].
    Return,
}

impl SourceOptions {
    /// Pre-copy with adaptive compression and the default planner, dumping under `work_dir`.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        SourceOptions {
            work_dir: work_dir.into(),
            mode: Mode::PreCopy,
            compression: Compression::Adaptive,
            chooser: ChooserConfig::default(),
            planner: PlannerConfig::default(),
            predictor: Predictor::default(),
            bandwidth: None,
            criu: Criu::new(),
            network_lock: NetworkLock::default(),
            pid_wait: Duration::from_secs(10),
            restore_inherit_fds: Vec::new(),
            restore_root: None,
            checkpointer: None,
            track: false,
            tracked: TrackedPlan::default(),
            defer_lazy_reads: true,
            in_doubt: InDoubt::RestoreHere,
            final_wait: None,
            commit_within: None,
            gate: None,
        }
    }

    /// The checkpointer of task `pid`: the one given, or CRIU on the process.
    pub fn checkpointer(&self, pid: u32) -> Arc<dyn Checkpointer> {
        if let Some(c) = &self.checkpointer {
            return c.clone();
        }
        Arc::new(CriuProcess {
            criu: self.criu.clone(),
            pid,
            network_lock: self.network_lock,
            local: CriuRestore {
                criu: self.criu.clone(),
                network_lock: self.network_lock,
                pid_wait: self.pid_wait,
                inherit_fds: self.restore_inherit_fds.clone(),
                pid_namespace: false,
                root: self.restore_root.clone(),
            },
        })
    }
}

/// When the tracked rounds stop.
#[derive(Clone, Debug)]
pub struct TrackedPlan {
    /// Rounds at most (the first included).
    pub max_rounds: u32,
    /// Stop once the last round's pages would cross the link in this long.
    pub final_transfer: Duration,
    /// Stop when a round kept more than this share of the previous round's pages.
    pub shrink: f64,
    /// The last round, read while the task is frozen, is sent before the restore only when its
    /// pages would cross the link in less than this; otherwise only their addresses go
    /// ([`super::wire::Message::Stale`]) and the pages follow the restore through the page
    /// server, so the freeze does not wait for them. `None`: always sent before the restore.
    /// 100 ms by default: measured at 100 Mbit/s (BENCHMARKS.md, "The last tracked pages"),
    /// a task dirtying 8 MiB/s left 50-175 pages, and sending them before the restore gave
    /// 119 ms of downtime against 141 after it (its first answers then fault on them); one
    /// dirtying 64 MiB/s, faster than the link, left 30,000, and after the restore gave
    /// 3.8 s against 5.5 s (but its pages took 16 s more to arrive).
    pub final_inline: Option<Duration>,
}

impl Default for TrackedPlan {
    fn default() -> Self {
        TrackedPlan {
            max_rounds: 30,
            final_transfer: Duration::from_millis(20),
            shrink: 0.9,
            final_inline: Some(Duration::from_millis(100)),
        }
    }
}

impl TrackedPlan {
    /// Whether to run another round after one that sent `pages` (the one before it sent
    /// `prev`) at `bytes_per_page` on the wire over a link of `bytes_per_sec`.
    pub fn another(
        &self,
        round: u32,
        pages: u64,
        prev: Option<u64>,
        bytes_per_page: f64,
        bytes_per_sec: f64,
    ) -> bool {
        if round >= self.max_rounds {
            return false;
        }
        let secs = pages as f64 * bytes_per_page / bytes_per_sec.max(1.0);
        if secs <= self.final_transfer.as_secs_f64() {
            return false;
        }
        match prev {
            Some(p) if round > 1 => (pages as f64) < p as f64 * self.shrink,
            _ => true,
        }
    }
}

/// How the target receives; [`TargetOptions::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct TargetOptions {
    /// Where the images are rebuilt (created; removed when the migration ends). tmpfs is best.
    pub staging_dir: PathBuf,
    pub criu: Criu,
    pub network_lock: NetworkLock,
    /// How long the restore waits for the task's PID to be free here (CRIU restores PIDs; on
    /// the host the task was dumped on, the old process must be gone).
    pub pid_wait: Duration,
    /// Descriptors the restored task gets in place of files outside it (`--inherit-fd`), e.g.
    /// a fresh stdout pipe for the dumped one.
    pub inherit_fds: Vec<InheritFd>,
    /// The task is the init of its own PID namespace: its PIDs are restored inside a new
    /// namespace, so its host PID need not be free here and is not waited for.
    pub pid_namespace: bool,
    /// The task ran in a mount namespace of its own: it is restored with this directory (the
    /// target's copy of its rootfs) as its root (`--root`).
    pub root: Option<PathBuf>,
    /// Post-copy: the most pages one request of the lazy-pages daemon may ask the source for
    /// (see [`super::pageproxy`]): what a page fault may have to wait behind.
    pub page_request_cap: u64,
    /// Post-copy: the most pages the target's relay keeps requested from the source and not yet
    /// arrived, prefetching every lazy range in the background (see [`super::pageproxy`];
    /// arrived pages wait in a separate, bounded cache until the daemon asks). It must cover
    /// what the link holds in a round trip, else the link idles; a forwarded fault waits behind
    /// at most this much more than the cap. 16 caps (1 MiB with the default cap): 80 ms of a
    /// 100 Mbit/s link, far above its 2 ms round trip. 0 turns prefetch off.
    pub prefetch_window: u64,
    /// What restores the task; `None`: `criu restore` of a process ([`CriuRestore`]),
    /// configured by `criu`, `network_lock`, `pid_wait`, `inherit_fds` and `pid_namespace`
    /// above. A container restorer (e.g. [`crate::checkpointer::RuncRestore`]) takes pre-copy
    /// or stop-and-copy only.
    pub restorer: Option<Arc<dyn Restorer>>,
    /// The node's chunk store, shared by every migration into it: round 1 of a pre-copy takes
    /// what it holds instead of receiving it, and a successful migration's final memory images
    /// are added to it. `None`: every chunk comes over the wire and nothing is kept.
    pub store: Option<Arc<ChunkStore>>,
}

impl TargetOptions {
    pub fn new(staging_dir: impl Into<PathBuf>) -> Self {
        TargetOptions {
            staging_dir: staging_dir.into(),
            criu: Criu::new(),
            network_lock: NetworkLock::default(),
            pid_wait: Duration::from_secs(10),
            inherit_fds: Vec::new(),
            pid_namespace: false,
            root: None,
            page_request_cap: 16,
            prefetch_window: 16 * 16,
            restorer: None,
            store: None,
        }
    }

    /// The restorer: the one given, or `criu restore` of a process.
    pub fn restorer(&self) -> Arc<dyn Restorer> {
        if let Some(r) = &self.restorer {
            return r.clone();
        }
        Arc::new(CriuRestore {
            criu: self.criu.clone(),
            network_lock: self.network_lock,
            pid_wait: self.pid_wait,
            inherit_fds: self.inherit_fds.clone(),
            pid_namespace: self.pid_namespace,
            root: self.root.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_stop_when_small_or_no_longer_shrinking() {
        let plan = TrackedPlan::default();
        let link = 12.5e6; // 100 Mbit/s
                           // Round 1 always goes on unless tiny.
        assert!(plan.another(1, 131_072, None, 2048.0, link));
        assert!(
            !plan.another(1, 10, None, 2048.0, link),
            "10 pages cross in 2 ms"
        );
        // Shrinking well: on; barely: stop.
        assert!(plan.another(2, 40_000, Some(131_072), 2048.0, link));
        assert!(!plan.another(3, 39_000, Some(40_000), 2048.0, link));
        // 100 pages at 2 KiB each: 16 ms at 100 Mbit/s, under the 20 ms final transfer.
        assert!(!plan.another(5, 100, Some(400), 2048.0, link));
        assert!(
            !plan.another(30, 100_000, Some(131_072), 2048.0, link),
            "round cap"
        );
    }
}
