//! The node client: one pipelined connection to one tarn node, on tokio.
//!
//! Every request gets a fresh request id; a reader task routes replies to their callers by id,
//! so any number of requests can be in flight on one connection. Every call has a deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tarn_proto::frame::{self, Parsed};
use tarn_proto::msg::{
    ErrorCode, HelloAck, Insert, InsertReply, NodeListReply, NodeListRequest, Retrieve,
    RetrieveReply, StatusReply, TimeReply,
};
use tarn_proto::{Decoder, Epoch, Key, Message, NetworkId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// How to talk to a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The network to join; the node refuses others.
    pub network: NetworkId,
    /// The epoch length expected, or 0 to accept the node's.
    pub epoch_len_secs: u64,
    /// Deadline for connecting and for each request.
    pub timeout: Duration,
    /// Largest reply body accepted.
    pub max_frame_bytes: u32,
    /// Encrypted (the default) or plaintext.
    pub channel: Channel,
}

/// How requests travel to the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Channel {
    /// A Noise NK channel to the node's key: everything after the handshake is encrypted and
    /// authenticated. `node_key` is the node's ed25519 public key from a signed bootstrap list
    /// or a NODE_LIST entry; `None` trusts the key the node presents in a plaintext hello on
    /// the same connection (trust on first use: an on-path attacker at that moment could
    /// impersonate the node).
    Encrypted {
        /// The node's ed25519 public key, if known.
        node_key: Option<[u8; 32]>,
    },
    /// The plaintext protocol (nodes accept it from loopback clients by default).
    Plaintext,
}

impl Default for NodeOptions {
    fn default() -> NodeOptions {
        NodeOptions {
            network: NetworkId::from_name("tarn-dev"),
            epoch_len_secs: 0,
            timeout: Duration::from_secs(10),
            max_frame_bytes: 1 << 20,
            channel: Channel::Encrypted { node_key: None },
        }
    }
}

/// A node request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No reply within the deadline.
    #[error("{op}: no reply within {timeout:?}")]
    Timeout {
        /// What was being done.
        op: &'static str,
        /// The deadline.
        timeout: Duration,
    },
    /// The connection closed before the reply.
    #[error("{op}: connection closed")]
    Closed {
        /// What was being done.
        op: &'static str,
    },
    /// The node answered with a protocol error.
    #[error("{op}: node refused: {code:?}: {detail}")]
    Refused {
        /// What was being done.
        op: &'static str,
        /// The node's code.
        code: ErrorCode,
        /// The node's explanation.
        detail: String,
    },
    /// The node answered with a message of the wrong kind.
    #[error("{op}: unexpected reply {got:?}")]
    Unexpected {
        /// What was being done.
        op: &'static str,
        /// The kind received.
        got: tarn_proto::Kind,
    },
    /// The request could not be encoded.
    #[error("encoding: {0}")]
    Encode(#[from] frame::EncodeError),
    /// The encrypted channel could not be set up (wrong node key, or tampering).
    #[error("encrypted channel: {0}")]
    Channel(String),
}

/// Coarse classification, for retry decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientErrorKind {
    /// The node could not be reached or went away: another node may do.
    Unreachable,
    /// The node is slow.
    Timeout,
    /// The node refused the request or answered nonsense.
    Refused,
}

impl ClientError {
    /// Classifies this error.
    pub fn kind(&self) -> ClientErrorKind {
        match self {
            ClientError::Connect { .. } | ClientError::Closed { .. } => {
                ClientErrorKind::Unreachable
            }
            ClientError::Timeout { .. } => ClientErrorKind::Timeout,
            ClientError::Refused { .. }
            | ClientError::Unexpected { .. }
            | ClientError::Encode(_)
            | ClientError::Channel(_) => ClientErrorKind::Refused,
        }
    }
}

type Waiters = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Message>>>>>;

