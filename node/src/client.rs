//! `brume status`, `brume peers`, `brume map` and `brume gc`: small clients of a running node's control
//! socket. They print for a person by default (nodes by their [`NodeName`]), and on request
//! JSON (the command's typed reply as it is, full peer ids) or Graphviz. Also the helpers the
//! other client commands share: which socket, one typed call, JSON out.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::daemon::config::default_control_socket;
use crate::mapview;
use brume_control::NodeName;
use brume_control::{
    self, Command, ControlError, GcRequest, MapRequest, PeersRequest, Progress, StatusRequest,
};

/// Where to find the node.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The node's control socket (default: the one `brume node` uses by default).
    #[arg(long, env = "BRUME_CONTROL", value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Print the node's answer as JSON (stable field names, full peer ids) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `brume map`.
#[derive(Debug, Clone, clap::Args)]
pub struct MapArgs {
    #[command(flatten)]
    pub target: Target,
    /// Latency budget: the map holds the nodes reachable over the overlay within it
    /// (e.g. 50ms, 0.2s).
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub budget: Duration,
    /// Print a Graphviz graph (`brume map --dot | dot -Tpng -o map.png`).
    #[arg(long, conflicts_with = "json")]
    pub dot: bool,
    /// Map again even if the node holds a recent map for this budget.
    #[arg(long)]
    pub fresh: bool,
}

/// The socket of the node `target` names.
pub(crate) fn socket(target: &Target) -> PathBuf {
    target
        .control
        .clone()
        .unwrap_or_else(default_control_socket)
}

/// Sends `command` to the node and waits at most `wait` for its reply, handing progress
/// reports to `progress`; a refusal becomes an error that says `what` failed and why.
pub(crate) async fn call<C: Command>(
    target: &Target,
    command: C,
    wait: Duration,
    what: &str,
    progress: impl FnMut(Progress),
) -> anyhow::Result<C::Reply> {
    brume_control::call(&socket(target), command, wait, progress)
        .await
        .map_err(|e| match e {
            ControlError::Refused(why) => anyhow::anyhow!("{what}: {why}"),
            other => other.into(),
        })
}

/// [`call`] for a command that reports no progress.
pub(crate) async fn ask<C: Command>(
    target: &Target,
    command: C,
    wait: Duration,
) -> anyhow::Result<C::Reply> {
    call(target, command, wait, "the node refused", |_| {}).await
}

/// Prints a reply as `--json` shows it.
pub(crate) fn print_json(reply: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(reply)?);
    Ok(())
}

const WAIT: Duration = Duration::from_secs(5);

pub async fn status(target: &Target) -> anyhow::Result<()> {
    let s = ask(target, StatusRequest, WAIT).await?;
    if target.json {
        return print_json(&s);
    }
    println!(
        "node        {}",
        NodeName::of(&s.peer_id).named(s.name.as_deref())
    );
    println!("peer id     {}", s.peer_id);
    println!("listening   {}", s.listen.join(", "));
    println!("peers       {}", s.degree);
    println!(
        "coordinate  ({:.1}, {:.1}, height {:.1}) ms, error {:.2}",
        s.coord[0], s.coord[1], s.coord[2], s.coord_error
    );
    println!("up          {:.0} s", s.uptime_s);
    if let Some(p) = s.probes.filter(|p| *p != Default::default()) {
        println!(
            "map probes  {} by a peer's ping RTT, {} by a dial's TCP handshake, {} by a ping, \
             {} unreached",
            p.srtt, p.handshake, p.ping, p.unreached
        );
    }
    if let Some(p) = &s.predictor {
        println!("dump model  {} ({} dumps learned)", p.model, p.dumps);
        if !p.pbmlr_features.is_empty() {
            println!("pb-mlr uses {}", p.pbmlr_features.join(", "));
        }
        if let Some(why) = &p.refused {
            println!("            {why}");
        }
    }
    Ok(())
}

pub async fn peers(target: &Target) -> anyhow::Result<()> {
    let peers = ask(target, PeersRequest, WAIT).await?;
    if target.json {
        return print_json(&peers);
    }
    println!(
        "{:<28} {:>9} {:>9} {:>10} {:>5} {:>4}  address",
        "peer", "srtt ms", "var ms", "vivaldi ms", "links", "cone"
    );
    let ms = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
    for p in &peers {
        println!(
            "{:<28} {:>9} {:>9} {:>10} {:>5} {:>4}  {}",
            NodeName::of(&p.peer_id).named(p.name.as_deref()),
            ms(p.srtt_ms),
            ms(p.rttvar_ms),
            ms(p.predicted_ms),
            p.links,
            if p.cone { "yes" } else { "-" },
            p.addr.as_deref().unwrap_or("-")
        );
    }
    let cones = peers.iter().filter(|p| p.cone).count();
    println!("{} peers ({cones} held as cone links)", peers.len());
    Ok(())
}

pub async fn map(args: &MapArgs) -> anyhow::Result<()> {
    let request = MapRequest {
        budget_ms: args.budget.as_secs_f64() * 1e3,
        fresh: args.fresh,
    };
    // The node answers within twice the budget plus a grace (requests beyond the path budget
    // travel longer paths), then probes for at most the budget: wait a little longer.
    let map = ask(&args.target, request, WAIT + args.budget * 4).await?;
    if args.target.json {
        return print_json(&map);
    }
    let origin = ask(&args.target, StatusRequest, WAIT)
        .await
        .ok()
        .map(|s| s.node_id);
    if args.dot {
        print!("{}", mapview::dot(&map, origin));
    } else {
        println!("{}", mapview::table(&map, origin));
    }
    Ok(())
}

/// A sweep deletes files one by one: give it longer than a query.
const GC_WAIT: Duration = Duration::from_secs(300);

pub async fn gc(target: &Target) -> anyhow::Result<()> {
    let r = ask(target, GcRequest, GC_WAIT).await?;
    if target.json {
        return print_json(&r);
    }
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    println!(
        "freed       {:.1} MiB: {} chunks, {} artifacts, {} image trees, {} docker images",
        mib(r.freed_bytes),
        r.chunks,
        r.artifacts,
        r.image_trees,
        r.images_removed.len()
    );
    for image in &r.images_removed {
        println!("            removed {image}");
    }
    println!(
        "on disk     {:.1} MiB (was {:.1}), {:.1} MiB in use",
        mib(r.after_bytes),
        mib(r.before_bytes),
        mib(r.live_bytes)
    );
    match r.budget_bytes {
        Some(b) => println!("budget      {:.0} MiB (disk_budget_mib)", mib(b)),
        None => println!("budget      none (disk_budget_mib = 0)"),
    }
    for why in &r.chunks_kept_because {
        println!("chunks kept {why}");
    }
    Ok(())
}
