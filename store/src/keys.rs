//! Every Redis key name wxpipe writes, in one place (the README's key table lists them).
//! The memory engine uses the same names for what it keeps in its [`crate::memory::TtlMap`].
//!
//! The braces are Redis Cluster hash tags: every key of one user shares the tag
//! `{account:openid}`, so each script touches one slot, on every engine (a deployment can
//! move from one node to a cluster without renaming anything). Under `REDIS_KEY_PREFIX`
//! (`{p}`):
//!
//! | key | what |
//! |---|---|
//! | `{p}:dedup:{account:openid}:{id}` | a push's claim: `pending:{token}` (leased) or `done` |
//! | `{p}:nonce:{account:timestamp:nonce}` | the digest of the body first seen with a plaintext (timestamp, nonce) |
//! | `{p}:user:{account:openid}` | hash `subscribed` (1/0), `updated_at`, `scene` and its `scene_at` |
//! | `{p}:binding:{account:openid}` | the host application's link to its own user; deleted on unsubscribe |
//! | `{p}:location:{account:openid}` | hash `latitude`, `longitude`, `precision`, `created_at` |
//! | `{p}:location_history:{account:openid}` | sorted set of the last N locations, by `created_at` |
//! | `{p}:welcome:{account:openid}:{id}` | `sending:{owner}` (leased) or `sent`: one welcome per subscribe event |
//! | `{p}:geo:{account}` | GEO set of the latest location of every user (member = OpenID) |
//! | `{p}:geo_at:{account}` | hash OpenID → `created_at` of the location in the GEO set (last write wins there too) |
//! | `{p}:token:{appid}` | the cached access token, expiring before WeChat's does |
//! | `{p}:token_lock:{appid}` | the lock held while one process fetches a token |
//! | `{p}:component:{C}:ticket`, `…:authorizer:{A}`, `…:token`, `…:token_lock`, `…:authorizer_token:{A}`, `…:authorizer_token_lock:{A}` | an Open Platform component's state and tokens ([`crate::component`]) |

use schemas::EventId;

/// How a component's access token is named to the token cache (see [`Keys::token`]).
pub(crate) const COMPONENT_TOKEN: &str = "component/";

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

    /// `{p}:{kind}:{tag}` and, when given, `:{rest}`.
    fn key(&self, kind: &str, tag: &[&str], rest: Option<&str>) -> String {
        // Built by hand, in one allocation: three keys a push, on the hot path (`format!`
        // and `join` cost ten times as much).
        let len = self.prefix.len()
            + kind.len()
            + tag.iter().map(|t| t.len() + 1).sum::<usize>()
            + rest.map_or(0, |r| r.len() + 1)
            + 3;
        let mut key = String::with_capacity(len);
        key.push_str(&self.prefix);
        key.push(':');
        key.push_str(kind);
        key.push_str(":{");
        for (i, part) in tag.iter().enumerate() {
            if i > 0 {
                key.push(':');
            }
            key.push_str(part);
        }
        key.push('}');
        if let Some(rest) = rest {
            key.push(':');
            key.push_str(rest);
        }
        key
    }

    /// A push's claim.
    pub fn dedup(&self, id: &str) -> String {
        self.key("dedup", &[EventId::user_of(id)], Some(id))
    }

    /// A plaintext (timestamp, nonce) pair → the digest of its body.
    pub fn nonce(&self, account: &str, timestamp: &str, nonce: &str) -> String {
        self.key("nonce", &[account, timestamp, nonce], None)
    }

    pub fn user(&self, account: &str, openid: &str) -> String {
        self.key("user", &[account, openid], None)
    }

    pub fn binding(&self, account: &str, openid: &str) -> String {
        self.key("binding", &[account, openid], None)
    }

    pub fn location(&self, account: &str, openid: &str) -> String {
        self.key("location", &[account, openid], None)
    }

    pub fn location_history(&self, account: &str, openid: &str) -> String {
        self.key("location_history", &[account, openid], None)
    }

    pub fn geo(&self, account: &str) -> String {
        self.key("geo", &[account], None)
    }

    pub fn geo_at(&self, account: &str) -> String {
        self.key("geo_at", &[account], None)
    }

    /// A welcome's send claim.
    pub fn welcome(&self, id: &str) -> String {
        self.key("welcome", &[EventId::user_of(id)], Some(id))
    }

    /// An account's (or an authorizer's) access token; a component's under its own tag
    /// (named by [`crate::component::component_token`]).
    pub fn token(&self, appid: &str) -> String {
        self.token_key(appid, "token")
    }

    pub fn token_lock(&self, appid: &str) -> String {
        self.token_key(appid, "token_lock")
    }

    /// An account's `{p}:{kind}:{appid}`; under a component's tag its own
    /// (`component/{C}`) or an authorizer's (`component/{C}/{A}`).
    fn token_key(&self, name: &str, kind: &str) -> String {
        match name
            .strip_prefix(COMPONENT_TOKEN)
            .map(|rest| rest.split_once('/'))
        {
            None => self.key(kind, &[name], None),
            Some(None) => {
                let component = &name[COMPONENT_TOKEN.len()..];
                self.key("component", &[component], Some(kind))
            }
            Some(Some((component, authorizer))) => self.key(
                "component",
                &[component],
                Some(&format!("authorizer_{kind}:{authorizer}")),
            ),
        }
    }

    /// A component's newest ticket.
    pub fn component_ticket(&self, component: &str) -> String {
        self.key("component", &[component], Some("ticket"))
    }

    /// What a component knows of one authorizer.
    pub fn component_authorizer(&self, component: &str, authorizer: &str) -> String {
        self.key(
            "component",
            &[component],
            Some(&format!("authorizer:{authorizer}")),
        )
    }
}

