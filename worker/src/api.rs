//! The WeChat API calls the workers make: `cgi-bin/stable_token` and the customer-service text
//! message. The access token is cached in the store and shared by every worker process; one
//! process at a time fetches it, under a lock.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use wechat::accounts::Secret;

use store::component::{AuthorizerOf, Components, RefreshToken};
use store::effects::TokenCache;
use store::StoreError;

use crate::tokens::HeldLock;

/// Whose access token, and how it is fetched.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The account's, the authorizer's or the component's AppID.
    pub appid: String,
    pub grant: Grant,
}

/// How an access token is fetched.
#[derive(Debug, Clone)]
pub enum Grant {
    /// An account's own AppSecret (`cgi-bin/stable_token`).
    AppSecret(Secret),
    /// An Open Platform authorizer's: its refresh token (kept by the `component` worker)
    /// through the component (`api_authorizer_token`). Never another account's secrets.
    Authorizer(Arc<ComponentCredentials>),
    /// The component's own token (`api_component_token`, with the newest ticket).
    Component(Arc<ComponentCredentials>),
}

/// A component's AppID and AppSecret.
#[derive(Debug)]
pub struct ComponentCredentials {
    pub appid: String,
    pub appsecret: Secret,
}

impl ComponentCredentials {
    /// One of this component's authorizers, as the component store names it.
    pub fn of<'a>(&'a self, authorizer: &'a str) -> AuthorizerOf<'a> {
        AuthorizerOf {
            component: &self.appid,
            authorizer,
        }
    }
}

impl Credentials {
    pub fn account(appid: impl Into<String>, appsecret: Secret) -> Credentials {
        Credentials {
            appid: appid.into(),
            grant: Grant::AppSecret(appsecret),
        }
    }

    pub fn authorizer(appid: impl Into<String>, component: &Arc<ComponentCredentials>) -> Self {
        Credentials {
            appid: appid.into(),
            grant: Grant::Authorizer(Arc::clone(component)),
        }
    }

    pub fn component(component: &Arc<ComponentCredentials>) -> Credentials {
        Credentials {
            appid: component.appid.clone(),
            grant: Grant::Component(Arc::clone(component)),
        }
    }

    /// The name its token is cached under (a component's apart from any account's).
    fn cache_name(&self) -> std::borrow::Cow<'_, str> {
        match &self.grant {
            Grant::Component(_) => store::component::component_token(&self.appid).into(),
            Grant::Authorizer(component) => {
                store::component::authorizer_token(&component.appid, &self.appid).into()
            }
            Grant::AppSecret(_) => self.appid.as_str().into(),
        }
    }
}

/// What to do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The access token is invalid or expired: refresh it and retry once.
    TokenInvalid,
    /// Will fail again for this user (unfollowed, out of the reply window, over the user's
    /// quota): log, count, move on.
    Permanent,
    /// The account cannot send (API not authorised, wrong credentials): nothing goes out for
    /// any user until a person fixes it, so the send waits, never recorded as done.
    Account,
    /// WeChat or the way to it is failing (system busy, rate and daily limits, no connection,
    /// the token store): it passes, so the send waits for as long as it lasts.
    Outage,
    /// The request was written but no answer came back: WeChat may have sent the message.
    /// Its send has no idempotency key, so sending again could send twice.
    Unanswered,
    /// An errcode this worker does not know: retried a few times (`WORKER_MAX_ATTEMPTS`),
    /// then dead-lettered for a person to look at.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
    /// The post may have reached WeChat (it timed out, or the connection broke, after it was
    /// written).
    #[error("no answer to a written request: {0}")]
    Unanswered(reqwest::Error),
    #[error("errcode {errcode}: {errmsg}")]
    Code { errcode: i64, errmsg: String },
    #[error("unexpected response: {0}")]
    Response(String),
    #[error("token store: {0}")]
    Store(#[from] StoreError),
    #[error("no token: another process holds the fetch lock and none appeared in time")]
    TokenWait,
    /// No refresh token is kept for the authorizer: its authorization was not exchanged yet,
    /// or it withdrew it. Only its own records wait.
    #[error("no refresh token for authorizer {0}: not authorized (yet), or withdrawn")]
    NotAuthorized(String),
    /// No `component_verify_ticket` yet: WeChat pushes one every 10 minutes.
    #[error("no component_verify_ticket received yet")]
    NoTicket,
    #[error("no component configured")]
    NoComponent,
}

