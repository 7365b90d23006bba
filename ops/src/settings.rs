//! The settings both binaries share (Kafka, Redis, the accounts), declared once and flattened
//! into each binary's config, with the one parser of `key=value` Kafka property lists, and
//! the typed error every config check returns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wechat::accounts::{AccountsFile, ComponentEntry, Secret};

/// `REDIS_URL` for a store in this process only.
pub const MEMORY: &str = "memory://";

/// What the ingress and the workers both read, with the same names and defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct Shared {
    /// Kafka bootstrap servers. The ingress runs the embedded broker when unset (for trying
    /// wxpipe out); the worker needs them.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// librdkafka properties for every Kafka client (producers, consumers, dead-letter
    /// producers, probes, `ingest topics`), `key=value` separated by commas: TLS, SASL and
    /// the like. A key ending in `_file` names a file holding the value of the key without
    /// it (`sasl.password_file=/run/secrets/kafka` sets `sasl.password`). In the config file,
    /// the table `[kafka.config]`.
    #[arg(long, env = "KAFKA_CONFIG", value_delimiter = ',')]
    pub kafka_config: Vec<String>,

    /// Prefix of every topic name.
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "wechat")]
    pub topic_prefix: String,

    /// The dedup and effect store: `redis://host:port` (`rediss://` for TLS),
    /// `redis+cluster://host:port,host:port,…`, `redis+sentinel://host:port,…/MASTER`, or
    /// `memory://` (this process only). Required with `KAFKA_BROKERS` (`memory://` must be
    /// written out there: each process would dedup alone); unset, the embedded default uses
    /// `memory://`.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// A file holding `REDIS_URL` (a Kubernetes or Docker secret), trailing newline ignored.
    #[arg(long, env = "REDIS_URL_FILE")]
    pub redis_url_file: Option<PathBuf>,

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

    /// A file holding `WECHAT_APPSECRET`, trailing newline ignored.
    #[arg(long, env = "WECHAT_APPSECRET_FILE")]
    pub appsecret_file: Option<PathBuf>,

    /// TOML file of several accounts (`[accounts.NAME]` with `token`, `appid`,
    /// `encoding_aes_key`, `appsecret`, `original_id`): the ingress serves each at
    /// `{INGEST_PATH}/NAME`; the workers find an account's AppID and AppSecret in it by
    /// `original_id`. With more than one account, each needs its `original_id`.
    #[arg(long, env = "INGEST_ACCOUNTS")]
    pub accounts_file: Option<PathBuf>,

    /// The `[accounts.NAME]` tables of the config file: the same entries as `INGEST_ACCOUNTS`.
    #[arg(skip)]
    pub accounts: Option<AccountsFile>,

    /// Open Platform mode: the third-party platform's `component_appid`. With the component's
    /// token and EncodingAESKey, the ingress takes its authorization events at
    /// `{INGEST_PATH}/component/auth` and each authorizer's pushes at
    /// `{INGEST_PATH}/component/{AUTHORIZER_APPID}`. Or the `[component]` table of
    /// `INGEST_ACCOUNTS`.
    #[arg(long, env = "WECHAT_COMPONENT_APPID")]
    pub component_appid: Option<String>,

    /// The component's `component_appsecret`: the `component` worker's API calls.
    #[arg(long, env = "WECHAT_COMPONENT_APPSECRET", hide_env_values = true)]
    pub component_appsecret: Option<Secret>,

    /// A file holding `WECHAT_COMPONENT_APPSECRET`, trailing newline ignored.
    #[arg(long, env = "WECHAT_COMPONENT_APPSECRET_FILE")]
    pub component_appsecret_file: Option<PathBuf>,

    /// The component's message Token (the signatures of every component push).
    #[arg(long, env = "WECHAT_COMPONENT_TOKEN", hide_env_values = true)]
    pub component_token: Option<Secret>,

    /// A file holding `WECHAT_COMPONENT_TOKEN`, trailing newline ignored.
    #[arg(long, env = "WECHAT_COMPONENT_TOKEN_FILE")]
    pub component_token_file: Option<PathBuf>,

    /// The component's 43-character EncodingAESKey: every component push is encrypted.
    #[arg(
        long,
        env = "WECHAT_COMPONENT_ENCODING_AES_KEY",
        hide_env_values = true
    )]
    pub component_encoding_aes_key: Option<Secret>,

    /// A file holding `WECHAT_COMPONENT_ENCODING_AES_KEY`, trailing newline ignored.
    #[arg(long, env = "WECHAT_COMPONENT_ENCODING_AES_KEY_FILE")]
    pub component_encoding_aes_key_file: Option<PathBuf>,

    /// Answer WeChat's release-check (全网发布) test accounts with their fixed replies, as a
    /// platform must before it goes live; every other push is answered as usual.
    #[arg(long, env = "WECHAT_COMPONENT_RELEASE_CHECK", default_value_t = false, action = clap::ArgAction::Set)]
    pub component_release_check: bool,

    /// A TOML file of settings both binaries read (docs/configuration.md): `[kafka] brokers`
    /// for `KAFKA_BROKERS` and so on. Flags and the environment override it.
    #[arg(long, env = "WXPIPE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log lines as text, or one JSON object per line (`json`).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], ignore_case = true)]
    pub log_format: String,
}

