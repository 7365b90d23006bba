//! The workers end to end: events on Kafka, a real `redis-server`, a fake WeChat API.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use common::*;
use worker::api::{Credentials, WeChat};

const WAIT: Duration = Duration::from_secs(20);

async fn wait_for(what: &str, check: impl FnMut() -> bool) {
    wait_within(WAIT, what, check).await
}

/// A client of the fake WeChat API, caching its tokens in the test's store, as process `owner`.
fn api_client(env: &Env, timeout: Duration, owner: &str) -> WeChat {
    api_client_over(
        env,
        timeout,
        std::sync::Arc::clone(&env.store.tokens),
        owner,
    )
}

/// [`api_client`] caching its tokens in `tokens`.
fn api_client_over(
    env: &Env,
    timeout: Duration,
    tokens: std::sync::Arc<dyn store::effects::TokenCache>,
    owner: &str,
) -> WeChat {
    WeChat::new(&env.wechat.base(), timeout, tokens, owner.into()).unwrap()
}

fn credentials(appid: &str) -> Credentials {
    Credentials::account(appid, wechat::accounts::Secret::new("secret"))
}

async fn wait_for_async<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_within_async(WAIT, what, check).await
}

/// A test's Env with one follow of `openid` (gh_a, at 100) on the log.
async fn start_with_follow(openid: &str) -> Env {
    let env = Env::start().await;
    env.produce("subscribe", &[subscribe("gh_a", openid, 100, None)]);
    env
}

/// The location role, running once it has dead-lettered one record (`what`).
async fn dead_letter_one_location(env: &Env, what: &str) -> Running {
    let worker = env.spawn(&["--role", "location"]);
    let dlq = env.dlq("location");
    wait_for(what, || env.kafka.count(&dlq) == 1).await;
    worker
}

