//! Node-to-node links: the authenticated handshake (both sides), framed reading, and a pool of
//! outgoing links per executor (one per peer address) that carries one-way ring messages and
//! pipelined data-plane requests.
//!
//! A link proves both ends' node keys (each signs a transcript of both fresh nonces) and, in a
//! private ring, knowledge of the network secret (a keyed MAC of the same transcript). Peers of
//! another network or epoch length are refused. Node-to-node traffic is plain TCP inside the
//! operator's network (seed §4.2); what a link adds is that nobody without a node key — and,
//! with a secret, without the secret — can take part in the ring.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use tarn_proto::frame::{parse_frame, Parsed};
use tarn_proto::msg::NetworkId;
use tarn_proto::peer::{
    self, encode_peer, DataRequest, DataResponse, PeerAuth, PeerChallenge, PeerHello, PeerMessage,
};
use tarn_proto::ring::{NodeRef, RingMessage};
use tarn_proto::{Decoder, Id};

/// What a node needs to open and accept links.
pub struct PeerIdent {
    /// This node in the ring.
    pub me: NodeRef,
    /// Its signing key.
    pub signing: SigningKey,
    /// Its public key.
    pub public_key: [u8; 32],
    /// The network.
    pub network: NetworkId,
    /// The network's epoch length.
    pub epoch_secs: u64,
    /// MAC key derived from the network secret, if the ring is private.
    pub secret: Option<[u8; 32]>,
    /// Largest frame body accepted.
    pub max_frame: u32,
}

impl std::fmt::Debug for PeerIdent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdent")
            .field("me", &self.me)
            .field("private", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

/// An authenticated peer.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Its ring identity.
    pub node: NodeRef,
    /// Its public key.
    pub public_key: [u8; 32],
}

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The link closed.
    #[error("link closed")]
    Closed,
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The handshake was refused (by us or the peer), with a metric-safe reason.
    #[error("refused: {0}")]
    Refused(&'static str),
}

/// Reads node-to-node frames from a stream.
pub struct FrameReader<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: u32,
    decoder: Decoder,
}

impl<R> std::fmt::Debug for FrameReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("buffered", &(self.end - self.start))
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `r` that starts with the bytes already read in `pending`.
    pub fn new(r: R, pending: &[u8], max: u32) -> FrameReader<R> {
        let mut buf = vec![0; (64 * 1024).max(pending.len())];
        buf[..pending.len()].copy_from_slice(pending);
        FrameReader {
            r,
            buf,
            start: 0,
            end: pending.len(),
            max,
            decoder: Decoder::new(),
        }
    }

    /// The next message and its request id.
    pub async fn next(&mut self) -> Result<(u64, PeerMessage), PeerError> {
        loop {
            match parse_frame(&self.buf[self.start..self.end], self.max) {
                Ok(Parsed::Frame(f)) => {
                    let id = f.header.request_id;
                    let len = f.wire_len();
                    let msg = self
                        .decoder
                        .decode_peer(&f)
                        .map_err(|e| PeerError::Protocol(e.to_string()));
                    self.start += len;
                    return msg.map(|m| (id, m));
                }
                Ok(Parsed::Incomplete { .. }) => {}
                Err(e) => return Err(PeerError::Protocol(e.to_string())),
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let cap = tarn_proto::frame::HEADER_LEN + self.max as usize;
                if self.buf.len() >= cap {
                    return Err(PeerError::Protocol("frame larger than the limit".into()));
                }
                let want = (self.buf.len() * 2).min(cap);
                self.buf.resize(want, 0);
            }
            let n = self.r.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(PeerError::Closed);
            }
            self.end += n;
        }
    }
}

fn frame(id: u64, msg: &PeerMessage) -> Vec<u8> {
    let mut out = Vec::new();
    if let Err(e) = encode_peer(id, msg, &mut out) {
        tracing::error!(error = %e, "cannot encode a peer message");
    }
    out
}

fn sign(ident: &PeerIdent, transcript: &[u8; 32]) -> Vec<u8> {
    ident.signing.sign(transcript).to_bytes().to_vec()
}

fn verify(public_key: &[u8; 32], transcript: &[u8; 32], sig: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(sig) else {
        return false;
    };
    key.verify(transcript, &sig).is_ok()
}

fn id_of(public_key: &[u8; 32]) -> Id {
    Id(*blake3::hash(public_key).as_bytes())
}

