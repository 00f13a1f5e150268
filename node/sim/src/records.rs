//! Records in the simulator: the data plane of every node (routing an insert to the
//! responsible node, stamping, replicating to `replicas - 1` successors, acknowledging once the
//! write quorum holds) and anti-entropy repair after membership changes — all driven by the
//! same [`Routing`] plan and [`key_digest`] that tarnd uses, over in-memory stores.

use std::collections::HashMap;

use tarn_proto::peer::{DataFailure, DataRequest, DataResponse, KeyDigest, Record};
use tarn_proto::{Epoch, Id, Key};
use tarn_ring::{key_digest, Command, Routing};
use tarn_store::{Limits, MemoryStore, Store};

use crate::net::{Sim, Wire};

/// Data-plane constants.
#[derive(Clone, Debug)]
pub struct DataConfig {
    /// Copies of every record (the responsible node and its next `replicas - 1` successors).
    pub replicas: usize,
    /// Interval of the periodic repair.
    pub repair_ms: u64,
    /// Delay of the repair triggered by a membership change.
    pub repair_after_change_ms: u64,
    /// A data request unanswered after this fails.
    pub rpc_timeout_ms: u64,
}

impl Default for DataConfig {
    fn default() -> DataConfig {
        DataConfig {
            replicas: 3,
            repair_ms: 2000,
            repair_after_change_ms: 200,
            rpc_timeout_ms: 1000,
        }
    }
}

/// One node's data-plane state.
#[derive(Debug)]
pub(crate) struct DataNode {
    pub(crate) store: MemoryStore,
    calls: HashMap<u64, (u64, Call)>,
    coords: HashMap<u64, Coord>,
    next_rpc: u64,
    next_repair: u64,
    last_stamp: u64,
}

/// What an outstanding data request is for.
#[derive(Debug)]
enum Call {
    /// An entry node's forwarded insert (sim op id).
    Entry { op: u64 },
    /// A replica's acknowledgement for coordinator `coord`.
    Replica { coord: u64 },
    /// An anti-entropy offer to `to`.
    Offer { to: String, epoch: Epoch },
    /// Fire and forget (repair transfers).
    Ignore,
}

/// A responsible node's insert waiting for replica acknowledgements.
#[derive(Debug)]
struct Coord {
    reply: Reply,
    copies: usize,
    needed: usize,
    waiting: usize,
    deadline: u64,
}

/// Where a coordinator's answer goes.
#[derive(Debug)]
enum Reply {
    /// To the entry node's request.
    Remote { to: String, rpc: u64 },
    /// To this node's own client op.
    Local { op: u64 },
}

/// An insert acknowledged to the client.
#[derive(Clone, Debug)]
pub struct Acked {
    /// Its epoch.
    pub epoch: Epoch,
    /// Its key.
    pub key: Key,
    /// Its value.
    pub value: Vec<u8>,
    /// Copies the acknowledgement reported: `replicas`, or fewer when the responsible node knew
    /// fewer live members (a ring smaller than `replicas`).
    pub copies: usize,
}

/// An insert in flight, as the simulated client sees it.
#[derive(Clone, Debug)]
pub(crate) struct Op {
    pub(crate) record: (Epoch, Key, Vec<u8>),
}

impl DataNode {
    pub(crate) fn new(now: u64, cfg: &DataConfig) -> DataNode {
        DataNode {
            store: MemoryStore::new(Limits {
                max_values_per_key: 8,
                max_value_bytes: 1024,
                max_total_bytes: 0,
            }),
            calls: HashMap::new(),
            coords: HashMap::new(),
            next_rpc: 1,
            next_repair: now + cfg.repair_ms,
            last_stamp: 0,
        }
    }

    pub(crate) fn poll_timeout(&self) -> u64 {
        let calls = self.calls.values().map(|(d, _)| *d);
        let coords = self.coords.values().map(|c| c.deadline);
        calls.chain(coords).fold(self.next_repair, u64::min)
    }

    pub(crate) fn schedule_repair(&mut self, at: u64) {
        self.next_repair = self.next_repair.min(at);
    }
}

