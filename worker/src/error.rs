//! Why the workers could not start.

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("KAFKA_BROKERS is not set, or empty")]
    NoBrokers,
    #[error("{0}")]
    Accounts(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("admin listener {0}")]
    Admin(String),
    #[error("invalid configuration: {0}")]
    Config(#[from] ops::settings::ConfigError),
}
