//! The process engine's images: directory trees on disk instead of Docker layers.
//!
//! `prepare` turns an image tarball into `<root>/images/<16 hex>/` holding `rootfs/` (the image's
//! file system) and `image.json` (its entrypoint, command, environment and working directory):
//!
//! * a build context is unpacked into a scratch `context/`, its Dockerfile read by
//!   [`parse_scratch`], and each COPY/ADD laid out into `rootfs/`;
//! * a `docker save` tarball is unpacked into a scratch `save/`, and the layers its
//!   `manifest.json` lists are applied in order into `rootfs/`, honouring whiteouts (`.wh.<name>`
//!   deletes a lower layer's file, `.wh..wh..opq` empties a lower layer's directory); the
//!   entrypoint, command, environment and working directory come from the image config.
//!
//! The tree is built in a temporary directory and renamed into place, so a half-built image is
//! never used and a second `prepare` of the same digest finds the finished one. Paths from the
//! tarballs never leave the tree: tar entries are unpacked with the tar crate's checks, and a
//! COPY source or destination, or a whiteout, that would pass through a symbolic link is refused.
//! Each task later runs in its own copy of `rootfs/` made of hard links ([`clone_tree`]).

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::dockerfile::{parse_scratch, DockerfileError, ScratchRecipe};
use super::error::EngineError;
use super::tarball::{normalized, read_entry};
use super::types::{ImageInput, ImageKind, ImageRef};

/// What the process engine needs to run an image, saved as `image.json` beside `rootfs/`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Absolute, inside the image.
    pub workdir: String,
}

impl ImageConfig {
    /// Docker's rule: the entrypoint, then the command as its arguments (or the command alone).
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint
            .iter()
            .chain(self.cmd.iter())
            .cloned()
            .collect()
    }
}

/// `<images>/<16 hex>` for a brume image name.
pub fn image_dir(images: &Path, image: &ImageRef) -> Result<PathBuf, EngineError> {
    let id = image.brume_id().ok_or_else(|| EngineError::ImageMissing {
        image: image.0.clone(),
    })?;
    Ok(images.join(id))
}

