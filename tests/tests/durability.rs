//! Acknowledged records survive a graceful restart and kill -9.

use tarn_proto::msg::{InsertReply, RetrieveReply};
use tarn_tests::{epoch_now, key, Node};

async fn insert_many(node: &Node, n: u64) -> tarn_proto::Epoch {
    let c = std::sync::Arc::new(node.client().await);
    let e = epoch_now(3600);
    let mut tasks = Vec::new();
    for chunk in 0..8u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in (chunk..n).step_by(8) {
                let r = c.insert(e, key(i), i.to_be_bytes().to_vec()).await.unwrap();
                assert_eq!(r, InsertReply::Stored { copies: 1 });
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    e
}

async fn check_all(node: &Node, e: tarn_proto::Epoch, n: u64) {
    let c = node.client().await;
    for i in 0..n {
        assert_eq!(
            c.retrieve(e, key(i)).await.unwrap(),
            RetrieveReply::Found(vec![i.to_be_bytes().to_vec()]),
            "record {i} lost"
        );
    }
}

#[tokio::test]
async fn records_survive_sigterm_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]);
    let e = insert_many(&node, 2000).await;
    assert_eq!(
        node.terminate(),
        Some(0),
        "graceful stop exits 0; logs:\n{}",
        node.logs()
    );
    node.restart();
    check_all(&node, e, 2000).await;
    let status = node.client().await.status().await.unwrap();
    assert_eq!(status.epochs.iter().map(|s| s.records).sum::<u64>(), 2000);
}

#[tokio::test]
async fn acknowledged_records_survive_kill_9() {
    for wal in ["periodic", "every-write"] {
        let dir = tempfile::tempdir().unwrap();
        let mut node = Node::start(dir.path(), &["--wal", wal]);
        let e = insert_many(&node, 3000).await;
        // Killed right after the last acknowledgement, before any periodic sync could run.
        node.kill9();
        node.restart();
        check_all(&node, e, 3000).await;
    }
}
