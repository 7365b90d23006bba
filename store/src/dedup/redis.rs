//! The dedup store on Redis, with group commit: the claims, confirms and releases of
//! concurrent pushes are queued to one task that sends each batch as one pipeline of plain
//! commands (on a cluster, one pipeline per hash tag, all at once).
//!
//! ```text
//! push ─ claim ──┐                     ┌─▶ [SET … NX GET, SET … PX, …] ─▶ [reply, reply, …] ─┐
//! push ─ confirm ┼─▶ queue ─▶ batcher ─┤   (applied in queue order)                          ├─▶ each caller
//! push ─ claim ──┘                     └─ next batch waits for this one ◀─────────────────────┘
//! ```
//!
//! A batch is applied in queue order, and each op is one atomic command (a claim with its
//! nonce binding, two in a row), so each op has exactly the effect it would have alone; under
//! load a batch carries the ops of many pushes in one round trip, and each push still waits
//! for its own outcome (a confirm is applied before the push is answered 200). The first op
//! of an idle queue goes out at once: batching adds no wait, it only takes what queued up
//! during the previous round trip.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::store::{Claim, ClaimRequest, DedupStore};
use crate::engine::{Mode, Redis};
use crate::fut::Fut;
use crate::keys;
use crate::lease::{self, Lease, DEDUP};
use crate::{Keys, StoreError};

/// A release: deleted only if still this attempt's value (the lease's `lease_release`).
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0";

/// Ops in one batch at most: bounds the script's run time, during which Redis serves no one
/// else.
const MAX_BATCH: usize = 256;

/// Why an op the script ran under `pcall` failed: about the op, or (`OUTAGE`) every write.
const REFUSED: &str =
    "Redis refused the op (a key of another type under the prefix? Redis older than 7.0?)";
const OUTAGE: &str = "Redis refuses writes now (READONLY, OOM, NOREPLICAS, MISCONF, …)";

/// What one op does: one command of the batch's pipeline (two for [`Step::ClaimBound`]),
/// most of them a plain `SET`, since a script costs Redis twice the CPU of the commands it
/// runs (`INFO commandstats`: 12.5 µs a push in `EVALSHA`, 7 µs of it in the `SET`s and
/// `GET`s inside). Needs Redis 7.0 or later (`SET … NX GET`).
///
/// A command Redis refuses is -1 (about the op: a key of another type under the prefix, or a
/// server older than 7.0) or -2 (Redis refuses every write now), and the ops around it are
/// applied as they would be alone.
#[derive(Debug)]
enum Step {
    /// `SET dedup holder NX GET PX lease` → nil claimed (0), `done` done (1), any other value
    /// in flight (2).
    Claim(Lock),
    /// `SET nonce digest NX GET PX ttl` → nil or this digest bound (0), another digest
    /// replayed (3).
    Bind(Lock),
    /// A claim with its nonce binding (one node): the binding then the claim in the same
    /// pipeline; if the binding finds another body (or fails), a claim made is released at
    /// once, so nothing stays claimed for a forged body. On a cluster the two keys are in
    /// different slots: a `Bind`, then a `Claim` once it has passed.
    ClaimBound { claim: Lock, bind: Lock },
    /// `SET dedup done PX ttl` → 0.
    Confirm { key: String, ttl_ms: String },
    /// [`RELEASE`] → 0.
    Release { key: String, holder: String },
}

/// A `SET key value NX GET PX ms`: a claim or a nonce binding.
#[derive(Debug)]
struct Lock {
    key: String,
    value: String,
    ms: String,
}

impl Step {
    /// The key whose hash tag routes the op on a cluster.
    fn key(&self) -> &str {
        match self {
            Step::Claim(lock) | Step::Bind(lock) | Step::ClaimBound { claim: lock, .. } => {
                &lock.key
            }
            Step::Confirm { key, .. } | Step::Release { key, .. } => key,
        }
    }

    /// A claim, which is worth nothing once its push stopped waiting.
    fn claims(&self) -> bool {
        matches!(
            self,
            Step::Claim(_) | Step::Bind(_) | Step::ClaimBound { .. }
        )
    }

    /// The replies it gets back.
    fn replies(&self) -> usize {
        match self {
            Step::ClaimBound { .. } => 2,
            _ => 1,
        }
    }
}

/// One queued op, and where its outcome goes.
#[derive(Debug)]
struct Op {
    step: Step,
    reply: oneshot::Sender<Result<i64, StoreError>>,
}

#[derive(Debug)]
pub(super) struct RedisDedup {
    redis: Redis,
    keys: Keys,
    queue: mpsc::UnboundedSender<Op>,
    /// Ops queued and not yet taken by the batcher.
    queued: Arc<AtomicUsize>,
}

/// Ops the queue holds at most. While Redis is unreachable each batch takes a whole timeout,
/// so the queue drains slower than pushes arrive: past this, an op fails at once (a claim
/// goes on without the store; a confirm or release is left to expire), and memory stays
/// bounded whatever the outage.
const MAX_QUEUED: usize = 16 * MAX_BATCH;

