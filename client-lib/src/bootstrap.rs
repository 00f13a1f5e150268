//! Signed bootstrap lists: the addresses and public keys of ring members, signed by an operator
//! key that clients pin. One lying node cannot then hand a client only its accomplices: the
//! client starts from nodes the operator vouched for, and checks each node's key at the
//! encrypted channel.
//!
//! The file is TOML, readable and diffable:
//!
//! ```toml
//! network = "tarn-dev"
//! signed_at_unix = 1795000000
//! operator_key = "…64 hex…"
//! signature = "…128 hex…"
//!
//! [[node]]
//! address = "192.0.2.10:7400"
//! public_key = "…64 hex…"
//! ```
//!
//! The signature covers a canonical encoding (BLAKE3 in derive-key mode over the network,
//! time and every entry in order), so reformatting the file does not break it but changing any
//! value does.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use tarn_proto::Id;

/// One vouched-for node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootstrapNode {
    /// `host:port`.
    pub address: String,
    /// The node's ed25519 public key, hex (its ring id is BLAKE3 of it).
    pub public_key: String,
}

/// A bootstrap list as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootstrapList {
    /// The network the nodes belong to.
    pub network: String,
    /// When the operator signed it (Unix seconds).
    pub signed_at_unix: u64,
    /// The operator's ed25519 public key, hex.
    pub operator_key: String,
    /// The operator's signature, hex.
    pub signature: String,
    /// The nodes.
    #[serde(rename = "node", default)]
    pub nodes: Vec<BootstrapNode>,
}

/// A node from a verified list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VouchedNode {
    /// `host:port`.
    pub address: String,
    /// Its public key.
    pub public_key: [u8; 32],
    /// Its ring id.
    pub id: Id,
}

/// Why a bootstrap list is refused.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The file is not a bootstrap list.
    #[error("not a bootstrap list: {0}")]
    Format(String),
    /// It was signed by another operator than the one pinned.
    #[error("signed by operator {found}, expected {expected}")]
    WrongOperator {
        /// The key in the file.
        found: String,
        /// The pinned key.
        expected: String,
    },
    /// The signature does not match the contents.
    #[error("the signature does not match the list (altered or corrupt)")]
    BadSignature,
    /// It names another network.
    #[error("the list is for network {found:?}, not {expected:?}")]
    WrongNetwork {
        /// The list's network.
        found: String,
        /// The expected one.
        expected: String,
    },
    /// It holds no node.
    #[error("the list names no node")]
    Empty,
}

fn key32(hex_str: &str, what: &str) -> Result<[u8; 32], BootstrapError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out)
        .map_err(|e| BootstrapError::Format(format!("{what}: {e}")))?;
    Ok(out)
}

fn digest(network: &str, signed_at: u64, nodes: &[BootstrapNode]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("tarn bootstrap list v1");
    h.update(&(network.len() as u64).to_le_bytes());
    h.update(network.as_bytes());
    h.update(&signed_at.to_le_bytes());
    h.update(&(nodes.len() as u64).to_le_bytes());
    for n in nodes {
        h.update(&(n.address.len() as u64).to_le_bytes());
        h.update(n.address.as_bytes());
        h.update(n.public_key.to_ascii_lowercase().as_bytes());
    }
    *h.finalize().as_bytes()
}

impl BootstrapList {
    /// Signs `nodes` for `network` with the operator's key.
    pub fn sign(
        operator: &SigningKey,
        network: &str,
        signed_at_unix: u64,
        nodes: Vec<BootstrapNode>,
    ) -> BootstrapList {
        let d = digest(network, signed_at_unix, &nodes);
        BootstrapList {
            network: network.to_string(),
            signed_at_unix,
            operator_key: hex::encode(operator.verifying_key().to_bytes()),
            signature: hex::encode(operator.sign(&d).to_bytes()),
            nodes,
        }
    }

