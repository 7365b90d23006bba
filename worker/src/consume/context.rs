//! The role's consumer context: librdkafka's callbacks. It reports the consumer lag, and on a
//! rebalance keeps the pauses and the offset tracker in step with the assignment; it never
//! stores an offset itself.

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::{Partition, Statistics};
use rdkafka::{ClientContext, TopicPartitionList};

use super::flow::PauseFlags;
use super::offsets::Offsets;

/// A role's consumer context. It exports the role's consumer lag from librdkafka's
/// statistics (`statistics.interval.ms`): per topic, the records between the group's committed
/// offset and the end of each partition this consumer is assigned; and on a rebalance, it
/// keeps the role's pauses and its offset tracker in step with the assignment.
#[derive(Debug)]
pub struct RoleContext {
    pub(super) role: &'static str,
    pub(super) pause: Arc<PauseFlags>,
    pub(super) offsets: Arc<Offsets>,
}

impl ClientContext for RoleContext {
    fn stats(&self, statistics: Statistics) {
        for (name, topic) in &statistics.topics {
            let lag: i64 = topic.partitions.values().filter_map(partition_lag).sum();
            metrics::gauge!("wxpipe_worker_consumer_lag", "role" => self.role, "topic" => name.clone())
                .set(lag as f64);
        }
    }
}

/// Records of an assigned partition not yet committed by the group. (librdkafka's own
/// `consumer_lag` is -1 until the first commit, which would show a new group's backlog as 0.)
fn partition_lag(p: &Partition) -> Option<i64> {
    // -1 is librdkafka's internal partition; a negative end offset is not known yet.
    if p.partition < 0 || !p.desired || p.hi_offset < 0 {
        return None;
    }
    // A group with no committed offset starts from the earliest record.
    let from = if p.committed_offset >= 0 {
        p.committed_offset
    } else {
        p.lo_offset.max(0)
    };
    Some((p.hi_offset - from).max(0))
}

/// `topic/partition, …`, for the log.
fn partitions(list: &TopicPartitionList) -> String {
    let names: Vec<String> = list
        .elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect();
    names.join(", ")
}

impl ConsumerContext for RoleContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            // Whoever gets them next (this process too, later) starts them unpaused.
            let _ = consumer.resume(list);
            self.offsets.revoked(list);
            tracing::info!(role = self.role, partitions = %partitions(list), "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            tracing::info!(role = self.role, partitions = %partitions(list), "partitions assigned");
            let _applying = self.pause.applying.lock().expect("pause lock");
            let paused = self.pause.to_pause(list);
            if paused.count() > 0 {
                if let Err(error) = consumer.pause(&paused) {
                    tracing::warn!(role = self.role, %error, "newly assigned partitions not paused");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_committed_offset_or_the_earliest_record() {
        let assigned = |lo, hi, committed| Partition {
            partition: 0,
            desired: true,
            lo_offset: lo,
            hi_offset: hi,
            committed_offset: committed,
            ..Partition::default()
        };
        // A new group, nothing committed yet (-1001): its whole backlog lags.
        assert_eq!(partition_lag(&assigned(10, 50, -1001)), Some(40));
        assert_eq!(partition_lag(&assigned(10, 50, 45)), Some(5));
        assert_eq!(partition_lag(&assigned(10, 50, 50)), Some(0));
        // Not ours, librdkafka's internal partition, or no end offset yet: not counted.
        let unassigned = Partition {
            desired: false,
            ..assigned(0, 50, 0)
        };
        assert_eq!(partition_lag(&unassigned), None);
        let internal = Partition {
            partition: -1,
            ..assigned(0, 50, 0)
        };
        assert_eq!(partition_lag(&internal), None);
        assert_eq!(partition_lag(&assigned(-1, -1, -1001)), None);
    }
}
