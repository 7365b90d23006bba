//! The dedup store on Redis, with group commit: the claims, confirms and releases of
//! concurrent pushes are queued to one task that sends each batch as a single call of one Lua
//! script (on a cluster, one call per hash tag, all at once: a script touches one slot).
//!
//! ```text
//! push ─ claim ──┐                     ┌─▶ EVALSHA batch [op, op, …] ─▶ [code, code, …] ─┐
//! push ─ confirm ┼─▶ queue ─▶ batcher ─┤   (applied in queue order, atomically)          ├─▶ each caller
//! push ─ claim ──┘                     └─ next batch waits for this one ◀─────────────────┘
//! ```
//!
//! A batch is applied in queue order, so each op has exactly the effect it would have alone;
//! under load a batch carries the ops of many pushes, so Redis dispatches one script per batch
//! instead of one command per op, and each push still waits for its own outcome (a confirm
//! is applied before the push is answered 200). The first op of an idle queue goes out at
//! once: batching adds no wait, it only takes what queued up during the previous round trip.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokio::sync::{mpsc, oneshot};

use super::{Claim, ClaimRequest, DedupStore};
use crate::engine::{Mode, Redis};
use crate::keys;
use crate::lease::{self, Lease, DEDUP};
use crate::{Fut, Keys, StoreError};

/// KEYS and ARGV hold the ops one after another; returns one integer per op. The lease
/// steps are [`lease::LUA`]'s.
/// - `c` claim: KEYS dedup; ARGV pending value, lease ms → 0 claimed, 1 done, 2 in flight.
/// - `n` claim with a nonce binding: KEYS dedup, nonce; ARGV pending value, lease ms, body
///   digest, nonce ttl ms → as `c`, or 3 replayed (then nothing is claimed). One node only:
///   the two keys are in different slots.
/// - `b` the nonce binding alone: KEYS nonce; ARGV body digest, nonce ttl ms → 0 bound (now
///   or before, with this body), 3 replayed. On a cluster a claim with a nonce is `b`, then
///   `c` once `b` has passed: two single-slot steps, each idempotent.
/// - `d` confirm: KEYS dedup; ARGV ttl ms → 0.
/// - `r` release: KEYS dedup; ARGV pending value → 0 (deleted only if still that value).
///
/// Each op runs under `pcall`: one that Redis refuses is -1 (a key of another type under the
/// prefix) or -2 (Redis refuses every write now), and the ops around it are applied as they
/// would be alone.
const BATCH: &str = r"
local function bind(nonce, digest, ttl)
  local seen = redis.call('GET', nonce)
  if not seen then
    redis.call('SET', nonce, digest, 'PX', ttl)
  elseif seen ~= digest then
    return 3
  end
  return 0
end

local function claim(dedup, pending, lease, nonce, digest, ttl)
  if nonce and bind(nonce, digest, ttl) == 3 then return 3 end
  return lease_claim(dedup, pending, lease, 'done')
end

-- An op Redis refused: -2 when the refusal concerns every write (an outage: a read-only
-- replica, no memory, too few replicas, a failing disk), -1 when it is about this op.
local function refused(err)
  local text = type(err) == 'table' and err.err or tostring(err)
  for _, code in ipairs({'READONLY', 'OOM', 'NOREPLICAS', 'MISCONF', 'MASTERDOWN', 'BUSY'}) do
    if string.find(text, code, 1, true) then return -2 end
  end
  return -1
end

local out, k, a = {}, 1, 1
while a <= #ARGV do
  local op, ok, code = ARGV[a]
  if op == 'c' then
    ok, code = pcall(claim, KEYS[k], ARGV[a + 1], ARGV[a + 2])
    k, a = k + 1, a + 3
  elseif op == 'n' then
    ok, code = pcall(claim, KEYS[k], ARGV[a + 1], ARGV[a + 2], KEYS[k + 1], ARGV[a + 3], ARGV[a + 4])
    k, a = k + 2, a + 5
  elseif op == 'b' then
    ok, code = pcall(bind, KEYS[k], ARGV[a + 1], ARGV[a + 2])
    k, a = k + 1, a + 3
  elseif op == 'd' then
    ok, code = pcall(lease_confirm, KEYS[k], 'done', ARGV[a + 1])
    k, a = k + 1, a + 2
  else
    ok, code = pcall(lease_release, KEYS[k], ARGV[a + 1])
    k, a = k + 1, a + 2
  end
  out[#out + 1] = ok and code or refused(code)
end
return out
";

/// Ops in one batch at most: bounds the script's run time, during which Redis serves no one
/// else.
const MAX_BATCH: usize = 256;

/// Why an op the script ran under `pcall` failed: about the op, or (`OUTAGE`) every write.
const REFUSED: &str = "Redis refused the op (a key of another type under the prefix?)";
const OUTAGE: &str = "Redis refuses writes now (READONLY, OOM, NOREPLICAS, MISCONF, …)";

/// One queued op with its keys and arguments ready, and where its outcome goes.
#[derive(Debug)]
struct Op {
    code: &'static str,
    keys: [Option<String>; 2],
    args: Vec<String>,
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
    async fn call(
        &self,
        code: &'static str,
        keys: [Option<String>; 2],
        args: Vec<String>,
    ) -> Result<i64, StoreError> {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::batch("the queue to Redis is full", true));
        }
        let (reply, outcome) = oneshot::channel();
        let op = Op {
            code,
            keys,
            args,
            reply,
        };
        self.queue.send(op).map_err(|_| StoreError::Closed)?;
        outcome.await.unwrap_or(Err(StoreError::Closed))
    }
}

