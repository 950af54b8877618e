//! The target of a live migration: receives chunks, rebuilds each round's image files in place
//! in a staging directory, and restores the task after the last round.
//!
//! With a chunk store ([`TargetOptions::store`], pre-copy only) it also answers the source's
//! round-1 query with the chunks the store holds (read, checked and kept with the received ones,
//! so the rebuild does not care where a chunk came from), and once the task runs and the source
//! has its `Restored`, keeps the final memory images in the store from a thread of its own.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::checkpointer::{CheckpointError, Restorer};
use crate::chunks::{ChunkError, ChunkRef, Digest, Recipe, CHUNK_SIZE};
use crate::compress::{decompress, Level};

use super::options::TargetOptions;
use super::recipe;
use super::replica::Replica;
use super::store::ChunkStore;
use super::wire::{read_message, to_bitmap, write_message, FileRecipe, Message, Mode, VERSION};
use super::{files_error, remove_siblings, sibling, LiveError};

/// A task received and running here.
#[derive(Clone, Debug)]
pub struct Received {
    pub pid: u32,
    pub mode: Mode,
    pub rounds: u32,
    /// Chunks received (after dedup on the source).
    pub chunks: u64,
    /// Chunks taken from the node's chunk store instead (round 1 of a pre-copy).
    pub from_store: u64,
    /// Rebuilding the last round's files.
    pub rebuild: Duration,
    /// `criu restore`.
    pub restore: Duration,
    /// Whether the source was sent `Restored`. When not (the link broke right after the
    /// restore), the task runs here all the same and the caller decides its fate: the source
    /// does not know, so it must not be kept unless the source later says it gave its copy up.
    pub told: bool,
}

enum Job {
    Chunks {
        level: Level,
        refs: Vec<ChunkRef>,
        payload: Vec<u8>,
    },
    /// Which of these does the chunk store hold? Those it does are loaded; the answer is the
    /// [`Message::Holding`] bitmap.
    Query {
        digests: Vec<Digest>,
        reply: oneshot::Sender<Vec<u8>>,
    },
    Round {
        files: Vec<FileRecipe>,
        restore_pid: Option<u32>,
        reply: oneshot::Sender<Result<Applied, LiveError>>,
    },
}

struct Applied {
    rebuild: Duration,
    restored: Option<(u32, Duration)>,
    chunks: u64,
    from_store: u64,
}

/// Receives a task from the source at the other end of `stream` and restores it here. On any
/// failure the target tells the source (which then keeps or restores its task) and removes
/// what it staged.
pub async fn migrate_in<S>(mut stream: S, opts: TargetOptions) -> Result<Received, LiveError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let result = receive(&mut stream, &opts).await;
    if result.is_ok() {
        remove_siblings(&opts.staging_dir);
    }
    // After a pre-copy (or stop-and-copy) the staged files are the task's final images: keep
    // its memory in the store, off the downtime (the source has its Restored already), then
    // drop them.
    if let (Ok(r), Some(store)) = (&result, &opts.store) {
        if r.mode != Mode::PostCopy {
            let guard = store.begin_insert();
            let (store, dir) = (store.clone(), opts.staging_dir.clone());
            let spawned = std::thread::Builder::new()
                .name("brume-chunk-store".into())
                .spawn(move || {
                    let _ = store.insert_dir(&dir);
                    let _ = std::fs::remove_dir_all(&dir);
                    drop(guard);
                });
            if spawned.is_ok() {
                return result;
            }
        }
    }
    if let Err(e) = &result {
        if !matches!(e, LiveError::Link(_) | LiveError::SourceAborted { .. }) {
            let m = Message::Failed {
                reason: e.to_string(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = write_message(&mut stream, &m).await;
                let _ = stream.flush().await;
            })
            .await;
        }
    }
    let _ = std::fs::remove_dir_all(&opts.staging_dir);
    result
}

