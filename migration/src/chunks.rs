//! Content-addressed 4 KiB chunks of checkpoint images, and the deltas between an image and
//! what a target already holds.
//!
//! Why: successive `--leave-running` dumps of a task rewrite every memory page even when few
//! changed (this kernel has no soft-dirty tracking), and many tasks share pages (libraries, zero
//! pages). Cutting each image file into fixed 4 KiB chunks named by their blake3 digest turns
//! "what changed since the last round" and "what does the target already have, from any task"
//! into one set lookup (seed 003's dedup over 4 KiB chunks).
//!
//! Data flow, on the source: an image (a byte slice or a reader) is split into chunks
//! ([`split`], [`ChunkReader`]); [`delta`] compares them with the [`ChunkSet`] of digests the
//! target holds and yields the chunks to send plus a [`Recipe`] (the digests in file order).
//! After the send, [`ChunkSet::absorb`] records the new digests, so the next round and the next
//! task only send what is still missing. On the target: chunks land in a store keyed by digest
//! (here [`MemStore`]; a live migration's target keeps them in memory while it runs, and a node
//! keeps those of finished migrations on disk in [`crate::live::store`], which a later
//! migration's source asks before its first round) and [`rebuild`] turns a recipe back into the
//! exact file, verifying every chunk's digest and length and the total length.
//!
//! Everything here is pure: no files, sockets or clocks; readers are passed in.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

/// The size of every chunk but a file's last one.
pub const CHUNK_SIZE: usize = 4096;

/// A chunk's name: the blake3 digest of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// The full lowercase hex form (64 characters).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One chunk of a file by name: its digest and its length (at most [`CHUNK_SIZE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub digest: Digest,
    pub len: u32,
}

/// One chunk with its bytes, borrowed from the image it was cut from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub digest: Digest,
    pub data: &'a [u8],
}

impl Chunk<'_> {
    /// The chunk's name and length.
    pub fn as_ref(&self) -> ChunkRef {
        ChunkRef {
            digest: self.digest,
            len: self.data.len() as u32,
        }
    }
}

/// Cuts `bytes` into [`CHUNK_SIZE`] chunks (the last one may be shorter; an empty slice has none).
pub fn split(bytes: &[u8]) -> impl Iterator<Item = Chunk<'_>> + '_ {
    bytes.chunks(CHUNK_SIZE).map(|data| Chunk {
        digest: Digest::of(data),
        data,
    })
}

/// Cuts what a reader yields into owned chunks, exactly as [`split`] would cut the whole
/// content: every chunk but the last is full even when the reader returns short reads.
pub struct ChunkReader<R> {
    reader: R,
    done: bool,
}

impl<R: Read> ChunkReader<R> {
    pub fn new(reader: R) -> Self {
        ChunkReader {
            reader,
            done: false,
        }
    }
}

impl<R: Read> Iterator for ChunkReader<R> {
    type Item = io::Result<(ChunkRef, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = vec![0u8; CHUNK_SIZE];
        let mut filled = 0;
        while filled < CHUNK_SIZE {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    self.done = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        if filled == 0 {
            return None;
        }
        buf.truncate(filled);
        let r = ChunkRef {
            digest: Digest::of(&buf),
            len: filled as u32,
        };
        Some(Ok((r, buf)))
    }
}

/// How to rebuild one file: its chunks' names in order and its total length.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub len: u64,
    pub chunks: Vec<ChunkRef>,
}

impl Recipe {
    /// The recipe of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Recipe {
            len: bytes.len() as u64,
            chunks: split(bytes).map(|c| c.as_ref()).collect(),
        }
    }

    /// The recipe of everything a reader yields.
    pub fn read<R: Read>(reader: R) -> io::Result<Self> {
        let mut recipe = Recipe::default();
        for item in ChunkReader::new(reader) {
            let (r, _) = item?;
            recipe.len += u64::from(r.len);
            recipe.chunks.push(r);
        }
        Ok(recipe)
    }

    /// The distinct digests the recipe needs.
    pub fn digests(&self) -> HashSet<Digest> {
        self.chunks.iter().map(|c| c.digest).collect()
    }
}

/// The digests a target holds, from every task and every round it received.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSet {
    digests: HashSet<Digest>,
}

