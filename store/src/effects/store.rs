//! One narrow trait per effect and the types they speak, which every engine implements.

use std::time::Duration;

use crate::fut::Fut;
use crate::Lease;

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

impl Applied {
    /// A write script's answer: 1 when it wrote, anything else when a newer state was there.
    pub(crate) fn from_script(code: i64) -> Applied {
        if code == 1 {
            Applied::Yes
        } else {
            Applied::Stale
        }
    }
}

/// Users' subscription state, and the host application's bindings it deletes.
pub trait Subscriptions: Send + Sync + std::fmt::Debug {
    /// Applies a subscribe or unsubscribe, last write wins by `created_at`; an unsubscribe
    /// wins a tie, and deletes the binding when it takes effect.
    fn subscription<'a>(&'a self, change: Subscription<'a>) -> Fut<'a, Applied>;
    /// A user's subscription state.
    fn user<'a>(&'a self, account: &'a str, openid: &'a str) -> Fut<'a, Option<UserState>>;
    /// The host application's binding of an OpenID, if any.
    fn binding<'a>(&'a self, account: &'a str, openid: &'a str) -> Fut<'a, Option<String>>;
    /// Binds an OpenID to the host application's user (what the host application does).
    fn set_binding<'a>(&'a self, account: &'a str, openid: &'a str, user: &'a str) -> Fut<'a, ()>;
}

/// Users' locations.
pub trait Locations: Send + Sync + std::fmt::Debug {
    /// Adds a location to the history (idempotent by event id) and, when newer, makes it the
    /// latest (hash and GEO set).
    fn location<'a>(&'a self, location: Location<'a>) -> Fut<'a, Applied>;
    /// A user's latest location.
    fn latest_location<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> Fut<'a, Option<LatestLocation>>;
    /// A user's location history, oldest first (JSON entries).
    fn location_history<'a>(&'a self, account: &'a str, openid: &'a str) -> Fut<'a, Vec<String>>;
}

/// One welcome per subscribe event: a [lease](crate::lease) on each send.
pub trait WelcomeSends: Send + Sync + std::fmt::Debug {
    /// Claims the welcome send of event `id` for `lease`.
    fn begin_send<'a>(&'a self, id: &'a str, owner: &'a str, lease: Duration) -> Fut<'a, Lease>;
    /// Records the send of `id` as done, for `ttl`.
    fn finish_send<'a>(&'a self, id: &'a str, ttl: Duration) -> Fut<'a, ()>;
    /// Extends a claim that `owner` still holds by `lease` (a send that runs long keeps it);
    /// `false` when it is no longer theirs.
    fn renew_send<'a>(&'a self, id: &'a str, owner: &'a str, lease: Duration) -> Fut<'a, bool>;
    /// Gives up a claim that `owner` still holds, so a retry can send.
    fn abandon_send<'a>(&'a self, id: &'a str, owner: &'a str) -> Fut<'a, ()>;
}

/// The access tokens shared by every worker process, and the lock one takes to fetch one.
pub trait TokenCache: Send + Sync + std::fmt::Debug {
    /// The cached access token of an AppID.
    fn token<'a>(&'a self, appid: &'a str) -> Fut<'a, Option<String>>;
    /// Caches a token for `ttl`.
    fn set_token<'a>(&'a self, appid: &'a str, token: &'a str, ttl: Duration) -> Fut<'a, ()>;
    /// Forgets the cached token only if it is still `token` (another process may have
    /// refreshed it already).
    fn drop_token<'a>(&'a self, appid: &'a str, token: &'a str) -> Fut<'a, ()>;
    /// Takes the fetch lock of an AppID for `ttl`; false when another process holds it.
    fn lock_token<'a>(&'a self, appid: &'a str, owner: &'a str, ttl: Duration) -> Fut<'a, bool>;
    /// Releases the fetch lock if `owner` still holds it.
    fn unlock_token<'a>(&'a self, appid: &'a str, owner: &'a str) -> Fut<'a, ()>;
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

/// Redis's GEO index takes latitudes within ±85.05112878° (Web Mercator); the location hash
/// keeps the exact value, the GEO set the clamped one.
pub const GEO_MAX_LATITUDE: f64 = 85.051_128_78;

/// The history entry of a location: the same event always makes the same member.
pub(super) fn history_member(location: &Location<'_>) -> String {
    serde_json::json!({
        "id": location.id,
        "latitude": location.latitude,
        "longitude": location.longitude,
        "precision": location.precision,
        "created_at": location.created_at,
    })
    .to_string()
}
