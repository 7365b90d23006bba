//! The component store on Redis: one script per step, each on one key.

use redis::{AsyncCommands, Script};

use super::store::{
    Admission, Authorization, Authorizer, AuthorizerOf, Components, RefreshToken, Ticket, UserName,
};
use crate::effects::Applied;
use crate::engine::Redis;
use crate::fut::Fut;
use crate::{Keys, StoreError};

/// KEYS: ticket hash. ARGV: ticket, created_at. An older ticket than the one kept is dropped.
const SET_TICKET: &str = r"
local at = tonumber(redis.call('HGET', KEYS[1], 'created_at'))
if at and tonumber(ARGV[2]) < at then return 0 end
redis.call('HSET', KEYS[1], 'ticket', ARGV[1], 'created_at', ARGV[2])
return 1
";

/// KEYS: authorizer hash. ARGV: authorized (1/0), created_at. Last write wins; of one
/// second, the withdrawal; a withdrawal forgets the refresh token.
const SET_AUTHORIZED: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'authorized', 'authorized_at')
local at, t = tonumber(cur[2]), tonumber(ARGV[2])
if at and (t < at or (t == at and (ARGV[1] == '1' or cur[1] == '0'))) then return 0 end
redis.call('HSET', KEYS[1], 'authorized', ARGV[1], 'authorized_at', ARGV[2])
if ARGV[1] == '0' then redis.call('HDEL', KEYS[1], 'refresh_token', 'refresh_at') end
return 1
";

/// KEYS: authorizer hash. ARGV: the push's ToUserName. → {0} withdrawn, {1} admitted, {2,
/// known} another account's. Reads only.
const ADMIT: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'authorized', 'user_name')
if cur[1] == '0' then return {0, ''} end
if cur[2] and cur[2] ~= ARGV[1] then return {2, cur[2]} end
return {1, ''}
";

/// KEYS: authorizer hash. ARGV: refresh token, created_at of its authorization.
const SET_REFRESH_TOKEN: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'authorized', 'authorized_at', 'refresh_at')
local t = tonumber(ARGV[2])
if cur[1] == '0' then return 0 end
local at, refreshed = tonumber(cur[2]), tonumber(cur[3])
if (at and t < at) or (refreshed and t < refreshed) then return 0 end
redis.call('HSET', KEYS[1], 'refresh_token', ARGV[1], 'refresh_at', ARGV[2])
return 1
";

#[derive(Debug)]
pub(super) struct RedisComponents {
    redis: Redis,
    keys: Keys,
    set_ticket: Script,
    set_authorized: Script,
    admit: Script,
    set_refresh_token: Script,
}

impl RedisComponents {
    fn authorizer_key(&self, of: AuthorizerOf) -> String {
        self.keys.component_authorizer(of.component, of.authorizer)
    }

    pub fn new(redis: Redis, keys: Keys) -> Self {
        RedisComponents {
            redis,
            keys,
            set_ticket: Script::new(SET_TICKET),
            set_authorized: Script::new(SET_AUTHORIZED),
            admit: Script::new(ADMIT),
            set_refresh_token: Script::new(SET_REFRESH_TOKEN),
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        key: String,
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        invocation.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        self.redis
            .bounded(invocation.invoke_async(&mut self.redis.conn()))
            .await
    }
}

/// An authorizer hash's fields, as `HMGET` returns them.
type Fields = (
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

impl Components for RedisComponents {
    fn set_ticket<'a>(&'a self, t: Ticket<'a>) -> Fut<'a, ()> {
        let key = self.keys.component_ticket(t.component);
        Box::pin(async move {
            let at = t.created_at.to_string();
            self.run::<i64>(&self.set_ticket, key, &[t.ticket, &at])
                .await?;
            Ok(())
        })
    }

    fn ticket<'a>(&'a self, component: &'a str) -> Fut<'a, Option<String>> {
        let key = self.keys.component_ticket(component);
        Box::pin(async move {
            self.redis
                .bounded(self.redis.conn().hget(key, "ticket"))
                .await
        })
    }

    fn set_authorized<'a>(&'a self, change: Authorization<'a>) -> Fut<'a, Applied> {
        let key = self.authorizer_key(change.of);
        Box::pin(async move {
            let at = change.created_at.to_string();
            let flag = if change.authorized { "1" } else { "0" };
            Ok(Applied::from_script(
                self.run(&self.set_authorized, key, &[flag, &at]).await?,
            ))
        })
    }

    fn admit<'a>(&'a self, of: AuthorizerOf<'a>, user_name: &'a str) -> Fut<'a, Admission> {
        let key = self.authorizer_key(of);
        Box::pin(async move {
            let (code, known): (i64, String) = self.run(&self.admit, key, &[user_name]).await?;
            Ok(match code {
                0 => Admission::Unauthorized,
                2 => Admission::OtherAccount { known },
                _ => Admission::Admitted,
            })
        })
    }

    /// `HSETNX` for a learned name, `HSET` for WeChat's.
    fn write_user_name<'a>(&'a self, of: AuthorizerOf<'a>, name: UserName<'a>) -> Fut<'a, ()> {
        let key = self.authorizer_key(of);
        Box::pin(async move {
            let mut conn = self.redis.conn();
            let write = match name {
                UserName::Learned(name) => conn.hset_nx::<_, _, _, ()>(key, "user_name", name),
                UserName::FromApi(name) => conn.hset::<_, _, _, ()>(key, "user_name", name),
            };
            self.redis.bounded(write).await
        })
    }

    fn set_refresh_token<'a>(&'a self, token: RefreshToken<'a>) -> Fut<'a, Applied> {
        let key = self.authorizer_key(token.of);
        Box::pin(async move {
            let at = token.created_at.to_string();
            Ok(Applied::from_script(
                self.run(&self.set_refresh_token, key, &[token.token, &at])
                    .await?,
            ))
        })
    }

    fn authorizer<'a>(&'a self, of: AuthorizerOf<'a>) -> Fut<'a, Authorizer> {
        let key = self.authorizer_key(of);
        Box::pin(async move {
            let (authorized, authorized_at, user_name, refresh_token, refresh_at): Fields = self
                .redis
                .bounded(
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg(&[
                            "authorized",
                            "authorized_at",
                            "user_name",
                            "refresh_token",
                            "refresh_at",
                        ])
                        .query_async(&mut self.redis.conn()),
                )
                .await?;
            Ok(Authorizer {
                authorized: authorized.map(|a| a == "1"),
                authorized_at,
                user_name,
                refresh_token,
                refresh_at,
            })
        })
    }
}
