//! `brume node` itself: settings in, overlay up, control socket open, until Ctrl-C or SIGTERM.
//!
//! The node keeps its identity key in its data directory so that its peer id survives restarts
//! (peers and maps refer to it), and refreshes its advertised state record from `/proc`
//! periodically. On the way out it closes the control socket and stops the overlay.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::migrate::live::fault::LiveFault;
use brume_overlay::neighbourhood::NodeRecord;
use brume_overlay::node::{Identity, Overlay, OverlayConfig, OverlayHandle, Timings};
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::backend::{count_moves, OverlayBackend};
use super::config::{self, LogFormat, NodeConfig};
use super::dispatch::dispatch;
use super::resources;
use super::services::Services;
use crate::deploy::deployer::{Advertiser, Deployer};
use crate::deploy::instances::Capacity;
use crate::heal::healer::Healer;
use crate::heal::owner_return::learn_from_holders;
use crate::heal::replicator::Replicator;
use crate::migrate::control::Deadline;
use crate::migrate::mover::Mover;
use brume_control as control;
use brume_metrics::{refresh_from, Metrics};

/// How long a restarted node waits for the holders of its service records before healing.
const LEARN_TIMEOUT: Duration = Duration::from_secs(20);

/// Options of `brume node`: the flag layer of the settings (see [`config`]). Each flag is a
/// setting of [`NodeConfig`] under the same name, so it may also come from the config file or a
/// `BRUME_*` variable; serialised, a flag the command line did not give is left out (`None`, an
/// empty list, an absent switch) and leaves the lower layers alone.
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize)]
pub struct NodeArgs {
    /// A TOML file of settings (keys: listen, join, control, min_degree, max_degree, cones, data_dir,
    /// log_format, log, ping_interval_ms, engine, drain_on_exit, drain_budget_ms, drain_grace_ms,
    /// drain_margin_ms, migration_cache_mb, live_migration, cpu_millis, memory_mb, name,
    /// metrics, network_key, allow_peer, stream_idle_timeout_ms, heartbeat_interval_ms,
    /// record_replicas,
    /// task_log_max_mib, disk_budget_mib).
    #[arg(long, env = "BRUME_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/7100; port 0 picks a free one.
    #[arg(long, value_name = "MULTIADDR")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<String>,
    /// A member to join through (repeatable); any member will do, e.g. /ip4/10.0.0.2/tcp/7100.
    #[arg(long, value_name = "MULTIADDR")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub join: Vec<String>,
    /// The control socket that every client command (`brume status`, `deploy`, `migrate`...) talks to.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Fewest overlay peers to keep.
    #[arg(long)]
    pub min_degree: Option<usize>,
    /// Most overlay peers to keep.
    #[arg(long)]
    pub max_degree: Option<usize>,
    /// Also keep a link to the nearest node known in each of this many directions around the
    /// node's Vivaldi coordinate (cone links, beyond --max-degree; 8 is what the maps were
    /// measured with; 0, the default: none).
    #[arg(long, value_name = "K")]
    pub cones: Option<usize>,
    /// Where the node keeps its identity key.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info or brume=debug,libp2p=warn.
    #[arg(long)]
    pub log: Option<String>,
    /// How often each peer is pinged, in ms (default 5000).
    #[arg(long)]
    pub ping_interval_ms: Option<u64>,
    /// What runs tasks: docker, process (plain child processes) or auto (Docker if its daemon
    /// answers, else processes; the default).
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<String>,
    /// On SIGTERM or Ctrl-C, move this node's tasks to other nodes (as `brume drain`) before
    /// stopping, instead of just stopping them.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drain_on_exit: bool,
    /// MiB of memory pages this node keeps from the live migrations it received (in
    /// <data_dir>/migration-chunks, oldest dropped first), so that a later move into it (a task
    /// coming back, another replica of a service) sends only the pages it lacks. 0 keeps none:
    /// every move sends all its memory (default 1024).
    #[arg(long, value_name = "MIB")]
    pub migration_cache_mb: Option<u64>,
    /// How checkpoint = "criu" tasks move on the process engine: auto (the default: tracked
    /// to a node in another network namespace, another device or a node container, pre-copy
    /// to one sharing this node's network), pre-copy (full dumps, any kernel) or tracked
    /// (tracked pre-copy rounds and a freeze that carries only what the task wrote since,
    /// where the kernel tracks written pages, Linux >= 6.7; the frozen original and its copy
    /// coexist for a moment, so to a node sharing this host's network a task that listens on
    /// a TCP port cannot move this way).
    #[arg(long, value_enum, value_name = "HOW")]
    pub live_migration: Option<crate::migrate::LiveMigration>,
    /// Most CPU (millicores) brume may offer to tasks on this device.
    #[arg(long)]
    pub cpu_millis: Option<u32>,
    /// Most memory (MiB) brume may offer to tasks on this device.
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// A name for people, shown beside the peer id in every listing (1-32 of a-z, 0-9, '-').
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics, loopback only (port 0 picks one and
    /// writes it to <data_dir>/metrics.addr). See docs/metrics.md.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Tests only: a failure this node suffers on purpose as the target of a live move
    /// (exit-in-precopy, cut-before-restore, fail-restore, cut-after-restore). Never set it on a
    /// node that runs anything you care about.
    #[arg(long, value_enum, hide = true)]
    pub live_fault: Option<LiveFault>,
    /// Make the overlay private: only nodes started with the same key file (`brume key gen >
    /// net.key`, copied to every machine) can connect. Without it any machine that reaches
    /// the node's port can join.
    #[arg(long, value_name = "FILE")]
    pub network_key: Option<PathBuf>,
    /// Accept and keep connections only with this peer id (repeatable); without, any node
    /// (holding the network key, if one is set) may connect.
    #[arg(long, value_name = "PEER_ID")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_peer: Vec<String>,
    /// Drop a peer that stalls a deploy, move or chunk-transfer stream for this long, in ms
    /// (default 30000).
    #[arg(long, value_name = "MS")]
    pub stream_idle_timeout_ms: Option<u64>,
    /// How often the hosts of the services deployed from this node are sent a heartbeat, in
    /// ms (default 500); a dead one's instances are placed again (docs/healing.md).
    #[arg(long, value_name = "MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Replicate each service record to this many nearest neighbours (default 2; 0: none), so
    /// one of them re-places its instances if this node and a host die (docs/healing.md).
    #[arg(long, value_name = "N")]
    pub record_replicas: Option<u64>,
    /// With --drain-on-exit: move tasks to nodes within this many ms of this one (the map's
    /// latency budget, as `brume drain --budget`; default 80).
    #[arg(long, value_name = "MS")]
    pub drain_budget_ms: Option<u64>,
    /// With --drain-on-exit: the node has this many ms to leave once told to stop; each move
    /// starts as late as its predicted duration and --drain-margin-ms allow (as `brume drain
    /// --deadline`), so tasks run here until they must go (default 0: move everything at once,
    /// within 60 s).
    #[arg(long, value_name = "MS")]
    pub drain_grace_ms: Option<u64>,
    /// With --drain-grace-ms: the slack kept before the grace period ends (default 1000).
    #[arg(long, value_name = "MS")]
    pub drain_margin_ms: Option<u64>,
    /// Rotate each task's log past this many MiB, one older file kept (default 16).
    #[arg(long, value_name = "MIB")]
    pub task_log_max_mib: Option<u64>,
    /// Most MiB the chunks, artifacts and image trees in the data directory may take: past
    /// it, what no task, service or operation under way uses is deleted oldest first, and a
    /// deploy that would still not fit is refused (default 0: no budget; unused items are
    /// deleted after an hour either way). See docs/limits.md.
    #[arg(long, value_name = "MIB")]
    pub disk_budget_mib: Option<u64>,
}

/// How often the advertised resources are read again.
const REFRESH: Duration = Duration::from_secs(5);

pub fn run(args: &NodeArgs) -> anyhow::Result<()> {
    let cfg = config::load(args.config.as_deref(), std::env::vars(), args)?;
    init_logging(&cfg)?;
    // Before the runtime: a mount namespace is entered by the whole process only while it has
    // one thread.
    match brume_engine::taskroot::enter(&cfg.data_dir) {
        Ok(()) => tracing::debug!(
            "CRIU-mode tasks live in {}",
            brume_engine::taskroot::TASK_ROOT
        ),
        Err(why) => tracing::info!("CRIU-mode tasks cannot move live: {why}"),
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(cfg))
}

fn init_logging(cfg: &NodeConfig) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log)
        .with_context(|| format!("bad log filter `{}`", cfg.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match cfg.log_format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

async fn serve(cfg: NodeConfig) -> anyhow::Result<()> {
    let listener = control::bind(&cfg.control).await?;
    let (handle, task) = Overlay::spawn(overlay_config(&cfg)?)
        .await
        .context("cannot start the overlay")?;
    let metrics = Metrics::new(&handle.peer_id(), cfg.name.as_deref());
    // Bound before `listening` is printed, so the address file is there once the node is up.
    let metrics_endpoint = match cfg.metrics_addr()? {
        Some(addr) => Some(brume_metrics::bind(addr, &cfg.data_dir).await?),
        None => None,
    };
    announce(&handle, &cfg).await?;

    let (capacity, advertise) = offer(&cfg)?;
    let services = Services::start(
        &handle,
        &cfg.data_dir,
        (&cfg.engine, cfg.task_log_max_mib << 20, cfg.disk_budget_mib),
        capacity,
        advertise.clone(),
        (cfg.migration_cache_mb, cfg.live_migration),
        Some(count_moves(metrics.clone())),
        cfg.live_fault,
    )
    .await?;
    services.deployer.set_metrics(metrics.clone());
    let _metrics_serving = metrics_endpoint.map(|endpoint| {
        let deployer = services.deployer.clone();
        let count = move || -> BoxFuture<'static, usize> {
            let deployer = deployer.clone();
            Box::pin(async move { deployer.list(None).await.len() })
        };
        endpoint.spawn(
            metrics.clone(),
            refresh_from(metrics.clone(), handle.clone(), count),
        )
    });
    // Deploys this node began as initiator and never finished (it died mid-deploy) are undone:
    // their hosts are told to stop that epoch. In the background: hosts may take a moment to
    // reach, and nothing else waits on it.
    let undoing = {
        let initiator = services.initiator.clone();
        tokio::spawn(async move {
            let undone = initiator.undo_pending().await;
            if !undone.is_empty() {
                tracing::info!(?undone, "restart: undid the deploys left pending");
            }
        })
    };
    let (calls_tx, calls_rx) = mpsc::channel(64);
    let backend = Arc::new(OverlayBackend {
        handle: handle.clone(),
        started: Instant::now(),
        initiator: services.initiator.clone(),
        mover: services.mover.clone(),
        metrics: metrics.clone(),
        name: cfg.name.clone(),
    });
    tokio::spawn(control::serve(listener, calls_tx));
    let dispatcher = tokio::spawn(dispatch(backend, calls_rx));
    let refresher = tokio::spawn(readvertise(
        handle.clone(),
        services.deployer.clone(),
        advertise,
    ));
    let collector = tokio::spawn(collect_periodically(services.deployer.clone()));
    let leases = tokio::spawn(crate::migrate::max_runtime::run(
        services.mover.clone(),
        Duration::from_millis(cfg.drain_budget_ms),
        Duration::from_millis(cfg.drain_margin_ms),
    ));
    let healer = {
        let healer = Healer::new(
            services.initiator.clone(),
            services.mover.clone(),
            Duration::from_millis(cfg.heartbeat_interval_ms),
            cfg.data_dir.clone(),
        );
        let replicator = services
            .deployer
            .holder()
            .cloned()
            .map(|holder| Replicator {
                initiator: services.initiator.clone(),
                deployer: services.deployer.clone(),
                mover: services.mover.clone(),
                holder,
                copies: usize::try_from(cfg.record_replicas).unwrap_or(usize::MAX),
                interval: Duration::from_millis(cfg.heartbeat_interval_ms),
            });
        let (initiator, deployer) = (services.initiator.clone(), services.deployer.clone());
        let data_dir = cfg.data_dir.clone();
        tokio::spawn(async move {
            // What the holders of this node's service records did while it was away is taken
            // first: the healer must not place again what a holder already did, nor a push
            // overwrite the holders' newer records with this node's older ledger.
            let stale = crate::heal::retire_book::RetireBook::open(&data_dir);
            let none = Default::default();
            let learn = learn_from_holders(&initiator, &deployer, &stale, &none);
            if tokio::time::timeout(LEARN_TIMEOUT, learn).await.is_err() {
                tracing::warn!(
                    "restart: the holders of the service records did not all answer in time"
                );
            }
            // The healer reads the book again.
            drop(stale);
            match replicator {
                Some(r) => {
                    tokio::join!(healer.run(), r.run());
                }
                None => healer.run().await,
            }
        })
    };

    let mut task = task;
    let outcome = tokio::select! {
        _ = shutdown_signal() => {
            if cfg.drain_on_exit {
                drain_before_exit(
                    &services.mover,
                    Duration::from_millis(cfg.drain_budget_ms),
                    exit_deadline(cfg.drain_grace_ms, cfg.drain_margin_ms),
                )
                .await;
            }
            tracing::info!("stopping");
            let _ = handle.shutdown().await;
            Ok(())
        }
        ended = &mut task => match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the overlay stopped")),
            Err(e) => Err(anyhow::anyhow!("the overlay task failed: {e}")),
        },
    };
    refresher.abort();
    collector.abort();
    healer.abort();
    leases.abort();
    dispatcher.abort();
    undoing.abort();
    let mover = services.mover.clone();
    services.shutdown().await;
    if !mover.migration_store.settle(STORE_SETTLE).await {
        tracing::warn!("a move's images were still going into the chunk store at exit");
    }
    let _ = std::fs::remove_file(&cfg.control);
    outcome
}

