//! The RocksDB [`Store`]: one column family per epoch, values merged by a merge operator.
//!
//! Design notes (the traps the foundation issue lists):
//! - **Partition per epoch.** Column family `e-<epoch>`; expiring an epoch is `drop_cf`, whose
//!   cost does not grow with the records in it.
//! - **Blind writes.** An insert is a `merge` of a one-entry value set; the merge operator
//!   ([`crate::valueset::merge`]) enforces `max_values_per_key` and collapses duplicates when
//!   RocksDB folds operands on read or compaction.
//! - **Multi-threaded column families.** The DB is opened in RocksDB's multi-threaded mode so
//!   partitions are created and dropped while other threads read and write; the node's
//!   maintenance owner creates the next epochs' partitions ahead of time
//!   ([`Store::prepare_epochs`]). Reopening lists the existing partitions.
//! - **WAL.** `max_total_wal_size` is bounded so small old partitions cannot pin the shared WAL.
//!   The [`WalPolicy`] decides whether a write waits for fsync; the periodic policy leaves
//!   fsync to [`Store::sync`], called off the request path.
//! - **Logs.** A write batch's values for an epoch the index answers for (every value of
//!   the epoch in memory, see [`crate::index`]) are one `put` of a log entry in that epoch's
//!   *log* — column family `j-<epoch>`, key = a sequence number — in the same atomic, logged
//!   RocksDB batch as any direct writes: one sequential append instead of one random memtable
//!   (skiplist) insert per value. The log is never sorted into the partition while the index
//!   holds the epoch: the index serves its reads and scans, RocksDB's WAL and the log's flushed
//!   files make it durable, and the epoch's expiry drops the log with the partition. So an
//!   insert is written twice (WAL, then one flush of the log's memtable, sequential and never
//!   compacted: its keys only grow) where moving it into the partition cost an SST build, a
//!   merge-operator compaction rewriting it a few times, and the journal's delete (BENCHMARKS.md,
//!   tenth round) — the same shape as Redis's memory plus append-only file. Opening the store
//!   replays each log into the index after the partition's sets (a sequential read, as fast as
//!   the partition scan) and keeps it; later entries take keys after its last. A log becomes
//!   keyed partition data only when its epoch does not fit in the index: at open (then, and
//!   when there is no index, it is sorted into one SST file per 16 MiB, ingested and dropped
//!   before anything reads), or when the epoch overflows the index while the node runs:
//!   [`Store::apply_journal`] (the node calls it every 50 ms from a thread of its own) waits for
//!   the batches that were logging it, moves its log into the partition, drops the log and
//!   retires the epoch from the index; writes to it went straight to the partition from the
//!   overflow on. A log that grows past twice its epoch's indexed bytes plus some slack (keys
//!   rewritten many times: each write is logged, the index keeps a key's newest values only)
//!   has its older part — every key below the next one, once the write gate is free — moved into
//!   the partition, where compaction folds the rewrites, and range-deleted from the log. A crash
//!   at any point leaves every value in a log, in its partition, or in both (merging twice is
//!   harmless: the merge is idempotent). A store written by a build with
//!   the single `journal` column family has it applied and dropped at open.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, MultiThreaded, Options, WriteBatch,
    WriteOptions,
};
use tarn_proto::{Epoch, Id, Key};

use crate::index::{LiveIndex, Lookup};
use crate::journal;
use crate::store::{
    ring_ranges, DropReport, EngineStat, Ledger, Limits, PutItem, ScanVisitor, Store, StoreStats,
};
use crate::valueset::{self, Values};
use crate::{EpochStats, StoreError};

type Db = rocksdb::DBWithThreadMode<MultiThreaded>;

const CF_PREFIX: &str = "e-";
const MERGE_NAME: &str = "tarn-valueset-v1";
const LOG_PREFIX: &str = "j-";
/// The single journal of earlier builds (applied and dropped at open).
const LEGACY_JOURNAL_CF: &str = "journal";
/// Levels of a partition (RocksDB's default): with universal compaction each non-empty level
/// below level 0 holds one sorted run.
const PARTITION_LEVELS: i32 = 7;
/// What an epoch's log may hold beyond twice the epoch's indexed bytes before its older part is
/// moved into the partition (at most; a quarter of the index budget when that is less).
const LOG_SLACK: u64 = 64 << 20;
/// Log bytes moved into partitions per round of SST files.
const APPLY_CHUNK: usize = 16 << 20;

/// Where SST files for ingestion are built (under the data directory; emptied at open).
const INGEST_DIR: &str = "ingest";

/// When a write is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalPolicy {
    /// No write-ahead log: fastest, and every record since the last memtable flush is lost on a
    /// crash. Only for benchmarks' upper bounds.
    Disabled,
    /// The WAL is written (survives a process crash or `kill -9`) but never synced by tarn
    /// (a power loss may lose what the OS had not written back).
    NoSync,
    /// The WAL is written for every batch and synced by [`Store::sync`] on a timer (default:
    /// every second, like Redis `appendfsync everysec`): a power loss loses at most one interval.
    Periodic,
    /// Every batch is synced before it is acknowledged: nothing acknowledged is lost even on
    /// power loss; each group commit pays one fsync.
    EveryWrite,
}

