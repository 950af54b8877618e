//! The runc bundle a checkpoint of a container is restored into: the container's OCI config
//! and bind-mounted files, which travel to another host ([`PortableBundle`]), laid out around a
//! root filesystem copied or exported there.

use super::*;

/// Makes a runc bundle in `bundle` (created) to restore a checkpoint of the container whose OCI
/// config is `config` (for Docker: `<DOCKER_BUNDLES>/<id>/config.json`), as docs/criu.md found
/// it works: the root filesystem copied to `bundle/rootfs` (directories, regular files,
/// symlinks; sockets are recreated by CRIU), then [`PortableBundle::lay_out`]. The copy must be
/// made while the container runs: once the final checkpoint stops it, Docker unmounts its rootfs.
pub fn prepare_bundle(
    config: &Path,
    bundle: &Path,
    cgroups_path: &str,
) -> Result<(), CheckpointError> {
    let portable = PortableBundle::read(config)?;
    let rootfs_src = portable.root_path(config)?;
    std::fs::create_dir_all(bundle).map_err(files("create the bundle", bundle))?;
    copy_tree(&rootfs_src, &bundle.join("rootfs"))?;
    portable.lay_out(bundle, cgroups_path)
}

/// One bind-mounted regular file of a container (Docker's resolv.conf, hosts, hostname), by
/// its index in the config's `mounts`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BoundFile {
    pub mount: usize,
    pub name: String,
    pub bytes: Vec<u8>,
}

/// What another host needs, besides the image's root filesystem, to make a bundle that restores
/// a checkpoint of a container: its OCI config and its bind-mounted files, a few KiB, so it can
/// travel in one frame. Why not the rootfs too: the target has the task's image and makes the
/// rootfs from it (e.g. `docker export` of a created container), which carries the image but
/// not what the container wrote into its writable layer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortableBundle {
    /// The config as JSON text.
    pub config: String,
    pub files: Vec<BoundFile>,
}

