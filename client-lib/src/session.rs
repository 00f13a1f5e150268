//! The client-to-client protocol (seed §7, Table 2), sans-IO.
//!
//! INIT_SESSION is a Noise IK handshake (`Noise_IK_25519_ChaChaPoly_BLAKE2s`): the initiator
//! knows the responder's static X25519 key from its contact card and proves its own; the
//! responder accepts only keys of its contacts. Both ephemerals give forward secrecy. The first
//! handshake message carries the initiator's clock; the responder refuses one older than
//! [`REPLAY_WINDOW_MS`] or seen before (a [`ReplayGuard`] remembers recent ones), so a recorded
//! INIT_SESSION cannot be replayed.
//!
//! After it, every message is one Noise transport message whose plaintext is
//! `counter_be64 ‖ timestamp_ms_be64 ‖ kind(1) ‖ body`: NOTIFY_STATUS (A, BRB, DND, XA, NA,
//! OFF) or INSTANT_MESSAGE (UTF-8 text). Counters strictly increase per direction: a stale or
//! replayed message is dropped even if a transport would deliver it twice. On the wire each
//! Noise message is preceded by its length (u16, big-endian).

use std::collections::VecDeque;

use crate::identity::{ContactCard, Identity};

/// The Noise protocol of INIT_SESSION.
pub const SESSION_NOISE: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// How old an INIT_SESSION may be.
pub const REPLAY_WINDOW_MS: u64 = 120_000;
/// Largest instant message text.
pub const MAX_TEXT: usize = 4096;

/// Presence status (seed Table 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Available.
    A,
    /// Be right back.
    Brb,
    /// Do not disturb.
    Dnd,
    /// Extended away.
    Xa,
    /// Not available.
    Na,
    /// Offline (sent when leaving).
    Off,
}

impl Status {
    fn code(self) -> u8 {
        match self {
            Status::A => 0,
            Status::Brb => 1,
            Status::Dnd => 2,
            Status::Xa => 3,
            Status::Na => 4,
            Status::Off => 5,
        }
    }

    fn from_code(c: u8) -> Option<Status> {
        Some(match c {
            0 => Status::A,
            1 => Status::Brb,
            2 => Status::Dnd,
            3 => Status::Xa,
            4 => Status::Na,
            5 => Status::Off,
            _ => return None,
        })
    }

    /// The seed's name: A, BRB, DND, XA, NA, OFF.
    pub fn name(self) -> &'static str {
        match self {
            Status::A => "A",
            Status::Brb => "BRB",
            Status::Dnd => "DND",
            Status::Xa => "XA",
            Status::Na => "NA",
            Status::Off => "OFF",
        }
    }

    /// Parses a seed name (case-insensitive).
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s.to_ascii_uppercase().as_str() {
            "A" => Status::A,
            "BRB" => Status::Brb,
            "DND" => Status::Dnd,
            "XA" => Status::Xa,
            "NA" => Status::Na,
            "OFF" => Status::Off,
            _ => return None,
        })
    }
}

/// A message inside a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionMessage {
    /// NOTIFY_STATUS.
    NotifyStatus(Status),
    /// INSTANT_MESSAGE.
    InstantMessage(String),
}

/// Why a session step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The handshake did not verify, or the initiator is not a contact.
    #[error("session handshake refused: {0}")]
    Handshake(&'static str),
    /// INIT_SESSION too old or seen before.
    #[error("replayed or stale session request")]
    Replay,
    /// A transport message does not decrypt (altered, or out of order).
    #[error("message does not decrypt")]
    Decrypt,
    /// A decrypted message is malformed.
    #[error("malformed message")]
    Malformed,
}

/// Remembers recent INIT_SESSION messages to refuse replays within the window.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: VecDeque<(u64, [u8; 32])>,
}

impl ReplayGuard {
    fn check(&mut self, now_ms: u64, sent_ms: u64, msg: &[u8]) -> Result<(), SessionError> {
        if sent_ms + REPLAY_WINDOW_MS < now_ms || sent_ms > now_ms + REPLAY_WINDOW_MS {
            return Err(SessionError::Replay);
        }
        while self
            .seen
            .front()
            .is_some_and(|(t, _)| t + 2 * REPLAY_WINDOW_MS < now_ms)
        {
            self.seen.pop_front();
        }
        let h = *blake3::hash(msg).as_bytes();
        if self.seen.iter().any(|(_, s)| *s == h) {
            return Err(SessionError::Replay);
        }
        self.seen.push_back((now_ms, h));
        Ok(())
    }
}

