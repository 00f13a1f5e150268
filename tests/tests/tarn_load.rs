//! tarn-load against a real tarnd: the closed loop stops at --count with every reply counted,
//! the open loop sends at the asked rate (loose bounds: this checks the schedule, not speed),
//! and the JSON carries the fields scripts rely on.

use std::process::Command;

use tarn_tests::{bin, Node};

fn load(args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin("tarn-load"))
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn closed_and_open_loop_runs_report_json() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let target = format!("tarn://{}", node.addr);

    let v = load(&[
        "--target",
        &target,
        "--conns",
        "4",
        "--pipeline",
        "4",
        "--count",
        "2000",
        "--keys",
        "500",
    ]);
    assert_eq!(v["ops"], 2000);
    assert_eq!(v["errors"], 0);
    for field in ["ops_per_sec", "p50_us", "p99_us", "p999_us", "max_us"] {
        assert!(v[field].as_f64().is_some_and(|x| x > 0.0), "{field} in {v}");
    }

    let v = load(&[
        "--target",
        &target,
        "--conns",
        "4",
        "--rate",
        "1000",
        "--duration",
        "1s",
        "--keys",
        "500",
    ]);
    let ops = v["ops"].as_u64().unwrap();
    assert!((500..=1100).contains(&ops), "1 s at 1000/s sent {ops}");
    assert_eq!(v["errors"], 0);
}

#[test]
fn the_limit_server_answers_the_same_load() {
    use std::io::BufRead;
    let mut child = Command::new(bin("limit-server"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit_once("listen=").unwrap().1.to_string();
    let v = load(&[
        "--target",
        &format!("tarn://{addr}"),
        "--conns",
        "4",
        "--pipeline",
        "8",
        "--count",
        "4000",
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn refused_inserts_count_as_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let target = format!("tarn://{}", node.addr);
    // Values over the node's max_value_bytes (1024 by default) are refused with a typed
    // failure: every one of them is an error, every read of a key never stored is not.
    let v = load(&[
        "--target",
        &target,
        "--conns",
        "2",
        "--pipeline",
        "4",
        "--count",
        "400",
        "--keys",
        "50",
        "--value-bytes",
        "2000",
        "--insert-pct",
        "100",
    ]);
    assert_eq!(v["ops"], 400);
    assert_eq!(v["errors"], 400, "{v}");
    let v = load(&[
        "--target",
        &target,
        "--conns",
        "2",
        "--count",
        "100",
        "--keys",
        "50",
        "--insert-pct",
        "0",
    ]);
    assert_eq!(v["ops"], 100);
    assert_eq!(v["errors"], 0, "{v}");
}

#[test]
fn inserts_write_fresh_keys_and_leave_the_preloaded_ones_at_one_value() {
    // Equal work with SET/GET: tarnd keeps up to 8 values per key where SET overwrites, so
    // the load's inserts must never reuse a key — not the preloaded ones, not another run's.
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let target = format!("tarn://{}", node.addr);
    let base = [
        "--target",
        &target,
        "--keys",
        "20",
        "--conns",
        "4",
        "--pipeline",
        "4",
    ];
    let v = load(
        &[
            &base[..],
            &["--preload", "--insert-pct", "0", "--count", "1"],
        ]
        .concat(),
    );
    assert_eq!(v["errors"], 0);
    for _ in 0..2 {
        let v = load(&[&base[..], &["--insert-pct", "100", "--count", "1000"]].concat());
        assert_eq!(v["errors"], 0);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = node.client().await;
        let status = c.status().await.unwrap();
        let e = status.now_epoch;
        let records: u64 = status.epochs.iter().map(|s| s.records).sum();
        assert_eq!(records, 20 + 2 * 1000, "every insert stored once");
        for i in 0..20u64 {
            match c.retrieve(e, tarn_tests::key(i)).await.unwrap() {
                tarn_proto::msg::RetrieveReply::Found(values) => {
                    assert_eq!(values.len(), 1, "preloaded key {i}")
                }
                other => panic!("preloaded key {i}: {other:?}"),
            }
        }
    });
}

#[test]
fn a_reply_to_no_request_in_flight_fails_the_connection() {
    use std::io::{Read, Write};
    use tarn_proto::frame::{self, Parsed};
    use tarn_proto::msg::{self, Kind};
    use tarn_proto::{Id, Message, NetworkId};

    // Answers the handshake and the time query as a node does, then every request with an id
    // that was never sent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        // tarn-load's time query, then its two load connections; never waits past the deadline
        // (a tarn-load that gave up early opens fewer).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut served = Vec::new();
        while served.len() < 3 && std::time::Instant::now() < deadline {
            let mut s = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                Err(e) => panic!("accept: {e}"),
            };
            s.set_nonblocking(false).unwrap();
            served.push(std::thread::spawn(move || {
                let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
                loop {
                    let n = match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let mut used = 0;
                    let mut out = Vec::new();
                    while let Ok(Parsed::Frame(f)) = frame::parse_frame(&buf[used..], 1 << 20) {
                        let id = f.header.request_id;
                        let (id, reply) = match Kind::from_u8(f.header.kind) {
                            Some(Kind::Hello) => (
                                id,
                                Message::HelloAck(msg::HelloAck {
                                    version: tarn_proto::PROTOCOL_VERSION,
                                    network: NetworkId::from_name("tarn-dev"),
                                    epoch_len_secs: 3600,
                                    node_id: Id([0; 32]),
                                    public_key: [0; 32],
                                    max_frame_bytes: frame::DEFAULT_MAX_BODY,
                                }),
                            ),
                            Some(Kind::TimeSync) => (
                                id,
                                Message::TimeReply(msg::TimeReply {
                                    unix_ns: 1_800_000_000_000_000_000,
                                    uncertainty_ns: 0,
                                    epoch_len_secs: 3600,
                                    ntp_synced: false,
                                }),
                            ),
                            _ => (
                                id + 1_000_000,
                                Message::RetrieveReply(msg::RetrieveReply::NotFound),
                            ),
                        };
                        frame::encode(id, &reply, &mut out).unwrap();
                        used += f.wire_len();
                    }
                    buf.drain(..used);
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            }));
        }
        for t in served {
            t.join().unwrap();
        }
    });
    let mut child = Command::new(bin("tarn-load"))
        .args(["--target", &format!("tarn://{addr}")])
        .args([
            "--conns",
            "2",
            "--count",
            "10",
            "--insert-pct",
            "0",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A tarn-load that waits for the reply it will never get is stopped here, not by CI.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tarn-load still waiting 30 s after the server's stray replies");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Both connections fail on their first reply: two errors, no operation counted.
    assert_eq!(v["errors"], 2, "{v}");
    assert_eq!(v["ops"], 0, "{v}");
    assert!(
        stderr.contains("a reply to no request in flight"),
        "{stderr}"
    );
}
