//! One typed config: every setting is a flag with an environment fallback (`--help` lists them).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use ipnet::IpNet;
use ops::config_file::FileSettings;
use ops::settings::{check_properties, from_file, property_files, ConfigError};
pub use wechat::accounts::Secret;

/// wxpipe ingress: WeChat pushes to Kafka
#[derive(Debug, Clone, Parser)]
#[command(name = "ingest", version)]
pub struct Config {
    /// Address the ingress listens on.
    #[arg(long, env = "INGEST_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of `/healthz`, `/readyz` and `/metrics` (empty disables). The public listener
    /// serves only WeChat's paths, so nothing operational faces the internet.
    #[arg(long, env = "INGEST_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: String,

    /// Path that WeChat calls.
    #[arg(long, env = "INGEST_PATH", default_value = "/wechat")]
    pub path: String,

    /// The account's server-config Token (signature check). Required unless
    /// `INGEST_ACCOUNTS` or an Open Platform component (`WECHAT_COMPONENT_*`) is set.
    #[arg(long, env = "WECHAT_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,

    /// A file holding `WECHAT_TOKEN` (a Kubernetes or Docker secret), trailing newline ignored.
    #[arg(long, env = "WECHAT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// 43-character EncodingAESKey: enables compatible and safe mode.
    #[arg(long, env = "WECHAT_ENCODING_AES_KEY", hide_env_values = true)]
    pub encoding_aes_key: Option<Secret>,

    /// A file holding `WECHAT_ENCODING_AES_KEY`, trailing newline ignored.
    #[arg(long, env = "WECHAT_ENCODING_AES_KEY_FILE")]
    pub encoding_aes_key_file: Option<PathBuf>,

    /// Let plaintext pushes through although the account has an EncodingAESKey (WeChat always
    /// encrypts then): only for the minutes of switching modes in WeChat's console. Each such
    /// push is logged as a warning.
    #[arg(long, env = "WECHAT_ACCEPT_PLAINTEXT", default_value_t = false, action = clap::ArgAction::Set)]
    pub accept_plaintext: bool,

    /// Seconds a signed `timestamp` may differ from now (replay window; 0 disables).
    #[arg(long, env = "WECHAT_TIMESTAMP_TOLERANCE", default_value_t = 300)]
    pub timestamp_tolerance: u64,

    /// Milliseconds from a push's arrival to its answer: past it, a push not yet durable gets
    /// 503. Must stay below WeChat's 5 s.
    #[arg(long, env = "INGEST_ACK_DEADLINE_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(100..=4500))]
    pub ack_deadline_ms: u64,

    /// Pushes handled at once; past it a push gets 503 at once, so memory stays bounded
    /// while Kafka is slow.
    #[arg(long, env = "INGEST_MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: usize,

    /// Open connections at most; past it, the oldest connection that has not sent a complete
    /// request is closed for each new one (or the new one, when every connection is busy).
    #[arg(long, env = "INGEST_MAX_CONNECTIONS", default_value_t = 16384,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Comma-separated CIDRs (or addresses) a push may come from, e.g. the callback addresses
    /// WeChat publishes; a request from elsewhere gets 403. Unset: any address.
    #[arg(long, env = "INGEST_ALLOWED_IPS", value_delimiter = ',', value_parser = parse_net)]
    pub allowed_ips: Vec<IpNet>,

    /// Comma-separated CIDRs of proxies whose `X-Forwarded-For` is believed: the rightmost
    /// address in it that is not such a proxy is the client. Unset: the header is ignored.
    #[arg(long, env = "INGEST_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<IpNet>,

    /// Local disk spool for pushes Kafka cannot take in time; unset: no spool (503 instead).
    #[arg(long, env = "INGEST_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Spool size limit in bytes; past it, 503.
    #[arg(long, env = "INGEST_SPOOL_MAX_BYTES", default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,

    /// Largest accepted body, in bytes (413 past it).
    #[arg(long, env = "INGEST_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Milliseconds a client may take to send its request headers, and again its body.
    #[arg(long, env = "INGEST_READ_TIMEOUT_MS", default_value_t = 5000)]
    pub read_timeout_ms: u64,

