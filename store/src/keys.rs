//! Every Redis key name wxpipe writes, in one place (the README's key table lists them).
//! The memory engine uses the same names for what it keeps in its [`crate::memory::TtlMap`].
//!
//! Under `REDIS_KEY_PREFIX` (`{p}`):
//!
//! | key | what |
//! |---|---|
//! | `{p}:dedup:{id}` | a push's claim: `pending:{token}` (leased) or `done` |
//! | `{p}:nonce:{account}:{timestamp}:{nonce}` | the digest of the body first seen with a plaintext (timestamp, nonce) |
//! | `{p}:user:{account}:{openid}` | hash `subscribed` (1/0), `updated_at`, `scene` |
//! | `{p}:binding:{account}:{openid}` | the host application's link to its own user; deleted on unsubscribe |
//! | `{p}:geo:{account}` | GEO set of the latest location of every user (member = OpenID) |
//! | `{p}:location:{account}:{openid}` | hash `latitude`, `longitude`, `precision`, `created_at` |
//! | `{p}:location_history:{account}:{openid}` | sorted set of the last N locations, by `created_at` |
//! | `{p}:welcome:{id}` | `sending:{owner}` (leased) or `sent`: one welcome per subscribe event |
//! | `{p}:token:{appid}` | the cached access token, expiring before WeChat's does |
//! | `{p}:token_lock:{appid}` | the lock held while one process fetches a token |

/// Key names under `REDIS_KEY_PREFIX`.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// A push's claim.
    pub fn dedup(&self, id: &str) -> String {
        self.key(&["dedup", id])
    }

    /// A plaintext (timestamp, nonce) pair → the digest of its body.
    pub fn nonce(&self, account: &str, timestamp: &str, nonce: &str) -> String {
        self.key(&["nonce", account, timestamp, nonce])
    }

    pub fn user(&self, account: &str, openid: &str) -> String {
        self.key(&["user", account, openid])
    }

    pub fn binding(&self, account: &str, openid: &str) -> String {
        self.key(&["binding", account, openid])
    }

    pub fn location(&self, account: &str, openid: &str) -> String {
        self.key(&["location", account, openid])
    }

    pub fn location_history(&self, account: &str, openid: &str) -> String {
        self.key(&["location_history", account, openid])
    }

    pub fn geo(&self, account: &str) -> String {
        self.key(&["geo", account])
    }

    /// A welcome's send claim.
    pub fn welcome(&self, id: &str) -> String {
        self.key(&["welcome", id])
    }

    pub fn token(&self, appid: &str) -> String {
        self.key(&["token", appid])
    }

    pub fn token_lock(&self, appid: &str) -> String {
        self.key(&["token_lock", appid])
    }
}
