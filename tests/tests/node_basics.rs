//! Round trips against one real tarnd: insert/retrieve, pipelining out of order, time, node
//! list, status, metrics, and tarnctl's commands.

use std::process::Command;
use std::time::Duration;

use tarn_proto::frame::{self, Parsed};
use tarn_proto::msg::{Insert, InsertReply, Retrieve, RetrieveReply};
use tarn_proto::{Decoder, Epoch, Message, NetworkId};
use tarn_tests::{bin, epoch_now, hello_frame, key, metric, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn insert_then_retrieve_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let c = node.client().await;
    assert_eq!(c.hello().node_id.to_hex(), node.node_id);
    let t = c.time().await.unwrap();
    let e = Epoch::at_unix_ns(t.unix_ns, t.epoch_len_secs);
    assert_eq!(
        c.insert(e, key(1), b"zq-private".to_vec()).await.unwrap(),
        InsertReply::Stored { copies: 1 }
    );
    assert_eq!(
        c.retrieve(e, key(1)).await.unwrap(),
        RetrieveReply::Found(vec![b"zq-private".to_vec()])
    );
    assert_eq!(
        c.retrieve(e, key(2)).await.unwrap(),
        RetrieveReply::NotFound
    );
    // The next epoch is in the window, two ahead is not.
    assert!(matches!(
        c.insert(e.next(), key(3), b"x".to_vec()).await.unwrap(),
        InsertReply::Stored { .. }
    ));
    assert!(matches!(
        c.insert(Epoch(e.0 + 2), key(3), b"x".to_vec()).await.unwrap(),
        InsertReply::Failed(tarn_proto::FailCause::EpochOutOfWindow { now }) if now == e
    ));
    let list = c.node_list(8).await.unwrap();
    assert_eq!(list.nodes.len(), 1);
    assert_eq!(list.nodes[0].address, node.addr);
    let status = c.status().await.unwrap();
    assert_eq!(status.now_epoch, e);
    assert!(status.epochs.iter().any(|s| s.epoch == e && s.records == 1));

    let text = node.scrape();
    assert_eq!(
        metric(&text, "tarn_requests_total{outcome=\"ok\",type=\"insert\"}"),
        Some(2.0),
        "{text}"
    );
    assert!(text.contains("tarn_storage_duration_seconds_bucket"));
    assert!(
        metric(&text, "tarn_rocksdb_memtable_bytes").unwrap() > 0.0,
        "RocksDB figures exported"
    );
    assert!(metric(&text, "tarn_data_dir_capacity_bytes").unwrap() > 0.0);
    // Metrics never carry keys or values.
    assert!(!text.contains(&key(1).to_hex()) && !text.contains("zq-private"));
    assert!(!text.contains(&key(1).to_hex()[..16]));
}

#[tokio::test]
async fn pipelined_requests_are_answered_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let e = epoch_now(3600);
    let mut out = hello_frame();
    // 200 inserts then 200 retrieves of the same keys, all written before reading anything,
    // with ids in descending order.
    for i in 0..200u64 {
        let m = Message::Insert(Insert {
            epoch: e,
            key: key(i),
            value: i.to_le_bytes().to_vec(),
        });
        frame::encode(10_000 - i, &m, &mut out).unwrap();
    }
    for i in 0..200u64 {
        frame::encode(
            20_000 - i,
            &Message::Retrieve(Retrieve {
                epoch: e,
                key: key(i),
            }),
            &mut out,
        )
        .unwrap();
    }
    let seen = exchange(&node, &out, 401).await;
    for i in 0..200u64 {
        assert_eq!(
            seen[&(10_000 - i)],
            Message::InsertReply(InsertReply::Stored { copies: 1 })
        );
        // Retrieves come after the inserts on the same connection, so they see them.
        assert_eq!(
            seen[&(20_000 - i)],
            Message::RetrieveReply(RetrieveReply::Found(vec![i.to_le_bytes().to_vec()]))
        );
    }
}

/// Writes `out` (a hello and pipelined requests) at once, then reads until `n` replies came;
/// replies by request id.
async fn exchange(node: &Node, out: &[u8], n: usize) -> std::collections::HashMap<u64, Message> {
    let mut s = tokio::net::TcpStream::connect(&node.addr).await.unwrap();
    s.write_all(out).await.unwrap();
    let mut buf = Vec::new();
    let mut decoder = Decoder::new();
    let mut seen = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < n {
        let mut chunk = [0u8; 8192];
        let k = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("replies in time")
            .unwrap();
        assert!(k > 0, "connection closed after {} replies", seen.len());
        buf.extend_from_slice(&chunk[..k]);
        while let Parsed::Frame(f) = frame::parse_frame(&buf, 1 << 20).unwrap() {
            let (id, len) = (f.header.request_id, f.wire_len());
            let msg = decoder.decode(&f).unwrap();
            buf.drain(..len);
            assert!(seen.insert(id, msg).is_none(), "two replies for id {id}");
        }
    }
    seen
}