    /// Seconds a dedup claim (and a nonce binding) is kept after its event is durable. Never
    /// less than the replay window needs, 2 × tolerance + 60 s (a day when the window is off):
    /// a lower value is raised to that, with a warning. Unset: that floor.
    #[arg(long, env = "INGEST_DEDUP_TTL")]
    pub dedup_ttl_secs: Option<u64>,

    /// Extra librdkafka producer properties, `key=value` separated by commas, applied over
    /// `KAFKA_CONFIG` (e.g. `compression.type=lz4`).
    #[arg(long, env = "KAFKA_PRODUCER_CONFIG", value_delimiter = ',')]
    pub kafka_producer_config: Vec<String>,

    /// Kafka, Redis and the accounts, as the workers read them.
    #[command(flatten)]
    pub shared: ops::settings::Shared,

    /// Partitions of each topic the embedded broker creates.
    #[arg(long, env = "EMBEDDED_PARTITIONS", default_value_t = 4)]
    pub embedded_partitions: i32,

    /// Settings of the workers the embedded default runs in-process.
    #[command(flatten)]
    pub worker: worker::config::WorkerSettings,

    /// Whether `run` also runs the workers (the embedded default does).
    #[arg(skip)]
    pub run_workers: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `ingest` does instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Create every topic wxpipe writes (for clusters where auto-creation is off), then exit.
    Topics {
        /// Partitions per topic: the ceiling on consumers per group, and on produce parallelism.
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        /// Replicas per partition. Unset: 3 (with `min.insync.replicas=2`, `acks=all` survives
        /// a broker's loss), or as many brokers as the cluster has when fewer (a development
        /// Kafka), which is said.
        #[arg(long)]
        replication_factor: Option<i32>,
        /// `retention.ms` of the topics `worker rebuild` reads (`event.subscribe`,
        /// `event.unsubscribe`, `event.location`); `-1`: forever. A rebuild is only as
        /// complete as these topics.
        #[arg(long, default_value_t = -1)]
        rebuild_retention_ms: i64,
        /// `retention.ms` of every other topic. Unset: the broker's default.
        #[arg(long)]
        retention_ms: Option<i64>,
    },
    /// Resolve the configuration as `ingest` would (flags, environment, `--config`), print
    /// each setting with where it came from (secrets masked) and every problem, and exit: 0,
    /// or 2 on a problem; with `--connect`, 1 when Kafka or Redis cannot be reached.
    Validate {
        /// Also reach Kafka (metadata) and Redis (the start-up round trip).
        #[arg(long)]
        connect: bool,
    },
}

/// The ingress's command line: every flag also after a subcommand (`ingest validate
/// --config FILE`).
pub fn command() -> clap::Command {
    ops::config_file::globals(Config::command(), &[])
}

/// The variables a config file may set: the ingress's and the workers' (one file for both).
pub fn variables() -> std::collections::BTreeSet<String> {
    let mut names = ops::config_file::variables(&Config::command());
    names.extend(ops::config_file::variables(&worker::Config::command()));
    names
}

/// A CIDR, or a single address (a /32 or /128).
fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("not a CIDR or an IP address: {text:?}"))
}

impl Config {
    pub fn ack_deadline(&self) -> Duration {
        Duration::from_millis(self.ack_deadline_ms)
    }

    /// How long a pending claim lives: a little past the ack deadline, and below WeChat's 5 s
    /// retry interval, so a claim left by a process that died is gone before the retry.
    pub fn claim_lease(&self) -> Duration {
        (self.ack_deadline() + Duration::from_millis(1000)).min(Duration::from_millis(4900))
    }

    /// The least a claim and a nonce binding may live: as long as a captured request can pass
    /// the replay window (2 × tolerance, with a minute for WeChat's retries), or a day with the
    /// window off. A shorter binding would let a captured plaintext query carry a new body.
    pub fn dedup_ttl_floor(&self) -> Duration {
        Duration::from_secs(match self.timestamp_tolerance {
            0 => 24 * 3600,
            // Saturating: a huge tolerance is a window off, not a wrapped few seconds.
            tolerance => tolerance.saturating_mul(2).saturating_add(60),
        })
    }

    /// `INGEST_DEDUP_TTL`, never below [`Config::dedup_ttl_floor`] (a lower setting is floored,
    /// with a warning at start).
    pub fn dedup_ttl(&self) -> Duration {
        let floor = self.dedup_ttl_floor();
        self.dedup_ttl_secs
            .map_or(floor, |secs| Duration::from_secs(secs).max(floor))
    }

