//! The test harness shared by wxpipe's crates (a dev-dependency only).
//!
//! - [`RedisServer`]: a real `redis-server` process on a free loopback port; [`RedisCluster`]
//!   and [`RedisSentinel`]: a cluster of six nodes and a Sentinel set, for failovers.
//! - [`Kafka`]: librdkafka's mock cluster (a Kafka-protocol broker in this process, with fault
//!   controls), or the brokers in `KAFKA_BROKERS`; [`Kafka::count`] and [`Kafka::read`] see what
//!   a topic holds, [`Kafka::produce`] writes to one.
//! - [`FakeWeChat`]: the WeChat API calls the workers make, served on a local port.
//! - [`unique`], [`free_port`], [`eventually`], [`terminate`]: names, ports, polling and
//!   SIGTERM with a deadline.
//! - [`Proxy`] and [`SmallDisk`]: faults to inject, a network that stalls or cuts and a disk
//!   that fills up (with Redis's `CLIENT PAUSE`, the mock cluster's broker controls, and
//!   clients that hang up, these are the fault suite's tools).
//!
//! A dev-dependency only: no crate's own code may depend on it.

mod fake_wechat;
mod faults;
mod names;
mod redis_sets;

pub use names::{free_port, unique};

pub use fake_wechat::{FakeState, FakeWeChat};
pub use faults::{redis_addr, Proxy, SmallDisk};
pub use redis_sets::{Node, RedisCluster, RedisSentinel, SlotCheckingRedis};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// Polls `check` every 50 ms until it holds or `within` passes; returns whether it held.
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

/// The value of the first series of metric `name` in a Prometheus text exposition whose
/// labels include every one of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.strip_prefix(name)?.rsplit_once(' ')?;
        let own = series.is_empty() || series.starts_with('{');
        let wanted = labels
            .iter()
            .all(|(label, value)| series.contains(&format!("{label}=\"{value}\"")));
        (own && wanted).then(|| value.parse().ok()).flatten()
    })
}

/// Runs `command` to its end and returns what it printed; `None` (and a SIGKILL) if it has not
/// ended `within` (a process that should have refused to start, and runs instead).
pub async fn output_within(
    command: &mut Command,
    within: Duration,
) -> Option<std::process::Output> {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the command");
    exit_within(&mut child, within).await?;
    Some(child.wait_with_output().expect("the child's output"))
}

/// The settings both binaries read (their services and the config file they share).
const SHARED_SETTINGS: [&str; 4] = [
    "KAFKA_BROKERS",
    "REDIS_URL",
    "WXPIPE_CONFIG",
    "KAFKA_CONFIG",
];

/// A binary run by a test that the environment around the test must not change: both
/// binaries' config tests run theirs so.
#[derive(Debug)]
pub struct Bare {
    pub program: &'static str,
    /// A setting of its own to take from the environment, beside [`SHARED_SETTINGS`].
    pub unset: &'static str,
    /// Its admin listener's setting, set empty (off) unless the test sets it.
    pub admin_listen: &'static str,
}

impl Bare {
    /// The binary with the settings above removed from its environment, `NO_COLOR=1`, its
    /// admin listener off, then `args` and `envs` (which override all of them).
    pub fn command(&self, args: &[&str], envs: &[(&str, &str)]) -> Command {
        let mut command = Command::new(self.program);
        for name in SHARED_SETTINGS.iter().chain([&self.unset]) {
            command.env_remove(name);
        }
        command
            .env("NO_COLOR", "1")
            .env(self.admin_listen, "")
            .args(args)
            .envs(envs.iter().copied());
        command
    }

    /// Runs [`Bare::command`] to its end ([`run_to_end`]), asserts that it exited with
    /// `code`, and returns what it printed ([`printed`]).
    pub async fn exits_with(&self, code: i32, args: &[&str], envs: &[(&str, &str)]) -> String {
        let out = run_to_end(self.command(args, envs)).await;
        let said = printed(&out);
        assert_eq!(out.status.code(), Some(code), "{said}");
        said
    }
}

/// Runs `command` to its end (60 s at most: a process that should have stopped at once and
/// serves instead fails the test).
pub async fn run_to_end(mut command: Command) -> std::process::Output {
    output_within(&mut command, Duration::from_secs(60))
        .await
        .expect("the process ended by itself")
}

