//! The topics as the system of record: `worker rebuild` makes a role's Redis projection again
//! from its topics, `worker redrive` moves a role's dead letters back to where they came from.
//!
//! ```text
//! rebuild: {prefix}.event.subscribe ─▶ then {prefix}.event.unsubscribe ─▶ Effects::apply ─▶ Redis
//!          (earliest offset → every topic's end offsets, all taken at the start; a consumer
//!          that commits nothing)
//! redrive: {prefix}.dlq.{role} ─▶ source_topic header ─▶ the record back, key, value, headers
//!          + wxpipe_redrive_role={role} (the topic's other roles skip it)
//!          (from group wxpipe-redrive-{role}'s offsets to the end; committed once written)
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use schemas::Event;
use tokio::sync::Semaphore;

use crate::config::{Config, Role};
pub use crate::consume::REDRIVE_ROLE_HEADER;
use crate::consume::{ConsumerSettings, DEAD_LETTER_HEADERS};
use crate::effects::{Effects, Outcome};
use crate::error::StartError;

/// How long a metadata, watermark or offset query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a rebuild or a redrive stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0} is not in the cluster")]
    NoTopic(String),
    #[error("{0}")]
    Refused(String),
}

impl ReplayError {
    /// A configuration that cannot work (exit 2), rather than a failure on the way (exit 1).
    pub fn is_config(&self) -> bool {
        matches!(self, ReplayError::Start(_) | ReplayError::Refused(_))
    }
}

/// A consumer of its own: assigned by hand (no group membership), committing nothing unless
/// told to.
fn consumer(settings: &ConsumerSettings, group: &str) -> Result<Arc<StreamConsumer>, KafkaError> {
    crate::kafka::client_config(
        &settings.brokers,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("reconnect.backoff.max.ms", "1000"),
        ],
        &[&settings.common, &settings.overrides],
    )
    .create()
    .map(Arc::new)
}

use crate::kafka::blocking as query;

/// (partition, low, high) of every partition of `topic`, now.
async fn watermarks(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
) -> Result<Vec<(i32, i64, i64)>, ReplayError> {
    let name = topic.to_owned();
    match query(consumer, move |c| {
        crate::kafka::watermarks(c, &name, QUERY_TIMEOUT)
    })
    .await
    {
        Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition)) => {
            Err(ReplayError::NoTopic(topic.to_owned()))
        }
        found => Ok(found?),
    }
}

/// Reads `topic` from `starts` (partition → first offset) up to `ends` (partition → end
/// offset, exclusive), handing each record to `each` in offset order per partition.
async fn read_range<F, Fut>(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    starts: &HashMap<i32, i64>,
    ends: &HashMap<i32, i64>,
    mut each: F,
) -> Result<(), ReplayError>
where
    F: FnMut(OwnedMessage) -> Fut,
    Fut: std::future::Future<Output = Result<(), ReplayError>>,
{
    let mut open: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for (&partition, &start) in starts {
        let end = ends[&partition];
        if start < end {
            assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
            open.insert(partition, end);
        }
    }
    if open.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    while !open.is_empty() {
        let message = match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(Ok(message)) => message.detach(),
            Ok(Err(error)) => {
                tracing::warn!(%error, topic, "consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) => {
                tracing::warn!(
                    topic,
                    partitions = open.len(),
                    "no record for 30 s: still waiting for Kafka"
                );
                continue;
            }
        };
        let partition = message.partition();
        // A record of the topic read before (a partition of the same number) is not ours.
        let Some(&end) = open.get(&partition).filter(|_| message.topic() == topic) else {
            continue;
        };
        if message.offset() >= end {
            open.remove(&partition);
            continue;
        }
        let last = message.offset() + 1 >= end;
        each(message).await?;
        if last {
            open.remove(&partition);
        }
    }
    consumer.unassign()?;
    Ok(())
}

/// What a rebuild did with a topic's records.
#[derive(Debug, Default)]
struct Tally {
    applied: AtomicU64,
    skipped: AtomicU64,
    /// Not applicable: not a wxpipe event, invalid, or still failing after its attempts (the
    /// live worker dead-lettered them).
    refused: AtomicU64,
}

