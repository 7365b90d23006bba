//! Faults, through the real server: Kafka down for longer than WeChat's retries (the spool),
//! Redis restarted, overload, shutdown under load, and the metrics that show it all.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn push(from: &str, created_at: i64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_faults]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName>\
         <CreateTime>{created_at}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event></xml>"
    )
}

/// The ingress binary on a fresh Redis, with the test config as `configure` leaves it.
async fn spawn(configure: impl FnOnce(&mut ingest::Config)) -> (RedisServer, TestApp) {
    let redis = RedisServer::start();
    let mut config = test_config(&redis.url());
    configure(&mut config);
    (redis, TestApp::spawn_binary(config).await)
}

/// The ingress binary without Redis (`memory://`), with the test config as `configure`
/// leaves it.
async fn spawn_on_memory(configure: impl FnOnce(&mut ingest::Config)) -> TestApp {
    let mut config = test_config("memory://");
    configure(&mut config);
    TestApp::spawn_binary(config).await
}

/// Posts a push from `from`, which must be answered 200.
async fn assert_accepted(app: &TestApp, from: &str) {
    let (status, reason) = app.post_push(&push(from, now())).await;
    assert_eq!(status, 200, "{from}: {reason}");
}

/// Kafka refuses the next `requests` produce requests for its setup (a missing ACL).
fn refuse_produces(mock: &MockCluster<'static, DefaultProducerContext>, requests: usize) {
    let refusal = RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
    mock.request_errors(RDKafkaApiKey::Produce, &vec![refusal; requests]);
}

/// Whether the app's `event.subscribe` topic holds `enough` records within `within`.
async fn subscribes(app: &TestApp, within: Duration, enough: impl Fn(i64) -> bool) -> bool {
    eventually(within, || enough(app.count("event.subscribe"))).await
}

/// Spools to a fresh folder: for [`with_kafka_down`] and [`spawn`].
fn spooled(config: &mut ingest::Config) {
    config.spool_dir = Some(spool_dir());
}

/// [`spawn`], with a push from `warm` on Kafka, then Kafka down: where the spool and the
/// deadline tests start. `None` against real brokers, which a test cannot take down.
async fn with_kafka_down(
    warm: &str,
    configure: impl FnOnce(&mut ingest::Config),
) -> Option<(RedisServer, TestApp)> {
    let (redis, app) = spawn(configure).await;
    let mock = app.kafka.mock_cluster()?;
    assert_accepted(&app, warm).await;
    mock.broker_down(1).unwrap();
    Some((redis, app))
}

/// Posts a push from each of `{prefix}0` to `{prefix}{count - 1}`, each answered 200.
async fn accept_each(app: &TestApp, prefix: &str, count: usize) {
    for i in 0..count {
        assert_accepted(app, &format!("{prefix}{i}")).await;
    }
}

/// Reads `event.subscribe`'s `expected` records, and 500 ms later still only those (`why`).
async fn subscribes_once(app: &TestApp, expected: usize, why: &str) -> Vec<Record> {
    let settle = Duration::from_millis(500);
    app.read_exactly("event.subscribe", expected, settle, why)
        .await
}

type Record = (String, schemas::Event, serde_json::Value);

/// Asserts that `count` reaches `expected` within `within`; `what` names the records.
async fn assert_reaches(count: impl Fn() -> i64, expected: i64, within: Duration, what: &str) {
    assert!(
        eventually(within, || count() >= expected).await,
        "{what}: {} of {expected}",
        count()
    );
}

