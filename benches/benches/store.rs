//! Store put/get with 300-byte values (reads from the live-epoch index and, for comparison,
//! from RocksDB), one whole request on the hot path (decode → store → encode), and dropping an
//! epoch of 10k vs 1M records (the drop must not grow with the count: it is one column-family
//! drop).

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tarn_proto::{Epoch, Key};
use tarn_store::{PutItem, RocksOptions, RocksStore, Store, WalPolicy};

fn key(i: u64) -> Key {
    Key(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

fn open(wal: WalPolicy) -> (tempfile::TempDir, RocksStore) {
    open_with(wal, RocksOptions::default().index_bytes)
}

fn open_with(wal: WalPolicy, index_bytes: u64) -> (tempfile::TempDir, RocksStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStore::open(
        dir.path(),
        RocksOptions {
            wal,
            index_bytes,
            ..Default::default()
        },
    )
    .unwrap();
    (dir, s)
}

fn preloaded(index_bytes: u64, value: &[u8]) -> (tempfile::TempDir, RocksStore) {
    let (d, s) = open_with(WalPolicy::NoSync, index_bytes);
    for i in 0..100_000u64 {
        s.put(Epoch(1), key(i), i, value).unwrap();
    }
    (d, s)
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
    for (name, index_bytes) in [
        ("index", RocksOptions::default().index_bytes),
        ("rocksdb", 0),
    ] {
        let (_d, s) = preloaded(index_bytes, &value);
        let mut j = 0u64;
        g.bench_function(format!("get/hit_100k/{name}"), |b| {
            b.iter(|| {
                j = (j + 7919) % 100_000;
                black_box(s.get(Epoch(1), &key(j)).unwrap());
            })
        });
        g.bench_function(format!("get/miss_100k/{name}"), |b| {
            b.iter(|| {
                j += 1;
                black_box(s.get(Epoch(1), &key(1_000_000 + j)).unwrap());
            })
        });
    }
    g.finish();
}

/// One request as a core serves it: parse and decode the frame, call the store, encode the
/// reply (the socket and the event loop excluded).
fn request(c: &mut Criterion) {
    use tarn_proto::frame::{self, Parsed};
    use tarn_proto::msg::{
        Insert, InsertReply, Retrieve, RetrieveReply, RetrieveReplyRef, ValueRef,
    };
    use tarn_proto::{Decoder, Message};

    let value = vec![0x5a; 300];
    // Criterion runs as many inserts as fit its measurement time (a million and more on a
    // fast host): a budget that holds them all keeps the index authoritative throughout, so
    // both benches measure the path a node under its budget takes.
    let (_d, s) = preloaded(4 << 30, &value);
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    let mut decoder = Decoder::new();
    let mut out = Vec::with_capacity(512);
    // `copied`: the reply built from values copied out of the store (`Store::get`), as the
    // node did before the eighth round; otherwise encoded where the store holds them, as the
    // node does (`Store::get_with`).
    let mut serve = |bytes: &[u8], out: &mut Vec<u8>, stamp: u64, copied: bool| {
        let Ok(Parsed::Frame(f)) = frame::parse_frame(bytes, 65536) else {
            panic!("a whole frame")
        };
        let id = f.header.request_id;
        out.clear();
        let reply = match decoder.decode(&f).unwrap() {
            Message::Insert(i) => {
                s.put(i.epoch, i.key, stamp, &i.value).unwrap();
                Message::InsertReply(InsertReply::Stored { copies: 1 })
            }
            Message::Retrieve(r) if copied => {
                let v = s.get(r.epoch, &r.key).unwrap();
                Message::RetrieveReply(RetrieveReply::Found(
                    v.into_iter().map(|x| x.value).collect(),
                ))
            }
            Message::Retrieve(r) => {
                s.get_with(r.epoch, &r.key, &mut |values| {
                    let found = RetrieveReplyRef::Found(values.iter().map(ValueRef).collect());
                    frame::encode_retrieve_reply(id, &found, out).unwrap();
                })
                .unwrap();
                return;
            }
            other => panic!("unexpected {other:?}"),
        };
        frame::encode(id, &reply, out).unwrap();
    };
    let mut j = 0u64;
    let frames: Vec<Vec<u8>> = (0..1024u64)
        .map(|n| {
            j = (j + 7919) % 100_000;
            frame::encode_to_vec(
                n,
                &Message::Retrieve(Retrieve {
                    epoch: Epoch(1),
                    key: key(j),
                }),
            )
            .unwrap()
        })
        .collect();
    let mut n = 0usize;
    for (name, copied) in [
        ("retrieve/hit_100k", false),
        ("retrieve/hit_100k_copied", true),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                n = (n + 1) % frames.len();
                serve(black_box(&frames[n]), &mut out, 0, copied);
            })
        });
    }
    let mut i = 1_000_000u64;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        // As in the node, a thread of its own retires epochs that overflow the index (moving
        // their logs into their partitions), so this measures the request path without that.
        scope.spawn(|| {
            tarn_node::maintenance::apply_journal_while(
                &s,
                || !stop.load(std::sync::atomic::Ordering::Relaxed),
                |outcome, _| {
                    outcome.unwrap();
                },
            )
        });
        g.bench_function("insert/nosync", |b| {
            b.iter(|| {
                i += 1;
                let bytes = frame::encode_to_vec(
                    i,
                    &Message::Insert(Insert {
                        epoch: Epoch(1),
                        key: key(i),
                        value: value.clone(),
                    }),
                )
                .unwrap();
                serve(black_box(&bytes), &mut out, i, false);
            })
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
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

criterion_group!(benches, put_get, request, drop_epoch);
criterion_main!(benches);
