//! One event's effect, by role: the unit of work of the workers. [`Effects::apply`] returns an
//! [`Outcome`]; the consumer loop around it decides retries, the dead-letter topic and offsets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use schemas::Event;

use crate::accounts::{NoSender, Senders};
use std::sync::Arc;

use crate::api::{ApiError, ComponentCredentials, Credentials, ErrorClass, WeChat};
use crate::config::{Role, SceneTexts};
use store::component::{Authorization, Components, RefreshToken, UserName};
use store::effects::{Applied, EffectStores, Location, Subscription};
use store::Lease;

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The effect is done (now, or earlier: redelivered and late events change nothing).
    Done,
    /// Nothing to do, or a permanent failure that was logged and counted: move on.
    Skipped(String),
    /// A subscribe older than `WELCOME_MAX_AGE`: never welcomed, move on.
    TooOld(String),
    /// A welcome whose send's outcome is unknown (the post was written, its answer lost),
    /// recorded as handled and not repeated: move on.
    Unknown(String),
    /// A dependency (Redis, WeChat, the network) is failing: the record waits, and is tried
    /// again for as long as that lasts; it never goes to the dead-letter topic for it.
    Wait(String),
    /// The record's account cannot act now (the API refuses its credentials or permissions):
    /// only that account's records wait, tried again until a person fixes it, and never
    /// dead-lettered for it (see [`crate::holds`]).
    Held(String),
    /// A failure this worker cannot explain: tried again a few times, then dead-lettered.
    Retry(String),
    /// The record cannot be handled as it is: it goes to the dead-letter topic.
    Poison(String),
}

/// How long a sent welcome is remembered at least: longer than Kafka's default retention, so a
/// redelivery from anywhere in the log sends nothing. A day longer than `WELCOME_MAX_AGE` when
/// that is longer ([`Effects::sent_ttl`]), up to [`SENT_TTL_MAX`].
const SENT_TTL: Duration = Duration::from_secs(8 * 24 * 3600);

/// 100 years: no follow is older (`created_at` counts from 1970), and the engines' expiry
/// arithmetic stays far from overflowing whatever `WELCOME_MAX_AGE` says.
const SENT_TTL_MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How far ahead of this worker's clock an event's `created_at` may be. The ingress refuses a
/// `CreateTime` more than 60 s ahead of the signed timestamp (itself within the replay window
/// of the ingress's clock); a record stamped further ahead (written before that check, or by
/// another producer) would win every last-write-wins comparison and make each later event of
/// its user stale, so it is never applied: it goes to the dead-letter topic.
pub const MAX_CREATED_AT_AHEAD: i64 = 600;

/// A failed store call: an outage waits, anything else is retried a few times.
fn store_failed(error: &store::StoreError) -> Outcome {
    metrics::counter!("wxpipe_redis_errors_total", "op" => "effect", "kind" => error.kind())
        .increment(1);
    if error.is_outage() {
        Outcome::Wait(error.to_string())
    } else {
        Outcome::Retry(error.to_string())
    }
}

/// A failed API call of the component role: as the welcome's classes say, but nothing of it
/// is ever recorded as sent.
fn api_failed(error: &ApiError) -> Outcome {
    match error.class() {
        ErrorClass::Outage | ErrorClass::TokenInvalid => Outcome::Wait(error.to_string()),
        ErrorClass::Account => Outcome::Held(error.to_string()),
        ErrorClass::Permanent => Outcome::Skipped(error.to_string()),
        ErrorClass::Unanswered | ErrorClass::Unknown => Outcome::Retry(error.to_string()),
    }
}

/// Refuses an event stamped too far in the future to compete in last-write-wins.
fn check_created_at(event: &Event) -> Result<i64, Outcome> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if event.created_at > now + MAX_CREATED_AT_AHEAD {
        return Err(Outcome::Poison(format!(
            "created_at {} is more than {MAX_CREATED_AT_AHEAD} s ahead of this worker's clock",
            event.created_at
        )));
    }
    Ok(event.created_at)
}

