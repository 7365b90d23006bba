//! The test harness: a real `redis-server` process, a Kafka-protocol broker (librdkafka's
//! mock cluster, or the brokers in `KAFKA_BROKERS`), and the ingress on port 0, with random
//! topic and key prefixes so tests never see each other's data.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ingest::embedded::Embedded;
use ingest::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use schemas::{Event, Kind, Topic};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "wxpipe-test-token";

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{}x{}x{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` process on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server must be installed (`.ci/run` installs it from Debian's packages)",
            );
        let server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(server.url()).unwrap();
        loop {
            if let Ok(mut conn) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the records go: the mock cluster (with fault controls), or real brokers.
pub enum Kafka {
    Mock(Embedded),
    Real(String),
}

impl Kafka {
    /// The mock cluster with every topic under `prefix`, unless `KAFKA_BROKERS` is set.
    pub fn start(prefix: &str) -> Kafka {
        match std::env::var("KAFKA_BROKERS") {
            Ok(brokers) if !brokers.is_empty() => Kafka::Real(brokers),
            _ => Kafka::mock(prefix),
        }
    }

    pub fn mock(prefix: &str) -> Kafka {
        Kafka::Mock(Embedded::start(1, prefix, 2).unwrap())
    }

    pub fn brokers(&self) -> String {
        match self {
            Kafka::Mock(embedded) => embedded.bootstrap_servers(),
            Kafka::Real(brokers) => brokers.clone(),
        }
    }

    pub fn mock_cluster(&self) -> Option<&Embedded> {
        match self {
            Kafka::Mock(embedded) => Some(embedded),
            Kafka::Real(_) => None,
        }
    }
}

/// A running ingress.
pub struct TestApp {
    pub addr: SocketAddr,
    pub config: Config,
    pub kafka: Kafka,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ingest::StartError>>>,
}

/// Defaults for tests: the given Redis (or memory://), fresh prefixes, a short deadline.
pub fn test_config(redis_url: &str) -> Config {
    let mut config = Config::for_token(TOKEN);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.redis_url = redis_url.to_owned();
    config.topic_prefix = unique("t");
    config.key_prefix = unique("k");
    config.ack_deadline_ms = 1500;
    config
}

impl TestApp {
    pub async fn spawn(redis_url: &str) -> TestApp {
        Self::spawn_with(test_config(redis_url)).await
    }

    pub async fn spawn_with(mut config: Config) -> TestApp {
        let kafka = Kafka::start(&config.topic_prefix);
        config.kafka_brokers = Some(kafka.brokers());
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(ingest::run(listener, config.clone(), async {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            config,
            kafka,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// The query string WeChat would send now, signed with `token`.
    pub fn signed_query(token: &str, nonce: &str) -> String {
        let ts = now().to_string();
        Self::signed_query_at(token, &ts, nonce)
    }

    pub fn signed_query_at(token: &str, timestamp: &str, nonce: &str) -> String {
        let signature = hex::encode(ingest::verify::signature(&mut [token, timestamp, nonce]));
        format!("signature={signature}&timestamp={timestamp}&nonce={nonce}")
    }

    /// POSTs a push with the given query string.
    pub async fn post_with_query(&self, query: &str, xml: &str) -> (u16, String) {
        self.post_to(&self.config.path, query, xml).await
    }

    /// POSTs a body to a path with the given query string.
    pub async fn post_to(&self, path: &str, query: &str, xml: &str) -> (u16, String) {
        let response = self
            .client
            .post(self.url(&format!("{path}?{query}")))
            .body(xml.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// POSTs a push signed as WeChat would, with a fresh nonce.
    pub async fn post_push(&self, xml: &str) -> (u16, String) {
        self.post_with_query(&Self::signed_query(TOKEN, &unique("n")), xml)
            .await
    }

    pub fn topic(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.config.topic_prefix)
    }

    fn consumer(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.kafka.brokers())
            .set("group.id", unique("g"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap()
    }

    /// How many records a topic holds (by end offsets; nothing is read).
    pub fn count(&self, suffix: &str) -> i64 {
        let consumer = self.consumer();
        let topic = self.topic(suffix);
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .unwrap();
        let Some(t) = metadata.topics().first() else {
            return 0;
        };
        t.partitions()
            .iter()
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p.id(), Duration::from_secs(5))
                    .unwrap_or((0, 0));
                high - low
            })
            .sum()
    }

    /// Records on every topic under this app's prefix.
    pub fn count_all(&self) -> i64 {
        Topic::all().map(|t| self.count(&t.suffix())).sum()
    }

    /// Reads a topic from the beginning until `expected` records are in (or 10 s pass), then
    /// returns (key, event, raw JSON) for each.
    pub fn read(&self, suffix: &str, expected: usize) -> Vec<(String, Event, serde_json::Value)> {
        let consumer = self.consumer();
        let topic = self.topic(suffix);
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(&topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while records.len() < expected && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.unwrap();
                let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
                let payload = message.payload().unwrap();
                let value: serde_json::Value = serde_json::from_slice(payload).unwrap();
                let event = Event::from_json(payload).unwrap();
                records.push((key, event, value));
            }
        }
        records
    }

    /// Stops the ingress gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Writes an `INGEST_ACCOUNTS` file into a fresh temporary folder and returns its path.
pub fn accounts_file(toml: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("wxpipe-accounts-"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("accounts.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Asserts a record validates against its topic's schema.
pub fn assert_schema_valid(topic: Topic, value: &serde_json::Value) {
    let schema = schemas::json_schema(topic);
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{} invalid: {errors:?}\n{value}",
        topic.suffix()
    );
}

pub fn topic_of(kind: Kind, type_: &str) -> Topic {
    Topic::of(kind, type_)
}

/// Polls `check` every 50 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
