//! Every kind of bad input gets a typed error reply or a closed connection; the node never
//! panics, and a well-behaved client keeps getting answers within its deadline meanwhile.

use std::time::Duration;

use tarn_proto::frame::{self, Parsed, HEADER_LEN};
use tarn_proto::msg::{ErrorCode, Insert, InsertReply, RetrieveReply};
use tarn_proto::{Decoder, Epoch, FailCause, Message};
use tarn_tests::{epoch_now, hello_frame, key, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads frames until `n` arrived or the connection closed; returns (id, message) pairs and
/// whether the peer closed.
async fn read_frames(s: &mut TcpStream, n: usize, limit: Duration) -> (Vec<(u64, Message)>, bool) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut decoder = Decoder::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        while let Ok(Parsed::Frame(f)) = frame::parse_frame(&buf, 1 << 20) {
            let (id, len) = (f.header.request_id, f.wire_len());
            out.push((id, decoder.decode(&f).expect("node sends valid frames")));
            buf.drain(..len);
        }
        if out.len() >= n {
            return (out, false);
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
            Err(_) => return (out, false),
        }
    }
}

async fn connected(node: &Node) -> TcpStream {
    let mut s = TcpStream::connect(&node.addr).await.unwrap();
    s.write_all(&hello_frame()).await.unwrap();
    let (got, _) = read_frames(&mut s, 1, Duration::from_secs(5)).await;
    assert!(matches!(got[0].1, Message::HelloAck(_)));
    s
}

