//! The thread-per-core server: one glommio executor per core, each accepting on the same port
//! (SO_REUSEPORT) and serving its connections to completion.
//!
//! Per connection: read into a buffer, frame with the shared sans-IO codec, answer every
//! complete frame, write replies. Inserts that arrive in one turn of a connection are handed to
//! the core's group-commit queue; a flusher task writes everything queued in one store batch
//! (the storage boundary, timed as `tarn_storage_duration_seconds`). A batch that must wait for
//! fsync (`every-write`) runs on glommio's blocking pool, so fsync never runs on the executor; a
//! batch that only appends to the WAL runs inline, which is cheaper than the thread handoff.
//! When a burst's inserts need only this node's store, the flusher also writes their replies
//! (into the connection's shared outbox, after the burst's earlier replies, straight to the
//! socket), so the connection's task is not woken a second time per insert; it goes back to
//! reading and, before it answers anything more, waits for those replies and writes what the
//! socket did not take. Replies carry request ids and may be reordered, but a read that follows
//! an insert on the same connection waits for that insert to commit.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream as PeerStream;
use std::net::TcpStream;
use tarn_proto::frame::{self, Parsed, HEADER_LEN};
use tarn_proto::msg::{
    self, ErrorCode, FailCause, InsertReply, RetrieveReply, RetrieveReplyRef, ValueRef,
};
use tarn_proto::{Decoder, Epoch, Id, Key, Message, NetworkId};
use tarn_store::{PutItem, Store, StoreError};

use glommio::channels::shared_channel::ConnectedSender;
use tarn_proto::peer::{self, DataFailure, DataRequest, DataResponse, PeerMessage, Record};
use tarn_proto::ring::RingMessage;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::{Metrics, GET_TIMING_EVERY};
use crate::peer::{PeerError, Pool};
use crate::timesync::Clock;

/// Replies buffered beyond this are written out before more requests are answered.
const FLUSH_AT: usize = 64 * 1024;
/// Buffers grown beyond this by a burst are released after it.
const MAX_KEPT_BUF: usize = 256 * 1024;

/// State shared by every core (read-only after start-up except for the shutdown flag).
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub cfg: Config,
    /// The record store.
    pub store: Arc<dyn Store>,
    /// The disciplined clock.
    pub clock: Arc<Clock>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// This node's ring id.
    pub node_id: Id,
    /// This node's public key.
    pub public_key: [u8; 32],
    /// The X25519 form of the node key (the Noise NK static key clients encrypt to).
    pub noise_secret: [u8; 32],
    /// The network's id.
    pub network: NetworkId,
    /// Address given in NODE_LIST.
    pub advertise: String,
    /// Process start.
    pub started: Instant,
    /// Executors serving.
    pub cores: usize,
    /// Set once to stop: cores stop accepting, finish in-flight requests and return.
    pub shutdown: AtomicBool,
    /// The ring: routing snapshot, members, leave flags.
    pub cluster: Cluster,
    /// Per core: milliseconds since `started` at its last heartbeat. A core whose heartbeat is
    /// old is stalled; the systemd watchdog is only fed while every core beats.
    pub heartbeats: Vec<AtomicU64>,
}

/// Interval of each core's heartbeat task.
pub const HEARTBEAT: Duration = Duration::from_millis(100);

impl Shared {
    /// Whether every core has beaten within `within`.
    pub fn cores_alive(&self, within: Duration) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        self.heartbeats
            .iter()
            .all(|h| now.saturating_sub(h.load(Ordering::Relaxed)) <= within.as_millis() as u64)
    }
}

impl Shared {
    fn now_epoch(&self) -> Epoch {
        Epoch::at_unix_ns(self.clock.now().unix_ns, self.cfg.epoch_secs)
    }
}

/// An insert waiting for its group commit.
#[derive(Debug)]
struct OwnedPut {
    epoch: Epoch,
    key: Key,
    stamp: u64,
    value: Vec<u8>,
}

/// A connection's inserts, committed together.
struct Job {
    items: Vec<OwnedPut>,
    done: Done,
}

/// Who learns how a [`Job`]'s inserts went.
enum Done {
    /// A task waiting for the results, one per insert: every commit that is not a
    /// [`Done::Answer`] (replicated writes, bursts with routed requests or reads behind their
    /// inserts, a connection closing or asking for its status, peers' replicas).
    Results(futures_channel::oneshot::Sender<Vec<Result<(), StoreError>>>),
    /// The flusher answers: one `(request id, arrival)` per insert, replies appended to the
    /// connection's outbox and written at once. The connection's task is not woken for them
    /// (it went back to reading), unless the client does not take the replies or it waits.
    Answer {
        out: Rc<RefCell<Outbox>>,
        watch: Rc<Watch>,
        requests: Vec<(u64, Instant)>,
    },
}

/// A connection's replies on their way out, shared with its core's flusher (see
/// [`Done::Answer`]).
#[derive(Default)]
struct Outbox {
    /// Replies encoded and not yet sealed or written (plaintext).
    wbuf: Vec<u8>,
    /// Bytes for the wire (sealed on the encrypted channel), not yet written.
    unsent: Vec<u8>,
    /// The encrypted channel, once its handshake is done.
    noise: Option<Box<snow::TransportState>>,
    /// Inserts are with the flusher: their replies come next, so nothing else is added (or
    /// written) until it has answered them.
    handed: bool,
    /// The flusher's write failed: the connection is unusable.
    broken: bool,
    /// The connection's task, waiting for the flusher to answer.
    waiter: Option<std::task::Waker>,
}

impl Outbox {
    /// Moves `wbuf` onto `unsent`, sealed when the channel is encrypted. False when sealing
    /// failed.
    fn seal(&mut self) -> bool {
        if self.wbuf.is_empty() {
            return true;
        }
        let Some(noise) = self.noise.as_mut() else {
            if self.unsent.is_empty() {
                std::mem::swap(&mut self.wbuf, &mut self.unsent);
            } else {
                self.unsent.extend_from_slice(&self.wbuf);
                self.wbuf.clear();
            }
            return true;
        };
        for chunk in self.wbuf.chunks(tarn_proto::noise::MAX_NOISE_PLAINTEXT) {
            let at = tarn_proto::noise::begin_data_frame(&mut self.unsent);
            self.unsent
                .resize(at + chunk.len() + tarn_proto::noise::NOISE_TAG, 0);
            match noise.write_message(chunk, &mut self.unsent[at..]) {
                Ok(n) => self.unsent.truncate(at + n),
                Err(_) => return false,
            }
            tarn_proto::noise::finish_data_frame(&mut self.unsent, at);
        }
        self.wbuf.clear();
        true
    }

    /// Marks the connection unusable: nothing more of it is written.
    fn break_off(&mut self) {
        self.broken = true;
        self.unsent.clear();
    }

    /// Ends a hand-over to the flusher: the connection may add replies again. Its task is
    /// woken if it waits for this, else its read is nudged when replies are left unwritten or
    /// the outbox broke (it has to see to them before it waits for anything else).
    fn hand_back(out: &RefCell<Outbox>, watch: &Watch) {
        let mut o = out.borrow_mut();
        o.handed = false;
        let left = o.broken || !o.unsent.is_empty();
        let waiter = o.waiter.take();
        drop(o);
        match waiter {
            Some(w) => w.wake(),
            None if left => watch.ready.nudge(),
            None => {}
        }
    }

    /// Gives back memory a burst made the buffers take.
    fn shrink(&mut self) {
        if self.wbuf.capacity() > MAX_KEPT_BUF {
            self.wbuf = Vec::with_capacity(16 * 1024);
        }
        if self.unsent.capacity() > MAX_KEPT_BUF {
            self.unsent = Vec::with_capacity(16 * 1024);
        }
    }
}

/// Pre-resolved metric children for the hot path (no label hashing per request).
struct CoreMetrics {
    insert_ok: prometheus::IntCounter,
    retrieve_found: prometheus::IntCounter,
    retrieve_not_found: prometheus::IntCounter,
    insert_seconds: prometheus::Histogram,
    retrieve_seconds: prometheus::Histogram,
    put_seconds: prometheus::Histogram,
    get_seconds: prometheus::Histogram,
    commit_queue: prometheus::IntGauge,
}

/// One core's state. Lives in an `Rc` on its executor; nothing here is shared across threads.
struct Core {
    shared: Arc<Shared>,
    m: CoreMetrics,
    /// Inserts waiting for the flusher; connections push, the flusher drains.
    queue: RefCell<Vec<Job>>,
    /// Wakes the flusher after a push.
    wake: LocalSender<()>,
    /// True while the flusher is writing a batch.
    in_flight: Cell<bool>,
    /// Open connections as the watcher sees them (deadlines; shutdown unblocks their reads).
    /// An entry is removed before its stream is dropped, so a listed fd is always open.
    conns: RefCell<HashMap<u64, Rc<Watch>>>,
    /// The epoll set of this core's client sockets (tokens are `conns` keys).
    poller: crate::sock::Poller,
    /// The watcher's wake-ups so far: connections date their deadlines in these ticks, so the
    /// request path reads no clock and arms no timer for them.
    tick: Cell<u64>,
    /// Set once the core has drained: the watcher stops.
    drained: Cell<bool>,
    /// `frame_timeout` and `idle_timeout` in watcher ticks ([`ticks`]), worked out once.
    frame_ticks: u64,
    idle_ticks: u64,
    next_conn: Cell<u64>,
    conn_limit: usize,
    last_stamp: Cell<u64>,
    /// Store reads so far (for sampling their timing).
    gets: Cell<u32>,
    /// Outgoing links to other nodes (forwarding, replication, lookups).
    peers: Rc<Pool>,
    /// Channel to the ring executor for ring messages that arrive on this core.
    ring_tx: Option<ConnectedSender<RingMessage>>,
}

