//! Post-copy with CRIU's lazy pages, over a page-server connection that brume carries itself.
//!
//! Why: these kernels have no soft-dirty bits, so there is no `criu pre-dump` and a final dump
//! writes all of a task's memory while the task is frozen: pre-copy downtime grows with memory.
//! With lazy pages, the frozen task's dump ([`Criu::dump_lazy`]) writes every image except its
//! anonymous memory and then serves those pages from a page server inside the same `criu dump`;
//! the target restores from the small images at once (`criu restore --lazy-pages`) and its
//! `criu lazy-pages` daemon ([`Criu::start_lazy_pages`]) fetches pages on first touch (userfaultfd) and
//! pushes the rest in the background. The source's CRIU keeps the task frozen, and so every page,
//! until the daemon has them all; then the dump exits and the source task is gone. If the
//! transfer fails first, the source's CRIU thaws its task.
//!
//! Why `--ps-socket`: the page server and the lazy-pages daemon would otherwise talk over a TCP
//! connection of their own, which does not cross brume's overlay and binds in whatever network
//! namespace criu runs in. Here each side gets one end of a socketpair instead, and the caller
//! relays the bytes between the two over its migration stream ([`crate::live`]). `--status-fd`
//! says when each side is ready: the dump once every image is written, the daemon once it waits
//! for the restore.
//!
//! Two facts of the page server that shape the callers: it takes an end of file on its socket
//! for a finished transfer (and then kills the task), so a caller that gives up must send a
//! command it does not know ([`abort_page_server`]), which fails the transfer and thaws the task;
//! and it sizes a pipe to 4 MiB, which without CAP_SYS_RESOURCE (root lacks it on these
//! machines) needs `fs.pipe-max-size` >= 4 MiB ([`check_pipe_max_size`], docs/criu.md).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::criu::{failed, Criu, CriuError, DumpOptions};

/// The most bytes read from criu's status descriptor while waiting for its ready byte.
const MAX_STATUS_TEXT: usize = 64 << 10;

/// The most characters of a runc's stderr quoted in its error.
const MAX_STDERR_QUOTE: usize = 2000;

/// What the page server needs `fs.pipe-max-size` to be, at least.
pub const MIN_PIPE_MAX_SIZE: u64 = 4 << 20;

const PIPE_MAX_SIZE: &str = "/proc/sys/fs/pipe-max-size";

/// Fails with [`CriuError::PipeMaxSize`] unless this machine lets the page server size its pipe.
pub fn check_pipe_max_size() -> Result<(), CriuError> {
    let current = std::fs::read_to_string(PIPE_MAX_SIZE)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if current < MIN_PIPE_MAX_SIZE {
        return Err(CriuError::PipeMaxSize {
            current,
            needed: MIN_PIPE_MAX_SIZE,
        });
    }
    Ok(())
}

/// The request that ends a page server's transfer as finished (CRIU's `PS_IOV_CLOSE`, in the
/// 32-byte `struct page_server_iov`): a lazy dump's server answers it with a 4-byte status and
/// exits, and CRIU ends the dumped task. The source sends it only once the target holds every
/// page (the target's proxy never forwards its daemon's own close).
pub fn close_request() -> [u8; 32] {
    let mut request = [0u8; 32];
    request[..4].copy_from_slice(&0x1023u32.to_le_bytes());
    request
}

/// Makes the page server at the other end of `page_socket` fail its transfer, so the dump thaws
/// the task instead of killing it: one request with a command it does not know. (Closing the
/// socket would not do: an end of file is a finished transfer to it.) The request is 32 bytes,
/// CRIU's `struct page_server_iov`; a server reading the older 24-byte layout fails on it too.
pub fn abort_page_server(page_socket: &mut impl Write) -> io::Result<()> {
    let mut request = [0u8; 32];
    request[..4].copy_from_slice(&0x7777u32.to_le_bytes());
    page_socket.write_all(&request)?;
    page_socket.flush()
}

/// The local end of a lazy dump's page-server connection, whose bytes the caller relays to the
/// target's lazy-pages daemon and back.
#[derive(Debug)]
pub enum PageSocket {
    /// A socketpair's end: criu started by brume got the other one (`--ps-socket`).
    Unix(UnixStream),
    /// A loopback connection to the page server of a criu started by runc, which can hand criu
    /// no socket: it listens on a port (`crate::checkpointer::RuncContainer::dump_lazy`).
    Tcp(TcpStream),
}

/// A running `criu dump --lazy-pages` (see the module's doc), by brume's own criu or by runc's.
#[derive(Debug)]
pub struct LazyDump {
    process: Process,
    images_dir: PathBuf,
}

/// A running `criu lazy-pages` daemon.
#[derive(Debug)]
pub struct LazyPages {
    process: Process,
}

