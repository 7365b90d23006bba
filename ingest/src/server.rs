//! The accept loop: HTTP/1 connections with header and idle timeouts, a bound on open
//! connections, and graceful shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::http::Routes;

/// Marks a connection busy while it has a complete request being answered.
#[derive(Debug, Default)]
pub struct Busy {
    requests: AtomicUsize,
    /// Closes the connection when the limit needs its place.
    close: Notify,
}

/// Holds a connection busy until dropped.
#[derive(Debug)]
pub struct BusyGuard<'a>(&'a Busy);

impl Busy {
    pub fn mark(&self) -> BusyGuard<'_> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        BusyGuard(self)
    }

    fn is_idle(&self) -> bool {
        self.requests.load(Ordering::SeqCst) == 0
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::SeqCst);
    }
}

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
                .find(|(_, busy)| busy.is_idle())
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
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
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