/// Options of the RocksDB store.
#[derive(Clone, Debug)]
pub struct RocksOptions {
    /// Record limits.
    pub limits: Limits,
    /// Durability policy.
    pub wal: WalPolicy,
    /// Block cache shared by all partitions.
    pub block_cache_bytes: usize,
    /// Memtable budget shared by all partitions.
    pub write_buffer_bytes: usize,
    /// Bound on the total WAL size (forces flushes of old partitions that would pin it).
    pub max_total_wal_bytes: u64,
    /// Memory for the index of live epochs that serves reads (0: every read goes to RocksDB).
    pub index_bytes: u64,
    /// Whether inserts to epochs the index answers for go to the epoch's log (see the module
    /// notes) instead of straight into its partition.
    pub journal: bool,
}

impl Default for RocksOptions {
    fn default() -> RocksOptions {
        RocksOptions {
            limits: Limits::default(),
            wal: WalPolicy::Periodic,
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 128 << 20,
            max_total_wal_bytes: 256 << 20,
            index_bytes: 256 << 20,
            journal: true,
        }
    }
}

/// The RocksDB-backed store.
pub struct RocksStore {
    db: Db,
    path: PathBuf,
    opts: RocksOptions,
    cf_opts: Options,
    /// Options of the epochs' logs.
    log_opts: Options,
    write_opts: WriteOptions,
    ledger: Mutex<Ledger>,
    /// The partitions that exist. Its lock also serialises creating and dropping them (the slow
    /// path); reads never take it, writes only when a partition is missing.
    partitions: Mutex<BTreeSet<Epoch>>,
    /// Writers hold it shared from admission until their batch is written and folded into the
    /// index; dropping partitions and logs holds it exclusively (a batch naming a column family
    /// dropped under it would make RocksDB record a fatal background error and refuse every
    /// later write), and so does retiring an epoch from the index. Taking it exclusively once
    /// and letting go is the barrier after which no batch still logs an overflowed epoch.
    write_gate: RwLock<()>,
    /// Live epochs in memory: reads are served from here when it is authoritative.
    index: LiveIndex,
    /// The next log entry's key (unique across the logs; each log's keys only grow).
    log_seq: AtomicU64,
    /// Serialises retiring overflowed epochs and trimming logs.
    apply_lock: Mutex<()>,
    /// Names the SST files built for ingestion.
    ingest_seq: AtomicU64,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn cf_name(e: Epoch) -> String {
    format!("{CF_PREFIX}{:020}", e.0)
}

fn parse_cf_name(name: &str) -> Option<Epoch> {
    name.strip_prefix(CF_PREFIX)?.parse().ok().map(Epoch)
}

/// Whether files in `dir` can be opened with `O_DIRECT`.
fn direct_io_works(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".direct-io-probe");
    // A probe a crash left behind; a new file, never followed through a link.
    let _ = std::fs::remove_file(&probe);
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn log_name(e: Epoch) -> String {
    format!("{LOG_PREFIX}{:020}", e.0)
}

fn parse_log_name(name: &str) -> Option<Epoch> {
    name.strip_prefix(LOG_PREFIX)?.parse().ok().map(Epoch)
}

/// The sequence number a log entry is stored under; any other key is a corrupt log.
fn log_key(op: &'static str, k: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(k)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::engine(op, "malformed log key"))
}

impl RocksStore {
    /// Opens (or creates) the store at `path`, listing and reopening every existing partition
    /// and log, recounting the figures and filling the index from the partitions and the logs
    /// (scans whose cost grows with the data held; they run once at start-up). Logs the index
    /// cannot hold are moved into their partitions first.
    pub fn open(path: &Path, opts: RocksOptions) -> Result<RocksStore, StoreError> {
        let cache = Cache::new_lru_cache(opts.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        table.set_block_size(4096);

        let max_values = opts.limits.max_values_per_key as usize;
        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table);
        // Values are sealed ciphertext: compression would only burn CPU.
        cf_opts.set_compression_type(rocksdb::DBCompressionType::None);
        cf_opts.set_merge_operator_associative(MERGE_NAME, move |_key, existing, operands| {
            Some(valueset::merge(
                existing.into_iter().chain(operands.iter()),
                max_values,
            ))
        });
        cf_opts.set_write_buffer_size(16 << 20);
        // Values arrive as ingested files (a log moved in: at open, or when its epoch outgrows
        // the index) or as direct writes, with keys (hashes) spanning the whole key space, and
        // an epoch only grows until it is dropped whole. (In the ninth round every indexed
        // insert came this way, one file a second: BENCHMARKS.md.) Leveled
        // compaction rewrote the partition's entire bottom level for every 16 files — work
        // that grows with the square of the epoch's size —, where universal compaction merges
        // sorted runs of similar size: each value is rewritten about log(runs) times (90 s at
        // 50 x 16, 50 % inserts: 5.3 GB of compaction output against 11.9 GB; BENCHMARKS.md,
        // ninth round). Reads of those epochs come from the index, so the 16 sorted runs it
        // lets accumulate cost little; the triggers below count sorted runs. A full merge
        // (when the newer runs outgrow the oldest) needs free disk about the partition's size
        // while it runs, and RocksDB estimates no pending compaction bytes for this style.
        cf_opts.set_compaction_style(rocksdb::DBCompactionStyle::Universal);
        cf_opts.set_num_levels(PARTITION_LEVELS);
        cf_opts.set_level_zero_file_num_compaction_trigger(16);
        cf_opts.set_level_zero_slowdown_writes_trigger(48);
        cf_opts.set_level_zero_stop_writes_trigger(64);

        let mut db_opts = cf_opts.clone();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_total_wal_size(opts.max_total_wal_bytes);
        db_opts.set_db_write_buffer_size(opts.write_buffer_bytes);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);
        // Flushes (the logs' memtables, written once; read back at open, or when the log is
        // moved into its partition) and compactions bypass the page cache: no page-cache pages
        // to allocate and copy into on the server's CPU (at 50 x 16, 50 % inserts: 12 % more
        // operations, 9 % less CPU per operation; BENCHMARKS.md, tenth round). Only where the
        // filesystem takes O_DIRECT (tmpfs before Linux 6.6 does not).
        std::fs::create_dir_all(path)
            .map_err(|e| StoreError::engine("open", format!("{}: {e}", path.display())))?;
        db_opts.set_use_direct_io_for_flush_and_compaction(direct_io_works(path));

