//! Message bodies of the Client-to-Chord protocol (seed §6, Table 1) and the connection hello.
//!
//! Each message travels as one frame whose header names its [`Kind`]; the body is the rkyv
//! archive of the struct for that kind. Kinds `0x40..=0x7f` are reserved for the Chord-to-Chord
//! protocol of the ring.

use crate::{Epoch, Id, Key};

/// The protocol version carried in every frame header and hello.
pub const PROTOCOL_VERSION: u8 = 1;

/// A network's identity: BLAKE3 of its name, so nodes and clients of different networks refuse
/// each other at the hello.
#[derive(Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct NetworkId(pub [u8; 32]);

impl NetworkId {
    /// The id of the network called `name`.
    pub fn from_name(name: &str) -> NetworkId {
        NetworkId(blake3::derive_key("tarn network id v1", name.as_bytes()))
    }
}

impl std::fmt::Debug for NetworkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NetworkId({})", Id(self.0).short())
    }
}

/// The message kind in a frame header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum Kind {
    /// Client to node: first frame of every connection.
    Hello = 0x01,
    /// Node to client: answer to [`Kind::Hello`].
    HelloAck = 0x02,
    /// Store a value under (epoch, key).
    Insert = 0x10,
    /// Fetch the values under (epoch, key).
    Retrieve = 0x11,
    /// Ask for the node's disciplined time.
    TimeSync = 0x12,
    /// Ask for a sample of live nodes.
    NodeList = 0x13,
    /// Operator: ask for the node's status.
    Status = 0x14,
    /// Operator: ask for the node's ring neighbourhood.
    RingInfo = 0x15,
    /// Operator: look up the node responsible for an id, with the route taken.
    Lookup = 0x16,
    /// Reply to [`Kind::Insert`].
    InsertReply = 0x20,
    /// Reply to [`Kind::Retrieve`].
    RetrieveReply = 0x21,
    /// Reply to [`Kind::TimeSync`].
    TimeReply = 0x22,
    /// Reply to [`Kind::NodeList`].
    NodeListReply = 0x23,
    /// Reply to [`Kind::Status`].
    StatusReply = 0x24,
    /// Reply to [`Kind::RingInfo`].
    RingInfoReply = 0x25,
    /// Reply to [`Kind::Lookup`].
    LookupReply = 0x26,
    /// A request could not be handled at the protocol level (bad body, unknown kind, …).
    Error = 0x2f,
}

impl Kind {
    /// The kind for a header byte, if it names one.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0x01 => Kind::Hello,
            0x02 => Kind::HelloAck,
            0x10 => Kind::Insert,
            0x11 => Kind::Retrieve,
            0x12 => Kind::TimeSync,
            0x13 => Kind::NodeList,
            0x14 => Kind::Status,
            0x15 => Kind::RingInfo,
            0x16 => Kind::Lookup,
            0x20 => Kind::InsertReply,
            0x21 => Kind::RetrieveReply,
            0x22 => Kind::TimeReply,
            0x23 => Kind::NodeListReply,
            0x24 => Kind::StatusReply,
            0x25 => Kind::RingInfoReply,
            0x26 => Kind::LookupReply,
            0x2f => Kind::Error,
            _ => return None,
        })
    }

    /// Whether kind byte `b` is in the range reserved for the Chord-to-Chord protocol.
    pub fn is_ring_reserved(b: u8) -> bool {
        (0x40..=0x7f).contains(&b)
    }
}

/// First frame a client sends.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub version: u8,
    /// Network the client wants to talk to.
    pub network: NetworkId,
    /// The epoch length the client assumes, or 0 to learn it from the reply.
    pub epoch_len_secs: u64,
}

/// The node's answer to a [`Hello`] it accepts.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct HelloAck {
    /// Protocol version the node speaks.
    pub version: u8,
    /// The node's network.
    pub network: NetworkId,
    /// The network's epoch length.
    pub epoch_len_secs: u64,
    /// The node's ring id (BLAKE3 of `public_key`).
    pub node_id: Id,
    /// The node's ed25519 public key.
    pub public_key: [u8; 32],
    /// Largest frame body the node accepts.
    pub max_frame_bytes: u32,
}

/// INSERT: store `value` under `(epoch, key)`.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Insert {
    /// Epoch the record belongs to; must be within `[now - 1, now + 1]` at the node.
    pub epoch: Epoch,
    /// Record key.
    pub key: Key,
    /// Opaque sealed value.
    pub value: Vec<u8>,
}

/// RETRIEVE: fetch the values under `(epoch, key)`.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Retrieve {
    /// Epoch to look in.
    pub epoch: Epoch,
    /// Record key.
    pub key: Key,
}

/// NODE_LIST: ask for at most `max` live nodes.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeListRequest {
    /// Upper bound on the entries returned.
    pub max: u32,
}