impl ChunkSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.digests.contains(d)
    }

    /// Adds one digest; true if it was new.
    pub fn insert(&mut self, d: Digest) -> bool {
        self.digests.insert(d)
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Digest> {
        self.digests.iter()
    }

    /// The distinct digests of `recipe` this set lacks, in recipe order: what a target answers
    /// when a source offers a recipe, instead of shipping its whole set.
    pub fn missing(&self, recipe: &Recipe) -> Vec<Digest> {
        let mut seen = HashSet::new();
        recipe
            .chunks
            .iter()
            .map(|c| c.digest)
            .filter(|d| !self.contains(d) && seen.insert(*d))
            .collect()
    }

    /// Records that the target now holds every chunk a delta sent (call once the send succeeded).
    pub fn absorb(&mut self, delta: &Delta<'_>) {
        self.digests
            .extend(delta.new_chunks.iter().map(|c| c.digest));
    }
}

impl FromIterator<Digest> for ChunkSet {
    fn from_iter<I: IntoIterator<Item = Digest>>(iter: I) -> Self {
        ChunkSet {
            digests: iter.into_iter().collect(),
        }
    }
}

impl Extend<Digest> for ChunkSet {
    fn extend<I: IntoIterator<Item = Digest>>(&mut self, iter: I) {
        self.digests.extend(iter)
    }
}

/// What to ship for one image: the chunks the target lacks (each distinct digest once, in first
/// appearance order) and the recipe naming every chunk, new or already held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta<'a> {
    pub recipe: Recipe,
    pub new_chunks: Vec<Chunk<'a>>,
}

impl Delta<'_> {
    /// Bytes of chunk data to send.
    pub fn new_bytes(&self) -> u64 {
        self.new_chunks.iter().map(|c| c.data.len() as u64).sum()
    }

    /// Bytes of the image the target can take from chunks it holds (or that repeat in the image).
    pub fn reused_bytes(&self) -> u64 {
        self.recipe.len - self.new_bytes()
    }

    /// Chunks referenced by the recipe but not sent.
    pub fn references(&self) -> usize {
        self.recipe.chunks.len() - self.new_chunks.len()
    }
}

/// Splits `image` and keeps only the chunks that `known` lacks, deduplicated within the image.
pub fn delta<'a>(image: &'a [u8], known: &ChunkSet) -> Delta<'a> {
    let mut recipe = Recipe {
        len: image.len() as u64,
        chunks: Vec::with_capacity(image.len().div_ceil(CHUNK_SIZE)),
    };
    let mut sent = HashSet::new();
    let mut new_chunks = Vec::new();
    for c in split(image) {
        recipe.chunks.push(c.as_ref());
        if !known.contains(&c.digest) && sent.insert(c.digest) {
            new_chunks.push(c);
        }
    }
    Delta { recipe, new_chunks }
}

/// Why a recipe could not be rebuilt or a chunk was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("chunk {digest} is missing from the store: fetch it from the source again")]
    Missing { digest: Digest },
    #[error(
        "chunk {expected} is corrupt (its bytes hash to {actual}): drop it from the store and fetch it again"
    )]
    Corrupt { expected: Digest, actual: Digest },
    #[error(
        "chunk {digest} has {actual} bytes but the recipe says {expected}: the recipe or the store is damaged"
    )]
    WrongLength {
        digest: Digest,
        expected: u32,
        actual: usize,
    },
    #[error(
        "the recipe says {expected} bytes but its chunks add up to {actual}: the recipe is damaged, ask the source for it again"
    )]
    WrongTotal { expected: u64, actual: u64 },
    #[error("a chunk of {len} bytes is larger than {CHUNK_SIZE}: refused")]
    TooLarge { len: usize },
}

