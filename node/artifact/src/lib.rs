//! Artifacts without a registry: how a task's image gets from the initiator to a host.
//!
//! The initiator [`pack`]s the image (a build context directory or a `docker save` tarball) into
//! an [`Artifact`], and [`ChunkStore::put_artifact`] cuts it into 1 MiB content-addressed
//! [`chunks`] kept in its [`store`], returning the [`ArtifactManifest`] that names them. The
//! manifest travels in the deploy request. The host [`transfer::fetch`]es the chunks it lacks
//! from the initiator over an overlay stream of [`TRANSFER_PROTOCOL`] (the initiator runs
//! [`transfer::serve`]), checking every chunk's digest, resuming on a new stream after a break,
//! and finally [`ChunkStore::assemble`]s the artifact (checking the whole digest) for Docker to
//! load or build.

pub mod chunks;
pub mod pack;
pub mod store;
pub mod transfer;

pub use chunks::{ArtifactKind, ArtifactManifest, Digest, ManifestError, CHUNK_SIZE};
pub use pack::{pack_context, read_image_tar, Artifact, PackError};
pub use store::{ArtifactReader, ChunkStore, StoreError};
pub use transfer::{
    fetch, serve, serve_incoming, serve_limited, FetchOptions, FetchStats, ServeError, ServeStats,
    TransferError, TRANSFER_LIMITS, TRANSFER_PROTOCOL,
};
