//! The record format of the epochs' logs: one entry per group commit and epoch, holding every
//! value of the batch for an epoch that the index answers for, so an insert costs RocksDB one
//! sequential append instead of one random memtable insert per value. [`crate::RocksStore`]
//! moves a log into its partition, sorted by key, only at open or when its epoch outgrows the
//! index (see its module notes). Earlier builds' single journal used the same format.
//!
//! An entry is records back to back: `epoch:u64le | key:[u8;32] | len:u32le | operand`, where
//! the operand is a value-set merge operand ([`crate::valueset::encode_one`]).

use std::cmp::Ordering;

use tarn_proto::{Epoch, Key};

const RECORD_HEADER: usize = 8 + 32 + 4;

/// Appends one record to an entry being built.
pub(crate) fn push(entry: &mut Vec<u8>, epoch: Epoch, key: &Key, operand: &[u8]) {
    entry.reserve(RECORD_HEADER + operand.len());
    entry.extend_from_slice(&epoch.0.to_le_bytes());
    entry.extend_from_slice(&key.0);
    entry.extend_from_slice(&(operand.len() as u32).to_le_bytes());
    entry.extend_from_slice(operand);
}

/// A journal entry that does not parse (RocksDB checksums its blocks and log, so this means a
/// bug or a foreign database, not a torn write).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt journal entry at byte {offset}")]
pub(crate) struct CorruptEntry {
    pub(crate) offset: usize,
}

/// The records of one entry, in the order they were pushed.
pub(crate) fn records(
    entry: &[u8],
) -> impl Iterator<Item = Result<(Epoch, Key, &[u8]), CorruptEntry>> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at == entry.len() {
            return None;
        }
        let rest = &entry[at..];
        let parsed = (rest.len() >= RECORD_HEADER)
            .then(|| {
                let epoch = u64::from_le_bytes(rest[0..8].try_into().expect("8 bytes"));
                let key: [u8; 32] = rest[8..40].try_into().expect("32 bytes");
                let len = u32::from_le_bytes(rest[40..44].try_into().expect("4 bytes")) as usize;
                let operand = rest.get(RECORD_HEADER..RECORD_HEADER.checked_add(len)?)?;
                Some((Epoch(epoch), Key(key), operand))
            })
            .flatten();
        match parsed {
            Some(r) => {
                at += RECORD_HEADER + r.2.len();
                Some(Ok(r))
            }
            None => {
                let e = CorruptEntry { offset: at };
                at = entry.len();
                Some(Err(e))
            }
        }
    })
}

/// The bytes one value takes in an entry: record header, then the operand
/// ([`crate::valueset::encode_one`]'s header and the value).
pub(crate) fn record_len(value_len: usize) -> usize {
    RECORD_HEADER + crate::valueset::ENTRY_HEADER + value_len
}

/// The order an apply writes records in: by partition, then key, as SST files need them.
/// Keys are BLAKE3 outputs, so their first eight bytes, compared as one big-endian integer,
/// settle almost every comparison without a 32-byte `memcmp` (the sort was 3 % of a node's
/// CPU at 50 x 16); the full key breaks the rare tie. The same order as `(epoch, key)`.
pub(crate) fn record_order(a: &(Epoch, Key, &[u8]), b: &(Epoch, Key, &[u8])) -> Ordering {
    fn prefix(k: &Key) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&k.0[..8]);
        u64::from_be_bytes(first)
    }
    a.0.cmp(&b.0)
        .then_with(|| prefix(&a.1).cmp(&prefix(&b.1)))
        .then_with(|| a.1.cmp(&b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_order_is_the_order_of_epoch_then_key() {
        // Keys that differ only after the prefix, only in the prefix, and not at all.
        let mut keys = Vec::new();
        for first in [0u8, 1, 0x80, 0xff] {
            for last in [0u8, 7, 0xff] {
                let mut k = [0x55u8; 32];
                k[0] = first;
                k[31] = last;
                keys.push(Key(k));
            }
        }
        let mut records = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            for epoch in [Epoch(2), Epoch(1)] {
                records.push((epoch, *k, &b"v"[..]));
                if i % 3 == 0 {
                    records.push((epoch, *k, &b"w"[..]));
                }
            }
        }
        records.reverse();
        let mut by_tuple = records.clone();
        by_tuple.sort_by_key(|r| (r.0, r.1));
        let mut by_prefix = records;
        by_prefix.sort_by(record_order);
        let project = |v: &[(Epoch, Key, &[u8])]| v.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>();
        assert_eq!(project(&by_prefix), project(&by_tuple));
    }

    #[test]
    fn records_round_trip_and_truncation_is_an_error_not_a_panic() {
        let mut entry = Vec::new();
        push(&mut entry, Epoch(7), &Key([1; 32]), b"first");
        push(&mut entry, Epoch(8), &Key([2; 32]), b"");
        push(&mut entry, Epoch(u64::MAX), &Key([3; 32]), &[9; 300]);
        let got: Vec<_> = records(&entry).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            vec![
                (Epoch(7), Key([1; 32]), &b"first"[..]),
                (Epoch(8), Key([2; 32]), &b""[..]),
                (Epoch(u64::MAX), Key([3; 32]), &[9u8; 300][..]),
            ]
        );
        for cut in 1..entry.len() {
            let parsed: Vec<_> = records(&entry[..cut]).collect();
            assert!(
                parsed.last().is_some_and(|r| r.is_err())
                    || cut == RECORD_HEADER + 5
                    || cut == 2 * RECORD_HEADER + 5,
                "a cut at {cut} must end in an error"
            );
        }
        // A length that points past the end.
        let mut bad = Vec::new();
        push(&mut bad, Epoch(1), &Key([0; 32]), b"abc");
        bad[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            records(&bad).collect::<Vec<_>>(),
            vec![Err(CorruptEntry { offset: 0 })]
        );
    }
}
