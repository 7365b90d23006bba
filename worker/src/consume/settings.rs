//! The settings of a role's consumer and of its dead-letter producer, from the configuration.

use std::sync::Arc;

use rdkafka::ClientConfig;

use super::dead_letter::DeadLetterState;
use super::flow::WaitState;
use crate::config::Config;
use crate::error::StartError;

/// Settings of one role's consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub brokers: String,
    pub topic_prefix: String,
    pub max_attempts: u32,
    /// `KAFKA_CONFIG`: for every client.
    pub common: Vec<String>,
    /// `KAFKA_CONSUMER_CONFIG`: for the consumers, on top.
    pub overrides: Vec<String>,
    /// Shared by every role, and read by the readiness check.
    pub dead_letters: Arc<DeadLetterState>,
    /// Shared by every role, and read by the readiness check.
    pub waits: Arc<WaitState>,
    /// Records handled at once per role.
    pub concurrency: usize,
    /// The component's release check is on: the `component` role reads text messages too.
    pub release_check: bool,
}

impl ConsumerSettings {
    /// The settings of the live roles and of `rebuild` and `redrive`, from a configuration
    /// that is valid and names the brokers.
    pub fn from_config(config: &Config) -> Result<Self, StartError> {
        let brokers = config.brokers().ok_or(StartError::NoBrokers)?.to_owned();
        config.validate()?;
        Ok(ConsumerSettings {
            brokers,
            topic_prefix: config.shared.topic_prefix.clone(),
            max_attempts: config.settings.max_attempts,
            common: config.shared.kafka_config.clone(),
            overrides: config.settings.kafka_consumer_config.clone(),
            dead_letters: Arc::default(),
            waits: Arc::default(),
            concurrency: config.settings.concurrency,
            release_check: matches!(config.shared.component(), Ok(Some(c)) if c.release_check),
        })
    }

    /// A role's consumer: offsets stored by hand after each effect and committed in the
    /// background; a group with no committed offset starts from the earliest record.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        crate::kafka::client_config(
            &self.brokers,
            &[
                ("group.id", group),
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "1000"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("session.timeout.ms", "30000"),
                // Consumer lag for the metrics (RoleContext).
                ("statistics.interval.ms", "5000"),
                ("reconnect.backoff.max.ms", "1000"),
            ],
            &[&self.common, &self.overrides],
        )
    }

    /// The dead-letter producer: it must be able to write any record the consumer could read,
    /// so its size limit is librdkafka's largest (the broker's own limit still applies).
    pub fn dead_letter_config(&self) -> ClientConfig {
        crate::kafka::client_config(
            &self.brokers,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("message.max.bytes", "1000000000"),
                // An attempt ends (and is retried) within 10 s, so a failing write shows.
                ("message.timeout.ms", "10000"),
            ],
            &[&self.common],
        )
    }
}
