#![doc = include_str!("../README.md")]

mod lookup;
mod routing;
mod state;

pub use lookup::{LookupError, LookupId, LookupOutcome};
pub use routing::{key_digest, Push, Routing};
pub use state::{Action, Command, Event, Ring, RingConfig};
pub use tarn_proto::ring::{NodeRef, RingMessage, RingRequest, RingResponse};

/// Small deterministic PRNG (xorshift64*), seeded by the caller; the only randomness here.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A jitter in `0..max` (0 when max is 0).
    pub(crate) fn below(&mut self, max: u64) -> u64 {
        if max == 0 {
            0
        } else {
            self.next() % max
        }
    }
}
