//! The encrypted client–node channel's framing (ARCHITECTURE.md "Client-to-Chord protocol").
//!
//! A client that knows the node's ed25519 public key (from a signed bootstrap list or a
//! NODE_LIST entry, or — trust on first use — from a plaintext hello on the same connection)
//! runs a Noise NK handshake to the node's static key: its X25519 form, the birational map of
//! the ed25519 key. The handshake travels in two frames with raw (not rkyv) bodies:
//!
//! - `NOISE_HELLO` (0x03): Noise message 1 (`e, es`), whose payload is the rkyv [`Hello`] body;
//! - `NOISE_HELLO_ACK` (0x04): Noise message 2 (`e, ee`), whose payload is the rkyv
//!   [`HelloAck`] body.
//!
//! After it, each direction is a stream of `NOISE_DATA` (0x05) frames, each body one Noise
//! transport message (at most 65 535 bytes). Their plaintexts, concatenated, are ordinary frames
//! (header + rkyv body), so everything above this layer is unchanged. An eavesdropper sees
//! frame lengths only; an on-path attacker who alters, drops, reorders or replays a ciphertext
//! makes decryption fail, and the connection closes.
//!
//! [`Hello`]: crate::msg::Hello
//! [`HelloAck`]: crate::msg::HelloAck

use crate::frame::HEADER_LEN;
use crate::msg::PROTOCOL_VERSION;

/// Frame kind of Noise message 1 (client to node).
pub const KIND_NOISE_HELLO: u8 = 0x03;
/// Frame kind of Noise message 2 (node to client).
pub const KIND_NOISE_HELLO_ACK: u8 = 0x04;
/// Frame kind of a Noise transport message.
pub const KIND_NOISE_DATA: u8 = 0x05;

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_NK_25519_ChaChaPoly_BLAKE2s";

/// Largest Noise message.
pub const MAX_NOISE_MESSAGE: usize = 65_535;
/// Authentication tag per transport message.
pub const NOISE_TAG: usize = 16;
/// Largest plaintext per transport message.
pub const MAX_NOISE_PLAINTEXT: usize = MAX_NOISE_MESSAGE - NOISE_TAG;

/// Whether a frame kind belongs to the Noise layer.
pub fn is_noise_kind(b: u8) -> bool {
    (KIND_NOISE_HELLO..=KIND_NOISE_DATA).contains(&b)
}

/// Appends a frame with a raw body.
pub fn raw_frame(kind: u8, request_id: u64, body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.push(PROTOCOL_VERSION);
    out.push(kind);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(body);
}

/// Reserves a `NOISE_DATA` header of unknown length at the end of `out`; returns where the
/// body starts. Fill the body, then call [`finish_data_frame`].
pub fn begin_data_frame(out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    out.len()
}

/// Writes the header reserved by [`begin_data_frame`] for the body that now ends `out`.
pub fn finish_data_frame(out: &mut [u8], body_start: usize) {
    let len = (out.len() - body_start) as u32;
    let h = &mut out[body_start - HEADER_LEN..body_start];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4] = PROTOCOL_VERSION;
    h[5] = KIND_NOISE_DATA;
    h[6..16].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{parse_frame, Parsed};

    #[test]
    fn raw_and_data_frames_parse() {
        let mut out = Vec::new();
        raw_frame(KIND_NOISE_HELLO, 7, b"abc", &mut out);
        let at = begin_data_frame(&mut out);
        out.extend_from_slice(&[9; 40]);
        finish_data_frame(&mut out, at);
        let Ok(Parsed::Frame(f)) = parse_frame(&out, 1 << 16) else {
            panic!()
        };
        assert_eq!(
            (f.header.kind, f.header.request_id, f.body),
            (3, 7, &b"abc"[..])
        );
        let Ok(Parsed::Frame(g)) = parse_frame(&out[f.wire_len()..], 1 << 16) else {
            panic!()
        };
        assert_eq!((g.header.kind, g.body.len()), (KIND_NOISE_DATA, 40));
        assert!(is_noise_kind(4) && !is_noise_kind(1) && !is_noise_kind(0x10));
    }
}
