//! The behaviour every Store backend must share, run against both.

use std::ops::ControlFlow;
use std::sync::Arc;

use tarn_proto::{Epoch, Id, Key};
use tarn_store::{
    EngineStat, Limits, MemoryStore, PutItem, RocksOptions, RocksStore, Store, StoreError,
    WalPolicy,
};

fn limits() -> Limits {
    Limits {
        max_value_bytes: 64,
        max_values_per_key: 3,
        max_total_bytes: 10_000,
    }
}

fn key(n: u8) -> Key {
    Key([n; 32])
}

fn rocks(index_bytes: u64) -> (Box<dyn Store>, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksStore::open(
        dir.path(),
        RocksOptions {
            limits: limits(),
            index_bytes,
            ..Default::default()
        },
    )
    .unwrap();
    (Box::new(rocks), Some(dir))
}

/// A RocksDB store at `dir` with the test limits but no quota, and `opts` otherwise.
fn open_rocks(dir: &std::path::Path, opts: RocksOptions) -> RocksStore {
    RocksStore::open(
        dir,
        RocksOptions {
            limits: Limits {
                max_total_bytes: 0,
                ..limits()
            },
            ..opts
        },
    )
    .unwrap()
}

/// A RocksDB store at `dir` as [`open_rocks`] opens it, with an index of `index_bytes`.
fn open_indexed(dir: &std::path::Path, index_bytes: u64) -> RocksStore {
    open_rocks(
        dir,
        RocksOptions {
            index_bytes,
            ..Default::default()
        },
    )
}

/// The memory store, and RocksDB with its live-epoch index (default budget), without it, and
/// with a budget so small that epochs overflow it mid-test.
fn backends() -> Vec<(Box<dyn Store>, Option<tempfile::TempDir>)> {
    vec![
        (Box::new(MemoryStore::new(limits())), None),
        rocks(RocksOptions::default().index_bytes),
        rocks(0),
        rocks(600),
    ]
}

#[test]
fn the_index_is_rebuilt_at_open_and_answers_like_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let open = |index_bytes| open_indexed(dir.path(), index_bytes);
    let s = open(1 << 20);
    for i in 0..200u64 {
        let k = key((i % 50) as u8);
        s.put(Epoch(1 + i % 2), k, i, format!("v{i}").as_bytes())
            .unwrap();
    }
    let answers = |s: &RocksStore| {
        (0..60u8)
            .flat_map(|k| [1, 2, 3].map(|e| s.get(Epoch(e), &key(k)).unwrap()))
            .collect::<Vec<_>>()
    };
    let live = answers(&s);
    assert!(
        live.iter().any(|v| v.len() == 3),
        "sets are bounded and merged"
    );
    drop(s);
    // Reopened with the index (filled by the open scan) and without: the same answers.
    assert_eq!(answers(&open(1 << 20)), live);
    assert_eq!(answers(&open(0)), live);
}

#[test]
fn put_then_get() {
    for (s, _d) in backends() {
        s.put(Epoch(5), key(1), 10, b"hello").unwrap();
        let got = s.get(Epoch(5), &key(1)).unwrap();
        assert_eq!(got.len(), 1, "{s:?}");
        assert_eq!(got[0].value, b"hello");
        assert!(s.get(Epoch(6), &key(1)).unwrap().is_empty());
        assert!(s.get(Epoch(5), &key(2)).unwrap().is_empty());
    }
}

#[test]
fn get_with_lends_each_read_exactly_once() {
    for (s, _d) in backends() {
        s.put(Epoch(5), key(1), 10, b"older").unwrap();
        s.put(Epoch(5), key(1), 11, b"newer").unwrap();
        // A hit, a miss, and an epoch with no partition: one call each, never none or two.
        for (epoch, k, want) in [
            (5, 1, vec![b"newer".to_vec(), b"older".to_vec()]),
            (5, 2, vec![]),
            (9, 1, vec![]),
        ] {
            let mut calls = Vec::new();
            s.get_with(Epoch(epoch), &key(k), &mut |values| {
                assert_eq!(values.len(), values.iter().count(), "{s:?}");
                calls.push(values.iter().map(<[u8]>::to_vec).collect::<Vec<_>>());
            })
            .unwrap();
            assert_eq!(calls, [want], "{s:?} epoch {epoch} key {k}");
        }
    }
}

