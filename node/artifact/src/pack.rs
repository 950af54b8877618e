//! What a task's image is made of, before it is cut into chunks: an [`Artifact`].
//!
//! There is no registry, so the initiator ships the image itself, in one of two forms:
//!
//! * a build context directory with a `Dockerfile` (typically `FROM scratch` plus a static
//!   binary). [`pack_context`] walks it and writes a deterministic tar: paths sorted, mtime 0,
//!   uid/gid 0, no user or group names, modes kept, symlinks kept as symlinks. The same tree
//!   always gives the same bytes, hence the same digest, so a host that already built it fetches
//!   nothing. `.dockerignore` is honoured (see [`DockerIgnore`] for the subset understood);
//!   `Dockerfile` and `.dockerignore` themselves are always sent, as Docker does.
//! * a `docker save` tarball. [`read_image_tar`] checks that the file is a tar holding a
//!   `manifest.json` and keeps only its path: images run to hundreds of MiB, so they are read
//!   in a stream when chunked (see [`super::store::ChunkStore::put_artifact`]), never held whole.
//!
//! A context's tar is small (a static binary and a Dockerfile) and is held in memory.
//! A relative symlink that climbs out of the context is refused: the builder could never follow
//! it. Absolute symlink targets are kept as they are: they name paths inside the image.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::chunks::ArtifactKind;

/// The most of a `docker save` tarball's `manifest.json` that is read to check it.
const MAX_IMAGE_MANIFEST_BYTES: u64 = 4 << 20;

/// Why an image could not be packed or read.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error(
        "build context {dir} has no Dockerfile: add a file named `Dockerfile` at its top (for a \
         static binary: `FROM scratch`, `COPY app /app`, `ENTRYPOINT [\"/app\"]`), or give a \
         `docker save` tarball instead"
    )]
    NoDockerfile { dir: PathBuf },
    #[error("build context {path} is not a directory: give the directory holding the Dockerfile")]
    NotADirectory { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is a symlink to {target}, which is outside the build context {dir}; the build \
         cannot see it: copy the file into the context instead"
    )]
    SymlinkEscapes {
        dir: PathBuf,
        path: PathBuf,
        target: PathBuf,
    },
    #[error(
        "{path} is a {what}, which a build context cannot hold; remove it or list it in \
         .dockerignore"
    )]
    UnsupportedFile { path: PathBuf, what: &'static str },
    #[error(
        "{path} line {line}: pattern `{pattern}` uses {what}, which brume's .dockerignore \
         reader does not support (it knows `*`, `?`, `**` and `!`); rewrite the pattern"
    )]
    DockerIgnore {
        path: PathBuf,
        line: usize,
        pattern: String,
        what: &'static str,
    },
    #[error(
        "{path} is not a `docker save` tarball: {reason}; make one with \
         `docker save -o image.tar NAME:TAG`"
    )]
    NotAnImageTar { path: PathBuf, reason: String },
    #[error(
        "the build context {dir} holds more than {budget} bytes of files ({path} takes it to \
         {total}; a sparse file counts at its full size): list what the image does not need \
         in .dockerignore"
    )]
    TooLarge {
        dir: PathBuf,
        path: PathBuf,
        total: u64,
        budget: u64,
    },
}

/// The most bytes of files a build context may hold. The packed context is held in memory and
/// sent to every host, and a sparse file would be read (and sent) at its full size.
pub const CONTEXT_BUDGET: u64 = 2 << 30;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An image ready to be chunked: what it is and where its bytes are.
#[derive(Debug, Clone)]
pub struct Artifact {
    kind: ArtifactKind,
    data: Data,
}

#[derive(Debug, Clone)]
enum Data {
    Bytes(Vec<u8>),
    File { path: PathBuf, len: u64 },
}

impl Artifact {
    /// An artifact held in memory.
    pub fn from_bytes(kind: ArtifactKind, bytes: Vec<u8>) -> Artifact {
        Artifact {
            kind,
            data: Data::Bytes(bytes),
        }
    }

    pub fn kind(&self) -> ArtifactKind {
        self.kind
    }

