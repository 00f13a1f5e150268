//! Store put/get with 300-byte values, and dropping an epoch of 10k vs 1M records (the drop
//! must not grow with the count: it is one column-family drop).

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tarn_proto::{Epoch, Key};
use tarn_store::{PutItem, RocksOptions, RocksStore, Store, WalPolicy};

fn key(i: u64) -> Key {
    Key(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

fn open(wal: WalPolicy) -> (tempfile::TempDir, RocksStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStore::open(
        dir.path(),
        RocksOptions {
            wal,
            ..Default::default()
        },
    )
    .unwrap();
    (dir, s)
}

fn put_get(c: &mut Criterion) {
    let value = vec![0x5a; 300];
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    for (name, wal) in [
        ("nosync", WalPolicy::NoSync),
        ("disabled", WalPolicy::Disabled),
    ] {
        let (_d, s) = open(wal);
        s.prepare_epochs(Epoch(1), Epoch(1)).unwrap();
        let mut i = 0u64;
        g.bench_function(format!("put/{name}"), |b| {
            b.iter(|| {
                i += 1;
                s.put(Epoch(1), key(i), i, black_box(&value)).unwrap();
            })
        });
    }
    // Group commit: 32 inserts in one batch, per insert.
    let (_d, s) = open(WalPolicy::NoSync);
    let mut i = 0u64;
    g.throughput(Throughput::Elements(32));
    g.bench_function("put_batch32/nosync", |b| {
        b.iter(|| {
            let keys: Vec<Key> = (0..32)
                .map(|_| {
                    i += 1;
                    key(i)
                })
                .collect();
            let items: Vec<PutItem<'_>> = keys
                .iter()
                .map(|k| PutItem {
                    epoch: Epoch(1),
                    key: *k,
                    stamp: 1,
                    value: &value,
                })
                .collect();
            black_box(s.put_batch(&items));
        })
    });
    g.throughput(Throughput::Elements(1));
    let (_d, s) = open(WalPolicy::NoSync);
    for i in 0..100_000u64 {
        s.put(Epoch(1), key(i), i, &value).unwrap();
    }
    let mut j = 0u64;
    g.bench_function("get/hit_100k", |b| {
        b.iter(|| {
            j = (j + 7919) % 100_000;
            black_box(s.get(Epoch(1), &key(j)).unwrap());
        })
    });
    g.bench_function("get/miss_100k", |b| {
        b.iter(|| {
            j += 1;
            black_box(s.get(Epoch(1), &key(1_000_000 + j)).unwrap());
        })
    });
    g.finish();
}

fn drop_epoch(c: &mut Criterion) {
    let mut g = c.benchmark_group("drop_epoch");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    for n in [10_000u64, 1_000_000] {
        g.bench_function(format!("records/{n}"), |b| {
            b.iter_batched(
                || {
                    let (d, s) = open(WalPolicy::Disabled);
                    let value = vec![1u8; 300];
                    let mut items = Vec::new();
                    let keys: Vec<Key> = (0..n).map(key).collect();
                    for chunk in keys.chunks(1000) {
                        items.clear();
                        items.extend(chunk.iter().map(|k| PutItem {
                            epoch: Epoch(5),
                            key: *k,
                            stamp: 1,
                            value: &value,
                        }));
                        s.put_batch(&items);
                    }
                    s.prepare_epochs(Epoch(6), Epoch(6)).unwrap();
                    (d, s)
                },
                |(d, s)| {
                    let t = Instant::now();
                    let r = s.drop_epochs_before(Epoch(6)).unwrap();
                    assert_eq!(r.dropped, vec![Epoch(5)]);
                    black_box(t.elapsed());
                    (d, s)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, put_get, drop_epoch);
criterion_main!(benches);
