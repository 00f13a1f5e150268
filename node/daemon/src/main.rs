//! `tarnd`: start-up, wiring and shutdown. The pieces live in the library modules.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};
use tarn_node::config::{Cli, Config};
use tarn_node::identity::Identity;
use tarn_node::metrics::Metrics;
use tarn_node::server::{self, Shared};
use tarn_node::timesync::{self, Clock};
use tarn_node::{cpu, maintenance};
use tarn_proto::NetworkId;
use tarn_store::{Limits, RocksOptions, RocksStore, Store};

/// jemalloc, with transparent huge pages for its arenas (`thp:always`, `metadata_thp:always`;
/// jemalloc asks with `madvise`, so the system's THP policy still decides). A RETRIEVE's index
/// read is dependent cache misses into a table and value sets that grow with every key; on
/// 4 KiB pages most of them also miss the TLB, and glibc's malloc cannot give a thread's arena
/// huge pages. BENCHMARKS.md, "Eighth round": 5–20 % more ops/s at 50 x 1 in A/B runs.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, compiled in: it reads this symbol (tikv-jemalloc-sys prefixes its
/// names with `_rjem_`) before `main`; `_RJEM_MALLOC_CONF` in the environment still overrides.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: Option<&std::ffi::c_char> = Some(&MALLOC_CONF_STR[0]);
static MALLOC_CONF_STR: [std::ffi::c_char; 31] = c_string(b"thp:always,metadata_thp:always\0");

/// A byte string as C characters (`c_char` is signed on x86-64).
const fn c_string<const N: usize>(s: &[u8; N]) -> [std::ffi::c_char; N] {
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = s[i] as std::ffi::c_char;
        i += 1;
    }
    out
}

fn main() {
    let cli = Cli::parse();
    let cfg = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tarnd: {e}");
            std::process::exit(2);
        }
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, log_handle) =
        tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::new(&cfg.log));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    if let Err(e) = run(cfg, &cli, log_handle) {
        tracing::error!("{e:#}");
        eprintln!("tarnd: {e:#}");
        std::process::exit(1);
    }
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Handle to swap the log filter on SIGHUP.
type LogHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// SIGHUP: re-read and validate the configuration. The log filter changes at once; every other
/// changed key needs a restart and is named in a warning. An invalid file changes nothing.
fn reload(cli: &Cli, running: &Config, log: &LogHandle) {
    let new = match Config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("SIGHUP: configuration not reloaded: {e}");
            return;
        }
    };
    if new.log != running.log {
        match log.reload(tracing_subscriber::EnvFilter::new(&new.log)) {
            Ok(()) => tracing::info!(log = %new.log, "SIGHUP: log filter reloaded"),
            Err(e) => tracing::error!("SIGHUP: log filter not reloaded: {e}"),
        }
    }
    let fixed = Config {
        log: running.log.clone(),
        ..new.clone()
    };
    if fixed != *running {
        let names = changed_keys(running, &new);
        tracing::warn!(keys = %names.join(","), "SIGHUP: these settings changed and take effect at the next restart");
    } else {
        tracing::info!("SIGHUP: configuration reloaded");
    }
}

fn changed_keys(a: &Config, b: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    macro_rules! cmp {
        ($($field:ident => $key:literal),* $(,)?) => { $( if a.$field != b.$field { v.push($key); } )* };
    }
    cmp!(listen => "listen", advertise => "advertise", data_dir => "data_dir", metrics_listen => "metrics_listen",
         network => "network", epoch_secs => "epoch_secs", grace_epochs => "grace_epochs", cores => "cores",
         cpus => "cpus", join => "join", client_plaintext => "client_plaintext",
         network_secret => "network_secret", replicas => "replicas", repair_interval => "repair_interval_ms",
         stabilize_interval => "stabilize_interval_ms", max_value_bytes => "max_value_bytes",
         max_values_per_key => "max_values_per_key", max_total_bytes => "max_total_bytes",
         max_frame_bytes => "max_frame_bytes", max_connections => "max_connections",
         frame_timeout => "frame_timeout_ms", idle_timeout => "idle_timeout_secs", wal => "wal",
         wal_sync_interval => "wal_sync_interval_ms", ntp_servers => "ntp_servers", ntp_poll => "ntp_poll_secs",
         block_cache_bytes => "block_cache_bytes", write_buffer_bytes => "write_buffer_bytes",
         index_bytes => "index_bytes",
         peer_audit_file => "peer_audit_file");
    v
}