/// Lookup ids at or above this belong to data operations.
const DATA_LOOKUP: u64 = 1 << 62;

impl Sim {
    /// A client inserts through `entry`; returns the op id. [`Sim::acked`] lists the inserts
    /// whose acknowledgement reached the client.
    pub fn insert(&mut self, entry: &str, epoch: Epoch, key: Key, value: Vec<u8>) -> u64 {
        self.next_op += 1;
        let op = self.next_op;
        self.ops.insert(
            op,
            Op {
                record: (epoch, key, value),
            },
        );
        let Some(routing) = self.nodes.get(entry).map(|n| n.ring.routing()) else {
            return op;
        };
        match routing.resolve(&key.id()) {
            Some(found) => self.forward_put(entry, op, found[0].addr.clone()),
            None => self.command(
                entry,
                Command::Lookup {
                    id: DATA_LOOKUP + op,
                    target: key.id(),
                },
            ),
        }
        op
    }

    /// A data lookup finished at `addr`.
    pub(crate) fn data_lookup_done(&mut self, addr: &str, id: u64, found: Option<String>) {
        if id < DATA_LOOKUP {
            return;
        }
        if let Some(to) = found {
            self.forward_put(addr, id - DATA_LOOKUP, to);
        }
    }

    pub(crate) fn is_data_lookup(id: u64) -> bool {
        id >= DATA_LOOKUP
    }

    fn forward_put(&mut self, entry: &str, op: u64, to: String) {
        let Some(o) = self.ops.get(&op) else { return };
        let (epoch, key, value) = o.record.clone();
        if to == entry {
            self.coordinate(entry, Reply::Local { op }, epoch, key, value);
        } else {
            self.call(
                entry,
                to,
                DataRequest::Put { epoch, key, value },
                Call::Entry { op },
            );
        }
    }

    fn call(&mut self, from: &str, to: String, req: DataRequest, call: Call) {
        let now = self.now;
        let timeout = self.data_cfg.rpc_timeout_ms;
        let Some(n) = self.nodes.get_mut(from) else {
            return;
        };
        let rpc = n.data.next_rpc;
        n.data.next_rpc += 1;
        n.data.calls.insert(rpc, (now + timeout, call));
        self.transmit_wire(
            from,
            to,
            Wire::Data {
                from: from.to_string(),
                rpc,
                req,
            },
        );
    }

    /// The responsible node stores, replicates, and answers once the quorum holds.
    fn coordinate(&mut self, addr: &str, reply: Reply, epoch: Epoch, key: Key, value: Vec<u8>) {
        let now = self.now;
        let replicas = self.data_cfg.replicas;
        let Some(n) = self.nodes.get_mut(addr) else {
            return;
        };
        let routing = n.ring.routing();
        if !routing.is_responsible(&key.id()) {
            self.answer_put(addr, reply, Err(DataFailure::NotResponsible));
            return;
        }
        let stamp = (now * 1000).max(n.data.last_stamp + 1);
        n.data.last_stamp = stamp;
        if n.data.store.put(epoch, key, stamp, &value).is_err() {
            self.answer_put(addr, reply, Err(DataFailure::Internal));
            return;
        }
        let targets: Vec<String> = routing
            .replica_targets(replicas)
            .iter()
            .map(|s| s.addr.clone())
            .collect();
        let needed = routing.write_quorum(replicas);
        if needed <= 1 {
            self.answer_put(addr, reply, Ok(1));
            return;
        }
        let coord = n.data.next_rpc;
        n.data.next_rpc += 1;
        n.data.coords.insert(
            coord,
            Coord {
                reply,
                copies: 1,
                needed,
                waiting: targets.len(),
                deadline: now + self.data_cfg.rpc_timeout_ms,
            },
        );
        let record = Record {
            epoch,
            key,
            stamp,
            value,
        };
        for t in targets {
            self.call(
                addr,
                t,
                DataRequest::Replicate {
                    records: vec![record.clone()],
                },
                Call::Replica { coord },
            );
        }
    }

