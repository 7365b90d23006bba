//! The test harness: a real `redis-server` process, a Kafka-protocol broker (librdkafka's
//! mock cluster, or the brokers in `KAFKA_BROKERS`), and the ingress on port 0, with random
//! topic and key prefixes so tests never see each other's data.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ingest::Config;
use schemas::{Event, Topic};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use testkit::{
    eventually, free_port, redis_addr, unique, Kafka, Proxy, RedisServer, SmallDisk,
};

pub const TOKEN: &str = "wxpipe-test-token";

/// A running ingress.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The admin listener: `/healthz`, `/readyz`, `/metrics`.
    pub admin: SocketAddr,
    pub config: Config,
    pub kafka: Kafka,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ingest::StartError>>>,
    /// The `ingest` binary, when the app runs as one ([`TestApp::spawn_binary`]).
    process: Option<Ingest>,
}

/// Defaults for tests: the given Redis (or memory://), fresh prefixes, a short deadline.
pub fn test_config(redis_url: &str) -> Config {
    let mut config = Config::for_token(TOKEN);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.shared.redis_url = Some(redis_url.to_owned());
    config.shared.topic_prefix = unique("t");
    config.shared.key_prefix = unique("k");
    config.ack_deadline_ms = 1500;
    config
}

/// A broker holding every topic under the config's prefix, which the config then names.
fn start_kafka(config: &mut Config) -> Kafka {
    let kafka = Kafka::start(&all_topics(&config.shared.topic_prefix));
    config.shared.kafka_brokers = Some(kafka.brokers());
    kafka
}

/// The name of every topic under `prefix`.
pub fn all_topics(prefix: &str) -> Vec<String> {
    Topic::all().map(|t| t.name(prefix)).collect()
}

impl TestApp {
    pub async fn spawn(redis_url: &str) -> TestApp {
        Self::spawn_with(test_config(redis_url)).await
    }

    /// [`TestApp::spawn`], with the test config as `configure` leaves it.
    pub async fn spawn_configured(redis_url: &str, configure: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = test_config(redis_url);
        configure(&mut config);
        Self::spawn_with(config).await
    }

    pub async fn spawn_with(mut config: Config) -> TestApp {
        let kafka = start_kafka(&mut config);
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(ingest::serve(
            listener,
            Some(admin_listener),
            config.clone(),
            async {
                let _ = rx.await;
            },
        ));
        TestApp {
            addr,
            admin,
            config,
            kafka,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
            process: None,
        }
    }

    /// The same app as [`TestApp::spawn_with`], as the real `ingest` binary in a process of
    /// its own, configured through its environment: for the fault tests, which must hold for
    /// what users run. Settings the mapping below does not carry make it panic, so a test
    /// never runs with a setting silently dropped.
    pub async fn spawn_binary(mut config: Config) -> TestApp {
        let kafka = start_kafka(&mut config);
        Self::spawn_binary_on(config, kafka).await
    }