    /// Whether `INGEST_DEDUP_TTL` asks for less than the floor: said at start.
    pub fn dedup_ttl_floored(&self) -> bool {
        self.dedup_ttl_secs
            .is_some_and(|secs| Duration::from_secs(secs) < self.dedup_ttl_floor())
    }

    /// How long a (timestamp, nonce) stays bound to its body: as long as a request carrying it
    /// can pass the replay window.
    pub fn nonce_ttl(&self) -> Duration {
        self.dedup_ttl()
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }

    /// How long a push's claim may take, waiting in the group-commit queue included: two
    /// Redis calls (the one before it, and its own), and never more than a third of the ack
    /// deadline, so a stalled Redis leaves the rest for Kafka and the answer comes in time.
    pub fn claim_budget(&self) -> Duration {
        (2 * self.shared.redis_timeout()).min(self.ack_deadline() / 3)
    }

    /// Parses the command line (after [`ops::config_file::load`] fed the config file):
    /// clap's errors exit as clap does (2).
    pub fn from_command_line(file: &FileSettings) -> (Config, clap::ArgMatches) {
        use clap::FromArgMatches;
        let command = command();
        let matches = command.clone().get_matches();
        let mut config = Config::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        config.apply_file(file, &command, &matches);
        (config, matches)
    }

    /// What the config file gives that clap does not parse: its property tables (unless a
    /// flag or the environment set them) and its accounts.
    pub fn apply_file(
        &mut self,
        file: &FileSettings,
        command: &clap::Command,
        matches: &clap::ArgMatches,
    ) {
        if let Some(entries) = file.properties_for(command, matches, "KAFKA_CONFIG") {
            self.shared.kafka_config = entries;
        }
        if let Some(entries) = file.properties_for(command, matches, "KAFKA_PRODUCER_CONFIG") {
            self.kafka_producer_config = entries;
        }
        if let Some(entries) = file.properties_for(command, matches, "KAFKA_CONSUMER_CONFIG") {
            self.worker.kafka_consumer_config = entries;
        }
        self.shared.accounts = file.accounts.clone();
    }

    /// Reads the secrets given as files (`WECHAT_TOKEN_FILE` and the like); each problem
    /// names its setting.
    pub fn resolve_files(&mut self) -> Vec<String> {
        let mut problems = self.shared.resolve_files();
        for (secret, file, name) in [
            (&mut self.token, &self.token_file, "WECHAT_TOKEN"),
            (
                &mut self.encoding_aes_key,
                &self.encoding_aes_key_file,
                "WECHAT_ENCODING_AES_KEY",
            ),
        ] {
            let mut value = secret.take().map(|s| s.expose().to_owned());
            if let Err(problem) = from_file(&mut value, file, name) {
                problems.push(problem);
            }
            *secret = value.map(Secret::new);
        }
        for (name, entries) in [
            ("KAFKA_PRODUCER_CONFIG", &mut self.kafka_producer_config),
            (
                "KAFKA_CONSUMER_CONFIG",
                &mut self.worker.kafka_consumer_config,
            ),
        ] {
            if let Err(problem) = property_files(name, entries) {
                problems.push(problem);
            }
        }
        problems
    }

