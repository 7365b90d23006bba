//! The config file both binaries read (`--config FILE`, or `WXPIPE_CONFIG`), and what
//! `validate` prints of the configuration.
//!
//! One rule maps a setting's variable to the file: its first word is the section, the rest,
//! lower-cased, the key (`KAFKA_BROKERS` → `[kafka] brokers`, `INGEST_MAX_IN_FLIGHT` →
//! `[ingest] max_in_flight`). The librdkafka property lists are tables (`[kafka.config]`,
//! `[kafka.producer_config]`, `[kafka.consumer_config]`), so a value may hold a comma; the
//! accounts are `[accounts.NAME]` tables, as in the `INGEST_ACCOUNTS` file. The known names
//! come from the binaries' clap definitions, so the file knows every setting `--help` lists
//! and no other. Precedence: flag > environment > file > default: a value from the file is
//! fed as its variable, only where the environment does not set it, before clap parses.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use wechat::accounts::AccountsFile;

/// The variable naming the config file when `--config` is not given.
pub const CONFIG_VARIABLE: &str = "WXPIPE_CONFIG";

/// The settings that are lists of librdkafka properties: tables in the file.
pub const PROPERTY_SETTINGS: [&str; 3] = [
    "KAFKA_CONFIG",
    "KAFKA_PRODUCER_CONFIG",
    "KAFKA_CONSUMER_CONFIG",
];

/// The ingress's settings the worker does not have. Both binaries read one file, so the
/// worker must know them too, and it cannot see the ingress's definitions (the ingress
/// depends on the worker): a test (`ingest/src/config.rs`) checks this list against them.
pub const INGEST_ONLY: &[&str] = &[
    "EMBEDDED_PARTITIONS",
    "INGEST_ACK_DEADLINE_MS",
    "INGEST_ADMIN_LISTEN",
    "INGEST_ALLOWED_IPS",
    "INGEST_DEDUP_TTL",
    "INGEST_LISTEN",
    "INGEST_MAX_BODY_BYTES",
    "INGEST_MAX_CONNECTIONS",
    "INGEST_MAX_IN_FLIGHT",
    "INGEST_PATH",
    "INGEST_READ_TIMEOUT_MS",
    "INGEST_SPOOL_DIR",
    "INGEST_SPOOL_MAX_BYTES",
    "INGEST_TRUSTED_PROXIES",
    "KAFKA_PRODUCER_CONFIG",
    "WECHAT_ACCEPT_PLAINTEXT",
    "WECHAT_ENCODING_AES_KEY",
    "WECHAT_ENCODING_AES_KEY_FILE",
    "WECHAT_TIMESTAMP_TOLERANCE",
    "WECHAT_TOKEN",
    "WECHAT_TOKEN_FILE",
];

/// Where a setting goes in the config file, by the rule: `KAFKA_BROKERS` → `[kafka] brokers`,
/// `KAFKA_CONFIG` → `[kafka.config]` (a table); `None` for `WXPIPE_CONFIG` (the file itself).
pub fn file_key(variable: &str) -> Option<String> {
    if variable == CONFIG_VARIABLE {
        return None;
    }
    let (section, key) = match variable.strip_prefix("WECHAT_COMPONENT_") {
        Some(key) => ("component", key),
        None => variable.split_once('_')?,
    };
    let (section, key) = (section.to_lowercase(), key.to_lowercase());
    Some(if PROPERTY_SETTINGS.contains(&variable) {
        format!("[{section}.{key}]")
    } else {
        format!("[{section}] {key}")
    })
}

/// The variable of every setting of `command` and its subcommands.
pub fn variables(command: &clap::Command) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect();
    for sub in command.get_subcommands() {
        names.extend(variables(sub));
    }
    names
}

/// Every flag is accepted after a subcommand too (`ingest validate --config FILE`), except
/// those named in `local` (a subcommand has a flag of that name of its own).
pub fn globals(command: clap::Command, local: &[&str]) -> clap::Command {
    command.mut_args(|arg| {
        if local.contains(&arg.get_id().as_str()) {
            arg
        } else {
            arg.global(true)
        }
    })
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
    Unset,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Env => "env",
            Source::File => "file",
            Source::Default => "default",
            Source::Unset => "unset",
        }
    }
}

/// What the config file held.
#[derive(Debug, Default)]
pub struct FileSettings {
    /// The file read, if any.
    pub path: Option<PathBuf>,
    /// The variables the file set (the environment did not).
    pub fed: BTreeSet<String>,
    /// Property tables by setting (`KAFKA_CONFIG`): one `key=value` entry each, commas
    /// intact. Not fed through the environment, where commas separate entries.
    pub properties: BTreeMap<String, Vec<String>>,
    /// The `[accounts.NAME]` tables.
    pub accounts: Option<AccountsFile>,
}