    fn answer_put(&mut self, addr: &str, reply: Reply, result: Result<usize, DataFailure>) {
        match reply {
            Reply::Local { op } => self.finish_op(op, result.ok()),
            Reply::Remote { to, rpc } => {
                let resp = match result {
                    Ok(copies) => DataResponse::Stored {
                        copies: copies as u8,
                    },
                    Err(f) => DataResponse::Failed(f),
                };
                self.transmit_wire(addr, to, Wire::Reply { rpc, resp });
            }
        }
    }

    fn finish_op(&mut self, op: u64, copies: Option<usize>) {
        if let Some(o) = self.ops.remove(&op) {
            if let Some(copies) = copies {
                let (epoch, key, value) = o.record;
                self.acked.push(Acked {
                    epoch,
                    key,
                    value,
                    copies,
                });
            }
        }
    }

    fn coord_progress(&mut self, addr: &str, coord: u64, ok: bool) {
        let Some(n) = self.nodes.get_mut(addr) else {
            return;
        };
        let Some(c) = n.data.coords.get_mut(&coord) else {
            return;
        };
        c.waiting -= 1;
        if ok {
            c.copies += 1;
        }
        if c.copies >= c.needed || c.waiting == 0 {
            let c = n.data.coords.remove(&coord).expect("present");
            let result = if c.copies >= c.needed {
                Ok(c.copies)
            } else {
                Err(DataFailure::Quorum {
                    copies: c.copies as u8,
                })
            };
            self.answer_put(addr, c.reply, result);
        }
    }

    /// A data request arrived at `addr`.
    pub(crate) fn on_data_request(&mut self, addr: &str, from: String, rpc: u64, req: DataRequest) {
        let resp = match req {
            DataRequest::Put { epoch, key, value } => {
                self.coordinate(addr, Reply::Remote { to: from, rpc }, epoch, key, value);
                return;
            }
            DataRequest::Replicate { records } => {
                let Some(n) = self.nodes.get(addr) else {
                    return;
                };
                let mut ok = true;
                for r in &records {
                    ok &= n.data.store.put(r.epoch, r.key, r.stamp, &r.value).is_ok();
                }
                if ok {
                    DataResponse::Replicated
                } else {
                    DataResponse::Failed(DataFailure::Internal)
                }
            }
            DataRequest::Get { epoch, key } => {
                let Some(n) = self.nodes.get(addr) else {
                    return;
                };
                let values = n.data.store.get(epoch, &key).unwrap_or_default();
                DataResponse::Values {
                    values: values.into_iter().map(|v| (v.stamp, v.value)).collect(),
                }
            }
            DataRequest::Step { target } => {
                let Some(n) = self.nodes.get(addr) else {
                    return;
                };
                DataResponse::Step(n.ring.routing().step(&target))
            }
            DataRequest::Offer {
                epoch,
                after,
                upto,
                keys,
            } => {
                let Some(n) = self.nodes.get(addr) else {
                    return;
                };
                let mine = digests(&n.data.store, epoch, after, upto);
                let keys = keys
                    .into_iter()
                    .filter(|k| mine.get(&k.key) != Some(&k.digest))
                    .map(|k| k.key)
                    .collect();
                DataResponse::Want { keys }
            }
        };
        self.transmit_wire(addr, from, Wire::Reply { rpc, resp });
    }

    /// A data response arrived at `addr`.
    pub(crate) fn on_data_response(&mut self, addr: &str, rpc: u64, resp: DataResponse) {
        let Some(n) = self.nodes.get_mut(addr) else {
            return;
        };
        let Some((_, call)) = n.data.calls.remove(&rpc) else {
            return;
        };
        match call {
            Call::Entry { op } => {
                let copies = match resp {
                    DataResponse::Stored { copies } => Some(copies as usize),
                    _ => None,
                };
                self.finish_op(op, copies);
            }
            Call::Replica { coord } => {
                let ok = matches!(resp, DataResponse::Replicated);
                self.coord_progress(addr, coord, ok);
            }
            Call::Offer { to, epoch } => {
                let DataResponse::Want { keys } = resp else {
                    return;
                };
                if keys.is_empty() {
                    return;
                }
                let mut records = Vec::new();
                for key in keys {
                    for v in n.data.store.get(epoch, &key).unwrap_or_default() {
                        records.push(Record {
                            epoch,
                            key,
                            stamp: v.stamp,
                            value: v.value,
                        });
                    }
                }
                self.repairs_sent += records.len() as u64;
                self.call(addr, to, DataRequest::Replicate { records }, Call::Ignore);
            }
            Call::Ignore => {}
        }
    }

