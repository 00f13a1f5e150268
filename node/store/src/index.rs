//! The memory-resident index of live epochs: every key's merged value set, in memory, so a
//! RETRIEVE of a live epoch never touches RocksDB (which stays the durable store: the index is
//! rebuilt from it at open).
//!
//! One [`EpochIndex`] per epoch, published through an `ArcSwap` list that request paths read
//! without a lock; keys live in a `DashMap` shared by every core (sharded, short critical
//! sections). An epoch's index is *authoritative* — a miss means "not stored" — only while it
//! holds every value of that epoch: it is created empty together with its partition, or filled
//! from the partition and the epoch's log at open, and updated after every successful write.
//! When the byte budget would be exceeded, the epoch that needed the room is marked
//! *overflowed*: new writes to it go straight to its partition instead of the epoch's log, and
//! once the log has been moved into the partition (so it holds every value of the epoch) the
//! store *retires* it — its map is cleared and its reads go to RocksDB until the epoch expires.
//! The index never serves a partial answer; between overflow and retirement it holds more than
//! its budget.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tarn_proto::{Epoch, Key};

use crate::valueset;

/// Per-entry overhead counted against the budget (key, map slot, allocation header).
const ENTRY_OVERHEAD: u64 = 32 + 48;

#[derive(Debug)]
struct EpochIndex {
    /// Keys are chosen by clients, so the hasher is seeded per process (foldhash's random
    /// state) rather than the identity a uniform 32-byte key would invite; it costs a few
    /// nanoseconds where SipHash cost tens on every lookup.
    map: DashMap<Key, Vec<u8>, foldhash::fast::RandomState>,
    /// Whether the map holds every value of the epoch.
    complete: AtomicBool,
    /// Whether the epoch went over the budget and waits to be retired; its bytes no longer
    /// count in [`LiveIndex::used_bytes`].
    overflowed: AtomicBool,
    /// Bytes this epoch's entries count against the budget.
    bytes: AtomicU64,
    /// Bytes in the epoch's log that are not (also) in its partition (see
    /// [`LiveIndex::oversized_logs`]).
    logged: AtomicU64,
}

/// What the index knows about one key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup<T> {
    /// The index is authoritative for the epoch: the key's set (`None`: nothing stored).
    Known(Option<T>),
    /// Ask the durable store.
    Unknown,
}

/// The index of every live epoch, bounded by a byte budget.
#[derive(Debug)]
pub(crate) struct LiveIndex {
    epochs: ArcSwap<Vec<(Epoch, Arc<EpochIndex>)>>,
    budget: u64,
    used: AtomicU64,
    /// Epochs marked overflowed and not yet retired.
    to_retire: Mutex<Vec<Epoch>>,
}

impl LiveIndex {
    /// An empty index that may use `budget` bytes (0 disables it).
    pub(crate) fn new(budget: u64) -> LiveIndex {
        LiveIndex {
            epochs: ArcSwap::from_pointee(Vec::new()),
            budget,
            used: AtomicU64::new(0),
            to_retire: Mutex::new(Vec::new()),
        }
    }

    fn find(&self, epoch: Epoch) -> Option<Arc<EpochIndex>> {
        self.epochs
            .load()
            .iter()
            .find(|(e, _)| *e == epoch)
            .map(|(_, i)| i.clone())
    }

    /// Starts indexing `epoch`, which must hold nothing yet or be filled with [`fill`] before
    /// any write (callers serialise this with partition creation).
    ///
    /// [`fill`]: LiveIndex::fill
    pub(crate) fn add_epoch(&self, epoch: Epoch) {
        if self.budget == 0 || self.find(epoch).is_some() {
            return;
        }
        self.epochs.rcu(|cur| {
            let mut next = (**cur).clone();
            if !next.iter().any(|(e, _)| *e == epoch) {
                next.push((
                    epoch,
                    Arc::new(EpochIndex {
                        map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
                        complete: AtomicBool::new(true),
                        overflowed: AtomicBool::new(false),
                        bytes: AtomicU64::new(0),
                        logged: AtomicU64::new(0),
                    }),
                ));
            }
            next
        });
    }

