//! The at-least-once consumer loop of one role.
//!
//! ```text
//! recv ─▶ parse ─▶ Effects::apply ─┬─ Done / Skipped ───────────────────────▶ done
//!          │                       ├─ Retry ─▶ backoff, up to max_attempts ─▶ DLQ ─▶ done
//!          └─ not an Event ────────┴─ Poison ─────────────────────────────────▶ DLQ ─▶ done
//! done ─▶ OffsetTracker ─▶ store the offset below which everything is done ─▶ auto-commit
//! ```
//!
//! Records are handled concurrently (up to `WORKER_CONCURRENCY`), in any order: every effect
//! is idempotent and last-write-wins, so order does not matter, and an offset is stored only
//! once every record before it is done. A worker killed at any point loses nothing: what was
//! not stored is redelivered.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::{Partition, Statistics};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use schemas::Event;
use tokio::sync::{watch, Semaphore};

use crate::config::Role;
use crate::effects::{Effects, Outcome};

/// Offsets in flight per partition, and the offset it is safe to store.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), PartitionState>,
}

#[derive(Debug, Default)]
struct PartitionState {
    in_flight: BTreeSet<i64>,
    /// The highest offset done so far.
    max_done: Option<i64>,
    /// The last offset handed to `store_offsets` (the next one to consume).
    stored: Option<i64>,
}

impl OffsetTracker {
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        let state = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_default();
        state.in_flight.insert(offset);
        // The group resumed here: nothing below needs storing.
        state.stored.get_or_insert(offset);
    }

    /// Marks an offset done; returns the next offset to store (every offset below it is
    /// done) when it moved forward.
    pub fn complete(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let state = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        state.in_flight.remove(&offset);
        state.max_done = Some(state.max_done.map_or(offset, |m| m.max(offset)));
        let next = match state.in_flight.first() {
            Some(lowest) => *lowest,
            None => state.max_done? + 1,
        };
        if state.stored.is_some_and(|s| s >= next) {
            return None;
        }
        state.stored = Some(next);
        Some(next)
    }

    /// Records in flight, all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }
}

/// Exports a role's consumer lag from librdkafka's statistics (`statistics.interval.ms`): per
/// topic, the records between the group's committed offset and the end of each partition this
/// consumer is assigned.
#[derive(Debug)]
pub struct LagContext {
    role: &'static str,
}

impl ClientContext for LagContext {
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

impl ConsumerContext for LagContext {}

/// One role's consumer and everything its tasks share.
pub struct RoleConsumer {
    pub role: Role,
    consumer: StreamConsumer<LagContext>,
    dlq: FutureProducer,
    dlq_topic: String,
    effects: Arc<Effects>,
    tracker: Mutex<OffsetTracker>,
    max_attempts: u32,
    dead_letters: Arc<DeadLetterState>,
}

impl std::fmt::Debug for RoleConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleConsumer")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A record of a role: (role, topic, partition, offset).
type Source = (&'static str, String, i32, i64);

/// Records whose dead-letter write is failing now, by role and source (two roles read
/// `event.subscribe`), as (role, topic, partition, offset): each
/// holds its partition back (its offset must not be committed before), so readiness reports
/// them, never a silent stall.
#[derive(Debug, Default)]
pub struct DeadLetterState {
    /// Why each record's dead-letter write failed last.
    failing: Mutex<std::collections::BTreeMap<Source, String>>,
}

impl DeadLetterState {
    /// Why dead-lettering is stuck, if it is.
    pub fn stuck(&self) -> Option<String> {
        let failing = self.failing.lock().expect("dead letters lock");
        let ((role, topic, partition, offset), error) = failing.iter().next()?;
        Some(format!(
            "dead-letter writes failing for {} record(s), e.g. {role} {topic}/{partition}@{offset}: {error}",
            failing.len()
        ))
    }

    fn failed(&self, source: Source, error: String) -> bool {
        self.failing
            .lock()
            .expect("dead letters lock")
            .insert(source, error)
            .is_none()
    }

    fn written(&self, source: &Source) {
        self.failing
            .lock()
            .expect("dead letters lock")
            .remove(source);
    }
}

/// Settings of one role's consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub brokers: String,
    pub topic_prefix: String,
    pub max_attempts: u32,
    /// `KAFKA_CONFIG`: for every client.
    pub common: Vec<String>,
    /// `KAFKA_CONSUMER_CONFIG`: for the consumers, on top.
    pub overrides: Vec<String>,
    /// Shared by every role, and read by the readiness check.
    pub dead_letters: Arc<DeadLetterState>,
}

impl ConsumerSettings {
    /// A role's consumer: offsets stored by hand after each effect and committed in the
    /// background; a group with no committed offset starts from the earliest record.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        crate::kafka::client_config(
            &self.brokers,
            &[
                ("group.id", group),
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "1000"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("session.timeout.ms", "30000"),
                // Consumer lag for the metrics (LagContext).
                ("statistics.interval.ms", "5000"),
                ("reconnect.backoff.max.ms", "1000"),
            ],
            &[&self.common, &self.overrides],
        )
    }

    /// The dead-letter producer: it must be able to write any record the consumer could read,
    /// so its size limit is librdkafka's largest (the broker's own limit still applies).
    pub fn dead_letter_config(&self) -> ClientConfig {
        crate::kafka::client_config(
            &self.brokers,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("message.max.bytes", "1000000000"),
                // An attempt ends (and is retried) within 10 s, so a failing write shows.
                ("message.timeout.ms", "10000"),
            ],
            &[&self.common],
        )
    }
}