/// Applies one record's effect as the live role would, but never dead-letters: an outage is
/// waited out, an unexplained failure tried `max_attempts` times.
async fn apply(
    effects: &Effects,
    role: Role,
    message: &OwnedMessage,
    max_attempts: u32,
    tally: &Tally,
) {
    let event = match Event::from_json(message.payload().unwrap_or_default()) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(topic = message.topic(), partition = message.partition(),
                offset = message.offset(), %error, "not a wxpipe event: passed by");
            tally.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut attempt = 1;
    let mut waits = 0u32;
    loop {
        match effects.apply(role, &event).await {
            Outcome::Done => {
                tally.applied.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Outcome::Skipped(_) | Outcome::TooOld(_) | Outcome::Unknown(_) => {
                tally.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Outcome::Wait(reason) | Outcome::Held(reason) => {
                if waits == 0 {
                    tracing::warn!(role = role.name(), %reason, "a dependency is failing: the rebuild waits for it");
                }
                waits += 1;
                tokio::time::sleep(crate::consume::backoff(waits)).await;
            }
            Outcome::Retry(_) if attempt < max_attempts => {
                tokio::time::sleep(crate::consume::backoff(attempt)).await;
                attempt += 1;
            }
            Outcome::Retry(reason) | Outcome::Poison(reason) => {
                tracing::warn!(role = role.name(), topic = message.topic(), partition = message.partition(),
                    offset = message.offset(), %reason, "record not applied");
                tally.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// `worker rebuild --role …`: each role's topics, one after the other (for `unbind`, every
/// subscribe before any unsubscribe, so an unsubscribe deletes a binding only when no
/// subscribe is newer, as the live role's gate ensures), from the earliest offset to the end
/// offsets every topic had when the rebuild started, into the configured Redis.
pub async fn rebuild(config: &Config, roles: &[Role]) -> Result<(), ReplayError> {
    let roles: Vec<Role> = if roles.is_empty() {
        vec![Role::Unbind, Role::Location]
    } else {
        let mut unique = roles.to_vec();
        unique.dedup();
        unique
    };
    if roles.contains(&Role::Welcome) {
        return Err(ReplayError::Refused(
            "--role welcome is refused: a rebuild never sends messages (welcome is not a \
             projection); rebuild `unbind` or `location`"
                .into(),
        ));
    }
    if roles.contains(&Role::Component) {
        return Err(ReplayError::Refused(
            "--role component is refused: an authorization code is good once, so its \
             exchange is never replayed; rebuild `unbind` or `location`"
                .into(),
        ));
    }
    let settings = ConsumerSettings::from_config(config)?;
    let effects = crate::setup::effects(config).await?;
    // A group of its own, never committed: no live worker sees it.
    let group = format!("wxpipe-rebuild-{}", ops::instance_id());
    let consumer = consumer(&settings, &group)?;
    // Every topic's end offsets first, before reading any: the rebuild is the log as it was
    // when it started, and what is written meanwhile is the live roles' to apply.
    let mut plan = Vec::new();
    for &role in &roles {
        for topic in role.topics(&settings.topic_prefix) {
            let marks = watermarks(&consumer, &topic).await?;
            plan.push((role, topic, marks));
        }
    }
    for (role, topic, marks) in plan {
        let starts: HashMap<i32, i64> = marks.iter().map(|&(p, low, _)| (p, low)).collect();
        let ends: HashMap<i32, i64> = marks.iter().map(|&(p, _, high)| (p, high)).collect();
        let total: u64 = marks
            .iter()
            .map(|&(_, low, high)| (high - low).max(0) as u64)
            .sum();
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} {per_sec}",
            )
            .expect("valid template"),
        );
        bar.set_message(topic.clone());
        let tally = Arc::new(Tally::default());
        let permits = Arc::new(Semaphore::new(settings.concurrency));
        // Records of one topic are applied concurrently: every effect is last-write-wins
        // by created_at and idempotent, so their order within a topic does not matter.
        read_range(&consumer, &topic, &starts, &ends, |message| {
            let (effects, tally, permits, bar) = (
                Arc::clone(&effects),
                Arc::clone(&tally),
                Arc::clone(&permits),
                bar.clone(),
            );
            let max_attempts = settings.max_attempts;
            async move {
                let permit = permits.acquire_owned().await.expect("semaphore open");
                tokio::spawn(async move {
                    apply(&effects, role, &message, max_attempts, &tally).await;
                    bar.inc(1);
                    drop(permit);
                });
                Ok(())
            }
        })
        .await?;
        // Every record handed out is done once every permit is back.
        let _all = permits
            .acquire_many(settings.concurrency as u32)
            .await
            .expect("semaphore open");
        bar.finish_and_clear();
        println!(
            "rebuilt {} from {topic}: {total} record(s), {} applied, {} skipped, {} not applicable",
            role.name(),
            tally.applied.load(Ordering::Relaxed),
            tally.skipped.load(Ordering::Relaxed),
            tally.refused.load(Ordering::Relaxed),
        );
    }
    println!(
        "rebuild done: the projection is in Redis under the key prefix {}",
        config.shared.key_prefix
    );
    Ok(())
}

/// `worker redrive --role ROLE`: the role's dead letters from its redrive group's committed
/// offsets to the end offsets seen at the start, each written back to its `source_topic`
/// (key, value and the record's own headers, without the dead letter's, and a
/// [`REDRIVE_ROLE_HEADER`] naming `role`, the only role that handles it), then committed.
/// Returns how many records moved.
pub async fn redrive(config: &Config, role: Role) -> Result<u64, ReplayError> {
    let settings = ConsumerSettings::from_config(config)?;
    let dlq = role.dlq_topic(&settings.topic_prefix);
    let consumer = consumer(&settings, &role.redrive_group())?;
    let producer: FutureProducer = settings.dead_letter_config().create()?;
    let marks = watermarks(&consumer, &dlq).await?;
    let mut list = TopicPartitionList::new();
    for &(p, _, _) in &marks {
        list.add_partition(&dlq, p);
    }
    let committed = query(&consumer, move |c| c.committed_offsets(list, QUERY_TIMEOUT)).await?;
    let starts: HashMap<i32, i64> = marks
        .iter()
        .map(|&(p, low, _)| {
            let from = match committed.find_partition(&dlq, p).map(|e| e.offset()) {
                Some(Offset::Offset(at)) => at.max(low),
                _ => low,
            };
            (p, from)
        })
        .collect();
    let ends: HashMap<i32, i64> = marks.iter().map(|&(p, _, high)| (p, high)).collect();
    let moved = AtomicU64::new(0);
    let left = AtomicU64::new(0);
    let by_topic: std::sync::Mutex<HashMap<String, u64>> = std::sync::Mutex::default();
    read_range(&consumer, &dlq, &starts, &ends, |message| {
        let (producer, consumer, dlq) = (&producer, &consumer, &dlq);
        let (moved, left, by_topic) = (&moved, &left, &by_topic);
        async move {
            let source = message.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "source_topic")
                    .and_then(|h| std::str::from_utf8(h.value?).ok().map(str::to_owned))
            });
            match source {
                Some(topic) => {
                    let mut headers = OwnedHeaders::new();
                    if let Some(own) = message.headers() {
                        for header in own.iter() {
                            if !DEAD_LETTER_HEADERS.contains(&header.key) {
                                headers = headers.insert(Header {
                                    key: header.key,
                                    value: header.value,
                                });
                            }
                        }
                    }
                    // For this role only: the other roles of the topic skip it.
                    let headers = headers.insert(Header {
                        key: REDRIVE_ROLE_HEADER,
                        value: Some(role.name()),
                    });
                    let mut record = FutureRecord::to(&topic)
                        .payload(message.payload().unwrap_or_default())
                        .headers(headers);
                    if let Some(key) = message.key() {
                        record = record.key(key);
                    }
                    producer
                        .send(record, Duration::from_secs(30))
                        .await
                        .map_err(|(error, _)| error)?;
                    moved.fetch_add(1, Ordering::Relaxed);
                    *by_topic.lock().expect("tally").entry(topic).or_default() += 1;
                }
                None => {
                    tracing::warn!(
                        partition = message.partition(),
                        offset = message.offset(),
                        "a dead letter without a source_topic header: left where it is"
                    );
                    left.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Written (or passed by): the next run starts after it.
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(
                dlq,
                message.partition(),
                Offset::Offset(message.offset() + 1),
            )?;
            query(consumer, move |c| c.commit(&list, CommitMode::Sync)).await?;
            Ok(())
        }
    })
    .await?;
    let moved = moved.into_inner();
    println!(
        "redrive {}: moved {moved} record(s) from {dlq} back to their topics",
        role.name()
    );
    let mut topics: Vec<_> = by_topic.into_inner().expect("tally").into_iter().collect();
    topics.sort();
    for (topic, n) in topics {
        println!("  {topic}: {n}");
    }
    let left = left.into_inner();
    if left > 0 {
        println!("  {left} record(s) without a source_topic header were left in {dlq}");
    }
    Ok(moved)
}
