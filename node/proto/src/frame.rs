//! Framing: a fixed plain header before an rkyv body.
//!
//! ```text
//! offset 0   u32 LE  body length in bytes
//! offset 4   u8      protocol version (PROTOCOL_VERSION)
//! offset 5   u8      kind (msg::Kind)
//! offset 6   u16 LE  flags, must be 0
//! offset 8   u64 LE  request id, echoed by the reply
//! offset 16  body
//! ```
//!
//! The header is read without touching the body, so a frame with an invalid body still gets a
//! typed reply carrying its request id. Parsing is check-then-parse: too few bytes is
//! [`Parsed::Incomplete`], not an error. Bodies are copied into a 16-byte-aligned scratch buffer
//! before validated access, because pipelined frames start at any offset of the read buffer.
//! Nothing here does I/O: the glommio node and the tokio client share it.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::msg::{self, Kind, Message, PROTOCOL_VERSION};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 16;

/// Default largest body a peer accepts: comfortably above a full RETRIEVE reply of
/// 8 values of 1 KiB.
pub const DEFAULT_MAX_BODY: u32 = 64 * 1024;

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Body length in bytes.
    pub body_len: u32,
    /// Protocol version byte.
    pub version: u8,
    /// Kind byte (may name no known kind).
    pub kind: u8,
    /// Request id.
    pub request_id: u64,
}

impl Header {
    fn read(buf: &[u8]) -> Header {
        Header {
            body_len: u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]),
            version: buf[4],
            kind: buf[5],
            request_id: u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")),
        }
    }

    fn flags(buf: &[u8]) -> u16 {
        u16::from_le_bytes([buf[6], buf[7]])
    }
}

/// A complete frame found at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct RawFrame<'a> {
    /// Its header.
    pub header: Header,
    /// Its body (unaligned, unvalidated).
    pub body: &'a [u8],
}

impl RawFrame<'_> {
    /// Bytes this frame occupies in the buffer (header and body).
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }
}

/// The result of looking for a frame at the start of a buffer.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A whole frame is there.
    Frame(RawFrame<'a>),
    /// More bytes are needed; `needed` is the total the frame will occupy when known.
    Incomplete {
        /// Total bytes of the frame if the header has arrived.
        needed: Option<usize>,
    },
}

/// The byte stream cannot be framed any more: the connection must be closed after replying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header's version byte is not ours (garbage bytes usually land here).
    #[error("unsupported protocol version {version} (request id {request_id})")]
    UnsupportedVersion {
        /// The version byte read.
        version: u8,
        /// The request id as read from the header.
        request_id: u64,
    },
    /// Reserved flag bits are set.
    #[error("reserved header flags set (request id {request_id})")]
    BadFlags {
        /// The request id as read from the header.
        request_id: u64,
    },
    /// The body is larger than allowed.
    #[error("frame body of {len} bytes exceeds the limit of {max} (request id {request_id})")]
    TooLarge {
        /// Announced body length.
        len: u32,
        /// The limit.
        max: u32,
        /// The request id as read from the header.
        request_id: u64,
    },
}

impl FrameError {
    /// The request id read from the offending header, for the error reply.
    pub fn request_id(&self) -> u64 {
        match self {
            FrameError::UnsupportedVersion { request_id, .. }
            | FrameError::BadFlags { request_id }
            | FrameError::TooLarge { request_id, .. } => *request_id,
        }
    }

    /// The error code to send back before closing.
    pub fn code(&self) -> msg::ErrorCode {
        match self {
            FrameError::UnsupportedVersion { .. } | FrameError::BadFlags { .. } => {
                msg::ErrorCode::UnsupportedVersion
            }
            FrameError::TooLarge { .. } => msg::ErrorCode::FrameTooLarge,
        }
    }
}

/// A well-framed body that cannot be turned into a message. The connection survives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The kind byte names no message.
    #[error("unknown message kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The body is not a valid archive of the kind's type.
    #[error("invalid body for {kind:?}: {reason}")]
    Invalid {
        /// The kind named by the header.
        kind: Kind,
        /// What validation said.
        reason: String,
    },
    /// The body is not a valid archive of the node-to-node kind's type.
    #[error("invalid body for peer kind 0x{kind:02x}: {reason}")]
    InvalidPeer {
        /// The kind byte.
        kind: u8,
        /// What validation said.
        reason: String,
    },
}

