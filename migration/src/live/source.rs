//! The source of a live migration: pre-copy rounds driven by the planner, the final round, and
//! the fallback that restores the task locally when the target cannot.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::chunks::{ChunkSet, Recipe};
use crate::compress::{Chooser, ChooserConfig, Level};
use crate::criu::{Criu, CriuError, DumpOptions, DumpReport, NetworkLock, RestoreOptions};
use crate::planner::{Action, FinalReport, Planner, PlannerConfig, RoundReport};
use crate::predictor::Predictor;

use super::recipe::diff;
use super::scan::{scan, Batch, LevelPick};
use super::wire::{read_message, write_message, FileRecipe, Message, Mode, VERSION};
use super::{files_error, join_error, Compression, LiveError, RoundStats};

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
        }
    }
}

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
}

/// How often a dump that caught the task holding a transient connection is tried again.
const DUMP_ATTEMPTS: u32 = 8;

/// Whether a failed dump only caught the task mid-connection: a Unix connection to a peer
/// outside the task (a client that has not closed yet, or one still in the listen queue). CRIU
/// resumes the task after a failed dump, so trying again a moment later is safe.
fn transient(e: &CriuError) -> bool {
    match e {
        CriuError::Failed { errors, .. } => errors.iter().any(|l| {
            l.contains("External socket is used")
                || (l.contains("unix: Unix socket") && l.contains("not found"))
        }),
        _ => false,
    }
}

/// `criu dump`, tried again (up to [`DUMP_ATTEMPTS`] times) while it fails only because the task
/// held a transient connection; returns the last result and how many attempts it took.
fn dump_retrying(criu: &Criu, opts: &DumpOptions) -> (Result<DumpReport, CriuError>, u32) {
    let mut attempt = 1;
    loop {
        let _ = std::fs::remove_dir_all(&opts.images_dir);
        match criu.dump(opts) {
            Err(e) if attempt < DUMP_ATTEMPTS && transient(&e) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(2));
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
        prev: HashMap::new(),
        wire: 0,
        final_dumped: false,
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
    let mut rounds: Vec<RoundStats> = Vec::new();
    if src.opts.mode == Mode::PreCopy {
        let mut decision = planner.start(start.elapsed())?;
        loop {
            match decision.action {
                Action::FinalDump => break,
                Action::Abort => {
                    src.abort(&decision.to_string()).await;
                    return Err(LiveError::Aborted(decision));
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
    let (stats, reply) = match src.round(n, true).await {
        Ok(r) => r,
        Err(e) if src.final_dumped => return Err(src.restore_locally(e, &final_dir).await),
        Err(e) => {
            src.abort(&e.to_string()).await;
            return Err(e);
        }
    };
    let downtime = stats.round_time;
    on_round(&stats);
    let (target_pid, rebuild, restore) = match reply {
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
                .restore_locally(
                    LiveError::Unexpected {
                        expected: "restored or failed",
                        got,
                    },
                    &final_dir,
                )
                .await);
        }
    };
    let _ = planner.final_finished(FinalReport {
        dump_time: stats.dump,
        wire_bytes: stats.wire_bytes,
        restore_time: restore,
        downtime,
    });
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
    })
}

struct Source<S> {
    stream: S,
    pid: u32,
    opts: SourceOptions,
    pick: LevelPick,
    /// Digests of the chunks the target holds: those of the files it rebuilt last round.
    acked: Arc<ChunkSet>,
    /// The recipes the target holds, by file name.
    prev: HashMap<String, Recipe>,
    wire: u64,
    final_dumped: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Source<S> {
    fn round_dir(&self, n: u32) -> PathBuf {
        self.opts.work_dir.join(format!("round-{n}"))
    }

    /// Tells the target the migration is off (best effort: the link may be what failed).
    async fn abort(&mut self, reason: &str) {
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
        let started = Instant::now();
        let dir = self.round_dir(n);
        let mut dump_opts = DumpOptions::new(&dir, self.pid)
            .leave_running(!last)
            .network_lock(self.opts.network_lock);
        dump_opts.log_file = Some(self.opts.work_dir.join(format!("round-{n}.dump.log")));
        let criu = self.opts.criu.clone();
        let (report, dump_attempts) =
            tokio::task::spawn_blocking(move || dump_retrying(&criu, &dump_opts))
                .await
                .map_err(join_error)?;
        let report = report?;
        self.final_dumped = last;
        let dump = started.elapsed();
        let frozen = report.stats.map(|s| s.frozen);

        let (tx, mut rx) = mpsc::channel::<Batch>(4);
        let known = self.acked.clone();
        let pick = self.pick.clone();
        let dedup = self.opts.mode == Mode::PreCopy;
        let scan_dir = dir.clone();
        let scanner =
            tokio::task::spawn_blocking(move || scan(&scan_dir, &known, dedup, &pick, &tx));
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
        let reply = read_message(&mut self.stream).await?;
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
        let round_time = started.elapsed();
        Ok((
            RoundStats {
                round: n,
                last,
                dumped_bytes: scanned.dumped_bytes,
                delta_bytes: scanned.delta_bytes,
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

    /// The final dump stopped the task but the target does not run it: restore it here from the
    /// final images.
    async fn restore_locally(&mut self, cause: LiveError, dir: &Path) -> LiveError {
        let mut ro = RestoreOptions::new(dir).network_lock(self.opts.network_lock);
        ro.log_file = Some(self.opts.work_dir.join("local-restore.log"));
        ro.pidfile = Some(self.opts.work_dir.join("local-restore.pid"));
        let criu = self.opts.criu.clone();
        let (pid, wait) = (self.pid, self.opts.pid_wait);
        let result = tokio::task::spawn_blocking(move || {
            Criu::wait_pid_gone(pid, wait)?;
            criu.restore(&ro)
        })
        .await;
        match result {
            Ok(Ok(r)) => {
                let _ = std::fs::remove_dir_all(&self.opts.work_dir);
                LiveError::RestoredAtSource {
                    cause: Box::new(cause),
                    pid: r.pid,
                    restore: r.elapsed,
                }
            }
            Ok(Err(e)) => LiveError::Lost {
                cause: Box::new(cause),
                restore: e.to_string(),
                images: dir.to_path_buf(),
            },
            Err(e) => LiveError::Lost {
                cause: Box::new(cause),
                restore: format!("the restore thread died: {e}"),
                images: dir.to_path_buf(),
            },
        }
    }
}
