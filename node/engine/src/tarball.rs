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

/// Entries of a `docker save` tarball that name images: `docker load` would point those names
/// at the loaded image, so a tarball could take over the tag of any image on the host.
const NAMING_ENTRIES: &[&str] = &["repositories", "index.json", "oci-layout"];

/// Writes a copy of the `docker save` tarball `tar` to `out` that names no image: the
/// `RepoTags` of its `manifest.json` are removed and `repositories` (and the OCI index, which
/// carries names as annotations) are left out. Loading the copy adds an image by id only;
/// returns the manifest's first image, whose [`SaveManifest::image_id`] the daemon must report.
pub fn untagged_copy(tar: &Path, out: &Path) -> Result<SaveManifest, EngineError> {
    let load_failed = |message: String| EngineError::LoadFailed {
        path: tar.to_path_buf(),
        message,
    };
    let manifest = read_save_manifest(tar)?;
    let raw = read_entry(tar, "manifest.json")?
        .ok_or_else(|| load_failed("it has no manifest.json at its root".into()))?;
    let mut images: Vec<serde_json::Value> = serde_json::from_slice(&raw)
        .map_err(|e| load_failed(format!("its manifest.json is not valid: {e}")))?;
    for image in &mut images {
        if let Some(fields) = image.as_object_mut() {
            fields.remove("RepoTags");
        }
    }
    let rewritten = serde_json::to_vec(&images)
        .map_err(|e| load_failed(format!("cannot rewrite its manifest.json: {e}")))?;
    let input = File::open(tar).map_err(|e| EngineError::io("open the tarball", tar, e))?;
    let output = File::create(out).map_err(|e| EngineError::io("create", out, e))?;
    let mut archive = tar::Archive::new(input);
    let mut copy = tar::Builder::new(std::io::BufWriter::new(output));
    let entries = archive
        .entries()
        .map_err(|e| EngineError::io("read the tarball", tar, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| EngineError::io("read the tarball", tar, e))?;
        let path = normalized(
            &entry
                .path()
                .map_err(|e| EngineError::io("read the tarball", tar, e))?,
        );
        if NAMING_ENTRIES.iter().any(|n| path == Path::new(n)) {
            continue;
        }
        let mut header = entry.header().clone();
        if path == Path::new("manifest.json") {
            header.set_size(rewritten.len() as u64);
            header.set_cksum();
            copy.append(&header, rewritten.as_slice())
                .map_err(|e| EngineError::io("write", out, e))?;
        } else {
            copy.append(&header, entry)
                .map_err(|e| EngineError::io("write", out, e))?;
        }
    }
    let mut w = copy
        .into_inner()
        .map_err(|e| EngineError::io("write", out, e))?;
    std::io::Write::flush(&mut w).map_err(|e| EngineError::io("write", out, e))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untagged_copy_names_no_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("save.tar");
        let hex = "b".repeat(64);
        let manifest = format!(
            r#"[{{"Config":"{hex}.json","RepoTags":["victim:latest"],"Layers":["l/layer.tar"]}}]"#
        );
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        for (name, data) in [
            ("manifest.json", manifest.as_bytes()),
            ("repositories", br#"{"victim":{"latest":"x"}}"#.as_slice()),
            ("l/layer.tar", b"layer".as_slice()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        b.finish().unwrap();
        drop(b);
        let out = dir.path().join("copy.tar");
        let m = untagged_copy(&path, &out).unwrap();
        assert_eq!(m.image_id(), Some(format!("sha256:{hex}")));
        let copied = read_save_manifest(&out).unwrap();
        assert_eq!(copied.repo_tags, None);
        assert_eq!(copied.layers, vec!["l/layer.tar".to_string()]);
        assert!(read_entry(&out, "repositories").unwrap().is_none());
        assert_eq!(read_entry(&out, "l/layer.tar").unwrap().unwrap(), b"layer");
    }

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
