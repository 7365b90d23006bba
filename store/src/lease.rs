//! One lease primitive for every "only one of us does this" in wxpipe: a push's dedup claim
//! (`pending:<token>` → `done`), a welcome's send claim (`sending:<owner>` → `sent`) and the
//! token fetch lock. A holder claims a key for a lease; it then confirms it (the work is
//! done: every later claim finds `Done`), renews it while the work runs long, or releases
//! it so another can try at once. A holder that dies loses nothing: its lease runs out.
//!
//! Each step is one atomic operation: on Redis a plain command where one does it (a claim is
//! `SET … NX GET PX`, a confirm `SET … PX`), else a Lua function (`LUA`); in memory a method
//! of the memory engine's `TtlMap`.

use std::time::Duration;

use redis::Script;

use crate::engine::Redis;
use crate::StoreError;

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Ours until the lease runs out.
    Claimed,
    /// The work is done: nothing to do.
    Done,
    /// Another holder has it, and its lease has not run out.
    Held,
}

impl Lease {
    /// The code the Lua functions return.
    pub(crate) fn from_code(code: i64) -> Lease {
        match code {
            0 => Lease::Claimed,
            1 => Lease::Done,
            _ => Lease::Held,
        }
    }

    /// Its code, as [`Lease::from_code`] reads it.
    pub(crate) fn code(self) -> i64 {
        match self {
            Lease::Claimed => 0,
            Lease::Done => 1,
            Lease::Held => 2,
        }
    }
}

/// The values a kind of lease writes: `{held}:{holder}` while held, `done` once confirmed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kind {
    pub held: &'static str,
    pub done: &'static str,
}

impl Kind {
    pub fn holder(&self, holder: &str) -> String {
        format!("{}:{holder}", self.held)
    }
}

/// A push's dedup claim.
pub(crate) const DEDUP: Kind = Kind {
    held: "pending",
    done: "done",
};
/// A welcome's send claim.
pub(crate) const WELCOME: Kind = Kind {
    held: "sending",
    done: "sent",
};

/// The lease steps a command cannot do alone, as Lua functions. `renew` returns 1 when the
/// lease is still the holder's.
pub(crate) const LUA: &str = r"
local function lease_release(key, holder)
  if redis.call('GET', key) == holder then redis.call('DEL', key) end
  return 0
end
local function lease_renew(key, holder, ms)
  if redis.call('GET', key) == holder then
    redis.call('PEXPIRE', key, ms)
    return 1
  end
  return 0
end
";

/// An id no other probe uses, for the start-up and readiness round trips.
pub(crate) fn probe_id() -> String {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::UNIX_EPOCH
        .elapsed()
        .unwrap_or_default()
        .as_nanos();
    format!("wxpipe-check:{}.{now}.{n}", std::process::id())
}

/// The longest expiry sent to Redis: a century. Redis refuses one whose milliseconds from now
/// pass an `i64`, and a duration's milliseconds truncated to 64 bits can be anything (2^63 s
/// is 0 ms): a huge TTL (`INGEST_DEDUP_TTL`) must stay a long one, not vanish.
pub(crate) const MAX_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// A duration as Redis milliseconds: at least 1, at most [`MAX_MS`].
pub(crate) fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_MS)
}

/// What a claim's `SET key holder NX GET PX ms` found: nothing (claimed), the kind's `done`
/// value, or another holder's.
pub(crate) fn claimed_over(found: Option<&[u8]>, done: &str) -> Lease {
    match found {
        None => Lease::Claimed,
        Some(value) if value == done.as_bytes() => Lease::Done,
        Some(_) => Lease::Held,
    }
}

/// The lease steps on Redis, one call each.
#[derive(Debug)]
pub(crate) struct Scripts {
    renew: Script,
    release: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        let script = |body: &str| Script::new(&format!("{LUA}\n{body}"));
        Scripts {
            renew: script("return lease_renew(KEYS[1], ARGV[1], ARGV[2])"),
            release: script("return lease_release(KEYS[1], ARGV[1])"),
        }
    }

    /// Claims `key` for `holder` (the full held value); `done` is the confirmed value, if
    /// the kind has one. One `SET … NX GET PX` (Redis 7.0 or later): a script costs Redis
    /// about twice the commands it runs.
    pub async fn claim(
        redis: &Redis,
        key: String,
        holder: &str,
        lease: Duration,
        done: &str,
    ) -> Result<Lease, StoreError> {
        let set = redis::cmd("SET")
            .arg(key)
            .arg(holder)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ms(lease))
            .to_owned();
        let found: Option<Vec<u8>> = redis.bounded(set.query_async(&mut redis.conn())).await?;
        Ok(claimed_over(found.as_deref(), done))
    }

    pub async fn confirm(
        redis: &Redis,
        key: String,
        done: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let set = redis::cmd("SET")
            .arg(key)
            .arg(done)
            .arg("PX")
            .arg(ms(ttl))
            .to_owned();
        redis
            .bounded(set.query_async::<()>(&mut redis.conn()))
            .await
    }

    /// Extends the lease when `holder` still holds it; `false` when it is no longer theirs.
    pub async fn renew(
        &self,
        redis: &Redis,
        key: String,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.renew.key(key);
        invocation.arg(holder).arg(ms(lease));
        let renewed: i64 = redis
            .bounded(invocation.invoke_async(&mut redis.conn()))
            .await?;
        Ok(renewed == 1)
    }

    /// Deletes `key` only while it still holds `holder`.
    pub async fn release(
        &self,
        redis: &Redis,
        key: String,
        holder: &str,
    ) -> Result<(), StoreError> {
        let mut invocation = self.release.key(key);
        invocation.arg(holder);
        redis
            .bounded(invocation.invoke_async::<i64>(&mut redis.conn()))
            .await
            .map(drop)
    }
}
