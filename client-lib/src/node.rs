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
}

impl Default for NodeOptions {
    fn default() -> NodeOptions {
        NodeOptions {
            network: NetworkId::from_name("tarn-dev"),
            epoch_len_secs: 0,
            timeout: Duration::from_secs(10),
            max_frame_bytes: 1 << 20,
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
            | ClientError::Encode(_) => ClientErrorKind::Refused,
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
        let (mut rd, mut wr) = stream.into_split();

        let hello = Message::Hello(tarn_proto::msg::Hello {
            version: tarn_proto::PROTOCOL_VERSION,
            network: opts.network,
            epoch_len_secs: opts.epoch_len_secs,
        });
        let mut buf = frame::encode_to_vec(0, &hello)?;
        let closed = |_| ClientError::Closed { op: "hello" };
        tokio::time::timeout(opts.timeout, wr.write_all(&buf))
            .await
            .map_err(|_| ClientError::Timeout {
                op: "hello",
                timeout: opts.timeout,
            })?
            .map_err(closed)?;

        // Read exactly the hello reply; anything after it stays in `buf` for the reader task.
        buf.clear();
        let mut decoder = Decoder::new();
        let ack = tokio::time::timeout(opts.timeout, async {
            loop {
                match frame::parse_frame(&buf, opts.max_frame_bytes) {
                    Ok(Parsed::Frame(f)) => {
                        let len = f.wire_len();
                        let msg = decoder
                            .decode(&f)
                            .map_err(|_| ClientError::Closed { op: "hello" })?;
                        buf.drain(..len);
                        return Ok(msg);
                    }
                    Ok(Parsed::Incomplete { .. }) => {}
                    Err(_) => return Err(ClientError::Closed { op: "hello" }),
                }
                let mut chunk = [0u8; 4096];
                let n = rd.read(&mut chunk).await.map_err(closed)?;
                if n == 0 {
                    return Err(ClientError::Closed { op: "hello" });
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .map_err(|_| ClientError::Timeout {
            op: "hello",
            timeout: opts.timeout,
        })??;
        let hello = match ack {
            Message::HelloAck(a) => a,
            Message::Error(e) => {
                return Err(ClientError::Refused {
                    op: "hello",
                    code: e.code,
                    detail: e.detail,
                })
            }
            other => {
                return Err(ClientError::Unexpected {
                    op: "hello",
                    got: other.kind(),
                })
            }
        };

        let waiters: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
        let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let write_timeout = opts.timeout;
        let writer_waiters = waiters.clone();
        let writer = tokio::spawn(async move {
            while let Some(first) = out_rx.recv().await {
                let mut batch = first;
                while let Ok(more) = out_rx.try_recv() {
                    batch.extend_from_slice(&more);
                }
                // A node that stops reading must not make us queue without bound.
                match tokio::time::timeout(write_timeout, wr.write_all(&batch)).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            // The connection is unusable: fail every waiter now, and later requests at once.
            lock(&writer_waiters).take();
        });
        let reader = tokio::spawn(read_loop(rd, buf, waiters.clone(), opts.max_frame_bytes));
        Ok(NodeClient {
            out,
            waiters,
            next_id: AtomicU64::new(1),
            hello,
            timeout: opts.timeout,
            reader,
            writer,
        })
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

async fn read_loop(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut buf: Vec<u8>,
    waiters: Waiters,
    max: u32,
) {
    let mut decoder = Decoder::new();
    let mut start = 0;
    'outer: loop {
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
        let old = buf.len();
        buf.resize(old + 16 * 1024, 0);
        match rd.read(&mut buf[old..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.truncate(old + n),
        }
    }
    // Dropping the senders fails every waiter with Closed.
    lock(&waiters).take();
}
