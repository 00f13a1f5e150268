//! Test vectors for presence key derivation (ARCHITECTURE.md) and sealed presence records,
//! checked into `tests/vectors/presence.txt`. Another implementation that derives the same
//! keys and opens the same records interoperates (the key vectors were checked against an
//! independent implementation, Python's `blake3` package, from the formula in ARCHITECTURE.md).
//! After a deliberate format change, run with
//! `TARN_REGEN_VECTORS=1`.

use tarn_client::identity::{Identity, UserId};
use tarn_client::record::{
    open, presence_key, seal_with_ephemeral, Freshness, PresenceRecord, Slot,
};
use tarn_proto::Epoch;

fn render() -> String {
    let mut out = String::new();
    let alice = Identity::from_secrets("alice", [0xa1; 32], [0xa2; 32]);
    let bob = Identity::from_secrets("bob", [0xb1; 32], [0xb2; 32]);
    out.push_str(&format!(
        "identity alice sign_secret={} agree_secret={} user_id={} card={}\n",
        hex::encode([0xa1; 32]),
        hex::encode([0xa2; 32]),
        alice.id().to_hex(),
        alice.card().encode()
    ));
    out.push_str(&format!(
        "identity bob sign_secret={} agree_secret={} user_id={} card={}\n",
        hex::encode([0xb1; 32]),
        hex::encode([0xb2; 32]),
        bob.id().to_hex(),
        bob.card().encode()
    ));
    for (secret, epoch, index) in [
        (&b"correct horse battery staple"[..], 493_000u64, 0u8),
        (&b"correct horse battery staple"[..], 493_000, 4),
        (&b"correct horse battery staple"[..], 493_001, 0),
        (&b""[..], 0, 0),
    ] {
        let k = presence_key(secret, &alice.id(), &bob.id(), Epoch(epoch), index);
        out.push_str(&format!(
            "key secret={} publisher={} receiver={} epoch={epoch} index={index} key={}\n",
            hex::encode(secret),
            alice.id().to_hex(),
            bob.id().to_hex(),
            k.to_hex()
        ));
    }
    let slot = slot(&alice.id(), &bob.id());
    let sealed = seal_with_ephemeral(&alice, &bob.card(), &slot, &record(&alice), [0xe1; 32]);
    out.push_str(&format!(
        "sealed publisher=alice receiver=bob epoch=493000 index=3 ephemeral_secret={} value={}\n",
        hex::encode([0xe1; 32]),
        hex::encode(&sealed)
    ));
    out
}

fn slot(a: &UserId, b: &UserId) -> Slot {
    Slot {
        receiver: *b,
        epoch: Epoch(493_000),
        index: 3,
        key: presence_key(b"correct horse battery staple", a, b, Epoch(493_000), 3),
    }
}

fn record(alice: &Identity) -> PresenceRecord {
    PresenceRecord {
        timestamp_ms: 493_000 * 3_600_000 + 1234,
        contact_info: "tarnexampleabcdefghijklmnopqrstuvwxyz234567abcdefghijkl.onion:7000".into(),
        index: 3,
        publisher: alice.id(),
    }
}

/// The package's directory: taken at run time (cargo sets it for tests), so a test binary built
/// in another checkout sharing the target directory still finds this checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

#[test]
fn presence_keys_and_records_match_checked_in_vectors() {
    let path = manifest_dir().join("tests/vectors/presence.txt");
    let rendered = render();
    if std::env::var_os("TARN_REGEN_VECTORS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&path).expect("vectors file present");
    assert_eq!(
        rendered, expected,
        "derivation or sealing drifted from the vectors"
    );

    // The checked-in sealed value opens to the record.
    let alice = Identity::from_secrets("alice", [0xa1; 32], [0xa2; 32]);
    let bob = Identity::from_secrets("bob", [0xb1; 32], [0xb2; 32]);
    let line = expected.lines().find(|l| l.starts_with("sealed ")).unwrap();
    let value = hex::decode(line.rsplit_once("value=").unwrap().1).unwrap();
    let fresh = Freshness {
        epoch_secs: 3600,
        grace_secs: 600,
    };
    let opened = open(
        &bob,
        &alice.card(),
        &slot(&alice.id(), &bob.id()),
        &value,
        fresh,
    )
    .unwrap();
    assert_eq!(opened, record(&alice));
}
