//! One way to build a Kafka client's configuration, for every client of both binaries: the
//! brokers, the client's own defaults, then `KAFKA_CONFIG` (settings every client needs, such
//! as TLS and SASL), then the client kind's own overrides (`KAFKA_PRODUCER_CONFIG`,
//! `KAFKA_CONSUMER_CONFIG`). A client built any other way would miss the security settings and
//! fail on a secured cluster.

use std::sync::Arc;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

/// (partition, low, high) of every partition of `topic`, now. A topic the broker does not know
/// (or errs on, or that has no partitions) is `UnknownTopicOrPartition`, never an empty list.
pub fn watermarks<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    timeout: std::time::Duration,
) -> Result<Vec<(i32, i64, i64)>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions = match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>()
        }
        _ => {
            return Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ))
        }
    };
    partitions
        .into_iter()
        .map(|p| {
            let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
            Ok((p, low, high))
        })
        .collect()
}

/// Runs a blocking Kafka query (librdkafka waits on the network) on a thread of its own.
pub async fn blocking<S, T>(
    shared: &Arc<S>,
    call: impl FnOnce(&S) -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError>
where
    S: Send + Sync + 'static,
    T: Send + 'static,
{
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || call(&shared))
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// `bootstrap.servers`, then `defaults`, then each layer of `key=value` pairs in order.
pub fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    layers: &[&[String]],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    // The lists were checked with the config; an entry that is not `key=value` sets nothing.
    for entry in layers.iter().flat_map(|layer| layer.iter()) {
        if let ops::settings::Property::Pair(key, value) = ops::settings::kafka_property(entry) {
            config.set(key, value);
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_over_the_defaults() {
        let common = vec!["security.protocol=ssl".to_owned(), "acks = 1".to_owned()];
        let own = vec!["acks=all".to_owned()];
        let config = client_config(
            "b:9092",
            &[("acks", "0"), ("linger.ms", "1")],
            &[&common, &own],
        );
        assert_eq!(config.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(config.get("security.protocol"), Some("ssl"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("linger.ms"), Some("1"));
    }
}
