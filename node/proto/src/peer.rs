//! Node-to-node framing (frame kinds `0x40..=0x7f`): the authenticated peer handshake, ring
//! maintenance messages and the data plane (forwarded inserts, replication, reads, lookup
//! hops answered from a routing snapshot, anti-entropy offers).
//!
//! A link starts with a mutual challenge: the dialer sends [`PeerHello`] with a fresh nonce,
//! the listener answers [`PeerChallenge`] (its own nonce, a signature over both nonces and both
//! identities, and a MAC under the network secret), the dialer answers [`PeerAuth`] the same
//! way, and the listener confirms with [`PeerMessage::Ready`]. Fresh nonces on both sides make
//! a recorded handshake useless for a replay; the MAC keeps nodes without the network secret
//! out of a private ring.

use rkyv::rancor;

use crate::frame::{archive, BodyError, EncodeError, RawFrame, HEADER_LEN};
use crate::msg::{Kind, NetworkId, PROTOCOL_VERSION};
use crate::ring::{NodeRef, RingMessage, RingResponse};
use crate::{Epoch, Id, Key};

/// Frame kinds of the node-to-node protocol.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum PeerKind {
    /// Dialer's first frame.
    Hello = 0x40,
    /// Listener's answer: its identity, nonce and proof.
    Challenge = 0x41,
    /// Dialer's proof.
    Auth = 0x42,
    /// The listener accepted the link.
    Ready = 0x43,
    /// The handshake failed; the link closes.
    Refused = 0x44,
    /// A ring maintenance message (one-way; replies travel as messages of their own).
    Ring = 0x48,
    /// A data-plane request.
    Request = 0x49,
    /// A data-plane response (same request id).
    Response = 0x4a,
}

impl PeerKind {
    /// The kind for a header byte, if it names one.
    pub fn from_u8(b: u8) -> Option<PeerKind> {
        Some(match b {
            0x40 => PeerKind::Hello,
            0x41 => PeerKind::Challenge,
            0x42 => PeerKind::Auth,
            0x43 => PeerKind::Ready,
            0x44 => PeerKind::Refused,
            0x48 => PeerKind::Ring,
            0x49 => PeerKind::Request,
            0x4a => PeerKind::Response,
            _ => return None,
        })
    }
}

/// Dialer's hello.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PeerHello {
    /// Protocol version.
    pub version: u8,
    /// The dialer's network.
    pub network: NetworkId,
    /// The dialer's epoch length; peers that differ are refused.
    pub epoch_len_secs: u64,
    /// The dialer's ring identity (id = BLAKE3 of `public_key`).
    pub node: NodeRef,
    /// The dialer's ed25519 public key.
    pub public_key: [u8; 32],
    /// Fresh random nonce.
    pub nonce: [u8; 32],
}

/// Listener's challenge and proof.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PeerChallenge {
    /// The listener's ring identity.
    pub node: NodeRef,
    /// The listener's ed25519 public key.
    pub public_key: [u8; 32],
    /// Fresh random nonce.
    pub nonce: [u8; 32],
    /// ed25519 signature over [`transcript`] with role `b"listener"`.
    pub signature: Vec<u8>,
    /// Keyed BLAKE3 of the same transcript under the network secret's key (zeros without one).
    pub mac: [u8; 32],
}

/// Dialer's proof.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PeerAuth {
    /// ed25519 signature over [`transcript`] with role `b"dialer"`.
    pub signature: Vec<u8>,
    /// Keyed BLAKE3 of the same transcript under the network secret's key (zeros without one).
    pub mac: [u8; 32],
}

/// What the handshake signs: both nonces, both identities and the network, bound to a role
/// so one side's proof cannot be reflected as the other's.
pub fn transcript(
    role: &[u8],
    network: &NetworkId,
    dialer: &[u8; 32],
    dialer_nonce: &[u8; 32],
    listener: &[u8; 32],
    listener_nonce: &[u8; 32],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("tarn peer handshake v1");
    h.update(role);
    h.update(&network.0);
    h.update(dialer);
    h.update(dialer_nonce);
    h.update(listener);
    h.update(listener_nonce);
    *h.finalize().as_bytes()
}

