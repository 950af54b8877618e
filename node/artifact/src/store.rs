//! The chunk store: chunks kept on disk under their content address.
//!
//! A chunk with digest `abcdef…` lives in `DIR/ab/cdef…` (62 hex digits). On the initiator,
//! [`ChunkStore::put_artifact`] cuts an [`Artifact`] into chunks and stores them, returning the
//! manifest that names them; the transfer server reads them back out. On a host, the fetcher
//! asks for [`ChunkStore::missing`] chunks, [`ChunkStore::put`] checks each one's digest before
//! anything is written, and [`ChunkStore::assemble`] (or [`ChunkStore::reader`]) turns the chunks
//! back into the artifact, checking the whole digest.
//!
//! Every write goes to a fresh temp file in `DIR/tmp` and is renamed into place, so a crashed
//! process never leaves a partial chunk under a good name, and two tasks storing the same chunk
//! at once both succeed (the second rename replaces identical bytes). Chunks are not fsynced one
//! by one: that would cost a disk flush per MiB. What an operating-system crash could still leave
//! (a truncated or garbled file) is caught on the way out: [`ChunkStore::missing`] checks each
//! file's length, and [`ChunkStore::get`], [`ChunkStore::reader`] and [`ChunkStore::assemble`]
//! check digests, removing a bad chunk so the next fetch brings it again.
//!
//! The methods do blocking file I/O; async callers run them on `spawn_blocking`.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::chunks::{split, ArtifactManifest, Digest, ManifestError};
use super::pack::Artifact;

/// Temp files older than this are left by dead processes and removed by [`ChunkStore::open`].
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk store: {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "chunk refused: its bytes digest to {actual}, not {expected}; nothing was stored \
         (the sender or the link corrupted it)"
    )]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("chunk {chunk} is not in the store {dir}; fetch the artifact first")]
    Missing { chunk: Digest, dir: PathBuf },
    #[error(
        "chunk {chunk} on disk ({path}) no longer matches its digest (a crash or a failing \
         disk?); it was removed: fetch the artifact again"
    )]
    CorruptChunk { chunk: Digest, path: PathBuf },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(
        "the manifest puts chunk {chunk} where a {expected}-byte chunk belongs, but it holds \
         {actual} bytes: the manifest is inconsistent; nothing was written"
    )]
    ChunkLength {
        chunk: Digest,
        expected: u32,
        actual: u64,
    },
    #[error(
        "the chunks of artifact {expected} assemble to {actual}: the manifest is inconsistent \
         (its chunk list does not make its digest); nothing was written"
    )]
    ArtifactMismatch { expected: Digest, actual: Digest },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory of content-addressed chunks. Cheap to clone; clones share the directory, and
