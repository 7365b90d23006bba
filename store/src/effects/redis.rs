//! The effect stores on Redis: Lua scripts make each step of an effect one atomic round
//! trip on one slot.

use std::time::Duration;

use redis::{AsyncCommands, Script};

use super::{
    history_member, Applied, LatestLocation, Location, Locations, Subscription, Subscriptions,
    TokenCache, UserState, WelcomeSends, GEO_MAX_LATITUDE,
};
use crate::engine::Redis;
use crate::lease::{self, Scripts, WELCOME};
use crate::{BoxFuture, Keys, Lease, StoreError};

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

/// The user's step of a location. KEYS: location hash, history (the user's slot). ARGV:
/// latitude, longitude, precision, created_at, history member, history length.
/// → 1 it is the latest now, 0 a newer one is there; a redelivery (already in the history)
/// changes nothing here and is 2 when it is still the latest, 3 when not. After 1 or 2 the
/// account's GEO set gets it ([`GEO`]): a step of its own, as the set is in another slot.
const LOCATION: &str = r"
local current = redis.call('HMGET', KEYS[1], 'created_at', 'latitude', 'longitude')
if redis.call('ZSCORE', KEYS[2], ARGV[5]) then
  if current[1] == ARGV[4] and current[2] == ARGV[1] and current[3] == ARGV[2] then return 2 end
  return 3
end
local at = tonumber(current[1])
local latest = not at or tonumber(ARGV[4]) >= at
if latest then
  redis.call('HSET', KEYS[1], 'latitude', ARGV[1], 'longitude', ARGV[2], 'precision', ARGV[3], 'created_at', ARGV[4])
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[6]) + 1))
if latest then return 1 end
return 0
";

/// The account's step of a location, last write wins by `created_at` as in the user's hash
/// (a late step of an older location never moves the user back). KEYS: GEO set, its
/// `created_at` hash (the account's slot). ARGV: openid, longitude, GEO latitude, created_at.
const GEO: &str = r"
local at = tonumber(redis.call('HGET', KEYS[2], ARGV[1]))
if at and tonumber(ARGV[4]) < at then return 0 end
redis.call('GEOADD', KEYS[1], ARGV[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
return 1
";

#[derive(Debug)]
pub(super) struct RedisEffects {
    redis: Redis,
    keys: Keys,
    subscription: Script,
    location: Script,
    geo: Script,
    leases: Scripts,
}

impl RedisEffects {
    pub fn new(redis: Redis, keys: Keys) -> Self {
        RedisEffects {
            redis,
            keys,
            subscription: Script::new(SUBSCRIPTION),
            location: Script::new(LOCATION),
            geo: Script::new(GEO),
            leases: Scripts::new(),
        }
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.redis.bounded(call).await
    }
}

fn applied(code: i64) -> Applied {
    if code == 1 {
        Applied::Yes
    } else {
        Applied::Stale
    }
}

impl Subscriptions for RedisEffects {
    fn subscription<'a>(
        &'a self,
        c: Subscription<'a>,
    ) -> BoxFuture<'a, Result<Applied, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.subscription.key(self.keys.user(c.account, c.openid));
            invocation
                .key(self.keys.binding(c.account, c.openid))
                .arg(if c.subscribed { "1" } else { "0" })
                .arg(c.created_at)
                .arg(c.scene.unwrap_or(""));
            self.bounded(invocation.invoke_async::<i64>(&mut self.redis.conn()))
                .await
                .map(applied)
        })
    }

    fn user<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserState>, StoreError>> {
        Box::pin(async move {
            let fields = redis::cmd("HMGET")
                .arg(self.keys.user(account, openid))
                .arg(&["subscribed", "updated_at", "scene"][..])
                .to_owned();
            let (subscribed, updated_at, scene): (Option<String>, Option<i64>, Option<String>) =
                self.bounded(fields.query_async(&mut self.redis.conn()))
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
        let key = self.keys.binding(account, openid);
        Box::pin(async move { self.bounded(self.redis.conn().get(key)).await })
    }

    fn set_binding<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let key = self.keys.binding(account, openid);
        Box::pin(async move { self.bounded(self.redis.conn().set(key, user)).await })
    }
}

