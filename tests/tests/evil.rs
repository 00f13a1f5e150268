//! Evil nodes: test-only proxies in front of real tarnd processes that corrupt, swap (replay
//! another key's values), forge, drop (acknowledge without storing), delay, or lie in
//! TIME_SYNC. With honest entry nodes for some index
//! slots, the receiver gets the right contact info and the right epoch, and never accepts a
//! forged record.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tarn_client::identity::Identity;
use tarn_client::profile::Contact;
use tarn_client::record::Freshness;
use tarn_client::registry::{local_ms, Registry};
use tarn_client::{Channel, NodeClient, NodeOptions};
use tarn_proto::frame::{self, Parsed};
use tarn_proto::msg::{RetrieveReply, TimeReply};
use tarn_proto::{Decoder, Message};
use tarn_tests::start_ring;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug)]
enum Evil {
    /// Flips bits in every value it returns.
    Corrupt,
    /// Returns values it saw under other keys (replay / swap).
    Swap,
    /// Returns random bytes shaped like a sealed record.
    Forge,
    /// Says it is three hours later than it is.
    LieTime,
    /// Acknowledges inserts without storing them and finds nothing.
    Drop,
    /// Answers everything half a second late.
    Delay,
}

/// Reads one frame from `s` into `buf`; returns (request id, message) or None at EOF.
async fn next(s: &mut TcpStream, buf: &mut Vec<u8>, dec: &mut Decoder) -> Option<(u64, Message)> {
    loop {
        if let Ok(Parsed::Frame(f)) = frame::parse_frame(buf, 1 << 20) {
            let id = f.header.request_id;
            let len = f.wire_len();
            let m = dec.decode(&f).ok()?;
            buf.drain(..len);
            return Some((id, m));
        }
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A plaintext proxy that forwards each request to `node` and rewrites replies.
async fn evil_proxy(node: String, evil: Evil) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = l.accept().await {
            let mut upstream = TcpStream::connect(&node).await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let (mut cb, mut ub) = (Vec::new(), Vec::new());
                let (mut cd, mut ud) = (Decoder::new(), Decoder::new());
                // Strictly request, reply, request, reply: simple and enough for the registry.
                while let Some((id, req)) = next(&mut client, &mut cb, &mut cd).await {
                    if let Evil::Drop = evil {
                        let fake =
                            match &req {
                                Message::Insert(_) => Some(Message::InsertReply(
                                    tarn_proto::msg::InsertReply::Stored { copies: 3 },
                                )),
                                Message::Retrieve(_) => {
                                    Some(Message::RetrieveReply(RetrieveReply::NotFound))
                                }
                                _ => None,
                            };
                        if let Some(f) = fake {
                            let out = frame::encode_to_vec(id, &f).unwrap();
                            if client.write_all(&out).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                    if let Evil::Delay = evil {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let out = frame::encode_to_vec(id, &req).unwrap();
                    upstream.write_all(&out).await.unwrap();
                    let Some((rid, mut reply)) = next(&mut upstream, &mut ub, &mut ud).await else {
                        return;
                    };
                    match (&mut reply, evil) {
                        (Message::RetrieveReply(RetrieveReply::Found(values)), Evil::Corrupt) => {
                            for v in values.iter_mut() {
                                let i = v.len() / 2;
                                v[i] ^= 0x55;
                            }
                        }
                        (Message::RetrieveReply(r), Evil::Swap) => {
                            let mut s = seen.lock().unwrap();
                            if let RetrieveReply::Found(values) = r {
                                s.extend(values.iter().cloned());
                            }
                            if !s.is_empty() {
                                let other = s[s.len() / 2].clone();
                                *r = RetrieveReply::Found(vec![other]);
                            }
                        }
                        (Message::RetrieveReply(r), Evil::Forge) => {
                            let mut fake = vec![1u8];
                            fake.extend((0..240).map(|i| (i * 7 + 3) as u8));
                            *r = RetrieveReply::Found(vec![fake]);
                        }
                        (Message::TimeReply(TimeReply { unix_ns, .. }), Evil::LieTime) => {
                            *unix_ns += 3 * 3600 * 1_000_000_000;
                        }
                        _ => {}
                    }
                    let out = frame::encode_to_vec(rid, &reply).unwrap();
                    if client.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evil_entry_nodes_cannot_make_a_client_accept_a_forged_record_or_a_wrong_epoch() {
    // A ring of eight real nodes.
    let dir = tempfile::tempdir().unwrap();
    let ring = start_ring(dir.path(), 8, &[]).await;
    let (n0, n1) = (&ring[0], &ring[1]);
    let plain = NodeOptions {
        channel: Channel::Plaintext,
        ..Default::default()
    };
    // Seven entry connections: five evil proxies and two honest nodes, placed so that any five
    // consecutive ones (the index slots of one contact) include an honest one.
    let addrs = vec![
        evil_proxy(ring[2].addr.clone(), Evil::Corrupt).await,
        n0.addr.clone(),
        evil_proxy(ring[3].addr.clone(), Evil::Swap).await,
        n1.addr.clone(),
        evil_proxy(ring[4].addr.clone(), Evil::Forge).await,
        evil_proxy(ring[5].addr.clone(), Evil::Drop).await,
        evil_proxy(ring[6].addr.clone(), Evil::Delay).await,
    ];
    let liar = evil_proxy(ring[7].addr.clone(), Evil::LieTime).await;
    let mut conns = Vec::new();
    for a in &addrs {
        conns.push(Arc::new(NodeClient::connect(a, &plain).await.unwrap()));
    }
    let fresh = Freshness {
        epoch_secs: 3600,
        grace_secs: 600,
    };
    let reg = Registry::new(conns.clone(), fresh);

    // TIME_SYNC with one liar among four: the median is honest.
    let mut timed = conns[..3].to_vec();
    timed.push(Arc::new(NodeClient::connect(&liar, &plain).await.unwrap()));
    let t = Registry::new(timed, fresh).sync_time().await.unwrap();
    assert!(t.offset_ms.abs() < 2000, "one liar moved the clock: {t:?}");
    let epoch = t.epoch(local_ms());

    let alice = Identity::generate("alice");
    let bob = Identity::generate("bob");
    let secret = b"out of band".to_vec();
    let for_bob = Contact {
        name: "bob".into(),
        card: bob.card(),
        secrets: vec![secret.clone()],
    };
    let from_alice = Contact {
        name: "alice".into(),
        card: alice.card(),
        secrets: vec![secret],
    };
    let report = reg
        .publish(
            &alice,
            &for_bob,
            epoch,
            "alice.onion:7000",
            t.corrected_ms(local_ms()),
        )
        .await;
    assert_eq!(
        report.stored, 5,
        "the dropping node acknowledges without storing"
    );
    // Also give the swapper something else to replay: another user's records.
    let carol = Identity::generate("carol");
    let for_bob_from_carol = Contact {
        name: "bob".into(),
        card: bob.card(),
        secrets: vec![b"carol's".to_vec()],
    };
    reg.publish(
        &carol,
        &for_bob_from_carol,
        epoch,
        "carol.onion:1",
        t.corrected_ms(local_ms()),
    )
    .await;
    for _ in 0..3 {
        let got = reg
            .retrieve(&bob, &from_alice, epoch)
            .await
            .expect("an honest slot delivers alice's record");
        assert_eq!(got.contact_info, "alice.onion:7000");
        assert_eq!(got.publisher, alice.id());
    }
    // Through nodes that never pass a genuine value on, nothing is accepted (rather than
    // something forged); through the swapper, whatever is accepted is genuine (a replayed
    // value only opens in the slot it was sealed for).
    let evil_only = Registry::new(
        vec![conns[0].clone(), conns[4].clone(), conns[5].clone()],
        fresh,
    );
    assert!(evil_only.retrieve(&bob, &from_alice, epoch).await.is_none());
    let swapper = Registry::new(vec![conns[2].clone()], fresh);
    if let Some(r) = swapper.retrieve(&bob, &from_alice, epoch).await {
        assert_eq!(r.contact_info, "alice.onion:7000");
        assert_eq!(r.publisher, alice.id());
    }
}
