//! The node's settings, layered the way operators expect: built-in defaults, then a TOML file
//! (`--config FILE` or `BRUME_CONFIG`), then `BRUME_*` environment variables, then flags. Each
//! layer overrides only what it names. A key the file misspells is refused with the file and the
//! line, not ignored: a typo in a fleet's config should not silently fall back to a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::input_error::Source;

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
    /// A name for people (1-32 of `a-z`, `0-9`, `-`, e.g. `gw-kitchen`), shown beside the peer id.
    pub name: Option<String>,
    /// Serve Prometheus metrics on this loopback address (e.g. `127.0.0.1:9464`; port 0 picks one,
    /// written to `<data_dir>/metrics.addr`); off when unset. See docs/metrics.md.
    pub metrics: Option<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: vec!["/ip4/0.0.0.0/tcp/7100".into()],
            join: Vec::new(),
            control: default_control_socket(),
            min_degree: 4,
            max_degree: 12,
            data_dir: default_data_dir(),
            log_format: LogFormat::Human,
            log: "info".into(),
            ping_interval_ms: 5000,
            engine: "auto".into(),
            drain_on_exit: false,
            migration_cache_mb: 1024,
            name: None,
            metrics: None,
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

/// What the command line said; `None` leaves the lower layers alone.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Vec<String>,
    pub join: Vec<String>,
    pub control: Option<PathBuf>,
    pub min_degree: Option<usize>,
    pub max_degree: Option<usize>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub log: Option<String>,
    pub ping_interval_ms: Option<u64>,
    pub engine: Option<String>,
    pub drain_on_exit: Option<bool>,
    pub migration_cache_mb: Option<u64>,
}

/// Builds the settings from the four layers. `env` is the process environment (passed in so
/// tests need not touch the real one).
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &Overrides,
) -> anyhow::Result<NodeConfig> {
    use config::{Config, File, FileFormat, Map, Value};

    let mut builder = Config::builder()
        .add_source(Config::try_from(&NodeConfig::default()).map_err(anyhow::Error::msg)?);
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        // Parse once strictly for errors with a line number and unknown keys.
        let name = path.display().to_string();
        toml::from_str::<NodeConfig>(&text).map_err(|e| Source::new(&name, &text).toml(&e))?;
        builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
    }
    let env: Map<String, Value> = env
        .into_iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("BRUME_")?.to_ascii_lowercase();
            (key != "config" && !NOT_SETTINGS.contains(&key.as_str())).then_some((key, v))
        })
        .map(|(k, v)| {
            let value: Value = if k == "listen" || k == "join" {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::from(s.to_string()))
                    .collect::<Vec<_>>()
                    .into()
            } else {
                v.into()
            };
            (k, value)
        })
        .collect();
    for (k, v) in env {
        if !KEYS.contains(&k.as_str()) {
            anyhow::bail!(
                "environment variable BRUME_{}: unknown setting `{k}` (known: {})",
                k.to_ascii_uppercase(),
                KEYS.join(", ")
            );
        }
        builder = builder.set_override(k, v)?;
    }
    let f = flags;
    if !f.listen.is_empty() {
        builder = builder.set_override("listen", f.listen.clone())?;
    }
    if !f.join.is_empty() {
        builder = builder.set_override("join", f.join.clone())?;
    }
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
    builder = builder
        .set_override_option("control", path(&f.control))?
        .set_override_option("data_dir", path(&f.data_dir))?
        .set_override_option("min_degree", f.min_degree.map(|d| d as u64))?
        .set_override_option("max_degree", f.max_degree.map(|d| d as u64))?
        .set_override_option("log", f.log.clone())?
        .set_override_option("ping_interval_ms", f.ping_interval_ms)?
        .set_override_option("engine", f.engine.clone())?
        .set_override_option("drain_on_exit", f.drain_on_exit)?
        .set_override_option("migration_cache_mb", f.migration_cache_mb)?
        .set_override_option(
            "log_format",
            f.log_format.map(|l| match l {
                LogFormat::Human => "human",
                LogFormat::Json => "json",
            }),
        )?;
    let cfg: NodeConfig = builder
        .build()?
        .try_deserialize()
        .map_err(|e| anyhow::anyhow!("invalid node settings: {e}"))?;
    cfg.check()?;
    Ok(cfg)
}

/// `BRUME_*` variables that belong to brume's scripts and tests, not to a node: a node started
/// from `scripts/test.sh` (which exports them) ignores them instead of refusing to start.
const NOT_SETTINGS: &[&str] = &["require", "skip_log", "test_run", "test_seed"];

/// Settings keys, as the file and `BRUME_*` variables spell them.
pub const KEYS: [&str; 14] = [
    "listen",
    "join",
    "control",
    "min_degree",
    "max_degree",
    "data_dir",
    "log_format",
    "log",
    "ping_interval_ms",
    "engine",
    "drain_on_exit",
    "migration_cache_mb",
    "name",
    "metrics",
];

