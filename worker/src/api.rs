//! The WeChat API calls the workers make: `cgi-bin/stable_token` and the customer-service text
//! message. The access token is cached in the store and shared by every worker process; one
//! process at a time fetches it, under a lock.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use wechat::accounts::Secret;

use store::effects::TokenCache;
use store::StoreError;

/// An account's API credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub appid: String,
    pub appsecret: Secret,
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
            ApiError::Transport(_) | ApiError::Response(_) | ApiError::TokenWait => {
                ErrorClass::Outage
            }
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
    access_token: Option<String>,
    expires_in: Option<u64>,
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

/// A fetch lock an attempt may hold: released in a task of its own if the attempt is dropped
/// before it releases it (only this attempt's holder is deleted, so a lock it never got is
/// left alone).
struct HeldLock<'a> {
    store: Arc<dyn TokenCache>,
    appid: &'a str,
    holder: &'a str,
    armed: bool,
}

impl Drop for HeldLock<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, appid, holder) = (
            Arc::clone(&self.store),
            self.appid.to_owned(),
            self.holder.to_owned(),
        );
        runtime.spawn(async move {
            if let Err(error) = store.unlock_token(&appid, &holder).await {
                tracing::warn!(%appid, %error,
                    "token fetch lock of a cut fetch not released: other processes wait for its lease to run out");
            }
        });
    }
}

/// The API client.
#[derive(Debug, Clone)]
pub struct WeChat {
    http: reqwest::Client,
    base: String,
    store: Arc<dyn TokenCache>,
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
            owner,
            fetch_bound: 2 * timeout + Duration::from_secs(1),
            timeout,
        })
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
        self.store.drop_token(&creds.appid, failed).await?;
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
            let mut held = HeldLock {
                store: Arc::clone(&self.store),
                appid: &creds.appid,
                holder: &holder,
                armed: true,
            };
            let locked = match self.store.lock_token(&creds.appid, &holder, lease).await {
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
        if let Err(error) = self.store.unlock_token(&creds.appid, holder).await {
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
            .token(&creds.appid)
            .await?
            .filter(|t| Some(t.as_str()) != failed))
    }

    /// Fetches from `stable_token` and caches; asks WeChat to force a new token only when the
    /// normal call returns the one that just failed.
    async fn fetch(&self, creds: &Credentials, failed: Option<&str>) -> Result<String, ApiError> {
        let mut force = false;
        loop {
            let reply = async {
                Ok::<Reply, ApiError>(
                    self.http
                        .post(format!("{}/cgi-bin/stable_token", self.base))
                        .json(&json!({
                            "grant_type": "client_credential",
                            "appid": creds.appid,
                            "secret": creds.appsecret.expose(),
                            "force_refresh": force,
                        }))
                        .send()
                        .await?
                        .json::<Reply>()
                        .await?,
                )
            }
            .await;
            count("stable_token", &reply);
            let reply = reply?.ok()?;
            let token = reply
                .access_token
                .filter(|t| !t.is_empty())
                .ok_or_else(|| ApiError::Response("no access_token".into()))?;
            if failed == Some(token.as_str()) {
                if !force {
                    force = true;
                    continue;
                }
                // Even a forced refresh returned the token WeChat just refused: caching it
                // would make every send fail until it expires. Try again later.
                return Err(ApiError::Response(
                    "a forced refresh returned the rejected token".into(),
                ));
            }
            let lifetime = Duration::from_secs(reply.expires_in.unwrap_or(7200));
            let ttl = lifetime
                .saturating_sub(EXPIRY_MARGIN)
                .max(lifetime / 2)
                .max(Duration::from_secs(1));
            self.store.set_token(&creds.appid, &token, ttl).await?;
            tracing::info!(appid = %creds.appid, ttl_secs = ttl.as_secs(), forced = force, "access token fetched");
            return Ok(token);
        }
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
