//! Worker test harness: a fake WeChat API on a local port, events on Kafka (the mock cluster
//! or `KAFKA_BROKERS`), a real `redis-server`, and the worker in-process or as its binary.
#![allow(dead_code, unused_imports)]

use std::time::Duration;

use serde_json::{json, Value};
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
}

impl Env {
    pub async fn start() -> Env {
        let prefix = unique("w");
        let mut topics: Vec<String> = ["subscribe", "unsubscribe", "location"]
            .iter()
            .map(|t| format!("{prefix}.event.{t}"))
            .collect();
        topics.extend(
            ["unbind", "welcome", "location"]
                .iter()
                .map(|r| format!("{prefix}.dlq.{r}")),
        );
        Env {
            kafka: Kafka::start(&topics),
            redis: RedisServer::start(),
            wechat: FakeWeChat::start().await,
            key_prefix: unique("k"),
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

    /// The worker in this process, until the returned sender is dropped or fired.
    pub fn spawn(&self, extra: &[&str]) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let config = self.config(extra);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            worker::run(config, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        (tx, task)
    }

    /// The worker binary, as a child process.
    pub fn spawn_process(&self, extra: &[&str]) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
            .envs(self.vars())
            .env("RUST_LOG", "warn")
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    pub async fn store(&self) -> store::effects::EffectStores {
        let engine = store::Engine::open(&self.redis.url(), Duration::from_secs(1)).unwrap();
        store::effects::EffectStores::open(&engine, &self.key_prefix)
    }
}
