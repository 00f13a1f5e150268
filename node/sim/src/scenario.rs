//! Seeded scenarios: build a ring by joins, optionally churn it (crashes, restarts, joins,
//! message loss, short partitions), let it settle, then check Zave's invariants and that
//! lookups from every node find the true successor.

use std::collections::HashMap;

use tarn_proto::{Epoch, Id, Key};
use tarn_ring::{Command, RingConfig};

use crate::net::{node_id, Rng, Sim, SimNet};
use crate::records::DataConfig;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Seed: the whole run replays from it.
    pub seed: u64,
    /// Initial members.
    pub nodes: usize,
    /// Churn events (0: none).
    pub churn_events: usize,
    /// Virtual time allowed to settle after the last disturbance.
    pub settle_ms: u64,
    /// Ring protocol constants.
    pub ring: RingConfig,
    /// Inserts through random members after building and after every churn event (0: none).
    pub records_per_event: usize,
    /// Data-plane constants.
    pub data: DataConfig,
    /// Keep crashes within the replication model (never `replicas` consecutive fragile
    /// nodes). Turned off only to show that the loss check catches real losses.
    pub respect_replicas: bool,
}

/// A node crashed or (re)started this recently may not hold its records yet; the churn never
/// takes down `replicas` consecutive such nodes (the model's "fewer than `replicas`
/// neighbours fail at once").
const FRAGILE_MS: u64 = 10_000;

impl Scenario {
    /// A scenario with defaults tuned for fast simulation.
    pub fn new(seed: u64, nodes: usize, churn_events: usize) -> Scenario {
        Scenario {
            seed,
            nodes,
            churn_events,
            settle_ms: 60_000,
            ring: RingConfig {
                fix_fingers_ms: 1000,
                ..RingConfig::default()
            },
            records_per_event: 3,
            data: DataConfig::default(),
            respect_replicas: true,
        }
    }

    /// The command that replays this scenario.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release -p tarn-sim -- --seed {} --nodes {} --churn {}",
            self.seed, self.nodes, self.churn_events
        )
    }
}

/// How a scenario ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Invariant violations at the end (empty: correct).
    pub violations: Vec<String>,
    /// Virtual ms from the last disturbance until the invariants first held.
    pub converge_ms: Option<u64>,
    /// Live members at the end.
    pub live: usize,
    /// Lookup hops observed in the final check.
    pub hops: Vec<u32>,
    /// Messages delivered.
    pub messages: u64,
    /// Each live node's final state, for diagnosing a failure.
    pub states: Vec<String>,
    /// Inserts acknowledged to clients (each checked: never lost, converged to its replicas).
    pub acked: usize,
    /// Of those, acknowledged with fewer than `replicas` copies (the ring was smaller).
    pub under_replicated: usize,
    /// Values moved by anti-entropy repair.
    pub repaired: u64,
}

/// Zave's invariants over the live members: each member's successor list is exactly the next
/// `min(r, n-1)` live members in ring order (one ordered ring, ordered lists, no duplicates,
/// not itself), and its predecessor is the previous live member.
pub fn check_invariants(sim: &Sim, r: usize) -> Vec<String> {
    let live = ring_order(sim);
    let n = live.len();
    let mut v = Vec::new();
    for (i, (id, addr)) in live.iter().enumerate() {
        let ring = sim.ring(addr).expect("live node");
        if !ring.is_member() {
            v.push(format!("{addr} ({}) is not a member", id.short()));
            continue;
        }
        let want: Vec<Id> = (1..n).take(r).map(|k| live[(i + k) % n].0).collect();
        let got: Vec<Id> = ring.successors().iter().map(|s| s.id).collect();
        if got != want {
            v.push(format!(
                "{addr}: successors {:?} but ring order says {:?}",
                got.iter().map(Id::short).collect::<Vec<_>>(),
                want.iter().map(Id::short).collect::<Vec<_>>()
            ));
        }
        let want_pred = (n > 1).then(|| live[(i + n - 1) % n].0);
        let got_pred = ring.predecessor().map(|p| p.id);
        if got_pred != want_pred {
            v.push(format!(
                "{addr}: predecessor {:?} but ring order says {:?}",
                got_pred.map(|p| p.short()),
                want_pred.map(|p| p.short())
            ));
        }
    }
    v
}

/// The live member responsible for `target` (its successor on the ring).
fn true_successor(live: &[(Id, String)], target: &Id) -> Id {
    live.iter()
        .map(|(id, _)| *id)
        .find(|id| id >= target)
        .unwrap_or(live[0].0)
}