fn error_code(m: &Message) -> ErrorCode {
    match m {
        Message::Error(e) => e.code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// A well-behaved client must keep getting answers within its deadline.
async fn assert_healthy(node: &Node) {
    let c = node.client_with_timeout(Duration::from_secs(2)).await;
    let e = epoch_now(3600);
    assert!(matches!(
        c.insert(e, key(777), b"ok".to_vec()).await.unwrap(),
        InsertReply::Stored { .. }
    ));
    assert!(matches!(
        c.retrieve(e, key(777)).await.unwrap(),
        RetrieveReply::Found(_)
    ));
}

#[tokio::test]
async fn garbage_bytes_get_an_error_and_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut s = TcpStream::connect(&node.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_frames(&mut s, 2, Duration::from_secs(5)).await;
    assert_eq!(error_code(&got[0].1), ErrorCode::UnsupportedVersion);
    assert!(closed);
    assert_healthy(&node).await;
}

#[tokio::test]
async fn a_client_that_hangs_up_after_its_request_gets_the_reply_and_a_close() {
    // The request and the FIN reach the node together: the read that takes the request comes
    // back short, and the node must still see the end of the stream at once, not at the idle
    // deadline (300 s here).
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let retrieve = Message::Retrieve(tarn_proto::msg::Retrieve {
        epoch: epoch_now(3600),
        key: key(5),
    });
    for round in 0..20u64 {
        let mut s = connected(&node).await;
        let mut out = Vec::new();
        frame::encode(round + 1, &retrieve, &mut out).unwrap();
        s.write_all(&out).await.unwrap();
        s.shutdown().await.unwrap();
        let (got, closed) = read_frames(&mut s, 2, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1, "round {round}: {got:?}");
        assert!(
            matches!(got[0].1, Message::RetrieveReply(RetrieveReply::NotFound)),
            "round {round}: {got:?}"
        );
        assert!(
            closed,
            "round {round}: not closed within 5 s of the hang-up"
        );
    }
    assert_healthy(&node).await;
}

#[tokio::test]
async fn inserts_then_a_hang_up_get_every_reply_before_the_close() {
    // The burst's inserts are committed and answered by the core's flusher (after the read's
    // reply, already encoded) while the connection's task may have read the end of the stream
    // already: every reply must still go out, in order, before the socket closes.
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let e = epoch_now(3600);
    for round in 0..20u64 {
        let mut s = connected(&node).await;
        let mut out = Vec::new();
        let retrieve = Message::Retrieve(tarn_proto::msg::Retrieve {
            epoch: e,
            key: key(u64::MAX),
        });
        frame::encode(1, &retrieve, &mut out).unwrap();
        for i in 0..8u64 {
            let insert = Message::Insert(Insert {
                epoch: e,
                key: key(1000 * round + i),
                value: vec![i as u8; 16],
            });
            frame::encode(i + 2, &insert, &mut out).unwrap();
        }
        s.write_all(&out).await.unwrap();
        s.shutdown().await.unwrap();
        let (got, closed) = read_frames(&mut s, 10, Duration::from_secs(5)).await;
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (1..=9).collect::<Vec<_>>(), "round {round}: {got:?}");
        assert!(
            matches!(got[0].1, Message::RetrieveReply(RetrieveReply::NotFound)),
            "round {round}: {got:?}"
        );
        for (_, m) in &got[1..] {
            assert!(
                matches!(m, Message::InsertReply(InsertReply::Stored { copies: 1 })),
                "round {round}: {m:?}"
            );
        }
        assert!(closed, "round {round}: not closed after the replies");
    }
    let c = node.client().await;
    assert!(matches!(
        c.retrieve(e, key(19_007)).await.unwrap(),
        RetrieveReply::Found(v) if v == vec![vec![7u8; 16]]
    ));
    assert_healthy(&node).await;
}

#[tokio::test]
async fn a_client_that_reads_its_insert_replies_late_gets_every_one() {
    // More insert replies than the socket buffers hold, read only after a pause: the flusher's
    // writes of them stop short, and the connection must write the rest, in order, once the
    // client reads.
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(node.addr.parse().unwrap()).await.unwrap();
    s.write_all(&hello_frame()).await.unwrap();
    let (got, _) = read_frames(&mut s, 1, Duration::from_secs(5)).await;
    assert!(matches!(got[0].1, Message::HelloAck(_)));
    const N: u64 = 150_000;
    let e = epoch_now(3600);
    let mut burst = Vec::new();
    for i in 0..N {
        let insert = Message::Insert(Insert {
            epoch: e,
            key: key(i),
            value: vec![1],
        });
        frame::encode(i + 1, &insert, &mut burst).unwrap();
    }
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move { wr.write_all(&burst).await.map(|()| wr) });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut buf = Vec::new();
    let mut decoder = Decoder::new();
    let mut next = 1u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while next <= N {
        while let Ok(Parsed::Frame(f)) = frame::parse_frame(&buf, 1 << 20) {
            let (id, len) = (f.header.request_id, f.wire_len());
            let m = decoder.decode(&f).expect("node sends valid frames");
            assert_eq!(id, next, "replies in request order");
            assert!(
                matches!(m, Message::InsertReply(InsertReply::Stored { .. })),
                "reply {id}: {m:?}"
            );
            buf.drain(..len);
            next += 1;
        }
        if next > N {
            break;
        }
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => panic!("closed after {} of {N} replies", next - 1),
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
            Err(_) => panic!("only {} of {N} replies within 60 s", next - 1),
        }
    }
    let _wr = writer.await.unwrap().unwrap();
    assert_healthy(&node).await;
}

#[tokio::test]
async fn requests_before_hello_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut s = TcpStream::connect(&node.addr).await.unwrap();
    s.write_all(&frame::encode_to_vec(9, &Message::TimeSync).unwrap())
        .await
        .unwrap();
    let (got, closed) = read_frames(&mut s, 2, Duration::from_secs(5)).await;
    assert_eq!(got[0].0, 9);
    assert_eq!(error_code(&got[0].1), ErrorCode::HelloRequired);
    assert!(closed);
}

#[tokio::test]
async fn oversized_frame_is_refused_by_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut s = connected(&node).await;
    let mut header = frame::encode_to_vec(31, &Message::TimeSync).unwrap();
    header[..4].copy_from_slice(&(100u32 << 20).to_le_bytes()); // announces 100 MiB
    s.write_all(&header).await.unwrap();
    let (got, closed) = read_frames(&mut s, 2, Duration::from_secs(5)).await;
    assert_eq!(got[0].0, 31);
    assert_eq!(error_code(&got[0].1), ErrorCode::FrameTooLarge);
    assert!(closed);
    assert_healthy(&node).await;
}