        let existing = if path.join("CURRENT").exists() {
            Db::list_cf(&db_opts, path).map_err(|e| StoreError::engine("list partitions", e))?
        } else {
            Vec::new()
        };
        let mut log_opts = Options::default();
        // A log's keys only grow and it is read whole, at open or when its epoch overflows the
        // index: never compacted (that would rewrite it for nothing; it goes with its epoch),
        // so the level-0 triggers that would slow or stop writes are out of reach too.
        log_opts.set_write_buffer_size(64 << 20);
        log_opts.set_compression_type(rocksdb::DBCompressionType::None);
        log_opts.set_disable_auto_compactions(true);
        log_opts.set_level_zero_file_num_compaction_trigger(1 << 30);
        log_opts.set_level_zero_slowdown_writes_trigger(1 << 30);
        log_opts.set_level_zero_stop_writes_trigger(1 << 30);
        let descriptors = existing
            .iter()
            .filter_map(|n| {
                if parse_cf_name(n).is_some() {
                    Some(ColumnFamilyDescriptor::new(n, cf_opts.clone()))
                } else if n.starts_with(LOG_PREFIX) || n == LEGACY_JOURNAL_CF {
                    Some(ColumnFamilyDescriptor::new(n, log_opts.clone()))
                } else {
                    None
                }
            })
            .collect::<Vec<_>>();
        let db = Db::open_cf_descriptors(&db_opts, path, descriptors)
            .map_err(|e| StoreError::engine("open", e))?;

        let mut write_opts = WriteOptions::default();
        match opts.wal {
            WalPolicy::Disabled => write_opts.disable_wal(true),
            WalPolicy::NoSync | WalPolicy::Periodic => write_opts.set_sync(false),
            WalPolicy::EveryWrite => write_opts.set_sync(true),
        }

        let opts_index_bytes = opts.index_bytes;
        let store = RocksStore {
            db,
            path: path.to_owned(),
            opts,
            cf_opts,
            log_opts,
            write_opts,
            ledger: Mutex::new(Ledger::default()),
            write_gate: RwLock::new(()),
            index: LiveIndex::new(opts_index_bytes),
            partitions: Mutex::new(existing.iter().filter_map(|n| parse_cf_name(n)).collect()),
            log_seq: AtomicU64::new(0),
            apply_lock: Mutex::new(()),
            ingest_seq: AtomicU64::new(0),
        };
        // Files a crash left half-built are not in the database: start the directory afresh.
        let ingest = store.path.join(INGEST_DIR);
        let _ = std::fs::remove_dir_all(&ingest);
        std::fs::create_dir_all(&ingest)
            .map_err(|e| StoreError::engine("open", format!("{}: {e}", ingest.display())))?;
        // A log is kept, and replayed into the index by the recount, when there is an index to
        // answer for its epoch; otherwise (no index, the epoch's partition is gone — expired —,
        // or the single journal of earlier builds) it goes into its partitions now, before
        // anything reads them.
        let parts = store.list_epochs();
        for name in existing
            .iter()
            .filter(|n| n.starts_with(LOG_PREFIX) || *n == LEGACY_JOURNAL_CF)
        {
            let kept = store.opts.index_bytes > 0
                && parse_log_name(name).is_some_and(|e| parts.contains(&e));
            if !kept {
                store.move_log(name)?;
            }
        }
        store.recount()?;
        Ok(store)
    }

