//! Registry operations against a real ring: a publisher's sealed records, one per index slot,
//! inserted through different nodes, found and opened by the receiver through different nodes;
//! a forged record in the same slot is ignored; the median time over the nodes.

use std::sync::Arc;

use tarn_client::identity::Identity;
use tarn_client::profile::Contact;
use tarn_client::record::Freshness;
use tarn_client::registry::{local_ms, Registry};
use tarn_client::{NodeClient, NodeOptions};
use tarn_tests::start_ring;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_presence_is_found_and_forgeries_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_ring(dir.path(), 4, &[]).await;
    let mut conns = Vec::new();
    for n in &nodes {
        conns.push(Arc::new(
            NodeClient::connect(&n.addr, &NodeOptions::default())
                .await
                .unwrap(),
        ));
    }
    let fresh = Freshness {
        epoch_secs: 3600,
        grace_secs: 600,
    };
    let reg = Registry::new(conns, fresh);
    let t = reg.sync_time().await.unwrap();
    assert_eq!(t.answers, 4);
    assert!(t.offset_ms.abs() < 1000, "{t:?}");
    let epoch = t.epoch(local_ms());

    let alice = Identity::generate("alice");
    let bob = Identity::generate("bob");
    let secret = b"shared out of band".to_vec();
    let bob_as_seen_by_alice = Contact {
        name: "bob".into(),
        card: bob.card(),
        secrets: vec![secret.clone()],
    };
    let alice_as_seen_by_bob = Contact {
        name: "alice".into(),
        card: alice.card(),
        secrets: vec![secret.clone()],
    };
    let report = reg
        .publish(
            &alice,
            &bob_as_seen_by_alice,
            epoch,
            "alice.onion:7000",
            t.corrected_ms(local_ms()),
        )
        .await;
    assert_eq!((report.stored, report.failed), (5, 0));
    let got = reg
        .retrieve(&bob, &alice_as_seen_by_bob, epoch)
        .await
        .expect("bob finds alice");
    assert_eq!(got.contact_info, "alice.onion:7000");
    assert_eq!(got.publisher, alice.id());

    // Eve knows bob's card and even the slot keys (say, the secret leaked), but not alice's
    // signing key: her record in the same slots is ignored, alice's still wins.
    let eve = Identity::generate("eve");
    let eve_pretending = Contact {
        name: "bob".into(),
        card: bob.card(),
        secrets: vec![secret.clone()],
    };
    let later = t.corrected_ms(local_ms()) + 10_000;
    let _ = reg
        .publish(&eve, &eve_pretending, epoch, "evil.onion:1", later)
        .await;
    let got = reg
        .retrieve(&bob, &alice_as_seen_by_bob, epoch)
        .await
        .unwrap();
    assert_eq!(got.contact_info, "alice.onion:7000");

    // Without the common secret nothing is found.
    let stranger = Contact {
        name: "alice".into(),
        card: alice.card(),
        secrets: vec![b"wrong".to_vec()],
    };
    assert!(reg.retrieve(&bob, &stranger, epoch).await.is_none());
}
