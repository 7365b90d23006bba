//! The dedup store's trait and the types it speaks, which every engine implements.

use std::time::Duration;

use crate::fut::Fut;
use crate::StoreError;

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The id is ours to publish.
    Claimed,
    /// The event is already durable: answer 200 and publish nothing.
    Done,
    /// Another attempt holds the claim and its outcome is not known yet.
    InFlight,
    /// The (timestamp, nonce) was seen with another body: a replay. Nothing was claimed.
    Replayed,
}

/// A (timestamp, nonce) pair and the digest of the body first seen with it.
#[derive(Debug, Clone, Copy)]
pub struct NonceBinding<'a> {
    pub account: &'a str,
    pub timestamp: &'a str,
    pub nonce: &'a str,
    pub body_digest: &'a str,
    pub ttl: Duration,
}

/// One claim attempt: checks the nonce binding (when given) and claims the id, in one round trip.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    pub id: &'a str,
    /// Unique to this attempt, so only it can release its claim.
    pub token: &'a str,
    pub lease: Duration,
    pub nonce: Option<NonceBinding<'a>>,
}

/// The dedup store. Key names are under `prefix` (`{prefix}:dedup:{id}`, `{prefix}:nonce:…`).
pub trait DedupStore: Send + Sync + std::fmt::Debug {
    fn claim<'a>(&'a self, req: ClaimRequest<'a>) -> Fut<'a, Claim>;
    /// Marks the id durable for `ttl`, whoever holds the claim.
    fn confirm<'a>(&'a self, id: &'a str, ttl: Duration) -> Fut<'a, ()>;
    /// Drops the claim if `token` still holds it.
    fn release<'a>(&'a self, id: &'a str, token: &'a str) -> Fut<'a, ()>;
    fn ping(&self) -> Fut<'_, ()>;

    /// What a push does, with a probe id: a claim with a nonce binding, then its release.
    /// Checked at start-up (see [`Engine::check_at_start`]) and by `/readyz`.
    fn round_trip(&self) -> Fut<'_, ()> {
        Box::pin(async move {
            let id = crate::lease::probe_id();
            let ttl = Duration::from_secs(10);
            let nonce = NonceBinding {
                account: "wxpipe-check",
                timestamp: "0",
                nonce: &id,
                body_digest: "check",
                ttl,
            };
            let request = ClaimRequest {
                id: &id,
                token: "check",
                lease: ttl,
                nonce: Some(nonce),
            };
            match self.claim(request).await? {
                Claim::Claimed => self.release(&id, "check").await,
                found => Err(StoreError::batch(
                    &format!("the probe claim found {found:?}"),
                    false,
                )),
            }
        })
    }
}