    /// Moves every entry of the log (or legacy journal) `name` — those under keys below `upto`,
    /// if given — into its partitions, in SST files of [`APPLY_CHUNK`] bytes of entries; the log
    /// itself stays. Returns the values and the entry bytes moved. A record of another epoch in
    /// an epoch's log is an error (a corrupt or foreign database).
    fn apply_log(&self, name: &str, upto: Option<u64>) -> Result<(u64, u64), StoreError> {
        let Some(log) = self.db.cf_handle(name) else {
            return Ok((0, 0));
        };
        let mut chunk = Vec::new();
        let mut bytes = 0usize;
        let (mut moved, mut total) = (0u64, 0u64);
        for item in self.read_log(&log, upto) {
            let (k, entry) = item.map_err(|e| StoreError::engine("apply log", e))?;
            log_key("apply log", &k)?;
            bytes += entry.len();
            total += entry.len() as u64;
            chunk.push(entry);
            if bytes >= APPLY_CHUNK {
                moved += self.apply_entries(&chunk, parse_log_name(name))?;
                chunk.clear();
                bytes = 0;
            }
        }
        moved += self.apply_entries(&chunk, parse_log_name(name))?;
        Ok((moved, total))
    }

    /// Moves the whole log (or legacy journal) `name` into its partitions and drops it, when
    /// nothing else may touch it: at open. Returns the values moved.
    fn move_log(&self, name: &str) -> Result<u64, StoreError> {
        let (moved, _) = self.apply_log(name, None)?;
        self.db
            .drop_cf(name)
            .map_err(|e| StoreError::engine("open", e))?;
        Ok(moved)
    }

