//! `brume status`, `brume peers` and `brume map`: small clients of a running node's control
//! socket. They print for a person by default, and JSON (or Graphviz) on request.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use brume_overlay::neighbourhood::NeighbourhoodMap;

use crate::daemon::config::default_control_socket;
use crate::daemon::control::{self, Request, Response};
use crate::daemon::views::{PeerView, StatusView};
use crate::mapview;

/// Where to find the node.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The node's control socket (default: the one `brume node` uses by default).
    #[arg(long, env = "BRUME_CONTROL", value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Print JSON instead of a table.
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

pub(crate) async fn ask(
    target: &Target,
    request: Request,
    wait: Duration,
) -> anyhow::Result<serde_json::Value> {
    let path = target
        .control
        .clone()
        .unwrap_or_else(default_control_socket);
    match control::call(&path, &request, wait).await? {
        Response::Ok(v) => Ok(v),
        Response::Error(e) => anyhow::bail!("the node refused: {e}"),
        Response::Progress(_) => anyhow::bail!("the node sent progress where an answer was due"),
    }
}

const WAIT: Duration = Duration::from_secs(5);

pub async fn status(target: &Target) -> anyhow::Result<()> {
    let v = ask(target, Request::Status, WAIT).await?;
    if target.json {
        println!("{v:#}");
        return Ok(());
    }
    let s: StatusView = serde_json::from_value(v).context("the node's status is malformed")?;
    println!("peer id     {}", s.peer_id);
    println!("node id     {}", s.node_id);
    println!("listening   {}", s.listen.join(", "));
    println!("peers       {}", s.degree);
    println!(
        "coordinate  ({:.1}, {:.1}, height {:.1}) ms, error {:.2}",
        s.coord[0], s.coord[1], s.coord[2], s.coord_error
    );
    println!("up          {:.0} s", s.uptime_s);
    Ok(())
}

pub async fn peers(target: &Target) -> anyhow::Result<()> {
    let v = ask(target, Request::Peers, WAIT).await?;
    if target.json {
        println!("{v:#}");
        return Ok(());
    }
    let peers: Vec<PeerView> =
        serde_json::from_value(v).context("the node's peer list is malformed")?;
    println!(
        "{:<54} {:>9} {:>9} {:>10}  address",
        "peer", "srtt ms", "var ms", "vivaldi ms"
    );
    let ms = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
    for p in &peers {
        println!(
            "{:<54} {:>9} {:>9} {:>10}  {}",
            p.peer_id,
            ms(p.srtt_ms),
            ms(p.rttvar_ms),
            ms(p.predicted_ms),
            p.addr.as_deref().unwrap_or("-")
        );
    }
    println!("{} peers", peers.len());
    Ok(())
}

pub async fn map(args: &MapArgs) -> anyhow::Result<()> {
    let request = Request::Map {
        budget_ms: args.budget.as_secs_f64() * 1e3,
        fresh: args.fresh,
    };
    // The node answers within the budget plus a grace; wait a little longer than that.
    let v = ask(&args.target, request, WAIT + args.budget * 2).await?;
    if args.target.json {
        println!("{v:#}");
        return Ok(());
    }
    let map: NeighbourhoodMap = serde_json::from_value(v).context("the node's map is malformed")?;
    let origin = ask(&args.target, Request::Status, WAIT)
        .await
        .ok()
        .and_then(|v| v.get("node_id")?.as_u64());
    if args.dot {
        print!("{}", mapview::dot(&map, origin));
    } else {
        println!("{}", mapview::table(&map, origin));
    }
    Ok(())
}