    /// Parses the TOML text of a list (not yet verified).
    pub fn parse(text: &str) -> Result<BootstrapList, BootstrapError> {
        toml::from_str(text).map_err(|e| BootstrapError::Format(e.message().to_string()))
    }

    /// The TOML text of the list.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a bootstrap list serializes")
    }

    /// Verifies the list against the pinned operator key and network, and returns its nodes.
    pub fn verify(
        &self,
        operator: &[u8; 32],
        network: &str,
    ) -> Result<Vec<VouchedNode>, BootstrapError> {
        let found = key32(&self.operator_key, "operator_key")?;
        if &found != operator {
            return Err(BootstrapError::WrongOperator {
                found: self.operator_key.clone(),
                expected: hex::encode(operator),
            });
        }
        let key = VerifyingKey::from_bytes(operator)
            .map_err(|e| BootstrapError::Format(format!("operator_key: {e}")))?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut sig)
            .map_err(|e| BootstrapError::Format(format!("signature: {e}")))?;
        let d = digest(&self.network, self.signed_at_unix, &self.nodes);
        key.verify(&d, &Signature::from_bytes(&sig))
            .map_err(|_| BootstrapError::BadSignature)?;
        if self.network != network {
            return Err(BootstrapError::WrongNetwork {
                found: self.network.clone(),
                expected: network.to_string(),
            });
        }
        if self.nodes.is_empty() {
            return Err(BootstrapError::Empty);
        }
        self.nodes
            .iter()
            .map(|n| {
                let public_key = key32(&n.public_key, "public_key")?;
                Ok(VouchedNode {
                    address: n.address.clone(),
                    public_key,
                    id: Id::of_public_key(&public_key),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<BootstrapNode> {
        (1..=3u8)
            .map(|i| BootstrapNode {
                address: format!("192.0.2.{i}:7400"),
                public_key: hex::encode(
                    SigningKey::from_bytes(&[i; 32]).verifying_key().to_bytes(),
                ),
            })
            .collect()
    }

    #[test]
    fn a_signed_list_verifies_after_a_round_trip_through_toml() {
        let op = SigningKey::from_bytes(&[9; 32]);
        let list = BootstrapList::sign(&op, "tarn-dev", 1_795_000_000, nodes());
        let back = BootstrapList::parse(&list.to_toml()).unwrap();
        let vouched = back
            .verify(&op.verifying_key().to_bytes(), "tarn-dev")
            .unwrap();
        assert_eq!(vouched.len(), 3);
        assert_eq!(
            vouched[0].id,
            Id::of_public_key(&SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes())
        );
    }

    #[test]
    fn altered_lists_and_other_operators_are_refused() {
        let op = SigningKey::from_bytes(&[9; 32]);
        let pinned = op.verifying_key().to_bytes();
        let list = BootstrapList::sign(&op, "tarn-dev", 1, nodes());
        let mut swapped = list.clone();
        swapped.nodes[1].address = "203.0.113.66:7400".into();
        assert!(matches!(
            swapped.verify(&pinned, "tarn-dev"),
            Err(BootstrapError::BadSignature)
        ));
        let mut dropped = list.clone();
        dropped.nodes.pop();
        assert!(matches!(
            dropped.verify(&pinned, "tarn-dev"),
            Err(BootstrapError::BadSignature)
        ));
        let other = SigningKey::from_bytes(&[8; 32]);
        let forged = BootstrapList::sign(&other, "tarn-dev", 1, nodes());
        assert!(matches!(
            forged.verify(&pinned, "tarn-dev"),
            Err(BootstrapError::WrongOperator { .. })
        ));
        assert!(matches!(
            list.verify(&pinned, "elsewhere"),
            Err(BootstrapError::WrongNetwork { .. })
        ));
        assert!(matches!(
            BootstrapList::parse("network = 3"),
            Err(BootstrapError::Format(_))
        ));
    }
}
