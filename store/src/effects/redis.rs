//! The effect stores on Redis: Lua scripts make each step of an effect one atomic round
//! trip on one slot (a location's two steps one round trip where one server holds both
//! slots).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::{AsyncCommands, Script};

use super::store::{
    history_member, Applied, LatestLocation, Location, Locations, Subscription, Subscriptions,
    TokenCache, UserState, WelcomeSends, GEO_MAX_LATITUDE,
};
use crate::engine::{Mode, Redis};
use crate::fut::Fut;
use crate::lease::{self, Scripts, WELCOME};
use crate::{Keys, Lease, StoreError};

/// KEYS: user hash, binding. ARGV: subscribed (1/0), created_at, scene.
///
/// `scene` is the latest follow's, by its `created_at` (`scene_at`), whatever order follows
/// and unfollows come in: a follow older than an unfollow already applied changes nothing
/// else, but its scene counts when it is newer than the scene's follow (or no follow set one
/// yet: the unfollow came first), as it would have had it come first (as it does in
/// `worker rebuild`). Two follows of one second keep the greater scene, in either order.
const SUBSCRIPTION: &str = r"
local current = redis.call('HMGET', KEYS[1], 'updated_at', 'subscribed', 'scene_at', 'scene')
local at = tonumber(current[1])
local t = tonumber(ARGV[2])
-- Byte order, as the memory engine compares (Lua's own compares by the server's locale).
local function greater(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
-- At the same second an unsubscribe wins over a subscribe; anything else (a redelivery above
-- all) changes nothing.
if at and (t < at or (t == at and not (ARGV[1] == '0' and current[2] == '1'))) then
  local scene_at = tonumber(current[3])
  if ARGV[1] == '1' and (not scene_at or t > scene_at
      or (t == scene_at and greater(ARGV[3], current[4] or ''))) then
    redis.call('HSET', KEYS[1], 'scene', ARGV[3], 'scene_at', ARGV[2])
  end
  return 0
end
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'subscribed', '1', 'updated_at', ARGV[2], 'scene', ARGV[3], 'scene_at', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'subscribed', '0', 'updated_at', ARGV[2])
  redis.call('DEL', KEYS[2])
end
return 1
";

/// The user's step of a location. KEYS: location hash, history (the user's slot). ARGV:
/// latitude, longitude, precision, created_at, history member, history length, event id.
/// The latest is the greatest (`created_at`, event id): two locations of one second resolve
/// the same way in whatever order they come, here and in [`GEO`].
/// → 1 it is the latest now, 0 a newer one is there; a redelivery (already in the history)
/// changes nothing here and is 2 when it is still the latest, 3 when not. After 1 or 2 the
/// account's GEO set gets it ([`GEO`]): a step of its own, as the set is in another slot.
const LOCATION: &str = r"
local current = redis.call('HMGET', KEYS[1], 'created_at', 'id')
if redis.call('ZSCORE', KEYS[2], ARGV[5]) then
  if current[1] == ARGV[4] and current[2] == ARGV[7] then return 2 end
  return 3
end
local at, t = tonumber(current[1]), tonumber(ARGV[4])
local latest = not at or t > at or (t == at and (current[2] or '') <= ARGV[7])
if latest then
  redis.call('HSET', KEYS[1], 'latitude', ARGV[1], 'longitude', ARGV[2], 'precision', ARGV[3], 'created_at', ARGV[4], 'id', ARGV[7])
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[6]) + 1))
if latest then return 1 end
return 0
";

/// The account's step of a location, last write wins by (`created_at`, event id) as in the
/// user's hash (a late step of an older location never moves the user back). KEYS: GEO set,
/// its hash of `created_at/id` by OpenID (the account's slot). ARGV: openid, longitude, GEO
/// latitude, created_at, event id.
const GEO: &str = r"
local seen = redis.call('HGET', KEYS[2], ARGV[1])
if seen then
  local at, id = string.match(seen, '^(%-?%d+)/(.*)$')
  local t = tonumber(ARGV[4])
  at = tonumber(at)
  if at and (t < at or (t == at and ARGV[5] < id)) then return 0 end
end
redis.call('GEOADD', KEYS[1], ARGV[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4] .. '/' .. ARGV[5])
return 1
";