/// The worker binary with its admin listener on `port`, logging (`info`, and `envs`) to a
/// pipe the test reads once it has stopped.
fn spawn_logging_to_pipe(env: &Env, port: u16, envs: &[(&str, &str)]) -> std::process::Child {
    env.command()
        .env("WORKER_ADMIN_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_effect_happens() {
    let env = Env::start().await;
    env.store.bind("leaver", "user-9").await;
    env.produce(
        "subscribe",
        &[
            subscribe("gh_a", "plain", 100, None),
            subscribe("gh_a", "poster", 101, Some("42")),
        ],
    );
    env.produce("subscribe", &[subscribe("gh_a", "leaver", 90, None)]);
    env.produce("unsubscribe", &[unsubscribe("gh_a", "leaver", 110)]);
    env.produce(
        "location",
        &[location("gh_a", "walker", 120, 23.137466, 113.352425)],
    );
    let worker = env.spawn(&[
        "--welcome-scene-texts",
        r#"{"42": "Welcome, poster reader"}"#,
    ]);

    wait_for("three welcomes", || env.wechat.sends().len() == 3).await;
    let sends = env.wechat.sends();
    assert!(
        sends.contains(&("poster".into(), "Welcome, poster reader".into())),
        "{sends:?}"
    );
    assert!(
        sends
            .iter()
            .any(|(to, text)| to == "plain" && text.contains("Thanks for following")),
        "{sends:?}"
    );
    wait_for_async("unbinding", || async {
        env.store.binding("leaver").await.is_none()
    })
    .await;
    let leaver = env.store.user("leaver").await.unwrap();
    assert!(!leaver.subscribed);
    assert_eq!(leaver.updated_at, 110);
    // The unbind role takes the subscribe and unsubscribe topics concurrently: the leaver's
    // unsubscribe says nothing about when the poster's subscribe was applied.
    wait_for_async("the poster's subscription", || async {
        env.store.user("poster").await.is_some()
    })
    .await;
    let poster = env.store.user("poster").await.unwrap();
    assert!(poster.subscribed);
    assert_eq!(poster.scene, "42");
    wait_for_async("location", || async {
        env.store.latest_location("walker").await.is_some()
    })
    .await;
    let latest = env.store.latest_location("walker").await.unwrap();
    assert_eq!(
        (latest.latitude, latest.longitude, latest.created_at),
        (23.137466, 113.352425, 120)
    );
    assert_eq!(env.store.location_history("walker").await.len(), 1);
    assert_eq!(env.wechat.token_fetches(), [false], "one token, cached");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_created_at_never_wins_last_write_wins() {
    // A forged (or pre-check) unsubscribe stamped in year 2255 must not make every later
    // event of its user stale: it is dead-lettered, never applied.
    let env = Env::start().await;
    env.store.bind("victim", "user-1").await;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    env.produce(
        "unsubscribe",
        &[unsubscribe("gh_a", "victim", 9_000_000_000)],
    );
    env.produce("subscribe", &[subscribe("gh_a", "victim", t, None)]);
    env.produce(
        "location",
        &[
            location("gh_a", "walker", 9_000_000_000, 1.0, 2.0),
            location("gh_a", "walker", t, 3.0, 4.0),
        ],
    );
    let worker = env.spawn(&["--role", "unbind,location"]);
    wait_for("the dead letters", || {
        env.kafka.count(&env.dlq("unbind")) == 1 && env.kafka.count(&env.dlq("location")) == 1
    })
    .await;
    wait_for_async("the subscribe", || async {
        env.store
            .user("victim")
            .await
            .is_some_and(|u| u.subscribed && u.updated_at == t)
    })
    .await;
    assert_eq!(env.store.binding("victim").await.as_deref(), Some("user-1"));
    wait_for_async("the location", || async {
        env.store
            .latest_location("walker")
            .await
            .is_some_and(|l| l.created_at == t && l.latitude == 3.0)
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_events_change_nothing_more() {
    let env = Env::start().await;
    let welcome = subscribe("gh_a", "twice", 100, None);
    // The same event three times on the log (a producer retry, a replay).
    env.produce("subscribe", &[welcome.clone(), welcome.clone(), welcome]);
    let worker = env.spawn(&[]);
    wait_for("a welcome", || env.wechat.sends_to("twice") >= 1).await;
    worker.stop().await;
    // And once more after a restart, from a consumer group that starts again.
    env.produce(
        "subscribe",
        &[
            subscribe("gh_a", "twice", 100, None),
            subscribe("gh_a", "marker", 101, None),
        ],
    );
    let worker = env.spawn(&[]);
    wait_for("the marker's welcome", || {
        env.wechat.sends_to("marker") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.wechat.sends_to("twice"),
        1,
        "one welcome per subscribe event"
    );
    // The unbind role has its own group: wait for it too.
    wait_for_async("the subscription", || async {
        env.store.user("twice").await.is_some()
    })
    .await;
    assert!(env.store.user("twice").await.unwrap().subscribed);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_older_unsubscribe_does_not_undo_a_newer_subscribe() {
    let env = Env::start().await;
    env.produce("subscribe", &[subscribe("gh_a", "back", 200, Some("7"))]);
    // One record at a time, and the marker on back's partition (keyed like it): once the
    // marker is applied, so is back's late unsubscribe.
    let worker = env.spawn(&["--role", "unbind", "--concurrency", "1"]);
    wait_for_async("subscribed", || async {
        env.store.user("back").await.is_some()
    })
    .await;
    env.store.bind("back", "user-1").await;
    let (_, marker) = unsubscribe("gh_a", "marker", 1);
    env.produce(
        "unsubscribe",
        &[unsubscribe("gh_a", "back", 150), ("back".into(), marker)],
    );
    wait_for_async("the marker", || async {
        env.store.user("marker").await.is_some()
    })
    .await;
    let state = env.store.user("back").await.unwrap();
    assert!(state.subscribed, "still subscribed");
    assert_eq!((state.updated_at, state.scene.as_str()), (200, "7"));
    assert_eq!(
        env.store.binding("back").await.as_deref(),
        Some("user-1"),
        "binding kept"
    );
    assert!(
        env.wechat.sends().is_empty(),
        "the unbind role sends nothing"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_once_and_the_message_sent_once() {
    let env = start_with_follow("first").await;
    let worker = env.spawn(&["--role", "welcome"]);
    wait_for("the first welcome", || env.wechat.sends_to("first") == 1).await;
    // WeChat expires the token mid-stream.
    env.wechat.expire_tokens();
    env.produce(
        "subscribe",
        &[
            subscribe("gh_a", "second", 101, None),
            subscribe("gh_a", "third", 102, None),
        ],
    );
    wait_for("two more welcomes", || env.wechat.sends().len() == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.wechat.sends_to("second"), 1);
    assert_eq!(env.wechat.sends_to("third"), 1);
    let fetches = env.wechat.token_fetches();
    assert_eq!(
        fetches.len(),
        2,
        "one refresh, shared by both sends: {fetches:?}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_share_one_token_and_send_each_welcome_once() {
    let env = Env::start().await;
    let users: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
    let records: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, u)| subscribe("gh_a", u, 1000 + i as i64, None))
        .collect();
    env.produce("subscribe", &records);
    let mut a = env.spawn_process(&["--role", "welcome"]);
    let mut b = env.spawn_process(&["--role", "welcome"]);
    wait_for("40 welcomes", || env.wechat.sends().len() >= 40).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for user in &users {
        assert_eq!(env.wechat.sends_to(user), 1, "{user}");
    }
    assert_eq!(
        env.wechat.token_fetches().len(),
        1,
        "one token for both processes"
    );
    let _ = a.kill();
    let _ = b.kill();
    let _ = a.wait();
    let _ = b.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing() {
    let env = Env::start().await;
    env.wechat.set_send_delay(Duration::from_millis(150));
    let n = 30;
    let subs: Vec<_> = (0..n)
        .map(|i| subscribe("gh_a", &format!("k{i}"), 1000 + i, None))
        .collect();
    let locs: Vec<_> = (0..n)
        .map(|i| location("gh_a", &format!("k{i}"), 1000 + i, 10.0, 20.0))
        .collect();
    env.produce("subscribe", &subs);
    env.produce("location", &locs);
    let mut child = env.spawn_process(&["--concurrency", "4"]);
    wait_for("a few welcomes", || env.wechat.sends().len() >= 5).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = env.wechat.sends().len();
    assert!(before < n as usize, "killed mid-batch ({before} sent)");

    let mut child = env.spawn_process(&["--concurrency", "4"]);
    wait_for("every welcome", || {
        (0..n).all(|i| env.wechat.sends_to(&format!("k{i}")) >= 1)
    })
    .await;
    for i in 0..n {
        let openid = format!("k{i}");
        wait_for_async("every state", || async {
            env.store.user(&openid).await.is_some_and(|u| u.subscribed)
        })
        .await;
        wait_for_async("every location", || async {
            env.store.latest_location(&openid).await.is_some()
        })
        .await;
    }
    // Only sends that were in flight at the kill may repeat.
    let repeats: usize = (0..n)
        .map(|i| env.wechat.sends_to(&format!("k{i}")) - 1)
        .sum();
    assert!(
        repeats <= 4,
        "{repeats} repeated sends, with 4 in flight at most"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_failing_records_reach_the_dead_letter_topic() {
    let env = Env::start().await;
    // An errcode the worker does not know: tried WORKER_MAX_ATTEMPTS times, then
    // dead-lettered. (An outage, -1, waits instead: tests/resilience.rs.)
    env.wechat.fail("always_busy", 99999, u32::MAX);
    env.wechat.fail("gone", 43004, u32::MAX);
    env.wechat.fail("flaky", -1, 1);
    env.kafka.produce(
        &env.topic("subscribe"),
        &[("junk", b"{not json".as_slice())],
    );
    env.produce(
        "subscribe",
        &[
            subscribe("gh_a", "always_busy", 1, None),
            subscribe("gh_a", "gone", 2, None),
            subscribe("gh_a", "flaky", 3, None),
            subscribe("gh_a", "fine", 4, None),
        ],
    );
    env.kafka.produce(&env.topic("location"), &[("nowhere", br#"{"id":"x","account":"gh_a","openid":"nowhere","created_at":1,"received_at":"t","kind":"event","type":"location","extra":{}}"#.as_slice())]);
    let worker = env.spawn(&[]);
    let dlq = env.dlq("welcome");
    wait_for("two welcome dead letters", || env.kafka.count(&dlq) == 2).await;
    wait_for("the location dead letter", || {
        env.kafka.count(&env.dlq("location")) == 1
    })
    .await;
    wait_for("the fine and flaky welcomes", || {
        env.wechat.sends_to("fine") == 1 && env.wechat.sends_to("flaky") == 1
    })
    .await;
    let letters = env.kafka.read(&dlq, 2);
    let mut errors: Vec<(Option<String>, String)> = letters
        .iter()
        .map(|r| {
            (
                r.key.clone(),
                r.header("error").unwrap_or_default().to_owned(),
            )
        })
        .collect();
    errors.sort();
    assert_eq!(errors[0].0.as_deref(), Some("always_busy"));
    assert!(errors[0].1.contains("errcode 99999"), "{errors:?}");
    assert_eq!(errors[1].0.as_deref(), Some("junk"));
    assert!(errors[1].1.contains("not a wxpipe event"), "{errors:?}");
    assert!(letters
        .iter()
        .all(|r| r.header("source_topic") == Some(env.topic("subscribe").as_str())));
    // A permanent refusal is logged and skipped, not dead-lettered, and not retried.
    assert_eq!(env.wechat.sends_to("gone"), 0);
    // The unbind role handled every valid subscribe anyway, and skipped nothing it could do.
    assert_eq!(
        env.kafka.count(&env.dlq("unbind")),
        1,
        "only the junk record"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_appsecret_welcomes_are_logged_not_sent() {
    let env = start_with_follow("quiet").await;
    let mut config = env.config(&[]);
    config.shared.appsecret = None;
    let worker = run(config);
    wait_for_async("the subscription state", || async {
        env.store.user("quiet").await.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.wechat.sends().is_empty());
    assert!(env.wechat.token_fetches().is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_reports_health_and_metrics() {
    let env = start_with_follow("counted").await;
    let port = free_port();
    let child = spawn_logging_to_pipe(&env, port, &[("LOG_FORMAT", "json")]);
    wait_for("the welcome", || env.wechat.sends_to("counted") == 1).await;
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://127.0.0.1:{port}{path}")).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    let has = |needle: &str| {
        metrics
            .lines()
            .any(|l| l.contains(needle) && !l.starts_with('#'))
    };
    assert!(
        has("wxpipe_worker_events_total{") && has("role=\"welcome\""),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wxpipe_wechat_api_calls_total")
                && l.contains("api=\"custom_send\"")
                && l.contains("errcode=\"0\"")),
        "{metrics}"
    );
    assert!(has("wxpipe_worker_effect_seconds_bucket"));

    // SIGTERM: a clean exit; the logs were JSON lines, without OpenIDs in clear.
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", output.status);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.lines().count() > 0);
    for line in stdout.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value.get("level").is_some(), "{line}");
        assert!(!line.contains("counted"), "an OpenID in clear: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_kafka_is_down_stops_the_worker_promptly() {
    let env = Env::start().await;
    let Some(mock) = env.kafka.mock_cluster() else {
        return; // a real broker cannot be taken down from here
    };
    env.produce(
        "subscribe",
        &[subscribe("gh_a", "before-outage", 100, None)],
    );
    // The consumer settings a deployment has (the test default shortens the session timeout).
    let mut child = env
        .command()
        .env("KAFKA_CONSUMER_CONFIG", "")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the welcome", || env.wechat.sends_to("before-outage") == 1).await;

    mock.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The final commit and the group leave cannot reach Kafka: they are given up on, and
    // what was not committed is redelivered to the next worker (at least once).
    let status = testkit::terminate(&mut child, Duration::from_secs(15))
        .await
        .expect("the worker stops within 15 s of SIGTERM while Kafka is down");
    assert!(status.success(), "{status}");
    let _ = mock.broker_up(1);
}

#[tokio::test]
async fn blank_kafka_brokers_refuse_to_start() {
    let mut config = worker::Config::defaults();
    config.shared.kafka_brokers = Some(" ".into());
    let started = worker::run(config, std::future::pending());
    let error = tokio::time::timeout(Duration::from_secs(10), started)
        .await
        .expect("refused at once, not run")
        .unwrap_err();
    assert!(matches!(error, worker::StartError::NoBrokers), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_counts_what_is_not_done_and_falls_to_zero() {
    let env = Env::start().await;
    // One record at a time, 0.8 s each (below the API timeout): the backlog drains for ~4 s.
    env.wechat.set_send_delay(Duration::from_millis(800));
    let events: Vec<_> = (0..5)
        .map(|n| subscribe("gh_a", &format!("lagging-{n}"), 100 + n, None))
        .collect();
    env.produce("subscribe", &events);
    let worker = env.spawn(&["--role", "welcome", "--concurrency", "1"]);
    let topic = env.topic("subscribe");
    let labels = [("role", "welcome"), ("topic", topic.as_str())];
    let lag = || {
        let metrics = ops::prometheus().render();
        testkit::metric(&metrics, "wxpipe_worker_consumer_lag", &labels)
    };
    wait_for("the backlog as lag", || lag().is_some_and(|l| l >= 1.0)).await;
    wait_for("the lag back to 0", || lag() == Some(0.0)).await;
    assert_eq!(env.wechat.sends().len(), 5);
    worker.stop().await;
}

/// Many tasks of two processes (two clients with their own lock owners) asking for a token at
/// once, round after round: each round fetches exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_token_requests_fetch_one_token_per_round() {
    let env = Env::start().await;
    let client = |owner: &str| api_client(&env, Duration::from_secs(2), owner);
    let (a, b) = (client("process-a"), client("process-b"));
    let creds = credentials("wxrace");
    for round in 1..=20 {
        let asks = (0..16).map(|n| {
            let client = if n % 2 == 0 { &a } else { &b };
            client.token(&creds)
        });
        for token in futures_util::future::join_all(asks).await {
            token.unwrap();
        }
        assert_eq!(env.wechat.token_fetches().len(), round, "round {round}");
        // The cached token expires: the next round must fetch again, once.
        env.store
            .tokens
            .drop_token(
                "wxrace",
                &env.store.tokens.token("wxrace").await.unwrap().unwrap(),
            )
            .await
            .unwrap();
    }
}

/// A withdrawal forgets the shared cache's token even when this process remembers an older
/// one (`MemoTokens`, as the worker runs): the token another process cached meanwhile goes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_token_clears_the_shared_cache_past_this_processs_memory() {
    let env = Env::start().await;
    let shared = std::sync::Arc::clone(&env.store.tokens);
    let memo = worker::tokens::MemoTokens::remembering(
        std::sync::Arc::clone(&shared),
        Duration::from_secs(60),
    );
    let client = api_client_over(&env, Duration::from_secs(2), std::sync::Arc::new(memo), "p");
    let creds = credentials("wxgone");
    let ttl = Duration::from_secs(600);
    shared.set_token("wxgone", "T1", ttl).await.unwrap();
    assert_eq!(client.token(&creds).await.unwrap(), "T1");
    // Another process refreshed it; this one still remembers T1.
    shared.set_token("wxgone", "T2", ttl).await.unwrap();
    client.forget_token(&creds).await.unwrap();
    assert_eq!(
        shared.token("wxgone").await.unwrap(),
        None,
        "nothing cached"
    );
    assert!(env.wechat.token_fetches().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_larger_than_a_default_producer_takes_is_dead_lettered() {
    // The consumer reads a 1,010,000-byte record; the dead-letter producer's default limit
    // is 1,000,000, which stalled the partition forever.
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let env = Env::start().await;
    let big = vec![b'x'; 1_010_000];
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", env.kafka.brokers())
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    producer
        .send(
            BaseRecord::to(&env.topic("location"))
                .key("big")
                .payload(&big),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    env.produce("location", &[location("gh_a", "after_big", 120, 1.0, 2.0)]);
    let worker = dead_letter_one_location(&env, "the big record dead-lettered").await;
    wait_for_async("the next record's effect", || async {
        env.store.latest_location("after_big").await.is_some()
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dead_letter_write_makes_the_worker_unready_until_it_succeeds() {
    // A record that fails for its own data (a wrong type at its history key: not an outage)
    // must go to the dead-letter topic, which Kafka refuses for a while: the worker says so
    // in /readyz instead of stalling silently.
    let env = Env::start().await;
    redis::cmd("SET")
        .arg(format!(
            "{}:location_history:{{gh_a:stuck}}",
            env.key_prefix
        ))
        .arg("not a sorted set")
        .exec(&mut env.redis.conn())
        .unwrap();
    env.produce("location", &[location("gh_a", "stuck", 120, 1.0, 2.0)]);
    let port = free_port();
    let mut child = env
        .command()
        .env("WORKER_ROLES", "location")
        .env("WORKER_MAX_ATTEMPTS", "6")
        .env("WORKER_ADMIN_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Up, in its group and the record fetched (its six attempts take over 10 s), then Kafka
    // goes away.
    wait_for_async("the admin port", || async { ready(port).await.is_some() }).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mock = env.kafka.mock_cluster().unwrap();
    mock.broker_down(1).unwrap();
    let said = unready_for(port, "dead-letter", Duration::from_secs(60)).await;
    assert!(
        said.is_some(),
        "readiness never named the failing dead-letter write"
    );
    mock.broker_up(1).unwrap();
    let dlq = env.dlq("location");
    wait_for("the dead letter written", || env.kafka.count(&dlq) == 1).await;
    wait_for_async("readiness no longer blaming dead letters", || async {
        ready(port)
            .await
            .is_some_and(|(_, body)| !body.contains("dead-letter"))
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_settings_reach_every_client_and_bad_ones_stop_the_start() {
    let settings = worker::consume::ConsumerSettings {
        brokers: "b:9092".into(),
        topic_prefix: "p".into(),
        max_attempts: 1,
        common: vec![
            "security.protocol=sasl_ssl".into(),
            "sasl.mechanism=PLAIN".into(),
        ],
        overrides: vec!["session.timeout.ms=6000".into()],
        dead_letters: Default::default(),
        waits: Default::default(),
        concurrency: 1,
        release_check: false,
    };
    let consumer = settings.consumer_config("g");
    let dead_letter = settings.dead_letter_config();
    for config in [&consumer, &dead_letter] {
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("PLAIN"));
    }
    assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
    // The dead-letter producer takes any record the consumer can read.
    let max: u64 = dead_letter
        .get("message.max.bytes")
        .unwrap()
        .parse()
        .unwrap();
    assert!(max >= 1_000_000_000, "{max}");

    // A setting librdkafka cannot read, or a count of 0, is a clear start-up error naming
    // it, for the live roles and for `rebuild` and `redrive` alike.
    let env = Env::start().await;
    for (setting, value) in [
        ("KAFKA_CONFIG", "security.protocol"),
        ("KAFKA_CONSUMER_CONFIG", "fetch.wait.max.ms"),
        ("WORKER_CONCURRENCY", "0"),
        ("WORKER_MAX_ATTEMPTS", "0"),
    ] {
        for args in [&[][..], &["rebuild", "--role", "location"]] {
            let mut command = env.command();
            command.env(setting, value).args(args);
            let out = testkit::output_within(&mut command, Duration::from_secs(60))
                .await
                .unwrap_or_else(|| panic!("{setting}={value} {args:?}: still running"));
            assert_eq!(out.status.code(), Some(2), "{setting}={value} {args:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(setting), "{stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_off_the_globe_is_poison_with_no_effect() {
    // Longitude 500: GEOADD refuses it, and Redis keeps what a script wrote before the error;
    // the coordinates are checked before any write.
    let env = Env::start().await;
    env.produce("location", &[location("gh_a", "lost", 120, 23.1, 500.0)]);
    env.produce("location", &[location("gh_a", "lost", 110, 23.2, 113.0)]);
    let worker = dead_letter_one_location(&env, "the bad location dead-lettered").await;
    wait_for_async("the older, valid location applied", || async {
        env.store
            .latest_location("lost")
            .await
            .is_some_and(|l| l.created_at == 110)
    })
    .await;
    let history = env.store.location_history("lost").await;
    assert_eq!(history.len(), 1, "{history:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_property_librdkafka_refuses_stops_the_start_and_a_clean_stop_raises_no_alarm() {
    let env = Env::start().await;
    let mut command = env.command();
    command.env("KAFKA_CONSUMER_CONFIG", "no.such.property=1");
    let out = testkit::output_within(&mut command, Duration::from_secs(60))
        .await
        .expect("refused at once, not running");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("KAFKA_CONSUMER_CONFIG") && stderr.contains("no.such.property"),
        "{stderr}"
    );

    // Nothing consumed, then SIGTERM: no "final commit failed" alarm (NoOffset is not one).
    let port = free_port();
    let mut child = spawn_logging_to_pipe(&env, port, &[("NO_COLOR", "1")]);
    wait_for_async("ready", || async {
        ready(port).await.is_some_and(|(status, _)| status == 200)
    })
    .await;
    // In the group, with its partitions assigned.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = testkit::terminate(&mut child, Duration::from_secs(20))
        .await
        .expect("exited after SIGTERM");
    assert!(status.success(), "{status}");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut log).unwrap();
    assert!(log.contains("worker stopped"), "{log}");
    assert!(!log.contains("final commit failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_api_just_rejected_is_never_cached() {
    // WeChat keeps answering the refused token, even to a forced refresh: caching it would
    // make every send fail until it expires.
    let env = Env::start().await;
    env.wechat.state.lock().unwrap().stuck_token = Some("TOKEN-STUCK".into());
    let client = api_client(&env, Duration::from_secs(2), "process-a");
    let creds = credentials("wxstuck");
    assert!(client.send_text(&creds, "o1", "hi").await.is_err());
    assert_eq!(
        env.wechat.token_fetches(),
        [false, false, true],
        "a fetch, then on 42001 a normal and a forced one"
    );
    assert_ne!(
        env.store.tokens.token("wxstuck").await.unwrap().as_deref(),
        Some("TOKEN-STUCK"),
        "the rejected token is not cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_level_refusal_is_never_recorded_as_sent() {
    // 48001 (API not authorised) concerns the account, not the user: once the configuration
    // is fixed the welcome must still go out, so it is held (the held-records metric says so,
    // for its account), is never dead-lettered, and is never marked sent. The process stays
    // ready: one account's configuration is not the worker's health.
    let env = Env::start().await;
    env.wechat.fail("refused", 48001, u32::MAX);
    let (key, value) = subscribe("gh_a", "refused", 100, None);
    let id = schemas::Event::from_json(&value).unwrap().id;
    env.produce("subscribe", &[(key, value)]);
    let port = free_port();
    let admin = format!("127.0.0.1:{port}");
    let worker = env.spawn(&["--role", "welcome", "--admin-listen", &admin]);
    wait_for_async("the held-records metric to name the account", || async {
        // Until the admin listener is up, ready() is None.
        ready(port).await.is_some()
            && testkit::metric(
                &metrics(port).await,
                "wxpipe_worker_held_records",
                &[("role", "welcome"), ("account", "gh_a")],
            ) == Some(1.0)
    })
    .await;
    assert_eq!(ready(port).await.map(|(status, _)| status), Some(200));
    // Past the attempts that used to dead-letter it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let dlq = env.dlq("welcome");
    assert_eq!(env.kafka.count(&dlq), 0);
    assert_eq!(
        env.store
            .welcome
            .begin_send(&id, "checker", Duration::from_millis(1))
            .await
            .unwrap(),
        store::Lease::Claimed,
        "not recorded as sent"
    );
    // The account fixed: the welcome goes out, once.
    env.wechat.fail("refused", 48001, 0);
    wait_for("the welcome", || env.wechat.sends_to("refused") == 1).await;
    assert_eq!(env.kafka.count(&dlq), 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_send_keeps_its_lease_and_the_welcome_goes_out_once() {
    // Every answer slow (0.95 s, the timeout being 1 s) and the first token refused: one send
    // takes a fetch, a post, a refresh (a fetch, then a forced one) and a second post, about
    // 4.75 s, past the old lease of twice the timeout plus 2 s. The same event twice on the
    // topic: the second handler must wait for the first, not send again.
    let env = Env::start().await;
    env.wechat.set_send_delay(Duration::from_millis(950));
    env.wechat.set_token_delay(Duration::from_millis(950));
    env.wechat.refuse_token("TOKEN-1");
    let welcome = subscribe("gh_a", "slow", 100, None);
    env.produce("subscribe", &[welcome.clone(), welcome]);
    let worker = env.spawn(&["--role", "welcome", "--concurrency", "4"]);
    wait_for("the welcome", || env.wechat.sends_to("slow") >= 1).await;
    // Long enough for a second handler that took over an expired lease to send too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(env.wechat.sends_to("slow"), 1, "{:?}", env.wechat.sends());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_lock_outlasts_the_slowest_fetch() {
    // Two processes find their cached token refused at once. The one that takes the fetch
    // lock needs a normal and a forced fetch, 5.5 s each (the API timeout being 6 s): 11 s,
    // past a fixed 10 s lock. The other must wait for its token, not fetch as well.
    let env = Env::start().await;
    env.wechat.set_token_delay(Duration::from_millis(5500));
    env.wechat.refuse_token("TOKEN-1");
    env.store
        .tokens
        .set_token("wxslow", "TOKEN-1", Duration::from_secs(600))
        .await
        .unwrap();
    let creds = credentials("wxslow");
    let client = |owner: &str| api_client(&env, Duration::from_secs(6), owner);
    let (a, b) = (client("process-a"), client("process-b"));
    let (sent_a, sent_b) = tokio::join!(
        a.send_text(&creds, "oa", "hi"),
        b.send_text(&creds, "ob", "hi")
    );
    sent_a.unwrap();
    sent_b.unwrap();
    assert_eq!(
        env.wechat.token_fetches(),
        [false, true],
        "one process fetched (a normal call, then a forced one); the other waited"
    );
}

/// A token cache that fails or stalls chosen calls, at the moment a fault is most harmful:
/// the look at the cache after the fetch lock is taken, or the unlock.
#[derive(Debug)]
struct FaultyTokens {
    inner: std::sync::Arc<dyn store::effects::TokenCache>,
    /// Set by a successful `lock_token`: the look at the cache after it is the one faulted.
    locked: AtomicBool,
    /// The next `token` after the lock fails (once).
    fail_after_lock: AtomicBool,
    /// Every `token` after the lock first stalls for a minute (a Redis that answers late).
    stall_after_lock: AtomicBool,
    fail_unlock: AtomicBool,
    /// The next `lock_token` takes the lock, then fails as if its answer were lost.
    lose_lock_answer: AtomicBool,
}

impl FaultyTokens {
    /// The test's own token cache, with no fault set yet.
    fn over(env: &Env) -> std::sync::Arc<FaultyTokens> {
        std::sync::Arc::new(FaultyTokens {
            inner: std::sync::Arc::clone(&env.store.tokens),
            locked: AtomicBool::new(false),
            fail_after_lock: AtomicBool::new(false),
            stall_after_lock: AtomicBool::new(false),
            fail_unlock: AtomicBool::new(false),
            lose_lock_answer: AtomicBool::new(false),
        })
    }

    fn fault() -> store::StoreError {
        store::StoreError::Timeout
    }
}

impl store::effects::TokenCache for FaultyTokens {
    fn token<'a>(&'a self, appid: &'a str) -> store::Fut<'a, Option<String>> {
        Box::pin(async move {
            if self.locked.load(SeqCst) {
                if self.stall_after_lock.load(SeqCst) {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                if self.fail_after_lock.swap(false, SeqCst) {
                    return Err(FaultyTokens::fault());
                }
            }
            self.inner.token(appid).await
        })
    }

    fn set_token<'a>(
        &'a self,
        appid: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> store::Fut<'a, ()> {
        self.inner.set_token(appid, token, ttl)
    }

    fn drop_token<'a>(&'a self, appid: &'a str, token: &'a str) -> store::Fut<'a, ()> {
        self.inner.drop_token(appid, token)
    }

    fn lock_token<'a>(
        &'a self,
        appid: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> store::Fut<'a, bool> {
        Box::pin(async move {
            let locked = self.inner.lock_token(appid, owner, ttl).await?;
            if self.lose_lock_answer.swap(false, SeqCst) {
                return Err(FaultyTokens::fault());
            }
            self.locked.store(locked, SeqCst);
            Ok(locked)
        })
    }

    fn unlock_token<'a>(&'a self, appid: &'a str, owner: &'a str) -> store::Fut<'a, ()> {
        if self.fail_unlock.swap(false, SeqCst) {
            return Box::pin(async { Err(FaultyTokens::fault()) });
        }
        self.inner.unlock_token(appid, owner)
    }
}

/// Process A's client (3 s timeout) over a [`FaultyTokens`] with the `fault` chosen set,
/// and that cache, to set more faults on.
fn client_with_fault(
    env: &Env,
    fault: fn(&FaultyTokens) -> &AtomicBool,
) -> (std::sync::Arc<FaultyTokens>, WeChat) {
    let tokens = FaultyTokens::over(env);
    fault(&tokens).store(true, SeqCst);
    let client = api_client_over(env, Duration::from_secs(3), tokens.clone(), "process-a");
    (tokens, client)
}

/// Whether another process ("process-b") can take `appid`'s fetch lock now (it lets it go
/// again at once).
async fn lock_is_free(env: &Env, appid: &str) -> bool {
    let tokens = &env.store.tokens;
    let free = tokens
        .lock_token(appid, "process-b", Duration::from_secs(10))
        .await
        .unwrap();
    if free {
        tokens.unlock_token(appid, "process-b").await.unwrap();
    }
    free
}

/// A Redis call that fails after the fetch lock is taken releases the lock: another process
/// takes it at once instead of waiting out its lease (8 s here). An unlock that fails keeps
/// the token that was fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_lock_is_released_whatever_fails_after_it_is_taken() {
    let env = Env::start().await;
    let (faulty, a) = client_with_fault(&env, |tokens| &tokens.fail_after_lock);
    let creds = credentials("wxfault");
    let failed = a.token(&creds).await;
    assert!(
        failed.is_err(),
        "the cache failed after the lock: {failed:?}"
    );
    assert!(env.wechat.token_fetches().is_empty());
    // The lock is free now, not held for its lease: another process takes it.
    assert!(
        lock_is_free(&env, "wxfault").await,
        "the fetch lock was left held"
    );

    // The lock is taken but its answer lost: released too.
    faulty.lose_lock_answer.store(true, SeqCst);
    let failed = a.token(&creds).await;
    assert!(failed.is_err(), "the lock's answer was lost: {failed:?}");
    assert!(!faulty.lose_lock_answer.load(SeqCst));
    assert!(
        lock_is_free(&env, "wxfault").await,
        "the fetch lock taken unanswered was left held"
    );

    // The unlock fails: the token fetched is still handed out (and cached).
    faulty.fail_unlock.store(true, SeqCst);
    let token = a.token(&creds).await.unwrap();
    assert_eq!(env.wechat.token_fetches().len(), 1);
    assert_eq!(
        env.store.tokens.token("wxfault").await.unwrap().as_deref(),
        Some(token.as_str())
    );
    assert!(!faulty.fail_unlock.load(SeqCst), "the unlock was tried");
}

/// A token fetch cut while it holds the fetch lock (a welcome's send cut at its bound: its
/// Redis calls are not in the token's share of that bound, so a slow Redis gets it there)
/// releases the lock: other processes do not wait out its lease (9 s here) for a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_fetch_cut_while_it_holds_the_lock_releases_it() {
    let env = Env::start().await;
    let (stalling, a) = client_with_fault(&env, |tokens| &tokens.stall_after_lock);
    let creds = credentials("wxcut");
    let cut = tokio::time::timeout(Duration::from_secs(1), a.token(&creds)).await;
    assert!(cut.is_err(), "the fetch was cut: {cut:?}");
    assert!(stalling.locked.load(SeqCst), "cut while it held the lock");
    let mut free = false;
    for _ in 0..40 {
        if lock_is_free(&env, "wxcut").await {
            free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(free, "the fetch lock was left held for its lease");
}