impl FileSettings {
    /// Where the setting named `variable` came from, as `command` parsed it into `matches`.
    pub fn source(
        &self,
        command: &clap::Command,
        matches: &clap::ArgMatches,
        variable: &str,
    ) -> Source {
        let Some(arg) = command
            .get_arguments()
            .find(|arg| arg.get_env().is_some_and(|env| env == variable))
        else {
            return Source::Unset;
        };
        match matches.value_source(arg.get_id().as_str()) {
            Some(ValueSource::CommandLine) => Source::Flag,
            Some(ValueSource::EnvVariable) if self.fed.contains(variable) => Source::File,
            Some(ValueSource::EnvVariable) => Source::Env,
            Some(ValueSource::DefaultValue) => Source::Default,
            _ if self.properties.contains_key(variable) => Source::File,
            _ => Source::Unset,
        }
    }

    /// The file's entries for a property list, unless a flag or the environment set it.
    pub fn properties_for(
        &self,
        command: &clap::Command,
        matches: &clap::ArgMatches,
        variable: &str,
    ) -> Option<Vec<String>> {
        match self.source(command, matches, variable) {
            Source::File => self.properties.get(variable).cloned(),
            _ => None,
        }
    }
}

/// The config file's path: `--config FILE` (or `--config=FILE`) in `args`, else
/// `WXPIPE_CONFIG`.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(CONFIG_VARIABLE)
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

/// Reads the config file (if one is named), checks every section and key against `known`
/// (the variables of the binaries' settings), and sets the variable of each setting the
/// environment does not set. Call at the top of `main`, before any thread starts: the
/// environment is the process's.
pub fn load(known: &BTreeSet<String>) -> Result<FileSettings, String> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let Some(path) = config_path(&args) else {
        return Ok(FileSettings::default());
    };
    let origin = format!("config file {}", path.display());
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{origin}: {e}"))?;
    let parsed = parse(&text, known, &origin).map_err(|e| format!("{origin}: {e}"))?;
    let mut fed = BTreeSet::new();
    for (name, value) in parsed.values {
        if std::env::var_os(&name).is_none() {
            std::env::set_var(&name, value);
            fed.insert(name);
        }
    }
    Ok(FileSettings {
        path: Some(path),
        fed,
        properties: parsed.properties,
        accounts: parsed.accounts,
    })
}

/// A config file, mapped to variables.
#[derive(Debug, Default)]
pub struct Parsed {
    /// (variable, value) of each plain setting.
    pub values: Vec<(String, String)>,
    pub properties: BTreeMap<String, Vec<String>>,
    pub accounts: Option<AccountsFile>,
}

/// Maps a config file's text to variables; an unknown section or key is an error naming it
/// and the closest known one.
pub fn parse(text: &str, known: &BTreeSet<String>, origin: &str) -> Result<Parsed, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    // section → key → variable, by the rule.
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for name in known.iter().filter(|name| *name != CONFIG_VARIABLE) {
        // `WECHAT_COMPONENT_X` ↔ `[component] x`, not `[wechat] component_x`.
        if let Some(key) = name.strip_prefix("WECHAT_COMPONENT_") {
            sections
                .entry("component".to_owned())
                .or_default()
                .insert(key.to_lowercase(), name.clone());
        } else if let Some((section, key)) = name.split_once('_') {
            sections
                .entry(section.to_lowercase())
                .or_default()
                .insert(key.to_lowercase(), name.clone());
        }
    }
    let mut parsed = Parsed::default();
    for (section, value) in table {
        if section == "accounts" {
            let mut file = toml::Table::new();
            file.insert(section, value);
            parsed.accounts = Some(AccountsFile::from_table(file, origin)?);
            continue;
        }
        let Some(keys) = sections.get(&section) else {
            let mut candidates: Vec<String> = sections.keys().map(|s| format!("[{s}]")).collect();
            candidates.push("[accounts.NAME]".into());
            return Err(unknown(&format!("[{section}]"), "section", &candidates));
        };
        let toml::Value::Table(entries) = value else {
            return Err(format!("{section} must be a table: [{section}]"));
        };
        for (key, value) in entries {
            let name = keys
                .get(&key)
                .cloned()
                .unwrap_or_else(|| format!("{}_{}", section.to_uppercase(), key.to_uppercase()));
            let known_key = keys.contains_key(&key);
            if known_key && PROPERTY_SETTINGS.contains(&name.as_str()) {
                let toml::Value::Table(properties) = value else {
                    return Err(format!(
                        "[{section}] {key} is a table of librdkafka properties: [{section}.{key}]"
                    ));
                };
                let mut entries = Vec::new();
                for (property, value) in properties {
                    let value = scalar(&value).ok_or_else(|| {
                        format!("[{section}.{key}] {property}: a property is a string, a number or a boolean")
                    })?;
                    entries.push(format!("{property}={value}"));
                }
                parsed.properties.insert(name, entries);
                continue;
            }
            if !known_key {
                let candidates: Vec<String> = sections
                    .iter()
                    .flat_map(|(s, keys)| keys.keys().map(move |k| format!("[{s}] {k}")))
                    .collect();
                return Err(unknown(&format!("[{section}] {key}"), "key", &candidates));
            }
            let text = match &value {
                toml::Value::Array(items) => items
                    .iter()
                    .map(scalar)
                    .collect::<Option<Vec<String>>>()
                    .map(|items| items.join(",")),
                value => scalar(value),
            }
            .ok_or_else(|| {
                format!("[{section}] {key}: a string, a number, a boolean or a list of them")
            })?;
            parsed.values.push((name, text));
        }
    }
    Ok(parsed)
}

