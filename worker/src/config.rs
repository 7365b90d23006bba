//! One typed config for the workers: flags with environment fallbacks (`worker --help`).

use std::collections::HashMap;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use ops::config_file::FileSettings;
use ops::settings::{check_properties, property_files, ConfigError};

/// A worker role: one consumer group, one kind of effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Role {
    /// `unsubscribe`: delete the binding, mark unsubscribed; `subscribe`: mark subscribed.
    Unbind,
    /// `subscribe`: send the welcome message.
    Welcome,
    /// `LOCATION`: store the latest location and a bounded history.
    Location,
    /// Open Platform: exchange each authorization's code for the authorizer's refresh token,
    /// forget it on `unauthorized`, and answer WeChat's release check.
    Component,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Unbind, Role::Welcome, Role::Location, Role::Component];

    /// The roles a worker runs when none is named (`component` too once a component is
    /// configured).
    pub const DEFAULT: [Role; 3] = [Role::Unbind, Role::Welcome, Role::Location];

    pub fn name(self) -> &'static str {
        match self {
            Role::Unbind => "unbind",
            Role::Welcome => "welcome",
            Role::Location => "location",
            Role::Component => "component",
        }
    }

    /// The consumer group, by the contract.
    pub fn group(self) -> String {
        format!("wxpipe-{}", self.name())
    }

    /// The topics this role consumes, under a prefix, as the contract names them.
    /// The `component` role also reads `message.text` while the release check is on (see
    /// [`Role::topics_with`]).
    pub fn topics(self, prefix: &str) -> Vec<String> {
        let (kind, types): (schemas::Kind, &[&str]) = match self {
            Role::Unbind => (schemas::Kind::Event, &["subscribe", "unsubscribe"]),
            Role::Welcome => (schemas::Kind::Event, &["subscribe"]),
            Role::Location => (schemas::Kind::Event, &["location"]),
            Role::Component => (
                schemas::Kind::Component,
                &["authorized", "updateauthorized", "unauthorized"],
            ),
        };
        types
            .iter()
            .map(|t| schemas::Topic::of(kind, t).name(prefix))
            .collect()
    }

    /// [`Role::topics`], and for `component` with the release check on, the text messages
    /// (where WeChat's test accounts send `QUERY_AUTH_CODE:…`).
    pub fn topics_with(self, prefix: &str, release_check: bool) -> Vec<String> {
        let mut topics = self.topics(prefix);
        if self == Role::Component && release_check {
            topics.push(schemas::Topic::of(schemas::Kind::Message, "text").name(prefix));
        }
        topics
    }

    /// The consumer group of `worker redrive` for this role's dead letters.
    pub fn redrive_group(self) -> String {
        format!("wxpipe-redrive-{}", self.name())
    }

    /// Where records this role cannot handle go.
    pub fn dlq_topic(self, prefix: &str) -> String {
        schemas::dead_letter_topic(prefix, self.name())
    }
}