    /// A log's entries in key order (those under keys below `upto`, if given), read once from
    /// start to end: its blocks are not kept in the cache.
    fn read_log<'a>(
        &'a self,
        log: &Arc<rocksdb::BoundColumnFamily<'a>>,
        upto: Option<u64>,
    ) -> rocksdb::DBIteratorWithThreadMode<'a, Db> {
        let mut read = rocksdb::ReadOptions::default();
        read.fill_cache(false);
        if let Some(upto) = upto {
            read.set_iterate_upper_bound(upto.to_be_bytes());
        }
        self.db
            .iterator_cf_opt(log, read, rocksdb::IteratorMode::Start)
    }

    /// Moves the older part of `epoch`'s log into its partition and deletes it from the log,
    /// while the index keeps answering for the epoch and writers go on logging (see
    /// [`LiveIndex::oversized_logs`](crate::index)). Returns the values moved.
    fn trim_log(&self, epoch: Epoch) -> Result<u64, StoreError> {
        let name = log_name(epoch);
        // Writers take a key and write its entry while they hold the gate: once it is free,
        // every key below the next one is written.
        let upto = {
            let _gate = self.write_gate.write().unwrap_or_else(|p| p.into_inner());
            self.log_seq.load(Ordering::Relaxed)
        };
        let _gate = self.write_gate.read().unwrap_or_else(|p| p.into_inner());
        let (moved, bytes) = self.apply_log(&name, Some(upto))?;
        let Some(log) = self.db.cf_handle(&name) else {
            return Ok(moved);
        };
        let (from, to) = (0u64.to_be_bytes(), upto.to_be_bytes());
        // Logged: a crash after it finds the values in the partition (and replays none of the
        // deleted entries).
        self.db
            .delete_range_cf(&log, from, to)
            .map_err(|e| StoreError::engine("trim log", e))?;
        // The log no longer holds them, whatever happens to the space below.
        self.index.trimmed(epoch, bytes);
        // The space: the flush drops the covered entries from the memtable; the log's files
        // (all in level 0: it is never compacted otherwise) are rewritten without them by one
        // manual compaction of the trimmed range — which also rewrites the newer entries those
        // files hold, once per trim.
        self.db
            .flush_cf(&log)
            .map_err(|e| StoreError::engine("trim log", e))?;
        self.db.compact_range_cf(&log, Some(from), Some(to));
        Ok(moved)
    }

    /// Moves the log of `epoch` (overflowed; no batch logs it any more) into its partition,
    /// drops the log and retires the epoch from the index. Returns the values moved.
    fn retire_epoch(&self, epoch: Epoch) -> Result<u64, StoreError> {
        let name = log_name(epoch);
        let moved = {
            // The bulk while writers go on (writing the epoch's partition directly).
            let _gate = self.write_gate.read().unwrap_or_else(|p| p.into_inner());
            self.apply_log(&name, None)?.0
        };
        // Exclusive: no batch holds a handle of the log being dropped, and no merge into the
        // index runs while the epoch is retired.
        let _gate = self.write_gate.write().unwrap_or_else(|p| p.into_inner());
        if self.db.cf_handle(&name).is_some() {
            self.db
                .drop_cf(&name)
                .map_err(|e| StoreError::engine("retire", e))?;
        }
        self.index.retire(epoch);
        Ok(moved)
    }

    /// Writes the values of `entries` to their partitions: one SST file of merges, sorted by
    /// key, ingested per partition. Values of partitions that are gone (expired) are dropped.
    fn apply_entries(
        &self,
        entries: &[Box<[u8]>],
        epoch: Option<Epoch>,
    ) -> Result<u64, StoreError> {
        let mut records = Vec::with_capacity(
            entries.iter().map(|e| e.len()).sum::<usize>() / journal::record_len(256),
        );
        for entry in entries {
            for r in journal::records(entry) {
                let r = r.map_err(|e| StoreError::engine("apply log", e))?;
                if epoch.is_some_and(|e| e != r.0) {
                    return Err(StoreError::engine(
                        "apply log",
                        "log entry of another epoch",
                    ));
                }
                records.push(r);
            }
        }
        // Sorted per partition, each partition's values become one SST file, ingested whole:
        // no memtable insert, no second trip through the WAL, nothing to flush later.
        records.sort_unstable_by(journal::record_order);
        let max_values = self.opts.limits.max_values_per_key as usize;
        let mut moved = 0u64;
        let mut at = 0;
        while at < records.len() {
            let epoch = records[at].0;
            let end = at + records[at..].partition_point(|r| r.0 == epoch);
            let group = &records[at..end];
            at = end;
            let Some(cf) = self.db.cf_handle(&cf_name(epoch)) else {
                // Expired meanwhile: its values went with it.
                continue;
            };
            self.ingest_sorted(&cf, group, max_values)?;
            moved += group.len() as u64;
        }
        Ok(moved)
    }

    /// The log of `epoch` when the batch being written may log its values there: the journal
    /// is on and the index answers for the whole epoch. Created on first use; `None` (write
    /// the partition directly) when that fails. The caller holds `write_gate` shared.
    fn log_handle(&self, epoch: Epoch) -> Option<Arc<rocksdb::BoundColumnFamily<'_>>> {
        if !self.opts.journal || !self.index.journaled(epoch) {
            return None;
        }
        let name = log_name(epoch);
        if let Some(log) = self.db.cf_handle(&name) {
            return Some(log);
        }
        let parts = self.partitions();
        if !parts.contains(&epoch) {
            return None;
        }
        if self.db.cf_handle(&name).is_none() {
            self.db.create_cf(&name, &self.log_opts).ok()?;
        }
        self.db.cf_handle(&name)
    }

    /// Writes one partition's records (sorted by key) as one SST file of merge operands and
    /// ingests it. The file is removed whatever happens — moved into the database, or left
    /// half-built by a failure (a full disk must not fill up further with one file a second).
    fn ingest_sorted(
        &self,
        cf: &Arc<rocksdb::BoundColumnFamily<'_>>,
        group: &[(Epoch, Key, &[u8])],
        max_values: usize,
    ) -> Result<(), StoreError> {
        let seq = self.ingest_seq.fetch_add(1, Ordering::Relaxed);
        let path = self.path.join(INGEST_DIR).join(format!("{seq:016x}.sst"));
        let built = (|| {
            let mut writer = rocksdb::SstFileWriter::create(&self.cf_opts);
            writer.open(&path)?;
            let mut k = 0;
            while k < group.len() {
                let key = group[k].1;
                let same = group[k..].partition_point(|r| r.1 == key);
                if same == 1 {
                    writer.merge(key.0, group[k].2)?;
                } else {
                    // One entry per key in a file: the key's operands merged first.
                    let merged =
                        valueset::merge(group[k..k + same].iter().map(|r| r.2), max_values);
                    writer.merge(key.0, merged)?;
                }
                k += same;
            }
            writer.finish()?;
            let mut ingest = rocksdb::IngestExternalFileOptions::default();
            ingest.set_move_files(true);
            self.db
                .ingest_external_file_cf_opts(cf, &ingest, vec![&path])
        })();
        let _ = std::fs::remove_file(&path);
        built.map_err(|e| StoreError::engine("apply log", e))
    }

    /// Recounts every partition's figures and fills the index: each partition's sets, then its
    /// epoch's log on top (values that are in no partition). An epoch that does not fit in the
    /// index has its log moved into its partition and is retired at once.
    fn recount(&self) -> Result<(), StoreError> {
        // Lock order everywhere: partitions before ledger.
        let epochs = self.list_epochs();
        let mut ledger = self.ledger();
        let max_values = self.opts.limits.max_values_per_key as usize;
        let mut next_seq = 0u64;
        for epoch in epochs {
            let cf = self
                .db
                .cf_handle(&cf_name(epoch))
                .ok_or_else(|| StoreError::engine("open", "partition vanished"))?;
            let mut stats = EpochStats {
                epoch,
                ..Default::default()
            };
            // The same scans fill the index of live epochs, until the epoch overflows it.
            self.index.add_epoch(epoch);
            let mut overflowed = false;
            for item in self.db.iterator_cf(&cf, rocksdb::IteratorMode::Start) {
                let (k, v) = item.map_err(|e| StoreError::engine("open", e))?;
                if let (false, Ok(kb)) = (overflowed, <[u8; 32]>::try_from(&k[..])) {
                    overflowed = self.index.fill(epoch, Key(kb), &v);
                }
                let (n, b) = valueset::measure(&v);
                stats.records += n;
                stats.bytes += b;
            }
            let name = log_name(epoch);
            let mut logged = 0u64;
            if let Some(log) = self.db.cf_handle(&name) {
                for item in self.read_log(&log, None) {
                    let (k, entry) = item.map_err(|e| StoreError::engine("open", e))?;
                    logged += entry.len() as u64;
                    // Later entries of the log must not reuse a key.
                    next_seq = next_seq.max(log_key("open", &k)?.saturating_add(1));
                    for r in journal::records(&entry) {
                        let (e, key, operand) = r.map_err(|e| StoreError::engine("open", e))?;
                        if e != epoch {
                            return Err(StoreError::engine("open", "log entry of another epoch"));
                        }
                        if !overflowed {
                            overflowed = self.index.merge(epoch, key, operand, max_values);
                        }
                        let (n, b) = valueset::measure(operand);
                        stats.records += n;
                        stats.bytes += b;
                    }
                }
                if overflowed {
                    drop(log);
                    self.move_log(&name)?;
                }
            }
            if overflowed {
                // The partition holds every value of the epoch now: reads go there.
                self.index.retire(epoch);
            } else {
                self.index.logged(epoch, logged);
            }
            ledger.total_bytes += stats.bytes;
            ledger.epochs.insert(epoch, stats);
        }
        self.log_seq.store(next_seq, Ordering::Relaxed);
        if let Some(first) = ledger.epochs.keys().next().copied() {
            ledger.floor = first;
        }
        Ok(())
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // Ledger updates complete without panicking, so a poisoned lock is still consistent.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn partitions(&self) -> std::sync::MutexGuard<'_, BTreeSet<Epoch>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn list_epochs(&self) -> Vec<Epoch> {
        self.partitions().iter().copied().collect()
    }

    /// Creates the partition for `epoch` unless it exists or has expired.
    fn ensure_partition(&self, epoch: Epoch) -> Result<(), StoreError> {
        let name = cf_name(epoch);
        if self.db.cf_handle(&name).is_some() {
            return Ok(());
        }
        let mut parts = self.partitions();
        let floor = self.ledger().floor;
        if epoch < floor {
            return Err(StoreError::Expired {
                epoch,
                oldest_live: floor,
            });
        }
        if !parts.contains(&epoch) {
            // Indexed before the partition exists, so no write can reach it unindexed.
            self.index.add_epoch(epoch);
            self.db
                .create_cf(&name, &self.cf_opts)
                .map_err(|e| StoreError::engine("create partition", e))?;
            parts.insert(epoch);
        }
        Ok(())
    }

    /// The path the store lives at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An integer RocksDB property summed over the live epochs' partitions and logs (e.g.
    /// `rocksdb.total-sst-files-size`), for metrics.
    pub fn property_sum(&self, name: &str) -> u64 {
        self.sum_over(&self.partition_cfs(), name) + self.sum_over(&self.log_cfs(), name)
    }

    fn sum_over(&self, cfs: &[Arc<rocksdb::BoundColumnFamily<'_>>], name: &str) -> u64 {
        cfs.iter()
            .filter_map(|cf| self.db.property_int_value_cf(cf, name).ok().flatten())
            .sum()
    }

    /// The column families of the partitions that exist now.
    fn partition_cfs(&self) -> Vec<Arc<rocksdb::BoundColumnFamily<'_>>> {
        self.epoch_cfs(cf_name)
    }

    /// The logs that exist now.
    fn log_cfs(&self) -> Vec<Arc<rocksdb::BoundColumnFamily<'_>>> {
        self.epoch_cfs(log_name)
    }

    /// The column families named `name(epoch)` of the live epochs that exist now.
    fn epoch_cfs(&self, name: fn(Epoch) -> String) -> Vec<Arc<rocksdb::BoundColumnFamily<'_>>> {
        self.list_epochs()
            .iter()
            .filter_map(|e| self.db.cf_handle(&name(*e)))
            .collect()
    }

    /// Bytes in the epochs' logs (memtables and files): what the next open reads back into the
    /// index.
    fn log_bytes(&self) -> u64 {
        let logs = self.log_cfs();
        self.sum_over(&logs, "rocksdb.total-sst-files-size")
            + self.sum_over(&logs, "rocksdb.cur-size-all-mem-tables")
    }

    /// The most sorted runs in one partition: each level-0 file is one, and so is each other
    /// non-empty level (universal compaction's count, which its triggers use).
    fn max_sorted_runs(&self) -> u64 {
        self.partition_cfs()
            .iter()
            .map(|cf| {
                let files = |level: i32| {
                    self.db
                        .property_int_value_cf(cf, &format!("rocksdb.num-files-at-level{level}"))
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                };
                files(0) + (1..PARTITION_LEVELS).filter(|l| files(*l) > 0).count() as u64
            })
            .max()
            .unwrap_or(0)
    }
}