/// A scalar as its setting's text.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(n) => Some(n.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        _ => None,
    }
}

/// "unknown key [ingest] max_inflight (did you mean [ingest] max_in_flight?)"
fn unknown(what: &str, kind: &str, candidates: &[String]) -> String {
    match candidates
        .iter()
        .min_by_key(|candidate| edit_distance(what, candidate))
    {
        Some(closest) => format!("unknown {kind} {what} (did you mean {closest}?)"),
        None => format!("unknown {kind} {what}"),
    }
}

/// Levenshtein distance, for the closest known name to a misspelt one.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A setting's value as `validate` may print it: secrets (`hide_env_values` settings, a
/// URL's password, a secret-looking Kafka property) masked.
pub fn shown(variable: &str, secret: bool, values: &[String]) -> String {
    if PROPERTY_SETTINGS.contains(&variable) {
        // Masked entry by entry: a value may hold a comma.
        return values
            .iter()
            .map(|entry| mask_property(entry))
            .collect::<Vec<_>>()
            .join(",");
    }
    let value = values.join(",");
    if variable == "REDIS_URL" {
        return mask_url(&value);
    }
    if secret && !value.is_empty() {
        return "***".into();
    }
    value
}

/// `key=***` for a property whose value may be secret (passwords, secrets, private keys,
/// JAAS configs, tokens).
pub fn mask_property(entry: &str) -> String {
    match entry.split_once('=') {
        Some((key, _)) if is_secret_property(key.trim()) => format!("{}=***", key.trim()),
        _ => entry.to_owned(),
    }
}

fn is_secret_property(key: &str) -> bool {
    if key.ends_with("_file") || key.ends_with(".location") {
        return false;
    }
    [
        "password", "secret", "jaas", "token", "key.pem", "ssl_key", "keystore",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// A URL with its password (and a lone user-info, which Redis takes as the password)
/// replaced by `***`; a list of hosts keeps its shape.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL: it may be anything, a password pasted in the wrong place too.
        return "***".to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => {
            let (userinfo, hosts) = authority.split_at(at);
            let user = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{scheme}://{user}{hosts}{path}")
        }
        None => url.to_owned(),
    }
}

/// `validate`'s head: where the settings came from, then [`report`]'s lines.
pub fn print_report(command: &clap::Command, matches: &clap::ArgMatches, file: &FileSettings) {
    match &file.path {
        Some(path) => println!("config file: {}", path.display()),
        None => println!("config file: none (--config or WXPIPE_CONFIG)"),
    }
    for line in report(command, matches, file) {
        println!("{line}");
    }
}

/// `validate`'s verdict: each problem, and exit 2 when there is one.
pub fn print_problems(problems: &[String]) -> Result<(), std::process::ExitCode> {
    if problems.is_empty() {
        return Ok(());
    }
    for problem in problems {
        println!("problem: {problem}");
    }
    Err(std::process::ExitCode::from(2))
}