impl Outcome {
    /// Every `outcome` label of `wxpipe_worker_events_total`.
    pub const LABELS: [&'static str; 5] =
        ["done", "skipped", "too_old", "unknown", "dead_lettered"];

    /// Its `outcome` label in `wxpipe_worker_events_total`, once its record is handled.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Skipped(_) => "skipped",
            Outcome::TooOld(_) => "too_old",
            Outcome::Unknown(_) => "unknown",
            Outcome::Wait(_) | Outcome::Held(_) | Outcome::Retry(_) | Outcome::Poison(_) => {
                "dead_lettered"
            }
        }
    }
}

/// Everything the effects need.
#[derive(Debug)]
pub struct Effects {
    pub stores: EffectStores,
    pub wechat: WeChat,
    /// Each account's API credentials, found by the record's account only.
    pub senders: Senders,
    pub welcome_text: String,
    pub scene_texts: SceneTexts,
    pub location_history: usize,
    /// How long a welcome send is claimed at a time: over one API call with its token refresh,
    /// renewed while the send runs. A worker that dies mid-send holds it that long at most;
    /// then another sends.
    pub send_lease: Duration,
    /// This process, for send claims.
    pub owner: String,
    /// A subscribe older than this is not welcomed (`WELCOME_MAX_AGE`).
    pub welcome_max_age: Duration,
    /// Send again a welcome whose outcome is unknown (`WELCOME_RESEND_UNKNOWN`): at least
    /// once instead of at most once.
    pub resend_unknown: bool,
    /// Open Platform mode: the component, its store, and whether the release check is on.
    pub component: Option<ComponentEffects>,
}

/// What the `component` role and an authorizer's welcomes need.
#[derive(Debug)]
pub struct ComponentEffects {
    pub credentials: Arc<ComponentCredentials>,
    pub store: Arc<dyn Components>,
    pub release_check: bool,
}

/// WeChat's release-check (全网发布) test accounts, by AppID: the only authorizers whose
/// `QUERY_AUTH_CODE:` texts the component role answers.
pub const RELEASE_CHECK_APPIDS: [&str; 5] = [
    "wx570bc396a51b8ff8",
    "wx9252c5e0bb1836fc",
    "wx8e1097c5bc82cde9",
    "wx14550af28c71a144",
    "wxa35b9c23cfe664eb",
];

impl Effects {
    pub async fn apply(&self, role: Role, event: &Event) -> Outcome {
        match role {
            Role::Unbind => self.unbind(event).await,
            Role::Welcome => self.welcome(event).await,
            Role::Location => self.location(event).await,
            Role::Component => self.component(event).await,
        }
    }

    /// `component`: an authorization's code exchanged for the authorizer's refresh token
    /// (once: a redelivery finds it kept), forgotten on `unauthorized`; and, with the release
    /// check on, a test account's `QUERY_AUTH_CODE:` answered through the API.
    async fn component(&self, event: &Event) -> Outcome {
        let Some(component) = &self.component else {
            return Outcome::Skipped("no component configured".into());
        };
        let Some(authorizer) = event.text("authorizer_appid").map(str::to_owned) else {
            if event.kind == schemas::Kind::Message && component.release_check {
                return self.release_check(component, event).await;
            }
            return Outcome::Skipped(format!("{} is not an authorization", event.type_));
        };
        if event.account != component.credentials.appid {
            return Outcome::Skipped(format!("another component's ({})", event.account));
        }
        let store = &component.store;
        let authorized = match event.type_.as_str() {
            "authorized" | "updateauthorized" => true,
            "unauthorized" => false,
            other => return Outcome::Skipped(format!("{other} is not an authorization")),
        };
        let of = component.credentials.of(&authorizer);
        // The ingress recorded the change before it answered; a record from the spool or a
        // redrive is recorded here again (idempotent).
        let change = Authorization {
            of,
            authorized,
            created_at: event.created_at,
        };
        if let Err(error) = store.set_authorized(change).await {
            return store_failed(&error);
        }
        if !authorized {
            let creds = Credentials::authorizer(&authorizer, &component.credentials);
            return match self.wechat.forget_token(&creds).await {
                Ok(()) => Outcome::Done,
                Err(error) => api_failed(&error),
            };
        }
        let known = match store.authorizer(of).await {
            Ok(known) => known,
            Err(error) => return store_failed(&error),
        };
        if known.authorized == Some(false) {
            return Outcome::Skipped("withdrawn since".into());
        }
        if known.refresh_at.is_some_and(|at| at >= event.created_at) {
            // Exchanged already (a code is good once): a redelivery.
            return Outcome::Done;
        }
        let Some(code) = event.text("authorization_code") else {
            return Outcome::Poison("an authorization without its code".into());
        };
        self.exchange(component, &authorizer, code, event.created_at)
            .await
    }

