//! tarnd's configuration: defaults, overlaid by a TOML file, then environment (`TARN_*`), then
//! flags; validated as a whole, every problem reported at once by key name.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tarn_store::WalPolicy;

/// Which clients may use the plaintext protocol (without the Noise NK channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlaintextPolicy {
    /// Clients on loopback (127.0.0.0/8, ::1) only: local tools and benchmarks.
    Loopback,
    /// Every client (a private deployment that encrypts below tarn).
    Allow,
    /// No client: every request must come over the encrypted channel.
    Deny,
}

/// Every option, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Address given to others in NODE_LIST (default: `listen`).
    pub advertise: Option<String>,
    /// Where the RocksDB store and the node key live.
    pub data_dir: PathBuf,
    /// Prometheus endpoint; `None` disables it.
    pub metrics_listen: Option<SocketAddr>,
    /// Network name; nodes and clients of other networks are refused.
    pub network: String,
    /// Epoch length in seconds.
    pub epoch_secs: u64,
    /// Extra epochs a record lives after its epoch and the next.
    pub grace_epochs: u64,
    /// Executors (0: one per CPU of the affinity mask).
    pub cores: usize,
    /// Explicit CPUs to pin executors to (empty: the affinity mask).
    pub cpus: Vec<usize>,
    /// Ring members to join; empty starts a new ring (bootstrap).
    pub join: Vec<String>,
    /// Shared secret of a private ring (empty: none). Peers without it are refused.
    pub network_secret: String,
    /// Copies of every record (the responsible node and its next `replicas - 1` successors).
    pub replicas: usize,
    /// Which clients may skip the encrypted channel (a plaintext hello is always answered, so
    /// a client can learn the node's key on first use).
    pub client_plaintext: PlaintextPolicy,
    /// Interval of the periodic anti-entropy repair.
    pub repair_interval: Duration,
    /// Interval of the ring's stabilize rounds.
    pub stabilize_interval: Duration,
    /// Largest value accepted.
    pub max_value_bytes: u32,
    /// Values kept per key.
    pub max_values_per_key: u32,
    /// Total-bytes quota (0: none).
    pub max_total_bytes: u64,
    /// Largest frame body accepted.
    pub max_frame_bytes: u32,
    /// Connections served at once, across all cores.
    pub max_connections: usize,
    /// A started frame must complete within this.
    pub frame_timeout: Duration,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// WAL durability policy.
    pub wal: WalPolicy,
    /// Interval of the periodic WAL sync.
    pub wal_sync_interval: Duration,
    /// SNTP servers, `host:port`.
    pub ntp_servers: Vec<String>,
    /// SNTP poll interval.
    pub ntp_poll: Duration,
    /// RocksDB block cache.
    pub block_cache_bytes: u64,
    /// Memory for the index of live epochs that serves reads (0: reads go to RocksDB).
    pub index_bytes: u64,
    /// RocksDB memtable budget.
    pub write_buffer_bytes: u64,
    /// Log filter (tracing `EnvFilter` syntax).
    pub log: String,
    /// Test builds only (feature `peer-audit`): a file that receives the IP address of every
    /// client connection, so a test can prove which addresses the node saw. Never set in
    /// production; builds without the feature refuse the key.
    pub peer_audit_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:7400".parse().expect("valid"),
            advertise: None,
            data_dir: PathBuf::from("tarn-data"),
            metrics_listen: Some("127.0.0.1:9400".parse().expect("valid")),
            network: "tarn-dev".into(),
            epoch_secs: 3600,
            grace_epochs: 1,
            cores: 0,
            cpus: Vec::new(),
            join: Vec::new(),
            network_secret: String::new(),
            replicas: 3,
            client_plaintext: PlaintextPolicy::Loopback,
            repair_interval: Duration::from_secs(30),
            stabilize_interval: Duration::from_millis(500),
            max_value_bytes: 1024,
            max_values_per_key: 8,
            max_total_bytes: 0,
            max_frame_bytes: tarn_proto::frame::DEFAULT_MAX_BODY,
            max_connections: 4096,
            frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            wal: WalPolicy::Periodic,
            wal_sync_interval: Duration::from_millis(1000),
            ntp_servers: Vec::new(),
            ntp_poll: Duration::from_secs(64),
            block_cache_bytes: 64 << 20,
            index_bytes: 256 << 20,
            write_buffer_bytes: 128 << 20,
            log: "info".into(),
            peer_audit_file: None,
        }
    }
}

