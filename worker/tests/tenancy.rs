//! The tenant boundary in the workers: an account's credentials speak for that account's
//! records only, and one account's trouble holds that account's records only.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// How long a test gives b's records to be held, most of them.
const HOLD: Duration = Duration::from_secs(60);

/// Account b without an AppSecret.
const B_WITHOUT_SECRET: &str =
    "[accounts.b]\ntoken = \"t\"\nappid = \"wxb\"\noriginal_id = \"gh_b\"\n";

/// Account b with its own AppSecret.
const B_WITH_SECRET: &str =
    "[accounts.b]\ntoken = \"t\"\nappid = \"wxb\"\nappsecret = \"sb\"\noriginal_id = \"gh_b\"\n";

/// An accounts file in a fresh temporary folder.
fn accounts_file(toml: &str) -> std::path::PathBuf {
    testkit::temp_file("wxpipe-worker-accounts-", "accounts.toml", toml)
}

/// `prefix0`, `prefix1`, … : `n` followers.
fn fans(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// `n` of b's followers, whose sends the API refuses (48001: not authorised) until told
/// otherwise.
fn refused_b_fans(env: &Env, n: usize) -> Vec<String> {
    let b_fans = fans("b_fan", n);
    for fan in &b_fans {
        env.wechat.fail(fan, 48001, u32::MAX);
    }
    b_fans
}

/// A subscribe record of `account` per follower, created from `first` on.
fn subscribes(account: &str, fans: &[String], first: i64) -> Vec<(String, Vec<u8>)> {
    fans.iter()
        .enumerate()
        .map(|(i, fan)| subscribe(account, fan, first + i as i64, None))
        .collect()
}

/// A welcome worker for the `WECHAT_*` account `gh_a` and the accounts file, with `vars`.
fn welcome_worker(env: &Env, accounts: &std::path::Path, vars: &[(&str, String)]) -> KillOnDrop {
    KillOnDrop(
        env.command()
            .env("RUST_LOG", "warn")
            .env("WECHAT_ORIGINAL_ID", "gh_a")
            .env("INGEST_ACCOUNTS", accounts)
            .envs(vars.iter().cloned())
            .args(["--role", "welcome"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `WORKER_ADMIN_LISTEN` on `port`.
fn admin_on(port: u16) -> (&'static str, String) {
    ("WORKER_ADMIN_LISTEN", format!("127.0.0.1:{port}"))
}

/// `WORKER_CONCURRENCY=1`.
fn one_at_a_time() -> (&'static str, String) {
    ("WORKER_CONCURRENCY", "1".to_owned())
}

/// `wxpipe_worker_held_records` of the welcome role for `account`, from a worker's admin port.
async fn held_on(admin: u16, account: &str) -> Option<f64> {
    let text = metrics_if_up(admin).await?;
    testkit::metric(
        &text,
        "wxpipe_worker_held_records",
        &[("role", "welcome"), ("account", account)],
    )
}

/// A test's Env, an accounts file with b's AppSecret, and `n` of b's followers whose sends
/// the API refuses (48001): the start of every test of a held account.
async fn start_refusing_b(n: usize) -> (Env, std::path::PathBuf, Vec<String>) {
    let env = Env::start().await;
    let accounts = accounts_file(B_WITH_SECRET);
    let b_fans = refused_b_fans(&env, n);
    (env, accounts, b_fans)
}

/// A welcome worker with `vars` and an admin port, and a follow of b by each of `b_fans`
/// (created from 1000 on): (the worker, its admin port).
fn welcome_b_fans(
    env: &Env,
    accounts: &std::path::Path,
    b_fans: &[String],
    vars: &[(&str, String)],
) -> (KillOnDrop, u16) {
    let admin = free_port();
    let mut vars = vars.to_vec();
    vars.push(admin_on(admin));
    let worker = welcome_worker(env, accounts, &vars);
    env.produce("subscribe", &subscribes("gh_b", b_fans, 1000));
    (worker, admin)
}

/// Waits until the worker on `admin` holds `n` of b's records.
async fn wait_held(admin: u16, n: f64, within: Duration, what: &str) {
    wait_within_async(within, what, || async move {
        held_on(admin, "gh_b").await == Some(n)
    })
    .await
}

/// `n` of a's followers, their follows produced (created from 2000 on).
fn follow_a(env: &Env, n: usize) -> Vec<String> {
    let a_fans = fans("a_fan", n);
    env.produce("subscribe", &subscribes("gh_a", &a_fans, 2000));
    a_fans
}

/// Whether each of `fans` has been sent exactly one message.
fn each_sent_once(env: &Env, fans: &[String]) -> bool {
    fans.iter().all(|fan| env.wechat.sends_to(fan) == 1)
}

/// Waits for a's followers' welcomes, and checks that none of b's went meanwhile.
async fn a_welcomed_while_b_held(
    env: &Env,
    a_fans: &[String],
    b_fans: &[String],
    within: Duration,
) {
    wait_within(within, "a's welcomes while b is held", || {
        each_sent_once(env, a_fans)
    })
    .await;
    assert!(b_fans.iter().all(|fan| env.wechat.sends_to(fan) == 0));
}

/// The API takes b again: waits for each of b's held welcomes to go, once.
async fn take_b_again(env: &Env, b_fans: &[String], within: Duration) {
    env.wechat.state.lock().unwrap().failures.clear();
    wait_within(within, "b's welcomes once the API takes it", || {
        each_sent_once(env, b_fans)
    })
    .await;
}

/// Account b is configured without an AppSecret: its followers' welcomes are logged, and are
/// never sent with the `WECHAT_*` account's credentials (which once stood in for any account
/// without its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_without_an_appsecret_never_sends_with_another_accounts_credentials() {
    let env = Env::start().await;
    let accounts = accounts_file(B_WITHOUT_SECRET);
    env.produce(
        "subscribe",
        &[
            subscribe("gh_b", "fan_of_b", 1000, None),
            subscribe("gh_a", "fan_of_a", 1001, None),
        ],
    );
    let mut worker = welcome_worker(&env, &accounts, &[]);
    wait_within(WAIT, "a's welcome", || env.wechat.sends_to("fan_of_a") == 1).await;
    // b's record was handled before or after a's; give it time to do what it would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.wechat.sends_to("fan_of_b"),
        0,
        "b's follower was sent a welcome with a's credentials"
    );
    assert!(
        env.wechat
            .token_appids()
            .iter()
            .all(|appid| appid == "wxtest"),
        "{:?}",
        env.wechat.token_appids()
    );
    let _ = worker.0.kill();
}

/// With two accounts, the `WECHAT_*` one must name its `original_id`: otherwise the start is
/// refused (exit 2), naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_without_their_original_ids_refuse_the_start() {
    let env = Env::start().await;
    let accounts = accounts_file(B_WITHOUT_SECRET);
    let output = testkit::output_within(
        env.command()
            .env("RUST_LOG", "warn")
            .env("INGEST_ACCOUNTS", &accounts)
            .args(["--role", "welcome"]),
        Duration::from_secs(60),
    )
    .await
    .expect("the worker refuses to start, and exits");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("WECHAT_ORIGINAL_ID"), "{stderr}");
}

/// Account b's welcomes are refused by the API (48001: not authorised) for a while: only b's
/// records wait. a's followers are welcomed meanwhile, b's held records are counted per
/// account, nothing is committed past them, and once the API takes b again they are sent,
/// each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_accounts_api_errors_hold_only_that_accounts_welcomes() {
    let (env, accounts, b_fans) = start_refusing_b(5).await;
    let (worker, admin) = welcome_b_fans(&env, &accounts, &b_fans, &[]);
    wait_held(admin, 5.0, WAIT, "b's five records held").await;

    // a's followers come while b is held: each is welcomed.
    let a_fans = follow_a(&env, 20);
    a_welcomed_while_b_held(&env, &a_fans, &b_fans, WAIT).await;
    assert_eq!(held_on(admin, "gh_b").await, Some(5.0));
    // Committed: never past a held record (b's come first in their partitions).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let committed = env
        .kafka
        .committed("wxpipe-welcome", &env.topic("subscribe"));
    assert!(
        committed <= 20,
        "committed {committed} of 25, past b's held records"
    );

    // The API takes b again: its held welcomes go, each once.
    take_b_again(&env, &b_fans, Duration::from_secs(60)).await;
    wait_held(admin, 0.0, WAIT, "b's hold over").await;
    wait_within(WAIT, "every offset committed", || {
        env.kafka
            .committed("wxpipe-welcome", &env.topic("subscribe"))
            == 25
    })
    .await;
    for fan in a_fans.iter().chain(&b_fans) {
        assert_eq!(env.wechat.sends_to(fan), 1, "{fan}");
    }
    drop(worker);
}

