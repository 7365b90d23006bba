//! The ingress end to end: real HTTP on port 0, a real `redis-server`, Kafka over the wire.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use redis::Commands;
use schemas::Kind;
use serde_json::json;

/// How long after its records are read a topic must still hold only those.
const SETTLE: Duration = Duration::from_millis(300);

fn seed(fields: &str, from: &str, create_time: i64) -> String {
    format!(
        "<xml> <ToUserName><![CDATA[gh_test]]></ToUserName> <FromUserName><![CDATA[{from}]]></FromUserName> \
         <CreateTime>{create_time}</CreateTime> <MsgType><![CDATA[event]]></MsgType> {fields} </xml>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_verification() {
    let app = TestApp::spawn("memory://").await;
    let query = TestApp::signed_query(TOKEN, "n1");
    let (status, body) = app
        .get(&format!("/wechat?{query}&echostr=hello%20wx"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, "hello wx");

    let bad = TestApp::signed_query("other-token", "n1");
    let (status, _) = app.get(&format!("/wechat?{bad}&echostr=x")).await;
    assert_eq!(status, 403);

    let (status, _) = app.get(&format!("/wechat?{query}")).await;
    assert_eq!(status, 400, "missing echostr");
    let (status, _) = app.get("/wechat?echostr=x").await;
    assert_eq!(status, 400, "missing signature");

    let put = reqwest::Method::PUT;
    let (status, _) = app.request(put, &format!("/wechat?{query}")).await;
    assert_eq!(status, 405);
    let (status, _) = app.get("/elsewhere").await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seed_push_lands_once_on_its_topic_with_a_valid_record() {
    let (redis, app) = on_redis().await;
    let t = now();
    let cases = [
        ("event.subscribe", seed("<Event><![CDATA[subscribe]]></Event>", "u_plain", t)),
        (
            "event.subscribe",
            seed("<Event><![CDATA[subscribe]]></Event> <EventKey><![CDATA[qrscene_123123]]></EventKey> <Ticket><![CDATA[TICKET]]></Ticket>", "u_qr", t),
        ),
        ("event.unsubscribe", seed("<Event><![CDATA[unsubscribe]]></Event>", "u_gone", t)),
        ("event.scan", seed("<Event><![CDATA[SCAN]]></Event> <EventKey><![CDATA[SCENE_VALUE]]></EventKey> <Ticket><![CDATA[TICKET]]></Ticket>", "u_scan", t)),
        (
            "event.location",
            seed("<Event><![CDATA[LOCATION]]></Event> <Latitude>23.137466</Latitude> <Longitude>113.352425</Longitude> <Precision>119.385040</Precision>", "u_loc", t),
        ),
        ("event.click", seed("<Event><![CDATA[CLICK]]></Event> <EventKey><![CDATA[EVENTKEY]]></EventKey>", "u_click", t)),
        ("event.view", seed("<Event><![CDATA[VIEW]]></Event> <EventKey><![CDATA[www.qq.com]]></EventKey>", "u_view", t)),
    ];
    for (_, xml) in &cases {
        let (status, body) = app.post_push(xml).await;
        assert_eq!((status, body.as_str()), (200, ""), "{xml}");
    }
    let subscribes = app.read("event.subscribe", 2);
    assert_eq!(subscribes.len(), 2);
    assert_eq!(app.count("event.subscribe"), 2);
    for (key, event, value) in &subscribes {
        assert_eq!(key, &event.openid, "record key is the OpenID");
        assert_schema_valid(event.topic(), value);
        assert_eq!(event.account, "gh_test");
        assert_eq!(event.created_at, t);
        let expected = match event.openid.as_str() {
            "u_plain" => json!({"scene": null, "ticket": null}),
            "u_qr" => json!({"scene": "123123", "ticket": "TICKET"}),
            other => panic!("unexpected {other}"),
        };
        assert_eq!(serde_json::Value::Object(event.fields.clone()), expected);
    }
    for (suffix, _) in &cases[2..] {
        let records = app.read(suffix, 1);
        assert_eq!(records.len(), 1, "{suffix}");
        assert_eq!(app.count(suffix), 1, "{suffix}");
        let (key, event, value) = &records[0];
        assert_eq!(key, &event.openid);
        assert_eq!(event.kind, Kind::Event);
        assert_schema_valid(event.topic(), value);
        assert_eq!(&event.topic().suffix(), suffix);
    }
    let location = &app.read("event.location", 1)[0].1;
    assert_eq!(
        serde_json::Value::Object(location.fields.clone()),
        json!({"latitude": 23.137466, "longitude": 113.352425, "precision": 119.38504})
    );
    assert_eq!(
        app.read("event.click", 1)[0].1.text("key"),
        Some("EVENTKEY")
    );
    assert_eq!(
        app.read("event.view", 1)[0].1.text("url"),
        Some("www.qq.com")
    );
    // Each id is claimed as done in Redis under the key prefix.
    let mut conn = redis.conn();
    let id = &app.read("event.view", 1)[0].1.id;
    let state: Option<String> = conn
        .get(dedup_key(&app.config.shared.key_prefix, id))
        .unwrap();
    assert_eq!(state.as_deref(), Some("done"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_retries_publish_once() {
    let (_redis, app) = on_redis().await;
    let xml = seed("<Event><![CDATA[subscribe]]></Event>", "u_retry", now());
    // WeChat's retries repeat the same query (timestamp, nonce, signature) and body.
    let query = TestApp::signed_query(TOKEN, "retry-nonce");
    for _ in 0..4 {
        assert_eq!(
            app.post_with_query(&query, &xml).await,
            (200, String::new())
        );
    }
    // A retry that arrives with a fresh nonce is the same event, too.
    assert_eq!(app.post_push(&xml).await.0, 200);
    app.read_exactly("event.subscribe", 1, SETTLE, "once each")
        .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_events_in_one_second_are_all_published() {
    let (_redis, app) = on_redis().await;
    let t = now();
    let location = seed("<Event>LOCATION</Event><Latitude>1</Latitude><Longitude>2</Longitude><Precision>3</Precision>", "u_same", t);
    let click_a = seed("<Event>CLICK</Event><EventKey>A</EventKey>", "u_same", t);
    let click_b = seed("<Event>CLICK</Event><EventKey>B</EventKey>", "u_same", t);
    let view = seed(
        "<Event>VIEW</Event><EventKey>https://example.com/</EventKey>",
        "u_same",
        t,
    );
    for xml in [&location, &click_a, &click_b, &view] {
        assert_eq!(app.post_push(xml).await.0, 200);
    }
    assert_eq!(app.read("event.location", 1).len(), 1);
    let clicks = app.read("event.click", 2);
    assert_eq!(clicks.len(), 2);
    assert_ne!(clicks[0].1.id, clicks[1].1.id);
    assert_eq!(app.read("event.view", 1).len(), 1);
    assert_eq!(app.count_all(), 4);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_nothing_is_published() {
    let (_redis, app) = on_redis_with(|config| config.max_body_bytes = 4096).await;
    let good = seed("<Event>subscribe</Event>", "u_bad", now());
    let cases: Vec<(u16, String, String)> = vec![
        (
            400,
            TestApp::signed_query(TOKEN, "b1"),
            "not xml at all".into(),
        ),
        (
            400,
            TestApp::signed_query(TOKEN, "b2"),
            "<!DOCTYPE xml [<!ENTITY x \"y\">]>".to_owned() + &good,
        ),
        (
            400,
            TestApp::signed_query(TOKEN, "b3"),
            good.replace("subscribe", "&x;"),
        ),
        (
            400,
            TestApp::signed_query(TOKEN, "b4"),
            good.replace("<CreateTime>", "<CreateTime>soon"),
        ),
        (
            400,
            TestApp::signed_query(TOKEN, "b5"),
            good.replace("<![CDATA[u_bad]]>", ""),
        ),
        (
            400,
            TestApp::signed_query(TOKEN, "b6"),
            format!("{good}<xml/>"),
        ),
        (
            403,
            TestApp::signed_query("wrong-token", "b7"),
            good.clone(),
        ),
        (
            403,
            TestApp::signed_query_at(TOKEN, &(now() - 301).to_string(), "b8"),
            good.clone(),
        ),
        (
            403,
            TestApp::signed_query_at(TOKEN, &(now() + 301).to_string(), "b9"),
            good.clone(),
        ),
        (
            403,
            TestApp::signed_query(TOKEN, "b10").replace("signature=", "signature=00"),
            good.clone(),
        ),
        (400, "timestamp=1&nonce=2".into(), good.clone()),
        (
            413,
            TestApp::signed_query(TOKEN, "b11"),
            format!("{good}<!--{}-->", "x".repeat(5000)),
        ),
    ];
    for (status, query, body) in cases {
        let (got, reason) = app.post_with_query(&query, &body).await;
        assert_eq!(got, status, "{query} {body:.80}: {reason}");
        assert!(!reason.trim().is_empty(), "a 4xx says why");
    }
    // The server still serves after all of that.
    assert_eq!(app.post_push(&good).await.0, 200);
    assert_eq!(app.read("event.subscribe", 1).len(), 1);
    assert_eq!(app.count_all(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_replayed_with_another_body_is_refused() {
    let (_redis, app) = on_redis().await;
    let query = TestApp::signed_query(TOKEN, "captured");
    let first = seed("<Event>subscribe</Event>", "u_victim", now());
    let forged = seed("<Event>unsubscribe</Event>", "u_victim", now());
    assert_eq!(app.post_with_query(&query, &first).await.0, 200);
    assert_eq!(app.post_with_query(&query, &forged).await.0, 403);
    // WeChat's own retry repeats both query and body, and passes.
    assert_eq!(app.post_with_query(&query, &first).await.0, 200);
    assert_eq!(app.count("event.unsubscribe"), 0);
    assert_eq!(app.count_all(), 1);
    app.stop().await;
}

/// A fresh Redis and the app on it, with a push from `u_warm` published: the broker's
/// metadata is in, so a fault injected next hits a produce request itself. `None` against
/// real brokers, where no fault can be injected.
async fn warmed_up() -> Option<(RedisServer, TestApp)> {
    let (redis, app) = on_redis().await;
    app.kafka.mock_cluster()?;
    let warm = seed("<Event>subscribe</Event>", "u_warm", now());
    assert_eq!(app.post_push(&warm).await.0, 200);
    Some((redis, app))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_is_503_releases_the_claim_and_the_retry_lands_once() {
    let Some((redis, app)) = warmed_up().await else {
        return;
    };
    let xml = seed("<Event>subscribe</Event>", "u_fail", now());
    let query = TestApp::signed_query(TOKEN, "fail-nonce");
    let mock = app.kafka.mock_cluster().unwrap();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let (status, reason) = app.post_with_query(&query, &xml).await;
    assert_eq!(status, 503, "{reason}");
    mock.clear_request_errors(RDKafkaApiKey::Produce);

    let mut conn = redis.conn();
    let keys: Vec<String> = conn
        .keys(format!("{}:dedup:*u_fail*", app.config.shared.key_prefix))
        .unwrap();
    assert!(keys.is_empty(), "claim released: {keys:?}");

    let (status, reason) = app.post_with_query(&query, &xml).await;
    assert_eq!(status, 200, "{reason}");
    assert_eq!(app.post_with_query(&query, &xml).await.0, 200);
    let why = "u_warm and u_fail, once each";
    app.read_exactly("event.subscribe", 2, SETTLE, why).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_is_503_within_the_deadline_and_the_retry_lands_once() {
    let Some((_redis, app)) = warmed_up().await else {
        return;
    };
    let mock = app.kafka.mock_cluster().unwrap();
    mock.broker_down(1).unwrap();
    let xml = seed("<Event>unsubscribe</Event>", "u_down", now());
    let query = TestApp::signed_query(TOKEN, "down-nonce");
    let started = std::time::Instant::now();
    let (status, _) = app.post_with_query(&query, &xml).await;
    assert_eq!(status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "answered before WeChat's 5 s"
    );
    mock.broker_up(1).unwrap();

    // WeChat retries until it gets a 200; meanwhile the first attempt may still be in flight.
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let (status, _) = app.post_with_query(&query, &xml).await;
        statuses.push(status);
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert_eq!(app.post_with_query(&query, &xml).await.0, 200);
    app.read_exactly(
        "event.unsubscribe",
        1,
        Duration::from_millis(500),
        &format!("exactly once after {statuses:?}"),
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_in_flight_makes_the_retry_wait_and_a_dead_holder_loses_nothing() {
    let (redis, app) = on_redis().await;
    let xml = seed("<Event>subscribe</Event>", "u_dead", now());
    let id = schemas::EventId::new(
        "gh_test",
        "u_dead",
        now_of(&xml),
        Kind::Event,
        "subscribe",
        None,
        &wechat::normalize::fields_digest(&[]),
    );
    // A process that claimed the push and died: its claim is pending with a short lease.
    let mut conn = redis.conn();
    let _: () = redis::cmd("SET")
        .arg(dedup_key(&app.config.shared.key_prefix, &id))
        .arg("pending:dead-process")
        .arg("PX")
        .arg(700)
        .query(&mut conn)
        .unwrap();
    assert_eq!(app.post_push(&xml).await.0, 503, "in flight elsewhere");
    assert_eq!(app.count("event.subscribe"), 0);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        app.post_push(&xml).await.0,
        200,
        "the lease ran out: the retry publishes"
    );
    assert_eq!(app.read("event.subscribe", 1).len(), 1);
    app.stop().await;
}

fn now_of(xml: &str) -> i64 {
    let start = xml.find("<CreateTime>").unwrap() + "<CreateTime>".len();
    let end = xml.find("</CreateTime>").unwrap();
    xml[start..end].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_still_publishes_every_push_answered_200() {
    // Policy: without Redis, dedup is off and every push is published before its 200; a
    // duplicate is better than a loss.
    let port = free_port();
    let app = TestApp::spawn(&format!("redis://127.0.0.1:{port}/")).await;
    let xml = seed("<Event>subscribe</Event>", "u_noredis", now());
    assert_eq!(app.post_push(&xml).await.0, 200);
    assert_eq!(app.read("event.subscribe", 1).len(), 1);
    // Redis comes back: dedup resumes by itself.
    let other = seed("<Event>subscribe</Event>", "u_back", now());
    let _redis = app
        .assert_redis_comes_back(
            port,
            Duration::from_millis(4000),
            &other,
            2,
            "u_noredis once, u_back once",
        )
        .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_configured("memory://", |config| config.read_timeout_ms = 300).await;

    // Headers that never finish.
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /wechat HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection closed after the header timeout");

    // A body that never finishes.
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let query = TestApp::signed_query(TOKEN, "slow");
    stream
        .write_all(
            format!("POST /wechat?{query} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n<xml>")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert_eq!(app.count_all(), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz() {
    let app = TestApp::spawn_binary(test_config("memory://")).await;
    assert_eq!(app.admin_get("/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(app.admin_get("/readyz").await, (200, "ready\n".to_owned()));
    // Nothing operational on the public listener.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(app.get(path).await.0, 404, "{path}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_what_can_make_a_push_durable() {
    // Kafka down without a spool: unready. With a spool it can take: ready, degraded.
    let redis = RedisServer::start();
    let app = TestApp::spawn_binary(test_config(&redis.url())).await;
    let mock = app.kafka.mock_cluster().unwrap();
    assert!(app.wait_ready(Duration::from_secs(5)).await);
    mock.broker_down(1).unwrap();
    let (status, body) = app.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("kafka"), "{body}");
    mock.broker_up(1).unwrap();
    assert!(app.wait_ready(Duration::from_secs(10)).await);
    app.stop().await;

    let mut config = test_config(&redis.url());
    config.spool_dir = Some(spool_dir());
    let app = TestApp::spawn_binary(config).await;
    let mock = app.kafka.mock_cluster().unwrap();
    assert!(app.wait_ready(Duration::from_secs(5)).await);
    mock.broker_down(1).unwrap();
    app.assert_degraded("spooling").await;
    let (_, metrics) = app.admin_get("/metrics").await;
    assert!(
        metrics.contains("wxpipe_dependency_up{dependency=\"kafka\"} 0"),
        "{metrics}"
    );
    mock.broker_up(1).unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_has_help_and_type() {
    let app = TestApp::spawn("memory://").await;
    assert_eq!(
        app.post_push(&seed("<Event>subscribe</Event>", "u_m", now()))
            .await
            .0,
        200
    );
    assert_eq!(app.admin_get("/readyz").await.0, 200);
    let (_, metrics) = app.admin_get("/metrics").await;
    let described = |kind: &str, family: &str| {
        metrics
            .lines()
            .any(|l| l.starts_with(&format!("# {kind} {family} ")))
    };
    let mut families = std::collections::BTreeSet::new();
    for line in metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| described("TYPE", f)))
            .unwrap_or(name);
        families.insert(family.to_owned());
    }
    for family in &families {
        assert!(described("TYPE", family), "no TYPE for {family}");
        assert!(described("HELP", family), "no HELP for {family}");
    }
    for expected in [
        "wxpipe_build_info",
        "wxpipe_pushes_total",
        "wxpipe_push_ack_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            families.contains(expected),
            "{expected} missing: {families:?}"
        );
    }
    assert!(
        metrics.contains(&format!(
            "wxpipe_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
    app.stop().await;
}
