//! The topics as the system of record, through the real binary: `worker rebuild` makes the
//! Redis projection again from the log, `worker redrive` moves dead letters back, and dead
//! letters keep their record's headers.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use redis::Commands;
use store::effects::EffectStores;

/// Records to produce: (key, value).
type Records = Vec<(String, Vec<u8>)>;

async fn wait_for(what: &str, check: impl FnMut() -> bool) {
    wait_within(Duration::from_secs(60), what, check).await;
}

/// Waits until the live groups (of `live`) have committed every record of their topics.
async fn caught_up(env: &Env, live: &LoggedWorker) {
    for (group, topic) in [
        ("wxpipe-unbind", "subscribe"),
        ("wxpipe-unbind", "unsubscribe"),
        ("wxpipe-location", "location"),
    ] {
        let topic = env.topic(topic);
        let through = eventually(Duration::from_secs(60), || {
            env.kafka.committed(group, &topic) == env.kafka.count(&topic)
        })
        .await;
        assert!(
            through,
            "{group} through {topic}: committed {} of {}; the worker's log ends:\n{}",
            env.kafka.committed(group, &topic),
            env.kafka.count(&topic),
            live.tail(60)
        );
    }
}

/// Everything a projection holds for `users`, under a key prefix, as comparable text.
async fn projection(env: &Env, key_prefix: &str, users: &[String]) -> BTreeMap<String, String> {
    let engine = store::Engine::open(&env.redis.url(), Duration::from_secs(1)).unwrap();
    let store = Store(EffectStores::open(&engine, key_prefix));
    let mut state = BTreeMap::new();
    for user in users {
        let parts = [
            ("user", format!("{:?}", store.user(user).await)),
            ("binding", format!("{:?}", store.binding(user).await)),
            (
                "location",
                format!("{:?}", store.latest_location(user).await),
            ),
            (
                "history",
                format!("{:?}", store.location_history(user).await),
            ),
        ];
        for (part, value) in parts {
            state.insert(format!("{user} {part}"), value);
        }
    }
    let mut conn = env.redis.conn();
    let geo: Vec<(String, f64)> = conn
        .zrange_withscores(format!("{key_prefix}:geo:{{gh_a}}"), 0, -1)
        .unwrap();
    state.insert("geo".into(), format!("{geo:?}"));
    let geo_at: BTreeMap<String, String> = conn
        .hgetall(format!("{key_prefix}:geo_at:{{gh_a}}"))
        .unwrap();
    state.insert("geo_at".into(), format!("{geo_at:?}"));
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_from_the_log_equals_the_live_projection() {
    let env = Env::start().await;
    let users: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
    // Users whose unfollow reaches the log before their (older) follows: a retry, the spool
    // or a redrive brings the follow late.
    let unfollowed_first: Vec<String> = (0..6).map(|i| format!("f{i}")).collect();
    let engine = store::Engine::open(&env.redis.url(), Duration::from_secs(1)).unwrap();
    let rebuilt_prefix = unique("rebuilt");
    let rebuilt = Store(EffectStores::open(&engine, &rebuilt_prefix));
    // The host application's bindings, in both places (as after restoring a backup).
    for user in &users {
        env.store.bind(user, &format!("host-{user}")).await;
        rebuilt.bind(user, &format!("host-{user}")).await;
    }
    let live = env.spawn_logged(&["--role", "unbind", "--role", "location"]);

    // The history, in phases (each phase one subscription topic, so the live result does not
    // depend on how the two topics' lags race), with retries (the same event twice),
    // duplicates, and `created_at`s out of order.
    let mut produced = 0;
    let mut phase = |subs: Records, unsubs: Records, locs: Records| {
        produced += subs.len() + unsubs.len() + locs.len();
        if !subs.is_empty() {
            env.produce("subscribe", &subs);
        }
        if !unsubs.is_empty() {
            env.produce("unsubscribe", &unsubs);
        }
        if !locs.is_empty() {
            env.produce("location", &locs);
        }
    };
    let each = |f: &dyn Fn(usize, &str) -> Records| -> Records {
        users
            .iter()
            .enumerate()
            .flat_map(|(i, u)| f(i, u))
            .collect()
    };
    // 1: follows, some retried, some with an older (late) follow after the newer one.
    phase(
        each(&|i, u| {
            let mut v = vec![subscribe("gh_a", u, 1000, Some("a"))];
            if i % 3 == 0 {
                v.push(subscribe("gh_a", u, 1000, Some("a")));
            }
            if i % 4 == 0 {
                v.insert(0, subscribe("gh_a", u, 1100, Some("b")));
            }
            v
        }),
        vec![],
        each(&|i, u| {
            let t = [1010, 1030, 1020];
            let mut v: Vec<_> = t
                .iter()
                .map(|&t| location("gh_a", u, t, i as f64 * 0.5, t as f64 / 100.0))
                .collect();
            if i % 2 == 0 {
                v.push(location("gh_a", u, 1030, i as f64 * 0.5, 10.3));
            }
            v
        }),
    );
    caught_up(&env, &live).await;
    // 2: unfollows: most newer than the follow, some older (stale: the binding stays), some
    // retried; and the unfollows that come before their follows.
    let mut unsubs = each(&|i, u| match i % 5 {
        0 => vec![],
        1 => vec![unsubscribe("gh_a", u, 900)],
        2 => vec![unsubscribe("gh_a", u, 1200), unsubscribe("gh_a", u, 1200)],
        _ => vec![unsubscribe("gh_a", u, 1200 + i as i64)],
    });
    unsubs.extend(
        unfollowed_first
            .iter()
            .map(|u| unsubscribe("gh_a", u, 1200)),
    );
    phase(vec![], unsubs, vec![]);
    caught_up(&env, &live).await;
    // 3: some follow again (the host binds them again), late older follows, late locations.
    for (i, user) in users.iter().enumerate() {
        if i % 5 == 3 {
            env.store.bind(user, &format!("again-{user}")).await;
            rebuilt.bind(user, &format!("again-{user}")).await;
        }
    }
    // The late follows of the users who unfollowed first, older than that unfollow: live, the
    // scene of the newest is theirs, as in the rebuild (which applies them first).
    let mut subs = Vec::new();
    for (i, u) in unfollowed_first.iter().enumerate() {
        subs.push(subscribe("gh_a", u, 1000, Some("first")));
        if i % 2 == 0 {
            subs.push(subscribe("gh_a", u, 1100, Some("second")));
            subs.push(subscribe("gh_a", u, 1050, Some("between")));
        }
    }
    subs.extend(each(&|i, u| match i % 5 {
        3 => vec![subscribe("gh_a", u, 1300 + i as i64, Some("c"))],
        // A late follow between the user's follow and their newer unfollow: live, it
        // comes after the unfollow; a rebuild applies it before (it reads every follow
        // first). Its scene is the user's latest follow's either way.
        4 if i % 2 == 0 => vec![subscribe("gh_a", u, 1150, Some("late"))],
        // Older than the follow already applied.
        4 => vec![subscribe("gh_a", u, 950, Some("late"))],
        _ => vec![],
    }));
    phase(
        subs,
        vec![],
        each(&|i, u| {
            vec![
                location("gh_a", u, 1005, 1.0, 2.0),
                location("gh_a", u, 1400 + i as i64, 3.0, 4.0),
            ]
        }),
    );
    caught_up(&env, &live).await;
    // 4: late unfollows older than the re-follow, and a few new ones.
    phase(
        vec![],
        each(&|i, u| match i % 5 {
            3 if i % 2 == 0 => vec![unsubscribe("gh_a", u, 1250)],
            3 => vec![unsubscribe("gh_a", u, 2000), unsubscribe("gh_a", u, 1250)],
            _ => vec![],
        }),
        vec![],
    );
    caught_up(&env, &live).await;
    drop(live);
    assert!(produced >= 300, "{produced} events");
    let committed = |group: &str, topic: &str| env.kafka.committed(group, &env.topic(topic));
    let live_offsets = (
        committed("wxpipe-unbind", "subscribe"),
        committed("wxpipe-unbind", "unsubscribe"),
        committed("wxpipe-location", "location"),
    );

    let (code, stdout, stderr) = env.run_command(
        &[("REDIS_KEY_PREFIX", &rebuilt_prefix)],
        &["rebuild", "--role", "unbind", "--role", "location"],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("rebuilt"), "a summary: {stdout}");

    let all_users: Vec<String> = users.iter().chain(&unfollowed_first).cloned().collect();
    let live_state = projection(&env, &env.key_prefix, &all_users).await;
    let rebuilt_state = projection(&env, &rebuilt_prefix, &all_users).await;
    // The history is not trivial: users of every kind.
    let count = |what: &str| live_state.values().filter(|v| v.contains(what)).count();
    assert!(count("subscribed: false") >= 10, "{live_state:?}");
    assert!(count("subscribed: true") >= 10, "{live_state:?}");
    assert!(count("Some(\"again-") >= 4, "{live_state:?}");
    assert!(count("Some(\"host-") >= 4, "{live_state:?}");
    for (key, live) in &live_state {
        assert_eq!(Some(live), rebuilt_state.get(key), "{key}");
    }
    assert_eq!(live_state, rebuilt_state);
    for (i, user) in unfollowed_first.iter().enumerate() {
        let scene = if i % 2 == 0 { "second" } else { "first" };
        let state = &live_state[&format!("{user} user")];
        assert!(
            state.contains("subscribed: false") && state.contains(&format!("scene: \"{scene}\"")),
            "{user}: {state}"
        );
    }
    // The rebuild committed nothing under the live groups.
    assert_eq!(
        live_offsets,
        (
            committed("wxpipe-unbind", "subscribe"),
            committed("wxpipe-unbind", "unsubscribe"),
            committed("wxpipe-location", "location"),
        )
    );
    // Nothing was sent or dead-lettered.
    assert!(env.wechat.sends().is_empty());
    assert_eq!(env.kafka.count(&env.dlq("unbind")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_never_sends_welcomes() {
    let env = Env::start().await;
    env.produce("subscribe", &[subscribe("gh_a", "again", 100, None)]);
    let (code, stdout, stderr) = env.run_command(&[], &["rebuild", "--role", "welcome"]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("welcome") && stderr.contains("never sends"),
        "a clear refusal: {stderr}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.wechat.sends().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_dead_letters_back_once_with_their_headers() {
    let env = Env::start().await;
    // Fails as many times as the worker tries (WORKER_MAX_ATTEMPTS=3): dead-lettered. Then
    // the failures are used up, as when a person fixed the cause.
    env.wechat.fail("fixed_later", 99999, 3);
    let failing = subscribe("gh_a", "fixed_later", 100, None);
    let headers = Env::ce_headers(&failing.1);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.produce_with_headers(&env.topic("subscribe"), &failing, &headers);
    env.produce("subscribe", &[subscribe("gh_a", "fine", 101, None)]);
    let worker = env.spawn(&["--role", "welcome"]);
    let dlq = env.dlq("welcome");
    wait_for("the dead letter", || env.kafka.count(&dlq) == 1).await;
    wait_for("the fine welcome", || env.wechat.sends_to("fine") == 1).await;
    worker.stop().await;

    // The dead letter keeps the record's own headers, beside its own.
    let letter = env.kafka.read(&dlq, 1).remove(0);
    for (name, value) in &headers {
        assert_eq!(
            letter.header(name),
            Some(*value),
            "{name}: {:?}",
            letter.headers
        );
    }
    assert!(letter.header("error").is_some_and(|e| e.contains("99999")));
    assert_eq!(
        letter.header("source_topic"),
        Some(env.topic("subscribe").as_str())
    );

    let (code, stdout, stderr) = env.run_command(&[], &["redrive", "--role", "welcome"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("moved 1 record"), "the count: {stdout}");
    let subscribe_topic = env.topic("subscribe");
    wait_for("the record back on its topic", || {
        env.kafka.count(&subscribe_topic) == 3
    })
    .await;
    let back: Vec<_> = env
        .kafka
        .read(&subscribe_topic, 3)
        .into_iter()
        .filter(|r| r.key.as_deref() == Some("fixed_later"))
        .collect();
    assert_eq!(back.len(), 2, "the original and the redriven copy");
    for record in &back {
        assert_eq!(record.value, failing.1);
        for (name, value) in &headers {
            assert_eq!(
                record.header(name),
                Some(*value),
                "{name}: {:?}",
                record.headers
            );
        }
        for name in ["error", "source_topic", "source_partition", "source_offset"] {
            assert_eq!(record.header(name), None, "{name}: {:?}", record.headers);
        }
    }
    // Its own group's offsets are committed: a second run moves nothing.
    assert_eq!(env.kafka.committed("wxpipe-redrive-welcome", &dlq), 1);
    let (code, stdout, stderr) = env.run_command(&[], &["redrive", "--role", "welcome"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("moved 0 record"), "{stdout}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.kafka.count(&subscribe_topic), 3);

    // The worker takes the redriven record: the welcome goes out now, once.
    let worker = env.spawn(&["--role", "welcome"]);
    wait_for("the redriven welcome", || {
        env.wechat.sends_to("fixed_later") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.wechat.sends_to("fixed_later"), 1);
    assert_eq!(env.wechat.sends_to("fine"), 1);
    worker.stop().await;
}

/// `worker rebuild` takes the end offsets of every topic it reads when it starts: a record
/// written to its second topic while it still reads the first is not applied (it is for the
/// live role, after the rebuild).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_reads_every_topic_up_to_its_end_at_the_start() {
    let env = Env::start().await;
    env.produce("subscribe", &[subscribe("gh_a", "stays", 1000, Some("a"))]);
    // Redis black-holed: the rebuild starts anyway (an outage at the start is waited out
    // later), and waits at the first subscribe, with every end offset already taken.
    let proxy = testkit::Proxy::start(testkit::redis_addr(&env.redis.url())).await;
    proxy.stall();
    let rebuilt_prefix = unique("rebuilt");
    let log = std::env::temp_dir().join(format!("{}.log", unique("wxpipe-rebuild")));
    let child = env
        .command()
        .env("REDIS_URL", proxy.redis_url())
        .env("REDIS_KEY_PREFIX", &rebuilt_prefix)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .args(["rebuild", "--role", "unbind"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let output = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_within(
        Duration::from_secs(120),
        "the rebuild waiting for Redis",
        || output().contains("the rebuild waits for it"),
    )
    .await;
    // Written after the rebuild started: the user unfollows.
    env.produce("unsubscribe", &[unsubscribe("gh_a", "stays", 2000)]);
    proxy.resume();
    let ended = eventually(Duration::from_secs(120), || {
        child.0.try_wait().unwrap().is_some()
    })
    .await;
    let printed = output();
    let _ = std::fs::remove_file(&log);
    assert!(ended, "the rebuild did not end: {printed}");
    assert_eq!(child.0.wait().unwrap().code(), Some(0), "{printed}");
    let unsubscribes = env.topic("unsubscribe");
    assert!(
        printed.contains(&format!("from {unsubscribes}: 0 record(s)")),
        "{printed}"
    );
    let engine = store::Engine::open(&env.redis.url(), Duration::from_secs(1)).unwrap();
    let rebuilt = Store(EffectStores::open(&engine, &rebuilt_prefix));
    let user = rebuilt.user("stays").await.unwrap();
    assert!(
        user.subscribed,
        "the unfollow written after the start was applied: {user:?}\n{printed}"
    );
}

/// A record both roles of `event.subscribe` dead-lettered goes back, on each redrive, to the
/// role whose dead letter it was, only: the other skips it (its offset stored, no dead letter
/// of its own), so redrives never multiply it. Dead-lettered again by that role, a later
/// redrive still reaches that role only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_record_reaches_only_the_role_that_dead_lettered_it() {
    let env = Env::start().await;
    let subscribes = env.topic("subscribe");
    let (unbind_dlq, welcome_dlq) = (env.dlq("unbind"), env.dlq("welcome"));
    // Poison to every role, on every delivery: each dead-letters it each time it handles it.
    env.kafka
        .produce(&subscribes, &[("poisoned", b"{not json".as_slice())]);
    let counts = || {
        (
            env.kafka.count(&subscribes),
            env.kafka.count(&unbind_dlq),
            env.kafka.count(&welcome_dlq),
        )
    };
    // Runs both roles until each has handled every record of `event.subscribe`.
    let handle_all = || async {
        let worker = env.spawn(&["--role", "unbind", "--role", "welcome"]);
        let all = env.kafka.count(&subscribes);
        wait_for("both roles through event.subscribe", || {
            env.kafka.committed("wxpipe-unbind", &subscribes) == all
                && env.kafka.committed("wxpipe-welcome", &subscribes) == all
        })
        .await;
        worker.stop().await;
    };
    let redrive = |role: &str| {
        let (code, stdout, stderr) = env.run_command(&[], &["redrive", "--role", role]);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        stdout
    };
    handle_all().await;
    assert_eq!(counts(), (1, 1, 1), "each role dead-lettered it once");

    // The welcome role's dead letter goes back for the welcome role only.
    assert!(redrive("welcome").contains("moved 1 record"));
    assert!(
        redrive("welcome").contains("moved 0 record"),
        "a second run"
    );
    assert_eq!(counts(), (2, 1, 1));
    let back = env.kafka.read(&subscribes, 2).remove(1);
    assert_eq!(back.header("wxpipe_redrive_role"), Some("welcome"));
    handle_all().await;
    assert_eq!(
        counts(),
        (2, 1, 2),
        "the welcome role dead-lettered it again, the unbind role skipped it"
    );

    // Dead-lettered again by the welcome role: a redrive still reaches that role only, with
    // one role header.
    assert!(redrive("welcome").contains("moved 1 record"));
    let back = env.kafka.read(&subscribes, 3).remove(2);
    let roles: Vec<_> = back
        .headers
        .iter()
        .filter(|(k, _)| k == "wxpipe_redrive_role")
        .collect();
    assert_eq!(roles.len(), 1, "{:?}", back.headers);
    handle_all().await;
    assert_eq!(counts(), (3, 1, 3));

    // The unbind role's dead letter goes back for it only.
    assert!(redrive("unbind").contains("moved 1 record"));
    handle_all().await;
    assert_eq!(counts(), (4, 2, 3));
    assert!(redrive("unbind").contains("moved 1 record"));
    assert!(redrive("unbind").contains("moved 0 record"));
    assert!(redrive("welcome").contains("moved 1 record"));
    assert!(redrive("welcome").contains("moved 0 record"));
}