impl Shared {
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// The store's URL. Unset is an error: only the embedded default (which sets it) may run
    /// on `memory://` without saying so.
    pub fn store_url(&self) -> Result<&str, ConfigError> {
        self.redis_url.as_deref().ok_or(ConfigError::NoRedis)
    }

    /// With Kafka configured, `REDIS_URL` must be set (`memory://` written out).
    pub fn check_store(&self) -> Result<(), ConfigError> {
        match (&self.kafka_brokers, &self.redis_url) {
            (Some(_), None) => Err(ConfigError::NoRedis),
            _ => Ok(()),
        }
    }

    /// `validate`'s checks of a binary's `config` (whose `Shared` is `shared`): the store's on
    /// its own, then every other problem with `memory://` standing in for an unset store.
    pub fn check_apart<C: Clone>(
        config: &C,
        shared: fn(&mut C) -> &mut Shared,
        validate: fn(&C) -> Vec<ConfigError>,
        problems: &mut Vec<String>,
    ) {
        let mut rest = config.clone();
        let settings = shared(&mut rest);
        if let Err(problem) = settings.check_store() {
            problems.push(problem.to_string());
        }
        settings.redis_url.get_or_insert_with(|| MEMORY.to_owned());
        problems.extend(validate(&rest).iter().map(ToString::to_string));
    }

    /// Whether `memory://` was chosen although Kafka is configured: warned about at start.
    pub fn memory_with_kafka(&self) -> bool {
        self.kafka_brokers.is_some()
            && self
                .redis_url
                .as_deref()
                .is_some_and(|url| url.starts_with(MEMORY))
    }

    /// Reads the secrets given as files (`REDIS_URL_FILE`, `WECHAT_APPSECRET_FILE`, `_file`
    /// Kafka properties) into their settings; each problem names its setting.
    pub fn resolve_files(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(problem) = from_file(&mut self.redis_url, &self.redis_url_file, "REDIS_URL") {
            problems.push(problem);
        }
        let mut appsecret = self.appsecret.take().map(|s| s.expose().to_owned());
        if let Err(problem) = from_file(&mut appsecret, &self.appsecret_file, "WECHAT_APPSECRET") {
            problems.push(problem);
        }
        self.appsecret = appsecret.map(Secret::new);
        for (value, file, variable) in [
            (
                &mut self.component_appsecret,
                &self.component_appsecret_file,
                "WECHAT_COMPONENT_APPSECRET",
            ),
            (
                &mut self.component_token,
                &self.component_token_file,
                "WECHAT_COMPONENT_TOKEN",
            ),
            (
                &mut self.component_encoding_aes_key,
                &self.component_encoding_aes_key_file,
                "WECHAT_COMPONENT_ENCODING_AES_KEY",
            ),
        ] {
            let mut text = value.take().map(|s| s.expose().to_owned());
            if let Err(problem) = from_file(&mut text, file, variable) {
                problems.push(problem);
            }
            *value = text.map(Secret::new);
        }
        if let Err(problem) = property_files("KAFKA_CONFIG", &mut self.kafka_config) {
            problems.push(problem);
        }
        problems
    }

