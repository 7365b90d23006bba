//! One suite for both engines of the workers' store: `memory://` and `redis://`.

mod common;

use std::time::Duration;

use store::effects::{Applied, EffectStores, LatestLocation, Location, Subscription, UserState};
use store::{Engine, Lease};
use testkit::{unique, RedisServer};

fn sub<'a>(
    openid: &'a str,
    subscribed: bool,
    created_at: i64,
    scene: Option<&'a str>,
) -> Subscription<'a> {
    Subscription {
        account: "gh_a",
        openid,
        subscribed,
        created_at,
        scene,
    }
}

fn loc<'a>(id: &'a str, created_at: i64, latitude: f64) -> Location<'a> {
    Location {
        id,
        account: "gh_a",
        openid: "o1",
        latitude,
        longitude: 113.3,
        precision: 30.0,
        created_at,
        history: 3,
    }
}

async fn apply(s: &EffectStores, change: Subscription<'_>) -> Applied {
    s.subscriptions.subscription(change).await.unwrap()
}

async fn binding(s: &EffectStores, openid: &str) -> Option<String> {
    s.subscriptions.binding("gh_a", openid).await.unwrap()
}

async fn bind(s: &EffectStores, openid: &str, user: &str) {
    s.subscriptions
        .set_binding("gh_a", openid, user)
        .await
        .unwrap()
}

/// The state of a user of gh_a the store has seen.
async fn user(s: &EffectStores, openid: &str) -> UserState {
    let user = s.subscriptions.user("gh_a", openid).await.unwrap();
    user.unwrap()
}

/// (subscribed, updated_at, scene) of a user of gh_a the store has seen.
async fn state_of(s: &EffectStores, openid: &str) -> (bool, i64, String) {
    let user = user(s, openid).await;
    (user.subscribed, user.updated_at, user.scene)
}

async fn subscribed(s: &EffectStores, openid: &str) -> bool {
    user(s, openid).await.subscribed
}

async fn locate(s: &EffectStores, location: Location<'_>) -> Applied {
    s.locations.location(location).await.unwrap()
}

const WELCOME_LEASE: Duration = Duration::from_millis(300);

async fn begin(s: &EffectStores, id: &str, owner: &str) -> Lease {
    s.welcome
        .begin_send(id, owner, WELCOME_LEASE)
        .await
        .unwrap()
}

async fn latest_of(s: &EffectStores, openid: &str) -> LatestLocation {
    let latest = s.locations.latest_location("gh_a", openid).await.unwrap();
    latest.unwrap()
}