impl ApiError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ApiError::Code { errcode, .. } => match errcode {
                40001 | 40014 | 42001 => ErrorClass::TokenInvalid,
                // 45015 out of the 48-hour/1-minute window, 45047 over the quota for this user,
                // 43004 user does not follow.
                45015 | 45047 | 43004 => ErrorClass::Permanent,
                // 48001 API not authorised; 40003 invalid credentials (as WeChat answers for
                // an account whose AppID falls back to another account's); 40013 invalid
                // AppID; 40125 invalid AppSecret; 40164 caller IP not whitelisted; 50002 user
                // limited (the account is restricted).
                48001 | 40003 | 40013 | 40125 | 40164 | 50002 => ErrorClass::Account,
                // -1 system busy, 45009 daily limit, 45011 rate limit.
                -1 | 45009 | 45011 => ErrorClass::Outage,
                _ => ErrorClass::Unknown,
            },
            ApiError::Unanswered(_) => ErrorClass::Unanswered,
            ApiError::Transport(_)
            | ApiError::Response(_)
            | ApiError::TokenWait
            | ApiError::NoTicket => ErrorClass::Outage,
            ApiError::NotAuthorized(_) | ApiError::NoComponent => ErrorClass::Account,
            ApiError::Store(error) if error.is_outage() => ErrorClass::Outage,
            ApiError::Store(_) => ErrorClass::Unknown,
        }
    }

    /// The errcode, for metrics; transport and other failures are -2.
    pub fn errcode(&self) -> i64 {
        match self {
            ApiError::Code { errcode, .. } => *errcode,
            _ => -2,
        }
    }
}

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(alias = "component_access_token", alias = "authorizer_access_token")]
    access_token: Option<String>,
    expires_in: Option<u64>,
    /// `api_authorizer_token` may hand out a new refresh token.
    authorizer_refresh_token: Option<String>,
}

/// What `api_query_auth` returns of an authorization.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthorizationInfo {
    pub authorizer_appid: String,
    pub authorizer_access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
    pub authorizer_refresh_token: String,
}

/// Counts an API call by errcode (-2: no answer).
fn count(api: &'static str, result: &Result<Reply, ApiError>) {
    let errcode = match result {
        Ok(reply) => reply.errcode,
        Err(error) => error.errcode(),
    };
    metrics::counter!("wxpipe_wechat_api_calls_total", "api" => api, "errcode" => errcode.to_string()).increment(1);
}

impl Reply {
    fn ok(self) -> Result<Reply, ApiError> {
        if self.errcode == 0 {
            Ok(self)
        } else {
            Err(ApiError::Code {
                errcode: self.errcode,
                errmsg: self.errmsg,
            })
        }
    }
}

/// A failed post: one that never connected was not written and can be sent again; any other
/// failure may come after WeChat took the request.
fn written(error: reqwest::Error) -> ApiError {
    if error.is_connect() || error.is_builder() {
        ApiError::Transport(error)
    } else {
        ApiError::Unanswered(error)
    }
}

/// How long to wait for another process's fetch before failing (and retrying later), beyond
/// the longest a fetch may take.
const LOCK_WAIT_MARGIN: Duration = Duration::from_secs(2);
/// Numbers this process's attempts at the token fetch lock.
static LOCK_ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// A cached token expires this much before WeChat's own expiry.
const EXPIRY_MARGIN: Duration = Duration::from_secs(300);

/// The API client.
#[derive(Debug, Clone)]
pub struct WeChat {
    http: reqwest::Client,
    base: String,
    store: Arc<dyn TokenCache>,
    /// The component's tickets and authorizers' refresh tokens (Open Platform mode).
    components: Option<Arc<dyn Components>>,
    /// This process, for the fetch lock (each attempt at it adds a number of its own).
    owner: String,
    /// The longest a token fetch may take (a call, then a forced one), and so the fetch
    /// lock's lease: the lock never expires while its holder still fetches.
    fetch_bound: Duration,
    /// One API call's timeout.
    timeout: Duration,
}

