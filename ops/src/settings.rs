//! The settings both binaries share (Kafka, Redis, the accounts), declared once and flattened
//! into each binary's config, with the one parser of `key=value` Kafka property lists, and
//! the typed error every config check returns.

use std::path::PathBuf;
use std::time::Duration;

use wechat::accounts::Secret;

/// What the ingress and the workers both read, with the same names and defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct Shared {
    /// Kafka bootstrap servers. The ingress runs the embedded broker when unset (for trying
    /// wxpipe out); the worker needs them.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// librdkafka properties for every Kafka client (producers, consumers, dead-letter
    /// producers, probes, `ingest topics`), `key=value` separated by commas: TLS, SASL and
    /// the like.
    #[arg(long, env = "KAFKA_CONFIG", value_delimiter = ',')]
    pub kafka_config: Vec<String>,

    /// Prefix of every topic name.
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "wechat")]
    pub topic_prefix: String,

    /// The dedup and effect store: `redis://host:port` (`rediss://` for TLS),
    /// `redis+cluster://host:port,host:port,…`, `redis+sentinel://host:port,…/MASTER`, or
    /// `memory://` (this process only).
    #[arg(long, env = "REDIS_URL", default_value = "memory://")]
    pub redis_url: String,

    /// Prefix of every Redis key wxpipe writes.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "wxpipe")]
    pub key_prefix: String,

    /// Milliseconds one Redis call may take. The ingress then goes on without it; a worker
    /// waits the outage out. One default for both: short enough that a slow Redis leaves the
    /// ingress time to answer WeChat.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 250)]
    pub redis_timeout_ms: u64,

    /// The account's AppID: checked inside every encrypted push, and the workers' API
    /// account for that account's events (`WECHAT_ORIGINAL_ID`).
    #[arg(long, env = "WECHAT_APPID")]
    pub appid: Option<String>,

    /// The `gh_…` id of the `WECHAT_*` account (its pushes' `ToUserName`): a push to
    /// `{INGEST_PATH}` naming another is refused (403), and the workers use `WECHAT_APPID`
    /// and `WECHAT_APPSECRET` for this account's events only. Required once more than one
    /// account is configured; with one account and none, any `ToUserName` is taken.
    #[arg(long, env = "WECHAT_ORIGINAL_ID")]
    pub original_id: Option<String>,

    /// The account's AppSecret (the workers' API calls); without one, welcome messages are
    /// logged, not sent.
    #[arg(long, env = "WECHAT_APPSECRET", hide_env_values = true)]
    pub appsecret: Option<Secret>,

    /// TOML file of several accounts (`[accounts.NAME]` with `token`, `appid`,
    /// `encoding_aes_key`, `appsecret`, `original_id`): the ingress serves each at
    /// `{INGEST_PATH}/NAME`; the workers find an account's AppID and AppSecret in it by
    /// `original_id`. With more than one account, each needs its `original_id`.
    #[arg(long, env = "INGEST_ACCOUNTS")]
    pub accounts_file: Option<PathBuf>,
}

impl Shared {
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Braces would change the Redis Cluster hash tag of every key, so one user's keys
        // could fall into different slots.
        if self.key_prefix.contains(['{', '}']) {
            return Err(ConfigError::Invalid(format!(
                "REDIS_KEY_PREFIX must not contain braces (they are Redis Cluster hash tags): {:?}",
                self.key_prefix
            )));
        }
        check_properties("KAFKA_CONFIG", &self.kafka_config)
    }
}

/// Why a configuration cannot work. The binaries print it and exit 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("WECHAT_TOKEN is required (the Token of the account's server config) unless INGEST_ACCOUNTS is set")]
    NoAccount,
    #[error(
        "KAFKA_BROKERS is set but empty: unset it for the embedded default, or list the brokers"
    )]
    BlankBrokers,
    #[error("INGEST_PATH must start with '/': {0:?}")]
    Path(String),
    #[error("{setting} entry is not key=value: {entry:?}")]
    NotKeyValue {
        setting: &'static str,
        entry: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// One entry of a Kafka property list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property<'a> {
    /// `key=value`, trimmed.
    Pair(&'a str, &'a str),
    /// Nothing (an empty variable).
    Empty,
    /// Not `key=value`.
    Malformed,
}

/// Parses one entry of a Kafka property list.
pub fn kafka_property(entry: &str) -> Property<'_> {
    if entry.trim().is_empty() {
        return Property::Empty;
    }
    match entry.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Property::Pair(key.trim(), value.trim()),
        _ => Property::Malformed,
    }
}

/// Checks a `key=value` list setting: the error names the setting and the entry.
pub fn check_properties(setting: &'static str, entries: &[String]) -> Result<(), ConfigError> {
    match entries
        .iter()
        .find(|entry| kafka_property(entry) == Property::Malformed)
    {
        Some(bad) => Err(ConfigError::NotKeyValue {
            setting,
            entry: bad.clone(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_pairs_are_named() {
        assert!(check_properties("KAFKA_CONFIG", &["a=b".into()]).is_ok());
        let error = check_properties("KAFKA_CONFIG", &["a=b".into(), "oops".into()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("KAFKA_CONFIG") && error.contains("oops"),
            "{error}"
        );
        assert!(check_properties("X", &["=v".into()]).is_err());
        assert!(
            check_properties("X", &["".into()]).is_ok(),
            "an empty variable"
        );
        assert_eq!(
            kafka_property(" acks = all "),
            Property::Pair("acks", "all")
        );
    }
}