/// The hash tag of a key: what its slot is computed from.
pub(crate) fn tag(key: &str) -> &str {
    key.find('{')
        .and_then(|open| {
            let close = key[open + 1..].find('}')?;
            Some(&key[open + 1..open + 1 + close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_keys_share_one_tag() {
        let keys = Keys::new("wx");
        let id = "gh_a:o1:1700000000:event.subscribe:h0123";
        assert_eq!(keys.dedup(id), format!("wx:dedup:{{gh_a:o1}}:{id}"));
        assert_eq!(keys.user("gh_a", "o1"), "wx:user:{gh_a:o1}");
        for key in [
            keys.dedup(id),
            keys.welcome(id),
            keys.user("gh_a", "o1"),
            keys.binding("gh_a", "o1"),
            keys.location("gh_a", "o1"),
            keys.location_history("gh_a", "o1"),
        ] {
            assert_eq!(tag(&key), "gh_a:o1", "{key}");
        }
        assert_eq!(tag(&keys.geo("gh_a")), tag(&keys.geo_at("gh_a")));
        assert_eq!(tag(&keys.nonce("gh_a", "17", "n")), "gh_a:17:n");
        assert_eq!(
            keys.dedup("e1"),
            "wx:dedup:{e1}:e1",
            "an id of another shape"
        );
    }
}

#[cfg(test)]
mod token_tests {
    use super::*;
    use crate::component::{authorizer_token, component_token};

    #[test]
    fn tokens_are_kept_apart_by_whose_they_are() {
        let keys = Keys::new("wx");
        assert_eq!(keys.token("wxa"), "wx:token:{wxa}");
        assert_eq!(keys.token_lock("wxa"), "wx:token_lock:{wxa}");
        assert_eq!(
            keys.token(&component_token("wxc")),
            "wx:component:{wxc}:token"
        );
        assert_eq!(
            keys.token(&authorizer_token("wxc", "wxa")),
            "wx:component:{wxc}:authorizer_token:wxa",
            "never the account wxa's token"
        );
        assert_eq!(
            keys.token_lock(&authorizer_token("wxc", "wxa")),
            "wx:component:{wxc}:authorizer_token_lock:wxa"
        );
    }
}