impl WeChat {
    pub fn new(
        base: &str,
        timeout: Duration,
        store: Arc<dyn TokenCache>,
        owner: String,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            // Below the call's own timeout, so a WeChat that cannot be reached fails as a
            // connect error (not written: safe to send again), not as a timed-out call.
            .connect_timeout((timeout / 2).min(Duration::from_secs(3)))
            .build()?;
        Ok(WeChat {
            http,
            base: base.trim_end_matches('/').to_owned(),
            store,
            components: None,
            owner,
            fetch_bound: 2 * timeout + Duration::from_secs(1),
            timeout,
        })
    }

    /// With the component store: authorizers' and the component's tokens can be fetched.
    pub fn with_components(mut self, components: Arc<dyn Components>) -> Self {
        self.components = Some(components);
        self
    }

    /// The longest [`WeChat::send_text`] may take: a token (a wait for another process's
    /// fetch, then a fetch of its own), a post, a refresh (the same again) and a second post.
    /// A welcome's send lease must cover it, or another handler could send the same welcome
    /// while this one is still at it.
    pub fn send_bound(&self) -> Duration {
        let token = 2 * self.fetch_bound + LOCK_WAIT_MARGIN;
        2 * token + 2 * self.timeout
    }

    /// Sends a customer-service text message; refreshes the token and retries once when
    /// WeChat says it is invalid.
    pub async fn send_text(
        &self,
        creds: &Credentials,
        openid: &str,
        content: &str,
    ) -> Result<(), ApiError> {
        self.send_text_noting(creds, openid, content, &AtomicBool::new(false))
            .await
    }

