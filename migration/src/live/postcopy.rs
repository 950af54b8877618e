//! Post-copy over the migration stream: the source's lazy dump and page server, the target's
//! lazy restore, and the relay of the page-server conversation between them.
//!
//! Why it exists: without soft-dirty tracking every pre-copy final dump writes all memory while
//! the task is frozen, so downtime grows with memory; here the frozen part is the dump of
//! everything but memory, the transfer of those small images and a restore that does not wait
//! for pages (see [`crate::lazy`]), whatever the task's size. The price: until the last page
//! arrives the task runs on the target with part of its memory still on the source, so a
//! failure then is handled by thawing the source and killing the target's copy (never two
//! copies, and never a copy running on pages it did not get).
//!
//! ```text
//!  source                                            target
//!  criu dump --lazy-pages (frozen) ─ images ──────▶  rebuild, criu lazy-pages, criu restore
//!  page server ◀── Pages (requests) ───────────────  lazy-pages daemon (faults + background)
//!              ─── Pages (pages) ─────────────────▶
//!              ◀── Restored ───────────────────────  the task runs here
//!  dump exits: every page is there ◀── PagesDone ──  daemon exits: every page is here
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::checkpointer::{CheckpointError, Restored as Revived};
use crate::criu::{CriuError, DumpOptions, RestoreOptions};
use crate::lazy::{abort_page_server, close_request, LazyDump, PageSocket};

use super::options::InDoubt;
use super::pagemap;
use super::pageproxy::{Out, PageProxy};
use super::replica::Replica;
use super::sibling;
use super::source::{settle_before_retry, Source, DUMP_ATTEMPTS};
use super::tracked::FinalRound;
use super::wire::{read_message, write_message, Message};
use super::{join_error, LiveError, Migrated, PostCopyStats, RoundStats, TargetOptions};

/// The most bytes of page-server traffic in one [`Message::Pages`].
const PAGES_FRAME: usize = 256 << 10;

/// How long a failed target waits for a restore still under way, to kill what it restored.
const RESTORE_WAIT: Duration = Duration::from_secs(30);

/// A page-server connection as the relays use it: a socketpair's end or a loopback TCP one.
trait PageIo: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> PageIo for T {}
type PageConn = Box<dyn PageIo>;

fn tokio_socket(s: PageSocket) -> Result<PageConn, LiveError> {
    let e = |e: std::io::Error| LiveError::Worker(format!("the page-server socket: {e}"));
    Ok(match s {
        PageSocket::Unix(s) => {
            s.set_nonblocking(true).map_err(e)?;
            Box::new(tokio::net::UnixStream::from_std(s).map_err(e)?)
        }
        PageSocket::Tcp(s) => {
            s.set_nonblocking(true).map_err(e)?;
            Box::new(tokio::net::TcpStream::from_std(s).map_err(e)?)
        }
    })
}

