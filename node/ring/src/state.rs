//! The ring state machine: membership maintenance (join, stabilize, rectify, predecessor
//! checks, fingers) and iterative lookups, driven by messages and `now`.

use std::collections::{HashMap, HashSet, VecDeque};

use tarn_proto::ring::{NodeRef, RingMessage, RingRequest, RingResponse};
use tarn_proto::Id;

use crate::lookup::{Lookup, LookupError, LookupId, LookupOutcome, Purpose};
use crate::Rng;

/// Protocol constants. Times are milliseconds of the caller's monotonic clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Successor list length `r`.
    pub succ_list_len: usize,
    /// Interval between stabilize rounds.
    pub stabilize_ms: u64,
    /// Interval between predecessor liveness checks.
    pub check_pred_ms: u64,
    /// Interval between finger fixes (one finger lookup per tick).
    pub fix_fingers_ms: u64,
    /// A request unanswered after this is treated as failed.
    pub rpc_timeout_ms: u64,
    /// A lookup hop unanswered after this moves on to the next candidate.
    pub hop_timeout_ms: u64,
    /// A lookup unfinished after this fails.
    pub lookup_timeout_ms: u64,
    /// A lookup taking more hops than this fails.
    pub max_hops: u32,
    /// Candidates offered in a `Closer` answer.
    pub fanout: usize,
    /// Delay before a failed join is retried.
    pub join_retry_ms: u64,
    /// Interval of the ring-merge check (0 disables it): a lookup of our own id through a
    /// random node seen before; a closer successor found that way is adopted, which weaves
    /// back together rings that a partition or heavy churn split apart.
    pub merge_check_ms: u64,
}

impl Default for RingConfig {
    fn default() -> RingConfig {
        RingConfig {
            succ_list_len: 8,
            stabilize_ms: 500,
            check_pred_ms: 1000,
            fix_fingers_ms: 200,
            rpc_timeout_ms: 1000,
            hop_timeout_ms: 400,
            lookup_timeout_ms: 5000,
            max_hops: 64,
            fanout: 5,
            join_retry_ms: 1000,
            merge_check_ms: 5000,
        }
    }
}

/// What the caller asks the ring to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Start a new ring alone.
    Bootstrap,
    /// Join the ring these nodes belong to (tried in turn until one answers).
    Join {
        /// Addresses of members (at least one).
        via: Vec<String>,
    },
    /// Remember these nodes' addresses (from a bootstrap list or NODE_LIST): the ring-merge
    /// check looks for the ring through them, so a node left alone finds its way back.
    Learn {
        /// Addresses of possible members.
        addrs: Vec<String>,
    },
    /// Find the node responsible for `target` (and its successors).
    Lookup {
        /// Caller's id for the lookup, echoed in [`Event::LookupDone`].
        id: LookupId,
        /// The id to look up.
        target: Id,
    },
}

/// What the ring reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The join finished: the node is a member.
    Joined,
    /// The successor list changed (handoff and replication react to this).
    SuccessorsChanged,
    /// The predecessor changed (the node's key range changed).
    PredecessorChanged,
    /// A lookup finished.
    LookupDone {
        /// The caller's id.
        id: LookupId,
        /// Its outcome.
        outcome: LookupOutcome,
    },
}

/// Something for the caller to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` to the node at `to`.
    Send {
        /// Destination address.
        to: String,
        /// The message.
        msg: RingMessage,
    },
    /// Report an event.
    Event(Event),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Not started.
    Idle,
    /// Looking for our successor through one of `via` (`attempt` picks which).
    Joining { via: Vec<String>, attempt: usize },
    /// Part of a ring (possibly alone).
    Member,
}

/// Why a request is outstanding.
#[derive(Debug)]
enum Rpc {
    /// Stabilize asked our first successor for its state.
    StabilizeSucc { succ: NodeRef },
    /// Stabilize asked a candidate successor (our successor's predecessor) for its state;
    /// `fallback` is the list to adopt if it does not answer.
    StabilizeCandidate { fallback: Vec<NodeRef> },
    /// We told our successor about ourselves.
    Rectify,
    /// Liveness check of our predecessor.
    PingPred { pred: NodeRef },
    /// Join: asked the found successor for its list.
    JoinState { succ: NodeRef },
    /// One hop of lookup `lookup`.
    Step { lookup: u64 },
}

