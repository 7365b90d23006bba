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

/// The value of the `wxpipe_worker_events_total` series of `role` and `outcome`.
fn events_total(metrics: &str, role: &str, outcome: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("wxpipe_worker_events_total{")
                && l.contains(&format!("role=\"{role}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
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
    let counted = poll(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || async { events_total(&metrics(port).await, "welcome", "too_old") },
    )
    .await;
    assert_eq!(counted, Some(1.0), "{}", metrics(port).await);
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
    // WeChat takes the post but answers after the API timeout (1 s).
    let env = Env::start().await;
    env.wechat.set_send_delay(Duration::from_millis(1500));
    env.produce("subscribe", &[subscribe("gh_a", "unanswered", 100, None)]);
    let port = free_port();
    let child = spawn(&env, port, &[], &[]);
    wait_for("the post", || env.wechat.sends_to("unanswered") >= 1).await;
    let counted = poll(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || async { events_total(&metrics(port).await, "welcome", "unknown") },
    )
    .await;
    let metrics = metrics(port).await;
    assert_eq!(counted, Some(1.0), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wxpipe_worker_welcome_unknown_total{")
                && l.contains("then=\"recorded\"")),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.wechat.sends_to("unanswered"), 1);
    assert_eq!(env.kafka.count(&env.dlq("welcome")), 0);
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_resend_unknown_sends_again_after_an_unanswered_send() {
    let env = Env::start().await;
    env.wechat.set_send_delay(Duration::from_millis(1500));
    env.produce("subscribe", &[subscribe("gh_a", "insist", 100, None)]);
    let port = free_port();
    let child = spawn(&env, port, &[("WELCOME_RESEND_UNKNOWN", "true")], &[]);
    wait_for("the first post", || env.wechat.sends_to("insist") >= 1).await;
    // WeChat answers in time again: the second send is answered, and the last.
    env.wechat.set_send_delay(Duration::ZERO);
    wait_for("the send again", || env.wechat.sends_to("insist") >= 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.wechat.sends_to("insist"), 2);
    let metrics = metrics(port).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wxpipe_worker_welcome_unknown_total{")
                && l.contains("then=\"resent\"")),
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