impl<S: AsyncRead + AsyncWrite + Unpin> Source<S> {
    /// The whole post-copy migration, after the hello.
    pub(super) async fn post_copy(
        &mut self,
        start: Instant,
        mut on_round: impl FnMut(&RoundStats),
    ) -> Result<Migrated, LiveError> {
        let mut rounds = Vec::new();
        // The target's first message, before any page (post-copy has no store to ask).
        match self.welcome().await {
            Ok(_) => {}
            Err(e @ LiveError::Unexpected { .. }) => {
                self.abort(&e.to_string()).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        // Asked before the rounds, so the freeze does not wait for it.
        let criu = self.opts.criu.clone();
        let defer = self.opts.defer_lazy_reads
            && tokio::task::spawn_blocking(move || criu.defers_lazy_reads())
                .await
                .map_err(join_error)?
                .unwrap_or(false);
        if self.opts.defer_lazy_reads && !defer {
            tracing::info!("this criu copies every lazy page while the task is frozen (no --lazy-pages-defer-read: scripts/install-criu.sh builds one that defers them)");
        }
        let tracker = if self.opts.track {
            match self.tracked_rounds(&mut on_round, &mut rounds).await {
                Ok(t) => t,
                Err(e) => {
                    // Before the dump: the task runs on here untouched.
                    self.abort(&e.to_string()).await;
                    return Err(e);
                }
            }
        } else {
            None
        };
        let tracked_rounds = rounds.len() as u32;
        if let Some(gate) = &self.opts.gate {
            gate.before_dump().await;
        }
        let started = Instant::now();
        let dir = self.round_dir(1);
        let log = self.opts.work_dir.join("round-1.dump.log");
        let pid = self.pid;
        let dumped = match self.opts.checkpointer.clone() {
            // A container: its runtime runs criu (`Checkpointer::dump_lazy`).
            Some(c) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || {
                    lazy_dump_retrying(pid, &dir, || c.dump_lazy(&dir, &log, defer))
                })
                .await
            }
            None => {
                let mut opts = DumpOptions::new(&dir, pid)
                    .network_lock(self.opts.network_lock)
                    .defer_lazy_reads(defer);
                opts.log_file = Some(log);
                let criu = self.opts.criu.clone();
                tokio::task::spawn_blocking(move || {
                    lazy_dump_retrying(pid, &opts.images_dir.clone(), || {
                        let (mut d, s) = criu.dump_lazy(&opts)?;
                        d.wait_ready()?;
                        Ok((d, s))
                    })
                })
                .await
            }
        }
        .map_err(join_error)?;
        let (dump, socket, attempts) = match dumped {
            Ok(d) => d,
            Err(e) => {
                // A failed dump thaws the task: it runs on here.
                self.abort(&e.to_string()).await;
                return Err(e.into());
            }
        };
        let dump_time = started.elapsed();
        let dump_end = Instant::now();
        let mut socket = tokio_socket(socket)?;
        let dump_exit = tokio::task::spawn_blocking(move || dump.wait());
        // The task is frozen now: the last tracked round reads what it wrote since the last one.
        let mut last = FinalRound::default();
        let final_started = Instant::now();
        if let Some((tracker, link_rate)) = tracker {
            match self
                .tracked_final(tracker, tracked_rounds + 1, link_rate)
                .await
            {
                Ok(r) => last = r,
                Err(e) => return Err(self.thaw(e, &mut socket, dump_exit).await),
            }
        }
        let final_round = final_started.elapsed();
        // The target's lease starts no later than its last message before the images (the
        // last round's answer), which the source read at `heard`.
        let heard = self.last_heard;
        let commit_by = self.opts.commit_within.map(|w| heard + w);
        let images_started = Instant::now();
        let sent = match self.send_images(1, true, &dir).await {
            Ok(s) => s,
            Err(e) => return Err(self.settle(e, socket, dump_exit, heard).await),
        };
        let images = images_started.elapsed();
        let relayed = relay_source(&mut self.stream, &mut socket, commit_by).await;
        let (restored, page_bytes) = match relayed {
            Ok(r) => r,
            Err(e) => return Err(self.settle(e, socket, dump_exit, heard).await),
        };
        drop(socket);
        // The relay ended because the page server closed its socket: the dump is over.
        match dump_exit.await.map_err(join_error)? {
            Ok(_) => {}
            Err(e) => {
                // The target said every page arrived, yet the dump failed: CRIU thawed the
                // task here while the target runs its copy. Say so; it should not happen.
                return Err(LiveError::Target {
                    reason: format!("the target holds every page but the source's dump failed ({e}); the task may now run in both places"),
                });
            }
        }
        let Restored {
            pid,
            rebuild,
            restore,
            at,
        } = restored;
        let stats = RoundStats {
            round: tracked_rounds + 1,
            last: true,
            dumped_bytes: sent.scanned.dumped_bytes + last.pages * 4096,
            delta_bytes: sent.scanned.delta_bytes + last.pages * 4096,
            wire_bytes: sent.wire + last.wire,
            wire_by_level: sent.by_level,
            dump: dump_time,
            dump_attempts: attempts,
            frozen: None,
            transfer: at.saturating_duration_since(dump_end),
            round_time: at - started,
            progress: None,
        };
        on_round(&stats);
        let _ = std::fs::remove_dir_all(&self.opts.work_dir);
        Ok(Migrated {
            target_pid: pid,
            downtime: at - started,
            rebuild,
            restore,
            total: start.elapsed(),
            wire_bytes: self.wire + page_bytes,
            predictor: self.opts.predictor.clone(),
            forecast: None,
            final_dump_end: dump_end,
            post_copy: Some(PostCopyStats {
                page_bytes,
                pages_done: at.elapsed(),
                final_round,
                final_pages: last.pages,
                final_inline: last.inline,
                images,
            }),
            rounds: {
                rounds.push(stats);
                rounds
            },
            last_heard: heard,
        })
    }