#[test]
fn full_key_evicts_lowest_order_and_keeps_newest() {
    for (s, _d) in backends() {
        for stamp in 1..=6u64 {
            s.put(Epoch(1), key(1), stamp, format!("v{stamp}").as_bytes())
                .unwrap();
        }
        let got = s.get(Epoch(1), &key(1)).unwrap();
        let stamps: Vec<u64> = got.iter().map(|v| v.stamp).collect();
        assert_eq!(stamps, vec![6, 5, 4], "{s:?}");
        assert_eq!(got[0].value, b"v6");
    }
}

#[test]
fn duplicates_collapse() {
    for (s, _d) in backends() {
        s.put(Epoch(1), key(1), 1, b"same").unwrap();
        s.put(Epoch(1), key(1), 2, b"same").unwrap();
        let got = s.get(Epoch(1), &key(1)).unwrap();
        assert_eq!(got.len(), 1, "{s:?}");
        assert_eq!(got[0].stamp, 2);
    }
}

#[test]
fn limits_are_typed_errors() {
    for (s, _d) in backends() {
        let big = vec![0u8; 65];
        assert_eq!(
            s.put(Epoch(1), key(1), 1, &big),
            Err(StoreError::TooLarge { len: 65, max: 64 })
        );
        // Quota 10_000 bytes: 156 values of 64 bytes fit, the next does not.
        for i in 0..156u32 {
            s.put(
                Epoch(1),
                Key(blake3::hash(&i.to_le_bytes()).into()),
                1,
                &[1; 64],
            )
            .unwrap();
        }
        assert_eq!(
            s.put(Epoch(1), key(9), 1, &[1; 64]),
            Err(StoreError::OverQuota { quota: 10_000 })
        );
        assert_eq!(s.stats().total_bytes, 156 * 64);
    }
}

#[test]
fn batch_results_are_per_item() {
    for (s, _d) in backends() {
        let big = [0u8; 100];
        let items = [
            PutItem {
                epoch: Epoch(3),
                key: key(1),
                stamp: 1,
                value: b"a",
            },
            PutItem {
                epoch: Epoch(3),
                key: key(2),
                stamp: 1,
                value: &big,
            },
            PutItem {
                epoch: Epoch(4),
                key: key(3),
                stamp: 1,
                value: b"c",
            },
        ];
        let r = s.put_batch(&items);
        assert!(r[0].is_ok() && r[2].is_ok(), "{s:?}");
        assert!(matches!(r[1], Err(StoreError::TooLarge { .. })));
        assert_eq!(s.get(Epoch(4), &key(3)).unwrap()[0].value, b"c");
    }
}

#[test]
fn dropping_epochs_removes_them_and_refuses_writes() {
    for (s, _d) in backends() {
        for e in 1..=5 {
            s.put(Epoch(e), key(1), e, b"x").unwrap();
        }
        let report = s.drop_epochs_before(Epoch(4)).unwrap();
        assert_eq!(report.dropped, vec![Epoch(1), Epoch(2), Epoch(3)], "{s:?}");
        assert_eq!(report.records, 3);
        assert!(s.get(Epoch(3), &key(1)).unwrap().is_empty());
        assert_eq!(s.get(Epoch(4), &key(1)).unwrap().len(), 1);
        assert_eq!(s.live_epochs(), vec![Epoch(4), Epoch(5)]);
        assert_eq!(
            s.put(Epoch(2), key(1), 9, b"late"),
            Err(StoreError::Expired {
                epoch: Epoch(2),
                oldest_live: Epoch(4)
            })
        );
        // prepare never resurrects an expired epoch
        s.prepare_epochs(Epoch(1), Epoch(7)).unwrap();
        assert_eq!(
            s.live_epochs(),
            vec![Epoch(4), Epoch(5), Epoch(6), Epoch(7)]
        );
        assert_eq!(s.stats().total_bytes, 2);
    }
}

