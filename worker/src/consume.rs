//! The at-least-once consumer loop of one role.
//!
//! ```text
//! recv ─▶ parse ─▶ Effects::apply ─┬─ Done / Skipped ─────────────────────────────────▶ done
//!          │                       ├─ Wait (an outage) ─▶ capped backoff, while it lasts ─┘
//!          │                       ├─ Held (its account refused) ─▶ its account's probes ─┘
//!          │                       ├─ Retry (unexplained) ─▶ up to max_attempts ─▶ DLQ ─▶ done
//!          └─ not an Event ────────┴─ Poison ───────────────────────────────────▶ DLQ ─▶ done
//! done ─▶ OffsetTracker ─▶ store the offset below which everything is done ─▶ auto-commit
//! ```
//!
//! Records are handled concurrently (up to `WORKER_CONCURRENCY`), in any order: every effect
//! is idempotent and last-write-wins, so order does not matter, and an offset is stored only
//! once every record before it is done. A worker killed at any point loses nothing: what was
//! not stored is redelivered. A role pauses its partitions while it is full or while a record
//! waits for a dependency, and keeps polling, so the group keeps it. A record whose account the
//! API refuses holds only that account's records ([`crate::holds`]): the role reads on.
//!
//! The unbind role holds each unsubscribe until the group has applied every subscribe that was
//! already in the log when it arrived (`Gate`): a re-follow then wins over the older
//! unsubscribe, whatever the lag between the two topics.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::{Partition, Statistics};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use schemas::Event;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, Role};
use crate::effects::{Effects, Outcome};
use crate::holds::{AccountHolds, Tried, Turn};
use crate::StartError;

/// A role's offsets: the tracker behind its lock, shared by the role's tasks and its rebalance
/// callback. A store happens under the lock: two tasks finishing at once would otherwise store
/// in either order, and a lower offset stored last would stick, since the tracker, taking the
/// higher one as stored, never stores again below it.
#[derive(Debug, Default)]
pub struct Offsets(Mutex<OffsetTracker>);

impl Offsets {
    fn lock(&self) -> std::sync::MutexGuard<'_, OffsetTracker> {
        self.0.lock().expect("offsets lock")
    }

    /// Marks a record in flight; returns the assignment it was begun under, for `finish`.
    pub fn begin(&self, place: Place<'_>) -> u64 {
        self.lock().begin(place)
    }

    /// Marks a record done and, when the offset below which every record of its partition is
    /// done moved forward, hands that offset to `store`, under the lock; it counts as stored
    /// only once `store` succeeds. A record begun under an earlier assignment of its
    /// partition changes nothing: the partition was revoked since, and its owner now stores.
    pub fn finish<E>(
        &self,
        place: Place<'_>,
        assignment: u64,
        store: impl FnOnce(i64) -> Result<(), E>,
    ) -> Result<Option<i64>, E> {
        self.lock().complete(place, assignment, store)
    }

    /// Forgets partitions the group takes away (before librdkafka lets them go, so no store
    /// for them is tried after). A partition that comes back starts afresh from the group's
    /// committed offset: every record it had in flight is delivered again under the new
    /// assignment, and holds it back there.
    pub fn revoked(&self, list: &TopicPartitionList) {
        let mut tracker = self.lock();
        for element in list.elements() {
            tracker
                .partitions
                .remove(&(element.topic().to_owned(), element.partition()));
        }
    }

    /// Whether the partition of a record begun under `assignment` is still this process's,
    /// under that assignment (not revoked since).
    pub fn owns(&self, (topic, partition, _): Place<'_>, assignment: u64) -> bool {
        self.lock()
            .partitions
            .get(&(topic.to_owned(), partition))
            .is_some_and(|state| state.assignment == assignment)
    }

    /// The offset below which every record of a partition is done, as far as this process
    /// knows (it has the partition, and has handled records of it).
    pub fn done_below(&self, topic: &str, partition: i32) -> Option<i64> {
        self.lock().done_below(topic, partition)
    }
}

/// Offsets in flight per partition, and the offset it is safe to store.
#[derive(Debug, Default)]
struct OffsetTracker {
    partitions: HashMap<(String, i32), PartitionState>,
    /// Numbers the partitions' assignments, so a record begun under an earlier one is known.
    assignments: u64,
}

#[derive(Debug)]
struct PartitionState {
    /// The assignment of the partition its records were begun under.
    assignment: u64,
    in_flight: BTreeSet<i64>,
    /// The highest offset done so far (at first, the one before where the group resumed).
    max_done: i64,
    /// The last offset handed to `store_offsets` (the next one to consume); at first, where
    /// the group resumed: nothing below needs storing.
    stored: i64,
}

/// A record's place: topic, partition, offset.
pub type Place<'a> = (&'a str, i32, i64);

