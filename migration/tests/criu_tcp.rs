//! Checkpoint and restore of a process with a TCP listening socket: the relay example
//! (examples/relay, its `STATE` line answers the requests served so far). Every real brume task
//! listens on a TCP port, so this is the test that says whether live migration can work here.
//!
//! It requires the restore path: the counter the relay keeps in memory must come back from the
//! checkpoint. criu 4.1.1 and older cannot dump any inet socket on Linux >= 6.16 (these machines
//! run 6.18): `Error (criu/sockets.c:628): sockets: Can't get 1:16 opt: Operation not supported`
//! (getsockopt SO_PASSCRED/SO_PASSSEC are refused on inet sockets since kernel commit
//! 7d8d93fdde50b; criu issues #2705/#2718, fixed in criu 4.2). scripts/install-criu.sh installs
//! criu >= 4.2 for that reason; when this test meets the old failure it fails with a
//! message saying the installed criu is too old, rather than passing on a machine that cannot
//! migrate anything.
//!
//! The relay is started in its own session (`setsid`), like the CRIU workload, so the dump does
//! not depend on the session or terminal the test runner happens to have. The dump waits until
//! the relay has closed every client connection: a half-closed one (CLOSE_WAIT) would need
//! `--tcp-established`, which is not what this test is about.
//!
//! The relay binds port 0 itself and the test reads the port from the line it prints (a port
//! the test picked and released could be taken before the relay binds it). Its stdout is a file
//! in the test's temp dir, opened for appending: CRIU dumps and restores it by path, and does
//! not check the size of an appended-to file.
//!
//! The relay is built by scripts/build-static.sh into
//! target/static/x86_64-unknown-linux-gnu/release/brume-relay; the test panics without it, and
//! skips without root and criu (fails under `BRUME_REQUIRE`).

mod criu_support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};

use brume_migration::criu::{Criu, CriuError, DumpOptions, RestoreOptions};
use criu_support::{static_binary, wait_for, workload_command, KillOnDrop, TempDir, LIVENESS};

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

/// Starts the relay on a port of its own choosing, in its own session, and returns once it has
/// said which port it listens on (it prints that line after it bound and listened).
fn start_relay(dir: &Path) -> Relay {
    let out = dir.join("relay.out");
    let stdout = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)
        .expect("relay stdout file");
    let mut command = workload_command(static_binary("brume-relay"));
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .env("PORT", "0")
        .env("BRUME_TASK", "a")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn relay");
    let port = wait_for("the relay's `listening on` line", LIVENESS, || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the relay exited ({status}); it printed {text:?}"));
        }
        text.split("listening on 127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{text:?}"))
    });
    Relay { child, port }
}

fn line(port: u16, text: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(LIVENESS)).expect("timeout");
    writeln!(s, "{text}").expect("send");
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).expect("read");
    answer.trim().to_string()
}

/// Waits until `pid` holds exactly one socket, its listener: the threads that served the test's
/// connections have seen them close.
fn wait_only_listener(pid: u32) {
    wait_for("the relay holding its listener only", LIVENESS, || {
        let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(|e| format!("/proc/{pid}/fd: {e}"))?
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count();
        if sockets == 1 {
            Ok(())
        } else {
            Err(format!("{sockets} sockets"))
        }
    });
}

#[test]
fn relay_counter_continues_across_dump_and_restore() {
    if !brume_testnet::require::criu("relay_counter_continues_across_dump_and_restore") {
        return;
    }
    let dir = TempDir::new("criu-relay");
    let images = dir.path().join("images");
    let mut relay = start_relay(dir.path());
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
    Criu::wait_pid_gone(pid, LIVENESS).expect("pid gone");
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
