//! Frame encode/decode for the hot messages (300-byte values, as the load profiles use).

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

criterion_group!(benches, bench);
criterion_main!(benches);
