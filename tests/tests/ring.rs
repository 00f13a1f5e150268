//! A ring of real tarnd processes on loopback: formed by joins, 10 000 records through random
//! nodes, two adjacent nodes killed with SIGKILL (nothing acknowledged is lost), restarted
//! (they rejoin), one node drained with SIGTERM (nothing lost); a node without the network
//! secret cannot join; garbage and replayed node-to-node messages are refused without harm.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tarn_client::NodeClient;
use tarn_proto::msg::{InsertReply, RetrieveReply};
use tarn_tests::{epoch_now, key, metric, Node};

const RECORDS: u64 = 10_000;

/// Fast ring timers for tests (the defaults are for production).
fn config(dir: &std::path::Path, extra: &str) -> String {
    let path = dir.join("tarnd.toml");
    std::fs::write(
        &path,
        format!("stabilize_interval_ms = 200\nrepair_interval_ms = 1000\n{extra}"),
    )
    .unwrap();
    path.display().to_string()
}

fn start(dirs: &mut Vec<tempfile::TempDir>, join: &[String], extra: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), extra);
    let joined = join.join(",");
    let mut args = vec![
        "--config",
        cfg.as_str(),
        "--cores",
        "1",
        "--log",
        "info,tarn_node::server=debug",
    ];
    if !join.is_empty() {
        args.extend(["--join", joined.as_str()]);
    }
    let node = Node::start(dir.path(), &args);
    dirs.push(dir);
    node
}

