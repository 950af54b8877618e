//! The source of a live migration: pre-copy rounds driven by the planner, the final round, and
//! the fallback that restores the task locally when the target cannot.
//!
//! After the final dump the task runs nowhere until someone restores it, and two copies must
//! never run. The target's `Failed` answer means it did not restore (and will not): the source
//! restores here at once. Silence (a broken link, a garbled answer, no answer within
//! [`SourceOptions::final_wait`]) is ambiguous: the target may have restored the task and only
//! its `Restored` was lost. What the source then does is [`SourceOptions::in_doubt`]: restore
//! here anyway ([`InDoubt::RestoreHere`], for a caller that knows the target cannot run it, e.g.
//! a bench on one machine), or return [`LiveError::InDoubt`] with the final images so that the
//! caller first makes sure the target's copy cannot run (brume's mover fences it, or waits out
//! the target's lease) and then calls [`restore_at_source`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::checkpointer::{CheckpointError, Checkpointer};
use crate::chunks::{ChunkSet, Digest, Recipe, CHUNK_SIZE};
use crate::compress::{Chooser, Level};
use crate::criu::DumpReport;
use crate::planner::{Action, FinalOutcome, FinalReport, Planner, RoundReport};
use crate::predictor::Predictor;

use super::options::{InDoubt, SourceOptions};
use super::recipe::diff;
use super::scan::{hash_dir, scan, Batch, LevelPick, Scanned};
use super::wire::{
    from_bitmap, read_message, write_message, FileRecipe, Message, Mode, MAX_QUERY, VERSION,
};
use super::{files_error, join_error, Compression, LiveError, RoundStats};

/// A finished migration, as the source saw it.
#[derive(Clone, Debug)]
pub struct Migrated {
    /// The task's PID on the target.
    pub target_pid: u32,
    /// Every round, the final one last.
    pub rounds: Vec<RoundStats>,
    /// From the start of the final dump to the target's answer that the task runs.
    pub downtime: Duration,
    /// The target's rebuild of the final images and its `criu restore`, as it reported them.
    pub rebuild: Duration,
    pub restore: Duration,
    /// The whole migration.
    pub total: Duration,
    /// Bytes written to the stream.
    pub wire_bytes: u64,
    /// The predictor with what this migration taught it.
    pub predictor: Predictor,
    /// Pre-copy: the final freeze's predicted downtime (when the planner decided it) beside
    /// the measured one; `None` for post-copy, which the planner does not drive.
    pub forecast: Option<FinalOutcome>,
    /// When the task stopped running here for good: the end of the final dump.
    pub final_dump_end: Instant,
    /// Post-copy only: the pages that followed the restore.
    pub post_copy: Option<PostCopyStats>,
    /// When the source last read a message of the target before the final round's answer: the
    /// target's own clock for its lease started no later than this.
    pub last_heard: Instant,
}

/// What followed a post-copy restore.
#[derive(Clone, Debug)]
pub struct PostCopyStats {
    /// Bytes of page-server traffic sent to the target (pages and their headers).
    pub page_bytes: u64,
    /// From the target's restore to its having every page.
    pub pages_done: Duration,
    /// Tracked post-copy: the last tracked round, scanned (and read and sent, when
    /// `final_inline`) while the task is frozen.
    pub final_round: Duration,
    /// Pages the task wrote since the round before the last.
    pub final_pages: u64,
    /// Whether those pages went before the restore, or after it through the page server (only
    /// their addresses before it: [`super::wire::Message::Stale`]).
    pub final_inline: bool,
    /// Sending the dump's images (everything but the lazy pages), while frozen.
    pub images: Duration,
}

/// How often a dump that caught the task holding a transient connection is tried again.
pub(super) const DUMP_ATTEMPTS: u32 = 8;

/// How long a retry waits for the task's TCP connections to close before it dumps again.
const QUIET_BEFORE_RETRY: Duration = Duration::from_secs(2);

/// Before a dump is tried again: waits (at most [`QUIET_BEFORE_RETRY`]) until `pid` holds no
/// TCP connection but its listeners, then a moment more for a Unix peer to go.
pub(super) fn settle_before_retry(pid: u32) {
    let until = Instant::now() + QUIET_BEFORE_RETRY;
    while crate::preflight::open_connections(pid) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(2));
}

