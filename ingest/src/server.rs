//! The accept loop: HTTP/1 connections with header and idle timeouts, a bound on open
//! connections, and graceful shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::busy::Busy;
use crate::http::Routes;

/// The open connections, oldest first, so that past the limit the oldest one without a
/// complete request is closed: idle keep-alives and slow or silent senders go before any push
/// being answered.
#[derive(Debug)]
struct Connections {
    max: usize,
    next: std::sync::atomic::AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Busy>>>,
}

impl Connections {
    /// Registers a new connection; `None` when the limit is reached and every connection is busy.
    fn admit(&self) -> Option<(u64, Arc<Busy>)> {
        let mut open = self.open.lock().expect("connections lock");
        if open.len() >= self.max {
            let idle = open
                .iter()
                .find(|(_, busy)| busy.close_if_idle())
                .map(|(id, _)| *id)?;
            let evicted = open.remove(&idle).expect("found above");
            evicted.close.notify_one();
            metrics::counter!("wxpipe_connections_closed_total", "reason" => "limit").increment(1);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(Busy::default());
        open.insert(id, Arc::clone(&busy));
        metrics::gauge!("wxpipe_connections_open").set(open.len() as f64);
        Some((id, busy))
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock().expect("connections lock");
        open.remove(&id);
        metrics::gauge!("wxpipe_connections_open").set(open.len() as f64);
    }
}

/// Descriptors kept free of connections: Redis, Kafka, the spool, the admin listener, logs.
const SPARE_FILES: u64 = 256;

/// The connection limit this process can keep: it raises its open-file limit to the hard
/// ceiling, and caps `wanted` below it, so the limit's eviction runs before `accept` fails
/// for lack of descriptors (which would leave genuine pushes waiting in the backlog).
pub fn connection_limit(wanted: u64) -> usize {
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let most = files.saturating_sub(SPARE_FILES).max(1);
    if wanted > most {
        tracing::warn!(
            wanted,
            open_files = files,
            using = most,
            "INGEST_MAX_CONNECTIONS is above what the open-file limit allows: raise the limit (ulimit -n) or lower the setting"
        );
    }
    usize::try_from(wanted.min(most)).unwrap_or(usize::MAX)
}

/// Serves until `shutdown` resolves, then stops accepting and gives in-flight requests `grace`
/// to finish. Returns whether they all did.
pub async fn serve(
    listener: TcpListener,
    routes: Arc<Routes>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> bool {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Connections {
        max: max_connections.max(1),
        next: Default::default(),
        open: Mutex::default(),
    });
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = ops::admin::accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let Some((id, busy)) = connections.admit() else {
            // Every connection is answering a push: this one waits for none of them.
            metrics::counter!("wxpipe_connections_closed_total", "reason" => "all_busy")
                .increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let read_timeout = routes.read_timeout;
        let routes = Arc::clone(&routes);
        let on_request = Arc::clone(&busy);
        let service = service_fn(move |req| {
            let routes = Arc::clone(&routes);
            let busy = Arc::clone(&on_request);
            async move { Ok::<_, std::convert::Infallible>(routes.handle(req, peer.ip(), &busy).await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        let connections = Arc::clone(&connections);
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => if let Err(error) = ended {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                },
                () = busy.close.notified() => {
                    tracing::debug!(%peer, "connection closed to make room");
                }
            }
            connections.remove(id);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => true,
        () = tokio::time::sleep(grace) => false,
    }
}
