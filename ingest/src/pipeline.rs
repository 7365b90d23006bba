//! One push, from verified request to durable record: the unit of work of the ingress.
//!
//! verify → decrypt → parse → normalize → claim → publish → confirm (or release). The 200 is returned
//! only once Kafka's delivery report says the record is durable, or for a retry of an event
//! that is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use schemas::Topic;
use sha1::{Digest, Sha1};

use crate::accounts::Account;
use crate::config::Config;
use crate::error::{PushError, Rejection, Unavailable};
use crate::publish::PublishError;
use crate::publish::Publisher;
use crate::recent::{Binding, RecentNonces};
use crate::spool::{Spool, SpoolError, SpoolRecord};
use store::dedup::{Claim, ClaimRequest, DedupStore, NonceBinding};
use store::StoreError;
use wechat::normalize::normalize;
use wechat::parse::{self, ParseError, Push};
use wechat::verify;

/// How long a push waits for the replay to finish draining the spool before it joins the
/// backlog instead (at most a quarter of the ack deadline).
const DRAIN_WAIT: Duration = Duration::from_millis(250);

/// With a spool, Kafka's share of the ack deadline ends this much earlier (at most a quarter
/// of the deadline), leaving time to fsync the push to the spool instead.
const SPOOL_RESERVE: Duration = Duration::from_millis(500);

/// The least a spool append is given, even when the deadline is (about) reached: one fsync.
const SPOOL_MIN_WAIT: Duration = Duration::from_millis(50);

pub use wechat::Query;

/// A parameter the query must carry.
fn required<'a>(value: &'a Option<String>, name: &'static str) -> Result<&'a str, Rejection> {
    value.as_deref().ok_or(Rejection::MissingParam(name))
}

/// How far a push's `CreateTime` may lie ahead of its signed `timestamp`: WeChat stamps the
/// event before it signs the request, so a later `CreateTime` is a forgery that would win every
/// last-write-wins comparison downstream.
pub const MAX_CREATE_TIME_AHEAD: i64 = 60;

/// A query whose `signature` and `timestamp` passed: checked before the body is read, so an
/// unsigned request costs neither a read nor an in-flight permit.
#[derive(Debug)]
pub struct Signed {
    query: Query,
    timestamp: i64,
}

impl Signed {
    fn timestamp(&self) -> &str {
        self.query.timestamp.as_deref().unwrap_or_default()
    }

    fn nonce(&self) -> &str {
        self.query.nonce.as_deref().unwrap_or_default()
    }
}

/// A verified push: its plaintext XML, and whether it came encrypted.
struct Opened<'b> {
    xml: std::borrow::Cow<'b, [u8]>,
    encrypted: bool,
}

/// Decrements a gauge when dropped.
struct Decrement(metrics::Gauge);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A normalized push on its way to Kafka, borrowed: a spool record is made of it only when the
/// push goes to the spool.
#[derive(Debug, Clone, Copy)]
struct Outgoing<'a> {
    topic: &'a str,
    key: &'a str,
    id: &'a str,
    value: &'a [u8],
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

