//! The presence engine: the seed's Figure 2 session as an API an application drives.
//!
//! [`start`] listens for contacts on the transport, connects to the nodes, syncs time, then
//! runs the session: retrieve every contact's presence → publish ours for every contact →
//! retrieve again (so two clients that come online together never miss each other) → open a
//! session with every contact found and notify it of our status. Every `refresh` it publishes
//! again when the epoch changed (and for the next epoch shortly before it starts), retrieves
//! the contacts not online (current and previous epoch), and re-announces its status on every
//! session (the heartbeat); a contact not heard from for 1.5 intervals (checked every quarter
//! interval, so within two intervals of its last sign of life), or whose connection closes, is
//! offline. Node connections that closed (a restart, a dead Tor circuit) are redialled in the
//! background, at most one attempt per node per refresh. [`EngineHandle::quit`] sends
//! NOTIFY_STATUS(OFF) to every online contact.
//!
//! Events come out of a channel; the application never polls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::identity::{Identity, UserId};
use crate::node::{NodeClient, NodeOptions};
use crate::profile::Contact;
use crate::record::Freshness;
use crate::registry::{local_ms, Registry, TimeEstimate};
use crate::session::{self, ReplayGuard, Session, SessionMessage, Status};
use crate::transport::{read_msg, write_msg, Listener, Transport};

/// What the application hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A contact is online with this status.
    Online {
        /// Its local name.
        name: String,
        /// Its status.
        status: Status,
    },
    /// A contact changed status.
    StatusChanged {
        /// Its local name.
        name: String,
        /// The new status.
        status: Status,
    },
    /// A contact went offline (said OFF, closed, or fell silent).
    Offline {
        /// Its local name.
        name: String,
    },
    /// A message from a contact.
    Message {
        /// Its local name.
        name: String,
        /// The text.
        text: String,
    },
    /// Something failed; the engine keeps going.
    Error(String),
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Node addresses to use (several: each index slot goes through a different one).
    pub nodes: Vec<String>,
    /// How to talk to nodes.
    pub node_options: NodeOptions,
    /// Refresh interval (re-retrieve offline contacts, re-announce status).
    pub refresh: Duration,
    /// Freshness rules for records.
    pub grace_secs: u64,
    /// How long the previous common secret stays valid after a rotation.
    pub overlap_secs: u64,
    /// Deadline for dialing and handshaking with a contact.
    pub contact_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            nodes: Vec::new(),
            node_options: NodeOptions::default(),
            refresh: Duration::from_secs(60),
            grace_secs: 600,
            overlap_secs: 7 * 24 * 3600,
            contact_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No node could be reached.
    #[error("no node reachable: {0}")]
    NoNodes(String),
    /// The transport could not listen.
    #[error("cannot listen for contacts: {0}")]
    Listen(std::io::Error),
}

enum Command {
    Status(Status),
    Send(String, String, tokio::sync::oneshot::Sender<bool>),
    Quit(tokio::sync::oneshot::Sender<()>),
}

/// Drives a running engine.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    /// The contact info published for our contacts.
    pub contact_info: String,
}

impl EngineHandle {
    /// Changes our status and tells every online contact.
    pub async fn set_status(&self, status: Status) {
        let _ = self.tx.send(Command::Status(status)).await;
    }