    /// The accounts of `INGEST_ACCOUNTS` or of the config file's `[accounts.NAME]` tables.
    pub fn accounts(&self) -> Result<Option<AccountsFile>, String> {
        match (&self.accounts_file, &self.accounts) {
            (Some(path), _) => AccountsFile::read(path).map(Some),
            (None, accounts) => Ok(accounts.clone()),
        }
    }

    /// The Open Platform component: the `WECHAT_COMPONENT_*` settings (or the config file's
    /// `[component]`), or the `[component]` table of `INGEST_ACCOUNTS`; `None` when neither.
    pub fn component(&self) -> Result<Option<ComponentEntry>, String> {
        let from_file = self.accounts()?.and_then(|file| file.component);
        let set = self.component_appid.is_some()
            || self.component_token.is_some()
            || self.component_encoding_aes_key.is_some()
            || self.component_appsecret.is_some();
        if !set {
            return Ok(from_file);
        }
        if from_file.is_some() {
            return Err("WECHAT_COMPONENT_* and a [component] table in INGEST_ACCOUNTS are both set: keep the component in one place".into());
        }
        let missing = |name: &str| {
            format!(
                "WECHAT_COMPONENT_{name} is required with the other WECHAT_COMPONENT_* settings"
            )
        };
        let component = ComponentEntry {
            appid: self
                .component_appid
                .clone()
                .ok_or_else(|| missing("APPID"))?,
            appsecret: self.component_appsecret.clone(),
            token: self
                .component_token
                .clone()
                .ok_or_else(|| missing("TOKEN"))?,
            encoding_aes_key: self
                .component_encoding_aes_key
                .clone()
                .ok_or_else(|| missing("ENCODING_AES_KEY"))?,
            release_check: self.component_release_check,
        };
        component.check("WECHAT_COMPONENT_*")?;
        Ok(Some(component))
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        first(self.problems())
    }

    /// Every problem of these settings (what [`Shared::validate`] checks), each naming its
    /// setting: `validate` reports them all.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if self.accounts_file.is_some() && self.accounts.is_some() {
            problems.push(ConfigError::Invalid(
                "INGEST_ACCOUNTS and [accounts.NAME] tables in the config file are both set: keep the accounts in one place".into(),
            ));
        }
        // Braces would change the Redis Cluster hash tag of every key, so one user's keys
        // could fall into different slots.
        if self.key_prefix.contains(['{', '}']) {
            problems.push(ConfigError::Invalid(format!(
                "REDIS_KEY_PREFIX must not contain braces (they are Redis Cluster hash tags): {:?}",
                self.key_prefix
            )));
        }
        problems.extend(check_properties("KAFKA_CONFIG", &self.kafka_config).err());
        // A `[component]` of INGEST_ACCOUNTS is checked where that file is read (the
        // ingress's accounts); reading it here would make every check a file read.
        let set = self.component_appid.is_some()
            || self.component_token.is_some()
            || self.component_encoding_aes_key.is_some()
            || self.component_appsecret.is_some();
        if set {
            if let Err(problem) = self.component() {
                problems.push(ConfigError::Invalid(problem));
            }
        }
        problems
    }
}

/// The first of `problems`, as a check that stops at it.
pub fn first(problems: Vec<ConfigError>) -> Result<(), ConfigError> {
    problems.into_iter().next().map_or(Ok(()), Err)
}

