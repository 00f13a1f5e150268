//! End to end over Tor: a private Tor network on 127.0.0.1 (3 authorities, 3 middles, 2 exits
//! whose outbound connections come from 127.0.0.2), a ring of three `tarnd`, and two
//! `tarn-chat` users on the Tor transport. Each publishes its onion address as contact info,
//! finds the other, sees a status change, exchanges messages, sees the other leave; a restart
//! keeps the onion address (its key is in the profile). The nodes record every client address
//! they see (test build, feature `peer-audit`): all of them must be the exits' 127.0.0.2.
//!
//! tor never binds `OutboundBindAddressExit` for loopback destinations, so the nodes must
//! listen on an address that is local but not loopback: the test runs in a network namespace
//! of its own (root; `unshare(CLONE_NEWNET)` for the test's thread and everything it starts)
//! where `lo` also carries 10.77.0.1, the nodes' address. A client that bypassed Tor would
//! reach the nodes from 10.77.0.1 (or 127.0.0.1), never from 127.0.0.2.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tarn_tests::chat::{alice_and_bob, node_list, Pair, User};
use tarn_tests::start_ring;
use tarn_tests::tornet::TorNet;

const REFRESH_MS: u64 = 3000;
/// Bootstrapping, publishing an onion service and the first rendezvous on a fresh network.
const FIRST_CONTACT: Duration = Duration::from_secs(300);
const LATER: Duration = Duration::from_secs(120);
/// The nodes' address inside the test's network namespace.
const NODE_IP: &str = "10.77.0.1";

/// Moves this thread (and every process and thread it starts from now on) into a new network
/// namespace whose `lo` is up and also carries [`NODE_IP`]. Nothing in it can reach outside.
fn enter_private_netns() {
    // SAFETY: unshare(2) with CLONE_NEWNET changes only the calling thread's namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET) failed (the test needs root): {}",
        std::io::Error::last_os_error()
    );
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"],
    ] {
        let st = std::process::Command::new("ip")
            .args(&args)
            .status()
            .expect("ip (iproute2) is installed by the test command");
        assert!(st.success(), "ip {args:?}");
    }
}

fn tor_user(profile: &Path, nodes: &str, arti: &Path, log: &Path) -> (User, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut u = User::run_with(
        profile,
        nodes,
        REFRESH_MS,
        &["--transport", "tor", "--tor-config", arti.to_str().unwrap()],
        Stdio::from(log),
        FIRST_CONTACT,
    );
    let address = u
        .drain(Duration::from_millis(10))
        .into_iter()
        .find_map(|l| l.strip_prefix("address ").map(String::from))
        .expect("tarn-chat printed its address before ready");
    (u, address)
}

fn is_onion_contact_info(s: &str) -> bool {
    tarn_client::tor::parse_contact_info(s).is_some()
}

#[test]
fn two_clients_find_each_other_and_chat_over_a_private_tor_network() {
    enter_private_netns();
    let dir = tempfile::tempdir().unwrap();
    let net = TorNet::start(&dir.path().join("tornet"), 15200);

    let audit = dir.path().join("client-peers.txt");
    let conf = dir.path().join("tarnd.toml");
    std::fs::write(
        &conf,
        format!("peer_audit_file = {:?}\n", audit.to_str().unwrap()),
    )
    .unwrap();
    let ring = tokio::runtime::Runtime::new().unwrap().block_on(start_ring(
        &dir.path().join("ring"),
        3,
        &[
            "--config",
            conf.to_str().unwrap(),
            "--listen",
            &format!("{NODE_IP}:0"),
        ],
    ));
    // The harness's own requests while forming the ring (from 10.77.0.1) are not clients'.
    let audited_before = std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .lines()
        .count();
    let nodes = node_list(&ring);
    let Pair {
        alice: pa, bob: pb, ..
    } = alice_and_bob(dir.path(), "met at the cafe");

    let (la, lb) = (dir.path().join("alice.log"), dir.path().join("bob.log"));
    let arti = &net.arti_config;
    let diagnostics = |what: &str| {
        format!(
            "{what}\n--- alice\n{}\n--- bob\n{}\n{}",
            std::fs::read_to_string(&la).unwrap_or_default(),
            std::fs::read_to_string(&lb).unwrap_or_default(),
            net.log_tails(5)
        )
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (mut alice, addr_a) = tor_user(&pa, &nodes, arti, &la);
        let (mut bob, addr_b) = tor_user(&pb, &nodes, arti, &lb);
        assert!(is_onion_contact_info(&addr_a), "{addr_a}");
        assert!(is_onion_contact_info(&addr_b), "{addr_b}");
        assert_ne!(addr_a, addr_b);

        alice.expect("online bob A", FIRST_CONTACT);
        bob.expect("online alice A", FIRST_CONTACT);

        alice.say("status DND");
        bob.expect("online alice DND", LATER);
        alice.say("msg bob hello through six relays");
        bob.expect("msg alice hello through six relays", LATER);
        bob.say("msg alice and back");
        alice.expect("msg bob and back", LATER);

        alice.say("quit");
        bob.expect("offline alice", LATER);
        assert!(
            alice.wait(Duration::from_secs(30)).is_some(),
            "alice exits on quit"
        );

        // The onion key is in the profile: same address after a restart, found again.
        let (mut alice, again) = tor_user(&pa, &nodes, arti, &la);
        assert_eq!(again, addr_a, "the onion address survives a restart");
        bob.expect("online alice A", FIRST_CONTACT);
        alice.expect("online bob A", LATER);
    }));
    if let Err(e) = result {
        eprintln!("{}", diagnostics("the Tor end-to-end test failed"));
        std::panic::resume_unwind(e);
    }

    // Every client connection the nodes accepted came from an exit.
    let seen = std::fs::read_to_string(&audit).unwrap_or_default();
    let addrs: Vec<&str> = seen.lines().skip(audited_before).collect();
    assert!(
        addrs.len() >= 6,
        "two clients with three nodes each: {addrs:?}"
    );
    assert!(
        addrs.iter().all(|a| *a == "127.0.0.2"),
        "a node saw a client address other than the exits': {addrs:?}"
    );
    drop(ring);
    drop(net);
}