/// Reads a prepared image's `image.json`; `ImageMissing` when it was never prepared.
pub fn load_config(images: &Path, image: &ImageRef) -> Result<(PathBuf, ImageConfig), EngineError> {
    let dir = image_dir(images, image)?;
    let path = dir.join("image.json");
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EngineError::ImageMissing {
                image: image.0.clone(),
            })
        }
        Err(e) => return Err(EngineError::io("read", path, e)),
    };
    let config = serde_json::from_slice(&bytes).map_err(|e| {
        EngineError::io(
            "parse",
            &path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    Ok((dir, config))
}

/// Builds the image's tree unless it is there already. Blocking: call from `spawn_blocking`.
pub fn prepare(images: &Path, input: &ImageInput, image: &ImageRef) -> Result<(), EngineError> {
    let dir = image_dir(images, image)?;
    if dir.join("image.json").is_file() {
        return Ok(());
    }
    fs::create_dir_all(images).map_err(|e| EngineError::io("create", images, e))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = images.join(format!(
        ".{}.tmp-{}-{nanos}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("image"),
        std::process::id()
    ));
    let built = build_into(&tmp, input, image);
    let config = match built {
        Ok(config) => config,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let json = serde_json::to_vec_pretty(&config).map_err(|e| {
        EngineError::io(
            "write",
            tmp.join("image.json"),
            std::io::Error::other(e.to_string()),
        )
    })?;
    let write = fs::write(tmp.join("image.json"), json);
    if let Err(e) = write {
        let _ = fs::remove_dir_all(&tmp);
        return Err(EngineError::io("write", tmp.join("image.json"), e));
    }
    if let Err(e) = fs::rename(&tmp, &dir) {
        let _ = fs::remove_dir_all(&tmp);
        // Another prepare of the same image finished first: its tree is as good as ours.
        if !dir.join("image.json").is_file() {
            return Err(EngineError::io("move the prepared image to", &dir, e));
        }
    }
    Ok(())
}

fn build_into(
    tmp: &Path,
    input: &ImageInput,
    image: &ImageRef,
) -> Result<ImageConfig, EngineError> {
    let rootfs = tmp.join("rootfs");
    fs::create_dir_all(&rootfs).map_err(|e| EngineError::io("create", &rootfs, e))?;
    match input.kind {
        ImageKind::BuildContext => from_context(tmp, &rootfs, input, image),
        ImageKind::DockerSave => from_save(tmp, &rootfs, input),
    }
}

fn recipe_of(input: &ImageInput) -> Result<ScratchRecipe, EngineError> {
    let text =
        read_entry(&input.tar, "Dockerfile")?.ok_or_else(|| EngineError::MissingDockerfile {
            path: input.tar.clone(),
        })?;
    let text = String::from_utf8(text).map_err(|_| EngineError::Dockerfile {
        line: 1,
        message: "the Dockerfile is not UTF-8 text".into(),
    })?;
    parse_scratch(&text).map_err(|e| match e {
        DockerfileError::Syntax { line, message } => EngineError::Dockerfile { line, message },
        DockerfileError::Unsupported { line, message } => EngineError::Unsupported {
            why: format!("Dockerfile line {line}: {message}"),
        },
    })
}

/// The most file bytes one tarball (a build context, a `docker save` tarball, or all the
/// layers of an image together) may unpack to. A tar's entries are as large as the tar, except
/// sparse ones, which are refused: a few kilobytes of sparse map could fill the disk.
pub const UNPACK_BUDGET: u64 = 8 << 30;

/// Permission bits never carried from a tarball or a build context onto the disk: setuid and
/// setgid (a task runs as the node's user; a setuid-root file in its tree is a way up).
const DROPPED_MODE_BITS: u32 = 0o6000;

/// What is left of an unpacking budget.
#[derive(Debug)]
struct Budget {
    left: u64,
    limit: u64,
}

impl Budget {
    fn new(limit: u64) -> Self {
        Budget { left: limit, limit }
    }

    /// Counts one entry; refuses a sparse one, or one past the budget.
    fn take(&mut self, header: &tar::Header, path: &Path) -> Result<(), String> {
        if header.entry_type().is_gnu_sparse() {
            return Err(format!(
                "{} is a sparse file; sparse files are refused (their size on disk is not the \
                 size in the archive)",
                path.display()
            ));
        }
        let size = header.size().unwrap_or(u64::MAX);
        match self.left.checked_sub(size) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(format!(
                "{} ({size} bytes) takes the unpacked size past the budget of {} bytes",
                path.display(),
                self.limit
            )),
        }
    }
}

fn unpack_all(tar: &Path, into: &Path, budget: u64) -> Result<(), EngineError> {
    let over = |why: String| EngineError::Unsupported {
        why: format!("{}: {why}", tar.display()),
    };
    // First the budget, over the headers alone.
    let mut budget = Budget::new(budget);
    let file = File::open(tar).map_err(|e| EngineError::io("open the tarball", tar, e))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| EngineError::io("read the tarball", tar, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| EngineError::io("read the tarball", tar, e))?;
        let path = entry.path().map(|p| p.into_owned()).unwrap_or_default();
        budget.take(entry.header(), &path).map_err(over)?;
    }
    fs::create_dir_all(into).map_err(|e| EngineError::io("create", into, e))?;
    let file = File::open(tar).map_err(|e| EngineError::io("open the tarball", tar, e))?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(true);
    archive.set_mask(DROPPED_MODE_BITS);
    archive.set_overwrite(true);
    archive
        .unpack(into)
        .map_err(|e| EngineError::io("unpack the tarball", tar, e))
}

/// `base/rel` if no component of `rel` is `..` past the top, and no existing component but the
/// last is a symbolic link: the path cannot leave `base`.
fn inside(base: &Path, rel: &Path) -> Result<PathBuf, String> {
    let mut clean = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => clean.push(p),
            Component::ParentDir => {
                if !clean.pop() {
                    return Err(format!("{} points outside", rel.display()));
                }
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    let mut at = base.to_path_buf();
    let parts: Vec<_> = clean.components().collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let last = i + 1 == parts.len();
        if !last
            && fs::symlink_metadata(&at)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false)
        {
            return Err(format!(
                "{} passes through the symbolic link {}",
                rel.display(),
                clean.iter().take(i + 1).collect::<PathBuf>().display()
            ));
        }
    }
    Ok(at)
}