impl PortableBundle {
    /// Reads a container's OCI config and the regular files it bind-mounts.
    pub fn read(config: &Path) -> Result<Self, CheckpointError> {
        let text =
            std::fs::read_to_string(config).map_err(files("read the bundle config", config))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CheckpointError::Config {
                path: config.to_path_buf(),
                why: format!("not JSON: {e}"),
            })?;
        let mut out = Vec::new();
        if let Some(mounts) = json.get("mounts").and_then(|m| m.as_array()) {
            for (i, m) in mounts.iter().enumerate() {
                let Some(source) = m.get("source").and_then(|s| s.as_str()).map(PathBuf::from)
                else {
                    continue;
                };
                let bind = m.get("type").and_then(|t| t.as_str()) == Some("bind");
                if !bind || !source.is_file() {
                    continue;
                }
                let name = source
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let bytes =
                    std::fs::read(&source).map_err(files("read a bind-mounted file", &source))?;
                out.push(BoundFile {
                    mount: i,
                    name,
                    bytes,
                });
            }
        }
        Ok(PortableBundle {
            config: text,
            files: out,
        })
    }

    /// The source container's root filesystem (`root.path`), `config` naming it in errors.
    fn root_path(&self, config: &Path) -> Result<PathBuf, CheckpointError> {
        let json: serde_json::Value =
            serde_json::from_str(&self.config).map_err(|e| CheckpointError::Config {
                path: config.to_path_buf(),
                why: format!("not JSON: {e}"),
            })?;
        json.get("root")
            .and_then(|r| r.get("path"))
            .and_then(|p| p.as_str())
            .map(PathBuf::from)
            .ok_or_else(|| CheckpointError::Config {
                path: config.to_path_buf(),
                why: "no root.path".into(),
            })
    }

    /// Writes the bundle's `config.json` in `bundle`, whose `rootfs` the caller has filled: root
    /// at `bundle/rootfs`, the bind-mounted files written to `bundle/files/` and mounted from
    /// there, the cgroup set to `cgroups_path` (a new one: the old one is Docker's), the hooks
    /// removed (Docker's network hook would wire a veth for a container Docker does not know),
    /// and an `org.criu.config` annotation naming `bundle/criu.conf` with `mntns-compat-mode`
    /// (criu 4.1.1's mount-v2 engine fails this restore with `Failed to copy sharing`). A
    /// network namespace with a path (Docker's host network: `/var/run/docker/netns/default`)
    /// is kept: runc dumps it as external and the restore joins that path's namespace here.
    pub fn lay_out(&self, bundle: &Path, cgroups_path: &str) -> Result<(), CheckpointError> {
        let path = bundle.join("config.json");
        let config_error = |why: String| CheckpointError::Config {
            path: path.clone(),
            why,
        };
        let mut json: serde_json::Value = serde_json::from_str(&self.config)
            .map_err(|e| config_error(format!("not JSON: {e}")))?;
        let obj = json
            .as_object_mut()
            .ok_or_else(|| config_error("not a JSON object".into()))?;
        std::fs::create_dir_all(bundle).map_err(files("create the bundle", bundle))?;
        let rootfs = bundle.join("rootfs");
        match obj.get_mut("root").and_then(|r| r.as_object_mut()) {
            Some(root) => {
                root.insert("path".into(), rootfs.display().to_string().into());
            }
            None => return Err(config_error("no root".into())),
        }
        let copies = bundle.join("files");
        if let Some(mounts) = obj.get_mut("mounts").and_then(|m| m.as_array_mut()) {
            for f in &self.files {
                let Some(m) = mounts.get_mut(f.mount).and_then(|m| m.as_object_mut()) else {
                    return Err(config_error(format!("no mount {}", f.mount)));
                };
                std::fs::create_dir_all(&copies).map_err(files("create", &copies))?;
                // The name came from another host: only its last component is used.
                let name = Path::new(&f.name)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let copy = copies.join(format!("{}-{name}", f.mount));
                std::fs::write(&copy, &f.bytes)
                    .map_err(files("write a bind-mounted file", &copy))?;
                m.insert("source".into(), copy.display().to_string().into());
            }
        }
        obj.remove("hooks");
        let linux = obj
            .get_mut("linux")
            .and_then(|l| l.as_object_mut())
            .ok_or_else(|| config_error("no linux section".into()))?;
        linux.insert("cgroupsPath".into(), cgroups_path.into());
        let criu_conf = bundle.join("criu.conf");
        std::fs::write(&criu_conf, "mntns-compat-mode\n")
            .map_err(files("write the CRIU config", &criu_conf))?;
        let mut annotations = serde_json::Map::new();
        annotations.insert(
            "org.criu.config".into(),
            criu_conf.display().to_string().into(),
        );
        obj.insert("annotations".into(), annotations.into());
        let bytes = serde_json::to_vec(&json).map_err(|e| config_error(e.to_string()))?;
        std::fs::write(&path, bytes).map_err(files("write the bundle config", &path))
    }
}

