//! Iterative lookups as explicit state machines with deadlines.

use std::collections::HashSet;

use tarn_proto::ring::NodeRef;
use tarn_proto::Id;

/// Identifies a lookup started with [`crate::Command::Lookup`].
pub type LookupId = u64;

/// Why a lookup failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupError {
    /// The deadline passed.
    Timeout,
    /// Every candidate failed to answer.
    NoCandidates,
    /// Too many hops (a routing loop or a ring in flux).
    TooManyHops,
}

/// A finished lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupOutcome {
    /// The responsible node first, then its successors (the replica set), or the error.
    pub result: Result<Vec<NodeRef>, LookupError>,
    /// Remote hops taken (FindStep requests answered).
    pub hops: u32,
}

/// Why a lookup runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Requested by the caller.
    User(LookupId),
    /// Finding our own successor to join.
    Join,
    /// Fixing finger `i`.
    Finger(usize),
    /// Checking, through a node seen before, whether another ring holds a closer successor.
    Merge,
}

#[derive(Debug)]
pub(crate) struct Lookup {
    pub(crate) target: Id,
    pub(crate) purpose: Purpose,
    pub(crate) deadline: u64,
    pub(crate) hops: u32,
    /// Nodes to try, best first.
    pub(crate) candidates: Vec<NodeRef>,
    /// Addresses already asked (never asked twice).
    pub(crate) asked: HashSet<String>,
    /// Addresses that answered (so are alive).
    pub(crate) answered: HashSet<String>,
    /// Verifying a found successor list: the list and the index of the entry asked next. The
    /// first entry that answers is the live successor (dead entries before it are gone).
    pub(crate) verify: Option<(Vec<NodeRef>, usize)>,
}

impl Lookup {
    /// Takes the best candidate not asked yet.
    pub(crate) fn next_candidate(&mut self) -> Option<NodeRef> {
        while !self.candidates.is_empty() {
            let c = self.candidates.remove(0);
            if self.asked.insert(c.addr.clone()) {
                return Some(c);
            }
        }
        None
    }

    /// Puts fresh candidates in front of the remaining ones (kept as fallbacks).
    pub(crate) fn prepend(&mut self, fresh: Vec<NodeRef>) {
        let mut merged: Vec<NodeRef> = fresh
            .into_iter()
            .filter(|c| !self.asked.contains(&c.addr))
            .collect();
        for c in self.candidates.drain(..) {
            if !merged.iter().any(|m| m.addr == c.addr) {
                merged.push(c);
            }
        }
        self.candidates = merged;
    }
}