/// A dump, tried again (up to [`DUMP_ATTEMPTS`] times) while it fails only because the task
/// (`pid`) held a transient connection; returns the last result and how many attempts it took.
fn dump_retrying(
    checkpointer: &dyn Checkpointer,
    pid: u32,
    dir: &Path,
    leave_running: bool,
    log: &Path,
) -> (Result<DumpReport, CheckpointError>, u32) {
    let mut attempt = 1;
    loop {
        let _ = std::fs::remove_dir_all(dir);
        match checkpointer.dump(dir, leave_running, log) {
            Err(e) if attempt < DUMP_ATTEMPTS && e.transient() => {
                attempt += 1;
                settle_before_retry(pid);
            }
            r => return (r, attempt),
        }
    }
}

/// The task's resident memory, from `/proc/<pid>/statm`.
fn memory_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// Migrates process `pid` to the target at the other end of `stream`, calling `on_round` after
/// every round. On error, [`LiveError::task_untouched`] tells whether the task still runs
/// untouched here; after the final dump the task is restored here if the target could not take
/// it ([`LiveError::RestoredAtSource`]).
pub async fn migrate_out<S>(
    stream: S,
    pid: u32,
    opts: SourceOptions,
    mut on_round: impl FnMut(&RoundStats),
) -> Result<Migrated, LiveError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    std::fs::create_dir_all(&opts.work_dir)
        .map_err(files_error("create the work directory", &opts.work_dir))?;
    let memory = memory_bytes(pid);
    let pick = match opts.compression {
        Compression::Fixed(l) => LevelPick::Fixed(l),
        Compression::Adaptive => {
            let mut c = Chooser::new(opts.chooser.clone());
            if let Some(b) = opts.bandwidth {
                c.observe_bandwidth(b);
            }
            LevelPick::Adaptive(Arc::new(Mutex::new(c)), start)
        }
    };
    let mut planner = Planner::new(opts.planner.clone(), opts.predictor.clone(), memory);
    if let Some(b) = opts.bandwidth {
        planner.set_bandwidth(b);
    }
    let mut src = Source {
        stream,
        pid,
        opts,
        pick,
        acked: Arc::new(ChunkSet::new()),
        hashed: HashMap::new(),
        prev: HashMap::new(),
        wire: 0,
        final_dumped: false,
        last_heard: start,
    };
    let hello = Message::Hello {
        version: VERSION,
        mode: src.opts.mode,
        pid,
        memory_bytes: memory,
    };
    write_message(&mut src.stream, &hello)
        .await
        .map_err(LiveError::Link)?;
    if src.opts.mode == Mode::PostCopy {
        return src.post_copy(start, on_round).await;
    }
    let mut rounds: Vec<RoundStats> = Vec::new();
    if src.opts.mode == Mode::PreCopy {
        let mut decision = planner.start(start.elapsed())?;
        loop {
            match decision.action {
                Action::FinalDump => break,
                Action::Abort => {
                    let stopped = planner.stopped(decision);
                    src.abort(&stopped.to_string()).await;
                    return Err(LiveError::Aborted(stopped));
                }
                Action::PreCopy => {}
            }
            let n = rounds.len() as u32 + 1;
            let (mut stats, _) = match src.round(n, false).await {
                Ok(r) => r,
                Err(e) => {
                    src.abort(&e.to_string()).await;
                    return Err(e);
                }
            };
            let (d, progress) = planner.round_finished(
                start.elapsed(),
                RoundReport {
                    dumped_bytes: stats.dumped_bytes,
                    delta_bytes: stats.delta_bytes,
                    wire_bytes: stats.wire_bytes,
                    dump_time: stats.dump,
                    round_time: stats.round_time,
                    dirty_rate: None,
                },
            )?;
            stats.progress = Some(progress);
            on_round(&stats);
            rounds.push(stats);
            decision = d;
        }
    }
    let n = rounds.len() as u32 + 1;
    let final_dir = src.round_dir(n);
    let heard = src.last_heard;
    let (stats, reply) = match src.round(n, true).await {
        Ok(r) => r,
        // The target's own Failed: it did not restore, and will not.
        Err(e @ LiveError::Target { .. }) if src.final_dumped => {
            return Err(src.restore_locally(e, &final_dir).await)
        }
        Err(e) if src.final_dumped => return Err(src.in_doubt(e, &final_dir).await),
        Err(e) => {
            src.abort(&e.to_string()).await;
            return Err(e);
        }
    };
    let downtime = stats.round_time;
    let final_dump_end = Instant::now() - stats.round_time + stats.dump;
    on_round(&stats);
    let late = |w: Duration| heard.elapsed() > w;
    let (target_pid, rebuild, restore) = match reply {
        Some(Message::Restored { .. }) if src.opts.commit_within.is_some_and(late) => {
            let waited = heard.elapsed();
            let cause = LiveError::Link(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the target's Restored came {waited:?} after it was last heard, too late to release the task to it"),
            ));
            return Err(src.in_doubt(cause, &final_dir).await);
        }
        Some(Message::Restored {
            pid,
            rebuild_us,
            restore_us,
        }) => (
            pid,
            Duration::from_micros(rebuild_us),
            Duration::from_micros(restore_us),
        ),
        Some(Message::Failed { reason }) => {
            return Err(src
                .restore_locally(LiveError::Target { reason }, &final_dir)
                .await)
        }
        other => {
            let got = format!("{other:?}");
            return Err(src
                .in_doubt(
                    LiveError::Unexpected {
                        expected: "restored or failed",
                        got,
                    },
                    &final_dir,
                )
                .await);
        }
    };
    let forecast = planner
        .final_finished(FinalReport {
            dump_time: stats.dump,
            wire_bytes: stats.wire_bytes,
            restore_time: restore,
            downtime,
        })
        .ok();
    rounds.push(stats);
    let _ = std::fs::remove_dir_all(&src.opts.work_dir);
    Ok(Migrated {
        target_pid,
        rounds,
        downtime,
        rebuild,
        restore,
        total: start.elapsed(),
        wire_bytes: src.wire,
        predictor: planner.into_predictor(),
        forecast,
        final_dump_end,
        post_copy: None,
        last_heard: src.last_heard,
    })
}