/// Command line (each flag also reads `TARN_<NAME>` from the environment).
#[derive(Parser, Debug, Default)]
#[command(
    name = "tarnd",
    version,
    about = "tarn Chord node: a privacy-preserving presence registry"
)]
pub struct Cli {
    /// TOML configuration file (keys as in ops/tarnd.example.toml).
    #[arg(long, env = "TARN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Client listen address, e.g. 127.0.0.1:7400 (port 0 picks a free port).
    #[arg(long, env = "TARN_LISTEN")]
    pub listen: Option<String>,
    /// Address advertised in NODE_LIST.
    #[arg(long, env = "TARN_ADVERTISE")]
    pub advertise: Option<String>,
    /// Data directory (RocksDB store and node key).
    #[arg(long, env = "TARN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Prometheus listen address, or "off".
    #[arg(long, env = "TARN_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Network name.
    #[arg(long, env = "TARN_NETWORK")]
    pub network: Option<String>,
    /// Epoch length in seconds.
    #[arg(long, env = "TARN_EPOCH_SECS")]
    pub epoch_secs: Option<String>,
    /// Executors (0: one per CPU of the affinity mask).
    #[arg(long, env = "TARN_CORES")]
    pub cores: Option<String>,
    /// CPUs to pin executors to, e.g. 0,2-3.
    #[arg(long, env = "TARN_CPUS")]
    pub cpus: Option<String>,
    /// Ring members to join, `ADDR[,ADDR]`.
    #[arg(long, env = "TARN_JOIN")]
    pub join: Option<String>,
    /// Shared secret of a private ring (prefer the environment or the file to a flag).
    #[arg(long, env = "TARN_NETWORK_SECRET", hide_env_values = true)]
    pub network_secret: Option<String>,
    /// WAL policy: disabled, nosync, periodic, every-write.
    #[arg(long, env = "TARN_WAL")]
    pub wal: Option<String>,
    /// SNTP servers, `HOST:PORT[,HOST:PORT]`.
    #[arg(long, env = "TARN_NTP_SERVERS")]
    pub ntp_servers: Option<String>,
    /// Log filter, e.g. info or tarn_node=debug.
    #[arg(long, env = "TARN_LOG")]
    pub log: Option<String>,
}

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The offending key (as in the TOML file).
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The configuration could not be loaded; every problem found is listed.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<Problem>);

/// Every key the file may hold; the example config and the docs list exactly these.
pub const KEYS: &[&str] = &[
    "listen",
    "advertise",
    "data_dir",
    "metrics_listen",
    "network",
    "epoch_secs",
    "grace_epochs",
    "cores",
    "cpus",
    "join",
    "network_secret",
    "replicas",
    "client_plaintext",
    "repair_interval_ms",
    "stabilize_interval_ms",
    "max_value_bytes",
    "max_values_per_key",
    "max_total_bytes",
    "max_frame_bytes",
    "max_connections",
    "frame_timeout_ms",
    "idle_timeout_secs",
    "wal",
    "wal_sync_interval_ms",
    "ntp_servers",
    "ntp_poll_secs",
    "block_cache_bytes",
    "index_bytes",
    "write_buffer_bytes",
    "log",
];

/// Keys of test builds only (feature `peer-audit`): accepted in a file, refused with a clear
/// message by builds without the feature, never in the example config or the docs.
pub const TEST_KEYS: &[&str] = &["peer_audit_file"];

struct Loader {
    cfg: Config,
    problems: Vec<Problem>,
}

