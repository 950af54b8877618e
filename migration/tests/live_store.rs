//! The target's chunk store across migrations, with the real CRIU over loopback TCP: a 64 MiB
//! `dirtier` moves to a target with a store, then moves again to a target sharing that store
//! (the task coming back to a node it left), and a second task with the same memory (a replica
//! of the same service) moves there too. Round 1 of the later migrations sends only what the
//! store lacks; the tasks' counters continue exactly and their memory is exactly what their
//! seed and steps make.
//!
//! "What the store lacks" is bounded from the task's own step count, not from timing: each
//! dirty step rewrites exactly one 4 KiB page of the task's buffer, so between two readings of
//! its steps at most their difference in buffer pages changed, however slowly the machine ran.
//! Round 1 of a later move must take every other buffer page from the store, and send no more
//! than the changed pages plus what is not buffer (the task's other pages and CRIU's metadata
//! files). How many bytes that saves is for `brume bench migration` and BENCHMARKS.md.
//!
//! Needs root and criu >= 4 (skips otherwise, or fails under `BRUME_REQUIRE`). Own tmpfs
//! directory, sockets and ports; processes are killed on drop.

mod live_support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use brume_migration::live::store::DEFAULT_CAP;
use brume_migration::live::{
    migrate_in, migrate_out, ChunkStore, Migrated, Received, RoundStats, SourceOptions,
    TargetOptions,
};
use brume_migration::planner::PlannerConfig;
use live_support::{
    ask, assert_counter_continues, have_criu, longest_gap, poll, wait_answers, Dirtier, TempDir,
    LIVENESS, TEST_BUDGET,
};
use tokio::net::{TcpListener, TcpStream};

/// The task's size; `LIVE_STORE_MIB` overrides it (BENCHMARKS.md reruns it at 128).
fn task_mib() -> usize {
    std::env::var("LIVE_STORE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}
const SEED: u64 = 0x5704e;
const DIRTY_MIB_S: f64 = 2.0;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Moves `pid` from a source to a target (both here) whose store is `store`; waits until the
/// target has kept the images in the store.
fn migrate(
    rt: &tokio::runtime::Runtime,
    dir: &TempDir,
    tag: &str,
    pid: u32,
    store: &Arc<ChunkStore>,
) -> (Migrated, Received, Vec<RoundStats>) {
    let mut src = SourceOptions::new(dir.path().join(format!("source-{tag}")));
    src.planner = PlannerConfig {
        max_downtime: TEST_BUDGET,
        ..PlannerConfig::default()
    };
    let mut dst = TargetOptions::new(dir.path().join(format!("staging-{tag}")));
    dst.store = Some(store.clone());
    let staging: PathBuf = dst.staging_dir.clone();
    let mut rounds = Vec::new();
    let (migrated, received) = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            migrate_in(stream, dst).await
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let migrated = migrate_out(stream, pid, src, |r| rounds.push(r.clone())).await;
        (migrated, target.await.expect("target task"))
    });
    let migrated = migrated.unwrap_or_else(|e| panic!("{tag}: migration: {e}"));
    let received = received.unwrap_or_else(|e| panic!("{tag}: target: {e}"));
    assert!(
        store.wait_idle(LIVENESS),
        "{tag}: the store insert did not finish in {LIVENESS:?}"
    );
    assert!(!staging.exists(), "{tag}: the staging directory is removed");
    (migrated, received, rounds)
}