fn check_hello(ident: &PeerIdent, h: &PeerHello) -> Result<(), &'static str> {
    if h.version != tarn_proto::PROTOCOL_VERSION {
        return Err("version");
    }
    if h.network != ident.network {
        return Err("network");
    }
    if h.epoch_len_secs != ident.epoch_secs {
        return Err("epoch_len");
    }
    if h.node.id != id_of(&h.public_key) {
        return Err("identity");
    }
    if h.node.id == ident.me.id {
        return Err("self");
    }
    Ok(())
}

/// Dials `addr` and runs the dialer's side of the handshake.
pub async fn dial(
    ident: &PeerIdent,
    addr: &str,
    timeout: Duration,
) -> Result<(TcpStream, FrameReaderBuf, PeerInfo), PeerError> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| PeerError::Protocol(format!("{addr:?} is not IP:PORT")))?;
    let mut stream = TcpStream::connect_timeout(sock, timeout)
        .await
        .map_err(|e| match e {
            glommio::GlommioError::IoError(io) => PeerError::Io(io),
            _ => PeerError::Timeout,
        })?;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let nonce: [u8; 32] = rand::random();
    let hello = PeerHello {
        version: tarn_proto::PROTOCOL_VERSION,
        network: ident.network,
        epoch_len_secs: ident.epoch_secs,
        node: ident.me.clone(),
        public_key: ident.public_key,
        nonce,
    };
    stream
        .write_all(&frame(0, &PeerMessage::Hello(hello)))
        .await?;
    let mut pending = Vec::new();
    let (msg, rest) = read_one(&mut stream, &mut pending, ident.max_frame).await?;
    let ch = match msg {
        PeerMessage::Challenge(c) => c,
        PeerMessage::Refused(r) => {
            tracing::warn!(peer = %addr, reason = %r, "peer refused our handshake");
            return Err(PeerError::Refused("refused_by_peer"));
        }
        _ => return Err(PeerError::Protocol("expected a challenge".into())),
    };
    if ch.node.id != id_of(&ch.public_key) {
        return Err(PeerError::Refused("identity"));
    }
    let t_listener = peer::transcript(
        b"listener",
        &ident.network,
        &ident.public_key,
        &nonce,
        &ch.public_key,
        &ch.nonce,
    );
    if !verify(&ch.public_key, &t_listener, &ch.signature) {
        return Err(PeerError::Refused("signature"));
    }
    if peer::transcript_mac(ident.secret.as_ref(), &t_listener) != ch.mac {
        return Err(PeerError::Refused("secret"));
    }
    let t_dialer = peer::transcript(
        b"dialer",
        &ident.network,
        &ident.public_key,
        &nonce,
        &ch.public_key,
        &ch.nonce,
    );
    let auth = PeerAuth {
        signature: sign(ident, &t_dialer),
        mac: peer::transcript_mac(ident.secret.as_ref(), &t_dialer),
    };
    stream
        .write_all(&frame(0, &PeerMessage::Auth(auth)))
        .await?;
    pending = rest;
    let (msg, rest) = read_one(&mut stream, &mut pending, ident.max_frame).await?;
    match msg {
        PeerMessage::Ready => {}
        PeerMessage::Refused(r) => {
            tracing::warn!(peer = %addr, reason = %r, "peer refused our handshake");
            return Err(PeerError::Refused("refused_by_peer"));
        }
        _ => return Err(PeerError::Protocol("expected ready".into())),
    }
    let _ = stream.set_read_timeout(None);
    Ok((
        stream,
        FrameReaderBuf(rest),
        PeerInfo {
            node: ch.node,
            public_key: ch.public_key,
        },
    ))
}

/// Bytes read past the handshake, handed to the link's reader.
#[derive(Debug)]
pub struct FrameReaderBuf(pub Vec<u8>);

