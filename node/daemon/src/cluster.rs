//! The ring in tarnd: shared ring state (the routing snapshot every core reads without a lock,
//! the members whose keys a handshake proved), the ring executor that drives the sans-IO
//! [`tarn_ring::Ring`], anti-entropy repair and handoff, and graceful leave.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use tarn_proto::peer::{DataRequest, DataResponse, KeyDigest, Record};
use tarn_proto::ring::{NodeRef, RingMessage, RingResponse};
use tarn_proto::{Epoch, Id, Key};
use tarn_ring::{key_digest, Action, Command, Event, Ring, RingConfig, Routing};

use crate::peer::{PeerError, PeerIdent, PeerInfo, Pool};
use crate::server::Shared;

/// Keys offered per anti-entropy request.
const OFFER_KEYS: usize = 2048;
/// Value bytes per repair transfer (well under the frame limit).
const TRANSFER_BYTES: usize = 32 * 1024;

/// Ring state shared by every executor.
pub struct Cluster {
    /// This node's link identity.
    pub ident: Arc<PeerIdent>,
    /// The latest routing snapshot (published by the ring executor).
    pub routing: ArcSwap<Routing>,
    /// Members whose key a handshake proved: id -> (address, public key).
    pub members: DashMap<Id, (String, [u8; 32])>,
    /// Copies of every record.
    pub replicas: usize,
    /// Deadline of node-to-node requests.
    pub rpc_timeout: Duration,
    /// Set by main on SIGTERM: hand records over, then stop taking part in the ring.
    pub leave: AtomicBool,
    /// Set by the ring executor once the handoff before leaving is done.
    pub left: AtomicBool,
    /// Per core, the sender half of its channel to the ring executor (taken at start).
    pub inboxes: std::sync::Mutex<Vec<Option<SharedSender<RingMessage>>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.ident.me.id)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Ring state for a node that has not started its ring executor yet.
    pub fn new(
        ident: Arc<PeerIdent>,
        cfg: &RingConfig,
        replicas: usize,
        inboxes: Vec<SharedSender<RingMessage>>,
    ) -> Cluster {
        let routing = Routing {
            me: ident.me.clone(),
            member: false,
            pred: None,
            succs: Vec::new(),
            fingers: Vec::new(),
            succ_list_len: cfg.succ_list_len,
            fanout: cfg.fanout,
        };
        Cluster {
            ident,
            routing: ArcSwap::from_pointee(routing),
            members: DashMap::new(),
            replicas,
            rpc_timeout: Duration::from_millis(cfg.rpc_timeout_ms),
            leave: AtomicBool::new(false),
            left: AtomicBool::new(false),
            inboxes: std::sync::Mutex::new(inboxes.into_iter().map(Some).collect()),
        }
    }

    /// Records a peer whose key a handshake proved.
    pub fn learn(&self, info: &PeerInfo) {
        self.members
            .insert(info.node.id, (info.node.addr.clone(), info.public_key));
    }

    /// A sample of live members for NODE_LIST: this node, its successors, predecessor and
    /// fingers, each with the public key its handshake proved.
    pub fn sample(&self, max: usize) -> Vec<(NodeRef, [u8; 32])> {
        let r = self.routing.load();
        let mut out: Vec<(NodeRef, [u8; 32])> = vec![(r.me.clone(), self.ident.public_key)];
        for n in r.succs.iter().chain(r.pred.iter()).chain(r.fingers.iter()) {
            if out.len() >= max {
                break;
            }
            if out.iter().any(|(m, _)| m.id == n.id) {
                continue;
            }
            if let Some(e) = self.members.get(&n.id) {
                out.push((n.clone(), e.1));
            }
        }
        out.truncate(max);
        out
    }
}

/// Milliseconds of the ring's clock (monotonic, from process start).
fn now_ms(shared: &Shared) -> u64 {
    shared.started.elapsed().as_millis() as u64
}

/// A link-event hook that keeps the member table and metrics.
pub fn link_hook(shared: Arc<Shared>) -> crate::peer::LinkHook {
    Box::new(move |info, r| match r {
        Ok(()) => {
            shared.metrics.peers_connected.inc();
            shared.cluster.learn(info);
        }
        Err(PeerError::Refused(reason)) => {
            shared
                .metrics
                .peers_refused
                .with_label_values(&[reason])
                .inc();
        }
        Err(_) => {}
    })
}

/// [`find`], also returning the nodes asked on the way (this node first).
pub async fn find_traced(
    pool: &Pool,
    routing: &Routing,
    target: &Id,
    hop_timeout: Duration,
) -> (Vec<NodeRef>, Option<Vec<NodeRef>>) {
    let mut route = vec![routing.me.clone()];
    let mut answer = routing.step(target);
    for _ in 0..64 {
        let candidates = match answer {
            RingResponse::Found { succs } if !succs.is_empty() => return (route, Some(succs)),
            RingResponse::Closer { candidates } if !candidates.is_empty() => candidates,
            _ => return (route, None),
        };
        let mut next = None;
        for c in &candidates {
            if let Ok(DataResponse::Step(r)) = pool
                .request(&c.addr, &DataRequest::Step { target: *target }, hop_timeout)
                .await
            {
                route.push(c.clone());
                next = Some(r);
                break;
            }
        }
        match next {
            Some(r) => answer = r,
            None => return (route, None),
        }
    }
    (route, None)
}

