//! The `redis://` engine: Lua scripts make each effect one atomic round trip.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::{
    history_member, Applied, BoxFuture, EffectStore, LatestLocation, Location, SendClaim,
    StoreError, Subscription, UserState, GEO_MAX_LATITUDE,
};

/// KEYS: user hash, binding. ARGV: subscribed (1/0), created_at, scene.
const SUBSCRIPTION: &str = r"
local current = redis.call('HMGET', KEYS[1], 'updated_at', 'subscribed')
local at = tonumber(current[1])
local t = tonumber(ARGV[2])
if at then
  if t < at then return 0 end
  -- At the same second an unsubscribe wins over a subscribe; anything else (a redelivery
  -- above all) changes nothing.
  if t == at and not (ARGV[1] == '0' and current[2] == '1') then return 0 end
end
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'subscribed', '1', 'updated_at', ARGV[2], 'scene', ARGV[3])
else
  redis.call('HSET', KEYS[1], 'subscribed', '0', 'updated_at', ARGV[2])
  redis.call('DEL', KEYS[2])
end
return 1
";

/// KEYS: location hash, GEO set, history. ARGV: latitude, longitude, precision, created_at,
/// openid, history member, history length, GEO latitude.
///
/// Redis does not undo a script's writes on a runtime error, so the one command that can
/// refuse its input (GEOADD) runs before any other write; and an event already in the history
/// is a redelivery, which changes nothing (its effect is in place: 1).
const LOCATION: &str = r"
if redis.call('ZSCORE', KEYS[3], ARGV[6]) then return 1 end
local at = tonumber(redis.call('HGET', KEYS[1], 'created_at'))
local latest = not at or tonumber(ARGV[4]) >= at
if latest then
  redis.call('GEOADD', KEYS[2], ARGV[2], ARGV[8], ARGV[5])
  redis.call('HSET', KEYS[1], 'latitude', ARGV[1], 'longitude', ARGV[2], 'precision', ARGV[3], 'created_at', ARGV[4])
end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[7]) + 1))
if latest then return 1 end
return 0
";

/// KEYS: welcome key. ARGV: the holder's value, lease ms. 1 renewed, 0 no longer theirs.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// KEYS: welcome key. ARGV: owner, lease ms. 0 claimed, 1 sent, 2 in flight.
const BEGIN_SEND: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'sending:' .. ARGV[1], 'PX', ARGV[2])
  return 0
end
if v == 'sent' then return 1 end
return 2
";

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    subscription: Script,
    location: Script,
    begin_send: Script,
    renew: Script,
    delete_if: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects lazily, and reconnects by itself.
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let conn = ops::redis::connect(url, timeout)?;
        Ok(RedisStore {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            subscription: Script::new(SUBSCRIPTION),
            location: Script::new(LOCATION),
            begin_send: Script::new(BEGIN_SEND),
            renew: Script::new(RENEW),
            delete_if: Script::new(ops::redis::DELETE_IF),
        })
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        ops::redis::bounded(self.timeout, call).await
    }

    async fn delete_if(&self, key: String, value: String) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.delete_if.key(key);
        invocation.arg(value);
        self.bounded(invocation.invoke_async::<i64>(&mut conn))
            .await
            .map(drop)
    }
}

fn applied(code: i64) -> Applied {
    if code == 1 {
        Applied::Yes
    } else {
        Applied::Stale
    }
}

