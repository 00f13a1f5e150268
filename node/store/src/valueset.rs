//! The set of values under one key, as stored and merged.
//!
//! Every value carries an order `(stamp, BLAKE3(value))` assigned by the responsible node and
//! replicated with it. A set keeps at most `max_values_per_key` values; when it is over, the
//! lowest orders go, so every replica that saw the same values keeps the same set. Exact
//! duplicates (same bytes) collapse into one entry with the larger stamp. Merging is
//! associative and commutative, which lets RocksDB apply it as a merge operator: an insert is a
//! blind write, and the bound is enforced when operands are folded (on read and compaction).
//!
//! Encoding of one entry: `stamp:u64be | hash:[u8;32] | len:u32le | value`. A set is entries
//! concatenated, highest order first.

use std::cmp::Reverse;

pub(crate) const ENTRY_HEADER: usize = 8 + 32 + 4;

/// A value with the order the responsible node gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StampedValue {
    /// The responsible node's stamp (nanoseconds of its clock, strictly increasing per node).
    pub stamp: u64,
    /// The opaque value.
    pub value: Vec<u8>,
}

impl StampedValue {
    /// The eviction order of this value.
    pub fn order(&self) -> (u64, [u8; 32]) {
        (self.stamp, *blake3::hash(&self.value).as_bytes())
    }
}

/// Bytes that do not decode as a value set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt value set at byte {offset}")]
pub struct CorruptValueSet {
    /// Where decoding stopped.
    pub offset: usize,
}

/// Encodes one value as a single-entry set (a merge operand).
pub fn encode_one(stamp: u64, value: &[u8], out: &mut Vec<u8>) {
    let hash = blake3::hash(value);
    encode_entry(stamp, hash.as_bytes(), value, out);
}

fn encode_entry(stamp: u64, hash: &[u8; 32], value: &[u8], out: &mut Vec<u8>) {
    out.reserve(ENTRY_HEADER + value.len());
    out.extend_from_slice(&stamp.to_be_bytes());
    out.extend_from_slice(hash);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// One entry borrowed from an encoded set.
#[derive(Clone, Copy, Debug)]
struct Entry<'a> {
    stamp: u64,
    hash: &'a [u8; 32],
    value: &'a [u8],
}

fn entries(bytes: &[u8]) -> impl Iterator<Item = Result<Entry<'_>, CorruptValueSet>> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at == bytes.len() {
            return None;
        }
        let rest = &bytes[at..];
        if rest.len() < ENTRY_HEADER {
            let e = CorruptValueSet { offset: at };
            at = bytes.len();
            return Some(Err(e));
        }
        let stamp = u64::from_be_bytes(rest[0..8].try_into().expect("8 bytes"));
        let hash: &[u8; 32] = rest[8..40].try_into().expect("32 bytes");
        let len = u32::from_le_bytes(rest[40..44].try_into().expect("4 bytes")) as usize;
        if rest.len() < ENTRY_HEADER + len {
            let e = CorruptValueSet { offset: at };
            at = bytes.len();
            return Some(Err(e));
        }
        let value = &rest[ENTRY_HEADER..ENTRY_HEADER + len];
        at += ENTRY_HEADER + len;
        Some(Ok(Entry { stamp, hash, value }))
    })
}

/// The values of an encoded set, borrowed where the set is held and checked whole when made:
/// a reply can be encoded from them without copying each value into a vector of its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct Values<'a> {
    bytes: &'a [u8],
    len: usize,
}

