//! Normalized event → Kafka record, through an idempotent producer with `acks=all`.
//!
//! [`Publisher::enqueue`] hands the record to librdkafka and returns the future of its
//! delivery report; the caller bounds the wait with its own deadline, since librdkafka's
//! `message.timeout.ms` overruns by seconds when brokers are down.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use schemas::Topic;

/// Why Kafka did not take a record, sorted so the caller can act on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// Will likely succeed later: queue full, brokers unreachable, timeouts.
    #[error("retriable: {0}")]
    Retriable(KafkaError),
    /// Will fail again as it is (an invalid record): a person must look at it.
    #[error("permanent: {0}")]
    Permanent(KafkaError),
    /// Refused for the cluster's setup (an ACL, a topic's size limit, a producer's fatal
    /// error), often for one topic only: it passes once a person fixes the setup.
    #[error("refused by Kafka's setup: {0}")]
    Refused(KafkaError),
    #[error("{0}")]
    Unknown(KafkaError),
    /// The producer went away before reporting.
    #[error("delivery report lost (producer closed)")]
    Canceled,
}

impl PublishError {
    /// A delivery report's error. Only what is wrong with the record itself is permanent; an
    /// error about the cluster's setup (a missing ACL, a topic whose size limit is below a
    /// batch) passes once a person fixes it, so it is never a reason to set records aside.
    pub fn classify(error: KafkaError) -> Self {
        use RDKafkaErrorCode as C;
        match error.rdkafka_error_code() {
            Some(
                C::QueueFull
                | C::MessageTimedOut
                | C::AllBrokersDown
                | C::BrokerTransportFailure
                | C::RequestTimedOut
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::NetworkException
                | C::UnknownTopicOrPartition,
            ) => PublishError::Retriable(error),
            Some(
                C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::MessageSizeTooLarge
                | C::Fatal,
            ) => {
                tracing::error!(%error, "Kafka refuses records for its setup: check the topic's ACLs and limits (or the producer's state)");
                PublishError::Refused(error)
            }
            Some(C::InvalidMessageSize | C::InvalidMessage | C::InvalidRecord) => {
                PublishError::Permanent(error)
            }
            _ => PublishError::Unknown(error),
        }
    }

    /// An error librdkafka raised before the record left this process: a record larger than
    /// the producer takes is permanent (it is this record's size), the rest as for a report.
    pub fn classify_enqueue(error: KafkaError) -> Self {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => PublishError::Permanent(error),
            _ => Self::classify(error),
        }
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, PublishError::Permanent(_))
    }

    /// Whether a push Kafka did not take may go to the spool instead: not when Kafka refuses
    /// it as it is, nor for its setup (a spooled record of a refused topic would hold up the
    /// replay; a 503 lets WeChat retry once the setup is fixed).
    pub fn spoolable(&self) -> bool {
        !matches!(self, PublishError::Permanent(_) | PublishError::Refused(_))
    }

    pub fn is_refused(&self) -> bool {
        matches!(self, PublishError::Refused(_))
    }
}

/// The Kafka side of the ingress.
pub struct Publisher {
    producer: FutureProducer,
    /// Full topic names, computed once.
    topics: HashMap<Topic, String>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// A producer for `brokers`; `layers` of `key=value` (`KAFKA_CONFIG`, then
    /// `KAFKA_PRODUCER_CONFIG`) are applied last.
    pub fn new(
        brokers: &str,
        prefix: &str,
        ack_deadline: Duration,
        layers: &[&[String]],
    ) -> Result<Self, KafkaError> {
        // Past our own deadline the push was answered 503; librdkafka may still deliver it
        // (then its claim is confirmed) or give up a little later (then it is released).
        let message_timeout = (ack_deadline.as_millis() + 2000).to_string();
        let config = worker::kafka::client_config(
            brokers,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "1"),
                ("message.timeout.ms", &message_timeout),
                // librdkafka's default (10 s) makes the first sends after a broker returns
                // time out.
                ("reconnect.backoff.ms", "50"),
                ("reconnect.backoff.max.ms", "1000"),
                ("socket.keepalive.enable", "true"),
            ],
            layers,
        );
        let producer: FutureProducer = config.create()?;
        let topics = Topic::all().map(|t| (t, t.name(prefix))).collect();
        Ok(Publisher { producer, topics })
    }

    pub fn topic_name(&self, topic: Topic) -> &str {
        &self.topics[&topic]
    }

    /// Hands a record for a topic by name to the producer, with its headers (the CloudEvents
    /// attributes, [`crate::cloudevents`]).
    pub fn enqueue_named(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<DeliveryFuture, PublishError> {
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        self.producer
            .send_result(record)
            .map_err(|(error, _)| PublishError::classify_enqueue(error))
    }

    /// Hands a record to the producer; the returned future resolves with its delivery report.
    pub fn enqueue(
        &self,
        topic: Topic,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<DeliveryFuture, PublishError> {
        self.enqueue_named(self.topic_name(topic), key, payload, headers)
    }

    /// Waits for a delivery report, mapped to our error.
    pub async fn delivered(delivery: DeliveryFuture) -> Result<(), PublishError> {
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _))) => Err(PublishError::classify(error)),
            Err(_canceled) => Err(PublishError::Canceled),
        }
    }

    /// Whether the cluster answers a metadata request within `timeout` (blocking), and the
    /// producer can still produce: after a fatal error (an idempotent producer that lost its
    /// sequence) it fails every record until the process restarts.
    pub fn reachable(&self, timeout: Duration) -> Result<(), KafkaError> {
        if let Some((code, _)) = self.fatal() {
            return Err(KafkaError::Global(code));
        }
        self.producer
            .client()
            .fetch_metadata(None, timeout)
            .map(drop)
    }

    /// The producer's fatal error, if it hit one (librdkafka's `rd_kafka_fatal_error`: an
    /// idempotent producer that lost its sequence with the broker). It then fails every
    /// record for good; [`crate::serve`] ends the process for its supervisor to restart.
    pub fn fatal(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.producer.client().fatal_error()
    }

    /// Sends what is queued, waiting at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }
}