/// Everything a push needs, shared by all requests.
#[derive(Debug)]
pub struct Pipeline {
    tolerance: u64,
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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Pipeline {
    pub fn new(
        config: &Config,
        store: Arc<dyn DedupStore>,
        publisher: Arc<Publisher>,
        spool: Option<Arc<Spool>>,
    ) -> Self {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Pipeline {
            tolerance: config.timestamp_tolerance,
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
            instance: format!(
                "{}.{}.{}",
                std::process::id(),
                started.as_secs(),
                started.subsec_nanos()
            ),
            attempts: AtomicU64::new(0),
        }
    }

    /// Whether a push can be made durable now: Kafka answers, or the spool can take it. Redis
    /// down is degraded (pushes go on without claims), never unready: behind a load balancer,
    /// a Redis blip would otherwise take every ingress out at once.
    pub async fn readiness(&self) -> Result<String, String> {
        let up = |dependency: &'static str, up: bool| {
            metrics::gauge!("wxpipe_dependency_up", "dependency" => dependency).set(if up {
                1.0
            } else {
                0.0
            });
        };
        // Both at once: a probe waits at most about a second, whatever is down.
        let publisher = Arc::clone(&self.publisher);
        let (redis, kafka) = tokio::join!(self.store.ping(), async move {
            tokio::task::spawn_blocking(move || publisher.reachable(Duration::from_secs(1)))
                .await
                .map_err(|e| e.to_string())
                .and_then(|reached| reached.map_err(|e| e.to_string()))
        });
        let redis = redis.map_err(|e| format!("redis: {e}"));
        let kafka = kafka.map_err(|e| format!("kafka: {e}"));
        up("redis", redis.is_ok());
        up("kafka", kafka.is_ok());
        let spool = match &self.spool {
            // A disk that failed is probed again, so readiness comes back with it.
            Some(spool) if !spool.writable() && spool.bytes() < spool.max_bytes() => {
                Some(spool.probe_bounded(Duration::from_secs(1)).await)
            }
            Some(spool) => Some(spool.writable()),
            None => None,
        };
        if let Some(writable) = spool {
            up("spool", writable);
        }
        let mut degraded: Vec<String> = Vec::new();
        if let Err(redis) = redis {
            degraded.push(format!("{redis} (publishing without dedup claims)"));
        }
        match (kafka, spool) {
            (Ok(()), _) => {}
            (Err(kafka), Some(true)) => degraded.push(format!("{kafka} (spooling)")),
            (Err(kafka), Some(false)) => return Err(format!("{kafka}; spool: not writable")),
            (Err(kafka), None) => return Err(kafka),
        }
        if degraded.is_empty() {
            Ok("ready".into())
        } else {
            Ok(format!("degraded: {}", degraded.join("; ")))
        }
    }

    /// `GET`: WeChat's URL verification. Returns the `echostr` to echo.
    pub fn verify_url(&self, account: &Account, query: Query) -> Result<String, Rejection> {
        let signature = required(&query.signature, "signature")?;
        let timestamp = required(&query.timestamp, "timestamp")?;
        let nonce = required(&query.nonce, "nonce")?;
        required(&query.echostr, "echostr")?;
        verify::check(signature, &mut [account.token.expose(), timestamp, nonce])?;
        Ok(query.echostr.unwrap_or_default())
    }

    /// Checks a push's query: its `signature` over (token, timestamp, nonce) and the replay
    /// window. WeChat sends `signature` in every mode, so this needs no body.
    pub fn check_query(&self, account: &Account, query: Query) -> Result<Signed, Rejection> {
        let signature = required(&query.signature, "signature")?;
        let timestamp = required(&query.timestamp, "timestamp")?;
        let nonce = required(&query.nonce, "nonce")?;
        verify::check(signature, &mut [account.token.expose(), timestamp, nonce])?;
        let timestamp = verify::check_timestamp(timestamp, unix_now(), self.tolerance)?;
        Ok(Signed { query, timestamp })
    }