    /// Checks what clap cannot: at least one account is configured, the Kafka property
    /// lists are `key=value`, and those of the in-process workers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ops::settings::first(self.problems())
    }

    /// Every problem [`Config::validate`] finds, each naming its setting, for `validate`.
    pub fn problems(&self) -> Vec<ConfigError> {
        let shared = &self.shared;
        let mut problems = Vec::new();
        // A component given in part is `Shared::problems`'s to name.
        let component = shared.component_appid.is_some()
            || shared.component_token.is_some()
            || shared.component_encoding_aes_key.is_some();
        if self.token.as_ref().is_none_or(|t| t.expose().is_empty())
            && shared.accounts_file.is_none()
            && shared.accounts.is_none()
            && !component
        {
            problems.push(ConfigError::NoAccount);
        }
        // Blank is neither the embedded default nor a broker list: refuse it rather than run
        // a producer that reaches nothing, or the embedded broker where Kafka was meant.
        if shared
            .kafka_brokers
            .as_deref()
            .is_some_and(|b| b.trim().is_empty())
        {
            problems.push(ConfigError::BlankBrokers);
        }
        if !self.path.starts_with('/') {
            problems.push(ConfigError::Path(self.path.clone()));
        }
        // Outside the embedded default (no KAFKA_BROKERS), the store is chosen, never assumed.
        problems.extend(shared.check_store().err());
        problems.extend(shared.problems());
        problems
            .extend(check_properties("KAFKA_PRODUCER_CONFIG", &self.kafka_producer_config).err());
        if self.run_workers {
            let workers = self.worker_config().problems();
            problems.extend(
                workers
                    .into_iter()
                    .filter(|p| !shared.problems().contains(p)),
            );
        }
        problems
    }

    /// The config of the in-process workers: the same Kafka, store and accounts.
    pub fn worker_config(&self) -> worker::Config {
        let mut config = worker::Config::defaults();
        config.shared = self.shared.clone();
        config.settings = self.worker.clone();
        // The ingress serves /metrics and /readyz for the whole process.
        config.admin_listen = String::new();
        config
    }

    /// A config for tests and embedding: defaults plus a token.
    pub fn for_token(token: &str) -> Config {
        let mut config = Config::parse_from(["ingest"]);
        config.token = Some(Secret::new(token));
        config.shared.redis_url = Some(ops::settings::MEMORY.into());
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_workers_share_the_ingress_redis_timeout() {
        let mut config = Config::for_token("t");
        assert_eq!(
            config.shared.redis_timeout_ms,
            worker::Config::defaults().shared.redis_timeout_ms,
            "one default for both binaries"
        );
        config.shared.redis_timeout_ms = 777;
        assert_eq!(config.worker_config().shared.redis_timeout_ms, 777);
    }

    #[test]
    fn blank_kafka_brokers_are_a_config_error() {
        let mut config = Config::for_token("t");
        for blank in ["", " "] {
            config.shared.kafka_brokers = Some(blank.into());
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("KAFKA_BROKERS"), "{error}");
        }
        config.shared.kafka_brokers = Some("localhost:9092".into());
        assert_eq!(config.validate(), Ok(()));
        config.shared.kafka_brokers = None;
        assert_eq!(config.validate(), Ok(()), "unset: the embedded default");
    }

    #[test]
    fn address_lists_take_cidrs_and_addresses() {
        let config = Config::try_parse_from([
            "ingest",
            "--allowed-ips",
            "101.226.0.0/16, 10.1.2.3,::1",
            "--trusted-proxies",
            "10.0.0.0/8",
        ])
        .unwrap();
        let shown: Vec<String> = config.allowed_ips.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["101.226.0.0/16", "10.1.2.3/32", "::1/128"]);
        assert_eq!(config.trusted_proxies.len(), 1);
        let error = Config::try_parse_from(["ingest", "--allowed-ips", "10.0.0.0/33"]).unwrap_err();
        assert!(error.to_string().contains("10.0.0.0/33"), "{error}");
    }

    #[test]
    fn kafka_property_lists_are_checked_for_every_client() {
        let mut config = Config::for_token("t");
        config.shared.kafka_config = vec!["security.protocol=ssl".into(), "oops".into()];
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("KAFKA_CONFIG"));
        config.shared.kafka_config = vec!["security.protocol=ssl".into()];
        config.kafka_producer_config = vec!["linger.ms".into()];
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("KAFKA_PRODUCER_CONFIG"));
        config.kafka_producer_config.clear();
        // The in-process workers' consumer settings are checked too, and get KAFKA_CONFIG.
        config.run_workers = true;
        config.worker.kafka_consumer_config = vec!["fetch.wait.max.ms".into()];
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("KAFKA_CONSUMER_CONFIG"));
        config.worker.kafka_consumer_config.clear();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(
            config.worker_config().shared.kafka_config,
            config.shared.kafka_config
        );
    }

    #[test]
    fn the_worker_knows_every_setting_of_the_ingress() {
        // The worker binary reads the same config file, and cannot see these definitions.
        let ingress = ops::config_file::variables(&Config::command());
        let worker = ops::config_file::variables(&worker::Config::command());
        let only: Vec<&str> = ingress.difference(&worker).map(String::as_str).collect();
        assert_eq!(only, ops::config_file::INGEST_ONLY);
    }

    #[test]
    fn kafka_without_a_store_is_a_config_error() {
        let mut config = Config::for_token("t");
        config.shared.redis_url = None;
        assert_eq!(config.validate(), Ok(()), "the embedded default");
        config.shared.kafka_brokers = Some("localhost:9092".into());
        assert_eq!(config.validate(), Err(ConfigError::NoRedis));
        config.shared.redis_url = Some("memory://".into());
        assert_eq!(config.validate(), Ok(()), "written out");
        assert!(config.shared.memory_with_kafka());
    }

    #[test]
    fn accounts_come_from_one_place() {
        let mut config = Config::for_token("t");
        config.shared.accounts = Some(wechat::accounts::AccountsFile::default());
        assert_eq!(config.validate(), Ok(()));
        config.shared.accounts_file = Some("accounts.toml".into());
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("INGEST_ACCOUNTS") && error.contains("[accounts.NAME]"),
            "{error}"
        );
    }

    #[test]
    fn every_flag_is_accepted_after_a_subcommand() {
        use clap::FromArgMatches;
        let matches = command()
            .try_get_matches_from(["ingest", "validate", "--path", "/p", "--connect"])
            .unwrap();
        let config = Config::from_arg_matches(&matches).unwrap();
        assert_eq!(config.path, "/p");
        assert!(matches!(
            config.command,
            Some(Command::Validate { connect: true })
        ));
    }

    #[test]
    fn secrets_never_print() {
        let config = Config::for_token("hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn lease_stays_below_wechat_retry_interval() {
        let mut config = Config::for_token("t");
        for ms in [100, 3000, 4500] {
            config.ack_deadline_ms = ms;
            assert!(config.claim_lease() > config.ack_deadline());
            assert!(config.claim_lease() < Duration::from_secs(5));
        }
    }

    #[test]
    fn dedup_ttl_covers_the_replay_window() {
        let mut config = Config::for_token("t");
        assert_eq!(config.dedup_ttl(), Duration::from_secs(660));
        config.timestamp_tolerance = 0;
        assert_eq!(config.dedup_ttl(), Duration::from_secs(86400));
    }

    #[test]
    fn a_short_dedup_ttl_is_floored_at_the_replay_window() {
        let mut config = Config::for_token("t");
        config.dedup_ttl_secs = Some(1);
        assert_eq!(config.dedup_ttl(), Duration::from_secs(660));
        assert_eq!(config.nonce_ttl(), Duration::from_secs(660));
        assert!(config.dedup_ttl_floored());
        config.timestamp_tolerance = 0;
        assert_eq!(
            config.dedup_ttl(),
            Duration::from_secs(86400),
            "the window off: a day"
        );
        config.dedup_ttl_secs = Some(7 * 86400);
        assert_eq!(config.dedup_ttl(), Duration::from_secs(7 * 86400));
        assert!(!config.dedup_ttl_floored());
    }

    /// Red team: `2 × tolerance + 60` overflowed for a huge `WECHAT_TIMESTAMP_TOLERANCE` (a
    /// panic in a debug build; in release it wrapped: 2^63 s gave a 60 s floor while every
    /// timestamp passed the window).
    #[test]
    fn a_huge_tolerance_floors_the_ttl_past_the_window() {
        let mut config = Config::for_token("t");
        config.timestamp_tolerance = 1 << 63;
        assert!(config.dedup_ttl() > Duration::from_secs(1 << 63));
        assert!(config.nonce_ttl() > Duration::from_secs(1 << 63));
        config.timestamp_tolerance = u64::MAX;
        assert_eq!(config.dedup_ttl(), Duration::from_secs(u64::MAX));
    }

    #[test]
    fn missing_token_is_a_clear_error() {
        let mut config = Config::for_token("");
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("WECHAT_TOKEN"));
        config.token = Some(Secret::new("t"));
        assert!(config.validate().is_ok());
        // An accounts file alone is enough: the README says the token is required unless
        // INGEST_ACCOUNTS is set.
        config.token = None;
        config.shared.accounts_file = Some("accounts.toml".into());
        assert!(config.validate().is_ok());
    }
}
