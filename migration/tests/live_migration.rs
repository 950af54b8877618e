//! Live migration of a real process with the real CRIU over a loopback TCP connection: the
//! `dirtier` workload keeps rewriting its memory while pre-copy rounds ship it, the counter it
//! serves continues exactly across the move and its memory is exactly what its seed and the
//! steps it made say. Failure safety: a target that drops the link mid pre-copy leaves the task
//! running untouched; a restore that fails on the target brings the task back on the source.
//!
//! What is not asserted: how many pre-copy rounds ran, how much each sent, how long the task
//! was frozen. Those depend on the machine's speed and load; `brume bench migration` measures
//! them. Every wait here is on an event (answers of the poller, steps of the task), bounded by
//! `LIVENESS` (60 s) with the last state in the message.
//!
//! Needs root and criu >= 4 (skips otherwise, or fails under `BRUME_REQUIRE`). Each test has its
//! own tmpfs directory, socket and port; processes are killed on drop.

mod live_support;

use std::time::Duration;

use brume_migration::criu::Criu;
use brume_migration::live::wire::{read_message, write_message, Message};
use brume_migration::live::{
    migrate_in, migrate_out, LiveError, RoundStats, SourceOptions, TargetOptions,
};
use brume_migration::planner::PlannerConfig;
use live_support::{
    ask, assert_counter_continues, have_criu, longest_gap, poll, wait_answers, Dirtier, TempDir,
    TEST_BUDGET,
};
use tokio::net::{TcpListener, TcpStream};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn source_opts(dir: &TempDir) -> SourceOptions {
    let mut o = SourceOptions::new(dir.path().join("source"));
    o.planner = PlannerConfig {
        max_downtime: TEST_BUDGET,
        ..PlannerConfig::default()
    };
    o
}

#[test]
fn precopy_moves_a_64_mib_task_that_keeps_dirtying_its_memory() {
    if !have_criu("precopy_moves_a_64_mib_task_that_keeps_dirtying_its_memory") {
        return;
    }
    let dir = TempDir::new("live-64");
    let socket = dir.path().join("w.sock");
    let task = Dirtier::start(&socket, 64, 0x6464, 8.0);
    let before_steps = task.assert_state_consistent();
    let poller = poll(&socket, Duration::from_millis(2));
    // The poller has seen the task before the move.
    wait_answers(&poller, "answers before the move", 10);

    let rt = runtime();
    let mut rounds: Vec<RoundStats> = Vec::new();
    let staging = dir.path().join("staging");
    let (migrated, received) = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            migrate_in(stream, TargetOptions::new(staging)).await
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let migrated = migrate_out(stream, task.pid, source_opts(&dir), |r| {
            eprintln!("round {}: {r:?}", r.round);
            rounds.push(r.clone());
        })
        .await;
        (migrated, target.await.expect("target task"))
    });
    let migrated = migrated.unwrap_or_else(|e| panic!("migration: {e}"));
    let received = received.unwrap_or_else(|e| panic!("target: {e}"));
    // The restored task answers the poller (CRIU restores the same PID, so it is told apart by
    // when it answered: after the move returned).
    let at_restore = poller.answers().len();
    wait_answers(&poller, "answers after the move", at_restore + 10);
    let log = poller.finish();

    assert_eq!(received.pid, task.pid, "CRIU restores the same pid");
    assert_eq!(migrated.target_pid, task.pid);
    // At least one pre-copy round, by construction rather than timing: the planner starts with
    // a pre-copy round whenever the task's memory exceeds its delta threshold (64 MiB against
    // 256 KiB) and its prior forecast of dump + restore fits the budget (well under a second
    // against TEST_BUDGET), and no deadline is set. How many more, and what they sent, depends
    // on the machine's speed: `brume bench migration` reports it.
    let precopy: Vec<&RoundStats> = rounds.iter().filter(|r| !r.last).collect();
    assert!(!precopy.is_empty(), "a pre-copy round ran: {rounds:?}");
    assert!(rounds.last().is_some_and(|r| r.last));
    // The counter never skipped or repeated: the restored task continues from the frozen one's
    // last answer.
    assert_counter_continues(&log);
    // The memory is exactly what the seed and the steps the task made say, and dirtying goes on.
    let steps = task.assert_state_consistent();
    task.wait_dirtying_past(steps.max(before_steps));
    task.assert_state_consistent();
    assert_eq!(ask(&socket, "PID").expect("PID"), task.pid.to_string());
    let (gap, last_source, first_target) = longest_gap(&log).expect("answers");
    eprintln!(
        "live 64 MiB: {} pre-copy rounds, wire {:.1} MiB, total {} ms, downtime {} ms by the source (rebuild {} ms, restore {} ms), longest poller gap {} ms (counter {last_source} -> {first_target})",
        precopy.len(),
        migrated.wire_bytes as f64 / 1048576.0,
        migrated.total.as_millis(),
        migrated.downtime.as_millis(),
        migrated.rebuild.as_millis(),
        migrated.restore.as_millis(),
        gap.as_millis(),
    );
}