impl Loader {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Applies one textual value (from a flag, the environment, or a TOML scalar).
    fn set(&mut self, key: &str, raw: &str) {
        let r: Result<(), String> = (|| {
            let c = &mut self.cfg;
            match key {
                "listen" => c.listen = parse_addr(raw)?,
                "advertise" => c.advertise = non_empty(raw),
                "data_dir" => {
                    if raw.is_empty() {
                        return Err("must not be empty".into());
                    }
                    c.data_dir = PathBuf::from(raw)
                }
                "metrics_listen" => {
                    c.metrics_listen = if raw.is_empty() || raw == "off" {
                        None
                    } else {
                        Some(parse_addr(raw)?)
                    }
                }
                "network" => c.network = raw.to_string(),
                "epoch_secs" => c.epoch_secs = parse_num(raw)?,
                "grace_epochs" => c.grace_epochs = parse_num(raw)?,
                "cores" => c.cores = parse_num(raw)?,
                "cpus" => c.cpus = parse_cpu_list(raw)?,
                "join" => c.join = split_list(raw),
                "network_secret" => c.network_secret = raw.to_string(),
                "replicas" => c.replicas = parse_num(raw)?,
                "client_plaintext" => {
                    c.client_plaintext = match raw {
                        "loopback" => PlaintextPolicy::Loopback,
                        "allow" => PlaintextPolicy::Allow,
                        "deny" => PlaintextPolicy::Deny,
                        _ => return Err(format!("{raw:?} is not one of loopback, allow, deny")),
                    }
                }
                "repair_interval_ms" => c.repair_interval = Duration::from_millis(parse_num(raw)?),
                "stabilize_interval_ms" => {
                    c.stabilize_interval = Duration::from_millis(parse_num(raw)?)
                }
                "max_value_bytes" => c.max_value_bytes = parse_num(raw)?,
                "max_values_per_key" => c.max_values_per_key = parse_num(raw)?,
                "max_total_bytes" => c.max_total_bytes = parse_num(raw)?,
                "max_frame_bytes" => c.max_frame_bytes = parse_num(raw)?,
                "max_connections" => c.max_connections = parse_num(raw)?,
                "frame_timeout_ms" => c.frame_timeout = Duration::from_millis(parse_num(raw)?),
                "idle_timeout_secs" => c.idle_timeout = Duration::from_secs(parse_num(raw)?),
                "wal" => c.wal = parse_wal(raw)?,
                "wal_sync_interval_ms" => {
                    c.wal_sync_interval = Duration::from_millis(parse_num(raw)?)
                }
                "ntp_servers" => c.ntp_servers = split_list(raw),
                "ntp_poll_secs" => c.ntp_poll = Duration::from_secs(parse_num(raw)?),
                "block_cache_bytes" => c.block_cache_bytes = parse_num(raw)?,
                "index_bytes" => c.index_bytes = parse_num(raw)?,
                "write_buffer_bytes" => c.write_buffer_bytes = parse_num(raw)?,
                "log" => c.log = raw.to_string(),
                "peer_audit_file" => {
                    if !cfg!(feature = "peer-audit") {
                        return Err(
                            "this tarnd was built without the peer-audit feature (test builds only)"
                                .into(),
                        );
                    }
                    c.peer_audit_file = non_empty(raw).map(PathBuf::from)
                }
                _ => return Err("unknown key".into()),
            }
            Ok(())
        })();
        if let Err(m) = r {
            self.problem(key, m);
        }
    }