/// Red team: `WORKER_CONCURRENCY` bounds a role's effects, held records included. Eight of b's
/// records are held (48001) in a role of concurrency 1; when the API takes b again they must go
/// on one at a time. A held record gives its permit back while it waits, and took none again
/// before it tried: once the probe passed, every held record sent at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_records_go_on_within_the_roles_concurrency() {
    let (env, accounts, b_fans) = start_refusing_b(8).await;
    env.wechat.set_send_delay(Duration::from_millis(400));
    let (worker, admin) = welcome_b_fans(&env, &accounts, &b_fans, &[one_at_a_time()]);
    wait_held(admin, 8.0, HOLD, "b's eight records held").await;

    env.wechat.take_max_sends_in_flight();
    take_b_again(&env, &b_fans, Duration::from_secs(90)).await;
    let at_once = env.wechat.take_max_sends_in_flight();
    assert!(
        at_once <= 1,
        "{at_once} sends under way at once with WORKER_CONCURRENCY=1"
    );
    drop(worker);
}

/// Red team: a held account must not hold the role. With `WORKER_CONCURRENCY=1`, seven of b's
/// records (48001, always) come before three of a's in one partition. b's first record is
/// held and gives its permit back; each next one of b's waited for b's next probe *keeping
/// the role's only permit* (it had not tried yet, so it was not counted as held), and a's
/// records behind them waited the sum of b's probe pauses: 1 + 2 + 4 + … + 32 s = 63 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_waiting_for_a_held_accounts_probe_do_not_stall_the_role() {
    let (env, accounts, b_fans) = start_refusing_b(7).await;
    let a_fans = fans("a_fan", 3);
    // One key: one partition, b's records first.
    let records: Vec<_> = b_fans
        .iter()
        .map(|fan| ("gh_b", fan))
        .chain(a_fans.iter().map(|fan| ("gh_a", fan)))
        .enumerate()
        .map(|(i, (account, fan))| {
            let (_, value) = subscribe(account, fan, 1000 + i as i64, None);
            ("one-partition".to_owned(), value)
        })
        .collect();
    env.produce("subscribe", &records);
    let worker = welcome_worker(&env, &accounts, &[one_at_a_time()]);
    // Well under the 63 s of b's probe pauses; long for a loaded machine.
    a_welcomed_while_b_held(&env, &a_fans, &b_fans, Duration::from_secs(30)).await;
    drop(worker);
}