impl Locations for RedisEffects {
    fn location<'a>(&'a self, l: Location<'a>) -> BoxFuture<'a, Result<Applied, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.location.key(self.keys.location(l.account, l.openid));
            invocation
                .key(self.keys.location_history(l.account, l.openid))
                .arg(l.latitude)
                .arg(l.longitude)
                .arg(l.precision)
                .arg(l.created_at)
                .arg(history_member(&l))
                .arg(l.history.max(1));
            let user: i64 = self
                .bounded(invocation.invoke_async(&mut self.redis.conn()))
                .await?;
            if matches!(user, 1 | 2) {
                let mut invocation = self.geo.key(self.keys.geo(l.account));
                invocation
                    .key(self.keys.geo_at(l.account))
                    .arg(l.openid)
                    .arg(l.longitude)
                    .arg(l.latitude.clamp(-GEO_MAX_LATITUDE, GEO_MAX_LATITUDE))
                    .arg(l.created_at);
                self.bounded(invocation.invoke_async::<i64>(&mut self.redis.conn()))
                    .await?;
            }
            Ok(applied(if user == 0 { 0 } else { 1 }))
        })
    }

    fn latest_location<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<Option<LatestLocation>, StoreError>> {
        Box::pin(async move {
            let fields = redis::cmd("HMGET")
                .arg(self.keys.location(account, openid))
                .arg(&["latitude", "longitude", "precision", "created_at"][..])
                .to_owned();
            let values: (Option<f64>, Option<f64>, Option<f64>, Option<i64>) = self
                .bounded(fields.query_async(&mut self.redis.conn()))
                .await?;
            Ok(match values {
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
        let key = self.keys.location_history(account, openid);
        Box::pin(async move { self.bounded(self.redis.conn().zrange(key, 0, -1)).await })
    }
}

impl WelcomeSends for RedisEffects {
    fn begin_send<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Lease, StoreError>> {
        let (key, holder) = (self.keys.welcome(id), WELCOME.holder(owner));
        Box::pin(async move {
            let leases = &self.leases;
            leases
                .claim(&self.redis, key, &holder, lease, WELCOME.done)
                .await
        })
    }

    fn finish_send<'a>(
        &'a self,
        id: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let key = self.keys.welcome(id);
        Box::pin(Scripts::confirm(&self.redis, key, WELCOME.done, ttl))
    }

    fn renew_send<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let (key, holder) = (self.keys.welcome(id), WELCOME.holder(owner));
        Box::pin(async move { self.leases.renew(&self.redis, key, &holder, lease).await })
    }

    fn abandon_send<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (key, holder) = (self.keys.welcome(id), WELCOME.holder(owner));
        Box::pin(async move { self.leases.release(&self.redis, key, &holder).await })
    }
}

impl TokenCache for RedisEffects {
    fn token<'a>(&'a self, appid: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let key = self.keys.token(appid);
        Box::pin(async move { self.bounded(self.redis.conn().get(key)).await })
    }

    fn set_token<'a>(
        &'a self,
        appid: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let key = self.keys.token(appid);
        Box::pin(async move {
            let mut conn = self.redis.conn();
            self.bounded(conn.pset_ex(key, token, lease::ms(ttl))).await
        })
    }

    fn drop_token<'a>(
        &'a self,
        appid: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let key = self.keys.token(appid);
        Box::pin(async move { self.leases.release(&self.redis, key, token).await })
    }

    fn lock_token<'a>(
        &'a self,
        appid: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let key = self.keys.token_lock(appid);
        Box::pin(async move {
            let lock = self.leases.claim(&self.redis, key, owner, ttl, "").await?;
            Ok(lock == Lease::Claimed)
        })
    }

    fn unlock_token<'a>(
        &'a self,
        appid: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let key = self.keys.token_lock(appid);
        Box::pin(async move { self.leases.release(&self.redis, key, owner).await })
    }
}
