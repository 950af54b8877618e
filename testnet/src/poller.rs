//! A client that keeps asking a migrating task for its counter and records who answered, so a
//! move's downtime is read off the answers exactly, whatever the migration mode.
//!
//! Why it is not a plain loop with a timeout: a Unix listener's backlog takes connections while
//! its process is frozen, so during a migration a naive client connects to the frozen original
//! and waits there. In pre-copy the original dies at the final dump and the wait ends; in
//! post-copy the frozen original lives on until the target has every page, seconds later,
//! while the restored copy already answers on the same path. A timeout does not fix it: a
//! request given up on a task that is only paused (a pre-copy round freezes it too) is still
//! answered later, so the counter would skip. So each connection's listener is identified by
//! the PID behind it (`SO_PEERCRED`): a request to the original that is not answered promptly
//! is kept open (answered after a pause, or never, if the original dies), and a new request is
//! only sent once the socket path names another socket (its inode changed: the restored task
//! bound it), never into the backlog of the paused one. No request is ever abandoned on a live
//! process, so the counter must go up by exactly one per recorded answer, and the downtime is
//! the gap between the original's last answer and the restored task's first.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One answer: when it came, the number in it, and the host PID of the process that answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub at: Instant,
    pub value: u64,
    pub peer: u32,
}

/// How long a request is waited for before the poller looks elsewhere meanwhile.
const PROMPT: Duration = Duration::from_millis(2);
/// The longest any request is waited for.
const PATIENCE: Duration = Duration::from_secs(60);

/// Polls from a thread until [`Poller::finish`].
pub struct Poller {
    stop: Arc<AtomicBool>,
    log: Arc<Log>,
    thread: Option<JoinHandle<()>>,
}

/// The answers so far, and whether the polling thread has ended; [`Poller::wait_until`] is
/// woken by every answer.
#[derive(Default)]
struct Log {
    state: Mutex<(Vec<Answer>, bool)>,
    changed: Condvar,
}

