//! The durability policy: a prepared push made durable, or refused, within the ack deadline.
//!
//! A 200 means the event is durable: Kafka's delivery report says so, or it is fsync'd to the
//! spool (replayed to Kafka later with the same id), or an earlier attempt of it was (the
//! dedup store says `done`). Anything else is a 503, and WeChat retries.
//!
//! - **Claim** the id in the dedup store (with the push's nonce binding, if any) within the
//!   claim budget. Done: 200, nothing published. Another attempt holds it: 503. The nonce
//!   seen with another body, by the store or by this instance: 403. Redis down or slow: go on
//!   without a claim, since a duplicate is better than a loss.
//! - **Join the spool** while it holds records, so records reach Kafka in the order they were
//!   answered. If it cannot take the push in half the time left (full, failing or hung), the
//!   push goes to Kafka directly (it may then overtake spooled records of its user).
//! - **Publish** under the deadline, less the time an fsync may take when there is a spool.
//!   Kafka refusing for now, or not confirming in time: the spool takes it. Kafka refusing the
//!   record as it is, or for its setup: 503, never spooled. No spool, or the spool refuses: 503.
//! - **Settle** the claim: confirm once durable, release otherwise, waiting until the deadline
//!   at most (a confirm or release still running then finishes in the background). A produce
//!   that outlives the deadline is followed by a task that settles once Kafka reports.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::DeliveryFuture;
use schemas::Topic;
use tokio::sync::oneshot;

use crate::cloudevents::CloudEvent;
use crate::config::Config;
use crate::error::{PushError, Rejection, Unavailable};
use crate::publish::{PublishError, Publisher};
use crate::readiness::Readiness;
use crate::recent::{Binding, RecentNonces};
use crate::spool::{Spool, SpoolError, SpoolRecord};
use store::dedup::{Claim, ClaimRequest, DedupStore, NonceBinding};
use store::StoreError;

/// How long a push waits for the replay to finish draining the spool before it joins the
/// backlog instead (at most a quarter of the ack deadline).
const DRAIN_WAIT: Duration = Duration::from_millis(250);

/// With a spool, Kafka's share of the ack deadline ends this much earlier (at most a quarter
/// of the deadline), leaving time to fsync the push to the spool instead.
const SPOOL_RESERVE: Duration = Duration::from_millis(500);

/// The least a spool append is given, even when the deadline is (about) reached: one fsync.
const SPOOL_MIN_WAIT: Duration = Duration::from_millis(50);

/// A push checked and normalized: its Kafka record, and what its claim binds.
#[derive(Debug)]
pub struct Prepared<'a> {
    pub topic: Topic,
    /// The event id: the dedup identity, the same for every retry of the push.
    pub id: schemas::EventId,
    /// The record's key: the user's OpenID, so each user's events keep their order.
    pub key: schemas::OpenId,
    /// The record: the normalized event as JSON.
    pub payload: Vec<u8>,
    /// The record's CloudEvents attributes (its headers).
    pub ce: CloudEvent,
    /// The binding of (timestamp, nonce) to the body: a plaintext push's always, an encrypted
    /// one's while its account also takes plaintext; otherwise `None` (`msg_signature` covers
    /// the ciphertext, and plaintext is refused).
    pub binding: Option<BodyBinding<'a>>,
}

/// In plaintext mode the signature does not cover the body: the claim binds (timestamp, nonce)
/// to the body's digest, so a captured query cannot carry another body. While an account takes
/// plaintext as well as encrypted pushes, an encrypted push binds its pair to its decrypted
/// push's digest, so its query stripped of `msg_signature` cannot carry another plaintext body
/// either (only the push itself, which is the same event). Keyed
/// by the account the request was routed to, never by anything the body says.
#[derive(Debug)]
pub struct BodyBinding<'a> {
    pub account: &'a str,
    pub timestamp: &'a str,
    pub nonce: &'a str,
    pub body_sha1: [u8; 20],
    /// `body_sha1` in hex, as the store keeps it.
    pub body_digest: String,
}