/// A location's arguments: [`LOCATION`]'s are the first [`USER_ARGS`], [`GEO`]'s those at
/// [`GEO_ARGS`] (openid, longitude, GEO latitude, created_at, event id).
const USER_ARGS: usize = 7;
const GEO_ARGS: [usize; 5] = [7, 1, 8, 3, 6];

/// Both steps of a location in one call, where one server holds every key (a single node,
/// or Sentinel's master): [`LOCATION`] on KEYS 1–2, then, after 1 or 2, [`GEO`] on KEYS 3–4.
/// Half the calls, and a script's own cost is about that of the commands it runs.
fn location_and_geo() -> String {
    /// A Lua list of ARGV's entries at these (0-based) places.
    fn argv(places: impl IntoIterator<Item = usize>) -> String {
        let entries: Vec<String> = places
            .into_iter()
            .map(|at| format!("ARGV[{}]", at + 1))
            .collect();
        format!("{{{}}}", entries.join(", "))
    }
    let (user_args, geo_args) = (argv(0..USER_ARGS), argv(GEO_ARGS));
    format!(
        "local function user_step(KEYS, ARGV)\n{LOCATION}\nend\n\
         local function geo_step(KEYS, ARGV)\n{GEO}\nend\n\
         local code = user_step({{KEYS[1], KEYS[2]}}, {user_args})\n\
         if code == 1 or code == 2 then\n\
           geo_step({{KEYS[3], KEYS[4]}}, {geo_args})\n\
         end\n\
         return code\n"
    )
}

#[derive(Debug)]
pub(super) struct RedisEffects {
    redis: Redis,
    keys: Keys,
    subscription: Script,
    location: Script,
    geo: Script,
    location_and_geo: Script,
    /// A location's steps go as two calls: on a cluster, or once the server refused the
    /// one call whose keys span slots (`CROSSSLOT`: a proxy that shards by slot).
    split_locations: AtomicBool,
    leases: Scripts,
}

impl RedisEffects {
    pub fn new(redis: Redis, keys: Keys) -> Self {
        let split = redis.mode() == Mode::Cluster;
        RedisEffects {
            redis,
            keys,
            subscription: Script::new(SUBSCRIPTION),
            location: Script::new(LOCATION),
            geo: Script::new(GEO),
            location_and_geo: Script::new(&location_and_geo()),
            split_locations: AtomicBool::new(split),
            leases: Scripts::new(),
        }
    }

    /// One call of `script` on `keys` (of one slot on a cluster).
    async fn run(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<i64, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        self.bounded(invocation.invoke_async(&mut self.redis.conn()))
            .await
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.redis.bounded(call).await
    }
}

impl Subscriptions for RedisEffects {
    fn subscription<'a>(&'a self, c: Subscription<'a>) -> Fut<'a, Applied> {
        Box::pin(async move {
            let keys = [
                self.keys.user(c.account, c.openid),
                self.keys.binding(c.account, c.openid),
            ];
            let flag = if c.subscribed { "1" } else { "0" };
            let args = [
                flag.into(),
                c.created_at.to_string(),
                c.scene.unwrap_or("").into(),
            ];
            self.run(&self.subscription, &keys, &args)
                .await
                .map(Applied::from_script)
        })
    }

    fn user<'a>(&'a self, account: &'a str, openid: &'a str) -> Fut<'a, Option<UserState>> {
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

    fn binding<'a>(&'a self, account: &'a str, openid: &'a str) -> Fut<'a, Option<String>> {
        let key = self.keys.binding(account, openid);
        Box::pin(async move { self.bounded(self.redis.conn().get(key)).await })
    }

    fn set_binding<'a>(&'a self, account: &'a str, openid: &'a str, user: &'a str) -> Fut<'a, ()> {
        let key = self.keys.binding(account, openid);
        Box::pin(async move { self.bounded(self.redis.conn().set(key, user)).await })
    }
}