    /// [`TestApp::spawn_binary`] on a Kafka the test started itself (a mock of several
    /// brokers), which the config then names.
    pub async fn spawn_binary_on(mut config: Config, kafka: Kafka) -> TestApp {
        config.shared.kafka_brokers = Some(kafka.brokers());
        // A port free a moment ago may be taken before the binary binds it (by another test's
        // connection): then the binary exits, and is started again on other ports.
        for attempt in 1.. {
            let (port, admin_port) = (free_port(), free_port());
            config.listen = format!("127.0.0.1:{port}").parse().unwrap();
            config.admin_listen = format!("127.0.0.1:{admin_port}");
            let mut envs: Vec<(&str, String)> = vec![
                ("INGEST_LISTEN", config.listen.to_string()),
                ("INGEST_ADMIN_LISTEN", config.admin_listen.clone()),
                ("KAFKA_BROKERS", kafka.brokers()),
                ("KAFKA_TOPIC_PREFIX", config.shared.topic_prefix.clone()),
                (
                    "REDIS_URL",
                    config.shared.redis_url.clone().unwrap_or_default(),
                ),
                ("REDIS_KEY_PREFIX", config.shared.key_prefix.clone()),
                ("INGEST_ACK_DEADLINE_MS", config.ack_deadline_ms.to_string()),
                (
                    "REDIS_TIMEOUT_MS",
                    config.shared.redis_timeout_ms.to_string(),
                ),
                ("INGEST_MAX_IN_FLIGHT", config.max_in_flight.to_string()),
                ("INGEST_SPOOL_MAX_BYTES", config.spool_max_bytes.to_string()),
            ];
            let mut expected = Config::for_token(TOKEN);
            expected.listen = config.listen;
            expected.admin_listen = config.admin_listen.clone();
            expected.shared.kafka_brokers = config.shared.kafka_brokers.clone();
            expected.shared.topic_prefix = config.shared.topic_prefix.clone();
            expected.shared.redis_url = config.shared.redis_url.clone();
            expected.shared.key_prefix = config.shared.key_prefix.clone();
            expected.ack_deadline_ms = config.ack_deadline_ms;
            expected.shared.redis_timeout_ms = config.shared.redis_timeout_ms;
            expected.max_in_flight = config.max_in_flight;
            expected.spool_max_bytes = config.spool_max_bytes;
            if let Some(dir) = &config.spool_dir {
                envs.push(("INGEST_SPOOL_DIR", dir.display().to_string()));
                expected.spool_dir = Some(dir.clone());
            }
            if let Some(file) = &config.shared.accounts_file {
                envs.push(("INGEST_ACCOUNTS", file.display().to_string()));
                expected.shared.accounts_file = Some(file.clone());
            }
            if let Some(id) = &config.shared.original_id {
                envs.push(("WECHAT_ORIGINAL_ID", id.clone()));
                expected.shared.original_id = Some(id.clone());
            }
            let shared = &config.shared;
            for (variable, value) in [
                ("WECHAT_COMPONENT_APPID", shared.component_appid.clone()),
                (
                    "WECHAT_COMPONENT_TOKEN",
                    shared
                        .component_token
                        .as_ref()
                        .map(|s| s.expose().to_owned()),
                ),
                (
                    "WECHAT_COMPONENT_ENCODING_AES_KEY",
                    shared
                        .component_encoding_aes_key
                        .as_ref()
                        .map(|s| s.expose().to_owned()),
                ),
                (
                    "WECHAT_COMPONENT_APPSECRET",
                    shared
                        .component_appsecret
                        .as_ref()
                        .map(|s| s.expose().to_owned()),
                ),
            ] {
                if let Some(value) = value {
                    envs.push((variable, value));
                }
            }
            expected.shared.component_appid = shared.component_appid.clone();
            expected.shared.component_token = shared.component_token.clone();
            expected.shared.component_encoding_aes_key = shared.component_encoding_aes_key.clone();
            expected.shared.component_appsecret = shared.component_appsecret.clone();
            if shared.component_release_check {
                envs.push(("WECHAT_COMPONENT_RELEASE_CHECK", "true".to_owned()));
                expected.shared.component_release_check = true;
            }
            if config.token.is_some() {
                envs.push(("WECHAT_TOKEN", TOKEN.to_owned()));
            } else {
                expected.token = None;
            }
            assert_eq!(
                format!("{expected:?}"),
                format!("{config:?}"),
                "a setting spawn_binary does not pass on"
            );
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("RUST_LOG", "error")
                .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let client = reqwest::Client::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let admin: std::net::SocketAddr = config.admin_listen.parse().unwrap();
            loop {
                if client
                    .get(format!("http://{admin}/healthz"))
                    .send()
                    .await
                    .is_ok()
                {
                    return TestApp {
                        addr: config.listen,
                        admin,
                        config,
                        kafka,
                        client,
                        shutdown: None,
                        task: None,
                        process: Some(Ingest(child)),
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    assert!(
                        attempt < 5,
                        "the ingest binary exited at start {attempt} times"
                    );
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the ingest binary did not come up"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        unreachable!("the attempts loop returns or panics")
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
        wechat::Signer::plaintext(token).query(timestamp, nonce)
    }

    /// The URL WeChat would post a push to now, signed with a fresh nonce.
    pub fn push_url(&self) -> String {
        let query = Self::signed_query(TOKEN, &unique("n"));
        self.url(&format!("{}?{query}", self.config.path))
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
        format!("{}.{suffix}", self.config.shared.topic_prefix)
    }

    /// How many records a topic holds (by end offsets; nothing is read).
    pub fn count(&self, suffix: &str) -> i64 {
        self.kafka.count(&self.topic(suffix))
    }

    /// Records on every topic under this app's prefix.
    pub fn count_all(&self) -> i64 {
        Topic::all().map(|t| self.count(&t.suffix())).sum()
    }

    /// Reads a topic until `expected` records are in (or 10 s pass): (key, event, raw JSON).
    pub fn read(&self, suffix: &str, expected: usize) -> Vec<(String, Event, serde_json::Value)> {
        self.kafka
            .read(&self.topic(suffix), expected)
            .into_iter()
            .map(|r| {
                let value: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
                (r.key.unwrap(), Event::from_json(&r.value).unwrap(), value)
            })
            .collect()
    }

    /// The accounts of a topic's `expected` records (read as [`TestApp::read`]), sorted.
    pub fn accounts(&self, suffix: &str, expected: usize) -> Vec<String> {
        let records = self.read(suffix, expected).into_iter();
        let mut accounts: Vec<String> = records.map(|(_, event, _)| event.account).collect();
        accounts.sort();
        accounts
    }

    /// Reads a topic's `expected` records, then asserts that `settle` later it holds no
    /// more: each of them once (`why` says what that means to the test).
    pub async fn read_exactly(
        &self,
        suffix: &str,
        expected: usize,
        settle: std::time::Duration,
        why: &str,
    ) -> Vec<(String, Event, serde_json::Value)> {
        let records = self.read(suffix, expected);
        assert_eq!(records.len(), expected, "{suffix}: {why}");
        tokio::time::sleep(settle).await;
        assert_eq!(self.count(suffix), expected as i64, "{suffix}: {why}");
        records
    }

    /// GETs a path of the public listener: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        self.request(reqwest::Method::GET, path).await
    }

    /// Sends a request without a body to a path of the public listener: (status, body).
    pub async fn request(&self, method: reqwest::Method, path: &str) -> (u16, String) {
        let request = self.client.request(method, self.url(path));
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// GETs a path of the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.admin);
        let response = self.client.get(url).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Asserts `/readyz` answers 200 `degraded`, naming `what`.
    pub async fn assert_degraded(&self, what: &str) {
        let (status, body) = self.admin_get("/readyz").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.starts_with("degraded") && body.contains(what),
            "{body}"
        );
    }

    /// Redis, down at `port`, comes back: the app says it is degraded before, is ready again
    /// `within` after, and dedups again (`xml`, a subscribe posted twice, is answered 200
    /// twice, and `event.subscribe` then holds `records`, each once: `why`). The Redis that
    /// came back.
    pub async fn assert_redis_comes_back(
        &self,
        port: u16,
        within: std::time::Duration,
        xml: &str,
        records: usize,
        why: &str,
    ) -> RedisServer {
        // Redis down is degraded, not unready: pushes are still made durable.
        self.assert_degraded("redis").await;
        let redis = RedisServer::start_on(port);
        assert!(
            self.wait_ready(within).await,
            "ready again once Redis is back"
        );
        assert_eq!(self.post_push(xml).await.0, 200);
        assert_eq!(self.post_push(xml).await.0, 200, "dedup works again");
        let settle = std::time::Duration::from_millis(300);
        self.read_exactly("event.subscribe", records, settle, why)
            .await;
        redis
    }

    /// Polls `/readyz` every 100 ms until it answers 200 `ready` (not degraded) or `within`
    /// passes.
    pub async fn wait_ready(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if self.admin_get("/readyz").await == (200, "ready\n".to_owned()) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }

    /// Waits up to `within` for the binary to exit by itself: its status, `None` while it
    /// still runs.
    pub async fn exited_within(
        &mut self,
        within: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let process = self.process.as_mut()?;
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = process.0.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Signals the ingress to stop (SIGTERM to the binary), without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(process) = &self.process {
            std::process::Command::new("kill")
                .args(["-TERM", &process.0.id().to_string()])
                .status()
                .unwrap();
        }
    }

    /// Waits for the ingress to finish after `signal_stop`: a clean exit.
    pub async fn join(&mut self) {
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        if let Some(mut process) = self.process.take() {
            let status = tokio::task::spawn_blocking(move || {
                let status = process.0.wait();
                std::mem::forget(process);
                status
            })
            .await
            .unwrap()
            .unwrap();
            assert!(status.success(), "the ingress exited with {status}");
        }
    }

    /// Stops the ingress gracefully and waits for it.
    pub async fn stop(mut self) {
        self.signal_stop();
        self.join().await;
    }

    /// SIGKILL, for a binary app: no flush, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // An in-process ingress that was not stopped still holds its producer in a task of
        // the test's runtime, which outlives this value: its broker must outlive it too, or
        // librdkafka's threads reach a destroyed mock cluster (a SIGSEGV of the whole test
        // binary, at any later moment). The test process ends soon; the broker is leaked.
        if self.task.is_some() {
            std::mem::forget(std::mem::replace(
                &mut self.kafka,
                Kafka::Real(String::new()),
            ));
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

/// An `ingest` process, killed (SIGKILL) when dropped, so a failing test leaves none behind.
pub struct Ingest(pub std::process::Child);

impl Ingest {
    /// SIGKILL: no flush, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the `ingest` binary on `port` with the test token and the given settings.
pub fn spawn_ingest(port: u16, envs: &[(&str, String)]) -> Ingest {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
        .envs([
            ("INGEST_LISTEN", format!("127.0.0.1:{port}")),
            ("INGEST_ADMIN_LISTEN", String::new()),
            ("WECHAT_TOKEN", TOKEN.to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Ingest(child)
}

/// Waits up to 60 s for an ingress on `port` to answer `/healthz`.
///
/// Generous for a busy test machine: an ingress on the embedded default creates every topic in
/// librdkafka's mock cluster first (0.1 s here since `embedded::nudging` works around the
/// mock's lost wake-ups, which had made it 3 to 17 s). A process that never comes up still
/// fails the test.
pub async fn wait_up(port: u16) {
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("ingest did not come up on port {port}");
}

/// Runs the `ingest` binary with the test token, `envs` and no admin listener, which must
/// refuse to start: exit 2 within 60 s. What it said on stderr.
pub async fn refused_start(envs: &[(&str, String)]) -> String {
    let output = testkit::output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
            .envs([
                ("INGEST_LISTEN", "127.0.0.1:0"),
                ("INGEST_ADMIN_LISTEN", ""),
                ("WECHAT_TOKEN", TOKEN),
            ])
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str()))),
        std::time::Duration::from_secs(60),
    )
    .await
    .expect("the ingress refuses to start, and exits");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// POSTs a signed push to an ingress on `port`: the status.
pub async fn post_to_port(port: u16, xml: &str) -> u16 {
    let query = TestApp::signed_query(TOKEN, &unique("n"));
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/wechat?{query}"))
        .body(xml.to_owned())
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// A fresh folder for a spool (`INGEST_SPOOL_DIR`), created by the ingress.
pub fn spool_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(unique("wxpipe-spool-"))
}

/// `work`'s output and how long it took: for the tests that bound an answer's time.
pub async fn timed<T>(work: impl std::future::Future<Output = T>) -> (T, std::time::Duration) {
    let started = std::time::Instant::now();
    let output = work.await;
    (output, started.elapsed())
}

/// Runs `during` with the app's broker down, then brings the broker back: the spool's
/// scenario. `None`, with nothing run, against real brokers, which a test cannot stop.
pub async fn with_broker_down<T>(
    app: &TestApp,
    during: impl std::future::Future<Output = T>,
) -> Option<T> {
    let mock = app.kafka.mock_cluster()?;
    mock.broker_down(1).unwrap();
    let output = during.await;
    mock.broker_up(1).unwrap();
    Some(output)
}

/// The dedup key of an event id, by the contract: `{p}:dedup:{account:openid}:{id}`.
pub fn dedup_key(prefix: &str, id: &str) -> String {
    let mut parts = id.splitn(3, ':');
    let (account, openid) = (parts.next().unwrap(), parts.next().unwrap());
    format!("{prefix}:dedup:{{{account}:{openid}}}:{id}")
}

/// A fresh `redis-server` and the app on it (the server lives as long as the first value).
pub async fn on_redis() -> (RedisServer, TestApp) {
    on_redis_with(|_| {}).await
}

/// [`on_redis`], with the test config as `configure` leaves it.
pub async fn on_redis_with(configure: impl FnOnce(&mut Config)) -> (RedisServer, TestApp) {
    let redis = RedisServer::start();
    let app = TestApp::spawn_configured(&redis.url(), configure).await;
    (redis, app)
}

/// Asserts that in a Prometheus exposition every metric with labelled series says which in
/// its HELP line, as `…, by a, b and c` (a histogram's own `le` and a summary's `quantile`
/// aside), naming exactly the labels its series carry.
pub fn assert_help_names_the_labels(exposition: &str) {
    use std::collections::{BTreeMap, BTreeSet};
    let mut helps: BTreeMap<&str, &str> = BTreeMap::new();
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let (name, text) = help.split_once(' ').unwrap_or((help, ""));
            helps.insert(name, text);
        } else if !line.starts_with('#') && line.contains('{') {
            let (series, _) = line.split_once('{').unwrap();
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| series.strip_suffix(suffix))
                .unwrap_or(series);
            let names = labels.entry(name.to_owned()).or_default();
            for pair in line[line.find('{').unwrap() + 1..line.rfind('}').unwrap()].split("\",") {
                let label = pair.split('=').next().unwrap().trim_matches(',');
                if !label.is_empty() && label != "le" && label != "quantile" {
                    names.insert(label.to_owned());
                }
            }
        }
    }
    assert!(!labels.is_empty(), "no labelled series in:\n{exposition}");
    for (name, carried) in labels {
        if carried.is_empty() {
            continue;
        }
        let help = helps
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{name} has no HELP"));
        let listed: BTreeSet<String> = help
            .rsplit_once(", by ")
            .map(|(_, by)| by.split(" (").next().unwrap_or_default())
            .unwrap_or_default()
            .split(", ")
            .flat_map(|part| part.split(" and "))
            .filter(|label| !label.is_empty())
            .map(str::to_owned)
            .collect();
        assert_eq!(listed, carried, "{name}: HELP {help:?}");
    }
}