/// Round 1 of a move into a store that lacks at most `missing` of the task's `buffer_pages`
/// buffer pages (each dirty step rewrites one): every other buffer page came from the store,
/// and the round sent at most the missing pages plus whatever of the dump is not buffer (the
/// task's other pages, CRIU's metadata files). Exact bounds, whatever the machine's speed.
fn assert_round1_took_the_rest_from_the_store(
    tag: &str,
    round1: &RoundStats,
    received: &Received,
    buffer_pages: u64,
    missing: u64,
) {
    use brume_migration::PAGE;
    assert_eq!(round1.round, 1, "{tag}: {round1:?}");
    assert!(
        received.from_store + missing >= buffer_pages,
        "{tag}: {} chunks from the store, but at most {missing} of the {buffer_pages} buffer pages changed",
        received.from_store
    );
    let not_buffer = round1.dumped_bytes.saturating_sub(buffer_pages * PAGE);
    assert!(
        round1.delta_bytes <= missing * PAGE + not_buffer,
        "{tag}: round 1 sent {} bytes of chunks; at most {missing} buffer pages changed and {not_buffer} bytes of the dump are not buffer",
        round1.delta_bytes
    );
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

#[test]
fn the_chunk_store_spares_round_1_of_a_task_moving_again_and_of_a_replica() {
    if !have_criu("the_chunk_store_spares_round_1_of_a_task_moving_again_and_of_a_replica") {
        return;
    }
    let mib_n = task_mib();
    let dir = TempDir::new("live-store");
    let store = Arc::new(ChunkStore::open(dir.path().join("store"), DEFAULT_CAP).expect("store"));
    let socket = dir.path().join("a.sock");
    let task = Dirtier::start(&socket, mib_n, SEED, DIRTY_MIB_S);
    let poller = poll(&socket, Duration::from_millis(2));
    wait_answers(&poller, "answers before the first move", 10);
    let rt = runtime();
    let buffer_pages = (mib_n * 256) as u64;
    // Steps read before move 1 started: at most those its final images hold.
    let (first_steps, _) = task.sum();

    // 1: into an empty store: the whole image goes.
    let (m1, r1, rounds1) = migrate(&rt, &dir, "first", task.pid, &store);
    assert_eq!(r1.from_store, 0);
    assert!(
        store.chunks() as u64 >= buffer_pages,
        "the store keeps the task's memory: {} chunks",
        store.chunks()
    );
    // Steps read after move 1 ended: at least those its final images hold.
    let after_first = task.assert_state_consistent();
    let n = poller.answers().len();
    wait_answers(&poller, "answers between the moves", n + 10);

    // 2: the same task again, to a target sharing the store.
    let (m2, r2, rounds2) = migrate(&rt, &dir, "again", m1.target_pid, &store);
    let n = poller.answers().len();
    wait_answers(&poller, "answers after the second move", n + 10);
    let log = poller.finish();
    // Steps read after move 2 ended: at least those its round 1 dump held.
    let after_second = task.assert_state_consistent();
    task.wait_dirtying_past(after_second);
    assert_eq!(ask(&socket, "PID").expect("PID"), m2.target_pid.to_string());
    assert_counter_continues(&log);
    let (gap, _, _) = longest_gap(&log).expect("answers");

    // 3: another task with the same memory (same seed), to the same store.
    let socket_b = dir.path().join("b.sock");
    let replica = Dirtier::start(&socket_b, mib_n, SEED, DIRTY_MIB_S);
    let before = replica.assert_state_consistent();
    let counter: u64 = ask(&socket_b, "TICK").expect("TICK").parse().expect("n");
    let (_m3, r3, rounds3) = migrate(&rt, &dir, "replica", replica.pid, &store);
    assert_eq!(
        ask(&socket_b, "TICK").expect("TICK"),
        (counter + 1).to_string(),
        "the replica's counter continues"
    );
    let replica_after = replica.assert_state_consistent();
    assert!(replica_after >= before);

    for (tag, rounds, r) in [
        ("first", &rounds1, &r1),
        ("again", &rounds2, &r2),
        ("replica", &rounds3, &r3),
    ] {
        for s in rounds.iter() {
            eprintln!(
                "{tag} round {}{}: dumped {:.1} MiB, delta {:.1} MiB, wire {:.2} MiB, dump {} ms, transfer {} ms",
                s.round,
                if s.last { " (final)" } else { "" },
                mib(s.dumped_bytes),
                mib(s.delta_bytes),
                mib(s.wire_bytes),
                s.dump.as_millis(),
                s.transfer.as_millis()
            );
        }
        eprintln!(
            "{tag}: rebuild {} ms, restore {} ms",
            r.rebuild.as_millis(),
            r.restore.as_millis()
        );
    }
    let w1 = rounds1[0].wire_bytes;
    let w2 = rounds2[0].wire_bytes;
    let w3 = rounds3[0].wire_bytes;
    eprintln!(
        "chunk store, {mib_n} MiB task dirtying {DIRTY_MIB_S} MiB/s: round 1 wire {:.2} MiB (first) / {:.2} MiB (again, {:.1}%, {} chunks from the store) / {:.2} MiB (replica, {:.1}%, {} chunks from the store); total wire {:.2} / {:.2} MiB; downtime {} / {} ms (longest poller gap {} ms); store {} chunks, {:.1} MiB in {} packs",
        mib(w1),
        mib(w2),
        100.0 * w2 as f64 / w1 as f64,
        r2.from_store,
        mib(w3),
        100.0 * w3 as f64 / w1 as f64,
        r3.from_store,
        mib(m1.wire_bytes),
        mib(m2.wire_bytes),
        m1.downtime.as_millis(),
        m2.downtime.as_millis(),
        gap.as_millis(),
        store.chunks(),
        mib(store.bytes()),
        store.packs(),
    );
    // The first round 1 carries the image: half of each page is random, so it compresses to no
    // less than half.
    assert!(
        w1 > ((mib_n as u64) << 20) / 4,
        "the first round 1 carries the image: {w1} bytes"
    );
    // The second move: the store holds move 1's final images, so it lacks only the buffer
    // pages the task rewrote between move 1's final dump (after `first_steps` steps) and move
    // 2's round 1 dump (before `after_second` steps).
    assert_round1_took_the_rest_from_the_store(
        "again",
        &rounds2[0],
        &r2,
        buffer_pages,
        after_second - first_steps,
    );
    // The replica's memory is the first task's starting fill, rewritten by the same sequence
    // of steps. The store lacks the pages the first task had rewritten by move 1's final dump
    // (at most `after_first`) and those the replica rewrote by its round 1 dump (at most
    // `replica_after`).
    assert_round1_took_the_rest_from_the_store(
        "replica",
        &rounds3[0],
        &r3,
        buffer_pages,
        after_first + replica_after,
    );
    assert!(store.bytes() <= DEFAULT_CAP);
}

/// The target's side of the query, without CRIU: a fake source asks about one page the store
/// holds and one it does not, gets exactly that bitmap, and a second query is refused.
#[test]
fn the_target_answers_one_store_query_with_what_its_store_holds() {
    use brume_migration::chunks::Digest;
    use brume_migration::live::wire::{
        from_bitmap, read_message, write_message, Message, Mode, VERSION,
    };

    let dir = TempDir::new("store-query");
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).expect("images");
    let held: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(images.join("pages-1.img"), &held).expect("write");
    let store = Arc::new(ChunkStore::open(dir.path().join("store"), DEFAULT_CAP).expect("store"));
    assert!(store.insert_dir(&images).expect("insert").kept);
    let mut opts = TargetOptions::new(dir.path().join("staging"));
    opts.store = Some(store);
    let rt = runtime();
    rt.block_on(async {
        let (mut source, target) = tokio::io::duplex(1 << 20);
        let target = tokio::spawn(migrate_in(target, opts));
        let hello = Message::Hello {
            version: VERSION,
            mode: Mode::PreCopy,
            pid: 1,
            memory_bytes: 4096,
        };
        write_message(&mut source, &hello).await.expect("hello");
        let welcome = read_message(&mut source).await.expect("welcome");
        assert_eq!(welcome, Message::Welcome { store_chunks: 1 });
        let query = Message::Query {
            digests: vec![Digest::of(&held), Digest::of(&[0u8; 4096])],
        };
        write_message(&mut source, &query).await.expect("query");
        let Message::Holding { bitmap } = read_message(&mut source).await.expect("holding") else {
            panic!("expected holding");
        };
        assert_eq!(from_bitmap(&bitmap, 2).expect("bitmap"), vec![true, false]);
        write_message(&mut source, &query)
            .await
            .expect("query again");
        let answer = read_message(&mut source).await.expect("answer");
        assert!(matches!(answer, Message::Failed { .. }), "{answer:?}");
        let result = target.await.expect("target task");
        assert!(result.is_err());
    });
}