impl NodeConfig {
    fn check(&self) -> anyhow::Result<()> {
        if self.min_degree == 0 || self.min_degree > self.max_degree {
            anyhow::bail!(
                "min_degree ({}) must be at least 1 and at most max_degree ({})",
                self.min_degree,
                self.max_degree
            );
        }
        if !(50..=600_000).contains(&self.ping_interval_ms) {
            anyhow::bail!(
                "ping_interval_ms ({}) must be between 50 and 600000",
                self.ping_interval_ms
            );
        }
        if !["auto", "docker", "process"].contains(&self.engine.as_str()) {
            anyhow::bail!(
                "engine `{}` is unknown: use docker, process or auto",
                self.engine
            );
        }
        if let Some(name) = &self.name {
            brume_overlay::neighbourhood::check_name(name)?;
        }
        self.metrics_addr()?;
        if self.listen.is_empty() {
            anyhow::bail!(
                "no listen address: give at least one, e.g. --listen /ip4/0.0.0.0/tcp/7100"
            );
        }
        Ok(())
    }
}

impl NodeConfig {
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

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "min_degree = 3\nmax_degree = 9\nlog = \"debug\"\n").unwrap();
        let flags = Overrides {
            max_degree: Some(7),
            ..Default::default()
        };
        let cfg = load(
            Some(&file),
            env(&[
                ("BRUME_LOG", "warn"),
                ("BRUME_JOIN", "/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2"),
                ("PATH", "/bin"),
            ]),
            &flags,
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
    fn misspelt_file_key_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "log = \"info\"\nmin_degre = 3\n").unwrap();
        let err = load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
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
        let cfg = load(None, env(&vars), &Overrides::default()).expect("ignored");
        assert_eq!(cfg.min_degree, NodeConfig::default().min_degree);
    }

    #[test]
    fn unknown_env_setting_and_bad_degrees_are_refused() {
        let err = load(
            None,
            env(&[("BRUME_MIN_DEGRE", "3")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("BRUME_MIN_DEGRE"), "{err}");
        let flags = Overrides {
            min_degree: Some(9),
            max_degree: Some(3),
            ..Default::default()
        };
        let err = load(None, env(&[]), &flags).unwrap_err();
        assert!(err.to_string().contains("min_degree"), "{err}");
    }

    #[test]
    fn migration_cache_defaults_to_a_gibibyte_and_each_layer_sets_it() {
        assert_eq!(NodeConfig::default().migration_cache_mb, 1024);
        let none = load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(none.migration_cache_mb, 1024);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "migration_cache_mb = 0\n").unwrap();
        let from_file = load(Some(&file), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(from_file.migration_cache_mb, 0, "file over default");

        let from_env = load(
            Some(&file),
            env(&[("BRUME_MIGRATION_CACHE_MB", "64")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(from_env.migration_cache_mb, 64, "environment over file");

        let flags = Overrides {
            migration_cache_mb: Some(256),
            ..Default::default()
        };
        let from_flag = load(
            Some(&file),
            env(&[("BRUME_MIGRATION_CACHE_MB", "64")]),
            &flags,
        )
        .unwrap();
        assert_eq!(from_flag.migration_cache_mb, 256, "flag over environment");
    }

    #[test]
    fn migration_cache_flag_reaches_the_settings() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            node: crate::daemon::run::NodeArgs,
        }
        let cli = Cli::try_parse_from(["brume", "--migration-cache-mb", "0"]).unwrap();
        let cfg = load(None, env(&[]), &cli.node.overrides()).unwrap();
        assert_eq!(cfg.migration_cache_mb, 0);
        let cli = Cli::try_parse_from(["brume"]).unwrap();
        let cfg = load(
            None,
            env(&[("BRUME_MIGRATION_CACHE_MB", "64")]),
            &cli.node.overrides(),
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
        let cfg = load(
            None,
            env(&[("BRUME_NAME", "gw-kitchen")]),
            &Overrides::default(),
        );
        assert_eq!(cfg.unwrap().name.as_deref(), Some("gw-kitchen"));
        for bad in ["Gw-Kitchen", "gw kitchen", "", &"x".repeat(33)] {
            let err = load(None, env(&[("BRUME_NAME", bad)]), &Overrides::default()).unwrap_err();
            assert!(format!("{err:#}").contains("node name"), "{bad:?}: {err:#}");
        }
    }

    #[test]
    fn metrics_are_off_by_default_and_only_on_loopback() {
        let none = load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(none.metrics_addr().unwrap(), None);
        for (text, port) in [("127.0.0.1:0", 0), ("[::1]:9464", 9464)] {
            let cfg = load(None, env(&[("BRUME_METRICS", text)]), &Overrides::default()).unwrap();
            let addr = cfg.metrics_addr().unwrap().expect("on");
            assert!(addr.ip().is_loopback() && addr.port() == port, "{addr}");
        }
        let err = load(
            None,
            env(&[("BRUME_METRICS", "0.0.0.0:9464")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("not loopback"), "{err:#}");
        let err = load(
            None,
            env(&[("BRUME_METRICS", "9464")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("IP:port"), "{err:#}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "name = \"gw-1\"\nmetrics = \"127.0.0.1:9464\"\n").unwrap();
        let cfg = load(Some(&file), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(cfg.name.as_deref(), Some("gw-1"));
        assert_eq!(cfg.metrics.as_deref(), Some("127.0.0.1:9464"));
    }

    #[test]
    fn env_value_of_wrong_type_is_refused() {
        let err = load(
            None,
            env(&[("BRUME_MIN_DEGREE", "many")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("min_degree"), "{err:#}");
    }
}