/// The MAC key for a network secret (an empty secret means none).
pub fn secret_key(secret: &str) -> Option<[u8; 32]> {
    (!secret.is_empty()).then(|| blake3::derive_key("tarn network secret v1", secret.as_bytes()))
}

/// MAC of a transcript under a network secret key; zeros without a secret.
pub fn transcript_mac(key: Option<&[u8; 32]>, transcript: &[u8; 32]) -> [u8; 32] {
    match key {
        Some(k) => *blake3::keyed_hash(k, transcript).as_bytes(),
        None => [0; 32],
    }
}

/// One stored value as it travels between replicas: the responsible node's order stamp goes
/// with it, so every replica keeps the same set.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Record {
    /// Its epoch.
    pub epoch: Epoch,
    /// Its key.
    pub key: Key,
    /// The responsible node's order stamp.
    pub stamp: u64,
    /// The sealed value.
    pub value: Vec<u8>,
}

/// One key's digest in an anti-entropy offer.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct KeyDigest {
    /// The key.
    pub key: Key,
    /// BLAKE3 over the key's `(stamp, BLAKE3(value))` list, highest order first.
    pub digest: [u8; 32],
}

/// A data-plane request between nodes.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum DataRequest {
    /// Entry node to the responsible node: stamp, store and replicate this value.
    Put {
        /// Epoch.
        epoch: Epoch,
        /// Key.
        key: Key,
        /// Value.
        value: Vec<u8>,
    },
    /// Responsible node (or repair) to a replica: store these stamped values.
    Replicate {
        /// The values.
        records: Vec<Record>,
    },
    /// Read the values under a key.
    Get {
        /// Epoch.
        epoch: Epoch,
        /// Key.
        key: Key,
    },
    /// One lookup hop, answered from the node's routing snapshot.
    Step {
        /// The id looked up.
        target: Id,
    },
    /// Anti-entropy: "these are my keys in `(after, upto]` of `epoch`; which do you lack?"
    Offer {
        /// Epoch.
        epoch: Epoch,
        /// Range start (exclusive).
        after: Id,
        /// Range end (inclusive).
        upto: Id,
        /// Digests of the keys offered.
        keys: Vec<KeyDigest>,
    },
}

/// Why a data-plane request failed.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum DataFailure {
    /// The receiver is not responsible for the key (its view of the ring differs).
    NotResponsible,
    /// The value exceeds the limit.
    TooLarge,
    /// The epoch is not live (or outside the write window).
    Expired,
    /// The quota is exhausted.
    OverQuota,
    /// Fewer copies than the write quorum could be written.
    Quorum {
        /// Copies written.
        copies: u8,
    },
    /// Storage failed at the receiver.
    Internal,
}

/// A data-plane response.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum DataResponse {
    /// `Put` stored with this many copies.
    Stored {
        /// Copies written (the responsible node's included).
        copies: u8,
    },
    /// `Replicate` is durable at the replica (per its WAL policy).
    Replicated,
    /// `Get`: values, highest order first.
    Values {
        /// `(stamp, value)` pairs.
        values: Vec<(u64, Vec<u8>)>,
    },
    /// `Step`: the hop's answer.
    Step(RingResponse),
    /// `Offer`: the keys whose digest differs or that the receiver lacks.
    Want {
        /// Keys to send.
        keys: Vec<Key>,
    },
    /// The request failed.
    Failed(DataFailure),
}

/// A node-to-node message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    /// See [`PeerHello`].
    Hello(PeerHello),
    /// See [`PeerChallenge`].
    Challenge(PeerChallenge),
    /// See [`PeerAuth`].
    Auth(PeerAuth),
    /// The link is up.
    Ready,
    /// The handshake failed, with the reason.
    Refused(String),
    /// See [`RingMessage`].
    Ring(RingMessage),
    /// See [`DataRequest`].
    Request(DataRequest),
    /// See [`DataResponse`].
    Response(DataResponse),
}