fn from_context(
    tmp: &Path,
    rootfs: &Path,
    input: &ImageInput,
    image: &ImageRef,
) -> Result<ImageConfig, EngineError> {
    let recipe = recipe_of(input)?;
    let context = tmp.join("context");
    unpack_all(&input.tar, &context, UNPACK_BUDGET)?;
    let failed = |line: usize, message: String| EngineError::BuildFailed {
        image: image.0.clone(),
        message: format!("Dockerfile line {line}: {message}"),
    };
    for step in &recipe.copies {
        for src in &step.srcs {
            let src_path = inside(&context, Path::new(src))
                .map_err(|why| failed(step.line, format!("COPY source {why} the build context")))?;
            let meta = fs::symlink_metadata(&src_path).map_err(|_| {
                failed(
                    step.line,
                    format!("COPY source {src} is not in the build context"),
                )
            })?;
            let dest_rel = Path::new(step.dest.trim_start_matches('/'));
            let dest_path = inside(rootfs, dest_rel)
                .map_err(|why| failed(step.line, format!("COPY destination {why}")))?;
            // Never follow a link here: one laid by an earlier COPY would lead the copy out
            // of the root (a link to a directory is replaced, as a file would be).
            let dest_is_real_dir =
                fs::symlink_metadata(&dest_path).is_ok_and(|m| m.file_type().is_dir());
            let target = if meta.is_dir() {
                dest_path
            } else if step.dest_is_dir || dest_is_real_dir {
                let name = src_path.file_name().unwrap_or_default();
                inside(rootfs, &dest_rel.join(name))
                    .map_err(|why| failed(step.line, format!("COPY destination {why}")))?
            } else {
                dest_path
            };
            copy_tree(&src_path, &target, step.chmod)
                .map_err(|e| failed(step.line, format!("copying {src}: {e}")))?;
        }
    }
    let _ = fs::remove_dir_all(&context);
    Ok(ImageConfig {
        entrypoint: recipe.entrypoint.unwrap_or_default(),
        cmd: recipe.cmd.unwrap_or_default(),
        env: recipe.env,
        workdir: recipe.workdir,
    })
}

/// Copies a file, symlink or directory tree (contents merged into `dst`), never following links.
fn copy_tree(src: &Path, dst: &Path, chmod: Option<u32>) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    if meta.file_type().is_symlink() {
        let _ = fs::remove_file(dst);
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else if meta.is_dir() {
        if fs::symlink_metadata(dst).is_ok_and(|m| !m.is_dir()) {
            fs::remove_file(dst)?;
        }
        fs::create_dir_all(dst)?;
        if let Some(mode) = chmod {
            fs::set_permissions(dst, fs::Permissions::from_mode(mode & !DROPPED_MODE_BITS))?;
        }
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()), chmod)?;
        }
    } else {
        if fs::symlink_metadata(dst).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(dst)?;
        }
        fs::copy(src, dst)?;
        let mode = chmod.unwrap_or(meta.permissions().mode() & 0o7777);
        fs::set_permissions(dst, fs::Permissions::from_mode(mode & !DROPPED_MODE_BITS))?;
    }
    Ok(())
}

/// The parts of a `docker save` image config the process engine uses.
#[derive(Debug, Default, Deserialize)]
struct SaveConfig {
    #[serde(default)]
    config: Option<SaveContainerConfig>,
}

#[derive(Debug, Default, Deserialize)]
struct SaveContainerConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
}