fn params() -> snow::params::NoiseParams {
    SESSION_NOISE.parse().expect("valid Noise parameters")
}

/// An initiated session waiting for the responder's answer.
pub struct Pending {
    hs: snow::HandshakeState,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

/// An established session with one contact.
pub struct Session {
    transport: snow::TransportState,
    send_counter: u64,
    recv_counter: u64,
    /// The contact's card.
    pub peer: ContactCard,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer.id())
            .finish_non_exhaustive()
    }
}

/// Starts INIT_SESSION to `peer`; returns the state and the first message.
pub fn initiate(
    me: &Identity,
    peer: &ContactCard,
    now_ms: u64,
) -> Result<(Pending, Vec<u8>), SessionError> {
    let mut hs = snow::Builder::new(params())
        .local_private_key(&me.agreement.to_bytes())
        .remote_public_key(&peer.agreement_public)
        .build_initiator()
        .map_err(|_| SessionError::Handshake("setup"))?;
    let mut msg = vec![0u8; 256];
    let n = hs
        .write_message(&now_ms.to_be_bytes(), &mut msg)
        .map_err(|_| SessionError::Handshake("write"))?;
    msg.truncate(n);
    Ok((Pending { hs }, msg))
}

/// Answers an INIT_SESSION from one of `contacts`; returns the session and the reply.
pub fn respond(
    me: &Identity,
    contacts: &[ContactCard],
    msg: &[u8],
    now_ms: u64,
    guard: &mut ReplayGuard,
) -> Result<(Session, Vec<u8>), SessionError> {
    let mut hs = snow::Builder::new(params())
        .local_private_key(&me.agreement.to_bytes())
        .build_responder()
        .map_err(|_| SessionError::Handshake("setup"))?;
    let mut payload = [0u8; 64];
    let n = hs
        .read_message(msg, &mut payload)
        .map_err(|_| SessionError::Handshake("does not decrypt"))?;
    let remote = hs
        .get_remote_static()
        .ok_or(SessionError::Handshake("no static key"))?;
    let peer = contacts
        .iter()
        .find(|c| c.agreement_public == remote)
        .cloned()
        .ok_or(SessionError::Handshake("not a contact"))?;
    if n != 8 {
        return Err(SessionError::Handshake("payload"));
    }
    let sent = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
    guard.check(now_ms, sent, msg)?;
    let mut reply = vec![0u8; 256];
    let m = hs
        .write_message(&[], &mut reply)
        .map_err(|_| SessionError::Handshake("write"))?;
    reply.truncate(m);
    let transport = hs
        .into_transport_mode()
        .map_err(|_| SessionError::Handshake("state"))?;
    Ok((
        Session {
            transport,
            send_counter: 0,
            recv_counter: 0,
            peer,
        },
        reply,
    ))
}

impl Pending {
    /// Completes the handshake with the responder's reply.
    pub fn finish(mut self, peer: &ContactCard, reply: &[u8]) -> Result<Session, SessionError> {
        let mut payload = [0u8; 64];
        self.hs
            .read_message(reply, &mut payload)
            .map_err(|_| SessionError::Handshake("reply does not decrypt"))?;
        let transport = self
            .hs
            .into_transport_mode()
            .map_err(|_| SessionError::Handshake("state"))?;
        Ok(Session {
            transport,
            send_counter: 0,
            recv_counter: 0,
            peer: peer.clone(),
        })
    }
}

impl Session {
    /// Seals a message for the peer.
    pub fn seal(&mut self, msg: &SessionMessage, now_ms: u64) -> Result<Vec<u8>, SessionError> {
        self.send_counter += 1;
        let mut plain = Vec::with_capacity(32);
        plain.extend_from_slice(&self.send_counter.to_be_bytes());
        plain.extend_from_slice(&now_ms.to_be_bytes());
        match msg {
            SessionMessage::NotifyStatus(s) => {
                plain.push(1);
                plain.push(s.code());
            }
            SessionMessage::InstantMessage(t) => {
                if t.len() > MAX_TEXT {
                    return Err(SessionError::Malformed);
                }
                plain.push(2);
                plain.extend_from_slice(t.as_bytes());
            }
        }
        let mut out = vec![0u8; plain.len() + 16];
        let n = self
            .transport
            .write_message(&plain, &mut out)
            .map_err(|_| SessionError::Malformed)?;
        out.truncate(n);
        Ok(out)
    }