#[tokio::test]
async fn interleaved_inserts_and_retrieves_read_their_writes() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let e = epoch_now(3600);
    let mut out = hello_frame();
    // Insert k, retrieve k, insert k+1, retrieve k+1, ... in one write: every retrieve must
    // see the insert just before it (reads wait for the burst's group commit).
    for i in 0..150u64 {
        let m = Message::Insert(Insert {
            epoch: e,
            key: key(500 + i),
            value: (i * 7).to_le_bytes().to_vec(),
        });
        frame::encode(1 + 2 * i, &m, &mut out).unwrap();
        let r = Message::Retrieve(Retrieve {
            epoch: e,
            key: key(500 + i),
        });
        frame::encode(2 + 2 * i, &r, &mut out).unwrap();
    }
    let seen = exchange(&node, &out, 301).await;
    for i in 0..150u64 {
        assert_eq!(
            seen[&(1 + 2 * i)],
            Message::InsertReply(InsertReply::Stored { copies: 1 })
        );
        assert_eq!(
            seen[&(2 + 2 * i)],
            Message::RetrieveReply(RetrieveReply::Found(vec![(i * 7).to_le_bytes().to_vec()])),
            "retrieve {i} must see its insert"
        );
    }
}

#[tokio::test]
async fn tarnctl_commands_work_against_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let e = epoch_now(3600).0.to_string();
    let k = key(42).to_hex();
    let ctl = |args: &[&str]| Command::new(bin("tarnctl")).args(args).output().unwrap();

    let put = ctl(&[
        "put",
        "--node",
        &node.addr,
        "--epoch",
        &e,
        "--key",
        &k,
        "--value-hex",
        "c0ffee",
    ]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let get = ctl(&["get", "--node", &node.addr, "--epoch", &e, "--key", &k]);
    assert_eq!(get.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "c0ffee");
    let get_json = ctl(&[
        "get", "--json", "--node", &node.addr, "--epoch", &e, "--key", &k,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&get_json.stdout).unwrap();
    assert_eq!(v["values"][0], "c0ffee");
    let missing = ctl(&[
        "get",
        "--node",
        &node.addr,
        "--epoch",
        &e,
        "--key",
        &key(43).to_hex(),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());

    let time = ctl(&["time", "--json", "--node", &node.addr]);
    let v: serde_json::Value = serde_json::from_slice(&time.stdout).unwrap();
    assert_eq!(v["epoch"].as_u64().unwrap().to_string(), e);
    let nodes = ctl(&["nodes", "--json", "--node", &node.addr]);
    let v: serde_json::Value = serde_json::from_slice(&nodes.stdout).unwrap();
    assert_eq!(v["nodes"][0]["id"], node.node_id.as_str());
    let status = ctl(&["status", "--json", "--node", &node.addr]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["node_id"], node.node_id.as_str());
    assert_eq!(v["cores"], 2);

    let bad_key = ctl(&["get", "--node", &node.addr, "--epoch", &e, "--key", "xyz"]);
    assert_eq!(bad_key.status.code(), Some(2));
    let unreachable = ctl(&["time", "--node", "127.0.0.1:1", "--timeout", "2"]);
    assert_eq!(unreachable.status.code(), Some(2));
}

#[tokio::test]
async fn wrong_network_or_epoch_length_is_refused_at_hello() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let opts = tarn_client::NodeOptions {
        network: NetworkId::from_name("other"),
        ..Default::default()
    };
    let err = tarn_client::NodeClient::connect(&node.addr, &opts)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        tarn_client::ClientError::Refused {
            code: tarn_proto::msg::ErrorCode::NetworkMismatch,
            ..
        }
    ));
    let opts = tarn_client::NodeOptions {
        epoch_len_secs: 60,
        ..Default::default()
    };
    let err = tarn_client::NodeClient::connect(&node.addr, &opts)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        tarn_client::ClientError::Refused {
            code: tarn_proto::msg::ErrorCode::EpochLenMismatch,
            ..
        }
    ));
}