/// Reads exactly one frame during a handshake; returns it and any bytes after it.
async fn read_one(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    max: u32,
) -> Result<(PeerMessage, Vec<u8>), PeerError> {
    let mut chunk = [0u8; 4096];
    loop {
        match parse_frame(pending, max) {
            Ok(Parsed::Frame(f)) => {
                let len = f.wire_len();
                let msg = Decoder::new()
                    .decode_peer(&f)
                    .map_err(|e| PeerError::Protocol(e.to_string()))?;
                return Ok((msg, pending[len..].to_vec()));
            }
            Ok(Parsed::Incomplete { .. }) => {}
            Err(e) => return Err(PeerError::Protocol(e.to_string())),
        }
        if pending.len() > 64 * 1024 {
            return Err(PeerError::Protocol("handshake frame too large".into()));
        }
        let n = stream.read(&mut chunk).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut {
                PeerError::Timeout
            } else {
                PeerError::Io(e)
            }
        })?;
        if n == 0 {
            return Err(PeerError::Closed);
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// The listener's side of the handshake, after the first frame (a [`PeerHello`]) was read.
/// On refusal the peer is told why (by a short reason) and the error says which check failed.
pub async fn accept(
    ident: &PeerIdent,
    stream: &mut TcpStream,
    hello: PeerHello,
    mut pending: Vec<u8>,
    timeout: Duration,
) -> Result<(PeerInfo, Vec<u8>), PeerError> {
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if let Err(reason) = check_hello(ident, &hello) {
        let _ = stream
            .write_all(&frame(0, &PeerMessage::Refused(reason.into())))
            .await;
        return Err(PeerError::Refused(reason));
    }
    let nonce: [u8; 32] = rand::random();
    let t_listener = peer::transcript(
        b"listener",
        &ident.network,
        &hello.public_key,
        &hello.nonce,
        &ident.public_key,
        &nonce,
    );
    let ch = PeerChallenge {
        node: ident.me.clone(),
        public_key: ident.public_key,
        nonce,
        signature: sign(ident, &t_listener),
        mac: peer::transcript_mac(ident.secret.as_ref(), &t_listener),
    };
    stream
        .write_all(&frame(0, &PeerMessage::Challenge(ch)))
        .await?;
    let (msg, rest) = read_one(stream, &mut pending, ident.max_frame).await?;
    let PeerMessage::Auth(auth) = msg else {
        return Err(PeerError::Refused("protocol"));
    };
    let t_dialer = peer::transcript(
        b"dialer",
        &ident.network,
        &hello.public_key,
        &hello.nonce,
        &ident.public_key,
        &nonce,
    );
    let refusal = if !verify(&hello.public_key, &t_dialer, &auth.signature) {
        Some("signature")
    } else if peer::transcript_mac(ident.secret.as_ref(), &t_dialer) != auth.mac {
        Some("secret")
    } else {
        None
    };
    if let Some(reason) = refusal {
        let _ = stream
            .write_all(&frame(0, &PeerMessage::Refused(reason.into())))
            .await;
        return Err(PeerError::Refused(reason));
    }
    stream.write_all(&frame(0, &PeerMessage::Ready)).await?;
    let _ = stream.set_read_timeout(None);
    Ok((
        PeerInfo {
            node: hello.node,
            public_key: hello.public_key,
        },
        rest,
    ))
}

/// An outgoing link: a writer task fed by a queue, a reader task that completes requests.
pub struct Link {
    out: LocalSender<Vec<u8>>,
    pending: Rc<RefCell<HashMap<u64, futures_channel::oneshot::Sender<DataResponse>>>>,
    next_id: Cell<u64>,
    alive: Rc<Cell<bool>>,
    /// The authenticated peer.
    pub peer: PeerInfo,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.peer.node.id)
            .finish_non_exhaustive()
    }
}

/// Writes queued frames until the queue closes or the socket fails.
pub async fn write_queue<W: AsyncWrite + Unpin>(
    mut w: W,
    rx: local_channel::LocalReceiver<Vec<u8>>,
    alive: Rc<Cell<bool>>,
) {
    while let Some(mut buf) = rx.recv().await {
        // Coalesce whatever else is queued into one write.
        while let Some(Some(more)) = futures_lite::future::poll_once(rx.recv()).await {
            buf.extend_from_slice(&more);
            if buf.len() > 256 * 1024 {
                break;
            }
        }
        if w.write_all(&buf).await.is_err() {
            break;
        }
    }
    alive.set(false);
    let _ = w.close().await;
}

impl Link {
    fn start(stream: TcpStream, leftover: Vec<u8>, peer: PeerInfo, max: u32) -> Rc<Link> {
        let (r, w): (ReadHalf<TcpStream>, WriteHalf<TcpStream>) = futures_lite::io::split(stream);
        let (tx, rx) = local_channel::new_bounded(4096);
        let alive = Rc::new(Cell::new(true));
        let pending: Rc<RefCell<HashMap<u64, futures_channel::oneshot::Sender<DataResponse>>>> =
            Rc::new(RefCell::new(HashMap::new()));
        glommio::spawn_local(write_queue(w, rx, alive.clone())).detach();
        {
            let (pending, alive) = (pending.clone(), alive.clone());
            glommio::spawn_local(async move {
                let mut reader = FrameReader::new(r, &leftover, max);
                while let Ok((id, msg)) = reader.next().await {
                    if let PeerMessage::Response(resp) = msg {
                        if let Some(tx) = pending.borrow_mut().remove(&id) {
                            let _ = tx.send(resp);
                        }
                    }
                }
                alive.set(false);
                // Dropping the senders fails every waiting request at once.
                pending.borrow_mut().clear();
            })
            .detach();
        }
        Rc::new(Link {
            out: tx,
            pending,
            next_id: Cell::new(1),
            alive,
            peer,
        })
    }