#[test]
fn scan_range_covers_wrapping_intervals() {
    for (s, _d) in backends() {
        for n in [0x10u8, 0x80, 0xf0] {
            s.put(Epoch(1), key(n), 1, &[n]).unwrap();
            s.put(Epoch(2), key(n), 1, &[n]).unwrap();
        }
        let collect = |after: Id, upto: Id| {
            let mut seen = Vec::new();
            s.scan_range(after, upto, &mut |e, k, v| {
                assert_eq!(v[0].value, vec![k.0[0]]);
                seen.push((e.0, k.0[0]));
                ControlFlow::Continue(())
            })
            .unwrap();
            seen
        };
        assert_eq!(
            collect(Id([0x10; 32]), Id([0x80; 32])),
            vec![(1, 0x80), (2, 0x80)],
            "{s:?}"
        );
        assert_eq!(
            collect(Id([0x80; 32]), Id([0x10; 32])),
            vec![(1, 0xf0), (1, 0x10), (2, 0xf0), (2, 0x10)]
        );
        assert_eq!(collect(Id([0x20; 32]), Id([0x20; 32])).len(), 6);
        let mut n = 0;
        s.scan_range(Id([0; 32]), Id([0; 32]), &mut |_, _, _| {
            n += 1;
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(n, 1);
    }
}

#[test]
fn rocks_reopen_keeps_records_partitions_and_figures() {
    let dir = tempfile::tempdir().unwrap();
    let opts = RocksOptions {
        limits: limits(),
        wal: WalPolicy::NoSync,
        ..Default::default()
    };
    {
        let s = RocksStore::open(dir.path(), opts.clone()).unwrap();
        s.prepare_epochs(Epoch(10), Epoch(12)).unwrap();
        for i in 0..100u8 {
            s.put(Epoch(10 + (i % 2) as u64), key(i), 1, &[i; 10])
                .unwrap();
        }
        s.drop_epochs_before(Epoch(10)).unwrap();
    }
    let s = RocksStore::open(dir.path(), opts).unwrap();
    assert_eq!(s.live_epochs(), vec![Epoch(10), Epoch(11), Epoch(12)]);
    assert_eq!(s.get(Epoch(11), &key(7)).unwrap()[0].value, vec![7; 10]);
    let stats = s.stats();
    assert_eq!(stats.total_bytes, 1000);
    assert_eq!(stats.epochs.iter().map(|e| e.records).sum::<u64>(), 100);
    // The floor is restored from the oldest partition: nothing older can be recreated.
    assert!(matches!(
        s.put(Epoch(9), key(1), 1, b"x"),
        Err(StoreError::Expired { .. })
    ));
}

#[test]
fn rocks_partitions_change_while_other_threads_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(RocksStore::open(dir.path(), RocksOptions::default()).unwrap());
    let writers: Vec<_> = (0..2u8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..2000u32 {
                    let e = Epoch(100 + (i / 200) as u64);
                    let mut k = [t; 32];
                    k[..4].copy_from_slice(&i.to_be_bytes());
                    match s.put(e, Key(k), i as u64, b"v") {
                        Ok(()) | Err(StoreError::Expired { .. }) => {}
                        Err(other) => panic!("unexpected {other}"),
                    }
                }
            })
        })
        .collect();
    for step in 0..10u64 {
        s.prepare_epochs(Epoch(100 + step), Epoch(102 + step))
            .unwrap();
        s.drop_epochs_before(Epoch(100 + step.saturating_sub(2)))
            .unwrap();
    }
    for w in writers {
        w.join().unwrap();
    }
    assert!(s.live_epochs().iter().all(|e| e.0 >= 107));
}

