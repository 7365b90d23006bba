//! Servers for benchmarks: the bare limit (answers 200 and does nothing) and a fake WeChat
//! API that counts welcome messages and when they arrived.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub(crate) async fn serve<F, Fut>(listener: TcpListener, handler: F)
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

/// A test server on a free loopback port, its address returned: `answer` takes each
/// request's path and query and its body, with `state` locked, and gives the status and body.
#[cfg(test)]
pub(crate) async fn fake<S, F>(state: Arc<std::sync::Mutex<S>>, answer: F) -> String
where
    S: Send + 'static,
    F: Fn(&mut S, String, Bytes) -> (u16, &'static str) + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve(
        listener,
        move |req: Request<hyper::body::Incoming>| {
            let (state, answer) = (Arc::clone(&state), answer.clone());
            async move {
                let path_and_query = req.uri().to_string();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let (status, body) = answer(&mut state.lock().unwrap(), path_and_query, body);
                let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                response
            }
        },
    ));
    addr
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

/// A fake WeChat API for worker benchmarks. `GET /stats?since=MS` answers
/// `{"sends": n, "p50_ms": …, "p99_ms": …, "max_ms": …}`: when the sends arrived, in
/// milliseconds after `MS` (Unix milliseconds, e.g. when the backlog was written).
pub async fn fake_wechat(listener: TcpListener) {
    let sends = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    serve(listener, move |req: Request<hyper::body::Incoming>| {
        let sends = Arc::clone(&sends);
        async move {
            let path = req.uri().path().to_owned();
            let since: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("since="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let _ = req.into_body().collect().await;
            let body = match path.as_str() {
                "/cgi-bin/stable_token" => {
                    r#"{"access_token":"BENCH-TOKEN","expires_in":7200}"#.to_owned()
                }
                "/cgi-bin/message/custom/send" => {
                    sends.lock().expect("sends lock").push(now_ms());
                    r#"{"errcode":0,"errmsg":"ok"}"#.to_owned()
                }
                "/stats" => {
                    let mut times: Vec<u64> = sends
                        .lock()
                        .expect("sends lock")
                        .iter()
                        .map(|t| t.saturating_sub(since))
                        .collect();
                    times.sort_unstable();
                    let at = |q: f64| {
                        let rank = ((times.len() as f64 * q).ceil() as usize).saturating_sub(1);
                        times.get(rank).copied().unwrap_or(0)
                    };
                    format!(
                        r#"{{"sends":{},"p50_ms":{},"p99_ms":{},"max_ms":{}}}"#,
                        times.len(),
                        at(0.50),
                        at(0.99),
                        times.last().copied().unwrap_or(0)
                    )
                }
                _ => r#"{"errcode":404,"errmsg":"no such API"}"#.to_owned(),
            };
            Response::new(Full::new(Bytes::from(body)))
        }
    })
    .await;
}
