//! The scenario itself: deploy, load, move, read everything back, and say what was seen. It
//! judges nothing: the test asserts on [`RedisMove`], the bench reports it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use brume_control::{Deployed, LogLines, PsRow, Row, StatusView};
use serde::de::DeserializeOwned;

use super::image::{self, redis_processes};
use super::resp::{call_retrying, run_id, Resp};
use super::writer::{Writer, Writes};
use crate::localnet::LocalNet;

/// Writes acknowledged before the move starts, and again after it ended.
const WRITES_AROUND: u64 = 200;
/// Bulk values redis holds before the move (`blob<j>`, 1 MiB each, pinned content), so its
/// memory is more than an empty server's.
pub const BLOBS: u64 = 8;
const BLOB_BYTES: usize = 1 << 20;

/// Where and how the scenario runs.
pub struct Setup<'a> {
    /// Three `brume node` daemons, each offering room for one task (150 mCPU), on one engine.
    pub net: &'a LocalNet,
    /// Where the build contexts and the manifest go.
    pub dir: &'a Path,
    pub service: &'a str,
    /// The static relay binary (scripts/build-static.sh).
    pub relay: &'a Path,
    /// Dockerfile lines ending both images (labels a cleanup finds them by), or "".
    pub labels: &'a str,
    /// The latency budget of the deploy's map and of the call front -> kv: loose, so that a
    /// loaded machine's loopback round trips never keep a node off the map.
    pub budget_ms: u64,
    /// The freeze the live move may predict before it gives up (`--max-downtime`).
    pub max_downtime: &'a str,
    /// How long anything waited for may take before the scenario calls it stuck: a liveness
    /// bound, never a speed claim.
    pub liveness: Duration,
}

/// What one run saw.
#[derive(Debug)]
pub struct RedisMove {
    pub writes: Writes,
    /// Writes acknowledged when the move was asked for, and when it had answered.
    pub at_move: u64,
    pub after_move: u64,
    /// The move end to end, as `brume migrate` took it.
    pub took: Duration,
    /// `brume migrate`'s output: its phases on stderr, its line on stdout.
    pub move_out: String,
    pub move_err: String,
    /// The downtime the move reported (last answer from the source to first from the target).
    pub downtime_ms: Option<u64>,
    /// Acknowledged writes (and blobs) missing or wrong afterwards, with what was found.
    pub lost: Vec<(String, String)>,
    /// Everything acknowledged: the writes and the blobs.
    pub acknowledged: u64,
    /// redis's DBSIZE afterwards.
    pub keys_held: Option<i64>,
    /// redis's `run_id` before and after: the same means the same process carried over.
    pub run_id_before: String,
    pub run_id_after: String,
    /// The node ids of the source and the target, and kv's host in `ps` afterwards.
    pub source_host: String,
    pub target_host: String,
    pub host_after: String,
    /// Whether the target and the source list kv among what they run afterwards.
    pub target_lists: bool,
    pub source_lists: bool,
    /// kv's port before and after (its restored listening socket keeps it).
    pub port_before: u16,
    pub port_after: u16,
    /// The redis processes listening on that port before and after.
    pub processes_before: Vec<u32>,
    pub processes_after: Vec<u32>,
    /// How the redis that runs afterwards sees the filesystem (read while it runs), if one
    /// redis process runs (see [`crate::taskview`]).
    pub view_after: Option<crate::taskview::TaskView>,
}