    /// Its size in bytes (for a file, as it was when checked).
    pub fn len(&self) -> u64 {
        match &self.data {
            Data::Bytes(b) => b.len() as u64,
            Data::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, when held in memory (a packed context).
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.data {
            Data::Bytes(b) => Some(b),
            Data::File { .. } => None,
        }
    }

    /// The file, when the artifact is read from one (an image tarball).
    pub fn path(&self) -> Option<&Path> {
        match &self.data {
            Data::Bytes(_) => None,
            Data::File { path, .. } => Some(path),
        }
    }

    /// A reader over the bytes from the start.
    pub fn reader(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(match &self.data {
            Data::Bytes(b) => Box::new(b.as_slice()),
            Data::File { path, .. } => {
                Box::new(io::BufReader::with_capacity(1 << 16, fs::File::open(path)?))
            }
        })
    }
}

/// Packs the build context `dir` (see the module doc).
pub fn pack_context(dir: &Path) -> Result<Artifact, PackError> {
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(PackError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    match fs::metadata(dir.join("Dockerfile")) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(PackError::NoDockerfile {
                dir: dir.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PackError::NoDockerfile {
                dir: dir.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err(&dir.join("Dockerfile"))(e)),
    }
    let ignore_path = dir.join(".dockerignore");
    let ignore = match fs::read_to_string(&ignore_path) {
        Ok(text) => DockerIgnore::parse(&ignore_path, &text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => DockerIgnore::default(),
        Err(e) => return Err(io_err(&ignore_path)(e)),
    };

    let mut entries = Vec::new();
    walk(dir, Path::new(""), &ignore, &mut entries)?;
    entries.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
    within_budget(dir, &entries, CONTEXT_BUDGET)?;

    let mut tar = tar::Builder::new(Vec::new());
    for (rel, meta) in entries {
        let full = dir.join(&rel);
        let mut h = tar::Header::new_gnu();
        h.set_mode(meta.permissions().mode() & 0o7777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let ft = meta.file_type();
        let res = if ft.is_symlink() {
            let target = fs::read_link(&full).map_err(io_err(&full))?;
            check_link(dir, &rel, &target)?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            tar.append_link(&mut h, &rel, &target)
        } else if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            tar.append_data(&mut h, &rel, io::empty())
        } else {
            // Read whole, so the size in the header is the size of what follows it even if the
            // file changes meanwhile.
            let bytes = fs::read(&full).map_err(io_err(&full))?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(bytes.len() as u64);
            tar.append_data(&mut h, &rel, bytes.as_slice())
        };
        res.map_err(io_err(&full))?;
    }
    let bytes = tar.into_inner().map_err(io_err(dir))?;
    Ok(Artifact::from_bytes(ArtifactKind::Context, bytes))
}

/// Refuses a context whose files (at their full sizes, so a sparse file counts for what it
/// would be read as) come to more than `budget` bytes, before any is read.
fn within_budget(
    dir: &Path,
    entries: &[(PathBuf, fs::Metadata)],
    budget: u64,
) -> Result<(), PackError> {
    let mut total = 0u64;
    for (rel, meta) in entries {
        if meta.file_type().is_file() {
            total = total.saturating_add(meta.len());
            if total > budget {
                return Err(PackError::TooLarge {
                    dir: dir.to_path_buf(),
                    path: dir.join(rel),
                    total,
                    budget,
                });
            }
        }
    }
    Ok(())
}

/// Collects `(relative path, metadata)` of everything under `dir/rel` that is not ignored.
fn walk(
    root: &Path,
    rel: &Path,
    ignore: &DockerIgnore,
    out: &mut Vec<(PathBuf, fs::Metadata)>,
) -> Result<(), PackError> {
    let here = root.join(rel);
    let rd = fs::read_dir(&here).map_err(io_err(&here))?;
    for entry in rd {
        let entry = entry.map_err(io_err(&here))?;
        let rel_child = rel.join(entry.file_name());
        let full = root.join(&rel_child);
        let meta = fs::symlink_metadata(&full).map_err(io_err(&full))?;
        let ft = meta.file_type();
        let excluded = ignore.excludes(&rel_child);
        if ft.is_dir() {
            // An ignored directory is still walked: a `!` pattern may bring back what is in it.
            if !excluded {
                out.push((rel_child.clone(), meta));
            }
            if !excluded || ignore.has_exceptions() {
                walk(root, &rel_child, ignore, out)?;
            }
            continue;
        }
        if excluded {
            continue;
        }
        if !(ft.is_file() || ft.is_symlink()) {
            use std::os::unix::fs::FileTypeExt;
            let what = if ft.is_fifo() {
                "named pipe"
            } else if ft.is_socket() {
                "socket"
            } else if ft.is_block_device() || ft.is_char_device() {
                "device file"
            } else {
                "special file"
            };
            return Err(PackError::UnsupportedFile { path: full, what });
        }
        out.push((rel_child, meta));
    }
    Ok(())
}

/// Refuses a relative symlink whose target climbs out of the context.
fn check_link(dir: &Path, rel: &Path, target: &Path) -> Result<(), PackError> {
    if target.is_absolute() {
        return Ok(());
    }
    // Depth of the link's directory below the context root, then walk the target.
    let mut depth: i64 = rel.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return Err(PackError::SymlinkEscapes {
                dir: dir.to_path_buf(),
                path: dir.join(rel),
                target: target.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// The `.dockerignore` subset brume understands: `#` comments, blank lines, patterns of path
/// components with `*` (any run within one component), `?` (one character) and `**` (any number
/// of components), and `!` exceptions; the last matching line wins, and a pattern that matches a
/// directory ignores everything below it, as in Docker. Character classes (`[...]`) and
/// backslash escapes are refused with the line at fault rather than misread.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    /// `(is_exception, components)` in file order.
    rules: Vec<(bool, Vec<String>)>,
}

impl DockerIgnore {
    /// Parses the text of `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<DockerIgnore, PackError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pat) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            for (needle, what) in [("[", "a character class"), ("\\", "a backslash escape")] {
                if pat.contains(needle) {
                    return Err(PackError::DockerIgnore {
                        path: path.to_path_buf(),
                        line: i + 1,
                        pattern: line.to_string(),
                        what,
                    });
                }
            }
            let comps: Vec<String> = pat
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_string)
                .collect();
            if comps.is_empty() {
                continue;
            }
            rules.push((exception, comps));
        }
        Ok(DockerIgnore { rules })
    }

    fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(e, _)| *e)
    }

