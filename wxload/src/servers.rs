//! Servers for benchmarks: the bare limit (answers 200 and does nothing) and a fake WeChat
//! API that counts welcome messages and when they arrived.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The bare limit: a hyper server on the same runtime settings as the ingress that reads the
/// body and answers 200 with an empty body.
pub async fn baseline(listener: TcpListener) {
    serve(listener, |req: Request<hyper::body::Incoming>| async move {
        let _ = req.into_body().collect().await;
        Response::new(Full::new(Bytes::new()))
    })
    .await;
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fake WeChat API for worker benchmarks; `GET /stats` answers
/// `{"sends": n, "first_ms": …, "last_ms": …}` (Unix milliseconds).
pub async fn fake_wechat(listener: TcpListener) {
    let sends = Arc::new(AtomicU64::new(0));
    let first = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    serve(listener, move |req: Request<hyper::body::Incoming>| {
        let (sends, first, last) = (Arc::clone(&sends), Arc::clone(&first), Arc::clone(&last));
        async move {
            let path = req.uri().path().to_owned();
            let _ = req.into_body().collect().await;
            let body = match path.as_str() {
                "/cgi-bin/stable_token" => {
                    r#"{"access_token":"BENCH-TOKEN","expires_in":7200}"#.to_owned()
                }
                "/cgi-bin/message/custom/send" => {
                    let now = now_ms();
                    let _ = first.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
                    last.store(now, Ordering::SeqCst);
                    sends.fetch_add(1, Ordering::SeqCst);
                    r#"{"errcode":0,"errmsg":"ok"}"#.to_owned()
                }
                "/stats" => format!(
                    r#"{{"sends":{},"first_ms":{},"last_ms":{}}}"#,
                    sends.load(Ordering::SeqCst),
                    first.load(Ordering::SeqCst),
                    last.load(Ordering::SeqCst)
                ),
                _ => r#"{"errcode":404,"errmsg":"no such API"}"#.to_owned(),
            };
            Response::new(Full::new(Bytes::from(body)))
        }
    })
    .await;
}