/// How often the watcher wakes. A deadline counts whole ticks, so it is cut between its limit
/// and two ticks later; a watcher that wakes late (a busy core) only makes deadlines later.
const WATCH_TICK: Duration = Duration::from_millis(50);

/// A connection as its core's watcher sees it: its socket and the deadline of what it waits
/// for (the rest of a frame, the next request, a reply to drain). The watcher cuts the socket
/// when a deadline passes — one sweep per tick over the core's connections instead of a timer
/// armed and cancelled around every read and write.
struct Watch {
    fd: RawFd,
    /// `(since, ticks, how)`: the wait began during tick `since`, may last `ticks` whole
    /// ticks after it, and is then ended by `shutdown(fd, how)`.
    deadline: Cell<Option<(u64, u64, i32)>>,
    /// Set when the watcher cut the socket for a passed deadline.
    expired: Cell<bool>,
    /// Set when the cut included writes (a read cut still lets the connection say why).
    cut_writes: Cell<bool>,
    /// The socket's readiness, as the core's poller saw it.
    ready: crate::sock::Ready,
}

impl Watch {
    fn new(fd: RawFd) -> Watch {
        Watch {
            fd,
            deadline: Cell::new(None),
            expired: Cell::new(false),
            cut_writes: Cell::new(false),
            ready: crate::sock::Ready::default(),
        }
    }

    /// A wait that began during tick `since` and may last `ticks` ticks ([`ticks`]); reads are
    /// cut with `SHUT_RD` (the connection may still answer), writes with `SHUT_RDWR`.
    fn arm(&self, since: u64, ticks: u64, how: i32) {
        self.deadline.set(Some((since, ticks, how)));
    }

    fn disarm(&self) {
        self.deadline.set(None);
    }

    /// Cuts the socket if its deadline passed by tick `now`: the wait began before tick
    /// `since + 1`, and every tick is at least [`WATCH_TICK`] after the one before, so more than
    /// `ticks` ticks after that one the limit has passed.
    fn check(&self, now: u64) {
        let Some((since, ticks, how)) = self.deadline.get() else {
            return;
        };
        let writes = how != libc::SHUT_RD;
        let done = if writes {
            self.cut_writes.get()
        } else {
            self.expired.get()
        };
        if !done && now.saturating_sub(since) > ticks {
            self.expired.set(true);
            self.cut_writes.set(writes);
            // SAFETY: shutdown(2) on an open fd (entries leave `conns` before their close).
            unsafe { libc::shutdown(self.fd, how) };
        }
    }
}

/// `limit` in whole watcher ticks, rounded up.
fn ticks(limit: Duration) -> u64 {
    u64::try_from(limit.as_nanos().div_ceil(WATCH_TICK.as_nanos())).unwrap_or(u64::MAX)
}

/// A write's outcome: copies written, or why it failed.
type WriteResult = Result<u8, FailCause>;

fn store_cause(e: &StoreError, shared: &Shared) -> FailCause {
    match e {
        StoreError::TooLarge { max, .. } => FailCause::TooLarge { max: *max },
        StoreError::OverQuota { .. } => FailCause::OverQuota,
        StoreError::Expired { .. } => FailCause::EpochOutOfWindow {
            now: shared.now_epoch(),
        },
        StoreError::Engine { .. } | StoreError::Corrupt { .. } => {
            tracing::error!(error = %e, "write failed in the store");
            FailCause::Internal
        }
    }
}

impl Core {
    /// A strictly increasing stamp from the disciplined clock.
    fn stamp(&self) -> u64 {
        self.stamp_at(self.shared.clock.now().unix_ns)
    }

    /// [`Core::stamp`] from a clock reading the caller already took.
    fn stamp_at(&self, unix_ns: u64) -> u64 {
        let s = unix_ns.max(self.last_stamp.get() + 1);
        self.last_stamp.set(s);
        s
    }

    /// Whether to time this store read: one in [`GET_TIMING_EVERY`].
    fn time_this_get(&self) -> bool {
        let n = self.gets.get().wrapping_add(1);
        self.gets.set(n);
        n.is_multiple_of(GET_TIMING_EVERY)
    }

    async fn commit(&self, items: Vec<OwnedPut>) -> Vec<Result<(), StoreError>> {
        let n = items.len();
        self.m.commit_queue.add(n as i64);
        let results = self.commit_queued(items).await;
        self.m.commit_queue.sub(n as i64);
        results
    }

    async fn commit_queued(&self, items: Vec<OwnedPut>) -> Vec<Result<(), StoreError>> {
        let n = items.len();
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.borrow_mut().push(Job {
            items,
            done: Done::Results(tx),
        });
        let _ = self.wake.try_send(());
        rx.await.unwrap_or_else(|_| {
            vec![
                Err(StoreError::Engine {
                    op: "put",
                    detail: "group commit abandoned".into()
                });
                n
            ]
        })
    }
}

impl Core {
    /// The reply to an insert, counted and timed.
    fn insert_reply(&self, arrived: Instant, r: WriteResult) -> Message {
        let reply = match r {
            Ok(copies) => {
                self.m.insert_ok.inc();
                InsertReply::Stored { copies }
            }
            Err(cause) => {
                self.shared
                    .metrics
                    .requests
                    .with_label_values(&["insert", cause_label(&cause)])
                    .inc();
                InsertReply::Failed(cause)
            }
        };
        self.m
            .insert_seconds
            .observe(arrived.elapsed().as_secs_f64());
        Message::InsertReply(reply)
    }

