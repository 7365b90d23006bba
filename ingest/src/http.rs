//! HTTP in and out: routes, body limits, and the mapping of outcomes to statuses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::accounts::{Account, Accounts};
use crate::error::{PushError, Rejection};
use crate::pipeline::{Pipeline, Query};

/// Routes and limits, shared by every connection.
#[derive(Debug)]
pub struct Routes {
    pub accounts: Accounts,
    pub max_body_bytes: usize,
    /// How long a client may take to send its body once the headers are in.
    pub read_timeout: Duration,
    pub pipeline: Arc<Pipeline>,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("static header"),
    );
    response
}

fn rejected(error: &PushError) -> Response<Full<Bytes>> {
    text(error.status(), format!("{error}\n"))
}

impl Routes {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let arrived = Instant::now();
        if let Some(account) = self.accounts.at(req.uri().path()) {
            let account = Arc::clone(account);
            return self.wechat(&account, req, arrived).await;
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.ready().await,
            _ => rejected(&Rejection::NotFound.into()),
        }
    }

    async fn wechat(
        &self,
        account: &Account,
        req: Request<Incoming>,
        arrived: Instant,
    ) -> Response<Full<Bytes>> {
        let query = Query::parse(req.uri().query());
        let result = match *req.method() {
            Method::GET => match self.pipeline.verify_url(account, query) {
                Ok(echostr) => return text(StatusCode::OK, echostr),
                Err(rejection) => Err(rejection.into()),
            },
            Method::POST => match self.body(req).await {
                Ok(body) => self.pipeline.push(account, &query, &body, arrived).await,
                Err(rejection) => Err(rejection.into()),
            },
            _ => Err(Rejection::MethodNotAllowed.into()),
        };
        match result {
            // WeChat reads an empty body as "received, do not retry, no reply".
            Ok(accepted) => {
                tracing::debug!(?accepted, "push accepted");
                text(StatusCode::OK, Bytes::new())
            }
            Err(error) => {
                match &error {
                    PushError::Rejected(_) => {
                        tracing::info!(reason = error.reason(), %error, "push rejected")
                    }
                    PushError::Unavailable(_) => {
                        tracing::warn!(reason = error.reason(), %error, "push not durable: 503")
                    }
                }
                rejected(&error)
            }
        }
    }

    /// Reads the body within the size limit and the read timeout.
    async fn body(&self, req: Request<Incoming>) -> Result<Bytes, Rejection> {
        let limit = self.max_body_bytes;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(Rejection::TooLarge(limit));
        }
        let collect = Limited::new(req.into_body(), limit).collect();
        match tokio::time::timeout(self.read_timeout, collect).await {
            Err(_) => Err(Rejection::BodyTimeout),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                Err(Rejection::TooLarge(limit))
            }
            Ok(Err(_)) => Err(Rejection::BodyTimeout),
        }
    }

    /// Ready when Redis and Kafka answer now.
    async fn ready(&self) -> Response<Full<Bytes>> {
        if let Err(error) = self.pipeline.store().ping().await {
            return text(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {error}\n"));
        }
        let publisher = Arc::clone(self.pipeline.publisher());
        let kafka =
            tokio::task::spawn_blocking(move || publisher.reachable(Duration::from_secs(1))).await;
        match kafka {
            Ok(Ok(())) => text(StatusCode::OK, "ready\n"),
            Ok(Err(error)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("kafka: {error}\n")),
            Err(error) => text(StatusCode::SERVICE_UNAVAILABLE, format!("kafka: {error}\n")),
        }
    }
}
