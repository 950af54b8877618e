//! A testbed's life: addresses and commands inside hosts, unreachable pairs, cleanup on drop and
//! on panic, and `brume-testnet cleanup` keeping live testbeds. Need root (CI runs as root, with
//! `BRUME_REQUIRE=all`, so a missing root fails there instead of skipping).

mod common;

use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use brume_testnet::{netns, require, Testbed};

fn exists(ns: &str) -> bool {
    Path::new(netns::NETNS_DIR).join(ns).exists()
}

/// The network namespace process `pid` is in, as (device, inode) of its nsfs file.
fn net_ns_of(pid: u32) -> (u64, u64) {
    let m = std::fs::metadata(format!("/proc/{pid}/ns/net")).expect("read /proc/PID/ns/net");
    (m.dev(), m.ino())
}

/// The namespace a `/run/netns/NAME` file stands for, as (device, inode).
fn net_ns_named(name: &str) -> (u64, u64) {
    let m = std::fs::metadata(Path::new(netns::NETNS_DIR).join(name)).expect("stat the netns");
    (m.dev(), m.ino())
}

#[test]
fn hosts_have_their_address_and_commands_run_inside() {
    if !require::root("hosts_have_their_address_and_commands_run_inside") {
        return;
    }
    let bed = Testbed::new(3, |_, _| 1.0).expect("build testbed");
    let mut addrs: Vec<_> = (0..3).map(|i| bed.addr(i)).collect();
    addrs.dedup();
    assert_eq!(addrs.len(), 3);
    for i in 0..3 {
        assert!(bed.netns(i).starts_with(&format!("brume-{}-", bed.tag())));
        let out = bed
            .command(i, "ip")
            .args(["-4", "-o", "addr", "show", "dev", "brume0"])
            .output()
            .expect("run ip inside the host");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("{}/16", bed.addr(i))),
            "host {i}: {text}"
        );
    }
}

/// Removes a file on drop (a file a test expects never to exist).
struct RemoveFile(std::path::PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_command_for_a_host_that_cannot_be_entered_does_not_run() {
    if !require::root("a_command_for_a_host_that_cannot_be_entered_does_not_run") {
        return;
    }
    let bed = Testbed::new(1, |_, _| 1.0).expect("build testbed");
    netns::delete(bed.netns(0)).expect("delete the namespace under the testbed");
    let marker = RemoveFile(std::env::temp_dir().join(format!(
        "brume-lifecycle-{}-{}",
        std::process::id(),
        bed.tag()
    )));
    let err = bed
        .command(0, "touch")
        .arg(&marker.0)
        .status()
        .expect_err("a command for a deleted namespace must not run");
    assert!(!marker.0.exists(), "the program ran outside its namespace");
    eprintln!("spawn into a deleted namespace fails: {err}");
}

#[test]
fn unreachable_pairs_drop_packets() {
    if !require::root("unreachable_pairs_drop_packets") {
        return;
    }
    let bed = Testbed::new(2, |_, _| -1.0).expect("build testbed");
    let srv = common::echo_server(&bed, 1);
    // The SYN is dropped, so the connect can only time out (whatever the timeout: a success
    // would be the bug).
    let result = bed
        .run_in(0, || {
            TcpStream::connect_timeout(&srv.addr, Duration::from_millis(300))
        })
        .unwrap();
    assert!(result.is_err(), "connected across an unreachable pair");
    // The router counts the drop when its thread has read the SYN; on a loaded machine that may
    // be after the connect gave up: wait for it (a liveness bound, not a speed claim).
    common::wait_for("the router to count a dropped packet", || {
        let stats = bed.stats();
        (stats.dropped_unreachable > 0, format!("{stats:?}"))
    });
}

#[test]
fn drop_deletes_the_namespaces_and_kills_what_runs_inside() {
    if !require::root("drop_deletes_the_namespaces_and_kills_what_runs_inside") {
        return;
    }
    let bed = Testbed::new(2, |_, _| 5.0).expect("build testbed");
    let names: Vec<String> = (0..2).map(|i| bed.netns(i).to_string()).collect();
    let mut child = bed
        .command(1, "sleep")
        .arg("600")
        .spawn()
        .expect("spawn sleep inside host 1");
    // Testbed::command enters the namespace before exec: once spawn has returned the child is
    // inside, with no wait.
    assert_eq!(
        net_ns_of(child.id()),
        net_ns_named(&names[1]),
        "the child is not in {} right after spawn",
        names[1]
    );
    assert!(names.iter().all(|n| exists(n)));
    drop(bed);
    assert!(names.iter().all(|n| !exists(n)), "{names:?} left behind");
    let status = child.wait().expect("wait for sleep");
    assert!(!status.success(), "the process inside was not killed");
}

#[test]
fn a_panic_still_deletes_the_namespaces() {
    if !require::root("a_panic_still_deletes_the_namespaces") {
        return;
    }
    let mut names = Vec::new();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let bed = Testbed::new(2, |_, _| 5.0).expect("build testbed");
        names = (0..2).map(|i| bed.netns(i).to_string()).collect();
        panic!("a test failing while its testbed is up");
    }));
    assert!(caught.is_err());
    assert_eq!(names.len(), 2);
    assert!(names.iter().all(|n| !exists(n)), "{names:?} left behind");
}

/// A namespace and owner marker that look like a crashed run's, removed on drop whatever the
/// test does (cleanup is what the test expects to remove them; this guard is for its failure).
struct StaleRun {
    tag: String,
    name: String,
}

impl StaleRun {
    /// A fresh tag (atomically claimed, so no live testbed can get it), a namespace for it, and
    /// a marker naming a process that cannot exist (above the kernel's largest pid).
    fn create() -> StaleRun {
        let tag = loop {
            let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
            if !exists(&netns::name(&tag, 0)) && netns::claim_owner(&tag).expect("claim a tag") {
                break tag;
            }
        };
        let stale = StaleRun {
            name: netns::name(&tag, 0),
            tag,
        };
        std::fs::write(netns::owner_file(&stale.tag), "2147483646").unwrap();
        netns::create(&stale.name).expect("create a stale namespace");
        stale
    }
}

impl Drop for StaleRun {
    fn drop(&mut self) {
        let _ = netns::delete(&self.name);
        netns::remove_owner(&self.tag);
    }
}

#[test]
fn cleanup_removes_crashed_runs_and_keeps_live_testbeds() {
    if !require::root("cleanup_removes_crashed_runs_and_keeps_live_testbeds") {
        return;
    }
    let bed = Testbed::new(2, |_, _| 2.0).expect("build testbed");
    // A crashed run: a namespace whose owner marker names a process that does not exist.
    let crashed = StaleRun::create();

    let out = Command::new(env!("CARGO_BIN_EXE_brume-testnet"))
        .arg("cleanup")
        .output()
        .expect("run brume-testnet cleanup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cleanup failed: {text}");
    assert!(
        text.contains(&format!("removed {}", crashed.name)),
        "{text}"
    );
    assert!(!exists(&crashed.name), "{} still there", crashed.name);
    assert!(!netns::owner_file(&crashed.tag).exists());
    assert!(
        (0..2).all(|i| exists(bed.netns(i))),
        "a live testbed was removed: {text}"
    );

    // And the live testbed still routes, never faster than its matrix.
    let srv = common::echo_server(&bed, 1);
    let rtts = common::echo_rtts(&bed, 0, srv.addr, 3);
    common::assert_never_below("echo after cleanup", &rtts, 2.0);
}