pub(super) struct Source<S> {
    pub(super) stream: S,
    pub(super) pid: u32,
    pub(super) opts: SourceOptions,
    pick: LevelPick,
    /// Digests of the chunks the target holds: those of the files it rebuilt last round (in
    /// round 1, those its chunk store holds).
    acked: Arc<ChunkSet>,
    /// Recipes of the next round's files already hashed (round 1's, for the store query).
    hashed: HashMap<String, Recipe>,
    /// The recipes the target holds, by file name.
    prev: HashMap<String, Recipe>,
    pub(super) wire: u64,
    final_dumped: bool,
    /// When a message of the target was last read.
    pub(super) last_heard: Instant,
}

/// What [`Source::send_images`] put on the wire.
pub(super) struct Sent {
    pub(super) wire: u64,
    pub(super) by_level: [u64; 4],
    pub(super) scanned: Scanned,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Source<S> {
    pub(super) fn round_dir(&self, n: u32) -> PathBuf {
        self.opts.work_dir.join(format!("round-{n}"))
    }

    /// The target's next message (and when it came).
    pub(super) async fn read(&mut self) -> Result<Message, LiveError> {
        let m = read_message(&mut self.stream).await?;
        self.last_heard = Instant::now();
        Ok(m)
    }

    /// Tells the target the migration is off (best effort: the link may be what failed).
    pub(super) async fn abort(&mut self, reason: &str) {
        let m = Message::Abort {
            reason: reason.to_string(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = write_message(&mut self.stream, &m).await;
            let _ = self.stream.flush().await;
        })
        .await;
        let _ = std::fs::remove_dir_all(&self.opts.work_dir);
    }

    /// One round: dump, send the delta and the recipes, wait for the target's answer (an ack,
    /// or for the last round the restore's outcome, returned).
    async fn round(
        &mut self,
        n: u32,
        last: bool,
    ) -> Result<(RoundStats, Option<Message>), LiveError> {
        // The gate's wait (callers held, the task's connections closing) is not the dump's:
        // the round, its dump time and the downtime are timed from the end of it.
        if let Some(gate) = &self.opts.gate {
            gate.before_dump().await;
        }
        let started = Instant::now();
        let dir = self.round_dir(n);
        let log = self.opts.work_dir.join(format!("round-{n}.dump.log"));
        let checkpointer = self.opts.checkpointer(self.pid);
        let dump_dir = dir.clone();
        let pid = self.pid;
        let (report, dump_attempts) = tokio::task::spawn_blocking(move || {
            dump_retrying(&*checkpointer, pid, &dump_dir, !last, &log)
        })
        .await
        .map_err(join_error)?;
        let report = report?;
        self.final_dumped = last;
        let dump = started.elapsed();
        let frozen = report.stats.map(|s| s.frozen);
        let bound = if last { self.opts.final_wait } else { None };
        let rest = self.send_round(n, last, &dir);
        let (wire, by_level, (dumped_bytes, delta_bytes), reply) = match bound {
            None => rest.await?,
            Some(wait) => tokio::time::timeout(wait, rest).await.map_err(|_| {
                LiveError::Link(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer to the final round within {wait:?}"),
                ))
            })??,
        };
        let round_time = started.elapsed();
        Ok((
            RoundStats {
                round: n,
                last,
                dumped_bytes,
                delta_bytes,
                wire_bytes: wire,
                wire_by_level: by_level,
                dump,
                dump_attempts,
                frozen,
                transfer: round_time.saturating_sub(dump),
                round_time,
                progress: None,
            },
            reply,
        ))
    }

