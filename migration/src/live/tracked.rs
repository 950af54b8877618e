//! The source's tracked rounds: pre-copy without dumps, for post-copy's final step.
//!
//! Why: on kernels without soft-dirty bits every pre-copy dump writes all of the task's memory
//! (and the final one does so frozen), and plain post-copy sends all of it after the restore, at
//! the pace of the task's faults. With the dirty-page tracker ([`crate::track`]) the rounds read
//! the task's memory while it runs: round 1 all of it, each later round only the pages written
//! since, until a round stops shrinking or what is left would cross the link in
//! [`super::TrackedPlan::final_transfer`]. Then post-copy's frozen dump (without memory), one last
//! round read while the task is frozen, and the restore: the target's page proxy answers the
//! lazy-pages daemon from the pages it holds ([`super::replica`]) and asks the source's page
//! server only for what it lacks (nothing, when the tracker saw every write).
//!
//! ```text
//!  source                                               target
//!  attach tracker; round 1: every page ── Tracked ────▶  replica
//!  round k: pages written since ───────── Tracked ────▶  replica   (◀── Ack each round)
//!  criu dump --lazy-pages (frozen); last round ─ Tracked ▶ replica
//!  images ──────────────────────────────────────────────▶ lazy restore; pages from the replica
//! ```
//!
//! Where the tracker cannot attach (an older kernel, another architecture), the migration is
//! plain post-copy and the reason is logged.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::compress::{compress, Level};
use crate::track::{task::namespace_pid, Scope, TaskTracker, TrackError};

use super::source::Source;
use super::wire::{read_message, write_message, Message, MAX_RUNS, MAX_TRACKED_BYTES};
use super::{join_error, LiveError, RoundStats};

/// What one tracked round did.
struct Sent {
    pages: u64,
    wire: u64,
    /// Scan and read (the blocking side).
    read: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Source<S> {
    /// Attaches the tracker to the task and runs the pre-copy rounds. `None` (and the reason
    /// logged) when tracking is not possible here: the caller goes on as plain post-copy.
    pub(super) async fn tracked_rounds(
        &mut self,
        on_round: &mut impl FnMut(&RoundStats),
        done: &mut Vec<RoundStats>,
    ) -> Result<Option<TaskTracker>, LiveError> {
        let pid = self.pid as i32;
        let attached =
            tokio::task::spawn_blocking(move || TaskTracker::attach(pid, Scope::Anonymous))
                .await
                .map_err(join_error)?;
        let mut tracker = match attached {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(pid, "no dirty-page tracking, plain post-copy: {e}");
                return Ok(None);
            }
        };
        let plan = self.opts.tracked.clone();
        let mut prev = None;
        for round in 1.. {
            let started = Instant::now();
            let (t, sent) = self.tracked_round(tracker, round).await?;
            tracker = t;
            write_message(&mut self.stream, &Message::TrackedEnd { round })
                .await
                .map_err(LiveError::Link)?;
            self.stream.flush().await.map_err(LiveError::Link)?;
            match read_message(&mut self.stream).await? {
                Message::Ack { round: r, .. } if r == round => {}
                Message::Failed { reason } => return Err(LiveError::Target { reason }),
                other => {
                    return Err(LiveError::Unexpected {
                        expected: "the ack of a tracked round",
                        got: format!("{other:?}"),
                    })
                }
            }
            let took = started.elapsed();
            let transfer = took.saturating_sub(sent.read);
            let stats = RoundStats {
                round,
                last: false,
                dumped_bytes: sent.pages * 4096,
                delta_bytes: sent.pages * 4096,
                wire_bytes: sent.wire,
                wire_by_level: [0, sent.wire, 0, 0],
                dump: sent.read,
                dump_attempts: 1,
                frozen: None,
                transfer,
                round_time: took,
                progress: None,
            };
            on_round(&stats);
            done.push(stats);
            let per_page = if sent.pages > 0 {
                sent.wire as f64 / sent.pages as f64
            } else {
                4096.0
            };
            let rate = self
                .opts
                .bandwidth
                .unwrap_or(sent.wire as f64 / transfer.as_secs_f64().max(1e-3));
            if !plan.another(round, sent.pages, prev, per_page, rate) {
                break;
            }
            prev = Some(sent.pages);
        }
        Ok(Some(tracker))
    }

