//! Whether a push can be made durable now: the admin listener's `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use crate::publish::Publisher;
use crate::spool::Spool;
use store::dedup::DedupStore;

/// A handle on the dependencies a push is made durable with, made by
/// [`Durability::readiness`](crate::deliver::Durability::readiness). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Readiness {
    store: Arc<dyn DedupStore>,
    publisher: Arc<Publisher>,
    spool: Option<Arc<Spool>>,
}

impl Readiness {
    pub(crate) fn new(
        store: Arc<dyn DedupStore>,
        publisher: Arc<Publisher>,
        spool: Option<Arc<Spool>>,
    ) -> Self {
        Readiness {
            store,
            publisher,
            spool,
        }
    }

    /// The check as the admin listener takes it.
    pub fn into_check(self) -> ops::admin::Readiness {
        Arc::new(move || {
            let ready = self.clone();
            Box::pin(async move { ready.check().await })
        })
    }

    /// Whether a push can be made durable now: Kafka answers (with a producer that can still
    /// produce), or the spool can take it. Redis
    /// down is degraded (pushes go on without claims), never unready: behind a load balancer,
    /// a Redis blip would otherwise take every ingress out at once.
    pub async fn check(&self) -> Result<String, String> {
        let up = ops::dependency_up;
        // Both at once: a probe waits at most about a second, whatever is down.
        let publisher = Arc::clone(&self.publisher);
        let round_trip = tokio::time::timeout(Duration::from_secs(1), self.store.round_trip());
        let (redis, kafka) = tokio::join!(round_trip, async move {
            tokio::task::spawn_blocking(move || publisher.reachable(Duration::from_secs(1)))
                .await
                .map_err(|e| e.to_string())
                .and_then(|reached| reached.map_err(|e| e.to_string()))
        });
        let redis = match redis {
            Ok(result) => result.map_err(|e| format!("redis: claim round trip failed: {e}")),
            Err(_) => Err("redis: claim round trip took over a second".to_owned()),
        };
        let kafka = kafka.map_err(|e| format!("kafka: {e}"));
        up("redis", redis.is_ok());
        up("kafka", kafka.is_ok());
        let spool = match &self.spool {
            // A disk that failed is probed again, so readiness comes back with it.
            Some(spool) if !spool.writable() && spool.bytes() < spool.max_bytes() => {
                Some(spool.probe_bounded(Duration::from_secs(1)).await)
            }
            Some(spool) => Some(spool.writable()),
            None => None,
        };
        if let Some(writable) = spool {
            up("spool", writable);
        }
        // The spool cannot stand in for a producer that will never produce again: the
        // process is on its way out (see `crate::serve`), for its supervisor to restart.
        if let Some((code, reason)) = self.publisher.fatal() {
            return Err(format!(
                "kafka: the producer hit a fatal error ({code:?}: {reason}): the ingress exits to be restarted"
            ));
        }
        let mut degraded: Vec<String> = Vec::new();
        if let Err(redis) = redis {
            degraded.push(format!("{redis} (publishing without dedup claims)"));
        }
        match (kafka, spool) {
            (Ok(()), _) => {}
            (Err(kafka), Some(true)) => degraded.push(format!("{kafka} (spooling)")),
            (Err(kafka), Some(false)) => return Err(format!("{kafka}; spool: not writable")),
            (Err(kafka), None) => return Err(kafka),
        }
        if degraded.is_empty() {
            Ok("ready".into())
        } else {
            Ok(format!("degraded: {}", degraded.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    #[tokio::test]
    async fn a_fatal_producer_fails_readiness_even_with_a_spool() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t.event.subscribe", 1, 1).unwrap();
        let publisher = Arc::new(
            Publisher::new(&mock.bootstrap_servers(), "t", Duration::from_secs(2), &[]).unwrap(),
        );
        let dir = std::env::temp_dir().join(format!(
            "wxpipe-readiness-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        let engine = store::Engine::open("memory://", Duration::from_millis(250)).unwrap();
        let readiness = Readiness::new(
            store::dedup::open(&engine, "k"),
            Arc::clone(&publisher),
            Some(spool),
        );
        // A sequence error at the head of the idempotent producer's queue: librdkafka's fatal
        // state, in which the producer fails every record for good.
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
        );
        let delivery = publisher
            .enqueue_named("t.event.subscribe", "k", b"{}", Default::default())
            .unwrap();
        assert!(Publisher::delivered(delivery).await.is_err());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while publisher.fatal().is_none() {
            assert!(std::time::Instant::now() < deadline, "no fatal error");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let checked = readiness.check().await;
        assert!(
            checked.as_ref().is_err_and(|e| e.contains("fatal")),
            "{checked:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
