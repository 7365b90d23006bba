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

/// How `ingest topics` makes the topics: partitions, replicas and the retentions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub partitions: i32,
    /// `None`: three where the cluster has three brokers or more, else as many as it has.
    pub replication: Option<i32>,
    /// `retention.ms` of the topics `worker rebuild` reads (`-1`: forever).
    pub rebuild_retention_ms: i64,
    /// `retention.ms` of every other topic (`None`: the broker's default).
    pub retention_ms: Option<i64>,
}

/// One topic to create: its name and its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlan {
    pub name: String,
    pub config: Vec<(&'static str, String)>,
}

/// The replicas a topic gets on a cluster of `brokers`: as asked, or three (`acks=all`
/// survives a broker's loss with `min.insync.replicas=2`), no more than the brokers there are.
pub fn replicas(asked: Option<i32>, brokers: usize) -> i32 {
    asked.unwrap_or_else(|| i32::try_from(brokers).unwrap_or(i32::MAX).clamp(1, 3))
}

/// Every topic wxpipe writes, with what each needs. The topics a rebuild reads (the `unbind`
/// and `location` roles') keep every record as long as the projection needs it, and are never
/// compacted: compaction keeps a key's last record by offset, the projections are
/// last-write-wins by `created_at`, and records arrive late. All are `delete` topics with
/// `min.insync.replicas` one below the replicas (at most 2), so `acks=all` means two copies.
pub fn plan(prefix: &str, layout: &Layout, replication: i32) -> Vec<TopicPlan> {
    let rebuilt: Vec<String> = [worker::Role::Unbind, worker::Role::Location]
        .iter()
        .flat_map(|role| role.topics(prefix))
        .collect();
    let min_insync = (replication - 1).clamp(1, 2);
    schemas::all_topic_names(prefix)
        .into_iter()
        .map(|name| {
            let mut config = vec![
                ("cleanup.policy", "delete".to_owned()),
                ("min.insync.replicas", min_insync.to_string()),
            ];
            let retention = if rebuilt.contains(&name) {
                Some(layout.rebuild_retention_ms)
            } else {
                layout.retention_ms
            };
            if let Some(ms) = retention {
                config.push(("retention.ms", ms.to_string()));
            }
            TopicPlan { name, config }
        })
        .collect()
}

/// Creates every topic; topics that exist are left as they are (their configuration too).
/// Also returns the replicas used, which the caller says when it chose them.
pub async fn create_all(
    brokers: &str,
    prefix: &str,
    layout: &Layout,
    layers: &[&[String]],
) -> Result<(i32, Vec<(String, Created)>), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        worker::kafka::client_config(brokers, &[], layers).create()?;
    let cluster = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))?
        .brokers()
        .len();
    let replication = replicas(layout.replication, cluster);
    let plans = plan(prefix, layout, replication);
    let topics: Vec<NewTopic<'_>> = plans
        .iter()
        .map(|plan| {
            plan.config.iter().fold(
                NewTopic::new(
                    &plan.name,
                    layout.partitions,
                    TopicReplication::Fixed(replication),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&topics, &options).await?;
    Ok((
        replication,
        results
            .into_iter()
            .map(|result| match result {
                Ok(name) => (name, Created::Created),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => (name, Created::Exists),
                Err((name, RDKafkaErrorCode::InvalidReplicationFactor)) => (
                    name,
                    Created::Failed(format!(
                        "the cluster cannot hold {replication} replicas of it (it has {cluster} broker(s)): \
                         pass --replication-factor {cluster} or fewer"
                    )),
                ),
                Err((name, code)) => (name, Created::Failed(code.to_string())),
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            partitions: 12,
            replication: None,
            rebuild_retention_ms: -1,
            retention_ms: None,
        }
    }

    #[test]
    fn three_replicas_where_the_cluster_has_them_and_no_more_than_it_has() {
        assert_eq!(replicas(None, 1), 1, "a one-broker development Kafka");
        assert_eq!(replicas(None, 2), 2);
        assert_eq!(replicas(None, 5), 3);
        assert_eq!(
            replicas(Some(5), 1),
            5,
            "asked for: the broker says why not"
        );
    }

    #[test]
    fn the_topics_a_rebuild_reads_are_kept_and_never_compacted() {
        let mut layout = layout();
        layout.retention_ms = Some(604_800_000);
        let plans = plan("p", &layout, 3);
        assert_eq!(plans.len(), schemas::all_topic_names("p").len());
        let config = |name: &str| {
            plans
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("{name}"))
                .config
                .clone()
        };
        for topic in [
            "p.event.subscribe",
            "p.event.unsubscribe",
            "p.event.location",
        ] {
            let config = config(topic);
            assert!(config.contains(&("retention.ms", "-1".into())), "{topic}");
            assert!(
                config.contains(&("cleanup.policy", "delete".into())),
                "{topic}"
            );
        }
        for topic in ["p.event.click", "p.dlq.welcome", "p.message.text"] {
            assert!(
                config(topic).contains(&("retention.ms", "604800000".into())),
                "{topic}"
            );
        }
        assert!(plans
            .iter()
            .all(|p| p.config.contains(&("min.insync.replicas", "2".into()))));
        let one = plan("p", &layout, 1);
        assert!(one
            .iter()
            .all(|p| p.config.contains(&("min.insync.replicas", "1".into()))));
    }
}
