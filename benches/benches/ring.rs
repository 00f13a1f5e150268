//! The ring state machine's cost per input: answering lookup steps and stabilize requests on
//! a node with a converged state (a 1k-member view: full successor list and fingers).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tarn_proto::ring::{NodeRef, RingMessage, RingRequest};
use tarn_proto::Id;
use tarn_ring::{Ring, RingConfig};

fn node(i: u64) -> NodeRef {
    NodeRef {
        id: Id(*blake3::hash(&i.to_le_bytes()).as_bytes()),
        addr: format!("10.0.0.{i}:7400"),
    }
}

fn bench(c: &mut Criterion) {
    let mut all: Vec<NodeRef> = (0..1000).map(node).collect();
    all.sort_by_key(|n| n.id);
    let me = all[0].clone();
    let succs = all[1..9].to_vec();
    let fingers: Vec<(usize, NodeRef)> = (246..256)
        .map(|k| {
            let t = me.id.add_pow2(k);
            let f = all.iter().find(|n| n.id >= t).unwrap_or(&all[0]).clone();
            (k as usize, f)
        })
        .collect();
    let mut ring = Ring::new(RingConfig::default(), me.clone(), 7);
    ring.install_converged(0, Some(all[999].clone()), succs, fingers);
    let from = all[500].clone();

    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));
    let mut t = 0u64;
    g.bench_function("input/find_step", |b| {
        b.iter(|| {
            t += 1;
            let target = Id(*blake3::hash(&t.to_le_bytes()).as_bytes());
            ring.handle(
                t,
                RingMessage::Request {
                    rpc: t,
                    from: from.clone(),
                    body: RingRequest::FindStep { target },
                },
            );
            black_box(ring.poll_action());
        })
    });
    g.bench_function("input/get_state", |b| {
        b.iter(|| {
            t += 1;
            ring.handle(
                t,
                RingMessage::Request {
                    rpc: t,
                    from: from.clone(),
                    body: RingRequest::GetState,
                },
            );
            black_box(ring.poll_action());
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
