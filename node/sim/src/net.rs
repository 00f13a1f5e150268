//! The virtual network and event loop: nodes are tarn-ring state machines, messages are
//! delivered after a seeded random latency unless lost, partitioned away, or addressed to a
//! dead node. Time is virtual milliseconds; nothing reads a clock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use tarn_proto::peer::{DataRequest, DataResponse};
use tarn_proto::ring::{NodeRef, RingMessage};
use tarn_proto::Id;
use tarn_ring::{Action, Command, Event, Ring, RingConfig};

use crate::records::{DataConfig, DataNode, Op};

/// What travels between simulated nodes.
#[derive(Debug)]
pub(crate) enum Wire {
    /// Ring maintenance.
    Ring(RingMessage),
    /// A data-plane request.
    Data {
        from: String,
        rpc: u64,
        req: DataRequest,
    },
    /// A data-plane response.
    Reply { rpc: u64, resp: DataResponse },
}

/// Network behaviour.
#[derive(Clone, Debug)]
pub struct SimNet {
    /// Minimum one-way latency.
    pub min_latency_ms: u64,
    /// Maximum one-way latency.
    pub max_latency_ms: u64,
    /// Probability of losing a message, in parts per million.
    pub loss_ppm: u32,
}

impl Default for SimNet {
    fn default() -> SimNet {
        SimNet {
            min_latency_ms: 1,
            max_latency_ms: 30,
            loss_ppm: 0,
        }
    }
}

/// Deterministic PRNG (splitmix64).
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// One simulated node.
#[derive(Debug)]
pub(crate) struct SimNode {
    pub(crate) ring: Ring,
    pub(crate) data: DataNode,
    pub(crate) alive: bool,
    /// Partition group; messages cross groups only when both are 0 (no partition).
    pub(crate) group: u8,
    pub(crate) incarnation: u32,
}

/// The simulator.
#[derive(Debug)]
pub struct Sim {
    pub(crate) now: u64,
    pub(crate) rng: Rng,
    pub(crate) net: SimNet,
    pub(crate) cfg: RingConfig,
    pub(crate) nodes: BTreeMap<String, SimNode>,
    queue: BinaryHeap<Reverse<(u64, u64, String, u32)>>,
    payloads: HashMap<u64, Wire>,
    seq: u64,
    pub(crate) data_cfg: DataConfig,
    pub(crate) ops: HashMap<u64, Op>,
    pub(crate) next_op: u64,
    /// Inserts acknowledged to the client.
    pub acked: Vec<crate::records::Acked>,
    /// Values sent by anti-entropy repair.
    pub repairs_sent: u64,
    /// Finished user lookups: (node, lookup id) -> (result, hops).
    pub lookups: HashMap<(String, u64), tarn_ring::LookupOutcome>,
    /// Messages delivered so far.
    pub delivered: u64,
}

/// The ring id of simulated node `addr` in run `seed`.
pub fn node_id(seed: u64, addr: &str) -> Id {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(addr.as_bytes());
    Id(*h.finalize().as_bytes())
}

impl Sim {
    /// An empty network.
    pub fn new(seed: u64, net: SimNet, cfg: RingConfig) -> Sim {
        Sim {
            now: 0,
            rng: Rng::new(seed),
            net,
            cfg,
            nodes: BTreeMap::new(),
            queue: BinaryHeap::new(),
            payloads: HashMap::new(),
            seq: 0,
            data_cfg: DataConfig::default(),
            ops: HashMap::new(),
            next_op: 0,
            acked: Vec::new(),
            repairs_sent: 0,
            lookups: HashMap::new(),
            delivered: 0,
        }
    }

    /// Virtual time now.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Adds (or restarts, with fresh state) node `addr` with ring id `id`, and gives it `cmd`.
    pub fn start(&mut self, addr: &str, id: Id, cmd: Command) {
        let seed = self.rng.next();
        let incarnation = self.nodes.get(addr).map_or(0, |n| n.incarnation + 1);
        let ring = Ring::new(
            self.cfg.clone(),
            NodeRef {
                id,
                addr: addr.to_string(),
            },
            seed,
        );
        self.nodes.insert(
            addr.to_string(),
            SimNode {
                ring,
                data: DataNode::new(self.now, &self.data_cfg),
                alive: true,
                group: 0,
                incarnation,
            },
        );
        self.command(addr, cmd);
    }

    /// Adds a node with an installed converged state (see [`crate::route_stats`]).
    pub fn install(
        &mut self,
        me: NodeRef,
        pred: Option<NodeRef>,
        succs: Vec<NodeRef>,
        fingers: Vec<(usize, NodeRef)>,
    ) {
        let seed = self.rng.next();
        let addr = me.addr.clone();
        let mut ring = Ring::new(self.cfg.clone(), me, seed);
        ring.install_converged(self.now, pred, succs, fingers);
        self.nodes.insert(
            addr,
            SimNode {
                ring,
                data: DataNode::new(self.now, &self.data_cfg),
                alive: true,
                group: 0,
                incarnation: 0,
            },
        );
    }