    /// [`WeChat::send_text`], setting `posted` once a post is on its way: a send cut before
    /// that sent nothing.
    pub async fn send_text_noting(
        &self,
        creds: &Credentials,
        openid: &str,
        content: &str,
        posted: &AtomicBool,
    ) -> Result<(), ApiError> {
        let token = self.token(creds).await?;
        match self.post_text(&token, openid, content, posted).await {
            Err(e) if e.class() == ErrorClass::TokenInvalid => {
                // That post was refused: nothing went out, so a cut during the refresh is not
                // a send whose outcome is unknown.
                posted.store(false, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(appid = %creds.appid, errcode = e.errcode(), "access token rejected: refreshing");
                let fresh = self.refresh(creds, &token).await?;
                self.post_text(&fresh, openid, content, posted).await
            }
            other => other,
        }
    }

    async fn post_text(
        &self,
        token: &str,
        openid: &str,
        content: &str,
        posted: &AtomicBool,
    ) -> Result<(), ApiError> {
        let body = json!({"touser": openid, "msgtype": "text", "text": {"content": content}});
        posted.store(true, std::sync::atomic::Ordering::SeqCst);
        let reply = async {
            let response = self
                .http
                .post(format!("{}/cgi-bin/message/custom/send", self.base))
                .query(&[("access_token", token)])
                .json(&body)
                .send()
                .await
                .map_err(written)?;
            let status = response.status();
            // A proxy's or load balancer's refusal (502, 503, 429…, whatever its body): it
            // never reached WeChat's send. A gateway timeout may have.
            if !status.is_success() && status != reqwest::StatusCode::GATEWAY_TIMEOUT {
                return Err(ApiError::Response(format!("HTTP {status}")));
            }
            let reply: serde_json::Value = response.json().await.map_err(ApiError::Unanswered)?;
            // WeChat's answer always carries an errcode; anything else is not WeChat's.
            if reply.get("errcode").is_none() {
                return Err(ApiError::Response(format!(
                    "HTTP {status} without an errcode"
                )));
            }
            serde_json::from_value::<Reply>(reply)
                .map_err(|e| ApiError::Response(format!("unexpected answer: {e}")))
        }
        .await;
        count("custom_send", &reply);
        reply?.ok().map(drop)
    }

    /// The cached token, or a fresh one fetched by this process or another.
    pub async fn token(&self, creds: &Credentials) -> Result<String, ApiError> {
        self.token_avoiding(creds, None).await
    }

    /// Forgets `failed` (only if it is still the cached token: another process may have
    /// refreshed already) and returns a token that is not it.
    async fn refresh(&self, creds: &Credentials, failed: &str) -> Result<String, ApiError> {
        self.store.drop_token(&creds.cache_name(), failed).await?;
        self.token_avoiding(creds, Some(failed)).await
    }

    async fn token_avoiding(
        &self,
        creds: &Credentials,
        failed: Option<&str>,
    ) -> Result<String, ApiError> {
        let deadline = tokio::time::Instant::now() + self.fetch_bound + LOCK_WAIT_MARGIN;
        loop {
            if let Some(token) = self.cached(creds, failed).await? {
                return Ok(token);
            }
            let lease = self.fetch_bound + LOCK_WAIT_MARGIN;
            // This attempt's own holder: a release never frees a lock another task of this
            // process holds.
            let holder = format!(
                "{}/{}",
                self.owner,
                LOCK_ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            // Cut from here on (a welcome's send cut at its bound drops this future), the
            // lock this attempt may hold is released in the background.
            let name = creds.cache_name();
            let mut held = HeldLock {
                store: Arc::clone(&self.store),
                appid: &name,
                holder: &holder,
                armed: true,
            };
            let locked = match self.store.lock_token(&name, &holder, lease).await {
                Ok(locked) => locked,
                Err(error) => {
                    // The lock may have been taken before the answer was lost: release it
                    // (only if it is this attempt's), or every process would wait out its
                    // lease.
                    self.unlock(creds, &holder).await;
                    held.armed = false;
                    return Err(error.into());
                }
            };
            held.armed = locked;
            if locked {
                // Another process (or task) may have fetched and unlocked between our look at
                // the cache and our lock: look again before spending a call of the quota.
                // The fetch is bounded by the lock's lease, so no other process fetches too.
                let fetched = match self.cached(creds, failed).await {
                    Ok(Some(token)) => Ok(token),
                    Ok(None) => tokio::time::timeout(self.fetch_bound, self.fetch(creds, failed))
                        .await
                        .unwrap_or(Err(ApiError::TokenWait)),
                    Err(error) => Err(error),
                };
                // Released whatever happened above; a token fetched is kept even if the
                // release fails.
                self.unlock(creds, &holder).await;
                held.armed = false;
                return fetched;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::TokenWait);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Releases this process's fetch lock; a failure leaves it to its lease, logged.
    async fn unlock(&self, creds: &Credentials, holder: &str) {
        if let Err(error) = self.store.unlock_token(&creds.cache_name(), holder).await {
            tracing::warn!(appid = %creds.appid, %error,
                "token fetch lock not released: other processes wait for its lease to run out");
        }
    }

    /// The cached token, unless it is the one that just `failed`.
    async fn cached(
        &self,
        creds: &Credentials,
        failed: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        Ok(self
            .store
            .token(&creds.cache_name())
            .await?
            .filter(|t| Some(t.as_str()) != failed))
    }

    /// Fetches a token as its grant says, and caches it.
    async fn fetch(&self, creds: &Credentials, failed: Option<&str>) -> Result<String, ApiError> {
        let (reply, forced) = match &creds.grant {
            Grant::AppSecret(secret) => self.stable_token(&creds.appid, secret, failed).await?,
            Grant::Component(component) => (self.fetch_component_token(component).await?, false),
            Grant::Authorizer(component) => (
                self.fetch_authorizer_token(&creds.appid, component).await?,
                false,
            ),
        };
        let token = reply
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Response("no access_token".into()))?;
        if failed == Some(token.as_str()) {
            // Caching the token WeChat just refused would make every call fail until it
            // expires. Try again later.
            return Err(ApiError::Response(
                "the fetch returned the rejected token".into(),
            ));
        }
        let ttl = self.cache(creds, &token, reply.expires_in).await?;
        tracing::info!(appid = %creds.appid, ttl_secs = ttl.as_secs(), forced, "access token fetched");
        Ok(token)
    }

    /// Caches a token for its lifetime less a margin.
    async fn cache(
        &self,
        creds: &Credentials,
        token: &str,
        expires_in: Option<u64>,
    ) -> Result<Duration, ApiError> {
        let lifetime = Duration::from_secs(expires_in.unwrap_or(7200));
        let ttl = lifetime
            .saturating_sub(EXPIRY_MARGIN)
            .max(lifetime / 2)
            .max(Duration::from_secs(1));
        self.store
            .set_token(&creds.cache_name(), token, ttl)
            .await?;
        Ok(ttl)
    }

    /// `stable_token`; asks WeChat to force a new token only when the normal call returns the
    /// one that just failed. Returns whether it forced.
    async fn stable_token(
        &self,
        appid: &str,
        secret: &Secret,
        failed: Option<&str>,
    ) -> Result<(Reply, bool), ApiError> {
        let mut force = false;
        loop {
            let body = json!({
                "grant_type": "client_credential",
                "appid": appid,
                "secret": secret.expose(),
                "force_refresh": force,
            });
            let reply = self.token_call("stable_token", body).await?;
            if !force && failed.is_some() && reply.access_token.as_deref() == failed {
                force = true;
                continue;
            }
            return Ok((reply, force));
        }
    }

    fn components(&self) -> Result<&Arc<dyn Components>, ApiError> {
        self.components.as_ref().ok_or(ApiError::NoComponent)
    }

    /// `api_component_token`, with the newest ticket WeChat pushed.
    async fn fetch_component_token(
        &self,
        component: &ComponentCredentials,
    ) -> Result<Reply, ApiError> {
        let ticket = self
            .components()?
            .ticket(&component.appid)
            .await?
            .ok_or(ApiError::NoTicket)?;
        let body = json!({
            "component_appid": component.appid,
            "component_appsecret": component.appsecret.expose(),
            "component_verify_ticket": ticket,
        });
        self.token_call("component/api_component_token", body).await
    }

    /// A token call (`stable_token`, `api_component_token`): `body` posted to
    /// `/cgi-bin/{api}`, the answer counted, and returned once its errcode is 0.
    async fn token_call(
        &self,
        api: &'static str,
        body: serde_json::Value,
    ) -> Result<Reply, ApiError> {
        let reply = async {
            Ok::<Reply, ApiError>(
                self.http
                    .post(format!("{}/cgi-bin/{api}", self.base))
                    .json(&body)
                    .send()
                    .await?
                    .json::<Reply>()
                    .await?,
            )
        }
        .await;
        let name = api.rsplit('/').next().unwrap_or(api);
        count(name, &reply);
        reply?.ok()
    }

    /// `api_authorizer_token`, with the refresh token the component worker keeps (and keeps
    /// the new one WeChat may hand out).
    async fn fetch_authorizer_token(
        &self,
        appid: &str,
        component: &Arc<ComponentCredentials>,
    ) -> Result<Reply, ApiError> {
        let components = self.components()?;
        let authorizer = components.authorizer(component.of(appid)).await?;
        let refresh_token = authorizer
            .refresh_token
            .ok_or_else(|| ApiError::NotAuthorized(appid.to_owned()))?;
        let reply = self
            .component_call(
                component,
                "api_authorizer_token",
                json!({
                    "authorizer_appid": appid,
                    "authorizer_refresh_token": refresh_token,
                }),
            )
            .await?;
        let reply: Reply = serde_json::from_value(reply)
            .map_err(|e| ApiError::Response(format!("unexpected answer: {e}")))?;
        if let Some(fresh) = reply
            .authorizer_refresh_token
            .as_deref()
            .filter(|fresh| !fresh.is_empty() && *fresh != refresh_token)
        {
            let at = authorizer.refresh_at.unwrap_or(0);
            components
                .set_refresh_token(RefreshToken {
                    of: component.of(appid),
                    token: fresh,
                    created_at: at,
                })
                .await?;
        }
        Ok(reply)
    }

    /// A component API call with the component token, refreshed and tried once more when
    /// WeChat says it is invalid; `body` gets the `component_appid` every such call names.
    /// The answer, once its errcode is 0 (or absent).
    fn component_call<'a>(
        &'a self,
        component: &'a Arc<ComponentCredentials>,
        api: &'static str,
        mut body: serde_json::Value,
    ) -> store::BoxFuture<'a, Result<serde_json::Value, ApiError>> {
        body["component_appid"] = json!(component.appid);
        Box::pin(async move {
            let creds = Credentials::component(component);
            let mut token = self.token(&creds).await?;
            for attempt in 0..2 {
                let reply = async {
                    let response = self
                        .http
                        .post(format!("{}/cgi-bin/component/{api}", self.base))
                        .query(&[("component_access_token", token.as_str())])
                        .json(&body)
                        .send()
                        .await?;
                    Ok::<serde_json::Value, ApiError>(response.json().await?)
                }
                .await;
                let errcode = match &reply {
                    Ok(value) => value.get("errcode").and_then(|e| e.as_i64()).unwrap_or(0),
                    Err(error) => error.errcode(),
                };
                metrics::counter!("wxpipe_wechat_api_calls_total", "api" => api, "errcode" => errcode.to_string()).increment(1);
                let value = reply?;
                if errcode == 0 {
                    return Ok(value);
                }
                let error = ApiError::Code {
                    errcode,
                    errmsg: value
                        .get("errmsg")
                        .and_then(|e| e.as_str())
                        .unwrap_or_default()
                        .to_owned(),
                };
                if attempt == 0 && error.class() == ErrorClass::TokenInvalid {
                    token = self.refresh(&creds, &token).await?;
                    continue;
                }
                return Err(error);
            }
            unreachable!("the second attempt returns")
        })
    }

    /// `api_query_auth`: exchanges an authorization code for the authorizer's tokens. A code
    /// is good once.
    pub async fn query_auth(
        &self,
        component: &Arc<ComponentCredentials>,
        code: &str,
    ) -> Result<AuthorizationInfo, ApiError> {
        let reply = self
            .component_call(
                component,
                "api_query_auth",
                json!({"authorization_code": code}),
            )
            .await?;
        serde_json::from_value(reply["authorization_info"].clone())
            .map_err(|e| ApiError::Response(format!("api_query_auth: {e}")))
    }

    /// `api_get_authorizer_info`: the authorizer's `gh_` id (`authorizer_info.user_name`)
    /// and, as WeChat answers it, its refresh token (`authorization_info`).
    pub async fn authorizer_info(
        &self,
        component: &Arc<ComponentCredentials>,
        appid: &str,
    ) -> Result<(String, Option<String>), ApiError> {
        let reply = self
            .component_call(
                component,
                "api_get_authorizer_info",
                json!({"authorizer_appid": appid}),
            )
            .await?;
        let user_name = reply["authorizer_info"]["user_name"]
            .as_str()
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ApiError::Response("api_get_authorizer_info: no user_name".into()))?;
        let refresh_token = reply["authorization_info"]["authorizer_refresh_token"]
            .as_str()
            .filter(|token| !token.is_empty())
            .map(str::to_owned);
        Ok((user_name, refresh_token))
    }

