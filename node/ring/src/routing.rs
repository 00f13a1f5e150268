//! What the rest of a node needs from the ring, without the state machine: a [`Routing`]
//! snapshot (published by the ring's executor to the request cores, which answer lookup hops
//! and route requests from it), the replica set and write quorum of a key, the anti-entropy
//! plan after every membership change, and the per-key digest that repair compares.

use tarn_proto::ring::{NodeRef, RingResponse};
use tarn_proto::Id;

/// A read-only view of one node's ring state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    /// This node.
    pub me: NodeRef,
    /// Whether it is a ring member.
    pub member: bool,
    /// Its predecessor.
    pub pred: Option<NodeRef>,
    /// Its successor list.
    pub succs: Vec<NodeRef>,
    /// Distinct finger nodes (an optimisation for lookups only).
    pub fingers: Vec<NodeRef>,
    /// Successor list length `r` (bounds `Found` answers).
    pub succ_list_len: usize,
    /// Candidates offered in a `Closer` answer.
    pub fanout: usize,
}

/// A node is responsible for `id` when `id ∈ (pred, me]`; with no predecessor, only a node
/// alone is responsible (for everything).
pub(crate) fn responsible(me: &Id, pred: Option<&NodeRef>, succs: &[NodeRef], id: &Id) -> bool {
    match pred {
        Some(p) => id.in_half_open(&p.id, me),
        None => succs.is_empty(),
    }
}

/// What a lookup hop needs to know about the answering node.
#[derive(Clone, Copy)]
pub(crate) struct StepView<'a> {
    pub(crate) me: &'a NodeRef,
    pub(crate) member: bool,
    pub(crate) pred: Option<&'a NodeRef>,
    pub(crate) succs: &'a [NodeRef],
    pub(crate) succ_list_len: usize,
    pub(crate) fanout: usize,
}

/// One lookup hop evaluated at a node: `Found` when the target's successor is this node or
/// within its successor list, else the known nodes (`others`: fingers) closest before the
/// target.
pub(crate) fn step_answer<'a>(
    v: &StepView<'a>,
    others: impl Iterator<Item = &'a NodeRef>,
    target: &Id,
) -> RingResponse {
    let StepView {
        me,
        member,
        pred,
        succs,
        succ_list_len,
        fanout,
    } = *v;
    if !member {
        return RingResponse::Closer {
            candidates: Vec::new(),
        };
    }
    if responsible(&me.id, pred, succs, target) {
        let mut found = vec![me.clone()];
        found.extend(succs.iter().take(succ_list_len.saturating_sub(1)).cloned());
        return RingResponse::Found { succs: found };
    }
    // Within the span of the successor list the answer is known: the entries from the first
    // one at or after the target (dead ones among them are skipped by verification).
    let mut prev = &me.id;
    for (k, s) in succs.iter().enumerate() {
        if target.in_half_open(prev, &s.id) {
            return RingResponse::Found {
                succs: succs[k..].to_vec(),
            };
        }
        prev = &s.id;
    }
    // At most a few dozen distinct fingers and r successors: a small vector beats a hash set,
    // and each distance is computed once.
    let mut c: Vec<(Id, &NodeRef)> = Vec::with_capacity(32);
    for n in others.chain(succs.iter()) {
        if n.id.in_open(&me.id, target) && !c.iter().any(|(_, m)| m.id == n.id) {
            c.push((n.id.distance_to(target), n));
        }
    }
    c.sort_unstable_by_key(|e| e.0);
    RingResponse::Closer {
        candidates: c.into_iter().take(fanout).map(|(_, n)| n.clone()).collect(),
    }
}

/// One anti-entropy push: offer the records held in `(after, upto]` to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// The receiver.
    pub to: NodeRef,
    /// Range start (exclusive).
    pub after: Id,
    /// Range end (inclusive).
    pub upto: Id,
}

impl Routing {
    /// Whether this node is responsible for `id`.
    pub fn is_responsible(&self, id: &Id) -> bool {
        self.member && responsible(&self.me.id, self.pred.as_ref(), &self.succs, id)
    }

    /// Whether the node is alone (a ring of one).
    pub fn alone(&self) -> bool {
        self.succs.is_empty()
    }

    /// One lookup hop evaluated here (the answer to a `FindStep`).
    pub fn step(&self, target: &Id) -> RingResponse {
        let view = StepView {
            me: &self.me,
            member: self.member,
            pred: self.pred.as_ref(),
            succs: &self.succs,
            succ_list_len: self.succ_list_len,
            fanout: self.fanout,
        };
        step_answer(&view, self.fingers.iter(), target)
    }

    /// The nodes that hold copies of what this node is responsible for besides itself: its
    /// first `replicas - 1` successors.
    pub fn replica_targets(&self, replicas: usize) -> &[NodeRef] {
        &self.succs[..self.succs.len().min(replicas.saturating_sub(1))]
    }

