//! The source's tracked rounds: pre-copy without dumps, for post-copy's final step.
//!
//! Why: on kernels without soft-dirty bits every pre-copy dump writes all of the task's memory
//! (and the final one does so frozen), and plain post-copy sends all of it after the restore, at
//! the pace of the task's faults. With the dirty-page tracker ([`crate::track`]) the rounds read
//! the task's memory while it runs: round 1 all of it, each later round only the pages written
//! since, until a round stops shrinking or what is left would cross the link in
//! [`super::TrackedPlan::final_transfer`]. Then post-copy's frozen dump (without memory), one last
//! round scanned while the task is frozen, and the restore: the target's page proxy answers the
//! lazy-pages daemon from the pages it holds ([`super::replica`]) and asks the source's page
//! server only for what it lacks.
//!
//! The last round's pages go before the restore when they cross the link in less than
//! [`super::TrackedPlan::final_inline`] (100 ms); otherwise only their addresses do
//! ([`Message::Stale`]), the target drops its older copies of them, and they follow the restore
//! through the page server, faulted in first where the task touches them. Why: those pages are
//! what the task wrote between the last round and the freeze, and a task that writes faster
//! than the link carries never converges: at 64 MiB/s over 100 Mbit/s nearly all of a 128 MiB
//! task is in the last round, 5.5 s frozen when sent first, 3.8 s when sent after. A small last
//! round is better sent first (its pages are the ones the task touches at once; each would be a
//! fault and a round trip after the restore): at 8 MiB/s, 119 ms of downtime against 141.
//!
//! ```text
//!  source                                               target
//!  attach tracker; round 1: every page ── Tracked ────▶  replica
//!  round k: pages written since ───────── Tracked ────▶  replica   (◀── Ack each round)
//!  criu dump --lazy-pages (frozen); last round ─ Tracked (small) or Stale ▶ replica
//!  images ──────────────────────────────────────────────▶ lazy restore; pages from the replica,
//!  page server ◀──────────────────────────────── Pages ─  the rest (stale ones first touched)
//! ```
//!
//! Where the tracker cannot attach (an older kernel, another architecture), the migration is
//! plain post-copy and the reason is logged.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::compress::{compress, Level};
use crate::track::{task::namespace_pid, Region, Round, Scope, TaskTracker, TrackError};

use super::source::Source;
use super::wire::{write_message, Message, MAX_RUNS, MAX_TRACKED_BYTES};
use super::{join_error, LiveError, RoundStats};

/// A tracked round that put at least this much on the wire measures the link's speed (for the
/// last round's choice); a smaller one is mostly latency.
const RATE_SAMPLE_BYTES: u64 = 1 << 20;

/// What one tracked round did.
struct Sent {
    pages: u64,
    wire: u64,
    /// Scan and read (the blocking side).
    read: Duration,
}

/// How the last round, read while the task is frozen, went.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct FinalRound {
    /// Pages written since the round before.
    pub pages: u64,
    /// Bytes it put on the wire.
    pub wire: u64,
    /// Whether the pages went before the restore ([`Message::Tracked`]) or only their
    /// addresses did ([`Message::Stale`]): then they follow it through the page server.
    pub inline: bool,
}

/// Whether `pages` should cross a link of `bytes_per_sec` before the restore, by
/// [`super::TrackedPlan::final_inline`]: when they take less than it (so `Duration::ZERO`
/// never sends them before, `None` always does).
pub(super) fn send_inline(pages: u64, bytes_per_sec: f64, within: Option<Duration>) -> bool {
    let Some(within) = within else {
        return true;
    };
    let secs = (pages * crate::PAGE) as f64 / bytes_per_sec.max(1.0);
    secs < within.as_secs_f64()
}

