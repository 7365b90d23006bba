//! The worker binary on the Redis that large deployments run: a Redis Cluster and a Sentinel
//! set. Its effects land with the contract's keys, and resume on the new master after the one
//! holding a user's keys is killed with SIGKILL.

mod common;

use std::time::Duration;

use common::*;
use store::effects::EffectStores;
use store::Engine;
use testkit::{RedisCluster, RedisSentinel};

/// Follows, unfollows and locations of `users` (numbered from `first`) at `t`.
fn produce_effects(env: &Env, first: usize, users: usize, t: i64) {
    let ids = |n: usize| format!("u{n}");
    let subscribes: Vec<_> = (first..first + users)
        .map(|n| subscribe("gh_a", &ids(n), t, Some("poster")))
        .collect();
    let unsubscribes: Vec<_> = (first..first + users)
        .filter(|n| n % 2 == 0)
        .map(|n| unsubscribe("gh_a", &ids(n), t + 1))
        .collect();
    let locations: Vec<_> = (first..first + users)
        .map(|n| location("gh_a", &ids(n), t, 22.5, 113.9))
        .collect();
    env.produce("subscribe", &subscribes);
    env.produce("unsubscribe", &unsubscribes);
    env.produce("location", &locations);
}

/// Whether every effect of those users is in the store.
async fn landed(stores: &EffectStores, first: usize, users: usize) -> bool {
    for n in first..first + users {
        let openid = format!("u{n}");
        let user = stores.subscriptions.user("gh_a", &openid).await;
        let location = stores.locations.latest_location("gh_a", &openid).await;
        match (user, location) {
            (Ok(Some(user)), Ok(Some(_))) if user.subscribed == (n % 2 == 1) => {}
            _ => return false,
        }
    }
    true
}

async fn wait_landed(stores: &EffectStores, first: usize, users: usize, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if landed(stores, first, users).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Effects land on `url`; `kill` takes a master down; later effects land too.
async fn effects_survive_a_failover(url: &str, kill: impl FnOnce()) {
    let env = Env::start().await;
    let worker = env.spawn_logged(&["--redis-url", url, "--role", "unbind,location"]);
    let engine = Engine::open(url, Duration::from_secs(1)).unwrap();
    let stores = EffectStores::open(&engine, &env.key_prefix);
    let t = 1_700_000_000;
    produce_effects(&env, 0, 40, t);
    assert!(
        wait_landed(&stores, 0, 40, Duration::from_secs(30)).await,
        "effects landed; the worker's log ends:\n{}",
        worker.tail(40)
    );

    kill();
    produce_effects(&env, 40, 40, t);
    // Read through a client of its own: the worker's recovery is under test, not this one's.
    let engine = Engine::open(url, Duration::from_secs(1)).unwrap();
    let stores = EffectStores::open(&engine, &env.key_prefix);
    let resumed = wait_landed(&stores, 40, 40, Duration::from_secs(60)).await;
    let first = stores.subscriptions.user("gh_a", "u40").await;
    assert!(
        resumed,
        "effects resumed after the failover (u40: {first:?}); the worker's log ends:\n{}",
        worker.tail(40)
    );
    assert!(landed(&stores, 0, 40).await, "nothing earlier was undone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster() {
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    effects_survive_a_failover(&url, || cluster.master_of("{gh_a:u41}").kill()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_sentinel_set() {
    let mut sentinel = RedisSentinel::start();
    let url = sentinel.url();
    effects_survive_a_failover(&url, || sentinel.primary.kill()).await;
}