/// Runs a scenario to the end.
pub fn run_scenario(sc: &Scenario) -> Outcome {
    let r = sc.ring.succ_list_len;
    let mut sim = Sim::new(sc.seed, SimNet::default(), sc.ring.clone());
    sim.set_data_config(sc.data.clone());
    let mut rng = Rng::new(sc.seed ^ 0x5ce4_a810);
    let mut violations = Vec::new();
    // When each node last crashed or (re)started.
    let mut fragile_since: HashMap<String, u64> = HashMap::new();
    let addr = |i: usize| format!("n{i}");
    let mut next_index = sc.nodes;

    // Build: node 0 bootstraps, the others join through a random earlier node.
    sim.start(&addr(0), node_id(sc.seed, &addr(0)), Command::Bootstrap);
    for i in 1..sc.nodes {
        let t = sim.now() + 50 + rng.below(200);
        sim.run_until(t);
        let via = (0..3).map(|_| addr(rng.below(i as u64) as usize)).collect();
        sim.start(&addr(i), node_id(sc.seed, &addr(i)), Command::Join { via });
    }
    let t = sim.now() + 5_000;
    sim.run_until(t);
    insert_some(&mut sim, &mut rng, sc.records_per_event);

    // Churn: keep fewer than r members dead at once, so no node loses its whole list.
    let mut dead: Vec<String> = Vec::new();
    for _ in 0..sc.churn_events {
        let t = sim.now() + 100 + rng.below(1500);
        sim.run_until(t);
        let live = sim.live();
        check_not_lost(&sim, sc.data.replicas, &mut violations);
        insert_some(&mut sim, &mut rng, sc.records_per_event);
        match rng.below(6) {
            0 | 1 if dead.len() + 1 < r && live.len() > 1 => {
                let victim = live[rng.below(live.len() as u64) as usize].clone();
                let now = sim.now();
                fragile_since.retain(|_, t| now.saturating_sub(*t) < FRAGILE_MS);
                if sc.respect_replicas
                    && sc.records_per_event > 0
                    && fragile_run(&sim, &fragile_since, &victim) >= sc.data.replicas
                {
                    continue;
                }
                // A ring whose every member died is gone; joiners cannot bring it back. Keep
                // at least one member alive (the model's assumption, like fewer than r dead).
                let members = live
                    .iter()
                    .filter(|a| sim.ring(a).is_some_and(|r| r.is_member()))
                    .count();
                let victim_is_member = sim.ring(&victim).is_some_and(|r| r.is_member());
                if !victim_is_member || members >= 2 {
                    trace(&sim, format_args!("crash {victim}"));
                    sim.crash(&victim);
                    fragile_since.insert(victim.clone(), sim.now());
                    dead.push(victim);
                }
            }
            2 if !dead.is_empty() => {
                // A crashed node comes back with nothing and joins as new.
                let back = dead.remove(rng.below(dead.len() as u64) as usize);
                let live = sim.live();
                let via = (0..3)
                    .map(|_| live[rng.below(live.len() as u64) as usize].clone())
                    .collect();
                let id = sim.ring(&back).expect("known").me().id;
                fragile_since.insert(back.clone(), sim.now());
                trace(&sim, format_args!("restart {back}"));
                sim.start(&back, id, Command::Join { via });
            }
            3 => {
                let live = sim.live();
                let via = (0..3)
                    .map(|_| live[rng.below(live.len() as u64) as usize].clone())
                    .collect();
                let a = addr(next_index);
                next_index += 1;
                fragile_since.insert(a.clone(), sim.now());
                trace(&sim, format_args!("join {a}"));
                sim.start(&a, node_id(sc.seed, &a), Command::Join { via });
            }
            4 => {
                // A burst of loss.
                sim.set_loss(50_000 + rng.below(150_000) as u32);
                let t = sim.now() + 200 + rng.below(600);
                sim.run_until(t);
                sim.set_loss(0);
            }
            _ => {
                // A short partition (shorter than the request timeout, so it acts like loss:
                // a partition long enough for both sides to drop each other splits Chord into
                // two rings that never merge — outside Zave's model, see README).
                let live = sim.live();
                for a in &live {
                    sim.set_group(a, (rng.below(2)) as u8);
                }
                let t = sim.now() + 100 + rng.below(sc.ring.rpc_timeout_ms / 2);
                sim.run_until(t);
                for a in &live {
                    sim.set_group(a, 0);
                }
            }
        }
    }

    check_not_lost(&sim, sc.data.replicas, &mut violations);
    // Settle: check every second until the invariants hold or time runs out.
    let start = sim.now();
    let mut converge_ms = None;
    let mut waiting: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    while sim.now() < start + sc.settle_ms {
        let t = sim.now() + 1000;
        sim.run_until(t);
        // A node whose bootstrap nodes all died cannot join through them; like an operator
        // with a fresh bootstrap list, hand it the current members after 5 s.
        let members: Vec<String> = sim
            .live()
            .into_iter()
            .filter(|a| sim.ring(a).is_some_and(|r| r.is_member()))
            .collect();
        for a in sim.live() {
            let (member, alone) = sim.ring(&a).map_or((false, false), |r| {
                (r.is_member(), r.successors().is_empty())
            });
            if member && !(alone && members.len() > 1) {
                waiting.remove(&a);
                continue;
            }
            let w = waiting.entry(a.clone()).or_insert(0);
            *w += 1;
            if *w >= 5 && !members.is_empty() {
                *w = 0;
                let others: Vec<String> = members.iter().filter(|m| **m != a).cloned().collect();
                if member {
                    // A member left alone while the ring lives on: a fresh bootstrap list lets
                    // its merge check find the ring.
                    sim.command(&a, Command::Learn { addrs: others });
                } else {
                    sim.command(&a, Command::Join { via: others });
                }
            }
        }
        let ring_violations = check_invariants(&sim, r);
        if ring_violations.is_empty() {
            converge_ms = Some(sim.now() - start);
            break;
        }
        if sim.now() + 1000 >= start + sc.settle_ms {
            violations.extend(ring_violations);
        }
    }
    // Records converge to their replica sets within a few repair rounds.
    if violations.is_empty() {
        let deadline = sim.now() + 10 * sc.data.repair_ms;
        loop {
            let t = sim.now() + sc.data.repair_ms;
            sim.run_until(t);
            let missing = check_replicated(&sim, sc.data.replicas);
            if missing.is_empty() {
                break;
            }
            if sim.now() >= deadline {
                violations.extend(missing.into_iter().take(10));
                break;
            }
        }
    }

    // Lookups from every live node for random targets must find the true successor.
    let mut hops = Vec::new();
    if violations.is_empty() {
        let live = ring_order(&sim);
        let mut asked = Vec::new();
        for (k, (_, a)) in live.iter().enumerate() {
            for j in 0..4u64 {
                let mut target = [0u8; 32];
                for chunk in target.chunks_mut(8) {
                    chunk.copy_from_slice(&rng.next().to_le_bytes());
                }
                let id = (k as u64) * 16 + j;
                sim.command(
                    a,
                    Command::Lookup {
                        id,
                        target: Id(target),
                    },
                );
                asked.push((a.clone(), id, Id(target)));
            }
        }
        let t = sim.now() + 10_000;
        sim.run_until(t);
        for (a, id, target) in asked {
            match sim.lookups.get(&(a.clone(), id)) {
                Some(o) => match &o.result {
                    Ok(found) if found[0].id == true_successor(&live, &target) => hops.push(o.hops),
                    Ok(found) => violations.push(format!(
                        "lookup from {a} for {} found {} instead of {}",
                        target.short(),
                        found[0].id.short(),
                        true_successor(&live, &target).short()
                    )),
                    Err(e) => violations.push(format!("lookup from {a} failed: {e:?}")),
                },
                None => violations.push(format!("lookup from {a} never finished")),
            }
        }
    }
    let mut states: Vec<(Id, String)> = sim
        .live()
        .into_iter()
        .map(|a| {
            let r = sim.ring(&a).expect("live");
            let line = format!(
                "{a} {} member={} pred={:?} succs={:?}",
                r.me().id.short(),
                r.is_member(),
                r.predecessor().map(|p| p.addr.clone()),
                r.successors()
                    .iter()
                    .map(|s| s.addr.clone())
                    .collect::<Vec<_>>()
            );
            (r.me().id, line)
        })
        .collect();
    states.sort();
    Outcome {
        acked: sim.acked.len(),
        under_replicated: sim
            .acked
            .iter()
            .filter(|a| a.copies < sc.data.replicas)
            .count(),
        repaired: sim.repairs_sent,
        violations,
        converge_ms,
        live: sim.live().len(),
        hops,
        messages: sim.delivered,
        states: states.into_iter().map(|(_, l)| l).collect(),
    }
}

