//! Live migration of a process with CRIU: iterative pre-copy (or stop-and-copy) over any byte
//! stream, the source in [`source`], the target in [`target`].
//!
//! Why here and async: the node runs it over an overlay stream and the bench over a TCP
//! connection, so both ends take any `AsyncRead + AsyncWrite`; the pure parts (chunks,
//! compression choice, planner, predictor) stay sans-IO in their own modules and this is the
//! edge that drives them with CRIU, files, a clock and a socket.
//!
//! One migration, source side ([`source::migrate_out`]): each pre-copy round dumps the task with
//! `--leave-running` into a fresh directory (tmpfs), cuts every image file into 4 KiB chunks,
//! sends the chunks the target does not hold (the source keeps the set of digests the target
//! acknowledged: those of the files it rebuilt in the last round) compressed at the level the
//! [`crate::compress::Chooser`] picks (or a fixed one), then each file's recipe as a diff against
//! the previous round's ([`recipe`]), and waits for the target's acknowledgement. Hashing and
//! compression run on a blocking thread while the async side writes. The
//! [`crate::planner::Planner`] decides after each round: another round, the final one, or stop
//! (the task was never stopped, so it just runs on). The final round dumps without
//! `--leave-running` (the task stops), sends the last delta and every other image, and the target
//! rebuilds the files and runs `criu restore`. If that fails, or the link breaks after the final
//! dump, the source restores the task from its own final images, so nothing is lost.
//!
//! Target side ([`target::migrate_in`]): keeps the received chunks, rebuilds every round's files
//! in a staging directory in place (only changed positions are rewritten, so the final round
//! costs what changed, not the whole image), and restores from it after the last round.
//!
//! Across migrations ([`store`]): a node keeps the memory images of the migrations it received
//! in an on-disk chunk store, bounded in bytes, shared by every migration into it. Before round
//! 1's chunks the source asks which of its distinct chunks the store holds (a `Query` of their
//! digests, ~0.8% of the image, answered by a bitmap) and sends only the others, so a task that
//! comes back, or a replica whose memory matches one received before, costs little more than
//! what changed since. The target checks every chunk it reads from the store against its digest.
//!
//! Measured limits on this kernel (no soft-dirty): every dump writes all of the task's memory
//! and the final one does so while the task is frozen, so downtime grows with memory size.
//! [`postcopy`] is the other mode: one frozen dump without memory, a restore at once, and the
//! pages after it, relayed between CRIU's page server and lazy-pages daemon.

pub mod options;
pub mod pagemap;
pub mod pageproxy;
pub mod postcopy;
pub mod recipe;
pub mod replica;
pub mod scan;
pub mod shared;
pub mod source;
pub mod store;
pub mod target;
pub mod tracked;
pub mod wire;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::checkpointer::CheckpointError;
use crate::chunks::ChunkError;
use crate::compress::{CompressError, Level};
use crate::criu::CriuError;
use crate::planner::{PlanError, RoundProgress, Stopped};

pub use options::{DumpGate, InDoubt, SourceOptions, TargetOptions, TrackedPlan};
pub use postcopy::FrozenTask;
pub use recipe::RecipeError;
pub use source::{migrate_out, restore_at_source, Migrated, PostCopyStats};
pub use store::{ChunkStore, StoreError};
pub use target::{migrate_in, Received};
pub use wire::{Mode, WireError};

/// How the source compresses chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// The level [`crate::compress::Chooser`] picks from measured cost, ratio and bandwidth.
    Adaptive,
    /// Always this level.
    Fixed(Level),
}

/// What one round (pre-copy or final) did, reported to the caller as it ends.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundStats {
    /// 1, 2, ...; the final round is the last one.
    pub round: u32,
    /// True for the final round (the task was frozen for it).
    pub last: bool,
    /// Bytes of image files dumped.
    pub dumped_bytes: u64,
    /// Bytes of chunks the target lacked, before compression.
    pub delta_bytes: u64,
    /// Bytes written to the stream in this round (chunks, recipes, framing).
    pub wire_bytes: u64,
    /// Wire bytes sent at each level, indexed like [`Level::ALL`].
    pub wire_by_level: [u64; 4],
    /// Wall time of `criu dump`, failed attempts included.
    pub dump: Duration,
    /// Dumps tried: more than one when a dump caught the task holding a transient Unix
    /// connection to a peer outside it (CRIU refuses those and resumes the task).
    pub dump_attempts: u32,
    /// How long CRIU kept the task frozen during the dump (from its stats), if known.
    pub frozen: Option<Duration>,
    /// From the dump's end to the target's answer (hash, compress, send, apply on the target).
    pub transfer: Duration,
    /// The whole round.
    pub round_time: Duration,
    /// The planner's view after a pre-copy round (rate, dirty rate, predicted downtime, next
    /// decision); `None` for the final round.
    pub progress: Option<RoundProgress>,
}

impl RoundStats {
    /// The level that carried most of this round's bytes.
    pub fn main_level(&self) -> Level {
        let i = (0..4).max_by_key(|&i| self.wire_by_level[i]).unwrap_or(0);
        Level::ALL[i]
    }
}

