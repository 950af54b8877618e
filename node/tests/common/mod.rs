//! Test support shared by brume's integration tests (`mod common;` in a test file).
//!
//! * [`relay_binary`] and [`static_binary`] return the static workloads that
//!   `scripts/build-static.sh` built (scripts/test.sh runs it before any test); a test never
//!   builds anything itself, it panics with the command to run when a binary is missing.
//! * [`relay_context`] makes a temporary `FROM scratch` build context for the relay,
//!   [`context_dir`] any other; [`pack_context`] turns a directory into the context tar the
//!   engines take, named by its blake3 digest. Every Dockerfile a test writes carries
//!   [`docker_labels`]: `brume.test=<run>` (what scripts/sweep-test-leftovers.sh removes) and
//!   `brume.test.owner=<owner>` (what a test's own guard removes); containers inherit them.
//! * [`unique_suffix`], [`free_port`], [`ask`]: names that do not collide between parallel
//!   tests, a port leased to this test process for a task to bind, and one line sent to a task
//!   and its answer.
//! * [`Cleanup`] removes the Docker containers and images a test made, even when it fails;
//!   [`ServiceNet`] does the same for the daemons and the service a test deploys.
//! * [`need_docker`] is the one way a test skips for a missing Docker daemon
//!   (`brume_testnet::require`: a failure under `BRUME_REQUIRE=docker` or `all`);
//!   [`live_move_supported`] and [`docker_live_supported`] do the same for a live CRIU move
//!   (root, criu >= 4.2; Docker and runc too), and [`RuncLeftovers`] removes the runc
//!   containers a live Docker move restored for a service.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use brume_engine::{ImageInput, ImageKind};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ has a parent")
        .to_path_buf()
}

/// Where `scripts/build-static.sh` puts the static workloads.
pub fn static_dir() -> PathBuf {
    repo_root().join("target/static/x86_64-unknown-linux-gnu/release")
}

/// The static workload `name` (brume-relay, aggregator, trainer, dirtier). Tests only read it:
/// building here would compete with timing-sensitive tests and take a cargo lock mid-run.
pub fn static_binary(name: &str) -> PathBuf {
    let path = static_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `bash scripts/build-static.sh` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The static relay binary.
pub fn relay_binary() -> PathBuf {
    static_binary("brume-relay")
}

/// This run's id: `BRUME_TEST_RUN` (scripts/test.sh sets it), else this process's id.
pub fn run_id() -> String {
    std::env::var("BRUME_TEST_RUN").unwrap_or_else(|_| format!("pid{}", std::process::id()))
}

/// The `LABEL` line every Dockerfile a test writes carries: the run's label, which the
/// leftover sweep looks for, and `owner`, which the test's own guard removes by.
pub fn docker_labels(owner: &str) -> String {
    format!(
        "LABEL brume.test=\"{}\" brume.test.owner=\"{owner}\"\n",
        run_id()
    )
}

/// Adds [`docker_labels`] to the Dockerfile in `ctx` (the process engine ignores `LABEL`).
pub fn label_dockerfile(ctx: &Path, owner: &str) {
    let path = ctx.join("Dockerfile");
    let mut text = std::fs::read_to_string(&path).expect("read the Dockerfile");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&docker_labels(owner));
    std::fs::write(&path, text).expect("write the Dockerfile");
}

/// The relay chain's build context in `dir/ctx` (`brume bench deploy`'s, with `salt` in it),
/// labelled for `owner`.
pub fn chain_context(dir: &Path, salt: &str, owner: &str) -> PathBuf {
    let ctx =
        brume_testnet::relay_service::context(dir, &relay_binary(), salt).expect("a build context");
    label_dockerfile(&ctx, owner);
    ctx
}

/// A temporary directory named `brume-test-*` (the sweep's prefix), removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("brume-test-")
        .tempdir()
        .expect("a temporary directory")
}