impl OffsetTracker {
    fn begin(&mut self, (topic, partition, offset): Place<'_>) -> u64 {
        let state = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| {
                self.assignments += 1;
                PartitionState {
                    assignment: self.assignments,
                    in_flight: BTreeSet::new(),
                    max_done: offset - 1,
                    stored: offset,
                }
            });
        state.in_flight.insert(offset);
        state.assignment
    }

    /// See [`Offsets::finish`].
    fn complete<E>(
        &mut self,
        (topic, partition, offset): Place<'_>,
        assignment: u64,
        store: impl FnOnce(i64) -> Result<(), E>,
    ) -> Result<Option<i64>, E> {
        let Some(state) = self
            .partitions
            .get_mut(&(topic.to_owned(), partition))
            .filter(|state| state.assignment == assignment)
        else {
            return Ok(None);
        };
        state.in_flight.remove(&offset);
        state.max_done = state.max_done.max(offset);
        let next = match state.in_flight.first() {
            Some(lowest) => *lowest,
            None => state.max_done + 1,
        };
        if state.stored >= next {
            return Ok(None);
        }
        store(next)?;
        state.stored = next;
        Ok(Some(next))
    }

    fn done_below(&self, topic: &str, partition: i32) -> Option<i64> {
        let state = self.partitions.get(&(topic.to_owned(), partition))?;
        match state.in_flight.first() {
            Some(lowest) => Some(*lowest),
            None => Some(state.stored.max(state.max_done + 1)),
        }
    }

    /// Records in flight, all partitions.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }
}

/// A role's consumer context. It exports the role's consumer lag from librdkafka's
/// statistics (`statistics.interval.ms`): per topic, the records between the group's committed
/// offset and the end of each partition this consumer is assigned; and on a rebalance, it
/// keeps the role's pauses and its offset tracker in step with the assignment.
#[derive(Debug)]
pub struct RoleContext {
    role: &'static str,
    pause: Arc<PauseFlags>,
    offsets: Arc<Offsets>,
}

/// Which of a role's partitions stay paused: read by the rebalance callbacks, which pause
/// partitions assigned while the role is paused, and free revoked ones of the pause (a paused
/// partition stays paused in librdkafka until it is resumed, even after it moved away and back).
#[derive(Debug, Default)]
struct PauseFlags {
    /// Every partition: a record waits for a dependency, or the role is full.
    all: std::sync::atomic::AtomicBool,
    /// The gated topic's partitions: the gate holds as much as it may.
    gated: std::sync::atomic::AtomicBool,
    gated_topic: Option<String>,
    /// Held while partitions are paused or resumed, by the role and by the rebalance callback,
    /// so the flags each read are the ones the last of them applies.
    applying: Mutex<()>,
}

impl PauseFlags {
    /// (every partition, the gated topic's) paused now.
    fn get(&self) -> (bool, bool) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.all.load(SeqCst), self.gated.load(SeqCst))
    }

    /// The partitions of `list` to keep paused now.
    fn to_pause(&self, list: &TopicPartitionList) -> TopicPartitionList {
        let (all, gated) = self.get();
        let mut paused = TopicPartitionList::new();
        for element in list.elements() {
            let held = self.gated_topic.as_deref() == Some(element.topic());
            if all || (gated && held) {
                paused.add_partition(element.topic(), element.partition());
            }
        }
        paused
    }
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

/// One role's consumer and everything its tasks share.
pub struct RoleConsumer {
    pub role: Role,
    consumer: StreamConsumer<RoleContext>,
    dlq: FutureProducer,
    dlq_topic: String,
    effects: Arc<Effects>,
    offsets: Arc<Offsets>,
    max_attempts: u32,
    dead_letters: Arc<DeadLetterState>,
    waits: Arc<WaitState>,
    concurrency: usize,
    /// One per record being handled: the role reads no further ahead than this.
    permits: Arc<Semaphore>,
    flow: Mutex<Flow>,
    pause: Arc<PauseFlags>,
    /// Told when an unsubscribe enters the gate.
    changed: Notify,
    /// The unbind role's unsubscribes, held until the subscribes before them are applied.
    gate: Option<Gate>,
    /// Accounts the API refuses, each holding its own records.
    holds: AccountHolds,
    metrics: RoleMetrics,
}

/// What decides whether a role's partitions are paused.
#[derive(Debug, Default)]
struct Flow {
    /// Records being handled.
    in_flight: usize,
    /// Of those, records waiting for a dependency.
    waiting: usize,
    /// Unsubscribes held by the gate.
    gated: usize,
    /// No permit came free for a whole poll interval: every record in hand is stuck (waiting,
    /// or its dead-letter write failing), and the role reads no further until one is done.
    full: bool,
}

/// Records held back for a dependency, by role, for readiness and the logs.
#[derive(Debug, Default)]
pub struct WaitState {
    roles: Mutex<std::collections::BTreeMap<&'static str, RoleWait>>,
}

#[derive(Debug)]
struct RoleWait {
    records: usize,
    since: Instant,
    reason: String,
}

impl WaitState {
    /// Why a role is waiting, if one is.
    pub fn waiting(&self) -> Option<String> {
        let roles = self.roles.lock().expect("waits lock");
        let (role, wait) = roles.iter().next()?;
        Some(format!(
            "the {role} role has waited {} s for a dependency ({} record(s)): {}",
            wait.since.elapsed().as_secs(),
            wait.records,
            wait.reason
        ))
    }

    fn enter(&self, role: &'static str, reason: &str) {
        let mut roles = self.roles.lock().expect("waits lock");
        let wait = roles.entry(role).or_insert_with(|| RoleWait {
            records: 0,
            since: Instant::now(),
            reason: String::new(),
        });
        wait.records += 1;
        reason.clone_into(&mut wait.reason);
    }