/// Sends what is queued, one batch at a time, until every sender is gone. Each batch is
/// bounded by `timeout`; when it fails, every op in it gets the error, which the pipeline
/// already handles per op (publish without a claim; a confirm or release left to expire).
async fn batcher(redis: Redis, mut queue: mpsc::UnboundedReceiver<Op>, queued: Arc<AtomicUsize>) {
    let script = Script::new(&format!("{}\n{BATCH}", lease::LUA));
    let per_slot = redis.mode() == Mode::Cluster;
    let mut lanes = std::collections::HashMap::new();
    let mut swept_at = 0;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        queued.fetch_sub(batch.len(), Ordering::Relaxed);
        // A claim whose push stopped waiting (its budget ran out while Redis was slow) went
        // on without it: claiming now would only make its id look in flight. Confirms and
        // releases are applied whoever waits for them.
        batch.retain(|op| !(matches!(op.code, "c" | "n" | "b") && op.reply.is_closed()));
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
                let tag = op.keys[0].as_deref().map(keys::tag).unwrap_or_default();
                match groups.iter_mut().find(|(t, _)| t == tag) {
                    Some((_, ops)) => ops.push(op),
                    None => groups.push((tag.to_owned(), vec![op])),
                }
            }
            for (tag, ops) in groups {
                let before = lanes.remove(&tag);
                let (redis, script) = (redis.clone(), script.clone());
                let lane = tokio::spawn(async move {
                    if let Some(before) = before {
                        let _ = before.await;
                    }
                    send(&redis, &script, ops).await;
                });
                lanes.insert(tag, lane);
            }
        } else {
            send(&redis, &script, std::mem::take(&mut batch)).await;
        }
    }
}

/// One call of the batch script with `ops`, and each op's outcome to its caller.
async fn send(redis: &Redis, script: &Script, ops: Vec<Op>) {
    let mut invocation = script.prepare_invoke();
    for op in &ops {
        invocation.arg(op.code);
        for key in op.keys.iter().flatten() {
            invocation.key(key);
        }
        for arg in &op.args {
            invocation.arg(arg);
        }
    }
    let result: Result<Vec<i64>, StoreError> = redis
        .bounded(invocation.invoke_async(&mut redis.conn()))
        .await;
    let failure = match result {
        Ok(codes) if codes.len() == ops.len() => {
            for (op, code) in ops.into_iter().zip(codes) {
                let outcome = match code {
                    0.. => Ok(code),
                    -2 => Err(StoreError::batch(OUTAGE, true)),
                    _ => Err(StoreError::batch(REFUSED, false)),
                };
                let _ = op.reply.send(outcome);
            }
            return;
        }
        Ok(codes) => StoreError::batch(
            &format!(
                "a batch of {} ops was answered with {} codes",
                ops.len(),
                codes.len()
            ),
            false,
        ),
        Err(error) => error,
    };
    for op in ops {
        let _ = op.reply.send(Err(failure.clone()));
    }
}

fn ms(duration: Duration) -> String {
    lease::ms(duration).to_string()
}

impl DedupStore for RedisDedup {
    fn claim<'a>(&'a self, req: ClaimRequest<'a>) -> Fut<'a, Claim> {
        Box::pin(async move {
            let dedup = Some(self.keys.dedup(req.id));
            let (value, lease) = (DEDUP.holder(req.token), ms(req.lease));
            let code = match &req.nonce {
                None => self.call("c", [dedup, None], vec![value, lease]).await?,
                Some(nonce) => {
                    let nonce_key = self.keys.nonce(nonce.account, nonce.timestamp, nonce.nonce);
                    let binding = vec![nonce.body_digest.to_owned(), ms(nonce.ttl)];
                    if self.redis.mode() == Mode::Cluster {
                        match self.call("b", [Some(nonce_key), None], binding).await? {
                            3 => 3,
                            _ => self.call("c", [dedup, None], vec![value, lease]).await?,
                        }
                    } else {
                        let args = [vec![value, lease], binding].concat();
                        self.call("n", [dedup, Some(nonce_key)], args).await?
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
            let key = Some(self.keys.dedup(id));
            self.call("d", [key, None], vec![ms(ttl)]).await.map(drop)
        })
    }

    fn release<'a>(&'a self, id: &'a str, token: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            let key = Some(self.keys.dedup(id));
            self.call("r", [key, None], vec![DEDUP.holder(token)])
                .await
                .map(drop)
        })
    }

    fn ping(&self) -> Fut<'_, ()> {
        Box::pin(self.redis.ping())
    }
}
