//! An unmodified, off-the-shelf stateful server moved live by `brume migrate`: Debian's
//! `redis-server` (bookworm's package, installed by scripts/install-deps.sh), not written here
//! and knowing nothing of brume, in a `FROM scratch` image made of its binary, the shared
//! libraries `ldd` lists and a shell that starts it on the port the node gives it. It is
//! deployed with `checkpoint = "criu"` beside a root task (the relay) that calls it, on three
//! `brume node` daemons on loopback (each offers 150 mCPU, a task takes 100: one task per node,
//! so one node is free), on the process engine and on the Docker engine.
//!
//! A client writes `SET k<i> <i>` over RESP, one after the other, and counts the writes redis
//! acknowledged with `+OK`. It reaches redis the way the root task does: through the call
//! forwarder on the root's node (the `BRUME_CALL_KV` address the relay prints), which tunnels
//! each connection to wherever redis runs now. Meanwhile `brume migrate kv --to <free node>`
//! moves redis live (CRIU pre-copy; Docker's container through runc). The client reconnects
//! and sends the same write again when its connection breaks (a repeated SET is harmless),
//! goes on writing after the move, then reads every acknowledged key back from the moved
//! redis: none may be missing or wrong. Redis's `run_id` (made at its start) is the same
//! before and after, so this was the same process carried over, not a restart; exactly one
//! redis process runs, on the target, and only the target lists it. The longest gap between
//! two acknowledged writes is the pause a client saw: printed, never asserted.
//!
//! The scenario is `brume_testnet::offshelf` (`brume bench migration` runs the same one and
//! reports it); this test asserts on what it saw. Waits are on events (an answer, a count
//! reached), each bounded by a generous liveness limit. A missing root, CRIU >= 4.2, Docker or runc is a skip recorded through
//! `brume_testnet::require`; a missing redis-server fails (scripts/install-deps.sh installs it).

use std::path::Path;
use std::time::Duration;

mod common;

use brume_testnet::offshelf::{self, RedisMove, Setup};

const BRUME: &str = env!("CARGO_BIN_EXE_brume");
/// The freeze a live move may predict before it gives up: generous, since the test checks
/// that no acknowledged write is lost, not how fast the move is.
const MAX_DOWNTIME: &str = "120s";
/// How long anything the test waits for may take before it is called stuck: a liveness bound,
/// never a speed claim.
const LIVENESS: Duration = Duration::from_secs(60);
/// The latency budget of the deploy's map and of the call front -> kv: loose, so that a loaded
/// machine's loopback round trips never keep a node off the map (placement is not under test).
const BUDGET_MS: u64 = 5000;

fn redis_moves_live(engine: &str, service: &str) {
    let net = common::ServiceNet::start(Path::new(BRUME), 3, engine, 150, service);
    let _leftovers = common::RuncLeftovers(service.to_string());
    let relay = common::relay_binary();
    let labels = common::docker_labels(service);
    let setup = Setup {
        net: &net.net,
        dir: net.dir(),
        service,
        relay: &relay,
        labels: &labels,
        budget_ms: BUDGET_MS,
        max_downtime: MAX_DOWNTIME,
        liveness: LIVENESS,
    };
    let m: RedisMove = offshelf::move_redis(&setup).unwrap_or_else(|e| panic!("{e:#}"));
    // The move's phases (pre-copy rounds, the final one, the downtime) on stderr, its line on
    // stdout.
    eprintln!("{}{}", m.move_err, m.move_out);
    assert!(
        m.move_out.contains("(criu,"),
        "not moved live with CRIU: {}",
        m.move_out
    );
    assert!(m.move_err.contains("final round"), "{}", m.move_err);
    assert!(
        m.move_err.contains("restored on the target: downtime"),
        "{}",
        m.move_err
    );

    // Every acknowledged write is there, with its value, in the redis that runs now.
    assert!(
        m.lost.is_empty(),
        "{} of {} acknowledged writes lost or wrong, e.g. {:?}",
        m.lost.len(),
        m.acknowledged,
        &m.lost[..m.lost.len().min(10)]
    );
    // Nothing else was written: the acknowledged keys, and perhaps the next one, had a try of
    // it failed just before the writer was stopped (a write may arrive without its answer).
    let acked = m.acknowledged as i64;
    assert!(
        matches!(m.keys_held, Some(n) if (acked..=acked + 1).contains(&n)),
        "redis holds {:?} keys for {acked} acknowledged writes",
        m.keys_held
    );
    assert_eq!(
        m.run_id_after, m.run_id_before,
        "the same redis process answers (its memory moved): not a restart"
    );

    // Exactly one copy: on the target, and only there.
    assert_eq!(m.host_after, m.target_host);
    assert!(m.target_lists, "the target does not list kv");
    assert!(!m.source_lists, "the source still lists kv");
    assert_eq!(
        m.port_after, m.port_before,
        "redis listens on the port its restored socket kept"
    );
    assert_eq!(m.processes_before.len(), 1, "{:?}", m.processes_before);
    assert_eq!(
        m.processes_after.len(),
        1,
        "exactly one redis process: {:?}",
        m.processes_after
    );
    assert_ne!(
        m.processes_after, m.processes_before,
        "the source's redis process is gone"
    );
    if engine == "process" {
        // Its own root on both sides: the libraries it maps are its image's, not the host's
        // (the image holds copies of them), so the restore needs nothing of the target's tree.
        let view = m
            .view_after
            .as_ref()
            .expect("the view of the redis that runs");
        common::assert_rooted(view);
        assert!(
            view.not_the_hosts() > 0,
            "redis maps no file of its image that the host also has: it should map its own libc"
        );
        eprintln!(
            "process: the restored redis maps {} files, all from its own root; {} of them are \
             at a path where the host has another file (its image's libraries)",
            view.mapped.len(),
            view.not_the_hosts()
        );
    }

    eprintln!(
        "{engine}: redis (Debian's {}) moved live in {:?} end to end; {} writes acknowledged \
         ({} before the move, {} by its end), 0 lost; {} reconnects; client-observed pause \
         (longest gap between two acknowledged writes): {:?}",
        offshelf::image::REDIS,
        m.took,
        m.writes.acked,
        m.at_move,
        m.after_move,
        m.writes.reconnects,
        m.writes.longest_gap
    );
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

#[test]
fn redis_moves_live_on_processes_without_losing_a_write() {
    if !common::live_move_supported(
        "offshelf::redis_moves_live_on_processes_without_losing_a_write",
    ) {
        return;
    }
    redis_moves_live("process", &unique("redis"));
}

#[test]
fn redis_moves_live_on_docker_without_losing_a_write() {
    if !common::docker_live_supported("offshelf::redis_moves_live_on_docker_without_losing_a_write")
    {
        return;
    }
    redis_moves_live("docker", &unique("dredis"));
}
