//! Presence keys and sealed presence records (seed §3.2, §3.3; ARCHITECTURE.md "Identifiers and
//! keys", "Records").
//!
//! Key: `K = BLAKE3-keyed(derive_key("tarn presence key v1", common_secret),
//! publisher_id ‖ receiver_id ‖ epoch_be64 ‖ index_u8)` — only the two contacts can compute it.
//!
//! Record plaintext (`PresenceRecord`): `{timestamp, contact_info, index, publisher_id}`, signed
//! by the publisher over a domain-separated encoding that also names the receiver, the epoch and
//! the presence key; then sealed to the receiver's X25519 key: an ephemeral X25519 key
//! agreement, a ChaCha20-Poly1305 key derived with BLAKE3 from the shared secret and both
//! public keys, and the presence key and epoch as associated data. Wire form of a sealed value:
//!
//! ```text
//! version(1) = 1 ‖ ephemeral_public(32) ‖ AEAD(ciphertext ‖ tag(16))
//! plaintext = timestamp_ms_be64 ‖ index(1) ‖ publisher_id(32) ‖ info_len_be16 ‖ info ‖ signature(64)
//! ```
//!
//! A node sees random-looking bytes under a random-looking key: it can neither read a record
//! (no receiver key) nor forge one (no publisher key); a record copied to another key, epoch
//! or index fails to open (associated data and signature bind all three).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use ed25519_dalek::{Signature, Signer, VerifyingKey};
use tarn_proto::{Epoch, Key};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};

use crate::identity::{ContactCard, Identity, UserId};

/// Index slots per contact and epoch (seed §3.2's `R`).
pub const DEFAULT_INDICES: u8 = 5;

/// Largest contact info accepted (an onion address with port is 62 + 6 bytes).
pub const MAX_CONTACT_INFO: usize = 255;

const SEAL_VERSION: u8 = 1;

/// The presence key for one (publisher, receiver, epoch, index).
pub fn presence_key(
    common_secret: &[u8],
    publisher: &UserId,
    receiver: &UserId,
    epoch: Epoch,
    index: u8,
) -> Key {
    let k = blake3::derive_key("tarn presence key v1", common_secret);
    let mut h = blake3::Hasher::new_keyed(&k);
    h.update(&publisher.0);
    h.update(&receiver.0);
    h.update(&epoch.0.to_be_bytes());
    h.update(&[index]);
    Key(*h.finalize().as_bytes())
}

/// What a publisher tells one contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceRecord {
    /// Publisher's clock when published, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Where to reach the publisher (onion address or `host:port`).
    pub contact_info: String,
    /// The index slot it was published under.
    pub index: u8,
    /// The publisher.
    pub publisher: UserId,
}

/// Where a record is stored, which the signature and the AEAD bind it to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The receiver.
    pub receiver: UserId,
    /// The epoch.
    pub epoch: Epoch,
    /// The index.
    pub index: u8,
    /// The presence key (derived from the above and the common secret).
    pub key: Key,
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not a sealed record of a known version, or truncated.
    #[error("malformed sealed record")]
    Malformed,
    /// Decryption failed: not sealed to us, or for another key or epoch, or altered.
    #[error("record does not decrypt for this slot")]
    Decrypt,
    /// The signature does not verify under the expected publisher's key.
    #[error("bad signature")]
    Signature,
    /// Signed by a different publisher than expected.
    #[error("record names another publisher")]
    Publisher,
    /// Published under another index.
    #[error("record belongs to another index")]
    Index,
    /// Too old or from the future for this epoch.
    #[error("record is stale or from the future")]
    Stale,
    /// Contact info too long or not UTF-8.
    #[error("bad contact info")]
    ContactInfo,
}

fn signed_message(r: &PresenceRecord, slot: &Slot) -> Vec<u8> {
    let mut m = Vec::with_capacity(160 + r.contact_info.len());
    m.extend_from_slice(b"tarn presence record v1\0");
    m.extend_from_slice(&r.publisher.0);
    m.extend_from_slice(&slot.receiver.0);
    m.extend_from_slice(&slot.epoch.0.to_be_bytes());
    m.push(r.index);
    m.extend_from_slice(&slot.key.0);
    m.extend_from_slice(&r.timestamp_ms.to_be_bytes());
    m.extend_from_slice(&(r.contact_info.len() as u16).to_be_bytes());
    m.extend_from_slice(r.contact_info.as_bytes());
    m
}

fn aead_key(shared: &[u8; 32], eph: &[u8; 32], receiver: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("tarn presence seal v1");
    h.update(shared);
    h.update(eph);
    h.update(receiver);
    *h.finalize().as_bytes()
}