    /// Answers a connection's committed inserts ([`Done::Answer`]): their replies go after
    /// the ones already in its outbox, and everything is written at once without waiting.
    /// What the socket does not take now, or a failed write, is left to the connection, whose
    /// read is interrupted to see to it.
    fn answer(
        &self,
        out: &RefCell<Outbox>,
        watch: &Watch,
        requests: Vec<(u64, Instant)>,
        results: Vec<Result<(), StoreError>>,
    ) {
        self.m.commit_queue.sub(requests.len() as i64);
        let mut o = out.borrow_mut();
        for ((request_id, arrived), r) in requests.into_iter().zip(results) {
            let r = r.map(|()| 1).map_err(|e| store_cause(&e, &self.shared));
            let reply = self.insert_reply(arrived, r);
            encode_reply(request_id, &reply, &mut o.wbuf);
        }
        let written = if o.seal() {
            // SAFETY: the connection keeps its socket open while it has inserts with the
            // flusher (`Conn::settle` runs before it closes).
            let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(watch.fd) };
            watch.ready.write_now(sock, &o.unsent).ok()
        } else {
            None
        };
        match written {
            Some(n) => drop(o.unsent.drain(..n)),
            None => o.break_off(),
        }
        drop(o);
        Outbox::hand_back(out, watch);
    }

    /// Whether this node's writes have no replicas to reach (its store is the only copy).
    fn unreplicated(&self) -> bool {
        self.shared
            .cluster
            .routing
            .load()
            .replica_targets(self.shared.cluster.replicas)
            .is_empty()
    }

    /// Whether this node stores `key` itself (it is responsible, or alone).
    fn is_local(&self, key: &Key) -> bool {
        let r = self.shared.cluster.routing.load();
        r.alone() || r.is_responsible(&key.id())
    }

    /// Whether the node is alone (no ring neighbours).
    fn alone(&self) -> bool {
        self.shared.cluster.routing.load().alone()
    }

    /// Writes locally (group commit) and to the replica targets at once; a write succeeds once
    /// the write quorum of copies holds.
    async fn write_replicated(self: &Rc<Self>, items: Vec<OwnedPut>) -> Vec<WriteResult> {
        let shared = self.shared.clone();
        let routing = shared.cluster.routing.load_full();
        let replicas = shared.cluster.replicas;
        let targets = routing.replica_targets(replicas).to_vec();
        if targets.is_empty() {
            return self
                .commit(items)
                .await
                .into_iter()
                .map(|r| r.map(|()| 1).map_err(|e| store_cause(&e, &shared)))
                .collect();
        }
        let quorum = routing.write_quorum(replicas);
        let records: Vec<Record> = items
            .iter()
            .map(|p| Record {
                epoch: p.epoch,
                key: p.key,
                stamp: p.stamp,
                value: p.value.clone(),
            })
            .collect();
        let req = Rc::new(DataRequest::Replicate { records });
        let timeout = shared.cluster.rpc_timeout;
        let tasks: Vec<_> = targets
            .iter()
            .map(|t| {
                let (peers, req, addr) = (self.peers.clone(), req.clone(), t.addr.clone());
                glommio::spawn_local(async move {
                    matches!(
                        peers.request(&addr, &req, timeout).await,
                        Ok(DataResponse::Replicated)
                    )
                })
            })
            .collect();
        let local = self.commit(items).await;
        let mut acks = 0u8;
        for t in tasks {
            let ok = t.await;
            self.shared
                .metrics
                .replica_writes
                .with_label_values(&[if ok { "ok" } else { "failed" }])
                .inc();
            acks += ok as u8;
        }
        local
            .into_iter()
            .map(|r| match r {
                Ok(()) if 1 + acks as usize >= quorum => Ok(1 + acks),
                Ok(()) => Err(FailCause::Unavailable { copies: 1 + acks }),
                Err(e) => Err(store_cause(&e, &shared)),
            })
            .collect()
    }

    /// An insert this node is not responsible for: find the responsible node and forward.
    async fn forward_insert(self: Rc<Self>, epoch: Epoch, key: Key, value: Vec<u8>) -> WriteResult {
        let shared = self.shared.clone();
        shared
            .metrics
            .forwarded
            .with_label_values(&["insert"])
            .inc();
        let req = DataRequest::Put { epoch, key, value };
        let timeout = shared.cluster.rpc_timeout * 2;
        let mut last = FailCause::Unavailable { copies: 0 };
        for attempt in 0..3u64 {
            if attempt > 0 {
                glommio::timer::sleep(Duration::from_millis(200 * attempt)).await;
            }
            let routing = shared.cluster.routing.load_full();
            let Some(found) = crate::cluster::find(&self.peers, &routing, &key.id(), timeout).await
            else {
                continue;
            };
            if found[0].id == shared.node_id {
                let DataRequest::Put { epoch, key, value } = req else {
                    unreachable!("built above")
                };
                let stamp = self.stamp();
                let put = OwnedPut {
                    epoch,
                    key,
                    stamp,
                    value,
                };
                return self
                    .write_replicated(vec![put])
                    .await
                    .pop()
                    .unwrap_or(Err(last));
            }
            match self.peers.request(&found[0].addr, &req, timeout).await {
                Ok(DataResponse::Stored { copies }) => return Ok(copies),
                Ok(DataResponse::Failed(f)) => {
                    last = match f {
                        DataFailure::TooLarge => {
                            return Err(FailCause::TooLarge {
                                max: shared.cfg.max_value_bytes,
                            })
                        }
                        DataFailure::Expired => {
                            return Err(FailCause::EpochOutOfWindow {
                                now: shared.now_epoch(),
                            })
                        }
                        DataFailure::OverQuota => return Err(FailCause::OverQuota),
                        DataFailure::Quorum { copies } => FailCause::Unavailable { copies },
                        DataFailure::NotResponsible | DataFailure::Internal => {
                            FailCause::Unavailable { copies: 0 }
                        }
                    }
                }
                _ => {}
            }
        }
        Err(last)
    }

    /// A read: the responsible node answers; when it has nothing (it may have joined a moment
    /// ago and not received its handoff yet) or cannot be reached, the next replica does. When
    /// no candidate answers (the route still names a node that just died), the read is retried
    /// on a fresh route while stabilization removes the dead node (bounded).
    async fn routed_get(self: Rc<Self>, epoch: Epoch, key: Key) -> Result<Vec<Vec<u8>>, FailCause> {
        for attempt in 0..4u64 {
            if attempt > 0 {
                glommio::timer::sleep(Duration::from_millis(250 << (attempt - 1))).await;
            }
            if let Some(found) = self.clone().get_once(epoch, key).await {
                return Ok(found);
            }
        }
        Err(FailCause::Unavailable { copies: 0 })
    }

    async fn get_once(self: Rc<Self>, epoch: Epoch, key: Key) -> Option<Vec<Vec<u8>>> {
        let shared = self.shared.clone();
        let routing = shared.cluster.routing.load_full();
        let timeout = shared.cluster.rpc_timeout;
        let Some(found) = crate::cluster::find(&self.peers, &routing, &key.id(), timeout).await
        else {
            tracing::debug!("retrieve: no route to the responsible node");
            return None;
        };
        if found[0].id != shared.node_id {
            shared
                .metrics
                .forwarded
                .with_label_values(&["retrieve"])
                .inc();
        }
        let replicas = shared.cluster.replicas.max(1);
        let mut candidates: Vec<tarn_proto::ring::NodeRef> =
            found.into_iter().take(replicas).collect();
        let mut reached = false;
        let mut i = 0;
        while i < candidates.len() {
            let n = candidates[i].clone();
            i += 1;
            if i == candidates.len() && candidates.len() < replicas && !reached {
                // The route ended before `replicas` nodes (the target's successor was near the
                // end of a successor list): look up what follows, in case these are dead.
                let next = candidates[candidates.len() - 1].id.add_pow2(0);
                if let Some(more) =
                    crate::cluster::find(&self.peers, &routing, &next, timeout).await
                {
                    for m in more {
                        if candidates.len() < replicas && !candidates.iter().any(|c| c.id == m.id) {
                            candidates.push(m);
                        }
                    }
                }
            }
            let values = if n.id == shared.node_id {
                match shared.store.get(epoch, &key) {
                    Ok(v) => Some(v.into_iter().map(|s| s.value).collect::<Vec<_>>()),
                    Err(_) => None,
                }
            } else {
                match self
                    .peers
                    .request(&n.addr, &DataRequest::Get { epoch, key }, timeout)
                    .await
                {
                    Ok(DataResponse::Values { values }) => {
                        Some(values.into_iter().map(|(_, v)| v).collect())
                    }
                    other => {
                        tracing::debug!(peer = %n.addr, ?other, "retrieve: replica did not answer");
                        None
                    }
                }
            };
            match values {
                Some(v) if !v.is_empty() => return Some(v),
                Some(_) => {
                    if reached {
                        // Two replicas agree there is nothing.
                        return Some(Vec::new());
                    }
                    reached = true;
                }
                None => {}
            }
        }
        reached.then(Vec::new)
    }

    /// A data-plane request from another node.
    async fn data_request(self: Rc<Self>, req: DataRequest) -> DataResponse {
        let shared = self.shared.clone();
        match req {
            DataRequest::Put { epoch, key, value } => {
                let routing = shared.cluster.routing.load_full();
                if !routing.is_responsible(&key.id()) {
                    return DataResponse::Failed(DataFailure::NotResponsible);
                }
                if value.len() > shared.cfg.max_value_bytes as usize {
                    return DataResponse::Failed(DataFailure::TooLarge);
                }
                if !epoch.in_client_window(shared.now_epoch()) {
                    return DataResponse::Failed(DataFailure::Expired);
                }
                let stamp = self.stamp();
                let put = OwnedPut {
                    epoch,
                    key,
                    stamp,
                    value,
                };
                match self.write_replicated(vec![put]).await.pop() {
                    Some(Ok(copies)) => DataResponse::Stored { copies },
                    Some(Err(FailCause::Unavailable { copies })) => {
                        DataResponse::Failed(DataFailure::Quorum { copies })
                    }
                    Some(Err(FailCause::TooLarge { .. })) => {
                        DataResponse::Failed(DataFailure::TooLarge)
                    }
                    Some(Err(FailCause::EpochOutOfWindow { .. })) => {
                        DataResponse::Failed(DataFailure::Expired)
                    }
                    Some(Err(FailCause::OverQuota)) => DataResponse::Failed(DataFailure::OverQuota),
                    _ => DataResponse::Failed(DataFailure::Internal),
                }
            }
            DataRequest::Replicate { records } => {
                let items: Vec<OwnedPut> = records
                    .into_iter()
                    .map(|r| OwnedPut {
                        epoch: r.epoch,
                        key: r.key,
                        stamp: r.stamp,
                        value: r.value,
                    })
                    .collect();
                let results = self.commit(items).await;
                match results.iter().find_map(|r| r.as_ref().err()) {
                    None => DataResponse::Replicated,
                    // A partition already dropped by GC: nothing to keep, nothing lost.
                    Some(StoreError::Expired { .. })
                        if results
                            .iter()
                            .all(|r| matches!(r, Ok(()) | Err(StoreError::Expired { .. }))) =>
                    {
                        DataResponse::Replicated
                    }
                    Some(StoreError::TooLarge { .. }) => {
                        DataResponse::Failed(DataFailure::TooLarge)
                    }
                    Some(StoreError::OverQuota { .. }) => {
                        DataResponse::Failed(DataFailure::OverQuota)
                    }
                    Some(e) => {
                        tracing::error!(error = %e, "replica write failed");
                        DataResponse::Failed(DataFailure::Internal)
                    }
                }
            }
            DataRequest::Get { epoch, key } => match shared.store.get(epoch, &key) {
                Ok(v) => DataResponse::Values {
                    values: v.into_iter().map(|s| (s.stamp, s.value)).collect(),
                },
                Err(_) => DataResponse::Failed(DataFailure::Internal),
            },
            DataRequest::Step { target } => {
                DataResponse::Step(shared.cluster.routing.load().step(&target))
            }
            DataRequest::Offer { epoch, keys, .. } => {
                let mut want = Vec::new();
                for k in keys {
                    let mine = shared.store.get(epoch, &k.key).ok().map(|vs| {
                        tarn_ring::key_digest(vs.iter().map(|v| (v.stamp, v.value.as_slice())))
                    });
                    if mine != Some(k.digest) {
                        want.push(k.key);
                    }
                }
                DataResponse::Want { keys: want }
            }
        }
    }
}

