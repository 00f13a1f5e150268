//! Encoding test vectors: each message below must encode to the bytes checked into
//! `tests/vectors/frames.txt`, and those bytes must decode back to the message. A change to the
//! wire format shows up here; after a deliberate one, run with `TARN_REGEN_VECTORS=1`.

use tarn_proto::frame::{self, Parsed, DEFAULT_MAX_BODY};
use tarn_proto::msg::*;
use tarn_proto::{Decoder, Epoch, Id, Key, Message};

fn cases() -> Vec<(&'static str, u64, Message)> {
    vec![
        (
            "hello",
            1,
            Message::Hello(Hello {
                version: 1,
                network: NetworkId::from_name("tarn-dev"),
                epoch_len_secs: 3600,
            }),
        ),
        (
            "insert",
            2,
            Message::Insert(Insert {
                epoch: Epoch(493_000),
                key: Key([0x11; 32]),
                value: b"sealed".to_vec(),
            }),
        ),
        (
            "retrieve",
            3,
            Message::Retrieve(Retrieve {
                epoch: Epoch(493_000),
                key: Key([0x22; 32]),
            }),
        ),
        ("time_sync", 4, Message::TimeSync),
        (
            "node_list",
            5,
            Message::NodeList(NodeListRequest { max: 16 }),
        ),
        (
            "insert_ok",
            2,
            Message::InsertReply(InsertReply::Stored { copies: 3 }),
        ),
        (
            "insert_failed",
            2,
            Message::InsertReply(InsertReply::Failed(FailCause::EpochOutOfWindow {
                now: Epoch(10),
            })),
        ),
        (
            "retrieve_found",
            3,
            Message::RetrieveReply(RetrieveReply::Found(vec![b"a".to_vec(), b"bc".to_vec()])),
        ),
        (
            "retrieve_not_found",
            3,
            Message::RetrieveReply(RetrieveReply::NotFound),
        ),
        (
            "time_reply",
            4,
            Message::TimeReply(TimeReply {
                unix_ns: 1_780_000_000_123_456_789,
                uncertainty_ns: 2_000_000,
                epoch_len_secs: 3600,
                ntp_synced: true,
            }),
        ),
        (
            "node_list_reply",
            5,
            Message::NodeListReply(NodeListReply {
                nodes: vec![NodeInfo {
                    id: Id([0x33; 32]),
                    public_key: [0x44; 32],
                    address: "127.0.0.1:7400".into(),
                }],
            }),
        ),
        ("error", 9, Message::error(ErrorCode::InvalidBody, "bad")),
    ]
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The package's directory: taken at run time (cargo sets it for tests), so a test binary built
/// in another checkout sharing the target directory still finds this checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

#[test]
fn frames_match_checked_in_vectors() {
    let path = manifest_dir().join("tests/vectors/frames.txt");
    let rendered: String = cases()
        .iter()
        .map(|(name, id, msg)| {
            format!(
                "{name} {}\n",
                to_hex(&frame::encode_to_vec(*id, msg).unwrap())
            )
        })
        .collect();
    if std::env::var_os("TARN_REGEN_VECTORS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&path).expect("vectors file present");
    assert_eq!(
        rendered, expected,
        "wire encoding drifted from tests/vectors/frames.txt"
    );

    let mut decoder = Decoder::new();
    for ((name, id, msg), line) in cases().iter().zip(expected.lines()) {
        let hex = line.split_once(' ').unwrap().1;
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let Parsed::Frame(f) = frame::parse_frame(&bytes, DEFAULT_MAX_BODY).unwrap() else {
            panic!("{name}: vector is incomplete")
        };
        assert_eq!(f.header.request_id, *id, "{name}");
        assert_eq!(&decoder.decode(&f).unwrap(), msg, "{name}");
    }
}