/// A pipelined connection to one node. Cheap to share behind an `Arc`; dropping the last
/// handle closes the connection.
#[derive(Debug)]
pub struct NodeClient {
    out: mpsc::UnboundedSender<Vec<u8>>,
    waiters: Waiters,
    next_id: AtomicU64,
    hello: HelloAck,
    timeout: Duration,
    encrypted: bool,
    tofu: bool,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for NodeClient {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

fn lock(w: &Waiters) -> std::sync::MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<Message>>>> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

impl NodeClient {
    /// Connects, sends the hello and waits for the node's answer.
    pub async fn connect(addr: &str, opts: &NodeOptions) -> Result<NodeClient, ClientError> {
        let stream = tokio::time::timeout(opts.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout {
                op: "connect",
                timeout: opts.timeout,
            })?
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        stream.set_nodelay(true).ok();
        NodeClient::connect_over(stream, opts).await
    }

    /// Runs the protocol over an already connected byte stream (a Tor stream, a test pipe):
    /// hello, the encrypted channel's handshake unless plaintext is asked for, then requests.
    pub async fn connect_over<S>(stream: S, opts: &NodeOptions) -> Result<NodeClient, ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let timeout = opts.timeout;
        let hello_msg = Message::Hello(tarn_proto::msg::Hello {
            version: tarn_proto::PROTOCOL_VERSION,
            network: opts.network,
            epoch_len_secs: opts.epoch_len_secs,
        });
        let mut buf = Vec::new();
        let mut decoder = Decoder::new();
        let (pinned, plaintext_hello) = match &opts.channel {
            Channel::Plaintext => (None, true),
            Channel::Encrypted { node_key: Some(k) } => (Some(*k), false),
            Channel::Encrypted { node_key: None } => (None, true),
        };
        let mut hello = None;
        if plaintext_hello {
            let out = frame::encode_to_vec(0, &hello_msg)?;
            let ack = within(timeout, "hello", async {
                send_all(&mut wr, &out)
                    .await
                    .map_err(|_| ClientError::Closed { op: "hello" })?;
                let (kind, id, body) = read_frame(&mut rd, &mut buf, opts.max_frame_bytes).await?;
                decode_as(&mut decoder, kind, id, &body)
            })
            .await?;
            hello = Some(expect_ack(ack)?);
        }
        let mut cipher = None;
        let tofu = matches!(opts.channel, Channel::Encrypted { node_key: None });
        if let Channel::Encrypted { .. } = opts.channel {
            let node_key = pinned
                .or(hello.as_ref().map(|h| h.public_key))
                .expect("a key is pinned or learned");
            let remote = ed25519_dalek::VerifyingKey::from_bytes(&node_key)
                .map_err(|_| {
                    ClientError::Channel("the node key is not a valid ed25519 key".into())
                })?
                .to_montgomery()
                .to_bytes();
            let params: snow::params::NoiseParams = tarn_proto::noise::NOISE_PARAMS
                .parse()
                .map_err(|_| ClientError::Channel("noise parameters".into()))?;
            let mut hs = snow::Builder::new(params)
                .remote_public_key(&remote)
                .build_initiator()
                .map_err(|e| ClientError::Channel(e.to_string()))?;
            let hello_frame = frame::encode_to_vec(0, &hello_msg)?;
            let mut m1 = vec![0u8; hello_frame.len() + 128];
            let n = hs
                .write_message(&hello_frame[frame::HEADER_LEN..], &mut m1)
                .map_err(|e| ClientError::Channel(e.to_string()))?;
            let mut out = Vec::new();
            tarn_proto::noise::raw_frame(
                tarn_proto::noise::KIND_NOISE_HELLO,
                0,
                &m1[..n],
                &mut out,
            );
            let ack = within(timeout, "handshake", async {
                send_all(&mut wr, &out)
                    .await
                    .map_err(|_| ClientError::Closed { op: "handshake" })?;
                let (kind, id, body) = read_frame(&mut rd, &mut buf, opts.max_frame_bytes).await?;
                if kind != tarn_proto::noise::KIND_NOISE_HELLO_ACK {
                    // A plaintext refusal (wrong network, …) or nonsense.
                    return decode_as(&mut decoder, kind, id, &body);
                }
                let mut payload = vec![0u8; body.len()];
                let p = hs.read_message(&body, &mut payload).map_err(|_| {
                    ClientError::Channel("the node's handshake reply does not verify".into())
                })?;
                decode_as(
                    &mut decoder,
                    tarn_proto::Kind::HelloAck as u8,
                    id,
                    &payload[..p],
                )
            })
            .await?;
            let ack = expect_ack(ack)?;
            if ack.public_key != node_key {
                return Err(ClientError::Channel(
                    "the node presented another key than the one it proved".into(),
                ));
            }
            hello = Some(ack);
            cipher = Some(Arc::new(
                hs.into_stateless_transport_mode()
                    .map_err(|e| ClientError::Channel(e.to_string()))?,
            ));
        }
        let hello = hello.expect("a hello was exchanged");

        let waiters: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
        let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let write_timeout = opts.timeout;
        let writer_waiters = waiters.clone();
        let write_cipher = cipher.clone();
        let writer = tokio::spawn(async move {
            let mut nonce = 0u64;
            while let Some(first) = out_rx.recv().await {
                let mut batch = first;
                while let Ok(more) = out_rx.try_recv() {
                    batch.extend_from_slice(&more);
                }
                if let Some(c) = &write_cipher {
                    let mut sealed = Vec::with_capacity(batch.len() + 64);
                    for chunk in batch.chunks(tarn_proto::noise::MAX_NOISE_PLAINTEXT) {
                        let at = tarn_proto::noise::begin_data_frame(&mut sealed);
                        sealed.resize(at + chunk.len() + tarn_proto::noise::NOISE_TAG, 0);
                        let Ok(n) = c.write_message(nonce, chunk, &mut sealed[at..]) else {
                            break;
                        };
                        nonce += 1;
                        sealed.truncate(at + n);
                        tarn_proto::noise::finish_data_frame(&mut sealed, at);
                    }
                    batch = sealed;
                }
                // A node that stops reading must not make us queue without bound.
                match tokio::time::timeout(write_timeout, send_all(&mut wr, &batch)).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            // The connection is unusable: fail every waiter now, and later requests at once.
            lock(&writer_waiters).take();
        });
        let reader = tokio::spawn(read_loop(
            rd,
            buf,
            waiters.clone(),
            opts.max_frame_bytes,
            cipher.clone(),
        ));
        Ok(NodeClient {
            out,
            waiters,
            next_id: AtomicU64::new(1),
            hello,
            timeout: opts.timeout,
            encrypted: cipher.is_some(),
            tofu: tofu && cipher.is_some(),
            reader,
            writer,
        })
    }

    /// Whether the connection has ended (closed by the node, a dead circuit, a write that
    /// timed out): every request fails at once; dial again.
    pub fn is_closed(&self) -> bool {
        lock(&self.waiters).is_none()
    }

    /// Whether requests travel over the encrypted channel.
    pub fn encrypted(&self) -> bool {
        self.encrypted
    }

    /// Whether the node's key was taken from its own hello (trust on first use).
    pub fn trusted_on_first_use(&self) -> bool {
        self.tofu
    }

    /// The node's answer to our hello (its id, public key, epoch length, limits).
    pub fn hello(&self) -> &HelloAck {
        &self.hello
    }

    /// Sends one request and waits for its reply.
    pub async fn request(&self, op: &'static str, msg: &Message) -> Result<Message, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = frame::encode_to_vec(id, msg)?;
        let (tx, rx) = oneshot::channel();
        match lock(&self.waiters).as_mut() {
            Some(w) => {
                w.insert(id, tx);
            }
            None => return Err(ClientError::Closed { op }),
        }
        // Removes the waiter however this future ends (reply, timeout, or the caller dropping it).
        let _guard = WaiterGuard {
            waiters: &self.waiters,
            id,
        };
        if self.out.send(bytes).is_err() {
            return Err(ClientError::Closed { op });
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Message::Error(e))) => Err(ClientError::Refused {
                op,
                code: e.code,
                detail: e.detail,
            }),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(ClientError::Closed { op }),
            Err(_) => Err(ClientError::Timeout {
                op,
                timeout: self.timeout,
            }),
        }
    }

