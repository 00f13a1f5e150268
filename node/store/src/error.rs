//! Store errors: what was being done, with a kind callers can match on.

use tarn_proto::Epoch;

/// A store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The value is larger than `max_value_bytes`.
    #[error("value of {len} bytes exceeds max_value_bytes = {max}")]
    TooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// Accepting the value would exceed `max_total_bytes`.
    #[error("store quota of {quota} bytes exhausted")]
    OverQuota {
        /// The quota.
        quota: u64,
    },
    /// The epoch has expired (is older than the oldest live epoch); no partition is created.
    #[error("epoch {epoch} has expired (oldest live epoch is {oldest_live})")]
    Expired {
        /// The epoch asked for.
        epoch: Epoch,
        /// The oldest epoch the store keeps.
        oldest_live: Epoch,
    },
    /// The storage engine failed while doing `op`.
    #[error("storage engine failed during {op}: {detail}")]
    Engine {
        /// The operation (put, get, drop, open, sync, scan, create partition).
        op: &'static str,
        /// The engine's message.
        detail: String,
    },
    /// Stored bytes did not decode.
    #[error("stored value set is corrupt at byte {offset}")]
    Corrupt {
        /// Where decoding stopped.
        offset: usize,
    },
}

/// Coarse classification of a [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is unacceptable (too large, expired epoch); retrying will not help.
    Rejected,
    /// The store is full.
    Full,
    /// The engine or the data on disk is broken.
    Internal,
}

impl StoreError {
    /// Classifies this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::TooLarge { .. } | StoreError::Expired { .. } => ErrorKind::Rejected,
            StoreError::OverQuota { .. } => ErrorKind::Full,
            StoreError::Engine { .. } | StoreError::Corrupt { .. } => ErrorKind::Internal,
        }
    }

    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
    pub(crate) fn engine(op: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Engine {
            op,
            detail: e.to_string(),
        }
    }
}

impl From<crate::valueset::CorruptValueSet> for StoreError {
    fn from(e: crate::valueset::CorruptValueSet) -> StoreError {
        StoreError::Corrupt { offset: e.offset }
    }
}
