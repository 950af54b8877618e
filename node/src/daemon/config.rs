//! The node's settings, layered the way operators expect: built-in defaults, then a TOML file
//! (`--config FILE` or `BRUME_CONFIG`), then `BRUME_*` environment variables, then flags. Each
//! layer overrides only what it names. A key the file misspells is refused with the file and the
//! line, not ignored: a typo in a fleet's config should not silently fall back to a default.
//!
//! Every layer takes the same path: it becomes a map from setting key (as the file spells it) to
//! a value that remembers where it came from, the `config` crate stacks the maps in order, and
//! [`NodeConfig`] is deserialised once from the result. So a bad value's error names its layer
//! (`in environment variable BRUME_MIN_DEGREE`, `from flag --engine`). Adding a setting takes a
//! field of [`NodeConfig`] with its default, and its flag in `run::NodeArgs`; the file key and
//! the `BRUME_*` variable follow from the field's name.

use std::path::{Path, PathBuf};

use config::{Config, File, FileFormat, Map, Source as _, Value, ValueKind};
use serde::{Deserialize, Serialize};

use brume_plan::input_error::Source;

use crate::migrate::live::fault::LiveFault;
pub use crate::migrate::LiveMigration;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for a person.
    #[default]
    Human,
    /// One JSON object per line, for a log collector.
    Json,
}

/// The most cones a node may set (`cones`).
pub const MAX_CONES: usize = 32;