#[tokio::test]
async fn invalid_archive_and_unknown_kind_keep_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut s = connected(&node).await;
    let e = epoch_now(3600);
    let mut bad = frame::encode_to_vec(
        41,
        &Message::Insert(Insert {
            epoch: e,
            key: key(1),
            value: vec![1; 10],
        }),
    )
    .unwrap();
    for b in &mut bad[HEADER_LEN..] {
        *b = 0xff;
    }
    let mut unknown = frame::encode_to_vec(42, &Message::TimeSync).unwrap();
    unknown[5] = 0x5a; // a kind in the ring's reserved range
    let reply_kind =
        frame::encode_to_vec(43, &Message::InsertReply(InsertReply::Stored { copies: 1 })).unwrap();
    let good = frame::encode_to_vec(44, &Message::TimeSync).unwrap();
    s.write_all(&[bad, unknown, reply_kind, good].concat())
        .await
        .unwrap();
    let (got, closed) = read_frames(&mut s, 4, Duration::from_secs(5)).await;
    assert!(!closed);
    assert_eq!(
        (got[0].0, error_code(&got[0].1)),
        (41, ErrorCode::InvalidBody)
    );
    assert_eq!(
        (got[1].0, error_code(&got[1].1)),
        (42, ErrorCode::UnknownKind)
    );
    assert_eq!(
        (got[2].0, error_code(&got[2].1)),
        (43, ErrorCode::UnknownKind)
    );
    assert!(matches!(got[3], (44, Message::TimeReply(_))));
}

#[tokio::test]
async fn truncated_frame_times_out_without_stalling_others() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), "frame_timeout_ms = 1500\n");
    let mut s = connected(&node).await;
    let full = frame::encode_to_vec(5, &Message::TimeSync).unwrap();
    s.write_all(&full[..10]).await.unwrap(); // a header cut short, then silence
    assert_healthy(&node).await;
    let (got, closed) = read_frames(&mut s, 2, Duration::from_secs(10)).await;
    assert_eq!(error_code(&got[0].1), ErrorCode::Timeout);
    assert!(closed);
}

#[tokio::test]
async fn silent_connection_is_closed_before_its_hello() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), "frame_timeout_ms = 1000\n");
    let mut s = TcpStream::connect(&node.addr).await.unwrap();
    // A connection that never says hello gets nothing and is closed.
    assert!(time_to_close(&mut s).await < Duration::from_secs(5));
}

#[tokio::test]
async fn one_byte_per_second_client_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), "frame_timeout_ms = 2500\n");
    let mut s = connected(&node).await;
    let full = frame::encode_to_vec(5, &Message::TimeSync).unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for b in &full {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        // Meanwhile a normal client is served promptly.
        assert_healthy(&node).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut probe = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await
        {
            closed = true;
            break;
        }
    }
    if !closed {
        let (got, c) = read_frames(&mut s, 2, Duration::from_secs(5)).await;
        closed = c
            || got
                .iter()
                .any(|(_, m)| matches!(m, Message::Error(e) if e.code == ErrorCode::Timeout));
    }
    assert!(
        closed,
        "a 16-byte frame at 1 byte/s must be cut off by the 2.5 s frame deadline"
    );
    assert!(started.elapsed() < Duration::from_secs(12));
}

#[tokio::test]
async fn client_that_never_reads_its_replies_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), "frame_timeout_ms = 1000\n");
    let mut s = connected(&node).await;
    // Requests without end and not one reply read: the node's replies fill both socket
    // buffers, its write waits, and the frame deadline must end the connection.
    let mut burst = Vec::new();
    for id in 0..4096u64 {
        frame::encode(id, &Message::TimeSync, &mut burst).unwrap();
    }
    let started = std::time::Instant::now();
    let cut = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if s.write_all(&burst).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        cut.is_ok(),
        "a client that never reads must be cut off by the 1 s frame deadline"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_healthy(&node).await;
}

#[tokio::test]
async fn idle_client_is_closed_after_the_idle_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), "idle_timeout_secs = 1\n");
    let mut s = connected(&node).await;
    let idle = time_to_close(&mut s).await;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "closed after {idle:?}"
    );
    assert_healthy(&node).await;
}