impl BodyError {
    /// The error code to send back.
    pub fn code(&self) -> msg::ErrorCode {
        match self {
            BodyError::UnknownKind(_) => msg::ErrorCode::UnknownKind,
            BodyError::Invalid { .. } | BodyError::InvalidPeer { .. } => {
                msg::ErrorCode::InvalidBody
            }
        }
    }
}

/// Encoding failed (only possible for absurd sizes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The body would not fit a u32 length or rkyv refused it.
    #[error("cannot encode {kind:?}: {reason}")]
    Body {
        /// The message kind.
        kind: Kind,
        /// Why.
        reason: String,
    },
    /// The same for a node-to-node message.
    #[error("cannot encode peer kind 0x{kind:02x}: {reason}")]
    Peer {
        /// The kind byte.
        kind: u8,
        /// Why.
        reason: String,
    },
}

/// Looks for one frame at the start of `buf`, accepting bodies up to `max_body` bytes.
pub fn parse_frame(buf: &[u8], max_body: u32) -> Result<Parsed<'_>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(Parsed::Incomplete { needed: None });
    }
    let header = Header::read(buf);
    if header.version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion {
            version: header.version,
            request_id: header.request_id,
        });
    }
    if Header::flags(buf) != 0 {
        return Err(FrameError::BadFlags {
            request_id: header.request_id,
        });
    }
    if header.body_len > max_body {
        return Err(FrameError::TooLarge {
            len: header.body_len,
            max: max_body,
            request_id: header.request_id,
        });
    }
    let total = HEADER_LEN + header.body_len as usize;
    if buf.len() < total {
        return Ok(Parsed::Incomplete {
            needed: Some(total),
        });
    }
    Ok(Parsed::Frame(RawFrame {
        header,
        body: &buf[HEADER_LEN..total],
    }))
}

/// Appends the frame for `msg` with `request_id` to `out`.
pub fn encode(request_id: u64, msg: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    encode_with(request_id, msg.kind(), out, |out| match msg {
        Message::Hello(m) => archive(m, out),
        Message::HelloAck(m) => archive(m, out),
        Message::Insert(m) => archive(m, out),
        Message::Retrieve(m) => archive(m, out),
        Message::TimeSync | Message::Status | Message::RingInfo => Ok(()),
        Message::Lookup(m) => archive(m, out),
        Message::RingInfoReply(m) => archive(m, out),
        Message::LookupReply(m) => archive(m, out),
        Message::NodeList(m) => archive(m, out),
        Message::InsertReply(m) => archive(m, out),
        Message::RetrieveReply(m) => archive(m, out),
        Message::TimeReply(m) => archive(m, out),
        Message::NodeListReply(m) => archive(m, out),
        Message::StatusReply(m) => archive(m, out),
        Message::Error(m) => archive(m, out),
    })
}

/// Appends a RETRIEVE reply frame built from borrowed values: the bytes [`encode`] writes for
/// the owned [`msg::RetrieveReply`] with the same values.
pub fn encode_retrieve_reply(
    request_id: u64,
    reply: &msg::RetrieveReplyRef<'_>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    encode_with(request_id, Kind::RetrieveReply, out, |out| {
        archive(reply, out)
    })
}

/// Appends a frame of `kind` whose body `body` appends; fills in the header after it.
fn encode_with(
    request_id: u64,
    kind: Kind,
    out: &mut Vec<u8>,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let body_start = out.len();
    if let Err(reason) = body(out) {
        out.truncate(start);
        return Err(EncodeError::Body { kind, reason });
    }
    let body_len = out.len() - body_start;
    let Ok(body_len) = u32::try_from(body_len) else {
        out.truncate(start);
        return Err(EncodeError::Body {
            kind,
            reason: format!("body of {body_len} bytes"),
        });
    };
    let header = &mut out[start..body_start];
    header[0..4].copy_from_slice(&body_len.to_le_bytes());
    header[4] = PROTOCOL_VERSION;
    header[5] = kind as u8;
    header[6..8].copy_from_slice(&0u16.to_le_bytes());
    header[8..16].copy_from_slice(&request_id.to_le_bytes());
    Ok(())
}