async fn receive<S>(stream: &mut S, opts: &TargetOptions) -> Result<Received, LiveError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mode, pid) = match read_message(stream).await? {
        Message::Hello {
            version, mode, pid, ..
        } => {
            if version != VERSION {
                return Err(LiveError::Version(version));
            }
            // Post-copy restores lazily: with CRIU itself in place of a process restorer (its
            // guards wrap the lazy restore: `Restorer::guard_lazy`), or through a container
            // restorer that does it (`Restorer::restore_lazy`).
            let lazy_ok = opts
                .restorer
                .as_ref()
                .is_none_or(|r| r.restores_a_process() || r.restores_lazily());
            if mode == Mode::PostCopy && !lazy_ok {
                return Err(CheckpointError::Unsupported(
                    "this target cannot restore a post-copy's lazy images with its restorer".into(),
                )
                .into());
            }
            (mode, pid)
        }
        other => {
            return Err(LiveError::Unexpected {
                expected: "hello",
                got: format!("{other:?}"),
            })
        }
    };
    std::fs::create_dir_all(&opts.staging_dir).map_err(files_error(
        "create the staging directory",
        &opts.staging_dir,
    ))?;
    let (tx, rx) = mpsc::channel::<Job>(8);
    let disk = opts.store.clone().filter(|_| mode == Mode::PreCopy);
    let welcome = Message::Welcome {
        store_chunks: disk.as_ref().map_or(0, |s| s.chunks() as u64),
    };
    let stage = Stage {
        dir: opts.staging_dir.clone(),
        store: HashMap::new(),
        disk,
        from_store: 0,
        prev: HashMap::new(),
        error: None,
        chunks: 0,
        restorer: opts.restorer(),
    };
    let worker = std::thread::Builder::new()
        .name("brume-migrate-in".into())
        .spawn(move || stage.run(rx))
        .map_err(|e| LiveError::Worker(e.to_string()))?;
    let result = async {
        write_message(stream, &welcome)
            .await
            .map_err(LiveError::Link)?;
        stream.flush().await.map_err(LiveError::Link)?;
        // One query, in round 1: each loads up to the whole store into memory.
        let mut queried = false;
        // Post-copy with tracking: the pages of the tracked rounds, for the page proxy.
        let mut replica = Some(Replica::default());
        loop {
            match read_message(stream).await? {
                Message::Tracked {
                    pid: task,
                    level,
                    runs,
                    payload,
                } if mode == Mode::PostCopy => {
                    let bytes: usize = runs.iter().map(|r| r.1 as usize * 4096).sum();
                    let data = decompress(level, &payload, bytes)?;
                    replica
                        .as_mut()
                        .ok_or_else(|| LiveError::Unexpected {
                            expected: "no tracked pages after the last round",
                            got: "tracked pages".into(),
                        })?
                        .insert(u64::from(task), &runs, &data)?;
                }
                Message::Stale { pid: task, runs } if mode == Mode::PostCopy => {
                    // Written after the copies held here: the page server sends them.
                    let replica = replica.as_mut().ok_or_else(|| LiveError::Unexpected {
                        expected: "no stale pages after the last round",
                        got: "stale pages".into(),
                    })?;
                    for (start, pages) in runs {
                        replica.forget(u64::from(task), start, u64::from(pages));
                    }
                }
                Message::TrackedEnd { round } if mode == Mode::PostCopy => {
                    let held = replica.as_ref().map_or(0, |r| r.len() as u64);
                    let m = Message::Ack {
                        round,
                        chunks: held,
                    };
                    write_message(stream, &m).await.map_err(LiveError::Link)?;
                    stream.flush().await.map_err(LiveError::Link)?;
                }
                Message::Query { .. } if queried || mode != Mode::PreCopy => {
                    return Err(LiveError::Unexpected {
                        expected: "one store query, in round 1 of a pre-copy",
                        got: "another".into(),
                    })
                }
                Message::Query { digests } => {
                    queried = true;
                    let (reply, answer) = oneshot::channel();
                    tx.send(Job::Query { digests, reply })
                        .await
                        .map_err(|_| LiveError::Worker("the staging thread stopped".into()))?;
                    let bitmap = answer
                        .await
                        .map_err(|_| LiveError::Worker("the staging thread stopped".into()))?;
                    write_message(stream, &Message::Holding { bitmap })
                        .await
                        .map_err(LiveError::Link)?;
                    stream.flush().await.map_err(LiveError::Link)?;
                }
                Message::Chunks {
                    level,
                    refs,
                    payload,
                } => {
                    tx.send(Job::Chunks {
                        level,
                        refs,
                        payload,
                    })
                    .await
                    .map_err(|_| LiveError::Worker("the staging thread stopped".into()))?;
                }
                Message::RoundEnd { round, last, files } => {
                    queried = true;
                    let (reply, answer) = oneshot::channel();
                    let post_copy = last && mode == Mode::PostCopy;
                    tx.send(Job::Round {
                        files,
                        restore_pid: (last && !post_copy).then_some(pid),
                        reply,
                    })
                    .await
                    .map_err(|_| LiveError::Worker("the staging thread stopped".into()))?;
                    let applied = answer
                        .await
                        .map_err(|_| LiveError::Worker("the staging thread stopped".into()))??;
                    // Post-copy's restore runs while its pages are relayed, and says Restored
                    // itself; pre-copy's ran on the staging thread and is reported here.
                    let restored = if post_copy {
                        let replica = replica.take().unwrap_or_default();
                        let staged = super::postcopy::Staged {
                            rebuild: applied.rebuild,
                            replica,
                            dumped_pid: pid,
                        };
                        let r = super::postcopy::post_copy_in(stream, opts, staged).await?;
                        Some((r.0, r.1, true))
                    } else if let Some((pid, restore)) = applied.restored {
                        let m = Message::Restored {
                            pid,
                            rebuild_us: applied.rebuild.as_micros() as u64,
                            restore_us: restore.as_micros() as u64,
                        };
                        // A task that runs is never forgotten: a failed send is the caller's
                        // to settle (`told`), not an error that would lose its pid.
                        let told = async {
                            write_message(stream, &m).await?;
                            stream.flush().await
                        }
                        .await
                        .is_ok();
                        Some((pid, restore, told))
                    } else {
                        None
                    };
                    if let Some((pid, restore, told)) = restored {
                        return Ok(Received {
                            pid,
                            mode,
                            rounds: round,
                            chunks: applied.chunks,
                            from_store: applied.from_store,
                            rebuild: applied.rebuild,
                            restore,
                            told,
                        });
                    }
                    let m = Message::Ack {
                        round,
                        chunks: applied.chunks,
                    };
                    write_message(stream, &m).await.map_err(LiveError::Link)?;
                    stream.flush().await.map_err(LiveError::Link)?;
                }
                Message::Abort { reason } => return Err(LiveError::SourceAborted { reason }),
                other => {
                    return Err(LiveError::Unexpected {
                        expected: "chunks, query, tracked pages, round-end or abort",
                        got: format!("{other:?}"),
                    })
                }
            }
        }
    }
    .await;
    drop(tx);
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    result
}

