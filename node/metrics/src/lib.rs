//! brume-metrics: the node's opt-in Prometheus endpoint, `GET /metrics` on a loopback address (the `metrics`
//! setting), in the OpenMetrics text format that Prometheus scrapes. Every name is documented in
//! docs/metrics.md.
//!
//! Two kinds of numbers live here. Counters of events (moves, bytes moved, deploys) are bumped by
//! whoever sees the event, through a [`Metrics`] handle (an `Arc`: clone it into the parts that
//! count). Gauges of state (peers, RTTs, map sizes, instances) are not pushed: each scrape first
//! runs the [`Refresh`] the daemon gave, which reads the overlay and the instance table, so a
//! gauge is never older than the scrape that shows it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use brume_overlay::{MapSize, OverlayHandle, PeerId, PeerInfo};
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The content type of the OpenMetrics text format (what `prometheus-client` writes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The file in the data directory that holds the endpoint's bound address (useful with port 0).
pub const ADDR_FILE: &str = "metrics.addr";

/// How long a scrape waits for fresh gauges before answering with the last ones: a stuck overlay
/// should not make Prometheus time out and lose the counters too.
const REFRESH_LIMIT: Duration = Duration::from_secs(5);

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Scrapes served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 8;

/// What a move or a deploy came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    budget_ms: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    peer: String,
    name: String,
}

struct Inner {
    registry: Registry,
    peers: Gauge,
    peer_rtt: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    map_nodes: Family<BudgetLabels, Gauge>,
    instances: Gauge,
    moves: Family<OutcomeLabels, Counter>,
    moved_bytes: Counter,
    deploys: Family<OutcomeLabels, Counter>,
    checkpoints: Family<OutcomeLabels, Counter>,
    /// One scrape at a time: a refresh clears and refills the per-peer gauges.
    scrape: tokio::sync::Mutex<()>,
}

/// The node's metrics: cheap to clone, every clone counts into the same registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The short form of a peer id used in labels: its last 8 characters (every ed25519 peer id
/// starts with the same `12D3KooW`, so the end is what tells them apart).
pub fn short_peer(peer: &PeerId) -> String {
    let s = peer.to_base58();
    s[s.len().saturating_sub(8)..].to_string()
}

impl Metrics {
    /// The metrics of the node `peer`, named `name` (both shown in `brume_node_info`).
    pub fn new(peer: &PeerId, name: Option<&str>) -> Self {
        let mut registry = Registry::with_prefix("brume");
        let info = Family::<InfoLabels, Gauge>::default();
        info.get_or_create(&InfoLabels {
            peer: short_peer(peer),
            name: name.unwrap_or_default().to_string(),
        })
        .set(1);
        registry.register(
            "node_info",
            "This node: its short peer id and its configured name (empty if none); always 1",
            info,
        );
        let mut m = Inner {
            registry,
            peers: Gauge::default(),
            peer_rtt: Family::default(),
            map_nodes: Family::default(),
            instances: Gauge::default(),
            moves: Family::default(),
            moved_bytes: Counter::default(),
            deploys: Family::default(),
            checkpoints: Family::default(),
            scrape: tokio::sync::Mutex::new(()),
        };
        let r = &mut m.registry;
        r.register("peers", "Connected overlay peers", m.peers.clone());
        r.register(
            "peer_rtt_seconds",
            "Smoothed round-trip time to each connected peer (RFC 6298 SRTT of pings)",
            m.peer_rtt.clone(),
        );
        r.register(
            "map_nodes",
            "Nodes in the last neighbourhood map this node made with each latency budget",
            m.map_nodes.clone(),
        );
        r.register(
            "instances",
            "Task instances this node runs",
            m.instances.clone(),
        );
        r.register(
            "moves",
            "Moves of a task instance away from this node, by outcome",
            m.moves.clone(),
        );
        r.register(
            "moved_bytes",
            "Bytes of task state this node sent in moves",
            m.moved_bytes.clone(),
        );
        r.register(
            "deploys",
            "Deploys this node initiated, by outcome",
            m.deploys.clone(),
        );
        r.register(
            "checkpoints",
            "Periodic checkpoints this node took of the instances it runs, by outcome",
            m.checkpoints.clone(),
        );
        // Every outcome's series exists from the start, at 0: `increase()` over a series that
        // appears with its first event misses that event, and an alert would never fire.
        for outcome in [Outcome::Ok, Outcome::Failed] {
            let labels = OutcomeLabels {
                outcome: outcome.label(),
            };
            m.moves.get_or_create(&labels).inc_by(0);
            m.deploys.get_or_create(&labels).inc_by(0);
            m.checkpoints.get_or_create(&labels).inc_by(0);
        }
        Metrics(Arc::new(m))
    }