impl<'a> Values<'a> {
    /// Checks an encoded set (an empty slice is the empty set).
    pub fn parse(bytes: &'a [u8]) -> Result<Values<'a>, CorruptValueSet> {
        let mut len = 0;
        for e in entries(bytes) {
            e?;
            len += 1;
        }
        Ok(Values { bytes, len })
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values, highest order first.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        // Checked in `parse`: every entry decodes.
        entries(self.bytes).map_while(Result::ok).map(|e| e.value)
    }

    /// The values with their stamps, copied out.
    pub fn to_stamped(&self) -> Vec<StampedValue> {
        entries(self.bytes)
            .map_while(Result::ok)
            .map(|e| StampedValue {
                stamp: e.stamp,
                value: e.value.to_vec(),
            })
            .collect()
    }
}

/// Decodes a set, highest order first.
pub fn decode(bytes: &[u8]) -> Result<Vec<StampedValue>, CorruptValueSet> {
    Values::parse(bytes).map(|values| values.to_stamped())
}

/// Number of entries and value bytes in an encoded set (corrupt tails are not counted).
pub fn measure(bytes: &[u8]) -> (u64, u64) {
    entries(bytes)
        .map_while(Result::ok)
        .fold((0, 0), |(n, b), e| (n + 1, b + e.value.len() as u64))
}

/// Folds encoded sets into one: union, duplicates collapsed (larger stamp kept), highest
/// `max_values` orders kept. Corrupt entries are skipped rather than poisoning the key.
pub fn merge<'a>(parts: impl Iterator<Item = &'a [u8]>, max_values: usize) -> Vec<u8> {
    let mut all: Vec<Entry<'a>> = Vec::new();
    for part in parts {
        all.extend(entries(part).map_while(Result::ok));
    }
    // Highest order first; for equal hashes the larger stamp comes first and wins the dedup.
    all.sort_unstable_by_key(|e| Reverse((e.stamp, *e.hash)));
    let mut kept: Vec<Entry<'a>> = Vec::with_capacity(all.len().min(max_values));
    for e in all {
        if kept.len() == max_values {
            break;
        }
        if kept.iter().any(|k| k.hash == e.hash) {
            continue;
        }
        kept.push(e);
    }
    let mut out = Vec::with_capacity(kept.iter().map(|e| ENTRY_HEADER + e.value.len()).sum());
    for e in kept {
        encode_entry(e.stamp, e.hash, e.value, &mut out);
    }
    out
}