/// Why an INSERT or RETRIEVE failed. Typed so clients can decide whether another node may do
/// better (seed §6.2 step 9: on FAILED, the client contacts another node).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum FailCause {
    /// The node is not responsible for the key and could not route it.
    NotInRange,
    /// The value exceeds the node's `max_value_bytes`.
    TooLarge {
        /// The limit in bytes.
        max: u32,
    },
    /// The key holds its maximum of values and the policy refuses more. The default policy
    /// evicts instead, so tarnd does not produce this cause today.
    KeyFull,
    /// The node's total-bytes quota is exhausted.
    OverQuota,
    /// The epoch is outside the node's client window `[now - 1, now + 1]`.
    EpochOutOfWindow {
        /// The node's current epoch.
        now: Epoch,
    },
    /// The node sheds load; try another node or later.
    Overloaded,
    /// Something inside the node failed (storage error); details are in its logs.
    Internal,
    /// Fewer copies than the write quorum could be written (or the responsible node could not
    /// be reached); some copies may exist. Retry, through another node if it persists.
    Unavailable {
        /// Copies written.
        copies: u8,
    },
}

impl std::fmt::Display for FailCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailCause::NotInRange => f.write_str("not in range"),
            FailCause::TooLarge { max } => write!(f, "value too large (max {max} bytes)"),
            FailCause::KeyFull => f.write_str("key full"),
            FailCause::OverQuota => f.write_str("over quota"),
            FailCause::EpochOutOfWindow { now } => {
                write!(f, "epoch out of window (node epoch {now})")
            }
            FailCause::Overloaded => f.write_str("overloaded"),
            FailCause::Internal => f.write_str("internal error"),
            FailCause::Unavailable { copies } => {
                write!(f, "unavailable (only {copies} copies written)")
            }
        }
    }
}

/// Reply to INSERT.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum InsertReply {
    /// Stored durably per the node's WAL policy, on `copies` replicas.
    Stored {
        /// How many copies were written before the reply.
        copies: u8,
    },
    /// Not stored.
    Failed(FailCause),
}

/// Reply to RETRIEVE. [`RetrieveReplyRef`] mirrors its variants in this order.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RetrieveReply {
    /// The values under the key, newest order first.
    Found(Vec<Vec<u8>>),
    /// Nothing is stored under the key.
    NotFound,
    /// The lookup failed.
    Failed(FailCause),
}

/// A [`RetrieveReply`] whose values are borrowed from where they are held, archived to exactly
/// the same bytes: a node encodes its reply straight from its store
/// ([`crate::frame::encode_retrieve_reply`]) instead of copying every value into a vector of
/// its own first.
#[derive(Debug, rkyv::Archive, rkyv::Serialize)]
#[rkyv(as = ArchivedRetrieveReply)]
pub enum RetrieveReplyRef<'a> {
    /// See [`RetrieveReply::Found`].
    Found(Vec<ValueRef<'a>>),
    /// See [`RetrieveReply::NotFound`].
    NotFound,
    /// See [`RetrieveReply::Failed`].
    Failed(FailCause),
}

/// A value borrowed from where it is held, archived as the `Vec<u8>` of its owned form.
#[derive(Clone, Copy, Debug)]
pub struct ValueRef<'a>(pub &'a [u8]);

impl rkyv::Archive for ValueRef<'_> {
    type Archived = rkyv::vec::ArchivedVec<u8>;
    type Resolver = rkyv::vec::VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        rkyv::vec::ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<S> rkyv::Serialize<S> for ValueRef<'_>
where
    S: rkyv::rancor::Fallible + rkyv::ser::Allocator + rkyv::ser::Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        rkyv::vec::ArchivedVec::serialize_from_slice(self.0, serializer)
    }
}

/// Reply to TIME_SYNC (seed §6.3).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TimeReply {
    /// Nanoseconds since the Unix epoch from the node's disciplined clock.
    pub unix_ns: u64,
    /// The node's estimate of its error, in nanoseconds.
    pub uncertainty_ns: u64,
    /// The network's epoch length.
    pub epoch_len_secs: u64,
    /// Whether the time comes from NTP servers (true) or the bare system clock (false).
    pub ntp_synced: bool,
}

/// One entry of a NODE_LIST reply.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeInfo {
    /// The node's ring id.
    pub id: Id,
    /// The node's ed25519 public key (clients pin it for the encrypted channel).
    pub public_key: [u8; 32],
    /// Where clients reach it, `host:port`.
    pub address: String,
}

/// Reply to NODE_LIST.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeListReply {
    /// A sample of live nodes.
    pub nodes: Vec<NodeInfo>,
}

/// Per-epoch storage figures in a status reply.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EpochStat {
    /// The epoch.
    pub epoch: Epoch,
    /// Values accepted into this epoch (an upper bound: duplicates and evictions are counted).
    pub records: u64,
    /// Value bytes accepted into this epoch (same caveat).
    pub bytes: u64,
}

/// Reply to RING_INFO (an operator request): the node's view of its neighbourhood.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RingInfoReply {
    /// The node itself.
    pub me: NodeInfo,
    /// Whether it is a ring member (bootstrapped or joined).
    pub member: bool,
    /// Its predecessor, if known.
    pub predecessor: Option<NodeInfo>,
    /// Its successor list, nearest first. Public keys not yet proven by a handshake are zero.
    pub successors: Vec<NodeInfo>,
    /// Copies kept of every record.
    pub replicas: u8,
    /// Successor list length `r` (a healthy list holds `min(r, members - 1)` entries).
    pub succ_list_len: u8,
}