fn from_save(tmp: &Path, rootfs: &Path, input: &ImageInput) -> Result<ImageConfig, EngineError> {
    let load_failed = |message: String| EngineError::LoadFailed {
        path: input.tar.clone(),
        message,
    };
    let save = tmp.join("save");
    unpack_all(&input.tar, &save, UNPACK_BUDGET)?;
    let manifest_bytes = fs::read(save.join("manifest.json"))
        .map_err(|_| load_failed("it has no manifest.json at its root".into()))?;
    let manifests: Vec<super::tarball::SaveManifest> = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| load_failed(format!("its manifest.json is not valid: {e}")))?;
    let manifest = manifests
        .into_iter()
        .next()
        .ok_or_else(|| load_failed("its manifest.json lists no image".into()))?;
    let config_path = inside(&save, Path::new(&manifest.config))
        .map_err(|why| load_failed(format!("its config path {why}")))?;
    let config_bytes = fs::read(&config_path)
        .map_err(|e| load_failed(format!("reading its config {}: {e}", manifest.config)))?;
    let config: SaveConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| load_failed(format!("its image config is not valid: {e}")))?;
    let mut budget = Budget::new(UNPACK_BUDGET);
    for layer in &manifest.layers {
        let path = inside(&save, Path::new(layer))
            .map_err(|why| load_failed(format!("the layer path {why}")))?;
        apply_layer(&path, rootfs, &mut budget).map_err(|e| match e {
            LayerError::Budget(why) => EngineError::Unsupported {
                why: format!("layer {layer}: {why}"),
            },
            LayerError::Io(e) => load_failed(format!("applying layer {layer}: {e}")),
            LayerError::Compressed(what) => EngineError::Unsupported {
                why: format!("the layer {layer} is {what}-compressed"),
            },
            LayerError::Escapes(why) => load_failed(format!("layer {layer}: {why}")),
        })?;
    }
    let _ = fs::remove_dir_all(&save);
    let c = config.config.unwrap_or_default();
    let env = c
        .env
        .unwrap_or_default()
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let workdir = c
        .working_dir
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok(ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env,
        workdir,
    })
}