/// The overlay's settings from the node's.
fn overlay_config(cfg: &NodeConfig) -> anyhow::Result<OverlayConfig> {
    let parse = |list: &[String], what: &str| -> anyhow::Result<Vec<_>> {
        list.iter()
            .map(|a| {
                a.parse().with_context(|| {
                    format!(
                        "{what} address `{a}` is not a multiaddr (e.g. /ip4/127.0.0.1/tcp/7100)"
                    )
                })
            })
            .collect()
    };
    let seed = super::identity::seed(&cfg.data_dir)?;
    let mut record = local_record(cfg.cpu_millis, cfg.memory_mb)?;
    record.name = cfg.name.clone();
    Ok(OverlayConfig {
        listen: parse(&cfg.listen, "listen")?,
        bootstrap: parse(&cfg.join, "join")?,
        min_degree: cfg.min_degree,
        max_degree: cfg.max_degree,
        cones: cfg.cones,
        identity: Identity::Seed(seed),
        record: Some(record),
        timings: Timings {
            ping_interval: Duration::from_millis(cfg.ping_interval_ms),
            // Vivaldi updates each sample against the peer's coordinate as last exchanged:
            // records twice per ping period keep those fresh (10 s at the default 5 s pings).
            state_interval: Duration::from_millis(2 * cfg.ping_interval_ms),
            ..Timings::default()
        },
        network_key: match &cfg.network_key {
            Some(path) => Some(super::network_key::load(path)?),
            None => None,
        },
        allowed_peers: cfg.allowed_peers()?,
        stream_limits: brume_overlay::StreamLimits {
            idle_timeout: Duration::from_millis(cfg.stream_idle_timeout_ms),
            ..brume_overlay::StreamLimits::default()
        },
        ..OverlayConfig::default()
    })
}