    /// Sends a message to an online contact; false when it is not online.
    pub async fn send(&self, name: &str, text: &str) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .tx
            .send(Command::Send(name.to_string(), text.to_string(), tx))
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Says OFF to every online contact and stops.
    pub async fn quit(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Command::Quit(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Live {
    /// Whether the preferred side (the smaller user id) initiated it: when both sides dial at
    /// once, both keep that session and drop the other.
    preferred: bool,
    session: Arc<Mutex<Session>>,
    out: mpsc::Sender<Vec<u8>>,
    status: Option<Status>,
    heard: Instant,
    generation: u64,
}

struct State {
    me: Identity,
    contacts: Vec<Contact>,
    live: HashMap<UserId, Live>,
    my_status: Status,
    events: mpsc::Sender<Event>,
    guard: ReplayGuard,
    next_generation: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn name_of(st: &State, id: &UserId) -> String {
    st.contacts
        .iter()
        .find(|c| c.id() == *id)
        .map(|c| c.name.clone())
        .unwrap_or_else(|| id.to_hex()[..8].to_string())
}

/// Starts the engine with `me` and `contacts`; returns its handle and the event stream.
pub async fn start<T: Transport>(
    me: Identity,
    contacts: Vec<Contact>,
    transport: T,
    mut cfg: EngineConfig,
) -> Result<(EngineHandle, mpsc::Receiver<Event>), EngineError> {
    let transport = Arc::new(transport);
    let (listener, contact_info) = transport.listen().await.map_err(EngineError::Listen)?;
    let mut conns = Vec::new();
    let mut links = Vec::new();
    let mut last_err = String::from("no node configured");
    for addr in &cfg.nodes {
        match dial_node(&*transport, addr, &cfg).await {
            Ok(c) => {
                conns.push(Arc::new(c));
                links.push(addr.clone());
            }
            Err(e) => last_err = format!("{addr}: {e}"),
        }
    }
    if conns.is_empty() {
        return Err(EngineError::NoNodes(last_err));
    }
    let registry = Registry::new(
        conns,
        Freshness {
            epoch_secs: 3600,
            grace_secs: cfg.grace_secs,
        },
    );
    let time = registry
        .sync_time()
        .await
        .ok_or_else(|| EngineError::NoNodes("no TIME_SYNC answer".into()))?;
    let mut registry = registry;
    registry.fresh = Freshness {
        epoch_secs: time.epoch_secs,
        grace_secs: cfg.grace_secs,
    };
    let (events_tx, events_rx) = mpsc::channel(1024);
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let state: Shared = Arc::new(Mutex::new(State {
        me,
        contacts,
        live: HashMap::new(),
        my_status: Status::A,
        events: events_tx,
        guard: ReplayGuard::default(),
        next_generation: 1,
    }));
    tokio::spawn(accept_loop(listener, state.clone(), cfg.contact_timeout));
    // From here on, `cfg.nodes` lists the connected nodes, aligned with the registry's.
    cfg.nodes = links;
    tokio::spawn(run(
        state,
        transport,
        registry,
        time,
        contact_info.clone(),
        cfg,
        cmd_rx,
    ));
    Ok((
        EngineHandle {
            tx: cmd_tx,
            contact_info,
        },
        events_rx,
    ))
}

async fn emit(state: &Shared, e: Event) {
    let tx = lock(state).events.clone();
    let _ = tx.send(e).await;
}

/// Sends one session message on a live session.
fn send_on(live: &Live, msg: &SessionMessage) -> bool {
    let sealed = {
        let mut s = live.session.lock().unwrap_or_else(|p| p.into_inner());
        s.seal(msg, local_ms())
    };
    match sealed {
        Ok(ct) => live.out.try_send(ct).is_ok(),
        Err(_) => false,
    }
}

/// Registers an established session: a writer task, a reader task, and our status.
fn register<S: crate::transport::Stream>(
    state: &Shared,
    session: Session,
    stream: S,
    initiated: bool,
) {
    let peer = session.peer.id();
    let preferred = {
        let st = lock(state);
        let preferred = (st.me.id() < peer) == initiated;
        if !preferred && st.live.get(&peer).is_some_and(|l| l.preferred) {
            // A crossing dial: the other session wins on both sides.
            return;
        }
        preferred
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(256);
    let session = Arc::new(Mutex::new(session));
    let generation = {
        let mut st = lock(state);
        let g = st.next_generation;
        st.next_generation += 1;
        let live = Live {
            preferred,
            session: session.clone(),
            out: out_tx,
            status: st.live.get(&peer).and_then(|l| l.status),
            heard: Instant::now(),
            generation: g,
        };
        let my = st.my_status;
        send_on(&live, &SessionMessage::NotifyStatus(my));
        st.live.insert(peer, live);
        g
    };
    tokio::spawn(async move {
        while let Some(ct) = out_rx.recv().await {
            if write_msg(&mut wr, &ct).await.is_err() {
                break;
            }
        }
    });
    let state = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok(ct) = read_msg(&mut rd).await else {
                break;
            };
            let opened = session.lock().unwrap_or_else(|p| p.into_inner()).open(&ct);
            let msg = match opened {
                Ok(Some((_, m))) => m,
                Ok(None) => continue,
                Err(_) => break,
            };
            let event = {
                let mut st = lock(&state);
                let name = name_of(&st, &peer);
                let Some(live) = st
                    .live
                    .get_mut(&peer)
                    .filter(|l| l.generation == generation)
                else {
                    break;
                };
                live.heard = Instant::now();
                match msg {
                    SessionMessage::NotifyStatus(Status::Off) => {
                        st.live.remove(&peer);
                        Some(Event::Offline { name })
                    }
                    SessionMessage::NotifyStatus(s) => match live.status.replace(s) {
                        None => Some(Event::Online { name, status: s }),
                        Some(old) if old != s => Some(Event::StatusChanged { name, status: s }),
                        Some(_) => None,
                    },
                    SessionMessage::InstantMessage(text) => Some(Event::Message { name, text }),
                }
            };
            if let Some(e) = event {
                emit(&state, e).await;
            }
        }
        // The connection ended: offline, unless a newer session replaced this one.
        let gone = {
            let mut st = lock(&state);
            let current = st
                .live
                .get(&peer)
                .is_some_and(|l| l.generation == generation);
            if current {
                let was_online = st.live.remove(&peer).is_some_and(|l| l.status.is_some());
                was_online.then(|| name_of(&st, &peer))
            } else {
                None
            }
        };
        if let Some(name) = gone {
            emit(&state, Event::Offline { name }).await;
        }
    });
}

async fn accept_loop<L: Listener>(mut listener: L, state: Shared, timeout: Duration) {
    while let Ok(mut stream) = listener.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(Ok(m1)) = tokio::time::timeout(timeout, read_msg(&mut stream)).await else {
                return;
            };
            let answered = {
                let mut st = lock(&state);
                let cards: Vec<_> = st.contacts.iter().map(|c| c.card.clone()).collect();
                let State { me, guard, .. } = &mut *st;
                session::respond(me, &cards, &m1, local_ms(), guard)
            };
            let Ok((session, m2)) = answered else {
                return;
            };
            if write_msg(&mut stream, &m2).await.is_ok() {
                register(&state, session, stream, false);
            }
        });
    }
}

