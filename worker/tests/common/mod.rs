//! Worker test harness: a fake WeChat API on a local port, events on Kafka (the mock cluster
//! or `KAFKA_BROKERS`), a real `redis-server`, and the worker in-process or as its binary.
#![allow(dead_code, unused_imports)]

use std::future::Future;
use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::{json, Value};
use store::effects::{EffectStores, LatestLocation, UserState};
use tokio::sync::oneshot;

pub use testkit::{eventually, free_port, unique, FakeWeChat, Kafka, RedisServer};

/// A record value as the ingress writes it.
pub fn event(
    type_: &str,
    account: &str,
    openid: &str,
    created_at: i64,
    fields: Value,
) -> (String, Vec<u8>) {
    let id = format!("{account}:{openid}:{created_at}:event.{type_}");
    let mut value = json!({
        "id": id, "account": account, "openid": openid, "created_at": created_at,
        "received_at": "2026-11-26T08:00:00.000Z", "kind": "event", "type": type_, "extra": {}
    });
    for (k, v) in fields.as_object().cloned().unwrap_or_default() {
        value[k] = v;
    }
    (openid.to_owned(), serde_json::to_vec(&value).unwrap())
}

pub fn subscribe(
    account: &str,
    openid: &str,
    created_at: i64,
    scene: Option<&str>,
) -> (String, Vec<u8>) {
    event(
        "subscribe",
        account,
        openid,
        created_at,
        json!({"scene": scene, "ticket": null}),
    )
}

pub fn unsubscribe(account: &str, openid: &str, created_at: i64) -> (String, Vec<u8>) {
    event("unsubscribe", account, openid, created_at, json!({}))
}

pub fn location(
    account: &str,
    openid: &str,
    created_at: i64,
    lat: f64,
    lon: f64,
) -> (String, Vec<u8>) {
    event(
        "location",
        account,
        openid,
        created_at,
        json!({"latitude": lat, "longitude": lon, "precision": 30.0}),
    )
}

/// Kafka, Redis and the fake API for one test, with fresh names.
pub struct Env {
    pub prefix: String,
    pub key_prefix: String,
    pub kafka: Kafka,
    pub redis: RedisServer,
    pub wechat: FakeWeChat,
    /// The workers' store in `redis`, under `key_prefix`.
    pub store: Store,
}

impl Env {
    pub async fn start() -> Env {
        let prefix = unique("w");
        let mut topics: Vec<String> = ["subscribe", "unsubscribe", "location"]
            .iter()
            .map(|t| format!("{prefix}.event.{t}"))
            .collect();
        topics.extend(
            ["unbind", "welcome", "location", "component"]
                .iter()
                .map(|r| format!("{prefix}.dlq.{r}")),
        );
        topics.extend(
            ["authorized", "updateauthorized", "unauthorized"]
                .iter()
                .map(|t| format!("{prefix}.component.{t}")),
        );
        topics.push(format!("{prefix}.message.text"));
        let redis = RedisServer::start();
        let key_prefix = unique("k");
        let engine = store::Engine::open(&redis.url(), Duration::from_secs(1)).unwrap();
        Env {
            kafka: Kafka::start(&topics),
            store: Store(EffectStores::open(&engine, &key_prefix)),
            redis,
            wechat: FakeWeChat::start().await,
            key_prefix,
            prefix,
        }
    }

    pub fn topic(&self, type_: &str) -> String {
        format!("{}.event.{type_}", self.prefix)
    }

    pub fn produce(&self, type_: &str, records: &[(String, Vec<u8>)]) {
        let records: Vec<(&str, &[u8])> = records
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        self.kafka.produce(&self.topic(type_), &records);
    }

