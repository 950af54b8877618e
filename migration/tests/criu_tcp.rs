//! Checkpoint and restore of a process with a TCP listening socket: the relay example
//! (examples/relay, its `STATE` line answers the requests served so far). Every real brume task
//! listens on a TCP port, so this is the test that says whether live migration can work here.
//!
//! It requires the restore path: the counter the relay keeps in memory must come back from the
//! checkpoint. criu 4.1.1 and older cannot dump any inet socket on Linux >= 6.16 (these machines
//! run 6.18): `Error (criu/sockets.c:628): sockets: Can't get 1:16 opt: Operation not supported`
//! (getsockopt SO_PASSCRED/SO_PASSSEC are refused on inet sockets since kernel commit
//! 7d8d93fdde50b; criu issues #2705/#2718, fixed in criu 4.2). scripts/install-criu.sh installs
//! 4.2.x from Debian sid for that reason; when this test meets the old failure it fails with a
//! message saying the installed criu is too old, rather than passing on a machine that cannot
//! migrate anything.
//!
//! The relay is started in its own session (`setsid`), like the CRIU workload, so the dump does
//! not depend on the session or terminal the test runner happens to have. The dump waits until
//! the relay has closed every client connection: a half-closed one (CLOSE_WAIT) would need
//! `--tcp-established`, which is not what this test is about.
//!
//! The relay is built by scripts/build-static.sh into
//! target/static/x86_64-unknown-linux-gnu/release/brume-relay; the test skips loudly without it.

mod criu_support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use brume_migration::criu::{Criu, CriuError, DumpOptions, RestoreOptions};
use criu_support::{require_criu, KillOnDrop, TempDir};

fn relay_binary() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/static/x86_64-unknown-linux-gnu/release/brume-relay");
    path.is_file().then_some(path)
}

struct Relay {
    child: Child,
    port: u16,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_relay(binary: &PathBuf) -> Relay {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut command = Command::new(binary);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .env("PORT", port.to_string())
        .env("BRUME_TASK", "a")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn relay");
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "relay not listening"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Relay { child, port }
}

fn line(port: u16, text: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    writeln!(s, "{text}").expect("send");
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).expect("read");
    answer.trim().to_string()
}

/// Waits (up to 10 s) until `pid` holds exactly one socket, its listener: the threads that
/// served the test's connections have seen them close.
fn wait_only_listener(pid: u32) {
    let started = Instant::now();
    loop {
        let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("read the relay's fds")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count();
        if sockets == 1 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the relay still holds {sockets} sockets after 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn relay_counter_continues_across_dump_and_restore() {
    require_criu();
    let Some(binary) = relay_binary() else {
        eprintln!("SKIPPED: run scripts/build-static.sh first (no static brume-relay)");
        return;
    };
    let dir = TempDir::new("criu-relay");
    let images = dir.path().join("images");
    let mut relay = start_relay(&binary);
    for _ in 0..3 {
        assert_eq!(line(relay.port, "hi"), "a");
    }
    assert_eq!(line(relay.port, "STATE"), "3");
    let pid = relay.child.id();
    wait_only_listener(pid);
    let criu = Criu::new();
    let version = criu.version().unwrap_or_else(|e| format!("unknown ({e})"));
    let dump = match criu.dump(&DumpOptions::new(&images, pid).leave_running(true)) {
        Ok(dump) => dump,
        Err(err @ CriuError::Failed { .. }) if err.hint().is_some_and(|h| h.contains("#2718")) => {
            panic!(
                "the installed criu ({version}) is too old: it cannot dump TCP sockets on this \
                 kernel (criu issue #2718, fixed in 4.2); run scripts/install-criu.sh. {err}"
            )
        }
        Err(other) => panic!("criu {version}: dump of the relay failed: {other}"),
    };
    eprintln!("criu {version} dumps TCP sockets here: checking the restore");
    // The original goes on after the dump; what it serves now must not reach the restored one.
    assert_eq!(line(relay.port, "hi"), "a");
    assert_eq!(line(relay.port, "STATE"), "4");
    let _ = relay.child.kill();
    let _ = relay.child.wait();
    Criu::wait_pid_gone(pid, Duration::from_secs(10)).expect("pid gone");
    let restore = criu
        .restore(&RestoreOptions::new(&images))
        .unwrap_or_else(|e| panic!("criu {version}: restore of the relay failed: {e}"));
    let _guard = KillOnDrop(Some(restore.pid));
    assert_eq!(restore.pid, pid, "CRIU restores the PID");
    assert_eq!(
        line(relay.port, "STATE"),
        "3",
        "the counter comes from the checkpoint"
    );
    assert_eq!(line(relay.port, "hi"), "a");
    assert_eq!(line(relay.port, "STATE"), "4", "and continues from it");
    let frozen = dump
        .stats
        .as_ref()
        .map(|s| format!("{} ms", s.frozen.as_millis()))
        .unwrap_or_else(|| "unknown".to_string());
    eprintln!(
        "relay: dump {} ms ({} KiB of images, frozen {frozen}), restore {} ms",
        dump.elapsed.as_millis(),
        dump.image_bytes / 1024,
        restore.elapsed.as_millis()
    );
}