    /// Whether `rel` (relative to the context) is left out. `Dockerfile` and `.dockerignore`
    /// never are.
    pub fn excludes(&self, rel: &Path) -> bool {
        if rel == Path::new("Dockerfile") || rel == Path::new(".dockerignore") {
            return false;
        }
        let comps: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let mut excluded = false;
        for (exception, pat) in &self.rules {
            // The pattern matches the path or one of its parent directories.
            let hit = (1..=comps.len()).any(|n| match_components(pat, &comps[..n]));
            if hit {
                excluded = !exception;
            }
        }
        excluded
    }
}

fn match_components(pat: &[String], path: &[String]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => {
            match_components(rest, path) || (!path.is_empty() && match_components(pat, &path[1..]))
        }
        Some((p, rest)) => match path.split_first() {
            Some((c, path_rest)) => {
                glob(p.as_bytes(), c.as_bytes()) && match_components(rest, path_rest)
            }
            None => false,
        },
    }
}

/// `*` and `?` within one path component.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// Checks that `path` is a `docker save` tarball (a tar with a `manifest.json` listing at least
/// one image) and returns it as an artifact read from the file.
pub fn read_image_tar(path: &Path) -> Result<Artifact, PackError> {
    let not_tar = |reason: String| PackError::NotAnImageTar {
        path: path.to_path_buf(),
        reason,
    };
    let file = fs::File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(not_tar("it is not a regular file".into()));
    }
    let len = meta.len();
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| not_tar(format!("not a tar archive ({e})")))?;
    let mut count = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(|e| not_tar(format!("not a tar archive ({e})")))?;
        count += 1;
        let name = entry
            .path()
            .map_err(|e| not_tar(format!("bad entry name ({e})")))?
            .into_owned();
        if name != Path::new("manifest.json") && name != Path::new("./manifest.json") {
            continue;
        }
        if entry.size() > MAX_IMAGE_MANIFEST_BYTES {
            return Err(not_tar(format!(
                "its manifest.json is {} bytes, over {MAX_IMAGE_MANIFEST_BYTES}",
                entry.size()
            )));
        }
        let mut text = Vec::new();
        (&mut entry)
            .take(MAX_IMAGE_MANIFEST_BYTES)
            .read_to_end(&mut text)
            .map_err(io_err(path))?;
        let images: Vec<serde_json::Value> = serde_json::from_slice(&text)
            .map_err(|e| not_tar(format!("its manifest.json is not a JSON list ({e})")))?;
        if images.is_empty() {
            return Err(not_tar("its manifest.json lists no image".into()));
        }
        return Ok(Artifact {
            kind: ArtifactKind::ImageTar,
            data: Data::File {
                path: path.to_path_buf(),
                len,
            },
        });
    }
    Err(not_tar(if count == 0 {
        "it holds no tar entries".into()
    } else {
        format!("none of its {count} entries is manifest.json")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(Path::new(".dockerignore"), text).unwrap()
    }

    #[test]
    fn a_context_over_budget_or_with_a_huge_sparse_file_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("Dockerfile"),
            "FROM scratch\nCOPY big /big\n",
        )
        .unwrap();
        // A sparse file: past the budget in size, nothing on disk; reading it would take minutes.
        let f = fs::File::create(dir.path().join("big")).unwrap();
        f.set_len(CONTEXT_BUDGET + 1).unwrap();
        drop(f);
        let err = pack_context(dir.path()).unwrap_err();
        assert!(matches!(err, PackError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains(".dockerignore"), "{err}");
        // Under a budget that fits, the same walk passes.
        let mut entries = Vec::new();
        walk(
            dir.path(),
            Path::new(""),
            &DockerIgnore::default(),
            &mut entries,
        )
        .unwrap();
        within_budget(dir.path(), &entries, CONTEXT_BUDGET + 1 + 64).unwrap();
        assert!(within_budget(dir.path(), &entries, 10).is_err());
    }

    #[test]
    fn dockerignore_subset_matches_like_docker() {
        let ig = ignore("# comment\n\ntarget\n*.log\n!keep.log\ndocs/**/*.md\n/abs\n");
        assert!(ig.excludes(Path::new("target")));
        assert!(ig.excludes(Path::new("target/release/app")));
        assert!(ig.excludes(Path::new("x.log")));
        assert!(!ig.excludes(Path::new("keep.log")));
        assert!(
            !ig.excludes(Path::new("sub/x.log")),
            "`*.log` is anchored at the top"
        );
        assert!(ig.excludes(Path::new("docs/a.md")));
        assert!(ig.excludes(Path::new("docs/x/y/a.md")));
        assert!(!ig.excludes(Path::new("docs/a.txt")));
        assert!(ig.excludes(Path::new("abs")));
        assert!(!ig.excludes(Path::new("app")));
        let all = ignore("*\n");
        assert!(!all.excludes(Path::new("Dockerfile")));
        assert!(all.excludes(Path::new("app")));
        let any = ignore("**/*.o\n");
        assert!(any.excludes(Path::new("a.o")));
        assert!(any.excludes(Path::new("a/b/c.o")));
        assert!(!any.excludes(Path::new("a/b/c.oo")));
    }

    #[test]
    fn dockerignore_refuses_what_it_cannot_read() {
        let e = DockerIgnore::parse(Path::new("/ctx/.dockerignore"), "ok\n[ab]*\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("line 2") && msg.contains("[ab]*"), "{msg}");
    }

    #[test]
    fn symlinks_may_not_climb_out() {
        let d = Path::new("/ctx");
        assert!(check_link(d, Path::new("a/link"), Path::new("../b")).is_ok());
        assert!(check_link(d, Path::new("a/link"), Path::new("../../etc")).is_err());
        assert!(check_link(d, Path::new("link"), Path::new("../x")).is_err());
        assert!(check_link(d, Path::new("link"), Path::new("/usr/lib")).is_ok());
        assert!(check_link(d, Path::new("link"), Path::new("a/../../x")).is_err());
    }
}