/// The staging thread's state: chunks by digest and the files as of the last applied round.
struct Stage {
    dir: PathBuf,
    store: HashMap<Digest, Vec<u8>>,
    /// The node's chunk store, if it has one and this is a pre-copy.
    disk: Option<Arc<ChunkStore>>,
    /// Chunks taken from `disk`.
    from_store: u64,
    prev: HashMap<String, Recipe>,
    /// The first failure while storing chunks, reported at the round's end.
    error: Option<LiveError>,
    chunks: u64,
    restorer: Arc<dyn Restorer>,
}

impl Stage {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.blocking_recv() {
            match job {
                Job::Chunks {
                    level,
                    refs,
                    payload,
                } => {
                    if self.error.is_none() {
                        if let Err(e) = self.put(level, &refs, &payload) {
                            self.error = Some(e);
                        }
                    }
                }
                Job::Query { digests, reply } => {
                    let _ = reply.send(self.take_from_store(&digests));
                }
                Job::Round {
                    files,
                    restore_pid,
                    reply,
                } => {
                    let result = match self.error.take() {
                        Some(e) => Err(e),
                        None => self.round(&files, restore_pid),
                    };
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// Decompresses a batch and stores each chunk under its digest, checked.
    fn put(&mut self, level: Level, refs: &[ChunkRef], payload: &[u8]) -> Result<(), LiveError> {
        let raw_len: usize = refs.iter().map(|r| r.len as usize).sum();
        let raw = decompress(level, payload, raw_len)?;
        if raw.len() != raw_len {
            return Err(ChunkError::WrongTotal {
                expected: raw_len as u64,
                actual: raw.len() as u64,
            }
            .into());
        }
        let mut off = 0;
        for r in refs {
            let data = &raw[off..off + r.len as usize];
            off += r.len as usize;
            let actual = Digest::of(data);
            if actual != r.digest {
                return Err(ChunkError::Corrupt {
                    expected: r.digest,
                    actual,
                }
                .into());
            }
            self.store.insert(r.digest, data.to_vec());
            self.chunks += 1;
        }
        Ok(())
    }

    /// Loads the queried chunks the store holds (each checked on read) beside the received
    /// ones; returns the bitmap of those it found.
    fn take_from_store(&mut self, digests: &[Digest]) -> Vec<u8> {
        let Some(disk) = &self.disk else {
            return to_bitmap(&vec![false; digests.len()]);
        };
        let found = disk.get_many(digests);
        let mut bits = Vec::with_capacity(digests.len());
        for (d, data) in digests.iter().zip(found) {
            bits.push(data.is_some());
            if let Some(data) = data {
                self.store.insert(*d, data);
                self.from_store += 1;
            }
        }
        to_bitmap(&bits)
    }

    fn round(
        &mut self,
        files: &[FileRecipe],
        restore_pid: Option<u32>,
    ) -> Result<Applied, LiveError> {
        let started = Instant::now();
        self.apply(files)?;
        let rebuild = started.elapsed();
        let restored = match restore_pid {
            None => None,
            Some(pid) => {
                // The chunks are in the files now; free them before the task needs memory.
                self.store = HashMap::new();
                Some(self.restore(pid)?)
            }
        };
        Ok(Applied {
            rebuild,
            restored,
            chunks: self.chunks,
            from_store: self.from_store,
        })
    }

    /// Rewrites the staged files to this round's recipes: only positions whose chunk changed.
    fn apply(&mut self, files: &[FileRecipe]) -> Result<(), LiveError> {
        let mut next: HashMap<String, Recipe> = HashMap::with_capacity(files.len());
        for f in files {
            check_name(&f.name)?;
            let old = self.prev.get(&f.name);
            let recipe = recipe::apply(&f.name, old, f.len, &f.ops)?;
            let path = self.dir.join(&f.name);
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(old.is_none())
                .open(&path)
                .map_err(files_error("open staged image", &path))?;
            for (i, c) in recipe.chunks.iter().enumerate() {
                if old.and_then(|o| o.chunks.get(i)) == Some(c) {
                    continue;
                }
                let data = self
                    .store
                    .get(&c.digest)
                    .ok_or(ChunkError::Missing { digest: c.digest })?;
                if data.len() != c.len as usize {
                    return Err(ChunkError::WrongLength {
                        digest: c.digest,
                        expected: c.len,
                        actual: data.len(),
                    }
                    .into());
                }
                file.write_all_at(data, (i * CHUNK_SIZE) as u64)
                    .map_err(files_error("write staged image", &path))?;
            }
            file.set_len(recipe.len)
                .map_err(files_error("size staged image", &path))?;
            next.insert(f.name.clone(), recipe);
        }
        for name in self.prev.keys().filter(|n| !next.contains_key(*n)) {
            let path = self.dir.join(name);
            std::fs::remove_file(&path).map_err(files_error("remove staged image", &path))?;
        }
        // Keep exactly the chunks of the files now staged: the source assumes this set.
        let live: HashSet<Digest> = next
            .values()
            .flat_map(|r| r.chunks.iter().map(|c| c.digest))
            .collect();
        self.store.retain(|d, _| live.contains(d));
        self.prev = next;
        Ok(())
    }

    fn restore(&self, pid: u32) -> Result<(u32, Duration), LiveError> {
        let log = sibling(&self.dir, "restore.log");
        let r = self.restorer.restore(&self.dir, pid, &log)?;
        Ok((r.pid, r.elapsed))
    }
}

/// Image names are plain file names: nothing that could leave the staging directory.
fn check_name(name: &str) -> Result<(), LiveError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(LiveError::Unexpected {
            expected: "a plain image file name",
            got: format!("{name:?}"),
        });
    }
    Ok(())
}
