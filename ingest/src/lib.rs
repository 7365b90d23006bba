//! wxpipe's ingress: WeChat Official Account pushes in, durable Kafka records out.
//!
//! ```text
//! POST /wechat[/NAME] ─▶ http ─▶ verify ─▶ decrypt ─▶ parse ─▶ normalize ─▶ claim ─▶ publish or spool ─▶ 200 ""
//!                          │        │         │         │          │          │                   │
//!                       413/408    403       403       400        400   503 in flight      503 not durable
//!                                └───────── pipeline::prepare ─────────┘    └─────── deliver ───────┘
//! ```
//!
//! It owns the HTTP side of a push and what a 200 promises:
//! - [`http`]: routes, body limits, status mapping; [`server`]: the accept loop; [`busy`]:
//!   a connection's busy mark, which the two share.
//! - [`accounts`]: which account a path serves, with its secrets; [`component`]: the Open
//!   Platform component's routes (authorization events, and every authorizer's pushes).
//! - [`pipeline`]: the checks, from a signed query to a [`Prepared`](deliver::Prepared)
//!   record; the protocol itself (verify, decrypt, parse, normalize) is the `wechat` crate's.
//! - [`deliver`]: the durability policy (claim, publish under the deadline, spool, settle),
//!   with [`recent`] nonces for when the store cannot answer; [`readiness`]: whether that
//!   policy can be met now, for `/readyz`.
//! - the dedup claims are the `store` crate's; [`spool`]: the local segment log
//!   and its replay; [`publish`]: the idempotent Kafka producer; [`embedded`]: the in-process
//!   broker; [`topics`]: `ingest topics`.
//! - [`run`] wires it all to a listener.
//!
//! It must never depend on the workers' effects (subscriptions, welcomes, locations): it uses
//! the `worker` crate only to run the workers in-process (the embedded default) and for the
//! Kafka client settings both binaries share. Logs, metrics and the admin listener are `ops`'s.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub mod accounts;
pub mod busy;
pub mod cloudevents;
pub mod component;
pub mod config;
pub mod deliver;
pub mod embedded;
pub mod error;
pub mod http;
pub mod pipeline;
pub mod publish;
pub mod readiness;
pub mod recent;
pub mod server;
pub mod spool;
pub mod topics;

pub use config::Config;

/// How often the dependencies are probed in the background (see [`readiness`]).
const PROBE_EVERY: Duration = Duration::from_secs(3);

/// Why the ingress could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ops::settings::ConfigError),
    #[error(
        "KAFKA_BROKERS is not set (main starts the embedded broker; library callers pass brokers)"
    )]
    NoBrokers,
    #[error("kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("dedup store: {0}")]
    Store(#[from] store::StoreError),
    #[error("spool: {0}")]
    Spool(#[from] spool::SpoolError),
    #[error("workers: {0}")]
    Workers(#[from] worker::StartError),
    #[error("admin listener {0}")]
    Admin(String),
    /// The producer can never produce again; a restart gets a new one (and replays the spool).
    #[error("kafka producer: fatal error, exiting to be restarted: {0}")]
    KafkaFatal(String),
}

/// Serves WeChat pushes on `listener` until `shutdown` resolves; then finishes in-flight
/// pushes (each ends durable-and-200 or not-200) and flushes the producer. A producer that
/// hits a fatal error stops it the same way, then [`StartError::KafkaFatal`].
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    config.validate()?;
    let admin = match config.admin_listen.as_str() {
        "" => None,
        addr => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Admin(format!("{addr}: {e}")))?,
        ),
    };
    serve(listener, admin, config, shutdown).await
}