    /// Gives up a post-copy migration whose dump is waiting for or serving the target: fails
    /// the page server's transfer, so CRIU thaws the task here, and tells the target.
    async fn thaw(
        &mut self,
        cause: LiveError,
        socket: &mut PageConn,
        dump_exit: DumpExit,
    ) -> LiveError {
        self.abort(&cause.to_string()).await;
        thaw_frozen(socket, dump_exit, cause, self.round_dir(1)).await
    }

    /// A failure after the images went, when the target may have restored its copy: thawed at
    /// once when the target said it failed (it killed its copy) or the caller wants that
    /// ([`InDoubt::RestoreHere`]); else the frozen task is handed back for the caller to settle
    /// the target first ([`LiveError::FrozenInDoubt`]).
    async fn settle(
        &mut self,
        cause: LiveError,
        mut socket: PageConn,
        dump_exit: DumpExit,
        last_heard: Instant,
    ) -> LiveError {
        if matches!(cause, LiveError::Target { .. }) || self.opts.in_doubt == InDoubt::RestoreHere {
            return self.thaw(cause, &mut socket, dump_exit).await;
        }
        LiveError::FrozenInDoubt {
            cause: Box::new(cause),
            frozen: FrozenTask {
                socket,
                dump_exit,
                images: self.round_dir(1),
            },
            last_heard,
        }
    }
}

/// The `criu dump --lazy-pages` under way: its exit once the page server ends.
type DumpExit = tokio::task::JoinHandle<Result<Duration, CriuError>>;

/// A task frozen by a post-copy's lazy dump whose page server still waits: after a failure in
/// doubt, the caller makes sure the target runs no copy, then [`FrozenTask::thaw`]s it.
pub struct FrozenTask {
    socket: PageConn,
    dump_exit: DumpExit,
    images: PathBuf,
}

impl std::fmt::Debug for FrozenTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenTask")
            .field("images", &self.images)
            .finish_non_exhaustive()
    }
}

impl FrozenTask {
    /// Fails the page server's transfer, so CRIU thaws the task where it was frozen:
    /// [`LiveError::Thawed`] with `cause`, or [`LiveError::Lost`] if the dump had ended.
    pub async fn thaw(mut self, cause: LiveError) -> LiveError {
        thaw_frozen(&mut self.socket, self.dump_exit, cause, self.images).await
    }
}

