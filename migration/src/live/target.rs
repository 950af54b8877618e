//! The target of a live migration: receives chunks, rebuilds each round's image files in place
//! in a staging directory, and restores the task after the last round.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::chunks::{ChunkError, ChunkRef, Digest, Recipe, CHUNK_SIZE};
use crate::compress::{decompress, Level};
use crate::criu::{Criu, NetworkLock, RestoreOptions};

use super::recipe;
use super::wire::{read_message, write_message, FileRecipe, Message, Mode, VERSION};
use super::{files_error, LiveError};

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
}

impl TargetOptions {
    pub fn new(staging_dir: impl Into<PathBuf>) -> Self {
        TargetOptions {
            staging_dir: staging_dir.into(),
            criu: Criu::new(),
            network_lock: NetworkLock::default(),
            pid_wait: Duration::from_secs(10),
        }
    }
}

/// A task received and running here.
#[derive(Clone, Debug)]
pub struct Received {
    pub pid: u32,
    pub mode: Mode,
    pub rounds: u32,
    /// Chunks received (after dedup on the source).
    pub chunks: u64,
    /// Rebuilding the last round's files.
    pub rebuild: Duration,
    /// `criu restore`.
    pub restore: Duration,
}

enum Job {
    Chunks {
        level: Level,
        refs: Vec<ChunkRef>,
        payload: Vec<u8>,
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
}

/// Receives a task from the source at the other end of `stream` and restores it here. On any
/// failure the target tells the source (which then keeps or restores its task) and removes
/// what it staged.
pub async fn migrate_in<S>(mut stream: S, opts: TargetOptions) -> Result<Received, LiveError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let result = receive(&mut stream, &opts).await;
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
    let stage = Stage {
        dir: opts.staging_dir.clone(),
        store: HashMap::new(),
        prev: HashMap::new(),
        error: None,
        chunks: 0,
        criu: opts.criu.clone(),
        network_lock: opts.network_lock,
        pid_wait: opts.pid_wait,
    };
    let worker = std::thread::Builder::new()
        .name("brume-migrate-in".into())
        .spawn(move || stage.run(rx))
        .map_err(|e| LiveError::Worker(e.to_string()))?;
    let result = async {
        loop {
            match read_message(stream).await? {
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
                    let (reply, answer) = oneshot::channel();
                    tx.send(Job::Round {
                        files,
                        restore_pid: last.then_some(pid),
                        reply,
                    })
                    .await
                    .map_err(|_| LiveError::Worker("the staging thread stopped".into()))?;
                    let applied = answer
                        .await
                        .map_err(|_| LiveError::Worker("the staging thread stopped".into()))??;
                    if let Some((pid, restore)) = applied.restored {
                        let m = Message::Restored {
                            pid,
                            rebuild_us: applied.rebuild.as_micros() as u64,
                            restore_us: restore.as_micros() as u64,
                        };
                        write_message(stream, &m).await.map_err(LiveError::Link)?;
                        stream.flush().await.map_err(LiveError::Link)?;
                        return Ok(Received {
                            pid,
                            mode,
                            rounds: round,
                            chunks: applied.chunks,
                            rebuild: applied.rebuild,
                            restore,
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
                        expected: "chunks, round-end or abort",
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
    prev: HashMap<String, Recipe>,
    /// The first failure while storing chunks, reported at the round's end.
    error: Option<LiveError>,
    chunks: u64,
    criu: Criu,
    network_lock: NetworkLock,
    pid_wait: Duration,
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
        Criu::wait_pid_gone(pid, self.pid_wait)?;
        let mut ro = RestoreOptions::new(&self.dir).network_lock(self.network_lock);
        ro.log_file = Some(sibling(&self.dir, "restore.log"));
        ro.pidfile = Some(sibling(&self.dir, "restore.pid"));
        let r = self.criu.restore(&ro)?;
        Ok((r.pid, r.elapsed))
    }
}

/// `<dir>.<suffix>`, beside the staging directory so the images stay exactly as sent.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
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
