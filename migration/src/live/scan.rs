//! The source's blocking stage: read a round's image files, cut them into chunks, hash them,
//! keep the ones the target lacks and compress them in batches, handing each batch to the async
//! sender as soon as it is ready, so hashing and compressing overlap with sending.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::chunks::{ChunkRef, ChunkSet, Digest, Recipe, CHUNK_SIZE};
use crate::compress::{compress, Chooser, Level, Sample};

use super::{files_error, LiveError};

/// Chunks per compressed batch (1 MiB of input): large enough for zstd to find its ratio,
/// small enough that the first bytes leave quickly.
pub const BATCH_CHUNKS: usize = 256;

/// Where the compression level comes from.
#[derive(Clone)]
pub enum LevelPick {
    Fixed(Level),
    /// The shared chooser and the migration's start (the chooser's clock).
    Adaptive(Arc<Mutex<Chooser>>, Instant),
}

impl LevelPick {
    fn level(&self) -> Level {
        match self {
            LevelPick::Fixed(l) => *l,
            LevelPick::Adaptive(c, start) => match c.lock() {
                Ok(mut c) => {
                    c.tick(start.elapsed());
                    c.level()
                }
                Err(_) => Level::Zstd1,
            },
        }
    }

    fn record(&self, s: Sample) {
        if let LevelPick::Adaptive(c, start) = self {
            if let Ok(mut c) = c.lock() {
                c.record(s, start.elapsed());
            }
        }
    }
}

/// One compressed batch of new chunks.
pub struct Batch {
    pub level: Level,
    pub refs: Vec<ChunkRef>,
    pub payload: Vec<u8>,
    /// Uncompressed bytes in it.
    pub raw_bytes: u64,
}

/// What a scan found.
pub struct Scanned {
    /// Every image file, by name, with its recipe.
    pub files: Vec<(String, Recipe)>,
    /// Total bytes of the files.
    pub dumped_bytes: u64,
    /// Bytes of chunks sent (the delta).
    pub delta_bytes: u64,
    /// Time spent hashing and compressing.
    pub busy: Duration,
}

/// Every regular file of `dir`, sorted by name.
fn image_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, LiveError> {
    let mut names: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map_err(files_error("read the images directory", dir))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    names.sort();
    Ok(names)
}

/// The recipe of every file of `dir` (what [`scan`] would find), without sending anything: the
/// source hashes round 1 ahead to ask the target's store what it holds, and hands the result
/// to [`scan`] so nothing is hashed twice.
pub fn hash_dir(dir: &Path) -> Result<HashMap<String, Recipe>, LiveError> {
    let mut out = HashMap::new();
    for (name, path) in image_files(dir)? {
        let bytes = std::fs::read(&path).map_err(files_error("read image file", &path))?;
        out.insert(name, Recipe::of(&bytes));
    }
    Ok(out)
}

/// Reads every regular file of `dir` (sorted by name), and sends the chunks that `known` lacks
/// (each once) through `tx`; with `dedup` off, every chunk is sent, repeats too (a plain copy).
/// `hashed` holds recipes already computed for some files (by [`hash_dir`]); a file whose
/// length no longer matches is hashed again. Stops early if the receiver is gone.
pub fn scan(
    dir: &Path,
    known: &ChunkSet,
    dedup: bool,
    hashed: &HashMap<String, Recipe>,
    pick: &LevelPick,
    tx: &mpsc::Sender<Batch>,
) -> Result<Scanned, LiveError> {
    let names = image_files(dir)?;
    let mut out = Scanned {
        files: Vec::with_capacity(names.len()),
        dumped_bytes: 0,
        delta_bytes: 0,
        busy: Duration::ZERO,
    };
    let mut sent: HashSet<Digest> = HashSet::new();
    let mut pending: Vec<(ChunkRef, usize, usize)> = Vec::new();
    let mut pending_raw: Vec<u8> = Vec::with_capacity(BATCH_CHUNKS * CHUNK_SIZE);
    for (name, path) in names {
        let bytes = std::fs::read(&path).map_err(files_error("read image file", &path))?;
        let started = Instant::now();
        let pre = hashed
            .get(&name)
            .filter(|r| r.len == bytes.len() as u64)
            .map(|r| r.chunks.as_slice());
        let mut recipe = Recipe {
            len: bytes.len() as u64,
            chunks: Vec::with_capacity(bytes.len().div_ceil(CHUNK_SIZE)),
        };
        for (i, data) in bytes.chunks(CHUNK_SIZE).enumerate() {
            let r = match pre.and_then(|p| p.get(i)) {
                Some(r) => *r,
                None => ChunkRef {
                    digest: Digest::of(data),
                    len: data.len() as u32,
                },
            };
            recipe.chunks.push(r);
            let new = !dedup || (!known.contains(&r.digest) && sent.insert(r.digest));
            if new {
                out.delta_bytes += data.len() as u64;
                pending.push((r, pending_raw.len(), data.len()));
                pending_raw.extend_from_slice(data);
                if pending.len() >= BATCH_CHUNKS {
                    out.busy += started.elapsed();
                    if !flush(&mut pending, &mut pending_raw, pick, tx, &mut out.busy)? {
                        return Ok(out);
                    }
                }
            }
        }
        out.busy += started.elapsed();
        out.dumped_bytes += recipe.len;
        out.files.push((name, recipe));
    }
    flush(&mut pending, &mut pending_raw, pick, tx, &mut out.busy)?;
    Ok(out)
}

/// Compresses and sends the pending chunks; false if the receiver is gone.
fn flush(
    pending: &mut Vec<(ChunkRef, usize, usize)>,
    raw: &mut Vec<u8>,
    pick: &LevelPick,
    tx: &mpsc::Sender<Batch>,
    busy: &mut Duration,
) -> Result<bool, LiveError> {
    if pending.is_empty() {
        return Ok(true);
    }
    let level = pick.level();
    let started = Instant::now();
    let payload = compress(level, raw)?;
    let cpu = started.elapsed();
    *busy += cpu;
    pick.record(Sample {
        level,
        bytes_in: raw.len() as u64,
        bytes_out: payload.len() as u64,
        cpu,
    });
    let batch = Batch {
        level,
        refs: pending.drain(..).map(|(r, _, _)| r).collect(),
        payload,
        raw_bytes: raw.len() as u64,
    };
    raw.clear();
    Ok(tx.blocking_send(batch).is_ok())
}