/// Everything `brume node` needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Multiaddrs to listen on, e.g. `/ip4/0.0.0.0/tcp/7100`.
    pub listen: Vec<String>,
    /// Members to join through; any member will do.
    pub join: Vec<String>,
    /// The control socket `brume peers`, `brume map` and `brume status` talk to.
    pub control: PathBuf,
    /// Fewest overlay peers the node keeps; below it, it dials more.
    pub min_degree: usize,
    /// Most overlay peers the node keeps; above it, it drops the worst.
    pub max_degree: usize,
    /// Cone links (issue 17): the node also keeps a link to the nearest node it knows of in each
    /// of this many directions around its Vivaldi coordinate, beyond `max_degree`, so maps find
    /// what is near it whatever the overlay's other paths. 0 (the default): none.
    pub cones: usize,
    /// Where the node keeps its identity key, so that it keeps its peer id across restarts.
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `brume=debug,libp2p=warn`.
    pub log: String,
    /// How often each peer is pinged; RTT estimates and Vivaldi settle after a few pings.
    pub ping_interval_ms: u64,
    /// What runs tasks: `docker`, `process` (plain child processes), or `auto` (Docker if its
    /// daemon answers, else processes).
    pub engine: String,
    /// On SIGTERM/SIGINT, move the tasks this node runs to other nodes (as `brume drain`)
    /// before stopping; those that cannot move are stopped.
    pub drain_on_exit: bool,
    /// MiB of memory pages kept from the live migrations this node received, so that a later
    /// move into it (a task coming back, another replica of a service) sends only the pages it
    /// lacks; 0 keeps none and every move sends all its memory.
    pub migration_cache_mb: u64,
    /// How `checkpoint = "criu"` tasks move on the process engine: `auto` (tracked to a target
    /// in another network namespace, else pre-copy), `pre-copy` (full dumps) or `tracked`
    /// (tracked rounds and a freeze that carries only what the task wrote since).
    pub live_migration: LiveMigration,
    /// Most CPU (millicores) brume may offer to tasks on this device; unset offers all of it.
    pub cpu_millis: Option<u32>,
    /// Most memory (MiB) brume may offer to tasks on this device; unset offers all of it.
    pub memory_mb: Option<u64>,
    /// A name for people (1-32 of `a-z`, `0-9`, `-`, e.g. `gw-kitchen`), shown beside the peer id.
    pub name: Option<String>,
    /// Serve Prometheus metrics on this loopback address (e.g. `127.0.0.1:9464`; port 0 picks one,
    /// written to `<data_dir>/metrics.addr`); off when unset. See docs/metrics.md.
    pub metrics: Option<String>,
    /// Tests only (`node/tests/move_failures.rs`): a failure this node suffers on purpose as
    /// the target of a live move, `exit-in-precopy`, `cut-before-restore`, `fail-restore` or
    /// `cut-after-restore` ([`LiveFault`]). Unset on every real node.
    pub live_fault: Option<LiveFault>,
    /// A file holding the private overlay's key (`brume key gen > net.key`): only nodes with
    /// the same key can connect. Unset: the overlay is open to any machine that reaches it.
    pub network_key: Option<PathBuf>,
    /// Peer ids this node alone connects to or accepts (empty: any member). An operator's
    /// extra gate on top of the network key.
    pub allow_peer: Vec<String>,
    /// A peer that stalls a deploy, move or chunk-transfer stream (sends nothing, or stops
    /// reading) for this long is dropped, and a map frame that stops arriving midway closes its
    /// link.
    pub stream_idle_timeout_ms: u64,
    /// How often the initiator sends a heartbeat to each host of the services it deployed; a
    /// host that stops answering is declared dead (phi-accrual) and its instances are placed
    /// again (docs/healing.md).
    pub heartbeat_interval_ms: u64,
    /// How many of its nearest neighbours each service's record is replicated to (0: none); the
    /// first live one re-places the service's instances when both its owner and a host die
    /// (docs/healing.md).
    pub record_replicas: u64,
    /// The latency budget of the map a node leaving with `drain_on_exit` moves its tasks
    /// within (the same budget `brume drain --budget` takes).
    pub drain_budget_ms: u64,
    /// With `drain_on_exit`: how long the node may take to leave once told to stop (a service
    /// manager's stop timeout, a battery's last minutes). Each move then starts as late as its
    /// predicted duration and `drain_margin_ms` allow (as `brume drain --deadline`), so tasks
    /// keep running here until they must go; what has not moved when it ends is stopped.
    /// 0 (the default): every move starts at once, the whole drain bounded at 60 s.
    pub drain_grace_ms: u64,
    /// The slack a leaving node's schedule keeps before `drain_grace_ms` ends.
    pub drain_margin_ms: u64,
    /// Each task's log is rotated past this many MiB, one older file kept beside it (the
    /// process engine's `task.log.1`, Docker's `json-file` `max-file = 2`).
    pub task_log_max_mib: u64,
    /// MiB of disk the chunks, assembled artifacts and process-engine image trees in the data
    /// directory may take ([`crate::gc`]): a fetch past it first deletes what nothing uses,
    /// oldest first, and is refused when what is in use leaves no room. 0 (the default) sets
    /// no budget; either way, what nothing has used for an hour is deleted periodically.
    pub disk_budget_mib: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: vec!["/ip4/0.0.0.0/tcp/7100".into()],
            join: Vec::new(),
            control: default_control_socket(),
            min_degree: 4,
            max_degree: 12,
            cones: 0,
            data_dir: default_data_dir(),
            log_format: LogFormat::Human,
            log: "info".into(),
            ping_interval_ms: 5000,
            engine: "auto".into(),
            drain_on_exit: false,
            migration_cache_mb: 1024,
            live_migration: LiveMigration::Auto,
            cpu_millis: None,
            memory_mb: None,
            name: None,
            metrics: None,
            live_fault: None,
            network_key: None,
            allow_peer: Vec::new(),
            stream_idle_timeout_ms: 30_000,
            heartbeat_interval_ms: 500,
            record_replicas: 2,
            drain_budget_ms: 80,
            drain_grace_ms: 0,
            drain_margin_ms: 1000,
            task_log_max_mib: 16,
            disk_budget_mib: 0,
        }
    }
}

/// `$XDG_RUNTIME_DIR/brume/node.sock`, else a per-user directory under the system temp dir.
pub fn default_control_socket() -> PathBuf {
    runtime_dir().join("node.sock")
}

fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("brume"),
        _ => std::env::temp_dir().join(format!("brume-{}", user_id())),
    }
}

fn default_data_dir() -> PathBuf {
    let set = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(data) = set("XDG_DATA_HOME") {
        data.join("brume")
    } else if let Some(home) = set("HOME") {
        home.join(".local/share/brume")
    } else {
        runtime_dir().join("data")
    }
}

fn user_id() -> String {
    // No libc call needed: the owner of /proc/self is this process's user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m).to_string())
        .unwrap_or_else(|_| "user".into())
}

