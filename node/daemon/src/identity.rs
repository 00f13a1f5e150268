//! The node's identity: an ed25519 key pair kept in the data directory. Its ring id is BLAKE3
//! of the public key, so nobody picks a ring position at will.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::SigningKey;
use rand::RngCore;
use tarn_proto::Id;

/// File name of the node key inside the data directory.
pub const KEY_FILE: &str = "node.key";

/// The node's key pair and ring id.
pub struct Identity {
    /// Signing key (node-to-node authentication in the ring issue).
    pub signing: SigningKey,
    /// The public key.
    pub public_key: [u8; 32],
    /// Ring id: BLAKE3 of the public key.
    pub id: Id,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Loading or creating the node key failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("node key {path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file does not hold 32 bytes.
    #[error("node key {path} is corrupt ({len} bytes, expected 32)")]
    Corrupt {
        /// The key file.
        path: String,
        /// Its length.
        len: usize,
    },
}

impl Identity {
    /// Loads the key from `dir`, creating it (mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        let path = dir.join(KEY_FILE);
        let shown = path.display().to_string();
        let io = |source| IdentityError::Io {
            path: shown.clone(),
            source,
        };
        let secret: [u8; 32] = match std::fs::read(&path) {
            Ok(bytes) => bytes
                .as_slice()
                .try_into()
                .map_err(|_| IdentityError::Corrupt {
                    path: shown.clone(),
                    len: bytes.len(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut secret);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                f.write_all(&secret).map_err(io)?;
                f.sync_all().map_err(io)?;
                secret
            }
            Err(e) => return Err(io(e)),
        };
        let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %shown, mode = format!("{mode:o}"), "node key is readable by others");
        }
        Ok(Identity::from_secret(secret))
    }

    /// The identity of a given secret.
    pub fn from_secret(secret: [u8; 32]) -> Identity {
        let signing = SigningKey::from_bytes(&secret);
        let public_key = signing.verifying_key().to_bytes();
        Identity {
            signing,
            public_key,
            id: Id::of_public_key(&public_key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.id, b.id);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path()),
            Err(IdentityError::Corrupt { len: 5, .. })
        ));
    }
}
