//! runc's side: `runc checkpoint` of a Docker container on Docker's runc state (pre-copy's
//! dumps, post-copy's lazy dump with its page server on loopback) and `runc restore` of the
//! images as a new runc container from a bundle ([`super::bundle`]).

use super::*;

/// Where Docker 20.10 keeps runc's state of its containers (exists once dockerd has run a
/// container since it started).
pub const DOCKER_RUNC_ROOT: &str = "/run/docker/runtime-runc/moby";

/// The restored container's stdout and stderr, in its bundle ([`RuncRestore::output`]).
pub const OUTPUT_FILE: &str = "output.log";

/// Where containerd keeps a Docker container's OCI bundle (`<id>/config.json`).
pub const DOCKER_BUNDLES: &str = "/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby";

/// Why this host cannot checkpoint or restore Docker's containers with runc, if it cannot: runc
/// missing, or Docker's runc state not where Docker 20.10 keeps it.
pub fn runc_usable() -> Result<(), String> {
    let runc = Command::new("runc")
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    match runc {
        Ok(o) if o.status.success() => {}
        _ => {
            return Err(
                "runc is not installed here: Docker tasks move live through `runc checkpoint`"
                    .to_string(),
            )
        }
    }
    if !Path::new(DOCKER_RUNC_ROOT).is_dir() {
        return Err(format!(
            "Docker's runc state {DOCKER_RUNC_ROOT} is missing (not Docker 20.10's layout?)"
        ));
    }
    Ok(())
}

/// A running container checkpointed with `runc checkpoint` from runc's state directory (for a
/// Docker container, [`DOCKER_RUNC_ROOT`] and Docker's full container id).
///
/// Between pre-copy rounds runc needs nothing: `checkpoint --leave-running` leaves the container
/// `running` in runc's state and Docker's, and the next checkpoint into a fresh directory works
/// (no parent images, since this kernel cannot track dirty pages). The final checkpoint without
/// `--leave-running` kills the container: Docker sees it exit (137) and keeps it as exited.
#[derive(Clone, Debug)]
pub struct RuncContainer {
    pub runc: PathBuf,
    pub root: PathBuf,
    pub id: String,
    /// Where the container comes back on this host if the target cannot run it after the
    /// final checkpoint (a new runc container from a bundle prepared beforehand); `None`: the
    /// fallback fails and the images are kept.
    pub fallback: Option<RuncRestore>,
}

impl RuncContainer {
    /// Docker's container `id` (the full id), through Docker's runc state.
    pub fn docker(id: impl Into<String>) -> Self {
        RuncContainer {
            runc: PathBuf::from("runc"),
            root: PathBuf::from(DOCKER_RUNC_ROOT),
            id: id.into(),
            fallback: None,
        }
    }
}

impl Restorer for RuncContainer {
    fn restore(
        &self,
        images: &Path,
        dumped_pid: u32,
        log: &Path,
    ) -> Result<Restored, CheckpointError> {
        match &self.fallback {
            Some(r) => r.restore(images, dumped_pid, log),
            None => Err(CheckpointError::Unsupported(format!(
                "no bundle was prepared to restore container {} on this host",
                self.id
            ))),
        }
    }
}