async fn suite(s: &EffectStores) {
    s.engine.ping().await.unwrap();

    // Subscribe, then unsubscribe: binding deleted.
    bind(s, "u1", "user-42").await;
    assert_eq!(
        apply(s, sub("u1", true, 100, Some("poster"))).await,
        Applied::Yes
    );
    let state = user(s, "u1").await;
    assert!(state.subscribed);
    assert_eq!((state.updated_at, state.scene.as_str()), (100, "poster"));
    assert_eq!(binding(s, "u1").await.as_deref(), Some("user-42"));
    assert_eq!(apply(s, sub("u1", false, 200, None)).await, Applied::Yes);
    assert!(!subscribed(s, "u1").await);
    assert_eq!(binding(s, "u1").await, None);

    // The scene is the latest follow's, in whatever order follows and unfollows come: a
    // follow older than the unfollow changes nothing else, but its scene counts.
    apply(s, sub("s1", true, 100, Some("a"))).await;
    apply(s, sub("s1", false, 200, None)).await;
    assert_eq!(
        apply(s, sub("s1", true, 150, Some("late"))).await,
        Applied::Stale
    );
    assert_eq!(
        apply(s, sub("s1", true, 90, Some("old"))).await,
        Applied::Stale
    );
    assert_eq!(state_of(s, "s1").await, (false, 200, "late".to_owned()));

    // The unfollow comes first (the follow reaches the log late: a retry, the spool, a
    // redrive): the follow changes nothing else, but its scene is the user's, as in a rebuild
    // that applies every follow first. The newest follow's scene wins in either order.
    assert_eq!(apply(s, sub("s2", false, 200, None)).await, Applied::Yes);
    assert_eq!(
        apply(s, sub("s2", true, 100, Some("first"))).await,
        Applied::Stale
    );
    assert_eq!(state_of(s, "s2").await, (false, 200, "first".to_owned()));
    apply(s, sub("s2", true, 150, Some("newer"))).await;
    apply(s, sub("s2", true, 120, Some("older"))).await;
    assert_eq!(state_of(s, "s2").await, (false, 200, "newer".to_owned()));
    // Two follows of one second with different scenes resolve the same way in either order
    // (the greater scene), as the rebuild applies a topic's records in any order.
    for (openid, order) in [("s3", ["x", "y"]), ("s4", ["y", "x"])] {
        apply(s, sub(openid, false, 300, None)).await;
        for scene in order {
            apply(s, sub(openid, true, 250, Some(scene))).await;
        }
        let state = user(s, openid).await;
        assert_eq!(state.scene, "y", "{openid}");
    }
    for (openid, order) in [("s5", ["x", "y"]), ("s6", ["y", "x"])] {
        for scene in order {
            apply(s, sub(openid, true, 250, Some(scene))).await;
        }
        let state = user(s, openid).await;
        assert_eq!(
            (state.subscribed, state.scene.as_str()),
            (true, "y"),
            "{openid}"
        );
    }

    // A late, older unsubscribe never undoes a newer subscribe, nor deletes the new binding.
    assert_eq!(apply(s, sub("u2", true, 300, None)).await, Applied::Yes);
    bind(s, "u2", "user-7").await;
    assert_eq!(apply(s, sub("u2", false, 250, None)).await, Applied::Stale);
    assert!(subscribed(s, "u2").await);
    assert_eq!(binding(s, "u2").await.as_deref(), Some("user-7"));
    // Redelivery of the applied subscribe changes nothing: it is stale.
    assert_eq!(apply(s, sub("u2", true, 300, None)).await, Applied::Stale);
    assert_eq!(user(s, "u2").await.updated_at, 300);

    // Same second: unsubscribed wins, in either order.
    apply(s, sub("u3", true, 400, None)).await;
    apply(s, sub("u3", false, 400, None)).await;
    assert!(!subscribed(s, "u3").await);
    apply(s, sub("u4", false, 400, None)).await;
    assert_eq!(apply(s, sub("u4", true, 400, None)).await, Applied::Stale);
    assert!(!subscribed(s, "u4").await);
    assert_eq!(s.subscriptions.user("gh_a", "nobody").await.unwrap(), None);

    // A redelivered unsubscribe (the same second as the state it made) deletes nothing: the
    // binding set since stays.
    apply(s, sub("u5", false, 500, None)).await;
    bind(s, "u5", "user-9").await;
    assert_eq!(apply(s, sub("u5", false, 500, None)).await, Applied::Stale);
    assert_eq!(binding(s, "u5").await.as_deref(), Some("user-9"));

    // Locations: newest wins; history is idempotent and capped.
    assert_eq!(locate(s, loc("e1", 10, 23.1)).await, Applied::Yes);
    assert_eq!(locate(s, loc("e3", 30, 23.3)).await, Applied::Yes);
    assert_eq!(locate(s, loc("e2", 20, 23.2)).await, Applied::Stale);
    assert_eq!(
        locate(s, loc("e3", 30, 23.3)).await,
        Applied::Yes,
        "redelivery"
    );
    let latest = latest_of(s, "o1").await;
    assert_eq!((latest.latitude, latest.created_at), (23.3, 30));
    assert_eq!(
        s.locations
            .location_history("gh_a", "o1")
            .await
            .unwrap()
            .len(),
        3
    );
    // Another location in the same second, then a redelivery of the first: the redelivery
    // changes nothing.
    let of_o2 = |id, latitude| Location {
        openid: "o2",
        ..loc(id, 30, latitude)
    };
    locate(s, of_o2("f1", 23.3)).await;
    locate(s, of_o2("f2", 23.5)).await;
    locate(s, of_o2("f1", 23.3)).await;
    let latest = latest_of(s, "o2").await;
    assert_eq!(latest.latitude, 23.5, "a redelivery changes nothing");
    // Two locations of one second resolve the same way in whatever order they come.
    for (openid, order) in [("o3", ["t1", "t2"]), ("o4", ["t2", "t1"])] {
        for id in order {
            let latitude = if id == "t1" { 10.0 } else { 20.0 };
            locate(
                s,
                Location {
                    openid,
                    ..loc(id, 50, latitude)
                },
            )
            .await;
        }
        assert_eq!(latest_of(s, openid).await.latitude, 20.0, "{openid}");
    }
    locate(s, loc("e4", 40, 89.9)).await;
    let history = s.locations.location_history("gh_a", "o1").await.unwrap();
    assert_eq!(history.len(), 3, "capped");
    assert!(
        history[0].contains("\"e2\"") && history[2].contains("\"e4\""),
        "{history:?}"
    );
    assert_eq!(
        latest_of(s, "o1").await.latitude,
        89.9,
        "exact, beyond GEO's range"
    );

    // Welcome claims.
    let lease = WELCOME_LEASE;
    assert_eq!(begin(s, "id1", "w1").await, Lease::Claimed);
    assert_eq!(begin(s, "id1", "w2").await, Lease::Held);
    s.welcome.abandon_send("id1", "w2").await.unwrap();
    assert_eq!(
        begin(s, "id1", "w2").await,
        Lease::Held,
        "not w2's to abandon"
    );
    s.welcome.abandon_send("id1", "w1").await.unwrap();
    assert_eq!(begin(s, "id1", "w2").await, Lease::Claimed);
    // A long send keeps its claim by renewing it; only its holder can.
    assert!(s.welcome.renew_send("id1", "w2", lease).await.unwrap());
    assert!(
        !s.welcome.renew_send("id1", "w1", lease).await.unwrap(),
        "not w1's"
    );
    tokio::time::sleep(lease / 2).await;
    assert!(s.welcome.renew_send("id1", "w2", lease).await.unwrap());
    tokio::time::sleep(lease / 2 + Duration::from_millis(50)).await;
    assert_eq!(
        begin(s, "id1", "w3").await,
        Lease::Held,
        "renewed past its first lease"
    );
    s.welcome
        .finish_send("id1", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(begin(s, "id1", "w3").await, Lease::Done);
    assert_eq!(begin(s, "id2", "dead").await, Lease::Claimed);
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    assert_eq!(
        begin(s, "id2", "alive").await,
        Lease::Claimed,
        "a dead sender's lease runs out"
    );

    // Tokens and the fetch lock.
    assert_eq!(s.tokens.token("wx1").await.unwrap(), None);
    assert!(s.tokens.lock_token("wx1", "p1", lease).await.unwrap());
    assert!(!s.tokens.lock_token("wx1", "p2", lease).await.unwrap());
    s.tokens.unlock_token("wx1", "p2").await.unwrap();
    assert!(
        !s.tokens.lock_token("wx1", "p2", lease).await.unwrap(),
        "only the holder unlocks"
    );
    s.tokens.unlock_token("wx1", "p1").await.unwrap();
    assert!(s.tokens.lock_token("wx1", "p2", lease).await.unwrap());
    s.tokens
        .set_token("wx1", "T1", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(s.tokens.token("wx1").await.unwrap().as_deref(), Some("T1"));
    s.tokens.drop_token("wx1", "T0").await.unwrap();
    assert_eq!(
        s.tokens.token("wx1").await.unwrap().as_deref(),
        Some("T1"),
        "someone else's refresh is kept"
    );
    s.tokens.drop_token("wx1", "T1").await.unwrap();
    assert_eq!(s.tokens.token("wx1").await.unwrap(), None);
    s.tokens
        .set_token("wx1", "T2", Duration::from_millis(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.tokens.token("wx1").await.unwrap(),
        None,
        "a cached token expires"
    );
}

#[tokio::test]
async fn memory_engine() {
    let engine = Engine::open("memory://", Duration::from_secs(1)).unwrap();
    suite(&EffectStores::open(&engine, "k")).await;
}

#[tokio::test]
async fn redis_engine() {
    let redis = RedisServer::start();
    let prefix = unique("k");
    let engine = Engine::open(&redis.url(), Duration::from_secs(1)).unwrap();
    suite(&EffectStores::open(&engine, &prefix)).await;
    // The contract's keys.
    let mut conn = redis.conn();
    let user: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{prefix}:user:{{gh_a:u1}}"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(user["subscribed"], "0");
    assert_eq!(user["updated_at"], "200");
    let location: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{prefix}:location:{{gh_a:o1}}"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(location["created_at"], "40");
    let pos: Vec<Option<(f64, f64)>> = redis::cmd("GEOPOS")
        .arg(format!("{prefix}:geo:{{gh_a}}"))
        .arg("o1")
        .query(&mut conn)
        .unwrap();
    let ties: Vec<Option<(f64, f64)>> = redis::cmd("GEOPOS")
        .arg(format!("{prefix}:geo:{{gh_a}}"))
        .arg(&["o3", "o4"][..])
        .query(&mut conn)
        .unwrap();
    for tie in ties {
        let (_, lat) = tie.unwrap();
        assert!(
            (lat - 20.0).abs() < 1e-4,
            "the GEO set agrees with the hash: {lat}"
        );
    }
    let (lon, lat) = pos[0].unwrap();
    assert!(
        (lon - 113.3).abs() < 1e-4 && (lat - 85.0511).abs() < 1e-3,
        "GEO holds the clamped latitude: {lat}"
    );
}

/// Behind a `redis://` URL that refuses scripts spanning slots (a proxy sharding by slot), a
/// location's one call is refused once and its steps go as two calls: the whole suite holds.
#[tokio::test]
async fn slot_checking_server_behind_a_single_url() {
    let redis = testkit::SlotCheckingRedis::start();
    let engine = Engine::open(&redis.url(), Duration::from_secs(1)).unwrap();
    suite(&EffectStores::open(&engine, &unique("k"))).await;
}

/// The suite on stores the start-up check passed on.
async fn checked_suite(url: &str) {
    let engine = Engine::open(url, Duration::from_secs(1)).unwrap();
    let stores = EffectStores::open(&engine, &unique("k"));
    engine.check_at_start(|| stores.round_trip()).await.unwrap();
    suite(&stores).await;
}

on_every_deployment!(checked_suite);