#[tokio::test]
async fn oversized_value_and_out_of_window_epoch_are_typed_failures() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let c = node.client().await;
    let e = epoch_now(3600);
    assert_eq!(
        c.insert(e, key(1), vec![0; 1025]).await.unwrap(),
        InsertReply::Failed(FailCause::TooLarge { max: 1024 })
    );
    assert!(matches!(
        c.insert(Epoch(e.0 - 2), key(1), vec![1]).await.unwrap(),
        InsertReply::Failed(FailCause::EpochOutOfWindow { .. })
    ));
    assert!(matches!(
        c.insert(Epoch(0), key(1), vec![1]).await.unwrap(),
        InsertReply::Failed(FailCause::EpochOutOfWindow { .. })
    ));
}

#[tokio::test]
async fn full_key_evicts_the_oldest_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let c = node.client().await;
    let e = epoch_now(3600);
    for i in 0..12u8 {
        assert!(matches!(
            c.insert(e, key(5), vec![i; 4]).await.unwrap(),
            InsertReply::Stored { .. }
        ));
    }
    let RetrieveReply::Found(values) = c.retrieve(e, key(5)).await.unwrap() else {
        panic!("not found")
    };
    let firsts: Vec<u8> = values.iter().map(|v| v[0]).collect();
    assert_eq!(
        firsts,
        vec![11, 10, 9, 8, 7, 6, 5, 4],
        "8 newest kept, newest first"
    );
}

#[tokio::test]
async fn a_thousand_connections_from_one_client() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), "max_connections = 600\n");
    // SAFETY: raising this process's own soft fd limit to its hard limit.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    let mut streams = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(&node.addr).await.unwrap();
        s.write_all(&hello_frame()).await.unwrap();
        streams.push(s);
    }
    let mut served = 0;
    let mut refused = 0;
    for s in &mut streams {
        let (got, _) = read_frames(s, 1, Duration::from_secs(10)).await;
        match got.first().map(|(_, m)| m) {
            Some(Message::HelloAck(_)) => served += 1,
            Some(Message::Error(e)) if e.code == ErrorCode::Overloaded => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(served + refused, 1000);
    assert!((590..=600).contains(&served), "served {served}");
    // Still healthy once some are closed.
    streams.truncate(100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_healthy(&node).await;
}

#[test]
fn bad_config_names_the_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "epoch_secs = 0\nwal = \"maybe\"\nnot_a_key = 3\n",
    );
    match Node::try_start(dir.path(), &["--config", &cfg]) {
        tarn_tests::Started::Failed { code, stderr } => {
            assert_eq!(code, Some(2));
            for k in ["epoch_secs", "wal", "not_a_key"] {
                assert!(stderr.contains(k), "{k} not named in:\n{stderr}");
            }
        }
        tarn_tests::Started::Ready(_) => panic!("started with a bad config"),
    }
    match Node::try_start(dir.path(), &["--config", "/nonexistent/tarnd.toml"]) {
        tarn_tests::Started::Failed { code, stderr } => {
            assert_eq!(code, Some(2));
            assert!(stderr.contains("config: cannot read"), "{stderr}");
        }
        tarn_tests::Started::Ready(_) => panic!("started without its config file"),
    }
}

#[test]
fn second_node_on_a_used_port_refuses_to_start() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = Node::start(a.path(), &[]);
    match Node::try_start(b.path(), &["--listen", &first.addr]) {
        tarn_tests::Started::Failed { code, stderr } => {
            assert_eq!(code, Some(1));
            assert!(stderr.contains("cannot listen"), "{stderr}");
        }
        tarn_tests::Started::Ready(_) => panic!("two nodes on one port"),
    }
}

/// A node started with `text` as its configuration file.
fn start_with(dir: &std::path::Path, text: &str) -> Node {
    Node::start(dir, &["--config", &write_config(dir, text)])
}

/// Waits (up to 10 s) for the node to close `s` without sending anything; how long it took.
async fn time_to_close(s: &mut TcpStream) -> Duration {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "the node sent something instead of closing");
    started.elapsed()
}

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let p = dir.join(format!(
        "tarnd-{}.toml",
        blake3::hash(text.as_bytes()).to_hex()
    ));
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}