    /// Loads one stored set of `epoch` (at open, before writes). Returns whether this pushed
    /// the epoch over the budget (the store then retires it once its partition holds all of it).
    pub(crate) fn fill(&self, epoch: Epoch, key: Key, set: &[u8]) -> bool {
        self.find(epoch)
            .is_some_and(|idx| self.put_set(epoch, &idx, key, set.to_vec()))
    }

    /// Whether a write to `epoch` may be acknowledged from the epoch's log: the index holds the
    /// whole epoch and will keep answering for it until the log has been moved into the
    /// partition.
    pub(crate) fn journaled(&self, epoch: Epoch) -> bool {
        self.find(epoch).is_some_and(|idx| {
            idx.complete.load(Ordering::Acquire) && !idx.overflowed.load(Ordering::Acquire)
        })
    }

    /// Folds a written operand into the key's set. An epoch this pushes over the budget is
    /// marked overflowed ([`LiveIndex::overflowed`]) for the store to retire; returns whether
    /// this merge did so.
    pub(crate) fn merge(&self, epoch: Epoch, key: Key, operand: &[u8], max_values: usize) -> bool {
        let Some(idx) = self.find(epoch) else {
            return false;
        };
        if !idx.complete.load(Ordering::Acquire) {
            return false;
        }
        // Bytes before and after: an eviction can shrink a set, and the budget follows it.
        let (mut before, mut after) = (0u64, 0u64);
        idx.map
            .entry(key)
            .and_modify(|set| {
                before = set.len() as u64;
                valueset::merge_into(set, operand, max_values);
                after = set.len() as u64;
            })
            .or_insert_with(|| {
                // A new key's set is usually the operand itself: no growth on the way.
                let mut set = Vec::with_capacity(operand.len());
                valueset::merge_into(&mut set, operand, max_values);
                after = set.len() as u64 + ENTRY_OVERHEAD;
                set
            });
        if after >= before {
            return self.account(epoch, &idx, after - before);
        }
        let freed = before - after;
        sub_saturating(&idx.bytes, freed);
        if !idx.overflowed.load(Ordering::Acquire) {
            sub_saturating(&self.used, freed);
        }
        false
    }

    fn put_set(&self, epoch: Epoch, idx: &Arc<EpochIndex>, key: Key, set: Vec<u8>) -> bool {
        if !idx.complete.load(Ordering::Acquire) {
            return false;
        }
        let grown = set.len() as u64 + ENTRY_OVERHEAD;
        idx.map.insert(key, set);
        self.account(epoch, idx, grown)
    }

    /// Counts `grown` bytes of `epoch`; marks it overflowed when the budget is exceeded.
    fn account(&self, epoch: Epoch, idx: &Arc<EpochIndex>, grown: u64) -> bool {
        idx.bytes.fetch_add(grown, Ordering::Relaxed);
        if idx.overflowed.load(Ordering::Acquire) {
            return false;
        }
        let used = self.used.fetch_add(grown, Ordering::Relaxed) + grown;
        if used > self.budget && !idx.overflowed.swap(true, Ordering::AcqRel) {
            // Over budget: its bytes leave the count now (so other epochs keep their room), and
            // it is retired once its partition holds every one of its values.
            sub_saturating(&self.used, idx.bytes.load(Ordering::Relaxed));
            self.to_retire
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(epoch);
            return true;
        }
        false
    }

