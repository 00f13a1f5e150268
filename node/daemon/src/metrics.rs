//! Prometheus metrics. Every name starts with `tarn_`; no label ever carries a key, a value or
//! a client address (labels are request types, outcomes, storage operations and epoch ages).

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tarn_proto::Epoch;
use tarn_store::Store;

use crate::timesync::Clock;

/// One store read in this many is timed for `tarn_storage_duration_seconds{op="get"}` (a read
/// from the index takes about as long as the two clock reads that would time it).
pub const GET_TIMING_EVERY: u32 = 16;

/// Reasons a node-to-node handshake or link is refused (label values of
/// `tarn_peer_handshakes_refused_total`).
pub const PEER_REFUSALS: &[&str] = &[
    "version",
    "network",
    "epoch_len",
    "identity",
    "self",
    "signature",
    "secret",
    "protocol",
    "handshake",
    "garbage",
    "spoofed",
    "refused_by_peer",
];

/// All of tarnd's metrics, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Requests by `type` and `outcome`.
    pub requests: IntCounterVec,
    /// Request latency inside the node by `type` (decode to reply encoded).
    pub request_seconds: HistogramVec,
    /// Time spent in the storage engine (the blocking boundary) by `op`; `get` is sampled
    /// (one read in [`GET_TIMING_EVERY`]), `put` is every group commit.
    pub storage_seconds: HistogramVec,
    /// Inserts per group commit.
    pub batch_size: Histogram,
    /// How late each core's 100 ms heartbeat ran, by `core`: time the executor was blocked.
    pub executor_stall_seconds: HistogramVec,
    /// 1 while the node is a ring member.
    pub ring_member: IntGauge,
    /// Entries in the successor list.
    pub ring_successors: IntGauge,
    /// 1 while a predecessor is known.
    pub ring_predecessor: IntGauge,
    /// Distinct finger nodes.
    pub ring_fingers: IntGauge,
    /// Stabilize rounds started (requests for the first successor's state).
    pub ring_stabilize_rounds: IntCounter,
    /// Inserts waiting for or in a group commit, by `core`.
    pub commit_queue: IntGaugeVec,
    /// Membership changes seen (successor list or predecessor), each triggering handoff.
    pub ring_changes: IntCounter,
    /// Peer handshakes refused, by `reason`.
    pub peers_refused: IntCounterVec,
    /// Peer links established.
    pub peers_connected: IntCounter,
    /// Requests forwarded to the responsible node, by `type`.
    pub forwarded: IntCounterVec,
    /// Replica writes by `outcome` (ok, failed): failures are copies the repair must restore.
    pub replica_writes: IntCounterVec,
    /// Anti-entropy repair rounds.
    pub repair_rounds: IntCounter,
    /// Values sent by repair and handoff.
    pub repair_values: IntCounter,
    /// Unix time of the last completed repair round.
    pub repair_last_success: Gauge,
    /// Open client connections.
    pub connections_open: IntGauge,
    /// Connections accepted.
    pub connections_total: IntCounter,
    /// Connections refused at the limit.
    pub connections_refused: IntCounter,
    /// Frames or connections rejected, by `reason`.
    pub rejected: IntCounterVec,
    /// Values accepted per live epoch, by `epoch_age` (now − epoch).
    pub records: IntGaugeVec,
    /// Value bytes accepted per live epoch, by `epoch_age`.
    pub bytes: IntGaugeVec,
    /// GC runs.
    pub gc_runs: IntCounter,
    /// Epoch partitions dropped.
    pub gc_epochs_dropped: IntCounter,
    /// GC duration.
    pub gc_seconds: Histogram,
    /// Unix time of the last successful GC.
    pub gc_last_success: Gauge,
    /// WAL syncs done by the periodic policy.
    pub wal_syncs: IntCounter,
    /// Disciplined clock minus system clock.
    pub time_offset_seconds: Gauge,
    /// The clock's estimated error.
    pub time_uncertainty_seconds: Gauge,
    /// Time servers that answered the last poll.
    pub ntp_servers_reachable: IntGauge,
    /// 1 when time servers discipline the clock.
    pub ntp_synced: IntGauge,
    /// The current epoch.
    pub epoch: IntGauge,
    /// The network's epoch length.
    pub epoch_length_seconds: IntGauge,
    /// Process start, Unix seconds.
    pub start_time_seconds: Gauge,
    /// Free bytes on the data directory's filesystem (for the disk-filling alert).
    pub data_dir_free_bytes: IntGauge,
    /// Size of the data directory's filesystem.
    pub data_dir_capacity_bytes: IntGauge,
    /// Storage-engine figures, one gauge per [`tarn_store::EngineStat`].
    pub engine: Vec<(tarn_store::EngineStat, IntGauge)>,
}

