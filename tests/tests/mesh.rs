//! Twenty clients with a mesh of contacts (each has four, pairs symmetric) on a local ring,
//! driven through the library's presence engine: every client sees every contact online.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tarn_client::engine::{self, EngineConfig, Event};
use tarn_client::identity::Identity;
use tarn_client::profile::Contact;
use tarn_client::transport::DirectTcp;
use tarn_tests::{start_ring, Node};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_clients_with_a_mesh_of_contacts_converge() {
    let dir = tempfile::tempdir().unwrap();
    let ring = start_ring(dir.path(), 3, &[]).await;
    let nodes: Vec<String> = ring.iter().map(|n| n.addr.clone()).collect();

    const N: usize = 20;
    let ids: Vec<Identity> = (0..N)
        .map(|i| Identity::generate(&format!("u{i}")))
        .collect();
    // Each user i knows i±1 and i±5 (mod N): a symmetric mesh, four contacts each.
    let knows = |i: usize| -> Vec<usize> {
        let mut v: Vec<usize> = [1, N - 1, 5, N - 5].iter().map(|d| (i + d) % N).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let secret = |a: usize, b: usize| format!("pair-{}-{}", a.min(b), a.max(b)).into_bytes();
    let mut handles = Vec::new();
    let mut streams = Vec::new();
    for i in 0..N {
        let contacts: Vec<Contact> = knows(i)
            .into_iter()
            .map(|j| Contact {
                name: format!("u{j}"),
                card: ids[j].card(),
                secrets: vec![secret(i, j)],
            })
            .collect();
        let cfg = EngineConfig {
            nodes: nodes.clone(),
            refresh: Duration::from_millis(1000),
            contact_timeout: Duration::from_secs(5),
            ..EngineConfig::default()
        };
        let (h, events) = engine::start(ids[i].clone(), contacts, DirectTcp::default(), cfg)
            .await
            .unwrap();
        handles.push(h);
        streams.push(events);
    }
    let mut online: HashMap<usize, HashSet<String>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (i, ev) in streams.iter_mut().enumerate() {
            while let Ok(e) = ev.try_recv() {
                match e {
                    Event::Online { name, .. } => {
                        online.entry(i).or_default().insert(name);
                    }
                    Event::Offline { name } => {
                        online.entry(i).or_default().remove(&name);
                    }
                    _ => {}
                }
            }
        }
        let done = (0..N).all(|i| online.get(&i).map_or(0, |s| s.len()) == knows(i).len());
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mesh did not converge: {:?}",
            (0..N)
                .map(|i| online.get(&i).map_or(0, |s| s.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for h in &handles {
        h.quit().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_find_each_other_across_epoch_boundaries() {
    // Three-second epochs: alice publishes for the next epoch shortly before it starts and
    // again when it does; bob, coming online epochs later, still finds her.
    let dir = tempfile::tempdir().unwrap();
    let n0 = Node::start(
        &dir.path().join("n0"),
        &["--cores", "1", "--epoch-secs", "3"],
    );
    let alice = Identity::generate("alice");
    let bob = Identity::generate("bob");
    let contact = |id: &Identity, name: &str| Contact {
        name: name.into(),
        card: id.card(),
        secrets: vec![b"s".to_vec()],
    };
    let cfg = || EngineConfig {
        nodes: vec![n0.addr.clone()],
        refresh: Duration::from_millis(500),
        grace_secs: 2,
        contact_timeout: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let (ha, mut ea) = engine::start(
        alice.clone(),
        vec![contact(&bob, "bob")],
        DirectTcp::default(),
        cfg(),
    )
    .await
    .unwrap();
    // Let at least two epoch boundaries pass before bob appears.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (hb, mut eb) = engine::start(
        bob.clone(),
        vec![contact(&alice, "alice")],
        DirectTcp::default(),
        cfg(),
    )
    .await
    .unwrap();
    wait_online(&mut eb, "alice").await;
    wait_online(&mut ea, "bob").await;
    ha.quit().await;
    hb.quit().await;
}

/// Waits (bounded) until `who` comes online.
async fn wait_online(rx: &mut tokio::sync::mpsc::Receiver<Event>, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(Event::Online { name, .. })) if name == who => return,
            Ok(Some(_)) => {}
            _ => panic!("{who} never came online"),
        }
    }
}