/// Builds the settings from the four layers. `env` is the process environment (passed in so
/// tests need not touch the real one); `flags` is what the command line said, serialised with
/// the settings' keys, leaving out (or as `None`) what it did not say.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &impl Serialize,
) -> anyhow::Result<NodeConfig> {
    let keys = keys()?;
    let mut layers = vec![Layer::of(&NodeConfig::default(), |_| "the default".into())?];
    if let Some(path) = file {
        layers.push(file_layer(path)?);
    }
    layers.push(env_layer(env, &keys)?);
    layers.push(Layer::of(flags, |k| {
        format!("flag --{}", k.replace('_', "-"))
    })?);

    let mut builder = Config::builder();
    for layer in &layers {
        builder = builder.add_source(layer.clone());
    }
    let cfg: NodeConfig = builder
        .build()?
        .try_deserialize()
        .map_err(|e| anyhow::anyhow!("invalid node settings: {e}"))?;
    cfg.check().map_err(|(key, why)| {
        // The last layer that named the key is the one whose value was used.
        let from = layers.iter().rev().find_map(|l| l.origin(key));
        anyhow::anyhow!("{why} ({key} from {})", from.unwrap_or("the default"))
    })?;
    Ok(cfg)
}

/// Settings keys, as the file and `BRUME_*` variables spell them: [`NodeConfig`]'s fields.
pub fn keys() -> anyhow::Result<Vec<String>> {
    // Through JSON, which keeps empty lists and unset options as keys (`config` drops them).
    match serde_json::to_value(NodeConfig::default())? {
        serde_json::Value::Object(fields) => Ok(fields.into_iter().map(|(k, _)| k).collect()),
        _ => anyhow::bail!("the settings are not a table"),
    }
}

/// One layer of settings: values by key, each tagged with where it came from.
#[derive(Debug, Clone)]
struct Layer(Map<String, Value>);

impl Layer {
    /// The layer a serialisable value gives; `origin` describes each key's source. Unset
    /// options (`None`) are left out, so they leave the lower layers alone.
    fn of(value: &impl Serialize, origin: impl Fn(&str) -> String) -> anyhow::Result<Layer> {
        let values = Config::try_from(value)
            .map_err(|e| anyhow::anyhow!("cannot read settings: {e}"))?
            .collect()?;
        Ok(Layer::tagged(values, origin))
    }

    fn tagged(values: Map<String, Value>, origin: impl Fn(&str) -> String) -> Layer {
        Layer(
            values
                .into_iter()
                .filter(|(_, v)| !matches!(v.kind, ValueKind::Nil))
                .map(|(k, v)| {
                    let tagged = Value::new(Some(&origin(&k)), v.kind);
                    (k, tagged)
                })
                .collect(),
        )
    }

    fn origin(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::origin)
    }
}

impl config::Source for Layer {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// The file's layer, after a strict parse for errors with a line number and unknown keys.
fn file_layer(path: &Path) -> anyhow::Result<Layer> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    let name = path.display().to_string();
    toml::from_str::<NodeConfig>(&text).map_err(|e| Source::new(&name, &text).toml(&e))?;
    let values = File::from_str(&text, FileFormat::Toml).collect()?;
    Ok(Layer::tagged(values, |_| format!("config file {name}")))
}

/// The `BRUME_*` variables' layer; `listen`, `join` and `allow_peer` take comma-separated lists.
fn env_layer(
    env: impl IntoIterator<Item = (String, String)>,
    keys: &[String],
) -> anyhow::Result<Layer> {
    let mut values = Map::new();
    for (var, v) in env {
        let Some(key) = var.strip_prefix("BRUME_").map(str::to_ascii_lowercase) else {
            continue;
        };
        if key == "config" || NOT_SETTINGS.contains(&key.as_str()) {
            continue;
        }
        if !keys.contains(&key) {
            anyhow::bail!(
                "environment variable {var}: unknown setting `{key}` (known: {})",
                keys.join(", ")
            );
        }
        let kind = if ["listen", "join", "allow_peer"].contains(&key.as_str()) {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::from(s.to_string()))
                .collect::<Vec<_>>()
                .into()
        } else {
            ValueKind::from(v)
        };
        let origin = format!("environment variable {var}");
        values.insert(key, Value::new(Some(&origin), kind));
    }
    Ok(Layer(values))
}

/// `BRUME_*` variables that belong to brume's scripts and tests, not to a node: a node started
/// from `scripts/test.sh` (which exports them) ignores them instead of refusing to start.
const NOT_SETTINGS: &[&str] = &["require", "skip_log", "test_run", "test_seed"];