impl RedisDedup {
    /// Spawns the batcher, which ends when the store is dropped.
    pub fn new(redis: Redis, keys: Keys) -> Self {
        let (queue, ops) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(batcher(redis.clone(), ops, Arc::clone(&queued)));
        RedisDedup {
            redis,
            keys,
            queue,
            queued,
        }
    }

    /// Queues an op and waits for its outcome.
    async fn call(&self, step: Step) -> Result<i64, StoreError> {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::batch("the queue to Redis is full", true));
        }
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Op { step, reply })
            .map_err(|_| StoreError::Closed)?;
        outcome.await.unwrap_or(Err(StoreError::Closed))
    }
}

/// Sends what is queued, one batch at a time, until every sender is gone. Each batch is
/// bounded by `timeout`; when it fails, every op in it gets the error, which the pipeline
/// already handles per op (publish without a claim; a confirm or release left to expire).
async fn batcher(redis: Redis, mut queue: mpsc::UnboundedReceiver<Op>, queued: Arc<AtomicUsize>) {
    let per_slot = redis.mode() == Mode::Cluster;
    let mut lanes = std::collections::HashMap::new();
    let mut swept_at = 0;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        queued.fetch_sub(batch.len(), Ordering::Relaxed);
        // A claim whose push stopped waiting (its budget ran out while Redis was slow) went
        // on without it: claiming now would only make its id look in flight. Confirms and
        // releases are applied whoever waits for them.
        batch.retain(|op| !(op.step.claims() && op.reply.is_closed()));
        if batch.is_empty() {
            continue;
        }
        metrics::histogram!("wxpipe_redis_batch_ops").record(batch.len() as f64);
        if per_slot {
            // One lane per hash tag: a tag's calls go in queue order, each after the one
            // before it, and no tag waits for another (a master failing over stalls only the
            // slots it held).
            if lanes.len() >= 2 * swept_at.max(1024) {
                lanes.retain(|_, lane: &mut tokio::task::JoinHandle<()>| !lane.is_finished());
                swept_at = lanes.len();
            }
            let mut groups: Vec<(String, Vec<Op>)> = Vec::new();
            for op in batch.drain(..) {
                let tag = keys::tag(op.step.key());
                match groups.iter_mut().find(|(t, _)| t == tag) {
                    Some((_, ops)) => ops.push(op),
                    None => groups.push((tag.to_owned(), vec![op])),
                }
            }
            for (tag, ops) in groups {
                let before = lanes.remove(&tag);
                let redis = redis.clone();
                let lane = tokio::spawn(async move {
                    if let Some(before) = before {
                        let _ = before.await;
                    }
                    send(&redis, ops).await;
                });
                lanes.insert(tag, lane);
            }
        } else {
            send(&redis, std::mem::take(&mut batch)).await;
        }
    }
}

/// Why Redis refused one command: -2 when the refusal concerns every write (an outage: a
/// read-only replica, no memory, too few replicas, a failing disk), -1 when it is about this
/// op.
fn refused(error: &redis::ServerError) -> i64 {
    const OUTAGES: [&str; 6] = [
        "READONLY",
        "OOM",
        "NOREPLICAS",
        "MISCONF",
        "MASTERDOWN",
        "BUSY",
    ];
    if OUTAGES.contains(&error.code()) {
        -2
    } else {
        -1
    }
}

/// A command's reply: the value it set against (nil when it set), or its refusal.
fn found(value: &redis::Value) -> Result<Option<&[u8]>, i64> {
    match value {
        redis::Value::Nil => Ok(None),
        redis::Value::BulkString(bytes) => Ok(Some(bytes)),
        redis::Value::SimpleString(text) => Ok(Some(text.as_bytes())),
        redis::Value::Okay => Ok(Some(b"OK")),
        redis::Value::ServerError(error) => Err(refused(error)),
        _ => Err(-1),
    }
}

/// `SET key value NX GET PX ms`.
fn set_nx_get(pipe: &mut redis::Pipeline, lock: &Lock) {
    pipe.cmd("SET")
        .arg(&lock.key)
        .arg(&lock.value)
        .arg("NX")
        .arg("GET")
        .arg("PX")
        .arg(&lock.ms);
}

/// Whether a binding's `SET … NX GET` found no other body: nil, or this digest.
fn bound(found: Option<&[u8]>, bind: &Lock) -> bool {
    found.is_none_or(|seen| seen == bind.value.as_bytes())
}

/// A claim's code from what its `SET … NX GET` found.
fn claim_code(found: Option<&[u8]>) -> i64 {
    lease::claimed_over(found, DEDUP.done).code()
}

