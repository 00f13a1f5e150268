//! A user's identity and contacts (seed §5.1).
//!
//! A user holds an ed25519 signing key (records and sessions are signed with it) and an X25519
//! key (records are sealed to it). The user id is BLAKE3 of the ed25519 public key. A
//! [`ContactCard`] carries the id and both public keys as a compact, copy-pasteable string
//! with a checksum, exchanged out of band together with a common secret.

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::RngCore;
use x25519_dalek::{PublicKey as XPublic, StaticSecret};

/// A user id: BLAKE3 of the user's ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub [u8; 32]);

impl UserId {
    /// The id of the user with this ed25519 public key.
    pub fn of(sign_public: &[u8; 32]) -> UserId {
        UserId(*blake3::hash(sign_public).as_bytes())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserId({})", &self.to_hex()[..12])
    }
}

/// A user's private keys. Never logged (the `Debug` form shows only the id).
#[derive(Clone)]
pub struct Identity {
    /// Signs records and session handshakes.
    pub signing: SigningKey,
    /// Opens records sealed to this user; the static key of client-to-client sessions.
    pub agreement: StaticSecret,
    /// The public half of `agreement` (computed once).
    pub agreement_public: [u8; 32],
    /// The display name the user chose (not authenticated; contacts name each other locally).
    pub name: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id())
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh identity.
    pub fn generate(name: &str) -> Identity {
        let mut rng = rand::rngs::OsRng;
        let mut s = [0u8; 32];
        rng.fill_bytes(&mut s);
        let signing = SigningKey::from_bytes(&s);
        rng.fill_bytes(&mut s);
        Identity::from_secrets(name, signing.to_bytes(), s)
    }

    /// An identity from its two 32-byte secrets (profiles, test vectors).
    pub fn from_secrets(name: &str, signing: [u8; 32], agreement: [u8; 32]) -> Identity {
        let agreement = StaticSecret::from(agreement);
        Identity {
            signing: SigningKey::from_bytes(&signing),
            agreement_public: XPublic::from(&agreement).to_bytes(),
            agreement,
            name: name.to_string(),
        }
    }

    /// The user id.
    pub fn id(&self) -> UserId {
        UserId::of(&self.signing.verifying_key().to_bytes())
    }

    /// The card to hand to contacts.
    pub fn card(&self) -> ContactCard {
        ContactCard {
            name: self.name.clone(),
            sign_public: self.signing.verifying_key().to_bytes(),
            agreement_public: self.agreement_public,
        }
    }
}

/// What a contact needs to know about a user: its keys (and a suggested name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactCard {
    /// The name the user suggests (the receiver may rename).
    pub name: String,
    /// ed25519 public key.
    pub sign_public: [u8; 32],
    /// X25519 public key.
    pub agreement_public: [u8; 32],
}

/// Why a contact card string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    /// It does not start with the card prefix.
    #[error("not a tarn contact card (expected it to start with \"tarn1:\")")]
    Prefix,
    /// Not valid base32 or the wrong length.
    #[error("contact card is malformed: {0}")]
    Malformed(String),
    /// The checksum does not match (a typo or a truncated copy).
    #[error("contact card checksum mismatch (mistyped or truncated?)")]
    Checksum,
    /// The ed25519 key is not a valid point.
    #[error("contact card holds an invalid signing key")]
    BadKey,
}

const CARD_PREFIX: &str = "tarn1:";
const CARD_VERSION: u8 = 1;

impl ContactCard {
    /// The user id of this card.
    pub fn id(&self) -> UserId {
        UserId::of(&self.sign_public)
    }

    /// The compact string form: `tarn1:` + lower-case RFC 4648 base32 (no padding) of
    /// `version(1) ‖ sign_public(32) ‖ agreement_public(32) ‖ name_len(1) ‖ name ‖
    /// checksum(4)`, the checksum being the first 4 bytes of BLAKE3 over everything before it.
    pub fn encode(&self) -> String {
        let name = truncate_utf8(&self.name, 64);
        let mut b = Vec::with_capacity(70 + name.len());
        b.push(CARD_VERSION);
        b.extend_from_slice(&self.sign_public);
        b.extend_from_slice(&self.agreement_public);
        b.push(name.len() as u8);
        b.extend_from_slice(name.as_bytes());
        let sum = blake3::hash(&b);
        b.extend_from_slice(&sum.as_bytes()[..4]);
        format!(
            "{CARD_PREFIX}{}",
            data_encoding::BASE32_NOPAD.encode(&b).to_ascii_lowercase()
        )
    }

    /// Parses a card string (surrounding whitespace and case are ignored).
    pub fn decode(s: &str) -> Result<ContactCard, CardError> {
        let s = s.trim();
        let body = s
            .strip_prefix(CARD_PREFIX)
            .or_else(|| s.strip_prefix("TARN1:"))
            .ok_or(CardError::Prefix)?;
        let b = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|e| CardError::Malformed(e.to_string()))?;
        if b.len() < 1 + 32 + 32 + 1 + 4 {
            return Err(CardError::Malformed("too short".into()));
        }
        let (data, sum) = b.split_at(b.len() - 4);
        if &blake3::hash(data).as_bytes()[..4] != sum {
            return Err(CardError::Checksum);
        }
        if data[0] != CARD_VERSION {
            return Err(CardError::Malformed(format!("version {}", data[0])));
        }
        let name_len = data[65] as usize;
        if data.len() != 66 + name_len {
            return Err(CardError::Malformed("length".into()));
        }
        let name = String::from_utf8(data[66..].to_vec())
            .map_err(|_| CardError::Malformed("name is not UTF-8".into()))?;
        let mut sign_public = [0u8; 32];
        sign_public.copy_from_slice(&data[1..33]);
        let mut agreement_public = [0u8; 32];
        agreement_public.copy_from_slice(&data[33..65]);
        VerifyingKey::from_bytes(&sign_public).map_err(|_| CardError::BadKey)?;
        Ok(ContactCard {
            name,
            sign_public,
            agreement_public,
        })
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_round_trip_and_catch_typos() {
        let id = Identity::from_secrets("alice", [1; 32], [2; 32]);
        let card = id.card();
        let s = card.encode();
        assert!(s.starts_with("tarn1:"));
        assert_eq!(ContactCard::decode(&s).unwrap(), card);
        assert_eq!(
            ContactCard::decode(&format!(
                "  {}\n",
                s.to_uppercase().replace("TARN1:", "tarn1:")
            ))
            .unwrap(),
            card
        );
        assert_eq!(card.id(), id.id());
        // One changed character: the checksum catches it.
        let mut typo: Vec<char> = s.chars().collect();
        let i = typo.len() / 2;
        typo[i] = if typo[i] == 'a' { 'b' } else { 'a' };
        let typo: String = typo.into_iter().collect();
        assert!(ContactCard::decode(&typo).is_err());
        assert!(ContactCard::decode(&s[..s.len() - 3]).is_err());
        assert_eq!(ContactCard::decode("hello"), Err(CardError::Prefix));
    }
}
