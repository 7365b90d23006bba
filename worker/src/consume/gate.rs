//! The unbind role's gate: each unsubscribe waits until the group has applied every subscribe
//! that was already in the log when it arrived, so a re-follow wins over the older unfollow
//! whatever the lag between the two topics. It only holds and releases records; it never
//! handles, drops or stores one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{watch, Notify};

use super::backoff::sleep_unless_stopping;
use super::context::RoleContext;
use super::offsets::Offsets;

/// How often the gate looks at the subscribes' progress, and how long its Kafka queries may take.
const GATE_TICK: Duration = Duration::from_millis(100);
const GATE_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// A record held by the gate, with the assignment it was begun under.
pub(super) type Gated = (OwnedMessage, u64);

/// The unbind role's unsubscribes, held until the group has applied every subscribe that was
/// in the log when they arrived. Both topics are keyed by OpenID, but a partition of one need
/// not be consumed with the same partition of the other (partition counts, assignors), so the
/// gate waits for every partition of the subscribe topic: up to the end offsets it samples
/// after the unsubscribes arrived, as this process's own progress or the group's commits show.
pub(super) struct Gate {
    subscribe_topic: String,
    pub(super) unsubscribe_topic: String,
    pending: Mutex<Vec<Gated>>,
    /// Told when an unsubscribe enters the gate.
    changed: Notify,
}

impl Gate {
    pub(super) fn new(subscribe_topic: String, unsubscribe_topic: String) -> Self {
        Gate {
            subscribe_topic,
            unsubscribe_topic,
            pending: Mutex::default(),
            changed: Notify::new(),
        }
    }

    /// Holds an unsubscribe until [`Gate::release`] lets it go.
    pub(super) fn hold(&self, record: Gated) {
        self.pending.lock().expect("gate lock").push(record);
        self.changed.notify_one();
    }

    /// The next batch of held unsubscribes whose subscribes are applied; `None` when the
    /// worker stops first (what it held is redelivered).
    pub(super) async fn release(
        &self,
        consumer: &Arc<StreamConsumer<RoleContext>>,
        offsets: &Offsets,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Vec<Gated>> {
        loop {
            if *shutdown.borrow() {
                return None;
            }
            let batch = std::mem::take(&mut *self.pending.lock().expect("gate lock"));
            if batch.is_empty() {
                tokio::select! {
                    () = self.changed.notified() => {}
                    () = tokio::time::sleep(GATE_TICK) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return None,
                }
                continue;
            }
            // The end of every subscribe partition, sampled after the batch arrived.
            let ends = loop {
                let topic = self.subscribe_topic.clone();
                // A topic the broker does not know (or errs on) holds the gate: it is an error.
                let ends = tokio::select! {
                    ends = crate::kafka::blocking(consumer, move |c| crate::kafka::watermarks(c, &topic, GATE_QUERY_TIMEOUT)) => ends,
                    _ = shutdown.wait_for(|stop| *stop) => return None,
                };
                match ends {
                    Ok(ends) => break ends,
                    Err(error) => {
                        tracing::warn!(%error, "unsubscribes held: the subscribe topic's end offsets are unknown");
                        if !sleep_unless_stopping(Duration::from_millis(500), shutdown).await {
                            return None;
                        }
                    }
                }
            };
            loop {
                let applied = tokio::select! {
                    applied = self.subscribes_applied(consumer, offsets, &ends) => applied,
                    _ = shutdown.wait_for(|stop| *stop) => return None,
                };
                if applied {
                    break;
                }
                if !sleep_unless_stopping(GATE_TICK, shutdown).await {
                    return None;
                }
            }
            return Some(batch);
        }
    }

    /// Whether every subscribe below `ends` is applied: known here for the partitions this
    /// process handles, from the group's committed offsets for the others.
    async fn subscribes_applied(
        &self,
        consumer: &Arc<StreamConsumer<RoleContext>>,
        offsets: &Offsets,
        ends: &[(i32, i64, i64)],
    ) -> bool {
        let topic = &self.subscribe_topic;
        let unknown: Vec<(i32, i64, i64)> = ends
            .iter()
            .filter(|(p, low, high)| {
                high > low
                    && offsets
                        .done_below(topic, *p)
                        .is_none_or(|done| done < *high)
            })
            .copied()
            .collect();
        if unknown.is_empty() {
            return true;
        }
        let mut list = TopicPartitionList::new();
        for (p, _, _) in &unknown {
            list.add_partition(topic, *p);
        }
        let committed: Result<TopicPartitionList, KafkaError> =
            crate::kafka::blocking(consumer, move |c| {
                c.committed_offsets(list, GATE_QUERY_TIMEOUT)
            })
            .await;
        let Ok(committed) = committed else {
            return false;
        };
        unknown.iter().all(|(p, low, high)| {
            match committed.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(at)) => at >= *high,
                // Nothing committed yet: only an empty partition is done.
                _ => low >= high,
            }
        })
    }
}
