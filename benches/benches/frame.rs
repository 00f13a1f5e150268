//! Frame encode/decode for the hot messages (300-byte values, as the load profiles use), and
//! what the encrypted client–node channel adds per request.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tarn_proto::frame::{self, Parsed};
use tarn_proto::msg::{Insert, InsertReply, Retrieve, RetrieveReply};
use tarn_proto::{Decoder, Epoch, Key, Message};

fn bench(c: &mut Criterion) {
    let insert = Message::Insert(Insert {
        epoch: Epoch(493_000),
        key: Key([7; 32]),
        value: vec![0xab; 300],
    });
    let retrieve = Message::Retrieve(Retrieve {
        epoch: Epoch(493_000),
        key: Key([7; 32]),
    });
    let found = Message::RetrieveReply(RetrieveReply::Found(vec![vec![0xab; 300]]));
    let stored = Message::InsertReply(InsertReply::Stored { copies: 3 });

    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    for (name, msg) in [
        ("insert", &insert),
        ("retrieve", &retrieve),
        ("found", &found),
        ("stored", &stored),
    ] {
        let mut out = Vec::with_capacity(512);
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                out.clear();
                frame::encode(black_box(1), black_box(msg), &mut out).unwrap();
            })
        });
        let bytes = frame::encode_to_vec(1, msg).unwrap();
        let mut decoder = Decoder::new();
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| {
                let Ok(Parsed::Frame(f)) = frame::parse_frame(black_box(&bytes), 65536) else {
                    unreachable!()
                };
                black_box(decoder.decode(&f).unwrap());
            })
        });
    }
    g.finish();
}

/// One request and its reply through the Noise transport the client–node channel uses
/// (`tarn_proto::noise::NOISE_PARAMS`, after the NK handshake): the client seals an INSERT
/// frame, the node opens it, seals the reply, the client opens that. Each side does half.
fn channel(c: &mut Criterion) {
    use tarn_proto::noise::NOISE_PARAMS;
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().unwrap();
    let node_key = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let mut client = snow::Builder::new(params.clone())
        .remote_public_key(&node_key.public)
        .build_initiator()
        .unwrap();
    let mut node = snow::Builder::new(params)
        .local_private_key(&node_key.private)
        .build_responder()
        .unwrap();
    let (mut m, mut p) = (vec![0u8; 65_535], vec![0u8; 65_535]);
    let n = client.write_message(&[], &mut m).unwrap();
    node.read_message(&m[..n], &mut p).unwrap();
    let n = node.write_message(&[], &mut m).unwrap();
    client.read_message(&m[..n], &mut p).unwrap();
    let (mut client, mut node) = (
        client.into_transport_mode().unwrap(),
        node.into_transport_mode().unwrap(),
    );

    let request = frame::encode_to_vec(
        1,
        &Message::Insert(Insert {
            epoch: Epoch(493_000),
            key: Key([7; 32]),
            value: vec![0xab; 300],
        }),
    )
    .unwrap();
    let reply =
        frame::encode_to_vec(1, &Message::InsertReply(InsertReply::Stored { copies: 3 })).unwrap();
    let mut g = c.benchmark_group("channel");
    g.throughput(Throughput::Elements(1));
    g.bench_function("noise/insert_round_trip", |b| {
        b.iter(|| {
            let n = client.write_message(black_box(&request), &mut m).unwrap();
            let k = node.read_message(&m[..n], &mut p).unwrap();
            black_box(&p[..k]);
            let n = node.write_message(black_box(&reply), &mut m).unwrap();
            let k = client.read_message(&m[..n], &mut p).unwrap();
            black_box(&p[..k]);
        })
    });
    g.finish();
}

criterion_group!(benches, bench, channel);
criterion_main!(benches);