    /// The part of a round after its dump: the images sent, the target's answer read.
    async fn send_round(
        &mut self,
        n: u32,
        last: bool,
        dir: &Path,
    ) -> Result<(u64, [u64; 4], (u64, u64), Option<Message>), LiveError> {
        let dir = dir.to_path_buf();
        let query_wire = if n == 1 && self.opts.mode == Mode::PreCopy {
            self.ask_store(&dir).await?
        } else {
            0
        };
        let Sent {
            wire,
            by_level,
            scanned,
        } = self.send_images(n, last, &dir).await?;
        let wire = wire + query_wire;
        let reply = self.read().await?;
        let reply = match reply {
            Message::Ack { round, .. } if !last && round == n => {
                let mut known = ChunkSet::new();
                for (_, r) in &scanned.files {
                    known.extend(r.chunks.iter().map(|c| c.digest));
                }
                self.acked = Arc::new(known);
                self.prev = scanned.files.into_iter().collect();
                let _ = std::fs::remove_dir_all(&dir);
                None
            }
            Message::Failed { reason } => return Err(LiveError::Target { reason }),
            m @ Message::Restored { .. } if last => Some(m),
            other => {
                return Err(LiveError::Unexpected {
                    expected: if last { "restored" } else { "ack" },
                    got: format!("{other:?}"),
                })
            }
        };
        let sizes = (scanned.dumped_bytes, scanned.delta_bytes);
        Ok((wire, by_level, sizes, reply))
    }

    /// The target's first message, [`Message::Welcome`], in either mode: how many chunks its
    /// store holds.
    pub(super) async fn welcome(&mut self) -> Result<u64, LiveError> {
        match self.read().await? {
            Message::Welcome { store_chunks } => Ok(store_chunks),
            Message::Failed { reason } => Err(LiveError::Target { reason }),
            other => Err(LiveError::Unexpected {
                expected: "welcome",
                got: format!("{other:?}"),
            }),
        }
    }

    /// Round 1 of a pre-copy: reads the target's [`Message::Welcome`] (sent when it read the
    /// hello, so it is here by now) and, if its chunk store holds anything, hashes the round's
    /// files, asks which of their distinct full chunks it holds and counts those as
    /// acknowledged. Returns the bytes the query put on the wire.
    async fn ask_store(&mut self, dir: &Path) -> Result<u64, LiveError> {
        if self.welcome().await? == 0 {
            return Ok(0);
        }
        let d = dir.to_path_buf();
        let hashed = tokio::task::spawn_blocking(move || hash_dir(&d))
            .await
            .map_err(join_error)??;
        // Sorted by name like the scan, so the query names chunks in the order they are sent.
        let mut names: Vec<&String> = hashed.keys().collect();
        names.sort();
        let mut seen = std::collections::HashSet::new();
        let digests: Vec<Digest> = names
            .iter()
            .flat_map(|n| hashed[*n].chunks.iter())
            .filter(|c| c.len as usize == CHUNK_SIZE && seen.insert(c.digest))
            .map(|c| c.digest)
            .take(MAX_QUERY)
            .collect();
        self.hashed = hashed;
        if digests.is_empty() {
            return Ok(0);
        }
        let query = Message::Query {
            digests: digests.clone(),
        }
        .encode();
        self.stream
            .write_all(&query)
            .await
            .map_err(LiveError::Link)?;
        self.stream.flush().await.map_err(LiveError::Link)?;
        let held = match self.read().await? {
            Message::Holding { bitmap } => from_bitmap(&bitmap, digests.len())?,
            Message::Failed { reason } => return Err(LiveError::Target { reason }),
            other => {
                return Err(LiveError::Unexpected {
                    expected: "holding",
                    got: format!("{other:?}"),
                })
            }
        };
        self.acked = Arc::new(
            digests
                .into_iter()
                .zip(held)
                .filter(|(_, h)| *h)
                .map(|(d, _)| d)
                .collect(),
        );
        self.wire += query.len() as u64;
        Ok(query.len() as u64)
    }