/// One pipeline of `ops`, and each op's outcome to its caller.
async fn send(redis: &Redis, ops: Vec<Op>) {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for op in &ops {
        match &op.step {
            Step::Claim(lock) | Step::Bind(lock) => set_nx_get(&mut pipe, lock),
            Step::ClaimBound { claim, bind } => {
                set_nx_get(&mut pipe, bind);
                set_nx_get(&mut pipe, claim);
            }
            Step::Confirm { key, ttl_ms } => {
                pipe.cmd("SET")
                    .arg(key)
                    .arg(DEDUP.done)
                    .arg("PX")
                    .arg(ttl_ms);
            }
            Step::Release { key, holder } => {
                pipe.cmd("EVAL").arg(RELEASE).arg(1).arg(key).arg(holder);
            }
        }
    }
    let expected: usize = ops.iter().map(|op| op.step.replies()).sum();
    let result: Result<Vec<redis::Value>, StoreError> =
        redis.bounded(pipe.query_async(&mut redis.conn())).await;
    let replies = match result {
        Ok(replies) if replies.len() == expected => replies,
        Ok(replies) => {
            let failure = StoreError::batch(
                &format!(
                    "a batch of {expected} commands was answered with {} replies",
                    replies.len()
                ),
                false,
            );
            for op in ops {
                let _ = op.reply.send(Err(failure.clone()));
            }
            return;
        }
        Err(failure) => {
            for op in ops {
                let _ = op.reply.send(Err(failure.clone()));
            }
            return;
        }
    };
    let mut replies = replies.iter();
    let mut undo = Vec::new();
    for op in ops {
        let reply = replies.next().expect("counted above");
        let code = match &op.step {
            Step::Claim(_) => found(reply).map(claim_code),
            Step::Bind(bind) => found(reply).map(|seen| if bound(seen, bind) { 0 } else { 3 }),
            Step::ClaimBound { claim, bind } => {
                let claim_reply = replies.next().expect("counted above");
                let bound = found(reply).map(|seen| bound(seen, bind));
                let claimed = found(claim_reply).map(claim_code);
                if claimed == Ok(0) && bound != Ok(true) {
                    // Claimed for a body the binding refused (or could not check): let go.
                    undo.push((claim.key.clone(), claim.value.clone()));
                }
                match bound {
                    Ok(true) => claimed,
                    Ok(false) => Ok(3),
                    Err(code) => Err(code),
                }
            }
            // A confirm (`OK`) or a release (the script's 0): done unless refused.
            Step::Confirm { .. } | Step::Release { .. } => match reply {
                redis::Value::ServerError(error) => Err(refused(error)),
                _ => Ok(0),
            },
        };
        let outcome = match code {
            Ok(code) => Ok(code),
            Err(-2) => Err(StoreError::batch(OUTAGE, true)),
            Err(_) => Err(StoreError::batch(REFUSED, false)),
        };
        let _ = op.reply.send(outcome);
    }
    if !undo.is_empty() {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (key, holder) in &undo {
            pipe.cmd("EVAL").arg(RELEASE).arg(1).arg(key).arg(holder);
        }
        // Left to its lease if this fails: a claim on an id no genuine push has.
        let _: Result<Vec<redis::Value>, StoreError> =
            redis.bounded(pipe.query_async(&mut redis.conn())).await;
    }
}

fn ms(duration: Duration) -> String {
    lease::ms(duration).to_string()
}

impl DedupStore for RedisDedup {
    fn claim<'a>(&'a self, req: ClaimRequest<'a>) -> Fut<'a, Claim> {
        Box::pin(async move {
            let claim = Lock {
                key: self.keys.dedup(req.id),
                value: DEDUP.holder(req.token),
                ms: ms(req.lease),
            };
            let code = match &req.nonce {
                None => self.call(Step::Claim(claim)).await?,
                Some(nonce) => {
                    let bind = Lock {
                        key: self.keys.nonce(nonce.account, nonce.timestamp, nonce.nonce),
                        value: nonce.body_digest.to_owned(),
                        ms: ms(nonce.ttl),
                    };
                    if self.redis.mode() == Mode::Cluster {
                        match self.call(Step::Bind(bind)).await? {
                            3 => 3,
                            _ => self.call(Step::Claim(claim)).await?,
                        }
                    } else {
                        self.call(Step::ClaimBound { claim, bind }).await?
                    }
                }
            };
            Ok(match code {
                3 => Claim::Replayed,
                code => Claim::from(Lease::from_code(code)),
            })
        })
    }

    fn confirm<'a>(&'a self, id: &'a str, ttl: Duration) -> Fut<'a, ()> {
        Box::pin(async move {
            let (key, ttl_ms) = (self.keys.dedup(id), ms(ttl));
            self.call(Step::Confirm { key, ttl_ms }).await.map(drop)
        })
    }

    fn release<'a>(&'a self, id: &'a str, token: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            let (key, holder) = (self.keys.dedup(id), DEDUP.holder(token));
            self.call(Step::Release { key, holder }).await.map(drop)
        })
    }

    fn ping(&self) -> Fut<'_, ()> {
        Box::pin(self.redis.ping())
    }
}