    fn is_alive(&self) -> bool {
        self.alive.get()
    }

    fn send_frame(&self, buf: Vec<u8>) -> Result<(), PeerError> {
        self.out.try_send(buf).map_err(|_| PeerError::Closed)
    }

    /// Sends a request and waits for its response.
    pub async fn request(
        &self,
        req: &DataRequest,
        timeout: Duration,
    ) -> Result<DataResponse, PeerError> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = futures_channel::oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        let mut buf = Vec::new();
        encode_peer(id, &PeerMessage::Request(req.clone()), &mut buf)
            .map_err(|e| PeerError::Protocol(e.to_string()))?;
        if let Err(e) = self.send_frame(buf) {
            self.pending.borrow_mut().remove(&id);
            return Err(e);
        }
        let pending = self.pending.clone();
        let r = glommio::timer::timeout(timeout, async move { Ok(rx.await) }).await;
        pending.borrow_mut().remove(&id);
        match r {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(PeerError::Closed),
            Err(_) => Err(PeerError::Timeout),
        }
    }
}

/// Hears of every outgoing link established (`Ok`) or refused.
pub type LinkHook = Box<dyn Fn(&PeerInfo, Result<(), &PeerError>)>;

/// Outgoing links of one executor, one per peer address.
pub struct Pool {
    ident: std::sync::Arc<PeerIdent>,
    links: RefCell<HashMap<String, Rc<Link>>>,
    dialing: RefCell<HashSet<String>>,
    connect_timeout: Duration,
    on_link: LinkHook,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("links", &self.links.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// An empty pool; `on_link` hears of every link established or refused.
    pub fn new(
        ident: std::sync::Arc<PeerIdent>,
        connect_timeout: Duration,
        on_link: LinkHook,
    ) -> Pool {
        Pool {
            ident,
            links: RefCell::new(HashMap::new()),
            dialing: RefCell::new(HashSet::new()),
            connect_timeout,
            on_link,
        }
    }

    /// The live link to `addr`, dialing when there is none.
    pub async fn link(&self, addr: &str) -> Result<Rc<Link>, PeerError> {
        loop {
            if let Some(l) = self.links.borrow().get(addr) {
                if l.is_alive() {
                    return Ok(l.clone());
                }
            }
            // Another task is dialing: wait for it (bounded by its connect timeout).
            let busy = self.dialing.borrow().contains(addr);
            if !busy {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        self.dialing.borrow_mut().insert(addr.to_string());
        let dialed = glommio::timer::timeout(self.connect_timeout * 3, async {
            Ok(dial(&self.ident, addr, self.connect_timeout).await)
        })
        .await
        .unwrap_or(Err(PeerError::Timeout));
        self.dialing.borrow_mut().remove(addr);
        match dialed {
            Ok((stream, rest, info)) => {
                (self.on_link)(&info, Ok(()));
                let link = Link::start(stream, rest.0, info, self.ident.max_frame);
                self.links
                    .borrow_mut()
                    .insert(addr.to_string(), link.clone());
                Ok(link)
            }
            Err(e) => {
                if let PeerError::Refused(_) = e {
                    let unknown = PeerInfo {
                        node: NodeRef {
                            id: Id([0; 32]),
                            addr: addr.to_string(),
                        },
                        public_key: [0; 32],
                    };
                    (self.on_link)(&unknown, Err(&e));
                }
                Err(e)
            }
        }
    }

    /// Sends a request to `addr` and waits for the response.
    pub async fn request(
        &self,
        addr: &str,
        req: &DataRequest,
        timeout: Duration,
    ) -> Result<DataResponse, PeerError> {
        let link = self.link(addr).await?;
        link.request(req, timeout).await
    }

    /// Sends a ring message to `addr` (one-way; the ring state machine handles silence).
    pub async fn send_ring(&self, addr: &str, msg: RingMessage) {
        if let Ok(link) = self.link(addr).await {
            let _ = link.send_frame(frame(0, &PeerMessage::Ring(msg)));
        }
    }
}
