//! The encrypted client–node channel (Noise NK): encrypted by default, pinned keys, trust on
//! first use, the node's plaintext policy, and what an on-path observer or attacker gets: no
//! plaintext, and no way to alter a reply (seed §8.2).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tarn_client::{Channel, ClientError, NodeClient, NodeOptions};
use tarn_proto::msg::{ErrorCode, InsertReply, RetrieveReply};
use tarn_tests::{epoch_now, key, metric, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn opts(channel: Channel) -> NodeOptions {
    NodeOptions {
        channel,
        timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

#[tokio::test]
async fn clients_are_encrypted_by_default_and_pinned_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let c = NodeClient::connect(&node.addr, &NodeOptions::default())
        .await
        .unwrap();
    assert!(c.encrypted() && c.trusted_on_first_use());
    let e = epoch_now(3600);
    assert_eq!(
        c.insert(e, key(1), b"v".to_vec()).await.unwrap(),
        InsertReply::Stored { copies: 1 }
    );
    // The key from NODE_LIST, pinned: no plaintext hello at all.
    let pk = c.node_list(8).await.unwrap().nodes[0].public_key;
    let pinned = NodeClient::connect(&node.addr, &opts(Channel::Encrypted { node_key: Some(pk) }))
        .await
        .unwrap();
    assert!(pinned.encrypted() && !pinned.trusted_on_first_use());
    assert_eq!(
        pinned.retrieve(e, key(1)).await.unwrap(),
        RetrieveReply::Found(vec![b"v".to_vec()])
    );
    // Another node's key: the handshake cannot complete.
    let other = ed25519_dalek::SigningKey::from_bytes(&[7; 32])
        .verifying_key()
        .to_bytes();
    let err = NodeClient::connect(
        &node.addr,
        &opts(Channel::Encrypted {
            node_key: Some(other),
        }),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Refused {
                code: ErrorCode::HandshakeFailed,
                ..
            }
        ),
        "{err:?}"
    );
    // Many requests through one encrypted connection (several Noise messages each way).
    for i in 0..500u64 {
        c.insert(e, key(100 + i), vec![i as u8; 900]).await.unwrap();
    }
    assert_eq!(
        c.retrieve(e, key(599)).await.unwrap(),
        RetrieveReply::Found(vec![vec![243; 900]])
    );
}

#[tokio::test]
async fn a_node_that_denies_plaintext_serves_only_the_encrypted_channel() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(&cfg, "client_plaintext = \"deny\"\n").unwrap();
    let node = Node::start(&dir.path().join("n"), &["--config", cfg.to_str().unwrap()]);
    let plain = NodeClient::connect(&node.addr, &opts(Channel::Plaintext))
        .await
        .expect("a plaintext hello is answered (so clients can learn the key)");
    let err = plain.time().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Refused {
                code: ErrorCode::EncryptionRequired,
                ..
            }
        ),
        "{err:?}"
    );
    let enc = NodeClient::connect(&node.addr, &NodeOptions::default())
        .await
        .unwrap();
    enc.time().await.unwrap();
    assert_eq!(
        metric(
            &node.scrape(),
            "tarn_rejected_total{reason=\"encryption_required\"}"
        ),
        Some(1.0)
    );
}

/// A TCP relay that records both directions and can flip one byte of the first node-to-client
/// chunk that arrives after `arm` is set.
struct Relay {
    addr: String,
    up: Arc<Mutex<Vec<u8>>>,
    arm: Arc<AtomicBool>,
}

async fn relay(target: String) -> Relay {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let up = Arc::new(Mutex::new(Vec::new()));
    let arm = Arc::new(AtomicBool::new(false));
    let (up2, arm2) = (up.clone(), arm.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let node = TcpStream::connect(&target).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut nr, mut nw) = node.into_split();
            let up = up2.clone();
            tokio::spawn(async move {
                let mut b = [0u8; 65536];
                while let Ok(n) = cr.read(&mut b).await {
                    if n == 0 {
                        break;
                    }
                    up.lock().unwrap().extend_from_slice(&b[..n]);
                    if nw.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
            });
            let arm = arm2.clone();
            tokio::spawn(async move {
                let mut b = [0u8; 65536];
                while let Ok(n) = nr.read(&mut b).await {
                    if n == 0 {
                        break;
                    }
                    if arm.swap(false, Ordering::SeqCst) {
                        b[n - 1] ^= 0x01;
                    }
                    if cw.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Relay { addr, up, arm }
}

#[tokio::test]
async fn an_on_path_observer_sees_no_plaintext_and_cannot_alter_replies() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let r = relay(node.addr.clone()).await;
    let marker = b"PRESENCE-RECORD-MARKER-0123456789".to_vec();
    let e = epoch_now(3600);
    let c = NodeClient::connect(&r.addr, &NodeOptions::default())
        .await
        .unwrap();
    c.insert(e, key(9), marker.clone()).await.unwrap();
    let seen = r.up.lock().unwrap().clone();
    assert!(
        !seen.windows(marker.len()).any(|w| w == marker.as_slice()),
        "the value crossed the wire in plaintext"
    );
    assert!(
        !seen.windows(32).any(|w| w == key(9).0),
        "the key crossed the wire in plaintext"
    );
    // A flipped bit in the node's reply: the client gets an error, never an altered time.
    r.arm.store(true, Ordering::SeqCst);
    assert!(c.time().await.is_err());

    // The same through a plaintext client shows what the channel hides.
    let r2 = relay(node.addr.clone()).await;
    let p = NodeClient::connect(&r2.addr, &opts(Channel::Plaintext))
        .await
        .unwrap();
    p.insert(e, key(10), marker.clone()).await.unwrap();
    let seen = r2.up.lock().unwrap().clone();
    assert!(seen.windows(marker.len()).any(|w| w == marker.as_slice()));
}

#[tokio::test]
async fn tarnctl_pins_the_node_key_or_says_it_trusted_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let pk = NodeClient::connect(&node.addr, &NodeOptions::default())
        .await
        .unwrap()
        .hello()
        .public_key;
    let run = |extra: &[&str]| {
        let mut args = vec!["time", "--node", node.addr.as_str()];
        args.extend_from_slice(extra);
        std::process::Command::new(tarn_tests::bin("tarnctl"))
            .args(&args)
            .output()
            .unwrap()
    };
    let tofu = run(&[]);
    assert_eq!(tofu.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&tofu.stderr).contains("trust on first use"));
    let pinned_hex = hex::encode(pk);
    let pinned = run(&["--node-key", &pinned_hex]);
    assert_eq!(pinned.status.code(), Some(0));
    assert!(
        pinned.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    let wrong = run(&["--node-key", &"11".repeat(32)]);
    assert_eq!(
        wrong.status.code(),
        Some(2),
        "a wrong key is a connection error"
    );
}
