//! The frame decoder against hostile bytes: random buffers, truncations and bit flips of valid
//! frames. It must never panic and must classify every input. This is the same property the
//! cargo-fuzz target in `fuzz/` explores with coverage guidance; here it runs deterministically.

use tarn_proto::frame::{self, Parsed, DEFAULT_MAX_BODY};
use tarn_proto::msg::*;
use tarn_proto::{Decoder, Epoch, Key, Message};

/// A small deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn drain(buf: &[u8], decoder: &mut Decoder) -> usize {
    let mut at = 0;
    let mut frames = 0;
    while let Ok(Parsed::Frame(f)) = frame::parse_frame(&buf[at..], DEFAULT_MAX_BODY) {
        let _ = decoder.decode(&f);
        at += f.wire_len();
        frames += 1;
    }
    frames
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut decoder = Decoder::new();
    for _ in 0..20_000 {
        let len = (rng.next() % 256) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len >= 16 && rng.next().is_multiple_of(2) {
            buf[4] = PROTOCOL_VERSION; // get past the version check more often
            buf[6] = 0;
            buf[7] = 0;
            let body = (len - 16) as u32;
            buf[..4].copy_from_slice(&body.to_le_bytes());
        }
        drain(&buf, &mut decoder);
    }
}

#[test]
fn mutated_valid_frames_never_panic() {
    let msgs = [
        Message::Insert(Insert {
            epoch: Epoch(5),
            key: Key([1; 32]),
            value: vec![7; 40],
        }),
        Message::RetrieveReply(RetrieveReply::Found(vec![vec![1; 10], vec![2; 20]])),
        Message::NodeListReply(NodeListReply {
            nodes: vec![NodeInfo {
                id: tarn_proto::Id([5; 32]),
                public_key: [6; 32],
                address: "x:1".into(),
            }],
        }),
        Message::error(ErrorCode::Timeout, "late"),
    ];
    let mut rng = Rng(42);
    let mut decoder = Decoder::new();
    let mut decoded_ok = 0;
    for round in 0..20_000 {
        let msg = &msgs[round % msgs.len()];
        let mut buf = frame::encode_to_vec(round as u64, msg).unwrap();
        let flips = 1 + rng.next() % 4;
        for _ in 0..flips {
            let i = 16 + (rng.next() as usize % (buf.len() - 16));
            buf[i] ^= 1 << (rng.next() % 8);
        }
        if rng.next().is_multiple_of(4) {
            buf.truncate(rng.next() as usize % buf.len());
        }
        let Ok(Parsed::Frame(f)) = frame::parse_frame(&buf, DEFAULT_MAX_BODY) else {
            continue;
        };
        if decoder.decode(&f).is_ok() {
            decoded_ok += 1;
        }
    }
    // Some flips land in padding or value bytes and still validate; most do not.
    assert!(decoded_ok < 20_000);
}

#[test]
fn pipelined_frames_decode_in_order() {
    let mut buf = Vec::new();
    for id in 0..100u64 {
        let msg = Message::Retrieve(Retrieve {
            epoch: Epoch(id),
            key: Key([id as u8; 32]),
        });
        frame::encode(id, &msg, &mut buf).unwrap();
        buf.push(0); // deliberately shift the next frame off alignment ...
        buf.pop(); // ... and back: encode already handles arbitrary starting lengths
    }
    let mut decoder = Decoder::new();
    let mut at = 0;
    for id in 0..100u64 {
        let Parsed::Frame(f) = frame::parse_frame(&buf[at..], DEFAULT_MAX_BODY).unwrap() else {
            panic!()
        };
        assert_eq!(f.header.request_id, id);
        match decoder.decode(&f).unwrap() {
            Message::Retrieve(r) => assert_eq!(r.epoch, Epoch(id)),
            other => panic!("unexpected {other:?}"),
        }
        at += f.wire_len();
    }
    assert_eq!(at, buf.len());
    assert_eq!(drain(&buf, &mut decoder), 100);
}
