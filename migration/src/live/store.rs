//! A node's store of 4 KiB memory chunks kept from finished migrations, on disk, so that a later
//! migration into the node sends only the pages it does not hold yet.
//!
//! Why: a migration's target otherwise forgets every chunk once the task runs, so the same task
//! moving back, or a replica of a service moving to a node that received another one, ships its
//! whole image again in round 1. After a successful restore the target puts the final memory
//! images (`pages-*.img`) here; before round 1's chunks the source asks which of its digests the
//! store holds ([`super::wire::Message::Query`]) and skips those.
//!
//! Layout: one *pack* file per finished migration, `<seq>.pack` (seq grows; lower is older):
//! its distinct full 4 KiB chunks back to back, then their blake3 digests (32 bytes each), then
//! the count (u64, little-endian) and the magic `BRUMECS1`. The in-memory index maps a digest to
//! the newest pack holding it; opening the store reads only the digest tables, so a 1 GiB store
//! opens without reading its data. Chosen over a file per chunk: a 128 MiB task is 32768 chunks,
//! and one sequential file writes, opens and evicts in one operation.
//!
//! Guarantees: a pack is written under a `tmp-` name and renamed into place only when complete
//! (an interrupted insert leaves a `tmp-` file, removed on the next open); a pack whose shape
//! does not add up is removed on open; and every chunk read is checked against its digest, so
//! a damaged pack (a torn write after a power cut: packs are not fsynced, nothing depends on
//! them being durable) costs a miss, never a wrong byte. A chunk that fails the check leaves
//! the index. Bounded: the packs' total size stays within the cap after each insert, the oldest
//! packs evicted first; a pack whose every chunk a newer one also holds serves nothing and is
//! removed at once (the same task moving back and forth keeps one copy, not one per move).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::chunks::{Digest, CHUNK_SIZE};

/// The last 8 bytes of every pack.
const MAGIC: &[u8; 8] = b"BRUMECS1";
/// Bytes after the chunks per chunk (its digest).
const DIGEST_LEN: u64 = 32;
/// The count and the magic.
const TRAILER: u64 = 16;
/// The store's default bound: 1 GiB of packs.
pub const DEFAULT_CAP: u64 = 1 << 30;

/// Why the store could not be opened or a pack not written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What one insert did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inserted {
    /// Distinct full chunks written into the new pack (0 when nothing was kept).
    pub chunks: u64,
    /// The new pack's size on disk.
    pub bytes: u64,
    /// Packs removed to stay within the cap, or because a newer pack holds all they held.
    pub evicted: u32,
    /// False when the images alone exceed the cap (nothing is written then).
    pub kept: bool,
    pub elapsed: Duration,
}

struct Pack {
    path: PathBuf,
    file: Arc<File>,
    digests: Vec<Digest>,
    bytes: u64,
    /// How many index entries point into this pack.
    live: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Loc {
    pack: u64,
    slot: u32,
}

#[derive(Default)]
struct Inner {
    packs: BTreeMap<u64, Pack>,
    index: HashMap<Digest, Loc>,
    bytes: u64,
    next: u64,
}

impl Inner {
    /// Takes pack `seq` in and indexes it; returns how many older packs that emptied.
    fn add_pack(
        &mut self,
        seq: u64,
        path: PathBuf,
        file: File,
        digests: Vec<Digest>,
        bytes: u64,
    ) -> u32 {
        let pack = Pack {
            path,
            file: Arc::new(file),
            digests,
            bytes,
            live: 0,
        };
        self.packs.insert(seq, pack);
        self.bytes += bytes;
        self.index_pack(seq)
    }

    /// Points every digest of pack `seq` at it (newer packs win), then drops the packs left
    /// serving nothing.
    fn index_pack(&mut self, seq: u64) -> u32 {
        let Some(pack) = self.packs.get(&seq) else {
            return 0;
        };
        let digests = pack.digests.clone();
        let mut live = 0;
        for (slot, d) in digests.into_iter().enumerate() {
            let loc = Loc {
                pack: seq,
                slot: slot as u32,
            };
            match self.index.insert(d, loc) {
                Some(old) if old.pack != seq => {
                    if let Some(p) = self.packs.get_mut(&old.pack) {
                        p.live = p.live.saturating_sub(1);
                    }
                    live += 1;
                }
                Some(_) => {}
                None => live += 1,
            }
        }
        if let Some(p) = self.packs.get_mut(&seq) {
            p.live = live;
        }
        let dead: Vec<u64> = self
            .packs
            .iter()
            .filter(|(s, p)| **s != seq && p.live == 0)
            .map(|(s, _)| *s)
            .collect();
        for s in &dead {
            self.remove(*s);
        }
        dead.len() as u32
    }