/// `value` of `key` within `range`, or the error [`NodeConfig::check`] returns for it.
fn within<T>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), (&'static str, String)>
where
    T: PartialOrd + std::fmt::Display,
{
    if range.contains(&value) {
        return Ok(());
    }
    Err((
        key,
        format!(
            "{key} ({value}) must be between {} and {}",
            range.start(),
            range.end()
        ),
    ))
}

impl NodeConfig {
    /// Refuses values no layer may set; the error names the key at fault.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.cones > MAX_CONES {
            return Err((
                "cones",
                format!(
                    "cones ({}) must be at most {MAX_CONES}: more directions than that only add links",
                    self.cones
                ),
            ));
        }
        if self.min_degree == 0 || self.min_degree > self.max_degree {
            return Err((
                "min_degree",
                format!(
                    "min_degree ({}) must be at least 1 and at most max_degree ({})",
                    self.min_degree, self.max_degree
                ),
            ));
        }
        within("ping_interval_ms", self.ping_interval_ms, 50..=600_000)?;
        within(
            "stream_idle_timeout_ms",
            self.stream_idle_timeout_ms,
            100..=3_600_000,
        )?;
        within(
            "heartbeat_interval_ms",
            self.heartbeat_interval_ms,
            50..=60_000,
        )?;
        within("drain_budget_ms", self.drain_budget_ms, 1..=60_000)?;
        within("drain_grace_ms", self.drain_grace_ms, 0..=3_600_000)?;
        within("drain_margin_ms", self.drain_margin_ms, 0..=600_000)?;
        if self.drain_grace_ms > 0 && self.drain_margin_ms >= self.drain_grace_ms {
            return Err((
                "drain_margin_ms",
                format!(
                    "drain_margin_ms ({}) must be less than drain_grace_ms ({}): the margin is \
                     kept inside the grace period",
                    self.drain_margin_ms, self.drain_grace_ms
                ),
            ));
        }
        within(
            "record_replicas",
            self.record_replicas,
            0..=crate::heal::delegation::MAX_HOLDERS as u64,
        )?;
        if !["auto", "docker", "process"].contains(&self.engine.as_str()) {
            return Err((
                "engine",
                format!(
                    "engine `{}` is unknown: use docker, process or auto",
                    self.engine
                ),
            ));
        }
        within("task_log_max_mib", self.task_log_max_mib, 1..=1 << 20)?;
        if self.disk_budget_mib > 1 << 30 {
            return Err((
                "disk_budget_mib",
                format!(
                    "disk_budget_mib ({}) must be at most 1073741824 (0: no budget)",
                    self.disk_budget_mib
                ),
            ));
        }
        if let Some(name) = &self.name {
            brume_overlay::neighbourhood::check_name(name).map_err(|e| ("name", e.to_string()))?;
        }
        self.metrics_addr()
            .map_err(|e| ("metrics", format!("{e:#}")))?;
        self.allowed_peers()
            .map_err(|e| ("allow_peer", format!("{e:#}")))?;
        if self.listen.is_empty() {
            return Err((
                "listen",
                "no listen address: give at least one, e.g. --listen /ip4/0.0.0.0/tcp/7100".into(),
            ));
        }
        Ok(())
    }
}