impl Log {
    fn push(&self, a: Answer) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .push(a);
        self.changed.notify_all();
    }

    fn end(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.changed.notify_all();
    }
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// The PID of the process that owns the listener `s` is connected to.
fn peer_pid(s: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`, which is that large.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// A request on its connection, waiting for its answer line.
struct Pending {
    reader: BufReader<UnixStream>,
    peer: u32,
    /// The socket path's inode when the request was sent.
    ino: Option<u64>,
    sent: Instant,
    line: String,
}

enum Outcome {
    Answered(Answer),
    /// Not yet; the connection is still open.
    Waiting,
    /// The connection ended without an answer: its process died before serving it.
    Gone,
}

impl Pending {
    fn send(socket: &Path, request: &str) -> Option<Pending> {
        let mut s = UnixStream::connect(socket).ok()?;
        let peer = peer_pid(&s)?;
        let ino = inode(socket);
        s.write_all(format!("{request}\n").as_bytes()).ok()?;
        Some(Pending {
            reader: BufReader::new(s),
            peer,
            ino,
            sent: Instant::now(),
            line: String::new(),
        })
    }

    /// Waits up to `bound` for the answer.
    fn wait(&mut self, bound: Duration) -> Outcome {
        if self
            .reader
            .get_ref()
            .set_read_timeout(Some(bound.max(Duration::from_micros(100))))
            .is_err()
        {
            return Outcome::Gone;
        }
        match self.reader.read_line(&mut self.line) {
            Ok(0) => Outcome::Gone,
            Ok(_) if self.line.ends_with('\n') => match self.line.trim().parse::<u64>() {
                Ok(value) => Outcome::Answered(Answer {
                    at: Instant::now(),
                    value,
                    peer: self.peer,
                }),
                Err(_) => Outcome::Gone,
            },
            Ok(_) => Outcome::Waiting,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if self.sent.elapsed() > PATIENCE {
                    Outcome::Gone
                } else {
                    Outcome::Waiting
                }
            }
            Err(_) => Outcome::Gone,
        }
    }
}

impl Poller {
    /// Sends `request` (a line the task answers with a number) to the task at `socket` every
    /// `every`, from a thread that first runs `setup` (e.g. entering a network namespace; if it
    /// fails, nothing is polled).
    pub fn start(
        socket: &Path,
        request: &str,
        every: Duration,
        setup: impl FnOnce() -> bool + Send + 'static,
    ) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let log = Arc::new(Log::default());
        let shared = log.clone();
        let socket: PathBuf = socket.to_path_buf();
        let request = request.to_string();
        let thread = std::thread::spawn(move || {
            /// Marks the log ended when the thread returns or unwinds.
            struct Ended(Arc<Log>);
            impl Drop for Ended {
                fn drop(&mut self) {
                    self.0.end();
                }
            }
            let log = Ended(shared);
            let log = &log.0;
            if !setup() {
                return;
            }
            // Requests not answered promptly, each on the socket the path named when it went.
            let mut stuck: Vec<Pending> = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                stuck.retain_mut(|p| match p.wait(Duration::from_micros(200)) {
                    Outcome::Answered(a) => {
                        log.push(a);
                        false
                    }
                    Outcome::Gone => false,
                    Outcome::Waiting => true,
                });
                // Never a second request into the backlog of a socket that has not answered.
                let current = inode(&socket);
                if !stuck.iter().any(|p| p.ino == current) {
                    if let Some(mut p) = Pending::send(&socket, &request) {
                        match p.wait(PROMPT) {
                            Outcome::Answered(a) => log.push(a),
                            Outcome::Waiting => stuck.push(p),
                            Outcome::Gone => {}
                        }
                    }
                }
                std::thread::sleep(every);
            }
        });
        Poller {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// The answers so far, in order.
    pub fn answers(&self) -> Vec<Answer> {
        self.log
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Waits, woken by each answer, until `done` holds for the answers so far; gives up after
    /// `timeout` or when polling has stopped (its setup failed). Returns whether `done` held, and
    /// the answers it was last asked about (for the caller's message when it did not).
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[Answer]) -> bool,
    ) -> (bool, Vec<Answer>) {
        let deadline = Instant::now() + timeout;
        let mut state = self.log.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if done(&state.0) {
                return (true, state.0.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.1 || left.is_zero() {
                return (false, state.0.clone());
            }
            state = self
                .log
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops polling and returns every answer, in order.
    pub fn finish(mut self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut self.log.state.lock().unwrap_or_else(|e| e.into_inner()).0)
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The switch from `original` to another process: (last answer of the original, first answer
/// of another), if both exist.
pub fn switch(log: &[Answer], original: u32) -> Option<(Answer, Answer)> {
    let first_new = log.iter().position(|a| a.peer != original)?;
    let last_old = log[..first_new].iter().rev().find(|a| a.peer == original)?;
    Some((*last_old, log[first_new]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn answers_carry_the_pid_of_the_listener() {
        let dir = std::env::temp_dir().join(format!("brume-poller-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for (n, conn) in listener.incoming().take(3).enumerate() {
                let mut conn = conn.unwrap();
                let mut line = String::new();
                BufReader::new(&conn).read_line(&mut line).unwrap();
                writeln!(conn, "{}", n + 1).unwrap();
            }
        });
        let me = std::process::id();
        let poller = Poller::start(&path, "TICK", Duration::from_millis(1), || true);
        server.join().unwrap();
        let log = poller.finish();
        let values: Vec<u64> = log.iter().map(|a| a.value).collect();
        assert_eq!(values, vec![1, 2, 3]);
        assert!(log.iter().all(|a| a.peer == me), "{log:?}");
        assert_eq!(switch(&log, me), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn wait_until_wakes_on_answers_and_gives_up_when_polling_cannot_start() {
        let dir = std::env::temp_dir().join(format!("brume-test-poller-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for (n, conn) in listener.incoming().take(5).enumerate() {
                let mut conn = conn.unwrap();
                let mut line = String::new();
                BufReader::new(&conn).read_line(&mut line).unwrap();
                writeln!(conn, "{}", n + 1).unwrap();
            }
        });
        let poller = Poller::start(&path, "TICK", Duration::from_millis(1), || true);
        let (done, seen) = poller.wait_until(Duration::from_secs(60), |log| log.len() >= 3);
        assert!(done, "{seen:?}");
        assert!(poller.answers().len() >= 3);
        server.join().unwrap();
        let values: Vec<u64> = poller.finish().iter().map(|a| a.value).collect();
        assert_eq!(values, vec![1, 2, 3, 4, 5]);

        // A setup that fails ends polling: the wait returns at once, not after its timeout.
        let poller = Poller::start(&path, "TICK", Duration::from_millis(1), || false);
        let (done, seen) = poller.wait_until(Duration::from_secs(3600), |log| !log.is_empty());
        assert!(!done && seen.is_empty());
        assert!(poller.finish().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_switch_is_the_last_old_and_the_first_new_answer() {
        let t = Instant::now();
        let a = |value, peer| Answer { at: t, value, peer };
        let log = [a(1, 7), a(2, 7), a(3, 9), a(4, 9)];
        assert_eq!(switch(&log, 7), Some((a(2, 7), a(3, 9))));
    }
}