/// Encodes one frame into a fresh buffer.
pub fn encode_to_vec(request_id: u64, msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode(request_id, msg, &mut out)?;
    Ok(out)
}

/// Appends an archive to a buffer, reporting positions relative to the body's start so the
/// archive's internal alignment does not depend on where in the buffer the frame begins.
pub(crate) struct BodyWriter<'a> {
    out: &'a mut Vec<u8>,
    base: usize,
}

impl rkyv::ser::Positional for BodyWriter<'_> {
    fn pos(&self) -> usize {
        self.out.len() - self.base
    }
}

impl<E> rkyv::ser::Writer<E> for BodyWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.out.extend_from_slice(bytes);
        Ok(())
    }
}

pub(crate) fn archive<T>(value: &T, out: &mut Vec<u8>) -> Result<(), String>
where
    T: for<'a, 'b> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            BodyWriter<'b>,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >,
{
    let base = out.len();
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, BodyWriter { out, base })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Scratch space for decoding bodies: reused across frames so decoding allocates only what
/// the message itself owns.
#[derive(Debug, Default)]
pub struct Decoder {
    aligned: AlignedVec<16>,
}

impl Decoder {
    /// A decoder with an empty scratch buffer.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Copies a body to the aligned scratch buffer.
    pub(crate) fn aligned_body(&mut self, body: &[u8]) -> &[u8] {
        self.aligned.clear();
        self.aligned.extend_from_slice(body);
        &self.aligned
    }

