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

    /// Whether a push can be made durable now: Kafka answers, or the spool can take it. Redis
    /// down is degraded (pushes go on without claims), never unready: behind a load balancer,
    /// a Redis blip would otherwise take every ingress out at once.
    pub async fn check(&self) -> Result<String, String> {
        let up = |dependency: &'static str, up: bool| {
            metrics::gauge!("wxpipe_dependency_up", "dependency" => dependency).set(if up {
                1.0
            } else {
                0.0
            });
        };
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