/// `(key, value)` records to one partition of a topic.
fn produce_to(env: &Env, type_: &str, partition: i32, records: &[(String, Vec<u8>)]) {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let producer: ThreadedProducer<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", env.kafka.brokers())
        .create()
        .unwrap();
    let topic = env.topic(type_);
    for (key, value) in records {
        let record = BaseRecord::<_, _, ()>::to(&topic)
            .partition(partition)
            .key(key.as_str())
            .payload(value.as_slice());
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Red team: a held record whose partition the group takes away is its new owner's: it must
/// leave the hold here. It stayed, waiting for b's probe however long the API refuses b (days,
/// until a person fixes it), counted in the metric and in the role's cap on held records; each
/// rebalance that brought the partition back added a copy, until past the cap the copies kept
/// their permits and the role stopped reading for every account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partitions_held_records_leave_the_hold() {
    let (env, accounts, b_fans) = start_refusing_b(6).await;
    for (partition, fans) in b_fans.chunks(3).enumerate() {
        let records: Vec<_> = fans
            .iter()
            .enumerate()
            .map(|(i, fan)| subscribe("gh_b", fan, 1000 + i as i64, None))
            .collect();
        produce_to(&env, "subscribe", partition as i32, &records);
    }
    let worker = |admin: u16| welcome_worker(&env, &accounts, &[admin_on(admin)]);
    let (admin1, admin2) = (free_port(), free_port());
    let first = worker(admin1);
    wait_held(admin1, 6.0, HOLD, "b's six records held").await;
    // A second member takes one partition, and holds its three records there.
    let second = worker(admin2);
    wait_held(
        admin2,
        3.0,
        Duration::from_secs(90),
        "three of b's records held by the second worker",
    )
    .await;
    // The first worker holds only its own partition's three.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let mut first_holds = held_on(admin1, "gh_b").await;
    while first_holds != Some(3.0) && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        first_holds = held_on(admin1, "gh_b").await;
    }
    assert_eq!(
        first_holds,
        Some(3.0),
        "held records the first worker counts, its revoked partition's included"
    );
    assert!(b_fans.iter().all(|fan| env.wechat.sends_to(fan) == 0));
    drop(second);
    drop(first);
}

