//! Content addresses: the [`Digest`] of a byte string and the [`ArtifactManifest`] that names an
//! artifact by the digests of its fixed-size chunks.
//!
//! The initiator cuts an artifact (see [`super::pack`]) into [`CHUNK_SIZE`] pieces with
//! [`split`], which reads the artifact once through one reused buffer and hashes every chunk and
//! the whole as it goes. The manifest travels to the host inside a deploy request; the host asks
//! for the chunks it lacks by digest (see [`super::transfer`]) and checks each one against it.
//! A manifest comes from the network, so [`ArtifactManifest::validate`] checks that its sizes
//! agree before anyone allocates or asks for anything.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Bytes per chunk: 1 MiB.
///
/// Big enough that what every chunk costs (a 37-byte frame header and a request slot on the wire,
/// one file in the store, 32 bytes in the manifest, so 16 KiB of manifest for a 512 MiB image)
/// vanishes next to moving and hashing its bytes, which is what keeps a fetch near the link's
/// speed. Small enough that a broken connection loses at most the chunks in flight, a resumed
/// fetch re-asks at a fine grain, and two buffers per transfer stay small on an edge device.
/// (Migration's memory pages use 4 KiB chunks instead: they dedup page by page.)
///
/// Measured cost on the project's machines (kernel 6.18, ext4, a VM): the kernel writes 1 MiB
/// files into its page cache at ~1.2-1.5 ms of CPU per MB but 4 MiB files at ~0.3, so with
/// 4 MiB chunks a fetch into the store costs ~1.1 ms of CPU per MB instead of ~2.5 (same
/// bench, `brume bench transfer`). Raising it is a one-line change (the transfer's batch size
/// follows it) that costs 4x the buffers (16 MiB per transfer) and a coarser resume.
pub const CHUNK_SIZE: u32 = 1 << 20;

/// The largest artifact a manifest may describe: 64 GiB (65 536 chunks, a 2 MiB manifest).
pub const MAX_ARTIFACT_SIZE: u64 = 64 << 30;

/// A BLAKE3 digest: 32 bytes, written as 64 lowercase hex digits (also in serde).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// The 64 hex digits.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// The first 12 hex digits, for logs and progress lines.
    pub fn short(&self) -> String {
        let mut s = self.to_hex();
        s.truncate(12);
        s
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a BLAKE3 digest: expected 64 hex digits")]
pub struct DigestParseError {
    text: String,
}

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DigestParseError {
            text: s.chars().take(80).collect(),
        };
        if s.len() != 64 {
            return Err(bad());
        }
        blake3::Hash::from_hex(s)
            .map(Digest::from)
            .map_err(|_| bad())
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Digest, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Hex)
    }
}

/// What an artifact holds, which decides how the host turns it into an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// A build context tar with a `Dockerfile` at its top: the host builds it.
    Context,
    /// A `docker save` tarball: the host loads it.
    ImageTar,
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArtifactKind::Context => "build context",
            ArtifactKind::ImageTar => "image tarball",
        })
    }
}

/// An artifact named by content: its size, the digest of all its bytes and the digests of its
/// chunks in order (every chunk is `chunk_size` bytes but the last, which may be shorter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactManifest {
    pub kind: ArtifactKind,
    pub size: u64,
    pub digest: Digest,
    pub chunk_size: u32,
    pub chunks: Vec<Digest>,
}

/// Why a manifest cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "artifact manifest uses {got}-byte chunks; this node only handles {CHUNK_SIZE}-byte \
         chunks (the sender runs another brume version?)"
    )]
    ChunkSize { got: u32 },
    #[error(
        "artifact manifest describes {size} bytes, over the {MAX_ARTIFACT_SIZE}-byte limit; \
         use a smaller image"
    )]
    TooLarge { size: u64 },
    #[error(
        "artifact manifest lists {listed} chunks but {size} bytes make {expected}; the manifest \
         is corrupt"
    )]
    ChunkCount {
        size: u64,
        listed: usize,
        expected: u64,
    },
}

impl ArtifactManifest {
    /// Checks that the sizes agree with each other and with this node's limits.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.chunk_size != CHUNK_SIZE {
            return Err(ManifestError::ChunkSize {
                got: self.chunk_size,
            });
        }
        if self.size > MAX_ARTIFACT_SIZE {
            return Err(ManifestError::TooLarge { size: self.size });
        }
        let expected = self.size.div_ceil(u64::from(self.chunk_size));
        if self.chunks.len() as u64 != expected {
            return Err(ManifestError::ChunkCount {
                size: self.size,
                listed: self.chunks.len(),
                expected,
            });
        }
        Ok(())
    }

    /// The length of chunk `i` (0 past the end). Assumes a validated manifest.
    pub fn chunk_len(&self, i: usize) -> u32 {
        let start = i as u64 * u64::from(self.chunk_size);
        self.size
            .saturating_sub(start)
            .min(u64::from(self.chunk_size)) as u32
    }

    /// Every distinct chunk with its length, in first-appearance order.
    pub fn distinct_chunks(&self) -> Vec<(Digest, u32)> {
        let mut seen = std::collections::HashSet::with_capacity(self.chunks.len());
        self.chunks
            .iter()
            .enumerate()
            .filter(|(_, d)| seen.insert(**d))
            .map(|(i, d)| (*d, self.chunk_len(i)))
            .collect()
    }
}