/// A push answered 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Published now, and durable.
    Published,
    /// A retry of an event already durable: nothing published.
    Duplicate,
    /// Kafka could not take it in time: fsync'd to the local spool, replayed to Kafka later.
    Spooled,
}

/// Decrements a gauge when dropped.
struct Decrement(metrics::Gauge);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A push's Kafka record, borrowed: a spool record is made of it only when the push goes to
/// the spool.
#[derive(Debug, Clone, Copy)]
struct Outgoing<'a> {
    topic: &'a str,
    key: &'a str,
    id: &'a str,
    value: &'a [u8],
    /// Its headers' attributes; a spooled record keeps only its value (replay reads them
    /// back from it).
    ce: &'a CloudEvent,
}

impl Outgoing<'_> {
    fn to_spool(self) -> SpoolRecord {
        SpoolRecord {
            topic: self.topic.to_owned(),
            key: self.key.to_owned(),
            id: self.id.to_owned(),
            value: self.value.to_vec(),
        }
    }
}

/// One push being delivered: its record, its claim, and its deadlines.
struct Attempt<'a> {
    out: Outgoing<'a>,
    /// Unique to this attempt, so only it can release its claim.
    token: &'a str,
    /// The push holds its claim (Redis answered the claim).
    claimed: bool,
    answer_by: Instant,
    /// Until when the answer waits for a confirm or release: the deadline for a push that
    /// claimed, so WeChat's retries find it settled; now for one that could not claim, so it
    /// never waits on a Redis that is down.
    settle_wait: Instant,
}

/// What the claim decided, when the push goes on.
enum Claimed {
    Held,
    /// Redis could not answer: published without a claim.
    Without,
    /// Already durable.
    Done,
}

/// Everything the durability policy needs, shared by all pushes.
#[derive(Debug)]
pub struct Durability {
    deadline: Duration,
    lease: Duration,
    dedup_ttl: Duration,
    nonce_ttl: Duration,
    store: Arc<dyn DedupStore>,
    publisher: Arc<Publisher>,
    spool: Option<Arc<Spool>>,
    /// How long a claim may take, queue wait included, before the push goes on without it.
    claim_budget: Duration,
    /// Metric handles of the hot path, looked up once.
    kafka_in_flight: metrics::Gauge,
    produce_seconds: metrics::Histogram,
    /// This instance's (timestamp, nonce) bindings, checked while the store cannot answer.
    recent_nonces: RecentNonces,
    /// Makes each attempt's claim token unique: this process's start time, then a counter.
    instance: String,
    attempts: AtomicU64,
}

impl Durability {
    pub fn new(
        config: &Config,
        store: Arc<dyn DedupStore>,
        publisher: Arc<Publisher>,
        spool: Option<Arc<Spool>>,
    ) -> Self {
        Durability {
            deadline: config.ack_deadline(),
            lease: config.claim_lease(),
            dedup_ttl: config.dedup_ttl(),
            nonce_ttl: config.nonce_ttl(),
            store,
            publisher,
            spool,
            claim_budget: config.claim_budget(),
            kafka_in_flight: metrics::gauge!("wxpipe_kafka_in_flight"),
            produce_seconds: metrics::histogram!("wxpipe_kafka_produce_seconds"),
            recent_nonces: RecentNonces::new(config.nonce_ttl()),
            instance: ops::instance_id(),
            attempts: AtomicU64::new(0),
        }
    }

    /// A readiness handle on the dependencies a push is made durable with.
    pub fn readiness(&self) -> Readiness {
        Readiness::new(
            Arc::clone(&self.store),
            Arc::clone(&self.publisher),
            self.spool.clone(),
        )
    }

