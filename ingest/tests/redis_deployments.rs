//! The ingress binary on the Redis that large deployments run: a Redis Cluster and a
//! Sentinel set. Retries give one record each, the nonce binding holds, and a master (or the
//! primary) killed with SIGKILL under a steady load loses no push that was answered 200;
//! afterwards claims work again on the new master.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use testkit::{RedisCluster, RedisSentinel};

fn push(from: &str, create_time: i64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_ha]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName>\
         <CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[subscribe]]></Event><EventKey><![CDATA[]]></EventKey></xml>"
    )
}

async fn ingest_on(redis_url: &str) -> TestApp {
    TestApp::spawn_binary(test_config(redis_url)).await
}

/// Retries of a push give one record; a (timestamp, nonce) seen with one body refuses another.
async fn retries_and_replays(app: &TestApp) {
    let query = TestApp::signed_query(TOKEN, &unique("n"));
    let xml = push("retried", now());
    for _ in 0..3 {
        assert_eq!(
            app.post_with_query(&query, &xml).await,
            (200, String::new())
        );
    }
    assert_eq!(
        app.post_push(&xml).await.0,
        200,
        "a retry with a fresh nonce"
    );
    let forged = push("forged", now());
    assert_eq!(app.post_with_query(&query, &forged).await.0, 403);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count("event.subscribe"), 1);
}

/// Pushes of distinct users, four at a time, until `stop` is set; the OpenIDs answered 200.
async fn steady_load(app: &TestApp, stop: &AtomicBool) -> HashSet<String> {
    let mut acked = HashSet::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let openids: Vec<String> = (0..4)
            .map(|_| {
                n += 1;
                format!("load-{n}")
            })
            .collect();
        let answers = futures_util::future::join_all(
            openids
                .iter()
                .map(|openid| async move { app.post_push(&push(openid, now())).await.0 }),
        )
        .await;
        for (openid, status) in openids.into_iter().zip(answers) {
            if status == 200 {
                acked.insert(openid);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acked
}

/// Runs a steady load, calls `kill` after two seconds, goes on for eight more; then every
/// push answered 200 is on Kafka.
async fn nothing_acknowledged_is_lost(app: &TestApp, kill: impl FnOnce()) {
    let stop = AtomicBool::new(false);
    let (acked, ()) = tokio::join!(steady_load(app, &stop), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        kill();
        tokio::time::sleep(Duration::from_secs(8)).await;
        stop.store(true, Ordering::Relaxed);
    });
    assert!(acked.len() > 100, "the load ran: {}", acked.len());
    let on_kafka: HashSet<String> = app
        .read("event.subscribe", app.count("event.subscribe") as usize)
        .into_iter()
        .map(|(_, event, _)| event.openid.into())
        .collect();
    let lost: Vec<&String> = acked.difference(&on_kafka).collect();
    assert!(
        lost.is_empty(),
        "{} answered 200 and not on Kafka: {lost:?}",
        lost.len()
    );
}

/// Claims work on the new master: a retry of a push made after the failover is not
/// published again (`within` for the topology to settle).
async fn claims_work_again(app: &TestApp, openid: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let suffix = "event.subscribe";
    for attempt in 0.. {
        // Another event of the same user (so the same slot) each time.
        let xml = push(openid, now() - attempt);
        let query = TestApp::signed_query(TOKEN, &unique("n"));
        let before = app.count(suffix);
        assert_eq!(app.post_with_query(&query, &xml).await.0, 200);
        assert_eq!(app.post_with_query(&query, &xml).await.0, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if app.count(suffix) - before == 1 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a retry after the failover was published again"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster() {
    let mut cluster = RedisCluster::start();
    let app = ingest_on(&cluster.url()).await;
    retries_and_replays(&app).await;
    let victim = cluster.master_of("{gh_ha:after}").port;
    nothing_acknowledged_is_lost(&app, || cluster.master_of("{gh_ha:after}").kill()).await;
    assert!(testkit::eventually(Duration::from_secs(15), || cluster.healthy()).await);
    assert_ne!(
        cluster.master_of("{gh_ha:after}").port,
        victim,
        "a replica took over"
    );
    claims_work_again(&app, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_sentinel_set() {
    let mut sentinel = RedisSentinel::start();
    let app = ingest_on(&sentinel.url()).await;
    retries_and_replays(&app).await;
    let old = sentinel.primary.port;
    nothing_acknowledged_is_lost(&app, || sentinel.primary.kill()).await;
    assert!(
        testkit::eventually(Duration::from_secs(15), || sentinel
            .primary_port()
            .is_some_and(|port| port != old))
        .await,
        "the sentinels promoted the replica"
    );
    claims_work_again(&app, "after").await;
}
