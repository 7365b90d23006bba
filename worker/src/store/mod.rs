//! The state the workers keep, behind one small trait with two engines chosen by URL:
//! `redis://` (production, shared by every worker process) and `memory://` (the embedded
//! default). Every write is idempotent and last-write-wins by `created_at`, so redelivered
//! and late events never undo newer ones.
//!
//! Keys (under `REDIS_KEY_PREFIX`, `{p}`):
//!
//! | key | what |
//! |---|---|
//! | `{p}:user:{account}:{openid}` | hash `subscribed` (1/0), `updated_at`, `scene` |
//! | `{p}:binding:{account}:{openid}` | the host application's link to its own user; deleted on unsubscribe |
//! | `{p}:geo:{account}` | GEO set of the latest location of every user (member = OpenID) |
//! | `{p}:location:{account}:{openid}` | hash `latitude`, `longitude`, `precision`, `created_at` |
//! | `{p}:location_history:{account}:{openid}` | sorted set of the last N locations, by `created_at` |
//! | `{p}:welcome:{id}` | `sending:{owner}` (leased) or `sent`: one welcome per subscribe event |
//! | `{p}:token:{appid}` | the cached access token, expiring before WeChat's does |
//! | `{p}:token_lock:{appid}` | the lock held while one process fetches a token |

use std::time::Duration;

mod memory;
mod redis;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

pub use ops::redis::{BoxFuture, StoreError};

/// A subscription change: a `subscribe` (with its scene) or an `unsubscribe`.
#[derive(Debug, Clone, Copy)]
pub struct Subscription<'a> {
    pub account: &'a str,
    pub openid: &'a str,
    pub subscribed: bool,
    pub created_at: i64,
    pub scene: Option<&'a str>,
}

/// A location report.
#[derive(Debug, Clone, Copy)]
pub struct Location<'a> {
    pub id: &'a str,
    pub account: &'a str,
    pub openid: &'a str,
    pub latitude: f64,
    pub longitude: f64,
    pub precision: f64,
    pub created_at: i64,
    /// How many locations to keep in the user's history.
    pub history: usize,
}

/// Whether a last-write-wins write took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Yes,
    /// A newer state was already there: nothing changed.
    Stale,
}

/// Where a welcome send stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendClaim {
    /// Ours to send now.
    Claimed,
    /// Already sent: nothing to do.
    Sent,
    /// Another worker is sending it now (its lease has not run out).
    InFlight,
}

/// The workers' state.
pub trait EffectStore: Send + Sync + std::fmt::Debug {
    /// Applies a subscribe or unsubscribe, last write wins by `created_at`; an unsubscribe
    /// wins a tie, and deletes the binding when it takes effect.
    fn subscription<'a>(
        &'a self,
        change: Subscription<'a>,
    ) -> BoxFuture<'a, Result<Applied, StoreError>>;
    /// Adds a location to the history (idempotent by event id) and, when newer, makes it the
    /// latest (hash and GEO set).
    fn location<'a>(&'a self, location: Location<'a>)
        -> BoxFuture<'a, Result<Applied, StoreError>>;

    /// Claims the welcome send of event `id` for `lease`.
    fn begin_send<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<SendClaim, StoreError>>;
    /// Records the send of `id` as done, for `ttl`.
    fn finish_send<'a>(
        &'a self,
        id: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Extends a claim that `owner` still holds by `lease` (a send that runs long keeps it);
    /// `false` when it is no longer theirs.
    fn renew_send<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Gives up a claim that `owner` still holds, so a retry can send.
    fn abandon_send<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The cached access token of an AppID.
    fn token<'a>(&'a self, appid: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>>;
    /// Caches a token for `ttl`.
    fn set_token<'a>(
        &'a self,
        appid: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Forgets the cached token only if it is still `token` (another process may have
    /// refreshed it already).
    fn drop_token<'a>(
        &'a self,
        appid: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Takes the fetch lock of an AppID for `ttl`; false when another process holds it.
    fn lock_token<'a>(
        &'a self,
        appid: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Releases the fetch lock if `owner` still holds it.
    fn unlock_token<'a>(
        &'a self,
        appid: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    // Reads, for the host application, operators and tests.

    /// A user's subscription state.
    fn user<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserState>, StoreError>>;
    /// The host application's binding of an OpenID, if any.
    fn binding<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>>;
    /// Binds an OpenID to the host application's user (what the host application does).
    fn set_binding<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// A user's latest location.
    fn latest_location<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<Option<LatestLocation>, StoreError>>;
    /// A user's location history, oldest first (JSON entries).
    fn location_history<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
}

/// `{p}:user:{account}:{openid}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserState {
    pub subscribed: bool,
    pub updated_at: i64,
    pub scene: String,
}

/// `{p}:location:{account}:{openid}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatestLocation {
    pub latitude: f64,
    pub longitude: f64,
    pub precision: f64,
    pub created_at: i64,
}

/// Opens the engine a URL names.
pub async fn open(
    url: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<std::sync::Arc<dyn EffectStore>, StoreError> {
    if url.starts_with("memory://") {
        Ok(std::sync::Arc::new(MemoryStore::new()))
    } else if url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+unix://")
    {
        Ok(std::sync::Arc::new(RedisStore::connect(
            url, prefix, timeout,
        )?))
    } else {
        Err(StoreError::Scheme(url.to_owned()))
    }
}

/// Redis's GEO index takes latitudes within ±85.05112878° (Web Mercator); the location hash
/// keeps the exact value, the GEO set the clamped one.
pub const GEO_MAX_LATITUDE: f64 = 85.051_128_78;

/// The history entry of a location: the same event always makes the same member.
fn history_member(location: &Location<'_>) -> String {
    serde_json::json!({
        "id": location.id,
        "latitude": location.latitude,
        "longitude": location.longitude,
        "precision": location.precision,
        "created_at": location.created_at,
    })
    .to_string()
}