    fn still(&self, role: &'static str, reason: &str) {
        if let Some(wait) = self.roles.lock().expect("waits lock").get_mut(role) {
            reason.clone_into(&mut wait.reason);
        }
    }

    fn leave(&self, role: &'static str) {
        let mut roles = self.roles.lock().expect("waits lock");
        if let Some(wait) = roles.get_mut(role) {
            wait.records -= 1;
            if wait.records == 0 {
                roles.remove(role);
            }
        }
    }
}

/// A record waiting for a dependency: its role stays paused until every such record is done.
struct Waiting<'a> {
    consumer: &'a RoleConsumer,
}

impl<'a> Waiting<'a> {
    fn enter(consumer: &'a RoleConsumer, reason: &str) -> Self {
        let role = consumer.role.name();
        tracing::warn!(role, %reason, "a dependency is failing: the record waits and the role pauses until it answers");
        consumer.waits.enter(role, reason);
        consumer.update_flow(|flow| flow.waiting += 1);
        Waiting { consumer }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let role = self.consumer.role.name();
        self.consumer.waits.leave(role);
        self.consumer.update_flow(|flow| flow.waiting -= 1);
    }
}

/// A record its account's hold keeps (see [`crate::holds`]): its permit goes back to the role
/// while it waits, unless the role holds too many already, and is taken again before each try
/// but its account's probe, so held records never try more at once than the role's concurrency
/// (when the hold opens, all of them would otherwise send together). The probe goes without
/// one (one per held account): past the cap, a record waiting for the probe may hold the
/// role's last permit.
struct Held<'a> {
    consumer: &'a RoleConsumer,
    account: &'a str,
    /// Under the cap when it was held: it gives its permit back whenever it waits.
    gives_back: bool,
    /// Its permit is given back now: it takes one before it tries again.
    given: bool,
    left: bool,
}

impl<'a> Held<'a> {
    fn new(consumer: &'a RoleConsumer, account: &'a str, gives_back: bool) -> Self {
        let mut held = Held {
            consumer,
            account,
            gives_back,
            given: false,
            left: false,
        };
        held.give_back();
        held
    }

    /// A record the API refused for its account.
    fn enter(consumer: &'a RoleConsumer, account: &'a str, reason: &str) -> Self {
        Self::new(consumer, account, consumer.holds.enter(account, reason))
    }

    /// A record that found its account held before it tried: it waits as a held record
    /// (its permit back to the role), not on the role's permit. `None`: the hold ended.
    fn join(consumer: &'a RoleConsumer, account: &'a str) -> Option<Self> {
        Some(Self::new(consumer, account, consumer.holds.join(account)?))
    }

    fn give_back(&mut self) {
        if self.gives_back && !self.given {
            self.consumer.permits.add_permits(1);
            self.given = true;
        }
    }

    /// Takes a permit again before a try (the one given back is another record's now);
    /// false when the worker stops first.
    async fn retake(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        if !self.given {
            return true;
        }
        tokio::select! {
            permit = Arc::clone(&self.consumer.permits).acquire_owned() => {
                permit.expect("semaphore open").forget();
                self.given = false;
                true
            }
            _ = shutdown.wait_for(|stop| *stop) => false,
        }
    }

    /// The record goes on, or is left to another member: it leaves the hold, and takes back
    /// the permit it gave (a probe tried without it), unless the worker stops first.
    async fn leave(mut self, shutdown: &mut watch::Receiver<bool>) {
        self.left = true;
        self.consumer.holds.leave(self.account);
        self.retake(shutdown).await;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.left {
            self.consumer.holds.leave(self.account);
        }
    }
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
    /// Shared by every role, and read by the readiness check.
    pub waits: Arc<WaitState>,
    /// Records handled at once per role.
    pub concurrency: usize,
    /// The component's release check is on: the `component` role reads text messages too.
    pub release_check: bool,
}