fn index_bytes(s: &dyn Store) -> u64 {
    s.engine_stats()
        .into_iter()
        .find(|(stat, _)| *stat == EngineStat::IndexBytes)
        .map(|(_, v)| v)
        .unwrap_or(0)
}

fn journal_bytes(s: &dyn Store) -> u64 {
    s.engine_stats()
        .into_iter()
        .find(|(stat, _)| *stat == EngineStat::JournalBytes)
        .map(|(_, v)| v)
        .unwrap_or(0)
}

#[test]
fn logged_values_survive_a_reopen_without_an_apply() {
    let dir = tempfile::tempdir().unwrap();
    let open = |index_bytes| {
        open_rocks(
            dir.path(),
            RocksOptions {
                wal: WalPolicy::NoSync,
                index_bytes,
                ..Default::default()
            },
        )
    };
    let s = open(1 << 20);
    for i in 0..300u64 {
        s.put(
            Epoch(1 + i % 2),
            key((i % 100) as u8),
            i,
            format!("v{i}").as_bytes(),
        )
        .unwrap();
    }
    assert!(journal_bytes(&s) > 0, "indexed epochs are logged");
    let live: Vec<_> = (0..100u8)
        .map(|k| s.get(Epoch(1), &key(k)).unwrap())
        .collect();
    // Applying moves nothing while the index holds the epochs; a scan finds every key (from
    // the index: the partitions hold none of them).
    assert_eq!(s.apply_journal().unwrap(), 0);
    let mut scanned = Vec::new();
    s.scan_range(Id([0; 32]), Id([0; 32]), &mut |e, k, v| {
        scanned.push((e, k, v.len()));
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(scanned.len(), 100);
    assert!(
        scanned.iter().all(|(_, _, n)| *n == 3),
        "three values per key"
    );
    // Closed with everything still in the logs: what a crash after the acknowledgements
    // leaves (the log entries are in RocksDB's WAL or flushed files), and a crash mid-apply
    // leaves a half-built SST file behind.
    drop(s);
    let orphan = dir.path().join("ingest/00000000deadbeef.sst");
    std::fs::write(&orphan, b"half an SST").unwrap();
    // Reopened without the index, every read goes to the partitions: the open moved the logs
    // there.
    let s = open(0);
    assert_eq!(journal_bytes(&s), 0);
    assert!(!orphan.exists(), "half-built files are removed at open");
    let reread: Vec<_> = (0..100u8)
        .map(|k| s.get(Epoch(1), &key(k)).unwrap())
        .collect();
    assert_eq!(reread, live);
    assert_eq!(s.stats().epochs.iter().map(|e| e.records).sum::<u64>(), 300);
    drop(s);
    // And once more with the index, filled from the partitions.
    let s = open(1 << 20);
    let again: Vec<_> = (0..100u8)
        .map(|k| s.get(Epoch(1), &key(k)).unwrap())
        .collect();
    assert_eq!(again, live);
    let mut rescanned = Vec::new();
    s.scan_range(Id([0; 32]), Id([0; 32]), &mut |e, k, v| {
        rescanned.push((e, k, v.len()));
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(rescanned, scanned);
}

#[test]
fn each_log_moved_into_its_partition_adds_a_sorted_run_that_the_backlog_figure_counts() {
    let dir = tempfile::tempdir().unwrap();
    let runs = |s: &RocksStore| {
        s.engine_stats()
            .into_iter()
            .find(|(stat, _)| *stat == EngineStat::MaxSortedRuns)
            .map(|(_, v)| v)
    };
    let without_index = || open_indexed(dir.path(), 0);
    let s = open_rocks(dir.path(), RocksOptions::default());
    assert_eq!(
        runs(&s),
        Some(0),
        "a store without partitions has no backlog"
    );
    drop(s);
    // Three rounds of logged values whose keys span the same range (as hashed keys do), each
    // moved into the partition by an open without an index (nothing to replay the log into)
    // as one ingested file: three sorted runs, far below the 16 that start a compaction.
    for round in 0..3u8 {
        let s = open_rocks(dir.path(), RocksOptions::default());
        for i in 0..20u8 {
            s.put(Epoch(5), key(i * 12 + round), 1, &[i; 40]).unwrap();
        }
        // Another epoch's single file does not add to the most in one partition.
        if round == 2 {
            s.put(Epoch(6), key(1), 1, b"v").unwrap();
        }
        assert_eq!(s.apply_journal().unwrap(), 0, "nothing overflowed");
        assert!(journal_bytes(&s) > 0);
        drop(s);
        drop(without_index());
    }
    let s = without_index();
    assert_eq!(runs(&s), Some(3));
    assert_eq!(
        journal_bytes(&s),
        0,
        "the opens dropped the logs they moved"
    );
}

#[test]
fn a_reopened_log_is_replayed_into_the_index_and_kept_or_moved_when_it_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let open = |index_bytes| open_indexed(dir.path(), index_bytes);
    let s = open(1 << 20);
    for i in 0..50u8 {
        s.put(Epoch(4), key(i), 1, &[i; 60]).unwrap();
    }
    drop(s);
    // Replayed into the index, and the log stays (nothing moved into the partition)...
    let s = open(1 << 20);
    assert!(journal_bytes(&s) > 0);
    assert!(index_bytes(&s) > 50 * 60);
    // ...and takes later entries under keys of its own: an entry that reused a key would
    // replace an acknowledged one.
    for i in 50..100u8 {
        s.put(Epoch(4), key(i), 1, &[i; 60]).unwrap();
    }
    s.put(Epoch(4), key(3), 2, b"second").unwrap();
    drop(s);
    let s = open(1 << 20);
    for i in 0..100u8 {
        let got = s.get(Epoch(4), &key(i)).unwrap();
        assert_eq!(got.last().unwrap().value, vec![i; 60], "key {i}");
    }
    assert_eq!(s.get(Epoch(4), &key(3)).unwrap().len(), 2);
    assert_eq!(s.stats().epochs.iter().map(|e| e.records).sum::<u64>(), 101);
    drop(s);
    // Reopened with an index too small for the epoch: its log goes into the partition, the
    // epoch is read from there, and the figures are the same.
    let s = open(2 << 10);
    assert_eq!(journal_bytes(&s), 0);
    assert!(index_bytes(&s) < 2 << 10);
    for i in 0..100u8 {
        let got = s.get(Epoch(4), &key(i)).unwrap();
        assert_eq!(got.last().unwrap().value, vec![i; 60], "key {i}");
    }
    assert_eq!(s.stats().epochs.iter().map(|e| e.records).sum::<u64>(), 101);
}

#[test]
fn an_overflowing_epoch_is_retired_only_after_its_log_is_in_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_indexed(dir.path(), 8 << 10);
    // Logged while the index holds the epoch, then over the budget.
    for i in 0..200u8 {
        s.put(Epoch(3), key(i), 1, &[i; 60]).unwrap();
    }
    assert!(journal_bytes(&s) > 0);
    // Until the log is applied, the index still answers (the partition lacks the early values).
    for i in 0..200u8 {
        assert_eq!(s.get(Epoch(3), &key(i)).unwrap()[0].value, vec![i; 60]);
    }
    let overflowed = |s: &RocksStore| {
        s.engine_stats()
            .into_iter()
            .find(|(stat, _)| *stat == EngineStat::OverflowedEpochs)
            .map(|(_, v)| v)
    };
    assert_eq!(overflowed(&s), Some(1));
    assert!(s.apply_journal().unwrap() > 0);
    assert_eq!(journal_bytes(&s), 0);
    assert_eq!(overflowed(&s), Some(0));
    // Retired: the index let go of the epoch, and RocksDB answers with every value.
    assert!(index_bytes(&s) < 8 << 10);
    for i in 0..200u8 {
        assert_eq!(s.get(Epoch(3), &key(i)).unwrap()[0].value, vec![i; 60]);
    }
    // Later writes to it go straight to RocksDB and are read back from there.
    s.put(Epoch(3), key(7), 2, b"later").unwrap();
    assert_eq!(journal_bytes(&s), 0);
    assert_eq!(
        s.get(Epoch(3), &key(7)).unwrap()[0].value,
        b"later".to_vec()
    );
}

#[test]
fn retiring_overflowed_epochs_races_writes_and_expiry_without_losing_a_live_value() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open_rocks(
        dir.path(),
        RocksOptions {
            // Small enough that epochs overflow (and are retired) during the run.
            index_bytes: 256 << 10,
            ..Default::default()
        },
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let applier = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s.apply_journal().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let writers: Vec<_> = (0..2u8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut written = Vec::new();
                for i in 0..3000u32 {
                    let e = Epoch(200 + (i / 300) as u64);
                    let mut k = [t; 32];
                    k[..4].copy_from_slice(&i.to_be_bytes());
                    match s.put(e, Key(k), i as u64, &[t; 40]) {
                        Ok(()) => written.push((e, Key(k))),
                        Err(StoreError::Expired { .. }) => {}
                        Err(other) => panic!("unexpected {other}"),
                    }
                }
                written
            })
        })
        .collect();
    for step in 0..10u64 {
        s.prepare_epochs(Epoch(200 + step), Epoch(202 + step))
            .unwrap();
        s.drop_epochs_before(Epoch(200 + step.saturating_sub(3)))
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let written: Vec<_> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    applier.join().unwrap();
    s.apply_journal().unwrap();
    let floor = s.live_epochs()[0];
    let mut checked = 0;
    for (e, k) in written.iter().filter(|(e, _)| *e >= floor) {
        assert_eq!(
            s.get(*e, k).unwrap().len(),
            1,
            "an acknowledged value of a live epoch"
        );
        checked += 1;
    }
    assert!(
        checked > 1000,
        "most writes were to live epochs ({checked})"
    );
    // A scan finds them too (from the index, or the partition of an epoch retired from it).
    let mut scanned = 0;
    s.scan_range(Id([0; 32]), Id([0; 32]), &mut |_, _, _| {
        scanned += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(scanned, checked);
    // And after a reopen, with the index (logs replayed) and without (logs moved).
    drop(Arc::try_unwrap(s).expect("the threads are done"));
    for index_bytes in [256 << 10, 0] {
        let s = open_indexed(dir.path(), index_bytes);
        let lost = written
            .iter()
            .filter(|(e, _)| *e >= floor)
            .filter(|(e, k)| s.get(*e, k).unwrap().len() != 1)
            .count();
        assert_eq!(
            lost, 0,
            "values lost after a reopen with index_bytes {index_bytes}"
        );
    }
}

#[test]
fn an_epochs_log_goes_with_it_and_without_the_journal_writes_go_to_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let open = |journal| {
        open_rocks(
            dir.path(),
            RocksOptions {
                journal,
                ..Default::default()
            },
        )
    };
    let s = open(true);
    s.prepare_epochs(Epoch(6), Epoch(7)).unwrap();
    for i in 0..250u8 {
        s.put(Epoch(6), key(i), 1, &[i; 50]).unwrap();
    }
    s.put(Epoch(7), key(1), 1, b"next").unwrap();
    let both = journal_bytes(&s);
    assert!(both > 250 * 50, "{both}");
    // Expiry drops an epoch's log with its partition.
    let report = s.drop_epochs_before(Epoch(7)).unwrap();
    assert_eq!(report.dropped, vec![Epoch(6)]);
    assert!(journal_bytes(&s) < both - 250 * 50);
    assert_eq!(
        s.get(Epoch(6), &key(1)).unwrap(),
        vec![],
        "expired with its epoch"
    );
    drop(s);
    // No journal: the open found no log of epoch 6 to bring back and replayed epoch 7's into
    // the index (it stays until the epoch expires), and a new value goes to its partition.
    let s = open(false);
    assert_eq!(s.live_epochs(), vec![Epoch(7)]);
    let kept = journal_bytes(&s);
    assert!(kept > 0);
    s.put(Epoch(7), key(2), 2, b"direct").unwrap();
    assert_eq!(journal_bytes(&s), kept);
    assert_eq!(
        s.get(Epoch(7), &key(2)).unwrap()[0].value,
        b"direct".to_vec()
    );
    assert_eq!(s.get(Epoch(7), &key(1)).unwrap()[0].value, b"next".to_vec());
}

/// One log entry as the store writes it (and earlier builds' journal did): for each `(key,
/// stamp, value)`, `epoch:u64le | key | len:u32le | operand` back to back.
fn log_entry(epoch: u64, records: &[(u8, u64, &[u8])]) -> Vec<u8> {
    let mut entry = Vec::new();
    for &(k, stamp, value) in records {
        let mut operand = Vec::new();
        tarn_store::valueset::encode_one(stamp, value, &mut operand);
        entry.extend_from_slice(&epoch.to_le_bytes());
        entry.extend_from_slice(&key(k).0);
        entry.extend_from_slice(&(operand.len() as u32).to_le_bytes());
        entry.extend_from_slice(&operand);
    }
    entry
}

#[test]
fn a_store_with_the_single_journal_of_earlier_builds_opens_with_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let partition = "e-00000000000000000009";
    {
        // What an earlier build left after a crash: an acknowledged batch in the `journal`
        // column family (key: sequence number; value: epoch | key | length | operand, back to
        // back), not yet applied to the epoch's partition.
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, dir.path(), ["journal", partition]).unwrap();
        let entry = log_entry(9, &[(1, 7, b"one"), (2, 7, b"two")]);
        let journal = db.cf_handle("journal").unwrap();
        db.put_cf(&journal, 0u64.to_be_bytes(), &entry).unwrap();
    }
    let s = open_rocks(dir.path(), RocksOptions::default());
    assert_eq!(s.get(Epoch(9), &key(1)).unwrap()[0].value, b"one".to_vec());
    assert_eq!(s.get(Epoch(9), &key(2)).unwrap()[0].value, b"two".to_vec());
    assert_eq!(s.stats().epochs.iter().map(|e| e.records).sum::<u64>(), 2);
    drop(s);
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
    assert!(!cfs.iter().any(|c| c == "journal"), "{cfs:?}");
}