impl Locations for RedisEffects {
    fn location<'a>(&'a self, l: Location<'a>) -> Fut<'a, Applied> {
        Box::pin(async move {
            let (account, openid) = (l.account, l.openid);
            let keys = [
                self.keys.location(account, openid),
                self.keys.location_history(account, openid),
                self.keys.geo(account),
                self.keys.geo_at(account),
            ];
            let (latitude, longitude) = (l.latitude.to_string(), l.longitude.to_string());
            let created_at = l.created_at.to_string();
            let geo_latitude = l.latitude.clamp(-GEO_MAX_LATITUDE, GEO_MAX_LATITUDE);
            let args = [
                latitude,
                longitude,
                l.precision.to_string(),
                created_at,
                history_member(&l),
                l.history.max(1).to_string(),
                l.id.to_owned(),
                openid.into(),
                geo_latitude.to_string(),
            ];
            let combined = if self.split_locations.load(Ordering::Relaxed) {
                None
            } else {
                match self.run(&self.location_and_geo, &keys, &args).await {
                    Err(error) if error.kind() == "CROSSSLOT" => {
                        tracing::warn!("Redis refuses a script whose keys span slots (a proxy sharding by slot?): a location's steps go as two calls from now on");
                        self.split_locations.store(true, Ordering::Relaxed);
                        None
                    }
                    user => Some(user?),
                }
            };
            let user = match combined {
                Some(user) => user,
                None => {
                    // The user's slot, then the account's.
                    let user = self
                        .run(&self.location, &keys[..2], &args[..USER_ARGS])
                        .await?;
                    if matches!(user, 1 | 2) {
                        let geo = GEO_ARGS.map(|at| args[at].clone());
                        self.run(&self.geo, &keys[2..], &geo).await?;
                    }
                    user
                }
            };
            // 0: a newer location is kept; 1 to 3: this one is written (now or before).
            Ok(Applied::from_script(user.min(1)))
        })
    }

    fn latest_location<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> Fut<'a, Option<LatestLocation>> {
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

    fn location_history<'a>(&'a self, account: &'a str, openid: &'a str) -> Fut<'a, Vec<String>> {
        let key = self.keys.location_history(account, openid);
        Box::pin(async move { self.bounded(self.redis.conn().zrange(key, 0, -1)).await })
    }
}

impl WelcomeSends for RedisEffects {
    fn begin_send<'a>(&'a self, id: &'a str, owner: &'a str, lease: Duration) -> Fut<'a, Lease> {
        let (key, holder) = (self.keys.welcome(id), WELCOME.holder(owner));
        Box::pin(
            async move { Scripts::claim(&self.redis, key, &holder, lease, WELCOME.done).await },
        )
    }

    fn finish_send<'a>(&'a self, id: &'a str, ttl: Duration) -> Fut<'a, ()> {
        let key = self.keys.welcome(id);
        Box::pin(Scripts::confirm(&self.redis, key, WELCOME.done, ttl))
    }

    fn renew_send<'a>(&'a self, id: &'a str, owner: &'a str, lease: Duration) -> Fut<'a, bool> {
        let (key, holder) = (self.keys.welcome(id), WELCOME.holder(owner));
        Box::pin(async move { self.leases.renew(&self.redis, key, &holder, lease).await })
    }

    fn abandon_send<'a>(&'a self, id: &'a str, owner: &'a str) -> Fut<'a, ()> {
        let (key, holder) = (self.keys.welcome(id), WELCOME.holder(owner));
        Box::pin(async move { self.leases.release(&self.redis, key, &holder).await })
    }
}

impl TokenCache for RedisEffects {
    fn token<'a>(&'a self, appid: &'a str) -> Fut<'a, Option<String>> {
        let key = self.keys.token(appid);
        Box::pin(async move { self.bounded(self.redis.conn().get(key)).await })
    }

    fn set_token<'a>(&'a self, appid: &'a str, token: &'a str, ttl: Duration) -> Fut<'a, ()> {
        let key = self.keys.token(appid);
        Box::pin(async move {
            let mut conn = self.redis.conn();
            self.bounded(conn.pset_ex(key, token, lease::ms(ttl))).await
        })
    }

    fn drop_token<'a>(&'a self, appid: &'a str, token: &'a str) -> Fut<'a, ()> {
        let key = self.keys.token(appid);
        Box::pin(async move { self.leases.release(&self.redis, key, token).await })
    }

    fn lock_token<'a>(&'a self, appid: &'a str, owner: &'a str, ttl: Duration) -> Fut<'a, bool> {
        let key = self.keys.token_lock(appid);
        Box::pin(async move {
            let lock = Scripts::claim(&self.redis, key, owner, ttl, "").await?;
            Ok(lock == Lease::Claimed)
        })
    }

    fn unlock_token<'a>(&'a self, appid: &'a str, owner: &'a str) -> Fut<'a, ()> {
        let key = self.keys.token_lock(appid);
        Box::pin(async move { self.leases.release(&self.redis, key, owner).await })
    }
}