/// runc's work directory for the call logging to `log` (CRIU's log lands in it), emptied.
fn fresh_work_dir(log: &Path) -> Result<PathBuf, CheckpointError> {
    let work = log.with_extension("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(files("create runc's work directory", &work))?;
    Ok(work)
}

impl Checkpointer for RuncContainer {
    fn dump(
        &self,
        images: &Path,
        leave_running: bool,
        log: &Path,
    ) -> Result<DumpReport, CheckpointError> {
        let work = fresh_work_dir(log)?;
        let mut cmd = Command::new(&self.runc);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("checkpoint")
            .arg("--image-path")
            .arg(images)
            .arg("--work-path")
            .arg(&work);
        if leave_running {
            cmd.arg("--leave-running");
        }
        cmd.arg(&self.id);
        let started = Instant::now();
        let out =
            cmd.stdin(Stdio::null())
                .output()
                .map_err(|source| CheckpointError::RuncSpawn {
                    binary: self.runc.clone(),
                    source,
                })?;
        let elapsed = started.elapsed();
        let log_file = work.join("dump.log");
        if !out.status.success() {
            return Err(runc_failed(
                "checkpoint",
                &self.id,
                out.status,
                &out.stderr,
                &log_file,
            ));
        }
        let image_bytes = dir_bytes(images).map_err(files("read the images", images))?;
        let stats = DumpStats::read(images).or_else(|| DumpStats::read(&work));
        Ok(DumpReport {
            elapsed,
            image_bytes,
            log_file,
            stats,
        })
    }

    /// [`RuncContainer::lazy_checkpoint`], then a connection to its page server: the page
    /// server serves the first peer that connects, and only this process knows the port before
    /// then.
    fn dump_lazy(
        &self,
        images: &Path,
        log: &Path,
        defer_reads: bool,
    ) -> Result<(LazyDump, PageSocket), CheckpointError> {
        let (dump, port) = self.lazy_checkpoint(images, log, defer_reads)?;
        match std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)) {
            Ok(socket) => {
                let _ = socket.set_nodelay(true);
                Ok((dump, PageSocket::Tcp(socket)))
            }
            // Dropping the dump kills runc; its criu, with no peer ever, then stays frozen
            // with the container: say so loudly rather than leave it silently.
            Err(e) => Err(CheckpointError::Files {
                what: "connect to the lazy dump's page server (the container may stay frozen; `runc resume` it)",
                path: PathBuf::from(format!("127.0.0.1:{port}")),
                source: e,
            }),
        }
    }
}

impl RuncContainer {
    /// `runc checkpoint --lazy-pages` until it is ready, and the loopback port its page server
    /// listens on. runc cannot hand its criu a socket, so the page server listens on a port,
    /// which a config file in criu's environment keeps on loopback (over RPC criu takes only
    /// the port of a lazy dump's page server and would listen on every address: docs/criu.md,
    /// "Post-copy of a Docker container through runc"). The port is one the kernel just gave
    /// this process and let go; if another program takes it first, criu cannot bind and thaws
    /// the container, and the dump is tried again on another port, up to
    /// [`PORT_ATTEMPTS`] times (then it fails as transient).
    pub fn lazy_checkpoint(
        &self,
        images: &Path,
        log: &Path,
        defer_reads: bool,
    ) -> Result<(LazyDump, u16), CheckpointError> {
        let mut attempt = 1;
        loop {
            match self.lazy_checkpoint_once(images, log, defer_reads) {
                Err(e) if attempt < PORT_ATTEMPTS && port_taken(&e) => {
                    attempt += 1;
                    let _ = std::fs::remove_dir_all(images);
                }
                r => return r,
            }
        }
    }

    fn lazy_checkpoint_once(
        &self,
        images: &Path,
        log: &Path,
        defer_reads: bool,
    ) -> Result<(LazyDump, u16), CheckpointError> {
        check_pipe_max_size()?;
        let work = fresh_work_dir(log)?;
        std::fs::create_dir_all(images).map_err(files("create the images directory", images))?;
        let config = work.join("lazy.conf");
        let mut lines = String::from("address 127.0.0.1\n");
        if defer_reads {
            lines.push_str("lazy-pages-defer-read\n");
        }
        std::fs::write(&config, lines).map_err(files("write criu's config", &config))?;
        let port = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(files("find a loopback port for the page server", &work))?
            .port();
        let stderr_file = work.join("runc.stderr");
        let stderr = std::fs::File::create(&stderr_file)
            .map_err(files("create runc's stderr file", &stderr_file))?;
        let (status, status_w) = io::pipe().map_err(files("make the status pipe", &work))?;
        let started = Instant::now();
        // runc writes criu's ready byte (its "status-ready" notification) to the descriptor
        // named: its stdout here, a pipe (runc checks only that it is writable).
        let child = Command::new(&self.runc)
            .env("CRIU_CONFIG_FILE", &config)
            .arg("--root")
            .arg(&self.root)
            .arg("checkpoint")
            .arg("--lazy-pages")
            .arg("--page-server")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--status-fd")
            .arg("1")
            .arg("--image-path")
            .arg(images)
            .arg("--work-path")
            .arg(&work)
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(status_w)))
            .stderr(stderr)
            .spawn()
            .map_err(|source| CheckpointError::RuncSpawn {
                binary: self.runc.clone(),
                source,
            })?;
        let mut dump = LazyDump::of_runc(
            child,
            status,
            images,
            work.join("dump.log"),
            stderr_file,
            port,
            started,
        );
        dump.wait_ready()?;
        Ok((dump, port))
    }
}