    /// Opens a message from the peer; `Ok(None)` for a stale one (counter not above the last).
    pub fn open(&mut self, ct: &[u8]) -> Result<Option<(u64, SessionMessage)>, SessionError> {
        let mut plain = vec![0u8; ct.len()];
        let n = self
            .transport
            .read_message(ct, &mut plain)
            .map_err(|_| SessionError::Decrypt)?;
        let p = &plain[..n];
        if p.len() < 17 {
            return Err(SessionError::Malformed);
        }
        let counter = u64::from_be_bytes(p[..8].try_into().expect("8 bytes"));
        let ts = u64::from_be_bytes(p[8..16].try_into().expect("8 bytes"));
        if counter <= self.recv_counter {
            return Ok(None);
        }
        self.recv_counter = counter;
        let msg = match p[16] {
            1 if p.len() == 18 => SessionMessage::NotifyStatus(
                Status::from_code(p[17]).ok_or(SessionError::Malformed)?,
            ),
            2 => SessionMessage::InstantMessage(
                String::from_utf8(p[17..].to_vec()).map_err(|_| SessionError::Malformed)?,
            ),
            _ => return Err(SessionError::Malformed),
        };
        Ok(Some((ts, msg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Identity, Identity) {
        (
            Identity::from_secrets("alice", [1; 32], [2; 32]),
            Identity::from_secrets("bob", [3; 32], [4; 32]),
        )
    }

    #[test]
    fn contacts_open_a_session_and_exchange_messages_in_order() {
        let (a, b) = pair();
        let mut guard = ReplayGuard::default();
        let (pending, m1) = initiate(&a, &b.card(), 1_000_000).unwrap();
        let (mut bs, m2) = respond(&b, &[a.card()], &m1, 1_000_500, &mut guard).unwrap();
        assert_eq!(bs.peer, a.card());
        let mut as_ = pending.finish(&b.card(), &m2).unwrap();
        let x = as_
            .seal(&SessionMessage::NotifyStatus(Status::Dnd), 1)
            .unwrap();
        let y = as_
            .seal(&SessionMessage::InstantMessage("hi bob".into()), 2)
            .unwrap();
        assert_eq!(
            bs.open(&x).unwrap(),
            Some((1, SessionMessage::NotifyStatus(Status::Dnd)))
        );
        assert_eq!(
            bs.open(&y).unwrap(),
            Some((2, SessionMessage::InstantMessage("hi bob".into())))
        );
        // Replayed transport message: Noise refuses it (the nonce moved on).
        assert!(bs.open(&y).is_err());
        let z = bs
            .seal(&SessionMessage::NotifyStatus(Status::Off), 3)
            .unwrap();
        assert_eq!(
            as_.open(&z).unwrap(),
            Some((3, SessionMessage::NotifyStatus(Status::Off)))
        );
    }

    #[test]
    fn strangers_replays_and_stale_requests_are_refused() {
        let (a, b) = pair();
        let eve = Identity::from_secrets("eve", [5; 32], [6; 32]);
        let mut guard = ReplayGuard::default();
        let (_, m1) = initiate(&eve, &b.card(), 1_000_000).unwrap();
        assert_eq!(
            respond(&b, &[a.card()], &m1, 1_000_000, &mut guard).unwrap_err(),
            SessionError::Handshake("not a contact")
        );
        let (_, m1) = initiate(&a, &b.card(), 1_000_000).unwrap();
        respond(&b, &[a.card()], &m1, 1_000_100, &mut guard).unwrap();
        assert_eq!(
            respond(&b, &[a.card()], &m1, 1_000_200, &mut guard).unwrap_err(),
            SessionError::Replay
        );
        let (_, old) = initiate(&a, &b.card(), 1_000_000).unwrap();
        assert_eq!(
            respond(
                &b,
                &[a.card()],
                &old,
                1_000_000 + REPLAY_WINDOW_MS + 1,
                &mut guard
            )
            .unwrap_err(),
            SessionError::Replay
        );
        // A reply from someone else's key does not finish the handshake.
        let (pending, m1) = initiate(&a, &b.card(), 5).unwrap();
        let (_, reply) = respond(&b, &[a.card()], &m1, 5, &mut ReplayGuard::default()).unwrap();
        let mut bad = reply.clone();
        bad[0] ^= 1;
        assert!(pending.finish(&b.card(), &bad).is_err());
        assert_eq!(Status::parse("brb"), Some(Status::Brb));
        assert_eq!(Status::Xa.name(), "XA");
    }
}