/// Serves an inbound node-to-node link on this core: handshake, then ring messages go to the
/// ring executor and data requests are answered here, concurrently.
async fn serve_peer(core: Rc<Core>, mut stream: PeerStream, pending: Vec<u8>) {
    let shared = core.shared.clone();
    let ident = shared.cluster.ident.clone();
    let timeout = shared.cfg.frame_timeout;
    let refused = |reason: &'static str| {
        shared
            .metrics
            .peers_refused
            .with_label_values(&[reason])
            .inc();
    };
    let Ok(Parsed::Frame(f)) = frame::parse_frame(&pending, ident.max_frame) else {
        refused("protocol");
        return;
    };
    let len = f.wire_len();
    let hello = match Decoder::new().decode_peer(&f) {
        Ok(PeerMessage::Hello(h)) => h,
        _ => {
            refused("protocol");
            return;
        }
    };
    let rest = pending[len..].to_vec();
    let (info, rest) = match crate::peer::accept(&ident, &mut stream, hello, rest, timeout).await {
        Ok(x) => x,
        Err(PeerError::Refused(reason)) => {
            refused(reason);
            tracing::warn!(reason, "refused a node-to-node handshake");
            let _ = stream.close().await;
            return;
        }
        Err(_) => {
            refused("handshake");
            let _ = stream.close().await;
            return;
        }
    };
    shared.cluster.learn(&info);
    let (r, w) = futures_lite::io::split(stream);
    let (tx, rx) = local_channel::new_bounded(4096);
    let alive = Rc::new(Cell::new(true));
    glommio::spawn_local(crate::peer::write_queue(w, rx, alive.clone())).detach();
    let mut reader = crate::peer::FrameReader::new(r, &rest, ident.max_frame);
    let tx = Rc::new(tx);
    while alive.get() {
        let (id, msg) = match reader.next().await {
            Ok(x) => x,
            Err(PeerError::Protocol(_)) => {
                refused("garbage");
                break;
            }
            Err(_) => break,
        };
        match msg {
            PeerMessage::Ring(m) => {
                let from = match &m {
                    RingMessage::Request { from, .. } | RingMessage::Response { from, .. } => from,
                };
                // A peer speaks only for itself.
                if from.id != info.node.id {
                    refused("spoofed");
                    break;
                }
                if let Some(ring) = &core.ring_tx {
                    let _ = ring.try_send(m);
                }
            }
            PeerMessage::Request(req) => {
                let (core, tx) = (core.clone(), tx.clone());
                glommio::spawn_local(async move {
                    let resp = core.data_request(req).await;
                    let mut buf = Vec::new();
                    if peer::encode_peer(id, &PeerMessage::Response(resp), &mut buf).is_ok() {
                        let _ = tx.send(buf).await;
                    }
                })
                .detach();
            }
            _ => {
                refused("protocol");
                break;
            }
        }
    }
}

/// Drains the queue into one store batch per round (fsync off the executor), then hands each
/// job its results — or, for inserts handed over with their connection's outbox, encodes their
/// replies and writes them to the client ([`Core::answer`]).
async fn flusher(core: Rc<Core>, wake: LocalReceiver<()>) {
    while wake.recv().await.is_some() {
        loop {
            let jobs = std::mem::take(&mut *core.queue.borrow_mut());
            if jobs.is_empty() {
                break;
            }
            let mut sizes = Vec::with_capacity(jobs.len());
            let mut dones = Vec::with_capacity(jobs.len());
            let mut all = Vec::new();
            for j in jobs {
                sizes.push(j.items.len());
                dones.push(j.done);
                all.extend(j.items);
            }
            core.shared.metrics.batch_size.observe(all.len() as f64);
            let store = core.shared.store.clone();
            let started = Instant::now();
            core.in_flight.set(true);
            let write = move || {
                let items: Vec<PutItem<'_>> = all
                    .iter()
                    .map(|p| PutItem {
                        epoch: p.epoch,
                        key: p.key,
                        stamp: p.stamp,
                        value: &p.value,
                    })
                    .collect();
                store.put_batch(&items)
            };
            // A batch that waits for fsync goes to the blocking pool; one that only appends to
            // the WAL in the page cache costs microseconds, less than the hop to another thread
            // and back, so it runs here (the periodic sync runs on its own thread either way).
            let mut results = if core.shared.cfg.wal == tarn_store::WalPolicy::EveryWrite {
                glommio::executor().spawn_blocking(write).await
            } else {
                write()
            };
            core.in_flight.set(false);
            core.m.put_seconds.observe(started.elapsed().as_secs_f64());
            for (size, done) in sizes.into_iter().zip(dones).rev() {
                let mine = results.split_off(results.len() - size);
                match done {
                    Done::Results(tx) => {
                        let _ = tx.send(mine);
                    }
                    Done::Answer {
                        out,
                        watch,
                        requests,
                    } => core.answer(&out, &watch, requests, mine),
                }
            }
        }
    }
}

/// Binds the client listeners: one SO_REUSEPORT socket per core on the same address. Refuses
/// when another process already listens there (a plain bind without SO_REUSEPORT is tried
/// first, which fails if anyone holds the port). Port 0 resolves to one free port for all.
pub fn bind_listeners(
    addr: std::net::SocketAddr,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let domain = Domain::for_address(addr);
    let probe = Socket::new(domain, Type::STREAM, None)?;
    // SO_REUSEADDR lets a restarted node bind past its predecessor's TIME_WAIT connections;
    // on Linux it still fails while any socket listens on the address.
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e} (is another tarnd running?)"),
        )
    })?;
    let resolved = probe.local_addr()?.as_socket().expect("inet address");
    drop(probe);
    (0..n)
        .map(|_| {
            let s = Socket::new(domain, Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.set_nodelay(true)?;
            s.bind(&resolved.into())?;
            s.listen(1024)?;
            Ok(s.into())
        })
        .collect()
}