/// Inserts `n` records through random live members (epochs 1 and 2).
fn insert_some(sim: &mut Sim, rng: &mut Rng, n: usize) {
    let members: Vec<String> = sim
        .live()
        .into_iter()
        .filter(|a| sim.ring(a).is_some_and(|r| r.is_member()))
        .collect();
    if members.is_empty() {
        return;
    }
    for _ in 0..n {
        let entry = &members[rng.below(members.len() as u64) as usize];
        let mut key = [0u8; 32];
        for chunk in key.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
        let epoch = Epoch(1 + rng.below(2));
        let value = rng.next().to_le_bytes().to_vec();
        sim.insert(entry, epoch, Key(key), value);
    }
}

/// Every record acknowledged with `replicas` copies is held by at least one live node. (A
/// record acknowledged with fewer copies — by a node that knew fewer live members — is
/// protected against fewer failures; the churn does not respect that smaller bound.)
fn check_not_lost(sim: &Sim, replicas: usize, violations: &mut Vec<String>) {
    let live = sim.live();
    for a in sim.acked.iter().filter(|a| a.copies >= replicas) {
        let (epoch, key, value) = (&a.epoch, &a.key, &a.value);
        if !live.iter().any(|a| sim.holds(a, *epoch, key, value)) {
            violations.push(format!(
                "acknowledged record {} of epoch {} lost at t={} ms",
                key.id().short(),
                epoch.0,
                sim.now()
            ));
        }
    }
}