/// A temporary build context: `dockerfile` (if any) and `files` (name in the context, source).
pub fn context_dir(dockerfile: Option<&str>, files: &[(&str, &Path)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("brume-test-ctx-")
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

/// The house build context for the relay, labelled for `owner`: nothing but its static binary.
pub fn relay_dockerfile(owner: &str) -> String {
    format!(
        "FROM scratch\nCOPY brume-relay /brume-relay\nENTRYPOINT [\"/brume-relay\"]\n{}",
        docker_labels(owner)
    )
}

/// A temporary `FROM scratch` build context holding the static relay, labelled for `owner`.
pub fn relay_context(owner: &str) -> tempfile::TempDir {
    let relay = relay_binary();
    context_dir(Some(&relay_dockerfile(owner)), &[("brume-relay", &relay)])
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

/// A suffix no other test run or parallel test has: pid and random bits (a name, not a seed:
/// nothing a test checks depends on it).
pub fn unique_suffix() -> String {
    format!("{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// Where test task ports come from: below both the range the node's engines draw task ports
/// from (`brume_engine::ports::task_port_range`, which starts at 20000) and the kernel's ephemeral
/// range (where `bind(0)` and outgoing connections take their ports), so neither a daemon under
/// test nor any connection on the host takes a leased port.
fn lease_range() -> std::ops::Range<u16> {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let end = brume_engine::ports::task_port_range()
        .start
        .min(ephemeral)
        .min(20_000);
    assert!(end >= 11_000, "no room for test ports below {end}");
    10_000..end
}

/// A port for a task to bind, leased to this test process until it exits: no other test
/// process (cargo test binary or nextest process) leases it meanwhile, and it was free when
/// leased. The lease is an exclusive OFD lock on byte `port` of a shared lock file, so it holds
/// across processes and across the threads of one process, and ends with the process. Picking
/// a port with `bind(0)` and releasing it before a task binds it let another test (or an
/// outgoing connection) take it in between; leases close that window.
pub fn free_port() -> u16 {
    static LEASES: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let lock_path = std::env::temp_dir().join(".brume-test-ports.lock");
    let range = lease_range();
    let span = u32::from(range.end - range.start);
    let start = rand::random::<u32>() % span;
    for i in 0..span {
        let port = range.start + ((start + i) % span) as u16;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
        // SAFETY: a zeroed flock is a valid value; every field used is set below.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_WRLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = libc::off_t::from(port);
        lock.l_len = 1;
        // SAFETY: fcntl on an open file with a valid flock; OFD locks need l_pid = 0 (zeroed).
        let got = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } == 0;
        if !got || !bindable(port) {
            continue;
        }
        LEASES.lock().expect("leases").push(file);
        return port;
    }
    panic!("no free port to lease in {range:?}");
}

fn bindable(port: u16) -> bool {
    [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
    ]
    .iter()
    .all(|a| TcpListener::bind(a).is_ok())
}

/// Sends one line to `127.0.0.1:port` and returns the line it answers (30 s bound).
pub fn ask(port: u16, line: &str) -> std::io::Result<String> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = s.try_clone()?;
    writeln!(w, "{line}")?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    Ok(reply.trim_end().to_string())
}

/// Whether a Docker daemon answers; when not, the skip is recorded through
/// `brume_testnet::require` (a failure when `BRUME_REQUIRE` lists docker).
pub fn need_docker(test: &str) -> bool {
    brume_testnet::require::docker(test)
}

/// Docker containers and images a test made, removed on drop (also when the test panics):
/// the named ones, then everything labelled `brume.test.owner=<owner>`.
#[derive(Default)]
pub struct Cleanup {
    pub containers: Vec<String>,
    pub images: Vec<String>,
    pub owner: Option<String>,
}

impl Cleanup {
    /// A guard that also removes whatever carries `brume.test.owner=<owner>`.
    pub fn owned(owner: &str) -> Cleanup {
        Cleanup {
            containers: Vec::new(),
            images: Vec::new(),
            owner: Some(owner.to_string()),
        }
    }
}

/// Removes every container, then every image, labelled `brume.test.owner=<owner>`.
pub fn remove_owned(owner: &str) {
    let filter = format!("label=brume.test.owner={owner}");
    let ids = |args: &[&str]| -> Vec<String> {
        Command::new("docker")
            .args(args)
            .arg(&filter)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = ids(&["ps", "-aq", "--filter"]);
    if !containers.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&containers)
            .output();
    }
    let mut images = ids(&["images", "-q", "--filter"]);
    images.sort();
    images.dedup();
    if !images.is_empty() {
        let _ = Command::new("docker")
            .args(["rmi", "-f"])
            .args(&images)
            .output();
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
        if let Some(owner) = &self.owner {
            remove_owned(owner);
        }
    }
}

// Not every test binary that includes this module counts processes.
#[allow(unused_imports)]
pub use brume_testnet::processes::processes_with_env;

/// Bytes a command printed, as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The port in an instance's `address` (`127.0.0.1:PORT`) as `ps`, `deploy` and `migrate` report it.
pub fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {address}"))
}

/// A few `brume node` daemons on loopback (stopped with SIGTERM when dropped, so they stop
/// their tasks) and the service a test deploys on them: on drop, the service is stopped through
/// node 0, any container of it that is still there is removed by force, and so is every image
/// and container labelled `brume.test.owner=<service>` (the contexts of [`chain_context`]).
pub struct ServiceNet {
    pub net: brume_testnet::localnet::LocalNet,
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
        Self::start_with_env(bin, n, engine, cpu_millis, extra, &|_| Vec::new(), service)
    }

    /// [`ServiceNet::start_with`], each daemon's log kept in its [`LocalNet::log`] file at
    /// the tracing filter `filter` (a test that reads what a node decided).
    ///
    /// [`LocalNet::log`]: brume_testnet::localnet::LocalNet::log
    pub fn start_logged(
        bin: &Path,
        n: usize,
        engine: &str,
        cpu_millis: u32,
        extra: &[&str],
        filter: &str,
        service: &str,
    ) -> Self {
        let cpu = cpu_millis.to_string();
        let mut args = vec!["--engine", engine, "--cpu-millis", &cpu];
        args.extend_from_slice(extra);
        let net =
            brume_testnet::localnet::LocalNet::start_logged_with_filter(bin, n, &args, filter)
                .unwrap_or_else(|e| panic!("{n} daemons start and connect: {e:#}"));
        ServiceNet {
            net,
            service: service.to_string(),
        }
    }

    /// The same, with `env(i)` added to node `i`'s environment.
    pub fn start_with_env(
        bin: &Path,
        n: usize,
        engine: &str,
        cpu_millis: u32,
        extra: &[&str],
        env: &dyn Fn(usize) -> Vec<(OsString, OsString)>,
        service: &str,
    ) -> Self {
        let cpu = cpu_millis.to_string();
        let mut args = vec!["--engine", engine, "--cpu-millis", &cpu];
        args.extend_from_slice(extra);
        let net = brume_testnet::localnet::LocalNet::start_with_env(bin, n, &args, env)
            .unwrap_or_else(|e| panic!("{n} daemons start and connect: {e:#}"));
        ServiceNet {
            net,
            service: service.to_string(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.net.dir()
    }

    /// `brume ARGS` on node `i`, its `--json` output read as the command's typed reply.
    pub fn json<T: serde::de::DeserializeOwned>(&self, i: usize, args: &[&str]) -> T {
        let out = self.brume(i, args);
        assert!(
            out.status.success(),
            "brume {args:?} on node {i} failed: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("brume {args:?}: not JSON ({e}): {}", text(&out.stdout)))
    }

    /// Node `i`'s id (as `ps` names hosts) and peer id.
    pub fn status(&self, i: usize) -> (String, String) {
        let s: brume_control::StatusView = self.json(i, &["status", "--json"]);
        (format!("n{}", s.node_id), s.peer_id)
    }

    /// (task -> (host node id, port)) from the initiator's `brume ps`, every row running.
    pub fn placement(&self) -> std::collections::BTreeMap<String, (String, u16)> {
        let ps: Vec<brume_control::PsRow> = self.json(0, &["ps", "--json"]);
        let mut out = std::collections::BTreeMap::new();
        for row in &ps {
            let r = &row.instance;
            assert_eq!(r.state, "running", "{ps:#?}");
            out.insert(r.task.clone(), (r.host.clone(), port_of(&r.address)));
        }
        out
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
        remove_owned(&self.service);
    }
}

/// Whether this machine can run a live CRIU move: root (the node's mount namespace, CRIU) and
/// criu >= 4.2 (TCP listeners on this kernel). When not, the skip is recorded through
/// `brume_testnet::require` (a failure when `BRUME_REQUIRE` lists the need).
pub fn live_move_supported(test: &str) -> bool {
    use brume_testnet::require::{self, Need};
    if !require::criu(test) {
        return false;
    }
    match brume_migration::criu::Criu::new().version() {
        Err(e) => {
            require::missing(test, Need::Criu, &format!("criu's version is unknown: {e}"));
            false
        }
        Ok(v) => {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            if version < (4, 2) {
                require::missing(test, Need::Criu, &format!("criu {v} is older than 4.2"));
                return false;
            }
            true
        }
    }
}

/// Whether this machine can move a Docker task live: the CRIU needs, Docker, runc (each
/// missing one a skip recorded through `brume_testnet::require`).
pub fn docker_live_supported(test: &str) -> bool {
    use brume_testnet::require::{self, Need};
    live_move_supported(test)
        && need_docker(test)
        && require::program(test, Need::Runc, "runc", "--version")
}

/// Removes, on drop, the runc containers brume restored for a service (their ids start with
/// the instance name, which holds the service name) and their bundles and cgroups, whatever
/// the test did: a failing assertion must not leave a task running.
pub struct RuncLeftovers(pub String);

impl Drop for RuncLeftovers {
    fn drop(&mut self) {
        let home = Path::new(brume_engine::runc_task::RUNC_HOME);
        let root = home.join("root");
        if let Ok(dirs) = std::fs::read_dir(&root) {
            for d in dirs.flatten() {
                let id = d.file_name().to_string_lossy().into_owned();
                if !id.contains(&self.0) {
                    continue;
                }
                for args in [vec!["kill", &id, "KILL"], vec!["delete", "-f", &id]] {
                    let _ = Command::new("runc")
                        .arg("--root")
                        .arg(&root)
                        .args(&args)
                        .output();
                }
                brume_engine::runc_task::remove_cgroup(&format!("/brume-runc/{id}"));
            }
        }
        if let Ok(dirs) = std::fs::read_dir(home.join("bundles")) {
            for d in dirs.flatten() {
                if d.file_name().to_string_lossy().contains(&self.0) {
                    let _ = std::fs::remove_dir_all(d.path());
                }
            }
        }
        // A restore that failed on a target keeps runc's work directory (its CRIU log names
        // the bundle, hence the service).
        if let Ok(dirs) = std::fs::read_dir("/dev/shm") {
            for d in dirs.flatten() {
                let name = d.file_name().to_string_lossy().into_owned();
                if name.starts_with("brume-live-in-")
                    && name.ends_with(".restore.work")
                    && std::fs::read_to_string(d.path().join("restore.log"))
                        .is_ok_and(|log| log.contains(&self.0))
                {
                    let _ = std::fs::remove_dir_all(d.path());
                }
            }
        }
    }
}

/// How long [`http`] waits to connect, write or read.
const HTTP_PATIENCE: Duration = Duration::from_secs(60);

/// One HTTP/1.1 request to `addr`; the status line, the headers (lowercase names) and the body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> (String, BTreeMap<String, String>, String) {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_PATIENCE).expect("connect to the endpoint");
    s.set_read_timeout(Some(HTTP_PATIENCE)).unwrap();
    s.set_write_timeout(Some(HTTP_PATIENCE)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("a whole answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// Panics unless `pid` (a CRIU-mode task of the process engine) runs in a mount namespace of
/// its own with its rootfs as root and maps only files of that root
/// ([`brume_testnet::taskview`]); returns its view.
pub fn assert_runs_in_its_rootfs(pid: u32) -> brume_testnet::taskview::TaskView {
    let view =
        brume_testnet::taskview::read(pid).unwrap_or_else(|e| panic!("the view of {pid}: {e}"));
    assert_rooted(&view);
    view
}

/// Panics, showing `view`, unless it is of a task in its own root ([`TaskView::rooted`]).
///
/// [`TaskView::rooted`]: brume_testnet::taskview::TaskView::rooted
pub fn assert_rooted(view: &brume_testnet::taskview::TaskView) {
    if let Err(why) = view.rooted() {
        panic!("{why}: {view:#?}");
    }
}
