//! A periodic CRIU checkpoint of a `checkpoint = "criu"` task, as it travels from its host to
//! the service's owner and, after the host died, from the owner to the task's new host.
//!
//! A task that keeps its state in memory (an unmodified server) cannot answer `CHECKPOINT`, so
//! its host dumps it with `criu dump --leave-running` (a Docker task: `runc checkpoint
//! --leave-running`, with its bundle's config; [`super::checkpointer`]): the image
//! directory is packed as a zstd-compressed tar ([`pack`]) and kept by the owner beside app
//! checkpoints ([`super::checkpoints`]). A re-placement hands it to the new host in the deploy
//! request, which unpacks it ([`unpack`]: flat regular files only, size-bounded) and restores
//! the task with `criu restore` instead of starting it afresh (`crate::deploy::from_images`).
//!
//! The restored task holds the sockets it had: it listens on the same port and calls through
//! forwarders on the same ports, so those travel with the images, and the new host gives the
//! task those ports (a restore fails where one is taken, and the task then starts fresh).

use std::io::{self, Read};
use std::path::{Component, Path};

use brume_migration::checkpointer::PortableBundle;
use serde::{Deserialize, Serialize};

/// The zstd level of the archive: images are mostly memory pages, where higher levels buy
/// little and cost the host CPU every period.
const LEVEL: i32 = 3;

/// One CRIU checkpoint of a task, with what its restore needs besides the images.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriuImages {
    /// The task's PID on its host when dumped (the init of its PID namespace).
    pub dumped_pid: u32,
    /// The port the task listens on.
    pub port: u16,
    /// The ports of its call forwarders (calls, then replicas), where it connects to call.
    pub call_ports: Vec<u16>,
    /// The `--inherit-fd` key of its output pipe (`brume_engine::criu_task::stdout_key`).
    pub stdout_key: Option<String>,
    /// The image directory, a tar of its files compressed with zstd.
    #[serde(with = "serde_bytes")]
    pub archive: Vec<u8>,
    /// A Docker task's OCI config and bind-mounted files (`runc checkpoint` images): the new
    /// host lays a runc bundle out around its own export of the image, as a live move's
    /// target does. `None`: a process of the process engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PortableBundle>,
}

impl std::fmt::Debug for CriuImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriuImages")
            .field("dumped_pid", &self.dumped_pid)
            .field("port", &self.port)
            .field("call_ports", &self.call_ports)
            .field("stdout_key", &self.stdout_key)
            .field("archive_bytes", &self.archive.len())
            .field("docker", &self.bundle.is_some())
            .finish()
    }
}

/// Why an archive cannot be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("the checkpoint archive is not a zstd-compressed tar: {0}")]
    Corrupt(io::Error),
    #[error("the checkpoint archive holds {what} {name:?}: only plain files of one directory")]
    NotAFlatFile { what: &'static str, name: String },
    #[error("the checkpoint archive unpacks to more than {limit} bytes")]
    TooBig { limit: u64 },
    #[error("cannot write {name:?} of the checkpoint: {source}")]
    Write { name: String, source: io::Error },
}

/// The regular files of `dir` (CRIU's image directory is flat) as a zstd-compressed tar, in
/// name order.
pub fn pack(dir: &Path) -> io::Result<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let mut tar = tar::Builder::new(Vec::new());
    for name in names {
        tar.append_path_with_name(dir.join(&name), &name)?;
    }
    zstd::encode_all(tar.into_inner()?.as_slice(), LEVEL)
}