/// One line per setting of `command` (`VARIABLE = value (source)`), values masked as
/// [`shown`] says; `overrides` are resolved values that clap did not parse (property tables
/// from the file).
pub fn report(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    file: &FileSettings,
) -> Vec<String> {
    let mut lines = Vec::new();
    for arg in command.get_arguments() {
        let Some(variable) = arg.get_env().map(|env| env.to_string_lossy().into_owned()) else {
            continue;
        };
        let source = file.source(command, matches, &variable);
        let values: Vec<String> = match source {
            Source::File if file.properties.contains_key(&variable) => {
                file.properties[&variable].clone()
            }
            Source::Unset => Vec::new(),
            _ => matches
                .get_raw(arg.get_id().as_str())
                .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default(),
        };
        if source == Source::Unset {
            lines.push(format!("{variable} (unset)"));
            continue;
        }
        let value = shown(&variable, arg.is_hide_env_values_set(), &values);
        lines.push(format!("{variable} = {value:?} ({})", source.name()));
    }
    if let Some(accounts) = &file.accounts {
        for (name, account) in &accounts.accounts {
            lines.push(format!(
                "[accounts.{name}] appid = {:?}, original_id = {:?}, token = ***{}{} (file)",
                account.appid.as_deref().unwrap_or(""),
                account.original_id.as_deref().unwrap_or(""),
                if account.encoding_aes_key.is_some() {
                    ", encoding_aes_key = ***"
                } else {
                    ""
                },
                if account.appsecret.is_some() {
                    ", appsecret = ***"
                } else {
                    ""
                },
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> BTreeSet<String> {
        [
            "KAFKA_BROKERS",
            "KAFKA_CONFIG",
            "INGEST_MAX_IN_FLIGHT",
            "REDIS_URL",
            "WECHAT_TOKEN",
            "WECHAT_COMPONENT_APPID",
            "WORKER_ROLES",
            "WXPIPE_CONFIG",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    }

    #[test]
    fn sections_and_keys_map_to_variables_by_the_rule() {
        let parsed = parse(
            "[kafka]\nbrokers = \"k:9092\"\n[ingest]\nmax_in_flight = 10\n[worker]\nroles = [\"unbind\", \"location\"]\n[kafka.config]\n\"sasl.jaas.config\" = \"a,b=c\"\n",
            &known(),
            "test",
        )
        .unwrap();
        assert_eq!(
            parsed.values,
            [
                ("INGEST_MAX_IN_FLIGHT".to_owned(), "10".to_owned()),
                ("KAFKA_BROKERS".to_owned(), "k:9092".to_owned()),
                ("WORKER_ROLES".to_owned(), "unbind,location".to_owned()),
            ]
        );
        assert_eq!(
            parsed.properties["KAFKA_CONFIG"],
            ["sasl.jaas.config=a,b=c"]
        );
    }

    #[test]
    fn file_keys_follow_the_rule() {
        for (variable, key) in [
            ("INGEST_MAX_IN_FLIGHT", "[ingest] max_in_flight"),
            ("WECHAT_TOKEN_FILE", "[wechat] token_file"),
            ("KAFKA_CONSUMER_CONFIG", "[kafka.consumer_config]"),
            ("WECHAT_COMPONENT_TOKEN_FILE", "[component] token_file"),
        ] {
            assert_eq!(file_key(variable).as_deref(), Some(key), "{variable}");
        }
        assert_eq!(file_key(CONFIG_VARIABLE), None);
    }

    #[test]
    fn unknown_names_are_refused_with_the_closest_known_one() {
        let error = parse("[ingest]\nmax_inflight = 1\n", &known(), "t").unwrap_err();
        assert!(error.contains("[ingest] max_in_flight"), "{error}");
        let error = parse("[kafak]\nbrokers = \"x\"\n", &known(), "t").unwrap_err();
        assert!(
            error.contains("[kafak]") && error.contains("[kafka]"),
            "{error}"
        );
        assert!(parse("[wxpipe]\nconfig = \"x\"\n", &known(), "t").is_err());
        let parsed = parse("[component]\nappid = \"x\"\n", &known(), "t").unwrap();
        assert_eq!(
            parsed.values,
            [("WECHAT_COMPONENT_APPID".to_owned(), "x".to_owned())]
        );
    }

    #[test]
    fn config_path_comes_from_the_flag_first() {
        let args: Vec<OsString> = ["ingest", "validate", "--config", "a.toml"]
            .map(OsString::from)
            .to_vec();
        assert_eq!(config_path(&args), Some(PathBuf::from("a.toml")));
        let args: Vec<OsString> = ["worker", "--config=b.toml"].map(OsString::from).to_vec();
        assert_eq!(config_path(&args), Some(PathBuf::from("b.toml")));
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            mask_url("redis://:hunter2@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(
            mask_url("redis+sentinel://u:hunter2@a:1,b:2/m"),
            "redis+sentinel://u:***@a:1,b:2/m"
        );
        assert_eq!(mask_url("redis://h:6379"), "redis://h:6379");
        let entries = [
            "sasl.jaas.config=x,y=hunter2".to_owned(),
            "acks=all".to_owned(),
        ];
        assert_eq!(
            shown("KAFKA_CONFIG", false, &entries),
            "sasl.jaas.config=***,acks=all"
        );
        assert_eq!(shown("WECHAT_TOKEN", true, &["hunter2".to_owned()]), "***");
    }
}
