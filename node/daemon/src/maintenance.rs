//! Background work off the executors: epoch GC with partition preparation, the periodic WAL
//! sync, and moving logs into their partitions (epochs that outgrow the index, logs of keys
//! rewritten many times). Each runs on a thread of its own so a slow drop never delays a sync.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tarn_proto::Epoch;
use tarn_store::Store;

use crate::server::Shared;
use crate::timesync::system_ns;

/// One GC pass at epoch `now`: drop every expired partition, then create the partitions the
/// next writes will need (`now ..= now + 2`). Returns the epochs dropped.
pub fn gc_pass(shared: &Shared, now: Epoch) -> Result<Vec<Epoch>, tarn_store::StoreError> {
    let m = &shared.metrics;
    let started = Instant::now();
    let oldest = Epoch::oldest_live(now, shared.cfg.grace_epochs);
    let report = shared.store.drop_epochs_before(oldest)?;
    shared.store.prepare_epochs(now, Epoch(now.0 + 2))?;
    m.gc_runs.inc();
    m.gc_epochs_dropped.inc_by(report.dropped.len() as u64);
    m.gc_seconds.observe(started.elapsed().as_secs_f64());
    m.gc_last_success.set(system_ns() as f64 / 1e9);
    if !report.dropped.is_empty() {
        tracing::info!(
            dropped = report.dropped.len(),
            records = report.records,
            oldest_live = oldest.0,
            "expired epochs dropped"
        );
    }
    Ok(report.dropped)
}

/// Runs GC at every epoch boundary (checked every 50 ms against the disciplined clock) until
/// shutdown.
pub fn run_gc(shared: Arc<Shared>) {
    let mut last: Option<Epoch> = None;
    while !shared.shutdown.load(Ordering::Relaxed) {
        let now = Epoch::at_unix_ns(shared.clock.now().unix_ns, shared.cfg.epoch_secs);
        if last != Some(now) {
            match gc_pass(&shared, now) {
                Ok(_) => last = Some(now),
                Err(e) => tracing::error!(error = %e, "garbage collection failed; retrying"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Syncs the WAL every `interval` until shutdown (the `periodic` WAL policy).
pub fn run_wal_sync(shared: Arc<Shared>, interval: Duration) {
    let mut next = Instant::now() + interval;
    while !shared.shutdown.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next {
            let t = Instant::now();
            match shared.store.sync() {
                Ok(()) => {
                    shared.metrics.wal_syncs.inc();
                    shared
                        .metrics
                        .storage_seconds
                        .with_label_values(&["wal_sync"])
                        .observe(t.elapsed().as_secs_f64());
                }
                Err(e) => tracing::error!(error = %e, "WAL sync failed"),
            }
            next = now + interval;
        }
        std::thread::sleep(
            (next.saturating_duration_since(Instant::now())).min(Duration::from_millis(50)),
        );
    }
}

/// How often [`apply_journal_while`] looks for epochs that overflowed the index (until their
/// logs are moved into their partitions, the index holds them over its budget) and for logs
/// to trim.
pub const JOURNAL_EVERY: Duration = Duration::from_millis(50);
/// How long [`apply_journal_while`] waits after a failed move before it tries again.
pub const JOURNAL_RETRY: Duration = Duration::from_secs(5);

/// Calls `store`'s [`Store::apply_journal`] every [`JOURNAL_EVERY`] while `running()` holds,
/// then once more; `report` hears each call's outcome and how long it took.
pub fn apply_journal_while(
    store: &dyn Store,
    running: impl Fn() -> bool,
    mut report: impl FnMut(Result<u64, tarn_store::StoreError>, Duration),
) {
    // Returns whether the call succeeded.
    let mut apply = || {
        let t = Instant::now();
        let r = store.apply_journal();
        let ok = r.is_ok();
        report(r, t.elapsed());
        ok
    };
    // After a failure, the next try waits a while (the error is reported each time).
    let mut next = Instant::now();
    while running() {
        std::thread::sleep(JOURNAL_EVERY);
        if Instant::now() >= next && !apply() {
            next = Instant::now() + JOURNAL_RETRY;
        }
    }
    apply();
}

/// Moves the logs of epochs that overflow the index into their partitions
/// ([`apply_journal_while`]) until shutdown, then once more.
pub fn run_journal(shared: Arc<Shared>) {
    apply_journal_while(
        &*shared.store,
        || !shared.shutdown.load(Ordering::Relaxed),
        |outcome, took| match outcome {
            Ok(0) => {}
            Ok(_) => shared
                .metrics
                .storage_seconds
                .with_label_values(&["journal_apply"])
                .observe(took.as_secs_f64()),
            Err(e) => {
                tracing::error!(error = %e, "moving a log into its partition failed (an epoch over the index, or a log trim); retrying")
            }
        },
    );
}