/// The settings only workers have; the ingress embeds them for its in-process workers.
#[derive(Debug, Clone, Args)]
pub struct WorkerSettings {
    /// Base URL of the WeChat API (tests point it at a local fake).
    #[arg(
        long,
        env = "WECHAT_API_BASE",
        default_value = "https://api.weixin.qq.com"
    )]
    pub api_base: String,

    /// Milliseconds one WeChat API call may take.
    #[arg(long, env = "WECHAT_API_TIMEOUT_MS", default_value_t = 5000)]
    pub api_timeout_ms: u64,

    /// Text of the welcome message.
    #[arg(
        long,
        env = "WELCOME_TEXT",
        default_value = "感谢关注！Thanks for following!"
    )]
    pub welcome_text: String,

    /// Per-scene welcome texts for QR-code follows, as a JSON object `{"scene": "text"}`.
    #[arg(long, env = "WELCOME_SCENE_TEXTS", value_parser = parse_scene_texts, default_value = "{}")]
    pub welcome_scene_texts: SceneTexts,

    /// Events handled at once per role (welcome sends run concurrently up to this).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,

    /// Attempts at a failure that is not an outage (an unknown errcode, a Redis error about
    /// the data) before its record goes to the dead-letter topic; outages are waited out.
    #[arg(long, env = "WORKER_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,

    /// Locations kept per user in the history.
    #[arg(long, env = "LOCATION_HISTORY_LEN", default_value_t = 100)]
    pub location_history: usize,

    /// Extra librdkafka consumer properties, `key=value` separated by commas.
    #[arg(long, env = "KAFKA_CONSUMER_CONFIG", value_delimiter = ',')]
    pub kafka_consumer_config: Vec<String>,

    /// A subscribe whose `created_at` is older than this is never welcomed (counted as
    /// `outcome="too_old"`): a replay from the earliest offset greets nobody again. WeChat
    /// takes customer-service messages only within 48 h of the user's last interaction.
    #[arg(long, env = "WELCOME_MAX_AGE", default_value = "48h", value_parser = humantime::parse_duration)]
    pub welcome_max_age: Duration,

    /// `true`: a welcome whose send outcome is unknown (the post was written, its answer
    /// lost) is sent again, at least once (the user may get it twice); by default it is
    /// recorded and never repeated, at most once.
    #[arg(long, env = "WELCOME_RESEND_UNKNOWN", default_value_t = false, action = clap::ArgAction::Set)]
    pub welcome_resend_unknown: bool,
}

/// Welcome texts by QR-code scene.
#[derive(Debug, Clone, Default)]
pub struct SceneTexts(pub HashMap<String, String>);

fn parse_scene_texts(json: &str) -> Result<SceneTexts, String> {
    serde_json::from_str(json)
        .map(SceneTexts)
        .map_err(|e| format!("WELCOME_SCENE_TEXTS must be a JSON object of strings: {e}"))
}

/// The worker configuration.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "worker",
    version,
    about = "wxpipe workers: unbinding, welcome messages, locations"
)]
pub struct Config {
    /// Roles to run (repeatable); all of them when unset.
    #[arg(long = "role", env = "WORKER_ROLES", value_delimiter = ',')]
    pub roles: Vec<Role>,

    /// Kafka, Redis and the accounts, as the ingress reads them.
    #[command(flatten)]
    pub shared: ops::settings::Shared,

    /// Address of the admin endpoints (`/healthz`, `/readyz`, `/metrics`); empty disables.
    #[arg(long, env = "WORKER_ADMIN_LISTEN", default_value = "0.0.0.0:9091")]
    pub admin_listen: String,

    #[command(flatten)]
    pub settings: WorkerSettings,

    /// Without a command, the worker runs its roles until SIGTERM.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The worker's one-off commands; each runs to its end and exits.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Rebuilds a role's Redis projection from its topics: reads them from the earliest
    /// offset to the end offsets seen at the start, with a consumer of its own that commits
    /// nothing, applies the role's effects, and exits. Never for `welcome`.
    Rebuild {
        /// The roles to rebuild (repeatable): `unbind`, `location`; both when unset. Never
        /// `welcome` or `component` (they act on WeChat, not on a projection).
        #[arg(long = "role", value_delimiter = ',')]
        roles: Vec<Role>,
    },
    /// Moves the records of a role's dead-letter topic (`{prefix}.dlq.{role}`) back to the
    /// topic each came from, with its key, value and headers, for that role only (the
    /// topic's other roles skip it: header `wxpipe_redrive_role`), and exits. Its own consumer
    /// group (`wxpipe-redrive-{role}`) commits what it moved: a second run moves only what
    /// was dead-lettered since.
    Redrive {
        /// The role whose dead letters to move.
        #[arg(long = "role")]
        role: Role,
    },
    /// Resolve the configuration as `worker` would (flags, environment, `--config`), print
    /// each setting with where it came from (secrets masked) and every problem, and exit: 0,
    /// or 2 on a problem; with `--connect`, 1 when Kafka or Redis cannot be reached.
    Validate {
        /// Also reach Kafka (metadata) and Redis (the start-up round trip).
        #[arg(long)]
        connect: bool,
        /// The roles to check (repeatable), as `worker --role`.
        #[arg(long = "role", value_delimiter = ',')]
        roles: Vec<Role>,
    },
}