    /// Counts `n` bytes written to `epoch`'s log.
    pub(crate) fn logged(&self, epoch: Epoch, n: u64) {
        if let Some(idx) = self.find(epoch) {
            idx.logged.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts `n` bytes of `epoch`'s log as moved into its partition.
    pub(crate) fn trimmed(&self, epoch: Epoch, n: u64) {
        if let Some(idx) = self.find(epoch) {
            sub_saturating(&idx.logged, n);
        }
    }

    /// Indexed epochs whose logs hold more than twice the epoch's indexed bytes plus `slack`:
    /// keys rewritten many times (each write is logged, the index keeps a key's newest values
    /// only). Their logs are moved into their partitions, where compaction folds the rewrites.
    pub(crate) fn oversized_logs(&self, slack: u64) -> Vec<Epoch> {
        self.epochs
            .load()
            .iter()
            .filter(|(_, idx)| {
                idx.complete.load(Ordering::Acquire)
                    && !idx.overflowed.load(Ordering::Acquire)
                    && idx.logged.load(Ordering::Relaxed)
                        > 2 * idx.bytes.load(Ordering::Relaxed) + slack
            })
            .map(|(e, _)| *e)
            .collect()
    }

    /// The epochs that overflowed and wait to be retired.
    pub(crate) fn overflowed(&self) -> Vec<Epoch> {
        self.to_retire
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Retires `epoch` (an overflowed one): its reads go to the durable store from now on. The
    /// caller guarantees RocksDB holds every value of the epoch (no log entry of it is left
    /// unapplied or being written) and that no [`LiveIndex::merge`] runs meanwhile (the store's
    /// write gate), so a set found afterwards is never one a merge began in the cleared map.
    pub(crate) fn retire(&self, epoch: Epoch) {
        self.to_retire
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|e| *e != epoch);
        if let Some(idx) = self.find(epoch) {
            idx.complete.store(false, Ordering::Release);
            idx.map.clear();
            idx.bytes.store(0, Ordering::Relaxed);
        }
    }

    /// The key's set, passed to `read` (which runs at most once, under the key's shard lock),
    /// when the index is authoritative for `epoch`.
    pub(crate) fn get<T>(
        &self,
        epoch: Epoch,
        key: &Key,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Lookup<T> {
        let Some(idx) = self.find(epoch) else {
            return Lookup::Unknown;
        };
        if !idx.complete.load(Ordering::Acquire) {
            return Lookup::Unknown;
        }
        let found = idx.map.get(key).map(|set| {
            warm(&set);
            read(&set)
        });
        // A set found is whole: a retirement runs only while no write merges (the store holds
        // its write gate) and marks the epoch incomplete before it clears the map, so no merge
        // can start a partial set after it. A miss is re-checked: the clearing may have made it.
        if found.is_none() && !idx.complete.load(Ordering::Acquire) {
            return Lookup::Unknown;
        }
        Lookup::Known(found)
    }

    /// Every key of `epoch` within `range` (inclusive bounds) and its set, sorted by key, when
    /// the index is authoritative for the epoch (`None`: ask the durable store). Copies the
    /// matching sets: for anti-entropy scans, not for request paths.
    pub(crate) fn scan(&self, epoch: Epoch, range: &(Key, Key)) -> Option<Vec<(Key, Vec<u8>)>> {
        let idx = self.find(epoch)?;
        if !idx.complete.load(Ordering::Acquire) {
            return None;
        }
        let mut found: Vec<(Key, Vec<u8>)> = idx
            .map
            .iter()
            .filter(|e| range.0 <= *e.key() && *e.key() <= range.1)
            .map(|e| (*e.key(), e.value().clone()))
            .collect();
        // Retired meanwhile: the map may have been cleared under the iteration.
        if !idx.complete.load(Ordering::Acquire) {
            return None;
        }
        found.sort_unstable_by_key(|e| e.0);
        Some(found)
    }

    /// Forgets every epoch before `oldest_live` (and that they waited to be retired).
    pub(crate) fn drop_before(&self, oldest_live: Epoch) {
        self.to_retire
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|e| *e >= oldest_live);
        let mut freed = 0;
        self.epochs.rcu(|cur| {
            freed = 0;
            let mut next = Vec::with_capacity(cur.len());
            for (e, i) in cur.iter() {
                if *e >= oldest_live {
                    next.push((*e, i.clone()));
                } else if !i.overflowed.load(Ordering::Acquire) {
                    freed += i.bytes.load(Ordering::Relaxed);
                }
            }
            next
        });
        self.used.fetch_sub(
            freed.min(self.used.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
    }

    /// Bytes counted against the budget.
    pub(crate) fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// Subtracts without wrapping: an overflow may have zeroed a counter concurrently.
fn sub_saturating(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

/// Loads one byte of every cache line of `set`, each load independent of the others, so the
/// CPU fetches the lines together: a set just found in the map is usually not in cache, and
/// without this its header (read first, to parse) and its values (copied after it, into the
/// reply) cost two memory round trips one after the other instead of one.
#[inline]
fn warm(set: &[u8]) {
    let mut x = 0u8;
    for b in set.iter().step_by(64).chain(set.last()) {
        x ^= *b;
    }
    std::hint::black_box(x);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(stamp: u64, v: &[u8]) -> Vec<u8> {
        let mut o = Vec::new();
        valueset::encode_one(stamp, v, &mut o);
        o
    }

    fn values(idx: &LiveIndex, e: u64, k: u8) -> Lookup<Vec<Vec<u8>>> {
        idx.get(Epoch(e), &Key([k; 32]), |b| {
            valueset::decode(b)
                .unwrap()
                .into_iter()
                .map(|s| s.value)
                .collect()
        })
    }

    #[test]
    fn answers_only_for_indexed_epochs_and_merges_like_the_store() {
        let idx = LiveIndex::new(1 << 20);
        assert_eq!(values(&idx, 1, 1), Lookup::Unknown);
        idx.add_epoch(Epoch(1));
        assert_eq!(values(&idx, 1, 1), Lookup::Known(None));
        for s in 0..5u64 {
            idx.merge(Epoch(1), Key([1; 32]), &op(s, &[s as u8; 3]), 3);
        }
        // The same rule as the merge operator: the three highest stamps, newest first.
        assert_eq!(
            values(&idx, 1, 1),
            Lookup::Known(Some(vec![vec![4; 3], vec![3; 3], vec![2; 3]]))
        );
        // Writes to an epoch that is not indexed are ignored, not half-indexed.
        idx.merge(Epoch(2), Key([1; 32]), &op(1, b"x"), 3);
        assert_eq!(values(&idx, 2, 1), Lookup::Unknown);
        idx.drop_before(Epoch(2));
        assert_eq!(values(&idx, 1, 1), Lookup::Unknown);
        assert_eq!(idx.used_bytes(), 0);
    }

    #[test]
    fn an_epoch_over_the_budget_is_retired_instead_of_answering_partially() {
        let idx = LiveIndex::new(4096);
        idx.add_epoch(Epoch(7));
        idx.add_epoch(Epoch(8));
        idx.merge(Epoch(8), Key([9; 32]), &op(1, b"small"), 8);
        assert!(idx.journaled(Epoch(7)) && idx.journaled(Epoch(8)));
        let mut k = 0u8;
        loop {
            idx.merge(Epoch(7), Key([k; 32]), &op(1, &[k; 300]), 8);
            if !idx.overflowed().is_empty() {
                break;
            }
            k += 1;
            assert!(k < 40, "the budget is enforced");
        }
        // Overflowed: no more logged writes for it, but it still answers in full (its log may
        // hold its values) until the store retires it.
        assert!(!idx.journaled(Epoch(7)) && idx.journaled(Epoch(8)));
        assert_eq!(idx.overflowed(), vec![Epoch(7)]);
        assert_eq!(values(&idx, 7, k), Lookup::Known(Some(vec![vec![k; 300]])));
        // Its bytes left the count at once, so the other epoch keeps its room.
        assert!(idx.used_bytes() < 4096);
        idx.merge(Epoch(7), Key([200; 32]), &op(2, b"meanwhile"), 8);
        assert_eq!(
            values(&idx, 7, 200),
            Lookup::Known(Some(vec![b"meanwhile".to_vec()]))
        );
        // A scan answers from the index until then, too.
        let all = (Key([0; 32]), Key([0xff; 32]));
        let scanned = idx.scan(Epoch(7), &all).unwrap();
        assert!(scanned.windows(2).all(|w| w[0].0 < w[1].0), "sorted by key");
        assert_eq!(scanned.len(), usize::from(k) + 2);
        let some = idx.scan(Epoch(7), &(Key([1; 32]), Key([2; 32]))).unwrap();
        assert_eq!(
            some.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![Key([1; 32]), Key([2; 32])]
        );
        idx.retire(Epoch(7));
        assert!(idx.overflowed().is_empty());
        assert_eq!(idx.scan(Epoch(7), &all), None);
        assert_eq!(values(&idx, 7, 0), Lookup::Unknown);
        assert_eq!(
            values(&idx, 8, 9),
            Lookup::Known(Some(vec![b"small".to_vec()]))
        );
        idx.merge(Epoch(7), Key([0; 32]), &op(3, b"later"), 8);
        assert_eq!(values(&idx, 7, 0), Lookup::Unknown);
        idx.drop_before(Epoch(9));
        assert_eq!(idx.used_bytes(), 0);
    }

    #[test]
    fn a_zero_budget_disables_it() {
        let idx = LiveIndex::new(0);
        idx.add_epoch(Epoch(1));
        assert_eq!(values(&idx, 1, 1), Lookup::Unknown);
    }
}
