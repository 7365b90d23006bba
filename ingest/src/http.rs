//! HTTP in and out: routes, body limits, and the mapping of outcomes to statuses.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use ipnet::IpNet;

use crate::accounts::{Account, Accounts};
use crate::busy::Busy;
use crate::component::{self, Component};
use crate::deliver::Accepted;
use crate::error::{PushError, Rejection, Unavailable};
use crate::pipeline::{Pipeline, Query};

const X_FORWARDED_FOR: &str = "x-forwarded-for";
use schemas::Topic;

/// Routes and limits, shared by every connection.
#[derive(Debug)]
pub struct Routes {
    pub accounts: Accounts,
    /// The Open Platform component, served under `{INGEST_PATH}/component/`.
    pub component: Option<Arc<Component>>,
    pub max_body_bytes: usize,
    /// How long a client may take to send its body once the headers are in.
    pub read_timeout: Duration,
    /// Pushes being handled; past its size, a push gets 503 at once, so memory stays bounded
    /// when Kafka is slow.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub pipeline: Arc<Pipeline>,
    /// Where WeChat's requests may come from; empty: anywhere.
    pub allowed_ips: Vec<IpNet>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    pub metrics: PushMetrics,
}

/// The client of a request: the peer, or, when the peer is a trusted proxy, the rightmost
/// address of `X-Forwarded-For` that is not a trusted proxy (the leftmost when all are).
/// `None` when a hop that must be read is not an address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut hops = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        for hop in value.to_str().ok()?.split(',') {
            hops.push(hop.trim());
        }
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = hop.parse::<IpAddr>().ok()?.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    Some(client)
}

/// A push being handled: holds its in-flight permit and counts it in the gauge until dropped,
/// however the push ends.
struct InFlight<'a>(
    #[allow(dead_code)] tokio::sync::OwnedSemaphorePermit,
    &'a metrics::Gauge,
);

impl<'a> InFlight<'a> {
    fn enter(permit: tokio::sync::OwnedSemaphorePermit, gauge: &'a metrics::Gauge) -> Self {
        gauge.increment(1.0);
        InFlight(permit, gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.1.decrement(1.0);
    }
}

/// The hot path's metric handles, looked up once.
#[derive(Debug)]
pub struct PushMetrics {
    in_flight: metrics::Gauge,
    /// `wxpipe_push_ack_seconds` by outcome: published, duplicate, spooled, rejected, failed.
    ack_seconds: [metrics::Histogram; 5],
}

impl PushMetrics {
    /// Handles on the installed recorder (call after it is installed).
    pub fn new() -> Self {
        let ack = |outcome: &'static str| metrics::histogram!("wxpipe_push_ack_seconds", "outcome" => outcome);
        PushMetrics {
            in_flight: metrics::gauge!("wxpipe_pushes_in_flight"),
            ack_seconds: [
                ack("published"),
                ack("duplicate"),
                ack("spooled"),
                ack("rejected"),
                ack("failed"),
            ],
        }
    }

    fn ack_seconds(&self, outcome: &str) -> &metrics::Histogram {
        let at = ["published", "duplicate", "spooled", "rejected"]
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(4);
        &self.ack_seconds[at]
    }
}

impl Default for PushMetrics {
    fn default() -> Self {
        Self::new()
    }
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

/// Whose push a request is: an account's, or one of the component's routes.
enum Target {
    Account(Arc<Account>),
    Component(Arc<Component>, component::Route),
}

impl Target {
    /// Whose Token and key check the request; its name labels the metrics.
    fn account(&self) -> &Account {
        match self {
            Target::Account(account) => account,
            Target::Component(component, _) => component.account(),
        }
    }
}

impl Routes {
    /// Answers one request from `peer` on a connection that `busy` marks while a complete
    /// request is being handled (so the connection limit closes other connections first).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: IpAddr,
        busy: &Busy,
    ) -> Response<Full<Bytes>> {
        let arrived = Instant::now();
        // A request with no body is complete once its headers are in.
        let _complete = (req.method() != Method::POST).then(|| busy.mark());
        let path = req.uri().path();
        let target = if let Some(account) = self.accounts.at(path) {
            Target::Account(Arc::clone(account))
        } else if let Some((component, route)) = self
            .component
            .as_ref()
            .and_then(|c| c.route(path).map(|route| (c, route)))
        {
            Target::Component(Arc::clone(component), route)
        } else {
            // Operators' endpoints are on the admin listener only.
            return rejected(&Rejection::NotFound.into());
        };
        if !self.allowed(peer, req.headers()) {
            let account = target.account();
            tracing::info!(account = %account.name, %peer, "request from outside INGEST_ALLOWED_IPS refused");
            return self.answer(
                account,
                None,
                Err(Rejection::SourceNotAllowed.into()),
                arrived,
            );
        }
        self.wechat(target, req, arrived, busy).await
    }

