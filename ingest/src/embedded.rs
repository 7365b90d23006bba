//! The embedded default: an in-process Kafka-protocol broker (librdkafka's mock cluster), so
//! `ingest` runs with nothing else installed. It is for trying wxpipe out: it keeps only a few
//! megabytes per partition, in memory, and loses everything when the process exits.

use rdkafka::error::KafkaResult;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A mock cluster with every topic of the contract created, dead-letter topics included. Not `Send`: keep it on the
/// thread that made it, for as long as clients use it.
pub struct Embedded {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("bootstrap_servers", &self.cluster.bootstrap_servers())
            .finish()
    }
}

impl Embedded {
    pub fn start(brokers: i32, topic_prefix: &str, partitions: i32) -> KafkaResult<Self> {
        let cluster = MockCluster::new(brokers)?;
        for topic in schemas::all_topic_names(topic_prefix) {
            cluster.create_topic(&topic, partitions, brokers.min(3))?;
        }
        Ok(Embedded { cluster })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// The mock cluster, for tests that inject faults.
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}
