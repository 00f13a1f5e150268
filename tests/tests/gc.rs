//! With 2-second epochs, an expired epoch's records vanish at the boundary and current ones
//! stay.

use std::time::Duration;

use tarn_proto::msg::RetrieveReply;
use tarn_proto::Epoch;
use tarn_tests::{key, metric, Node};

#[tokio::test]
async fn expired_epochs_are_dropped_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--epoch-secs", "2"]);
    let c = node.client().await;
    let now = |t: tarn_proto::msg::TimeReply| Epoch::at_unix_ns(t.unix_ns, 2);
    let e0 = now(c.time().await.unwrap());
    c.insert(e0, key(1), b"old".to_vec()).await.unwrap();
    // Records of e0 live through the end of e0 + 1 + grace(1) = e0 + 2; gone once e0 + 3 starts.
    loop {
        let e = now(c.time().await.unwrap());
        if e.0 >= e0.0 + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        c.retrieve(e0, key(1)).await.unwrap(),
        RetrieveReply::Found(vec![b"old".to_vec()]),
        "still live"
    );
    let e2 = now(c.time().await.unwrap());
    c.insert(e2, key(2), b"new".to_vec()).await.unwrap();
    loop {
        let e = now(c.time().await.unwrap());
        if e.0 >= e0.0 + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // GC runs within 50 ms of the boundary.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.retrieve(e0, key(1)).await.unwrap(),
        RetrieveReply::NotFound
    );
    assert_eq!(
        c.retrieve(e2, key(2)).await.unwrap(),
        RetrieveReply::Found(vec![b"new".to_vec()])
    );
    let status = c.status().await.unwrap();
    assert!(
        status.epochs.iter().all(|s| s.epoch > e0),
        "{:?}",
        status.epochs
    );
    let text = node.scrape();
    assert!(metric(&text, "tarn_gc_epochs_dropped_total").unwrap() >= 1.0);
}