    /// Exchanges an authorization code and keeps the refresh token, the access token it came
    /// with, and the authorizer's `gh_` id. A code is good once: when its exchange fails
    /// after WeChat may have taken it (an answer lost, a code already spent by this record's
    /// earlier attempt whose result Redis did not keep), the refresh token is recovered with
    /// `api_get_authorizer_info`, which returns it too.
    async fn exchange(
        &self,
        component: &ComponentEffects,
        authorizer: &str,
        code: &str,
        created_at: i64,
    ) -> Outcome {
        let of = component.credentials.of(authorizer);
        match component.store.authorizer(of).await {
            // Exchanged already, by this record's earlier attempt or a copy of it.
            Ok(kept) if kept.refresh_at.is_some_and(|at| at >= created_at) => return Outcome::Done,
            Ok(_) => {}
            Err(error) => return store_failed(&error),
        }
        let (refresh_token, access) = match self
            .wechat
            .query_auth(&component.credentials, code)
            .await
        {
            Ok(info) if info.authorizer_appid != authorizer => {
                return Outcome::Poison(format!(
                    "the code is {}'s, not {authorizer}'s",
                    info.authorizer_appid
                ))
            }
            Ok(info) => (
                info.authorizer_refresh_token,
                Some((info.authorizer_access_token, info.expires_in)),
            ),
            Err(error) if matches!(error.class(), ErrorClass::Unknown | ErrorClass::Unanswered) => {
                match self
                    .wechat
                    .authorizer_info(&component.credentials, authorizer)
                    .await
                {
                    Ok((_, Some(refresh_token))) => {
                        tracing::info!(%authorizer, %error, "code exchange failed: refresh token recovered with api_get_authorizer_info");
                        (refresh_token, None)
                    }
                    _ => return api_failed(&error),
                }
            }
            Err(error) => return api_failed(&error),
        };
        // WeChat gave the token: keep it whatever Redis does meanwhile (the code is spent).
        let give_up = tokio::time::Instant::now() + self.send_lease;
        loop {
            match component
                .store
                .set_refresh_token(RefreshToken {
                    of,
                    token: &refresh_token,
                    created_at,
                })
                .await
            {
                Ok(Applied::Yes) => break,
                Ok(Applied::Stale) => {
                    return Outcome::Skipped("withdrawn or reauthorized since".into())
                }
                Err(error) if tokio::time::Instant::now() >= give_up => {
                    // Tried again later: the code is spent by then, and the token recovered.
                    return store_failed(&error);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        let creds = Credentials::authorizer(authorizer, &component.credentials);
        if let Some((token, expires_in)) = access {
            if let Err(error) = self.wechat.keep_token(&creds, &token, expires_in).await {
                tracing::warn!(%error, %authorizer, "authorizer token not cached: the first send fetches one");
            }
        }
        // Its gh_ id, so a push on its route naming another account is refused. Learned from
        // its first push otherwise.
        match self
            .wechat
            .authorizer_info(&component.credentials, authorizer)
            .await
        {
            Ok((user_name, _)) => {
                if let Err(error) = component
                    .store
                    .write_user_name(of, UserName::FromApi(&user_name))
                    .await
                {
                    tracing::warn!(%error, %authorizer, "authorizer's gh_ id not kept: learned from its first push");
                }
            }
            Err(error) => {
                tracing::warn!(%error, %authorizer, "api_get_authorizer_info failed: its gh_ id is learned from its first push");
            }
        }
        tracing::info!(%authorizer, "authorization exchanged: refresh token kept");
        Outcome::Done
    }

    /// WeChat's release check: a test account's `QUERY_AUTH_CODE:{code}` text is answered
    /// with `{code}_from_api`, sent with the authorizer token the code is exchanged for; once,
    /// under the record's send claim, as a welcome is.
    async fn release_check(&self, component: &ComponentEffects, event: &Event) -> Outcome {
        let Some(appid) = event.appid.as_deref() else {
            return Outcome::Skipped("not an authorizer's".into());
        };
        let code = match event
            .text("content")
            .and_then(|c| c.strip_prefix("QUERY_AUTH_CODE:"))
        {
            Some(code) if RELEASE_CHECK_APPIDS.contains(&appid) && !code.is_empty() => code,
            _ => return Outcome::Skipped("not a release check".into()),
        };
        match self
            .stores
            .welcome
            .begin_send(&event.id, &self.owner, self.send_lease)
            .await
        {
            Ok(Lease::Claimed) => {}
            Ok(Lease::Done) => return Outcome::Done,
            Ok(Lease::Held) => return Outcome::Wait("another worker answers this check".into()),
            Err(error) => return store_failed(&error),
        }
        let outcome = self
            .exchange(component, appid, code, event.created_at)
            .await;
        if outcome != Outcome::Done {
            self.abandon(&event.id).await;
            return outcome;
        }
        let creds = Credentials::authorizer(appid, &component.credentials);
        match self
            .wechat
            .send_text(&creds, &event.openid, &format!("{code}_from_api"))
            .await
        {
            Ok(()) => {
                self.record_sent(&event.id).await;
                Outcome::Done
            }
            Err(error) if error.class() == ErrorClass::Unanswered => {
                self.unknown(&event.id, &format!("unanswered: {error}"))
                    .await
            }
            Err(error) => {
                self.abandon(&event.id).await;
                api_failed(&error)
            }
        }
    }

    async fn unbind(&self, event: &Event) -> Outcome {
        let subscribed = match event.type_.as_str() {
            "subscribe" => true,
            "unsubscribe" => false,
            other => return Outcome::Skipped(format!("{other} is not a subscription event")),
        };
        let created_at = match check_created_at(event) {
            Ok(created_at) => created_at,
            Err(poison) => return poison,
        };
        let change = Subscription {
            account: &event.account,
            openid: &event.openid,
            subscribed,
            created_at,
            scene: event.text("scene"),
        };
        match self.stores.subscriptions.subscription(change).await {
            Ok(Applied::Yes) => Outcome::Done,
            Ok(Applied::Stale) => {
                tracing::debug!(id = %ops::redact_id(&event.id), "a newer subscription state is already stored");
                Outcome::Done
            }
            Err(error) => store_failed(&error),
        }
    }

    /// Gives up this worker's claim on a welcome, so a retry can send it; a failure leaves it
    /// to run out with its lease.
    async fn abandon(&self, id: &str) {
        let _ = self.stores.welcome.abandon_send(id, &self.owner).await;
    }

    fn welcome_text(&self, event: &Event) -> &str {
        event
            .text("scene")
            .and_then(|scene| self.scene_texts.0.get(scene))
            .unwrap_or(&self.welcome_text)
    }

    async fn welcome(&self, event: &Event) -> Outcome {
        if event.type_ != "subscribe" {
            return Outcome::Skipped(format!("{} is not a subscribe", event.type_));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let max_age = i64::try_from(self.welcome_max_age.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(event.created_at) > max_age {
            tracing::info!(id = %ops::redact_id(&event.id), created_at = event.created_at,
                "a follow older than WELCOME_MAX_AGE is not welcomed");
            return Outcome::TooOld(format!(
                "created_at {} is older than WELCOME_MAX_AGE",
                event.created_at
            ));
        }
        let text = self.welcome_text(event);
        // An authorizer's follower (Open Platform): that authorizer's token, never another
        // account's credentials.
        let authorizer = match (&event.appid, &self.component) {
            (Some(appid), Some(component)) => {
                // Withdrawn (the ingress records it before it answers): nothing more goes
                // out for it, whatever token is still cached.
                match component
                    .store
                    .authorizer(component.credentials.of(appid))
                    .await
                {
                    Ok(state) if state.authorized == Some(false) => {
                        return Outcome::Held(format!(
                            "authorizer {appid} withdrew its authorization"
                        ))
                    }
                    Ok(_) => {}
                    Err(error) => return store_failed(&error),
                }
                Some(Credentials::authorizer(appid, &component.credentials))
            }
            (Some(appid), None) => {
                tracing::warn!(%appid, openid = %ops::hash_openid(&event.openid), %text,
                    "welcome message (logged, not sent: an authorizer's follow, and no component with its AppSecret configured)");
                return Outcome::Skipped(format!(
                    "authorizer {appid}: no component with its AppSecret configured"
                ));
            }
            (None, _) => None,
        };
        let creds = match authorizer
            .as_ref()
            .map_or_else(|| self.senders.for_account(&event.account), Ok)
        {
            Ok(creds) => creds,
            Err(NoSender::NoSecret) => {
                tracing::info!(account = %event.account, openid = %ops::hash_openid(&event.openid), %text, "welcome message (logged, not sent: no AppSecret configured for its account)");
                return Outcome::Done;
            }
            Err(NoSender::Unknown) => {
                tracing::warn!(account = %event.account, openid = %ops::hash_openid(&event.openid), %text, "welcome message (logged, not sent: no configured account has this original_id)");
                return Outcome::Skipped(format!("account {} is not configured", event.account));
            }
        };
        // Another worker may be sending it (a rebalance handed us its record), or may have
        // died sending it: wait for its lease to end either way.
        let waited_until = tokio::time::Instant::now() + self.send_lease + Duration::from_secs(1);
        loop {
            match self
                .stores
                .welcome
                .begin_send(&event.id, &self.owner, self.send_lease)
                .await
            {
                Ok(Lease::Claimed) => break,
                Ok(Lease::Done) => return Outcome::Done,
                Ok(Lease::Held) if tokio::time::Instant::now() < waited_until => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(Lease::Held) => {
                    return Outcome::Wait("another worker holds this welcome".into())
                }
                Err(error) => return store_failed(&error),
            }
        }
        // The lease is renewed every third of it while the send runs, so no other handler can
        // claim this welcome meanwhile, however slow WeChat is; and the send is cut at its
        // bound. Cut, its outcome is unknown (a post may have been written), and WeChat's send
        // has no idempotency key: it is recorded and not repeated.
        let cut_at = tokio::time::Instant::now() + self.wechat.send_bound();
        let posted = AtomicBool::new(false);
        let send = self
            .wechat
            .send_text_noting(creds, &event.openid, text, &posted);
        tokio::pin!(send);
        let sent = loop {
            tokio::select! {
                sent = &mut send => break Some(sent),
                () = tokio::time::sleep(self.send_lease / 3) => {
                    if tokio::time::Instant::now() >= cut_at {
                        break None;
                    }
                    if let Err(error) = self.stores.welcome.renew_send(&event.id, &self.owner, self.send_lease).await {
                        tracing::warn!(%error, id = %ops::redact_id(&event.id), "welcome lease not renewed");
                    }
                }
            }
        };
        let Some(sent) = sent else {
            if !posted.load(Ordering::SeqCst) {
                // Cut while still getting a token (Redis or WeChat slow): nothing went out.
                self.abandon(&event.id).await;
                return Outcome::Wait("welcome send cut before its post: no token in time".into());
            }
            return self.unknown(&event.id, "the send outlived its bound").await;
        };
        match sent {
            Ok(()) => {
                self.record_sent(&event.id).await;
                Outcome::Done
            }
            Err(error) => match error.class() {
                ErrorClass::Permanent => {
                    // Sending again would fail again: remember it as handled.
                    self.record_sent(&event.id).await;
                    tracing::warn!(%error, errcode = error.errcode(), id = %ops::redact_id(&event.id), "welcome not sent (permanent)");
                    Outcome::Skipped(error.to_string())
                }
                ErrorClass::Account => {
                    tracing::warn!(%error, errcode = error.errcode(), account = %event.account,
                        "the account cannot send welcomes: check its AppID, AppSecret and API permissions");
                    self.abandon(&event.id).await;
                    Outcome::Held(error.to_string())
                }
                ErrorClass::Outage | ErrorClass::TokenInvalid => {
                    self.abandon(&event.id).await;
                    Outcome::Wait(error.to_string())
                }
                ErrorClass::Unanswered => {
                    // WeChat may have sent it: as for a send cut at its bound.
                    self.unknown(&event.id, &format!("unanswered: {error}"))
                        .await
                }
                ErrorClass::Unknown => {
                    self.abandon(&event.id).await;
                    Outcome::Retry(error.to_string())
                }
            },
        }
    }

    /// A send whose post was written and whose answer is lost: WeChat may have sent it, and
    /// its send API has no idempotency key. Counted; then recorded and not repeated (at most
    /// once, the default), or, with `WELCOME_RESEND_UNKNOWN`, released and sent again (at
    /// least once: the user may get it twice).
    async fn unknown(&self, id: &str, why: &str) -> Outcome {
        let then = if self.resend_unknown {
            "resent"
        } else {
            "recorded"
        };
        metrics::counter!("wxpipe_worker_welcome_unknown_total", "then" => then).increment(1);
        if self.resend_unknown {
            self.abandon(id).await;
            tracing::warn!(id = %ops::redact_id(id), %why, "welcome send outcome unknown: sending it again (WELCOME_RESEND_UNKNOWN)");
            return Outcome::Wait(format!(
                "welcome send outcome unknown ({why}): sending again"
            ));
        }
        self.record_sent(id).await;
        tracing::warn!(id = %ops::redact_id(id), %why, "welcome send outcome unknown: recorded, and not repeated");
        Outcome::Unknown(format!("send outcome unknown: {why}"))
    }

    /// How long a sent welcome is remembered: as long as a replayed follow may still be
    /// welcomed (`WELCOME_MAX_AGE`) and a day more, at least [`SENT_TTL`].
    fn sent_ttl(&self) -> Duration {
        let day = Duration::from_secs(24 * 3600);
        let ttl = self.welcome_max_age.saturating_add(day).max(SENT_TTL);
        ttl.min(SENT_TTL_MAX)
    }

    /// Marks a welcome sent (or handled for good). A failure here would let the claim lapse
    /// and a redelivery send again, so it is tried until Redis takes it or half the lease is
    /// gone (the claim still holds meanwhile).
    async fn record_sent(&self, id: &str) {
        let give_up = tokio::time::Instant::now() + self.send_lease / 2;
        loop {
            match self.stores.welcome.finish_send(id, self.sent_ttl()).await {
                Ok(()) => return,
                Err(error) if tokio::time::Instant::now() >= give_up => {
                    tracing::warn!(%error, id = %ops::redact_id(id), "welcome handled but not recorded: a redelivery after its lease could send it again");
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    async fn location(&self, event: &Event) -> Outcome {
        if event.type_ != "location" {
            return Outcome::Skipped(format!("{} is not a location", event.type_));
        }
        let created_at = match check_created_at(event) {
            Ok(created_at) => created_at,
            Err(poison) => return poison,
        };
        let (Some(latitude), Some(longitude), Some(precision)) = (
            event.number("latitude"),
            event.number("longitude"),
            event.number("precision"),
        ) else {
            return Outcome::Poison("location without coordinates".into());
        };
        // Checked before any write: the store's GEO set refuses what is off the globe, and an
        // effect must be whole or nothing.
        if !(-90.0..=90.0).contains(&latitude)
            || !(-180.0..=180.0).contains(&longitude)
            || !precision.is_finite()
        {
            return Outcome::Poison(format!(
                "coordinates off the globe: latitude {latitude}, longitude {longitude}"
            ));
        }
        let location = Location {
            id: &event.id,
            account: &event.account,
            openid: &event.openid,
            latitude,
            longitude,
            precision,
            created_at,
            history: self.location_history,
        };
        match self.stores.locations.location(location).await {
            Ok(_) => Outcome::Done,
            Err(error) => store_failed(&error),
        }
    }
}