    /// Gives node `addr` a command now.
    pub fn command(&mut self, addr: &str, cmd: Command) {
        let now = self.now;
        if let Some(n) = self.nodes.get_mut(addr) {
            n.ring.command(now, cmd);
        }
        self.drain(addr);
    }

    /// Crashes a node: it stops, messages to it are dropped.
    pub fn crash(&mut self, addr: &str) {
        if let Some(n) = self.nodes.get_mut(addr) {
            n.alive = false;
        }
    }

    /// Puts nodes in partition groups (0 = unpartitioned for everyone).
    pub fn set_group(&mut self, addr: &str, group: u8) {
        if let Some(n) = self.nodes.get_mut(addr) {
            n.group = group;
        }
    }

    /// Sets the loss rate.
    pub fn set_loss(&mut self, ppm: u32) {
        self.net.loss_ppm = ppm;
    }

    /// Live nodes' addresses.
    pub fn live(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.alive)
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// A node's ring state.
    pub fn ring(&self, addr: &str) -> Option<&Ring> {
        self.nodes.get(addr).map(|n| &n.ring)
    }

    fn drain(&mut self, addr: &str) {
        loop {
            let Some(n) = self.nodes.get_mut(addr) else {
                return;
            };
            let Some(action) = n.ring.poll_action() else {
                return;
            };
            match action {
                Action::Send { to, msg } => self.transmit_wire(addr, to, Wire::Ring(msg)),
                Action::Event(Event::LookupDone { id, outcome }) if Sim::is_data_lookup(id) => {
                    let found = outcome.result.ok().map(|f| f[0].addr.clone());
                    self.data_lookup_done(addr, id, found);
                }
                Action::Event(Event::LookupDone { id, outcome }) => {
                    self.lookups.insert((addr.to_string(), id), outcome);
                }
                Action::Event(Event::SuccessorsChanged | Event::PredecessorChanged) => {
                    // Every membership change triggers handoff and repair.
                    let at = self.now + self.data_cfg.repair_after_change_ms;
                    if let Some(n) = self.nodes.get_mut(addr) {
                        n.data.schedule_repair(at);
                    }
                }
                Action::Event(_) => {}
            }
        }
    }

    /// Sets the data-plane constants (before nodes start).
    pub fn set_data_config(&mut self, cfg: DataConfig) {
        self.data_cfg = cfg;
    }

    pub(crate) fn transmit_wire(&mut self, from: &str, to: String, msg: Wire) {
        if self.net.loss_ppm > 0 && self.rng.below(1_000_000) < self.net.loss_ppm as u64 {
            return;
        }
        let from_group = self.nodes.get(from).map_or(0, |n| n.group);
        let to_group = self.nodes.get(&to).map_or(0, |n| n.group);
        if from_group != to_group {
            return;
        }
        let span = self
            .net
            .max_latency_ms
            .saturating_sub(self.net.min_latency_ms)
            + 1;
        let at = self.now + self.net.min_latency_ms + self.rng.below(span);
        self.seq += 1;
        let incarnation = self.nodes.get(&to).map_or(0, |n| n.incarnation);
        self.payloads.insert(self.seq, msg);
        self.queue.push(Reverse((at, self.seq, to, incarnation)));
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: u64) {
        loop {
            let next_msg = self.queue.peek().map(|Reverse((t, ..))| *t);
            let next_timer = self
                .nodes
                .iter()
                .filter(|(_, n)| n.alive)
                .map(|(a, n)| {
                    let ring = n.ring.poll_timeout().unwrap_or(u64::MAX);
                    (ring.min(n.data.poll_timeout()).max(self.now), a.clone())
                })
                .min();
            let t = match (next_msg, &next_timer) {
                (Some(m), Some((tt, _))) => m.min(*tt),
                (Some(m), None) => m,
                (None, Some((tt, _))) => *tt,
                (None, None) => until,
            };
            if t > until {
                self.now = until;
                return;
            }
            self.now = t;
            if next_msg == Some(t) {
                let Reverse((_, seq, to, _incarnation)) = self.queue.pop().expect("peeked");
                let msg = self.payloads.remove(&seq).expect("payload");
                let now = self.now;
                let alive = self.nodes.get(&to).is_some_and(|n| n.alive);
                if alive {
                    self.delivered += 1;
                    match msg {
                        Wire::Ring(m) => {
                            if let Some(n) = self.nodes.get_mut(&to) {
                                n.ring.handle(now, m);
                            }
                        }
                        Wire::Data { from, rpc, req } => self.on_data_request(&to, from, rpc, req),
                        Wire::Reply { rpc, resp } => self.on_data_response(&to, rpc, resp),
                    }
                    self.drain(&to);
                }
            } else if let Some((_, addr)) = next_timer {
                let now = self.now;
                if let Some(n) = self.nodes.get_mut(&addr) {
                    if n.ring.poll_timeout().is_some_and(|t| t <= now) {
                        n.ring.handle_timeout(now);
                    }
                }
                self.drain(&addr);
                let due = self
                    .nodes
                    .get(&addr)
                    .is_some_and(|n| n.data.poll_timeout() <= now);
                if due {
                    self.data_timeout(&addr);
                    self.drain(&addr);
                }
            }
        }
    }
}
