//! Worker test harness: a fake WeChat API on a local port, events on Kafka (the mock cluster
//! or `KAFKA_BROKERS`), a real `redis-server`, and the worker in-process or as its binary.
#![allow(dead_code, unused_imports)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub use testkit::{eventually, free_port, unique, Kafka, RedisServer};

/// What the fake WeChat API saw and how it behaves.
#[derive(Debug, Default)]
pub struct FakeState {
    /// (touser, content) of every accepted send.
    pub sends: Vec<(String, String)>,
    /// Every stable_token call's `force_refresh`.
    pub token_fetches: Vec<bool>,
    /// Tokens WeChat no longer accepts (42001).
    pub expired: HashSet<String>,
    /// errcode to answer for a user, and how many times (u32::MAX = always).
    pub failures: HashMap<String, (i64, u32)>,
    /// Delay before answering a send.
    pub send_delay: Duration,
    issued: u32,
}

#[derive(Debug, Clone)]
pub struct FakeWeChat {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeWeChat {
    pub async fn start() -> FakeWeChat {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(Arc::clone(&state), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeWeChat { addr, state }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn sends(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().sends.clone()
    }

    pub fn sends_to(&self, openid: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .sends
            .iter()
            .filter(|(to, _)| to == openid)
            .count()
    }

    pub fn token_fetches(&self) -> Vec<bool> {
        self.state.lock().unwrap().token_fetches.clone()
    }

    /// Makes every token issued so far expired.
    pub fn expire_tokens(&self) {
        let mut s = self.state.lock().unwrap();
        for n in 1..=s.issued {
            s.expired.insert(format!("TOKEN-{n}"));
        }
    }

    pub fn fail(&self, openid: &str, errcode: i64, times: u32) {
        self.state
            .lock()
            .unwrap()
            .failures
            .insert(openid.to_owned(), (errcode, times));
    }

    pub fn set_send_delay(&self, delay: Duration) {
        self.state.lock().unwrap().send_delay = delay;
    }
}

async fn answer(
    state: Arc<Mutex<FakeState>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = match path.as_str() {
        "/cgi-bin/stable_token" => {
            let mut s = state.lock().unwrap();
            s.token_fetches
                .push(body["force_refresh"].as_bool().unwrap_or(false));
            // Like WeChat's stable_token: the same token until it expires or a refresh is forced.
            let current = format!("TOKEN-{}", s.issued);
            if s.issued > 0 && !s.expired.contains(&current) && body["force_refresh"] != true {
                json!({"access_token": current, "expires_in": 7200})
            } else {
                s.issued += 1;
                json!({"access_token": format!("TOKEN-{}", s.issued), "expires_in": 7200})
            }
        }
        "/cgi-bin/message/custom/send" => {
            let delay = state.lock().unwrap().send_delay;
            tokio::time::sleep(delay).await;
            let token = query
                .strip_prefix("access_token=")
                .unwrap_or_default()
                .to_owned();
            let to = body["touser"].as_str().unwrap_or_default().to_owned();
            let mut s = state.lock().unwrap();
            if s.expired.contains(&token) || !token.starts_with("TOKEN-") {
                json!({"errcode": 42001, "errmsg": "access_token expired"})
            } else if let Some((errcode, times)) = s.failures.get_mut(&to).filter(|(_, n)| *n > 0) {
                *times = times.saturating_sub(u32::from(*times != u32::MAX));
                json!({"errcode": *errcode, "errmsg": "injected"})
            } else {
                let content = body["text"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                s.sends.push((to, content));
                json!({"errcode": 0, "errmsg": "ok"})
            }
        }
        _ => json!({"errcode": 404, "errmsg": "no such API"}),
    };
    Ok(Response::new(Full::new(Bytes::from(reply.to_string()))))
}

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
                "session.timeout.ms=6000,heartbeat.interval.ms=500".into(),
            ),
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
                other => panic!("no flag for {other}"),
            };
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

    pub async fn store(&self) -> std::sync::Arc<dyn worker::store::EffectStore> {
        worker::store::open(&self.redis.url(), &self.key_prefix, Duration::from_secs(1))
            .await
            .unwrap()
    }
}