#[test]
fn a_target_that_drops_the_link_mid_precopy_leaves_the_task_running() {
    if !have_criu("a_target_that_drops_the_link_mid_precopy_leaves_the_task_running") {
        return;
    }
    let dir = TempDir::new("live-drop");
    let socket = dir.path().join("w.sock");
    let task = Dirtier::start(&socket, 32, 0xd209, 8.0);
    let counter: u64 = ask(&socket, "TICK").expect("TICK").parse().expect("n");
    let rt = runtime();
    let result = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            // Take the hello (answered as a version 2 target without a chunk store does) and a
            // few batches of the first round, then vanish.
            match read_message(&mut stream).await {
                Ok(Message::Hello { .. }) => {}
                other => panic!("expected the hello, got {other:?}"),
            }
            write_message(&mut stream, &Message::Welcome { store_chunks: 0 })
                .await
                .expect("welcome");
            let mut seen = 0;
            while seen < 4 {
                match read_message(&mut stream).await {
                    Ok(Message::Chunks { .. }) => seen += 1,
                    Ok(_) => {}
                    Err(e) => panic!("source stopped first: {e}"),
                }
            }
            drop(stream);
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let r = migrate_out(stream, task.pid, source_opts(&dir), |_| {}).await;
        target.await.expect("target");
        r
    });
    let err = result.expect_err("the target went away");
    assert!(matches!(err, LiveError::Link(_)), "{err}");
    assert!(err.task_untouched(), "{err}");
    // Same process, counter goes on from where it was, memory consistent, still dirtying.
    assert_eq!(ask(&socket, "PID").expect("PID"), task.pid.to_string());
    assert_eq!(
        ask(&socket, "TICK").expect("TICK"),
        (counter + 1).to_string()
    );
    let s1 = task.assert_state_consistent();
    task.wait_dirtying_past(s1);
    task.assert_state_consistent();
    assert!(
        !dir.path().join("source").exists(),
        "the source removed its round images"
    );
    eprintln!(
        "link dropped mid pre-copy: {err}; the task runs on as pid {}",
        task.pid
    );
}

#[test]
fn a_failed_restore_on_the_target_brings_the_task_back_on_the_source() {
    if !have_criu("a_failed_restore_on_the_target_brings_the_task_back_on_the_source") {
        return;
    }
    let dir = TempDir::new("live-fail");
    let socket = dir.path().join("w.sock");
    let task = Dirtier::start(&socket, 16, 0xfa11, 4.0);
    let poller = poll(&socket, Duration::from_millis(2));
    wait_answers(&poller, "answers before the move", 10);
    let rt = runtime();
    let staging = dir.path().join("staging");
    let result = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut opts = TargetOptions::new(staging);
            // A criu that fails every command: the restore fails after the final dump.
            opts.criu = Criu::with_binary("/bin/false");
            migrate_in(stream, opts).await
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let r = migrate_out(stream, task.pid, source_opts(&dir), |_| {}).await;
        (r, target.await.expect("target"))
    });
    // The task restored on the source answers the poller again.
    let at_restore = poller.answers().len();
    wait_answers(&poller, "answers after the local restore", at_restore + 10);
    let log = poller.finish();
    let (result, target) = result;
    assert!(target.is_err(), "the target's restore failed");
    let err = result.expect_err("the target could not restore");
    let LiveError::RestoredAtSource { pid, cause, .. } = &err else {
        panic!("expected the task back on the source, got {err}");
    };
    assert!(matches!(**cause, LiveError::Target { .. }), "{cause}");
    assert_eq!(*pid, task.pid);
    assert!(!err.task_untouched());
    assert_eq!(ask(&socket, "PID").expect("PID"), task.pid.to_string());
    assert_counter_continues(&log);
    let (gap, a, b) = longest_gap(&log).expect("answers");
    task.assert_state_consistent();
    eprintln!(
        "restore failed on the target; back on the source; longest poller gap {} ms (counter {a} -> {b}): {err}",
        gap.as_millis()
    );
}
