//! What a node runs beside the overlay so that services can be deployed on it and from it and
//! moved: the deployer (`/brume/deploy/3`, which also takes the periodic checkpoints of the
//! services this node owns, sent by each host's checkpointer), the mover (`/brume/move/2`, `/brume/live/3`), the
//! chunk server hosts fetch artifacts from (`/brume/transfer/1`), the tunnel server that lands
//! calls on local tasks (`/brume/tunnel/2`), and the initiator behind `brume deploy`, `ps`,
//! `logs` and `stop`.
//!
//! Everything here shares one chunk store and one routing table, both under the data directory
//! (as is the mover's store of live-migration chunks, a different thing).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use brume_overlay::OverlayHandle;

use crate::deploy::deployer::{Advertiser, Deployer};
use crate::deploy::hosted::HostedFile;
use crate::deploy::initiator::Initiator;
use crate::deploy::instances::Capacity;
use crate::deploy::ledger::Ledger;
use crate::gc::Collector;
use crate::heal::checkpoints::{CheckpointStore, Keeper};
use crate::migrate::live::fault::LiveFault;
use crate::migrate::mover::{Mover, OnMoved};
use crate::migrate::LiveMigration;
use brume_artifact::{self as artifact, ChunkStore};
use brume_engine::{self as engine, AnyEngine, EngineChoice};
use brume_migration::live::shared::MigrationStoreConfig;
use brume_tunnel::{self as tunnel, Routes, TUNNEL_PROTOCOL};

/// The running deployment services of a node.
pub struct Services {
    pub deployer: Arc<Deployer>,
    pub mover: Arc<Mover>,
    pub initiator: Arc<Initiator>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Services {
    /// Picks the engine (`docker`, `process` or `auto`; task logs capped at `log_max_bytes`)
    /// and starts serving; the data directory's chunks, artifacts and image trees are kept
    /// within `disk_budget_mib` (0: no budget) by the garbage collector ([`crate::gc`]). `migration_cache_mb`
    /// bounds the chunks kept from live migrations into this node (0: none kept), `live` says
    /// how CRIU tasks move; `on_moved` hears how every move this node drove ended; `live_fault`
    /// is a test's failure on purpose (see [`LiveFault`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        overlay: &OverlayHandle,
        data_dir: &Path,
        (engine_choice, log_max_bytes, disk_budget_mib): (&str, u64, u64),
        capacity: Capacity,
        advertiser: Advertiser,
        (migration_cache_mb, live): (u64, LiveMigration),
        on_moved: Option<OnMoved>,
        live_fault: Option<LiveFault>,
    ) -> anyhow::Result<Services> {
        let store =
            ChunkStore::open(data_dir.join("chunks")).context("cannot open the chunk store")?;
        let choice: EngineChoice = engine_choice.parse().map_err(anyhow::Error::msg)?;
        let engine: AnyEngine = engine::pick(choice, data_dir.join("tasks"))
            .await
            .context("cannot set up the task engine")?
            .with_log_max_bytes(log_max_bytes);
        tracing::info!(
            engine = engine.kind(),
            "tasks run on the {} engine",
            engine.kind()
        );
        let routes = Routes::new();
        let deployer = Deployer::new(
            overlay.clone(),
            Arc::new(engine),
            store.clone(),
            routes.clone(),
            data_dir.join("images"),
            capacity,
            Some(advertiser),
            Some(HostedFile::in_data_dir(data_dir)),
        );
        let gc = Arc::new(Collector::in_data_dir(data_dir, disk_budget_mib));
        deployer.set_gc(gc.clone());
        // Before serving anything: what this node ran before it stopped is adopted, started
        // again or removed (none is left orphaned).
        let recovered = deployer.recover().await?;
        if recovered != Default::default() {
            tracing::info!(?recovered, "restart: took stock of the tasks this node ran");
        }
        let ledger = Arc::new(Ledger::open(data_dir)?);
        gc.set_ledger(ledger.clone());
        deployer.set_holder(Arc::new(crate::heal::holder::Holder::new(
            data_dir,
            overlay.clone(),
            store.clone(),
            Some(gc.clone()),
        )));
        let (relay_tx, relay_rx) =
            tokio::sync::mpsc::channel(crate::heal::checkpoint_relay::BACKLOG);
        deployer.set_keeper(Arc::new(
            Keeper::new(CheckpointStore::in_data_dir(data_dir), ledger.clone())
                .with_relay(relay_tx),
        ));
        let mover = Mover::new(
            deployer.clone(),
            Some(ledger.clone()),
            MigrationStoreConfig::in_data_dir(data_dir, migration_cache_mb),
            live,
            on_moved,
            live_fault,
            crate::migrate::predictor::DumpModels::open(data_dir),
        );
        let initiator = Arc::new(Initiator::new(
            overlay.clone(),
            store.clone(),
            ledger.clone(),
            deployer.clone(),
        ));
        let chunks = overlay.accept_streams(artifact::TRANSFER_PROTOCOL)?;
        let tunnels = overlay.accept_streams(TUNNEL_PROTOCOL)?;
        let (deploying, moving) = (deployer.clone(), mover.clone());
        let tasks = vec![
            tokio::spawn(crate::heal::checkpointer::run(deployer.clone())),
            tokio::spawn(crate::heal::checkpoint_relay::run(
                deployer.clone(),
                ledger.clone(),
                relay_rx,
            )),
            tokio::spawn(async move {
                if let Err(e) = deploying.serve().await {
                    tracing::error!("the deployer stopped: {e:#}");
                }
            }),
            tokio::spawn(async move {
                if let Err(e) = moving.serve().await {
                    tracing::error!("the mover stopped: {e:#}");
                }
            }),
            tokio::spawn(artifact::serve_limited(
                store,
                chunks,
                brume_overlay::StreamLimits {
                    idle_timeout: overlay.stream_limits().idle_timeout,
                    ..artifact::TRANSFER_LIMITS
                },
            )),
            tokio::spawn(tunnel::serve(tunnels, routes)),
        ];
        Ok(Services {
            deployer,
            mover,
            initiator,
            tasks,
        })
    }

    /// Stops every task this node runs (the node is leaving) and the servers.
    pub async fn shutdown(self) {
        let stopped = self.deployer.stop_all().await;
        if !stopped.is_empty() {
            tracing::info!(count = stopped.len(), "stopped the tasks running here");
        }
        for t in self.tasks {
            t.abort();
        }
    }
}
