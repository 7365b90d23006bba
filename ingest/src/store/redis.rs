//! The `redis://` engine: one multiplexed connection that reconnects by itself, and Lua
//! scripts so that each step of the claim protocol is one atomic round trip.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::{
    dedup_key, nonce_key, pending, BoxFuture, Claim, ClaimRequest, DedupStore, StoreError, DONE,
};

/// KEYS: dedup key, [nonce key]. ARGV: pending value, lease ms, [body digest, nonce ttl ms].
/// Returns 0 claimed, 1 done, 2 in flight, 3 replayed.
const CLAIM: &str = r"
if KEYS[2] then
  local seen = redis.call('GET', KEYS[2])
  if not seen then
    redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  elseif seen ~= ARGV[3] then
    return 3
  end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
if redis.call('GET', KEYS[1]) == 'done' then
  return 1
end
return 2
";

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    claim: Script,
    release: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects lazily: the store is usable at once and (re)connects on first use, so the
    /// ingress starts, and recovers, while Redis is down.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let conn = ops::redis::connect(url, timeout)?;
        Ok(RedisStore {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            claim: Script::new(CLAIM),
            release: Script::new(ops::redis::DELETE_IF),
        })
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        ops::redis::bounded(self.timeout, call).await
    }
}

impl DedupStore for RedisStore {
    fn claim<'a>(&'a self, req: ClaimRequest<'a>) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.claim.key(dedup_key(&self.prefix, req.id));
            invocation
                .arg(pending(req.token))
                .arg(req.lease.as_millis() as u64);
            if let Some(nonce) = &req.nonce {
                invocation
                    .key(nonce_key(&self.prefix, nonce))
                    .arg(nonce.body_digest)
                    .arg(nonce.ttl.as_millis() as u64);
            }
            let mut conn = self.conn.clone();
            let code: u8 = self.bounded(invocation.invoke_async(&mut conn)).await?;
            Ok(match code {
                0 => Claim::Claimed,
                1 => Claim::Done,
                2 => Claim::InFlight,
                _ => Claim::Replayed,
            })
        })
    }

    fn confirm<'a>(&'a self, id: &'a str, ttl: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let key = dedup_key(&self.prefix, id);
            self.bounded(conn.pset_ex::<_, _, ()>(key, DONE, ttl.as_millis() as u64))
                .await
        })
    }

    fn release<'a>(&'a self, id: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut invocation = self.release.key(dedup_key(&self.prefix, id));
            invocation.arg(pending(token));
            self.bounded(invocation.invoke_async::<i64>(&mut conn))
                .await
                .map(drop)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.bounded(redis::cmd("PING").query_async::<String>(&mut conn))
                .await
                .map(drop)
        })
    }
}