/// What a process printed: its stdout, then its stderr.
pub fn printed(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A file `name` holding `content`, in a fresh temporary folder named from `prefix`.
pub fn temp_file(prefix: &str, name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// Asserts that a `/metrics` text has a `# HELP` and a `# TYPE` line for each metric `names`
/// (listed from start, before anything was counted).
pub fn assert_described<'a>(text: &str, names: impl IntoIterator<Item = &'a str>) {
    for name in names {
        for line in ["HELP", "TYPE"] {
            assert!(
                text.contains(&format!("# {line} {name} ")),
                "no {line} for {name} in:\n{text}"
            );
        }
    }
}

/// Waits for `child` to exit; `None` (and a SIGKILL) if it has not exited `within`.
async fn exit_within(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM to `child` and waits for it to exit; `None` (and a SIGKILL) if it has not
/// exited `within`.
pub async fn terminate(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    exit_within(child, within).await
}

/// A `redis-server` process on a loopback port, killed on drop.
#[derive(Debug)]
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
            .args(redis_sets::server_args(port, &[]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server must be installed (`tests/run` installs it from Debian's packages)",
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

    /// `CONFIG SET name value`, for tests that make Redis refuse something.
    pub fn config_set(&self, name: &str, value: &str) {
        redis::cmd("CONFIG")
            .arg(&["SET", name, value][..])
            .query::<()>(&mut self.conn())
            .unwrap();
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// `CLIENT PAUSE` for `millis`: Redis answers no client (this one neither) until then.
    pub fn pause(&self, millis: u64) {
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(millis)
            .arg("ALL")
            .exec(&mut self.conn())
            .unwrap();
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

/// Where records go in a test: the mock cluster (with fault controls), or real brokers.
pub enum Kafka {
    Mock(MockCluster<'static, DefaultProducerContext>),
    Real(String),
}

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kafka({})", self.brokers())
    }
}

impl Kafka {
    /// The mock cluster with `topics` created (2 partitions each), unless `KAFKA_BROKERS` is set.
    pub fn start(topics: &[String]) -> Kafka {
        match std::env::var("KAFKA_BROKERS") {
            Ok(brokers) if !brokers.is_empty() => Kafka::Real(brokers),
            _ => Kafka::mock(topics),
        }
    }

    pub fn mock(topics: &[String]) -> Kafka {
        Kafka::mock_hosts(1, topics)
    }

    /// A mock cluster of `brokers` hosts, every partition led by broker 1 until a test moves
    /// one (`partition_leader`): a host a test stops then sickens only what it leads.
    pub fn mock_hosts(brokers: i32, topics: &[String]) -> Kafka {
        let cluster = MockCluster::new(brokers).unwrap();
        for topic in topics {
            cluster.create_topic(topic, 2, 1).unwrap();
            for partition in 0..2 {
                cluster.partition_leader(topic, partition, Some(1)).unwrap();
            }
        }
        Kafka::Mock(cluster)
    }

    pub fn brokers(&self) -> String {
        match self {
            Kafka::Mock(cluster) => cluster.bootstrap_servers(),
            Kafka::Real(brokers) => brokers.clone(),
        }
    }

    /// The mock cluster, for tests that inject faults; `None` against real brokers.
    pub fn mock_cluster(&self) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        match self {
            Kafka::Mock(cluster) => Some(cluster),
            Kafka::Real(_) => None,
        }
    }

    fn consumer(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", unique("g"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap()
    }

    /// How many records a topic holds, by end offsets (nothing is read).
    pub fn count(&self, topic: &str) -> i64 {
        let consumer = self.consumer();
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
            return 0;
        };
        let Some(t) = metadata.topics().first() else {
            return 0;
        };
        t.partitions()
            .iter()
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                    .unwrap_or((0, 0));
                high - low
            })
            .sum()
    }

    /// The records of a topic below `group`'s committed offsets, summed over its partitions
    /// (a partition with nothing committed counts 0).
    pub fn committed(&self, group: &str, topic: &str) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
            return 0;
        };
        let mut list = TopicPartitionList::new();
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            list.add_partition(topic, p.id());
        }
        let Ok(committed) = consumer.committed_offsets(list, Duration::from_secs(5)) else {
            return 0;
        };
        committed
            .elements()
            .iter()
            .map(|e| {
                let low = consumer
                    .fetch_watermarks(topic, e.partition(), Duration::from_secs(5))
                    .map_or(0, |(low, _)| low);
                match e.offset() {
                    Offset::Offset(at) => at - low,
                    _ => 0,
                }
            })
            .sum()
    }

    /// How many records one partition holds, by its end offsets.
    pub fn count_partition(&self, topic: &str, partition: i32) -> i64 {
        let (low, high) = self
            .consumer()
            .fetch_watermarks(topic, partition, Duration::from_secs(5))
            .unwrap_or((0, 0));
        high - low
    }

    /// Reads a topic from the beginning until `expected` records are in (or 10 s pass):
    /// (key, value, headers) of each.
    pub fn read(&self, topic: &str, expected: usize) -> Vec<Record> {
        let metadata = self
            .consumer()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .unwrap();
        let partitions: Vec<i32> = metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| p.id())
            .collect();
        self.read_partitions(topic, &partitions, expected)
    }

    /// [`Kafka::read`] of one partition: its records in their order there.
    pub fn read_partition(&self, topic: &str, partition: i32, expected: usize) -> Vec<Record> {
        self.read_partitions(topic, &[partition], expected)
    }

    fn read_partitions(&self, topic: &str, partitions: &[i32], expected: usize) -> Vec<Record> {
        let consumer = self.consumer();
        let mut assignment = TopicPartitionList::new();
        for p in partitions {
            assignment
                .add_partition_offset(topic, *p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while records.len() < expected && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.unwrap();
                use rdkafka::message::Headers;
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    key: message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: message.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
        records
    }

    /// Writes records and waits until they are all acknowledged.
    pub fn produce(&self, topic: &str, records: &[(&str, &[u8])]) {
        let producer: ThreadedProducer<_> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("linger.ms", "5")
            .create()
            .unwrap();
        for (key, value) in records {
            let mut record = BaseRecord::<_, _, ()>::to(topic).key(*key).payload(*value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_metric_is_read_by_name_and_labels() {
        let text = "# TYPE a_total counter\n\
                    a_total_other{role=\"x\"} 9\n\
                    a_total{role=\"x\",outcome=\"done\"} 3\n\
                    a_total{role=\"y\",outcome=\"done\"} 4\n\
                    b 1.5\n";
        assert_eq!(super::metric(text, "a_total", &[("role", "x")]), Some(3.0));
        assert_eq!(
            super::metric(text, "a_total", &[("role", "y"), ("outcome", "done")]),
            Some(4.0)
        );
        assert_eq!(super::metric(text, "a_total", &[("role", "z")]), None);
        assert_eq!(super::metric(text, "b", &[]), Some(1.5));
    }
}