impl ConsumerSettings {
    /// The settings of the live roles and of `rebuild` and `redrive`, from a configuration
    /// that is valid and names the brokers.
    pub fn from_config(config: &Config) -> Result<Self, StartError> {
        let brokers = config.brokers().ok_or(StartError::NoBrokers)?.to_owned();
        config.validate()?;
        Ok(ConsumerSettings {
            brokers,
            topic_prefix: config.shared.topic_prefix.clone(),
            max_attempts: config.settings.max_attempts,
            common: config.shared.kafka_config.clone(),
            overrides: config.settings.kafka_consumer_config.clone(),
            dead_letters: Arc::default(),
            waits: Arc::default(),
            concurrency: config.settings.concurrency,
            release_check: matches!(config.shared.component(), Ok(Some(c)) if c.release_check),
        })
    }

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
                // Consumer lag for the metrics (RoleContext).
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

/// The headers a dead letter adds to its record's own (what failed, and where the record was),
/// and the one `worker redrive` adds (the role it moved the record back for). Each drops them
/// all before adding its own, so a record dead-lettered and redriven again carries one of each.
pub const DEAD_LETTER_HEADERS: [&str; 5] = [
    "error",
    "source_topic",
    "source_partition",
    "source_offset",
    crate::replay::REDRIVE_ROLE_HEADER,
];

/// How long a stopping worker waits for its final commit and group leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A role polls at least this often, paused or not: the group drops a member that stops
/// polling for `max.poll.interval.ms`.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// How often the gate looks at the subscribes' progress, and how long its Kafka queries may take.
const GATE_TICK: Duration = Duration::from_millis(100);
const GATE_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Unsubscribes the gate holds, per unit of concurrency, before it pauses their partitions.
const GATE_DEPTH: usize = 4;

/// Records held for their account, per unit of concurrency, that give their permits back:
/// past that, they fill the role as an outage would, and it stops reading.
const HELD_PER_PERMIT: usize = 64;

/// The per-record series of a role, looked up once: a lookup hashes the labels into the
/// registry, which every record would pay two or three times.
struct RoleMetrics {
    /// `wxpipe_worker_events_total` by [`Outcome::LABELS`].
    events: [metrics::Counter; Outcome::LABELS.len()],
    effect_seconds: metrics::Histogram,
    waiting: metrics::Gauge,
}

impl RoleMetrics {
    fn event(&self, outcome: &Outcome) -> &metrics::Counter {
        let at = Outcome::LABELS
            .iter()
            .position(|label| *label == outcome.label())
            .expect("every label is listed");
        &self.events[at]
    }
}

/// The role's series whose labels are known before its first record, at zero: an alert on
/// their increase sees the first dead letter, and dashboards show the role from start.
fn zero_series(role: Role) -> RoleMetrics {
    let role = role.name();
    let events = Outcome::LABELS.map(|outcome| {
        let counter =
            metrics::counter!("wxpipe_worker_events_total", "role" => role, "outcome" => outcome);
        counter.increment(0);
        counter
    });
    metrics::counter!("wxpipe_worker_dead_letter_failures_total", "role" => role).increment(0);
    let waiting = metrics::gauge!("wxpipe_worker_waiting_records", "role" => role);
    waiting.set(0.0);
    let _ = metrics::histogram!("wxpipe_worker_dependency_wait_seconds", "role" => role);
    RoleMetrics {
        events,
        effect_seconds: metrics::histogram!("wxpipe_worker_effect_seconds", "role" => role),
        waiting,
    }
}

/// Polls a future once: its output if it is ready now, else `Pending` (the future stays
/// usable, its waker registered).
async fn poll_once<F: std::future::Future>(
    mut future: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx))).await
}

/// Back-off before attempt `n` (1-based) of a failing effect.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(5))
}

/// Sleeps for `pause`, or returns `false` at once when the worker is stopping.
async fn sleep_unless_stopping(pause: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(pause) => true,
        _ = shutdown.wait_for(|stop| *stop) => false,
    }
}

/// The unbind role's unsubscribes, held until the group has applied every subscribe that was
/// in the log when they arrived. Both topics are keyed by OpenID, but a partition of one need
/// not be consumed with the same partition of the other (partition counts, assignors), so the
/// gate waits for every partition of the subscribe topic: up to the end offsets it samples
/// after the unsubscribes arrived, as this process's own progress or the group's commits show.
struct Gate {
    subscribe_topic: String,
    unsubscribe_topic: String,
    /// Each with the assignment it was begun under.
    pending: Mutex<Vec<(OwnedMessage, u64)>>,
}

impl RoleConsumer {
    pub fn new(
        role: Role,
        settings: &ConsumerSettings,
        effects: Arc<Effects>,
    ) -> Result<Self, KafkaError> {
        let topics = role.topics_with(&settings.topic_prefix, settings.release_check);
        let metrics = zero_series(role);
        let pause = Arc::new(PauseFlags {
            gated_topic: (role == Role::Unbind).then(|| topics[1].clone()),
            ..PauseFlags::default()
        });
        let offsets = Arc::default();
        let consumer: StreamConsumer<RoleContext> = settings
            .consumer_config(&role.group())
            .create_with_context(RoleContext {
                role: role.name(),
                pause: Arc::clone(&pause),
                offsets: Arc::clone(&offsets),
            })?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        let dlq: FutureProducer = settings.dead_letter_config().create()?;
        let gate = (role == Role::Unbind).then(|| Gate {
            subscribe_topic: topics[0].clone(),
            unsubscribe_topic: topics[1].clone(),
            pending: Mutex::default(),
        });
        Ok(RoleConsumer {
            role,
            consumer,
            dlq,
            dlq_topic: role.dlq_topic(&settings.topic_prefix),
            effects,
            offsets,
            max_attempts: settings.max_attempts,
            dead_letters: Arc::clone(&settings.dead_letters),
            waits: Arc::clone(&settings.waits),
            concurrency: settings.concurrency,
            permits: Arc::new(Semaphore::new(settings.concurrency)),
            flow: Mutex::default(),
            pause,
            changed: Notify::new(),
            gate,
            holds: AccountHolds::new(role.name(), settings.concurrency * HELD_PER_PERMIT),
            metrics,
        })
    }