#[test]
fn a_log_whose_partition_is_gone_is_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What a crash between an expiry's two drops leaves: the log of an epoch whose
        // partition is gone, beside a live epoch.
        let s = open_rocks(dir.path(), RocksOptions::default());
        s.put(Epoch(4), key(1), 1, b"live").unwrap();
    }
    {
        let mut opts = rocksdb::Options::default();
        opts.create_missing_column_families(true);
        let mut cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
        cfs.push("j-00000000000000000003".into());
        let db = rocksdb::DB::open_cf(&opts, dir.path(), &cfs).unwrap();
        let entry = log_entry(3, &[(2, 1, b"expired")]);
        let log = db.cf_handle("j-00000000000000000003").unwrap();
        db.put_cf(&log, 0u64.to_be_bytes(), &entry).unwrap();
    }
    let s = open_rocks(dir.path(), RocksOptions::default());
    assert_eq!(s.live_epochs(), vec![Epoch(4)]);
    assert_eq!(s.get(Epoch(3), &key(2)).unwrap(), vec![]);
    assert_eq!(s.get(Epoch(4), &key(1)).unwrap()[0].value, b"live".to_vec());
    drop(s);
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
    assert!(
        !cfs.iter().any(|c| c.ends_with("00000000000000000003")),
        "{cfs:?}"
    );
}

