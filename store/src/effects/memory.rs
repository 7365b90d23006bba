//! The effect stores in one process's memory, for the embedded default and tests. Not
//! shared between processes; gone when the process exits.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use super::store::{
    history_member, Applied, LatestLocation, Location, Locations, Subscription, Subscriptions,
    TokenCache, UserState, WelcomeSends,
};
use crate::fut::Fut;
use crate::lease::WELCOME;
use crate::memory::TtlMap;
use crate::{Keys, Lease};

type UserKey = (String, String);

#[derive(Debug, Default)]
struct State {
    users: HashMap<UserKey, UserState>,
    /// The `created_at` of the follow whose scene a user's state holds (see the Redis
    /// engine's subscription script).
    scene_at: HashMap<UserKey, i64>,
    bindings: HashMap<UserKey, String>,
    /// The latest location of each user, with its event id (ties of one second go to the
    /// greater id, as on Redis).
    locations: HashMap<UserKey, (LatestLocation, String)>,
    history: HashMap<UserKey, BTreeSet<(i64, String)>>,
    /// Values with an expiry: welcome claims, tokens, token locks.
    leased: TtlMap,
}

#[derive(Debug)]
pub(super) struct MemoryEffects {
    keys: Keys,
    state: Mutex<State>,
}

impl MemoryEffects {
    pub fn new(keys: Keys) -> Self {
        MemoryEffects {
            keys,
            state: Mutex::default(),
        }
    }

    fn with<T: Send + 'static>(&self, f: impl FnOnce(&mut State) -> T) -> Fut<'_, T> {
        let result = f(&mut self.state.lock().expect("memory store lock"));
        Box::pin(async move { Ok(result) })
    }
}

fn key(account: &str, openid: &str) -> UserKey {
    (account.to_owned(), openid.to_owned())
}

impl Subscriptions for MemoryEffects {
    fn subscription<'a>(&'a self, c: Subscription<'a>) -> Fut<'a, Applied> {
        self.with(|s| {
            let k = key(c.account, c.openid);
            if let Some(current) = s.users.get(&k) {
                // At the same second an unsubscribe wins over a subscribe; anything else
                // (a redelivery above all) changes nothing.
                let unsubscribes_a_subscribed_user = current.subscribed && !c.subscribed;
                let loses_tie =
                    c.created_at == current.updated_at && !unsubscribes_a_subscribed_user;
                if c.created_at < current.updated_at || loses_tie {
                    // No follow set the scene yet (the unfollow came first), or this one
                    // is newer; of one second, the greater scene.
                    let scene = c.scene.unwrap_or_default();
                    let newer_scene = match s.scene_at.get(&k) {
                        None => true,
                        Some(&at) => (c.created_at, scene) > (at, current.scene.as_str()),
                    };
                    if c.subscribed && newer_scene {
                        let scene = scene.to_owned();
                        s.users.get_mut(&k).expect("present").scene = scene;
                        s.scene_at.insert(k, c.created_at);
                    }
                    return Applied::Stale;
                }
            }
            let scene = match (c.subscribed, s.users.get(&k)) {
                (true, _) => c.scene.unwrap_or_default().to_owned(),
                (false, Some(current)) => current.scene.clone(),
                (false, None) => String::new(),
            };
            if c.subscribed {
                s.scene_at.insert(k.clone(), c.created_at);
            } else {
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

    fn user<'a>(&'a self, account: &'a str, openid: &'a str) -> Fut<'a, Option<UserState>> {
        self.with(|s| s.users.get(&key(account, openid)).cloned())
    }

    fn binding<'a>(&'a self, account: &'a str, openid: &'a str) -> Fut<'a, Option<String>> {
        self.with(|s| s.bindings.get(&key(account, openid)).cloned())
    }

    fn set_binding<'a>(&'a self, account: &'a str, openid: &'a str, user: &'a str) -> Fut<'a, ()> {
        self.with(|s| {
            s.bindings.insert(key(account, openid), user.to_owned());
        })
    }
}

impl Locations for MemoryEffects {
    fn location<'a>(&'a self, l: Location<'a>) -> Fut<'a, Applied> {
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
            if s.locations.get(&k).is_some_and(|(current, id)| {
                (l.created_at, l.id) < (current.created_at, id.as_str())
            }) {
                return Applied::Stale;
            }
            let latest = LatestLocation {
                latitude: l.latitude,
                longitude: l.longitude,
                precision: l.precision,
                created_at: l.created_at,
            };
            s.locations.insert(k, (latest, l.id.to_owned()));
            Applied::Yes
        })
    }

    fn latest_location<'a>(
        &'a self,
        account: &'a str,
        openid: &'a str,
    ) -> Fut<'a, Option<LatestLocation>> {
        self.with(|s| {
            s.locations
                .get(&key(account, openid))
                .map(|(latest, _)| *latest)
        })
    }

    fn location_history<'a>(&'a self, account: &'a str, openid: &'a str) -> Fut<'a, Vec<String>> {
        self.with(|s| {
            s.history
                .get(&key(account, openid))
                .map(|h| h.iter().map(|(_, member)| member.clone()).collect())
                .unwrap_or_default()
        })
    }
}

impl WelcomeSends for MemoryEffects {
    fn begin_send<'a>(&'a self, id: &'a str, owner: &'a str, lease: Duration) -> Fut<'a, Lease> {
        let key = self.keys.welcome(id);
        self.with(|s| {
            s.leased
                .claim(key, WELCOME.holder(owner), lease, WELCOME.done)
        })
    }

    fn finish_send<'a>(&'a self, id: &'a str, ttl: Duration) -> Fut<'a, ()> {
        let key = self.keys.welcome(id);
        self.with(|s| s.leased.set(key, WELCOME.done.to_owned(), ttl))
    }

    fn renew_send<'a>(&'a self, id: &'a str, owner: &'a str, lease: Duration) -> Fut<'a, bool> {
        let key = self.keys.welcome(id);
        self.with(|s| s.leased.renew(key, WELCOME.holder(owner), lease))
    }

    fn abandon_send<'a>(&'a self, id: &'a str, owner: &'a str) -> Fut<'a, ()> {
        let key = self.keys.welcome(id);
        self.with(|s| s.leased.delete_if(&key, &WELCOME.holder(owner)))
    }
}

impl TokenCache for MemoryEffects {
    fn token<'a>(&'a self, appid: &'a str) -> Fut<'a, Option<String>> {
        let key = self.keys.token(appid);
        self.with(|s| s.leased.get(&key).map(str::to_owned))
    }

    fn set_token<'a>(&'a self, appid: &'a str, token: &'a str, ttl: Duration) -> Fut<'a, ()> {
        let key = self.keys.token(appid);
        self.with(|s| s.leased.set(key, token.to_owned(), ttl))
    }

    fn drop_token<'a>(&'a self, appid: &'a str, token: &'a str) -> Fut<'a, ()> {
        let key = self.keys.token(appid);
        self.with(|s| s.leased.delete_if(&key, token))
    }

    fn lock_token<'a>(&'a self, appid: &'a str, owner: &'a str, ttl: Duration) -> Fut<'a, bool> {
        let key = self.keys.token_lock(appid);
        self.with(|s| s.leased.claim(key, owner.to_owned(), ttl, "") == Lease::Claimed)
    }

    fn unlock_token<'a>(&'a self, appid: &'a str, owner: &'a str) -> Fut<'a, ()> {
        let key = self.keys.token_lock(appid);
        self.with(|s| s.leased.delete_if(&key, owner))
    }
}
