//! Profiles on disk: the user's identity and contacts (seed §5.1).
//!
//! A profile is a directory:
//! - `identity.key` (mode 0600): the two 32-byte secrets, either plain (`tarn-key-v1` header)
//!   or sealed under a passphrase (`tarn-key-v1-pass`: Argon2id-derived key, ChaCha20-Poly1305);
//! - `profile.toml`: the display name and the contacts — each a card string, a local name and
//!   its common secrets. Rotating a contact's secret keeps the previous one valid for an
//!   overlap, so both sides can move at their own pace without missing each other.
//!
//! Writes go to a temporary file that is renamed over the old one, so a crash never leaves a
//! half-written profile.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand::RngCore;

use crate::identity::{CardError, ContactCard, Identity, UserId};

const KEY_FILE: &str = "identity.key";
const PROFILE_FILE: &str = "profile.toml";
const PLAIN_MAGIC: &[u8] = b"tarn-key-v1\n";
const PASS_MAGIC: &[u8] = b"tarn-key-v1-pass\n";

/// Why a profile could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is not in the expected format.
    #[error("{path}: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The key is sealed under a passphrase and none (or a wrong one) was given.
    #[error("the identity key is protected by a passphrase, and the one given does not open it")]
    Passphrase,
    /// A profile exists already.
    #[error("a profile exists in {0}")]
    Exists(PathBuf),
    /// A contact card did not parse.
    #[error(transparent)]
    Card(#[from] CardError),
    /// No contact by that name.
    #[error("no contact named {0:?}")]
    NoContact(String),
}

/// One common secret and when it took effect.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Secret {
    /// The secret, hex.
    pub secret: String,
    /// Unix seconds from which it is the current one.
    pub since_unix: u64,
}

/// A contact as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContactEntry {
    /// The local name.
    pub name: String,
    /// The contact's card string.
    pub card: String,
    /// Common secrets, oldest first; the last is current.
    pub secrets: Vec<Secret>,
}

/// A contact ready for use.
#[derive(Clone, Debug)]
pub struct Contact {
    /// The local name.
    pub name: String,
    /// Its card.
    pub card: ContactCard,
    /// Secrets valid now, current first (the previous one during an overlap).
    pub secrets: Vec<Vec<u8>>,
}