fn aad(slot: &Slot) -> [u8; 41] {
    let mut a = [0u8; 41];
    a[..32].copy_from_slice(&slot.key.0);
    a[32..40].copy_from_slice(&slot.epoch.0.to_be_bytes());
    a[40] = slot.index;
    a
}

/// Seals `record` for `receiver` in `slot`, signed by `publisher`.
pub fn seal(
    publisher: &Identity,
    receiver: &ContactCard,
    slot: &Slot,
    record: &PresenceRecord,
) -> Vec<u8> {
    let mut eph = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut eph);
    seal_with_ephemeral(publisher, receiver, slot, record, eph)
}

/// [`seal`] with a given ephemeral secret (test vectors only: reusing one leaks records).
#[doc(hidden)]
pub fn seal_with_ephemeral(
    publisher: &Identity,
    receiver: &ContactCard,
    slot: &Slot,
    record: &PresenceRecord,
    ephemeral: [u8; 32],
) -> Vec<u8> {
    let info = record.contact_info.as_bytes();
    assert!(info.len() <= MAX_CONTACT_INFO, "contact info too long");
    let sig = publisher.signing.sign(&signed_message(record, slot));
    let mut plain = Vec::with_capacity(107 + info.len());
    plain.extend_from_slice(&record.timestamp_ms.to_be_bytes());
    plain.push(record.index);
    plain.extend_from_slice(&record.publisher.0);
    plain.extend_from_slice(&(info.len() as u16).to_be_bytes());
    plain.extend_from_slice(info);
    plain.extend_from_slice(&sig.to_bytes());
    let eph = StaticSecret::from(ephemeral);
    let eph_pub = XPublic::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&XPublic::from(receiver.agreement_public));
    let key = aead_key(shared.as_bytes(), &eph_pub, &receiver.agreement_public);
    let cipher = ChaCha20Poly1305::new((&key).into());
    // The key is used once (fresh ephemeral per record), so a zero nonce is safe.
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: &plain,
                aad: &aad(slot),
            },
        )
        .expect("ChaCha20-Poly1305 encryption does not fail");
    let mut out = Vec::with_capacity(33 + sealed.len());
    out.push(SEAL_VERSION);
    out.extend_from_slice(&eph_pub);
    out.extend_from_slice(&sealed);
    out
}

/// How fresh a record must be: its timestamp must fall in `[epoch start - grace, epoch end +
/// grace]` of the slot's epoch.
#[derive(Clone, Copy, Debug)]
pub struct Freshness {
    /// Epoch length in seconds.
    pub epoch_secs: u64,
    /// Slack for clock differences and publishing ahead of an epoch, in seconds.
    pub grace_secs: u64,
}