/// One criu process with its status pipe.
#[derive(Debug)]
struct Process {
    action: &'static str,
    child: Option<Child>,
    status: Option<io::PipeReader>,
    log_file: PathBuf,
    /// A file with the process's own stderr (runc's messages), quoted when it fails.
    stderr_file: Option<PathBuf>,
    /// The loopback port of the page server of a lazy dump run by runc, whose criu outlives a
    /// killed runc: dropped unfinished, it is asked to thaw the task there.
    page_port: Option<u16>,
    started: Instant,
}

impl Criu {
    /// Starts `criu dump --lazy-pages` of `opts.pid` into `opts.images_dir` (its other options
    /// apply; `leave_running` must be off) and returns it with the local end of its page-server
    /// socket. The task is frozen from now on; [`LazyDump::wait_ready`] returns once the images
    /// can be sent.
    pub fn dump_lazy(&self, opts: &DumpOptions) -> Result<(LazyDump, PageSocket), CriuError> {
        check_pipe_max_size()?;
        std::fs::create_dir_all(&opts.images_dir).map_err(|source| CriuError::ImagesDir {
            path: opts.images_dir.clone(),
            source,
        })?;
        let mut args = opts.args();
        args.push("--lazy-pages".into());
        if opts.defer_lazy_reads {
            args.push("--lazy-pages-defer-read".into());
        }
        let (process, socket) = self.start("dump", args, opts.log_path())?;
        Ok((
            LazyDump {
                process,
                images_dir: opts.images_dir.clone(),
            },
            PageSocket::Unix(socket),
        ))
    }

    /// Starts `criu lazy-pages --page-server` on `images_dir` (the images a lazy dump wrote, as
    /// received) and waits until it is ready for `criu restore --lazy-pages` on the same
    /// directory. Returns it with the local end of its page-server socket, whose bytes must
    /// reach the source's [`LazyDump`] socket and back.
    pub fn start_lazy_pages(
        &self,
        images_dir: &Path,
        log_file: &Path,
    ) -> Result<(LazyPages, UnixStream), CriuError> {
        let args = vec![
            "lazy-pages".to_string(),
            "--page-server".to_string(),
            "-D".to_string(),
            images_dir.display().to_string(),
            "-o".to_string(),
            log_file.display().to_string(),
            "-v4".to_string(),
        ];
        let (mut process, socket) = self.start("lazy-pages", args, log_file.to_path_buf())?;
        process.wait_ready()?;
        Ok((LazyPages { process }, socket))
    }

    /// Spawns `criu <args> --ps-socket A --status-fd B` with the far ends of a fresh socketpair
    /// and status pipe.
    fn start(
        &self,
        action: &'static str,
        mut args: Vec<String>,
        log_file: PathBuf,
    ) -> Result<(Process, UnixStream), CriuError> {
        let io_error = |source| CriuError::ImagesDir {
            path: log_file.clone(),
            source,
        };
        let (ours, theirs) = UnixStream::pair().map_err(io_error)?;
        let (status, status_w) = io::pipe().map_err(io_error)?;
        // The two ends go in as criu's stdin and stdout, so the spawn needs no code of ours in
        // the child and std starts criu with posix_spawn (vfork): a fork copies the page tables
        // of this process, which on a target holds the task's replica, and cost 26-55 ms inside
        // the freeze at 512 MiB (measured). Neither mode reads stdin, and with `-o` criu writes
        // to stdout only what `--display-stats` or `--version` ask for ([`Process::wait_ready`]
        // skips anything before the status byte all the same).
        args.push("--ps-socket".into());
        args.push("0".into());
        args.push("--status-fd".into());
        args.push("1".into());
        let started = Instant::now();
        let child = self
            .command()
            .args(&args)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::from(OwnedFd::from(status_w)))
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        // Only criu holds the far ends now (std closed ours after the spawn): its exit closes
        // them, which is how a failure shows.
        Ok((
            Process {
                action,
                child: Some(child),
                status: Some(status),
                log_file,
                stderr_file: None,
                page_port: None,
                started,
            },
            ours,
        ))
    }
}

impl LazyDump {
    /// A lazy dump that runc runs: `child`, whose criu writes its ready byte into `status`,
    /// logs to `log_file` and serves pages on loopback `page_port`, runc's own messages going
    /// to `stderr_file`.
    pub(crate) fn of_runc(
        child: Child,
        status: io::PipeReader,
        images_dir: &Path,
        log_file: PathBuf,
        stderr_file: PathBuf,
        page_port: u16,
        started: Instant,
    ) -> LazyDump {
        LazyDump {
            process: Process {
                action: "dump",
                child: Some(child),
                status: Some(status),
                log_file,
                stderr_file: Some(stderr_file),
                page_port: Some(page_port),
                started,
            },
            images_dir: images_dir.to_path_buf(),
        }
    }

    /// Blocks until every image is written and the page server waits for the target (the
    /// freeze, as CRIU's dump takes it, is over), and returns how long that took; or fails, the
    /// task thawed, if the dump failed.
    pub fn wait_ready(&mut self) -> Result<Duration, CriuError> {
        self.process.wait_ready()
    }

    /// The directory the images are in.
    pub fn images_dir(&self) -> &Path {
        &self.images_dir
    }