/// Fails the transfer of the page server behind `socket` and waits for the dump's end.
async fn thaw_frozen(
    socket: &mut PageConn,
    dump_exit: DumpExit,
    cause: LiveError,
    images: PathBuf,
) -> LiveError {
    let mut request = Vec::new();
    let _ = abort_page_server(&mut request);
    let _ = socket.write_all(&request).await;
    // The server may be in the middle of an answer nobody relays any more: read and drop
    // it, so it gets to the request that fails it.
    let drain = async {
        let mut buf = vec![0u8; PAGES_FRAME];
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let ((), thawed) = tokio::join!(drain, dump_exit);
    match thawed {
        Ok(Err(_)) => LiveError::Thawed {
            cause: Box::new(cause),
        },
        // The dump finished (the page server was closed before the failure) or its thread
        // died: either way the task is not running here any more.
        Ok(Ok(_)) => LiveError::Lost {
            cause: Box::new(cause),
            restore: "the page transfer had completed, so CRIU ended the task here".into(),
            images,
        },
        Err(e) => LiveError::Lost {
            cause: Box::new(cause),
            restore: format!("the thread waiting for criu dump died: {e}"),
            images,
        },
    }
}

/// A lazy dump of task `pid` into `images` (`ready`: started and waited for until it is
/// ready), tried again while it fails only because the task held a transient connection (like
/// pre-copy's dumps).
fn lazy_dump_retrying(
    pid: u32,
    images: &std::path::Path,
    mut ready: impl FnMut() -> Result<(LazyDump, PageSocket), CheckpointError>,
) -> Result<(LazyDump, PageSocket, u32), CheckpointError> {
    let mut attempt = 1;
    loop {
        let _ = std::fs::remove_dir_all(images);
        match ready() {
            Err(e) if attempt < DUMP_ATTEMPTS && e.transient() => {
                attempt += 1;
                settle_before_retry(pid);
            }
            r => return r.map(|(d, s)| (d, s, attempt)),
        }
    }
}

/// What the target said when the task ran there.
struct Restored {
    pid: u32,
    rebuild: Duration,
    restore: Duration,
    at: Instant,
}

/// The source's relay: page-server bytes to the target, the target's bytes to the page server,
/// until the target has every page; then it closes the page server itself, which ends the
/// task here (the commit point: before it, a failure leaves the task frozen here). A
/// `PagesDone` after `commit_by` is refused (the target's lease may have run out). Returns the
/// restore and the page bytes sent.
async fn relay_source<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    socket: &mut PageConn,
    commit_by: Option<Instant>,
) -> Result<(Restored, u64), LiveError> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (mut sock_rd, mut sock_wr) = tokio::io::split(socket);
    // Set once the source closed the page server: what it says after is its answer to that
    // close (and answers to prefetches the target no longer needs), for nobody.
    let closed = std::sync::atomic::AtomicBool::new(false);
    let up = async {
        let mut buf = vec![0u8; PAGES_FRAME];
        let mut sent = 0u64;
        loop {
            let n = sock_rd
                .read(&mut buf)
                .await
                .map_err(|e| LiveError::Worker(format!("reading the page server: {e}")))?;
            if n == 0 {
                return Ok::<u64, LiveError>(sent);
            }
            if closed.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            let m = Message::Pages {
                data: buf[..n].to_vec(),
            };
            write_message(&mut wr, &m).await.map_err(LiveError::Link)?;
            wr.flush().await.map_err(LiveError::Link)?;
            sent += n as u64 + 9;
        }
    };
    let down = async {
        let mut restored = None;
        loop {
            match read_message(&mut rd).await? {
                Message::Pages { data } => sock_wr
                    .write_all(&data)
                    .await
                    .map_err(|e| LiveError::Worker(format!("writing the page server: {e}")))?,
                Message::Restored {
                    pid,
                    rebuild_us,
                    restore_us,
                } => {
                    restored = Some(Restored {
                        pid,
                        rebuild: Duration::from_micros(rebuild_us),
                        restore: Duration::from_micros(restore_us),
                        at: Instant::now(),
                    })
                }
                Message::PagesDone => {
                    let restored = restored.ok_or_else(|| LiveError::Unexpected {
                        expected: "restored before pages-done",
                        got: "pages-done".into(),
                    })?;
                    if let Some(by) = commit_by.filter(|by| Instant::now() > *by) {
                        let late = by.elapsed();
                        return Err(LiveError::Link(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the target held every page {late:?} past the time it could be given the task"),
                        )));
                    }
                    closed.store(true, std::sync::atomic::Ordering::Relaxed);
                    // Then the end of our side: a page server on TCP (runc's) waits for
                    // it after answering the close, before it ends the dump.
                    let close = async {
                        sock_wr.write_all(&close_request()).await?;
                        sock_wr.shutdown().await
                    };
                    close
                        .await
                        .map_err(|e| LiveError::Worker(format!("closing the page server: {e}")))?;
                    return Ok(restored);
                }
                Message::Failed { reason } => return Err(LiveError::Target { reason }),
                other => {
                    return Err(LiveError::Unexpected {
                        expected: "pages, restored or pages-done",
                        got: format!("{other:?}"),
                    })
                }
            }
        }
    };
    // Both directions must finish: the target says pages-done once its daemon has every page,
    // and the page server closes its socket after answering the close that follows.
    let (sent, restored) = tokio::try_join!(up, down)?;
    Ok((restored, sent))
}

