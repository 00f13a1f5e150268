//! Client-side cryptography: presence key derivation, sealing and opening one presence
//! record, and the CPU side of a full publish round for 100 contacts (5 index slots each).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tarn_client::identity::Identity;
use tarn_client::record::{open, presence_key, seal, Freshness, PresenceRecord, Slot};
use tarn_proto::Epoch;

fn bench(c: &mut Criterion) {
    let alice = Identity::from_secrets("alice", [1; 32], [2; 32]);
    let bob = Identity::from_secrets("bob", [3; 32], [4; 32]);
    let secret = b"a common secret of 32 bytes....!";
    let epoch = Epoch(493_000);
    let slot = Slot {
        receiver: bob.id(),
        epoch,
        index: 2,
        key: presence_key(secret, &alice.id(), &bob.id(), epoch, 2),
    };
    let record = PresenceRecord {
        timestamp_ms: 493_000 * 3_600_000 + 5,
        contact_info: "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvw.onion:7000".into(),
        index: 2,
        publisher: alice.id(),
    };
    let fresh = Freshness {
        epoch_secs: 3600,
        grace_secs: 600,
    };
    let (alice_card, bob_card) = (alice.card(), bob.card());
    let mut g = c.benchmark_group("client");
    g.throughput(Throughput::Elements(1));
    g.bench_function("presence_key", |b| {
        b.iter(|| presence_key(black_box(secret), &alice.id(), &bob.id(), epoch, 2))
    });
    g.bench_function("seal", |b| {
        b.iter(|| seal(&alice, &bob_card, black_box(&slot), &record))
    });
    let sealed = seal(&alice, &bob.card(), &slot, &record);
    g.bench_function("open", |b| {
        b.iter(|| open(&bob, &alice_card, black_box(&slot), &sealed, fresh).unwrap())
    });
    // A publish round: for each of 100 contacts, derive 5 keys and seal 5 records.
    let contacts: Vec<Identity> = (0..100u8)
        .map(|i| Identity::from_secrets("c", [i; 32], [i.wrapping_add(100); 32]))
        .collect();
    let cards: Vec<_> = contacts.iter().map(Identity::card).collect();
    g.throughput(Throughput::Elements(500));
    g.bench_function("publish_round_100_contacts", |b| {
        b.iter(|| {
            let mut total = 0usize;
            for card in &cards {
                for index in 0..5u8 {
                    let key = presence_key(secret, &alice.id(), &card.id(), epoch, index);
                    let slot = Slot {
                        receiver: card.id(),
                        epoch,
                        index,
                        key,
                    };
                    let r = PresenceRecord {
                        index,
                        ..record.clone()
                    };
                    total += seal(&alice, card, &slot, &r).len();
                }
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
