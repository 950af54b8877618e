//! A testbed's life: addresses and commands inside hosts, unreachable pairs, cleanup on drop and
//! on panic, and `brume-testnet cleanup` keeping live testbeds. Need root (CI runs as root).

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use brume_testnet::Testbed;

fn exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

#[test]
fn hosts_have_their_address_and_commands_run_inside() {
    let bed = Testbed::new(3, |_, _| 1.0).expect("build testbed (needs root)");
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

#[test]
fn unreachable_pairs_drop_packets() {
    let bed = Testbed::new(2, |_, _| -1.0).expect("build testbed (needs root)");
    let srv = common::echo_server(&bed, 1);
    let result = bed
        .run_in(0, || {
            TcpStream::connect_timeout(&srv.addr, Duration::from_millis(300))
        })
        .unwrap();
    assert!(result.is_err(), "connected across an unreachable pair");
    assert!(bed.stats().dropped_unreachable > 0, "{:?}", bed.stats());
}

#[test]
fn drop_deletes_the_namespaces_and_kills_what_runs_inside() {
    let bed = Testbed::new(2, |_, _| 5.0).expect("build testbed (needs root)");
    let names: Vec<String> = (0..2).map(|i| bed.netns(i).to_string()).collect();
    let mut child = bed
        .command(1, "sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep inside host 1");
    // `ip netns exec` enters the namespace after it starts: wait until the child is inside
    // (what drop kills is what is in the namespace), bounded.
    let started = std::time::Instant::now();
    while !brume_testnet::netns::pids(&names[1]).contains(&(child.id() as i32)) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the child never entered {}",
            names[1]
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(names.iter().all(|n| exists(n)));
    drop(bed);
    assert!(names.iter().all(|n| !exists(n)), "{names:?} left behind");
    let status = child.wait().expect("wait for sleep");
    assert!(!status.success(), "the process inside was not killed");
}

#[test]
fn a_panic_still_deletes_the_namespaces() {
    let mut names = Vec::new();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let bed = Testbed::new(2, |_, _| 5.0).expect("build testbed (needs root)");
        names = (0..2).map(|i| bed.netns(i).to_string()).collect();
        panic!("a test failing while its testbed is up");
    }));
    assert!(caught.is_err());
    assert_eq!(names.len(), 2);
    assert!(names.iter().all(|n| !exists(n)), "{names:?} left behind");
}

#[test]
fn cleanup_removes_crashed_runs_and_keeps_live_testbeds() {
    let bed = Testbed::new(2, |_, _| 2.0).expect("build testbed (needs root)");
    // A crashed run: a namespace whose owner marker names a process that does not exist.
    let crashed = "brume-c0ffee-0";
    brume_testnet::netns::create(crashed).expect("create a stale namespace");
    std::fs::create_dir_all(brume_testnet::netns::OWNER_DIR).unwrap();
    std::fs::write(brume_testnet::netns::owner_file("c0ffee"), "2147483646").unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_brume-testnet"))
        .arg("cleanup")
        .output()
        .expect("run brume-testnet cleanup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cleanup failed: {text}");
    assert!(text.contains(&format!("removed {crashed}")), "{text}");
    assert!(!exists(crashed), "{crashed} still there");
    assert!(!brume_testnet::netns::owner_file("c0ffee").exists());
    assert!(
        (0..2).all(|i| exists(bed.netns(i))),
        "a live testbed was removed: {text}"
    );

    // And the live testbed still routes.
    let srv = common::echo_server(&bed, 1);
    let rtt = common::median_ms(&common::echo_rtts(&bed, 0, srv.addr, 3));
    common::assert_close("echo after cleanup", rtt, 2.0);
}
