//! Chord-to-Chord messages (kinds `0x40..=0x7f` on the wire), shared by the sans-IO ring state
//! machine (tarn-ring), the simulator and the daemon.
//!
//! The maintenance protocol is Zave's correct Chord: a node asks its successor for its state
//! (`GetState`), adopts the successor's predecessor only if that node answers, and tells its
//! successor about itself with `Rectify` (which replaces Chord's `notify`). Lookups are
//! iterative: the asking node sends `FindStep` to one node at a time and decides where to go
//! next from the answer.

use crate::Id;

/// A ring member: its id and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeRef {
    /// Ring id (BLAKE3 of the node's public key).
    pub id: Id,
    /// Address (`host:port` for tarnd, a name in the simulator).
    pub addr: String,
}

/// A request from one ring member to another.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RingRequest {
    /// "Tell me your predecessor and successor list."
    GetState,
    /// "I believe I am your predecessor" (Zave's rectify).
    Rectify(NodeRef),
    /// Liveness probe.
    Ping,
    /// One hop of an iterative lookup for the successor of `target`.
    FindStep {
        /// The id looked up.
        target: Id,
    },
}

/// A reply to a [`RingRequest`].
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RingResponse {
    /// Answer to `GetState`.
    State {
        /// The responder.
        me: NodeRef,
        /// Its predecessor, if it has one.
        pred: Option<NodeRef>,
        /// Its successor list (never containing itself).
        succs: Vec<NodeRef>,
    },
    /// Answer to `Rectify`.
    Ack,
    /// Answer to `Ping`.
    Pong,
    /// The target's successor is the first of `succs` (the rest follow it on the ring).
    Found {
        /// The responsible node and its successors.
        succs: Vec<NodeRef>,
    },
    /// Ask one of these next, best first (each precedes the target, closest first).
    Closer {
        /// Candidates.
        candidates: Vec<NodeRef>,
    },
}

/// A Chord-to-Chord message.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RingMessage {
    /// A request; the reply carries the same `rpc` id.
    Request {
        /// Id chosen by the sender, echoed in the response.
        rpc: u64,
        /// The sender (so the receiver can answer and learn about it).
        from: NodeRef,
        /// The request.
        body: RingRequest,
    },
    /// A response.
    Response {
        /// The request's id.
        rpc: u64,
        /// The responder.
        from: NodeRef,
        /// The response.
        body: RingResponse,
    },
}