/// [`run`] with the admin listener (`/healthz`, `/readyz`, `/metrics`) already bound, or none.
pub async fn serve(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    config.validate()?;
    // Install the metrics recorder before anything records.
    ops::prometheus();
    let invalid = |e| StartError::Config(ops::settings::ConfigError::Invalid(e));
    let accounts = accounts::Accounts::load(&config).map_err(invalid)?;
    let component_entry = config.shared.component().map_err(invalid)?;
    if config.dedup_ttl_floored() {
        tracing::warn!(
            requested_secs = config.dedup_ttl_secs,
            used_secs = config.dedup_ttl().as_secs(),
            "INGEST_DEDUP_TTL is below 2 x WECHAT_TIMESTAMP_TOLERANCE + 60 s: raised to that, so a \
             captured request is refused for as long as its timestamp passes"
        );
    }
    let brokers = config
        .shared
        .kafka_brokers
        .as_deref()
        .ok_or(StartError::NoBrokers)?;
    let engine = store::Engine::open(config.shared.store_url()?, config.shared.redis_timeout())?;
    let store = store::dedup::open(&engine, &config.shared.key_prefix);
    engine.check_at_start(|| store.round_trip()).await?;
    let publisher = Arc::new(publish::Publisher::new(
        brokers,
        &config.shared.topic_prefix,
        config.ack_deadline(),
        &[&config.shared.kafka_config, &config.kafka_producer_config],
    )?);
    let spool = match &config.spool_dir {
        Some(dir) => Some(spool::Spool::open(dir, config.spool_max_bytes)?),
        None => None,
    };
    let (stop_replay, replay_stopped) = tokio::sync::watch::channel(false);
    let replay = spool.as_ref().map(|spool| {
        tokio::spawn(spool::replay(
            Arc::clone(spool),
            Arc::clone(&publisher),
            replay_stopped,
        ))
    });
    let durability = Arc::new(deliver::Durability::new(
        &config,
        store,
        Arc::clone(&publisher),
        spool,
    ));
    let readiness = durability.readiness();
    let component = match component_entry {
        None => None,
        Some(entry) => Some(Arc::new(
            component::Component::new(
                entry,
                &config,
                &accounts,
                store::component::open(&engine, &config.shared.key_prefix),
                Arc::clone(&durability),
            )
            .map_err(invalid)?,
        )),
    };
    let pipeline = Arc::new(pipeline::Pipeline::new(&config, durability));
    let max_in_flight = config
        .max_in_flight
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
    // `wxpipe_dependency_up` stays current with nobody polling `/readyz`.
    let probe = tokio::spawn(ops::admin::probe(
        readiness.clone().into_check(),
        PROBE_EVERY,
        admin_stopped.clone(),
    ));
    let admin = admin.map(|listener| {
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin endpoints listening");
        let mut stopped = admin_stopped.clone();
        tokio::spawn(ops::admin::serve(listener, readiness.into_check(), async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }))
    });
    let routes = Arc::new(http::Routes {
        accounts,
        component,
        max_body_bytes: config.max_body_bytes,
        read_timeout: config.read_timeout(),
        in_flight: Arc::clone(&in_flight),
        pipeline,
        allowed_ips: config.allowed_ips.clone(),
        trusted_proxies: config.trusted_proxies.clone(),
        metrics: http::PushMetrics::new(),
    });
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        accounts = %routes.accounts.iter().map(|(path, a)| format!("{}={path}", a.name)).collect::<Vec<_>>().join(","),
        component = %routes.component.as_ref().map_or("", |c| c.appid()),
        redis = %if config.shared.redis_url.as_deref().is_some_and(|url| url.starts_with(ops::settings::MEMORY)) { "memory://" } else { "redis" },
        "ingest listening"
    );
    // The embedded default runs the workers here, so one command shows the whole flow.
    let workers = if config.run_workers {
        let workers = worker::start(config.worker_config()).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(workers.run(async {
            let _ = stopped.await;
        }));
        tracing::info!("workers running in-process (unbind, welcome, location)");
        Some((stop, task))
    } else {
        None
    };
    let grace = config.ack_deadline() + Duration::from_secs(1);
    let max_connections = server::connection_limit(config.max_connections);
    // A producer in librdkafka's fatal state fails every record for good, so the spool would
    // fill and never drain: the ingress stops as for a signal (readiness fails meanwhile) and
    // exits non-zero. Every 200 is on Kafka or in the spool, which the next start replays.
    let fatal = Arc::new(std::sync::OnceLock::new());
    let watch_fatal = {
        let (publisher, fatal) = (Arc::clone(&publisher), Arc::clone(&fatal));
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some((code, reason)) = publisher.fatal() {
                    tracing::error!(?code, %reason, "the Kafka producer hit a fatal error: stopping, to be restarted with a new one");
                    let _ = fatal.set(format!("{code:?}: {reason}"));
                    return;
                }
            }
        }
    };
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            () = watch_fatal => {}
        }
    };
    let mut finished = server::serve(listener, routes, max_connections, shutdown, grace).await;
    // Each push holds an in-flight permit to its end: holding them all means none is left.
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    finished &= tokio::time::timeout(grace, in_flight.acquire_many(all))
        .await
        .is_ok();
    if !finished {
        tracing::warn!(
            ?grace,
            "shutdown grace period ran out with requests in flight"
        );
    }
    let _ = stop_admin.send(true);
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    let _ = probe.await;
    let _ = stop_replay.send(true);
    if let Some(replay) = replay {
        let _ = replay.await;
    }
    let flushed =
        tokio::task::spawn_blocking(move || publisher.flush(Duration::from_secs(5))).await;
    if !matches!(flushed, Ok(Ok(()))) {
        tracing::warn!("producer not fully flushed at shutdown");
    }
    if let Some((stop, task)) = workers {
        let _ = stop.send(());
        if let Err(error) = task.await {
            tracing::warn!(%error, "workers ended abnormally");
        }
    }
    if let Some(fatal) = fatal.get() {
        return Err(StartError::KafkaFatal(fatal.clone()));
    }
    tracing::info!("ingest stopped");
    Ok(())
}