    /// INSERT.
    pub async fn insert(
        &self,
        epoch: Epoch,
        key: Key,
        value: Vec<u8>,
    ) -> Result<InsertReply, ClientError> {
        match self
            .request("insert", &Message::Insert(Insert { epoch, key, value }))
            .await?
        {
            Message::InsertReply(r) => Ok(r),
            other => Err(ClientError::Unexpected {
                op: "insert",
                got: other.kind(),
            }),
        }
    }

    /// RETRIEVE.
    pub async fn retrieve(&self, epoch: Epoch, key: Key) -> Result<RetrieveReply, ClientError> {
        match self
            .request("retrieve", &Message::Retrieve(Retrieve { epoch, key }))
            .await?
        {
            Message::RetrieveReply(r) => Ok(r),
            other => Err(ClientError::Unexpected {
                op: "retrieve",
                got: other.kind(),
            }),
        }
    }

    /// TIME_SYNC.
    pub async fn time(&self) -> Result<TimeReply, ClientError> {
        match self.request("time_sync", &Message::TimeSync).await? {
            Message::TimeReply(r) => Ok(r),
            other => Err(ClientError::Unexpected {
                op: "time_sync",
                got: other.kind(),
            }),
        }
    }

    /// NODE_LIST.
    pub async fn node_list(&self, max: u32) -> Result<NodeListReply, ClientError> {
        match self
            .request("node_list", &Message::NodeList(NodeListRequest { max }))
            .await?
        {
            Message::NodeListReply(r) => Ok(r),
            other => Err(ClientError::Unexpected {
                op: "node_list",
                got: other.kind(),
            }),
        }
    }