    fn apply_toml(&mut self, text: &str, origin: &str) {
        let table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                self.problem(origin, format!("not valid TOML: {}", e.message()));
                return;
            }
        };
        for (key, value) in table {
            let raw = match &value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(items) => {
                    let mut parts = Vec::new();
                    for it in items {
                        match it {
                            toml::Value::String(s) => parts.push(s.clone()),
                            toml::Value::Integer(i) => parts.push(i.to_string()),
                            _ => {
                                self.problem(&key, "list items must be strings or integers");
                                continue;
                            }
                        }
                    }
                    parts.join(",")
                }
                _ => {
                    self.problem(&key, "expected a string, number or list");
                    continue;
                }
            };
            if !KEYS.contains(&key.as_str()) && !TEST_KEYS.contains(&key.as_str()) {
                self.problem(&key, "unknown key");
                continue;
            }
            self.set(&key, &raw);
        }
    }

    fn validate(&mut self) {
        let c = self.cfg.clone();
        if c.epoch_secs == 0 {
            self.problem("epoch_secs", "must be at least 1");
        }
        if c.grace_epochs > 24 {
            self.problem("grace_epochs", "must be at most 24");
        }
        if c.network.is_empty() {
            self.problem("network", "must not be empty");
        }
        if c.max_value_bytes == 0 {
            self.problem("max_value_bytes", "must be at least 1");
        }
        if c.max_values_per_key == 0 || c.max_values_per_key > 1024 {
            self.problem("max_values_per_key", "must be between 1 and 1024");
        }
        if c.max_frame_bytes < 1024 || c.max_frame_bytes > 16 << 20 {
            self.problem("max_frame_bytes", "must be between 1024 and 16777216");
        }
        // A RETRIEVE reply carries up to max_values_per_key values; it must fit a frame.
        let reply = (c.max_value_bytes as u64 + 16) * c.max_values_per_key as u64 + 64;
        if c.max_value_bytes > 0 && reply > c.max_frame_bytes as u64 {
            self.problem(
                "max_frame_bytes",
                format!("must hold a full RETRIEVE reply ({reply} bytes for max_value_bytes x max_values_per_key)"),
            );
        }
        if c.max_connections == 0 {
            self.problem("max_connections", "must be at least 1");
        }
        if c.frame_timeout.is_zero() {
            self.problem("frame_timeout_ms", "must be at least 1");
        }
        if c.idle_timeout.is_zero() {
            self.problem("idle_timeout_secs", "must be at least 1");
        }
        if c.wal_sync_interval.is_zero() {
            self.problem("wal_sync_interval_ms", "must be at least 1");
        }
        if c.ntp_poll.is_zero() {
            self.problem("ntp_poll_secs", "must be at least 1");
        }
        for s in &c.ntp_servers {
            if !s.contains(':') {
                self.problem("ntp_servers", format!("{s:?} is not HOST:PORT"));
            }
        }
        for s in &c.join {
            if !s.contains(':') {
                self.problem("join", format!("{s:?} is not HOST:PORT"));
            }
        }
        if c.replicas == 0 || c.replicas > 8 {
            self.problem(
                "replicas",
                "must be between 1 and 8 (the successor list length)",
            );
        }
        if c.repair_interval < Duration::from_millis(100) {
            self.problem("repair_interval_ms", "must be at least 100");
        }
        if c.stabilize_interval < Duration::from_millis(20) {
            self.problem("stabilize_interval_ms", "must be at least 20");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log) {
            self.problem("log", format!("not a valid filter: {e}"));
        }
        let mask = crate::cpu::affinity_mask();
        for cpu in &c.cpus {
            if !mask.contains(cpu) {
                self.problem(
                    "cpus",
                    format!("CPU {cpu} is not in this process's affinity mask {mask:?}"),
                );
            }
        }
        if c.cores > 1024 {
            self.problem("cores", "must be at most 1024");
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an IP:PORT address"))
}

fn parse_num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{s:?} is not a valid non-negative integer"))
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

fn parse_wal(s: &str) -> Result<WalPolicy, String> {
    Ok(match s {
        "disabled" => WalPolicy::Disabled,
        "nosync" => WalPolicy::NoSync,
        "periodic" => WalPolicy::Periodic,
        "every-write" => WalPolicy::EveryWrite,
        _ => {
            return Err(format!(
                "{s:?} is not one of disabled, nosync, periodic, every-write"
            ))
        }
    })
}

/// Parses `0,2-3` into `[0, 2, 3]`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in split_list(s) {
        let bad = || format!("{part:?} is not a CPU number or range");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b - a > 4096 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

/// Renders a WAL policy as its config spelling.
pub fn wal_name(w: WalPolicy) -> &'static str {
    match w {
        WalPolicy::Disabled => "disabled",
        WalPolicy::NoSync => "nosync",
        WalPolicy::Periodic => "periodic",
        WalPolicy::EveryWrite => "every-write",
    }
}