enum LayerError {
    Io(std::io::Error),
    Compressed(&'static str),
    Escapes(String),
    Budget(String),
}

impl From<std::io::Error> for LayerError {
    fn from(e: std::io::Error) -> Self {
        LayerError::Io(e)
    }
}

/// Applies one layer tar: first its whiteouts (they hide lower layers' files), then its files.
fn apply_layer(path: &Path, rootfs: &Path, budget: &mut Budget) -> Result<(), LayerError> {
    let mut magic = [0u8; 4];
    let n = File::open(path)?.read(&mut magic)?;
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        return Err(LayerError::Compressed("gzip"));
    }
    if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(LayerError::Compressed("zstd"));
    }
    // Pass 1: whiteouts.
    let mut archive = tar::Archive::new(File::open(path)?);
    for entry in archive.entries()? {
        let entry = entry?;
        let rel = normalized(&entry.path()?);
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        if name == ".wh..wh..opq" {
            let dir = inside(rootfs, parent).map_err(LayerError::Escapes)?;
            if let Ok(children) = fs::read_dir(&dir) {
                for child in children {
                    remove_any(&child?.path())?;
                }
            }
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            let target = inside(rootfs, &parent.join(hidden)).map_err(LayerError::Escapes)?;
            remove_any(&target)?;
        }
    }
    // Pass 2: everything else.
    let mut archive = tar::Archive::new(File::open(path)?);
    archive.set_preserve_permissions(true);
    archive.set_mask(DROPPED_MODE_BITS);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let rel = normalized(&entry.path()?);
        budget
            .take(entry.header(), &rel)
            .map_err(LayerError::Budget)?;
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(".wh.") {
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            continue;
        }
        // A file replacing a directory of a lower layer, or the other way round.
        if let Ok(target) = inside(rootfs, &rel) {
            if let Ok(meta) = fs::symlink_metadata(&target) {
                if meta.is_dir() != kind.is_dir() {
                    remove_any(&target)?;
                }
            }
        }
        entry.unpack_in(rootfs)?;
    }
    Ok(())
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Makes `dst` a copy of the tree `src` out of hard links (a copy where links cannot cross file
/// systems). Symbolic links are recreated as they are.
pub fn clone_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)
    } else if meta.is_dir() {
        fs::create_dir_all(dst)?;
        fs::set_permissions(dst, meta.permissions())?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            clone_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        match fs::hard_link(src, dst) {
            Ok(()) => Ok(()),
            Err(_) => fs::copy(src, dst).map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(path: &Path, entries: &[(&str, &[u8], u32)]) {
        let mut b = tar::Builder::new(File::create(path).unwrap());
        for (name, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.finish().unwrap();
    }

    fn context(dir: &Path, dockerfile: &str, files: &[(&str, &[u8], u32)]) -> ImageInput {
        let path = dir.join("ctx.tar");
        let mut all: Vec<(&str, &[u8], u32)> = vec![("Dockerfile", dockerfile.as_bytes(), 0o644)];
        all.extend_from_slice(files);
        tar_of(&path, &all);
        ImageInput {
            kind: ImageKind::BuildContext,
            tar: path,
            digest: "00112233445566778899".into(),
        }
    }

    #[test]
    fn a_scratch_context_is_laid_out() {
        let dir = tempfile::tempdir().unwrap();
        let input = context(
            dir.path(),
            "FROM scratch\nENV A=1\nWORKDIR /srv\nCOPY app /bin/app\nCOPY conf/a.txt conf/b.txt etc/\n\
             ENTRYPOINT [\"/bin/app\"]\nCMD [\"x\"]\n",
            &[
                ("app", b"#!", 0o755),
                ("conf/a.txt", b"a", 0o644),
                ("conf/b.txt", b"b", 0o644),
            ],
        );
        let images = dir.path().join("images");
        let image = input.image_ref().unwrap();
        prepare(&images, &input, &image).unwrap();
        let (idir, config) = load_config(&images, &image).unwrap();
        let rootfs = idir.join("rootfs");
        let mode = fs::metadata(rootfs.join("bin/app"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(fs::read(rootfs.join("srv/etc/a.txt")).unwrap(), b"a");
        assert_eq!(fs::read(rootfs.join("srv/etc/b.txt")).unwrap(), b"b");
        assert_eq!(config.argv(), vec!["/bin/app", "x"]);
        assert_eq!(config.workdir, "/srv");
        assert_eq!(config.env, vec![("A".to_string(), "1".to_string())]);
        assert!(!idir.join("context").exists());
        // Prepared twice: found, not rebuilt.
        prepare(&images, &input, &image).unwrap();
    }

    #[test]
    fn a_missing_source_and_a_missing_dockerfile_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = context(dir.path(), "FROM scratch\nCOPY nope /nope\n", &[]);
        let images = dir.path().join("images");
        let err = prepare(&images, &input, &input.image_ref().unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .contains("COPY source nope is not in the build context"),
            "{err}"
        );
        // Nothing half-built stays behind.
        assert_eq!(fs::read_dir(&images).unwrap().count(), 0);

        let path = dir.path().join("nodf.tar");
        tar_of(&path, &[("app", b"x", 0o755)]);
        let input = ImageInput {
            kind: ImageKind::BuildContext,
            tar: path,
            digest: "aabbccddeeff00112233".into(),
        };
        let err = prepare(&images, &input, &input.image_ref().unwrap()).unwrap_err();
        assert!(
            matches!(err, EngineError::MissingDockerfile { .. }),
            "{err}"
        );
    }

    /// A tar of `(name, data, mode)` files and `(name, target)` symbolic links.
    fn tar_with_links(path: &Path, files: &[(&str, &[u8], u32)], links: &[(&str, &Path)]) {
        let mut b = tar::Builder::new(File::create(path).unwrap());
        for (name, data, mode) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        for (name, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, name, target).unwrap();
        }
        b.finish().unwrap();
    }

    #[test]
    fn a_link_laid_by_one_copy_does_not_lead_the_next_out_of_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        for dockerfile in [
            // The link is copied in as /x, then a file is copied "into" /x/.
            "FROM scratch\nCOPY link /x\nCOPY file /x/\n",
            // The same through an existing directory's name.
            "FROM scratch\nCOPY link /x\nCOPY file /x/sub/f\n",
        ] {
            let path = dir.path().join("ctx.tar");
            tar_with_links(
                &path,
                &[
                    ("Dockerfile", dockerfile.as_bytes(), 0o644),
                    ("file", b"pwned", 0o644),
                ],
                &[("link", &outside)],
            );
            let input = ImageInput {
                kind: ImageKind::BuildContext,
                tar: path,
                digest: "0011223344556677aa".into(),
            };
            let images = dir.path().join("images");
            let err = prepare(&images, &input, &input.image_ref().unwrap()).unwrap_err();
            assert!(
                err.to_string().contains("symbolic link"),
                "{dockerfile}: {err}"
            );
            assert_eq!(
                fs::read_dir(&outside).unwrap().count(),
                0,
                "{dockerfile}: a file was written outside the root"
            );
        }
        // Copying a file over a laid link replaces the link, and writes nothing outside.
        let path = dir.path().join("ctx2.tar");
        tar_with_links(
            &path,
            &[
                (
                    "Dockerfile",
                    b"FROM scratch\nCOPY link /x\nCOPY file /x\n",
                    0o644,
                ),
                ("file", b"mine", 0o644),
            ],
            &[("link", &outside)],
        );
        let input = ImageInput {
            kind: ImageKind::BuildContext,
            tar: path,
            digest: "0011223344556677bb".into(),
        };
        let images = dir.path().join("images");
        let image = input.image_ref().unwrap();
        prepare(&images, &input, &image).unwrap();
        let (idir, _) = load_config(&images, &image).unwrap();
        assert_eq!(fs::read(idir.join("rootfs/x")).unwrap(), b"mine");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn setuid_and_setgid_bits_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let input = context(
            dir.path(),
            "FROM scratch\nCOPY su /bin/su\nCOPY --chmod=6755 plain /bin/plain\n",
            &[("su", b"#!", 0o4755), ("plain", b"#!", 0o755)],
        );
        let images = dir.path().join("images");
        let image = input.image_ref().unwrap();
        prepare(&images, &input, &image).unwrap();
        let (idir, _) = load_config(&images, &image).unwrap();
        for f in ["bin/su", "bin/plain"] {
            let mode = fs::metadata(idir.join("rootfs").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o755, "{f}: {mode:o}");
        }
        // And from an image layer.
        let layer = dir.path().join("layer.tar");
        tar_of(&layer, &[("bin/sg", b"x", 0o2755)]);
        let rootfs = dir.path().join("layered");
        fs::create_dir_all(&rootfs).unwrap();
        assert!(apply_layer(&layer, &rootfs, &mut Budget::new(UNPACK_BUDGET)).is_ok());
        let mode = fs::metadata(rootfs.join("bin/sg"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "{mode:o}");
    }

    #[test]
    fn a_context_over_budget_or_with_a_sparse_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("big.tar");
        tar_of(
            &tar,
            &[("a", &[1u8; 3000], 0o644), ("b", &[2u8; 3000], 0o644)],
        );
        let into = dir.path().join("out");
        let err = unpack_all(&tar, &into, 5000).unwrap_err();
        assert!(err.to_string().contains("budget of 5000 bytes"), "{err}");
        assert!(!into.exists(), "nothing is unpacked when over budget");
        unpack_all(&tar, &into, 6000).unwrap();
        // A sparse entry, whatever its size, is refused; through prepare as well.
        let path = dir.path().join("sparse.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        let df = b"FROM scratch\nCOPY s /s\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(df.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "Dockerfile", &df[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "s", &[][..]).unwrap();
        b.finish().unwrap();
        drop(b);
        let input = ImageInput {
            kind: ImageKind::BuildContext,
            tar: path,
            digest: "0011223344556677cc".into(),
        };
        let err = prepare(
            &dir.path().join("images"),
            &input,
            &input.image_ref().unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("sparse"), "{err}");
    }

    #[test]
    fn copies_cannot_escape_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        let base = dir.path().join("base");
        fs::create_dir_all(&base).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("link")).unwrap();
        assert!(inside(&base, Path::new("link/x")).is_err());
        assert!(inside(&base, Path::new("../x")).is_err());
        assert_eq!(inside(&base, Path::new("a/../b")).unwrap(), base.join("b"));
        // The last component may be a link: it is replaced, not followed.
        assert_eq!(inside(&base, Path::new("link")).unwrap(), base.join("link"));
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        let l1 = dir.path().join("l1.tar");
        tar_of(
            &l1,
            &[
                ("etc/keep", b"1", 0o644),
                ("etc/gone", b"1", 0o644),
                ("opq/old", b"1", 0o644),
            ],
        );
        let l2 = dir.path().join("l2.tar");
        tar_of(
            &l2,
            &[
                ("etc/.wh.gone", b"", 0o644),
                ("opq/.wh..wh..opq", b"", 0o644),
                ("opq/new", b"2", 0o644),
                ("etc/keep", b"2", 0o644),
            ],
        );
        let mut budget = Budget::new(UNPACK_BUDGET);
        assert!(apply_layer(&l1, &rootfs, &mut budget).is_ok());
        assert!(apply_layer(&l2, &rootfs, &mut budget).is_ok());
        assert_eq!(fs::read(rootfs.join("etc/keep")).unwrap(), b"2");
        assert!(!rootfs.join("etc/gone").exists());
        assert!(!rootfs.join("opq/old").exists());
        assert_eq!(fs::read(rootfs.join("opq/new")).unwrap(), b"2");
        assert!(!rootfs.join("opq/.wh..wh..opq").exists());
    }
}