/// The target's post-copy after the images are staged: starts the lazy-pages daemon, restores
/// the task while relaying the daemon's conversation with the source's page server, and returns
/// once every page is here. On failure the restored task, if any, is killed before the daemon's
/// socket closes (a task whose daemon is gone would read zeros where its pages were missing).
pub(super) async fn post_copy_in<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    opts: &TargetOptions,
    staged: Staged,
) -> Result<(u32, Duration), LiveError> {
    let dir = opts.staging_dir.clone();
    let log = sibling(&dir, "lazy-pages.log");
    let criu = opts.criu.clone();
    let (daemon, socket) = tokio::task::spawn_blocking(move || criu.start_lazy_pages(&dir, &log))
        .await
        .map_err(join_error)??;
    let mut socket = tokio_socket(PageSocket::Unix(socket))?;
    let slot: Arc<Mutex<RestoreSlot>> = Arc::new(Mutex::new(RestoreSlot::Pending));
    let result = relay_target(stream, &mut socket, opts, daemon, staged, slot.clone()).await;
    if result.is_err() {
        kill_restored(&slot).await;
    }
    drop(socket);
    result
}

/// What the target holds of a post-copy once its images are staged.
pub(super) struct Staged {
    /// How long rebuilding the images took.
    pub rebuild: Duration,
    /// The pages tracked rounds sent before the freeze.
    pub replica: Replica,
    /// The task's pid on the source.
    pub dumped_pid: u32,
}

/// Where the target's restore is, for the failure path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RestoreSlot {
    Pending,
    Done(Option<u32>),
}