    /// Sends the images in `dir`: the chunks the target lacks, then every file's recipe in the
    /// round's end. Hashing and compression run on a blocking thread while this writes.
    pub(super) async fn send_images(
        &mut self,
        n: u32,
        last: bool,
        dir: &Path,
    ) -> Result<Sent, LiveError> {
        let (tx, mut rx) = mpsc::channel::<Batch>(4);
        let known = self.acked.clone();
        let pick = self.pick.clone();
        let dedup = self.opts.mode == Mode::PreCopy;
        let scan_dir = dir.to_path_buf();
        let hashed = std::mem::take(&mut self.hashed);
        let scanner = tokio::task::spawn_blocking(move || {
            scan(&scan_dir, &known, dedup, &hashed, &pick, &tx)
        });
        let mut wire = 0u64;
        let mut by_level = [0u64; 4];
        let (mut win_bytes, mut win_write, mut win_start) = (0u64, Duration::ZERO, Instant::now());
        while let Some(b) = rx.recv().await {
            let frame = Message::Chunks {
                level: b.level,
                refs: b.refs,
                payload: b.payload,
            }
            .encode();
            let t = Instant::now();
            self.stream
                .write_all(&frame)
                .await
                .map_err(LiveError::Link)?;
            win_write += t.elapsed();
            win_bytes += frame.len() as u64;
            wire += frame.len() as u64;
            let i = Level::ALL.iter().position(|l| *l == b.level).unwrap_or(0);
            by_level[i] += frame.len() as u64;
            if win_start.elapsed() >= Duration::from_millis(100) {
                // Time blocked in writes measures the link only while the socket pushes back; on
                // a fast link with large buffers it overestimates the bandwidth (measured: on
                // 1 Gbit/s the chooser then dropped to no compression and took 1.35x longer), so
                // a bandwidth the caller knows wins.
                if let (LevelPick::Adaptive(c, _), None) = (&self.pick, self.opts.bandwidth) {
                    if win_write > Duration::from_millis(1) {
                        if let Ok(mut c) = c.lock() {
                            c.observe_bandwidth(win_bytes as f64 / win_write.as_secs_f64());
                        }
                    }
                }
                (win_bytes, win_write, win_start) = (0, Duration::ZERO, Instant::now());
            }
        }
        let scanned = scanner.await.map_err(join_error)??;
        let files: Vec<FileRecipe> = scanned
            .files
            .iter()
            .map(|(name, r)| FileRecipe {
                name: name.clone(),
                len: r.len,
                ops: diff(self.prev.get(name), r),
            })
            .collect();
        let end = Message::RoundEnd {
            round: n,
            last,
            files,
        }
        .encode();
        wire += end.len() as u64;
        self.wire += wire;
        self.stream.write_all(&end).await.map_err(LiveError::Link)?;
        self.stream.flush().await.map_err(LiveError::Link)?;
        Ok(Sent {
            wire,
            by_level,
            scanned,
        })
    }

    /// The final dump stopped the task but the target does not run it: restore it here from the
    /// final images.
    async fn restore_locally(&mut self, cause: LiveError, dir: &Path) -> LiveError {
        restore_at_source(&self.opts, self.pid, dir, cause).await
    }

    /// The final dump stopped the task and the target's answer is missing: restore here, or
    /// hand the images back, as [`SourceOptions::in_doubt`] says.
    async fn in_doubt(&mut self, cause: LiveError, dir: &Path) -> LiveError {
        match self.opts.in_doubt {
            InDoubt::RestoreHere => self.restore_locally(cause, dir).await,
            InDoubt::Return => LiveError::InDoubt {
                cause: Box::new(cause),
                images: dir.to_path_buf(),
                last_heard: self.last_heard,
            },
        }
    }
}

/// Restores the task `pid` dumped with `opts` from its final `images` on the source, after a
/// migration that ended with `cause` ([`LiveError::RestoredAtSource`] or, if the restore fails,
/// [`LiveError::Lost`]). Only for a task no target runs: see the module doc. On success the
/// work directory goes.
pub async fn restore_at_source(
    opts: &SourceOptions,
    pid: u32,
    images: &Path,
    cause: LiveError,
) -> LiveError {
    let log = opts.work_dir.join("local-restore.log");
    let checkpointer = opts.checkpointer(pid);
    let dir = images.to_path_buf();
    let result = tokio::task::spawn_blocking(move || checkpointer.restore(&dir, pid, &log)).await;
    match result {
        Ok(Ok(r)) => {
            let _ = std::fs::remove_dir_all(&opts.work_dir);
            LiveError::RestoredAtSource {
                cause: Box::new(cause),
                pid: r.pid,
                restore: r.elapsed,
            }
        }
        Ok(Err(e)) => LiveError::Lost {
            cause: Box::new(cause),
            restore: e.to_string(),
            images: images.to_path_buf(),
        },
        Err(e) => LiveError::Lost {
            cause: Box::new(cause),
            restore: format!("the restore thread died: {e}"),
            images: images.to_path_buf(),
        },
    }
}
