//! Checkpoint and restore of real processes with the real `criu`: a workload's counter and
//! memory survive a dump with `--leave-running`, the death of the original and a restore; a
//! 64 MiB buffer comes back bit for bit; CRIU's own error lines reach the caller. Timings are
//! printed (`--nocapture`), never asserted.
//!
//! Needs root and CRIU >= 4 (CI has them after scripts/install-criu.sh); without them a test
//! skips, or fails under `BRUME_REQUIRE` (`brume_testnet::require`). The workload
//! (target/static/.../criu-workload, from scripts/build-static.sh) and its client live in
//! criu_support.rs. Every test has its own temp dir and socket; processes are killed on drop,
//! even when an assertion fails.

mod criu_support;

use brume_migration::criu::{Criu, CriuError, DumpOptions, RestoreOptions};
use brume_testnet::require;
use criu_support::{ask, expected_checksum, wait_ready, KillOnDrop, TempDir, Workload, LIVENESS};

#[test]
fn counter_and_memory_continue_after_dump_kill_restore() {
    if !require::criu("counter_and_memory_continue_after_dump_kill_restore") {
        return;
    }
    let dir = TempDir::new("criu-counter");
    let socket = dir.path().join("w.sock");
    let images = dir.path().join("images");
    let (mib, seed) = (8, 0x5eed_0001);
    let mut workload = Workload::start(&socket, mib, seed);

    for want in 1..=5 {
        assert_eq!(ask(&socket, "TICK"), want.to_string());
    }
    let sum = ask(&socket, "SUM");
    assert_eq!(sum, expected_checksum(mib, seed).to_string());

    let criu = Criu::new();
    let dump = criu
        .dump(&DumpOptions::new(&images, workload.pid).leave_running(true))
        .unwrap_or_else(|e| panic!("dump: {e}"));
    // The original runs on after the dump: its counter moves past the dumped value.
    assert_eq!(
        ask(&socket, "TICK"),
        "6",
        "the original must keep running after --leave-running"
    );
    assert_eq!(ask(&socket, "TICK"), "7");

    let old_pid = workload.pid;
    workload.kill_and_reap();
    Criu::wait_pid_gone(old_pid, LIVENESS).expect("old pid gone");

    let restore = criu
        .restore(&RestoreOptions::new(&images))
        .unwrap_or_else(|e| panic!("restore: {e}"));
    let _guard = KillOnDrop(Some(restore.pid));
    assert_eq!(restore.pid, old_pid, "CRIU restores the dumped pid");
    wait_ready(&socket);
    assert_eq!(ask(&socket, "PID"), old_pid.to_string());
    // The restored process continues from the dump (5), not from the original's last value (7).
    assert_eq!(
        ask(&socket, "TICK"),
        "6",
        "the counter continues from the checkpoint"
    );
    assert_eq!(ask(&socket, "SUM"), sum, "memory is the dumped memory");
    let frozen = dump.stats.map(|s| s.frozen.as_millis()).unwrap_or(0);
    eprintln!(
        "criu counter: dump {} ms (frozen {frozen} ms, {} KiB of images, {mib} MiB workload), restore {} ms",
        dump.elapsed.as_millis(),
        dump.image_bytes / 1024,
        restore.elapsed.as_millis()
    );
}

#[test]
fn a_64_mib_process_comes_back_bit_for_bit() {
    if !require::criu("a_64_mib_process_comes_back_bit_for_bit") {
        return;
    }
    let dir = TempDir::new("criu-64m");
    let socket = dir.path().join("w.sock");
    let images = dir.path().join("images");
    let (mib, seed) = (64, 0xfeed_0064);
    let mut workload = Workload::start(&socket, mib, seed);
    let expected = expected_checksum(mib, seed).to_string();
    assert_eq!(ask(&socket, "SUM"), expected);
    assert_eq!(ask(&socket, "TICK"), "1");

    // Without --leave-running CRIU kills the tree at the end of the dump, as a migration's final
    // dump does.
    let criu = Criu::new();
    let dump = criu
        .dump(&DumpOptions::new(&images, workload.pid))
        .unwrap_or_else(|e| panic!("dump: {e}"));
    let old_pid = workload.pid;
    workload.reap();
    Criu::wait_pid_gone(old_pid, LIVENESS).expect("old pid gone");
    assert!(
        dump.image_bytes >= (mib as u64) << 20,
        "the images hold at least the 64 MiB buffer: {} bytes",
        dump.image_bytes
    );
    let stats = dump.stats.expect("criu writes stats-dump");
    assert!(
        stats.pages_written >= (mib as u64) << 8,
        "64 MiB is 16384 pages: {stats:?}"
    );
    assert!(
        stats.frozen <= dump.elapsed,
        "{stats:?} within {:?}",
        dump.elapsed
    );

    let restore = criu
        .restore(&RestoreOptions::new(&images))
        .unwrap_or_else(|e| panic!("restore: {e}"));
    let _guard = KillOnDrop(Some(restore.pid));
    wait_ready(&socket);
    assert_eq!(
        ask(&socket, "SUM"),
        expected,
        "64 MiB checksum after restore"
    );
    assert_eq!(ask(&socket, "TICK"), "2");
    eprintln!(
        "criu 64 MiB: dump {} ms (frozen {} ms, memdump {} ms, memwrite {} ms, {} pages, {} MiB of images), restore {} ms",
        dump.elapsed.as_millis(),
        stats.frozen.as_millis(),
        stats.memdump.as_millis(),
        stats.memwrite.as_millis(),
        stats.pages_written,
        dump.image_bytes >> 20,
        restore.elapsed.as_millis()
    );
}

#[test]
fn criu_error_lines_reach_the_caller() {
    if !require::criu("criu_error_lines_reach_the_caller") {
        return;
    }
    let dir = TempDir::new("criu-err");
    // A pid above pid_max never exists.
    let err = Criu::new()
        .dump(&DumpOptions::new(dir.path().join("images"), 999_999_999))
        .expect_err("no such pid");
    let CriuError::Failed {
        action,
        errors,
        log_tail,
        ..
    } = &err
    else {
        panic!("expected Failed, got {err}");
    };
    assert_eq!(*action, "dump");
    assert!(!errors.is_empty(), "CRIU's Error lines are surfaced: {err}");
    assert!(
        errors.iter().all(|e| !e.contains("RLIMIT_NOFILE")),
        "the harmless rlimit line is dropped"
    );
    assert!(!log_tail.is_empty());
    eprintln!("criu error as reported: {err}");

    let err = Criu::new()
        .restore(&RestoreOptions::new(dir.path().join("empty")))
        .expect_err("no images");
    assert!(
        matches!(
            err,
            CriuError::Failed {
                action: "restore",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_missing_criu_binary_says_how_to_install_it() {
    let err = Criu::with_binary("/nonexistent/criu")
        .version()
        .expect_err("no binary");
    assert!(matches!(err, CriuError::Spawn { .. }));
    assert!(err.to_string().contains("install-criu.sh"), "{err}");
}

#[test]
fn version_is_at_least_4_and_check_passes() {
    if !require::criu("version_is_at_least_4_and_check_passes") {
        return;
    }
    let criu = Criu::new();
    let version = criu.version().expect("version");
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 4,
        "criu {version} is too old: bookworm's 3.17 fails here with a vDSO error"
    );
    criu.check().unwrap_or_else(|e| panic!("criu check: {e}"));
}
