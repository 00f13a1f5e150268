//! Two `tarn-chat` users on a local ring (direct TCP transport): they find each other whichever
//! comes online first, see status changes, exchange messages exactly once and in order, see a
//! clean quit as offline at once and a crash (kill -9) within two refresh intervals.

use std::time::{Duration, Instant};

use tarn_tests::chat::{alice_and_bob, node_list, Pair, User};
use tarn_tests::{start_ring, Node};

const REFRESH_MS: u64 = 1000;

#[test]
fn two_users_find_each_other_chat_and_see_each_other_leave() {
    let dir = tempfile::tempdir().unwrap();
    let ring = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(start_ring(dir.path(), 3, &[]));
    let nodes = node_list(&ring);
    let Pair {
        alice: pa,
        bob: pb,
        card_a,
        ..
    } = alice_and_bob(dir.path(), "s3");
    assert!(card_a.starts_with("tarn1:"));

    // Alice first, then Bob: Bob finds Alice's record; Alice hears from Bob.
    let mut alice = User::run(&pa, &nodes, REFRESH_MS);
    let mut bob = User::run(&pb, &nodes, REFRESH_MS);
    let t = Duration::from_secs(15);
    bob.expect("online alice A", t);
    alice.expect("online bob A", t);

    bob.say("status DND");
    alice.expect("online bob DND", t);

    for i in 1..=5 {
        alice.say(&format!("msg bob hello {i}"));
    }
    for i in 1..=5 {
        bob.expect(&format!("msg alice hello {i}"), t);
    }
    let extra = bob.drain(Duration::from_millis(3 * REFRESH_MS));
    assert!(
        !extra.iter().any(|l| l.starts_with("msg ")),
        "a message arrived twice: {extra:?}"
    );

    // A clean quit says OFF.
    bob.say("quit");
    alice.expect("offline bob", t);
    drop(bob);

    // Bob again (this time Alice was first to be online, Bob the later one again is covered;
    // now Bob crashes): Alice sees him offline within two refresh intervals (plus slack).
    let mut bob = User::run(&pb, &nodes, REFRESH_MS);
    alice.expect("online bob A", t);
    bob.expect("online alice A", t);
    let _ = bob.child.kill();
    let _ = bob.child.wait();
    alice.expect("offline bob", Duration::from_millis(2 * REFRESH_MS + 2000));
}

#[test]
fn the_later_user_is_found_whichever_comes_first() {
    let dir = tempfile::tempdir().unwrap();
    let n0 = Node::start(&dir.path().join("n0"), &["--cores", "1"]);
    let nodes = n0.addr.clone();
    let Pair {
        alice: pa, bob: pb, ..
    } = alice_and_bob(dir.path(), "x");
    // Bob first this time, and both start almost together.
    let mut bob = User::run(&pb, &nodes, REFRESH_MS);
    let mut alice = User::run(&pa, &nodes, REFRESH_MS);
    let t = Duration::from_secs(15);
    alice.expect("online bob A", t);
    bob.expect("online alice A", t);
    bob.say("msg alice hi");
    alice.expect("msg bob hi", t);
    // Bob's machine hangs (SIGSTOP: no FIN, no OFF): alice notices the silence within two
    // refresh intervals (and the sweep that runs each interval).
    // SAFETY: kill(2) on the PID of a child this test started.
    unsafe {
        libc::kill(bob.child.id() as i32, libc::SIGSTOP);
    }
    let started = Instant::now();
    alice.expect("offline bob", Duration::from_millis(2 * REFRESH_MS + 300));
    assert!(started.elapsed() >= Duration::from_millis(REFRESH_MS / 2));
}

/// Retrieve requests a node has answered since it started.
fn retrieves(node: &Node) -> f64 {
    node.scrape()
        .lines()
        .filter(|l| l.starts_with("tarn_requests_total{") && l.contains("type=\"retrieve\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn the_engine_redials_a_node_that_restarted() {
    // A node restart (or a dead Tor circuit) closes the client's connection; the engine
    // redials at its next refresh and keeps looking for offline contacts through it.
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&dir.path().join("n0"), &[]);
    let Pair { alice: pa, .. } = alice_and_bob(dir.path(), "x");
    // Bob stays offline: alice retrieves his slots every refresh.
    let _alice = User::run(&pa, &node.addr, REFRESH_MS);
    let grows = |node: &Node, within: Duration| {
        let deadline = Instant::now() + within;
        let before = retrieves(node);
        while Instant::now() < deadline {
            if retrieves(node) > before {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    assert!(grows(&node, Duration::from_secs(10)), "alice retrieves");
    let addr = node.addr.clone();
    node.kill9();
    node.restart();
    assert_eq!(node.addr, addr, "the node came back on its own address");
    // Within a few refreshes, plus one request timeout (10 s) in case a retrieve was sent
    // on the old connection before its close was seen.
    assert!(
        grows(&node, Duration::from_millis(15 * REFRESH_MS)),
        "alice redialled the restarted node and retrieves through it again; node logs:\n{}",
        node.logs()
    );
}