impl EffectStore for RedisStore {
    fn subscription<'a>(
        &'a self,
        c: Subscription<'a>,
    ) -> BoxFuture<'a, Result<Applied, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut invocation = self
                .subscription
                .key(self.key(&["user", c.account, c.openid]));
            invocation
                .key(self.key(&["binding", c.account, c.openid]))
                .arg(if c.subscribed { "1" } else { "0" })
                .arg(c.created_at)
                .arg(c.scene.unwrap_or(""));
            self.bounded(invocation.invoke_async::<i64>(&mut conn))
                .await
                .map(applied)
        })
    }

    fn location<'a>(&'a self, l: Location<'a>) -> BoxFuture<'a, Result<Applied, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut invocation = self
                .location
                .key(self.key(&["location", l.account, l.openid]));
            invocation
                .key(self.key(&["geo", l.account]))
                .key(self.key(&["location_history", l.account, l.openid]))
                .arg(l.latitude)
                .arg(l.longitude)
                .arg(l.precision)
                .arg(l.created_at)
                .arg(l.openid)
                .arg(history_member(&l))
                .arg(l.history.max(1))
                .arg(l.latitude.clamp(-GEO_MAX_LATITUDE, GEO_MAX_LATITUDE));
            self.bounded(invocation.invoke_async::<i64>(&mut conn))
                .await
                .map(applied)
        })
    }

    fn begin_send<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<SendClaim, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut invocation = self.begin_send.key(self.key(&["welcome", id]));
            invocation.arg(owner).arg(lease.as_millis() as u64);
            let code: i64 = self.bounded(invocation.invoke_async(&mut conn)).await?;
            Ok(match code {
                0 => SendClaim::Claimed,
                1 => SendClaim::Sent,
                _ => SendClaim::InFlight,
            })
        })
    }

    fn finish_send<'a>(
        &'a self,
        id: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.bounded(conn.pset_ex::<_, _, ()>(
                self.key(&["welcome", id]),
                "sent",
                ttl.as_millis() as u64,
            ))
            .await
        })
    }

    fn renew_send<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut invocation = self.renew.key(self.key(&["welcome", id]));
            invocation
                .arg(format!("sending:{owner}"))
                .arg(lease.as_millis() as u64);
            self.bounded(invocation.invoke_async::<i64>(&mut conn))
                .await
                .map(|renewed| renewed == 1)
        })
    }

    fn abandon_send<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.delete_if(self.key(&["welcome", id]), format!("sending:{owner}")))
    }

    fn token<'a>(&'a self, appid: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.bounded(conn.get(self.key(&["token", appid]))).await
        })
    }

    fn set_token<'a>(
        &'a self,
        appid: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.bounded(conn.pset_ex::<_, _, ()>(
                self.key(&["token", appid]),
                token,
                ttl.as_millis().max(1) as u64,
            ))
            .await
        })
    }

    fn drop_token<'a>(
        &'a self,
        appid: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.delete_if(self.key(&["token", appid]), token.to_owned()))
    }

    fn lock_token<'a>(
        &'a self,
        appid: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let set: Option<String> = self
                .bounded(
                    redis::cmd("SET")
                        .arg(self.key(&["token_lock", appid]))
                        .arg(owner)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl.as_millis() as u64)
                        .query_async(&mut conn),
                )
                .await?;
            Ok(set.is_some())
        })
    }

    fn unlock_token<'a>(
        &'a self,
        appid: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.delete_if(self.key(&["token_lock", appid]), owner.to_owned()))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.bounded(redis::cmd("PING").query_async::<String>(&mut conn))
                .await
                .map(drop)
        })
    }

    fn user<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserState>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (subscribed, updated_at, scene): (Option<String>, Option<i64>, Option<String>) =
                self.bounded(
                    redis::cmd("HMGET")
                        .arg(self.key(&["user", account, openid]))
                        .arg("subscribed")
                        .arg("updated_at")
                        .arg("scene")
                        .query_async(&mut conn),
                )
                .await?;
            Ok(subscribed
                .zip(updated_at)
                .map(|(subscribed, updated_at)| UserState {
                    subscribed: subscribed == "1",
                    updated_at,
                    scene: scene.unwrap_or_default(),
                }))
        })
    }

    fn binding<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.bounded(conn.get(self.key(&["binding", account, openid])))
                .await
        })
    }

    fn set_binding<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.bounded(conn.set::<_, _, ()>(self.key(&["binding", account, openid]), user))
                .await
        })
    }

    fn latest_location<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<Option<LatestLocation>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (latitude, longitude, precision, created_at): (
                Option<f64>,
                Option<f64>,
                Option<f64>,
                Option<i64>,
            ) = self
                .bounded(
                    redis::cmd("HMGET")
                        .arg(self.key(&["location", account, openid]))
                        .arg("latitude")
                        .arg("longitude")
                        .arg("precision")
                        .arg("created_at")
                        .query_async(&mut conn),
                )
                .await?;
            Ok(match (latitude, longitude, precision, created_at) {
                (Some(latitude), Some(longitude), Some(precision), Some(created_at)) => {
                    Some(LatestLocation {
                        latitude,
                        longitude,
                        precision,
                        created_at,
                    })
                }
                _ => None,
            })
        })
    }

    fn location_history<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.bounded(conn.zrange(self.key(&["location_history", account, openid]), 0, -1))
                .await
        })
    }
}