/// Copies a directory tree: directories, regular files and symlinks (sockets, fifos and devices
/// are skipped: CRIU recreates the sockets, runc mounts /dev).
fn copy_tree(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(to).map_err(files("create", to))?;
    for entry in std::fs::read_dir(from).map_err(files("read", from))? {
        let entry = entry.map_err(files("read", from))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(files("stat", &path))?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&path, &target)?;
        } else if kind.is_file() {
            std::fs::copy(&path, &target).map_err(files("copy", &path))?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(&path).map_err(files("read link", &path))?;
            std::os::unix::fs::symlink(&link, &target).map_err(files("symlink", &target))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Docker-like config becomes a restorable bundle: rootfs and bind-mounted files copied,
    /// own cgroup, no hooks, the CRIU config annotation.
    #[test]
    fn a_docker_config_becomes_a_restore_bundle() {
        let tmp = crate::testing::temp_dir("bundle");
        let dir = tmp.path().to_path_buf();
        let src_root = dir.join("merged");
        std::fs::create_dir_all(src_root.join("etc")).expect("mkdir");
        std::fs::write(src_root.join("workload"), b"binary").expect("write");
        std::os::unix::fs::symlink("workload", src_root.join("link")).expect("symlink");
        std::fs::write(dir.join("resolv.conf"), b"nameserver 1.1.1.1\n").expect("write");
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": src_root},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/resolv.conf", "type": "bind",
                 "source": dir.join("resolv.conf"), "options": ["rbind"]},
            ],
            "hooks": {"prestart": [{"path": "/proc/1/exe", "args": ["libnetwork-setkey"]}]},
            "linux": {"cgroupsPath": "/docker/abc", "namespaces": [{"type": "network"}]},
        });
        std::fs::write(dir.join("config.json"), config.to_string()).expect("write");
        let bundle = dir.join("bundle");
        prepare_bundle(&dir.join("config.json"), &bundle, "/brume-x").expect("bundle");
        let out: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("read"))
                .expect("json");
        assert_eq!(
            out["root"]["path"].as_str(),
            Some(bundle.join("rootfs").to_str().expect("utf8"))
        );
        assert!(out.get("hooks").is_none());
        assert_eq!(out["linux"]["cgroupsPath"], "/brume-x");
        let conf = out["annotations"]["org.criu.config"]
            .as_str()
            .expect("conf");
        assert_eq!(
            std::fs::read_to_string(conf).expect("conf"),
            "mntns-compat-mode\n"
        );
        let resolv = out["mounts"][1]["source"].as_str().expect("source");
        assert!(resolv.starts_with(bundle.join("files").to_str().expect("utf8")));
        assert_eq!(
            std::fs::read(resolv).expect("copied"),
            b"nameserver 1.1.1.1\n"
        );
        assert_eq!(out["mounts"][0]["source"], "proc");
        assert_eq!(
            std::fs::read(bundle.join("rootfs/workload")).expect("copied"),
            b"binary"
        );
        assert_eq!(
            std::fs::read_link(bundle.join("rootfs/link")).expect("link"),
            PathBuf::from("workload")
        );
    }

    /// The config and bind-mounted files read on one host make a bundle on another around a
    /// rootfs the caller filled; a host network namespace (a path) is kept.
    #[test]
    fn a_portable_bundle_is_laid_out_around_a_rootfs_made_elsewhere() {
        let tmp = crate::testing::temp_dir("portable");
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("hosts"), b"127.0.0.1 localhost\n").expect("write");
        let config = serde_json::json!({
            "root": {"path": dir.join("merged")},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": dir.join("hosts")},
                {"destination": "/gone", "type": "bind", "source": dir.join("missing")},
            ],
            "hooks": {"prestart": []},
            "linux": {"namespaces": [{"type": "network", "path": "/var/run/docker/netns/default"}]},
        });
        std::fs::write(dir.join("config.json"), config.to_string()).expect("write");
        let portable = PortableBundle::read(&dir.join("config.json")).expect("read");
        assert_eq!(
            portable.files.len(),
            1,
            "only existing regular files travel"
        );
        assert_eq!(portable.files[0].mount, 1);
        // Over the wire and back.
        let portable: PortableBundle =
            serde_json::from_slice(&serde_json::to_vec(&portable).expect("ser")).expect("de");
        let bundle = dir.join("elsewhere");
        std::fs::create_dir_all(bundle.join("rootfs")).expect("rootfs");
        portable.lay_out(&bundle, "/brume-y").expect("lay out");
        let out: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("read"))
                .expect("json");
        assert_eq!(
            out["root"]["path"].as_str(),
            Some(bundle.join("rootfs").to_str().expect("utf8"))
        );
        let hosts = out["mounts"][1]["source"].as_str().expect("source");
        assert!(hosts.starts_with(bundle.join("files").to_str().expect("utf8")));
        assert_eq!(
            std::fs::read(hosts).expect("hosts"),
            b"127.0.0.1 localhost\n"
        );
        assert_eq!(
            out["linux"]["namespaces"][0]["path"],
            "/var/run/docker/netns/default"
        );
        assert_eq!(out["linux"]["cgroupsPath"], "/brume-y");
        assert!(out.get("hooks").is_none());
        assert!(out["annotations"]["org.criu.config"].is_string());
    }
}