    /// Makes a prepared push durable, received at `arrived`. `Ok` means answer 200.
    pub async fn deliver(
        self: &Arc<Self>,
        push: Prepared<'_>,
        arrived: Instant,
    ) -> Result<Accepted, PushError> {
        let answer_by = arrived + self.deadline;
        let token = format!(
            "{}.{}",
            self.instance,
            self.attempts.fetch_add(1, Ordering::Relaxed)
        );
        let claimed = match self.claim(&push, &token, answer_by).await? {
            Claimed::Held => true,
            Claimed::Without => false,
            Claimed::Done => return Ok(Accepted::Duplicate),
        };
        let attempt = Attempt {
            out: Outgoing {
                topic: self.publisher.topic_name(push.topic),
                key: &push.key,
                id: &push.id,
                value: &push.payload,
                ce: &push.ce,
            },
            token: &token,
            claimed,
            answer_by,
            settle_wait: if claimed { answer_by } else { Instant::now() },
        };
        // A full spool could not take the push: Kafka gets the whole deadline.
        let spool = self
            .spool
            .as_ref()
            .filter(|spool| spool.bytes() < spool.max_bytes());
        let Some(backlog) = self.backlog_to_join(spool).await else {
            return self.publish(&attempt, spool).await;
        };
        match self.join_backlog(backlog, &attempt).await {
            Some(spooled) => Ok(spooled),
            None => self.publish(&attempt, None).await,
        }
    }

    /// Claims the push's id, its nonce binding checked in the same round trip. The claim gets
    /// a share of the deadline, queue wait included: a Redis that cannot answer in time is a
    /// Redis that is down, and the push goes on without it.
    async fn claim(
        &self,
        push: &Prepared<'_>,
        token: &str,
        answer_by: Instant,
    ) -> Result<Claimed, PushError> {
        let request = ClaimRequest {
            id: &push.id,
            token,
            lease: self.lease,
            nonce: push.binding.as_ref().map(|binding| NonceBinding {
                account: binding.account,
                timestamp: binding.timestamp,
                nonce: binding.nonce,
                body_digest: &binding.body_digest,
                ttl: self.nonce_ttl,
            }),
        };
        let claim = match tokio::time::timeout(self.claim_budget, self.store.claim(request)).await {
            Ok(claim) => claim,
            Err(_) => Err(StoreError::Timeout),
        };
        if let Some(binding) = &push.binding {
            self.bind_here(binding, &claim, &push.id, token, answer_by)
                .await?;
        }
        // Redis down: publish without a claim. A duplicate is better than a loss, and every
        // 200 still means "on Kafka".
        match claim {
            Ok(Claim::Claimed) => Ok(Claimed::Held),
            Ok(Claim::Done) => Ok(Claimed::Done),
            Ok(Claim::InFlight) => Err(Unavailable::InFlight.into()),
            Ok(Claim::Replayed) => Err(Rejection::ReplayedNonce.into()),
            Err(error) => {
                let kind = error.kind();
                metrics::counter!("wxpipe_redis_errors_total", "op" => "claim", "kind" => kind)
                    .increment(1);
                if error.is_outage() {
                    tracing::warn!(%error, id = %ops::redact_id(&push.id), "dedup store unavailable: publishing without a claim");
                } else {
                    // Not Redis being down: a script or key Redis refuses. The start-up check
                    // refuses configurations that cause this; losing the event is worse than
                    // publishing it unclaimed.
                    tracing::error!(%error, kind, id = %ops::redact_id(&push.id), "dedup store refused the claim: publishing without a claim");
                }
                Ok(Claimed::Without)
            }
        }
    }

    /// This instance keeps every binding the store did not refuse, and refuses a pair it saw
    /// with another body whatever the store says: the store may have missed the first body
    /// (it was down then, or lost the key in a failover). A claim taken meanwhile is released.
    async fn bind_here(
        &self,
        binding: &BodyBinding<'_>,
        claim: &Result<Claim, StoreError>,
        id: &str,
        token: &str,
        answer_by: Instant,
    ) -> Result<(), PushError> {
        if matches!(claim, Ok(Claim::Replayed)) {
            return Ok(());
        }
        let here = self.recent_nonces.bind(
            binding.account,
            binding.timestamp,
            binding.nonce,
            &binding.body_sha1,
        );
        if here != Binding::Replayed {
            return Ok(());
        }
        if let Ok(Claim::Claimed) = claim {
            self.settle_by(answer_by, id, token, true, Err(None)).await;
        }
        Err(Rejection::ReplayedNonce.into())
    }