/// Lazy dumps tried on a fresh port when the last one was taken before criu bound it.
pub const PORT_ATTEMPTS: u32 = 3;

/// The dump failed because its page server's port was taken (criu thawed the container).
fn port_taken(e: &CheckpointError) -> bool {
    matches!(e, CheckpointError::Runc { criu_errors, .. }
        if criu_errors.iter().any(|l| l.contains("Can't bind page server")))
}

fn runc_failed(
    action: &'static str,
    container: &str,
    status: ExitStatus,
    stderr: &[u8],
    log_file: &Path,
) -> CheckpointError {
    let log = std::fs::read_to_string(log_file).unwrap_or_default();
    CheckpointError::Runc {
        action,
        container: container.to_string(),
        status,
        stderr: String::from_utf8_lossy(stderr).trim().to_string(),
        criu_errors: error_lines(&log),
        log_file: log_file.to_path_buf(),
    }
}

/// `runc restore --detach` of checkpoint images into a new container `id` under runc state
/// directory `root` (brume's own, not Docker's: Docker would not know the container anyway),
/// from a bundle made by [`prepare_bundle`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RuncRestore {
    pub runc: PathBuf,
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
}

impl Restorer for RuncRestore {
    fn restore(
        &self,
        images: &Path,
        _dumped_pid: u32,
        log: &Path,
    ) -> Result<Restored, CheckpointError> {
        let work = fresh_work_dir(log)?;
        self.run_restore(images, &work, false)
    }

    fn restores_lazily(&self) -> bool {
        true
    }

    /// `runc restore --lazy-pages` with the images directory as runc's work directory: that is
    /// where criu's restore looks for the lazy-pages daemon's socket, which the daemon made in
    /// the directory it serves. CRIU's restore log lands there too.
    fn restore_lazy(&self, images: &Path, _dumped_pid: u32) -> Result<Restored, CheckpointError> {
        self.run_restore(images, images, true)
    }
}