/// Logs where the node listens and prints one `listening ADDR...` line on stdout, which
/// scripts that start nodes read.
async fn announce(handle: &OverlayHandle, cfg: &NodeConfig) -> anyhow::Result<()> {
    let addrs = handle.listen_addrs().await?;
    let shown: Vec<String> = addrs
        .iter()
        .map(|a| {
            let a = a.to_string();
            if a.contains("/p2p/") {
                a
            } else {
                format!("{a}/p2p/{}", handle.peer_id())
            }
        })
        .collect();
    tracing::info!(
        peer_id = %handle.peer_id(),
        control = %cfg.control.display(),
        "brume node up, listening on {}",
        shown.join(", ")
    );
    println!("listening {}", shown.join(" "));
    Ok(())
}

/// What this node offers to tasks, and how its record is made for given reservations: this
/// device's resources (capped by the settings), less what tasks here reserved (CPU is offered
/// by reservation; memory is the lesser of that and what /proc says is available).
fn offer(cfg: &NodeConfig) -> anyhow::Result<(Capacity, Advertiser)> {
    let (cpu_cap, mem_cap) = (cfg.cpu_millis, cfg.memory_mb);
    let totals = resources::read()?.capped(cpu_cap, mem_cap);
    let capacity = Capacity {
        cpu_millis: u64::from(totals.cpu_total_milli),
        memory_mb: totals.mem_total_mb,
    };
    let name = cfg.name.clone();
    let advertise: Advertiser = Arc::new(move |cpu, mem| match local_record(cpu_cap, mem_cap) {
        Ok(mut r) => {
            r.name = name.clone();
            let left_cpu = u64::from(r.cpu_total_milli).saturating_sub(cpu);
            r.cpu_free_milli = r.cpu_free_milli.min(left_cpu as u32);
            r.mem_free_mb = r.mem_free_mb.min(r.mem_total_mb.saturating_sub(mem));
            Some(r)
        }
        Err(e) => {
            tracing::warn!("cannot read this device's resources: {e:#}");
            None
        }
    });
    Ok((capacity, advertise))
}