    /// STATUS (operator request).
    pub async fn status(&self) -> Result<StatusReply, ClientError> {
        match self.request("status", &Message::Status).await? {
            Message::StatusReply(r) => Ok(r),
            other => Err(ClientError::Unexpected {
                op: "status",
                got: other.kind(),
            }),
        }
    }

    /// RING_INFO (operator request): the node's predecessor and successor list.
    pub async fn ring_info(&self) -> Result<tarn_proto::msg::RingInfoReply, ClientError> {
        match self.request("ring_info", &Message::RingInfo).await? {
            Message::RingInfoReply(r) => Ok(r),
            other => Err(ClientError::Unexpected {
                op: "ring_info",
                got: other.kind(),
            }),
        }
    }

    /// LOOKUP (operator request): the responsible node for `target` and the route taken.
    pub async fn lookup(
        &self,
        target: tarn_proto::Id,
    ) -> Result<tarn_proto::msg::LookupReply, ClientError> {
        let req = Message::Lookup(tarn_proto::msg::LookupRequest { target });
        match self.request("lookup", &req).await? {
            Message::LookupReply(r) => Ok(r),
            other => Err(ClientError::Unexpected {
                op: "lookup",
                got: other.kind(),
            }),
        }
    }
}

struct WaiterGuard<'a> {
    waiters: &'a Waiters,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if let Some(w) = lock(self.waiters).as_mut() {
            w.remove(&self.id);
        }
    }
}