/// How long a stopping worker waits for its final commit and group leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Back-off before attempt `n` (1-based) of a failing effect.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(5))
}

impl RoleConsumer {
    pub fn new(
        role: Role,
        settings: &ConsumerSettings,
        effects: Arc<Effects>,
    ) -> Result<Self, KafkaError> {
        let consumer: StreamConsumer<LagContext> = settings
            .consumer_config(&role.group())
            .create_with_context(LagContext { role: role.name() })?;
        let topics = role.topics(&settings.topic_prefix);
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let dlq: FutureProducer = settings.dead_letter_config().create()?;
        Ok(RoleConsumer {
            role,
            consumer,
            dlq,
            dlq_topic: role.dlq_topic(&settings.topic_prefix),
            effects,
            tracker: Mutex::new(OffsetTracker::default()),
            max_attempts: settings.max_attempts.max(1),
            dead_letters: Arc::clone(&settings.dead_letters),
        })
    }

    /// Consumes until `shutdown` turns true, then lets in-flight work finish (within `grace`)
    /// and commits what is done.
    pub async fn run(
        self: Arc<Self>,
        concurrency: usize,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        tracing::info!(role = self.role.name(), group = %self.role.group(), "worker consuming");
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => permit.expect("semaphore open"),
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let message = tokio::select! {
                message = self.consumer.recv() => message,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let message = match message {
                Ok(message) => message.detach(),
                Err(error) => {
                    tracing::warn!(role = self.role.name(), %error, "consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            self.tracker.lock().expect("tracker lock").begin(
                message.topic(),
                message.partition(),
                message.offset(),
            );
            let this = Arc::clone(&self);
            tokio::spawn(async move {
                this.handle(&message).await;
                this.done(message.topic(), message.partition(), message.offset());
                // Before the permit: once every permit is back, no task holds the consumer,
                // so the close below is the last reference.
                drop(this);
                drop(permit);
            });
        }
        // Drain: every permit back means every task finished.
        let drained =
            tokio::time::timeout(grace, permits.acquire_many(concurrency.max(1) as u32)).await;
        if drained.is_err() {
            tracing::warn!(
                role = self.role.name(),
                "shutdown grace ran out: unfinished records will be redelivered"
            );
        }
        let role = self.role.name();
        match tokio::time::timeout(CLOSE_TIMEOUT, self.close()).await {
            Ok(Ok(())) => tracing::info!(role, "worker stopped"),
            Ok(Err(error)) => tracing::warn!(role, %error, "final commit failed: records since the last commit will be redelivered"),
            Err(_) => tracing::warn!(role, "Kafka did not answer the final commit in time: records since the last commit will be redelivered"),
        }
    }

    /// Commits what is done and closes the consumer (leaving the group, so its partitions move
    /// at once). Both block while Kafka is unreachable (librdkafka's synchronous commit has no
    /// timeout), so they run on a thread of their own, which the caller may stop waiting for.
    async fn close(self: Arc<Self>) -> Result<(), KafkaError> {
        let (closed, outcome) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("consumer-close".into())
            .spawn(move || {
                // Nothing stored since the last commit is not a failure.
                let committed = match self.consumer.commit_consumer_state(CommitMode::Sync) {
                    Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
                    other => other,
                };
                drop(self);
                let _ = closed.send(committed);
            });
        if let Err(error) = thread {
            tracing::warn!(%error, "no thread for the final commit");
            return Err(KafkaError::Canceled);
        }
        outcome.await.unwrap_or(Err(KafkaError::Canceled))
    }

    /// One record, to its end: effect done or skipped, or dead-lettered.
    pub async fn handle(&self, message: &rdkafka::message::OwnedMessage) {
        let started = std::time::Instant::now();
        let payload = message.payload().unwrap_or_default();
        let outcome = match Event::from_json(payload) {
            Err(error) => Outcome::Poison(format!("not a wxpipe event: {error}")),
            Ok(event) => self.apply_with_retries(&event).await,
        };
        match &outcome {
            Outcome::Done => {}
            Outcome::Skipped(reason) => {
                tracing::debug!(role = self.role.name(), %reason, "skipped")
            }
            Outcome::Retry(reason) | Outcome::Poison(reason) => {
                self.dead_letter(message, reason).await
            }
        }
        let outcome = match outcome {
            Outcome::Done => "done",
            Outcome::Skipped(_) => "skipped",
            Outcome::Retry(_) | Outcome::Poison(_) => "dead_lettered",
        };
        metrics::counter!("wxpipe_worker_events_total", "role" => self.role.name(), "outcome" => outcome).increment(1);
        metrics::histogram!("wxpipe_worker_effect_seconds", "role" => self.role.name())
            .record(started.elapsed().as_secs_f64());
    }

    async fn apply_with_retries(&self, event: &Event) -> Outcome {
        let mut attempt = 1;
        loop {
            let outcome = self.effects.apply(self.role, event).await;
            match outcome {
                Outcome::Retry(ref reason) if attempt < self.max_attempts => {
                    tracing::debug!(role = self.role.name(), id = %ops::redact_id(&event.id), attempt, %reason, "effect failed: retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// Writes the record to the role's dead-letter topic, with the error in a header; keeps
    /// trying until Kafka takes it, since its offset must not be stored before.
    async fn dead_letter(&self, message: &rdkafka::message::OwnedMessage, reason: &str) {
        tracing::error!(role = self.role.name(), topic = message.topic(), partition = message.partition(),
            offset = message.offset(), %reason, "record dead-lettered");
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "error",
                value: Some(reason),
            })
            .insert(Header {
                key: "source_topic",
                value: Some(message.topic()),
            })
            .insert(Header {
                key: "source_partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "source_offset",
                value: Some(&offset),
            });
        let source = (
            self.role.name(),
            message.topic().to_owned(),
            message.partition(),
            message.offset(),
        );
        let mut attempt = 0;
        loop {
            let mut record = FutureRecord::to(&self.dlq_topic)
                .payload(message.payload().unwrap_or_default())
                .headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            match self.dlq.send(record, Duration::from_secs(10)).await {
                Ok(_) => {
                    if attempt > 0 {
                        tracing::info!(
                            role = self.role.name(),
                            "dead-letter write succeeded after failing: the partition moves on"
                        );
                    }
                    self.dead_letters.written(&source);
                    return;
                }
                Err((error, _)) => {
                    attempt += 1;
                    metrics::counter!("wxpipe_worker_dead_letter_failures_total", "role" => self.role.name())
                        .increment(1);
                    if self.dead_letters.failed(source.clone(), error.to_string()) {
                        tracing::error!(role = self.role.name(), topic = %self.dlq_topic, %error,
                            "dead-letter write failed: this record's partition waits until it succeeds (readiness says so)");
                    } else {
                        tracing::warn!(role = self.role.name(), %error, attempt, "dead-letter write failed again: retrying");
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }

    fn done(&self, topic: &str, partition: i32, offset: i64) {
        let next = self
            .tracker
            .lock()
            .expect("tracker lock")
            .complete(topic, partition, offset);
        if let Some(next) = next {
            let mut list = TopicPartitionList::new();
            if list
                .add_partition_offset(topic, partition, Offset::Offset(next))
                .is_ok()
            {
                // Fails when the partition was revoked meanwhile: its new owner redelivers.
                if let Err(error) = self.consumer.store_offsets(&list) {
                    tracing::debug!(%error, topic, partition, "offset not stored");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_stored_only_below_the_lowest_in_flight() {
        let mut t = OffsetTracker::default();
        for offset in 10..15 {
            t.begin("a", 0, offset);
        }
        assert_eq!(
            t.complete("a", 0, 12),
            None,
            "10 and 11 are still in flight"
        );
        assert_eq!(t.complete("a", 0, 11), None);
        assert_eq!(t.complete("a", 0, 10), Some(13), "10..=12 done: next is 13");
        assert_eq!(t.complete("a", 0, 14), None, "13 still in flight");
        assert_eq!(t.complete("a", 0, 13), Some(15));
        assert_eq!(t.in_flight(), 0);
        // Partitions are independent.
        t.begin("a", 1, 0);
        t.begin("b", 0, 7);
        assert_eq!(t.complete("b", 0, 7), Some(8));
        assert_eq!(t.complete("a", 1, 0), Some(1));
        // An offset never moves back.
        t.begin("a", 0, 3);
        assert_eq!(t.complete("a", 0, 3), None);
    }

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

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) < backoff(2));
        assert_eq!(backoff(30), Duration::from_secs(5));
    }
}