/// The worker's command line: every flag also after a subcommand (`worker validate --config
/// FILE`), but `--role`, which `rebuild`, `redrive` and `validate` take themselves.
pub fn command() -> clap::Command {
    ops::config_file::globals(Config::command(), &["roles"])
}

/// The variables a config file may set: the workers' and the ingress's (one file for both).
pub fn variables() -> std::collections::BTreeSet<String> {
    let mut names = ops::config_file::variables(&Config::command());
    names.extend(
        ops::config_file::INGEST_ONLY
            .iter()
            .map(|name| (*name).to_owned()),
    );
    names
}

impl Config {
    pub fn roles(&self) -> Vec<Role> {
        if self.roles.is_empty() {
            let mut roles = Role::DEFAULT.to_vec();
            if matches!(self.shared.component(), Ok(Some(_))) {
                roles.push(Role::Component);
            }
            roles
        } else {
            let mut roles = self.roles.clone();
            roles.dedup();
            roles
        }
    }

    /// Parses the command line (after [`ops::config_file::load`] fed the config file):
    /// clap's errors exit as clap does (2).
    pub fn from_command_line(file: &FileSettings) -> (Config, clap::ArgMatches) {
        use clap::FromArgMatches;
        let command = command();
        let matches = command.clone().get_matches();
        let mut config = Config::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        if let Some(entries) = file.properties_for(&command, &matches, "KAFKA_CONFIG") {
            config.shared.kafka_config = entries;
        }
        if let Some(entries) = file.properties_for(&command, &matches, "KAFKA_CONSUMER_CONFIG") {
            config.settings.kafka_consumer_config = entries;
        }
        config.shared.accounts = file.accounts.clone();
        if let Some(Command::Validate { roles, .. }) = &config.command {
            if !roles.is_empty() {
                config.roles = roles.clone();
            }
        }
        (config, matches)
    }

    /// Reads the secrets given as files; each problem names its setting.
    pub fn resolve_files(&mut self) -> Vec<String> {
        let mut problems = self.shared.resolve_files();
        if let Err(problem) = property_files(
            "KAFKA_CONSUMER_CONFIG",
            &mut self.settings.kafka_consumer_config,
        ) {
            problems.push(problem);
        }
        problems
    }

    /// Checks what clap cannot: the Kafka property lists are `key=value` pairs, and the
    /// store is named (but for `redrive`, which never touches it).
    pub fn validate(&self) -> Result<(), ConfigError> {
        ops::settings::first(self.problems())
    }

