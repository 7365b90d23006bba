//! wxpipe's workers: Kafka consumers that act on the event stream, at least once and
//! idempotently.
//!
//! ```text
//! {prefix}.event.subscribe ──┬─▶ unbind   ─▶ user state: subscribed=1, scene      (LWW by created_at)
//! {prefix}.event.unsubscribe ┘             ─▶ user state: subscribed=0, binding deleted
//! {prefix}.event.subscribe ────▶ welcome  ─▶ WeChat customer-service text, once per event
//! {prefix}.event.location ─────▶ location ─▶ latest location + GEO set + bounded history
//!                       (poison or failing records) ─▶ {prefix}.dlq.{role}
//! ```
//!
//! - [`config`]: settings and [`config::Role`]s; [`consume`]: the at-least-once loop of a role.
//! - [`replay`]: `worker rebuild` (a projection again from the log) and `worker redrive`
//!   (dead letters back to their topics).
//! - [`effects`](mod@effects): one event's effect, the unit of work, on the `store` crate's effect stores;
//!   [`api`]: the WeChat API calls and the shared access token; [`accounts`]: whose
//!   credentials speak for a record's account (its own, never another's); [`holds`]: an
//!   account the API refuses holds its own records only.
//!
//! It must never depend on the ingress: the ingress depends on it (to run the workers
//! in-process), and the topics are the only thing the two share at run time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub mod accounts;
pub mod api;
pub mod check;
pub mod config;
pub mod consume;
pub mod effects;
mod error;
pub mod holds;
pub mod kafka;
pub mod replay;
mod setup;
pub mod tokens;

pub use config::{Config, Role};
pub use error::StartError;
pub use setup::effects;

use crate::consume::{ConsumerSettings, RoleConsumer};

/// How often both dependencies are probed in the background, so `wxpipe_dependency_up` is
/// current whether or not anyone asks `/readyz`.
const PROBE_EVERY: Duration = Duration::from_secs(3);

/// Ready when a claim round trip through the store passes and the Kafka cluster returns
/// metadata, now, and no role is held back (a dead-letter write failing, a record waiting for a
/// dependency). Each check sets `wxpipe_dependency_up` for Redis and Kafka.
fn readiness(
    store: store::effects::EffectStores,
    settings: &ConsumerSettings,
) -> ops::admin::Readiness {
    let dead_letters = Arc::clone(&settings.dead_letters);
    let waits = Arc::clone(&settings.waits);
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: Option<Arc<BaseConsumer>> = kafka::client_config(
        &settings.brokers,
        &[],
        &[&settings.common, &settings.overrides],
    )
    .create()
    .ok()
    .map(Arc::new);
    Arc::new(move || {
        let store = store.clone();
        let probe = probe.clone();
        let dead_letters = Arc::clone(&dead_letters);
        let waits = Arc::clone(&waits);
        Box::pin(async move {
            // Both at once, each bounded, and both recorded whatever the other answered.
            let redis = async {
                match tokio::time::timeout(Duration::from_secs(1), store.round_trip()).await {
                    Ok(result) => {
                        result.map_err(|e| format!("redis: claim round trip failed: {e}"))
                    }
                    Err(_) => Err("redis: claim round trip took over a second".to_owned()),
                }
            };
            let kafka = async {
                let probe = probe.ok_or_else(|| "kafka: no client".to_owned())?;
                tokio::task::spawn_blocking(move || {
                    probe.fetch_metadata(None, Duration::from_secs(1)).map(drop)
                })
                .await
                .map_err(|e| format!("kafka: {e}"))?
                .map_err(|e| format!("kafka: {e}"))
            };
            let (redis, kafka) = tokio::join!(redis, kafka);
            ops::dependency_up("redis", redis.is_ok());
            ops::dependency_up("kafka", kafka.is_ok());
            if let Some(stuck) = dead_letters.stuck() {
                return Err(stuck);
            }
            if let Some(waiting) = waits.waiting() {
                return Err(waiting);
            }
            redis?;
            kafka?;
            Ok("ready".to_owned())
        })
    })
}

/// Workers built and ready to consume: every client created, the admin port bound. Built by
/// [`start`], so a configuration that cannot work (a property librdkafka refuses, a port in
/// use) fails before anything runs, and the embedded ingress can refuse to start with it.
pub struct Workers {
    consumers: Vec<Arc<RoleConsumer>>,
    admin: Option<tokio::net::TcpListener>,
    /// The readiness check: `/readyz`, and the background probe of the dependencies.
    check: ops::admin::Readiness,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("consumers", &self.consumers)
            .finish_non_exhaustive()
    }
}

/// Builds every role's consumer and the admin listener.
pub async fn start(config: Config) -> Result<Workers, StartError> {
    let settings = ConsumerSettings::from_config(&config)?;
    ops::prometheus();
    let effects = effects(&config).await?;
    let consumers = config
        .roles()
        .into_iter()
        .map(|role| {
            RoleConsumer::new(role, &settings, Arc::clone(&effects))
                .map(Arc::new)
                .map_err(|e| {
                    StartError::Config(ops::settings::ConfigError::Invalid(format!(
                        "the {} consumer: {e} (check KAFKA_CONFIG and KAFKA_CONSUMER_CONFIG)",
                        role.name()
                    )))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let admin = match config.admin_listen.as_str() {
        "" => None,
        addr => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Admin(format!("{addr}: {e}")))?;
            tracing::info!(%addr, "admin endpoints listening");
            Some(listener)
        }
    };
    let check = readiness(effects.stores.clone(), &settings);
    Ok(Workers {
        consumers,
        admin,
        check,
    })
}

impl Workers {
    /// Runs the roles until `shutdown` resolves; then each finishes its in-flight records (or
    /// leaves them for redelivery) within its grace, below the session timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        if let Some(listener) = self.admin {
            let mut stopped = stopped.clone();
            tasks.push(tokio::spawn(ops::admin::serve(
                listener,
                Arc::clone(&self.check),
                async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                },
            )));
        }
        tasks.push(tokio::spawn(ops::admin::probe(
            Arc::clone(&self.check),
            PROBE_EVERY,
            stopped.clone(),
        )));
        for consumer in self.consumers {
            tasks.push(tokio::spawn(
                consumer.run(stopped.clone(), Duration::from_secs(10)),
            ));
        }
        shutdown.await;
        let _ = stop.send(true);
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// [`start`], then [`Workers::run`] until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    start(config).await?.run(shutdown).await;
    Ok(())
}