#[derive(Debug)]
struct Pending {
    to: String,
    deadline: u64,
    rpc: Rpc,
}

/// The Chord state of one node.
#[derive(Debug)]
pub struct Ring {
    cfg: RingConfig,
    me: NodeRef,
    rng: Rng,
    phase: Phase,
    pred: Option<NodeRef>,
    succs: Vec<NodeRef>,
    /// `fingers[i]` = successor(me + 2^i) when it differs from our first successor.
    fingers: Vec<Option<NodeRef>>,
    next_finger: usize,
    finger_lookup: Option<u64>,
    pending: HashMap<u64, Pending>,
    lookups: HashMap<u64, Lookup>,
    next_rpc: u64,
    stabilizing: bool,
    next_stabilize: u64,
    next_check_pred: u64,
    next_fix_finger: u64,
    next_join_try: Option<u64>,
    /// Consecutive failed stabilize requests to our first successor (by address).
    suspect: Option<(String, u32)>,
    /// Members seen recently, for rejoining if every successor and the predecessor are lost.
    last_known: Vec<String>,
    /// Addresses of nodes ever seen (bounded), for the ring-merge check.
    known: Vec<String>,
    next_merge_check: u64,
    merge_lookup: Option<u64>,
    out: VecDeque<Action>,
}

/// Consecutive unanswered stabilize requests before a successor is declared dead. One lost
/// message must not cost a live successor: in small rings that can empty a successor list.
const SUSPICION_LIMIT: u32 = 2;
/// The same for the last remaining successor, whose loss leaves the node alone.
const LAST_SUCCESSOR_SUSPICION_LIMIT: u32 = 4;

impl Ring {
    /// A node that has not started; give it [`Command::Bootstrap`] or [`Command::Join`].
    pub fn new(cfg: RingConfig, me: NodeRef, seed: u64) -> Ring {
        Ring {
            cfg,
            me,
            rng: Rng::new(seed),
            phase: Phase::Idle,
            pred: None,
            succs: Vec::new(),
            fingers: vec![None; 256],
            next_finger: 255,
            finger_lookup: None,
            pending: HashMap::new(),
            lookups: HashMap::new(),
            next_rpc: 1,
            stabilizing: false,
            next_stabilize: 0,
            next_check_pred: 0,
            next_fix_finger: 0,
            next_join_try: None,
            suspect: None,
            last_known: Vec::new(),
            known: Vec::new(),
            next_merge_check: 0,
            merge_lookup: None,
            out: VecDeque::new(),
        }
    }

    /// This node.
    pub fn me(&self) -> &NodeRef {
        &self.me
    }

    /// Whether the node is a ring member (bootstrapped or joined).
    pub fn is_member(&self) -> bool {
        self.phase == Phase::Member
    }

    /// The successor list (never containing this node).
    pub fn successors(&self) -> &[NodeRef] {
        &self.succs
    }

    /// The predecessor, if known.
    pub fn predecessor(&self) -> Option<&NodeRef> {
        self.pred.as_ref()
    }

    /// Whether this node is responsible for `id`, i.e. `id ∈ (pred, me]` (everything when it
    /// knows no predecessor and no successor).
    pub fn is_responsible(&self, id: &Id) -> bool {
        crate::routing::responsible(&self.me.id, self.pred.as_ref(), &self.succs, id)
    }

    /// Installs a converged state directly (simulator only: to study routing over rings too
    /// large to build by joins). `fingers` are `(i, successor(me + 2^i))`.
    #[doc(hidden)]
    pub fn install_converged(
        &mut self,
        now: u64,
        pred: Option<NodeRef>,
        succs: Vec<NodeRef>,
        fingers: Vec<(usize, NodeRef)>,
    ) {
        self.pred = pred;
        self.succs = succs;
        for (i, f) in fingers {
            self.fingers[i] = Some(f);
        }
        self.phase = Phase::Member;
        self.schedule_member_timers(now);
    }