async fn dial<T: Transport>(
    state: &Shared,
    transport: &T,
    contact: &Contact,
    info: &str,
    timeout: Duration,
) -> bool {
    let me = lock(state).me.clone();
    let attempt = async {
        let mut s = transport.dial_contact(info).await.ok()?;
        let (pending, m1) = session::initiate(&me, &contact.card, local_ms()).ok()?;
        write_msg(&mut s, &m1).await.ok()?;
        let m2 = read_msg(&mut s).await.ok()?;
        let session = pending.finish(&contact.card, &m2).ok()?;
        Some((session, s))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Some((session, s))) => {
            register(state, session, s, true);
            true
        }
        _ => false,
    }
}

/// One retrieve pass: every contact not online, current and previous epoch; dial the ones
/// found.
async fn retrieve_pass<T: Transport>(
    state: &Shared,
    transport: &T,
    registry: &Registry,
    time: &TimeEstimate,
    own_info: &str,
    cfg: &EngineConfig,
) {
    let (me, contacts) = {
        let st = lock(state);
        let offline: Vec<Contact> = st
            .contacts
            .iter()
            .filter(|c| !st.live.contains_key(&c.id()))
            .cloned()
            .collect();
        (st.me.clone(), offline)
    };
    let epoch = time.epoch(local_ms());
    for c in contacts {
        let mut best = registry.retrieve(&me, &c, epoch).await;
        if best.is_none() && epoch.0 > 0 {
            best = registry
                .retrieve(&me, &c, tarn_proto::Epoch(epoch.0 - 1))
                .await;
        }
        if let Some(r) = best {
            if r.contact_info != own_info {
                dial(state, transport, &c, &r.contact_info, cfg.contact_timeout).await;
            }
        }
    }
}

