//! The `Store` trait in domain terms, limits, and the accounting both backends share.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use tarn_proto::{Epoch, Id, Key};

use crate::valueset::Values;
use crate::{StampedValue, StoreError};

/// Limits a store enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest value accepted.
    pub max_value_bytes: u32,
    /// Values kept per key; the lowest orders are evicted beyond it.
    pub max_values_per_key: u32,
    /// Total value bytes accepted across live epochs; 0 means no quota.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_value_bytes: 1024,
            max_values_per_key: 8,
            max_total_bytes: 0,
        }
    }
}

/// One value to store.
#[derive(Clone, Copy, Debug)]
pub struct PutItem<'a> {
    /// Its epoch partition.
    pub epoch: Epoch,
    /// Its key.
    pub key: Key,
    /// The order stamp from the responsible node.
    pub stamp: u64,
    /// The value bytes.
    pub value: &'a [u8],
}

/// Figures for one epoch partition. Counts are of values *accepted*: a duplicate or an evicted
/// value still counts until its epoch is dropped, so they are upper bounds on what is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpochStats {
    /// The epoch.
    pub epoch: Epoch,
    /// Values accepted.
    pub records: u64,
    /// Value bytes accepted.
    pub bytes: u64,
}

/// Figures for the whole store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Live partitions, oldest first.
    pub epochs: Vec<EpochStats>,
    /// Sum of `bytes` over live partitions (what the quota counts).
    pub total_bytes: u64,
}

/// What dropping expired epochs did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropReport {
    /// The partitions dropped.
    pub dropped: Vec<Epoch>,
    /// Values they had accepted.
    pub records: u64,
}

/// Visitor for [`Store::scan_range`]: called per key with its values, highest order first.
pub type ScanVisitor<'a> = dyn FnMut(Epoch, Key, &[StampedValue]) -> ControlFlow<()> + 'a;