impl<S: AsyncRead + AsyncWrite + Unpin> Source<S> {
    /// Attaches the tracker to the task and runs the pre-copy rounds. `None` (and the reason
    /// logged) when tracking is not possible here: the caller goes on as plain post-copy.
    pub(super) async fn tracked_rounds(
        &mut self,
        on_round: &mut impl FnMut(&RoundStats),
        done: &mut Vec<RoundStats>,
    ) -> Result<Option<(TaskTracker, f64)>, LiveError> {
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
        let mut link_rate = self.opts.bandwidth.unwrap_or(0.0);
        for round in 1.. {
            let started = Instant::now();
            let (t, sent) = self.tracked_round(tracker, round, None).await?;
            tracker = t;
            write_message(&mut self.stream, &Message::TrackedEnd { round })
                .await
                .map_err(LiveError::Link)?;
            self.stream.flush().await.map_err(LiveError::Link)?;
            // Read through `read`: the target's lease counts from its last message before the
            // restore, this ack, and the source's clock for it from when it read it.
            match self.read().await? {
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
            // A round too small to fill the link says little about its speed.
            if sent.wire >= RATE_SAMPLE_BYTES || link_rate <= 0.0 {
                link_rate = rate;
            }
            if !plan.another(round, sent.pages, prev, per_page, rate) {
                break;
            }
            prev = Some(sent.pages);
        }
        Ok(Some((tracker, link_rate)))
    }

    /// The last round, scanned while the task is frozen (after the lazy dump), then the tracker
    /// goes (closing it disarms the task's memory). Its pages are read and sent when they cross
    /// a link of `link_rate` bytes/s within the plan's `final_inline`; otherwise only their
    /// addresses are, and the target asks the page server for them after the restore.
    pub(super) async fn tracked_final(
        &mut self,
        mut tracker: TaskTracker,
        round: u32,
        link_rate: f64,
    ) -> Result<FinalRound, LiveError> {
        let scanned = tokio::task::spawn_blocking(move || {
            let r = tracker.round();
            (tracker, r)
        })
        .await
        .map_err(join_error)?;
        let (tracker, scanned) = scanned;
        let scanned =
            scanned.map_err(|e| LiveError::Worker(format!("tracked round {round}: {e}")))?;
        let pages: u64 = scanned
            .iter()
            .flat_map(|(_, r)| r.regions.iter())
            .map(Region::pages)
            .sum();
        let within = self.opts.tracked.final_inline;
        let out = if send_inline(pages, link_rate, within) {
            let (tracker, sent) = self.tracked_round(tracker, round, Some(scanned)).await?;
            tokio::task::spawn_blocking(move || drop(tracker));
            FinalRound {
                pages: sent.pages,
                wire: sent.wire,
                inline: true,
            }
        } else {
            tokio::task::spawn_blocking(move || drop(tracker));
            let wire = self.send_stale(&scanned).await?;
            FinalRound {
                pages,
                wire,
                inline: false,
            }
        };
        Ok(out)
    }

    /// The addresses of the scanned pages, without their bytes ([`Message::Stale`]).
    async fn send_stale(&mut self, scanned: &[(i32, Round)]) -> Result<u64, LiveError> {
        let mut wire = 0u64;
        for (pid, round) in scanned {
            let nspid = namespace_pid(*pid)
                .map_err(|e| LiveError::Worker(format!("the last tracked round: {e}")))?
                as u32;
            let runs: Vec<(u64, u32)> = round
                .regions
                .iter()
                .flat_map(|r| page_runs(r.start, r.end))
                .collect();
            for runs in runs.chunks(MAX_RUNS) {
                let frame = Message::Stale {
                    pid: nspid,
                    runs: runs.to_vec(),
                }
                .encode();
                wire += frame.len() as u64;
                self.stream
                    .write_all(&frame)
                    .await
                    .map_err(LiveError::Link)?;
            }
        }
        self.wire += wire;
        Ok(wire)
    }

    /// One round: scan (unless `scanned` holds this round's scan) and read on a blocking
    /// thread, messages sent as they are made.
    async fn tracked_round(
        &mut self,
        mut tracker: TaskTracker,
        round: u32,
        scanned: Option<Vec<(i32, Round)>>,
    ) -> Result<(TaskTracker, Sent), LiveError> {
        let (tx, mut rx) = mpsc::channel::<Message>(4);
        let level = Level::Zstd1;
        let work = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let r = match scanned {
                Some(rounds) => read_scanned(&tracker, &rounds, level, &tx),
                None => tracker
                    .round()
                    .and_then(|rounds| read_scanned(&tracker, &rounds, level, &tx)),
            };
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

/// `[start, end)` as runs of (start, pages) a run's `u32` page count can hold.
fn page_runs(start: u64, end: u64) -> impl Iterator<Item = (u64, u32)> {
    let most = u64::from(u32::MAX) * crate::PAGE;
    let mut at = start;
    std::iter::from_fn(move || {
        (at < end).then(|| {
            let to = end.min(at + most);
            let run = (at, ((to - at) / crate::PAGE) as u32);
            at = to;
            run
        })
    })
}

/// Reads what a scan of every process of the task reported and hands it out as
/// [`Message::Tracked`] frames of at most [`MAX_TRACKED_BYTES`]. Returns the pages read.
fn read_scanned(
    tracker: &TaskTracker,
    scanned: &[(i32, Round)],
    level: Level,
    tx: &mpsc::Sender<Message>,
) -> Result<u64, TrackError> {
    let mut pages = 0u64;
    for (pid, round) in scanned {
        let pid = *pid;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_pages_go_first_only_when_they_cross_the_link_in_time() {
        let ms = Duration::from_millis;
        // 100 Mbit/s: 12.5 MB/s, so 10 ms carries 30 pages.
        let rate = 12.5e6;
        assert!(send_inline(30, rate, Some(ms(10))));
        assert!(!send_inline(31, rate, Some(ms(10))));
        assert!(!send_inline(250, rate, Some(ms(10))), "1 MB takes 80 ms");
        assert!(send_inline(250, 125e6, Some(ms(10))), "8 ms at 1 Gbit/s");
        assert!(send_inline(1 << 20, rate, None), "None: always before");
        assert!(!send_inline(0, rate, Some(Duration::ZERO)), "ZERO: never");
        assert!(
            !send_inline(1, 0.0, Some(ms(10))),
            "an unknown rate is slow"
        );
    }

    #[test]
    fn runs_split_where_a_page_count_would_overflow() {
        let page = crate::PAGE;
        assert_eq!(page_runs(0x1000, 0x1000).count(), 0);
        assert_eq!(
            page_runs(0x1000, 0x1000 + 3 * page).collect::<Vec<_>>(),
            vec![(0x1000, 3)]
        );
        let most = u64::from(u32::MAX);
        let runs: Vec<_> = page_runs(0, (most + 2) * page).collect();
        assert_eq!(runs, vec![(0, u32::MAX), (most * page, 2)]);
    }
}
