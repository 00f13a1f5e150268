//! An in-memory [`Store`] for tests and the simulator, with exactly the semantics of the
//! RocksDB store (same value-set merge, same accounting).

use std::collections::BTreeMap;
use std::sync::Mutex;

use tarn_proto::{Epoch, Id, Key};

use crate::store::{
    ring_ranges, DropReport, Ledger, Limits, PutItem, ScanVisitor, Store, StoreStats,
};
use crate::valueset::{self, Values};
use crate::StoreError;

#[derive(Debug, Default)]
struct State {
    ledger: Ledger,
    partitions: BTreeMap<Epoch, BTreeMap<Key, Vec<u8>>>,
}

/// In-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    limits: Limits,
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store with these limits.
    pub fn new(limits: Limits) -> MemoryStore {
        MemoryStore {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied batch behind (every
        // mutation below completes without panicking), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn put_batch(&self, items: &[PutItem<'_>]) -> Vec<Result<(), StoreError>> {
        let mut st = self.state();
        let results = st.ledger.admit(items, &self.limits);
        let max = self.limits.max_values_per_key as usize;
        for (it, r) in items.iter().zip(&results) {
            if r.is_ok() {
                let mut operand = Vec::new();
                valueset::encode_one(it.stamp, it.value, &mut operand);
                let slot = st
                    .partitions
                    .entry(it.epoch)
                    .or_default()
                    .entry(it.key)
                    .or_default();
                *slot = valueset::merge([slot.as_slice(), operand.as_slice()].into_iter(), max);
            }
        }
        results
    }

    fn get_with(
        &self,
        epoch: Epoch,
        key: &Key,
        read: &mut dyn FnMut(Values<'_>),
    ) -> Result<(), StoreError> {
        let st = self.state();
        let bytes = st.partitions.get(&epoch).and_then(|p| p.get(key));
        read(Values::parse(bytes.map_or(&[][..], |b| b.as_slice()))?);
        Ok(())
    }

    fn prepare_epochs(&self, from: Epoch, to: Epoch) -> Result<(), StoreError> {
        let mut st = self.state();
        let from = from.max(st.ledger.floor);
        let mut e = from;
        while e <= to {
            st.partitions.entry(e).or_default();
            st.ledger.epochs.entry(e).or_insert(crate::EpochStats {
                epoch: e,
                ..Default::default()
            });
            e = e.next();
        }
        Ok(())
    }

    fn drop_epochs_before(&self, oldest_live: Epoch) -> Result<DropReport, StoreError> {
        let mut st = self.state();
        let records = st.ledger.expire_before(oldest_live);
        let floor = st.ledger.floor;
        let kept = st.partitions.split_off(&floor);
        let gone = std::mem::replace(&mut st.partitions, kept);
        Ok(DropReport {
            dropped: gone.into_keys().collect(),
            records,
        })
    }

    fn scan_range(
        &self,
        after: Id,
        upto: Id,
        visit: &mut ScanVisitor<'_>,
    ) -> Result<(), StoreError> {
        let st = self.state();
        for (epoch, part) in &st.partitions {
            for (start, end) in ring_ranges(after, upto) {
                for (key, bytes) in part.range(start..=end) {
                    let values = valueset::decode(bytes).map_err(StoreError::from)?;
                    if visit(*epoch, *key, &values).is_break() {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn live_epochs(&self) -> Vec<Epoch> {
        self.state().partitions.keys().copied().collect()
    }

    fn stats(&self) -> StoreStats {
        self.state().ledger.stats()
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
