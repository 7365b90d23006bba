//! The welcome policy, through the real binary: a follow older than `WELCOME_MAX_AGE` is
//! never welcomed; a send whose outcome is unknown is counted and not repeated, unless
//! `WELCOME_RESEND_UNKNOWN` opts into at least once; a send whose worker died holding its
//! lease goes out once the lease runs out.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

async fn wait_for(what: &str, check: impl FnMut() -> bool) {
    wait_within(Duration::from_secs(20), what, check).await;
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The welcome role's count of `outcome` on the admin port, once it shows (within 10 s),
/// and the metrics it was read from.
async fn welcomes_counted(port: u16, outcome: &str) -> (Option<f64>, String) {
    let counted = poll(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || async {
            let metrics = metrics(port).await;
            let labels = [("role", "welcome"), ("outcome", outcome)];
            // Every outcome's series is there from start, at 0: wait for a count.
            testkit::metric(&metrics, "wxpipe_worker_events_total", &labels).filter(|n| *n > 0.0)
        },
    )
    .await;
    (counted, metrics(port).await)
}

/// A worker (admin port, `envs` set) whose first welcome to `openid` goes unanswered:
/// WeChat takes the post but answers after the API timeout (1 s). Returns once it is posted.
async fn an_unanswered_send(openid: &str, envs: &[(&str, &str)]) -> (Env, u16, KillOnDrop) {
    let env = Env::start().await;
    env.wechat.set_send_delay(Duration::from_millis(1500));
    env.produce("subscribe", &[subscribe("gh_a", openid, 100, None)]);
    let port = free_port();
    let child = spawn(&env, port, envs, &[]);
    wait_for("the first post", || env.wechat.sends_to(openid) >= 1).await;
    (env, port, child)
}

/// The worker binary with its admin port on `port`, `envs` set and `remove` unset.
fn spawn(env: &Env, port: u16, envs: &[(&str, &str)], remove: &[&str]) -> KillOnDrop {
    let mut command = env.command();
    for name in remove {
        command.env_remove(name);
    }
    command
        .env("WORKER_ADMIN_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .unwrap()
}

fn stop(child: KillOnDrop) {
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_older_than_welcome_max_age_is_never_welcomed() {
    let env = Env::start().await;
    let last_month = now() - 30 * 24 * 3600;
    env.produce(
        "subscribe",
        &[
            subscribe("gh_a", "last_month", last_month, None),
            subscribe("gh_a", "just_now", now(), None),
        ],
    );
    let port = free_port();
    // The default WELCOME_MAX_AGE (48 h).
    let child = spawn(&env, port, &[], &["WELCOME_MAX_AGE"]);
    wait_for("the fresh welcome", || env.wechat.sends_to("just_now") == 1).await;
    // The old follow still counts for the subscription state.
    wait_within_async(
        Duration::from_secs(20),
        "the old follow's state",
        || async {
            env.store
                .user("last_month")
                .await
                .is_some_and(|u| u.subscribed && u.updated_at == last_month)
        },
    )
    .await;
    let (counted, metrics) = welcomes_counted(port, "too_old").await;
    assert_eq!(counted, Some(1.0), "{metrics}");
    assert_eq!(
        env.wechat.sends_to("last_month"),
        0,
        "{:?}",
        env.wechat.sends()
    );
    assert_eq!(env.kafka.count(&env.dlq("welcome")), 0);
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_outcome_is_unknown_is_counted_and_not_repeated() {
    let (env, port, child) = an_unanswered_send("unanswered", &[]).await;
    let (counted, metrics) = welcomes_counted(port, "unknown").await;
    assert_eq!(counted, Some(1.0), "{metrics}");
    let unknown = [("then", "recorded")];
    assert!(
        testkit::metric(&metrics, "wxpipe_worker_welcome_unknown_total", &unknown)
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.wechat.sends_to("unanswered"), 1);
    assert_eq!(env.kafka.count(&env.dlq("welcome")), 0);
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_resend_unknown_sends_again_after_an_unanswered_send() {
    let (env, port, child) =
        an_unanswered_send("insist", &[("WELCOME_RESEND_UNKNOWN", "true")]).await;
    // WeChat answers in time again: the second send is answered, and the last.
    env.wechat.set_send_delay(Duration::ZERO);
    wait_for("the send again", || env.wechat.sends_to("insist") >= 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.wechat.sends_to("insist"), 2);
    let metrics = metrics(port).await;
    let unknown = [("then", "resent")];
    assert!(
        testkit::metric(&metrics, "wxpipe_worker_welcome_unknown_total", &unknown)
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(env.kafka.count(&env.dlq("welcome")), 0);
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_worker_died_holding_the_lease_goes_out_once_the_lease_runs_out() {
    let env = Env::start().await;
    let welcome = subscribe("gh_a", "orphaned", 100, None);
    // A worker claimed this welcome and died before its post: its lease (4 s) is left.
    let id = "gh_a:orphaned:100:event.subscribe";
    let claimed = env
        .store
        .welcome
        .begin_send(id, "a-dead-worker", Duration::from_secs(4))
        .await
        .unwrap();
    assert_eq!(claimed, store::Lease::Claimed);
    let claimed_at = std::time::Instant::now();
    env.produce("subscribe", &[welcome]);
    let child = spawn(&env, free_port(), &[], &[]);
    wait_for("the welcome", || env.wechat.sends_to("orphaned") == 1).await;
    assert!(
        claimed_at.elapsed() >= Duration::from_secs(4),
        "sent while the dead worker's lease held"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.wechat.sends_to("orphaned"), 1);
    stop(child);
}

/// A sent welcome is remembered at least as long as `WELCOME_MAX_AGE`: a follow replayed from
/// the log (a redrive, a reset group) while it may still be welcomed finds it sent, even when
/// that age is longer than the 8 days a sent welcome is kept by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_welcome_is_remembered_for_at_least_welcome_max_age() {
    use redis::Commands;
    let env = Env::start().await;
    env.produce(
        "subscribe",
        &[subscribe("gh_a", "long_ago", now() - 3600, None)],
    );
    let worker = env.spawn(&["--role", "welcome", "--welcome-max-age", "30days"]);
    wait_for("the welcome", || env.wechat.sends_to("long_ago") == 1).await;
    let mut conn = env.redis.conn();
    let pattern = format!("{}:welcome:*", env.key_prefix);
    let mut ttl = None;
    wait_within(Duration::from_secs(20), "the sent record", || {
        let keys: Vec<String> = conn.keys(&pattern).unwrap();
        let kept: Vec<i64> = keys.iter().map(|k| conn.pttl(k).unwrap()).collect();
        ttl = kept
            .first()
            .copied()
            .filter(|_| kept.len() == 1 && kept[0] > 86_400_000);
        ttl.is_some()
    })
    .await;
    worker.stop().await;
    let ttl = Duration::from_millis(ttl.unwrap() as u64);
    assert!(
        ttl >= Duration::from_secs(30 * 24 * 3600),
        "a sent welcome is kept {ttl:?}, less than WELCOME_MAX_AGE (30 days)"
    );
}