    /// Whether a request from `peer` with these headers comes from an allowed address.
    fn allowed(&self, peer: IpAddr, headers: &HeaderMap) -> bool {
        if self.allowed_ips.is_empty() {
            return true;
        }
        client_ip(peer, headers, &self.trusted_proxies)
            .is_some_and(|ip| self.allowed_ips.iter().any(|net| net.contains(&ip)))
    }

    async fn wechat(
        &self,
        target: Target,
        req: Request<Incoming>,
        arrived: Instant,
        busy: &Busy,
    ) -> Response<Full<Bytes>> {
        let account = target.account();
        let query = Query::parse(req.uri().query());
        match *req.method() {
            // WeChat verifies an account's URL; a component's routes take pushes only.
            Method::GET if matches!(target, Target::Account(_)) => {
                let result = self.pipeline.verify_url(account, query);
                let outcome = if result.is_ok() {
                    "verified"
                } else {
                    "rejected"
                };
                metrics::counter!("wxpipe_url_verifications_total", "account" => account.name.clone(), "outcome" => outcome)
                    .increment(1);
                match result {
                    Ok(echostr) => text(StatusCode::OK, echostr),
                    Err(rejection) => {
                        tracing::info!(account = %account.name, reason = rejection.reason(), %rejection, "URL verification rejected");
                        rejected(&rejection.into())
                    }
                }
            }
            Method::POST => {
                // The query is checked before the body is read, and the in-flight permit taken
                // only once the whole body is in: a request without a valid signature, or one
                // whose body never comes, holds nothing that genuine pushes need.
                let signed = match self.pipeline.check_query(account, query) {
                    Ok(signed) => signed,
                    Err(rejection) => {
                        return self.answer(account, None, Err(rejection.into()), arrived)
                    }
                };
                let body = match self.body(req).await {
                    Ok(body) => body,
                    Err(rejection) => {
                        return self.answer(account, None, Err(rejection.into()), arrived)
                    }
                };
                let _busy = busy.mark();
                let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
                    return self.answer(
                        account,
                        None,
                        Err(Unavailable::Overloaded.into()),
                        arrived,
                    );
                };
                // A client that hangs up drops this future at whatever await it is in: every
                // counter the push holds is released by a guard (this permit, the spool's), a
                // pending produce outcome is followed by a task of its own, and a claim left
                // pending expires with its lease.
                let _in_flight = InFlight::enter(permit, &self.metrics.in_flight);
                let (topic, result) = match &target {
                    Target::Account(account) => {
                        let (topic, result) =
                            self.pipeline.push(account, &signed, &body, arrived).await;
                        // WeChat reads an empty body as "received, do not retry, no reply".
                        (topic, result.map(|accepted| (accepted, Bytes::new())))
                    }
                    Target::Component(component, route) => {
                        component.push(route, &signed, &body, arrived).await
                    }
                };
                self.answer(account, topic, result, arrived)
            }
            _ => self.answer(
                account,
                None,
                Err(Rejection::MethodNotAllowed.into()),
                arrived,
            ),
        }
    }

    /// Answers a push (200 with its body once durable), with one log line for a refusal and
    /// the push's metrics.
    fn answer(
        &self,
        account: &Account,
        topic: Option<Topic>,
        result: Result<(Accepted, Bytes), PushError>,
        arrived: Instant,
    ) -> Response<Full<Bytes>> {
        let type_ = topic.map_or("unknown", Topic::type_name);
        let kind = topic.map_or("unknown", |t| t.kind().as_str());
        let (outcome, reason, response) = match result {
            Ok((accepted, body)) => {
                let outcome = match accepted {
                    Accepted::Published => "published",
                    Accepted::Duplicate => "duplicate",
                    Accepted::Spooled => "spooled",
                };
                (outcome, "", text(StatusCode::OK, body))
            }
            Err(ref error) => {
                let outcome = match error {
                    PushError::Rejected(_) => {
                        tracing::info!(account = %account.name, reason = error.reason(), %error, "push rejected");
                        "rejected"
                    }
                    PushError::Unavailable(_) => {
                        tracing::warn!(account = %account.name, reason = error.reason(), %error, "push not durable: 503");
                        "failed"
                    }
                };
                (outcome, error.reason(), rejected(error))
            }
        };
        metrics::counter!("wxpipe_pushes_total", "account" => account.name.clone(), "kind" => kind, "type" => type_,
            "outcome" => outcome, "reason" => reason)
        .increment(1);
        self.metrics
            .ack_seconds(outcome)
            .record(arrived.elapsed().as_secs_f64());
        response
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
}