    /// Removes pack `seq` from the index and from disk.
    fn remove(&mut self, seq: u64) {
        if let Some(p) = self.packs.remove(&seq) {
            for d in &p.digests {
                if self.index.get(d).is_some_and(|l| l.pack == seq) {
                    self.index.remove(d);
                }
            }
            self.bytes -= p.bytes;
            // Readers holding the file keep reading it: an unlinked file lives while open.
            let _ = std::fs::remove_file(&p.path);
        }
    }

    /// Removes the oldest packs until `extra` more bytes fit under `cap`.
    fn evict_for(&mut self, extra: u64, cap: u64) -> u32 {
        let mut n = 0;
        while self.bytes + extra > cap {
            let Some(&oldest) = self.packs.keys().next() else {
                break;
            };
            self.remove(oldest);
            n += 1;
        }
        n
    }
}

/// The chunk store of one directory; share it (`Arc`) among every migration into the node.
pub struct ChunkStore {
    dir: PathBuf,
    cap: u64,
    inner: Mutex<Inner>,
    /// Inserts under way, for [`ChunkStore::wait_idle`].
    pending: Mutex<usize>,
    idle: Condvar,
}

impl fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkStore")
            .field("dir", &self.dir)
            .field("cap", &self.cap)
            .field("chunks", &self.chunks())
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// Marks an insert under way until dropped (see [`ChunkStore::begin_insert`]).
pub struct InsertGuard(Arc<ChunkStore>);

impl Drop for InsertGuard {
    fn drop(&mut self) {
        let mut n = self.0.pending.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        self.0.idle.notify_all();
    }
}

/// A unique name for a pack being written.
fn tmp_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "tmp-{}-{}-{nanos:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Reads a pack's digest table, if its shape adds up.
fn read_pack(path: &Path) -> io::Result<Option<(File, Vec<Digest>, u64)>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len < TRAILER {
        return Ok(None);
    }
    let mut trailer = [0u8; TRAILER as usize];
    file.read_exact_at(&mut trailer, len - TRAILER)?;
    if &trailer[8..] != MAGIC {
        return Ok(None);
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&trailer[..8]);
    let n = u64::from_le_bytes(count);
    let expected = n
        .checked_mul(CHUNK_SIZE as u64 + DIGEST_LEN)
        .and_then(|b| b.checked_add(TRAILER));
    if expected != Some(len) || n > u64::from(u32::MAX) {
        return Ok(None);
    }
    let mut table = vec![0u8; (n * DIGEST_LEN) as usize];
    file.read_exact_at(&mut table, n * CHUNK_SIZE as u64)?;
    let digests = table
        .chunks_exact(DIGEST_LEN as usize)
        .map(|c| {
            let mut d = [0u8; 32];
            d.copy_from_slice(c);
            Digest(d)
        })
        .collect();
    Ok(Some((file, digests, len)))
}