/// Sends the node's record again every [`REFRESH`] (load and free memory change), until the
/// overlay stops.
async fn readvertise(handle: OverlayHandle, deployer: Arc<Deployer>, advertise: Advertiser) {
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        tick.tick().await;
        let (cpu, mem) = deployer.reserved();
        if let Some(r) = advertise(cpu, mem) {
            if handle.set_record(r).await.is_err() {
                return;
            }
        }
    }
}

/// How often the garbage collector sweeps ([`crate::gc`]).
const GC_PERIOD: Duration = Duration::from_secs(600);

/// How long an item nothing uses is kept before a periodic sweep deletes it: a service stopped
/// and deployed again soon after, or a move prepared and not yet started, finds its artifact
/// still here.
const GC_GRACE: Duration = Duration::from_secs(3600);

/// Most items one periodic sweep deletes; the rest wait for the next.
const GC_MAX_ITEMS: usize = 10_000;

/// Deletes, every [`GC_PERIOD`], what nothing has used for [`GC_GRACE`], and more if the data
/// directory is over its disk budget.
async fn collect_periodically(deployer: Arc<Deployer>) {
    let mut tick = tokio::time::interval(GC_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let budget = deployer.gc().and_then(|gc| gc.budget());
        let goal = crate::gc::Goal {
            before: std::time::SystemTime::now().checked_sub(GC_GRACE),
            budget,
            extra: 0,
            max_items: GC_MAX_ITEMS,
        };
        match deployer.collect(goal).await {
            Ok(r) if r.freed_bytes > 0 || !r.images_removed.is_empty() => tracing::info!(
                freed_bytes = r.freed_bytes,
                items = r.deleted.len(),
                images = r.images_removed.len(),
                left_bytes = r.after_bytes,
                "gc: periodic sweep"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("gc: periodic sweep: {e}"),
        }
    }
}

/// How long a stopping node waits for a finished move's images to go into its chunk store
/// (they are removed from tmpfs once in).
const STORE_SETTLE: Duration = Duration::from_secs(10);

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The node's advertised record from this device's resources (id and coordinate are the
/// overlay's own and are filled in there).
fn local_record(cpu_cap: Option<u32>, mem_cap: Option<u64>) -> anyhow::Result<NodeRecord> {
    let r = resources::read()?.capped(cpu_cap, mem_cap);
    let mut rec = NodeRecord::bare(brume_overlay::ids::NodeId(0));
    rec.cpu_total_milli = r.cpu_total_milli;
    // CPU is offered by reservation, not by the idle share of the moment: a burst of other work
    // (or another node on the same machine) would otherwise make placement refuse a host that
    // can run the task. The load average is advertised beside it for the load policy. The
    // refresher takes what tasks here reserved off this figure.
    rec.cpu_free_milli = r.cpu_total_milli;
    rec.mem_total_mb = r.mem_total_mb;
    rec.mem_free_mb = r.mem_free_mb;
    rec.load = r.load;
    Ok(rec)
}

/// The longest a node leaving with `drain_on_exit` and no grace period spends moving its tasks
/// away.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// The schedule a leaving node keeps: none without a grace period (every move at once), else
/// the grace period as the drain's deadline.
fn exit_deadline(grace_ms: u64, margin_ms: u64) -> Option<Deadline> {
    (grace_ms > 0).then(|| Deadline {
        within: Duration::from_millis(grace_ms),
        margin: Duration::from_millis(margin_ms),
    })
}

/// Moves every task this node runs to other nodes, within the grace period (each move started
/// as late as its prediction allows) or else bounded by [`DRAIN_LIMIT`], and logs what could not
/// move; those are stopped with the node.
async fn drain_before_exit(mover: &Mover, budget: Duration, deadline: Option<Deadline>) {
    let limit = deadline.map_or(DRAIN_LIMIT, |d| d.within);
    tracing::info!(
        limit_ms = limit.as_millis() as u64,
        scheduled = deadline.is_some(),
        "leaving: moving this node's tasks to other nodes"
    );
    // Progress lines have no reader here.
    let (progress, _) = mpsc::channel(1);
    let drained = tokio::time::timeout(
        limit,
        crate::migrate::control::drain(mover, budget, false, deadline, progress),
    )
    .await;
    match drained {
        Ok(lines) => {
            for l in lines {
                match l.outcome {
                    Ok(m) => {
                        tracing::info!(service = %l.service, task = %l.task, replica = l.replica, to = %m.host, on_time = ?l.on_time, "moved before leaving")
                    }
                    Err(e) => {
                        tracing::warn!(service = %l.service, task = %l.task, replica = l.replica, error = %e, "could not move; stopping it")
                    }
                }
            }
        }
        Err(_) => {
            tracing::warn!("draining took longer than {limit:?}; stopping what is left")
        }
    }
}
