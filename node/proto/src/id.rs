//! 256-bit identifiers on the Chord ring and the interval arithmetic the ring needs.
//!
//! An [`Id`] is a point on the ring of size 2^256, read as a big-endian unsigned integer, so the
//! derived byte-wise ordering is the numeric ordering. Node ids are BLAKE3 of the node's public
//! key; record keys ([`Key`]) are BLAKE3-keyed hashes computed by clients.

use std::fmt;

/// A point on the identifier ring (a 256-bit big-endian integer modulo 2^256).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The identifier zero.
    pub const ZERO: Id = Id([0; 32]);

    /// The Id of a public key: BLAKE3 of its bytes, so nobody picks a ring position at will.
    pub fn of_public_key(public_key: &[u8; 32]) -> Id {
        Id(*blake3::hash(public_key).as_bytes())
    }

    /// Whether `self` lies in the open ring interval `(a, b)`.
    ///
    /// When `a == b` the interval is the whole ring except `a` (Chord's convention for a ring of
    /// one member).
    pub fn in_open(&self, a: &Id, b: &Id) -> bool {
        match a.cmp(b) {
            std::cmp::Ordering::Less => a < self && self < b,
            std::cmp::Ordering::Greater => self > a || self < b,
            std::cmp::Ordering::Equal => self != a,
        }
    }

    /// Whether `self` lies in the half-open ring interval `(a, b]`.
    ///
    /// When `a == b` the interval is the whole ring: a lone node is responsible for every key.
    pub fn in_half_open(&self, a: &Id, b: &Id) -> bool {
        match a.cmp(b) {
            std::cmp::Ordering::Less => a < self && self <= b,
            std::cmp::Ordering::Greater => self > a || self <= b,
            std::cmp::Ordering::Equal => true,
        }
    }

    /// Clockwise distance from `self` to `other`: `(other - self) mod 2^256`.
    pub fn distance_to(&self, other: &Id) -> Id {
        let mut out = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let mut d = other.0[i] as i16 - self.0[i] as i16 - borrow;
            borrow = if d < 0 {
                d += 256;
                1
            } else {
                0
            };
            out[i] = d as u8;
        }
        Id(out)
    }

    /// `(self + 2^k) mod 2^256`, the start of the k-th finger interval. `k` must be below 256.
    pub fn add_pow2(&self, k: u32) -> Id {
        assert!(k < 256, "finger index out of range");
        let mut out = self.0;
        let byte = 31 - (k / 8) as usize;
        let mut carry = 1u16 << (k % 8);
        for i in (0..=byte).rev() {
            let s = out[i] as u16 + carry;
            out[i] = s as u8;
            carry = s >> 8;
            if carry == 0 {
                break;
            }
        }
        Id(out)
    }

    /// Lower-case hex of all 32 bytes.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Id, ParseIdError> {
        parse_hex32(s).map(Id)
    }

    /// The first 8 hex digits, enough to tell ring members apart in logs.
    pub fn short(&self) -> String {
        to_hex(&self.0[..4])
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A record key: where on the ring a record lives. Clients derive it (ARCHITECTURE.md, presence
/// key); nodes treat it as opaque and never log it.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Key(pub [u8; 32]);

impl Key {
    /// The ring point this key maps to.
    pub fn id(&self) -> Id {
        Id(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Key, ParseIdError> {
        parse_hex32(s).map(Key)
    }

    /// Lower-case hex of all 32 bytes.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

impl fmt::Debug for Key {
    // Keys are private to their users: Debug output never shows one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 hex digits (32 bytes), got {got_len} characters{}", if *.bad_digit { " with a non-hex digit" } else { "" })]
pub struct ParseIdError {
    got_len: usize,
    bad_digit: bool,
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

fn parse_hex32(s: &str) -> Result<[u8; 32], ParseIdError> {
    let err = |bad_digit| ParseIdError {
        got_len: s.len(),
        bad_digit,
    };
    if s.len() != 64 {
        return Err(err(false));
    }
    let mut out = [0u8; 32];
    let digits = s.as_bytes();
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (digits[2 * i] as char)
            .to_digit(16)
            .ok_or_else(|| err(true))?;
        let lo = (digits[2 * i + 1] as char)
            .to_digit(16)
            .ok_or_else(|| err(true))?;
        *o = (hi * 16 + lo) as u8;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        let mut b = [0u8; 32];
        b[31] = n;
        Id(b)
    }

    #[test]
    fn open_interval_without_wrap() {
        assert!(id(5).in_open(&id(1), &id(10)));
        assert!(!id(1).in_open(&id(1), &id(10)));
        assert!(!id(10).in_open(&id(1), &id(10)));
        assert!(!id(11).in_open(&id(1), &id(10)));
    }

    #[test]
    fn open_interval_with_wrap() {
        assert!(id(250).in_open(&id(200), &id(10)));
        assert!(id(5).in_open(&id(200), &id(10)));
        assert!(!id(100).in_open(&id(200), &id(10)));
        assert!(!id(200).in_open(&id(200), &id(10)));
    }

    #[test]
    fn degenerate_intervals_cover_the_ring() {
        assert!(id(7).in_open(&id(3), &id(3)));
        assert!(!id(3).in_open(&id(3), &id(3)));
        assert!(id(3).in_half_open(&id(3), &id(3)));
        assert!(id(9).in_half_open(&id(3), &id(3)));
    }

    #[test]
    fn half_open_includes_end_only() {
        assert!(id(10).in_half_open(&id(1), &id(10)));
        assert!(!id(1).in_half_open(&id(1), &id(10)));
        assert!(id(10).in_half_open(&id(200), &id(10)));
    }

    #[test]
    fn distance_wraps() {
        assert_eq!(id(1).distance_to(&id(3)), id(2));
        let d = id(3).distance_to(&id(1));
        assert_eq!(d.0[31], 254);
        assert!(d.0[..31].iter().all(|b| *b == 0xff));
    }

    #[test]
    fn add_pow2_carries_and_wraps() {
        assert_eq!(id(0).add_pow2(0), id(1));
        assert_eq!(id(255).add_pow2(0).0[30], 1);
        let top = Id([0xff; 32]).add_pow2(0);
        assert_eq!(top, Id::ZERO);
        let mut half = [0u8; 32];
        half[0] = 0x80;
        assert_eq!(Id::ZERO.add_pow2(255), Id(half));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let i = Id([0xab; 32]);
        assert_eq!(Id::from_hex(&i.to_hex()).unwrap(), i);
        assert!(Id::from_hex("abc").is_err());
        assert!(Id::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn key_debug_hides_bytes() {
        assert_eq!(format!("{:?}", Key([7; 32])), "Key(..)");
    }
}