    /// The next action to carry out, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// When [`Ring::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut t: Option<u64> = None;
        let mut at = |x: u64| t = Some(t.map_or(x, |c| c.min(x)));
        if self.phase == Phase::Member {
            at(self.next_stabilize);
            at(self.next_check_pred);
            at(self.next_fix_finger);
        }
        if let Some(j) = self.next_join_try {
            at(j);
        }
        for p in self.pending.values() {
            at(p.deadline);
        }
        for l in self.lookups.values() {
            at(l.deadline);
        }
        t
    }

    /// Carries out a command.
    pub fn command(&mut self, now: u64, cmd: Command) {
        match cmd {
            Command::Bootstrap => {
                self.phase = Phase::Member;
                self.schedule_member_timers(now);
                self.out.push_back(Action::Event(Event::Joined));
            }
            Command::Join { via } => {
                for v in &via {
                    self.remember(v);
                }
                if via.is_empty() {
                    // Nothing to join: behave as a new ring rather than wait forever.
                    self.command(now, Command::Bootstrap);
                    return;
                }
                self.phase = Phase::Joining { via, attempt: 0 };
                self.start_join(now);
            }
            Command::Learn { addrs } => {
                for a in &addrs {
                    self.remember(a);
                }
            }
            Command::Lookup { id, target } => {
                // Start here; our successor list is the fallback of last resort (walking the
                // ring is slow but reaches the target when every shortcut fails).
                let candidates = if self.phase == Phase::Member {
                    std::iter::once(self.me.clone())
                        .chain(self.succs.iter().cloned())
                        .collect()
                } else {
                    Vec::new()
                };
                self.start_lookup(now, target, Purpose::User(id), candidates);
            }
        }
    }

    /// Handles a message from another node.
    pub fn handle(&mut self, now: u64, msg: RingMessage) {
        match msg {
            RingMessage::Request { rpc, from, body } => {
                // A node that is not (or no longer) a member stays silent to maintenance
                // requests, as if dead: answering with an empty state would truncate the
                // asker's successor list, and a stale entry for us must be dropped, not kept.
                if self.phase != Phase::Member && !matches!(body, RingRequest::FindStep { .. }) {
                    return;
                }
                let reply = self.answer(&from, body);
                self.send(
                    from.addr.clone(),
                    RingMessage::Response {
                        rpc,
                        from: self.me.clone(),
                        body: reply,
                    },
                );
            }
            RingMessage::Response { rpc, from, body } => {
                let Some(p) = self.pending.remove(&rpc) else {
                    return;
                };
                if p.to != from.addr {
                    // Not from whom we asked: keep waiting for the real answer.
                    self.pending.insert(rpc, p);
                    return;
                }
                self.on_response(now, p.rpc, from, body);
            }
        }
    }

    /// Fires every timer and deadline due at `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            if let Some(p) = self.pending.remove(&k) {
                if matches!(p.rpc, Rpc::Step { .. }) {
                    // A finger that does not answer is no use for routing until fixed again.
                    for f in self.fingers.iter_mut() {
                        if f.as_ref().is_some_and(|n| n.addr == p.to) {
                            *f = None;
                        }
                    }
                }
                self.on_failure(now, p.rpc);
            }
        }
        let late: Vec<u64> = self
            .lookups
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            self.finish_lookup(now, k, Err(LookupError::Timeout));
        }
        if let Some(t) = self.next_join_try {
            if t <= now {
                self.next_join_try = None;
                if let Phase::Joining { attempt, .. } = &mut self.phase {
                    *attempt += 1;
                    self.start_join(now);
                }
            }
        }
        if self.phase != Phase::Member {
            return;
        }
        if self.next_stabilize <= now {
            self.next_stabilize =
                now + self.cfg.stabilize_ms + self.rng.below(self.cfg.stabilize_ms / 4 + 1);
            self.stabilize(now);
        }
        if self.next_check_pred <= now {
            self.next_check_pred =
                now + self.cfg.check_pred_ms + self.rng.below(self.cfg.check_pred_ms / 4 + 1);
            if let Some(p) = self.pred.clone() {
                self.request(
                    now,
                    p.addr.clone(),
                    RingRequest::Ping,
                    Rpc::PingPred { pred: p },
                );
            }
        }
        if self.cfg.merge_check_ms > 0 && self.next_merge_check <= now {
            self.next_merge_check =
                now + self.cfg.merge_check_ms + self.rng.below(self.cfg.merge_check_ms / 2 + 1);
            if self.merge_lookup.is_none() && !self.known.is_empty() {
                let addr = self.known[self.rng.below(self.known.len() as u64) as usize].clone();
                let via = vec![NodeRef { id: Id::ZERO, addr }];
                self.merge_lookup = self.start_lookup(now, self.me.id, Purpose::Merge, via);
            }
        }
        if self.next_fix_finger <= now {
            self.next_fix_finger = now + self.cfg.fix_fingers_ms;
            if self.finger_lookup.is_none() && !self.succs.is_empty() {
                let i = self.next_finger;
                let target = self.me.id.add_pow2(i as u32);
                let key = self.start_lookup(now, target, Purpose::Finger(i), vec![self.me.clone()]);
                self.finger_lookup = key;
            }
        }
    }

    fn schedule_member_timers(&mut self, now: u64) {
        self.next_stabilize = now;
        self.next_check_pred = now + self.cfg.check_pred_ms;
        self.next_fix_finger = now + self.cfg.fix_fingers_ms;
        self.next_merge_check = now + self.cfg.merge_check_ms;
    }

    fn send(&mut self, to: String, msg: RingMessage) {
        self.out.push_back(Action::Send { to, msg });
    }

    fn request(&mut self, now: u64, to: String, body: RingRequest, rpc: Rpc) {
        let id = self.next_rpc;
        self.next_rpc += 1;
        self.pending.insert(
            id,
            Pending {
                to: to.clone(),
                deadline: now
                    + if matches!(rpc, Rpc::Step { .. }) {
                        self.cfg.hop_timeout_ms
                    } else {
                        self.cfg.rpc_timeout_ms
                    },
                rpc,
            },
        );
        self.send(
            to,
            RingMessage::Request {
                rpc: id,
                from: self.me.clone(),
                body,
            },
        );
    }

    /// `[head] ++ rest`, cut at the first occurrence of ourselves (a ring of at most r members
    /// wraps around there), without duplicates, at most r long.
    fn successor_list(&self, head: NodeRef, rest: Vec<NodeRef>) -> Vec<NodeRef> {
        let mut out: Vec<NodeRef> = Vec::with_capacity(self.cfg.succ_list_len);
        for n in std::iter::once(head).chain(rest) {
            if n.id == self.me.id || n.addr == self.me.addr {
                break;
            }
            if out.iter().any(|o| o.id == n.id) {
                continue;
            }
            out.push(n);
            if out.len() == self.cfg.succ_list_len {
                break;
            }
        }
        out
    }

    fn remember(&mut self, addr: &str) {
        if addr == self.me.addr || self.known.iter().any(|k| k == addr) {
            return;
        }
        if self.known.len() >= 64 {
            let i = self.rng.below(self.known.len() as u64) as usize;
            self.known[i] = addr.to_string();
        } else {
            self.known.push(addr.to_string());
        }
    }

    fn set_successors(&mut self, succs: Vec<NodeRef>) {
        for n in &succs {
            self.remember(&n.addr.clone());
        }
        if succs != self.succs {
            if !succs.is_empty() {
                self.last_known = succs.iter().map(|n| n.addr.clone()).collect();
            }
            self.succs = succs;
            self.out.push_back(Action::Event(Event::SuccessorsChanged));
        }
    }

    /// Every successor and the predecessor are gone. We stay a member (a ring of one: if all
    /// the others died, that is what is left), and once try to find the ring again through the
    /// members we knew last, in case they were only unreachable for a while.
    fn rejoin_if_isolated(&mut self, now: u64) {
        if self.succs.is_empty() && self.pred.is_none() && !self.last_known.is_empty() {
            let via: Vec<NodeRef> = std::mem::take(&mut self.last_known)
                .into_iter()
                .map(|addr| NodeRef { id: Id::ZERO, addr })
                .collect();
            self.start_lookup(now, self.me.id, Purpose::Join, via);
        }
    }

    fn set_predecessor(&mut self, pred: Option<NodeRef>) {
        if pred != self.pred {
            self.pred = pred;
            self.out.push_back(Action::Event(Event::PredecessorChanged));
        }
    }

    fn answer(&mut self, from: &NodeRef, body: RingRequest) -> RingResponse {
        match body {
            RingRequest::GetState => RingResponse::State {
                me: self.me.clone(),
                pred: self.pred.clone(),
                succs: self.succs.clone(),
            },
            RingRequest::Ping => RingResponse::Pong,
            RingRequest::Rectify(cand) => {
                if self.phase == Phase::Member && cand.id != self.me.id && cand.addr == from.addr {
                    let adopt = match &self.pred {
                        None => true,
                        Some(p) => cand.id.in_open(&p.id, &self.me.id),
                    };
                    if adopt {
                        self.set_predecessor(Some(cand));
                    }
                }
                RingResponse::Ack
            }
            RingRequest::FindStep { target } => self.local_step(&target),
        }
    }

    /// One lookup step evaluated here.
    fn local_step(&self, target: &Id) -> RingResponse {
        let view = crate::routing::StepView {
            me: &self.me,
            member: self.phase == Phase::Member,
            pred: self.pred.as_ref(),
            succs: &self.succs,
            succ_list_len: self.cfg.succ_list_len,
            fanout: self.cfg.fanout,
        };
        crate::routing::step_answer(&view, self.fingers.iter().flatten(), target)
    }

    /// A snapshot for the request cores (see [`Routing`](crate::Routing)).
    pub fn routing(&self) -> crate::Routing {
        let mut fingers: Vec<NodeRef> = Vec::new();
        for f in self.fingers.iter().flatten() {
            if !fingers.iter().any(|g| g.id == f.id) {
                fingers.push(f.clone());
            }
        }
        crate::Routing {
            me: self.me.clone(),
            member: self.phase == Phase::Member,
            pred: self.pred.clone(),
            succs: self.succs.clone(),
            fingers,
            succ_list_len: self.cfg.succ_list_len,
            fanout: self.cfg.fanout,
        }
    }

    fn stabilize(&mut self, now: u64) {
        if self.stabilizing {
            return;
        }
        match self.succs.first().cloned() {
            Some(s) => {
                self.stabilizing = true;
                self.request(
                    now,
                    s.addr.clone(),
                    RingRequest::GetState,
                    Rpc::StabilizeSucc { succ: s },
                );
            }
            None => {
                // Alone (or every successor gone): in Zave's model our successor is ourselves,
                // whose predecessor is the candidate.
                if let Some(p) = self.pred.clone() {
                    self.stabilizing = true;
                    self.request(
                        now,
                        p.addr,
                        RingRequest::GetState,
                        Rpc::StabilizeCandidate {
                            fallback: Vec::new(),
                        },
                    );
                }
            }
        }
    }

    fn adopt_and_rectify(&mut self, now: u64, succs: Vec<NodeRef>) {
        self.set_successors(succs);
        self.stabilizing = false;
        if let Some(s) = self.succs.first().cloned() {
            self.request(
                now,
                s.addr,
                RingRequest::Rectify(self.me.clone()),
                Rpc::Rectify,
            );
        }
    }

    fn on_response(&mut self, now: u64, rpc: Rpc, from: NodeRef, body: RingResponse) {
        match (rpc, body) {
            (Rpc::StabilizeSucc { succ }, RingResponse::State { pred, succs, .. }) => {
                self.suspect = None;
                let base = self.successor_list(succ.clone(), succs);
                match pred {
                    Some(p) if p.id != self.me.id && p.id.in_open(&self.me.id, &succ.id) => {
                        // Adopt only if it answers (Zave): ask it for its own list.
                        self.request(
                            now,
                            p.addr.clone(),
                            RingRequest::GetState,
                            Rpc::StabilizeCandidate { fallback: base },
                        );
                    }
                    _ => self.adopt_and_rectify(now, base),
                }
            }
            (Rpc::StabilizeCandidate { .. }, RingResponse::State { me, succs, .. }) => {
                let list = self.successor_list(me, succs);
                self.adopt_and_rectify(now, list);
            }
            (Rpc::JoinState { succ }, RingResponse::State { succs, .. }) => {
                let isolated =
                    self.phase == Phase::Member && self.succs.is_empty() && self.pred.is_none();
                if isolated {
                    let list = self.successor_list(succ, succs);
                    self.set_successors(list);
                    self.next_stabilize = now;
                } else if matches!(self.phase, Phase::Joining { .. }) {
                    let list = self.successor_list(succ, succs);
                    if list.is_empty() {
                        self.retry_join(now);
                        return;
                    }
                    self.pred = None;
                    self.set_successors(list);
                    self.phase = Phase::Member;
                    self.schedule_member_timers(now);
                    self.out.push_back(Action::Event(Event::Joined));
                }
            }
            (Rpc::Step { lookup }, body) => {
                let Some(l) = self.lookups.get_mut(&lookup) else {
                    return;
                };
                l.hops += 1;
                l.answered.insert(from.addr.clone());
                if let Some((list, next)) = &l.verify {
                    // Whatever it says, it answered: it is the live successor.
                    let found = list[next - 1..].to_vec();
                    self.finish_lookup(now, lookup, Ok(found));
                    return;
                }
                match body {
                    RingResponse::Found { succs } if !succs.is_empty() => {
                        self.on_found(now, lookup, &from.addr, succs);
                    }
                    RingResponse::Closer { candidates } => {
                        l.prepend(candidates);
                        self.step_lookup(now, lookup);
                    }
                    _ => self.step_lookup(now, lookup),
                }
            }
            (Rpc::Rectify, _) | (Rpc::PingPred { .. }, _) => {}
            (rpc, _) => {
                // A response of the wrong shape: treat as a failure of that request.
                let _ = from;
                self.on_failure(now, rpc);
            }
        }
    }

    fn on_failure(&mut self, now: u64, rpc: Rpc) {
        match rpc {
            Rpc::StabilizeSucc { succ } => {
                self.stabilizing = false;
                self.next_stabilize = now;
                let count = match &self.suspect {
                    Some((addr, n)) if *addr == succ.addr => n + 1,
                    _ => 1,
                };
                let limit = if self.succs.len() <= 1 {
                    LAST_SUCCESSOR_SUSPICION_LIMIT
                } else {
                    SUSPICION_LIMIT
                };
                if count < limit {
                    self.suspect = Some((succ.addr, count));
                    return;
                }
                // A dead first successor is dropped; stabilize again at once with the next.
                self.suspect = None;
                let rest: Vec<NodeRef> = self
                    .succs
                    .iter()
                    .filter(|n| n.addr != succ.addr)
                    .cloned()
                    .collect();
                self.set_successors(rest);
                self.rejoin_if_isolated(now);
            }
            Rpc::StabilizeCandidate { fallback } => {
                if fallback.is_empty() {
                    self.stabilizing = false;
                } else {
                    self.adopt_and_rectify(now, fallback);
                }
            }
            Rpc::PingPred { pred } => {
                if self.pred.as_ref() == Some(&pred) {
                    self.set_predecessor(None);
                    self.rejoin_if_isolated(now);
                }
            }
            Rpc::JoinState { .. } => self.retry_join(now),
            Rpc::Step { lookup } => self.step_lookup(now, lookup),
            Rpc::Rectify => {}
        }
    }

    fn start_join(&mut self, now: u64) {
        let Phase::Joining { via, attempt } = &self.phase else {
            return;
        };
        // Start from a different bootstrap node on each attempt; the others are fallbacks.
        let n = via.len();
        let candidates: Vec<NodeRef> = (0..n)
            .map(|k| NodeRef {
                id: Id::ZERO,
                addr: via[(attempt + k) % n].clone(),
            })
            .collect();
        self.start_lookup(now, self.me.id, Purpose::Join, candidates);
    }

    fn retry_join(&mut self, now: u64) {
        if matches!(self.phase, Phase::Joining { .. }) {
            self.next_join_try = Some(now + self.cfg.join_retry_ms);
        }
    }

    fn start_lookup(
        &mut self,
        now: u64,
        target: Id,
        purpose: Purpose,
        candidates: Vec<NodeRef>,
    ) -> Option<u64> {
        let key = self.next_rpc;
        self.next_rpc += 1;
        self.lookups.insert(
            key,
            Lookup {
                target,
                purpose,
                deadline: now + self.cfg.lookup_timeout_ms,
                hops: 0,
                candidates,
                asked: HashSet::new(),
                answered: HashSet::new(),
                verify: None,
            },
        );
        self.step_lookup(now, key);
        self.lookups.contains_key(&key).then_some(key)
    }

    /// A node says `succs` is the target's successor list. Its head is the answer if it is
    /// known to be alive (it is the responder, or answered before); otherwise ask the entries
    /// in turn, and the first that answers is the live successor.
    fn on_found(&mut self, now: u64, key: u64, responder: &str, succs: Vec<NodeRef>) {
        let Some(l) = self.lookups.get_mut(&key) else {
            return;
        };
        let head = &succs[0].addr;
        if head == responder || l.answered.contains(head) || *head == self.me.addr {
            self.finish_lookup(now, key, Ok(succs));
            return;
        }
        l.verify = Some((succs, 0));
        self.step_lookup(now, key);
    }

    fn step_lookup(&mut self, now: u64, key: u64) {
        loop {
            let Some(l) = self.lookups.get_mut(&key) else {
                return;
            };
            if let Some((list, next)) = &mut l.verify {
                let Some(c) = list.get(*next).cloned() else {
                    self.finish_lookup(now, key, Err(LookupError::NoCandidates));
                    return;
                };
                *next += 1;
                if c.addr == self.me.addr {
                    let found = list[*next - 1..].to_vec();
                    self.finish_lookup(now, key, Ok(found));
                    return;
                }
                let target = l.target;
                self.request(
                    now,
                    c.addr,
                    RingRequest::FindStep { target },
                    Rpc::Step { lookup: key },
                );
                return;
            }
            if l.hops > self.cfg.max_hops {
                self.finish_lookup(now, key, Err(LookupError::TooManyHops));
                return;
            }
            let Some(c) = l.next_candidate() else {
                self.finish_lookup(now, key, Err(LookupError::NoCandidates));
                return;
            };
            let target = l.target;
            if c.addr == self.me.addr {
                match self.local_step(&target) {
                    RingResponse::Found { succs } => {
                        let me = self.me.addr.clone();
                        self.on_found(now, key, &me, succs);
                        return;
                    }
                    RingResponse::Closer { candidates } => {
                        if let Some(l) = self.lookups.get_mut(&key) {
                            l.prepend(candidates);
                        }
                        continue;
                    }
                    _ => continue,
                }
            }
            self.request(
                now,
                c.addr.clone(),
                RingRequest::FindStep { target },
                Rpc::Step { lookup: key },
            );
            return;
        }
    }

    fn finish_lookup(&mut self, now: u64, key: u64, result: Result<Vec<NodeRef>, LookupError>) {
        let Some(l) = self.lookups.remove(&key) else {
            return;
        };
        // Drop requests still outstanding for this lookup.
        self.pending
            .retain(|_, p| !matches!(p.rpc, Rpc::Step { lookup } if lookup == key));
        match l.purpose {
            Purpose::User(id) => self.out.push_back(Action::Event(Event::LookupDone {
                id,
                outcome: LookupOutcome {
                    result,
                    hops: l.hops,
                },
            })),
            Purpose::Join => match result {
                Ok(found) => {
                    // Copy the successor list of a live member: the first found node that is
                    // not ourselves (a stale entry of our previous incarnation may linger).
                    match found
                        .into_iter()
                        .find(|n| n.id != self.me.id && n.addr != self.me.addr)
                    {
                        Some(s) => self.request(
                            now,
                            s.addr.clone(),
                            RingRequest::GetState,
                            Rpc::JoinState { succ: s },
                        ),
                        None => self.retry_join(now),
                    }
                }
                Err(_) => self.retry_join(now),
            },
            Purpose::Merge => {
                self.merge_lookup = None;
                let Ok(found) = result else { return };
                // Through another ring, the successor of our own id may lie between us and
                // our successor here: adopt it if it answers (as stabilize adopts a candidate).
                let Some(n) = found
                    .into_iter()
                    .find(|n| n.id != self.me.id && n.addr != self.me.addr)
                else {
                    return;
                };
                let closer = match self.succs.first() {
                    Some(s) => n.id.in_open(&self.me.id, &s.id),
                    None => true,
                };
                if closer && !self.stabilizing {
                    self.stabilizing = true;
                    let fallback = self.succs.clone();
                    self.request(
                        now,
                        n.addr.clone(),
                        RingRequest::GetState,
                        Rpc::StabilizeCandidate { fallback },
                    );
                }
            }
            Purpose::Finger(i) => {
                self.finger_lookup = None;
                if let Ok(found) = result {
                    let f = found.into_iter().next().filter(|n| n.id != self.me.id);
                    let is_succ = match (&f, self.succs.first()) {
                        (Some(f), Some(s)) => f.id == s.id,
                        (None, _) => true,
                        _ => false,
                    };
                    if is_succ {
                        // Every lower finger is our first successor too: clear them, start over.
                        for slot in &mut self.fingers[..=i] {
                            *slot = None;
                        }
                        self.next_finger = 255;
                        return;
                    }
                    self.fingers[i] = f;
                }
                self.next_finger = if i == 0 { 255 } else { i - 1 };
            }
        }
    }
}