/// The epoch-partitioned record store.
///
/// All methods are synchronous and may block on disk: callers on an async executor must treat
/// them as a blocking boundary. Implementations are shared between threads.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Stores every valid item in one atomic batch (group commit). Returns one result per item,
    /// in order; invalid items are refused individually, an engine failure fails every valid one.
    /// A put never reads first: over-full keys are trimmed when values are read or compacted.
    fn put_batch(&self, items: &[PutItem<'_>]) -> Vec<Result<(), StoreError>>;

    /// Stores one value.
    fn put(&self, epoch: Epoch, key: Key, stamp: u64, value: &[u8]) -> Result<(), StoreError> {
        self.put_batch(&[PutItem {
            epoch,
            key,
            stamp,
            value,
        }])
        .pop()
        .expect("one result per item")
    }

    /// Calls `read` with the values under `(epoch, key)`, highest order first (empty when
    /// nothing is stored), borrowed from where the backend holds them, so a reply can be
    /// encoded from them without copying them first. `read` is called once when the read
    /// succeeds and not at all when it fails; it may run while the backend holds a lock of its
    /// own (a shard of its memory-resident index, or the whole store), so it must be short and
    /// must not call into the store.
    fn get_with(
        &self,
        epoch: Epoch,
        key: &Key,
        read: &mut dyn FnMut(Values<'_>),
    ) -> Result<(), StoreError>;

    /// The values under `(epoch, key)`, highest order first, copied out.
    fn get(&self, epoch: Epoch, key: &Key) -> Result<Vec<StampedValue>, StoreError> {
        let mut out = Vec::new();
        self.get_with(epoch, key, &mut |values| out = values.to_stamped())?;
        Ok(out)
    }

    /// Creates partitions for `from..=to` ahead of time (skipping expired ones), so the request
    /// path never has to.
    fn prepare_epochs(&self, from: Epoch, to: Epoch) -> Result<(), StoreError>;

    /// Drops every partition older than `oldest_live` at once (no per-record deletes) and refuses
    /// later writes to them.
    fn drop_epochs_before(&self, oldest_live: Epoch) -> Result<DropReport, StoreError>;

    /// Visits every key in the ring interval `(after, upto]` of every live epoch (for handoff
    /// and repair), in key order per epoch, oldest epoch first, until the visitor breaks.
    fn scan_range(
        &self,
        after: Id,
        upto: Id,
        visit: &mut ScanVisitor<'_>,
    ) -> Result<(), StoreError>;

    /// Live partitions, oldest first.
    fn live_epochs(&self) -> Vec<Epoch>;

    /// Accounting figures.
    fn stats(&self) -> StoreStats;

    /// Makes every write so far durable on disk (fsync of the log). The periodic WAL policy
    /// calls this from a thread of its own.
    fn sync(&self) -> Result<(), StoreError>;

    /// Moves the logged values of epochs that overflowed the memory-resident index into their
    /// partitions and retires those epochs from the index (their reads go to the partitions
    /// from then on), and moves the older part of logs grown far past their epoch's live data
    /// (keys rewritten many times) into their partitions; returns the values moved. The node
    /// calls it every 50 ms from a thread of its own
    /// (`tarn_node::maintenance::apply_journal_while`; the logs keep inserts to sequential
    /// appends, see `RocksStore`). Backends without logs do nothing.
    fn apply_journal(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Storage-engine figures for metrics, as `(name, value)`; names are stable
    /// (see [`EngineStat`]). Backends without an engine report nothing.
    fn engine_stats(&self) -> Vec<(EngineStat, u64)> {
        Vec::new()
    }
}

/// Storage-engine figures a backend may report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineStat {
    /// Bytes in memtables (all partitions).
    MemtableBytes,
    /// Bytes in SST files (all partitions).
    SstBytes,
    /// Bytes of write-ahead log on disk.
    WalBytes,
    /// Estimated bytes compaction still has to rewrite.
    PendingCompactionBytes,
    /// Compactions running now.
    RunningCompactions,
    /// 1 while RocksDB stops writes (stall), else 0.
    WriteStopped,
    /// Current delayed-write rate in bytes/s (0 when not delaying).
    DelayedWriteRate,
    /// Bytes held by the memory-resident index of live epochs.
    IndexBytes,
    /// Bytes in the live epochs' logs (inserts of epochs the index answers for, read back into
    /// it at the next open).
    JournalBytes,
    /// Epochs that outgrew the index and wait for their logs to be moved into their partitions
    /// (meanwhile the index holds them over its budget).
    OverflowedEpochs,
    /// The most sorted runs in any one partition (level-0 files and non-empty levels): what
    /// universal compaction has yet to merge (it starts at 16; RocksDB slows writes to a
    /// partition at 48 and stops them at 64).
    MaxSortedRuns,
}

/// Accounting and admission shared by both backends: the floor below which epochs are expired,
/// per-epoch figures, and the quota.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) floor: Epoch,
    pub(crate) epochs: BTreeMap<Epoch, EpochStats>,
    pub(crate) total_bytes: u64,
}

impl Ledger {
    /// Checks each item against the limits, the floor and the quota; reserves the bytes of the
    /// admitted ones. Returns per-item admission.
    pub(crate) fn admit(
        &mut self,
        items: &[PutItem<'_>],
        limits: &Limits,
    ) -> Vec<Result<(), StoreError>> {
        items
            .iter()
            .map(|it| {
                if it.value.len() > limits.max_value_bytes as usize {
                    return Err(StoreError::TooLarge {
                        len: it.value.len(),
                        max: limits.max_value_bytes,
                    });
                }
                if it.epoch < self.floor {
                    return Err(StoreError::Expired {
                        epoch: it.epoch,
                        oldest_live: self.floor,
                    });
                }
                let len = it.value.len() as u64;
                if limits.max_total_bytes != 0 && self.total_bytes + len > limits.max_total_bytes {
                    return Err(StoreError::OverQuota {
                        quota: limits.max_total_bytes,
                    });
                }
                self.total_bytes += len;
                let e = self.epochs.entry(it.epoch).or_insert(EpochStats {
                    epoch: it.epoch,
                    ..Default::default()
                });
                e.records += 1;
                e.bytes += len;
                Ok(())
            })
            .collect()
    }

    /// Gives back what [`Ledger::admit`] reserved for items whose write failed.
    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
    pub(crate) fn release(&mut self, items: &[PutItem<'_>], failed: impl Iterator<Item = usize>) {
        for i in failed {
            let it = &items[i];
            if it.epoch < self.floor {
                // Its epoch was expired meanwhile, and its bytes went with it.
                continue;
            }
            let len = it.value.len() as u64;
            self.total_bytes = self.total_bytes.saturating_sub(len);
            if let Some(e) = self.epochs.get_mut(&it.epoch) {
                e.records = e.records.saturating_sub(1);
                e.bytes = e.bytes.saturating_sub(len);
            }
        }
    }

    /// Raises the floor and forgets the figures of epochs below it.
    pub(crate) fn expire_before(&mut self, oldest_live: Epoch) -> u64 {
        self.floor = self.floor.max(oldest_live);
        let kept = self.epochs.split_off(&self.floor);
        let gone = std::mem::replace(&mut self.epochs, kept);
        let records = gone.values().map(|e| e.records).sum();
        self.total_bytes = self
            .total_bytes
            .saturating_sub(gone.values().map(|e| e.bytes).sum::<u64>());
        records
    }

    pub(crate) fn stats(&self) -> StoreStats {
        StoreStats {
            epochs: self.epochs.values().copied().collect(),
            total_bytes: self.total_bytes,
        }
    }
}

/// Splits the ring interval `(after, upto]` into at most two ascending key ranges, each
/// `[start, end]` inclusive.
pub(crate) fn ring_ranges(after: Id, upto: Id) -> Vec<(Key, Key)> {
    let next = |id: Id| {
        if id == Id([0xff; 32]) {
            None
        } else {
            Some(Key(id.add_pow2(0).0))
        }
    };
    if after < upto {
        next(after)
            .map(|s| vec![(s, Key(upto.0))])
            .unwrap_or_default()
    } else {
        // Wraps (or covers the whole ring when after == upto).
        let mut out = Vec::new();
        if let Some(s) = next(after) {
            out.push((s, Key([0xff; 32])));
        }
        out.push((Key([0; 32]), Key(upto.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_after_expiry_does_not_count_twice() {
        let mut l = Ledger::default();
        let limits = Limits {
            max_total_bytes: 100,
            ..Limits::default()
        };
        let items = [PutItem {
            epoch: Epoch(5),
            key: Key([1; 32]),
            stamp: 1,
            value: &[0; 10],
        }];
        assert!(l.admit(&items, &limits)[0].is_ok());
        assert_eq!(l.total_bytes, 10);
        // GC expires the epoch while the batch is being written, then the write fails.
        l.expire_before(Epoch(6));
        l.release(&items, std::iter::once(0));
        assert_eq!(l.total_bytes, 0);
        let later = [PutItem {
            epoch: Epoch(6),
            key: Key([1; 32]),
            stamp: 1,
            value: &[0; 100],
        }];
        assert!(l.admit(&later, &limits)[0].is_ok(), "quota intact");
    }

    #[test]
    fn ring_ranges_split_at_wrap() {
        let a = Id([0x80; 32]);
        let b = Id([0x10; 32]);
        assert_eq!(ring_ranges(b, a).len(), 1);
        assert_eq!(ring_ranges(a, b).len(), 2);
        assert_eq!(
            ring_ranges(Id([0xff; 32]), b),
            vec![(Key([0; 32]), Key(b.0))]
        );
    }
}