    /// Environment variables that configure a worker for this test.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KAFKA_BROKERS", self.kafka.brokers()),
            ("KAFKA_TOPIC_PREFIX", self.prefix.clone()),
            ("REDIS_URL", self.redis.url()),
            ("REDIS_KEY_PREFIX", self.key_prefix.clone()),
            ("WECHAT_APPID", "wxtest".into()),
            ("WECHAT_APPSECRET", "secret".into()),
            ("WECHAT_API_BASE", self.wechat.base()),
            ("WECHAT_API_TIMEOUT_MS", "1000".into()),
            ("WORKER_MAX_ATTEMPTS", "3".into()),
            (
                "KAFKA_CONSUMER_CONFIG",
                "session.timeout.ms=6000,heartbeat.interval.ms=500,statistics.interval.ms=500"
                    .into(),
            ),
            ("WORKER_ADMIN_LISTEN", "127.0.0.1:0".into()),
            // The test events are stamped in 1970 (created_at 100, 1000…): welcome them as
            // fresh follows. Tests of the age limit remove it (`env_remove`) or set their own.
            ("WELCOME_MAX_AGE", "36500days".into()),
        ]
    }

    /// A worker config for this test (as the binary would parse from `vars`).
    pub fn config(&self, extra: &[&str]) -> worker::Config {
        use clap::Parser;
        let mut args: Vec<String> = vec!["worker".into()];
        for (name, value) in self.vars() {
            let flag = match name {
                "KAFKA_BROKERS" => "--kafka-brokers",
                "KAFKA_TOPIC_PREFIX" => "--topic-prefix",
                "REDIS_URL" => "--redis-url",
                "REDIS_KEY_PREFIX" => "--key-prefix",
                "WECHAT_APPID" => "--appid",
                "WECHAT_APPSECRET" => "--appsecret",
                "WECHAT_API_BASE" => "--api-base",
                "WECHAT_API_TIMEOUT_MS" => "--api-timeout-ms",
                "WORKER_MAX_ATTEMPTS" => "--max-attempts",
                "KAFKA_CONSUMER_CONFIG" => "--kafka-consumer-config",
                "WORKER_ADMIN_LISTEN" => "--admin-listen",
                "WELCOME_MAX_AGE" => "--welcome-max-age",
                other => panic!("no flag for {other}"),
            };
            if extra.contains(&flag) {
                continue; // the test's own value
            }
            args.push(flag.into());
            args.push(value);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        worker::Config::parse_from(args)
    }

    /// The worker in this process, until [`Running::stop`] (or the value is dropped).
    pub fn spawn(&self, extra: &[&str]) -> Running {
        run(self.config(extra))
    }

    /// The worker binary configured by `vars`, to add to and start.
    pub fn command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_worker"));
        command.envs(self.vars());
        command
    }

    /// The worker binary, as a child process.
    pub fn spawn_process(&self, extra: &[&str]) -> std::process::Child {
        self.command()
            .env("RUST_LOG", "warn")
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// The worker binary, as a child process whose log goes to a file, for a failing test
    /// to show; `WXPIPE_TEST_LOG` sets its `RUST_LOG` (default: warnings, and the consumer
    /// loop's `info`, where rebalances show).
    pub fn spawn_logged(&self, extra: &[&str]) -> LoggedWorker {
        let log = std::env::temp_dir().join(format!("{}.log", testkit::unique("wxpipe-worker")));
        let level =
            std::env::var("WXPIPE_TEST_LOG").unwrap_or_else(|_| "warn,worker::consume=info".into());
        let child = self
            .command()
            .env("RUST_LOG", level)
            .env("NO_COLOR", "1")
            .args(extra)
            .stdout(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        LoggedWorker {
            _child: KillOnDrop(child),
            log,
        }
    }

    /// Writes one record with headers to `topic` and waits until it is acknowledged.
    pub fn produce_with_headers(
        &self,
        topic: &str,
        (key, value): &(String, Vec<u8>),
        headers: &[(&str, &str)],
    ) {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
        let producer: ThreadedProducer<_> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.kafka.brokers())
            .create()
            .unwrap();
        let mut owned = OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        let record = BaseRecord::<_, _, ()>::to(topic)
            .key(key.as_str())
            .payload(value.as_slice())
            .headers(owned);
        producer.send(record).map_err(|(e, _)| e).unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    /// The CloudEvents headers the ingress writes with an event (`event` above).
    pub fn ce_headers(value: &[u8]) -> Vec<(&'static str, String)> {
        let event: Value = serde_json::from_slice(value).unwrap();
        vec![
            ("ce_specversion", "1.0".into()),
            ("ce_id", event["id"].as_str().unwrap().into()),
            (
                "ce_source",
                format!("/wechat/{}", event["account"].as_str().unwrap()),
            ),
            (
                "ce_type",
                format!(
                    "wechat.{}.{}",
                    event["kind"].as_str().unwrap(),
                    event["type"].as_str().unwrap()
                ),
            ),
            (
                "ce_time",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH
                        + Duration::from_secs(event["created_at"].as_u64().unwrap()),
                )
                .to_string(),
            ),
            ("content-type", "application/json".into()),
        ]
    }

    /// Runs the worker binary with `args` (a subcommand) to its end: (exit code, stdout,
    /// stderr).
    pub fn run_command(&self, envs: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
        let output = self
            .command()
            .env("RUST_LOG", "warn")
            .envs(envs.iter().copied())
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// The dead-letter topic of a role.
    pub fn dlq(&self, role: &str) -> String {
        format!("{}.dlq.{role}", self.prefix)
    }

    /// Whether Redis holds `key` (under this test's key prefix).
    pub fn has_key(&self, key: &str) -> bool {
        self.redis
            .conn()
            .exists(format!("{}:{key}", self.key_prefix))
            .unwrap()
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves none
/// behind.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A worker process killed when dropped, with its log in a file (removed when dropped,
/// unless the test is failing).
pub struct LoggedWorker {
    _child: KillOnDrop,
    log: std::path::PathBuf,
}

impl LoggedWorker {
    /// Lines of its log that contain `text`.
    pub fn count(&self, text: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter(|line| line.contains(text)).count()
    }

    /// The last `lines` of its log, a run of lines that differ only in their time as one.
    pub fn tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut runs: Vec<(&str, usize)> = Vec::new();
        for line in log.lines() {
            let message = line.split_once(' ').map_or(line, |(_, rest)| rest);
            match runs.last_mut() {
                Some((last, n)) if last.split_once(' ').map(|(_, m)| m) == Some(message) => *n += 1,
                _ => runs.push((line, 1)),
            }
        }
        let shown = runs[runs.len().saturating_sub(lines)..].iter();
        let shown = shown.map(|(line, n)| match n {
            1 => line.to_string(),
            n => format!("{line} (and {} more like it)", n - 1),
        });
        shown.collect::<Vec<_>>().join("\n")
    }
}

impl Drop for LoggedWorker {
    fn drop(&mut self) {
        // A failing test keeps the whole log.
        if std::thread::panicking() {
            eprintln!("the worker's log is kept in {}", self.log.display());
            return;
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A worker with `config` in this process, until [`Running::stop`] (or the value is dropped).
pub fn run(config: worker::Config) -> Running {
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        worker::run(config, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Running { stop, task }
}

/// A worker running in this process ([`run`], [`Env::spawn`]).
pub struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the worker and waits for it to finish cleanly.
    pub async fn stop(self) {
        drop(self.stop);
        self.task.await.unwrap();
    }
}

/// The workers' store, read for account `gh_a` (every test event's account).
pub struct Store(pub EffectStores);

impl std::ops::Deref for Store {
    type Target = EffectStores;

    fn deref(&self) -> &EffectStores {
        &self.0
    }
}

impl Store {
    pub async fn user(&self, openid: &str) -> Option<UserState> {
        self.subscriptions.user("gh_a", openid).await.unwrap()
    }

    pub async fn binding(&self, openid: &str) -> Option<String> {
        self.subscriptions.binding("gh_a", openid).await.unwrap()
    }

    /// Binds `openid` to the host application's `user`, as the host application does.
    pub async fn bind(&self, openid: &str, user: &str) {
        self.subscriptions
            .set_binding("gh_a", openid, user)
            .await
            .unwrap();
    }

    pub async fn latest_location(&self, openid: &str) -> Option<LatestLocation> {
        self.locations
            .latest_location("gh_a", openid)
            .await
            .unwrap()
    }

    pub async fn location_history(&self, openid: &str) -> Vec<String> {
        self.locations
            .location_history("gh_a", openid)
            .await
            .unwrap()
    }
}

/// Asks `check` every `every` until it answers `Some` or `within` passes: the answer, if any.
pub async fn poll<T, F, Fut>(within: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(answer) = check().await {
            return Some(answer);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `check` every 50 ms; fails the test if it does not hold `within`.
pub async fn wait_within(within: Duration, what: &str, check: impl FnMut() -> bool) {
    assert!(
        eventually(within, check).await,
        "timed out waiting for {what}"
    );
}

/// [`wait_within`] for a check that awaits.
pub async fn wait_within_async<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let every = Duration::from_millis(50);
    let held = poll(within, every, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
    assert!(held.is_some(), "timed out waiting for {what}");
}

/// (status, body) of the `/readyz` of a worker whose admin listener is on `port`.
pub async fn ready(port: u16) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .ok()?;
    Some((response.status().as_u16(), response.text().await.ok()?))
}

/// Polls the `/readyz` of the worker on `port` every 200 ms until it answers 503 with a body
/// that contains `reason`, or `within` passes: that body, if any.
pub async fn unready_for(port: u16, reason: &str, within: Duration) -> Option<(u16, String)> {
    poll(within, Duration::from_millis(200), || async {
        ready(port)
            .await
            .filter(|(status, body)| *status == 503 && body.contains(reason))
    })
    .await
}

/// The `/metrics` of the worker whose admin listener is on `port`, or why there is none.
async fn fetch_metrics(port: u16) -> reqwest::Result<String> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?;
    response.text().await
}

/// The `/metrics` of the worker whose admin listener is on `port`; `None` while it does not
/// answer.
pub async fn metrics_if_up(port: u16) -> Option<String> {
    fetch_metrics(port).await.ok()
}

/// The `/metrics` of the worker whose admin listener is on `port`.
pub async fn metrics(port: u16) -> String {
    fetch_metrics(port).await.unwrap()
}