impl ChunkStore {
    /// Opens (creating) the store in `dir`, bounded to `cap` bytes of packs: reads every pack's
    /// digest table, removes unfinished and malformed packs, and evicts the oldest if the packs
    /// exceed `cap` (a lowered cap).
    pub fn open(dir: impl Into<PathBuf>, cap: u64) -> Result<ChunkStore, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io_error("create the chunk store", &dir))?;
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_error("read the chunk store", &dir))? {
            let entry = entry.map_err(io_error("read the chunk store", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("tmp-") {
                let _ = std::fs::remove_file(entry.path());
            } else if let Some(seq) = name
                .strip_suffix(".pack")
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.push((seq, entry.path()));
            }
        }
        seqs.sort();
        let mut inner = Inner::default();
        for (seq, path) in seqs {
            match read_pack(&path) {
                Ok(Some((file, digests, bytes))) => {
                    inner.next = seq + 1;
                    inner.add_pack(seq, path, file, digests, bytes);
                }
                Ok(None) => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(io_error("read the pack", &path)(e)),
            }
        }
        inner.evict_for(0, cap);
        Ok(ChunkStore {
            dir,
            cap,
            inner: Mutex::new(inner),
            pending: Mutex::new(0),
            idle: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Distinct chunks held.
    pub fn chunks(&self) -> usize {
        self.lock().index.len()
    }

    /// Bytes of packs on disk.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Packs on disk.
    pub fn packs(&self) -> usize {
        self.lock().packs.len()
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.lock().index.contains_key(d)
    }

    /// The chunk named `d`, checked against its digest.
    pub fn get(&self, d: &Digest) -> Option<Vec<u8>> {
        self.get_many(std::slice::from_ref(d)).pop().flatten()
    }

    /// The chunks named by `digests`, in order, each checked against its digest: `None` for one
    /// not held, unreadable or damaged (a damaged one also leaves the index).
    pub fn get_many(&self, digests: &[Digest]) -> Vec<Option<Vec<u8>>> {
        let locs: Vec<Option<(Loc, Arc<File>)>> = {
            let inner = self.lock();
            digests
                .iter()
                .map(|d| {
                    let loc = *inner.index.get(d)?;
                    let file = inner.packs.get(&loc.pack)?.file.clone();
                    Some((loc, file))
                })
                .collect()
        };
        let mut bad = Vec::new();
        let out = digests
            .iter()
            .zip(locs)
            .map(|(d, loc)| {
                let (loc, file) = loc?;
                let mut buf = vec![0u8; CHUNK_SIZE];
                let ok = file
                    .read_exact_at(&mut buf, u64::from(loc.slot) * CHUNK_SIZE as u64)
                    .is_ok()
                    && Digest::of(&buf) == *d;
                if ok {
                    Some(buf)
                } else {
                    bad.push((*d, loc));
                    None
                }
            })
            .collect();
        if !bad.is_empty() {
            let mut inner = self.lock();
            for (d, loc) in bad {
                if inner.index.get(&d) == Some(&loc) {
                    inner.index.remove(&d);
                    if let Some(p) = inner.packs.get_mut(&loc.pack) {
                        p.live = p.live.saturating_sub(1);
                    }
                }
            }
        }
        out
    }

    /// Keeps the memory images of `dir` (its `pages-*.img` files; the rest of a checkpoint is
    /// small and specific to one dump) as a new pack: their distinct full chunks, hashed here
    /// rather than trusted. Evicts the oldest packs to stay within the cap; writes nothing if
    /// the images alone exceed it.
    pub fn insert_dir(&self, dir: &Path) -> Result<Inserted, StoreError> {
        let started = Instant::now();
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_error("read the images directory", dir))?
            .filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with("pages-") && n.ends_with(".img")
            })
            .map(|e| e.path())
            .collect();
        names.sort();
        let tmp = self.dir.join(tmp_name());
        let written = self.write_pack(&names, &tmp);
        let (digests, bytes) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let done = |chunks, bytes, evicted, kept| Inserted {
            chunks,
            bytes,
            evicted,
            kept,
            elapsed: started.elapsed(),
        };
        if digests.is_empty() || bytes > self.cap {
            let _ = std::fs::remove_file(&tmp);
            return Ok(done(0, 0, 0, false));
        }
        let file = File::open(&tmp).map_err(io_error("reopen the new pack", &tmp))?;
        let mut inner = self.lock();
        let mut evicted = inner.evict_for(bytes, self.cap);
        let seq = inner.next;
        inner.next += 1;
        let path = self.dir.join(format!("{seq}.pack"));
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error("name the new pack", &path)(e));
        }
        let chunks = digests.len() as u64;
        evicted += inner.add_pack(seq, path, file, digests, bytes);
        Ok(done(chunks, bytes, evicted, true))
    }

    /// Writes the distinct full chunks of `files` as a pack at `tmp`; returns its digests and
    /// size.
    fn write_pack(&self, files: &[PathBuf], tmp: &Path) -> Result<(Vec<Digest>, u64), StoreError> {
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(io_error("create a pack", tmp))?;
        let mut out = BufWriter::with_capacity(1 << 20, out);
        let mut seen: HashSet<Digest> = HashSet::new();
        let mut digests = Vec::new();
        let mut buf = vec![0u8; 256 * CHUNK_SIZE];
        for path in files {
            let mut f = File::open(path).map_err(io_error("open an image", path))?;
            loop {
                let n = read_full(&mut f, &mut buf).map_err(io_error("read an image", path))?;
                for c in buf[..n].chunks_exact(CHUNK_SIZE) {
                    let d = Digest::of(c);
                    if seen.insert(d) {
                        out.write_all(c).map_err(io_error("write a pack", tmp))?;
                        digests.push(d);
                    }
                }
                if n < buf.len() {
                    break;
                }
            }
        }
        for d in &digests {
            out.write_all(&d.0).map_err(io_error("write a pack", tmp))?;
        }
        out.write_all(&(digests.len() as u64).to_le_bytes())
            .and_then(|()| out.write_all(MAGIC))
            .and_then(|()| out.flush())
            .map_err(io_error("write a pack", tmp))?;
        let bytes = digests.len() as u64 * (CHUNK_SIZE as u64 + DIGEST_LEN) + TRAILER;
        Ok((digests, bytes))
    }

    /// Marks an insert under way (for [`ChunkStore::wait_idle`]) until the guard drops.
    pub fn begin_insert(self: &Arc<Self>) -> InsertGuard {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        InsertGuard(self.clone())
    }

    /// Waits (at most `timeout`) until no insert is under way; true if none is.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let n = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (n, _) = self
            .idle
            .wait_timeout_while(n, timeout, |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
        *n == 0
    }
}

