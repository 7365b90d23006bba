//! The workers under lag and outages: a re-follow wins over a lagging unsubscribe, and a
//! dependency that fails for a while holds records back instead of dead-lettering them.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const WAIT: Duration = Duration::from_secs(30);

async fn wait_for(what: &str, check: impl FnMut() -> bool) {
    wait_within(WAIT, what, check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_unsubscribe_never_deletes_the_binding_of_a_user_who_followed_again() {
    // Twenty users unfollowed (t=200), followed again (t=300), and the host bound them anew
    // (t=305). The subscribe topic lags (thousands of records before the re-follows); the
    // unsubscribe topic does not. Every binding must survive.
    let env = Env::start().await;
    let users: Vec<String> = (0..20).map(|n| format!("back{n}")).collect();
    let filler: Vec<_> = (0..3000)
        .map(|n| subscribe("gh_a", &format!("other{n}"), 100, None))
        .collect();
    env.produce("subscribe", &filler);
    let refollows: Vec<_> = users
        .iter()
        .map(|u| subscribe("gh_a", u, 300, None))
        .collect();
    env.produce("subscribe", &refollows);
    let unsubscribes: Vec<_> = users.iter().map(|u| unsubscribe("gh_a", u, 200)).collect();
    // And one user who only unfollowed: their binding goes.
    let mut unsubscribes = unsubscribes;
    unsubscribes.push(unsubscribe("gh_a", "gone", 200));
    env.produce("unsubscribe", &unsubscribes);
    for user in users.iter().chain([&"gone".to_owned()]) {
        env.store.bind(user, "host-user").await;
    }

    let worker = env.spawn(&["--role", "unbind"]);
    let topic = env.topic("unsubscribe");
    wait_for("every unsubscribe handled and committed", || {
        env.kafka.committed("wxpipe-unbind", &topic) == 21
    })
    .await;
    let mut lost = Vec::new();
    for user in &users {
        let state = env.store.user(user).await.unwrap();
        assert!(state.subscribed, "{user}: {state:?}");
        if env.store.binding(user).await.is_none() {
            lost.push(user.clone());
        }
    }
    assert!(lost.is_empty(), "bindings lost: {lost:?}");
    assert_eq!(env.store.binding("gone").await, None);

    // The unsubscribe redelivered, after the host bound that user again (say, on the web):
    // it changes nothing.
    env.store.bind("gone", "web-user").await;
    env.produce("unsubscribe", &[unsubscribe("gh_a", "gone", 200)]);
    wait_for("the redelivery handled", || {
        env.kafka.committed("wxpipe-unbind", &topic) == 22
    })
    .await;
    assert_eq!(env.store.binding("gone").await.as_deref(), Some("web-user"));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_topics_idle_an_unsubscribe_takes_effect_at_once() {
    let env = Env::start().await;
    env.store.bind("leaver", "u").await;
    let worker = env.spawn(&["--role", "unbind"]);
    env.produce("subscribe", &[subscribe("gh_a", "leaver", 100, None)]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.produce("unsubscribe", &[unsubscribe("gh_a", "leaver", 200)]);
    let started = std::time::Instant::now();
    let gone = poll(WAIT, Duration::from_millis(50), || async {
        env.store.binding("leaver").await.is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "the binding was never deleted");
    // Not a timing assertion on the machine's speed: the gate must not add its own delay of
    // many seconds (auto-commit is 1 s, the gate looks every 0.1 s).
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_longer_than_the_retries_holds_records_back_and_dead_letters_nothing() {
    // Redis stops answering for 12 s (CLIENT PAUSE), longer than WORKER_MAX_ATTEMPTS=3 with
    // its backoff: unsubscribes and locations must wait, the role say so, and every effect
    // happen once Redis answers, with nothing dead-lettered.
    let env = Env::start().await;
    env.store.bind("leaver", "u").await;
    let port = free_port();
    let admin = format!("127.0.0.1:{port}");
    let worker = env.spawn(&["--role", "unbind,location", "--admin-listen", &admin]);
    // Warm: the roles consume, and readiness is green.
    env.produce("location", &[location("gh_a", "warm", 100, 1.0, 2.0)]);
    wait_for("the warm-up location", || {
        env.has_key("location:{gh_a:warm}")
    })
    .await;

    env.redis.pause(12_000);
    let paused_at = std::time::Instant::now();
    env.produce("unsubscribe", &[unsubscribe("gh_a", "leaver", 200)]);
    env.produce("location", &[location("gh_a", "walker", 150, 3.0, 4.0)]);
    // Readiness names the wait while Redis is paused.
    let within = Duration::from_secs(11).saturating_sub(paused_at.elapsed());
    let said = unready_for(port, "waited", within).await;
    assert!(
        said.is_some(),
        "readiness never said a role waits: {:?}",
        ready(port).await
    );
    // Our own connection would block on the pause too.
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(paused_at.elapsed())).await;
    wait_for("the unsubscribe applied after the stall", || {
        !env.has_key("binding:{gh_a:leaver}")
    })
    .await;
    wait_for("the location stored after the stall", || {
        env.has_key("location:{gh_a:walker}")
    })
    .await;
    for role in ["unbind", "location"] {
        assert_eq!(
            env.kafka.count(&env.dlq(role)),
            0,
            "{role} dead-lettered a record during an outage"
        );
    }
    let metrics = metrics(port).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wxpipe_worker_dependency_wait_seconds_sum")),
        "{metrics}"
    );
    let ready_again = poll(WAIT, Duration::from_millis(200), || async {
        ready(port).await.filter(|(status, _)| *status == 200)
    })
    .await;
    assert!(ready_again.is_some(), "never ready again");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wechat_outage_holds_welcomes_back_until_it_passes() {
    // WeChat answers -1 (system busy) for as long as it likes: the welcome waits, is never
    // dead-lettered nor recorded as sent, and goes out once when WeChat recovers.
    let env = Env::start().await;
    env.wechat.fail("patient", -1, u32::MAX);
    let port = free_port();
    let admin = format!("127.0.0.1:{port}");
    env.produce("subscribe", &[subscribe("gh_a", "patient", 100, None)]);
    let worker = env.spawn(&["--role", "welcome", "--admin-listen", &admin]);
    // Three attempts used to take under 2 s; wait well past them.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let dlq = env.dlq("welcome");
    assert_eq!(env.kafka.count(&dlq), 0, "dead-lettered during an outage");
    let (status, body) = ready(port).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("welcome") && body.contains("errcode -1"),
        "{body}"
    );
    env.wechat.fail("patient", -1, 0);
    wait_for("the welcome sent", || env.wechat.sends_to("patient") == 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.wechat.sends_to("patient"), 1);
    assert_eq!(env.kafka.count(&dlq), 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_while_a_record_waits_leaves_it_for_redelivery() {
    // Redis unreachable: the location waits. A stop then must not commit past it (it was not
    // applied); the next worker, with Redis back, applies it.
    let env = Env::start().await;
    env.produce("location", &[location("gh_a", "later", 100, 1.0, 2.0)]);
    let dead = format!("redis://127.0.0.1:{}/", free_port());
    let worker = env.spawn(&["--role", "location", "--redis-url", &dead]);
    // Past its attempts, then a clean stop (which commits what is done).
    tokio::time::sleep(Duration::from_secs(6)).await;
    worker.stop().await;
    let topic = env.topic("location");
    assert_eq!(env.kafka.committed("wxpipe-location", &topic), 0);
    assert_eq!(env.kafka.count(&env.dlq("location")), 0);

    let worker = env.spawn(&["--role", "location"]);
    wait_for("the location applied by the next worker", || {
        env.has_key("location:{gh_a:later}")
    })
    .await;
    wait_for("its offset committed", || {
        env.kafka.committed("wxpipe-location", &topic) == 1
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_answer_is_lost_is_not_repeated() {
    // WeChat takes the post but answers after the API timeout (1 s): the message may have
    // gone out (here it did), so sending again could send it twice.
    let env = Env::start().await;
    env.wechat.set_send_delay(Duration::from_millis(1500));
    env.produce("subscribe", &[subscribe("gh_a", "unanswered", 100, None)]);
    let worker = env.spawn(&["--role", "welcome"]);
    wait_for("the post", || env.wechat.sends_to("unanswered") >= 1).await;
    // Long enough for several retries, had there been any.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(env.wechat.sends_to("unanswered"), 1);
    assert_eq!(env.kafka.count(&env.dlq("welcome")), 0);
    worker.stop().await;
}

/// Sets Redis's `min-replicas-to-write` (without replicas, 1 refuses every write).
fn min_replicas_to_write(env: &Env, replicas: u32) {
    env.redis
        .config_set("min-replicas-to-write", &replicas.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_refuses_writes_for_want_of_replicas_is_an_outage() {
    // NOREPLICAS (min-replicas-to-write not met) refuses every write: not the record's fault,
    // so the location waits for Redis instead of going to the dead-letter topic.
    let env = Env::start().await;
    min_replicas_to_write(&env, 1);
    env.produce("location", &[location("gh_a", "norep", 100, 1.0, 2.0)]);
    let worker = env.spawn(&["--role", "location"]);
    // Past the three attempts that would have dead-lettered it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let dlq = env.dlq("location");
    assert_eq!(env.kafka.count(&dlq), 0, "dead-lettered during an outage");
    min_replicas_to_write(&env, 0);
    wait_for("the location stored once Redis writes again", || {
        env.has_key("location:{gh_a:norep}")
    })
    .await;
    assert_eq!(env.kafka.count(&dlq), 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_error_page_is_not_a_sent_welcome() {
    // A proxy in front of WeChat answers 502 with an HTML page: the post never reached
    // WeChat, so the welcome is sent once the way is clear, not recorded as sent.
    let env = Env::start().await;
    env.wechat.state.lock().unwrap().bad_gateway = 2;
    env.produce("subscribe", &[subscribe("gh_a", "behind_proxy", 100, None)]);
    let worker = env.spawn(&["--role", "welcome"]);
    wait_for("the welcome", || env.wechat.sends_to("behind_proxy") == 1).await;
    assert_eq!(env.wechat.state.lock().unwrap().bad_gateway, 0);
    worker.stop().await;
}

/// A partition revoked while Kafka refuses the group's commits comes back at the older
/// committed offset: its records are delivered again and their offsets stored again, so the
/// group catches up once commits pass. (When the worker kept a partition's state across a
/// revocation, it never stored below the offset it had stored before, and the group stayed
/// behind for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_back_after_a_refused_commit_is_committed_again() {
    let env = Env::start().await;
    let Some(mock) = env.kafka.mock_cluster() else {
        eprintln!("skipped: refusing commits needs the mock cluster");
        return;
    };
    let users: Vec<String> = (0..40).map(|i| format!("back{i}")).collect();
    let records: Vec<_> = users
        .iter()
        .map(|u| location("gh_a", u, 100, 1.0, 2.0))
        .collect();
    env.produce("location", &records);
    let topic = env.topic("location");
    let refused = RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_COMMIT_OFFSET_SIZE;
    mock.request_errors(RDKafkaApiKey::OffsetCommit, &vec![refused; 100_000]);

    let a = env.spawn_logged(&["--role", "location"]);
    wait_within_async(WAIT, "every location applied", || async {
        for user in &users {
            if env.store.latest_location(user).await.is_none() {
                return false;
            }
        }
        true
    })
    .await;
    // B joins: A's partitions are revoked (the commit refused), and one comes back to A.
    let mut b = env.spawn_process(&["--role", "location"]);
    let a = &a;
    let assigned = |n| move || a.count("partitions assigned") >= n;
    wait_for("A's second assignment", assigned(2)).await;
    // B leaves: both come back to A, at the committed offsets of before (none).
    testkit::terminate(&mut b, Duration::from_secs(20))
        .await
        .expect("B stops");
    wait_for("A's third assignment", assigned(3)).await;
    assert_eq!(
        env.kafka.committed("wxpipe-location", &topic),
        0,
        "every commit was refused"
    );
    mock.clear_request_errors(RDKafkaApiKey::OffsetCommit);
    let caught_up = eventually(WAIT, || {
        env.kafka.committed("wxpipe-location", &topic) == records.len() as i64
    })
    .await;
    assert!(
        caught_up,
        "committed {} of {}; A's log ends:\n{}",
        env.kafka.committed("wxpipe-location", &topic),
        records.len(),
        a.tail(40)
    );
}

/// A child process, killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_there_from_start_and_the_dependency_gauge_follows_redis_unasked() {
    // One role only, and nobody ever asks /readyz: every metric of both binaries is listed
    // from start (dashboards and alerts see a series before the first event), the role's
    // counters at zero, and the background probe notices Redis going away.
    let mut env = Env::start().await;
    let admin = testkit::free_port();
    let mut child = KillOnDrop(
        env.command()
            .env("WORKER_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("RUST_LOG", "error")
            .args(["--role", "location"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let up = poll(WAIT, Duration::from_millis(100), || async {
        let text = metrics_if_up(admin).await?;
        (testkit::metric(&text, "wxpipe_dependency_up", &[("dependency", "redis")]) == Some(1.0))
            .then_some(text)
    })
    .await;
    let text = up.expect("the worker never showed Redis up");
    testkit::assert_described(&text, ops::METRICS.iter().map(|metric| metric.name));
    for outcome in ["done", "skipped", "too_old", "unknown", "dead_lettered"] {
        assert_eq!(
            testkit::metric(
                &text,
                "wxpipe_worker_events_total",
                &[("role", "location"), ("outcome", outcome)]
            ),
            Some(0.0),
            "{outcome}: {text}"
        );
    }
    for (name, labels) in [
        (
            "wxpipe_worker_dead_letter_failures_total",
            &[("role", "location")][..],
        ),
        ("wxpipe_worker_waiting_records", &[("role", "location")][..]),
        ("wxpipe_spool_records_total", &[("op", "appended")][..]),
        ("wxpipe_redis_cluster_reconnects_total", &[][..]),
    ] {
        assert_eq!(
            testkit::metric(&text, name, labels),
            Some(0.0),
            "{name}: {text}"
        );
    }
    assert!(
        !text.contains("role=\"welcome\""),
        "only the roles it runs: {text}"
    );
    env.redis.stop();
    let down = poll(
        Duration::from_secs(12),
        Duration::from_millis(200),
        || async {
            let text = metrics_if_up(admin).await?;
            (testkit::metric(&text, "wxpipe_dependency_up", &[("dependency", "redis")])
                == Some(0.0))
            .then_some(())
        },
    )
    .await;
    child.0.kill().unwrap();
    assert!(down.is_some(), "Redis down was not shown within 12 s");
}