/// Red team: a probe that meets an outage (-1, system busy) has not passed: the hold stays,
/// one probe at a time. It opened the hold, and every held record of b tried at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_meets_an_outage_keeps_the_hold() {
    let (env, accounts, b_fans) = start_refusing_b(4).await;
    env.wechat.set_send_delay(Duration::from_millis(400));
    let (worker, admin) = welcome_b_fans(&env, &accounts, &b_fans, &[]);
    wait_held(admin, 4.0, HOLD, "b's four records held").await;
    // Every send in flight now is answered 48001; the next ones meet an outage.
    wait_within(Duration::from_secs(30), "no send under way", || {
        env.wechat.state.lock().unwrap().sends_in_flight == 0
    })
    .await;
    let before = {
        let mut s = env.wechat.state.lock().unwrap();
        for fan in &b_fans {
            s.failures.insert(fan.clone(), (-1, u32::MAX));
        }
        s.max_sends_in_flight = 0;
        s.send_attempts
    };
    wait_within(
        Duration::from_secs(90),
        "a probe meeting the outage",
        || env.wechat.state.lock().unwrap().send_attempts > before,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let at_once = env.wechat.take_max_sends_in_flight();
    assert!(at_once <= 1, "{at_once} of b's held records tried at once");
    assert_eq!(held_on(admin, "gh_b").await, Some(4.0));

    // The outage ends; the API still refuses b. A record that met the outage paused the role
    // (as a dependency wait does) and, refused again, kept it paused for as long as b's hold
    // lasted: a's followers were never welcomed.
    {
        let mut s = env.wechat.state.lock().unwrap();
        for fan in &b_fans {
            s.failures.insert(fan.clone(), (48001, u32::MAX));
        }
    }
    let at_before = env.wechat.state.lock().unwrap().send_attempts;
    wait_within(Duration::from_secs(90), "a probe refused again", || {
        env.wechat.state.lock().unwrap().send_attempts > at_before + 1
    })
    .await;
    let a_fans = follow_a(&env, 3);
    a_welcomed_while_b_held(&env, &a_fans, &b_fans, Duration::from_secs(60)).await;
    drop(worker);
}

/// Red team: past the cap on held records (64 per unit of concurrency) a held record keeps
/// its permit; with `WORKER_CONCURRENCY=1` the 65th keeps the role's only one. b's probe must
/// still go, and once the API takes b every record must go on (a probe that waited for a
/// permit first never went: the 65th held it, waiting for the probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_the_probe_still_goes() {
    let (env, accounts, b_fans) = start_refusing_b(66).await;
    let (worker, admin) = welcome_b_fans(&env, &accounts, &b_fans, &[one_at_a_time()]);
    // 64 give their permits back; the 65th keeps the only one, so the 66th is not read.
    wait_held(admin, 65.0, HOLD, "65 of b's records held").await;
    take_b_again(&env, &b_fans, Duration::from_secs(120)).await;
    drop(worker);
}