/// Asserts that `settle` on, `count` is `expected` still: nothing came twice (`why`).
async fn assert_stays(count: impl Fn() -> i64, expected: i64, settle: Duration, why: &str) {
    tokio::time::sleep(settle).await;
    assert_eq!(count(), expected, "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_longer_than_wechat_retries_loses_nothing_with_a_spool() {
    let Some((_redis, app)) = with_kafka_down("warm", spooled).await else {
        return;
    };
    let mock = app.kafka.mock_cluster().unwrap();
    let t = now();
    let mut answered = Vec::new();
    for i in 0..20 {
        let xml = push("same_user", t + i);
        let ((status, reason), took) = timed(app.post_push(&xml)).await;
        assert_eq!(status, 200, "spooled: {reason}");
        assert!(took < Duration::from_millis(4500));
        answered.push(xml);
    }
    // A retry of a spooled push is a duplicate: no second record later.
    assert_eq!(app.post_push(&answered[0]).await.0, 200);

    mock.broker_up(1).unwrap();
    let records = subscribes_once(&app, 21, "each spooled push once").await;
    // One user's events keep their order.
    let times: Vec<i64> = records
        .iter()
        .filter(|(k, _, _)| k == "same_user")
        .map(|(_, e, _)| e.created_at)
        .collect();
    assert_eq!(times, (0..20).map(|i| t + i).collect::<Vec<_>>());
    // Drained: new pushes go straight to Kafka again.
    assert!(subscribes(&app, Duration::from_secs(10), |n| n == 21).await);
    assert_accepted(&app, "after").await;
    assert_eq!(app.read("event.subscribe", 22).len(), 22);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_means_503() {
    let Some((_redis, app)) = with_kafka_down("warm", |config| {
        spooled(config);
        config.spool_max_bytes = 800;
    })
    .await
    else {
        return;
    };
    let mock = app.kafka.mock_cluster().unwrap();
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(app.post_push(&push(&format!("f{i}"), now())).await.0);
    }
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    let accepted: Vec<String> = (0..6)
        .filter(|i| statuses[*i] == 200)
        .map(|i| format!("f{i}"))
        .collect();
    mock.broker_up(1).unwrap();
    assert!(subscribes(&app, Duration::from_secs(10), |n| n > accepted.len() as i64).await);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let keys: Vec<String> = app
        .read("event.subscribe", 7)
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    for key in &accepted {
        assert_eq!(
            keys.iter().filter(|k| *k == key).count(),
            1,
            "{key} answered 200: on Kafka once ({keys:?})"
        );
    }
    // A 503'd push whose produce outlived its deadline may land too (an unknown outcome is
    // never turned into a loss); nothing else does, and nothing twice.
    let mut unique_keys = keys.clone();
    unique_keys.sort();
    unique_keys.dedup();
    assert_eq!(unique_keys.len(), keys.len(), "{keys:?}");
    assert!(
        keys.iter().all(|k| k == "warm" || k.starts_with('f')),
        "{keys:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_ingress_loses_nothing_answered_200() {
    let redis = RedisServer::start();
    let prefix = unique("t");
    let kafka = Kafka::mock(&all_topics(&prefix));
    let mock = kafka.mock_cluster().unwrap();
    let port = free_port();
    let envs = [
        ("KAFKA_BROKERS", kafka.brokers()),
        ("KAFKA_TOPIC_PREFIX", prefix.clone()),
        ("REDIS_URL", redis.url()),
        ("INGEST_SPOOL_DIR", spool_dir().display().to_string()),
        ("INGEST_ACK_DEADLINE_MS", "1500".to_owned()),
    ];
    let mut child = spawn_ingest(port, &envs);
    wait_up(port).await;
    mock.broker_down(1).unwrap();
    let mut answered = 0;
    for i in 0..10 {
        if post_to_port(port, &push(&format!("k{i}"), now())).await == 200 {
            answered += 1;
        }
    }
    assert_eq!(answered, 10, "all spooled");
    child.kill(); // SIGKILL: no flush, no goodbye
    mock.broker_up(1).unwrap();

    let mut child = spawn_ingest(port, &envs);
    wait_up(port).await;
    let topic = format!("{prefix}.event.subscribe");
    assert!(
        eventually(Duration::from_secs(20), || kafka.count(&topic) >= 10).await,
        "replayed after restart"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut keys: Vec<String> = kafka
        .read(&topic, 10)
        .into_iter()
        .filter_map(|r| r.key)
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 10, "every push answered 200 is on Kafka");
    child.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_run_recovers_by_itself() {
    let (mut redis, app) = spawn(|_| {}).await;
    let port = redis.port;
    assert_accepted(&app, "r_before").await;

    redis.stop();
    // Policy: dedup is off while Redis is down; every 200 is still on Kafka.
    assert_accepted(&app, "r_during").await;
    let after = push("r_after", now());
    let _redis = app
        .assert_redis_comes_back(port, Duration::from_millis(5000), &after, 3, "once each")
        .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_cap_a_push_gets_503_at_once() {
    let app = spawn_on_memory(|config| config.max_in_flight = 2).await;
    let Some(mock) = app.kafka.mock_cluster() else {
        return;
    };
    assert_accepted(&app, "warm").await;
    mock.broker_down(1).unwrap();
    // Two pushes wait for Kafka up to the deadline; the third is refused at once.
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let url = app.push_url();
            let body = push(&format!("slow{i}"), now());
            let client = app.client.clone();
            tokio::spawn(async move {
                client
                    .post(url)
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (status, reason) = app.post_push(&push("third", now())).await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("in flight"), "{reason}");
    assert!(started.elapsed() < Duration::from_millis(500), "at once");
    for task in slow {
        assert_eq!(task.await.unwrap(), 503, "not durable within the deadline");
    }
    mock.broker_up(1).unwrap();
    let (_, metrics) = app.admin_get("/metrics").await;
    assert!(metrics.contains("reason=\"overloaded\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_leaves_every_200_on_kafka() {
    let (_redis, app) = spawn(|_| {}).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = app.client.clone();
        let target = app.push_url();
        let from = format!("s{i}");
        let body = push(&from, now());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 2)).await;
            let status = client
                .post(target)
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            (from, status)
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Stop while requests are still arriving.
    let mut app = app;
    let started = Instant::now();
    app.signal_stop();
    let mut ok = Vec::new();
    for task in tasks {
        let (from, status) = task.await.unwrap();
        if status == 200 {
            ok.push(from);
        }
    }
    app.join().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded grace period"
    );
    assert!(!ok.is_empty(), "some pushes were answered before the stop");
    let keys: std::collections::HashSet<String> = app
        .kafka
        .read(&app.topic("event.subscribe"), ok.len())
        .into_iter()
        .filter_map(|r| r.key)
        .collect();
    for from in &ok {
        assert!(
            keys.contains(from),
            "{from} was answered 200 but is not on Kafka"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_sent() {
    let account = unique("acct").replace('x', "_");
    let app = spawn_on_memory(|config| {
        config.shared.accounts_file = Some(accounts_file(&format!(
            "[accounts.{account}]\ntoken = \"metrics-token\"\noriginal_id = \"gh_faults\"\n"
        )));
        config.shared.original_id = Some("gh_default".into());
    })
    .await;
    let path = format!("/wechat/{account}");
    for i in 0..3 {
        let query = TestApp::signed_query("metrics-token", &unique("n"));
        assert_eq!(
            app.post_to(&path, &query, &push(&format!("m{i}"), now()))
                .await
                .0,
            200
        );
    }
    let query = TestApp::signed_query("metrics-token", &unique("n"));
    assert_eq!(
        app.post_to(&path, &query, &push("m0", now() - 10_000_000))
            .await
            .0,
        200,
        "another second: new event"
    );
    let retry_query = TestApp::signed_query("metrics-token", "retry");
    let body = push("dup", now());
    assert_eq!(app.post_to(&path, &retry_query, &body).await.0, 200);
    assert_eq!(app.post_to(&path, &retry_query, &body).await.0, 200);
    let bad = TestApp::signed_query("wrong", &unique("n"));
    assert_eq!(app.post_to(&path, &bad, &push("m9", now())).await.0, 403);

    let (_, metrics) = app.admin_get("/metrics").await;
    let line = |outcome: &str, reason: &str, type_: &str| {
        let labels = [
            ("account", account.as_str()),
            ("outcome", outcome),
            ("reason", reason),
            ("type", type_),
        ];
        testkit::metric(&metrics, "wxpipe_pushes_total", &labels)
    };
    let mine: Vec<&str> = metrics.lines().filter(|l| l.contains(&account)).collect();
    assert_eq!(line("published", "", "subscribe"), Some(5.0), "{mine:#?}");
    assert_eq!(line("duplicate", "", "subscribe"), Some(1.0));
    assert_eq!(line("rejected", "bad_signature", "unknown"), Some(1.0));
    for (family, what) in [
        ("wxpipe_push_ack_seconds_bucket", "ack latency histogram"),
        ("wxpipe_kafka_produce_seconds", "produce latency"),
        ("wxpipe_kafka_in_flight", "produces in flight"),
    ] {
        assert!(metrics.contains(family), "{what}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_write_error_never_costs_later_acknowledged_events() {
    // The review's reproduction: spool on a small disk, Kafka down, pushes 200 until the disk
    // fills (503), space freed, more pushes 200, SIGKILL, restart: every 200 is on Kafka.
    let Some(disk) = SmallDisk::mount("256k") else {
        return;
    };
    let redis = RedisServer::start();
    let prefix = unique("t");
    let kafka = Kafka::mock(&all_topics(&prefix));
    let mock = kafka.mock_cluster().unwrap();
    let port = free_port();
    let admin = free_port();
    let spool = disk.path.join("spool");
    let envs = [
        ("INGEST_ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
        ("KAFKA_BROKERS", kafka.brokers()),
        ("KAFKA_TOPIC_PREFIX", prefix.clone()),
        ("REDIS_URL", redis.url()),
        ("INGEST_SPOOL_DIR", spool.display().to_string()),
        ("INGEST_ACK_DEADLINE_MS", "1000".to_owned()),
    ];
    let mut child = spawn_ingest(port, &envs);
    wait_up(port).await;
    mock.broker_down(1).unwrap();
    let mut acked = Vec::new();
    for i in 0..50 {
        let key = format!("a{i}");
        if post_to_port(port, &push(&key, now())).await == 200 {
            acked.push(key);
        }
    }
    assert_eq!(acked.len(), 50, "spooled");
    // A large push on a full disk: the write fails partway.
    disk.fill();
    let big = push("refused", now()).replace(
        "</xml>",
        &format!("<Note>{}</Note></xml>", "x".repeat(20_000)),
    );
    assert_eq!(post_to_port(port, &big).await, 503, "disk full");
    disk.free();
    for i in 0..5 {
        let key = format!("b{i}");
        assert_eq!(post_to_port(port, &push(&key, now())).await, 200, "{key}");
        acked.push(key);
    }
    child.kill();
    mock.broker_up(1).unwrap();

    let _child = spawn_ingest(port, &envs);
    wait_up(port).await;
    let topic = format!("{prefix}.event.subscribe");
    eventually(Duration::from_secs(20), || {
        kafka.count(&topic) >= acked.len() as i64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = kafka.count(&topic) as usize;
    let keys: Vec<String> = kafka
        .read(&topic, count)
        .into_iter()
        .filter_map(|r| r.key)
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|k| !keys.contains(k)).collect();
    assert!(missing.is_empty(), "answered 200 but lost: {missing:?}");
    // The replay drained the spool: its accounting is back to zero.
    let metrics = format!("http://127.0.0.1:{admin}/metrics");
    assert_eq!(gauge(&metrics, "wxpipe_spool_bytes").await, Some(0.0));
}

/// The value of an unlabelled gauge on an ingress's `/metrics`.
async fn gauge(url: &str, name: &str) -> Option<f64> {
    let metrics = reqwest::get(url).await.ok()?.text().await.ok()?;
    metrics
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// Polls the app's `wxpipe_spool_bytes` every 100 ms until it is 0 or `within` passes.
async fn spool_drains(app: &TestApp, within: Duration) -> bool {
    let metrics = format!("http://{}/metrics", app.admin);
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if gauge(&metrics, "wxpipe_spool_bytes").await == Some(0.0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_never_holds_an_answer_past_the_deadline() {
    // Redis stops answering (CLIENT PAUSE) under 600 concurrent pushes: each is still
    // answered 200 within the ack deadline, published unclaimed, and once only.
    let (redis, app) = spawn(|config| {
        config.ack_deadline_ms = 1500;
        config.shared.redis_timeout_ms = 1000;
    })
    .await;
    assert_accepted(&app, "warm").await;
    redis.pause(6000);
    let client = reqwest::Client::new();
    let t = now();
    let pushes = (0..600).map(|i| {
        let client = client.clone();
        let url = app.push_url();
        async move {
            let started = Instant::now();
            let status = client
                .post(url)
                .body(push(&format!("stall{i}"), t))
                .send()
                .await
                .map_or(0, |r| r.status().as_u16());
            (status, started.elapsed())
        }
    });
    let answers = futures_util::future::join_all(pushes).await;
    let slowest = answers.iter().map(|(_, took)| *took).max().unwrap();
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        slowest < Duration::from_millis(2500),
        "the slowest answer took {slowest:?}"
    );
    subscribes_once(&app, 601, "no duplicates").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_disk_sends_pushes_to_a_healthy_kafka() {
    // The spool holds records (Kafka was down) and its disk is full when Kafka comes back:
    // pushes go to Kafka directly instead of 503, and the spool still drains.
    let Some(disk) = SmallDisk::mount("256k") else {
        return;
    };
    let (_redis, app) = with_kafka_down("warm", |config| {
        config.spool_dir = Some(disk.path.join("spool"));
        config.ack_deadline_ms = 1000;
    })
    .await
    .unwrap();
    let mock = app.kafka.mock_cluster().unwrap();
    accept_each(&app, "s", 10).await;
    // Long enough for the replay to back off to its longest wait.
    tokio::time::sleep(Duration::from_secs(8)).await;
    disk.fill();
    mock.broker_up(1).unwrap();
    for i in 0..5 {
        let (status, reason) = app.post_push(&push(&format!("d{i}"), now())).await;
        assert_eq!(status, 200, "d{i}: {reason}");
    }
    disk.free();
    assert!(
        subscribes(&app, Duration::from_secs(20), |n| n >= 16).await,
        "every push on Kafka"
    );
    assert!(
        spool_drains(&app, Duration::from_millis(10000)).await,
        "the spool drained"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_at_every_stage_never_stop_the_replay() {
    // Kafka down and Redis slow, with a spool: clients hang up at every moment of their
    // push (claim, publish wait, deadline, spool append). Afterwards the replay still drains
    // the spool, and new pushes go straight to Kafka.
    let (redis, app) = with_kafka_down("warm", |config| {
        spooled(config);
        config.ack_deadline_ms = 1000;
    })
    .await
    .unwrap();
    let mock = app.kafka.mock_cluster().unwrap();
    redis.pause(300);
    // Hang-ups from 5 ms to 1.2 s after sending, densest around the moment the deadline
    // sends the push to the spool (deadline less the fsync reserve: 500 ms here).
    let delays: Vec<u64> = (1..=40)
        .map(|i| i * 30)
        .chain((0..120).map(|i| 470 + i / 2))
        .collect();
    let hang_ups = delays.into_iter().enumerate().map(|(i, ms)| {
        let url = app.push_url();
        async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_millis(ms))
                .build()
                .unwrap();
            let _ = client
                .post(url)
                .body(push(&format!("h{i}"), now()))
                .send()
                .await;
        }
    });
    futures_util::future::join_all(hang_ups).await;
    mock.broker_up(1).unwrap();
    assert!(
        spool_drains(&app, Duration::from_millis(20000)).await,
        "the spool drained"
    );
    let before = app.count("event.subscribe");
    assert_accepted(&app, "after").await;
    assert!(
        subscribes(&app, Duration::from_secs(5), |n| n > before).await,
        "a new push reaches Kafka"
    );
    // Produces whose pushes were dropped mid-wait are no longer counted as in flight.
    let metrics = format!("http://{}/metrics", app.admin);
    let mut in_flight = None;
    for _ in 0..100 {
        in_flight = gauge(&metrics, "wxpipe_kafka_in_flight").await;
        if in_flight == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(in_flight, Some(0.0), "the in-flight gauge leaked");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_black_holed_or_cut_by_the_network_never_delays_or_loses_a_push() {
    // Not a paused Redis but a network that swallows bytes, then one that resets connections.
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis_addr(&redis.url())).await;
    let mut config = test_config(&proxy.redis_url());
    config.ack_deadline_ms = 1500;
    let app = TestApp::spawn_binary(config).await;
    assert_accepted(&app, "net_warm").await;

    proxy.stall();
    for i in 0..20 {
        let xml = push(&format!("net_stall{i}"), now());
        let ((status, reason), took) = timed(app.post_push(&xml)).await;
        assert_eq!(status, 200, "{reason}");
        assert!(took < Duration::from_millis(2000), "answered in {took:?}");
    }
    proxy.cut();
    proxy.resume();
    // The connection comes back by itself, and dedup with it.
    assert!(
        app.wait_ready(Duration::from_secs(10)).await,
        "Redis reachable again"
    );
    let again = push("net_back", now());
    let query = TestApp::signed_query(TOKEN, "net-back");
    for _ in 0..3 {
        assert_eq!(app.post_with_query(&query, &again).await.0, 200);
    }
    let why = "every push answered 200 is on Kafka, the retries deduplicated";
    subscribes_once(&app, 22, why).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_refusing_every_record_for_its_setup_never_sets_the_spool_aside() {
    // Kafka comes back from an outage refusing every produce for a while with an error about
    // its setup (a missing ACL), not about the records: the spooled pushes, each answered 200,
    // must wait and reach Kafka once access is granted, never be set aside as refused.
    let dir = spool_dir();
    let configure = |config: &mut ingest::Config| config.spool_dir = Some(dir.clone());
    let Some((_redis, app)) = with_kafka_down("acl_warm", configure).await else {
        return;
    };
    let mock = app.kafka.mock_cluster().unwrap();
    for i in 0..10 {
        let (status, reason) = app.post_push(&push(&format!("acl{i}"), now())).await;
        assert_eq!(status, 200, "spooled: {reason}");
    }
    refuse_produces(mock, 40);
    mock.broker_up(1).unwrap();
    // Long enough for the replay to meet the refusals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    assert!(
        subscribes(&app, Duration::from_secs(30), |n| n >= 11).await,
        "spooled pushes lost: {} of 11 on Kafka, spool: {:?}",
        app.count("event.subscribe"),
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_redis_applies_late_never_blocks_the_retry() {
    // Redis stalls past the claim's budget, so the push goes on unclaimed; Kafka refuses it
    // (here an ACL) and there is no spool, so it gets a 503. Then Redis applies the claim it
    // held (its lease starting only then) and Kafka takes records again: WeChat's retry must
    // be published, not refused as in flight by a claim nobody holds.
    let (redis, app) = spawn(|config| config.ack_deadline_ms = 1500).await;
    let Some(mock) = app.kafka.mock_cluster() else {
        return;
    };
    assert_accepted(&app, "late_warm").await;
    refuse_produces(mock, 20);
    redis.pause(2500);
    let xml = push("late_claim", now());
    let query = TestApp::signed_query(TOKEN, &unique("n"));
    let (status, _) = app.post_with_query(&query, &xml).await;
    assert_eq!(status, 503, "neither Kafka nor a spool");
    // Redis answers again (and applies the late claim); Kafka takes records again.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    assert!(app.wait_ready(Duration::from_secs(10)).await);
    let (status, body) = app.post_with_query(&query, &xml).await;
    assert_eq!(status, 200, "the retry: {body}");
    assert!(
        subscribes(&app, Duration::from_secs(10), |n| n == 2).await,
        "{}",
        app.count("event.subscribe")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_are_held_while_the_rest_of_their_segment_moves_on() {
    // 600 spooled pushes; Kafka comes back refusing a few produce requests for its setup (an
    // ACL), which librdkafka then also refuses at enqueue for a while. The records it took must
    // not be sent again, and the refused ones reach Kafka once it takes them: each exactly
    // once. (The mock refuses whole requests, never one topic only, so that the other topics'
    // records move on past a held one is not shown here.)
    let Some((_redis, app)) = with_kafka_down("held_warm", spooled).await else {
        return;
    };
    accept_each(&app, "held", 600).await;
    let mock = app.kafka.mock_cluster().unwrap();
    refuse_produces(mock, 3);
    mock.broker_up(1).unwrap();
    assert!(
        subscribes(&app, Duration::from_secs(30), |n| n >= 601).await,
        "{} of 601 on Kafka",
        app.count("event.subscribe")
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        app.count("event.subscribe"),
        601,
        "each record exactly once"
    );
    app.stop().await;
}

/// Host 2 of [`spool_then_sicken_one_partition`] comes back: the sick partition's records
/// arrive, and each of the `pairs` subscribes and `pairs` + 1 unsubscribes is on Kafka once.
async fn heal_the_sick_partition(app: &TestApp, pairs: i64) {
    app.kafka.mock_cluster().unwrap().broker_up(2).unwrap();
    let subscribes = || app.count("event.subscribe");
    let what = "the healed partition's records";
    assert_reaches(subscribes, pairs, Duration::from_secs(40), what).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(subscribes(), pairs, "each subscribe once");
    let unsubscribes = app.count("event.unsubscribe");
    assert_eq!(unsubscribes, pairs + 1, "each unsubscribe once");
}

/// A push of `event` (`subscribe`, `unsubscribe`) from `from`.
fn event_push(from: &str, event: &str, created_at: i64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_faults]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName>\
         <CreateTime>{created_at}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event></xml>"
    )
}

/// The ingress binary with a spool in `dir`, over a mock of two hosts where host 2 leads
/// partition 0 of the subscribe topic and host 1 everything else, with one unsubscribe from
/// `prefix`_warm on Kafka. Then both hosts go down, `pairs` subscribe and unsubscribe pushes
/// are spooled (users `prefix`000…), `before_up` runs, and host 1 comes back: that one
/// partition stays sick until the test starts host 2. `None` against real brokers.
async fn spool_then_sicken_one_partition(
    dir: &std::path::Path,
    prefix: &str,
    pairs: usize,
    before_up: impl FnOnce(),
) -> Option<(RedisServer, TestApp)> {
    if std::env::var("KAFKA_BROKERS").is_ok_and(|b| !b.is_empty()) {
        return None;
    }
    let redis = RedisServer::start();
    let mut config = test_config(&redis.url());
    config.spool_dir = Some(dir.to_path_buf());
    let kafka = Kafka::mock_hosts(2, &all_topics(&config.shared.topic_prefix));
    let app = TestApp::spawn_binary_on(config, kafka).await;
    let mock = app.kafka.mock_cluster().unwrap();
    mock.partition_leader(&app.topic("event.subscribe"), 0, Some(2))
        .unwrap();
    let t = now();
    let (status, reason) = app
        .post_push(&event_push(&format!("{prefix}_warm"), "unsubscribe", t))
        .await;
    assert_eq!(status, 200, "{reason}");
    mock.broker_down(1).unwrap();
    mock.broker_down(2).unwrap();
    for i in 0..pairs {
        for event in ["subscribe", "unsubscribe"] {
            let (status, reason) = app
                .post_push(&event_push(&format!("{prefix}{i:03}"), event, t))
                .await;
            assert_eq!(status, 200, "spooled: {reason}");
        }
    }
    before_up();
    mock.broker_up(1).unwrap();
    Some((redis, app))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sick_partition_never_holds_up_the_rest_of_the_spool() {
    // 600 spooled pushes, half subscribes, half unsubscribes; Kafka comes back with the host
    // of one partition of the subscribe topic still down. The unsubscribes and the other
    // partition must reach Kafka while it is sick, each once; when it heals, its records
    // arrive, each once and in their order; nothing Kafka acknowledged is sent again
    // (counted by end offsets).
    let Some((_redis, app)) =
        spool_then_sicken_one_partition(&spool_dir(), "sick", 300, || {}).await
    else {
        return;
    };
    let subscribe = app.topic("event.subscribe");
    let healthy = || app.count("event.unsubscribe");
    let what = "the other topic while one partition is sick";
    assert_reaches(healthy, 301, Duration::from_secs(40), what).await;
    let other_partition = app.kafka.count_partition(&subscribe, 1);
    assert!(other_partition > 0, "the healthy partition got its records");
    // Rounds go on meeting the sick partition.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(healthy(), 301, "each record of the other topic once");
    assert_eq!(
        app.kafka.count_partition(&subscribe, 1),
        other_partition,
        "each record of the healthy partition once"
    );

    heal_the_sick_partition(&app, 300).await;
    let sick = 300 - other_partition as usize;
    let order: Vec<String> = app
        .kafka
        .read_partition(&subscribe, 0, sick)
        .iter()
        .map(|r| r.key.clone().unwrap_or_default())
        .collect();
    assert_eq!(order.len(), sick);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "the sick partition's records in their order");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_exits_the_ingress_and_the_restart_replays_its_spool() {
    // Pushes spooled while the broker is down; when it comes back, the idempotent producer's
    // first produce fails with a sequence error at the head of its queue, which librdkafka
    // takes as a fatal error: that producer never produces again. The ingress must not stay
    // "degraded (spooling)" for good: it exits non-zero (its supervisor restarts it), and the
    // restarted one replays the spool, each record once.
    let dir = spool_dir();
    let configure = |config: &mut ingest::Config| config.spool_dir = Some(dir.clone());
    let Some((redis, mut app)) = with_kafka_down("fatal_warm", configure).await else {
        return;
    };
    accept_each(&app, "fatal", 5).await;
    let mock = app.kafka.mock_cluster().unwrap();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    mock.broker_up(1).unwrap();
    let Some(status) = app.exited_within(Duration::from_secs(30)).await else {
        let ready = app.admin_get("/readyz").await;
        panic!("a fatal producer: still running 30 s on, /readyz {ready:?}");
    };
    assert!(!status.success(), "{status}");
    assert_eq!(app.count("event.subscribe"), 1, "the spooled pushes wait");

    let port = free_port();
    let _restarted = spawn_ingest(
        port,
        &[
            ("KAFKA_BROKERS", app.kafka.brokers()),
            ("KAFKA_TOPIC_PREFIX", app.config.shared.topic_prefix.clone()),
            ("REDIS_URL", redis.url()),
            ("REDIS_KEY_PREFIX", app.config.shared.key_prefix.clone()),
            ("INGEST_SPOOL_DIR", dir.display().to_string()),
        ],
    );
    wait_up(port).await;
    let on_kafka = || app.count("event.subscribe");
    let what = "the restart replayed the spool";
    assert_reaches(on_kafka, 6, Duration::from_secs(30), what).await;
    assert_stays(on_kafka, 6, Duration::from_secs(3), "each record once").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_never_holds_up_the_rest_of_the_spool() {
    // As above with a whole topic missing (auto-creation off, `ingest topics` not run for
    // it): the other topic's spooled records reach Kafka, each once, while it is missing;
    // once it exists, its records arrive, each once.
    let t = now();
    let Some((_redis, app)) = with_kafka_down("missing_warm", spooled).await else {
        return;
    };
    let mock = app.kafka.mock_cluster().unwrap();
    for i in 0..300 {
        for event in ["subscribe", "unsubscribe"] {
            let (status, reason) = app
                .post_push(&event_push(&format!("missing{i:03}"), event, t))
                .await;
            assert_eq!(status, 200, "spooled: {reason}");
        }
    }
    let missing = RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
    let unsubscribe = app.topic("event.unsubscribe");
    mock.topic_error(&unsubscribe, missing).unwrap();
    mock.broker_up(1).unwrap();
    let healthy = || app.count("event.subscribe");
    let what = "the other topic while one is missing";
    assert_reaches(healthy, 301, Duration::from_secs(40), what).await;
    let why = "each record of the other topic once";
    assert_stays(healthy, 301, Duration::from_secs(8), why).await;

    mock.topic_error(&unsubscribe, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    let unsubscribes = || app.count("event.unsubscribe");
    let what = "the missing topic's records once it exists";
    assert_reaches(unsubscribes, 300, Duration::from_secs(60), what).await;
    let why = "each unsubscribe once";
    assert_stays(unsubscribes, 300, Duration::from_secs(6), why).await;
    assert_eq!(healthy(), 301, "each subscribe once");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_the_disk_refuses_never_sends_what_kafka_took_again_each_round() {
    // As with one sick partition, but the disk refuses to rewrite the segment (here a
    // directory stands where its rewrite goes; a full disk fails the write the same way). The
    // segment stays whole, so its records Kafka took are in it still: the next rounds must
    // not send them again, round after round, for as long as the partition is sick.
    let dir = spool_dir();
    let mut blocked = Vec::new();
    let block_rewrites = || {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "seg") {
                let beside = path.with_extension("seg.rewrite");
                std::fs::create_dir(&beside).unwrap();
                blocked.push(beside);
            }
        }
        assert!(!blocked.is_empty(), "the pushes were spooled");
    };
    let Some((_redis, app)) =
        spool_then_sicken_one_partition(&dir, "refused", 100, block_rewrites).await
    else {
        return;
    };
    let healthy = || app.count("event.unsubscribe");
    let what = "the other topic while one partition is sick";
    assert_reaches(healthy, 101, Duration::from_secs(40), what).await;
    // Rounds go on meeting the sick partition and the refused rewrite.
    let why = "each record of the other topic once";
    assert_stays(healthy, 101, Duration::from_secs(10), why).await;

    for beside in blocked {
        std::fs::remove_dir(beside).unwrap();
    }
    heal_the_sick_partition(&app, 100).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_replay_never_waits_out_kafka_for_the_rest_of_its_segment() {
    // Kafka down, and one segment holding many users' records (several of the replay's
    // batches, each waiting out librdkafka's delivery timeout). A stop (the ingress shutting
    // down) must end the replay within about one timeout, not one per batch left in the
    // segment; what did not reach Kafka stays in the spool, every record of it.
    use ingest::spool::{read_segment, Spool, SpoolRecord};
    use std::sync::Arc;
    let dir = spool_dir();
    let spool = Spool::open(&dir, 1 << 30).unwrap();
    let records = 8 * 2048 + 1;
    let appends: Vec<_> = (0..records)
        .map(|i| {
            let spool = Arc::clone(&spool);
            tokio::spawn(async move {
                let record = SpoolRecord {
                    topic: "stopping".into(),
                    key: format!("o{i}"),
                    id: format!("gh:o{i}:1:event.subscribe"),
                    value: b"{}".to_vec(),
                };
                spool.append(&record).await
            })
        })
        .collect();
    for append in appends {
        append.await.unwrap().unwrap();
    }
    // Nobody listens there: every record waits for its delivery timeout (2.1 s).
    let (stop, replay) = start_replay(&spool, "127.0.0.1:1", Duration::from_millis(100));
    // The first round is under way.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.send(true).unwrap();
    let asked = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(120), replay).await;
    let took = asked.elapsed();
    assert!(ended.is_ok(), "the replay never stopped");
    // Eight batches of 2.1 s each: at least 16.8 s when each one is waited out.
    assert!(
        took < Duration::from_secs(10),
        "the replay took {took:?} to stop"
    );
    drop(spool);
    let _reopened = Spool::open(&dir, 1 << 30).unwrap();
    let mut kept = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "seg") {
            kept += read_segment(&path).unwrap().0.len();
        }
    }
    assert_eq!(kept, records, "every record stays in the spool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_record_the_disk_cannot_keep_never_resends_its_segment_each_round() {
    // A record Kafka refuses for good (larger than the producer takes) goes to the rejected
    // file; when the disk will not take it there (here a directory stands in its way; a full
    // disk fails the append the same way), the records of its segment Kafka took must not be
    // sent again round after round.
    use ingest::spool::{Spool, SpoolRecord};
    let topic = unique("t.rejected");
    let kafka = testkit::Kafka::start(std::slice::from_ref(&topic));
    let dir = spool_dir();
    let spool = Spool::open(&dir, 1 << 30).unwrap();
    for (i, size) in [(0, 10), (1, 2_000_000), (2, 10)] {
        let record = SpoolRecord {
            topic: topic.clone(),
            key: format!("o{i}"),
            id: format!("gh:o{i}:1:event.subscribe"),
            value: vec![b'x'; size],
        };
        spool.append(&record).await.unwrap();
    }
    std::fs::create_dir(dir.join("rejected.seg.kept")).unwrap();
    let (stop, replay) = start_replay(&spool, &kafka.brokers(), Duration::from_secs(5));
    assert!(
        eventually(Duration::from_secs(30), || kafka.count(&topic) >= 2).await,
        "the records Kafka takes: {} of 2",
        kafka.count(&topic)
    );
    // Rounds go on meeting the record that cannot be kept.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(kafka.count(&topic), 2, "each record Kafka took once");
    stop.send(true).unwrap();
    replay.await.unwrap();
}

/// The spool's replay to `brokers` as a task (`timeout` the publisher's), and its stop switch.
fn start_replay(
    spool: &std::sync::Arc<ingest::spool::Spool>,
    brokers: &str,
    timeout: Duration,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let publisher = ingest::publish::Publisher::new(brokers, "t", timeout, &[]).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let replay = ingest::spool::replay(spool.clone(), std::sync::Arc::new(publisher), stopped);
    (stop, tokio::spawn(replay))
}