impl NodeConfig {
    /// The allow-list of peer ids, if one is set.
    pub fn allowed_peers(
        &self,
    ) -> anyhow::Result<Option<std::collections::HashSet<brume_overlay::PeerId>>> {
        if self.allow_peer.is_empty() {
            return Ok(None);
        }
        let peers = self
            .allow_peer
            .iter()
            .map(|p| {
                p.parse().map_err(|_| {
                    anyhow::anyhow!("`{p}` is not a peer id (brume status prints a node's)")
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Some(peers))
    }

    /// The address of the metrics endpoint, if it is on. Only loopback: the endpoint has no
    /// authentication and tells whoever asks the node's peers, load and moves, so another
    /// machine reaches it through something the operator secures (an SSH tunnel, a reverse
    /// proxy with TLS, a Prometheus agent on the device).
    pub fn metrics_addr(&self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        let Some(text) = &self.metrics else {
            return Ok(None);
        };
        let addr: std::net::SocketAddr = text.parse().map_err(|_| {
            anyhow::anyhow!("metrics address `{text}` is not an IP:port, e.g. 127.0.0.1:9464")
        })?;
        if !addr.ip().is_loopback() {
            anyhow::bail!(
                "metrics address `{text}` is not loopback: the endpoint has no authentication, \
                 so it listens only on 127.0.0.1 or [::1]; reach it from another machine through \
                 an SSH tunnel or a reverse proxy"
            );
        }
        Ok(Some(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The flag layer as `brume node` parses it from `args`.
    fn flags(args: &[&str]) -> crate::daemon::run::NodeArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            node: crate::daemon::run::NodeArgs,
        }
        let argv = std::iter::once("brume").chain(args.iter().copied());
        Cli::try_parse_from(argv).expect("flags parse").node
    }

    /// A config file with `text` in a fresh temporary directory (kept alive by the guard).
    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn layers_override_in_order() {
        let (_dir, file) = file("min_degree = 3\nmax_degree = 9\nlog = \"debug\"\n");
        let cfg = load(
            Some(&file),
            env(&[
                ("BRUME_LOG", "warn"),
                ("BRUME_JOIN", "/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2"),
                ("PATH", "/bin"),
            ]),
            &flags(&["--max-degree", "7"]),
        )
        .unwrap();
        assert_eq!(cfg.min_degree, 3, "file over default");
        assert_eq!(cfg.log, "warn", "environment over file");
        assert_eq!(cfg.max_degree, 7, "flag over file");
        assert_eq!(
            cfg.join,
            vec!["/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/2"]
        );
        assert_eq!(cfg.listen, NodeConfig::default().listen, "default kept");
    }

    #[test]
    fn one_setting_through_all_four_layers() {
        let ping = |file: Option<&Path>, vars: &[(&str, &str)], args: &[&str]| {
            load(file, env(vars), &flags(args))
                .unwrap()
                .ping_interval_ms
        };
        let (_dir, path) = file("ping_interval_ms = 1000\n");
        let var = [("BRUME_PING_INTERVAL_MS", "2000")];
        let flag = ["--ping-interval-ms", "3000"];
        assert_eq!(ping(None, &[], &[]), 5000, "default");
        assert_eq!(ping(Some(&path), &[], &[]), 1000, "file over default");
        assert_eq!(ping(Some(&path), &var, &[]), 2000, "environment over file");
        assert_eq!(
            ping(Some(&path), &var, &flag),
            3000,
            "flag over environment"
        );
        assert_eq!(ping(None, &[], &flag), 3000, "flag over default");
        assert_eq!(ping(Some(&path), &[], &flag), 3000, "flag over file");
    }

    #[test]
    fn cpu_and_memory_caps_go_through_the_layers() {
        let caps = |file: Option<&Path>, vars: &[(&str, &str)], args: &[&str]| {
            let cfg = load(file, env(vars), &flags(args)).unwrap();
            (cfg.cpu_millis, cfg.memory_mb)
        };
        assert_eq!(caps(None, &[], &[]), (None, None), "the whole device");
        let (_dir, path) = file("cpu_millis = 1500\nmemory_mb = 2048\n");
        assert_eq!(caps(Some(&path), &[], &[]), (Some(1500), Some(2048)));
        let vars = [("BRUME_CPU_MILLIS", "1200")];
        assert_eq!(
            caps(Some(&path), &vars, &[]),
            (Some(1200), Some(2048)),
            "environment over file, only what it names"
        );
        assert_eq!(
            caps(
                Some(&path),
                &vars,
                &["--cpu-millis", "900", "--memory-mb", "64"]
            ),
            (Some(900), Some(64)),
            "flags over environment"
        );
        assert_eq!(
            caps(None, &[("BRUME_MEMORY_MB", "512")], &[]),
            (None, Some(512))
        );
    }

    #[test]
    fn a_bad_value_names_its_layer() {
        let refusal = |file: Option<&Path>, vars: &[(&str, &str)], args: &[&str]| {
            format!("{:#}", load(file, env(vars), &flags(args)).unwrap_err())
        };
        let (_dir, path) = file("engine = \"dockr\"\n");
        let msg = refusal(Some(&path), &[], &[]);
        assert!(msg.contains("engine `dockr`"), "{msg}");
        assert!(
            msg.contains(&format!("from config file {}", path.display())),
            "{msg}"
        );

        let msg = refusal(Some(&path), &[("BRUME_ENGINE", "podman")], &[]);
        assert!(msg.contains("engine `podman`"), "{msg}");
        assert!(
            msg.contains("from environment variable BRUME_ENGINE"),
            "{msg}"
        );

        let msg = refusal(
            Some(&path),
            &[("BRUME_ENGINE", "podman")],
            &["--engine", "lxc"],
        );
        assert!(msg.contains("engine `lxc`"), "{msg}");
        assert!(msg.contains("from flag --engine"), "{msg}");

        let msg = refusal(None, &[("BRUME_CPU_MILLIS", "lots")], &[]);
        assert!(msg.contains("cpu_millis"), "{msg}");
        assert!(
            msg.contains("in environment variable BRUME_CPU_MILLIS"),
            "{msg}"
        );

        // Values the file gets wrong are refused with its line, before any layering.
        let (_dir2, path) = file("log = \"info\"\nmemory_mb = \"lots\"\n");
        let msg = refusal(Some(&path), &[], &[]);
        assert!(msg.contains("node.toml:2"), "{msg}");
    }

    #[test]
    fn every_flag_is_a_setting() {
        let dir = tempfile::tempdir().unwrap();
        let (control, data) = (dir.path().join("c.sock"), dir.path().join("data"));
        let args = flags(&[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--join",
            "/ip4/127.0.0.1/tcp/9",
            "--control",
            control.to_str().unwrap(),
            "--min-degree",
            "2",
            "--max-degree",
            "5",
            "--data-dir",
            data.to_str().unwrap(),
            "--log-format",
            "json",
            "--log",
            "debug",
            "--ping-interval-ms",
            "700",
            "--engine",
            "process",
            "--drain-on-exit",
            "--migration-cache-mb",
            "8",
            "--live-migration",
            "tracked",
            "--cpu-millis",
            "250",
            "--memory-mb",
            "128",
            "--name",
            "gw-kitchen",
            "--metrics",
            "127.0.0.1:0",
            "--live-fault",
            "cut-after-restore",
            "--network-key",
            "/etc/brume/net.key",
            "--allow-peer",
            "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
            "--stream-idle-timeout-ms",
            "1500",
            "--heartbeat-interval-ms",
            "250",
            "--record-replicas",
            "3",
            "--drain-budget-ms",
            "900",
            "--drain-grace-ms",
            "30000",
            "--drain-margin-ms",
            "3000",
            "--task-log-max-mib",
            "2",
            "--disk-budget-mib",
            "512",
            "--cones",
            "8",
        ]);
        let cfg = load(None, env(&[]), &args).expect("every flag names a setting");
        let want = NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            join: vec!["/ip4/127.0.0.1/tcp/9".into()],
            control,
            min_degree: 2,
            max_degree: 5,
            cones: 8,
            data_dir: data,
            log_format: LogFormat::Json,
            log: "debug".into(),
            ping_interval_ms: 700,
            engine: "process".into(),
            drain_on_exit: true,
            migration_cache_mb: 8,
            live_migration: LiveMigration::Tracked,
            cpu_millis: Some(250),
            memory_mb: Some(128),
            name: Some("gw-kitchen".into()),
            metrics: Some("127.0.0.1:0".into()),
            live_fault: Some(LiveFault::CutAfterRestore),
            network_key: Some("/etc/brume/net.key".into()),
            allow_peer: vec!["12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into()],
            stream_idle_timeout_ms: 1500,
            heartbeat_interval_ms: 250,
            record_replicas: 3,
            drain_budget_ms: 900,
            drain_grace_ms: 30_000,
            drain_margin_ms: 3000,
            task_log_max_mib: 2,
            disk_budget_mib: 512,
        };
        assert_eq!(cfg, want);
    }

    #[test]
    fn the_record_replicas_come_from_every_layer_and_are_checked() {
        assert_eq!(NodeConfig::default().record_replicas, 2);
        let (_dir, path) = file("record_replicas = 1\n");
        let cfg = load(Some(&path), env(&[]), &flags(&[])).unwrap();
        assert_eq!(cfg.record_replicas, 1);
        let var = [("BRUME_RECORD_REPLICAS", "0")];
        let cfg = load(Some(&path), env(&var), &flags(&[])).unwrap();
        assert_eq!(cfg.record_replicas, 0, "0 turns replicas off");
        let cfg = load(Some(&path), env(&var), &flags(&["--record-replicas", "4"])).unwrap();
        assert_eq!(cfg.record_replicas, 4);
        let err = load(None, env(&[("BRUME_RECORD_REPLICAS", "9")]), &flags(&[])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("record_replicas") && msg.contains("BRUME_RECORD_REPLICAS"),
            "{msg}"
        );
    }

    #[test]
    fn the_disk_budget_comes_from_every_layer_and_is_checked() {
        assert_eq!(
            NodeConfig::default().disk_budget_mib,
            0,
            "no budget by default"
        );
        let (_dir, path) = file("disk_budget_mib = 300\n");
        let cfg = load(Some(&path), env(&[]), &flags(&[])).unwrap();
        assert_eq!(cfg.disk_budget_mib, 300);
        let cfg = load(
            Some(&path),
            env(&[("BRUME_DISK_BUDGET_MIB", "400")]),
            &flags(&[]),
        )
        .unwrap();
        assert_eq!(cfg.disk_budget_mib, 400);
        let cfg = load(
            Some(&path),
            env(&[("BRUME_DISK_BUDGET_MIB", "400")]),
            &flags(&["--disk-budget-mib", "500"]),
        )
        .unwrap();
        assert_eq!(cfg.disk_budget_mib, 500);
        let err = load(
            None,
            env(&[("BRUME_DISK_BUDGET_MIB", "2000000000")]),
            &flags(&[]),
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("disk_budget_mib") && msg.contains("BRUME_DISK_BUDGET_MIB"),
            "{msg}"
        );
    }

    #[test]
    fn a_switch_left_off_leaves_the_lower_layers_alone() {
        let (_dir, path) = file("drain_on_exit = true\n");
        let cfg = load(Some(&path), env(&[]), &flags(&[])).unwrap();
        assert!(cfg.drain_on_exit);
        let cfg = load(None, env(&[("BRUME_DRAIN_ON_EXIT", "true")]), &flags(&[])).unwrap();
        assert!(cfg.drain_on_exit);
    }

    #[test]
    fn misspelt_file_key_names_file_and_line() {
        let (_dir, file) = file("log = \"info\"\nmin_degre = 3\n");
        let err = load(Some(&file), env(&[]), &flags(&[])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("node.toml:2"), "{msg}");
        assert!(msg.contains("min_degre"), "{msg}");
    }

    #[test]
    fn the_test_harness_variables_are_not_settings() {
        let vars = [
            ("BRUME_REQUIRE", "all"),
            ("BRUME_SKIP_LOG", "/tmp/skips"),
            ("BRUME_TEST_RUN", "7"),
            ("BRUME_TEST_SEED", "1"),
        ];
        let cfg = load(None, env(&vars), &flags(&[])).expect("ignored");
        assert_eq!(cfg.min_degree, NodeConfig::default().min_degree);
    }

    #[test]
    fn unknown_env_setting_and_bad_degrees_are_refused() {
        let err = load(None, env(&[("BRUME_MIN_DEGRE", "3")]), &flags(&[])).unwrap_err();
        assert!(err.to_string().contains("BRUME_MIN_DEGRE"), "{err}");
        let err = load(
            None,
            env(&[]),
            &flags(&["--min-degree", "9", "--max-degree", "3"]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("min_degree"), "{err}");
        assert!(err.to_string().contains("from flag --min-degree"), "{err}");
        let err = load(None, env(&[]), &flags(&["--cones", "33"])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("--cones") && msg.contains("at most 32"),
            "{msg}"
        );
    }

    #[test]
    fn migration_cache_defaults_to_a_gibibyte_and_each_layer_sets_it() {
        assert_eq!(NodeConfig::default().migration_cache_mb, 1024);
        let none = load(None, env(&[]), &flags(&[])).unwrap();
        assert_eq!(none.migration_cache_mb, 1024);

        let (_dir, file) = file("migration_cache_mb = 0\n");
        let from_file = load(Some(&file), env(&[]), &flags(&[])).unwrap();
        assert_eq!(from_file.migration_cache_mb, 0, "file over default");

        let from_env = load(
            Some(&file),
            env(&[("BRUME_MIGRATION_CACHE_MB", "64")]),
            &flags(&[]),
        )
        .unwrap();
        assert_eq!(from_env.migration_cache_mb, 64, "environment over file");

        let from_flag = load(
            Some(&file),
            env(&[("BRUME_MIGRATION_CACHE_MB", "64")]),
            &flags(&["--migration-cache-mb", "256"]),
        )
        .unwrap();
        assert_eq!(from_flag.migration_cache_mb, 256, "flag over environment");
    }

    #[test]
    fn migration_cache_flag_reaches_the_settings() {
        let cfg = load(None, env(&[]), &flags(&["--migration-cache-mb", "0"])).unwrap();
        assert_eq!(cfg.migration_cache_mb, 0);
        let cfg = load(
            None,
            env(&[("BRUME_MIGRATION_CACHE_MB", "64")]),
            &flags(&[]),
        )
        .unwrap();
        assert_eq!(
            cfg.migration_cache_mb, 64,
            "no flag leaves the lower layers"
        );
    }

    #[test]
    fn a_name_is_checked_and_optional() {
        assert_eq!(NodeConfig::default().name, None);
        let cfg = load(None, env(&[("BRUME_NAME", "gw-kitchen")]), &flags(&[]));
        assert_eq!(cfg.unwrap().name.as_deref(), Some("gw-kitchen"));
        for bad in ["Gw-Kitchen", "gw kitchen", "", &"x".repeat(33)] {
            let err = load(None, env(&[("BRUME_NAME", bad)]), &flags(&[])).unwrap_err();
            assert!(format!("{err:#}").contains("node name"), "{bad:?}: {err:#}");
        }
    }

    #[test]
    fn metrics_are_off_by_default_and_only_on_loopback() {
        let none = load(None, env(&[]), &flags(&[])).unwrap();
        assert_eq!(none.metrics_addr().unwrap(), None);
        for (text, port) in [("127.0.0.1:0", 0), ("[::1]:9464", 9464)] {
            let cfg = load(None, env(&[("BRUME_METRICS", text)]), &flags(&[])).unwrap();
            let addr = cfg.metrics_addr().unwrap().expect("on");
            assert!(addr.ip().is_loopback() && addr.port() == port, "{addr}");
        }
        let err = load(None, env(&[("BRUME_METRICS", "0.0.0.0:9464")]), &flags(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("not loopback"), "{err:#}");
        let err = load(None, env(&[("BRUME_METRICS", "9464")]), &flags(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("IP:port"), "{err:#}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "name = \"gw-1\"\nmetrics = \"127.0.0.1:9464\"\n").unwrap();
        let cfg = load(Some(&file), env(&[]), &flags(&[])).unwrap();
        assert_eq!(cfg.name.as_deref(), Some("gw-1"));
        assert_eq!(cfg.metrics.as_deref(), Some("127.0.0.1:9464"));
    }

    #[test]
    fn the_allow_list_takes_peer_ids_from_any_layer() {
        let a = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        let b = "12D3KooWH3uVF6wv47WnArKHk5p6cvgCJEb74UTmxztmQDc298L3";
        let open = load(None, env(&[]), &flags(&[])).unwrap();
        assert_eq!(open.allowed_peers().unwrap(), None, "open by default");
        let both = format!("{a},{b}");
        let cfg = load(None, env(&[("BRUME_ALLOW_PEER", &both)]), &flags(&[])).unwrap();
        assert_eq!(cfg.allowed_peers().unwrap().map(|p| p.len()), Some(2));
        let (_dir, path) = file(&format!("allow_peer = [\"{a}\"]\nnetwork_key = \"k\"\n"));
        let cfg = load(Some(&path), env(&[]), &flags(&[])).unwrap();
        assert_eq!(cfg.allow_peer, vec![a.to_string()]);
        assert_eq!(cfg.network_key, Some(PathBuf::from("k")));
        let err = load(None, env(&[]), &flags(&["--allow-peer", "nobody"])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("not a peer id") && msg.contains("--allow-peer"),
            "{msg}"
        );
    }

    #[test]
    fn env_value_of_wrong_type_is_refused() {
        let err = load(None, env(&[("BRUME_MIN_DEGREE", "many")]), &flags(&[])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("min_degree"), "{msg}");
        assert!(
            msg.contains("environment variable BRUME_MIN_DEGREE"),
            "{msg}"
        );
    }
}