/// Why a migration did not complete, and where the task is.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("the link to the peer failed: {0}")]
    Link(#[source] io::Error),
    #[error("the peer sent an invalid message: {0}")]
    Wire(#[from] WireError),
    #[error("the peer sent {got} where {expected} was expected")]
    Unexpected { expected: &'static str, got: String },
    #[error("the peer speaks migration protocol version {0}, this node {ours}", ours = wire::VERSION)]
    Version(u32),
    #[error(transparent)]
    Criu(#[from] CriuError),
    /// A checkpointer other than CRIU on a process failed (runc), or cannot do what was asked.
    #[error(transparent)]
    Checkpoint(CheckpointError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Compress(#[from] CompressError),
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{what} {}: {source}", path.display())]
    Files {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the target failed: {reason}")]
    Target { reason: String },
    #[error("the source gave up: {reason}")]
    SourceAborted { reason: String },
    #[error("the planner stopped the migration ({0}); the task keeps running on the source")]
    Aborted(Stopped),
    #[error("a worker thread of the migration died: {0}")]
    Worker(String),
    #[error("the post-copy migration failed ({cause}); the source's CRIU thawed the task, which runs on there from where it was frozen, and the target's copy, if any, was killed")]
    Thawed { cause: Box<LiveError> },
    #[error("the migration failed after the final dump ({cause}); the task was restored on the source as pid {pid}")]
    RestoredAtSource {
        cause: Box<LiveError>,
        pid: u32,
        restore: Duration,
    },
    /// After the final dump the target's answer never came: it may run the task. The final
    /// images are kept for [`source::restore_at_source`], once the caller made sure it does not.
    #[error("the migration failed after the final dump ({cause}) and the target may have restored the task; its final images are kept in {}", images.display())]
    InDoubt {
        cause: Box<LiveError>,
        images: PathBuf,
        /// When the source last heard the target (see [`Migrated::last_heard`]).
        last_heard: std::time::Instant,
    },
    /// Post-copy: the link failed after the task's images went, so the target may run a copy
    /// (it restores before its pages come); the task is frozen here with its pages. The caller
    /// makes sure the target runs none (a fence, or its lease run out from `last_heard`), then
    /// thaws it ([`FrozenTask::thaw`]).
    #[error("the post-copy migration failed after the task's images went ({cause}) and the target may have restored it; the task is frozen here, to be thawed once the target surely runs no copy")]
    FrozenInDoubt {
        cause: Box<LiveError>,
        frozen: FrozenTask,
        /// When the source last heard the target before the images (see [`Migrated::last_heard`]).
        last_heard: std::time::Instant,
    },
    #[error("the migration failed after the final dump ({cause}) and restoring the task on the source failed too ({restore}); its final images are kept in {}", images.display())]
    Lost {
        cause: Box<LiveError>,
        restore: String,
        images: PathBuf,
    },
}

impl From<CheckpointError> for LiveError {
    /// CRIU's own failures stay [`LiveError::Criu`], as before checkpointers were a trait.
    fn from(e: CheckpointError) -> Self {
        match e {
            CheckpointError::Criu(e) => LiveError::Criu(e),
            other => LiveError::Checkpoint(other),
        }
    }
}

impl From<wire::ReadError> for LiveError {
    fn from(e: wire::ReadError) -> Self {
        match e {
            wire::ReadError::Io(e) => LiveError::Link(e),
            wire::ReadError::Wire(e) => LiveError::Wire(e),
        }
    }
}

impl LiveError {
    /// True if the task runs on the source under its old pid: never stopped (any failure before
    /// the final dump), or frozen and thawed again (a failed post-copy).
    pub fn task_untouched(&self) -> bool {
        !matches!(
            self,
            LiveError::RestoredAtSource { .. }
                | LiveError::Lost { .. }
                | LiveError::InDoubt { .. }
                | LiveError::FrozenInDoubt { .. }
        )
    }
}

fn files_error(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> LiveError {
    let path = path.into();
    move |source| LiveError::Files { what, path, source }
}

fn join_error(e: tokio::task::JoinError) -> LiveError {
    LiveError::Worker(e.to_string())
}

/// A fresh directory on tmpfs (else the temp dir) for one end of one migration, named
/// `brume-<what>-<pid>-<random>`.
pub fn scratch_dir(what: &str) -> std::path::PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!(
        "brume-{what}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// What a target writes beside its staging directory ([`sibling`]): CRIU's logs and pid file.
const SIBLINGS: [&str; 3] = ["restore.log", "restore.pid", "lazy-pages.log"];

/// Removes what a move left beside staging directory `dir`, once it succeeded (a failure's
/// error names its log, which stays). They are small but live in tmpfs, and a node receives
/// moves for as long as it runs: 25 logs and pid files and 20 daemon logs, 880 KB, were left
/// in /dev/shm after five runs of the suite.
pub(crate) fn remove_siblings(dir: &Path) {
    for suffix in SIBLINGS {
        let _ = std::fs::remove_file(sibling(dir, suffix));
    }
    // A container restorer's work directory for that log (`restore.work`: runc's, with CRIU's
    // 46 KB log in it; `crate::checkpointer::RuncRestore`).
    let _ = std::fs::remove_dir_all(sibling(dir, "restore.work"));
}

/// `<dir>.<suffix>`, beside the staging directory so the images stay exactly as sent.
pub(crate) fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}