    /// Returns a signed push's plaintext XML: the body itself, or in compatible and safe mode
    /// the decrypted `Encrypt` (the plaintext fields beside it do not count).
    fn open<'b>(
        &self,
        account: &Account,
        signed: &'b Signed,
        body: &'b [u8],
    ) -> Result<Opened<'b>, Rejection> {
        let query = &signed.query;
        if !query
            .encrypt_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("aes"))
        {
            // WeChat always encrypts for an account with a key: a plaintext push there is a
            // captured query with its `encrypt_type` and `msg_signature` dropped.
            if account.aes_key.is_some() {
                if !account.accept_plaintext {
                    return Err(Rejection::PlaintextRefused);
                }
                tracing::warn!(account = %account.name, "plaintext push accepted for an account with an EncodingAESKey (accept_plaintext is on)");
            }
            return Ok(Opened {
                xml: body.into(),
                encrypted: false,
            });
        }
        let msg_signature = required(&query.msg_signature, "msg_signature")?;
        let key = account.aes_key.as_ref().ok_or(Rejection::NoAesKey)?;
        let envelope = parse::parse_document(body)?;
        let encrypt = envelope
            .iter()
            .find_map(|(name, value)| (name == "Encrypt").then(|| value.as_str()).flatten())
            .ok_or(ParseError::Missing("Encrypt"))?;
        verify::check(
            msg_signature,
            &mut [
                account.token.expose(),
                signed.timestamp(),
                signed.nonce(),
                encrypt,
            ],
        )?;
        let appid = account.appid.as_deref().unwrap_or_default();
        Ok(Opened {
            xml: key.decrypt(encrypt, appid)?.into(),
            encrypted: true,
        })
    }

    /// `POST`: one push for `account`, received at `arrived`. `Ok` means answer 200. Also
    /// returns the push's topic when it got that far, for metrics.
    pub async fn push(
        self: &Arc<Self>,
        account: &Account,
        signed: &Signed,
        body: &[u8],
        arrived: Instant,
    ) -> (Option<Topic>, Result<Accepted, PushError>) {
        let mut topic = None;
        let result = self
            .push_to(account, signed, body, arrived, &mut topic)
            .await;
        (topic, result)
    }

    async fn push_to(
        self: &Arc<Self>,
        account: &Account,
        signed: &Signed,
        body: &[u8],
        arrived: Instant,
        topic_seen: &mut Option<Topic>,
    ) -> Result<Accepted, PushError> {
        let Opened { xml, encrypted } = self.open(account, signed, body)?;
        let push = Push::try_from(&xml[..])?;
        if account
            .original_id
            .as_ref()
            .is_some_and(|id| *id != push.to_user)
        {
            return Err(Rejection::WrongAccount.into());
        }
        if push.create_time > signed.timestamp.saturating_add(MAX_CREATE_TIME_AHEAD) {
            return Err(Rejection::CreateTimeAhead.into());
        }
        let received_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let event = normalize(push, received_at)?;
        let topic = event.topic();
        *topic_seen = Some(topic);
        let payload = serde_json::to_vec(&event).expect("an event serializes");

        // In plaintext mode the signature does not cover the body: bind (timestamp, nonce) to
        // the body's digest, so a captured query cannot carry another body. (In compatible and
        // safe mode `msg_signature` covers the ciphertext.) The binding is keyed by the account
        // the request was routed to, never by anything the body says.
        let body_sha1: [u8; 20] = Sha1::digest(body).into();
        let body_digest = hex::encode(body_sha1);
        let (timestamp, nonce) = (signed.timestamp(), signed.nonce());
        let token = format!(
            "{}.{}",
            self.instance,
            self.attempts.fetch_add(1, Ordering::Relaxed)
        );
        let request = ClaimRequest {
            id: &event.id,
            token: &token,
            lease: self.lease,
            nonce: (!encrypted).then_some(NonceBinding {
                account: &account.name,
                timestamp,
                nonce,
                body_digest: &body_digest,
                ttl: self.nonce_ttl,
            }),
        };
        // The claim gets a share of the deadline, queue wait included: a Redis that cannot
        // answer in time is a Redis that is down, and the push goes on without it.
        let claim = match tokio::time::timeout(self.claim_budget, self.store.claim(request)).await {
            Ok(claim) => claim,
            Err(_) => Err(StoreError::Timeout),
        };
        // This instance keeps every binding the store did not refuse, and refuses a pair it
        // saw with another body whatever the store says: the store may have missed the first
        // body (it was down then, or lost the key in a failover).
        if !encrypted && !matches!(claim, Ok(Claim::Replayed)) {
            let here = self
                .recent_nonces
                .bind(&account.name, timestamp, nonce, &body_sha1);
            if here == Binding::Replayed {
                if let Ok(Claim::Claimed) = claim {
                    self.settle_by(arrived + self.deadline, &event.id, &token, true, Err(None))
                        .await;
                }
                return Err(Rejection::ReplayedNonce.into());
            }
        }
        // Redis down: publish without a claim. A duplicate is better than a loss, and every
        // 200 still means "on Kafka".
        let claimed = match claim {
            Ok(Claim::Claimed) => true,
            Ok(Claim::Done) => return Ok(Accepted::Duplicate),
            Ok(Claim::InFlight) => return Err(Unavailable::InFlight.into()),
            Ok(Claim::Replayed) => return Err(Rejection::ReplayedNonce.into()),
            Err(error) => {
                metrics::counter!("wxpipe_redis_errors_total", "op" => "claim").increment(1);
                tracing::warn!(%error, id = %ops::redact_id(&event.id), "dedup store unavailable: publishing without a claim");
                false
            }
        };
        let outgoing = Outgoing {
            topic: self.publisher.topic_name(topic),
            key: &event.openid,
            id: &event.id,
            value: &payload,
        };
        self.deliver(arrived, outgoing, &token, claimed).await
    }

    /// Makes a claimed (or, with Redis down, unclaimed) record durable: on Kafka within the
    /// deadline, or in the spool. This is the durability policy:
    ///
    /// - While the spool holds records, a push joins them, so records reach Kafka in the
    ///   order they were answered; if the spool cannot take it (disk full or failing), it goes
    ///   to Kafka directly (it may then overtake spooled records of its user).
    /// - Otherwise Kafka gets the deadline (less the time an fsync may take, with a spool); a
    ///   push Kafka refuses for now, or does not confirm in time, goes to the spool.
    /// - The answer never waits past the deadline for Redis: a confirm or release still
    ///   running then finishes in the background.
    async fn deliver(
        self: &Arc<Self>,
        arrived: Instant,
        out: Outgoing<'_>,
        token: &str,
        claimed: bool,
    ) -> Result<Accepted, PushError> {
        let answer_by = arrived + self.deadline;
        // A push that claimed waits (until its deadline at most) for its confirm or release, so
        // WeChat's retries find it settled; one that could not claim does not wait on Redis.
        let settle_wait = if claimed { answer_by } else { Instant::now() };
        let id = out.id;
        // A full spool could not take the push: Kafka gets the whole deadline.
        let mut spool = self
            .spool
            .as_ref()
            .filter(|spool| spool.bytes() < spool.max_bytes());
        // A spool whose disk failed or hung is not joined (the push tries Kafka first; the
        // spool stays its fallback) until a probe write succeeds: the push starts one in the
        // background unless one is running.
        let joinable = spool.filter(|spool| {
            if spool.failing() {
                // Its outcome clears the flag; nobody waits for it.
                let _ = spool.start_probe();
                return false;
            }
            spool.active()
        });
        // While the replay takes the last of the backlog, wait for it (briefly) rather than
        // join the backlog: under steady load the spool would otherwise never empty.
        let drain_by = Instant::now() + DRAIN_WAIT.min(self.deadline / 4);
        let joins = match joinable {
            Some(active) => !active.wait_drained(drain_by).await,
            None => false,
        };
        if let Some(active) = spool.filter(|_| joins) {
            // Half the time left at most: a spool that hangs (a stalled volume) leaves the
            // other half to Kafka.
            let by = Instant::now() + answer_by.saturating_duration_since(Instant::now()) / 2;
            let appended = tokio::time::timeout_at(by.into(), active.append(&out.to_spool())).await;
            match appended {
                Ok(Ok(())) => return Ok(self.spooled(settle_wait, id).await),
                Ok(Err(error)) => {
                    tracing::warn!(%error, id = %ops::redact_id(id), "the spool refused a push: sending it to Kafka directly");
                    spool = None;
                }
                Err(_) => {
                    active.mark_stalled();
                    tracing::warn!(id = %ops::redact_id(id), "the spool did not take a push in time: sending it to Kafka directly");
                    spool = None;
                }
            }
        }
        // With a spool, Kafka gets the deadline less the time an fsync may take.
        let deadline = answer_by
            - if spool.is_some() {
                SPOOL_RESERVE.min(self.deadline / 4)
            } else {
                Duration::ZERO
            };

        let produced = Instant::now();
        let delivery = match self.publisher.enqueue_named(out.topic, out.key, out.value) {
            Ok(delivery) => delivery,
            Err(error) => {
                if let Some(spool) = spool.filter(|_| error.spoolable()) {
                    return self
                        .spool(
                            spool,
                            answer_by,
                            settle_wait,
                            id,
                            token,
                            true,
                            &out.to_spool(),
                        )
                        .await;
                }
                self.settle_by(settle_wait, id, token, claimed, Err(Some(&error)))
                    .await;
                return Err(Unavailable::Publish(error).into());
            }
        };
        let (in_flight, produce_seconds) =
            (self.kafka_in_flight.clone(), self.produce_seconds.clone());
        in_flight.increment(1.0);
        let mut delivered = Box::pin(async move {
            // Down again however the wait ends: a push dropped meanwhile (its client hung up)
            // drops this future too.
            let _in_flight = Decrement(in_flight);
            let outcome = Publisher::delivered(delivery).await;
            produce_seconds.record(produced.elapsed().as_secs_f64());
            outcome
        });
        match tokio::time::timeout_at(deadline.into(), delivered.as_mut()).await {
            Ok(Err(error)) if spool.is_some() && error.spoolable() => {
                let spool = spool.expect("checked");
                self.spool(
                    spool,
                    answer_by,
                    settle_wait,
                    id,
                    token,
                    true,
                    &out.to_spool(),
                )
                .await
            }
            Ok(outcome) => {
                let settled = outcome.as_ref().map(drop).map_err(Some);
                self.settle_by(settle_wait, id, token, claimed, settled)
                    .await;
                outcome
                    .map(|()| Accepted::Published)
                    .map_err(|e| Unavailable::Publish(e).into())
            }
            Err(_elapsed) => {
                // The outcome is unknown. Spooled: the event is durable now, and if Kafka takes
                // the first attempt too, that is a second copy with the same id. Not spooled:
                // keep the claim pending until librdkafka reports, so a retry meanwhile gets
                // 503, then confirm or release; if the lease runs out first, a retry publishes
                // a second copy with the same id: better than a loss. (The replay waits for
                // the first attempt's outcome, and skips the event if Kafka took it.)
                // The task that follows the first produce starts before the spool append, so
                // a push dropped during the append (its client hung up) still settles: the
                // task then counts the record as not spooled (the replay may send a copy with
                // the same id) and releases the claim (a retry may too).
                let (spooled_tx, spooled_rx) = tokio::sync::oneshot::channel::<bool>();
                if let Some(spool) = spool {
                    spool.outcome_pending();
                }
                let follower = spool.cloned();
                let (pipeline, id_, token_) = (Arc::clone(self), id.to_owned(), token.to_owned());
                tokio::spawn(async move {
                    let outcome = delivered.await;
                    let spooled = spooled_rx.await.unwrap_or(false);
                    if let Some(spool) = follower {
                        spool.outcome_known(&id_, spooled && outcome.is_ok());
                    }
                    // Spooled, the id is confirmed: the release then finds nothing of ours.
                    let held = claimed && !spooled;
                    pipeline
                        .settle(
                            &id_,
                            &token_,
                            held,
                            outcome.as_ref().map(drop).map_err(Some),
                        )
                        .await;
                });
                let result = match spool {
                    Some(spool) => {
                        self.spool(
                            spool,
                            answer_by,
                            settle_wait,
                            id,
                            token,
                            false,
                            &out.to_spool(),
                        )
                        .await
                    }
                    None => Err(Unavailable::Deadline.into()),
                };
                let _ = spooled_tx.send(result.is_ok());
                result
            }
        }
    }

    /// A push the spool took: durable now, so its id is confirmed (whoever holds the claim).
    async fn spooled(&self, settle_wait: Instant, id: &str) -> Accepted {
        metrics::counter!("wxpipe_spool_records_total", "op" => "appended").increment(1);
        self.settle_by(settle_wait, id, "", false, Ok(())).await;
        Accepted::Spooled
    }

    /// Appends a push to the spool: once fsync'd it is durable, so its claim is confirmed and
    /// it is answered 200; the replay task takes it to Kafka. `release`: whether this push
    /// releases its claim if the append fails (a claim that got no answer too, since Redis may
    /// apply it late), or leaves that to the task following its first produce.
    #[allow(clippy::too_many_arguments)]
    async fn spool(
        &self,
        spool: &Spool,
        answer_by: Instant,
        settle_wait: Instant,
        id: &str,
        token: &str,
        release: bool,
        record: &SpoolRecord,
    ) -> Result<Accepted, PushError> {
        // Never past the answer's deadline (the fsync itself gets a few milliseconds more at
        // most): a spool that hangs gets a 503, and WeChat retries. If the append lands after
        // all, the replay sends a copy with the same id.
        let by = answer_by.max(Instant::now() + SPOOL_MIN_WAIT);
        let appended = match tokio::time::timeout_at(by.into(), spool.append(record)).await {
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
            Ok(()) => Ok(self.spooled(settle_wait, id).await),
            Err(error) => {
                tracing::error!(%error, id = %ops::redact_id(id), "kafka unavailable and the spool refused the event");
                if release {
                    self.settle_by(settle_wait, id, token, true, Err(None))
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
                    metrics::counter!("wxpipe_redis_errors_total", "op" => "confirm").increment(1);
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
                        metrics::counter!("wxpipe_redis_errors_total", "op" => "release")
                            .increment(1);
                        tracing::warn!(%error, id = %ops::redact_id(id), "claim not released; it expires with its lease");
                    }
                }
            }
        }
    }
}
