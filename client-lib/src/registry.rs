//! Registry operations (seed §6.1, §6.2) and time (§6.3) over a set of node connections.
//!
//! Publishing for a contact inserts one sealed record per index slot, each through a different
//! node (slot `i` goes through node `(start + i) mod n`), retrying a FAILED or unreachable node
//! on the next one; retrieving asks each slot through a different node and keeps the newest
//! record that opens. Every call has a deadline (the connections' own) and a bounded number of
//! attempts. Time: the median offset over several nodes' TIME_SYNC, so one lying node cannot
//! move the client's epoch.

use std::sync::Arc;

use tarn_proto::msg::{InsertReply, RetrieveReply};
use tarn_proto::Epoch;

use crate::identity::Identity;
use crate::node::NodeClient;
use crate::profile::Contact;
use crate::record::{open, presence_key, seal, Freshness, PresenceRecord, Slot, DEFAULT_INDICES};

/// What a publish achieved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Index slots stored.
    pub stored: u8,
    /// Slots that no node would store.
    pub failed: u8,
}

/// The client's view of the registry: connections to a few nodes.
#[derive(Debug, Clone)]
pub struct Registry {
    nodes: Vec<Arc<NodeClient>>,
    /// Index slots per contact and epoch.
    pub indices: u8,
    /// Freshness rules for opening records.
    pub fresh: Freshness,
}

/// A corrected clock: the median of several nodes' offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEstimate {
    /// Node time minus local time, in milliseconds (median over the nodes that answered).
    pub offset_ms: i64,
    /// Nodes that answered.
    pub answers: usize,
    /// The network's epoch length.
    pub epoch_secs: u64,
}

impl TimeEstimate {
    /// Corrected Unix milliseconds for a local time.
    pub fn corrected_ms(&self, local_ms: u64) -> u64 {
        (local_ms as i64 + self.offset_ms).max(0) as u64
    }

    /// The epoch at a local time.
    pub fn epoch(&self, local_ms: u64) -> Epoch {
        Epoch(self.corrected_ms(local_ms) / 1000 / self.epoch_secs.max(1))
    }
}

/// Unix milliseconds of the local clock.
pub fn local_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Registry {
    /// A registry over these connections (at least one).
    pub fn new(nodes: Vec<Arc<NodeClient>>, fresh: Freshness) -> Registry {
        Registry {
            nodes,
            indices: DEFAULT_INDICES,
            fresh,
        }
    }

    /// The node connections, in the order they were given.
    pub fn nodes(&self) -> &[Arc<NodeClient>] {
        &self.nodes
    }

    /// Replaces connection `i` (a redial after it closed).
    pub fn replace_node(&mut self, i: usize, node: Arc<NodeClient>) {
        if let Some(slot) = self.nodes.get_mut(i) {
            *slot = node;
        }
    }

    /// TIME_SYNC from every node; the median offset (one liar cannot move it).
    pub async fn sync_time(&self) -> Option<TimeEstimate> {
        let mut offsets = Vec::new();
        let mut epoch_secs = 0;
        for n in &self.nodes {
            let before = local_ms();
            if let Ok(t) = n.time().await {
                let after = local_ms();
                let mid = (before + after) / 2;
                offsets.push((t.unix_ns / 1_000_000) as i64 - mid as i64);
                epoch_secs = t.epoch_len_secs;
            }
        }
        if offsets.is_empty() {
            return None;
        }
        offsets.sort_unstable();
        let m = offsets.len();
        let offset_ms = if m % 2 == 1 {
            offsets[m / 2]
        } else {
            (offsets[m / 2 - 1] + offsets[m / 2]) / 2
        };
        Some(TimeEstimate {
            offset_ms,
            answers: m,
            epoch_secs,
        })
    }

    fn slot(
        me: &Identity,
        contact: &Contact,
        secret: &[u8],
        epoch: Epoch,
        index: u8,
        publisher_is_me: bool,
    ) -> Slot {
        let (publisher, receiver) = if publisher_is_me {
            (me.id(), contact.id())
        } else {
            (contact.id(), me.id())
        };
        Slot {
            receiver,
            epoch,
            index,
            key: presence_key(secret, &publisher, &receiver, epoch, index),
        }
    }

    /// Publishes `contact_info` for `contact` in `epoch`: one sealed record per slot, each
    /// through a different node, a failure retried on the next nodes.
    pub async fn publish(
        &self,
        me: &Identity,
        contact: &Contact,
        epoch: Epoch,
        contact_info: &str,
        now_ms: u64,
    ) -> PublishReport {
        let mut report = PublishReport::default();
        let Some(secret) = contact.secrets.first() else {
            report.failed = self.indices;
            return report;
        };
        let n = self.nodes.len();
        let start = (contact.id().0[0] as usize) % n.max(1);
        for index in 0..self.indices {
            let slot = Registry::slot(me, contact, secret, epoch, index, true);
            let record = PresenceRecord {
                timestamp_ms: now_ms,
                contact_info: contact_info.to_string(),
                index,
                publisher: me.id(),
            };
            let value = seal(me, &contact.card, &slot, &record);
            let mut ok = false;
            for attempt in 0..n {
                let node = &self.nodes[(start + index as usize + attempt) % n];
                if let Ok(InsertReply::Stored { .. }) =
                    node.insert(epoch, slot.key, value.clone()).await
                {
                    ok = true;
                    break;
                }
            }
            if ok {
                report.stored += 1;
            } else {
                report.failed += 1;
            }
        }
        report
    }

    /// The newest record `contact` published for us in `epoch` that opens, trying every slot
    /// (each through a different node) and every valid secret.
    pub async fn retrieve(
        &self,
        me: &Identity,
        contact: &Contact,
        epoch: Epoch,
    ) -> Option<PresenceRecord> {
        let n = self.nodes.len();
        let start = (me.id().0[0] as usize) % n.max(1);
        let mut best: Option<PresenceRecord> = None;
        for secret in &contact.secrets {
            for index in 0..self.indices {
                let slot = Registry::slot(me, contact, secret, epoch, index, false);
                for attempt in 0..n.min(2) {
                    let node = &self.nodes[(start + index as usize + attempt) % n];
                    match node.retrieve(epoch, slot.key).await {
                        Ok(RetrieveReply::Found(values)) => {
                            for v in values {
                                if let Ok(r) = open(me, &contact.card, &slot, &v, self.fresh) {
                                    if best
                                        .as_ref()
                                        .is_none_or(|b| r.timestamp_ms > b.timestamp_ms)
                                    {
                                        best = Some(r);
                                    }
                                }
                            }
                            break;
                        }
                        Ok(RetrieveReply::NotFound) => break,
                        _ => continue,
                    }
                }
            }
        }
        best
    }
}