/// Beats every [`HEARTBEAT`]; how late each beat comes is the executor's stall.
async fn heartbeat(shared: Arc<Shared>, index: usize) {
    let stall = shared
        .metrics
        .executor_stall_seconds
        .with_label_values(&[&index.to_string()]);
    let mut expected = Instant::now() + HEARTBEAT;
    while !shared.shutdown.load(Ordering::Relaxed) {
        glommio::timer::sleep(HEARTBEAT).await;
        let now = Instant::now();
        stall.observe(now.saturating_duration_since(expected).as_secs_f64());
        expected = now + HEARTBEAT;
        shared.heartbeats[index].store(
            shared.started.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
    }
}

/// Runs core `index` until shutdown: accept, serve, drain.
pub async fn run_core(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    poller: crate::sock::Poller,
    index: usize,
) {
    let listen_fd = listener.as_raw_fd();
    // `accept` waits on the ring, then accepts without blocking.
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "cannot make the listener non-blocking; core {index} serves nothing");
        return;
    }
    let metrics = &shared.metrics;
    let m = CoreMetrics {
        insert_ok: metrics.requests.with_label_values(&["insert", "ok"]),
        retrieve_found: metrics.requests.with_label_values(&["retrieve", "found"]),
        retrieve_not_found: metrics
            .requests
            .with_label_values(&["retrieve", "not_found"]),
        insert_seconds: metrics.request_seconds.with_label_values(&["insert"]),
        retrieve_seconds: metrics.request_seconds.with_label_values(&["retrieve"]),
        put_seconds: metrics.storage_seconds.with_label_values(&["put_batch"]),
        get_seconds: metrics.storage_seconds.with_label_values(&["get"]),
        commit_queue: metrics
            .commit_queue
            .with_label_values(&[&index.to_string()]),
    };
    let (wake_tx, wake_rx) = local_channel::new_unbounded();
    let inbox = shared
        .cluster
        .inboxes
        .lock()
        .ok()
        .and_then(|mut v| v.get_mut(index).and_then(Option::take));
    let ring_tx = match inbox {
        Some(tx) => Some(tx.connect().await),
        None => None,
    };
    let peers = Rc::new(Pool::new(
        shared.cluster.ident.clone(),
        Duration::from_millis(500),
        crate::cluster::link_hook(shared.clone()),
    ));
    let (frame_ticks, idle_ticks) = (
        ticks(shared.cfg.frame_timeout),
        ticks(shared.cfg.idle_timeout),
    );
    let core = Rc::new(Core {
        peers,
        ring_tx,
        conn_limit: shared.cfg.max_connections.div_ceil(shared.cores).max(1),
        shared,
        m,
        queue: RefCell::new(Vec::new()),
        wake: wake_tx,
        in_flight: Cell::new(false),
        conns: RefCell::new(HashMap::new()),
        poller,
        tick: Cell::new(0),
        drained: Cell::new(false),
        frame_ticks,
        idle_ticks,
        next_conn: Cell::new(0),
        last_stamp: Cell::new(0),
        gets: Cell::new(0),
    });
    let flusher_task = glommio::spawn_local(flusher(core.clone(), wake_rx));
    let poller_task = glommio::spawn_local({
        let core = core.clone();
        async move {
            let mut events = Vec::new();
            loop {
                let woke = core
                    .poller
                    .next(&mut events, |id, events| {
                        if let Some(w) = core.conns.borrow().get(&id) {
                            w.ready.event(events);
                        }
                    })
                    .await;
                if let Err(e) = woke {
                    tracing::error!(error = %e, "waiting for client sockets failed");
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    glommio::spawn_local(heartbeat(core.shared.clone(), index)).detach();
    let watcher = glommio::spawn_local({
        let core = core.clone();
        async move {
            let mut cut_all = false;
            while !core.drained.get() {
                glommio::timer::sleep(WATCH_TICK).await;
                let now = core.tick.get() + 1;
                core.tick.set(now);
                if !cut_all && core.shared.shutdown.load(Ordering::Relaxed) {
                    cut_all = true;
                    // Unblock accept and every read; connections answer what they have read
                    // and end.
                    // SAFETY: shutdown(2) on fds that are open (listed fds are removed before
                    // close).
                    unsafe {
                        libc::shutdown(listen_fd, libc::SHUT_RD);
                        for w in core.conns.borrow().values() {
                            libc::shutdown(w.fd, libc::SHUT_RD);
                        }
                    }
                }
                for w in core.conns.borrow().values() {
                    w.check(now);
                }
            }
        }
    });

    loop {
        let accepted = accept(&listener).await;
        if core.shared.shutdown.load(Ordering::Relaxed) {
            break;
        }
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        core.shared.metrics.connections_total.inc();
        if core.conns.borrow().len() >= core.conn_limit {
            core.shared.metrics.connections_refused.inc();
            refuse(stream);
            continue;
        }
        // Registered here, before the task first runs, so a shutdown that starts now still
        // finds its fd.
        let id = core.next_conn.get();
        core.next_conn.set(id + 1);
        if let Err(e) = core.poller.add(&stream, id) {
            tracing::warn!(error = %e, "registering a connection failed");
            continue;
        }
        let watch = Rc::new(Watch::new(stream.as_raw_fd()));
        core.conns.borrow_mut().insert(id, watch.clone());
        glommio::spawn_local(serve(core.clone(), stream, id, watch)).detach();
    }
    // Drain: wait for connections to finish what they have read (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !core.conns.borrow().is_empty() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    core.drained.set(true);
    watcher.await;
    // Every queued or running group commit finishes (and answers) before the core returns, so
    // the final WAL sync in main covers it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (!core.queue.borrow().is_empty() || core.in_flight.get()) && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // Past the deadline, what is still queued is abandoned: waiting tasks get errors, and
    // connections whose inserts the flusher was to answer close unanswered.
    for job in core.queue.take() {
        if let Done::Answer {
            out,
            watch,
            requests,
        } = job.done
        {
            core.m.commit_queue.sub(requests.len() as i64);
            out.borrow_mut().break_off();
            Outbox::hand_back(&out, &watch);
        }
    }
    drop(flusher_task);
    drop(poller_task);
}

/// Accepts the next client: a non-blocking socket.
async fn accept(listener: &std::net::TcpListener) -> std::io::Result<TcpStream> {
    use rustix::net::SocketFlags;
    loop {
        match rustix::net::accept_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
            Ok(fd) => return Ok(TcpStream::from(fd)),
            Err(rustix::io::Errno::AGAIN) => {
                glommio::net::wait_readable(listener.as_raw_fd()).await?
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Tells a client over the connection limit why, and closes. The frame is small and the
/// socket new, so one non-blocking send takes it whole or the client never learns why.
fn refuse(stream: TcpStream) {
    let mut out = Vec::new();
    if frame::encode(
        0,
        &Message::error(ErrorCode::Overloaded, "connection limit reached"),
        &mut out,
    )
    .is_ok()
    {
        let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
        let _ = rustix::net::send(&stream, &out, flags);
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Test builds (feature `peer-audit`): appends a client's IP address to `peer_audit_file`,
/// so the Tor end-to-end test can prove the node only ever saw exits. Blocking file I/O on the
/// executor is acceptable there and nowhere else; production builds compile this to nothing.
#[cfg(feature = "peer-audit")]
fn audit_client(shared: &Shared, stream: &TcpStream) {
    use std::io::Write;
    let (Some(path), Ok(addr)) = (&shared.cfg.peer_audit_file, stream.peer_addr()) else {
        return;
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{}", addr.ip());
    }
}

#[cfg(not(feature = "peer-audit"))]
fn audit_client(_: &Shared, _: &TcpStream) {}

async fn serve(core: Rc<Core>, stream: TcpStream, id: u64, watch: Rc<Watch>) {
    core.shared.metrics.connections_open.inc();
    let mut conn = Conn::new(core.clone(), stream, watch);
    if conn.run().await {
        // The first frame was a node-to-node hello: this is a peer link, not a client.
        let Conn {
            stream,
            rbuf,
            start,
            end,
            ..
        } = conn;
        // glommio waits for peer links its own way: out of the epoll set, into a glommio stream.
        let _ = core.poller.remove(&stream);
        let stream = {
            use std::os::fd::{FromRawFd, IntoRawFd};
            // SAFETY: the fd is an open, connected TCP socket this function owns and hands over.
            unsafe { PeerStream::from_raw_fd(stream.into_raw_fd()) }
        };
        serve_peer(core.clone(), stream, rbuf[start..end].to_vec()).await;
        core.conns.borrow_mut().remove(&id);
        core.shared.metrics.connections_open.dec();
        return;
    }
    // Inserts still with the flusher are answered before the socket closes.
    conn.settle().await;
    core.conns.borrow_mut().remove(&id);
    core.shared.metrics.connections_open.dec();
    drop(conn);
}

struct Conn {
    core: Rc<Core>,
    stream: TcpStream,
    rbuf: Vec<u8>,
    start: usize,
    end: usize,
    /// Replies on their way out (and the encrypted channel's state), shared with the flusher.
    out: Rc<RefCell<Outbox>>,
    decoder: Decoder,
    hello_done: bool,
    /// When the oldest incomplete frame in `rbuf` began arriving (the watcher's tick).
    partial_since: Option<u64>,
    /// This connection's deadlines, enforced by the core's watcher.
    watch: Rc<Watch>,
    /// Inserts read but not yet committed: (request id, arrival, put).
    pending: Vec<(u64, Instant, OwnedPut)>,
    /// Requests routed to other nodes: (request id, arrival, reply).
    routed: Vec<(u64, Instant, glommio::Task<Message>)>,
    /// Reads that came after inserts still uncommitted: answered once those are written (with
    /// the rest of the burst's inserts, in one group commit).
    deferred: Vec<(u64, Instant, msg::Retrieve)>,
    /// Ciphertext frames read but not yet decrypted (once the encrypted channel is up, `rbuf`
    /// holds plaintext decrypted from here).
    cipher_in: Vec<u8>,
    /// Whether this client may use the plaintext protocol (policy and its address).
    plaintext_ok: bool,
}

/// How a connection ends.
enum End {
    /// Keep serving.
    Continue,
    /// Reply written (or attempted); close.
    Close,
    /// The connection is a node-to-node link; hand it over.
    Peer,
}

impl Conn {
    fn new(core: Rc<Core>, stream: TcpStream, watch: Rc<Watch>) -> Conn {
        let plaintext_ok = match core.shared.cfg.client_plaintext {
            crate::config::PlaintextPolicy::Allow => true,
            crate::config::PlaintextPolicy::Deny => false,
            crate::config::PlaintextPolicy::Loopback => {
                stream.peer_addr().is_ok_and(|a| a.ip().is_loopback())
            }
        };
        let mut conn = Conn::fresh(core, stream, watch);
        conn.plaintext_ok = plaintext_ok;
        conn
    }

    fn fresh(core: Rc<Core>, stream: TcpStream, watch: Rc<Watch>) -> Conn {
        Conn {
            core,
            stream,
            rbuf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
            out: Rc::new(RefCell::new(Outbox {
                wbuf: Vec::with_capacity(16 * 1024),
                ..Outbox::default()
            })),
            decoder: Decoder::new(),
            hello_done: false,
            partial_since: None,
            watch,
            pending: Vec::new(),
            routed: Vec::new(),
            deferred: Vec::new(),
            cipher_in: Vec::new(),
            plaintext_ok: false,
        }
    }

    fn reply(&mut self, request_id: u64, msg: &Message) {
        let mut out = self.out.borrow_mut();
        debug_assert!(!out.handed, "a reply overtook inserts with the flusher");
        encode_reply(request_id, msg, &mut out.wbuf);
    }

    /// Whether the encrypted channel is up.
    fn encrypted(&self) -> bool {
        self.out.borrow().noise.is_some()
    }

    fn reject(&mut self, request_id: u64, code: ErrorCode, detail: String) -> End {
        self.core
            .shared
            .metrics
            .rejected
            .with_label_values(&[reason_label(code)])
            .inc();
        self.reply(request_id, &Message::error(code, detail));
        if code.is_fatal() {
            End::Close
        } else {
            End::Continue
        }
    }

    /// Serves the connection; true when it turned out to be a node-to-node link (its first
    /// frame is left unread in the buffer).
    async fn run(&mut self) -> bool {
        let (frame_ticks, idle_ticks) = (self.core.frame_ticks, self.core.idle_ticks);
        loop {
            if !self.settle().await {
                return false;
            }
            let end = self.process().await;
            if let End::Peer = end {
                return true;
            }
            // Handed inserts: the flusher writes this burst's replies.
            if !self.out.borrow().handed {
                if !self.flush_out().await {
                    return false;
                }
                // Give back memory a burst made us take.
                self.out.borrow_mut().shrink();
            }
            if self.start == self.end && self.rbuf.len() > MAX_KEPT_BUF {
                self.rbuf = vec![0; 16 * 1024];
                self.start = 0;
                self.end = 0;
            }
            if let End::Close = end {
                let _ = self.stream.shutdown(std::net::Shutdown::Write);
                return false;
            }
            // Make room: compact, then grow up to what the pending frame needs.
            if self.start == self.end && self.cipher_in.is_empty() {
                self.start = 0;
                self.end = 0;
                self.partial_since = None;
            } else if self.start == self.end {
                self.start = 0;
                self.end = 0;
                if self.partial_since.is_none() {
                    self.partial_since = Some(self.core.tick.get());
                }
            } else if self.partial_since.is_none() {
                self.partial_since = Some(self.core.tick.get());
            }
            if self.start > 0 && self.rbuf.len() - self.end < 4096 {
                self.rbuf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.rbuf.len() {
                let cap = HEADER_LEN + self.core.shared.cfg.max_frame_bytes as usize;
                let want = (self.rbuf.len() * 2).min(cap.max(self.rbuf.len()));
                self.rbuf.resize(want, 0);
            }
            // The rest of a frame must come within the frame deadline of its start (however it
            // trickles in); before the hello a connection is not yet a client and gets the
            // frame deadline too; a client between requests gets the idle deadline.
            let (since, limit) = match self.partial_since {
                Some(t) => (t, frame_ticks),
                None if !self.hello_done => (self.core.tick.get(), frame_ticks),
                None => (self.core.tick.get(), idle_ticks),
            };
            self.watch.arm(since, limit, libc::SHUT_RD);
            let read = if self.encrypted() {
                let mut chunk = [0u8; 16 * 1024];
                match self.watch.ready.read(&self.stream, &mut chunk).await {
                    Ok(n) if n > 0 => {
                        self.cipher_in.extend_from_slice(&chunk[..n]);
                        if !self.decrypt_pending() {
                            self.fail_channel().await;
                            return false;
                        }
                        Ok(n)
                    }
                    other => other,
                }
            } else {
                self.watch
                    .ready
                    .read(&self.stream, &mut self.rbuf[self.end..])
                    .await
            };
            self.watch.disarm();
            if self.watch.expired.get() {
                // Cut by the watcher (data may still have come in after the cut: a client
                // trickling a frame is not served past its deadline).
                if self.partial_since.is_some() {
                    self.frame_timed_out().await;
                }
                return false;
            }
            match read {
                Ok(0) => return false,
                Ok(n) if !self.encrypted() => self.end += n,
                Ok(_) => {}
                // Nudged by the flusher: replies are left to write (`settle`).
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Writes pending replies, within one overall deadline (a client that reads slowly is cut
    /// off). Returns false when the connection is unusable.
    async fn flush_out(&mut self) -> bool {
        if !self.out.borrow_mut().seal() {
            return false;
        }
        self.write_unsent().await
    }

    /// Writes the outbox's sealed bytes whole within the frame deadline: the watcher cuts a
    /// client that does not read its replies. False when the write failed or was cut.
    async fn write_unsent(&mut self) -> bool {
        if self.out.borrow().unsent.is_empty() {
            return true;
        }
        // Out of the cell while the write waits (nothing else touches it meanwhile: the
        // connection has nothing with the flusher).
        let mut bytes = std::mem::take(&mut self.out.borrow_mut().unsent);
        self.watch
            .arm(self.core.tick.get(), self.core.frame_ticks, libc::SHUT_RDWR);
        let ok = self
            .watch
            .ready
            .write_all(&self.stream, &bytes)
            .await
            .is_ok();
        self.watch.disarm();
        bytes.clear();
        self.out.borrow_mut().unsent = bytes;
        ok && !self.watch.expired.get()
    }

    /// Waits until the flusher has answered the inserts this connection handed it, then
    /// writes what the socket did not take at once. False when the connection is unusable.
    async fn settle(&mut self) -> bool {
        self.answered().await && self.write_unsent().await
    }

    /// Waits until the flusher has answered the inserts this connection handed it (their
    /// replies are then in the outbox, written or not). False when its write failed.
    async fn answered(&mut self) -> bool {
        let out = &self.out;
        std::future::poll_fn(|cx| {
            let mut o = out.borrow_mut();
            if !o.handed {
                return std::task::Poll::Ready(());
            }
            o.waiter = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
        !self.out.borrow().broken
    }

    /// Decrypts every complete `NOISE_DATA` frame of `cipher_in` onto the end of `rbuf`.
    /// False when a frame is not a valid ciphertext (altered, replayed, reordered, other kind).
    fn decrypt_pending(&mut self) -> bool {
        let mut out = self.out.borrow_mut();
        let Some(noise) = out.noise.as_mut() else {
            return true;
        };
        let mut used = 0;
        loop {
            let f = match frame::parse_frame(
                &self.cipher_in[used..],
                tarn_proto::noise::MAX_NOISE_MESSAGE as u32,
            ) {
                Ok(Parsed::Frame(f)) => f,
                Ok(Parsed::Incomplete { .. }) => break,
                Err(_) => return false,
            };
            if f.header.kind != tarn_proto::noise::KIND_NOISE_DATA {
                return false;
            }
            let need = self.end + f.body.len();
            if self.rbuf.len() < need {
                self.rbuf.resize(need, 0);
            }
            match noise.read_message(f.body, &mut self.rbuf[self.end..]) {
                Ok(n) => self.end += n,
                Err(_) => return false,
            }
            used += f.wire_len();
        }
        self.cipher_in.drain(..used);
        true
    }

    /// The encrypted channel broke: say so in plaintext (the client cannot decrypt anything
    /// now) and close.
    async fn fail_channel(&mut self) {
        // Sealed replies the flusher left unwritten still go first (one write takes both).
        if !self.answered().await {
            return;
        }
        {
            let mut out = self.out.borrow_mut();
            out.noise = None;
            out.wbuf.clear();
        }
        let _ = self.reject(0, ErrorCode::HandshakeFailed, "ciphertext failed".into());
        let _ = self.flush_out().await;
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Noise NK, responder side: message 1 carries the client's hello, message 2 the ack.
    async fn noise_handshake(&mut self, request_id: u64, body: &[u8]) -> End {
        let shared = self.core.shared.clone();
        let fail = |conn: &mut Conn, detail: &str| {
            conn.reject(request_id, ErrorCode::HandshakeFailed, detail.to_string())
        };
        let params: snow::params::NoiseParams = match tarn_proto::noise::NOISE_PARAMS.parse() {
            Ok(p) => p,
            Err(_) => return fail(self, "noise parameters"),
        };
        let mut hs = match snow::Builder::new(params)
            .local_private_key(&shared.noise_secret)
            .build_responder()
        {
            Ok(h) => h,
            Err(_) => return fail(self, "noise setup"),
        };
        let mut payload = vec![0u8; body.len()];
        let n = match hs.read_message(body, &mut payload) {
            Ok(n) => n,
            Err(_) => return fail(self, "handshake message does not decrypt (wrong node key?)"),
        };
        let header = frame::Header {
            body_len: n as u32,
            version: tarn_proto::PROTOCOL_VERSION,
            kind: tarn_proto::Kind::Hello as u8,
            request_id,
        };
        let hello = match self.decoder.decode(&frame::RawFrame {
            header,
            body: &payload[..n],
        }) {
            Ok(Message::Hello(h)) => h,
            _ => return fail(self, "handshake payload is not a hello"),
        };
        if let Some(refusal) = check_hello(&shared, &hello) {
            return self.reject(request_id, refusal.0, refusal.1);
        }
        let mut ack = Vec::new();
        if frame::encode(request_id, &hello_ack(&shared), &mut ack).is_err() {
            return fail(self, "encoding");
        }
        let ack_body = &ack[HEADER_LEN..];
        let mut msg = vec![0u8; ack_body.len() + 128];
        let m = match hs.write_message(ack_body, &mut msg) {
            Ok(m) => m,
            Err(_) => return fail(self, "handshake reply"),
        };
        let transport = match hs.into_transport_mode() {
            Ok(t) => t,
            Err(_) => return fail(self, "handshake state"),
        };
        tarn_proto::noise::raw_frame(
            tarn_proto::noise::KIND_NOISE_HELLO_ACK,
            request_id,
            &msg[..m],
            &mut self.out.borrow_mut().wbuf,
        );
        // The ack goes out in plaintext framing; everything after it is encrypted.
        if !self.flush_out().await {
            return End::Close;
        }
        self.out.borrow_mut().noise = Some(Box::new(transport));
        self.hello_done = true;
        audit_client(&shared, &self.stream);
        shared
            .metrics
            .requests
            .with_label_values(&["hello", "ok"])
            .inc();
        // Bytes after message 1 are already ciphertext.
        self.cipher_in
            .extend_from_slice(&self.rbuf[self.start..self.end]);
        self.start = 0;
        self.end = 0;
        if !self.decrypt_pending() {
            self.fail_channel().await;
            return End::Close;
        }
        End::Continue
    }

    async fn frame_timed_out(&mut self) {
        // Behind any replies the flusher left unwritten (one write takes both).
        if !self.answered().await {
            return;
        }
        let _ = self.reject(0, ErrorCode::Timeout, "frame not completed in time".into());
        // Through the encrypted channel when there is one (the client reads nothing else).
        let _ = self.flush_out().await;
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Answers every complete frame in the buffer.
    async fn process(&mut self) -> End {
        let max = self.core.shared.cfg.max_frame_bytes;
        loop {
            let (request_id, decoded) =
                match frame::parse_frame(&self.rbuf[self.start..self.end], max) {
                    Ok(Parsed::Incomplete { .. }) => break,
                    Ok(Parsed::Frame(f))
                        if !self.hello_done && peer::is_peer_kind(f.header.kind) =>
                    {
                        return End::Peer;
                    }
                    Ok(Parsed::Frame(f)) if tarn_proto::noise::is_noise_kind(f.header.kind) => {
                        let (id, kind, len) = (f.header.request_id, f.header.kind, f.wire_len());
                        let body = f.body.to_vec();
                        self.start += len;
                        self.partial_since = None;
                        let end =
                            if kind == tarn_proto::noise::KIND_NOISE_HELLO && !self.encrypted() {
                                self.noise_handshake(id, &body).await
                            } else {
                                self.reject(
                                    id,
                                    ErrorCode::HandshakeFailed,
                                    "unexpected encrypted-channel frame".into(),
                                )
                            };
                        if let End::Close = end {
                            self.commit_pending().await;
                            return End::Close;
                        }
                        continue;
                    }
                    Ok(Parsed::Frame(f)) => {
                        let decoded = self.decoder.decode(&f);
                        self.start += f.wire_len();
                        // The frame deadline runs per frame: what remains is a new frame.
                        self.partial_since = None;
                        (f.header.request_id, decoded)
                    }
                    Err(fe) => {
                        self.commit_pending().await;
                        return self.reject(fe.request_id(), fe.code(), fe.to_string());
                    }
                };
            let end = match decoded {
                Ok(msg) => self.handle(request_id, msg).await,
                Err(be) => self.reject(request_id, be.code(), be.to_string()),
            };
            if let End::Close = end {
                self.commit_pending().await;
                return End::Close;
            }
            // Replies wait in memory only up to a bound: write them out as they accumulate.
            if self.out.borrow().wbuf.len() >= FLUSH_AT && !self.flush_out().await {
                self.commit_pending().await;
                return End::Close;
            }
            // A long pipelined burst must not starve the core's other connections.
            glommio::yield_if_needed().await;
        }
        if !self.hand_off() {
            self.commit_pending().await;
        }
        End::Continue
    }

    /// Hands the burst's inserts to the flusher, which commits them and writes their replies
    /// after the ones already encoded ([`Done::Answer`]): the task goes back to reading
    /// instead of waiting to be woken for them. Only when they need nothing but this node's
    /// store and no other reply of the burst waits (routed requests, reads behind them).
    fn hand_off(&mut self) -> bool {
        if self.pending.is_empty()
            || !self.routed.is_empty()
            || !self.deferred.is_empty()
            || !self.core.unreplicated()
        {
            return false;
        }
        let (requests, items) = self.take_pending();
        self.core.m.commit_queue.add(items.len() as i64);
        self.out.borrow_mut().handed = true;
        self.core.queue.borrow_mut().push(Job {
            items,
            done: Done::Answer {
                out: self.out.clone(),
                watch: self.watch.clone(),
                requests,
            },
        });
        let _ = self.core.wake.try_send(());
        true
    }

    async fn handle(&mut self, request_id: u64, msg: Message) -> End {
        let arrived = Instant::now();
        let shared = self.core.shared.clone();
        if !self.hello_done {
            let Message::Hello(h) = msg else {
                return self.reject(
                    request_id,
                    ErrorCode::HelloRequired,
                    "the first frame must be a hello".into(),
                );
            };
            if let Some((code, detail)) = check_hello(&shared, &h) {
                return self.reject(request_id, code, detail);
            }
            self.hello_done = true;
            audit_client(&shared, &self.stream);
            shared
                .metrics
                .requests
                .with_label_values(&["hello", "ok"])
                .inc();
            self.reply(request_id, &hello_ack(&shared));
            return End::Continue;
        }
        if !self.plaintext_ok && !self.encrypted() && !matches!(msg, Message::Hello(_)) {
            return self.reject(
                request_id,
                ErrorCode::EncryptionRequired,
                "this node serves you only over the encrypted channel".into(),
            );
        }
        match msg {
            Message::Insert(ins) => {
                // One clock reading for the epoch check and the stamp.
                let unix_ns = shared.clock.now().unix_ns;
                let now = Epoch::at_unix_ns(unix_ns, shared.cfg.epoch_secs);
                let fail = if !ins.epoch.in_client_window(now) {
                    Some(FailCause::EpochOutOfWindow { now })
                } else if ins.value.len() > shared.cfg.max_value_bytes as usize {
                    Some(FailCause::TooLarge {
                        max: shared.cfg.max_value_bytes,
                    })
                } else {
                    None
                };
                if let Some(cause) = fail {
                    shared
                        .metrics
                        .requests
                        .with_label_values(&["insert", cause_label(&cause)])
                        .inc();
                    self.reply(
                        request_id,
                        &Message::InsertReply(InsertReply::Failed(cause)),
                    );
                } else if !self.core.is_local(&ins.key) {
                    let core = self.core.clone();
                    let task = glommio::spawn_local(async move {
                        let reply = match core.forward_insert(ins.epoch, ins.key, ins.value).await {
                            Ok(copies) => InsertReply::Stored { copies },
                            Err(cause) => InsertReply::Failed(cause),
                        };
                        Message::InsertReply(reply)
                    });
                    self.routed.push((request_id, arrived, task));
                } else {
                    let stamp = self.core.stamp_at(unix_ns);
                    self.pending.push((
                        request_id,
                        arrived,
                        OwnedPut {
                            epoch: ins.epoch,
                            key: ins.key,
                            stamp,
                            value: ins.value,
                        },
                    ));
                }
            }
            Message::Retrieve(r) => {
                // Reads after this connection's inserts see them. Rather than committing here
                // (one group commit per read in a mixed pipelined burst), the read waits for
                // the commit at the end of the burst.
                if self.pending.is_empty() && self.routed.is_empty() {
                    self.retrieve(request_id, arrived, r);
                } else {
                    self.deferred.push((request_id, arrived, r));
                }
            }
            Message::TimeSync => {
                let now = shared.clock.now();
                shared
                    .metrics
                    .requests
                    .with_label_values(&["time_sync", "ok"])
                    .inc();
                self.reply(
                    request_id,
                    &Message::TimeReply(msg::TimeReply {
                        unix_ns: now.unix_ns,
                        uncertainty_ns: now.uncertainty_ns,
                        epoch_len_secs: shared.cfg.epoch_secs,
                        ntp_synced: now.synced,
                    }),
                );
            }
            Message::NodeList(req) => {
                shared
                    .metrics
                    .requests
                    .with_label_values(&["node_list", "ok"])
                    .inc();
                let nodes = shared
                    .cluster
                    .sample(req.max as usize)
                    .into_iter()
                    .map(|(n, public_key)| msg::NodeInfo {
                        id: n.id,
                        public_key,
                        address: n.addr,
                    })
                    .collect();
                self.reply(
                    request_id,
                    &Message::NodeListReply(msg::NodeListReply { nodes }),
                );
            }
            Message::RingInfo => {
                shared
                    .metrics
                    .requests
                    .with_label_values(&["ring_info", "ok"])
                    .inc();
                self.reply(request_id, &Message::RingInfoReply(ring_info(&shared)));
            }
            Message::Lookup(l) => {
                shared
                    .metrics
                    .requests
                    .with_label_values(&["lookup", "ok"])
                    .inc();
                let core = self.core.clone();
                let task = glommio::spawn_local(async move {
                    let shared = core.shared.clone();
                    let routing = shared.cluster.routing.load_full();
                    let (route, found) = crate::cluster::find_traced(
                        &core.peers,
                        &routing,
                        &l.target,
                        shared.cluster.rpc_timeout,
                    )
                    .await;
                    let info = |n: tarn_proto::ring::NodeRef| node_info(&shared, n);
                    Message::LookupReply(msg::LookupReply {
                        route: route.into_iter().map(info).collect(),
                        found: found.unwrap_or_default().into_iter().map(info).collect(),
                    })
                });
                self.routed.push((request_id, arrived, task));
            }
            Message::Status => {
                self.commit_pending().await;
                shared
                    .metrics
                    .requests
                    .with_label_values(&["status", "ok"])
                    .inc();
                self.reply(request_id, &Message::StatusReply(status(&shared)));
            }
            Message::Hello(_) => {
                self.reply(request_id, &hello_ack(&shared));
            }
            other => {
                return self.reject(
                    request_id,
                    ErrorCode::UnknownKind,
                    format!("{:?} is not a request a node accepts", other.kind()),
                );
            }
        }
        End::Continue
    }

    /// Answers a RETRIEVE: from the store when this node is alone, else routed to the
    /// responsible node (its reply joins `routed`).
    fn retrieve(&mut self, request_id: u64, arrived: Instant, r: msg::Retrieve) {
        let core = self.core.clone();
        if !core.alone() {
            let task = glommio::spawn_local(async move {
                let reply = match core.clone().routed_get(r.epoch, r.key).await {
                    Ok(v) if v.is_empty() => {
                        core.m.retrieve_not_found.inc();
                        RetrieveReply::NotFound
                    }
                    Ok(v) => {
                        core.m.retrieve_found.inc();
                        RetrieveReply::Found(v)
                    }
                    Err(cause) => {
                        core.shared
                            .metrics
                            .requests
                            .with_label_values(&["retrieve", cause_label(&cause)])
                            .inc();
                        RetrieveReply::Failed(cause)
                    }
                };
                Message::RetrieveReply(reply)
            });
            self.routed.push((request_id, arrived, task));
            return;
        }
        // The reply is encoded from the values where the store holds them (no copies of its
        // own); one read in GET_TIMING_EVERY times the store's lookup.
        let timed = core.time_this_get().then(Instant::now);
        let mut looked_up = None;
        let (mut found, mut answered) = (false, false);
        let got = {
            let mut out = self.out.borrow_mut();
            debug_assert!(!out.handed, "a reply overtook inserts with the flusher");
            core.shared.store.get_with(r.epoch, &r.key, &mut |values| {
                if timed.is_some() {
                    looked_up = Some(Instant::now());
                }
                answered = true;
                found = !values.is_empty();
                let reply = if found {
                    RetrieveReplyRef::Found(values.iter().map(ValueRef).collect())
                } else {
                    RetrieveReplyRef::NotFound
                };
                if let Err(e) = frame::encode_retrieve_reply(request_id, &reply, &mut out.wbuf) {
                    tracing::error!(error = %e, "cannot encode a reply");
                }
            })
        };
        if let (Some(t), Some(done)) = (timed, looked_up) {
            core.m.get_seconds.observe((done - t).as_secs_f64());
        }
        match got {
            Ok(()) if found => core.m.retrieve_found.inc(),
            Ok(()) => core.m.retrieve_not_found.inc(),
            Err(e) => {
                tracing::error!(error = %e, "retrieve failed in the store");
                core.shared
                    .metrics
                    .requests
                    .with_label_values(&["retrieve", "internal"])
                    .inc();
                // A store fails before lending any value (`Store::get_with`); should one ever
                // fail after, its reply is out already and a second must not follow.
                debug_assert!(!answered, "the store failed after lending its values");
                if !answered {
                    let failed = RetrieveReply::Failed(FailCause::Internal);
                    self.reply(request_id, &Message::RetrieveReply(failed));
                }
            }
        }
        core.m
            .retrieve_seconds
            .observe(arrived.elapsed().as_secs_f64());
    }

    /// Commits this connection's pending inserts, collects its routed replies, then answers
    /// the reads that waited for them (routed reads join `routed` and are collected in turn).
    async fn commit_pending(&mut self) {
        loop {
            self.commit_local().await;
            for (request_id, t, task) in std::mem::take(&mut self.routed) {
                let reply = task.await;
                if let Message::InsertReply(r) = &reply {
                    match r {
                        InsertReply::Stored { .. } => self.core.m.insert_ok.inc(),
                        InsertReply::Failed(cause) => self
                            .core
                            .shared
                            .metrics
                            .requests
                            .with_label_values(&["insert", cause_label(cause)])
                            .inc(),
                    }
                    self.core
                        .m
                        .insert_seconds
                        .observe(t.elapsed().as_secs_f64());
                } else if let Message::RetrieveReply(_) = &reply {
                    self.core
                        .m
                        .retrieve_seconds
                        .observe(t.elapsed().as_secs_f64());
                }
                self.reply(request_id, &reply);
            }
            if self.deferred.is_empty() {
                return;
            }
            for (request_id, arrived, r) in std::mem::take(&mut self.deferred) {
                self.retrieve(request_id, arrived, r);
            }
        }
    }

    /// The pending inserts, as their requests and their puts (in the same order).
    fn take_pending(&mut self) -> (Vec<(u64, Instant)>, Vec<OwnedPut>) {
        let n = self.pending.len();
        let mut requests = Vec::with_capacity(n);
        let mut items = Vec::with_capacity(n);
        for (request_id, arrived, put) in self.pending.drain(..) {
            requests.push((request_id, arrived));
            items.push(put);
        }
        (requests, items)
    }

    /// Commits the inserts read so far that this node is responsible for, as one group
    /// (replicated), and encodes their replies.
    async fn commit_local(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (requests, items) = self.take_pending();
        let results = self.core.write_replicated(items).await;
        for ((request_id, t), r) in requests.into_iter().zip(results) {
            let reply = self.core.insert_reply(t, r);
            self.reply(request_id, &reply);
        }
    }
}

/// Appends `msg` as a frame to a connection's replies.
fn encode_reply(request_id: u64, msg: &Message, out: &mut Vec<u8>) {
    if let Err(e) = frame::encode(request_id, msg, out) {
        tracing::error!(error = %e, "cannot encode a reply");
    }
}

/// Why a hello is refused, if it is.
fn check_hello(shared: &Shared, h: &msg::Hello) -> Option<(ErrorCode, String)> {
    if h.network != shared.network {
        return Some((
            ErrorCode::NetworkMismatch,
            "this node belongs to another network".into(),
        ));
    }
    if h.epoch_len_secs != 0 && h.epoch_len_secs != shared.cfg.epoch_secs {
        return Some((
            ErrorCode::EpochLenMismatch,
            format!("this network's epoch length is {} s", shared.cfg.epoch_secs),
        ));
    }
    None
}

fn hello_ack(shared: &Shared) -> Message {
    Message::HelloAck(msg::HelloAck {
        version: tarn_proto::PROTOCOL_VERSION,
        network: shared.network,
        epoch_len_secs: shared.cfg.epoch_secs,
        node_id: shared.node_id,
        public_key: shared.public_key,
        max_frame_bytes: shared.cfg.max_frame_bytes,
    })
}

/// The node's status, as `tarnctl status` shows it.
pub fn status(shared: &Shared) -> msg::StatusReply {
    let now = shared.clock.now();
    msg::StatusReply {
        node_id: shared.node_id,
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: shared.started.elapsed().as_secs(),
        epoch_len_secs: shared.cfg.epoch_secs,
        now_epoch: Epoch::at_unix_ns(now.unix_ns, shared.cfg.epoch_secs),
        time_offset_ns: shared.clock.offset_ns(),
        ntp_synced: now.synced,
        cores: shared.cores as u32,
        epochs: shared
            .store
            .stats()
            .epochs
            .into_iter()
            .map(|e| msg::EpochStat {
                epoch: e.epoch,
                records: e.records,
                bytes: e.bytes,
            })
            .collect(),
    }
}

/// A ring member as clients see it (public key zero when no handshake proved it yet).
fn node_info(shared: &Shared, n: tarn_proto::ring::NodeRef) -> msg::NodeInfo {
    let public_key = if n.id == shared.node_id {
        shared.public_key
    } else {
        shared
            .cluster
            .members
            .get(&n.id)
            .map(|e| e.1)
            .unwrap_or([0; 32])
    };
    msg::NodeInfo {
        id: n.id,
        public_key,
        address: n.addr,
    }
}

/// The node's ring neighbourhood.
pub fn ring_info(shared: &Shared) -> msg::RingInfoReply {
    let r = shared.cluster.routing.load_full();
    msg::RingInfoReply {
        me: node_info(shared, r.me.clone()),
        member: r.member,
        predecessor: r.pred.clone().map(|p| node_info(shared, p)),
        successors: r
            .succs
            .iter()
            .cloned()
            .map(|s| node_info(shared, s))
            .collect(),
        replicas: shared.cluster.replicas as u8,
        succ_list_len: r.succ_list_len.min(255) as u8,
    }
}

fn cause_label(c: &FailCause) -> &'static str {
    match c {
        FailCause::NotInRange => "not_in_range",
        FailCause::TooLarge { .. } => "too_large",
        FailCause::KeyFull => "key_full",
        FailCause::OverQuota => "over_quota",
        FailCause::EpochOutOfWindow { .. } => "epoch_out_of_window",
        FailCause::Overloaded => "overloaded",
        FailCause::Internal => "internal",
        FailCause::Unavailable { .. } => "unavailable",
    }
}

fn reason_label(c: ErrorCode) -> &'static str {
    match c {
        ErrorCode::UnsupportedVersion => "unsupported_version",
        ErrorCode::FrameTooLarge => "frame_too_large",
        ErrorCode::UnknownKind => "unknown_kind",
        ErrorCode::InvalidBody => "invalid_body",
        ErrorCode::HelloRequired => "hello_required",
        ErrorCode::NetworkMismatch => "network_mismatch",
        ErrorCode::EpochLenMismatch => "epoch_len_mismatch",
        ErrorCode::Overloaded => "overloaded",
        ErrorCode::Timeout => "timeout",
        ErrorCode::EncryptionRequired => "encryption_required",
        ErrorCode::HandshakeFailed => "handshake_failed",
    }
}