/// Why a configuration cannot work. The binaries print it and exit 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("WECHAT_TOKEN is required (the Token of the account's server config) unless INGEST_ACCOUNTS or an Open Platform component (WECHAT_COMPONENT_*, [component]) is set")]
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
    #[error("REDIS_URL is not set: with KAFKA_BROKERS set, set REDIS_URL=redis://HOST:6379 (or redis+cluster://…, redis+sentinel://…/MASTER), or write out REDIS_URL=memory:// to keep claims and effects in this process only")]
    NoRedis,
    #[error("{0}")]
    Invalid(String),
}

/// Reads a secret from the file a `{VARIABLE}_FILE` setting names; a trailing newline (what
/// editors and `echo` leave) is not part of it.
pub fn read_secret_file(setting: &str, path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// Fills `value` from the file `file` names; both set is a problem (which one is meant?).
pub fn from_file(
    value: &mut Option<String>,
    file: &Option<PathBuf>,
    variable: &str,
) -> Result<(), String> {
    let Some(path) = file else { return Ok(()) };
    if value.is_some() {
        return Err(format!(
            "{variable} and {variable}_FILE are both set: set one"
        ));
    }
    *value = Some(read_secret_file(&format!("{variable}_FILE"), path)?);
    Ok(())
}

/// Replaces each `KEY_file=PATH` entry of a Kafka property list with `KEY=<the file's
/// content>`: how SASL passwords and TLS key passwords come from secret files.
pub fn property_files(setting: &str, entries: &mut [String]) -> Result<(), String> {
    let keys: Vec<String> = entries
        .iter()
        .filter_map(|entry| match kafka_property(entry) {
            Property::Pair(key, _) => Some(key.to_owned()),
            _ => None,
        })
        .collect();
    for entry in entries.iter_mut() {
        let (base, path) = match kafka_property(entry) {
            Property::Pair(key, path) => match key.strip_suffix("_file") {
                Some(base) => (base.to_owned(), PathBuf::from(path)),
                None => continue,
            },
            _ => continue,
        };
        if keys.contains(&base) {
            return Err(format!(
                "{setting}: {base} and {base}_file are both set: set one"
            ));
        }
        let value = read_secret_file(&format!("{setting} {base}_file"), &path)?;
        *entry = format!("{base}={value}");
    }
    Ok(())
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
    fn a_property_ending_in_file_is_read_from_that_file() {
        let path = std::env::temp_dir().join(format!("wxpipe-sasl-{}", std::process::id()));
        std::fs::write(&path, "pa,ss=word\n").unwrap();
        let mut entries = vec![
            "security.protocol=sasl_ssl".to_owned(),
            format!("sasl.password_file={}", path.display()),
        ];
        property_files("KAFKA_CONFIG", &mut entries).unwrap();
        assert_eq!(
            entries[1], "sasl.password=pa,ss=word",
            "whole, newline dropped"
        );
        assert_eq!(
            kafka_property(&entries[1]),
            Property::Pair("sasl.password", "pa,ss=word")
        );
        let mut both = vec![
            "sasl.password=x".to_owned(),
            format!("sasl.password_file={}", path.display()),
        ];
        let error = property_files("KAFKA_CONFIG", &mut both).unwrap_err();
        assert!(error.contains("sasl.password"), "{error}");
        let mut missing = vec!["sasl.password_file=/nonexistent/wxpipe".to_owned()];
        let error = property_files("KAFKA_CONFIG", &mut missing).unwrap_err();
        assert!(error.contains("KAFKA_CONFIG sasl.password_file"), "{error}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_secret_and_its_file_are_not_both_taken() {
        let path = std::env::temp_dir().join(format!("wxpipe-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret\r\n").unwrap();
        let mut value = None;
        from_file(&mut value, &Some(path.clone()), "REDIS_URL").unwrap();
        assert_eq!(value.as_deref(), Some("s3cret"));
        let error = from_file(&mut value, &Some(path.clone()), "REDIS_URL").unwrap_err();
        assert!(error.contains("REDIS_URL_FILE"), "{error}");
        std::fs::remove_file(&path).unwrap();
    }

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