fn run(cfg: Config, cli: &Cli, log: LogHandle) -> anyhow::Result<()> {
    let started = Instant::now();
    raise_fd_limit();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    let identity = Identity::load_or_create(&cfg.data_dir)?;

    // Bind before opening the store, so a second tarnd on the same port stops here.
    let plan = cpu::plan(cfg.cores, &cfg.cpus, &cpu::affinity_mask());
    let listeners = server::bind_listeners(cfg.listen, plan.len())?;
    let listen_addr = listeners[0].local_addr()?;

    let store: Arc<dyn Store> = Arc::new(
        RocksStore::open(
            &cfg.data_dir.join("db"),
            RocksOptions {
                limits: Limits {
                    max_value_bytes: cfg.max_value_bytes,
                    max_values_per_key: cfg.max_values_per_key,
                    max_total_bytes: cfg.max_total_bytes,
                },
                wal: cfg.wal,
                block_cache_bytes: cfg.block_cache_bytes as usize,
                index_bytes: cfg.index_bytes,
                write_buffer_bytes: cfg.write_buffer_bytes as usize,
                ..Default::default()
            },
        )
        .context("opening the store")?,
    );

    let clock = Clock::new();
    let metrics = Metrics::new();
    metrics
        .start_time_seconds
        .set(timesync::system_ns() as f64 / 1e9);
    let advertise = cfg
        .advertise
        .clone()
        .unwrap_or_else(|| listen_addr.to_string());
    let ring_cfg = tarn_ring::RingConfig {
        stabilize_ms: cfg.stabilize_interval.as_millis() as u64,
        check_pred_ms: (cfg.stabilize_interval.as_millis() as u64 * 2).max(100),
        ..tarn_ring::RingConfig::default()
    };
    let ident = Arc::new(tarn_node::peer::PeerIdent {
        me: tarn_proto::ring::NodeRef {
            id: identity.id,
            addr: advertise.clone(),
        },
        signing: identity.signing.clone(),
        public_key: identity.public_key,
        network: NetworkId::from_name(&cfg.network),
        epoch_secs: cfg.epoch_secs,
        secret: tarn_proto::peer::secret_key(&cfg.network_secret),
        max_frame: cfg.max_frame_bytes.max(1 << 20),
    });
    let mut inbox_tx = Vec::new();
    let mut inbox_rx = Vec::new();
    for _ in 0..plan.len() {
        let (tx, rx) = glommio::channels::shared_channel::new_bounded(4096);
        inbox_tx.push(tx);
        inbox_rx.push(rx);
    }
    let cluster = tarn_node::cluster::Cluster::new(ident, &ring_cfg, cfg.replicas, inbox_tx);
    let shared = Arc::new(Shared {
        cluster,
        advertise,
        network: NetworkId::from_name(&cfg.network),
        node_id: identity.id,
        public_key: identity.public_key,
        noise_secret: identity.signing.to_scalar_bytes(),
        store: store.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
        started,
        cores: plan.len(),
        shutdown: AtomicBool::new(false),
        heartbeats: (0..plan.len())
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
        cfg: cfg.clone(),
    });

    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;

    // GC once before serving: expired partitions from before a restart go now.
    let now = tarn_proto::Epoch::at_unix_ns(clock.now().unix_ns, cfg.epoch_secs);
    maintenance::gc_pass(&shared, now).context("initial garbage collection")?;

    let mut threads = Vec::new();
    if !cfg.ntp_servers.is_empty() {
        let (servers, poll, clock, stop) = (
            cfg.ntp_servers.clone(),
            cfg.ntp_poll,
            clock.clone(),
            stop.clone(),
        );
        threads.push(
            std::thread::Builder::new()
                .name("tarn-sntp".into())
                .spawn(move || timesync::run_poller(servers, poll, clock, stop))?,
        );
    }
    let metrics_server = match cfg.metrics_listen {
        Some(addr) => {
            let server = tiny_http::Server::http(addr)
                .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
            let bound = server
                .server_addr()
                .to_ip()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let server = Arc::new(server);
            let (s, sh) = (server.clone(), shared.clone());
            std::thread::Builder::new()
                .name("tarn-metrics".into())
                .spawn(move || tarn_node::metrics::serve_shared(&s, sh))?;
            Some((server, bound))
        }
        None => None,
    };
    {
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("tarn-gc".into())
                .spawn(move || maintenance::run_gc(s))?,
        );
    }
    {
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("tarn-journal".into())
                .spawn(move || maintenance::run_journal(s))?,
        );
    }
    if cfg.wal == tarn_store::WalPolicy::Periodic {
        let (s, every) = (shared.clone(), cfg.wal_sync_interval);
        threads.push(
            std::thread::Builder::new()
                .name("tarn-wal".into())
                .spawn(move || maintenance::run_wal_sync(s, every))?,
        );
    }

    let mut cores = Vec::new();
    for (i, (cpu_id, listener)) in plan.iter().zip(listeners).enumerate() {
        let s = shared.clone();
        let poller = tarn_node::sock::Poller::new()
            .map_err(|e| anyhow::anyhow!("creating the epoll set of core {i}: {e}"))?;
        let handle = LocalExecutorBuilder::new(Placement::Fixed(*cpu_id))
            .name(&format!("tarn-core-{i}"))
            .io_memory(2 << 20)
            .spawn(move || server::run_core(s, listener, poller, i))
            .map_err(|e| anyhow::anyhow!("starting executor {i} on CPU {cpu_id}: {e}"))?;
        cores.push(handle);
    }

    let ring_thread = {
        let s = shared.clone();
        let seed: u64 = rand::random();
        let cpu = plan[0];
        LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name("tarn-ring")
            .io_memory(1 << 20)
            .spawn(move || tarn_node::cluster::run_ring(s, ring_cfg, inbox_rx, seed))
            .map_err(|e| anyhow::anyhow!("starting the ring executor: {e}"))?
    };

    tracing::info!(
        node_id = %identity.id.short(),
        cores = plan.len(),
        cpus = ?plan,
        epoch_secs = cfg.epoch_secs,
        wal = tarn_node::config::wal_name(cfg.wal),
        "tarnd serving"
    );
    if cfg.join.is_empty() {
        tracing::warn!(
            "started a new ring: other nodes join it with --join {}; a ring of fewer than 9 \
             members (r + 1) is for development and tests",
            shared.advertise
        );
    }
    let pid_file = cfg.data_dir.join(tarn_node::PID_FILE);
    if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
        tracing::warn!(error = %e, "cannot write the PID file; tarnctl drain will not find this node");
    }
    // One machine-readable line on stdout for scripts and tests.
    let metrics_addr = metrics_server
        .as_ref()
        .map(|(_, a)| a.clone())
        .unwrap_or_else(|| "off".into());
    println!(
        "tarnd ready listen={listen_addr} metrics={metrics_addr} node_id={}",
        identity.id.to_hex()
    );
    let _ = std::io::stdout().flush();

    // systemd: READY once serving; watchdog pings (at half the interval) only while every core
    // beats, so a stalled executor gets the unit restarted. Without NOTIFY_SOCKET these do nothing.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = sd_notify::watchdog_enabled();
    let mut last_ping = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if hup.swap(false, Ordering::Relaxed) {
            reload(cli, &cfg, &log);
        }
        if let Some(interval) = watchdog {
            if last_ping.elapsed() >= interval / 2 && shared.cores_alive(interval / 2) {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                last_ping = Instant::now();
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // Leave the ring first, while still serving: hand records over, then fall silent.
    tracing::info!("leaving the ring: handing records over");
    shared.cluster.leave.store(true, Ordering::Relaxed);
    let _ = ring_thread.join();
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    shared.shutdown.store(true, Ordering::Relaxed);
    for (i, c) in cores.into_iter().enumerate() {
        if c.join().is_err() {
            tracing::error!(core = i, "executor ended abnormally");
        }
    }
    if let Some((server, _)) = metrics_server {
        server.unblock();
    }
    for t in threads {
        let _ = t.join();
    }
    store.sync().context("final WAL sync")?;
    let _ = std::fs::remove_file(&pid_file);
    tracing::info!("stopped cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jemallocs_options_are_one_c_string() {
        let bytes: Vec<u8> = MALLOC_CONF_STR.iter().map(|&c| c as u8).collect();
        let conf = std::ffi::CStr::from_bytes_with_nul(&bytes).unwrap();
        assert_eq!(conf.to_str().unwrap(), "thp:always,metadata_thp:always");
        assert!(std::ptr::eq(MALLOC_CONF.unwrap(), &MALLOC_CONF_STR[0]));
    }
}
