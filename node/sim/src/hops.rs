//! Routing statistics over large rings whose converged state is installed directly (building
//! 16k nodes by joins would take the simulator far longer than it teaches): lookup hops, and
//! lookup success right after a fraction of the nodes fail at once, before any repair.

use tarn_proto::ring::NodeRef;
use tarn_proto::Id;
use tarn_ring::{Command, RingConfig};

use crate::net::{node_id, Rng, Sim, SimNet};

/// What a routing run measured.
#[derive(Clone, Debug)]
pub struct RouteStats {
    /// Nodes in the ring.
    pub nodes: usize,
    /// Fraction failed before the lookups.
    pub failed_fraction: f64,
    /// Lookups started.
    pub lookups: usize,
    /// Lookups that found the true (live) successor.
    pub correct: usize,
    /// Mean hops of the correct lookups.
    pub mean_hops: f64,
    /// 99th percentile of hops.
    pub p99_hops: u32,
    /// Lookups that returned a wrong node.
    pub wrong: usize,
    /// Failed lookups by cause.
    pub errors: std::collections::BTreeMap<String, usize>,
}

/// Builds a converged ring of `n` nodes, fails `fail_fraction` of them at once, and runs
/// `lookups` lookups for random ids from random live nodes.
pub fn route_stats(seed: u64, n: usize, fail_fraction: f64, lookups: usize) -> RouteStats {
    // Maintenance is switched off: this measures routing over the installed state only.
    let cfg = RingConfig {
        stabilize_ms: u64::MAX / 4,
        check_pred_ms: u64::MAX / 4,
        fix_fingers_ms: u64::MAX / 4,
        merge_check_ms: 0,
        ..RingConfig::default()
    };
    let r = cfg.succ_list_len;
    let mut sim = Sim::new(seed, SimNet::default(), cfg);
    let mut nodes: Vec<NodeRef> = (0..n)
        .map(|i| NodeRef {
            id: node_id(seed, &format!("n{i}")),
            addr: format!("n{i}"),
        })
        .collect();
    nodes.sort_by_key(|x| x.id);
    let succ_of = |target: &Id| -> usize {
        match nodes.binary_search_by(|x| x.id.cmp(target)) {
            Ok(i) => i,
            Err(i) => i % nodes.len(),
        }
    };
    for (i, me) in nodes.iter().enumerate() {
        let succs: Vec<NodeRef> = (1..n).take(r).map(|k| nodes[(i + k) % n].clone()).collect();
        let pred = (n > 1).then(|| nodes[(i + n - 1) % n].clone());
        let mut fingers = Vec::new();
        for k in (0..256).rev() {
            let f = &nodes[succ_of(&me.id.add_pow2(k as u32))];
            if Some(&f.id) == succs.first().map(|s| &s.id) || f.id == me.id {
                break;
            }
            fingers.push((k, f.clone()));
        }
        sim.install(me.clone(), pred, succs, fingers);
    }
    let mut rng = Rng::new(seed ^ 0xf41);
    let kill = (n as f64 * fail_fraction) as usize;
    let mut alive: Vec<bool> = vec![true; n];
    let mut killed = 0;
    while killed < kill {
        let i = rng.below(n as u64) as usize;
        if alive[i] {
            alive[i] = false;
            sim.crash(&nodes[i].addr);
            killed += 1;
        }
    }
    let live: Vec<usize> = (0..n).filter(|i| alive[*i]).collect();
    let true_succ = |target: &Id| -> Id {
        let mut i = succ_of(target);
        while !alive[i] {
            i = (i + 1) % n;
        }
        nodes[i].id
    };
    let mut asked = Vec::new();
    for id in 0..lookups as u64 {
        let from = &nodes[live[rng.below(live.len() as u64) as usize]];
        let mut t = [0u8; 32];
        for c in t.chunks_mut(8) {
            c.copy_from_slice(&rng.next().to_le_bytes());
        }
        sim.command(&from.addr, Command::Lookup { id, target: Id(t) });
        asked.push((from.addr.clone(), id, Id(t)));
    }
    let t = sim.now() + 60_000;
    sim.run_until(t);
    let mut hops = Vec::new();
    let mut wrong = 0;
    let mut errors = std::collections::BTreeMap::new();
    for (a, id, target) in asked {
        match sim.lookups.get(&(a, id)).map(|o| (&o.result, o.hops)) {
            Some((Ok(found), h)) if found[0].id == true_succ(&target) => hops.push(h),
            Some((Ok(_), _)) => wrong += 1,
            Some((Err(e), _)) => *errors.entry(format!("{e:?}")).or_insert(0) += 1,
            None => *errors.entry("unfinished".to_string()).or_insert(0) += 1,
        }
    }
    let correct = hops.len();
    hops.sort_unstable();
    RouteStats {
        nodes: n,
        failed_fraction: fail_fraction,
        lookups,
        correct,
        mean_hops: hops.iter().map(|h| *h as f64).sum::<f64>() / correct.max(1) as f64,
        p99_hops: hops
            .get(((correct as f64 - 1.0) * 0.99) as usize)
            .copied()
            .unwrap_or(0),
        wrong,
        errors,
    }
}