/// Reads `reader` to its end in [`CHUNK_SIZE`] pieces through one reused buffer, calling
/// `each(digest, bytes)` for every chunk in order, and returns the manifest. The whole is
/// hashed as it goes, so the artifact is read exactly once and never held in memory.
pub fn split<R, F, E>(kind: ArtifactKind, mut reader: R, mut each: F) -> Result<ArtifactManifest, E>
where
    R: Read,
    F: FnMut(Digest, &[u8]) -> Result<(), E>,
    E: From<io::Error>,
{
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    loop {
        let n = read_full(&mut reader, &mut buf)?;
        if n == 0 {
            break;
        }
        let bytes = &buf[..n];
        whole.update(bytes);
        let d = Digest::of(bytes);
        each(d, bytes)?;
        chunks.push(d);
        size += n as u64;
        if n < buf.len() {
            break;
        }
    }
    Ok(ArtifactManifest {
        kind,
        size,
        digest: whole.finalize().into(),
        chunk_size: CHUNK_SIZE,
        chunks,
    })
}

/// Fills `buf` unless the reader ends first; returns how many bytes were read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_text_round_trips_and_refuses_junk() {
        let d = Digest::of(b"brume");
        let hex = d.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, blake3::hash(b"brume").to_hex().as_str());
        assert_eq!(hex.parse::<Digest>().unwrap(), d);
        assert!("abc".parse::<Digest>().is_err());
        assert!("zz".repeat(32).parse::<Digest>().is_err());
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{hex}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"00\"").is_err());
    }

    #[test]
    fn split_cuts_fixed_chunks_and_hashes_the_whole() {
        let data: Vec<u8> = (0..(2 * CHUNK_SIZE as usize + 5))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut seen = Vec::new();
        let m = split::<_, _, io::Error>(ArtifactKind::ImageTar, data.as_slice(), |d, b| {
            assert_eq!(d, Digest::of(b));
            seen.push(b.len());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![CHUNK_SIZE as usize, CHUNK_SIZE as usize, 5]);
        assert_eq!(m.size, data.len() as u64);
        assert_eq!(m.digest, Digest::of(&data));
        assert_eq!(m.chunks[2], Digest::of(&data[2 * CHUNK_SIZE as usize..]));
        assert_eq!(m.chunk_len(2), 5);
        assert_eq!(m.chunk_len(0), CHUNK_SIZE);
        m.validate().unwrap();

        // Exactly one chunk's worth: no empty trailing chunk.
        let one = vec![1u8; CHUNK_SIZE as usize];
        let m1 =
            split::<_, _, io::Error>(ArtifactKind::Context, one.as_slice(), |_, _| Ok(())).unwrap();
        assert_eq!(m1.chunks.len(), 1);
        let empty =
            split::<_, _, io::Error>(ArtifactKind::Context, &[][..], |_, _| Ok(())).unwrap();
        assert!(empty.chunks.is_empty());
        empty.validate().unwrap();
    }

    #[test]
    fn validate_refuses_inconsistent_manifests() {
        let m = ArtifactManifest {
            kind: ArtifactKind::ImageTar,
            size: CHUNK_SIZE as u64 + 1,
            digest: Digest::of(b""),
            chunk_size: CHUNK_SIZE,
            chunks: vec![Digest::of(b"a")],
        };
        assert!(matches!(
            m.validate(),
            Err(ManifestError::ChunkCount { expected: 2, .. })
        ));
        let odd = ArtifactManifest {
            chunk_size: 4096,
            ..m.clone()
        };
        assert!(matches!(
            odd.validate(),
            Err(ManifestError::ChunkSize { .. })
        ));
        let huge = ArtifactManifest {
            size: MAX_ARTIFACT_SIZE + 1,
            ..m
        };
        assert!(matches!(
            huge.validate(),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn distinct_chunks_dedups_in_order() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let m = ArtifactManifest {
            kind: ArtifactKind::ImageTar,
            size: 2 * CHUNK_SIZE as u64 + 3,
            digest: Digest::of(b""),
            chunk_size: CHUNK_SIZE,
            chunks: vec![a, a, b],
        };
        assert_eq!(m.distinct_chunks(), vec![(a, CHUNK_SIZE), (b, 3)]);
    }
}