impl RuncRestore {
    /// `runc restore --detach` of `images`, runc's work directory `work`, lazily or not.
    fn run_restore(
        &self,
        images: &Path,
        work: &Path,
        lazy: bool,
    ) -> Result<Restored, CheckpointError> {
        std::fs::create_dir_all(&self.root).map_err(files("create runc's root", &self.root))?;
        // runc's stdio becomes the restored container's (CRIU gives the dumped stdout and
        // stderr pipes runc's own). A pipe, like Docker's, so that the container can be
        // checkpointed again (runc hands a pipe to CRIU as external; a host file outside the
        // container's mounts fails the dump: "Can't lookup mount"), drained into
        // [`RuncRestore::output`] for as long as anything holds its write end by a `cat` of its
        // own ([`crate::drain`]), not by this process. runc's own messages come through it
        // first: a failure quotes what this call added.
        let output = self.output();
        let mut out_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&output)
            .map_err(files("open the container's output file", &output))?;
        let before = out_file
            .seek(io::SeekFrom::End(0))
            .map_err(files("seek the container's output file", &output))?;
        drop(out_file);
        let (reader, writer) =
            io::pipe().map_err(files("make the container's output pipe", &output))?;
        let stderr = writer
            .try_clone()
            .map_err(files("make the container's output pipe", &output))?;
        let drain = crate::drain::start(reader, &output)
            .map_err(files("start the drain of the container's output", &output))?;
        let started = Instant::now();
        let mut cmd = Command::new(&self.runc);
        cmd.arg("--root").arg(&self.root).arg("restore");
        if lazy {
            cmd.arg("--lazy-pages");
        }
        let status = cmd
            .arg("--image-path")
            .arg(images)
            .arg("--work-path")
            .arg(work)
            .arg("--bundle")
            .arg(&self.bundle)
            .arg("--detach")
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(stderr)
            .status()
            .map_err(|source| CheckpointError::RuncSpawn {
                binary: self.runc.clone(),
                source,
            })?;
        let elapsed = started.elapsed();
        if !status.success() {
            // No container holds the pipe: the drain ends once runc's last words are in.
            drain.wait(Duration::from_secs(5));
            let all = std::fs::read(&output).unwrap_or_default();
            let start = usize::try_from(before).unwrap_or(0).min(all.len());
            let stderr = all.get(start..).unwrap_or_default().to_vec();
            let mut log = work.join("restore.log");
            if lazy {
                // The work directory is the images directory, which its caller removes once
                // the move failed: the log is kept beside it (`<images>.restore.log`), where
                // a process's lazy restore logs.
                let mut kept = images.as_os_str().to_owned();
                kept.push(".restore.log");
                if std::fs::copy(&log, &kept).is_ok() {
                    log = PathBuf::from(kept);
                }
            }
            return Err(runc_failed("restore", &self.id, status, &stderr, &log));
        }
        let pid = self.pid()?;
        Ok(Restored { pid, elapsed })
    }

    /// The file the restored container's stdout and stderr go to: `output.log` in its bundle
    /// (a node's `logs` of the container read it).
    pub fn output(&self) -> PathBuf {
        self.bundle.join(OUTPUT_FILE)
    }

    /// The container's init PID on this host, from `runc state`.
    pub fn pid(&self) -> Result<u32, CheckpointError> {
        let state_error = |why: String| CheckpointError::State {
            container: self.id.clone(),
            why,
        };
        let out = Command::new(&self.runc)
            .arg("--root")
            .arg(&self.root)
            .arg("state")
            .arg(&self.id)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| CheckpointError::RuncSpawn {
                binary: self.runc.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(state_error(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let state: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| state_error(format!("not JSON: {e}")))?;
        state
            .get("pid")
            .and_then(|p| p.as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p > 0)
            .ok_or_else(|| state_error(format!("no pid in {state}")))
    }

    /// Kills and deletes the container (best effort): `runc kill KILL`, then `runc delete -f`.
    pub fn remove(&self) {
        let run = |args: &[&str]| {
            let _ = Command::new(&self.runc)
                .arg("--root")
                .arg(&self.root)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        run(&["kill", &self.id, "KILL"]);
        std::thread::sleep(Duration::from_millis(100));
        run(&["delete", "-f", &self.id]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(line: &str) -> CheckpointError {
        CheckpointError::Runc {
            action: "checkpoint",
            container: "c".into(),
            status: Command::new("false").status().expect("run false"),
            stderr: "criu failed".into(),
            criu_errors: vec![line.into()],
            log_file: PathBuf::from("/w/dump.log"),
        }
    }

    #[test]
    fn only_a_taken_page_server_port_is_tried_on_another() {
        let taken = failed("Error (criu/page-xfer.c:1): Can't bind page server: Address in use");
        assert!(port_taken(&taken));
        assert!(taken.transient());
        // Another transient failure is the caller's to retry (after the connection settles).
        let tcp = failed("Error (criu/sk-inet.c:200): inet: Connected TCP socket");
        assert!(tcp.transient() && !port_taken(&tcp));
        assert!(!port_taken(&failed(
            "Error (criu/cr-dump.c:1): Dumping FAILED."
        )));
    }
}
