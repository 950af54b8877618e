//! Looking inside image tarballs without unpacking them: does a build context have a Dockerfile
//! at its root (checked before the daemon is asked, so the refusal is brume's clear one), and what
//! does a `docker save` tarball's `manifest.json` say (its image id, config and layers). These
//! read the file synchronously; the engines call them from `spawn_blocking`.

use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::error::EngineError;

/// The most bytes read from one small entry (a Dockerfile, a manifest, an image config).
const MAX_SMALL_ENTRY: u64 = 4 << 20;

/// An entry's path with `./` and trailing `/` removed, as a plain relative path.
pub fn normalized(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir | Component::RootDir))
        .collect()
}

/// The content of the entry at `name` (relative, e.g. `Dockerfile`), if the tar has one.
pub fn read_entry(tar: &Path, name: &str) -> Result<Option<Vec<u8>>, EngineError> {
    let file = File::open(tar).map_err(|e| EngineError::io("open the tarball", tar, e))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries()
        .map_err(|e| EngineError::io("read the tarball", tar, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| EngineError::io("read the tarball", tar, e))?;
        let path = entry
            .path()
            .map_err(|e| EngineError::io("read the tarball", tar, e))?;
        if normalized(&path) == Path::new(name) && entry.header().entry_type().is_file() {
            let mut buf = Vec::new();
            (&mut entry)
                .take(MAX_SMALL_ENTRY)
                .read_to_end(&mut buf)
                .map_err(|e| EngineError::io("read the tarball", tar, e))?;
            return Ok(Some(buf));
        }
    }
    Ok(None)
}

/// One image of a `docker save` tarball's `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct SaveManifest {
    /// The config's path in the tarball: `<hex>.json` (Docker up to 24) or `blobs/sha256/<hex>`.
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    /// The layer tars, bottom first.
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

impl SaveManifest {
    /// The image id the daemon gives the loaded image: `sha256:` and the config's digest.
    pub fn image_id(&self) -> Option<String> {
        let file = self.config.rsplit('/').next()?;
        let hex = file.strip_suffix(".json").unwrap_or(file);
        (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| format!("sha256:{hex}"))
    }
}

/// Reads the first image of a `docker save` tarball's `manifest.json`.
pub fn read_save_manifest(tar: &Path) -> Result<SaveManifest, EngineError> {
    let load_failed = |message: String| EngineError::LoadFailed {
        path: tar.to_path_buf(),
        message,
    };
    let bytes = read_entry(tar, "manifest.json")?
        .ok_or_else(|| load_failed("it has no manifest.json at its root".into()))?;
    let mut images: Vec<SaveManifest> = serde_json::from_slice(&bytes)
        .map_err(|e| load_failed(format!("its manifest.json is not valid: {e}")))?;
    if images.is_empty() {
        return Err(load_failed("its manifest.json lists no image".into()));
    }
    Ok(images.swap_remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ids_from_both_manifest_styles() {
        let hex = "a".repeat(64);
        let m = |config: String| SaveManifest {
            config,
            repo_tags: None,
            layers: vec![],
        };
        assert_eq!(
            m(format!("{hex}.json")).image_id(),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(
            m(format!("blobs/sha256/{hex}")).image_id(),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(m("config.json".into()).image_id(), None);
    }

    #[test]
    fn entries_are_found_with_or_without_a_dot_slash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "./Dockerfile", &b"FROM"[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        assert_eq!(read_entry(&path, "Dockerfile").unwrap().unwrap(), b"FROM");
        assert!(read_entry(&path, "manifest.json").unwrap().is_none());
    }
}
