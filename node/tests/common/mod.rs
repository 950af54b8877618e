//! Test support shared by brume's integration tests (`mod common;` in a test file).
//!
//! * [`relay_binary`] runs `scripts/build-static.sh` once per test binary and returns the static
//!   brume-relay binary (the script is fast when nothing changed).
//! * [`relay_context`] makes a temporary `FROM scratch` build context for it, [`context_dir`]
//!   any other; [`pack_context`] turns a directory into the context tar the engines take, named
//!   by its blake3 digest.
//! * [`unique_suffix`], [`free_port`], [`ask`]: names that do not collide between parallel
//!   tests, a port to give a task, and one line sent to a task and its answer.
//! * [`Cleanup`] removes the Docker containers and images a test made, even when it fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use brume::engine::{ImageInput, ImageKind};

/// The house build context for the relay: nothing but its static binary.
pub const RELAY_DOCKERFILE: &str =
    "FROM scratch\nCOPY brume-relay /brume-relay\nENTRYPOINT [\"/brume-relay\"]\n";

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ has a parent")
        .to_path_buf()
}

/// Runs `scripts/build-static.sh` (once per test binary) and returns the relay binary's path.
pub fn relay_binary() -> PathBuf {
    static RELAY: OnceLock<PathBuf> = OnceLock::new();
    RELAY
        .get_or_init(|| {
            let root = repo_root();
            let out = Command::new("bash")
                .arg(root.join("scripts/build-static.sh"))
                .current_dir(&root)
                .output()
                .expect("run scripts/build-static.sh");
            assert!(
                out.status.success(),
                "scripts/build-static.sh failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let path = PathBuf::from(stdout.lines().last().expect("a path on stdout").trim());
            assert!(path.is_file(), "{} is not a file", path.display());
            path
        })
        .clone()
}

/// A temporary build context: `dockerfile` (if any) and `files` (name in the context, source).
pub fn context_dir(dockerfile: Option<&str>, files: &[(&str, &Path)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("brume-ctx-")
        .tempdir()
        .expect("temp dir");
    if let Some(text) = dockerfile {
        std::fs::write(dir.path().join("Dockerfile"), text).expect("write Dockerfile");
    }
    for (name, src) in files {
        let dst = dir.path().join(name);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::copy(src, &dst).expect("copy into the context");
    }
    dir
}

/// A temporary `FROM scratch` build context holding the static relay and [`RELAY_DOCKERFILE`].
pub fn relay_context() -> tempfile::TempDir {
    let relay = relay_binary();
    context_dir(Some(RELAY_DOCKERFILE), &[("brume-relay", &relay)])
}

fn append_tree(b: &mut tar::Builder<std::fs::File>, root: &Path, rel: &Path) {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))
        .expect("read dir")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    entries.sort();
    for name in entries {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        if path.is_dir() {
            b.append_dir(&rel, &path).expect("tar dir");
            append_tree(b, root, &rel);
        } else {
            b.append_path_with_name(&path, &rel).expect("tar file");
        }
    }
}

/// Packs `dir` as a build context tar in `out_dir`, named and digested by blake3.
pub fn pack_context(dir: &Path, out_dir: &Path) -> ImageInput {
    let tmp = out_dir.join(format!("ctx-{}.tar", unique_suffix()));
    let file = std::fs::File::create(&tmp).expect("create tar");
    let mut b = tar::Builder::new(file);
    b.mode(tar::HeaderMode::Deterministic);
    append_tree(&mut b, dir, Path::new(""));
    b.into_inner().expect("finish tar");
    let bytes = std::fs::read(&tmp).expect("read tar");
    let digest = blake3::hash(&bytes).to_hex().to_string();
    let tar = out_dir.join(format!("{digest}.tar"));
    std::fs::rename(&tmp, &tar).expect("rename tar");
    ImageInput {
        kind: ImageKind::BuildContext,
        tar,
        digest: format!("blake3:{digest}"),
    }
}

/// A suffix no other test run or parallel test has: pid and random bits.
pub fn unique_suffix() -> String {
    format!("{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    brume::engine::free_task_port().expect("a free port")
}

/// Sends one line to `127.0.0.1:port` and returns the line it answers (10 s bound).
pub fn ask(port: u16, line: &str) -> std::io::Result<String> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    writeln!(w, "{line}")?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    Ok(reply.trim_end().to_string())
}

/// Does `docker info` work?
pub fn docker_available() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Docker containers and images a test made, removed on drop (also when the test panics).
#[derive(Default)]
pub struct Cleanup {
    pub containers: Vec<String>,
    pub images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

/// Bytes a command printed, as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The port of a `brume ps --json` / `deploy --json` row's `address` (`127.0.0.1:PORT`).
pub fn port_of(row: &serde_json::Value) -> u16 {
    row["address"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {row}"))
}

/// A few `brume node` daemons on loopback (stopped with SIGTERM when dropped, so they stop
/// their tasks) and the service a test deploys on them: on drop, the service is stopped through
/// node 0 and any container of it that is still there is removed by force.
pub struct ServiceNet {
    pub net: brume::localnet::LocalNet,
    pub service: String,
}

impl ServiceNet {
    /// `n` daemons of `bin` on `engine`, each offering `cpu_millis`.
    pub fn start(bin: &Path, n: usize, engine: &str, cpu_millis: u32, service: &str) -> Self {
        Self::start_with(bin, n, engine, cpu_millis, &[], service)
    }

    /// The same, with `extra` arguments for every `brume node`.
    pub fn start_with(
        bin: &Path,
        n: usize,
        engine: &str,
        cpu_millis: u32,
        extra: &[&str],
        service: &str,
    ) -> Self {
        let cpu = cpu_millis.to_string();
        let mut args = vec!["--engine", engine, "--cpu-millis", &cpu];
        args.extend_from_slice(extra);
        let net = brume::localnet::LocalNet::start(bin, n, &args)
            .unwrap_or_else(|e| panic!("{n} daemons start and connect: {e:#}"));
        ServiceNet {
            net,
            service: service.to_string(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.net.dir()
    }

    /// Runs `brume ARGS` against node `i`.
    pub fn brume(&self, i: usize, args: &[&str]) -> std::process::Output {
        self.net.brume(i, args).expect("brume runs")
    }

    /// The ids of the service's Docker containers, running or not.
    pub fn containers(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=brume.service={}", self.service))
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for ServiceNet {
    fn drop(&mut self) {
        // The daemons stop after this body (LocalNet's own drop), so stop the service through
        // node 0 first; whatever still exists then is removed by force.
        let _ = self.net.brume(0, &["stop", &self.service]);
        let left = self.containers();
        if !left.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&left)
                .output();
        }
    }
}