impl Config {
    /// Loads defaults, then the file named by `--config` (if any), then environment and flags,
    /// and validates the result.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let mut l = Loader {
            cfg: Config::default(),
            problems: Vec::new(),
        };
        if let Some(path) = &cli.config {
            match std::fs::read_to_string(path) {
                Ok(text) => l.apply_toml(&text, "config"),
                Err(e) => l.problem("config", format!("cannot read {}: {e}", path.display())),
            }
        }
        let flags: [(&str, Option<String>); 13] = [
            ("listen", cli.listen.clone()),
            ("advertise", cli.advertise.clone()),
            (
                "data_dir",
                cli.data_dir.as_ref().map(|p| p.display().to_string()),
            ),
            ("metrics_listen", cli.metrics_listen.clone()),
            ("network", cli.network.clone()),
            ("epoch_secs", cli.epoch_secs.clone()),
            ("cores", cli.cores.clone()),
            ("cpus", cli.cpus.clone()),
            ("join", cli.join.clone()),
            ("network_secret", cli.network_secret.clone()),
            ("wal", cli.wal.clone()),
            ("ntp_servers", cli.ntp_servers.clone()),
            ("log", cli.log.clone()),
        ];
        for (key, value) in flags {
            if let Some(v) = value {
                l.set(key, &v);
            }
        }
        l.validate();
        if l.problems.is_empty() {
            Ok(l.cfg)
        } else {
            Err(ConfigError(l.problems))
        }
    }

    /// Loads a TOML text alone over the defaults (for `config check` and tests).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut l = Loader {
            cfg: Config::default(),
            problems: Vec::new(),
        };
        l.apply_toml(text, "config");
        l.validate();
        if l.problems.is_empty() {
            Ok(l.cfg)
        } else {
            Err(ConfigError(l.problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_audit_file_exists_only_in_test_builds() {
        let r = Config::from_toml("peer_audit_file = \"/var/tmp/peers\"\n");
        if cfg!(feature = "peer-audit") {
            assert_eq!(
                r.expect("accepted").peer_audit_file,
                Some(PathBuf::from("/var/tmp/peers"))
            );
        } else {
            let e = r.expect_err("refused").to_string();
            assert!(
                e.contains("peer_audit_file") && e.contains("peer-audit"),
                "{e}"
            );
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn every_problem_is_reported_by_key() {
        let err = Config::from_toml(
            "epoch_secs = 0\nlisten = \"nope\"\nwal = \"sometimes\"\nbogus = 1\nmax_connections = -3\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        for k in ["epoch_secs", "listen", "wal", "bogus", "max_connections"] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert!(err.to_string().contains("bogus: unknown key"));
    }

    #[test]
    fn broken_toml_names_the_file() {
        let err = Config::from_toml("listen = [").unwrap_err();
        assert_eq!(err.0[0].key, "config");
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "epoch_secs = 60\ncores = 1\n").unwrap();
        let cli = Cli {
            config: Some(path),
            epoch_secs: Some("2".into()),
            ..Default::default()
        };
        let c = Config::load(&cli).unwrap();
        assert_eq!(c.epoch_secs, 2);
        assert_eq!(c.cores, 1);
    }

    #[test]
    fn lists_and_ranges() {
        assert_eq!(parse_cpu_list("0,2-4").unwrap(), vec![0, 2, 3, 4]);
        assert!(parse_cpu_list("3-1").is_err());
        let c = Config::from_toml(
            "ntp_servers = [\"127.0.0.1:123\", \"127.0.0.2:123\"]\nmetrics_listen = \"off\"",
        )
        .unwrap();
        assert_eq!(c.ntp_servers.len(), 2);
        assert_eq!(c.metrics_listen, None);
    }

    #[test]
    fn frame_must_hold_a_full_reply() {
        let err = Config::from_toml("max_value_bytes = 60000").unwrap_err();
        assert_eq!(err.0[0].key, "max_frame_bytes");
    }
}
