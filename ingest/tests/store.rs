//! One suite for every dedup store engine: `memory://` and `redis://` (a real `redis-server`).

mod common;

use std::time::Duration;

use common::{unique, RedisServer};
use ingest::store::{self, Claim, ClaimRequest, DedupStore, NonceBinding};

const LEASE: Duration = Duration::from_millis(300);
const TTL: Duration = Duration::from_secs(60);

fn claim<'a>(id: &'a str, token: &'a str) -> ClaimRequest<'a> {
    ClaimRequest {
        id,
        token,
        lease: LEASE,
        nonce: None,
    }
}

fn with_nonce<'a>(
    id: &'a str,
    token: &'a str,
    nonce: &'a str,
    digest: &'a str,
) -> ClaimRequest<'a> {
    ClaimRequest {
        nonce: Some(NonceBinding {
            account: "gh_a",
            timestamp: "1700000000",
            nonce,
            body_digest: digest,
            ttl: TTL,
        }),
        ..claim(id, token)
    }
}

async fn suite(store: &dyn DedupStore) {
    store.ping().await.unwrap();

    // A first claim wins; a second attempt sees it in flight.
    assert_eq!(store.claim(claim("e1", "a")).await.unwrap(), Claim::Claimed);
    assert_eq!(
        store.claim(claim("e1", "b")).await.unwrap(),
        Claim::InFlight
    );
    // Confirmed: every later attempt is a duplicate.
    store.confirm("e1", TTL).await.unwrap();
    assert_eq!(store.claim(claim("e1", "c")).await.unwrap(), Claim::Done);
    // Releasing someone else's claim, or a done id, changes nothing.
    store.release("e1", "c").await.unwrap();
    assert_eq!(store.claim(claim("e1", "d")).await.unwrap(), Claim::Done);

    // A released claim can be taken again; a release by another token is ignored.
    assert_eq!(store.claim(claim("e2", "a")).await.unwrap(), Claim::Claimed);
    store.release("e2", "not-a").await.unwrap();
    assert_eq!(
        store.claim(claim("e2", "b")).await.unwrap(),
        Claim::InFlight
    );
    store.release("e2", "a").await.unwrap();
    assert_eq!(store.claim(claim("e2", "b")).await.unwrap(), Claim::Claimed);

    // A claim whose holder died runs out with its lease.
    assert_eq!(
        store.claim(claim("e3", "dead")).await.unwrap(),
        Claim::Claimed
    );
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    assert_eq!(
        store.claim(claim("e3", "alive")).await.unwrap(),
        Claim::Claimed
    );

    // A confirmed id expires with its TTL.
    assert_eq!(store.claim(claim("e4", "a")).await.unwrap(), Claim::Claimed);
    store
        .confirm("e4", Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.claim(claim("e4", "b")).await.unwrap(), Claim::Claimed);

    // A (timestamp, nonce) is bound to the first body's digest.
    assert_eq!(
        store
            .claim(with_nonce("e5", "a", "n1", "digest-1"))
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        store
            .claim(with_nonce("e5", "b", "n1", "digest-1"))
            .await
            .unwrap(),
        Claim::InFlight
    );
    assert_eq!(
        store
            .claim(with_nonce("e6", "a", "n1", "digest-2"))
            .await
            .unwrap(),
        Claim::Replayed
    );
    // ... and a replay claims nothing.
    assert_eq!(store.claim(claim("e6", "a")).await.unwrap(), Claim::Claimed);
    assert_eq!(
        store
            .claim(with_nonce("e7", "a", "n2", "digest-2"))
            .await
            .unwrap(),
        Claim::Claimed
    );
}

#[tokio::test]
async fn memory_engine() {
    let store = store::open("memory://", &unique("k"), Duration::from_millis(250))
        .await
        .unwrap();
    suite(store.as_ref()).await;
}

#[tokio::test]
async fn redis_engine() {
    let redis = RedisServer::start();
    let store = store::open(&redis.url(), &unique("k"), Duration::from_millis(250))
        .await
        .unwrap();
    suite(store.as_ref()).await;
}

#[tokio::test]
async fn redis_engine_keys_live_under_the_prefix() {
    let redis = RedisServer::start();
    let prefix = unique("k");
    let store = store::open(&redis.url(), &prefix, Duration::from_millis(250))
        .await
        .unwrap();
    store
        .claim(with_nonce("id-1", "a", "n1", "d"))
        .await
        .unwrap();
    let mut conn = redis.conn();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("{prefix}:dedup:id-1"),
            format!("{prefix}:nonce:gh_a:1700000000:n1")
        ]
    );
    let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query(&mut conn).unwrap();
    assert!(
        ttl > 0 && ttl <= LEASE.as_millis() as i64,
        "a pending claim has a lease: {ttl}"
    );
}

#[tokio::test]
async fn unknown_scheme_is_an_error() {
    let error = store::open("postgres://x", "k", Duration::from_millis(250))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("redis://"), "{error}");
}