/// Rebuilds the file a recipe describes from chunks found by `lookup`, verifying each chunk's
/// digest and length and the total length. Nothing is returned unless all of it checks out.
pub fn rebuild<T, F>(recipe: &Recipe, mut lookup: F) -> Result<Vec<u8>, ChunkError>
where
    T: AsRef<[u8]>,
    F: FnMut(&Digest) -> Option<T>,
{
    if let Some(c) = recipe.chunks.iter().find(|c| c.len as usize > CHUNK_SIZE) {
        return Err(ChunkError::TooLarge {
            len: c.len as usize,
        });
    }
    let declared: u64 = recipe.chunks.iter().map(|c| u64::from(c.len)).sum();
    if declared != recipe.len {
        return Err(ChunkError::WrongTotal {
            expected: recipe.len,
            actual: declared,
        });
    }
    let mut out = Vec::with_capacity(usize::try_from(recipe.len).unwrap_or(0));
    for c in &recipe.chunks {
        let data = lookup(&c.digest).ok_or(ChunkError::Missing { digest: c.digest })?;
        let data = data.as_ref();
        if data.len() != c.len as usize {
            return Err(ChunkError::WrongLength {
                digest: c.digest,
                expected: c.len,
                actual: data.len(),
            });
        }
        let actual = Digest::of(data);
        if actual != c.digest {
            return Err(ChunkError::Corrupt {
                expected: c.digest,
                actual,
            });
        }
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// A target's chunks in memory, keyed by digest: the model of a node's chunk store for tests and
/// small images. Every chunk put is verified against its name.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    chunks: HashMap<Digest, Vec<u8>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a chunk received under `digest`; refuses it if its bytes do not hash to that name
    /// or it is larger than a chunk. True if it was new.
    pub fn put(&mut self, digest: Digest, data: Vec<u8>) -> Result<bool, ChunkError> {
        if data.len() > CHUNK_SIZE {
            return Err(ChunkError::TooLarge { len: data.len() });
        }
        let actual = Digest::of(&data);
        if actual != digest {
            return Err(ChunkError::Corrupt {
                expected: digest,
                actual,
            });
        }
        Ok(self.chunks.insert(digest, data).is_none())
    }

    pub fn get(&self, d: &Digest) -> Option<&[u8]> {
        self.chunks.get(d).map(Vec::as_slice)
    }

    /// The digests held, to send to a source as its [`ChunkSet`].
    pub fn digests(&self) -> ChunkSet {
        self.chunks.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.chunks.values().map(|v| v.len() as u64).sum()
    }

    /// Rebuilds a file from this store.
    pub fn rebuild(&self, recipe: &Recipe) -> Result<Vec<u8>, ChunkError> {
        rebuild(recipe, |d| self.get(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reader that hands out at most `step` bytes per read, to exercise short reads.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
            .collect()
    }

    fn send(delta: &Delta<'_>, store: &mut MemStore) {
        for c in &delta.new_chunks {
            store.put(c.digest, c.data.to_vec()).unwrap();
        }
    }

    #[test]
    fn split_cuts_4k_chunks_and_a_short_tail() {
        let data = pattern(3 * CHUNK_SIZE + 100, 1);
        let chunks: Vec<_> = split(&data).collect();
        assert_eq!(chunks.len(), 4);
        assert!(chunks[..3].iter().all(|c| c.data.len() == CHUNK_SIZE));
        assert_eq!(chunks[3].data.len(), 100);
        assert_eq!(
            chunks[1].digest,
            Digest::of(&data[CHUNK_SIZE..2 * CHUNK_SIZE])
        );
        assert_eq!(split(&[]).count(), 0);
        assert_eq!(Recipe::of(&[]), Recipe::default());
    }

    #[test]
    fn reader_matches_slice_despite_short_reads() {
        let data = pattern(5 * CHUNK_SIZE + 7, 2);
        let from_reader = Recipe::read(Trickle {
            data: &data,
            step: 1000,
        })
        .unwrap();
        assert_eq!(from_reader, Recipe::of(&data));
    }

    #[test]
    fn reader_error_is_returned() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk gone"))
            }
        }
        assert!(Recipe::read(Broken).is_err());
    }

    #[test]
    fn first_round_sends_everything_once_and_dedups_within_the_image() {
        // Four identical zero pages and two distinct ones.
        let mut image = vec![0u8; 4 * CHUNK_SIZE];
        image.extend(pattern(2 * CHUNK_SIZE, 3));
        let d = delta(&image, &ChunkSet::new());
        assert_eq!(d.recipe.chunks.len(), 6);
        assert_eq!(d.new_chunks.len(), 3);
        assert_eq!(d.new_bytes(), 3 * CHUNK_SIZE as u64);
        assert_eq!(d.reused_bytes(), 3 * CHUNK_SIZE as u64);
        assert_eq!(d.references(), 3);
    }

    #[test]
    fn second_round_sends_only_dirtied_pages() {
        let mut image = pattern(64 * CHUNK_SIZE, 4);
        let mut known = ChunkSet::new();
        let mut store = MemStore::new();
        let d1 = delta(&image, &known);
        send(&d1, &mut store);
        known.absorb(&d1);
        // Dirty pages 5 and 40.
        image[5 * CHUNK_SIZE] ^= 0xff;
        image[40 * CHUNK_SIZE + 17] ^= 0x01;
        let d2 = delta(&image, &known);
        assert_eq!(d2.new_chunks.len(), 2);
        assert_eq!(
            d2.new_chunks[0].data,
            &image[5 * CHUNK_SIZE..6 * CHUNK_SIZE]
        );
        send(&d2, &mut store);
        known.absorb(&d2);
        assert_eq!(store.rebuild(&d2.recipe).unwrap(), image);
        // An unchanged third round sends nothing: two successive dumps are equal.
        assert!(delta(&image, &known).new_chunks.is_empty());
    }

    #[test]
    fn dedup_across_tasks() {
        let shared = pattern(16 * CHUNK_SIZE, 5);
        let mut a = shared.clone();
        a.extend(pattern(2 * CHUNK_SIZE, 6));
        let mut b = shared;
        b.extend(pattern(3 * CHUNK_SIZE, 7));
        let mut known = ChunkSet::new();
        let da = delta(&a, &known);
        known.absorb(&da);
        let db = delta(&b, &known);
        assert_eq!(db.new_chunks.len(), 3, "task b shares 16 pages with task a");
        // The target's answer to b's recipe names exactly the chunks the delta sends.
        let missing = known.missing(&db.recipe);
        let sent: Vec<Digest> = db.new_chunks.iter().map(|c| c.digest).collect();
        assert_eq!(missing, sent);
    }

    #[test]
    fn rebuild_refuses_missing_corrupt_and_wrong_lengths() {
        let image = pattern(3 * CHUNK_SIZE + 5, 8);
        let recipe = Recipe::of(&image);
        let mut store = MemStore::new();
        let d = delta(&image, &ChunkSet::new());
        send(&d, &mut store);
        assert_eq!(store.rebuild(&recipe).unwrap(), image);

        let missing = recipe.chunks[1].digest;
        let err = rebuild(&recipe, |dg| {
            (*dg != missing).then(|| store.get(dg).unwrap())
        })
        .unwrap_err();
        assert_eq!(err, ChunkError::Missing { digest: missing });

        let err = rebuild(&recipe, |dg| {
            let mut v = store.get(dg).unwrap().to_vec();
            if *dg == missing {
                v[0] ^= 1;
            }
            Some(v)
        })
        .unwrap_err();
        assert!(matches!(err, ChunkError::Corrupt { expected, .. } if expected == missing));

        let err = rebuild(&recipe, |dg| {
            let v = store.get(dg).unwrap();
            Some(if *dg == missing { &v[..10] } else { v })
        })
        .unwrap_err();
        assert!(matches!(err, ChunkError::WrongLength { actual: 10, .. }));

        // A hostile recipe cannot make the target allocate gigabytes.
        let huge = Recipe {
            len: u64::from(u32::MAX),
            chunks: vec![ChunkRef {
                digest: missing,
                len: u32::MAX,
            }],
        };
        assert!(matches!(
            store.rebuild(&huge),
            Err(ChunkError::TooLarge { .. })
        ));

        let mut bad = recipe.clone();
        bad.len += 1;
        assert!(matches!(
            store.rebuild(&bad),
            Err(ChunkError::WrongTotal { .. })
        ));
    }

    #[test]
    fn store_refuses_mislabelled_and_oversized_chunks() {
        let mut store = MemStore::new();
        let a = vec![1u8; 10];
        assert!(matches!(
            store.put(Digest::of(b"other"), a.clone()),
            Err(ChunkError::Corrupt { .. })
        ));
        let big = vec![0u8; CHUNK_SIZE + 1];
        assert!(matches!(
            store.put(Digest::of(&big), big),
            Err(ChunkError::TooLarge { .. })
        ));
        assert!(store.is_empty());
        assert!(store.put(Digest::of(&a), a.clone()).unwrap());
        assert!(!store.put(Digest::of(&a), a).unwrap());
        assert_eq!(store.len(), 1);
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(64))]

        /// Whatever the target held before, sending the delta lets it rebuild the image exactly,
        /// and the delta never sends a chunk the target had or the same chunk twice.
        #[test]
        fn delta_then_rebuild_round_trips(
            image in proptest::collection::vec(0u8..4, 0..40_000),
            old in proptest::collection::vec(0u8..4, 0..40_000),
        ) {
            let mut store = MemStore::new();
            let d_old = delta(&old, &ChunkSet::new());
            send(&d_old, &mut store);
            let known = store.digests();
            let d = delta(&image, &known);
            let mut seen = HashSet::new();
            for c in &d.new_chunks {
                prop_assert!(!known.contains(&c.digest));
                prop_assert!(seen.insert(c.digest));
            }
            send(&d, &mut store);
            prop_assert_eq!(store.rebuild(&d.recipe).unwrap(), image.clone());
            prop_assert_eq!(d.new_bytes() + d.reused_bytes(), image.len() as u64);
        }

        #[test]
        fn reader_and_slice_agree(
            data in proptest::collection::vec(any::<u8>(), 0..20_000),
            step in 1usize..9000,
        ) {
            let r = Recipe::read(Trickle { data: &data, step }).unwrap();
            prop_assert_eq!(r, Recipe::of(&data));
        }
    }
}