async fn read_loop<R: tokio::io::AsyncRead + Unpin>(
    mut rd: R,
    pending: Vec<u8>,
    waiters: Waiters,
    max: u32,
    cipher: Option<Arc<snow::StatelessTransportState>>,
) {
    let mut decoder = Decoder::new();
    let mut start = 0;
    let mut nonce = 0u64;
    // With the encrypted channel, `raw` collects ciphertext frames and `buf` their plaintext.
    let mut raw = Vec::new();
    let mut buf = Vec::new();
    if cipher.is_some() {
        raw = pending;
    } else {
        buf = pending;
    }
    'outer: loop {
        if let Some(c) = &cipher {
            let mut used = 0;
            loop {
                match frame::parse_frame(&raw[used..], tarn_proto::noise::MAX_NOISE_MESSAGE as u32)
                {
                    Ok(Parsed::Frame(f)) if f.header.kind == tarn_proto::noise::KIND_NOISE_DATA => {
                        let old = buf.len();
                        buf.resize(old + f.body.len(), 0);
                        match c.read_message(nonce, f.body, &mut buf[old..]) {
                            Ok(n) => buf.truncate(old + n),
                            Err(_) => break 'outer,
                        }
                        nonce += 1;
                        used += f.wire_len();
                    }
                    Ok(Parsed::Incomplete { .. }) => break,
                    // A plaintext frame here is the node refusing the channel; either way the
                    // connection is over.
                    _ => break 'outer,
                }
            }
            raw.drain(..used);
        }
        loop {
            match frame::parse_frame(&buf[start..], max) {
                Ok(Parsed::Frame(f)) => {
                    let id = f.header.request_id;
                    let len = f.wire_len();
                    let decoded = decoder.decode(&f);
                    start += len;
                    let Ok(msg) = decoded else { break 'outer };
                    // A fatal error reply (id 0 or unknown) ends the connection for everyone.
                    let waiter = lock(&waiters).as_mut().and_then(|w| w.remove(&id));
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(msg);
                        }
                        None => {
                            if let Message::Error(e) = msg {
                                if e.code.is_fatal() {
                                    break 'outer;
                                }
                            }
                        }
                    }
                }
                Ok(Parsed::Incomplete { .. }) => break,
                Err(_) => break 'outer,
            }
        }
        buf.drain(..start);
        start = 0;
        let target = if cipher.is_some() { &mut raw } else { &mut buf };
        let old = target.len();
        target.resize(old + 16 * 1024, 0);
        match rd.read(&mut target[old..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => target.truncate(old + n),
        }
    }
    // Dropping the senders fails every waiter with Closed.
    lock(&waiters).take();
}

/// Writes `bytes` and flushes: streams that buffer (Tor's cells) only send on flush.
async fn send_all<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

async fn within<T>(
    timeout: Duration,
    op: &'static str,
    f: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| ClientError::Timeout { op, timeout })?
}

/// Reads exactly one frame; bytes after it stay in `buf`.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    max: u32,
) -> Result<(u8, u64, Vec<u8>), ClientError> {
    loop {
        match frame::parse_frame(buf, max.max(tarn_proto::noise::MAX_NOISE_MESSAGE as u32)) {
            Ok(Parsed::Frame(f)) => {
                let out = (f.header.kind, f.header.request_id, f.body.to_vec());
                let len = f.wire_len();
                buf.drain(..len);
                return Ok(out);
            }
            Ok(Parsed::Incomplete { .. }) => {}
            Err(_) => return Err(ClientError::Closed { op: "hello" }),
        }
        let mut chunk = [0u8; 4096];
        let n = rd
            .read(&mut chunk)
            .await
            .map_err(|_| ClientError::Closed { op: "hello" })?;
        if n == 0 {
            return Err(ClientError::Closed { op: "hello" });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn decode_as(
    decoder: &mut Decoder,
    kind: u8,
    id: u64,
    body: &[u8],
) -> Result<Message, ClientError> {
    let header = frame::Header {
        body_len: body.len() as u32,
        version: tarn_proto::PROTOCOL_VERSION,
        kind,
        request_id: id,
    };
    decoder
        .decode(&frame::RawFrame { header, body })
        .map_err(|_| ClientError::Closed { op: "hello" })
}

fn expect_ack(msg: Message) -> Result<HelloAck, ClientError> {
    match msg {
        Message::HelloAck(a) => Ok(a),
        Message::Error(e) => Err(ClientError::Refused {
            op: "hello",
            code: e.code,
            detail: e.detail,
        }),
        other => Err(ClientError::Unexpected {
            op: "hello",
            got: other.kind(),
        }),
    }
}
