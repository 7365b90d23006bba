//! A small HTTP server for operators: `GET /healthz` (alive), `GET /readyz` (the readiness
//! check passes now, with what it found; 503 with its reason otherwise) and `GET /metrics`
//! (Prometheus text, with the process's CPU, memory and open files).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// A readiness check: `Ok` with a one-line state (`ready`, or `degraded: …`) when ready, else
/// the reason.
pub type Readiness =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("static header"),
    );
    response
}

/// `GET /metrics`: this process's metrics.
pub fn metrics() -> Response<Full<Bytes>> {
    let mut body = crate::telemetry::render();
    body.push_str(&crate::process::render());
    let mut response = text(StatusCode::OK, body);
    response.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8"
            .parse()
            .expect("static header"),
    );
    response
}

/// The answer to `/readyz`.
pub async fn ready(check: &Readiness) -> Response<Full<Bytes>> {
    match check().await {
        Ok(state) => text(StatusCode::OK, format!("{state}\n")),
        Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

/// Runs `check` now and then every `every` until `stop` turns true, for what it records
/// (`wxpipe_dependency_up`): the metrics stay current with nobody polling `/readyz`.
pub async fn probe(
    check: Readiness,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = ticks.tick() => {}
        }
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = check() => {}
        }
    }
}

/// The next connection on `listener`. An accept that fails (out of file descriptors and the
/// like) is logged and tried again after a pause, instead of spinning.
pub async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(pair) => return pair,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, check: Readiness, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => return,
        };
        let check = Arc::clone(&check);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let check = Arc::clone(&check);
                async move {
                    Ok::<_, std::convert::Infallible>(match req.uri().path() {
                        "/healthz" => text(StatusCode::OK, "ok\n"),
                        "/readyz" => ready(&check).await,
                        "/metrics" => metrics(),
                        _ => text(StatusCode::NOT_FOUND, "not found\n"),
                    })
                }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