/// `(free, capacity)` of the filesystem holding `path`, for unprivileged writers.
fn fs_space(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into a zeroed struct we own; `c` is a valid C string.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        let frsize = st.f_frsize as u64;
        Some((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        let lat = vec![
            5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1,
            0.5, 1.0,
        ];
        let m = Metrics {
            requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("tarn_requests_total", "Client requests by type and outcome"),
                    &["type", "outcome"],
                )
                .expect("valid"),
            ),
            request_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "tarn_request_duration_seconds",
                        "Request latency inside the node",
                    )
                    .buckets(lat.clone()),
                    &["type"],
                )
                .expect("valid"),
            ),
            storage_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "tarn_storage_duration_seconds",
                        format!(
                            "Time in the storage engine (blocking boundary); op=get samples one \
                             read in {GET_TIMING_EVERY}"
                        ),
                    )
                    .buckets(lat),
                    &["op"],
                )
                .expect("valid"),
            ),
            batch_size: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("tarn_insert_batch_size", "Inserts per group commit")
                        .buckets(vec![
                            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0,
                        ]),
                )
                .expect("valid"),
            ),
            executor_stall_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "tarn_executor_stall_seconds",
                        "Lateness of each core's heartbeat (executor blocked)",
                    )
                    .buckets(vec![1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0, 5.0]),
                    &["core"],
                )
                .expect("valid"),
            ),
            ring_member: reg(
                &r,
                IntGauge::new("tarn_ring_member", "1 while the node is a ring member")
                    .expect("valid"),
            ),
            ring_successors: reg(
                &r,
                IntGauge::new("tarn_ring_successors", "Entries in the successor list")
                    .expect("valid"),
            ),
            ring_predecessor: reg(
                &r,
                IntGauge::new(
                    "tarn_ring_predecessor_present",
                    "1 while a predecessor is known",
                )
                .expect("valid"),
            ),
            ring_fingers: reg(
                &r,
                IntGauge::new("tarn_ring_fingers", "Distinct finger nodes").expect("valid"),
            ),
            ring_stabilize_rounds: reg(
                &r,
                IntCounter::new(
                    "tarn_ring_stabilize_rounds_total",
                    "Stabilize rounds started (GetState to the first successor)",
                )
                .expect("valid"),
            ),
            commit_queue: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "tarn_commit_queue_inserts",
                        "Inserts waiting for or in a group commit, by core",
                    ),
                    &["core"],
                )
                .expect("valid"),
            ),
            ring_changes: reg(
                &r,
                IntCounter::new(
                    "tarn_ring_membership_changes_total",
                    "Successor list or predecessor changes (each triggers handoff)",
                )
                .expect("valid"),
            ),
            peers_refused: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "tarn_peer_handshakes_refused_total",
                        "Node-to-node handshakes refused, by reason",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            peers_connected: reg(
                &r,
                IntCounter::new(
                    "tarn_peer_links_total",
                    "Authenticated node-to-node links established",
                )
                .expect("valid"),
            ),
            forwarded: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "tarn_forwarded_total",
                        "Requests forwarded to the responsible node, by type",
                    ),
                    &["type"],
                )
                .expect("valid"),
            ),
            replica_writes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "tarn_replica_writes_total",
                        "Replica writes by outcome (failed copies wait for repair)",
                    ),
                    &["outcome"],
                )
                .expect("valid"),
            ),
            repair_rounds: reg(
                &r,
                IntCounter::new("tarn_repair_rounds_total", "Anti-entropy repair rounds")
                    .expect("valid"),
            ),
            repair_values: reg(
                &r,
                IntCounter::new(
                    "tarn_repair_values_sent_total",
                    "Values sent by repair and handoff",
                )
                .expect("valid"),
            ),
            repair_last_success: reg(
                &r,
                Gauge::new(
                    "tarn_repair_last_success_timestamp_seconds",
                    "Unix time of the last completed repair round",
                )
                .expect("valid"),
            ),
            connections_open: reg(
                &r,
                IntGauge::new("tarn_connections_open", "Open client connections").expect("valid"),
            ),
            connections_total: reg(
                &r,
                IntCounter::new("tarn_connections_total", "Connections accepted").expect("valid"),
            ),
            connections_refused: reg(
                &r,
                IntCounter::new(
                    "tarn_connections_refused_total",
                    "Connections refused at max_connections",
                )
                .expect("valid"),
            ),
            rejected: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "tarn_rejected_total",
                        "Frames or connections rejected, by reason",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            records: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "tarn_store_records",
                        "Values accepted per live epoch, by epoch age",
                    ),
                    &["epoch_age"],
                )
                .expect("valid"),
            ),
            bytes: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "tarn_store_bytes",
                        "Value bytes accepted per live epoch, by epoch age",
                    ),
                    &["epoch_age"],
                )
                .expect("valid"),
            ),
            gc_runs: reg(
                &r,
                IntCounter::new("tarn_gc_runs_total", "Garbage collection runs").expect("valid"),
            ),
            gc_epochs_dropped: reg(
                &r,
                IntCounter::new("tarn_gc_epochs_dropped_total", "Epoch partitions dropped")
                    .expect("valid"),
            ),
            gc_seconds: reg(
                &r,
                Histogram::with_opts(HistogramOpts::new(
                    "tarn_gc_duration_seconds",
                    "Garbage collection duration",
                ))
                .expect("valid"),
            ),
            gc_last_success: reg(
                &r,
                Gauge::new(
                    "tarn_gc_last_success_timestamp_seconds",
                    "Unix time of the last successful GC",
                )
                .expect("valid"),
            ),
            wal_syncs: reg(
                &r,
                IntCounter::new("tarn_wal_syncs_total", "Periodic WAL syncs").expect("valid"),
            ),
            time_offset_seconds: reg(
                &r,
                Gauge::new(
                    "tarn_time_offset_seconds",
                    "Disciplined clock minus system clock",
                )
                .expect("valid"),
            ),
            time_uncertainty_seconds: reg(
                &r,
                Gauge::new(
                    "tarn_time_uncertainty_seconds",
                    "Estimated error of the disciplined clock",
                )
                .expect("valid"),
            ),
            ntp_servers_reachable: reg(
                &r,
                IntGauge::new(
                    "tarn_ntp_servers_reachable",
                    "Time servers that answered the last poll",
                )
                .expect("valid"),
            ),
            ntp_synced: reg(
                &r,
                IntGauge::new(
                    "tarn_ntp_synced",
                    "1 when time servers discipline the clock",
                )
                .expect("valid"),
            ),
            epoch: reg(
                &r,
                IntGauge::new("tarn_epoch", "The node's current epoch").expect("valid"),
            ),
            epoch_length_seconds: reg(
                &r,
                IntGauge::new("tarn_epoch_length_seconds", "The network's epoch length")
                    .expect("valid"),
            ),
            data_dir_free_bytes: reg(
                &r,
                IntGauge::new(
                    "tarn_data_dir_free_bytes",
                    "Free bytes on the data directory's filesystem",
                )
                .expect("valid"),
            ),
            data_dir_capacity_bytes: reg(
                &r,
                IntGauge::new(
                    "tarn_data_dir_capacity_bytes",
                    "Size of the data directory's filesystem",
                )
                .expect("valid"),
            ),
            start_time_seconds: reg(
                &r,
                Gauge::new(
                    "tarn_start_time_seconds",
                    "Process start time, Unix seconds",
                )
                .expect("valid"),
            ),
            engine: {
                use tarn_store::EngineStat as S;
                [
                    (
                        S::MemtableBytes,
                        "tarn_rocksdb_memtable_bytes",
                        "Bytes in RocksDB memtables",
                    ),
                    (
                        S::SstBytes,
                        "tarn_rocksdb_sst_bytes",
                        "Bytes in RocksDB SST files",
                    ),
                    (
                        S::WalBytes,
                        "tarn_rocksdb_wal_bytes",
                        "Bytes of RocksDB write-ahead log on disk",
                    ),
                    (
                        S::PendingCompactionBytes,
                        "tarn_rocksdb_pending_compaction_bytes",
                        "Bytes RocksDB compaction still has to rewrite",
                    ),
                    (
                        S::RunningCompactions,
                        "tarn_rocksdb_running_compactions",
                        "RocksDB compactions running",
                    ),
                    (
                        S::MaxSortedRuns,
                        "tarn_rocksdb_max_sorted_runs",
                        "Most sorted runs (level-0 files and non-empty levels) in one epoch partition: compaction starts at 16, writes slow at 48, stop at 64",
                    ),
                    (
                        S::WriteStopped,
                        "tarn_rocksdb_write_stopped",
                        "1 while RocksDB stops writes (stall)",
                    ),
                    (
                        S::DelayedWriteRate,
                        "tarn_rocksdb_delayed_write_rate_bytes",
                        "RocksDB delayed-write rate, bytes/s (0: not delaying)",
                    ),
                    (
                        S::IndexBytes,
                        "tarn_index_bytes",
                        "Bytes held by the in-memory index of live epochs (reads served from memory)",
                    ),
                    (
                        S::JournalBytes,
                        "tarn_journal_bytes",
                        "Bytes in the live epochs' logs (inserts of epochs the index holds; read back into it at the next start)",
                    ),
                    (
                        S::OverflowedEpochs,
                        "tarn_index_overflowed_epochs",
                        "Epochs that outgrew the index and wait for their logs to be moved into their partitions",
                    ),
                ]
                .into_iter()
                .map(|(stat, name, help)| {
                    (stat, reg(&r, IntGauge::new(name, help).expect("valid")))
                })
                .collect()
            },
            registry: r,
        };
        // Every known label combination exists from the start, so dashboards and alerts see a
        // zero rather than no series at all.
        for reason in [
            "unsupported_version",
            "frame_too_large",
            "unknown_kind",
            "invalid_body",
            "hello_required",
            "network_mismatch",
            "epoch_len_mismatch",
            "overloaded",
            "timeout",
            "encryption_required",
            "handshake_failed",
        ] {
            m.rejected.with_label_values(&[reason]);
        }
        for (ty, outcomes) in [
            (
                "insert",
                &[
                    "ok",
                    "too_large",
                    "over_quota",
                    "epoch_out_of_window",
                    "internal",
                    "unavailable",
                ][..],
            ),
            (
                "retrieve",
                &["found", "not_found", "internal", "unavailable"][..],
            ),
            ("time_sync", &["ok"][..]),
            ("node_list", &["ok"][..]),
            ("status", &["ok"][..]),
            ("ring_info", &["ok"][..]),
            ("lookup", &["ok"][..]),
            ("hello", &["ok"][..]),
        ] {
            for o in outcomes {
                m.requests.with_label_values(&[ty, o]);
            }
        }
        for reason in PEER_REFUSALS {
            m.peers_refused.with_label_values(&[reason]);
        }
        for ty in ["insert", "retrieve"] {
            m.forwarded.with_label_values(&[ty]);
        }
        for o in ["ok", "failed"] {
            m.replica_writes.with_label_values(&[o]);
        }
        for op in ["put_batch", "get", "wal_sync", "journal_apply"] {
            m.storage_seconds.with_label_values(&[op]);
        }
        let info = IntGaugeVec::new(
            Opts::new("tarn_build_info", "Build information"),
            &["version"],
        )
        .expect("valid");
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m.registry.register(Box::new(info)).expect("unique");
        Arc::new(m)
    }

    /// Updates the gauges that are read from the store and clock, then renders the text format.
    pub fn render(
        &self,
        store: &dyn Store,
        clock: &Clock,
        epoch_secs: u64,
        data_dir: &std::path::Path,
    ) -> String {
        if let Some((free, cap)) = fs_space(data_dir) {
            self.data_dir_free_bytes.set(free as i64);
            self.data_dir_capacity_bytes.set(cap as i64);
        }
        let now = clock.now();
        let now_epoch = Epoch::at_unix_ns(now.unix_ns, epoch_secs);
        self.epoch_length_seconds.set(epoch_secs as i64);
        self.epoch.set(now_epoch.0 as i64);
        self.time_offset_seconds.set(clock.offset_ns() as f64 / 1e9);
        self.time_uncertainty_seconds
            .set(now.uncertainty_ns as f64 / 1e9);
        self.ntp_synced.set(now.synced as i64);
        self.ntp_servers_reachable
            .set(clock.reachable_servers() as i64);
        let engine = store.engine_stats();
        for (stat, gauge) in &self.engine {
            if let Some((_, v)) = engine.iter().find(|(s, _)| s == stat) {
                gauge.set(*v as i64);
            }
        }
        self.records.reset();
        self.bytes.reset();
        for e in store.stats().epochs {
            let age = (now_epoch.0 as i64 - e.epoch.0 as i64).to_string();
            self.records
                .with_label_values(&[&age])
                .add(e.records as i64);
            self.bytes.with_label_values(&[&age]).add(e.bytes as i64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

/// Serves `/metrics` until the server is unblocked (one thread; scrapes are rare).
pub fn serve_shared(server: &tiny_http::Server, shared: Arc<crate::server::Shared>) {
    for req in server.incoming_requests() {
        let resp = if req.url() == "/metrics" {
            let body = shared.metrics.render(
                shared.store.as_ref(),
                &shared.clock,
                shared.cfg.epoch_secs,
                &shared.cfg.data_dir,
            );
            tiny_http::Response::from_string(body).with_header(
                "Content-Type: text/plain; version=0.0.4"
                    .parse::<tiny_http::Header>()
                    .expect("valid header"),
            )
        } else {
            tiny_http::Response::from_string("tarnd: see /metrics\n").with_status_code(404)
        };
        let _ = req.respond(resp);
    }
}