    /// Fires the data plane's deadlines and repair timer at `addr`.
    pub(crate) fn data_timeout(&mut self, addr: &str) {
        let now = self.now;
        let Some(n) = self.nodes.get_mut(addr) else {
            return;
        };
        let expired: Vec<(u64, Call)> = {
            let due: Vec<u64> = n
                .data
                .calls
                .iter()
                .filter(|(_, (d, _))| *d <= now)
                .map(|(k, _)| *k)
                .collect();
            due.into_iter()
                .filter_map(|k| n.data.calls.remove(&k).map(|(_, c)| (k, c)))
                .collect()
        };
        let late: Vec<u64> = n
            .data
            .coords
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        let repair = n.data.next_repair <= now;
        if repair {
            n.data.next_repair = now + self.data_cfg.repair_ms;
        }
        for (_, call) in expired {
            match call {
                Call::Entry { op } => self.finish_op(op, None),
                Call::Replica { coord } => self.coord_progress(addr, coord, false),
                Call::Offer { .. } | Call::Ignore => {}
            }
        }
        for coord in late {
            let Some(n) = self.nodes.get_mut(addr) else {
                return;
            };
            if let Some(c) = n.data.coords.remove(&coord) {
                self.answer_put(
                    addr,
                    c.reply,
                    Err(DataFailure::Quorum {
                        copies: c.copies as u8,
                    }),
                );
            }
        }
        if repair {
            self.repair(addr);
        }
    }

    /// One anti-entropy round at `addr`: offer digests per the repair plan.
    fn repair(&mut self, addr: &str) {
        let Some(n) = self.nodes.get(addr) else {
            return;
        };
        let plan = n.ring.routing().repair_plan(self.data_cfg.replicas);
        let mut offers = Vec::new();
        for push in plan {
            for epoch in n.data.store.live_epochs() {
                let keys: Vec<KeyDigest> = digests(&n.data.store, epoch, push.after, push.upto)
                    .into_iter()
                    .map(|(key, digest)| KeyDigest { key, digest })
                    .collect();
                if !keys.is_empty() {
                    offers.push((push.clone(), epoch, keys));
                }
            }
        }
        for (push, epoch, keys) in offers {
            let to = push.to.addr.clone();
            self.call(
                addr,
                to.clone(),
                DataRequest::Offer {
                    epoch,
                    after: push.after,
                    upto: push.upto,
                    keys,
                },
                Call::Offer { to, epoch },
            );
        }
    }

    /// Whether `addr` (alive) holds `value` under `(epoch, key)`.
    pub fn holds(&self, addr: &str, epoch: Epoch, key: &Key, value: &[u8]) -> bool {
        self.nodes.get(addr).is_some_and(|n| {
            n.alive
                && n.data
                    .store
                    .get(epoch, key)
                    .is_ok_and(|vs| vs.iter().any(|v| v.value == value))
        })
    }

    /// A node's routing snapshot.
    pub fn routing(&self, addr: &str) -> Option<Routing> {
        self.nodes.get(addr).map(|n| n.ring.routing())
    }
}

/// Digests of every key `store` holds in `(after, upto]` of `epoch`.
fn digests(store: &MemoryStore, epoch: Epoch, after: Id, upto: Id) -> HashMap<Key, [u8; 32]> {
    let mut out = HashMap::new();
    let _ = store.scan_range(after, upto, &mut |e, key, values| {
        if e == epoch {
            out.insert(
                key,
                key_digest(values.iter().map(|v| (v.stamp, v.value.as_slice()))),
            );
        }
        std::ops::ControlFlow::Continue(())
    });
    out
}