#[test]
fn a_log_of_rewritten_keys_is_moved_into_the_partition_while_the_index_answers() {
    let dir = tempfile::tempdir().unwrap();
    let open = |index_bytes| open_indexed(dir.path(), index_bytes);
    let newest = |s: &RocksStore| -> Vec<Vec<u64>> {
        (0..4u8)
            .map(|k| {
                let got = s.get(Epoch(8), &key(k)).unwrap();
                got.iter().map(|v| v.stamp).collect()
            })
            .collect()
    };
    let s = open(1 << 20);
    // Four keys rewritten over and over: the index keeps each key's three newest values, the
    // log every write.
    for stamp in 1..=4000u64 {
        s.put(Epoch(8), key((stamp % 4) as u8), stamp, &[stamp as u8; 60])
            .unwrap();
    }
    let expected = vec![
        vec![4000, 3996, 3992],
        vec![3997, 3993, 3989],
        vec![3998, 3994, 3990],
        vec![3999, 3995, 3991],
    ];
    assert_eq!(newest(&s), expected);
    // Closed and reopened, so the log is in files (the close flushes it) and its bytes are
    // counted from the replay.
    drop(s);
    let s = open(1 << 20);
    assert_eq!(newest(&s), expected);
    let before = journal_bytes(&s);
    assert!(before > 4000 * 60, "{before}");
    // The log holds far more than the epoch's live values: it goes into the partition (where
    // compaction folds the rewrites), the log's files are rewritten without it, and the index
    // keeps answering.
    assert_eq!(s.apply_journal().unwrap(), 4000);
    assert!(journal_bytes(&s) < before / 10, "{}", journal_bytes(&s));
    assert_eq!(newest(&s), expected);
    assert_eq!(s.apply_journal().unwrap(), 0, "nothing left to move");
    // Writes go on into the log; both halves are there after reopens, with and without the
    // index.
    s.put(Epoch(8), key(0), 5000, b"after").unwrap();
    let mut after = expected.clone();
    after[0] = vec![5000, 4000, 3996];
    assert_eq!(newest(&s), after);
    drop(s);
    for index_bytes in [1 << 20, 0] {
        let s = open(index_bytes);
        assert_eq!(newest(&s), after, "index_bytes {index_bytes}");
    }
}