/// LOOKUP (an operator request): find the node responsible for `target`.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LookupRequest {
    /// The id looked up (a key's ring position).
    pub target: Id,
}

/// Reply to LOOKUP.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LookupReply {
    /// Nodes asked, in order (the first is the node that answered the request itself).
    pub route: Vec<NodeInfo>,
    /// The responsible node and its successors (the replica set first), or empty on failure.
    pub found: Vec<NodeInfo>,
}

/// Reply to STATUS (an operator request).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StatusReply {
    /// The node's ring id.
    pub node_id: Id,
    /// tarnd's version.
    pub version: String,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// The network's epoch length.
    pub epoch_len_secs: u64,
    /// The node's current epoch.
    pub now_epoch: Epoch,
    /// Offset of the disciplined clock from the system clock, in nanoseconds.
    pub time_offset_ns: i64,
    /// Whether NTP servers discipline the clock.
    pub ntp_synced: bool,
    /// Executors serving requests.
    pub cores: u32,
    /// Storage per live epoch, oldest first.
    pub epochs: Vec<EpochStat>,
}

/// Protocol-level error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum ErrorCode {
    /// The header's version is not [`PROTOCOL_VERSION`]. Fatal.
    UnsupportedVersion,
    /// The header announces a body above the node's limit. Fatal.
    FrameTooLarge,
    /// The header's kind names no message this peer accepts.
    UnknownKind,
    /// The body is not a valid archive for its kind.
    InvalidBody,
    /// A request arrived before the hello. Fatal.
    HelloRequired,
    /// The hello names another network. Fatal.
    NetworkMismatch,
    /// The hello names another epoch length. Fatal.
    EpochLenMismatch,
    /// The node refuses the connection (connection limit). Fatal.
    Overloaded,
    /// The frame was not completed within the node's frame deadline. Fatal.
    Timeout,
    /// The node serves this client only over the encrypted channel. Fatal.
    EncryptionRequired,
    /// The encrypted channel's handshake or a ciphertext failed. Fatal.
    HandshakeFailed,
}

impl ErrorCode {
    /// Whether the node closes the connection after sending this error.
    pub fn is_fatal(self) -> bool {
        !matches!(self, ErrorCode::UnknownKind | ErrorCode::InvalidBody)
    }
}

/// A protocol-level error reply; carries the id of the frame it answers.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ErrorReply {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail; never contains keys, values or addresses.
    pub detail: String,
}

/// Every message of the protocol, one variant per [`Kind`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`HelloAck`].
    HelloAck(HelloAck),
    /// See [`Insert`].
    Insert(Insert),
    /// See [`Retrieve`].
    Retrieve(Retrieve),
    /// TIME_SYNC has no body.
    TimeSync,
    /// See [`NodeListRequest`].
    NodeList(NodeListRequest),
    /// STATUS has no body.
    Status,
    /// See [`InsertReply`].
    InsertReply(InsertReply),
    /// See [`RetrieveReply`].
    RetrieveReply(RetrieveReply),
    /// See [`TimeReply`].
    TimeReply(TimeReply),
    /// See [`NodeListReply`].
    NodeListReply(NodeListReply),
    /// See [`StatusReply`].
    StatusReply(StatusReply),
    /// RING_INFO has no body.
    RingInfo,
    /// See [`LookupRequest`].
    Lookup(LookupRequest),
    /// See [`RingInfoReply`].
    RingInfoReply(RingInfoReply),
    /// See [`LookupReply`].
    LookupReply(LookupReply),
    /// See [`ErrorReply`].
    Error(ErrorReply),
}

impl Message {
    /// The kind that goes in this message's frame header.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::HelloAck(_) => Kind::HelloAck,
            Message::Insert(_) => Kind::Insert,
            Message::Retrieve(_) => Kind::Retrieve,
            Message::TimeSync => Kind::TimeSync,
            Message::NodeList(_) => Kind::NodeList,
            Message::Status => Kind::Status,
            Message::InsertReply(_) => Kind::InsertReply,
            Message::RetrieveReply(_) => Kind::RetrieveReply,
            Message::TimeReply(_) => Kind::TimeReply,
            Message::NodeListReply(_) => Kind::NodeListReply,
            Message::StatusReply(_) => Kind::StatusReply,
            Message::RingInfo => Kind::RingInfo,
            Message::Lookup(_) => Kind::Lookup,
            Message::RingInfoReply(_) => Kind::RingInfoReply,
            Message::LookupReply(_) => Kind::LookupReply,
            Message::Error(_) => Kind::Error,
        }
    }

    /// Shorthand for an error reply.
    pub fn error(code: ErrorCode, detail: impl Into<String>) -> Message {
        Message::Error(ErrorReply {
            code,
            detail: detail.into(),
        })
    }
}