/// Waits until every node's NODE_LIST names `n` members.
async fn converge(nodes: &[&Node], n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut sizes = Vec::new();
        for node in nodes {
            let size = match NodeClient::connect(&node.addr, &Default::default()).await {
                Ok(c) => c.node_list(64).await.map(|l| l.nodes.len()).unwrap_or(0),
                Err(_) => 0,
            };
            sizes.push(size);
        }
        if sizes.iter().all(|s| *s == n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ring did not converge to {n} members within {limit:?}: {sizes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn clients(nodes: &[&Node]) -> Vec<Arc<NodeClient>> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(Arc::new(n.client().await));
    }
    out
}

/// Every record `0..RECORDS` is found through the given nodes (spread over them).
async fn check_all(nodes: &[&Node], e: tarn_proto::Epoch) {
    let cs = clients(nodes).await;
    let mut tasks = Vec::new();
    for (k, c) in cs.into_iter().enumerate() {
        let parts = nodes.len() as u64;
        tasks.push(tokio::spawn(async move {
            let mut missing = Vec::new();
            for i in (k as u64..RECORDS).step_by(parts as usize) {
                match c.retrieve(e, key(i)).await {
                    Ok(RetrieveReply::Found(v)) if v == vec![i.to_be_bytes().to_vec()] => {}
                    other => missing.push((i, format!("{other:?}"))),
                }
            }
            missing
        }));
    }
    let mut missing = Vec::new();
    for t in tasks {
        missing.extend(t.await.unwrap());
    }
    if !missing.is_empty() {
        for n in nodes {
            let l = n.logs();
            eprintln!(
                "--- {}:\n{}",
                n.addr,
                l.lines()
                    .filter(|x| !x.contains("INFO"))
                    .take(6)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged records not retrievable, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_nodes_keep_every_record_through_crashes_restarts_and_a_drain() {
    let mut dirs = Vec::new();
    let mut nodes = vec![start(&mut dirs, &[], "")];
    for _ in 1..8 {
        let join: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
        nodes.push(start(&mut dirs, &join, ""));
    }
    converge(
        &nodes.iter().collect::<Vec<_>>(),
        8,
        Duration::from_secs(60),
    )
    .await;

    // 10 000 inserts through random nodes, each acknowledged with 3 copies.
    let e = epoch_now(3600);
    let cs = clients(&nodes.iter().collect::<Vec<_>>()).await;
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let cs = cs.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..RECORDS).step_by(16) {
                let c = &cs[(blake3::hash(&i.to_le_bytes()).as_bytes()[0] as usize) % cs.len()];
                let r = c.insert(e, key(i), i.to_be_bytes().to_vec()).await.unwrap();
                assert_eq!(r, InsertReply::Stored { copies: 3 }, "insert {i}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    drop(cs);

    // Kill -9 two nodes adjacent on the ring.
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|i| nodes[*i].node_id.clone());
    let (a, b) = (order[3], order[4]);
    nodes[a].kill9();
    nodes[b].kill9();
    let live: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != a && *i != b)
        .map(|(_, n)| n)
        .collect();
    converge(&live, 6, Duration::from_secs(30)).await;
    check_all(&live, e).await;

    // They come back with their data directories and rejoin.
    nodes[a].restart();
    nodes[b].restart();
    converge(
        &nodes.iter().collect::<Vec<_>>(),
        8,
        Duration::from_secs(60),
    )
    .await;
    check_all(&nodes.iter().collect::<Vec<_>>(), e).await;

    // Drain one node: it hands its records over and leaves; nothing is lost.
    let d = order[6];
    assert_eq!(nodes[d].terminate(), Some(0), "{}", nodes[d].logs());
    assert!(nodes[d]
        .logs()
        .contains("handed records over before leaving"));
    let live: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != d)
        .map(|(_, n)| n)
        .collect();
    check_all(&live, e).await;
    converge(&live, 7, Duration::from_secs(30)).await;
    check_all(&live, e).await;
    // The ring's health is visible in metrics.
    let text = live[0].scrape();
    assert_eq!(metric(&text, "tarn_ring_member"), Some(1.0));
    assert!(metric(&text, "tarn_ring_successors").unwrap() >= 6.0);
    assert!(metric(&text, "tarn_repair_rounds_total").unwrap() >= 1.0);
}

#[tokio::test]
async fn a_node_without_the_network_secret_cannot_join() {
    let mut dirs = Vec::new();
    let secret = "network_secret = \"s3cret\"\n";
    let n0 = start(&mut dirs, &[], secret);
    let n1 = start(&mut dirs, std::slice::from_ref(&n0.addr), secret);
    converge(&[&n0, &n1], 2, Duration::from_secs(30)).await;
    let stranger = start(&mut dirs, std::slice::from_ref(&n0.addr), "");
    let wrong = start(
        &mut dirs,
        std::slice::from_ref(&n0.addr),
        "network_secret = \"guess\"\n",
    );
    // Same secret, another epoch length: a different network in all but name.
    let other_epoch = start(
        &mut dirs,
        std::slice::from_ref(&n0.addr),
        &format!("{secret}epoch_secs = 60\n"),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    converge(&[&n0, &n1], 2, Duration::from_secs(5)).await;
    converge(&[&stranger], 1, Duration::from_secs(5)).await;
    converge(&[&wrong], 1, Duration::from_secs(5)).await;
    converge(&[&other_epoch], 1, Duration::from_secs(5)).await;
    assert!(
        metric(
            &n0.scrape(),
            "tarn_peer_handshakes_refused_total{reason=\"epoch_len\"}"
        )
        .unwrap()
            >= 1.0
    );
    let refused: f64 = ["secret", "handshake"]
        .iter()
        .filter_map(|r| {
            metric(
                &n0.scrape(),
                &format!("tarn_peer_handshakes_refused_total{{reason=\"{r}\"}}"),
            )
        })
        .sum();
    assert!(refused >= 2.0, "n0 refused {refused} handshakes");
}

mod raw {
    //! A hand-driven peer: the test plays a node.
    use ed25519_dalek::{Signer, SigningKey};
    use tarn_proto::frame::{parse_frame, Parsed};
    use tarn_proto::msg::NetworkId;
    use tarn_proto::peer::{self, PeerAuth, PeerHello, PeerMessage};
    use tarn_proto::ring::NodeRef;
    use tarn_proto::{Decoder, Id};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub struct Peer {
        pub key: SigningKey,
        pub me: NodeRef,
    }

    impl Peer {
        pub fn new(seed: u8) -> Peer {
            let key = SigningKey::from_bytes(&[seed; 32]);
            let pk = key.verifying_key().to_bytes();
            Peer {
                me: NodeRef {
                    id: Id(*blake3::hash(&pk).as_bytes()),
                    addr: "127.0.0.1:9".into(),
                },
                key,
            }
        }

        pub fn hello(&self, nonce: [u8; 32]) -> PeerHello {
            PeerHello {
                version: tarn_proto::PROTOCOL_VERSION,
                network: NetworkId::from_name("tarn-dev"),
                epoch_len_secs: 3600,
                node: self.me.clone(),
                public_key: self.key.verifying_key().to_bytes(),
                nonce,
            }
        }

        pub fn auth(&self, hello: &PeerHello, ch: &peer::PeerChallenge) -> PeerAuth {
            let t = peer::transcript(
                b"dialer",
                &hello.network,
                &hello.public_key,
                &hello.nonce,
                &ch.public_key,
                &ch.nonce,
            );
            PeerAuth {
                signature: self.key.sign(&t).to_bytes().to_vec(),
                mac: [0; 32],
            }
        }
    }

    pub async fn send(s: &mut TcpStream, m: &PeerMessage) {
        let mut buf = Vec::new();
        peer::encode_peer(0, m, &mut buf).unwrap();
        s.write_all(&buf).await.unwrap();
    }

    /// The next message, or None when the node closed the connection.
    pub async fn recv(s: &mut TcpStream) -> Option<PeerMessage> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Ok(Parsed::Frame(f)) = parse_frame(&buf, 1 << 20) {
                return Decoder::new().decode_peer(&f).ok();
            }
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[tokio::test]
async fn garbage_and_replayed_peer_messages_are_refused_without_harm() {
    use tarn_proto::peer::PeerMessage;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--cores", "1"]);

    // A node-to-node request before any handshake: the link is closed.
    let mut s = TcpStream::connect(&node.addr).await.unwrap();
    raw::send(
        &mut s,
        &PeerMessage::Request(tarn_proto::peer::DataRequest::Get {
            epoch: epoch_now(3600),
            key: key(1),
        }),
    )
    .await;
    assert_eq!(raw::recv(&mut s).await, None);

    // A hello whose id is not the hash of its key: refused.
    let p = raw::Peer::new(7);
    let mut h = p.hello([1; 32]);
    h.node.id = tarn_proto::Id([9; 32]);
    let mut s = TcpStream::connect(&node.addr).await.unwrap();
    raw::send(&mut s, &PeerMessage::Hello(h)).await;
    assert_eq!(
        raw::recv(&mut s).await,
        Some(PeerMessage::Refused("identity".into()))
    );

    // A genuine handshake, recorded...
    let hello = p.hello([2; 32]);
    let mut s = TcpStream::connect(&node.addr).await.unwrap();
    raw::send(&mut s, &PeerMessage::Hello(hello.clone())).await;
    let Some(PeerMessage::Challenge(ch)) = raw::recv(&mut s).await else {
        panic!("challenge expected")
    };
    let auth = p.auth(&hello, &ch);
    raw::send(&mut s, &PeerMessage::Auth(auth.clone())).await;
    assert_eq!(raw::recv(&mut s).await, Some(PeerMessage::Ready));
    // ...then garbage on the authenticated link: closed.
    s.write_all(&[0x10, 0, 0, 0, 1, 0x49, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    s.write_all(&[0xff; 16]).await.unwrap();
    assert_eq!(raw::recv(&mut s).await, None);

    // ...and replayed on a new connection: the node's fresh nonce makes the old proof useless.
    let mut s = TcpStream::connect(&node.addr).await.unwrap();
    raw::send(&mut s, &PeerMessage::Hello(hello)).await;
    let Some(PeerMessage::Challenge(ch2)) = raw::recv(&mut s).await else {
        panic!("challenge expected")
    };
    assert_ne!(ch2.nonce, ch.nonce);
    raw::send(&mut s, &PeerMessage::Auth(auth)).await;
    assert_eq!(
        raw::recv(&mut s).await,
        Some(PeerMessage::Refused("signature".into()))
    );

    // The node still serves clients and counted each refusal.
    let c = node.client().await;
    let r = c
        .insert(epoch_now(3600), key(5), b"still fine".to_vec())
        .await
        .unwrap();
    assert_eq!(r, InsertReply::Stored { copies: 1 });
    let text = node.scrape();
    for reason in ["protocol", "identity", "garbage", "signature"] {
        assert_eq!(
            metric(
                &text,
                &format!("tarn_peer_handshakes_refused_total{{reason=\"{reason}\"}}")
            ),
            Some(1.0),
            "reason {reason}"
        );
    }
}

#[tokio::test]
async fn tarnctl_walks_the_ring_and_shows_a_route() {
    let mut dirs = Vec::new();
    let mut nodes = vec![start(&mut dirs, &[], "")];
    for _ in 1..4 {
        let join = vec![nodes[0].addr.clone()];
        nodes.push(start(&mut dirs, &join, ""));
    }
    converge(
        &nodes.iter().collect::<Vec<_>>(),
        4,
        Duration::from_secs(30),
    )
    .await;
    // The walk may briefly see a predecessor not yet rectified; it settles within seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let walk = loop {
        let out = std::process::Command::new(tarn_tests::bin("tarnctl"))
            .args(["ring", "--node", &nodes[2].addr, "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if out.status.code() == Some(0) || Instant::now() > deadline {
            break (out.status.code(), v);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(walk.0, Some(0), "{}", walk.1);
    let members = walk.1["members"].as_array().unwrap();
    assert_eq!(members.len(), 4);
    assert!(walk.1["violations"].as_array().unwrap().is_empty());
    // Members in ring order starting at the node asked, each naming the one before it.
    let mut ids: Vec<String> = nodes.iter().map(|n| n.node_id.clone()).collect();
    ids.sort();
    let start_at = ids.iter().position(|i| *i == nodes[2].node_id).unwrap();
    for (k, m) in members.iter().enumerate() {
        assert_eq!(m["id"], ids[(start_at + k) % 4]);
        assert_eq!(m["predecessor"], ids[(start_at + k + 3) % 4]);
    }
    // A lookup names the responsible node: the first id at or after the key.
    let target = "8".repeat(64);
    let out = std::process::Command::new(tarn_tests::bin("tarnctl"))
        .args([
            "lookup",
            "--node",
            &nodes[0].addr,
            "--key",
            &target,
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = ids
        .iter()
        .find(|i| i.as_str() >= target.as_str())
        .unwrap_or(&ids[0]);
    assert_eq!(&v["found"][0]["id"], want);
    // An operator signs the members a node knows; clients verify against the pinned key.
    let ops = tempfile::tempdir().unwrap();
    let tarnctl = |args: &[&str]| {
        std::process::Command::new(tarn_tests::bin("tarnctl"))
            .args(args)
            .output()
            .unwrap()
    };
    let key = ops.path().join("operator.key");
    let list = ops.path().join("bootstrap.toml");
    let out = tarnctl(&[
        "bootstrap",
        "keygen",
        "--out",
        key.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let operator = v["operator"].as_str().unwrap().to_string();
    let out = tarnctl(&[
        "bootstrap",
        "sign",
        "--operator-key",
        key.to_str().unwrap(),
        "--node",
        &nodes[1].addr,
        "--out",
        list.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verify = |operator: &str| {
        tarnctl(&[
            "bootstrap",
            "verify",
            "--list",
            list.to_str().unwrap(),
            "--operator",
            operator,
            "--json",
        ])
    };
    let out = verify(&operator);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut listed: Vec<String> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    assert_eq!(
        listed, ids,
        "the list names every member with its proven key"
    );
    assert_eq!(verify(&"ab".repeat(32)).status.code(), Some(1));
    let text = std::fs::read_to_string(&list).unwrap();
    std::fs::write(&list, text.replacen("127.0.0.1", "127.0.0.9", 1)).unwrap();
    assert_eq!(
        verify(&operator).status.code(),
        Some(1),
        "an altered list is refused"
    );

    // Killing a member makes the walk report it (exit 1), not hang or crash.
    let victim = ids[(start_at + 1) % 4].clone();
    let k = nodes.iter().position(|n| n.node_id == victim).unwrap();
    nodes[k].kill9();
    let out = std::process::Command::new(tarn_tests::bin("tarnctl"))
        .args(["ring", "--node", &nodes[2].addr, "--json", "--timeout", "2"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // tarnctl drain: the node hands over, leaves and exits 0.
    let d = (k + 1) % 4;
    let out = tarnctl(&["drain", "--data-dir", nodes[d].data_dir.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(nodes[d].wait(Duration::from_secs(10)), Some(0));
    assert!(nodes[d]
        .logs()
        .contains("handed records over before leaving"));
    assert!(!nodes[d].data_dir.join("tarnd.pid").exists());
}