/// Kills the restored task, waiting for a restore still under way first (bounded).
async fn kill_restored(slot: &Arc<Mutex<RestoreSlot>>) {
    let waited = Instant::now();
    loop {
        let state = slot.lock().map(|s| *s).unwrap_or(RestoreSlot::Done(None));
        match state {
            RestoreSlot::Done(Some(pid)) => {
                // SAFETY: kill(2) has no memory effects.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
                return;
            }
            RestoreSlot::Done(None) => return,
            RestoreSlot::Pending if waited.elapsed() > RESTORE_WAIT => return,
            RestoreSlot::Pending => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn relay_target<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    socket: &mut PageConn,
    opts: &TargetOptions,
    daemon: crate::lazy::LazyPages,
    staged: Staged,
    slot: Arc<Mutex<RestoreSlot>>,
) -> Result<(u32, Duration), LiveError> {
    let Staged {
        rebuild,
        replica,
        dumped_pid,
    } = staged;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (mut sock_rd, mut sock_wr) = tokio::io::split(socket);
    // Unbounded: the proxy's output is sent while it is locked, so both directions' bytes
    // leave in the order the proxy made them; what waits here is bounded by the proxy (the
    // daemon's requests, the prefetch window and one answer).
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let (to_daemon, mut daemon_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    // Read before the restore: the daemon only asks for what the task faults on first.
    let lazy = pagemap::lazy_ranges(&opts.staging_dir);
    let proxy = Mutex::new(
        PageProxy::new(opts.page_request_cap, opts.prefetch_window)
            .with_replica(replica)
            .with_lazy_ranges(lazy),
    );
    let mut ro = RestoreOptions::new(&opts.staging_dir).network_lock(opts.network_lock);
    ro.lazy_pages = true;
    ro.log_file = Some(sibling(&opts.staging_dir, "restore.log"));
    ro.pidfile = Some(sibling(&opts.staging_dir, "restore.pid"));
    ro.inherit_fds = opts.inherit_fds.clone();
    ro.root = opts.root.clone();
    let criu = opts.criu.clone();
    // The caller's restorer (a node's fence and lease) guards the lazy restore as its own; a
    // container restorer runs it itself (runc runs criu).
    let guard = opts.restorer.clone();
    let images = opts.staging_dir.clone();
    let life = {
        let tx = tx.clone();
        async move {
            let restored = tokio::task::spawn_blocking(move || {
                let mut lazy = || -> Result<Revived, CheckpointError> {
                    let r = criu.restore(&ro)?;
                    Ok(Revived {
                        pid: r.pid,
                        elapsed: r.elapsed,
                    })
                };
                let r = match &guard {
                    Some(g) if g.restores_lazily() => g.restore_lazy(&images, dumped_pid),
                    Some(g) => g.guard_lazy(&mut lazy),
                    None => lazy(),
                };
                if let Ok(mut s) = slot.lock() {
                    *s = RestoreSlot::Done(r.as_ref().ok().map(|r| r.pid));
                }
                r
            })
            .await
            .map_err(join_error)??;
            let m = Message::Restored {
                pid: restored.pid,
                rebuild_us: rebuild.as_micros() as u64,
                restore_us: restored.elapsed.as_micros() as u64,
            };
            tx.send(m)
                .map_err(|_| LiveError::Worker("the relay's writer stopped".into()))?;
            tokio::task::spawn_blocking(move || daemon.wait())
                .await
                .map_err(join_error)??;
            tx.send(Message::PagesDone)
                .map_err(|_| LiveError::Worker("the relay's writer stopped".into()))?;
            Ok::<_, LiveError>((restored.pid, restored.elapsed))
        }
    };
    // Feeds the proxy and sends what it made, under its lock (see the channels above).
    let feed = |from_daemon: bool, bytes: &[u8]| -> Result<(), LiveError> {
        let mut p = proxy
            .lock()
            .map_err(|_| LiveError::Worker("the page proxy's lock is poisoned".into()))?;
        let fed = if from_daemon {
            p.from_daemon(bytes)
        } else {
            p.from_source(bytes)
        };
        let Out {
            to_source,
            to_daemon: for_daemon,
        } = fed.map_err(|e| LiveError::Worker(format!("post-copy page relay: {e}")))?;
        if !to_source.is_empty() {
            tx.send(Message::Pages { data: to_source })
                .map_err(|_| LiveError::Worker("the relay's writer stopped".into()))?;
        }
        if !for_daemon.is_empty() {
            to_daemon
                .send(for_daemon)
                .map_err(|_| LiveError::Worker("the daemon's writer stopped".into()))?;
        }
        Ok(())
    };
    let up = async {
        let mut buf = vec![0u8; PAGES_FRAME];
        loop {
            let n = sock_rd
                .read(&mut buf)
                .await
                .map_err(|e| LiveError::Worker(format!("reading the lazy-pages daemon: {e}")))?;
            if n == 0 {
                return Ok::<(), LiveError>(());
            }
            feed(true, &buf[..n])?;
        }
    };
    let writer = async {
        while let Some(m) = rx.recv().await {
            let last = matches!(m, Message::PagesDone);
            write_message(&mut wr, &m).await.map_err(LiveError::Link)?;
            wr.flush().await.map_err(LiveError::Link)?;
            if last {
                break;
            }
        }
        Ok::<(), LiveError>(())
    };
    let down = async {
        loop {
            match read_message(&mut rd).await? {
                Message::Pages { data } => feed(false, &data)?,
                Message::Abort { reason } => {
                    return Err::<(), LiveError>(LiveError::SourceAborted { reason })
                }
                other => {
                    return Err(LiveError::Unexpected {
                        expected: "pages or abort",
                        got: format!("{other:?}"),
                    })
                }
            }
        }
    };
    let daemon_writer = async {
        while let Some(bytes) = daemon_rx.recv().await {
            sock_wr
                .write_all(&bytes)
                .await
                .map_err(|e| LiveError::Worker(format!("writing the lazy-pages daemon: {e}")))?;
        }
        Ok::<(), LiveError>(())
    };
    tokio::select! {
        r = async { tokio::try_join!(life, up, writer) } => r.map(|(l, (), ())| l),
        r = async { tokio::try_join!(down, daemon_writer) } => match r {
            Err(e) => Err(e),
            Ok(((), ())) => Err(LiveError::Worker("the page relay stopped".into())),
        },
    }
}