/// Every acknowledged record is held by every member of its replica set.
fn check_replicated(sim: &Sim, replicas: usize) -> Vec<String> {
    let live = ring_order(sim);
    let mut v = Vec::new();
    for a in &sim.acked {
        let (epoch, key, value) = (&a.epoch, &a.key, &a.value);
        if a.copies < replicas && !live.iter().any(|(_, n)| sim.holds(n, *epoch, key, value)) {
            // Under-replicated and lost with its only holders: outside the promise.
            continue;
        }
        let target = key.id();
        let first = live.iter().position(|(id, _)| *id >= target).unwrap_or(0);
        for k in 0..replicas.min(live.len()) {
            let (_, a) = &live[(first + k) % live.len()];
            if !sim.holds(a, *epoch, key, value) {
                v.push(format!(
                    "record {} of epoch {} missing at replica {k} ({a})",
                    target.short(),
                    epoch.0
                ));
            }
        }
    }
    v
}

/// The length of the run of consecutive fragile nodes (in ring order over live and recently
/// crashed nodes) that `victim` would extend.
fn fragile_run(sim: &Sim, fragile: &HashMap<String, u64>, victim: &str) -> usize {
    let mut ring: Vec<(Id, bool)> = sim
        .live()
        .into_iter()
        .chain(fragile.keys().cloned())
        .filter_map(|a| {
            let id = sim.ring(&a)?.me().id;
            Some((id, a == victim || fragile.contains_key(&a)))
        })
        .collect();
    ring.sort();
    ring.dedup();
    let n = ring.len();
    let Some(at) = ring
        .iter()
        .position(|(id, _)| Some(*id) == sim.ring(victim).map(|r| r.me().id))
    else {
        return 1;
    };
    let mut run = 1;
    for step in 1..n {
        if !ring[(at + step) % n].1 {
            break;
        }
        run += 1;
    }
    for step in 1..n {
        if !ring[(at + n - step) % n].1 {
            break;
        }
        run += 1;
    }
    run.min(n)
}

/// With `TARN_SIM_TRACE` set, prints a churn event and who holds each acknowledged record.
fn trace(sim: &Sim, what: std::fmt::Arguments<'_>) {
    if std::env::var_os("TARN_SIM_TRACE").is_none() {
        return;
    }
    let live = sim.live();
    let ring = ring_order(sim);
    println!(
        "t={} {what}; ring {:?}",
        sim.now(),
        ring.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>()
    );
    for a in &sim.acked {
        let (epoch, key, value) = (&a.epoch, &a.key, &a.value);
        let holders: Vec<&String> = live
            .iter()
            .filter(|a| sim.holds(a, *epoch, key, value))
            .collect();
        println!("    {} held by {holders:?}", key.id().short());
    }
}

/// Live nodes as `(ring id, address)` in ring order.
fn ring_order(sim: &Sim) -> Vec<(Id, String)> {
    let mut live: Vec<(Id, String)> = sim
        .live()
        .into_iter()
        .map(|a| (sim.ring(&a).expect("live").me().id, a))
        .collect();
    live.sort();
    live
}