    /// Counts a finished move of an instance away from this node.
    pub fn record_move(&self, outcome: Outcome) {
        self.0
            .moves
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Adds bytes of task state sent by a move.
    pub fn add_moved_bytes(&self, bytes: u64) {
        self.0.moved_bytes.inc_by(bytes);
    }

    /// Counts a finished deploy this node initiated.
    pub fn record_deploy(&self, outcome: Outcome) {
        self.0
            .deploys
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Counts a periodic checkpoint this node took of an instance it runs: kept by the owner,
    /// or failed (capture or send).
    pub fn record_checkpoint(&self, outcome: Outcome) {
        self.0
            .checkpoints
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Sets the overlay gauges from the node's peers and its last maps; peers gone since the
    /// last call disappear, and a peer without an RTT sample yet has no RTT series.
    pub fn observe_overlay(&self, peers: &[PeerInfo], maps: &[MapSize]) {
        let m = &self.0;
        m.peers.set(i64::try_from(peers.len()).unwrap_or(i64::MAX));
        m.peer_rtt.clear();
        for p in peers {
            if let Some(ms) = p.srtt_ms {
                m.peer_rtt
                    .get_or_create(&PeerLabels {
                        peer: short_peer(&p.peer_id),
                    })
                    .set(ms / 1000.0);
            }
        }
        m.map_nodes.clear();
        for s in maps {
            m.map_nodes
                .get_or_create(&BudgetLabels {
                    budget_ms: s.budget_ms.to_string(),
                })
                .set(i64::try_from(s.nodes).unwrap_or(i64::MAX));
        }
    }

    /// Sets the number of task instances this node runs.
    pub fn set_instances(&self, n: usize) {
        self.0.instances.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The exposition, as `GET /metrics` answers it.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; a metric that fails to encode would be a bug of
        // this file, and an empty answer makes Prometheus report it.
        if prometheus_client::encoding::text::encode(&mut out, &self.0.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What a scrape runs first to bring the gauges up to date.
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// The daemon's refresh: peers, RTTs and map sizes from the overlay, and the number of
/// instances from `count_instances` (the instance table is not this file's to know).
pub fn refresh_from(
    metrics: Metrics,
    overlay: OverlayHandle,
    count_instances: impl Fn() -> BoxFuture<'static, usize> + Send + Sync + 'static,
) -> Refresh {
    let count_instances = Arc::new(count_instances);
    Arc::new(move || {
        let (metrics, overlay, count) = (metrics.clone(), overlay.clone(), count_instances.clone());
        Box::pin(async move {
            if let (Ok(status), Ok(peers)) = (overlay.status().await, overlay.peers().await) {
                metrics.observe_overlay(&peers, &status.maps);
            }
            metrics.set_instances(count().await);
        })
    })
}

/// A bound but not yet serving endpoint: binding early lets the daemon report the address
/// before it has what the gauges read.
pub struct Endpoint {
    listener: TcpListener,
    addr: SocketAddr,
    file: AddrFile,
}

/// Binds `addr` (port 0 picks a free port) and writes the bound address to
/// `<data_dir>/metrics.addr`, so a script or test can find it.
pub async fn bind(addr: SocketAddr, data_dir: &Path) -> anyhow::Result<Endpoint> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let addr = listener.local_addr()?;
    let file = AddrFile::write(data_dir, addr)?;
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    Ok(Endpoint {
        listener,
        addr,
        file,
    })
}

impl Endpoint {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves scrapes on a task until the returned guard is dropped (which also removes the
    /// address file).
    pub fn spawn(self, metrics: Metrics, refresh: Refresh) -> Serving {
        let task = tokio::spawn(accept_loop(self.listener, metrics, refresh));
        Serving {
            task,
            _file: self.file,
        }
    }
}

/// The serving endpoint; dropping it stops it.
pub struct Serving {
    task: tokio::task::JoinHandle<()>,
    _file: AddrFile,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `<data_dir>/metrics.addr`, removed when dropped so that a stopped node leaves no address
/// that something else may have taken since.
struct AddrFile(PathBuf);

impl AddrFile {
    fn write(data_dir: &Path, addr: SocketAddr) -> anyhow::Result<AddrFile> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let path = data_dir.join(ADDR_FILE);
        // Written whole then renamed: a reader never sees half an address.
        let tmp = data_dir.join(format!("{ADDR_FILE}.tmp"));
        std::fs::write(&tmp, format!("{addr}\n"))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(AddrFile(path))
    }
}

impl Drop for AddrFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn accept_loop(listener: TcpListener, metrics: Metrics, refresh: Refresh) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait a little rather than spin.
                tracing::warn!("metrics endpoint cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, refresh) = (metrics.clone(), refresh.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                answer(req, metrics.clone(), refresh.clone())
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!("metrics connection ended: {e}");
            }
            drop(permit);
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    metrics: Metrics,
    refresh: Refresh,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = header::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "brume serves its metrics on /metrics\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "use GET /metrics\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let _one_scrape = metrics.0.scrape.lock().await;
    if tokio::time::timeout(REFRESH_LIMIT, refresh())
        .await
        .is_err()
    {
        tracing::debug!(
            "metrics refresh took over {REFRESH_LIMIT:?}; answering with the last values"
        );
    }
    Ok(reply(StatusCode::OK, CONTENT_TYPE, metrics.encode()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use brume_overlay::ids::NodeId;

    fn peer(seed: u8) -> PeerId {
        let key = brume_overlay::Keypair::ed25519_from_bytes([seed; 32]).expect("a valid seed");
        key.public().to_peer_id()
    }

    fn info(peer_id: PeerId, srtt_ms: Option<f64>) -> PeerInfo {
        PeerInfo {
            peer_id,
            node_id: NodeId(1),
            addr: None,
            srtt_ms,
            rttvar_ms: None,
            coord: None,
            record: None,
            links: Vec::new(),
            score: 100.0,
        }
    }

    /// The lines of `text` that are samples of `family`.
    fn samples<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| {
                l.strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .collect()
    }

    #[test]
    fn every_metric_is_typed_and_values_follow_what_happened() {
        let me = peer(1);
        let m = Metrics::new(&me, Some("gw-kitchen"));
        let (a, b) = (peer(2), peer(3));
        m.observe_overlay(
            &[info(a, Some(12.5)), info(b, None)],
            &[MapSize {
                budget_ms: 50.0,
                nodes: 7,
                complete: true,
            }],
        );
        m.set_instances(3);
        m.record_move(Outcome::Ok);
        m.record_move(Outcome::Ok);
        m.record_move(Outcome::Failed);
        m.add_moved_bytes(4096);
        m.record_deploy(Outcome::Ok);
        m.record_checkpoint(Outcome::Ok);
        m.record_checkpoint(Outcome::Ok);
        m.record_checkpoint(Outcome::Failed);
        let text = m.encode();

        for (family, kind) in [
            ("brume_node_info", "gauge"),
            ("brume_peers", "gauge"),
            ("brume_peer_rtt_seconds", "gauge"),
            ("brume_map_nodes", "gauge"),
            ("brume_instances", "gauge"),
            ("brume_moves", "counter"),
            ("brume_moved_bytes", "counter"),
            ("brume_deploys", "counter"),
            ("brume_checkpoints", "counter"),
        ] {
            assert!(
                text.lines().any(|l| l == format!("# TYPE {family} {kind}")),
                "no `# TYPE {family} {kind}` in:\n{text}"
            );
        }
        assert_eq!(text.lines().last(), Some("# EOF"));
        assert_eq!(
            samples(&text, "brume_node_info"),
            [format!(
                "brume_node_info{{peer=\"{}\",name=\"gw-kitchen\"}} 1",
                short_peer(&me)
            )]
        );
        assert_eq!(samples(&text, "brume_peers"), ["brume_peers 2"]);
        assert_eq!(
            samples(&text, "brume_peer_rtt_seconds"),
            [format!(
                "brume_peer_rtt_seconds{{peer=\"{}\"}} 0.0125",
                short_peer(&a)
            )],
            "a peer without an RTT yet has no series"
        );
        assert_eq!(
            samples(&text, "brume_map_nodes"),
            ["brume_map_nodes{budget_ms=\"50\"} 7"]
        );
        assert_eq!(samples(&text, "brume_instances"), ["brume_instances 3"]);
        let mut moves = samples(&text, "brume_moves_total");
        moves.sort();
        assert_eq!(
            moves,
            [
                "brume_moves_total{outcome=\"failed\"} 1",
                "brume_moves_total{outcome=\"ok\"} 2"
            ]
        );
        assert_eq!(
            samples(&text, "brume_moved_bytes_total"),
            ["brume_moved_bytes_total 4096"]
        );
        let mut deploys = samples(&text, "brume_deploys_total");
        deploys.sort();
        assert_eq!(
            deploys,
            [
                "brume_deploys_total{outcome=\"failed\"} 0",
                "brume_deploys_total{outcome=\"ok\"} 1"
            ],
            "an outcome not seen yet is there at 0"
        );
        let mut checkpoints = samples(&text, "brume_checkpoints_total");
        checkpoints.sort();
        assert_eq!(
            checkpoints,
            [
                "brume_checkpoints_total{outcome=\"failed\"} 1",
                "brume_checkpoints_total{outcome=\"ok\"} 2"
            ]
        );

        // A peer that left and a budget no longer mapped disappear at the next refresh.
        m.observe_overlay(&[info(b, Some(3.0))], &[]);
        let text = m.encode();
        assert_eq!(
            samples(&text, "brume_peer_rtt_seconds"),
            [format!(
                "brume_peer_rtt_seconds{{peer=\"{}\"}} 0.003",
                short_peer(&b)
            )]
        );
        assert!(samples(&text, "brume_map_nodes").is_empty(), "{text}");
        assert_eq!(
            samples(&text, "brume_moved_bytes_total"),
            ["brume_moved_bytes_total 4096"],
            "counters are kept"
        );
    }

    #[test]
    fn short_peer_ids_are_the_distinct_tail() {
        let (a, b) = (peer(2), peer(3));
        assert_eq!(short_peer(&a).len(), 8);
        assert!(a.to_base58().ends_with(&short_peer(&a)));
        assert_ne!(short_peer(&a), short_peer(&b));
    }

    #[tokio::test]
    async fn the_address_file_holds_the_bound_port_until_the_endpoint_stops() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = bind("127.0.0.1:0".parse().unwrap(), dir.path())
            .await
            .unwrap();
        let addr = endpoint.addr();
        assert_ne!(addr.port(), 0);
        let file = dir.path().join(ADDR_FILE);
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(written.trim().parse::<SocketAddr>().unwrap(), addr);
        let refresh: Refresh = Arc::new(|| Box::pin(async {}));
        let serving = endpoint.spawn(Metrics::new(&peer(1), None), refresh);
        drop(serving);
        assert!(!file.exists());
    }
}