impl PeerMessage {
    /// The frame kind of this message.
    pub fn kind(&self) -> PeerKind {
        match self {
            PeerMessage::Hello(_) => PeerKind::Hello,
            PeerMessage::Challenge(_) => PeerKind::Challenge,
            PeerMessage::Auth(_) => PeerKind::Auth,
            PeerMessage::Ready => PeerKind::Ready,
            PeerMessage::Refused(_) => PeerKind::Refused,
            PeerMessage::Ring(_) => PeerKind::Ring,
            PeerMessage::Request(_) => PeerKind::Request,
            PeerMessage::Response(_) => PeerKind::Response,
        }
    }
}

/// Appends the frame for `msg` with `request_id` to `out`.
pub fn encode_peer(
    request_id: u64,
    msg: &PeerMessage,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let body_start = out.len();
    let result = match msg {
        PeerMessage::Hello(m) => archive(m, out),
        PeerMessage::Challenge(m) => archive(m, out),
        PeerMessage::Auth(m) => archive(m, out),
        PeerMessage::Ready => Ok(()),
        PeerMessage::Refused(m) => archive(m, out),
        PeerMessage::Ring(m) => archive(m, out),
        PeerMessage::Request(m) => archive(m, out),
        PeerMessage::Response(m) => archive(m, out),
    };
    let fail = |out: &mut Vec<u8>, reason: String| {
        out.truncate(start);
        Err(EncodeError::Peer {
            kind: msg.kind() as u8,
            reason,
        })
    };
    if let Err(reason) = result {
        return fail(out, reason);
    }
    let body_len = out.len() - body_start;
    let Ok(body_len) = u32::try_from(body_len) else {
        return fail(out, format!("body of {body_len} bytes"));
    };
    let header = &mut out[start..body_start];
    header[0..4].copy_from_slice(&body_len.to_le_bytes());
    header[4] = PROTOCOL_VERSION;
    header[5] = msg.kind() as u8;
    header[6..8].copy_from_slice(&0u16.to_le_bytes());
    header[8..16].copy_from_slice(&request_id.to_le_bytes());
    Ok(())
}

impl crate::Decoder {
    /// Decodes a node-to-node frame, validating the archive first.
    pub fn decode_peer(&mut self, frame: &RawFrame<'_>) -> Result<PeerMessage, BodyError> {
        let b = frame.header.kind;
        let kind = PeerKind::from_u8(b).ok_or(BodyError::UnknownKind(b))?;
        let bytes = self.aligned_body(frame.body);
        let invalid = |reason: String| BodyError::InvalidPeer { kind: b, reason };
        macro_rules! body {
            ($t:ty) => {
                rkyv::from_bytes::<$t, rancor::Error>(bytes).map_err(|e| invalid(e.to_string()))?
            };
        }
        Ok(match kind {
            PeerKind::Hello => PeerMessage::Hello(body!(PeerHello)),
            PeerKind::Challenge => PeerMessage::Challenge(body!(PeerChallenge)),
            PeerKind::Auth => PeerMessage::Auth(body!(PeerAuth)),
            PeerKind::Ready => {
                if !bytes.is_empty() {
                    return Err(invalid("expected an empty body".into()));
                }
                PeerMessage::Ready
            }
            PeerKind::Refused => PeerMessage::Refused(body!(String)),
            PeerKind::Ring => PeerMessage::Ring(body!(RingMessage)),
            PeerKind::Request => PeerMessage::Request(body!(DataRequest)),
            PeerKind::Response => PeerMessage::Response(body!(DataResponse)),
        })
    }
}

