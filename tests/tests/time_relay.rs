//! The time relay: the node disciplines its clock against SNTP servers and answers TIME_SYNC
//! with it. Fake servers with known offsets run inside the test (one of them lies); a real
//! chronyd on an unprivileged loopback port checks interoperability.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tarn_node::timesync;
use tarn_tests::{metric, Node};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A fake SNTP server whose clock is `offset_s` seconds off; stops when `stop` is set.
fn fake_server(offset_s: i64, stop: Arc<AtomicBool>) -> String {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let addr = sock.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 128];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                if n >= 48 {
                    let t = now_ns().saturating_add_signed(offset_s * 1_000_000_000);
                    let _ = sock.send_to(&timesync::reply(&buf[..48], t, 2), peer);
                }
            }
        }
    });
    addr
}

async fn offset_seen(node: &Node) -> (f64, bool) {
    let c = node.client().await;
    let t = c.time().await.unwrap();
    ((t.unix_ns as f64 - now_ns() as f64) / 1e9, t.ntp_synced)
}

#[tokio::test]
async fn node_settles_on_the_honest_median() {
    let stop = Arc::new(AtomicBool::new(false));
    let servers = [
        fake_server(37, stop.clone()),
        fake_server(37, stop.clone()),
        fake_server(-4000, stop.clone()),
    ]
    .join(",");
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--ntp-servers", &servers]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (offset, synced) = offset_seen(&node).await;
        if synced {
            assert!((offset - 37.0).abs() < 0.5, "offset {offset}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never synced; logs:\n{}",
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = node.scrape();
    let off = metric(&text, "tarn_time_offset_seconds").unwrap();
    assert!((off - 37.0).abs() < 0.5);
    assert_eq!(metric(&text, "tarn_ntp_servers_reachable"), Some(3.0));
    // The epoch follows the corrected clock.
    let status = node.client().await.status().await.unwrap();
    assert!((status.time_offset_ns as f64 / 1e9 - 37.0).abs() < 0.5);
    stop.store(true, Ordering::Relaxed);
}

#[tokio::test]
async fn without_servers_the_system_clock_is_served_and_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (offset, synced) = offset_seen(&node).await;
    assert!(!synced);
    assert!(offset.abs() < 1.0);
}

#[tokio::test]
async fn interoperates_with_chrony() {
    let chronyd = ["/usr/sbin/chronyd", "/sbin/chronyd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let chronyd =
        chronyd.expect("chronyd is installed by the test command (apt-get install chrony)");
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let conf = dir.path().join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\n\
             pidfile {pid}\ndriftfile {drift}\n",
            pid = dir.path().join("chronyd.pid").display(),
            drift = dir.path().join("drift").display()
        ),
    )
    .unwrap();
    // -x: never touch the system clock; -d: foreground; -u root: no privilege drop needed.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // -x: never touch the system clock; -d: foreground; -u root: no privilege drop needed.
    let mut chrony_guard = Reap(
        Command::new(chronyd)
            .args(["-x", "-d", "-u", "root", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chronyd"),
    );
    let server = format!("127.0.0.1:{port}");
    // chronyd answers once it has started; poll it directly first.
    let deadline = Instant::now() + Duration::from_secs(20);
    let sample = loop {
        match timesync::query(&server, Duration::from_millis(500)) {
            Ok(s) => break s,
            Err(e) => {
                if let Ok(Some(status)) = chrony_guard.0.try_wait() {
                    panic!("chronyd exited: {status}");
                }
                assert!(Instant::now() < deadline, "chronyd never answered: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert!(
        sample.offset_ns.abs() < 1_000_000_000,
        "chrony on this host is within a second: {sample:?}"
    );

    let node = Node::start(dir.path(), &["--ntp-servers", &server]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (offset, synced) = offset_seen(&node).await;
        if synced {
            assert!(offset.abs() < 1.0, "offset {offset}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never synced against chrony; logs:\n{}",
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = node.scrape();
    assert_eq!(metric(&text, "tarn_ntp_synced"), Some(1.0));
    assert!(metric(&text, "tarn_time_uncertainty_seconds").unwrap() >= 0.0);
}