/// Fills `buf` as far as the reader goes; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page filled from `seed`.
    fn page(seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..CHUNK_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// An images directory with one `pages-1.img` of the given pages (and a file the store
    /// ignores).
    fn images(root: &Path, name: &str, seeds: impl IntoIterator<Item = u64>) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("images dir");
        let bytes: Vec<u8> = seeds.into_iter().flat_map(page).collect();
        std::fs::write(dir.join("pages-1.img"), bytes).expect("write pages");
        std::fs::write(dir.join("core-1.img"), page(999_999)).expect("write core");
        dir
    }

    fn pack_bytes(n: u64) -> u64 {
        n * (CHUNK_SIZE as u64 + DIGEST_LEN) + TRAILER
    }

    #[test]
    fn inserted_pages_are_found_deduplicated_and_others_are_not() {
        let t = crate::testing::temp_dir("store-insert");
        let store = ChunkStore::open(t.path().join("store"), DEFAULT_CAP).expect("open");
        // Pages 1..=8, page 3 twice: 8 distinct chunks.
        let dir = images(t.path(), "a", [1, 2, 3, 3, 4, 5, 6, 7, 8]);
        let ins = store.insert_dir(&dir).expect("insert");
        assert!(ins.kept);
        assert_eq!(ins.chunks, 8);
        assert_eq!(ins.bytes, pack_bytes(8));
        assert_eq!(store.bytes(), pack_bytes(8));
        assert_eq!(store.chunks(), 8);
        let wanted: Vec<Digest> = [3, 8, 42].iter().map(|&s| Digest::of(&page(s))).collect();
        let got = store.get_many(&wanted);
        assert_eq!(got[0].as_deref(), Some(page(3).as_slice()));
        assert_eq!(got[1].as_deref(), Some(page(8).as_slice()));
        assert_eq!(got[2], None, "a page never inserted");
        assert!(
            !store.contains(&Digest::of(&page(999_999))),
            "only pages-*.img is kept"
        );
    }

    #[test]
    fn the_oldest_packs_are_evicted_to_stay_within_the_cap() {
        let t = crate::testing::temp_dir("store-evict");
        // Room for two packs of 10 chunks, not three.
        let cap = pack_bytes(10) * 2 + pack_bytes(10) / 2;
        let store = ChunkStore::open(t.path().join("store"), cap).expect("open");
        for (i, base) in [100u64, 200, 300].into_iter().enumerate() {
            let dir = images(t.path(), &format!("m{i}"), base..base + 10);
            let ins = store.insert_dir(&dir).expect("insert");
            assert!(ins.kept);
            assert_eq!(ins.evicted, u32::from(i == 2));
            assert!(store.bytes() <= cap, "{} > {cap}", store.bytes());
        }
        assert_eq!(store.packs(), 2);
        assert!(store.get(&Digest::of(&page(105))).is_none(), "oldest gone");
        assert!(store.get(&Digest::of(&page(205))).is_some());
        assert!(store.get(&Digest::of(&page(305))).is_some());
        // Images larger than the whole cap are not kept, and evict nothing.
        let big = images(t.path(), "big", 1000..1030);
        let ins = store.insert_dir(&big).expect("insert");
        assert!(!ins.kept);
        assert_eq!(store.packs(), 2);
        let leftovers = std::fs::read_dir(t.path().join("store"))
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("tmp-"))
            })
            .count();
        assert_eq!(leftovers, 0, "no unfinished pack left behind");
    }

    #[test]
    fn a_pack_superseded_by_a_newer_one_is_removed() {
        let t = crate::testing::temp_dir("store-supersede");
        let store = ChunkStore::open(t.path().join("store"), DEFAULT_CAP).expect("open");
        let a = images(t.path(), "a", 1..=20);
        store.insert_dir(&a).expect("insert a");
        // The same task again, two pages changed: the old pack still serves those two.
        let b = images(t.path(), "b", (1..=18).chain([50, 51]));
        let ins = store.insert_dir(&b).expect("insert b");
        assert_eq!(ins.evicted, 0);
        assert_eq!(store.packs(), 2);
        assert!(store.get(&Digest::of(&page(19))).is_some());
        // A third copy holding everything the first still served: the first goes.
        let c = images(t.path(), "c", (1..=20).chain([50, 51]));
        let ins = store.insert_dir(&c).expect("insert c");
        assert_eq!(ins.evicted, 2, "both older packs serve nothing now");
        assert_eq!(store.packs(), 1);
        assert_eq!(store.chunks(), 22);
        assert_eq!(store.bytes(), pack_bytes(22));
    }

    #[test]
    fn a_reopened_store_serves_what_it_held_and_drops_unfinished_packs() {
        let t = crate::testing::temp_dir("store-reopen");
        let root = t.path().join("store");
        {
            let store = ChunkStore::open(&root, DEFAULT_CAP).expect("open");
            store
                .insert_dir(&images(t.path(), "a", 1..=10))
                .expect("insert a");
            store
                .insert_dir(&images(t.path(), "b", 11..=20))
                .expect("insert b");
        }
        // A crash mid-insert and a pack cut short.
        std::fs::write(root.join("tmp-1-2-3"), b"half a pack").expect("write tmp");
        std::fs::write(root.join("7.pack"), b"not a pack at all, too short?").expect("write");
        let store = ChunkStore::open(&root, DEFAULT_CAP).expect("reopen");
        assert_eq!(store.packs(), 2);
        assert_eq!(store.chunks(), 20);
        for s in [1, 10, 11, 20] {
            assert_eq!(
                store.get(&Digest::of(&page(s))).as_deref(),
                Some(page(s).as_slice())
            );
        }
        assert!(!root.join("tmp-1-2-3").exists());
        assert!(!root.join("7.pack").exists());
        // New packs number after the old ones, so eviction order survives the restart.
        store
            .insert_dir(&images(t.path(), "c", 21..=30))
            .expect("insert c");
        assert!(root.join("2.pack").exists());
        drop(store);
        // Reopened with a lower cap: the oldest go.
        let store = ChunkStore::open(&root, pack_bytes(10) * 2).expect("reopen small");
        assert_eq!(store.packs(), 2);
        assert!(store.get(&Digest::of(&page(1))).is_none());
        assert!(store.get(&Digest::of(&page(25))).is_some());
    }

    #[test]
    fn a_corrupted_chunk_is_detected_and_never_served() {
        let t = crate::testing::temp_dir("store-corrupt");
        let root = t.path().join("store");
        let store = ChunkStore::open(&root, DEFAULT_CAP).expect("open");
        store
            .insert_dir(&images(t.path(), "a", 1..=4))
            .expect("insert");
        let pack = root.join("0.pack");
        // Flip one byte of the second chunk on disk.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pack)
            .expect("open pack");
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, CHUNK_SIZE as u64 + 7)
            .expect("read byte");
        f.write_all_at(&[b[0] ^ 0x5a], CHUNK_SIZE as u64 + 7)
            .expect("flip");
        let d2 = Digest::of(&page(2));
        let got = store.get_many(&[Digest::of(&page(1)), d2]);
        assert!(got[0].is_some(), "an intact chunk still serves");
        assert_eq!(got[1], None, "the damaged chunk is not served");
        assert!(!store.contains(&d2), "and leaves the index");
        // After a restart it is caught again on read.
        drop(store);
        let store = ChunkStore::open(&root, DEFAULT_CAP).expect("reopen");
        assert!(store.contains(&d2), "the table still names it");
        assert_eq!(store.get(&d2), None);
        assert!(store.get(&Digest::of(&page(3))).is_some());
    }

    #[test]
    fn wait_idle_waits_for_inserts_under_way() {
        let t = crate::testing::temp_dir("store-idle");
        let store = Arc::new(ChunkStore::open(t.path().join("store"), DEFAULT_CAP).expect("open"));
        assert!(store.wait_idle(Duration::ZERO));
        let g = store.begin_insert();
        // While an insert is under way the store is never idle: this wait can only time out.
        assert!(!store.wait_idle(Duration::from_millis(20)));
        // A waiter blocked before the insert ends is woken when it does; the bound only turns
        // a lost wake-up into a failure instead of a hang.
        let waiter = {
            let store = store.clone();
            std::thread::spawn(move || store.wait_idle(Duration::from_secs(60)))
        };
        drop(g);
        assert!(waiter.join().expect("thread"));
        assert!(store.wait_idle(Duration::ZERO));
    }
}