/// The pinned content of `blob<j>`: printable bytes from a xorshift seeded with `j`.
fn blob(j: u64) -> String {
    let mut x = 0x9e37_79b9_7f4a_7c15 ^ (j + 1);
    (0..BLOB_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

fn json<T: DeserializeOwned>(net: &LocalNet, i: usize, args: &[&str]) -> anyhow::Result<T> {
    let out = net.brume(i, args).context("run brume")?;
    if !out.status.success() {
        bail!(
            "brume {args:?} on node {i} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "brume {args:?}: not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn port_of(address: &str) -> anyhow::Result<u16> {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {address}"))
}

/// `task`'s row in the initiator's `brume ps`, which must list it running.
fn row(net: &LocalNet, task: &str) -> anyhow::Result<Row> {
    let ps: Vec<PsRow> = json(net, 0, &["ps", "--json"])?;
    let Some(r) = ps.iter().find(|r| r.instance.task == task) else {
        bail!("ps does not list {task}: {ps:#?}");
    };
    if r.instance.state != "running" {
        bail!("{task} is not running: {ps:#?}");
    }
    Ok(r.instance.clone())
}

/// Whether node `i` lists `task` among what it runs (running or not).
fn runs(net: &LocalNet, i: usize, task: &str) -> anyhow::Result<bool> {
    let ps: Vec<PsRow> = json(net, i, &["ps", "--all", "--json"])?;
    Ok(ps.iter().any(|r| r.instance.task == task))
}

/// Polls `ready` every `every` until it gives a value, for at most `limit`.
fn wait_for<T>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut ready: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = ready()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{what} within {limit:?}");
        }
        std::thread::sleep(every);
    }
}

/// The address of the forwarder on node 0 that reaches kv: the `BRUME_CALL_KV` the root task
/// was given, from the line the relay prints first (`calls [KV=addr]`).
fn kv_forwarder(s: &Setup) -> anyhow::Result<String> {
    wait_for(
        s.liveness,
        Duration::from_millis(50),
        "front named no BRUME_CALL_KV",
        || {
            let logs: LogLines = json(s.net, 0, &["logs", "front", "--json"])?;
            Ok(logs.lines.iter().find_map(|l| {
                let calls = l.split_once("calls [")?.1.split(']').next()?;
                let kv = calls.split(' ').find_map(|c| c.strip_prefix("KV="))?;
                Some(kv.to_string())
            }))
        },
    )
}

/// The downtime `brume migrate` reported on stderr (`downtime N ms`).
fn downtime_ms(err: &str) -> Option<u64> {
    let at =
        err.find("restored on the target: downtime ")? + "restored on the target: downtime ".len();
    err[at..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
}

/// Deploys front -> kv, loads redis, moves it live to the free node while the writer writes,
/// reads every acknowledged write back, and stops the service.
pub fn move_redis(s: &Setup) -> anyhow::Result<RedisMove> {
    let net = s.net;
    image::redis_context(s.dir, s.labels)?;
    image::front_context(s.dir, s.relay, s.labels)?;
    let m = image::manifest(s.dir, s.service, s.budget_ms)?;
    let budget = format!("{}ms", s.budget_ms);
    // Every node needs a measured round trip to be mapped.
    wait_for(
        s.liveness,
        Duration::from_millis(100),
        "node 0's map did not hold 3 nodes",
        || {
            let map: serde_json::Value =
                json(net, 0, &["map", "--json", "--fresh", "--budget", &budget])
                    .unwrap_or_default();
            Ok((map["nodes"].as_array().map_or(0, Vec::len) == 3).then_some(()))
        },
    )?;
    let m = m.to_str().context("a UTF-8 path")?;
    let _: Deployed = json(net, 0, &["deploy", m, "--budget", &budget, "--json"])?;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let st: StatusView = json(net, i, &["status", "--json"])?;
        nodes.push((format!("n{}", st.node_id), st.peer_id));
    }
    if row(net, "front")?.host != nodes[0].0 {
        bail!("the root did not stay on node 0");
    }
    let kv_host = row(net, "kv")?.host;
    let Some(source) = nodes.iter().position(|(id, _)| *id == kv_host) else {
        bail!("kv's host {kv_host} is not a node");
    };
    if source == 0 {
        bail!("kv runs beside front: the nodes offer room for more than one task");
    }
    let target = 3 - source;
    let addr = kv_forwarder(s)?;
    let run_id_before = run_id(&addr, s.liveness)?;
    let mut conn = None;
    for j in 0..BLOBS {
        let set = call_retrying(
            &mut conn,
            &addr,
            &["SET", &format!("blob{j}"), &blob(j)],
            s.liveness,
        )?;
        if set != Resp::Simple("OK".into()) {
            bail!("SET blob{j}: {set:?}");
        }
    }
    // Closed: only the writer talks to redis during the move.
    conn = None;
    let port_before = port_of(&row(net, "kv")?.address)?;
    let processes_before = redis_processes(port_before);
    if processes_before.len() != 1 {
        bail!("not one redis process before the move: {processes_before:?}");
    }

    let writer = Writer::start(addr.clone(), s.liveness);
    writer.wait_acked(WRITES_AROUND, s.liveness)?;
    let at_move = writer.acked();
    let started = Instant::now();
    let args = [
        "migrate",
        "kv",
        "--to",
        &nodes[target].1,
        "--max-downtime",
        s.max_downtime,
    ];
    let moved = net.brume(0, &args).context("run brume migrate")?;
    let took = started.elapsed();
    let move_out = String::from_utf8_lossy(&moved.stdout).into_owned();
    let move_err = String::from_utf8_lossy(&moved.stderr).into_owned();
    if !moved.status.success() {
        let _ = writer.stop();
        bail!("the live move of redis failed: {move_err}{move_out}");
    }
    let after_move = writer.acked();
    writer.wait_acked(after_move + WRITES_AROUND, s.liveness)?;
    let writes = writer.stop()?;

    // Every acknowledged write is there, with its value, in the redis that runs now.
    let mut lost = Vec::new();
    for j in 0..BLOBS {
        let key = format!("blob{j}");
        match call_retrying(&mut conn, &addr, &["GET", &key], s.liveness)? {
            Resp::Bulk(Some(v)) if v == blob(j) => {}
            Resp::Bulk(Some(v)) => lost.push((key, format!("{} other bytes", v.len()))),
            other => lost.push((key, format!("{other:?}"))),
        }
    }
    for i in 0..writes.acked {
        let key = format!("k{i}");
        match call_retrying(&mut conn, &addr, &["GET", &key], s.liveness)? {
            Resp::Bulk(Some(v)) if v == i.to_string() => {}
            other => lost.push((key, format!("{other:?}"))),
        }
    }
    let keys_held = match call_retrying(&mut conn, &addr, &["DBSIZE"], s.liveness)? {
        Resp::Int(n) => Some(n),
        _ => None,
    };
    let run_id_after = run_id(&addr, s.liveness)?;
    let kv = row(net, "kv")?;
    let port_after = port_of(&kv.address)?;
    let processes_after = redis_processes(port_after);
    let view_after = match processes_after[..] {
        [pid] => crate::taskview::read(pid).ok(),
        _ => None,
    };
    let outcome = RedisMove {
        acknowledged: writes.acked + BLOBS,
        writes,
        at_move,
        after_move,
        took,
        downtime_ms: downtime_ms(&move_err),
        move_out,
        move_err,
        lost,
        keys_held,
        run_id_before,
        run_id_after,
        source_host: nodes[source].0.clone(),
        target_host: nodes[target].0.clone(),
        host_after: kv.host,
        target_lists: runs(net, target, "kv")?,
        source_lists: runs(net, source, "kv")?,
        port_before,
        port_after,
        processes_before,
        processes_after,
        view_after,
    };
    let stopped = net
        .brume(0, &["stop", s.service])
        .context("run brume stop")?;
    if !stopped.status.success() {
        bail!(
            "stopping the service failed: {}",
            String::from_utf8_lossy(&stopped.stderr)
        );
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_downtime_is_read_from_the_move_s_report() {
        let err = "final round: 12 pages\nrestored on the target: downtime 154 ms (criu restore \
                   83 ms), 4 round(s), 2.00 MiB sent\n";
        assert_eq!(downtime_ms(err), Some(154));
        assert_eq!(downtime_ms("moved cold"), None);
    }
}