    /// Copies a write must reach before it is acknowledged: every copy, capped at the number
    /// of distinct live members this node knows (itself and its successors).
    pub fn write_quorum(&self, replicas: usize) -> usize {
        replicas.clamp(1, 1 + self.succs.len())
    }

    /// The anti-entropy plan (run after every membership change and periodically). Two kinds
    /// of push make every record converge to its replica set:
    /// - forward: what this node is responsible for, `(pred, me]`, to each replica target, so a
    ///   replica lost to a crash is replaced by the next successor;
    /// - backward: everything else it holds, `(me, pred]`, to its predecessor, so records move
    ///   towards nodes that joined in front of their holders (handoff), hop by hop if several
    ///   joined at once.
    ///
    /// A node without a predecessor pushes everything forward.
    pub fn repair_plan(&self, replicas: usize) -> Vec<Push> {
        if !self.member || self.succs.is_empty() {
            return Vec::new();
        }
        let me = self.me.id;
        let after = self.pred.as_ref().map_or(me, |p| p.id);
        let mut plan: Vec<Push> = self
            .replica_targets(replicas)
            .iter()
            .map(|s| Push {
                to: s.clone(),
                after,
                upto: me,
            })
            .collect();
        if let Some(p) = &self.pred {
            if p.id != me {
                plan.push(Push {
                    to: p.clone(),
                    after: me,
                    upto: p.id,
                });
            }
        }
        plan
    }

    /// Where a request for `target` goes when this snapshot knows it: this node or an entry of
    /// the successor list, followed by the next ones (the replica candidates). `None` when the
    /// target lies beyond the successor list (an iterative lookup is needed).
    pub fn resolve(&self, target: &Id) -> Option<Vec<NodeRef>> {
        match self.step(target) {
            RingResponse::Found { succs } => Some(succs),
            _ => None,
        }
    }
}

/// The digest of one key's values for anti-entropy: BLAKE3 over `(stamp, BLAKE3(value))`,
/// highest order first. Two replicas with the same set have the same digest.
pub fn key_digest<'a>(values: impl Iterator<Item = (u64, &'a [u8])>) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("tarn key digest v1");
    for (stamp, value) in values {
        h.update(&stamp.to_le_bytes());
        h.update(blake3::hash(value).as_bytes());
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeRef {
        let mut id = [0u8; 32];
        id[0] = b;
        NodeRef {
            id: Id(id),
            addr: format!("n{b}"),
        }
    }

    fn view(me: u8, pred: Option<u8>, succs: &[u8]) -> Routing {
        Routing {
            me: node(me),
            member: true,
            pred: pred.map(node),
            succs: succs.iter().map(|b| node(*b)).collect(),
            fingers: Vec::new(),
            succ_list_len: 8,
            fanout: 5,
        }
    }

    #[test]
    fn quorum_is_capped_by_known_members() {
        assert_eq!(view(10, None, &[]).write_quorum(3), 1);
        assert_eq!(view(10, Some(20), &[20]).write_quorum(3), 2);
        assert_eq!(view(10, Some(40), &[20, 30, 40]).write_quorum(3), 3);
        assert_eq!(
            view(10, Some(40), &[20, 30, 40]).replica_targets(3),
            &[node(20), node(30)]
        );
    }

    #[test]
    fn repair_plan_pushes_own_range_forward_and_the_rest_back() {
        let plan = view(10, Some(40), &[20, 30, 40]).repair_plan(3);
        assert_eq!(plan.len(), 3);
        assert_eq!(plan[0].to, node(20));
        assert_eq!((plan[0].after, plan[0].upto), (node(40).id, node(10).id));
        assert_eq!(plan[2].to, node(40));
        assert_eq!((plan[2].after, plan[2].upto), (node(10).id, node(40).id));
        assert!(view(10, None, &[]).repair_plan(3).is_empty());
    }

    #[test]
    fn resolve_covers_the_successor_span_only() {
        let v = view(10, Some(5), &[20, 30]);
        let mut t = [0u8; 32];
        t[0] = 25;
        assert_eq!(v.resolve(&Id(t)).unwrap()[0], node(30));
        t[0] = 8;
        assert_eq!(v.resolve(&Id(t)).unwrap()[0], node(10));
        t[0] = 31;
        assert!(v.resolve(&Id(t)).is_none());
    }

    #[test]
    fn digests_depend_on_stamps_and_values() {
        let a = key_digest([(1u64, &b"x"[..]), (2, b"y")].into_iter());
        assert_eq!(a, key_digest([(1u64, &b"x"[..]), (2, b"y")].into_iter()));
        assert_ne!(a, key_digest([(1u64, &b"x"[..]), (3, b"y")].into_iter()));
        assert_ne!(a, key_digest([(1u64, &b"x"[..])].into_iter()));
    }
}
