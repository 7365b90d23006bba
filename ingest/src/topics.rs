//! `ingest topics`: creates every topic wxpipe writes, for clusters where auto-creation is off.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// What became of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Created,
    Exists,
    Failed(String),
}

/// Creates every topic; topics that exist are left as they are.
pub async fn create_all(
    brokers: &str,
    prefix: &str,
    partitions: i32,
    replication: i32,
    layers: &[&[String]],
) -> Result<Vec<(String, Created)>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        worker::kafka::client_config(brokers, &[], layers).create()?;
    let names = schemas::all_topic_names(prefix);
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&topics, &options).await?;
    Ok(results
        .into_iter()
        .map(|result| match result {
            Ok(name) => (name, Created::Created),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => (name, Created::Exists),
            Err((name, code)) => (name, Created::Failed(code.to_string())),
        })
        .collect())
}