async fn publish_pass(
    state: &Shared,
    registry: &Registry,
    time: &TimeEstimate,
    epoch: tarn_proto::Epoch,
    own_info: &str,
) {
    let (me, contacts) = {
        let st = lock(state);
        (st.me.clone(), st.contacts.clone())
    };
    for c in &contacts {
        let r = registry
            .publish(&me, c, epoch, own_info, time.corrected_ms(local_ms()))
            .await;
        if r.stored == 0 {
            emit(
                state,
                Event::Error(format!(
                    "could not publish for {} in epoch {}",
                    c.name, epoch.0
                )),
            )
            .await;
        }
    }
}

/// Dials a node and runs the node protocol's hello over the stream (bounded by the node
/// timeout).
async fn dial_node<T: Transport>(
    transport: &T,
    addr: &str,
    cfg: &EngineConfig,
) -> Result<NodeClient, String> {
    let connected = async {
        let s = transport.dial_node(addr).await.map_err(|e| e.to_string())?;
        NodeClient::connect_over(s, &cfg.node_options)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(cfg.node_options.timeout, connected).await {
        Ok(r) => r,
        Err(_) => Err("timed out".into()),
    }
}

/// Node connections being redialled in the background; a dial that hangs (a node coming
/// back slowly, a Tor circuit that takes its full timeout) never holds up the engine's loop.
struct Redials {
    busy: Vec<bool>,
    done_tx: mpsc::Sender<(usize, Option<NodeClient>)>,
    done: mpsc::Receiver<(usize, Option<NodeClient>)>,
}

impl Redials {
    fn new(nodes: usize) -> Redials {
        let (done_tx, done) = mpsc::channel(nodes.max(1));
        Redials {
            busy: vec![false; nodes],
            done_tx,
            done,
        }
    }

    /// Starts a redial of every node connection that has closed (a node restart, a dead Tor
    /// circuit) and is not being redialled already, so a long-running client never ends up
    /// with no nodes.
    fn start<T: Transport>(&mut self, transport: &Arc<T>, registry: &Registry, cfg: &EngineConfig) {
        for (i, node) in registry.nodes().iter().enumerate() {
            let (Some(busy), Some(addr)) = (self.busy.get_mut(i), cfg.nodes.get(i)) else {
                continue;
            };
            if *busy || !node.is_closed() {
                continue;
            }
            *busy = true;
            let (transport, addr, cfg, done) = (
                transport.clone(),
                addr.clone(),
                cfg.clone(),
                self.done_tx.clone(),
            );
            tokio::spawn(async move {
                let c = dial_node(&*transport, &addr, &cfg).await.ok();
                let _ = done.send((i, c)).await;
            });
        }
    }

    /// Puts a finished redial in place (a failed one is tried again at the next refresh).
    fn finish(&mut self, registry: &mut Registry, i: usize, c: Option<NodeClient>) {
        if let Some(busy) = self.busy.get_mut(i) {
            *busy = false;
        }
        if let Some(c) = c {
            registry.replace_node(i, Arc::new(c));
        }
    }
}

/// `cfg.nodes` holds the addresses of `registry`'s connections, in the same order.
async fn run<T: Transport>(
    state: Shared,
    transport: Arc<T>,
    mut registry: Registry,
    time: TimeEstimate,
    own_info: String,
    cfg: EngineConfig,
    mut commands: mpsc::Receiver<Command>,
) {
    // Figure 2: retrieve, publish, retrieve again, notify (dial does the notify).
    retrieve_pass(&state, &*transport, &registry, &time, &own_info, &cfg).await;
    let mut published = time.epoch(local_ms());
    publish_pass(&state, &registry, &time, published, &own_info).await;
    retrieve_pass(&state, &*transport, &registry, &time, &own_info, &cfg).await;
    let mut published_next = false;
    let mut tick = tokio::time::interval(cfg.refresh);
    tick.tick().await;
    let mut sweep = tokio::time::interval((cfg.refresh / 4).max(Duration::from_millis(10)));
    sweep.tick().await;
    let mut redials = Redials::new(cfg.nodes.len());
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Status(s)) => {
                    let st = &mut *lock(&state);
                    st.my_status = s;
                    for live in st.live.values() {
                        send_on(live, &SessionMessage::NotifyStatus(s));
                    }
                }
                Some(Command::Send(name, text, reply)) => {
                    let st = lock(&state);
                    let ok = st
                        .contacts
                        .iter()
                        .find(|c| c.name == name)
                        .and_then(|c| st.live.get(&c.id()))
                        .is_some_and(|l| send_on(l, &SessionMessage::InstantMessage(text)));
                    let _ = reply.send(ok);
                }
                Some(Command::Quit(done)) => {
                    {
                        let st = lock(&state);
                        for live in st.live.values() {
                            send_on(live, &SessionMessage::NotifyStatus(Status::Off));
                        }
                    }
                    // Let the writers flush OFF before the runtime may stop.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = done.send(());
                    return;
                }
                None => return,
            },
            Some((i, c)) = redials.done.recv() => redials.finish(&mut registry, i, c),
            _ = tick.tick() => {
                redials.start(&transport, &registry, &cfg);
                let now = local_ms();
                let epoch = time.epoch(now);
                if epoch != published {
                    published = epoch;
                    published_next = false;
                    publish_pass(&state, &registry, &time, epoch, &own_info).await;
                }
                // Publish for the next epoch shortly before it starts.
                let epoch_ms = time.epoch_secs.max(1) * 1000;
                let into = time.corrected_ms(now) % epoch_ms;
                if !published_next && epoch_ms - into <= 2 * cfg.refresh.as_millis() as u64 {
                    published_next = true;
                    publish_pass(&state, &registry, &time, tarn_proto::Epoch(epoch.0 + 1), &own_info).await;
                }
                // Re-announce (the heartbeat every contact expects once per interval).
                {
                    let st = lock(&state);
                    let my = st.my_status;
                    for live in st.live.values() {
                        send_on(live, &SessionMessage::NotifyStatus(my));
                    }
                }
                retrieve_pass(&state, &*transport, &registry, &time, &own_info, &cfg).await;
            }
            _ = sweep.tick() => {
                // A contact silent for 1.5 intervals (one heartbeat missed, with slack) is
                // offline: with sweeps every quarter interval, within two intervals of its
                // last sign of life.
                let silent: Vec<String> = {
                    let mut st = lock(&state);
                    let limit = cfg.refresh * 3 / 2;
                    let dead: Vec<UserId> = st
                        .live
                        .iter()
                        .filter(|(_, l)| l.heard.elapsed() > limit)
                        .map(|(id, _)| *id)
                        .collect();
                    let mut names = Vec::new();
                    for id in dead {
                        if st.live.remove(&id).is_some_and(|l| l.status.is_some()) {
                            names.push(name_of(&st, &id));
                        }
                    }
                    names
                };
                for name in silent {
                    emit(&state, Event::Offline { name }).await;
                }
            }
        }
    }
}