/// Whether a frame's kind byte belongs to the node-to-node protocol.
pub fn is_peer_kind(b: u8) -> bool {
    Kind::is_ring_reserved(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{parse_frame, Parsed};

    fn node(n: u8) -> NodeRef {
        NodeRef {
            id: Id([n; 32]),
            addr: format!("127.0.0.{n}:7400"),
        }
    }

    fn roundtrip(m: PeerMessage) {
        let mut buf = Vec::new();
        encode_peer(77, &m, &mut buf).unwrap();
        let Ok(Parsed::Frame(f)) = parse_frame(&buf, 1 << 20) else {
            panic!("frame expected")
        };
        assert_eq!(f.header.request_id, 77);
        assert!(is_peer_kind(f.header.kind));
        assert_eq!(crate::Decoder::new().decode_peer(&f).unwrap(), m);
    }

    #[test]
    fn every_peer_message_roundtrips() {
        roundtrip(PeerMessage::Hello(PeerHello {
            version: 1,
            network: NetworkId::from_name("t"),
            epoch_len_secs: 3600,
            node: node(1),
            public_key: [2; 32],
            nonce: [3; 32],
        }));
        roundtrip(PeerMessage::Challenge(PeerChallenge {
            node: node(2),
            public_key: [4; 32],
            nonce: [5; 32],
            signature: vec![6; 64],
            mac: [7; 32],
        }));
        roundtrip(PeerMessage::Auth(PeerAuth {
            signature: vec![8; 64],
            mac: [0; 32],
        }));
        roundtrip(PeerMessage::Ready);
        roundtrip(PeerMessage::Refused("network secret".into()));
        roundtrip(PeerMessage::Ring(RingMessage::Request {
            rpc: 9,
            from: node(3),
            body: crate::ring::RingRequest::FindStep {
                target: Id([1; 32]),
            },
        }));
        roundtrip(PeerMessage::Request(DataRequest::Replicate {
            records: vec![Record {
                epoch: Epoch(5),
                key: Key([9; 32]),
                stamp: 42,
                value: vec![1; 300],
            }],
        }));
        roundtrip(PeerMessage::Request(DataRequest::Offer {
            epoch: Epoch(5),
            after: Id([1; 32]),
            upto: Id([2; 32]),
            keys: vec![KeyDigest {
                key: Key([3; 32]),
                digest: [4; 32],
            }],
        }));
        roundtrip(PeerMessage::Response(DataResponse::Values {
            values: vec![(1, vec![2; 10])],
        }));
        roundtrip(PeerMessage::Response(DataResponse::Failed(
            DataFailure::Quorum { copies: 1 },
        )));
        roundtrip(PeerMessage::Response(DataResponse::Step(
            RingResponse::Found {
                succs: vec![node(4)],
            },
        )));
    }

    #[test]
    fn garbage_bodies_are_typed_errors() {
        let mut buf = Vec::new();
        encode_peer(1, &PeerMessage::Ready, &mut buf).unwrap();
        buf[5] = PeerKind::Request as u8;
        buf[0] = 7;
        buf.extend_from_slice(&[0xff; 7]);
        let Ok(Parsed::Frame(f)) = parse_frame(&buf, 1 << 20) else {
            panic!("frame expected")
        };
        assert!(matches!(
            crate::Decoder::new().decode_peer(&f),
            Err(BodyError::InvalidPeer { .. })
        ));
        let mut buf = Vec::new();
        encode_peer(1, &PeerMessage::Ready, &mut buf).unwrap();
        buf[5] = 0x7e;
        let Ok(Parsed::Frame(f)) = parse_frame(&buf, 1 << 20) else {
            panic!("frame expected")
        };
        assert!(matches!(
            crate::Decoder::new().decode_peer(&f),
            Err(BodyError::UnknownKind(0x7e))
        ));
    }

    #[test]
    fn transcripts_bind_role_and_nonces() {
        let n = NetworkId::from_name("t");
        let a = transcript(b"dialer", &n, &[1; 32], &[2; 32], &[3; 32], &[4; 32]);
        assert_ne!(
            a,
            transcript(b"listener", &n, &[1; 32], &[2; 32], &[3; 32], &[4; 32])
        );
        assert_ne!(
            a,
            transcript(b"dialer", &n, &[1; 32], &[9; 32], &[3; 32], &[4; 32])
        );
        let k = secret_key("s3cret").unwrap();
        assert_ne!(transcript_mac(Some(&k), &a), transcript_mac(None, &a));
        assert!(secret_key("").is_none());
    }
}