    /// Consumes until `shutdown` turns true, then lets in-flight work finish (within `grace`)
    /// and commits what is done.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        tracing::info!(role = self.role.name(), group = %self.role.group(), "worker consuming");
        let gate = self
            .gate
            .is_some()
            .then(|| tokio::spawn(Arc::clone(&self).run_gate(shutdown.clone())));
        loop {
            // A permit, then a record; the group drops a member that stops polling, so a role
            // whose permits are all held (records waiting for a dependency) still polls, its
            // partitions paused.
            // A permit free now takes the fast path, which arms no timer: a timer armed and
            // dropped twice a record was the loop's largest cost, and one loop feeds the
            // whole role.
            if *shutdown.borrow() {
                break;
            }
            let permit = match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    permit = Arc::clone(&self.permits).acquire_owned() => Some(permit.expect("semaphore open")),
                    () = tokio::time::sleep(POLL_EVERY) => None,
                },
            };
            let full = permit.is_none();
            if full != self.flow.lock().expect("flow lock").full {
                self.update_flow(|flow| flow.full = full);
            }
            // Likewise a record already fetched: the timer is armed only when none is.
            let recv = self.consumer.recv();
            tokio::pin!(recv);
            let message = match poll_once(recv.as_mut()).await {
                Poll::Ready(message) => message,
                Poll::Pending => tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    message = &mut recv => message,
                    () = tokio::time::sleep(POLL_EVERY) => {
                        // Partitions assigned since the pause are paused too.
                        self.apply_pause(false);
                        continue;
                    }
                },
            };
            let message = match message {
                Ok(message) => message.detach(),
                Err(error) => {
                    tracing::warn!(role = self.role.name(), %error, "consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let assignment =
                self.offsets
                    .begin((message.topic(), message.partition(), message.offset()));
            match &self.gate {
                Some(gate) if message.topic() == gate.unsubscribe_topic => {
                    let held = (message, assignment);
                    gate.pending.lock().expect("gate lock").push(held);
                    self.update_flow(|flow| flow.gated += 1);
                    self.changed.notify_one();
                }
                // Without a permit (read by a keep-alive poll), it waits for one in its task.
                _ => self.spawn_record((message, assignment), permit, shutdown.clone()),
            }
        }
        if let Some(gate) = gate {
            let _ = gate.await;
        }
        // Drain: in-flight records finish, or stop where they wait, within the grace.
        let drained = tokio::time::timeout(grace, async {
            while self.flow.lock().expect("flow lock").in_flight > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
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

    /// Handles a record in a task of its own, under a permit; stores its offset when it is
    /// done (not when the worker stopped it halfway).
    fn spawn_record(
        self: &Arc<Self>,
        (message, assignment): (OwnedMessage, u64),
        permit: Option<OwnedSemaphorePermit>,
        shutdown: watch::Receiver<bool>,
    ) {
        self.update_flow(|flow| flow.in_flight += 1);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _permit = match permit {
                Some(permit) => permit,
                None => Arc::clone(&this.permits)
                    .acquire_owned()
                    .await
                    .expect("semaphore open"),
            };
            if this.handle(&message, assignment, shutdown).await {
                let place = (message.topic(), message.partition(), message.offset());
                this.done(place, assignment);
            }
            this.update_flow(|flow| flow.in_flight -= 1);
        });
    }

    /// Changes the flow counters, then pauses or resumes partitions to match: all of them
    /// while a record waits for a dependency; the unsubscribes while the gate is full.
    fn update_flow(&self, change: impl FnOnce(&mut Flow)) {
        // The flags change only under this lock, so they are what it last decided.
        let mut flow = self.flow.lock().expect("flow lock");
        change(&mut flow);
        let (paused_all, paused_gated) = self.pause.get();
        let all = flow.waiting > 0 || flow.full;
        let gated = flow.gated >= self.concurrency * GATE_DEPTH
            || (paused_gated && flow.gated > self.concurrency * GATE_DEPTH / 2);
        self.metrics.waiting.set(flow.waiting as f64);
        if (all, gated) == (paused_all, paused_gated) {
            return;
        }
        if all != paused_all {
            tracing::debug!(
                role = self.role.name(),
                paused = all,
                "partitions paused or resumed"
            );
        }
        use std::sync::atomic::Ordering::SeqCst;
        self.pause.all.store(all, SeqCst);
        self.pause.gated.store(gated, SeqCst);
        self.apply_pause(true);
    }

    /// Pauses (and, with `resume`, resumes) the assigned partitions as the flags say. Pausing
    /// again is harmless, and covers partitions assigned since; a resume drops what was
    /// fetched ahead, so it is sent only when the state changes.
    fn apply_pause(&self, resume: bool) {
        if self.pause.get() == (false, false) && !resume {
            return;
        }
        let _applying = self.pause.applying.lock().expect("pause lock");
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let paused = self.pause.to_pause(&assignment);
        let mut resumed = TopicPartitionList::new();
        for element in assignment.elements() {
            if paused
                .find_partition(element.topic(), element.partition())
                .is_none()
            {
                resumed.add_partition(element.topic(), element.partition());
            }
        }
        if paused.count() > 0 {
            if let Err(error) = self.consumer.pause(&paused) {
                tracing::debug!(%error, "pause failed");
            }
        }
        if resume && resumed.count() > 0 {
            if let Err(error) = self.consumer.resume(&resumed) {
                tracing::debug!(%error, "resume failed");
            }
        }
    }

    /// Releases held unsubscribes, batch by batch, once the subscribes before them are applied.
    async fn run_gate(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let gate = self.gate.as_ref().expect("the unbind role has a gate");
        loop {
            if *shutdown.borrow() {
                return;
            }
            let batch = std::mem::take(&mut *gate.pending.lock().expect("gate lock"));
            if batch.is_empty() {
                tokio::select! {
                    () = self.changed.notified() => {}
                    () = tokio::time::sleep(GATE_TICK) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                continue;
            }
            // The end of every subscribe partition, sampled after the batch arrived.
            let ends = loop {
                let ends = tokio::select! {
                    ends = self.query(|this| this.subscribe_ends()) => ends,
                    _ = shutdown.wait_for(|stop| *stop) => return,
                };
                match ends {
                    Ok(ends) => break ends,
                    Err(error) => {
                        tracing::warn!(%error, "unsubscribes held: the subscribe topic's end offsets are unknown");
                        if !sleep_unless_stopping(Duration::from_millis(500), &mut shutdown).await {
                            return;
                        }
                    }
                }
            };
            loop {
                let applied = tokio::select! {
                    applied = self.subscribes_applied(&ends) => applied,
                    _ = shutdown.wait_for(|stop| *stop) => return,
                };
                if applied {
                    break;
                }
                if !sleep_unless_stopping(GATE_TICK, &mut shutdown).await {
                    return;
                }
            }
            let released = batch.len();
            for held in batch {
                self.spawn_record(held, None, shutdown.clone());
            }
            self.update_flow(|flow| flow.gated -= released);
        }
    }

    /// Runs a blocking Kafka query on a thread of its own.
    async fn query<T: Send + 'static>(
        self: &Arc<Self>,
        call: impl FnOnce(&Self) -> Result<T, KafkaError> + Send + 'static,
    ) -> Result<T, KafkaError> {
        crate::kafka::blocking(self, call).await
    }

    /// (partition, low, high) of every partition of the subscribe topic.
    fn subscribe_ends(&self) -> Result<Vec<(i32, i64, i64)>, KafkaError> {
        // A topic the broker does not know (or errs on) holds the gate: it is an error.
        let topic = &self.gate.as_ref().expect("gate").subscribe_topic;
        crate::kafka::watermarks(&self.consumer, topic, GATE_QUERY_TIMEOUT)
    }

    /// Whether every subscribe below `ends` is applied: known here for the partitions this
    /// process handles, from the group's committed offsets for the others.
    async fn subscribes_applied(self: &Arc<Self>, ends: &[(i32, i64, i64)]) -> bool {
        let topic = self.gate.as_ref().expect("gate").subscribe_topic.clone();
        let unknown: Vec<(i32, i64, i64)> = ends
            .iter()
            .filter(|(p, low, high)| {
                high > low
                    && self
                        .offsets
                        .done_below(&topic, *p)
                        .is_none_or(|done| done < *high)
            })
            .copied()
            .collect();
        if unknown.is_empty() {
            return true;
        }
        let mut list = TopicPartitionList::new();
        for (p, _, _) in &unknown {
            list.add_partition(&topic, *p);
        }
        let committed = self
            .query(move |this| this.consumer.committed_offsets(list, GATE_QUERY_TIMEOUT))
            .await;
        let Ok(committed) = committed else {
            return false;
        };
        unknown.iter().all(|(p, low, high)| {
            match committed.find_partition(&topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(at)) => at >= *high,
                // Nothing committed yet: only an empty partition is done.
                _ => low >= high,
            }
        })
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

    /// One record, to its end: effect done or skipped, or dead-lettered (`true`); or left
    /// for redelivery because the worker is stopping, or because its partition was revoked while
    /// its account's hold kept it (`false`).
    pub async fn handle(
        &self,
        message: &OwnedMessage,
        assignment: u64,
        mut shutdown: watch::Receiver<bool>,
    ) -> bool {
        let started = Instant::now();
        let payload = message.payload().unwrap_or_default();
        let outcome = match crate::replay::redriven_for_another(message, self.role) {
            Some(other) => Outcome::Skipped(format!("redriven for the {other} role")),
            None => match Event::from_json(payload) {
                Err(error) => Outcome::Poison(format!("not a wxpipe event: {error}")),
                Ok(event) => match self
                    .apply_with_retries(&event, (message, assignment), &mut shutdown)
                    .await
                {
                    Some(outcome) => outcome,
                    None => return false,
                },
            },
        };
        match &outcome {
            Outcome::Done => {}
            Outcome::Skipped(reason) | Outcome::TooOld(reason) | Outcome::Unknown(reason) => {
                tracing::debug!(role = self.role.name(), %reason, "skipped")
            }
            Outcome::Wait(reason)
            | Outcome::Held(reason)
            | Outcome::Retry(reason)
            | Outcome::Poison(reason) => {
                if !self.dead_letter(message, reason, &mut shutdown).await {
                    return false;
                }
            }
        }
        self.metrics.event(&outcome).increment(1);
        self.metrics
            .effect_seconds
            .record(started.elapsed().as_secs_f64());
        true
    }

    /// The effect, tried until it is done or known to fail: an outage is waited out however
    /// long it lasts (the role paused meanwhile); an unexplained failure is tried
    /// `max_attempts` times. `None` when the worker stops first, or when the partition of a
    /// record its account's hold keeps is revoked.
    async fn apply_with_retries(
        &self,
        event: &Event,
        (message, assignment): (&OwnedMessage, u64),
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Outcome> {
        let role = self.role.name();
        if *shutdown.borrow() {
            // Stopping: nothing new starts (above all no welcome send), it is redelivered.
            return None;
        }
        let mut attempt = 1;
        let mut waits = 0;
        let mut waiting: Option<Waiting<'_>> = None;
        let mut held: Option<Held<'_>> = None;
        loop {
            // A record of an account the API refuses waits its account's turn, as one of
            // its held records (its permit given back), and takes a permit before it tries.
            let probe = loop {
                let at = match self.holds.turn(&event.account) {
                    Turn::Go => break false,
                    Turn::Probe => break true,
                    Turn::WaitUntil(at) => at,
                };
                match &mut held {
                    None => held = Held::join(self, &event.account),
                    Some(held) => held.give_back(),
                }
                // Waiting for its account's probe, not for a dependency: a dependency wait
                // pauses the whole role (the next probe finds out if the outage lasts).
                if waiting.take().is_some() {
                    waits = 0;
                }
                // Its partition was revoked: the record is its new owner's now. It leaves the
                // hold here (a hold may last days), and is not done here.
                let place = (message.topic(), message.partition(), message.offset());
                if !self.offsets.owns(place, assignment) {
                    tracing::info!(role, account = %event.account, "a held record's partition was revoked: left to its new owner");
                    if let Some(held) = held.take() {
                        held.leave(shutdown).await;
                    }
                    return None;
                }
                let pause = at.saturating_duration_since(Instant::now());
                if !sleep_unless_stopping(pause, shutdown).await {
                    return None;
                }
            };
            // Not the probe: past the cap a held record keeps its permit while it waits for
            // the probe, and may hold the role's last one.
            if let Some(held) = held.as_mut().filter(|_| !probe) {
                if !held.retake(shutdown).await {
                    return None;
                }
            }
            let outcome = self.effects.apply(self.role, event).await;
            let refused = match &outcome {
                Outcome::Held(reason) => Some(reason.as_str()),
                _ => None,
            };
            if let Some(reason) = refused {
                // The API answered: no longer a dependency wait (which pauses the whole role,
                // and would for as long as the account's hold lasts), a hold of its account.
                if waiting.take().is_some() {
                    waits = 0;
                }
                match &mut held {
                    None => held = Some(Held::enter(self, &event.account, reason)),
                    Some(held) => held.give_back(),
                }
            }
            let tried = match (&outcome, refused) {
                (_, Some(reason)) => Tried::Refused(reason),
                (Outcome::Wait(_) | Outcome::Retry(_), None) => Tried::Unsettled,
                _ => Tried::Passed,
            };
            self.holds.tried(&event.account, probe, tried);
            let pause = match outcome {
                Outcome::Held(_) => continue,
                Outcome::Wait(ref reason) => {
                    match &waiting {
                        Some(_) => self.waits.still(role, reason),
                        None => waiting = Some(Waiting::enter(self, reason)),
                    }
                    waits += 1;
                    let pause = backoff(waits);
                    // Its sum is the time spent waiting.
                    metrics::histogram!("wxpipe_worker_dependency_wait_seconds", "role" => role)
                        .record(pause.as_secs_f64());
                    pause
                }
                Outcome::Retry(ref reason) if attempt < self.max_attempts => {
                    tracing::debug!(role, id = %ops::redact_id(&event.id), attempt, %reason, "effect failed: retrying");
                    attempt += 1;
                    backoff(attempt - 1)
                }
                outcome => {
                    if waiting.is_some() {
                        tracing::info!(role, "the dependency answers again: the record moved on");
                    }
                    if let Some(held) = held.take() {
                        held.leave(shutdown).await;
                    }
                    return Some(outcome);
                }
            };
            if !sleep_unless_stopping(pause, shutdown).await {
                return None;
            }
        }
    }

    /// Writes the record to the role's dead-letter topic, with the error in a header; keeps
    /// trying until Kafka takes it, since its offset must not be stored before (`false`: the
    /// worker stopped first).
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        reason: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        tracing::error!(role = self.role.name(), topic = message.topic(), partition = message.partition(),
            offset = message.offset(), %reason, "record dead-lettered");
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        // The record's own headers (its CloudEvents attributes) first, then the dead letter's.
        let mut headers = OwnedHeaders::new();
        if let Some(own) = message.headers() {
            for header in own.iter() {
                if !DEAD_LETTER_HEADERS.contains(&header.key) {
                    headers = headers.insert(header);
                }
            }
        }
        let headers = headers
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
                    return true;
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
                    if !sleep_unless_stopping(backoff(attempt), shutdown).await {
                        self.dead_letters.written(&source);
                        return false;
                    }
                }
            }
        }
    }

    /// Stores the offset a record done lets the partition move to, if any.
    fn done(&self, place: Place<'_>, assignment: u64) {
        let (topic, partition, _) = place;
        let stored = self.offsets.finish(place, assignment, |next| {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(topic, partition, Offset::Offset(next))?;
            self.consumer.store_offsets(&list)
        });
        // Not expected (a revoked partition is forgotten first, and no store is tried): the
        // next record done stores again, and the group redelivers what was not committed.
        if let Err(error) = stored {
            tracing::warn!(role = self.role.name(), %error, topic, partition, "offset not stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `complete`, storing nothing: the offset it would store.
    fn complete(t: &mut OffsetTracker, place: Place<'_>, assignment: u64) -> Option<i64> {
        t.complete::<()>(place, assignment, |_| Ok(())).unwrap()
    }

    #[test]
    fn offsets_are_stored_only_below_the_lowest_in_flight() {
        let mut t = OffsetTracker::default();
        let a = t.begin(("a", 0, 10));
        for offset in 11..15 {
            assert_eq!(t.begin(("a", 0, offset)), a, "one assignment");
        }
        assert_eq!(
            complete(&mut t, ("a", 0, 12), a),
            None,
            "10 and 11 are still in flight"
        );
        assert_eq!(complete(&mut t, ("a", 0, 11), a), None);
        assert_eq!(
            complete(&mut t, ("a", 0, 10), a),
            Some(13),
            "10..=12 done: next is 13"
        );
        assert_eq!(
            complete(&mut t, ("a", 0, 14), a),
            None,
            "13 still in flight"
        );
        assert_eq!(complete(&mut t, ("a", 0, 13), a), Some(15));
        assert_eq!(t.in_flight(), 0);
        // Partitions are independent.
        let a1 = t.begin(("a", 1, 0));
        let b = t.begin(("b", 0, 7));
        assert_eq!(complete(&mut t, ("b", 0, 7), b), Some(8));
        assert_eq!(complete(&mut t, ("a", 1, 0), a1), Some(1));
        // An offset never moves back.
        t.begin(("a", 0, 3));
        assert_eq!(complete(&mut t, ("a", 0, 3), a), None);
        // A partition this process never began is not stored.
        assert_eq!(complete(&mut t, ("c", 0, 1), a), None);
    }

    #[test]
    fn a_failed_store_is_tried_again() {
        let mut t = OffsetTracker::default();
        let a = t.begin(("a", 0, 0));
        for offset in 1..3 {
            t.begin(("a", 0, offset));
        }
        let failed = t.complete(("a", 0, 0), a, |_| Err("not assigned"));
        assert_eq!(failed, Err("not assigned"));
        // Not counted as stored: a second copy of the record (delivered again) stores it.
        t.begin(("a", 0, 0));
        assert_eq!(complete(&mut t, ("a", 0, 0), a), Some(1));
        assert_eq!(complete(&mut t, ("a", 0, 1), a), Some(2));
        assert_eq!(complete(&mut t, ("a", 0, 2), a), Some(3));
    }

    #[test]
    fn a_revoked_partition_starts_afresh_and_its_old_records_store_nothing() {
        let offsets = Offsets::default();
        let finish =
            |place, assignment| offsets.finish::<()>(place, assignment, |_| Ok(())).unwrap();
        let revoke = || {
            let mut list = TopicPartitionList::new();
            list.add_partition("a", 0);
            offsets.revoked(&list);
        };
        let old = offsets.begin(("a", 0, 10));
        for offset in 11..100 {
            offsets.begin(("a", 0, offset));
        }
        for offset in 11..100 {
            finish(("a", 0, offset), old);
        }
        // Revoked with 10 in flight, assigned back at the committed 10 (the commit of the
        // revocation failed): 10 is delivered again, and 11.. after it.
        revoke();
        let new = offsets.begin(("a", 0, 10));
        assert_ne!(new, old);
        // The first copy of 10 ends now: it stores nothing, it belongs to the old assignment.
        assert_eq!(finish(("a", 0, 10), old), None);
        assert_eq!(
            offsets.done_below("a", 0),
            Some(10),
            "the new copy of 10 holds it"
        );
        offsets.begin(("a", 0, 11));
        assert_eq!(finish(("a", 0, 10), new), Some(11));
        assert_eq!(finish(("a", 0, 11), new), Some(12));
        // Revoked again and assigned back at 0 (the topic made again): the old highest done
        // (99) is forgotten, and a late copy from before stores nothing.
        revoke();
        assert_eq!(offsets.done_below("a", 0), None, "not known here now");
        let fresh = offsets.begin(("a", 0, 0));
        for offset in 1..5 {
            offsets.begin(("a", 0, offset));
        }
        assert_eq!(finish(("a", 0, 40), new), None);
        for offset in 0..5 {
            assert_eq!(finish(("a", 0, offset), fresh), Some(offset + 1));
        }
    }

    /// Tasks finishing at once (through `Offsets::finish`, as `RoleConsumer::done` does)
    /// store a partition's offsets in increasing order, ending with the last: the live
    /// worker once left a lower offset stored last, and the partition uncommitted for good.
    #[test]
    fn concurrent_completions_store_in_order() {
        const RECORDS: i64 = 500;
        for round in 0..10 {
            let offsets = Offsets::default();
            let assignment = offsets.begin(("a", 0, 0));
            for offset in 1..RECORDS {
                offsets.begin(("a", 0, offset));
            }
            let stored = Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for thread in 0..8 {
                    let (offsets, stored) = (&offsets, &stored);
                    scope.spawn(move || {
                        for offset in (thread..RECORDS).step_by(8) {
                            let _ = offsets.finish::<()>(("a", 0, offset), assignment, |next| {
                                // librdkafka's store takes a moment, in which another task
                                // may finish.
                                std::thread::sleep(Duration::from_micros(offset as u64 * 7 % 50));
                                stored.lock().unwrap().push(next);
                                Ok(())
                            });
                        }
                    });
                }
            });
            let stored = stored.into_inner().unwrap();
            let back = stored.windows(2).find(|w| w[0] >= w[1]);
            assert_eq!(back, None, "round {round}: a store went back");
            assert_eq!(stored.last(), Some(&RECORDS), "round {round}");
        }
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