#[test]
fn a_store_on_a_filesystem_without_direct_io_still_flushes() {
    // Flushes bypass the page cache where the filesystem takes O_DIRECT; tmpfs before Linux 6.6
    // refuses it, and flushes must then go through the page cache, or the first one (here: the
    // log trim's) would fail. Where there is no /dev/shm, an ordinary directory runs the same
    // steps.
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let s = open_indexed(dir.path(), 1 << 20);
    for stamp in 1..=3000u64 {
        s.put(Epoch(2), key((stamp % 2) as u8), stamp, &[1; 60])
            .unwrap();
    }
    assert_eq!(
        s.apply_journal().unwrap(),
        3000,
        "the log was moved and flushed"
    );
    drop(s);
    let s = open_rocks(dir.path(), RocksOptions::default());
    assert_eq!(s.get(Epoch(2), &key(0)).unwrap()[0].stamp, 3000);
    assert_eq!(s.get(Epoch(2), &key(1)).unwrap()[0].stamp, 2999);
}

#[test]
fn a_log_entry_under_a_malformed_key_is_a_typed_error_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open_rocks(dir.path(), RocksOptions::default());
        s.put(Epoch(4), key(1), 1, b"live").unwrap();
    }
    {
        // A corrupt log: an entry under a key that is no sequence number.
        let opts = rocksdb::Options::default();
        let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&opts, dir.path(), &cfs).unwrap();
        let log = db.cf_handle("j-00000000000000000004").unwrap();
        db.put_cf(&log, b"bad", log_entry(4, &[(2, 2, b"v")]))
            .unwrap();
    }
    // Kept (replayed into the index) or moved (no index): refused either way, not skipped.
    for index_bytes in [1 << 20, 0] {
        match RocksStore::open(
            dir.path(),
            RocksOptions {
                index_bytes,
                ..Default::default()
            },
        ) {
            Err(StoreError::Engine { detail, .. }) => {
                assert!(detail.contains("malformed log key"), "{detail}")
            }
            other => panic!("index_bytes {index_bytes}: {other:?}"),
        }
    }
}