    /// Blocks until the dump exits: `Ok` once the target holds every page (the task is gone
    /// here), an error if the transfer failed (the task runs here again).
    pub fn wait(mut self) -> Result<Duration, CriuError> {
        self.process.wait()
    }
}

impl LazyPages {
    /// Blocks until the daemon exits: `Ok` once every page of the restored task arrived.
    pub fn wait(mut self) -> Result<Duration, CriuError> {
        self.process.wait()
    }
}

impl Process {
    fn wait_ready(&mut self) -> Result<Duration, CriuError> {
        // criu writes one zero byte when ready; anything before it is text criu printed.
        let ready = match self.status.take() {
            Some(s) => io::BufReader::new(s)
                .bytes()
                .take(MAX_STATUS_TEXT)
                .map_while(Result::ok)
                .any(|b| b == 0),
            None => true,
        };
        if ready {
            return Ok(self.started.elapsed());
        }
        // The status pipe closed without a byte: criu exited.
        self.wait()?;
        Err(CriuError::Failed {
            action: self.action,
            status: std::process::ExitStatus::default(),
            elapsed: self.started.elapsed(),
            errors: vec!["criu exited successfully before it was ready".into()],
            log_tail: Vec::new(),
            log_file: self.log_file.clone(),
        })
    }

    fn wait(&mut self) -> Result<Duration, CriuError> {
        let Some(mut child) = self.child.take() else {
            return Ok(self.started.elapsed());
        };
        let status = child.wait().map_err(|e| CriuError::ImagesDir {
            path: self.log_file.clone(),
            source: e,
        })?;
        let elapsed = self.started.elapsed();
        if status.success() {
            return Ok(elapsed);
        }
        let mut e = failed(self.action, status, elapsed, "", &self.log_file);
        // runc's own words say what failed before criu ran or what it made of criu's failure.
        let said = self
            .stderr_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|s| s.trim().chars().take(MAX_STDERR_QUOTE).collect::<String>())
            .unwrap_or_default();
        if let (CriuError::Failed { errors, .. }, false) = (&mut e, said.is_empty()) {
            errors.push(said);
        }
        Err(e)
    }
}

/// How long a dropped runc lazy dump may take to thaw its task and exit before it is killed.
const THAW_ON_DROP: Duration = Duration::from_secs(10);

impl Drop for Process {
    /// A process nobody waits for any more is killed, so no criu outlives its migration. A
    /// lazy dump run by runc is first asked to thaw its task: killing runc would leave its
    /// criu waiting for a peer with the container frozen. (Nobody connected yet: the request
    /// thaws it. Somebody did: the connection waits in the backlog unanswered, and runc is
    /// killed after the bound.)
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(port) = self.page_port {
            let server = (std::net::Ipv4Addr::LOCALHOST, port).into();
            if let Ok(mut s) = TcpStream::connect_timeout(&server, Duration::from_secs(1)) {
                if abort_page_server(&mut s).is_ok() {
                    let until = Instant::now() + THAW_ON_DROP;
                    while Instant::now() < until {
                        if !matches!(child.try_wait(), Ok(None)) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process whose status pipe carries `bytes` and then closes (no child: its wait is Ok).
    fn process_saying(bytes: &[u8]) -> Process {
        let (r, mut w) = io::pipe().unwrap();
        w.write_all(bytes).unwrap();
        drop(w);
        Process {
            action: "lazy-pages",
            child: None,
            status: Some(r),
            log_file: PathBuf::from("/nonexistent/log"),
            stderr_file: None,
            page_port: None,
            started: Instant::now(),
        }
    }

    #[test]
    fn ready_is_the_zero_byte_even_after_text_and_only_it() {
        assert!(process_saying(&[0]).wait_ready().is_ok());
        // criu printed to its stdout (the status pipe) before it was ready.
        assert!(process_saying(b"Version: 4.2.1\n\0").wait_ready().is_ok());
        // Text and then the end: criu exited without ever being ready.
        assert!(process_saying(b"usage\n").wait_ready().is_err());
        assert!(process_saying(b"").wait_ready().is_err());
    }

    #[test]
    fn the_abort_request_is_an_unknown_command() {
        let mut buf = Vec::new();
        abort_page_server(&mut buf).unwrap();
        assert_eq!(buf.len(), 32);
        let cmd = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        // CRIU's commands: 1..=7, 0x1023 (close), 0x1024 (force close), in the low 16 bits.
        assert!(!(1..=7).contains(&(cmd & 0xffff)));
        assert_ne!(cmd & 0xffff, 0x1023);
        assert_ne!(cmd & 0xffff, 0x1024);
    }

    #[test]
    fn a_missing_criu_is_a_spawn_error_not_a_hang() {
        let criu = Criu::with_binary("/nonexistent/criu");
        let tmp = crate::testing::temp_dir("lazy");
        let dir = tmp.path().to_path_buf();
        let r = criu.start_lazy_pages(&dir, &dir.join("lazy.log"));
        assert!(matches!(r, Err(CriuError::Spawn { .. })), "{r:?}");
    }
}