    /// Caches an authorizer token `api_query_auth` handed out, so the first send needs no
    /// fetch.
    pub async fn keep_token(
        &self,
        creds: &Credentials,
        token: &str,
        expires_in: Option<u64>,
    ) -> Result<(), ApiError> {
        self.cache(creds, token, expires_in).await.map(drop)
    }

    /// Forgets the cached token of `creds` (an authorizer that withdrew), until none is found:
    /// the first may be this process's memory of one another process has just replaced.
    pub async fn forget_token(&self, creds: &Credentials) -> Result<(), ApiError> {
        for _ in 0..3 {
            match self.store.token(&creds.cache_name()).await? {
                Some(token) => self.store.drop_token(&creds.cache_name(), &token).await?,
                None => break,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errcodes_are_sorted_as_documented() {
        let class = |errcode| {
            ApiError::Code {
                errcode,
                errmsg: String::new(),
            }
            .class()
        };
        for code in [40001, 40014, 42001] {
            assert_eq!(class(code), ErrorClass::TokenInvalid, "{code}");
        }
        for code in [45015, 45047, 43004] {
            assert_eq!(class(code), ErrorClass::Permanent, "{code}");
        }
        for code in [40003, 48001, 40013, 40125, 40164] {
            assert_eq!(class(code), ErrorClass::Account, "{code}");
        }
        for code in [-1, 45009, 45011] {
            assert_eq!(class(code), ErrorClass::Outage, "{code}");
        }
        assert_eq!(class(99999), ErrorClass::Unknown);
        assert_eq!(ApiError::TokenWait.class(), ErrorClass::Outage);
        assert_eq!(
            ApiError::Store(StoreError::Timeout).class(),
            ErrorClass::Outage
        );
    }
}