    /// The spool a push joins: one holding records not yet on Kafka, unless the replay is
    /// taking the last of them. A spool whose disk failed or hung is not joined (the push
    /// tries Kafka first; the spool stays its fallback) until a probe write succeeds: the push
    /// starts one in the background unless one is running.
    async fn backlog_to_join<'s>(&self, spool: Option<&'s Arc<Spool>>) -> Option<&'s Arc<Spool>> {
        let spool = spool?;
        if spool.failing() {
            // Its outcome clears the flag; nobody waits for it.
            let _ = spool.start_probe();
            return None;
        }
        if !spool.active() {
            return None;
        }
        // While the replay takes the last of the backlog, wait for it (briefly) rather than
        // join the backlog: under steady load the spool would otherwise never empty.
        let drain_by = Instant::now() + DRAIN_WAIT.min(self.deadline / 4);
        (!spool.wait_drained(drain_by).await).then_some(spool)
    }

    /// Appends the push behind the spooled records, in half the time left at most: a spool
    /// that hangs (a stalled volume) leaves the other half to Kafka. `None`: it did not.
    async fn join_backlog(&self, spool: &Spool, attempt: &Attempt<'_>) -> Option<Accepted> {
        let id = attempt.out.id;
        let by = Instant::now() + attempt.answer_by.saturating_duration_since(Instant::now()) / 2;
        let appended =
            tokio::time::timeout_at(by.into(), spool.append(&attempt.out.to_spool())).await;
        match appended {
            Ok(Ok(())) => return Some(self.spooled(attempt).await),
            Ok(Err(error)) => {
                tracing::warn!(%error, id = %ops::redact_id(id), "the spool refused a push: sending it to Kafka directly");
            }
            Err(_) => {
                spool.mark_stalled();
                tracing::warn!(id = %ops::redact_id(id), "the spool did not take a push in time: sending it to Kafka directly");
            }
        }
        None
    }

    /// Publishes the push within the deadline, less the time an fsync may take when the
    /// spool is its `fallback`.
    async fn publish(
        self: &Arc<Self>,
        attempt: &Attempt<'_>,
        fallback: Option<&Arc<Spool>>,
    ) -> Result<Accepted, PushError> {
        let deadline = attempt.answer_by
            - if fallback.is_some() {
                SPOOL_RESERVE.min(self.deadline / 4)
            } else {
                Duration::ZERO
            };
        let out = attempt.out;
        let produced = Instant::now();
        let delivery = match self.publisher.enqueue_named(
            out.topic,
            out.key,
            out.value,
            out.ce.headers(out.id),
        ) {
            Ok(delivery) => delivery,
            Err(error) => return self.not_taken(attempt, fallback, error).await,
        };
        let mut delivered = self.delivered(delivery, produced);
        match tokio::time::timeout_at(deadline.into(), delivered.as_mut()).await {
            Ok(Ok(())) => {
                self.settle_by(
                    attempt.settle_wait,
                    out.id,
                    attempt.token,
                    attempt.claimed,
                    Ok(()),
                )
                .await;
                Ok(Accepted::Published)
            }
            Ok(Err(error)) => self.not_taken(attempt, fallback, error).await,
            Err(_elapsed) => self.past_deadline(attempt, fallback, delivered).await,
        }
    }

    /// The delivery report of a produce started at `produced`, counted in flight while
    /// awaited. Boxed, so a task can follow it past the deadline.
    fn delivered(
        &self,
        delivery: DeliveryFuture,
        produced: Instant,
    ) -> Pin<Box<impl Future<Output = Result<(), PublishError>> + Send + 'static>> {
        let (in_flight, produce_seconds) =
            (self.kafka_in_flight.clone(), self.produce_seconds.clone());
        in_flight.increment(1.0);
        Box::pin(async move {
            // Down again however the wait ends: a push dropped meanwhile (its client hung up)
            // drops this future too.
            let _in_flight = Decrement(in_flight);
            let outcome = Publisher::delivered(delivery).await;
            produce_seconds.record(produced.elapsed().as_secs_f64());
            outcome
        })
    }

    /// Kafka did not take the push: the spool takes it if it may, else 503.
    async fn not_taken(
        &self,
        attempt: &Attempt<'_>,
        fallback: Option<&Arc<Spool>>,
        error: PublishError,
    ) -> Result<Accepted, PushError> {
        if let Some(spool) = fallback.filter(|_| error.spoolable()) {
            return self.spool(spool, attempt, true).await;
        }
        let (id, token) = (attempt.out.id, attempt.token);
        self.settle_by(
            attempt.settle_wait,
            id,
            token,
            attempt.claimed,
            Err(Some(&error)),
        )
        .await;
        Err(Unavailable::Publish(error).into())
    }

    /// Kafka did not report in time: the outcome is unknown. Spooled: the event is durable
    /// now, and if Kafka takes the first attempt too, that is a second copy with the same id.
    /// Not spooled: the claim stays pending until librdkafka reports, so a retry meanwhile gets
    /// 503, then is confirmed or released; if the lease runs out first, a retry publishes a
    /// second copy with the same id: better than a loss. (The replay waits for the first
    /// attempt's outcome, and skips the event if Kafka took it.)
    async fn past_deadline(
        self: &Arc<Self>,
        attempt: &Attempt<'_>,
        fallback: Option<&Arc<Spool>>,
        delivered: Pin<Box<impl Future<Output = Result<(), PublishError>> + Send + 'static>>,
    ) -> Result<Accepted, PushError> {
        // The task that follows the first produce starts before the spool append, so a push
        // dropped during the append (its client hung up) still settles: the task then counts
        // the record as not spooled (the replay may send a copy with the same id) and
        // releases the claim (a retry may too).
        let (spooled_tx, spooled_rx) = oneshot::channel::<bool>();
        if let Some(spool) = fallback {
            spool.outcome_pending();
        }
        self.settle_late(attempt, fallback.cloned(), delivered, spooled_rx);
        let result = match fallback {
            Some(spool) => self.spool(spool, attempt, false).await,
            None => Err(Unavailable::Deadline.into()),
        };
        let _ = spooled_tx.send(result.is_ok());
        result
    }

    /// Follows a produce past the deadline in a task of its own, then settles its claim and
    /// tells the spool (`follower`) whether Kafka took it after all.
    fn settle_late(
        self: &Arc<Self>,
        attempt: &Attempt<'_>,
        follower: Option<Arc<Spool>>,
        delivered: Pin<Box<impl Future<Output = Result<(), PublishError>> + Send + 'static>>,
        spooled: oneshot::Receiver<bool>,
    ) {
        let (durability, id, token) = (
            Arc::clone(self),
            attempt.out.id.to_owned(),
            attempt.token.to_owned(),
        );
        let claimed = attempt.claimed;
        tokio::spawn(async move {
            let outcome = delivered.await;
            let spooled = spooled.await.unwrap_or(false);
            if let Some(spool) = follower {
                spool.outcome_known(&id, spooled && outcome.is_ok());
            }
            // Spooled, the id is confirmed: the release then finds nothing of ours.
            let held = claimed && !spooled;
            let outcome = outcome.as_ref().map(drop).map_err(Some);
            durability.settle(&id, &token, held, outcome).await;
        });
    }

    /// A push the spool took: durable now, so its id is confirmed (whoever holds the claim).
    async fn spooled(&self, attempt: &Attempt<'_>) -> Accepted {
        metrics::counter!("wxpipe_spool_records_total", "op" => "appended").increment(1);
        self.settle_by(attempt.settle_wait, attempt.out.id, "", false, Ok(()))
            .await;
        Accepted::Spooled
    }

    /// Appends a push to the spool: once fsync'd it is durable, so its claim is confirmed and
    /// it is answered 200; the replay task takes it to Kafka. `release`: whether this push
    /// releases its claim if the append fails (a claim that got no answer too, since Redis may
    /// apply it late), or leaves that to the task following its first produce.
    async fn spool(
        &self,
        spool: &Spool,
        attempt: &Attempt<'_>,
        release: bool,
    ) -> Result<Accepted, PushError> {
        let id = attempt.out.id;
        let record = attempt.out.to_spool();
        // Never past the answer's deadline (the fsync itself gets a few milliseconds more at
        // most): a spool that hangs gets a 503, and WeChat retries. If the append lands after
        // all, the replay sends a copy with the same id.
        let by = attempt.answer_by.max(Instant::now() + SPOOL_MIN_WAIT);
        let appended = match tokio::time::timeout_at(by.into(), spool.append(&record)).await {
            Ok(appended) => appended,
            Err(_) => {
                spool.mark_stalled();
                Err(SpoolError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the spool did not take the push in time",
                )))
            }
        };
        match appended {
            Ok(()) => Ok(self.spooled(attempt).await),
            Err(error) => {
                tracing::error!(%error, id = %ops::redact_id(id), "kafka unavailable and the spool refused the event");
                if release {
                    self.settle_by(attempt.settle_wait, id, attempt.token, true, Err(None))
                        .await;
                }
                Err(Unavailable::Spool(error).into())
            }
        }
    }

    /// Settles a claim, waiting for it until `by` at most: a Redis stall never holds an answer
    /// past its deadline. A confirm or release is queued to the store on the first poll, and
    /// the store applies a queued step whoever still waits for it, so stopping to wait here
    /// does not cancel it.
    async fn settle_by(
        &self,
        by: Instant,
        id: &str,
        token: &str,
        held: bool,
        outcome: Result<(), Option<&PublishError>>,
    ) {
        let _ = tokio::time::timeout_at(by.into(), self.settle(id, token, held, outcome)).await;
    }

    /// Records a publish outcome: durable → confirm the id; failed (`Err(None)`: before Kafka
    /// was asked) → release our claim. `held`: the push holds the claim, so a release that
    /// fails is worth a warning (one is sent whatever it holds).
    async fn settle(
        &self,
        id: &str,
        token: &str,
        held: bool,
        outcome: Result<(), Option<&PublishError>>,
    ) {
        match outcome {
            Ok(()) => {
                if let Err(error) = self.store.confirm(id, self.dedup_ttl).await {
                    metrics::counter!("wxpipe_redis_errors_total", "op" => "confirm", "kind" => error.kind())
                        .increment(1);
                    tracing::warn!(%error, id = %ops::redact_id(id), "event is durable but its claim could not be confirmed");
                }
            }
            Err(publish_error) => {
                match publish_error {
                    Some(e) if e.is_permanent() => {
                        tracing::error!(error = %e, id = %ops::redact_id(id), "kafka refused the event permanently");
                    }
                    Some(e) => {
                        tracing::warn!(error = %e, id = %ops::redact_id(id), "kafka did not take the event");
                    }
                    None => {}
                }
                // Released even when the claim got no answer: Redis may apply it late (after a
                // stall), and its lease would then start late and outlast WeChat's retry. The
                // release is queued after the claim and deletes only our own token, so it undoes
                // a late claim and nothing else.
                if let Err(error) = self.store.release(id, token).await {
                    if held {
                        metrics::counter!("wxpipe_redis_errors_total", "op" => "release", "kind" => error.kind())
                            .increment(1);
                        tracing::warn!(%error, id = %ops::redact_id(id), "claim not released; it expires with its lease");
                    }
                }
            }
        }
    }
}