/// Folds one operand into a set in place: the same result as [`merge`] of the two, without
/// its allocations and sort in the cases a live index meets on nearly every write — the same
/// value written again with a newer stamp (it is the set's first entry), or a new value whose
/// order is the highest (stamps grow). Anything else — including a set that is not as
/// [`merge`] produces it — takes [`merge`].
pub fn merge_into(set: &mut Vec<u8>, operand: &[u8], max_values: usize) {
    let mut ops = entries(operand);
    let (Some(Ok(op)), None) = (ops.next(), ops.next()) else {
        *set = merge([set.as_slice(), operand].into_iter(), max_values);
        return;
    };
    let mut count = 0usize;
    let mut first: Option<(u64, [u8; 32])> = None;
    let mut last_at = 0usize;
    let mut at = 0usize;
    let mut same_hash_at = None;
    let mut corrupt = false;
    for e in entries(set) {
        let Ok(e) = e else {
            corrupt = true;
            break;
        };
        if e.hash == op.hash {
            same_hash_at = Some(at);
        }
        first.get_or_insert((e.stamp, *e.hash));
        last_at = at;
        at += ENTRY_HEADER + e.value.len();
        count += 1;
    }
    if corrupt || count > max_values {
        // Not a set merge produced (corrupt, or kept under a larger limit than today's):
        // the general merge skips what is corrupt and trims to the limit.
        *set = merge([set.as_slice(), operand].into_iter(), max_values);
        return;
    }
    match (same_hash_at, first) {
        // The first entry again: it keeps the larger stamp and stays first.
        (Some(0), Some((stamp, _))) => {
            if op.stamp > stamp {
                set[..8].copy_from_slice(&op.stamp.to_be_bytes());
            }
        }
        // A new value ordered above every entry: it goes first, the lowest goes if full.
        (None, f) if max_values > 0 && f.is_none_or(|f| (op.stamp, *op.hash) > f) => {
            if count == max_values {
                set.truncate(last_at);
            }
            set.splice(0..0, operand.iter().copied());
        }
        _ => *set = merge([set.as_slice(), operand].into_iter(), max_values),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(stamp: u64, v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_one(stamp, v, &mut out);
        out
    }

    #[test]
    fn keeps_highest_orders() {
        let parts: Vec<Vec<u8>> = (1..=5)
            .map(|s| one(s, format!("v{s}").as_bytes()))
            .collect();
        let merged = merge(parts.iter().map(|p| p.as_slice()), 3);
        let got = decode(&merged).unwrap();
        assert_eq!(
            got.iter().map(|v| v.stamp).collect::<Vec<_>>(),
            vec![5, 4, 3]
        );
    }

    #[test]
    fn values_borrow_what_decode_copies() {
        let set = merge(
            [one(1, b"a"), one(2, b"bb"), one(3, b"")]
                .iter()
                .map(|p| p.as_slice()),
            8,
        );
        let values = Values::parse(&set).unwrap();
        assert_eq!(values.len(), 3);
        assert_eq!(values.to_stamped(), decode(&set).unwrap());
        let borrowed: Vec<&[u8]> = values.iter().collect();
        assert_eq!(borrowed, [&b""[..], b"bb", b"a"]);
        assert!(Values::parse(&[]).unwrap().is_empty());
        let mut corrupt = set.clone();
        corrupt.push(7);
        assert_eq!(
            Values::parse(&corrupt).unwrap_err(),
            decode(&corrupt).unwrap_err()
        );
    }

    #[test]
    fn duplicates_collapse_to_larger_stamp() {
        let parts = [one(1, b"same"), one(9, b"same"), one(4, b"other")];
        let got = decode(&merge(parts.iter().map(|p| p.as_slice()), 8)).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            StampedValue {
                stamp: 9,
                value: b"same".to_vec()
            }
        );
    }

    #[test]
    fn merge_is_order_independent() {
        let parts: Vec<Vec<u8>> = (0..10u64).map(|s| one(s % 4, &[s as u8; 5])).collect();
        let a = merge(parts.iter().map(|p| p.as_slice()), 4);
        let b = merge(parts.iter().rev().map(|p| p.as_slice()), 4);
        // Folding in two steps (as RocksDB may) gives the same set.
        let half = merge(parts[..5].iter().map(|p| p.as_slice()), 4);
        let c = merge(
            [half.as_slice()]
                .into_iter()
                .chain(parts[5..].iter().map(|p| p.as_slice())),
            4,
        );
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn corrupt_bytes_are_reported_and_skipped() {
        let mut bytes = one(1, b"ok");
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            decode(&bytes),
            Err(CorruptValueSet {
                offset: ENTRY_HEADER + 2
            })
        );
        assert_eq!(
            decode(&merge([bytes.as_slice()].into_iter(), 8))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(measure(&bytes), (1, 2));
    }

    #[test]
    fn merge_into_matches_merge() {
        // Pseudo-random operand streams (repeats, old and new stamps, full sets): folding one
        // operand at a time in place gives exactly what the general merge gives.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for max_values in [0usize, 1, 2, 4] {
            for _ in 0..300 {
                let mut set = Vec::new();
                let mut reference = Vec::new();
                for _ in 0..12 {
                    let op = one(next(20), &[next(5) as u8; 3]);
                    merge_into(&mut set, &op, max_values);
                    reference = merge([reference.as_slice(), &op].into_iter(), max_values);
                    assert_eq!(set, reference);
                }
            }
        }
        // Operands that are not a single entry, and corrupt sets, take the general path.
        let two = [one(1, b"a"), one(2, b"b")].concat();
        let mut set = one(3, b"c");
        merge_into(&mut set, &two, 4);
        assert_eq!(set, merge([one(3, b"c").as_slice(), &two].into_iter(), 4));
        let mut corrupt = vec![1, 2, 3];
        merge_into(&mut corrupt, &one(1, b"a"), 4);
        assert_eq!(corrupt, one(1, b"a"));
        // A set kept under a larger limit (the limit was lowered since) is trimmed.
        let three = merge(
            [one(1, b"a"), one(2, b"b"), one(3, b"c")]
                .iter()
                .map(|p| p.as_slice()),
            8,
        );
        for op in [one(9, b"c"), one(9, b"d")] {
            let mut set = three.clone();
            merge_into(&mut set, &op, 2);
            assert_eq!(set, merge([three.as_slice(), &op].into_iter(), 2));
            assert_eq!(decode(&set).unwrap().len(), 2);
        }
    }
}
