//! The `memory://` engine: the same semantics in one process's memory, for the embedded
//! default and tests. Not shared between processes; gone when the process exits.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{
    history_member, Applied, BoxFuture, EffectStore, LatestLocation, Location, SendClaim,
    StoreError, Subscription, UserState,
};

type UserKey = (String, String);

#[derive(Debug, Default)]
struct State {
    users: HashMap<UserKey, UserState>,
    bindings: HashMap<UserKey, String>,
    locations: HashMap<UserKey, LatestLocation>,
    history: HashMap<UserKey, BTreeSet<(i64, String)>>,
    /// Values with an expiry: welcome claims, tokens, token locks.
    leased: HashMap<String, (String, Instant)>,
}

impl State {
    fn leased(&self, key: &str) -> Option<&str> {
        self.leased
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(v, _)| v.as_str())
    }

    fn lease(&mut self, key: String, value: String, ttl: Duration) {
        let now = Instant::now();
        if self.leased.len() > 4096 && self.leased.len().is_power_of_two() {
            self.leased.retain(|_, (_, expires)| *expires > now);
        }
        self.leased.insert(key, (value, now + ttl));
    }

    fn delete_if(&mut self, key: &str, value: &str) {
        if self.leased(key) == Some(value) {
            self.leased.remove(key);
        }
    }
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> T,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let result = f(&mut self.state.lock().expect("memory store lock"));
        Box::pin(async move { Ok(result) })
    }
}

fn key(account: &str, openid: &str) -> UserKey {
    (account.to_owned(), openid.to_owned())
}

impl EffectStore for MemoryStore {
    fn subscription<'a>(
        &'a self,
        c: Subscription<'a>,
    ) -> BoxFuture<'a, Result<Applied, StoreError>> {
        self.with(|s| {
            let k = key(c.account, c.openid);
            if let Some(current) = s.users.get(&k) {
                // At the same second an unsubscribe wins over a subscribe; anything else
                // (a redelivery above all) changes nothing.
                let unsubscribes_a_subscribed_user = current.subscribed && !c.subscribed;
                let loses_tie =
                    c.created_at == current.updated_at && !unsubscribes_a_subscribed_user;
                if c.created_at < current.updated_at || loses_tie {
                    return Applied::Stale;
                }
            }
            let scene = match (c.subscribed, s.users.get(&k)) {
                (true, _) => c.scene.unwrap_or_default().to_owned(),
                (false, Some(current)) => current.scene.clone(),
                (false, None) => String::new(),
            };
            if !c.subscribed {
                s.bindings.remove(&k);
            }
            s.users.insert(
                k,
                UserState {
                    subscribed: c.subscribed,
                    updated_at: c.created_at,
                    scene,
                },
            );
            Applied::Yes
        })
    }

    fn location<'a>(&'a self, l: Location<'a>) -> BoxFuture<'a, Result<Applied, StoreError>> {
        self.with(|s| {
            let k = key(l.account, l.openid);
            let history = s.history.entry(k.clone()).or_default();
            // Already in the history: a redelivery, which changes nothing (its effect is in
            // place).
            if !history.insert((l.created_at, history_member(&l))) {
                return Applied::Yes;
            }
            while history.len() > l.history.max(1) {
                history.pop_first();
            }
            if s.locations
                .get(&k)
                .is_some_and(|current| l.created_at < current.created_at)
            {
                return Applied::Stale;
            }
            let latest = LatestLocation {
                latitude: l.latitude,
                longitude: l.longitude,
                precision: l.precision,
                created_at: l.created_at,
            };
            s.locations.insert(k, latest);
            Applied::Yes
        })
    }

    fn begin_send<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<SendClaim, StoreError>> {
        self.with(|s| {
            let k = format!("welcome:{id}");
            match s.leased(&k) {
                None => {
                    s.lease(k, format!("sending:{owner}"), lease);
                    SendClaim::Claimed
                }
                Some("sent") => SendClaim::Sent,
                Some(_) => SendClaim::InFlight,
            }
        })
    }

    fn finish_send<'a>(
        &'a self,
        id: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|s| s.lease(format!("welcome:{id}"), "sent".into(), ttl))
    }

    fn renew_send<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.with(|s| {
            let (key, value) = (format!("welcome:{id}"), format!("sending:{owner}"));
            let ours = s.leased(&key) == Some(value.as_str());
            if ours {
                s.lease(key, value, lease);
            }
            ours
        })
    }

    fn abandon_send<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|s| s.delete_if(&format!("welcome:{id}"), &format!("sending:{owner}")))
    }

    fn token<'a>(&'a self, appid: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        self.with(|s| s.leased(&format!("token:{appid}")).map(str::to_owned))
    }

    fn set_token<'a>(
        &'a self,
        appid: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|s| s.lease(format!("token:{appid}"), token.to_owned(), ttl))
    }

    fn drop_token<'a>(
        &'a self,
        appid: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|s| s.delete_if(&format!("token:{appid}"), token))
    }

    fn lock_token<'a>(
        &'a self,
        appid: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.with(|s| {
            let k = format!("token_lock:{appid}");
            if s.leased(&k).is_some() {
                return false;
            }
            s.lease(k, owner.to_owned(), ttl);
            true
        })
    }

    fn unlock_token<'a>(
        &'a self,
        appid: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|s| s.delete_if(&format!("token_lock:{appid}"), owner))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(|_| ())
    }

    fn user<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserState>, StoreError>> {
        self.with(|s| s.users.get(&key(account, openid)).cloned())
    }

    fn binding<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        self.with(|s| s.bindings.get(&key(account, openid)).cloned())
    }

    fn set_binding<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|s| {
            s.bindings.insert(key(account, openid), user.to_owned());
        })
    }

    fn latest_location<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<Option<LatestLocation>, StoreError>> {
        self.with(|s| s.locations.get(&key(account, openid)).copied())
    }

    fn location_history<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.with(|s| {
            s.history
                .get(&key(account, openid))
                .map(|h| h.iter().map(|(_, member)| member.clone()).collect())
                .unwrap_or_default()
        })
    }
}