    /// Decodes a frame's body into a message, validating the archive first.
    pub fn decode(&mut self, frame: &RawFrame<'_>) -> Result<Message, BodyError> {
        let kind =
            Kind::from_u8(frame.header.kind).ok_or(BodyError::UnknownKind(frame.header.kind))?;
        let bytes = self.aligned_body(frame.body);
        let invalid = |reason: String| BodyError::Invalid { kind, reason };
        macro_rules! body {
            ($t:ty) => {
                rkyv::from_bytes::<$t, rancor::Error>(bytes).map_err(|e| invalid(e.to_string()))?
            };
        }
        Ok(match kind {
            Kind::Hello => Message::Hello(body!(msg::Hello)),
            Kind::HelloAck => Message::HelloAck(body!(msg::HelloAck)),
            Kind::Insert => Message::Insert(body!(msg::Insert)),
            Kind::Retrieve => Message::Retrieve(body!(msg::Retrieve)),
            Kind::TimeSync | Kind::Status => {
                if !bytes.is_empty() {
                    return Err(invalid(format!(
                        "expected an empty body, got {} bytes",
                        bytes.len()
                    )));
                }
                if kind == Kind::TimeSync {
                    Message::TimeSync
                } else {
                    Message::Status
                }
            }
            Kind::NodeList => Message::NodeList(body!(msg::NodeListRequest)),
            Kind::InsertReply => Message::InsertReply(body!(msg::InsertReply)),
            Kind::RetrieveReply => Message::RetrieveReply(body!(msg::RetrieveReply)),
            Kind::TimeReply => Message::TimeReply(body!(msg::TimeReply)),
            Kind::NodeListReply => Message::NodeListReply(body!(msg::NodeListReply)),
            Kind::StatusReply => Message::StatusReply(body!(msg::StatusReply)),
            Kind::RingInfo => {
                if !bytes.is_empty() {
                    return Err(invalid("expected an empty body".into()));
                }
                Message::RingInfo
            }
            Kind::Lookup => Message::Lookup(body!(msg::LookupRequest)),
            Kind::RingInfoReply => Message::RingInfoReply(body!(msg::RingInfoReply)),
            Kind::LookupReply => Message::LookupReply(body!(msg::LookupReply)),
            Kind::Error => Message::Error(body!(msg::ErrorReply)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::*;
    use crate::{Epoch, Key};

    fn insert() -> Message {
        Message::Insert(Insert {
            epoch: Epoch(7),
            key: Key([3; 32]),
            value: vec![9; 300],
        })
    }

    #[test]
    fn round_trip_at_odd_offsets() {
        let mut buf = vec![0xee; 3]; // misalign the frame on purpose
        encode(42, &insert(), &mut buf).unwrap();
        let Parsed::Frame(f) = parse_frame(&buf[3..], DEFAULT_MAX_BODY).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(f.header.request_id, 42);
        assert_eq!(f.wire_len(), buf.len() - 3);
        assert_eq!(Decoder::new().decode(&f).unwrap(), insert());
    }

    #[test]
    fn a_borrowed_retrieve_reply_encodes_to_the_owned_ones_bytes() {
        let sets: [Vec<Vec<u8>>; 4] = [
            vec![vec![7; 300]],
            vec![vec![], vec![1], vec![2; 3], vec![3; 1024]],
            (0..8u8).map(|i| vec![i; 17 * i as usize]).collect(),
            vec![vec![0xab; 65]; 2],
        ];
        for (i, values) in sets.iter().enumerate() {
            for misalign in 0..3 {
                let mut owned = vec![0xee; misalign];
                let mut borrowed = owned.clone();
                let reply = RetrieveReply::Found(values.clone());
                encode(i as u64, &Message::RetrieveReply(reply.clone()), &mut owned).unwrap();
                let refs = values.iter().map(|v| ValueRef(v)).collect();
                let by_ref = RetrieveReplyRef::Found(refs);
                encode_retrieve_reply(i as u64, &by_ref, &mut borrowed).unwrap();
                assert_eq!(owned, borrowed);
                let Parsed::Frame(f) =
                    parse_frame(&borrowed[misalign..], DEFAULT_MAX_BODY).unwrap()
                else {
                    panic!("incomplete")
                };
                assert_eq!(
                    Decoder::new().decode(&f).unwrap(),
                    Message::RetrieveReply(reply)
                );
            }
        }
        for (owned, by_ref) in [
            (RetrieveReply::NotFound, RetrieveReplyRef::NotFound),
            (
                RetrieveReply::Failed(FailCause::Overloaded),
                RetrieveReplyRef::Failed(FailCause::Overloaded),
            ),
        ] {
            let mut a = Vec::new();
            let mut b = Vec::new();
            encode(9, &Message::RetrieveReply(owned), &mut a).unwrap();
            encode_retrieve_reply(9, &by_ref, &mut b).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let buf = encode_to_vec(1, &insert()).unwrap();
        for n in 0..buf.len() {
            match parse_frame(&buf[..n], DEFAULT_MAX_BODY).unwrap() {
                Parsed::Incomplete { .. } => {}
                Parsed::Frame(_) => panic!("prefix of {n} bytes parsed as a frame"),
            }
        }
    }

    #[test]
    fn oversized_frame_is_refused_from_the_header() {
        let mut buf = encode_to_vec(5, &insert()).unwrap();
        buf.truncate(HEADER_LEN);
        let err = parse_frame(&buf, 100).unwrap_err();
        assert_eq!(err.request_id(), 5);
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    }

    #[test]
    fn garbage_is_a_version_error() {
        let err = parse_frame(b"GET / HTTP/1.1\r\nHost: x\r\n", DEFAULT_MAX_BODY).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
    }

    #[test]
    fn invalid_body_keeps_its_request_id() {
        let mut buf = encode_to_vec(77, &insert()).unwrap();
        for b in &mut buf[HEADER_LEN..] {
            *b = 0xff;
        }
        let Parsed::Frame(f) = parse_frame(&buf, DEFAULT_MAX_BODY).unwrap() else {
            panic!()
        };
        assert_eq!(f.header.request_id, 77);
        let err = Decoder::new().decode(&f).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidBody);
    }

    #[test]
    fn unknown_kind_is_typed() {
        let mut buf = encode_to_vec(3, &Message::TimeSync).unwrap();
        buf[5] = 0x99;
        let Parsed::Frame(f) = parse_frame(&buf, DEFAULT_MAX_BODY).unwrap() else {
            panic!()
        };
        assert_eq!(
            Decoder::new().decode(&f).unwrap_err(),
            BodyError::UnknownKind(0x99)
        );
    }

    #[test]
    fn empty_kinds_refuse_a_body() {
        let mut buf = encode_to_vec(3, &Message::TimeSync).unwrap();
        buf[0] = 2;
        buf.extend_from_slice(&[1, 2]);
        let Parsed::Frame(f) = parse_frame(&buf, DEFAULT_MAX_BODY).unwrap() else {
            panic!()
        };
        assert!(matches!(
            Decoder::new().decode(&f),
            Err(BodyError::Invalid { .. })
        ));
    }
}