impl Store for RocksStore {
    fn put_batch(&self, items: &[PutItem<'_>]) -> Vec<Result<(), StoreError>> {
        let gate = self.write_gate.read().unwrap_or_else(|p| p.into_inner());
        let mut results = self.ledger().admit(items, &self.opts.limits);
        let mut batch = WriteBatch::default();
        // Every operand, back to back: written to the batch, then folded into the index.
        let mut operands = Vec::with_capacity(items.len() * (64 + 320));
        let mut written: Vec<(usize, std::ops::Range<usize>)> = Vec::with_capacity(items.len());
        // A batch nearly always spans one or two epochs: resolve each partition once, and its
        // log when the epoch's values are logged (they become one log entry).
        struct Slot<'a> {
            epoch: Epoch,
            partition: Result<Arc<rocksdb::BoundColumnFamily<'a>>, StoreError>,
            log: Option<(Arc<rocksdb::BoundColumnFamily<'a>>, Vec<u8>)>,
        }
        let mut slots: Vec<Slot<'_>> = Vec::with_capacity(2);
        for (i, it) in items.iter().enumerate() {
            if results[i].is_err() {
                continue;
            }
            let at = match slots.iter().position(|s| s.epoch == it.epoch) {
                Some(p) => p,
                None => {
                    let partition = self.ensure_partition(it.epoch).and_then(|()| {
                        self.db.cf_handle(&cf_name(it.epoch)).ok_or_else(|| {
                            // Dropped between creation and now: the epoch has just expired.
                            StoreError::Expired {
                                epoch: it.epoch,
                                oldest_live: self.ledger().floor,
                            }
                        })
                    });
                    let log = partition
                        .is_ok()
                        .then(|| self.log_handle(it.epoch))
                        .flatten()
                        .map(|log| (log, Vec::new()));
                    slots.push(Slot {
                        epoch: it.epoch,
                        partition,
                        log,
                    });
                    slots.len() - 1
                }
            };
            let Slot { partition, log, .. } = &mut slots[at];
            let cf = match partition {
                Ok(cf) => cf,
                Err(e) => {
                    results[i] = Err(e.clone());
                    self.ledger().release(items, std::iter::once(i));
                    continue;
                }
            };
            let at = operands.len();
            valueset::encode_one(it.stamp, it.value, &mut operands);
            match log {
                Some((_, entry)) => {
                    if entry.is_empty() {
                        // One allocation for the entry instead of doubling it along the batch.
                        entry.reserve(
                            items[i..]
                                .iter()
                                .filter(|x| x.epoch == it.epoch)
                                .map(|x| journal::record_len(x.value.len()))
                                .sum(),
                        );
                    }
                    journal::push(entry, it.epoch, &it.key, &operands[at..]);
                }
                None => batch.merge_cf(cf, it.key.0, &operands[at..]),
            }
            written.push((i, at..operands.len()));
        }
        if written.is_empty() {
            return results;
        }
        for (log, entry) in slots.iter().filter_map(|s| s.log.as_ref()) {
            if !entry.is_empty() {
                let seq = self.log_seq.fetch_add(1, Ordering::Relaxed);
                batch.put_cf(log, seq.to_be_bytes(), entry);
            }
        }
        if let Err(e) = self.db.write_opt(batch, &self.write_opts) {
            let err = StoreError::engine("put", e);
            self.ledger()
                .release(items, written.iter().map(|(i, _)| *i));
            for (i, _) in written {
                results[i] = Err(err.clone());
            }
            return results;
        }
        let max_values = self.opts.limits.max_values_per_key as usize;
        for (i, range) in written {
            let it = &items[i];
            self.index
                .merge(it.epoch, it.key, &operands[range], max_values);
        }
        for s in &slots {
            if let Some((_, entry)) = s.log.as_ref().filter(|(_, e)| !e.is_empty()) {
                self.index.logged(s.epoch, entry.len() as u64);
            }
        }
        // Merged before the gate is released: retiring an epoch that this batch pushed over the
        // index budget waits for it (see `apply_journal`).
        drop(gate);
        results
    }

    fn get_with(
        &self,
        epoch: Epoch,
        key: &Key,
        read: &mut dyn FnMut(Values<'_>),
    ) -> Result<(), StoreError> {
        let known = self
            .index
            .get(epoch, key, |set| Values::parse(set).map(&mut *read));
        match known {
            Lookup::Known(Some(done)) => return done.map_err(StoreError::from),
            Lookup::Known(None) => {}
            Lookup::Unknown => {
                if let Some(cf) = self.db.cf_handle(&cf_name(epoch)) {
                    let got = self.db.get_pinned_cf(&cf, key.0);
                    if let Some(bytes) = got.map_err(|e| StoreError::engine("get", e))? {
                        read(Values::parse(&bytes)?);
                        return Ok(());
                    }
                }
            }
        }
        // Nothing stored under the key.
        read(Values::default());
        Ok(())
    }

    fn prepare_epochs(&self, from: Epoch, to: Epoch) -> Result<(), StoreError> {
        let floor = self.ledger().floor;
        let mut e = from.max(floor);
        while e <= to {
            self.ensure_partition(e)?;
            self.ledger().epochs.entry(e).or_insert(EpochStats {
                epoch: e,
                ..Default::default()
            });
            e = e.next();
        }
        Ok(())
    }

    fn drop_epochs_before(&self, oldest_live: Epoch) -> Result<DropReport, StoreError> {
        let _gate = self.write_gate.write().unwrap_or_else(|p| p.into_inner());
        let mut parts = self.partitions();
        let records = self.ledger().expire_before(oldest_live);
        let mut dropped = Vec::new();
        let expired: Vec<Epoch> = parts.range(..oldest_live).copied().collect();
        // The index forgets the epochs whatever happens below: they are expired.
        self.index.drop_before(oldest_live);
        for epoch in expired {
            if self.db.cf_handle(&cf_name(epoch)).is_some() {
                self.db
                    .drop_cf(&cf_name(epoch))
                    .map_err(|e| StoreError::engine("drop", e))?;
            }
            parts.remove(&epoch);
            dropped.push(epoch);
            // After the partition: a log left by a crash (or a failure) between the two is
            // dropped at open, finding no partition, so the expired values stay gone.
            if self.db.cf_handle(&log_name(epoch)).is_some() {
                self.db
                    .drop_cf(&log_name(epoch))
                    .map_err(|e| StoreError::engine("drop", e))?;
            }
        }
        Ok(DropReport { dropped, records })
    }

    fn scan_range(
        &self,
        after: Id,
        upto: Id,
        visit: &mut ScanVisitor<'_>,
    ) -> Result<(), StoreError> {
        for epoch in self.list_epochs() {
            for range in ring_ranges(after, upto) {
                // An epoch the index answers for is read there: its newest values are in its
                // log, not in its partition.
                if let Some(found) = self.index.scan(epoch, &range) {
                    for (key, set) in found {
                        let values = valueset::decode(&set).map_err(StoreError::from)?;
                        if visit(epoch, key, &values) == ControlFlow::Break(()) {
                            return Ok(());
                        }
                    }
                    continue;
                }
                let Some(cf) = self.db.cf_handle(&cf_name(epoch)) else {
                    continue;
                };
                let (start, end) = range;
                let mode = rocksdb::IteratorMode::From(&start.0, rocksdb::Direction::Forward);
                for item in self.db.iterator_cf(&cf, mode) {
                    let (k, v) = item.map_err(|e| StoreError::engine("scan", e))?;
                    let Ok(kb) = <[u8; 32]>::try_from(&k[..]) else {
                        continue;
                    };
                    if kb > end.0 {
                        break;
                    }
                    let values = valueset::decode(&v).map_err(StoreError::from)?;
                    if visit(epoch, Key(kb), &values) == ControlFlow::Break(()) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn live_epochs(&self) -> Vec<Epoch> {
        self.list_epochs()
    }

    fn stats(&self) -> StoreStats {
        self.ledger().stats()
    }

    fn apply_journal(&self) -> Result<u64, StoreError> {
        let slack = (self.opts.index_bytes / 4).min(LOG_SLACK);
        if self.index.overflowed().is_empty() && self.index.oversized_logs(slack).is_empty() {
            return Ok(0);
        }
        let _apply = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut moved = 0;
        // Each epoch on its own, so one that fails does not hold the others back; the first
        // failure is returned at the end (and the next call retries).
        let mut failed = None;
        let epochs = self.index.overflowed();
        if !epochs.is_empty() {
            // The epochs are marked overflowed, so no batch that starts now logs their values;
            // the batches that may still be doing so hold the gate: once they are through, the
            // logs stay as they are.
            drop(self.write_gate.write().unwrap_or_else(|p| p.into_inner()));
        }
        for epoch in epochs {
            match self.retire_epoch(epoch) {
                Ok(n) => moved += n,
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        for epoch in self.index.oversized_logs(slack) {
            match self.trim_log(epoch) {
                Ok(n) => moved += n,
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(moved), Err)
    }

    fn sync(&self) -> Result<(), StoreError> {
        if self.opts.wal == WalPolicy::Disabled {
            return Ok(());
        }
        self.db
            .flush_wal(true)
            .map_err(|e| StoreError::engine("sync", e))
    }

    fn engine_stats(&self) -> Vec<(EngineStat, u64)> {
        let db_prop = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        let wal_bytes: u64 = std::fs::read_dir(&self.path)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        vec![
            (
                EngineStat::MemtableBytes,
                self.property_sum("rocksdb.cur-size-all-mem-tables"),
            ),
            (
                EngineStat::SstBytes,
                self.property_sum("rocksdb.total-sst-files-size"),
            ),
            (EngineStat::WalBytes, wal_bytes),
            (EngineStat::IndexBytes, self.index.used_bytes()),
            (EngineStat::JournalBytes, self.log_bytes()),
            (
                EngineStat::OverflowedEpochs,
                self.index.overflowed().len() as u64,
            ),
            (
                EngineStat::PendingCompactionBytes,
                self.property_sum("rocksdb.estimate-pending-compaction-bytes"),
            ),
            (
                EngineStat::RunningCompactions,
                db_prop("rocksdb.num-running-compactions"),
            ),
            (EngineStat::MaxSortedRuns, self.max_sorted_runs()),
            (
                EngineStat::WriteStopped,
                db_prop("rocksdb.is-write-stopped"),
            ),
            (
                EngineStat::DelayedWriteRate,
                db_prop("rocksdb.actual-delayed-write-rate"),
            ),
        ]
    }
}