/// any number of them (in tasks, threads or processes) may use it at once.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl ChunkStore {
    /// Opens (creating if needed) the store in `dir` and removes stale temp files.
    pub fn open(dir: impl Into<PathBuf>) -> Result<ChunkStore, StoreError> {
        let dir = dir.into();
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_TEMP);
                if old {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(ChunkStore { dir, tmp })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where chunk `d` lives.
    pub fn path_of(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.dir.join(&hex[..2]).join(&hex[2..])
    }

    /// Whether the chunk is stored (its content is checked when read, not here).
    pub fn has(&self, d: &Digest) -> bool {
        self.path_of(d).is_file()
    }

    fn has_len(&self, d: &Digest, len: u32) -> bool {
        fs::metadata(self.path_of(d)).is_ok_and(|m| m.is_file() && m.len() == u64::from(len))
    }

    /// The chunk's bytes, checked against its digest (a bad file is removed; see the module doc).
    pub fn get(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut buf = Vec::new();
        self.read_into(d, &mut buf)?;
        self.check_stored(d, &buf)?;
        Ok(buf)
    }

    /// Reads the chunk into `buf` (replacing its contents, reusing its allocation) without
    /// checking its digest: the transfer server's path, whose reader checks every chunk anyway.
    pub(crate) fn read_into(&self, d: &Digest, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        let path = self.path_of(d);
        let mut f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing {
                    chunk: *d,
                    dir: self.dir.clone(),
                })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        buf.clear();
        f.read_to_end(buf).map_err(io_err(&path))?;
        Ok(())
    }

    /// Checks bytes read from the store; removes the file if they are wrong.
    fn check_stored(&self, d: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        if Digest::of(bytes) == *d {
            return Ok(());
        }
        let path = self.path_of(d);
        let _ = fs::remove_file(&path);
        Err(StoreError::CorruptChunk { chunk: *d, path })
    }

    /// Stores `bytes` as chunk `expected` after checking its digest: a mismatch writes nothing.
    /// Returns whether the chunk was new.
    pub fn put(&self, expected: &Digest, bytes: &[u8]) -> Result<bool, StoreError> {
        let actual = Digest::of(bytes);
        if actual != *expected {
            return Err(StoreError::DigestMismatch {
                expected: *expected,
                actual,
            });
        }
        self.write_checked(expected, bytes)
    }

    /// Writes a chunk whose digest the caller has just computed.
    fn write_checked(&self, d: &Digest, bytes: &[u8]) -> Result<bool, StoreError> {
        if self.has_len(d, bytes.len() as u32) {
            return Ok(false);
        }
        let path = self.path_of(d);
        let mut tmp = tempfile::Builder::new()
            .prefix("chunk-")
            .tempfile_in(&self.tmp)
            .map_err(io_err(&self.tmp))?;
        tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        tmp.persist(&path).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(true)
    }

    /// Removes a chunk (no error if it was not there).
    pub fn remove(&self, d: &Digest) -> Result<(), StoreError> {
        let path = self.path_of(d);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// The distinct chunks of `manifest` not stored here (or stored with the wrong length), with
    /// their lengths, in manifest order.
    pub fn missing(&self, manifest: &ArtifactManifest) -> Vec<(Digest, u32)> {
        manifest
            .distinct_chunks()
            .into_iter()
            .filter(|(d, len)| !self.has_len(d, *len))
            .collect()
    }

    /// The initiator's side: cuts the artifact into chunks, stores them (reading it once, in a
    /// stream) and returns its manifest.
    pub fn put_artifact(&self, artifact: &Artifact) -> Result<ArtifactManifest, StoreError> {
        let label = artifact
            .path()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("<packed build context>"));
        let reader = artifact.reader().map_err(io_err(&label))?;
        let wrap = |e: io::Error| StoreError::Io {
            path: label.clone(),
            source: e,
        };
        split(artifact.kind(), reader, |d, bytes| {
            self.write_checked(&d, bytes)
                .map(|_| ())
                .map_err(SplitError::Store)
        })
        .map_err(|e: SplitError| match e {
            SplitError::Read(e) => wrap(e),
            SplitError::Store(e) => e,
        })
    }

    /// A reader over the artifact's bytes, every chunk checked before its bytes are handed out
    /// and the whole digest checked at the end (an error instead of end-of-file if wrong).
    pub fn reader(&self, manifest: &ArtifactManifest) -> Result<ArtifactReader, StoreError> {
        manifest.validate()?;
        Ok(ArtifactReader {
            store: self.clone(),
            manifest: manifest.clone(),
            next: 0,
            buf: Vec::with_capacity(manifest.chunk_size as usize),
            pos: 0,
            whole: blake3::Hasher::new(),
            done: false,
        })
    }

    /// Writes the whole artifact to `out` (through a temp file beside it, renamed when the
    /// whole digest is right: a bad artifact leaves nothing at `out`).
    pub fn assemble(&self, manifest: &ArtifactManifest, out: &Path) -> Result<(), StoreError> {
        let mut reader = self.reader(manifest)?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".brume-artifact-")
            .tempfile_in(&parent)
            .map_err(io_err(&parent))?;
        loop {
            let chunk = match reader.next_chunk() {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Err(e),
            };
            tmp.write_all(chunk).map_err(io_err(out))?;
        }
        tmp.as_file().sync_all().map_err(io_err(out))?;
        tmp.persist(out).map_err(|e| StoreError::Io {
            path: out.to_path_buf(),
            source: e.error,
        })?;
        Ok(())
    }
}

/// `put_artifact`'s two ways to fail inside [`split`].
enum SplitError {
    Read(io::Error),
    Store(StoreError),
}

impl From<io::Error> for SplitError {
    fn from(e: io::Error) -> Self {
        SplitError::Read(e)
    }
}

/// Reads an artifact out of the store, checking as it goes (see [`ChunkStore::reader`]).
pub struct ArtifactReader {
    store: ChunkStore,
    manifest: ArtifactManifest,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
    whole: blake3::Hasher,
    done: bool,
}