    /// The last round, read while the task is frozen (after the lazy dump), then the tracker
    /// goes (closing it disarms the task's memory). Returns the pages and bytes sent.
    pub(super) async fn tracked_final(
        &mut self,
        tracker: TaskTracker,
        round: u32,
    ) -> Result<(u64, u64), LiveError> {
        let (tracker, sent) = self.tracked_round(tracker, round).await?;
        tokio::task::spawn_blocking(move || drop(tracker));
        Ok((sent.pages, sent.wire))
    }

    /// One round: scan and read on a blocking thread, messages sent as they are made.
    async fn tracked_round(
        &mut self,
        mut tracker: TaskTracker,
        round: u32,
    ) -> Result<(TaskTracker, Sent), LiveError> {
        let (tx, mut rx) = mpsc::channel::<Message>(4);
        let level = Level::Zstd1;
        let work = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let r = read_round(&mut tracker, level, &tx);
            (tracker, r, started.elapsed())
        });
        let mut wire = 0u64;
        while let Some(m) = rx.recv().await {
            let frame = m.encode();
            wire += frame.len() as u64;
            self.stream
                .write_all(&frame)
                .await
                .map_err(LiveError::Link)?;
        }
        let (tracker, pages, read) = work.await.map_err(join_error)?;
        let pages = pages.map_err(|e| LiveError::Worker(format!("tracked round {round}: {e}")))?;
        self.wire += wire;
        Ok((tracker, Sent { pages, wire, read }))
    }
}

/// Scans every process of the task, reads what the scan reported and hands it out as
/// [`Message::Tracked`] frames of at most [`MAX_TRACKED_BYTES`]. Returns the pages read.
fn read_round(
    tracker: &mut TaskTracker,
    level: Level,
    tx: &mpsc::Sender<Message>,
) -> Result<u64, TrackError> {
    let mut pages = 0u64;
    for (pid, round) in tracker.round()? {
        let Some(process) = tracker.process(pid) else {
            continue;
        };
        let nspid = namespace_pid(pid)? as u32;
        // Read and send in slices of regions, so memory in flight stays bounded.
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        let mut flush = |batch: &mut Vec<crate::track::Region>| -> Result<(), TrackError> {
            if batch.is_empty() {
                return Ok(());
            }
            let (read, data) = process.read(batch)?;
            batch.clear();
            let runs: Vec<(u64, u32)> = read
                .iter()
                .map(|r| (r.start, ((r.end - r.start) / 4096) as u32))
                .collect();
            pages += runs.iter().map(|r| u64::from(r.1)).sum::<u64>();
            let payload = compress(level, &data).map_err(|e| {
                TrackError::Process(pid, "compressing pages", std::io::Error::other(e))
            })?;
            let m = Message::Tracked {
                pid: nspid,
                level,
                runs,
                payload,
            };
            // The receiver is gone only when the link failed; its error is the one reported.
            let _ = tx.blocking_send(m);
            Ok(())
        };
        for region in &round.regions {
            // Cut regions so no message exceeds the byte bound.
            let mut start = region.start;
            while start < region.end {
                let room = MAX_TRACKED_BYTES as u64 - bytes;
                let end = region.end.min(start + room);
                batch.push(crate::track::Region {
                    start,
                    end,
                    why: region.why,
                });
                bytes += end - start;
                start = end;
                if bytes >= MAX_TRACKED_BYTES as u64 || batch.len() >= MAX_RUNS {
                    flush(&mut batch)?;
                    bytes = 0;
                }
            }
        }
        flush(&mut batch)?;
    }
    Ok(pages)
}
