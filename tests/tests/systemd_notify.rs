//! tarnd under the command line and environment of ops/systemd/tarnd.service (systemd is not
//! PID 1 here, so the unit is verified elsewhere and its ExecStart is run by hand): READY=1 once
//! serving, WATCHDOG=1 pings within the watchdog interval, STOPPING=1 on SIGTERM, exit 0.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tarn_tests::bin;

#[test]
fn ready_watchdog_and_stopping_notifications() {
    let unit =
        std::fs::read_to_string(tarn_tests::manifest_dir().join("../ops/systemd/tarnd.service"))
            .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let example =
        std::fs::read_to_string(tarn_tests::manifest_dir().join("../ops/tarnd.example.toml"))
            .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    // The example config, on loopback port 0 and without the metrics port (tests run in parallel).
    let config = dir.path().join("tarnd.toml");
    let text = example
        .replace("listen = \"127.0.0.1:7400\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "metrics_listen = \"127.0.0.1:9400\"",
            "metrics_listen = \"off\"",
        );
    std::fs::write(&config, text).unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let words: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(|w| {
            w.replace("${STATE_DIRECTORY}", state.to_str().unwrap())
                .replace("/etc/tarn/tarnd.toml", config.to_str().unwrap())
        })
        .collect();
    let mut child = Command::new(bin("tarnd"))
        .args(&words)
        .env("STATE_DIRECTORY", &state)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "600000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;

    let mut got: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline && got.iter().filter(|m| m.contains("WATCHDOG=1")).count() < 3 {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    assert!(
        got.first().is_some_and(|m| m.contains("READY=1")),
        "first message READY=1: {got:?}"
    );
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "watchdog pings: {got:?}"
    );
    assert!(
        state.join("node.key").exists() && state.join("db").exists(),
        "state lives in STATE_DIRECTORY"
    );

    // SAFETY: signalling the child we started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let mut stopping = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !stopping {
        if let Ok(n) = sock.recv(&mut buf) {
            stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