/// Unpacks `archive` into `dir` (which exists), writing at most `limit` bytes of files; every
/// entry must be a regular file named by one plain path component. Returns the bytes written.
pub fn unpack(archive: &[u8], dir: &Path, limit: u64) -> Result<u64, UnpackError> {
    let decoder = zstd::Decoder::new(archive).map_err(UnpackError::Corrupt)?;
    // The tar's own headers count against the limit too: a bomb stops at it.
    let mut tar = tar::Archive::new(decoder.take(limit.saturating_add(64 << 10)));
    let mut written = 0u64;
    for entry in tar.entries().map_err(UnpackError::Corrupt)? {
        let mut entry = entry.map_err(UnpackError::Corrupt)?;
        let path = entry.path().map_err(UnpackError::Corrupt)?.into_owned();
        let name = path.display().to_string();
        let mut parts = path.components();
        let flat = matches!(
            (parts.next(), parts.next()),
            (Some(Component::Normal(_)), None)
        );
        if !flat {
            return Err(UnpackError::NotAFlatFile {
                what: "the path",
                name,
            });
        }
        if !entry.header().entry_type().is_file() {
            return Err(UnpackError::NotAFlatFile {
                what: "a non-regular entry",
                name,
            });
        }
        written = written.saturating_add(entry.size());
        if written > limit {
            return Err(UnpackError::TooBig { limit });
        }
        let write = |source| UnpackError::Write {
            name: name.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(&path))
            .map_err(write)?;
        let copied = io::copy(&mut entry, &mut file).map_err(write)?;
        if copied != entry.size() {
            return Err(UnpackError::Corrupt(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name} ends early"),
            )));
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).expect("write");
        }
        dir
    }

    #[test]
    fn a_packed_directory_unpacks_to_the_same_files() {
        let pages = vec![7u8; 1 << 20];
        let from = dir_with(&[("pages-1.img", &pages), ("core-1.img", b"core")]);
        std::fs::create_dir(from.path().join("sub")).expect("mkdir");
        let archive = pack(from.path()).expect("pack");
        assert!(
            archive.len() < 64 << 10,
            "pages compress: {}",
            archive.len()
        );
        let to = tempfile::tempdir().expect("temp dir");
        let n = unpack(&archive, to.path(), 2 << 20).expect("unpack");
        assert_eq!(n, (1 << 20) + 4);
        assert_eq!(std::fs::read(to.path().join("pages-1.img")).unwrap(), pages);
        assert_eq!(
            std::fs::read(to.path().join("core-1.img")).unwrap(),
            b"core"
        );
        // Only files: the directory did not travel.
        assert!(!to.path().join("sub").exists());
    }

    #[test]
    fn more_than_the_limit_is_refused() {
        let from = dir_with(&[("pages-1.img", &vec![0u8; 1 << 20])]);
        let archive = pack(from.path()).expect("pack");
        let to = tempfile::tempdir().expect("temp dir");
        let e = unpack(&archive, to.path(), 1000).unwrap_err();
        assert!(matches!(e, UnpackError::TooBig { limit: 1000 }), "{e}");
    }

    /// A tar whose one entry has the raw name `name` and type `kind` (written into the header
    /// directly: the tar crate refuses to build a `..` path).
    fn raw_tar(name: &str, kind: tar::EntryType) -> Vec<u8> {
        let mut header = tar::Header::new_old();
        let field = &mut header.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_size(2);
        header.set_mode(0o644);
        header.set_cksum();
        let mut tar = tar::Builder::new(Vec::new());
        tar.append(&header, &b"hi"[..]).expect("append");
        zstd::encode_all(tar.into_inner().expect("tar").as_slice(), LEVEL).expect("zstd")
    }

    #[test]
    fn only_plain_files_of_one_directory_are_unpacked() {
        let base = tempfile::tempdir().expect("temp dir");
        let to = base.path().join("images");
        std::fs::create_dir(&to).expect("mkdir");
        for (name, kind) in [
            ("../escaped", tar::EntryType::Regular),
            ("/etc/escaped", tar::EntryType::Regular),
            ("a/b", tar::EntryType::Regular),
            ("link", tar::EntryType::Symlink),
            ("fifo", tar::EntryType::Fifo),
        ] {
            let e = unpack(&raw_tar(name, kind), &to, 1 << 20).unwrap_err();
            assert!(matches!(e, UnpackError::NotAFlatFile { .. }), "{name}: {e}");
        }
        assert!(!base.path().join("escaped").exists());
        assert_eq!(std::fs::read_dir(&to).unwrap().count(), 0);
        // Not an archive at all.
        let e = unpack(b"not zstd", &to, 1 << 20).unwrap_err();
        assert!(matches!(e, UnpackError::Corrupt(_)), "{e}");
    }
}
