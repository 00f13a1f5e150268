//! SIGHUP re-reads the configuration: the log filter changes at once, other changed keys are
//! named as needing a restart, and an invalid file changes nothing (the node keeps serving).

use std::time::{Duration, Instant};

use tarn_tests::Node;

fn wait_for_log(node: &Node, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if node.logs().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test]
async fn sighup_reloads_what_it_can_and_names_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tarnd.toml");
    std::fs::write(&cfg, "log = \"info\"\n").unwrap();
    let node = Node::start(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );

    std::fs::write(&cfg, "log = \"debug\"\nepoch_secs = 60\n").unwrap();
    node.signal(libc::SIGHUP);
    assert!(
        wait_for_log(&node, "log filter reloaded"),
        "{}",
        node.logs()
    );
    assert!(wait_for_log(&node, "keys=epoch_secs"), "{}", node.logs());

    std::fs::write(&cfg, "epoch_secs = 0\n").unwrap();
    node.signal(libc::SIGHUP);
    assert!(
        wait_for_log(&node, "configuration not reloaded"),
        "{}",
        node.logs()
    );
    // Still serving with the old settings.
    let t = node.client().await.time().await.unwrap();
    assert_eq!(t.epoch_len_secs, 3600);
}