impl ArtifactReader {
    /// The next whole checked chunk, or `None` at the end (after the whole digest checked out).
    fn next_chunk(&mut self) -> Result<Option<&[u8]>, StoreError> {
        if self.next == self.manifest.chunks.len() {
            if !self.done {
                let actual: Digest = self.whole.finalize().into();
                if actual != self.manifest.digest {
                    return Err(StoreError::ArtifactMismatch {
                        expected: self.manifest.digest,
                        actual,
                    });
                }
                self.done = true;
            }
            return Ok(None);
        }
        let d = self.manifest.chunks[self.next];
        self.store.read_into(&d, &mut self.buf)?;
        self.store.check_stored(&d, &self.buf)?;
        let expected = self.manifest.chunk_len(self.next);
        if self.buf.len() != expected as usize {
            return Err(StoreError::ChunkLength {
                chunk: d,
                expected,
                actual: self.buf.len() as u64,
            });
        }
        self.whole.update(&self.buf);
        self.next += 1;
        Ok(Some(&self.buf))
    }
}

impl Read for ArtifactReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            match self.next_chunk() {
                Ok(Some(_)) => self.pos = 0,
                Ok(None) => return Ok(0),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::{ArtifactKind, CHUNK_SIZE};

    fn data(n: usize, seed: u8) -> Vec<u8> {
        let mut x = u32::from(seed) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn put_checks_the_digest_and_writes_nothing_on_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let good = b"chunk".to_vec();
        let d = Digest::of(&good);
        let err = store.put(&d, b"chunK").unwrap_err();
        assert!(
            matches!(err, StoreError::DigestMismatch { expected, actual }
                if expected == d && actual == Digest::of(b"chunK")),
            "{err}"
        );
        assert!(!store.has(&d));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(store.put(&d, &good).unwrap());
        assert!(!store.put(&d, &good).unwrap(), "second put is a no-op");
        assert_eq!(store.get(&d).unwrap(), good);
        let hex = d.to_hex();
        assert!(dir.path().join(&hex[..2]).join(&hex[2..]).is_file());
    }

    #[test]
    fn a_chunk_damaged_on_disk_is_caught_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let bytes = data(1000, 3);
        let d = Digest::of(&bytes);
        store.put(&d, &bytes).unwrap();
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        fs::write(store.path_of(&d), &bad).unwrap();
        assert!(matches!(
            store.get(&d),
            Err(StoreError::CorruptChunk { chunk, .. }) if chunk == d
        ));
        assert!(!store.has(&d));
    }

    #[test]
    fn artifact_round_trips_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("store")).unwrap();
        let bytes = data(2 * CHUNK_SIZE as usize + 777, 9);
        let art = Artifact::from_bytes(ArtifactKind::ImageTar, bytes.clone());
        let m = store.put_artifact(&art).unwrap();
        assert_eq!(m.digest, Digest::of(&bytes));
        assert_eq!(m.chunks.len(), 3);
        assert!(store.missing(&m).is_empty());
        let out = dir.path().join("out.tar");
        store.assemble(&m, &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), bytes);
        let mut via_reader = Vec::new();
        store
            .reader(&m)
            .unwrap()
            .read_to_end(&mut via_reader)
            .unwrap();
        assert_eq!(via_reader, bytes);

        // A missing chunk: assemble fails and writes nothing.
        store.remove(&m.chunks[1]).unwrap();
        assert_eq!(store.missing(&m), vec![(m.chunks[1], CHUNK_SIZE)]);
        let out2 = dir.path().join("out2.tar");
        assert!(matches!(
            store.assemble(&m, &out2),
            Err(StoreError::Missing { chunk, .. }) if chunk == m.chunks[1]
        ));
        assert!(!out2.exists());

        // A truncated chunk counts as missing.
        let c2 = m.chunks[2];
        fs::write(store.path_of(&c2), &bytes[..10]).unwrap();
        assert!(store.missing(&m).iter().any(|(d, _)| *d == c2));

        // A manifest whose whole digest is wrong: nothing written.
        let fresh = ChunkStore::open(dir.path().join("fresh")).unwrap();
        let m2 = fresh.put_artifact(&art).unwrap();
        let lying = ArtifactManifest {
            digest: Digest::of(b"something else"),
            ..m2
        };
        let out3 = dir.path().join("out3.tar");
        assert!(matches!(
            fresh.assemble(&lying, &out3),
            Err(StoreError::ArtifactMismatch { .. })
        ));
        assert!(!out3.exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".brume-artifact-")
            })
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn concurrent_puts_of_one_chunk_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let bytes = data(CHUNK_SIZE as usize, 5);
        let d = Digest::of(&bytes);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| store.put(&d, &bytes).unwrap());
            }
        });
        assert_eq!(store.get(&d).unwrap(), bytes);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