impl Contact {
    /// The contact's user id.
    pub fn id(&self) -> UserId {
        self.card.id()
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ProfileFile {
    name: String,
    #[serde(default, rename = "contact")]
    contacts: Vec<ContactEntry>,
}

/// An open profile.
#[derive(Debug)]
pub struct Profile {
    dir: PathBuf,
    /// The user's identity.
    pub identity: Identity,
    file: ProfileFile,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProfileError + '_ {
    move |source| ProfileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ProfileError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn passphrase_key(passphrase: &str, salt: &[u8]) -> Result<[u8; 32], ProfileError> {
    let mut key = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(passphrase.as_bytes(), salt, &mut key)
        .map_err(|_| ProfileError::Passphrase)?;
    Ok(key)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Profile {
    /// Creates a profile with a fresh identity in `dir` (which must not hold one).
    pub fn create(
        dir: &Path,
        name: &str,
        passphrase: Option<&str>,
    ) -> Result<Profile, ProfileError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key_path = dir.join(KEY_FILE);
        if key_path.exists() {
            return Err(ProfileError::Exists(dir.to_path_buf()));
        }
        let identity = Identity::generate(name);
        let mut secrets = Vec::with_capacity(64);
        secrets.extend_from_slice(&identity.signing.to_bytes());
        secrets.extend_from_slice(&identity.agreement.to_bytes());
        let bytes = match passphrase {
            None => [PLAIN_MAGIC, &secrets].concat(),
            Some(p) => {
                let mut salt = [0u8; 16];
                rand::rngs::OsRng.fill_bytes(&mut salt);
                let key = passphrase_key(p, &salt)?;
                let sealed = ChaCha20Poly1305::new((&key).into())
                    .encrypt(Nonce::from_slice(&[0u8; 12]), secrets.as_slice())
                    .map_err(|_| ProfileError::Passphrase)?;
                [PASS_MAGIC, &salt, &sealed].concat()
            }
        };
        write_atomic(&key_path, &bytes, 0o600)?;
        let profile = Profile {
            dir: dir.to_path_buf(),
            identity,
            file: ProfileFile {
                name: name.to_string(),
                contacts: Vec::new(),
            },
        };
        profile.save()?;
        Ok(profile)
    }

    /// Opens the profile in `dir`.
    pub fn open(dir: &Path, passphrase: Option<&str>) -> Result<Profile, ProfileError> {
        let key_path = dir.join(KEY_FILE);
        let bytes = std::fs::read(&key_path).map_err(io(&key_path))?;
        let bad = |detail: &str| ProfileError::Format {
            path: key_path.clone(),
            detail: detail.to_string(),
        };
        let secrets: Vec<u8> = if let Some(rest) = bytes.strip_prefix(PLAIN_MAGIC) {
            rest.to_vec()
        } else if let Some(rest) = bytes.strip_prefix(PASS_MAGIC) {
            let p = passphrase.ok_or(ProfileError::Passphrase)?;
            if rest.len() < 16 {
                return Err(bad("truncated"));
            }
            let key = passphrase_key(p, &rest[..16])?;
            ChaCha20Poly1305::new((&key).into())
                .decrypt(Nonce::from_slice(&[0u8; 12]), &rest[16..])
                .map_err(|_| ProfileError::Passphrase)?
        } else {
            return Err(bad("not a tarn identity key"));
        };
        if secrets.len() != 64 {
            return Err(bad("wrong length"));
        }
        let profile_path = dir.join(PROFILE_FILE);
        let text = std::fs::read_to_string(&profile_path).map_err(io(&profile_path))?;
        let file: ProfileFile = toml::from_str(&text).map_err(|e| ProfileError::Format {
            path: profile_path.clone(),
            detail: e.message().to_string(),
        })?;
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        a.copy_from_slice(&secrets[..32]);
        b.copy_from_slice(&secrets[32..]);
        Ok(Profile {
            dir: dir.to_path_buf(),
            identity: Identity::from_secrets(&file.name, a, b),
            file,
        })
    }

    fn save(&self) -> Result<(), ProfileError> {
        let text = toml::to_string(&self.file).map_err(|e| ProfileError::Format {
            path: self.dir.join(PROFILE_FILE),
            detail: e.to_string(),
        })?;
        write_atomic(&self.dir.join(PROFILE_FILE), text.as_bytes(), 0o600)
    }

    /// Adds (or replaces) a contact under a local name with its first common secret.
    pub fn add_contact(
        &mut self,
        name: &str,
        card: &str,
        secret: &[u8],
    ) -> Result<(), ProfileError> {
        let parsed = ContactCard::decode(card)?;
        self.file.contacts.retain(|c| {
            c.name != name && ContactCard::decode(&c.card).map(|k| k.id()) != Ok(parsed.id())
        });
        self.file.contacts.push(ContactEntry {
            name: name.to_string(),
            card: parsed.encode(),
            secrets: vec![Secret {
                secret: hex::encode(secret),
                since_unix: unix_now(),
            }],
        });
        self.save()
    }

    /// Makes `secret` the contact's current secret; the previous one stays valid for
    /// `overlap_secs`, older ones are forgotten.
    pub fn rotate_secret(&mut self, name: &str, secret: &[u8]) -> Result<(), ProfileError> {
        let entry = self
            .file
            .contacts
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| ProfileError::NoContact(name.to_string()))?;
        let keep = entry.secrets.len().saturating_sub(1);
        entry.secrets.drain(..keep);
        entry.secrets.push(Secret {
            secret: hex::encode(secret),
            since_unix: unix_now(),
        });
        self.save()
    }

    /// The contacts, with the secrets valid at `now_unix` (the current one, and the previous
    /// one while it is within `overlap_secs` of the rotation).
    pub fn contacts(&self, now_unix: u64, overlap_secs: u64) -> Result<Vec<Contact>, ProfileError> {
        let mut out = Vec::new();
        for c in &self.file.contacts {
            let card = ContactCard::decode(&c.card)?;
            let mut secrets = Vec::new();
            if let Some(cur) = c.secrets.last() {
                secrets.push(hex::decode(&cur.secret).unwrap_or_default());
                if c.secrets.len() >= 2 && now_unix < cur.since_unix + overlap_secs {
                    let prev = &c.secrets[c.secrets.len() - 2];
                    secrets.push(hex::decode(&prev.secret).unwrap_or_default());
                }
            }
            out.push(Contact {
                name: c.name.clone(),
                card,
                secrets,
            });
        }
        Ok(out)
    }

    /// The profile directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn profiles_round_trip_with_private_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::create(dir.path(), "alice", None).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let q = Profile::open(dir.path(), None).unwrap();
        assert_eq!(q.identity.id(), p.identity.id());
        assert!(matches!(
            Profile::create(dir.path(), "again", None),
            Err(ProfileError::Exists(_))
        ));
    }

    #[test]
    fn a_passphrase_protects_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::create(dir.path(), "bob", Some("hunter2")).unwrap();
        assert!(matches!(
            Profile::open(dir.path(), None),
            Err(ProfileError::Passphrase)
        ));
        assert!(matches!(
            Profile::open(dir.path(), Some("hunter3")),
            Err(ProfileError::Passphrase)
        ));
        let q = Profile::open(dir.path(), Some("hunter2")).unwrap();
        assert_eq!(q.identity.id(), p.identity.id());
        let raw = std::fs::read(dir.path().join(KEY_FILE)).unwrap();
        let secret = p.identity.signing.to_bytes();
        assert!(
            !raw.windows(32).any(|w| w == secret),
            "the key is stored sealed"
        );
    }

    #[test]
    fn rotated_secrets_overlap_then_expire() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Profile::create(dir.path(), "alice", None).unwrap();
        let bob = Identity::generate("bob");
        p.add_contact("bob", &bob.card().encode(), b"first")
            .unwrap();
        p.rotate_secret("bob", b"second").unwrap();
        let now = unix_now();
        let c = &p.contacts(now, 3600).unwrap()[0];
        assert_eq!(c.secrets, vec![b"second".to_vec(), b"first".to_vec()]);
        let later = &p.contacts(now + 7200, 3600).unwrap()[0];
        assert_eq!(later.secrets, vec![b"second".to_vec()]);
        let reopened = Profile::open(dir.path(), None).unwrap();
        assert_eq!(reopened.contacts(now, 3600).unwrap()[0].id(), bob.id());
        assert!(matches!(
            p.rotate_secret("carol", b"x"),
            Err(ProfileError::NoContact(_))
        ));
    }
}
