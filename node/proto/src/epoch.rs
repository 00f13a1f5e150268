//! Epochs: the seed's "dynamic component" of a presence key.
//!
//! `epoch = floor(unix_seconds / epoch_len)`. The epoch is public and travels in requests;
//! `epoch_len` is part of a network's identity. An epoch's records expire at the end of epoch
//! `e + 1 + grace` (ARCHITECTURE.md, Records).

/// An epoch number.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Default,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch containing `unix_secs` for epochs of `epoch_len_secs` seconds (must be non-zero).
    pub fn at_unix_secs(unix_secs: u64, epoch_len_secs: u64) -> Epoch {
        Epoch(unix_secs / epoch_len_secs)
    }

    /// The epoch containing `unix_ns` nanoseconds since the Unix epoch.
    pub fn at_unix_ns(unix_ns: u64, epoch_len_secs: u64) -> Epoch {
        Epoch(unix_ns / 1_000_000_000 / epoch_len_secs)
    }

    /// First second of this epoch.
    pub fn start_secs(self, epoch_len_secs: u64) -> u64 {
        self.0.saturating_mul(epoch_len_secs)
    }

    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }

    /// `self - n`, stopping at zero.
    pub fn saturating_sub(self, n: u64) -> Epoch {
        Epoch(self.0.saturating_sub(n))
    }

    /// The oldest epoch still live at `now` with `grace` extra epochs: records of epoch `e`
    /// expire at the end of epoch `e + 1 + grace`, so at `now` every `e >= now - 1 - grace` lives.
    pub fn oldest_live(now: Epoch, grace: u64) -> Epoch {
        now.saturating_sub(1 + grace)
    }

    /// Whether a client may write to this epoch at `now`: the window `[now - 1, now + 1]`.
    pub fn in_client_window(self, now: Epoch) -> bool {
        self >= now.saturating_sub(1) && self <= now.next()
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_of_time() {
        assert_eq!(Epoch::at_unix_secs(7199, 3600), Epoch(1));
        assert_eq!(Epoch::at_unix_secs(7200, 3600), Epoch(2));
        assert_eq!(Epoch::at_unix_ns(7_200_000_000_000, 3600), Epoch(2));
        assert_eq!(Epoch(2).start_secs(3600), 7200);
    }

    #[test]
    fn liveness_follows_grace() {
        // Grace 1: epoch 8 expires at the end of epoch 10, so at 10 it lives, at 11 it is gone.
        assert_eq!(Epoch::oldest_live(Epoch(10), 1), Epoch(8));
        assert_eq!(Epoch::oldest_live(Epoch(11), 1), Epoch(9));
        assert_eq!(Epoch::oldest_live(Epoch(1), 1), Epoch(0));
    }

    #[test]
    fn client_window() {
        let now = Epoch(100);
        assert!(Epoch(99).in_client_window(now));
        assert!(Epoch(100).in_client_window(now));
        assert!(Epoch(101).in_client_window(now));
        assert!(!Epoch(98).in_client_window(now));
        assert!(!Epoch(102).in_client_window(now));
        assert!(Epoch(0).in_client_window(Epoch(0)));
    }
}