/// Iterative lookup from a core: the snapshot answers when the target lies within the successor
/// list; otherwise `Step` hops go to the closest known nodes, falling back along each answer's
/// candidates when a hop fails.
pub async fn find(
    pool: &Pool,
    routing: &Routing,
    target: &Id,
    hop_timeout: Duration,
) -> Option<Vec<NodeRef>> {
    if let Some(found) = routing.resolve(target) {
        return Some(found);
    }
    find_traced(pool, routing, target, hop_timeout).await.1
}

/// The ring executor's state.
struct Driver {
    ring: Ring,
    published: Routing,
    next_repair: Instant,
}

/// Runs the ring executor until the node has left: drives the state machine, publishes routing
/// snapshots, repairs, and hands records over before leaving.
pub async fn run_ring(
    shared: Arc<Shared>,
    cfg: RingConfig,
    inboxes: Vec<SharedReceiver<RingMessage>>,
    seed: u64,
) {
    let cluster = &shared.cluster;
    let pool = Rc::new(Pool::new(
        cluster.ident.clone(),
        Duration::from_millis(500),
        link_hook(shared.clone()),
    ));
    let mut ring = Ring::new(cfg, cluster.ident.me.clone(), seed);
    let now = now_ms(&shared);
    if shared.cfg.join.is_empty() {
        ring.command(now, Command::Bootstrap);
    } else {
        ring.command(
            now,
            Command::Join {
                via: shared.cfg.join.clone(),
            },
        );
    }
    let driver = Rc::new(RefCell::new(Driver {
        published: ring.routing(),
        ring,
        next_repair: Instant::now() + shared.cfg.repair_interval,
    }));
    let stop = Rc::new(std::cell::Cell::new(false));
    for rx in inboxes {
        let (driver, pool, shared, stop) =
            (driver.clone(), pool.clone(), shared.clone(), stop.clone());
        glommio::spawn_local(async move {
            let rx = rx.connect().await;
            while let Some(msg) = rx.recv().await {
                if stop.get() {
                    continue;
                }
                let now = now_ms(&shared);
                driver.borrow_mut().ring.handle(now, msg);
                pump(&driver, &pool, &shared);
            }
        })
        .detach();
    }
    let repairing = Rc::new(std::cell::Cell::new(false));
    loop {
        let now = now_ms(&shared);
        let due = driver.borrow().ring.poll_timeout();
        if due.is_some_and(|t| t <= now) {
            driver.borrow_mut().ring.handle_timeout(now);
        }
        pump(&driver, &pool, &shared);
        if cluster.leave.load(Ordering::Relaxed) {
            break;
        }
        let repair_due = driver.borrow().next_repair <= Instant::now();
        if repair_due && !repairing.get() {
            driver.borrow_mut().next_repair = Instant::now() + shared.cfg.repair_interval;
            let routing = driver.borrow().published.clone();
            let (pool, shared, repairing) = (pool.clone(), shared.clone(), repairing.clone());
            repairing.set(true);
            glommio::spawn_local(async move {
                let plan = routing.repair_plan(shared.cluster.replicas);
                repair_round(&shared, &pool, plan).await;
                repairing.set(false);
            })
            .detach();
        }
        let wait = due
            .map(|t| t.saturating_sub(now_ms(&shared)))
            .unwrap_or(50)
            .clamp(1, 50);
        glommio::timer::sleep(Duration::from_millis(wait)).await;
    }
    // Graceful leave: hand everything this node is responsible for to the successors that
    // will hold it once we are gone (one more than usual), then fall silent.
    while repairing.get() {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let routing = driver.borrow().published.clone();
    if routing.member && !routing.succs.is_empty() {
        let after = routing.pred.as_ref().map_or(routing.me.id, |p| p.id);
        let plan: Vec<tarn_ring::Push> = routing
            .succs
            .iter()
            .take(shared.cluster.replicas)
            .map(|s| tarn_ring::Push {
                to: s.clone(),
                after,
                upto: routing.me.id,
            })
            .collect();
        let started = Instant::now();
        let handed = glommio::timer::timeout(Duration::from_secs(20), async {
            Ok(repair_round(&shared, &pool, plan).await)
        })
        .await;
        match handed {
            Ok(sent) => tracing::info!(
                values = sent,
                ms = started.elapsed().as_millis() as u64,
                "handed records over before leaving"
            ),
            Err(_) => {
                tracing::warn!("handoff before leaving timed out; repair will restore copies")
            }
        }
    }
    stop.set(true);
    cluster.left.store(true, Ordering::Relaxed);
}

/// Carries out the ring's actions and publishes a new snapshot when the routing changed.
fn pump(driver: &Rc<RefCell<Driver>>, pool: &Rc<Pool>, shared: &Arc<Shared>) {
    let mut d = driver.borrow_mut();
    let mut changed = false;
    while let Some(action) = d.ring.poll_action() {
        match action {
            Action::Send { to, msg } => {
                if let RingMessage::Request {
                    body: tarn_ring::RingRequest::GetState,
                    ..
                } = &msg
                {
                    shared.metrics.ring_stabilize_rounds.inc();
                }
                let pool = pool.clone();
                glommio::spawn_local(async move { pool.send_ring(&to, msg).await }).detach();
            }
            Action::Event(Event::Joined) => {
                tracing::info!("joined the ring");
                changed = true;
            }
            Action::Event(Event::SuccessorsChanged | Event::PredecessorChanged) => {
                changed = true;
            }
            Action::Event(Event::LookupDone { .. }) => {}
        }
    }
    let routing = d.ring.routing();
    if routing != d.published {
        if changed {
            shared.metrics.ring_changes.inc();
            // Handoff: every membership change brings the next repair round forward.
            let soon = Instant::now() + Duration::from_millis(200);
            if d.next_repair > soon {
                d.next_repair = soon;
            }
        }
        let m = &shared.metrics;
        m.ring_member.set(routing.member as i64);
        m.ring_successors.set(routing.succs.len() as i64);
        m.ring_predecessor.set(routing.pred.is_some() as i64);
        m.ring_fingers.set(routing.fingers.len() as i64);
        if routing.succs.len() != d.published.succs.len() {
            tracing::info!(
                successors = routing.succs.len(),
                predecessor = routing.pred.is_some(),
                "ring neighbourhood changed"
            );
        }
        // Prove the keys of new neighbours now (NODE_LIST names only members whose key a
        // handshake proved), instead of when data first flows to them.
        for n in routing.succs.iter().chain(routing.pred.iter()) {
            if !shared.cluster.members.contains_key(&n.id) {
                let (pool, addr) = (pool.clone(), n.addr.clone());
                glommio::spawn_local(async move {
                    let _ = pool.link(&addr).await;
                })
                .detach();
            }
        }
        shared.cluster.routing.store(Arc::new(routing.clone()));
        d.published = routing;
    }
}

/// One anti-entropy round over `plan`; returns the values sent. Store scans and reads are a
/// blocking boundary on this executor only (the request cores never wait for them).
pub async fn repair_round(shared: &Arc<Shared>, pool: &Pool, plan: Vec<tarn_ring::Push>) -> u64 {
    let mut sent = 0u64;
    let timeout = shared.cluster.rpc_timeout * 5;
    for push in plan {
        // Digests per epoch of every key held in the push's range.
        let mut by_epoch: HashMap<Epoch, Vec<KeyDigest>> = HashMap::new();
        let scanned = shared
            .store
            .scan_range(push.after, push.upto, &mut |epoch, key, values| {
                by_epoch.entry(epoch).or_default().push(KeyDigest {
                    key,
                    digest: key_digest(values.iter().map(|v| (v.stamp, v.value.as_slice()))),
                });
                std::ops::ControlFlow::Continue(())
            });
        if let Err(e) = scanned {
            tracing::error!(error = %e, "repair: scan failed");
            continue;
        }
        for (epoch, digests) in by_epoch {
            for chunk in digests.chunks(OFFER_KEYS) {
                let offer = DataRequest::Offer {
                    epoch,
                    after: push.after,
                    upto: push.upto,
                    keys: chunk.to_vec(),
                };
                let want = match pool.request(&push.to.addr, &offer, timeout).await {
                    Ok(DataResponse::Want { keys }) => keys,
                    _ => break,
                };
                sent += transfer(shared, pool, &push.to.addr, epoch, &want, timeout).await;
                glommio::yield_if_needed().await;
            }
        }
    }
    shared.metrics.repair_rounds.inc();
    shared.metrics.repair_values.inc_by(sent);
    shared
        .metrics
        .repair_last_success
        .set(crate::timesync::system_ns() as f64 / 1e9);
    sent
}

/// Sends the values of `keys` to `to` in bounded batches.
async fn transfer(
    shared: &Shared,
    pool: &Pool,
    to: &str,
    epoch: Epoch,
    keys: &[Key],
    timeout: Duration,
) -> u64 {
    let mut sent = 0u64;
    let mut batch: Vec<Record> = Vec::new();
    let mut bytes = 0usize;
    for key in keys {
        let Ok(values) = shared.store.get(epoch, key) else {
            continue;
        };
        for v in values {
            bytes += v.value.len() + 64;
            batch.push(Record {
                epoch,
                key: *key,
                stamp: v.stamp,
                value: v.value,
            });
        }
        if bytes >= TRANSFER_BYTES {
            let records = std::mem::take(&mut batch);
            bytes = 0;
            let n = records.len() as u64;
            if !matches!(
                pool.request(to, &DataRequest::Replicate { records }, timeout)
                    .await,
                Ok(DataResponse::Replicated)
            ) {
                return sent;
            }
            sent += n;
        }
    }
    if !batch.is_empty() {
        let n = batch.len() as u64;
        if matches!(
            pool.request(to, &DataRequest::Replicate { records: batch }, timeout)
                .await,
            Ok(DataResponse::Replicated)
        ) {
            sent += n;
        }
    }
    sent
}