/// Opens a sealed value found in `slot`, expecting it from `publisher`.
pub fn open(
    me: &Identity,
    publisher: &ContactCard,
    slot: &Slot,
    sealed: &[u8],
    fresh: Freshness,
) -> Result<PresenceRecord, OpenError> {
    if sealed.len() < 1 + 32 + 16 || sealed[0] != SEAL_VERSION {
        return Err(OpenError::Malformed);
    }
    let mut eph_pub = [0u8; 32];
    eph_pub.copy_from_slice(&sealed[1..33]);
    let shared = me.agreement.diffie_hellman(&XPublic::from(eph_pub));
    let key = aead_key(shared.as_bytes(), &eph_pub, &me.agreement_public);
    let cipher = ChaCha20Poly1305::new((&key).into());
    let plain = cipher
        .decrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: &sealed[33..],
                aad: &aad(slot),
            },
        )
        .map_err(|_| OpenError::Decrypt)?;
    if plain.len() < 8 + 1 + 32 + 2 + 64 {
        return Err(OpenError::Malformed);
    }
    let timestamp_ms = u64::from_be_bytes(plain[0..8].try_into().expect("8 bytes"));
    let index = plain[8];
    let mut publisher_id = [0u8; 32];
    publisher_id.copy_from_slice(&plain[9..41]);
    let info_len = u16::from_be_bytes([plain[41], plain[42]]) as usize;
    if info_len > MAX_CONTACT_INFO || plain.len() != 43 + info_len + 64 {
        return Err(OpenError::Malformed);
    }
    let contact_info =
        String::from_utf8(plain[43..43 + info_len].to_vec()).map_err(|_| OpenError::ContactInfo)?;
    let sig = Signature::from_slice(&plain[43 + info_len..]).map_err(|_| OpenError::Malformed)?;
    let record = PresenceRecord {
        timestamp_ms,
        contact_info,
        index,
        publisher: UserId(publisher_id),
    };
    if record.publisher != publisher.id() {
        return Err(OpenError::Publisher);
    }
    let vk = VerifyingKey::from_bytes(&publisher.sign_public).map_err(|_| OpenError::Signature)?;
    vk.verify_strict(&signed_message(&record, slot), &sig)
        .map_err(|_| OpenError::Signature)?;
    if record.index != slot.index {
        return Err(OpenError::Index);
    }
    let start = slot.epoch.0.saturating_mul(fresh.epoch_secs) * 1000;
    let end = start + fresh.epoch_secs * 1000;
    let grace = fresh.grace_secs * 1000;
    if record.timestamp_ms + grace < start || record.timestamp_ms > end + grace {
        return Err(OpenError::Stale);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity::from_secrets("alice", [1; 32], [2; 32])
    }
    fn bob() -> Identity {
        Identity::from_secrets("bob", [3; 32], [4; 32])
    }

    fn slot(epoch: u64, index: u8) -> Slot {
        let (a, b) = (alice().id(), bob().id());
        Slot {
            receiver: b,
            epoch: Epoch(epoch),
            index,
            key: presence_key(b"shared secret", &a, &b, Epoch(epoch), index),
        }
    }

    fn record(index: u8) -> PresenceRecord {
        PresenceRecord {
            timestamp_ms: 1000 * 3600 * 100 + 5,
            contact_info: "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvw.onion:7000"
                .into(),
            index,
            publisher: alice().id(),
        }
    }

    const FRESH: Freshness = Freshness {
        epoch_secs: 3600,
        grace_secs: 600,
    };

    #[test]
    fn a_sealed_record_opens_only_for_its_receiver_and_slot() {
        let (a, b) = (alice(), bob());
        let s = slot(100, 2);
        let sealed = seal(&a, &b.card(), &s, &record(2));
        assert_eq!(open(&b, &a.card(), &s, &sealed, FRESH).unwrap(), record(2));
        // Another receiver cannot read it.
        let eve = Identity::from_secrets("eve", [5; 32], [6; 32]);
        assert_eq!(
            open(&eve, &a.card(), &s, &sealed, FRESH),
            Err(OpenError::Decrypt)
        );
        // Copied to another key, epoch or index: it does not open.
        let mut other = s;
        other.key = slot(100, 3).key;
        assert_eq!(
            open(&b, &a.card(), &other, &sealed, FRESH),
            Err(OpenError::Decrypt)
        );
        let mut other = s;
        other.epoch = Epoch(101);
        assert_eq!(
            open(&b, &a.card(), &other, &sealed, FRESH),
            Err(OpenError::Decrypt)
        );
        let mut other = s;
        other.index = 3;
        assert_eq!(
            open(&b, &a.card(), &other, &sealed, FRESH),
            Err(OpenError::Decrypt)
        );
        // Any flipped bit is caught.
        for i in [0, 1, 40, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open(&b, &a.card(), &s, &bad, FRESH).is_err());
        }
    }

    #[test]
    fn a_node_cannot_forge_a_record() {
        // Eve knows the slot and bob's public key: she can seal, but not sign as alice.
        let (a, b) = (alice(), bob());
        let eve = Identity::from_secrets("eve", [5; 32], [6; 32]);
        let s = slot(100, 1);
        let mut r = record(1);
        r.contact_info = "evil.onion:1".into();
        let forged = seal(&eve, &b.card(), &s, &r);
        assert_eq!(
            open(&b, &a.card(), &s, &forged, FRESH),
            Err(OpenError::Signature)
        );
        let mut r2 = r.clone();
        r2.publisher = eve.id();
        let forged = seal(&eve, &b.card(), &s, &r2);
        assert_eq!(
            open(&b, &a.card(), &s, &forged, FRESH),
            Err(OpenError::Publisher)
        );
    }

    #[test]
    fn index_binding_and_freshness_are_checked() {
        let (a, b) = (alice(), bob());
        let s = slot(100, 1);
        // Signed for index 2 but sealed into slot 1.
        let sealed = seal(&a, &b.card(), &s, &record(2));
        assert_eq!(
            open(&b, &a.card(), &s, &sealed, FRESH),
            Err(OpenError::Index)
        );
        let mut old = record(1);
        old.timestamp_ms = 1000 * 3600 * 90;
        let sealed = seal(&a, &b.card(), &s, &old);
        assert_eq!(
            open(&b, &a.card(), &s, &sealed, FRESH),
            Err(OpenError::Stale)
        );
    }
}