    /// Every problem [`Config::validate`] finds, each naming its setting, for `validate`.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if !matches!(self.command, Some(Command::Redrive { .. })) {
            problems.extend(self.shared.check_store().err());
        }
        problems.extend(self.shared.problems());
        // A role with no concurrency would read nothing; the first attempt is one of
        // WORKER_MAX_ATTEMPTS.
        for (name, value) in [
            ("WORKER_CONCURRENCY", self.settings.concurrency),
            ("WORKER_MAX_ATTEMPTS", self.settings.max_attempts as usize),
        ] {
            if value == 0 {
                problems.push(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        problems.extend(
            check_properties(
                "KAFKA_CONSUMER_CONFIG",
                &self.settings.kafka_consumer_config,
            )
            .err(),
        );
        let component = self.shared.component().ok().flatten();
        if self.roles.contains(&Role::Component) && component.is_none() {
            problems.push(ConfigError::Invalid(
                "the component role needs a component: set WECHAT_COMPONENT_APPID and the rest of WECHAT_COMPONENT_* (or [component])".into(),
            ));
        }
        if self.roles().contains(&Role::Component)
            && component.is_some_and(|c| c.appsecret.is_none())
        {
            problems.push(ConfigError::Invalid(
                "the component role needs WECHAT_COMPONENT_APPSECRET (the component token)".into(),
            ));
        }
        problems
    }

    /// The bootstrap servers, unless unset or blank (a blank list reaches no broker).
    pub fn brokers(&self) -> Option<&str> {
        self.shared
            .kafka_brokers
            .as_deref()
            .filter(|b| !b.trim().is_empty())
    }

    /// Defaults, for tests and embedding: `memory://` storage.
    pub fn defaults() -> Config {
        let mut config = Config::parse_from(["worker"]);
        config.shared.redis_url = Some(ops::settings::MEMORY.into());
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_name_their_groups_and_topics() {
        assert_eq!(Role::Welcome.group(), "wxpipe-welcome");
        assert_eq!(
            Role::Unbind.topics("wechat"),
            ["wechat.event.subscribe", "wechat.event.unsubscribe"]
        );
        assert_eq!(Role::Location.dlq_topic("p"), "p.dlq.location");
    }

    #[test]
    fn roles_read_topics_the_contract_names() {
        let contract = schemas::all_topic_names("p");
        for role in Role::ALL {
            for topic in role.topics("p") {
                // A known event type's topic, not `event.other` (where a misspelt type goes).
                assert!(
                    contract.contains(&topic) && !topic.ends_with(".other"),
                    "{topic}"
                );
            }
            assert!(contract.contains(&role.dlq_topic("p")));
        }
    }

    #[test]
    fn roles_parse_repeated_or_comma_separated() {
        let config = Config::parse_from(["worker", "--role", "welcome", "--role", "location"]);
        assert_eq!(config.roles(), [Role::Welcome, Role::Location]);
        let config = Config::parse_from(["worker", "--role", "unbind,welcome"]);
        assert_eq!(config.roles(), [Role::Unbind, Role::Welcome]);
        assert_eq!(Config::parse_from(["worker"]).roles(), Role::DEFAULT);
        assert!(Config::try_parse_from(["worker", "--role", "nope"]).is_err());
    }

    #[test]
    fn the_welcome_policy_settings_default_to_48_hours_and_at_most_once() {
        let config = Config::parse_from(["worker"]);
        assert_eq!(
            config.settings.welcome_max_age,
            Duration::from_secs(48 * 3600)
        );
        assert!(!config.settings.welcome_resend_unknown);
        let config = Config::parse_from([
            "worker",
            "--welcome-max-age",
            "2h 30m",
            "--welcome-resend-unknown",
            "true",
        ]);
        assert_eq!(config.settings.welcome_max_age, Duration::from_secs(9000));
        assert!(config.settings.welcome_resend_unknown);
        assert!(Config::try_parse_from(["worker", "--welcome-max-age", "soon"]).is_err());
    }

    #[test]
    fn commands_take_their_own_roles() {
        assert!(Config::parse_from(["worker"]).command.is_none());
        let config = Config::parse_from([
            "worker", "rebuild", "--role", "unbind", "--role", "location",
        ]);
        assert!(
            matches!(config.command, Some(Command::Rebuild { roles }) if roles == [Role::Unbind, Role::Location])
        );
        let config = Config::parse_from(["worker", "redrive", "--role", "welcome"]);
        assert!(matches!(
            config.command,
            Some(Command::Redrive {
                role: Role::Welcome
            })
        ));
        assert!(Config::try_parse_from(["worker", "redrive"]).is_err());
    }

    #[test]
    fn scene_texts_are_a_json_object() {
        let config = Config::parse_from([
            "worker",
            "--welcome-scene-texts",
            r#"{"42": "Hi from the poster"}"#,
        ]);
        assert_eq!(
            config.settings.welcome_scene_texts.0["42"],
            "Hi from the poster"
        );
        assert!(Config::try_parse_from(["worker", "--welcome-scene-texts", "[1]"]).is_err());
    }
}
