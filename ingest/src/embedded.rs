//! The embedded default: an in-process Kafka-protocol broker (librdkafka's mock cluster), so
//! `ingest` runs with nothing else installed. It is for trying wxpipe out: it keeps only a few
//! megabytes per partition, in memory, and loses everything when the process exits.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
        let created = nudging(&cluster.bootstrap_servers(), || {
            for topic in schemas::all_topic_names(topic_prefix) {
                cluster.create_topic(&topic, partitions, brokers.min(3))?;
            }
            Ok(())
        });
        created.map(|()| Embedded { cluster })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// The mock cluster, for tests that inject faults.
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}

/// Runs `create` while a thread connects to the mock broker every few milliseconds.
///
/// Each topic is created by an op to the mock cluster's thread, which it must be woken for.
/// librdkafka 2.12 loses that wake-up when the op is queued while the thread drains its
/// wake-up pipe (it marks the queue served, then reads the pipe, the new op's byte with it);
/// the op then waits out the thread's 1 s poll. Creating every topic one after the other hit
/// that often: the embedded default took 3 to 17 s to start on a busy machine. A connection
/// wakes the thread too, and its poll serves whatever op is queued.
fn nudging<T>(bootstrap_servers: &str, create: impl FnOnce() -> T) -> T {
    let broker = bootstrap_servers
        .split(',')
        .next()
        .unwrap_or_default()
        .to_owned();
    let creating = AtomicBool::new(true);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while creating.load(Ordering::Relaxed) {
                drop(TcpStream::connect(&broker));
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let created = create();
        creating.store(false, Ordering::Relaxed);
        created
    })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::Instant;

    use super::*;

    #[test]
    fn the_broker_is_woken_while_the_topics_are_created_and_left_alone_after() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let accept_all = || std::iter::from_fn(|| listener.accept().ok()).count();
        let during = nudging(&format!("{address},127.0.0.1:1"), || {
            let until = Instant::now() + Duration::from_millis(200);
            let mut woken = 0;
            while Instant::now() < until {
                woken += accept_all();
                std::thread::sleep(Duration::from_millis(10));
            }
            woken
        });
        assert!(during >= 5, "{during} connections in 200 ms");
        std::thread::sleep(Duration::from_millis(50));
        accept_all();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(accept_all(), 0, "no connection once the topics are created");
    }
}
